//! ONC RPC NULL probes (RFC 5531) of NFS (program 100003) and MOUNT (100005 v3) over TCP.
//!
//! A NULL call (procedure 0) takes no arguments and returns nothing; a server that answers it with
//! `SUCCESS` has the program registered at that version and its RPC service running — for kernel
//! nfsd the kernel threads, for the embedded server its tasks. Calls go over TCP with record
//! marking (RFC 5531 §11: a 4-byte header, high bit "last fragment", 31-bit length), one call at a
//! time per connection, every step (connect, write, read) under one deadline for the whole probe.
//! MOUNT's port comes from portmap `GETPORT` (program 100000 v2, procedure 3, RFC 1833 §3.2)
//! unless it is given: kernel nfsd registers mountd with rpcbind on 111, the embedded server
//! answers portmap (and MOUNT) on its NFS port.
//!
//! Connections are closed with a zero linger (RST): a probe every second from a reserved port
//! would otherwise leave a TIME_WAIT per probe and run out of the ~360 reserved ports.

use std::io::{self, Cursor};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nfs3_types::portmap::{mapping, IPPROTO_TCP};
use nfs3_types::rpc::{
    accept_stat_data, call_body, msg_body, opaque_auth, rejected_reply, reply_body, rpc_msg, RPC_VERSION_2,
};
use nfs3_types::xdr_codec::{Pack, Unpack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::detector::Check;

pub const PROG_PORTMAP: u32 = 100_000;
pub const PROG_NFS: u32 = 100_003;
pub const PROG_MOUNT: u32 = 100_005;
const PMAP_VERSION: u32 = 2;
const PMAPPROC_GETPORT: u32 = 3;
const MOUNT_VERSION: u32 = 3;
/// Replies to NULL and GETPORT are a few dozen bytes; anything near this is not a reply of ours.
const MAX_REPLY: usize = 64 << 10;
/// The reserved ports the Linux RPC client uses by default (sunrpc `min_resvport`..`max_resvport`).
const RESVPORT_MIN: u16 = 665;
const RESVPORT_MAX: u16 = 1023;

/// Where probes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePort {
    /// Any port the kernel picks.
    Any,
    /// A port below 1024 (root or `CAP_NET_BIND_SERVICE`): the embedded server, like nfsd's
    /// `secure`, closes connections from other ports before reading a call.
    Reserved,
}

/// How MOUNT's port is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPort {
    Fixed(u16),
    /// Ask portmap/rpcbind at this port on the same address.
    Portmap(u16),
}

/// What one NFS probe calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsTarget {
    /// The address clients mount from (the SN's service address if it has one).
    pub address: IpAddr,
    pub nfs_port: u16,
    /// Each must answer NULL with SUCCESS.
    pub nfs_versions: Vec<u32>,
    pub mount: MountPort,
    /// Deadline of the whole probe.
    pub timeout: Duration,
    pub source: SourcePort,
}

/// Why an RPC call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("connection refused")]
    Refused,
    #[error("connection closed or reset before the reply")]
    Closed,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(String),
    #[error("i/o: {0}")]
    Io(String),
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error("RPC version mismatch: server speaks {low}..={high}")]
    RpcMismatch { low: u32, high: u32 },
    #[error("authentication error: {0}")]
    Auth(String),
    #[error("program unavailable (PROG_UNAVAIL)")]
    ProgUnavail,
    #[error("program version unavailable (PROG_MISMATCH): server has {low}..={high}")]
    ProgMismatch { low: u32, high: u32 },
    #[error("procedure unavailable (PROC_UNAVAIL)")]
    ProcUnavail,
    #[error("GARBAGE_ARGS")]
    GarbageArgs,
    #[error("SYSTEM_ERR")]
    SystemErr,
    #[error("program not registered with portmap")]
    NotRegistered,
    /// A problem on this side (no reserved port, no socket): nothing learnt about the server.
    #[error("local: {0}")]
    Local(String),
}

impl RpcError {
    /// Whether the server's host answered at all (so the network to it works).
    pub fn answered(&self) -> bool {
        !matches!(self, RpcError::Timeout(_) | RpcError::Connect(_) | RpcError::Io(_) | RpcError::Local(_))
    }

    fn from_io(e: &io::Error) -> RpcError {
        Self::answer(e).unwrap_or_else(|| RpcError::Io(e.to_string()))
    }

    /// An error that is the peer's answer (a refusal, a reset).
    fn answer(e: &io::Error) -> Option<RpcError> {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Some(RpcError::Refused),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Some(RpcError::Closed),
            _ => None,
        }
    }

    fn from_connect(e: &io::Error) -> RpcError {
        Self::answer(e).unwrap_or_else(|| RpcError::Connect(e.to_string()))
    }
}

/// One call of a probe and its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    /// e.g. `NFS v3 NULL at 10.0.0.1:2049`.
    pub what: String,
    pub result: Result<(), RpcError>,
}

/// The calls of one NFS probe, up to the first that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsProbe {
    pub calls: Vec<CallResult>,
    pub elapsed: Duration,
}

impl NfsProbe {
    pub fn ok(&self) -> bool {
        !self.calls.is_empty() && self.calls.iter().all(|c| c.result.is_ok())
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<(&str, &RpcError)> {
        self.calls.iter().find_map(|c| c.result.as_ref().err().map(|e| (c.what.as_str(), e)))
    }

    /// As the detector takes it.
    pub fn check(&self) -> Check {
        match self.failure() {
            None if self.ok() => Check::Ok,
            None => Check::Local("nothing was called".into()),
            Some((what, e @ RpcError::Local(_))) => Check::Local(format!("{what}: {e}")),
            Some((what, e)) if e.answered() => Check::Refused(format!("{what}: {e}")),
            Some((what, e)) => Check::Silent(format!("{what}: {e}")),
        }
    }
}

static XID: AtomicU32 = AtomicU32::new(0);

fn next_xid() -> u32 {
    // Seeded from the clock so a restarted daemon does not reuse the xids of its predecessor
    // (servers keep a duplicate request cache keyed by xid).
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(1);
    let _ = XID.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    XID.fetch_add(1, Ordering::Relaxed)
}

/// The record of one call: fragment header, call header with AUTH_NONE, then `args`.
pub fn encode_call(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Result<Vec<u8>, RpcError> {
    let msg = rpc_msg {
        xid,
        body: msg_body::CALL(call_body {
            rpcvers: RPC_VERSION_2,
            prog,
            vers,
            proc: proc_,
            cred: opaque_auth::default(),
            verf: opaque_auth::default(),
        }),
    };
    let len = msg.packed_size() + args.len();
    let hdr = u32::try_from(len).map_err(|_| RpcError::Local("call too large".into()))? | 0x8000_0000;
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&hdr.to_be_bytes());
    msg.pack(&mut out).map_err(|e| RpcError::Local(format!("encoding the call: {e}")))?;
    out.extend_from_slice(args);
    Ok(out)
}

/// Parses a reply record (without its fragment headers): the result bytes of a SUCCESS reply to
/// `xid`, or why not.
pub fn decode_reply(xid: u32, rec: &[u8]) -> Result<Vec<u8>, RpcError> {
    let mut cur = Cursor::new(rec);
    let (msg, _) = rpc_msg::unpack(&mut cur).map_err(|e| RpcError::Malformed(e.to_string()))?;
    if msg.xid != xid {
        return Err(RpcError::Malformed(format!("reply to xid {:#x}, not ours ({xid:#x})", msg.xid)));
    }
    let accepted = match msg.body {
        msg_body::CALL(_) => return Err(RpcError::Malformed("a call, not a reply".into())),
        msg_body::REPLY(reply_body::MSG_DENIED(rejected_reply::RPC_MISMATCH { low, high })) => {
            return Err(RpcError::RpcMismatch { low, high })
        }
        msg_body::REPLY(reply_body::MSG_DENIED(rejected_reply::AUTH_ERROR(s))) => {
            return Err(RpcError::Auth(s.to_string()))
        }
        msg_body::REPLY(reply_body::MSG_ACCEPTED(a)) => a,
    };
    match accepted.reply_data {
        accept_stat_data::SUCCESS => {}
        accept_stat_data::PROG_UNAVAIL => return Err(RpcError::ProgUnavail),
        accept_stat_data::PROG_MISMATCH { low, high } => return Err(RpcError::ProgMismatch { low, high }),
        accept_stat_data::PROC_UNAVAIL => return Err(RpcError::ProcUnavail),
        accept_stat_data::GARBAGE_ARGS => return Err(RpcError::GarbageArgs),
        accept_stat_data::SYSTEM_ERR => return Err(RpcError::SystemErr),
    }
    let at = usize::try_from(cur.position()).unwrap_or(rec.len()).min(rec.len());
    Ok(rec[at..].to_vec())
}

async fn until<T>(
    deadline: tokio::time::Instant,
    timeout: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, RpcError> {
    match tokio::time::timeout_at(deadline, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RpcError::from_io(&e)),
        Err(_) => Err(RpcError::Timeout(timeout)),
    }
}

fn port_seed() -> u16 {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (n % u32::from(RESVPORT_MAX - RESVPORT_MIN + 1)) as u16
}

/// Connects from a port of `source`'s kind.
async fn connect(
    addr: SocketAddr,
    source: SourcePort,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<TcpStream, RpcError> {
    let socket = || {
        if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| RpcError::Local(format!("socket: {e}")))
    };
    if source == SourcePort::Any {
        let s = socket()?;
        return match tokio::time::timeout_at(deadline, s.connect(addr)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(RpcError::from_connect(&e)),
            Err(_) => Err(RpcError::Timeout(timeout)),
        };
    }
    let span = RESVPORT_MAX - RESVPORT_MIN + 1;
    let start = port_seed();
    let local: IpAddr = if addr.is_ipv4() { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u16; 8]) };
    for i in 0..span {
        let port = RESVPORT_MIN + (start + i) % span;
        let s = socket()?;
        // Lets a port whose last connection to another server is in TIME_WAIT be bound again.
        let _ = s.set_reuseaddr(true);
        match s.bind(SocketAddr::new(local, port)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(RpcError::Local(format!(
                    "binding reserved port {port}: {e} (needs root or CAP_NET_BIND_SERVICE; or set reserved_source_port = false for servers that accept any port)"
                )))
            }
            Err(e) => return Err(RpcError::Local(format!("binding port {port}: {e}"))),
        }
        match tokio::time::timeout_at(deadline, s.connect(addr)).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) if e.kind() == io::ErrorKind::AddrNotAvailable || e.kind() == io::ErrorKind::AddrInUse => {
                continue
            }
            Ok(Err(e)) => return Err(RpcError::from_connect(&e)),
            Err(_) => return Err(RpcError::Timeout(timeout)),
        }
    }
    Err(RpcError::Local(format!("no free reserved port in {RESVPORT_MIN}..={RESVPORT_MAX}")))
}

/// One TCP connection for calls, closed with RST when dropped.
struct Conn(TcpStream);

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.0.set_zero_linger();
    }
}

impl Conn {
    async fn call(
        &mut self,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        let xid = next_xid();
        let rec = encode_call(xid, prog, vers, proc_, args)?;
        until(deadline, timeout, self.0.write_all(&rec)).await?;
        let mut reply = Vec::new();
        loop {
            let mut h = [0u8; 4];
            until(deadline, timeout, self.0.read_exact(&mut h)).await?;
            let h = u32::from_be_bytes(h);
            let len = (h & 0x7fff_ffff) as usize;
            if reply.len() + len > MAX_REPLY {
                return Err(RpcError::Malformed(format!("a reply record over {MAX_REPLY} bytes")));
            }
            let at = reply.len();
            reply.resize(at + len, 0);
            until(deadline, timeout, self.0.read_exact(&mut reply[at..])).await?;
            if h & 0x8000_0000 != 0 {
                break;
            }
        }
        decode_reply(xid, &reply)
    }
}

/// Calls procedure 0 of `prog`/`vers` at `addr` on a fresh connection.
pub async fn rpc_null(
    addr: SocketAddr,
    prog: u32,
    vers: u32,
    timeout: Duration,
    source: SourcePort,
) -> Result<(), RpcError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut c = Conn(connect(addr, source, deadline, timeout).await?);
    c.call(prog, vers, 0, &[], deadline, timeout).await.map(|_| ())
}

fn getport_args(prog: u32, vers: u32) -> Result<Vec<u8>, RpcError> {
    let m = mapping { prog, vers, prot: IPPROTO_TCP, port: 0 };
    let mut out = Vec::with_capacity(m.packed_size());
    m.pack(&mut out).map_err(|e| RpcError::Local(format!("encoding GETPORT: {e}")))?;
    Ok(out)
}

fn getport_result(body: &[u8]) -> Result<u16, RpcError> {
    let (port, _) =
        u32::unpack(&mut Cursor::new(body)).map_err(|e| RpcError::Malformed(format!("GETPORT result: {e}")))?;
    match port {
        0 => Err(RpcError::NotRegistered),
        p => u16::try_from(p).map_err(|_| RpcError::Malformed(format!("GETPORT returned port {p}"))),
    }
}

struct Session<'a> {
    t: &'a NfsTarget,
    deadline: tokio::time::Instant,
    /// The one open connection (and its port): reused while calls go to the same port, closed
    /// before another is opened, so a probe holds at most one reserved port.
    conn: Option<(u16, Conn)>,
    calls: Vec<CallResult>,
}

impl Session<'_> {
    async fn call(&mut self, port: u16, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Result<Vec<u8>, RpcError> {
        if self.conn.as_ref().is_none_or(|(p, _)| *p != port) {
            self.conn = None;
            let addr = SocketAddr::new(self.t.address, port);
            let c = connect(addr, self.t.source, self.deadline, self.t.timeout).await?;
            self.conn = Some((port, Conn(c)));
        }
        match self.conn.as_mut() {
            Some((_, c)) => c.call(prog, vers, proc_, args, self.deadline, self.t.timeout).await,
            None => Err(RpcError::Local("connection vanished".into())),
        }
    }

    /// Records the call; `false` ends the probe.
    fn record<T>(&mut self, what: String, r: &Result<T, RpcError>) -> bool {
        self.calls.push(CallResult { what, result: r.as_ref().map(|_| ()).map_err(Clone::clone) });
        r.is_ok()
    }
}

/// Probes NFS (NULL of every configured version) and MOUNT v3 (NULL, its port from portmap unless
/// given) at the target, stopping at the first failure. Never takes longer than `t.timeout`.
pub async fn probe_nfs(t: &NfsTarget) -> NfsProbe {
    let began = Instant::now();
    let mut s = Session { t, deadline: tokio::time::Instant::now() + t.timeout, conn: None, calls: Vec::new() };
    let a = t.address;
    for &v in &t.nfs_versions {
        let r = s.call(t.nfs_port, PROG_NFS, v, 0, &[]).await;
        if !s.record(format!("NFS v{v} NULL at {}", SocketAddr::new(a, t.nfs_port)), &r) {
            return NfsProbe { calls: s.calls, elapsed: began.elapsed() };
        }
    }
    let mount_port = match t.mount {
        MountPort::Fixed(p) => p,
        MountPort::Portmap(pp) => {
            let r = match getport_args(PROG_MOUNT, MOUNT_VERSION) {
                Ok(args) => s
                    .call(pp, PROG_PORTMAP, PMAP_VERSION, PMAPPROC_GETPORT, &args)
                    .await
                    .and_then(|b| getport_result(&b)),
                Err(e) => Err(e),
            };
            if !s.record(format!("portmap GETPORT of MOUNT v3 at {}", SocketAddr::new(a, pp)), &r) {
                return NfsProbe { calls: s.calls, elapsed: began.elapsed() };
            }
            match r {
                Ok(p) => p,
                Err(_) => return NfsProbe { calls: s.calls, elapsed: began.elapsed() },
            }
        }
    };
    let r = s.call(mount_port, PROG_MOUNT, MOUNT_VERSION, 0, &[]).await;
    s.record(format!("MOUNT v3 NULL at {}", SocketAddr::new(a, mount_port)), &r);
    NfsProbe { calls: s.calls, elapsed: began.elapsed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_call_is_40_bytes_after_the_record_mark() {
        let c = encode_call(7, PROG_NFS, 3, 0, &[]).unwrap();
        assert_eq!(c.len(), 44);
        assert_eq!(&c[..4], &(0x8000_0000u32 | 40).to_be_bytes());
        let words: Vec<u32> = c[4..].chunks(4).map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]])).collect();
        // xid, CALL, rpcvers 2, prog, vers, proc, AUTH_NONE cred (0, 0), AUTH_NONE verf (0, 0)
        assert_eq!(words, [7, 0, 2, 100_003, 3, 0, 0, 0, 0, 0]);
    }

    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    #[test]
    fn replies_are_told_apart() {
        // xid, REPLY, MSG_ACCEPTED, verf AUTH_NONE, accept_stat ...
        assert_eq!(decode_reply(9, &words(&[9, 1, 0, 0, 0, 0])), Ok(vec![]));
        assert_eq!(decode_reply(9, &words(&[9, 1, 0, 0, 0, 0, 2049])), Ok(words(&[2049])));
        assert_eq!(decode_reply(9, &words(&[9, 1, 0, 0, 0, 1])), Err(RpcError::ProgUnavail));
        assert_eq!(decode_reply(9, &words(&[9, 1, 0, 0, 0, 2, 3, 3])), Err(RpcError::ProgMismatch { low: 3, high: 3 }));
        assert_eq!(decode_reply(9, &words(&[9, 1, 0, 0, 0, 3])), Err(RpcError::ProcUnavail));
        assert_eq!(decode_reply(9, &words(&[9, 1, 0, 0, 0, 5])), Err(RpcError::SystemErr));
        // MSG_DENIED: RPC_MISMATCH low high; AUTH_ERROR AUTH_TOOWEAK
        assert_eq!(decode_reply(9, &words(&[9, 1, 1, 0, 2, 2])), Err(RpcError::RpcMismatch { low: 2, high: 2 }));
        assert_eq!(decode_reply(9, &words(&[9, 1, 1, 1, 5])), Err(RpcError::Auth("AUTH_TOOWEAK".into())));
        assert!(matches!(decode_reply(8, &words(&[9, 1, 0, 0, 0, 0])), Err(RpcError::Malformed(_))));
        assert!(matches!(decode_reply(9, &words(&[9, 1, 0, 0, 0, 77])), Err(RpcError::Malformed(_))));
        assert!(matches!(decode_reply(9, &words(&[9, 1])), Err(RpcError::Malformed(_))));
        assert_eq!(getport_result(&words(&[0])), Err(RpcError::NotRegistered));
        assert_eq!(getport_result(&words(&[635])), Ok(635));
        assert!(getport_result(&words(&[70000])).is_err());
    }
}
