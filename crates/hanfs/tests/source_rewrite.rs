#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A source file rewritten (truncated, then written again) while syncs read it: the controller
//! never maps a source file, so it cannot die of SIGBUS; a file read as two versions is read again
//! or its image fails for that run, so every replica that reports a match holds one whole version
//! (checked byte for byte here, not by the engine's digest); once the writer stops, a sync
//! converges.

mod net;

use net::{assert_same_tree, bytes, fill, Rig};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BIG: usize = 24 << 20;

#[test]
fn a_writer_rewriting_a_24mb_source_file_during_syncs() {
    let rig = Rig::new(2, false);
    fill(&rig.source(), 20);
    let versions = [bytes(101, BIG), bytes(202, BIG)];
    let big = rig.source().join("usr/lib/big.bin");
    // A base generation with a signature of the big file, so later syncs make deltas from it.
    let mut base = versions[0].clone();
    base[BIG / 2..BIG / 2 + 4096].fill(0);
    std::fs::write(&big, &base).unwrap();
    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, big, versions) = (stop.clone(), big.clone(), versions.clone());
        std::thread::spawn(move || {
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // Truncate and rewrite in place (what a careless packimage does), not rename.
                let Ok(mut f) = std::fs::OpenOptions::new().write(true).truncate(true).open(&big) else { break };
                f.write_all(&versions[k % 2]).unwrap();
                drop(f);
                k += 1;
                std::thread::sleep(Duration::from_millis(40));
            }
            k
        })
    };
    let (mut matched, mut failed, mut whole) = (0, 0, 0);
    for run in 0..6 {
        let o = rig.hanfs(&["--json", "sync"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.signal(), None, "sync {run} died of a signal: {err}");
        assert!(!err.contains("panicked"), "sync {run}: {err}");
        let code = o.status.code().unwrap();
        assert!(code == 0 || code == 1, "sync {run}: exit {code}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for (i, r) in v["replicas"].as_array().unwrap().iter().enumerate() {
            if r["matches"] == true {
                matched += 1;
                let got = std::fs::read(rig.replica(i).join("usr/lib/big.bin")).unwrap();
                // The writer's truncate + write makes every prefix of a version a state the file
                // really had for an instant (the scan may catch one); a mix of two versions, or
                // bytes of one at the other's length, it never had.
                let one = got == base || versions.iter().any(|v| v.starts_with(&got));
                assert!(one, "sync {run}: {} reports a match but holds a mix ({} bytes)", r["sn"], got.len());
                if got.len() == BIG {
                    whole += 1;
                }
            } else {
                failed += 1;
                assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "a failure names its reason: {r}");
            }
        }
        if code == 1 {
            assert!(err.contains("failed on sn"), "exit 1 names the SN: {err}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rewrites = writer.join().unwrap();
    eprintln!(
        "{rewrites} rewrites; {matched} replicas matched ({whole} with a whole version), {failed} failed cleanly"
    );
    assert!(rewrites > 10, "the writer ran during the syncs");

    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");
    for i in 0..2 {
        assert_same_tree(&rig.source(), &rig.replica(i));
    }
}
