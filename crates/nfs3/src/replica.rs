//! Synchronous replication of a read-write area to its backup (issue 13, point 2; degraded mode,
//! point 3).
//!
//! **One ordered stream per area**, primary → backup agent, over the cluster's mutual TLS: the
//! primary dials the backup's replication listener (a port of its own, never the agent's
//! control port, so "only the controller's identity drives an agent" holds there unchanged) and
//! expects a server certificate naming the backup SN (`peer_name`); the backup accepts the
//! stream only from a client certificate that chains to the cluster CA and names the configured
//! primary SN (the caller gives it a `rustls` server config whose client verifier checks that,
//! e.g. `transport::Identity::server_config(primary)`), refused in the handshake otherwise.
//!
//! The stream has its own small message set ([`Msg`]), not the controller↔agent protocol: a
//! frame is a big-endian `u32` length and one postcard message, at most [`MAX_FRAME`] bytes
//! (checked before allocating). After `Hello`/`Welcome` (version and area path must match),
//! the primary sends every [`Op`] of the change log with a sequence number, in the order it
//! applied them; the backup applies each through [`AreaFs::apply`] (the same steps, the same
//! ids, hence the same NFS handles) and, for every entry that is [`Op::synchronous`], answers
//! `Ack` once it is durable there (`apply` fsyncs what the primary fsyncs). The primary's
//! [`Replicator::replicate`] waits for that `Ack` before the client is answered; UNSTABLE
//! writes are sent without waiting (the write verifier covers them, RFC 1813 §3.3.7) and are
//! made durable on the backup by the COMMIT that follows them in the stream.
//!
//! **Degraded mode.** When the backup cannot be reached, refuses the stream, fails to apply an
//! entry, or does not answer within `timeout`, the primary keeps serving: `replicate` returns
//! Ok, the area is marked unprotected ([`Replicator::unprotected`], a `warn` log line with the
//! area, peer and reason) and nothing more is sent. Resynchronisation is not built: from then
//! on the backup catches up only through the controller's periodic statelite copy, and the
//! primary agent must be restarted (after such a copy) to protect the area again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nfs3_server::nfs3_types::nfs3::nfsstat3;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

use crate::oplog::Op;
use crate::rw::{AreaFs, Replicate};

/// Version of the stream's messages, checked in `Hello`.
pub const VERSION: u32 = 1;
/// Largest frame: a WRITE of the largest size the server takes, and room for the rest.
pub const MAX_FRAME: usize = crate::fs::MAX_READ as usize + 64 * 1024;
/// `peer_timeout_ms`'s default.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_millis(2000);
/// How long the backup waits for a primary's TLS handshake and `Hello`.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The replication stream's messages (append only: postcard numbers variants by position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Primary → backup, first: which area this stream feeds.
    Hello { version: u32, area: String },
    /// Backup → primary: the stream is accepted.
    Welcome,
    /// Backup → primary: it is not (wrong area or version), and why.
    Refused { reason: String },
    /// Primary → backup: the next change-log entry.
    Entry { seq: u64, op: Op },
    /// Backup → primary: entry `seq` (a synchronous one) is applied and durable.
    Ack { seq: u64 },
    /// Backup → primary: entry `seq` could not be applied (the trees differ); the stream ends.
    Failed { seq: u64, reason: String },
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Writes one frame and flushes it.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, m: &Msg) -> std::io::Result<()> {
    let body = postcard::to_allocvec(m).map_err(|e| invalid(format!("encoding: {e}")))?;
    let len = u32::try_from(body.len()).ok().filter(|&n| n as usize <= MAX_FRAME);
    let Some(len) = len else {
        return Err(invalid(format!("a frame of {} bytes is over the {MAX_FRAME}-byte limit", body.len())));
    };
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one frame; an announced length over [`MAX_FRAME`] is refused before allocating.
pub async fn recv<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Msg> {
    let mut h = [0u8; 4];
    r.read_exact(&mut h).await?;
    let n = u32::from_be_bytes(h) as usize;
    if n > MAX_FRAME {
        return Err(invalid(format!("a frame of {n} bytes announced, over the {MAX_FRAME}-byte limit")));
    }
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).await?;
    postcard::from_bytes(&b).map_err(|e| invalid(format!("malformed frame: {e}")))
}

/// Where the primary sends an area's stream.
#[derive(Clone)]
pub struct Peer {
    /// The backup agent's replication listener, `host:port`.
    pub addr: String,
    /// The name its certificate must carry (the backup SN's).
    pub name: String,
    /// The area's path as the cluster names it (both ends must agree on it).
    pub area: String,
    /// How long the primary waits for the backup (connecting, sending, the ack) before it goes
    /// on without it.
    pub timeout: Duration,
    /// Client side of the cluster's mutual TLS (CA roots and this SN's certificate).
    pub tls: Arc<rustls::ClientConfig>,
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

struct Link {
    conn: Option<ClientStream>,
    seq: u64,
}

/// The primary's end of an area's stream: a [`Replicate`] for [`crate::serve_rw`].
pub struct Replicator {
    peer: Peer,
    rt: tokio::runtime::Handle,
    link: Mutex<Link>,
    unprotected: AtomicBool,
    since: Mutex<Option<(Instant, String)>>,
}

impl Replicator {
    /// `rt`: a multi-thread runtime's handle; [`Replicate::replicate`] is called on its blocking
    /// threads (as the server does) and drives the stream there. Nothing is dialed before the
    /// first change.
    pub fn new(peer: Peer, rt: tokio::runtime::Handle) -> Arc<Replicator> {
        Arc::new(Replicator {
            peer,
            rt,
            link: Mutex::new(Link { conn: None, seq: 0 }),
            unprotected: AtomicBool::new(false),
            since: Mutex::new(None),
        })
    }

    /// Whether the area is unprotected: the backup missed a change, and nothing is sent to it
    /// any more (no resync is built; see the module documentation).
    pub fn unprotected(&self) -> bool {
        self.unprotected.load(Ordering::SeqCst)
    }

    /// When and why the area became unprotected.
    pub fn unprotected_since(&self) -> Option<(Instant, String)> {
        self.since.lock().ok().and_then(|s| s.clone())
    }

    /// The peer this stream goes to.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    fn degrade(&self, reason: String) {
        if !self.unprotected.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                area = %self.peer.area,
                peer = %self.peer.addr,
                peer_name = %self.peer.name,
                reason = %reason,
                "statelite rw: area unprotected, serving without its backup; replication stopped until a resync"
            );
            if let Ok(mut s) = self.since.lock() {
                *s = Some((Instant::now(), reason));
            }
        }
    }

    async fn dial(peer: &Peer) -> std::io::Result<ClientStream> {
        let tcp = TcpStream::connect(peer.addr.as_str()).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(peer.name.clone())
            .map_err(|e| invalid(format!("`{}` as a TLS name: {e}", peer.name)))?;
        let mut s = tokio_rustls::TlsConnector::from(peer.tls.clone()).connect(name, tcp).await?;
        send(&mut s, &Msg::Hello { version: VERSION, area: peer.area.clone() }).await?;
        match recv(&mut s).await? {
            Msg::Welcome => Ok(s),
            Msg::Refused { reason } => Err(std::io::Error::other(format!("the backup refused the stream: {reason}"))),
            m => Err(invalid(format!("expected Welcome, got {m:?}"))),
        }
    }

    async fn ship(peer: &Peer, link: &mut Link, op: &Op) -> std::io::Result<()> {
        let conn = match &mut link.conn {
            Some(c) => c,
            None => link.conn.insert(Self::dial(peer).await?),
        };
        link.seq += 1;
        let seq = link.seq;
        send(conn, &Msg::Entry { seq, op: op.clone() }).await?;
        if !op.synchronous() {
            return Ok(());
        }
        match recv(conn).await? {
            Msg::Ack { seq: s } if s == seq => Ok(()),
            Msg::Failed { seq, reason } => {
                Err(std::io::Error::other(format!("the backup could not apply entry {seq}: {reason}")))
            }
            m => Err(invalid(format!("expected Ack of entry {seq}, got {m:?}"))),
        }
    }
}

impl Replicate for Replicator {
    fn replicate(&self, op: &Op) -> Result<(), nfsstat3> {
        if self.unprotected() {
            return Ok(());
        }
        let mut link = self.link.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?;
        let t = self.peer.timeout;
        let r = self.rt.block_on(tokio::time::timeout(t, Self::ship(&self.peer, &mut link, op)));
        let reason = match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", t.as_millis()),
        };
        link.conn = None;
        self.degrade(reason);
        Ok(())
    }
}

/// The backup's end: a listener applying each area stream it accepts to `fs`. Dropping it
/// closes the listener and every stream.
pub struct ReplicaServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    applied: Arc<AtomicU64>,
    marked: Arc<Mutex<Option<std::time::SystemTime>>>,
}

/// The primary's in-sync mark: an empty SETATTR of the area's root, which changes nothing. A
/// primary that replicates by watching its tree (kernel nfsd areas) sends one whenever every
/// change it saw is acknowledged, so the backup knows how old its copy is at a failover.
pub fn in_sync_mark() -> Op {
    Op::SetAttr { id: crate::rw::root_id(), attrs: crate::oplog::Attrs::default() }
}

impl ReplicaServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Entries applied so far (all streams).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// When the last [`in_sync_mark`] was applied here: the copy held everything the primary
    /// had seen then.
    pub fn in_sync_at(&self) -> Option<std::time::SystemTime> {
        self.marked.lock().ok().and_then(|m| *m)
    }
}

impl Drop for ReplicaServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `addr` for the primary's stream of `area` and applies it to `fs` (the backup's
/// own served [`AreaFs`], so its NFS server knows every id the stream creates). `tls` must
/// require a client certificate naming the primary SN. A newer stream supersedes an older one
/// (a primary that reconnected): the older ends at its next frame.
pub async fn serve_replica(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    area: String,
    fs: AreaFs,
) -> std::io::Result<ReplicaServer> {
    let l = TcpListener::bind(addr).await?;
    let local_addr = l.local_addr()?;
    let applied = Arc::new(AtomicU64::new(0));
    let marked = Arc::new(Mutex::new(None));
    let ctx = Arc::new(Ctx {
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
        area,
        fs,
        current: AtomicU64::new(0),
        applied: applied.clone(),
        marked: marked.clone(),
    });
    tracing::info!(area = %ctx.area, listen = %local_addr, "statelite rw: accepting the primary's replication stream");
    let task = tokio::spawn(async move {
        // Streams live in the set: dropping the server (abort) drops them all.
        let mut streams = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                a = l.accept() => match a {
                    Ok((tcp, from)) => {
                        let ctx = ctx.clone();
                        streams.spawn(async move {
                            match ctx.stream(tcp).await {
                                Ok(()) => tracing::info!(area = %ctx.area, %from, "statelite rw: replication stream closed"),
                                Err(e) => tracing::warn!(area = %ctx.area, %from, "statelite rw: replication stream ended: {e}"),
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("statelite rw: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = streams.join_next(), if !streams.is_empty() => {}
            }
        }
    });
    Ok(ReplicaServer { local_addr, task, applied, marked })
}

struct Ctx {
    acceptor: tokio_rustls::TlsAcceptor,
    area: String,
    fs: AreaFs,
    current: AtomicU64,
    applied: Arc<AtomicU64>,
    marked: Arc<Mutex<Option<std::time::SystemTime>>>,
}

impl Ctx {
    async fn stream(&self, tcp: TcpStream) -> std::io::Result<()> {
        tcp.set_nodelay(true)?;
        let mut s = match tokio::time::timeout(HANDSHAKE, self.acceptor.accept(tcp)).await {
            Ok(r) => r.map_err(|e| std::io::Error::other(format!("TLS handshake refused: {e}")))?,
            Err(_) => return Err(std::io::Error::other("no TLS handshake in time")),
        };
        let hello = tokio::time::timeout(HANDSHAKE, recv(&mut s))
            .await
            .map_err(|_| std::io::Error::other("no Hello in time"))??;
        match hello {
            Msg::Hello { version: VERSION, area } if area == self.area => send(&mut s, &Msg::Welcome).await?,
            Msg::Hello { version, area } => {
                let reason = if version != VERSION {
                    format!("stream version {version}, this agent speaks {VERSION}")
                } else {
                    format!("this listener replicates `{}`, not `{area}`", self.area)
                };
                let _ = send(&mut s, &Msg::Refused { reason: reason.clone() }).await;
                return Err(std::io::Error::other(reason));
            }
            m => return Err(invalid(format!("expected Hello, got {m:?}"))),
        }
        let me = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(area = %self.area, "statelite rw: replication stream accepted");
        let mut last = 0u64;
        loop {
            let m = match recv(&mut s).await {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            if self.current.load(Ordering::SeqCst) != me {
                return Err(std::io::Error::other("superseded by a newer stream"));
            }
            let Msg::Entry { seq, op } = m else {
                return Err(invalid(format!("expected an Entry, got {m:?}")));
            };
            if seq != last + 1 {
                return Err(invalid(format!("entry {seq} after entry {last}: the stream is out of order")));
            }
            last = seq;
            let sync = op.synchronous();
            let mark = op == in_sync_mark();
            let fs = self.fs.clone();
            let r =
                tokio::task::spawn_blocking(move || fs.apply(&op)).await.unwrap_or(Err(nfsstat3::NFS3ERR_SERVERFAULT));
            match r {
                Ok(_) => {
                    self.applied.fetch_add(1, Ordering::SeqCst);
                    if mark {
                        if let Ok(mut m) = self.marked.lock() {
                            *m = Some(std::time::SystemTime::now());
                        }
                    }
                    if sync {
                        send(&mut s, &Msg::Ack { seq }).await?;
                    }
                }
                Err(st) => {
                    let reason = format!("{st:?}");
                    let _ = send(&mut s, &Msg::Failed { seq, reason: reason.clone() }).await;
                    return Err(std::io::Error::other(format!("entry {seq} not applied: {reason}")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Fh;

    #[tokio::test]
    async fn frames_round_trip_and_an_oversized_announcement_is_refused_before_reading_it() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let m = Msg::Entry { seq: 7, op: Op::Commit { id: Fh([3; 16]) } };
        send(&mut a, &m).await.unwrap();
        assert_eq!(recv(&mut b).await.unwrap(), m);
        let too_big = u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes();
        a.write_all(&too_big).await.unwrap();
        let e = recv(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("over the"), "{e}");
        // A largest WRITE fits in one frame.
        let data = vec![0u8; crate::fs::MAX_READ as usize];
        let big = Msg::Entry { seq: 8, op: Op::Write { id: Fh([1; 16]), offset: 0, data, sync: true } };
        let (mut a, mut b) = tokio::io::duplex(8 << 20);
        send(&mut a, &big).await.unwrap();
        assert_eq!(recv(&mut b).await.unwrap(), big);
    }
}
