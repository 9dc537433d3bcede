//! Per-user permission checks, in front of the NFS layer.
//!
//! `nfs3_server` 0.11 answers ACCESS with whatever the client asked for and never shows the
//! caller's credentials to the file system. A Linux client trusts ACCESS, so without this any
//! user on an NFS-root node could read the image's `/etc/shadow` or host keys (and, once root
//! had read them, straight from the client's page cache). So the public port is served by this
//! RPC-level guard, which forwards every record to the NFS layer on a loopback port and, like
//! the kernel server with `sec=sys,no_root_squash`:
//!
//! - trims ACCESS replies to what the caller's uid/gids get from the object's mode and owner;
//! - turns READ into `NFS3ERR_ACCES` unless the caller may read or execute the file (or owns
//!   it), LOOKUP unless it may search the directory, READDIR(PLUS) unless it may read it;
//! - answers portmap GETPORT with the public port;
//! - accepts only clients on privileged source ports unless told otherwise (nfsd's `secure`);
//! - answers an NFS call of another version than 3 itself with `PROG_MISMATCH` (3..3), and
//!   logs it once per connection: a client asking for NFSv4 gets a clear "not here";
//! - on a read-write area, answers every change itself ([`crate::rwcall`]) with the caller's
//!   ids, and trims ACCESS's MODIFY/EXTEND/DELETE to what the mode bits give;
//! - stamps every call with a per-server secret in the AUTH_UNIX machine name, and the NFS layer
//!   refuses calls without it, so the loopback port cannot be used to get around the guard.
//!
//! The checks use the attributes the NFS layer puts in its own replies, so they see exactly the
//! object that was served. uid 0 reads everything (root on an NFS-root node must read its own
//! shadow file); calls without AUTH_UNIX credentials are treated as uid/gid 65534.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest record accepted from a client (the biggest call, a WRITE to a read-write area, is at
/// most `wtmax`, 1 MiB, plus headers).
const MAX_CALL: usize = 4 << 20;
/// Largest record accepted from the NFS layer (a 1 MiB READ plus headers).
const MAX_REPLY: usize = 8 << 20;

/// Calls in flight on one connection (the Linux client's TCP slot table is at most 65536).
const MAX_PENDING: usize = 65536;
const NOBODY: u32 = 65534;
const PROG_PORTMAP: u32 = 100_000;
const PROG_NFS: u32 = 100_003;
const PMAP_GETPORT: u32 = 3;
const NFS_LOOKUP: u32 = 3;
const NFS_ACCESS: u32 = 4;
const NFS_READ: u32 = 6;
const NFS_READDIR: u32 = 16;
const NFS_READDIRPLUS: u32 = 17;
const NFS3ERR_ACCES: u32 = 13;
const NFS3ERR_JUKEBOX: u32 = 10008;
const ACCESS3_READ: u32 = 0x1;
const ACCESS3_LOOKUP: u32 = 0x2;
const ACCESS3_EXECUTE: u32 = 0x20;
const FATTR3_LEN: usize = 84;
const NF3DIR: u32 = 2;

pub(crate) struct Policy {
    pub token: Vec<u8>,
    /// Accept source ports >= 1024.
    pub insecure: bool,
    /// Becomes true when the server stops: every guarded connection is then closed.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Per local address, how many times its connections were ended ([`crate::Closer`]).
    pub released: tokio::sync::watch::Receiver<HashMap<std::net::IpAddr, u64>>,
    pub public_port: u16,
    pub internal_port: u16,
    /// Serving a read-write area: this server instance's write verifier (see [`Rw`]).
    pub rw: Option<Rw>,
    /// A read-write area's "clients are served" ([`crate::rw::Role`]): while false no
    /// connection is accepted (reset at once) and every open one is reset; None: always served.
    pub serving: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Policy {
    fn serving(&self) -> bool {
        self.serving.as_ref().is_none_or(|s| *s.borrow())
    }
}

/// Ends a connection with a reset (linger 0), not a FIN: no orphaned socket keeps its 4-tuple,
/// and a client's reconnect is answered at once.
fn reset(fd: &impl std::os::fd::AsFd) {
    let _ = rustix::net::sockopt::set_socket_linger(fd, Some(std::time::Duration::ZERO));
}

/// What the guard adds in front of a read-write area.
///
/// - The changes (SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK,
///   COMMIT) are answered by the guard itself through `calls` ([`crate::rwcall`]): the NFS layer
///   does not show the file system who calls and has no LINK or MKNOD. Statelite files are
///   written by the node's daemons, root or not, so the caller's ids decide, as with nfsd.
/// - The write verifier (RFC 1813 §3.3.7): `nfs3_server` answers the handle generation, which
///   must be the same on every replica (it is part of every handle) and so cannot tell a client
///   that the server changed. WRITE and COMMIT replies carry this instance's own verifier, new
///   at every start, so after a restart or a takeover the client sees a new one and resends
///   what it had not committed.
#[derive(Clone)]
pub(crate) struct Rw {
    pub calls: Arc<crate::rwcall::Calls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cred {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl Cred {
    fn nobody() -> Cred {
        Cred { uid: NOBODY, gid: NOBODY, gids: Vec::new() }
    }
}

struct Pending {
    /// The client's own xid (the call went on under one of the guard's, see [`Xids`]).
    xid: u32,
    prog: u32,
    proc_: u32,
    cred: Cred,
}

const NFS_SETATTR: u32 = 2;
const NFS_WRITE: u32 = 7;
const NFS_LINK: u32 = 15;
const ACCESS3_MODIFY: u32 = 0x4;
const ACCESS3_EXTEND: u32 = 0x8;
const ACCESS3_DELETE: u32 = 0x10;
const NFS_V3: u32 = 3;
const ACCEPT_PROG_MISMATCH: u32 = 2;
const ACCEPT_GARBAGE_ARGS: u32 = 4;
const ACCEPT_SYSTEM_ERR: u32 = 5;
/// Changes to a read-write area being answered on one connection at a time; more wait (the
/// guard stops reading the connection), so a client cannot pile up work.
const MAX_RW_CALLS: usize = 256;

/// The xids calls go on to the NFS layer under. `nfs3_server` drops every call whose xid it saw
/// on the connection in the last 60 s, even one it has answered, where kernel nfsd runs it again
/// (or replays it from its reply cache). The Linux client retransmits on the same connection with
/// the same xid after `timeo` and discards the part of a reply it had read, so a slow reply
/// (a lossy or reordering link) would cost it a minute per call; the rig's netem soak showed a
/// node's reads stopping that way. So every call goes on under a fresh xid and is run again,
/// except a retransmitted change (CREATE, REMOVE, ...: not idempotent), which reuses the xid of
/// its first transmission and stays at most once, as before.
#[derive(Default)]
struct Xids {
    next: u32,
    /// Client xid -> guard xid of recent changes; cleared when it grows past [`MAX_PENDING`].
    changes: HashMap<u32, u32>,
}

impl Xids {
    fn assign(&mut self, xid: u32, change: bool) -> u32 {
        if change {
            if let Some(&x) = self.changes.get(&xid) {
                return x;
            }
        }
        self.next = self.next.wrapping_add(1);
        if change {
            if self.changes.len() >= MAX_PENDING {
                self.changes.clear();
            }
            self.changes.insert(xid, self.next);
        }
        self.next
    }
}

/// The procedures that change the tree (sent on to the NFS layer only for a read-only export,
/// which answers them `NFS3ERR_ROFS`; kept at most once all the same).
fn changes(prog: u32, proc_: u32) -> bool {
    prog == PROG_NFS && (proc_ == NFS_SETATTR || (NFS_WRITE..=NFS_LINK).contains(&proc_))
}

/// Where a call's arguments begin (after its credential and verifier). `None` if it does not
/// parse.
fn args_at(call: &[u8]) -> Option<usize> {
    let clen = usize::try_from(be32(call, 28)?).ok()?;
    let verf = 32 + pad4(clen);
    let vlen = usize::try_from(be32(call, verf + 4)?).ok()?;
    let end = verf + 8 + pad4(vlen);
    call.get(..end)?;
    Some(end)
}

/// A reply record of the guard's own (RFC 5531 §9): accepted, AUTH_NULL verifier, `stat`,
/// then `body`.
fn reply(xid: u32, stat: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + body.len());
    for w in [xid, 1, 0, 0, 0, stat] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Parses a call; returns its xid, program, procedure, the caller's credentials, and the call
/// rewritten with an AUTH_UNIX credential carrying `token` as machine name.
pub(crate) fn rewrite_call(rec: &[u8], token: &[u8]) -> Option<(u32, u32, u32, Cred, Vec<u8>)> {
    let xid = be32(rec, 0)?;
    if be32(rec, 4)? != 0 {
        return None;
    }
    let prog = be32(rec, 12)?;
    let proc_ = be32(rec, 20)?;
    let flavor = be32(rec, 24)?;
    let clen = usize::try_from(be32(rec, 28)?).ok()?;
    let cbody = rec.get(32..32usize.checked_add(clen)?)?;
    let after_cred = 32 + pad4(clen);
    rec.get(..after_cred)?;
    let cred = if flavor == 1 {
        // stamp, machinename<255>, uid, gid, gids<16>
        let mlen = usize::try_from(be32(cbody, 4)?).ok()?;
        let o = 8 + pad4(mlen);
        let uid = be32(cbody, o)?;
        let gid = be32(cbody, o + 4)?;
        let n = usize::try_from(be32(cbody, o + 8)?).ok()?.min(16);
        let gids = (0..n).map(|i| be32(cbody, o + 12 + 4 * i)).collect::<Option<Vec<_>>>()?;
        Cred { uid, gid, gids }
    } else {
        Cred::nobody()
    };
    let stamp = if flavor == 1 { be32(cbody, 0)? } else { 0 };
    let mut body = Vec::with_capacity(32 + token.len() + 4 * cred.gids.len());
    body.extend_from_slice(&stamp.to_be_bytes());
    body.extend_from_slice(&u32::try_from(token.len()).ok()?.to_be_bytes());
    body.extend_from_slice(token);
    body.resize(8 + pad4(token.len()), 0);
    body.extend_from_slice(&cred.uid.to_be_bytes());
    body.extend_from_slice(&cred.gid.to_be_bytes());
    body.extend_from_slice(&u32::try_from(cred.gids.len()).ok()?.to_be_bytes());
    for g in &cred.gids {
        body.extend_from_slice(&g.to_be_bytes());
    }
    let mut out = Vec::with_capacity(rec.len() + body.len());
    out.extend_from_slice(&rec[..24]);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&rec[after_cred..]);
    Some((xid, prog, proc_, cred, out))
}

/// What `cred` may do with an object of these attributes: (read, search-or-execute).
pub(crate) fn may(cred: &Cred, attr: &[u8]) -> Option<(bool, bool)> {
    let ty = be32(attr, 0)?;
    let mode = be32(attr, 4)?;
    let (uid, gid) = (be32(attr, 12)?, be32(attr, 16)?);
    let dir = ty == NF3DIR;
    if cred.uid == 0 {
        return Some((true, dir || mode & 0o111 != 0));
    }
    let bits = class_bits(mode, cred.uid == uid, cred.gid == gid || cred.gids.contains(&gid));
    Some((bits & 4 != 0, bits & 1 != 0))
}

/// The rwx bits of `mode` for the one class a caller falls in: owner, else group, else others
/// (never their union, as the kernel decides); the guard and the read-write area both ask here.
pub(crate) fn class_bits(mode: u32, owner: bool, in_group: bool) -> u32 {
    (if owner {
        mode >> 6
    } else if in_group {
        mode >> 3
    } else {
        mode
    }) & 7
}

/// Whether `cred` may write an object of these attributes (its one class's `w` bit; root may).
fn may_write(cred: &Cred, attr: &[u8]) -> Option<bool> {
    let mode = be32(attr, 4)?;
    let (uid, gid) = (be32(attr, 12)?, be32(attr, 16)?);
    if cred.uid == 0 {
        return Some(true);
    }
    let bits = class_bits(mode, cred.uid == uid, cred.gid == gid || cred.gids.contains(&gid));
    Some(bits & 2 != 0)
}

/// The attributes in a `post_op_attr` at `off`, and the offset after it.
fn post_op_attr(b: &[u8], off: usize) -> Option<(Option<&[u8]>, usize)> {
    match be32(b, off)? {
        0 => Some((None, off + 4)),
        _ => Some((Some(b.get(off + 4..off + 4 + FATTR3_LEN)?), off + 4 + FATTR3_LEN)),
    }
}

/// A failure body: `NFS3ERR_ACCES` and the given attributes.
fn denied(attr: Option<&[u8]>) -> Vec<u8> {
    failure(NFS3ERR_ACCES, attr)
}

/// A reply whose attributes are missing cannot be judged. The file system leaves them out when
/// its attribute lookup after the operation was held back by a commit (the generation gate) and
/// gave up, so "try again" (`NFS3ERR_JUKEBOX`, RFC 1813 §2.6) is the answer, not "denied": still
/// nothing is shown, and the retry gets attributes once the commit is over.
fn undecided() -> Vec<u8> {
    failure(NFS3ERR_JUKEBOX, None)
}

fn failure(status: u32, attr: Option<&[u8]>) -> Vec<u8> {
    let mut v = status.to_be_bytes().to_vec();
    match attr {
        Some(a) => {
            v.extend_from_slice(&1u32.to_be_bytes());
            v.extend_from_slice(a);
        }
        None => v.extend_from_slice(&0u32.to_be_bytes()),
    }
    v
}

/// Applies the policy to a successful reply body (after the accept status). `None`: unchanged.
fn check_body(prog: u32, proc_: u32, cred: &Cred, body: &[u8], policy: &Policy) -> Option<Vec<u8>> {
    if prog == PROG_PORTMAP && proc_ == PMAP_GETPORT {
        if be32(body, 0)? == u32::from(policy.internal_port) {
            return Some(u32::from(policy.public_port).to_be_bytes().to_vec());
        }
        return None;
    }
    if prog != PROG_NFS || be32(body, 0)? != 0 {
        return None;
    }
    match proc_ {
        NFS_ACCESS => {
            let (attr, off) = post_op_attr(body, 4)?;
            let granted = be32(body, off)?;
            let allowed = match attr.and_then(|a| may(cred, a).map(|m| (m, be32(a, 0) == Some(NF3DIR)))) {
                Some(((r, x), dir)) => {
                    (if r { ACCESS3_READ } else { 0 })
                        | (if x && dir { ACCESS3_LOOKUP } else { 0 })
                        | (if x && !dir { ACCESS3_EXECUTE } else { 0 })
                }
                None if cred.uid == 0 => granted,
                None => 0,
            };
            // A read-write area: MODIFY and EXTEND where the mode lets the caller write,
            // DELETE (of a directory's entries) where it may also search the directory.
            let allowed = match (&policy.rw, attr) {
                (Some(_), Some(a)) => {
                    let dir = be32(a, 0) == Some(NF3DIR);
                    let w = may_write(cred, a).unwrap_or(false);
                    let x = may(cred, a).is_some_and(|(_, x)| x);
                    allowed
                        | (if w { ACCESS3_MODIFY | ACCESS3_EXTEND } else { 0 })
                        | (if w && x && dir { ACCESS3_DELETE } else { 0 })
                }
                (Some(_), None) if cred.uid == 0 => allowed | ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE,
                _ => allowed,
            };
            let mut out = body.to_vec();
            out[off..off + 4].copy_from_slice(&(granted & allowed).to_be_bytes());
            Some(out)
        }
        NFS_READ => {
            let (attr, _) = post_op_attr(body, 4)?;
            let ok = match attr {
                Some(a) => may(cred, a).is_some_and(|(r, x)| r || x) || be32(a, 12) == Some(cred.uid),
                None if cred.uid == 0 => true,
                None => return Some(undecided()),
            };
            (!ok).then(|| denied(attr))
        }
        NFS_LOOKUP => {
            let fhlen = usize::try_from(be32(body, 4)?).ok()?;
            let (_, off) = post_op_attr(body, 8 + pad4(fhlen))?;
            let (dattr, _) = post_op_attr(body, off)?;
            let ok = match dattr {
                Some(a) => may(cred, a).is_some_and(|(_, x)| x),
                None if cred.uid == 0 => true,
                None => return Some(undecided()),
            };
            (!ok).then(|| denied(dattr))
        }
        NFS_READDIR | NFS_READDIRPLUS => {
            let (dattr, _) = post_op_attr(body, 4)?;
            let ok = match dattr {
                Some(a) => may(cred, a).is_some_and(|(r, _)| r),
                None if cred.uid == 0 => true,
                None => return Some(undecided()),
            };
            (!ok).then(|| denied(dattr))
        }
        _ => None,
    }
}

/// Applies the policy to a reply record. `None` (close the connection) for a reply to no call
/// of ours, or one that answers a call needing a check and does not parse: fail closed.
fn rewrite_reply(rec: Vec<u8>, pending: &Mutex<HashMap<u32, Pending>>, policy: &Policy) -> Option<Vec<u8>> {
    let mut rec = rec;
    let guard_xid = be32(&rec, 0)?;
    let p = pending.lock().ok()?.remove(&guard_xid)?;
    rec.get_mut(0..4)?.copy_from_slice(&p.xid.to_be_bytes());
    let checked =
        matches!((p.prog, p.proc_), (PROG_NFS, NFS_ACCESS | NFS_READ | NFS_LOOKUP | NFS_READDIR | NFS_READDIRPLUS));
    // reply: xid, REPLY, MSG_ACCEPTED, verf{flavor, len, body}, accept_stat, results
    let parsed = (|| {
        if be32(&rec, 4)? != 1 || be32(&rec, 8)? != 0 {
            return Some(None);
        }
        let vlen = usize::try_from(be32(&rec, 16)?).ok()?;
        let off = 20 + pad4(vlen);
        if be32(&rec, off)? != 0 {
            return Some(None);
        }
        let body = rec.get(off + 4..)?;
        Some(check_body(p.prog, p.proc_, &p.cred, body, policy).map(|b| (off + 4, b)))
    })();
    match parsed {
        Some(Some((at, body))) => {
            let mut out = rec;
            out.truncate(at);
            out.extend_from_slice(&body);
            Some(out)
        }
        Some(None) => Some(rec),
        None if checked => None,
        None => Some(rec),
    }
}

async fn read_record<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut rec = Vec::new();
    loop {
        let mut h = [0u8; 4];
        match r.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && rec.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        }
        let h = u32::from_be_bytes(h);
        let len = (h & 0x7fff_ffff) as usize;
        if rec.len() + len > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "nfs3: RPC record too large"));
        }
        // Into spare capacity: no zeroing of up to a megabyte per READ reply.
        rec.reserve(len);
        let n = (&mut *r).take(len as u64).read_to_end(&mut rec).await?;
        if n < len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if h & 0x8000_0000 != 0 {
            return Ok(Some(rec));
        }
    }
}

async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, rec: &[u8]) -> io::Result<()> {
    let len = u32::try_from(rec.len()).map_err(|_| io::Error::other("record too large"))?;
    let hdr = (len | 0x8000_0000).to_be_bytes();
    // One vectored write: header and record leave in the same segment.
    let mut buf = bytes::Buf::chain(&hdr[..], rec);
    w.write_all_buf(&mut buf).await
}

type ClientWriter = Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>;

async fn send(cw: &ClientWriter, rec: &[u8]) -> io::Result<()> {
    write_record(&mut *cw.lock().await, rec).await
}

/// A change to a read-write area, answered here (see [`crate::rwcall`]). `Err` ends the
/// connection.
async fn rw_change(
    rw: &Rw,
    cw: &ClientWriter,
    slots: &Arc<tokio::sync::Semaphore>,
    peer: SocketAddr,
    (xid, proc_, cred): (u32, u32, Cred),
    mut rec: Vec<u8>,
) -> io::Result<()> {
    let Some(at) = args_at(&rec) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "nfs3: malformed call"));
    };
    let args = rec.split_off(at);
    let key = match rw.calls.seen(peer.ip(), xid, proc_, &args) {
        crate::rwcall::Seen::Running => return Ok(()),
        crate::rwcall::Seen::Done(r) => return send(cw, &r).await,
        crate::rwcall::Seen::New(key) => key,
    };
    let permit = Arc::clone(slots).acquire_owned().await.map_err(io::Error::other)?;
    let (calls, cw) = (Arc::clone(&rw.calls), Arc::clone(cw));
    let uid = cred.uid;
    let caller = crate::rw::Caller { uid, gid: cred.gid, gids: cred.gids };
    tokio::spawn(async move {
        let c = Arc::clone(&calls);
        let body = tokio::task::spawn_blocking(move || c.answer(proc_, &caller, &args)).await;
        let rec = Arc::new(match body {
            Ok(Some(b)) => reply(xid, 0, &b),
            Ok(None) => reply(xid, ACCEPT_GARBAGE_ARGS, &[]),
            Err(_) => reply(xid, ACCEPT_SYSTEM_ERR, &[]),
        });
        tracing::debug!(%peer, proc_, uid, status = be32(&rec, 24).unwrap_or(u32::MAX), "nfs3: change answered");
        calls.done(key, Arc::clone(&rec));
        // The client may be gone; the change is made and its reply cached for a retransmission.
        let _ = send(&cw, &rec).await;
        drop(permit);
    });
    Ok(())
}

async fn connection(client: TcpStream, peer: SocketAddr, internal: SocketAddr, policy: Arc<Policy>) -> io::Result<()> {
    // The address the client reached (a floating service address, maybe) and how often its
    // connections were ended before this one began; a copy of the descriptor to reset the
    // connection with when they are ended again.
    let local = client.local_addr().ok().map(|a| a.ip().to_canonical());
    let mut released = policy.released.clone();
    let seen = local.and_then(|ip| released.borrow().get(&ip).copied()).unwrap_or(0);
    let fd = rustix::io::dup(&client)?;
    let server = TcpStream::connect(internal).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, cw) = client.into_split();
    let cw: ClientWriter = Arc::new(tokio::sync::Mutex::new(cw));
    let (mut sr, mut sw) = server.into_split();
    let pending: Arc<Mutex<HashMap<u32, Pending>>> = Arc::default();
    let up = {
        let (pending, policy, cw) = (Arc::clone(&pending), Arc::clone(&policy), Arc::clone(&cw));
        tokio::spawn(async move {
            let mut xids = Xids::default();
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_RW_CALLS));
            let mut told = false;
            while let Some(rec) = read_record(&mut cr, MAX_CALL).await? {
                // In standby no call goes on (the connection is being reset).
                if !policy.serving() {
                    break;
                }
                let Some((xid, prog, proc_, cred, out)) = rewrite_call(&rec, &policy.token) else {
                    // Not a call we understand: do not forward it unstamped.
                    break;
                };
                let vers = be32(&rec, 16).unwrap_or(0);
                if prog == PROG_NFS && vers != NFS_V3 {
                    // NFSv4 (or v2): RFC 5531 §9's PROG_MISMATCH with the one version served,
                    // which the Linux client reports as "Protocol not supported" (and a mount
                    // without vers= takes as the cue to fall back to v3).
                    if !told {
                        told = true;
                        tracing::warn!(%peer, vers, "nfs3: refused an NFSv{vers} call (PROG_MISMATCH, 3..3): this port serves NFSv3 only, mount with vers=3");
                    }
                    let mut body = NFS_V3.to_be_bytes().to_vec();
                    body.extend_from_slice(&NFS_V3.to_be_bytes());
                    send(&cw, &reply(xid, ACCEPT_PROG_MISMATCH, &body)).await?;
                    continue;
                }
                if let Some(rw) = policy.rw.as_ref().filter(|_| prog == PROG_NFS && crate::rwcall::serves(proc_)) {
                    drop(out);
                    rw_change(rw, &cw, &slots, peer, (xid, proc_, cred), rec).await?;
                    continue;
                }
                let mut out = out;
                let guard_xid = xids.assign(xid, changes(prog, proc_));
                let Some(head) = out.get_mut(0..4) else {
                    break;
                };
                head.copy_from_slice(&guard_xid.to_be_bytes());
                {
                    let Ok(mut p) = pending.lock() else {
                        break;
                    };
                    // Bounded: a client that never reads its replies cannot grow this forever.
                    if p.len() >= MAX_PENDING {
                        break;
                    }
                    p.insert(guard_xid, Pending { xid, prog, proc_, cred });
                }
                write_record(&mut sw, &out).await?;
            }
            sw.shutdown().await
        })
    };
    let down = {
        let policy = Arc::clone(&policy);
        async move {
            while let Some(rec) = read_record(&mut sr, MAX_REPLY).await? {
                let Some(out) = rewrite_reply(rec, &pending, &policy) else {
                    break;
                };
                send(&cw, &out).await?;
            }
            cw.lock().await.shutdown().await
        }
    };
    // The client closing its side ends `up`; the NFS layer then answers what is pending and
    // closes, which ends `down`. The NFS layer going away ends `down` and with it the client.
    let mut stop = policy.stop.clone();
    let mut serving = policy.serving.clone();
    let standby = async {
        match &mut serving {
            Some(s) => {
                let _ = s.wait_for(|on| !*on).await;
            }
            None => std::future::pending().await,
        }
    };
    let r = tokio::select! {
        r = down => r,
        _ = stop.wait_for(|s| *s) => Ok(()),
        _ = standby => {
            reset(&fd);
            tracing::info!(local = ?local, "nfs3: connection reset: the read-write area is in standby");
            Ok(())
        }
        _ = released.wait_for(|m| local.is_some_and(|ip| m.get(&ip).copied().unwrap_or(0) > seen)) => {
            // Its address was released: a reset, not a FIN, so no orphaned socket keeps this
            // 4-tuple (the client's retransmissions would meet it, not a RST, when the address
            // comes back here, and the client would hang).
            reset(&fd);
            tracing::info!(local = ?local, "nfs3: connection ended: its address was released");
            Ok(())
        }
    };
    up.abort();
    r
}

/// Accepts clients on `listener` and guards each connection to the NFS layer at `internal`.
pub(crate) async fn run(listener: TcpListener, internal: SocketAddr, policy: Arc<Policy>) -> io::Result<()> {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors and the like: keep serving the clients we have, try again.
            Err(e) => {
                tracing::warn!("nfs3: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if !policy.insecure && peer.port() >= 1024 {
            tracing::debug!(%peer, "nfs3: refusing a client on an unprivileged port (see Options::insecure)");
            drop(sock);
            continue;
        }
        if !policy.serving() {
            // A standby area: nobody is served here; the reset makes the client try again (at
            // the address it mounted, which the serving SN holds).
            tracing::debug!(%peer, "nfs3: refusing a client: the read-write area is in standby");
            reset(&sock);
            drop(sock);
            continue;
        }
        let policy = Arc::clone(&policy);
        tokio::spawn(async move {
            if let Err(e) = connection(sock, peer, internal, policy).await {
                tracing::debug!(%peer, "nfs3: connection ended: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u32, mode: u32, uid: u32, gid: u32) -> Vec<u8> {
        let mut a = vec![0u8; FATTR3_LEN];
        a[0..4].copy_from_slice(&ty.to_be_bytes());
        a[4..8].copy_from_slice(&mode.to_be_bytes());
        a[12..16].copy_from_slice(&uid.to_be_bytes());
        a[16..20].copy_from_slice(&gid.to_be_bytes());
        a
    }

    fn cred(uid: u32, gid: u32, gids: &[u32]) -> Cred {
        Cred { uid, gid, gids: gids.to_vec() }
    }

    #[test]
    fn unix_permission_bits() {
        let shadow = attr(1, 0o640, 0, 42);
        assert_eq!(may(&cred(0, 0, &[]), &shadow), Some((true, false)));
        assert_eq!(may(&cred(1000, 1000, &[]), &shadow), Some((false, false)));
        assert_eq!(may(&cred(1000, 1000, &[42]), &shadow), Some((true, false)));
        assert_eq!(may(&cred(1000, 42, &[]), &shadow), Some((true, false)));
        let bin = attr(1, 0o4711, 0, 0);
        assert_eq!(may(&cred(1000, 1000, &[]), &bin), Some((false, true)));
        let home = attr(NF3DIR, 0o700, 1000, 1000);
        assert_eq!(may(&cred(1000, 1, &[]), &home), Some((true, true)));
        assert_eq!(may(&cred(1001, 1, &[]), &home), Some((false, false)));
        assert_eq!(may(&cred(0, 0, &[]), &home), Some((true, true)));
    }

    #[test]
    fn calls_are_stamped_and_credentials_kept() {
        // xid 7, CALL, rpcvers 2, prog NFS, vers 3, proc READ, AUTH_UNIX{stamp 9, "node1", 1000, 100, [4, 5]}, AUTH_NULL verf, args
        let mut c = Vec::new();
        for v in [7u32, 0, 2, PROG_NFS, 3, NFS_READ, 1] {
            c.extend_from_slice(&v.to_be_bytes());
        }
        let mut body = Vec::new();
        for v in [9u32, 5] {
            body.extend_from_slice(&v.to_be_bytes());
        }
        body.extend_from_slice(b"node1\0\0\0");
        for v in [1000u32, 100, 2, 4, 5] {
            body.extend_from_slice(&v.to_be_bytes());
        }
        c.extend_from_slice(&(body.len() as u32).to_be_bytes());
        c.extend_from_slice(&body);
        c.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd]);
        let (xid, prog, proc_, cr, out) = rewrite_call(&c, b"secret-token").unwrap();
        assert_eq!((xid, prog, proc_), (7, PROG_NFS, NFS_READ));
        assert_eq!(cr, cred(1000, 100, &[4, 5]));
        // The rewritten call carries the token and the same uid/gids, then verf and args.
        let (_, _, _, cr2, out2) = rewrite_call(&out, b"secret-token").unwrap();
        assert_eq!(cr2, cr);
        assert_eq!(out2, out);
        assert!(out.windows(12).any(|w| w == b"secret-token"));
        assert!(!out.windows(5).any(|w| w == b"node1"));
        assert!(out.ends_with(&[0xaa, 0xbb, 0xcc, 0xdd]));
        // Truncated calls are refused.
        assert!(rewrite_call(&c[..40], b"t").is_none());
    }
}
