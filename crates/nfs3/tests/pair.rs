//! A symmetric pair (issue 13 points 3 and 5, and the way back): two read-write servers of one
//! area, each with a stream to the other and a listener for the other's stream, over real mutual
//! TLS with certificates of the cluster CA. Whoever serves (holds the service address: promoted)
//! sends; the standby applies and never sends. The whole A → B → A sequence with writes on each
//! side: A serves, A is killed, B is promoted, A comes back in standby with changes it never
//! acknowledged, B reconciles A (the copy-back) and streams to it, the planned move back (B
//! released: demoted and flushed; A claimed: promoted, reconciles B at once) — every
//! acknowledged write on both disks, the client's handles answered by either side, both trees
//! equal (names, modes, content, file ids).
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
use common::{connect_as, lookup, read_all};
use nfs3::replica::{serve_replica, Peer, ReplicaServer, Replicator};
use nfs3::rw::Role;
use nfs3_client::nfs3_types::nfs3::{createhow3, stable_how};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One side of the pair as the agent builds it: the server (in standby unless it holds the
/// address, then promoted), its stream to the other side, started, and its listener for the
/// other side's stream on `port` (a returned side keeps its port).
struct Side {
    srv: nfs3::RwServer,
    rep: Arc<Replicator>,
    rs: ReplicaServer,
    first: Result<nfs3::resync::Report, String>,
}

async fn side(pki: &Pki, me: &str, other: &str, root: &Path, port: u16, peer_port: u16, holds: bool) -> Side {
    let peer = Peer {
        addr: format!("127.0.0.1:{peer_port}"),
        name: other.into(),
        area: EXPORT.into(),
        timeout: Duration::from_secs(3),
        tls: pki.id(me).client_config().unwrap(),
    };
    let rep = Replicator::new(peer, tokio::runtime::Handle::current());
    let opts = nfs3::RwOptions { export_name: Some(EXPORT.into()), insecure: true, standby: !holds };
    let srv =
        nfs3::serve_rw(root, "127.0.0.1:0".parse().unwrap(), opts, Some(rep.clone() as Arc<dyn nfs3::rw::Replicate>))
            .await
            .unwrap();
    if holds {
        srv.promote().await.unwrap();
    }
    let first = rep.start(srv.fs()).await.unwrap().result;
    let t0 = Instant::now();
    let rs = loop {
        let tls = pki.id(me).server_config(other).unwrap();
        match serve_replica(format!("127.0.0.1:{port}").parse().unwrap(), tls, EXPORT.into(), srv.fs().clone()).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(5), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    Side { srv, rep, rs, first }
}

/// Kind, mode, content and file id of everything in the tree (the root's id included).
fn walk(root: &Path) -> BTreeMap<PathBuf, String> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel.as_os_str() == ".hanfs" {
                continue;
            }
            let md = fs::symlink_metadata(&p).unwrap();
            let mode = md.permissions().mode() & 0o7777;
            let v = if md.is_dir() {
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

async fn wait_protected(rep: &Replicator, within: Duration) {
    let t0 = Instant::now();
    while !rep.protected() {
        assert!(t0.elapsed() < within, "not reconciled within {within:?}: {:?}", rep.last_reconcile());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a client can mount and get the root's attributes from `s`.
async fn reachable(s: &nfs3::RwServer) -> bool {
    match connect_as(s.local_addr().port(), EXPORT, 0, 0, &[]).await {
        Ok(mut c) => {
            let root = c.root_nfs_fh3();
            common::getattr(&mut c, &root).await.is_ok()
        }
        Err(_) => false,
    }
}

#[test]
fn a_failover_the_copy_back_and_the_move_back_lose_no_acknowledged_write_and_keep_every_handle() {
    let pki = Pki::new();
    let (_ta, aroot) = area();
    let (_tb, broot) = area();
    let (pa, pb) = (free_port(), free_port());
    common::run(async {
        // B first (standby: it sends nothing), then A holding the address: A reconciles B.
        let b = side(&pki, "sn2", "sn1", &broot, pb, pa, false).await;
        assert!(b.first.as_ref().is_err_and(|e| e.contains("standby")), "{:?}", b.first);
        let a = side(&pki, "sn1", "sn2", &aroot, pa, pb, true).await;
        a.first.as_ref().unwrap();
        assert_eq!((a.srv.role(), b.srv.role()), (Role::Promoted, Role::Standby));
        assert!(a.rep.protected() && !b.rep.protected());

        let mut c = root_conn(&a.srv).await;
        let top = c.root_nfs_fh3();
        let log = create(&mut c, &top, b"node.log", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &log, 0, b"a1\n", stable_how::FILE_SYNC).await.unwrap();
        let var = mkdir(&mut c, &top, b"var").await.unwrap();
        let conf = create(&mut c, &var, b"app.conf", createhow3::GUARDED(mode(0o600))).await.unwrap();
        write(&mut c, &conf, 0, b"x=1\n", stable_how::UNSTABLE).await.unwrap();
        commit(&mut c, &conf).await.unwrap();
        assert_eq!(fs::read(broot.join("node.log")).unwrap(), b"a1\n", "acknowledged, so on B");
        assert_eq!(walk(&aroot), walk(&broot));
        // The standby sends nothing, even on demand, and serves no client.
        assert!(b.rep.reconcile().await.is_err_and(|e| e.contains("standby")));
        assert_eq!(a.rs.applied(), 0, "A applied something from a standby");
        assert!(!reachable(&b.srv).await, "the standby served a client");
        drop(c);

        // A is killed (its server, listener and stream gone; the address is claimed on B).
        let Side { srv, rs, .. } = a;
        drop(srv);
        drop(rs);
        assert_eq!(b.srv.promote().await.unwrap(), Role::Standby);
        let mut c = root_conn(&b.srv).await;
        assert_eq!(read_all(&mut c, &log).await.unwrap(), b"a1\n", "A's handle, answered by B");
        write(&mut c, &log, 3, b"b1\n", stable_how::FILE_SYNC).await.unwrap();
        let fromb = create(&mut c, &top, b"from-b", createhow3::UNCHECKED(mode(0o640))).await.unwrap();
        write(&mut c, &fromb, 0, b"written while A was away\n", stable_how::FILE_SYNC).await.unwrap();
        assert!(b.rep.unprotected(), "A is away: B serves unprotected");

        // A returns over its old tree, plus what it applied but never acknowledged. It does not
        // hold the address: standby, so it must not touch B.
        fs::write(aroot.join("node.log"), b"a1\nnever acknowledged\n").unwrap();
        fs::write(aroot.join("unacked"), b"x").unwrap();
        let before = walk(&broot);
        let applied_on_b = b.rs.applied();
        let a = side(&pki, "sn1", "sn2", &aroot, pa, pb, false).await;
        assert!(a.first.as_ref().is_err_and(|e| e.contains("standby")), "{:?}", a.first);
        assert_eq!(walk(&broot), before, "the returned A changed B");
        assert_eq!(b.rs.applied(), applied_on_b);

        // The copy-back: B reconciles A as soon as it answers, then streams to it.
        wait_protected(&b.rep, Duration::from_secs(15)).await;
        assert_eq!(walk(&aroot), walk(&broot), "A is B's copy after the reconciliation");
        assert!(!aroot.join("unacked").exists());
        let bd = b.rep.last_reconcile().unwrap().result.unwrap().digest;
        let ad = a.rs.state().status().last_reconcile.unwrap().result.unwrap().digest;
        assert_eq!(ad, bd, "A's digest after the pass is B's");
        write(&mut c, &log, 6, b"b2\n", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(fs::read(aroot.join("node.log")).unwrap(), b"a1\nb1\nb2\n", "B's write on A before its reply");
        // An UNSTABLE write just before the move: the release's flush puts it on A.
        write(&mut c, &log, 9, b"u\n", stable_how::UNSTABLE).await.unwrap();

        // migrate --back: the address released on B (demoted: flushed, then no client served),
        // then claimed on A (promoted: it reconciles B at once and streams to it).
        assert_eq!(b.srv.demote().await.unwrap(), Role::Promoted);
        assert_eq!(fs::read(aroot.join("node.log")).unwrap(), b"a1\nb1\nb2\nu\n", "flushed before the release");
        assert!(b.rep.unprotected() && b.rep.reconcile().await.is_err_and(|e| e.contains("standby")));
        drop(c);
        assert!(!reachable(&b.srv).await, "the released side served a client");
        assert_eq!(a.srv.promote().await.unwrap(), Role::Standby);
        wait_protected(&a.rep, Duration::from_secs(10)).await;
        let mut c = root_conn(&a.srv).await;
        // The handles the client had from A, then B, answer on A again.
        assert_eq!(read_all(&mut c, &log).await.unwrap(), b"a1\nb1\nb2\nu\n");
        assert_eq!(read_all(&mut c, &fromb).await.unwrap(), b"written while A was away\n");
        assert_eq!(read_all(&mut c, &conf).await.unwrap(), b"x=1\n");
        assert_eq!(fh(&lookup(&mut c, &top, b"var").await.unwrap().0), fh(&var));
        write(&mut c, &log, 11, b"a3\n", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(fs::read(broot.join("node.log")).unwrap(), b"a1\nb1\nb2\nu\na3\n", "A's write on B again");
        let (wa, wb) = (walk(&aroot), walk(&broot));
        assert_eq!(wa, wb);
        assert_eq!(wa.len(), 5, "{wa:?}");
        assert_eq!(xattr_id(&aroot.join("from-b")), xattr_id(&broot.join("from-b")));
        assert!(xattr_id(&aroot.join("from-b")).is_some());
        drop(c);
    });
}

#[test]
fn two_sides_in_standby_send_nothing_and_two_in_service_refuse_each_others_stream() {
    let pki = Pki::new();
    let (_ta, aroot) = area();
    let (_tb, broot) = area();
    fs::write(aroot.join("only-on-a"), b"a").unwrap();
    fs::write(broot.join("only-on-b"), b"b").unwrap();
    common::run(async {
        // Neither holds the address (a cold start): neither sends, neither tree changes.
        let (pa, pb) = (free_port(), free_port());
        let a = side(&pki, "sn1", "sn2", &aroot, pa, pb, false).await;
        let b = side(&pki, "sn2", "sn1", &broot, pb, pa, false).await;
        for s in [&a, &b] {
            assert!(s.first.as_ref().is_err_and(|e| e.contains("standby")), "{:?}", s.first);
            assert!(s.rep.reconcile().await.is_err_and(|e| e.contains("standby")));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!aroot.join("only-on-b").exists() && !broot.join("only-on-a").exists());
        assert_eq!((a.rs.applied(), b.rs.applied()), (0, 0));
        drop((a, b));

        // Both start holding it (split brain: the fence failed and the operator forced it):
        // each refuses the other's stream, so neither overwrites what clients wrote on the other.
        let (pa, pb) = (free_port(), free_port());
        let a = side(&pki, "sn1", "sn2", &aroot, pa, pb, true).await;
        let b = side(&pki, "sn2", "sn1", &broot, pb, pa, true).await;
        assert!(b.first.as_ref().is_err_and(|e| e.contains("taken over here (promoted)")), "{:?}", b.first);
        let e = a.rep.reconcile().await.unwrap_err();
        assert!(e.contains("taken over here (promoted)"), "{e}");
        let mut ca = root_conn(&a.srv).await;
        let top = ca.root_nfs_fh3();
        let f = create(&mut ca, &top, b"written-on-a", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut ca, &f, 0, b"a\n", stable_how::FILE_SYNC).await.unwrap();
        let mut cb = root_conn(&b.srv).await;
        let g = create(&mut cb, &top, b"written-on-b", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut cb, &g, 0, b"b\n", stable_how::FILE_SYNC).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!broot.join("written-on-a").exists() && !aroot.join("written-on-b").exists());
        assert!(!broot.join("only-on-a").exists() && !aroot.join("only-on-b").exists());
        assert_eq!((a.rs.applied(), b.rs.applied()), (0, 0));
        assert!(a.rep.unprotected() && b.rep.unprotected());
        drop((ca, cb));
    });
}

#[test]
fn a_change_reaching_a_standby_area_is_answered_retry_later_and_not_made() {
    // Through the caller procedures the RPC layer uses (checked with the change lock held, so a
    // change that waited for the lock while the area went to standby is refused the same way).
    let (_t, root) = area();
    let fs = nfs3::AreaFs::open(&root, 1, None, None).unwrap();
    let me = nfs3::rw::Caller::root();
    let top = nfs3::rw::root_id();
    let f = fs.create_as(&me, &top, b"log", nfs3::rw::How::Unchecked(nfs3::oplog::Attrs::default())).unwrap();
    fs.write_as(&me, &f, 0, b"served\n".to_vec(), true).unwrap();
    assert_eq!(fs.set_role(Role::Standby).unwrap(), Role::Serving);
    use nfs3_client::nfs3_types::nfs3::nfsstat3::NFS3ERR_JUKEBOX;
    assert_eq!(fs.write_as(&me, &f, 7, b"standby\n".to_vec(), true), Err(NFS3ERR_JUKEBOX));
    assert_eq!(fs.commit_as(&me, &f), Err(NFS3ERR_JUKEBOX));
    let made = fs.create_as(&me, &top, b"new", nfs3::rw::How::Unchecked(nfs3::oplog::Attrs::default()));
    assert_eq!(made.err(), Some(NFS3ERR_JUKEBOX));
    assert_eq!(fs.remove_as(&me, &top, b"log", false), Err(NFS3ERR_JUKEBOX));
    assert_eq!(fs::read(root.join("log")).unwrap(), b"served\n");
    assert!(!root.join("new").exists());
    fs.set_role(Role::Promoted).unwrap();
    fs.write_as(&me, &f, 7, b"promoted\n".to_vec(), true).unwrap();
    assert_eq!(fs::read(root.join("log")).unwrap(), b"served\npromoted\n");
}
