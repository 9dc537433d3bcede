//! MN side of one image: scan, the last synced generation, the shared plan and its payloads.

use anyhow::{Context, Result};
use model::{Cluster, Image};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tree::{Manifest, Payload, Plan, ScanOptions, Scanner, SigStore};

/// The generation last synced to at least one replica: `state_dir/images/<name>/last`, postcard of
/// (generation, digest, manifest). Only the first two fields are read at load; the manifest, nearly
/// all of the file, is decoded from the file as a stream when a plan needs it ([`Last::manifest`])
/// and dropped by the caller after the diff: a run with nothing changed never reads it.
pub struct Last {
    pub generation: u64,
    /// Stored as its hex string, as before the type existed.
    pub digest: proto::Digest,
    path: PathBuf,
}

/// The file's first two fields.
#[derive(Deserialize)]
struct LastHead {
    generation: u64,
    digest: proto::Digest,
}

/// The file's first two fields, as written; the manifest follows (postcard puts a struct's
/// fields one after the other, so head then manifest is the (generation, digest, manifest) record).
#[derive(Serialize)]
struct LastHeadOut {
    generation: u64,
    digest: proto::Digest,
}

/// Reads the head of `last` from `r`, leaving it at the manifest.
fn read_head(r: &mut impl std::io::Read, p: &Path) -> Result<LastHead> {
    // The digest is a 64-byte hex string: the scratch buffer holds it.
    let mut scratch = [0u8; 256];
    let (h, _) = postcard::from_io::<LastHead, _>((r, &mut scratch[..]))
        .map_err(|e| anyhow::anyhow!("{}: corrupt: {e}", p.display()))?;
    Ok(h)
}

fn image_dir(cluster: &Cluster, name: &str) -> PathBuf {
    crate::StateDir::of(cluster).image_dir(name)
}

impl Last {
    pub fn load(cluster: &Cluster, name: &str) -> Result<Option<Last>> {
        let p = image_dir(cluster, name).join("last");
        match std::fs::File::open(&p) {
            Ok(f) => {
                let h = read_head(&mut std::io::BufReader::with_capacity(4096, f), &p)?;
                Ok(Some(Last { generation: h.generation, digest: h.digest, path: p }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// The manifest of that generation, decoded now from the file as a stream (a corrupt file
    /// fails here, by name; one rewritten since [`Last::load`] with another head too).
    pub fn manifest(&self) -> Result<Manifest> {
        let p = &self.path;
        let f = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
        let mut r = std::io::BufReader::with_capacity(1 << 16, f);
        let h = read_head(&mut r, p)?;
        if (h.generation, h.digest) != (self.generation, self.digest) {
            anyhow::bail!("{}: changed while this run used it", p.display());
        }
        Manifest::from_reader(r, "manifest").map_err(|e| anyhow::anyhow!("{}: corrupt: {e}", p.display()))
    }
}

/// A payload computed once, on disk (deltas, compressed files under `out/`) or the source file
/// itself (whole, uncompressed).
#[derive(Debug, Clone)]
pub struct PayloadFile {
    pub path: PathBuf,
    /// Where the bytes start in `path` (payloads computed by hanfs share a few pack files).
    pub offset: u64,
    /// Bytes on the wire.
    pub len: u64,
    pub encoding: proto::Encoding,
    /// One zstd frame of the content or delta.
    pub zstd: bool,
    /// Set when `path` is the source file itself: the BLAKE3 its bytes must have as they are sent
    /// (someone may rewrite it meanwhile; a changed file is never sent as if it were the scanned one).
    pub verify: Option<[u8; 32]>,
}

impl PayloadFile {
    pub fn len(&self) -> u64 {
        self.len
    }
}

/// Payloads by (content hash, delta base hash): computed once per run whatever the number of SNs
/// and plans that need them (the shared plan, and plans of replicas at other generations).
pub type MemoKey = ([u8; 32], Option<[u8; 32]>);
pub type Memo = std::sync::Mutex<HashMap<MemoKey, Arc<tokio::sync::OnceCell<PayloadFile>>>>;

pub fn memo_key(c: &tree::Content) -> MemoKey {
    let base = match &c.source {
        tree::Source::Send { base } => base.as_ref().map(|b| b.1),
        _ => None,
    };
    (c.hash, base)
}

/// What one image's sync would change (contract `plan` JSON, plus detail).
#[derive(Debug, Clone, Serialize)]
pub struct ImagePlan {
    pub name: String,
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    pub delta_bytes: u64,
    pub generation: u64,
    pub digest: String,
    pub from_generation: Option<u64>,
    pub files_to_send: u64,
    pub moved: u64,
    pub copied: u64,
}

/// The plan from the last generation to now, with each file's payload computed once.
pub struct Shared {
    /// The plan without its manifest (`tree::diff_lean`): the new tree is [`Prepared::manifest`].
    pub plan: Plan,
    /// What is sent: the plan with its manifest, postcard in one zstd frame ([`encode_plan`]),
    /// held once for every SN on the shared plan.
    pub bytes: Vec<u8>,
    /// BLAKE3 of `bytes`: what a child checks a plan relayed by its parent against.
    pub blake3: proto::Digest,
    /// Bytes on the wire of every payload (for `plan`).
    pub payload_bytes: u64,
}

pub struct Prepared {
    pub image: Image,
    pub state_dir: PathBuf,
    pub source: PathBuf,
    pub manifest: Manifest,
    pub digest: proto::Digest,
    pub generation: u64,
    pub last: Option<Last>,
    pub shared: Option<Shared>,
    pub sigs: SigStore,
    pub summary: ImagePlan,
    pub memo: Memo,
    /// Where payloads computed during the run go.
    pub pack: Pack,
}

fn scan(cluster: &Cluster, image: &Image) -> Result<(PathBuf, Manifest)> {
    let source = PathBuf::from(cluster.image_source(image).as_str());
    let dir = image_dir(cluster, &image.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let m = Scanner::new(&source, &ScanOptions { excludes: image.exclude.clone(), state_dir: Some(dir.join("scan")) })?
        .scan()
        .with_context(|| format!("scanning image {} at {}", image.name, source.display()))?;
    Ok((source, m))
}

pub fn source_digest(cluster: &Cluster, image: &Image) -> Result<String> {
    Ok(scan(cluster, image)?.1.digest())
}

/// Scans the image, diffs it against the last generation and computes every payload once.
pub fn prepare(cluster: &Cluster, image: &Image) -> Result<Prepared> {
    let t = std::time::Instant::now();
    let (source, manifest) = scan(cluster, image)?;
    tracing::info!("image {}: scanned {} entries in {:.2?}", image.name, manifest.entries.len(), t.elapsed());
    let digest: proto::Digest = manifest.digest().parse()?;
    let dir = image_dir(cluster, &image.name);
    let last = Last::load(cluster, &image.name)?;
    let sigs = SigStore::open(&dir.join("sigs"))?;
    let generation = match &last {
        Some(l) if l.digest == digest => l.generation,
        Some(l) => l.generation + 1,
        None => 1,
    };
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let memo = Memo::default();
    let pack = Pack::new(out.clone(), cluster.zstd_level());
    let shared = match &last {
        Some(l) if l.digest != digest => {
            // The old manifest lives only for the diff.
            let mut plan = tree::diff_lean(&l.manifest()?, &manifest);
            plan.generation = generation;
            // Every payload of the shared plan, in parallel, before any SN needs one.
            let mut keys: Vec<(MemoKey, &tree::Content)> = plan.to_send().map(|c| (memo_key(c), c)).collect();
            keys.sort_by_key(|k| k.0);
            keys.dedup_by(|a, b| a.0 == b.0);
            let made = keys
                .par_iter()
                .map(|(k, c)| payload_file(&sigs, &source, c, &pack).map(|p| (*k, p)))
                .collect::<Result<Vec<_>>>()?;
            let mut payload_bytes = 0;
            {
                let mut m = memo.lock().unwrap_or_else(|p| p.into_inner());
                for (k, p) in made.into_iter() {
                    let Some(p) = p else { continue };
                    payload_bytes += p.len;
                    m.insert(k, Arc::new(tokio::sync::OnceCell::new_with(Some(p))));
                }
            }
            let bytes = encode_plan(&plan, &manifest)?;
            let blake3 = proto::Digest::from_bytes(*blake3::hash(&bytes).as_bytes());
            Some(Shared { plan, bytes, blake3, payload_bytes })
        }
        _ => None,
    };
    let summary = match &shared {
        Some(s) => {
            let m = &s.plan.summary;
            ImagePlan {
                name: image.name.clone(),
                added: m.added,
                changed: m.content_changed + m.metadata_only,
                removed: m.removed,
                delta_bytes: s.payload_bytes + s.bytes.len() as u64,
                generation,
                digest: digest.to_string(),
                from_generation: last.as_ref().map(|l| l.generation),
                files_to_send: m.to_send,
                moved: m.moved,
                copied: m.copied,
            }
        }
        None => {
            // First sync (no base): everything goes whole.
            let c = manifest.counts();
            let fresh = last.is_none();
            ImagePlan {
                name: image.name.clone(),
                added: if fresh { manifest.entries.len() as u64 } else { 0 },
                changed: 0,
                removed: 0,
                delta_bytes: if fresh { c.bytes } else { 0 },
                generation,
                digest: digest.to_string(),
                from_generation: last.as_ref().map(|l| l.generation),
                files_to_send: if fresh { c.files } else { 0 },
                moved: 0,
                copied: 0,
            }
        }
    };
    Ok(Prepared {
        image: image.clone(),
        state_dir: dir,
        source,
        manifest,
        digest,
        generation,
        last,
        shared,
        sigs,
        summary,
        memo,
        pack,
    })
}

/// The zstd level of plans.
const PLAN_LEVEL: i32 = 3;

/// `plan` with `manifest` as its new tree, as sent: the postcard of the plan holding `manifest`
/// ([`Plan::to_bytes`]'s bytes) in one zstd frame that announces its decoded size (which the
/// agent checks), streamed: neither the plan with its
/// manifest nor its encoding is ever held, only the compressed frame. Sent zstd-compressed:
/// paths and metadata compress several times over.
pub fn encode_plan(plan: &Plan, manifest: &Manifest) -> Result<Vec<u8>> {
    /// Counts what is written (the size the frame announces), keeping nothing.
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    plan.write_with(manifest, &mut n)?;
    let mut z = zstd::stream::Encoder::new(Vec::new(), PLAN_LEVEL)?;
    z.include_contentsize(true)?;
    z.set_pledged_src_size(Some(n.0))?;
    // postcard writes a few bytes at a time: buffered before the encoder. Never flushed (a flush
    // would end a block early; `into_inner` only writes what is buffered).
    let mut w = std::io::BufWriter::with_capacity(1 << 17, &mut z);
    plan.write_with(manifest, &mut w)?;
    w.into_inner().map_err(|e| e.into_error())?;
    Ok(z.finish()?)
}

/// Payloads smaller than this go as they are: compressing would not pay for the frame.
const MIN_COMPRESS: u64 = 4096;

/// Payloads computed in a run are appended to a few pack files (one per worker thread), not one
/// file each: removing thousands of files costs seconds on filesystems with online discard, and
/// the pack files go in one unlink each at the next run.
pub struct Pack {
    dir: PathBuf,
    /// zstd level for payloads (`cluster.zstd_level`; 0 sends everything uncompressed).
    level: i32,
    slots: Vec<std::sync::Mutex<Option<(PathBuf, std::fs::File)>>>,
}

impl Pack {
    pub fn new(dir: PathBuf, level: i32) -> Pack {
        let n = rayon::current_num_threads() + 1;
        Pack { dir, level, slots: (0..n).map(|_| std::sync::Mutex::new(None)).collect() }
    }

    /// Appends what `write` produces; returns (file, offset, length). `write` returns false to
    /// take its bytes back (the payload went another way).
    fn append(
        &self,
        write: impl FnOnce(&mut std::fs::File, u64) -> Result<bool>,
    ) -> Result<Option<(PathBuf, u64, u64)>> {
        use std::io::Seek;
        let n = self.slots.len();
        let i = rayon::current_thread_index().map(|i| i % (n - 1)).unwrap_or(n - 1);
        let mut g = self.slots[i].lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let p = self.dir.join(format!("pack-{i}"));
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&p)
                .with_context(|| format!("creating {}", p.display()))?;
            *g = Some((p, f));
        }
        let Some((p, f)) = g.as_mut() else { return Ok(None) };
        let off = f.seek(std::io::SeekFrom::End(0))?;
        if !write(f, off)? {
            f.set_len(off)?;
            return Ok(None);
        }
        let end = f.stream_position()?;
        Ok(Some((p.clone(), off, end - off)))
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    r: R,
    h: blake3::Hasher,
    n: u64,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.r.read(buf)?;
        self.h.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

/// Fails unless what was read of `src` is the version the plan names (`want`: size and BLAKE3).
fn check_read(src: &Path, h: &Hashing<impl std::io::Read>, want: (u64, [u8; 32])) -> Result<()> {
    if h.n != want.0 || *h.h.finalize().as_bytes() != want.1 {
        anyhow::bail!(tree::Error::Changed(format!(
            "{} ({} bytes read, {} scanned; its content is no longer the one scanned)",
            src.display(),
            h.n,
            want.0
        )));
    }
    Ok(())
}

/// Appends `src` (`len` bytes) zstd-compressed when that saves at least 10%, else as it is when
/// `keep_raw`; None when neither was written. With `want` (size, BLAKE3) the bytes read must be
/// that version of the file, else the append is taken back and the error says the file changed.
fn pack_file(
    pack: &Pack,
    src: &Path,
    len: u64,
    keep_raw: bool,
    want: Option<(u64, [u8; 32])>,
) -> Result<Option<(PathBuf, u64, u64, bool)>> {
    use std::io::Write;
    let level = pack.level;
    let open = || -> Result<Hashing<std::io::BufReader<std::fs::File>>> {
        let f = std::fs::File::open(src).with_context(|| format!("{}", src.display()))?;
        Ok(Hashing { r: std::io::BufReader::new(f), h: blake3::Hasher::new(), n: 0 })
    };
    if level != 0 && len >= MIN_COMPRESS {
        let mut changed = None;
        let z = pack.append(|f, off| {
            let mut input = open()?;
            let mut w = std::io::BufWriter::new(&mut *f);
            zstd::stream::copy_encode(&mut input, &mut w, level)
                .with_context(|| format!("compressing {}", src.display()))?;
            w.flush()?;
            drop(w);
            if let Some(want) = want {
                if let Err(e) = check_read(src, &input, want) {
                    changed = Some(e);
                    return Ok(false);
                }
            }
            use std::io::Seek;
            let zl = f.stream_position()? - off;
            // Kept only when it saves at least 10%; else the pack takes the bytes back.
            Ok(zl * 10 <= len * 9)
        })?;
        if let Some(e) = changed {
            return Err(e);
        }
        if let Some((p, off, zl)) = z {
            return Ok(Some((p, off, zl, true)));
        }
    }
    if !keep_raw {
        return Ok(None);
    }
    let mut changed = None;
    let raw = pack.append(|f, _| {
        let mut input = open()?;
        std::io::copy(&mut input, f)?;
        if let Some(want) = want {
            if let Err(e) = check_read(src, &input, want) {
                changed = Some(e);
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    if let Some(e) = changed {
        return Err(e);
    }
    Ok(raw.map(|(p, o, l)| (p, o, l, false)))
}

/// The payload of one plan content: a delta from the stored signature of its base or the whole
/// file, zstd-compressed into the pack when that saves. None for content made locally.
pub fn payload_file(sigs: &SigStore, source: &Path, c: &tree::Content, pack: &Pack) -> Result<Option<PayloadFile>> {
    use std::io::Write;
    let level = pack.level;
    let p = match sigs.payload(source, c)? {
        None => return Ok(None),
        Some(Payload::Literal(path)) => match pack_file(pack, &path, c.size, false, Some((c.size, c.hash)))? {
            Some((p, offset, len, zstd)) => {
                PayloadFile { path: p, offset, len, encoding: proto::Encoding::Literal, zstd, verify: None }
            }
            None => PayloadFile {
                path,
                offset: 0,
                len: c.size,
                encoding: proto::Encoding::Literal,
                zstd: false,
                verify: Some(c.hash),
            },
        },
        Some(Payload::Delta(d)) => {
            let z = if level != 0 && d.len() as u64 >= MIN_COMPRESS {
                zstd::bulk::compress(&d, level).ok().filter(|z| z.len() * 10 <= d.len() * 9)
            } else {
                None
            };
            let (bytes, zstd) = match &z {
                Some(z) => (z.as_slice(), true),
                None => (d.as_slice(), false),
            };
            let (p, offset, len) = pack
                .append(|f, _| {
                    f.write_all(bytes)?;
                    Ok(true)
                })?
                .ok_or_else(|| anyhow::anyhow!("pack refused a delta"))?;
            PayloadFile { path: p, offset, len, encoding: proto::Encoding::Delta, zstd, verify: None }
        }
        Some(Payload::DeltaFile(spilled)) => {
            let len = std::fs::metadata(&spilled).with_context(|| format!("{}", spilled.display()))?.len();
            let r = pack_file(pack, &spilled, len, true, None);
            let _ = std::fs::remove_file(&spilled);
            let (p, offset, len, zstd) = r?.ok_or_else(|| anyhow::anyhow!("pack refused a delta"))?;
            PayloadFile { path: p, offset, len, encoding: proto::Encoding::Delta, zstd, verify: None }
        }
    };
    Ok(Some(p))
}

impl Prepared {
    /// The payload for `c`, computed at most once per run (another SN may be computing it now),
    /// on the blocking pool: a delta or a compression never holds up another SN's session.
    pub async fn payload(self: &Arc<Self>, c: &tree::Content) -> Result<Option<PayloadFile>> {
        let cell = {
            let mut m = self.memo.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(memo_key(c)).or_default().clone()
        };
        let r = cell
            .get_or_try_init(|| async {
                let (me, c) = (self.clone(), c.clone());
                tokio::task::spawn_blocking(move || payload_file(&me.sigs, &me.source, &c, &me.pack))
                    .await??
                    .ok_or_else(|| anyhow::anyhow!("no payload: the replica makes this file locally"))
            })
            .await;
        match r {
            Ok(p) => Ok(Some(p.clone())),
            Err(e) => Err(e),
        }
    }
}

impl Prepared {
    /// Signs the new generation's files for the next sync's deltas. Runs while the SNs receive
    /// this one (it only reads the source); signatures are keyed by content, so this is safe even
    /// if no replica ends up at the new generation (the next deltas then fall back to whole files).
    pub fn sign(&self) -> Result<()> {
        self.sigs.sign_new(&self.source, &self.manifest)?;
        Ok(())
    }

    /// Records the new generation as the base of the next sync.
    /// `generation`: the highest one a replica now holds at this digest (at least ours), so the next
    /// plan is numbered after every replica's.
    pub fn save(&self, generation: u64) -> Result<()> {
        let generation = generation.max(self.generation);
        // Nothing changed since `last` was written (its digest and generation are these, and its
        // save pruned the signatures to this manifest): rewriting and fsyncing the whole manifest
        // and listing every signature would be most of a no-change run's cost.
        if self.last.as_ref().is_some_and(|l| l.digest == self.digest && l.generation == generation) {
            return Ok(());
        }
        let head = postcard::to_stdvec(&LastHeadOut { generation, digest: self.digest })?;
        let p = self.state_dir.join("last");
        // Streamed to disk: the manifest is never held encoded.
        tree::fsops::write_atomic_with(&p, |w| {
            w.write_all(&head)?;
            self.manifest.write_into(w)
        })
        .with_context(|| format!("writing {}", p.display()))?;
        // After the run, so SNs still behind could use the old signatures during it.
        self.sigs.prune_except(&self.manifest, 64);
        Ok(())
    }
}

/// `hanfs plan`: what a sync would send per image; changes nothing but the scan cache.
pub fn plan_images(cluster: &Cluster, images: &[Image]) -> Result<Vec<ImagePlan>> {
    let _lock = crate::lock_state(cluster)?;
    images.iter().map(|i| prepare(cluster, i).map(|p| p.summary)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `cluster.zstd_level` reaches the payloads: 0 sends a compressible file as it is, 1 compresses it.
    #[test]
    fn zstd_level_comes_from_the_pack() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("text");
        std::fs::write(&src, "the same line again\n".repeat(1000)).unwrap();
        let len = std::fs::metadata(&src).unwrap().len();
        let z = |level: i32| {
            let out = t.path().join(format!("out{level}"));
            std::fs::create_dir_all(&out).unwrap();
            let (_, _, stored, zstd) = pack_file(&Pack::new(out, level), &src, len, true, None).unwrap().unwrap();
            (stored, zstd)
        };
        assert_eq!(z(0), (len, false));
        let (stored, zstd) = z(1);
        assert!(zstd && stored < len / 10, "{stored} of {len}");
    }
}

#[cfg(test)]
mod last_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn cluster(d: &Path) -> Cluster {
        let toml = format!(
            "[cluster]\nsource_root = \"{0}/src\"\nstate_dir = \"{0}/state\"\nplaintext_loopback = true\n\
             [[sn]]\nname = \"sn1\"\naddress = \"127.0.0.1\"\nagent = \"127.0.0.1:1\"\n\
             [[image]]\nname = \"img\"\npath = \"img\"\nclients = \"*\"\n",
            d.display()
        );
        Cluster::from_toml("t.toml", &toml).unwrap()
    }

    /// `last` as written is read back whole: generation, digest and the manifest a plan diffs
    /// against; a run with nothing new leaves the file as it was (same inode), one with a change
    /// replaces it; a file cut short fails the run that needs its manifest, by name.
    #[test]
    fn last_is_read_lazily_and_rewritten_only_when_something_changed() {
        let t = tempfile::tempdir().unwrap();
        let c = cluster(t.path());
        let img = t.path().join("src/img");
        std::fs::create_dir_all(&img).unwrap();
        std::fs::write(img.join("a"), b"one").unwrap();
        let image = &c.images()[0];
        let p = prepare(&c, image).unwrap();
        p.save(1).unwrap();
        let last = Last::load(&c, "img").unwrap().unwrap();
        assert_eq!((last.generation, last.digest), (1, p.digest));
        assert_eq!(last.manifest().unwrap().digest(), p.manifest.digest());
        let file = image_dir(&c, "img").join("last");
        let ino = std::fs::metadata(&file).unwrap().ino();

        let p = prepare(&c, image).unwrap();
        assert!(p.shared.is_none() && p.generation == 1);
        p.save(1).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), ino, "a no-change run rewrote last");
        // A replica numbered past ours is recorded even with the same digest.
        p.save(3).unwrap();
        assert_eq!(Last::load(&c, "img").unwrap().unwrap().generation, 3);

        std::fs::write(img.join("a"), b"two").unwrap();
        let p = prepare(&c, image).unwrap();
        let plan = &p.shared.as_ref().unwrap().plan;
        assert_eq!((p.generation, plan.summary.content_changed), (4, 1));
        p.save(4).unwrap();
        assert_eq!(Last::load(&c, "img").unwrap().unwrap().digest, p.digest);

        // The plan sent is the plan with its manifest: one zstd frame of what `diff` and
        // `to_bytes` give, its decoded size announced (as `zstd::bulk::compress` does).
        std::fs::write(img.join("b"), b"new").unwrap();
        let old = Last::load(&c, "img").unwrap().unwrap().manifest().unwrap();
        let p = prepare(&c, image).unwrap();
        let s = p.shared.as_ref().unwrap();
        let mut whole = tree::diff(&old, &p.manifest);
        whole.generation = p.generation;
        let encoded = whole.to_bytes().unwrap();
        // One frame (a stream of one frame decodes to exactly those bytes).
        assert_eq!(zstd::zstd_safe::find_frame_compressed_size(&s.bytes).ok(), Some(s.bytes.len()));
        assert_eq!(zstd::decode_all(&s.bytes[..]).unwrap(), encoded);
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&s.bytes).ok(), Some(Some(encoded.len() as u64)));
        assert_eq!(tree::Plan::from_bytes(&zstd::decode_all(&s.bytes[..]).unwrap()).unwrap(), whole);
        assert!(s.plan.manifest.entries.is_empty(), "the shared plan holds a copy of the manifest");
        assert_eq!((whole.summary.added, whole.contents.len()), (1, 1));

        let b = std::fs::read(&file).unwrap();
        std::fs::write(&file, &b[..b.len() - 10]).unwrap();
        std::fs::write(img.join("a"), b"three").unwrap();
        let e = prepare(&c, image).err().unwrap();
        assert!(format!("{e:#}").contains("corrupt"), "{e:#}");
    }
}
