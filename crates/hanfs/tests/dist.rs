#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shipped example configs parse as they are, and the systemd units run the commands they name.

use std::path::PathBuf;

fn dist(p: &str) -> (String, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dist").join(p);
    (path.display().to_string(), std::fs::read_to_string(&path).unwrap())
}

#[test]
fn example_configs_parse() {
    let (f, t) = dist("agent.toml");
    let a = model::AgentConfig::from_toml(&f, &t).unwrap();
    assert_eq!(a.root.as_str(), "/install");
    assert!(a.tls.is_some());
    let (f, t) = dist("hanfs.toml");
    let c = model::Cluster::from_toml(&f, &t).unwrap();
    assert_eq!(c.sns().len(), 2);
    assert!(c.tls().is_some());
    // The shipped cluster renders exports for every SN.
    for sn in c.sns() {
        let text = exports::render_sn(&c, &sn.name).unwrap();
        assert!(text.contains("replicas="), "{text}");
    }
}

#[test]
fn units_name_real_commands_and_configs() {
    for (unit, cmd, conf) in [
        ("systemd/hanfs-agent.service", "agent", "/etc/hanfs/agent.toml"),
        ("systemd/hanfs-daemon.service", "daemon", "/etc/hanfs/hanfs.toml"),
    ] {
        let (_, t) = dist(unit);
        let exec = t.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        let argv: Vec<&str> = exec.trim_start_matches("ExecStart=").split_whitespace().collect();
        assert_eq!(argv[0], "/usr/bin/hanfs");
        assert!(argv.windows(2).any(|w| w == ["--config", conf]), "{exec}");
        assert!(argv.contains(&cmd), "{exec}");
        // The same arguments parse with this build's command line (only --help-free parsing: the
        // subcommand must exist).
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_hanfs")).args([cmd, "--help"]).output().unwrap();
        assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(t.contains(section), "{unit} lacks {section}");
        }
    }
}

/// The xCAT prescript (dist/xcat/hanfs-sync): on the MN it runs `hanfs sync` and reports a failure
/// with exit 1 (xCAT reports it and runs the remaining prescripts); without the cluster config (an
/// SN) it only says so and exits 0, so nodeset is not failed for it.
#[test]
fn prescript_syncs_on_the_mn_only() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dist/xcat/hanfs-sync");
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("hanfs.toml");
    let run = |hanfs: &str| {
        std::process::Command::new(&script)
            .env("HANFS_CONFIG", &conf)
            .env("HANFS", hanfs)
            .env("NODES", "c001,c002")
            .env("ACTION", "netboot")
            .output()
            .unwrap()
    };
    let out = run("false");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not the MN; run `hanfs sync` on the MN for c001,c002"));
    std::fs::write(&conf, "").unwrap();
    // The real binary on an empty config: the sync fails, the script says so and exits 1.
    let out = run(env!("CARGO_BIN_EXE_hanfs"));
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`hanfs sync` failed after netboot of c001,c002"));
    let out = run("true");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("synced after netboot of c001,c002"));
}
