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

/// As [`patch_file`] with an explicit output limit in bytes. COPY commands are done in the
/// kernel with `copy_file_range` (no page faults on a mapped base, no user-space copy), in
/// parallel over 8 MiB pieces of the output when the delta's literal bytes fit in memory
/// (256 MiB); otherwise streamed in order.
pub fn patch_file_limited(old: &Path, delta_in: &Path, new: &Path, limit: u64) -> Result<()> {
    let base = File::open(old).map_err(|e| io_err(old, e))?;
    let base_len = base.metadata().map_err(|e| io_err(old, e))?.len();
    let open_delta = || -> Result<BufReader<File>> {
        let d = File::open(delta_in).map_err(|e| io_err(delta_in, e))?;
        Ok(BufReader::with_capacity(1 << 20, d))
    };
    let mut plan = PlanSink { pieces: Vec::new(), pos: 0, literal: 0, too_big: false };
    delta::patch_into(base_len, open_delta()?, &mut plan, limit).map_err(|e| delta_err(delta_in, e))?;
    let out = File::create(new).map_err(|e| io_err(new, e))?;
    if plan.too_big {
        let mut sink = FileSink { base, out, buf: Vec::with_capacity(1 << 20) };
        delta::patch_into(base_len, open_delta()?, &mut sink, limit).map_err(|e| delta_err(delta_in, e))?;
        return sink.flush().map_err(|e| io_err(new, e));
    }
    out.set_len(plan.pos).map_err(|e| io_err(new, e))?;
    use rayon::prelude::*;
    plan.pieces
        .par_iter()
        .try_for_each(|p| -> std::io::Result<()> {
            use std::os::unix::fs::FileExt;
            match p {
                Piece::Lit { at, data } => out.write_all_at(data, *at),
                Piece::Copy { at, off, len } => copy_range(&base, *off, &out, *at, *len),
            }
        })
        .map_err(|e| io_err(new, e))
}

enum Piece {
    Lit { at: u64, data: Vec<u8> },
    Copy { at: u64, off: u64, len: u64 },
}

struct PlanSink {
    pieces: Vec<Piece>,
    pos: u64,
    literal: u64,
    too_big: bool,
}

const PIECE: u64 = 8 << 20;

impl delta::Sink for PlanSink {
    fn literal(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.literal += data.len() as u64;
        if self.literal > 256 << 20 {
            self.too_big = true;
            self.pieces.clear();
        }
        if !self.too_big {
            match self.pieces.last_mut() {
                Some(Piece::Lit { at, data: d }) if *at + d.len() as u64 == self.pos && (d.len() as u64) < PIECE => {
                    d.extend_from_slice(data)
                }
                _ => self.pieces.push(Piece::Lit { at: self.pos, data: data.to_vec() }),
            }
        }
        self.pos += data.len() as u64;
        Ok(())
    }

    fn copy(&mut self, mut offset: u64, mut len: u64) -> std::io::Result<()> {
        while len > 0 && !self.too_big {
            let k = len.min(PIECE);
            self.pieces.push(Piece::Copy { at: self.pos, off: offset, len: k });
            self.pos += k;
            offset += k;
            len -= k;
        }
        self.pos += len;
        Ok(())
    }
}

fn copy_range(base: &File, mut off: u64, out: &File, mut at: u64, mut len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    while len > 0 {
        let chunk = len.min(1 << 30) as usize;
        let n = match rustix::fs::copy_file_range(base, Some(&mut off), out, Some(&mut at), chunk) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            // Cross-device or unsupported: a read/write copy.
            Err(_) => {
                let mut b = vec![0u8; chunk.min(1 << 20)];
                base.read_exact_at(&mut b, off)?;
                out.write_all_at(&b, at)?;
                off += b.len() as u64;
                at += b.len() as u64;
                b.len()
            }
        };
        len -= n as u64;
    }
    Ok(())
}

struct FileSink {
    base: File,
    out: File,
    buf: Vec<u8>,
}

impl FileSink {
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

impl delta::Sink for FileSink {
    fn literal(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + data.len() > self.buf.capacity() {
            self.flush()?;
        }
        if data.len() >= self.buf.capacity() {
            return self.out.write_all(data);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn copy(&mut self, mut offset: u64, mut len: u64) -> std::io::Result<()> {
        self.flush()?;
        while len > 0 {
            let chunk = len.min(1 << 30) as usize;
            let n = match rustix::fs::copy_file_range(&self.base, Some(&mut offset), &self.out, None, chunk) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                // Cross-device or unsupported: fall back to a read/write copy.
                Err(_) => {
                    use std::os::unix::fs::FileExt;
                    let mut b = vec![0u8; chunk.min(1 << 20)];
                    self.base.read_exact_at(&mut b, offset)?;
                    self.out.write_all(&b)?;
                    offset += b.len() as u64;
                    b.len()
                }
            };
            len -= n as u64;
        }
        Ok(())
    }
}
