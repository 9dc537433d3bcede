//! `hanfs delta signature|diff|patch`: rdiff-compatible (MD4 flavour) file operations.

use crate::cli::{DeltaCommand, Global};
use crate::exit::{bad_input, Status};
use anyhow::Result;
use std::path::Path;

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

/// Writes the output through the one atomic-write helper (a temporary beside it, renamed into
/// place only on success), so a refused delta or a full disk never leaves a truncated file where a
/// good one was.
fn atomically(out: &Path, f: impl FnOnce(&Path) -> tree::Result<()>) -> Result<Status> {
    enum Failed {
        Tree(tree::Error),
        Io(std::io::Error),
    }
    impl From<std::io::Error> for Failed {
        fn from(e: std::io::Error) -> Failed {
            Failed::Io(e)
        }
    }
    if out.file_name().is_none() {
        return Err(bad_input(format!("{}: not a file name", out.display())));
    }
    match tree::fsops::replace_file(out, |tmp| f(tmp).map_err(Failed::Tree)) {
        Ok(()) => Ok(Status::Ok),
        Err(Failed::Io(e)) => Err(anyhow::anyhow!("{}: {e}", out.display())),
        Err(Failed::Tree(e)) if e.is_bad_input() => Err(bad_input(e.to_string())),
        Err(Failed::Tree(e)) => Err(anyhow::Error::new(e)),
    }
}
