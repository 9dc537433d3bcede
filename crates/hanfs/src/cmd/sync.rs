//! `hanfs plan`, `sync`, `status`, `verify`: the controller against live agents.

use super::{load_cluster, print_json, select};
use crate::cli::{Global, ImageFilter, SyncArgs};
use crate::exit::Status;
use anyhow::Result;
use controller::progress::{Event, Hook};
use controller::statelite::StateliteReport;
use controller::SyncReport;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

/// Progress bars on stderr drawn from the controller's events (only on a terminal, not --json).
fn bars(g: &Global) -> Option<Hook> {
    if g.json || g.quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let mp = indicatif::MultiProgress::new();
    let bars: Mutex<BTreeMap<String, indicatif::ProgressBar>> = Mutex::default();
    Some(Arc::new(move |sn: &str, ev: &Event| {
        let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
        if *ev == Event::Start {
            let b = mp.add(indicatif::ProgressBar::new(0));
            if let Ok(s) = indicatif::ProgressStyle::with_template("{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {msg}")
            {
                b.set_style(s.progress_chars("=> "));
            }
            b.set_prefix(sn.to_string());
            bars.insert(sn.to_string(), b);
        }
        let Some(b) = bars.get(sn) else { return };
        match ev {
            Event::Start => {}
            Event::Length(n) => b.set_length(*n),
            Event::Message(m) => b.set_message(m.clone()),
            Event::Advance(n) => b.inc(*n),
            Event::Finish(m) => b.finish_with_message(m.clone()),
        }
    }))
}

pub fn plan(g: &Global, a: SyncArgs) -> Result<Status> {
    let cluster = load_cluster(g)?;
    let imgs = select(g, &cluster, &a.filter.images)?;
    let plans = controller::plan_images(&cluster, &imgs)?;
    let (exports, diffs) = controller::exports_plan(&cluster)?;
    if g.json {
        print_json(&serde_json::json!({ "images": plans, "exports": exports, "exports_diff": diffs }))?;
    } else {
        for p in &plans {
            println!("{}", controller::report::plan_line(p));
        }
        for (sn, diff) in &diffs {
            println!("\n# exports for {sn}\n{diff}");
        }
    }
    Ok(Status::Ok)
}

fn print_report(g: &Global, what: &str, r: &SyncReport, statelite: &[StateliteReport]) -> Result<Status> {
    let ok = r.ok && statelite.iter().all(|s| s.ok);
    if g.json {
        let mut v = serde_json::to_value(r)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("statelite".into(), serde_json::to_value(statelite)?);
            o.insert("ok".into(), serde_json::Value::Bool(ok));
        }
        print_json(&v)?;
    } else {
        for l in controller::report::sync_lines(what, r, statelite) {
            println!("{l}");
        }
    }
    for l in controller::report::failures(what, r, statelite) {
        eprintln!("{l}");
    }
    Ok(if ok { Status::Ok } else { Status::Failed })
}

pub fn sync(g: &Global, a: SyncArgs) -> Result<Status> {
    if a.dry_run {
        return plan(g, a);
    }
    let c = super::controller(g, bars(g))?;
    let imgs = select(g, &c.cluster, &a.filter.images)?;
    let rt = super::runtime()?;
    let r = rt.block_on(c.sync(&imgs))?;
    // Statelite data is copied on a full sync (no --image filter): serving SN -> each backup,
    // with the placement as recorded after the images (see `statelite::round`).
    let statelite = if a.filter.images.is_empty() && !c.cluster.statelite().is_empty() {
        rt.block_on(controller::statelite::round(&c))?
    } else {
        Vec::new()
    };
    print_report(g, "sync", &r, &statelite)
}

pub fn status(g: &Global) -> Result<Status> {
    let c = super::controller(g, bars(g))?;
    let r = super::runtime()?.block_on(c.status())?;
    let lags = controller::statelite::lags(&c.state, &load_cluster(g)?);
    let health = c.state.load_health().unwrap_or_else(|e| {
        tracing::warn!("{e:#}");
        None
    });
    if g.json {
        print_json(&controller::report::status_json(&r, &lags, health.as_ref())?)?;
    } else {
        let lines = controller::report::status_lines(&r, &lags).into_iter();
        for l in lines.chain(health.as_ref().map(controller::report::health_lines).unwrap_or_default()) {
            println!("{l}");
        }
    }
    Ok(if r.sns.iter().all(|s| s.reachable) { Status::Ok } else { Status::Failed })
}

pub fn verify(g: &Global, a: ImageFilter) -> Result<Status> {
    let c = super::controller(g, bars(g))?;
    let imgs = select(g, &c.cluster, &a.images)?;
    let r = super::runtime()?.block_on(c.verify(&imgs))?;
    print_report(g, "verify", &r, &[])
}
