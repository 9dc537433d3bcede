//! hanfs' embedded read-only NFSv3 server (NFS + MOUNT + portmap on one TCP port).
//!
//! Serves a replica tree with file handles that are the same on every service node holding the
//! same tree: a handle (and the fileid) is a hash of the file's path inside the export, not of
//! local inode numbers, and the generation baked into handles is derived from the export name,
//! not from the server's start time. A Linux NFS-root node can therefore be moved from one SN to
//! another (IP takeover, DNS, or a mount from the backup) and keep using the handles it holds.
//! See [`index`] for the scheme and [`fs`] for how reads stay beneath the root.
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
pub mod index;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nfs3_server::tcp::{NFSTcp, NFSTcpListener};

pub use fs::ReplicaFs;
pub use index::Fh;

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
}

impl Default for Options {
    fn default() -> Self {
        Options { export_name: None, fsid: None, walk_on_start: true, stable_ctime: true }
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

/// A running server. Dropping it (or [`Nfs3Server::stop`]) stops accepting connections;
/// connections already open are served until their clients close them.
pub struct Nfs3Server {
    local_addr: SocketAddr,
    export_name: String,
    root: PathBuf,
    fs: ReplicaFs,
    task: tokio::task::JoinHandle<io::Result<()>>,
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

    /// The served directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file system (handle index statistics, a forced walk).
    pub fn fs(&self) -> &ReplicaFs {
        &self.fs
    }

    /// Stops accepting connections.
    pub fn stop(self) {}
}

impl Drop for Nfs3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `root` read-only over NFSv3 on `addr` (IPv4; NFS, MOUNT and portmap on that one
/// port). Must be called inside a Tokio runtime; the server runs as tasks on it (file system
/// calls on its blocking pool).
pub async fn serve(root: &Path, addr: SocketAddr, opts: Options) -> io::Result<Nfs3Server> {
    if addr.is_ipv6() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("nfs3: {addr}: the NFSv3 server listens on IPv4 only"),
        ));
    }
    let export_name =
        normalize_export(&opts.export_name.clone().unwrap_or_else(|| root.to_string_lossy().into_owned()));
    let fsid = opts.fsid.unwrap_or_else(|| fsid_of(&export_name));
    let fs = ReplicaFs::open(root, fsid, opts.stable_ctime)
        .map_err(|e| io::Error::new(e.kind(), format!("nfs3: {}: {e}", root.display())))?;
    if opts.walk_on_start {
        let f = fs.clone();
        tokio::task::spawn_blocking(move || f.walk());
    }
    let mut listener =
        NFSTcpListener::bind_with_generation(&addr.to_string(), fs.clone(), generation_of(&export_name)).await?;
    listener.with_export_name(&export_name);
    let local_addr = SocketAddr::new(listener.get_listen_ip(), listener.get_listen_port());
    tracing::info!(root = %root.display(), export = %export_name, %local_addr, "nfs3: serving read-only");
    let task = tokio::spawn(async move { listener.handle_forever().await });
    Ok(Nfs3Server { local_addr, export_name, root: root.to_path_buf(), fs, task })
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
