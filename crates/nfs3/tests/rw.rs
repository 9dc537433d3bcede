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
fn changes_stay_beneath_the_area_and_a_planted_link_is_never_written() {
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
        // A planted hard link is never written, truncated, or linked again.
        let (p, _) = lookup(&mut c, &top, b"planted").await.unwrap();
        assert_eq!(write(&mut c, &p, 0, b"PWNED!", stable_how::FILE_SYNC).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        let trunc = sattr3 { size: set_size3::Some(0), ..sattr3::default() };
        assert!(setattr(&mut c, &p, trunc).await.is_err());
        assert_eq!(link(&mut c, &p, &top, b"again").await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert_eq!(fs::read(outside.join("secret")).unwrap(), b"SECRET");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
        assert!(!root.join("again").exists());
    });
}

#[test]
fn a_link_made_through_the_server_stays_writable_one_planted_beside_it_does_not() {
    let (_tmp, root) = area();
    common::run(async {
        let s = start(&root, None).await;
        let mut c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        let d = mkdir(&mut c, &top, b"d").await.unwrap();
        let f = create(&mut c, &top, b"lockfile", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        write(&mut c, &f, 0, b"one", stable_how::FILE_SYNC).await.unwrap();
        // LINK (RFC 1813 §3.3.15): nlink one more, the same inode under both names.
        let a = link(&mut c, &f, &d, b"lockfile.lnk").await.unwrap();
        assert_eq!(a.nlink, 2);
        let (m1, m2) =
            (fs::metadata(root.join("lockfile")).unwrap(), fs::metadata(root.join("d/lockfile.lnk")).unwrap());
        assert_eq!((m1.ino(), m1.nlink()), (m2.ino(), 2));
        assert_eq!(fh(&lookup(&mut c, &d, b"lockfile.lnk").await.unwrap().0), fh(&f), "one file, one handle");
        // A link this server made keeps the file writable, through either name.
        write(&mut c, &f, 3, b" two", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(fs::read(root.join("d/lockfile.lnk")).unwrap(), b"one two");
        assert_eq!(link(&mut c, &f, &d, b"lockfile.lnk").await.unwrap_err(), nfsstat3::NFS3ERR_EXIST);
        assert_eq!(link(&mut c, &d, &top, b"dirlink").await.unwrap_err(), nfsstat3::NFS3ERR_PERM);
        // A link planted behind the server's back makes it unwritable again ...
        fs::hard_link(root.join("lockfile"), root.join("planted")).unwrap();
        assert_eq!(write(&mut c, &f, 0, b"X", stable_how::FILE_SYNC).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert_eq!(link(&mut c, &f, &top, b"third").await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        // ... until it is gone.
        fs::remove_file(root.join("planted")).unwrap();
        write(&mut c, &f, 0, b"O", stable_how::FILE_SYNC).await.unwrap();
        // Removing a link through the server: the rest of the file stays reachable and writable.
        remove(&mut c, &top, b"lockfile").await.unwrap();
        assert_eq!(fs::metadata(root.join("d/lockfile.lnk")).unwrap().nlink(), 1);
        write(&mut c, &f, 0, b"o", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(read_all(&mut c, &f).await.unwrap(), b"one two");
        // And after a restart (the count is kept with the file).
        link(&mut c, &f, &top, b"back").await.unwrap();
        drop(c);
        drop(s);
        let s = start(&root, None).await;
        let mut c = root_conn(&s).await;
        write(&mut c, &f, 0, b"!", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(fs::read(root.join("back")).unwrap(), b"!ne two");
    });
}

#[test]
fn mknod_makes_fifos_and_sockets_and_refuses_devices() {
    use nfs3_client::nfs3_types::nfs3::{devicedata3, mknoddata3, specdata3};
    use std::os::unix::fs::FileTypeExt;
    let (_tmp, root) = area();
    common::run(async {
        let s = start(&root, None).await;
        let mut c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        let p = mknod(&mut c, &top, b"fifo", mknoddata3::NF3FIFO(mode(0o640))).await.unwrap();
        let md = fs::symlink_metadata(root.join("fifo")).unwrap();
        assert!(md.file_type().is_fifo());
        assert_eq!(md.permissions().mode() & 0o7777, 0o640);
        assert_eq!(getattr(&mut c, &p).await.unwrap().type_, nfs3_client::nfs3_types::nfs3::ftype3::NF3FIFO);
        mknod(&mut c, &top, b"sock", mknoddata3::NF3SOCK(mode(0o600))).await.unwrap();
        assert!(fs::symlink_metadata(root.join("sock")).unwrap().file_type().is_socket());
        // Devices: not for a statelite tree, not even for root (see rw::ops).
        let dev = devicedata3 { dev_attributes: mode(0o666), spec: specdata3 { specdata1: 8, specdata2: 0 } };
        assert_eq!(mknod(&mut c, &top, b"sda", mknoddata3::NF3BLK(dev)).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        let dev = devicedata3 { dev_attributes: mode(0o666), spec: specdata3 { specdata1: 1, specdata2: 3 } };
        assert_eq!(mknod(&mut c, &top, b"null", mknoddata3::NF3CHR(dev)).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert!(!root.join("sda").exists() && !root.join("null").exists());
        assert_eq!(
            mknod(&mut c, &top, b"fifo", mknoddata3::NF3FIFO(mode(0o600))).await.unwrap_err(),
            nfsstat3::NFS3ERR_EXIST
        );
        remove(&mut c, &top, b"fifo").await.unwrap();
        assert!(fs::symlink_metadata(root.join("fifo")).is_err());
    });
}

#[test]
fn mkdir_and_create_keep_the_mode_sent() {
    let (_tmp, root) = area();
    common::run(async {
        let s = start(&root, None).await;
        let mut c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        // MKDIR's sattr3 (RFC 1813 §3.3.9): the NFS layer drops it, the guard does not.
        mkdir_mode(&mut c, &top, b"private", 0o700).await.unwrap();
        assert_eq!(fs::metadata(root.join("private")).unwrap().permissions().mode() & 0o7777, 0o700);
        mkdir_mode(&mut c, &top, b"tmp", 0o1777).await.unwrap();
        assert_eq!(fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
        create(&mut c, &top, b"key", createhow3::GUARDED(mode(0o600))).await.unwrap();
        assert_eq!(fs::metadata(root.join("key")).unwrap().permissions().mode() & 0o7777, 0o600);
        let md = fs::metadata(root.join("private")).unwrap();
        assert_eq!((md.uid(), md.gid()), (0, 0), "root's objects are root's");
    });
}

#[test]
fn other_users_are_judged_by_mode_bits_owner_and_sticky_directories() {
    // Making files owned by other users needs CAP_CHOWN.
    if !testkit::require_root("files owned by other users") {
        return;
    }
    let (_tmp, root) = area();
    common::run(async {
        let s = start(&root, None).await;
        let port = s.local_addr().port();
        let mut c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        let acc = |r: nfs3_client::nfs3_types::nfs3::ACCESS3res| match r {
            Nfs3Result::Ok(ok) => ok.access,
            Nfs3Result::Err((e, _)) => panic!("access: {e:?}"),
        };
        let f = create(&mut c, &top, b"f", createhow3::UNCHECKED(mode(0o666))).await.unwrap();
        let tmp = mkdir_mode(&mut c, &top, b"tmp", 0o1777).await.unwrap();
        let all = 0x3f;
        assert_eq!(acc(c.access(&ACCESS3args { object: f.clone(), access: all }).await.unwrap()) & 0xc, 0xc);
        let mut u = connect_as(port, EXPORT, 1000, 1000, &[1000, 50]).await.unwrap();
        let mut v = connect_as(port, EXPORT, 1001, 1001, &[]).await.unwrap();
        // The area's root is root's, 0755: uid 1000 may not add or remove entries there ...
        assert_eq!(acc(u.access(&ACCESS3args { object: top.clone(), access: all }).await.unwrap()) & 0x1c, 0);
        assert_eq!(
            create(&mut u, &top, b"u", createhow3::UNCHECKED(sattr3::default())).await.unwrap_err(),
            nfsstat3::NFS3ERR_ACCES
        );
        assert_eq!(rename(&mut u, &top, b"f", &top, b"g").await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert_eq!(remove(&mut u, &top, b"f").await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert_eq!(mkdir_mode(&mut u, &top, b"ud", 0o755).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        // ... but may write a file whose mode lets everyone write (ACCESS says so too).
        assert_eq!(acc(u.access(&ACCESS3args { object: f.clone(), access: all }).await.unwrap()) & 0xc, 0xc);
        write(&mut u, &f, 0, b"by 1000", stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(fs::read(root.join("f")).unwrap(), b"by 1000");
        // Not chmod it (not the owner), nor set its times to ones it chose; truncate it, yes.
        assert_eq!(setattr(&mut u, &f, mode(0o777)).await.unwrap_err(), nfsstat3::NFS3ERR_PERM);
        let t = nfs3_client::nfs3_types::nfs3::nfstime3 { seconds: 1_000_000_000, nseconds: 0 };
        let touch = sattr3 { mtime: set_mtime::SET_TO_CLIENT_TIME(t), ..sattr3::default() };
        assert_eq!(setattr(&mut u, &f, touch.clone()).await.unwrap_err(), nfsstat3::NFS3ERR_PERM);
        setattr(&mut u, &f, sattr3 { size: set_size3::Some(2), ..sattr3::default() }).await.unwrap();
        assert_eq!(fs::read(root.join("f")).unwrap(), b"by");

        // In the sticky 1777 directory: its objects are its own, with the mode it sent.
        let mine = create(&mut u, &tmp, b"mine", createhow3::GUARDED(mode(0o640))).await.unwrap();
        let md = fs::metadata(root.join("tmp/mine")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.permissions().mode() & 0o7777), (1000, 1000, 0o640));
        let ud = mkdir_mode(&mut u, &tmp, b"ud", 0o750).await.unwrap();
        let md = fs::metadata(root.join("tmp/ud")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.permissions().mode() & 0o7777), (1000, 1000, 0o750));
        symlink(&mut u, &tmp, b"ul", b"mine").await.unwrap();
        assert_eq!(fs::symlink_metadata(root.join("tmp/ul")).unwrap().uid(), 1000);
        // The owner chmods and touches it, and gives it to a group it is in, not to another user.
        setattr(&mut u, &mine, mode(0o644)).await.unwrap();
        setattr(&mut u, &mine, touch).await.unwrap();
        setattr(&mut u, &mine, sattr3 { gid: nfs3_client::nfs3_types::nfs3::set_gid3::Some(50), ..sattr3::default() })
            .await
            .unwrap();
        let md = fs::metadata(root.join("tmp/mine")).unwrap();
        assert_eq!((md.gid(), md.permissions().mode() & 0o7777, md.mtime()), (50, 0o644, 1_000_000_000));
        let give = sattr3 { uid: nfs3_client::nfs3_types::nfs3::set_uid3::Some(1001), ..sattr3::default() };
        assert_eq!(setattr(&mut u, &mine, give).await.unwrap_err(), nfsstat3::NFS3ERR_PERM);
        let other = sattr3 { gid: nfs3_client::nfs3_types::nfs3::set_gid3::Some(7), ..sattr3::default() };
        assert_eq!(setattr(&mut u, &mine, other).await.unwrap_err(), nfsstat3::NFS3ERR_PERM);
        // uid 1001 may neither write it (0644), nor remove or rename it (sticky), nor link it.
        assert_eq!(write(&mut v, &mine, 0, b"x", stable_how::FILE_SYNC).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert_eq!(remove(&mut v, &tmp, b"mine").await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert_eq!(rename(&mut v, &tmp, b"mine", &tmp, b"stolen").await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        assert_eq!(link(&mut v, &mine, &tmp, b"stolen").await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        // Into 1000's own 0750 directory 1001 cannot even make anything.
        assert_eq!(
            create(&mut v, &ud, b"x", createhow3::UNCHECKED(sattr3::default())).await.unwrap_err(),
            nfsstat3::NFS3ERR_ACCES
        );
        // Its own objects in the sticky directory it may remove; 1000 removes and links its own.
        create(&mut v, &tmp, b"theirs", createhow3::UNCHECKED(mode(0o666))).await.unwrap();
        assert_eq!(remove(&mut u, &tmp, b"theirs").await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
        remove(&mut v, &tmp, b"theirs").await.unwrap();
        link(&mut u, &mine, &ud, b"mine.lnk").await.unwrap();
        rename(&mut u, &tmp, b"mine", &ud, b"moved").await.unwrap();
        assert_eq!(fs::metadata(root.join("tmp/ud/moved")).unwrap().nlink(), 2);
        // A set-group-id directory gives its group to what is made in it.
        let sg = mkdir_mode(&mut c, &top, b"sg", 0o2777).await.unwrap();
        setattr(&mut c, &sg, sattr3 { gid: nfs3_client::nfs3_types::nfs3::set_gid3::Some(60), ..sattr3::default() })
            .await
            .unwrap();
        setattr(&mut c, &sg, mode(0o2777)).await.unwrap();
        create(&mut u, &sg, b"file", createhow3::UNCHECKED(mode(0o644))).await.unwrap();
        mkdir_mode(&mut u, &sg, b"sub", 0o755).await.unwrap();
        let (mf, md) = (fs::metadata(root.join("sg/file")).unwrap(), fs::metadata(root.join("sg/sub")).unwrap());
        assert_eq!((mf.uid(), mf.gid()), (1000, 60));
        assert_eq!((md.gid(), md.permissions().mode() & 0o7777), (60, 0o2755), "a directory inherits set-group-id");
        // Reads still follow the mode bits, and the connections are still good after refusals.
        assert_eq!(read_all(&mut v, &f).await.unwrap(), b"by");
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

#[test]
fn libnfs_as_another_user_writes_as_that_user() {
    if testkit::require_program("nfs-cp", "libnfs-utils").is_none() || !testkit::require_root("files owned by uid 1000")
    {
        return;
    }
    let (tmp, root) = area();
    fs::create_dir(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let src = tmp.path().join("src.txt");
    fs::write(&src, b"written by uid 1000\n").unwrap();
    let rt = common::runtime();
    let s = rt.block_on(start(&root, None));
    let port = s.local_addr().port();
    // libnfs sends AUTH_UNIX with the uid/gid of its URL (`?uid=`, `?gid=`).
    let url =
        |p: &str| format!("nfs://127.0.0.1{EXPORT}/{p}?nfsport={port}&mountport={port}&version=3&uid=1000&gid=1000");
    let out = std::process::Command::new("nfs-cp").arg(&src).arg(url("tmp/mine.txt")).output().unwrap();
    assert!(out.status.success(), "nfs-cp: {}", String::from_utf8_lossy(&out.stderr));
    let md = fs::metadata(root.join("tmp/mine.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000), "owned by the caller, as nfsd with no_root_squash");
    assert_eq!(fs::read(root.join("tmp/mine.txt")).unwrap(), b"written by uid 1000\n");
    // Not into the root-owned 0755 area directory.
    let out = std::process::Command::new("nfs-cp").arg(&src).arg(url("denied.txt")).output().unwrap();
    assert!(!out.status.success(), "uid 1000 wrote into a 0755 root directory");
    assert!(!root.join("denied.txt").exists());
    drop(s);
}

/// One RPC call record on `s` and its whole reply record (after the record mark).
async fn rpc(s: &mut tokio::net::TcpStream, call: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut rec = (0x8000_0000u32 | call.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(call);
    s.write_all(&rec).await.unwrap();
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).await.unwrap();
    let mut body = vec![0u8; (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize];
    s.read_exact(&mut body).await.unwrap();
    body
}

/// A call with AUTH_UNIX uid 0 and `args`.
fn call(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [xid, 0, 2, prog, vers, proc_, 1, 24, 0, 4] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(b"node");
    for w in [0u32, 0, 0, 0, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(args);
    v
}

#[test]
fn nfsv4_is_refused_with_prog_mismatch_naming_version_3() {
    let (_tmp, root) = area();
    common::run(async {
        let s = start(&root, None).await;
        let mut t = tokio::net::TcpStream::connect(s.local_addr()).await.unwrap();
        // What the Linux client's mount sends first for vers=4: NULL of NFS version 4.
        for vers in [4u32, 2] {
            let r = rpc(&mut t, &call(0x44, 100_003, vers, 0, &[])).await;
            let w = |i: usize| u32::from_be_bytes(r[i * 4..i * 4 + 4].try_into().unwrap());
            // xid, REPLY, MSG_ACCEPTED, AUTH_NULL verifier, PROG_MISMATCH, low 3, high 3
            assert_eq!((w(0), w(1), w(2), w(5)), (0x44, 1, 0, 2), "v{vers}: {r:?}");
            assert_eq!((w(6), w(7)), (3, 3), "the one version served");
        }
        // NFSv3 on the same connection goes on: NULL answered SUCCESS.
        let r = rpc(&mut t, &call(0x45, 100_003, 3, 0, &[])).await;
        assert_eq!(u32::from_be_bytes(r[20..24].try_into().unwrap()), 0);
    });
}

#[test]
fn a_retransmitted_change_is_answered_from_the_reply_cache_and_made_once() {
    use nfs3_client::nfs3_types::nfs3::{diropargs3, CREATE3args};
    use nfs3_client::nfs3_types::xdr_codec::Pack;
    let (_tmp, root) = area();
    common::run(async {
        let s = start(&root, None).await;
        let c = root_conn(&s).await;
        let top = c.root_nfs_fh3();
        let args = CREATE3args {
            where_: diropargs3 { dir: top.clone(), name: common::name(b"once") },
            how: createhow3::GUARDED(mode(0o600)),
        };
        let mut a = Vec::new();
        args.pack(&mut a).unwrap();
        let mut t = tokio::net::TcpStream::connect(s.local_addr()).await.unwrap();
        let first = rpc(&mut t, &call(0x77, 100_003, 3, 8, &a)).await;
        // Accepted, NFS3_OK: made.
        assert_eq!(u32::from_be_bytes(first[24..28].try_into().unwrap()), 0, "{first:?}");
        // The same xid again (the reply was lost, say): the same reply, not NFS3ERR_EXIST.
        let again = rpc(&mut t, &call(0x77, 100_003, 3, 8, &a)).await;
        assert_eq!(again, first);
        // On a new connection too (the client reconnected).
        let mut t2 = tokio::net::TcpStream::connect(s.local_addr()).await.unwrap();
        assert_eq!(rpc(&mut t2, &call(0x77, 100_003, 3, 8, &a)).await, first);
        // Another xid is a new call: GUARDED finds the file.
        let other = rpc(&mut t, &call(0x78, 100_003, 3, 8, &a)).await;
        assert_eq!(u32::from_be_bytes(other[24..28].try_into().unwrap()), 17, "NFS3ERR_EXIST");
        assert!(root.join("once").is_file());
    });
}
