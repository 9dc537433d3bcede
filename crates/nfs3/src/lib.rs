//! hanfs' embedded read-only NFSv3 server (NFS + MOUNT + portmap on one TCP port).
//!
//! Serves a replica tree with file handles that are the same on every service node holding the
//! same tree: a handle (and the fileid) is a hash of the file's path inside the export, not of
//! local inode numbers, and the generation baked into handles is derived from the export name,
//! not from the server's start time. A Linux NFS-root node can therefore be moved from one SN to
//! another (IP takeover, DNS, or a mount from the backup) and keep using the handles it holds.
//! See [`index`] for the scheme and [`fs`] for how reads stay beneath the root.
//!
//! What a deployment must know:
//! - Every SN must serve the same export name (it seeds the fsid and the handle generation);
//!   the default, the root's path, is the same wherever the agents' `root` is the same.
//! - NFS, MOUNT and portmap share the one TCP port; there is no UDP and no listener on 111,
//!   and no lockd: clients mount with `vers=3,proto=tcp,port=P,mountport=P,mountproto=tcp,nolock`
//!   (an NFS root is `nolock` already).
//! - Permissions are nfsd's `sec=sys,secure,no_root_squash`: mode bits against the caller's
//!   AUTH_UNIX ids, root reads everything, clients must use privileged ports (see
//!   [`Options::check_permissions`], [`Options::insecure`]).
//! - A file replaced in the tree keeps its handle (same path): a client holding it open reads
//!   the new content, where kernel nfsd would answer ESTALE.
//! - Whoever commits a new generation of the tree does it through [`Switch::switch`]: no NFS
//!   operation overlaps the commit, so clients see the whole old or the whole new generation,
//!   and an operation that would wait longer than [`Options::switch_wait`] is answered
//!   `NFS3ERR_JUKEBOX` (retry later); see [`gate`].
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! let server = nfs3::serve(
//!     std::path::Path::new("/install"),
//!     "0.0.0.0:2049".parse().unwrap(),
//!     nfs3::Options::default(),
//! )
//! .await?;
//! println!("NFSv3 on {}", server.local_addr());
//! # Ok(()) }
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod fs;
pub mod gate;
mod guard;
pub mod index;
pub mod oplog;
pub mod replica;
pub mod resync;
pub mod rw;
mod rwcall;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nfs3_server::tcp::{NFSTcp, NFSTcpListener};

pub use fs::ReplicaFs;
pub use index::Fh;
pub use rw::AreaFs;

/// Server settings. `Default` is what the agent wants.
#[derive(Debug, Clone)]
pub struct Options {
    /// The path clients mount (`MNT`), e.g. `/install`; subdirectories of it can be mounted
    /// too. Default: the root's own path, so mounts look like the kernel server's.
    pub export_name: Option<String>,
    /// The `fsid` reported in attributes. Default: derived from the export name, so it is the
    /// same on every SN whatever the local path or device of the replica.
    pub fsid: Option<u64>,
    /// Walk the tree into the handle index in the background on start (so a failed-over client's
    /// first unknown handle does not wait for a walk). Default: true.
    pub walk_on_start: bool,
    /// Report ctime = mtime. Local ctimes differ between replicas (they record when the tree
    /// engine wrote the file, not when the source changed), and a Linux client that sees ctime
    /// change drops its page cache of the file; the tree engine carries mtimes, so mtime alone
    /// says when content changed. Default: true.
    pub stable_ctime: bool,
    /// Enforce per-user permissions (mode bits against the caller's AUTH_UNIX uid/gids, root
    /// reads everything) through the RPC guard; see the `guard` module. Without it every
    /// client user can read every file. Default: true.
    pub check_permissions: bool,
    /// Accept clients from unprivileged source ports (kernel nfsd's `insecure`). By default only
    /// ports below 1024 are accepted, as nfsd's `secure` does: AUTH_UNIX credentials are the
    /// client's word, and only root on a client can bind such a port, so an ordinary user on a
    /// node cannot claim to be root. Needs `check_permissions` (the guard does the check).
    /// Default: false.
    pub insecure: bool,
    /// Longest an NFS operation waits for a commit running through [`Switch::switch`] before it
    /// is answered `NFS3ERR_JUKEBOX`, which clients retry (the Linux client after 5 s). Default:
    /// [`fs::SWITCH_WAIT`] (2 s), well above a commit's rename burst on a real image.
    pub switch_wait: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            export_name: None,
            fsid: None,
            walk_on_start: true,
            stable_ctime: true,
            check_permissions: true,
            insecure: false,
            switch_wait: fs::SWITCH_WAIT,
        }
    }
}

fn hash64(domain: &[u8], data: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(domain);
    h.update(data);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// The fsid of an export name (what [`Options::fsid`] defaults to).
pub fn fsid_of(export_name: &str) -> u64 {
    hash64(b"hanfs-nfs3-fsid-v1\0", normalize_export(export_name).as_bytes())
}

/// The handle generation of an export name: the 8 bytes the NFS layer puts before every handle.
/// Constant for an export, so handles survive restarts and fail over between SNs.
pub fn generation_of(export_name: &str) -> u64 {
    // Kept below 2^63 so no client-side signedness can trip over it.
    hash64(b"hanfs-nfs3-gen-v1\0", normalize_export(export_name).as_bytes()) >> 1
}

fn normalize_export(name: &str) -> String {
    format!("/{}", name.trim_matches('/'))
}

/// A running server. Dropping it (or [`Nfs3Server::stop`]) stops accepting connections and,
/// behind the permission guard (the default), closes the open ones; without the guard, open
/// connections are served until their clients close them.
pub struct Nfs3Server {
    local_addr: SocketAddr,
    backend_addr: SocketAddr,
    export_name: String,
    root: PathBuf,
    fs: ReplicaFs,
    tasks: Vec<tokio::task::JoinHandle<io::Result<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
    released: Closer,
}

/// Ends the guarded connections clients made to one local address: the agent calls it once it
/// has released a floating service address, so no connection of the address's former life is
/// left here (when the address comes back, the clients' packets meet no stale socket). Cheap to
/// clone; `Closer::default()` (no server, or no guard) ends nothing.
#[derive(Clone, Default)]
pub struct Closer(Option<std::sync::Arc<tokio::sync::watch::Sender<std::collections::HashMap<std::net::IpAddr, u64>>>>);

impl Closer {
    /// Ends (resets) every guarded connection whose local address is `ip`.
    pub fn close_connections_to(&self, ip: std::net::IpAddr) {
        if let Some(tx) = &self.0 {
            tx.send_modify(|m| *m.entry(ip.to_canonical()).or_default() += 1);
        }
    }
}

impl Nfs3Server {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The export path clients mount.
    pub fn export_name(&self) -> &str {
        &self.export_name
    }

    /// Where the NFS layer itself listens: `local_addr` without the permission guard, else a
    /// loopback port that refuses every call the guard did not stamp. For tests.
    #[doc(hidden)]
    pub fn backend_addr(&self) -> SocketAddr {
        self.backend_addr
    }

    /// The served directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file system (handle index statistics, a forced walk).
    pub fn fs(&self) -> &ReplicaFs {
        &self.fs
    }

    /// What the tree engine's caller commits through, so the commit is one step for clients.
    pub fn switcher(&self) -> Switch {
        Switch(Some(self.fs.clone()))
    }

    /// What ends the connections to one local address (see [`Closer`]).
    pub fn closer(&self) -> Closer {
        self.released.clone()
    }

    /// Stops accepting connections.
    pub fn stop(self) {}
}

/// Commits a new generation of a served tree as one step for NFS clients (see [`gate`]).
/// `Switch::default()` serves nothing: it just runs the commit (an agent without `nfs3`).
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Switch(Option<ReplicaFs>);

impl Switch {
    /// Runs `commit` with no NFS operation in progress; operations arriving meanwhile wait for
    /// it. Blocks the calling thread: call it from a blocking context (`spawn_blocking`, as the
    /// agent does, or a plain thread), never on a runtime worker.
    pub fn switch<T>(&self, commit: impl FnOnce() -> T) -> T {
        match &self.0 {
            Some(fs) => fs.switch(commit),
            None => commit(),
        }
    }
}

impl Drop for Nfs3Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.stop.send(true);
    }
}

/// A secret only this process knows (for the guard's stamp).
fn token() -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let mut t = b"hanfs-guard-".to_vec();
    for x in b {
        t.extend_from_slice(format!("{x:02x}").as_bytes());
    }
    Ok(t)
}

/// Serves `root` read-only over NFSv3 on `addr` (NFS, MOUNT and portmap on that one TCP port).
/// Must be called inside a Tokio runtime; the server runs as tasks on it (file system calls on
/// its blocking pool). With [`Options::check_permissions`] (the default) the NFS layer listens
/// on a loopback port behind the permission guard, which alone listens on `addr`.
pub async fn serve(root: &Path, addr: SocketAddr, opts: Options) -> io::Result<Nfs3Server> {
    let export_name =
        normalize_export(&opts.export_name.clone().unwrap_or_else(|| root.to_string_lossy().into_owned()));
    let fsid = opts.fsid.unwrap_or_else(|| fsid_of(&export_name));
    let token = if opts.check_permissions { Some(token()?) } else { None };
    let fs = ReplicaFs::open_with(root, fsid, opts.stable_ctime, token.clone(), opts.switch_wait)
        .map_err(|e| io::Error::new(e.kind(), format!("nfs3: {}: {e}", root.display())))?;
    if opts.walk_on_start {
        let f = fs.clone();
        tokio::task::spawn_blocking(move || f.walk());
    }
    let nfs_addr = match token {
        Some(_) => "127.0.0.1:0".to_string(),
        None if addr.is_ipv6() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("nfs3: {addr}: IPv6 needs check_permissions (the NFS layer binds IPv4 only)"),
            ))
        }
        None => addr.to_string(),
    };
    let mut listener = NFSTcpListener::bind_with_generation(&nfs_addr, fs.clone(), generation_of(&export_name)).await?;
    listener.with_export_name(&export_name);
    let nfs_local = SocketAddr::new(listener.get_listen_ip(), listener.get_listen_port());
    let mut tasks = vec![tokio::spawn(async move { listener.handle_forever().await })];
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (released_tx, released_rx) = tokio::sync::watch::channel(std::collections::HashMap::new());
    let mut released = Closer::default();
    let local_addr = match token {
        None => nfs_local,
        Some(token) => {
            let public = tokio::net::TcpListener::bind(addr).await?;
            let local = public.local_addr()?;
            let policy = std::sync::Arc::new(guard::Policy {
                token,
                insecure: opts.insecure,
                stop: stop_rx,
                released: released_rx,
                public_port: local.port(),
                internal_port: nfs_local.port(),
                rw: None,
                serving: None,
            });
            tasks.push(tokio::spawn(guard::run(public, nfs_local, policy)));
            released = Closer(Some(std::sync::Arc::new(released_tx)));
            local
        }
    };
    tracing::info!(root = %root.display(), export = %export_name, %local_addr, "nfs3: serving read-only");
    Ok(Nfs3Server {
        local_addr,
        backend_addr: nfs_local,
        export_name,
        root: root.to_path_buf(),
        fs,
        tasks,
        stop,
        released,
    })
}

/// Settings of a read-write area's server ([`serve_rw`]).
#[derive(Debug, Clone, Default)]
pub struct RwOptions {
    /// The path clients mount, e.g. `/statelite`; default: the root's own path. It must be the
    /// same on the primary and its backup (it seeds the fsid and the handle generation).
    pub export_name: Option<String>,
    /// Accept clients from unprivileged ports (nfsd's `insecure`). Default: false.
    pub insecure: bool,
    /// Start in [`rw::Role::Standby`]: no client is served until [`RwServer::promote`] (a
    /// backup, or a primary that does not hold its service address). Default: false (served).
    pub standby: bool,
}

/// A running read-write server. Dropping it stops it and closes its connections.
pub struct RwServer {
    local_addr: SocketAddr,
    export_name: String,
    fs: AreaFs,
    verf: [u8; 8],
    tasks: Vec<tokio::task::JoinHandle<io::Result<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
    closer: Closer,
}

impl RwServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Resets this server's connections to a released address, as [`Nfs3Server::closer`] does.
    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }

    /// The export path clients mount.
    pub fn export_name(&self) -> &str {
        &self.export_name
    }

    /// The area's file system (the replica side applies the change log through it).
    pub fn fs(&self) -> &AreaFs {
        &self.fs
    }

    /// This instance's write verifier (RFC 1813 §3.3.7), new at every start.
    pub fn write_verifier(&self) -> [u8; 8] {
        self.verf
    }

    /// Whom the area is served to now.
    pub fn role(&self) -> rw::Role {
        self.fs.role()
    }

    /// Serves the area to clients and refuses the primary's stream from now on (the agent calls
    /// it when it claims the service address the area follows, after the controller fenced the
    /// primary). Waits for an entry being applied; leaving standby re-reads the tree's ids.
    pub async fn promote(&self) -> io::Result<rw::Role> {
        self.transition(rw::Role::Promoted).await
    }

    /// Back to standby (the address was released): waits for the change being applied, then no
    /// client is served (their connections are reset, new ones refused) and the primary's stream
    /// is accepted again.
    pub async fn demote(&self) -> io::Result<rw::Role> {
        self.transition(rw::Role::Standby).await
    }

    async fn transition(&self, to: rw::Role) -> io::Result<rw::Role> {
        let fs = self.fs.clone();
        let t = std::time::Instant::now();
        let was = tokio::task::spawn_blocking(move || fs.set_role(to))
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::other(format!("nfs3: {}: changing the role: {e:?}", self.export_name)))?;
        if was != to {
            tracing::info!(
                export = %self.export_name,
                local_addr = %self.local_addr,
                from = was.as_str(),
                to = to.as_str(),
                ids = self.fs.ids_len(),
                took_ms = t.elapsed().as_millis() as u64,
                "nfs3: read-write area {}",
                if to.serves() { "served to clients" } else { "in standby: no client served" }
            );
        }
        Ok(was)
    }
}

impl Drop for RwServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.stop.send(true);
    }
}

/// Serves the statelite area `root` read-write over NFSv3 on `addr` (see [`rw`]): handles are
/// file ids kept with the files, the same on a replica fed by the same change log; every change
/// is handed to `replicate` before the client is answered. Always behind the RPC guard, which
/// answers the changes itself with the caller's ids (see `rwcall`) and this instance's write
/// verifier.
pub async fn serve_rw(
    root: &Path,
    addr: SocketAddr,
    opts: RwOptions,
    replicate: Option<std::sync::Arc<dyn rw::Replicate>>,
) -> io::Result<RwServer> {
    let export_name =
        normalize_export(&opts.export_name.clone().unwrap_or_else(|| root.to_string_lossy().into_owned()));
    let token = token()?;
    let fs = {
        let (dir, token, fsid) = (root.to_path_buf(), token.clone(), fsid_of(&export_name));
        tokio::task::spawn_blocking(move || AreaFs::open(&dir, fsid, Some(token), replicate))
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::new(e.kind(), format!("nfs3: {}: {e}", root.display())))?
    };
    if opts.standby {
        let f = fs.clone();
        tokio::task::spawn_blocking(move || f.set_role(rw::Role::Standby))
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::other(format!("nfs3: {}: standby: {e:?}", root.display())))?;
    }
    let verf = {
        // From the per-start secret (hex digits): differs on every start, on every server.
        let h = blake3::hash(&token);
        let mut v = [0u8; 8];
        v.copy_from_slice(&h.as_bytes()[..8]);
        v
    };
    let mut listener =
        NFSTcpListener::bind_with_generation("127.0.0.1:0", fs.clone(), generation_of(&export_name)).await?;
    listener.with_export_name(&export_name);
    let nfs_local = SocketAddr::new(listener.get_listen_ip(), listener.get_listen_port());
    let mut tasks = vec![tokio::spawn(async move { listener.handle_forever().await })];
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (released_tx, released_rx) = tokio::sync::watch::channel(std::collections::HashMap::new());
    let public = tokio::net::TcpListener::bind(addr).await?;
    let local_addr = public.local_addr()?;
    let policy = std::sync::Arc::new(guard::Policy {
        token,
        insecure: opts.insecure,
        stop: stop_rx,
        released: released_rx,
        public_port: local_addr.port(),
        internal_port: nfs_local.port(),
        rw: Some(guard::Rw {
            calls: std::sync::Arc::new(rwcall::Calls::new(fs.clone(), generation_of(&export_name), verf)),
        }),
        serving: Some(fs.serving_watch()),
    });
    tasks.push(tokio::spawn(guard::run(public, nfs_local, policy)));
    tracing::info!(root = %root.display(), export = %export_name, %local_addr, role = fs.role().as_str(), "nfs3: serving read-write");
    Ok(RwServer {
        local_addr,
        export_name,
        fs,
        verf,
        tasks,
        stop,
        closer: Closer(Some(std::sync::Arc::new(released_tx))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_derived_ids_ignore_slashes() {
        assert_eq!(fsid_of("/install"), fsid_of("install/"));
        assert_ne!(fsid_of("/install"), fsid_of("/other"));
        assert_eq!(generation_of("/install"), generation_of("/install/"));
        assert!(generation_of("/x") < 1 << 63);
    }
}
