//! `hanfs delta signature|diff|patch`: rdiff-compatible (MD4 flavour) file operations.

use crate::cli::{DeltaCommand, Global};
use crate::exit::{bad_input, Status};
use anyhow::Result;
use std::path::{Path, PathBuf};

pub fn run(_g: &Global, c: DeltaCommand) -> Result<Status> {
    match c {
        DeltaCommand::Signature { block, old, sig } => {
            if block == Some(0) {
                return Err(bad_input("--block-size must be at least 1"));
            }
            atomically(&sig, |tmp| tree::rdiff::signature_file(&old, tmp, block))
        }
        DeltaCommand::Diff { sig, new, delta } => atomically(&delta, |tmp| tree::rdiff::delta_file(&sig, &new, tmp)),
        DeltaCommand::Patch { old, delta, new } => atomically(&new, |tmp| tree::rdiff::patch_file(&old, &delta, tmp)),
    }
}

/// Writes the output under a temporary name beside it and renames it into place only on success,
/// so a refused delta or a full disk never leaves a truncated file where a good one was.
fn atomically(out: &Path, f: impl FnOnce(&Path) -> tree::Result<()>) -> Result<Status> {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.is_empty() {
        return Err(bad_input(format!("{}: not a file name", out.display())));
    }
    let tmp: PathBuf = out.with_file_name(format!(".{name}.hanfs-{}", std::process::id()));
    match f(&tmp) {
        Ok(()) => {
            std::fs::rename(&tmp, out).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                anyhow::anyhow!("{}: {e}", out.display())
            })?;
            Ok(Status::Ok)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(match &e {
                // Malformed, hostile or wrong-flavour input, or a missing input file: the user's input.
                tree::Error::Delta { .. } | tree::Error::Hostile(_) => bad_input(e.to_string()),
                tree::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    bad_input(e.to_string())
                }
                _ => anyhow::Error::new(e),
            })
        }
    }
}
