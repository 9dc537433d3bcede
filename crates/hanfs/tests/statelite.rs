//! Writable statelite data with real agents on loopback: replication to the backups (`sync`),
//! a planned move (`migrate`), an unplanned one (`failover`, fenced first), hostile area paths.
//! Each agent keeps its statelite tree under its own `statelite_prefix`, so the cluster-wide
//! `/nodedata` stays apart per SN on one host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod net;

use model::config::{Clients, NodeSection, StateliteSection};
use net::{assert_same_tree, hanfs_bin, Rig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `<prefix of agent i>/nodedata/<node>`.
fn data(rig: &Rig, i: usize, node: &str) -> PathBuf {
    rig.path().join(format!("sn{}", i + 1)).join("sl/nodedata").join(node)
}

/// Restarts agent `i` with `statelite_roots = ["/nodedata"]` and its own prefix.
fn restart_with_statelite(rig: &mut Rig, i: usize) {
    rig.kill(i);
    let a = &rig.agents[i];
    let prefix = rig.path().join(format!("sn{}", i + 1)).join("sl");
    std::fs::create_dir_all(&prefix).unwrap();
    let mut conf = std::fs::read_to_string(&a.conf).unwrap();
    if !conf.contains("statelite_roots") {
        conf = format!("statelite_roots = [\"/nodedata\"]\nstatelite_prefix = {:?}\n{conf}", prefix.to_str().unwrap());
        std::fs::write(&a.conf, conf).unwrap();
    }
    rig.start(i);
}

fn setup(fence: &[&str]) -> Rig {
    let mut rig = Rig::new(3, false);
    for i in 0..3 {
        restart_with_statelite(&mut rig, i);
    }
    rig.edit_config(|c| {
        c.cluster.fence = fence.iter().map(|s| s.to_string()).collect();
        c.statelite.push(StateliteSection::new("nodedata", "/nodedata").clients(Clients::One("10.1.0.0/16".into())));
        c.node.push(NodeSection::new("cn001", ["sn1", "sn2"]));
    });
    let d = data(&rig, 0, "cn001");
    std::fs::create_dir_all(d.join("etc")).unwrap();
    std::fs::create_dir_all(d.join("var/log")).unwrap();
    std::fs::write(d.join("etc/hostname"), "cn001\n").unwrap();
    std::fs::write(d.join("var/log/messages"), net::bytes(7, 3 << 20)).unwrap();
    std::os::unix::fs::symlink("../etc/hostname", d.join("var/name")).unwrap();
    rig
}

fn exports_of(rig: &Rig, i: usize) -> String {
    std::fs::read_to_string(rig.path().join(format!("sn{}", i + 1)).join("exports")).unwrap_or_default()
}

fn write_cluster_with_fence(rig: &Rig, fence: &str) -> PathBuf {
    let c = std::fs::read_to_string(&rig.cluster).unwrap();
    let start = c.find("fence = ").unwrap();
    let end = start + c[start..].find('\n').unwrap();
    let out = rig.path().join("cluster-fence.toml");
    std::fs::write(&out, format!("{}fence = {fence}{}", &c[..start], &c[end..])).unwrap();
    out
}

fn hanfs_with(config: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let o = Command::new(hanfs_bin()).arg("--config").arg(config).arg("--json").args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {err}"));
    (o.status.code().unwrap_or(-1), v, err)
}

#[test]
fn sync_migrate_failover() {
    let t0 = Instant::now();
    let marker = tempfile::tempdir().unwrap();
    let mfile = marker.path().join("fenced");
    let echo = format!("echo {{sn}} {{address}} > {}", mfile.display());
    let mut rig = setup(&["sh", "-c", &echo]);

    // 1. Replication: serving sn1 -> backup sn2, crash-safe replica there; lag reported.
    let (code, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(code, 0, "{v}");
    let sl = v["statelite"].as_array().unwrap();
    assert_eq!(sl.len(), 1, "{v}");
    assert_eq!(sl[0]["to"], "sn2");
    assert_eq!(sl[0]["ok"], true, "{v}");
    assert!(v["replicas"].is_array() && v["bytes_sent"].is_u64(), "contract fields kept: {v}");
    assert_same_tree(&data(&rig, 0, "cn001"), &data(&rig, 1, "cn001"));
    // A change and a removal travel on the next sync; nothing else is resent.
    std::fs::write(data(&rig, 0, "cn001").join("etc/hostname"), "cn001 renamed\n").unwrap();
    std::fs::remove_file(data(&rig, 0, "cn001").join("var/name")).unwrap();
    let (code, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["statelite"][0]["files_sent"], 1, "{v}");
    assert_same_tree(&data(&rig, 0, "cn001"), &data(&rig, 1, "cn001"));
    let o = rig.hanfs(&["status"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("statelite nodedata/cn001 on sn1 -> backup sn2: last sync"), "{out}");
    let o = rig.hanfs(&["sync"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("sn2        statelite nodedata/cn001 from sn1: ok"), "{out}");
    let (code, v) = rig.hanfs_json(&["status"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["statelite"][0]["backup"], "sn2", "{v}");
    assert!(v["statelite"][0]["lag_seconds"].as_u64().unwrap() < 60, "{v}");

    // A dry run prints the steps and changes nothing.
    let o = rig.hanfs(&["migrate", "--node", "cn001", "--to", "sn2", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("would sync /nodedata/cn001 from sn1 to sn2") && out.contains("refer="), "{out}");
    assert!(!rig.path().join("mn-state/served_by").exists());
    assert!(!exports_of(&rig, 0).contains("refer=/nodedata"));

    // 2. Planned move to sn2: final sync, rw on sn2, refer= on sn1, recorded in the overlay.
    std::fs::write(data(&rig, 0, "cn001").join("etc/last-words"), "written just before the move\n").unwrap();
    let (code, v) = rig.hanfs_json(&["migrate", "--node", "cn001", "--to", "sn2"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["moved"][0]["to"], "sn2", "{v}");
    assert_same_tree(&data(&rig, 0, "cn001"), &data(&rig, 1, "cn001"));
    assert!(exports_of(&rig, 1).contains("/nodedata/cn001"), "{}", exports_of(&rig, 1));
    assert!(exports_of(&rig, 1).contains("rw"), "{}", exports_of(&rig, 1));
    assert!(exports_of(&rig, 0).contains("refer=/nodedata/cn001@127.0.0.1"), "{}", exports_of(&rig, 0));
    let o = rig.hanfs(&["exports", "--sn", "sn1"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("refer=/nodedata/cn001@"), "{o:?}");
    let overlay = std::fs::read_to_string(rig.path().join("mn-state/served_by")).unwrap();
    assert!(overlay.contains("cn001 sn2"), "{overlay}");
    // Moving it where it already is: bad input, nothing changed.
    let o = rig.hanfs(&["migrate", "--node", "cn001", "--to", "sn2"]);
    assert_eq!(o.status.code(), Some(2));
    // Now sn1 is the backup: the node writes on sn2, the next sync copies back to sn1.
    std::fs::write(data(&rig, 1, "cn001").join("etc/after-move"), "on sn2\n").unwrap();
    let (code, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["statelite"][0]["from"], "sn2", "{v}");
    assert_same_tree(&data(&rig, 1, "cn001"), &data(&rig, 0, "cn001"));

    // 3. sn2 dies. A failing fence: nothing promoted, exit 1, overlay unchanged.
    rig.kill(1);
    let bad = write_cluster_with_fence(&rig, "[\"false\"]");
    let (code, v, err) = hanfs_with(&bad, &["failover", "--sn", "sn2"]);
    assert_eq!(code, 1, "{v}");
    assert!(v["moved"].as_array().unwrap().is_empty(), "{v}");
    assert!(err.contains("cn001"), "{err}");
    assert!(std::fs::read_to_string(rig.path().join("mn-state/served_by")).unwrap().contains("cn001 sn2"));
    // The real fence runs (marker written), sn1's copy is promoted: rw there again.
    let (code, v, err) = hanfs_with(&rig.cluster, &["failover", "--sn", "sn2"]);
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(std::fs::read_to_string(&mfile).unwrap().trim(), "sn2 127.0.0.1");
    assert_eq!(v["moved"][0]["to"], "sn1", "{v}");
    assert!(!std::fs::read_to_string(rig.path().join("mn-state/served_by")).unwrap().contains("cn001"));
    let e = exports_of(&rig, 0);
    let line = e.lines().find(|l| l.starts_with("/nodedata/cn001")).unwrap_or_default();
    assert!(line.contains("(rw,") && !line.contains("refer="), "{e}");
    assert!(data(&rig, 0, "cn001").join("etc/after-move").exists());
    eprintln!("statelite scenario: {:.1?}", t0.elapsed());
}

#[test]
fn hostile_statelite_path_is_refused() {
    let rig = setup(&[]);
    // An area outside the agents' statelite_roots: the agents refuse it, nothing is written there.
    let c =
        std::fs::read_to_string(&rig.cluster).unwrap().replace("path = \"/nodedata\"", "path = \"/etc/hanfs-evil\"");
    let cfg = rig.path().join("cluster-evil.toml");
    std::fs::write(&cfg, c).unwrap();
    let (code, v, _) = hanfs_with(&cfg, &["sync"]);
    assert_eq!(code, 1, "{v}");
    let e = v["statelite"][0]["error"].as_str().unwrap();
    assert!(e.contains("not within"), "{e}");
    assert!(!Path::new("/etc/hanfs-evil").exists());
    // A node directory that is a symlink on its SN (pointing at SN files) is never followed.
    let outside = rig.path().join("sn1-private");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "sn1 only").unwrap();
    std::os::unix::fs::symlink(&outside, data(&rig, 0, "cn002")).unwrap();
    let c = std::fs::read_to_string(&rig.cluster).unwrap() + "\n[[node]]\nname = \"cn002\"\nsns = [\"sn1\", \"sn2\"]\n";
    let cfg = rig.path().join("cluster-link.toml");
    std::fs::write(&cfg, c).unwrap();
    let (code, v, _) = hanfs_with(&cfg, &["sync"]);
    assert_eq!(code, 1, "{v}");
    let bad: Vec<_> = v["statelite"].as_array().unwrap().iter().filter(|r| r["ok"] == false).collect();
    assert_eq!(bad.len(), 1, "{v}");
    assert_eq!(bad[0]["node"], "cn002");
    assert!(bad[0]["error"].as_str().unwrap().contains("not a directory"), "{v}");
    assert!(!data(&rig, 1, "cn002").join("secret").exists());
    // No fence configured: failover refuses to promote without --force.
    let (code, v, err) = hanfs_with(&rig.cluster, &["failover", "--sn", "sn1"]);
    assert_eq!(code, 1, "{v}");
    assert!(err.contains("cn001") && err.contains("not fenced"), "{err}");
}

#[test]
fn migrate_repoints_xcat() {
    let rig = setup(&[]);
    // cn030 of the committed xCAT fixture, served by sn1 with sn2 as backup.
    let c = std::fs::read_to_string(&rig.cluster).unwrap() + "\n[[node]]\nname = \"cn030\"\nsns = [\"sn1\", \"sn2\"]\n";
    std::fs::write(&rig.cluster, c).unwrap();
    std::fs::create_dir_all(data(&rig, 0, "cn030").join("etc")).unwrap();
    std::fs::write(data(&rig, 0, "cn030").join("etc/hostname"), "cn030\n").unwrap();
    let tab = Path::new(env!("CARGO_MANIFEST_DIR")).join("../xcat/tests/fixtures/cluster");
    let o = rig.hanfs(&["migrate", "--node", "cn030", "--to", "sn2", "--tabdump", tab.to_str().unwrap(), "--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out} {}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("xCAT (to run): chdef -t node -o cn030 servicenode=sn2,sn1"), "{out}");
    // The move with the commands run (templates that only echo).
    let tpl = rig.path().join("templates.toml");
    std::fs::write(
        &tpl,
        "chdef = [\"echo\", \"chdef\", \"{node}\", \"{attrs}\"]\nchtab = [\"true\"]\nnodeset = [\"true\"]\n",
    )
    .unwrap();
    let o = rig.hanfs(&[
        "migrate",
        "--node",
        "cn030",
        "--to",
        "sn2",
        "--tabdump",
        tab.to_str().unwrap(),
        "--apply-xcat",
        "--templates",
        tpl.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out} {}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("xCAT (ran): echo chdef cn030 servicenode=sn2,sn1"), "{out}");
    assert_same_tree(&data(&rig, 0, "cn030"), &data(&rig, 1, "cn030"));
    assert!(std::fs::read_to_string(rig.path().join("mn-state/served_by")).unwrap().contains("cn030 sn2"));
}

/// `hanfs daemon --statelite-secs N` copies statelite data on its own clock, with no image change.
#[test]
fn daemon_copies_statelite_on_its_clock() {
    let rig = setup(&["true"]);
    let (d, _port) = rig.daemon_with_metrics(&["--quiet-secs", "1", "--statelite-secs", "1"]);
    let backup = data(&rig, 1, "cn001");
    let wait_for = |what: &dyn Fn() -> bool, why: &str| {
        let t = Instant::now();
        while !what() {
            if t.elapsed() > Duration::from_secs(60) {
                panic!("{why}; daemon log:\n{}", std::fs::read_to_string(rig.path().join("daemon.log")).unwrap());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(&|| backup.join("etc/hostname").is_file(), "the first round never copied cn001 to sn2");
    // A write on the serving SN, and no image change at all: the next round carries it.
    std::fs::write(data(&rig, 0, "cn001").join("etc/hostname"), "cn001 renamed\n").unwrap();
    wait_for(
        &|| std::fs::read_to_string(backup.join("etc/hostname")).unwrap_or_default() == "cn001 renamed\n",
        "a later round never carried the write",
    );
    drop(d);
    assert_same_tree(&data(&rig, 0, "cn001"), &backup);
}

/// Issue #10: a `migrate` made while `hanfs daemon` runs survives the daemon's next image sync.
/// The daemon used to push every SN's exports from the placement it loaded at start, so its first
/// sync after the move put cn001's rw export back on sn1 (no `refer=`) and took it from sn2.
#[test]
fn daemon_keeps_a_move_made_while_it_runs() {
    let rig = setup(&["true"]);
    net::fill(&rig.source(), 5);
    let (_d, port) = rig.daemon_with_metrics(&["--quiet-secs", "1", "--statelite-secs", "0"]);
    let daemon_log = || std::fs::read_to_string(rig.path().join("daemon.log")).unwrap_or_default();
    let generation = |g: u64| {
        let t = Instant::now();
        let want: Vec<String> =
            (1..=3).map(|i| format!("hanfs_replica_generation{{sn=\"sn{i}\",image=\"compute\"}} {g}")).collect();
        loop {
            let m = net::scrape(port).unwrap_or_default();
            if want.iter().all(|w| m.contains(w.as_str())) {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "never at generation {g}:\n{m}\n{}", daemon_log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    generation(1);
    let (code, v) = rig.hanfs_json(&["migrate", "--node", "cn001", "--to", "sn2"]);
    assert_eq!(code, 0, "{v}");
    let moved = |what: &str| {
        let (old, new) = (exports_of(&rig, 0), exports_of(&rig, 1));
        assert!(old.contains("refer=/nodedata/cn001@127.0.0.1"), "{what}: sn1 lost refer=:\n{old}");
        let line = new.lines().find(|l| l.starts_with("/nodedata/cn001")).unwrap_or_default();
        assert!(line.contains("rw"), "{what}: sn2 lost the node's export:\n{new}");
    };
    moved("after migrate");
    // An image change: the daemon syncs it and pushes every SN's exports again.
    std::fs::write(rig.source().join("etc/after-migrate"), "x").unwrap();
    generation(2);
    moved("after the daemon's next sync");
    assert!(!daemon_log().contains("ERROR"), "{}", daemon_log());
}

/// A rig for the daemon's automatic failover (issue 12): three agents serving NFSv3 (embedded
/// server) on their own loopback service addresses, short health timings, the given `failover`
/// mode and fence script, and a running daemon. Returns the rig, the daemon, its metrics port
/// and the fence marker file (one line per fence run).
fn failover_rig(failover: &str, fence_script: &str) -> (Rig, net::DaemonProc, u16, PathBuf) {
    let marker = std::env::temp_dir().join(format!("hanfs-fence-{}-{failover}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let script = fence_script.replace("MARKER", marker.to_str().unwrap());
    let mut rig = setup(&["sh", "-c", &script]);
    // Each agent's NFSv3 server binds port 0 on its own address; the cluster config then names
    // the ports they got, per SN (the embedded server answers MOUNT on its NFS port).
    for i in 0..3 {
        let conf = &rig.agents[i].conf;
        let text = std::fs::read_to_string(conf).unwrap();
        std::fs::write(conf, format!("nfs3 = \"127.0.0.{}:0\"\n{text}", 11 + i)).unwrap();
        restart_with_statelite(&mut rig, i);
    }
    let nfs: Vec<u16> = rig.agents.iter().map(|a| a.nfs3_port.expect("the agent printed its NFSv3 port")).collect();
    rig.edit_config(|c| {
        for (i, sn) in c.sn.iter_mut().enumerate() {
            sn.service_address = Some(model::config::sp(format!("127.0.0.{}/8", 11 + i)));
            sn.nfs_port = Some(model::config::sp(i64::from(nfs[i])));
            sn.mount_port = Some(model::config::sp(i64::from(nfs[i])));
        }
    });
    rig.cluster_option(&format!(
        "failover = \"{failover}\"\nprobe_interval_secs = 0.2\nprobe_timeout_secs = 0.5\ndead_after_secs = 1\n\
         hold_down_secs = 5\nnfs_versions = [3]\n\
         fence_retry_secs = [0.2]\nfence_rerun_after_secs = 1\nfence_timeout_secs = 5"
    ));
    let (d, port) = rig.daemon_with_metrics(&["--quiet-secs", "1", "--statelite-secs", "1"]);
    // Every SN up, and cn001's copy on its backup (the promotion needs it).
    let backup = data(&rig, 1, "cn001");
    wait_until(&rig, "every SN up and cn001 copied to sn2", || {
        let h = health(&rig);
        backup.join("etc/hostname").is_file()
            && h.as_array().is_some_and(|a| a.len() == 3 && a.iter().all(|s| s["state"] == "up"))
    });
    (rig, d, port, marker)
}

fn daemon_log(rig: &Rig) -> String {
    std::fs::read_to_string(rig.path().join("daemon.log")).unwrap_or_default()
}

/// `hanfs status --json`'s `health` array.
fn health(rig: &Rig) -> serde_json::Value {
    let (_, v) = rig.hanfs_json(&["status"]);
    v["health"].clone()
}

fn sn_health(rig: &Rig, sn: &str) -> serde_json::Value {
    health(rig).as_array().and_then(|a| a.iter().find(|s| s["name"] == sn).cloned()).unwrap_or_default()
}

fn wait_until(rig: &Rig, why: &str, what: impl Fn() -> bool) {
    let t = Instant::now();
    while !what() {
        assert!(t.elapsed() < Duration::from_secs(30), "{why}: timed out; daemon log:\n{}", daemon_log(rig));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn served_by(rig: &Rig) -> String {
    std::fs::read_to_string(rig.path().join("mn-state/served_by")).unwrap_or_default()
}

/// Issue 12: `failover = "auto"`: sn1's agent dies; the daemon declares it down, fences it (the
/// script runs), promotes cn001's copy on sn2, records the move and reports sn1 fenced; the
/// service address claim on sn2 (no takeover interface here) is reported, not fatal.
#[test]
fn daemon_fences_then_promotes_a_dead_sn() {
    if !testkit::require_root("the health probe and the embedded NFSv3 server use privileged ports") {
        return;
    }
    let (mut rig, mut d, port, marker) =
        failover_rig("auto", "echo {sn} {address} >> MARKER; kill -9 $(cat MARKER.pid) 2>/dev/null; exit 0");
    std::fs::write(format!("{}.pid", marker.display()), rig.agents[0].child.as_ref().unwrap().id().to_string())
        .unwrap();
    assert!(!served_by(&rig).contains("cn001"));
    let killed = Instant::now();
    rig.kill(0);
    wait_until(&rig, "cn001 promoted on sn2", || served_by(&rig).contains("cn001 sn2"));
    let took = killed.elapsed();
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "sn1 127.0.0.1", "fenced once, before the move");
    // Fenced comes first, the promotion's report (served_by, the takeover) when it is done.
    wait_until(&rig, "sn1 reported fenced and served by sn2", || {
        let h = sn_health(&rig, "sn1");
        h["state"] == "fenced" && h["served_by"] == "sn2"
    });
    let (_, v) = rig.hanfs_json(&["status"]);
    let h = sn_health(&rig, "sn1");
    assert!(h["last_good_probe"].is_u64(), "{v}");
    assert_eq!(sn_health(&rig, "sn2")["state"], "serving-for", "{v}");
    assert_eq!(sn_health(&rig, "sn2")["serving_for"][0], "sn1", "{v}");
    // The takeover of sn1's service address was tried on sn2 and reported failed, not fatal.
    let t = &v["takeovers"][0];
    assert_eq!(
        (t["service"].as_str(), t["to"].as_str(), t["address"].as_str()),
        (Some("sn1"), Some("sn2"), Some("127.0.0.11/8")),
        "{v}"
    );
    assert_eq!(t["ok"], false, "{v}");
    assert!(d.0.try_wait().unwrap().is_none(), "the daemon exited:\n{}", daemon_log(&rig));
    let e = exports_of(&rig, 1);
    let line = e.lines().find(|l| l.starts_with("/nodedata/cn001")).unwrap_or_default();
    assert!(line.contains("(rw,"), "{e}");
    let m = net::scrape(port).unwrap_or_default();
    for want in
        ["hanfs_fence_runs_total{sn=\"sn1\",result=\"fenced\"} 1", "hanfs_sn_state{sn=\"sn1\",state=\"fenced\"} 1"]
    {
        assert!(m.contains(want), "{want} not in:\n{m}");
    }
    assert!(m.contains("hanfs_sn_last_good_probe_timestamp_seconds{sn=\"sn2\"}"), "{m}");
    let log = daemon_log(&rig);
    assert!(log.contains("fencing") && log.contains("services promoted"), "{log}");
    eprintln!("kill to promotion recorded: {took:.1?}");
}

/// A fence that fails promotes nothing: served_by unchanged, the alert logged, the fence re-run.
#[test]
fn daemon_promotes_nothing_when_the_fence_fails() {
    if !testkit::require_root("the health probe and the embedded NFSv3 server use privileged ports") {
        return;
    }
    let (mut rig, _d, port, marker) = failover_rig("auto", "echo {sn} >> MARKER; exit 1");
    rig.kill(0);
    // Two attempts per run, a run every second: re-runs show as more lines.
    wait_until(&rig, "the fence re-run", || std::fs::read_to_string(&marker).unwrap_or_default().lines().count() >= 4);
    assert!(!served_by(&rig).contains("cn001"), "promoted without a fence: {}", served_by(&rig));
    let h = sn_health(&rig, "sn1");
    assert_eq!(h["state"], "down", "{h}");
    assert!(matches!(h["fence"].as_str(), Some("failed" | "running")), "{h}");
    let log = daemon_log(&rig);
    assert!(log.contains("fence FAILED") && log.contains("fence_failed"), "{log}");
    let m = net::scrape(port).unwrap_or_default();
    assert!(m.contains("hanfs_fence_runs_total{sn=\"sn1\",result=\"failed\"}"), "{m}");
    assert!(!m.contains("hanfs_fence_runs_total{sn=\"sn1\",result=\"fenced\"}"), "{m}");
    assert!(!served_by(&rig).contains("cn001"));
}

/// `failover = "manual"`: a dead SN is reported down, nothing is fenced or promoted.
#[test]
fn manual_mode_reports_down_and_fences_nothing() {
    if !testkit::require_root("the health probe and the embedded NFSv3 server use privileged ports") {
        return;
    }
    let (mut rig, _d, _port, marker) = failover_rig("manual", "echo {sn} >> MARKER");
    rig.kill(0);
    wait_until(&rig, "sn1 reported down", || sn_health(&rig, "sn1")["state"] == "down");
    assert_eq!(sn_health(&rig, "sn1")["fence"], "manual");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!marker.exists(), "fenced in manual mode");
    assert!(!served_by(&rig).contains("cn001"));
    assert!(daemon_log(&rig).contains("down_manual"), "{}", daemon_log(&rig));
}
