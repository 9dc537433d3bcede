#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Relay fan-out, the agent's two ends (issue 11): the relay listener admits only the child the
//! controller announced, with its token, over TLS chained to the cluster CA (another SN's
//! certificate, a wrong token, another CA, another run: refused); a child whose parent stalls
//! reports the payloads it could not get, keeps those it got (staged through the same checks),
//! and commits once the controller sent the rest.

use proto::relay::{FromRelay, Parent, ToRelay};
use proto::{reply, req, Encoding, Name, RelPath, ToAgent};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

type Child = transport::Conn<proto::relay::Child>;

fn identity(dir: &Path, name: &str) -> transport::Identity {
    transport::Identity::load(&dir.join("ca.pem"), &dir.join(format!("{name}.pem")), &dir.join(format!("{name}.key")))
        .unwrap()
}

/// Dials the relay at `port` as `who` (its CA dir and name), says Hello, and returns the first
/// answer (or the transport error: a refused handshake).
async fn knock(port: u16, who: (&Path, &str), token: [u8; 32], generation: u64) -> Result<(Child, FromRelay), String> {
    let tls = identity(who.0, who.1).client_config().unwrap();
    let mut c: Child =
        transport::dial(&format!("127.0.0.1:{port}"), "sn1", Some(tls), T).await.map_err(|e| e.to_string())?;
    let hello = ToRelay::Hello { token, image: Name::parse("img").unwrap(), generation };
    c.request(&hello).await.map_err(|e| e.to_string())?;
    let m = c.recv_within(Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    Ok((c, m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_admits_only_the_announced_child_with_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, evil) = (dir.path().join("ca"), dir.path().join("evil"));
    transport::ca::init(&ca).unwrap();
    transport::ca::init(&evil).unwrap();
    for n in ["mn", "sn2", "sn3"] {
        transport::ca::issue(&ca, n, &[]).unwrap();
    }
    transport::ca::issue(&ca, "sn1", &["127.0.0.1".into()]).unwrap();
    transport::ca::issue(&evil, "sn2", &[]).unwrap();
    let extra = format!(
        "relay_listen = \"127.0.0.1:0\"\n[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/sn1.pem\"\nkey = \"{0}/sn1.key\"\n",
        ca.display()
    );
    let a = agent::testing::spawn(&dir.path().join("sn1"), &extra).await.unwrap();
    let mut c = transport::connect(&a.addr.to_string(), "sn1", Some(identity(&ca, "mn").client_config().unwrap()), T)
        .await
        .unwrap();
    c.call(req::Hello { version: proto::VERSION, controller: "mn".into() }).await.unwrap();
    let token = [0x5a; 32];
    let q = req::ExpectRelay {
        token,
        child: Name::parse("sn2").unwrap(),
        image: Name::parse("img").unwrap(),
        generation: 1,
    };
    let port = c.call(q).await.unwrap().port;
    assert_ne!(port, 0);
    assert_ne!(port, a.addr.port(), "the relay is never the control port");

    let refused = |r: Result<(Child, FromRelay), String>| match r {
        Ok((_, FromRelay::Error { reason })) => reason,
        Ok((_, m)) => panic!("admitted: {m:?}"),
        Err(e) => format!("transport: {e}"),
    };
    // Another SN of the cluster, even with the expected child's token.
    let r = refused(knock(port, (&ca, "sn3"), token, 1).await);
    assert!(r.contains("SN `sn3` is not expected"), "{r}");
    // The expected child with a wrong token.
    let r = refused(knock(port, (&ca, "sn2"), [0x5b; 32], 1).await);
    assert!(r.contains("wrong token"), "{r}");
    // A certificate of another CA naming the child: refused in the handshake.
    let r = refused(knock(port, (&evil, "sn2"), token, 1).await);
    assert!(r.starts_with("transport:"), "{r}");
    // Another run (generation) than the one announced.
    let r = refused(knock(port, (&ca, "sn2"), token, 2).await);
    assert!(r.contains("no relay run for image img at generation 2"), "{r}");
    // The child itself is admitted; the payload is not here yet and the run has not ended, so
    // the relay waits (no frame: no progress to report either).
    let (mut child, m) = knock(port, (&ca, "sn2"), token, 1).await.unwrap();
    assert_eq!(m, FromRelay::Ready);
    child.request(&ToRelay::Get { index: 0 }).await.unwrap();
    let r = child.recv_within(Duration::from_millis(1500)).await;
    assert!(matches!(r, Err(transport::Error::Timeout(..))), "{r:?}");
    // An agent without relay_listen is no relay: refused with the reason, the session goes on.
    let b = agent::testing::spawn(&dir.path().join("plain"), "").await.unwrap();
    let mut c = transport::connect(&b.addr.to_string(), "agent", None, T).await.unwrap();
    c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.unwrap();
    let q = req::ExpectRelay {
        token,
        child: Name::parse("sn2").unwrap(),
        image: Name::parse("img").unwrap(),
        generation: 1,
    };
    match c.call(q).await {
        Err(transport::Error::Proto(proto::Error::Remote(r))) => assert_eq!(r, "not a relay: relay_listen unset"),
        other => panic!("{other:?}"),
    }
    c.call(req::Ping).await.unwrap();
}

/// A parent that admits the child, gives it payload `first` (read from `src`) and then stalls.
async fn stalling_parent(first: Option<(u32, Vec<u8>)>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut c: transport::Conn<Parent> = transport::accept_as(tcp, None, T).await.unwrap();
        assert!(matches!(c.recv().await.unwrap(), ToRelay::Hello { .. }));
        c.request(&FromRelay::Ready).await.unwrap();
        if let Some((index, data)) = first {
            assert_eq!(c.recv().await.unwrap(), ToRelay::Get { index });
            let blob = FromRelay::Blob { index, encoding: Encoding::Literal, len: data.len() as u64, zstd: false };
            c.send(&blob).await.unwrap();
            c.send_bulk(&data).await.unwrap();
            c.request(&FromRelay::BlobEnd).await.unwrap();
        }
        // Asked for the next one: never answers, never closes.
        let _ = c.recv().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_parent_leaves_the_rest_missing_and_the_controller_sends_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/a"), vec![1u8; 5000]).unwrap();
    std::fs::write(src.join("etc/b"), vec![2u8; 3 << 20]).unwrap();
    std::fs::write(src.join("etc/c"), b"small").unwrap();
    let a = agent::testing::spawn(&dir.path().join("sn2"), "").await.unwrap();
    let mut c = transport::connect(&a.addr.to_string(), "agent", None, T).await.unwrap();
    c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.unwrap();
    c.call(req::Open { image: Name::parse("img").unwrap(), path: RelPath::parse("img").unwrap() }).await.unwrap();
    let m = c.call(req::GetManifest).await.unwrap();
    let theirs = tree::Manifest::from_bytes(&c.recv_bulk("manifest", m.len, 1 << 30).await.unwrap()).unwrap();
    let source = tree::scan(&src, &[]).unwrap();
    let mut plan = tree::diff(&theirs, &source);
    plan.generation = 1;
    let b = plan.to_bytes().unwrap();
    let need = c.call_with_bulk(req::Plan { len: b.len() as u64, zstd: false }, &b).await.unwrap().indexes;
    assert_eq!(need.len(), 3);
    let data = |i: u32| std::fs::read(src.join(std::ffi::OsStr::from_bytes(&plan.contents[i as usize].path))).unwrap();
    let first = data(need[0]);
    let port = stalling_parent(Some((need[0], first.clone()))).await;
    let t = Instant::now();
    let q = req::Fetch {
        parent: Name::parse("sn1").unwrap(),
        addr: "127.0.0.1".into(),
        port,
        token: [9; 32],
        indexes: need.clone(),
        stall_ms: 300,
    };
    let got: reply::Fetched = c.call_within(q, T).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "the stall was not cut at stall_ms: {:?}", t.elapsed());
    assert_eq!(got, reply::Fetched { missing: need[1..].to_vec(), bytes: first.len() as u64 });
    // The controller sends the rest (the first one again would be refused: it is staged).
    for &i in &got.missing {
        let d = data(i);
        c.send(&ToAgent::Blob { index: i, encoding: Encoding::Literal, len: d.len() as u64, zstd: false })
            .await
            .unwrap();
        c.send_bulk(&d).await.unwrap();
        c.send(&ToAgent::BlobEnd).await.unwrap();
    }
    let done = c.call(req::Commit).await.unwrap();
    assert_eq!(done.state.digest.to_string(), source.digest());
    for f in ["etc/a", "etc/b", "etc/c"] {
        assert_eq!(std::fs::read(a.root.join("img").join(f)).unwrap(), std::fs::read(src.join(f)).unwrap(), "{f}");
    }

    // A parent that is not there at all: everything missing, at once.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = l.local_addr().unwrap().port();
    drop(l);
    std::fs::write(src.join("etc/d"), b"new").unwrap();
    let m = c.call(req::GetManifest).await.unwrap();
    let theirs = tree::Manifest::from_bytes(&c.recv_bulk("manifest", m.len, 1 << 30).await.unwrap()).unwrap();
    let mut plan = tree::diff(&theirs, &tree::scan(&src, &[]).unwrap());
    plan.generation = 2;
    let b = plan.to_bytes().unwrap();
    let need = c.call_with_bulk(req::Plan { len: b.len() as u64, zstd: false }, &b).await.unwrap().indexes;
    let q = req::Fetch {
        parent: Name::parse("sn1").unwrap(),
        addr: "127.0.0.1".into(),
        port: dead,
        token: [9; 32],
        indexes: need.clone(),
        stall_ms: 300,
    };
    let got: reply::Fetched = c.call_within(q, T).await.unwrap();
    assert_eq!(got, reply::Fetched { missing: need, bytes: 0 });
}
