//! Signing a new generation into the tree engine's [`tree::SigStore`] directory (`<dir>/<hex>.sig`,
//! librsync MD4), with one `syncfs` for the batch instead of `SigStore::update`'s two fsyncs per
//! file: thousands of new package files made the per-file fsyncs the longest step of a sync.
//! Safe because a signature is only a hint: each file lands by rename (whole or absent), and a
//! delta made from any signature is checked on the replica by BLAKE3 before it is committed.

use anyhow::{Context, Result};
use rayon::prelude::*;
use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tree::{Kind, Manifest};

fn sig_path(dir: &Path, h: &[u8; 32]) -> PathBuf {
    dir.join(format!("{}.sig", hex::encode(h)))
}

fn wanted(manifest: &Manifest) -> Vec<([u8; 32], &[u8])> {
    let mut seen = HashSet::new();
    let mut v = Vec::new();
    for (p, e) in &manifest.entries {
        if let Kind::File { size, hash, .. } = &e.kind {
            if *size >= tree::sigstore::MIN_DELTA_SIZE && seen.insert(*hash) {
                v.push((*hash, p.as_slice()));
            }
        }
    }
    v
}

/// Signs every file of `manifest` (read under `root`) whose content has no signature yet; a file
/// whose bytes no longer match the manifest is skipped (it will go whole next time).
pub fn sign_new(dir: &Path, root: &Path, manifest: &Manifest) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let todo: Vec<_> = wanted(manifest).into_iter().filter(|(h, _)| !sig_path(dir, h).exists()).collect();
    let made: usize = todo
        .par_iter()
        .map(|(h, p)| -> Result<usize> {
            let path = root.join(std::ffi::OsStr::from_bytes(p));
            let Ok(f) = std::fs::File::open(&path) else { return Ok(0) };
            // Mapped, not read: memory stays bounded whatever the file sizes. A file truncated
            // while mapped would fault; the MN's image is not rewritten during a sync (and the
            // tree engine's SigStore maps the same way).
            // SAFETY: see above.
            let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("mapping {}", path.display()))?;
            let data: &[u8] = &map;
            if blake3::hash(data).as_bytes() != h {
                return Ok(0);
            }
            let sig = delta::signature(data, None).with_context(|| format!("signing {}", path.display()))?;
            let dst = sig_path(dir, h);
            let tmp = dir.join(format!("{}.sig.tmp", hex::encode(h)));
            std::fs::write(&tmp, &sig).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &dst).with_context(|| format!("renaming {}", dst.display()))?;
            Ok(1)
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .sum();
    let d = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: a valid open descriptor; syncfs has no other precondition.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("syncfs {}", dir.display()));
    }
    Ok(made)
}

/// Drops signatures of content the manifest no longer has (after the run, so SNs still behind
/// could use them during it).
/// Done only once stale ones make up a third of the store: each unlink is slow with online discard,
/// so they are paid in batches, not on every run.
pub fn prune(dir: &Path, manifest: &Manifest) {
    let keep: HashSet<[u8; 32]> = wanted(manifest).into_iter().map(|(h, _)| h).collect();
    let total = std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0);
    if total <= keep.len() + keep.len() / 2 + 64 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for de in rd.flatten() {
        let name = de.file_name();
        let ours = name
            .to_str()
            .and_then(|n| n.strip_suffix(".sig"))
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok());
        if let Some(h) = ours {
            if !keep.contains(&h) {
                let _ = std::fs::remove_file(de.path());
            }
        }
    }
}
