#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Relay fan-out (issue 11): four `hanfs agent` processes with TLS in a chain (`fanout = 1`: the
//! MN feeds sn1, sn1 relays to sn2, sn2 to sn3, sn3 to sn4). sn2 is SIGKILLed while it relays
//! (once its first payload is in its relay cache; the relays serve each payload 50 ms late, a
//! test-only hook, so it is mid-transfer). The other three must commit with the source's tree
//! (an independent walk), sn3 getting from the MN what sn2 never gave it and sn4 everything from
//! sn3; the MN's bytes are one copy (sn1) plus sn3's missing payloads; sn2 is reported failed.
//! Restarted, sn2 is caught up by the next sync (its own plan: it stayed at the first generation).
//! The shared plan travels the same tree (`plan_via`): a parent that serves another plan (one byte
//! changed) is refused by its child's BLAKE3 check, and a parent killed before it serves the plan
//! leaves its child to the MN; either way every other replica ends equal to the source.

mod net;

use net::{assert_same_tree, bytes, fill, hanfs_bin, Rig};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn start_relaying(rig: &mut Rig, i: usize) {
    start_relaying_with(rig, i, &[("HANFS_TEST_RELAY_DELAY_MS", "50")]);
}

fn start_relaying_with(rig: &mut Rig, i: usize, env: &[(&str, &str)]) {
    rig.start_with(i, |conf| {
        let mut c = Command::new(hanfs_bin());
        c.args(["--config", conf.to_str().unwrap(), "agent"]).envs(env.iter().copied());
        c
    });
}

/// `hanfs --json sync` of the rig's cluster, started in the background (the test acts meanwhile).
fn spawn_sync(rig: &Rig) -> std::process::Child {
    Command::new(hanfs_bin())
        .arg("--config")
        .arg(&rig.cluster)
        .args(["--json", "sync"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `n` agents, each a relay (agent `i` started with `env(i)`), the cluster a chain (`fanout = 1`),
/// synced once to a first generation (relays carry the shared plan, which needs one).
fn chain(n: usize, env: impl Fn(usize) -> Vec<(&'static str, &'static str)>) -> Rig {
    let mut rig = Rig::new(n, true);
    for i in 0..n {
        rig.kill(i);
        // Top-level key: before the [tls] table the config ends with.
        let conf = std::fs::read_to_string(&rig.agents[i].conf).unwrap();
        std::fs::write(&rig.agents[i].conf, format!("relay_listen = \"127.0.0.1:0\"\n{conf}")).unwrap();
        start_relaying_with(&mut rig, i, &env(i));
    }
    rig.cluster_option("fanout = 1");
    fill(&rig.source(), 12);
    let (code, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(code, 0, "{v}");
    rig
}

/// A second generation of the source: `n` files of 200 kB.
fn change(rig: &Rig, n: u64) {
    let d = rig.source().join("opt/new");
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..n {
        std::fs::write(d.join(format!("g{i:02}")), bytes(5000 + i, 200_000)).unwrap();
    }
}

/// A payload kept in a relay cache (a whole one: not a `.part`; not the plan, kept first).
fn first_cached(dir: &std::path::Path) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.parse::<u32>().is_ok()) {
                return true;
            }
        }
    }
    false
}

fn row<'a>(v: &'a serde_json::Value, sn: &str) -> &'a serde_json::Value {
    v["replicas"].as_array().unwrap().iter().find(|r| r["sn"] == sn).unwrap_or_else(|| panic!("no row for {sn}: {v}"))
}

#[test]
fn a_relay_killed_mid_transfer_leaves_the_others_synced_and_its_subtree_re_parented() {
    let mut rig = Rig::new(4, true);
    for i in 0..4 {
        rig.kill(i);
        // Top-level key: before the [tls] table the config ends with.
        let conf = std::fs::read_to_string(&rig.agents[i].conf).unwrap();
        std::fs::write(&rig.agents[i].conf, format!("relay_listen = \"127.0.0.1:0\"\n{conf}")).unwrap();
        start_relaying(&mut rig, i);
    }
    rig.cluster_option("fanout = 1");
    let src = rig.source();
    fill(&src, 12);
    // Relays carry the shared plan: a first sync makes the generation every SN is at.
    let (code, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(code, 0, "{v}");
    std::fs::create_dir_all(src.join("opt/big")).unwrap();
    // Payloads of the memory path (≤ 1 MiB) and of the spool path (larger); not compressible.
    let mut total = 0u64;
    for i in 0..24u64 {
        let n = if i % 8 == 7 { 3 << 20 } else { 600_000 };
        std::fs::write(src.join(format!("opt/big/f{i:02}")), bytes(1000 + i, n)).unwrap();
        total += n as u64;
    }

    let t = Instant::now();
    let sync = spawn_sync(&rig);
    // Once sn3 holds a payload from sn2 (nothing else feeds it before the kill), sn2 is relaying
    // and mid-transfer itself (it gets each payload 50 ms late from sn1).
    let cache = rig.path().join("sn3/state/relay");
    while !first_cached(&cache) {
        assert!(t.elapsed() < Duration::from_secs(30), "sn2 never relayed: {}", rig.log(1));
        std::thread::sleep(Duration::from_millis(2));
    }
    rig.kill(1);
    let o = sync.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("sync with sn2 killed took {:.2?}", t.elapsed());
    assert_eq!(o.status.code(), Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["failed"].as_array().unwrap().iter().any(|f| f["sn"] == "sn2"), "sn2 not reported failed: {v}");
    assert_eq!(row(&v, "sn2")["matches"], false, "{v}");
    for (i, sn) in [(0, "sn1"), (2, "sn3"), (3, "sn4")] {
        assert_eq!(row(&v, sn)["matches"], true, "{sn}: {v}\n{err}");
        assert_same_tree(&src, &rig.replica(i));
    }
    let (r1, r3, r4) = (row(&v, "sn1"), row(&v, "sn3"), row(&v, "sn4"));
    let n = |r: &serde_json::Value, k: &str| r[k].as_u64().unwrap();
    eprintln!(
        "MN bytes: sn1 {} sn3 {} sn4 {}; sn3 via {} ({} files from it), sn4 via {} ({} files)",
        n(r1, "bytes_sent"),
        n(r3, "bytes_sent"),
        n(r4, "bytes_sent"),
        r3["via"],
        n(r3, "relayed_files"),
        r4["via"],
        n(r4, "relayed_files")
    );
    // The plan went down the tree as the payloads did (sn2 gave it to sn3 before it was killed).
    assert_eq!(r1["plan_via"], "mn", "{r1}");
    assert_eq!(row(&v, "sn2")["plan_via"], "sn1", "{v}");
    assert_eq!(r3["plan_via"], "sn2", "{r3}");
    assert_eq!(r4["plan_via"], "sn3", "{r4}");
    // The root got its one copy from the MN.
    assert_eq!(r1["via"], "mn");
    assert!(n(r1, "bytes_sent") >= total, "{r1}");
    // sn3 lost its parent mid-transfer: the MN sent what it had not got, and only that.
    assert_eq!(r3["via"], "sn2+mn", "{r3}");
    assert!(n(r3, "relayed_files") >= 1 && n(r3, "files_sent") >= 1, "{r3}");
    assert_eq!(n(r3, "relayed_files") + n(r3, "files_sent"), 24, "{r3}");
    assert!(n(r3, "bytes_sent") + n(r3, "relayed_bytes") < n(r1, "bytes_sent") + 8192, "{r3}");
    assert!(n(r3, "bytes_sent") < n(r1, "bytes_sent"), "{r3}");
    // sn4's parent (sn3) lived: everything from it, nothing but the plan from the MN.
    assert_eq!(r4["via"], "sn3", "{r4}");
    assert_eq!(n(r4, "files_sent"), 0, "{r4}");
    assert!(n(r4, "relayed_bytes") >= total, "{r4}");
    // Neither the plan nor the list of payloads: requests and the session only.
    assert!(n(r4, "bytes_sent") < 4096, "{r4}");
    // In all: one copy, plus what sn3 did not get from sn2, plus plans and requests.
    let others = n(r1, "bytes_sent") + n(r3, "bytes_sent") + n(r4, "bytes_sent");
    let bound = n(r1, "bytes_sent") + (n(r1, "bytes_sent") - n(r3, "relayed_bytes")) + 16384;
    assert!(others <= bound, "MN bytes to the other three: {others} > {bound}");
    eprintln!("MN bytes to the other three: {others} (one copy: {})", n(r1, "bytes_sent"));

    // Back, the killed relay catches up.
    start_relaying(&mut rig, 1);
    let (code, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(code, 0, "{v}");
    assert_same_tree(&src, &rig.replica(1));
}

#[test]
fn a_plan_of_another_digest_from_the_parent_is_refused_and_the_mn_sends_it() {
    // sn2 relays its plan with one byte changed; its payloads are sound.
    let rig = chain(3, |i| if i == 1 { vec![("HANFS_TEST_RELAY_CORRUPT_PLAN", "1")] } else { vec![] });
    change(&rig, 6);
    let (code, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(code, 0, "{v}");
    for i in 0..3 {
        assert_eq!(row(&v, &format!("sn{}", i + 1))["matches"], true, "{v}");
        assert_same_tree(&rig.source(), &rig.replica(i));
    }
    let (r2, r3) = (row(&v, "sn2"), row(&v, "sn3"));
    assert_eq!(r2["plan_via"], "sn1", "{r2}");
    // sn3 checked sn2's plan against the MN's BLAKE3, refused it and was sent the MN's...
    assert_eq!(r3["plan_via"], "mn", "{r3}");
    let log = rig.log(2);
    assert!(log.contains("relay sn2 sent a plan of BLAKE3") && log.contains("refused"), "{log}");
    // ...and still had every payload from sn2.
    assert_eq!(r3["via"], "sn2", "{r3}");
    assert_eq!(r3["files_sent"], 0, "{r3}");
    assert_eq!(r3["relayed_files"], 6, "{r3}");
}

#[test]
fn a_parent_killed_before_it_serves_the_plan_leaves_its_child_to_the_mn() {
    // sn2 holds the plan 20 s before serving it (longer than the child's stall bound would
    // allow if it were not killed: the child would then have fallen back by itself).
    let mut rig = chain(3, |i| if i == 1 { vec![("HANFS_TEST_RELAY_PLAN_DELAY_MS", "20000")] } else { vec![] });
    change(&rig, 6);
    let t = Instant::now();
    let sync = spawn_sync(&rig);
    // sn3 asked sn2 for the plan: sn2 dies before it answers.
    while !rig.log(2).contains("asking relay sn2") {
        assert!(t.elapsed() < Duration::from_secs(30), "sn3 never asked sn2 for the plan: {}", rig.log(2));
        std::thread::sleep(Duration::from_millis(5));
    }
    rig.kill(1);
    let o = sync.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("sync with sn2 killed before serving the plan took {:.2?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(15), "the child waited for its dead parent");
    assert_eq!(o.status.code(), Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["failed"].as_array().unwrap().iter().any(|f| f["sn"] == "sn2"), "sn2 not reported failed: {v}");
    for (i, sn) in [(0, "sn1"), (2, "sn3")] {
        assert_eq!(row(&v, sn)["matches"], true, "{sn}: {v}\n{err}");
        assert_same_tree(&rig.source(), &rig.replica(i));
    }
    let r3 = row(&v, "sn3");
    assert_eq!(r3["plan_via"], "mn", "{r3}");
    assert_eq!(r3["via"], "sn2+mn", "{r3}");
    assert_eq!(r3["files_sent"], 6, "{r3}");
}
