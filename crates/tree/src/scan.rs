//! Scanning a tree into a [`Manifest`], with a persistent hash cache.

use crate::HashMap;
use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::manifest::{Entry, EntryPath, Kind, Manifest, CONTROL_DIR};
use crate::{io_err, Error, Result};

/// Scan settings.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Glob patterns (globset syntax, `/` is literal) relative to the root; a matching directory
    /// is skipped with everything under it. `.hanfs` at the root is always skipped.
    pub excludes: Vec<String>,
    /// Where to keep the hash cache (`<state_dir>/hashcache2`); None: no persistent cache.
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    hash: Option<[u8; 32]>,
    sparse: Option<Vec<(u64, u64)>>,
    target: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

type CacheMap = HashMap<(u64, u64), Cached>;

/// A scanner for one tree. Keeps its cache in memory between scans and in `state_dir` across
/// runs, so a rescan with nothing changed costs directory reads and `lstat`s only: xattrs, link
/// targets and hashes are reused when (dev, ino, size, mtime, ctime) are unchanged (setting an
/// xattr or content changes ctime).
pub struct Scanner {
    root: PathBuf,
    excludes: GlobSet,
    cache_file: Option<PathBuf>,
    cache: Option<CacheMap>,
}

/// One entry as the walk found it: its path and the part of its `lstat` the scan uses (a
/// `Metadata` is twice this; a 1M-entry walk holds a million of them).
struct Raw {
    rel: EntryPath,
    st: Stat,
}

struct Stat {
    ft: std::fs::FileType,
    /// `st_mode & 0o7777`.
    perm: u32,
    uid: u32,
    gid: u32,
    dev: u64,
    ino: u64,
    size: u64,
    nlink: u64,
    rdev: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stat {
    fn of(md: &Metadata) -> Stat {
        Stat {
            ft: md.file_type(),
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            nlink: md.nlink(),
            rdev: md.rdev(),
            mtime: mtime(md),
            ctime: ctime(md),
        }
    }
}

/// Extended-attribute namespaces that are replicated.
pub fn xattr_wanted(name: &[u8]) -> bool {
    name.starts_with(b"security.")
        || name.starts_with(b"trusted.")
        || name.starts_with(b"user.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// Reads the replicated xattrs of `path` (not following a final symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut buf = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(path, &mut buf[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, e.into())),
    };
    let mut out = Vec::new();
    let mut val = vec![0u8; 65536];
    for name in buf[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        if !xattr_wanted(name) {
            continue;
        }
        let cname = std::ffi::OsStr::from_bytes(name);
        match rustix::fs::lgetxattr(path, cname, &mut val[..]) {
            Ok(k) => out.push((name.to_vec(), val[..k].to_vec())),
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(io_err(path, e.into())),
        }
    }
    out.sort();
    Ok(out)
}

/// Data extents of a sparse file via SEEK_DATA/SEEK_HOLE; None when the file has no holes.
pub fn sparse_extents(f: &File, size: u64, blocks: u64) -> Option<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    if blocks.saturating_mul(512) >= size || size == 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match seek(f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(_) => break,
        };
        let hole = seek(f, SeekFrom::Hole(data)).unwrap_or(size).min(size);
        if hole > data {
            out.push((data, hole - data));
        }
        pos = hole.max(data + 1);
    }
    let data: u64 = out.iter().map(|e| e.1).sum();
    (data < size).then_some(out)
}

/// Data extents of a sparse file, None when it has no holes.
pub type Extents = Option<Vec<(u64, u64)>>;

/// What the parallel pass yields per entry: path, entry, inode key, a fresh cache record,
/// nlink, is-directory.
/// nlink, is-directory (the fresh record boxed: most entries of a rescan have none).
type Scanned = (EntryPath, Entry, (u64, u64), Option<Box<Cached>>, u64, bool);

/// BLAKE3 of a file's content read with a bounded buffer (no mmap: a file truncated under us
/// must give an error, not SIGBUS), plus its sparse extents.
pub fn hash_file(path: &Path) -> Result<([u8; 32], u64, Extents)> {
    let mut f = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    let md = f.metadata().map_err(|e| io_err(path, e))?;
    let sparse = sparse_extents(&f, md.len(), md.blocks());
    // SEEK_DATA/SEEK_HOLE moved the file offset.
    std::io::Seek::rewind(&mut f).map_err(|e| io_err(path, e))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((*h.finalize().as_bytes(), n, sparse))
}

/// (seconds, nanoseconds): never folded into one i64 of nanoseconds, which ends in 2262.
fn mtime(md: &Metadata) -> (i64, i64) {
    (md.mtime(), md.mtime_nsec())
}

fn ctime(md: &Metadata) -> (i64, i64) {
    (md.ctime(), md.ctime_nsec())
}

fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(rel))
    }
}

impl Scanner {
    /// A scanner for `root`.
    pub fn new(root: impl Into<PathBuf>, opts: &ScanOptions) -> Result<Scanner> {
        let mut b = GlobSetBuilder::new();
        for p in &opts.excludes {
            let g = GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::Config(format!("exclude glob {p:?}: {e}")))?;
            b.add(g);
        }
        let excludes = b.build().map_err(|e| Error::Config(format!("exclude globs: {e}")))?;
        Ok(Scanner {
            root: root.into(),
            excludes,
            // `hashcache2`: the records keep seconds and nanoseconds apart (an older `hashcache`
            // is not read, its times were folded into nanoseconds).
            cache_file: opts.state_dir.as_ref().map(|d| d.join("hashcache2")),
            cache: None,
        })
    }

    /// The root being scanned.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn excluded(&self, rel: &[u8]) -> bool {
        if rel == CONTROL_DIR {
            return true;
        }
        !self.excludes.is_empty() && self.excludes.is_match(std::ffi::OsStr::from_bytes(rel))
    }

    /// The entries under `dir`, one vector per directory: never concatenated, so no level of the
    /// walk copies (and holds twice, while growing) the entries of the levels below it.
    fn walk(&self, dir: &Path, rel: &[u8], sockets: &std::sync::atomic::AtomicU64) -> Result<Vec<Vec<Raw>>> {
        let mut out = Vec::new();
        let mut subdirs = Vec::new();
        let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
        for de in rd {
            let de = de.map_err(|e| io_err(dir, e))?;
            let name = de.file_name();
            let mut crel = Vec::with_capacity(rel.len() + 1 + name.len());
            if !rel.is_empty() {
                crel.extend_from_slice(rel);
                crel.push(b'/');
            }
            crel.extend_from_slice(name.as_bytes());
            if self.excluded(&crel) {
                continue;
            }
            let md = match de.metadata() {
                Ok(md) => md,
                // Removed between readdir and lstat: it is simply not in this scan.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&de.path(), e)),
            };
            let ft = md.file_type();
            if ft.is_socket() {
                sockets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            if ft.is_dir() {
                subdirs.push(crel.clone());
            }
            out.push(Raw { rel: crel, st: Stat::of(&md) });
        }
        out.shrink_to_fit();
        let nested: Vec<Vec<Vec<Raw>>> =
            subdirs.par_iter().map(|r| self.walk(&join(&self.root, r), r, sockets)).collect::<Result<_>>()?;
        let mut all = Vec::with_capacity(1 + nested.iter().map(Vec::len).sum::<usize>());
        all.push(out);
        for n in nested {
            all.extend(n);
        }
        Ok(all)
    }

    fn load_cache(&mut self) -> CacheMap {
        if let Some(c) = self.cache.take() {
            return c;
        }
        // Decoded from the file as a stream: its encoding is never held beside the map.
        self.cache_file
            .as_ref()
            .and_then(|p| File::open(p).ok())
            .and_then(|f| crate::codec::decode_from(f).ok())
            .unwrap_or_default()
    }

    /// Scans the tree. Hashes changed files in parallel; saves the cache if it changed.
    pub fn scan(&mut self) -> Result<Manifest> {
        let root_md = std::fs::symlink_metadata(&self.root).map_err(|e| io_err(&self.root, e))?;
        if !root_md.is_dir() {
            return Err(Error::Config(format!("{} is not a directory", self.root.display())));
        }
        let sockets = std::sync::atomic::AtomicU64::new(0);
        let mut raws = self.walk(&self.root.clone(), b"", &sockets)?;
        raws.push(vec![Raw { rel: Vec::new(), st: Stat::of(&root_md) }]);
        let cache = self.load_cache();
        let root = &self.root;
        // Directory by directory (each one's raw entries freed as soon as it is done), its
        // entries in parallel.
        let results: Vec<Vec<Scanned>> = raws
            .into_par_iter()
            .map(|dir| dir.into_par_iter().map(|r| self.entry(root, &cache, r)).collect::<Result<Vec<_>>>())
            .collect::<Result<_>>()?;
        let mut cache = cache;
        let mut dirty = false;
        let mut entries = BTreeMap::new();
        let mut inodes: HashMap<(u64, u64), Vec<EntryPath>> = HashMap::default();
        let mut live = crate::HashSet::with_capacity_and_hasher(results.iter().map(Vec::len).sum(), Default::default());
        // Each directory's results are freed once moved into the manifest.
        for (rel, e, key, fresh, nlink, is_dir) in results.into_iter().flatten() {
            live.insert(key);
            if let Some(c) = fresh {
                cache.insert(key, *c);
                dirty = true;
            }
            if nlink > 1 && !is_dir {
                inodes.entry(key).or_default().push(rel.clone());
            }
            entries.insert(rel, e);
        }
        for (_, mut paths) in inodes {
            if paths.len() < 2 {
                continue;
            }
            paths.sort();
            let leader = paths[0].clone();
            for p in &paths[1..] {
                if let Some(e) = entries.get_mut(p) {
                    e.kind = Kind::HardLink { leader: leader.clone() };
                }
            }
        }
        if dirty {
            // Drop inodes that are gone so the cache does not grow without bound.
            cache.retain(|k, _| live.contains(k));
            drop(live);
            if let Some(p) = &self.cache_file {
                // The cache is only a speed-up (a failed write costs the next scan its rehash),
                // but its directory may not exist yet.
                if let Some(d) = p.parent() {
                    let _ = std::fs::create_dir_all(d);
                }
                // Streamed to disk, never held encoded.
                if crate::fsops::write_atomic_with(p, |w| crate::codec::encode_into(&cache, w)).is_ok() {
                    // The cache of the older format, never read again.
                    let _ = std::fs::remove_file(p.with_file_name("hashcache"));
                }
            }
        }
        self.cache = Some(cache);
        Ok(Manifest { entries, skipped_sockets: sockets.into_inner() })
    }

    /// One entry of the walk: from the cache when (dev, ino, size, mtime, ctime) match, else read
    /// (xattrs, link target, content hash) with a fresh cache record.
    fn entry(&self, root: &Path, cache: &CacheMap, r: Raw) -> Result<Scanned> {
        let md = &r.st;
        let key = (md.dev, md.ino);
        let ft = md.ft;
        let (mt, ct) = (md.mtime, md.ctime);
        let hit = cache.get(&key).filter(|c| c.size == md.size && c.mtime == mt && c.ctime == ct);
        // On a cache hit nothing is read but the lstat the walk already did.
        let fresh = match hit {
            Some(c) if !ft.is_file() || c.hash.is_some() => None,
            _ => {
                let path = join(root, &r.rel);
                let xattrs = read_xattrs(&path)?;
                let target = if ft.is_symlink() {
                    Some(std::fs::read_link(&path).map_err(|e| io_err(&path, e))?.as_os_str().as_bytes().to_vec())
                } else {
                    None
                };
                let (hash, sparse) = if ft.is_file() {
                    let (h, n, s) = hash_file(&path)?;
                    if n != md.size {
                        return Err(Error::Changed(format!(
                            "{} ({n} bytes read, {} expected)",
                            path.display(),
                            md.size
                        )));
                    }
                    (Some(h), s)
                } else {
                    (None, None)
                };
                Some(Cached { size: md.size, mtime: mt, ctime: ct, hash, sparse, target, xattrs })
            }
        };
        let Some(c) = fresh.as_ref().or(hit) else {
            return Err(Error::Format("scan cache lost an entry".into()));
        };
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File { size: md.size, hash: c.hash.unwrap_or_default(), sparse: c.sparse.clone() }
        } else if ft.is_symlink() {
            Kind::Symlink { target: c.target.clone().unwrap_or_default() }
        } else if ft.is_char_device() || ft.is_block_device() {
            let rdev = md.rdev;
            let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
            if ft.is_char_device() {
                Kind::Char { major, minor }
            } else {
                Kind::Block { major, minor }
            }
        } else {
            Kind::Fifo
        };
        let e = Entry {
            kind,
            mode: md.perm,
            uid: md.uid,
            gid: md.gid,
            mtime_sec: mt.0,
            mtime_nsec: u32::try_from(mt.1).unwrap_or(0),
            xattrs: c.xattrs.clone(),
        };
        Ok((r.rel, e, key, fresh.map(Box::new), md.nlink, ft.is_dir()))
    }
}

/// Scans `root` once, without a persistent cache.
pub fn scan(root: &Path, excludes: &[String]) -> Result<Manifest> {
    Scanner::new(root, &ScanOptions { excludes: excludes.to_vec(), state_dir: None })?.scan()
}
