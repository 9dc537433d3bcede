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
    assert!(state.join("hashcache").exists());
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
    let meta = |kind| Entry { kind, mode: 0o755, uid: 0, gid: 0, mtime_ns: 1_700_000_000_123_456_789, xattrs: vec![] };
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

const GOLDEN: &str = "40adbc8fe0469e4bf07abf044966ba911f0f160b7b64690e294aac9bd4d4075b";
