//! The controller's store of last-generation signatures, keyed by content hash, and the
//! per-file payload (delta or whole file) computed once for every replica.

use std::fs::File;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::manifest::{show, Kind, Manifest};
use crate::plan::{Content, Source};
use crate::{io_err, Error, Result};

/// Files smaller than this are always sent whole: a signature and delta would not pay.
pub const MIN_DELTA_SIZE: u64 = 2048;

/// Signatures of the files of the last synced generation, one file per content hash
/// (`<dir>/<hex BLAKE3>.sig`, librsync MD4 format).
#[derive(Debug, Clone)]
pub struct SigStore {
    dir: PathBuf,
}

/// Deltas bigger than this are spilled to a file next to the store instead of held in memory.
pub const SPILL_AT: usize = 64 << 20;

/// What to send for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Send the file at this path whole (stream it into `Staging::write_file`).
    Literal(PathBuf),
    /// Send this delta (into `Staging::add_delta`).
    Delta(Vec<u8>),
    /// Send the delta in this file (into `Staging::add_delta`); a large delta kept out of
    /// memory. The caller removes the file once every replica has it.
    DeltaFile(PathBuf),
}

impl Payload {
    /// True for the two delta forms (feed them to `Staging::add_delta`).
    pub fn is_delta(&self) -> bool {
        !matches!(self, Payload::Literal(_))
    }

    /// A reader over what to send.
    pub fn reader(&self) -> Result<Box<dyn std::io::Read + Send + '_>> {
        Ok(match self {
            Payload::Literal(p) | Payload::DeltaFile(p) => {
                Box::new(std::io::BufReader::new(File::open(p).map_err(|e| io_err(p, e))?))
            }
            Payload::Delta(d) => Box::new(&d[..]),
        })
    }

    /// Bytes to send.
    pub fn len(&self) -> Result<u64> {
        match self {
            Payload::Literal(p) | Payload::DeltaFile(p) => Ok(std::fs::metadata(p).map_err(|e| io_err(p, e))?.len()),
            Payload::Delta(d) => Ok(d.len() as u64),
        }
    }

    /// True when there is nothing to send (an empty file).
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }
}

/// Collects a delta in memory up to [`SPILL_AT`], then in a file; fails once it reaches `max`
/// bytes (the delta would not be smaller than the file).
struct Spill {
    mem: Vec<u8>,
    file: Option<(PathBuf, std::io::BufWriter<File>)>,
    dir: PathBuf,
    n: u64,
    max: u64,
}

impl std::io::Write for Spill {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.n += b.len() as u64;
        if self.n >= self.max {
            return Err(std::io::Error::other("delta not smaller than the file"));
        }
        if self.file.is_none() && self.mem.len() + b.len() > SPILL_AT {
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let k = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = self.dir.join(format!("spill-{}-{k}.delta", std::process::id()));
            let mut w = std::io::BufWriter::new(File::create(&p)?);
            w.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some((p, w));
        }
        match &mut self.file {
            Some((_, w)) => w.write_all(b)?,
            None => self.mem.extend_from_slice(b),
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some((_, w)) => w.flush(),
            None => Ok(()),
        }
    }
}

fn map(f: &File, p: &Path) -> Result<Option<memmap2::Mmap>> {
    let len = f.metadata().map_err(|e| io_err(p, e))?.len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY of the map: a source file truncated while mapped would fault; the controller maps
    // files only between a scan and its sync, and the result is checked by BLAKE3 on the replica.
    #[allow(unsafe_code)]
    let m = unsafe { memmap2::Mmap::map(f) }.map_err(|e| io_err(p, e))?;
    Ok(Some(m))
}

impl SigStore {
    /// Opens (creating) a store directory, e.g. `<state_dir>/sigs/<image>`.
    pub fn open(dir: &Path) -> Result<SigStore> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        Ok(SigStore { dir: dir.to_path_buf() })
    }

    fn path(&self, hash: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}.sig", hex::encode(hash)))
    }

    /// The stored signature for a content hash.
    pub fn get(&self, hash: &[u8; 32]) -> Option<delta::Signature> {
        let b = std::fs::read(self.path(hash)).ok()?;
        delta::Signature::parse(&b).ok()
    }

    /// Brings the store to `manifest` (the generation just synced, read from `root`): signs
    /// files whose content has no signature yet (in parallel; a file whose bytes no longer hash
    /// to the manifest is skipped, so it will be sent whole) and drops signatures of content no
    /// longer present. Returns how many signatures were made.
    pub fn update(&self, root: &Path, manifest: &Manifest) -> Result<usize> {
        let mut want = std::collections::HashMap::new();
        for (p, e) in &manifest.entries {
            if let Kind::File { size, hash, .. } = &e.kind {
                if *size >= MIN_DELTA_SIZE {
                    want.entry(*hash).or_insert(p);
                }
            }
        }
        let todo: Vec<_> = want.iter().filter(|(h, _)| !self.path(h).exists()).collect();
        let made = todo
            .par_iter()
            .map(|(h, p)| -> Result<usize> {
                let path = root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(p));
                let f = File::open(&path).map_err(|e| io_err(&path, e))?;
                let m = map(&f, &path)?;
                let data: &[u8] = m.as_deref().unwrap_or_default();
                if blake3::hash(data).as_bytes() != *h {
                    return Ok(0);
                }
                let sig = delta::signature(data, None).map_err(|e| Error::Delta { path: show(p), source: e })?;
                crate::fsops::write_atomic(&self.path(h), &sig).map_err(|e| io_err(&self.path(h), e))?;
                Ok(1)
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .sum();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for de in rd.flatten() {
                let name = de.file_name();
                let keep = name
                    .to_str()
                    .filter(|n| !n.starts_with("spill-"))
                    .and_then(|n| n.strip_suffix(".sig"))
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
                    .is_some_and(|h| want.contains_key(&h));
                if !keep {
                    let _ = std::fs::remove_file(de.path());
                }
            }
        }
        Ok(made)
    }

    /// What to send for `content` of a plan, reading the new file under `source_root`: a delta
    /// against the stored signature of its base, or the whole file when there is no base, no
    /// signature, or the delta is not smaller. None for contents the replica makes locally.
    pub fn payload(&self, source_root: &Path, content: &Content) -> Result<Option<Payload>> {
        let Source::Send { base } = &content.source else { return Ok(None) };
        let path = source_root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&content.path));
        let sig = base.as_ref().filter(|_| content.size >= MIN_DELTA_SIZE).and_then(|(_, h)| self.get(h));
        let Some(sig) = sig else { return Ok(Some(Payload::Literal(path))) };
        let f = File::open(&path).map_err(|e| io_err(&path, e))?;
        let m = map(&f, &path)?;
        let data: &[u8] = m.as_deref().unwrap_or_default();
        let mut spill = Spill { mem: Vec::new(), file: None, dir: self.dir.clone(), n: 0, max: data.len() as u64 };
        let r = delta::diff(&sig, data, &mut spill).and_then(|_| std::io::Write::flush(&mut spill).map_err(Into::into));
        match (r, spill.file) {
            (Ok(_), None) => Ok(Some(Payload::Delta(spill.mem))),
            (Ok(_), Some((p, _))) => Ok(Some(Payload::DeltaFile(p))),
            (Err(_), f) => {
                // Not smaller than the file (or the spill failed): send it whole.
                if let Some((p, _)) = f {
                    let _ = std::fs::remove_file(p);
                }
                Ok(Some(Payload::Literal(path)))
            }
        }
    }
}
