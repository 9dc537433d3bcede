#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End to end on loopback with real agent processes: sync, verify, independent walk, a no-change
//! sync, and an agent killed in the middle of applying a large update.

mod net;

use net::{assert_same_tree, bytes, fill, Rig};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn replicas(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["replicas"].as_array().unwrap().clone()
}

#[test]
fn three_agents_every_entry_kind() {
    let rig = Rig::new(3, false);
    fill(&rig.source(), 600);

    let (rc, first) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{first}");
    assert_eq!(first["ok"], true);
    let rs = replicas(&first);
    assert_eq!(rs.len(), 3);
    let digest = rs[0]["digest"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 64);
    for r in &rs {
        assert_eq!(r["matches"], true, "{r}");
        assert_eq!(r["digest"], digest.as_str());
        assert_eq!(r["generation"], 1);
    }

    let (rc, v) = rig.hanfs_json(&["verify"]);
    assert_eq!(rc, 0, "{v}");
    assert!(replicas(&v).iter().all(|r| r["matches"] == true && r["digest"] == digest.as_str()), "{v}");
    for i in 0..3 {
        assert_same_tree(&rig.source(), &rig.replica(i));
        let ex = std::fs::read_to_string(rig.agents[i].root.parent().unwrap().join("exports")).unwrap();
        assert!(ex.contains("replicas="), "exports of sn{}: {ex}", i + 1);
    }

    // Nothing changed: under 1% of the first sync's bytes.
    let (rc, second) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{second}");
    let (b1, b2) = (first["bytes_sent"].as_u64().unwrap(), second["bytes_sent"].as_u64().unwrap());
    assert!(b2 * 100 < b1, "second sync sent {b2} bytes, first {b1}");

    // A small edit goes as a delta, to every SN, and the replicas follow.
    let f = rig.source().join("usr/lib/x/f0005");
    let mut data = std::fs::read(&f).unwrap();
    data[1000..1010].copy_from_slice(b"0123456789");
    std::fs::write(&f, data).unwrap();
    std::fs::rename(rig.source().join("usr/lib/x/f0011"), rig.source().join("etc/moved")).unwrap();
    // `plan` shows it (contract JSON) and changes nothing.
    let (rc, plan) = rig.hanfs_json(&["plan"]);
    assert_eq!(rc, 0, "{plan}");
    let img = &plan["images"][0];
    assert_eq!(img["name"], "compute");
    assert!(img["changed"].as_u64().unwrap() >= 1 && img["added"].as_u64().unwrap() >= 1, "{plan}");
    assert!(img["removed"].as_u64().unwrap() >= 1, "{plan}");
    let delta_bytes = img["delta_bytes"].as_u64().unwrap();
    assert!(delta_bytes > 0 && delta_bytes < 300_000 / 4, "{plan}");
    for sn in ["sn1", "sn2", "sn3"] {
        assert!(plan["exports"][sn].as_str().unwrap().contains("replicas="), "{plan}");
    }
    let (_, st) = rig.hanfs_json(&["status"]);
    assert!(
        st["sns"].as_array().unwrap().iter().all(|s| s["images"][0]["generation"] == 1),
        "plan changed nothing: {st}"
    );
    let (rc, third) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{third}");
    for r in replicas(&third) {
        assert_eq!(r["generation"], 2);
        assert!(r["bytes_sent"].as_u64().unwrap() < 300_000 / 4, "{r}");
    }
    for i in 0..3 {
        assert_same_tree(&rig.source(), &rig.replica(i));
    }

    let (rc, st) = rig.hanfs_json(&["status"]);
    assert_eq!(rc, 0);
    for s in st["sns"].as_array().unwrap() {
        assert_eq!(s["reachable"], true);
        assert_eq!(s["images"][0]["generation"], 2);
    }
}

#[test]
fn killed_agent_keeps_a_whole_generation_and_catches_up() {
    let mut rig = Rig::new(3, false);
    fill(&rig.source(), 30);
    let (rc, first) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{first}");
    let old = replicas(&first)[0]["digest"].as_str().unwrap().to_string();

    // A large update: new files whose content exists nowhere in the old tree.
    let big = rig.source().join("usr/big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..48 {
        std::fs::write(big.join(format!("b{i}")), bytes(1000 + i, 3 << 20)).unwrap();
    }
    let sync = Command::new(net::hanfs_bin())
        .args(["--json", "--config", rig.cluster.to_str().unwrap(), "sync"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill sn2 once it has staged a few files of the new generation.
    let stage = rig.replica(1).join(".hanfs/stage/2");
    let t = Instant::now();
    loop {
        let n = std::fs::read_dir(&stage).map(|d| d.count()).unwrap_or(0);
        if n >= 4 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "sn2 never staged anything: {}", rig.log(1));
        std::thread::sleep(Duration::from_millis(5));
    }
    rig.kill(1);
    let out = sync.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed on sn2"), "{stderr}");
    assert_eq!(v["failed"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["failed"][0]["sn"], "sn2");
    let rs = replicas(&v);
    let new = rs.iter().find(|r| r["sn"] == "sn1").unwrap()["digest"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    for r in &rs {
        assert_eq!(r["matches"], r["sn"] != "sn2", "{r}");
    }

    // Restarted, the killed replica is at a whole generation: the old one here (it died before commit).
    rig.start(1);
    let (rc, ver) = rig.hanfs_json(&["verify"]);
    assert_eq!(rc, 1, "{ver}");
    let r2 = replicas(&ver).into_iter().find(|r| r["sn"] == "sn2").unwrap();
    let d2 = r2["digest"].as_str().unwrap();
    assert!(d2 == old || d2 == new, "sn2 at {d2}: neither generation");

    // The next sync converges all three, and what sn2 had spooled is not sent again.
    let (rc, again) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{again}");
    let r2 = replicas(&again).into_iter().find(|r| r["sn"] == "sn2").unwrap();
    assert!(r2["resumed"].as_u64().unwrap() >= 3, "{r2}");
    assert!(replicas(&again).iter().all(|r| r["matches"] == true && r["digest"] == new.as_str()));
    let (rc, ver) = rig.hanfs_json(&["verify"]);
    assert_eq!(rc, 0, "{ver}");
    for i in 0..3 {
        assert_same_tree(&rig.source(), &rig.replica(i));
    }
}

#[test]
fn mn_state_lost_then_syncs_resume() {
    let rig = Rig::new(2, false);
    fill(&rig.source(), 12);
    for round in 0..3 {
        std::fs::write(rig.source().join("etc/round"), format!("{round}\n")).unwrap();
        let (rc, v) = rig.hanfs_json(&["sync"]);
        assert_eq!(rc, 0, "round {round}: {v}");
        if round == 0 {
            // The MN forgets everything: the next sync must still converge (replicas are ahead of it).
            std::fs::remove_dir_all(rig.path().join("mn-state")).unwrap();
        }
    }
    let (rc, v) = rig.hanfs_json(&["verify"]);
    assert_eq!(rc, 0, "{v}");
    for i in 0..2 {
        assert_same_tree(&rig.source(), &rig.replica(i));
    }
}
