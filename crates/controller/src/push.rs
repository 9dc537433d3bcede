//! Exports pushes: an SN's exports are rendered from the placement as recorded at that moment and
//! written on the SN while the placement lock is held, so a move can never come between the render
//! and the write (issue #10: a daemon pushing exports from the placement it loaded at start undid
//! every `migrate`).

use crate::state::{PlacementLock, StateDir};
use crate::{Controller, ExportsReport};
use anyhow::{anyhow, Result};
use model::Cluster;
use std::collections::BTreeMap;

/// Renders the exports of every SN of `cluster`, in its dialect (Linux file, AIX managed block).
pub fn render_exports(cluster: &Cluster) -> Result<Vec<(String, String)>> {
    cluster
        .sns()
        .iter()
        .map(|s| {
            let text = exports::render_sn(cluster, &s.name).map_err(|e| anyhow!("exports of {}: {e}", s.name))?;
            Ok((s.name.clone(), text))
        })
        .collect()
}

/// Renders `sn`'s exports from the placement recorded now and writes them there (the reload
/// command runs); `lock` is held by the caller across both. Returns the report and the bytes sent.
pub async fn push_exports(ctl: &Controller, lock: &PlacementLock, sn: &str) -> Result<(ExportsReport, u64)> {
    let (placed, _) = lock.dir().placed(&ctl.cluster)?;
    let text = exports::render_sn(&placed, sn).map_err(|e| anyhow!("exports of {sn}: {e}"))?;
    write_exports(ctl, sn, text).await
}

/// Writes `text` as `sn`'s exports and runs its reload; recorded in the state dir once the agent
/// wrote the file (whether or not the reload then worked: the file is on the SN either way).
async fn write_exports(ctl: &Controller, sn: &str, text: String) -> Result<(ExportsReport, u64)> {
    let s = ctl.cluster.sn(sn).ok_or_else(|| anyhow!("unknown SN {sn}"))?;
    let mut c = ctl.connect(s).await?;
    let before = c.bytes_out;
    let done = c.call_within(proto::req::Exports { text: text.clone() }, ctl.timeouts.commit).await?;
    let (reloaded, output) = (done.reloaded, done.output);
    if let Err(e) = ctl.state.record_deployed_exports(sn, &text) {
        tracing::warn!(sn, "cannot record the deployed exports: {e:#}");
    }
    let sent = c.bytes_out - before;
    c.bye().await;
    Ok((ExportsReport { sn: sn.to_string(), reloaded, output }, sent))
}

/// `hanfs plan`'s exports: each SN's rendering from `cluster`, and its diff against what hanfs last
/// wrote there (recorded by sync), so an admin sees what a sync would change.
pub fn exports_plan(cluster: &Cluster) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let exports: BTreeMap<String, String> = render_exports(cluster)?.into_iter().collect();
    let state = StateDir::of(cluster);
    let diffs = cluster
        .sns()
        .iter()
        .filter_map(|sn| {
            let wanted = exports.get(&sn.name)?;
            let deployed = state.deployed_exports(&sn.name);
            Some((sn.name.clone(), exports::plan_text(sn.dialect, deployed.as_deref(), wanted)))
        })
        .collect();
    Ok((exports, diffs))
}
