//! Synchronous replication of a read-write area (issue 13, stage 2): a primary and a backup
//! area server in this process, the stream between them over real mutual TLS with
//! certificates from the cluster CA (transport::ca), real files on both sides. Client changes
//! go through the primary's NFSv3 server (nfs3_client); what the backup holds is judged by an
//! independent walk of both directories (std::fs, xattrs read with rustix) and through the
//! backup's own NFSv3 server with the primary's handles.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::area::*;
use common::{lookup, read_all};
use nfs3::replica::{serve_replica, Peer, ReplicaServer, Replicator};
use nfs3_client::nfs3_types::nfs3::{createhow3, nfsstat3, stable_how};

/// The cluster CA with certificates for sn1 (primary), sn2 (backup) and sn3 (another SN).
struct Pki(tempfile::TempDir);

impl Pki {
    fn new() -> Pki {
        let t = tempfile::tempdir().unwrap();
        transport::ca::init(t.path()).unwrap();
        for sn in ["sn1", "sn2", "sn3"] {
            transport::ca::issue(t.path(), sn, &[]).unwrap();
        }
        Pki(t)
    }

    fn id(&self, sn: &str) -> transport::Identity {
        let d = self.0.path();
        transport::Identity::load(&d.join("ca.pem"), &d.join(format!("{sn}.pem")), &d.join(format!("{sn}.key")))
            .unwrap()
    }
}

/// The backup's server and its replication listener, accepting only `primary`'s certificate.
async fn backup(pki: &Pki, root: &Path, primary: &str) -> (nfs3::RwServer, ReplicaServer) {
    let s = start(root, None).await;
    let tls = pki.id("sn2").server_config(primary).unwrap();
    let r = serve_replica("127.0.0.1:0".parse().unwrap(), tls, EXPORT.into(), s.fs().clone()).await.unwrap();
    (s, r)
}

/// The primary's server, its changes streamed to `addr` with `me`'s certificate.
async fn primary(
    pki: &Pki,
    root: &Path,
    me: &str,
    addr: String,
    timeout: Duration,
) -> (nfs3::RwServer, Arc<Replicator>) {
    let peer =
        Peer { addr, name: "sn2".into(), area: EXPORT.into(), timeout, tls: pki.id(me).client_config().unwrap() };
    let rep = Replicator::new(peer, tokio::runtime::Handle::current());
    let s = start(root, Some(rep.clone() as Arc<dyn nfs3::rw::Replicate>)).await;
    (s, rep)
}

/// Everything a walk of `root` shows that replication must carry: kind, mode, content or
/// target, and the file id xattr of every file and directory (the root's included).
fn walk(root: &Path) -> BTreeMap<PathBuf, String> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let md = fs::symlink_metadata(&p).unwrap();
            let mode = md.permissions().mode() & 0o7777;
            let v = if md.file_type().is_symlink() {
                format!("symlink -> {}", fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                format!("dir {mode:o} id {:?}", xattr_id(&p))
            } else {
                format!("file {mode:o} id {:?} {:?}", xattr_id(&p), String::from_utf8_lossy(&fs::read(&p).unwrap()))
            };
            out.insert(rel, v);
            if md.is_dir() {
                go(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    out.insert(PathBuf::from("."), format!("root id {:?}", xattr_id(root)));
    go(root, root, &mut out);
    out
}

#[test]
fn client_changes_on_the_primary_are_on_the_backup_with_the_same_ids_before_the_reply() {
    let pki = Pki::new();
    let (_t1, proot) = area();
    let (_t2, broot) = area();
    common::run(async {
        let (bsrv, rs) = backup(&pki, &broot, "sn1").await;
        let (psrv, rep) = primary(&pki, &proot, "sn1", rs.local_addr().to_string(), Duration::from_secs(5)).await;
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        let var = mkdir(&mut c, &top, b"var").await.unwrap();
        let log = create(&mut c, &var, b"messages", createhow3::UNCHECKED(mode(0o640))).await.unwrap();
        write(&mut c, &log, 0, b"line 1\n", stable_how::FILE_SYNC).await.unwrap();
        // On the backup before the reply came: the FILE_SYNC write was acknowledged there.
        assert_eq!(fs::read(broot.join("var/messages")).unwrap(), b"line 1\n");
        write(&mut c, &log, 7, b"line 2\n", stable_how::UNSTABLE).await.unwrap();
        commit(&mut c, &log).await.unwrap();
        assert_eq!(fs::read(broot.join("var/messages")).unwrap(), b"line 1\nline 2\n");
        setattr(&mut c, &log, mode(0o600)).await.unwrap();
        symlink(&mut c, &var, b"current", b"messages").await.unwrap();
        let tmp = create(&mut c, &top, b"tmp", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &tmp, 0, b"scratch", stable_how::DATA_SYNC).await.unwrap();
        remove(&mut c, &top, b"tmp").await.unwrap();
        let gone = mkdir(&mut c, &top, b"gone").await.unwrap();
        rmdir(&mut c, &top, b"gone").await.unwrap();
        let etc = mkdir(&mut c, &top, b"etc").await.unwrap();
        let conf = create(&mut c, &etc, b"app.conf", createhow3::GUARDED(mode(0o644))).await.unwrap();
        write(&mut c, &conf, 0, b"x=1\n", stable_how::FILE_SYNC).await.unwrap();
        // Log rotation while the client holds the file, then a directory rename above it.
        rename(&mut c, &var, b"messages", &var, b"messages.1").await.unwrap();
        rename(&mut c, &top, b"var", &top, b"log").await.unwrap();
        write(&mut c, &log, 14, b"line 3\n", stable_how::FILE_SYNC).await.unwrap();
        assert!(!rep.unprotected(), "{:?}", rep.unprotected_since());

        // An independent walk of both trees: the same names, modes, content and ids.
        let (p, b) = (walk(&proot), walk(&broot));
        assert_eq!(p, b);
        assert_eq!(p.len(), 6, "{p:?}");
        assert!(xattr_id(&broot.join("log/messages.1")).is_some());
        assert_eq!(xattr_id(&proot.join("log/messages.1")), xattr_id(&broot.join("log/messages.1")));
        assert!(!broot.join("tmp").exists() && !broot.join("gone").exists());

        // The backup's own server answers the primary's handles, the renamed file's included.
        let mut bc = root_conn(&bsrv).await;
        assert_eq!(read_all(&mut bc, &log).await.unwrap(), b"line 1\nline 2\nline 3\n");
        assert_eq!(read_all(&mut bc, &conf).await.unwrap(), b"x=1\n");
        let blog = lookup(&mut bc, &top, b"log").await.unwrap().0;
        assert_eq!(fh(&blog), fh(&var));
        assert_eq!(fh(&lookup(&mut bc, &blog, b"messages.1").await.unwrap().0), fh(&log));
        assert_eq!(lookup(&mut bc, &tmp, b"x").await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
        let _ = gone;
        assert!(rs.applied() >= 15, "{}", rs.applied());
        drop(c);
        drop(psrv);
    });
}

#[test]
fn a_killed_backup_leaves_the_primary_serving_unprotected_within_the_timeout() {
    let pki = Pki::new();
    let (_t1, proot) = area();
    let (_t2, broot) = area();
    let timeout = Duration::from_millis(800);
    common::run(async {
        let (bsrv, rs) = backup(&pki, &broot, "sn1").await;
        let (psrv, rep) = primary(&pki, &proot, "sn1", rs.local_addr().to_string(), timeout).await;
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        let f = create(&mut c, &top, b"burst", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &f, 0, b"a", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(fs::read(broot.join("burst")).unwrap(), b"a");
        assert!(!rep.unprotected());
        // The backup goes away: its listener and stream are gone.
        drop(rs);
        drop(bsrv);
        let t0 = Instant::now();
        for i in 1..20u64 {
            write(&mut c, &f, i, b"b", stable_how::FILE_SYNC).await.unwrap();
        }
        assert!(t0.elapsed() < timeout + Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(rep.unprotected());
        let (_, why) = rep.unprotected_since().unwrap();
        assert!(!why.is_empty());
        assert_eq!(fs::read(proot.join("burst")).unwrap(), b"abbbbbbbbbbbbbbbbbbb");
        assert_eq!(read_all(&mut c, &f).await.unwrap(), b"abbbbbbbbbbbbbbbbbbb");
        // Nothing more goes to it: later changes answer at once.
        let t1 = Instant::now();
        mkdir(&mut c, &top, b"later").await.unwrap();
        assert!(t1.elapsed() < timeout, "{:?}", t1.elapsed());
        assert_eq!(fs::read(broot.join("burst")).unwrap(), b"a");
    });
}

#[test]
fn a_silent_backup_is_given_up_after_peer_timeout() {
    let pki = Pki::new();
    let (_t1, proot) = area();
    let timeout = Duration::from_millis(600);
    common::run(async {
        // Accepts the connection and never answers (a stopped or wedged backup agent).
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (s, _) = l.accept().await.unwrap();
                held.push(s);
            }
        });
        let (psrv, rep) = primary(&pki, &proot, "sn1", addr, timeout).await;
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        let t0 = Instant::now();
        let f = create(&mut c, &top, b"f", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        let took = t0.elapsed();
        assert!(took >= timeout && took < timeout + Duration::from_secs(2), "{took:?}");
        assert!(rep.unprotected());
        write(&mut c, &f, 0, b"kept", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(fs::read(proot.join("f")).unwrap(), b"kept");
        hold.abort();
    });
}

#[test]
fn the_backup_refuses_a_stream_from_another_sns_certificate() {
    let pki = Pki::new();
    let (_t1, proot) = area();
    let (_t2, broot) = area();
    common::run(async {
        let (_bsrv, rs) = backup(&pki, &broot, "sn1").await;
        // sn3's certificate chains to the same CA, but the backup accepts only sn1.
        let (psrv, rep) = primary(&pki, &proot, "sn3", rs.local_addr().to_string(), Duration::from_secs(3)).await;
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        create(&mut c, &top, b"intruder", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        assert!(rep.unprotected());
        let (_, why) = rep.unprotected_since().unwrap();
        assert!(why.contains("certificate") || why.contains("alert") || why.contains("TLS"), "{why}");
        assert!(!broot.join("intruder").exists());
        assert_eq!(rs.applied(), 0);

        // A stream for another area is refused by the right primary too.
        let (_t3, other) = area();
        let peer = Peer {
            addr: rs.local_addr().to_string(),
            name: "sn2".into(),
            area: "/elsewhere".into(),
            timeout: Duration::from_secs(3),
            tls: pki.id("sn1").client_config().unwrap(),
        };
        let rep = Replicator::new(peer, tokio::runtime::Handle::current());
        let s = start(&other, Some(rep.clone() as Arc<dyn nfs3::rw::Replicate>)).await;
        let mut c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        create(&mut c, &top, b"x", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        assert!(rep.unprotected());
        assert!(rep.unprotected_since().unwrap().1.contains("refused"), "{:?}", rep.unprotected_since());
        assert_eq!(rs.applied(), 0);

        // And the primary refuses a backup whose certificate does not name `peer_name`.
        let tls = pki.id("sn3").server_config("sn1").unwrap();
        let (_t4, b2) = area();
        let bs2 = start(&b2, None).await;
        let rs2 = serve_replica("127.0.0.1:0".parse().unwrap(), tls, EXPORT.into(), bs2.fs().clone()).await.unwrap();
        let (_t5, p2) = area();
        let (ps2, rep2) = primary(&pki, &p2, "sn1", rs2.local_addr().to_string(), Duration::from_secs(3)).await;
        let mut c = root_conn(&ps2).await;
        let top = c.root_nfs_fh3();
        create(&mut c, &top, b"y", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        assert!(rep2.unprotected());
        assert_eq!(rs2.applied(), 0);
        assert!(!b2.join("y").exists());
    });
}

/// [`walk`] plus what LINK, MKNOD and other users' changes must carry: owner, link count, the
/// links-made count, FIFOs and sockets (never opened).
fn walk_owned(root: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let md = fs::symlink_metadata(&p).unwrap();
            let (mode, ft) = (md.permissions().mode() & 0o7777, md.file_type());
            let mut l = [0u8; 8];
            let links = rustix::fs::lgetxattr(&p, nfs3::rw::LINKS_XATTR, &mut l[..]).map(|n| l[..n].to_vec()).ok();
            let who = format!("{}:{} nlink {} links {links:?}", md.uid(), md.gid(), md.nlink());
            let v = if ft.is_symlink() {
                format!("symlink {who} -> {}", fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                format!("dir {mode:o} {}:{} id {:?}", md.uid(), md.gid(), xattr_id(&p))
            } else if ft.is_fifo() || ft.is_socket() {
                format!("{} {mode:o} {who}", if ft.is_fifo() { "fifo" } else { "socket" })
            } else {
                format!(
                    "file {mode:o} {who} id {:?} {:?}",
                    xattr_id(&p),
                    String::from_utf8_lossy(&fs::read(&p).unwrap())
                )
            };
            out.insert(rel, v);
            if md.is_dir() {
                go(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

#[test]
fn links_special_files_modes_and_other_users_files_replicate_with_the_same_ids() {
    use nfs3_client::nfs3_types::nfs3::mknoddata3;
    use std::os::unix::fs::MetadataExt;
    let pki = Pki::new();
    let (_t1, proot) = area();
    let (_t2, broot) = area();
    common::run(async {
        let (bsrv, rs) = backup(&pki, &broot, "sn1").await;
        let (psrv, rep) = primary(&pki, &proot, "sn1", rs.local_addr().to_string(), Duration::from_secs(5)).await;
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        let ssh = mkdir_mode(&mut c, &top, b"ssh", 0o700).await.unwrap();
        let key = create(&mut c, &ssh, b"host_key", createhow3::GUARDED(mode(0o600))).await.unwrap();
        write(&mut c, &key, 0, b"KEY", stable_how::FILE_SYNC).await.unwrap();
        // A lock taken the NFS-safe way: link(2) of a unique file to the lock name.
        link(&mut c, &key, &top, b"host_key.lock").await.unwrap();
        assert_eq!(fs::metadata(broot.join("host_key.lock")).unwrap().nlink(), 2, "on the backup before the reply");
        mknod(&mut c, &top, b"initctl", mknoddata3::NF3FIFO(mode(0o600))).await.unwrap();
        mknod(&mut c, &top, b"log.sock", mknoddata3::NF3SOCK(mode(0o666))).await.unwrap();
        let tmp = mkdir_mode(&mut c, &top, b"tmp", 0o1777).await.unwrap();
        if common::is_root() {
            let mut u = common::connect_as(psrv.local_addr().port(), EXPORT, 1000, 1000, &[]).await.unwrap();
            let f = create(&mut u, &tmp, b"daemon.state", createhow3::UNCHECKED(mode(0o640))).await.unwrap();
            write(&mut u, &f, 0, b"state", stable_how::FILE_SYNC).await.unwrap();
            mkdir_mode(&mut u, &tmp, b"spool", 0o750).await.unwrap();
            assert_eq!(fs::metadata(broot.join("tmp/daemon.state")).unwrap().uid(), 1000);
        }
        // The planted-link defence holds on the backup too: a second link through the server
        // after one was removed keeps the count right on both sides.
        remove(&mut c, &top, b"host_key.lock").await.unwrap();
        link(&mut c, &key, &tmp, b"again").await.unwrap();
        write(&mut c, &key, 3, b"!", stable_how::FILE_SYNC).await.unwrap();
        assert!(!rep.unprotected(), "{:?}", rep.unprotected_since());
        let (p, b) = (walk_owned(&proot), walk_owned(&broot));
        assert_eq!(p, b);
        assert!(p[Path::new("ssh")].starts_with("dir 700"), "{p:?}");
        assert!(p[Path::new("initctl")].starts_with("fifo 600"), "{p:?}");
        // The backup's server answers the primary's handle through the second name.
        let mut bc = root_conn(&bsrv).await;
        let (again, _) = lookup(&mut bc, &tmp, b"again").await.unwrap();
        assert_eq!(fh(&again), fh(&key));
        assert_eq!(read_all(&mut bc, &key).await.unwrap(), b"KEY!");
        drop(c);
        drop(psrv);
    });
}
