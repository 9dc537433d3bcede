//! Continuous copy of a statelite area served by kernel nfsd (`[[statelite_kernel]]`, issue 13
//! point 4): the primary watches the area's node directories with inotify and sends every change
//! to the backup agent as change-log entries ([`nfs3::oplog::Op`]) over the same mutual-TLS
//! stream as a read-write area's ([`nfs3::replica::Replicator`] → `serve_replica`), in order.
//!
//! - **What is copied**: the node directories `<area>/<node>` this SN serves, i.e. that its exports
//!   file exports without `refer=` (re-read when it changes). Copies of other SNs' nodes that
//!   this SN holds as their backup are never forwarded (a pair backing each other would echo a
//!   node's data back over its live copy), nor is a moved node's stale directory.
//! - **Ids**: none on disk. The backup applies the stream to an [`nfs3::AreaFs::open_path_ids`]
//!   copy, where an object's id is [`nfs3::rw::symlink_id`] of its parent's id and its name, so
//!   the primary derives the same id from the path ([`id_of`]) without any state of its own.
//! - **Events**: `notify`'s inotify backend (already the workspace's watcher: it adds a watch
//!   for every new directory, pairs rename cookies into one event and reports queue overflow).
//!   A path is sent once it has been quiet for `debounce_ms`, or at the latest 4 × `debounce_ms`
//!   after its first change, so a file written in many calls is read once and a file written
//!   without pause still goes out. A paired rename whose inode is still at its new name is sent
//!   as a RENAME; anything else is resolved by comparing the path with what was sent.
//! - **What was sent** is kept per path (type, inode, size, times, mode, owner and a BLAKE3 hash
//!   per 256 KiB block), so a changed file costs one read but only its changed blocks go out
//!   (UNSTABLE writes, then a SETATTR of size, mode, owner and mtime, which the backup applies
//!   with an fsync and acknowledges). A file that changed while it was read (size, mtime or
//!   ctime differ after the read: a torn copy) is sent again after the debounce.
//! - **Overflow** of the inotify queue, a watch error, and every `reconcile_secs`: the served
//!   node directories are walked and compared by metadata with what was sent (ctime changes
//!   with every write), and every difference is sent.
//! - **The stream** is given up when the backup does not answer an entry in `peer_timeout_ms`
//!   or fails to apply one; it is dialled again (backoff up to 10 s) and then everything is
//!   sent again (the backup keeps files that are already there and is brought to the primary's
//!   content and size; files only the backup has are not removed by this stream).
//! - **Lag**: from the first change not yet acknowledged by the backup, in seconds, and the
//!   bytes of the files waiting ([`KernelLag`]). When nothing waits, an in-sync mark
//!   ([`nfs3::replica::in_sync_mark`]) is sent (at most once a second), so the backup knows how
//!   old its copy is at a failover.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nfs3::oplog::{Attrs, Op, SetTime};
use nfs3::rw::Replicate;
use nfs3::Fh;
use notify::{EventKind, RecursiveMode, Watcher as _};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Block size of the sent-content hashes, and the largest WRITE entry sent.
const BLOCK: usize = 256 * 1024;
/// At most this long between two in-sync marks while nothing changes.
const MARK_EVERY: Duration = Duration::from_secs(1);
/// Longest wait before a stream that was given up is dialled again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The id the backup's path-id copy gives `rel` (a path inside the area).
pub fn id_of(rel: &[u8]) -> Fh {
    let mut id = nfs3::rw::root_id();
    if !rel.is_empty() {
        for c in rel.split(|&b| b == b'/') {
            id = nfs3::rw::symlink_id(&id, c);
        }
    }
    id
}

/// Replication state of one kernel-nfsd area on its primary.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelLag {
    pub area: String,
    /// Since the oldest change the backup has not acknowledged (0 when none waits).
    pub seconds: f64,
    /// Bytes of the files waiting to be sent (their size when the change was seen).
    pub bytes: u64,
    /// When the backup last acknowledged an in-sync mark (everything seen until then).
    pub in_sync_at: Option<SystemTime>,
    /// Whether the stream to the backup is up.
    pub connected: bool,
    /// Files read again because they changed while being read.
    pub torn: u64,
    /// Full comparisons after an inotify overflow or a watch error.
    pub overflows: u64,
    /// Times the stream was given up (then dialled again and everything sent again).
    pub lost_streams: u64,
}

/// Knobs for the tests (lost events, a write during a read); inert unless set.
#[derive(Default)]
pub struct Hooks {
    /// Ignore inotify events (as if the queue had dropped them).
    pub drop_events: Arc<AtomicBool>,
    /// Called after a file's blocks were read, before its metadata is checked again.
    #[allow(clippy::type_complexity)]
    pub after_read: Mutex<Option<Box<dyn FnMut(&Path) + Send>>>,
    /// Skip the post-read check (to see the torn-read test fail).
    pub no_recheck: AtomicBool,
}

struct Shared {
    area: String,
    oldest: Mutex<Option<Instant>>,
    bytes: AtomicU64,
    in_sync_at: Mutex<Option<SystemTime>>,
    connected: AtomicBool,
    torn: AtomicU64,
    overflows: AtomicU64,
    lost_streams: AtomicU64,
    stop: AtomicBool,
    hooks: Hooks,
}

enum Input {
    Event(notify::Result<notify::Event>),
    Overflow,
}

/// A running watcher: stops (thread and watches) when dropped.
pub struct KernelWatch {
    shared: Arc<Shared>,
    tx: Sender<Input>,
    thread: Option<std::thread::JoinHandle<()>>,
    _watcher: notify::RecommendedWatcher,
}

/// A handle on a watcher's lag: the session answering
/// `StateliteKernelStatus` holds it while the watcher itself stays in `Listening`.
#[derive(Clone)]
pub struct LagProbe(Arc<Shared>);

impl LagProbe {
    pub fn lag(&self) -> KernelLag {
        lag_of(&self.0)
    }
}

impl KernelWatch {
    pub fn lag(&self) -> KernelLag {
        lag_of(&self.shared)
    }

    pub fn probe(&self) -> LagProbe {
        LagProbe(self.shared.clone())
    }

    pub fn hooks(&self) -> &Hooks {
        &self.shared.hooks
    }

    /// As if the inotify queue had overflowed.
    pub fn inject_overflow(&self) {
        let _ = self.tx.send(Input::Overflow);
    }
}

fn lag_of(s: &Shared) -> KernelLag {
    KernelLag {
        area: s.area.clone(),
        seconds: s.oldest.lock().ok().and_then(|o| *o).map_or(0.0, |t| t.elapsed().as_secs_f64()),
        bytes: s.bytes.load(Ordering::SeqCst),
        in_sync_at: s.in_sync_at.lock().ok().and_then(|m| *m),
        connected: s.connected.load(Ordering::SeqCst),
        torn: s.torn.load(Ordering::SeqCst),
        overflows: s.overflows.load(Ordering::SeqCst),
        lost_streams: s.lost_streams.load(Ordering::SeqCst),
    }
}

impl Drop for KernelWatch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Input::Overflow);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What to watch and where to send it.
pub struct Setup {
    /// The area as the cluster names it.
    pub area: String,
    /// Its directory on this SN.
    pub dir: PathBuf,
    /// The exports file (which node directories this SN serves) and its dialect.
    pub exports_file: PathBuf,
    pub dialect: model::Dialect,
    pub peer: nfs3::replica::Peer,
    pub debounce: Duration,
    pub reconcile: Duration,
}

/// Starts watching (the watches exist when this returns) and sending. `rt`: the agent's
/// multi-thread runtime, which drives the stream.
pub fn start(setup: Setup, rt: tokio::runtime::Handle) -> anyhow::Result<KernelWatch> {
    use anyhow::Context;
    let dir = std::fs::canonicalize(&setup.dir).with_context(|| format!("{}", setup.dir.display()))?;
    let root = rustix::fs::open(&dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("opening {}", dir.display()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let etx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = etx.send(Input::Event(ev));
    })
    .context("starting inotify")?;
    watcher.watch(&dir, RecursiveMode::Recursive).with_context(|| format!("watching {} (inotify)", dir.display()))?;
    let shared = Arc::new(Shared {
        area: setup.area.clone(),
        oldest: Mutex::new(None),
        bytes: AtomicU64::new(0),
        in_sync_at: Mutex::new(None),
        connected: AtomicBool::new(false),
        torn: AtomicU64::new(0),
        overflows: AtomicU64::new(0),
        lost_streams: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        hooks: Hooks::default(),
    });
    let mut w = Worker {
        shared: shared.clone(),
        dir,
        root,
        exports_file: setup.exports_file,
        dialect: setup.dialect,
        exports_seen: None,
        served: BTreeSet::new(),
        peer: setup.peer,
        rt,
        rep: None,
        next_dial: Instant::now(),
        backoff: Duration::from_millis(200),
        debounce: setup.debounce,
        reconcile: setup.reconcile,
        sent: BTreeMap::new(),
        dirty: BTreeMap::new(),
        renames: Vec::new(),
        requeue: Vec::new(),
        unmarked: true,
        last_mark: None,
        last_reconcile: Instant::now(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("kwatch {}", setup.area))
        .spawn(move || {
            // The stream's timers need the runtime's context (as on its blocking threads).
            let rt = w.rt.clone();
            let _ctx = rt.enter();
            w.run(rx)
        })
        .context("starting the watcher thread")?;
    Ok(KernelWatch { shared, tx, thread: Some(thread), _watcher: watcher })
}

/// What the backup holds of one path, as far as the stream told it.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    File {
        ino: (u64, u64),
        size: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
        mode: u32,
        uid: u32,
        gid: u32,
        blocks: Vec<[u8; 32]>,
    },
    Symlink {
        target: Vec<u8>,
    },
}

struct Dirty {
    first: Instant,
    last: Instant,
    bytes: u64,
}

/// The stream broke: what was being sent goes again after a reconnect.
struct Broken;

struct Worker {
    shared: Arc<Shared>,
    dir: PathBuf,
    root: OwnedFd,
    exports_file: PathBuf,
    dialect: model::Dialect,
    exports_seen: Option<(SystemTime, u64)>,
    /// Node directory names this SN serves.
    served: BTreeSet<Vec<u8>>,
    peer: nfs3::replica::Peer,
    rt: tokio::runtime::Handle,
    rep: Option<Arc<nfs3::replica::Replicator>>,
    next_dial: Instant,
    backoff: Duration,
    debounce: Duration,
    reconcile: Duration,
    sent: BTreeMap<Vec<u8>, Sent>,
    dirty: BTreeMap<Vec<u8>, Dirty>,
    renames: Vec<(Vec<u8>, Vec<u8>)>,
    /// Paths to send again once the current one is done (a torn read).
    requeue: Vec<Vec<u8>>,
    /// Something was sent since the last in-sync mark.
    unmarked: bool,
    last_mark: Option<Instant>,
    last_reconcile: Instant,
}

fn stat_times(st: &rustix::fs::Stat) -> ((i64, i64), (i64, i64)) {
    #[allow(clippy::unnecessary_cast)]
    let t = |s, n| (s as i64, n as i64);
    (t(st.st_mtime, st.st_mtime_nsec), t(st.st_ctime, st.st_ctime_nsec))
}

fn parent_name(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

fn node_of(rel: &[u8]) -> &[u8] {
    rel.split(|&b| b == b'/').next().unwrap_or(rel)
}

fn within(rel: &[u8], dir: &[u8]) -> bool {
    rel.len() > dir.len() && rel.starts_with(dir) && rel[dir.len()] == b'/'
}

impl Worker {
    fn run(&mut self, rx: Receiver<Input>) {
        tracing::info!(area = %self.shared.area, dir = %self.dir.display(), peer = %self.peer.addr, "statelite kernel area: copied continuously to its backup");
        self.refresh_served();
        self.full_compare();
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let wait = self.next_wait();
            match rx.recv_timeout(wait) {
                Ok(i) => {
                    self.input(i);
                    while let Ok(i) = rx.try_recv() {
                        self.input(i);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                return;
            }
            if self.refresh_served() {
                self.full_compare();
            }
            if self.last_reconcile.elapsed() >= self.reconcile {
                self.full_compare();
            }
            self.step();
            self.publish();
        }
    }

    fn next_wait(&self) -> Duration {
        // Until the first path is due (quiet for the debounce, or waiting 4 × it), or a tick.
        let now = Instant::now();
        if self.rep.is_none() {
            return self
                .next_dial
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(10), Duration::from_millis(250));
        }
        let due = self.dirty.values().map(|d| (d.last + self.debounce).min(d.first + self.debounce * 4)).min();
        let mut w = Duration::from_millis(250);
        if let Some(d) = due {
            w = w.min(d.saturating_duration_since(now).max(Duration::from_millis(1)));
        }
        w
    }

    fn input(&mut self, i: Input) {
        let ev = match i {
            Input::Overflow => {
                self.overflow("requested");
                return;
            }
            Input::Event(Ok(ev)) => ev,
            Input::Event(Err(e)) => {
                self.overflow(&format!("watch error: {e}"));
                return;
            }
        };
        if ev.need_rescan() {
            self.overflow("inotify queue overflow");
            return;
        }
        if matches!(ev.kind, EventKind::Access(_)) || self.shared.hooks.drop_events.load(Ordering::SeqCst) {
            return;
        }
        let rels: Vec<Vec<u8>> = ev.paths.iter().filter_map(|p| self.rel(p)).collect();
        if let (EventKind::Modify(notify::event::ModifyKind::Name(notify::event::RenameMode::Both)), [from, to]) =
            (ev.kind, rels.as_slice())
        {
            self.renames.push((from.clone(), to.clone()));
        }
        for r in rels {
            self.mark(r);
        }
    }

    fn overflow(&mut self, why: &str) {
        tracing::warn!(area = %self.shared.area, "statelite kernel area: {why}; comparing the whole area with the backup");
        self.shared.overflows.fetch_add(1, Ordering::SeqCst);
        self.full_compare();
    }

    fn rel(&self, p: &Path) -> Option<Vec<u8>> {
        let r = p.strip_prefix(&self.dir).ok()?.as_os_str().as_bytes().to_vec();
        if r.is_empty() || !self.served.contains(node_of(&r)) {
            return None;
        }
        Some(r)
    }

    fn mark(&mut self, rel: Vec<u8>) {
        let now = Instant::now();
        match self.dirty.get_mut(&rel) {
            Some(d) => d.last = now,
            None => {
                let bytes = self
                    .lstat(&rel)
                    .ok()
                    .filter(|s| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile)
                    .map_or(0, |s| s.st_size as u64);
                self.dirty.insert(rel, Dirty { first: now, last: now, bytes });
            }
        }
    }

    /// Re-reads the exports file when it changed; true when the served node set changed.
    fn refresh_served(&mut self) -> bool {
        let meta = std::fs::metadata(&self.exports_file).ok();
        let seen = meta.as_ref().and_then(|m| Some((m.modified().ok()?, m.len())));
        if seen.is_some() && seen == self.exports_seen {
            return false;
        }
        self.exports_seen = seen;
        let text = std::fs::read_to_string(&self.exports_file).unwrap_or_default();
        let served = match exports::parse(self.dialect, &text) {
            Ok(ex) => served_nodes(&ex, &self.shared.area),
            Err(e) => {
                tracing::warn!(area = %self.shared.area, file = %self.exports_file.display(), "statelite kernel area: exports unreadable ({e}); keeping the nodes served so far");
                return false;
            }
        };
        if served == self.served {
            return false;
        }
        tracing::info!(area = %self.shared.area, nodes = served.len(), "statelite kernel area: served nodes changed");
        // A node no longer served here is no longer sent; its copy on the backup stays as it is.
        self.sent.retain(|k, _| served.contains(node_of(k)));
        self.dirty.retain(|k, _| served.contains(node_of(k)));
        self.served = served;
        true
    }

    /// Marks every difference between the served node directories and what was sent (metadata
    /// only: a file whose size, times, inode, mode and owner are as sent is not read).
    fn full_compare(&mut self) {
        self.last_reconcile = Instant::now();
        let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut stack: Vec<Vec<u8>> = self.served.iter().cloned().collect();
        let mut changed = Vec::new();
        while let Some(rel) = stack.pop() {
            let Ok(st) = self.lstat(&rel) else {
                continue;
            };
            seen.insert(rel.clone());
            let ft = FileType::from_raw_mode(st.st_mode);
            let (mtime, ctime) = stat_times(&st);
            let same = match (self.sent.get(&rel), ft) {
                (Some(Sent::Dir { mode, uid, gid }), FileType::Directory) => {
                    (*mode, *uid, *gid) == (st.st_mode & 0o7777, st.st_uid, st.st_gid)
                }
                (Some(Sent::File { ino, size, mtime: m, ctime: c, mode, uid, gid, .. }), FileType::RegularFile) => {
                    (*ino, *size, *m, *c, *mode, *uid, *gid)
                        == (
                            (st.st_dev, st.st_ino),
                            st.st_size as u64,
                            mtime,
                            ctime,
                            st.st_mode & 0o7777,
                            st.st_uid,
                            st.st_gid,
                        )
                }
                (Some(Sent::Symlink { target }), FileType::Symlink) => self.readlink(&rel).as_ref() == Some(target),
                _ => false,
            };
            if !same {
                changed.push(rel.clone());
            }
            if ft == FileType::Directory {
                if let Ok(names) = self.names(&rel) {
                    for n in names {
                        let mut c = rel.clone();
                        c.push(b'/');
                        c.extend_from_slice(&n);
                        stack.push(c);
                    }
                }
            }
        }
        let gone: Vec<Vec<u8>> = self.sent.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for r in changed.into_iter().chain(gone) {
            self.mark(r);
        }
    }

    fn names(&self, rel: &[u8]) -> std::io::Result<Vec<Vec<u8>>> {
        let fd = self.open(rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut out = Vec::new();
        let mut dir = rustix::fs::Dir::read_from(&fd)?;
        while let Some(e) = dir.read() {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                out.push(n.to_vec());
            }
        }
        Ok(out)
    }

    /// Opens `rel` beneath the area, no symlink followed (a node is root on its own data).
    fn open(&self, rel: &[u8], flags: OFlags) -> std::io::Result<OwnedFd> {
        // openat2 refuses O_PATH with any flag O_PATH ignores (O_NOCTTY among them).
        let extra = if flags.contains(OFlags::PATH) { OFlags::empty() } else { OFlags::NOCTTY };
        rustix::fs::openat2(
            &self.root,
            OsStr::from_bytes(rel),
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW | extra,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .map_err(std::io::Error::from)
    }

    /// `lstat` of `rel`, its directories opened beneath the area without following symlinks.
    fn lstat(&self, rel: &[u8]) -> Result<rustix::fs::Stat, rustix::io::Errno> {
        let (p, n) = parent_name(rel);
        if p.is_empty() {
            return rustix::fs::statat(&self.root, OsStr::from_bytes(n), AtFlags::SYMLINK_NOFOLLOW);
        }
        let dfd = rustix::fs::openat2(
            &self.root,
            OsStr::from_bytes(p),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )?;
        rustix::fs::statat(&dfd, OsStr::from_bytes(n), AtFlags::SYMLINK_NOFOLLOW)
    }

    fn readlink(&self, rel: &[u8]) -> Option<Vec<u8>> {
        let (p, n) = parent_name(rel);
        let dfd = if p.is_empty() { None } else { Some(self.open(p, OFlags::PATH | OFlags::DIRECTORY).ok()?) };
        let d = dfd.as_ref().unwrap_or(&self.root);
        rustix::fs::readlinkat(d, OsStr::from_bytes(n), Vec::new()).ok().map(|t| t.into_bytes())
    }

    fn publish(&self) {
        let oldest = self.dirty.values().map(|d| d.first).min();
        if let Ok(mut o) = self.shared.oldest.lock() {
            *o = oldest;
        }
        self.shared.bytes.store(self.dirty.values().map(|d| d.bytes).sum(), Ordering::SeqCst);
        self.shared.connected.store(self.rep.is_some(), Ordering::SeqCst);
    }

    /// Sends what is due: renames, then every path quiet for the debounce (or waiting 4 × it),
    /// then an in-sync mark when nothing waits.
    fn step(&mut self) {
        if self.rep.is_none() {
            if Instant::now() < self.next_dial {
                return;
            }
            let rep = nfs3::replica::Replicator::new(self.peer.clone(), self.rt.clone());
            if let Err(why) = rep.connect_unreconciled() {
                tracing::debug!(area = %self.shared.area, "statelite kernel area: {why}; dialling again in {} ms", self.backoff.as_millis());
                self.next_dial = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                return;
            }
            self.rep = Some(rep);
            self.publish();
        }
        let now = Instant::now();
        let ready: Vec<Vec<u8>> = self
            .dirty
            .iter()
            .filter(|(_, d)| now - d.last >= self.debounce || now - d.first >= self.debounce * 4)
            .map(|(k, _)| k.clone())
            .collect();
        if ready.is_empty() && self.renames.is_empty() {
            let due = self.last_mark.is_none_or(|t| t.elapsed() >= MARK_EVERY);
            if self.dirty.is_empty() && (self.unmarked || due) && self.send(&nfs3::replica::in_sync_mark()).is_ok() {
                self.unmarked = false;
                self.last_mark = Some(Instant::now());
                self.backoff = Duration::from_millis(200);
                if let Ok(mut m) = self.shared.in_sync_at.lock() {
                    *m = Some(SystemTime::now());
                }
            }
            return;
        }
        let renames = std::mem::take(&mut self.renames);
        for (from, to) in renames {
            if self.rename(&from, &to).is_err() {
                return;
            }
        }
        for (i, rel) in ready.into_iter().enumerate() {
            // Taken off only once sent: the lag counts from the change until the backup has it.
            if !self.dirty.contains_key(&rel) {
                continue;
            }
            if self.sync_path(&rel).is_err() {
                return;
            }
            self.dirty.remove(&rel);
            for r in std::mem::take(&mut self.requeue) {
                self.mark(r);
            }
            if i % 32 == 31 {
                self.publish();
            }
        }
    }

    fn send(&mut self, op: &Op) -> Result<(), Broken> {
        let Some(rep) = &self.rep else { return Err(Broken) };
        let _ = rep.replicate(op);
        if rep.unprotected() {
            let why = rep.unprotected_since().map(|(_, r)| r).unwrap_or_default();
            tracing::warn!(area = %self.shared.area, peer = %self.peer.addr, "statelite kernel area: stream to the backup lost ({why}); dialling again in {} ms, then sending everything", self.backoff.as_millis());
            self.rep = None;
            self.shared.lost_streams.fetch_add(1, Ordering::SeqCst);
            self.next_dial = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            // The backup's state is unknown now: everything is compared and sent again.
            self.sent.clear();
            self.renames.clear();
            self.full_compare();
            self.publish();
            return Err(Broken);
        }
        self.unmarked = true;
        Ok(())
    }

    /// A paired rename: one RENAME when the inode that was sent as `from` is now at `to`.
    fn rename(&mut self, from: &[u8], to: &[u8]) -> Result<(), Broken> {
        let Some(old) = self.sent.get(from) else { return Ok(()) };
        let Ok(st) = self.lstat(to) else {
            return Ok(());
        };
        let ft = FileType::from_raw_mode(st.st_mode);
        let same = match old {
            Sent::File { ino, .. } => ft == FileType::RegularFile && *ino == (st.st_dev, st.st_ino),
            Sent::Dir { .. } => ft == FileType::Directory,
            Sent::Symlink { .. } => ft == FileType::Symlink,
        };
        let (tp, tn) = parent_name(to);
        if !same || within(to, from) || (!tp.is_empty() && !matches!(self.sent.get(tp), Some(Sent::Dir { .. }))) {
            return Ok(());
        }
        if let Some(Sent::Dir { .. }) = self.sent.get(to) {
            // Replacing a directory: the backup's must be empty, as the primary's was.
            self.remove_subtree(to)?;
        }
        let (fp, fname) = parent_name(from);
        self.send(&Op::Rename { from_dir: id_of(fp), from: fname.to_vec(), to_dir: id_of(tp), to: tn.to_vec() })?;
        // Move the record of `from` and everything beneath it to `to`.
        self.sent.remove(to);
        let moved: Vec<Vec<u8>> =
            self.sent.range(from.to_vec()..).take_while(|(k, _)| k.starts_with(from)).map(|(k, _)| k.clone()).collect();
        for k in moved {
            if k == from || within(&k, from) {
                if let Some(v) = self.sent.remove(&k) {
                    let mut nk = to.to_vec();
                    nk.extend_from_slice(&k[from.len()..]);
                    self.sent.insert(nk, v);
                }
            }
        }
        Ok(())
    }

    fn remove_subtree(&mut self, rel: &[u8]) -> Result<(), Broken> {
        let mut keys: Vec<Vec<u8>> = self
            .sent
            .range(rel.to_vec()..)
            .take_while(|(k, _)| k.starts_with(rel))
            .filter(|(k, _)| k.as_slice() == rel || within(k, rel))
            .map(|(k, _)| k.clone())
            .collect();
        // Deepest first: a directory is empty on the backup when its turn comes.
        keys.reverse();
        for k in keys {
            let (p, n) = parent_name(&k);
            self.send(&Op::Remove { dir: id_of(p), name: n.to_vec() })?;
            self.sent.remove(&k);
        }
        Ok(())
    }

    /// Brings the backup's `rel` to what the primary has now.
    fn sync_path(&mut self, rel: &[u8]) -> Result<(), Broken> {
        let (parent, name) = parent_name(rel);
        if !parent.is_empty() && !matches!(self.sent.get(parent), Some(Sent::Dir { .. })) {
            // The parent first (its event may have been lost or not be due yet).
            self.sync_path(parent)?;
            if !matches!(self.sent.get(parent), Some(Sent::Dir { .. })) {
                // Gone on the primary too: nothing to do beneath it.
                return Ok(());
            }
        }
        let st = match self.lstat(rel) {
            Ok(st) => Some(st),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => None,
            Err(e) => {
                tracing::warn!(area = %self.shared.area, path = %String::from_utf8_lossy(rel), "statelite kernel area: {e}; left for the next comparison");
                return Ok(());
            }
        };
        let Some(st) = st else {
            return self.remove_subtree(rel);
        };
        let ft = FileType::from_raw_mode(st.st_mode);
        let kind_ok = match self.sent.get(rel) {
            None => true,
            Some(Sent::Dir { .. }) => ft == FileType::Directory,
            Some(Sent::File { .. }) => ft == FileType::RegularFile,
            Some(Sent::Symlink { .. }) => ft == FileType::Symlink,
        };
        if !kind_ok {
            self.remove_subtree(rel)?;
        }
        let (dir, id) = (id_of(parent), id_of(rel));
        let (mode, uid, gid) = (st.st_mode & 0o7777, st.st_uid, st.st_gid);
        match ft {
            FileType::Directory => {
                let new = !self.sent.contains_key(rel);
                if new {
                    self.send(&Op::Mkdir { dir, name: name.to_vec(), id, mode })?;
                }
                if new || self.sent.get(rel) != Some(&Sent::Dir { mode, uid, gid }) {
                    let attrs = Attrs { mode: Some(mode), uid: Some(uid), gid: Some(gid), ..Attrs::default() };
                    self.send(&Op::SetAttr { id, attrs })?;
                }
                self.sent.insert(rel.to_vec(), Sent::Dir { mode, uid, gid });
                if new {
                    // Made before its watch existed, maybe with content already: all of it.
                    if let Ok(names) = self.names(rel) {
                        for n in names {
                            let mut c = rel.to_vec();
                            c.push(b'/');
                            c.extend_from_slice(&n);
                            self.mark(c);
                        }
                    }
                }
                Ok(())
            }
            FileType::Symlink => {
                let Some(target) = self.readlink(rel) else { return Ok(()) };
                if self.sent.get(rel) != Some(&Sent::Symlink { target: target.clone() }) {
                    self.send(&Op::Symlink { dir, name: name.to_vec(), target: target.clone() })?;
                    self.sent.insert(rel.to_vec(), Sent::Symlink { target });
                }
                Ok(())
            }
            FileType::RegularFile => self.sync_file(rel, dir, id),
            // FIFOs, sockets, devices: no business in a node's persistent data.
            _ => Ok(()),
        }
    }

    fn sync_file(&mut self, rel: &[u8], dir: Fh, id: Fh) -> Result<(), Broken> {
        let f = match self.open(rel, OFlags::RDONLY) {
            Ok(f) => f,
            // Gone or replaced meanwhile: its own event (or the next comparison) follows.
            Err(_) => return Ok(()),
        };
        let Ok(st0) = rustix::fs::fstat(&f) else { return Ok(()) };
        if FileType::from_raw_mode(st0.st_mode) != FileType::RegularFile {
            return Ok(());
        }
        let (mode, uid, gid) = (st0.st_mode & 0o7777, st0.st_uid, st0.st_gid);
        let (old_blocks, old) = match self.sent.get(rel) {
            Some(Sent::File { blocks, mode, uid, gid, size, .. }) => (blocks.clone(), Some((*mode, *uid, *gid, *size))),
            _ => (Vec::new(), None),
        };
        if old.is_none() {
            let (_, name) = parent_name(rel);
            self.send(&Op::Create { dir, name: name.to_vec(), id, mode, verf: None })?;
        }
        let mut blocks = Vec::new();
        let mut buf = vec![0u8; BLOCK];
        let mut off = 0u64;
        loop {
            let n = match read_full(&f, &mut buf, off) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(area = %self.shared.area, path = %String::from_utf8_lossy(rel), "statelite kernel area: reading: {e}; sent again later");
                    break;
                }
            };
            if n == 0 {
                break;
            }
            let h = *blake3::hash(&buf[..n]).as_bytes();
            let i = blocks.len();
            if old_blocks.get(i) != Some(&h) {
                self.send(&Op::Write { id, offset: off, data: buf[..n].to_vec(), sync: false })?;
            }
            blocks.push(h);
            off += n as u64;
            if n < BLOCK {
                break;
            }
        }
        if let Ok(mut hook) = self.shared.hooks.after_read.lock() {
            if let Some(h) = hook.as_mut() {
                h(&self.dir.join(OsStr::from_bytes(rel)));
            }
        }
        let (mtime, ctime) = stat_times(&st0);
        let attrs = Attrs {
            size: Some(off),
            mode: (old.map(|o| o.0) != Some(mode)).then_some(mode),
            uid: (old.map(|o| o.1) != Some(uid)).then_some(uid),
            gid: (old.map(|o| o.2) != Some(gid)).then_some(gid),
            atime: SetTime::Keep,
            mtime: SetTime::To { seconds: mtime.0, nanos: u32::try_from(mtime.1).unwrap_or(0) },
        };
        // Durable on the backup and acknowledged: the SETATTR is fsynced there.
        self.send(&Op::SetAttr { id, attrs })?;
        let recheck = !self.shared.hooks.no_recheck.load(Ordering::SeqCst);
        let torn = recheck
            && match rustix::fs::fstat(&f) {
                Ok(st1) => {
                    (st1.st_size, stat_times(&st1)) != (st0.st_size, (mtime, ctime)) || off != st0.st_size as u64
                }
                Err(_) => true,
            };
        self.sent.insert(
            rel.to_vec(),
            Sent::File { ino: (st0.st_dev, st0.st_ino), size: off, mtime, ctime, mode, uid, gid, blocks },
        );
        if torn {
            // Changed while read: what the backup has may mix two versions; read it again.
            self.shared.torn.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(area = %self.shared.area, path = %String::from_utf8_lossy(rel), "statelite kernel area: changed while read; sent again");
            if let Some(Sent::File { ctime, .. }) = self.sent.get_mut(rel) {
                // Never equal to a real ctime: the next comparison reads it too.
                *ctime = (i64::MIN, 0);
            }
            self.requeue.push(rel.to_vec());
        }
        Ok(())
    }
}

/// Reads up to `buf.len()` bytes at `off`, fewer only at the end of the file.
fn read_full(f: &OwnedFd, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(f, &mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// The node directory names of `area` an exports text serves here: `<area>/<node>` exported
/// without `refer=` (a moved node's directory is not its data any more).
pub(crate) fn served_nodes(ex: &exports::Exports, area: &str) -> BTreeSet<Vec<u8>> {
    let area = area.trim_end_matches('/');
    let refer: BTreeSet<&str> = ex.referrals().into_iter().collect();
    let mut out = BTreeSet::new();
    for p in ex.paths() {
        if refer.contains(p) {
            continue;
        }
        let Some(rest) = p.strip_prefix(area).and_then(|r| r.strip_prefix('/')) else { continue };
        let node = rest.trim_end_matches('/');
        if model::check_name(node).is_ok() {
            out.insert(node.as_bytes().to_vec());
        }
    }
    out
}

/// The backup's fence for `area`: the node directories its own exports file serves (re-read when
/// the file changes), which the primary's stream must not write (a returning old primary after a
/// failover still exports the nodes the backup now serves).
pub(crate) fn fence(exports_file: PathBuf, dialect: model::Dialect, area: &str) -> nfs3::rw::Fence {
    let area = area.to_string();
    type Cache = (Option<(SystemTime, u64)>, BTreeSet<Vec<u8>>, BTreeSet<Vec<u8>>);
    let cache: Mutex<Cache> = Mutex::new((None, BTreeSet::new(), BTreeSet::new()));
    Arc::new(move |top: &[u8]| {
        let Ok(mut c) = cache.lock() else { return true };
        let meta = std::fs::metadata(&exports_file).ok();
        let seen = meta.as_ref().and_then(|m| Some((m.modified().ok()?, m.len())));
        if seen != c.0 {
            let text = std::fs::read_to_string(&exports_file).unwrap_or_default();
            if let Ok(ex) = exports::parse(dialect, &text) {
                *c = (seen, served_nodes(&ex, &area), BTreeSet::new());
            }
        }
        let refused = c.1.contains(top);
        if refused && c.2.insert(top.to_vec()) {
            tracing::warn!(area = %area, node = %String::from_utf8_lossy(top), "statelite kernel area: the primary's stream would change a node directory this SN serves itself; its entries are skipped");
        }
        refused
    })
}

/// The `StateliteKernel` reply: each kernel-nfsd area's copy state, with the node directories
/// it holds (the lag is the area's, one stream for all of them).
pub(crate) fn status(agent: &crate::Agent) -> Vec<proto::reply::KernelArea> {
    let ms = |t: SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
    };
    agent
        .statelite_kernel
        .iter()
        .map(|(area, end)| {
            let mut nodes: Vec<String> = std::fs::read_dir(agent.area_dir(area))
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .filter_map(|e| e.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
            nodes.sort();
            match end {
                crate::KernelEnd::Primary(p) => {
                    let l = p.lag();
                    proto::reply::KernelArea {
                        area: area.clone(),
                        role: "primary".into(),
                        connected: l.connected,
                        lag_ms: (l.seconds * 1000.0) as u64,
                        lag_bytes: l.bytes,
                        in_sync_at_ms: l.in_sync_at.map(ms),
                        nodes,
                    }
                }
                crate::KernelEnd::Backup(m) => {
                    let at = m.at();
                    proto::reply::KernelArea {
                        area: area.clone(),
                        role: "backup".into(),
                        connected: at.is_some(),
                        lag_ms: 0,
                        lag_bytes: 0,
                        in_sync_at_ms: at.map(ms),
                        nodes,
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_backups_path_ids() {
        assert_eq!(id_of(b""), nfs3::rw::root_id());
        let a = nfs3::rw::symlink_id(&nfs3::rw::root_id(), b"cn001");
        assert_eq!(id_of(b"cn001"), a);
        assert_eq!(id_of(b"cn001/etc"), nfs3::rw::symlink_id(&a, b"etc"));
        assert_ne!(id_of(b"cn001/etc"), id_of(b"cn002/etc"));
    }

    #[test]
    fn only_nodes_exported_here_without_refer_are_served() {
        let text = "/nodedata *(rw,no_root_squash,sync,fsid=1)\n/nodedata/cn001 *(rw,no_root_squash,sync,fsid=2)\n/nodedata/cn002 *(rw,no_root_squash,sync,fsid=3,refer=/nodedata/cn002@10.0.0.2)\n/other/cn003 *(rw,fsid=4)\n/nodedata/x/y *(rw,fsid=5)\n";
        let ex = exports::parse(model::Dialect::Linux, text).unwrap();
        let s = served_nodes(&ex, "/nodedata");
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec![b"cn001".to_vec()]);
        assert!(within(b"a/b", b"a") && !within(b"ab", b"a") && !within(b"a", b"a"));
        assert_eq!(parent_name(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(parent_name(b"a"), (&b""[..], &b"a"[..]));
    }
}
