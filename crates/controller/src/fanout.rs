//! Relay fan-out of one run (`[cluster] fanout`, issue 11): which SN gets an image's payloads
//! from which (`model::relay::tree`), and the channels through which each parent's task tells its
//! children's tasks where its relay listens. A parent that refused, failed or is not on the
//! shared plan offers nothing: its children get their payloads from the MN, as a child does for
//! whatever its parent could not give it.

use crate::image::Prepared;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// How long a child waits without a frame from its parent's relay before it counts the rest as
/// missing (a relay waiting on its own transfer says so every second).
pub(crate) const STALL_MS: u64 = 10_000;

/// A parent's relay, for one child and one image of this run.
#[derive(Debug)]
pub(crate) struct Offer {
    pub parent: String,
    pub addr: String,
    pub port: u16,
    pub token: [u8; 32],
}

/// One SN's place in one image's tree.
#[derive(Default)]
pub(crate) struct Links {
    /// Its parent's name and offer; None: the MN sends everything.
    pub parent: Option<(String, oneshot::Receiver<Option<Offer>>)>,
    /// Its children, each to be told what this SN's relay offers (dropped: nothing).
    pub children: Vec<(String, oneshot::Sender<Option<Offer>>)>,
}

/// The links of every SN for every image relayed this run, by (image, SN): images with a shared
/// plan (SNs at the last generation get one plan, so one set of payloads) over two SNs or more.
pub(crate) fn links(cluster: &model::Cluster, images: &[Arc<Prepared>]) -> HashMap<(String, String), Links> {
    let mut out: HashMap<(String, String), Links> = HashMap::new();
    let k = cluster.fanout();
    if k == 0 {
        return out;
    }
    for p in images.iter().filter(|p| p.shared.is_some() && p.image.sns.len() > 1) {
        let sns = &p.image.sns;
        let racks: Vec<Option<&str>> = sns.iter().map(|s| cluster.sn(s).and_then(|s| s.rack.as_deref())).collect();
        let parents = model::relay::tree(&racks, k);
        for (c, parent) in parents.iter().enumerate() {
            let Some(pi) = *parent else { continue };
            let (tx, rx) = oneshot::channel();
            let img = p.image.name.clone();
            out.entry((img.clone(), sns[c].clone())).or_default().parent = Some((sns[pi].clone(), rx));
            out.entry((img, sns[pi].clone())).or_default().children.push((sns[c].clone(), tx));
        }
        tracing::info!(image = %p.image.name, fanout = k, "relay tree: {}", describe(sns, &parents));
    }
    out
}

/// `sn1<-mn sn2<-sn1 ...`, for the log.
fn describe(sns: &[String], parents: &[Option<usize>]) -> String {
    sns.iter()
        .zip(parents)
        .map(|(s, p)| format!("{s}<-{}", p.map_or("mn", |i| sns[i].as_str())))
        .collect::<Vec<_>>()
        .join(" ")
}

/// 32 bytes from the kernel's generator: a child's token for one run.
pub(crate) fn token() -> anyhow::Result<[u8; 32]> {
    use std::io::Read;
    let mut t = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut t))?;
    Ok(t)
}
