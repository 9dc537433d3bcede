//! File-to-file helpers behind `hanfs delta signature|diff|patch`, interchangeable with
//! `rdiff -H md4 -R rollsum -S 8` (MD4 flavour).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use crate::{io_err, Error, Result};

/// Default output limit of [`patch_file`]: the output is streamed to disk, so this only guards
/// against a hostile delta filling the disk.
pub const DEFAULT_PATCH_LIMIT: u64 = 1 << 40;

fn map(path: &Path) -> Result<(File, Option<memmap2::Mmap>)> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let len = f.metadata().map_err(|e| io_err(path, e))?.len();
    if len == 0 {
        return Ok((f, None));
    }
    // SAFETY of the map: inputs are files the user names; if another process truncates one
    // while we read it the process faults, as rdiff's output would be garbage anyway.
    #[allow(unsafe_code)]
    let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io_err(path, e))?;
    Ok((f, Some(m)))
}

fn delta_err(path: &Path, e: delta::Error) -> Error {
    Error::Delta { path: path.display().to_string(), source: e }
}

/// `hanfs delta signature [-b BLOCK] OLD SIG`: writes the MD4 signature of `old` to `sig`
/// (block length as librsync picks it when `block_len` is None; strong sum 8 bytes).
pub fn signature_file(old: &Path, sig: &Path, block_len: Option<u32>) -> Result<()> {
    let (_f, m) = map(old)?;
    let s = delta::signature(m.as_deref().unwrap_or_default(), block_len).map_err(|e| delta_err(old, e))?;
    std::fs::write(sig, s).map_err(|e| io_err(sig, e))
}

/// `hanfs delta diff SIG NEW DELTA`: writes the delta from the file signed by `sig` to `new`.
/// A BLAKE2 or RabinKarp signature is refused with an error that says how to make an MD4 one.
pub fn delta_file(sig: &Path, new: &Path, delta_out: &Path) -> Result<()> {
    let sb = std::fs::read(sig).map_err(|e| io_err(sig, e))?;
    let s = delta::Signature::parse(&sb).map_err(|e| delta_err(sig, e))?;
    let (_f, m) = map(new)?;
    let out = File::create(delta_out).map_err(|e| io_err(delta_out, e))?;
    let mut w = BufWriter::new(out);
    delta::diff(&s, m.as_deref().unwrap_or_default(), &mut w).map_err(|e| delta_err(new, e))?;
    w.flush().map_err(|e| io_err(delta_out, e))
}

/// `hanfs delta patch OLD DELTA NEW`: applies `delta` to `old`, writing `new` (streamed; refuses
/// out-of-bounds copies and output past [`DEFAULT_PATCH_LIMIT`]).
pub fn patch_file(old: &Path, delta_in: &Path, new: &Path) -> Result<()> {
    patch_file_limited(old, delta_in, new, DEFAULT_PATCH_LIMIT)
}

/// As [`patch_file`] with an explicit output limit in bytes.
pub fn patch_file_limited(old: &Path, delta_in: &Path, new: &Path, limit: u64) -> Result<()> {
    let (_f, m) = map(old)?;
    let d = File::open(delta_in).map_err(|e| io_err(delta_in, e))?;
    let out = File::create(new).map_err(|e| io_err(new, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    delta::patch(m.as_deref().unwrap_or_default(), BufReader::with_capacity(1 << 20, d), &mut w, limit)
        .map_err(|e| delta_err(delta_in, e))?;
    w.flush().map_err(|e| io_err(new, e))
}
