//! NFS probes against the real embedded server, a closed port (bound, never listening, held for the
//! test) and a listener that never answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use health::probe::{probe_nfs, rpc_null, MountPort, NfsTarget, RpcError, SourcePort, PROG_NFS};
use health::Check;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn target(port: u16, versions: &[u32], source: SourcePort) -> NfsTarget {
    NfsTarget {
        address: LOCAL,
        nfs_port: port,
        nfs_versions: versions.to_vec(),
        mount: MountPort::Portmap(port),
        timeout: Duration::from_secs(2),
        source,
    }
}

/// Reserved source ports need root; the embedded server's default refuses any other.
fn can_bind_reserved() -> bool {
    let ok =
        std::net::TcpListener::bind("127.0.0.1:1023").is_ok() || std::net::TcpListener::bind("127.0.0.1:1022").is_ok();
    if !ok {
        eprintln!("cannot bind a reserved port here (not root): the secure-server probes cannot run");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run these as root");
    }
    ok
}

async fn server() -> (tempfile::TempDir, nfs3::Nfs3Server) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("hello"), b"hi\n").unwrap();
    let opts = nfs3::Options { export_name: Some("/install".into()), walk_on_start: false, ..nfs3::Options::default() };
    let s = nfs3::serve(tmp.path(), "127.0.0.1:0".parse().unwrap(), opts).await.unwrap();
    (tmp, s)
}

#[tokio::test]
async fn the_embedded_server_answers_nfs_portmap_and_mount() {
    if !can_bind_reserved() {
        return;
    }
    let (_tmp, s) = server().await;
    let port = s.local_addr().port();
    let p = probe_nfs(&target(port, &[3], SourcePort::Reserved)).await;
    assert!(p.ok(), "{p:?}");
    assert_eq!(p.check(), Check::Ok);
    eprintln!("probe of the embedded server on loopback: {:?}", p.elapsed);
    let whats: Vec<&str> = p.calls.iter().map(|c| c.what.as_str()).collect();
    assert_eq!(
        whats,
        [
            format!("NFS v3 NULL at 127.0.0.1:{port}"),
            format!("portmap GETPORT of MOUNT v3 at 127.0.0.1:{port}"),
            // The guard answers GETPORT with its public port: MOUNT is on the same one.
            format!("MOUNT v3 NULL at 127.0.0.1:{port}"),
        ]
    );
}

#[tokio::test]
async fn a_secure_server_closes_probes_from_unprivileged_ports() {
    let (_tmp, s) = server().await;
    let p = probe_nfs(&target(s.local_addr().port(), &[3], SourcePort::Any)).await;
    // The host answered (accept, then close): a failure, but not a silent one.
    assert_eq!(p.failure().map(|f| f.1.clone()), Some(RpcError::Closed), "{p:?}");
    assert!(matches!(p.check(), Check::Refused(_)));
}

#[tokio::test]
async fn nfs_v4_is_refused_by_the_v3_only_server() {
    if !can_bind_reserved() {
        return;
    }
    let (_tmp, s) = server().await;
    let p = probe_nfs(&target(s.local_addr().port(), &[3, 4], SourcePort::Reserved)).await;
    assert_eq!(p.calls.len(), 2, "{p:?}");
    assert_eq!(p.failure().map(|f| f.1.clone()), Some(RpcError::ProgMismatch { low: 3, high: 3 }));
    assert!(matches!(p.check(), Check::Refused(ref r) if r.contains("NFS v4 NULL")), "{:?}", p.check());
}

#[tokio::test]
async fn a_closed_port_is_refused_at_once() {
    let (_held, port) = testkit::refusing_port();
    let began = Instant::now();
    let p = probe_nfs(&target(port, &[3], SourcePort::Any)).await;
    assert_eq!(p.failure().map(|f| f.1.clone()), Some(RpcError::Refused), "{p:?}");
    assert!(matches!(p.check(), Check::Refused(_)));
    assert!(began.elapsed() < Duration::from_secs(1));
    if can_bind_reserved() {
        let p = probe_nfs(&target(port, &[3], SourcePort::Reserved)).await;
        assert_eq!(p.failure().map(|f| f.1.clone()), Some(RpcError::Refused), "{p:?}");
    }
}

#[tokio::test]
async fn a_stopped_server_fails_the_probe() {
    if !can_bind_reserved() {
        return;
    }
    let (_tmp, s) = server().await;
    let port = s.local_addr().port();
    assert!(probe_nfs(&target(port, &[3], SourcePort::Reserved)).await.ok());
    s.stop();
    let p = probe_nfs(&target(port, &[3], SourcePort::Reserved)).await;
    // Refused, or reset when the listener closes with our connection in its backlog.
    assert!(matches!(p.failure().map(|f| f.1.clone()), Some(RpcError::Refused | RpcError::Closed)), "{p:?}");
    assert!(matches!(p.check(), Check::Refused(_)));
}

#[tokio::test]
async fn a_listener_that_never_answers_times_out() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    // Accepts and holds every connection, never writes.
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = l.accept().await {
            held.push(c);
        }
    });
    let began = Instant::now();
    let mut t = target(port, &[3], SourcePort::Any);
    t.timeout = Duration::from_millis(700);
    let p = probe_nfs(&t).await;
    let took = began.elapsed();
    assert_eq!(p.failure().map(|f| f.1.clone()), Some(RpcError::Timeout(t.timeout)), "{p:?}");
    assert!(matches!(p.check(), Check::Silent(_)));
    assert!(took >= t.timeout && took < t.timeout + Duration::from_millis(500), "took {took:?}");
    assert_eq!(
        rpc_null(std::net::SocketAddr::new(LOCAL, port), PROG_NFS, 3, Duration::from_millis(300), SourcePort::Any)
            .await,
        Err(RpcError::Timeout(Duration::from_millis(300)))
    );
    hold.abort();
}

#[tokio::test]
async fn a_fixed_mount_port_is_called_directly() {
    if !can_bind_reserved() {
        return;
    }
    let (_tmp, s) = server().await;
    let port = s.local_addr().port();
    let mut t = target(port, &[3], SourcePort::Reserved);
    t.mount = MountPort::Fixed(port);
    let p = probe_nfs(&t).await;
    assert!(p.ok(), "{p:?}");
    assert_eq!(p.calls.len(), 2);
    // MOUNT pointed at a dead port: the NFS call passed, the probe fails on MOUNT.
    let (_held, dead) = testkit::refusing_port();
    t.mount = MountPort::Fixed(dead);
    let p = probe_nfs(&t).await;
    assert!(p.calls[0].result.is_ok());
    assert_eq!(
        p.failure().map(|f| (f.0.to_string(), f.1.clone())),
        Some((format!("MOUNT v3 NULL at 127.0.0.1:{dead}"), RpcError::Refused))
    );
}
