//! One controller session: handshake, then requests until `Bye`, a closed connection or a violation.

use crate::drift::{Watch, Watches};
use crate::error::{Error, Result};
use crate::spool::{self, Spool};
use crate::{relay, Agent, IDLE_TIMEOUT};
use anyhow::{anyhow, bail, Context};
use proto::relay::{FromRelay, ToRelay};
use proto::{reply, req, Digest, Encoding, FromAgent, ImageState, Message, Name, RelPath, ToAgent, CHUNK};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
/// The agent end of a session.
pub(crate) type Conn = transport::Conn<proto::Agent>;
use tree::{Plan, Replica, ReplicaOptions, Source};

/// Largest change plan accepted, as sent and decoded.
const MAX_PLAN: u64 = proto::MAX_MANIFEST;
/// A zstd plan may decode to at most this many times its compressed size: a real manifest
/// (BLAKE3 hashes do not compress) shrinks 2-10 times, a bomb thousands of times; refused before
/// it is decoded, so a few KB cannot make the agent allocate gigabytes.
const MAX_PLAN_RATIO: u64 = 128;
/// Largest zstd window the agent decodes with (16 MiB; the default would be 128 MiB): every level
/// up to 19 fits, and a frame asking for more is refused instead of allocating it.
pub(crate) const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// A zstd decoder over `r` that keeps to one frame and to [`ZSTD_WINDOW_LOG_MAX`].
pub(crate) fn zstd_reader<R: std::io::BufRead>(r: R) -> std::io::Result<zstd::stream::read::Decoder<'static, R>> {
    let mut d = zstd::stream::read::Decoder::with_buffer(r)?.single_frame();
    d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
    Ok(d)
}

/// Decodes a zstd plan of `z.len()` bytes, bounded by the size its frame announces, by
/// [`MAX_PLAN_RATIO`] times its own size and by [`MAX_PLAN`]. Streamed: the plan is decoded as
/// zstd gives it, never held decompressed (the caller keeps the compressed bytes only for a relay child).
pub(crate) fn decode_plan(z: &[u8]) -> Result<Plan, String> {
    let bound = MAX_PLAN.min((z.len() as u64).saturating_mul(MAX_PLAN_RATIO));
    let announced = match zstd::zstd_safe::get_frame_content_size(z) {
        Ok(a) => a,
        Err(_) => return Err("plan: not a zstd frame".into()),
    };
    if let Some(a) = announced {
        if a > bound {
            return Err(format!(
                "plan of {} bytes announces {a} bytes decompressed, over the limit of {bound} (at most {MAX_PLAN_RATIO} times its size, {MAX_PLAN} in all)",
                z.len()
            ));
        }
    }
    let limit = announced.unwrap_or(bound);
    let d = zstd_reader(z).map_err(|e| format!("plan: zstd: {e}"))?;
    let mut r = Counted { r: std::io::Read::take(d, limit + 1), n: 0 };
    let plan = Plan::from_reader(&mut r);
    // Whatever follows the plan counts against the limits too (as when it was decoded whole).
    let rest = std::io::copy(&mut r, &mut std::io::sink());
    let n = r.n;
    drop(r);
    if n > limit {
        return Err(format!("plan decompresses past {limit} bytes"));
    }
    if let Err(e) = rest {
        return Err(format!("plan: zstd: {e}"));
    }
    let plan = plan.map_err(|e| format!("plan: {e}"))?;
    if announced.is_some_and(|a| a != n) {
        return Err(format!("plan decompresses to {n} bytes, not the {limit} its frame announces"));
    }
    Ok(plan)
}

/// A reader that counts the bytes it gives.
struct Counted<R> {
    r: R,
    n: u64,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let k = self.r.read(b)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// The engine's file and CPU work is blocking: it runs on tokio's blocking pool, so no runtime
/// worker stalls and the other sessions (and the NFSv3 server) go on; the caller waits for it.
/// A panic in `f` is an error here, not the agent's end.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| anyhow!("blocking task: {e}"))?
}

/// Runs `f` on `replica` on the blocking pool and gives the replica back: moved there and back,
/// so the session keeps exclusive use of it while it waits.
pub(crate) async fn with_replica<T: Send + 'static>(
    mut replica: Replica,
    f: impl FnOnce(&mut Replica) -> T + Send + 'static,
) -> anyhow::Result<(Replica, T)> {
    blocking(move || {
        let t = f(&mut replica);
        Ok((replica, t))
    })
    .await
}

/// Answers `GetManifest` with the replica's recorded manifest, chunked (encoded on the blocking
/// pool: a large image's manifest is many MB); gives the replica back.
pub(crate) async fn send_manifest(c: &mut Conn, replica: Replica) -> Result<Replica> {
    let (replica, bytes) = with_replica(replica, |r| r.manifest().map(|m| m.to_bytes())).await?;
    let bytes = match bytes {
        Some(Ok(b)) => b,
        _ => return Err(refuse(c, "no recorded manifest").await),
    };
    send_bulk_reply(c, FromAgent::Manifest(reply::Manifest { len: bytes.len() as u64 }), &bytes).await?;
    Ok(replica)
}

/// A reply announcing bulk data, then the data.
pub(crate) async fn send_bulk_reply(c: &mut Conn, header: FromAgent, data: &[u8]) -> Result<()> {
    c.send(&header).await?;
    c.send_bulk(data).await?;
    c.flush().await?;
    Ok(())
}

/// Tells the controller why, then ends the session with that reason (logged by the caller).
pub(crate) async fn refuse(c: &mut Conn, reason: impl Into<String>) -> Error {
    let reason = reason.into();
    let _ = c.error(reason.clone()).await;
    Error::Refused(reason)
}

/// The next request, or None when the controller closed the session. A frame that is not a
/// request (malformed, a hostile name or path, oversized) is refused with the reason.
pub(crate) async fn next_request(c: &mut Conn) -> Result<Option<ToAgent>> {
    match c.recv_within(IDLE_TIMEOUT).await {
        Ok(m) => Ok(Some(m)),
        Err(transport::Error::Closed) => Ok(None),
        Err(transport::Error::Proto(e)) => Err(refuse(c, e.to_string()).await),
        Err(e) => Err(e.into()),
    }
}

/// A request that is not the one this point of the session allows ends it.
pub(crate) async fn unexpected(c: &mut Conn, expected: &'static str, got: &ToAgent) -> Error {
    refuse(c, proto::Error::Unexpected { expected, got: got.kind() }.to_string()).await
}

pub async fn run(agent: &Agent, mut c: Conn) -> Result<()> {
    match next_request(&mut c).await? {
        Some(ToAgent::Hello(req::Hello { version, controller })) => {
            if version != proto::VERSION {
                return Err(refuse(&mut c, proto::Error::Version { theirs: version }.to_string()).await);
            }
            c.request(&FromAgent::Hello(reply::Hello { version: proto::VERSION, agent: agent.name.clone() })).await?;
            tracing::info!("session with {} (controller `{controller}`)", c.peer);
        }
        Some(other) => return Err(unexpected(&mut c, "Hello", &other).await),
        None => return Ok(()),
    }
    let mut next = None;
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None => match next_request(&mut c).await? {
                Some(m) => m,
                None => return Ok(()),
            },
        };
        match msg {
            ToAgent::Ping => c.request(&FromAgent::Pong).await?,
            ToAgent::Status => {
                let (state_dir, root) =
                    (PathBuf::from(agent.cfg.state_dir.as_str()), PathBuf::from(agent.cfg.root.as_str()));
                let images = blocking(move || Ok(status(&state_dir, &root))).await.unwrap_or_else(|e| {
                    tracing::warn!("status: {e:#}");
                    Vec::new()
                });
                c.request(&FromAgent::Status(reply::Status { images })).await?
            }
            ToAgent::Open(req::Open { image, path }) => {
                let held = agent.lock(&image).lock_owned().await;
                next = image_session(agent, &mut c, &image, &path, held).await?;
            }
            ToAgent::Exports(req::Exports { text }) => {
                let (reloaded, output) = match write_exports(agent, &text).await {
                    Ok(r) => r,
                    Err(e) => (false, format!("{e:#}")),
                };
                c.request(&FromAgent::ExportsDone(reply::ExportsDone { reloaded, output })).await?
            }
            ToAgent::StateliteRwStatus => {
                let areas = agent.statelite_rw.iter().map(|(area, r)| rw_area(area, &r.status())).collect();
                c.request(&FromAgent::StateliteRw(reply::StateliteRw { areas })).await?
            }
            ToAgent::StateliteKernelStatus => {
                let areas = crate::kwatch::status(agent);
                c.request(&FromAgent::StateliteKernel(reply::StateliteKernel { areas })).await?
            }
            ToAgent::Bye => {
                c.shutdown().await;
                return Ok(());
            }
            // Outside an image session: the run is left to the update that will feed it.
            ToAgent::ExpectRelay(e) => expect_relay(agent, &mut c, &e).await?.0 = None,
            ToAgent::StateliteOpen(req::StateliteOpen { root, node }) => {
                next = crate::statelite::backup(agent, &mut c, root.as_str(), &node).await?
            }
            ToAgent::StateliteScan(req::StateliteScan { root, node }) => {
                next = crate::statelite::serve(agent, &mut c, root.as_str(), &node).await?
            }
            // A refused claim or release is answered with the reason; the session goes on.
            ToAgent::Claim(req::Claim { address }) => match crate::address::claim(agent, &address).await {
                Ok(r) => c.request(&FromAgent::Claimed(r)).await?,
                Err(reason) => c.error(reason).await?,
            },
            ToAgent::Release(req::Release { address }) => match crate::address::release(agent, &address).await {
                Ok(r) => c.request(&FromAgent::Released(r)).await?,
                Err(reason) => c.error(reason).await?,
            },
            other => return Err(unexpected(&mut c, "a request outside an image session", &other).await),
        }
    }
}

/// `ExpectRelay`: the relay's port, or why this agent is no relay (the session goes on); the
/// run, which ends (its children told what is missing) when the caller drops it.
async fn expect_relay(agent: &Agent, c: &mut Conn, e: &req::ExpectRelay) -> Result<relay::Ending> {
    match &agent.relays {
        Some(r) => {
            let (port, run) = r.expect(&e.image, e.generation, &e.child, e.token);
            c.request(&FromAgent::RelayReady(reply::RelayReady { port })).await?;
            Ok(relay::Ending(Some(run)))
        }
        None => {
            c.error("not a relay: relay_listen unset").await?;
            Ok(relay::Ending(None))
        }
    }
}

/// Every image this agent holds, as recorded by the engine (under `state_dir`, replicas under `root`).
/// A read-write area's replication on the wire.
fn rw_area(area: &model::AbsPath, s: &nfs3::replica::AreaStatus) -> reply::RwArea {
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
    };
    let last = s.last_reconcile.as_ref();
    reply::RwArea {
        area: area.clone(),
        role: s.role.as_str().into(),
        protected: s.protected,
        reason: s.reason.clone(),
        lag_ms: (s.lag.seconds * 1000.0) as u64,
        lag_bytes: s.lag.bytes,
        last_reconcile: last.map(|l| unix(l.at)),
        last_reconcile_ok: last.map(|l| l.result.is_ok()),
        last_reconcile_result: last.map(|l| match &l.result {
            Ok(r) if s.role == nfs3::replica::Role::Backup => format!("pass applied, digest {}", r.digest),
            Ok(r) => r.summary(),
            Err(e) => e.clone(),
        }),
    }
}

fn status(state_dir: &Path, root: &Path) -> Vec<ImageState> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(state_dir.join("images")) else { return out };
    let mut names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    for name in names {
        let Ok(name) = Name::parse(&name) else { continue };
        let sd = state_dir.join("images").join(name.as_str());
        let Ok(path) = std::fs::read_to_string(sd.join("path")) else { continue };
        let Ok(path) = RelPath::parse(&path) else { continue };
        let root = root.join(path.as_str());
        if let Ok(r) = Replica::open(&root, &sd.join("replica"), opts()) {
            if let Ok(state) = current(&r, &name) {
                out.push(state);
            }
        }
    }
    out
}

/// At start, before anything is listened on or served: finishes what a crash left in every image
/// replica the state dir knows (roll forward a committed journal, discard an uncommitted stage).
/// A replica that cannot be recovered is logged and left for its next `Open`, which recovers again
/// or refuses with the reason; the others are served.
pub(crate) fn recover_all(agent: &Agent) {
    let Ok(rd) = std::fs::read_dir(Path::new(agent.cfg.state_dir.as_str()).join("images")) else { return };
    let mut names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    for name in names {
        if Name::parse(&name).is_err() {
            continue;
        }
        let sd = agent.image_state_dir(&name);
        let Ok(path) = std::fs::read_to_string(sd.join("path")) else { continue };
        let path = match RelPath::parse(&path) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("image {name}: recorded path refused ({e}); not recovered");
                continue;
            }
        };
        let r = existing_beneath(Path::new(agent.cfg.root.as_str()), &path).and_then(|root| {
            let Some(root) = root else { return Ok(None) };
            let mut r = Replica::open(&root, &sd.join("replica"), opts())?;
            Ok(Some(r.recover()?))
        });
        match r {
            Ok(None) => tracing::info!("image {name}: no replica at {path} yet"),
            Ok(Some(tree::Recovery::Clean)) => {}
            Ok(Some(rec)) => tracing::info!("image {name}: recovered at start: {rec:?}"),
            Err(e) => tracing::error!("image {name}: recovery at start failed: {e:#}"),
        }
    }
}

/// `root/rel` when every component exists as a real directory; None when one is missing; an
/// error for anything else (a symlink is never followed).
pub(crate) fn existing_beneath(root: &Path, rel: &RelPath) -> anyhow::Result<Option<PathBuf>> {
    let mut p = root.to_path_buf();
    for comp in rel.components() {
        p.push(comp);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => bail!("{} exists and is not a directory (a symlink is never followed)", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("{}", p.display())),
        }
    }
    Ok(Some(p))
}

fn opts() -> ReplicaOptions {
    // Image roots (Linux rootimg, AIX SPOTs) hold /dev nodes.
    ReplicaOptions { allow_devices: true }
}

/// Creates the directories of an image path under the agent root, refusing any component that
/// exists as something other than a real directory (a symlink planted there must not redirect us).
pub(crate) fn make_beneath(root: &Path, rel: &RelPath) -> anyhow::Result<PathBuf> {
    let mut p = root.to_path_buf();
    std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    for comp in rel.components() {
        p.push(comp);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => bail!("{} exists and is not a directory (a symlink is never followed)", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?
            }
            Err(e) => return Err(e).with_context(|| format!("{}", p.display())),
        }
    }
    Ok(p)
}

/// After a commit, the old generation's leftovers (hundreds of unlinks, slow with online discard)
/// are removed in the background, still under the image's lock, so the controller's session goes
/// on; then the drift watch is armed over the new generation and the tree rescanned (the commit's
/// own changes fired the old watch), so the next `Open` needs no rescan.
fn cleanup_later(mut replica: Replica, held: tokio::sync::OwnedMutexGuard<()>, image: &str, agent: &Agent) {
    let (image, watches, limit) = (image.to_string(), agent.drift.clone(), agent.watch_limit);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = replica.cleanup() {
            tracing::warn!("image {image}: removing the old generation's leftovers: {e}");
        }
        match rescan_watched(&mut replica, &image, limit) {
            Ok((true, _, w)) => put_watch(&watches, &image, w, replica),
            // The next `Open` rescans again and reports it.
            Ok((false, now, _)) => tracing::warn!("image {image}: changed right after its commit (now {now})"),
            Err(e) => tracing::warn!("image {image}: rescanning after the commit: {e:#}"),
        }
        drop(held);
    });
}

/// The image's drift watch, taken out while its session holds the image's lock.
fn take_watch(watches: &Watches, image: &str) -> Option<Watch> {
    watches.lock().unwrap_or_else(|p| p.into_inner()).remove(image)
}

/// Puts a session's drift watch back for the next `Open` (none: that `Open` rescans), with the
/// replica it leaves.
fn put_watch(watches: &Watches, image: &str, w: Option<Watch>, replica: Replica) {
    if let Some(mut w) = w {
        w.keep(replica);
        watches.lock().unwrap_or_else(|p| p.into_inner()).insert(image.to_string(), w);
    }
}

/// [`Replica::rescan`] with a drift watch armed over the recorded generation first, so that a
/// change after the scan read an inode fires the watch; returns the watch when the tree was found
/// whole (vouched for that generation), or none when it drifted or could not be watched (logged:
/// every `Open` then rescans).
fn rescan_watched(r: &mut Replica, image: &str, limit: Option<u64>) -> anyhow::Result<(bool, String, Option<Watch>)> {
    let watch = match r.manifest() {
        Some(m) => match Watch::arm(r.root(), m, limit) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::info!("image {image}: no drift watch, every open rescans: {e}");
                None
            }
        },
        None => None,
    };
    let (same, now) = r.rescan()?;
    let watch = match (same, watch, r.current()) {
        (true, Some(mut w), Some((g, d))) => {
            w.vouch(g, d);
            Some(w)
        }
        _ => None,
    };
    Ok((same, now, watch))
}

async fn image_session(
    agent: &Agent,
    c: &mut Conn,
    image: &Name,
    path: &RelPath,
    held: tokio::sync::OwnedMutexGuard<()>,
) -> Result<Option<ToAgent>> {
    let sd = agent.image_state_dir(image);
    let (root_dir, rel, name, state_dir, me) = (
        PathBuf::from(agent.cfg.root.as_str()),
        path.clone(),
        image.clone(),
        sd.clone(),
        crate::owner::identity(agent),
    );
    let watch = take_watch(&agent.drift, image);
    let (rescans, limit) = (agent.rescans.clone(), agent.watch_limit);
    let opened = blocking(move || -> anyhow::Result<(Replica, Option<Digest>, Option<Watch>)> {
        let (sd, path, image) = (state_dir, &rel, &name);
        crate::owner::claim(&root_dir, &me)?;
        let root = make_beneath(&root_dir, path)?;
        std::fs::create_dir_all(&sd).with_context(|| format!("creating {}", sd.display()))?;
        let pf = sd.join("path");
        let path = path.as_str();
        if std::fs::read_to_string(&pf).ok().as_deref() != Some(path) {
            std::fs::write(&pf, path).with_context(|| format!("writing {}", pf.display()))?;
        }
        let mut watch = watch;
        let kept = watch.as_mut().and_then(|w| w.reuse(&root));
        let mut r = match kept {
            Some(r) => r,
            None => Replica::open(&root, &sd.join("replica"), opts())?,
        };
        let rec = r.recover()?;
        if rec != tree::Recovery::Clean {
            tracing::info!("image {image}: recovery {rec:?}");
        }
        // Unchanged since a rescan found it whole, as its drift watch tells (nothing recovered
        // since either): no rescan.
        let quiet = match (r.current(), watch.as_mut()) {
            (Some((g, recorded)), Some(w)) => rec == tree::Recovery::Clean && w.unchanged(r.root(), g, &recorded),
            _ => false,
        };
        let (drifted, watch) = match r.current() {
            // A new replica (or a copy made by prsync): take what is there as generation 0.
            None => {
                r.adopt(0)?;
                (None, None)
            }
            Some(_) if quiet => {
                r.known_whole();
                (None, watch)
            }
            // What the controller is told must be the tree as it is now, not as last committed:
            // anything changed behind the agent's back is taken as the base, so the controller's
            // plan from this manifest repairs it (the scan's hash cache keyed on ctime keeps this
            // to a stat walk when nothing changed).
            Some((g, recorded)) => {
                drop(watch);
                rescans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (same, now, watch) = rescan_watched(&mut r, image, limit)?;
                if same {
                    (None, watch)
                } else {
                    tracing::warn!("image {image}: replica drifted from generation {g} ({recorded}) to {now}: adopted as it is for repair");
                    r.adopt(g)?;
                    (Some(digest(&recorded)?), None)
                }
            }
        };
        Ok((r, drifted, watch))
    })
    .await;
    let (mut replica, drifted, watch) = match opened {
        Ok(r) => r,
        Err(e) => return Err(refuse(c, format!("image {image}: {e:#}")).await),
    };
    let state = match current(&replica, image) {
        Ok(s) => s,
        Err(e) => return Err(refuse(c, format!("image {image}: {e:#}")).await),
    };
    c.request(&FromAgent::Opened(reply::Opened { state, drifted })).await?;
    let spool = Spool::open(sd.join("spool"))?;
    let mut committed = false;
    // The runs this session was asked to relay end with it, however it ends: a child waiting for
    // the plan or a payload that this session will now never receive is told at once.
    let mut _relayed = Vec::new();
    loop {
        let Some(msg) = next_request(c).await? else {
            if committed {
                cleanup_later(replica, held, image, agent);
            } else {
                put_watch(&agent.drift, image, watch, replica);
            }
            return Ok(Some(ToAgent::Bye));
        };
        match msg {
            ToAgent::GetManifest => replica = send_manifest(c, replica).await?,
            ToAgent::ExpectRelay(e) => _relayed.push(expect_relay(agent, c, &e).await?),
            ToAgent::Verify => {
                let name = image.clone();
                let (r, scanned) = with_replica(replica, move |r| -> anyhow::Result<_> {
                    let actual = digest(&r.scan()?.digest())?;
                    Ok((current(r, &name)?, actual))
                })
                .await?;
                replica = r;
                match scanned {
                    Ok((recorded, actual)) => {
                        c.request(&FromAgent::Verified(reply::Verified { recorded, actual })).await?
                    }
                    Err(e) => c.error(format!("scanning: {e:#}")).await?,
                }
            }
            ToAgent::Plan(req::Plan { len, zstd }) => {
                let fan = Fanout { relays: agent.relays.as_ref(), tls: agent.relay_client.as_ref() };
                let (r, done) = update(c, replica, &spool, (image, image), len, zstd, &agent.nfs3, fan).await?;
                replica = r;
                committed |= done;
            }
            ToAgent::RelayedPlan(q) => {
                let fan = Fanout { relays: agent.relays.as_ref(), tls: agent.relay_client.as_ref() };
                match relayed_plan(&q, image, fan.tls).await {
                    Ok(buf) => {
                        let (r, done) =
                            update_with(c, replica, &spool, (image, image), buf, q.zstd, &agent.nfs3, fan).await?;
                        replica = r;
                        committed |= done;
                    }
                    // Nothing changed here: the controller sends the plan itself next.
                    Err(reason) => {
                        tracing::info!("image {image}: the plan not had from relay {}: {reason}", q.parent);
                        c.request(&FromAgent::PlanMissing(reply::PlanMissing { reason })).await?
                    }
                }
            }
            other => {
                if committed {
                    cleanup_later(replica, held, image, agent);
                } else {
                    put_watch(&agent.drift, image, watch, replica);
                }
                return Ok(Some(other));
            }
        }
    }
}

/// Where an opened replica stands.
pub(crate) fn current(r: &Replica, name: &Name) -> anyhow::Result<ImageState> {
    let (generation, d) = r.current().ok_or_else(|| anyhow!("no recorded generation"))?;
    Ok(ImageState { name: name.clone(), generation, digest: digest(&d)? })
}

/// A digest the tree engine computed (always hex: an error here is a bug in the state files).
pub(crate) fn digest(s: &str) -> anyhow::Result<Digest> {
    s.parse().map_err(|e| anyhow!("recorded digest: {e}"))
}

/// One plan content as the blob loop needs it: path, hash, size, delta base hash.
type Want = (Vec<u8>, [u8; 32], u64, Option<[u8; 32]>);

/// Receives a plan and its blobs, stages them, commits. Replies `Committed` or `Error` and returns
/// the replica and whether it committed; returns an error (ending the session) only for protocol
/// violations and hostile input. The stage lives on a blocking thread that owns the replica until
/// the update ends ([`stage_worker`]); this task receives frames and hands it one job at a time.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update(
    c: &mut Conn,
    replica: Replica,
    spool: &Spool,
    (name, image): (&Name, &str),
    len: u64,
    zstd: bool,
    nfs3: &nfs3::Switch,
    fan: Fanout<'_>,
) -> Result<(Replica, bool)> {
    let buf = match c.recv_bulk("plan", len, MAX_PLAN).await {
        Ok(b) => b,
        Err(e) => return Err(fail(c, e).await),
    };
    update_with(c, replica, spool, (name, image), buf, zstd, nfs3, fan).await
}

/// [`update`] of a plan already received (`buf`: from the controller, or from a parent relay
/// and checked against the controller's BLAKE3).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update_with(
    c: &mut Conn,
    replica: Replica,
    spool: &Spool,
    (name, image): (&Name, &str),
    buf: Vec<u8>,
    zstd: bool,
    nfs3: &nfs3::Switch,
    fan: Fanout<'_>,
) -> Result<(Replica, bool)> {
    let (plan, contents, buf) = match blocking(move || Ok(read_plan(&buf, zstd).map(|(p, c)| (p, c, buf)))).await? {
        Ok(x) => x,
        Err(e) => return Err(refuse(c, e).await),
    };
    let target = match digest(&plan.to_digest) {
        Ok(d) => ImageState { name: name.clone(), generation: plan.generation, digest: d },
        Err(e) => return Err(refuse(c, format!("plan: {e:#}")).await),
    };
    // Children expected for this run get what this update receives, as it arrives: the plan's
    // bytes first (a child asks for them before anything else).
    let run = fan.relays.and_then(|r| r.session(name.as_str(), plan.generation));
    let _ending = relay::Ending(run.clone());
    if let Some(r) = &run {
        r.put_plan(Arc::new(buf)).await;
    } else {
        drop(buf);
    }
    let fan = Fed { run, tls: fan.tls };
    let contents = Arc::new(contents);
    let (jobs, jobs_rx) = mpsc::channel(1);
    let (begun, begun_rx) = oneshot::channel();
    let worker = {
        let (contents, spool, nfs3) = (Arc::clone(&contents), spool.clone(), nfs3.clone());
        tokio::task::spawn_blocking(move || stage_worker(replica, plan, &contents, &spool, &nfs3, begun, jobs_rx))
    };
    let r = feed(c, &jobs, begun_rx, &contents, spool, image, &target, &fan).await;
    // The worker ends (aborting a stage not committed) before the replica is used again.
    drop(jobs);
    let replica = worker.await.map_err(|e| anyhow!("image {image}: stage: {e}"))?;
    Ok((replica, r?))
}

/// What an update may relay and fetch: the agent's relay runs (`relay_listen` set) and its client
/// identity for dialing a parent's relay (None on plain TCP).
#[derive(Clone, Copy, Default)]
pub(crate) struct Fanout<'a> {
    pub relays: Option<&'a Arc<relay::Relays>>,
    pub tls: Option<&'a Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// The relay side of one update: the run it feeds, if a child is expected.
struct Fed<'a> {
    run: Option<Arc<relay::Run>>,
    tls: Option<&'a Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// The plan (zstd-decoded when `zstd`) and, per content index, what the blob loop needs; an error
/// is the reason the plan is refused.
fn read_plan(buf: &[u8], zstd: bool) -> Result<(Plan, Vec<Want>), String> {
    let plan = if zstd { decode_plan(buf)? } else { Plan::from_bytes(buf).map_err(|e| format!("plan: {e}"))? };
    let contents = plan
        .contents
        .iter()
        .map(|ct| {
            let base = match &ct.source {
                Source::Send { base } => base.as_ref().map(|b| b.1),
                _ => None,
            };
            (ct.path.clone(), ct.hash, ct.size, base)
        })
        .collect();
    Ok((plan, contents))
}

/// A payload for the stage: received whole in memory, or a complete spool file.
enum Payload {
    Memory(Vec<u8>),
    Spooled(PathBuf),
}

/// What the session asks of [`stage_worker`]; each job answers on its `done`.
enum Job {
    Stage { index: usize, delta: bool, zstd: bool, payload: Payload, done: oneshot::Sender<anyhow::Result<()>> },
    Commit { done: oneshot::Sender<tree::Result<(u64, String)>> },
    Abort { done: oneshot::Sender<()> },
}

/// The blocking side of one update: owns the replica while it stages `plan` (the session waits for
/// every job, so it keeps exclusive use of the replica and memory stays at one blob). Begins the
/// stage, feeds it what the spool already holds (a resume), answers `begun` with the indexes still
/// needed and how many were resumed, then runs jobs until a commit, an abort or the session's end
/// (then the stage is aborted). Gives the replica back.
fn stage_worker(
    mut replica: Replica,
    plan: Plan,
    contents: &[Want],
    spool: &Spool,
    nfs3: &nfs3::Switch,
    begun: oneshot::Sender<tree::Result<(Vec<u32>, u32)>>,
    mut jobs: mpsc::Receiver<Job>,
) -> Replica {
    let mut staging = match replica.begin(plan) {
        Ok(s) => s,
        Err(e) => {
            let _ = begun.send(Err(e));
            return replica;
        }
    };
    let index: HashMap<&[u8], usize> = contents.iter().enumerate().map(|(i, ct)| (ct.0.as_slice(), i)).collect();
    let mut need = Vec::new();
    let mut resumed = 0u32;
    for n in staging.needed() {
        let Some(&i) = index.get(n.path.as_slice()) else { continue };
        let (path, hash, size, base) = &contents[i];
        // Whatever form it came in before: whole or delta (against this plan's base), compressed or not.
        let spooled = [(None, false), (None, true), (base.as_ref(), false), (base.as_ref(), true)]
            .into_iter()
            .find_map(|(b, z)| spool.get(&spool::name(hash, b, z)).map(|p| (p, b.is_some(), z)));
        let fed = (|| -> anyhow::Result<bool> {
            let Some((p, delta, z)) = spooled else { return Ok(false) };
            let f = std::io::BufReader::new(std::fs::File::open(p)?);
            stage_payload(&mut staging, path, delta, z, *size, f)?;
            Ok(true)
        })();
        if matches!(fed, Ok(true)) {
            resumed += 1;
        } else {
            need.push(i as u32);
        }
    }
    if begun.send(Ok((need, resumed))).is_err() {
        let _ = staging.abort();
        return replica;
    }
    loop {
        match jobs.blocking_recv() {
            Some(Job::Stage { index, delta, zstd, payload, done }) => {
                let r = match contents.get(index) {
                    None => Err(anyhow!("content {index} is not in the plan")),
                    Some((path, _, size, _)) => match payload {
                        Payload::Memory(data) => stage_payload(&mut staging, path, delta, zstd, *size, &data[..]),
                        Payload::Spooled(p) => {
                            let r = std::fs::File::open(&p).map_err(anyhow::Error::from).and_then(|f| {
                                stage_payload(&mut staging, path, delta, zstd, *size, std::io::BufReader::new(f))
                            });
                            // A payload that cannot be staged is not resumed from.
                            if r.is_err() {
                                let _ = std::fs::remove_file(&p);
                            }
                            r
                        }
                    },
                };
                let _ = done.send(r);
            }
            Some(Job::Commit { done }) => {
                let r = nfs3.switch(|| staging.commit());
                if r.is_ok() {
                    spool.clear();
                }
                let _ = done.send(r);
                break;
            }
            Some(Job::Abort { done }) => {
                let _ = staging.abort();
                let _ = done.send(());
                break;
            }
            None => {
                let _ = staging.abort();
                break;
            }
        }
    }
    replica
}

/// Sends `job` (made with its answer channel) to the stage worker and waits for the answer.
async fn ask<T>(jobs: &mpsc::Sender<Job>, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> anyhow::Result<T> {
    let (done, answer) = oneshot::channel();
    jobs.send(job(done)).await.map_err(|_| anyhow!("the stage ended"))?;
    answer.await.map_err(|_| anyhow!("the stage ended"))
}

/// The session side of [`update`]: tells the controller what is needed, receives the blobs,
/// has them staged, commits. Returns whether it committed.
#[allow(clippy::too_many_arguments)]
async fn feed(
    c: &mut Conn,
    jobs: &mpsc::Sender<Job>,
    begun: oneshot::Receiver<tree::Result<(Vec<u32>, u32)>>,
    contents: &[Want],
    spool: &Spool,
    image: &str,
    target: &ImageState,
    fan: &Fed<'_>,
) -> Result<bool> {
    let (need, resumed) = match begun.await {
        Ok(Ok(x)) => x,
        Ok(Err(e @ tree::Error::Hostile(_))) => return Err(refuse(c, format!("image {image}: {e}")).await),
        Ok(Err(e)) => {
            c.error(format!("image {image}: {e}")).await?;
            return Ok(false);
        }
        Err(_) => return Err(anyhow!("image {image}: the stage ended before it began").into()),
    };
    if resumed > 0 {
        tracing::info!("image {image}: {resumed} files resumed from the spool");
    }
    c.request(&FromAgent::Need(reply::Need { indexes: need.clone(), resumed })).await?;
    let mut pending: HashSet<u32> = need.into_iter().collect();
    let mut failure: Option<String> = None;
    loop {
        let msg = match c.recv().await {
            Ok(m) => m,
            Err(e) => return Err(fail(c, e).await),
        };
        // FetchPending is a Fetch of whatever this update still waits for.
        let msg = match msg {
            ToAgent::FetchPending(f) => {
                let mut indexes: Vec<u32> = pending.iter().copied().collect();
                indexes.sort_unstable();
                ToAgent::Fetch(req::Fetch {
                    parent: f.parent,
                    addr: f.addr,
                    port: f.port,
                    token: f.token,
                    indexes,
                    stall_ms: f.stall_ms,
                })
            }
            m => m,
        };
        match msg {
            ToAgent::Blob { index, encoding, len, zstd } => {
                if !pending.remove(&index) {
                    return Err(refuse(c, format!("blob {index} was not asked for")).await);
                }
                let (delta, most) = match check_blob(contents, index, encoding, len, zstd) {
                    Ok(x) => x,
                    Err(reason) => return Err(refuse(c, reason).await),
                };
                let mut bulk = match c.bulk("blob", len, most) {
                    Ok(b) => b,
                    Err(_) => {
                        let size = contents.get(index as usize).map_or(0, |ct| ct.2);
                        return Err(refuse(
                            c,
                            format!("blob {index} of {len} bytes is more than a {size}-byte file can need ({most})"),
                        )
                        .await);
                    }
                };
                let name = spool_name(contents, index, delta, zstd);
                let end = |m: &ToAgent| matches!(m, ToAgent::BlobEnd);
                let payload = match recv_payload(c, &mut bulk, len, spool, name, end, fan.run.as_deref()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err((p, e))) => return Err(spool_failed(c, &p, e).await),
                    Err(e) => return Err(fail(c, e).await),
                };
                keep(fan.run.as_ref(), index, relay::Meta { encoding, len, zstd }, &payload).await;
                let index = index as usize;
                let r = ask(jobs, |done| Job::Stage { index, delta, zstd, payload, done }).await?;
                if let Err(e) = r {
                    failure.get_or_insert(format!("{e:#}"));
                }
            }
            ToAgent::Fetch(f) => {
                let (missing, bytes) = fetch(&f, target, &mut pending, contents, spool, jobs, fan).await?;
                if !missing.is_empty() {
                    tracing::info!(
                        "image {image}: {} payloads not had from {}: the controller sends them",
                        missing.len(),
                        f.parent
                    );
                }
                c.request(&FromAgent::Fetched(reply::Fetched { missing, bytes })).await?;
            }
            ToAgent::Commit => break,
            other => return Err(unexpected(c, "a blob or Commit", &other).await),
        }
    }
    if failure.is_none() && !pending.is_empty() {
        failure = Some(format!("{} files were never sent", pending.len()));
    }
    if let Some(f) = failure {
        ask(jobs, |done| Job::Abort { done }).await?;
        c.error(format!("image {image}: {f}")).await?;
        return Ok(false);
    }
    match ask(jobs, |done| Job::Commit { done }).await? {
        Ok((generation, d)) => {
            tracing::info!("image {image}: now at generation {generation} digest {d}");
            let state = ImageState { name: target.name.clone(), generation, digest: digest(&d)? };
            debug_assert_eq!(state.digest, target.digest);
            c.request(&FromAgent::Committed(reply::Committed { state })).await?;
            Ok(true)
        }
        Err(e) => {
            c.error(format!("image {image}: commit: {e}")).await?;
            Ok(false)
        }
    }
}

/// The most bytes a payload for a `size`-byte file can take: the content itself, or a librsync
/// delta (the content as literals at worst, plus command headers).
fn payload_limit(delta: bool, size: u64) -> u64 {
    if delta {
        size.saturating_add(64 << 10)
    } else {
        size
    }
}

/// Feeds one payload into the stage: the content or a delta, zstd-decoded when `zstd`, and never
/// more input than the file can need, so a hostile blob cannot make the agent write without bound
/// (the engine also checks size and BLAKE3).
fn stage_payload(
    staging: &mut tree::Staging<'_>,
    path: &[u8],
    delta: bool,
    zstd: bool,
    size: u64,
    r: impl std::io::Read,
) -> anyhow::Result<()> {
    use std::io::Read;
    // One byte past a literal's size, so a longer one is seen (and refused by the engine).
    let limit = payload_limit(delta, size) + u64::from(!delta);
    if zstd {
        let d = zstd_reader(std::io::BufReader::new(r))?.take(limit);
        if delta {
            staging.add_delta(path, d)?
        } else {
            staging.write_file(path, d)?
        }
    } else if delta {
        staging.add_delta(path, r.take(limit))?
    } else {
        staging.write_file(path, r.take(limit))?
    }
    Ok(())
}

/// The spool could not be written: the partial file is gone; tells the controller why (ENOSPC by
/// name, and where) and reads what it still sends up to its `Commit`, so the reason arrives instead
/// of a reset connection, then ends the session.
async fn spool_failed(c: &mut Conn, path: &Path, e: std::io::Error) -> Error {
    let full = rustix::io::Errno::from_io_error(&e) == Some(rustix::io::Errno::NOSPC);
    let reason = if full {
        format!("ENOSPC: no space left on the agent's disk writing {} (the partial file was removed)", path.display())
    } else {
        format!("writing {}: {e} (the partial file was removed)", path.display())
    };
    let reply = if full {
        FromAgent::NoSpace { path: path.display().to_string(), reason: reason.clone() }
    } else {
        FromAgent::Error { reason: reason.clone() }
    };
    if c.request(&reply).await.is_ok() {
        let until = std::time::Instant::now() + IDLE_TIMEOUT;
        while std::time::Instant::now() < until {
            match c.recv_payload_within(c.timeout).await {
                Ok(p) if proto::chunk_data::<ToAgent>(p).is_some() => continue,
                Ok(p) if matches!(proto::decode::<ToAgent>(p), Ok(ToAgent::Commit)) => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        c.shutdown().await;
    }
    Error::Refused(reason)
}

/// A receive that failed: a protocol violation is refused with its reason, anything else (the
/// connection) ends the session as it is.
pub(crate) async fn fail(c: &mut Conn, e: transport::Error) -> Error {
    match e {
        transport::Error::Proto(p) => refuse(c, p.to_string()).await,
        e => e.into(),
    }
}

/// Checks a blob's header against its plan content: whether it is a delta, and the most bytes
/// it may announce (what this file can need: the stage reads no more than that either, so a peer
/// cannot fill the spool's disk with one blob); an error is the refusal.
fn check_blob(contents: &[Want], index: u32, encoding: Encoding, len: u64, zstd: bool) -> Result<(bool, u64), String> {
    let Some((_, _, size, base)) = contents.get(index as usize) else {
        return Err(format!("blob {index} is not in the plan"));
    };
    let delta = match encoding {
        Encoding::Literal if !zstd && len != *size => {
            return Err(format!("literal blob {index} of {len} bytes for a {size}-byte file"))
        }
        Encoding::Literal => false,
        Encoding::Delta if base.is_some() => true,
        Encoding::Delta => return Err(format!("delta blob {index} for a file without base")),
    };
    let most = payload_limit(delta, *size);
    let most = if zstd { zstd::zstd_safe::compress_bound(most as usize) as u64 } else { most };
    Ok((delta, most))
}

/// The spool name of payload `index` (checked by [`check_blob`]).
fn spool_name(contents: &[Want], index: u32, delta: bool, zstd: bool) -> String {
    match contents.get(index as usize) {
        Some((_, hash, _, base)) => spool::name(hash, if delta { base.as_ref() } else { None }, zstd),
        None => format!("invalid-{index}"),
    }
}

/// Reads the chunks of one blob (from the controller or a parent relay) and then its end (`end`
/// says which message that is): up to one chunk assembled in memory, a larger one written to the
/// spool through tokio's file (writes on the blocking pool), flushed and renamed whole. A write
/// error (a full disk) does not end the session mid-stream: the rest of the blob is read and
/// dropped, the partial file removed and the error returned inside, so the sender gets the
/// reason, not a reset. `run`: a relay run counting the bytes (its waiting children).
async fn recv_payload<R: proto::Role>(
    c: &mut transport::Conn<R>,
    bulk: &mut transport::Bulk,
    len: u64,
    spool: &Spool,
    name: String,
    end: impl Fn(&R::In) -> bool,
    run: Option<&relay::Run>,
) -> std::result::Result<std::result::Result<Payload, (PathBuf, std::io::Error)>, transport::Error> {
    use tokio::io::AsyncWriteExt;
    let count = |n: usize| {
        if let Some(r) = run {
            r.progress(n as u64)
        }
    };
    if len <= CHUNK as u64 {
        // Small: assembled in memory and staged directly, no spool.
        let mut data = Vec::with_capacity(len as usize);
        while let Some(d) = c.next_chunk(bulk).await? {
            data.extend_from_slice(d);
            count(d.len());
        }
        let m = c.recv().await?;
        if !end(&m) {
            return Err(proto::Error::Unexpected { expected: "BlobEnd", got: m.kind() }.into());
        }
        return Ok(Ok(Payload::Memory(data)));
    }
    let part = spool.partial(&name);
    let mut f = tokio::fs::File::create(&part).await.map_err(|e| (part.clone(), e));
    while let Some(d) = c.next_chunk(bulk).await? {
        count(d.len());
        if let Ok(w) = &mut f {
            if let Err(e) = w.write_all(d).await {
                f = Err((part.clone(), e));
            }
        }
    }
    // tokio's writes complete in the background: the flush waits for the last and reports its error.
    if let Ok(w) = &mut f {
        if let Err(e) = w.flush().await {
            f = Err((part.clone(), e));
        }
    }
    let m = c.recv().await?;
    if !end(&m) {
        return Err(proto::Error::Unexpected { expected: "BlobEnd", got: m.kind() }.into());
    }
    if let Err(e) = f {
        let _ = tokio::fs::remove_file(&part).await;
        return Ok(Err(e));
    }
    let sp = spool.clone();
    match tokio::task::spawn_blocking(move || sp.finish(&name)).await {
        Ok(Ok(p)) => Ok(Ok(Payload::Spooled(p))),
        Ok(Err(e)) => Ok(Err((part, std::io::Error::other(format!("{e:#}"))))),
        Err(e) => Ok(Err((part, std::io::Error::other(e.to_string())))),
    }
}

/// Keeps a payload for the children of this relay run, if any.
async fn keep(run: Option<&Arc<relay::Run>>, index: u32, meta: relay::Meta, payload: &Payload) {
    let Some(run) = run else { return };
    let source = match payload {
        Payload::Memory(d) => relay::Source::Bytes(d),
        Payload::Spooled(p) => relay::Source::File(p),
    };
    run.put(index, meta, source).await;
}

/// `Fetch`: the payloads `f.indexes` (those still pending) from the parent's relay, staged as if
/// the controller had sent them (and kept for this agent's own children). Returns what could
/// not be had (the parent unreachable, refusing, reset, `stall_ms` without a frame, a payload
/// missing there or not staging) and the payload bytes received. Only a dead stage is an error.
async fn fetch(
    f: &req::Fetch,
    target: &ImageState,
    pending: &mut HashSet<u32>,
    contents: &[Want],
    spool: &Spool,
    jobs: &mpsc::Sender<Job>,
    fan: &Fed<'_>,
) -> Result<(Vec<u32>, u64)> {
    let mut seen = HashSet::new();
    let want: Vec<u32> = f.indexes.iter().copied().filter(|i| pending.contains(i) && seen.insert(*i)).collect();
    let stall = Duration::from_millis(f.stall_ms.clamp(100, 3_600_000));
    let parent = f.parent.as_str();
    // The parent's address as the model writes an endpoint (IPv6 bracketed); one that is no
    // address at all leaves everything to the controller.
    let addr = match model::Address::parse(&f.addr) {
        Ok(host) => model::Endpoint { host, port: f.port }.to_string(),
        Err(e) => {
            tracing::warn!("image {}: relay {parent}: {e}", target.name);
            return Ok((want, 0));
        }
    };
    let mut c = match open_parent(&addr, parent, f.token, (&target.name, target.generation), fan.tls, stall).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("image {}: relay {parent} at {addr}: {e:#}", target.name);
            return Ok((want, 0));
        }
    };
    let (mut missing, mut bytes) = (Vec::new(), 0u64);
    // Asked ahead (the relay answers in order), so small payloads do not each cost a round trip.
    let mut asked = 0;
    let mut rest = want.clone().into_iter();
    while let Some(i) = rest.next() {
        let ask_ahead = async {
            while asked < want.len() && asked < (want.len() - rest.len()) + FETCH_AHEAD {
                c.send(&ToRelay::Get { index: want[asked] }).await?;
                asked += 1;
            }
            c.flush().await
        };
        let got = match ask_ahead.await {
            Ok(()) => fetch_one(&mut c, i, contents, spool, stall, fan.run.as_deref()).await,
            Err(e) => Err(e.into()),
        };
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("image {}: relay {parent}: payload {i}: {e:#}", target.name);
                missing.push(i);
                missing.extend(rest);
                break;
            }
        };
        let Some((payload, delta, meta)) = got else {
            missing.push(i);
            continue;
        };
        bytes += meta.len;
        keep(fan.run.as_ref(), i, meta, &payload).await;
        let zstd = meta.zstd;
        match ask(jobs, |done| Job::Stage { index: i as usize, delta, zstd, payload, done }).await? {
            Ok(()) => {
                pending.remove(&i);
            }
            Err(e) => {
                tracing::warn!("image {}: payload {i} from relay {parent} did not stage: {e:#}", target.name);
                missing.push(i);
            }
        }
    }
    let _ = c.request(&ToRelay::Bye).await;
    c.shutdown().await;
    Ok((missing, bytes))
}

type RelayConn = transport::Conn<proto::relay::Child>;

/// How many payloads a child asks its parent for ahead of the one it is receiving.
const FETCH_AHEAD: usize = 32;

/// Dials the parent's relay (its certificate must name `parent`) and presents the run's token.
async fn open_parent(
    addr: &str,
    parent: &str,
    token: [u8; 32],
    (image, generation): (&Name, u64),
    tls: Option<&Arc<tokio_rustls::rustls::ClientConfig>>,
    stall: Duration,
) -> anyhow::Result<RelayConn> {
    let mut c: RelayConn = transport::dial(addr, parent, tls.cloned(), stall).await?;
    c.request(&ToRelay::Hello { token, image: image.clone(), generation }).await?;
    match c.recv_within(stall).await? {
        FromRelay::Ready => Ok(c),
        FromRelay::Error { reason } => bail!("refused: {reason}"),
        other => bail!("expected Ready, got {}", other.kind()),
    }
}

/// `RelayedPlan`: the plan's bytes from the parent's relay, taken only with the length and BLAKE3
/// the controller gave (so a parent cannot hand out another plan); an error is why not, and the
/// controller then sends the plan itself. Bounded: `stall_ms` per frame, `wait_ms` to its start.
pub(crate) async fn relayed_plan(
    q: &req::RelayedPlan,
    image: &Name,
    tls: Option<&Arc<tokio_rustls::rustls::ClientConfig>>,
) -> std::result::Result<Vec<u8>, String> {
    if q.len > MAX_PLAN {
        return Err(format!("a plan of {} bytes is over the limit of {MAX_PLAN}", q.len));
    }
    let stall = Duration::from_millis(q.stall_ms.clamp(100, 3_600_000));
    let wait = Duration::from_millis(q.wait_ms.min(3_600_000));
    let parent = q.parent.as_str();
    let addr = model::Address::parse(&q.addr)
        .map(|host| model::Endpoint { host, port: q.port }.to_string())
        .map_err(|e| format!("relay {parent}: {e}"))?;
    tracing::info!("image {image}: asking relay {parent} at {addr} for plan {}", q.blake3);
    let got = async {
        let mut c = open_parent(&addr, parent, q.token, (image, q.generation), tls, stall).await?;
        c.request(&ToRelay::GetPlan { blake3: q.blake3 }).await?;
        // `Waiting` while the parent's own plan is on its way: as long as `wait`, no longer
        // (the parent's relay could say it for ever).
        let t = tokio::time::Instant::now();
        let len = loop {
            match c.recv_within(stall).await? {
                FromRelay::Plan { len } => break len,
                FromRelay::Waiting if t.elapsed() < wait => continue,
                FromRelay::Waiting => bail!("no plan within {wait:?}"),
                FromRelay::PlanMissing => bail!("the relay has no such plan"),
                FromRelay::Error { reason } => bail!("refused: {reason}"),
                other => bail!("expected Plan, got {}", other.kind()),
            }
        };
        if len != q.len {
            bail!("its plan is {len} bytes, the controller's {}", q.len);
        }
        let b = c.recv_bulk("plan", len, q.len).await?;
        let _ = c.request(&ToRelay::Bye).await;
        c.shutdown().await;
        anyhow::Ok(b)
    };
    let b = got.await.map_err(|e| format!("relay {parent} at {addr}: {e:#}"))?;
    let (b, d) = blocking(move || {
        let d = Digest::from_bytes(*blake3::hash(&b).as_bytes());
        Ok((b, d))
    })
    .await
    .map_err(|e| format!("{e:#}"))?;
    if d != q.blake3 {
        return Err(format!("relay {parent} sent a plan of BLAKE3 {d}, not the controller's {}: refused", q.blake3));
    }
    Ok(b)
}

/// One payload from the parent (already asked for): `Some` with how it came, `None` when the
/// parent does not have it; an error ends the fetch (the connection is no longer usable).
async fn fetch_one(
    c: &mut RelayConn,
    index: u32,
    contents: &[Want],
    spool: &Spool,
    stall: Duration,
    run: Option<&relay::Run>,
) -> anyhow::Result<Option<(Payload, bool, relay::Meta)>> {
    loop {
        match c.recv_within(stall).await? {
            FromRelay::Waiting => continue,
            FromRelay::Missing { index: i } if i == index => return Ok(None),
            FromRelay::Blob { index: i, encoding, len, zstd } if i == index => {
                let (delta, most) = check_blob(contents, index, encoding, len, zstd).map_err(|e| anyhow!(e))?;
                let mut bulk = c.bulk("blob", len, most)?;
                let name = spool_name(contents, index, delta, zstd);
                let end = |m: &FromRelay| matches!(m, FromRelay::BlobEnd);
                let payload = recv_payload(c, &mut bulk, len, spool, name, end, run)
                    .await?
                    .map_err(|(p, e)| anyhow!("writing {}: {e}", p.display()))?;
                return Ok(Some((payload, delta, relay::Meta { encoding, len, zstd })));
            }
            FromRelay::Error { reason } => bail!("refused: {reason}"),
            other => bail!("expected payload {index}, got {}", other.kind()),
        }
    }
}

/// Writes the exports atomically (Linux: the whole file; AIX: our block spliced into /etc/exports,
/// every other line kept), then runs the reload command. Returns (reload succeeded, its output).
async fn write_exports(agent: &Agent, text: &str) -> anyhow::Result<(bool, String)> {
    let (file, text, cfg) = (PathBuf::from(agent.cfg.exports_file.as_str()), text.to_string(), agent.cfg.clone());
    let mounts = blocking(move || {
        let content = match cfg.dialect {
            model::Dialect::Linux => text.clone(),
            model::Dialect::Aix => {
                let existing = match std::fs::read_to_string(&file) {
                    Ok(s) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
                };
                exports::splice_aix(&existing, &text).map_err(|e| anyhow!("{}: {e}", file.display()))?
            }
        };
        // Node directories become mount points before nfsd reads the exports that nest them.
        let mounts = crate::mounts::prepare(&cfg, &text);
        write_atomic(&file, content.as_bytes())?;
        Ok(mounts)
    })
    .await?;
    if !mounts.made.is_empty() {
        tracing::info!(dirs = ?mounts.made, "statelite node directories made mount points");
    }
    let (ok, out) = reload(agent).await;
    if mounts.failed.is_empty() {
        return Ok((ok, out));
    }
    // Exports are written and reloaded all the same (a node mounting its own directory directly is
    // served), but a nested node's own export, and its `refer=`, is not reached through the area's.
    let failed = mounts.failed.join("; ");
    tracing::error!("statelite mounts failed: {failed}");
    Ok((
        false,
        format!("statelite node directories not made mount points (their refer= would be hidden): {failed}\n{out}"),
    ))
}

/// Runs the reload command. Returns (it succeeded, its output).
async fn reload(agent: &Agent) -> (bool, String) {
    let cmd = &agent.cfg.reload;
    let Some((prog, args)) = cmd.split_first() else { return (true, String::new()) };
    let run = tokio::process::Command::new(prog).args(args).kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(120), run).await {
        Err(_) => (false, format!("`{}` timed out", cmd.join(" "))),
        Ok(Err(e)) => (false, format!("`{}`: {e}", cmd.join(" "))),
        Ok(Ok(o)) => {
            let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.push_str(&String::from_utf8_lossy(&o.stderr));
            if !o.status.success() {
                out = format!("`{}` failed ({}): {out}", cmd.join(" "), o.status);
            }
            (o.status.success(), out)
        }
    }
}

/// The exports file, whole or not at all, through the one atomic-write helper (tmp, fsync,
/// rename, directory fsync; a symlink planted at the temporary name is not followed).
fn write_atomic(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = file.parent().ok_or_else(|| anyhow!("{}: no parent directory", file.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    tree::fsops::write_atomic(file, bytes).with_context(|| format!("writing {}", file.display()))
}
