//! The directory-backed read-only file system behind the server.
//!
//! Every operation resolves the object's path (relative to the export root) beneath a directory
//! descriptor of the root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: no component may
//! be a symlink or `..`, so nothing outside the root is ever opened, whatever the tree holds.
//! Kernels without `openat2` get the same guarantee from a component-by-component `openat` with
//! `O_NOFOLLOW`. Symlinks are served as such (READLINK returns their text; the client resolves
//! it in its own namespace), never followed on the server. Entries named `.hanfs` (the tree
//! engine's private directory) are invisible at every depth.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nfs3_server::nfs3_types::nfs3::{
    createverf3, fattr3, filename3, ftype3, nfspath3, nfsstat3, nfstime3, post_op_attr, sattr3, specdata3, stable_how,
    FSINFO3resok as fsinfo3, FSF3_HOMOGENEOUS, FSF3_SYMLINK,
};
use nfs3_server::nfs3_types::rpc::auth_unix;
use nfs3_server::nfs3_types::xdr_codec::Opaque;
use nfs3_server::vfs::{
    DirEntryPlus, NextResult, NfsFileSystem, NfsReadFileSystem, ReadDirPlusIterator, VFSCapabilities,
};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::gate::{Gate, ReadGuard};
use crate::index::{Fh, Index};

/// The name hidden at every depth.
pub const PRIVATE_DIR: &[u8] = b".hanfs";
/// Largest READ answered (also what the server advertises as `rtmax`).
pub const MAX_READ: u32 = 1 << 20;
/// Minimum time between two walks triggered by unknown handles.
const REWALK_GAP: Duration = Duration::from_secs(5);
/// Directory entries stat'ed ahead per READDIRPLUS call.
const PREFETCH: usize = 64;
/// Directory listings kept between READDIR pages.
const LISTINGS: usize = 64;

pub(crate) struct Inner {
    root: OwnedFd,
    fsid: u64,
    stable_ctime: bool,
    /// When set, only calls whose AUTH_UNIX machine name is this token are served (the
    /// permission guard stamps every call it forwards; see [`crate::guard`]).
    token: Option<Vec<u8>>,
    pub(crate) index: Index,
    listings: Mutex<HashMap<Fh, Listing>>,
    /// Every operation holds it while it touches the tree; a commit holds it exclusively.
    pub(crate) gate: Gate,
}

/// A read-only NFSv3 view of a directory. Cheap to clone.
#[derive(Clone)]
pub struct ReplicaFs(pub(crate) Arc<Inner>);

pub(crate) fn errno_stat(e: Errno) -> nfsstat3 {
    match e {
        Errno::NOENT | Errno::LOOP => nfsstat3::NFS3ERR_NOENT,
        Errno::NOTDIR => nfsstat3::NFS3ERR_NOTDIR,
        Errno::ACCESS | Errno::PERM | Errno::XDEV => nfsstat3::NFS3ERR_ACCES,
        Errno::NAMETOOLONG => nfsstat3::NFS3ERR_NAMETOOLONG,
        _ => nfsstat3::NFS3ERR_IO,
    }
}

/// For operations on an object named by a handle: a vanished path is a stale handle.
pub(crate) fn errno_stale(e: Errno) -> nfsstat3 {
    match errno_stat(e) {
        nfsstat3::NFS3ERR_NOENT | nfsstat3::NFS3ERR_NOTDIR => nfsstat3::NFS3ERR_STALE,
        s => s,
    }
}

pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// READ's reply for a regular file of `size` bytes open as `fd`: at most `count` (capped at
/// [`MAX_READ`]) bytes from `offset`, and whether they reach the end. Shared by both servers.
pub(crate) fn read_at(fd: &OwnedFd, size: u64, offset: u64, count: u32) -> Result<(Vec<u8>, bool), nfsstat3> {
    if offset >= size {
        return Ok((Vec::new(), true));
    }
    let want = usize::try_from((size - offset).min(u64::from(count.min(MAX_READ)))).unwrap_or(0);
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match rustix::io::pread(fd, &mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(errno_stat(e)),
        }
    }
    buf.truncate(got);
    Ok((buf, offset + got as u64 >= size))
}

/// READLINK of the `O_PATH` descriptor `fd` whose stat is `st`: `NFS3ERR_INVAL` unless a symlink.
pub(crate) fn symlink_target(fd: &OwnedFd, st: &Stat) -> Result<Vec<u8>, nfsstat3> {
    if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
        return Err(nfsstat3::NFS3ERR_INVAL);
    }
    rustix::fs::readlinkat(fd, "", Vec::new()).map(|t| t.into_bytes()).map_err(errno_stat)
}

/// Whether a call carries the guard's stamp (its secret as the AUTH_UNIX machine name); every call
/// passes when there is no guard (`token` None).
pub(crate) fn stamped(token: Option<&[u8]>, auth: Option<&auth_unix>) -> bool {
    match token {
        None => true,
        Some(t) => auth.is_some_and(|a| a.machinename.as_ref() == t),
    }
}

fn parent(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => &rel[..i],
        None => b"",
    }
}

/// A name a client may look up: one component, not `.`/`..` (handled apart), not hidden.
pub(crate) fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && name != PRIVATE_DIR
        && !name.contains(&b'/')
        && !name.contains(&0)
}

pub(crate) fn time(sec: i64, nsec: u64) -> nfstime3 {
    nfstime3 { seconds: u32::try_from(sec.max(0)).unwrap_or(u32::MAX), nseconds: u32::try_from(nsec).unwrap_or(0) }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, nfsstat3> + Send + 'static,
) -> Result<T, nfsstat3> {
    tokio::task::spawn_blocking(f).await.unwrap_or(Err(nfsstat3::NFS3ERR_SERVERFAULT))
}

/// How long an operation waits for a commit by default before it is answered JUKEBOX.
pub const SWITCH_WAIT: Duration = Duration::from_secs(2);

impl Inner {
    /// Enters the gate: the operation then sees one generation of the tree throughout.
    fn enter(&self) -> Result<ReadGuard, nfsstat3> {
        self.gate.read().map_err(|_| nfsstat3::NFS3ERR_JUKEBOX)
    }
}

/// Opens `rel` beneath the root without following any symlink (a symlink as the last
/// component is opened itself when `oflags` has `O_PATH`).
pub(crate) fn open_beneath(root: &OwnedFd, rel: &[u8], oflags: OFlags) -> Result<OwnedFd, Errno> {
    let p: &[u8] = if rel.is_empty() { b"." } else { rel };
    let flags = oflags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    for _ in 0..4 {
        match rustix::fs::openat2(root, OsStr::from_bytes(p), flags, Mode::empty(), resolve) {
            // A concurrent rename under the root: retry, then take the slow path.
            Err(Errno::AGAIN) => continue,
            Err(Errno::NOSYS) => break,
            r => return r,
        }
    }
    open_walk(root, rel, flags)
}

/// `open_beneath` without `openat2`: one `openat(O_NOFOLLOW)` per component.
fn open_walk(root: &OwnedFd, rel: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    let dirflags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur = rustix::fs::openat(root, ".", dirflags, Mode::empty())?;
    if rel.is_empty() {
        return rustix::fs::openat(&cur, ".", flags & !OFlags::NOFOLLOW, Mode::empty());
    }
    let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    for (i, c) in comps.iter().enumerate() {
        if c.is_empty() || *c == b"." || *c == b".." {
            return Err(Errno::XDEV);
        }
        let last = i + 1 == comps.len();
        cur = rustix::fs::openat(&cur, OsStr::from_bytes(c), if last { flags } else { dirflags }, Mode::empty())?;
    }
    Ok(cur)
}

pub(crate) fn fattr(st: &Stat, fileid: u64, fsid: u64, stable_ctime: bool, hidden_subdir: bool) -> fattr3 {
    let ft = FileType::from_raw_mode(st.st_mode);
    let type_ = match ft {
        FileType::RegularFile => ftype3::NF3REG,
        FileType::Directory => ftype3::NF3DIR,
        FileType::Symlink => ftype3::NF3LNK,
        FileType::BlockDevice => ftype3::NF3BLK,
        FileType::CharacterDevice => ftype3::NF3CHR,
        FileType::Socket => ftype3::NF3SOCK,
        FileType::Fifo => ftype3::NF3FIFO,
        FileType::Unknown => ftype3::NF3REG,
    };
    let rdev = if matches!(ft, FileType::BlockDevice | FileType::CharacterDevice) {
        specdata3 { specdata1: rustix::fs::major(st.st_rdev), specdata2: rustix::fs::minor(st.st_rdev) }
    } else {
        specdata3::default()
    };
    let mut nlink = u32::try_from(st.st_nlink).unwrap_or(u32::MAX);
    if hidden_subdir {
        nlink = nlink.saturating_sub(1);
    }
    // Directory sizes depend on the local file system's layout, not on the tree: report a
    // constant so every replica shows the same attributes.
    let size = if ft == FileType::Directory { 4096 } else { u64::try_from(st.st_size).unwrap_or(0) };
    let mtime = time(st.st_mtime, st.st_mtime_nsec);
    let ctime = if stable_ctime { mtime } else { time(st.st_ctime, st.st_ctime_nsec) };
    fattr3 {
        type_,
        mode: st.st_mode & 0o7777,
        nlink,
        uid: st.st_uid,
        gid: st.st_gid,
        size,
        used: u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512),
        rdev,
        fsid,
        fileid,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime,
        ctime,
    }
}

impl ReplicaFs {
    /// Opens the directory `root`. Symlinks in `root` itself are followed (the administrator
    /// chose that path, e.g. `/install` -> `/data/install`); nothing beneath it ever is.
    pub fn open(root: &Path, fsid: u64, stable_ctime: bool, token: Option<Vec<u8>>) -> std::io::Result<ReplicaFs> {
        Self::open_with(root, fsid, stable_ctime, token, SWITCH_WAIT)
    }

    /// [`ReplicaFs::open`] with the longest wait of an operation for a commit ([`SWITCH_WAIT`]).
    pub fn open_with(
        root: &Path,
        fsid: u64,
        stable_ctime: bool,
        token: Option<Vec<u8>>,
        switch_wait: Duration,
    ) -> std::io::Result<ReplicaFs> {
        let root = std::fs::canonicalize(root)?;
        let root = rustix::fs::open(
            &root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let inner = Inner {
            root,
            fsid,
            stable_ctime,
            token,
            index: Index::default(),
            listings: Mutex::default(),
            gate: Gate::new(switch_wait),
        };
        inner.index.insert(&Fh::of(b""), b"");
        Ok(ReplicaFs(Arc::new(inner)))
    }

    /// Paths in the handle index.
    pub fn index_len(&self) -> usize {
        self.0.index.len()
    }

    /// Full walks of the tree done so far (on start and for unknown handles).
    pub fn walks(&self) -> u64 {
        self.0.index.walks()
    }

    /// fileid collisions seen (handles stay distinct; see [`crate::index`]).
    pub fn fileid_collisions(&self) -> u64 {
        self.0.index.collisions()
    }

    /// Walks the whole tree into the handle index (also done on demand for unknown handles).
    pub fn walk(&self) {
        self.0.index.rewalk(Duration::ZERO, |idx| self.0.walk_into(idx));
    }

    /// Runs `commit` (the tree engine switching the tree to a new generation) while no
    /// operation is in progress, so clients see the whole old or the whole new generation;
    /// operations arriving meanwhile wait (then JUKEBOX, see [`crate::gate`]). Cached listings
    /// are dropped before they are let in, and the next unknown handle walks the new tree at
    /// once. Blocks the calling thread (call it where blocking is allowed).
    pub fn switch<T>(&self, commit: impl FnOnce() -> T) -> T {
        self.0.gate.switch(commit, || {
            if let Ok(mut l) = self.0.listings.lock() {
                l.clear();
            }
            self.0.index.forget_walk();
        })
    }

    /// Commits switched so far, and operations answered JUKEBOX because one outlasted the wait.
    pub fn switch_stats(&self) -> (u64, u64) {
        (self.0.gate.switches(), self.0.gate.jukebox())
    }
}

impl Inner {
    fn open_beneath(&self, rel: &[u8], oflags: OFlags) -> Result<OwnedFd, Errno> {
        open_beneath(&self.root, rel, oflags)
    }

    /// The path of a handle: from the index, or after a (rate-limited) walk of the tree.
    fn path_of(&self, fh: &Fh) -> Result<Vec<u8>, nfsstat3> {
        if let Some(p) = self.index.get(fh) {
            return Ok(p);
        }
        self.index.rewalk(REWALK_GAP, |idx| self.walk_into(idx));
        self.index.get(fh).ok_or(nfsstat3::NFS3ERR_STALE)
    }

    fn walk_into(&self, idx: &Index) {
        let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(dir) = stack.pop() {
            let Ok(fd) = self.open_beneath(&dir, OFlags::RDONLY | OFlags::DIRECTORY) else {
                continue;
            };
            let Ok(names) = read_names(&fd) else {
                continue;
            };
            for (name, ty) in names {
                let rel = join(&dir, &name);
                idx.insert(&Fh::of(&rel), &rel);
                let is_dir = match ty {
                    FileType::Directory => true,
                    FileType::Unknown => rustix::fs::statat(&fd, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
                    _ => false,
                };
                if is_dir {
                    stack.push(rel);
                }
            }
        }
    }

    fn attr(&self, st: &Stat, fh: &Fh, hidden_subdir: bool) -> fattr3 {
        fattr(st, fh.fileid(), self.fsid, self.stable_ctime, hidden_subdir)
    }

    /// Attributes of an open (`O_PATH`) object.
    fn attr_fd(&self, fd: &OwnedFd, fh: &Fh) -> Result<fattr3, Errno> {
        let st = rustix::fs::fstat(fd)?;
        let hidden = FileType::from_raw_mode(st.st_mode) == FileType::Directory
            && rustix::fs::statat(fd, OsStr::from_bytes(PRIVATE_DIR), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
        Ok(self.attr(&st, fh, hidden))
    }

    fn getattr(&self, fh: &Fh) -> Result<fattr3, nfsstat3> {
        let rel = self.path_of(fh)?;
        let fd = self.open_beneath(&rel, OFlags::PATH).map_err(errno_stale)?;
        self.attr_fd(&fd, fh).map_err(errno_stale)
    }

    fn lookup(&self, dir: &Fh, name: &[u8]) -> Result<Fh, nfsstat3> {
        let dpath = self.path_of(dir)?;
        let dfd = self.open_beneath(&dpath, OFlags::PATH).map_err(errno_stale)?;
        let dst = rustix::fs::fstat(&dfd).map_err(errno_stale)?;
        if FileType::from_raw_mode(dst.st_mode) != FileType::Directory {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        let rel = match name {
            b"." => dpath,
            b".." => parent(&dpath).to_vec(),
            n if valid_name(n) => {
                let rel = join(&dpath, n);
                // Must exist as an entry of this directory (a symlink is found, not followed).
                rustix::fs::statat(&dfd, OsStr::from_bytes(n), AtFlags::SYMLINK_NOFOLLOW).map_err(errno_stat)?;
                rel
            }
            n if n == PRIVATE_DIR => return Err(nfsstat3::NFS3ERR_NOENT),
            _ => return Err(nfsstat3::NFS3ERR_ACCES),
        };
        let fh = Fh::of(&rel);
        self.index.insert(&fh, &rel);
        Ok(fh)
    }

    fn read(&self, fh: &Fh, offset: u64, count: u32) -> Result<(Vec<u8>, bool), nfsstat3> {
        let rel = self.path_of(fh)?;
        let pfd = self.open_beneath(&rel, OFlags::PATH).map_err(errno_stale)?;
        let st = rustix::fs::fstat(&pfd).map_err(errno_stale)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => return Err(nfsstat3::NFS3ERR_ISDIR),
            _ => return Err(nfsstat3::NFS3ERR_INVAL),
        }
        // Reopen exactly the inode checked above (no second path walk, so no race with a
        // rename that puts a device or FIFO at this path).
        let proc = format!("/proc/self/fd/{}", pfd.as_raw_fd());
        let fd = match rustix::fs::open(proc.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                self.open_beneath(&rel, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY).map_err(errno_stale)?
            }
            Err(e) => return Err(errno_stat(e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(errno_stat)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        read_at(&fd, u64::try_from(st.st_size).unwrap_or(0), offset, count)
    }

    fn readlink(&self, fh: &Fh) -> Result<Vec<u8>, nfsstat3> {
        let rel = self.path_of(fh)?;
        let fd = self.open_beneath(&rel, OFlags::PATH).map_err(errno_stale)?;
        let st = rustix::fs::fstat(&fd).map_err(errno_stale)?;
        symlink_target(&fd, &st)
    }

    /// The iterator holds `gate` until the reply is built: its later batches read the tree too.
    fn readdir(self: &Arc<Self>, dir: &Fh, cookie: u64, gate: ReadGuard) -> Result<DirIter, nfsstat3> {
        let dpath = self.path_of(dir)?;
        let fd = self.open_beneath(&dpath, OFlags::RDONLY | OFlags::DIRECTORY).map_err(errno_stale)?;
        let st = rustix::fs::fstat(&fd).map_err(errno_stale)?;
        let version =
            (st.st_dev, st.st_ino, st.st_mtime, st.st_mtime_nsec as i64, st.st_ctime, st.st_ctime_nsec as i64);
        let cached = self.listings.lock().ok().and_then(|c| c.get(dir).filter(|l| l.version == version).cloned());
        let listing = match cached {
            Some(l) => l,
            None => {
                let mut names: Vec<Vec<u8>> =
                    read_names(&fd).map_err(errno_stat)?.into_iter().map(|(n, _)| n).collect();
                // A deterministic order, the same on every replica, so a cookie (the fileid of
                // the last entry returned) means the same position on every replica.
                names.sort_unstable();
                let entries: Vec<(Vec<u8>, Fh)> = names
                    .into_iter()
                    .map(|n| {
                        let fh = Fh::of(&join(&dpath, &n));
                        (n, fh)
                    })
                    .collect();
                let pos = entries.iter().enumerate().map(|(i, (_, fh))| (fh.fileid(), i)).collect();
                let l = Listing { version, entries: Arc::new(entries), pos: Arc::new(pos) };
                if let Ok(mut c) = self.listings.lock() {
                    // Pages of one listing come one after another; a few dozen directories
                    // being listed at once is plenty.
                    if c.len() >= LISTINGS {
                        c.clear();
                    }
                    c.insert(*dir, l.clone());
                }
                l
            }
        };
        let next = match cookie {
            0 => 0,
            c => listing.pos.get(&c).ok_or(nfsstat3::NFS3ERR_BAD_COOKIE)? + 1,
        };
        let mut it = DirIter {
            _gate: gate,
            fs: Arc::clone(self),
            dir: dpath,
            fd: Arc::new(fd),
            entries: listing.entries,
            next,
            ready: VecDeque::new(),
        };
        it.fill();
        Ok(it)
    }
}

/// A directory's sorted entries, valid while the directory's (dev, ino, mtime, ctime) hold.
#[derive(Clone)]
struct Listing {
    version: (u64, u64, i64, i64, i64, i64),
    entries: Arc<Vec<(Vec<u8>, Fh)>>,
    pos: Arc<HashMap<u64, usize>>,
}

/// Entries of a directory except `.`, `..` and the private directory.
pub(crate) fn read_names(fd: &OwnedFd) -> Result<Vec<(Vec<u8>, FileType)>, Errno> {
    let mut out = Vec::new();
    let mut dir = rustix::fs::Dir::read_from(fd.as_fd())?;
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n == b"." || n == b".." || n == PRIVATE_DIR {
            continue;
        }
        out.push((n.to_vec(), ent.file_type()));
    }
    Ok(out)
}

/// READDIR(PLUS) results, stat'ed in batches.
pub struct DirIter {
    _gate: ReadGuard,
    fs: Arc<Inner>,
    dir: Vec<u8>,
    fd: Arc<OwnedFd>,
    entries: Arc<Vec<(Vec<u8>, Fh)>>,
    next: usize,
    ready: VecDeque<DirEntryPlus<Fh>>,
}

impl DirIter {
    fn fill(&mut self) {
        while self.ready.len() < PREFETCH {
            let Some((name, fh)) = self.entries.get(self.next) else {
                break;
            };
            let (name, fh) = (name.clone(), *fh);
            self.next += 1;
            // Gone since the listing: skip it.
            let Ok(st) = rustix::fs::statat(&*self.fd, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            let rel = join(&self.dir, &name);
            let hidden = FileType::from_raw_mode(st.st_mode) == FileType::Directory
                && self.fs.open_beneath(&join(&rel, PRIVATE_DIR), OFlags::PATH | OFlags::DIRECTORY).is_ok();
            self.fs.index.insert(&fh, &rel);
            let attr = self.fs.attr(&st, &fh, hidden);
            self.ready.push_back(DirEntryPlus {
                fileid: fh.fileid(),
                name: filename3(Opaque::owned(name)),
                cookie: fh.fileid(),
                name_attributes: Some(attr),
                name_handle: Some(fh),
            });
        }
    }
}

impl ReadDirPlusIterator<Fh> for DirIter {
    async fn next(&mut self) -> NextResult<DirEntryPlus<Fh>> {
        if self.ready.is_empty() {
            // Later batches are small metadata reads; done inline rather than per-entry tasks.
            self.fill();
        }
        match self.ready.pop_front() {
            Some(e) => NextResult::Ok(e),
            None => NextResult::Eof,
        }
    }
}

impl NfsReadFileSystem for ReplicaFs {
    type Handle = Fh;

    fn root_dir(&self) -> Fh {
        Fh::of(b"")
    }

    fn authorize(&self, auth: Option<&auth_unix>) -> bool {
        stamped(self.0.token.as_deref(), auth)
    }

    async fn lookup(&self, dirid: &Fh, filename: &filename3<'_>) -> Result<Fh, nfsstat3> {
        let (fs, dir, name) = (Arc::clone(&self.0), *dirid, filename.0.to_vec());
        blocking(move || {
            let _g = fs.enter()?;
            fs.lookup(&dir, &name)
        })
        .await
    }

    async fn getattr(&self, id: &Fh) -> Result<fattr3, nfsstat3> {
        let (fs, id) = (Arc::clone(&self.0), *id);
        blocking(move || {
            let _g = fs.enter()?;
            fs.getattr(&id)
        })
        .await
    }

    async fn read(&self, id: &Fh, offset: u64, count: u32) -> Result<(Vec<u8>, bool), nfsstat3> {
        let (fs, id) = (Arc::clone(&self.0), *id);
        blocking(move || {
            let _g = fs.enter()?;
            fs.read(&id, offset, count)
        })
        .await
    }

    async fn readdirplus(&self, dirid: &Fh, cookie: u64) -> Result<impl ReadDirPlusIterator<Fh>, nfsstat3> {
        let (fs, dir) = (Arc::clone(&self.0), *dirid);
        blocking(move || {
            let g = fs.enter()?;
            fs.readdir(&dir, cookie, g)
        })
        .await
    }

    async fn readlink(&self, id: &Fh) -> Result<nfspath3<'_>, nfsstat3> {
        let (fs, id) = (Arc::clone(&self.0), *id);
        let t = blocking(move || {
            let _g = fs.enter()?;
            fs.readlink(&id)
        })
        .await?;
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
            properties: FSF3_SYMLINK | FSF3_HOMOGENEOUS,
        })
    }
}

/// Read-only for real: every change is refused with `NFS3ERR_ROFS`, and modes are reported as
/// they are in the tree (the crate's own read-only adapter would clear every write bit, so
/// `ls -l` over NFS would not match the image).
impl NfsFileSystem for ReplicaFs {
    fn capabilities(&self) -> VFSCapabilities {
        VFSCapabilities::ReadOnly
    }

    async fn setattr(&self, _id: &Fh, _setattr: sattr3) -> Result<fattr3, nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn write(
        &self,
        _id: &Fh,
        _offset: u64,
        _data: &[u8],
        _stable: stable_how,
    ) -> Result<(fattr3, stable_how), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn create(&self, _dirid: &Fh, _filename: &filename3<'_>, _attr: sattr3) -> Result<(Fh, fattr3), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn create_exclusive(
        &self,
        _dirid: &Fh,
        _filename: &filename3<'_>,
        _createverf: createverf3,
    ) -> Result<Fh, nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn mkdir(&self, _dirid: &Fh, _dirname: &filename3<'_>) -> Result<(Fh, fattr3), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn remove(&self, _dirid: &Fh, _filename: &filename3<'_>) -> Result<(), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn rename<'a>(
        &self,
        _from_dirid: &Fh,
        _from_filename: &filename3<'a>,
        _to_dirid: &Fh,
        _to_filename: &filename3<'a>,
    ) -> Result<(), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn symlink<'a>(
        &self,
        _dirid: &Fh,
        _linkname: &filename3<'a>,
        _symlink: &nfspath3<'a>,
        _attr: &sattr3,
    ) -> Result<(Fh, fattr3), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn commit(&self, _id: &Fh, _offset: u64, _count: u32) -> Result<(), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }
}
