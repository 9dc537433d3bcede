//! A framed connection: `u32` length + postcard payload (see [`proto`]), every operation under a
//! timeout. Its [`Role`] is its direction: a `Conn<Controller>` sends [`ToAgent`] and receives
//! [`FromAgent`], a `Conn<Agent>` the opposite; requests and their replies are paired by type
//! ([`Conn::call`]) and bulk data goes through one capped pair ([`Conn::send_bulk`], [`Conn::bulk`]).

use crate::{Error, Result};
use proto::{Agent, Controller, FromAgent, Message, Reply, Request, Role, ToAgent};
use std::marker::PhantomData;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// Anything a session can run over: a TCP stream or a TLS stream on top of one.
pub trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}

pub struct Conn<R: Role> {
    io: BufStream<Box<dyn IoStream>>,
    /// Who is at the other end (certificate name, or the address for plain TCP).
    pub peer: String,
    /// The name in the peer's TLS certificate (None on plain TCP).
    pub peer_name: Option<String>,
    /// Limit for one frame read or write (and a flush).
    pub timeout: Duration,
    /// Bytes written so far (frames, before TLS), for `bytes_sent` reports.
    pub bytes_out: u64,
    buf: Vec<u8>,
    role: PhantomData<fn() -> R>,
}

/// One bulk transfer being received: what it is and how many bytes are still due.
#[derive(Debug)]
pub struct Bulk {
    what: &'static str,
    left: u64,
}

impl Bulk {
    pub fn left(&self) -> u64 {
        self.left
    }
}

/// Keepalive so a peer that vanished (power off, cable) is noticed even while a session is idle.
pub fn keepalive(s: &TcpStream) -> Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let sock = socket2::SockRef::from(s);
    sock.set_tcp_keepalive(&ka)?;
    s.set_nodelay(true)?;
    Ok(())
}

impl<R: Role> Conn<R> {
    pub fn new(io: Box<dyn IoStream>, peer: String, timeout: Duration) -> Conn<R> {
        Conn {
            io: BufStream::with_capacity(256 << 10, 256 << 10, io),
            peer,
            peer_name: None,
            timeout,
            bytes_out: 0,
            buf: Vec::new(),
            role: PhantomData,
        }
    }

    /// Queues one frame; it leaves when the buffer fills or at [`Conn::flush`]. Batching many small
    /// blobs this way keeps syscalls and round trips down.
    pub async fn send(&mut self, msg: &R::Out) -> Result<()> {
        let frame = proto::encode(msg)?;
        self.write_raw(&frame).await
    }

    /// Queues a `Chunk` frame of this direction (at most [`proto::CHUNK`] bytes) without copying
    /// `data` into a message first.
    pub async fn send_chunk(&mut self, data: &[u8]) -> Result<()> {
        let prefix = proto::chunk_prefix::<R::Out>(data.len())?;
        self.write_raw(&prefix).await?;
        self.write_raw(data).await
    }

    /// Queues `data` as bulk: chunks of at most [`proto::CHUNK`] bytes. The header announcing its
    /// length is the caller's message, sent before.
    pub async fn send_bulk(&mut self, data: &[u8]) -> Result<()> {
        for ch in data.chunks(proto::CHUNK) {
            self.send_chunk(ch).await?;
        }
        Ok(())
    }

    /// Writes raw bytes (tests use this to send hand-made frames).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        tokio::time::timeout(self.timeout, self.io.write_all(bytes))
            .await
            .map_err(|_| Error::Timeout(self.timeout, "writing a frame"))??;
        self.bytes_out += bytes.len() as u64;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<()> {
        tokio::time::timeout(self.timeout, self.io.flush())
            .await
            .map_err(|_| Error::Timeout(self.timeout, "flushing"))??;
        Ok(())
    }

    /// Sends and flushes: for a message whose answer comes next.
    pub async fn request(&mut self, msg: &R::Out) -> Result<()> {
        self.send(msg).await?;
        self.flush().await
    }

    /// Reads one frame within the connection timeout.
    pub async fn recv(&mut self) -> Result<R::In> {
        self.recv_within(self.timeout).await
    }

    /// Reads one frame within `limit` (an agent waits longer for the next request than for the rest
    /// of a frame; a controller waits longer for a commit).
    pub async fn recv_within(&mut self, limit: Duration) -> Result<R::In> {
        let payload = self.recv_payload_within(limit).await?;
        let v = proto::decode(payload);
        // Keep the buffer from staying at its largest after a big chunk.
        if self.buf.capacity() > 2 * proto::CHUNK {
            self.buf = Vec::new();
        }
        Ok(v?)
    }

    /// Reads one frame and returns its payload, borrowed (bulk receivers take chunk data from it
    /// without another copy, see [`proto::chunk_data`]).
    pub async fn recv_payload_within(&mut self, limit: Duration) -> Result<&[u8]> {
        let mut h = [0u8; proto::HEADER];
        match tokio::time::timeout(limit, self.io.read_exact(&mut h)).await {
            Err(_) => return Err(Error::Timeout(limit, "waiting for a frame")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Error::Closed),
            Ok(r) => {
                r?;
            }
        }
        // Checked before allocating: an oversized length ends the session without buffering it.
        let n = proto::frame_len(h)?;
        self.buf.resize(n, 0);
        match tokio::time::timeout(self.timeout, self.io.read_exact(&mut self.buf)).await {
            Err(_) => return Err(Error::Timeout(self.timeout, "reading a frame body")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Error::Closed),
            Ok(r) => {
                r?;
            }
        }
        Ok(&self.buf)
    }

    /// Starts receiving `len` announced bytes of `what`, refused when over `cap`: a peer's announced
    /// length is never trusted past what the receiver can need.
    pub fn bulk(&self, what: &'static str, len: u64, cap: u64) -> Result<Bulk> {
        if len > cap {
            return Err(proto::Error::Oversize { what, len, cap }.into());
        }
        Ok(Bulk { what, left: len })
    }

    /// The next chunk of `b`, borrowed from the receive buffer; None once all of it arrived. A
    /// chunk past the announced length, or any other message before the end, is a violation.
    pub async fn next_chunk(&mut self, b: &mut Bulk) -> Result<Option<&[u8]>> {
        if b.left == 0 {
            return Ok(None);
        }
        let t = self.timeout;
        let payload = self.recv_payload_within(t).await?;
        match proto::chunk_data::<R::In>(payload) {
            Some(d) if d.len() as u64 > b.left => Err(proto::Error::BulkLength { what: b.what, why: "longer" }.into()),
            Some(d) => {
                b.left -= d.len() as u64;
                Ok(Some(d))
            }
            None => {
                let got = proto::decode::<R::In>(payload)?;
                Err(proto::Error::Unexpected { expected: "Chunk", got: got.kind() }.into())
            }
        }
    }

    /// Receives a whole bulk transfer into memory (manifests, plans): at most `cap` bytes.
    pub async fn recv_bulk(&mut self, what: &'static str, len: u64, cap: u64) -> Result<Vec<u8>> {
        let mut b = self.bulk(what, len, cap)?;
        // Grown as chunks arrive, not by the announcement, which is only known to be under the cap.
        let mut out = Vec::with_capacity(len.min(8 << 20) as usize);
        while let Some(d) = self.next_chunk(&mut b).await? {
            out.extend_from_slice(d);
        }
        Ok(out)
    }

    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }
}

impl Conn<Controller> {
    /// Sends a request and waits (the connection timeout) for its one reply kind; the agent's
    /// `Error`/`NoSpace` come back as [`proto::Error::Remote`]/[`proto::Error::NoSpace`], any other
    /// message as [`proto::Error::Unexpected`].
    pub async fn call<Q: Request>(&mut self, q: Q) -> Result<Q::Reply> {
        let t = self.timeout;
        self.call_within(q, t).await
    }

    /// [`Conn::call`] waiting up to `limit` for the reply (a commit, an exports reload).
    pub async fn call_within<Q: Request>(&mut self, q: Q, limit: Duration) -> Result<Q::Reply> {
        self.request(&q.into()).await?;
        self.reply_within(limit).await
    }

    /// A request followed by bulk data (a plan), then its reply.
    pub async fn call_with_bulk<Q: Request>(&mut self, q: Q, data: &[u8]) -> Result<Q::Reply> {
        self.send(&q.into()).await?;
        self.send_bulk(data).await?;
        self.flush().await?;
        let t = self.timeout;
        self.reply_within(t).await
    }

    /// The reply to something sent before (after pipelined blobs).
    pub async fn reply_within<P: Reply>(&mut self, limit: Duration) -> Result<P> {
        let m: FromAgent = self.recv_within(limit).await?;
        Ok(P::from_msg(m)?)
    }

    /// Says goodbye and closes (best effort: the session's work is done).
    pub async fn bye(&mut self) {
        let _ = self.request(&ToAgent::Bye).await;
        self.shutdown().await;
    }
}

impl Conn<Agent> {
    /// Tells the controller a request failed (the session may go on).
    pub async fn error(&mut self, reason: impl Into<String>) -> Result<()> {
        self.request(&FromAgent::Error { reason: reason.into() }).await
    }
}

/// Dials an agent: TCP, keepalive, then TLS when `tls` is given, expecting a certificate for `name`.
pub async fn connect(
    addr: &str,
    name: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Conn<Controller>> {
    dial(addr, name, tls, timeout).await
}

/// [`connect`] for any direction (the relay stream's child end).
pub async fn dial<R: Role>(
    addr: &str,
    name: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Conn<R>> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::Timeout(timeout, "connecting"))??;
    keepalive(&tcp)?;
    match tls {
        None => Ok(Conn::new(Box::new(tcp), format!("{name} ({addr}, plain TCP)"), timeout)),
        Some(cfg) => {
            let c = tokio_rustls::TlsConnector::from(cfg);
            let s = tokio::time::timeout(timeout, c.connect(crate::tls::server_name(name)?, tcp))
                .await
                .map_err(|_| Error::Timeout(timeout, "TLS handshake"))?
                .map_err(|e| Error::Tls(e.to_string()))?;
            let mut c = Conn::new(Box::new(s), name.to_string(), timeout);
            c.peer_name = Some(name.to_string());
            Ok(c)
        }
    }
}

/// Accepts one session on the agent side; with TLS, the peer's name comes from its certificate.
pub async fn accept(tcp: TcpStream, tls: Option<&tokio_rustls::TlsAcceptor>, timeout: Duration) -> Result<Conn<Agent>> {
    accept_as(tcp, tls, timeout).await
}

/// [`accept`] for any direction (the relay stream's parent end).
pub async fn accept_as<R: Role>(
    tcp: TcpStream,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    timeout: Duration,
) -> Result<Conn<R>> {
    keepalive(&tcp)?;
    let addr = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    match tls {
        None => Ok(Conn::new(Box::new(tcp), format!("{addr} (plain TCP)"), timeout)),
        Some(acc) => {
            let s = tokio::time::timeout(timeout, acc.accept(tcp))
                .await
                .map_err(|_| Error::Timeout(timeout, "TLS handshake"))?
                .map_err(|e| Error::Tls(format!("{addr}: {e}")))?;
            let cert_name =
                s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(crate::tls::cert_name).transpose()?;
            let name = cert_name.clone().unwrap_or_else(|| addr.clone());
            let mut c = Conn::new(Box::new(s), format!("{name} ({addr})"), timeout);
            c.peer_name = cert_name;
            Ok(c)
        }
    }
}

/// Both ends of one in-memory session (tests of either end, no sockets).
pub fn pair(timeout: Duration) -> (Conn<Controller>, Conn<Agent>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let ctl = Conn::new(Box::new(a), "agent (in memory)".into(), timeout);
    (ctl, Conn::new(Box::new(b), "controller (in memory)".into(), timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{reply, req};

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn bulk_goes_each_way_with_its_own_chunk_tag() {
        let (mut ctl, mut agent) = pair(T);
        let data: Vec<u8> = (0..3 * proto::CHUNK + 17).map(|i| i as u8).collect();
        let d2 = data.clone();
        let up = tokio::spawn(async move {
            ctl.send_bulk(&d2).await.unwrap();
            ctl.flush().await.unwrap();
            let back = ctl.recv_bulk("reply", d2.len() as u64, u64::MAX).await.unwrap();
            assert_eq!(back, d2);
        });
        let got = agent.recv_bulk("plan", data.len() as u64, data.len() as u64).await.unwrap();
        assert_eq!(got, data);
        agent.send_bulk(&got).await.unwrap();
        agent.flush().await.unwrap();
        up.await.unwrap();
    }

    #[tokio::test]
    async fn an_announced_length_over_the_cap_is_refused_before_any_chunk() {
        let (ctl, _agent) = pair(T);
        match ctl.bulk("a manifest", 1 << 40, 256 << 20) {
            Err(Error::Proto(proto::Error::Oversize { len, cap, .. })) => assert_eq!((len, cap), (1 << 40, 256 << 20)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn more_chunks_than_announced_or_another_message_inside_bulk_are_violations() {
        let (mut ctl, mut agent) = pair(T);
        agent.send_bulk(&[1; 10]).await.unwrap();
        agent.request(&FromAgent::Pong).await.unwrap();
        match ctl.recv_bulk("a manifest", 4, 100).await {
            Err(Error::Proto(proto::Error::BulkLength { why: "longer", .. })) => {}
            other => panic!("{other:?}"),
        }
        let (mut ctl, mut agent) = pair(T);
        agent.send_bulk(&[1; 3]).await.unwrap();
        agent.request(&FromAgent::Pong).await.unwrap();
        match ctl.recv_bulk("a manifest", 10, 100).await {
            Err(Error::Proto(proto::Error::Unexpected { expected: "Chunk", got: "Pong" })) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_chunk_of_the_other_direction_is_not_bulk_data() {
        // What a peer writing the controller's chunk tag towards the controller sends.
        let (mut ctl, mut agent) = pair(T);
        let mut frame = proto::chunk_prefix::<ToAgent>(8).unwrap();
        frame.extend_from_slice(&[7; 8]);
        agent.write_raw(&frame).await.unwrap();
        agent.flush().await.unwrap();
        assert!(ctl.recv_bulk("a manifest", 8, 8).await.is_err());
    }

    #[tokio::test]
    async fn calls_pair_requests_with_their_reply() {
        let (mut ctl, mut agent) = pair(T);
        let srv = tokio::spawn(async move {
            assert_eq!(agent.recv().await.unwrap(), ToAgent::Ping);
            agent.request(&FromAgent::Pong).await.unwrap();
            assert_eq!(agent.recv().await.unwrap(), ToAgent::Commit);
            agent.request(&FromAgent::Pong).await.unwrap();
            assert_eq!(agent.recv().await.unwrap(), ToAgent::Verify);
            agent.error("scanning: EIO").await.unwrap();
        });
        let _: reply::Pong = ctl.call(req::Ping).await.unwrap();
        match ctl.call(req::Commit).await {
            Err(Error::Proto(proto::Error::Unexpected { expected: "Committed", got: "Pong" })) => {}
            other => panic!("{other:?}"),
        }
        match ctl.call(req::Verify).await {
            Err(Error::Proto(proto::Error::Remote(r))) => assert_eq!(r, "scanning: EIO"),
            other => panic!("{other:?}"),
        }
        srv.await.unwrap();
    }
}
