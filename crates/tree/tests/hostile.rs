#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile input: each case is refused with a clear error and nothing is written outside the
//! replica root.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use tree::{Entry, Error, Kind, Plan, Replica, ReplicaOptions};

struct Env {
    _t: tempfile::TempDir,
    old: PathBuf,
    new: PathBuf,
    outside: PathBuf,
    rep: PathBuf,
    sn: PathBuf,
}

fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().to_path_buf();
    let old = p.join("old");
    fs::create_dir_all(old.join("d")).unwrap();
    fs::write(old.join("d/f"), vec![7u8; 10_000]).unwrap();
    fs::write(old.join("g"), b"hello").unwrap();
    let new = p.join("new");
    copy_tree(&old, &new);
    fs::write(new.join("d/f"), [vec![7u8; 5000], b"changed".to_vec(), vec![7u8; 5000]].concat()).unwrap();
    fs::write(new.join("added"), b"new file").unwrap();
    let outside = p.join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"keep me").unwrap();
    let rep = p.join("replica");
    let sn = p.join("sn");
    drop(replica_copy(&old, &rep, &sn));
    Env { _t: t, old, new, outside, rep, sn }
}

impl Env {
    fn replica(&self, devices: bool) -> Replica {
        let mut r = Replica::open(&self.rep, &self.sn, ReplicaOptions { allow_devices: devices }).unwrap();
        r.recover().unwrap();
        r
    }
    fn source(&self) -> Source {
        Source::new(&self.old, &self.new, &self.sn.join("../mn"))
    }
    fn untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "something was written outside the root: {names:?}");
        assert_eq!(fs::read(self.outside.join("victim")).unwrap(), b"keep me");
    }
    fn still_old(&self, r: &Replica) {
        assert_eq!(r.scan().unwrap().digest(), tree::scan(&self.old, &[]).unwrap().digest());
    }
}

fn entry(kind: Kind) -> Entry {
    Entry { kind, mode: 0o644, uid: 0, gid: 0, mtime_ns: 0, xattrs: vec![] }
}

fn with_entry(mut plan: Plan, path: &[u8], e: Entry) -> Plan {
    plan.manifest.entries.insert(path.to_vec(), e);
    plan.to_digest = plan.manifest.digest();
    plan
}

fn refused(r: tree::Result<impl std::fmt::Debug>, needle: &str) {
    match r {
        Err(Error::Hostile(m)) => assert!(m.contains(needle), "message {m:?} lacks {needle:?}"),
        other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
    }
}

fn begin(e: &Env, plan: Plan, devices: bool) -> tree::Result<()> {
    let mut r = e.replica(devices);
    r.begin(plan).map(|_| ())
}

#[test]
fn dotdot_path() {
    let e = env();
    let p = with_entry(e.source().plan(2), b"d/../../outside/x", entry(Kind::Fifo));
    refused(begin(&e, p, false), "`.` or `..`");
    e.untouched();
}

#[test]
fn absolute_path() {
    let e = env();
    let p = with_entry(e.source().plan(2), e.outside.join("x").as_os_str().as_encoded_bytes(), entry(Kind::Fifo));
    refused(begin(&e, p, false), "absolute");
    e.untouched();
}

#[test]
fn control_dir_path() {
    let e = env();
    let p = with_entry(e.source().plan(2), b".hanfs/stage/x", entry(Kind::Fifo));
    refused(begin(&e, p, false), ".hanfs");
}

#[test]
fn path_through_a_symlink_in_the_manifest() {
    let e = env();
    let mut p = with_entry(
        e.source().plan(2),
        b"link",
        entry(Kind::Symlink { target: e.outside.as_os_str().as_encoded_bytes().to_vec() }),
    );
    p = with_entry(p, b"link/x", entry(Kind::Fifo));
    refused(begin(&e, p, false), "not a directory");
    e.untouched();
}

#[test]
fn path_through_a_symlink_on_the_replica() {
    // The replica's directory `d` was swapped for a symlink to outside after it was recorded:
    // opening the delta base d/f must refuse to follow it.
    let e = env();
    fs::remove_dir_all(e.rep.join("d")).unwrap();
    std::os::unix::fs::symlink(&e.outside, e.rep.join("d")).unwrap();
    fs::write(e.outside.join("f"), vec![7u8; 10_000]).unwrap();
    let src = e.source();
    let plan = src.plan(2);
    let mut r = e.replica(false);
    let c = plan.to_send().find(|c| c.path == b"d/f").unwrap().clone();
    let mut st = r.begin(plan).unwrap();
    let err = match src.store.payload(&src.new_dir, &c).unwrap().unwrap() {
        tree::Payload::Delta(d) => st.add_delta(&c.path, &d[..]).unwrap_err(),
        _ => panic!("expected an in-memory delta"),
    };
    assert!(matches!(&err, Error::Hostile(m) if m.contains("symlink")), "{err}");
    drop(st);
    fs::remove_file(e.outside.join("f")).unwrap();
    e.untouched();
}

#[test]
fn device_node_outside_an_image() {
    let e = env();
    let p = with_entry(e.source().plan(2), b"sda", entry(Kind::Block { major: 8, minor: 0 }));
    refused(begin(&e, p.clone(), false), "device node");
    // The same plan is accepted by a replica of an image (devices allowed).
    assert!(begin(&e, p, true).is_ok());
    e.untouched();
}

#[test]
fn hard_link_to_a_directory() {
    let e = env();
    let p = with_entry(e.source().plan(2), b"h", entry(Kind::HardLink { leader: b"d".to_vec() }));
    refused(begin(&e, p, false), "hard link");
}

#[test]
fn manifest_not_matching_its_digest() {
    let e = env();
    let mut p = e.source().plan(2);
    p.manifest.entries.insert(b"sneaky".to_vec(), entry(Kind::Fifo));
    refused(begin(&e, p, false), "hashes to");
}

#[test]
fn copy_source_outside_the_old_tree() {
    let e = env();
    let mut p = e.source().plan(2);
    for c in &mut p.contents {
        c.source = tree::Source::Copy { from: b"../outside/victim".to_vec() };
    }
    refused(begin(&e, p, false), "not that file in the old tree");
}

fn stage_delta(e: &Env, delta: &[u8]) -> Error {
    let plan = e.source().plan(2);
    let mut r = e.replica(false);
    let mut st = r.begin(plan).unwrap();
    let err = st.add_delta(b"d/f", delta).unwrap_err();
    drop(st);
    e.still_old(&r);
    e.untouched();
    err
}

#[test]
fn delta_copy_out_of_bounds() {
    let e = env();
    let mut d = delta::DELTA_MAGIC.to_be_bytes().to_vec();
    d.extend_from_slice(&[0x45 + 2 * 4 + 1, 0, 0, 0x27, 0x0f, 0x01, 0x00, 0]); // COPY 9999+256
    let err = stage_delta(&e, &d);
    assert!(matches!(err, Error::Delta { source: delta::Error::CopyOutOfBounds { .. }, .. }), "{err}");
}

#[test]
fn delta_that_grows_without_limit() {
    let e = env();
    let mut d = delta::DELTA_MAGIC.to_be_bytes().to_vec();
    // COPY the whole base again and again, far past the manifest size.
    for _ in 0..1000 {
        d.extend_from_slice(&[0x45 + 4 + 1, 0, 0, 0x27, 0x10]);
    }
    d.push(0);
    let err = stage_delta(&e, &d);
    assert!(matches!(err, Error::Delta { source: delta::Error::OutputLimit { .. }, .. }), "{err}");
}

#[test]
fn wrong_content_is_not_committed() {
    let e = env();
    let plan = e.source().plan(2);
    let mut r = e.replica(false);
    let mut st = r.begin(plan).unwrap();
    let err = st.write_file(b"added", &b"not the new file"[..]).unwrap_err();
    assert!(matches!(err, Error::Mismatch { .. }) || matches!(err, Error::Io { .. }), "{err}");
    assert!(matches!(st.commit(), Err(Error::Incomplete(_))));
    e.still_old(&r);
}

#[test]
fn unexpected_file_is_refused() {
    let e = env();
    let plan = e.source().plan(2);
    let mut r = e.replica(false);
    let mut st = r.begin(plan).unwrap();
    refused(st.write_file(b"g", &b"x"[..]), "not a file this plan expects");
}

#[test]
fn replacing_a_symlink_never_writes_through_it() {
    // old: `l` -> outside/victim; new: `l` is a regular file. The rename replaces the link.
    let t = tempfile::tempdir().unwrap();
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"keep me").unwrap();
    fs::create_dir_all(&old).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), old.join("l")).unwrap();
    copy_tree(&old, &new);
    fs::remove_file(new.join("l")).unwrap();
    fs::write(new.join("l"), b"plain file now").unwrap();
    let src = Source::new(&old, &new, &t.path().join("mn"));
    let mut r = replica_copy(&old, &t.path().join("rep"), &t.path().join("sn"));
    apply(&src, &mut r, src.plan(2)).unwrap();
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"keep me");
    assert_eq!(fs::read(t.path().join("rep/l")).unwrap(), b"plain file now");
}

#[test]
fn wrong_base_generation() {
    let e = env();
    let mut p = e.source().plan(2);
    p.from_digest = "00".repeat(32);
    assert!(matches!(begin(&e, p, false), Err(Error::WrongBase { .. })));
}

#[allow(dead_code)]
fn _unused(_: &Path) {}
