#![allow(clippy::unwrap_used, clippy::expect_used)]
//! An agent configured with `nfs3 = ADDR` serves its replicas over NFSv3: after a sync, libnfs'
//! `nfs-cat` (a real NFSv3 client) reads the synced file back from the agent.

mod net;

use net::{fill, Rig, IMAGE_PATH};
use std::process::Command;

#[test]
fn agent_serves_synced_replica_over_nfs3() {
    // The agent's NFSv3 server accepts only privileged client ports, as kernel nfsd's `secure`.
    if !testkit::require_root("nfs-cat binding the privileged port the agent's NFSv3 server requires") {
        return;
    }
    let mut rig = Rig::new(1, false);
    fill(&rig.source(), 20);
    std::fs::write(rig.source().join("etc/motd"), b"served by hanfs over NFSv3\n").unwrap();
    rig.kill(0);
    let conf = rig.agents[0].conf.clone();
    let text = std::fs::read_to_string(&conf).unwrap();
    // Port 0: the agent prints the port its NFSv3 server got.
    std::fs::write(&conf, format!("nfs3 = \"127.0.0.1:0\"\n{text}")).unwrap();
    rig.start(0);
    let port = rig.agents[0].nfs3_port.expect("hanfs agent: serving NFSv3 on ADDR");

    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");
    let root = rig.agents[0].root.clone();
    let url =
        format!("nfs://127.0.0.1{}/{IMAGE_PATH}/etc/motd?nfsport={port}&mountport={port}&version=3", root.display());
    let out = Command::new("nfs-cat").arg(&url).output().expect("nfs-cat (libnfs-utils; make deps installs it)");
    assert!(
        out.status.success(),
        "nfs-cat {url}: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        rig.log(0)
    );
    assert_eq!(out.stdout, b"served by hanfs over NFSv3\n");
}
