//! Comparing two manifests: the change plan the controller sends to every replica.

use crate::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::manifest::{Entry, EntryPath, Kind, Manifest};

/// Where a replica gets the content of a new or changed regular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// The controller sends it: a delta against `base` (a file of the old tree with that BLAKE3),
    /// or the whole file.
    Send {
        /// Old-tree file the delta is computed against, with its content hash.
        base: Option<(EntryPath, [u8; 32])>,
    },
    /// Copy from this old-tree file, which has the same content and stays.
    Copy {
        /// Old-tree path.
        from: EntryPath,
    },
    /// Move (hard-link into the stage, then drop the old name): the old file is removed.
    Move {
        /// Old-tree path.
        from: EntryPath,
    },
}

/// One regular file the replica must stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// New-tree path.
    pub path: EntryPath,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 the staged file must have.
    pub hash: [u8; 32],
    /// Where its bytes come from.
    pub source: Source,
}

/// Counts of what a plan changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Paths only in the new tree.
    pub added: u64,
    /// Paths only in the old tree.
    pub removed: u64,
    /// Regular files whose content changed in place.
    pub content_changed: u64,
    /// Entries whose metadata alone changed.
    pub metadata_only: u64,
    /// Files whose content moves from a removed path.
    pub moved: u64,
    /// Files whose content is copied from another old path.
    pub copied: u64,
    /// Hard-link members created or re-pointed.
    pub hardlinks_changed: u64,
    /// Files the controller must send (as delta or whole).
    pub to_send: u64,
    /// Bytes of those files (before deltas).
    pub bytes_to_send: u64,
}

/// The change plan from one generation to the next: the whole new manifest (so the replica can
/// check and record it) and the content sources of every file to stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Generation number the replica will be at after commit; set by the controller.
    pub generation: u64,
    /// Digest of the old tree (the replica must be at it).
    pub from_digest: String,
    /// Digest of the new tree.
    pub to_digest: String,
    /// The new tree.
    pub manifest: Manifest,
    /// Regular files to stage, in path order.
    pub contents: Vec<Content>,
    /// Counts.
    pub summary: Summary,
}

impl Plan {
    /// The contents the controller has to send (source `Send`).
    pub fn to_send(&self) -> impl Iterator<Item = &Content> {
        self.contents.iter().filter(|c| matches!(c.source, Source::Send { .. }))
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.from_digest == self.to_digest
    }

    /// Serialises with postcard.
    pub fn to_bytes(&self) -> crate::Result<Vec<u8>> {
        postcard::to_stdvec(self).map_err(|e| crate::Error::Format(e.to_string()))
    }

    /// Reads a postcard plan.
    pub fn from_bytes(b: &[u8]) -> crate::Result<Plan> {
        postcard::from_bytes(b).map_err(|e| crate::Error::Format(e.to_string()))
    }

    /// Reads a postcard plan from a stream (what [`Plan::from_bytes`] reads, without holding its
    /// encoding in memory); bytes after it are left unread.
    pub fn from_reader(r: impl std::io::Read) -> crate::Result<Plan> {
        crate::codec::decode_from(r).map_err(|e| match e {
            crate::codec::DecodeError::Io(e) => crate::Error::Io { path: "plan".into(), source: e },
            crate::codec::DecodeError::Format(e) => crate::Error::Format(e),
        })
    }

    /// Writes the postcard encoding of this plan with `manifest` as its new tree (the bytes
    /// [`Plan::to_bytes`] gives for the plan holding it), streamed into `w`: with
    /// [`diff_lean`] the controller never copies the new manifest nor holds the plan encoded.
    pub fn write_with(&self, manifest: &Manifest, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        #[derive(Serialize)]
        struct Out<'a> {
            generation: u64,
            from_digest: &'a str,
            to_digest: &'a str,
            manifest: &'a Manifest,
            contents: &'a [Content],
            summary: &'a Summary,
        }
        let out = Out {
            generation: self.generation,
            from_digest: &self.from_digest,
            to_digest: &self.to_digest,
            manifest,
            contents: &self.contents,
            summary: &self.summary,
        };
        crate::codec::encode_into(&out, w)
    }
}

/// Hard-link groups: leader -> sorted list of all paths (leader first).
pub(crate) fn link_groups(m: &Manifest) -> HashMap<&[u8], Vec<&[u8]>> {
    let mut g: HashMap<&[u8], Vec<&[u8]>> = HashMap::default();
    for (p, e) in &m.entries {
        if let Kind::HardLink { leader } = &e.kind {
            g.entry(leader.as_slice()).or_insert_with(|| vec![leader.as_slice()]).push(p);
        }
    }
    for v in g.values_mut() {
        v.sort_unstable();
    }
    g
}

fn same_meta(a: &Entry, b: &Entry) -> bool {
    a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.mtime_sec == b.mtime_sec
        && a.mtime_nsec == b.mtime_nsec
        && a.xattrs == b.xattrs
}

/// How the replica treats each new entry; computed the same way by the controller's diff and
/// by the replica's commit and journal replay, so the journal need not list operations.
pub(crate) struct Layout<'a> {
    /// New paths kept in place (same inode): only their metadata may be set.
    pub kept: HashSet<&'a [u8]>,
    /// New non-directory leaders staged and renamed into place (files and special files).
    pub staged: Vec<&'a [u8]>,
    /// Hard-link members to (re)link.
    pub links: Vec<&'a [u8]>,
    /// New entries whose metadata must be set (not hard-link members: they share the leader's inode).
    pub touched: Vec<&'a [u8]>,
    /// Old paths absent from the new tree.
    pub removed: Vec<&'a [u8]>,
}

pub(crate) fn layout<'a>(old: &'a Manifest, new: &'a Manifest) -> Layout<'a> {
    layout_with(old, new, &HashSet::default())
}

/// [`layout`] on a replica where the inodes at `drift` (new-tree paths) are not what the old
/// manifest says (wrong type or link count, e.g. a planted hard link or symlink): those are
/// never kept in place, so nothing is ever modified through them; they are staged anew.
pub(crate) fn layout_with<'a>(old: &'a Manifest, new: &'a Manifest, drift: &HashSet<&[u8]>) -> Layout<'a> {
    let go = link_groups(old);
    let gn = link_groups(new);
    // Both maps are in path order: one merge pairs each new entry with its old self and finds the
    // removed ones, rather than a tree lookup per entry (most of a small commit's CPU on a big image).
    let mut pairs: Vec<(&'a [u8], &'a Entry, Option<&'a Entry>)> = Vec::with_capacity(new.entries.len());
    let mut removed = Vec::new();
    let mut olds = old.entries.iter().peekable();
    for (p, e) in &new.entries {
        while let Some((q, _)) = olds.next_if(|(q, _)| q.as_slice() < p.as_slice()) {
            removed.push(q.as_slice());
        }
        let o = olds.next_if(|(q, _)| *q == p).map(|(_, o)| o);
        pairs.push((p.as_slice(), e, o));
    }
    removed.extend(olds.map(|(q, _)| q.as_slice()));
    let mut kept = HashSet::with_capacity_and_hasher(pairs.len(), Default::default());
    let mut keeps = Vec::with_capacity(pairs.len());
    let mut staged = Vec::new();
    let mut links = Vec::new();
    let mut touched = Vec::new();
    // Leaders first so that members can look at whether their leader is kept.
    for &(p, e, o) in &pairs {
        let same_group = go.get(p) == gn.get(p);
        let keep = match (&e.kind, o.map(|o| &o.kind)) {
            (Kind::Dir, Some(Kind::Dir)) => true,
            (Kind::HardLink { .. }, _) | (Kind::Dir, _) => false,
            (Kind::File { size, hash, .. }, Some(Kind::File { size: s2, hash: h2, .. })) => {
                size == s2 && hash == h2 && same_group
            }
            (k, Some(ok)) => k == ok && same_group,
            (_, None) => false,
        } && !drift.contains(p);
        if keep {
            kept.insert(p);
        } else if !matches!(e.kind, Kind::Dir | Kind::HardLink { .. }) {
            staged.push(p);
        }
        keeps.push(keep);
    }
    for (&(p, e, o), keep) in pairs.iter().zip(keeps) {
        if let Kind::HardLink { leader } = &e.kind {
            let ok = matches!(o.map(|o| &o.kind), Some(Kind::HardLink { leader: l2 }) if l2 == leader)
                && kept.contains(leader.as_slice())
                && !drift.contains(p);
            if ok {
                kept.insert(p);
            } else {
                links.push(p);
            }
            continue;
        }
        if !(keep && o.is_some_and(|o| same_meta(o, e))) {
            touched.push(p);
        }
    }
    Layout { kept, staged, links, touched, removed }
}

/// Compares two manifests and makes the plan from `old` to `new` (generation left 0 for the
/// controller to set). Content already in the old tree is copied or moved on the replica, not
/// sent; a changed file in place is sent as a delta against its old self.
pub fn diff(old: &Manifest, new: &Manifest) -> Plan {
    Plan { manifest: new.clone(), ..diff_lean(old, new) }
}

/// [`diff`] without the copy of `new` in the plan (its `manifest` is left empty): for a caller
/// that holds `new` anyway and encodes the plan with [`Plan::write_with`].
pub fn diff_lean(old: &Manifest, new: &Manifest) -> Plan {
    let lay = layout(old, new);
    let go = link_groups(old);
    // Old file leaders by content hash.
    let mut by_hash: HashMap<&[u8; 32], Vec<&[u8]>> = HashMap::default();
    for (p, e) in &old.entries {
        if let Kind::File { hash, .. } = &e.kind {
            by_hash.entry(hash).or_default().push(p);
        }
    }
    let mut moved_from: HashSet<&[u8]> = HashSet::default();
    let mut s = Summary::default();
    let mut contents = Vec::new();
    for p in &lay.staged {
        let Some(e) = new.entries.get(*p) else { continue };
        let Kind::File { size, hash, .. } = &e.kind else { continue };
        let old_here = old.entries.get(*p);
        let source = if let Some(Kind::File { hash: h2, .. }) = old_here.map(|o| &o.kind).filter(|_| true) {
            if h2 == hash {
                // Same content, new inode (hard-link group changed).
                Source::Copy { from: p.to_vec() }
            } else {
                s.content_changed += 1;
                pick_local(&by_hash, hash, new, &go, &mut moved_from, &mut s)
                    .unwrap_or(Source::Send { base: Some((p.to_vec(), *h2)) })
            }
        } else {
            pick_local(&by_hash, hash, new, &go, &mut moved_from, &mut s).unwrap_or(Source::Send { base: None })
        };
        if let Source::Send { .. } = source {
            s.to_send += 1;
            s.bytes_to_send += size;
        }
        contents.push(Content { path: p.to_vec(), size: *size, hash: *hash, source });
    }
    for (p, e) in &new.entries {
        match old.entries.get(p) {
            None => s.added += 1,
            Some(o) => {
                if lay.kept.contains(p.as_slice()) && !same_meta(o, e) && !matches!(e.kind, Kind::HardLink { .. }) {
                    s.metadata_only += 1;
                }
            }
        }
    }
    s.removed = lay.removed.len() as u64;
    s.hardlinks_changed = lay.links.len() as u64;
    Plan {
        generation: 0,
        from_digest: old.digest(),
        to_digest: new.digest(),
        manifest: Manifest::default(),
        contents,
        summary: s,
    }
}

fn pick_local<'a>(
    by_hash: &HashMap<&[u8; 32], Vec<&'a [u8]>>,
    hash: &[u8; 32],
    new: &Manifest,
    go: &HashMap<&[u8], Vec<&[u8]>>,
    moved_from: &mut HashSet<&'a [u8]>,
    s: &mut Summary,
) -> Option<Source> {
    let cands = by_hash.get(hash)?;
    for &q in cands {
        if !new.entries.contains_key(q) && !go.contains_key(q) && !moved_from.contains(q) {
            moved_from.insert(q);
            s.moved += 1;
            return Some(Source::Move { from: q.to_vec() });
        }
    }
    s.copied += 1;
    cands.first().map(|q| Source::Copy { from: q.to_vec() })
}
