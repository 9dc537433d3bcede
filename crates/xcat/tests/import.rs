//! Import of the generated cluster from tabdump CSV and SQLite files: both give the same config,
//! which matches the committed `fixtures/expected.toml` and validates; what cannot be mapped is in
//! the report; malformed input names its file and line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use xcat::{Severity, SourceError, SourceSpec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn update() -> bool {
    std::env::var_os("XCAT_FIXTURES_UPDATE").is_some()
}

/// The config without its header comment (which names the source).
pub fn body(toml: &str) -> String {
    toml.lines().skip_while(|l| l.starts_with('#') || l.is_empty()).collect::<Vec<_>>().join("\n")
}

#[test]
fn fixtures_are_current() {
    let dir = fixtures().join("cluster");
    let f = common::cluster();
    if update() {
        f.write_tabdump(&dir);
    }
    for (name, text) in f.tabdump() {
        let path = dir.join(format!("{name}.csv"));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == text, "{} is stale: rerun with XCAT_FIXTURES_UPDATE=1", path.display());
    }
}

#[test]
fn tabdump_and_sqlite_give_the_expected_config() {
    let tmp = tempfile::tempdir().unwrap();
    let f = common::cluster();
    f.write_tabdump(&tmp.path().join("csv"));
    f.write_sqlite(&tmp.path().join("sqlite"));
    let a = xcat::import(&SourceSpec::Tabdump(tmp.path().join("csv"))).unwrap();
    let b = xcat::import(&SourceSpec::Sqlite(tmp.path().join("sqlite"))).unwrap();
    assert_eq!(body(&a.toml), body(&b.toml), "tabdump and SQLite imports differ");
    assert_eq!(a.cluster, b.cluster);
    assert_eq!(a.import.report.len(), b.import.report.len());
    let expected_path = fixtures().join("expected.toml");
    if update() {
        let toml = a.toml.replace(&a.import.source, "tabdump files in tests/fixtures/cluster");
        std::fs::write(&expected_path, toml).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap();
    assert_eq!(body(&a.toml), body(&expected), "the import differs from {}", expected_path.display());
    // The committed CSV files import the same.
    let c = xcat::import(&SourceSpec::Tabdump(fixtures().join("cluster"))).unwrap();
    assert_eq!(body(&c.toml), body(&a.toml));
}

#[test]
fn xcat_reading_rules_hold() {
    let imp = xcat::import(&SourceSpec::Tabdump(fixtures().join("cluster"))).unwrap();
    let c = &imp.cluster;
    let sns = |n: &str| c.node(n).map(|n| n.sns.clone());
    // Groups in nodelist.groups order: rack01 before compute.
    assert_eq!(sns("cn001").unwrap(), ["sn1", "sn2"]);
    assert_eq!(sns("cn048").unwrap(), ["sn1", "sn2"]);
    assert_eq!(sns("cn049").unwrap(), ["sn2", "sn3"]);
    assert_eq!(sns("cn192").unwrap(), ["sn4", "sn1"]);
    assert_eq!(sns("cn191").unwrap(), ["sn4"], "the MN is never an SN");
    // The node's own row wins.
    assert_eq!(sns("cn005").unwrap(), ["sn2", "sn1"]);
    assert_eq!(sns("cn015").unwrap(), ["sn1", "sn3"], "disable=0 keeps a row");
    // Disabled rows: the node's row is skipped, the group's value is used.
    assert_eq!(sns("cn012").unwrap(), ["sn1", "sn2"]);
    assert_eq!(sns("cn014").unwrap(), ["sn1", "sn2"], "disable=\"\" disables a row, as xCAT's SQL does");
    // "" on the node's row is no value, like NULL: the groups' list applies (Table.pm getAttribs;
    // xcat-truth.json, made by xCAT's own Perl, has cn010 noderes.servicenode = "sn1,sn2").
    assert_eq!(sns("cn010").unwrap(), ["sn1", "sn2"]);
    assert_eq!(sns("cn011").unwrap(), ["sn1", "sn2"]);
    // A disabled nodelist row: no node. "no" is not disabled.
    assert!(c.node("cn013").is_none());
    assert!(c.node("cn003").is_some());
    // Regex servicenode with two arithmetic groups.
    assert_eq!(sns("an001").unwrap(), ["aixsn1", "aixsn2"]);
    assert_eq!(sns("an008").unwrap(), ["aixsn2", "aixsn1"]);
    // SNs, the MN and hidden nodes are not compute nodes.
    for n in ["sn1", "aixsn1", "xcatmn", "fsp01"] {
        assert!(c.node(n).is_none(), "{n}");
    }
    assert_eq!(c.nodes().len(), 199, "200 compute nodes less cn013 (disabled)");
    // Addresses as nodes see them: regex xcatmaster; names resolved through hosts.
    let addr = |s: &str| c.sn(s).unwrap().address.to_string();
    assert_eq!(addr("sn1"), "10.0.1.254");
    assert_eq!(addr("sn4"), "10.0.4.254");
    assert_eq!(addr("aixsn1"), "10.2.0.1");
    assert_eq!(addr("aixsn2"), "10.2.0.2");
    assert_eq!(c.sn("aixsn1").unwrap().dialect, model::Dialect::Aix);
    assert_eq!(c.sn("sn1").unwrap().dialect, model::Dialect::Linux);
    // Backups: the SNs its nodes list second, most common first (cn015 names sn3).
    assert_eq!(c.sn("sn1").unwrap().backups, ["sn2", "sn3"]);
    assert_eq!(c.sn("sn4").unwrap().backups, ["sn1"]);
    assert_eq!(c.sn("aixsn2").unwrap().backups, ["aixsn1"]);
    assert_eq!(c.domain(), Some("cluster.example"));
    // Statelite: a literal server on the backup SN means the node is served from there.
    assert_eq!(c.serving("cn007"), Some("sn2"));
    assert_eq!(c.serving("cn008"), Some("sn1"));
    assert_eq!(c.serving("an006"), Some("aixsn2"));
    let sl: Vec<(&str, &str)> = c.statelite().iter().map(|s| (s.name.as_str(), s.path.as_str())).collect();
    assert_eq!(sl, [("aixstate", "/aixstate"), ("nodedata", "/nodedata")]);
    // Images: rootimg relative to installdir, xCAT's default rootimgdir, NIM trees but never paging/dump.
    let im: Vec<(&str, &str)> = c.images().iter().map(|i| (i.name.as_str(), i.path.as_str())).collect();
    assert_eq!(
        im,
        [
            // What doSNcopy2 copies (aixinstall.pm:9776-9801): spot, resolv_conf; not the
            // diskless image's lpp_source, nor shared_root (NIM makes it on each SN).
            ("710spot", "nim/spot/710spot"),
            ("710resolv_conf", "nim/resolv_conf/710resolv_conf"),
            ("rh86-compute", "netboot/rhels8.6/x86_64/compute/rootimg"),
            ("rh86-statelite", "netboot/rhels8.6/x86_64/statelite/rootimg"),
            ("litetree-1.0", "litetree/base"),
        ]
    );
    assert_eq!(c.image("710spot").unwrap().sns, ["aixsn1", "aixsn2"]);
    // Only the SNs of the nodes that boot it (nodetype.provmethod; rack03 is served by sn3, sn4).
    assert_eq!(c.image("rh86-compute").unwrap().sns, ["sn3", "sn4"]);
    assert_eq!(c.image("rh86-statelite").unwrap().sns, ["sn1", "sn2", "sn3", "sn4"]);
    // The AIX SNs are AIX from nodetype.os, never Linux; the agent is reached by the SN's name.
    assert_eq!(c.sn("aixsn2").unwrap().dialect, model::Dialect::Aix);
    assert_eq!(c.sn("sn1").unwrap().agent.to_string(), "sn1:7468");
    assert_eq!(c.image("710spot").unwrap().exclude, ["**/.client_data"]);
}

#[test]
fn the_report_names_table_row_and_reason() {
    let imp = xcat::import(&SourceSpec::Tabdump(fixtures().join("cluster"))).unwrap();
    let r = &imp.import.report;
    let has = |sev: Severity, table: &str, row: &str, reason: &str| {
        assert!(
            r.iter()
                .any(|i| i.severity == sev && i.table == table && i.row.starts_with(row) && i.reason.contains(reason)),
            "no {sev:?} {table} {row} `{reason}` in:\n{}",
            r.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("\n")
        )
    };
    has(Severity::Skipped, "nodelist", "cn013", "disabled");
    has(Severity::Skipped, "noderes", "cn012", "disabled");
    has(Severity::Skipped, "noderes", "cn014", "disabled");
    has(Severity::Skipped, "nodelist", "fsp01", "hidden");
    has(Severity::Skipped, "noderes", "xcatmn", "served by the MN");
    has(Severity::Error, "noderes", "cn021", "not a service node");
    has(Severity::Error, "noderes", "cn191", "management node `xcatmn`");
    has(Severity::Error, "statelite", "cn190", "not a service node");
    has(Severity::Skipped, "osimage", "rh86-install", "provmethod `install`");
    has(Severity::Skipped, "osimage", "rh79-old", "disabled");
    has(Severity::Warning, "linuximage", "rh86-statelite", "default");
    has(Severity::Error, "linuximage", "orphan", "no enabled osimage");
    has(Severity::Skipped, "nimimage", "aix71-diskless", "paging `710paging` is per client");
    has(Severity::Skipped, "nimimage", "aix71-diskless", "dump `710dump` is per client");
    has(Severity::Skipped, "nimimage", "aix71-diskless", "shared_root `710shared_root` is made on each SN");
    has(Severity::Skipped, "nimimage", "aix71-diskless", "lpp_source `710lpp_source`");
    has(Severity::Skipped, "nimimage", "aix71-diskless", "bosinst_data");
    has(Severity::Skipped, "litetree", "2.0", "not on the nodes' service node");
    has(Severity::Warning, "litefile", "gone-image", "no enabled osimage");
    // Nothing is reported for the ordinary nodes.
    assert!(!r.iter().any(|i| i.row.starts_with("cn001")), "{r:?}");
    // The header sums the report up.
    assert!(imp.toml.starts_with("# hanfs cluster config, written by `hanfs xcat import` from tabdump files in"));
}

#[test]
fn malformed_and_missing_input_names_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("csv");
    common::cluster().write_tabdump(&dir);
    // An unclosed quote in the middle of noderes.csv.
    let p = dir.join("noderes.csv");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str("\"cn150\",\"sn3,sn4\n");
    std::fs::write(&p, &text).unwrap();
    let line = text.lines().count();
    match xcat::import(&SourceSpec::Tabdump(dir.clone())) {
        Err(xcat::ImportError::Source(SourceError::Csv { file, line: l, message })) => {
            assert!(file.ends_with("noderes.csv"), "{file}");
            assert_eq!(l, line);
            assert!(message.contains("never closed"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(&p).unwrap();
    let e = xcat::import(&SourceSpec::Tabdump(dir.clone())).unwrap_err().to_string();
    assert!(e.contains("noderes.csv") && e.contains("required xCAT table `noderes` is missing"), "{e}");
    // An optional table may be missing.
    let tmp2 = tempfile::tempdir().unwrap();
    common::cluster().write_tabdump(tmp2.path());
    std::fs::remove_file(tmp2.path().join("nimimage.csv")).unwrap();
    assert!(xcat::import(&SourceSpec::Tabdump(tmp2.path().to_path_buf())).is_ok());
    // SQLite: a file that is not an xCAT table.
    let sq = tmp.path().join("sq");
    common::cluster().write_sqlite(&sq);
    std::fs::write(sq.join("site.sqlite"), b"not a database at all, just text").unwrap();
    let e = xcat::import(&SourceSpec::Sqlite(sq.clone())).unwrap_err().to_string();
    assert!(e.contains("site.sqlite"), "{e}");
    std::fs::remove_file(sq.join("site.sqlite")).unwrap();
    let e = xcat::import(&SourceSpec::Sqlite(sq)).unwrap_err().to_string();
    assert!(e.contains("site.sqlite") && e.contains("missing"), "{e}");
}

#[test]
fn sqlite_is_opened_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    common::cluster().write_sqlite(tmp.path());
    let before: Vec<(String, u64)> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len())
        })
        .collect();
    xcat::import(&SourceSpec::Sqlite(tmp.path().to_path_buf())).unwrap();
    let mut after: Vec<(String, u64)> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len())
        })
        .collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(before, after, "no journal or WAL files, no size change");
}
