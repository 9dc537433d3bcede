//! Synchronous replication of a read-write area (issue 13, stage 2): a primary and a backup
//! area server in this process, the stream between them over real mutual TLS with
//! certificates from the cluster CA (transport::ca), real files on both sides. Client changes
//! go through the primary's NFSv3 server (nfs3_client); what the backup holds is judged by an
//! independent walk of both directories (std::fs, xattrs read with rustix) and through the
//! backup's own NFSv3 server with the primary's handles.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;

use common::Pki;

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
    // The primary's start: the backup is reconciled before clients change anything.
    rep.start(s.fs()).await.unwrap();
    (s, rep)
}

/// Everything a walk of `root` shows that replication must carry: kind, mode, content or
/// target, and the file id xattr of every file and directory (the root's included).
fn walk(root: &Path) -> BTreeMap<PathBuf, String> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            // The server's control directory (a reconciliation's stage): no client sees it.
            if rel.as_os_str() == ".hanfs" {
                continue;
            }
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

/// A TCP relay that can stop forwarding (a backup that goes silent: stopped, wedged, or a
/// network that drops everything) without closing anything.
struct Relay {
    addr: String,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(to: std::net::SocketAddr) -> Relay {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let frozen = Arc::new(AtomicBool::new(false));
    let f = frozen.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (a, _) = l.accept().await.unwrap();
            let Ok(b) = tokio::net::TcpStream::connect(to).await else { continue };
            let (ar, aw) = a.into_split();
            let (br, bw) = b.into_split();
            for (mut r, mut w, f) in [
                (
                    Box::new(ar) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(bw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    f.clone(),
                ),
                (Box::new(br), Box::new(aw), f.clone()),
            ] {
                conns.spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        while f.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    Relay { addr, frozen, task }
}

#[test]
fn a_silent_backup_is_given_up_after_peer_timeout_and_reconciled_when_it_answers_again() {
    use std::sync::atomic::Ordering;
    let pki = Pki::new();
    let (_t1, proot) = area();
    let (_t2, broot) = area();
    let timeout = Duration::from_millis(600);
    common::run(async {
        let (_bsrv, rs) = backup(&pki, &broot, "sn1").await;
        let r = relay(rs.local_addr()).await;
        let (psrv, rep) = primary(&pki, &proot, "sn1", r.addr.clone(), timeout).await;
        assert!(rep.protected(), "{:?}", rep.last_reconcile());
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        let f = create(&mut c, &top, b"f", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        assert!(broot.join("f").exists());
        // Silent: the stream stays open, nothing comes back.
        r.frozen.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        write(&mut c, &f, 0, b"kept", stable_how::FILE_SYNC).await.unwrap();
        let took = t0.elapsed();
        assert!(took >= timeout && took < timeout + Duration::from_secs(2), "{took:?}");
        assert!(rep.unprotected());
        assert!(rep.unprotected_since().unwrap().1.contains("no answer"), "{:?}", rep.unprotected_since());
        // Later changes answer at once, and are counted as lag.
        let t1 = Instant::now();
        write(&mut c, &f, 4, b"+more", stable_how::FILE_SYNC).await.unwrap();
        assert!(t1.elapsed() < timeout, "{:?}", t1.elapsed());
        let lag = rep.lag();
        assert!(lag.bytes >= 5 && lag.entries >= 1 && lag.seconds > 0.0, "{lag:?}");
        assert_eq!(fs::read(proot.join("f")).unwrap(), b"kept+more");
        // It answers again: the retry loop reconciles it by itself.
        r.frozen.store(false, Ordering::SeqCst);
        let t2 = Instant::now();
        while !rep.protected() {
            assert!(t2.elapsed() < Duration::from_secs(20), "not reconciled: {:?}", rep.last_reconcile());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(fs::read(broot.join("f")).unwrap(), b"kept+more");
        assert_eq!(walk(&proot), walk(&broot));
        assert_eq!(rep.lag().entries, 0);
        assert_eq!(rep.lag().seconds, 0.0);
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
        rep.start(s.fs()).await.unwrap();
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

/// The backup's server and replication listener on `addr` (a restarted backup keeps its port;
/// the old listener may take a moment to go).
async fn backup_at(pki: &Pki, root: &Path, addr: std::net::SocketAddr) -> (nfs3::RwServer, ReplicaServer) {
    let s = start(root, None).await;
    let t0 = Instant::now();
    loop {
        let tls = pki.id("sn2").server_config("sn1").unwrap();
        match serve_replica(addr, tls, EXPORT.into(), s.fs().clone()).await {
            Ok(r) => return (s, r),
            Err(e) if t0.elapsed() < Duration::from_secs(5) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// [`walk`] with the mtime of every file and symlink: what a reconciliation carries exactly
/// (changes applied from the log set the backup's own times).
fn walk_times(root: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let mut w = walk(root);
    for (rel, v) in w.iter_mut() {
        let md = fs::symlink_metadata(root.join(rel)).unwrap();
        if !md.is_dir() {
            v.push_str(&format!(" mtime {}.{:09}", md.mtime(), md.mtime_nsec()));
        }
    }
    w
}

async fn wait_protected(rep: &Replicator, within: Duration) {
    let t0 = Instant::now();
    while !rep.protected() {
        assert!(t0.elapsed() < within, "not reconciled within {within:?}: {:?}", rep.last_reconcile());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_backup_killed_during_a_write_burst_is_reconciled_by_the_primary_when_it_returns() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let pki = Pki::new();
    let (_t1, proot) = area();
    let (_t2, broot) = area();
    let timeout = Duration::from_millis(700);
    common::run(async {
        let (bsrv, rs) = backup(&pki, &broot, "sn1").await;
        let baddr = rs.local_addr();
        let (psrv, rep) = primary(&pki, &proot, "sn1", baddr.to_string(), timeout).await;
        assert!(rep.protected(), "{:?}", rep.last_reconcile());
        let c = root_conn(&psrv).await;
        // The burst: a log appended with stable writes, a file per step, renames and removes.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = c;
                let top = c.root_nfs_fh3();
                let dir = mkdir(&mut c, &top, b"node1").await.unwrap();
                let log = create(&mut c, &dir, b"log", createhow3::UNCHECKED(mode(0o640))).await.unwrap();
                let (mut off, mut worst, mut i) = (0u64, Duration::ZERO, 0u32);
                while !stop.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    let line = format!("line {i}\n");
                    write(&mut c, &log, off, line.as_bytes(), stable_how::FILE_SYNC).await.unwrap();
                    off += line.len() as u64;
                    let n = format!("f{i}");
                    let f = create(&mut c, &dir, n.as_bytes(), createhow3::UNCHECKED(mode(0o600))).await.unwrap();
                    write(&mut c, &f, 0, n.as_bytes(), stable_how::UNSTABLE).await.unwrap();
                    commit(&mut c, &f).await.unwrap();
                    if i % 3 == 0 {
                        rename(&mut c, &dir, n.as_bytes(), &dir, format!("r{i}").as_bytes()).await.unwrap();
                    }
                    if i % 5 == 1 && i % 3 != 0 {
                        remove(&mut c, &dir, n.as_bytes()).await.unwrap();
                    }
                    worst = worst.max(t.elapsed());
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (c, log, worst, i)
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The backup dies mid-burst (its listener, its streams, its server).
        drop(rs);
        drop(bsrv);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let t0 = Instant::now();
        while rep.protected() {
            assert!(t0.elapsed() < timeout + Duration::from_secs(2), "still protected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Away for a while; meanwhile its tree got something the primary never had.
        tokio::time::sleep(Duration::from_millis(700)).await;
        fs::write(broot.join("stray"), b"only on the backup").unwrap();
        assert!(rep.lag().entries > 0 && rep.lag().seconds > 0.0, "{:?}", rep.lag());
        let (_bsrv, _rs) = backup_at(&pki, &broot, baddr).await;
        // The primary finds it again by itself (retry every 1-5 s) and reconciles, writes going on.
        wait_protected(&rep, Duration::from_secs(15)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let (c, log, worst, steps) = writer.await.unwrap();
        drop(c);
        assert!(rep.protected());
        // No write waited longer than peer_timeout (plus its own work), neither when the backup
        // went nor while it was reconciled.
        assert!(worst < timeout + Duration::from_millis(800), "a step took {worst:?}");
        assert!(steps > 20, "{steps}");
        let r = rep.last_reconcile().unwrap().result.unwrap();
        eprintln!("reconciled during the burst ({steps} steps, worst step {worst:?}): {}", r.summary());
        assert!(r.files_sent > 0 && r.deleted > 0 && r.passes >= 2, "{r:?}");
        assert!(r.held < timeout, "{r:?}");
        // An independent walk of both trees: names, kinds, modes, content, ids.
        let (p, b) = (walk(&proot), walk(&broot));
        assert_eq!(p, b);
        assert!(!broot.join("stray").exists());
        assert_eq!(rep.lag().entries, 0);
        assert_eq!(rep.lag().bytes, 0);
        // The log's every line, on the backup, and its handle answered there.
        let text = String::from_utf8(fs::read(broot.join("node1/log")).unwrap()).unwrap();
        assert_eq!(text.lines().count() as u32, steps, "{text}");
        let mut bc = root_conn(&_bsrv).await;
        assert_eq!(read_all(&mut bc, &log).await.unwrap(), text.as_bytes());
    });
}

#[test]
fn a_primary_restarted_over_a_tree_that_diverged_reconciles_its_backup_on_start() {
    let pki = Pki::new();
    let (_t1, proot) = area();
    let (_t2, broot) = area();
    common::run(async {
        let (bsrv, rs) = backup(&pki, &broot, "sn1").await;
        let baddr = rs.local_addr();
        let (psrv, rep) = primary(&pki, &proot, "sn1", baddr.to_string(), Duration::from_secs(2)).await;
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        let etc = mkdir(&mut c, &top, b"etc").await.unwrap();
        let keep = create(&mut c, &etc, b"keep", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &keep, 0, b"v1", stable_how::FILE_SYNC).await.unwrap();
        let old = create(&mut c, &top, b"old", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &old, 0, b"to be renamed", stable_how::FILE_SYNC).await.unwrap();
        symlink(&mut c, &top, b"link", b"etc/keep").await.unwrap();
        assert_eq!(walk(&proot), walk(&broot));
        // The backup goes; the primary changes on, then stops too.
        drop(rs);
        drop(bsrv);
        write(&mut c, &keep, 0, b"v2", stable_how::FILE_SYNC).await.unwrap();
        assert!(rep.unprotected());
        rename(&mut c, &top, b"old", &etc, b"new").await.unwrap();
        setattr(&mut c, &keep, mode(0o600)).await.unwrap();
        remove(&mut c, &top, b"link").await.unwrap();
        symlink(&mut c, &top, b"link2", b"etc/new").await.unwrap();
        mkdir(&mut c, &etc, b"sub").await.unwrap();
        drop(c);
        drop(psrv);
        drop(rep);
        // Changed offline on the primary too (an SN-local edit while no agent ran).
        fs::write(proot.join("etc/offline"), b"made with no server running").unwrap();
        assert_ne!(walk(&proot), walk(&broot));
        // Both come back; the primary's start reconciles before it serves a change.
        let (_bsrv, _rs) = backup_at(&pki, &broot, baddr).await;
        let (psrv, rep) = primary(&pki, &proot, "sn1", baddr.to_string(), Duration::from_secs(2)).await;
        assert!(rep.protected(), "{:?}", rep.last_reconcile());
        let r = rep.last_reconcile().unwrap().result.unwrap();
        assert!(r.deleted >= 1 && r.entries >= 4, "{r:?}");
        assert_eq!(walk_times(&proot), walk_times(&broot));
        assert!(xattr_id(&broot.join("etc/offline")).is_some());
        assert_eq!(xattr_id(&proot.join("etc/new")), xattr_id(&broot.join("etc/new")));
        assert!(!broot.join("old").exists() && !broot.join("link").exists());
        // Synchronous again, on ids the backup got from the reconciliation.
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        let etc2 = lookup(&mut c, &top, b"etc").await.unwrap().0;
        let off = lookup(&mut c, &etc2, b"offline").await.unwrap().0;
        write(&mut c, &off, 0, b"MADE", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(&fs::read(broot.join("etc/offline")).unwrap()[..4], b"MADE");
        assert!(rep.protected());
    });
}

#[test]
fn a_file_the_primary_deleted_goes_and_a_changed_big_file_travels_as_a_delta() {
    let pki = Pki::new();
    let (_t1, proot) = area();
    let (_t2, broot) = area();
    const SIZE: usize = 8 << 20;
    common::run(async {
        let (bsrv, rs) = backup(&pki, &broot, "sn1").await;
        let baddr = rs.local_addr();
        let (psrv, rep) = primary(&pki, &proot, "sn1", baddr.to_string(), Duration::from_secs(2)).await;
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        // Not compressible, not repetitive: a delta can only come from the backup's copy.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let big = create(&mut c, &top, b"big", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        for (i, piece) in data.chunks(1 << 20).enumerate() {
            write(&mut c, &big, (i << 20) as u64, piece, stable_how::FILE_SYNC).await.unwrap();
        }
        let doomed = create(&mut c, &top, b"doomed", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &doomed, 0, b"bye", stable_how::FILE_SYNC).await.unwrap();
        mkdir(&mut c, &top, b"gone").await.unwrap();
        assert_eq!(fs::read(broot.join("big")).unwrap(), data);
        drop(rs);
        drop(bsrv);
        // While the backup is away: a few bytes of the big file change, the rest goes.
        write(&mut c, &big, 3 << 20, b"changed in the middle", stable_how::FILE_SYNC).await.unwrap();
        assert!(rep.unprotected());
        remove(&mut c, &top, b"doomed").await.unwrap();
        rmdir(&mut c, &top, b"gone").await.unwrap();
        let (_bsrv, _rs) = backup_at(&pki, &broot, baddr).await;
        // On demand rather than waiting for the retry loop.
        let r = rep.reconcile().await.unwrap();
        eprintln!("reconciled an {SIZE}-byte file changed in the middle: {}", r.summary());
        assert!(rep.protected());
        assert_eq!(r.deltas, 1, "{r:?}");
        assert!(r.bytes_sent < (SIZE / 20) as u64, "{} bytes sent for a {SIZE}-byte file: {r:?}", r.bytes_sent);
        assert_eq!(r.deleted, 2, "{r:?}");
        assert!(!broot.join("doomed").exists() && !broot.join("gone").exists());
        assert_eq!(fs::read(broot.join("big")).unwrap(), fs::read(proot.join("big")).unwrap());
        assert_eq!(walk_times(&proot), walk_times(&broot));
        // Nothing differs any more: another reconciliation sends nothing.
        let again = rep.reconcile().await.unwrap();
        assert_eq!((again.entries, again.bytes_sent, again.deleted), (0, 0, 0), "{again:?}");
    });
}

#[test]
fn a_resync_from_a_certificate_not_naming_the_primary_is_refused() {
    let pki = Pki::new();
    let (_t1, proot) = area();
    let (_t2, broot) = area();
    fs::write(proot.join("intruder"), b"not from the primary").unwrap();
    fs::write(broot.join("mine"), b"the backup's own").unwrap();
    common::run(async {
        let (_bsrv, rs) = backup(&pki, &broot, "sn1").await;
        let before = walk(&broot);
        // sn3 chains to the cluster CA; its start tries to reconcile the backup.
        let (_psrv, rep) = primary(&pki, &proot, "sn3", rs.local_addr().to_string(), Duration::from_secs(2)).await;
        assert!(rep.unprotected());
        let why = rep.last_reconcile().unwrap().result.unwrap_err();
        assert!(why.contains("certificate") || why.contains("alert") || why.contains("TLS"), "{why}");
        let again = rep.reconcile().await.unwrap_err();
        assert!(!again.is_empty());
        assert_eq!(walk(&broot), before);
        assert!(broot.join("mine").exists() && !broot.join("intruder").exists());
        assert_eq!(rs.applied(), 0);
        assert!(!rs.state().status().protected);
        assert_eq!(rs.state().status().last_reconcile, None);
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
