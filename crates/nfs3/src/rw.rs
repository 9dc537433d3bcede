//! The read-write file system of one statelite area (issue 13), beside the read-only
//! [`crate::fs::ReplicaFs`].
//!
//! **Handles are file ids, not paths and not inodes.** A regular file or directory gets a
//! random 128-bit id when it is created, kept with the file in the xattr [`ID_XATTR`]; the
//! NFS handle is that id (after the export's generation, as for the read-only server), and the
//! fileid clients see is its first 8 bytes. So a handle survives RENAME (the xattr moves with
//! the inode), and a replica that created the same files from the same change log
//! ([`crate::oplog`]) holds the same ids, hence answers the same handles after a takeover.
//! Why an xattr rather than an index file of our own: the id is then written in the same
//! file-system transaction as the file (a new file is made with `O_TMPFILE`, given its id,
//! fsynced and only then linked into its directory, so no file is ever visible without its
//! id), there is no second structure a crash could leave disagreeing with the tree, and the
//! tree engine already copies xattrs, so a resync by deltas carries the ids along. The cost is
//! a file system with user xattrs (ext4, xfs, btrfs; tmpfs since Linux 6.6; elsewhere, as root,
//! the `trusted.` namespace is used instead, e.g. tmpfs before 6.6): [`AreaFs::open`]
//! refuses one without, by name. Symlinks cannot carry user xattrs on Linux: theirs is
//! derived from the directory id and name they were made under ([`symlink_id`]), so it is the
//! same on every replica but changes on RENAME (clients hold symlink handles only to read
//! them). Files found without an id (made on the SN itself, or left by a crash between
//! `mkdir` and its xattr) get one when first seen.
//!
//! In memory the server keeps id → (parent id, name) and the reverse; a path is rebuilt from
//! the parents, so renaming a directory changes one entry. The map is filled by a walk on
//! open and kept by every change; an unknown id triggers a (rate-limited) walk, then STALE.
//!
//! **Confinement** is the read-only server's: every object is reached beneath the root with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` ([`crate::fs::open_beneath`]), every
//! change is made relative to a directory descriptor so obtained, on a name that is one
//! component, never `.`/`..`/`.hanfs`. Content and attributes are changed through a
//! descriptor of the very inode whose type was checked. A regular file with more links than
//! this server made through LINK (counted with the file, [`LINKS_XATTR`]) is never written or
//! truncated: the extra link was planted, possibly to something outside the area.
//!
//! **Durability** follows RFC 1813: FILE_SYNC and DATA_SYNC writes are fsynced (fdatasync)
//! before the reply, UNSTABLE ones are left to the page cache and COMMIT fsyncs; namespace
//! changes fsync the directories they changed before the reply (nfsd's `sync` export does the
//! same). The write verifier is per server instance (see [`crate::RwServer`]).
//!
//! Changes are applied one at a time (one lock), so they have one order: the order of the
//! log handed to [`Replicate`], which a replica applies in turn.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use nfs3_server::nfs3_types::nfs3::{
    createverf3, fattr3, filename3, nfspath3, nfsstat3, nfstime3, post_op_attr, sattr3, set_atime, set_mtime,
    stable_how, FSINFO3resok as fsinfo3, FSF3_CANSETTIME, FSF3_HOMOGENEOUS, FSF3_SYMLINK,
};
use nfs3_server::nfs3_types::rpc::auth_unix;
use nfs3_server::nfs3_types::xdr_codec::Opaque;
use nfs3_server::vfs::{
    DirEntryPlus, NextResult, NfsFileSystem, NfsReadFileSystem, ReadDirPlusIterator, VFSCapabilities,
};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::fs::{
    blocking, errno_stat, fattr, join, open_beneath, read_at, read_names, stamped, symlink_target, valid_name, MAX_READ,
};
use crate::index::Fh;
use crate::oplog::{Attrs, Op, SetTime};

mod ops;
pub use ops::{attrs_from, Caller, How, Node, LINKS_XATTR, TRUSTED_LINKS_XATTR};

/// The xattr holding a file's id (16 bytes).
pub const ID_XATTR: &str = "user.hanfs.id";
/// The xattr holding an EXCLUSIVE create's verifier (8 bytes).
pub const VERF_XATTR: &str = "user.hanfs.createverf";
/// Where the file system has no user xattrs but root may use trusted ones (tmpfs before Linux
/// 6.6): the same values in the `trusted.` namespace (the tree engine copies both).
pub const TRUSTED_ID_XATTR: &str = "trusted.hanfs.id";
pub const TRUSTED_VERF_XATTR: &str = "trusted.hanfs.createverf";
/// Minimum time between two walks triggered by unknown handles.
const REWALK_GAP: Duration = Duration::from_secs(5);
/// Directory entries stat'ed ahead per READDIRPLUS batch.
const PREFETCH: usize = 64;
/// Deepest directory nesting resolved (PATH_MAX allows no more than this many components).
const MAX_DEPTH: usize = 2048;
/// Mode of a directory made by MKDIR: the NFS layer drops MKDIR's attributes, so the client's
/// mode is not known here (it can chmod afterwards).
const MKDIR_MODE: u32 = 0o755;

/// Whom an area is served to (issue 13 point 3: the backup never serves an area read-write
/// while the primary does; fencing, then the claim of the service address, decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Served to clients; a primary's stream is applied too. What a server started without a
    /// role is (an area with no service address to follow).
    Serving,
    /// No client is served: the RPC guard resets their connections and a change that got past
    /// it meanwhile is answered `NFS3ERR_JUKEBOX` (retry later), never applied; the primary's
    /// stream is applied. A backup's role, and a returned primary's until it claims its
    /// address again.
    Standby,
    /// Taken over: served to clients, and the old primary's stream refused (a fenced primary
    /// that comes back must never overwrite what clients wrote here since).
    Promoted,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Serving => "serving",
            Role::Standby => "standby",
            Role::Promoted => "promoted",
        }
    }

    /// Whether clients are served in this role.
    pub fn serves(self) -> bool {
        self != Role::Standby
    }
}

/// Where a log entry goes once it is applied here (the replication stream to the backup).
/// Called in log order, under the area's change lock; an error is the client's reply (the
/// primary answers only what the backup holds). [`crate::replica::Replicator`] is the stream
/// to the backup agent: it answers Ok once the backup acknowledged, or once it gave the backup
/// up (degraded mode).
pub trait Replicate: Send + Sync {
    fn replicate(&self, op: &Op) -> Result<(), nfsstat3>;

    /// The area's role changed from `was` to `now` (called with the change lock held, after the
    /// change): a stream sends only while the area serves (a standby never sends, issue 13
    /// point 3), so leaving service flushes and closes it, and entering service starts it.
    fn role_changed(&self, _was: Role, _now: Role) {}
}

/// The root's id: the read-only server's handle of the root, a constant.
pub fn root_id() -> Fh {
    Fh::of(b"")
}

/// The id of a symlink (or other object without xattrs) made as `name` in directory `dir`.
pub fn symlink_id(dir: &Fh, name: &[u8]) -> Fh {
    let mut h = blake3::Hasher::new();
    h.update(b"hanfs-rw-symlink-v1\0");
    h.update(&dir.0);
    h.update(name);
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Fh(b)
}

/// A directory entry: (directory id, name).
type Entry = (Fh, Box<[u8]>);

#[derive(Default)]
struct Ids {
    node: HashMap<Fh, (Fh, Box<[u8]>)>,
    child: HashMap<(Fh, Box<[u8]>), Fh>,
    /// Every name of a file that has had more than one (LINK): `node` holds one of them.
    names: HashMap<Fh, Vec<Entry>>,
}

impl Ids {
    /// `id` is now at `parent`/`name` (made or renamed there): its previous name is dropped,
    /// unless it has several (hard links), whatever held the name before forgotten.
    fn insert(&mut self, id: Fh, parent: Fh, name: &[u8]) {
        let key: (Fh, Box<[u8]>) = (parent, name.into());
        if self.child.get(&key).is_some_and(|c| *c != id) {
            self.remove_entry(parent, name);
        }
        if let Some(old) = self.node.insert(id, key.clone()) {
            if !self.names.contains_key(&id) && self.child.get(&old).is_some_and(|c| *c == id) {
                self.child.remove(&old);
            }
        }
        if let Some(all) = self.names.get_mut(&id) {
            if !all.contains(&key) {
                all.push(key.clone());
            }
        }
        self.child.insert(key, id);
    }

    /// A further name of `id` (LINK, or a second link found on a walk).
    fn link(&mut self, id: Fh, parent: Fh, name: &[u8]) {
        let key: (Fh, Box<[u8]>) = (parent, name.into());
        if self.child.get(&key).is_some_and(|c| *c != id) {
            self.remove_entry(parent, name);
        }
        let first = self.node.get(&id).cloned();
        let all = self.names.entry(id).or_insert_with(|| first.into_iter().collect());
        if !all.contains(&key) {
            all.push(key.clone());
        }
        self.node.entry(id).or_insert_with(|| key.clone());
        self.child.insert(key, id);
    }

    /// Path ids ([`AreaFs::open_path_ids`]): directory `old` is now `new`, so every id beneath
    /// it, derived from its parent's, is derived again.
    fn rekey(&mut self, old: Fh, new: Fh) {
        type Children = Vec<(Fh, Box<[u8]>)>;
        let mut under: HashMap<Fh, Children> = HashMap::new();
        for (id, (p, n)) in &self.node {
            under.entry(*p).or_default().push((*id, n.clone()));
        }
        let mut stack = vec![(old, new)];
        while let Some((o, n)) = stack.pop() {
            for (cid, name) in under.remove(&o).unwrap_or_default() {
                let fresh = symlink_id(&n, &name);
                self.node.remove(&cid);
                self.child.remove(&(o, name.clone()));
                self.insert(fresh, n, &name);
                stack.push((cid, fresh));
            }
        }
    }

    fn remove_entry(&mut self, parent: Fh, name: &[u8]) -> Option<Fh> {
        let key: (Fh, Box<[u8]>) = (parent, name.into());
        let id = self.child.remove(&key)?;
        let at_node = self.node.get(&id).is_some_and(|k| *k == key);
        match self.names.get_mut(&id) {
            Some(all) => {
                all.retain(|k| *k != key);
                let other = all.first().cloned();
                if all.is_empty() {
                    self.names.remove(&id);
                }
                if at_node {
                    match other {
                        Some(k) => self.node.insert(id, k),
                        None => self.node.remove(&id),
                    };
                }
            }
            None if at_node => {
                self.node.remove(&id);
            }
            None => {}
        }
        Some(id)
    }
}

struct IdGen {
    key: [u8; 32],
    n: u64,
}

impl IdGen {
    fn next(&mut self) -> Fh {
        self.n += 1;
        let mut b = [0u8; 16];
        b.copy_from_slice(&blake3::keyed_hash(&self.key, &self.n.to_le_bytes()).as_bytes()[..16]);
        Fh(b)
    }
}

pub(crate) struct AreaInner {
    root: OwnedFd,
    /// [`ID_XATTR`]/[`VERF_XATTR`] or their `trusted.` twins, whichever the file system takes.
    id_xattr: &'static str,
    verf_xattr: &'static str,
    fsid: u64,
    token: Option<Vec<u8>>,
    ids: RwLock<Ids>,
    /// Held while a change is applied and handed on: one order of changes.
    change: Mutex<()>,
    idgen: Mutex<IdGen>,
    replicate: Option<Arc<dyn Replicate>>,
    walked: Mutex<Option<Instant>>,
    /// Changed only with `change` held, so no change is half applied across a transition.
    role: Mutex<Role>,
    /// Whether clients are served now, for the RPC guard: it resets their connections and
    /// accepts none while this is false.
    serving: tokio::sync::watch::Sender<bool>,
    /// [`AreaFs::open_path_ids`]: every id is derived from the parent's id and the name.
    path_ids: bool,
    /// [`AreaFs::open_path_ids`]: top-level directories no entry may change (true: refused).
    fenced: Option<Fence>,
}

/// Which top-level directories of a path-id copy are off limits to the stream (the node
/// directories the backup serves itself).
pub type Fence = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// The read-write NFSv3 file system of one area. Cheap to clone.
#[derive(Clone)]
pub struct AreaFs(pub(crate) Arc<AreaInner>);

/// Errors of changes, RFC 1813's names for them.
fn errno_rw(e: Errno) -> nfsstat3 {
    match e {
        Errno::EXIST => nfsstat3::NFS3ERR_EXIST,
        Errno::NOTEMPTY => nfsstat3::NFS3ERR_NOTEMPTY,
        Errno::ISDIR => nfsstat3::NFS3ERR_ISDIR,
        Errno::NOSPC => nfsstat3::NFS3ERR_NOSPC,
        Errno::DQUOT => nfsstat3::NFS3ERR_DQUOT,
        Errno::ROFS => nfsstat3::NFS3ERR_ROFS,
        Errno::FBIG => nfsstat3::NFS3ERR_FBIG,
        Errno::MLINK => nfsstat3::NFS3ERR_MLINK,
        Errno::INVAL => nfsstat3::NFS3ERR_INVAL,
        e => errno_stat(e),
    }
}

fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The id in an object's xattr (through an `O_PATH` descriptor: nothing is opened for I/O).
fn read_id(fd: &OwnedFd, xattr: &str) -> Result<Option<Fh>, Errno> {
    let mut b = [0u8; 16];
    match rustix::fs::getxattr(proc_path(fd).as_str(), xattr, &mut b[..]) {
        Ok(16) => Ok(Some(Fh(b))),
        // A malformed value is no id: the object gets a new one.
        Ok(_) | Err(Errno::NODATA) | Err(Errno::RANGE) => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_xattr(fd: &OwnedFd, name: &str, value: &[u8], flags: XattrFlags) -> Result<(), Errno> {
    rustix::fs::setxattr(proc_path(fd).as_str(), name, value, flags)
}

fn has_xattrs(ft: FileType) -> bool {
    matches!(ft, FileType::RegularFile | FileType::Directory)
}

fn name_ok(n: &[u8]) -> Result<&OsStr, nfsstat3> {
    if valid_name(n) {
        Ok(OsStr::from_bytes(n))
    } else if n.len() > 255 {
        Err(nfsstat3::NFS3ERR_NAMETOOLONG)
    } else {
        Err(nfsstat3::NFS3ERR_ACCES)
    }
}

fn timespec(t: SetTime) -> Timespec {
    match t {
        SetTime::Keep => Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        SetTime::To { seconds, nanos } => Timespec { tv_sec: seconds, tv_nsec: i64::from(nanos) },
    }
}

fn now() -> SetTime {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    SetTime::To { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() }
}

/// `sattr3` with server times resolved now.
fn attrs_of(s: &sattr3) -> Attrs {
    use nfs3_server::nfs3_types::nfs3::{set_gid3, set_mode3, set_size3, set_uid3};
    let client = |t: &nfstime3| SetTime::To { seconds: i64::from(t.seconds), nanos: t.nseconds };
    Attrs {
        mode: match s.mode {
            set_mode3::Some(m) => Some(m & 0o7777),
            set_mode3::None => None,
        },
        uid: match s.uid {
            set_uid3::Some(u) => Some(u),
            set_uid3::None => None,
        },
        gid: match s.gid {
            set_gid3::Some(g) => Some(g),
            set_gid3::None => None,
        },
        size: match s.size {
            set_size3::Some(z) => Some(z),
            set_size3::None => None,
        },
        atime: match &s.atime {
            set_atime::DONT_CHANGE => SetTime::Keep,
            set_atime::SET_TO_SERVER_TIME => now(),
            set_atime::SET_TO_CLIENT_TIME(t) => client(t),
        },
        mtime: match &s.mtime {
            set_mtime::DONT_CHANGE => SetTime::Keep,
            set_mtime::SET_TO_SERVER_TIME => now(),
            set_mtime::SET_TO_CLIENT_TIME(t) => client(t),
        },
    }
}

impl AreaFs {
    /// Opens the area directory `root` (symlinks in `root` itself are followed: the
    /// administrator chose it; nothing beneath it ever is) and walks it into the id map,
    /// giving an id to every file and directory without one. `replicate` receives every
    /// change in order. Refuses a file system without user xattrs.
    pub fn open(
        root: &Path,
        fsid: u64,
        token: Option<Vec<u8>>,
        replicate: Option<Arc<dyn Replicate>>,
    ) -> std::io::Result<AreaFs> {
        let canon = std::fs::canonicalize(root)?;
        let fd = rustix::fs::open(&canon, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        // The root's id is a constant; writing it tells which namespace the file system takes.
        let ns = [(ID_XATTR, VERF_XATTR), (TRUSTED_ID_XATTR, TRUSTED_VERF_XATTR)]
            .into_iter()
            .find(|(id, _)| write_xattr(&fd, id, &root_id().0, XattrFlags::empty()).is_ok());
        let Some((id_xattr, verf_xattr)) = ns else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!(
                    "{}: the file system takes neither user xattrs nor (as root) trusted ones, needed for file ids",
                    canon.display()
                ),
            ));
        };
        let mut key = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
        let inner = AreaInner {
            root: fd,
            id_xattr,
            verf_xattr,
            fsid,
            token,
            ids: RwLock::default(),
            change: Mutex::new(()),
            idgen: Mutex::new(IdGen { key, n: 0 }),
            replicate,
            walked: Mutex::new(None),
            role: Mutex::new(Role::Serving),
            serving: tokio::sync::watch::Sender::new(true),
            path_ids: false,
            fenced: None,
        };
        let fs = AreaFs(Arc::new(inner));
        fs.0.walk();
        Ok(fs)
    }

    /// The backup's copy of an area served by kernel nfsd on its primary (issue 13 point 4),
    /// for [`crate::replica::serve_replica`] only (no NFS server on it): files carry no ids
    /// (kernel nfsd's handles differ per server anyway, and the copy stays a plain tree the
    /// backup's nfsd and the tree engine can take over). Every id is [`symlink_id`] of its
    /// parent's id and its name, i.e. a function of the path, which the primary computes the
    /// same way without asking; a RENAME derives the moved subtree's ids again. Entries are
    /// applied so that replaying what the backup may already hold is harmless (the primary
    /// resends everything after a reconnect): CREATE/MKDIR of an existing file/directory keep
    /// it, SYMLINK replaces one, REMOVE of a missing name succeeds. An entry that would change
    /// anything beneath a top-level directory `fenced` names is skipped (not applied): the
    /// node directories this SN serves itself (after a failover, a returning old primary must
    /// not write its stale tree over the promoted copy).
    pub fn open_path_ids(root: &Path, fenced: Option<Fence>) -> std::io::Result<AreaFs> {
        let canon = std::fs::canonicalize(root)?;
        let fd = rustix::fs::open(&canon, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let inner = AreaInner {
            root: fd,
            id_xattr: ID_XATTR,
            verf_xattr: VERF_XATTR,
            fsid: 0,
            token: None,
            ids: RwLock::default(),
            change: Mutex::new(()),
            idgen: Mutex::new(IdGen { key: [0; 32], n: 0 }),
            replicate: None,
            walked: Mutex::new(None),
            role: Mutex::new(Role::Serving),
            serving: tokio::sync::watch::Sender::new(true),
            path_ids: true,
            fenced,
        };
        let fs = AreaFs(Arc::new(inner));
        fs.0.walk();
        Ok(fs)
    }

    /// Applies one log entry (the NFS operations go through the same function) and hands it
    /// on to `replicate`. Returns the id of the object made or changed, if any.
    pub fn apply(&self, op: &Op) -> Result<Option<Fh>, nfsstat3> {
        let _g = self.0.change.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?;
        self.0.apply(op)
    }

    /// Applies one entry of the primary's stream (the backup's side): here only, never handed
    /// on, and refused with `NFS3ERR_ROFS` once the area is [`Role::Promoted`] (the primary was
    /// fenced and this copy took over: its stream must not overwrite what clients wrote since).
    pub fn apply_from_primary(&self, op: &Op) -> Result<Option<Fh>, nfsstat3> {
        let _g = self.0.change.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?;
        if self.role() == Role::Promoted {
            return Err(nfsstat3::NFS3ERR_ROFS);
        }
        self.0.apply_local(op)
    }

    /// The area's role now.
    pub fn role(&self) -> Role {
        self.0.role.lock().map(|r| *r).unwrap_or(Role::Standby)
    }

    /// Whether the primary's stream is accepted now (not once promoted).
    pub fn accepts_stream(&self) -> bool {
        self.role() != Role::Promoted
    }

    /// Changes the role; returns the previous one. Blocks until a change being applied (a
    /// client's or the stream's) is done, so none straddles the transition: call it from a
    /// blocking context. Leaving standby walks the tree again first (another writer, such as
    /// the controller's copy back to a returned primary, may have changed it beneath the id
    /// map); entering it makes the guard reset every client connection.
    pub fn set_role(&self, role: Role) -> Result<Role, nfsstat3> {
        let _g = self.0.change.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?;
        let mut r = self.0.role.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?;
        let was = *r;
        if was == Role::Standby && role != Role::Standby {
            self.0.walk();
        }
        *r = role;
        drop(r);
        self.0.serving.send_replace(role.serves());
        if was != role {
            if let Some(rep) = &self.0.replicate {
                rep.role_changed(was, role);
            }
        }
        Ok(was)
    }

    /// Follows [`Self::role`]'s "clients are served" for the RPC guard.
    pub(crate) fn serving_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.serving.subscribe()
    }

    /// The id of the object at `rel` (a path inside the area), for tests and tools.
    pub fn id_of_path(&self, rel: &[u8]) -> Result<Fh, nfsstat3> {
        let mut id = root_id();
        if rel.is_empty() {
            return Ok(id);
        }
        for c in rel.split(|&b| b == b'/') {
            id = self.0.lookup(&id, c)?;
        }
        Ok(id)
    }

    /// The xattr file ids are kept in on this file system.
    pub fn id_xattr(&self) -> &'static str {
        self.0.id_xattr
    }

    /// Ids known in memory.
    pub fn ids_len(&self) -> usize {
        self.0.ids.read().map(|i| i.node.len()).unwrap_or(0)
    }

    /// Holds the change lock: no change is applied or handed on while the guard lives (the
    /// final pass of a resynchronisation, [`crate::resync`]).
    pub(crate) fn hold_changes(&self) -> Result<std::sync::MutexGuard<'_, ()>, nfsstat3> {
        self.0.change.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)
    }

    /// Walks the tree into the id map again (a resynchronisation rewrote it beneath the server).
    pub(crate) fn rewalk(&self) {
        self.0.walk();
    }

    /// The area's root directory (`O_PATH`).
    pub(crate) fn root_fd(&self) -> &OwnedFd {
        &self.0.root
    }
}

impl AreaInner {
    /// The path of an id: from the map, or after a (rate-limited) walk.
    fn path_of(&self, id: &Fh) -> Result<Vec<u8>, nfsstat3> {
        if let Some(p) = self.try_path(id) {
            return Ok(p);
        }
        let due = self.walked.lock().map(|w| w.is_none_or(|t| t.elapsed() >= REWALK_GAP)).unwrap_or(false);
        if due {
            self.walk();
        }
        self.try_path(id).ok_or(nfsstat3::NFS3ERR_STALE)
    }

    fn try_path(&self, id: &Fh) -> Option<Vec<u8>> {
        let root = root_id();
        if *id == root {
            return Some(Vec::new());
        }
        let ids = self.ids.read().ok()?;
        let mut comps: Vec<&[u8]> = Vec::new();
        let mut cur = *id;
        while cur != root {
            let (p, n) = ids.node.get(&cur)?;
            comps.push(n);
            cur = *p;
            if comps.len() > MAX_DEPTH {
                return None;
            }
        }
        comps.reverse();
        Some(comps.join(&b'/'))
    }

    fn open_id(&self, id: &Fh, flags: OFlags) -> Result<OwnedFd, nfsstat3> {
        let rel = self.path_of(id)?;
        open_beneath(&self.root, &rel, flags).map_err(|e| match errno_stat(e) {
            nfsstat3::NFS3ERR_NOENT | nfsstat3::NFS3ERR_NOTDIR => nfsstat3::NFS3ERR_STALE,
            s => s,
        })
    }

    fn open_dir(&self, id: &Fh) -> Result<OwnedFd, nfsstat3> {
        let fd = self.open_id(id, OFlags::PATH)?;
        let st = rustix::fs::fstat(&fd).map_err(errno_stat)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        Ok(fd)
    }

    /// The id of entry `name` of directory `dir` (descriptor `dfd`), giving it one if it has
    /// none, and recording it.
    fn id_at(&self, dir: &Fh, dfd: &OwnedFd, name: &[u8]) -> Result<Fh, Errno> {
        let fd = rustix::fs::openat(
            dfd,
            OsStr::from_bytes(name),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let id = if !self.path_ids && has_xattrs(FileType::from_raw_mode(st.st_mode)) {
            match read_id(&fd, self.id_xattr)? {
                Some(id) => id,
                None => {
                    let fresh = self.idgen.lock().map_err(|_| Errno::IO)?.next();
                    match write_xattr(&fd, self.id_xattr, &fresh.0, XattrFlags::CREATE) {
                        Ok(()) => fresh,
                        // Given one meanwhile.
                        Err(Errno::EXIST) => read_id(&fd, self.id_xattr)?.ok_or(Errno::IO)?,
                        Err(e) => return Err(e),
                    }
                }
            }
        } else {
            symlink_id(dir, name)
        };
        if let Ok(mut ids) = self.ids.write() {
            // A file of several links keeps its other names (a rename behind the server's back
            // leaves one link: the old name is dropped).
            if st.st_nlink > 1 && has_xattrs(FileType::from_raw_mode(st.st_mode)) {
                ids.link(id, *dir, name);
            } else {
                ids.insert(id, *dir, name);
            }
        }
        Ok(id)
    }

    /// Records every object of the tree; files copied with their xattrs (two inodes with one
    /// id) get a new id for all but the first seen.
    fn walk(&self) {
        if let Ok(mut w) = self.walked.lock() {
            *w = Some(Instant::now());
        }
        let mut seen: HashMap<Fh, (u64, u64)> = HashMap::new();
        let mut stack = vec![(root_id(), Vec::new())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(dfd) = open_beneath(&self.root, &rel, OFlags::RDONLY | OFlags::DIRECTORY) else {
                continue;
            };
            let Ok(names) = read_names(&dfd) else {
                continue;
            };
            for (name, _) in names {
                if !valid_name(&name) {
                    continue;
                }
                let Ok(fd) = rustix::fs::openat(
                    &dfd,
                    OsStr::from_bytes(&name),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) else {
                    continue;
                };
                let Ok(st) = rustix::fs::fstat(&fd) else {
                    continue;
                };
                let ft = FileType::from_raw_mode(st.st_mode);
                if !self.path_ids && has_xattrs(ft) {
                    if let Ok(Some(id)) = read_id(&fd, self.id_xattr) {
                        match seen.get(&id) {
                            Some(&ino) if ino != (st.st_dev, st.st_ino) => {
                                // A copy carrying another file's id: it gets its own.
                                if let Ok(mut g) = self.idgen.lock() {
                                    let fresh = g.next();
                                    let _ = write_xattr(&fd, self.id_xattr, &fresh.0, XattrFlags::empty());
                                }
                            }
                            _ => {
                                seen.insert(id, (st.st_dev, st.st_ino));
                            }
                        }
                    }
                }
                let Ok(id) = self.id_at(&dir, &dfd, &name) else {
                    continue;
                };
                seen.entry(id).or_insert((st.st_dev, st.st_ino));
                if ft == FileType::Directory {
                    stack.push((id, join(&rel, &name)));
                }
            }
        }
    }

    fn attr_fd(&self, fd: &OwnedFd, id: &Fh) -> Result<fattr3, nfsstat3> {
        let st = rustix::fs::fstat(fd).map_err(errno_stat)?;
        // Real ctimes: a client must see a change made through another path (RFC 1813 §2.3.2
        // cache consistency); after a takeover the backup's differ, which only costs a reread.
        Ok(fattr(&st, id.fileid(), self.fsid, false, false))
    }

    fn getattr(&self, id: &Fh) -> Result<fattr3, nfsstat3> {
        let fd = self.open_id(id, OFlags::PATH)?;
        self.attr_fd(&fd, id)
    }

    fn lookup(&self, dir: &Fh, name: &[u8]) -> Result<Fh, nfsstat3> {
        match name {
            b"." => return Ok(*dir),
            b".." => {
                if *dir == root_id() {
                    return Ok(*dir);
                }
                let ids = self.ids.read().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?;
                return ids.node.get(dir).map(|(p, _)| *p).ok_or(nfsstat3::NFS3ERR_STALE);
            }
            _ => {}
        }
        let n = name_ok(name).map_err(|e| if e == nfsstat3::NFS3ERR_ACCES { nfsstat3::NFS3ERR_NOENT } else { e })?;
        let dfd = self.open_dir(dir)?;
        rustix::fs::statat(&dfd, n, AtFlags::SYMLINK_NOFOLLOW).map_err(errno_stat)?;
        self.id_at(dir, &dfd, name).map_err(errno_stat)
    }

    fn read(&self, id: &Fh, offset: u64, count: u32) -> Result<(Vec<u8>, bool), nfsstat3> {
        let fd = self.open_reg(id, OFlags::RDONLY, false)?;
        let size = rustix::fs::fstat(&fd).map(|s| u64::try_from(s.st_size).unwrap_or(0)).map_err(errno_stat)?;
        read_at(&fd, size, offset, count)
    }

    /// Opens the regular file `id` for I/O: exactly the inode whose type was checked (through
    /// its `O_PATH` descriptor), refused for writing when it has a link this server did not make.
    fn open_reg(&self, id: &Fh, flags: OFlags, writing: bool) -> Result<OwnedFd, nfsstat3> {
        let pfd = self.open_id(id, OFlags::PATH)?;
        let st = rustix::fs::fstat(&pfd).map_err(errno_stat)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => return Err(nfsstat3::NFS3ERR_ISDIR),
            _ => return Err(nfsstat3::NFS3ERR_INVAL),
        }
        if writing && !self.links_are_own(&pfd, &st) {
            return Err(nfsstat3::NFS3ERR_ACCES);
        }
        rustix::fs::open(proc_path(&pfd).as_str(), flags | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty())
            .map_err(errno_rw)
    }

    fn readlink(&self, id: &Fh) -> Result<Vec<u8>, nfsstat3> {
        let fd = self.open_id(id, OFlags::PATH)?;
        let st = rustix::fs::fstat(&fd).map_err(errno_stat)?;
        symlink_target(&fd, &st)
    }

    /// Applies a change (the change lock held), then hands it to the replication stream.
    fn apply(&self, op: &Op) -> Result<Option<Fh>, nfsstat3> {
        let r = self.apply_local(op)?;
        if let Some(rep) = &self.replicate {
            rep.replicate(op)?;
        }
        Ok(r)
    }

    /// Whether `op` changes something beneath a fenced top-level directory.
    fn fenced(&self, op: &Op) -> bool {
        let Some(f) = &self.fenced else { return false };
        let top = |base: &Fh, name: Option<&[u8]>| -> Option<Vec<u8>> {
            let p = self.try_path(base)?;
            match p.split(|&b| b == b'/').next().filter(|c| !c.is_empty()) {
                Some(c) => Some(c.to_vec()),
                None => name.map(<[u8]>::to_vec),
            }
        };
        let tops = match op {
            Op::Create { dir, name, .. }
            | Op::Mkdir { dir, name, .. }
            | Op::Symlink { dir, name, .. }
            | Op::Mknod { dir, name, .. }
            | Op::CreateOwned { dir, name, .. }
            | Op::MkdirOwned { dir, name, .. } => vec![top(dir, Some(name))],
            // The new name and the file it names (its link count changes).
            Op::Link { id, dir, name } => vec![top(dir, Some(name)), top(id, None)],
            Op::Remove { dir, name } => vec![top(dir, Some(name))],
            Op::Rename { from_dir, from, to_dir, to } => vec![top(from_dir, Some(from)), top(to_dir, Some(to))],
            Op::SetAttr { id, .. } | Op::Write { id, .. } | Op::Commit { id } => vec![top(id, None)],
        };
        tops.into_iter().flatten().any(|t| f(&t))
    }

    fn apply_local(&self, op: &Op) -> Result<Option<Fh>, nfsstat3> {
        if self.fenced(op) {
            // Skipped, not failed: the stream goes on for the other node directories.
            return Ok(None);
        }
        match op {
            Op::Create { dir, name, id, mode, verf } => self.create_local(dir, name, id, *mode, verf.as_ref(), None),
            Op::Mkdir { dir, name, id, mode } => self.mkdir_local(dir, name, id, *mode, None),
            Op::Symlink { dir, name, target } => {
                let n = name_ok(name)?;
                if target.is_empty() || target.contains(&0) || target.len() > 4095 {
                    return Err(nfsstat3::NFS3ERR_INVAL);
                }
                let dfd = self.open_dir(dir)?;
                if self.path_ids {
                    if let Ok(st) = rustix::fs::statat(&dfd, n, AtFlags::SYMLINK_NOFOLLOW) {
                        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                            rustix::fs::unlinkat(&dfd, n, AtFlags::empty()).map_err(errno_rw)?;
                        }
                    }
                }
                rustix::fs::symlinkat(OsStr::from_bytes(target), &dfd, n).map_err(errno_rw)?;
                rustix::fs::fsync(&dfd_rw(&dfd)?).map_err(errno_rw)?;
                let id = symlink_id(dir, name);
                self.record(id, *dir, name);
                Ok(Some(id))
            }
            Op::Remove { dir, name } => {
                let n = name_ok(name)?;
                let dfd = self.open_dir(dir)?;
                let st = match rustix::fs::statat(&dfd, n, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::NOENT) if self.path_ids => return Ok(None),
                    Err(e) => return Err(errno_rw(e)),
                };
                let flags = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                self.unlinking(&dfd, n, &st)?;
                rustix::fs::unlinkat(&dfd, n, flags).map_err(errno_rw)?;
                rustix::fs::fsync(&dfd_rw(&dfd)?).map_err(errno_rw)?;
                if let Ok(mut ids) = self.ids.write() {
                    ids.remove_entry(*dir, name);
                }
                Ok(None)
            }
            Op::Rename { from_dir, from, to_dir, to } => {
                let (fname, tname) = (name_ok(from)?, name_ok(to)?);
                let fdfd = self.open_dir(from_dir)?;
                let tdfd = self.open_dir(to_dir)?;
                let id = self.id_at(from_dir, &fdfd, from).map_err(errno_rw)?;
                let st = rustix::fs::statat(&fdfd, fname, AtFlags::SYMLINK_NOFOLLOW).map_err(errno_rw)?;
                if let Ok(tst) = rustix::fs::statat(&tdfd, tname, AtFlags::SYMLINK_NOFOLLOW) {
                    if (tst.st_dev, tst.st_ino) == (st.st_dev, st.st_ino) {
                        // Two names of one file: POSIX rename does nothing.
                        return Ok(Some(id));
                    }
                    let (sd, td) = (is_dir(&st), is_dir(&tst));
                    if sd != td {
                        return Err(if td { nfsstat3::NFS3ERR_ISDIR } else { nfsstat3::NFS3ERR_NOTDIR });
                    }
                    self.unlinking(&tdfd, tname, &tst)?;
                }
                rustix::fs::renameat(&fdfd, fname, &tdfd, tname).map_err(errno_rw)?;
                rustix::fs::fsync(&dfd_rw(&tdfd)?).map_err(errno_rw)?;
                if from_dir != to_dir {
                    rustix::fs::fsync(&dfd_rw(&fdfd)?).map_err(errno_rw)?;
                }
                let keeps = !self.path_ids && has_xattrs(FileType::from_raw_mode(st.st_mode));
                let new = if keeps { id } else { symlink_id(to_dir, to) };
                if let Ok(mut ids) = self.ids.write() {
                    ids.remove_entry(*from_dir, from);
                    ids.remove_entry(*to_dir, to);
                    ids.insert(new, *to_dir, to);
                    if self.path_ids && is_dir(&st) {
                        ids.rekey(id, new);
                    }
                }
                Ok(Some(new))
            }
            Op::SetAttr { id, attrs } => {
                self.setattr_local(id, attrs)?;
                Ok(Some(*id))
            }
            Op::Write { id, offset, data, sync } => {
                let fd = self.open_reg(id, OFlags::WRONLY, true)?;
                let mut done = 0;
                while done < data.len() {
                    match rustix::io::pwrite(&fd, &data[done..], offset + done as u64) {
                        Ok(0) => return Err(nfsstat3::NFS3ERR_IO),
                        Ok(n) => done += n,
                        Err(Errno::INTR) => continue,
                        Err(e) => return Err(errno_rw(e)),
                    }
                }
                if *sync {
                    rustix::fs::fdatasync(&fd).map_err(errno_rw)?;
                }
                Ok(Some(*id))
            }
            Op::Commit { id } => {
                let fd = self.open_reg(id, OFlags::RDONLY, false)?;
                rustix::fs::fsync(&fd).map_err(errno_rw)?;
                Ok(Some(*id))
            }
            Op::Link { id, dir, name } => self.link_local(id, dir, name),
            Op::Mknod { dir, name, kind, mode, uid, gid } => self.mknod_local(dir, name, *kind, *mode, (*uid, *gid)),
            Op::CreateOwned { dir, name, id, mode, verf, uid, gid } => {
                self.create_local(dir, name, id, *mode, verf.as_ref(), Some((*uid, *gid)))
            }
            Op::MkdirOwned { dir, name, id, mode, uid, gid } => {
                self.mkdir_local(dir, name, id, *mode, Some((*uid, *gid)))
            }
        }
    }

    /// Gives a new file its id (and EXCLUSIVE verifier), durably, before it is linked in.
    fn label(&self, f: &OwnedFd, id: &Fh, verf: Option<&[u8; 8]>) -> Result<(), nfsstat3> {
        if self.path_ids {
            return rustix::fs::fsync(f).map_err(errno_rw);
        }
        rustix::fs::fsetxattr(f, self.id_xattr, &id.0, XattrFlags::CREATE).map_err(errno_rw)?;
        if let Some(v) = verf {
            rustix::fs::fsetxattr(f, self.verf_xattr, v, XattrFlags::CREATE).map_err(errno_rw)?;
        }
        rustix::fs::fsync(f).map_err(errno_rw)
    }

    fn record(&self, id: Fh, dir: Fh, name: &[u8]) {
        if let Ok(mut ids) = self.ids.write() {
            ids.insert(id, dir, name);
        }
    }

    fn setattr_local(&self, id: &Fh, a: &Attrs) -> Result<(), nfsstat3> {
        let fd = self.open_id(id, OFlags::PATH)?;
        let st = rustix::fs::fstat(&fd).map_err(errno_stat)?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if let Some(size) = a.size {
            if ft != FileType::RegularFile {
                return Err(if ft == FileType::Directory { nfsstat3::NFS3ERR_ISDIR } else { nfsstat3::NFS3ERR_INVAL });
            }
            let w = self.open_reg(id, OFlags::WRONLY, true)?;
            rustix::fs::ftruncate(&w, size).map_err(errno_rw)?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            let uid = a.uid.map(rustix::fs::Uid::from_raw);
            let gid = a.gid.map(rustix::fs::Gid::from_raw);
            rustix::fs::chownat(&fd, "", uid, gid, AtFlags::EMPTY_PATH).map_err(errno_rw)?;
        }
        if let Some(mode) = a.mode {
            if ft != FileType::Symlink {
                // After chown, which clears set-id bits.
                rustix::fs::chmod(proc_path(&fd).as_str(), Mode::from_raw_mode(mode & 0o7777)).map_err(errno_rw)?;
            }
        }
        if a.atime != SetTime::Keep || a.mtime != SetTime::Keep {
            let times = Timestamps { last_access: timespec(a.atime), last_modification: timespec(a.mtime) };
            if ft == FileType::Symlink {
                rustix::fs::utimensat(&fd, "", &times, AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(errno_rw)?;
            } else {
                rustix::fs::utimensat(rustix::fs::CWD, proc_path(&fd).as_str(), &times, AtFlags::empty())
                    .map_err(errno_rw)?;
            }
        }
        // Metadata durable before the reply, as for namespace changes.
        if has_xattrs(ft) {
            let sync = rustix::fs::open(
                proc_path(&fd).as_str(),
                OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .map_err(errno_rw)?;
            rustix::fs::fsync(&sync).map_err(errno_rw)?;
        }
        Ok(())
    }

    /// CREATE's three modes (RFC 1813 §3.3.8) on top of [`Op::Create`]/[`Op::SetAttr`].
    fn create(&self, dir: &Fh, name: &[u8], how: Create) -> Result<Fh, nfsstat3> {
        let n = name_ok(name)?;
        let _g = self.change.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?;
        self.served()?;
        let dfd = self.open_dir(dir)?;
        match rustix::fs::statat(&dfd, n, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let existing = self.id_at(dir, &dfd, name).map_err(errno_stat)?;
                match how {
                    Create::Unchecked(attrs) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                        // An existing file is kept; only a size (truncation) and the rest of the
                        // attributes apply, as nfsd does.
                        let attrs = Attrs { mode: None, ..attrs };
                        if !attrs.is_empty() {
                            self.apply(&Op::SetAttr { id: existing, attrs })?;
                        }
                        Ok(existing)
                    }
                    Create::Exclusive(v) => {
                        // A retry of the CREATE that made it: the same verifier is stored there.
                        let fd = self.open_id(&existing, OFlags::PATH)?;
                        let mut got = [0u8; 8];
                        match rustix::fs::getxattr(proc_path(&fd).as_str(), self.verf_xattr, &mut got[..]) {
                            Ok(8) if got == v => Ok(existing),
                            _ => Err(nfsstat3::NFS3ERR_EXIST),
                        }
                    }
                    _ => Err(nfsstat3::NFS3ERR_EXIST),
                }
            }
            Err(Errno::NOENT) => {
                let id = self.fresh_id()?;
                drop(dfd);
                let (mode, verf, rest) = match how {
                    Create::Unchecked(a) => (a.mode.unwrap_or(0o644), None, Attrs { mode: None, ..a }),
                    Create::Exclusive(v) => (0o644, Some(v), Attrs::default()),
                };
                self.apply(&Op::Create { dir: *dir, name: name.to_vec(), id, mode, verf })?;
                if !rest.is_empty() {
                    self.apply(&Op::SetAttr { id, attrs: rest })?;
                }
                Ok(id)
            }
            Err(e) => Err(errno_stat(e)),
        }
    }

    fn change(&self, op: Op) -> Result<Option<Fh>, nfsstat3> {
        let _g = self.change.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?;
        self.served()?;
        self.apply(&op)
    }

    /// A client's change is made only while clients are served (checked with `change` held): one
    /// that reached a standby area in the instant its connection was being reset is answered
    /// "retry later", and the retry goes to whoever serves the area then.
    fn served(&self) -> Result<(), nfsstat3> {
        match self.role.lock().map(|r| r.serves()) {
            Ok(true) => Ok(()),
            _ => Err(nfsstat3::NFS3ERR_JUKEBOX),
        }
    }

    fn fresh_id(&self) -> Result<Fh, nfsstat3> {
        Ok(self.idgen.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?.next())
    }
}

fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// A directory descriptor fsync accepts (an `O_PATH` one it does not).
fn dfd_rw(dfd: &OwnedFd) -> Result<OwnedFd, nfsstat3> {
    rustix::fs::openat(dfd, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(errno_rw)
}

enum Create {
    /// UNCHECKED, and GUARDED once the NFS layer found no such name.
    Unchecked(Attrs),
    Exclusive([u8; 8]),
}

/// READDIRPLUS results, stat'ed in batches.
pub struct RwDirIter {
    fs: Arc<AreaInner>,
    dir: Fh,
    fd: OwnedFd,
    names: Vec<Vec<u8>>,
    next: usize,
    ready: std::collections::VecDeque<DirEntryPlus<Fh>>,
}

impl RwDirIter {
    fn fill(&mut self) {
        while self.ready.len() < PREFETCH {
            let Some(name) = self.names.get(self.next).cloned() else {
                break;
            };
            self.next += 1;
            let Ok(fd) = rustix::fs::openat(
                &self.fd,
                OsStr::from_bytes(&name),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            let Ok(id) = self.fs.id_at(&self.dir, &self.fd, &name) else {
                continue;
            };
            let Ok(attr) = self.fs.attr_fd(&fd, &id) else {
                continue;
            };
            self.ready.push_back(DirEntryPlus {
                fileid: id.fileid(),
                name: filename3(Opaque::owned(name)),
                cookie: self.next as u64,
                name_attributes: Some(attr),
                name_handle: Some(id),
            });
        }
    }
}

impl ReadDirPlusIterator<Fh> for RwDirIter {
    async fn next(&mut self) -> NextResult<DirEntryPlus<Fh>> {
        if self.ready.is_empty() {
            self.fill();
        }
        match self.ready.pop_front() {
            Some(e) => NextResult::Ok(e),
            None => NextResult::Eof,
        }
    }
}

impl AreaInner {
    /// Cookies are positions in the sorted listing (names sort the same on every replica):
    /// entries removed between two pages shift it by at most what was removed, never fail a
    /// listing with BAD_COOKIE as a vanished fileid would (`rm -r` lists while it removes).
    fn readdir(self: &Arc<Self>, dir: &Fh, cookie: u64) -> Result<RwDirIter, nfsstat3> {
        let dfd = self.open_dir(dir)?;
        let fd = dfd_rw(&dfd)?;
        let mut names: Vec<Vec<u8>> = read_names(&fd).map_err(errno_stat)?.into_iter().map(|(n, _)| n).collect();
        names.sort_unstable();
        let next = usize::try_from(cookie).map_err(|_| nfsstat3::NFS3ERR_BAD_COOKIE)?.min(names.len());
        let mut it =
            RwDirIter { fs: Arc::clone(self), dir: *dir, fd, names, next, ready: std::collections::VecDeque::new() };
        it.fill();
        Ok(it)
    }
}

impl NfsReadFileSystem for AreaFs {
    type Handle = Fh;

    fn root_dir(&self) -> Fh {
        root_id()
    }

    fn authorize(&self, auth: Option<&auth_unix>) -> bool {
        stamped(self.0.token.as_deref(), auth)
    }

    async fn lookup(&self, dirid: &Fh, filename: &filename3<'_>) -> Result<Fh, nfsstat3> {
        let (fs, dir, name) = (Arc::clone(&self.0), *dirid, filename.0.to_vec());
        blocking(move || fs.lookup(&dir, &name)).await
    }

    async fn getattr(&self, id: &Fh) -> Result<fattr3, nfsstat3> {
        let (fs, id) = (Arc::clone(&self.0), *id);
        blocking(move || fs.getattr(&id)).await
    }

    async fn read(&self, id: &Fh, offset: u64, count: u32) -> Result<(Vec<u8>, bool), nfsstat3> {
        let (fs, id) = (Arc::clone(&self.0), *id);
        blocking(move || fs.read(&id, offset, count)).await
    }

    async fn readdirplus(&self, dirid: &Fh, cookie: u64) -> Result<impl ReadDirPlusIterator<Fh>, nfsstat3> {
        let (fs, dir) = (Arc::clone(&self.0), *dirid);
        blocking(move || fs.readdir(&dir, cookie)).await
    }

    async fn readlink(&self, id: &Fh) -> Result<nfspath3<'_>, nfsstat3> {
        let (fs, id) = (Arc::clone(&self.0), *id);
        let t = blocking(move || fs.readlink(&id)).await?;
        Ok(nfspath3(Opaque::owned(t)))
    }

    async fn fsinfo(&self, root: &Fh) -> Result<fsinfo3, nfsstat3> {
        let obj_attributes = self.getattr(root).await.map_or(post_op_attr::None, post_op_attr::Some);
        Ok(fsinfo3 {
            obj_attributes,
            rtmax: MAX_READ,
            rtpref: MAX_READ,
            rtmult: 4096,
            wtmax: MAX_READ,
            wtpref: MAX_READ,
            wtmult: 4096,
            dtpref: 64 * 1024,
            maxfilesize: i64::MAX as u64,
            time_delta: nfstime3 { seconds: 0, nseconds: 1 },
            properties: FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        })
    }
}

impl NfsFileSystem for AreaFs {
    fn capabilities(&self) -> VFSCapabilities {
        VFSCapabilities::ReadWrite
    }

    async fn setattr(&self, id: &Fh, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let (fs, id, attrs) = (Arc::clone(&self.0), *id, attrs_of(&setattr));
        blocking(move || {
            if !attrs.is_empty() {
                fs.change(Op::SetAttr { id, attrs })?;
            }
            fs.getattr(&id)
        })
        .await
    }

    async fn write(
        &self,
        id: &Fh,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(fattr3, stable_how), nfsstat3> {
        let (fs, id, data) = (Arc::clone(&self.0), *id, data.to_vec());
        let sync = !matches!(stable, stable_how::UNSTABLE);
        blocking(move || {
            fs.change(Op::Write { id, offset, data, sync })?;
            // DATA_SYNC is answered as done (fdatasync); UNSTABLE as left unstable.
            Ok((fs.getattr(&id)?, if sync { stable } else { stable_how::UNSTABLE }))
        })
        .await
    }

    async fn create(&self, dirid: &Fh, filename: &filename3<'_>, attr: sattr3) -> Result<(Fh, fattr3), nfsstat3> {
        let (fs, dir, name, attrs) = (Arc::clone(&self.0), *dirid, filename.0.to_vec(), attrs_of(&attr));
        blocking(move || {
            // GUARDED's existence check was made by the NFS layer just before; an UNCHECKED
            // create of an existing file keeps it (RFC 1813 §3.3.8).
            let id = fs.create(&dir, &name, Create::Unchecked(attrs))?;
            Ok((id, fs.getattr(&id)?))
        })
        .await
    }

    async fn create_exclusive(
        &self,
        dirid: &Fh,
        filename: &filename3<'_>,
        createverf: createverf3,
    ) -> Result<Fh, nfsstat3> {
        let (fs, dir, name) = (Arc::clone(&self.0), *dirid, filename.0.to_vec());
        blocking(move || fs.create(&dir, &name, Create::Exclusive(createverf.0))).await
    }

    async fn mkdir(&self, dirid: &Fh, dirname: &filename3<'_>) -> Result<(Fh, fattr3), nfsstat3> {
        let (fs, dir, name) = (Arc::clone(&self.0), *dirid, dirname.0.to_vec());
        blocking(move || {
            let id = fs.fresh_id()?;
            fs.change(Op::Mkdir { dir, name, id, mode: MKDIR_MODE })?;
            Ok((id, fs.getattr(&id)?))
        })
        .await
    }

    async fn remove(&self, dirid: &Fh, filename: &filename3<'_>) -> Result<(), nfsstat3> {
        let (fs, dir, name) = (Arc::clone(&self.0), *dirid, filename.0.to_vec());
        blocking(move || fs.change(Op::Remove { dir, name }).map(|_| ())).await
    }

    async fn rename<'a>(
        &self,
        from_dirid: &Fh,
        from_filename: &filename3<'a>,
        to_dirid: &Fh,
        to_filename: &filename3<'a>,
    ) -> Result<(), nfsstat3> {
        let op = Op::Rename {
            from_dir: *from_dirid,
            from: from_filename.0.to_vec(),
            to_dir: *to_dirid,
            to: to_filename.0.to_vec(),
        };
        let fs = Arc::clone(&self.0);
        blocking(move || fs.change(op).map(|_| ())).await
    }

    async fn symlink<'a>(
        &self,
        dirid: &Fh,
        linkname: &filename3<'a>,
        symlink: &nfspath3<'a>,
        attr: &sattr3,
    ) -> Result<(Fh, fattr3), nfsstat3> {
        let (fs, dir, name, target) = (Arc::clone(&self.0), *dirid, linkname.0.to_vec(), symlink.0.to_vec());
        let attrs = Attrs { mode: None, size: None, ..attrs_of(attr) };
        blocking(move || {
            let _g = fs.change.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?;
            fs.served()?;
            let id = fs.apply(&Op::Symlink { dir, name, target })?.ok_or(nfsstat3::NFS3ERR_SERVERFAULT)?;
            if !attrs.is_empty() {
                fs.apply(&Op::SetAttr { id, attrs })?;
            }
            Ok((id, fs.getattr(&id)?))
        })
        .await
    }

    async fn commit(&self, id: &Fh, _offset: u64, _count: u32) -> Result<(), nfsstat3> {
        let (fs, id) = (Arc::clone(&self.0), *id);
        blocking(move || fs.change(Op::Commit { id }).map(|_| ())).await
    }
}
