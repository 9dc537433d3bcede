#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
//! hanfs tree engine: scan a tree to a [`Manifest`], digest it, [`diff`] two generations into a
//! [`Plan`], compute each changed file's librsync delta once from the last generation's
//! signatures ([`SigStore`]), and apply the plan to a replica atomically ([`Replica`]). No
//! network: the `agent` crate drives it.
//!
//! # Controller (MN) side
//! - [`Scanner::new`]`(root, &ScanOptions{excludes, state_dir})` then [`Scanner::scan`] -> [`Manifest`]
//!   (parallel BLAKE3; a rescan with nothing changed costs `lstat`s only, cache in `state_dir`).
//! - [`Manifest::digest`] -> hex BLAKE3 Merkle digest (definition at [`manifest::digest`]).
//! - [`diff`]`(&old, &new)` -> [`Plan`] (set `plan.generation`), [`Plan::to_bytes`] for postcard.
//! - [`SigStore::open`]`(dir)`; [`SigStore::payload`]`(source_root, content)` -> [`Payload`]
//!   (delta or whole file) for each [`Plan::to_send`] content, computed once for every replica;
//!   after a successful sync [`SigStore::update`]`(source_root, &new)`.
//!
//! # Replica (SN) side
//! - [`Replica::open`]`(root, state_dir, ReplicaOptions{allow_devices})`, then [`Replica::recover`].
//! - [`Replica::current`] -> (generation, digest); [`Replica::adopt`] takes an existing copy as a base;
//!   [`Replica::scan`] re-reads the tree; [`Replica::verify`] compares it with the current digest;
//!   [`Replica::manifest`] is what the controller diffs against.
//! - [`Replica::begin`]`(plan)` -> [`Staging`]: [`Staging::needed`], [`Staging::write_file`]`(path, reader)`,
//!   [`Staging::file_writer`]`(path)` (push frames, then `finish`), [`Staging::add_delta`]`(path, reader)`,
//!   [`Staging::commit`] -> (generation, digest), or [`Staging::abort`]; then [`Replica::cleanup`]
//!   (deletes the replaced inodes, kept out of the commit so the switch stays short).
//! - One `state_dir` per replica root (it holds `current`, `current.next` during a commit,
//!   `journal` and the hash cache `hashcache2`).
//! - [`Replica::begin`] fails with [`Error::Drift`] when the tree on disk is not what the
//!   replica recorded and the missing content is not on the replica (it re-records the tree:
//!   plan again from [`Replica::manifest`]); any step fails with [`Error::NoSpace`] on a full
//!   filesystem (from `commit`: before the commit point, the tree untouched).
//!
//! # rdiff-compatible files (`hanfs delta ...`)
//! [`rdiff::signature_file`], [`rdiff::delta_file`], [`rdiff::patch_file`].
//!
//! # Safety of apply
//! Every replica path is opened beneath the root with `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)`;
//! an inode whose type or link count differs from the manifest is replaced, never modified;
//! manifests with absolute paths, `..`, paths under `.hanfs`, parents that are not directories,
//! or (unless [`ReplicaOptions::allow_devices`]) device nodes are refused before anything is
//! written; deltas that copy out of bounds or grow past the manifest size are refused; every
//! staged file is checked against its BLAKE3 before the commit record is written.

pub mod fault;
pub mod fsops;
pub mod manifest;
pub mod plan;
pub mod rdiff;
pub mod replica;
pub mod scan;
pub mod sigstore;

/// Maps and sets of paths and hashes, which live only inside this process: foldhash (seeded per
/// process) rather than SipHash, which took a tenth of a one-file commit's CPU on a 24k-entry image.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub use manifest::{digest, Entry, EntryPath, Kind, Manifest};
pub use plan::{diff, diff_lean, Content, Plan, Source, Summary};
pub use replica::{FileWriter, Needed, Recovery, Replica, ReplicaOptions, Staging};
pub use scan::{scan, ScanOptions, Scanner};
pub use sigstore::{Payload, SigStore};

/// Errors of the tree engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path (relative to the root for replica paths).
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Input that would write outside the root or is otherwise unsafe; nothing was written.
    #[error("refused: {0}")]
    Hostile(String),
    /// A delta could not be applied or made.
    #[error("delta for {path}: {source}")]
    Delta {
        /// The file.
        path: String,
        /// Why.
        source: delta::Error,
    },
    /// Staged content did not hash to the manifest.
    #[error("{path}: content after {how} does not match its BLAKE3 in the manifest")]
    Mismatch {
        /// The file.
        path: String,
        /// The step.
        how: &'static str,
    },
    /// The replica is not at the plan's starting generation.
    #[error("replica is at digest {have}, but the plan starts from {want}")]
    WrongBase {
        /// Replica digest.
        have: String,
        /// Plan's from_digest.
        want: String,
    },
    /// The replica has no recorded generation yet.
    #[error("replica has no recorded generation: adopt() its current tree first")]
    NoBase,
    /// A commit was asked for before every file was sent, or a plan lacks a content record.
    #[error("incomplete: {0}")]
    Incomplete(String),
    /// Bad settings (exclude globs, root).
    #[error("{0}")]
    Config(String),
    /// A file changed while it was scanned.
    #[error("{0} changed while it was being scanned")]
    Changed(String),
    /// The replica on disk is not what its recorded generation says (an inode of the wrong type
    /// or link count, a missing entry, a directory replaced by a symlink) and the content of
    /// these paths is not available on the replica. Nothing was changed in the tree; the replica
    /// re-recorded what it holds as its base, so the next plan (from [`Replica::manifest`])
    /// repairs them.
    #[error("replica drifted at {} path(s) whose content it cannot rebuild ({}): re-recorded the tree as it is; plan again from its manifest", paths.len(), paths.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    Drift {
        /// The paths (new tree).
        paths: Vec<String>,
    },
    /// A filesystem is full (ENOSPC or EDQUOT). When this comes from [`Staging::commit`] the
    /// replica is still at its previous generation: the space the switch needs is checked, and
    /// everything it writes is allocated, before the commit point.
    #[error("no space left on {fs}: {path}")]
    NoSpace {
        /// What was being written.
        path: String,
        /// The filesystem: its mount point, device and free space.
        fs: String,
    },
    /// Corrupt serialized data.
    #[error("corrupt data: {0}")]
    Format(String),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source: e }
}

impl Error {
    /// Whether the caller's input is at fault (malformed, hostile or wrong-flavour data, or an
    /// input file that does not exist) rather than the operation failing.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::Delta { .. } | Error::Hostile(_) => true,
            Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// postcard streamed to and from files, so a large manifest is never held encoded and decoded
/// at once. postcard reports a failing reader or writer only as "unexpected end" or "buffer
/// full": the I/O error itself is kept aside and returned instead (an ENOSPC stays an ENOSPC).
pub(crate) mod codec {
    use std::io::{Read, Write};

    /// Remembers the last I/O error of the stream it wraps.
    struct Kept<S> {
        inner: S,
        err: Option<std::io::Error>,
    }

    impl<S: Write> Write for Kept<S> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.inner.write(b).map_err(|e| self.keep(e))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush().map_err(|e| self.keep(e))
        }
    }

    impl<S: Read> Read for Kept<S> {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.inner.read(b).map_err(|e| self.keep(e))
        }
    }

    impl<S> Kept<S> {
        fn keep(&mut self, e: std::io::Error) -> std::io::Error {
            let kind = e.kind();
            self.err = Some(e);
            kind.into()
        }
    }

    /// Writes `v` as postcard into `w`.
    pub(crate) fn encode_into<T: serde::Serialize + ?Sized>(v: &T, w: &mut dyn Write) -> std::io::Result<()> {
        let mut k = Kept { inner: w, err: None };
        match postcard::to_io(v, &mut k) {
            Ok(_) => Ok(()),
            Err(e) => Err(k.err.take().unwrap_or_else(|| std::io::Error::other(e.to_string()))),
        }
    }

    /// Why a decode failed: the stream, or what it held.
    pub(crate) enum DecodeError {
        Io(std::io::Error),
        Format(String),
    }

    /// Reads one postcard `T` from `r` (buffered here; trailing bytes are left unread, as
    /// `postcard::from_bytes` ignores them). Strings are read through a 4 KiB scratch buffer: the
    /// only strings in hanfs' state are hex digests.
    pub(crate) fn decode_from<T: serde::de::DeserializeOwned>(r: impl Read) -> Result<T, DecodeError> {
        let mut scratch = [0u8; 4096];
        let mut k = Kept { inner: std::io::BufReader::with_capacity(1 << 16, r), err: None };
        match postcard::from_io::<T, _>((&mut k, &mut scratch)) {
            Ok((t, _)) => Ok(t),
            Err(e) => Err(match k.err.take() {
                Some(io) => DecodeError::Io(io),
                None => DecodeError::Format(e.to_string()),
            }),
        }
    }
}
