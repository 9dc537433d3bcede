//! File-system operations confined beneath a root: every path is opened relative to the root's
//! directory fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, and
//! the last component is acted on with `*at` calls that do not follow it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use crate::manifest::{show, split, Entry, Kind};
use crate::scan::xattr_wanted;
use crate::{Error, Result};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

fn err(what: &str, p: &[u8], e: Errno) -> Error {
    if e == Errno::LOOP || e == Errno::XDEV {
        Error::Hostile(format!("{what} {:?}: the path goes through a symlink or leaves the root", show(p)))
    } else {
        Error::Io { path: format!("{what} {}", show(p)), source: e.into() }
    }
}

/// True when opening a parent failed because the path cannot exist: a component is missing
/// or is not a directory (a replayed commit may already have replaced a directory by a file).
fn absent(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if matches!(Errno::from_io_error(source), Some(Errno::NOENT | Errno::NOTDIR)))
}

/// A directory opened as a confinement root.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// What is at a path, as `lstat` saw it.
pub type StatInfo = Stat;

/// File type of a stat.
pub fn ftype(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Link count of a stat (`st_nlink` is narrower than u64 on some targets).
#[allow(clippy::unnecessary_cast)]
pub fn nlink(st: &Stat) -> u64 {
    st.st_nlink as u64
}

impl Root {
    /// Opens `path` (which must be a directory) as a root.
    pub fn open(path: &Path) -> Result<Root> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::Io { path: path.display().to_string(), source: e.into() })?;
        Ok(Root { fd, path: path.to_path_buf() })
    }

    /// The root's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's directory fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens directory `rel` beneath the root.
    pub fn dir(&self, rel: &[u8]) -> Result<OwnedFd> {
        let p: &[u8] = if rel.is_empty() { b"." } else { rel };
        rustix::fs::openat2(
            &self.fd,
            OsStr::from_bytes(p),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| err("opening directory", rel, e))
    }

    /// Opens the parent of `rel` and returns it with the last component.
    pub fn parent<'a>(&self, rel: &'a [u8]) -> Result<(OwnedFd, &'a [u8])> {
        let (parent, name) = split(rel).ok_or_else(|| Error::Hostile("operation on the root itself".into()))?;
        Ok((self.dir(parent)?, name))
    }

    /// `lstat` of `rel` (None if absent).
    pub fn lstat(&self, rel: &[u8]) -> Result<Option<Stat>> {
        if rel.is_empty() {
            return rustix::fs::fstat(&self.fd).map(Some).map_err(|e| err("stat", rel, e));
        }
        let (d, name) = match self.parent(rel) {
            Ok(x) => x,
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        lstat_at(d.as_fd(), name).map_err(|e| err("stat", rel, e))
    }

    /// Opens regular file `rel` read-only, refusing symlinks anywhere on the path.
    pub fn open_file(&self, rel: &[u8]) -> Result<File> {
        let fd = rustix::fs::openat2(
            &self.fd,
            OsStr::from_bytes(rel),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| err("opening", rel, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| err("stat", rel, e))?;
        if ftype(&st) != FileType::RegularFile {
            return Err(Error::Hostile(format!("{:?} is not a regular file", show(rel))));
        }
        Ok(File::from(fd))
    }

    /// Removes `rel` and, if it is a directory, everything in it; absent is fine.
    pub fn remove_all(&self, rel: &[u8]) -> Result<()> {
        let (d, name) = match self.parent(rel) {
            Ok(x) => x,
            // A parent that is missing, not a directory, or a symlink holds nothing of ours.
            Err(e) if absent(&e) || matches!(e, Error::Hostile(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        remove_at(d.as_fd(), name).map_err(|e| err("removing", rel, e))
    }

    /// Makes directory `rel` exist: an existing non-directory there is removed first.
    pub fn ensure_dir(&self, rel: &[u8]) -> Result<()> {
        if rel.is_empty() {
            return Ok(());
        }
        let (d, name) = self.parent(rel)?;
        match lstat_at(d.as_fd(), name).map_err(|e| err("stat", rel, e))? {
            Some(st) if ftype(&st) == FileType::Directory => return Ok(()),
            Some(_) => rustix::fs::unlinkat(&d, OsStr::from_bytes(name), AtFlags::empty())
                .map_err(|e| err("unlinking", rel, e))?,
            None => {}
        }
        rustix::fs::mkdirat(&d, OsStr::from_bytes(name), Mode::from_raw_mode(0o700)).map_err(|e| err("mkdir", rel, e))
    }

    /// Sets an entry's owner, xattrs, mode and (for non-directories when `mtime`) mtime, in the
    /// order that keeps setuid bits and file capabilities (chown clears both). Everything is
    /// done through one `O_PATH|O_NOFOLLOW` fd, so a name swapped meanwhile cannot redirect it;
    /// with `links` the inode must have that link count and the entry's type, else nothing is
    /// changed and false returned (an inode shared with a name the manifest does not know may
    /// be a file outside the root).
    pub fn set_meta(&self, rel: &[u8], e: &Entry, mtime: bool, links: Option<u64>) -> Result<bool> {
        let (d, name) = if rel.is_empty() { (self.dir(b"")?, &b"."[..]) } else { self.parent(rel)? };
        let n = OsStr::from_bytes(name);
        let pinned = rustix::fs::openat(&d, n, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e2| err("stat", rel, e2))?;
        let st = rustix::fs::fstat(&pinned).map_err(|e2| err("stat", rel, e2))?;
        let is_link = matches!(e.kind, Kind::Symlink { .. });
        if (ftype(&st) == FileType::Symlink) != is_link {
            return Err(Error::Hostile(format!("{:?} is a symlink on the replica, or should be one", show(rel))));
        }
        if let Some(want) = links {
            if nlink(&st) != want || !kind_matches(&e.kind, ftype(&st)) {
                return Ok(false);
            }
        }
        rustix::fs::chownat(
            &pinned,
            "",
            Some(rustix::fs::Uid::from_raw(e.uid)),
            Some(rustix::fs::Gid::from_raw(e.gid)),
            AtFlags::EMPTY_PATH,
        )
        .map_err(|e2| err("chown", rel, e2))?;
        // /proc/self/fd/N of the pinned fd names exactly that inode (a magic link, which the
        // following calls resolve to it); a symlink itself is only reachable by its name.
        let magic = OsString::from(format!("/proc/self/fd/{}", pinned.as_raw_fd()));
        let chmod = |mode: u32| -> Result<()> {
            rustix::fs::chmod(&magic, Mode::from_raw_mode(mode)).map_err(|e2| err("chmod", rel, e2))
        };
        let xa = || {
            if is_link {
                set_xattrs_at(&proc_path(d.as_fd(), name), false, &e.xattrs)
            } else {
                set_xattrs_at(&magic, true, &e.xattrs)
            }
        };
        match xa() {
            Ok(()) => {}
            // Without root, user.* xattrs need write permission: lend it for the moment.
            Err(Errno::ACCESS) if !is_link => {
                chmod(e.mode | 0o200)?;
                xa().map_err(|e2| err("setting xattrs on", rel, e2))?;
            }
            Err(e2) => return Err(err("setting xattrs on", rel, e2)),
        }
        if !is_link {
            chmod(e.mode)?;
        }
        if mtime {
            let r = if is_link {
                set_mtime(d.as_fd(), name, e.mtime_sec, e.mtime_nsec)
            } else {
                rustix::fs::utimensat(rustix::fs::CWD, &magic, &mtime_ts(e.mtime_sec, e.mtime_nsec), AtFlags::empty())
            };
            r.map_err(|e2| err("setting mtime of", rel, e2))?;
        }
        Ok(true)
    }

    /// Sets the mtime of `rel` only (directories, last).
    pub fn set_mtime(&self, rel: &[u8], sec: i64, nsec: u32) -> Result<()> {
        let (d, name) = if rel.is_empty() { (self.dir(b"")?, &b"."[..]) } else { self.parent(rel)? };
        set_mtime(d.as_fd(), name, sec, nsec).map_err(|e| err("setting mtime of", rel, e))
    }
}

/// `lstat` relative to a directory fd (None if absent).
pub fn lstat_at(d: BorrowedFd<'_>, name: &[u8]) -> std::result::Result<Option<Stat>, Errno> {
    match rustix::fs::statat(d, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Recursively removes `name` in `d` without following symlinks; absent is fine.
pub fn remove_at(d: BorrowedFd<'_>, name: &[u8]) -> std::result::Result<(), Errno> {
    let n = OsStr::from_bytes(name);
    let Some(st) = lstat_at(d, name)? else { return Ok(()) };
    if ftype(&st) != FileType::Directory {
        return match rustix::fs::unlinkat(d, n, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e),
        };
    }
    let sub = rustix::fs::openat(
        d,
        n,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    {
        let mut dir = rustix::fs::Dir::read_from(&sub)?;
        for ent in dir.by_ref() {
            let ent = ent?;
            let b = ent.file_name().to_bytes();
            if b != b"." && b != b".." {
                names.push(b.to_vec());
            }
        }
    }
    for c in names {
        remove_at(sub.as_fd(), &c)?;
    }
    match rustix::fs::unlinkat(d, n, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

fn proc_path(d: BorrowedFd<'_>, name: &[u8]) -> OsString {
    // The dir fd was opened safely; /proc/self/fd/N resolves to it and the final name is not
    // followed by the l*xattr calls, so this is as confined as the fd itself.
    let mut v = format!("/proc/self/fd/{}/", d.as_raw_fd()).into_bytes();
    v.extend_from_slice(name);
    OsString::from_vec(v)
}

/// Makes the replicated xattrs of `name` exactly `want` (others in those namespaces removed).
pub fn set_xattrs(d: BorrowedFd<'_>, name: &[u8], want: &[(Vec<u8>, Vec<u8>)]) -> std::result::Result<(), Errno> {
    set_xattrs_at(&proc_path(d, name), false, want)
}

/// [`set_xattrs`] on a path; `follow` resolves a final (magic) link, else it is acted on itself.
fn set_xattrs_at(p: &OsStr, follow: bool, want: &[(Vec<u8>, Vec<u8>)]) -> std::result::Result<(), Errno> {
    use rustix::fs as f;
    let list = |b: &mut [u8]| if follow { f::listxattr(p, b) } else { f::llistxattr(p, b) };
    let get = |k: &OsStr, b: &mut [u8]| if follow { f::getxattr(p, k, b) } else { f::lgetxattr(p, k, b) };
    let remove = |k: &OsStr| if follow { f::removexattr(p, k) } else { f::lremovexattr(p, k) };
    let set = |k: &OsStr, v: &[u8]| {
        if follow {
            f::setxattr(p, k, v, f::XattrFlags::empty())
        } else {
            f::lsetxattr(p, k, v, f::XattrFlags::empty())
        }
    };
    let mut buf = vec![0u8; 65536];
    let have: Vec<Vec<u8>> = match list(&mut buf[..]) {
        Ok(k) => buf[..k].split(|&b| b == 0).filter(|s| !s.is_empty()).map(<[u8]>::to_vec).collect(),
        Err(Errno::NOTSUP) if want.is_empty() => return Ok(()),
        Err(e) => return Err(e),
    };
    for h in have.iter().filter(|h| xattr_wanted(h)) {
        if !want.iter().any(|(k, _)| k == h) {
            match remove(OsStr::from_bytes(h)) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let mut cur = vec![0u8; 65536];
    // ACLs last: an access ACL rewrites the permission bits, and without root the other
    // namespaces still need the write permission it may take away.
    let acl_last = want
        .iter()
        .filter(|(k, _)| !k.starts_with(b"system."))
        .chain(want.iter().filter(|(k, _)| k.starts_with(b"system.")));
    for (k, v) in acl_last {
        let kn = OsStr::from_bytes(k);
        if have.contains(k) {
            if let Ok(n) = get(kn, &mut cur[..]) {
                if &cur[..n] == v.as_slice() {
                    continue;
                }
            }
        }
        set(kn, v)?;
    }
    Ok(())
}

/// True when an inode of type `ft` can hold an entry of `kind`.
fn kind_matches(kind: &Kind, ft: FileType) -> bool {
    match kind {
        Kind::Dir => ft == FileType::Directory,
        Kind::File { .. } | Kind::HardLink { .. } => ft == FileType::RegularFile,
        Kind::Symlink { .. } => ft == FileType::Symlink,
        Kind::Char { .. } => ft == FileType::CharacterDevice,
        Kind::Block { .. } => ft == FileType::BlockDevice,
        Kind::Fifo => ft == FileType::Fifo,
    }
}

fn mtime_ts(sec: i64, nsec: u32) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: sec, tv_nsec: nsec.into() },
    }
}

/// Sets mtime (atime left alone) without following a final symlink.
pub fn set_mtime(d: BorrowedFd<'_>, name: &[u8], sec: i64, nsec: u32) -> std::result::Result<(), Errno> {
    rustix::fs::utimensat(d, OsStr::from_bytes(name), &mtime_ts(sec, nsec), AtFlags::SYMLINK_NOFOLLOW)
}

/// The one way hanfs replaces a whole file outside a replica (MN state, agent state and exports,
/// CLI outputs): `fill` writes the temporary file `<path>.tmp`, which is then fsynced, renamed over
/// `path`, and the directory fsynced. After a crash at any instant `path` holds the old content or
/// the new, never a mix; when `fill` or any step fails the temporary is removed and `path` is
/// untouched.
pub fn replace_file<E: From<std::io::Error>>(
    path: &Path,
    fill: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let done = fill(&tmp).and_then(|()| {
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes `bytes` to `path` through [`replace_file`] (mode 0644; a symlink planted at the
/// temporary name is not followed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] of what `fill` writes, through a 1 MiB buffer: a large state file is streamed
/// to disk rather than encoded whole in memory first.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    replace_file(path, |tmp| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        fill(&mut w)?;
        w.flush()
    })
}

/// A writer for staged files: hashes what it is given, keeps holes as holes when the target is
/// sparse (all-zero 64 KiB pieces are skipped, the size set at the end), and buffers in 1 MiB.
pub struct StageWriter {
    file: File,
    hasher: blake3::Hasher,
    sparse: bool,
    pos: u64,
    buf: Vec<u8>,
    limit: u64,
}

const PIECE: usize = 64 << 10;

impl StageWriter {
    /// Wraps a freshly created file; writing past `limit` bytes fails.
    pub fn new(file: File, sparse: bool, limit: u64) -> StageWriter {
        // Sized to the file (one 64 KiB piece at least, 1 MiB at most): most staged files are a
        // few KiB, and an image update stages thousands of them.
        let cap = usize::try_from(limit).unwrap_or(usize::MAX).clamp(PIECE, 1 << 20);
        StageWriter { file, hasher: blake3::Hasher::new(), sparse, pos: 0, buf: Vec::with_capacity(cap), limit }
    }

    fn flush_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.sparse {
            let mut off = self.pos;
            for piece in self.buf.chunks(PIECE) {
                if piece.iter().any(|&b| b != 0) {
                    self.file.write_all_at(piece, off)?;
                }
                off += piece.len() as u64;
            }
        } else {
            self.file.write_all_at(&self.buf, self.pos)?;
        }
        self.pos += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Flushes and sets the length; returns (bytes, BLAKE3) and the file. Not fsynced here:
    /// the commit makes the whole stage durable with one `syncfs` before its commit record
    /// (one fsync per file would dominate a sync of many small files).
    pub fn finish(mut self) -> std::io::Result<(u64, [u8; 32], File)> {
        self.flush_buf()?;
        self.file.set_len(self.pos)?;
        Ok((self.pos, *self.hasher.finalize().as_bytes(), self.file))
    }
}

impl Write for StageWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let total = self.pos + self.buf.len() as u64 + data.len() as u64;
        if total > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("content grows past its manifest size {}", self.limit),
            ));
        }
        self.hasher.update(data);
        if self.buf.len() + data.len() > self.buf.capacity() {
            self.flush_buf()?;
        }
        if data.len() >= self.buf.capacity() {
            // Large COPYs from a mapped base go straight through.
            self.buf.extend_from_slice(data);
            self.flush_buf()?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
