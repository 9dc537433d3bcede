//! `hanfs plan`, `sync`, `status`, `verify`: the controller against live agents.

use super::{load_cluster, print_json};
use crate::cli::{Global, ImageFilter, SyncArgs};
use crate::exit::{bad_input, Status};
use anyhow::Result;
use controller::progress::{Event, Hook};
use controller::statelite::StateliteReport;
use controller::{Controller, SyncReport};
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

fn controller(g: &Global) -> Result<Arc<Controller>> {
    let mut c =
        Controller::new(super::load_config(g)?).map_err(|e| bad_input(format!("{}: {e:#}", g.config.display())))?;
    c.progress = bars(g);
    Ok(Arc::new(c))
}

fn images(g: &Global, c: &model::Cluster, f: &ImageFilter) -> Result<Vec<model::Image>> {
    if f.images.is_empty() {
        return Ok(c.images().to_vec());
    }
    f.images
        .iter()
        .map(|n| c.image(n).cloned().ok_or_else(|| bad_input(format!("{}: no image named `{n}`", g.config.display()))))
        .collect()
}

pub fn plan(g: &Global, a: SyncArgs) -> Result<Status> {
    let cluster = load_cluster(g)?;
    let imgs = images(g, &cluster, &a.filter)?;
    let plans = controller::plan_images(&cluster, &imgs)?;
    let exports: BTreeMap<String, String> = controller::render_exports(&cluster)?.into_iter().collect();
    // Against what hanfs last wrote to each SN (recorded by sync), so an admin sees what will change.
    let diffs: BTreeMap<String, String> = cluster
        .sns()
        .iter()
        .filter_map(|sn| {
            let wanted = exports.get(&sn.name)?;
            let deployed = controller::StateDir::of(&cluster).deployed_exports(&sn.name);
            Some((sn.name.clone(), exports::plan_text(sn.dialect, deployed.as_deref(), wanted)))
        })
        .collect();
    if g.json {
        print_json(&serde_json::json!({ "images": plans, "exports": exports, "exports_diff": diffs }))?;
    } else {
        for p in &plans {
            match p.from_generation {
                Some(f) if f == p.generation => println!("image {}: unchanged at generation {}", p.name, f),
                Some(f) => println!(
                    "image {}: generation {f} -> {}: {} added, {} changed, {} removed ({} moved, {} copied locally); {} files, {} bytes to send",
                    p.name, p.generation, p.added, p.changed, p.removed, p.moved, p.copied, p.files_to_send, p.delta_bytes
                ),
                None => println!(
                    "image {}: first sync: {} entries, {} files, {} bytes to send whole",
                    p.name, p.added, p.files_to_send, p.delta_bytes
                ),
            }
        }
        for (sn, diff) in &diffs {
            println!("\n# exports for {sn}\n{diff}");
        }
    }
    Ok(Status::Ok)
}

fn print_report(g: &Global, what: &str, r: &SyncReport, statelite: &[StateliteReport]) -> Result<Status> {
    let statelite_ok = statelite.iter().all(|s| s.ok);
    if g.json {
        let mut v = serde_json::to_value(r)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("statelite".into(), serde_json::to_value(statelite)?);
            o.insert("ok".into(), serde_json::Value::Bool(r.ok && statelite_ok));
        }
        print_json(&v)?;
    } else {
        for x in &r.replicas {
            let state = if x.matches { "ok" } else { "MISMATCH" };
            println!(
                "{:<10} {:<24} gen {:<4} {} {:<8} {} bytes sent{}",
                x.sn,
                x.image,
                x.generation,
                x.digest.get(..16).unwrap_or(&x.digest),
                state,
                x.bytes_sent,
                x.error.as_deref().map(|e| format!("  ({e})")).unwrap_or_default()
            );
        }
        for x in r.replicas.iter().filter(|x| x.drifted_from.is_some()) {
            println!(
                "{:<10} {:<24} drift found (the replica had changed since digest {}): {}",
                x.sn,
                x.image,
                x.drifted_from.as_deref().map(|d| d.get(..16).unwrap_or(d)).unwrap_or(""),
                if x.repaired { "repaired" } else { "NOT repaired" }
            );
        }
        for e in &r.exports {
            println!("{:<10} exports written, reload {}", e.sn, if e.reloaded { "ok" } else { "FAILED" });
        }
        for s in statelite {
            println!(
                "{:<10} statelite {}/{} from {}: {} gen {} {} files, {} bytes{}",
                s.to,
                s.area,
                s.node,
                s.from,
                if s.ok { "ok" } else { "FAILED" },
                s.generation,
                s.files_sent,
                s.bytes_sent,
                s.error.as_deref().map(|e| format!("  ({e})")).unwrap_or_default()
            );
        }
        println!("{what}: {} bytes sent in all", r.bytes_sent);
    }
    for s in statelite.iter().filter(|s| !s.ok) {
        eprintln!(
            "hanfs {what}: statelite {}/{} not copied from {} to {}: {}",
            s.area,
            s.node,
            s.from,
            s.to,
            s.error.as_deref().unwrap_or("")
        );
    }
    if !statelite_ok && r.ok {
        return Ok(Status::Failed);
    }
    if r.ok {
        Ok(Status::Ok)
    } else {
        let mut names: Vec<String> = r.failed.iter().map(|f| format!("{} ({})", f.sn, f.reason)).collect();
        for x in r.replicas.iter().filter(|x| !x.matches) {
            if !r.failed.iter().any(|f| f.sn == x.sn) {
                names.push(format!("{} (image {} does not match)", x.sn, x.image));
            }
        }
        eprintln!("hanfs {what}: failed on {}", names.join("; "));
        Ok(Status::Failed)
    }
}

pub fn sync(g: &Global, a: SyncArgs) -> Result<Status> {
    if a.dry_run {
        return plan(g, a);
    }
    let c = controller(g)?;
    let imgs = images(g, &c.cluster, &a.filter)?;
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
    let c = controller(g)?;
    let r = super::runtime()?.block_on(c.status())?;
    let lags = controller::statelite::lags(&c.state, &load_cluster(g)?);
    // What the daemon's health monitor last reported (absent: no daemon has run).
    let health = c.state.load_health().unwrap_or_else(|e| {
        tracing::warn!("{e:#}");
        None
    });
    if g.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("statelite".into(), serde_json::to_value(&lags)?);
            if let Some(h) = &health {
                o.insert("health".into(), serde_json::to_value(&h.report.sns)?);
                o.insert("health_updated".into(), h.updated.into());
                o.insert("takeovers".into(), serde_json::to_value(&h.takeovers)?);
            }
        }
        print_json(&v)?;
    } else {
        for s in &r.sns {
            if !s.reachable {
                println!("{:<10} UNREACHABLE {}", s.name, s.error.as_deref().unwrap_or(""));
                continue;
            }
            println!("{:<10} reachable", s.name);
            for i in &s.images {
                println!("  {:<24} gen {:<4} lag {:<3} {}", i.name, i.generation, i.lag, i.digest);
            }
        }
        for l in &lags {
            let lag = match l.lag_seconds {
                Some(s) => format!("{s} s ago (generation {})", l.generation.unwrap_or(0)),
                None => "never synced".into(),
            };
            println!("statelite {}/{} on {} -> backup {}: last sync {lag}", l.area, l.node, l.served_by, l.backup);
        }
        if let Some(h) = &health {
            for s in &h.report.sns {
                let mut line = format!("health {:<10} {}", s.name, s.state.as_str());
                if let Some(f) = &s.fence {
                    line.push_str(&format!(" (fence {f})"));
                }
                if let Some(b) = &s.served_by {
                    line.push_str(&format!(" served by {b}"));
                }
                if !s.serving_for.is_empty() {
                    line.push_str(&format!(" serving for {}", s.serving_for.join(", ")));
                }
                if let Some(r) = &s.reason {
                    line.push_str(&format!(": {r}"));
                }
                println!("{line}");
            }
            for t in &h.takeovers {
                let how = if t.ok { "taken over".to_string() } else { format!("NOT taken over: {}", t.detail) };
                println!("service address {} of {} on {}: {how}", t.address, t.service, t.to);
            }
        }
    }
    Ok(if r.sns.iter().all(|s| s.reachable) { Status::Ok } else { Status::Failed })
}

pub fn verify(g: &Global, a: ImageFilter) -> Result<Status> {
    let c = controller(g)?;
    let imgs = images(g, &c.cluster, &a)?;
    let r = super::runtime()?.block_on(c.verify(&imgs))?;
    print_report(g, "verify", &r, &[])
}
