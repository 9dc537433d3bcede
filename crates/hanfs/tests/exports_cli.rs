//! `hanfs exports`: reproduces the committed example files, speaks JSON, and rejects bad configs and
//! exports past a limit with exit 2 and a message naming the file, line and field (or the export).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;
use predicates::str::contains;
use std::path::{Path, PathBuf};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../exports")
}

fn hanfs() -> Command {
    let mut c = Command::cargo_bin("hanfs").unwrap();
    c.env_remove("HANFS_CONFIG");
    c
}

/// Every `<dir>/cluster.toml` under `root` with its rendered `<sn>.exports`/`<sn>.aix-exports` files
/// must be reproduced byte for byte; returns how many files were compared.
fn check_rendered_files(root: &Path) -> usize {
    let mut n = 0;
    for dir in std::fs::read_dir(root).unwrap() {
        let dir = dir.unwrap().path();
        let cfg = dir.join("cluster.toml");
        if !cfg.is_file() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let Some(sn) = name.strip_suffix(".exports").or_else(|| name.strip_suffix(".aix-exports")) else {
                continue;
            };
            let want = std::fs::read(&f).unwrap();
            let out = hanfs().args(["exports", "--config"]).arg(&cfg).args(["--sn", sn]).output().unwrap();
            assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.stdout, want, "{} differs", f.display());
            n += 1;
        }
    }
    n
}

#[test]
fn reproduces_every_committed_example_file() {
    let n = check_rendered_files(&examples());
    assert!(n >= 9, "only {n} example files");
}

/// The kernel rig's scenarios use committed exports when no binary is built; they must be what
/// hanfs renders, or the rig would test something hanfs does not write.
#[test]
fn reproduces_integration_scenarios() {
    let n = check_rendered_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../integration/scenarios"));
    assert!(n >= 5, "only {n} scenario files");
}

#[test]
fn all_sns_under_headings_and_json() {
    let cfg = examples().join("linux-ring/cluster.toml");
    hanfs()
        .args(["exports", "--config"])
        .arg(&cfg)
        .assert()
        .success()
        .stdout(contains("# sn: sn1 (linux, /etc/exports.d/hanfs.exports)\n# /etc/exports.d/hanfs.exports"))
        .stdout(contains("\n# sn: sn4 (linux"));
    let out =
        hanfs().args(["--json", "exports", "--config"]).arg(examples().join("aix-pair/cluster.toml")).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sn = &v["sns"]["aixsn1"];
    assert_eq!(sn["dialect"], "aix");
    let want = std::fs::read_to_string(examples().join("aix-pair/aixsn1.aix-exports")).unwrap();
    assert_eq!(sn["text"], want.as_str());
    assert_eq!(v["sns"].as_object().unwrap().len(), 2);
}

#[test]
fn commands() {
    hanfs()
        .args(["exports", "--commands", "--sn", "aixsn2", "--config"])
        .arg(examples().join("aix-pair/cluster.toml"))
        .assert()
        .success()
        .stdout(contains("exportfs -ua\nchnfs -R on\n"))
        .stdout(contains("chnfsdom cluster.example\n"))
        .stdout(contains(
            "mknfsexp -d /install/nim/spot/71Bspot -v 4 -t ro -r '*' -g /install/nim/spot/71Bspot@10.2.0.2:",
        ));
    hanfs()
        .args(["exports", "--commands", "--sn", "sn1", "--config"])
        .arg(examples().join("mixed/cluster.toml"))
        .assert()
        .success()
        .stdout(contains("cat > /etc/exports.d/hanfs.exports <<'HANFS_EOF'\n"))
        .stdout(contains("HANFS_EOF\nexportfs -ra\n"));
}

#[test]
fn unknown_sn_is_bad_input() {
    hanfs()
        .args(["exports", "--sn", "sn9", "--config"])
        .arg(examples().join("linux-ring/cluster.toml"))
        .assert()
        .code(2)
        .stderr(contains("unknown SN `sn9` (the cluster has: sn1, sn2, sn3, sn4)"));
}

const BASE: &str = r#"[cluster]
source_root = "/install"
domain = "cluster.example"
plaintext_loopback = true

[[sn]]
name = "sn1"
address = "127.0.0.1"
agent = "127.0.0.1:7001"

[[sn]]
name = "sn2"
address = "127.0.0.2"
agent = "127.0.0.1:7002"
backups = ["sn1"]

[[image]]
name = "rh8"
path = "netboot/rh8/x86_64/compute/rootimg"
"#;

fn run_with(text: &str) -> (tempfile::TempDir, PathBuf, assert_cmd::assert::Assert) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(&cfg, text).unwrap();
    let a = hanfs().args(["exports", "--config"]).arg(&cfg).assert();
    (dir, cfg, a)
}

#[test]
fn base_config_is_fine() {
    let (_d, _c, a) = run_with(BASE);
    a.success().stdout(contains("replicas=/install/netboot/rh8/x86_64/compute/rootimg@127.0.0.2:"));
}

#[test]
fn wrong_type_names_file_line_field() {
    let (_d, cfg, a) = run_with(&BASE.replace("agent = \"127.0.0.1:7002\"", "agent = 7002"));
    a.code(2).stderr(contains(format!("{}:14:", cfg.display()))).stderr(contains("sn[1].agent"));
}

#[test]
fn unknown_sn_in_backups_names_file_line_field() {
    let (_d, cfg, a) = run_with(&BASE.replace("backups = [\"sn1\"]", "backups = [\"sn7\"]"));
    a.code(2)
        .stderr(contains(format!("{}:15:", cfg.display())))
        .stderr(contains("sn[1].backups[0]: unknown server `sn7`"));
}

#[test]
fn host_name_on_aix_names_file_line_field() {
    let text = BASE.replace("address = \"127.0.0.1\"", "address = \"sn1.cluster.example\"\ndialect = \"aix\"");
    let (_d, cfg, a) = run_with(&text);
    a.code(2)
        .stderr(contains(format!("{}:8:", cfg.display())))
        .stderr(contains("sn[0].address"))
        .stderr(contains("IP"));
}

#[test]
fn limit_violation_names_the_export() {
    let (_d, cfg, a) = run_with(&BASE.replace("compute/rootimg", "compute,v2/rootimg"));
    a.code(2)
        .stderr(contains(format!(
            "{}: SN `sn1`: export `/install/netboot/rh8/x86_64/compute,v2/rootimg *`",
            cfg.display()
        )))
        .stderr(contains("comma"));
}

/// An AIX SN in setuphanfs mode: `--commands` is the script of xCAT's `mkdsklsnode -S` steps
/// (crates/exports/tests/setuphanfs.rs runs it against the steps recorded from aixinstall.pm).
#[test]
fn setuphanfs_commands_are_xcats_steps() {
    let cfg = examples().join("aix-setuphanfs/cluster.toml");
    let out = hanfs().args(["exports", "--config"]).arg(&cfg).args(["--sn", "aixsn1", "--commands"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("#!/bin/sh\n"), "{text}");
    for step in [
        "if chnfsdom | grep 'N/A' >/dev/null; then\n    run chnfsdom aix.example\n    run stopsrc -g nfs\n",
        "state=$(lsnfsexp -c |",
        "    run exportfs -ua\n    run chnfs -R on\n    run stopsrc -g nfs\n    run startsrc -g nfs\n    run exportfs -a\n",
        "run mknfsexp -d \"$dir\" -B -v 4 -g /install@10.2.0.1:/install@10.2.0.2 -x -t rw -r '*'",
    ] {
        assert!(text.contains(step), "missing {step:?} in\n{text}");
    }
    assert!(!text.contains("/install/nim"), "{text}");
}

/// An AIX node mounts its statelite area itself (xCAT's aixlitesetup), so no export can send it to
/// a new SN: `hanfs exports` and `hanfs migrate` say so per node, and nothing renders a `refer=`.
#[test]
fn a_moved_aix_node_is_named_not_referred() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[cluster]\nsource_root = \"/install\"\nstate_dir = \"{}\"\ndomain = \"aix.example\"\nplaintext_loopback = true\n\n\
         [[sn]]\nname = \"aixsn1\"\naddress = \"127.0.0.1\"\nagent = \"127.0.0.1:7001\"\ndialect = \"aix\"\nbackups = [\"aixsn2\"]\n\n\
         [[sn]]\nname = \"aixsn2\"\naddress = \"127.0.0.2\"\nagent = \"127.0.0.1:7002\"\ndialect = \"aix\"\nbackups = [\"aixsn1\"]\n\n\
         [[statelite]]\nname = \"nodedata\"\npath = \"/nodedata\"\n\n\
         [[node]]\nname = \"aixcn01\"\nsns = [\"aixsn1\", \"aixsn2\"]\n",
        dir.path().join("state").display()
    );
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(&cfg, &text).unwrap();
    let line = "aixcn01: no refer= from AIX SN aixsn1";
    let args = ["--node", "aixcn01", "--to", "aixsn2", "--dry-run"];
    let out = hanfs().args(["migrate", "--config"]).arg(&cfg).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(line) && stdout.contains("/nodedata -vers=3:4,rw,root=*"), "{stdout}");
    let referral = |t: &str| t.lines().any(|l| l.starts_with('/') && l.contains("refer="));
    assert!(!referral(&stdout), "{stdout}");
    // Once moved (here by the config), `hanfs exports` names it on stderr; the file has no refer=.
    let moved = cfg.with_file_name("moved.toml");
    std::fs::write(
        &moved,
        text.replace("sns = [\"aixsn1\", \"aixsn2\"]", "sns = [\"aixsn1\", \"aixsn2\"]\nserved_by = \"aixsn2\""),
    )
    .unwrap();
    let out = hanfs().args(["exports", "--config"]).arg(&moved).args(["--sn", "aixsn1"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(line), "{out:?}");
    assert!(!referral(&String::from_utf8_lossy(&out.stdout)), "{out:?}");
    let out = hanfs().args(["exports", "--config"]).arg(&moved).args(["--sn", "aixsn2"]).output().unwrap();
    assert!(out.stderr.is_empty(), "{out:?}");
}
