//! Redirect write-back: the commands for moved nodes, checked against what snmove changes
//! (xCAT-server/lib/xcat/plugins/snmove.pm), and --apply running them, checking exit statuses and
//! recording what ran.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use xcat::db::Db;
use xcat::redirect::{self, Mode, NodeMove, State, Templates};
use xcat::table::Tables;
use xcat::SourceSpec;

fn tables() -> (tempfile::TempDir, Tables) {
    let tmp = tempfile::tempdir().unwrap();
    common::cluster().write_tabdump(tmp.path());
    let t = SourceSpec::Tabdump(tmp.path().to_path_buf()).read().unwrap();
    (tmp, t)
}

fn mv(node: &str, to: &str) -> NodeMove {
    NodeMove { node: node.into(), to: to.into(), address: None }
}

/// The table-changing commands (nodeset and makeconservercf are checked on their own below).
fn cmds(t: &Tables, moves: &[NodeMove]) -> Vec<String> {
    redirect::plan(t, moves)
        .unwrap()
        .commands(&Templates::default())
        .iter()
        .map(|c| c.argv.join(" "))
        .filter(|c| !c.starts_with("nodeset ") && !c.starts_with("makeconservercf "))
        .collect()
}

/// snmove's node attribute changes, re-derived line by line from snmove.pm (lines ~440-560):
/// servicenode: new SN unshifted, the rest kept; xcatmaster: the new one; tftpserver/nfsserver: the
/// new xcatmaster when equal to the old xcatmaster or its IP; monserver "sn,xm": when its first value
/// is the old SN. And for statelite (~600-650, AIX sharedinstall=no): a literal server gets
/// "newxcatmaster:dir" in a row keyed by the node; a value with `$` is left alone.
fn snmove_would(db: &Db<'_>, node: &str, newsn: &str, newxm: &str) -> (BTreeMap<String, String>, Option<String>) {
    let get = |c: &str| db.attr("noderes", node, c).unwrap();
    let mut out = BTreeMap::new();
    let sn_a: Vec<String> = get("servicenode").unwrap().split(',').map(String::from).collect();
    let sn1 = sn_a[0].clone();
    let mut t: Vec<String> = sn_a.iter().filter(|s| *s != newsn).cloned().collect();
    t.insert(0, newsn.to_string());
    out.insert("servicenode".to_string(), t.join(","));
    out.insert("xcatmaster".to_string(), newxm.to_string());
    let sn1n = get("xcatmaster");
    let sn1n_ip = sn1n.as_deref().and_then(|n| {
        if n.parse::<std::net::IpAddr>().is_ok() {
            Some(n.to_string())
        } else {
            db.attr("hosts", n, "ip").ok().flatten()
        }
    });
    for a in ["tftpserver", "nfsserver"] {
        if let Some(v) = get(a) {
            if Some(&v) == sn1n.as_ref() || Some(&v) == sn1n_ip.as_ref() {
                out.insert(a.to_string(), newxm.to_string());
            }
        }
    }
    if let Some(mon) = get("monserver") {
        let parts: Vec<&str> = mon.split(',').collect();
        if parts.len() >= 2 && parts[0] == sn1 {
            out.insert("monserver".to_string(), format!("{newsn},{newxm}"));
        }
    }
    // Attributes snmove sets to their current value change nothing.
    out.retain(|k, v| get(k).as_deref() != Some(v.as_str()));
    let statemnt = db.attr("statelite", node, "statemnt").unwrap().and_then(|v| {
        let (server, dir) = xcat::rules::split_server_dir(&v);
        (!v.contains('$') && (Some(&server) == sn1n.as_ref() || Some(&server) == sn1n_ip.as_ref()))
            .then(|| format!("{newxm}:{dir}"))
    });
    (out, statemnt)
}

#[test]
fn commands_for_moved_nodes() {
    let (_d, t) = tables();
    // A rack01 node to its backup: servicenode order and xcatmaster; statemnt follows $noderes.xcatmaster.
    assert_eq!(cmds(&t, &[mv("cn020", "sn2")]), ["chdef -t node -o cn020 servicenode=sn2,sn1 xcatmaster=10.0.2.254"]);
    // cn020 boots the statelite osimage rh86-statelite (nodetype.provmethod): snmove runs nodeset.
    let all = redirect::plan(&t, &[mv("cn020", "sn2")]).unwrap().commands(&Templates::default());
    assert_eq!(all.last().unwrap().argv.join(" "), "nodeset cn020 osimage=rh86-statelite");
    // nfsserver and tftpserver named the old SN's address: repointed too.
    assert_eq!(
        cmds(&t, &[mv("cn011", "sn2")]),
        ["chdef -t node -o cn011 servicenode=sn2,sn1 xcatmaster=10.0.2.254 tftpserver=10.0.2.254 nfsserver=10.0.2.254"]
    );
    // monserver "sn1,10.0.1.254" follows; the new SN was the node's second choice.
    assert_eq!(
        cmds(&t, &[mv("cn015", "sn3")]),
        ["chdef -t node -o cn015 servicenode=sn3,sn1 xcatmaster=10.0.3.254 monserver=sn3,10.0.3.254"]
    );
    // A literal statemnt on the old SN: a node row in statelite.
    assert_eq!(
        cmds(&t, &[mv("cn030", "sn2")]),
        [
            "chdef -t node -o cn030 servicenode=sn2,sn1 xcatmaster=10.0.2.254",
            "chtab node=cn030 statelite.statemnt=10.0.2.254:/nodedata",
        ]
    );
    // A node moved to an SN outside its list: the new SN first, the old list after it.
    assert_eq!(
        cmds(&t, &[mv("cn020", "sn4")]),
        ["chdef -t node -o cn020 servicenode=sn4,sn1,sn2 xcatmaster=10.0.4.254"]
    );
    // AIX: regex statemnt resolving to the old SN's IP; xcatmaster was a name (hosts gives its IP).
    let p = redirect::plan(&t, &[mv("an001", "aixsn2")]).unwrap();
    let c: Vec<String> = p.commands(&Templates::default()).iter().map(|c| c.argv.join(" ")).collect();
    assert_eq!(
        c,
        [
            "chdef -t node -o an001 servicenode=aixsn2,aixsn1 xcatmaster=10.2.0.2",
            "chtab node=an001 statelite.statemnt=10.2.0.2:/aixstate",
        ]
    );
    assert!(
        p.notes().iter().any(|n| n.contains("AIX: statelite.table") && n.contains("aix71-diskless")),
        "{:?}",
        p.notes()
    );
    // Nodes with the same changes share one chdef (a failover moves many).
    assert_eq!(
        cmds(&t, &[mv("cn020", "sn2"), mv("cn022", "sn2"), mv("cn023", "sn2")]),
        ["chdef -t node -o cn020,cn022,cn023 servicenode=sn2,sn1 xcatmaster=10.0.2.254"]
    );
    // Data already on the new SN (cn007's literal statemnt names sn2): no chtab, a note.
    let p = redirect::plan(&t, &[mv("cn007", "sn2")]).unwrap();
    assert!(p.nodes[0].statemnt.is_none());
    assert!(p.notes().iter().any(|n| n.contains("not on the old SN")), "{:?}", p.notes());
    // An explicit address wins.
    let m = NodeMove { node: "cn020".into(), to: "sn2".into(), address: Some("10.9.9.9".into()) };
    assert_eq!(cmds(&t, &[m]), ["chdef -t node -o cn020 servicenode=sn2,sn1 xcatmaster=10.9.9.9"]);
}

#[test]
fn changes_match_snmove() {
    let (_d, t) = tables();
    let db = Db::new(&t);
    let imported = xcat::import_tables(&t).unwrap();
    let addr = |sn: &str| imported.cluster.sn(sn).unwrap().address.to_string();
    let cases = [
        ("cn001", "sn2"),
        ("cn011", "sn2"),
        ("cn015", "sn3"),
        ("cn030", "sn2"),
        ("cn049", "sn3"),
        ("cn100", "sn4"),
        ("cn192", "sn1"),
        ("an001", "aixsn2"),
        ("an007", "aixsn1"),
    ];
    for (node, to) in cases {
        let p = redirect::plan(&t, &[mv(node, to)]).unwrap();
        let n = &p.nodes[0];
        let ours: BTreeMap<String, String> = n.chdef.iter().map(|c| (c.attr.clone(), c.new.clone())).collect();
        let (theirs, statemnt) = snmove_would(&db, node, to, &addr(to));
        // hanfs also repoints nfsserver/tftpserver that name the old SN by name (cn100: nfsserver=sn3),
        // which snmove leaves stale; everything snmove changes, hanfs changes the same way.
        for (k, v) in &theirs {
            assert_eq!(ours.get(k), Some(v), "{node} -> {to}: {k}");
        }
        for (k, v) in &ours {
            if !theirs.contains_key(k) {
                assert!(
                    matches!(k.as_str(), "nfsserver" | "tftpserver") && node == "cn100",
                    "{node} -> {to}: hanfs changes {k}={v}, snmove would not"
                );
            }
        }
        assert_eq!(n.statemnt.as_ref().map(|c| c.new.clone()), statemnt, "{node} -> {to}: statemnt");
    }
}

#[test]
fn apply_runs_checks_and_records() {
    let (d, _t) = tables();
    let src = SourceSpec::Tabdump(d.path().to_path_buf());
    let log = d.path().join("state/xcat-redirect.log");
    let echo = Templates {
        chdef: ["echo", "chdef", "-o", "{node}", "{attrs}"].map(String::from).to_vec(),
        chtab: ["echo", "chtab", "node={node}", "statelite.statemnt={statemnt}"].map(String::from).to_vec(),
        makeconservercf: ["echo", "makeconservercf", "{node}"].map(String::from).to_vec(),
        nodeset: ["echo", "nodeset", "{node}", "osimage={osimage}"].map(String::from).to_vec(),
    };
    let out = redirect::redirect(&src, &[mv("cn030", "sn2")], &echo, &Mode::Apply { log: log.clone() }).unwrap();
    assert!(out.applied);
    assert_eq!(out.ran.len(), 3, "chdef, chtab, nodeset");
    assert!(out.ran.iter().all(|r| r.status == 0));
    assert_eq!(out.ran[2].stdout, "nodeset cn030 osimage=rh86-statelite\n");
    assert_eq!(out.ran[0].stdout, "chdef -o cn030 servicenode=sn2,sn1 xcatmaster=10.0.2.254\n");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[2]["argv"][1], "chtab");
    assert_eq!(lines[2]["status"], 0);
    // A failing command stops the rest and is recorded; every command's state is reported, with the
    // undo of what ran: the values the tables hold now (xCAT's getAttribs, as truth.rs checks it).
    let failing = Templates { chtab: vec!["false".into()], ..echo.clone() };
    let out = redirect::redirect(&src, &[mv("cn030", "sn2")], &failing, &Mode::Apply { log: log.clone() }).unwrap();
    let f = out.failed.as_ref().expect("the chtab failed");
    assert_eq!(f.argv, ["false"]);
    assert_eq!(f.log, log.display().to_string());
    assert_eq!(out.states, [State::Done, State::Failed, State::NotRun]);
    let t = SourceSpec::Tabdump(d.path().to_path_buf()).read().unwrap();
    let db = Db::new(&t);
    let old = |a: &str| format!("{a}={}", db.attr("noderes", "cn030", a).unwrap().unwrap_or_default());
    assert_eq!(
        out.commands[0].undo,
        [vec!["echo".into(), "chdef".into(), "-o".into(), "cn030".into(), old("servicenode"), old("xcatmaster")]]
    );
    let lines = out.step_lines("");
    assert!(lines[0].starts_with("(ran): echo chdef -o cn030 servicenode=sn2"), "{lines:?}");
    assert!(lines[1].starts_with("(FAILED, exit status: 1): false"), "{lines:?}");
    assert!(lines[2].starts_with("(not run): echo nodeset cn030"), "{lines:?}");
    assert_eq!(
        lines[4],
        format!("  undo: echo chdef -o cn030 {} {}", old("servicenode"), old("xcatmaster")),
        "{lines:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["argv"][0], "false");
    assert_eq!(last["status"], 1);
    assert_eq!(text.lines().count(), 7, "the nodeset after the failed chtab did not run");
    // The first command failing: nothing changed.
    let first = Templates { chdef: vec!["false".into()], ..echo.clone() };
    let out = redirect::redirect(&src, &[mv("cn030", "sn2")], &first, &Mode::Apply { log: log.clone() }).unwrap();
    assert_eq!(out.states, [State::Failed, State::NotRun, State::NotRun]);
    assert!(out.step_lines("").last().unwrap().starts_with("nothing was changed"), "{:?}", out.step_lines(""));
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 9);
    // Dry run: nothing runs, nothing is logged.
    let out = redirect::redirect(&src, &[mv("cn030", "sn2")], &failing, &Mode::DryRun).unwrap();
    assert!(out.ran.is_empty() && !out.applied && out.commands.len() == 3 && out.failed.is_none());
    assert_eq!(out.states, [State::ToRun; 3]);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 9);
    // Templates from TOML.
    let t = Templates::from_toml(
        "t.toml",
        "chdef = [\"/opt/xcat/bin/chdef\", \"-t\", \"node\", \"-o\", \"{node}\", \"{attrs}\"]\n",
    )
    .unwrap();
    assert_eq!(t.chtab, Templates::default().chtab);
    assert!(Templates::from_toml("t.toml", "chdfe = []").unwrap_err().contains("t.toml"));
}

#[test]
fn bad_moves_are_refused() {
    let (_d, t) = tables();
    let e = redirect::plan(&t, &[mv("cn999", "sn2")]).unwrap_err().to_string();
    assert!(e.contains("cn999") && e.contains("nodelist"), "{e}");
    let e = redirect::plan(&t, &[mv("fsp01", "sn2")]).unwrap_err().to_string();
    assert!(e.contains("no noderes.servicenode"), "{e}");
    let e = redirect::plan(&t, &[mv("cn020", "sn9")]).unwrap_err().to_string();
    assert!(e.contains("sn9") && e.contains("address"), "{e}");
}

/// snmove's extra steps on the linux-pools set: c001's console server is the old SN (nodehm), so
/// snmove sets it to the new SN and runs makeconservercf (snmove.pm:803-860); c001 boots a
/// statelite osimage (nodetype.provmethod), so snmove runs `nodeset ... osimage=` (snmove.pm:1065-1115).
#[test]
fn conserver_and_nodeset_as_snmove() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sets/linux-pools");
    let t = SourceSpec::Tabdump(dir).read().unwrap();
    let p = redirect::plan(&t, &[mv("c001", "sn2"), mv("c002", "sn2")]).unwrap();
    let cmds: Vec<String> = p.commands(&Templates::default()).iter().map(|c| c.argv.join(" ")).collect();
    assert_eq!(
        cmds,
        [
            "chdef -t node -o c001,c002 servicenode=sn2,sn1 xcatmaster=10.10.0.2 conserver=sn2",
            // statemnt `sn1:/nodedata` names the old SN: the new xcatmaster (snmove.pm:649).
            "chtab node=c001 statelite.statemnt=10.10.0.2:/nodedata",
            "chtab node=c002 statelite.statemnt=10.10.0.2:/nodedata",
            "makeconservercf c001,c002",
            "nodeset c001,c002 osimage=rh86-statelite",
        ],
        "{p:?}"
    );
}

#[test]
fn xcat_commands_found_outside_path() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("opt-xcat-bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("chdef"), "#!/bin/sh\n").unwrap();
    let path = std::ffi::OsString::from("/usr/bin:/bin");
    assert_eq!(redirect::xcat_program_in("chdef", Some(&path), &[&bin]), bin.join("chdef"));
    assert_eq!(redirect::xcat_program_in("sh", Some(&path), &[&bin]), Path::new("sh"), "in PATH: as is");
    assert_eq!(redirect::xcat_program_in("/x/chdef", Some(&path), &[&bin]), Path::new("/x/chdef"));
}

/// A node of an SN pool moved to an SN that serves another network too gets, as new xcatmaster, the
/// SN's interface inside the node's own network (snmove.pm:394-422), not the address most of the
/// SN's nodes use.
#[test]
fn new_xcatmaster_is_the_sn_interface_in_the_nodes_network() {
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sets/linux-pools");
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&set).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let hosts = tmp.path().join("hosts.csv");
    let text = std::fs::read_to_string(&hosts).unwrap();
    let from = "\"-eth1:10.20.0.3,-ib0:10.30.0.3\"";
    assert!(text.contains(from));
    std::fs::write(&hosts, text.replacen(from, "\"-eth1:10.20.0.3,-ib0:10.30.0.3,-eth2:10.10.0.3\"", 1)).unwrap();
    let t = SourceSpec::Tabdump(tmp.path().to_path_buf()).read().unwrap();
    // sn3's nodes (poolB, 10.20/16) reach it at 10.20.0.3; c001 is in poolA (10.10/16).
    let imported = xcat::import_tables(&t).unwrap();
    assert_eq!(imported.cluster.sn("sn3").unwrap().address.to_string(), "10.20.0.3");
    let plan = redirect::plan(&t, &[mv("c001", "sn3")]).unwrap();
    let xm = plan.nodes[0].chdef.iter().find(|c| c.attr == "xcatmaster").unwrap();
    assert_eq!(xm.new, "10.10.0.3");
    // A node of poolB keeps getting the poolB interface.
    let plan = redirect::plan(&t, &[mv("c009", "sn3")]).unwrap();
    let xm = plan.nodes[0].chdef.iter().find(|c| c.attr == "xcatmaster");
    assert!(xm.is_none_or(|c| c.new == "10.20.0.3"), "{xm:?}");
}
