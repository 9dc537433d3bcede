#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A real agent in a child process (this test binary re-run as `child_agent_entry`, so the tree
//! engine's crash points are compiled in), driven over the real protocol by hostile or crashing
//! controllers: only the controller's certificate drives it, zstd bombs do not grow its memory,
//! a SIGKILL at any crash point of an update leaves, after a restart and before any sync, exactly
//! the old or the new tree (by an independent walk), and a second agent on its state dir is refused.

use proto::{reply, req, Encoding, FromAgent, Name, RelPath, ToAgent};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
type Conn = transport::Conn<proto::Controller>;

const T: Duration = Duration::from_secs(20);
const ENV_CONF: &str = "HANFS_TEST_CHILD_CONF";
/// Where the child writes the address it bound (its config asks for port 0).
const ENV_ADDR_FILE: &str = "HANFS_TEST_CHILD_ADDR_FILE";

/// The child side: when this binary is started with the config in the environment, it runs the
/// agent until killed (an ordinary test run, without it, has nothing to do here).
#[test]
fn child_agent_entry() {
    let Some(conf) = std::env::var_os(ENV_CONF) else { return };
    let text = std::fs::read_to_string(&conf).unwrap();
    let cfg = model::AgentConfig::from_toml("agent.toml", &text).unwrap();
    let a = match agent::Agent::new(cfg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("agent: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let r = rt.block_on(async {
        let l = a.bind().await?;
        let f = std::env::var_os(ENV_ADDR_FILE).unwrap();
        // Written whole, then renamed: the parent never reads half an address.
        let tmp = PathBuf::from(format!("{}.tmp", f.to_string_lossy()));
        std::fs::write(&tmp, l.local_addr().to_string()).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        l.serve().await
    });
    if let Err(e) = r {
        eprintln!("agent: {e:#}");
        std::process::exit(1);
    }
}

struct Proc {
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an agent config under `dir` (root `dir/root`, state `dir/state`) and returns its path.
fn config(dir: &Path, tls: Option<(&Path, &str)>) -> PathBuf {
    let mut c = format!(
        "listen = \"127.0.0.1:0\"\nroot = \"{0}/root\"\nstate_dir = \"{0}/state\"\nexports_file = \"{0}/exports\"\nreload = [\"true\"]\n",
        dir.display()
    );
    match tls {
        Some((ca, name)) => {
            c += &format!(
                "[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/{name}.pem\"\nkey = \"{0}/{name}.key\"\n",
                ca.display()
            )
        }
        None => c = format!("plaintext_loopback = true\n{c}"),
    }
    let p = dir.join("agent.toml");
    std::fs::write(&p, c).unwrap();
    p
}

/// Starts the agent child; None when it ended before listening (a crash point at start).
fn spawn(conf: &Path, fault_at: Option<u64>) -> Option<Proc> {
    let addr_file = conf.with_extension("addr");
    let _ = std::fs::remove_file(&addr_file);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_agent_entry", "--exact", "--nocapture", "--test-threads", "1"])
        .env(ENV_CONF, conf)
        .env(ENV_ADDR_FILE, &addr_file)
        .env_remove("HANFS_FAULT_AT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(n) = fault_at {
        cmd.env("HANFS_FAULT_AT", n.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    let t = Instant::now();
    // The child reports the port the kernel gave it: nothing here guesses a free one.
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            break a;
        }
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(t.elapsed() < T, "agent did not start");
        std::thread::sleep(Duration::from_millis(10));
    };
    Some(Proc { child, addr })
}

/// Peak resident memory of a process (kB), from the kernel.
fn vm_hwm_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn hello(addr: &str) -> Conn {
    let mut c = transport::connect(addr, "agent", None, T).await.unwrap();
    c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.unwrap();
    c
}

fn open_req(image: &str) -> req::Open {
    req::Open { image: Name::parse(image).unwrap(), path: RelPath::parse(image).unwrap() }
}

async fn open(c: &mut Conn, image: &str) -> (proto::ImageState, Option<proto::Digest>) {
    let o = c.call(open_req(image)).await.unwrap();
    (o.state, o.drifted)
}

async fn manifest(c: &mut Conn) -> Result<tree::Manifest, transport::Error> {
    let m = c.call(req::GetManifest).await?;
    let b = c.recv_bulk("manifest", m.len, 1 << 30).await?;
    Ok(tree::Manifest::from_bytes(&b).unwrap())
}

async fn send_plan(c: &mut Conn, plan: &tree::Plan) -> Result<Vec<u32>, String> {
    let b = plan.to_bytes().unwrap();
    let need = c.call_with_bulk(req::Plan { len: b.len() as u64, zstd: false }, &b).await.map_err(|e| e.to_string())?;
    Ok(need.indexes)
}

async fn send_blob(c: &mut Conn, index: u32, data: &[u8], zstd: bool) -> Result<(), String> {
    let blob = ToAgent::Blob { index, encoding: Encoding::Literal, len: data.len() as u64, zstd };
    c.send(&blob).await.map_err(|e| e.to_string())?;
    c.send_bulk(data).await.map_err(|e| e.to_string())?;
    c.send(&ToAgent::BlobEnd).await.map_err(|e| e.to_string())
}

/// One whole update of `image` to the tree at `src`, sending every file whole.
/// A connection the agent may drop at any point (a crash point) gives an error, not a panic.
async fn push(addr: &str, image: &str, src: &Path, generation: u64) -> Result<reply::Committed, String> {
    let e = |e: transport::Error| e.to_string();
    let mut c = transport::connect(addr, "agent", None, T).await.map_err(e)?;
    c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.map_err(e)?;
    c.call(open_req(image)).await.map_err(e)?;
    let theirs = manifest(&mut c).await.map_err(e)?;
    let mut plan = tree::diff(&theirs, &tree::scan(src, &[]).unwrap());
    plan.generation = generation;
    let need = send_plan(&mut c, &plan).await?;
    for i in need {
        let path = &plan.contents[i as usize].path;
        let data = std::fs::read(src.join(std::ffi::OsStr::from_bytes(path))).unwrap();
        send_blob(&mut c, i, &data, false).await?;
    }
    let r = c.call(req::Commit).await.map_err(e)?;
    c.bye().await;
    Ok(r)
}

#[derive(Debug, PartialEq, Eq)]
struct Rec {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    content: Vec<u8>,
}

/// An independent walk (std only): kind, mode, owner, mtime, content or link target, and the
/// hard-link groups (by inode), `.hanfs` at the top left out.
fn walk(root: &Path) -> (BTreeMap<String, Rec>, Vec<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let (kind, content) = if ft.is_dir() {
            ("dir", Vec::new())
        } else if ft.is_file() {
            ("file", std::fs::read(&p).unwrap())
        } else if ft.is_symlink() {
            ("symlink", std::fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
        } else {
            ("other", Vec::new())
        };
        let key = rel.display().to_string();
        if !ft.is_dir() && md.nlink() > 1 {
            inodes.entry(md.ino()).or_default().push(key.clone());
        }
        out.insert(
            key,
            Rec {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                content,
            },
        );
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                if rel.as_os_str().is_empty() && e.file_name() == ".hanfs" {
                    continue;
                }
                stack.push(rel.join(e.file_name()));
            }
        }
    }
    let mut groups: Vec<Vec<String>> = inodes
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    groups.sort();
    (out, groups)
}

fn write(p: &Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// v1 and v2 differ in every way a commit has to apply: removed files and a removed directory
/// tree, changed contents, a changed mode, a directory that becomes a file, a retargeted symlink,
/// new files and directories, a new hard link.
fn make_trees(dir: &Path) -> (PathBuf, PathBuf) {
    let (v1, v2) = (dir.join("v1"), dir.join("v2"));
    for i in 0..10 {
        write(&v1.join(format!("a/f{i}")), format!("v1 file {i}\n").repeat(i + 1).as_bytes(), 0o644);
    }
    for i in 0..5 {
        write(&v1.join(format!("a/b/g{i}")), format!("g{i}").as_bytes(), 0o600);
        write(&v1.join(format!("c/d/h{i}")), format!("h{i} in c").as_bytes(), 0o644);
    }
    std::os::unix::fs::symlink("a/f0", v1.join("s")).unwrap();
    for i in 0..5 {
        write(&v2.join(format!("a/f{i}")), format!("v2 content {i}\n").repeat(i + 2).as_bytes(), 0o644);
    }
    std::fs::set_permissions(v2.join("a/f3"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&v2.join("a/b"), b"a/b is a file now", 0o644);
    for i in 0..5 {
        write(&v2.join(format!("n/m/new{i}")), format!("new {i}").as_bytes(), 0o644);
    }
    std::fs::hard_link(v2.join("n/m/new0"), v2.join("n/link")).unwrap();
    std::os::unix::fs::symlink("a/f1", v2.join("s")).unwrap();
    // Directory mtimes last, once their contents are in place.
    for v in [&v1, &v2] {
        for d in ["a", "c", "c/d", "a/b", "n", "n/m", ""] {
            let p = v.join(d);
            if p.is_dir() && !p.is_symlink() {
                let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
                std::fs::File::open(&p).unwrap().set_modified(t).unwrap();
            }
        }
    }
    (v1, v2)
}

/// Issue 9 item 5: for every crash point an update passes (apply, commit, removals, cleanup), kill
/// the agent there, restart it, and before any controller talks to it the replica is exactly v1 or
/// exactly v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_crash_point_then_restart_serves_old_or_new() {
    let mut n = 1u64;
    let (mut old, mut new) = (0, 0);
    loop {
        let dir = tempfile::tempdir().unwrap();
        let (v1, v2) = make_trees(dir.path());
        let (w1, w2) = (walk(&v1), walk(&v2));
        let conf = config(dir.path(), None);
        let p = spawn(&conf, None).unwrap();
        push(&p.addr, "img", &v1, 1).await.unwrap();
        drop(p);
        assert_eq!(walk(&dir.path().join("root/img")), w1, "v1 was not applied whole");

        let finished = match spawn(&conf, Some(n)) {
            None => false,
            Some(mut p) => {
                let r = push(&p.addr, "img", &v2, 2).await;
                // The old generation's leftovers are removed after the reply: give that time to
                // reach its crash points too.
                std::thread::sleep(Duration::from_millis(300));
                let alive = p.child.try_wait().unwrap().is_none();
                r.is_ok() && alive
            }
        };
        // Restarted, and nothing has talked to it: what does the replica hold?
        let p = spawn(&conf, None).expect("the agent restarts");
        let now = walk(&dir.path().join("root/img"));
        if now == w1 {
            old += 1;
        } else if now == w2 {
            new += 1;
        } else {
            let diff: Vec<_> = now.0.keys().filter(|k| w1.0.get(*k) != now.0.get(*k)).collect();
            panic!("killed at crash point {n}: after restart the replica is neither v1 nor v2: {diff:?}");
        }
        drop(p);
        if finished {
            break;
        }
        n += 1;
        assert!(n < 1000, "the update never finished");
    }
    eprintln!("{n} runs, killed at {} crash points: {old} left v1, {new} left v2", n - 1);
    assert!(n > 5 && old > 0 && new > 1, "the crash points were not reached: {old} v1, {new} v2 of {n}");
}

/// A zstd stream of `n` zero bytes; `announce`: the frame header carries the size.
fn zeros_zstd(n: u64, announce: bool, window_log: Option<u32>) -> Vec<u8> {
    let mut e = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    e.include_contentsize(announce).unwrap();
    if announce {
        e.set_pledged_src_size(Some(n)).unwrap();
    }
    if let Some(w) = window_log {
        e.window_log(w).unwrap();
    }
    let block = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len() as u64) as usize;
        e.write_all(&block[..k]).unwrap();
        left -= k as u64;
    }
    e.finish().unwrap()
}

/// Issue 9 item 4: zstd bombs as a plan (with and without an announced size) and as a blob (a
/// frame asking for a 128 MiB window): each session is refused with a reason, and the agent's peak
/// RSS stays under 64 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bombs_are_refused_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let conf = config(dir.path(), None);
    let p = spawn(&conf, None).unwrap();
    let pid = p.child.id();
    let base = vm_hwm_kb(pid);

    for (bomb, what) in
        [(zeros_zstd(2 << 30, true, None), "announces"), (zeros_zstd(512 << 20, false, None), "decompresses past")]
    {
        assert!(bomb.len() < 200 << 10, "{}", bomb.len());
        let mut c = hello(&p.addr).await;
        open(&mut c, "img").await;
        match c.call_with_bulk(req::Plan { len: bomb.len() as u64, zstd: true }, &bomb).await {
            Err(transport::Error::Proto(proto::Error::Remote(reason))) => assert!(reason.contains(what), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(c.recv().await.is_err(), "the session goes on after a bomb");
    }

    // A plan for one 256 MiB file, then its content as a zstd frame with a 128 MiB window.
    let size = 256u64 << 20;
    let mut c = hello(&p.addr).await;
    let (state, _) = open(&mut c, "img").await;
    let mut m = manifest(&mut c).await.unwrap();
    let hash = [7u8; 32];
    let e = tree::Entry {
        kind: tree::Kind::File { size, hash, sparse: None },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
        xattrs: vec![],
    };
    m.entries.insert(b"big".to_vec(), e);
    let plan = tree::Plan {
        generation: state.generation + 1,
        from_digest: state.digest.to_string(),
        to_digest: m.digest(),
        manifest: m,
        contents: vec![tree::Content { path: b"big".to_vec(), size, hash, source: tree::Source::Send { base: None } }],
        summary: Default::default(),
    };
    assert_eq!(send_plan(&mut c, &plan).await.unwrap(), vec![0]);
    let bomb = zeros_zstd(size, false, Some(27));
    send_blob(&mut c, 0, &bomb, true).await.unwrap();
    match c.call(req::Commit).await {
        Err(transport::Error::Proto(proto::Error::Remote(reason))) => {
            assert!(reason.to_lowercase().contains("memory"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let peak = vm_hwm_kb(pid);
    eprintln!("agent peak RSS: {base} kB at start, {peak} kB after the bombs");
    assert!(peak < 64 << 10, "agent peak RSS {peak} kB");
    assert!(p.child.id() == pid && std::net::TcpStream::connect(&p.addr).is_ok(), "the agent went down");
}

/// A blob announced longer than its file can need (a zstd frame past zstd's own bound for that
/// size) is refused at once: the agent does not spool what it could never use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_longer_than_its_file_can_need_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conf = config(dir.path(), None);
    let p = spawn(&conf, None).unwrap();
    let mut c = hello(&p.addr).await;
    let (state, _) = open(&mut c, "img").await;
    let mut m = manifest(&mut c).await.unwrap();
    let hash = [1u8; 32];
    let kind = tree::Kind::File { size: 10, hash, sparse: None };
    m.entries.insert(
        b"f".to_vec(),
        tree::Entry { kind, mode: 0o644, uid: 0, gid: 0, mtime_sec: 0, mtime_nsec: 0, xattrs: vec![] },
    );
    let plan = tree::Plan {
        generation: state.generation + 1,
        from_digest: state.digest.to_string(),
        to_digest: m.digest(),
        manifest: m,
        contents: vec![tree::Content {
            path: b"f".to_vec(),
            size: 10,
            hash,
            source: tree::Source::Send { base: None },
        }],
        summary: Default::default(),
    };
    assert_eq!(send_plan(&mut c, &plan).await.unwrap(), vec![0]);
    c.request(&ToAgent::Blob { index: 0, encoding: Encoding::Literal, len: 64 << 30, zstd: true }).await.unwrap();
    match c.recv().await {
        Ok(FromAgent::Error { reason }) => assert!(reason.contains("more than a 10-byte file can need"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(c.recv().await.is_err(), "the session goes on");
    assert!(std::fs::read_dir(dir.path().join("state/images/img/spool")).unwrap().next().is_none());
}

/// Issue 9 item 1: another SN's certificate from the cluster CA, and the MN's name from another
/// CA, are refused in the handshake: the agent reads no frame (the exports file is never written);
/// the controller's certificate drives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_controller_certificate_drives_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, evil) = (dir.path().join("ca"), dir.path().join("evil"));
    transport::ca::init(&ca).unwrap();
    transport::ca::init(&evil).unwrap();
    for n in ["mn", "sn2"] {
        transport::ca::issue(&ca, n, &[]).unwrap();
    }
    transport::ca::issue(&ca, "sn1", &["127.0.0.1".into()]).unwrap();
    transport::ca::issue(&evil, "mn", &[]).unwrap();
    let conf = config(dir.path(), Some((&ca, "sn1")));
    let p = spawn(&conf, None).unwrap();
    let exports = dir.path().join("exports");
    let client = |d: &Path, n: &str| {
        transport::Identity::load(&d.join("ca.pem"), &d.join(format!("{n}.pem")), &d.join(format!("{n}.key")))
            .unwrap()
            .client_config()
            .unwrap()
    };
    let evil_text = "/ *(rw,no_root_squash,insecure)\n";
    for (d, n) in [(&ca, "sn2"), (&evil, "mn")] {
        let r = async {
            let mut c = transport::connect(&p.addr, "sn1", Some(client(d, n)), T).await?;
            c.call(req::Hello { version: proto::VERSION, controller: n.into() }).await?;
            c.call(req::Exports { text: evil_text.into() }).await
        }
        .await;
        assert!(r.is_err(), "{n} from {} drove the agent: {r:?}", d.display());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!exports.exists(), "{n}'s exports were written");
    }
    let mut c = transport::connect(&p.addr, "sn1", Some(client(&ca, "mn")), T).await.unwrap();
    c.call(req::Hello { version: proto::VERSION, controller: "mn".into() }).await.unwrap();
    let done = c.call(req::Exports { text: "/install 10.0.0.0/8(ro)\n".into() }).await.unwrap();
    assert!(done.reloaded, "{done:?}");
    assert_eq!(std::fs::read_to_string(&exports).unwrap(), "/install 10.0.0.0/8(ro)\n");
}

/// Issue 9 item 9: a second agent on the same state dir is refused, by name, while the first
/// keeps serving; once the first is gone the state dir can be taken.
#[test]
fn a_second_agent_on_the_same_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conf = config(dir.path(), None);
    let first = spawn(&conf, None).unwrap();
    let other = std::fs::read_to_string(&conf).unwrap();
    let e = agent::Agent::new(model::AgentConfig::from_toml("b.toml", &other).unwrap()).err().expect("refused");
    let state = dir.path().join("state");
    let msg = format!("{e:#}");
    assert!(msg.contains(&state.display().to_string()) && msg.contains("in use by another agent"), "{msg}");
    assert!(msg.contains(&format!("pid {}", first.child.id())), "{msg}");
    assert!(std::net::TcpStream::connect(&first.addr).is_ok(), "the first agent stopped");
    drop(first);
    agent::Agent::new(model::AgentConfig::from_toml("b.toml", &other).unwrap()).expect("free after the first ended");
}
