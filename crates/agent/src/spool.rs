//! The resume spool: payloads received for an update, kept on disk by the content hash they produce
//! (and the base a delta applies to), so a transfer interrupted by a crash or a dead link is not sent
//! again. Emptied after each successful commit.

use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// The spool name of a payload: `<hash>.lit` or `<hash>.<base hash>.delta`, `.zst` when compressed.
pub fn name(hash: &[u8; 32], delta_base: Option<&[u8; 32]>, zstd: bool) -> String {
    let z = if zstd { ".zst" } else { "" };
    match delta_base {
        None => format!("{}.lit{z}", hex::encode(hash)),
        Some(b) => format!("{}.{}.delta{z}", hex::encode(hash), hex::encode(b)),
    }
}

impl Spool {
    pub fn open(dir: PathBuf) -> Result<Spool> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Spool { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A complete payload with this name, if spooled.
    pub fn get(&self, name: &str) -> Option<PathBuf> {
        let p = self.path(name);
        p.is_file().then_some(p)
    }

    /// Where a payload being received is written; renamed by [`Spool::finish`] once whole.
    pub fn partial(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.part"))
    }

    pub fn finish(&self, name: &str) -> Result<PathBuf> {
        let p = self.path(name);
        std::fs::rename(self.partial(name), &p).with_context(|| format!("spooling {}", p.display()))?;
        Ok(p)
    }

    /// Drops everything (after a commit, nothing in it can be needed again).
    pub fn clear(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
