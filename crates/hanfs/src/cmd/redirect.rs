//! `hanfs migrate` (planned move of nodes' statelite data) and `hanfs failover` (unplanned: fence,
//! promote backups). Both end the same way: the move is recorded in the overlay (`state_dir/served_by`),
//! exports are re-rendered from it and pushed, and xCAT is repointed.

use super::{load_cluster, print_json};
use crate::cli::{FailoverArgs, Global, MigrateArgs, XcatRepoint};
use crate::exit::{bad_input, Status};
use anyhow::Result;
use controller::statelite::{self as sl, StateliteReport};
use controller::Controller;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug, Default, Serialize)]
struct MoveReport {
    ok: bool,
    dry_run: bool,
    /// (node, new SN) of every node moved (or that would be, with --dry-run).
    moved: Vec<Moved>,
    failed: Vec<NodeFailure>,
    statelite: Vec<StateliteReport>,
    exports: Vec<ExportsRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fence: Option<FenceRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xcat: Option<serde_json::Value>,
    steps: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Moved {
    node: String,
    from: String,
    to: String,
}

#[derive(Debug, Serialize)]
struct NodeFailure {
    node: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct ExportsRow {
    sn: String,
    ok: bool,
    output: String,
}

#[derive(Debug, Serialize)]
struct FenceRow {
    command: Vec<String>,
    ok: bool,
    output: String,
}

impl MoveReport {
    /// Records a step and prints it as it happens (stderr under --json, whose stdout is the report).
    fn step(&mut self, g: &Global, s: String) {
        if g.json {
            eprintln!("hanfs: {s}");
        } else if !g.quiet {
            println!("{s}");
        }
        self.steps.push(s);
    }
}

fn controller(g: &Global, cluster: model::Cluster) -> Result<Controller> {
    Controller::new(cluster).map_err(|e| bad_input(format!("{}: {e:#}", g.config.display())))
}

/// Renders every SN's exports from `cluster` and writes them on `sns` (dry run: prints them).
async fn reexport(g: &Global, ctl: &Controller, sns: &BTreeSet<String>, dry: bool, rep: &mut MoveReport) -> Result<()> {
    let rendered = controller::render_exports(&ctl.cluster)?;
    for (sn, text) in rendered.into_iter().filter(|(s, _)| sns.contains(s)) {
        if dry {
            rep.step(g, format!("would write the exports of {sn}:\n{}", text.trim_end()));
            continue;
        }
        let (ok, output) = match sl::push_exports(ctl, &sn, text).await {
            Ok(r) => r,
            Err(e) => (false, format!("{e:#}")),
        };
        rep.step(
            g,
            format!(
                "exports of {sn}: {}",
                if ok { "written, reloaded".to_string() } else { format!("FAILED: {output}") }
            ),
        );
        rep.exports.push(ExportsRow { sn, ok, output });
    }
    Ok(())
}

/// Repoints the moved nodes in xCAT (print, or run with --apply-xcat) through `xcat::redirect`.
#[cfg(feature = "xcat")]
fn repoint(
    g: &Global,
    x: &XcatRepoint,
    state_dir: &Path,
    moves: &[(String, String)],
    dry: bool,
    rep: &mut MoveReport,
) -> bool {
    if moves.is_empty() {
        return true;
    }
    let Ok(source) = super::xcat::spec(&x.source) else {
        for (node, to) in moves {
            rep.step(
                g,
                format!("xCAT not repointed (no --tabdump/--sqlite/--cfgloc given): run `hanfs xcat redirect --cfgloc /etc/xcat/cfgloc --node {node} --to {to} --apply`"),
            );
        }
        return true;
    };
    let templates = match &x.templates {
        Some(f) => match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| xcat::redirect::Templates::from_toml(&f.display().to_string(), &t).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => {
                rep.step(g, format!("xCAT: templates {}: {e}", f.display()));
                return false;
            }
        },
        None => xcat::redirect::Templates::default(),
    };
    let mode = if x.apply_xcat && !dry {
        xcat::redirect::Mode::Apply { log: xcat::redirect::default_log(state_dir) }
    } else {
        xcat::redirect::Mode::DryRun
    };
    let nm: Vec<xcat::redirect::NodeMove> =
        moves.iter().map(|(n, t)| xcat::redirect::NodeMove { node: n.clone(), to: t.clone(), address: None }).collect();
    match xcat::redirect::redirect(&source, &nm, &templates, &mode) {
        Ok(o) => {
            let verb = if matches!(mode, xcat::redirect::Mode::Apply { .. }) { "ran" } else { "to run" };
            for c in &o.commands {
                let line = c.argv.iter().map(|a| super::xcat::shell_quote(a)).collect::<Vec<_>>().join(" ");
                rep.step(g, format!("xCAT ({verb}): {line}"));
            }
            rep.xcat = serde_json::to_value(&o).ok();
            true
        }
        Err(e) => {
            rep.step(g, format!("xCAT repoint FAILED: {e}"));
            false
        }
    }
}

/// Without the `xcat` feature: with no xCAT source given, the same hint as the full build; with one,
/// the repoint fails (the moves themselves are done) and says why.
#[cfg(not(feature = "xcat"))]
fn repoint(
    g: &Global,
    x: &XcatRepoint,
    _state_dir: &Path,
    moves: &[(String, String)],
    _dry: bool,
    rep: &mut MoveReport,
) -> bool {
    if moves.is_empty() {
        return true;
    }
    let s = &x.source;
    if s.tabdump.is_none() && s.sqlite.is_none() && s.cfgloc.is_none() {
        for (node, to) in moves {
            rep.step(
                g,
                format!("xCAT not repointed (no --tabdump/--sqlite/--cfgloc given): run `hanfs xcat redirect --cfgloc /etc/xcat/cfgloc --node {node} --to {to} --apply`"),
            );
        }
        return true;
    }
    rep.step(g, format!("xCAT repoint FAILED: {}", super::WITHOUT_XCAT));
    false
}

fn finish(g: &Global, what: &str, mut rep: MoveReport) -> Result<Status> {
    rep.ok = rep.failed.is_empty() && rep.exports.iter().all(|e| e.ok);
    if g.json {
        print_json(&rep)?;
    }
    if rep.ok {
        return Ok(Status::Ok);
    }
    let mut why: Vec<String> = rep.failed.iter().map(|f| format!("{} ({})", f.node, f.reason)).collect();
    why.extend(rep.exports.iter().filter(|e| !e.ok).map(|e| format!("exports of {} ({})", e.sn, e.output)));
    eprintln!("hanfs {what}: failed: {}", why.join("; "));
    Ok(Status::Failed)
}

/// Takes the statelite lock before the placement is read (see `controller::statelite::lock`).
fn locked_cluster(g: &Global, dry: bool) -> Result<(model::Cluster, Option<sl::Lock>)> {
    let cluster = load_cluster(g)?;
    if dry {
        return Ok((cluster, None));
    }
    let l = sl::lock(Path::new(cluster.state_dir().as_str()))?;
    Ok((load_cluster(g)?, Some(l)))
}

pub fn migrate(g: &Global, a: MigrateArgs) -> Result<Status> {
    let (cluster, _lock) = locked_cluster(g, a.dry_run)?;
    // The model checks the moves (node and SN exist, the node is not there already) before anything
    // is synced.
    let requested: BTreeMap<String, String> = a.nodes.iter().map(|n| (n.clone(), a.to.clone())).collect();
    if let Err(e) = cluster.with_moves(&requested) {
        return Err(bad_input(match e {
            model::MoveError::AlreadyServed { .. } => {
                format!("{e} (`hanfs sync` re-pushes its exports if a move was interrupted)")
            }
            _ => format!("{}: {e}", g.config.display()),
        }));
    }
    let state_dir = Path::new(cluster.state_dir().as_str()).to_path_buf();
    let ctl = controller(g, cluster.clone())?;
    let mut rep = MoveReport { dry_run: a.dry_run, ..Default::default() };
    let rt = super::runtime()?;
    // 1. Final sync of each node's data to the target; a node moves only if all its areas made it.
    let mut moves = Vec::new();
    let mut affected = BTreeSet::from([a.to.clone()]);
    for n in &a.nodes {
        let (Some(node), Some(from)) = (cluster.node(n), cluster.serving(n)) else { continue };
        let mut failed = None;
        for area in cluster.statelite() {
            let p = sl::Pair {
                area: area.name.clone(),
                path: area.path.as_str().to_string(),
                node: n.clone(),
                from: from.to_string(),
                to: a.to.clone(),
            };
            if a.dry_run {
                rep.step(g, format!("would sync {}/{n} from {} to {}", area.path.as_str(), p.from, p.to));
                continue;
            }
            let r = rt.block_on(sl::sync_pair(&ctl, &p));
            rep.step(
                g,
                match &r.error {
                    None => format!(
                        "synced {}/{n} {} -> {}: generation {}, {} files",
                        area.path.as_str(),
                        r.from,
                        r.to,
                        r.generation,
                        r.files_sent
                    ),
                    Some(e) => format!("sync of {}/{n} {} -> {} FAILED: {e}", area.path.as_str(), r.from, r.to),
                },
            );
            if let Some(e) = &r.error {
                failed.get_or_insert(format!("final sync of {}: {e}", area.name));
            }
            rep.statelite.push(r);
        }
        match failed {
            Some(reason) => rep.failed.push(NodeFailure { node: n.clone(), reason }),
            None => {
                affected.insert(from.to_string());
                affected.extend(node.sns.first().cloned());
                rep.moved.push(Moved { node: n.clone(), from: from.to_string(), to: a.to.clone() });
                moves.push((n.clone(), a.to.clone()));
            }
        }
    }
    // 2. The move is recorded before any export changes, so a crash in between re-renders the same.
    if !moves.is_empty() {
        let after = record(g, &cluster, &moves, a.dry_run, &mut rep)?;
        // 3. rw on the new SN, refer= on the old (home) one.
        let ctl2 = controller(g, after)?;
        rt.block_on(reexport(g, &ctl2, &affected, a.dry_run, &mut rep))?;
        // 4. xCAT.
        if !repoint(g, &a.xcat, &state_dir, &moves, a.dry_run, &mut rep) {
            rep.failed.push(NodeFailure { node: show(&moves), reason: "xCAT repoint failed".into() });
        }
    }
    finish(g, "migrate", rep)
}

/// Records the moves (or says it would, on a dry run) before any export changes, so a crash in
/// between re-renders the same; returns the cluster with the moves applied.
fn record(
    g: &Global,
    cluster: &model::Cluster,
    moves: &[(String, String)],
    dry_run: bool,
    rep: &mut MoveReport,
) -> Result<model::Cluster> {
    // Checked before anything is written: the overlay only ever holds moves the model accepts.
    let map: BTreeMap<String, String> = moves.iter().cloned().collect();
    let after = cluster.with_moves(&map).map_err(|e| bad_input(format!("{}: {e}", g.config.display())))?;
    let file = Path::new(cluster.state_dir().as_str()).join("served_by");
    if dry_run {
        rep.step(g, format!("would record in {}: {}", file.display(), show(moves)));
    } else {
        sl::record_moves(cluster, moves)?;
        rep.step(g, format!("recorded in {}: {}", file.display(), show(moves)));
    }
    Ok(after)
}

fn show(moves: &[(String, String)]) -> String {
    moves.iter().map(|(n, s)| format!("{n} -> {s}")).collect::<Vec<_>>().join(", ")
}

/// Runs the fence template with `{sn}`/`{address}` substituted: (ok, output).
fn fence(cmd: &[String]) -> (bool, String) {
    let Some((prog, args)) = cmd.split_first() else { return (false, "no fence command".into()) };
    match std::process::Command::new(prog).args(args).stdin(std::process::Stdio::null()).output() {
        Ok(o) => {
            let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.push_str(&String::from_utf8_lossy(&o.stderr));
            (o.status.success(), if o.status.success() { out } else { format!("{} ({out})", o.status) })
        }
        Err(e) => (false, format!("`{prog}`: {e}")),
    }
}

/// How old the promoted copy is: what the node loses is what it wrote since (the oldest area counts).
fn copy_age(cluster: &model::Cluster, node: &str, sn: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let oldest =
        cluster.statelite().iter().filter_map(|ar| sl::load_record(cluster, &ar.name, node, sn).map(|r| r.2)).min();
    match oldest {
        Some(t) => format!("copy synced {} s ago", now.saturating_sub(t)),
        None => "no statelite areas".into(),
    }
}

pub fn failover(g: &Global, a: FailoverArgs) -> Result<Status> {
    let (cluster, _lock) = locked_cluster(g, a.dry_run)?;
    let Some(dead) = cluster.sn(&a.sn).cloned() else {
        return Err(bad_input(format!("{}: no SN named `{}`", g.config.display(), a.sn)));
    };
    let state_dir = Path::new(cluster.state_dir().as_str()).to_path_buf();
    let ctl = controller(g, cluster.clone())?;
    let mut rep = MoveReport { dry_run: a.dry_run, ..Default::default() };
    // 1. Fence first: promoting copies while the old SN may still write is split brain.
    let cmd: Vec<String> = cluster
        .fence()
        .iter()
        .map(|t| t.replace("{sn}", &dead.name).replace("{address}", &dead.address.to_string()))
        .collect();
    if a.dry_run {
        rep.step(
            g,
            format!(
                "would fence {}: {}",
                dead.name,
                if cmd.is_empty() { "(no fence command configured)".into() } else { cmd.join(" ") }
            ),
        );
    } else {
        let (ok, output) = if cmd.is_empty() {
            (false, "no fence command configured (cluster.fence())".to_string())
        } else {
            fence(&cmd)
        };
        rep.step(
            g,
            format!("fence {}: {}", dead.name, if ok { "ok".to_string() } else { format!("FAILED: {output}") }),
        );
        rep.fence = Some(FenceRow { command: cmd, ok, output: output.clone() });
        if !ok && !a.force {
            rep.step(
                g,
                "nothing promoted: fencing failed (--force promotes anyway, at the risk of split brain)".into(),
            );
            for n in cluster.placement().served_by(&dead.name) {
                rep.failed
                    .push(NodeFailure { node: n.to_string(), reason: format!("{} not fenced: {output}", dead.name) });
            }
            if rep.failed.is_empty() {
                rep.failed
                    .push(NodeFailure { node: "-".into(), reason: format!("{} not fenced: {output}", dead.name) });
            }
            return finish(g, "failover", rep);
        }
    }
    // 2. Promote each node's first reachable backup that holds its synced copy.
    let rt = super::runtime()?;
    let mut moves = Vec::new();
    for n in cluster.nodes().iter().filter(|n| cluster.serving(&n.name) == Some(dead.name.as_str())) {
        let mut why = Vec::new();
        let mut chosen = None;
        for b in n.sns.iter().filter(|s| **s != dead.name) {
            let r = if a.dry_run {
                // No session in a dry run: the MN's records say whether the copy was synced.
                match cluster.statelite().iter().find(|ar| sl::load_record(&cluster, &ar.name, &n.name, b).is_none()) {
                    Some(ar) => Err(anyhow::anyhow!("no synced copy of {} recorded", ar.name)),
                    None => Ok(()),
                }
            } else {
                rt.block_on(sl::holds_copy(&ctl, b, &n.name))
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
                rep.step(
                    g,
                    format!(
                        "{} {} on {b} (was {}; {})",
                        if a.dry_run { "would promote" } else { "promote" },
                        n.name,
                        dead.name,
                        copy_age(&cluster, &n.name, &b)
                    ),
                );
                rep.moved.push(Moved { node: n.name.clone(), from: dead.name.clone(), to: b.clone() });
                moves.push((n.name.clone(), b));
            }
            None => {
                let reason = if why.is_empty() { "no backup SN".to_string() } else { why.join("; ") };
                rep.step(g, format!("{} NOT promoted: {reason}", n.name));
                rep.failed.push(NodeFailure { node: n.name.clone(), reason });
            }
        }
    }
    let after = if moves.is_empty() { cluster.clone() } else { record(g, &cluster, &moves, a.dry_run, &mut rep)? };
    // 3. Re-export on every live SN (all but the fenced one), from the new placement.
    let live: BTreeSet<String> = after.sns().iter().map(|s| s.name.clone()).filter(|s| *s != dead.name).collect();
    let ctl2 = controller(g, after)?;
    rt.block_on(reexport(g, &ctl2, &live, a.dry_run, &mut rep))?;
    // 4. xCAT.
    if !repoint(g, &a.xcat, &state_dir, &moves, a.dry_run, &mut rep) {
        rep.failed.push(NodeFailure { node: show(&moves), reason: "xCAT repoint failed".into() });
    }
    finish(g, "failover", rep)
}
