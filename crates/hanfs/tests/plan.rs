#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `hanfs plan` shows each SN's exports as a diff against what the last sync wrote there, and
//! changes nothing.

mod net;

use net::{fill, Rig};

#[test]
fn plan_diffs_exports_against_the_last_sync() {
    let rig = Rig::new(2, false);
    fill(&rig.source(), 10);

    let (rc, before) = rig.hanfs_json(&["plan"]);
    assert_eq!(rc, 0, "{before}");
    let d1 = before["exports_diff"]["sn1"].as_str().unwrap();
    assert!(d1.contains("absent"), "nothing deployed yet: {d1}");
    assert!(d1.lines().any(|l| l.starts_with('+') && l.contains("replicas=")), "{d1}");
    assert!(before["exports"]["sn1"].as_str().unwrap().contains("replicas="));
    // plan changed nothing on the SN.
    assert!(!rig.agents[0].root.parent().unwrap().join("exports").exists());

    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");
    let (_, after) = rig.hanfs_json(&["plan"]);
    let d1 = after["exports_diff"]["sn1"].as_str().unwrap();
    assert!(d1.contains("no change"), "after a sync the exports are as deployed: {d1}");
    assert!(!d1.lines().any(|l| l.starts_with('+') && !l.starts_with("+++")), "{d1}");
}
