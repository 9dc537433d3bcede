#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A fault-injecting proxy between the controller and each agent (drop, delay, truncate, reset at
//! a random byte, or a stall at the commit), seeded and the seed printed (`HANFS_FAULT_SEED`
//! replays a run): every sync either completes with all digests equal to the source's or fails
//! cleanly (exit 1, the SN named, no panic, no signal), and the next sync without faults
//! converges: each replica equals the source by an independent walk.

mod net;

use net::proxy::{Fault, Proxy, Rng};
use net::{assert_same_tree, bytes, fill, Rig};
use std::os::unix::process::ExitStatusExt;

const RUNS: usize = 30;

fn check_clean_failure(run: usize, what: &str, o: &std::process::Output) -> (i32, serde_json::Value) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.signal(), None, "{what} {run}: killed by a signal: {err}");
    assert!(!err.contains("panicked"), "{what} {run}: {err}");
    let code = o.status.code().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{what} {run}: {e}: {}", String::from_utf8_lossy(&o.stdout)));
    match code {
        0 => {
            let rs = v["replicas"].as_array().unwrap();
            assert!(rs.iter().all(|r| r["matches"] == true), "{what} {run}: exit 0 with a mismatch: {v}");
            let d = &rs[0]["digest"];
            assert!(rs.iter().all(|r| &r["digest"] == d), "{what} {run}: digests differ: {v}");
        }
        1 => {
            assert!(err.contains("failed on sn"), "{what} {run}: exit 1 must name the SN: {err}");
            for r in v["replicas"].as_array().unwrap().iter().filter(|r| r["matches"] != true) {
                assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{what} {run}: {r}");
            }
        }
        c => panic!("{what} {run}: exit {c}: {err}"),
    }
    (code, v)
}

#[test]
fn every_sync_through_faults_completes_or_fails_cleanly_and_the_next_converges() {
    let seed = std::env::var("HANFS_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("fault seed {seed} (HANFS_FAULT_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let rig = Rig::new(2, false);
    fill(&rig.source(), 40);
    let proxies: Vec<Proxy> = (0..2).map(|i| Proxy::start(rig.agents[i].port)).collect();
    for (i, p) in proxies.iter().enumerate() {
        rig.route_through(i, p.port);
    }
    rig.cluster_option("sn_timeout_secs = 4");
    let o = rig.hanfs(&["--json", "sync"]);
    assert_eq!(check_clean_failure(0, "first sync", &o).0, 0);

    let (mut ok, mut failed) = (0, 0);
    for run in 1..=RUNS {
        // Something to send each time: a new file, a changed one, a removed one.
        let n = rng.below(200_000) as usize;
        std::fs::write(rig.source().join(format!("etc/run-{run}")), bytes(run as u64, n)).unwrap();
        let f = rig.source().join("usr/lib/x/f0004");
        let mut data = std::fs::read(&f).unwrap();
        let at = rng.below(data.len() as u64) as usize;
        data[at] ^= 0xff;
        std::fs::write(&f, data).unwrap();
        let _ = std::fs::remove_file(rig.source().join(format!("etc/run-{}", run - 1)));
        let faults: Vec<Fault> = proxies
            .iter()
            .map(|p| {
                let f = if rng.below(4) == 0 { Fault::None } else { Fault::random(&mut rng, 400_000) };
                p.set(f);
                f
            })
            .collect();
        eprintln!("run {run}: {faults:?}");
        let o = rig.hanfs(&["--json", "sync"]);
        let (code, _) = check_clean_failure(run, "faulty sync", &o);
        if code == 0 {
            ok += 1;
        } else {
            failed += 1;
        }
        for p in &proxies {
            p.set(Fault::None);
        }
        let o = rig.hanfs(&["--json", "sync"]);
        let (code, v) = check_clean_failure(run, "clean sync", &o);
        assert_eq!(code, 0, "run {run}: the sync after {faults:?} did not converge: {v}");
        for i in 0..2 {
            assert_same_tree(&rig.source(), &rig.replica(i));
        }
    }
    eprintln!("seed {seed}: {RUNS} faulty syncs: {ok} completed, {failed} failed cleanly; each next sync converged");
}
