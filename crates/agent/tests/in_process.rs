#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The agent served in this test process (`agent::testing`): it binds port 0 and reports the port,
//! and its bulk replies arrive with the agent's own chunk tag.

use proto::{req, Name, RelPath};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_port_0_reports_its_port_and_serves_bulk_replies() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent::testing::spawn(dir.path(), "").await.unwrap();
    assert_ne!(a.addr.port(), 0);
    let mut c = transport::connect(&a.addr.to_string(), "agent", None, T).await.unwrap();
    c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.unwrap();
    let o = c.call(req::Open { image: Name::parse("img").unwrap(), path: RelPath::parse("img").unwrap() }).await;
    assert_eq!(o.unwrap().state.generation, 0);
    let m = c.call(req::GetManifest).await.unwrap();
    let b = c.recv_bulk("a manifest", m.len, proto::MAX_MANIFEST).await.unwrap();
    let got = tree::Manifest::from_bytes(&b).unwrap();
    assert_eq!(got.digest(), tree::scan(&a.root.join("img"), &[]).unwrap().digest());
    // A second agent on another port 0 is another listener.
    let b2 = agent::testing::spawn(&dir.path().join("two"), "").await.unwrap();
    assert_ne!(a.addr, b2.addr);
}

/// The agent's disk and CPU work runs on tokio's blocking pool, never on a runtime worker: it
/// serves a whole session even on a single-threaded runtime (where `block_in_place` would panic
/// and a blocking call would stall every other session).
#[tokio::test(flavor = "current_thread")]
async fn a_single_threaded_runtime_serves_open_verify_exports_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent::testing::spawn(dir.path(), "").await.unwrap();
    std::fs::create_dir_all(a.root.join("img/etc")).unwrap();
    std::fs::write(a.root.join("img/etc/motd"), b"hello\n").unwrap();
    let mut c = transport::connect(&a.addr.to_string(), "agent", None, T).await.unwrap();
    c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.unwrap();
    // Another session meanwhile is answered too.
    let mut other = transport::connect(&a.addr.to_string(), "agent", None, T).await.unwrap();
    other.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.unwrap();
    let o = c.call(req::Open { image: Name::parse("img").unwrap(), path: RelPath::parse("img").unwrap() }).await;
    assert_eq!(o.unwrap().state.generation, 0);
    let v = c.call(req::Verify).await.unwrap();
    let walked: proto::Digest = tree::scan(&a.root.join("img"), &[]).unwrap().digest().parse().unwrap();
    assert_eq!(v.actual, walked);
    assert_eq!(v.recorded.digest, v.actual);
    other.call(req::Ping).await.unwrap();
    let text = "/install/img *(ro)\n".to_string();
    let e = c.call(req::Exports { text: text.clone() }).await.unwrap();
    assert!(e.reloaded, "{}", e.output);
    assert_eq!(std::fs::read_to_string(&a.exports_file).unwrap(), text);
    let s = other.call(req::Status).await.unwrap();
    assert_eq!(s.images.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["img"]);
}
