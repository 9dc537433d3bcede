//! What writing the wanted exports would change on a server, for `hanfs plan`.

use crate::types::{Entry, Exports};
use model::Dialect;
use std::collections::BTreeMap;

/// One export added, removed or changed. Exports are matched by path (and client on Linux).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(Entry),
    Remove(Entry),
    Modify { from: Entry, to: Entry },
}

type Key<'a> = (&'a str, Option<&'a str>);

fn key(e: &Entry) -> Key<'_> {
    (e.path.as_str(), e.client.as_deref())
}

/// Changes from `deployed` to `wanted`: adds and modifications in wanted's order, then removals in
/// deployed's order. Empty when they export the same things with the same options.
pub fn diff(deployed: &Exports, wanted: &Exports) -> Vec<Change> {
    let old: BTreeMap<Key<'_>, &Entry> = deployed.entries.iter().map(|e| (key(e), e)).collect();
    let new: BTreeMap<Key<'_>, &Entry> = wanted.entries.iter().map(|e| (key(e), e)).collect();
    let mut out = Vec::new();
    for e in &wanted.entries {
        match old.get(&key(e)) {
            None => out.push(Change::Add(e.clone())),
            Some(o) if *o != e => out.push(Change::Modify { from: (*o).clone(), to: e.clone() }),
            Some(_) => {}
        }
    }
    for e in &deployed.entries {
        if !new.contains_key(&key(e)) {
            out.push(Change::Remove(e.clone()));
        }
    }
    out
}

/// The changes as `-old line` / `+new line`, one export per line.
pub fn render_changes(dialect: Dialect, changes: &[Change]) -> String {
    let line = |e: &Entry| crate::entry_line(dialect, e);
    let mut out = String::new();
    for c in changes {
        match c {
            Change::Add(e) => out.push_str(&format!("+{}\n", line(e))),
            Change::Remove(e) => out.push_str(&format!("-{}\n", line(e))),
            Change::Modify { from, to } => out.push_str(&format!("-{}\n+{}\n", line(from), line(to))),
        }
    }
    out
}

/// A unified-diff-like text for `hanfs plan`: `deployed` is what the SN has now (its
/// `/etc/exports.d/hanfs.exports`, or its whole `/etc/exports` on AIX; `None` if absent), `wanted`
/// what hanfs would write (from [`crate::render`]). Never fails: text hanfs cannot read is reported
/// and treated as exporting nothing.
pub fn plan_text(dialect: Dialect, deployed: Option<&str>, wanted: &str) -> String {
    let file = crate::target_file(dialect);
    let wanted_ex = match crate::parse(dialect, wanted) {
        Ok(w) => w,
        Err(e) => return format!("hanfs cannot read its own rendered exports ({e}); nothing to compare\n"),
    };
    let mut out = String::new();
    let empty = Exports { dialect, entries: Vec::new() };
    let deployed_ex = match deployed {
        None => {
            out.push_str(&format!("--- {file} (absent)\n"));
            empty
        }
        Some(text) => match crate::parse(dialect, text) {
            Ok(d) => {
                out.push_str(&format!("--- {file} (deployed)\n"));
                d
            }
            Err(e) => {
                out.push_str(&format!("--- {file} (deployed, unreadable: {e}; it will be replaced)\n"));
                empty
            }
        },
    };
    out.push_str(&format!("+++ {file} (hanfs)\n"));
    let changes = diff(&deployed_ex, &wanted_ex);
    out.push_str(&render_changes(dialect, &changes));
    let (mut add, mut modify, mut remove) = (0, 0, 0);
    for c in &changes {
        match c {
            Change::Add(_) => add += 1,
            Change::Modify { .. } => modify += 1,
            Change::Remove(_) => remove += 1,
        }
    }
    if changes.is_empty() {
        out.push_str(&format!("  (no change: {} exports as deployed)\n", wanted_ex.entries.len()));
    } else {
        out.push_str(&format!("  {add} added, {modify} changed, {remove} removed\n"));
    }
    out
}

/// [`plan_text`] for one SN of a cluster: what writing its exports would change. `deployed` is the
/// SN's current `/etc/exports.d/hanfs.exports` (Linux) or whole `/etc/exports` (AIX), `None` if absent.
pub fn plan_for(cluster: &model::Cluster, sn: &str, deployed: Option<&str>) -> Result<String, crate::ExportError> {
    let dialect = cluster.sn(sn).ok_or_else(|| crate::ExportError::UnknownSn(sn.to_string()))?.dialect;
    Ok(plan_text(dialect, deployed, &crate::render_sn(cluster, sn)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_shows_only_changes() {
        let deployed = "/a *(ro,fsid=1)\n/b *(rw,fsid=2)\n/gone *(ro)\n";
        let wanted = "# header\n/a *(ro,fsid=1)\n/b *(rw,fsid=2,refer=/b@10.0.0.2)\n/new 10.0.0.0/8(ro)\n";
        let t = plan_text(Dialect::Linux, Some(deployed), wanted);
        assert_eq!(
            t,
            "--- /etc/exports.d/hanfs.exports (deployed)\n\
             +++ /etc/exports.d/hanfs.exports (hanfs)\n\
             -/b *(rw,fsid=2)\n\
             +/b *(rw,fsid=2,refer=/b@10.0.0.2)\n\
             +/new 10.0.0.0/8(ro)\n\
             -/gone *(ro)\n  \
             1 added, 1 changed, 1 removed\n"
        );
        let same = plan_text(Dialect::Linux, Some(wanted), wanted);
        assert!(same.ends_with("(no change: 3 exports as deployed)\n"), "{same}");
        let none = plan_text(Dialect::Linux, None, wanted);
        assert!(none.contains("(absent)") && none.contains("3 added"), "{none}");
        let bad = plan_text(Dialect::Linux, Some("/x *(ro\n"), wanted);
        assert!(bad.contains("unreadable") && bad.contains("3 added"), "{bad}");
    }

    #[test]
    fn plan_for_a_cluster_sn() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../exports/mixed/cluster.toml")).unwrap();
        let c = model::Cluster::from_toml("mixed", &text).unwrap();
        let wanted = crate::render_sn(&c, "sn1").unwrap();
        assert!(plan_for(&c, "sn1", Some(&wanted)).unwrap().contains("(no change: 5 exports as deployed)"));
        // Before the migration sn1 exported cn001 read-write: the plan shows the one new option.
        let before = wanted.replace(",refer=/nodedata/cn001@[fd00:10::2]", "");
        let plan = plan_for(&c, "sn1", Some(&before)).unwrap();
        assert!(
            plan.contains("\n-/nodedata/cn001 fd00:20::/64(rw,no_root_squash,sync,no_subtree_check,fsid="),
            "{plan}"
        );
        assert!(plan.contains(",refer=/nodedata/cn001@[fd00:10::2])\n  0 added, 1 changed, 0 removed\n"), "{plan}");
        assert!(matches!(plan_for(&c, "x", None), Err(crate::ExportError::UnknownSn(_))));
    }

    #[test]
    fn aix_plan_reads_only_the_block() {
        let wanted = format!("{}\n/a -vers=4,ro\n{}\n", crate::BEGIN_MARKER, crate::END_MARKER);
        let deployed = format!("/home -rw\n{}\n/a -vers=4,rw\n{}\n", crate::BEGIN_MARKER, crate::END_MARKER);
        let t = plan_text(Dialect::Aix, Some(&deployed), &wanted);
        assert!(t.contains("-/a -vers=4,rw\n+/a -vers=4,ro\n"), "{t}");
        assert!(!t.contains("/home"), "{t}");
    }
}
