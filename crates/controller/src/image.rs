//! MN side of one image: scan, the last synced generation, the shared plan and its payloads.

use anyhow::{Context, Result};
use model::{Cluster, Image};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tree::{Manifest, Payload, Plan, ScanOptions, Scanner, SigStore};

/// The generation last synced to at least one replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Last {
    pub generation: u64,
    pub digest: String,
    pub manifest: Manifest,
}

fn image_dir(cluster: &Cluster, name: &str) -> PathBuf {
    Path::new(cluster.state_dir.as_str()).join("images").join(name)
}

impl Last {
    pub fn load(cluster: &Cluster, name: &str) -> Result<Option<Last>> {
        let p = image_dir(cluster, name).join("last");
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(postcard::from_bytes(&b).with_context(|| format!("{}: corrupt", p.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
}

/// A payload computed once, on disk (deltas) or read from the source (whole files).
#[derive(Debug, Clone)]
pub enum PayloadFile {
    Literal { path: PathBuf, len: u64 },
    Delta { path: PathBuf, len: u64 },
}

impl PayloadFile {
    pub fn len(&self) -> u64 {
        match self {
            PayloadFile::Literal { len, .. } | PayloadFile::Delta { len, .. } => *len,
        }
    }
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
    pub plan: Plan,
    pub bytes: Vec<u8>,
    pub payloads: Vec<Option<PayloadFile>>,
}

pub struct Prepared {
    pub image: Image,
    pub state_dir: PathBuf,
    pub source: PathBuf,
    pub manifest: Manifest,
    pub digest: String,
    pub generation: u64,
    pub last: Option<Last>,
    pub shared: Option<Shared>,
    pub sigs: SigStore,
    pub summary: ImagePlan,
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
    let digest = manifest.digest();
    let dir = image_dir(cluster, &image.name);
    let last = Last::load(cluster, &image.name)?;
    let sigs = SigStore::open(&dir.join("sigs"))?;
    let generation = match &last {
        Some(l) if l.digest == digest => l.generation,
        Some(l) => l.generation + 1,
        None => 1,
    };
    let shared = match &last {
        Some(l) if l.digest != digest => {
            let mut plan = tree::diff(&l.manifest, &manifest);
            plan.generation = generation;
            let out = dir.join("out");
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let payloads = plan
                .contents
                .par_iter()
                .enumerate()
                .map(|(i, c)| payload_file(&sigs, &source, c, Some((&out, i))))
                .collect::<Result<Vec<_>>>()?;
            let bytes = plan.to_bytes()?;
            Some(Shared { plan, bytes, payloads })
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
                delta_bytes: s.payloads.iter().flatten().map(|p| p.len()).sum::<u64>() + s.bytes.len() as u64,
                generation,
                digest: digest.clone(),
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
                digest: digest.clone(),
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
    })
}

/// The payload of one plan content: a delta (written under `out` when given, else kept in a temp
/// file beside the sigs) or the whole source file.
pub fn payload_file(
    sigs: &SigStore,
    source: &Path,
    c: &tree::Content,
    out: Option<(&Path, usize)>,
) -> Result<Option<PayloadFile>> {
    Ok(match sigs.payload(source, c)? {
        None => None,
        Some(Payload::Literal(path)) => Some(PayloadFile::Literal { path, len: c.size }),
        Some(Payload::Delta(d)) => {
            let (dir, i) = out.ok_or_else(|| anyhow::anyhow!("no place for a delta"))?;
            let path = dir.join(format!("{i}.delta"));
            std::fs::write(&path, &d).with_context(|| format!("writing {}", path.display()))?;
            Some(PayloadFile::Delta { path, len: d.len() as u64 })
        }
        Some(Payload::DeltaFile(spilled)) => {
            let (dir, i) = out.ok_or_else(|| anyhow::anyhow!("no place for a delta"))?;
            let path = dir.join(format!("{i}.delta"));
            if std::fs::rename(&spilled, &path).is_err() {
                std::fs::copy(&spilled, &path).with_context(|| format!("writing {}", path.display()))?;
                let _ = std::fs::remove_file(&spilled);
            }
            let len = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?.len();
            Some(PayloadFile::Delta { path, len })
        }
    })
}

impl Prepared {
    /// Signs the new generation's files for the next sync's deltas. Runs while the SNs receive
    /// this one (it only reads the source); signatures are keyed by content, so this is safe even
    /// if no replica ends up at the new generation (the next deltas then fall back to whole files).
    pub fn sign(&self) -> Result<()> {
        crate::sign::sign_new(&self.state_dir.join("sigs"), &self.source, &self.manifest)?;
        Ok(())
    }

    /// Records the new generation as the base of the next sync.
    pub fn save(&self) -> Result<()> {
        let last = Last { generation: self.generation, digest: self.digest.clone(), manifest: self.manifest.clone() };
        let b = postcard::to_stdvec(&last)?;
        let p = self.state_dir.join("last");
        tree::fsops::write_atomic(&p, &b).with_context(|| format!("writing {}", p.display()))?;
        crate::sign::prune(&self.state_dir.join("sigs"), &self.manifest);
        let _ = std::fs::remove_dir_all(self.state_dir.join("out"));
        Ok(())
    }
}

/// `hanfs plan`: what a sync would send per image; changes nothing but the scan cache.
pub fn plan_images(cluster: &Cluster, images: &[Image]) -> Result<Vec<ImagePlan>> {
    images.iter().map(|i| prepare(cluster, i).map(|p| p.summary)).collect()
}
