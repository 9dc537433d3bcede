//! Statelite replication, agent side. A node's persistent data lives at `<area>/<node>` on the SN
//! that serves it; the controller copies it to the node's backup SNs through the MN:
//! - serving side (`StateliteScan`): scan the live directory, send the manifest, then the content
//!   of each file the controller asks for (`StateliteRead`), opened beneath the directory without
//!   following symlinks (the node is root on its own data: a planted symlink must not leak SN files);
//! - backup side (`StateliteOpen`): the copy is a `tree::Replica` (crash-safe apply) whose state lives
//!   in `state_dir/statelite/<key>/<node>`; plans and blobs then go through the image code path.
//!
//! Both sides refuse an area that is not within the agent's `statelite_roots` (the only places besides
//! `root` where it writes), and any path component that is not a real directory.

use crate::error::Result;
use crate::session::{
    blocking, current, digest, make_beneath, next_request, refuse, send_bulk_reply, send_manifest, update,
    with_replica, Conn,
};
use crate::spool::Spool;
use crate::Agent;
use anyhow::{bail, Context};
use proto::{reply, req, Digest, FromAgent, Name, RelPath, ToAgent, CHUNK};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tree::{Replica, ReplicaOptions};

/// Checks `area` (absolute) and `node`, and returns (the statelite root it lies in, the path of
/// `<area>/<node>` relative to that root).
pub(crate) fn locate(cfg: &model::AgentConfig, area: &str, node: &str) -> Result<(PathBuf, RelPath), String> {
    Name::parse(node)?;
    let rel_area = area.strip_prefix('/').ok_or_else(|| format!("statelite path `{area}` is not absolute"))?;
    for r in &cfg.statelite_roots {
        let r = r.as_str().trim_end_matches('/');
        let rest = if area.trim_end_matches('/') == r {
            Some("")
        } else {
            area.strip_prefix(r).and_then(|x| x.strip_prefix('/'))
        };
        let Some(rest) = rest else { continue };
        let rest = rest.trim_end_matches('/');
        let rel = if rest.is_empty() { node.to_string() } else { format!("{rest}/{node}") };
        // No `..`, empty or `.` components anywhere (checked on the whole area too).
        let rel = RelPath::parse(&rel)?;
        if !rel_area.is_empty() {
            RelPath::parse(rel_area.trim_end_matches('/'))?;
        }
        // Several agents on one host (tests, demos) keep their statelite trees apart under a prefix
        // (`statelite_prefix`); the check above is on the cluster-wide path, as configured.
        let base = match &cfg.statelite_prefix {
            Some(pre) => PathBuf::from(pre.as_str()).join(r.trim_start_matches('/')),
            None => PathBuf::from(r),
        };
        return Ok((base, rel));
    }
    Err(format!("statelite path `{area}` is not within this agent's statelite_roots"))
}

/// Where the backup copy's replica state lives: one directory per (area, node).
fn state_dir(agent: &Agent, area: &str, node: &str) -> PathBuf {
    // Hex of the area path: a stable file name that cannot collide between areas.
    let key = hex::encode(area.trim_end_matches('/'));
    PathBuf::from(agent.cfg.state_dir.as_str()).join("statelite").join(key).join(node)
}

/// `root/rel`, every component a real directory (symlinks refused), without creating anything.
fn existing_beneath(root: &Path, rel: &RelPath) -> anyhow::Result<PathBuf> {
    let mut p = root.to_path_buf();
    for comp in rel.components() {
        p.push(comp);
        let m = std::fs::symlink_metadata(&p).with_context(|| format!("{}", p.display()))?;
        if !m.file_type().is_dir() {
            bail!("{} is not a directory (a symlink is never followed)", p.display());
        }
    }
    Ok(p)
}

fn opts() -> ReplicaOptions {
    // A node's data has no business holding device nodes on its SN.
    ReplicaOptions { allow_devices: false }
}

/// At start: recovers every backup copy the state dir knows (see `session::recover_all`).
pub(crate) fn recover_all(agent: &Agent) {
    let Ok(areas) = std::fs::read_dir(Path::new(agent.cfg.state_dir.as_str()).join("statelite")) else { return };
    for area in areas.flatten() {
        let Ok(nodes) = std::fs::read_dir(area.path()) else { continue };
        for n in nodes.flatten() {
            let sd = n.path();
            let Ok(text) = std::fs::read_to_string(sd.join("path")) else { continue };
            let mut lines = text.lines();
            let (Some(a), Some(node)) = (lines.next(), lines.next()) else { continue };
            let Ok((sroot, rel)) = locate(&agent.cfg, a, node) else {
                tracing::error!("statelite {a}/{node}: no longer within statelite_roots; not recovered");
                continue;
            };
            let r = crate::session::existing_beneath(&sroot, &rel).and_then(|dir| {
                let Some(dir) = dir else { return Ok(None) };
                let mut r = Replica::open(&dir, &sd.join("replica"), opts())?;
                Ok(Some(r.recover()?))
            });
            match r {
                Ok(None) | Ok(Some(tree::Recovery::Clean)) => {}
                Ok(Some(rec)) => tracing::info!("statelite {a}/{node}: recovered at start: {rec:?}"),
                Err(e) => tracing::error!("statelite {a}/{node}: recovery at start failed: {e:#}"),
            }
        }
    }
}

/// Backup side: opens (recovers, adopts) the copy and serves manifest/plan/blob/commit requests.
pub async fn backup(agent: &Agent, c: &mut Conn, area: &str, node: &str) -> Result<Option<ToAgent>> {
    let (sroot, rel) = match locate(&agent.cfg, area, node) {
        Ok(x) => x,
        Err(e) => return Err(refuse(c, e).await),
    };
    let sd = state_dir(agent, area, node);
    let label = format!("statelite {area}/{node}");
    let held = agent.lock(&format!("statelite:{}", sd.display())).lock_owned().await;
    let (state, area_name, node_name) = (sd.clone(), area.to_string(), node.to_string());
    let opened = blocking(move || -> anyhow::Result<(Replica, Option<Digest>)> {
        let (sd, area, node) = (state, area_name, node_name);
        let dir = make_beneath(&sroot, &rel)?;
        std::fs::create_dir_all(&sd).with_context(|| format!("creating {}", sd.display()))?;
        std::fs::write(sd.join("path"), format!("{area}\n{node}\n"))?;
        let mut r = Replica::open(&dir, &sd.join("replica"), opts())?;
        r.recover()?;
        // This copy may have been served (written by the node) since it was last a backup: the
        // controller diffs against what is really there, so a drifted copy is re-adopted.
        let drifted = match r.current() {
            None => {
                r.adopt(0)?;
                None
            }
            Some((g, d)) => {
                if r.scan()?.digest() != d {
                    tracing::info!("{area}/{node}: copy changed since generation {g}: adopted as {}", g + 1);
                    r.adopt(g + 1)?;
                    Some(digest(&d)?)
                } else {
                    None
                }
            }
        };
        Ok((r, drifted))
    })
    .await;
    let (mut replica, drifted) = match opened {
        Ok(r) => r,
        Err(e) => return Err(refuse(c, format!("{label}: {e:#}")).await),
    };
    let node = Name::parse(node).map_err(anyhow::Error::msg)?;
    let state = match current(&replica, &node) {
        Ok(s) => s,
        Err(e) => return Err(refuse(c, format!("{label}: {e:#}")).await),
    };
    c.request(&FromAgent::Opened(reply::Opened { state, drifted })).await?;
    let spool = Spool::open(sd.join("spool"))?;
    let next = loop {
        let Some(msg) = next_request(c).await? else { break Some(ToAgent::Bye) };
        match msg {
            ToAgent::GetManifest => replica = send_manifest(c, replica).await?,
            ToAgent::Plan(req::Plan { len, zstd }) => {
                replica = update(
                    c,
                    replica,
                    &spool,
                    (&node, &label),
                    len,
                    zstd,
                    &nfs3::Switch::default(),
                    Default::default(),
                )
                .await?
                .0;
            }
            other => break Some(other),
        }
    };
    // Statelite trees are small: the old generation's leftovers go now, under the lock.
    match with_replica(replica, |r| r.cleanup()).await {
        Ok((_, Ok(()))) => {}
        Ok((_, Err(e))) => tracing::warn!("{label}: cleanup: {e}"),
        Err(e) => tracing::warn!("{label}: cleanup: {e:#}"),
    }
    drop(held);
    Ok(next)
}

/// Serving side: scans the live data, sends the manifest, then file contents on request.
pub async fn serve(agent: &Agent, c: &mut Conn, area: &str, node: &str) -> Result<Option<ToAgent>> {
    let (sroot, rel) = match locate(&agent.cfg, area, node) {
        Ok(x) => x,
        Err(e) => return Err(refuse(c, e).await),
    };
    // A missing directory is an error, not an empty tree: syncing "nothing" would empty the backup.
    let scanned = blocking(move || -> anyhow::Result<(tree::fsops::Root, tree::Manifest, Vec<u8>)> {
        let dir = existing_beneath(&sroot, &rel)?;
        let m = tree::scan(&dir, &[])?;
        let bytes = m.to_bytes()?;
        Ok((tree::fsops::Root::open(&dir)?, m, bytes))
    })
    .await;
    let (root, manifest, bytes) = match scanned {
        Ok(x) => x,
        Err(e) => {
            c.error(format!("statelite {area}/{node}: {e:#}")).await?;
            return Ok(None);
        }
    };
    send_bulk_reply(c, FromAgent::Manifest(reply::Manifest { len: bytes.len() as u64 }), &bytes).await?;
    let root = Arc::new(root);
    loop {
        let Some(msg) = next_request(c).await? else { return Ok(Some(ToAgent::Bye)) };
        let path = match msg {
            ToAgent::StateliteRead(req::StateliteRead { path }) => path,
            other => return Ok(Some(other)),
        };
        // Only files of the scan just sent: nothing else of the SN is readable this way.
        let listed = manifest.entries.get(&path).is_some_and(|e| matches!(e.kind, tree::Kind::File { .. }));
        if !listed {
            return Err(refuse(c, format!("{} is not a file of the scan", tree::manifest::show(&path))).await);
        }
        let (root, file) = (Arc::clone(&root), path.clone());
        let opened = blocking(move || -> anyhow::Result<(std::fs::File, u64)> {
            let f = root.open_file(&file)?;
            let len = f.metadata()?.len();
            Ok((f, len))
        })
        .await;
        let (f, len) = match opened {
            Ok(x) => x,
            Err(e) => {
                c.error(format!("{}: {e:#}", tree::manifest::show(&path))).await?;
                continue;
            }
        };
        c.send(&FromAgent::Content(reply::Content { len })).await?;
        // Read through tokio's file: each read runs on the blocking pool.
        let mut f = tokio::fs::File::from_std(f);
        let mut left = len;
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            // A file truncated meanwhile cannot deliver what was announced: the session ends and
            // the controller retries the node later.
            tokio::io::AsyncReadExt::read_exact(&mut f, &mut buf[..n])
                .await
                .with_context(|| format!("{}: changed while being read", tree::manifest::show(&path)))?;
            c.send_chunk(&buf[..n]).await?;
            left -= n as u64;
        }
        c.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(state: &Path) -> Agent {
        agent_with(state, "")
    }

    fn agent_with(state: &Path, extra: &str) -> Agent {
        let cfg = model::AgentConfig::from_toml(
            "agent.toml",
            &format!("{extra}listen = \"127.0.0.1:7468\"\nplaintext_loopback = true\nroot = \"/install\"\nstate_dir = \"{}\"\nstatelite_roots = [\"/nodedata\", \"/srv/lite/\"]\nexports_file = \"/etc/exports.d/hanfs.exports\"\n", state.display()),
        )
        .unwrap();
        Agent::new(cfg).unwrap()
    }

    #[test]
    fn areas_must_be_within_statelite_roots() {
        // The agent locks and recovers its state dir: a scratch one.
        let state = tempfile::tempdir().unwrap();
        let a = agent(state.path());
        let rel = |s: &str| RelPath::parse(s).unwrap();
        assert_eq!(locate(&a.cfg, "/nodedata", "cn001").unwrap(), (PathBuf::from("/nodedata"), rel("cn001")));
        assert_eq!(locate(&a.cfg, "/srv/lite/x", "cn001").unwrap(), (PathBuf::from("/srv/lite"), rel("x/cn001")));
        for (area, node) in [
            ("/etc", "cn001"),
            ("/nodedatax", "cn001"),
            ("nodedata", "cn001"),
            ("/nodedata/../etc", "cn001"),
            ("/nodedata/./x", "cn001"),
            ("/nodedata//x", "cn001"),
            ("/nodedata", ".."),
            ("/nodedata", "a/b"),
            ("/nodedata", ""),
        ] {
            assert!(locate(&a.cfg, area, node).is_err(), "{area} {node}");
        }
    }

    #[test]
    fn statelite_prefix_moves_the_trees_not_the_areas() {
        let state = tempfile::tempdir().unwrap();
        let a = agent_with(state.path(), "statelite_prefix = \"/srv/sn1\"\n");
        assert_eq!(
            locate(&a.cfg, "/nodedata", "cn001").unwrap(),
            (PathBuf::from("/srv/sn1/nodedata"), proto::RelPath::parse("cn001").unwrap())
        );
        assert_eq!(
            locate(&a.cfg, "/srv/lite/x", "cn001").unwrap(),
            (PathBuf::from("/srv/sn1/srv/lite"), proto::RelPath::parse("x/cn001").unwrap())
        );
        // The area is still checked as the cluster names it.
        assert!(locate(&a.cfg, "/srv/sn1/nodedata", "cn001").is_err());
    }
}
