//! Realistic table sets written from xCAT's Schema.pm and documentation (tests/fixtures/sets/*):
//! each imports the same from tabdump and SQLite (tests/databases.rs loads them into PostgreSQL and
//! MariaDB), its lookups equal xCAT's own Perl (tests/truth.rs), and the mapped cluster is what
//! xCAT's code implies, cited per assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use xcat::{Severity, SourceSpec};

fn set(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sets").join(name)
}

fn body(toml: &str) -> String {
    toml.lines().skip_while(|l| l.starts_with('#') || l.is_empty()).collect::<Vec<_>>().join("\n")
}

/// Tabdump and SQLite of the same rows give the same config and report.
pub fn import(name: &str) -> xcat::Imported {
    let a = xcat::import(&SourceSpec::Tabdump(set(name))).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    common::Fixture::from_tabdump(&set(name)).write_sqlite(tmp.path());
    let b = xcat::import(&SourceSpec::Sqlite(tmp.path().to_path_buf())).unwrap();
    assert_eq!(body(&a.toml), body(&b.toml), "{name}: tabdump and SQLite differ");
    assert_eq!(a.import.report.len(), b.import.report.len());
    a
}

fn has(imp: &xcat::Imported, sev: Severity, table: &str, row: &str, reason: &str) {
    let r = &imp.import.report;
    assert!(
        r.iter().any(|i| i.severity == sev && i.table == table && i.row.starts_with(row) && i.reason.contains(reason)),
        "no {sev:?} {table} {row} `{reason}` in:\n{}",
        r.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn linux_pools_with_external_nfs() {
    let imp = import("linux-pools");
    let c = &imp.cluster;
    eprintln!("{}", imp.toml);
    for i in &imp.import.report {
        eprintln!("{i}");
    }
    // SN pools (xcatmaster unset): each SN's address is its interface in the nodes' networks row
    // (snmove.pm:394-422), from hosts.otherinterfaces in both forms (hosts.pm:284-316), never its
    // MN-facing hosts.ip (172.16.0.x); the agent is reached by the SN's name.
    let addr = |s: &str| c.sn(s).unwrap().address.to_string();
    assert_eq!(addr("sn1"), "10.10.0.1", "name:IP");
    assert_eq!(addr("sn2"), "10.10.0.2", "-suffix:IP");
    assert_eq!(addr("sn3"), "10.20.0.3", "the eth1 pair, not ib0");
    assert_eq!(addr("sn4"), "10.20.0.4", "name!IP");
    assert_eq!(c.sn("sn3").unwrap().agent.to_string(), "sn3:7468");
    // "" on c005's own row is no value: the pool's list applies (xcat-truth.json).
    assert_eq!(c.node("c005").unwrap().sns, ["sn1", "sn2"]);
    assert_eq!(c.nodes().len(), 16);
    has(&imp, Severity::Skipped, "noderes", "nfs-ha", "no servicenode");
    // Images from nodetype.provmethod only (c006's stale current_osimage is not read), each on the
    // SNs of the nodes that boot it.
    let im: Vec<(&str, &str)> = c.images().iter().map(|i| (i.name.as_str(), i.path.as_str())).collect();
    assert_eq!(
        im,
        [
            ("rh86-stateless", "netboot/rhels8.6/x86_64/stateless"),
            ("rh86-statelite", "netboot/rhels8.6/x86_64/statelite"),
        ]
    );
    assert_eq!(c.image("rh86-stateless").unwrap().sns, ["sn3", "sn4"]);
    assert_eq!(c.image("rh86-statelite").unwrap().sns, ["sn1", "sn2", "sn3", "sn4"]);
    has(&imp, Severity::Skipped, "osimage", "rh86-unused", "no node");
    has(&imp, Severity::Skipped, "osimage", "rh86-install", "provmethod `install`");
    // Statelite: one area per statemnt directory; each node only in its own; the GPU nodes'
    // /gpudata beside the others' /nodedata; poolB's data on the external HA-NFS server is not
    // hanfs's; the stateless nodes mount no statemnt at all (anaconda.pm:617-680).
    let sl: Vec<(&str, &str)> = c.statelite().iter().map(|s| (s.name.as_str(), s.path.as_str())).collect();
    assert_eq!(sl, [("gpudata", "/gpudata"), ("nodedata", "/nodedata")]);
    assert_eq!(c.node("c007").unwrap().statelite.as_deref(), Some(&["gpudata".to_string()][..]));
    assert_eq!(c.node("c001").unwrap().statelite.as_deref(), Some(&["nodedata".to_string()][..]));
    for n in ["c009", "c013"] {
        assert_eq!(c.node(n).unwrap().statelite.as_deref(), Some(&[][..]), "{n}");
    }
    has(&imp, Severity::Error, "statelite", "poolB", "not a service node");
    has(&imp, Severity::Skipped, "statelite", "poolB", "c013 boots stateless image rh86-stateless");
    // What sn1 exports: each area itself read-write with the options xCAT's SvrUtils.pm setupStatemnt
    // gives it (xcat-core 7733d16f, line 1742: `rw,no_root_squash,sync,no_subtree_check,insecure`;
    // xCAT's clients mount it, mkdir <node>, remount), then its nodes' own directories.
    let ex = exports::render_sn(c, "sn1").unwrap();
    let lines: Vec<&str> = ex.lines().filter(|l| l.starts_with("/gpudata") || l.starts_with("/nodedata")).collect();
    assert_eq!(lines.len(), 1 + 2 + 1 + 6, "{ex}");
    assert!(lines[0].starts_with("/gpudata *(rw,no_root_squash,sync,no_subtree_check,insecure,fsid="), "{ex}");
    assert!(lines[1].starts_with("/gpudata/c007 *(rw,no_root_squash,sync,no_subtree_check,fsid="), "{ex}");
    assert!(lines[3].starts_with("/nodedata *(rw,no_root_squash,sync,no_subtree_check,insecure,fsid="), "{ex}");
    assert!(!ex.contains("/gpudata/c001") && !ex.contains("/nodedata/c007"), "{ex}");
}

#[test]
fn aix_setuphanfs_pair() {
    let imp = import("aix-hanfs");
    let c = &imp.cluster;
    // Both SNs are AIX (nodetype.os), reached by the nodes at the en1 address their xcatmaster
    // names (hosts.otherinterfaces `-en1:`), each the other's backup, as mkdsklsnode -S expects of
    // the pair (aixinstall.pm:12390-12415: exactly two SNs).
    for (s, a, b) in [("aixsn1", "10.2.0.1", "aixsn2"), ("aixsn2", "10.2.0.2", "aixsn1")] {
        let sn = c.sn(s).unwrap();
        assert_eq!(sn.dialect, model::Dialect::Aix, "{s}");
        assert_eq!(sn.address.to_string(), a, "{s}");
        assert_eq!(sn.backups, [b], "{s}");
    }
    assert_eq!(c.domain(), Some("aix.example"));
    // Only what doSNcopy2 copies to SNs (aixinstall.pm:9776-9801): the spot and resolv_conf of a
    // diskless image; never its lpp_source, shared_root (NIM makes it per SN) or the per-client
    // read-write resources.
    let im: Vec<&str> = c.images().iter().map(|i| i.path.as_str()).collect();
    assert_eq!(im, ["nim/spot/71Bspot", "nim/resolv_conf/71Bresolv"]);
    for what in [
        "lpp_source `71Blpp`",
        "shared_root `71Bshared_root`",
        "paging `71Bpaging`",
        "dump `71Bdump`",
        "home `71Bhome`",
        "tmp `71Btmp`",
    ] {
        has(&imp, Severity::Skipped, "nimimage", "71Bdskls", what);
    }
    // The SNs' own standalone image is booted by no node an SN serves.
    has(&imp, Severity::Skipped, "osimage", "71Bsn", "no node");
    // Statelite: $noderes.xcatmaster resolves to each node's primary (by its en1 name).
    assert_eq!(c.statelite().len(), 1);
    assert_eq!(c.serving("aixcn05"), Some("aixsn2"));
    assert_eq!(c.serving("aixcn01"), Some("aixsn1"));
    // The area itself, as aixlitesetup mounts it (xCAT/postscripts/aixlitesetup:53-80); never per node.
    let ex = exports::render_sn(c, "aixsn1").unwrap();
    assert!(ex.contains("\n/nodedata -vers=3:4,rw,root=*\n") && !ex.contains("/nodedata/"), "{ex}");
}

#[test]
fn shared_install_on_the_sns() {
    let imp = import("sharedinstall-sns");
    let c = &imp.cluster;
    // One shared installdir on the SNs: the image goes to one agent only.
    assert_eq!(c.image("rh92-netboot").unwrap().sns, ["sn1"]);
    has(&imp, Severity::Warning, "site", "sharedinstall", "replicated once, to sn1");
    // The stateless nodes: no statelite at all; regex servicenode and xcatmaster per node.
    assert!(c.statelite().is_empty());
    assert_eq!(c.node("n02").unwrap().sns, ["sn2", "sn1"]);
    assert_eq!(c.sn("sn2").unwrap().address.to_string(), "10.5.1.2");
}

#[test]
fn every_set_reports_what_it_leaves_out() {
    for name in ["linux-pools", "aix-hanfs", "sharedinstall-sns"] {
        let imp = import(name);
        // Every node of nodelist is a [[node]], an SN, or has a report line naming it.
        let t = xcat::SourceSpec::Tabdump(set(name)).read().unwrap();
        let nl = t.get("nodelist").unwrap();
        for r in nl.enabled_rows() {
            let n = nl.get(r, "node").unwrap();
            let mapped = imp.cluster.node(n).is_some() || imp.cluster.sn(n).is_some();
            let reported = imp.import.report.iter().any(|i| i.row.split([' ', ',']).any(|w| w == n));
            assert!(mapped || reported, "{name}: {n} is neither mapped nor reported");
        }
    }
}

/// `noderes.nfsdir`: a statelite node mounts `<nfsdir>/netboot/<osvers>/<osarch>/<profile>/rootimg`,
/// or `<dir>/rootimg` for `//dir` (anaconda.pm:622-636), from its SN; where that is not the
/// replicated rootimgdir the node would boot from a directory hanfs never fills: reported.
#[test]
fn nfsdir_is_honoured() {
    let with = |nfsdir: &str| {
        let tmp = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(set("linux-pools")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
        }
        let p = tmp.path().join("noderes.csv");
        let text = std::fs::read_to_string(&p).unwrap();
        let row = "\"poolA\",\"sn1,sn2\",\"xnba\",,,,,,\"mac\"";
        assert!(text.contains(row));
        std::fs::write(&p, text.replacen(row, &format!("\"poolA\",\"sn1,sn2\",\"xnba\",,,,,\"{nfsdir}\",\"mac\""), 1))
            .unwrap();
        xcat::import(&SourceSpec::Tabdump(tmp.path().to_path_buf())).unwrap()
    };
    // rh86-statelite's profile is `compute`, its rootimgdir .../statelite: nfsdir=/install sends the
    // poolA nodes to /install/netboot/rhels8.6/x86_64/compute/rootimg.
    let imp = with("/install");
    has(
        &imp,
        Severity::Error,
        "noderes",
        "c001",
        "mounts its root from `/install/netboot/rhels8.6/x86_64/compute/rootimg`",
    );
    // `//` means the directory as is: the replicated rootimgdir itself is fine.
    let imp = with("//install/netboot/rhels8.6/x86_64/statelite");
    assert!(!imp.import.report.iter().any(|i| i.reason.contains("nfsdir")), "{:?}", imp.import.report);
}

/// litetree and litefile rows are selected by image as xCAT's litetree.pm getNodeData selects them
/// (:340-359): empty, `ALL`, the node's osimage, or its whole `osimage.groups` value.
#[test]
fn lite_rows_by_image_or_image_group() {
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(set("linux-pools")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let edit = |file: &str, from: &str, to: &str| {
        let p = tmp.path().join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file}: {from}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    };
    // rh86-statelite joins image group `lite`; a litefile row names the group, a litetree row an
    // image no node boots, another the group.
    edit("osimage.csv", "\"rh86-statelite\",,", "\"rh86-statelite\",\"lite\",");
    edit("litefile.csv", "\"rh86-statelite\",\"/etc/ssh/\"", "\"lite\",\"/etc/ssh/\"");
    let lt = tmp.path().join("litetree.csv");
    let mut text = std::fs::read_to_string(&lt).unwrap();
    text.push_str("\"2.0\",\"nobody-boots-this\",\"172.16.0.1:/install/litetree/other\",,,\n");
    text.push_str("\"3.0\",\"lite\",\"172.16.0.1:/install/litetree/group\",,,\n");
    std::fs::write(&lt, text).unwrap();
    let imp = xcat::import(&SourceSpec::Tabdump(tmp.path().to_path_buf())).unwrap();
    assert!(!imp.import.report.iter().any(|i| i.table == "litefile"), "{:?}", imp.import.report);
    has(&imp, Severity::Skipped, "litetree", "2.0", "no node hanfs serves boots that image");
    let base = xcat::import(&SourceSpec::Tabdump(set("linux-pools"))).unwrap();
    let find = |imp: &xcat::Imported, p: &str| imp.cluster.images().iter().any(|i| i.path.as_str() == p);
    // Row 3.0 is mapped like row 1.0 (same server, the nodes' SN or not), for the group's nodes only.
    assert_eq!(find(&imp, "litetree/group"), find(&base, "litetree/base"));
    assert!(!find(&imp, "litetree/other"));
}

/// Acceptance (issue 8): `hanfs exports` for the AIX pair, with the admin's `setuphanfs = true`,
/// spliced into an `/etc/exports` that has a line of the site's own, gives line for line what
/// `mkdsklsnode -S` leaves there plus the statelite area xCAT's AIX nodes mount, as derived from
/// xCAT's code in tests/fixtures/sets/aix-hanfs/etc-exports.txt (commit and lines there).
#[test]
fn aix_pair_etc_exports_is_what_mkdsklsnode_s_leaves() {
    let imp = import("aix-hanfs");
    let mut table: toml::Table = imp.toml.parse().unwrap();
    let Some(toml::Value::Array(sns)) = table.get_mut("sn") else { panic!("no [[sn]] in\n{}", imp.toml) };
    for sn in sns.iter_mut() {
        sn.as_table_mut().unwrap().insert("setuphanfs".into(), toml::Value::Boolean(true));
    }
    let c = model::Cluster::from_toml("setuphanfs.toml", &toml::to_string(&table).unwrap()).unwrap();
    let text = std::fs::read_to_string(set("aix-hanfs").join("etc-exports.txt")).unwrap();
    // (path, options as a set): AIX's exportfs reads an entry's options in any order.
    let entry = |l: &str| {
        let (path, opts) = l.split_once(' ').unwrap_or((l, ""));
        let mut o: Vec<String> = opts.trim_start_matches('-').split(',').map(str::to_string).collect();
        o.sort();
        (path.to_string(), o)
    };
    let mut seen = 0;
    for block in text.split("\n== ").skip(1) {
        let mut lines = block.lines();
        let sn = lines.next().unwrap().trim();
        let want: Vec<_> = lines.filter(|l| !l.trim().is_empty()).map(entry).collect();
        let before = "/export/home -vers=3,rw\n";
        let after = exports::splice_aix(before, &exports::render_sn(&c, sn).unwrap()).unwrap();
        let got: Vec<_> = after.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(entry).collect();
        assert_eq!(got, want, "{sn}:\n{after}");
        seen += 1;
    }
    assert_eq!(seen, 2);
}

/// Acceptance (issue 8): nothing in the tables is dropped without a report line naming table, row
/// and reason. For every table set, every row of the tables that decide what hanfs serves (disabled
/// rows too) either shows in the config (a node, an SN or a group of them; an image built from it)
/// or has a report line with its table and its key.
#[test]
fn every_row_is_mapped_or_reported() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs = vec![root.join("cluster")];
    dirs.extend(["linux-pools", "aix-hanfs", "sharedinstall-sns"].map(set));
    for dir in dirs {
        let imp = xcat::import(&SourceSpec::Tabdump(dir.clone())).unwrap();
        let c = &imp.cluster;
        let t = SourceSpec::Tabdump(dir.clone()).read().unwrap();
        // Which groups each node is in (nodelist.groups), to tell a group row that reaches a
        // mapped node from one that reaches none.
        let nl = t.get("nodelist").unwrap();
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for r in nl.enabled_rows() {
            let n = nl.get(r, "node").unwrap().to_string();
            let g = nl.get(r, "groups").unwrap_or_default().split(',').map(str::to_string).collect();
            members.push((n, g));
        }
        let mapped_node = |n: &str| c.node(n).is_some() || c.sn(n).is_some();
        let reaches =
            |key: &str| mapped_node(key) || members.iter().any(|(n, g)| mapped_node(n) && g.iter().any(|g| g == key));
        let image = |name: &str| c.image(name).is_some();
        // An osimage shows only if a mapped node boots it (nodetype.provmethod, node or group row).
        let nt = t.get("nodetype").unwrap();
        let booted = |img: &str| {
            nt.enabled_rows().any(|r| {
                let key = nt.get(r, "node").unwrap_or_default();
                nt.get(r, "provmethod") == Some(img)
                    && (c.node(key).is_some()
                        || members.iter().any(|(n, g)| c.node(n).is_some() && g.iter().any(|g| g == key)))
            })
        };
        // An AIX osimage shows as the NIM trees its nimimage row names.
        let nim_shown: Vec<String> = t
            .get("nimimage")
            .map(|n| {
                n.enabled_rows()
                    .filter(|r| r.values.iter().flatten().any(|v| image(v)))
                    .filter_map(|r| n.get(r, "imagename").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut unaccounted = Vec::new();
        let mut rows = 0;
        for (table, key) in [
            ("nodelist", "node"),
            ("noderes", "node"),
            ("nodetype", "node"),
            ("servicenode", "node"),
            ("statelite", "node"),
            ("osimage", "imagename"),
            ("linuximage", "imagename"),
            ("nimimage", "imagename"),
            ("litetree", "priority"),
        ] {
            let Some(tab) = t.get(table) else { continue };
            for r in &tab.rows {
                rows += 1;
                let k = tab.get(r, key).unwrap_or_default();
                // A node's row may be reported under the table that decided it (the MN: noderes).
                let reported = imp.import.report.iter().any(|i| {
                    (i.table == table || table == "nodelist" || (i.table == "osimage" && key == "imagename"))
                        && i.row.split([' ', ',', '(']).any(|w| w == k)
                });
                let enabled = !xcat::table::is_disabled(tab.get(r, "disable"));
                let shown = enabled
                    && match table {
                        "osimage" | "linuximage" => booted(k) && (image(k) || nim_shown.iter().any(|n| n == k)),
                        // A NIM image shows as the resource trees it names.
                        "nimimage" => booted(k) && r.values.iter().flatten().any(|v| image(v)),
                        "litetree" => image(&format!("litetree-{k}")),
                        _ => reaches(k),
                    };
                if !shown && !reported {
                    unaccounted.push(format!("{table} {k} ({})", r.location));
                }
            }
        }
        assert!(rows > 5, "{}", dir.display());
        assert!(
            unaccounted.is_empty(),
            "{}: rows neither mapped nor reported:\n{}\nreport:\n{}",
            dir.display(),
            unaccounted.join("\n"),
            imp.import.report.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("\n")
        );
    }
}
