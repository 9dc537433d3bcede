#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Relay fan-out through the controller (issue 11) against in-process agents: with `fanout = 2`
//! the MN sends the payloads once, to the root; the other SNs fetch them from their parent and
//! commit the source's digest. An SN that is no relay (`relay_listen` unset) leaves its children
//! to the MN.

use std::sync::Arc;

async fn run(relay_on: [bool; 4]) -> (tempfile::TempDir, controller::SyncReport, u64) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("src/img");
    std::fs::create_dir_all(img.join("etc")).unwrap();
    let mut total = 0;
    for i in 0..6u8 {
        let n = 200_000 * (i as usize + 1);
        std::fs::write(img.join(format!("etc/f{i}")), (0..n).map(|j| (j * 31 + i as usize) as u8).collect::<Vec<_>>())
            .unwrap();
        total += n as u64;
    }
    let mut agents = Vec::new();
    let mut toml = format!(
        "[cluster]\nsource_root = \"{0}/src\"\nstate_dir = \"{0}/state\"\nplaintext_loopback = true\nfanout = 2\nzstd_level = 0\n",
        d.display()
    );
    for (i, on) in relay_on.iter().enumerate() {
        let extra = if *on { "relay_listen = \"127.0.0.1:0\"\n" } else { "" };
        let a = agent::testing::spawn(&d.join(format!("sn{}", i + 1)), extra).await.unwrap();
        toml += &format!("[[sn]]\nname = \"sn{}\"\naddress = \"127.0.0.1\"\nagent = \"{}\"\n", i + 1, a.addr);
        agents.push(a);
    }
    toml += "[[image]]\nname = \"img\"\npath = \"img\"\nclients = \"*\"\n";
    let cluster = model::Cluster::from_toml("t.toml", &toml).unwrap();
    let images = cluster.images().to_vec();
    let ctl = Arc::new(controller::Controller::new(cluster).unwrap());
    // A first sync makes generation 1 the shared base; the second is the relayed update.
    let r = ctl.sync(&images).await.unwrap();
    assert!(r.ok, "{r:?}");
    for i in 0..6u8 {
        let p = img.join(format!("etc/f{i}"));
        let mut b = std::fs::read(&p).unwrap();
        for x in b.iter_mut().step_by(4096) {
            *x ^= 0x55;
        }
        std::fs::write(&p, b).unwrap();
    }
    let r = ctl.sync(&images).await.unwrap();
    drop(agents);
    (dir, r, total)
}

fn row<'a>(r: &'a controller::SyncReport, sn: &str) -> &'a controller::ReplicaReport {
    r.replicas.iter().find(|x| x.sn == sn).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mn_sends_once_and_the_tree_relays_the_rest() {
    let (_d, r, _) = run([true; 4]).await;
    assert!(r.ok, "{r:?}");
    // Fanout 2 over sn1..sn4: sn1 <- mn; sn2, sn3 <- sn1; sn4 <- sn2.
    let (r1, r2, r3, r4) = (row(&r, "sn1"), row(&r, "sn2"), row(&r, "sn3"), row(&r, "sn4"));
    assert_eq!([&r1.via, &r2.via, &r3.via, &r4.via], ["mn", "sn1", "sn1", "sn2"], "{r:?}");
    assert!(r1.files_sent == 6 && r1.relayed_files == 0, "{r1:?}");
    for x in [r2, r3, r4] {
        assert!(x.matches && x.files_sent == 0 && x.relayed_files == 6, "{x:?}");
        // Only the plan and the session from the MN.
        assert!(x.bytes_sent * 4 < r1.bytes_sent, "{x:?} against {r1:?}");
        assert!(x.relayed_bytes > 0, "{x:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_children_of_an_sn_that_is_no_relay_get_their_payloads_from_the_mn() {
    let (_d, r, _) = run([true, false, true, true]).await;
    assert!(r.ok, "{r:?}");
    let (r2, r3, r4) = (row(&r, "sn2"), row(&r, "sn3"), row(&r, "sn4"));
    assert_eq!(r2.via, "sn1");
    assert_eq!(r3.via, "sn1");
    assert!(r4.via == "mn" && r4.files_sent == 6, "sn2 refused ExpectRelay: {r4:?}");
}
