#![allow(clippy::unwrap_used, clippy::expect_used)]
//! An agent that hangs in its commit (here: a proxy that holds the `Commit` frame, so the agent
//! never answers) is bounded by the per-SN deadline `cluster.sn_timeout_secs`: the other SNs
//! finish and match, the run ends on time with the hung SN named as failed (exit 1), the MN lock
//! is free for the next run, which converges.

mod net;

use net::proxy::{Fault, Proxy};
use net::{assert_same_tree, fill, Rig};
use std::time::{Duration, Instant};

#[test]
fn an_sn_hung_in_its_commit_is_cut_off_at_its_deadline() {
    let rig = Rig::new(3, false);
    fill(&rig.source(), 30);
    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");

    let proxy = Proxy::start(rig.agents[1].port);
    rig.route_through(1, proxy.port);
    const DEADLINE: u64 = 6;
    rig.cluster_option(&format!("sn_timeout_secs = {DEADLINE}"));
    proxy.set(Fault::StallAtCommit);
    std::fs::write(rig.source().join("etc/new-file"), b"generation 2").unwrap();

    let t = Instant::now();
    let (rc, v) = rig.hanfs_json(&["sync"]);
    let took = t.elapsed();
    assert_eq!(rc, 1, "{v}");
    assert!(proxy.fired() >= 1, "the commit was held: {v}");
    assert!(took < Duration::from_secs(DEADLINE + 6), "the run took {took:?}, deadline {DEADLINE} s");
    assert!(took >= Duration::from_secs(DEADLINE), "ended before the deadline: {took:?}");
    let failed = v["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{v}");
    assert_eq!(failed[0]["sn"], "sn2");
    assert!(failed[0]["reason"].as_str().unwrap().contains("timed out"), "{v}");
    for r in v["replicas"].as_array().unwrap() {
        assert_eq!(r["matches"], r["sn"] != "sn2", "{r}");
    }
    assert_same_tree(&rig.source(), &rig.replica(0));
    assert_same_tree(&rig.source(), &rig.replica(2));

    // The lock is free and, without the fault, the hung SN catches up.
    proxy.set(Fault::None);
    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");
    for i in 0..3 {
        assert_same_tree(&rig.source(), &rig.replica(i));
    }
}
