//! `hanfs migrate` and `hanfs failover`: arguments, output, exit codes; the work is
//! `controller::redirect`. The xCAT repoint of moved nodes is done here, through `xcat::redirect`.

use super::print_json;
use crate::cli::{FailoverArgs, Global, MigrateArgs, XcatRepoint};
use crate::exit::{bad_input, Status};
use anyhow::Result;
use controller::redirect::{self as rd, MoveReport, Repointed};
use std::path::Path;

/// Prints a step as it happens (stderr under --json, whose stdout is the report).
fn step(g: &Global) -> impl FnMut(&str) + '_ {
    move |s| match (g.json, g.quiet) {
        (true, _) => eprintln!("hanfs: {s}"),
        (false, quiet) => _ = (!quiet).then(|| println!("{s}")),
    }
}

/// Repoints the moved nodes in xCAT (print, or run with --apply-xcat) through `xcat::redirect`.
#[cfg(feature = "xcat")]
fn repoint(x: &XcatRepoint, log: &Path, moves: &[(String, String)], dry: bool) -> Repointed {
    let Ok(source) = super::xcat::spec(&x.source) else {
        return Repointed { ok: true, steps: xcat::redirect::no_source_hint(moves), xcat: None };
    };
    let log = (x.apply_xcat && !dry).then(|| log.to_path_buf());
    let r = xcat::redirect::repoint(&source, x.templates.as_deref(), moves, log);
    Repointed { ok: r.ok, steps: r.steps, xcat: r.outcome.and_then(|o| serde_json::to_value(&o).ok()) }
}

/// Without the `xcat` feature: with no xCAT source given, the same hint as the full build; with one,
/// the repoint fails (the moves themselves are done) and says why.
#[cfg(not(feature = "xcat"))]
fn repoint(x: &XcatRepoint, _log: &Path, moves: &[(String, String)], _dry: bool) -> Repointed {
    let s = &x.source;
    if s.tabdump.is_none() && s.sqlite.is_none() && s.cfgloc.is_none() {
        let steps = moves
            .iter()
            .map(|(n, to)| {
                format!("xCAT not repointed: run `hanfs xcat redirect --node {n} --to {to} --apply` on the MN")
            })
            .collect();
        return Repointed { ok: true, steps, xcat: None };
    }
    Repointed { ok: false, steps: vec![format!("xCAT repoint FAILED: {}", super::WITHOUT_XCAT)], xcat: None }
}

fn finish(g: &Global, what: &str, r: Result<MoveReport>) -> Result<Status> {
    let rep = r.map_err(|e| match e.downcast_ref::<controller::BadInput>() {
        Some(b) => bad_input(format!("{}: {b}", g.config.display())),
        None => e,
    })?;
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

pub fn migrate(g: &Global, a: MigrateArgs) -> Result<Status> {
    let ctl = super::controller(g, None)?;
    let log = ctl.state.xcat_log();
    let mut step = step(g);
    let mut repoint = |m: &[(String, String)], dry: bool| repoint(&a.xcat, &log, m, dry);
    let mut hooks = rd::Hooks { step: &mut step, repoint: &mut repoint };
    let (rt, to) = (super::runtime()?, a.to.as_deref().unwrap_or_default());
    let r = match &a.back {
        Some(sn) => rt.block_on(rd::back(&ctl, sn, a.dry_run, &mut hooks)),
        None => rt.block_on(rd::migrate(&ctl, &a.nodes, to, a.dry_run, &mut hooks)),
    };
    finish(g, "migrate", r)
}

pub fn failover(g: &Global, a: FailoverArgs) -> Result<Status> {
    let ctl = super::controller(g, None)?;
    let log = ctl.state.xcat_log();
    let mut step = step(g);
    let mut repoint = |m: &[(String, String)], dry: bool| repoint(&a.xcat, &log, m, dry);
    let mut hooks = rd::Hooks { step: &mut step, repoint: &mut repoint };
    finish(g, "failover", super::runtime()?.block_on(rd::failover(&ctl, &a.sn, a.force, a.dry_run, &mut hooks)))
}
