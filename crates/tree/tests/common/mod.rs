#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
//! Shared test helpers: random trees with every entry kind, built on disk for real, an
//! independent walk to compare trees, and a full sync old -> new through the public API.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use tree::{Manifest, Payload, Plan, Replica, ReplicaOptions, SigStore};

/// A small deterministic RNG (xorshift*), so a proptest seed reproduces a tree.
pub struct TRng(u64);

impl TRng {
    pub fn new(seed: u64) -> TRng {
        TRng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum K {
    Dir,
    File(Vec<u8>),
    /// Size and data pieces (offset, bytes); the rest is holes.
    Sparse(u64, Vec<(u64, Vec<u8>)>),
    Symlink(Vec<u8>),
    /// Hard link to the file at this path.
    Hard(String),
    Chr(u32, u32),
    Blk(u32, u32),
    Fifo,
}

#[derive(Clone, Debug)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub root: Meta,
    pub entries: BTreeMap<String, (K, Meta)>,
}

const DIRS: &[&str] = &["a", "b", "a/c", "a/d", "b/e", "a/c/f"];
const NAMES: &[&str] = &["x", "y", "z", "w", "v", "u.conf", "t"];

/// A valid POSIX ACL with a named user (so the kernel keeps it as an xattr).
pub fn acl(uid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in
        [(1u16, 6u16, u32::MAX), (2, 4, uid), (4, 4, u32::MAX), (0x10, 4, u32::MAX), (0x20, 4, u32::MAX)]
    {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// True when running as root. Without root the trees keep what an ordinary user can make:
/// own uid/gid, no device nodes, no trusted.*/security.* xattrs (each skipped with a note).
pub fn is_root() -> bool {
    static NOTE: std::sync::Once = std::sync::Once::new();
    let root = rustix::process::geteuid().is_root();
    if !root {
        NOTE.call_once(|| {
            eprintln!("not root: trees use no other owners, device nodes or trusted/security xattrs");
        });
    }
    root
}

fn meta(r: &mut TRng, dir: bool) -> Meta {
    let mut mode = if dir { 0o755 } else { *r.pick(&[0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444]) };
    if dir && r.chance(15) {
        mode = 0o1777;
    }
    let mut xattrs = Vec::new();
    if r.chance(30) {
        xattrs.push(("user.tag".to_string(), {
            let n = r.below(12) as usize + 1;
            r.bytes(n)
        }));
    }
    let root = is_root();
    if r.chance(15) && root {
        xattrs.push(("trusted.t".to_string(), b"v".to_vec()));
    }
    if r.chance(15) && root {
        xattrs.push((
            "security.capability".to_string(),
            vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ));
    }
    if !dir && r.chance(10) {
        xattrs.push(("system.posix_acl_access".to_string(), acl(1000 + r.below(3) as u32)));
    }
    let (uid, gid) = (*r.pick(&[0, 0, 1000, 1001, 65534]), *r.pick(&[0, 0, 100, 1001]));
    let (uid, gid) =
        if root { (uid, gid) } else { (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw()) };
    Meta { mode, uid, gid, mtime: 1_600_000_000_000_000_000 + r.below(1_000_000_000_000_000) as i64, xattrs }
}

fn content(r: &mut TRng, pool: &[Vec<u8>]) -> Vec<u8> {
    match r.below(4) {
        0 => {
            let n = r.below(300) as usize;
            r.bytes(n)
        }
        1 => {
            let n = r.below(40_000) as usize;
            r.bytes(n)
        }
        _ => {
            let mut v = r.pick(pool).clone();
            if r.chance(50) && !v.is_empty() {
                let i = r.below(v.len() as u64) as usize;
                v[i] ^= 0x5a;
                let b = {
                    let n = r.below(50) as usize;
                    r.bytes(n)
                };
                v.splice(i..i, b);
            }
            v
        }
    }
}

/// Shared contents, so that copies, moves and deltas happen between trees.
pub fn pool(r: &mut TRng) -> Vec<Vec<u8>> {
    (0..4)
        .map(|_| {
            let n = 3000 + r.below(60_000) as usize;
            r.bytes(n)
        })
        .collect()
}

fn kind(r: &mut TRng, pool: &[Vec<u8>], files: &[String], devices: bool) -> K {
    let devices = devices && is_root();
    match r.below(if devices { 12 } else { 9 }) {
        0..=3 => K::File(content(r, pool)),
        4 => K::Sparse(2 << 20, vec![(r.below(1 << 20), r.bytes(5000)), ((1 << 20) + 4096 * r.below(4), r.bytes(100))]),
        5 => K::Symlink(r.pick(&[&b"../x"[..], b"/etc/passwd", b"y", b"a/c/../../z"]).to_vec()),
        6 | 7 if !files.is_empty() => K::Hard(r.pick(files).clone()),
        8 => K::Fifo,
        9 | 10 => K::Chr(1 + r.below(10) as u32, r.below(300) as u32),
        11 => K::Blk(7, r.below(8) as u32),
        _ => K::File(content(r, pool)),
    }
}

/// A random tree over a small namespace.
pub fn random_spec(r: &mut TRng, pool: &[Vec<u8>], devices: bool) -> Spec {
    let mut entries = BTreeMap::new();
    for d in DIRS {
        let parent_ok = match d.rfind('/') {
            Some(i) => entries.contains_key(&d[..i]),
            None => true,
        };
        if parent_ok && r.chance(70) {
            entries.insert(d.to_string(), (K::Dir, meta(r, true)));
        }
    }
    let mut dirs = vec![String::new()];
    dirs.extend(entries.keys().cloned());
    let mut files = Vec::new();
    for _ in 0..r.below(18) {
        let d = r.pick(&dirs).clone();
        let n = r.pick(NAMES);
        let p = if d.is_empty() { n.to_string() } else { format!("{d}/{n}") };
        if entries.contains_key(&p) {
            continue;
        }
        let k = kind(r, pool, &files, devices);
        if matches!(k, K::File(_)) {
            files.push(p.clone());
        }
        entries.insert(p, (k, meta(r, false)));
    }
    Spec { root: meta(r, true), entries }
}

/// A new generation derived from `old`: some entries kept, some changed in content, metadata
/// or kind, some moved or removed, some added.
pub fn mutate(r: &mut TRng, old: &Spec, pool: &[Vec<u8>], devices: bool) -> Spec {
    let fresh = random_spec(r, pool, devices);
    let mut s = old.clone();
    let keys: Vec<String> = s.entries.keys().cloned().collect();
    for k in &keys {
        let Some((kind, m)) = s.entries.get_mut(k) else { continue };
        match r.below(10) {
            0 => m.mtime += 1,
            1 => m.mode ^= 0o040,
            2 => m.xattrs.push(("user.new".into(), b"1".to_vec())),
            3 => {
                if let K::File(c) = kind {
                    if !c.is_empty() {
                        let i = r.below(c.len() as u64) as usize;
                        c[i] ^= 1;
                    }
                }
            }
            4 if !matches!(kind, K::Dir) => {
                // Move: the same content under a new name.
                let e = s.entries.remove(k).unwrap();
                let to = format!("{k}.moved");
                s.entries.entry(to).or_insert(e);
            }
            5 if !matches!(kind, K::Dir) => {
                s.entries.remove(k);
            }
            // Kind changes: a directory becomes a file (its children go), a file a symlink.
            6 if matches!(kind, K::Dir) && r.chance(30) => *kind = K::File(b"was a dir".to_vec()),
            7 if !matches!(kind, K::Dir) => *kind = K::Symlink(b"elsewhere".to_vec()),
            8 if matches!(kind, K::File(_)) && r.chance(50) => {
                // A new hard link to an existing file.
                let e = (K::Hard(k.clone()), m.clone());
                s.entries.entry(format!("{k}.link")).or_insert(e);
            }
            _ => {}
        }
    }
    for (p, e) in fresh.entries {
        let parent_ok = match p.rfind('/') {
            Some(i) => matches!(s.entries.get(&p[..i]), Some((K::Dir, _))),
            None => true,
        };
        if parent_ok && r.chance(40) && !matches!(s.entries.get(&p), Some((K::Dir, _))) {
            if matches!(e.0, K::Dir) && s.entries.contains_key(&p) {
                continue;
            }
            s.entries.insert(p, e);
        }
    }
    // Until nothing changes: drop entries whose parent is not a directory, and hard links
    // whose target is not a regular file that exists.
    loop {
        let snap = s.entries.clone();
        let before = s.entries.len();
        s.entries.retain(|p, (k, _)| {
            let parent_ok = match p.rfind('/') {
                Some(i) => matches!(snap.get(&p[..i]), Some((K::Dir, _))),
                None => true,
            };
            let link_ok = match k {
                K::Hard(t) => matches!(snap.get(t), Some((K::File(_), _))),
                _ => true,
            };
            parent_ok && link_ok
        });
        if s.entries.len() == before {
            break;
        }
    }
    if r.chance(30) {
        s.root.mtime += 7;
    }
    s
}

fn set_meta(p: &Path, m: &Meta, symlink: bool) {
    use rustix::fs::{AtFlags, Gid, Timespec, Timestamps, Uid, CWD};
    let md = std::fs::symlink_metadata(p).unwrap();
    let (reg, dir) = (md.is_file(), md.is_dir());
    rustix::fs::chownat(CWD, p, Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)), AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("lchown {p:?}: {e}"));
    for (k, v) in &m.xattrs {
        // The kernel allows user.* only on files and directories, capabilities and
        // access ACLs only on regular files.
        if (k.starts_with("user.") && !(reg || dir))
            || ((k.starts_with("security.capability") || k.starts_with("system.")) && !reg)
        {
            continue;
        }
        rustix::fs::lsetxattr(p, k.as_str(), v, rustix::fs::XattrFlags::empty())
            .unwrap_or_else(|e| panic!("setxattr {k} on {p:?}: {e}"));
    }
    if !symlink {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m.mode)).unwrap();
    }
    let ts = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec {
            tv_sec: m.mtime.div_euclid(1_000_000_000),
            tv_nsec: m.mtime.rem_euclid(1_000_000_000),
        },
    };
    rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn mknod(p: &Path, kind: rustix::fs::FileType, dev: rustix::fs::Dev) {
    rustix::fs::mknodat(rustix::fs::CWD, p, kind, rustix::fs::Mode::from_raw_mode(0o600), dev)
        .unwrap_or_else(|e| panic!("mknod {p:?}: {e}"));
}

/// Builds `spec` at `dir` (which must not exist).
pub fn build(dir: &Path, spec: &Spec) {
    std::fs::create_dir_all(dir).unwrap();
    for (p, (k, _)) in &spec.entries {
        let full = dir.join(p);
        match k {
            K::Dir => std::fs::create_dir(&full).unwrap(),
            K::File(d) => std::fs::write(&full, d).unwrap(),
            K::Sparse(size, pieces) => {
                let f = File::create(&full).unwrap();
                f.set_len(*size).unwrap();
                for (off, b) in pieces {
                    std::os::unix::fs::FileExt::write_all_at(&f, b, *off).unwrap();
                }
            }
            K::Symlink(t) => std::os::unix::fs::symlink(OsStr::from_bytes(t), &full).unwrap(),
            K::Hard(_) => {}
            K::Chr(a, b) => mknod(&full, rustix::fs::FileType::CharacterDevice, rustix::fs::makedev(*a, *b)),
            K::Blk(a, b) => mknod(&full, rustix::fs::FileType::BlockDevice, rustix::fs::makedev(*a, *b)),
            K::Fifo => mknod(&full, rustix::fs::FileType::Fifo, 0),
        }
    }
    for (p, (k, _)) in &spec.entries {
        if let K::Hard(t) = k {
            std::fs::hard_link(dir.join(t), dir.join(p)).unwrap();
        }
    }
    for (p, (k, m)) in &spec.entries {
        if !matches!(k, K::Dir | K::Hard(_)) {
            set_meta(&dir.join(p), m, matches!(k, K::Symlink(_)));
        }
    }
    for (p, (k, m)) in spec.entries.iter().rev() {
        if matches!(k, K::Dir) {
            set_meta(&dir.join(p), m, false);
        }
    }
    set_meta(dir, &spec.root, false);
}

/// What the independent walk records for one path.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub content: Option<blake3::Hash>,
    pub size: u64,
    pub target: Option<Vec<u8>>,
    pub rdev: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The smallest path sharing this inode (hard-link group), for non-directories.
    pub group: Option<String>,
}

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in buf[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        if name.starts_with(b"system.") && !name.starts_with(b"system.posix_acl") {
            continue;
        }
        let mut v = vec![0u8; 65536];
        let k = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut v[..]).unwrap();
        out.push((name.to_vec(), v[..k].to_vec()));
    }
    out.sort();
    out
}

/// Walks `dir` with std only (not the engine's scanner) and records everything that must match.
pub fn walk(dir: &Path) -> BTreeMap<String, Seen> {
    fn rec(root: &Path, rel: &str, out: &mut Vec<(String, std::fs::Metadata)>) {
        let p = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
        let md = std::fs::symlink_metadata(&p).unwrap();
        let is_dir = md.is_dir();
        out.push((rel.to_string(), md));
        if is_dir {
            for de in std::fs::read_dir(&p).unwrap() {
                let n = de.unwrap().file_name().into_string().unwrap();
                if rel.is_empty() && n == ".hanfs" {
                    continue;
                }
                let child = if rel.is_empty() { n } else { format!("{rel}/{n}") };
                rec(root, &child, out);
            }
        }
    }
    let mut all = Vec::new();
    rec(dir, "", &mut all);
    all.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut groups: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for (p, md) in &all {
        if !md.is_dir() {
            groups.entry((md.dev(), md.ino())).or_insert_with(|| p.clone());
        }
    }
    let mut out = BTreeMap::new();
    for (p, md) in all {
        let full = if p.is_empty() { dir.to_path_buf() } else { dir.join(&p) };
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_file() {
            'f'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else {
            's'
        };
        if kind == 's' {
            continue;
        }
        out.insert(
            p.clone(),
            Seen {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                content: (kind == 'f').then(|| blake3::hash(&std::fs::read(&full).unwrap())),
                size: if kind == 'f' { md.len() } else { 0 },
                target: (kind == 'l').then(|| std::fs::read_link(&full).unwrap().as_os_str().as_bytes().to_vec()),
                rdev: md.rdev(),
                xattrs: xattrs(&full),
                group: (kind != 'd').then(|| groups[&(md.dev(), md.ino())].clone()),
            },
        );
    }
    out
}

/// Copies a tree with `cp -a` (the replica starts as a copy of the old generation).
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

/// Everything one sync needs on the controller side.
pub struct Source {
    pub old_dir: PathBuf,
    pub new_dir: PathBuf,
    pub old: Manifest,
    pub new: Manifest,
    pub store: SigStore,
}

impl Source {
    pub fn new(old_dir: &Path, new_dir: &Path, state: &Path) -> Source {
        let old = tree::scan(old_dir, &[]).unwrap();
        let new = tree::scan(new_dir, &[]).unwrap();
        let store = SigStore::open(&state.join("sigs")).unwrap();
        store.update(old_dir, &old).unwrap();
        Source { old_dir: old_dir.into(), new_dir: new_dir.into(), old, new, store }
    }

    pub fn plan(&self, generation: u64) -> Plan {
        let mut p = tree::diff(&self.old, &self.new);
        p.generation = generation;
        p
    }
}

/// Sends every needed file (delta or whole) into the stage and commits.
pub fn apply(src: &Source, replica: &mut Replica, plan: Plan) -> tree::Result<(u64, String)> {
    let contents: Vec<_> = plan.to_send().cloned().collect();
    let mut st = replica.begin(plan)?;
    for c in contents {
        let p = src.store.payload(&src.new_dir, &c)?.unwrap();
        if p.is_delta() {
            st.add_delta(&c.path, p.reader()?)?;
        } else {
            st.write_file(&c.path, p.reader()?)?;
        }
        if let Payload::DeltaFile(f) = p {
            std::fs::remove_file(f).unwrap();
        }
    }
    st.commit()
}

/// Opens a replica that starts as a `cp -a` copy of `old_dir`, adopted as generation 1.
pub fn replica_copy(old_dir: &Path, at: &Path, state: &Path) -> Replica {
    copy_tree(old_dir, at);
    let mut r = Replica::open(at, state, ReplicaOptions { allow_devices: true }).unwrap();
    r.recover().unwrap();
    r.adopt(1).unwrap();
    r
}

/// `rdiff` must be there (Debian package rdiff, `make deps`): a missing one fails the test.
pub fn ensure_rdiff() {
    testkit::program("rdiff", "rdiff");
}

/// Runs `rdiff --force ARGS FILES`, asserting success.
pub fn rdiff(args: &[&str], files: &[&Path]) {
    let st = Command::new("rdiff").arg("--force").args(args).args(files).status().unwrap();
    assert!(st.success(), "rdiff {args:?} failed");
}
