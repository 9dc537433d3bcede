//! `hanfs xcat import` and `hanfs xcat redirect`.

use super::print_json;
use crate::cli::{Global, XcatCommand, XcatImportArgs, XcatRedirectArgs, XcatSource};
use crate::exit::{bad_input, Status};
use anyhow::{Context, Result};
use xcat::redirect::{Mode, RedirectError};
use xcat::{ImportError, NodeMove, SourceSpec, Templates};

pub fn run(g: &Global, c: XcatCommand) -> Result<Status> {
    match c {
        XcatCommand::Import(a) => import(g, a),
        XcatCommand::Redirect(a) => redirect(g, a),
    }
}

pub(crate) fn spec(s: &XcatSource) -> Result<SourceSpec> {
    match (&s.tabdump, &s.sqlite, &s.cfgloc) {
        (Some(d), _, _) => Ok(SourceSpec::Tabdump(d.clone())),
        (_, Some(d), _) => Ok(SourceSpec::Sqlite(d.clone())),
        (_, _, Some(f)) => Ok(SourceSpec::Cfgloc(f.clone())),
        _ => Err(bad_input("give one of --tabdump DIR, --sqlite DIR, --cfgloc FILE")),
    }
}

fn import(g: &Global, a: XcatImportArgs) -> Result<Status> {
    let source = spec(&a.source)?;
    let imported = match xcat::import(&source) {
        Ok(i) => i,
        // Unreadable, malformed or missing input: the message names the file, line or connection.
        Err(ImportError::Source(e)) => return Err(bad_input(e.to_string())),
        Err(e) => return Err(anyhow::Error::new(e)),
    };
    let report = &imported.import.report;
    for l in imported.report_lines(20) {
        eprintln!("{l}");
    }
    if let Some(out) = &a.output {
        tree::fsops::write_atomic(out, imported.toml.as_bytes())
            .with_context(|| format!("{}: cannot write the config", out.display()))?;
    }
    let c = &imported.import.config;
    if g.json {
        print_json(&serde_json::json!({
            "source": imported.import.source,
            "output": a.output.as_ref().map(|p| p.display().to_string()),
            "config": if a.output.is_none() { Some(&imported.toml) } else { None },
            "sns": c.sn.len(),
            "nodes": c.node.len(),
            "images": c.image.len(),
            "statelite": c.statelite.len(),
            "report": report,
        }))?;
    } else if a.output.is_none() {
        print!("{}", imported.toml);
    }
    if !g.quiet {
        eprintln!("{}", imported.summary(a.output.as_deref()));
    }
    Ok(Status::Ok)
}

fn redirect(g: &Global, a: XcatRedirectArgs) -> Result<Status> {
    let source = spec(&a.source)?;
    let templates = Templates::load(a.templates.as_deref()).map_err(bad_input)?;
    let mode = match (a.apply, a.log) {
        (false, _) => Mode::DryRun,
        (true, Some(log)) => Mode::Apply { log },
        // The cluster's state dir keeps the log, as for `migrate --apply-xcat` (default state dir
        // when there is no readable config).
        (true, None) => Mode::Apply {
            log: super::load_config(g)
                .map(|c| controller::StateDir::of(&c).xcat_log())
                .unwrap_or_else(|_| "/var/lib/hanfs/xcat-redirect.log".into()),
        },
    };
    let moves: Vec<NodeMove> =
        a.nodes.iter().map(|n| NodeMove { node: n.clone(), to: a.to.clone(), address: a.address.clone() }).collect();
    let outcome = match xcat::redirect::redirect(&source, &moves, &templates, &mode) {
        Ok(o) => o,
        Err(e @ (RedirectError::Source(_) | RedirectError::Input(_))) => return Err(bad_input(e.to_string())),
        Err(e) => return Err(anyhow::Error::new(e)),
    };
    if g.json {
        print_json(&outcome)?;
    } else {
        for c in &outcome.commands {
            println!("{}", c.shell_line());
        }
        for l in outcome.summary(&mode) {
            eprintln!("{l}");
        }
    }
    Ok(if outcome.failed.is_some() { Status::Failed } else { Status::Ok })
}
