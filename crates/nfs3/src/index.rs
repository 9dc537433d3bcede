//! Replica-independent file handles and the handle → path index.
//!
//! A handle is the first 16 bytes of `BLAKE3("hanfs-nfs3-fh-v1\0" ‖ relative path)`; the fileid is
//! its first 8 bytes (little endian, 0 mapped to 1). Both are functions of the path inside the
//! export alone, so every replica of the same tree hands out the same handle and fileid for the
//! same file, whatever its local inode numbers, and keeps doing so across server restarts.
//!
//! A handle cannot be turned back into a path by computation, so the server keeps an index
//! (fileid → path). It is filled by every LOOKUP and READDIR, by a walk of the whole tree when the
//! server starts, and by another walk when a client presents a handle the index does not know yet
//! (a client that failed over from another service node, a file created since the last walk);
//! those walks are rate-limited. Two paths whose fileids collide both stay resolvable (their
//! 128-bit handles differ): the collision is counted and logged, and only the fileid is shared.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use nfs3_server::vfs::FileHandle;

const FH_DOMAIN: &[u8] = b"hanfs-nfs3-fh-v1\0";

/// A file handle: 16 bytes of the path's BLAKE3 hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Fh(pub [u8; 16]);

impl Fh {
    /// The handle of a path relative to the export root (`b""` is the root itself).
    pub fn of(rel: &[u8]) -> Fh {
        let mut h = blake3::Hasher::new();
        h.update(FH_DOMAIN);
        h.update(rel);
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d.as_bytes()[..16]);
        Fh(b)
    }

    /// The NFS fileid (inode number the client shows): the first 8 bytes, never 0.
    pub fn fileid(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        match u64::from_le_bytes(b) {
            0 => 1,
            v => v,
        }
    }
}

impl std::fmt::Debug for Fh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fh(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl FileHandle for Fh {
    fn len(&self) -> usize {
        16
    }
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Fh)
    }
}

#[derive(Default)]
struct Maps {
    by_id: HashMap<u64, Box<[u8]>>,
    /// Further paths whose fileid collided with the one in `by_id`.
    extra: HashMap<u64, Vec<Box<[u8]>>>,
}

/// fileid → relative path, with collision accounting.
pub struct Index {
    maps: RwLock<Maps>,
    collisions: AtomicU64,
    walk: Mutex<Option<Instant>>,
    walks: AtomicU64,
}

/// What [`Index::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Known,
    /// Another path already has this fileid.
    FileidCollision,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            maps: RwLock::new(Maps::default()),
            collisions: AtomicU64::new(0),
            walk: Mutex::new(None),
            walks: AtomicU64::new(0),
        }
    }
}

impl Index {
    /// Records `rel` (whose handle is `fh`).
    pub fn insert(&self, fh: &Fh, rel: &[u8]) -> Inserted {
        self.insert_id(fh.fileid(), rel)
    }

    fn insert_id(&self, id: u64, rel: &[u8]) -> Inserted {
        if let Ok(m) = self.maps.read() {
            match m.by_id.get(&id) {
                Some(p) if &**p == rel => return Inserted::Known,
                Some(_) if m.extra.get(&id).is_some_and(|v| v.iter().any(|p| &**p == rel)) => {
                    return Inserted::FileidCollision;
                }
                _ => {}
            }
        }
        let Ok(mut m) = self.maps.write() else {
            return Inserted::Known;
        };
        match m.by_id.get(&id) {
            None => {
                m.by_id.insert(id, rel.into());
                Inserted::New
            }
            Some(p) if &**p == rel => Inserted::Known,
            Some(p) => {
                let first = String::from_utf8_lossy(p).into_owned();
                let v = m.extra.entry(id).or_default();
                if !v.iter().any(|p| &**p == rel) {
                    v.push(rel.into());
                    self.collisions.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        fileid = id,
                        first = %first,
                        second = %String::from_utf8_lossy(rel),
                        "nfs3: fileid collision (handles stay distinct; the two files share an inode number on clients)"
                    );
                }
                Inserted::FileidCollision
            }
        }
    }

    /// The path of a handle, if known.
    pub fn get(&self, fh: &Fh) -> Option<Vec<u8>> {
        self.get_id(fh.fileid(), fh)
    }

    fn get_id(&self, id: u64, fh: &Fh) -> Option<Vec<u8>> {
        let m = self.maps.read().ok()?;
        if let Some(p) = m.by_id.get(&id) {
            if Fh::of(p) == *fh {
                return Some(p.to_vec());
            }
        }
        m.extra.get(&id)?.iter().find(|p| Fh::of(p) == *fh).map(|p| p.to_vec())
    }

    /// Number of fileid collisions seen so far.
    pub fn collisions(&self) -> u64 {
        self.collisions.load(Ordering::Relaxed)
    }

    /// Number of paths known.
    pub fn len(&self) -> usize {
        self.maps.read().map(|m| m.by_id.len() + m.extra.values().map(Vec::len).sum::<usize>()).unwrap_or(0)
    }

    /// Whether no path is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of full walks done.
    pub fn walks(&self) -> u64 {
        self.walks.load(Ordering::Relaxed)
    }

    /// Lets the next unknown handle walk at once (the tree just changed generation).
    pub fn forget_walk(&self) {
        if let Ok(mut last) = self.walk.lock() {
            *last = None;
        }
    }

    /// Runs `walk` unless another walk finished less than `min_gap` ago; concurrent callers wait
    /// for the running walk instead of starting their own. Returns whether this call walked.
    pub fn rewalk(&self, min_gap: Duration, walk: impl FnOnce(&Index)) -> bool {
        let started = Instant::now();
        let Ok(mut last) = self.walk.lock() else {
            return false;
        };
        match *last {
            // A walk finished while we waited for the lock, or one ran recently.
            Some(t) if t >= started || t.elapsed() < min_gap => return false,
            _ => {}
        }
        walk(self);
        self.walks.fetch_add(1, Ordering::Relaxed);
        *last = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn handles_are_path_functions() {
        assert_eq!(Fh::of(b"etc/passwd"), Fh::of(b"etc/passwd"));
        assert_ne!(Fh::of(b"etc/passwd"), Fh::of(b"etc/shadow"));
        assert_ne!(Fh::of(b""), Fh::of(b"etc"));
        // Pinned: a change here breaks every client's handles across an upgrade.
        assert_eq!(format!("{:?}", Fh::of(b"")).len(), 36);
        assert_eq!(Fh::from_bytes(Fh::of(b"x").as_bytes()), Some(Fh::of(b"x")));
        assert_eq!(Fh::from_bytes(&[0u8; 8]), None);
    }

    #[test]
    fn collisions_keep_both_paths_resolvable() {
        let idx = Index::default();
        // A real 64-bit collision cannot be made on demand: put two paths under one fileid.
        assert_eq!(idx.insert_id(7, b"a"), Inserted::New);
        assert_eq!(idx.insert_id(7, b"a"), Inserted::Known);
        assert_eq!(idx.insert_id(7, b"b"), Inserted::FileidCollision);
        assert_eq!(idx.insert_id(7, b"b"), Inserted::FileidCollision);
        assert_eq!(idx.collisions(), 1);
        assert_eq!(idx.get_id(7, &Fh::of(b"a")).unwrap(), b"a");
        assert_eq!(idx.get_id(7, &Fh::of(b"b")).unwrap(), b"b");
        assert_eq!(idx.get_id(7, &Fh::of(b"c")), None);
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn rewalk_is_rate_limited() {
        let idx = Index::default();
        let mut n = 0;
        assert!(idx.rewalk(Duration::from_secs(60), |_| n += 1));
        assert!(!idx.rewalk(Duration::from_secs(60), |_| n += 1));
        assert!(idx.rewalk(Duration::ZERO, |_| n += 1));
        assert_eq!(n, 2);
        assert_eq!(idx.walks(), 2);
    }
}
