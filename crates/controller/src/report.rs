//! The human-readable form of the controller's reports (the CLI prints these lines; `--json`
//! prints the report types themselves). Kept beside the types so the wording has one owner.

use crate::monitor::HealthFile;
use crate::statelite::{Lag, StateliteReport};
use crate::{ImagePlan, StatusReport, SyncReport};

/// One line per image of `hanfs plan`.
pub fn plan_line(p: &ImagePlan) -> String {
    match p.from_generation {
        Some(f) if f == p.generation => format!("image {}: unchanged at generation {f}", p.name),
        Some(f) => format!(
            "image {}: generation {f} -> {}: {} added, {} changed, {} removed ({} moved, {} copied locally); {} files, {} bytes to send",
            p.name, p.generation, p.added, p.changed, p.removed, p.moved, p.copied, p.files_to_send, p.delta_bytes
        ),
        None => format!(
            "image {}: first sync: {} entries, {} files, {} bytes to send whole",
            p.name, p.added, p.files_to_send, p.delta_bytes
        ),
    }
}

/// The lines of a `sync`/`verify` report (`what` names the command in the total line).
pub fn sync_lines(what: &str, r: &SyncReport, statelite: &[StateliteReport]) -> Vec<String> {
    let mut out = Vec::new();
    for x in &r.replicas {
        out.push(format!(
            "{:<10} {:<24} gen {:<4} {} {:<8} {} bytes sent{}{}{}",
            x.sn,
            x.image,
            x.generation,
            x.digest.get(..16).unwrap_or(&x.digest),
            if x.matches { "ok" } else { "MISMATCH" },
            x.bytes_sent,
            if x.via == "mn" {
                String::new()
            } else {
                format!(", {} files ({} bytes) via {}", x.relayed_files, x.relayed_bytes, x.via)
            },
            if x.plan_via == "mn" { String::new() } else { format!(", plan via {}", x.plan_via) },
            x.error.as_deref().map(|e| format!("  ({e})")).unwrap_or_default()
        ));
    }
    for x in r.replicas.iter().filter(|x| x.drifted_from.is_some()) {
        out.push(format!(
            "{:<10} {:<24} drift found (the replica had changed since digest {}): {}",
            x.sn,
            x.image,
            x.drifted_from.as_deref().map(|d| d.get(..16).unwrap_or(d)).unwrap_or(""),
            if x.repaired { "repaired" } else { "NOT repaired" }
        ));
    }
    for e in &r.exports {
        out.push(format!("{:<10} exports written, reload {}", e.sn, if e.reloaded { "ok" } else { "FAILED" }));
    }
    for s in statelite {
        out.push(format!(
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
        ));
    }
    out.push(format!("{what}: {} bytes sent in all", r.bytes_sent));
    out
}

/// What failed in a `sync`/`verify` run, one message per problem (empty: nothing failed). The
/// statelite copies come first, then the SNs that failed or do not match.
pub fn failures(what: &str, r: &SyncReport, statelite: &[StateliteReport]) -> Vec<String> {
    let mut out: Vec<String> = statelite
        .iter()
        .filter(|s| !s.ok)
        .map(|s| {
            format!(
                "hanfs {what}: statelite {}/{} not copied from {} to {}: {}",
                s.area,
                s.node,
                s.from,
                s.to,
                s.error.as_deref().unwrap_or("")
            )
        })
        .collect();
    if !r.ok {
        let mut names: Vec<String> = r.failed.iter().map(|f| format!("{} ({})", f.sn, f.reason)).collect();
        for x in r.replicas.iter().filter(|x| !x.matches) {
            if !r.failed.iter().any(|f| f.sn == x.sn) {
                names.push(format!("{} (image {} does not match)", x.sn, x.image));
            }
        }
        out.push(format!("hanfs {what}: failed on {}", names.join("; ")));
    }
    out
}

/// How old a promoted copy's data is, for the failover report: `age` is the time between the
/// backup's last in-sync mark from its primary (a kernel-nfsd area copied continuously,
/// `agent::Listening::statelite_kernel_in_sync`) and the failure; `None`: no mark was ever seen.
pub fn data_age_line(node: &str, age: Option<std::time::Duration>) -> String {
    match age {
        Some(a) => format!("{node}: data as of {:.1} s before the failure", a.as_secs_f64()),
        None => format!("{node}: data age unknown (the backup never saw its primary in sync)"),
    }
}

/// The lines of `hanfs status`.
pub fn status_lines(r: &StatusReport, lags: &[Lag]) -> Vec<String> {
    let mut out = Vec::new();
    for s in &r.sns {
        if !s.reachable {
            out.push(format!("{:<10} UNREACHABLE {}", s.name, s.error.as_deref().unwrap_or("")));
            continue;
        }
        out.push(format!("{:<10} reachable", s.name));
        for i in &s.images {
            out.push(format!("  {:<24} gen {:<4} lag {:<3} {}", i.name, i.generation, i.lag, i.digest));
        }
        for a in &s.statelite_rw {
            out.push(rw_line(a));
        }
    }
    for l in lags {
        let lag = match l.lag_seconds {
            Some(s) => format!("{s} s ago (generation {})", l.generation.unwrap_or(0)),
            None => "never synced".into(),
        };
        out.push(format!("statelite {}/{} on {} -> backup {}: last sync {lag}", l.area, l.node, l.served_by, l.backup));
    }
    out
}

/// One read-write statelite area of an SN in `hanfs status`.
pub fn rw_line(a: &crate::RwAreaStatus) -> String {
    if a.kind == "kernel" {
        return kernel_line(a, unix_now());
    }
    let mut l = format!(
        "  statelite rw {} {}: {}",
        a.area,
        a.role,
        if a.protected {
            "protected".to_string()
        } else {
            format!("UNPROTECTED ({})", a.reason.as_deref().unwrap_or(""))
        }
    );
    if a.role == "primary" {
        l.push_str(&format!(", lag {:.1} s {} bytes", a.lag_seconds, a.lag_bytes));
    }
    if let (Some(ok), Some(r)) = (a.last_reconcile_ok, &a.last_reconcile_result) {
        l.push_str(&format!("; last reconcile {}: {r}", if ok { "ok" } else { "failed" }));
    }
    l
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// One kernel-nfsd area of an SN in `hanfs status` at `now` (Unix seconds): the primary's lag,
/// the backup's data age, and the nodes they are for.
pub fn kernel_line(a: &crate::RwAreaStatus, now: f64) -> String {
    let state = if a.protected {
        "connected".to_string()
    } else {
        format!("NOT CONNECTED ({})", a.reason.as_deref().unwrap_or(""))
    };
    let mut l = format!("  statelite kernel {} {}: {state}", a.area, a.role);
    if a.role == "primary" {
        l.push_str(&format!(", lag {:.1} s {} bytes", a.lag_seconds, a.lag_bytes));
    }
    match a.data_age(now) {
        Some(age) => l.push_str(&format!("; in sync {age:.1} s ago")),
        None => l.push_str("; never in sync"),
    }
    if !a.nodes.is_empty() {
        l.push_str(&format!("; nodes {}", a.nodes.join(" ")));
    }
    l
}

/// The lines of `hanfs status` from what the daemon's health monitor last recorded.
pub fn health_lines(h: &HealthFile) -> Vec<String> {
    let mut out = Vec::new();
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
        out.push(line);
    }
    for t in &h.takeovers {
        let how = if t.ok { "taken over".to_string() } else { format!("NOT taken over: {}", t.detail) };
        out.push(format!("service address {} of {} on {}: {how}", t.address, t.service, t.to));
    }
    out
}

/// `hanfs status --json`: the status report, each statelite copy's lag, and what the daemon's health
/// monitor last recorded (`health`, `health_updated`, `takeovers`; absent when no daemon has run).
pub fn status_json(
    r: &StatusReport,
    lags: &[Lag],
    health: Option<&HealthFile>,
) -> serde_json::Result<serde_json::Value> {
    let mut v = serde_json::to_value(r)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("statelite".into(), serde_json::to_value(lags)?);
        if let Some(h) = health {
            o.insert("health".into(), serde_json::to_value(&h.report.sns)?);
            o.insert("health_updated".into(), h.updated.into());
            o.insert("takeovers".into(), serde_json::to_value(&h.takeovers)?);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_age_of_a_promoted_copy_is_worded_per_node() {
        let l = data_age_line("cn001", Some(std::time::Duration::from_millis(340)));
        assert_eq!(l, "cn001: data as of 0.3 s before the failure");
        assert!(data_age_line("cn002", None).starts_with("cn002: data age unknown"));
    }
}
