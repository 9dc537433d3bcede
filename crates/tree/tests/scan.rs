#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Scanner behaviour: sockets, excludes, the hash cache, sparse files, digest stability.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;
use tree::{Entry, Kind, Manifest, ScanOptions, Scanner};

#[test]
fn sockets_are_skipped_and_counted() {
    let t = tempfile::tempdir().unwrap();
    let _l = std::os::unix::net::UnixListener::bind(t.path().join("sock")).unwrap();
    fs::write(t.path().join("f"), b"x").unwrap();
    let m = tree::scan(t.path(), &[]).unwrap();
    assert_eq!(m.skipped_sockets, 1);
    assert!(!m.entries.contains_key(&b"sock"[..]));
    assert!(m.entries.contains_key(&b"f"[..]));
    // Counted for the report, nested ones too, and the count survives serialization.
    fs::create_dir_all(t.path().join("d/e")).unwrap();
    let _l2 = std::os::unix::net::UnixListener::bind(t.path().join("d/s2")).unwrap();
    let _l3 = std::os::unix::net::UnixListener::bind(t.path().join("d/e/s3")).unwrap();
    let m = tree::scan(t.path(), &[]).unwrap();
    assert_eq!(m.counts().sockets, 3);
    assert_eq!(Manifest::from_bytes(&m.to_bytes().unwrap()).unwrap().counts().sockets, 3);
}

/// Sets a file's mtime with `utimensat` directly (not through the engine).
fn set_mtime(p: &std::path::Path, sec: i64, nsec: i64) {
    use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
    let ts = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: sec, tv_nsec: nsec },
    };
    rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap_or_else(|e| panic!("utimensat {p:?}: {e}"));
}

/// mtimes after 2262-04-11 (past i64 nanoseconds) and before 1970 are replicated exactly,
/// kept in place or staged, and the digest sees a difference between two such times.
#[test]
fn far_mtimes_round_trip_exactly() {
    // 2300-01-01, 2400-06-01 and 1960-01-01 (seconds since the epoch, from `date -d ... +%s`).
    let (y2300, y2400, y1960) = (10_413_792_000i64, 13_582_598_400i64, -315_619_200i64);
    let t = tempfile::tempdir().unwrap();
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    fs::create_dir_all(old.join("d")).unwrap();
    for n in ["kept", "changed", "past", "d/f"] {
        fs::write(old.join(n), n.as_bytes()).unwrap();
    }
    copy_tree(&old, &new);
    fs::write(new.join("changed"), b"new content").unwrap();
    fs::write(new.join("added"), b"added").unwrap();
    let want: [(&str, i64, i64); 6] = [
        ("kept", y2300, 123_456_789),
        ("changed", y2400, 999_999_999),
        ("added", y2300, 1),
        ("past", y1960, 987_654_321),
        ("d/f", -1, 500),
        ("d", y2400, 42),
    ];
    for (n, s, ns) in want {
        set_mtime(&new.join(n), s, ns);
    }
    let probe = fs::metadata(new.join("kept")).unwrap();
    if probe.mtime() != y2300 {
        testkit::skip(format!("this filesystem does not hold mtimes after 2262 ({})", probe.mtime()));
        return;
    }
    let src = Source::new(&old, &new, &t.path().join("mn"));
    let rep = t.path().join("rep");
    let mut r = replica_copy(&old, &rep, &t.path().join("sn"));
    apply(&src, &mut r, src.plan(2)).unwrap();
    for (n, s, ns) in want {
        let md = fs::symlink_metadata(rep.join(n)).unwrap();
        assert_eq!((md.mtime(), md.mtime_nsec()), (s, ns), "{n}: mtime on the replica");
    }
    assert_eq!(walk(&rep), walk(&new));
    // The digest tells 2300 from 2400 (both past the end of i64 nanoseconds).
    let a = tree::scan(&rep, &[]).unwrap().digest();
    set_mtime(&rep.join("kept"), y2400, 123_456_789);
    assert_ne!(tree::scan(&rep, &[]).unwrap().digest(), a, "digest blind to an mtime change after 2262");
}

/// A manifest serialized by an older hanfs (mtime as i64 nanoseconds) is still read, with its
/// times split into seconds and nanoseconds.
#[test]
fn older_manifest_format_is_read() {
    #[derive(serde::Serialize)]
    struct OldEntry {
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime_ns: i64,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    }
    let mut old = BTreeMap::new();
    old.insert(
        Vec::new(),
        OldEntry { kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, mtime_ns: -1_500_000_000, xattrs: vec![] },
    );
    old.insert(
        b"f".to_vec(),
        OldEntry {
            kind: Kind::Fifo,
            mode: 0o600,
            uid: 1,
            gid: 2,
            mtime_ns: 1_700_000_000_123_456_789,
            xattrs: vec![(b"user.a".to_vec(), b"v".to_vec())],
        },
    );
    let bytes = postcard::to_stdvec(&(old, 2u64)).unwrap();
    let m = Manifest::from_bytes(&bytes).unwrap();
    assert_eq!(m.skipped_sockets, 2);
    let root = &m.entries[&b""[..]];
    assert_eq!((root.mtime_sec, root.mtime_nsec), (-2, 500_000_000));
    let f = &m.entries[&b"f"[..]];
    assert_eq!((f.mtime_sec, f.mtime_nsec, f.uid, f.gid), (1_700_000_000, 123_456_789, 1, 2));
    assert_eq!(f.xattrs, vec![(b"user.a".to_vec(), b"v".to_vec())]);
}

#[test]
fn excludes_and_control_dir() {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir_all(t.path().join("var/cache/yum")).unwrap();
    fs::create_dir_all(t.path().join(".hanfs/stage")).unwrap();
    fs::create_dir_all(t.path().join("sub/.hanfs")).unwrap();
    fs::write(t.path().join("var/cache/yum/big"), b"x").unwrap();
    fs::write(t.path().join("var/keep"), b"x").unwrap();
    let m = tree::scan(t.path(), &["var/cache/**".to_string()]).unwrap();
    let keys: Vec<String> = m.entries.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert_eq!(keys, ["", "sub", "sub/.hanfs", "var", "var/cache", "var/keep"]);
}

#[test]
fn cache_is_persistent_and_sees_same_size_rewrites() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("r");
    let state = t.path().join("state");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&state).unwrap();
    fs::write(root.join("f"), b"aaaa").unwrap();
    let opts = ScanOptions { excludes: vec![], state_dir: Some(state.clone()) };
    let m1 = Scanner::new(&root, &opts).unwrap().scan().unwrap();
    assert!(state.join("hashcache2").exists());
    // A fresh scanner (new process) reuses the cache and gets the same answer.
    let m2 = Scanner::new(&root, &opts).unwrap().scan().unwrap();
    assert_eq!(m1, m2);
    // Same size, mtime put back: only ctime tells, and the rescan must notice.
    let mt = fs::metadata(root.join("f")).unwrap().modified().unwrap();
    fs::write(root.join("f"), b"bbbb").unwrap();
    fs::File::options().write(true).open(root.join("f")).unwrap().set_modified(mt).unwrap();
    let m3 = Scanner::new(&root, &opts).unwrap().scan().unwrap();
    assert_ne!(m1.digest(), m3.digest());
    match &m3.entries[&b"f"[..]].kind {
        Kind::File { hash, .. } => assert_eq!(hash, blake3::hash(b"bbbb").as_bytes()),
        k => panic!("{k:?}"),
    }
}

/// The MN keeps its cache in `images/<name>/scan`, which nothing else creates: the scanner makes
/// the directory, so the next run's scan reuses the hashes (it silently rehashed every file of
/// the image on every sync when the write failed), and still sees a rewrite with mtime put back.
#[test]
fn cache_directory_is_created_on_first_save() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("r");
    let state = t.path().join("state/images/img/scan");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("f"), b"aaaa").unwrap();
    let opts = ScanOptions { excludes: vec![], state_dir: Some(state.clone()) };
    let m1 = Scanner::new(&root, &opts).unwrap().scan().unwrap();
    assert!(state.join("hashcache2").exists(), "no cache written under a new state dir");
    let mt = fs::metadata(root.join("f")).unwrap().modified().unwrap();
    fs::write(root.join("f"), b"bbbb").unwrap();
    fs::File::options().write(true).open(root.join("f")).unwrap().set_modified(mt).unwrap();
    let m2 = Scanner::new(&root, &opts).unwrap().scan().unwrap();
    assert_ne!(m1.digest(), m2.digest());
}

#[test]
fn sparse_files_are_recorded_and_recreated_sparse() {
    let t = tempfile::tempdir().unwrap();
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    fs::create_dir_all(&old).unwrap();
    fs::create_dir_all(&new).unwrap();
    let f = fs::File::create(new.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"data in the middle", 32 << 20).unwrap();
    drop(f);
    let src = Source::new(&old, &new, &t.path().join("mn"));
    match &src.new.entries[&b"sparse"[..]].kind {
        Kind::File { sparse: Some(ext), size, .. } => {
            assert_eq!(*size, 64 << 20);
            assert!(!ext.is_empty() && ext.iter().map(|e| e.1).sum::<u64>() < 1 << 20);
        }
        k => panic!("not recorded sparse: {k:?}"),
    }
    let mut r = replica_copy(&old, &t.path().join("rep"), &t.path().join("sn"));
    let (_, d) = apply(&src, &mut r, src.plan(2)).unwrap();
    assert_eq!(d, src.new.digest());
    let md = fs::metadata(t.path().join("rep/sparse")).unwrap();
    assert_eq!(md.len(), 64 << 20);
    assert!(md.blocks() * 512 < 4 << 20, "replica file is not sparse: {} blocks", md.blocks());
}

#[test]
fn digest_is_stable_across_machines() {
    // A manifest built in memory (no file system involved): its digest is part of the public
    // contract and must never change silently.
    let mut entries = BTreeMap::new();
    let meta = |kind| Entry {
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 123_456_789,
        xattrs: vec![],
    };
    entries.insert(b"".to_vec(), meta(Kind::Dir));
    entries.insert(b"bin".to_vec(), meta(Kind::Dir));
    entries.insert(
        b"bin/sh".to_vec(),
        Entry {
            xattrs: vec![(b"security.capability".to_vec(), vec![1, 2, 3])],
            ..meta(Kind::File { size: 5, hash: *blake3::hash(b"hello").as_bytes(), sparse: None })
        },
    );
    entries.insert(b"bin/bash".to_vec(), meta(Kind::HardLink { leader: b"bin/sh".to_vec() }));
    entries.insert(b"dev".to_vec(), meta(Kind::Dir));
    entries.insert(b"dev/null".to_vec(), meta(Kind::Char { major: 1, minor: 3 }));
    entries.insert(b"lib".to_vec(), meta(Kind::Symlink { target: b"usr/lib".to_vec() }));
    let m = Manifest { entries, skipped_sockets: 0 };
    let mut sparse = m.clone();
    if let Some(Entry { kind: Kind::File { sparse: s, .. }, .. }) = sparse.entries.get_mut(&b"bin/sh"[..]) {
        *s = Some(vec![(0, 5)]);
    }
    assert_eq!(m.digest(), sparse.digest(), "sparse layout must not change the digest");
    let rt = Manifest::from_bytes(&m.to_bytes().unwrap()).unwrap();
    assert_eq!(rt.digest(), m.digest());
    assert_eq!(m.digest(), GOLDEN);
}

// Definition v2 (leaf tag `hanfs-entry-v2`: mtime as seconds i64 and nanoseconds u32).
const GOLDEN: &str = "4dc24c119d06b5d985aff2ce3d7d5f8ce1d3f6ccdb4c9f5cf8d08dd1a8184117";
