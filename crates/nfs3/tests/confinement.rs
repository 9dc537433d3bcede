//! Nothing outside the export and nothing in `.hanfs` can be read, whatever the tree holds or
//! the client sends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::time::Duration;

use nfs3_client::nfs3_types::nfs3::{ftype3, nfs_fh3, nfsstat3};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

#[test]
fn symlinks_dotdot_and_private_dirs_stay_inside() {
    let (_tmp, root, outside) = common::sample_tree();
    common::run(async {
        let server = common::start(&root, "/", true).await;
        let mut c = common::connect(server.local_addr().port(), "/").await;
        let r = c.root_nfs_fh3();

        // Symlinks are served as links: their text, never their target.
        for (l, text) in [("escape", "../outside"), ("escape_file", "../outside/secret.txt"), ("link_dir", "sub")] {
            let (fh, a) = common::lookup(&mut c, &r, l.as_bytes()).await.unwrap();
            assert_eq!(a.type_, ftype3::NF3LNK, "{l}");
            assert_eq!(common::readlink(&mut c, &fh).await.unwrap(), text.as_bytes());
            assert!(common::read_all(&mut c, &fh).await.is_err(), "{l}: READ of a symlink");
            assert_eq!(
                common::lookup(&mut c, &fh, b"secret.txt").await.unwrap_err(),
                nfsstat3::NFS3ERR_NOTDIR,
                "{l}: LOOKUP through a symlink"
            );
        }

        // `..` stops at the root; names with a slash are refused.
        let (up, _) = common::lookup(&mut c, &r, b"..").await.unwrap();
        assert_eq!(up.data.to_vec(), r.data.to_vec());
        let (sub, _) = common::lookup(&mut c, &r, b"sub").await.unwrap();
        let (up, _) = common::lookup(&mut c, &sub, b"..").await.unwrap();
        assert_eq!(up.data.to_vec(), r.data.to_vec());
        assert_eq!(common::lookup(&mut c, &r, b"outside").await.unwrap_err(), nfsstat3::NFS3ERR_NOENT);
        for bad in [&b"../outside"[..], b"../outside/secret.txt", b"sub/nested", b"/etc/passwd", b""] {
            assert!(common::lookup(&mut c, &r, bad).await.is_err(), "{}", String::from_utf8_lossy(bad));
        }

        // `.hanfs` is invisible: not listed, not found, not counted in the parent's nlink.
        for d in [&r, &sub] {
            let names: Vec<_> = common::readdir(&mut c, d).await.unwrap().into_iter().map(|e| e.0).collect();
            assert!(!names.iter().any(|n| n == b".hanfs"), "{names:?}");
            assert_eq!(common::lookup(&mut c, d, b".hanfs").await.unwrap_err(), nfsstat3::NFS3ERR_NOENT);
        }
        let ra = common::getattr(&mut c, &r).await.unwrap();
        assert_eq!(ra.nlink, 4, "root: ., sub, many (and not .hanfs)");
        let sa = common::getattr(&mut c, &sub).await.unwrap();
        assert_eq!(sa.nlink, 3, "sub: ., nested (and not .hanfs)");

        // A FIFO is not read (and does not hang the server).
        let (fifo, a) = common::lookup(&mut c, &r, b"fifo").await.unwrap();
        assert_eq!(a.type_, ftype3::NF3FIFO);
        let res = tokio::time::timeout(Duration::from_secs(5), common::read_all(&mut c, &fifo)).await.unwrap();
        assert!(res.is_err());

        // Forged handles: unknown paths are stale, malformed ones refused.
        let mut forged = r.data.to_vec();
        forged.truncate(8);
        forged.extend_from_slice(&[0x5a; 16]);
        assert_eq!(
            common::getattr(&mut c, &nfs_fh3 { data: Opaque::owned(forged.clone()) }).await.unwrap_err(),
            nfsstat3::NFS3ERR_STALE
        );
        forged.truncate(20);
        assert!(common::getattr(&mut c, &nfs_fh3 { data: Opaque::owned(forged) }).await.is_err());

        // A directory on a held handle's path swapped for a symlink to outside: the handle goes
        // stale instead of following the link.
        let (deep, _) = common::lookup_path(&mut c, "sub/nested/deep.txt").await.unwrap();
        fs::create_dir_all(outside.join("fake/nested")).unwrap();
        fs::write(outside.join("fake/nested/deep.txt"), b"STOLEN").unwrap();
        fs::rename(root.join("sub"), root.join("sub.old")).unwrap();
        symlink("../outside/fake", root.join("sub")).unwrap();
        assert_eq!(common::read_all(&mut c, &deep).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
        assert_eq!(common::getattr(&mut c, &deep).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
        let (s, a) = common::lookup(&mut c, &r, b"sub").await.unwrap();
        assert_eq!(a.type_, ftype3::NF3LNK);
        assert_eq!(common::lookup(&mut c, &s, b"nested").await.unwrap_err(), nfsstat3::NFS3ERR_NOTDIR);
        // Put back: the same path has the same handle again.
        fs::remove_file(root.join("sub")).unwrap();
        fs::rename(root.join("sub.old"), root.join("sub")).unwrap();
        assert_eq!(common::read_all(&mut c, &deep).await.unwrap(), b"deep\n".repeat(1000));
    });
}
