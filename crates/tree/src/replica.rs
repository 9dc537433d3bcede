//! Applying a plan to a replica: stage, journal, commit, recover.
//!
//! Layout: staged entries live in `<root>/.hanfs/stage/<generation>/` (same filesystem, so
//! installing is a rename); entries leaving the tree are renamed into its `trash/` during the
//! commit and deleted with the stage afterwards, so the visible switch is renames only; state
//! lives in `state_dir`: `current` (generation, digest, manifest)
//! and `journal` (the commit record). The commit point is the durable rename of `journal`.
//! Before it, the visible tree is untouched (staging only links or reads old files, which changes
//! ctime/nlink, not the digest), and recovery discards the stage. After it, every step of the
//! commit is idempotent and derived from (old, new) alone, so recovery replays it to the end:
//! the tree digest is always the old or the new generation's once recovery has run.

use crate::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::fault::point;
use crate::fsops::{lstat_at, remove_at, write_atomic_with, Root, StageWriter};
use crate::manifest::{show, split, EntryPath, Kind, Manifest};
use crate::plan::{layout, layout_with, Content, Plan, Source};
use crate::scan::{ScanOptions, Scanner};
use crate::{io_err, Error, Result};

/// Replica settings.
#[derive(Debug, Clone, Default)]
pub struct ReplicaOptions {
    /// Allow character and block devices in manifests. Image roots (Linux `rootimg`, AIX SPOTs)
    /// hold `/dev` nodes and need this; other replicated trees should refuse them, since a device
    /// node in an NFS export is a way to the server's hardware.
    pub allow_devices: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    generation: u64,
    digest: String,
    manifest: Manifest,
}

/// [`State`] as written: borrowed, so saving a state copies no manifest (same encoding).
#[derive(Serialize)]
struct StateOut<'a> {
    generation: u64,
    digest: &'a str,
    manifest: &'a Manifest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    generation: u64,
    digest: String,
    old: Manifest,
    new: Manifest,
    /// Paths replaced because their inodes drifted (the layout treats them as not kept).
    drift: Vec<EntryPath>,
}

/// [`Journal`] as written, borrowed (same encoding).
#[derive(Serialize)]
struct JournalOut<'a> {
    generation: u64,
    digest: &'a str,
    old: &'a Manifest,
    new: &'a Manifest,
    drift: &'a [EntryPath],
}

/// What [`Replica::recover`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing was pending.
    Clean,
    /// A committed generation was rolled forward to the end.
    RolledForward(u64),
    /// An uncommitted stage was discarded; the replica is at its previous generation.
    Discarded,
    /// A committed generation could not be finished because its staged content was lost (the
    /// stage deleted from outside): the tree was recorded as it is, at that generation, so the
    /// next plan from [`Replica::manifest`] repairs it.
    Abandoned(u64),
}

/// A replica tree with its state directory.
pub struct Replica {
    root: Root,
    state_dir: PathBuf,
    opts: ReplicaOptions,
    state: Option<State>,
    /// The generation a [`Replica::rescan`] just found whole on disk (digest equal to the record),
    /// taken by the next [`Replica::begin`]: it then probes only the kept inodes the plan acts on.
    checked: Option<u64>,
}

const STAGE: &[u8] = b".hanfs/stage";

fn stage_rel(generation: u64) -> Vec<u8> {
    format!(".hanfs/stage/{generation}").into_bytes()
}

fn sname(prefix: char, idx: usize) -> Vec<u8> {
    format!("{prefix}{idx}").into_bytes()
}

/// Reads a postcard state file streamed (never the file and its manifest in memory at once).
fn read_state<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>> {
    let f = match File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(p, e)),
    };
    match crate::codec::decode_from(f) {
        Ok(t) => Ok(Some(t)),
        Err(crate::codec::DecodeError::Io(e)) => Err(io_err(p, e)),
        Err(crate::codec::DecodeError::Format(e)) => Err(Error::Format(format!("{}: {e}", p.display()))),
    }
}

fn read_journal(p: &Path) -> Result<Option<Journal>> {
    let j = match read_state::<Journal>(p) {
        Ok(None) => return Ok(None),
        Ok(Some(j)) => j,
        // A journal of an older hanfs: (generation, digest, old, new), no drifted paths.
        Err(e @ Error::Format(_)) => match read_state::<(u64, String, Manifest, Manifest)>(p) {
            Ok(Some((generation, _, old, new))) => {
                Journal { generation, digest: String::new(), old, new, drift: Vec::new() }
            }
            _ => return Err(e),
        },
        Err(e) => return Err(e),
    };
    // As for the state: the digest of the manifest as read now.
    Ok(Some(Journal { digest: j.new.digest(), ..j }))
}

impl Replica {
    /// Opens a replica root (created if missing) and its state directory. Creates the control
    /// directory `.hanfs` and puts the root's mtime back, so opening does not change the digest.
    /// Does not recover: call [`Replica::recover`] next (or [`Replica::begin`] does it).
    pub fn open(root: &Path, state_dir: &Path, opts: ReplicaOptions) -> Result<Replica> {
        std::fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
        std::fs::create_dir_all(state_dir).map_err(|e| io_err(state_dir, e))?;
        let r = Root::open(root)?;
        if r.lstat(b".hanfs")?.is_none() {
            let st = r.lstat(b"")?.ok_or_else(|| Error::Config("root vanished".into()))?;
            let (sec, nsec) = (st.st_mtime, u32::try_from(st.st_mtime_nsec).unwrap_or(0));
            r.ensure_dir(b".hanfs")?;
            r.set_mtime(b"", sec, nsec)?;
        }
        r.ensure_dir(STAGE)?;
        // The digest is recomputed: a state written by an older hanfs holds the digest of its
        // definition (mtime as nanoseconds), not of the manifest as read now.
        let state =
            read_state::<State>(&state_dir.join("current"))?.map(|st| State { digest: st.manifest.digest(), ..st });
        Ok(Replica { root: r, state_dir: state_dir.to_path_buf(), opts, state, checked: None })
    }

    /// Generation and digest the replica holds, if it has one.
    pub fn current(&self) -> Option<(u64, String)> {
        self.state.as_ref().map(|s| (s.generation, s.digest.clone()))
    }

    /// The manifest of the current generation.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.state.as_ref().map(|s| &s.manifest)
    }

    /// The replica root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Scans the replica as it is on disk (for `verify`), with a hash cache in the state dir.
    pub fn scan(&self) -> Result<Manifest> {
        Scanner::new(self.root.path(), &ScanOptions { excludes: Vec::new(), state_dir: Some(self.state_dir.clone()) })?
            .scan()
    }

    /// Scans the replica and tells whether it still has the digest of the current generation (the
    /// digest found is returned). When it has, the next [`Replica::begin`] relies on this scan for
    /// the inodes the plan leaves alone (their types and link counts are in the digest) and probes
    /// again only those it will modify, link or read; what drifts in between is left as it is and
    /// found by the next scan (the agent rescans at every `Open`), never written through.
    pub fn rescan(&mut self) -> Result<(bool, String)> {
        let (same, d) = self.verify()?;
        self.checked = if same { self.state.as_ref().map(|s| s.generation) } else { None };
        Ok((same, d))
    }

    /// Takes the current generation as known whole on disk without scanning, as a
    /// [`Replica::rescan`] that found its digest would: the next [`Replica::begin`] then probes
    /// only the kept inodes the plan acts on. The caller vouches for it: nothing in the tree may
    /// have changed since a rescan of this generation found it whole (the agent's inotify watch,
    /// armed before that rescan, saw no event). Does nothing when there is no generation.
    pub fn known_whole(&mut self) {
        self.checked = self.state.as_ref().map(|s| s.generation);
    }

    /// Re-reads the tree and tells whether it still has the digest of the current generation
    /// (false also when there is no generation yet). Returns the digest found.
    pub fn verify(&self) -> Result<(bool, String)> {
        let d = self.scan()?.digest();
        Ok((self.state.as_ref().is_some_and(|s| s.digest == d), d))
    }

    /// Takes the tree as it is (for example a copy made by xCAT's prsync) as generation
    /// `generation`, so the first sync can send deltas against it.
    pub fn adopt(&mut self, generation: u64) -> Result<(u64, String)> {
        self.recover()?;
        let m = self.scan()?;
        let st = State { generation, digest: m.digest(), manifest: m };
        self.save_state(&st)?;
        self.state = Some(st);
        self.checked = None;
        Ok((generation, self.current().map(|c| c.1).unwrap_or_default()))
    }

    fn save_state(&self, st: &State) -> Result<()> {
        let p = self.state_dir.join("current");
        write_state(&p, st.generation, &st.digest, &st.manifest)
    }

    /// Finishes whatever a crash left: rolls a committed journal forward to the end, or discards
    /// an uncommitted stage. Safe to call at any time, and again after a crash inside it.
    pub fn recover(&mut self) -> Result<Recovery> {
        let (root, state_dir) = (self.root.path().to_path_buf(), self.state_dir.clone());
        self.recover_inner().map_err(|e| no_space(e, &root, &state_dir))
    }

    fn recover_inner(&mut self) -> Result<Recovery> {
        let jp = self.state_dir.join("journal");
        let _ = std::fs::remove_file(self.state_dir.join("journal.tmp"));
        if let Some(mut j) = read_journal(&jp)? {
            let g = j.generation;
            if self.replay(&mut j, true)?.is_some() {
                self.abandon(g)?;
                return Ok(Recovery::Abandoned(g));
            }
            return Ok(Recovery::RolledForward(g));
        }
        // A next state without a journal belongs to a commit that never reached its point.
        match std::fs::remove_file(self.state_dir.join(NEXT)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.state_dir.join(NEXT), e)),
        }
        let sd = self.root.dir(STAGE)?;
        let mut names = Vec::new();
        let mut dir = rustix::fs::Dir::read_from(&sd).map_err(|e| io_err(Path::new(".hanfs/stage"), e.into()))?;
        for ent in dir.by_ref() {
            let ent = ent.map_err(|e| io_err(Path::new(".hanfs/stage"), e.into()))?;
            let b = ent.file_name().to_bytes();
            if b != b"." && b != b".." {
                names.push(b.to_vec());
            }
        }
        for n in &names {
            point("recover-discard");
            discard(sd.as_fd(), n)?;
        }
        // What the last commit left (its own generation's stage) is mere cleanup, not a discard.
        let done = self.state.as_ref().map(|s| s.generation.to_string().into_bytes());
        let discarded = names.iter().any(|n| Some(n) != done.as_ref() && !n.starts_with(STALE));
        Ok(if discarded { Recovery::Discarded } else { Recovery::Clean })
    }

    /// Starts applying `plan`: checks it (the replica must be at its `from_digest`; the new
    /// manifest must be well formed and hash to `to_digest`) and opens a fresh stage.
    pub fn begin(&mut self, plan: Plan) -> Result<Staging<'_>> {
        let (root, state_dir) = (self.root.path().to_path_buf(), self.state_dir.clone());
        self.begin_inner(plan).map_err(|e| no_space(e, &root, &state_dir))
    }

    fn begin_inner(&mut self, plan: Plan) -> Result<Staging<'_>> {
        self.recover()?;
        let st = self.state.as_ref().ok_or(Error::NoBase)?;
        if st.digest != plan.from_digest {
            return Err(Error::WrongBase { have: st.digest.clone(), want: plan.from_digest.clone() });
        }
        if plan.generation <= st.generation {
            return Err(Error::Hostile(format!(
                "plan generation {} is not after the replica's {}",
                plan.generation, st.generation
            )));
        }
        plan.manifest.validate(self.opts.allow_devices)?;
        let d = plan.manifest.digest();
        if d != plan.to_digest {
            return Err(Error::Hostile(format!("plan's manifest hashes to {d}, not its to_digest {}", plan.to_digest)));
        }
        let old = &st.manifest;
        let new = &plan.manifest;
        let by_path: HashMap<&[u8], &Content> = plan.contents.iter().map(|c| (c.path.as_slice(), c)).collect();
        // Drift: inodes the old manifest says stay in place, or serve as sources, that are not
        // what it says on disk. They are never modified or linked, only replaced.
        let mut probe = Probe::new(&self.root, old);
        let lay0 = layout(old, new);
        // Just rescanned whole: only the kept inodes the commit sets metadata on or links to need
        // a look (sources are probed below); else every kept one.
        let checked = self.checked.take() == Some(st.generation);
        let acted: HashSet<&[u8]> = if checked {
            let leaders = lay0.links.iter().filter_map(|p| match new.entries.get(*p).map(|e| &e.kind) {
                Some(Kind::HardLink { leader }) => Some(leader.as_slice()),
                _ => None,
            });
            lay0.touched.iter().copied().chain(leaders).collect()
        } else {
            HashSet::default()
        };
        let mut drift: Vec<EntryPath> = Vec::new();
        for p in new.entries.keys() {
            let p = p.as_slice();
            if p.is_empty() || !lay0.kept.contains(p) || (checked && !acted.contains(p)) {
                continue;
            }
            if probe.get(p)? != OnDisk::Fine {
                drift.push(p.to_vec());
            }
        }
        let drift_set: HashSet<&[u8]> = drift.iter().map(Vec::as_slice).collect();
        // Nothing drifted (the usual case): the layout is the one just made.
        let lay = if drift.is_empty() { lay0 } else { layout_with(old, new, &drift_set) };
        let index: HashMap<EntryPath, usize> = new.entries.keys().enumerate().map(|(i, p)| (p.clone(), i)).collect();
        let old_groups = crate::plan::link_groups(old);
        let mut by_hash: HashMap<&[u8; 32], Vec<&[u8]>> = HashMap::default();
        for (q, o) in &old.entries {
            if let Kind::File { hash, .. } = &o.kind {
                by_hash.entry(hash).or_default().push(q);
            }
        }
        let mut moved = HashSet::default();
        let mut contents = Vec::new();
        let mut snapshot = HashSet::default();
        let mut lost = Vec::new();
        for p in &lay.staged {
            let Some(e) = new.entries.get(*p) else { continue };
            let Kind::File { size, hash, sparse } = &e.kind else { continue };
            // A local copy of `hash` from an old file that is sound on disk (or, failing that,
            // readable beneath the root and verified to hold that content).
            let local = |probe: &mut Probe<'_>| -> Result<Option<Source>> {
                let cands = by_hash.get(hash).map(Vec::as_slice).unwrap_or_default();
                for q in cands {
                    if probe.get(q)? == OnDisk::Fine {
                        return Ok(Some(Source::Copy { from: q.to_vec() }));
                    }
                }
                for q in cands {
                    if probe.holds(q, hash)? {
                        return Ok(Some(Source::Copy { from: q.to_vec() }));
                    }
                }
                Ok(None)
            };
            let source = match by_path.get(p) {
                // Drift repaired from what the replica holds: not in the plan, which keeps it.
                None if drift_set.contains(p) => match local(&mut probe)? {
                    Some(s) => s,
                    None => {
                        lost.push(show(p));
                        continue;
                    }
                },
                None => return Err(Error::Incomplete(format!("plan has no content source for {:?}", show(p)))),
                Some(c) => {
                    if c.size != *size || c.hash != *hash {
                        return Err(Error::Hostile(format!(
                            "content record of {:?} disagrees with the manifest",
                            show(p)
                        )));
                    }
                    // Local sources must be files of the old tree with that content.
                    let check_old = |q: &[u8], want: Option<&[u8; 32]>| -> Result<()> {
                        match old.entries.get(q).map(|o| &o.kind) {
                            Some(Kind::File { hash: h, .. }) if want.is_none_or(|w| w == h) => Ok(()),
                            _ => Err(Error::Hostile(format!(
                                "content of {:?} comes from {:?}, which is not that file in the old tree",
                                show(p),
                                show(q)
                            ))),
                        }
                    };
                    match &c.source {
                        Source::Send { base: Some((b, bh)) } => {
                            check_old(b, Some(bh))?;
                            match probe.get(b)? {
                                OnDisk::Fine => {}
                                // Read through a private copy: the inode is shared with
                                // something outside the engine's control.
                                OnDisk::Readable => {
                                    snapshot.insert(b.clone());
                                }
                                OnDisk::Gone => {
                                    lost.push(show(p));
                                    continue;
                                }
                            }
                            c.source.clone()
                        }
                        Source::Send { base: None } => c.source.clone(),
                        Source::Copy { from } | Source::Move { from } => {
                            check_old(from, Some(hash))?;
                            if probe.get(from)? != OnDisk::Fine {
                                match local(&mut probe)? {
                                    Some(s) => s,
                                    None => {
                                        lost.push(show(p));
                                        continue;
                                    }
                                }
                            } else if matches!(c.source, Source::Copy { .. }) {
                                c.source.clone()
                            } else {
                                // A move needs the old name to disappear and the inode to be unshared.
                                let unshared = !new.entries.contains_key(from)
                                    && !old_groups.contains_key(from.as_slice())
                                    && moved.insert(from.clone());
                                if unshared {
                                    c.source.clone()
                                } else {
                                    Source::Copy { from: from.clone() }
                                }
                            }
                        }
                    }
                }
            };
            let idx = index.get(*p).copied().unwrap_or_default();
            contents.push(Staged {
                path: p.to_vec(),
                idx,
                size: *size,
                hash: *hash,
                sparse: sparse.is_some(),
                source,
                done: false,
            });
        }
        if !lost.is_empty() {
            // What the replica lacks must come from the controller, which plans from the
            // replica's manifest: record the tree as it is (same generation).
            let generation = st.generation;
            drop(probe);
            let m = self.scan()?;
            let st = State { generation, digest: m.digest(), manifest: m };
            self.save_state(&st)?;
            self.state = Some(st);
            self.checked = None;
            return Err(Error::Drift { paths: lost });
        }
        let generation = plan.generation;
        let srel = stage_rel(generation);
        let sd = self.root.dir(STAGE)?;
        discard(sd.as_fd(), generation.to_string().as_bytes())?;
        rustix::fs::mkdirat(&sd, OsStr::from_bytes(generation.to_string().as_bytes()), Mode::from_raw_mode(0o700))
            .map_err(|e| io_err(Path::new(".hanfs/stage"), e.into()))?;
        let stage = self.root.dir(&srel)?;
        rustix::fs::mkdirat(&stage, "trash", Mode::from_raw_mode(0o700))
            .map_err(|e| io_err(Path::new(".hanfs/stage"), e.into()))?;
        let sent = contents
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c.source, Source::Send { .. }))
            .map(|(i, c)| (c.path.clone(), i))
            .collect();
        Ok(Staging { replica: self, plan, stage, contents, sent, drift, snapshot })
    }

    /// Replays a committed journal to the end (idempotent); `cleanup` also deletes the stage.
    /// Returns the paths whose staged content is lost when the replay can never finish.
    /// On success the replica's state takes `j.new` over (left empty in `j`).
    fn replay(&mut self, j: &mut Journal, cleanup: bool) -> Result<Option<Vec<String>>> {
        let root = &self.root;
        let (old, new) = (&j.old, &j.new);
        let done = self.state.as_ref().is_some_and(|s| s.generation == j.generation && s.digest == j.digest);
        if !done {
            let mut tm = Timer::new();
            let drift: HashSet<&[u8]> = j.drift.iter().map(Vec::as_slice).collect();
            let lay = layout_with(old, new, &drift);
            let srel = stage_rel(j.generation);
            let stage = match root.dir(&srel) {
                Ok(s) => s,
                // Gone (deleted from outside): whatever was installed stays; the check below
                // tells whether anything still to install went with it.
                Err(Error::Io { source, .. }) if Errno::from_io_error(&source) == Some(Errno::NOENT) => {
                    root.ensure_dir(&srel)?;
                    root.dir(&srel)?
                }
                Err(e) => return Err(e),
            };
            let index: HashMap<&[u8], usize> = new.entries.keys().enumerate().map(|(i, p)| (p.as_slice(), i)).collect();
            // A staged entry whose stage name is gone was installed (the rename moves it); if
            // its path is empty too, its content is lost and this replay can never finish.
            let mut lost = Vec::new();
            for p in &lay.staged {
                let name = sname('f', index.get(p).copied().unwrap_or_default());
                let staged = lstat_at(stage.as_fd(), &name).map_err(|e| io_err(Path::new(".hanfs/stage"), e.into()))?;
                if staged.is_none() && !matches!(root.lstat(p), Ok(Some(_))) {
                    lost.push(show(p));
                }
            }
            if !lost.is_empty() {
                return Ok(Some(lost));
            }
            // Old entries leave the tree by a rename into the stage's trash, not an unlink: the
            // unlinks (slow with online discard) happen after the switch, when the stage goes.
            let trash = match root.dir(&[srel.as_slice(), b"/trash"].concat()) {
                Ok(t) => t,
                Err(_) => {
                    root.ensure_dir(&[srel.as_slice(), b"/trash"].concat())?;
                    root.dir(&[srel.as_slice(), b"/trash"].concat())?
                }
            };
            let removed: HashSet<&[u8]> = lay.removed.iter().copied().collect();
            // 1. Removals, top-most first (a directory carries its subtree along).
            for (i, p) in lay.removed.iter().enumerate() {
                if split(p).is_some_and(|(parent, _)| removed.contains(parent)) {
                    continue;
                }
                point("commit-remove");
                to_trash(root, trash.as_fd(), p, &sname('r', i))?;
            }
            tm.lap("removals");
            // 2. Directories, parents first.
            for (p, e) in &new.entries {
                if e.kind == Kind::Dir && !p.is_empty() {
                    point("commit-mkdir");
                    root.ensure_dir(p)?;
                }
            }
            tm.lap("directories");
            // 3. Staged entries renamed into place (a stage name that is gone was installed).
            for p in &lay.staged {
                let name = sname('f', index.get(p).copied().unwrap_or_default());
                if lstat_at(stage.as_fd(), &name).map_err(|e| io_err(Path::new(".hanfs/stage"), e.into()))?.is_none() {
                    continue;
                }
                point("commit-install");
                to_trash(root, trash.as_fd(), p, &sname('i', index.get(p).copied().unwrap_or_default()))?;
                let (d, n) = root.parent(p)?;
                rustix::fs::renameat(&stage, OsStr::from_bytes(&name), &d, OsStr::from_bytes(n))
                    .map_err(|e| io_err(Path::new(&show(p)), e.into()))?;
            }
            tm.lap("installs");
            // 4. Hard-link members: link the leader to a stage name, rename over the member.
            for p in &lay.links {
                let Some(Kind::HardLink { leader }) = new.entries.get(*p).map(|e| &e.kind) else { continue };
                let lst = root
                    .lstat(leader)?
                    .ok_or_else(|| Error::Io { path: show(leader), source: std::io::ErrorKind::NotFound.into() })?;
                let mst = root.lstat(p)?;
                if mst.is_some_and(|m| m.st_dev == lst.st_dev && m.st_ino == lst.st_ino) {
                    continue;
                }
                point("commit-link");
                let tmp = sname('l', index.get(p).copied().unwrap_or_default());
                let _ = rustix::fs::unlinkat(&stage, OsStr::from_bytes(&tmp), AtFlags::empty());
                let (ld, ln) = root.parent(leader)?;
                rustix::fs::linkat(&ld, OsStr::from_bytes(ln), &stage, OsStr::from_bytes(&tmp), AtFlags::empty())
                    .map_err(|e| io_err(Path::new(&show(p)), e.into()))?;
                if mst.is_some() {
                    to_trash(root, trash.as_fd(), p, &sname('h', index.get(p).copied().unwrap_or_default()))?;
                }
                let (d, n) = root.parent(p)?;
                rustix::fs::renameat(&stage, OsStr::from_bytes(&tmp), &d, OsStr::from_bytes(n))
                    .map_err(|e| io_err(Path::new(&show(p)), e.into()))?;
            }
            tm.lap("hard links");
            // 5. Metadata (owner, xattrs, mode; mtime of non-directories).
            // A kept inode must still have the link count of its group: metadata is never set
            // through a link planted since `begin` (the inode may belong to a file outside).
            let nlink: HashMap<&[u8], u64> =
                crate::plan::link_groups(new).into_iter().map(|(leader, paths)| (leader, paths.len() as u64)).collect();
            for p in &lay.touched {
                if let Some(e) = new.entries.get(*p) {
                    point("commit-meta");
                    let expect =
                        (lay.kept.contains(p) && e.kind != Kind::Dir).then(|| nlink.get(p).copied().unwrap_or(1));
                    if root.set_meta(p, e, e.kind != Kind::Dir, expect)? {
                        continue;
                    }
                    // Drifted since `begin` (a link planted meanwhile): a single-name inode is
                    // replaced by a copy; what cannot be rebuilt here goes to the controller.
                    let idx = index.get(p).copied().unwrap_or_default();
                    let replaced =
                        expect == Some(1) && replace_drifted(root, stage.as_fd(), trash.as_fd(), &srel, p, e, idx)?;
                    if !replaced {
                        return Ok(Some(vec![show(p)]));
                    }
                }
            }
            tm.lap("metadata");
            // 6. Directory mtimes last, deepest first: every rename above touched some.
            for (p, e) in new.entries.iter().rev() {
                if e.kind == Kind::Dir {
                    point("commit-dir-mtime");
                    root.set_mtime(p, e.mtime_sec, e.mtime_nsec)?;
                }
            }
            tm.lap("directory mtimes");
            point("commit-syncfs");
            rustix::fs::syncfs(root.fd()).map_err(|e| io_err(root.path(), e.into()))?;
            tm.lap("syncfs");
            point("commit-state");
            let np = self.state_dir.join(NEXT);
            match std::fs::rename(&np, self.state_dir.join("current")) {
                Ok(()) => {
                    File::open(&self.state_dir).and_then(|f| f.sync_all()).map_err(|e| io_err(&self.state_dir, e))?
                }
                // Renamed by an earlier replay that stopped before the journal went.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    write_state(&self.state_dir.join("current"), j.generation, &j.digest, new)?
                }
                Err(e) => return Err(io_err(&np, e)),
            }
            drop(lay);
            drop(index);
            drop(drift);
            drop(nlink);
            let manifest = std::mem::take(&mut j.new);
            self.state = Some(State { generation: j.generation, digest: j.digest.clone(), manifest });
            self.checked = None;
            tm.lap("state saved (the switch is complete)");
        }
        point("commit-unjournal");
        let jp = self.state_dir.join("journal");
        match std::fs::remove_file(&jp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&jp, e)),
        }
        File::open(&self.state_dir).and_then(|f| f.sync_all()).map_err(|e| io_err(&self.state_dir, e))?;
        if cleanup {
            let mut tm = Timer::new();
            point("commit-cleanup");
            let sd = self.root.dir(STAGE)?;
            discard(sd.as_fd(), j.generation.to_string().as_bytes())?;
            tm.lap("stage and trash removed");
        }
        Ok(None)
    }

    /// Checks, just before the commit point, that the replica's filesystem has room for what
    /// the switch allocates: directory entries for every rename (new names and the trash),
    /// the new directories (an inode and a block each) and xattrs too big for the inode. An
    /// upper bound, so that a full disk stops the apply before the tree changes.
    fn check_space(&self, generation: u64, old: &Manifest, new: &Manifest, drift: &HashSet<&[u8]>) -> Result<()> {
        let Ok(v) = rustix::fs::fstatvfs(self.root.fd()) else { return Ok(()) };
        let bs = v.f_frsize.max(v.f_bsize).max(512);
        let lay = layout_with(old, new, drift);
        let mut per_dir: HashMap<Vec<u8>, u64> = HashMap::default();
        let mut names = 0u64;
        let mut add = |p: &[u8]| {
            if let Some((parent, name)) = split(p) {
                *per_dir.entry(parent.to_vec()).or_default() += name.len() as u64 + 16;
                names += 1;
            }
        };
        lay.staged.iter().chain(&lay.links).for_each(|p| add(p));
        let mut new_dirs = 0u64;
        for (p, e) in &new.entries {
            if e.kind == Kind::Dir && !p.is_empty() && !matches!(old.entries.get(p).map(|o| &o.kind), Some(Kind::Dir)) {
                add(p);
                new_dirs += 1;
            }
        }
        // Old versions renamed into the trash (at most one per name installed or removed).
        *per_dir.entry(STAGE.to_vec()).or_default() += (names + lay.removed.len() as u64) * 24;
        let xattr_blocks = lay
            .touched
            .iter()
            .filter_map(|p| new.entries.get(*p))
            .filter(|e| e.xattrs.iter().map(|(k, v)| k.len() + v.len() + 16).sum::<usize>() > 96)
            .count() as u64;
        let blocks = per_dir.values().map(|b| b.div_ceil(bs) + 1).sum::<u64>() + new_dirs + xattr_blocks + 16;
        let need = blocks.saturating_mul(bs);
        let inodes = new_dirs + 16;
        let free = v.f_bavail.saturating_mul(v.f_frsize);
        if free < need || (v.f_files > 0 && v.f_favail < inodes) {
            return Err(Error::NoSpace {
                path: format!(
                    "the commit of generation {} (it needs about {need} bytes and {inodes} inodes free)",
                    generation
                ),
                fs: describe_fs(self.root.path()),
            });
        }
        Ok(())
    }

    /// Gives up a committed journal that can never finish (its staged content is gone): the
    /// tree is recorded as it is now, at the journal's generation, so that the next plan, made
    /// from [`Replica::manifest`], repairs it.
    fn abandon(&mut self, generation: u64) -> Result<()> {
        let m = self.scan()?;
        let st = State { generation, digest: m.digest(), manifest: m };
        self.save_state(&st)?;
        let _ = std::fs::remove_file(self.state_dir.join(NEXT));
        self.state = Some(st);
        self.checked = None;
        let jp = self.state_dir.join("journal");
        match std::fs::remove_file(&jp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&jp, e)),
        }
        File::open(&self.state_dir).and_then(|f| f.sync_all()).map_err(|e| io_err(&self.state_dir, e))?;
        let sd = self.root.dir(STAGE)?;
        discard(sd.as_fd(), generation.to_string().as_bytes())
    }

    /// Deletes what the last commit left in `.hanfs/stage` (the old versions of replaced and
    /// removed entries). [`Staging::commit`] leaves this out of the switch so the commit returns
    /// as soon as the new generation is in place; call it once the commit has been reported
    /// (it is also done by [`Replica::recover`] and [`Replica::begin`]).
    pub fn cleanup(&mut self) -> Result<()> {
        self.recover().map(|_| ())
    }
}

/// What an old-tree path holds on disk, compared with the old manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDisk {
    /// The type and link count the manifest says (for a hard-link member: the leader's inode).
    Fine,
    /// A regular file reachable beneath the root, but its inode is shared with names the
    /// manifest does not know (a planted hard link) or is not the one it should be: it may be
    /// read, never modified, linked or mapped.
    Readable,
    /// Missing, of another type, or behind a symlink or non-directory.
    Gone,
}

/// Looks at old-tree paths on disk (each at most once).
struct Probe<'a> {
    root: &'a Root,
    old: &'a Manifest,
    /// Path -> link count the manifest implies (hard-link groups).
    nlink: HashMap<&'a [u8], u64>,
    seen: HashMap<EntryPath, OnDisk>,
    hashed: HashMap<EntryPath, [u8; 32]>,
}

impl<'a> Probe<'a> {
    fn new(root: &'a Root, old: &'a Manifest) -> Probe<'a> {
        let mut nlink = HashMap::default();
        for (leader, paths) in crate::plan::link_groups(old) {
            for p in &paths {
                nlink.insert(*p, paths.len() as u64);
            }
            nlink.insert(leader, paths.len() as u64);
        }
        Probe { root, old, nlink, seen: HashMap::default(), hashed: HashMap::default() }
    }

    fn get(&mut self, p: &[u8]) -> Result<OnDisk> {
        if let Some(s) = self.seen.get(p) {
            return Ok(*s);
        }
        let s = self.look(p)?;
        self.seen.insert(p.to_vec(), s);
        Ok(s)
    }

    fn look(&self, p: &[u8]) -> Result<OnDisk> {
        let Some(e) = self.old.entries.get(p) else { return Ok(OnDisk::Gone) };
        let st = match self.root.lstat(p) {
            Ok(Some(st)) => st,
            Ok(None) | Err(Error::Hostile(_)) => return Ok(OnDisk::Gone),
            Err(e) => return Err(e),
        };
        let ft = crate::fsops::ftype(&st);
        let kind = match &e.kind {
            Kind::HardLink { leader } => {
                let same = match self.root.lstat(leader) {
                    Ok(Some(l)) => (l.st_dev, l.st_ino) == (st.st_dev, st.st_ino),
                    Ok(None) | Err(Error::Hostile(_)) => false,
                    Err(e) => return Err(e),
                };
                if !same {
                    return Ok(if ft == FileType::RegularFile { OnDisk::Readable } else { OnDisk::Gone });
                }
                self.old.entries.get(leader).map(|l| &l.kind).unwrap_or(&Kind::Fifo)
            }
            k => k,
        };
        let want = match kind {
            Kind::Dir => FileType::Directory,
            Kind::File { .. } | Kind::HardLink { .. } => FileType::RegularFile,
            Kind::Symlink { .. } => FileType::Symlink,
            Kind::Char { .. } => FileType::CharacterDevice,
            Kind::Block { .. } => FileType::BlockDevice,
            Kind::Fifo => FileType::Fifo,
        };
        if ft != want {
            return Ok(OnDisk::Gone);
        }
        if ft == FileType::Directory || crate::fsops::nlink(&st) == self.nlink.get(p).copied().unwrap_or(1) {
            return Ok(OnDisk::Fine);
        }
        Ok(if ft == FileType::RegularFile { OnDisk::Readable } else { OnDisk::Gone })
    }

    /// True when `p` is readable beneath the root and its content has BLAKE3 `hash` now.
    fn holds(&mut self, p: &[u8], hash: &[u8; 32]) -> Result<bool> {
        if self.get(p)? == OnDisk::Gone {
            return Ok(false);
        }
        if let Some(h) = self.hashed.get(p) {
            return Ok(h == hash);
        }
        let f = match self.root.open_file(p) {
            Ok(f) => f,
            Err(Error::Hostile(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut h = blake3::Hasher::new();
        h.update_reader(f).map_err(|e| io_err(Path::new(&show(p)), e))?;
        let h = *h.finalize().as_bytes();
        self.hashed.insert(p.to_vec(), h);
        Ok(&h == hash)
    }
}

/// With `HANFS_TREE_TIMING` set, prints how long each commit phase took (stderr).
struct Timer(Option<std::time::Instant>);

impl Timer {
    fn new() -> Timer {
        Timer(std::env::var_os("HANFS_TREE_TIMING").map(|_| std::time::Instant::now()))
    }
    fn lap(&mut self, what: &str) {
        if let Some(t) = self.0 {
            eprintln!("hanfs-tree timing: {what}: {:.3} s", t.elapsed().as_secs_f64());
            self.0 = Some(std::time::Instant::now());
        }
    }
}

/// The state of the generation being committed, written before the commit point.
const NEXT: &str = "current.next";

/// Writes a state file (`current`, `current.next`) atomically, streamed from the manifest.
fn write_state(p: &Path, generation: u64, digest: &str, manifest: &Manifest) -> Result<()> {
    let st = StateOut { generation, digest, manifest };
    write_atomic_with(p, |w| crate::codec::encode_into(&st, w)).map_err(|e| io_err(p, e))
}

/// Writes and fsyncs the postcard of `v` (not yet renamed into place), streamed.
fn write_file_synced(p: &Path, v: &impl Serialize) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::with_capacity(1 << 20, File::create(p)?);
    crate::codec::encode_into(v, &mut w)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

fn is_full(e: &std::io::Error) -> bool {
    matches!(Errno::from_io_error(e), Some(Errno::NOSPC | Errno::DQUOT))
}

/// Turns ENOSPC/EDQUOT into [`Error::NoSpace`], naming the filesystem (the state directory's
/// for its absolute paths, the replica root's for paths inside the tree).
pub(crate) fn no_space(e: Error, root: &Path, state_dir: &Path) -> Error {
    let path = match &e {
        Error::Io { path, source } if is_full(source) => path.clone(),
        Error::Delta { path, source: delta::Error::Io(source) } if is_full(source) => path.clone(),
        _ => return e,
    };
    let fs = if Path::new(&path).starts_with(state_dir) { state_dir } else { root };
    Error::NoSpace { path, fs: describe_fs(fs) }
}

/// "mount point (type device): free/total bytes, free inodes" for the filesystem holding `p`.
pub(crate) fn describe_fs(p: &Path) -> String {
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut best: Option<(PathBuf, String, String)> = None;
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in info.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let Some(dash) = f.iter().position(|x| *x == "-") else { continue };
            let (Some(mp), Some(ty), Some(dev)) = (f.get(4), f.get(dash + 1), f.get(dash + 2)) else { continue };
            let mp = PathBuf::from(mp.replace("\\040", " "));
            if canon.starts_with(&mp) && best.as_ref().is_none_or(|b| mp.as_os_str().len() >= b.0.as_os_str().len()) {
                best = Some((mp, ty.to_string(), dev.to_string()));
            }
        }
    }
    let mut out = match best {
        Some((mp, ty, dev)) => format!("{} ({ty} {dev})", mp.display()),
        None => format!("the filesystem of {}", p.display()),
    };
    if let Ok(v) = rustix::fs::statvfs(&canon) {
        out.push_str(&format!(
            ": {} of {} bytes free, {} inodes free",
            v.f_bavail.saturating_mul(v.f_frsize),
            v.f_blocks.saturating_mul(v.f_frsize),
            v.f_favail
        ));
    }
    out
}

/// Stage entries set aside because they could not be deleted.
const STALE: &[u8] = b"stale-";

/// Deletes `name` in the stage directory `sd`. What cannot be deleted (an immutable or busy
/// inode among the old versions) is set aside as `stale-…`, retried by later recoveries, and
/// never blocks the replica: it holds nothing visible, only space.
fn discard(sd: std::os::fd::BorrowedFd<'_>, name: &[u8]) -> Result<()> {
    let Err(e) = remove_at(sd, name) else { return Ok(()) };
    if name.starts_with(STALE) {
        return Ok(());
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let aside = [STALE, name, format!("-{nanos}").as_bytes()].concat();
    rustix::fs::renameat(sd, OsStr::from_bytes(name), sd, OsStr::from_bytes(&aside)).map_err(|_| Error::Io {
        path: format!(".hanfs/stage/{} (and setting it aside)", show(name)),
        source: e.into(),
    })
}

/// Replaces the inode at `p` (kept in place, but shared with a name the manifest does not know)
/// by a fresh one made in the stage: a copy of its content when that still hashes right, or the
/// special file rebuilt from the manifest; the old inode goes to the trash untouched. False
/// when the content is not what the manifest says (nothing changed then).
fn replace_drifted(
    root: &Root,
    stage: std::os::fd::BorrowedFd<'_>,
    trash: std::os::fd::BorrowedFd<'_>,
    srel: &[u8],
    p: &[u8],
    e: &crate::manifest::Entry,
    idx: usize,
) -> Result<bool> {
    let name = sname('d', idx);
    let n = OsStr::from_bytes(&name);
    let _ = remove_at(stage, &name);
    let made = match &e.kind {
        Kind::File { size, hash, .. } => {
            let mut src = match root.open_file(p) {
                Ok(f) => f,
                Err(Error::Hostile(_)) => return Ok(false),
                Err(err) => return Err(err),
            };
            let fd = rustix::fs::openat(
                stage,
                n,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e2| io_err(Path::new(&show(p)), e2.into()))?;
            let mut w = StageWriter::new(File::from(fd), false, *size);
            let copied = std::io::copy(&mut src, &mut w).and_then(|_| w.finish());
            match copied {
                Ok((len, h, f)) if len == *size && h == *hash => {
                    f.sync_all().map_err(|e2| io_err(Path::new(&show(p)), e2))?;
                    Ok(())
                }
                _ => {
                    let _ = remove_at(stage, &name);
                    return Ok(false);
                }
            }
        }
        Kind::Symlink { target } => rustix::fs::symlinkat(OsStr::from_bytes(target), stage, n),
        Kind::Char { major, minor } => rustix::fs::mknodat(
            stage,
            n,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            rustix::fs::makedev(*major, *minor),
        ),
        Kind::Block { major, minor } => rustix::fs::mknodat(
            stage,
            n,
            FileType::BlockDevice,
            Mode::from_raw_mode(0o600),
            rustix::fs::makedev(*major, *minor),
        ),
        Kind::Fifo => rustix::fs::mknodat(stage, n, FileType::Fifo, Mode::from_raw_mode(0o600), 0),
        Kind::Dir | Kind::HardLink { .. } => return Ok(false),
    };
    made.map_err(|e2| io_err(Path::new(&show(p)), e2.into()))?;
    let staged = [srel, b"/", &name].concat();
    root.set_meta(&staged, e, true, None)?;
    to_trash(root, trash, p, &sname('x', idx))?;
    let (d, last) = root.parent(p)?;
    rustix::fs::renameat(stage, n, &d, OsStr::from_bytes(last)).map_err(|e2| io_err(Path::new(&show(p)), e2.into()))?;
    Ok(true)
}

/// Moves `rel` (if present) into the trash directory under `name`, replacing whatever a
/// previous replay left there under that name.
fn to_trash(root: &Root, trash: std::os::fd::BorrowedFd<'_>, rel: &[u8], name: &[u8]) -> Result<()> {
    let (d, n) = match root.parent(rel) {
        Ok(x) => x,
        // A parent that is gone, not a directory any more, or a symlink: nothing of ours there.
        Err(Error::Io { source, .. })
            if matches!(Errno::from_io_error(&source), Some(Errno::NOENT | Errno::NOTDIR)) =>
        {
            return Ok(())
        }
        Err(Error::Hostile(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    if lstat_at(d.as_fd(), n).map_err(|e| io_err(Path::new(&show(rel)), e.into()))?.is_none() {
        return Ok(());
    }
    let tn = OsStr::from_bytes(name);
    match rustix::fs::renameat(&d, OsStr::from_bytes(n), trash, tn) {
        Ok(()) => Ok(()),
        Err(_) => {
            remove_at(trash, name).map_err(|e| io_err(Path::new(&show(rel)), e.into()))?;
            rustix::fs::renameat(&d, OsStr::from_bytes(n), trash, tn)
                .map_err(|e| io_err(Path::new(&show(rel)), e.into()))
        }
    }
}

#[derive(Debug)]
struct Staged {
    path: EntryPath,
    idx: usize,
    size: u64,
    hash: [u8; 32],
    sparse: bool,
    source: Source,
    done: bool,
}

/// A file the controller still has to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// New-tree path.
    pub path: EntryPath,
    /// Size.
    pub size: u64,
    /// Old file the delta must be computed against (by its content hash), if any.
    pub base: Option<(EntryPath, [u8; 32])>,
}

/// An open stage for one plan. Feed it the files it [`needs`](Staging::needed) with
/// [`write_file`](Staging::write_file) or [`add_delta`](Staging::add_delta) (any order, streamed),
/// then [`commit`](Staging::commit). Dropping it without commit leaves a stage that the next
/// `recover`/`begin` discards.
pub struct Staging<'a> {
    replica: &'a mut Replica,
    plan: Plan,
    stage: OwnedFd,
    contents: Vec<Staged>,
    /// Path -> position in `contents`, for files the controller sends.
    sent: HashMap<EntryPath, usize>,
    /// New-tree paths whose inodes are replaced because they drifted (see [`OnDisk`]).
    drift: Vec<EntryPath>,
    /// Delta bases read through a private copy (their inode is shared with unknown names).
    snapshot: HashSet<EntryPath>,
}

/// A file being staged frame by frame; see [`Staging::file_writer`].
pub struct FileWriter<'s, 'a> {
    staging: &'s mut Staging<'a>,
    i: usize,
    w: StageWriter,
}

impl FileWriter<'_, '_> {
    /// Ends the file: checks its size and BLAKE3 against the manifest.
    pub fn finish(self) -> Result<()> {
        let r = self.staging.seal(self.i, self.w, "writing");
        r.map_err(|e| self.staging.space(e))
    }
}

impl Write for FileWriter<'_, '_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.w.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> Staging<'a> {
    /// Files still to be sent, with the delta base the replica holds for each.
    pub fn needed(&self) -> Vec<Needed> {
        self.contents
            .iter()
            .filter(|c| !c.done)
            .filter_map(|c| match &c.source {
                Source::Send { base } => Some(Needed { path: c.path.clone(), size: c.size, base: base.clone() }),
                _ => None,
            })
            .collect()
    }

    /// The plan being applied.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    fn slot(&mut self, path: &[u8]) -> Result<usize> {
        self.sent
            .get(path)
            .copied()
            .ok_or_else(|| Error::Hostile(format!("{:?} is not a file this plan expects to be sent", show(path))))
    }

    fn create(&self, i: usize) -> Result<StageWriter> {
        let c = &self.contents[i];
        let name = sname('f', c.idx);
        let n = OsStr::from_bytes(&name);
        let _ = rustix::fs::unlinkat(&self.stage, n, AtFlags::empty());
        let fd = rustix::fs::openat(
            &self.stage,
            n,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io_err(Path::new(&show(&c.path)), e.into()))?;
        Ok(StageWriter::new(File::from(fd), c.sparse, c.size))
    }

    fn seal(&mut self, i: usize, w: StageWriter, how: &'static str) -> Result<()> {
        let (n, h, _) = w.finish().map_err(|e| io_err(Path::new(&show(&self.contents[i].path)), e))?;
        let c = &mut self.contents[i];
        if n != c.size || h != c.hash {
            let name = sname('f', c.idx);
            let _ = rustix::fs::unlinkat(&self.stage, OsStr::from_bytes(&name), AtFlags::empty());
            return Err(Error::Mismatch { path: show(&c.path), how });
        }
        c.done = true;
        point("stage-file");
        Ok(())
    }

    /// Stages the whole new content of `path`, read from `data`; checked against its BLAKE3.
    pub fn write_file(&mut self, path: &[u8], mut data: impl Read) -> Result<()> {
        let r = (|| {
            let i = self.slot(path)?;
            let mut w = self.create(i)?;
            std::io::copy(&mut data, &mut w).map_err(|e| io_err(Path::new(&show(path)), e))?;
            self.seal(i, w, "writing")
        })();
        r.map_err(|e| self.space(e))
    }

    fn space(&self, e: Error) -> Error {
        no_space(e, self.replica.root.path(), &self.replica.state_dir)
    }

    /// Push-style staging of a whole file, for a receiver that gets it in frames: write the
    /// bytes in order, then [`FileWriter::finish`] (which checks size and BLAKE3).
    pub fn file_writer(&mut self, path: &[u8]) -> Result<FileWriter<'_, 'a>> {
        let i = self.slot(path)?;
        let w = self.create(i).map_err(|e| self.space(e))?;
        Ok(FileWriter { staging: self, i, w })
    }

    /// Stages `path` by applying a librsync delta (read from `delta`) to its base in the old
    /// tree; refuses out-of-bounds copies and output past the manifest size, and checks BLAKE3.
    pub fn add_delta(&mut self, path: &[u8], delta: impl Read) -> Result<()> {
        let r = self.add_delta_inner(path, delta);
        r.map_err(|e| self.space(e))
    }

    fn add_delta_inner(&mut self, path: &[u8], delta: impl Read) -> Result<()> {
        let i = self.slot(path)?;
        let Source::Send { base: Some((base, _)) } = self.contents[i].source.clone() else {
            return Err(Error::Hostile(format!("{:?} has no delta base in this plan", show(path))));
        };
        let mut bf = self.replica.root.open_file(&base)?;
        if self.snapshot.contains(&base) {
            // The base's inode has names outside the manifest (a planted hard link): someone
            // else may truncate it, so map a private copy instead (removed once opened).
            let name = sname('b', self.contents[i].idx);
            let n = OsStr::from_bytes(&name);
            let _ = rustix::fs::unlinkat(&self.stage, n, AtFlags::empty());
            let fd = rustix::fs::openat(
                &self.stage,
                n,
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| io_err(Path::new(&show(&base)), e.into()))?;
            let _ = rustix::fs::unlinkat(&self.stage, n, AtFlags::empty());
            let mut copy = File::from(fd);
            std::io::copy(&mut bf, &mut copy).map_err(|e| io_err(Path::new(&show(&base)), e))?;
            bf = copy;
        }
        let len = bf.metadata().map_err(|e| io_err(Path::new(&show(&base)), e))?.len();
        let map = if len == 0 { None } else { Some(map::base(&bf).map_err(|e| io_err(Path::new(&show(&base)), e))?) };
        let b: &[u8] = map.as_deref().unwrap_or_default();
        let mut w = self.create(i)?;
        let limit = self.contents[i].size;
        delta::patch(b, std::io::BufReader::new(delta), &mut w, limit)
            .map_err(|e| Error::Delta { path: show(path), source: e })?;
        w.flush().map_err(|e| io_err(Path::new(&show(path)), e))?;
        self.seal(i, w, "patching")
    }

    /// Stages local copies and moves and the special files, makes the stage durable, writes
    /// the commit record, and commits. Returns the new (generation, digest) as soon as the new
    /// generation is in place and recorded; the old versions wait in the stage's trash for
    /// [`Replica::cleanup`].
    pub fn commit(self) -> Result<(u64, String)> {
        let (root, state_dir) = (self.replica.root.path().to_path_buf(), self.replica.state_dir.clone());
        self.commit_inner().map_err(|e| no_space(e, &root, &state_dir))
    }

    fn commit_inner(mut self) -> Result<(u64, String)> {
        let mut tm = Timer::new();
        let missing: Vec<String> = self.needed().iter().map(|n| show(&n.path)).collect();
        if !missing.is_empty() {
            return Err(Error::Incomplete(format!("{} files not sent: {}", missing.len(), missing.join(", "))));
        }
        for i in 0..self.contents.len() {
            let c = &self.contents[i];
            if c.done {
                continue;
            }
            match c.source.clone() {
                Source::Copy { from } => {
                    let mut src = self.replica.root.open_file(&from)?;
                    let mut w = self.create(i)?;
                    std::io::copy(&mut src, &mut w).map_err(|e| io_err(Path::new(&show(&from)), e))?;
                    self.seal(i, w, "copying")?;
                }
                Source::Move { from } => {
                    let name = sname('f', c.idx);
                    let n = OsStr::from_bytes(&name);
                    let _ = rustix::fs::unlinkat(&self.stage, n, AtFlags::empty());
                    let (d, fname) = self.replica.root.parent(&from)?;
                    rustix::fs::linkat(&d, OsStr::from_bytes(fname), &self.stage, n, AtFlags::empty())
                        .map_err(|e| io_err(Path::new(&show(&from)), e.into()))?;
                    let f = rustix::fs::openat(
                        &self.stage,
                        n,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io_err(Path::new(&show(&from)), e.into()))?;
                    let mut h = blake3::Hasher::new();
                    h.update_reader(File::from(f)).map_err(|e| io_err(Path::new(&show(&from)), e))?;
                    if *h.finalize().as_bytes() != c.hash {
                        return Err(Error::Mismatch { path: show(&c.path), how: "moving" });
                    }
                    self.contents[i].done = true;
                    point("stage-move");
                }
                Source::Send { .. } => {}
            }
        }
        tm.lap("local copies and moves staged");
        // Special files (symlinks, devices, fifos) are staged too, so installing is a rename.
        // The old manifest is the replica's own, borrowed: no copy of either tree is made here.
        let none = Manifest::default();
        let old = self.replica.state.as_ref().map_or(&none, |s| &s.manifest);
        let new = &self.plan.manifest;
        let drift: HashSet<&[u8]> = self.drift.iter().map(Vec::as_slice).collect();
        let lay = layout_with(old, new, &drift);
        let index: HashMap<&[u8], usize> = new.entries.keys().enumerate().map(|(i, p)| (p.as_slice(), i)).collect();
        for p in &lay.staged {
            let Some(e) = new.entries.get(*p) else { continue };
            let name = sname('f', index.get(p).copied().unwrap_or_default());
            let n = OsStr::from_bytes(&name);
            let mk = |ft: FileType, dev: u64| {
                let _ = rustix::fs::unlinkat(&self.stage, n, AtFlags::empty());
                rustix::fs::mknodat(&self.stage, n, ft, Mode::from_raw_mode(0o600), dev)
            };
            let r = match &e.kind {
                Kind::Symlink { target } => {
                    let _ = rustix::fs::unlinkat(&self.stage, n, AtFlags::empty());
                    rustix::fs::symlinkat(OsStr::from_bytes(target), &self.stage, n)
                }
                Kind::Char { major, minor } => mk(FileType::CharacterDevice, rustix::fs::makedev(*major, *minor)),
                Kind::Block { major, minor } => mk(FileType::BlockDevice, rustix::fs::makedev(*major, *minor)),
                Kind::Fifo => mk(FileType::Fifo, 0),
                _ => continue,
            };
            r.map_err(|e2| io_err(Path::new(&show(p)), e2.into()))?;
            point("stage-special");
        }
        // Everything staged (file data, links, special files, the stage directory) durable at
        // once, before the commit record.
        rustix::fs::syncfs(&self.stage).map_err(|e| io_err(Path::new(".hanfs/stage"), e.into()))?;
        point("stage-synced");
        tm.lap("special files staged, stage synced");
        let (generation, digest) = (self.plan.generation, self.plan.to_digest.clone());
        let jo = JournalOut { generation, digest: &digest, old, new, drift: &self.drift };
        // Everything the switch writes is allocated before the commit point, so that a full
        // disk stops the apply here, with the tree untouched: the next state is written now
        // (the switch renames it into place), and the space the renames, new directories and
        // xattrs take is checked against what is free once the journal is on disk too.
        let np = self.replica.state_dir.join(NEXT);
        write_state(&np, generation, &digest, new)?;
        let jp = self.replica.state_dir.join("journal");
        let jt = self.replica.state_dir.join("journal.tmp");
        write_file_synced(&jt, &jo).map_err(|e| io_err(&jt, e))?;
        point("journal-written");
        self.replica.check_space(generation, old, new, &drift)?;
        drop(lay);
        drop(drift);
        std::fs::rename(&jt, &jp).map_err(|e| io_err(&jp, e))?;
        File::open(&self.replica.state_dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err(&self.replica.state_dir, e))?;
        point("committed");
        tm.lap("journal written (commit point)");
        // The journal in memory takes both trees over (the old one from the replica's state, which
        // the replay replaces by the new one), rather than copies of them.
        let old = self.replica.state.as_mut().map(|s| std::mem::take(&mut s.manifest)).unwrap_or_default();
        let new = std::mem::take(&mut self.plan.manifest);
        let mut j = Journal { generation, digest, old, new, drift: std::mem::take(&mut self.drift) };
        let replayed = self.replica.replay(&mut j, false);
        // Not switched (an error, or content lost): the replica's record is still the old
        // generation in memory, as on disk until a recovery finishes the journal.
        if let Some(s) = self.replica.state.as_mut().filter(|s| s.generation != generation) {
            s.manifest = std::mem::take(&mut j.old);
        }
        if let Some(lost) = replayed? {
            // Content gone or changed behind the commit: record the tree as it is, so that the
            // next plan (from the replica's manifest) repairs it.
            self.replica.abandon(generation)?;
            return Err(Error::Drift { paths: lost });
        }
        Ok((j.generation, j.digest))
    }

    /// Gives up: removes the stage; the replica stays at its generation.
    pub fn abort(self) -> Result<()> {
        let sd = self.replica.root.dir(STAGE)?;
        discard(sd.as_fd(), self.plan.generation.to_string().as_bytes())
    }
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("root", &self.root.path()).field("current", &self.current()).finish()
    }
}

/// Mapping a base file to patch against. The map is `unsafe` because the kernel lets anyone who can
/// write the file change or truncate it under the map (memmap2's contract); this is the one place the
/// engine accepts that, to patch large bases without reading them into memory.
#[allow(unsafe_code)]
mod map {
    /// Maps `f` read-only. Only for a base of the plan being applied: the replica tree is written only
    /// by this engine, which is applying that plan, and a base shared with unknown names is a private
    /// copy first (see `snapshot`), so nothing truncates it while it is mapped.
    pub(super) fn base(f: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
        // SAFETY: see above; the file outlives no map (the caller drops the map before the file).
        unsafe { memmap2::Mmap::map(f) }
    }
}
