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
