#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Names that become path components are checked before anything touches the disk: the review's
//! attack (`name = "../../victim"` made `hanfs plan` delete `<state_dir>/../victim/out`) and one
//! name per kind of bad name, each refused with exit 2 and the file, line and field.

use std::path::Path;
use std::process::Command;

fn config(d: &Path, image_name: &str) -> String {
    format!(
        "[cluster]\nsource_root = \"{0}/src\"\nstate_dir = \"{0}/state\"\nplaintext_loopback = true\n\n\
         [[sn]]\nname = \"sn1\"\naddress = \"127.0.0.1\"\nagent = \"127.0.0.1:1\"\n\n\
         [[image]]\nname = \"{image_name}\"\npath = \"netboot/x\"\n",
        d.display()
    )
}

fn plan(cfg: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hanfs"))
        .arg("--config")
        .arg(cfg)
        .arg("plan")
        .env_remove("HANFS_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn victim_directory_outside_the_state_dir_survives_plan() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("src/netboot/x")).unwrap();
    std::fs::create_dir_all(d.join("victim/out")).unwrap();
    std::fs::write(d.join("victim/out/precious"), b"keep me").unwrap();
    // state_dir/images/../../victim == <d>/victim
    let cfg = d.join("cluster.toml");
    std::fs::write(&cfg, config(d, "../../victim")).unwrap();
    let o = plan(&cfg);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{}:12:8: image[0].name:", cfg.display())), "{err}");
    assert_eq!(std::fs::read(d.join("victim/out/precious")).unwrap(), b"keep me");
    assert!(!d.join("state").exists(), "nothing written for a bad config");
}

#[test]
fn every_kind_of_bad_name_exits_2_with_file_line_and_field() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let long = "x".repeat(256);
    for bad in ["..", ".", "a/b", "", "a\\u0000b", "-x", long.as_str()] {
        let cfg = d.join("cluster.toml");
        std::fs::write(&cfg, config(d, bad)).unwrap();
        let o = plan(&cfg);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains(&format!("{}:12:8: image[0].name:", cfg.display())), "{bad:?}: {err}");
    }
}
