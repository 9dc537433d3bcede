//! Statelite replication and node moves, controller side.
//!
//! Data path: for each (area, node, backup SN) the controller opens the backup's copy
//! (`StateliteOpen`, a crash-safe `tree::Replica` on the agent), scans the live data on the serving SN
//! (`StateliteScan`), diffs the two manifests here, sends the plan to the backup and pipes each needed
//! file from the serving agent to the backup (`StateliteRead` -> `Blob`), then `Commit`. Unchanged
//! files, moves and copies are never resent; changed files travel whole (no deltas yet).
//!
//! State kept in the cluster's `state_dir`:
//! - `served_by`: the move overlay, one `NODE SN` line per moved node, written atomically by
//!   `migrate`/`failover` and applied by [`apply_overlay`] on every config load, so every later
//!   render keeps `refer=` on the old SN and rw on the new one.
//! - `statelite/<area>/<node>/<sn>`: `GENERATION DIGEST UNIX_SECONDS FROM` of the last successful sync
//!   of that backup copy (status lag; failover's "holds a copy").

use crate::sn::Conn;
use crate::{Controller, SnError};
use anyhow::{anyhow, bail, Context, Result};
use model::Cluster;
use proto::{req, AbsPath, Encoding, Name, ToAgent};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One backup copy to bring up to date.
#[derive(Debug, Clone)]
pub struct Pair {
    pub area: String,
    pub path: String,
    pub node: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateliteReport {
    pub area: String,
    pub node: String,
    pub from: String,
    pub to: String,
    pub ok: bool,
    pub generation: u64,
    pub digest: String,
    pub files_sent: u64,
    pub bytes_sent: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A backup copy's last successful sync, as recorded on the MN.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    pub area: String,
    pub node: String,
    pub served_by: String,
    pub backup: String,
    /// Unix seconds of the last successful sync (None: never synced).
    pub last_sync: Option<u64>,
    /// Seconds since then.
    pub lag_seconds: Option<u64>,
    pub generation: Option<u64>,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Every (area, node, backup) of `nodes` (all when None): backups are the node's SNs other than the
/// one serving it.
pub fn pairs(cluster: &Cluster, nodes: Option<&[String]>) -> Vec<Pair> {
    let mut out = Vec::new();
    for area in cluster.statelite() {
        for n in cluster.nodes().iter().filter(|n| n.uses_area(&area.name)) {
            if nodes.is_some_and(|l| !l.contains(&n.name)) {
                continue;
            }
            let Some(serving) = cluster.serving(&n.name) else { continue };
            for b in n.sns.iter().filter(|s| **s != serving) {
                out.push(Pair {
                    area: area.name.clone(),
                    path: area.path.as_str().to_string(),
                    node: n.name.clone(),
                    from: serving.to_string(),
                    to: b.clone(),
                });
            }
        }
    }
    out
}

// ---- lock ----------------------------------------------------------------------------------

/// Held (flock on `state_dir/statelite.lock`) by every statelite sync round and by `migrate`/
/// `failover` from loading the overlay to recording the move: a sync that read the old placement
/// must never copy the stale old SN's data over the node's new live copy.
pub struct Lock(std::fs::File);

/// Takes the lock, waiting for a running move or sync to finish.
pub fn lock(state_dir: &Path) -> Result<Lock> {
    crate::flock(state_dir, "statelite.lock", true)?
        .map(Lock)
        .ok_or_else(|| anyhow::anyhow!("locking {}/statelite.lock", state_dir.display()))
}

impl Lock {
    /// The locked file (kept open for the lock's lifetime).
    pub fn file(&self) -> &std::fs::File {
        &self.0
    }
}

// ---- overlay -------------------------------------------------------------------------------

fn overlay_file(state_dir: &Path) -> PathBuf {
    state_dir.join("served_by")
}

/// Reads the move overlay (`NODE SN` lines; `#` comments); absent is empty.
pub fn load_overlay(state_dir: &Path) -> Result<BTreeMap<String, String>> {
    let f = overlay_file(state_dir);
    let text = match std::fs::read_to_string(&f) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", f.display())),
    };
    let mut m = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some(n), Some(s), None) => {
                m.insert(n.to_string(), s.to_string());
            }
            _ => bail!("{}:{}: expected `NODE SN`", f.display(), i + 1),
        }
    }
    Ok(m)
}

/// Writes the overlay atomically (temporary file, fsync, rename, directory fsync).
pub fn save_overlay(state_dir: &Path, m: &BTreeMap<String, String>) -> Result<()> {
    let mut text = String::from("# hanfs: nodes moved by `hanfs migrate`/`failover` (NODE SN); overrides served_by\n");
    for (n, s) in m {
        text += &format!("{n} {s}\n");
    }
    write_atomic(&overlay_file(state_dir), text.as_bytes())
}

/// Applies the overlay to a loaded cluster; returns warnings for entries naming unknown nodes or SNs
/// (left out, never fatal: the config may have changed since the move).
pub fn apply_overlay(cluster: &Cluster) -> Result<(Cluster, Vec<String>)> {
    let m = load_overlay(Path::new(cluster.state_dir().as_str()))?;
    Ok(cluster.with_recorded_moves(&m))
}

/// Records new placements in the overlay. An entry is kept relative to the config: a move back to
/// where the config places the node drops it, so the overlay replayed on the config gives the same
/// placement.
pub fn record_moves(cluster: &Cluster, moves: &[(String, String)]) -> Result<()> {
    let sd = Path::new(cluster.state_dir().as_str());
    let mut m = load_overlay(sd)?;
    for (node, sn) in moves {
        if cluster.placement().configured(node) == Some(sn.as_str()) {
            m.remove(node);
        } else {
            m.insert(node.clone(), sn.clone());
        }
    }
    save_overlay(sd, &m)
}

fn write_atomic(file: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = file.parent().ok_or_else(|| anyhow!("{}: no parent", file.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp =
        dir.join(format!(".{}.tmp", file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("renaming onto {}", file.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

// ---- sync records --------------------------------------------------------------------------

fn record_file(cluster: &Cluster, area: &str, node: &str, sn: &str) -> Result<PathBuf> {
    for n in [area, node, sn] {
        model::check_name(n).map_err(anyhow::Error::msg)?;
    }
    Ok(Path::new(cluster.state_dir().as_str()).join("statelite").join(area).join(node).join(sn))
}

fn save_record(cluster: &Cluster, p: &Pair, generation: u64, digest: &str) -> Result<()> {
    let f = record_file(cluster, &p.area, &p.node, &p.to)?;
    write_atomic(&f, format!("{generation} {digest} {} {}\n", now(), p.from).as_bytes())
}

/// (generation, digest, unix seconds) of the last successful sync of that copy.
pub fn load_record(cluster: &Cluster, area: &str, node: &str, sn: &str) -> Option<(u64, String, u64)> {
    let t = std::fs::read_to_string(record_file(cluster, area, node, sn).ok()?).ok()?;
    let mut w = t.split_whitespace();
    Some((w.next()?.parse().ok()?, w.next()?.to_string(), w.next()?.parse().ok()?))
}

/// Replication lag of every backup copy, from the records (no network).
pub fn lags(cluster: &Cluster) -> Vec<Lag> {
    let t = now();
    pairs(cluster, None)
        .into_iter()
        .map(|p| {
            let r = load_record(cluster, &p.area, &p.node, &p.to);
            Lag {
                area: p.area,
                node: p.node,
                served_by: p.from,
                backup: p.to,
                last_sync: r.as_ref().map(|r| r.2),
                lag_seconds: r.as_ref().map(|r| t.saturating_sub(r.2)),
                generation: r.map(|r| r.0),
            }
        })
        .collect()
}

// ---- the sync ------------------------------------------------------------------------------

async fn recv_manifest(c: &mut Conn, len: u64) -> Result<tree::Manifest, SnError> {
    let b = c.recv_bulk("a manifest", len, proto::MAX_MANIFEST).await?;
    Ok(tree::Manifest::from_bytes(&b)?)
}

fn checked(path: &str, node: &str) -> Result<(AbsPath, Name), SnError> {
    let bad = |e: String| SnError::Local(anyhow!("statelite {path}/{node}: {e}"));
    Ok((AbsPath::parse(path).map_err(bad)?, Name::parse(node).map_err(bad)?))
}

/// Opens the copy of `<path>/<node>` on a backup: (generation, digest).
async fn open_copy(c: &mut Conn, path: &str, node: &str) -> Result<(u64, String), SnError> {
    let (root, node) = checked(path, node)?;
    let o = c.call(req::StateliteOpen { root, node }).await?;
    Ok((o.state.generation, o.state.digest.to_string()))
}

/// `SN: what` for errors, keeping their kind.
fn on(sn: &str, e: SnError) -> SnError {
    match e {
        SnError::Refused(r) => SnError::Refused(format!("on {sn}: {r}")),
        SnError::Protocol(r) => SnError::Protocol(format!("{sn}: {r}")),
        e => e,
    }
}

/// Brings one backup copy up to date; retried once when a file changed under the scan.
pub async fn sync_pair(ctl: &Controller, p: &Pair) -> StateliteReport {
    let mut rep = StateliteReport {
        area: p.area.clone(),
        node: p.node.clone(),
        from: p.from.clone(),
        to: p.to.clone(),
        ok: false,
        generation: 0,
        digest: String::new(),
        files_sent: 0,
        bytes_sent: 0,
        error: None,
    };
    for attempt in 0..2 {
        match tokio::time::timeout(ctl.timeouts.sn, sync_once(ctl, p, &mut rep)).await {
            Ok(Ok(())) => {
                rep.ok = true;
                rep.error = None;
                if let Err(e) = save_record(&ctl.cluster, p, rep.generation, &rep.digest) {
                    tracing::warn!("{}/{} on {}: recording the sync: {e:#}", p.area, p.node, p.to);
                }
                break;
            }
            Ok(Err(e)) => {
                let msg = format!("{e:#}");
                tracing::warn!(
                    "statelite {}/{} {} -> {} (attempt {}): {msg}",
                    p.area,
                    p.node,
                    p.from,
                    p.to,
                    attempt + 1
                );
                rep.error = Some(msg);
                // The node writes while we copy: a file changed, vanished or truncated under the
                // scan is worth one fresh scan; anything else (refusal, dead SN) is not.
                if !e.source_changed() {
                    break;
                }
            }
            Err(_) => {
                rep.error = Some(format!("timed out after {:?}", ctl.timeouts.sn));
                break;
            }
        }
    }
    rep
}

async fn sync_once(ctl: &Controller, p: &Pair, rep: &mut StateliteReport) -> Result<(), SnError> {
    let cl = &ctl.cluster;
    let unknown = |sn: &str| SnError::Local(anyhow!("unknown SN {sn}"));
    let from = cl.sn(&p.from).ok_or_else(|| unknown(&p.from))?;
    let to = cl.sn(&p.to).ok_or_else(|| unknown(&p.to))?;
    let mut src = ctl.connect(from).await?;
    let mut dst = ctl.connect(to).await?;
    let (generation, digest) = open_copy(&mut dst, &p.path, &p.node).await.map_err(|e| on(&p.to, e))?;
    let (root, node) = checked(&p.path, &p.node)?;
    let scan = src.call(req::StateliteScan { root, node }).await.map_err(|e| on(&p.from, e.into()))?;
    let live = recv_manifest(&mut src, scan.len).await.map_err(|e| on(&p.from, e))?;
    let want = live.digest();
    if want != digest {
        let m = dst.call(req::GetManifest).await.map_err(|e| on(&p.to, e.into()))?;
        let theirs = recv_manifest(&mut dst, m.len).await.map_err(|e| on(&p.to, e))?;
        let (plan, bytes) = crate::sn::blocking(move || -> Result<(tree::Plan, Vec<u8>)> {
            let mut plan = tree::diff(&theirs, &live);
            plan.generation = generation + 1;
            let bytes = zstd::bulk::compress(&plan.to_bytes()?, 3)?;
            Ok((plan, bytes))
        })
        .await??;
        let need = dst
            .call_with_bulk(req::Plan { len: bytes.len() as u64, zstd: true }, &bytes)
            .await
            .map_err(|e| on(&p.to, e.into()))?;
        for i in need.indexes {
            let ct = plan
                .contents
                .get(i as usize)
                .ok_or_else(|| SnError::Protocol(format!("{} asked for content {i}", p.to)))?;
            let read = src.call(req::StateliteRead { path: ct.path.clone() }).await;
            let len = match read {
                Ok(c) => c.len,
                // The file went away or became unreadable under the scan: the node is writing.
                Err(transport::Error::Proto(proto::Error::Remote(r))) => {
                    return Err(SnError::SourceChanged(format!("reading on {}: {r}", p.from)))
                }
                Err(e) => return Err(on(&p.from, e.into())),
            };
            if len != ct.size {
                return Err(SnError::SourceChanged(format!(
                    "{} changed during the sync (size {} -> {len})",
                    tree::manifest::show(&ct.path),
                    ct.size
                )));
            }
            // Piped chunk by chunk: the MN holds at most one chunk of a file.
            dst.send(&ToAgent::Blob { index: i, encoding: Encoding::Literal, len, zstd: false }).await?;
            let mut bulk = src.bulk("a file", len, ct.size)?;
            let mut h = blake3::Hasher::new();
            loop {
                let d = match src.next_chunk(&mut bulk).await {
                    Ok(Some(d)) => d,
                    Ok(None) => break,
                    // The serving agent drops the session when the file shrank while it read it.
                    Err(transport::Error::Closed) => {
                        return Err(SnError::SourceChanged(format!(
                            "{} changed while being read on {}",
                            tree::manifest::show(&ct.path),
                            p.from
                        )))
                    }
                    Err(e) => return Err(on(&p.from, e.into())),
                };
                h.update(d);
                // The node may rewrite a file in place while it is piped: the last chunk is held
                // back unless the whole is the scanned version, and that is told by its hash here,
                // not by the text of the backup's refusal at commit.
                if bulk.left() == 0 && h.finalize().as_bytes() != &ct.hash {
                    return Err(SnError::SourceChanged(format!(
                        "{} changed during the sync (its content is no longer the one scanned)",
                        tree::manifest::show(&ct.path)
                    )));
                }
                dst.send_chunk(d).await?;
            }
            dst.send(&ToAgent::BlobEnd).await?;
            rep.files_sent += 1;
            rep.bytes_sent += len;
        }
        let done = dst.call_within(req::Commit, ctl.timeouts.commit).await.map_err(|e| on(&p.to, e.into()))?;
        let got = done.state.digest.to_string();
        if got != want {
            return Err(SnError::Refused(format!("{} committed digest {got} but the live data is {want}", p.to)));
        }
        rep.generation = done.state.generation;
        rep.digest = got;
    } else {
        rep.generation = generation;
        rep.digest = digest;
    }
    for c in [&mut src, &mut dst] {
        c.bye().await;
    }
    Ok(())
}

/// How many copies are synced at once: enough to hide a slow or dead SN's timeouts, few enough
/// to keep sessions and open files per agent small on a large cluster.
const PARALLEL: usize = 8;

/// Syncs every pair, [`PARALLEL`] at a time; reports in the order of `pairs`.
pub async fn sync_all(ctl: &Controller, pairs: &[Pair]) -> Vec<StateliteReport> {
    use futures::StreamExt;
    futures::stream::iter(pairs).map(|p| sync_pair(ctl, p)).buffered(PARALLEL).collect().await
}

/// True when `sn` answers and holds a recovered copy of every area of `node` that was synced at
/// least once (the record on the MN says so and the copy's digest is the recorded one).
pub async fn holds_copy(ctl: &Controller, sn: &str, node: &str) -> Result<()> {
    let cl = &ctl.cluster;
    let s = cl.sn(sn).ok_or_else(|| anyhow!("unknown SN {sn}"))?;
    let mut c = ctl.connect(s).await?;
    let areas = cl.statelite().iter().filter(|a| cl.node(node).is_none_or(|n| n.uses_area(&a.name)));
    for area in areas {
        let Some((_, digest, _)) = load_record(cl, &area.name, node, sn) else {
            bail!("no synced copy of {}/{node} recorded for {sn}", area.name);
        };
        let (_, have) = open_copy(&mut c, area.path.as_str(), node).await?;
        if have != digest {
            bail!("copy of {}/{node} on {sn} is at {have}, not the synced {digest}", area.name);
        }
    }
    c.bye().await;
    Ok(())
}

/// Writes one SN's exports and runs its reload: (reloaded, output).
pub async fn push_exports(ctl: &Controller, sn: &str, text: String) -> Result<(bool, String)> {
    let s = ctl.cluster.sn(sn).ok_or_else(|| anyhow!("unknown SN {sn}"))?;
    let mut c = ctl.connect(s).await?;
    let done = c.call_within(req::Exports { text }, ctl.timeouts.commit).await?;
    c.bye().await;
    Ok((done.reloaded, done.output))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::config::{sp, ClusterSection, ConfigFile, NodeSection, SnSection};

    /// cn002's home is sn2; the config has it on sn1 (`served_by`, a move xCAT made).
    fn cluster(state: &Path) -> Cluster {
        let mut section = ClusterSection::new("/install");
        section.state_dir = Some(sp(state.to_str().unwrap().to_string()));
        section.plaintext_loopback = true;
        let mut f = ConfigFile::new(section);
        f.sn.push(SnSection::new("sn1", "127.0.0.1"));
        f.sn.push(SnSection::new("sn2", "127.0.0.2"));
        f.node.push(NodeSection::new("cn001", ["sn1", "sn2"]));
        f.node.push(NodeSection::new("cn002", ["sn2", "sn1"]).served_by("sn1"));
        Cluster::from_config("t.toml", &f).unwrap()
    }

    /// Every recorded move survives a reload of the config, a move home against `served_by` too.
    #[test]
    fn recorded_moves_survive_a_reload() {
        let d = tempfile::tempdir().unwrap();
        let c = cluster(d.path());
        let moves = vec![("cn001".to_string(), "sn2".to_string()), ("cn002".to_string(), "sn2".to_string())];
        record_moves(&c, &moves).unwrap();
        let (after, warn) = apply_overlay(&cluster(d.path())).unwrap();
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(after.serving("cn001"), Some("sn2"));
        assert_eq!(after.serving("cn002"), Some("sn2"), "moved home, and stays home");
        // And back: cn001 home again drops its entry; the overlay keeps only cn002's.
        record_moves(&after, &[("cn001".to_string(), "sn1".to_string())]).unwrap();
        assert_eq!(load_overlay(d.path()).unwrap(), BTreeMap::from([("cn002".to_string(), "sn2".to_string())]));
    }
}
