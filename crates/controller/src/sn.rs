//! One SN's part of a run: its own task, its own connection, its own timeout.

use crate::image::{PayloadFile, Prepared};
use crate::progress::ProgressBar;
use crate::{Controller, ExportsReport, ImageStatus, ReplicaReport, SnStatus};
use anyhow::{anyhow, bail, Context, Result};
use model::ServiceNode;
use proto::{FromAgent, ImageState, ToAgent, CHUNK};
use std::io::Read;
use std::sync::Arc;
use transport::Conn;

pub struct SnOutcome {
    pub sn: String,
    pub replicas: Vec<ReplicaReport>,
    pub exports: Vec<ExportsReport>,
    pub error: Option<String>,
    /// Bytes not attributed to an image (exports, handshake).
    pub extra_bytes: u64,
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn row(sn: &str, p: &Prepared) -> ReplicaReport {
    ReplicaReport::new(sn, &p.image.name)
}

pub async fn sync_sn(
    ctl: &Controller,
    sn: ServiceNode,
    images: Vec<Arc<Prepared>>,
    exports: Option<String>,
    bar: Option<ProgressBar>,
) -> SnOutcome {
    let mut out = SnOutcome {
        sn: sn.name.clone(),
        replicas: images.iter().map(|p| row(&sn.name, p)).collect(),
        exports: Vec::new(),
        error: None,
        extra_bytes: 0,
    };
    let r = tokio::time::timeout(ctl.timeouts.sn, run_sn(ctl, &sn, &images, exports, &mut out, bar.as_ref())).await;
    let err = match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some(format!("timed out after {:?}", ctl.timeouts.sn)),
    };
    if let Some(e) = &err {
        tracing::warn!("SN {}: {e}", sn.name);
        for r in out.replicas.iter_mut().filter(|r| !r.matches && r.error.is_none()) {
            r.error = Some(e.clone());
        }
    }
    if let Some(b) = bar {
        b.finish_with_message(if err.is_some() { "FAILED" } else { "done" });
    }
    out.error = err;
    out
}

async fn run_sn(
    ctl: &Controller,
    sn: &ServiceNode,
    images: &[Arc<Prepared>],
    exports: Option<String>,
    out: &mut SnOutcome,
    bar: Option<&ProgressBar>,
) -> Result<()> {
    let mut c = ctl.connect(sn).await?;
    let mut failed = Vec::new();
    for (i, p) in images.iter().enumerate() {
        let before = c.bytes_out;
        let res = sync_image(ctl, &mut c, p, &mut out.replicas[i], bar).await;
        out.replicas[i].bytes_sent = c.bytes_out - before;
        if let Err(e) = res {
            let msg = format!("image {}: {e:#}", p.image.name);
            out.replicas[i].error = Some(msg.clone());
            failed.push(msg);
            // Images fail independently (issue #9 item 7): the session may be mid-stream and
            // unusable, so the next image gets a fresh one; an SN that cannot be reached ends here.
            if i + 1 < images.len() {
                c.shutdown().await;
                c = ctl.connect(sn).await?;
            }
        }
    }
    if !failed.is_empty() {
        return Err(anyhow!(failed.join("; ")));
    }
    if let Some(text) = exports {
        let before = c.bytes_out;
        c.request(&ToAgent::Exports { text: text.clone() }).await?;
        match c.recv_within::<FromAgent>(ctl.timeouts.commit).await? {
            FromAgent::ExportsDone { reloaded, output } => {
                // Written before the reload result is judged: the file is on the SN either way.
                if let Err(e) = record_deployed_exports(&ctl.cluster, &sn.name, &text) {
                    tracing::warn!(sn = %sn.name, "cannot record the deployed exports: {e}");
                }
                out.exports.push(ExportsReport { sn: sn.name.clone(), reloaded, output: output.clone() });
                if !reloaded {
                    bail!("exports written but reload failed: {output}");
                }
            }
            FromAgent::Error { reason } => bail!("exports: {reason}"),
            other => bail!("unexpected reply to Exports: {other:?}"),
        }
        out.extra_bytes += c.bytes_out - before;
    }
    let _ = c.request(&ToAgent::Bye).await;
    c.shutdown().await;
    Ok(())
}

/// Opens the image's replica: where it stands now (the agent rescans it) and, when it had
/// drifted from what the agent recorded, the recorded digest.
async fn open(c: &mut Conn, image: &model::Image) -> Result<(ImageState, Option<String>)> {
    c.request(&ToAgent::Open { image: image.name.clone(), path: image.path.as_str().to_string() }).await?;
    match c.recv::<FromAgent>().await? {
        FromAgent::Opened { state, drifted } => Ok((state, drifted)),
        FromAgent::Error { reason } => bail!("{reason}"),
        other => bail!("unexpected reply to Open: {other:?}"),
    }
}

/// Fetches the agent's recorded manifest (for a replica not at the shared base).
async fn manifest(c: &mut Conn) -> Result<tree::Manifest> {
    c.request(&ToAgent::GetManifest).await?;
    let len = match c.recv::<FromAgent>().await? {
        FromAgent::Manifest { len } => len,
        FromAgent::Error { reason } => bail!("{reason}"),
        other => bail!("unexpected reply to GetManifest: {other:?}"),
    };
    let mut b = Vec::with_capacity(len.min(256 << 20) as usize);
    while (b.len() as u64) < len {
        match c.recv::<FromAgent>().await? {
            FromAgent::Chunk(d) => b.extend_from_slice(&d),
            other => bail!("unexpected {other:?} inside a manifest"),
        }
    }
    Ok(tree::Manifest::from_bytes(&b)?)
}

async fn sync_image(
    ctl: &Controller,
    c: &mut Conn,
    p: &Prepared,
    row: &mut ReplicaReport,
    bar: Option<&ProgressBar>,
) -> Result<()> {
    let (state, drifted) = open(c, &p.image).await?;
    if let Some(was) = &drifted {
        tracing::warn!(
            "{}: image {} changed on the SN behind hanfs' back (recorded {was}, now {}): repairing",
            row.sn,
            p.image.name,
            state.digest
        );
    }
    row.drifted_from = drifted;
    let r = sync_image_from(ctl, c, p, row, bar, state).await;
    // Repaired: drift was found, and the replica now has the source's digest, computed now.
    row.repaired = row.drifted_from.is_some() && row.matches;
    r
}

async fn sync_image_from(
    ctl: &Controller,
    c: &mut Conn,
    p: &Prepared,
    row: &mut ReplicaReport,
    bar: Option<&ProgressBar>,
    state: ImageState,
) -> Result<()> {
    if state.digest == p.digest {
        row.generation = state.generation;
        row.digest = state.digest;
        row.matches = true;
        return Ok(());
    }
    // The shared plan when the replica is at the last generation; else one from its own manifest.
    let own;
    let (plan, bytes) = match (&p.shared, &p.last) {
        // (A replica numbered past this MN's generations, e.g. after the MN's state was lost,
        // gets its own plan numbered after its own generation.)
        (Some(s), Some(l)) if l.digest == state.digest && s.plan.generation > state.generation => {
            (&s.plan, s.bytes.clone())
        }
        _ => {
            let theirs = manifest(c).await?;
            let mut pl = blocking(|| tree::diff(&theirs, &p.manifest));
            pl.generation = p.generation.max(state.generation + 1);
            let b = zstd::bulk::compress(&pl.to_bytes()?, 3)?;
            own = pl;
            tracing::info!(
                "{}: image {} is at generation {} ({}), not the last synced one: own plan",
                row.sn,
                p.image.name,
                state.generation,
                state.digest
            );
            (&own, b)
        }
    };
    c.send(&ToAgent::Plan { len: bytes.len() as u64, zstd: true }).await?;
    for ch in bytes.chunks(CHUNK) {
        c.send_chunk(ch).await?;
    }
    c.flush().await?;
    let (need, resumed) = match c.recv::<FromAgent>().await? {
        FromAgent::Need { indexes, resumed } => (indexes, resumed),
        FromAgent::Error { reason } => bail!("{reason}"),
        other => bail!("unexpected reply to Plan: {other:?}"),
    };
    row.resumed = resumed;
    if let Some(b) = bar {
        b.set_length(need.iter().filter_map(|&i| plan.contents.get(i as usize)).map(|c| c.size).sum());
        b.set_message(p.image.name.clone());
    }
    for &i in &need {
        let content = plan.contents.get(i as usize).ok_or_else(|| anyhow!("agent asked for content {i}"))?;
        let payload = p.payload(content).await?.ok_or_else(|| anyhow!("agent asked for content {i}, made locally"))?;
        send_blob(c, i, &payload, bar).await?;
        if let Some(b) = bar {
            b.inc(content.size);
        }
        row.files_sent += 1;
    }
    c.request(&ToAgent::Commit).await?;
    let sent = std::time::Instant::now();
    match c.recv_within::<FromAgent>(ctl.timeouts.commit).await? {
        FromAgent::Committed { state } => {
            tracing::info!("{}: image {} committed {:.2?} after the last blob", row.sn, p.image.name, sent.elapsed());
            row.generation = state.generation;
            row.matches = state.digest == p.digest;
            row.digest = state.digest;
            if !row.matches {
                bail!("replica committed digest {} but the source is {}", row.digest, p.digest);
            }
            Ok(())
        }
        FromAgent::Error { reason } => bail!("{reason}"),
        FromAgent::NoSpace { reason, .. } => bail!("{reason}"),
        other => bail!("unexpected reply to Commit: {other:?}"),
    }
}

/// Streams one payload in chunks; the source file is read a chunk at a time (bounded memory).
/// Streams one payload in chunks; the file is read a chunk at a time (bounded memory).
async fn send_blob(c: &mut Conn, index: u32, p: &PayloadFile, _bar: Option<&ProgressBar>) -> Result<()> {
    c.send(&ToAgent::Blob { index, encoding: p.encoding, len: p.len, zstd: p.zstd }).await?;
    let mut f = std::fs::File::open(&p.path).with_context(|| format!("{}", p.path.display()))?;
    if p.offset > 0 {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(p.offset))?;
    }
    let mut left = p.len;
    let mut buf = vec![0u8; CHUNK.min(p.len as usize)];
    let mut h = blake3::Hasher::new();
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        blocking(|| f.read_exact(&mut buf[..n]))
            .with_context(|| format!("{}: changed while syncing (rerun sync)", p.path.display()))?;
        if let Some(want) = &p.verify {
            h.update(&buf[..n]);
            // The last chunk is held back until the whole file is known to be the scanned version,
            // so the agent never gets all of a changed file (it also checks BLAKE3 before commit).
            if left == n as u64 && h.finalize().as_bytes() != want {
                bail!(tree::Error::Changed(format!(
                    "{} (its content is no longer the one scanned; the session is dropped mid-file)",
                    p.path.display()
                )));
            }
        }
        c.send_chunk(&buf[..n]).await?;
        left -= n as u64;
    }
    c.send(&ToAgent::BlobEnd).await?;
    Ok(())
}

async fn verify_image(
    ctl: &Controller,
    c: &mut Conn,
    img: &model::Image,
    src: &str,
    row: &mut ReplicaReport,
) -> Result<()> {
    let (_, drifted) = open(c, img).await?;
    let was_drifted = drifted.is_some();
    row.drifted_from = drifted;
    c.request(&ToAgent::Verify).await?;
    match c.recv_within::<FromAgent>(ctl.timeouts.commit).await? {
        FromAgent::Verified { recorded, actual } => {
            row.generation = recorded.generation;
            row.matches = actual == src;
            if actual != recorded.digest || was_drifted {
                row.error = Some(format!("replica changed on disk since generation {}", recorded.generation));
            } else if !row.matches {
                row.error = Some(format!("digest differs from the source's {src}"));
            }
            row.digest = actual;
        }
        FromAgent::Error { reason } => row.error = Some(reason),
        other => bail!("unexpected reply to Verify: {other:?}"),
    }
    Ok(())
}

pub async fn verify_sn(ctl: &Controller, sn: ServiceNode, images: Vec<(model::Image, String)>) -> SnOutcome {
    let mut out =
        SnOutcome { sn: sn.name.clone(), replicas: Vec::new(), exports: Vec::new(), error: None, extra_bytes: 0 };
    let r = tokio::time::timeout(ctl.timeouts.sn, async {
        let mut c = ctl.connect(&sn).await?;
        for (img, src) in &images {
            let mut row = ReplicaReport::new(&sn.name, &img.name);
            // One image's failure is that image's row; the others are still verified, on a fresh
            // session since this one may be mid-stream.
            match verify_image(ctl, &mut c, img, src, &mut row).await {
                Ok(()) => {}
                Err(e) => {
                    row.error = Some(format!("{e:#}"));
                    c.shutdown().await;
                    c = ctl.connect(&sn).await?;
                }
            }
            out.replicas.push(row);
        }
        let _ = c.request(&ToAgent::Bye).await;
        c.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => out.error = Some(format!("{e:#}")),
        Err(_) => out.error = Some("timed out".into()),
    }
    out
}

pub async fn status_sn(ctl: &Controller, sn: ServiceNode, lasts: &[(String, u64)]) -> SnStatus {
    let r = tokio::time::timeout(ctl.timeouts.frame, async {
        let mut c = ctl.connect(&sn).await?;
        c.request(&ToAgent::Status).await?;
        let images = match c.recv::<FromAgent>().await? {
            FromAgent::Status { images } => images,
            other => bail!("unexpected reply to Status: {other:?}"),
        };
        let _ = c.request(&ToAgent::Bye).await;
        Ok(images)
    })
    .await;
    match r {
        Ok(Ok(images)) => SnStatus {
            name: sn.name.clone(),
            reachable: true,
            images: images
                .into_iter()
                .map(|i| {
                    let lag = lasts
                        .iter()
                        .find(|(n, _)| n == &i.name)
                        .map(|(_, g)| g.saturating_sub(i.generation))
                        .unwrap_or(0);
                    ImageStatus { name: i.name, generation: i.generation, digest: i.digest, lag }
                })
                .collect(),
            error: None,
        },
        Ok(Err(e)) => {
            SnStatus { name: sn.name.clone(), reachable: false, images: Vec::new(), error: Some(format!("{e:#}")) }
        }
        Err(_) => {
            SnStatus { name: sn.name.clone(), reachable: false, images: Vec::new(), error: Some("timed out".into()) }
        }
    }
}

fn deployed_exports_path(cluster: &model::Cluster, sn: &str) -> std::path::PathBuf {
    std::path::Path::new(cluster.state_dir().as_str()).join("exports").join(sn)
}

/// What hanfs last wrote to `sn`'s exports (written atomically after the agent confirmed it), so
/// `hanfs plan` can show the exports diff without asking the SN.
pub fn deployed_exports(cluster: &model::Cluster, sn: &str) -> Option<String> {
    std::fs::read_to_string(deployed_exports_path(cluster, sn)).ok()
}

fn record_deployed_exports(cluster: &model::Cluster, sn: &str, text: &str) -> std::io::Result<()> {
    let path = deployed_exports_path(cluster, sn);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}
