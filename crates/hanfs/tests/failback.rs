//! Returning a failed-over SN (`hanfs migrate --back SN`, issue 12 point 3) under a running
//! `hanfs daemon`, with real agents on loopback (each serving NFSv3 on its own address, which the
//! daemon probes): the daemon fences and promotes a killed SN; `--back` refuses while the SN is
//! dead or for an SN that was never failed over; once the SN's agent is back it copies the node's
//! data written on the backup back to it, moves the placement back and records the return, which
//! the running daemon picks up (the SN probed as up again) and honours with its hold-down before
//! failing the SN over a second time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod net;

use model::config::{Clients, NodeSection, StateliteSection};
use net::Rig;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `<prefix of agent i>/nodedata/<node>`.
fn data(rig: &Rig, i: usize, node: &str) -> PathBuf {
    rig.path().join(format!("sn{}", i + 1)).join("sl/nodedata").join(node)
}

/// A TCP port free on 127.0.0.1 and 127.0.0.2 right now.
fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.2", p)).is_ok() {
            return p;
        }
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn health(rig: &Rig) -> serde_json::Value {
    let f = rig.path().join("mn-state/health.json");
    std::fs::read(&f).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(serde_json::Value::Null)
}

fn state_of(h: &serde_json::Value, sn: &str) -> String {
    h["sns"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == sn))
        .map_or(String::new(), |s| s["state"].as_str().unwrap_or_default().to_string())
}

fn moves(rig: &Rig) -> String {
    std::fs::read_to_string(rig.path().join("mn-state/served_by")).unwrap_or_default()
}

fn daemon_log(rig: &Rig) -> String {
    std::fs::read_to_string(rig.path().join("daemon.log")).unwrap_or_default()
}

/// Two agents, each with a statelite prefix and the embedded NFSv3 server on its own loopback
/// address and the one NFS port the daemon probes; node cn001 on sn1, backed up on sn2.
fn setup() -> Rig {
    let mut rig = Rig::new(2, false);
    let port = free_port();
    for i in 0..2 {
        rig.kill(i);
        let a = &rig.agents[i];
        let prefix = rig.path().join(format!("sn{}", i + 1)).join("sl");
        std::fs::create_dir_all(&prefix).unwrap();
        let conf = std::fs::read_to_string(&a.conf).unwrap();
        let conf = format!(
            "statelite_roots = [\"/nodedata\"]\nstatelite_prefix = {:?}\nnfs3 = \"127.0.0.{}:{port}\"\n{conf}",
            prefix.to_str().unwrap(),
            i + 1
        );
        std::fs::write(&a.conf, conf).unwrap();
        rig.start(i);
    }
    rig.edit_config(|c| {
        c.cluster.fence = vec!["true".into()];
        c.statelite.push(StateliteSection::new("nodedata", "/nodedata").clients(Clients::One("10.1.0.0/16".into())));
        c.node.push(NodeSection::new("cn001", ["sn1", "sn2"]));
    });
    let text = std::fs::read_to_string(&rig.cluster).unwrap();
    // sn2 at 127.0.0.2: the address its NFS is probed on (the agent stays on 127.0.0.1).
    let mut seen = 0;
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("address = \"127.0.0.1\"") {
                seen += 1;
                if seen == 2 {
                    return "address = \"127.0.0.2\"\n".to_string();
                }
            }
            format!("{l}\n")
        })
        .collect();
    assert_eq!(seen, 2, "{text}");
    std::fs::write(&rig.cluster, text).unwrap();
    for line in [
        "failover = \"auto\"",
        "probe_interval_secs = 0.5",
        "probe_timeout_secs = 2",
        "dead_after_secs = 3",
        "hold_down_secs = 15",
        &format!("nfs_port = {port}"),
        &format!("mount_port = {port}"),
        &format!("portmap_port = {port}"),
    ] {
        rig.cluster_option(line);
    }
    let d = data(&rig, 0, "cn001");
    std::fs::create_dir_all(d.join("var/log")).unwrap();
    std::fs::write(d.join("var/log/messages"), net::bytes(3, 200_000)).unwrap();
    rig
}

fn json(rig: &Rig, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = rig.hanfs(&a);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {err}"));
    (o.status.code().unwrap_or(-1), v, err)
}

fn file(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

#[test]
fn a_failed_over_sn_gets_its_node_back_and_the_running_daemon_probes_it_as_up() {
    // The NFS probe comes from a reserved port, as the kernel's RPC client does.
    if !testkit::require_root("the daemon's NFS probe from a reserved source port") {
        return;
    }
    let mut rig = setup();
    let (rc, v, err) = json(&rig, &["sync"]);
    assert_eq!(rc, 0, "{v} {err}");
    assert!(file(&data(&rig, 1, "cn001").join("var/log/messages")).is_some(), "the backup copy is made");

    let _daemon = rig.daemon(&[]);
    wait_for("a good probe of both SNs", 30, || {
        let h = health(&rig);
        ["sn1", "sn2"].iter().all(|s| {
            h["sns"].as_array().is_some_and(|a| a.iter().any(|x| x["name"] == *s && x["last_good_probe"].is_u64()))
        })
    });

    // sn1 dies: fenced (`true`), cn001 promoted on sn2.
    rig.kill(0);
    wait_for("sn1 fenced and cn001 served by sn2", 40, || {
        state_of(&health(&rig), "sn1") == "fenced" && moves(&rig).contains("cn001 sn2")
    });
    // The node writes on the backup meanwhile.
    std::fs::write(data(&rig, 1, "cn001").join("var/log/after-failover"), "written on sn2\n").unwrap();

    // Refused, nothing changed: sn1 still dead; sn2 never failed over.
    let (rc, v, err) = json(&rig, &["migrate", "--back", "sn1"]);
    assert_eq!(rc, 1, "{v} {err}");
    assert!(v["failed"][0]["reason"].as_str().unwrap().contains("sn1 is not healthy"), "{v}");
    let (rc, v, _) = json(&rig, &["migrate", "--back", "sn2"]);
    assert_eq!(rc, 1, "{v}");
    assert!(v["failed"][0]["reason"].as_str().unwrap().contains("sn2 was not failed over"), "{v}");
    assert!(moves(&rig).contains("cn001 sn2"));
    assert!(!rig.path().join("mn-state/returns.json").exists());

    // sn1 is repaired: its agent answers again (same port).
    rig.start(0);
    let (rc, v, err) = json(&rig, &["migrate", "--back", "sn1", "--dry-run"]);
    assert_eq!(rc, 0, "{v} {err}");
    assert_eq!(v["dry_run"], true);
    let steps = v["steps"].to_string();
    assert!(steps.contains("would sync /nodedata/cn001 from sn2 to sn1"), "{steps}");
    assert!(moves(&rig).contains("cn001 sn2"), "a dry run changes nothing");
    assert!(file(&data(&rig, 0, "cn001").join("var/log/after-failover")).is_none());

    let (rc, v, err) = json(&rig, &["migrate", "--back", "sn1"]);
    assert_eq!(rc, 0, "{v} {err}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["moved"][0]["node"], "cn001");
    assert_eq!(v["moved"][0]["from"], "sn2");
    assert_eq!(v["moved"][0]["to"], "sn1");
    assert_eq!(v["returned"], 1, "{v}");
    // What the node wrote on the backup is on sn1 now, byte for byte; cn001 is home.
    assert_eq!(file(&data(&rig, 0, "cn001").join("var/log/after-failover")).unwrap(), b"written on sn2\n");
    assert_eq!(
        file(&data(&rig, 0, "cn001").join("var/log/messages")),
        file(&data(&rig, 1, "cn001").join("var/log/messages"))
    );
    assert!(!moves(&rig).contains("cn001"), "{}", moves(&rig));

    let back = Instant::now();
    // sn2's copy is refreshed from sn1 (the daemon's statelite round would do it).
    let (rc, v, err) = json(&rig, &["sync"]);
    assert_eq!(rc, 0, "{v} {err}");
    // The running daemon sees the return and probes sn1 as up from then on.
    wait_for("the daemon logging sn1's return", 10, || daemon_log(&rig).contains("SN returned to service"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state_of(&health(&rig), "sn1"), "up", "{}", health(&rig));
    let (_, st, _) = json(&rig, &["status"]);
    assert_eq!(state_of(&serde_json::json!({ "sns": st["health"] }), "sn1"), "up", "{st}");
    assert_eq!(daemon_log(&rig).matches("SN is down: fencing").count(), 1);

    // Dead again at once: within the hold-down (15 s) it is not failed over a second time...
    rig.kill(0);
    assert!(back.elapsed() < Duration::from_secs(9), "too slow to test the hold-down: {:?}", back.elapsed());
    while back.elapsed() < Duration::from_secs(13) {
        assert_eq!(daemon_log(&rig).matches("SN is down: fencing").count(), 1, "fenced again within the hold-down");
        assert!(!moves(&rig).contains("cn001"), "promoted again within the hold-down");
        std::thread::sleep(Duration::from_millis(200));
    }
    // ...and after it, it is: the daemon still watches it.
    let t = Instant::now();
    while !(daemon_log(&rig).matches("SN is down: fencing").count() == 2 && moves(&rig).contains("cn001 sn2")) {
        assert!(t.elapsed() < Duration::from_secs(30), "sn1 not failed over after the hold-down: {}", daemon_log(&rig));
        std::thread::sleep(Duration::from_millis(100));
    }
}
