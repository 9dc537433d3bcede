//! An AIX SN in setuphanfs mode is exported as xCAT's `mkdsklsnode -S` exports it, and the
//! `--commands` script runs xCAT's steps in xCAT's order. The expected steps are derived from
//! aixinstall.pm and recorded in `fixtures/setuphanfs.txt` (xCAT commit and lines there).
//!
//! The script runs under the real `sh`, `awk` and `grep`; only the AIX commands (chnfsdom, lsnfsexp,
//! exportfs, chnfs, stopsrc, startsrc, mknfsexp, chnfsexp, rmnfsexp, and sleep) are stand-ins that log
//! their arguments, since this machine is not AIX.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use model::Cluster;
use std::path::{Path, PathBuf};
use std::process::Command;

fn cluster() -> Cluster {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../exports/aix-setuphanfs/cluster.toml");
    Cluster::from_toml(&p.display().to_string(), &std::fs::read_to_string(&p).unwrap()).unwrap()
}

struct Case {
    title: String,
    chnfsdom: String,
    lsnfsexp: String,
    expected: Vec<String>,
}

fn cases() -> Vec<Case> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/setuphanfs.txt");
    let text = std::fs::read_to_string(p).unwrap();
    let mut out = Vec::new();
    for block in text.split("\n== ").skip(1) {
        let mut lines = block.lines();
        let title = lines.next().unwrap().to_string();
        let chnfsdom = lines.next().unwrap().strip_prefix("chnfsdom:").unwrap().trim().to_string();
        let lsnfsexp = lines.next().unwrap().strip_prefix("lsnfsexp:").unwrap().trim().to_string();
        assert_eq!(lines.next(), Some("--"), "{title}");
        let expected = lines.filter(|l| !l.is_empty()).map(str::to_string).collect();
        out.push(Case { title, chnfsdom, lsnfsexp, expected });
    }
    assert_eq!(out.len(), 5);
    out
}

const STUBS: &[&str] =
    &["chnfsdom", "lsnfsexp", "exportfs", "chnfs", "stopsrc", "startsrc", "mknfsexp", "chnfsexp", "rmnfsexp", "sleep"];

/// Run the script with the AIX stand-ins first on PATH; (log lines, exit code, stderr).
fn run(script: &str, case: &Case, fail: &str) -> (Vec<String>, i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let bin: PathBuf = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let stub = "#!/bin/sh\nn=$(basename \"$0\")\necho \"$n $*\" | sed 's/ $//' >> \"$STUB_LOG\"\n\
                case \"$n\" in\n chnfsdom) [ $# -eq 0 ] && echo \"$STUB_DOMAIN\" ;;\n \
                lsnfsexp) echo '#path:anonuid:public:versions:exname:refer:replicas:other'; \
                [ -n \"$STUB_EXPORTS\" ] && echo \"$STUB_EXPORTS\" ;;\nesac\n\
                case \" $STUB_FAIL \" in *\" $n \"*) exit 1 ;; esac\nexit 0\n";
    for s in STUBS {
        let p = bin.join(s);
        std::fs::write(&p, stub).unwrap();
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&p, perm).unwrap();
    }
    let log = dir.path().join("log");
    std::fs::write(&log, "").unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("PATH", path)
        .env("STUB_LOG", &log)
        .env("STUB_DOMAIN", &case.chnfsdom)
        .env("STUB_EXPORTS", &case.lsnfsexp)
        .env("STUB_FAIL", fail)
        .output()
        .unwrap();
    let lines = std::fs::read_to_string(&log).unwrap().lines().map(str::to_string).collect();
    (lines, out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_export_is_the_installdir_with_the_pair() {
    let c = cluster();
    for (sn, own, other) in [("aixsn1", "10.2.0.1", "10.2.0.2"), ("aixsn2", "10.2.0.2", "10.2.0.1")] {
        let text = exports::render_sn(&c, sn).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        // mknfsexp -d /install -v 4 -g <self>:<partner> -x -t rw -r '*' (aixinstall.pm:12673); no
        // per-image export inside it (AIX exports no directory inside another of one file system).
        assert_eq!(lines[0], format!("/install -vers=4,noauto,rw,root=*,replicas=/install@{own}:/install@{other}"));
        // The statelite area itself, as xCAT's AIX nodes mount it (tests/aix_statelite.rs).
        assert_eq!(lines[1..], ["/nodedata -vers=3:4,rw,access=@10.2.0.0/16,root=@10.2.0.0/16"], "{text}");
        assert!(!text.contains("/install/nim"), "{text}");
        // It parses back, and splices into an /etc/exports keeping the admin's lines.
        let ex = exports::build(&c, sn).unwrap();
        assert_eq!(exports::parse(model::Dialect::Aix, &text).unwrap(), ex);
        let admin = "/export/home -vers=3,rw\n";
        assert!(exports::splice_aix(admin, &text).unwrap().starts_with(admin));
    }
}

#[test]
fn commands_run_xcats_steps_in_xcats_order() {
    let c = cluster();
    let ex = exports::build(&c, "aixsn1").unwrap();
    let script = exports::aix::setuphanfs_commands(&ex, "aixsn1", c.domain());
    // hanfs's own statelite exports follow xCAT's steps.
    let tail = [
        "rmnfsexp -d /nodedata -I",
        "mknfsexp -d /nodedata -v 3,4 -t rw -c @10.2.0.0/16 -r @10.2.0.0/16 -I",
        "exportfs -va",
    ];
    for case in cases() {
        let (log, code, err) = run(&script, &case, "");
        assert_eq!(code, 0, "{}: {err}\n{script}", case.title);
        assert_eq!(log[..log.len() - tail.len()], case.expected[..], "{}\n{script}", case.title);
        assert_eq!(log[log.len() - tail.len()..], tail, "{}", case.title);
    }
}

#[test]
fn a_failed_step_is_named_and_the_rest_still_run() {
    let c = cluster();
    let ex = exports::build(&c, "aixsn1").unwrap();
    let script = exports::aix::setuphanfs_commands(&ex, "aixsn1", c.domain());
    let fresh = cases().into_iter().next().unwrap();
    // As in xCAT (each failure counted in $error, the next step run), chnfs failing does not stop
    // the export; the script names it and exits 1.
    let (log, code, err) = run(&script, &fresh, "chnfs");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("`chnfs -R on` failed"), "{err}");
    assert_eq!(log[..fresh.expected.len()], fresh.expected[..]);
}

#[test]
fn setuphanfs_needs_aix_and_one_partner() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../exports/aix-setuphanfs/cluster.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let linux =
        text.replacen("dialect    = \"aix\"\nsetuphanfs = true", "dialect    = \"linux\"\nsetuphanfs = true", 1);
    let e = Cluster::from_toml("linux.toml", &linux).unwrap_err().to_string();
    assert!(e.contains("sn[0].setuphanfs") && e.contains("dialect = \"aix\""), "{e}");
    let alone = text.replace("backups     = \"pairs\"", "backups     = \"none\"");
    let e = Cluster::from_toml("alone.toml", &alone).unwrap_err().to_string();
    assert!(e.contains("exactly one backup") && e.contains("it has 0"), "{e}");
}
