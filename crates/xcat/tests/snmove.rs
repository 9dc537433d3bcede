//! Redirects against xCAT's own `snmove`: `tests/perl/snmove-truth.pl` runs snmove.pm's
//! process_request on an SQLite copy of each table set (after xCAT's makehosts wrote /etc/hosts in
//! a private mount namespace) and records what snmove left in noderes/nodehm/statelite for the node
//! and which xCAT commands it asked for (`tests/fixtures/sets/<set>/snmove-truth.json`, with the
//! xCAT commit and the command line). This test checks hanfs's redirect plan against those records.
//! With `XCAT_SRC=/path/to/xcat-core` (root, unshare, perl, libdbd-sqlite3-perl, libjson-perl) it
//! regenerates them first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xcat::redirect::{self, NodeMove, Templates};
use xcat::SourceSpec;

/// The moves tried per set: a node and snmove's arguments (none: its backup, the second
/// `noderes.servicenode` value, snmove.pm:325-350; `-d SN`: that SN; `-D ADDR`: that xcatmaster).
const MOVES: &[(&str, &str, &[&str])] = &[
    // Pool node: the backup SN's interface in 10.10/16 (snmove.pm:394-422), console follows.
    ("linux-pools", "c001", &[]),
    // gpu node: statemnt literal on sn1 (snmove changes statelite only for AIX, snmove.pm:585).
    ("linux-pools", "c007", &[]),
    // No backup SN: snmove refuses (snmove.pm:352-358).
    ("linux-pools", "c005", &[]),
    // sn4's otherinterfaces entry is malformed: no sn4 interface in 10.20/16 (snmove.pm:424-430).
    ("linux-pools", "c009", &[]),
    // The same with the xcatmaster given (-D), as `hanfs` takes it.
    ("linux-pools", "c010", &["-D", "10.20.0.4"]),
    // A stateless node in poolB moved to sn3's pool partner explicitly.
    ("linux-pools", "c013", &["-d", "sn3", "-D", "10.20.0.3"]),
    // AIX: xcatmaster was a name (aixsn1-en1); the new one is aixsn2's en1.
    ("aix-hanfs", "aixcn01", &[]),
    ("aix-hanfs", "aixcn05", &[]),
    // One shared /install: the xcatmaster regex per node.
    ("sharedinstall-sns", "n01", &[]),
    ("sharedinstall-sns", "n02", &[]),
];

fn set_dir(set: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sets").join(set)
}

fn regenerate(set: &str, node: &str, args: &[&str], src: &Path) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    common::Fixture::from_tabdump(&set_dir(set)).write_sqlite(&db);
    let commit = common::xcat_commit(src);
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/perl/snmove-truth.pl");
    for d in ["upper", "work"] {
        std::fs::create_dir(tmp.path().join(d)).unwrap();
    }
    // makehosts rewrites /etc/hosts (and a backup beside it): an overlay keeps the real /etc as is.
    let script = format!(
        "mount -t overlay overlay -o lowerdir=/etc,upperdir={0}/upper,workdir={0}/work /etc && exec perl \"$@\"",
        tmp.path().display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(&harness)
        .arg(src)
        .arg(&commit)
        .arg(node)
        .args(args)
        .env("XCATCFG", format!("SQLite:{}", db.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{set} {node}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The recorded runs, one file per set, regenerated when XCAT_SRC is set.
fn truth(set: &str) -> Vec<serde_json::Value> {
    let file = set_dir(set).join("snmove-truth.json");
    if let Some(src) = std::env::var_os("XCAT_SRC").map(PathBuf::from) {
        let runs: Vec<serde_json::Value> = MOVES
            .iter()
            .filter(|(s, _, _)| *s == set)
            .map(|(_, node, args)| regenerate(set, node, args, &src))
            .collect();
        std::fs::write(&file, serde_json::to_string_pretty(&runs).unwrap() + "\n").unwrap();
    }
    serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap()
}

/// What snmove asks xcatd to run on nodes and SNs that hanfs leaves to the administrator (its
/// redirect changes tables and runs makeconservercf/nodeset; the rest needs the node up, which a
/// failover cannot count on): the SN's interfaces (snmove.pm:1655-1680, read from the hosts table
/// instead), the default route (snmove.pm:1180-1300), /etc/xcatinfo (snmove.pm:1130-1170), the AIX
/// bootlist (snmove.pm:1370-1430) and the AIX statelite rsync between SNs (snmove.pm:700-730; hanfs
/// replicates statelite data itself).
const NOT_DONE_BY_HANFS: &[&str] = &[
    "/sbin/ip addr",
    "/usr/sbin/ifconfig -a",
    "route add default gw",
    "XCATSERVER=",
    "netstat -",
    "/usr/bin/bootlist",
    "/usr/bin/rsync",
];

#[test]
fn plan_equals_snmove() {
    let mut compared = 0;
    for set in ["linux-pools", "aix-hanfs", "sharedinstall-sns"] {
        let tables = SourceSpec::Tabdump(set_dir(set)).read().unwrap();
        let db = xcat::db::Db::new(&tables);
        let runs = truth(set);
        assert_eq!(runs.len(), MOVES.iter().filter(|(s, _, _)| *s == set).count(), "{set}: a run per move");
        for run in runs {
            assert_eq!(run["xcat_commit"].as_str().unwrap().len(), 40);
            let node = run["node"].as_str().unwrap();
            let args: Vec<&str> = run["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
            let arg = |f: &str| args.iter().position(|a| *a == f).map(|i| args[i + 1].to_string());
            let said: Vec<&str> = run["said"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            let after = run["after"].as_object().unwrap();
            let list = db.attr("noderes", node, "servicenode").unwrap().unwrap();
            // snmove's destination: -d, else the second servicenode value (snmove.pm:325-350).
            let to = arg("-d").unwrap_or_else(|| list.split(',').nth(1).unwrap().to_string());
            let mv = NodeMove { node: node.into(), to: to.clone(), address: arg("-D") };
            let plan = redirect::plan(&tables, std::slice::from_ref(&mv)).unwrap();
            let np = &plan.nodes[0];
            let what = format!("{set} {node} {args:?}");
            if run["rc"].as_i64() != Some(0) {
                // snmove refused: no interface of the new SN in the node's network (no networks
                // row: snmove.pm:424-430). hanfs goes on with the SN's address as its nodes see
                // it and says snmove would not.
                assert!(said.iter().any(|l| l.contains("Could not determine an xcatmaster value")), "{what}: {said:?}");
                assert!(
                    np.notes.iter().any(|n| n.contains("snmove would stop here")),
                    "{what}: hanfs must say where snmove refuses: {:?}",
                    np.notes
                );
                compared += 1;
                continue;
            }
            // Table values: what hanfs's chdef leaves equals what snmove left.
            let mut ours: BTreeMap<String, Option<String>> = BTreeMap::new();
            for key in after.keys().filter(|k| !k.starts_with("statelite.")) {
                let (t, c) = key.split_once('.').unwrap();
                ours.insert(key.clone(), db.attr(t, node, c).unwrap());
            }
            for c in &np.chdef {
                ours.insert(format!("{}.{}", c.table, c.attr), Some(c.new.clone()));
            }
            for (key, want) in after.iter().filter(|(k, _)| !k.starts_with("statelite.")) {
                assert_eq!(ours[key].as_deref(), want.as_str(), "{what}: {key}");
                compared += 1;
            }
            // statelite: snmove writes a node row only for AIX with sharedinstall=no
            // (snmove.pm:585-660). hanfs also repoints a Linux statemnt naming the old SN
            // literally, since its statelite data moved with the node (the old SN may be down).
            let snmove_row = after.get("statelite.statemnt(node row)").and_then(|v| v.as_str());
            match (&np.statemnt, snmove_row) {
                (None, None) => {}
                (Some(c), Some(w)) => assert_eq!(c.new, w, "{what}: statemnt"),
                (Some(c), None) => {
                    let xm = after["noderes.xcatmaster"].as_str().unwrap();
                    assert!(c.new.starts_with(&format!("{xm}:")), "{what}: hanfs's own statemnt {}", c.new);
                    assert!(!db.attr("nodetype", node, "os").unwrap().unwrap_or_default().starts_with("AIX"));
                }
                (None, Some(w)) => panic!("{what}: snmove writes statemnt {w}, hanfs does not"),
            }
            // Commands: makeconservercf and nodeset as snmove asks for them, nothing else.
            let mut theirs: Vec<String> = Vec::new();
            for r in run["ran"].as_array().unwrap() {
                let cmd = r["command"].as_str().unwrap();
                let nodes: Vec<&str> = r["node"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
                let a: Vec<&str> = r["arg"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
                if cmd == "xdsh" {
                    let line = a.join(" ");
                    assert!(
                        NOT_DONE_BY_HANFS.iter().any(|k| line.contains(k)),
                        "{what}: an xdsh hanfs does not know: {line}"
                    );
                    continue;
                }
                let mut v = vec![cmd.to_string(), nodes.join(",")];
                v.extend(a.iter().map(|s| s.to_string()));
                theirs.push(v.join(" "));
            }
            let ours: Vec<String> = plan
                .commands(&Templates::default())
                .iter()
                .map(|c| c.argv.join(" "))
                .filter(|c| c.starts_with("nodeset ") || c.starts_with("makeconservercf "))
                .collect();
            assert_eq!(ours, theirs, "{what}: commands");
            compared += 1;
        }
    }
    eprintln!("{compared} values and command lists equal snmove's");
    assert!(compared >= 40, "{compared}");
}
