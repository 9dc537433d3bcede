//! Stopping a server closes its clients' connections; IPv6 addresses work behind the guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn stop_closes_open_connections() {
    let (_tmp, root, _) = common::sample_tree();
    common::run(async {
        let server = common::start(&root, "/", false).await;
        let mut s = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
        s.write_all(&common::null_call(1)).await.unwrap();
        let mut hdr = [0u8; 8];
        s.read_exact(&mut hdr).await.unwrap();
        assert_eq!(&hdr[4..], &1u32.to_be_bytes(), "reply to our xid");
        let mut rest = vec![0u8; (u32::from_be_bytes(hdr[..4].try_into().unwrap()) & 0x7fff_ffff) as usize - 4];
        s.read_exact(&mut rest).await.unwrap();
        server.stop();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the connection outlived the server: {n:?}");
    });
}

#[test]
fn serves_on_ipv6_when_the_host_has_it() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        testkit::skip("no IPv6 loopback here");
        return;
    }
    let (_tmp, root, _) = common::sample_tree();
    common::run(async {
        let server = nfs3::serve(&root, "[::1]:0".parse().unwrap(), nfs3::Options::default()).await.unwrap();
        assert!(server.local_addr().is_ipv6());
        let s = tokio::net::TcpStream::connect(server.local_addr()).await;
        assert!(s.is_ok());
        // Without the guard the NFS layer binds IPv4 only: refused up front, not half-served.
        let open = nfs3::Options { check_permissions: false, ..nfs3::Options::default() };
        assert!(nfs3::serve(&root, "[::1]:0".parse().unwrap(), open).await.is_err());
    });
}

#[test]
fn a_root_given_through_a_symlink_is_served() {
    let (tmp, root, _) = common::sample_tree();
    let alias = tmp.path().join("install");
    std::os::unix::fs::symlink(&root, &alias).unwrap();
    common::run(async {
        let server = common::start(&alias, "/install", false).await;
        let mut c = common::connect(server.local_addr().port(), "/install").await;
        let (fh, _) = common::lookup_path(&mut c, "hello.txt").await.unwrap();
        assert_eq!(common::read_all(&mut c, &fh).await.unwrap(), b"hello world\n");
    });
}
