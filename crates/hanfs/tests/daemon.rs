#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `hanfs daemon` with real agents: the first sync on start, then a change to the image is synced
//! once the tree is quiet, and the metrics endpoint reports each replica's generation.

mod net;

use net::{assert_same_tree, fill, Rig};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_for(port: u16, what: &[&str], limit: Duration) -> String {
    let t = Instant::now();
    loop {
        if let Some(m) = scrape(port) {
            if what.iter().all(|w| m.contains(w)) {
                return m;
            }
            assert!(t.elapsed() < limit, "metrics never showed {what:?}:\n{m}");
        }
        assert!(t.elapsed() < limit, "metrics endpoint never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn syncs_on_start_and_after_a_quiet_change() {
    let rig = Rig::new(2, false);
    fill(&rig.source(), 50);
    let (_d, port) = rig.daemon_with_metrics(&["--quiet-secs", "1"]);
    let m = wait_for(
        port,
        &[
            "hanfs_replica_generation{sn=\"sn1\",image=\"compute\"} 1",
            "hanfs_replica_generation{sn=\"sn2\",image=\"compute\"} 1",
            "hanfs_sync_runs_total{result=\"ok\"} 1",
        ],
        Duration::from_secs(60),
    );
    assert!(m.contains("hanfs_replica_matches{sn=\"sn1\",image=\"compute\"} 1"), "{m}");
    assert_same_tree(&rig.source(), &rig.replica(0));

    // A burst of writes is one sync, after the quiet period.
    for i in 0..3 {
        std::fs::write(rig.source().join(format!("etc/burst{i}")), format!("{i}")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = wait_for(
        port,
        &[
            "hanfs_replica_generation{sn=\"sn1\",image=\"compute\"} 2",
            "hanfs_replica_generation{sn=\"sn2\",image=\"compute\"} 2",
        ],
        Duration::from_secs(60),
    );
    assert!(m.contains("hanfs_sync_runs_total{result=\"ok\"} 2"), "one sync for the burst:\n{m}");
    let log = std::fs::read_to_string(rig.path().join("daemon.log")).unwrap();
    assert!(!log.contains("ERROR"), "{log}");
    assert_same_tree(&rig.source(), &rig.replica(0));
    assert_same_tree(&rig.source(), &rig.replica(1));
}
