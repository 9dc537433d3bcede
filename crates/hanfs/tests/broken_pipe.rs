#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `hanfs exports | head`: a command whose stdout reader is gone ends quietly (no panic, no
//! message) with status 0, as the contract says. The pipe's read end is closed before hanfs writes anything, so
//! every write meets EPIPE.

use model::config::{sp, ClusterSection, ConfigFile, ImageSection, SnSection};
use std::process::{Command, Stdio};

fn closed_pipe() -> Stdio {
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    Stdio::from(w)
}

#[test]
fn printing_commands_end_quietly_on_a_closed_pipe() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("src/netboot/x")).unwrap();
    let s = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
    let mut section = ClusterSection::new(s(d.join("src")));
    section.state_dir = Some(sp(s(d.join("state"))));
    section.plaintext_loopback = true;
    let mut cfg = ConfigFile::new(section);
    for i in 1..=4 {
        cfg.sn.push(SnSection::new(format!("sn{i}"), format!("127.0.0.{i}")).agent(format!("127.0.0.1:{}", 7000 + i)));
    }
    cfg.image.push(ImageSection::new("img", "netboot/x"));
    let cfg = cfg.to_toml().unwrap();
    let c = d.join("cluster.toml");
    std::fs::write(&c, cfg).unwrap();
    for args in [&["exports"][..], &["--json", "exports"], &["exports", "--sn", "sn1"], &["plan"], &["--json", "plan"]]
    {
        let o = Command::new(env!("CARGO_BIN_EXE_hanfs"))
            .arg("--config")
            .arg(&c)
            .args(args)
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.is_empty(), "{args:?}: {err}");
        // Contract: "a closed standard output ends the command quietly with status 0".
        assert_eq!(o.status.code(), Some(0), "{args:?}: {:?}", o.status);
    }
}
