#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The sync report says what it repaired: a replica changed behind hanfs' back is found by the
//! agent's rescan at `Open`, repaired by the same plan machinery, and reported `"repaired": true`
//! (`--json`) or one line (human output); the replicas nobody touched are not.

mod net;

use net::{assert_same_tree, fill, Rig};

#[test]
fn sync_reports_the_drift_it_repaired() {
    let rig = Rig::new(2, false);
    fill(&rig.source(), 20);
    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");
    assert!(v["replicas"].as_array().unwrap().iter().all(|r| r["repaired"] == false), "{v}");

    // Behind hanfs' back on sn2: a changed file and an extra one.
    std::fs::write(rig.replica(1).join("etc/hosts"), b"10.9.9.9 evil\n").unwrap();
    std::fs::write(rig.replica(1).join("etc/planted"), b"x").unwrap();
    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");
    let rs = v["replicas"].as_array().unwrap();
    let sn = |n: &str| rs.iter().find(|r| r["sn"] == n).unwrap().clone();
    assert_eq!(sn("sn2")["repaired"], true, "{v}");
    assert_eq!(sn("sn2")["matches"], true, "{v}");
    assert!(sn("sn2")["drifted_from"].as_str().is_some_and(|d| d.len() == 64), "{v}");
    assert_eq!(sn("sn1")["repaired"], false, "{v}");
    for i in 0..2 {
        assert_same_tree(&rig.source(), &rig.replica(i));
    }

    // Human output: one line for the repaired replica, none once nothing drifted.
    std::fs::remove_file(rig.replica(0).join("etc/hosts")).unwrap();
    let o = rig.hanfs(&["sync"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("drift found")).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].starts_with("sn1 ") && lines[0].ends_with(": repaired"), "{out}");
    let o = rig.hanfs(&["sync"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("drift found"));
    assert_same_tree(&rig.source(), &rig.replica(0));
}
