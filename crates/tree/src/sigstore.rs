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

/// What to send for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Send the file at this path whole (stream it into `Staging::write_file`).
    Literal(PathBuf),
    /// Send this delta (into `Staging::add_delta`).
    Delta(Vec<u8>),
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
        match delta::encode(Some(&sig), data).map_err(|e| Error::Delta { path: show(&content.path), source: e })? {
            delta::Encoded::Literal => Ok(Some(Payload::Literal(path))),
            delta::Encoded::Delta(d) => Ok(Some(Payload::Delta(d))),
        }
    }
}
