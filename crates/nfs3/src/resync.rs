//! Reconciliation of a read-write area's backup with its primary (issue 13, point 3): after the
//! backup missed changes (it was away, refused or too slow), the primary makes the backup's tree
//! equal to its own — names, kinds, content, modes, owners, mtimes, symlinks and the xattrs that
//! hold the file ids ([`crate::rw::ID_XATTR`]: equal ids are equal NFS handles) — then the
//! synchronous stream resumes on the same connection.
//!
//! One **pass**, over the replication stream ([`crate::replica::Msg`]): the primary asks for the
//! backup's manifest (the tree engine's scan, `tree::Scanner`, kept between passes so a rescan
//! of unchanged files costs `lstat`s), scans its own tree, and sends what differs, in path order
//! (parents first): `Put` of each entry whose kind, content or metadata differs, then `Delete` of
//! each topmost path the backup has and the primary has not. A file's content is kept (the
//! backup's same path has it), copied locally from another path of the backup that has it
//! (renames while it was away cost no bytes), sent as a librsync delta against the backup's
//! version (the backup sends its signature, `delta`), or sent whole. The backup stages every
//! file under `.hanfs/resync` beneath the area root (never visible to NFS clients), checks its
//! BLAKE3, sets its metadata and renames it into place; directory times are set at the end,
//! deepest first; then `syncfs`, a rescan, and the digest of its tree is the answer.
//!
//! [`crate::replica::Replicator::reconcile`] runs passes while clients keep writing (each pass
//! makes the next smaller; what changed during a pass is sent by the next one), then a final
//! pass with the area's change lock held, so no change is applied between the two scans and the
//! digests of both trees must be equal; synchronous replication resumes under that same lock.
//! The backup applies only what arrives on a stream it accepted (the certificate of its
//! configured primary, the same TLS check as the log's entries), every path checked
//! (`tree::manifest::check_path`: relative, no `..`, never under `.hanfs`) and every object
//! reached beneath the root without following symlinks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tree::{Entry, Kind, Manifest};

use crate::fs::{open_beneath, read_names};
use crate::replica::{invalid, recv, send, Msg};

/// Bytes of file data or manifest per `Data`/`ManifestPart` frame.
pub const PIECE: usize = 1 << 20;
/// Largest manifest a primary takes from its backup (as the controller's cap).
const MAX_MANIFEST: usize = 512 << 20;
/// Largest file sent as a delta (the delta is made from the whole file in memory); larger ones
/// are sent whole, streamed.
const MAX_DELTA_FILE: u64 = 256 << 20;
/// Smallest base worth a signature round trip.
const MIN_DELTA_BASE: u64 = 16 << 10;
/// Where the backup stages files, beneath the area root.
const STAGE: &[u8] = b".hanfs/resync";

/// How a `Put` of a regular file gets its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutContent {
    /// Not a regular file, or the backup's file at this path has the content already.
    Keep,
    /// The backup copies it from its own file at this path (same BLAKE3).
    Copy(Vec<u8>),
    /// The whole content follows (`Data` frames, then `PutEnd`).
    Literal,
    /// A librsync delta against the backup's file at this path follows.
    Delta,
}

/// What one reconciliation did (see [`crate::replica::Replicator::reconcile`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Passes run, the final one included.
    pub passes: u32,
    /// Entries put (created or changed, metadata-only ones included).
    pub entries: u64,
    /// Regular files whose bytes travelled (whole or as deltas).
    pub files_sent: u64,
    /// Of those, sent as deltas.
    pub deltas: u64,
    /// File bytes on the wire (literal content and deltas).
    pub bytes_sent: u64,
    /// Paths deleted on the backup (topmost of each removed subtree).
    pub deleted: u64,
    /// How long client changes were held (the final pass).
    pub held: Duration,
    /// The whole reconciliation.
    pub duration: Duration,
    /// Digest of both trees at the end.
    pub digest: String,
}

impl Report {
    /// One line for logs and `hanfs status`.
    pub fn summary(&self) -> String {
        format!(
            "{} pass(es), {} entries, {} file(s) sent ({} as deltas), {} bytes, {} deleted, clients held {} ms, {} ms in all",
            self.passes,
            self.entries,
            self.files_sent,
            self.deltas,
            self.bytes_sent,
            self.deleted,
            self.held.as_millis(),
            self.duration.as_millis()
        )
    }
}

/// One pass's counts, from the primary's side.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pass {
    pub entries: u64,
    pub files_sent: u64,
    pub deltas: u64,
    pub bytes_sent: u64,
    pub deleted: u64,
    /// The two trees had the same digest at the end.
    pub equal: bool,
    pub digest: String,
    /// The backup could not apply something (the first reason).
    pub failed: Option<String>,
}

/// A step of a pass, computed from the two manifests (no I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Put { path: Vec<u8>, entry: Entry, content: PutContent },
    Delete { path: Vec<u8> },
}

fn parent(p: &[u8]) -> Option<&[u8]> {
    tree::manifest::split(p).map(|(d, _)| d)
}

/// What the primary sends to turn `backup` into `primary`: puts in path order (parents
/// first), then deletions of topmost removed paths; directories whose children change are put
/// too (their times are set after the children).
pub(crate) fn plan(backup: &Manifest, primary: &Manifest) -> Vec<Step> {
    let mut by_hash: HashMap<&[u8; 32], &[u8]> = HashMap::new();
    for (p, e) in &backup.entries {
        if let Kind::File { hash, .. } = &e.kind {
            by_hash.entry(hash).or_insert(p);
        }
    }
    let mut put: std::collections::BTreeSet<&[u8]> = Default::default();
    let mut deletes = Vec::new();
    for (p, e) in &primary.entries {
        if backup.entries.get(p) != Some(e) {
            put.insert(p);
        }
    }
    for p in backup.entries.keys() {
        if primary.entries.contains_key(p) {
            continue;
        }
        // Topmost only: removing a directory removes what it holds.
        let par = parent(p).unwrap_or_default();
        if primary.entries.get(par).is_some_and(|e| e.kind == Kind::Dir) {
            deletes.push(p.clone());
        }
    }
    let changed: Vec<&[u8]> = put.iter().copied().chain(deletes.iter().map(Vec::as_slice)).collect();
    for p in changed {
        if let Some(d) = parent(p) {
            if primary.entries.get(d).is_some_and(|e| e.kind == Kind::Dir) {
                put.insert(primary.entries.get_key_value(d).map(|(k, _)| k.as_slice()).unwrap_or(d));
            }
        }
    }
    let mut steps = Vec::new();
    for p in put {
        let Some(e) = primary.entries.get(p) else { continue };
        let content = match (&e.kind, backup.entries.get(p).map(|o| &o.kind)) {
            (Kind::File { hash, .. }, Some(Kind::File { hash: h, .. })) if h == hash => PutContent::Keep,
            (Kind::File { hash, .. }, old) => match by_hash.get(hash) {
                Some(from) => PutContent::Copy(from.to_vec()),
                None => match old {
                    Some(Kind::File { size, .. }) if *size >= MIN_DELTA_BASE => PutContent::Delta,
                    _ => PutContent::Literal,
                },
            },
            _ => PutContent::Keep,
        };
        steps.push(Step::Put { path: p.to_vec(), entry: e.clone(), content });
    }
    steps.extend(deletes.into_iter().map(|path| Step::Delete { path }));
    steps
}

fn proc_path(fd: &impl AsFd) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

/// A scanner of the tree beneath `root` (its own descriptor, so the path stays valid).
pub(crate) fn scanner(root: &OwnedFd) -> std::io::Result<(OwnedFd, tree::Scanner)> {
    let own = rustix::io::fcntl_dupfd_cloexec(root, 0)?;
    // `/.`: the scanner lstats its root, and the magic link itself is a symlink.
    let s = tree::Scanner::new(format!("{}/.", proc_path(&own)), &tree::ScanOptions::default())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok((own, s))
}

fn scan(s: &mut tree::Scanner) -> std::io::Result<Manifest> {
    s.scan().map_err(|e| std::io::Error::other(format!("scanning the area: {e}")))
}

fn errno(what: &str, path: &[u8], e: Errno) -> std::io::Error {
    std::io::Error::other(format!("{what} {}: {e}", String::from_utf8_lossy(path)))
}

/// The primary's side of one pass over `s` (the stream, past `Welcome`). Blocking file I/O:
/// run it on a blocking thread.
pub(crate) async fn primary_pass<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    root: &OwnedFd,
    scanner: &mut tree::Scanner,
) -> std::io::Result<Pass> {
    send(s, &Msg::Scan).await?;
    let mut bytes = Vec::new();
    loop {
        match recv(s).await? {
            Msg::ManifestPart { data, last } => {
                if bytes.len() + data.len() > MAX_MANIFEST {
                    return Err(invalid(format!("the backup's manifest is over {MAX_MANIFEST} bytes")));
                }
                bytes.extend_from_slice(&data);
                if last {
                    break;
                }
            }
            m => return Err(invalid(format!("expected the backup's manifest, got {}", kind(&m)))),
        }
    }
    let theirs = Manifest::from_bytes(&bytes).map_err(|e| invalid(format!("the backup's manifest: {e}")))?;
    drop(bytes);
    // While clients write, a file can go between the scan's listing and its read: scan again.
    let mut tries = 0;
    let mine = loop {
        match scan(scanner) {
            Ok(m) => break m,
            Err(e) if tries < 5 => {
                tries += 1;
                tracing::debug!("statelite rw resync: scanning again: {e}");
            }
            Err(e) => return Err(e),
        }
    };
    let mut pass = Pass::default();
    for step in plan(&theirs, &mine) {
        match step {
            Step::Delete { path } => {
                send(s, &Msg::Delete { path }).await?;
                pass.deleted += 1;
            }
            Step::Put { path, entry, content } => {
                pass.entries += 1;
                put(s, root, path, entry, content, &mut pass).await?;
            }
        }
    }
    send(s, &Msg::PassEnd).await?;
    match recv(s).await? {
        Msg::PassDone { digest, failed } => {
            pass.equal = failed.is_none() && digest == mine.digest();
            pass.digest = digest;
            pass.failed = failed;
            Ok(pass)
        }
        m => Err(invalid(format!("expected PassDone, got {}", kind(&m)))),
    }
}

async fn put<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    root: &OwnedFd,
    path: Vec<u8>,
    entry: Entry,
    content: PutContent,
    pass: &mut Pass,
) -> std::io::Result<()> {
    let open =
        |path: &[u8]| open_beneath(root, path, OFlags::RDONLY | OFlags::NOCTTY).map_err(|e| errno("reading", path, e));
    match content {
        PutContent::Delta => {
            let Kind::File { size, .. } = entry.kind else {
                return Err(invalid("a delta of something that is not a file"));
            };
            if size <= MAX_DELTA_FILE {
                send(s, &Msg::SigRequest { path: path.clone() }).await?;
                let mut sig = Vec::new();
                loop {
                    match recv(s).await? {
                        Msg::SigPart { data, last } => {
                            if sig.len() + data.len() > MAX_MANIFEST {
                                return Err(invalid("an oversized signature"));
                            }
                            sig.extend_from_slice(&data);
                            if last {
                                break;
                            }
                        }
                        m => return Err(invalid(format!("expected a signature, got {}", kind(&m)))),
                    }
                }
                let new = read_all(open(&path)?, size)?;
                let enc = match delta::Signature::parse(&sig) {
                    Ok(sig) if sig.blocks() > 0 => {
                        delta::encode(Some(&sig), &new).map_err(|e| std::io::Error::other(e.to_string()))?
                    }
                    _ => delta::Encoded::Literal,
                };
                let hash = *blake3::hash(&new).as_bytes();
                pass.files_sent += 1;
                let (content, body) = match enc {
                    delta::Encoded::Delta(d) => {
                        pass.deltas += 1;
                        (PutContent::Delta, d)
                    }
                    delta::Encoded::Literal => (PutContent::Literal, new),
                };
                send(s, &Msg::Put { path, entry, content }).await?;
                for piece in body.chunks(PIECE) {
                    send(s, &Msg::Data { data: piece.to_vec() }).await?;
                    pass.bytes_sent += piece.len() as u64;
                }
                return send(s, &Msg::PutEnd { hash }).await;
            }
            stream_whole(s, open(&path)?, path, entry, pass).await
        }
        PutContent::Literal => {
            let f = open(&path)?;
            stream_whole(s, f, path, entry, pass).await
        }
        c => send(s, &Msg::Put { path, entry, content: c }).await,
    }
}

fn read_all(fd: OwnedFd, hint: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::from(fd);
    let mut v = Vec::with_capacity(usize::try_from(hint.min(MAX_DELTA_FILE)).unwrap_or(0));
    std::io::Read::read_to_end(&mut f, &mut v)?;
    Ok(v)
}

async fn stream_whole<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    fd: OwnedFd,
    path: Vec<u8>,
    entry: Entry,
    pass: &mut Pass,
) -> std::io::Result<()> {
    send(s, &Msg::Put { path, entry, content: PutContent::Literal }).await?;
    let mut f = std::fs::File::from(fd);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        send(s, &Msg::Data { data: buf[..n].to_vec() }).await?;
        pass.bytes_sent += n as u64;
    }
    pass.files_sent += 1;
    send(s, &Msg::PutEnd { hash: *h.finalize().as_bytes() }).await
}

pub(crate) fn kind(m: &Msg) -> &'static str {
    match m {
        Msg::Hello { .. } => "Hello",
        Msg::Welcome => "Welcome",
        Msg::Refused { .. } => "Refused",
        Msg::Entry { .. } => "Entry",
        Msg::Ack { .. } => "Ack",
        Msg::Failed { .. } => "Failed",
        Msg::Scan => "Scan",
        Msg::ManifestPart { .. } => "ManifestPart",
        Msg::SigRequest { .. } => "SigRequest",
        Msg::SigPart { .. } => "SigPart",
        Msg::Put { .. } => "Put",
        Msg::Data { .. } => "Data",
        Msg::PutEnd { .. } => "PutEnd",
        Msg::Delete { .. } => "Delete",
        Msg::PassEnd => "PassEnd",
        Msg::PassDone { .. } => "PassDone",
    }
}

/// A file being received.
enum Incoming {
    Literal {
        tmp: Vec<u8>,
        fd: OwnedFd,
        hasher: Box<blake3::Hasher>,
        path: Vec<u8>,
        entry: Entry,
    },
    Delta {
        buf: Vec<u8>,
        path: Vec<u8>,
        entry: Entry,
    },
    /// The bytes of a file whose put failed: read and dropped.
    Discard,
}

/// The backup's side of a pass: its area root, and what the pass left to do at its end.
pub(crate) struct Applier<'a> {
    root: &'a OwnedFd,
    stage: Option<OwnedFd>,
    n: u64,
    dirs: Vec<(Vec<u8>, i64, u32)>,
    failed: Option<String>,
}

/// The backup's side of one pass, from `Scan` (already read) to `PassDone` (sent). Blocking
/// file I/O: run it on a blocking thread. An entry it cannot apply is recorded (the first
/// reason goes back in `PassDone`) and the pass goes on; a protocol violation ends the stream.
pub(crate) async fn backup_pass<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    root: &OwnedFd,
    scanner: &mut tree::Scanner,
) -> std::io::Result<Result<String, String>> {
    let m = scan(scanner)?.to_bytes().map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut pieces = m.chunks(PIECE).peekable();
    if pieces.peek().is_none() {
        send(s, &Msg::ManifestPart { data: Vec::new(), last: true }).await?;
    }
    while let Some(p) = pieces.next() {
        send(s, &Msg::ManifestPart { data: p.to_vec(), last: pieces.peek().is_none() }).await?;
    }
    drop(m);
    let mut a = Applier { root, stage: None, n: 0, dirs: Vec::new(), failed: None };
    let mut incoming: Option<Incoming> = None;
    loop {
        let msg = recv(s).await?;
        match (msg, incoming.take()) {
            (Msg::Data { data }, Some(Incoming::Literal { tmp, fd, mut hasher, path, entry })) => {
                hasher.update(&data);
                if let Err(e) = write_all(&fd, &data) {
                    a.fail(errno("staging", &path, e));
                }
                incoming = Some(Incoming::Literal { tmp, fd, hasher, path, entry });
            }
            (Msg::Data { data }, Some(Incoming::Delta { mut buf, path, entry })) => {
                if buf.len() + data.len() > MAX_DELTA_FILE as usize * 2 {
                    return Err(invalid("an oversized delta"));
                }
                buf.extend_from_slice(&data);
                incoming = Some(Incoming::Delta { buf, path, entry });
            }
            (Msg::Data { .. }, Some(Incoming::Discard)) => incoming = Some(Incoming::Discard),
            (Msg::PutEnd { .. }, Some(Incoming::Discard)) => {}
            (Msg::PutEnd { hash }, Some(inc)) => {
                if let Err(e) = a.finish(inc, &hash) {
                    a.fail(e);
                }
            }
            (m @ (Msg::Data { .. } | Msg::PutEnd { .. }), None) => {
                return Err(invalid(format!("{} outside a file", kind(&m))));
            }
            (m, Some(_)) => return Err(invalid(format!("{} inside a file's content", kind(&m)))),
            (Msg::SigRequest { path }, None) => {
                let sig = a.signature(&path).unwrap_or_default();
                let mut pieces = sig.chunks(PIECE).peekable();
                if pieces.peek().is_none() {
                    send(s, &Msg::SigPart { data: Vec::new(), last: true }).await?;
                }
                while let Some(p) = pieces.next() {
                    send(s, &Msg::SigPart { data: p.to_vec(), last: pieces.peek().is_none() }).await?;
                }
            }
            (Msg::Put { path, entry, content }, None) => {
                tree::manifest::check_path(&path).map_err(|e| invalid(format!("put: {e}")))?;
                match a.put(&path, &entry, &content) {
                    Ok(inc) => incoming = inc,
                    Err(e) => {
                        a.fail(e);
                        // Its bytes still arrive: read them into nothing.
                        if matches!(content, PutContent::Literal | PutContent::Delta) {
                            incoming = Some(Incoming::Discard);
                        }
                    }
                }
            }
            (Msg::Delete { path }, None) => {
                tree::manifest::check_path(&path).map_err(|e| invalid(format!("delete: {e}")))?;
                if path.is_empty() {
                    return Err(invalid("delete of the area root"));
                }
                if let Err(e) = a.delete(&path) {
                    a.fail(e);
                }
            }
            (Msg::PassEnd, None) => break,
            (m, None) => return Err(invalid(format!("{} inside a resynchronisation pass", kind(&m)))),
        }
    }
    a.end();
    let digest = scan(scanner)?.digest();
    let failed = a.failed.take();
    send(s, &Msg::PassDone { digest: digest.clone(), failed: failed.clone() }).await?;
    Ok(match failed {
        None => Ok(digest),
        Some(f) => Err(f),
    })
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Applier<'_> {
    fn fail(&mut self, e: std::io::Error) {
        tracing::warn!("statelite rw resync: {e}");
        if self.failed.is_none() {
            self.failed = Some(e.to_string());
        }
    }

    fn stage(&mut self) -> std::io::Result<&OwnedFd> {
        if self.stage.is_none() {
            for dir in [&b".hanfs"[..], STAGE] {
                match open_beneath(self.root, dir, OFlags::PATH | OFlags::DIRECTORY) {
                    Ok(_) => {}
                    Err(Errno::NOENT) => {
                        let (d, n) = tree::manifest::split(dir).unwrap_or((b"", dir));
                        let dfd = open_beneath(self.root, d, OFlags::RDONLY | OFlags::DIRECTORY)
                            .map_err(|e| errno("opening", d, e))?;
                        // The control directory is no part of the tree: its parent keeps its time.
                        let before = rustix::fs::fstat(&dfd).map_err(|e| errno("opening", d, e))?;
                        match rustix::fs::mkdirat(&dfd, OsStr::from_bytes(n), Mode::from_raw_mode(0o700)) {
                            Ok(()) | Err(Errno::EXIST) => {}
                            Err(e) => return Err(errno("making", dir, e)),
                        }
                        let t = Timestamps {
                            last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
                            last_modification: Timespec {
                                tv_sec: before.st_mtime,
                                tv_nsec: i64::try_from(before.st_mtime_nsec).unwrap_or(0),
                            },
                        };
                        let _ = rustix::fs::futimens(&dfd, &t);
                    }
                    Err(e) => return Err(errno("opening", dir, e)),
                }
            }
            let fd = open_beneath(self.root, STAGE, OFlags::PATH | OFlags::DIRECTORY)
                .map_err(|e| errno("opening", STAGE, e))?;
            // Leftovers of an interrupted pass.
            if let Ok(rd) = open_beneath(self.root, STAGE, OFlags::RDONLY | OFlags::DIRECTORY) {
                for (n, _) in read_names(&rd).unwrap_or_default() {
                    let _ = remove_tree(&fd, &n);
                }
            }
            self.stage = Some(fd);
        }
        self.stage.as_ref().ok_or_else(|| std::io::Error::other("no stage"))
    }

    fn tmp_name(&mut self) -> Vec<u8> {
        self.n += 1;
        format!("t{}", self.n).into_bytes()
    }

    /// The parent directory of `path` and its last component.
    fn parent<'p>(&self, path: &'p [u8]) -> std::io::Result<(OwnedFd, &'p [u8])> {
        let (d, n) = tree::manifest::split(path).ok_or_else(|| invalid("the root has no parent"))?;
        let fd = open_beneath(self.root, d, OFlags::PATH | OFlags::DIRECTORY).map_err(|e| errno("opening", d, e))?;
        Ok((fd, n))
    }

    fn signature(&mut self, path: &[u8]) -> std::io::Result<Vec<u8>> {
        tree::manifest::check_path(path).map_err(|e| invalid(format!("signature: {e}")))?;
        let fd =
            open_beneath(self.root, path, OFlags::RDONLY | OFlags::NOCTTY).map_err(|e| errno("reading", path, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| errno("reading", path, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(Vec::new());
        }
        let base = read_all(fd, u64::try_from(st.st_size).unwrap_or(0))?;
        delta::signature(&base, None).map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn put(&mut self, path: &[u8], e: &Entry, content: &PutContent) -> std::io::Result<Option<Incoming>> {
        match (&e.kind, content) {
            (Kind::Dir, _) => self.put_dir(path, e).map(|()| None),
            (Kind::File { .. }, PutContent::Keep) => {
                let fd = open_beneath(self.root, path, OFlags::RDONLY | OFlags::NOCTTY)
                    .map_err(|er| errno("opening", path, er))?;
                let st = rustix::fs::fstat(&fd).map_err(|er| errno("opening", path, er))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_nlink > 1 {
                    return Err(errno("keeping", path, Errno::INVAL));
                }
                set_meta(&fd, e, true).map_err(|er| errno("setting the metadata of", path, er)).map(|()| None)
            }
            (Kind::File { .. }, PutContent::Copy(from)) => {
                tree::manifest::check_path(from).map_err(|er| invalid(format!("copy: {er}")))?;
                let src = open_beneath(self.root, from, OFlags::RDONLY | OFlags::NOCTTY)
                    .map_err(|er| errno("copying", from, er))?;
                let (tmp, fd) = self.create_tmp()?;
                let mut r = std::fs::File::from(src);
                let mut w = std::fs::File::from(rustix::io::fcntl_dupfd_cloexec(&fd, 0)?);
                let mut out = blake3_writer(&mut w);
                std::io::copy(&mut r, &mut out)?;
                // The source may have been replaced earlier in this pass: the next pass sends it.
                if let Kind::File { hash, .. } = &e.kind {
                    if out.hasher.finalize().as_bytes() != hash {
                        return Err(std::io::Error::other(format!(
                            "{}: its copy source {} no longer has its content",
                            String::from_utf8_lossy(path),
                            String::from_utf8_lossy(from)
                        )));
                    }
                }
                self.place(tmp, fd, path, e).map(|()| None)
            }
            (Kind::File { .. }, PutContent::Literal) => {
                let (tmp, fd) = self.create_tmp()?;
                Ok(Some(Incoming::Literal {
                    tmp,
                    fd,
                    hasher: Box::new(blake3::Hasher::new()),
                    path: path.to_vec(),
                    entry: e.clone(),
                }))
            }
            (Kind::File { .. }, PutContent::Delta) => {
                Ok(Some(Incoming::Delta { buf: Vec::new(), path: path.to_vec(), entry: e.clone() }))
            }
            (Kind::Symlink { target }, _) => {
                let tmp = self.tmp_name();
                let stage = self.stage()?;
                rustix::fs::symlinkat(OsStr::from_bytes(target), stage, OsStr::from_bytes(&tmp))
                    .map_err(|er| errno("staging", path, er))?;
                let owner = (Some(rustix::fs::Uid::from_raw(e.uid)), Some(rustix::fs::Gid::from_raw(e.gid)));
                let _ =
                    rustix::fs::chownat(stage, OsStr::from_bytes(&tmp), owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW);
                let times = mtime(e);
                rustix::fs::utimensat(stage, OsStr::from_bytes(&tmp), &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|er| errno("staging", path, er))?;
                self.rename_in(&tmp, path).map(|()| None)
            }
            (Kind::Fifo, _) => {
                let tmp = self.tmp_name();
                let stage = self.stage()?;
                rustix::fs::mknodat(stage, OsStr::from_bytes(&tmp), FileType::Fifo, Mode::from_raw_mode(e.mode), 0)
                    .map_err(|er| errno("staging", path, er))?;
                let fd = rustix::fs::openat(
                    stage,
                    OsStr::from_bytes(&tmp),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|er| errno("staging", path, er))?;
                set_meta(&fd, e, false).map_err(|er| errno("staging", path, er))?;
                self.rename_in(&tmp, path).map(|()| None)
            }
            (Kind::HardLink { leader }, _) => {
                tree::manifest::check_path(leader).map_err(|er| invalid(format!("link: {er}")))?;
                let (lfd, lname) = self.parent(leader)?;
                let tmp = self.tmp_name();
                let stage = self.stage()?;
                rustix::fs::linkat(&lfd, OsStr::from_bytes(lname), stage, OsStr::from_bytes(&tmp), AtFlags::empty())
                    .map_err(|er| errno("linking", path, er))?;
                self.rename_in(&tmp, path).map(|()| None)
            }
            (Kind::Char { .. } | Kind::Block { .. }, _) => Err(errno("making the device", path, Errno::PERM)),
        }
    }

    fn create_tmp(&mut self) -> std::io::Result<(Vec<u8>, OwnedFd)> {
        let tmp = self.tmp_name();
        let stage = self.stage()?;
        let fd = rustix::fs::openat(
            stage,
            OsStr::from_bytes(&tmp),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| errno("staging", &tmp, e))?;
        Ok((tmp, fd))
    }

    fn finish(&mut self, inc: Incoming, hash: &[u8; 32]) -> std::io::Result<()> {
        match inc {
            Incoming::Discard => Ok(()),
            Incoming::Literal { tmp, fd, hasher, path, entry } => {
                if hasher.finalize().as_bytes() != hash {
                    return Err(std::io::Error::other(format!(
                        "{}: the content received does not hash to what the primary sent",
                        String::from_utf8_lossy(&path)
                    )));
                }
                self.place(tmp, fd, &path, &entry)
            }
            Incoming::Delta { buf, path, entry } => {
                let Kind::File { size, .. } = entry.kind else {
                    return Err(invalid("a delta for something that is not a file"));
                };
                let base = open_beneath(self.root, &path, OFlags::RDONLY | OFlags::NOCTTY)
                    .map_err(|e| errno("reading the base of", &path, e))?;
                let base = read_all(base, size)?;
                let (tmp, fd) = self.create_tmp()?;
                let mut w = std::fs::File::from(rustix::io::fcntl_dupfd_cloexec(&fd, 0)?);
                let mut out = blake3_writer(&mut w);
                delta::patch(&base, &buf[..], &mut out, size.max(1) * 2 + (1 << 20))
                    .map_err(|e| std::io::Error::other(format!("{}: {e}", String::from_utf8_lossy(&path))))?;
                if out.hasher.finalize().as_bytes() != hash {
                    return Err(std::io::Error::other(format!(
                        "{}: the patched content does not hash to what the primary sent",
                        String::from_utf8_lossy(&path)
                    )));
                }
                self.place(tmp, fd, &path, &entry)
            }
        }
    }

    /// Metadata on the staged file, fsync, then renamed over `path`.
    fn place(&mut self, tmp: Vec<u8>, fd: OwnedFd, path: &[u8], e: &Entry) -> std::io::Result<()> {
        set_meta(&fd, e, true).map_err(|er| errno("setting the metadata of", path, er))?;
        rustix::fs::fsync(&fd).map_err(|er| errno("syncing", path, er))?;
        drop(fd);
        self.rename_in(&tmp, path)
    }

    fn rename_in(&mut self, tmp: &[u8], path: &[u8]) -> std::io::Result<()> {
        let (pfd, name) = self.parent(path)?;
        if let Ok(st) = rustix::fs::statat(&pfd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                remove_tree(&pfd, name).map_err(|er| errno("removing", path, er))?;
            }
        }
        let stage = self.stage()?;
        rustix::fs::renameat(stage, OsStr::from_bytes(tmp), &pfd, OsStr::from_bytes(name))
            .map_err(|er| errno("placing", path, er))
    }

    fn put_dir(&mut self, path: &[u8], e: &Entry) -> std::io::Result<()> {
        let fd = if path.is_empty() {
            open_beneath(self.root, b"", OFlags::RDONLY | OFlags::DIRECTORY).map_err(|er| errno("opening", path, er))?
        } else {
            let (pfd, name) = self.parent(path)?;
            let n = OsStr::from_bytes(name);
            match rustix::fs::statat(&pfd, n, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                Ok(_) => {
                    rustix::fs::unlinkat(&pfd, n, AtFlags::empty()).map_err(|er| errno("replacing", path, er))?;
                    rustix::fs::mkdirat(&pfd, n, Mode::from_raw_mode(0o700)).map_err(|er| errno("making", path, er))?;
                }
                Err(Errno::NOENT) => {
                    rustix::fs::mkdirat(&pfd, n, Mode::from_raw_mode(0o700)).map_err(|er| errno("making", path, er))?;
                }
                Err(er) => return Err(errno("opening", path, er)),
            }
            rustix::fs::openat(
                &pfd,
                n,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|er| errno("opening", path, er))?
        };
        set_meta(&fd, &Entry { mtime_sec: 0, mtime_nsec: u32::MAX, ..e.clone() }, true)
            .map_err(|er| errno("setting the metadata of", path, er))?;
        self.dirs.push((path.to_vec(), e.mtime_sec, e.mtime_nsec));
        Ok(())
    }

    fn delete(&mut self, path: &[u8]) -> std::io::Result<()> {
        let (pfd, name) = match self.parent(path) {
            Ok(x) => x,
            // Its parent went with an earlier step.
            Err(_) => return Ok(()),
        };
        match remove_tree(&pfd, name) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(er) => Err(errno("removing", path, er)),
        }
    }

    /// Directory times (deepest first: setting one changes no other), then everything durable.
    fn end(&mut self) {
        self.dirs.sort_by(|a, b| b.0.cmp(&a.0));
        let dirs = std::mem::take(&mut self.dirs);
        for (path, sec, nsec) in dirs {
            let r = open_beneath(self.root, &path, OFlags::RDONLY | OFlags::DIRECTORY).and_then(|fd| {
                let t = Timestamps {
                    last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
                    last_modification: Timespec { tv_sec: sec, tv_nsec: i64::from(nsec) },
                };
                rustix::fs::futimens(&fd, &t)
            });
            if let Err(e) = r {
                self.fail(errno("setting the time of", &path, e));
            }
        }
        // syncfs takes no `O_PATH` descriptor.
        let synced = open_beneath(self.root, b"", OFlags::RDONLY | OFlags::DIRECTORY).and_then(rustix::fs::syncfs);
        if let Err(e) = synced {
            self.fail(errno("syncing", b"", e));
        }
        if let Some(stage) = &self.stage {
            if let Ok(rd) = open_beneath(self.root, STAGE, OFlags::RDONLY | OFlags::DIRECTORY) {
                for (n, _) in read_names(&rd).unwrap_or_default() {
                    let _ = remove_tree(stage, &n);
                }
            }
        }
    }
}

struct HashWriter<'a, W> {
    w: &'a mut W,
    hasher: blake3::Hasher,
}

fn blake3_writer<W: std::io::Write>(w: &mut W) -> HashWriter<'_, W> {
    HashWriter { w, hasher: blake3::Hasher::new() }
}

impl<W: std::io::Write> std::io::Write for HashWriter<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(b)?;
        self.hasher.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

fn mtime(e: &Entry) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: e.mtime_sec, tv_nsec: i64::from(e.mtime_nsec) },
    }
}

/// Owner, mode, xattrs (those the tree engine replicates: what `e` lists, the others removed)
/// and, unless `e.mtime_nsec` is out of range (directories: set at the pass's end), mtime.
fn set_meta(fd: &OwnedFd, e: &Entry, xattrs: bool) -> Result<(), Errno> {
    let p = proc_path(fd);
    let st = rustix::fs::fstat(fd)?;
    if (st.st_uid, st.st_gid) != (e.uid, e.gid) {
        rustix::fs::chown(p.as_str(), Some(rustix::fs::Uid::from_raw(e.uid)), Some(rustix::fs::Gid::from_raw(e.gid)))?;
    }
    // After chown, which clears set-id bits.
    rustix::fs::chmod(p.as_str(), Mode::from_raw_mode(e.mode & 0o7777))?;
    if xattrs {
        let mut names = vec![0u8; 65536];
        let n = match rustix::fs::listxattr(p.as_str(), &mut names[..]) {
            Ok(n) => n,
            Err(Errno::NOTSUP) => 0,
            Err(er) => return Err(er),
        };
        for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
            if tree::scan::xattr_wanted(name) && !e.xattrs.iter().any(|(k, _)| k == name) {
                let _ = rustix::fs::removexattr(p.as_str(), OsStr::from_bytes(name));
            }
        }
        for (k, v) in &e.xattrs {
            match rustix::fs::setxattr(p.as_str(), OsStr::from_bytes(k), v, XattrFlags::empty()) {
                Ok(()) => {}
                // Labels the kernel or its security module sets itself.
                Err(_) if k.starts_with(b"security.") || k.starts_with(b"system.") => {}
                Err(er) => return Err(er),
            }
        }
    }
    if e.mtime_nsec < 1_000_000_000 {
        rustix::fs::utimensat(rustix::fs::CWD, p.as_str(), &mtime(e), AtFlags::empty())?;
    }
    Ok(())
}

/// Removes `name` in `dir` and, for a directory, everything in it (nothing followed).
fn remove_tree(dir: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    let n = OsStr::from_bytes(name);
    let st = rustix::fs::statat(dir, n, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let fd = rustix::fs::openat(
            dir,
            n,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for (c, _) in read_names(&fd)? {
            remove_tree(&fd, &c)?;
        }
        rustix::fs::unlinkat(dir, n, AtFlags::REMOVEDIR)
    } else {
        rustix::fs::unlinkat(dir, n, AtFlags::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(hash: u8, size: u64) -> Entry {
        Entry {
            kind: Kind::File { size, hash: [hash; 32], sparse: None },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: 1,
            mtime_nsec: 0,
            xattrs: vec![(b"user.hanfs.id".to_vec(), vec![hash; 16])],
        }
    }

    fn dir() -> Entry {
        Entry { kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, mtime_sec: 1, mtime_nsec: 0, xattrs: Vec::new() }
    }

    #[test]
    fn the_plan_keeps_copies_deltas_and_deletes_topmost() {
        let mut b = Manifest::default();
        b.entries.insert(b"".to_vec(), dir());
        b.entries.insert(b"same".to_vec(), file(1, 10));
        b.entries.insert(b"old".to_vec(), file(2, 10));
        b.entries.insert(b"big".to_vec(), file(3, 1 << 20));
        b.entries.insert(b"gone".to_vec(), dir());
        b.entries.insert(b"gone/x".to_vec(), file(4, 1));
        let mut p = Manifest::default();
        p.entries.insert(b"".to_vec(), dir());
        p.entries.insert(b"same".to_vec(), file(1, 10));
        p.entries.insert(b"moved".to_vec(), file(2, 10));
        p.entries.insert(b"big".to_vec(), file(5, 1 << 20));
        let steps = plan(&b, &p);
        let puts: Vec<(&[u8], &PutContent)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Put { path, content, .. } => Some((path.as_slice(), content)),
                _ => None,
            })
            .collect();
        assert_eq!(
            puts,
            vec![
                (&b""[..], &PutContent::Keep),
                (&b"big"[..], &PutContent::Delta),
                (&b"moved"[..], &PutContent::Copy(b"old".to_vec()))
            ]
        );
        let dels: Vec<&[u8]> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Delete { path } => Some(path.as_slice()),
                _ => None,
            })
            .collect();
        assert_eq!(dels, vec![&b"gone"[..], &b"old"[..]]);
        assert!(plan(&p, &p).is_empty());
    }
}
