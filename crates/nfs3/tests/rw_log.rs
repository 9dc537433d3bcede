//! The change log of a read-write area, property-tested: whatever sequence of changes the
//! primary applied (failed ones included), applying the log it handed on to an empty replica
//! yields the same tree, file ids, content, modes, owners and hard links, as an independent
//! walk of both directories with std::fs (and the xattrs read with rustix) shows. Changes are
//! made both as raw log entries and as callers (root and two users, when the test runs as
//! root) through the procedures the guard calls, LINK and MKNOD included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nfs3::oplog::{Attrs, Op, SetTime};
use nfs3::Fh;
use nfs3_server::nfs3_types::nfs3::nfsstat3;
use proptest::prelude::*;

#[derive(Default)]
struct Recorder(Mutex<Vec<Op>>);

impl nfs3::rw::Replicate for Recorder {
    fn replicate(&self, op: &Op) -> Result<(), nfsstat3> {
        self.0.lock().unwrap().push(op.clone());
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Action {
    Create {
        dir: usize,
        name: usize,
        id: [u8; 16],
        mode: u32,
    },
    Mkdir {
        dir: usize,
        name: usize,
        id: [u8; 16],
    },
    Symlink {
        dir: usize,
        name: usize,
    },
    Write {
        obj: usize,
        offset: u64,
        len: usize,
        seed: u8,
        sync: bool,
    },
    Rename {
        obj: usize,
        dir: usize,
        name: usize,
    },
    Remove {
        obj: usize,
    },
    Chmod {
        obj: usize,
        mode: u32,
    },
    Truncate {
        obj: usize,
        size: u64,
    },
    Touch {
        obj: usize,
        secs: i64,
    },
    /// The caller-facing procedures, as caller `who`.
    CreateAs {
        who: usize,
        dir: usize,
        name: usize,
        mode: u32,
    },
    MkdirAs {
        who: usize,
        dir: usize,
        name: usize,
        mode: u32,
    },
    Link {
        who: usize,
        obj: usize,
        dir: usize,
        name: usize,
    },
    Mknod {
        who: usize,
        dir: usize,
        name: usize,
        socket: bool,
        mode: u32,
    },
    RemoveAs {
        who: usize,
        obj: usize,
    },
    WriteAs {
        who: usize,
        obj: usize,
        len: usize,
    },
}

/// uid 0 and two users (the others only when the test may chown).
fn callers() -> Vec<nfs3::rw::Caller> {
    let mut v = vec![nfs3::rw::Caller::root()];
    if rustix::process::geteuid().is_root() {
        v.push(nfs3::rw::Caller { uid: 1000, gid: 1000, gids: vec![50] });
        v.push(nfs3::rw::Caller { uid: 1001, gid: 50, gids: vec![] });
    }
    v
}

const NAMES: [&str; 4] = ["a", "b", "c", "dd"];

fn action() -> impl Strategy<Value = Action> {
    let ix = 0usize..16;
    prop_oneof![
        (ix.clone(), 0..NAMES.len(), any::<[u8; 16]>(), 0o600u32..0o777)
            .prop_map(|(dir, name, id, mode)| Action::Create { dir, name, id, mode }),
        (ix.clone(), 0..NAMES.len(), any::<[u8; 16]>()).prop_map(|(dir, name, id)| Action::Mkdir { dir, name, id }),
        (ix.clone(), 0..NAMES.len()).prop_map(|(dir, name)| Action::Symlink { dir, name }),
        (ix.clone(), 0u64..9000, 0usize..5000, any::<u8>(), any::<bool>())
            .prop_map(|(obj, offset, len, seed, sync)| Action::Write { obj, offset, len, seed, sync }),
        (ix.clone(), ix.clone(), 0..NAMES.len()).prop_map(|(obj, dir, name)| Action::Rename { obj, dir, name }),
        ix.clone().prop_map(|obj| Action::Remove { obj }),
        (ix.clone(), 0o600u32..0o777).prop_map(|(obj, mode)| Action::Chmod { obj, mode }),
        (ix.clone(), 0u64..6000).prop_map(|(obj, size)| Action::Truncate { obj, size }),
        (ix.clone(), 1_000_000_000i64..1_800_000_000).prop_map(|(obj, secs)| Action::Touch { obj, secs }),
        (0usize..3, ix.clone(), 0..NAMES.len(), prop::sample::select(vec![0o600u32, 0o644, 0o666, 0o2755]))
            .prop_map(|(who, dir, name, mode)| Action::CreateAs { who, dir, name, mode }),
        (0usize..3, ix.clone(), 0..NAMES.len(), prop::sample::select(vec![0o700u32, 0o755, 0o777, 0o1777, 0o2777]))
            .prop_map(|(who, dir, name, mode)| Action::MkdirAs { who, dir, name, mode }),
        (0usize..3, ix.clone(), ix.clone(), 0..NAMES.len()).prop_map(|(who, obj, dir, name)| Action::Link {
            who,
            obj,
            dir,
            name
        }),
        (0usize..3, ix.clone(), 0..NAMES.len(), any::<bool>(), 0o600u32..0o777)
            .prop_map(|(who, dir, name, socket, mode)| Action::Mknod { who, dir, name, socket, mode }),
        (0usize..3, ix.clone()).prop_map(|(who, obj)| Action::RemoveAs { who, obj }),
        (0usize..3, ix, 1usize..3000).prop_map(|(who, obj, len)| Action::WriteAs { who, obj, len }),
    ]
}

/// Every entry beneath `root` (relative path), sorted, by std::fs: what a replica must match.
fn entries(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(&rel) };
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let n = e.file_name().into_string().unwrap();
            let p = if rel.is_empty() { n } else { format!("{rel}/{n}") };
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    nlink: u64,
    content: Vec<u8>,
    id: Option<[u8; 16]>,
    own_links: Option<Vec<u8>>,
}

fn view(root: &Path) -> BTreeMap<String, Seen> {
    let mut m = BTreeMap::new();
    for p in entries(root) {
        let path = root.join(&p);
        let md = fs::symlink_metadata(&path).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let ft = md.file_type();
        let (kind, content) = if md.is_dir() {
            ("dir", Vec::new())
        } else if ft.is_symlink() {
            ("symlink", fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes())
        } else if ft.is_fifo() {
            ("fifo", Vec::new())
        } else if ft.is_socket() {
            ("socket", Vec::new())
        } else {
            ("file", fs::read(&path).unwrap())
        };
        let mut l = [0u8; 8];
        let own_links = match rustix::fs::lgetxattr(&path, nfs3::rw::LINKS_XATTR, &mut l[..]) {
            Ok(n) => Some(l[..n].to_vec()),
            Err(_) => None,
        };
        let (owner, nlink) = ((md.uid(), md.gid()), if md.is_dir() { 0 } else { md.nlink() });
        let mut b = [0u8; 16];
        let id = match rustix::fs::lgetxattr(&path, nfs3::rw::ID_XATTR, &mut b[..]) {
            Ok(16) => Some(b),
            _ => None,
        };
        let mode = if kind == "symlink" { 0 } else { md.permissions().mode() & 0o7777 };
        // Not mtimes: the kernel sets them on each side when data is written.
        m.insert(p, Seen { kind, mode, owner, nlink, content, id, own_links });
    }
    m
}

fn run(actions: Vec<Action>) -> Result<(), TestCaseError> {
    let t1 = tempfile::tempdir().unwrap();
    let t2 = tempfile::tempdir().unwrap();
    let log = Arc::new(Recorder::default());
    let p = nfs3::AreaFs::open(t1.path(), 1, None, Some(log.clone() as Arc<dyn nfs3::rw::Replicate>)).unwrap();
    let who = callers();
    let caller = |i: usize| &who[i % who.len()];
    let split = |o: &str| match o.rsplit_once('/') {
        Some((d, n)) => (d.to_string(), n.to_string()),
        None => (String::new(), o.to_string()),
    };
    for a in actions {
        let all = entries(t1.path());
        let dirs: Vec<String> = std::iter::once(String::new())
            .chain(all.iter().filter(|e| t1.path().join(e).is_dir() && !t1.path().join(e).is_symlink()).cloned())
            .collect();
        let id = |rel: &str| p.id_of_path(rel.as_bytes()).unwrap();
        let pick = |v: &[String], i: usize| v.get(i % v.len().max(1)).cloned();
        let op = match a {
            Action::Create { dir, name, id: fid, mode } => {
                Op::Create { dir: id(&dirs[dir % dirs.len()]), name: NAMES[name].into(), id: Fh(fid), mode, verf: None }
            }
            Action::Mkdir { dir, name, id: fid } => {
                Op::Mkdir { dir: id(&dirs[dir % dirs.len()]), name: NAMES[name].into(), id: Fh(fid), mode: 0o755 }
            }
            Action::Symlink { dir, name } => {
                Op::Symlink { dir: id(&dirs[dir % dirs.len()]), name: NAMES[name].into(), target: b"../x".to_vec() }
            }
            Action::Write { obj, offset, len, seed, sync } => {
                let Some(o) = pick(&all, obj) else { continue };
                let data = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                Op::Write { id: id(&o), offset, data, sync }
            }
            Action::Rename { obj, dir, name } => {
                let Some(o) = pick(&all, obj) else { continue };
                let (pd, n) = match o.rsplit_once('/') {
                    Some((d, n)) => (d.to_string(), n.to_string()),
                    None => (String::new(), o.clone()),
                };
                Op::Rename {
                    from_dir: id(&pd),
                    from: n.into(),
                    to_dir: id(&dirs[dir % dirs.len()]),
                    to: NAMES[name].into(),
                }
            }
            Action::Remove { obj } => {
                let Some(o) = pick(&all, obj) else { continue };
                let (pd, n) = o
                    .rsplit_once('/')
                    .map(|(d, n)| (d.to_string(), n.to_string()))
                    .unwrap_or((String::new(), o.clone()));
                Op::Remove { dir: id(&pd), name: n.into() }
            }
            Action::Chmod { obj, mode } => {
                let Some(o) = pick(&all, obj) else { continue };
                Op::SetAttr { id: id(&o), attrs: Attrs { mode: Some(mode), ..Attrs::default() } }
            }
            Action::Truncate { obj, size } => {
                let Some(o) = pick(&all, obj) else { continue };
                Op::SetAttr { id: id(&o), attrs: Attrs { size: Some(size), ..Attrs::default() } }
            }
            Action::Touch { obj, secs } => {
                let Some(o) = pick(&all, obj) else { continue };
                let t = SetTime::To { seconds: secs, nanos: 5 };
                Op::SetAttr { id: id(&o), attrs: Attrs { atime: t, mtime: t, ..Attrs::default() } }
            }
            // Through the caller-facing procedures: refusals (permissions, a name taken) are
            // fine, they must just not reach the log.
            Action::CreateAs { who, dir, name, mode } => {
                let how = nfs3::rw::How::Unchecked(Attrs { mode: Some(mode), ..Attrs::default() });
                let _ = p.create_as(caller(who), &id(&dirs[dir % dirs.len()]), NAMES[name].as_bytes(), how);
                continue;
            }
            Action::MkdirAs { who, dir, name, mode } => {
                let attrs = Attrs { mode: Some(mode), ..Attrs::default() };
                let _ = p.mkdir_as(caller(who), &id(&dirs[dir % dirs.len()]), NAMES[name].as_bytes(), &attrs);
                continue;
            }
            Action::Link { who, obj, dir, name } => {
                let Some(o) = pick(&all, obj) else { continue };
                let _ = p.link_as(caller(who), &id(&o), &id(&dirs[dir % dirs.len()]), NAMES[name].as_bytes());
                continue;
            }
            Action::Mknod { who, dir, name, socket, mode } => {
                let attrs = Attrs { mode: Some(mode), ..Attrs::default() };
                let what = if socket { nfs3::rw::Node::Socket(attrs) } else { nfs3::rw::Node::Fifo(attrs) };
                let _ = p.mknod_as(caller(who), &id(&dirs[dir % dirs.len()]), NAMES[name].as_bytes(), &what);
                continue;
            }
            Action::RemoveAs { who, obj } => {
                let Some(o) = pick(&all, obj) else { continue };
                let (pd, n) = split(&o);
                let is_dir = t1.path().join(&o).is_dir() && !t1.path().join(&o).is_symlink();
                let _ = p.remove_as(caller(who), &id(&pd), n.as_bytes(), is_dir);
                continue;
            }
            Action::WriteAs { who, obj, len } => {
                let Some(o) = pick(&all, obj) else { continue };
                let _ = p.write_as(caller(who), &id(&o), 7, vec![b'w'; len], true);
                continue;
            }
        };
        // Refused changes (a name taken, a directory into itself, a write to a directory)
        // are fine: they must just not reach the log.
        let _ = p.apply(&op);
    }
    drop(p);
    let r = nfs3::AreaFs::open(t2.path(), 1, None, None).unwrap();
    for op in log.0.lock().unwrap().iter() {
        prop_assert!(r.apply(op).is_ok(), "replica refused {op:?}");
    }
    let (a, b) = (view(t1.path()), view(t2.path()));
    prop_assert_eq!(a, b);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn replaying_the_log_on_an_empty_replica_gives_the_primarys_tree(actions in prop::collection::vec(action(), 1..40)) {
        run(actions)?;
    }
}
