//! xCAT's own Perl is the truth: `tests/perl/xcat-truth.pl` loads Table.pm and SvrUtils.pm from an
//! xCAT checkout, reads each table set from SQLite files and records, per node, what
//! `getNodeAttribs` returns for the attributes hanfs reads and what a statemnt becomes after
//! anaconda.pm's `subVars`. Those files (`tests/fixtures/<set>/xcat-truth.json`, with the xCAT
//! commit and the command) are committed; this test checks hanfs's lookups against them for every
//! node. With `XCAT_SRC=/path/to/xcat-core` (and perl, libdbd-sqlite3-perl, libjson-perl) it
//! regenerates them first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use xcat::db::Db;
use xcat::SourceSpec;

pub fn sets() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v = vec![root.join("cluster")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(root.join("sets")).unwrap().map(|e| e.unwrap().path()).collect();
    more.sort();
    v.extend(more);
    v
}

fn regenerate(set: &Path, src: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    common::Fixture::from_tabdump(set).write_sqlite(tmp.path());
    let commit = common::xcat_commit(src);
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/perl/xcat-truth.pl");
    let out = std::process::Command::new("perl")
        .arg(&harness)
        .arg(src)
        .arg(&commit)
        .env("XCATCFG", format!("SQLite:{}", tmp.path().display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", set.display(), String::from_utf8_lossy(&out.stderr));
    std::fs::write(set.join("xcat-truth.json"), &out.stdout).unwrap();
}

#[test]
fn lookups_equal_xcat_perl() {
    let src = std::env::var_os("XCAT_SRC").map(PathBuf::from);
    let mut checked = 0;
    for set in sets() {
        if let Some(src) = &src {
            regenerate(&set, src);
        }
        let truth: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(set.join("xcat-truth.json")).unwrap()).unwrap();
        assert_eq!(truth["xcat_commit"].as_str().unwrap().len(), 40);
        let tables = SourceSpec::Tabdump(set.clone()).read().unwrap();
        let db = Db::new(&tables);
        let nodes = truth["nodes"].as_object().unwrap();
        let ours: Vec<&str> = db.nodes.iter().map(|(n, _)| n.as_str()).collect();
        let mut theirs: Vec<&str> = nodes.keys().map(String::as_str).collect();
        let mut ours_sorted = ours.clone();
        ours_sorted.sort();
        theirs.sort();
        assert_eq!(ours_sorted, theirs, "{}: the enabled nodes", set.display());
        for (node, attrs) in nodes {
            for (key, want) in attrs.as_object().unwrap() {
                let want = want.as_str().map(str::to_string);
                let got = if key == "statelite.statemnt(subVars)" {
                    db.attr("statelite", node, "statemnt").unwrap().map(|v| {
                        if !v.contains('$') {
                            return v;
                        }
                        let (s, d) = xcat::rules::resolve_server_dir(&v, node, &mut |t: &str, c: &str| {
                            if t == "site" {
                                return db.site(c).map(str::to_string);
                            }
                            db.attr(t, node, c).ok().flatten()
                        })
                        .unwrap();
                        format!("{s}:{d}")
                    })
                } else {
                    let (t, c) = key.split_once('.').unwrap();
                    db.attr(t, node, c).unwrap_or_else(|e| panic!("{node} {key}: {}", e.error))
                };
                assert_eq!(got, want, "{}: {node} {key}", set.display());
                checked += 1;
            }
        }
    }
    eprintln!("{checked} values equal xCAT's");
    assert!(checked > 1000, "{checked}");
}
