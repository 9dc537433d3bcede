//! The hanfs controller (MN side): `sync`, `plan`, `verify`, `status` against live agents.
//!
//! Invariants:
//! - Each image is scanned once per run, diffed against the last synced generation (kept in
//!   `state_dir/images/<name>/last`), and each changed file's payload (librsync delta from the stored
//!   signatures, or the whole file) is computed once and sent to every SN that is at that generation.
//!   A replica elsewhere (new, drifted, behind after a failure) gets its own plan from its own manifest.
//! - SNs are served concurrently, one task each under its own timeout: a slow or dead SN never blocks
//!   the others; its failure is reported by name and the next run catches it up.
//! - A replica counts as synced only when the digest the agent reports equals the source's.
//! - `last` advances only when at least one replica reached the new generation, so the signatures on the
//!   MN always describe a generation some replica holds.
//! - Which SN serves which node is the config plus the moves recorded in the state dir
//!   ([`StateDir`]); exports are rendered from it under the placement lock right before each push.
//! - One tokio task per SN (a `JoinSet`; the `Controller` is shared behind an `Arc`); CPU and disk
//!   work runs on blocking threads, never on the async workers.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod address;
pub mod daemon;
pub mod demo;
mod error;
mod fanout;
mod image;
pub mod monitor;
pub mod progress;
mod push;
pub mod redirect;
pub mod report;
mod sn;
pub mod state;
pub mod statelite;

pub use error::SnError;
pub use image::{plan_images, prepare, ImagePlan, Prepared};
pub use push::{exports_plan, render_exports};
pub use sn::{deployed_exports, Conn};
pub use state::{PlacementLock, StateDir, StateLock};

use anyhow::{bail, Context, Result};
use model::{Cluster, ServiceNode};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// The caller's input is wrong (an unknown SN or node, a move to where the node already is, a
/// bad demo option): nothing was changed (the CLI's exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Timeouts of a run.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// One frame read or write.
    pub frame: Duration,
    /// An agent's commit (stage fsync + renames) of one image; within `sn`.
    pub commit: Duration,
    /// Everything one SN does in one run, commits included (`cluster.sn_timeout_secs()`).
    pub sn: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            frame: Duration::from_secs(60),
            commit: Duration::from_secs(1800),
            sn: Duration::from_secs(model::cluster::DEFAULT_SN_TIMEOUT_SECS),
        }
    }
}

pub struct Controller {
    /// The cluster config as loaded: `served_by` as the config file says. Where nodes are served
    /// now is [`Controller::placed`] (the moves recorded in the state dir applied to it).
    pub cluster: Arc<Cluster>,
    /// The MN's state directory (every state file and lock).
    pub state: StateDir,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub timeouts: Timeouts,
    /// Receives progress events of `sync` (the CLI draws bars from them).
    pub progress: Option<progress::Hook>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaReport {
    pub sn: String,
    pub image: String,
    pub generation: u64,
    pub digest: String,
    pub matches: bool,
    pub bytes_sent: u64,
    /// Files sent by the MN (as delta or whole); files the agent resumed from its spool.
    pub files_sent: u64,
    /// Where its payloads came from: `mn`, its parent relay's SN name, or `<parent>+mn` when the
    /// MN sent what the parent could not (relay fan-out, `[cluster] fanout`).
    pub via: String,
    /// Where the plan came from: `mn`, or its parent relay's SN name (the shared plan relayed,
    /// checked against the MN's BLAKE3).
    pub plan_via: String,
    /// Payloads (files) and their bytes fetched from the parent relay; `bytes_sent` is the MN's.
    pub relayed_files: u64,
    pub relayed_bytes: u64,
    pub resumed: u32,
    /// The agent's rescan at `Open` found the replica changed behind its back (the digest it had
    /// recorded, in `drifted_from`), and this run brought it back to the source (`matches`).
    pub repaired: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drifted_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ReplicaReport {
    /// A row for `image` on `sn` before anything was done for it.
    pub(crate) fn new(sn: &str, image: &str) -> ReplicaReport {
        ReplicaReport {
            sn: sn.to_string(),
            image: image.to_string(),
            generation: 0,
            digest: String::new(),
            matches: false,
            bytes_sent: 0,
            files_sent: 0,
            via: "mn".into(),
            plan_via: "mn".into(),
            relayed_files: 0,
            relayed_bytes: 0,
            resumed: 0,
            repaired: false,
            drifted_from: None,
            error: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportsReport {
    pub sn: String,
    pub reloaded: bool,
    pub output: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedSn {
    pub sn: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub ok: bool,
    pub replicas: Vec<ReplicaReport>,
    pub bytes_sent: u64,
    pub failed: Vec<FailedSn>,
    pub images: Vec<ImagePlan>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<ExportsReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnStatus {
    pub name: String,
    pub reachable: bool,
    pub images: Vec<ImageStatus>,
    /// The read-write statelite areas this SN serves or backs up (issue 13).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statelite_rw: Vec<RwAreaStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One read-write statelite area's replication as its SN reports it.
#[derive(Debug, Clone, Serialize)]
pub struct RwAreaStatus {
    pub area: String,
    /// `primary` or `backup`.
    pub role: String,
    /// Primary: every change is on the backup before the client's reply; backup: the
    /// primary's stream is connected and its last pass applied.
    pub protected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Age of the oldest change not on the backup (0: in sync).
    pub lag_seconds: f64,
    /// Bytes of file data not on the backup.
    pub lag_bytes: u64,
    /// Unix time the last reconciliation ended, whether it worked, and its summary or error.
    pub last_reconcile: Option<i64>,
    pub last_reconcile_ok: Option<bool>,
    pub last_reconcile_result: Option<String>,
    /// `rw` (the embedded read-write server, replicated synchronously) or `kernel` (kernel nfsd,
    /// copied continuously as it changes).
    pub kind: &'static str,
    /// Kernel areas: Unix time (seconds, fractional) of the last in-sync mark, acknowledged by
    /// the backup (primary) or applied (backup): the copy held everything seen until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_sync_at: Option<f64>,
    /// Kernel areas: the node directories the area holds on this SN (the lag is for each).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

impl RwAreaStatus {
    /// A kernel area's backup: how old its copy is at `now` (Unix seconds), from the last
    /// in-sync mark; `None` when it never saw one.
    pub fn data_age(&self, now: f64) -> Option<f64> {
        self.in_sync_at.map(|t| (now - t).max(0.0))
    }
}

impl From<proto::reply::KernelArea> for RwAreaStatus {
    fn from(a: proto::reply::KernelArea) -> RwAreaStatus {
        let reason = match (a.connected, a.role.as_str()) {
            (true, _) => None,
            (false, "primary") => Some("no stream to the backup".to_string()),
            (false, _) => Some("no in-sync mark from the primary yet".to_string()),
        };
        RwAreaStatus {
            area: a.area.as_str().to_string(),
            role: a.role,
            protected: a.connected,
            reason,
            lag_seconds: a.lag_ms as f64 / 1000.0,
            lag_bytes: a.lag_bytes,
            last_reconcile: None,
            last_reconcile_ok: None,
            last_reconcile_result: None,
            kind: "kernel",
            in_sync_at: a.in_sync_at_ms.map(|t| t as f64 / 1000.0),
            nodes: a.nodes,
        }
    }
}

impl From<proto::reply::RwArea> for RwAreaStatus {
    fn from(a: proto::reply::RwArea) -> RwAreaStatus {
        RwAreaStatus {
            area: a.area.as_str().to_string(),
            role: a.role,
            protected: a.protected,
            reason: a.reason,
            lag_seconds: a.lag_ms as f64 / 1000.0,
            lag_bytes: a.lag_bytes,
            last_reconcile: a.last_reconcile,
            last_reconcile_ok: a.last_reconcile_ok,
            last_reconcile_result: a.last_reconcile_result,
            kind: "rw",
            in_sync_at: None,
            nodes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageStatus {
    pub name: String,
    pub generation: u64,
    pub digest: String,
    /// Generations behind the last one synced from this MN (0: current).
    pub lag: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub sns: Vec<SnStatus>,
}

/// The state lock of `cluster`'s state dir (see [`StateDir::lock_state`]).
pub fn lock_state(cluster: &Cluster) -> Result<StateLock> {
    StateDir::of(cluster).lock_state()
}

/// Whether a source file changed while it was read (the scan or a payload saw two versions).
pub fn source_changed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<tree::Error>(), Some(tree::Error::Changed(_))))
}

/// Attempts at reading an image whose files change under the scan before that image fails.
const PREPARE_ATTEMPTS: u32 = 3;

/// [`prepare`], again when a source file changed while it was read (a writer was mid-rewrite).
fn prepare_retrying(cluster: &Cluster, image: &model::Image) -> Result<Prepared> {
    let mut attempt = 1;
    loop {
        match prepare(cluster, image) {
            Err(e) if attempt < PREPARE_ATTEMPTS && source_changed(&e) => {
                tracing::info!("image {}: {e:#}; reading it again", image.name);
                std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                attempt += 1;
            }
            r => return r,
        }
    }
}

impl Controller {
    /// Loads TLS material from the cluster config; plain TCP only when the config allows it and
    /// every agent is on loopback.
    pub fn new(cluster: Cluster) -> Result<Controller> {
        let tls = match cluster.tls() {
            Some(f) => Some(transport::Identity::from_files(f)?.client_config()?),
            None => {
                if !cluster.plaintext_loopback() {
                    bail!("the cluster config has no [tls] section (plain TCP needs plaintext_loopback = true)");
                }
                if let Some(sn) = cluster.sns().iter().find(|s| !s.agent.is_loopback()) {
                    bail!("SN {} has agent {} off loopback: plain TCP is refused, configure [tls]", sn.name, sn.agent);
                }
                None
            }
        };
        let timeouts = Timeouts { sn: Duration::from_secs(cluster.sn_timeout_secs()), ..Timeouts::default() };
        let state = StateDir::of(&cluster);
        Ok(Controller { cluster: Arc::new(cluster), state, tls, timeouts, progress: None })
    }

    /// The cluster as it is served now: the config with the recorded moves applied (warnings for
    /// moves naming nodes or SNs no longer in the config). Under [`StateDir::lock_placement`]
    /// when what follows must not see it change.
    pub fn placed(&self) -> Result<(Cluster, Vec<String>)> {
        self.state.placed(&self.cluster)
    }

    /// Dials an SN's agent and does the handshake (see `sn::connect`).
    pub async fn connect(&self, sn: &ServiceNode) -> Result<Conn, SnError> {
        sn::connect(self, sn).await
    }

    /// One-shot sync of `images`: scan, plan, send to every SN concurrently, verify digests, write
    /// exports, save the new generation.
    pub async fn sync(self: &Arc<Self>, images: &[model::Image]) -> Result<SyncReport> {
        let _lock = self.state.lock_state()?;
        let cluster = self.cluster.clone();
        let imgs = images.to_vec();
        let t = std::time::Instant::now();
        // An image whose source cannot be read as one consistent version fails on its own.
        let outcomes: Vec<(model::Image, Result<Prepared>)> = tokio::task::spawn_blocking(move || {
            imgs.iter().map(|i| (i.clone(), prepare_retrying(&cluster, i))).collect::<Vec<_>>()
        })
        .await?;
        let mut prepared: Vec<Arc<Prepared>> = Vec::new();
        let mut unprepared: Vec<ReplicaReport> = Vec::new();
        for (image, r) in outcomes {
            match r {
                Ok(p) => prepared.push(Arc::new(p)),
                Err(e) => {
                    let reason = format!("image {} not synced: {e:#}", image.name);
                    tracing::warn!("{reason}");
                    unprepared.extend(image.sns.iter().map(|sn| ReplicaReport {
                        error: Some(reason.clone()),
                        ..ReplicaReport::new(sn, &image.name)
                    }));
                }
            }
        }
        tracing::info!("scanned and planned {} images in {:.2?}", prepared.len(), t.elapsed());
        // Exports that do not render fail the run before any SN is touched; each SN's are rendered
        // again, from the placement of that moment, right before they are pushed.
        render_exports(&self.placed()?.0)?;
        let mut links = fanout::links(&self.cluster, &prepared);
        let mut tasks = JoinSet::new();
        for (i, sn) in self.cluster.sns().iter().enumerate() {
            let mine: Vec<Arc<Prepared>> =
                prepared.iter().filter(|p| p.image.sns.iter().any(|s| s == &sn.name)).cloned().collect();
            let mine_links: Vec<fanout::Links> = mine
                .iter()
                .map(|p| links.remove(&(p.image.name.clone(), sn.name.clone())).unwrap_or_default())
                .collect();
            let bar = self.progress.as_ref().map(|h| progress::ProgressBar::new(&sn.name, h.clone()));
            let (ctl, sn) = (Arc::clone(self), sn.clone());
            tasks.spawn(async move {
                let mut o = sn::sync_sn(&ctl, sn.clone(), mine, mine_links, None, bar).await;
                if o.error.is_none() {
                    ctl.exports_after_sync(&sn, &mut o).await;
                }
                (i, o)
            });
        }
        let t = std::time::Instant::now();
        let signing: Vec<_> = prepared
            .iter()
            .filter(|p| !matches!(&p.last, Some(l) if l.digest == p.digest))
            .map(|p| {
                let p = p.clone();
                tokio::task::spawn_blocking(move || {
                    let t = std::time::Instant::now();
                    let r = p.sign();
                    tracing::info!(
                        "image {}: signatures of the new generation made in {:.2?}",
                        p.image.name,
                        t.elapsed()
                    );
                    r
                })
            })
            .collect();
        let outcomes = join_ordered(tasks).await?;
        tracing::info!("every SN done in {:.2?}", t.elapsed());
        let mut report = SyncReport {
            ok: true,
            replicas: Vec::new(),
            bytes_sent: 0,
            failed: Vec::new(),
            images: prepared.iter().map(|p| p.summary.clone()).collect(),
            exports: Vec::new(),
        };
        for o in outcomes {
            report.bytes_sent += o.replicas.iter().map(|r| r.bytes_sent).sum::<u64>() + o.extra_bytes;
            if let Some(reason) = o.error {
                report.ok = false;
                report.failed.push(FailedSn { sn: o.sn.clone(), reason });
            }
            report.replicas.extend(o.replicas);
            report.exports.extend(o.exports);
        }
        report.replicas.extend(unprepared);
        if report.replicas.iter().any(|r| !r.matches) {
            report.ok = false;
        }
        for s in signing {
            s.await??;
        }
        for p in &prepared {
            let reached = report.replicas.iter().any(|r| r.image == p.image.name && r.matches);
            let no_sns = p.image.sns.is_empty();
            if reached || no_sns {
                let t = std::time::Instant::now();
                let p2 = p.clone();
                let g = report
                    .replicas
                    .iter()
                    .filter(|r| r.image == p.image.name && r.matches)
                    .map(|r| r.generation)
                    .max()
                    .unwrap_or(0);
                tokio::task::spawn_blocking(move || p2.save(g)).await??;
                tracing::info!("image {}: new generation saved in {:.2?}", p.image.name, t.elapsed());
            }
        }
        Ok(report)
    }

    /// Every replica's digest (a fresh scan on the SN) against the source's.
    pub async fn verify(self: &Arc<Self>, images: &[model::Image]) -> Result<SyncReport> {
        let cluster = self.cluster.clone();
        let imgs = images.to_vec();
        let sources: Vec<(model::Image, String)> = tokio::task::spawn_blocking(move || {
            imgs.iter().map(|i| image::source_digest(&cluster, i).map(|d| (i.clone(), d))).collect::<Result<Vec<_>>>()
        })
        .await??;
        let mut tasks = JoinSet::new();
        for (i, sn) in self.cluster.sns().iter().enumerate() {
            let mine: Vec<(model::Image, String)> =
                sources.iter().filter(|(i, _)| i.sns.iter().any(|s| s == &sn.name)).cloned().collect();
            let (ctl, sn) = (Arc::clone(self), sn.clone());
            tasks.spawn(async move { (i, sn::verify_sn(&ctl, sn, mine).await) });
        }
        let outcomes = join_ordered(tasks).await?;
        let mut report = SyncReport {
            ok: true,
            replicas: Vec::new(),
            bytes_sent: 0,
            failed: Vec::new(),
            images: Vec::new(),
            exports: Vec::new(),
        };
        for o in outcomes {
            if let Some(reason) = o.error {
                report.failed.push(FailedSn { sn: o.sn.clone(), reason });
            }
            report.replicas.extend(o.replicas);
        }
        report.ok = report.failed.is_empty() && report.replicas.iter().all(|r| r.matches);
        Ok(report)
    }

    /// Per SN: reachable, and generation and digest per image.
    pub async fn status(self: &Arc<Self>) -> Result<StatusReport> {
        let lasts: Vec<(String, u64)> = self
            .cluster
            .images()
            .iter()
            .filter_map(|i| {
                image::Last::load(&self.cluster, &i.name).ok().flatten().map(|l| (i.name.clone(), l.generation))
            })
            .collect();
        let lasts = Arc::new(lasts);
        let mut tasks = JoinSet::new();
        for (i, sn) in self.cluster.sns().iter().enumerate() {
            let (ctl, sn, lasts) = (Arc::clone(self), sn.clone(), Arc::clone(&lasts));
            tasks.spawn(async move { (i, sn::status_sn(&ctl, sn, &lasts).await) });
        }
        Ok(StatusReport { sns: join_ordered(tasks).await? })
    }

    /// Per SN: its read-write statelite areas (SNs that cannot be asked are left out).
    pub async fn statelite_rw_status(self: &Arc<Self>) -> Vec<(String, Vec<RwAreaStatus>)> {
        let mut tasks = JoinSet::new();
        for (i, sn) in self.cluster.sns().iter().enumerate() {
            let (ctl, sn) = (Arc::clone(self), sn.clone());
            tasks.spawn(async move { (i, (sn.name.clone(), sn::statelite_rw_sn(&ctl, &sn).await)) });
        }
        let all = join_ordered(tasks).await.unwrap_or_default();
        all.into_iter()
            .filter_map(|(sn, r)| match r {
                Ok(a) => Some((sn, a)),
                Err(e) => {
                    tracing::debug!(sn = %sn, "statelite rw status: {e:#}");
                    None
                }
            })
            .collect()
    }

    /// After an SN's images synced: its exports, rendered under the placement lock from the
    /// placement of this moment (a `migrate` since the run started is kept), then pushed.
    async fn exports_after_sync(&self, sn: &ServiceNode, o: &mut sn::SnOutcome) {
        let r = async {
            let lock = self.state.lock_placement_async().await?;
            match tokio::time::timeout(self.timeouts.sn, push::push_exports(self, &lock, &sn.name)).await {
                Ok(r) => r,
                Err(_) => bail!("exports: timed out after {:?}", self.timeouts.sn),
            }
        }
        .await;
        let err = match r {
            Ok((rep, bytes)) => {
                o.extra_bytes += bytes;
                let err = (!rep.reloaded).then(|| format!("exports written but reload failed: {}", rep.output));
                o.exports.push(rep);
                err
            }
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(e) = err {
            tracing::warn!("SN {}: {e}", sn.name);
            for r in o.replicas.iter_mut().filter(|r| !r.matches && r.error.is_none()) {
                r.error = Some(e.clone());
            }
            o.error = Some(e);
        }
    }
}

/// Every task's result, in the order the tasks were numbered (reports list SNs as configured).
async fn join_ordered<T: 'static>(mut tasks: JoinSet<(usize, T)>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    while let Some(r) = tasks.join_next().await {
        out.push(r.context("an SN task failed")?);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, t)| t).collect())
}
