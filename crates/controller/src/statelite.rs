//! Statelite replication and node moves, controller side.
//!
//! Data path: for each (area, node, backup SN) the controller opens the backup's copy
//! (`StateliteOpen`, a crash-safe `tree::Replica` on the agent), scans the live data on the serving SN
//! (`StateliteScan`), diffs the two manifests here, sends the plan to the backup and pipes each needed
//! file from the serving agent to the backup (`StateliteRead` -> `Blob`), then `Commit`. Unchanged
//! files, moves and copies are never resent; changed files travel whole (no deltas yet).
//!
//! Every round runs under the placement lock with the placement as recorded at its start
//! ([`round`]), so a copy never goes from an SN that no longer serves the node. The state dir
//! keeps `statelite/<area>/<node>/<sn>`: `GENERATION DIGEST UNIX_SECONDS FROM` of the last
//! successful sync of that backup copy (status lag; failover's "holds a copy").

use crate::sn::Conn;
use crate::state::StateDir;
use crate::{Controller, SnError};
use anyhow::{anyhow, bail, Result};
use model::Cluster;
use proto::{req, AbsPath, Encoding, Name, ToAgent};
use serde::Serialize;
use std::sync::Arc;

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

// ---- sync records --------------------------------------------------------------------------

fn save_record(state: &StateDir, p: &Pair, generation: u64, digest: &str) -> Result<()> {
    let f = state.statelite_record(&p.area, &p.node, &p.to)?;
    crate::state::write(&f, format!("{generation} {digest} {} {}\n", now(), p.from).as_bytes())
}

/// (generation, digest, unix seconds) of the last successful sync of that copy.
pub fn load_record(state: &StateDir, area: &str, node: &str, sn: &str) -> Option<(u64, String, u64)> {
    let t = std::fs::read_to_string(state.statelite_record(area, node, sn).ok()?).ok()?;
    let mut w = t.split_whitespace();
    Some((w.next()?.parse().ok()?, w.next()?.to_string(), w.next()?.parse().ok()?))
}

/// Replication lag of every backup copy of the placed `cluster`, from the records (no network).
pub fn lags(state: &StateDir, cluster: &Cluster) -> Vec<Lag> {
    let t = now();
    pairs(cluster, None)
        .into_iter()
        .map(|p| {
            let r = load_record(state, &p.area, &p.node, &p.to);
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

/// An empty report row for `p`.
fn report(p: &Pair) -> StateliteReport {
    StateliteReport {
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
    }
}

/// Brings one backup copy up to date; retried once when a file changed under the scan.
pub async fn sync_pair(ctl: &Controller, p: &Pair) -> StateliteReport {
    let mut rep = report(p);
    for attempt in 0..2 {
        match tokio::time::timeout(ctl.timeouts.sn, sync_once(ctl, p, &mut rep)).await {
            Ok(Ok(())) => {
                rep.ok = true;
                rep.error = None;
                if let Err(e) = save_record(&ctl.state, p, rep.generation, &rep.digest) {
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

/// Syncs every pair, each in its own task, at most [`PARALLEL`] at once; reports in the order of
/// `pairs`. The caller holds the placement lock (see [`round`]).
pub async fn sync_all(ctl: &Arc<Controller>, pairs: &[Pair]) -> Vec<StateliteReport> {
    let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, p) in pairs.iter().enumerate() {
        let (ctl, p, permits) = (Arc::clone(ctl), p.clone(), Arc::clone(&permits));
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring fails only if it were: then run anyway.
            let _permit = permits.acquire_owned().await.ok();
            (i, sync_pair(&ctl, &p).await)
        });
    }
    let mut out: Vec<Option<StateliteReport>> = vec![None; pairs.len()];
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((i, rep)) => out[i] = Some(rep),
            Err(e) => tracing::error!("a statelite copy task failed: {e}"),
        }
    }
    out.into_iter()
        .zip(pairs)
        .map(|(r, p)| {
            r.unwrap_or_else(|| StateliteReport { error: Some("the copy's task failed".into()), ..report(p) })
        })
        .collect()
}

/// One statelite round: under the placement lock and with the placement as recorded now (a
/// `migrate` may have moved nodes since this controller was made), copy every node's data from
/// its serving SN to each of its backups. Areas copied continuously agent to agent
/// (`continuous = true`) are left out: a copy through the MN would commit the serving SN's tree
/// as it was at its scan over newer changes the stream already applied, which the stream, that
/// believes the backup has them, would not send again.
pub async fn round(ctl: &Arc<Controller>) -> Result<Vec<StateliteReport>> {
    let _lock = ctl.state.lock_placement_async().await?;
    let (placed, warnings) = ctl.placed()?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(sync_all(ctl, &periodic_pairs(&placed)).await)
}

/// The copies of a round: every pair but those of `continuous` areas.
pub fn periodic_pairs(cluster: &Cluster) -> Vec<Pair> {
    let continuous: Vec<&str> = cluster.statelite().iter().filter(|a| a.continuous).map(|a| a.name.as_str()).collect();
    pairs(cluster, None).into_iter().filter(|p| !continuous.contains(&p.area.as_str())).collect()
}

/// True when `sn` answers and holds a recovered copy of every area of `node` that was synced at
/// least once (the record on the MN says so and the copy's digest is the recorded one).
pub async fn holds_copy(ctl: &Controller, sn: &str, node: &str) -> Result<()> {
    let cl = &ctl.cluster;
    let s = cl.sn(sn).ok_or_else(|| anyhow!("unknown SN {sn}"))?;
    let mut c = ctl.connect(s).await?;
    let areas = cl.statelite().iter().filter(|a| cl.node(node).is_none_or(|n| n.uses_area(&a.name)));
    for area in areas {
        let Some((_, digest, _)) = load_record(&ctl.state, &area.name, node, sn) else {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rounds_leave_continuous_areas_to_the_agents() {
        let toml = "[cluster]\nsource_root = \"/s\"\nstate_dir = \"/st\"\nplaintext_loopback = true\n\
             [[sn]]\nname = \"sn1\"\naddress = \"127.0.0.1\"\nagent = \"127.0.0.1:1\"\n\
             [[sn]]\nname = \"sn2\"\naddress = \"127.0.0.2\"\nagent = \"127.0.0.2:1\"\n\
             [[statelite]]\nname = \"nodedata\"\npath = \"/nodedata\"\ncontinuous = true\n\
             [[statelite]]\nname = \"scratch\"\npath = \"/scratch\"\n\
             [[node]]\nname = \"cn001\"\nsns = [\"sn1\", \"sn2\"]\n";
        let c = Cluster::from_toml("t.toml", toml).unwrap();
        assert_eq!(pairs(&c, None).len(), 2);
        let p = periodic_pairs(&c);
        assert_eq!(p.iter().map(|p| (p.area.as_str(), p.to.as_str())).collect::<Vec<_>>(), vec![("scratch", "sn2")]);
    }
}
