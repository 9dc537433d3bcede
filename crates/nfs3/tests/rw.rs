//! The read-write area server (issue 13) against a real NFSv3 client (nfs3_client over TCP,
//! through the guard) and against libnfs' command-line tools. Expected values are what the
//! local file system shows for the area directory (std::fs, xattrs read with rustix), and
//! RFC 1813's rules for the replies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::area::*;
use common::{connect_as, getattr, lookup, read_all, readlink};
use nfs3::oplog::Op;
use nfs3_client::nfs3_types::nfs3::{
    createhow3, createverf3, nfsstat3, sattr3, set_mode3, set_mtime, set_size3, stable_how, ACCESS3args, Nfs3Result,
};

#[test]
fn writes_land_on_disk_with_rfc_1813_stability_and_a_per_start_verifier() {
    let (_tmp, root) = area();
    common::run(async {
        let s = start(&root, None).await;
        let mut c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        let f = create(&mut c, &top, b"log", createhow3::UNCHECKED(mode(0o640))).await.unwrap();
        let md = fs::metadata(root.join("log")).unwrap();
        assert!(md.is_file());
        assert_eq!(md.permissions().mode() & 0o7777, 0o640);
        let id = xattr_id(&root.join("log")).expect("the new file carries its id");
        // The fileid clients see is the id's first 8 bytes, not the inode.
        let a = getattr(&mut c, &f).await.unwrap();
        assert_eq!(a.fileid, u64::from_le_bytes(id[..8].try_into().unwrap()));
        assert_ne!(a.fileid, md.ino());

        let (how, v1) = write(&mut c, &f, 0, b"hello ", stable_how::UNSTABLE).await.unwrap();
        assert_eq!(how, stable_how::UNSTABLE);
        assert_eq!(v1, s.write_verifier());
        let (how, v2) = write(&mut c, &f, 6, b"world\n", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(how, stable_how::FILE_SYNC);
        let (how, _) = write(&mut c, &f, 12, b"!", stable_how::DATA_SYNC).await.unwrap();
        assert_ne!(how, stable_how::UNSTABLE);
        assert_eq!(v2, v1);
        assert_eq!(commit(&mut c, &f).await.unwrap(), v1);
        assert_eq!(fs::read(root.join("log")).unwrap(), b"hello world\n!");
        assert_eq!(read_all(&mut c, &f).await.unwrap(), b"hello world\n!");
        // Not the handle generation, which every replica shares.
        assert_ne!(v1, nfs3::generation_of(EXPORT).to_le_bytes());
        drop(c);
        drop(s);

        // A restart keeps the handle (the id is on the file) and changes the verifier.
        let s2 = start(&root, None).await;
        let mut c = root_conn(&s2).await;
        assert_eq!(read_all(&mut c, &f).await.unwrap(), b"hello world\n!");
        let (_, v3) = write(&mut c, &f, 0, b"H", stable_how::UNSTABLE).await.unwrap();
        assert_ne!(v3, v1, "a new server instance must answer a new write verifier");
        assert_eq!(commit(&mut c, &f).await.unwrap(), v3);
        assert_eq!(fs::read(root.join("log")).unwrap(), b"Hello world\n!");
    });
}

#[test]
fn a_handle_survives_rename_of_the_file_and_of_its_directory() {
    let (_tmp, root) = area();
    common::run(async {
        let s = start(&root, None).await;
        let mut c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        let d = mkdir(&mut c, &top, b"d").await.unwrap();
        assert!(root.join("d").is_dir());
        assert!(xattr_id(&root.join("d")).is_some());
        let f = create(&mut c, &d, b"open.txt", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &f, 0, b"before\n", stable_how::FILE_SYNC).await.unwrap();
        let e = mkdir(&mut c, &top, b"e").await.unwrap();
        rename(&mut c, &d, b"open.txt", &e, b"moved.txt").await.unwrap();
        assert!(!root.join("d/open.txt").exists());
        assert_eq!(fs::read(root.join("e/moved.txt")).unwrap(), b"before\n");
        // The handle the client held still names the file, and LOOKUP of the new name gives it.
        write(&mut c, &f, 7, b"after\n", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(read_all(&mut c, &f).await.unwrap(), b"before\nafter\n");
        assert_eq!(fh(&lookup(&mut c, &e, b"moved.txt").await.unwrap().0), fh(&f));
        assert_eq!(lookup(&mut c, &d, b"open.txt").await.unwrap_err(), nfsstat3::NFS3ERR_NOENT);
        // Renaming the directory keeps both the directory's and the file's handles.
        rename(&mut c, &top, b"e", &d, b"inner").await.unwrap();
        assert_eq!(fs::read(root.join("d/inner/moved.txt")).unwrap(), b"before\nafter\n");
        assert_eq!(read_all(&mut c, &f).await.unwrap(), b"before\nafter\n");
        assert_eq!(fh(&lookup(&mut c, &d, b"inner").await.unwrap().0), fh(&e));
        // Over an existing file: the target is replaced, its handle goes stale.
        let g = create(&mut c, &top, b"g", createhow3::UNCHECKED(mode(0o600))).await.unwrap();
        write(&mut c, &g, 0, b"g", stable_how::FILE_SYNC).await.unwrap();
        rename(&mut c, &e, b"moved.txt", &top, b"g").await.unwrap();
        assert_eq!(fs::read(root.join("g")).unwrap(), b"before\nafter\n");
        assert_eq!(getattr(&mut c, &g).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
        assert_eq!(read_all(&mut c, &f).await.unwrap(), b"before\nafter\n");
        // A directory over a non-empty directory is refused (RFC 1813 §3.3.14).
        let x = mkdir(&mut c, &top, b"x").await.unwrap();
        create(&mut c, &x, b"keep", createhow3::UNCHECKED(mode(0o600))).await.unwrap();
        let err = rename(&mut c, &top, b"d", &top, b"x").await.unwrap_err();
        assert!(matches!(err, nfsstat3::NFS3ERR_EXIST | nfsstat3::NFS3ERR_NOTEMPTY), "{err:?}");
        assert!(root.join("x/keep").exists() && root.join("d/inner").is_dir());
        // Handles survive a restart that walks the tree afresh.
        drop(c);
        drop(s);
        let s = start(&root, None).await;
        let mut c = root_conn(&s).await;
        assert_eq!(read_all(&mut c, &f).await.unwrap(), b"before\nafter\n");
        assert_eq!(getattr(&mut c, &e).await.unwrap().type_, nfs3_client::nfs3_types::nfs3::ftype3::NF3DIR);
    });
}

#[test]
fn create_modes_remove_rmdir_symlink_and_setattr() {
    let (_tmp, root) = area();
    common::run(async {
        let s = start(&root, None).await;
        let mut c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        let a = create(&mut c, &top, b"a", createhow3::GUARDED(mode(0o600))).await.unwrap();
        write(&mut c, &a, 0, b"0123456789", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(
            create(&mut c, &top, b"a", createhow3::GUARDED(mode(0o600))).await.unwrap_err(),
            nfsstat3::NFS3ERR_EXIST
        );
        // UNCHECKED over an existing file keeps it (and its handle); a size in it truncates.
        let trunc = sattr3 { size: set_size3::Some(4), ..sattr3::default() };
        let a2 = create(&mut c, &top, b"a", createhow3::UNCHECKED(trunc)).await.unwrap();
        assert_eq!(fh(&a2), fh(&a));
        assert_eq!(fs::read(root.join("a")).unwrap(), b"0123");
        // EXCLUSIVE: a retry with the same verifier is the same file, another verifier EXIST.
        let v = createverf3([1, 2, 3, 4, 5, 6, 7, 8]);
        let x1 = create(&mut c, &top, b"x", createhow3::EXCLUSIVE(v)).await.unwrap();
        let x2 = create(&mut c, &top, b"x", createhow3::EXCLUSIVE(v)).await.unwrap();
        assert_eq!(fh(&x1), fh(&x2));
        assert_eq!(
            create(&mut c, &top, b"x", createhow3::EXCLUSIVE(createverf3([9; 8]))).await.unwrap_err(),
            nfsstat3::NFS3ERR_EXIST
        );
        // SETATTR: mode, size, mtime as the client gives it.
        let t = nfs3_client::nfs3_types::nfs3::nfstime3 { seconds: 1_700_000_000, nseconds: 123_456_789 };
        let sa = sattr3 {
            mode: set_mode3::Some(0o751),
            size: set_size3::Some(2),
            mtime: set_mtime::SET_TO_CLIENT_TIME(t),
            ..sattr3::default()
        };
        setattr(&mut c, &a, sa).await.unwrap();
        let md = fs::metadata(root.join("a")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o751);
        assert_eq!(md.len(), 2);
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 123_456_789));
        // SYMLINK is made as such, never followed.
        let l = symlink(&mut c, &top, b"l", b"../../etc/passwd").await.unwrap();
        assert_eq!(fs::read_link(root.join("l")).unwrap(), Path::new("../../etc/passwd"));
        assert_eq!(readlink(&mut c, &l).await.unwrap(), b"../../etc/passwd");
        // REMOVE, RMDIR, a non-empty directory refused.
        let d = mkdir(&mut c, &top, b"d").await.unwrap();
        create(&mut c, &d, b"f", createhow3::UNCHECKED(sattr3::default())).await.unwrap();
        assert_eq!(rmdir(&mut c, &top, b"d").await.unwrap_err(), nfsstat3::NFS3ERR_NOTEMPTY);
        remove(&mut c, &d, b"f").await.unwrap();
        rmdir(&mut c, &top, b"d").await.unwrap();
        remove(&mut c, &top, b"l").await.unwrap();
        remove(&mut c, &top, b"x").await.unwrap();
        assert!(!root.join("d").exists() && fs::symlink_metadata(root.join("l")).is_err() && !root.join("x").exists());
        assert_eq!(getattr(&mut c, &x1).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
        assert_eq!(remove(&mut c, &top, b"nothing").await.unwrap_err(), nfsstat3::NFS3ERR_NOENT);
        // Names that are not one component are refused.
        for bad in [&b".."[..], b".", b"a/b", b".hanfs"] {
            assert!(create(&mut c, &top, bad, createhow3::UNCHECKED(sattr3::default())).await.is_err(), "{bad:?}");
        }
    });
}

#[test]
fn changes_stay_beneath_the_area_and_non_root_callers_cannot_make_them() {
    let (tmp, root) = area();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"SECRET").unwrap();
    std::os::unix::fs::symlink("../outside", root.join("esc")).unwrap();
    fs::hard_link(outside.join("secret"), root.join("planted")).unwrap();
    common::run(async {
        let s = start(&root, None).await;
        let mut c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        // Through a symlink to outside: the symlink is no directory here.
        let (esc, _) = lookup(&mut c, &top, b"esc").await.unwrap();
        assert!(create(&mut c, &esc, b"new", createhow3::UNCHECKED(sattr3::default())).await.is_err());
        assert!(mkdir(&mut c, &esc, b"newdir").await.is_err());
        // A planted hard link is never written or truncated.
        let (p, _) = lookup(&mut c, &top, b"planted").await.unwrap();
        assert_eq!(write(&mut c, &p, 0, b"PWNED!", stable_how::FILE_SYNC).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        let trunc = sattr3 { size: set_size3::Some(0), ..sattr3::default() };
        assert!(setattr(&mut c, &p, trunc).await.is_err());
        assert_eq!(fs::read(outside.join("secret")).unwrap(), b"SECRET");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);

        // Root is granted MODIFY by ACCESS; uid 1000 is not, and its changes are refused.
        let acc = |r: nfs3_client::nfs3_types::nfs3::ACCESS3res| match r {
            Nfs3Result::Ok(ok) => ok.access,
            Nfs3Result::Err((e, _)) => panic!("access: {e:?}"),
        };
        let f = create(&mut c, &top, b"f", createhow3::UNCHECKED(mode(0o666))).await.unwrap();
        let all = 0x3f;
        assert_eq!(acc(c.access(&ACCESS3args { object: f.clone(), access: all }).await.unwrap()) & 0x4, 0x4);
        let mut u = connect_as(s.local_addr().port(), EXPORT, 1000, 1000, &[]).await.unwrap();
        assert_eq!(acc(u.access(&ACCESS3args { object: f.clone(), access: all }).await.unwrap()) & 0x1c, 0);
        assert_eq!(write(&mut u, &f, 0, b"x", stable_how::FILE_SYNC).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert_eq!(
            create(&mut u, &top, b"u", createhow3::UNCHECKED(sattr3::default())).await.unwrap_err(),
            nfsstat3::NFS3ERR_ACCES
        );
        assert_eq!(rename(&mut u, &top, b"f", &top, b"g").await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert_eq!(remove(&mut u, &top, b"f").await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert!(root.join("f").exists() && !root.join("u").exists());
        assert_eq!(fs::read(root.join("f")).unwrap(), b"");
        // Reads still work for it, and the connection is still good after refusals.
        assert_eq!(read_all(&mut u, &f).await.unwrap(), b"");
    });
}

/// Records the change log as the primary hands it on.
#[derive(Default)]
struct Recorder(Mutex<Vec<Op>>);

impl nfs3::rw::Replicate for Recorder {
    fn replicate(&self, op: &Op) -> Result<(), nfsstat3> {
        self.0.lock().unwrap().push(op.clone());
        Ok(())
    }
}

#[test]
fn a_replica_fed_the_change_log_serves_the_same_handles_after_a_rename() {
    let (_t1, primary) = area();
    let (_t2, backup) = area();
    let log = Arc::new(Recorder::default());
    common::run(async {
        let s = start(&primary, Some(log.clone() as Arc<dyn nfs3::rw::Replicate>)).await;
        let mut c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        let d = mkdir(&mut c, &top, b"var").await.unwrap();
        let f = create(&mut c, &d, b"messages", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &f, 0, b"line 1\n", stable_how::FILE_SYNC).await.unwrap();
        write(&mut c, &f, 7, b"line 2\n", stable_how::UNSTABLE).await.unwrap();
        commit(&mut c, &f).await.unwrap();
        // The file is renamed while the client holds it (log rotation).
        rename(&mut c, &d, b"messages", &d, b"messages.1").await.unwrap();
        symlink(&mut c, &d, b"current", b"messages.1").await.unwrap();
        let v_primary = s.write_verifier();
        drop(c);
        drop(s);

        // The backup applies the log to an empty area and serves it under the same export.
        let b = nfs3::AreaFs::open(&backup, nfs3::fsid_of(EXPORT), None, None).unwrap();
        for op in log.0.lock().unwrap().iter() {
            b.apply(op).unwrap();
        }
        drop(b);
        let s = start(&backup, None).await;
        let mut c = root_conn(&s).await;
        // The handle from the primary works on the backup.
        assert_eq!(read_all(&mut c, &f).await.unwrap(), b"line 1\nline 2\n");
        let (_, v) = write(&mut c, &f, 14, b"line 3\n", stable_how::UNSTABLE).await.unwrap();
        assert_ne!(v, v_primary, "the backup must answer its own write verifier");
        assert_eq!(fs::read(backup.join("var/messages.1")).unwrap(), b"line 1\nline 2\nline 3\n");
        assert_eq!(fs::read_link(backup.join("var/current")).unwrap(), Path::new("messages.1"));
        assert_eq!(xattr_id(&primary.join("var/messages.1")), xattr_id(&backup.join("var/messages.1")));
        assert_eq!(xattr_id(&primary.join("var")), xattr_id(&backup.join("var")));
    });
}

#[test]
fn libnfs_copies_a_file_in_and_reads_it_back() {
    if testkit::require_program("nfs-cp", "libnfs-utils").is_none() {
        return;
    }
    let (tmp, root) = area();
    let src = tmp.path().join("src.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    fs::write(&src, &data).unwrap();
    let rt = common::runtime();
    let s = rt.block_on(start(&root, None));
    let port = s.local_addr().port();
    let url = |p: &str| format!("nfs://127.0.0.1{EXPORT}/{p}?nfsport={port}&mountport={port}&version=3");
    let out = std::process::Command::new("nfs-cp").arg(&src).arg(url("copied.bin")).output().unwrap();
    assert!(out.status.success(), "nfs-cp: {}", String::from_utf8_lossy(&out.stderr));
    assert!(fs::read(root.join("copied.bin")).unwrap() == data, "content on disk differs");
    assert!(xattr_id(&root.join("copied.bin")).is_some());
    let out = std::process::Command::new("nfs-cat").arg(url("copied.bin")).output().unwrap();
    assert!(out.status.success() && out.stdout == data, "nfs-cat: {}", String::from_utf8_lossy(&out.stderr));
    drop(s);
}
