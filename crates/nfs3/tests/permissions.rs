//! Per-user permissions as the kernel server applies them with `sec=sys,no_root_squash`: a
//! client user reads only what the mode bits give its uid/gids (root reads everything), both in
//! ACCESS (which a Linux client trusts, also for its page cache) and in READ/LOOKUP/READDIR.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};

use nfs3_client::nfs3_types::nfs3::{nfs_fh3, nfsstat3, ACCESS3args, Nfs3Result};

const READ: u32 = 0x1;
const LOOKUP: u32 = 0x2;
const EXECUTE: u32 = 0x20;

async fn access(c: &mut common::Conn, fh: &nfs_fh3) -> u32 {
    match c.access(&ACCESS3args { object: fh.clone(), access: 0x3f }).await.unwrap() {
        Nfs3Result::Ok(ok) => ok.access,
        Nfs3Result::Err((e, _)) => panic!("ACCESS: {e:?}"),
    }
}

#[test]
fn mode_bits_decide_what_each_user_reads() {
    let (_tmp, root, _) = common::sample_tree();
    let me = rustix::process::geteuid().as_raw();
    // Owned by `me` (root in CI) and group 4242; other users are me+1000 and me+2000.
    let (other, member) = (me + 1000, me + 2000);
    let set = |p: &str, mode: u32| {
        let p = root.join(p);
        chown(&p, None, Some(4242)).ok();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    fs::write(root.join("shadow"), b"root:$6$hash:::\n").unwrap();
    set("shadow", 0o640);
    fs::write(root.join("tool"), b"#!/bin/sh\n").unwrap();
    set("tool", 0o711);
    fs::create_dir(root.join("private")).unwrap();
    fs::write(root.join("private/key"), b"KEY").unwrap();
    set("private", 0o700);
    let group_ok = fs::metadata(root.join("shadow")).map(|m| std::os::unix::fs::MetadataExt::gid(&m) == 4242).unwrap();

    common::run(async {
        let server = common::start(&root, "/", false).await;
        let port = server.local_addr().port();
        let mut owner = common::connect_as(port, "/", me, me, &[]).await.unwrap();
        let mut stranger = common::connect_as(port, "/", other, other, &[]).await.unwrap();
        let mut superuser = common::connect_as(port, "/", 0, 0, &[]).await.unwrap();

        let (shadow, _) = common::lookup_path(&mut owner, "shadow").await.unwrap();
        let (tool, _) = common::lookup_path(&mut owner, "tool").await.unwrap();
        let (private, _) = common::lookup_path(&mut owner, "private").await.unwrap();
        let (key, _) = common::lookup_path(&mut owner, "private/key").await.unwrap();

        // The owner and root read; a stranger gets neither ACCESS nor the bytes.
        assert_eq!(common::read_all(&mut owner, &shadow).await.unwrap(), b"root:$6$hash:::\n");
        assert_eq!(common::read_all(&mut superuser, &shadow).await.unwrap(), b"root:$6$hash:::\n");
        assert_eq!(access(&mut owner, &shadow).await & READ, READ);
        assert_eq!(access(&mut superuser, &shadow).await & READ, READ);
        assert_eq!(access(&mut stranger, &shadow).await & (READ | EXECUTE), 0);
        assert_eq!(common::read_all(&mut stranger, &shadow).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        if group_ok {
            let mut m = common::connect_as(port, "/", member, member, &[7, 4242]).await.unwrap();
            assert_eq!(common::read_all(&mut m, &shadow).await.unwrap(), b"root:$6$hash:::\n");
            assert_eq!(access(&mut m, &shadow).await & READ, READ);
        }

        // Execute-only: ACCESS says execute, not read; READ is allowed (a client must read a
        // program to run it), as the kernel server does.
        assert_eq!(access(&mut stranger, &tool).await & (READ | EXECUTE), EXECUTE);
        assert!(common::read_all(&mut stranger, &tool).await.is_ok());

        // A 0700 directory: no search, no listing, no lookup inside for others.
        assert_eq!(access(&mut stranger, &private).await & (READ | LOOKUP), 0);
        assert_eq!(access(&mut owner, &private).await & (READ | LOOKUP), READ | LOOKUP);
        assert_eq!(common::lookup(&mut stranger, &private, b"key").await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert_eq!(common::readdir(&mut stranger, &private).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert_eq!(common::readdir(&mut owner, &private).await.unwrap().len(), 1);
        // The file inside is world-readable: a handle obtained elsewhere still reads (as with
        // the kernel server, handles are capabilities; directory modes guard names, not inodes).
        assert_eq!(common::read_all(&mut stranger, &key).await.unwrap(), b"KEY");

        // The NFS layer behind the guard refuses calls that did not come through it.
        assert!(common::connect_as(server.backend_addr().port(), "/", 0, 0, &[]).await.is_err());
    });
}

#[test]
fn unprivileged_client_ports_are_refused_by_default() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_tmp, root, _) = common::sample_tree();
    common::run(async {
        let server = common::start_with(&root, "/", false, false).await;
        let port = server.local_addr().port();
        // An ordinary socket (a port >= 1024, what any user on a node can open): closed, no answer.
        let mut s = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
        assert!(s.local_addr().unwrap().port() >= 1024);
        let _ = s.write_all(&common::null_call(1)).await;
        let mut b = [0u8; 4];
        assert!(matches!(s.read(&mut b).await, Ok(0) | Err(_)), "an unprivileged port was served");
        if common::is_root() {
            // A privileged port (root on a node, the kernel client) is served.
            let c = nfs3_client::Nfs3ConnectionBuilder::new(nfs3_client::tokio::TokioConnector, "127.0.0.1", "/")
                // nfs3_client asks the portmapper from an ordinary port: name the ports instead.
                .mount_port(port)
                .nfs3_port(port)
                .connect_from_privileged_port(true)
                .mount()
                .await;
            assert!(c.is_ok(), "a privileged port was refused");
        }
    });
}
