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
    Entry { kind, mode: 0o644, uid: 0, gid: 0, mtime_sec: 0, mtime_nsec: 0, xattrs: vec![] }
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
    // the delta base d/f is behind it, so `begin` reports drift (nothing read through the
    // link), re-records the tree, and add_delta on the old base is never reached.
    let e = env();
    fs::remove_dir_all(e.rep.join("d")).unwrap();
    std::os::unix::fs::symlink(&e.outside, e.rep.join("d")).unwrap();
    fs::write(e.outside.join("f"), vec![7u8; 10_000]).unwrap();
    let src = e.source();
    let plan = src.plan(2);
    let mut r = e.replica(false);
    let err = r.begin(plan).map(|_| ()).unwrap_err();
    assert!(matches!(&err, Error::Drift { paths } if paths.contains(&"d/f".to_string())), "{err}");
    // The re-recorded base is the tree as it is: `d` a symlink.
    assert!(matches!(r.manifest().unwrap().entries[&b"d"[..]].kind, Kind::Symlink { .. }));
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

/// Owner, mode, xattrs and content of a file, read with std and `lgetxattr` (not the engine).
fn outside_meta(p: &Path) -> (u32, u32, u32, u64, Vec<u8>, Option<Vec<u8>>) {
    use std::os::unix::fs::MetadataExt;
    let md = fs::symlink_metadata(p).unwrap();
    let mut v = vec![0u8; 256];
    let x = rustix::fs::lgetxattr(p, "user.mark", &mut v[..]).ok().map(|n| v[..n].to_vec());
    (md.mode() & 0o7777, md.uid(), md.gid(), md.mtime() as u64, fs::read(p).unwrap(), x)
}

/// Applies the controller's plan; when the replica reports drift it cannot repair from what it
/// holds, plans again from the manifest it re-recorded (what the controller does with a
/// drifted replica) and applies that.
fn apply_repairing(src: &Source, r: &mut Replica) -> tree::Result<(u64, String)> {
    match apply(src, r, src.plan(2)) {
        Err(Error::Drift { .. }) => {}
        other => return other,
    }
    let (g, _) = r.current().unwrap();
    let mut plan = tree::diff(r.manifest().unwrap(), &src.new);
    plan.generation = g + 1;
    // The signatures of what the replica really holds, as the MN keeps for the last generation.
    src.store.update(r.root(), r.manifest().unwrap()).unwrap();
    apply(src, r, plan)
}

/// When the link is planted: before the apply starts, or after `begin` checked the tree and
/// before the commit sets metadata.
#[derive(Clone, Copy, PartialEq)]
enum When {
    Before,
    DuringCommit,
    /// After a `rescan` found the tree whole, so `begin` probes only the inodes it acts on.
    AfterRescan,
}

/// Applies with the link planted after `begin` (the engine checked the tree already); on
/// drift, plans again from the re-recorded manifest as the controller does.
fn apply_planting(src: &Source, r: &mut Replica, plant: &dyn Fn()) -> tree::Result<(u64, String)> {
    let plan = src.plan(2);
    let contents: Vec<_> = plan.to_send().cloned().collect();
    let mut st = r.begin(plan)?;
    plant();
    for c in contents {
        let p = src.store.payload(&src.new_dir, &c)?.unwrap();
        if p.is_delta() {
            st.add_delta(&c.path, p.reader()?)?;
        } else {
            st.write_file(&c.path, p.reader()?)?;
        }
    }
    match st.commit() {
        Err(Error::Drift { .. }) => {}
        other => return other,
    }
    let (g, _) = r.current().unwrap();
    let mut plan = tree::diff(r.manifest().unwrap(), &src.new);
    plan.generation = g + 1;
    src.store.update(r.root(), r.manifest().unwrap()).unwrap();
    apply(src, r, plan)
}

/// A hard link planted in the replica to a file outside it: the apply must not chmod, chown
/// or rewrite the xattrs of the outside inode (issue #9 item 3), and the replica's entry must
/// end up as the manifest says.
fn planted_hard_link(victim_content: &[u8], when: When) {
    if !testkit::require_root("giving the outside file another owner") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    let g_old: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::create_dir_all(old.join("d")).unwrap();
    fs::write(old.join("g"), &g_old).unwrap();
    fs::write(old.join("d/x"), b"x").unwrap();
    copy_tree(&old, &new);
    // g keeps its content; only its metadata changes, so the engine would set it in place.
    fs::set_permissions(new.join("g"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    rustix::fs::lsetxattr(new.join("g"), "user.mark", b"replica", rustix::fs::XattrFlags::empty()).unwrap();
    fs::write(new.join("added"), b"new").unwrap();
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    fs::write(&victim, victim_content).unwrap();
    rustix::fs::lsetxattr(&victim, "user.mark", b"outside", rustix::fs::XattrFlags::empty()).unwrap();
    std::os::unix::fs::chown(&victim, Some(4343), Some(4343)).unwrap();
    fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let before = outside_meta(&victim);
    let src = Source::new(&old, &new, &t.path().join("mn"));
    let rep = t.path().join("rep");
    let mut r = replica_copy(&old, &rep, &t.path().join("sn"));
    // Behind the engine's back: g becomes another name of the outside file.
    let plant = || {
        fs::remove_file(rep.join("g")).unwrap();
        fs::hard_link(&victim, rep.join("g")).unwrap();
    };
    if when == When::Before {
        plant();
        apply_repairing(&src, &mut r).unwrap();
    } else if when == When::AfterRescan {
        assert!(r.rescan().unwrap().0, "the copy is whole before the plant");
        plant();
        apply_repairing(&src, &mut r).unwrap();
    } else {
        apply_planting(&src, &mut r, &plant).unwrap();
    }
    r.cleanup().unwrap();
    assert_eq!(outside_meta(&victim), before, "the outside file was modified through the planted link");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1, "the planted link is still in the replica");
    assert_eq!(walk(&rep), walk(&new), "replica differs from the new tree");
}

#[test]
fn planted_hard_link_with_the_same_content() {
    let g: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    planted_hard_link(&g, When::Before);
}

#[test]
fn planted_hard_link_with_other_content() {
    let mut g: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    g[5000..5010].copy_from_slice(b"OUTSIDE!!!");
    planted_hard_link(&g, When::Before);
}

#[test]
fn hard_link_planted_during_the_commit_with_the_same_content() {
    let g: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    planted_hard_link(&g, When::DuringCommit);
}

#[test]
fn hard_link_planted_during_the_commit_with_other_content() {
    let mut g: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    g[5000..5010].copy_from_slice(b"OUTSIDE!!!");
    planted_hard_link(&g, When::DuringCommit);
}

#[test]
fn hard_link_planted_after_a_rescan_on_a_file_the_commit_touches() {
    let g: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    planted_hard_link(&g, When::AfterRescan);
}

/// After a rescan found the tree whole, `begin` leaves the inodes the plan does not act on
/// unprobed: a link planted on one of those in between is never written through, the commit
/// goes on, and the next rescan reports the drift, which the plan made from it repairs.
#[test]
fn hard_link_planted_after_a_rescan_on_an_untouched_file_is_found_by_the_next_rescan() {
    let t = tempfile::tempdir().unwrap();
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    fs::create_dir_all(old.join("d")).unwrap();
    fs::write(old.join("keep"), b"kept as it is").unwrap();
    fs::write(old.join("d/x"), b"x").unwrap();
    copy_tree(&old, &new);
    fs::write(new.join("d/x"), b"x, changed").unwrap();
    let victim = t.path().join("victim");
    fs::write(&victim, b"outside, other content").unwrap();
    let before = fs::read(&victim).unwrap();
    let src = Source::new(&old, &new, &t.path().join("mn"));
    let rep = t.path().join("rep");
    let mut r = replica_copy(&old, &rep, &t.path().join("sn"));
    assert!(r.rescan().unwrap().0);
    fs::remove_file(rep.join("keep")).unwrap();
    fs::hard_link(&victim, rep.join("keep")).unwrap();
    apply(&src, &mut r, src.plan(2)).unwrap();
    r.cleanup().unwrap();
    assert_eq!(fs::read(&victim).unwrap(), before, "the outside file was written through the planted link");
    assert_eq!(fs::read(rep.join("d/x")).unwrap(), b"x, changed");
    let (same, _) = r.rescan().unwrap();
    assert!(!same, "the next rescan must see the planted link");
    // Without a fresh rescan, begin probes every kept inode and repairs it (as `Open` does:
    // the replica is adopted as it is and planned from).
    r.adopt(2).unwrap();
    let mut plan = tree::diff(r.manifest().unwrap(), &src.new);
    plan.generation = 3;
    src.store.update(r.root(), r.manifest().unwrap()).unwrap();
    apply(&src, &mut r, plan).unwrap();
    r.cleanup().unwrap();
    assert_eq!(fs::read(&victim).unwrap(), before);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1, "the planted link is still in the replica");
    assert_eq!(walk(&rep), walk(&new), "replica differs from the new tree");
}

/// A symlink planted where a directory is expected: every file of that directory must be there
/// after the apply (issue #9 item 3), nothing read or written through the link.
#[test]
fn planted_symlink_where_a_directory_is() {
    let t = tempfile::tempdir().unwrap();
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    fs::create_dir_all(old.join("s/sub")).unwrap();
    for (n, c) in [("s/a", &b"alpha"[..]), ("s/b", b"bravo"), ("s/sub/c", b"charlie"), ("top", b"top")] {
        fs::write(old.join(n), c).unwrap();
    }
    copy_tree(&old, &new);
    fs::write(new.join("added"), b"new file").unwrap();
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("a"), b"outside a").unwrap();
    let src = Source::new(&old, &new, &t.path().join("mn"));
    let rep = t.path().join("rep");
    let mut r = replica_copy(&old, &rep, &t.path().join("sn"));
    fs::remove_dir_all(rep.join("s")).unwrap();
    std::os::unix::fs::symlink(&outside, rep.join("s")).unwrap();
    apply_repairing(&src, &mut r).unwrap();
    assert_eq!(walk(&rep), walk(&new), "replica differs from the new tree");
    assert_eq!(fs::read(outside.join("a")).unwrap(), b"outside a");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
}
