//! Drift watch of an image replica: an inotify watch on every inode of the recorded generation,
//! armed before a full rescan that finds the tree whole, so that while it has seen nothing the
//! next `Open` needs no rescan (a stat walk of the whole replica) to know the tree is unchanged.
//!
//! Why it is sound: a watch is added on every directory and every non-directory inode the
//! manifest names (hard-link members share their leader's inode) before the rescan starts, so a
//! change made before a watch existed is found by that rescan and one made after fires an event.
//! inotify reports changes to the watched inode itself whatever path, bind mount or mount
//! namespace they come through (a write through a hard link planted outside the replica too),
//! and kernel nfsd writes go through the VFS, so they fire as well; a name added, removed or
//! renamed fires on its directory's watch. Anything read from the fd (an overflow included)
//! makes the watch stale, and so does the agent's own work on the tree (a commit, the links
//! staging makes): after a commit the watch is armed again and the tree rescanned.
//!
//! What inotify does not see: writes through a shared writable `mmap` (no `IN_MODIFY`); the
//! full rescan at least every [`MAX_AGE`] finds those (the scan's cache key has mtime and ctime).

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchDescriptor, WatchMask};
use tree::{Kind, Manifest};

/// A watch older than this is not trusted: the next `Open` rescans (and arms a new one).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(300);

/// At most this share of the user's inotify watches (`fs.inotify.max_user_watches`) goes to one
/// image: past it the image is rescanned at every `Open`, rather than starving other watchers.
const WATCH_SHARE: u64 = 4;

/// The watches of every image replica, by image name; a session takes its image's out while it
/// holds the image's lock and puts it back when it is still good.
pub(crate) type Watches = Arc<Mutex<HashMap<String, Watch>>>;

/// Changes to an inode's content or metadata, and to a directory's names.
fn file_mask() -> WatchMask {
    WatchMask::MODIFY | WatchMask::ATTRIB | WatchMask::DONT_FOLLOW
}

fn dir_mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
}

/// A replica of at most this many entries is kept open (its decoded state in memory) with its
/// watch between sessions, so an unchanged one is not read and hashed again at every `Open`;
/// a bigger one is opened again (its state is hundreds of MB in memory).
const KEEP_ENTRIES: usize = 100_000;

/// An armed watch over one replica at one generation.
pub(crate) struct Watch {
    /// The replica as the last session left it (its state as on disk: only this agent writes
    /// it, under the image's lock), reused by the next `Open` while the watch saw nothing.
    replica: Option<tree::Replica>,
    inotify: Inotify,
    root: PathBuf,
    root_wd: WatchDescriptor,
    /// The root directory's (device, inode) when armed: a path that leads elsewhere since (an
    /// ancestor renamed and replaced, which no watch here sees) is not the watched tree.
    root_id: (u64, u64),
    /// The generation and digest it vouches for (set once a rescan found them on disk).
    whole: Option<(u64, String)>,
    armed: Instant,
    /// An event was read: the tree may have changed.
    stale: bool,
}

impl Watch {
    /// Watches every inode `m` names under `root`. Fails (and the caller falls back to full
    /// rescans) when an inode cannot be watched: gone already (the rescan then finds the drift),
    /// the watch limit, or more entries than [`WATCH_SHARE`] allows.
    /// `limit` overrides that share (tests).
    pub(crate) fn arm(root: &Path, m: &Manifest, limit: Option<u64>) -> Result<Watch, String> {
        Self::arm_within(root, m, limit.unwrap_or_else(|| max_user_watches() / WATCH_SHARE))
    }

    pub(crate) fn arm_within(root: &Path, m: &Manifest, budget: u64) -> Result<Watch, String> {
        let inodes = m.entries.values().filter(|e| !matches!(e.kind, Kind::HardLink { .. })).count() as u64;
        if inodes > budget {
            return Err(format!("{inodes} inodes to watch, over this image's share of the inotify limit ({budget})"));
        }
        let root_id = inode(root).ok_or_else(|| format!("{}: not a directory", root.display()))?;
        let inotify = Inotify::init().map_err(|e| format!("inotify: {e}"))?;
        let mut w = inotify.watches();
        let mut root_wd = None;
        let mut path = root.as_os_str().as_bytes().to_vec();
        for (p, e) in &m.entries {
            let mask = match e.kind {
                Kind::HardLink { .. } => continue,
                Kind::Dir => dir_mask(),
                _ => file_mask(),
            };
            path.truncate(root.as_os_str().len());
            if !p.is_empty() {
                path.push(b'/');
                path.extend_from_slice(p);
            }
            let full = Path::new(std::ffi::OsStr::from_bytes(&path));
            // Intermediate components are followed: a directory replaced by a symlink before
            // this point is found by the rescan that follows, after it fires on its parent.
            let wd = w.add(full, mask).map_err(|e| format!("watching {}: {e}", full.display()))?;
            if p.is_empty() {
                root_wd = Some(wd);
            }
        }
        let root_wd = root_wd.ok_or("the manifest has no root entry")?;
        Ok(Watch {
            replica: None,
            inotify,
            root: root.to_path_buf(),
            root_wd,
            root_id,
            whole: None,
            armed: Instant::now(),
            stale: false,
        })
    }

    /// Records that the rescan that followed [`Watch::arm`] found this generation whole.
    pub(crate) fn vouch(&mut self, generation: u64, digest: String) {
        self.whole = Some((generation, digest));
    }

    /// Keeps the session's replica for the next `Open` (unless it is too big to keep).
    pub(crate) fn keep(&mut self, r: tree::Replica) {
        if r.manifest().is_some_and(|m| m.entries.len() <= KEEP_ENTRIES) {
            self.replica = Some(r);
        }
    }

    /// The replica the last session left, if it is still known unchanged on disk (its control
    /// directory included, which the watch does not cover and `Replica::open` would recreate).
    pub(crate) fn reuse(&mut self, root: &Path) -> Option<tree::Replica> {
        let r = self.replica.take()?;
        let (g, d) = r.current()?;
        let stage = std::fs::symlink_metadata(root.join(".hanfs/stage")).is_ok_and(|m| m.is_dir());
        (stage && self.unchanged(root, g, &d)).then_some(r)
    }

    /// Whether the replica at `root` is known to be at `generation` with `digest` unchanged:
    /// vouched for, young enough, and no event since it was armed.
    pub(crate) fn unchanged(&mut self, root: &Path, generation: u64, digest: &str) -> bool {
        if self.root != root || self.armed.elapsed() >= MAX_AGE || inode(root) != Some(self.root_id) {
            return false;
        }
        if self.whole.as_ref().is_none_or(|(g, d)| *g != generation || d != digest) {
            return false;
        }
        self.drain();
        !self.stale
    }

    /// Reads every pending event; any but the control directory's makes the watch stale.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while !self.stale {
            match self.inotify.read_events(&mut buf) {
                Ok(events) => {
                    for ev in events {
                        // `.hanfs` (stage, spool) is not part of the tree; its own name on the
                        // root is only created once, by the first open.
                        let control = ev.wd == self.root_wd && ev.name.is_some_and(|n| n == ".hanfs");
                        if !control {
                            tracing::debug!("replica {}: event {:?} {:?}", self.root.display(), ev.mask, ev.name);
                            self.stale = true;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("replica {}: reading its inotify watch: {e}", self.root.display());
                    self.stale = true;
                }
            }
        }
    }
}

/// (device, inode) of the directory at `p` (no symlink followed).
fn inode(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}

/// `fs.inotify.max_user_watches` (8192, the oldest kernels' default, when it cannot be read).
fn max_user_watches() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8192)
}
