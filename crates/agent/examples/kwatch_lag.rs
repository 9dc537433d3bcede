//! Benchmark (`make bench-lag`): replication lag of a kernel-nfsd statelite area
//! (`[[statelite_kernel]]`), primary agent → backup agent over mutual TLS on loopback.
//!
//! A writer appends one small line (`<seq> <wall-clock ns>`) per write to `<node>/var/log/app.log`,
//! `HANFS_BENCH_RATE` writes per second (default 100) spread round robin over `HANFS_BENCH_NODES`
//! node directories (default 100), for `HANFS_BENCH_SECS` seconds (default 60). An observer
//! watches the backup's copy (inotify) and, for each line it finds there the first time, records
//! the lag: the time it saw the line minus the time written in it (one host, one clock). Prints
//! p50, p99, max and how many writes never arrived. `HANFS_BENCH_DIR`: where the trees live
//! (default a temporary directory under /tmp).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use notify::Watcher as _;

const AREA: &str = "/nodedata";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn config(dir: &Path, pki: &Path, me: &str, kernel: &str) -> model::AgentConfig {
    let p = pki.display();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nroot = \"{0}/root\"\nstate_dir = \"{0}/state\"\nexports_file = \"{0}/exports\"\nreload = [\"true\"]\nstatelite_roots = [\"{AREA}\"]\nstatelite_prefix = \"{0}/data\"\n[tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/{me}.pem\"\nkey = \"{p}/{me}.key\"\n[[statelite_kernel]]\narea = \"{AREA}\"\n{kernel}",
        dir.display()
    );
    model::AgentConfig::from_toml("agent.toml", &text).unwrap()
}

fn main() {
    let secs = env("HANFS_BENCH_SECS", 60);
    let rate = env("HANFS_BENCH_RATE", 100).max(1);
    let nodes = env("HANFS_BENCH_NODES", 100).max(1);
    let debounce = env("HANFS_BENCH_DEBOUNCE_MS", 100);
    let tmp = match std::env::var("HANFS_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let base = tmp.path();
    let ca = base.join("pki");
    transport::ca::init(&ca).unwrap();
    for n in ["mn", "sn1", "sn2"] {
        transport::ca::issue(&ca, n, &[]).unwrap();
    }
    let (pdir, bdir) = (base.join("p"), base.join("b"));
    let (pdata, bdata) = (pdir.join("data/nodedata"), bdir.join("data/nodedata"));
    let names: Vec<String> = (1..=nodes).map(|i| format!("cn{i:03}")).collect();
    let mut ex = format!("{AREA} *(rw,no_root_squash,sync,no_subtree_check,fsid=1)\n");
    for (i, n) in names.iter().enumerate() {
        std::fs::create_dir_all(pdata.join(n).join("var/log")).unwrap();
        ex.push_str(&format!("{AREA}/{n} *(rw,no_root_squash,sync,no_subtree_check,fsid={})\n", i + 2));
    }
    std::fs::create_dir_all(&bdata).unwrap();
    std::fs::write(pdir.join("exports"), ex).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let bcfg = config(&bdir, &ca, "sn2", &format!("replica_listen = \"127.0.0.1:{port}\"\nprimary = \"sn1\"\n"));
    let pcfg = config(
        &pdir,
        &ca,
        "sn1",
        &format!("peer = \"127.0.0.1:{port}\"\npeer_name = \"sn2\"\ndebounce_ms = {debounce}\nreconcile_secs = 3600\n"),
    );
    let (backup, primary) = rt.block_on(async {
        let b = agent::Agent::new(bcfg).unwrap().bind().await.unwrap();
        let p = agent::Agent::new(pcfg).unwrap().bind().await.unwrap();
        (b, p)
    });
    // Let the initial copy of the (empty) node directories settle.
    wait_connected(&primary);
    std::thread::sleep(Duration::from_secs(2));

    // The observer: every line seen on the backup the first time.
    let lags: Arc<Mutex<Vec<u128>>> = Arc::default();
    let seen: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let (l2, s2) = (lags.clone(), seen.clone());
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if matches!(ev.kind, notify::EventKind::Access(notify::event::AccessKind::Open(_))) {
            return;
        }
        let t = now_ns();
        for p in ev.paths.iter().filter(|p| p.file_name().is_some_and(|n| n == "app.log")) {
            observe(p, t, &l2, &s2);
        }
    })
    .unwrap();
    watcher.watch(&bdata, notify::RecursiveMode::Recursive).unwrap();

    let total = secs * rate;
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let t0 = Instant::now();
    let mut files: Vec<std::fs::File> = names
        .iter()
        .map(|n| {
            std::fs::OpenOptions::new().create(true).append(true).open(pdata.join(n).join("var/log/app.log")).unwrap()
        })
        .collect();
    let mut max_lag_seen = 0.0f64;
    for seq in 0..total {
        let due = t0 + gap * seq as u32;
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let f = &mut files[(seq % nodes) as usize];
        f.write_all(format!("{seq} {}\n", now_ns()).as_bytes()).unwrap();
        if seq % rate == 0 {
            max_lag_seen = max_lag_seen.max(primary.statelite_kernel_lag()[0].seconds);
        }
    }
    let wrote = t0.elapsed();
    // Wait for the tail (up to 10 s).
    let end = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < total as usize && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(watcher);
    let mut v = lags.lock().unwrap().clone();
    v.sort_unstable();
    let n = v.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return f64::NAN;
        }
        let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        v[i] as f64 / 1e6
    };
    let lag = primary.statelite_kernel_lag();
    println!(
        "kernel-nfsd statelite lag: {total} writes ({rate}/s over {nodes} node directories, {:.1} s), debounce {debounce} ms",
        wrote.as_secs_f64()
    );
    println!(
        "  lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; arrived {n}/{total}; torn re-reads {}; status lag peak {:.2} s",
        pct(0.50),
        pct(0.99),
        v.last().map_or(f64::NAN, |m| *m as f64 / 1e6),
        lag[0].torn,
        max_lag_seen
    );
    drop(primary);
    drop(backup);
}

fn wait_connected(l: &agent::Listening) {
    let t0 = Instant::now();
    while !l.statelite_kernel_lag()[0].connected && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn observe(p: &Path, t: u128, lags: &Mutex<Vec<u128>>, seen: &Mutex<HashSet<u64>>) {
    let Ok(text) = std::fs::read(p) else { return };
    let mut s = seen.lock().unwrap();
    let mut l = lags.lock().unwrap();
    // Only whole lines: a line is complete when its newline arrived.
    let whole = match text.iter().rposition(|&b| b == b'\n') {
        Some(i) => &text[..=i],
        None => return,
    };
    for line in whole.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else { continue };
        let mut it = line.split(' ');
        let (Some(seq), Some(at)) =
            (it.next().and_then(|x| x.parse().ok()), it.next().and_then(|x| x.parse::<u128>().ok()))
        else {
            continue;
        };
        if s.insert(seq) {
            l.push(t.saturating_sub(at));
        }
    }
}
