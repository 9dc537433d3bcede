#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property test: random pairs of trees with every entry kind; apply old -> new on a copy of
//! old; the digest and an independent walk equal the new tree.

mod common;

use common::*;
use proptest::prelude::*;

fn run(seed: u64) {
    let mut r = TRng::new(seed);
    let pool = pool(&mut r);
    let old = random_spec(&mut r, &pool, true);
    let new = mutate(&mut r, &old, &pool, true);
    let t = tempfile::tempdir().unwrap();
    let (od, nd) = (t.path().join("old"), t.path().join("new"));
    build(&od, &old);
    build(&nd, &new);
    let src = Source::new(&od, &nd, &t.path().join("mn"));
    let rep = t.path().join("replica");
    let mut replica = replica_copy(&od, &rep, &t.path().join("sn"));
    assert_eq!(replica.current().unwrap().1, src.old.digest(), "cp -a copy must digest as the old tree");
    let plan = src.plan(2);
    let (g, d) = apply(&src, &mut replica, plan).unwrap();
    assert_eq!(g, 2);
    assert_eq!(replica.recover().unwrap(), tree::Recovery::Clean, "a finished commit leaves nothing to recover");
    assert_eq!(d, src.new.digest());
    assert_eq!(replica.scan().unwrap().digest(), src.new.digest(), "replica digest after apply");
    let (want, got) = (walk(&nd), walk(&rep));
    for (p, w) in &want {
        assert_eq!(got.get(p), Some(w), "entry {p:?} differs (seed {seed})");
    }
    assert_eq!(got.len(), want.len(), "extra entries on the replica (seed {seed})");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn random_tree_pairs_apply_exactly(seed in any::<u64>()) {
        run(seed);
    }
}

#[test]
fn second_sync_and_noop() {
    // Chains two generations and an empty plan through the same replica.
    let mut r = TRng::new(42);
    let pool = pool(&mut r);
    let s1 = random_spec(&mut r, &pool, true);
    let s2 = mutate(&mut r, &s1, &pool, true);
    let s3 = mutate(&mut r, &s2, &pool, true);
    let t = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = ["g1", "g2", "g3"].iter().map(|n| t.path().join(n)).collect();
    build(&dirs[0], &s1);
    build(&dirs[1], &s2);
    build(&dirs[2], &s3);
    let rep = t.path().join("replica");
    let mut replica = replica_copy(&dirs[0], &rep, &t.path().join("sn"));
    for (i, w) in dirs.windows(2).enumerate() {
        let src = Source::new(&w[0], &w[1], &t.path().join("mn"));
        let (_, d) = apply(&src, &mut replica, src.plan(i as u64 + 2)).unwrap();
        assert_eq!(d, src.new.digest());
    }
    let src = Source::new(&dirs[2], &dirs[2], &t.path().join("mn"));
    let plan = src.plan(9);
    assert!(plan.is_empty() && plan.contents.is_empty());
    apply(&src, &mut replica, plan).unwrap();
    assert_eq!(walk(&rep), walk(&dirs[2]));
}

#[test]
fn first_sync_into_an_empty_replica() {
    // A new service node: an empty root adopted as generation 0, then everything sent whole.
    let mut r = TRng::new(7);
    let pool = pool(&mut r);
    let spec = random_spec(&mut r, &pool, true);
    let t = tempfile::tempdir().unwrap();
    let nd = t.path().join("new");
    build(&nd, &spec);
    let rep = t.path().join("replica");
    let mut replica =
        tree::Replica::open(&rep, &t.path().join("sn"), tree::ReplicaOptions { allow_devices: true }).unwrap();
    replica.recover().unwrap();
    assert!(replica.current().is_none());
    replica.adopt(0).unwrap();
    let empty_dir = t.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let mut src = Source::new(&empty_dir, &nd, &t.path().join("mn"));
    // The controller diffs against what the replica reports, not its own idea of it.
    src.old = replica.manifest().unwrap().clone();
    // Push every file frame by frame, as a network receiver would.
    let plan = src.plan(1);
    let sends: Vec<_> = plan.to_send().cloned().collect();
    let mut st = replica.begin(plan).unwrap();
    assert_eq!(st.needed().len(), sends.len());
    for c in &sends {
        let data = std::fs::read(nd.join(std::str::from_utf8(&c.path).unwrap())).unwrap();
        let mut w = st.file_writer(&c.path).unwrap();
        for frame in data.chunks(1000) {
            std::io::Write::write_all(&mut w, frame).unwrap();
        }
        w.finish().unwrap();
    }
    assert!(st.needed().is_empty());
    let (_, d) = st.commit().unwrap();
    assert_eq!(d, src.new.digest());
    assert_eq!(walk(&rep), walk(&nd));
}

fn sync_specs(old: &Spec, new: &Spec) {
    let t = tempfile::tempdir().unwrap();
    let (od, nd) = (t.path().join("old"), t.path().join("new"));
    build(&od, old);
    build(&nd, new);
    let src = Source::new(&od, &nd, &t.path().join("mn"));
    let rep = t.path().join("replica");
    let mut replica = replica_copy(&od, &rep, &t.path().join("sn"));
    let (_, d) = apply(&src, &mut replica, src.plan(2)).unwrap();
    assert_eq!(d, src.new.digest());
    assert_eq!(walk(&rep), walk(&nd));
    assert!(replica.verify().unwrap().0);
}

#[test]
fn hard_link_group_transitions() {
    let (uid, gid) = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
    let m = |mode: u32| Meta { mode, uid, gid, mtime: 1_650_000_000_000_000_000, xattrs: vec![] };
    let spec = |items: &[(&str, K)]| Spec {
        root: m(0o755),
        entries: items
            .iter()
            .map(|(p, k)| (p.to_string(), (k.clone(), m(if *k == K::Dir { 0o755 } else { 0o644 }))))
            .collect(),
    };
    let x = K::File(b"shared content".to_vec());
    // Leader removed: the group lives on under a new leader, with a new member.
    sync_specs(
        &spec(&[("a", x.clone()), ("b", K::Hard("a".into()))]),
        &spec(&[("b", x.clone()), ("c", K::Hard("b".into()))]),
    );
    // Two copies become one inode.
    sync_specs(&spec(&[("a", x.clone()), ("b", x.clone())]), &spec(&[("a", x.clone()), ("b", K::Hard("a".into()))]));
    // One inode becomes two copies.
    sync_specs(&spec(&[("a", x.clone()), ("b", K::Hard("a".into()))]), &spec(&[("a", x.clone()), ("b", x.clone())]));
    // A member moves to another group.
    let y = K::File(b"other".to_vec());
    sync_specs(
        &spec(&[("a", x.clone()), ("b", K::Hard("a".into())), ("c", K::Hard("a".into())), ("d", y.clone())]),
        &spec(&[("a", x.clone()), ("b", K::Hard("a".into())), ("c", K::Hard("d".into())), ("d", y)]),
    );
    // A file becomes a directory and back (with content moving around).
    sync_specs(
        &spec(&[("a", x.clone()), ("b", K::Dir), ("b/c", K::File(b"c".to_vec()))]),
        &spec(&[("a", K::Dir), ("a/x", x.clone()), ("b", K::File(b"c".to_vec()))]),
    );
}

#[test]
fn odd_file_names() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let (od, nd) = (t.path().join("old"), t.path().join("new"));
    std::fs::create_dir_all(&od).unwrap();
    let names: [&[u8]; 5] = [b"sp ace", b"new\nline", b"\xff\xfe latin-1 \xe9", b"-dash", b"a:b=c,d"];
    for n in names {
        std::fs::write(od.join(std::ffi::OsStr::from_bytes(n)), n).unwrap();
    }
    copy_tree(&od, &nd);
    std::fs::write(nd.join(std::ffi::OsStr::from_bytes(b"\xff\xfe latin-1 \xe9")), b"changed").unwrap();
    std::fs::create_dir(nd.join(std::ffi::OsStr::from_bytes(b"dir \xc3("))).unwrap();
    std::fs::rename(nd.join("sp ace"), nd.join(std::ffi::OsStr::from_bytes(b"dir \xc3(/sp ace"))).unwrap();
    let src = Source::new(&od, &nd, &t.path().join("mn"));
    let mut r = replica_copy(&od, &t.path().join("rep"), &t.path().join("sn"));
    let (_, d) = apply(&src, &mut r, src.plan(2)).unwrap();
    assert_eq!(d, src.new.digest());
    assert_eq!(r.verify().unwrap(), (true, src.new.digest()));
}
