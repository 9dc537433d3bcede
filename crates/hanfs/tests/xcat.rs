//! `hanfs xcat import` / `hanfs xcat redirect` against the binary: the committed tabdump fixture
//! (crates/xcat/tests/fixtures) imports to the expected config; malformed CSV, a missing table and
//! an unreachable database exit 2 naming the file, line or connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../xcat/tests/fixtures")
}

fn copy_fixture(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixtures().join("cluster")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn body(toml: &str) -> String {
    toml.lines().skip_while(|l| l.starts_with('#') || l.is_empty()).collect::<Vec<_>>().join("\n")
}

fn hanfs() -> Command {
    let mut c = Command::cargo_bin("hanfs").unwrap();
    c.env_remove("HANFS_CONFIG").env("HANFS_LOG", "error");
    c
}

#[test]
fn import_writes_the_expected_config_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hanfs.toml");
    let a = hanfs()
        .args(["xcat", "import", "--tabdump"])
        .arg(fixtures().join("cluster"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains("not mapped: statelite cn190"))
        .stderr(predicate::str::contains("skipped: nodelist cn013"))
        .stderr(predicate::str::contains("6 SNs, 199 nodes, 5 images, 2 statelite areas"));
    assert!(a.get_output().stdout.is_empty());
    let got = std::fs::read_to_string(&out).unwrap();
    let want = std::fs::read_to_string(fixtures().join("expected.toml")).unwrap();
    assert_eq!(body(&got), body(&want));
    // The written config is one the other commands accept.
    model::Cluster::from_toml("hanfs.toml", &got).unwrap();

    // --json: the report as data, the config inline when no -o.
    let o = hanfs().args(["--json", "xcat", "import", "--tabdump"]).arg(fixtures().join("cluster")).output().unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["nodes"], 199); // cn010's "" servicenode falls through to its groups (Table.pm)
    assert_eq!(body(v["config"].as_str().unwrap()), body(&want));
    let report = v["report"].as_array().unwrap();
    assert!(report.iter().any(|i| i["table"] == "noderes" && i["row"] == "cn021" && i["severity"] == "error"));
}

#[test]
fn xcat_names_that_are_not_safe_path_components_are_not_imported() {
    // An osimage name becomes a directory in hanfs' state dir: `../../victim` must never get there.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("tab");
    copy_fixture(&d);
    let mut li = std::fs::read_to_string(d.join("linuximage.csv")).unwrap();
    li += "\"../../victim\",,,,,,,,,,\"/install/netboot/victim/x86_64/compute\",,,,,,,,,,,,,\n";
    li += "\"-rf\",,,,,,,,,,\"/install/netboot/dash/x86_64/compute\",,,,,,,,,,,,,\n";
    std::fs::write(d.join("linuximage.csv"), li).unwrap();
    let mut os = std::fs::read_to_string(d.join("osimage.csv")).unwrap();
    for n in ["../../victim", "-rf"] {
        os += &format!("\"{n}\",,\"compute\",\"linux\",,\"netboot\",,,,,,\"Linux\",\"rhels8.6\",\"x86_64\",,,,,,,,,\n");
    }
    std::fs::write(d.join("osimage.csv"), os).unwrap();
    // Booted by nodes (nodetype.provmethod), so the import reaches them rather than leaving them
    // out as images no node uses.
    let mut nt = std::fs::read_to_string(d.join("nodetype.csv")).unwrap();
    nt += "\"cn001\",\"rhels8.6\",\"x86_64\",\"compute\",\"../../victim\",,,,\n";
    nt += "\"cn002\",\"rhels8.6\",\"x86_64\",\"compute\",\"-rf\",,,,\n";
    std::fs::write(d.join("nodetype.csv"), nt).unwrap();
    let out = tmp.path().join("hanfs.toml");
    hanfs()
        .args(["xcat", "import", "--tabdump"])
        .arg(&d)
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(
            predicate::str::contains("linuximage ../../victim (")
                .and(predicate::str::contains("image name: `../../victim` contains `/`")),
        )
        .stderr(predicate::str::contains("image name: `-rf` starts with `-`"));
    let got = std::fs::read_to_string(&out).unwrap();
    assert!(!got.contains("victim") && !got.contains("\"-rf\""), "{got}");
    model::Cluster::from_toml("hanfs.toml", &got).unwrap();
}

#[test]
fn malformed_csv_exits_2_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let p = tmp.path().join("nodelist.csv");
    let mut lines: Vec<String> = std::fs::read_to_string(&p).unwrap().lines().map(String::from).collect();
    lines[9] = "\"cn005\",\"rack01\"x,,".to_string();
    std::fs::write(&p, lines.join("\n")).unwrap();
    hanfs()
        .args(["xcat", "import", "--tabdump"])
        .arg(tmp.path())
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(format!("{}:10:", p.display())))
        .stderr(predicate::str::contains("doubled"));
}

#[test]
fn missing_table_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    std::fs::remove_file(tmp.path().join("servicenode.csv")).unwrap();
    let out = tmp.path().join("out.toml");
    hanfs()
        .args(["xcat", "import", "--tabdump"])
        .arg(tmp.path())
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("{}", tmp.path().join("servicenode.csv").display())))
        .stderr(predicate::str::contains("`servicenode` is missing"));
    assert!(!out.exists(), "nothing written on bad input");
    // An empty SQLite directory: the first required table is named.
    let empty = tempfile::tempdir().unwrap();
    hanfs()
        .args(["xcat", "import", "--sqlite"])
        .arg(empty.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nodelist.sqlite"));
}

#[test]
fn unreachable_database_exits_2_naming_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let (_held, port) = testkit::refusing_port(); // nothing listens there
    let cfgloc = tmp.path().join("cfgloc");
    std::fs::write(&cfgloc, format!("Pg:dbname=xcatdb;host=127.0.0.1;port={port}|xcatadm|secretpw\n")).unwrap();
    hanfs()
        .args(["xcat", "import", "--cfgloc"])
        .arg(&cfgloc)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("cannot connect to PostgreSQL database xcatdb at 127.0.0.1:{port}")))
        .stderr(predicate::str::contains(cfgloc.display().to_string()))
        .stderr(predicate::str::contains("secretpw").not());
    std::fs::write(&cfgloc, "Oracle:dbname=x|u|p\n").unwrap();
    hanfs()
        .args(["xcat", "import", "--cfgloc"])
        .arg(&cfgloc)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("{}: unknown database driver", cfgloc.display())));
}

#[test]
fn redirect_prints_then_applies() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(&tmp.path().join("t"));
    hanfs()
        .args(["xcat", "redirect", "--tabdump"])
        .arg(tmp.path().join("t"))
        .args(["--node", "cn030", "--to", "sn2"])
        .assert()
        .success()
        .stdout("chdef -t node -o cn030 servicenode=sn2,sn1 xcatmaster=10.0.2.254\nchtab node=cn030 statelite.statemnt=10.0.2.254:/nodedata\nnodeset cn030 osimage=rh86-statelite\n")
        .stderr(predicate::str::contains("dry run"));
    let tpl = tmp.path().join("templates.toml");
    std::fs::write(
        &tpl,
        "chdef = [\"echo\", \"chdef\", \"{node}\", \"{attrs}\"]\nchtab = [\"true\"]\nnodeset = [\"true\"]\n",
    )
    .unwrap();
    let log = tmp.path().join("redirect.log");
    hanfs()
        .args(["xcat", "redirect", "--tabdump"])
        .arg(tmp.path().join("t"))
        .args(["--node", "cn030", "--to", "sn2", "--apply", "--templates"])
        .arg(&tpl)
        .arg("--log")
        .arg(&log)
        .assert()
        .success()
        .stderr(predicate::str::contains("ran 3 commands"));
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 4);
    std::fs::write(&tpl, "chdef = [\"false\"]\n").unwrap();
    hanfs()
        .args(["xcat", "redirect", "--tabdump"])
        .arg(tmp.path().join("t"))
        .args(["--node", "cn030", "--to", "sn2", "--apply", "--templates"])
        .arg(&tpl)
        .arg("--log")
        .arg(&log)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("`false` failed"));
    hanfs()
        .args(["xcat", "redirect", "--tabdump"])
        .arg(tmp.path().join("t"))
        .args(["--node", "nosuchnode", "--to", "sn2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nosuchnode"));
}
