#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile peers against a real agent process: a certificate from another CA, a path with `../`,
//! a manifest escaping the root, oversized and malformed frames. Each ends the session with a logged
//! reason and changes nothing outside the agent's root.

mod net;

use net::{fill, Rig};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn send(s: &mut TcpStream, m: &proto::ToAgent) {
    s.write_all(&proto::encode(m).unwrap()).unwrap();
}

/// An `Open` frame made by hand: the typed message cannot hold a hostile name or path.
fn raw_open(image: &str, path: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    enum Raw<'a> {
        _Hello,
        _Ping,
        _Status,
        Open { image: &'a str, path: &'a str },
    }
    proto::encode(&Raw::Open { image, path }).unwrap()
}

fn hello() -> proto::ToAgent {
    proto::ToAgent::Hello(proto::req::Hello { version: proto::VERSION, controller: "test".into() })
}

/// Next reply, or None when the agent closed the connection.
fn recv(s: &mut TcpStream) -> Option<proto::FromAgent> {
    let mut h = [0u8; 4];
    if s.read_exact(&mut h).is_err() {
        return None;
    }
    let n = proto::frame_len(h).unwrap();
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).ok()?;
    Some(proto::decode(&b).unwrap())
}

fn session(rig: &Rig) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", rig.agents[0].port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send(&mut s, &hello());
    assert!(matches!(recv(&mut s), Some(proto::FromAgent::Hello(_))));
    s
}

fn assert_closed(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("session still open: {other:?}"),
    }
}

fn wait_log(rig: &Rig, what: &str) {
    let t = Instant::now();
    while !rig.log(0).contains(what) {
        assert!(t.elapsed() < Duration::from_secs(10), "agent never logged `{what}`:\n{}", rig.log(0));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything under `dir` except the agent's own root and state (which it may write).
fn outside(rig: &Rig) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![rig.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.starts_with(&rig.agents[0].root) || p.ends_with("state") || p.ends_with("agent.log") {
                continue;
            }
            v.push(p.display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn dotdot_paths_are_refused_and_nothing_outside_changes() {
    let rig = Rig::new(1, false);
    let before = outside(&rig);

    let mut s = session(&rig);
    s.write_all(&raw_open("evil", "../../escape")).unwrap();
    match recv(&mut s) {
        Some(proto::FromAgent::Error { reason }) => assert!(reason.contains("`..`"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_closed(&mut s);
    wait_log(&rig, "has a `..` component");

    // A well-formed image, then a plan whose manifest names `../escaped`.
    let mut s = session(&rig);
    s.write_all(&raw_open("evil", "evil")).unwrap();
    let from = match recv(&mut s) {
        Some(proto::FromAgent::Opened(o)) => o.state.digest.to_string(),
        other => panic!("{other:?}"),
    };
    let root_entry =
        tree::Entry { kind: tree::Kind::Dir, mode: 0o755, uid: 0, gid: 0, mtime_sec: 0, mtime_nsec: 0, xattrs: vec![] };
    let mut m = tree::Manifest::default();
    m.entries.insert(Vec::new(), root_entry.clone());
    m.entries.insert(b"../escaped".to_vec(), tree::Entry { kind: tree::Kind::Fifo, ..root_entry });
    let plan = tree::Plan {
        generation: 1,
        from_digest: from,
        to_digest: m.digest(),
        manifest: m,
        contents: vec![],
        summary: Default::default(),
    };
    let b = plan.to_bytes().unwrap();
    send(&mut s, &proto::ToAgent::Plan(proto::req::Plan { len: b.len() as u64, zstd: false }));
    send(&mut s, &proto::ToAgent::Chunk(b));
    match recv(&mut s) {
        Some(proto::FromAgent::Error { reason }) => assert!(reason.contains("refused"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_closed(&mut s);
    wait_log(&rig, "ended: refused");
    assert_eq!(outside(&rig), before, "something changed outside the agent's root");
    assert!(!rig.agents[0].root.join("escaped").exists());
}

#[test]
fn oversized_and_malformed_frames_end_the_session() {
    let rig = Rig::new(1, false);
    let mut s = session(&rig);
    s.write_all(&((proto::MAX_FRAME as u32) + 1).to_be_bytes()).unwrap();
    // The reason first, then the end of the session.
    match recv(&mut s) {
        Some(proto::FromAgent::Error { reason }) => assert!(reason.contains("exceeds the limit"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_closed(&mut s);
    wait_log(&rig, "exceeds the limit");

    let mut s = session(&rig);
    s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
    match recv(&mut s) {
        Some(proto::FromAgent::Error { reason }) => assert!(reason.contains("malformed frame"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_closed(&mut s);
    wait_log(&rig, "malformed frame");

    // A protocol version this agent does not speak.
    let mut s = TcpStream::connect(("127.0.0.1", rig.agents[0].port)).unwrap();
    send(&mut s, &proto::ToAgent::Hello(proto::req::Hello { version: 999, controller: "future".into() }));
    assert!(matches!(recv(&mut s), Some(proto::FromAgent::Error { .. })));
    wait_log(&rig, "protocol version 999");

    // The agent is still serving others.
    let mut s = session(&rig);
    send(&mut s, &proto::ToAgent::Ping);
    assert_eq!(recv(&mut s), Some(proto::FromAgent::Pong));
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let rig = Rig::new(2, true);
    fill(&rig.source(), 10);
    let (rc, v) = rig.hanfs_json(&["sync"]);
    assert_eq!(rc, 0, "{v}");

    // The MN key pair of a foreign CA, with our CA still trusted on the MN side.
    let evil = rig.path().join("evil");
    for args in
        [vec!["ca", "init", evil.to_str().unwrap()], vec!["ca", "issue", evil.to_str().unwrap(), "--name", "mn"]]
    {
        assert!(std::process::Command::new(net::hanfs_bin()).args(&args).output().unwrap().status.success());
    }
    let text = std::fs::read_to_string(&rig.cluster).unwrap();
    let ca = rig.path().join("ca");
    let text = text
        .replace(&format!("{}/mn.pem", ca.display()), &format!("{}/mn.pem", evil.display()))
        .replace(&format!("{}/mn.key", ca.display()), &format!("{}/mn.key", evil.display()));
    let bad = rig.path().join("evil.toml");
    std::fs::write(&bad, text).unwrap();
    let o = std::process::Command::new(net::hanfs_bin())
        .args(["--json", "--config", bad.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(st["sns"].as_array().unwrap().iter().all(|s| s["reachable"] == false), "{st}");
    wait_log(&rig, "invalid peer certificate");
    let o = std::process::Command::new(net::hanfs_bin())
        .args(["--config", bad.to_str().unwrap(), "sync"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("failed on sn1"));
}
