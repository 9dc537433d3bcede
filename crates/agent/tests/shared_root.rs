#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One writer per replica root (xCAT `site.sharedinstall=sns`: the SNs mount one shared installdir).
//! Two agents with their own state dirs over one root: the first to apply owns it, the second is
//! refused by name before it writes anything; the owner keeps it; once the marker is
//! removed (the owner gone for good) another agent may take the root.

use proto::{req, Name, RelPath};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// An agent over `root` with its own state dir and exports under `dir`; stops when the runtime ends.
async fn agent_over(dir: &Path, root: &Path) -> std::net::SocketAddr {
    let mut cfg = agent::testing::config(dir, "").unwrap();
    cfg.root = model::AbsPath::parse(root.to_str().unwrap()).unwrap();
    let bound = agent::Agent::new(cfg).unwrap().bind().await.unwrap();
    let addr = bound.local_addr();
    tokio::spawn(async move {
        let _ = bound.serve().await;
    });
    addr
}

async fn open(addr: std::net::SocketAddr) -> Result<u64, String> {
    let mut c = transport::connect(&addr.to_string(), "agent", None, T).await.map_err(|e| e.to_string())?;
    c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.map_err(|e| e.to_string())?;
    let o =
        c.call(req::Open { image: Name::parse("img").unwrap(), path: RelPath::parse("netboot/img").unwrap() }).await;
    o.map(|o| o.state.generation).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_over_one_root_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("install");
    let a = agent_over(&t.path().join("a"), &root).await;
    let b = agent_over(&t.path().join("b"), &root).await;
    assert_eq!(open(a).await, Ok(0), "the first agent applies");
    let marker = root.join(".hanfs/agent");
    let owner = std::fs::read_to_string(&marker).unwrap();
    assert!(owner.contains(&format!("state_dir {}", t.path().join("a/state").display())), "{owner}");
    let e = open(b).await.unwrap_err();
    assert!(
        e.contains("two agents must never apply into one file system") && e.contains(&marker.display().to_string()),
        "{e}"
    );
    assert!(e.contains("sharedinstall=sns"), "{e}");
    assert!(!t.path().join("b/state/images/img").exists(), "the refused agent wrote no replica state");
    // The owner again (another session): still its root.
    assert_eq!(open(a).await, Ok(0));
    // The owner gone for good: the marker removed, the other agent takes the root.
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(open(b).await, Ok(0));
    assert!(open(a).await.unwrap_err().contains("written by another agent"));
}
