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
    /// `migrate --back`: the service address moved back to its SN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<AddressRow>,
    /// Failover: how old each moved node's copy is on its new SN (kernel-nfsd areas, from the
    /// backup's last in-sync mark).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_age: Vec<DataAge>,
    /// `migrate --back`: the generation of `returns.json` that records the return.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returned: Option<u64>,
    /// `migrate` and `migrate --back`: how the nodes' data moved. `copy`: the MN's final copy
    /// of each area, then `refer=`; `service_address`: read-write areas on the embedded server
    /// (symmetric pairs) were in sync on the target, and the serving SN's service address moved
    /// there (released, checked gone, claimed), other areas copied by the MN first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    /// `via = service_address`: the read-write areas that moved with the address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rw_areas: Vec<String>,
    pub steps: Vec<String>,
}

/// The service address of `migrate --back`: released on `from` (each checked gone), claimed on `to`.
#[derive(Debug, Serialize)]
pub struct AddressRow {
    pub address: String,
    pub from: Vec<String>,
    pub to: String,
    pub released: bool,
    pub claimed: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Moved {
    pub node: String,
    pub from: String,
    pub to: String,
}

/// One moved node's data age in a kernel-nfsd area on the SN it moved to.
#[derive(Debug, Serialize)]
pub struct DataAge {
    pub node: String,
    pub sn: String,
    pub area: String,
    /// Seconds between the backup's last in-sync mark and the report; `None`: never marked.
    pub seconds: Option<f64>,
}

/// The data age of each moved node held in a kernel-nfsd area on its new SN, from `areas`
/// (what each new SN reported), at `now` (Unix seconds).
pub fn data_ages(moves: &[(String, String)], areas: &[(String, Vec<crate::RwAreaStatus>)], now: f64) -> Vec<DataAge> {
    let mut out = Vec::new();
    for (node, sn) in moves {
        let Some((_, list)) = areas.iter().find(|(s, _)| s == sn) else { continue };
        for a in list.iter().filter(|a| a.kind == "kernel" && a.role == "backup" && a.nodes.contains(node)) {
            out.push(DataAge { node: node.clone(), sn: sn.clone(), area: a.area.clone(), seconds: a.data_age(now) });
        }
    }
    out
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
        // An AIX node mounts its statelite area itself: no export can send it on (exports::aix_unreferred).
        for (n, to) in moves {
            if let Some(l) = placed.serving(n).and_then(|from| exports::aix_unreferred(placed, n, from, to)) {
                self.step(l);
            }
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
    // One SN serving them all, with a service address: its read-write areas may follow it.
    let from: BTreeSet<&str> = nodes.iter().filter_map(|n| placed.serving(n)).collect();
    let from = match from.into_iter().collect::<Vec<_>>()[..] {
        [f] => placed.sn(f).filter(|f| f.service_address.is_some()).cloned(),
        _ => None,
    };
    if let (Some(from), Some(to_sn)) = (from, placed.sn(to).cloned()) {
        let address = from.service_address.map(|a| a.to_string()).unwrap_or_default();
        if let Some(pair) = rw_pair(&mut run, ctl, from, to_sn, address).await {
            return by_address(run, ctl, lock, &placed, nodes, pair, dry).await;
        }
    }
    run.rep.via = Some("copy");
    let (moves, affected) = final_copies(&mut run, ctl, &placed, nodes, to, dry, &BTreeSet::new()).await;
    if !moves.is_empty() {
        run.conclude(ctl, lock.as_ref(), &placed, &moves, &affected).await?;
    }
    Ok(run.finish())
}

/// How long a move by service address waits for its read-write areas to be in sync on the
/// target (the primary's stream reconciles an unprotected backup every 1-5 s).
pub const RW_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The read-write areas that move with a service address from the SN reporting `from` to the
/// one reporting `to`: embedded-server areas `from` serves (`primary`) and `to` holds in
/// standby (`backup`, the other end of a symmetric pair), by area path.
pub fn rw_pairs(from: &[crate::RwAreaStatus], to: &[crate::RwAreaStatus]) -> Vec<String> {
    from.iter()
        .filter(|a| a.kind == "rw" && a.role == "primary")
        .filter(|a| to.iter().any(|b| b.kind == "rw" && b.role == "backup" && b.area == a.area))
        .map(|a| a.area.clone())
        .collect()
}

/// `Ok` when each of `areas` is in sync: protected on `from` (every change on `to` before its
/// reply) and on `to` (`from`'s stream connected, its last pass applied); else why not.
pub fn rw_in_sync(areas: &[String], from: &[crate::RwAreaStatus], to: &[crate::RwAreaStatus]) -> Result<(), String> {
    let mut why = Vec::new();
    for area in areas {
        let f = from.iter().find(|a| a.kind == "rw" && a.area == *area);
        let t = to.iter().find(|a| a.kind == "rw" && a.area == *area);
        match (f, t) {
            (Some(f), Some(t)) if f.role == "primary" && t.role == "backup" && f.protected && t.protected => {}
            (Some(f), Some(t)) if f.role != "primary" || t.role != "backup" => {
                why.push(format!("{area}: roles are now {} and {} (not primary and backup)", f.role, t.role))
            }
            (Some(f), Some(t)) => why.push(format!(
                "{area}: {}",
                [(f, "source"), (t, "target")]
                    .iter()
                    .filter(|(a, _)| !a.protected)
                    .map(|(a, side)| format!(
                        "{side} unprotected ({})",
                        a.reason.as_deref().unwrap_or("no reason given")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => why.push(format!("{area}: no longer reported by both SNs")),
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

/// `Ok` when the released side of each of `areas` (in standby now) reports no lag: every change it
/// served is acknowledged by its peer (the release's flush succeeded).
pub fn unflushed(areas: &[String], released: &[crate::RwAreaStatus]) -> Result<(), String> {
    let mut why = Vec::new();
    for area in areas {
        match released.iter().find(|a| a.kind == "rw" && a.area == *area) {
            Some(a) if a.role == "backup" && a.lag_seconds == 0.0 && a.lag_bytes == 0 => {}
            Some(a) if a.role != "backup" => why.push(format!("{area} is still served there (role {})", a.role)),
            Some(a) => why.push(format!(
                "{area}: changes served there for {:.1} s ({} bytes) are not on its peer (the release's flush failed)",
                a.lag_seconds, a.lag_bytes
            )),
            None => why.push(format!("{area}: not reported after the release")),
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

/// Asks both SNs until `areas` are in sync ([`rw_in_sync`]) or `within` passed.
async fn wait_rw_in_sync(
    ctl: &Controller,
    from: &model::ServiceNode,
    to: &model::ServiceNode,
    areas: &[String],
    within: std::time::Duration,
) -> Result<(), String> {
    let t0 = std::time::Instant::now();
    loop {
        let r = match (crate::sn::statelite_rw_sn(ctl, from).await, crate::sn::statelite_rw_sn(ctl, to).await) {
            (Ok(f), Ok(t)) => rw_in_sync(areas, &f, &t),
            (Err(e), _) => Err(format!("status of {}: {e:#}", from.name)),
            (_, Err(e)) => Err(format!("status of {}: {e:#}", to.name)),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) if t0.elapsed() >= within => return Err(format!("not in sync within {} s: {e}", within.as_secs())),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

/// `a is` / `a, b are`.
fn are(areas: &[String]) -> String {
    format!("{} {}", areas.join(", "), if areas.len() == 1 { "is" } else { "are" })
}

/// A move by service address: `from` (serving the nodes) has a service address and read-write
/// areas whose other end is in standby on `to`.
struct RwPair {
    from: model::ServiceNode,
    to: model::ServiceNode,
    address: String,
    areas: Vec<String>,
}

/// Whether the data served by `from` moves to `to` with `address` (decided by what both agents
/// report, `StateliteRwStatus`: the MN's config does not say which areas an agent serves
/// itself). `None`: the MN's copy and `refer=`, as for kernel nfsd.
async fn rw_pair(
    run: &mut Run<'_, '_>,
    ctl: &Controller,
    from: model::ServiceNode,
    to: model::ServiceNode,
    address: String,
) -> Option<RwPair> {
    let (f, t) = match (crate::sn::statelite_rw_sn(ctl, &from).await, crate::sn::statelite_rw_sn(ctl, &to).await) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => {
            run.step(format!("read-write areas of {} and {} unknown ({e:#}): moving by copy", from.name, to.name));
            return None;
        }
    };
    let areas = rw_pairs(&f, &t);
    if areas.is_empty() {
        return None;
    }
    Some(RwPair { from, to, address, areas })
}

/// `migrate` of the nodes of an SN whose read-write areas are replicated to `to`: the other
/// areas copied by the MN (all or nothing), the read-write ones checked in sync on `to`, then
/// the service address released on the SN (its areas demoted: the stream flushed, no client
/// served), checked gone, and claimed on `to` (promoted: served with the same handles, its own
/// write verifier making clients resend what they had not committed); the move recorded and
/// exported as by copy.
async fn by_address(
    mut run: Run<'_, '_>,
    ctl: &Arc<Controller>,
    lock: Option<crate::PlacementLock>,
    placed: &Cluster,
    nodes: &[String],
    pair: RwPair,
    dry: bool,
) -> Result<MoveReport> {
    let RwPair { from, to, address, areas } = pair;
    // The address carries every node that mounts from it: all of them move, or none.
    let all: Vec<String> = placed
        .nodes()
        .iter()
        .filter(|n| placed.serving(&n.name) == Some(from.name.as_str()))
        .map(|n| n.name.clone())
        .collect();
    let left: Vec<&String> = all.iter().filter(|n| !nodes.contains(n)).collect();
    if !left.is_empty() {
        return Err(BadInput(format!(
            "{}'s read-write area{} {} follow{} its service address {address}: moving it moves every node {} serves; \
             name {} too",
            from.name,
            if areas.len() == 1 { "" } else { "s" },
            areas.join(", "),
            if areas.len() == 1 { "s" } else { "" },
            from.name,
            left.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ))
        .into());
    }
    run.rep.via = Some("service_address");
    run.rep.rw_areas = areas.clone();
    run.step(format!(
        "{} on the embedded read-write server of {} follow{} its service address {address}: {} by moving the address to {} (no copy by the MN for {})",
        areas.join(", "),
        from.name,
        if areas.len() == 1 { "s" } else { "" },
        if dry { "would move" } else { "moving" },
        to.name,
        if areas.len() == 1 { "it" } else { "them" },
    ));
    let skip: BTreeSet<String> = areas.iter().cloned().collect();
    let (moves, mut affected) = final_copies(&mut run, ctl, placed, nodes, &to.name, dry, &skip).await;
    if !run.rep.failed.is_empty() {
        run.rep.moved.clear();
        run.step("nothing moved: a final copy failed (the address stays; the SN serves as before)".into());
        return Ok(run.finish());
    }
    if dry {
        run.step(format!("would wait until {} in sync on {} (protected on both ends)", are(&areas), to.name));
    } else {
        match wait_rw_in_sync(ctl, &from, &to, &areas, RW_SYNC_WAIT).await {
            Ok(()) => run.step(format!("{} in sync on {}: every change there before its reply", are(&areas), to.name)),
            Err(e) => {
                run.rep.moved.clear();
                run.step(format!("nothing moved: {e}"));
                run.rep.failed.push(NodeFailure { node: show(&moves), reason: e });
                return Ok(run.finish());
            }
        }
    }
    affected.insert(from.name.clone());
    let check = Some((&from, areas.as_slice()));
    let row = move_address(&mut run, ctl, placed, &address, std::slice::from_ref(&from.name), &to, check, dry).await;
    let ok = row.claimed || dry;
    run.rep.address = Some(row);
    if !ok {
        run.rep.moved.clear();
        run.rep.failed.push(NodeFailure { node: show(&moves), reason: format!("service address {address} not moved") });
        return Ok(run.finish());
    }
    run.conclude(ctl, lock.as_ref(), placed, &moves, &affected).await?;
    Ok(run.finish())
}

/// The final copy of each node's statelite data from the SN serving it to `to` (a dry run says
/// it would): the nodes whose every area made it, as moves, and the SNs whose exports change.
async fn final_copies(
    run: &mut Run<'_, '_>,
    ctl: &Arc<Controller>,
    placed: &Cluster,
    nodes: &[String],
    to: &str,
    dry: bool,
    skip: &BTreeSet<String>,
) -> (Vec<(String, String)>, BTreeSet<String>) {
    let mut moves = Vec::new();
    let mut affected = BTreeSet::from([to.to_string()]);
    for n in nodes {
        let (Some(node), Some(from)) = (placed.node(n), placed.serving(n)) else { continue };
        let mut failed = None;
        // Read-write areas replicated by their agents move with the service address instead.
        for area in placed.statelite().iter().filter(|a| !skip.contains(a.path.as_str())) {
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
    (moves, affected)
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
    if !dry {
        let mut areas = Vec::new();
        for sn in moves.iter().map(|(_, b)| b.clone()).collect::<BTreeSet<_>>() {
            if let Some(s) = placed.sn(&sn) {
                match crate::sn::statelite_rw_sn(ctl, s).await {
                    Ok(a) => areas.push((sn, a)),
                    Err(e) => run.step(format!("data age on {sn} unknown: {e:#}")),
                }
            }
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        for d in data_ages(&moves, &areas, now) {
            let line = crate::report::data_age_line(&d.node, d.seconds.map(std::time::Duration::from_secs_f64));
            run.step(format!("{line} ({} on {})", d.area, d.sn));
            run.rep.data_age.push(d);
        }
    }
    // Re-export on every live SN (all but the fenced one), from the new placement.
    let live: BTreeSet<String> = placed.sns().iter().map(|s| s.name.clone()).filter(|s| *s != dead.name).collect();
    run.conclude(ctl, lock.as_ref(), &placed, &moves, &live).await?;
    Ok(run.finish())
}

/// `migrate --back`: gives `name` its services back after a failover, once it is healthy again.
///
/// Refused (nothing changed) unless `name` was failed over (fenced in the daemon's health report,
/// its service address taken over, or nodes of it served elsewhere) and answers now (agent
/// handshake and NFS on its own address: its service address is still the backup's). Then, under
/// the placement lock: the final copy of each moved node's statelite data back to `name` (all or
/// nothing), the service address released on the backup holding it and checked gone there
/// (released again: `absent`), and only then claimed on `name` (never two holders; a failed claim
/// gives it back to the backup); the placements moved back and the exports pushed; xCAT
/// repointed; the return recorded in `returns.json` (a running daemon probes `name` as up from
/// then on, with its hold-down) and in `health.json`.
pub async fn back(ctl: &Arc<Controller>, name: &str, dry: bool, hooks: &mut Hooks<'_>) -> Result<MoveReport> {
    let (placed, _) = ctl.placed()?;
    let Some(sn) = placed.sn(name).cloned() else {
        return Err(BadInput(format!("no SN named `{name}`")).into());
    };
    let mut run = Run { rep: MoveReport { dry_run: dry, ..Default::default() }, hooks };
    // Was it failed over? The daemon's report, and the recorded placement.
    let health = ctl.state.load_health()?;
    let state = health.as_ref().and_then(|h| h.report.sns.iter().find(|s| s.name == name)).map(|s| s.state);
    let takeover = health.as_ref().and_then(|h| h.takeovers.iter().find(|t| t.service == name && t.ok)).cloned();
    let moved: Vec<String> = placed
        .nodes()
        .iter()
        .filter(|n| ctl.cluster.placement().configured(&n.name) == Some(name) && placed.serving(&n.name) != Some(name))
        .map(|n| n.name.clone())
        .collect();
    if state != Some(health::HealthState::Fenced) && takeover.is_none() && moved.is_empty() {
        let st = state.map_or("no health report", |s| s.as_str());
        return refuse(run, name, format!("{name} was not failed over (health: {st}; no node of it served elsewhere)"));
    }
    // Healthy again? Its NFS is probed on its own address: the service address is the backup's.
    let mut cfg = crate::monitor::probe_config(&placed);
    cfg.service_address.remove(name);
    let probe = crate::monitor::probe(ctl, &sn, &cfg).await;
    let bad: Vec<String> = [("agent", &probe.agent), ("nfs", &probe.nfs)]
        .into_iter()
        .filter_map(|(part, c)| match c {
            health::Check::Ok => None,
            health::Check::Refused(r) | health::Check::Silent(r) | health::Check::Local(r) => {
                Some(format!("{part}: {r}"))
            }
        })
        .collect();
    if !bad.is_empty() {
        return refuse(run, name, format!("{name} is not healthy: {}", bad.join("; ")));
    }
    run.step(format!("{name} is healthy: agent handshake and NFS/MOUNT NULL on {} answered", sn.address));
    let (lock, placed) = locked(ctl, dry).await?;
    let holders: Vec<String> = match &takeover {
        Some(t) => vec![t.to.clone()],
        // No takeover recorded (`hanfs failover`, another daemon): any backup may hold it.
        None => sn.backups.iter().filter(|b| placed.sn(b).is_some() && *b != name).cloned().collect(),
    };
    // Read-write areas the holder serves and `name` holds in standby (a symmetric pair: the
    // holder reconciled `name` when it came back and streams to it) come back with the address.
    let mut pair = None;
    if let Some(addr) = sn.service_address {
        for h in holders.iter().filter_map(|h| placed.sn(h)).cloned().collect::<Vec<_>>() {
            pair = rw_pair(&mut run, ctl, h, sn.clone(), addr.to_string()).await;
            if pair.is_some() {
                break;
            }
        }
    }
    let skip: BTreeSet<String> = pair.iter().flat_map(|p| p.areas.iter().cloned()).collect();
    run.rep.via = Some(if pair.is_some() { "service_address" } else { "copy" });
    if let Some(p) = &pair {
        run.rep.rw_areas = p.areas.clone();
        run.step(format!(
            "{} on the embedded read-write server: copied back to {name} by {}'s own stream (no copy by the MN)",
            p.areas.join(", "),
            p.from.name
        ));
    }
    let (moves, mut affected) = final_copies(&mut run, ctl, &placed, &moved, name, dry, &skip).await;
    if !run.rep.failed.is_empty() {
        // All or nothing: a node left on the backup must keep reaching it at the service address.
        run.rep.moved.clear();
        run.step("nothing returned: a final copy failed (the copies made are kept; the backup still serves)".into());
        return Ok(run.finish());
    }
    if let Some(p) = &pair {
        if dry {
            run.step(format!("would wait until {} in sync on {name} (protected on both ends)", are(&p.areas)));
        } else if let Err(e) = wait_rw_in_sync(ctl, &p.from, &p.to, &p.areas, RW_SYNC_WAIT).await {
            run.rep.moved.clear();
            run.step(format!("nothing returned: {e} (the backup still serves)"));
            run.rep.failed.push(NodeFailure { node: name.to_string(), reason: e });
            return Ok(run.finish());
        } else {
            run.step(format!("{} in sync on {name}: every change there before its reply", are(&p.areas)));
        }
    }
    if let Some(addr) = sn.service_address {
        affected.extend(holders.iter().cloned());
        let check = pair.as_ref().map(|p| (&p.from, p.areas.as_slice()));
        let row = move_address(&mut run, ctl, &placed, &addr.to_string(), &holders, &sn, check, dry).await;
        let ok = row.claimed || dry;
        run.rep.address = Some(row);
        if !ok {
            run.rep.moved.clear();
            run.rep
                .failed
                .push(NodeFailure { node: name.to_string(), reason: "service address not moved back".into() });
            return Ok(run.finish());
        }
    } else {
        run.step(format!("{name} has no service_address: no address to move back"));
    }
    run.conclude(ctl, lock.as_ref(), &placed, &moves, &affected).await?;
    match &lock {
        None => run.step(format!("would record {name}'s return in {}", ctl.state.returns_file().display())),
        Some(l) => {
            let now = unix_now();
            let generation = l.record_return(name, now)?;
            mark_returned(ctl, name, now)?;
            run.rep.returned = Some(generation);
            run.step(format!(
                "recorded {name}'s return in {} (generation {generation}): health up, a running daemon probes it as up",
                ctl.state.returns_file().display()
            ));
        }
    }
    Ok(run.finish())
}

/// A refused `migrate --back`: nothing changed.
fn refuse(mut run: Run<'_, '_>, name: &str, reason: String) -> Result<MoveReport> {
    run.step(format!("nothing returned: {reason}"));
    run.rep.failed.push(NodeFailure { node: name.to_string(), reason });
    Ok(run.finish())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Releases `address` on each of `holders`, checks it is gone there (a second release must find
/// it `absent`), then claims it on `sn`. Any failure before the claim leaves it where it was; a
/// failed claim gives it back to the first holder. `flushed`: read-write areas that move with
/// the address, and the holder that served them: after the release, its status must show that
/// nothing it served is missing on `sn` (the release's flush succeeded), else the address goes
/// back to it.
#[allow(clippy::too_many_arguments)]
async fn move_address(
    run: &mut Run<'_, '_>,
    ctl: &Controller,
    placed: &Cluster,
    address: &str,
    holders: &[String],
    sn: &model::ServiceNode,
    flushed: Option<(&model::ServiceNode, &[String])>,
    dry: bool,
) -> AddressRow {
    let mut row = AddressRow {
        address: address.to_string(),
        from: holders.to_vec(),
        to: sn.name.clone(),
        released: false,
        claimed: false,
        detail: String::new(),
    };
    if dry {
        for h in holders {
            run.step(format!("would release {address} on {h} and check it is gone there"));
        }
        run.step(format!("would claim {address} on {}", sn.name));
        return row;
    }
    let mut released = Vec::new();
    for h in holders {
        let Some(hsn) = placed.sn(h) else { continue };
        let gone = match crate::address::release(ctl, hsn, address).await {
            Ok(r) => {
                run.step(format!("released {address} on {h}: {}", r.change));
                crate::address::release(ctl, hsn, address).await.map(|again| again.change)
            }
            Err(e) => Err(e),
        };
        match gone {
            Ok(c) if c == "absent" => released.push(hsn),
            Ok(c) => {
                row.detail = format!("{address} still on {h} after its release (second release: {c})");
                break;
            }
            Err(e) => {
                row.detail = format!("release of {address} on {h} failed: {e}");
                break;
            }
        }
    }
    if released.len() != holders.len() {
        run.step(format!("{address} NOT moved back: {}", row.detail));
        return row;
    }
    row.released = true;
    run.step(format!(
        "{address} is gone from {}",
        if holders.is_empty() { "every backup".into() } else { holders.join(", ") }
    ));
    if let Some((src, areas)) = flushed {
        let missing = match crate::sn::statelite_rw_sn(ctl, src).await {
            Ok(st) => unflushed(areas, &st),
            Err(e) => Err(format!("status of {}: {e:#}", src.name)),
        };
        match missing {
            Ok(()) => run.step(format!("{} flushed: {} has everything {} served", are(areas), sn.name, src.name)),
            Err(e) => {
                row.claimed = false;
                row.detail = format!("not claimed on {}: {e}", sn.name);
                run.step(format!("{address} NOT moved: {}", row.detail));
                give_back(run, ctl, src, address).await;
                return row;
            }
        }
    }
    match crate::address::claim(ctl, sn, address).await {
        Ok(r) => {
            row.claimed = true;
            row.detail = format!("{} (announced: {}) {}", r.change, r.announced, r.detail);
            run.step(format!("claimed {address} on {}: {}", sn.name, row.detail));
        }
        Err(e) => {
            row.detail = format!("claim of {address} on {} failed: {e}", sn.name);
            run.step(format!("{address} NOT moved back: {}", row.detail));
            if let Some(h) = released.first() {
                give_back(run, ctl, h, address).await;
            }
        }
    }
    row
}

/// Claims `address` again on `sn`, which held it before a move that did not complete.
async fn give_back(run: &mut Run<'_, '_>, ctl: &Controller, sn: &model::ServiceNode, address: &str) {
    let back = crate::address::claim(ctl, sn, address).await;
    run.step(match back {
        Ok(_) => format!("{address} claimed again on {}: it serves as before", sn.name),
        Err(e) => format!("{address} could NOT be claimed again on {}: {e} (no SN holds it now)", sn.name),
    });
}

/// `health.json` after a return: `name` up and serving itself, nobody serving for it, its
/// takeover gone (a running daemon rewrites the file from its own detector, which says the same
/// once it has read `returns.json`).
fn mark_returned(ctl: &Controller, name: &str, now: u64) -> Result<()> {
    let Some(mut h) = ctl.state.load_health()? else { return Ok(()) };
    for s in &mut h.report.sns {
        if s.name == name {
            s.state = health::HealthState::Up;
            s.fence = None;
            s.failing_since = None;
            s.reason = None;
            s.served_by = None;
        }
        s.serving_for.retain(|x| x != name);
        if s.state == health::HealthState::ServingFor && s.serving_for.is_empty() {
            s.state = health::HealthState::Up;
        }
    }
    h.report.waiting_for_backup.retain(|x| x != name);
    h.takeovers.retain(|t| t.service != name);
    h.updated = now;
    ctl.state.record_health(&h)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kernel(role: &str, nodes: &[&str], at: Option<i64>) -> crate::RwAreaStatus {
        crate::RwAreaStatus::from(proto::reply::KernelArea {
            area: proto::AbsPath::parse("/kdata").unwrap(),
            role: role.into(),
            connected: at.is_some(),
            lag_ms: 0,
            lag_bytes: 0,
            in_sync_at_ms: at,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        })
    }

    fn rw(area: &str, role: &str, protected: bool, reason: Option<&str>) -> crate::RwAreaStatus {
        crate::RwAreaStatus::from(proto::reply::RwArea {
            area: proto::AbsPath::parse(area).unwrap(),
            role: role.into(),
            protected,
            reason: reason.map(str::to_string),
            lag_ms: 0,
            lag_bytes: 0,
            last_reconcile: None,
            last_reconcile_ok: None,
            last_reconcile_result: None,
        })
    }

    #[test]
    fn only_areas_served_on_the_source_and_in_standby_on_the_target_move_with_the_address() {
        let from = vec![
            rw("/nodedata", "primary", true, None),
            rw("/gpudata", "backup", true, None),
            rw("/scratch", "primary", true, None),
            kernel("primary", &["cn001"], Some(1)),
        ];
        let to = vec![
            rw("/nodedata", "backup", true, None),
            // Served on both (split brain): no pair to move.
            rw("/gpudata", "primary", true, None),
            kernel("backup", &["cn001"], Some(1)),
        ];
        assert_eq!(rw_pairs(&from, &to), vec!["/nodedata".to_string()]);
        assert!(rw_pairs(&to, &from).contains(&"/gpudata".to_string()));
        assert!(rw_pairs(&from, &[]).is_empty());
    }

    #[test]
    fn a_pair_is_in_sync_only_when_both_ends_are_protected_and_the_reason_says_which_is_not() {
        let areas = vec!["/nodedata".to_string()];
        let f = vec![rw("/nodedata", "primary", true, None)];
        let t = vec![rw("/nodedata", "backup", true, None)];
        assert_eq!(rw_in_sync(&areas, &f, &t), Ok(()));
        let t_down = vec![rw("/nodedata", "backup", false, Some("no stream from the primary"))];
        let e = rw_in_sync(&areas, &f, &t_down).unwrap_err();
        assert_eq!(e, "/nodedata: target unprotected (no stream from the primary)");
        let f_down = vec![rw("/nodedata", "primary", false, Some("dialling the backup: refused"))];
        let e = rw_in_sync(&areas, &f_down, &t).unwrap_err();
        assert_eq!(e, "/nodedata: source unprotected (dialling the backup: refused)");
        // The roles turned (a takeover meanwhile): not in sync for this move.
        let e = rw_in_sync(&areas, &t, &f).unwrap_err();
        assert!(e.contains("roles are now backup and primary"), "{e}");
        assert!(rw_in_sync(&areas, &f, &[]).unwrap_err().contains("no longer reported"));
    }

    #[test]
    fn the_claim_waits_for_a_released_side_with_nothing_unacknowledged() {
        let areas = vec!["/nodedata".to_string()];
        assert_eq!(unflushed(&areas, &[rw("/nodedata", "backup", false, Some("no stream"))]), Ok(()));
        let mut lagging = rw("/nodedata", "backup", false, None);
        lagging.lag_seconds = 0.5;
        lagging.lag_bytes = 4096;
        let e = unflushed(&areas, &[lagging]).unwrap_err();
        assert!(e.contains("0.5 s (4096 bytes) are not on its peer"), "{e}");
        assert!(unflushed(&areas, &[rw("/nodedata", "primary", true, None)]).unwrap_err().contains("still served"));
        assert!(unflushed(&areas, &[]).unwrap_err().contains("not reported"));
    }

    #[test]
    fn each_moved_node_gets_the_data_age_of_the_backup_copy_it_moved_to() {
        let moves = vec![("cn001".to_string(), "sn2".to_string()), ("cn002".to_string(), "sn3".to_string())];
        let areas = vec![
            // sn2 is also the primary of another area: only its backup copies count.
            (
                "sn2".to_string(),
                vec![kernel("primary", &["cn001"], Some(1_000)), kernel("backup", &["cn001"], Some(1_700_000_000_000))],
            ),
            ("sn3".to_string(), vec![kernel("backup", &["cn002", "cn003"], None)]),
        ];
        let d = data_ages(&moves, &areas, 1_700_000_002.5);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!((d[0].node.as_str(), d[0].sn.as_str(), d[0].seconds), ("cn001", "sn2", Some(2.5)));
        assert_eq!((d[1].node.as_str(), d[1].seconds), ("cn002", None));
        let j = serde_json::to_value(MoveReport { data_age: d, ..Default::default() }).unwrap();
        assert_eq!(j["data_age"][0]["area"], "/kdata");
        assert_eq!(j["data_age"][0]["seconds"], 2.5);
        assert!(j["data_age"][1]["seconds"].is_null());
        // A node not in any kernel area of its new SN has no row.
        assert!(data_ages(&[("cn009".into(), "sn2".into())], &areas, 0.0).is_empty());
    }
}
