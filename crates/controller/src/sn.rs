//! One SN's part of a run: its own task, its own connection, its own timeout. The protocol is
//! spoken through `transport::Conn<proto::Controller>`: each request gets its one reply kind or a
//! typed error ([`SnError`]), bulk data is received only up to a cap.

use crate::error::SnError;
use crate::fanout::{self, Links, Offer};
use crate::image::{PayloadFile, Prepared};
use crate::progress::ProgressBar;
use crate::{Controller, ExportsReport, ImageStatus, ReplicaReport, RwAreaStatus, SnStatus};
use model::ServiceNode;
use proto::{req, Digest, ImageState, Name, ToAgent, CHUNK};
use std::io::Read;
use std::sync::Arc;

/// The controller end of a session.
pub type Conn = transport::Conn<proto::Controller>;

type Result<T, E = SnError> = std::result::Result<T, E>;

pub struct SnOutcome {
    pub sn: String,
    pub replicas: Vec<ReplicaReport>,
    pub exports: Vec<ExportsReport>,
    pub error: Option<String>,
    /// Why, typed (the first failure when several images failed): what retries and exit codes
    /// go by.
    pub cause: Option<SnError>,
    /// Bytes not attributed to an image (exports, handshake).
    pub extra_bytes: u64,
}

impl SnOutcome {
    fn new(sn: &str, replicas: Vec<ReplicaReport>) -> SnOutcome {
        SnOutcome { sn: sn.to_string(), replicas, exports: Vec::new(), error: None, cause: None, extra_bytes: 0 }
    }

    fn fail(&mut self, msg: String, cause: SnError) {
        tracing::warn!("SN {}: {msg}", self.sn);
        self.error = Some(msg);
        self.cause = Some(cause);
    }
}

/// CPU or disk work (a diff, a compression, a file read) on the blocking pool, so one SN's work
/// never stalls the sessions of the others on the runtime's workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SnError::Local(anyhow::anyhow!("blocking task: {e}")))
}

/// Dials an SN's agent and does the handshake: protocol version, and with TLS the agent's
/// certificate must name the SN.
pub async fn connect(ctl: &Controller, sn: &ServiceNode) -> Result<Conn> {
    let addr = sn.agent.to_string();
    let connect_failed = |source| SnError::Connect { addr: addr.clone(), source };
    let mut c =
        transport::connect(&addr, &sn.name, ctl.tls.clone(), ctl.timeouts.frame).await.map_err(connect_failed)?;
    let hello = match c.call(req::Hello { version: proto::VERSION, controller: "mn".into() }).await {
        Ok(h) => h,
        Err(transport::Error::Proto(proto::Error::Remote(r))) => {
            return Err(SnError::Refused(format!("agent refused the session: {r}")))
        }
        Err(e) => return Err(connect_failed(e)),
    };
    if hello.version != proto::VERSION {
        let e = proto::Error::Version { theirs: hello.version };
        return Err(SnError::Protocol(format!("agent at {addr}: {e}")));
    }
    if ctl.tls.is_some() && hello.agent != sn.name {
        return Err(SnError::Protocol(format!("agent calls itself `{}`, expected `{}`", hello.agent, sn.name)));
    }
    Ok(c)
}

fn row(sn: &str, p: &Prepared) -> ReplicaReport {
    ReplicaReport::new(sn, &p.image.name)
}

/// One SN's part of a sync. `links`: its place in each image's relay tree (same order as
/// `images`; missing or default: the MN sends it everything and it relays nothing).
pub async fn sync_sn(
    ctl: &Controller,
    sn: ServiceNode,
    images: Vec<Arc<Prepared>>,
    links: Vec<Links>,
    exports: Option<String>,
    bar: Option<ProgressBar>,
) -> SnOutcome {
    let mut out = SnOutcome::new(&sn.name, images.iter().map(|p| row(&sn.name, p)).collect());
    let mut failed = Vec::new();
    let run = run_sn(ctl, &sn, &images, links, exports, &mut out, &mut failed, bar.as_ref());
    let r = tokio::time::timeout(ctl.timeouts.sn, run).await;
    let err = match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some((format!("{e:#}"), e)),
        Err(_) => Some((format!("timed out after {:?}", ctl.timeouts.sn), SnError::Timeout(ctl.timeouts.sn))),
    };
    // Images fail on their own: their messages, joined, unless the session itself failed after.
    let err = match err {
        None if !failed.is_empty() => {
            let msg = failed.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>().join("; ");
            let (_, first) = failed.swap_remove(0);
            Some((msg, first))
        }
        e => e,
    };
    if let Some((msg, cause)) = err {
        for r in out.replicas.iter_mut().filter(|r| !r.matches && r.error.is_none()) {
            r.error = Some(msg.clone());
        }
        out.fail(msg, cause);
    }
    if let Some(b) = bar {
        b.finish_with_message(if out.error.is_some() { "FAILED" } else { "done" });
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn run_sn(
    ctl: &Controller,
    sn: &ServiceNode,
    images: &[Arc<Prepared>],
    links: Vec<Links>,
    exports: Option<String>,
    out: &mut SnOutcome,
    failed: &mut Vec<(String, SnError)>,
    bar: Option<&ProgressBar>,
) -> Result<()> {
    // Dropped unused (this SN unreachable, an image failed before its turn): the children of
    // each image are then served by the MN.
    let mut links = links.into_iter();
    let mut c = connect(ctl, sn).await?;
    for (i, p) in images.iter().enumerate() {
        let before = c.bytes_out;
        let link = links.next().unwrap_or_default();
        let res = sync_image(ctl, &mut c, p, &mut out.replicas[i], bar, sn, link).await;
        out.replicas[i].bytes_sent = c.bytes_out - before;
        if let Err(e) = res {
            let msg = format!("image {}: {e:#}", p.image.name);
            out.replicas[i].error = Some(msg.clone());
            failed.push((msg, e));
            // Images fail independently (issue #9 item 7): the session may be mid-stream and
            // unusable, so the next image gets a fresh one; an SN that cannot be reached ends here.
            if i + 1 < images.len() {
                c.shutdown().await;
                c = connect(ctl, sn).await?;
            }
        }
    }
    if !failed.is_empty() {
        return Ok(());
    }
    if let Some(text) = exports {
        let before = c.bytes_out;
        let done = c
            .call_within(req::Exports { text: text.clone() }, ctl.timeouts.commit)
            .await
            .map_err(|e| prefixed("exports", e.into()))?;
        // Written before the reload result is judged: the file is on the SN either way.
        if let Err(e) = record_deployed_exports(&ctl.cluster, &sn.name, &text) {
            tracing::warn!(sn = %sn.name, "cannot record the deployed exports: {e}");
        }
        out.exports.push(ExportsReport { sn: sn.name.clone(), reloaded: done.reloaded, output: done.output.clone() });
        if !done.reloaded {
            return Err(SnError::Refused(format!("exports written but reload failed: {}", done.output)));
        }
        out.extra_bytes += c.bytes_out - before;
    }
    c.bye().await;
    Ok(())
}

/// `what: reason` for refusals (the agent's reason alone does not say which request it was).
fn prefixed(what: &str, e: SnError) -> SnError {
    match e {
        SnError::Refused(r) => SnError::Refused(format!("{what}: {r}")),
        e => e,
    }
}

fn name(image: &model::Image) -> Result<Name> {
    Name::parse(&image.name).map_err(|e| SnError::Local(anyhow::anyhow!("image name: {e}")))
}

/// Opens the image's replica: where it stands now (the agent rescans it) and, when it had
/// drifted from what the agent recorded, the recorded digest.
async fn open(c: &mut Conn, image: &model::Image) -> Result<(ImageState, Option<Digest>)> {
    let o = c.call(req::Open { image: name(image)?, path: image.path.clone() }).await?;
    Ok((o.state, o.drifted))
}

/// Fetches the agent's recorded manifest (for a replica not at the shared base).
async fn manifest(c: &mut Conn) -> Result<tree::Manifest> {
    let m = c.call(req::GetManifest).await?;
    let b = c.recv_bulk("a manifest", m.len, proto::MAX_MANIFEST).await?;
    Ok(blocking(move || tree::Manifest::from_bytes(&b)).await??)
}

async fn sync_image(
    ctl: &Controller,
    c: &mut Conn,
    p: &Arc<Prepared>,
    row: &mut ReplicaReport,
    bar: Option<&ProgressBar>,
    sn: &ServiceNode,
    link: Links,
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
    row.drifted_from = drifted.map(|d| d.to_string());
    let r = sync_image_from(ctl, c, p, row, bar, state, sn, link).await;
    // Repaired: drift was found, and the replica now has the source's digest, computed now.
    row.repaired = row.drifted_from.is_some() && row.matches;
    r
}

#[allow(clippy::too_many_arguments)]
async fn sync_image_from(
    ctl: &Controller,
    c: &mut Conn,
    p: &Arc<Prepared>,
    row: &mut ReplicaReport,
    bar: Option<&ProgressBar>,
    state: ImageState,
    sn: &ServiceNode,
    mut link: Links,
) -> Result<()> {
    if state.digest == p.digest {
        row.generation = state.generation;
        row.digest = state.digest.to_string();
        row.matches = true;
        return Ok(());
    }
    // The shared plan when the replica is at the last generation; else one from its own manifest.
    let own;
    let mut shared = false;
    let mut blake3 = None;
    let mut own_bytes = Vec::new();
    let (plan, bytes): (&tree::Plan, &[u8]) = match (&p.shared, &p.last) {
        // (A replica numbered past this MN's generations, e.g. after the MN's state was lost,
        // gets its own plan numbered after its own generation.)
        (Some(s), Some(l)) if l.digest == state.digest && s.plan.generation > state.generation => {
            shared = true;
            blake3 = Some(s.blake3);
            // The shared plan's compressed bytes, borrowed: one copy for every SN on it.
            (&s.plan, &s.bytes)
        }
        _ => {
            let theirs = manifest(c).await?;
            let (p2, generation) = (p.clone(), p.generation.max(state.generation + 1));
            // Without a copy of the source's manifest: it is encoded from `p.manifest` straight
            // into the zstd frame; the replica's manifest is dropped after the diff.
            let (pl, b) = blocking(move || -> anyhow::Result<(tree::Plan, Vec<u8>)> {
                let mut pl = tree::diff_lean(&theirs, &p2.manifest);
                drop(theirs);
                pl.generation = generation;
                let b = crate::image::encode_plan(&pl, &p2.manifest)?;
                Ok((pl, b))
            })
            .await??;
            own = pl;
            own_bytes = b;
            tracing::info!(
                "{}: image {} is at generation {} ({}), not the last synced one: own plan",
                row.sn,
                p.image.name,
                state.generation,
                state.digest
            );
            (&own, &own_bytes)
        }
    };
    // Only the shared plan's payloads are relayed (an SN on its own plan relays nothing: its
    // children's senders are dropped here, and they get theirs from the MN).
    let children = std::mem::take(&mut link.children);
    if shared {
        offer_relay(c, p, plan.generation, sn, children).await?;
    }
    // An SN on the shared plan with a parent gets the plan, then the payloads, from that
    // parent's relay. The parent's task answers once its agent said where its relay listens (or
    // that it does not relay this run); its end dropped (it failed) is the same as none, and so
    // is a parent not ready within a frame's timeout (a hung one must not hold its children).
    // One frame's timeout in all, for the offer and then for the plan's start (`wait_ms`).
    let until = tokio::time::Instant::now() + ctl.timeouts.frame;
    let mut offer = None;
    if let (true, Some((parent, rx))) = (shared, link.parent.take()) {
        match tokio::time::timeout_at(until, rx).await {
            Ok(Ok(Some(o))) => offer = Some(o),
            _ => tracing::info!(
                "{}: image {}: parent {parent} relays nothing: plan and payloads from the MN",
                row.sn,
                p.image.name
            ),
        }
    }
    let relayed = match (&offer, blake3) {
        (Some(o), Some(d)) => {
            let wait = until.saturating_duration_since(tokio::time::Instant::now());
            relayed_plan(c, o, bytes, d, plan.generation, wait, row).await?
        }
        _ => None,
    };
    let need = match relayed {
        Some(need) => need,
        None => c.call_with_bulk(req::Plan { len: bytes.len() as u64, zstd: true }, bytes).await?,
    };
    // An own plan's bytes are not needed once sent.
    drop(std::mem::take(&mut own_bytes));
    row.resumed = need.resumed;
    if let Some(b) = bar {
        b.set_length(need.indexes.iter().filter_map(|&i| plan.contents.get(i as usize)).map(|c| c.size).sum());
        b.set_message(p.image.name.clone());
    }
    let mut indexes = need.indexes;
    if let (false, Some(o)) = (indexes.is_empty(), offer) {
        indexes = fetch(c, o, indexes, row).await?;
    }
    for &i in &indexes {
        let asked = || SnError::Protocol(format!("agent asked for content {i}, which the plan does not send"));
        let content = plan.contents.get(i as usize).ok_or_else(asked)?;
        let payload = p.payload(content).await?.ok_or_else(asked)?;
        send_blob(c, i, payload).await?;
        if let Some(b) = bar {
            b.inc(content.size);
        }
        row.files_sent += 1;
    }
    let sent = std::time::Instant::now();
    let done = c.call_within(req::Commit, ctl.timeouts.commit).await?;
    tracing::info!("{}: image {} committed {:.2?} after the last blob", row.sn, p.image.name, sent.elapsed());
    row.generation = done.state.generation;
    row.matches = done.state.digest == p.digest;
    row.digest = done.state.digest.to_string();
    if !row.matches {
        return Err(SnError::DigestMismatch { got: done.state.digest, want: p.digest });
    }
    Ok(())
}

/// Tells this SN's agent which children will fetch the shared plan's payloads from it (a token
/// each, for this run only) and hands each child's task its relay address; a refusal ("not a
/// relay") leaves that child to the MN.
async fn offer_relay(
    c: &mut Conn,
    p: &Prepared,
    generation: u64,
    sn: &ServiceNode,
    children: Vec<(String, tokio::sync::oneshot::Sender<Option<Offer>>)>,
) -> Result<()> {
    for (child, tx) in children {
        let token = fanout::token().map_err(SnError::Local)?;
        let child_name = Name::parse(&child).map_err(|e| SnError::Local(anyhow::anyhow!("SN name: {e}")))?;
        let q = req::ExpectRelay { token, child: child_name, image: name(&p.image)?, generation };
        match c.call(q).await {
            Ok(r) => {
                let o = Offer { parent: sn.name.clone(), addr: sn.agent.host.to_string(), port: r.port, token };
                let _ = tx.send(Some(o));
            }
            Err(transport::Error::Proto(proto::Error::Remote(reason))) => {
                tracing::info!("{}: does not relay image {} to {child}: {reason}", sn.name, p.image.name);
                let _ = tx.send(None);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Has the agent take the shared plan (`bytes`, BLAKE3 `blake3`) from its parent's relay: the
/// agent's `Need`, or None when the parent could not give it (the caller then sends the plan;
/// the session is where it was).
async fn relayed_plan(
    c: &mut Conn,
    o: &Offer,
    bytes: &[u8],
    blake3: Digest,
    generation: u64,
    wait: std::time::Duration,
    row: &mut ReplicaReport,
) -> Result<Option<proto::reply::Need>> {
    let parent = Name::parse(&o.parent).map_err(|e| SnError::Local(anyhow::anyhow!("SN name: {e}")))?;
    let q = req::RelayedPlan {
        len: bytes.len() as u64,
        blake3,
        zstd: true,
        generation,
        parent,
        addr: o.addr.clone(),
        port: o.port,
        token: o.token,
        stall_ms: fanout::STALL_MS,
        // A parent still getting its own plan says so (`Waiting`): what is left of a frame's timeout.
        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    };
    // Bounded on the agent (a stall bound per frame, `wait_ms` to the plan's start): this SN's deadline.
    match c.call_within(q, std::time::Duration::from_secs(7 * 24 * 3600)).await? {
        proto::reply::PlanRelayed::Need(need) => {
            row.plan_via = o.parent.clone();
            Ok(Some(need))
        }
        proto::reply::PlanRelayed::Missing(m) => {
            tracing::info!("{}: the plan not had from {}: sent by the MN ({})", row.sn, o.parent, m.reason);
            Ok(None)
        }
    }
}

/// Has the agent fetch `indexes` (what its `Need` listed: the agent keeps that list, so it is
/// not sent back) from its parent's relay; returns what the MN must still send (the parent
/// died, stalled or did not have them: re-parented to the MN).
async fn fetch(c: &mut Conn, o: Offer, indexes: Vec<u32>, row: &mut ReplicaReport) -> Result<Vec<u32>> {
    let parent = Name::parse(&o.parent).map_err(|e| SnError::Local(anyhow::anyhow!("SN name: {e}")))?;
    let q = req::FetchPending { parent, addr: o.addr, port: o.port, token: o.token, stall_ms: fanout::STALL_MS };
    // As long as the parent's transfer goes on: bounded by this SN's own deadline.
    let r = c.call_within(q, std::time::Duration::from_secs(7 * 24 * 3600)).await?;
    // Only what was asked for, each once, in the plan's order.
    let missing: std::collections::HashSet<u32> = r.missing.into_iter().collect();
    let rest: Vec<u32> = indexes.iter().copied().filter(|i| missing.contains(i)).collect();
    row.relayed_files = (indexes.len() - rest.len()) as u64;
    row.relayed_bytes = r.bytes;
    row.via = if rest.is_empty() { o.parent } else { format!("{}+mn", o.parent) };
    if !rest.is_empty() {
        tracing::info!(
            "{}: {} of {} payloads not had from {}: sent by the MN",
            row.sn,
            rest.len(),
            indexes.len(),
            row.via
        );
    }
    Ok(rest)
}

/// Streams one payload in chunks; the file is read a chunk at a time on the blocking pool
/// (bounded memory, the runtime's workers never wait on the disk).
async fn send_blob(c: &mut Conn, index: u32, p: PayloadFile) -> Result<()> {
    c.send(&ToAgent::Blob { index, encoding: p.encoding, len: p.len, zstd: p.zstd }).await?;
    let path = p.path.clone();
    let offset = p.offset;
    let mut f = blocking(move || -> anyhow::Result<std::fs::File> {
        use anyhow::Context;
        let mut f = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
        if offset > 0 {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(offset))?;
        }
        Ok(f)
    })
    .await??;
    let mut left = p.len;
    let mut buf = vec![0u8; CHUNK.min(p.len as usize)];
    let mut h = blake3::Hasher::new();
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        let (f2, b2, r) = blocking(move || {
            let r = f.read_exact(&mut buf[..n]);
            (f, buf, r)
        })
        .await?;
        (f, buf) = (f2, b2);
        if let Err(e) = r {
            return Err(SnError::SourceChanged(format!(
                "{}: changed while syncing (rerun sync): {e}",
                p.path.display()
            )));
        }
        if let Some(want) = &p.verify {
            h.update(&buf[..n]);
            // The last chunk is held back until the whole file is known to be the scanned version,
            // so the agent never gets all of a changed file (it also checks BLAKE3 before commit).
            if left == n as u64 && h.finalize().as_bytes() != want {
                return Err(SnError::SourceChanged(format!(
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
    row.drifted_from = drifted.map(|d| d.to_string());
    match c.call_within(req::Verify, ctl.timeouts.commit).await {
        Ok(v) => {
            row.generation = v.recorded.generation;
            row.matches = v.actual.to_string() == src;
            if v.actual != v.recorded.digest || was_drifted {
                row.error = Some(format!("replica changed on disk since generation {}", v.recorded.generation));
            } else if !row.matches {
                row.error = Some(format!("digest differs from the source's {src}"));
            }
            row.digest = v.actual.to_string();
        }
        // The agent could not scan: that replica's row, the session goes on.
        Err(transport::Error::Proto(proto::Error::Remote(reason))) => row.error = Some(reason),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

pub async fn verify_sn(ctl: &Controller, sn: ServiceNode, images: Vec<(model::Image, String)>) -> SnOutcome {
    let mut out = SnOutcome::new(&sn.name, Vec::new());
    let r = tokio::time::timeout(ctl.timeouts.sn, async {
        let mut c = connect(ctl, &sn).await?;
        for (img, src) in &images {
            let mut row = ReplicaReport::new(&sn.name, &img.name);
            // One image's failure is that image's row; the others are still verified, on a fresh
            // session since this one may be mid-stream.
            if let Err(e) = verify_image(ctl, &mut c, img, src, &mut row).await {
                row.error = Some(format!("{e:#}"));
                c.shutdown().await;
                c = connect(ctl, &sn).await?;
            }
            out.replicas.push(row);
        }
        c.bye().await;
        Ok::<_, SnError>(())
    })
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => out.fail(format!("{e:#}"), e),
        Err(_) => out.fail("timed out".into(), SnError::Timeout(ctl.timeouts.sn)),
    }
    out
}

pub async fn status_sn(ctl: &Controller, sn: ServiceNode, lasts: &[(String, u64)]) -> SnStatus {
    let r = tokio::time::timeout(ctl.timeouts.frame, async {
        let mut c = connect(ctl, &sn).await?;
        let s = c.call(req::Status).await?;
        // Last: an agent older than this request ends the session at it.
        let mut rw: Vec<RwAreaStatus> = c
            .call(req::StateliteRwStatus)
            .await
            .map(|r| r.areas)
            .unwrap_or_default()
            .into_iter()
            .map(Into::into)
            .collect();
        rw.extend(kernel_areas(&mut c).await);
        c.bye().await;
        Ok::<_, SnError>((s.images, rw))
    })
    .await;
    match r {
        Ok(Ok((images, rw))) => SnStatus {
            name: sn.name.clone(),
            reachable: true,
            images: images
                .into_iter()
                .map(|i| {
                    let lag = lasts
                        .iter()
                        .find(|(n, _)| n.as_str() == i.name.as_str())
                        .map(|(_, g)| g.saturating_sub(i.generation))
                        .unwrap_or(0);
                    ImageStatus { name: i.name.into(), generation: i.generation, digest: i.digest.to_string(), lag }
                })
                .collect(),
            statelite_rw: rw,
            error: None,
        },
        Ok(Err(e)) => SnStatus {
            name: sn.name.clone(),
            reachable: false,
            images: Vec::new(),
            statelite_rw: Vec::new(),
            error: Some(format!("{e:#}")),
        },
        Err(_) => SnStatus {
            name: sn.name.clone(),
            reachable: false,
            images: Vec::new(),
            statelite_rw: Vec::new(),
            error: Some("timed out".into()),
        },
    }
}

/// The read-write statelite areas of one SN (the daemon's metrics).
pub async fn statelite_rw_sn(ctl: &Controller, sn: &ServiceNode) -> Result<Vec<RwAreaStatus>> {
    let rw = tokio::time::timeout(ctl.timeouts.frame, async {
        let mut c = connect(ctl, sn).await?;
        let rw = c.call(req::StateliteRwStatus).await?;
        let mut rw: Vec<RwAreaStatus> = rw.areas.into_iter().map(Into::into).collect();
        rw.extend(kernel_areas(&mut c).await);
        c.bye().await;
        Ok::<_, SnError>(rw)
    })
    .await
    .map_err(|_| SnError::Timeout(ctl.timeouts.frame))??;
    Ok(rw)
}

/// The kernel-nfsd areas' copy state; none from an agent older than the request (it ends the
/// session there, so ask last).
async fn kernel_areas(c: &mut Conn) -> Vec<RwAreaStatus> {
    c.call(req::StateliteKernelStatus).await.map(|r| r.areas).unwrap_or_default().into_iter().map(Into::into).collect()
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

#[cfg(test)]
mod tests {
    //! The controller's end of the protocol against an in-process agent (`agent::testing`, port 0)
    //! and against scripted peers that break the protocol in one way each.
    use super::*;
    use proto::{reply, FromAgent};
    use std::time::Duration;

    const T: Duration = Duration::from_secs(20);

    struct Setup {
        _dir: tempfile::TempDir,
        ctl: Controller,
        image: Arc<Prepared>,
    }

    /// A cluster of one SN whose agent is at `addr`, one image of two files, prepared.
    fn setup(dir: tempfile::TempDir, addr: std::net::SocketAddr) -> Setup {
        let d = dir.path();
        let img = d.join("src/img");
        std::fs::create_dir_all(&img).unwrap();
        std::fs::write(img.join("a"), b"alpha").unwrap();
        std::fs::write(img.join("b"), vec![7u8; 3 * CHUNK + 5]).unwrap();
        let toml = format!(
            "[cluster]\nsource_root = \"{0}/src\"\nstate_dir = \"{0}/state\"\nplaintext_loopback = true\n\
             [[sn]]\nname = \"sn1\"\naddress = \"127.0.0.1\"\nagent = \"{addr}\"\n\
             [[image]]\nname = \"img\"\npath = \"img\"\nclients = \"*\"\n",
            d.display()
        );
        let cluster = model::Cluster::from_toml("t.toml", &toml).unwrap();
        let image = Arc::new(crate::image::prepare(&cluster, &cluster.images()[0]).unwrap());
        let mut ctl = Controller::new(cluster).unwrap();
        ctl.timeouts.frame = T;
        Setup { _dir: dir, ctl, image }
    }

    async fn sync(s: &Setup) -> SnOutcome {
        let sn = s.ctl.cluster.sns()[0].clone();
        sync_sn(&s.ctl, sn, vec![s.image.clone()], Vec::new(), None, None).await
    }

    /// A peer that answers the handshake, then runs `script` on the session.
    async fn scripted<F, Fut>(script: F) -> std::net::SocketAddr
    where
        F: FnOnce(transport::Conn<proto::Agent>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut c = transport::accept(tcp, None, T).await.unwrap();
            assert!(matches!(c.recv().await.unwrap(), ToAgent::Hello(_)));
            let hello = reply::Hello { version: proto::VERSION, agent: "sn1".into() };
            c.request(&FromAgent::Hello(hello)).await.unwrap();
            script(c).await
        });
        addr
    }

    /// Answers `Open` with a replica at generation 0 and another digest than the source's.
    async fn opened(c: &mut transport::Conn<proto::Agent>) {
        assert!(matches!(c.recv().await.unwrap(), ToAgent::Open(_)));
        let state =
            ImageState { name: Name::parse("img").unwrap(), generation: 0, digest: Digest::from_bytes([0; 32]) };
        c.request(&FromAgent::Opened(reply::Opened { state, drifted: None })).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_against_an_in_process_agent_reaches_the_source_digest() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent::testing::spawn(&dir.path().join("sn1"), "").await.unwrap();
        assert_ne!(a.addr.port(), 0, "the agent reports the port it bound");
        let s = setup(dir, a.addr);
        let out = sync(&s).await;
        assert!(out.error.is_none(), "{:?}", out.error);
        let r = &out.replicas[0];
        assert!(r.matches && r.digest == s.image.digest.to_string(), "{r:?}");
        assert_eq!(std::fs::read(a.root.join("img/b")).unwrap().len(), 3 * CHUNK + 5);
        // Again: the replica's own manifest comes back through the capped bulk receive.
        let out = sync(&s).await;
        assert!(out.error.is_none() && out.replicas[0].matches, "{:?}", out.error);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_of_another_kind_is_a_protocol_violation() {
        let addr = scripted(|mut c| async move {
            assert!(matches!(c.recv().await.unwrap(), ToAgent::Open(_)));
            c.request(&FromAgent::Pong).await.unwrap();
            let _ = c.recv().await;
        })
        .await;
        let out = sync(&setup(tempfile::tempdir().unwrap(), addr)).await;
        match &out.cause {
            Some(SnError::Protocol(m)) => assert!(m.contains("expected Opened, got Pong"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(out.error.as_deref().unwrap_or("").contains("image img"), "{:?}", out.error);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_agents_refusals_are_typed() {
        let addr = scripted(|mut c| async move {
            opened(&mut c).await;
            assert_eq!(c.recv().await.unwrap(), ToAgent::GetManifest);
            c.error("no recorded manifest").await.unwrap();
            let _ = c.recv().await;
        })
        .await;
        let out = sync(&setup(tempfile::tempdir().unwrap(), addr)).await;
        match &out.cause {
            Some(SnError::Refused(m)) => assert_eq!(m, "no recorded manifest"),
            other => panic!("{other:?}"),
        }
        let addr = scripted(|mut c| async move {
            opened(&mut c).await;
            assert_eq!(c.recv().await.unwrap(), ToAgent::GetManifest);
            let full = FromAgent::NoSpace { path: "/srv/x".into(), reason: "ENOSPC writing /srv/x".into() };
            c.request(&full).await.unwrap();
            let _ = c.recv().await;
        })
        .await;
        let out = sync(&setup(tempfile::tempdir().unwrap(), addr)).await;
        match &out.cause {
            Some(SnError::NoSpace { path, .. }) => assert_eq!(path, "/srv/x"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_announced_manifest_over_the_cap_is_refused_before_it_is_read() {
        let addr = scripted(|mut c| async move {
            opened(&mut c).await;
            assert_eq!(c.recv().await.unwrap(), ToAgent::GetManifest);
            c.send(&FromAgent::Manifest(reply::Manifest { len: 1 << 40 })).await.unwrap();
            // Then chunks for as long as the controller reads them.
            let chunk = vec![0u8; CHUNK];
            while c.send_chunk(&chunk).await.is_ok() {}
        })
        .await;
        let s = setup(tempfile::tempdir().unwrap(), addr);
        let out = tokio::time::timeout(Duration::from_secs(10), sync(&s)).await.expect("the controller kept reading");
        match &out.cause {
            Some(SnError::Protocol(m)) => assert!(m.contains("over the limit"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_of_the_controllers_direction_is_not_manifest_data() {
        let addr = scripted(|mut c| async move {
            opened(&mut c).await;
            assert_eq!(c.recv().await.unwrap(), ToAgent::GetManifest);
            c.send(&FromAgent::Manifest(reply::Manifest { len: 8 })).await.unwrap();
            let mut frame = proto::chunk_prefix::<ToAgent>(8).unwrap();
            frame.extend_from_slice(&[0; 8]);
            c.write_raw(&frame).await.unwrap();
            c.flush().await.unwrap();
            let _ = c.recv().await;
        })
        .await;
        let out = sync(&setup(tempfile::tempdir().unwrap(), addr)).await;
        assert!(matches!(&out.cause, Some(SnError::Protocol(_))), "{:?}", out.cause);
    }
}
