//! Probes, detector and fence together against real embedded NFSv3 servers: how long from a kill
//! to the promote decision, and no failover of a slow but alive SN.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use health::probe::{probe_nfs, MountPort, NfsTarget, SourcePort};
use health::{Check, Decision, Detector, FailoverMode, HealthConfig, Probe, SnSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn can_bind_reserved() -> bool {
    let ok =
        std::net::TcpListener::bind("127.0.0.1:1021").is_ok() || std::net::TcpListener::bind("127.0.0.1:1020").is_ok();
    if !ok {
        eprintln!("cannot bind a reserved port here (not root): skipped");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run these as root");
    }
    ok
}

async fn server(insecure: bool) -> (tempfile::TempDir, nfs3::Nfs3Server) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), b"x").unwrap();
    let opts = nfs3::Options { walk_on_start: false, insecure, ..nfs3::Options::default() };
    let s = nfs3::serve(tmp.path(), "127.0.0.1:0".parse().unwrap(), opts).await.unwrap();
    (tmp, s)
}

fn target(port: u16, timeout: Duration, source: SourcePort) -> NfsTarget {
    NfsTarget {
        address: LOCAL,
        nfs_port: port,
        nfs_versions: vec![3],
        mount: MountPort::Portmap(port),
        timeout,
        source,
    }
}

fn detector(cfg: &HealthConfig) -> Detector {
    Detector::new(
        cfg.detector(),
        [("a", ["b", "c"]), ("b", ["c", "a"]), ("c", ["a", "b"])]
            .map(|(n, b)| SnSpec { name: n.into(), backups: b.map(String::from).to_vec() }),
    )
}

/// Probes every SN every interval (overlapping, as the daemon should), feeding results as they
/// come, until `until` says stop. Returns the decisions with the instant each was made.
async fn drive(
    det: &mut Detector,
    targets: &[(&str, NfsTarget)],
    interval: Duration,
    run_for: Duration,
    mut on_tick: impl FnMut(Instant),
) -> Vec<(Instant, Decision)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let began = Instant::now();
    let mut every = tokio::time::interval(interval);
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = every.tick() => {
                let now = Instant::now();
                if now - began > run_for { break; }
                on_tick(now);
                for (name, t) in targets {
                    let (tx, name, t) = (tx.clone(), name.to_string(), t.clone());
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let nfs = probe_nfs(&t).await.check();
                        let _ = tx.send((name, sent, nfs));
                    });
                }
            }
            Some((name, sent, nfs)) = rx.recv() => {
                let now = Instant::now();
                for d in det.observe(&name, sent, now, &Probe { agent: Check::Ok, nfs }).unwrap() {
                    out.push((now, d));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_fenced_and_promoted_after_dead_after() {
    if !can_bind_reserved() {
        return;
    }
    // The defaults scaled down tenfold: interval 100 ms, dead after 500 ms, probe timeout 400 ms.
    let cfg = HealthConfig {
        failover: FailoverMode::Auto,
        probe_interval_secs: 0.1,
        probe_timeout_secs: 0.4,
        dead_after_secs: 0.5,
        hold_down_secs: 3.0,
        fence: vec!["sh".into(), "-c".into(), "exit 0".into()],
        fence_verify: vec!["sh".into(), "-c".into(), "echo \"$1: off\"".into(), "verify".into(), "{sn}".into()],
        ..HealthConfig::default()
    };
    cfg.validate().unwrap();
    let mut det = detector(&cfg);
    let servers = [server(false).await, server(false).await, server(false).await];
    let targets: Vec<(&str, NfsTarget)> = ["a", "b", "c"]
        .iter()
        .zip(&servers)
        .map(|(n, (_, s))| {
            (
                *n,
                target(
                    s.local_addr().port(),
                    cfg.detector().dead_after.min(Duration::from_millis(400)),
                    SourcePort::Reserved,
                ),
            )
        })
        .collect();
    let [(_ta, a), _b, _c] = servers;
    let mut a = Some(a);
    let mut killed = None;
    let start = Instant::now();
    let decisions = drive(&mut det, &targets, cfg.interval(), Duration::from_millis(2000), |now| {
        if now - start >= Duration::from_millis(600) && killed.is_none() {
            if let Some(a) = a.take() {
                a.stop();
            }
            killed = Some(Instant::now());
        }
    })
    .await;
    let killed = killed.unwrap();
    let fences: Vec<&(Instant, Decision)> =
        decisions.iter().filter(|(_, d)| matches!(d, Decision::Fence { .. })).collect();
    assert_eq!(fences.len(), 1, "{decisions:?}");
    assert_eq!(fences[0].1, Decision::Fence { sn: "a".into() });
    let detect = fences[0].0 - killed;
    // Down needs dead_after of failures, and comes within one interval (plus scheduling) of it.
    assert!(detect >= Duration::from_millis(500) - Duration::from_millis(100), "detected after {detect:?}");
    // Room for a loaded machine: the bound that matters is the order of magnitude.
    assert!(detect <= Duration::from_millis(500 + 100 + 400), "detected after {detect:?}");
    // The fence runs once the probing stopped: its own time is added to the detection time.
    let f0 = Instant::now();
    let out = health::fence::fence(&cfg.fence_config(), "a", "127.0.0.1").await;
    assert!(out.fenced(), "{out:?}");
    let d = det.fence_done("a", out.result, Instant::now()).unwrap();
    let fence_took = f0.elapsed();
    let promoted = detect + fence_took;
    assert_eq!(d, [Decision::Promote { service: "a".into(), from: "a".into(), to: "b".into() }]);
    eprintln!(
        "scaled defaults (interval 100 ms, dead_after 500 ms): kill -> fence decision {detect:?}, -> promote decision {promoted:?} (fence + verify {:?})",
        fence_took
    );
}

async fn pipe(mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    let mut buf = vec![0u8; 65536];
    while let Ok(k) = r.read(&mut buf).await {
        if k == 0 {
            break;
        }
        tokio::time::sleep(delay).await;
        if w.write_all(&buf[..k]).await.is_err() {
            break;
        }
    }
}

/// Forwards connections to `upstream`, each chunk delayed by `delay` plus up to `jitter`, both ways.
async fn slow_proxy(upstream: SocketAddr, delay: Duration, jitter: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((c, _)) = l.accept().await {
            let Ok(u) = tokio::net::TcpStream::connect(upstream).await else { continue };
            n += 1;
            let d = delay + jitter.mul_f64(f64::from(n % 7) / 6.0);
            let (cr, cw) = c.into_split();
            let (ur, uw) = u.into_split();
            tokio::spawn(pipe(cr, uw, d));
            tokio::spawn(pipe(ur, cw, d));
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_alive_sn_is_never_failed_over_with_the_defaults() {
    // The real defaults; a's path delays every chunk 200 ms (+ up to 100 ms) each way, a round
    // trip of 400-600 ms, over more than dead_after.
    let cfg = HealthConfig { failover: FailoverMode::Auto, fence: vec!["false".into()], ..HealthConfig::default() };
    cfg.validate().unwrap();
    let mut det = detector(&cfg);
    // The proxy connects from an unprivileged port: these servers accept that.
    let servers = [server(true).await, server(true).await, server(true).await];
    let slow = slow_proxy(servers[0].1.local_addr(), Duration::from_millis(200), Duration::from_millis(100)).await;
    let timeout = Duration::from_secs_f64(cfg.probe_timeout_secs);
    let targets = vec![
        ("a", target(slow.port(), timeout, SourcePort::Any)),
        ("b", target(servers[1].1.local_addr().port(), timeout, SourcePort::Any)),
        ("c", target(servers[2].1.local_addr().port(), timeout, SourcePort::Any)),
    ];
    let decisions = drive(&mut det, &targets, cfg.interval(), Duration::from_secs(8), |_| {}).await;
    assert!(decisions.is_empty(), "{decisions:?}");
    assert_eq!(det.state("a"), Some(health::State::Up));
    let p = probe_nfs(&targets[0].1).await;
    assert!(p.ok(), "{p:?}");
    eprintln!("probe through a 200 ms (+jitter) delay each way: {:?} of a {timeout:?} timeout", p.elapsed);
}
