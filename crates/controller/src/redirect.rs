//! `migrate` (planned move of nodes' statelite data) and `failover` (unplanned: fence, promote
//! backups). Both end the same way: the move is recorded in the state dir under the placement lock,
//! exports are rendered from the placement recorded then and pushed (the lock still held), and
//! xCAT is repointed through the caller's hook.
//!
//! Order, and why: a node moves only after its final copy made it (migrate) or after its old SN is
//! fenced (failover: promoting while the old SN may still write is split brain); the move is
//! recorded before any export changes, so a crash in between re-renders the same.

use crate::statelite::{self as sl, StateliteReport};
use crate::Controller;
use anyhow::Result;
use model::Cluster;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub use crate::BadInput;

#[derive(Debug, Default, Serialize)]
pub struct MoveReport {
    pub ok: bool,
    pub dry_run: bool,
    /// (node, new SN) of every node moved (or that would be, with a dry run).
    pub moved: Vec<Moved>,
    pub failed: Vec<NodeFailure>,
    pub statelite: Vec<StateliteReport>,
    pub exports: Vec<ExportsRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence: Option<FenceRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xcat: Option<serde_json::Value>,
    pub steps: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Moved {
    pub node: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Serialize)]
pub struct NodeFailure {
    pub node: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct ExportsRow {
    pub sn: String,
    pub ok: bool,
    pub output: String,
}

#[derive(Debug, Serialize)]
pub struct FenceRow {
    pub command: Vec<String>,
    pub ok: bool,
    pub output: String,
}

/// What the xCAT hook did: whether it worked, the steps to show, its report for `--json`.
#[derive(Debug, Default)]
pub struct Repointed {
    pub ok: bool,
    pub steps: Vec<String>,
    pub xcat: Option<serde_json::Value>,
}

/// The xCAT repoint of the moved nodes (`(node, new SN)`; `true`: a dry run, print the
/// commands, run nothing).
pub type Repoint<'a> = &'a mut dyn FnMut(&[(String, String)], bool) -> Repointed;

/// What the caller provides: a sink for each step as it happens, and the xCAT repoint.
pub struct Hooks<'a> {
    pub step: &'a mut dyn FnMut(&str),
    pub repoint: Repoint<'a>,
}

struct Run<'a, 'b> {
    rep: MoveReport,
    hooks: &'a mut Hooks<'b>,
}

impl Run<'_, '_> {
    fn step(&mut self, s: String) {
        (self.hooks.step)(&s);
        self.rep.steps.push(s);
    }

    fn finish(mut self) -> MoveReport {
        self.rep.ok = self.rep.failed.is_empty() && self.rep.exports.iter().all(|e| e.ok);
        self.rep
    }

    /// Records the moves (dry run: says it would) and writes the exports of `sns` from the
    /// placement recorded then, all under `lock`; then repoints xCAT.
    async fn conclude(
        &mut self,
        ctl: &Controller,
        lock: Option<&crate::PlacementLock>,
        placed: &Cluster,
        moves: &[(String, String)],
        sns: &BTreeSet<String>,
    ) -> Result<()> {
        let file = ctl.state.moves_file();
        // A dry run renders what the moves would give; a real one pushes what is recorded.
        let mut after = placed.clone();
        match lock {
            None if !moves.is_empty() => {
                self.step(format!("would record in {}: {}", file.display(), show(moves)));
                after = placed.with_moves(&moves.iter().cloned().collect())?;
            }
            Some(l) if !moves.is_empty() => {
                l.record_moves(&ctl.cluster, moves)?;
                self.step(format!("recorded in {}: {}", file.display(), show(moves)));
            }
            _ => {}
        }
        for sn in sns {
            let Some(l) = lock else {
                let text = exports::render_sn(&after, sn).map_err(|e| anyhow::anyhow!("exports of {sn}: {e}"))?;
                self.step(format!("would write the exports of {sn}:\n{}", text.trim_end()));
                continue;
            };
            let (ok, output) = match crate::push::push_exports(ctl, l, sn).await {
                Ok((r, _)) => (r.reloaded, r.output),
                Err(e) => (false, format!("{e:#}")),
            };
            self.step(format!(
                "exports of {sn}: {}",
                if ok { "written, reloaded".to_string() } else { format!("FAILED: {output}") }
            ));
            self.rep.exports.push(ExportsRow { sn: sn.clone(), ok, output });
        }
        if !moves.is_empty() {
            let r = (self.hooks.repoint)(moves, lock.is_none());
            for s in r.steps {
                self.step(s);
            }
            self.rep.xcat = r.xcat;
            if !r.ok {
                self.rep.failed.push(NodeFailure { node: show(moves), reason: "xCAT repoint failed".into() });
            }
        }
        Ok(())
    }
}

fn show(moves: &[(String, String)]) -> String {
    moves.iter().map(|(n, s)| format!("{n} -> {s}")).collect::<Vec<_>>().join(", ")
}

/// The placement lock (none on a dry run, which changes nothing) and the placement read under it.
async fn locked(ctl: &Controller, dry: bool) -> Result<(Option<crate::PlacementLock>, Cluster)> {
    let lock = if dry { None } else { Some(ctl.state.lock_placement_async().await?) };
    let (placed, warnings) = ctl.placed()?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok((lock, placed))
}

/// `migrate`: a final sync of each node's data to `to`; a node moves only if all its areas made
/// it. Then rw on the new SN, `refer=` on the old (home) one, xCAT repointed.
pub async fn migrate(
    ctl: &Arc<Controller>,
    nodes: &[String],
    to: &str,
    dry: bool,
    hooks: &mut Hooks<'_>,
) -> Result<MoveReport> {
    let (lock, placed) = locked(ctl, dry).await?;
    // The model checks the moves (node and SN exist, the node is not there already) before
    // anything is synced.
    let requested: BTreeMap<String, String> = nodes.iter().map(|n| (n.clone(), to.to_string())).collect();
    if let Err(e) = placed.with_moves(&requested) {
        return Err(BadInput(match e {
            model::MoveError::AlreadyServed { .. } => {
                format!("{e} (`hanfs sync` re-pushes its exports if a move was interrupted)")
            }
            _ => e.to_string(),
        })
        .into());
    }
    let mut run = Run { rep: MoveReport { dry_run: dry, ..Default::default() }, hooks };
    let mut moves = Vec::new();
    let mut affected = BTreeSet::from([to.to_string()]);
    for n in nodes {
        let (Some(node), Some(from)) = (placed.node(n), placed.serving(n)) else { continue };
        let mut failed = None;
        for area in placed.statelite() {
            let p = sl::Pair {
                area: area.name.clone(),
                path: area.path.as_str().to_string(),
                node: n.clone(),
                from: from.to_string(),
                to: to.to_string(),
            };
            if dry {
                run.step(format!("would sync {}/{n} from {} to {}", area.path.as_str(), p.from, p.to));
                continue;
            }
            let r = sl::sync_pair(ctl, &p).await;
            run.step(match &r.error {
                None => format!(
                    "synced {}/{n} {} -> {}: generation {}, {} files",
                    area.path.as_str(),
                    r.from,
                    r.to,
                    r.generation,
                    r.files_sent
                ),
                Some(e) => format!("sync of {}/{n} {} -> {} FAILED: {e}", area.path.as_str(), r.from, r.to),
            });
            if let Some(e) = &r.error {
                failed.get_or_insert(format!("final sync of {}: {e}", area.name));
            }
            run.rep.statelite.push(r);
        }
        match failed {
            Some(reason) => run.rep.failed.push(NodeFailure { node: n.clone(), reason }),
            None => {
                affected.insert(from.to_string());
                affected.extend(node.sns.first().cloned());
                run.rep.moved.push(Moved { node: n.clone(), from: from.to_string(), to: to.to_string() });
                moves.push((n.clone(), to.to_string()));
            }
        }
    }
    if !moves.is_empty() {
        run.conclude(ctl, lock.as_ref(), &placed, &moves, &affected).await?;
    }
    Ok(run.finish())
}

/// How old the promoted copy is: what the node loses is what it wrote since (the oldest area counts).
fn copy_age(ctl: &Controller, cluster: &Cluster, node: &str, sn: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let oldest =
        cluster.statelite().iter().filter_map(|ar| sl::load_record(&ctl.state, &ar.name, node, sn).map(|r| r.2)).min();
    match oldest {
        Some(t) => format!("copy synced {} s ago", now.saturating_sub(t)),
        None => "no statelite areas".into(),
    }
}

/// The fence of `hanfs failover` and of the daemon: the cluster's fence command, its verification
/// (timeout, retries, notify) through [`health::fence::fence`].
pub async fn fence(cluster: &Cluster, sn: &model::ServiceNode) -> health::fence::FenceOutcome {
    let cfg = match crate::monitor::health_config(cluster) {
        Ok(c) => c.fence_config(),
        // Settings that do not fit together still fence with what is set (the daemon refuses
        // to start on them; the operator's `failover` should not).
        Err(_) => crate::monitor::fence_config_unchecked(cluster),
    };
    health::fence::fence(&cfg, &sn.name, &sn.address.to_string()).await
}

/// What a fence outcome shows in a [`MoveReport`].
pub fn fence_row(cluster: &Cluster, sn: &model::ServiceNode, out: &health::fence::FenceOutcome) -> FenceRow {
    let vars = [("sn", sn.name.as_str()), ("address", &sn.address.to_string())];
    let command = health::fence::substitute(cluster.fence(), &vars);
    let output = match &out.result {
        Ok(()) => out
            .attempts
            .last()
            .map(|a| format!("{}{}", a.fence.stdout, a.fence.stderr).trim().to_string())
            .unwrap_or_default(),
        Err(e) => e.clone(),
    };
    FenceRow { command, ok: out.fenced(), output }
}

/// `failover`: fence the dead SN (unless `force`), then [`promote`].
pub async fn failover(
    ctl: &Arc<Controller>,
    dead: &str,
    force: bool,
    dry: bool,
    hooks: &mut Hooks<'_>,
) -> Result<MoveReport> {
    let (placed, _) = ctl.placed()?;
    let Some(sn) = placed.sn(dead).cloned() else {
        return Err(BadInput(format!("no SN named `{dead}`")).into());
    };
    let mut run = Run { rep: MoveReport { dry_run: dry, ..Default::default() }, hooks };
    if dry {
        let cmd = health::fence::substitute(placed.fence(), &[("sn", &sn.name), ("address", &sn.address.to_string())]);
        run.step(format!(
            "would fence {}: {}",
            sn.name,
            if cmd.is_empty() { "(no fence command configured)".into() } else { cmd.join(" ") }
        ));
    } else {
        let out = fence(&placed, &sn).await;
        let row = fence_row(&placed, &sn, &out);
        let (ok, output) = (row.ok, row.output.clone());
        run.step(format!("fence {}: {}", sn.name, if ok { "ok".to_string() } else { format!("FAILED: {output}") }));
        run.rep.fence = Some(row);
        if !ok && !force {
            run.step("nothing promoted: fencing failed (--force promotes anyway, at the risk of split brain)".into());
            for n in placed.nodes().iter().filter(|n| placed.serving(&n.name) == Some(sn.name.as_str())) {
                run.rep
                    .failed
                    .push(NodeFailure { node: n.name.clone(), reason: format!("{} not fenced: {output}", sn.name) });
            }
            if run.rep.failed.is_empty() {
                run.rep
                    .failed
                    .push(NodeFailure { node: "-".into(), reason: format!("{} not fenced: {output}", sn.name) });
            }
            return Ok(run.finish());
        }
    }
    let fence = run.rep.fence.take();
    let steps = std::mem::take(&mut run.rep.steps);
    let mut rep = promote(ctl, dead, dry, run.hooks).await?;
    rep.fence = fence;
    rep.steps.splice(0..0, steps);
    Ok(rep)
}

/// The promote step of a failover, for an SN already fenced (by `failover`, or by the daemon
/// through its health detector): each of its nodes' first reachable backup that holds the synced
/// copy is promoted, every live SN re-exported, xCAT repointed. Never fences.
pub async fn promote(ctl: &Arc<Controller>, dead: &str, dry: bool, hooks: &mut Hooks<'_>) -> Result<MoveReport> {
    let (lock, placed) = locked(ctl, dry).await?;
    let Some(dead) = placed.sn(dead).cloned() else {
        return Err(BadInput(format!("no SN named `{dead}`")).into());
    };
    let mut run = Run { rep: MoveReport { dry_run: dry, ..Default::default() }, hooks };
    let mut moves = Vec::new();
    for n in placed.nodes().iter().filter(|n| placed.serving(&n.name) == Some(dead.name.as_str())) {
        let mut why = Vec::new();
        let mut chosen = None;
        for b in n.sns.iter().filter(|s| **s != dead.name) {
            let r = if dry {
                // No session in a dry run: the MN's records say whether the copy was synced.
                match placed.statelite().iter().find(|ar| sl::load_record(&ctl.state, &ar.name, &n.name, b).is_none()) {
                    Some(ar) => Err(anyhow::anyhow!("no synced copy of {} recorded", ar.name)),
                    None => Ok(()),
                }
            } else {
                sl::holds_copy(ctl, b, &n.name).await
            };
            match r {
                Ok(()) => {
                    chosen = Some(b.clone());
                    break;
                }
                Err(e) => why.push(format!("{b}: {e:#}")),
            }
        }
        match chosen {
            Some(b) => {
                run.step(format!(
                    "{} {} on {b} (was {}; {})",
                    if dry { "would promote" } else { "promote" },
                    n.name,
                    dead.name,
                    copy_age(ctl, &placed, &n.name, &b)
                ));
                run.rep.moved.push(Moved { node: n.name.clone(), from: dead.name.clone(), to: b.clone() });
                moves.push((n.name.clone(), b));
            }
            None => {
                let reason = if why.is_empty() { "no backup SN".to_string() } else { why.join("; ") };
                run.step(format!("{} NOT promoted: {reason}", n.name));
                run.rep.failed.push(NodeFailure { node: n.name.clone(), reason });
            }
        }
    }
    // Re-export on every live SN (all but the fenced one), from the new placement.
    let live: BTreeSet<String> = placed.sns().iter().map(|s| s.name.clone()).filter(|s| *s != dead.name).collect();
    run.conclude(ctl, lock.as_ref(), &placed, &moves, &live).await?;
    Ok(run.finish())
}
