//! Synchronous replication of a read-write area to its backup (issue 13, point 2; degraded mode
//! and resynchronisation, point 3).
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
//! the primary reconciles the backup's tree with its own ([`crate::resync`]: the tree engine's
//! manifests and librsync deltas), then sends every [`Op`] of the change log with a sequence
//! number, in the order it applied them; the backup applies each through [`AreaFs::apply`] (the
//! same steps, the same ids, hence the same NFS handles) and, for every entry that is
//! [`Op::synchronous`], answers `Ack` once it is durable there (`apply` fsyncs what the primary
//! fsyncs). The primary's [`Replicator::replicate`] waits for that `Ack` before the client is
//! answered; UNSTABLE writes are sent without waiting (the write verifier covers them, RFC 1813
//! §3.3.7) and are made durable on the backup by the COMMIT that follows them in the stream.
//!
//! **Degraded mode.** When the backup cannot be reached, refuses the stream, fails to apply an
//! entry, or does not answer within `timeout`, the primary keeps serving: `replicate` returns
//! Ok, the area is marked unprotected ([`Replicator::unprotected`], a `warn` log line with the
//! area, peer and reason) and nothing more is sent; what is not on the backup is counted
//! ([`Replicator::lag`]). A task started by [`Replicator::start`] then dials the backup again
//! (1 s, doubling to 5 s between attempts) and reconciles ([`Replicator::reconcile`]): passes
//! while clients keep writing, then a final one with the area's change lock held (no change is
//! applied meanwhile, and the final pass is bounded by `timeout`, so no client waits longer),
//! after which the digests of both trees are equal and synchronous replication resumes on that
//! connection. The same happens when the primary starts.
//!
//! **Symmetric pairs** (an area with a service address whose two agents each name the other as
//! `peer` and as `primary`): each side has a [`Replicator`] and a [`serve_replica`] listener,
//! and the area's role decides which one works. Only a side that serves ([`Role::serves`]:
//! it holds the address) sends; a standby side sends nothing (its `reconcile` refuses, its
//! stream is closed) and applies the other's stream. Leaving service flushes the stream (an
//! acknowledged in-sync mark after everything sent) before closing it, so a planned move finds
//! every change on the peer; entering service reconciles the peer at once, which is how a
//! promoted backup copies back to a returned old primary (that one boots in standby: it does
//! not hold the address) before `migrate --back`. A promoted side refuses streams, so two
//! serving sides never apply each other's.
//!
//! [`Role::serves`]: crate::rw::Role::serves

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use nfs3_server::nfs3_types::nfs3::nfsstat3;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

use crate::oplog::Op;
use crate::resync::{self, PutContent, Report};
use crate::rw::{AreaFs, AreaInner, Replicate};

/// Version of the stream's messages, checked in `Hello` (2: resynchronisation).
pub const VERSION: u32 = 2;
/// Largest frame: a WRITE of the largest size the server takes, and room for the rest.
pub const MAX_FRAME: usize = crate::fs::MAX_READ as usize + 64 * 1024;
/// `peer_timeout_ms`'s default.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_millis(2000);
/// How long the backup waits for a primary's TLS handshake and `Hello`.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// First wait before dialling an unprotected area's backup again, and the longest.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Passes while clients keep writing before the final one (each sends what changed during the
/// previous one), and how small a pass must be to stop early.
const LIVE_PASSES: u32 = 4;
const SMALL_PASS_FILES: u64 = 64;
const SMALL_PASS_BYTES: u64 = 4 << 20;
/// Longest pass while serving (a large first copy).
const LIVE_PASS_LIMIT: Duration = Duration::from_secs(3600);

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
    // Resynchronisation (appended; see `crate::resync`).
    /// Primary → backup: a pass begins: scan the area, send the manifest.
    Scan,
    /// Backup → primary: a piece of its manifest (postcard `tree::Manifest`); `last` ends it.
    ManifestPart { data: Vec<u8>, last: bool },
    /// Primary → backup: the librsync signature of the file at `path`, please.
    SigRequest { path: Vec<u8> },
    /// Backup → primary: a piece of it; one empty last piece: no such regular file.
    SigPart { data: Vec<u8>, last: bool },
    /// Primary → backup: make `path` this entry; for `Literal`/`Delta` content, `Data` frames
    /// follow, closed by `PutEnd`.
    Put { path: Vec<u8>, entry: tree::Entry, content: PutContent },
    /// Primary → backup: a piece of a file's content or delta.
    Data { data: Vec<u8> },
    /// Primary → backup: the file's content is complete and has this BLAKE3.
    PutEnd { hash: [u8; 32] },
    /// Primary → backup: remove `path` (with everything beneath it).
    Delete { path: Vec<u8> },
    /// Primary → backup: the pass is over.
    PassEnd,
    /// Backup → primary: the pass is applied, durable, and its tree now has `digest`;
    /// `failed`: the first step it could not apply.
    PassDone { digest: String, failed: Option<String> },
}

pub(crate) fn invalid(msg: impl Into<String>) -> std::io::Error {
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
    /// How long the primary waits for the backup (connecting, sending, the ack, the final pass
    /// of a reconciliation) before it goes on without it.
    pub timeout: Duration,
    /// Client side of the cluster's mutual TLS (CA roots and this SN's certificate).
    pub tls: Arc<rustls::ClientConfig>,
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

struct Link {
    conn: Option<ClientStream>,
    seq: u64,
}

/// What has not reached the backup yet: entries and bytes of file data queued (not sent, or
/// sent and not acknowledged), and since when. Shared by every way an area is replicated.
#[derive(Default)]
pub struct LagMeter(Mutex<Pending>);

#[derive(Default)]
struct Pending {
    entries: u64,
    bytes: u64,
    oldest: Option<Instant>,
}

/// [`LagMeter::lag`]: 0 when in sync.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lag {
    /// Seconds since the oldest change not on the backup.
    pub seconds: f64,
    /// Bytes of file data not on the backup.
    pub bytes: u64,
    /// Changes not on the backup.
    pub entries: u64,
}

impl LagMeter {
    /// One change of `bytes` bytes of data is queued.
    pub fn queued(&self, bytes: u64) {
        if let Ok(mut p) = self.0.lock() {
            p.entries += 1;
            p.bytes += bytes;
            p.oldest.get_or_insert_with(Instant::now);
        }
    }

    /// Everything queued so far is on the backup.
    pub fn caught_up(&self) {
        if let Ok(mut p) = self.0.lock() {
            *p = Pending::default();
        }
    }

    /// Now.
    pub fn lag(&self) -> Lag {
        self.0
            .lock()
            .map(|p| Lag {
                seconds: p.oldest.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0),
                bytes: p.bytes,
                entries: p.entries,
            })
            .unwrap_or_default()
    }
}

/// The outcome of the last reconciliation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    /// When it ended.
    pub at: SystemTime,
    /// What it did, or why it failed.
    pub result: Result<Report, String>,
}

/// Which end of an area's stream this agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Backup,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }
}

/// An area's replication as `hanfs status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AreaStatus {
    pub role: Role,
    /// Primary: every change is on the backup before clients are answered. Backup: the
    /// primary's stream is connected and its last pass applied.
    pub protected: bool,
    /// Why not.
    pub reason: Option<String>,
    pub lag: Lag,
    pub last_reconcile: Option<Reconciled>,
}

/// What a reconciliation works on: the area (weakly: the server owns it) and a scanner of its
/// own descriptor (its hash cache makes the next scans cheap).
struct Attached {
    fs: Weak<AreaInner>,
    root: OwnedFd,
    scanner: tree::Scanner,
}

/// The primary's end of an area's stream: a [`Replicate`] for [`crate::serve_rw`], then
/// [`Replicator::start`] with the served area.
pub struct Replicator {
    peer: Peer,
    rt: tokio::runtime::Handle,
    link: Mutex<Link>,
    protected: AtomicBool,
    since: Mutex<Option<(Instant, String)>>,
    lag: LagMeter,
    attached: Mutex<Option<Attached>>,
    last: Mutex<Option<Reconciled>>,
    wake: tokio::sync::Notify,
    one: tokio::sync::Mutex<()>,
    /// Whether the area is served here ([`crate::rw::Role::serves`]): only then is anything
    /// sent (a standby never sends; it applies its peer's stream).
    serving: AtomicBool,
    /// The area was just put in service: reconcile at once, not after the retry wait.
    kick: AtomicBool,
}

/// Why a standby's stream sends nothing.
const STANDBY: &str = "standby: the area is served by its peer (this side applies the peer's stream, sends nothing)";

impl Replicator {
    /// `rt`: a multi-thread runtime's handle; [`Replicate::replicate`] is called on its blocking
    /// threads (as the server does) and drives the stream there. Until [`Replicator::start`]
    /// reconciled the backup, the area is unprotected and nothing is sent.
    pub fn new(peer: Peer, rt: tokio::runtime::Handle) -> Arc<Replicator> {
        Arc::new(Replicator {
            peer,
            rt,
            link: Mutex::new(Link { conn: None, seq: 0 }),
            protected: AtomicBool::new(false),
            since: Mutex::new(Some((Instant::now(), "not reconciled with the backup yet".into()))),
            lag: LagMeter::default(),
            attached: Mutex::new(None),
            last: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
            one: tokio::sync::Mutex::new(()),
            serving: AtomicBool::new(true),
            kick: AtomicBool::new(false),
        })
    }

    /// Attaches the served area (`fs`: the server's, [`crate::RwServer::fs`]), reconciles the
    /// backup once (the primary's start) and returns that outcome; a task keeps reconciling
    /// whenever the area is unprotected (every 1-5 s) until the area is no longer served.
    /// An area in standby sends nothing: its start returns that reason, and the task
    /// reconciles the peer as soon as the area is put in service ([`Replicate::role_changed`]:
    /// a symmetric pair, where the holder of the service address replicates to the other).
    pub async fn start(self: &Arc<Self>, fs: &AreaFs) -> std::io::Result<Reconciled> {
        let (root, scanner) = resync::scanner(fs.root_fd())?;
        if let Ok(mut a) = self.attached.lock() {
            *a = Some(Attached { fs: Arc::downgrade(&fs.0), root, scanner });
        }
        self.serving.store(fs.role().serves(), Ordering::SeqCst);
        let first = self.reconcile().await;
        let me = self.clone();
        tokio::spawn(async move { me.supervise().await });
        Ok(match first {
            Err(e) if !self.serving() => Reconciled { at: SystemTime::now(), result: Err(e) },
            _ => self.last_reconcile().unwrap_or(Reconciled { at: SystemTime::now(), result: Err("not run".into()) }),
        })
    }

    /// Whether the area is served here, so this stream sends (see [`Replicate::role_changed`]).
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    async fn supervise(self: Arc<Self>) {
        let mut wait = RETRY_MIN;
        loop {
            let gone =
                self.attached.lock().map(|a| a.as_ref().is_none_or(|a| a.fs.strong_count() == 0)).unwrap_or(true);
            if gone {
                return;
            }
            if self.protected() || !self.serving() {
                self.wake.notified().await;
                wait = RETRY_MIN;
                continue;
            }
            if !self.kick.swap(false, Ordering::SeqCst) {
                tokio::time::sleep(wait).await;
            }
            wait = match self.reconcile().await {
                Ok(_) => RETRY_MIN,
                Err(_) => (wait * 2).min(RETRY_MAX),
            };
        }
    }

    /// Whether every change reaches the backup before clients are answered.
    pub fn protected(&self) -> bool {
        self.protected.load(Ordering::SeqCst)
    }

    /// Whether the area is unprotected: not reconciled yet, or the backup missed a change and
    /// nothing is sent to it until a reconciliation succeeds.
    pub fn unprotected(&self) -> bool {
        !self.protected()
    }

    /// When and why the area became unprotected.
    pub fn unprotected_since(&self) -> Option<(Instant, String)> {
        self.since.lock().ok().and_then(|s| s.clone())
    }

    /// What is not on the backup yet; 0 when in sync.
    pub fn lag(&self) -> Lag {
        self.lag.lag()
    }

    /// The last reconciliation's outcome.
    pub fn last_reconcile(&self) -> Option<Reconciled> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Everything `hanfs status` shows of this area.
    pub fn status(&self) -> AreaStatus {
        AreaStatus {
            role: Role::Primary,
            protected: self.protected(),
            reason: if self.protected() { None } else { self.unprotected_since().map(|(_, r)| r) },
            lag: self.lag(),
            last_reconcile: self.last_reconcile(),
        }
    }

    /// The peer this stream goes to.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    fn degrade(&self, reason: String) {
        if self.protected.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                area = %self.peer.area,
                peer = %self.peer.addr,
                peer_name = %self.peer.name,
                reason = %reason,
                "statelite rw: area unprotected, serving without its backup until it is reconciled"
            );
            if let Ok(mut s) = self.since.lock() {
                *s = Some((Instant::now(), reason));
            }
            self.wake.notify_one();
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
            m => Err(invalid(format!("expected Welcome, got {}", resync::kind(&m)))),
        }
    }

    /// Connects to the backup and marks the area protected without reconciling: for a primary
    /// that makes the backup equal by itself (a kernel-nfsd area's watcher compares and sends
    /// everything again after each connection). Blocks; not from inside the runtime.
    pub fn connect_unreconciled(&self) -> Result<(), String> {
        let t = self.peer.timeout;
        let s = match self.rt.block_on(tokio::time::timeout(t, Self::dial(&self.peer))) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("dialling the backup {}: {e}", self.peer.addr)),
            Err(_) => {
                return Err(format!("dialling the backup {}: no answer within {} ms", self.peer.addr, t.as_millis()))
            }
        };
        let mut link = self.link.lock().map_err(|_| "poisoned".to_string())?;
        link.conn = Some(s);
        link.seq = 0;
        if let Ok(mut w) = self.since.lock() {
            *w = None;
        }
        self.protected.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn ship(conn: &mut ClientStream, seq: u64, op: &Op) -> std::io::Result<()> {
        send(conn, &Msg::Entry { seq, op: op.clone() }).await?;
        if !op.synchronous() {
            return Ok(());
        }
        match recv(conn).await? {
            Msg::Ack { seq: s } if s == seq => Ok(()),
            Msg::Failed { seq, reason } => {
                Err(std::io::Error::other(format!("the backup could not apply entry {seq}: {reason}")))
            }
            m => Err(invalid(format!("expected Ack of entry {seq}, got {}", resync::kind(&m)))),
        }
    }

    /// Makes the backup's tree equal to the primary's, ids included, then resumes synchronous
    /// replication on that connection: passes while clients keep writing, then a final pass
    /// with the area's changes held (at most `peer.timeout`). On demand while protected, the
    /// area is unprotected while it runs. One at a time; the outcome is kept
    /// ([`Replicator::last_reconcile`]).
    pub async fn reconcile(self: &Arc<Self>) -> Result<Report, String> {
        let _one = self.one.lock().await;
        if !self.serving() {
            return Err(STANDBY.into());
        }
        if self.protected() {
            self.degrade("reconciliation requested".into());
        }
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || me.reconcile_blocking())
            .await
            .unwrap_or_else(|e| Err(format!("the reconciliation task: {e}")));
        let prev = self.last_reconcile();
        match &r {
            Ok(rep) => {
                tracing::info!(area = %self.peer.area, peer_name = %self.peer.name, "statelite rw: backup reconciled, area protected: {}", rep.summary())
            }
            // Retried every few seconds: logged when the reason changes.
            Err(e) if prev.is_some_and(|p| p.result.as_ref().err() == Some(e)) => {
                tracing::debug!(area = %self.peer.area, "statelite rw: reconciliation failed again: {e}")
            }
            Err(e) => {
                tracing::warn!(area = %self.peer.area, peer = %self.peer.addr, "statelite rw: reconciliation failed: {e}")
            }
        }
        if let Ok(mut l) = self.last.lock() {
            *l = Some(Reconciled { at: SystemTime::now(), result: r.clone() });
        }
        if let (Err(e), Ok(mut s)) = (&r, self.since.lock()) {
            if let Some((_, why)) = s.as_mut() {
                if !why.contains("reconciliation failed") {
                    *why = format!("{why}; reconciliation failed: {e}");
                } else if let Some(i) = why.find("; reconciliation failed: ") {
                    why.truncate(i);
                    why.push_str(&format!("; reconciliation failed: {e}"));
                }
            }
        }
        r
    }

    fn reconcile_blocking(&self) -> Result<Report, String> {
        let t0 = Instant::now();
        let mut att = self.attached.lock().map_err(|_| "poisoned".to_string())?;
        let att = att.as_mut().ok_or("not started")?;
        let fs = AreaFs(att.fs.upgrade().ok_or("the area is no longer served")?);
        let t = self.peer.timeout;
        let mut s = match self.rt.block_on(tokio::time::timeout(t, Self::dial(&self.peer))) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("dialling the backup {}: {e}", self.peer.addr)),
            Err(_) => {
                return Err(format!("dialling the backup {}: no answer within {} ms", self.peer.addr, t.as_millis()))
            }
        };
        let mut report = Report::default();
        let add = |r: &mut Report, p: &resync::Pass| {
            r.passes += 1;
            r.entries += p.entries;
            r.files_sent += p.files_sent;
            r.deltas += p.deltas;
            r.bytes_sent += p.bytes_sent;
            r.deleted += p.deleted;
        };
        for _ in 0..LIVE_PASSES {
            let p = self
                .rt
                .block_on(tokio::time::timeout(
                    LIVE_PASS_LIMIT,
                    resync::primary_pass(&mut s, &att.root, &mut att.scanner),
                ))
                .map_err(|_| "a pass took over an hour".to_string())?
                .map_err(|e| format!("pass: {e}"))?;
            add(&mut report, &p);
            if p.equal || (p.files_sent + p.deleted <= SMALL_PASS_FILES && p.bytes_sent <= SMALL_PASS_BYTES) {
                break;
            }
        }
        // The final pass: no change is applied (nor handed to `replicate`) while it runs.
        let held = fs.hold_changes().map_err(|e| format!("holding changes: {e:?}"))?;
        // The role changes only under that lock: a demotion during the live passes is seen here,
        // and a standby never resumes the stream.
        if !fs.role().serves() {
            return Err(STANDBY.into());
        }
        let h0 = Instant::now();
        let p = self.rt.block_on(tokio::time::timeout(t, resync::primary_pass(&mut s, &att.root, &mut att.scanner)));
        let p = match p {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(format!("final pass: {e}")),
            Err(_) => {
                return Err(format!("the final pass took over {} ms (clients were held that long)", t.as_millis()))
            }
        };
        add(&mut report, &p);
        if !p.equal {
            return Err(match p.failed {
                Some(f) => format!("the backup could not apply the final pass: {f}"),
                None => format!("the trees differ after the final pass (backup at {})", p.digest),
            });
        }
        {
            let mut link = self.link.lock().map_err(|_| "poisoned".to_string())?;
            link.conn = Some(s);
            link.seq = 0;
        }
        self.lag.caught_up();
        if let Ok(mut w) = self.since.lock() {
            *w = None;
        }
        self.protected.store(true, Ordering::SeqCst);
        report.held = h0.elapsed();
        drop(held);
        report.digest = p.digest;
        report.duration = t0.elapsed();
        Ok(report)
    }
}

impl Replicate for Replicator {
    fn replicate(&self, op: &Op) -> Result<(), nfsstat3> {
        self.lag.queued(op.data_len() as u64);
        if !self.protected() || !self.serving() {
            return Ok(());
        }
        let mut link = self.link.lock().map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)?;
        let t = self.peer.timeout;
        link.seq += 1;
        let seq = link.seq;
        let r = match link.conn.as_mut() {
            Some(conn) => match self.rt.block_on(tokio::time::timeout(t, Self::ship(conn, seq, op))) {
                Ok(Ok(())) => {
                    if op.synchronous() {
                        // Acknowledged: everything before it in the stream is applied too.
                        self.lag.caught_up();
                    }
                    return Ok(());
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", t.as_millis()),
            },
            None => "no connection".to_string(),
        };
        link.conn = None;
        drop(link);
        self.degrade(r);
        Ok(())
    }

    fn role_changed(&self, was: crate::rw::Role, now: crate::rw::Role) {
        match (was.serves(), now.serves()) {
            (true, false) => self.stop_sending(now),
            (false, true) => {
                // Reconcile the peer at once (it must be in standby to accept: a promoted peer
                // refuses, so two serving sides never apply each other's streams).
                self.serving.store(true, Ordering::SeqCst);
                self.kick.store(true, Ordering::SeqCst);
                self.wake.notify_one();
            }
            _ => {}
        }
    }
}

impl Replicator {
    /// Leaving service (a release of the service address): everything sent is made applied and
    /// durable on the peer (a synchronous in-sync mark after it, acknowledged), then the stream
    /// is closed and nothing more is sent. Called under the area's change lock.
    fn stop_sending(&self, now: crate::rw::Role) {
        self.serving.store(false, Ordering::SeqCst);
        let Ok(mut guard) = self.link.lock() else { return };
        let link = &mut *guard;
        let t = self.peer.timeout;
        if let (true, Some(conn)) = (self.protected(), link.conn.as_mut()) {
            link.seq += 1;
            let seq = link.seq;
            let mark = in_sync_mark();
            match self.rt.block_on(tokio::time::timeout(t, Self::ship(conn, seq, &mark))) {
                Ok(Ok(())) => {
                    self.lag.caught_up();
                    tracing::info!(area = %self.peer.area, peer_name = %self.peer.name, role = now.as_str(),
                        "statelite rw: stream flushed (every change applied on the peer) and closed");
                }
                Ok(Err(e)) => tracing::warn!(area = %self.peer.area, peer_name = %self.peer.name,
                    "statelite rw: flushing the stream before standby: {e}"),
                Err(_) => tracing::warn!(area = %self.peer.area, peer_name = %self.peer.name,
                    "statelite rw: flushing the stream before standby: no answer within {} ms", t.as_millis()),
            }
        }
        link.conn = None;
        drop(guard);
        self.protected.store(false, Ordering::SeqCst);
        if let Ok(mut s) = self.since.lock() {
            *s = Some((Instant::now(), STANDBY.into()));
        }
        self.wake.notify_one();
    }
}

/// The backup's side of an area, as `hanfs status` shows it.
#[derive(Default)]
pub struct BackupState {
    /// The stream now connected (0: none).
    live: AtomicU64,
    last: Mutex<Option<Reconciled>>,
}

impl BackupState {
    pub fn status(&self) -> AreaStatus {
        let last = self.last.lock().ok().and_then(|l| l.clone());
        let live = self.live.load(Ordering::SeqCst) != 0;
        let reason = match (&last, live) {
            (_, false) => Some("no stream from the primary".to_string()),
            (None, true) => Some("not reconciled by the primary yet".to_string()),
            (Some(Reconciled { result: Err(e), .. }), true) => Some(format!("the last pass failed: {e}")),
            (Some(_), true) => None,
        };
        AreaStatus {
            role: Role::Backup,
            protected: reason.is_none(),
            reason,
            lag: Lag::default(),
            last_reconcile: last,
        }
    }
}

/// The backup's end: a listener applying each area stream it accepts to `fs`. Dropping it
/// closes the listener and every stream.
pub struct ReplicaServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    applied: Arc<AtomicU64>,
    state: Arc<BackupState>,
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

    /// The backup's status, shared (it outlives nothing: read it while the server runs).
    pub fn state(&self) -> Arc<BackupState> {
        self.state.clone()
    }

    /// When the last [`in_sync_mark`] was applied here: the copy held everything the primary
    /// had seen then.
    pub fn in_sync_at(&self) -> Option<std::time::SystemTime> {
        self.marked.lock().ok().and_then(|m| *m)
    }

    /// A handle on [`Self::in_sync_at`] for whoever reports it (the agent's status session).
    pub fn marks(&self) -> InSyncMarks {
        InSyncMarks(self.marked.clone())
    }
}

/// When a backup last applied an in-sync mark ([`ReplicaServer::marks`]).
#[derive(Clone)]
pub struct InSyncMarks(Arc<Mutex<Option<std::time::SystemTime>>>);

impl InSyncMarks {
    pub fn at(&self) -> Option<std::time::SystemTime> {
        self.0.lock().ok().and_then(|m| *m)
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
    let state = Arc::new(BackupState::default());
    let scanner = resync::scanner(fs.root_fd())?;
    let marked = Arc::new(Mutex::new(None));
    let ctx = Arc::new(Ctx {
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
        area,
        fs,
        current: AtomicU64::new(0),
        applied: applied.clone(),
        state: state.clone(),
        scanner: Mutex::new(Some(scanner)),
        serial: tokio::sync::Mutex::new(()),
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
    Ok(ReplicaServer { local_addr, task, applied, state, marked })
}

type Scanner = (OwnedFd, tree::Scanner);

struct Ctx {
    acceptor: tokio_rustls::TlsAcceptor,
    area: String,
    fs: AreaFs,
    current: AtomicU64,
    applied: Arc<AtomicU64>,
    state: Arc<BackupState>,
    scanner: Mutex<Option<Scanner>>,
    serial: tokio::sync::Mutex<()>,
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
            Msg::Hello { version: VERSION, ref area } if *area == self.area && !self.fs.accepts_stream() => {
                let reason = format!("`{area}` was taken over here (promoted): the old primary's stream is refused");
                let _ = send(&mut s, &Msg::Refused { reason: reason.clone() }).await;
                return Err(std::io::Error::other(reason));
            }
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
            m => return Err(invalid(format!("expected Hello, got {}", resync::kind(&m)))),
        }
        let me = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.live.store(me, Ordering::SeqCst);
        tracing::info!(area = %self.area, "statelite rw: replication stream accepted");
        let r = self.entries(s, me).await;
        let _ = self.state.live.compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst);
        r
    }

    async fn entries(&self, mut s: tokio_rustls::server::TlsStream<TcpStream>, me: u64) -> std::io::Result<()> {
        let mut last = 0u64;
        loop {
            let m = match recv(&mut s).await {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            // One stream at a time changes the tree: an entry of an older stream still in
            // flight is applied before a newer stream's pass starts, or not at all.
            let _one = self.serial.lock().await;
            if self.current.load(Ordering::SeqCst) != me {
                return Err(std::io::Error::other("superseded by a newer stream"));
            }
            let (seq, op) = match m {
                Msg::Entry { seq, op } => (seq, op),
                Msg::Scan => {
                    s = self.pass(s).await?;
                    continue;
                }
                m => return Err(invalid(format!("expected an Entry, got {}", resync::kind(&m)))),
            };
            if seq != last + 1 {
                return Err(invalid(format!("entry {seq} after entry {last}: the stream is out of order")));
            }
            last = seq;
            let sync = op.synchronous();
            let mark = op == in_sync_mark();
            let fs = self.fs.clone();
            let r = tokio::task::spawn_blocking(move || fs.apply_from_primary(&op))
                .await
                .unwrap_or(Err(nfsstat3::NFS3ERR_SERVERFAULT));
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

    /// One resynchronisation pass ([`resync::backup_pass`]) on a blocking thread, then the id
    /// map re-read so the entries that follow find the files it made.
    async fn pass<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(&self, mut s: S) -> std::io::Result<S> {
        let mut sc = self
            .scanner
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .ok_or_else(|| std::io::Error::other("a pass is already running"))?;
        let (fs, rt) = (self.fs.clone(), tokio::runtime::Handle::current());
        let (s, sc, r) = tokio::task::spawn_blocking(move || {
            let r = rt.block_on(resync::backup_pass(&mut s, &sc.0, &mut sc.1));
            fs.rewalk();
            (s, sc, r)
        })
        .await
        .map_err(std::io::Error::other)?;
        if let Ok(mut g) = self.scanner.lock() {
            *g = Some(sc);
        }
        let outcome = match &r {
            Ok(o) => o.clone(),
            Err(e) => Err(e.to_string()),
        };
        if let Ok(mut l) = self.state.last.lock() {
            *l = Some(Reconciled {
                at: SystemTime::now(),
                result: outcome.map(|digest| Report { digest, ..Report::default() }),
            });
        }
        r.map(|_| s)
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
