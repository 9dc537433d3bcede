//! Statelite node directories as mount points of their own (Linux kernel nfsd, `statelite_mounts`).
//!
//! xCAT's clients mount an area's directory, make `<node>` in it, then mount `<area>/<node>`, and
//! hanfs exports both. Kernel nfsd leaves one export for another only at a mount point
//! (fs/nfsd/vfs.c: `nfsd_lookup_dentry` calls `nfsd_cross_mnt` only where `nfsd_mountpoint`), and
//! crosses into it for every NFSv4 client; a node directory that is a plain directory of the area's
//! file system stays inside the area's export, so its own export, and the `refer=` it gets after a
//! move, never applies (found in the kernel rig). So every exported directory inside another
//! exported directory is bind-mounted onto itself, within the statelite roots only, before the
//! exports are reloaded and again at start (mounts do not survive a reboot). Idempotent: a directory
//! that already is a mount root is left as it is. A mount left behind after its export went away is
//! harmless (nfsd goes on "underneath" a mount point that is not exported).

use crate::Agent;
use anyhow::{bail, Context};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxAttributes, StatxFlags};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

/// The exported directories of a Linux exports text that lie strictly inside another exported
/// directory of the same text, sorted and unique.
pub(crate) fn nested(text: &str) -> Result<Vec<String>, String> {
    let ex = exports::parse(model::Dialect::Linux, text).map_err(|e| e.to_string())?;
    let paths = ex.paths();
    let mut out = Vec::new();
    for p in &paths {
        if paths.iter().any(|q| strictly_within(p, q)) {
            out.push(p.to_string());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn strictly_within(path: &str, dir: &str) -> bool {
    let d = dir.trim_end_matches('/');
    path.strip_prefix(d).is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
}

/// What [`prepare`] did: directories made mount points now, and the ones that could not be.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub made: Vec<String>,
    pub failed: Vec<String>,
}

/// Makes every nested export of `text` that lies in the agent's statelite roots its own mount point
/// (creating the directory, beneath its root, when it does not exist yet); nested exports elsewhere
/// are left alone. Nothing when `statelite_mounts` is off.
pub(crate) fn prepare(cfg: &model::AgentConfig, text: &str) -> Outcome {
    let mut out = Outcome::default();
    if !cfg.statelite_mounts {
        return out;
    }
    let dirs = match nested(text) {
        Ok(d) => d,
        Err(e) => {
            out.failed.push(format!("reading the exports: {e}"));
            return out;
        }
    };
    for dir in dirs {
        // Not a statelite directory of this agent's (where it writes nothing): not its business.
        if !cfg.statelite_roots.iter().any(|r| strictly_within(&dir, r.as_str())) {
            tracing::warn!("{dir}: exported inside another export but not within statelite_roots; left as it is");
            continue;
        }
        let Some((area, node)) = dir.rsplit_once('/') else { continue };
        let r = crate::statelite::locate(cfg, area, node)
            .map_err(anyhow::Error::msg)
            .and_then(|(base, rel)| own_mount(&base, rel.as_str()));
        match r {
            Ok(true) => out.made.push(dir),
            Ok(false) => {}
            Err(e) => out.failed.push(format!("{dir}: {e:#}")),
        }
    }
    out
}

/// At start: the mounts of the exports file as it is, then the reload if any was made (nfsd may
/// hold export cache entries from before the mount).
pub(crate) fn at_start(agent: &Agent) {
    if !agent.cfg.statelite_mounts {
        return;
    }
    let file = agent.cfg.exports_file.as_str();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::error!("statelite mounts: reading {file}: {e}");
            return;
        }
    };
    let o = prepare(&agent.cfg, &text);
    for f in &o.failed {
        tracing::error!("statelite mount: {f}");
    }
    if o.made.is_empty() {
        return;
    }
    tracing::info!(dirs = ?o.made, "statelite node directories made mount points");
    if let Some((prog, args)) = agent.cfg.reload.split_first() {
        match std::process::Command::new(prog).args(args).output() {
            Ok(r) if r.status.success() => {}
            Ok(r) => tracing::error!(
                "`{}` after the statelite mounts failed ({}): {}",
                agent.cfg.reload.join(" "),
                r.status,
                String::from_utf8_lossy(&r.stderr).trim()
            ),
            Err(e) => tracing::error!("`{}` after the statelite mounts: {e}", agent.cfg.reload.join(" ")),
        }
    }
}

/// Makes `base/rel` (created if missing, every component a real directory, no symlink followed) a
/// mount root by bind-mounting it onto itself; `Ok(false)` when it already was one.
pub(crate) fn own_mount(base: &Path, rel: &str) -> anyhow::Result<bool> {
    let rel = model::RelPath::parse(rel).map_err(anyhow::Error::msg)?;
    crate::session::make_beneath(base, &rel)?;
    let root = rustix::fs::open(base, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("opening {}", base.display()))?;
    // The directory itself, not whatever a symlink planted since would name (the node is root on
    // its data, and mounts the area read-write).
    let fd = rustix::fs::openat2(
        &root,
        rel.as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
    .with_context(|| format!("opening {}/{rel} beneath its root", base.display()))?;
    let shown = || format!("{}/{rel}", base.display());
    if is_mount_root(fd.as_fd()).with_context(shown)? {
        return Ok(false);
    }
    let me = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::mount::mount_bind(&me, &me).with_context(|| format!("bind-mounting {} onto itself", shown()))?;
    Ok(true)
}

/// Whether the directory open at `fd` is the root of a mount: statx's `STATX_ATTR_MOUNT_ROOT`
/// (Linux 5.8), else its path among the mount points of /proc/self/mountinfo (older kernels, e.g.
/// RHEL 8's).
fn is_mount_root(fd: std::os::fd::BorrowedFd<'_>) -> anyhow::Result<bool> {
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).context("statx")?;
    if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        return Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT));
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).context("its path")?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let Some(path) = path.to_str() else { bail!("{} is not UTF-8", path.display()) };
    Ok(info.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| unescape(m) == path))
}

/// mountinfo's octal escapes (`\040` for a space, proc_pid_mountinfo(5)).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::try_from(d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0'))).ok());
        match oct {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exports_inside_other_exports() {
        let text = "/install/img *(ro,fsid=1)\n/nodedata *(rw,insecure,fsid=2)\n/nodedata/cn001 *(rw,fsid=3)\n\
                    /nodedata/cn001 10.0.0.0/8(rw,fsid=3)\n/nodedatax/cn9 *(rw,fsid=4)\n/gpu/cn002 *(rw,fsid=5)\n";
        assert_eq!(nested(text).unwrap(), vec!["/nodedata/cn001"]);
        assert!(nested("/nodedata *(rw,fsid=2)\n").unwrap().is_empty());
        assert!(nested("/a *(rw\n").is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/x\\04"), "/x\\04");
    }
}
