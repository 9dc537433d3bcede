//! `hanfs xcat redirect --apply` when one of xCAT's commands fails part way (issue 8 point 7): the
//! commands are stand-ins for xCAT's own (`chdef`, `chtab`, `nodeset` on PATH: shell scripts, a real
//! process boundary) that record each call and fail on the N-th. The run stops there, exits 1, and
//! reports per command what ran, what failed and what did not run, with the commands that take back
//! what ran, in human output and in --json.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../xcat/tests/fixtures/cluster")
}

/// A bin directory whose chdef, chtab, nodeset and makeconservercf append `NAME ARGS` to `calls`
/// and exit 1 on the `fail_at`-th call of any of them (0: never).
fn fake_xcat(dir: &Path, fail_at: u32) -> (PathBuf, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.join("calls");
    for name in ["chdef", "chtab", "nodeset", "makeconservercf"] {
        let p = bin.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{calls}'\nn=$(wc -l < '{calls}')\n\
                 if [ \"$n\" -eq {fail_at} ]; then echo \"{name}: Error: cannot update the table\" >&2; exit 1; fi\n",
                calls = calls.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (bin, calls)
}

fn redirect(dir: &Path, bin: &Path, json: bool) -> std::process::Output {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut c = Command::cargo_bin("hanfs").unwrap();
    c.env_remove("HANFS_CONFIG").env("HANFS_LOG", "error").env("PATH", path);
    c.args(["xcat", "redirect", "--tabdump"]).arg(fixtures()).args(["--node", "cn030", "--to", "sn2", "--apply"]);
    c.arg("--log").arg(dir.join("redirect.log"));
    if json {
        c.arg("--json");
    }
    c.output().unwrap()
}

#[test]
fn a_failing_xcat_command_stops_the_rest_and_each_is_reported() {
    // The plan for cn030 -> sn2 is chdef, chtab, nodeset (crates/hanfs/tests/xcat.rs prints it).
    let t = tempfile::tempdir().unwrap();
    let (bin, calls) = fake_xcat(t.path(), 2);
    let out = redirect(t.path(), &bin, false);
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{so}\n{se}");
    let ran = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(ran.lines().count(), 2, "nodeset must not run after the chtab failed: {ran}");
    assert!(ran.starts_with("chdef -t node -o cn030 servicenode=sn2,sn1 ") && ran.contains("\nchtab node=cn030 "));
    let line = |what: &str| se.lines().find(|l| l.starts_with(&format!("hanfs: ({what}): "))).map(str::to_string);
    assert!(line("ran").unwrap().contains("chdef -t node -o cn030"), "{se}");
    let failed = se.lines().find(|l| l.starts_with("hanfs: (FAILED, exit status: 1")).unwrap_or_default();
    assert!(failed.contains("cannot update the table") && failed.contains("chtab node=cn030"), "{se}");
    assert!(line("not run").unwrap().contains("nodeset cn030"), "{se}");
    // The chdef's undo sets back what the tables hold (the fixture's noderes row for cn030's group).
    let undo: Vec<&str> = se.lines().filter(|l| l.starts_with("hanfs:   undo: ")).collect();
    assert_eq!(undo.len(), 1, "{se}");
    assert!(undo[0].starts_with("hanfs:   undo: chdef -t node -o cn030 servicenode=sn1"), "{se}");
    assert!(se.contains("`chtab node=cn030"), "{se}");

    // --json: the same per command, on stdout, exit 1 as well.
    let t = tempfile::tempdir().unwrap();
    let (bin, calls) = fake_xcat(t.path(), 3);
    let out = redirect(t.path(), &bin, true);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["states"], serde_json::json!(["done", "done", "failed"]));
    assert_eq!(v["failed"]["argv"][0], "nodeset");
    assert_eq!(v["failed"]["status"], "exit status: 1");
    assert_eq!(v["commands"][1]["undo"][0][0], "chtab");
    assert_eq!(v["ran"].as_array().unwrap().len(), 3);
    assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 3);

    // Nothing fails: exit 0, every command done.
    let t = tempfile::tempdir().unwrap();
    let (bin, _) = fake_xcat(t.path(), 0);
    let out = redirect(t.path(), &bin, true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["states"], serde_json::json!(["done", "done", "done"]));
    assert!(v["failed"].is_null());
}
