//! `hanfs daemon`: watch the images under source_root and sync what changed once the tree is quiet.
//!
//! Watches are installed before the first sync, so nothing changed during it is missed. A run that
//! failed on some SN is retried on a timer even if nothing changes (the next run catches it up).
//! `--metrics ADDR` serves Prometheus text exposition of the last run.

use super::load_cluster;
use crate::cli::{DaemonArgs, Global};
use crate::exit::{bad_input, Status};
use anyhow::{Context, Result};
use controller::{Controller, SyncReport};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds between retries after a run failed on some SN.
const RETRY: Duration = Duration::from_secs(60);

pub fn run(g: &Global, a: DaemonArgs) -> Result<Status> {
    let cluster = load_cluster(g)?;
    let ctl = Controller::new(cluster).map_err(|e| bad_input(format!("{}: {e:#}", g.config.display())))?;
    let targets: Vec<watch::Target> = ctl
        .cluster
        .images()
        .iter()
        .map(|i| watch::Target { name: i.name.clone(), path: ctl.cluster.image_source(i).as_str().into() })
        .collect();
    if targets.is_empty() {
        return Err(bad_input(format!("{}: no [[image]] to watch", g.config.display())));
    }
    let metrics = Arc::new(Mutex::new(Metrics::default()));
    if let Some(addr) = &a.metrics {
        let listener = TcpListener::bind(addr).map_err(|e| bad_input(format!("--metrics {addr}: {e}")))?;
        let m = Arc::clone(&metrics);
        std::thread::spawn(move || serve_metrics(listener, m));
        tracing::info!(%addr, "serving metrics");
    }
    let quiet = Duration::from_secs(a.quiet_secs);
    let watcher = watch::Watcher::new(targets, quiet).context("watching source_root")?;
    let rt = super::runtime()?;
    tracing::info!(images = ctl.cluster.images().len(), quiet_secs = a.quiet_secs, "daemon started; first sync");

    let statelite_every =
        (a.statelite_secs > 0 && !ctl.cluster.statelite().is_empty()).then(|| Duration::from_secs(a.statelite_secs));
    let mut next_statelite = Instant::now();
    let mut pending: Vec<String> = ctl.cluster.images().iter().map(|i| i.name.clone()).collect();
    let mut failed = false;
    loop {
        if !pending.is_empty() {
            failed = !run_once(&rt, &ctl, &pending, &metrics);
        }
        if let Some(every) = statelite_every {
            if Instant::now() >= next_statelite {
                statelite_round(g, &rt, &metrics);
                next_statelite = Instant::now() + every;
            }
        }
        // Wake for whichever comes first: a change, the retry of a failed run, the statelite clock.
        let retry = failed.then_some(RETRY);
        let statelite = statelite_every.map(|_| next_statelite.saturating_duration_since(Instant::now()));
        let wait = match (retry, statelite) {
            (Some(r), Some(s)) => Some(r.min(s)),
            (r, s) => r.or(s),
        };
        pending = match watcher.next_batch_within(wait).context("watching source_root")? {
            Some(changed) => {
                tracing::info!(images = ?changed, "images changed and are quiet; syncing");
                changed
            }
            // Retry everything: images already in sync cost a stat-only rescan and send nothing.
            None if failed => ctl.cluster.images().iter().map(|i| i.name.clone()).collect(),
            None => Vec::new(),
        };
    }
}

/// One statelite round: under the statelite lock and with the placement as recorded now (a
/// `migrate` may have moved nodes since the daemon started), copy every node's data from its
/// serving SN to its backups.
fn statelite_round(g: &Global, rt: &tokio::runtime::Runtime, m: &Mutex<Metrics>) {
    let result = (|| -> Result<Vec<controller::statelite::StateliteReport>> {
        let cluster = load_cluster(g)?;
        let _lock = controller::statelite::lock(std::path::Path::new(cluster.state_dir().as_str()))?;
        let ctl = Controller::new(cluster)?;
        let pairs = controller::statelite::pairs(&ctl.cluster, None);
        Ok(rt.block_on(controller::statelite::sync_all(&ctl, &pairs)))
    })();
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(reports) => {
            for r in reports.iter().filter(|r| !r.ok) {
                tracing::error!(area = %r.area, node = %r.node, from = %r.from, to = %r.to, "statelite copy failed; will retry");
            }
            let ok = reports.iter().filter(|r| r.ok).count() as u64;
            m.statelite_ok += ok;
            m.statelite_failed += reports.len() as u64 - ok;
            tracing::info!(copies = reports.len(), ok, "statelite round finished");
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "statelite round failed");
            m.statelite_failed += 1;
        }
    }
}

/// One sync of the named images; returns whether it succeeded everywhere.
fn run_once(rt: &tokio::runtime::Runtime, ctl: &Controller, names: &[String], m: &Mutex<Metrics>) -> bool {
    let images: Vec<model::Image> = ctl.cluster.images().iter().filter(|i| names.contains(&i.name)).cloned().collect();
    let started = std::time::Instant::now();
    let result = rt.block_on(ctl.sync(&images));
    let secs = started.elapsed().as_secs_f64();
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(r) => {
            for f in &r.failed {
                tracing::error!(sn = %f.sn, reason = %f.reason, "sync failed on SN; will retry");
            }
            tracing::info!(ok = r.ok, bytes_sent = r.bytes_sent, secs, "sync finished");
            m.record(&r, secs);
            r.ok
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "sync failed; will retry");
            m.runs_failed += 1;
            false
        }
    }
}

#[derive(Default)]
struct Metrics {
    runs_ok: u64,
    runs_failed: u64,
    bytes_sent: u64,
    last_run_seconds: f64,
    last_success_unix: u64,
    statelite_ok: u64,
    statelite_failed: u64,
    /// (sn, image) -> (generation, matches)
    replicas: BTreeMap<(String, String), (u64, bool)>,
}

impl Metrics {
    fn record(&mut self, r: &SyncReport, secs: f64) {
        if r.ok {
            self.runs_ok += 1;
            self.last_success_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        } else {
            self.runs_failed += 1;
        }
        self.bytes_sent += r.bytes_sent;
        self.last_run_seconds = secs;
        for x in &r.replicas {
            self.replicas.insert((x.sn.clone(), x.image.clone()), (x.generation, x.matches));
        }
    }

    fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP hanfs_sync_runs_total Sync runs by outcome.\n# TYPE hanfs_sync_runs_total counter");
        let _ = writeln!(s, "hanfs_sync_runs_total{{result=\"ok\"}} {}", self.runs_ok);
        let _ = writeln!(s, "hanfs_sync_runs_total{{result=\"failed\"}} {}", self.runs_failed);
        let _ =
            writeln!(s, "# HELP hanfs_bytes_sent_total Bytes sent to agents.\n# TYPE hanfs_bytes_sent_total counter");
        let _ = writeln!(s, "hanfs_bytes_sent_total {}", self.bytes_sent);
        let _ = writeln!(
            s,
            "# HELP hanfs_statelite_copies_total Statelite copies (node directory to one backup) by outcome.\n# TYPE hanfs_statelite_copies_total counter"
        );
        let _ = writeln!(s, "hanfs_statelite_copies_total{{result=\"ok\"}} {}", self.statelite_ok);
        let _ = writeln!(s, "hanfs_statelite_copies_total{{result=\"failed\"}} {}", self.statelite_failed);
        let _ = writeln!(
            s,
            "# HELP hanfs_last_run_seconds Duration of the last sync.\n# TYPE hanfs_last_run_seconds gauge"
        );
        let _ = writeln!(s, "hanfs_last_run_seconds {}", self.last_run_seconds);
        let _ = writeln!(
            s,
            "# HELP hanfs_last_success_timestamp_seconds End of the last sync that succeeded everywhere.\n# TYPE hanfs_last_success_timestamp_seconds gauge"
        );
        let _ = writeln!(s, "hanfs_last_success_timestamp_seconds {}", self.last_success_unix);
        let _ = writeln!(
            s,
            "# HELP hanfs_replica_generation Generation each replica holds.\n# TYPE hanfs_replica_generation gauge"
        );
        for ((sn, image), (generation, _)) in &self.replicas {
            let _ = writeln!(s, "hanfs_replica_generation{{sn=\"{sn}\",image=\"{image}\"}} {generation}");
        }
        let _ = writeln!(
            s,
            "# HELP hanfs_replica_matches 1 if the replica's digest equals the source's.\n# TYPE hanfs_replica_matches gauge"
        );
        for ((sn, image), (_, ok)) in &self.replicas {
            let _ = writeln!(s, "hanfs_replica_matches{{sn=\"{sn}\",image=\"{image}\"}} {}", u8::from(*ok));
        }
        s
    }
}

/// A minimal HTTP/1.0 responder: every request gets the metrics, which is all Prometheus asks.
fn serve_metrics(listener: TcpListener, m: Arc<Mutex<Metrics>>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 2048];
        let _ = conn.read(&mut buf);
        let body = m.lock().unwrap_or_else(|p| p.into_inner()).render();
        let _ = write!(
            conn,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}
