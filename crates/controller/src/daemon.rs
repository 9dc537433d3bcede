//! `hanfs daemon`: watch the images under `source_root` and sync what changed once the tree is
//! quiet; copy statelite data on its own clock; serve Prometheus metrics of the runs.
//!
//! Watches are installed before the first sync, so nothing changed during it is missed. A run that
//! failed on some SN is retried on a timer even if nothing changes (the next run catches it up).
//! Every run reads the placement as recorded at that moment (exports under the placement lock, see
//! [`crate::Controller::sync`]), so a `migrate` while the daemon runs is kept.

use crate::{statelite, Controller, SyncReport};
use anyhow::{Context, Result};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Time between retries after a run failed on some SN.
const RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Options {
    /// How long the tree must be quiet before a changed image is synced.
    pub quiet: Duration,
    /// Statelite rounds every this long (None: never).
    pub statelite_every: Option<Duration>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Replica {
    sn: String,
    image: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RwLabel {
    sn: String,
    area: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnState {
    sn: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnLabel {
    sn: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnResult {
    sn: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnPart {
    sn: String,
    part: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnKind {
    sn: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Promotion {
    service: String,
    to: String,
    result: &'static str,
}

/// The daemon's metrics (names are part of the contract).
pub struct Metrics {
    sn_state: Family<SnState, Gauge>,
    last_good_probe: Family<SnLabel, Gauge>,
    fence_runs: Family<SnResult, Counter>,
    probe_failures: Family<SnPart, Counter>,
    alerts: Family<SnKind, Counter>,
    promotions: Family<Promotion, Counter>,
    registry: Registry,
    runs: Family<Outcome, Counter>,
    bytes_sent: Counter,
    statelite: Family<Outcome, Counter>,
    last_run_seconds: Gauge<f64, AtomicU64>,
    last_success: Gauge,
    generation: Family<Replica, Gauge>,
    matches: Family<Replica, Gauge>,
    rw_protected: Family<RwLabel, Gauge>,
    rw_lag_seconds: Family<RwLabel, Gauge<f64, AtomicU64>>,
    rw_lag_bytes: Family<RwLabel, Gauge>,
    rw_last_reconcile: Family<RwLabel, Gauge>,
    kernel_in_sync: Family<RwLabel, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            runs: Family::default(),
            bytes_sent: Counter::default(),
            statelite: Family::default(),
            last_run_seconds: Gauge::default(),
            last_success: Gauge::default(),
            generation: Family::default(),
            matches: Family::default(),
            sn_state: Family::default(),
            last_good_probe: Family::default(),
            fence_runs: Family::default(),
            probe_failures: Family::default(),
            alerts: Family::default(),
            promotions: Family::default(),
            rw_protected: Family::default(),
            rw_lag_seconds: Family::default(),
            rw_lag_bytes: Family::default(),
            rw_last_reconcile: Family::default(),
            kernel_in_sync: Family::default(),
            registry: Registry::default(),
        };
        use health::report::metrics as hm;
        // prometheus-client appends `_total` to counters itself.
        let counter = |n: &'static str| n.strip_suffix("_total").unwrap_or(n);
        registry.register(hm::SN_STATE, "1 for each SN's health state, 0 for the others", m.sn_state.clone());
        registry.register(hm::SN_LAST_GOOD_PROBE, "Unix time of each SN's last good probe", m.last_good_probe.clone());
        registry.register(counter(hm::FENCE_RUNS), "Fence runs by SN and result", m.fence_runs.clone());
        registry.register(counter(hm::SN_PROBE_FAILURES), "Failed probes by SN and part", m.probe_failures.clone());
        registry.register(counter(hm::ALERTS), "Health alerts by SN and kind", m.alerts.clone());
        registry.register(counter(hm::PROMOTIONS), "Promotions by service, backup and result", m.promotions.clone());
        registry.register("hanfs_sync_runs", "Sync runs by outcome", m.runs.clone());
        registry.register("hanfs_bytes_sent", "Bytes sent to agents", m.bytes_sent.clone());
        registry.register(
            "hanfs_statelite_copies",
            "Statelite copies (node directory to one backup) by outcome",
            m.statelite.clone(),
        );
        registry.register("hanfs_last_run_seconds", "Duration of the last sync", m.last_run_seconds.clone());
        registry.register(
            "hanfs_last_success_timestamp_seconds",
            "End of the last sync that succeeded everywhere",
            m.last_success.clone(),
        );
        registry.register("hanfs_replica_generation", "Generation each replica holds", m.generation.clone());
        registry.register("hanfs_replica_matches", "1 if the replica's digest equals the source's", m.matches.clone());
        registry.register(
            "hanfs_statelite_rw_protected",
            "1 if the read-write statelite area is protected (its changes are on the backup before clients are answered)",
            m.rw_protected.clone(),
        );
        registry.register(
            "hanfs_statelite_rw_lag_seconds",
            "Age of the oldest change of the read-write area not on its backup (0: in sync)",
            m.rw_lag_seconds.clone(),
        );
        registry.register(
            "hanfs_statelite_rw_lag_bytes",
            "Bytes of file data of the read-write area not on its backup",
            m.rw_lag_bytes.clone(),
        );
        registry.register(
            "hanfs_statelite_rw_last_reconcile_timestamp_seconds",
            "Unix time the last reconciliation of the read-write area with its backup ended",
            m.rw_last_reconcile.clone(),
        );
        // Kernel-nfsd areas share the `hanfs_statelite_rw_*` protected (stream up) and lag
        // gauges under their own area label; their backup's data age comes from this one.
        registry.register(
            "hanfs_statelite_kernel_in_sync_timestamp_seconds",
            "Unix time of the last in-sync mark of a kernel-nfsd statelite area (acknowledged by its backup, or applied on it)",
            m.kernel_in_sync.clone(),
        );
        for r in ["ok", "failed"] {
            // Both outcomes are shown from the start, at 0.
            let _ = m.runs.get_or_create(&Outcome { result: r });
            let _ = m.statelite.get_or_create(&Outcome { result: r });
        }
        Metrics { registry, ..m }
    }
}

impl Metrics {
    fn count(f: &Family<Outcome, Counter>, ok: bool, n: u64) {
        f.get_or_create(&Outcome { result: if ok { "ok" } else { "failed" } }).inc_by(n);
    }

    /// A sync run that returned a report.
    pub fn record_sync(&self, r: &SyncReport, secs: f64) {
        Self::count(&self.runs, r.ok, 1);
        if r.ok {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            self.last_success.set(i64::try_from(now).unwrap_or(i64::MAX));
        }
        self.bytes_sent.inc_by(r.bytes_sent);
        self.last_run_seconds.set(secs);
        for x in &r.replicas {
            let l = Replica { sn: x.sn.clone(), image: x.image.clone() };
            self.generation.get_or_create(&l).set(i64::try_from(x.generation).unwrap_or(i64::MAX));
            self.matches.get_or_create(&l).set(i64::from(x.matches));
        }
    }

    /// A sync run that failed as a whole (no report).
    pub fn record_failed_sync(&self) {
        Self::count(&self.runs, false, 1);
    }

    /// Statelite copies: `ok` of them worked, `failed` did not.
    pub fn record_statelite(&self, ok: u64, failed: u64) {
        Self::count(&self.statelite, true, ok);
        Self::count(&self.statelite, false, failed);
    }

    /// The read-write statelite areas one SN reported.
    pub fn record_statelite_rw(&self, sn: &str, areas: &[crate::RwAreaStatus]) {
        for a in areas {
            let l = RwLabel { sn: sn.to_string(), area: a.area.clone(), role: a.role.clone() };
            self.rw_protected.get_or_create(&l).set(i64::from(a.protected));
            self.rw_lag_seconds.get_or_create(&l).set(a.lag_seconds);
            self.rw_lag_bytes.get_or_create(&l).set(i64::try_from(a.lag_bytes).unwrap_or(i64::MAX));
            if let Some(t) = a.last_reconcile {
                self.rw_last_reconcile.get_or_create(&l).set(t);
            }
            if let Some(t) = a.in_sync_at {
                self.kernel_in_sync.get_or_create(&l).set(t);
            }
        }
    }

    /// The health report: state gauges (1 for the current state) and last good probes.
    pub fn record_health(&self, r: &health::HealthReport) {
        for s in &r.sns {
            for st in health::HealthState::ALL {
                let v = i64::from(st == s.state);
                self.sn_state.get_or_create(&SnState { sn: s.name.clone(), state: st.as_str() }).set(v);
            }
            if let Some(t) = s.last_good_probe {
                self.last_good_probe
                    .get_or_create(&SnLabel { sn: s.name.clone() })
                    .set(i64::try_from(t).unwrap_or(i64::MAX));
            }
        }
    }

    /// A fence run ended: `result` is `fenced` or `failed`.
    pub fn record_fence(&self, sn: &str, result: &'static str) {
        self.fence_runs.get_or_create(&SnResult { sn: sn.to_string(), result }).inc();
    }

    /// A failed probe part (`agent`, `nfs`).
    pub fn record_probe_failure(&self, sn: &str, part: &'static str) {
        self.probe_failures.get_or_create(&SnPart { sn: sn.to_string(), part }).inc();
    }

    pub fn record_alert(&self, sn: &str, kind: &'static str) {
        self.alerts.get_or_create(&SnKind { sn: sn.to_string(), kind }).inc();
    }

    pub fn record_promotion(&self, service: &str, to: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.promotions.get_or_create(&Promotion { service: service.to_string(), to: to.to_string(), result }).inc();
    }

    /// The text exposition (OpenMetrics) of every metric.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut s, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        s
    }

    /// Serves the metrics over HTTP on `addr` from a thread of its own (every path answers);
    /// returns the address really bound (`addr` may give port 0).
    pub fn serve(self: &Arc<Self>, addr: &str) -> Result<std::net::SocketAddr, String> {
        let server = tiny_http::Server::http(addr).map_err(|e| e.to_string())?;
        let bound = server.server_addr().to_ip().ok_or_else(|| format!("{addr}: not an IP address"))?;
        let m = Arc::clone(self);
        std::thread::spawn(move || {
            for req in server.incoming_requests() {
                let body = m.render();
                let mut resp = tiny_http::Response::from_string(body);
                if let Ok(h) = tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
                ) {
                    resp = resp.with_header(h);
                }
                if let Err(e) = req.respond(resp) {
                    tracing::debug!("metrics client: {e}");
                }
            }
        });
        Ok(bound)
    }
}

/// Runs the daemon: never returns but with an error of the watcher (or, at start, bad health
/// settings). The health monitor ([`crate::monitor`]) runs beside the sync loop on `rt`.
pub fn run(rt: &tokio::runtime::Runtime, ctl: Arc<Controller>, opts: &Options, metrics: &Arc<Metrics>) -> Result<()> {
    let monitor = crate::monitor::Monitor::new(Arc::clone(&ctl), Arc::clone(metrics))
        .map_err(|e| crate::BadInput(format!("cluster.{e}")))?;
    let targets: Vec<watch::Target> = ctl
        .cluster
        .images()
        .iter()
        .map(|i| watch::Target { name: i.name.clone(), path: ctl.cluster.image_source(i).as_str().into() })
        .collect();
    let watcher = watch::Watcher::new(targets, opts.quiet).context("watching source_root")?;
    tracing::info!(
        images = ctl.cluster.images().len(),
        quiet_secs = opts.quiet.as_secs(),
        "daemon started; first sync"
    );
    let statelite_every = opts.statelite_every.filter(|_| !ctl.cluster.statelite().is_empty());
    let mut next_statelite = Instant::now();
    let all: Vec<String> = ctl.cluster.images().iter().map(|i| i.name.clone()).collect();
    let mut pending = all.clone();
    let mut failed = false;
    rt.spawn(monitor.run());
    rt.spawn(statelite_rw_loop(Arc::clone(&ctl), Arc::clone(metrics)));
    loop {
        if !pending.is_empty() {
            failed = !rt.block_on(sync_once(&ctl, &pending, metrics));
        }
        if let Some(every) = statelite_every {
            if Instant::now() >= next_statelite {
                rt.block_on(statelite_round(&ctl, metrics));
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
            None if failed => all.clone(),
            None => Vec::new(),
        };
    }
}

/// How often the daemon asks every SN how its read-write statelite areas stand (metrics).
pub const STATELITE_RW_EVERY: Duration = Duration::from_secs(10);

/// The read-write statelite areas' replication, asked of every SN on its own clock.
pub async fn statelite_rw_loop(ctl: Arc<Controller>, m: Arc<Metrics>) {
    loop {
        for (sn, areas) in ctl.statelite_rw_status().await {
            m.record_statelite_rw(&sn, &areas);
        }
        tokio::time::sleep(STATELITE_RW_EVERY).await;
    }
}

/// One statelite round (see [`statelite::round`]), counted in the metrics.
pub async fn statelite_round(ctl: &Arc<Controller>, m: &Metrics) {
    match statelite::round(ctl).await {
        Ok(reports) => {
            for r in reports.iter().filter(|r| !r.ok) {
                tracing::error!(area = %r.area, node = %r.node, from = %r.from, to = %r.to, "statelite copy failed; will retry");
            }
            let ok = reports.iter().filter(|r| r.ok).count() as u64;
            m.record_statelite(ok, reports.len() as u64 - ok);
            tracing::info!(copies = reports.len(), ok, "statelite round finished");
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "statelite round failed");
            m.record_statelite(0, 1);
        }
    }
}

/// One sync of the named images; whether it succeeded everywhere.
pub async fn sync_once(ctl: &Arc<Controller>, names: &[String], m: &Metrics) -> bool {
    let images: Vec<model::Image> = ctl.cluster.images().iter().filter(|i| names.contains(&i.name)).cloned().collect();
    let started = Instant::now();
    let result = ctl.sync(&images).await;
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(r) => {
            for f in &r.failed {
                tracing::error!(sn = %f.sn, reason = %f.reason, "sync failed on SN; will retry");
            }
            tracing::info!(ok = r.ok, bytes_sent = r.bytes_sent, secs, "sync finished");
            m.record_sync(&r, secs);
            r.ok
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "sync failed; will retry");
            m.record_failed_sync();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_and_labels_are_the_contract_ones() {
        let m = Metrics::default();
        let r = SyncReport {
            ok: true,
            replicas: vec![crate::ReplicaReport {
                generation: 3,
                matches: true,
                ..crate::ReplicaReport::new("sn1", "compute")
            }],
            bytes_sent: 42,
            failed: Vec::new(),
            images: Vec::new(),
            exports: Vec::new(),
        };
        m.record_sync(&r, 0.5);
        m.record_statelite(2, 1);
        m.record_health(&health::HealthReport {
            sns: vec![health::SnHealth {
                name: "sn1".into(),
                state: health::HealthState::Fenced,
                last_good_probe: Some(1_700_000_000),
                failing_since: None,
                reason: None,
                fence: None,
                serving_for: Vec::new(),
                served_by: Some("sn2".into()),
            }],
            waiting_for_backup: Vec::new(),
        });
        m.record_fence("sn1", "fenced");
        let t = m.render();
        for want in [
            "hanfs_sync_runs_total{result=\"ok\"} 1",
            "hanfs_sync_runs_total{result=\"failed\"} 0",
            "hanfs_bytes_sent_total 42",
            "hanfs_statelite_copies_total{result=\"ok\"} 2",
            "hanfs_statelite_copies_total{result=\"failed\"} 1",
            "hanfs_last_run_seconds 0.5",
            "hanfs_replica_generation{sn=\"sn1\",image=\"compute\"} 3",
            "hanfs_replica_matches{sn=\"sn1\",image=\"compute\"} 1",
            "# TYPE hanfs_last_success_timestamp_seconds gauge",
            "hanfs_sn_state{sn=\"sn1\",state=\"fenced\"} 1",
            "hanfs_sn_state{sn=\"sn1\",state=\"up\"} 0",
            "hanfs_sn_last_good_probe_timestamp_seconds{sn=\"sn1\"} 1700000000",
            "hanfs_fence_runs_total{sn=\"sn1\",result=\"fenced\"} 1",
        ] {
            assert!(t.contains(want), "{want} not in:\n{t}");
        }
    }

    fn rw(protected: bool) -> crate::RwAreaStatus {
        // What an agent's `StateliteRw` reply becomes.
        crate::RwAreaStatus::from(proto::reply::RwArea {
            area: proto::AbsPath::parse("/nodedata").unwrap(),
            role: "primary".into(),
            protected,
            reason: (!protected).then(|| "dialling the backup: connection refused".into()),
            lag_ms: if protected { 0 } else { 2500 },
            lag_bytes: if protected { 0 } else { 4096 },
            last_reconcile: Some(1_700_000_000),
            last_reconcile_ok: Some(protected),
            last_reconcile_result: Some(if protected { "1 pass(es)".into() } else { "refused".into() }),
        })
    }

    #[test]
    fn read_write_areas_show_unprotected_then_protected_in_metrics_status_and_json() {
        let m = Metrics::default();
        let sn = |a: crate::RwAreaStatus| crate::SnStatus {
            name: "sn1".into(),
            reachable: true,
            images: Vec::new(),
            statelite_rw: vec![a],
            error: None,
        };
        let label = "{sn=\"sn1\",area=\"/nodedata\",role=\"primary\"}";
        m.record_statelite_rw("sn1", &[rw(false)]);
        let t = m.render();
        for want in [
            format!("hanfs_statelite_rw_protected{label} 0"),
            format!("hanfs_statelite_rw_lag_seconds{label} 2.5"),
            format!("hanfs_statelite_rw_lag_bytes{label} 4096"),
            format!("hanfs_statelite_rw_last_reconcile_timestamp_seconds{label} 1700000000"),
        ] {
            assert!(t.contains(&want), "{want} not in:\n{t}");
        }
        let r = crate::StatusReport { sns: vec![sn(rw(false))] };
        let j = crate::report::status_json(&r, &[], None).unwrap();
        let a = &j["sns"][0]["statelite_rw"][0];
        assert_eq!(a["area"], "/nodedata");
        assert_eq!(a["role"], "primary");
        assert_eq!(a["protected"], false);
        assert_eq!(a["reason"], "dialling the backup: connection refused");
        assert_eq!(a["lag_seconds"], 2.5);
        assert_eq!(a["lag_bytes"], 4096);
        assert_eq!(a["last_reconcile_ok"], false);
        let lines = crate::report::status_lines(&r, &[]);
        assert!(lines.iter().any(|l| l.contains("statelite rw /nodedata primary: UNPROTECTED (dialling")), "{lines:?}");

        m.record_statelite_rw("sn1", &[rw(true)]);
        let t = m.render();
        assert!(t.contains(&format!("hanfs_statelite_rw_protected{label} 1")), "{t}");
        assert!(t.contains(&format!("hanfs_statelite_rw_lag_seconds{label} 0.0")), "{t}");
        let r = crate::StatusReport { sns: vec![sn(rw(true))] };
        let j = crate::report::status_json(&r, &[], None).unwrap();
        assert_eq!(j["sns"][0]["statelite_rw"][0]["protected"], true);
        assert!(j["sns"][0]["statelite_rw"][0].get("reason").is_none());
        let lines = crate::report::status_lines(&r, &[]);
        assert!(
            lines.iter().any(|l| l.contains("primary: protected, lag 0.0 s 0 bytes; last reconcile ok")),
            "{lines:?}"
        );
    }

    #[test]
    fn kernel_areas_show_lag_nodes_and_data_age_in_metrics_status_and_json() {
        let k = |role: &str, connected: bool| {
            crate::RwAreaStatus::from(proto::reply::KernelArea {
                area: proto::AbsPath::parse("/kdata").unwrap(),
                role: role.into(),
                connected,
                lag_ms: if connected { 0 } else { 1500 },
                lag_bytes: if connected { 0 } else { 5000 },
                in_sync_at_ms: Some(1_700_000_000_500),
                nodes: vec!["cn001".into(), "cn002".into()],
            })
        };
        let m = Metrics::default();
        m.record_statelite_rw("sn1", &[k("primary", false)]);
        let t = m.render();
        let label = "{sn=\"sn1\",area=\"/kdata\",role=\"primary\"}";
        for want in [
            format!("hanfs_statelite_rw_protected{label} 0"),
            format!("hanfs_statelite_rw_lag_seconds{label} 1.5"),
            format!("hanfs_statelite_rw_lag_bytes{label} 5000"),
            format!("hanfs_statelite_kernel_in_sync_timestamp_seconds{label} 1700000000.5"),
        ] {
            assert!(t.contains(&want), "{want} not in:\n{t}");
        }
        let l = crate::report::kernel_line(&k("primary", false), 1_700_000_010.5);
        assert_eq!(
            l,
            "  statelite kernel /kdata primary: NOT CONNECTED (no stream to the backup), lag 1.5 s 5000 bytes; in sync 10.0 s ago; nodes cn001 cn002"
        );
        let l = crate::report::kernel_line(&k("backup", true), 1_700_000_002.0);
        assert_eq!(l, "  statelite kernel /kdata backup: connected; in sync 1.5 s ago; nodes cn001 cn002");
        let r = crate::StatusReport {
            sns: vec![crate::SnStatus {
                name: "sn1".into(),
                reachable: true,
                images: Vec::new(),
                statelite_rw: vec![k("primary", false)],
                error: None,
            }],
        };
        let j = crate::report::status_json(&r, &[], None).unwrap();
        let a = &j["sns"][0]["statelite_rw"][0];
        assert_eq!(
            (a["kind"].as_str(), a["lag_seconds"].as_f64(), a["lag_bytes"].as_u64()),
            (Some("kernel"), Some(1.5), Some(5000))
        );
        assert_eq!(a["in_sync_at"].as_f64(), Some(1_700_000_000.5));
        assert_eq!(a["nodes"][1], "cn002");
    }
}
