//! Standby and promotion of a read-write area (issue 13 point 3: the backup never serves an area
//! read-write while the primary does). Real servers in this process, real files, the stream over
//! real mutual TLS with certificates of the cluster CA: a standby server refuses every client
//! (their connections are reset, nothing is read or written), a promoted one serves the primary's
//! handles and refuses the old primary's stream (an entry of a stream already open, and a new
//! stream's Hello), and a demoted one resets its clients and accepts a stream again.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod common;

use common::Pki;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::area::*;
use common::{connect_as, lookup, read_all};
use nfs3::replica::{serve_replica, Peer, ReplicaServer, Replicator};
use nfs3::rw::Role;
use nfs3_client::nfs3_types::nfs3::{createhow3, stable_how};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One NULL call and its whole reply on `s`.
async fn null(s: &mut tokio::net::TcpStream, xid: u32) {
    s.write_all(&common::null_call(xid)).await.unwrap();
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).await.unwrap();
    assert_eq!(&hdr[4..], &xid.to_be_bytes(), "reply to our xid");
    let mut rest = vec![0u8; (u32::from_be_bytes(hdr[..4].try_into().unwrap()) & 0x7fff_ffff) as usize - 4];
    s.read_exact(&mut rest).await.unwrap();
}

async fn serve(root: &Path, standby: bool, rep: Option<Arc<dyn nfs3::rw::Replicate>>) -> nfs3::RwServer {
    let opts = nfs3::RwOptions { export_name: Some(EXPORT.into()), insecure: true, standby };
    nfs3::serve_rw(root, "127.0.0.1:0".parse().unwrap(), opts, rep).await.unwrap()
}

/// The backup in standby, with its replication listener accepting sn1's certificate.
async fn backup(pki: &Pki, root: &Path) -> (nfs3::RwServer, ReplicaServer) {
    let s = serve(root, true, None).await;
    let tls = pki.id("sn2").server_config("sn1").unwrap();
    let r = serve_replica("127.0.0.1:0".parse().unwrap(), tls, EXPORT.into(), s.fs().clone()).await.unwrap();
    (s, r)
}

fn replicator(pki: &Pki, addr: String) -> Arc<Replicator> {
    let peer = Peer {
        addr,
        name: "sn2".into(),
        area: EXPORT.into(),
        timeout: Duration::from_secs(5),
        tls: pki.id("sn1").client_config().unwrap(),
    };
    Replicator::new(peer, tokio::runtime::Handle::current())
}

/// Whether a client can mount and get the root's attributes from the server on `port`.
async fn reachable(port: u16) -> bool {
    match connect_as(port, EXPORT, 0, 0, &[]).await {
        Ok(mut c) => {
            let root = c.root_nfs_fh3();
            common::getattr(&mut c, &root).await.is_ok()
        }
        Err(_) => false,
    }
}

#[test]
fn a_standby_area_serves_no_client_until_promoted_and_a_demotion_resets_its_clients() {
    let (_t, root) = area();
    fs::write(root.join("stale"), b"what a returned primary had").unwrap();
    common::run(async {
        let s = serve(&root, true, None).await;
        assert_eq!(s.role(), Role::Standby);
        assert!(!reachable(s.local_addr().port()).await, "a standby area served a client");

        assert_eq!(s.promote().await.unwrap(), Role::Standby);
        assert_eq!(s.role(), Role::Promoted);
        let mut c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        let f = create(&mut c, &top, b"messages", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &f, 0, b"line 1\n", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(fs::read(root.join("messages")).unwrap(), b"line 1\n");
        // A file put there while in standby (the controller's copy back) is seen once promoted.
        let stale = lookup(&mut c, &top, b"stale").await.unwrap().0;
        assert_eq!(read_all(&mut c, &stale).await.unwrap(), b"what a returned primary had");

        // A connection open while promoted (answered), then the demotion: it is reset.
        let mut open = tokio::net::TcpStream::connect(s.local_addr()).await.unwrap();
        null(&mut open, 1).await;
        assert_eq!(s.demote().await.unwrap(), Role::Promoted);
        assert_eq!(s.role(), Role::Standby);
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "a demoted server kept a connection open: {r:?}");
        drop(c);
        assert!(!reachable(s.local_addr().port()).await, "a demoted area served a new client");
        assert_eq!(fs::read(root.join("messages")).unwrap(), b"line 1\n");
    });
}

#[test]
fn a_promoted_backup_refuses_the_old_primarys_stream_and_a_demoted_one_accepts_a_stream_again() {
    let pki = Pki::new();
    let (_t1, proot) = area();
    let (_t2, broot) = area();
    common::run(async {
        let (bsrv, rs) = backup(&pki, &broot).await;
        let rep = replicator(&pki, rs.local_addr().to_string());
        let psrv = serve(&proot, false, Some(rep.clone() as Arc<dyn nfs3::rw::Replicate>)).await;
        rep.start(psrv.fs()).await.unwrap();
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        let f = create(&mut c, &top, b"node.log", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &f, 0, b"acked 1\n", stable_how::FILE_SYNC).await.unwrap();
        // On the backup's disk when the reply came, yet the backup serves no client.
        assert_eq!(fs::read(broot.join("node.log")).unwrap(), b"acked 1\n");
        assert!(!reachable(bsrv.local_addr().port()).await, "the standby backup served a client");
        assert!(!rep.unprotected());

        // The takeover: the backup is promoted (the primary was fenced). The old primary's open
        // stream must not change the promoted copy any more.
        bsrv.promote().await.unwrap();
        write(&mut c, &f, 8, b"from the fenced primary\n", stable_how::FILE_SYNC).await.unwrap();
        let (_, why) = rep.unprotected_since().expect("the old primary's entry was taken");
        assert!(why.contains("could not apply") && why.contains("ROFS"), "{why}");
        assert_eq!(fs::read(broot.join("node.log")).unwrap(), b"acked 1\n");
        // A new stream of the old primary (its agent restarted) is refused at its Hello.
        let rep2 = replicator(&pki, rs.local_addr().to_string());
        drop(c);
        drop(psrv);
        let psrv = serve(&proot, false, Some(rep2.clone() as Arc<dyn nfs3::rw::Replicate>)).await;
        // Its start's reconciliation is refused like the stream.
        let start = rep2.start(psrv.fs()).await.unwrap();
        assert!(start.result.is_err_and(|e| e.contains("taken over here (promoted)")));
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        create(&mut c, &top, b"late", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        let (_, why) = rep2.unprotected_since().expect("the new stream was accepted");
        assert!(why.contains("taken over here (promoted)"), "{why}");
        assert!(!broot.join("late").exists());
        // The promoted backup serves the primary's handle, with what was acknowledged.
        let mut bc = root_conn(&bsrv).await;
        assert_eq!(read_all(&mut bc, &f).await.unwrap(), b"acked 1\n");
        write(&mut bc, &f, 8, b"acked 2\n", stable_how::FILE_SYNC).await.unwrap();
        drop(bc);
        drop(c);
        drop(psrv);

        // Released: in standby again, a stream is accepted (a primary back in service).
        bsrv.demote().await.unwrap();
        assert!(!reachable(bsrv.local_addr().port()).await);
        let rep3 = replicator(&pki, rs.local_addr().to_string());
        // The returned primary starts over the copy back of the promoted area (its start's
        // reconciliation makes the backup equal to the primary's tree, so that copy must hold it).
        let p3 = tempfile::tempdir().unwrap();
        let cp =
            std::process::Command::new("cp").arg("-a").arg(format!("{}/.", broot.display())).arg(p3.path()).status();
        assert!(cp.unwrap().success());
        let psrv = serve(p3.path(), false, Some(rep3.clone() as Arc<dyn nfs3::rw::Replicate>)).await;
        rep3.start(psrv.fs()).await.unwrap().result.unwrap();
        let mut c = root_conn(&psrv).await;
        let top = c.root_nfs_fh3();
        let g = create(&mut c, &top, b"after-return", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &g, 0, b"back\n", stable_how::FILE_SYNC).await.unwrap();
        assert!(!rep3.unprotected(), "{:?}", rep3.unprotected_since());
        assert_eq!(fs::read(broot.join("after-return")).unwrap(), b"back\n");
        assert_eq!(fs::read(broot.join("node.log")).unwrap(), b"acked 1\nacked 2\n");
    });
}
