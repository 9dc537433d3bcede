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
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod image;
mod sn;
pub mod statelite;

pub use error::SnError;
pub use image::{plan_images, prepare, ImagePlan, Prepared};
pub use sn::{deployed_exports, Conn};

use anyhow::{bail, Context, Result};
use model::{Cluster, ServiceNode};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Timeouts of a run.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// One frame read or write.
    pub frame: Duration,
    /// An agent's commit (stage fsync + renames) of one image; within `sn`.
    pub commit: Duration,
    /// Everything one SN does in one run, commits included (`cluster.sn_timeout_secs`).
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
    pub cluster: Arc<Cluster>,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub timeouts: Timeouts,
    /// Show indicatif progress bars (only when stderr is a terminal and output is not JSON).
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaReport {
    pub sn: String,
    pub image: String,
    pub generation: u64,
    pub digest: String,
    pub matches: bool,
    pub bytes_sent: u64,
    /// Files sent (as delta or whole); files the agent resumed from its spool.
    pub files_sent: u64,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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

/// Held for a run that writes the MN's state (`sync`, `plan`): two at once would remove each
/// other's payloads and race on `last`. Released when dropped (or when the process dies).
pub struct StateLock(#[allow(dead_code)] std::fs::File);

pub fn lock_state(cluster: &Cluster) -> Result<StateLock> {
    let dir = std::path::Path::new(cluster.state_dir().as_str());
    match flock(dir, "lock", false)? {
        Some(f) => Ok(StateLock(f)),
        None => bail!("another hanfs sync or plan is using {} (lock {}/lock)", dir.display(), dir.display()),
    }
}

/// Opens `dir/name` (creating both) and takes an exclusive flock on it, waiting for it when `wait`,
/// else `None` if another process holds it. The lock lives as long as the returned file.
pub(crate) fn flock(dir: &std::path::Path, name: &str, wait: bool) -> Result<Option<std::fs::File>> {
    use rustix::fs::FlockOperation;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join(name);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    let op = if wait { FlockOperation::LockExclusive } else { FlockOperation::NonBlockingLockExclusive };
    // Released when the file is closed.
    match rustix::fs::flock(&f, op) {
        Ok(()) => Ok(Some(f)),
        Err(rustix::io::Errno::WOULDBLOCK) if !wait => Ok(None),
        Err(e) => Err(std::io::Error::from(e)).with_context(|| format!("locking {}", p.display())),
    }
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

/// Renders the exports of every SN of `cluster`, in its dialect (Linux file, AIX managed block).
pub fn render_exports(cluster: &Cluster) -> Result<Vec<(String, String)>> {
    cluster
        .sns()
        .iter()
        .map(|s| {
            let text =
                exports::render_sn(cluster, &s.name).map_err(|e| anyhow::anyhow!("exports of {}: {e}", s.name))?;
            Ok((s.name.clone(), text))
        })
        .collect()
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
        Ok(Controller { cluster: Arc::new(cluster), tls, timeouts, progress: false })
    }

    /// Dials an SN's agent and does the handshake (see `sn::connect`).
    pub async fn connect(&self, sn: &ServiceNode) -> Result<Conn, SnError> {
        sn::connect(self, sn).await
    }

    /// The images selected by name (all when `names` is empty); unknown names are bad input.
    pub fn select(&self, names: &[String]) -> Result<Vec<model::Image>, String> {
        if names.is_empty() {
            return Ok(self.cluster.images().to_vec());
        }
        names
            .iter()
            .map(|n| {
                self.cluster.image(n).cloned().ok_or_else(|| format!("no image named `{n}` in the cluster config"))
            })
            .collect()
    }

    /// Renders the exports of every SN (per its dialect).
    pub fn render_exports(&self) -> Result<Vec<(String, String)>> {
        render_exports(&self.cluster)
    }

    /// One-shot sync of `images`: scan, plan, send to every SN concurrently, verify digests, write
    /// exports, save the new generation.
    pub async fn sync(&self, images: &[model::Image]) -> Result<SyncReport> {
        let _lock = lock_state(&self.cluster)?;
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
        let rendered = self.render_exports()?;
        let mp = if self.progress { Some(indicatif::MultiProgress::new()) } else { None };
        let mut tasks = Vec::new();
        for sn in self.cluster.sns() {
            let mine: Vec<Arc<Prepared>> =
                prepared.iter().filter(|p| p.image.sns.iter().any(|s| s == &sn.name)).cloned().collect();
            let text = rendered.iter().find(|(n, _)| n == &sn.name).map(|(_, t)| t.clone());
            let bar = mp.as_ref().map(|m| m.add(sn::bar(&sn.name)));
            tasks.push(sn::sync_sn(self, sn.clone(), mine, text, bar));
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
        let outcomes = futures::future::join_all(tasks).await;
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
    pub async fn verify(&self, images: &[model::Image]) -> Result<SyncReport> {
        let cluster = self.cluster.clone();
        let imgs = images.to_vec();
        let sources: Vec<(model::Image, String)> = tokio::task::spawn_blocking(move || {
            imgs.iter().map(|i| image::source_digest(&cluster, i).map(|d| (i.clone(), d))).collect::<Result<Vec<_>>>()
        })
        .await??;
        let mut tasks = Vec::new();
        for sn in self.cluster.sns() {
            let mine: Vec<(model::Image, String)> =
                sources.iter().filter(|(i, _)| i.sns.iter().any(|s| s == &sn.name)).cloned().collect();
            tasks.push(sn::verify_sn(self, sn.clone(), mine));
        }
        let outcomes = futures::future::join_all(tasks).await;
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
    pub async fn status(&self) -> Result<StatusReport> {
        let lasts: Vec<(String, u64)> = self
            .cluster
            .images()
            .iter()
            .filter_map(|i| {
                image::Last::load(&self.cluster, &i.name).ok().flatten().map(|l| (i.name.clone(), l.generation))
            })
            .collect();
        let tasks = self.cluster.sns().iter().map(|sn| sn::status_sn(self, sn.clone(), &lasts));
        Ok(StatusReport { sns: futures::future::join_all(tasks).await })
    }
}

#[cfg(test)]
mod tests {
    use model::config::{sp, ClusterSection, ConfigFile, SnSection};

    #[test]
    fn one_state_writing_run_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let s = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
        let mut section = ClusterSection::new(s(d.path().join("src")));
        section.state_dir = Some(sp(s(d.path().join("state"))));
        section.plaintext_loopback = true;
        let mut file = ConfigFile::new(section);
        file.sn.push(SnSection::new("sn1", "127.0.0.1").agent("127.0.0.1:7468"));
        let c = model::Cluster::from_config("t.toml", &file).unwrap();
        let held = super::lock_state(&c).unwrap();
        let e = super::lock_state(&c).err().unwrap().to_string();
        assert!(e.contains("another hanfs sync or plan"), "{e}");
        drop(held);
        super::lock_state(&c).unwrap();
    }
}
