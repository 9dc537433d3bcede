#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A commit that fails part-way (an obstacle the engine cannot move: an immutable inode) must
//! not wedge the replica (issue #9 item 7): once the obstacle is gone, `recover` (or the next
//! `begin`) finishes the commit, and the tree is the new generation by an independent walk.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use tree::{Recovery, Replica, ReplicaOptions};

fn spec() -> (Spec, Spec) {
    let mut r = TRng::new(7);
    let m = |mode: u32| Meta { mode, uid: 0, gid: 0, mtime: 1_650_000_000_000_000_000, xattrs: vec![] };
    let big = r.bytes(50_000);
    let mut old = Spec { root: m(0o755), entries: Default::default() };
    let e = &mut old.entries;
    e.insert("a".into(), (K::File(big.clone()), m(0o644)));
    e.insert("b".into(), (K::File(r.bytes(30_000)), m(0o600)));
    e.insert("c".into(), (K::File(b"kept, mode changes".to_vec()), m(0o644)));
    e.insert("d".into(), (K::Dir, m(0o755)));
    e.insert("d/e".into(), (K::File(b"gone".to_vec()), m(0o644)));
    e.insert("d/s".into(), (K::Symlink(b"../a".to_vec()), m(0o777)));
    e.insert("k".into(), (K::Dir, m(0o755)));
    e.insert("k/x".into(), (K::File(b"x".to_vec()), m(0o644)));
    e.insert("h".into(), (K::File(b"linked".to_vec()), m(0o644)));
    let mut new = old.clone();
    let e = &mut new.entries;
    let a = e.remove("a").unwrap();
    e.insert("d/a2".into(), a);
    if let Some((K::File(b), _)) = e.get_mut("b") {
        b[10_000] ^= 1;
    }
    e.insert("c".into(), (K::File(b"kept, mode changes".to_vec()), m(0o600)));
    e.remove("d/e");
    e.insert("d/s".into(), (K::Symlink(b"a2".to_vec()), m(0o777)));
    e.remove("k/x");
    e.insert("k".into(), (K::File(b"now a file".to_vec()), m(0o644)));
    e.insert("h2".into(), (K::Hard("h".into()), m(0o644)));
    e.insert("n".into(), (K::Dir, m(0o700)));
    e.insert("n/f".into(), (K::File(big), m(0o644)));
    (old, new)
}

/// Clears the immutable flag under a directory when a test ends, even by a panic, so that the
/// temporary directory can be deleted.
struct Unfreeze(std::path::PathBuf);

impl Drop for Unfreeze {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-R").arg("-i").arg(&self.0).output();
    }
}

fn chattr(flag: &str, p: &Path) -> bool {
    Command::new("chattr").arg(flag).arg(p).status().map(|s| s.success()).unwrap_or(false)
}

#[test]
fn failed_commit_resumes_once_the_obstacle_is_gone() {
    if !testkit::require_root("immutable inodes (chattr +i)") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (old, new) = spec();
    let (od, nd) = (t.path().join("old"), t.path().join("new"));
    build(&od, &old);
    build(&nd, &new);
    // Each obstacle stops a different step: a removal, an install into a directory, the
    // replacement of a changed file, a metadata change, a directory mtime, a hard link.
    for (i, obstacle) in ["d/e", "d", "b", "c", "k/x", "h"].iter().enumerate() {
        let w = t.path().join(format!("w{i}"));
        let rep = w.join("replica");
        let sn = w.join("sn");
        std::fs::create_dir_all(&w).unwrap();
        let src = Source::new(&od, &nd, &w.join("mn"));
        let mut r = replica_copy(&od, &rep, &sn);
        let _unfreeze = Unfreeze(rep.clone());
        if !chattr("+i", &rep.join(obstacle)) {
            testkit::skip(format!("chattr +i is not supported on {}", rep.display()));
            return;
        }
        let err = apply(&src, &mut r, src.plan(2)).expect_err("the obstacle must stop the commit");
        eprintln!("obstacle {obstacle}: {err}");
        // While the obstacle stays, recovery fails again, cleanly.
        drop(r);
        let mut r = Replica::open(&rep, &sn, ReplicaOptions { allow_devices: true }).unwrap();
        assert!(r.recover().is_err(), "obstacle {obstacle}: recovery cannot finish yet");
        assert!(chattr("-i", &rep.join(obstacle)));
        // A fresh process would do exactly this.
        drop(r);
        let mut r = Replica::open(&rep, &sn, ReplicaOptions { allow_devices: true }).unwrap();
        assert_eq!(r.recover().unwrap(), Recovery::RolledForward(2), "obstacle {obstacle}");
        assert_eq!(walk(&rep), walk(&nd), "obstacle {obstacle}: replica is not the new generation");
        assert_eq!(r.current().unwrap().0, 2);
        assert_eq!(r.recover().unwrap(), Recovery::Clean, "obstacle {obstacle}");
        let _ = std::fs::remove_dir_all(&w);
    }
}

/// An old version that cannot be deleted after the switch (here an immutable file in a removed
/// directory) must not block recovery or the next plan: it is set aside, and everything goes on.
#[test]
fn undeletable_leftover_does_not_wedge_the_replica() {
    if !testkit::require_root("immutable inodes (chattr +i)") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (old, mut new) = spec();
    old_with_dir(&mut new, false);
    let mut old = old;
    old_with_dir(&mut old, true);
    let (od, nd, nd3) = (t.path().join("old"), t.path().join("new"), t.path().join("new3"));
    build(&od, &old);
    build(&nd, &new);
    let mut third = new.clone();
    third.entries.insert("third".into(), (K::File(b"3".to_vec()), third.root.clone()));
    build(&nd3, &third);
    let rep = t.path().join("replica");
    let sn = t.path().join("sn");
    let mut r = replica_copy(&od, &rep, &sn);
    let _unfreeze = Unfreeze(rep.clone());
    if !chattr("+i", &rep.join("z/stuck")) {
        testkit::skip(format!("chattr +i is not supported on {}", rep.display()));
        return;
    }
    let src = Source::new(&od, &nd, &t.path().join("mn"));
    apply(&src, &mut r, src.plan(2)).unwrap();
    // The removed directory (with its immutable file) now waits in the stage's trash.
    let cleaned = r.cleanup();
    let stuck = find(&rep.join(".hanfs"), "stuck");
    assert!(stuck.is_some(), "the immutable file is gone?");
    eprintln!("cleanup with an undeletable leftover: {cleaned:?}");
    assert_eq!(walk(&rep), walk(&nd));
    let src3 = Source::new(&nd, &nd3, &t.path().join("mn3"));
    let mut r = Replica::open(&rep, &sn, ReplicaOptions { allow_devices: true }).unwrap();
    r.recover().expect("recovery must not be wedged by an undeletable leftover");
    apply(&src3, &mut r, src3.plan(3)).expect("the next plan must not be wedged");
    assert_eq!(walk(&rep), walk(&nd3));
    let stuck = stuck.unwrap();
    assert!(chattr("-i", &stuck));
    r.cleanup().unwrap();
    assert!(find(&rep.join(".hanfs"), "stuck").is_none(), "the leftover is deleted once it can be");
}

fn old_with_dir(s: &mut Spec, with: bool) {
    if with {
        let m = s.root.clone();
        s.entries.insert("z".into(), (K::Dir, m.clone()));
        s.entries.insert("z/stuck".into(), (K::File(b"immutable".to_vec()), m));
    }
}

fn find(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let e = e.ok()?;
        let p = e.path();
        if e.file_name() == name {
            return Some(p);
        }
        if e.file_type().ok()?.is_dir() {
            if let Some(f) = find(&p, name) {
                return Some(f);
            }
        }
    }
    None
}

/// A commit that failed part-way and then lost its stage (deleted from outside) can never be
/// replayed: recovery must not stay wedged on it ("entity not found"), but record the tree as
/// it is, so that a plan from the replica's manifest brings it to the new generation.
#[test]
fn failed_commit_with_a_lost_stage_is_discarded_and_repaired() {
    if !testkit::require_root("immutable inodes (chattr +i)") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (old, new) = spec();
    let (od, nd) = (t.path().join("old"), t.path().join("new"));
    build(&od, &old);
    build(&nd, &new);
    let rep = t.path().join("replica");
    let sn = t.path().join("sn");
    let src = Source::new(&od, &nd, &t.path().join("mn"));
    let mut r = replica_copy(&od, &rep, &sn);
    let _unfreeze = Unfreeze(rep.clone());
    // The install of the changed `b` fails after the removals and directories are done.
    if !chattr("+i", &rep.join("b")) {
        testkit::skip(format!("chattr +i is not supported on {}", rep.display()));
        return;
    }
    apply(&src, &mut r, src.plan(2)).expect_err("the obstacle must stop the commit");
    assert!(chattr("-i", &rep.join("b")));
    std::fs::remove_dir_all(rep.join(".hanfs/stage/2")).unwrap();
    drop(r);
    let mut r = Replica::open(&rep, &sn, ReplicaOptions { allow_devices: true }).unwrap();
    assert_eq!(r.recover().unwrap(), Recovery::Abandoned(2));
    assert_eq!(r.recover().unwrap(), Recovery::Clean, "nothing pending any more");
    // The recorded base is what is on disk (a mix), so the controller plans from it.
    assert!(r.verify().unwrap().0, "recorded base must be the tree on disk");
    let mut plan = tree::diff(r.manifest().unwrap(), &src.new);
    plan.generation = 3;
    src.store.update(r.root(), r.manifest().unwrap()).unwrap();
    apply(&src, &mut r, plan).unwrap();
    assert_eq!(walk(&rep), walk(&nd), "replica is not the new generation");
}
