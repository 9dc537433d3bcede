//! The controller's store of last-generation signatures, keyed by content hash, and the
//! per-file payload (delta or whole file) computed once for every replica.

use std::fs::File;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::manifest::{Kind, Manifest};
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

/// Content hashes worth a signature (files of at least [`MIN_DELTA_SIZE`]), each with one path.
fn wanted(manifest: &Manifest) -> std::collections::HashMap<[u8; 32], &Vec<u8>> {
    let mut want = std::collections::HashMap::new();
    for (p, e) in &manifest.entries {
        if let Kind::File { size, hash, .. } = &e.kind {
            if *size >= MIN_DELTA_SIZE {
                want.entry(*hash).or_insert(p);
            }
        }
    }
    want
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
    /// files whose content has no signature yet and drops signatures of content no longer
    /// present. Returns how many signatures were made.
    pub fn update(&self, root: &Path, manifest: &Manifest) -> Result<usize> {
        let made = self.sign_new(root, manifest)?;
        self.prune_except(manifest, 0);
        Ok(made)
    }

    /// Signs every file of `manifest` (read under `root`) whose content has no signature yet, in
    /// parallel, each read in bounded pieces (never mapped: a file truncated under us gives an
    /// error, not SIGBUS). A file whose bytes are not the manifest's, or that changed while it was
    /// read, is skipped: it goes whole next time. Each signature lands by rename (whole or absent)
    /// and one `syncfs` covers the batch instead of two fsyncs per file (thousands of new files
    /// made those the longest step of a sync); a signature is only a hint, as every delta made
    /// from one is checked by BLAKE3 on the replica before it is committed.
    pub fn sign_new(&self, root: &Path, manifest: &Manifest) -> Result<usize> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let want = wanted(manifest);
        let todo: Vec<_> = want.iter().filter(|(h, _)| !self.path(h).exists()).collect();
        let made = todo
            .par_iter()
            .map(|(h, p)| -> Result<usize> {
                let path = root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(p));
                let Ok(mut f) = File::open(&path) else { return Ok(0) };
                let sig = match crate::rdiff::signature_of(&mut f, &path, None) {
                    Ok((sig, hash)) if hash == **h => sig,
                    Ok(_) | Err(Error::Changed(_)) => return Ok(0),
                    Err(e) => return Err(e),
                };
                let dst = self.path(h);
                let tmp = self.dir.join(format!("{}.sig.tmp", hex::encode(h)));
                std::fs::write(&tmp, &sig).map_err(|e| io_err(&tmp, e))?;
                std::fs::rename(&tmp, &dst).map_err(|e| io_err(&dst, e))?;
                Ok(1)
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .sum();
        if made > 0 {
            let d = File::open(&self.dir).map_err(|e| io_err(&self.dir, e))?;
            rustix::fs::syncfs(&d).map_err(|e| io_err(&self.dir, e.into()))?;
        }
        Ok(made)
    }

    /// Drops signatures of content `manifest` no longer has, once they are more than `slack`
    /// plus half the wanted count (each unlink is slow with online discard, so a caller that runs
    /// often pays them in batches: slack 64; 0 prunes every time).
    pub fn prune_except(&self, manifest: &Manifest, slack: usize) {
        let keep = wanted(manifest);
        let total = std::fs::read_dir(&self.dir).map(|rd| rd.count()).unwrap_or(0);
        if slack > 0 && total <= keep.len() + keep.len() / 2 + slack {
            return;
        }
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return };
        for de in rd.flatten() {
            let name = de.file_name();
            let ours = name
                .to_str()
                .filter(|n| !n.starts_with("spill-"))
                .and_then(|n| n.strip_suffix(".sig"))
                .and_then(|h| hex::decode(h).ok())
                .and_then(|h| <[u8; 32]>::try_from(h).ok());
            if !ours.is_some_and(|h| keep.contains_key(&h)) {
                let _ = std::fs::remove_file(de.path());
            }
        }
    }

    /// What to send for `content` of a plan, reading the new file under `source_root`: a delta
    /// against the stored signature of its base, or the whole file when there is no base, no
    /// signature, or the delta is not smaller. None for contents the replica makes locally.
    pub fn payload(&self, source_root: &Path, content: &Content) -> Result<Option<Payload>> {
        let Source::Send { base } = &content.source else { return Ok(None) };
        let path = source_root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&content.path));
        let sig = base.as_ref().filter(|_| content.size >= MIN_DELTA_SIZE).and_then(|(_, h)| self.get(h));
        let Some(sig) = sig else { return Ok(Some(Payload::Literal(path))) };
        let mut f = File::open(&path).map_err(|e| io_err(&path, e))?;
        let max = f.metadata().map_err(|e| io_err(&path, e))?.len();
        let mut spill = Spill { mem: Vec::new(), file: None, dir: self.dir.clone(), n: 0, max };
        let r = crate::rdiff::delta_of(&sig, &mut f, &path, crate::rdiff::PIECE_LEN, &mut spill)
            .and_then(|hash| std::io::Write::flush(&mut spill).map_err(|e| io_err(&path, e)).map(|()| hash));
        let r = match r {
            // What was read is not the version the plan names: never send it.
            Ok(hash) if hash != content.hash => {
                Err(Error::Changed(format!("{} (its content is no longer the one scanned)", path.display())))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e @ Error::Changed(_)) = r {
            if let Some((p, _)) = spill.file {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
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
