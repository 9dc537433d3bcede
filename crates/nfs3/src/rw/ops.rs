//! The change procedures of a read-write area as a caller makes them (issue 13).
//!
//! `nfs3_server` never shows the file system who calls, answers LINK and MKNOD with
//! `PROC_UNAVAIL` and drops MKDIR's attributes. So on a read-write area the RPC guard serves
//! every change itself ([`crate::rwcall`]) through these functions, with the caller's AUTH_UNIX
//! ids, as kernel nfsd does with `sec=sys,no_root_squash`:
//!
//! - access is decided by the mode bits of the one class the caller falls in (owner, group,
//!   others), root passing every check; changing a directory needs write and search on it,
//!   removing or renaming in a sticky directory owning the entry or the directory;
//! - SETATTR (RFC 1813 §3.3.2): mode and times set by the client only by the owner, the owner
//!   only to a group it is in, size and times-to-now also by whoever may write; set-group-id
//!   dropped when the caller is not in the file's group, set-id bits dropped when another user
//!   writes the file (as the kernel's `file_remove_privs`);
//! - objects a caller makes are owned by it (the group of a set-group-id directory, which a new
//!   directory inherits), with the mode the client sent (MKDIR, RFC 1813 §3.3.9, included);
//! - LINK (§3.3.15) of any non-directory; MKNOD (§3.3.11) of FIFOs and sockets.
//!
//! Every check is made under the area's change lock, on the inode that is then changed, and
//! every change is one or more entries of the change log ([`crate::oplog`]), so a replica makes
//! it with the same ids.
//!
//! **Character and block devices are refused** (`NFS3ERR_ACCES`), to root too. A diskless
//! node's statelite tree holds configuration, logs and daemon state (xCAT's `litefile`
//! entries); its `/dev` is the kernel's devtmpfs, never an NFS directory. A device node in the
//! area would be a device of the SN (a `b 8 0` with mode 0666 is the SN's first disk) for
//! whoever on the SN can reach the area, copied to the backup as well.
//!
//! **Hard links**: a regular file counts the links this server made in [`LINKS_XATTR`]
//! (absent: 1). It is written or truncated only while its link count is that number: a link
//! made through LINK keeps the file writable on both sides, a link planted behind the server's
//! back (to a file outside the area, say) makes it unwritable, as before.

use super::*;
use crate::oplog::NodeKind;

/// The number of links of a regular file made through this server, 8 bytes little endian.
pub const LINKS_XATTR: &str = "user.hanfs.links";
pub const TRUSTED_LINKS_XATTR: &str = "trusted.hanfs.links";

const MAY_READ: u32 = 4;
const MAY_WRITE: u32 = 2;
const MAY_EXEC: u32 = 1;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// Who makes a change: the AUTH_UNIX ids of the call (RFC 5531 §14, RFC 1813 §1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl Caller {
    pub fn root() -> Caller {
        Caller { uid: 0, gid: 0, gids: Vec::new() }
    }

    fn is_root(&self) -> bool {
        self.uid == 0
    }

    fn in_group(&self, g: u32) -> bool {
        self.is_root() || self.gid == g || self.gids.contains(&g)
    }
}

/// CREATE's three modes (RFC 1813 §3.3.8).
#[derive(Debug, Clone)]
pub enum How {
    Unchecked(Attrs),
    Guarded(Attrs),
    Exclusive([u8; 8]),
}

/// What MKNOD was asked to make (RFC 1813 §3.3.11).
#[derive(Debug, Clone)]
pub enum Node {
    Fifo(Attrs),
    Socket(Attrs),
    /// NF3CHR or NF3BLK: refused.
    Device,
    /// NF3REG, NF3DIR, NF3LNK: `NFS3ERR_BADTYPE`.
    Other,
}

/// Whether `c` gets all of `want` (rwx bits) on an object: the bits of the one class it falls in
/// (owner, else group, else others, never their union); root reads and writes everything,
/// searches every directory and executes what anyone may execute.
pub(crate) fn permits(c: &Caller, st: &Stat, want: u32) -> bool {
    let mode = st.st_mode;
    if c.is_root() {
        let dir = FileType::from_raw_mode(mode) == FileType::Directory;
        return want & MAY_EXEC == 0 || dir || mode & 0o111 != 0;
    }
    let bits = crate::guard::class_bits(mode, c.uid == st.st_uid, c.in_group(st.st_gid));
    bits & want == want
}

/// May `c` add or remove entries of the directory `dst`.
fn may_change_dir(c: &Caller, dst: &Stat) -> Result<(), nfsstat3> {
    if permits(c, dst, MAY_WRITE | MAY_EXEC) {
        Ok(())
    } else {
        Err(nfsstat3::NFS3ERR_ACCES)
    }
}

/// The sticky-directory rule: in a directory with `S_ISVTX` only the entry's owner, the
/// directory's owner or root may remove or replace it.
fn sticky_ok(c: &Caller, dst: &Stat, st: &Stat) -> Result<(), nfsstat3> {
    if dst.st_mode & S_ISVTX == 0 || c.is_root() || st.st_uid == c.uid || dst.st_uid == c.uid {
        Ok(())
    } else {
        Err(nfsstat3::NFS3ERR_ACCES)
    }
}

/// The owner of an object `c` makes in directory `dst`: the caller, with the directory's group
/// when it is set-group-id.
fn owner_in(c: &Caller, dst: &Stat) -> (u32, u32) {
    let gid = if dst.st_mode & S_ISGID != 0 { dst.st_gid } else { c.gid };
    (c.uid, gid)
}

/// A new object's mode: what the client asked, set-group-id dropped where the caller is not in
/// the group the object gets (the kernel's `inode_init_owner`/`mode_strip_sgid`).
fn new_mode(c: &Caller, mode: u32, gid: u32) -> u32 {
    let m = mode & 0o7777;
    if c.in_group(gid) {
        m
    } else {
        m & !S_ISGID
    }
}

impl AreaInner {
    /// The links xattr of this file system's namespace.
    fn links_xattr(&self) -> &'static str {
        if self.id_xattr == TRUSTED_ID_XATTR {
            TRUSTED_LINKS_XATTR
        } else {
            LINKS_XATTR
        }
    }

    /// The links this server made to the regular file `fd` (an `O_PATH` descriptor).
    fn own_links_of(&self, fd: &OwnedFd) -> Result<u64, nfsstat3> {
        let mut b = [0u8; 8];
        match rustix::fs::getxattr(proc_path(fd).as_str(), self.links_xattr(), &mut b[..]) {
            Ok(8) => Ok(u64::from_le_bytes(b).max(1)),
            Ok(_) | Err(Errno::NODATA) | Err(Errno::RANGE) => Ok(1),
            Err(e) => Err(errno_rw(e)),
        }
    }

    fn set_own_links(&self, fd: &OwnedFd, n: u64) -> Result<(), nfsstat3> {
        if n <= 1 {
            return match rustix::fs::removexattr(proc_path(fd).as_str(), self.links_xattr()) {
                Ok(()) | Err(Errno::NODATA) => Ok(()),
                Err(e) => Err(errno_rw(e)),
            };
        }
        write_xattr(fd, self.links_xattr(), &n.to_le_bytes(), XattrFlags::empty()).map_err(errno_rw)
    }

    /// Whether every link of the regular file `fd` (stat `st`) is one this server knows of: one
    /// link, or as many as it made. Else a link was planted and the file is not written.
    pub(super) fn links_are_own(&self, fd: &OwnedFd, st: &Stat) -> bool {
        st.st_nlink <= 1 || self.own_links_of(fd).is_ok_and(|n| n == st.st_nlink)
    }

    /// Before the entry `n` of `dfd` is unlinked or replaced: a regular file losing one of the
    /// links this server made counts one fewer (a planted link's removal changes nothing).
    pub(super) fn unlinking(&self, dfd: &OwnedFd, n: &OsStr, st: &Stat) -> Result<(), nfsstat3> {
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_nlink <= 1 {
            return Ok(());
        }
        let fd = rustix::fs::openat(dfd, n, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno_rw)?;
        let own = self.own_links_of(&fd)?;
        if own > 1 {
            self.set_own_links(&fd, own - 1)?;
        }
        Ok(())
    }

    /// [`Op::Create`]/[`Op::CreateOwned`]: a new regular file, its id (and owner) set before it
    /// is linked into its directory.
    pub(super) fn create_local(
        &self,
        dir: &Fh,
        name: &[u8],
        id: &Fh,
        mode: u32,
        verf: Option<&[u8; 8]>,
        owner: Option<(u32, u32)>,
    ) -> Result<Option<Fh>, nfsstat3> {
        let n = name_ok(name)?;
        let dfd = self.open_dir(dir)?;
        let m = Mode::from_raw_mode(mode & 0o7777);
        // A path-id copy (kernel nfsd area) may be sent a create again after a reconnect: the
        // file it holds is kept.
        if self.path_ids {
            if let Ok(st) = rustix::fs::statat(&dfd, n, AtFlags::SYMLINK_NOFOLLOW) {
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                    let id = symlink_id(dir, name);
                    self.record(id, *dir, name);
                    return Ok(Some(id));
                }
            }
        }
        let own = |f: &OwnedFd| -> Result<(), nfsstat3> {
            if let Some((uid, gid)) = owner {
                let (u, g) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
                rustix::fs::fchown(f, Some(u), Some(g)).map_err(errno_rw)?;
            }
            // After chown, which clears set-id bits; O_TMPFILE applies the umask.
            rustix::fs::fchmod(f, m).map_err(errno_rw)
        };
        match rustix::fs::openat(&dfd, ".", OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC, m) {
            Ok(tmp) => {
                own(&tmp)?;
                self.label(&tmp, id, verf)?;
                rustix::fs::linkat(rustix::fs::CWD, proc_path(&tmp).as_str(), &dfd, n, AtFlags::SYMLINK_FOLLOW)
                    .map_err(errno_rw)?;
            }
            // No O_TMPFILE here: create in place; a crash before the id is set leaves a file
            // without one (it gets one when seen; no client was answered for it).
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                let f = rustix::fs::openat(
                    &dfd,
                    n,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    m,
                )
                .map_err(errno_rw)?;
                own(&f)?;
                self.label(&f, id, verf)?;
            }
            Err(e) => return Err(errno_rw(e)),
        }
        rustix::fs::fsync(&dfd_rw(&dfd)?).map_err(errno_rw)?;
        let id = if self.path_ids { symlink_id(dir, name) } else { *id };
        self.record(id, *dir, name);
        Ok(Some(id))
    }

    /// [`Op::Mkdir`]/[`Op::MkdirOwned`].
    pub(super) fn mkdir_local(
        &self,
        dir: &Fh,
        name: &[u8],
        id: &Fh,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<Option<Fh>, nfsstat3> {
        let n = name_ok(name)?;
        let dfd = self.open_dir(dir)?;
        let m = Mode::from_raw_mode(mode & 0o7777);
        match rustix::fs::mkdirat(&dfd, n, m) {
            Ok(()) => {}
            // A path-id copy keeps what it holds (replays after a reconnect).
            Err(Errno::EXIST) if self.path_ids => {}
            Err(e) => return Err(errno_rw(e)),
        }
        let made = rustix::fs::openat(
            &dfd,
            n,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_rw)?;
        if let Some((uid, gid)) = owner {
            let (u, g) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
            rustix::fs::fchown(&made, Some(u), Some(g)).map_err(errno_rw)?;
        }
        // mkdir applies the umask (and an S_ISGID parent's bit): the mode asked for, exactly.
        rustix::fs::fchmod(&made, m).map_err(errno_rw)?;
        // A crash before this leaves a directory without id: it gets one when seen, and no
        // client was told of this one.
        let id = if self.path_ids {
            symlink_id(dir, name)
        } else {
            rustix::fs::fsetxattr(&made, self.id_xattr, &id.0, XattrFlags::empty()).map_err(errno_rw)?;
            *id
        };
        rustix::fs::fsync(&made).map_err(errno_rw)?;
        rustix::fs::fsync(&dfd_rw(&dfd)?).map_err(errno_rw)?;
        self.record(id, *dir, name);
        Ok(Some(id))
    }

    /// [`Op::Mknod`]: a FIFO or socket (mknod(2) of `S_IFSOCK` makes a socket inode no
    /// process listens on, as nfsd does).
    pub(super) fn mknod_local(
        &self,
        dir: &Fh,
        name: &[u8],
        kind: NodeKind,
        mode: u32,
        owner: (u32, u32),
    ) -> Result<Option<Fh>, nfsstat3> {
        let n = name_ok(name)?;
        let dfd = self.open_dir(dir)?;
        let ft = match kind {
            NodeKind::Fifo => FileType::Fifo,
            NodeKind::Socket => FileType::Socket,
        };
        let m = Mode::from_raw_mode(mode & 0o7777);
        rustix::fs::mknodat(&dfd, n, ft, m, 0).map_err(errno_rw)?;
        let fd = rustix::fs::openat(&dfd, n, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno_rw)?;
        let st = rustix::fs::fstat(&fd).map_err(errno_rw)?;
        if FileType::from_raw_mode(st.st_mode) != ft {
            return Err(nfsstat3::NFS3ERR_SERVERFAULT);
        }
        let (u, g) = (rustix::fs::Uid::from_raw(owner.0), rustix::fs::Gid::from_raw(owner.1));
        rustix::fs::chownat(&fd, "", Some(u), Some(g), AtFlags::EMPTY_PATH).map_err(errno_rw)?;
        rustix::fs::chmod(proc_path(&fd).as_str(), m).map_err(errno_rw)?;
        rustix::fs::fsync(&dfd_rw(&dfd)?).map_err(errno_rw)?;
        let id = symlink_id(dir, name);
        self.record(id, *dir, name);
        Ok(Some(id))
    }

    /// [`Op::Link`]: the file's own-links count first (a crash between the two leaves it
    /// counting one link too many: unwritable, never trusted beyond what was made), then the
    /// name, both durable before the reply.
    pub(super) fn link_local(&self, id: &Fh, dir: &Fh, name: &[u8]) -> Result<Option<Fh>, nfsstat3> {
        let n = name_ok(name)?;
        let dfd = self.open_dir(dir)?;
        let pfd = self.open_id(id, OFlags::PATH)?;
        let st = rustix::fs::fstat(&pfd).map_err(errno_stat)?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft == FileType::Directory {
            // link(2) of a directory is EPERM, which nfsd answers as NFS3ERR_PERM.
            return Err(nfsstat3::NFS3ERR_PERM);
        }
        if rustix::fs::statat(&dfd, n, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            return Err(nfsstat3::NFS3ERR_EXIST);
        }
        let regular = ft == FileType::RegularFile;
        let own = if regular {
            let own = self.own_links_of(&pfd)?;
            if own != st.st_nlink {
                // A link planted behind the server's back: never extend it.
                return Err(nfsstat3::NFS3ERR_ACCES);
            }
            self.set_own_links(&pfd, own + 1)?;
            own
        } else {
            0
        };
        if let Err(e) = rustix::fs::linkat(rustix::fs::CWD, proc_path(&pfd).as_str(), &dfd, n, AtFlags::SYMLINK_FOLLOW)
        {
            if regular {
                let _ = self.set_own_links(&pfd, own);
            }
            return Err(errno_rw(e));
        }
        if regular {
            let f = rustix::fs::open(proc_path(&pfd).as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map_err(errno_rw)?;
            rustix::fs::fsync(&f).map_err(errno_rw)?;
        }
        rustix::fs::fsync(&dfd_rw(&dfd)?).map_err(errno_rw)?;
        if has_xattrs(ft) {
            if let Ok(mut ids) = self.ids.write() {
                ids.link(*id, *dir, name);
            }
            Ok(Some(*id))
        } else {
            let sid = symlink_id(dir, name);
            self.record(sid, *dir, name);
            Ok(Some(sid))
        }
    }

    /// The SETATTR rules for a caller other than root; returns the attributes to set (the
    /// set-group-id bit dropped where the kernel drops it).
    fn setattr_rules(&self, c: &Caller, st: &Stat, a: &Attrs, client_times: bool) -> Result<Attrs, nfsstat3> {
        let mut a = *a;
        if c.is_root() {
            return Ok(a);
        }
        let owner = st.st_uid == c.uid;
        let may_write = owner || permits(c, st, MAY_WRITE);
        if a.uid.is_some_and(|u| u != st.st_uid) {
            return Err(nfsstat3::NFS3ERR_PERM);
        }
        if a.gid.is_some_and(|g| g != st.st_gid && !(owner && c.in_group(g))) {
            return Err(nfsstat3::NFS3ERR_PERM);
        }
        if a.mode.is_some() && !owner {
            return Err(nfsstat3::NFS3ERR_PERM);
        }
        let times = a.atime != SetTime::Keep || a.mtime != SetTime::Keep;
        if times && !(owner || (!client_times && may_write)) {
            return Err(if client_times { nfsstat3::NFS3ERR_PERM } else { nfsstat3::NFS3ERR_ACCES });
        }
        if a.size.is_some() && !may_write {
            return Err(nfsstat3::NFS3ERR_ACCES);
        }
        let gid = a.gid.unwrap_or(st.st_gid);
        if let Some(m) = a.mode {
            a.mode = Some(new_mode(c, m, gid));
        } else if a.gid.is_some_and(|g| g != st.st_gid) && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
        {
            // chown(2) by an unprivileged owner drops the set-id bits of a file.
            let m = st.st_mode & 0o7777;
            if m & (S_ISUID | S_ISGID) != 0 {
                a.mode = Some(m & !(S_ISUID | S_ISGID));
            }
        }
        Ok(a)
    }

    /// A write or truncation by someone other than root drops a file's set-user-id bit and a
    /// group-executable set-group-id bit (the kernel's `file_remove_privs`).
    fn drop_privs(&self, c: &Caller, id: &Fh, st: &Stat) -> Result<(), nfsstat3> {
        let m = st.st_mode & 0o7777;
        let strip = (if m & S_ISUID != 0 { S_ISUID } else { 0 }) | (if m & 0o2010 == 0o2010 { S_ISGID } else { 0 });
        if c.is_root() || strip == 0 || FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(());
        }
        self.apply(&Op::SetAttr { id: *id, attrs: Attrs { mode: Some(m & !strip), ..Attrs::default() } }).map(|_| ())
    }

    fn stat_id(&self, id: &Fh) -> Result<Stat, nfsstat3> {
        let fd = self.open_id(id, OFlags::PATH)?;
        rustix::fs::fstat(&fd).map_err(errno_stat)
    }

    fn stat_dir(&self, dir: &Fh) -> Result<(OwnedFd, Stat), nfsstat3> {
        let dfd = self.open_dir(dir)?;
        let st = rustix::fs::fstat(&dfd).map_err(errno_stat)?;
        Ok((dfd, st))
    }

    /// The attributes given with a new object beyond its mode (owner, times), set after it was
    /// made under the same rules as SETATTR.
    fn rest_attrs(&self, c: &Caller, id: &Fh, a: Attrs, client_times: bool) -> Result<(), nfsstat3> {
        if a.is_empty() {
            return Ok(());
        }
        let st = self.stat_id(id)?;
        let a = self.setattr_rules(c, &st, &a, client_times)?;
        self.apply(&Op::SetAttr { id: *id, attrs: a }).map(|_| ())
    }
}

impl AreaFs {
    /// The attributes clients see (for the replies' weak cache consistency data).
    pub fn attributes(&self, id: &Fh) -> Result<fattr3, nfsstat3> {
        self.0.getattr(id)
    }

    /// The change lock, for a client's change: refused (`NFS3ERR_JUKEBOX`, retry later) unless
    /// the area serves, checked with the lock held — a change that waited for it while the area
    /// went to standby must not be made here (nor acknowledged: the area's peer, which serves
    /// next, would never get it).
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, nfsstat3> {
        let g = self.0.change.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?;
        self.0.served()?;
        Ok(g)
    }

    /// SETATTR (RFC 1813 §3.3.2). `client_times`: a time given as SET_TO_CLIENT_TIME (only the
    /// owner may), not SET_TO_SERVER_TIME (whoever may write). `guard`: the ctime the client
    /// expects (`NFS3ERR_NOT_SYNC` otherwise), checked under the change lock.
    pub fn setattr_as(
        &self,
        c: &Caller,
        id: &Fh,
        attrs: &Attrs,
        client_times: bool,
        guard: Option<nfstime3>,
    ) -> Result<(), nfsstat3> {
        let _g = self.lock()?;
        let st = self.0.stat_id(id)?;
        if let Some(t) = guard {
            let a = self.0.attributes_of(id, &st);
            if (a.ctime.seconds, a.ctime.nseconds) != (t.seconds, t.nseconds) {
                return Err(nfsstat3::NFS3ERR_NOT_SYNC);
            }
        }
        let a = self.0.setattr_rules(c, &st, attrs, client_times)?;
        if a.is_empty() {
            return Ok(());
        }
        if a.size.is_some() && a.mode.is_none() {
            self.0.drop_privs(c, id, &st)?;
        }
        self.0.apply(&Op::SetAttr { id: *id, attrs: a }).map(|_| ())
    }

    /// WRITE (RFC 1813 §3.3.7): the owner, or whoever the mode lets write (nfsd lets the owner
    /// write a file it has made read-only: it may have it open).
    pub fn write_as(&self, c: &Caller, id: &Fh, offset: u64, data: Vec<u8>, sync: bool) -> Result<(), nfsstat3> {
        let _g = self.lock()?;
        let st = self.0.stat_id(id)?;
        if !(c.is_root() || st.st_uid == c.uid || permits(c, &st, MAY_WRITE)) {
            return Err(nfsstat3::NFS3ERR_ACCES);
        }
        self.0.drop_privs(c, id, &st)?;
        self.0.apply(&Op::Write { id: *id, offset, data, sync }).map(|_| ())
    }

    /// COMMIT (RFC 1813 §3.3.21), for whoever may write the file.
    pub fn commit_as(&self, c: &Caller, id: &Fh) -> Result<(), nfsstat3> {
        let _g = self.lock()?;
        let st = self.0.stat_id(id)?;
        if !(c.is_root() || st.st_uid == c.uid || permits(c, &st, MAY_WRITE)) {
            return Err(nfsstat3::NFS3ERR_ACCES);
        }
        self.0.apply(&Op::Commit { id: *id }).map(|_| ())
    }

    /// CREATE (RFC 1813 §3.3.8): UNCHECKED keeps an existing regular file (a size in the
    /// attributes truncates it), GUARDED refuses it, EXCLUSIVE finds it again by its verifier.
    pub fn create_as(&self, c: &Caller, dir: &Fh, name: &[u8], how: How) -> Result<Fh, nfsstat3> {
        let n = name_ok(name)?;
        let _g = self.lock()?;
        let (dfd, dst) = self.0.stat_dir(dir)?;
        may_change_dir(c, &dst)?;
        match rustix::fs::statat(&dfd, n, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let existing = self.0.id_at(dir, &dfd, name).map_err(errno_stat)?;
                match how {
                    How::Unchecked(attrs) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                        // An existing file is kept; only a size (truncation) and the rest of the
                        // attributes apply, as nfsd does.
                        let attrs = Attrs { mode: None, ..attrs };
                        if !attrs.is_empty() {
                            let a = self.0.setattr_rules(c, &st, &attrs, false)?;
                            self.0.apply(&Op::SetAttr { id: existing, attrs: a })?;
                        }
                        Ok(existing)
                    }
                    How::Exclusive(v) => {
                        // A retry of the CREATE that made it: the same verifier is stored there.
                        let fd = self.0.open_id(&existing, OFlags::PATH)?;
                        let mut got = [0u8; 8];
                        match rustix::fs::getxattr(proc_path(&fd).as_str(), self.0.verf_xattr, &mut got[..]) {
                            Ok(8) if got == v => Ok(existing),
                            _ => Err(nfsstat3::NFS3ERR_EXIST),
                        }
                    }
                    _ => Err(nfsstat3::NFS3ERR_EXIST),
                }
            }
            Err(Errno::NOENT) => {
                drop(dfd);
                let (uid, gid) = owner_in(c, &dst);
                let (mode, verf, rest) = match how {
                    How::Unchecked(a) | How::Guarded(a) => (a.mode.unwrap_or(0o644), None, Attrs { mode: None, ..a }),
                    How::Exclusive(v) => (0o644, Some(v), Attrs::default()),
                };
                if !c.is_root() && (rest.uid.is_some_and(|u| u != uid) || rest.gid.is_some_and(|g| !c.in_group(g))) {
                    return Err(nfsstat3::NFS3ERR_PERM);
                }
                let id = self.0.fresh_id()?;
                let mode = new_mode(c, mode, gid);
                let (dir, name) = (*dir, name.to_vec());
                let op = if (uid, gid) == (0, 0) {
                    Op::Create { dir, name, id, mode, verf }
                } else {
                    Op::CreateOwned { dir, name, id, mode, verf, uid, gid }
                };
                self.0.apply(&op)?;
                // A new file: its size is 0 whatever was asked.
                self.0.rest_attrs(c, &id, Attrs { size: None, ..rest }, true)?;
                Ok(id)
            }
            Err(e) => Err(errno_stat(e)),
        }
    }

    /// MKDIR (RFC 1813 §3.3.9) with the client's mode (0755 when it sent none); in a
    /// set-group-id directory the new one is set-group-id too, as on a local file system.
    pub fn mkdir_as(&self, c: &Caller, dir: &Fh, name: &[u8], attrs: &Attrs) -> Result<Fh, nfsstat3> {
        name_ok(name)?;
        let _g = self.lock()?;
        let (_dfd, dst) = self.0.stat_dir(dir)?;
        may_change_dir(c, &dst)?;
        let (uid, gid) = owner_in(c, &dst);
        let mut mode = new_mode(c, attrs.mode.unwrap_or(0o755), gid);
        if dst.st_mode & S_ISGID != 0 {
            mode |= S_ISGID;
        }
        let id = self.0.fresh_id()?;
        let (d, n) = (*dir, name.to_vec());
        let op = if (uid, gid) == (0, 0) {
            Op::Mkdir { dir: d, name: n, id, mode }
        } else {
            Op::MkdirOwned { dir: d, name: n, id, mode, uid, gid }
        };
        self.0.apply(&op)?;
        self.0.rest_attrs(c, &id, Attrs { mode: None, size: None, ..*attrs }, true)?;
        Ok(id)
    }

    /// SYMLINK (RFC 1813 §3.3.10), owned by the caller.
    pub fn symlink_as(&self, c: &Caller, dir: &Fh, name: &[u8], target: &[u8], attrs: &Attrs) -> Result<Fh, nfsstat3> {
        name_ok(name)?;
        let _g = self.lock()?;
        let (_dfd, dst) = self.0.stat_dir(dir)?;
        may_change_dir(c, &dst)?;
        let op = Op::Symlink { dir: *dir, name: name.to_vec(), target: target.to_vec() };
        let id = self.0.apply(&op)?.ok_or(nfsstat3::NFS3ERR_SERVERFAULT)?;
        let (uid, gid) = owner_in(c, &dst);
        if (uid, gid) != (0, 0) {
            self.0.apply(&Op::SetAttr { id, attrs: Attrs { uid: Some(uid), gid: Some(gid), ..Attrs::default() } })?;
        }
        // A symlink's mode is meaningless on Linux, its size is its target.
        self.0.rest_attrs(c, &id, Attrs { mode: None, size: None, ..*attrs }, true)?;
        Ok(id)
    }

    /// MKNOD (RFC 1813 §3.3.11): FIFOs and sockets; devices refused (see the module docs).
    pub fn mknod_as(&self, c: &Caller, dir: &Fh, name: &[u8], what: &Node) -> Result<Fh, nfsstat3> {
        let (kind, attrs) = match what {
            Node::Fifo(a) => (NodeKind::Fifo, a),
            Node::Socket(a) => (NodeKind::Socket, a),
            Node::Device => return Err(nfsstat3::NFS3ERR_ACCES),
            Node::Other => return Err(nfsstat3::NFS3ERR_BADTYPE),
        };
        name_ok(name)?;
        let _g = self.lock()?;
        let (_dfd, dst) = self.0.stat_dir(dir)?;
        may_change_dir(c, &dst)?;
        let (uid, gid) = owner_in(c, &dst);
        let mode = new_mode(c, attrs.mode.unwrap_or(0o644), gid);
        let op = Op::Mknod { dir: *dir, name: name.to_vec(), kind, mode, uid, gid };
        let id = self.0.apply(&op)?.ok_or(nfsstat3::NFS3ERR_SERVERFAULT)?;
        self.0.rest_attrs(c, &id, Attrs { mode: None, size: None, ..*attrs }, true)?;
        Ok(id)
    }

    /// REMOVE (RFC 1813 §3.3.12, not of a directory: `NFS3ERR_ISDIR`) or RMDIR (§3.3.13, of a
    /// directory only: `NFS3ERR_NOTDIR`).
    pub fn remove_as(&self, c: &Caller, dir: &Fh, name: &[u8], rmdir: bool) -> Result<(), nfsstat3> {
        let n = name_ok(name).map_err(|e| if e == nfsstat3::NFS3ERR_ACCES { nfsstat3::NFS3ERR_NOENT } else { e })?;
        let _g = self.lock()?;
        let (dfd, dst) = self.0.stat_dir(dir)?;
        let st = rustix::fs::statat(&dfd, n, AtFlags::SYMLINK_NOFOLLOW).map_err(errno_rw)?;
        match (is_dir(&st), rmdir) {
            (true, false) => return Err(nfsstat3::NFS3ERR_ISDIR),
            (false, true) => return Err(nfsstat3::NFS3ERR_NOTDIR),
            _ => {}
        }
        may_change_dir(c, &dst)?;
        sticky_ok(c, &dst, &st)?;
        drop(dfd);
        self.0.apply(&Op::Remove { dir: *dir, name: name.to_vec() }).map(|_| ())
    }

    /// RENAME (RFC 1813 §3.3.14): write and search on both directories, the sticky rule for the
    /// entry moved and for one it replaces, and a directory moved to another parent must be
    /// writable itself (its `..` changes), as the kernel's `may_delete`/`vfs_rename` require.
    pub fn rename_as(&self, c: &Caller, from_dir: &Fh, from: &[u8], to_dir: &Fh, to: &[u8]) -> Result<(), nfsstat3> {
        let (fname, tname) = (name_ok(from)?, name_ok(to)?);
        let _g = self.lock()?;
        let (fdfd, fst) = self.0.stat_dir(from_dir)?;
        let (tdfd, tst) = self.0.stat_dir(to_dir)?;
        let st = rustix::fs::statat(&fdfd, fname, AtFlags::SYMLINK_NOFOLLOW).map_err(errno_rw)?;
        may_change_dir(c, &fst)?;
        may_change_dir(c, &tst)?;
        sticky_ok(c, &fst, &st)?;
        if let Ok(target) = rustix::fs::statat(&tdfd, tname, AtFlags::SYMLINK_NOFOLLOW) {
            sticky_ok(c, &tst, &target)?;
        }
        if is_dir(&st) && from_dir != to_dir && !permits(c, &st, MAY_WRITE) {
            return Err(nfsstat3::NFS3ERR_ACCES);
        }
        drop((fdfd, tdfd));
        let op = Op::Rename { from_dir: *from_dir, from: from.to_vec(), to_dir: *to_dir, to: to.to_vec() };
        self.0.apply(&op).map(|_| ())
    }

    /// LINK (RFC 1813 §3.3.15) of the non-directory `id` as `name` in `dir`. Besides write and
    /// search on the directory, a caller other than root must own the file or be able to read
    /// and write it, and not link another user's set-id file (the kernel's
    /// `fs.protected_hardlinks`, which nfsd does not apply: a link is a name another user's
    /// file cannot get rid of).
    pub fn link_as(&self, c: &Caller, id: &Fh, dir: &Fh, name: &[u8]) -> Result<(), nfsstat3> {
        name_ok(name)?;
        let _g = self.lock()?;
        let (_dfd, dst) = self.0.stat_dir(dir)?;
        let st = self.0.stat_id(id)?;
        may_change_dir(c, &dst)?;
        if !c.is_root() && st.st_uid != c.uid {
            let setid = st.st_mode & S_ISUID != 0 || st.st_mode & 0o2010 == 0o2010;
            let regular = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
            if !regular || setid || !permits(c, &st, MAY_READ | MAY_WRITE) {
                return Err(nfsstat3::NFS3ERR_ACCES);
            }
        }
        self.0.apply(&Op::Link { id: *id, dir: *dir, name: name.to_vec() }).map(|_| ())
    }
}

/// A `sattr3` as [`Attrs`] (server times resolved now), and whether it sets a time to one the
/// client gave (SET_TO_CLIENT_TIME), which only the owner may.
pub fn attrs_from(s: &sattr3) -> (Attrs, bool) {
    let client =
        matches!(s.atime, set_atime::SET_TO_CLIENT_TIME(_)) || matches!(s.mtime, set_mtime::SET_TO_CLIENT_TIME(_));
    (attrs_of(s), client)
}

impl AreaInner {
    fn attributes_of(&self, id: &Fh, st: &Stat) -> fattr3 {
        fattr(st, id.fileid(), self.fsid, false, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(kind: u32, mode: u32, uid: u32, gid: u32) -> Stat {
        // A real stat (of "/"), its fields then set for the case.
        let mut s = rustix::fs::stat("/").unwrap();
        s.st_mode = kind | mode;
        s.st_uid = uid;
        s.st_gid = gid;
        s.st_nlink = 1;
        s
    }

    fn who(uid: u32, gid: u32, gids: &[u32]) -> Caller {
        Caller { uid, gid, gids: gids.to_vec() }
    }

    const REG: u32 = 0o100000;
    const DIR: u32 = 0o040000;

    #[test]
    fn one_class_decides_and_root_passes() {
        let f = st(REG, 0o046, 1000, 100);
        // The owner class alone: no read for the owner although group and others may.
        assert!(!permits(&who(1000, 100, &[]), &f, MAY_READ));
        assert!(permits(&who(1001, 5, &[]), &f, MAY_READ | MAY_WRITE));
        // The group class alone: read, but no write although others may.
        assert!(permits(&who(1001, 100, &[]), &f, MAY_READ));
        assert!(!permits(&who(1001, 100, &[]), &f, MAY_WRITE));
        assert!(!permits(&who(1001, 5, &[100]), &f, MAY_WRITE), "a supplementary group counts");
        assert!(permits(&who(0, 0, &[]), &f, MAY_READ | MAY_WRITE));
        assert!(!permits(&who(0, 0, &[]), &f, MAY_EXEC), "root executes only what someone may");
        let d = st(DIR, 0o700, 1000, 100);
        assert!(permits(&who(0, 0, &[]), &d, MAY_WRITE | MAY_EXEC));
        assert!(!permits(&who(1001, 100, &[]), &d, MAY_EXEC));
        let sticky = st(DIR, 0o1777, 0, 0);
        assert!(sticky_ok(&who(1000, 1, &[]), &sticky, &st(REG, 0o644, 1000, 1)).is_ok());
        assert!(sticky_ok(&who(1001, 1, &[]), &sticky, &st(REG, 0o644, 1000, 1)).is_err());
        assert!(sticky_ok(&who(0, 0, &[]), &sticky, &st(REG, 0o644, 1000, 1)).is_ok());
    }

    #[test]
    fn owners_and_set_group_id() {
        let sgid = st(DIR, 0o2775, 0, 50);
        assert_eq!(owner_in(&who(1000, 100, &[]), &sgid), (1000, 50));
        assert_eq!(owner_in(&who(1000, 100, &[]), &st(DIR, 0o775, 0, 50)), (1000, 100));
        assert_eq!(new_mode(&who(1000, 100, &[]), 0o2755, 50), 0o755);
        assert_eq!(new_mode(&who(1000, 100, &[50]), 0o2755, 50), 0o2755);
        assert_eq!(new_mode(&who(0, 0, &[]), 0o2755, 50), 0o2755);
    }
}
