//! The manifest: what a tree holds, its validation and its digest.

use crate::HashMap;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// An entry's path relative to the tree root: `/`-separated bytes (file names in an image need not
/// be UTF-8, unlike the config's and the wire's `model::RelPath`), no leading `/`; the root itself
/// is empty. Checked by [`check_path`].
pub type EntryPath = Vec<u8>;

/// The name of the control directory at a replica root; never scanned, never replicated.
pub const CONTROL_DIR: &[u8] = b".hanfs";

/// One tree: every entry by relative path (the root is `""`), in byte order.
///
/// Serialized as (format marker, entries, sockets); a manifest written before mtimes kept
/// seconds and nanoseconds apart (no marker: it starts with the entry count) is still read,
/// its nanosecond mtimes split, so state files of an older hanfs keep working.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Entries by path; parents sort before their children.
    pub entries: BTreeMap<EntryPath, Entry>,
    /// Sockets met while scanning (not replicated).
    pub skipped_sockets: u64,
}

/// First value of a serialized manifest since mtimes are (seconds, nanoseconds). An older
/// manifest starts with its entry count there, which is never this large.
const FORMAT_V2: u64 = 0x6861_6e66_7376_3200;

impl Serialize for Manifest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&FORMAT_V2)?;
        t.serialize_element(&self.entries)?;
        t.serialize_element(&self.skipped_sockets)?;
        t.end()
    }
}

/// An entry as hanfs wrote it before: mtime as i64 nanoseconds (clamped after 2262).
#[derive(Deserialize)]
struct LegacyEntry {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<'de> Deserialize<'de> for Manifest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Manifest, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Manifest;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a hanfs manifest")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> std::result::Result<Manifest, A::Error> {
                use serde::de::Error as _;
                let short = || A::Error::custom("manifest ends early");
                let first: u64 = a.next_element()?.ok_or_else(short)?;
                let entries = if first == FORMAT_V2 {
                    a.next_element()?.ok_or_else(short)?
                } else {
                    // The older layout: `first` was the entry count, (path, entry) pairs follow.
                    let mut m = BTreeMap::new();
                    for _ in 0..first {
                        let (p, e): (EntryPath, LegacyEntry) = a.next_element()?.ok_or_else(short)?;
                        let entry = Entry {
                            kind: e.kind,
                            mode: e.mode,
                            uid: e.uid,
                            gid: e.gid,
                            mtime_sec: e.mtime_ns.div_euclid(1_000_000_000),
                            mtime_nsec: u32::try_from(e.mtime_ns.rem_euclid(1_000_000_000)).unwrap_or(0),
                            xattrs: e.xattrs,
                        };
                        m.insert(p, entry);
                    }
                    m
                };
                let skipped_sockets = a.next_element()?.ok_or_else(short)?;
                Ok(Manifest { entries, skipped_sockets })
            }
        }
        d.deserialize_tuple(usize::MAX, V)
    }
}

/// One entry's kind, metadata and extended attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// Permission bits with setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time: seconds since the epoch (negative before 1970)...
    pub mtime_sec: i64,
    /// ...and nanoseconds within that second (0..1e9). Kept apart so that every time a
    /// filesystem can hold (beyond 2262 too) is replicated exactly.
    pub mtime_nsec: u32,
    /// Extended attributes in the replicated namespaces, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Entry kinds. A hard-link group is one leader (the smallest path, any non-directory kind) and
/// `HardLink` members naming it; members carry the leader's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Size in bytes.
        size: u64,
        /// BLAKE3 of the content.
        hash: [u8; 32],
        /// Data extents `(offset, len)` when the file is sparse; recreated as holes. Not part of
        /// the digest: hole layout differs between filesystems.
        sparse: Option<Vec<(u64, u64)>>,
    },
    /// A symbolic link and its target bytes.
    Symlink {
        /// Target.
        target: Vec<u8>,
    },
    /// Another name of the leader's inode.
    HardLink {
        /// The group leader's path.
        leader: EntryPath,
    },
    /// A character device.
    Char {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    Block {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

impl Kind {
    fn tag(&self) -> u8 {
        match self {
            Kind::Dir => 1,
            Kind::File { .. } => 2,
            Kind::Symlink { .. } => 3,
            Kind::HardLink { .. } => 4,
            Kind::Char { .. } => 5,
            Kind::Block { .. } => 6,
            Kind::Fifo => 7,
        }
    }

    /// True for character and block devices.
    pub fn is_device(&self) -> bool {
        matches!(self, Kind::Char { .. } | Kind::Block { .. })
    }
}

/// Counts of a manifest, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Directories.
    pub dirs: u64,
    /// Regular files (leaders).
    pub files: u64,
    /// Bytes in regular files.
    pub bytes: u64,
    /// Other entries (symlinks, hard links, devices, fifos).
    pub other: u64,
    /// Sockets met by the scan and not replicated (see [`Manifest::skipped_sockets`]).
    pub sockets: u64,
}

/// Splits a path into (parent, name); the root has no parent.
pub fn split(p: &[u8]) -> Option<(&[u8], &[u8])> {
    if p.is_empty() {
        return None;
    }
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => Some((&p[..i], &p[i + 1..])),
        None => Some((&[], p)),
    }
}

/// Shows a path for messages.
pub fn show(p: &[u8]) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

/// Checks one path's shape: relative, no empty, `.` or `..` components, no NUL, not under the
/// control directory.
pub fn check_path(p: &[u8]) -> Result<()> {
    if p.is_empty() {
        return Ok(());
    }
    let bad = |why: &str| Err(Error::Hostile(format!("path {:?}: {why}", show(p))));
    if p[0] == b'/' {
        return bad("absolute path");
    }
    if p.contains(&0) {
        return bad("NUL byte");
    }
    for (i, c) in p.split(|&b| b == b'/').enumerate() {
        match c {
            b"" => return bad("empty component"),
            b"." | b".." => return bad("`.` or `..` component"),
            _ if i == 0 && c == CONTROL_DIR => return bad("inside the control directory .hanfs"),
            _ => {}
        }
    }
    Ok(())
}

impl Manifest {
    /// Checks the manifest is a tree hanfs may write: paths well formed, the root a directory,
    /// every parent a directory, hard links naming a non-directory leader, devices only when
    /// `allow_devices`.
    pub fn validate(&self, allow_devices: bool) -> Result<()> {
        match self.entries.get(&b""[..]) {
            Some(e) if e.kind == Kind::Dir => {}
            _ => return Err(Error::Hostile("manifest has no root directory".into())),
        }
        for (p, e) in &self.entries {
            check_path(p)?;
            if let Some((parent, _)) = split(p) {
                match self.entries.get(parent) {
                    Some(pe) if pe.kind == Kind::Dir => {}
                    Some(_) => {
                        return Err(Error::Hostile(format!(
                            "path {:?} goes through {:?}, which is not a directory (a symlink or file)",
                            show(p),
                            show(parent)
                        )))
                    }
                    None => return Err(Error::Hostile(format!("path {:?} has no parent directory entry", show(p)))),
                }
            }
            if e.mtime_nsec >= 1_000_000_000 {
                return Err(Error::Hostile(format!("path {:?}: mtime nanoseconds {}", show(p), e.mtime_nsec)));
            }
            if e.mode > 0o7777 {
                return Err(Error::Hostile(format!("path {:?}: mode {:o}", show(p), e.mode)));
            }
            match &e.kind {
                Kind::HardLink { leader } => match self.entries.get(leader) {
                    Some(l) if !matches!(l.kind, Kind::Dir | Kind::HardLink { .. }) => {
                        // One inode, one set of metadata.
                        if (l.mode, l.uid, l.gid, l.mtime_sec, l.mtime_nsec, &l.xattrs)
                            != (e.mode, e.uid, e.gid, e.mtime_sec, e.mtime_nsec, &e.xattrs)
                        {
                            return Err(Error::Hostile(format!(
                                "hard link {:?} has metadata different from its leader {:?}",
                                show(p),
                                show(leader)
                            )));
                        }
                    }
                    _ => {
                        return Err(Error::Hostile(format!(
                            "hard link {:?} names {:?}, which is not a non-directory leader",
                            show(p),
                            show(leader)
                        )))
                    }
                },
                k if k.is_device() && !allow_devices => {
                    return Err(Error::Hostile(format!(
                        "device node {:?} outside an image (this replica does not allow devices)",
                        show(p)
                    )))
                }
                Kind::Symlink { target } if target.is_empty() || target.contains(&0) => {
                    return Err(Error::Hostile(format!("symlink {:?} has an empty or NUL target", show(p))))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Counts entries and bytes.
    pub fn counts(&self) -> Counts {
        let mut c = Counts { sockets: self.skipped_sockets, ..Counts::default() };
        for e in self.entries.values() {
            match e.kind {
                Kind::Dir => c.dirs += 1,
                Kind::File { size, .. } => {
                    c.files += 1;
                    c.bytes += size;
                }
                _ => c.other += 1,
            }
        }
        c
    }

    /// The hex BLAKE3 Merkle digest (see [`digest`]).
    pub fn digest(&self) -> String {
        digest(self)
    }

    /// Serialises with postcard (what the agent sends).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self).map_err(|e| Error::Format(e.to_string()))
    }

    /// Reads a postcard manifest.
    pub fn from_bytes(b: &[u8]) -> Result<Manifest> {
        postcard::from_bytes(b).map_err(|e| Error::Format(e.to_string()))
    }

    /// Writes the postcard encoding ([`Manifest::to_bytes`]'s bytes) into `w` as a stream, never
    /// held whole in memory; `w`'s own I/O error is returned as it was (an ENOSPC stays one).
    pub fn write_into(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        crate::codec::encode_into(self, w)
    }

    /// Reads a postcard manifest from a stream (what [`Manifest::from_bytes`] reads, without
    /// holding its encoding); bytes after it are left unread. `what` names the stream in errors.
    pub fn from_reader(r: impl std::io::Read, what: &str) -> Result<Manifest> {
        crate::codec::decode_from(r).map_err(|e| match e {
            crate::codec::DecodeError::Io(e) => Error::Io { path: what.into(), source: e },
            crate::codec::DecodeError::Format(e) => Error::Format(format!("{what}: {e}")),
        })
    }
}

fn put_bytes(h: &mut blake3::Hasher, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

/// Hash of one entry's own record (kind, metadata, xattrs), without children.
fn entry_hash(e: &Entry) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"hanfs-entry-v2");
    h.update(&[e.kind.tag()]);
    h.update(&e.mode.to_le_bytes());
    h.update(&e.uid.to_le_bytes());
    h.update(&e.gid.to_le_bytes());
    h.update(&e.mtime_sec.to_le_bytes());
    h.update(&e.mtime_nsec.to_le_bytes());
    match &e.kind {
        Kind::Dir | Kind::Fifo => {}
        Kind::File { size, hash, .. } => {
            h.update(&size.to_le_bytes());
            h.update(hash);
        }
        Kind::Symlink { target } => put_bytes(&mut h, target),
        Kind::HardLink { leader } => put_bytes(&mut h, leader),
        Kind::Char { major, minor } | Kind::Block { major, minor } => {
            h.update(&major.to_le_bytes());
            h.update(&minor.to_le_bytes());
        }
    }
    h.update(&(e.xattrs.len() as u64).to_le_bytes());
    for (k, v) in &e.xattrs {
        put_bytes(&mut h, k);
        put_bytes(&mut h, v);
    }
    h.finalize()
}

/// Directory path -> its children as (name, full path).
type Children<'a> = HashMap<&'a [u8], Vec<(&'a [u8], &'a [u8])>>;

/// The tree digest, as the contract defines it: a BLAKE3 Merkle tree over the canonical manifest.
///
/// Leaf: `BLAKE3("hanfs-entry-v2" ‖ kind tag u8 ‖ mode u32 ‖ uid u32 ‖ gid u32 ‖ mtime seconds i64 ‖
/// mtime nanoseconds u32 ‖
/// kind data ‖ xattr count u64 ‖ (len‖name‖len‖value)*)`, all little-endian, lengths u64; kind data
/// is size u64 ‖ BLAKE3 content for files, len‖target for symlinks, len‖leader path for hard links,
/// major u32 ‖ minor u32 for devices. Directory node: `BLAKE3("hanfs-dir-v1" ‖ own leaf ‖
/// (len‖name‖child node)*)` with children in byte order of their names. The digest is the root
/// node's hex. Sparse extents, atime, ctime, inode numbers and nlink are not included, so the same
/// tree gives the same digest on any machine.
pub fn digest(m: &Manifest) -> String {
    let mut children: Children<'_> = HashMap::default();
    for p in m.entries.keys() {
        if let Some((parent, name)) = split(p) {
            children.entry(parent).or_default().push((name, p.as_slice()));
        }
    }
    fn node(m: &Manifest, children: &Children<'_>, p: &[u8], e: &Entry) -> blake3::Hash {
        let leaf = entry_hash(e);
        if e.kind != Kind::Dir {
            return leaf;
        }
        let mut h = blake3::Hasher::new();
        h.update(b"hanfs-dir-v1");
        h.update(leaf.as_bytes());
        if let Some(kids) = children.get(p) {
            let mut kids = kids.clone();
            kids.sort_unstable();
            for (name, cp) in kids {
                if let Some(ce) = m.entries.get(cp) {
                    put_bytes(&mut h, name);
                    h.update(node(m, children, cp, ce).as_bytes());
                }
            }
        }
        h.finalize()
    }
    match m.entries.get(&b""[..]) {
        Some(root) => node(m, &children, b"", root).to_hex().to_string(),
        None => blake3::hash(b"hanfs-empty-v1").to_hex().to_string(),
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    /// A manifest written as a stream is `to_bytes`' encoding, and reads back equal from a
    /// stream; a stream cut short is an error naming the stream, not a short manifest.
    #[test]
    fn streamed_manifest_is_the_postcard_encoding() {
        let mut m = Manifest::default();
        let e = |kind| Entry { kind, mode: 0o755, uid: 1, gid: 2, mtime_sec: -3, mtime_nsec: 4, xattrs: vec![] };
        m.entries.insert(b"".to_vec(), e(Kind::Dir));
        m.entries.insert(b"f".to_vec(), e(Kind::File { size: 3, hash: [7; 32], sparse: Some(vec![(0, 1)]) }));
        m.entries.insert(b"l".to_vec(), e(Kind::Symlink { target: b"f".to_vec() }));
        m.skipped_sockets = 2;
        let mut w = Vec::new();
        m.write_into(&mut w).unwrap();
        assert_eq!(w, m.to_bytes().unwrap());
        assert_eq!(Manifest::from_reader(&w[..], "m").unwrap(), m);
        let e = Manifest::from_reader(&w[..w.len() - 1], "the file").err().unwrap().to_string();
        assert!(e.contains("the file"), "{e}");
    }
}
