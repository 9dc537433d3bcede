//! File-to-file helpers behind `hanfs delta signature|diff|patch`, interchangeable with
//! `rdiff -H md4 -R rollsum -S 8` (MD4 flavour).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};

use std::path::Path;

use crate::{io_err, Error, Result};

/// Default output limit of [`patch_file`]: the output is streamed to disk, so this only guards
/// against a hostile delta filling the disk.
pub const DEFAULT_PATCH_LIMIT: u64 = 1 << 40;

/// What identifies one version of a file: a writer that truncates or rewrites it changes one of
/// these (ctime at least, even within the same second of mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

fn version(f: &File, path: &Path) -> Result<Version> {
    use std::os::unix::fs::MetadataExt;
    let md = f.metadata().map_err(|e| io_err(path, e))?;
    Ok(Version {
        size: md.len(),
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
        ino: md.ino(),
    })
}

/// Bytes read at once from a source file. Files are read, never mapped: the MN's files may be
/// truncated by someone else while hanfs reads them, which must give an error, not SIGBUS.
pub(crate) const PIECE_LEN: usize = 8 << 20;

/// One consistent version of a file read in pieces with a bounded buffer: `each` gets every
/// piece (each `piece` bytes but the last). Fails with [`Error::Changed`] when the file's size,
/// mtime or ctime moved while it was read, or fewer or more bytes than its size came back. Returns
/// the size and BLAKE3 of what was read.
pub(crate) fn read_pieces(
    f: &mut File,
    path: &Path,
    piece: usize,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(u64, [u8; 32])> {
    use std::io::Read;
    let before = version(f, path)?;
    let mut buf = vec![0u8; piece.max(1).min(before.size.max(1) as usize)];
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    loop {
        let mut fill = 0;
        while fill < buf.len() {
            let k = f.read(&mut buf[fill..]).map_err(|e| io_err(path, e))?;
            if k == 0 {
                break;
            }
            fill += k;
        }
        if fill == 0 {
            break;
        }
        n += fill as u64;
        if n > before.size {
            // Grew while we read: not one version.
            break;
        }
        h.update(&buf[..fill]);
        each(&buf[..fill])?;
        if fill < buf.len() {
            break;
        }
    }
    let after = version(f, path)?;
    if after != before || n != before.size {
        return Err(Error::Changed(format!(
            "{} ({n} bytes read of {}; size {} and ctime {:?} after)",
            path.display(),
            before.size,
            after.size,
            after.ctime
        )));
    }
    Ok((n, *h.finalize().as_bytes()))
}

/// The MD4 signature of the open file `f` (block length as librsync picks it from the file's
/// size when None), read in pieces of whole blocks: a signature is the header followed by one
/// record per block, so the records of consecutive pieces concatenate. Also its BLAKE3.
pub(crate) fn signature_of(f: &mut File, path: &Path, block_len: Option<u32>) -> Result<(Vec<u8>, [u8; 32])> {
    let size = version(f, path)?.size;
    let bl = block_len.unwrap_or_else(|| delta::default_block_len(size));
    // An empty file (or a bad block length) gives the header alone, or delta's own error.
    let mut out = delta::signature_with(&[], Some(bl), delta::DEFAULT_STRONG_LEN).map_err(|e| delta_err(path, e))?;
    let per = (bl as usize).saturating_mul((PIECE_LEN / bl.max(1) as usize).max(1));
    let (_, hash) = read_pieces(f, path, per, |p| {
        let s = delta::signature_with(p, Some(bl), delta::DEFAULT_STRONG_LEN).map_err(|e| delta_err(path, e))?;
        out.extend_from_slice(s.get(12..).unwrap_or_default());
        Ok(())
    })?;
    Ok((out, hash))
}

/// The delta from the file signed by `sig` to the open file `f`, written to `out`, reading `f` in
/// pieces of `piece` bytes: each piece is encoded against the whole signature and the command
/// streams are joined (one magic, one END), which is a valid librsync delta. A piece's trailing
/// literal (its last bytes that matched no block, at most two blocks of them) is not emitted but
/// carried to the front of the next piece, so a block that straddles two pieces still matches.
/// Returns the BLAKE3 of what was read.
pub(crate) fn delta_of(
    sig: &delta::Signature,
    f: &mut File,
    path: &Path,
    piece: usize,
    out: &mut impl Write,
) -> Result<[u8; 32]> {
    out.write_all(&delta::DELTA_MAGIC.to_be_bytes()).map_err(|e| io_err(path, e))?;
    let carry_max = 2 * sig.block_len() as usize;
    let mut d = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    let mut emit = |data: &[u8], keep_tail: bool, out: &mut dyn Write| -> Result<usize> {
        d.clear();
        delta::diff(sig, data, &mut d).map_err(|e| delta_err(path, e))?;
        // Without this piece's magic (4 bytes) and END (the last byte).
        let cmds = d.get(4..d.len().saturating_sub(1)).unwrap_or_default();
        let (mut cut, mut carried) = (cmds.len(), 0);
        if keep_tail {
            if let Some((at, lit)) = last_literal(cmds) {
                if lit <= carry_max {
                    (cut, carried) = (at, lit);
                }
            }
        }
        out.write_all(&cmds[..cut]).map_err(|e| io_err(path, e))?;
        Ok(carried)
    };
    let (_, hash) = read_pieces(f, path, piece, |p| {
        data.extend_from_slice(p);
        let carried = emit(&data, true, out)?;
        let tail = data.len() - carried;
        data.drain(..tail);
        Ok(())
    })?;
    if !data.is_empty() {
        emit(&data, false, out)?;
    }
    out.write_all(&[0]).map_err(|e| io_err(path, e))?;
    Ok(hash)
}

/// Where the last command of a librsync command stream starts and, when it is a literal, how many
/// bytes it carries (commands: 1..=64 short literal, 0x41..=0x44 literal with a 1/2/4/8-byte
/// length, 0x45..=0x54 copy with offset and length widths).
fn last_literal(cmds: &[u8]) -> Option<(usize, usize)> {
    let w = |c: u8| [1usize, 2, 4, 8][(c & 3) as usize];
    let int = |b: &[u8]| b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)) as usize;
    let (mut at, mut last) = (0, None);
    while at < cmds.len() {
        let c = cmds[at];
        let (len, lit) = match c {
            1..=0x40 => (1 + c as usize, Some(c as usize)),
            0x41..=0x44 => {
                let lw = w(c - 0x41);
                let n = int(cmds.get(at + 1..at + 1 + lw)?);
                (1 + lw + n, Some(n))
            }
            0x45..=0x54 => {
                let k = c - 0x45;
                (1 + w(k >> 2) + w(k), None)
            }
            _ => return None,
        };
        last = Some((at, lit));
        at += len;
    }
    let (at, lit) = last?;
    lit.map(|n| (at, n))
}

fn delta_err(path: &Path, e: delta::Error) -> Error {
    Error::Delta { path: path.display().to_string(), source: e }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| io_err(path, e))
}

/// `hanfs delta signature [-b BLOCK] OLD SIG`: writes the MD4 signature of `old` to `sig`
/// (block length as librsync picks it when `block_len` is None; strong sum 8 bytes).
pub fn signature_file(old: &Path, sig: &Path, block_len: Option<u32>) -> Result<()> {
    let (s, _) = signature_of(&mut open(old)?, old, block_len)?;
    std::fs::write(sig, s).map_err(|e| io_err(sig, e))
}

/// `hanfs delta diff SIG NEW DELTA`: writes the delta from the file signed by `sig` to `new`.
/// A BLAKE2 or RabinKarp signature is refused with an error that says how to make an MD4 one.
pub fn delta_file(sig: &Path, new: &Path, delta_out: &Path) -> Result<()> {
    let sb = std::fs::read(sig).map_err(|e| io_err(sig, e))?;
    let s = delta::Signature::parse(&sb).map_err(|e| delta_err(sig, e))?;
    let mut f = open(new)?;
    let out = File::create(delta_out).map_err(|e| io_err(delta_out, e))?;
    let mut w = BufWriter::new(out);
    delta_of(&s, &mut f, new, PIECE_LEN, &mut w)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn pieces_give_the_whole_file_signature_and_a_delta_that_patches() {
        let t = tempfile::tempdir().unwrap();
        let old = noise(1, 3 << 20);
        let mut new = old.clone();
        for k in 0..30usize {
            let at = k * 97_001 % (new.len() - 100);
            new[at..at + 40].copy_from_slice(&noise(k as u64 + 9, 40));
            if k % 4 == 0 {
                new.splice(at..at, noise(k as u64, 123));
            }
        }
        std::fs::write(t.path().join("old"), &old).unwrap();
        std::fs::write(t.path().join("new"), &new).unwrap();
        let (sig, h) = signature_of(&mut File::open(t.path().join("old")).unwrap(), Path::new("old"), None).unwrap();
        // The one-shot signature of the whole file is rdiff's byte for byte (tests/rdiff_files.rs).
        assert_eq!(sig, delta::signature(&old, None).unwrap());
        assert_eq!(h, *blake3::hash(&old).as_bytes());
        let s = delta::Signature::parse(&sig).unwrap();
        let mut whole = Vec::new();
        delta::diff(&s, &new, &mut whole).unwrap();
        // Small pieces: many boundaries, blocks straddling them.
        for piece in [64 << 10, 1 << 20, PIECE_LEN] {
            let mut d = Vec::new();
            let h =
                delta_of(&s, &mut File::open(t.path().join("new")).unwrap(), Path::new("new"), piece, &mut d).unwrap();
            assert_eq!(h, *blake3::hash(&new).as_bytes());
            let mut out = Vec::new();
            delta::patch(&old, &d[..], &mut out, 1 << 30).unwrap();
            assert!(out == new, "piece {piece}");
            assert!(d.len() as f64 <= whole.len() as f64 * 1.05, "piece {piece}: {} vs {}", d.len(), whole.len());
        }
    }

    #[test]
    fn a_file_truncated_while_it_is_read_is_an_error_not_a_fault() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, noise(3, 4 << 20)).unwrap();
        let mut f = File::open(&p).unwrap();
        let mut first = true;
        let e = read_pieces(&mut f, &p, 1 << 20, |_| {
            if first {
                // Someone else truncates and rewrites the file under the reader.
                std::fs::write(&p, b"short").unwrap();
                first = false;
            }
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(e, Error::Changed(_)), "{e}");
        // And a rewrite of the same size (ctime moves) is caught too.
        std::fs::write(&p, noise(3, 2 << 20)).unwrap();
        let mut f = File::open(&p).unwrap();
        let mut first = true;
        let e = read_pieces(&mut f, &p, 1 << 20, |_| {
            if first {
                std::thread::sleep(std::time::Duration::from_millis(20));
                std::fs::write(&p, noise(4, 2 << 20)).unwrap();
                first = false;
            }
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(e, Error::Changed(_)), "{e}");
    }
}
