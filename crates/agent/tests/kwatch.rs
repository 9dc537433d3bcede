//! Two agents from their TOML configs, the primary and the backup of a statelite area served by
//! kernel nfsd (`[[statelite_kernel]]`), the stream over real mutual TLS with certificates of the
//! cluster CA. A writer changes the primary's node directories directly (kernel nfsd's writes are
//! VFS writes: inotify sees them the same); the backup's tree must then equal the primary's by an
//! independent walk (std::fs), also after lost events (an overflow), a file changed while it was
//! read, and the backup agent restarting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

const AREA: &str = "/nodedata";

fn pki(dir: &Path) {
    transport::ca::init(dir).unwrap();
    for n in ["mn", "sn1", "sn2"] {
        transport::ca::issue(dir, n, &[]).unwrap();
    }
}

fn config(dir: &Path, pki: &Path, me: &str, kernel: &str) -> model::AgentConfig {
    let p = pki.display();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nroot = \"{0}/root\"\nstate_dir = \"{0}/state\"\nexports_file = \"{0}/exports\"\nreload = [\"true\"]\nstatelite_roots = [\"{AREA}\"]\nstatelite_prefix = \"{0}/data\"\n[tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/{me}.pem\"\nkey = \"{p}/{me}.key\"\n[[statelite_kernel]]\narea = \"{AREA}\"\n{kernel}",
        dir.display()
    );
    model::AgentConfig::from_toml("agent.toml", &text).unwrap()
}

/// What an independent walk sees of a tree: kind, mode, owner, content or target.
#[derive(Debug, PartialEq, Eq)]
enum Ent {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(Vec<u8>),
}

fn walk(root: &Path) -> BTreeMap<PathBuf, Ent> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mode = m.permissions().mode() & 0o7777;
            let ent = if m.file_type().is_symlink() {
                Ent::Link(std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes())
            } else if m.is_dir() {
                stack.push(p.clone());
                Ent::Dir(mode)
            } else {
                Ent::File(mode, std::fs::read(&p).unwrap_or_default())
            };
            let _ = m.uid();
            out.insert(rel, ent);
        }
    }
    out
}

/// The served node directories of both sides, equal within `within`.
fn converged(p: &Path, b: &Path, nodes: &[&str], within: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let mut diff = None;
        for n in nodes {
            let (wp, wb) = (walk(&p.join(n)), walk(&b.join(n)));
            if wp != wb || !b.join(n).is_dir() {
                let keys: std::collections::BTreeSet<&PathBuf> = wp.keys().chain(wb.keys()).collect();
                let differ: Vec<String> = keys
                    .into_iter()
                    .filter(|k| wp.get(*k) != wb.get(*k))
                    .map(|k| {
                        let show = |e: Option<&Ent>| match e {
                            Some(Ent::File(m, c)) => format!("file {m:o} {} bytes", c.len()),
                            other => format!("{other:?}"),
                        };
                        format!("{}: primary {} backup {}", k.display(), show(wp.get(k)), show(wb.get(k)))
                    })
                    .collect();
                diff = Some(format!("{n}: {}", differ.join("; ")));
                break;
            }
        }
        match diff {
            None => return Ok(()),
            Some(d) if t0.elapsed() > within => return Err(d),
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn exports(dir: &Path, nodes: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut t = format!("{AREA} *(rw,no_root_squash,sync,no_subtree_check,fsid=1)\n");
    for (i, n) in nodes.iter().enumerate() {
        t.push_str(&format!("{AREA}/{n} *(rw,no_root_squash,sync,no_subtree_check,fsid={})\n", i + 2));
    }
    std::fs::write(dir.join("exports"), t).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Pair {
    _t: tempfile::TempDir,
    ca: PathBuf,
    bdir: PathBuf,
    pdata: PathBuf,
    bdata: PathBuf,
    port: u16,
    rt: tokio::runtime::Runtime,
}

impl Pair {
    fn new() -> Pair {
        let t = tempfile::tempdir().unwrap();
        let ca = t.path().join("pki");
        pki(&ca);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (pdir, bdir) = (t.path().join("p"), t.path().join("b"));
        let (pdata, bdata) = (pdir.join("data/nodedata"), bdir.join("data/nodedata"));
        for n in ["cn001", "cn002", "cn003"] {
            std::fs::create_dir_all(pdata.join(n)).unwrap();
        }
        // cn003 is not served here (only backed up, say): it must not be sent.
        exports(&pdir, &["cn001", "cn002"]);
        let port = free_port();
        Pair { _t: t, ca, bdir, pdata, bdata, port, rt }
    }

    fn backup(&self) -> agent::Listening {
        let cfg = config(
            &self.bdir,
            &self.ca,
            "sn2",
            &format!("replica_listen = \"127.0.0.1:{}\"\nprimary = \"sn1\"\n", self.port),
        );
        self.rt.block_on(async { agent::Agent::new(cfg).unwrap().bind().await.unwrap() })
    }

    /// A backup that serves `nodes` itself (say, promoted for them after a failover).
    fn backup_serving(&self, nodes: &[&str]) -> agent::Listening {
        exports(&self.bdir, nodes);
        self.backup()
    }

    fn primary(&self) -> agent::Listening {
        let k = format!(
            "peer = \"127.0.0.1:{}\"\npeer_name = \"sn2\"\npeer_timeout_ms = 1000\ndebounce_ms = 50\nreconcile_secs = 3600\n",
            self.port
        );
        let pdir = self.pdata.parent().unwrap().parent().unwrap();
        let cfg = config(pdir, &self.ca, "sn1", &k);
        self.rt.block_on(async { agent::Agent::new(cfg).unwrap().bind().await.unwrap() })
    }
}

fn burst(d: &Path) {
    use std::io::Write;
    let n1 = d.join("cn001");
    std::fs::write(n1.join("state"), b"one\n").unwrap();
    std::fs::OpenOptions::new().append(true).open(n1.join("state")).unwrap().write_all(b"two\n").unwrap();
    std::fs::write(n1.join("big"), vec![7u8; 700_000]).unwrap();
    std::fs::OpenOptions::new().write(true).open(n1.join("big")).unwrap().set_len(300_001).unwrap();
    std::fs::create_dir_all(n1.join("var/log/app")).unwrap();
    std::fs::write(n1.join("var/log/app/log"), b"started\n").unwrap();
    std::fs::write(n1.join("tmpfile"), b"x").unwrap();
    std::fs::rename(n1.join("tmpfile"), n1.join("renamed")).unwrap();
    std::fs::write(n1.join("gone"), b"bye").unwrap();
    std::fs::remove_file(n1.join("gone")).unwrap();
    std::fs::create_dir(n1.join("emptydir")).unwrap();
    std::fs::create_dir(n1.join("rmdir")).unwrap();
    std::fs::remove_dir(n1.join("rmdir")).unwrap();
    std::os::unix::fs::symlink("var/log/app/log", n1.join("link")).unwrap();
    std::fs::set_permissions(n1.join("state"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // A directory with content renamed; a file renamed over another.
    std::fs::rename(n1.join("var/log"), n1.join("var/logs")).unwrap();
    std::fs::write(n1.join("new.conf"), b"new\n").unwrap();
    std::fs::write(n1.join("conf"), b"old\n").unwrap();
    std::fs::rename(n1.join("new.conf"), n1.join("conf")).unwrap();
    std::fs::write(d.join("cn002/x"), b"cn002's\n").unwrap();
    std::fs::write(d.join("cn003/private"), b"not served here\n").unwrap();
}

#[test]
fn a_burst_of_changes_reaches_the_backup_and_the_trees_are_equal() {
    let p = Pair::new();
    let backup = p.backup();
    let primary = p.primary();
    burst(&p.pdata);
    converged(&p.pdata, &p.bdata, &["cn001", "cn002"], Duration::from_secs(15)).unwrap();
    assert!(!p.bdata.join("cn003").exists(), "a node not served here is not copied");
    // A directory the backup holds, renamed (one RENAME), then a file beneath it changed: the
    // backup finds it under its new name.
    std::fs::rename(p.pdata.join("cn001/var"), p.pdata.join("cn001/var2")).unwrap();
    converged(&p.pdata, &p.bdata, &["cn001", "cn002"], Duration::from_secs(15)).unwrap();
    std::fs::write(p.pdata.join("cn001/var2/logs/app/log"), b"rotated\n").unwrap();
    converged(&p.pdata, &p.bdata, &["cn001", "cn002"], Duration::from_secs(15)).unwrap();
    // A second round on the same files: only what changed goes, and the trees are equal again.
    std::fs::write(p.pdata.join("cn001/state"), b"three\n").unwrap();
    std::fs::remove_dir_all(p.pdata.join("cn001/var2")).unwrap();
    std::fs::remove_file(p.pdata.join("cn001/link")).unwrap();
    std::fs::write(p.pdata.join("cn001/link"), b"now a file").unwrap();
    std::fs::remove_dir(p.pdata.join("cn001/emptydir")).unwrap();
    std::os::unix::fs::symlink("state", p.pdata.join("cn001/emptydir")).unwrap();
    converged(&p.pdata, &p.bdata, &["cn001", "cn002"], Duration::from_secs(15)).unwrap();

    // Lag: nothing waits; the backup knows it was in sync a moment ago (its data age).
    let t0 = Instant::now();
    let lag = loop {
        let l = primary.statelite_kernel_lag();
        if l[0].in_sync_at.is_some() && l[0].seconds == 0.0 || t0.elapsed() > Duration::from_secs(5) {
            break l;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lag.len(), 1);
    assert_eq!((lag[0].area.as_str(), lag[0].seconds, lag[0].bytes, lag[0].connected), (AREA, 0.0, 0, true));
    // Every entry applied as sent: the stream never had to start over.
    assert_eq!(lag[0].lost_streams, 0);
    std::thread::sleep(Duration::from_millis(1200));
    let at = backup.statelite_kernel_in_sync(AREA).expect("an in-sync mark");
    let age = SystemTime::now().duration_since(at).unwrap();
    assert!(age < Duration::from_millis(1500), "{age:?}");
}

#[test]
fn lost_events_are_repaired_by_the_overflow_comparison() {
    let p = Pair::new();
    let _backup = p.backup();
    let primary = p.primary();
    std::fs::write(p.pdata.join("cn001/before"), b"seen\n").unwrap();
    converged(&p.pdata, &p.bdata, &["cn001", "cn002"], Duration::from_secs(15)).unwrap();
    let w = primary.statelite_kernel_watch(AREA).unwrap();
    w.hooks().drop_events.store(true, Ordering::SeqCst);
    burst(&p.pdata);
    // The events were lost: the backup does not have the burst.
    assert!(converged(&p.pdata, &p.bdata, &["cn001", "cn002"], Duration::from_millis(1500)).is_err());
    w.hooks().drop_events.store(false, Ordering::SeqCst);
    w.inject_overflow();
    converged(&p.pdata, &p.bdata, &["cn001", "cn002"], Duration::from_secs(15)).unwrap();
    assert_eq!(primary.statelite_kernel_lag()[0].overflows, 1);
}

#[test]
fn a_file_changed_while_it_was_read_is_sent_again() {
    let p = Pair::new();
    let _backup = p.backup();
    let primary = p.primary();
    converged(&p.pdata, &p.bdata, &["cn001"], Duration::from_secs(15)).unwrap();
    let w = primary.statelite_kernel_watch(AREA).unwrap();
    // Once per file, right after the watcher read it: events are dropped from now on (so only
    // the re-check after the read can notice), then the file grows.
    let drop_events = w.hooks().drop_events.clone();
    let mut done = std::collections::BTreeSet::new();
    *w.hooks().after_read.lock().unwrap() = Some(Box::new(move |path: &Path| {
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("torn")) && done.insert(path.to_path_buf())
        {
            drop_events.store(true, Ordering::SeqCst);
            use std::io::Write;
            std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(b"LATE").unwrap();
        }
    }));
    std::fs::write(p.pdata.join("cn001/torn"), b"v1").unwrap();
    let t0 = Instant::now();
    while std::fs::read(p.bdata.join("cn001/torn")).ok().as_deref() != Some(b"v1LATE") {
        assert!(t0.elapsed() < Duration::from_secs(10), "the torn copy was not sent again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(primary.statelite_kernel_lag()[0].torn, 1);
    // Without the re-check the same race leaves the backup with what was read first.
    w.hooks().no_recheck.store(true, Ordering::SeqCst);
    w.hooks().drop_events.store(false, Ordering::SeqCst);
    std::fs::write(p.pdata.join("cn001/torn2"), b"v1").unwrap();
    let t0 = Instant::now();
    while std::fs::read(p.bdata.join("cn001/torn2")).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "torn2 never reached the backup");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(std::fs::read(p.bdata.join("cn001/torn2")).unwrap(), b"v1");
    assert_eq!(std::fs::read(p.pdata.join("cn001/torn2")).unwrap(), b"v1LATE");
}

#[test]
fn after_the_backup_restarts_the_stream_is_dialled_again_and_the_trees_converge() {
    let p = Pair::new();
    let backup = p.backup();
    let primary = p.primary();
    burst(&p.pdata);
    converged(&p.pdata, &p.bdata, &["cn001", "cn002"], Duration::from_secs(15)).unwrap();
    drop(backup);
    std::fs::write(p.pdata.join("cn001/while-away"), b"written while the backup was down\n").unwrap();
    std::fs::write(p.pdata.join("cn001/state"), b"changed while away\n").unwrap();
    let t0 = Instant::now();
    while primary.statelite_kernel_lag()[0].connected {
        assert!(t0.elapsed() < Duration::from_secs(10), "the lost stream was not noticed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lag = primary.statelite_kernel_lag();
    assert!(lag[0].seconds > 0.0 && lag[0].bytes > 0, "{lag:?}");
    let _backup = p.backup();
    converged(&p.pdata, &p.bdata, &["cn001", "cn002"], Duration::from_secs(30)).unwrap();
}

#[test]
fn the_stream_never_writes_a_node_directory_the_backup_serves_itself() {
    let p = Pair::new();
    std::fs::create_dir_all(p.bdata.join("cn002")).unwrap();
    std::fs::write(p.bdata.join("cn002/x"), b"live on the backup\n").unwrap();
    let _backup = p.backup_serving(&["cn002"]);
    let _primary = p.primary();
    burst(&p.pdata);
    converged(&p.pdata, &p.bdata, &["cn001"], Duration::from_secs(15)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read(p.bdata.join("cn002/x")).unwrap(), b"live on the backup\n");
}

async fn kernel_status(addr: &str, ca: &Path, name: &str) -> Vec<proto::reply::KernelArea> {
    let id = transport::Identity::load(&ca.join("ca.pem"), &ca.join("mn.pem"), &ca.join("mn.key")).unwrap();
    let mut c =
        transport::connect(addr, name, Some(id.client_config().unwrap()), Duration::from_secs(5)).await.unwrap();
    c.call(proto::req::Hello { version: proto::VERSION, controller: "mn".into() }).await.unwrap();
    let r = c.call(proto::req::StateliteKernelStatus).await.unwrap();
    c.bye().await;
    r.areas
}

fn unix_ms_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn the_controller_sees_each_ends_lag_and_in_sync_mark_and_the_lag_of_a_dead_backup() {
    let p = Pair::new();
    let backup = p.backup();
    let primary = p.primary();
    burst(&p.pdata);
    converged(&p.pdata, &p.bdata, &["cn001", "cn002"], Duration::from_secs(15)).unwrap();
    let (pa, ba) = (primary.local_addr().to_string(), backup.local_addr().to_string());
    let _p = p.rt.spawn(primary.serve());
    let b = p.rt.spawn(backup.serve());
    let ca = p.ca.clone();
    // Converged and quiet: the primary has nothing waiting and an acknowledged mark; the backup
    // applied that mark (its data age is the time since).
    let (ps, bs) = p.rt.block_on(async {
        let t0 = Instant::now();
        loop {
            let ps = kernel_status(&pa, &ca, "sn1").await;
            let bs = kernel_status(&ba, &ca, "sn2").await;
            let quiet = ps[0].lag_ms == 0 && ps[0].in_sync_at_ms.is_some() && bs[0].in_sync_at_ms.is_some();
            if quiet || t0.elapsed() > Duration::from_secs(5) {
                break (ps, bs);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(ps.len(), 1);
    assert_eq!((ps[0].area.as_str(), ps[0].role.as_str(), ps[0].connected), (AREA, "primary", true), "{ps:?}");
    assert_eq!((ps[0].lag_ms, ps[0].lag_bytes), (0, 0), "{ps:?}");
    assert_eq!(ps[0].nodes, ["cn001", "cn002", "cn003"]);
    assert_eq!((bs[0].role.as_str(), bs[0].connected), ("backup", true), "{bs:?}");
    let age = unix_ms_now() - bs[0].in_sync_at_ms.unwrap();
    assert!((0..3000).contains(&age), "backup's data age {age} ms");
    assert_eq!(bs[0].nodes, ["cn001", "cn002"], "only what was sent is on the backup");

    // The backup dies; a change waits: the primary reports its age and size.
    b.abort();
    p.rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    std::fs::write(p.pdata.join("cn002/after"), vec![1u8; 5000]).unwrap();
    let ps = p.rt.block_on(async {
        let t0 = Instant::now();
        loop {
            let ps = kernel_status(&pa, &ca, "sn1").await;
            if ps[0].lag_bytes >= 5000 && ps[0].lag_ms >= 500 || t0.elapsed() > Duration::from_secs(10) {
                break ps;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(ps[0].lag_bytes >= 5000 && ps[0].lag_ms >= 500, "{ps:?}");
}
