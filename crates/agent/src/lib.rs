//! The hanfs agent (one per SN): accepts controller sessions (mutual TLS, or plain TCP on loopback when
//! configured), applies change plans to replicas through the tree engine, writes exports and reloads NFS.
//!
//! Invariants:
//! - It writes only under `root` (replicas, through the tree engine's beneath-the-root file operations),
//!   `state_dir` (replica state, spool) and `exports_file`. Image paths from the wire are checked before
//!   use (they arrive as `model::Name`/`model::RelPath`, checked while decoding); the engine refuses
//!   hostile manifests and deltas.
//! - The only mounts it makes are statelite node directories (within `statelite_roots`) bind-mounted
//!   onto themselves (`statelite_mounts`, so kernel nfsd crosses into their own exports).
//! - One agent per replica root: the first to apply records itself in `root/.hanfs/agent`, another is
//!   refused (xCAT `site.sharedinstall=sns`: one shared installdir on every SN).
//! - One session at a time per image (a lock per image name); a replica is always at a whole generation.
//! - A replica changed behind the agent's back is reported `drifted` at the next `Open`: rescanned then,
//!   unless its drift watch (`drift.rs`, armed before the last rescan that found it whole) saw nothing.
//! - A protocol violation (malformed, oversized or unexpected frame, bad path) ends the session with a
//!   logged reason; what was staged is discarded by the engine, what was spooled is kept for a resume.
//! - Memory is bounded: bulk data goes to the spool on disk chunk by chunk before the next frame is read.
//! - A floating service address is claimed or released only on `takeover_interface` and only inside
//!   `takeover_allowed`; without `takeover_interface` every `Claim`/`Release` is refused with the reason.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod address;
mod drift;
mod error;
pub mod kwatch;
mod mounts;
mod owner;
mod relay;
mod session;
mod spool;
mod statelite;
#[cfg(feature = "test-support")]
pub mod testing;

pub use error::Error;

use anyhow::Context;
use error::Result;
use model::AgentConfig;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Per-frame I/O timeout inside a session.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an idle session may wait for the controller's next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Agent {
    pub cfg: AgentConfig,
    /// Who this agent is: its certificate's name, or `agent@<listen>` on plain loopback.
    pub name: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The drift watch of each image replica (`drift.rs`): while it saw nothing, `Open` needs no rescan.
    drift: drift::Watches,
    /// Full rescans at `Open` so far (tests tell a watched `Open` from a rescanned one).
    rescans: Arc<std::sync::atomic::AtomicU64>,
    /// Most inodes one image's drift watch may take (None: a share of the user's inotify limit).
    watch_limit: Option<u64>,
    /// The exclusive lock on `state_dir`, held for the agent's lifetime (released by the kernel
    /// when the process ends, however it ends).
    _state_lock: std::fs::File,
    /// Image commits go through it, so NFSv3 clients see each as one step (no server: a no-op).
    nfs3: nfs3::Switch,
    /// End the embedded servers' (read-only and read-write) connections to a released service
    /// address.
    nfs3_closers: Vec<nfs3::Closer>,
    /// Floating service addresses (`Claim`/`Release`), opened on the first of them.
    takeover: tokio::sync::OnceCell<takeover::Takeover>,
    /// The replication of each read-write statelite area (`StateliteRwStatus`), set by `bind`.
    statelite_rw: Vec<(model::AbsPath, RwArea)>,
    /// Read-write areas that follow a service address: promoted when it is claimed here, back
    /// in standby when it is released.
    rw_follow: Vec<RwFollow>,
    /// The kernel-nfsd areas (`StateliteKernelStatus`), set by `bind`.
    statelite_kernel: Vec<(model::AbsPath, KernelEnd)>,
    /// Relay fan-out: the runs this agent relays (`relay_listen` set), and its client identity
    /// for fetching from a parent relay (None on plain TCP).
    relays: Option<Arc<relay::Relays>>,
    relay_client: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    relay_tls: Option<tokio_rustls::TlsAcceptor>,
}

/// One end of a kernel-nfsd area's continuous copy.
#[derive(Clone)]
pub(crate) enum KernelEnd {
    Primary(kwatch::LagProbe),
    Backup(nfs3::replica::InSyncMarks),
}

/// One end of a read-write area's replication stream.
#[derive(Clone)]
pub(crate) enum RwArea {
    Primary(Arc<nfs3::replica::Replicator>),
    Backup(Arc<nfs3::replica::BackupState>),
    /// Both ends (a symmetric pair following a service address): the primary's while the area
    /// is served here, the backup's in standby.
    Pair(Arc<nfs3::replica::Replicator>, Arc<nfs3::replica::BackupState>, Arc<nfs3::RwServer>),
}

impl RwArea {
    pub(crate) fn status(&self) -> nfs3::replica::AreaStatus {
        match self {
            RwArea::Primary(r) => r.status(),
            RwArea::Backup(b) => b.status(),
            RwArea::Pair(r, _, srv) if srv.role().serves() => r.status(),
            // In standby, the lag is what this side served that its peer has not acknowledged:
            // 0 after a release whose flush succeeded (the controller checks it before the claim).
            RwArea::Pair(r, b, _) => nfs3::replica::AreaStatus { lag: r.lag(), ..b.status() },
        }
    }
}

/// A read-write area served only while this agent holds `address` (`[[statelite_rw]]
/// service_address`).
pub(crate) struct RwFollow {
    pub area: String,
    pub address: takeover::ipnet::IpNet,
    pub server: Arc<nfs3::RwServer>,
}

/// Takes the exclusive lock on the state directory, refusing when another agent holds it: two
/// agents on one state dir would recover, commit and clean up each other's replicas.
fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    let holder_err = |holder: &str, p: &std::path::Path| Error::StateDirInUse {
        dir: dir.display().to_string(),
        holder: if holder.is_empty() { String::new() } else { format!(" (pid {holder})") },
        lock: p.display().to_string(),
    };
    use std::io::{Seek, Write};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join("lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let holder = std::fs::read_to_string(&p).unwrap_or_default();
            return Err(holder_err(holder.trim(), &p));
        }
        Err(e) => return Err(std::io::Error::from(e)).with_context(|| format!("locking {}", p.display()))?,
    }
    // Who holds it, for the next one's error message.
    let _ = f.set_len(0).and_then(|_| f.rewind()).and_then(|_| writeln!(f, "{}", std::process::id()));
    Ok(f)
}

impl Agent {
    /// Locks the state dir, sets up TLS, and finishes (rolls forward or discards) whatever a crash
    /// left in every replica, so nothing is listened on or served before each is at a whole generation.
    pub fn new(cfg: AgentConfig) -> Result<Agent> {
        let state_lock = lock_state_dir(std::path::Path::new(cfg.state_dir.as_str()))?;
        let (mut relay_client, mut relay_tls) = (None, None);
        let (tls, name) = match &cfg.tls {
            Some(f) => {
                let id = transport::Identity::from_files(f)?;
                let acc = tokio_rustls::TlsAcceptor::from(id.server_config(&cfg.controller)?);
                relay_client = Some(id.client_config()?);
                if cfg.relay_listen.is_some() {
                    relay_tls = Some(tokio_rustls::TlsAcceptor::from(id.relay_server_config()?));
                }
                (Some(acc), id.name)
            }
            None if cfg.plaintext_loopback && cfg.listen.ip().is_loopback() => (None, format!("agent@{}", cfg.listen)),
            None => {
                return Err(anyhow::anyhow!(
                    "the agent needs [tls] unless it listens on loopback with plaintext_loopback = true"
                )
                .into())
            }
        };
        let relays = match cfg.relay_listen {
            Some(_) => Some(Arc::new(relay::Relays::new(std::path::Path::new(cfg.state_dir.as_str()))?)),
            None => {
                // No longer a relay: what an earlier process kept for its children goes.
                let _ = std::fs::remove_dir_all(std::path::Path::new(cfg.state_dir.as_str()).join("relay"));
                None
            }
        };
        let agent = Agent {
            relays,
            relay_client,
            relay_tls,
            cfg,
            name,
            tls,
            locks: Default::default(),
            drift: Default::default(),
            rescans: Default::default(),
            watch_limit: None,
            _state_lock: state_lock,
            nfs3: Default::default(),
            nfs3_closers: Vec::new(),
            takeover: Default::default(),
            statelite_rw: Vec::new(),
            rw_follow: Vec::new(),
            statelite_kernel: Vec::new(),
        };
        session::recover_all(&agent);
        statelite::recover_all(&agent);
        mounts::at_start(&agent);
        Ok(agent)
    }

    pub(crate) fn lock(&self, image: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(image.to_string()).or_default().clone()
    }

    /// Where the engine keeps one image's replica state.
    pub fn image_state_dir(&self, image: &str) -> PathBuf {
        PathBuf::from(self.cfg.state_dir.as_str()).join("images").join(image)
    }

    /// Binds the listen address and serves until the process ends (see [`Agent::bind`]).
    pub async fn run(self) -> Result<()> {
        self.bind().await?.serve().await
    }

    /// Binds the listen address (port 0: the kernel picks one, [`Listening::local_addr`] tells
    /// which) and, with `nfs3` configured, starts serving the replica root read-only over NFSv3
    /// with handles that are the same on every SN (crate `nfs3`), so Linux NFS-root clients can
    /// move between SNs. Nothing is served to controllers before [`Listening::serve`].
    pub async fn bind(mut self) -> Result<Listening> {
        let l = TcpListener::bind(self.cfg.listen).await.with_context(|| format!("binding {}", self.cfg.listen))?;
        let addr = l.local_addr().with_context(|| format!("binding {}", self.cfg.listen))?;
        // The relay's own listener (image fan-out): children fetch payloads there, never commands.
        let relay = match (&self.relays, self.cfg.relay_listen) {
            (Some(r), Some(at)) => {
                let rl = TcpListener::bind(at).await.with_context(|| format!("binding relay_listen {at}"))?;
                let port = rl.local_addr().with_context(|| format!("binding relay_listen {at}"))?.port();
                r.set_port(port);
                tracing::info!(relay = %at, port, "relaying image payloads to the children the controller names");
                Some(Aborting(tokio::spawn(relay::serve(r.clone(), rl, self.relay_tls.clone()))))
            }
            _ => None,
        };
        // Kept alive for the agent's lifetime: dropping the handle stops the NFSv3 server.
        let nfs3 = match self.cfg.nfs3 {
            Some(addr) => {
                let root = std::path::Path::new(self.cfg.root.as_str());
                std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
                let srv = nfs3::serve(root, addr, nfs3::Options::default())
                    .await
                    .with_context(|| format!("serving NFSv3 on {addr}"))?;
                tracing::info!(addr = %srv.local_addr(), root = %root.display(), "serving replicas over NFSv3");
                self.nfs3 = srv.switcher();
                self.nfs3_closers.push(srv.closer());
                Some(srv)
            }
            None => None,
        };
        // Read-write statelite areas (issue 13), each on its own port, exported under the area's
        // cluster-wide path (so the handle generation and fsid are the same on its backup).
        let mut rw = Vec::new();
        let mut replicas = Vec::new();
        let mut streams = Vec::new();
        let identity = match &self.cfg.tls {
            Some(f)
                if self.cfg.statelite_rw.iter().any(|a| a.peer.is_some() || a.replica.is_some())
                    || !self.cfg.statelite_kernel.is_empty() =>
            {
                Some(transport::Identity::from_files(f)?)
            }
            _ => None,
        };
        for a in &self.cfg.statelite_rw {
            let dir = self.area_dir(&a.area);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // Who serves it: the holder of its service address; without one, the primary (a
            // backup never serves while the primary does: issue 13 point 3).
            let held = match &a.service_address {
                Some(net) => self.holds(net.addr()).await,
                None => a.replica.is_none(),
            };
            let opts =
                nfs3::RwOptions { export_name: Some(a.area.as_str().to_string()), insecure: false, standby: !held };
            // Primary: every change goes to the backup before the client is answered.
            let replicator = match (&a.peer, &identity) {
                (Some(p), Some(id)) => {
                    let peer = nfs3::replica::Peer {
                        addr: p.addr.clone(),
                        name: p.name.clone(),
                        area: a.area.as_str().to_string(),
                        timeout: Duration::from_millis(p.timeout_ms),
                        tls: id.client_config()?,
                    };
                    Some(nfs3::replica::Replicator::new(peer, tokio::runtime::Handle::current()))
                }
                _ => None,
            };
            let rep = replicator.clone().map(|r| r as Arc<dyn nfs3::rw::Replicate>);
            let srv = nfs3::serve_rw(&dir, a.listen, opts, rep)
                .await
                .with_context(|| format!("serving statelite area {} read-write on {}", a.area.as_str(), a.listen))?;
            if held && a.service_address.is_some() {
                // It holds the address already (a restart while promoted): the primary's stream,
                // if any is still sent, is refused as after a claim.
                srv.promote().await.with_context(|| format!("promoting statelite area {}", a.area.as_str()))?;
            }
            let srv = Arc::new(srv);
            tracing::info!(
                area = a.area.as_str(),
                listen = %srv.local_addr(),
                dir = %dir.display(),
                role = srv.role().as_str(),
                service_address = %a.service_address.map_or_else(|| "-".to_string(), |n| n.to_string()),
                "statelite area read-write over NFSv3"
            );
            if let Some(address) = a.service_address {
                self.rw_follow.push(RwFollow { area: a.area.as_str().to_string(), address, server: srv.clone() });
            }
            self.nfs3_closers.push(srv.closer());
            let mut primary = None;
            if let Some(r) = replicator {
                tracing::info!(area = a.area.as_str(), peer = %r.peer().addr, peer_name = %r.peer().name, "statelite area replicated synchronously to its backup");
                // Reconciles the backup before clients are served changes (bounded by the
                // peer timeout when the backup is away; then retried in the background). In
                // standby (a symmetric pair's side without the address) nothing is sent until
                // a claim puts the area in service.
                let first = r.start(srv.fs()).await.with_context(|| format!("replicating {}", a.area.as_str()))?;
                match &first.result {
                    Err(e) if !r.serving() => {
                        tracing::info!(area = a.area.as_str(), "statelite area sends nothing: {e}")
                    }
                    Err(e) => tracing::warn!(area = a.area.as_str(), "statelite area starts unprotected: {e}"),
                    Ok(_) => {}
                }
                streams.push((a.area.as_str().to_string(), r.clone()));
                primary = Some(r);
            }
            // Backup: the primary's stream, on a listener of its own (the control port keeps
            // accepting the controller only), applied to the area this agent serves.
            if let (Some(r), Some(id)) = (&a.replica, &identity) {
                let tls = id.server_config(&r.primary)?;
                let rs = nfs3::replica::serve_replica(r.listen, tls, a.area.as_str().to_string(), srv.fs().clone())
                    .await
                    .with_context(|| format!("accepting the replication of {} on {}", a.area.as_str(), r.listen))?;
                let end = match primary.take() {
                    Some(p) => RwArea::Pair(p, rs.state(), srv.clone()),
                    None => RwArea::Backup(rs.state()),
                };
                self.statelite_rw.push((a.area.clone(), end));
                replicas.push((a.area.as_str().to_string(), rs));
            }
            if let Some(p) = primary {
                self.statelite_rw.push((a.area.clone(), RwArea::Primary(p)));
            }
            rw.push(srv);
        }
        // Areas kernel nfsd serves (issue 13 point 4): watched and copied as they change.
        let mut kernel = Vec::new();
        let mut kernel_replicas = Vec::new();
        for k in &self.cfg.statelite_kernel {
            let area = k.area.as_str().to_string();
            let dir = self.area_dir(&k.area);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let Some(id) = &identity else { continue };
            if let Some(r) = &k.replica {
                let d = dir.clone();
                let fence = kwatch::fence(PathBuf::from(self.cfg.exports_file.as_str()), self.cfg.dialect, &area);
                let fs = tokio::task::spawn_blocking(move || nfs3::AreaFs::open_path_ids(&d, Some(fence)))
                    .await
                    .map_err(|e| anyhow::anyhow!("opening {}: {e}", dir.display()))?
                    .with_context(|| format!("opening {}", dir.display()))?;
                let tls = id.server_config(&r.primary)?;
                let rs = nfs3::replica::serve_replica(r.listen, tls, area.clone(), fs)
                    .await
                    .with_context(|| format!("accepting the copy of {area} on {}", r.listen))?;
                self.statelite_kernel.push((k.area.clone(), KernelEnd::Backup(rs.marks())));
                kernel_replicas.push((area.clone(), rs));
            }
            if let Some(p) = &k.peer {
                let peer = nfs3::replica::Peer {
                    addr: p.addr.clone(),
                    name: p.name.clone(),
                    area: area.clone(),
                    timeout: Duration::from_millis(p.timeout_ms),
                    tls: id.client_config()?,
                };
                let setup = kwatch::Setup {
                    area: area.clone(),
                    dir,
                    exports_file: PathBuf::from(self.cfg.exports_file.as_str()),
                    dialect: self.cfg.dialect,
                    peer,
                    debounce: Duration::from_millis(p.debounce_ms),
                    reconcile: Duration::from_secs(p.reconcile_secs),
                };
                let w = kwatch::start(setup, tokio::runtime::Handle::current())
                    .with_context(|| format!("watching statelite area {area}"))?;
                self.statelite_kernel.push((k.area.clone(), KernelEnd::Primary(w.probe())));
                kernel.push(w);
            }
        }
        Ok(Listening {
            agent: self,
            listener: l,
            addr,
            _relay: relay,
            _nfs3: nfs3,
            _rw: rw,
            _replicas: replicas,
            streams,
            kernel,
            kernel_replicas,
        })
    }

    /// Where a statelite area's data lives on this SN (under `statelite_prefix` when set).
    fn area_dir(&self, area: &model::AbsPath) -> PathBuf {
        match &self.cfg.statelite_prefix {
            Some(pre) => PathBuf::from(pre.as_str()).join(area.as_str().trim_start_matches('/')),
            None => PathBuf::from(area.as_str()),
        }
    }

    /// Whether this host holds `addr` now (on any interface of the agent's namespace); a failure
    /// to ask counts as no (the area stays in standby, and a claim promotes it).
    async fn holds(&self, addr: std::net::IpAddr) -> bool {
        let t = match self.takeover.get_or_try_init(|| async { takeover::Takeover::new() }).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%addr, "cannot tell whether this host holds {addr} ({e}): its areas start in standby");
                return false;
            }
        };
        match t.holds(addr).await {
            Ok(h) => h.is_some(),
            Err(e) => {
                tracing::warn!(%addr, "cannot tell whether this host holds {addr} ({e}): its areas start in standby");
                false
            }
        }
    }

    /// Serves controller sessions on `l` until the process ends.
    pub async fn serve(self, l: TcpListener) -> Result<()> {
        std::fs::create_dir_all(self.cfg.state_dir.as_str())
            .with_context(|| format!("creating {}", self.cfg.state_dir.as_str()))?;
        tracing::info!(agent = %self.name, listen = %l.local_addr()?, tls = self.tls.is_some(), "agent listening");
        let me = Arc::new(self);
        loop {
            let (tcp, addr) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = me.clone();
            tokio::spawn(async move {
                let conn = match transport::accept(tcp, me.tls.as_ref(), FRAME_TIMEOUT).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("session from {addr} refused: {e}");
                        return;
                    }
                };
                let peer = conn.peer.clone();
                match session::run(&me, conn).await {
                    Ok(()) => tracing::info!("session with {peer} closed"),
                    Err(e) => tracing::warn!("session with {peer} ended: {e:#}"),
                }
            });
        }
    }
}

/// A task stopped when this is dropped (the relay listener goes with its agent).
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An agent bound to its address, not yet serving controllers.
pub struct Listening {
    agent: Agent,
    listener: TcpListener,
    addr: std::net::SocketAddr,
    _relay: Option<Aborting>,
    _nfs3: Option<nfs3::Nfs3Server>,
    _rw: Vec<Arc<nfs3::RwServer>>,
    _replicas: Vec<(String, nfs3::replica::ReplicaServer)>,
    /// The areas this agent is the primary of, with their stream to the backup.
    streams: Vec<(String, Arc<nfs3::replica::Replicator>)>,
    /// Kernel-nfsd areas this agent copies to their backup as they change.
    kernel: Vec<kwatch::KernelWatch>,
    /// Kernel-nfsd areas this agent holds the copy of.
    kernel_replicas: Vec<(String, nfs3::replica::ReplicaServer)>,
}

impl Listening {
    /// The address really bound (the port the kernel chose for port 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The address the embedded NFSv3 server really bound (`nfs3` may give port 0); `None`
    /// without `nfs3`.
    pub fn nfs3_addr(&self) -> Option<std::net::SocketAddr> {
        self._nfs3.as_ref().map(nfs3::Nfs3Server::local_addr)
    }

    /// The read-write areas this agent replicates to a backup, and whether each is unprotected
    /// (not reconciled yet, or the backup missed a change: it was unreachable, refused the
    /// stream or did not answer in `peer_timeout_ms`; reconciled again when it is back, see
    /// `nfs3::replica`). A symmetric pair's side in standby sends nothing: unprotected here.
    pub fn statelite_rw_unprotected(&self) -> Vec<(String, bool)> {
        self.streams.iter().map(|(a, r)| (a.clone(), r.unprotected())).collect()
    }

    /// The primary's stream of `area`, if this agent is its primary.
    pub fn statelite_rw_replicator(&self, area: &str) -> Option<Arc<nfs3::replica::Replicator>> {
        self.streams.iter().find(|(a, _)| a == area).map(|(_, r)| r.clone())
    }

    /// The role of `area`'s read-write server now (served, standby, promoted).
    pub fn statelite_rw_role(&self, area: &str) -> Option<nfs3::rw::Role> {
        self._rw.iter().find(|s| s.export_name() == area).map(|s| s.role())
    }

    /// Replication lag of each kernel-nfsd area this agent is the primary of.
    pub fn statelite_kernel_lag(&self) -> Vec<kwatch::KernelLag> {
        self.kernel.iter().map(kwatch::KernelWatch::lag).collect()
    }

    /// The watcher of kernel-nfsd area `area` (tests: its hooks, an injected overflow).
    #[cfg(feature = "test-support")]
    pub fn statelite_kernel_watch(&self, area: &str) -> Option<&kwatch::KernelWatch> {
        self.kernel.iter().find(|k| k.lag().area == area)
    }

    /// Where the copy of kernel-nfsd area `area` (this agent its backup) is accepted.
    pub fn statelite_kernel_replica_addr(&self, area: &str) -> Option<std::net::SocketAddr> {
        self.kernel_replicas.iter().find(|(a, _)| a == area).map(|(_, r)| r.local_addr())
    }

    /// This agent holds the copy of `area`: when it was last known equal to the primary's
    /// (the primary's last in-sync mark), the data age a failover report gives.
    pub fn statelite_kernel_in_sync(&self, area: &str) -> Option<std::time::SystemTime> {
        self.kernel_replicas.iter().find(|(a, _)| a == area).and_then(|(_, r)| r.in_sync_at())
    }

    /// The address the read-write server of `area` is bound to.
    pub fn statelite_rw_addr(&self, area: &str) -> Option<std::net::SocketAddr> {
        self._rw.iter().find(|s| s.export_name() == area).map(|s| s.local_addr())
    }

    /// The address the replication listener of `area` (this agent its backup) is bound to.
    pub fn statelite_rw_replica_addr(&self, area: &str) -> Option<std::net::SocketAddr> {
        self._replicas.iter().find(|(a, _)| a == area).map(|(_, r)| r.local_addr())
    }

    /// Serves until the process ends.
    pub async fn serve(self) -> Result<()> {
        let Listening { agent, listener, _nfs3, _rw, _replicas, kernel: _kernel, kernel_replicas: _kr, _relay, .. } =
            self;
        agent.serve(listener).await
    }

    /// [`Self::serve`] until SIGTERM (systemd, a parent) or SIGINT: then it stops accepting; the
    /// engine keeps every replica at a whole generation whenever the process ends.
    pub async fn serve_until_signal(self) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            r = self.serve() => r,
            _ = term.recv() => { tracing::info!("agent stopping on SIGTERM"); Ok(()) }
            _ = tokio::signal::ctrl_c() => { tracing::info!("agent stopping on SIGINT"); Ok(()) }
        }
    }
}
