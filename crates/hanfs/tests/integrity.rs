#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Issue 9, agent side, end to end with real `hanfs agent` processes and the real controller:
//! every kind of change made to a replica behind the agent's back is repaired by the next `sync`
//! (checked by an independent walk), a second agent on a state dir is refused by name (exit 2),
//! and a full spool is reported as ENOSPC with its path, the partial file removed.

mod net;

use net::{assert_same_tree, bytes, fill, hanfs_bin, Rig};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::skip;

fn acl(p: &Path) -> Option<Vec<u8>> {
    xattr::get(p, "system.posix_acl_access").ok().flatten()
}

fn run(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(o.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Issue 9 item 8: `sync` used to report `matches: true` for a tampered replica and repair nothing.
#[test]
fn every_kind_of_drift_is_repaired_by_the_next_sync() {
    if !testkit::require_root("changing owners in a replica") || testkit::require_program("setfacl", "acl").is_none() {
        return;
    }
    let rig = Rig::new(1, false);
    fill(&rig.source(), 30);
    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");
    let r = rig.replica(0);
    assert_same_tree(&rig.source(), &r);

    let set_mtime = |p: &Path, secs: u64| {
        let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        std::fs::File::options().write(true).open(p).unwrap().set_modified(t).unwrap();
    };
    type Change<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>);
    let changes: Vec<Change> = vec![
        (
            "content, same size and mtime",
            Box::new(|r| {
                let p = r.join("usr/lib/x/f0004");
                let md = std::fs::metadata(&p).unwrap();
                let mut d = std::fs::read(&p).unwrap();
                d[0] ^= 0xff;
                std::fs::write(&p, d).unwrap();
                std::fs::File::options().write(true).open(&p).unwrap().set_modified(md.modified().unwrap()).unwrap();
            }),
        ),
        ("file deleted", Box::new(|r| std::fs::remove_file(r.join("usr/lib/x/f0005")).unwrap())),
        ("extra file", Box::new(|r| std::fs::write(r.join("etc/planted"), b"not in the image").unwrap())),
        (
            "mode",
            Box::new(|r| {
                std::fs::set_permissions(r.join("usr/bin/suid"), std::fs::Permissions::from_mode(0o777)).unwrap()
            }),
        ),
        ("owner", Box::new(|r| std::os::unix::fs::lchown(r.join("etc/hosts"), Some(4343), Some(4343)).unwrap())),
        ("xattr", Box::new(|r| xattr::set(r.join("etc/hosts"), "user.hanfs.test", b"tampered").unwrap())),
        ("ACL", Box::new(|r| run("setfacl", &["-m", "u:4343:rwx", r.join("usr/lib/x/f0001").to_str().unwrap()]))),
        (
            "symlink target",
            Box::new(|r| {
                let p = r.join("usr/bin/hosts-link");
                std::fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink("/etc/shadow", &p).unwrap();
            }),
        ),
        (
            "hard link broken",
            Box::new(|r| {
                let p = r.join("etc/hard-b");
                let d = std::fs::read(&p).unwrap();
                std::fs::remove_file(&p).unwrap();
                std::fs::write(&p, d).unwrap();
            }),
        ),
        (
            "hard link planted",
            Box::new(|r| {
                let p = r.join("usr/lib/x/f0006");
                std::fs::remove_file(&p).unwrap();
                std::fs::hard_link(r.join("usr/lib/x/f0012"), &p).unwrap();
            }),
        ),
        ("mtime", Box::new(|r| set_mtime(&r.join("usr/lib/x/f0009"), 1000))),
        (
            "symlink replaced by a directory",
            Box::new(|r| {
                let p = r.join("usr/bin/dangling");
                std::fs::remove_file(&p).unwrap();
                std::fs::create_dir(&p).unwrap();
                std::fs::write(p.join("inside"), b"x").unwrap();
            }),
        ),
        (
            "fifo replaced by a file",
            Box::new(|r| {
                let p = r.join("dev/initctl");
                std::fs::remove_file(&p).unwrap();
                std::fs::write(&p, b"not a fifo").unwrap();
            }),
        ),
        (
            "directory mode",
            Box::new(|r| {
                std::fs::set_permissions(r.join("usr/lib/x"), std::fs::Permissions::from_mode(0o700)).unwrap()
            }),
        ),
    ];
    assert!(changes.len() >= 13);
    for (i, (what, change)) in changes.iter().enumerate() {
        change(&r);
        let (rc, v) = rig.hanfs_json(&["sync"]);
        assert_eq!(rc, 0, "{what}: {v}");
        assert_eq!(v["replicas"][0]["matches"], true, "{what}: {v}");
        assert_same_tree(&rig.source(), &r);
        assert_eq!(acl(&r.join("usr/lib/x/f0001")), acl(&rig.source().join("usr/lib/x/f0001")), "{what}: ACL");
        let drifts = rig.log(0).matches("replica drifted").count();
        assert_eq!(drifts, i + 1, "{what}: the agent did not see the drift:\n{}", rig.log(0));
    }
    // Nothing changed since: no drift is reported.
    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");
    assert_eq!(rig.log(0).matches("replica drifted").count(), changes.len());
}

/// Issue 9 item 9: two agents on one state dir used to break each other.
#[test]
fn a_second_agent_on_the_same_state_dir_exits_2_naming_it() {
    let rig = Rig::new(1, false);
    let conf = std::fs::read_to_string(&rig.agents[0].conf).unwrap();
    // Its own listener (port 0): only the state dir is shared.
    let other = conf.replace(&format!("127.0.0.1:{}", rig.agents[0].port), "127.0.0.1:0");
    let p = rig.path().join("second.toml");
    std::fs::write(&p, other).unwrap();
    let mut second = Command::new(hanfs_bin())
        .args(["--config", p.to_str().unwrap(), "agent"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while second.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second agent on the same state dir was let run");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let state = rig.path().join("sn1/state");
    assert!(err.contains(&state.display().to_string()) && err.contains("in use by another agent"), "{err}");
    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "the first agent was disturbed: {v}");
}

/// Issue 9 item 11: the agent's state dir is a 2 MB tmpfs (a private mount namespace); a 6 MB file
/// does not fit its spool.
#[test]
fn a_full_spool_is_reported_as_enospc_and_the_partial_file_removed() {
    if !testkit::require_root("mounting a tmpfs") {
        return;
    }
    if Command::new("unshare").args(["-m", "true"]).status().map(|s| !s.success()).unwrap_or(true) {
        return skip("unshare -m is not permitted here");
    }
    let mut rig = Rig::new(1, false);
    std::fs::write(rig.source().join("big"), bytes(9, 6 << 20)).unwrap();
    std::fs::write(rig.source().join("small"), b"small").unwrap();
    rig.kill(0);
    let state = rig.path().join("sn1/state");
    rig.start_with(0, |conf| {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs -o size=2m hanfs-test \"$0\" && exec \"$1\" --config \"$2\" agent")
            .arg(&state)
            .arg(hanfs_bin())
            .arg(conf);
        c
    });
    let pid = rig.agents[0].child.as_ref().unwrap().id();
    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_ne!(rc, 0, "{v}");
    let text = v.to_string();
    let spool = state.join("images/compute/spool");
    assert!(text.contains("ENOSPC") && text.contains(&spool.display().to_string()), "{v}");
    assert!(!text.contains("reset by peer"), "{v}");
    // What the agent sees, inside its mount namespace.
    let inside = Path::new(&format!("/proc/{pid}/root")).join(spool.strip_prefix("/").unwrap());
    let left: Vec<_> = std::fs::read_dir(&inside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left in the spool: {left:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", rig.agents[0].port)).is_ok(), "the agent went down");
    // The agent logs the refusal after replying it, so the line may land a moment after the sync ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !rig.log(0).contains("ENOSPC") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(rig.log(0).contains("ENOSPC"), "{}", rig.log(0));
}
