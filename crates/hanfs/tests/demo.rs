#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `hanfs demo` end to end: exits 0, verifies, and leaves no agent process behind.

use std::process::Command;

fn agents_under(dir: &std::path::Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(dir.to_str().unwrap()) && cmd.contains("agent") {
                v.push(cmd);
            }
        }
    }
    v
}

#[test]
fn demo_runs_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let o = Command::new(env!("CARGO_BIN_EXE_hanfs"))
        .args(["--json", "demo", "--sns", "2", "--dir", work.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let (b1, b2) = (v["sync1"]["bytes_sent"].as_u64().unwrap(), v["sync2"]["bytes_sent"].as_u64().unwrap());
    assert!(b2 * 20 < b1, "the edit sent {b2} bytes, the first sync {b1}");
    for sn in ["sn1", "sn2"] {
        let ex = std::fs::read_to_string(work.join(sn).join("hanfs.exports")).unwrap();
        assert!(ex.contains("replicas="), "{ex}");
    }
    // The agents' embedded NFSv3 servers serve the synced image (nfs-cat needs root for a
    // privileged port; the demo says so instead of reading).
    let rb = v["nfs3_read_back"].as_array().unwrap();
    assert_eq!(rb.len(), 2, "{v}");
    if rustix::process::geteuid().is_root() {
        assert!(rb.iter().all(|l| l.as_str().unwrap().contains("generation 2")), "{v}");
    }
    assert_eq!(agents_under(&work), Vec::<String>::new(), "agents left behind");
}
