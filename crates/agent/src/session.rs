//! One controller session: handshake, then requests until `Bye`, a closed connection or a violation.

use crate::spool::{self, Spool};
use crate::{Agent, IDLE_TIMEOUT};
use anyhow::{anyhow, bail, Context, Result};
use proto::{Encoding, FromAgent, ImageState, ToAgent, CHUNK};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use transport::Conn;
use tree::{Plan, Replica, ReplicaOptions, Source};

/// Largest change plan accepted (it carries the whole manifest of the new generation).
const MAX_PLAN: u64 = 2 << 30;

/// The engine's file work is blocking; it runs on this worker without stalling the other sessions.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub(crate) fn kind(m: &ToAgent) -> &'static str {
    match m {
        ToAgent::Hello { .. } => "Hello",
        ToAgent::Ping => "Ping",
        ToAgent::Status => "Status",
        ToAgent::Open { .. } => "Open",
        ToAgent::GetManifest => "GetManifest",
        ToAgent::Plan { .. } => "Plan",
        ToAgent::Chunk(_) => "Chunk",
        ToAgent::Blob { .. } => "Blob",
        ToAgent::BlobEnd => "BlobEnd",
        ToAgent::Commit => "Commit",
        ToAgent::Verify => "Verify",
        ToAgent::Exports { .. } => "Exports",
        ToAgent::Bye => "Bye",
        ToAgent::StateliteOpen { .. } => "StateliteOpen",
        ToAgent::StateliteScan { .. } => "StateliteScan",
        ToAgent::StateliteRead { .. } => "StateliteRead",
    }
}

/// Tells the controller why, then ends the session with that reason (logged by the caller).
/// Answers `GetManifest` with the replica's recorded manifest, chunked.
pub(crate) async fn send_manifest(c: &mut Conn, replica: &Replica) -> Result<()> {
    let bytes = match replica.manifest().map(|m| m.to_bytes()) {
        Some(Ok(b)) => b,
        _ => return Err(refuse(c, "no recorded manifest").await),
    };
    c.send(&FromAgent::Manifest { len: bytes.len() as u64 }).await?;
    for ch in bytes.chunks(CHUNK) {
        c.send(&FromAgent::Chunk(ch.to_vec())).await?;
    }
    c.flush().await?;
    Ok(())
}

pub(crate) async fn refuse(c: &mut Conn, reason: impl Into<String>) -> anyhow::Error {
    let reason = reason.into();
    let _ = c.request(&FromAgent::Error { reason: reason.clone() }).await;
    anyhow!("refused: {reason}")
}

pub async fn run(agent: &Agent, mut c: Conn) -> Result<()> {
    match c.recv::<ToAgent>().await? {
        ToAgent::Hello { version, controller } => {
            if version != proto::VERSION {
                return Err(refuse(&mut c, proto::Error::Version { theirs: version }.to_string()).await);
            }
            c.request(&FromAgent::Hello { version: proto::VERSION, agent: agent.name.clone() }).await?;
            tracing::info!("session with {} (controller `{controller}`)", c.peer);
        }
        other => return Err(refuse(&mut c, format!("expected Hello, got {}", kind(&other))).await),
    }
    let mut next = None;
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None => match c.recv_within(IDLE_TIMEOUT).await {
                Ok(m) => m,
                Err(transport::Error::Closed) => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        };
        match msg {
            ToAgent::Ping => c.request(&FromAgent::Pong).await?,
            ToAgent::Status => {
                let images = blocking(|| status(agent));
                c.request(&FromAgent::Status { images }).await?
            }
            ToAgent::Open { image, path } => {
                if let Err(e) = proto::check_name(&image).and_then(|_| proto::check_rel_path(&path)) {
                    return Err(refuse(&mut c, e.to_string()).await);
                }
                let held = agent.lock(&image).lock_owned().await;
                next = image_session(agent, &mut c, &image, &path, held).await?;
            }
            ToAgent::Exports { text } => {
                let (reloaded, output) = match write_exports(agent, &text).await {
                    Ok(r) => r,
                    Err(e) => (false, format!("{e:#}")),
                };
                c.request(&FromAgent::ExportsDone { reloaded, output }).await?
            }
            ToAgent::Bye => {
                c.shutdown().await;
                return Ok(());
            }
            ToAgent::StateliteOpen { root, node } => {
                next = crate::statelite::backup(agent, &mut c, &root, &node).await?
            }
            ToAgent::StateliteScan { root, node } => {
                next = crate::statelite::serve(agent, &mut c, &root, &node).await?
            }
            other => return Err(refuse(&mut c, format!("unexpected {} outside an image session", kind(&other))).await),
        }
    }
}

/// Every image this agent holds, as recorded by the engine.
fn status(agent: &Agent) -> Vec<ImageState> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(Path::new(agent.cfg.state_dir.as_str()).join("images")) else { return out };
    let mut names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    for name in names {
        let sd = agent.image_state_dir(&name);
        let Ok(path) = std::fs::read_to_string(sd.join("path")) else { continue };
        if proto::check_rel_path(&path).is_err() {
            continue;
        }
        let root = Path::new(agent.cfg.root.as_str()).join(&path);
        if let Ok(r) = Replica::open(&root, &sd.join("replica"), opts()) {
            if let Some((generation, digest)) = r.current() {
                out.push(ImageState { name, generation, digest });
            }
        }
    }
    out
}

fn opts() -> ReplicaOptions {
    // Image roots (Linux rootimg, AIX SPOTs) hold /dev nodes.
    ReplicaOptions { allow_devices: true }
}

/// Creates the directories of an image path under the agent root, refusing any component that
/// exists as something other than a real directory (a symlink planted there must not redirect us).
pub(crate) fn make_beneath(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut p = root.to_path_buf();
    std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    for comp in rel.split('/') {
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
/// are removed in the background, still under the image's lock, so the controller's session goes on.
fn cleanup_later(mut replica: Replica, held: tokio::sync::OwnedMutexGuard<()>, image: &str) {
    let image = image.to_string();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = replica.cleanup() {
            tracing::warn!("image {image}: removing the old generation's leftovers: {e}");
        }
        drop(held);
    });
}

async fn image_session(
    agent: &Agent,
    c: &mut Conn,
    image: &str,
    path: &str,
    held: tokio::sync::OwnedMutexGuard<()>,
) -> Result<Option<ToAgent>> {
    let sd = agent.image_state_dir(image);
    let opened = blocking(|| -> Result<Replica> {
        let root = make_beneath(Path::new(agent.cfg.root.as_str()), path)?;
        std::fs::create_dir_all(&sd).with_context(|| format!("creating {}", sd.display()))?;
        let pf = sd.join("path");
        if std::fs::read_to_string(&pf).ok().as_deref() != Some(path) {
            std::fs::write(&pf, path).with_context(|| format!("writing {}", pf.display()))?;
        }
        let mut r = Replica::open(&root, &sd.join("replica"), opts())?;
        let rec = r.recover()?;
        if rec != tree::Recovery::Clean {
            tracing::info!("image {image}: recovery {rec:?}");
        }
        if r.current().is_none() {
            // A new replica (or a copy made by prsync): take what is there as generation 0.
            r.adopt(0)?;
        }
        Ok(r)
    });
    let mut replica = match opened {
        Ok(r) => r,
        Err(e) => return Err(refuse(c, format!("image {image}: {e:#}")).await),
    };
    let state = current(&replica, image);
    c.request(&FromAgent::Opened { state }).await?;
    let spool = Spool::open(sd.join("spool"))?;
    let mut committed = false;
    loop {
        let msg = match c.recv_within(IDLE_TIMEOUT).await {
            Ok(m) => m,
            Err(transport::Error::Closed) => {
                if committed {
                    cleanup_later(replica, held, image);
                }
                return Ok(Some(ToAgent::Bye));
            }
            Err(e) => return Err(e.into()),
        };
        match msg {
            ToAgent::GetManifest => {
                send_manifest(c, &replica).await?;
            }
            ToAgent::Verify => {
                let scanned = blocking(|| replica.scan());
                match scanned {
                    Ok(m) => {
                        let recorded = current(&replica, image);
                        c.request(&FromAgent::Verified { recorded, actual: m.digest() }).await?
                    }
                    Err(e) => c.request(&FromAgent::Error { reason: format!("scanning: {e}") }).await?,
                }
            }
            ToAgent::Plan { len, zstd } => {
                committed |= update(c, &mut replica, &spool, image, len, zstd, &agent.nfs3).await?
            }
            other => {
                if committed {
                    cleanup_later(replica, held, image);
                }
                return Ok(Some(other));
            }
        }
    }
}

pub(crate) fn current(r: &Replica, image: &str) -> ImageState {
    let (generation, digest) = r.current().unwrap_or_default();
    ImageState { name: image.to_string(), generation, digest }
}

/// One plan content as the blob loop needs it: path, hash, size, delta base hash.
type Want = (Vec<u8>, [u8; 32], u64, Option<[u8; 32]>);

/// Receives a plan and its blobs, stages them, commits. Replies `Committed` or `Error` and returns
/// whether it committed; returns an error (ending the session) only for protocol violations and
/// hostile input.
pub(crate) async fn update(
    c: &mut Conn,
    replica: &mut Replica,
    spool: &Spool,
    image: &str,
    len: u64,
    zstd: bool,
    nfs3: &nfs3::Switch,
) -> Result<bool> {
    if len > MAX_PLAN {
        return Err(refuse(c, format!("plan of {len} bytes exceeds {MAX_PLAN}")).await);
    }
    let mut buf = Vec::with_capacity(len.min(64 << 20) as usize);
    while (buf.len() as u64) < len {
        match c.recv::<ToAgent>().await? {
            ToAgent::Chunk(d) if buf.len() as u64 + d.len() as u64 <= len => buf.extend_from_slice(&d),
            ToAgent::Chunk(_) => return Err(refuse(c, "plan longer than announced").await),
            other => return Err(refuse(c, format!("expected a plan chunk, got {}", kind(&other))).await),
        }
    }
    if zstd {
        // Decoded with the same bound as a plain plan.
        use std::io::Read;
        let mut out = Vec::new();
        let r = zstd::stream::read::Decoder::new(&buf[..]).and_then(|d| d.take(MAX_PLAN + 1).read_to_end(&mut out));
        match r {
            Ok(n) if n as u64 <= MAX_PLAN => buf = out,
            Ok(_) => return Err(refuse(c, format!("plan decompresses past {MAX_PLAN} bytes")).await),
            Err(e) => return Err(refuse(c, format!("plan: zstd: {e}")).await),
        }
    }
    let plan = match Plan::from_bytes(&buf) {
        Ok(p) => p,
        Err(e) => return Err(refuse(c, format!("plan: {e}")).await),
    };
    drop(buf);
    // (path, hash, size, delta base hash) per content index, kept before the plan moves into the stage.
    let contents: Vec<Want> = plan
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
    let target = ImageState { name: image.to_string(), generation: plan.generation, digest: plan.to_digest.clone() };
    let begun = blocking(|| replica.begin(plan));
    let mut staging = match begun {
        Ok(s) => s,
        Err(e @ tree::Error::Hostile(_)) => return Err(refuse(c, format!("image {image}: {e}")).await),
        Err(e) => {
            c.request(&FromAgent::Error { reason: format!("image {image}: {e}") }).await?;
            return Ok(false);
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
        let fed = blocking(|| -> Result<bool> {
            let Some((p, delta, z)) = spooled else { return Ok(false) };
            let f = std::io::BufReader::new(std::fs::File::open(p)?);
            stage_payload(&mut staging, path, delta, z, *size, f)?;
            Ok(true)
        });
        if matches!(fed, Ok(true)) {
            resumed += 1;
        } else {
            need.push(i as u32);
        }
    }
    if resumed > 0 {
        tracing::info!("image {image}: {resumed} files resumed from the spool");
    }
    c.request(&FromAgent::Need { indexes: need.clone(), resumed }).await?;
    let mut pending: HashSet<u32> = need.into_iter().collect();
    let mut failure: Option<String> = None;
    loop {
        match c.recv::<ToAgent>().await? {
            ToAgent::Blob { index, encoding, len, zstd } => {
                if !pending.remove(&index) {
                    return Err(refuse(c, format!("blob {index} was not asked for")).await);
                }
                let Some((path, hash, size, base)) = contents.get(index as usize) else {
                    return Err(refuse(c, format!("blob {index} is not in the plan")).await);
                };
                let base = match encoding {
                    Encoding::Literal if !zstd && len != *size => {
                        return Err(
                            refuse(c, format!("literal blob {index} of {len} bytes for a {size}-byte file")).await
                        )
                    }
                    Encoding::Literal => None,
                    Encoding::Delta => match base {
                        Some(b) => Some(b),
                        None => return Err(refuse(c, format!("delta blob {index} for a file without base")).await),
                    },
                };
                let delta = base.is_some();
                let r = if len <= CHUNK as u64 {
                    // Small: assembled in memory and staged directly, no spool.
                    let mut data = Vec::with_capacity(len as usize);
                    recv_blob(c, len, |d| {
                        data.extend_from_slice(d);
                        Ok(())
                    })
                    .await?;
                    blocking(|| stage_payload(&mut staging, path, delta, zstd, *size, &data[..]))
                        .map_err(|e| format!("{e:#}"))
                } else {
                    let name = spool::name(hash, base, zstd);
                    let part = spool.partial(&name);
                    let mut f = std::fs::File::create(&part).with_context(|| format!("{}", part.display()))?;
                    recv_blob(c, len, |d| blocking(|| f.write_all(d)).map_err(anyhow::Error::from)).await?;
                    drop(f);
                    let p = spool.finish(&name)?;
                    let r = blocking(|| -> Result<()> {
                        let f = std::io::BufReader::new(std::fs::File::open(&p)?);
                        stage_payload(&mut staging, path, delta, zstd, *size, f)
                    });
                    if r.is_err() {
                        let _ = std::fs::remove_file(&p);
                    }
                    r.map_err(|e| format!("{e:#}"))
                };
                if let Err(e) = r {
                    failure.get_or_insert(e);
                }
            }
            ToAgent::Commit => break,
            other => return Err(refuse(c, format!("expected a blob or Commit, got {}", kind(&other))).await),
        }
    }
    if failure.is_none() && !pending.is_empty() {
        failure = Some(format!("{} files were never sent", pending.len()));
    }
    if let Some(f) = failure {
        let _ = blocking(|| staging.abort());
        c.request(&FromAgent::Error { reason: format!("image {image}: {f}") }).await?;
        return Ok(false);
    }
    let committed = blocking(|| nfs3.switch(|| staging.commit()));
    match committed {
        Ok((generation, digest)) => {
            spool.clear();
            tracing::info!("image {image}: now at generation {generation} digest {digest}");
            debug_assert_eq!(digest, target.digest);
            c.request(&FromAgent::Committed { state: ImageState { name: image.into(), generation, digest } }).await?;
            Ok(true)
        }
        Err(e) => {
            c.request(&FromAgent::Error { reason: format!("image {image}: commit: {e}") }).await?;
            Ok(false)
        }
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
) -> Result<()> {
    use std::io::Read;
    let limit = if delta { size + (64 << 10) } else { size + 1 };
    if zstd {
        let d = zstd::stream::read::Decoder::new(r)?.take(limit);
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

/// Reads `Chunk`s up to `BlobEnd`, handing each to `sink`; exactly `len` bytes or the session ends.
async fn recv_blob(c: &mut Conn, len: u64, mut sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut got = 0u64;
    loop {
        let t = c.timeout;
        let payload = c.recv_payload_within(t).await?;
        if let Some(d) = proto::chunk_data(payload) {
            got += d.len() as u64;
            if got > len {
                return Err(refuse(c, "blob longer than announced").await);
            }
            // Written from the receive buffer: no copy into a message.
            sink(d)?;
            continue;
        }
        let msg = proto::decode::<ToAgent>(payload);
        match msg? {
            ToAgent::BlobEnd if got == len => return Ok(()),
            ToAgent::BlobEnd => return Err(refuse(c, "blob shorter than announced").await),
            other => return Err(refuse(c, format!("expected a blob chunk, got {}", kind(&other))).await),
        }
    }
}

/// Writes the exports atomically (Linux: the whole file; AIX: our block spliced into /etc/exports,
/// every other line kept), then runs the reload command. Returns (reload succeeded, its output).
async fn write_exports(agent: &Agent, text: &str) -> Result<(bool, String)> {
    let file = PathBuf::from(agent.cfg.exports_file.as_str());
    let content = match agent.cfg.dialect {
        model::Dialect::Linux => text.to_string(),
        model::Dialect::Aix => {
            let existing = match std::fs::read_to_string(&file) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
            };
            exports::splice_aix(&existing, text).map_err(|e| anyhow!("{}: {e}", file.display()))?
        }
    };
    blocking(|| write_atomic(&file, content.as_bytes()))?;
    let cmd = &agent.cfg.reload;
    let Some((prog, args)) = cmd.split_first() else { return Ok((true, String::new())) };
    let run = tokio::process::Command::new(prog).args(args).kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(120), run).await {
        Err(_) => Ok((false, format!("`{}` timed out", cmd.join(" ")))),
        Ok(Err(e)) => Ok((false, format!("`{}`: {e}", cmd.join(" ")))),
        Ok(Ok(o)) => {
            let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.push_str(&String::from_utf8_lossy(&o.stderr));
            if !o.status.success() {
                out = format!("`{}` failed ({}): {out}", cmd.join(" "), o.status);
            }
            Ok((o.status.success(), out))
        }
    }
}

fn write_atomic(file: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = file.parent().ok_or_else(|| anyhow!("{}: no parent directory", file.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir
        .join(format!(".{}.hanfs-tmp", file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("renaming onto {}", file.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
