#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Statelite node directories made mount points of their own (`statelite_mounts`), so kernel nfsd
//! crosses from an exported area into the node's own export: at start from the exports file, with
//! each `Exports` request, idempotent, never through a symlink the node planted, only within
//! `statelite_roots`. Judged by the kernel's /proc/self/mountinfo, not by the agent's own check. The
//! agents run in a private mount namespace (`unshare -m`), so no mount outlives the test.

use proto::req;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ENV: &str = "HANFS_MOUNTS_DIR";
const T: Duration = Duration::from_secs(20);

#[test]
fn statelite_node_directories_become_mount_points() {
    if !testkit::require_root("bind mounts in a private mount namespace")
        || testkit::require_program("unshare", "util-linux").is_none()
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["mounts_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, t.path())
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && se.contains("unshare failed") {
        return testkit::skip(format!("no private mount namespace here: {se}"));
    }
    assert!(out.status.success() && so.contains("MOUNTS-DONE"), "child failed:\n{so}\n{se}");
}

/// How many mounts have `p` as their mount point (field 5 of mountinfo; the test's paths need no
/// escapes).
fn mounts_at(p: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().filter(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap())).count()
}

fn exports(lite: &Path, nodes: &[&str]) -> String {
    let mut s = format!("{} *(rw,no_root_squash,sync,no_subtree_check,insecure,fsid=2)\n", lite.display());
    for (i, n) in nodes.iter().enumerate() {
        s.push_str(&format!("{}/{n} *(rw,no_root_squash,sync,no_subtree_check,fsid={})\n", lite.display(), 10 + i));
    }
    s
}

/// Runs inside the private mount namespace only.
#[test]
fn mounts_child() {
    let Ok(dir) = std::env::var(ENV) else { return };
    let t = PathBuf::from(dir);
    let lite = t.join("nodedata");
    std::fs::create_dir_all(lite.join("cn001")).unwrap();
    std::fs::write(lite.join("cn001/keep"), "data").unwrap();
    // The node is root on its data and mounts the area read-write: it may plant a symlink.
    std::os::unix::fs::symlink("/etc", lite.join("cn003")).unwrap();
    let outside = t.join("elsewhere");
    std::fs::create_dir_all(outside.join("n1")).unwrap();
    let etc_before = mounts_at(Path::new("/etc"));
    let extra = format!("statelite_roots = [\"{}\"]\n", lite.display());
    let a_dir = t.join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let mut text = exports(&lite, &["cn001", "cn002", "cn003"]);
    text.push_str(&format!("{0} *(rw,fsid=5)\n{0}/n1 *(rw,fsid=6)\n", outside.display()));
    std::fs::write(a_dir.join("exports"), &text).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // At start, from the exports file as it is (after a reboot no mount is left).
        let a = agent::testing::spawn(&a_dir, &extra).await.unwrap();
        assert_eq!(mounts_at(&lite.join("cn001")), 1, "cn001 is its own mount");
        assert_eq!(mounts_at(&lite.join("cn002")), 1, "cn002 was made, then mounted");
        assert_eq!(std::fs::read_to_string(lite.join("cn001/keep")).unwrap(), "data", "the same directory");
        assert_eq!(mounts_at(&lite), 0, "the area itself is not nested");
        assert_eq!(mounts_at(&lite.join("cn003")), 0, "no mount through a symlink");
        assert_eq!(mounts_at(Path::new("/etc")), etc_before, "the symlink's target untouched");
        assert!(std::fs::symlink_metadata(lite.join("cn003")).unwrap().file_type().is_symlink());
        assert_eq!(mounts_at(&outside.join("n1")), 0, "outside statelite_roots: not the agent's");

        // With an Exports request: a new node mounted, the existing one not twice; the symlink is
        // reported (the exports are written and reloaded all the same).
        let mut c = transport::connect(&a.addr.to_string(), "agent", None, T).await.unwrap();
        c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.unwrap();
        let done = c.call(req::Exports { text: exports(&lite, &["cn001", "cn004"]) }).await.unwrap();
        assert!(done.reloaded, "{done:?}");
        assert_eq!(mounts_at(&lite.join("cn001")), 1, "idempotent");
        assert_eq!(mounts_at(&lite.join("cn004")), 1);
        let done = c.call(req::Exports { text: exports(&lite, &["cn003"]) }).await.unwrap();
        assert!(!done.reloaded && done.output.contains("cn003"), "{done:?}");
        assert_eq!(std::fs::read_to_string(a_dir.join("exports")).unwrap(), exports(&lite, &["cn003"]));

        // A restarted agent (another state dir, same statelite root) mounts nothing twice.
        let b_dir = t.join("b");
        std::fs::create_dir_all(&b_dir).unwrap();
        std::fs::write(b_dir.join("exports"), exports(&lite, &["cn001", "cn002", "cn004"])).unwrap();
        let _b = agent::testing::spawn(&b_dir, &extra).await.unwrap();
        for n in ["cn001", "cn002", "cn004"] {
            assert_eq!(mounts_at(&lite.join(n)), 1, "{n}");
        }
        // Off: nothing mounted.
        let c_dir = t.join("c");
        std::fs::create_dir_all(&c_dir).unwrap();
        std::fs::write(c_dir.join("exports"), exports(&lite, &["cn005"])).unwrap();
        let _c = agent::testing::spawn(&c_dir, &format!("{extra}statelite_mounts = false\n")).await.unwrap();
        assert!(!lite.join("cn005").exists());
    });
    println!("MOUNTS-DONE");
}
