//! A framed connection: `u32` length + postcard payload (see [`proto`]), every operation under a timeout.

use crate::{Error, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// Anything a session can run over: a TCP stream or a TLS stream on top of one.
pub trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}

pub struct Conn {
    io: BufStream<Box<dyn IoStream>>,
    /// Who is at the other end (certificate name, or the address for plain TCP).
    pub peer: String,
    /// Limit for one frame read or write (and a flush).
    pub timeout: Duration,
    /// Bytes written so far (frames, before TLS), for `bytes_sent` reports.
    pub bytes_out: u64,
    buf: Vec<u8>,
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

impl Conn {
    pub fn new(io: Box<dyn IoStream>, peer: String, timeout: Duration) -> Conn {
        Conn { io: BufStream::with_capacity(256 << 10, 256 << 10, io), peer, timeout, bytes_out: 0, buf: Vec::new() }
    }

    /// Queues one frame; it leaves when the buffer fills or at [`Conn::flush`]. Batching many small
    /// blobs this way keeps syscalls and round trips down.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        let frame = proto::encode(msg)?;
        self.write_raw(&frame).await
    }

    /// Queues a `ToAgent::Chunk` frame of `data` without copying it into a message first.
    pub async fn send_chunk(&mut self, data: &[u8]) -> Result<()> {
        let prefix = proto::chunk_prefix(data.len())?;
        self.write_raw(&prefix).await?;
        self.write_raw(data).await
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

    /// Sends and flushes: for a request whose reply comes next.
    pub async fn request<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        self.send(msg).await?;
        self.flush().await
    }

    /// Reads one frame within the connection timeout.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T> {
        self.recv_within(self.timeout).await
    }

    /// Reads one frame within `limit` (an agent waits longer for the next request than for the rest
    /// of a frame; a controller waits longer for a commit).
    pub async fn recv_within<T: DeserializeOwned>(&mut self, limit: Duration) -> Result<T> {
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

    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }
}

/// Dials an agent: TCP, keepalive, then TLS when `tls` is given, expecting a certificate for `name`.
pub async fn connect(
    addr: &str,
    name: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Conn> {
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
            Ok(Conn::new(Box::new(s), name.to_string(), timeout))
        }
    }
}

/// Accepts one session on the agent side; with TLS, the peer's name comes from its certificate.
pub async fn accept(tcp: TcpStream, tls: Option<&tokio_rustls::TlsAcceptor>, timeout: Duration) -> Result<Conn> {
    keepalive(&tcp)?;
    let addr = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    match tls {
        None => Ok(Conn::new(Box::new(tcp), format!("{addr} (plain TCP)"), timeout)),
        Some(acc) => {
            let s = tokio::time::timeout(timeout, acc.accept(tcp))
                .await
                .map_err(|_| Error::Timeout(timeout, "TLS handshake"))?
                .map_err(|e| Error::Tls(format!("{addr}: {e}")))?;
            let name = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(crate::tls::cert_name)
                .transpose()?
                .unwrap_or_else(|| addr.clone());
            Ok(Conn::new(Box::new(s), format!("{name} ({addr})"), timeout))
        }
    }
}
