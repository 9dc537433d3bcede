//! The whole job on this machine (`hanfs demo [--dir DIR] [--sns N]`). A sample image, a CA, N agents
//! on 127.0.0.1 (child `hanfs agent` processes with their own roots and configs), a sync, an edit and
//! a second sync showing how few bytes went, verify, and the exports each SN got. The agents are
//! killed on every exit path: normal, error, Ctrl-C/SIGTERM (handler), and the demo's own death
//! (PR_SET_PDEATHSIG in each child).

use crate::BadInput;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IMAGE: &str = "netboot/demo/x86_64/compute/rootimg";

/// Child agents, killed when this guard drops or from the signal handler.
#[derive(Clone, Default)]
struct Children(Arc<Mutex<Vec<Child>>>);

impl Children {
    fn kill_all(&self) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for c in v.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        v.clear();
    }
}

struct Guard {
    children: Children,
    remove: Option<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.children.kill_all();
        if let Some(d) = &self.remove {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Deterministic bytes (xorshift), so every demo run shows the same sizes.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Skewed towards a small alphabet so the data looks like text and binaries, not noise.
            (x % 64) as u8 + b' '
        })
        .collect()
}

/// A sample image: thousands of files, hard links, symlinks, xattrs, a fifo, a device node when root.
fn make_image(root: &Path) -> Result<(u64, u64)> {
    let (mut files, mut total) = (0u64, 0u64);
    for d in ["etc", "bin", "dev", "boot", "var/log", "usr/share/doc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for pkg in 0..40u64 {
        let dir = root.join(format!("usr/lib/pkg{pkg:02}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..60u64 {
            let size = ((pkg * 7919 + f * 104_729) % 24_000) as usize;
            std::fs::write(dir.join(format!("lib{f:02}.so")), bytes(pkg * 1000 + f, size))?;
            files += 1;
            total += size as u64;
        }
        std::os::unix::fs::symlink(format!("pkg{pkg:02}/lib00.so"), root.join(format!("usr/lib/libpkg{pkg:02}.so")))?;
        std::fs::hard_link(dir.join("lib01.so"), root.join(format!("usr/share/doc/pkg{pkg:02}-hardlink")))?;
    }
    for (name, size) in [("boot/vmlinuz", 4usize << 20), ("boot/initrd.img", 8 << 20)] {
        std::fs::write(root.join(name), bytes(size as u64, size))?;
        files += 1;
        total += size as u64;
    }
    std::fs::write(root.join("etc/motd"), "Welcome to the hanfs demo image, generation 1\n")?;
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    // Best effort, as an image has them: an xattr, a FIFO, a device node when root.
    use rustix::fs::{FileType, Mode, XattrFlags, CWD};
    let _ = rustix::fs::lsetxattr(root.join("etc/hosts"), "user.hanfs.demo", b"replicated xattr", XattrFlags::empty());
    let _ = rustix::fs::mknodat(CWD, root.join("dev/initctl"), FileType::Fifo, Mode::from_raw_mode(0o600), 0);
    if is_root() {
        let dev = rustix::fs::makedev(1, 3);
        let _ =
            rustix::fs::mknodat(CWD, root.join("dev/null"), FileType::CharacterDevice, Mode::from_raw_mode(0o666), dev);
    }
    Ok((files, total))
}

/// An edit as an admin makes one: a changed config, a patched kernel, a package file added and one removed.
fn edit_image(root: &Path) -> Result<()> {
    std::fs::write(root.join("etc/motd"), "Welcome to the hanfs demo image, generation 2\n")?;
    let k = root.join("boot/vmlinuz");
    let mut data = std::fs::read(&k)?;
    data[3 << 20..(3 << 20) + 64].copy_from_slice(&[b'#'; 64]);
    std::fs::write(&k, data)?;
    std::fs::write(root.join("usr/lib/pkg07/libnew.so"), bytes(77, 5000))?;
    std::fs::remove_file(root.join("usr/lib/pkg03/lib05.so"))?;
    Ok(())
}

/// Waits until the agent logging to `log` says which ports it bound (`hanfs agent: serving NFSv3
/// on ADDR`, then `listening on ADDR`): its control port and its NFSv3 port. Binding port 0 in the
/// agent itself, rather than picking a free port here, leaves no window for another process.
fn bound_ports(log: &Path, child: &mut Child) -> Result<(u16, u16)> {
    let port_after = |text: &str, prefix: &str| {
        text.lines().find_map(|l| l.strip_prefix(prefix)?.trim().parse::<std::net::SocketAddr>().ok()).map(|a| a.port())
    };
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(port) = port_after(&text, "hanfs agent: listening on ") {
            let nfs3 = port_after(&text, "hanfs agent: serving NFSv3 on ")
                .with_context(|| format!("the agent did not say its NFSv3 port: {text}"))?;
            return Ok((port, nfs3));
        }
        if child.try_wait()?.is_some() || t.elapsed() > Duration::from_secs(15) {
            bail!("the agent did not start: {text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_agent(exe: &Path, conf: &Path, log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    let mut cmd = Command::new(exe);
    cmd.args(["--config"]).arg(conf).arg("agent").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    child::die_with_parent(&mut cmd);
    Ok(cmd.spawn()?)
}

fn human(n: u64) -> String {
    match n {
        n if n >= 10 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        n if n >= 10 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Set by the signal handler: the main thread's errors from then on (its files vanish under it)
/// are not the user's news; the handler ends the process.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Work directory (None: a new temporary one, removed afterwards).
    pub dir: Option<PathBuf>,
    /// Number of local agents (1 to 32).
    pub sns: usize,
    /// The `hanfs` binary, run as `hanfs --config FILE agent` for each SN.
    pub agent_exe: PathBuf,
}

/// Runs the demo; every line of its story goes to `out`. Returns whether everything worked and a
/// summary (for `--json`). The agents are gone when it returns.
pub fn run(a: &Options, out: &dyn Fn(String)) -> Result<(bool, serde_json::Map<String, serde_json::Value>)> {
    let r = demo(a, out);
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    r
}

fn demo(a: &Options, out: &dyn Fn(String)) -> Result<(bool, serde_json::Map<String, serde_json::Value>)> {
    if a.sns == 0 || a.sns > 32 {
        return Err(BadInput("--sns must be between 1 and 32".into()).into());
    }
    let t0 = Instant::now();
    let (dir, remove) = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (std::fs::canonicalize(d)?, None)
        }
        None => {
            let d = std::env::temp_dir().join(format!("hanfs-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            (d.clone(), Some(d))
        }
    };
    if std::fs::read_dir(&dir)?.next().is_some() {
        return Err(BadInput(format!("{}: the demo directory must be empty", dir.display())).into());
    }
    let children = Children::default();
    let guard = Guard { children: children.clone(), remove: remove.clone() };
    {
        let (children, remove) = (children.clone(), remove.clone());
        ctrlc::set_handler(move || {
            INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
            children.kill_all();
            if let Some(d) = &remove {
                let _ = std::fs::remove_dir_all(d);
            }
            eprintln!("\nhanfs demo: interrupted; agents stopped");
            std::process::exit(130);
        })
        .context("installing the Ctrl-C handler")?;
    }
    out(format!("hanfs demo in {} with {} service nodes", dir.display(), a.sns));

    let src = dir.join("mn/install");
    let (files, total) = make_image(&src.join(IMAGE))?;
    out(format!(
        "  sample image {IMAGE}: {files} files ({}), symlinks, hard links, xattrs, a fifo{}",
        human(total),
        if is_root() { ", a device node" } else { "" }
    ));

    let ca = dir.join("ca");
    transport::ca::init(&ca)?;
    transport::ca::issue(&ca, "mn", &[])?;
    let mut cluster = format!(
        "[cluster]\nsource_root = \"{}\"\nstate_dir = \"{}\"\nbackups = \"ring\"\n\n[tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/mn.pem\"\nkey = \"{c}/mn.key\"\n",
        src.display(),
        dir.join("mn/state").display(),
        c = ca.display()
    );
    let mut ports = Vec::new();
    let mut nfs3_ports = Vec::new();
    for i in 1..=a.sns {
        let name = format!("sn{i}");
        transport::ca::issue(&ca, &name, &["127.0.0.1".into()])?;
        let sd = dir.join(&name);
        std::fs::create_dir_all(&sd)?;
        let conf = sd.join("agent.toml");
        std::fs::write(
            &conf,
            format!(
                "listen = \"127.0.0.1:0\"\nnfs3 = \"127.0.0.1:0\"\nroot = \"{r}\"\nstate_dir = \"{s}\"\nexports_file = \"{e}\"\n# no NFS server is reloaded in the demo\nreload = []\n\n[tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/{name}.pem\"\nkey = \"{c}/{name}.key\"\n",
                r = sd.join("install").display(),
                s = sd.join("state").display(),
                e = sd.join("hanfs.exports").display(),
                c = ca.display()
            ),
        )?;
        let log = sd.join("agent.log");
        let mut child = spawn_agent(&a.agent_exe, &conf, &log)?;
        let started = bound_ports(&log, &mut child);
        children.0.lock().unwrap_or_else(|p| p.into_inner()).push(child);
        let (port, nfs3_port) = started.with_context(|| format!("agent {name}"))?;
        cluster += &format!(
            "\n[[sn]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nagent = \"127.0.0.1:{port}\"\nroot = \"{}\"\n",
            sd.join("install").display()
        );
        ports.push(port);
        nfs3_ports.push(nfs3_port);
    }
    cluster += &format!("\n[[image]]\nname = \"demo-compute\"\npath = \"{IMAGE}\"\nclients = \"*\"\n");
    let cfg_path = dir.join("hanfs.toml");
    std::fs::write(&cfg_path, &cluster)?;
    out(format!("  CA in {}, {} agents on 127.0.0.1 ports {:?} (mutual TLS)", ca.display(), a.sns, ports));

    let model = model::Cluster::from_toml(&cfg_path.display().to_string(), &cluster).map_err(anyhow::Error::new)?;
    let ctl = std::sync::Arc::new(crate::Controller::new(model)?);
    let images = ctl.cluster.images().to_vec();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?;
    let mut ok = true;
    let mut summary = serde_json::Map::new();
    for (step, label) in [(1, "first sync (everything, whole files)"), (2, "second sync after an edit (deltas)")] {
        if step == 2 {
            edit_image(&src.join(IMAGE))?;
            out("\nedit: etc/motd changed, 64 bytes patched in the 4 MiB boot/vmlinuz, a file added, one removed"
                .into());
        }
        let t = Instant::now();
        let r = rt.block_on(ctl.sync(&images))?;
        let secs = t.elapsed().as_secs_f64();
        out(format!("\n{label}: {:.2} s, {} on the wire to {} SNs", secs, human(r.bytes_sent), a.sns));
        for x in &r.replicas {
            out(format!(
                "  {:<5} generation {} digest {}… {} ({} sent)",
                x.sn,
                x.generation,
                x.digest.get(..16).unwrap_or(&x.digest),
                if x.matches { "matches the source" } else { "DOES NOT MATCH" },
                human(x.bytes_sent)
            ));
        }
        ok &= r.ok;
        summary.insert(
            format!("sync{step}"),
            serde_json::json!({"seconds": secs, "bytes_sent": r.bytes_sent, "ok": r.ok}),
        );
    }
    let v = rt.block_on(ctl.verify(&images))?;
    out(format!(
        "\nverify (each SN rescans its replica): {}",
        if v.ok { "every replica's digest equals the source's" } else { "MISMATCH" }
    ));
    ok &= v.ok;
    out("\nNFSv3 read-back of etc/motd from each agent's embedded NFSv3 server (nfs-cat, a real NFSv3 client):".into());
    let mut read_back = Vec::new();
    for (i, port) in nfs3_ports.iter().enumerate() {
        let root = dir.join(format!("sn{}/install", i + 1));
        let line = nfs3_read_back(&root, *port, "etc/motd");
        out(format!("  sn{}: {line}", i + 1));
        ok &= !line.starts_with("FAILED");
        read_back.push(line);
    }
    summary.insert("nfs3_read_back".into(), read_back.into());
    for i in 1..=a.sns {
        let text = std::fs::read_to_string(dir.join(format!("sn{i}/hanfs.exports"))).unwrap_or_default();
        out(format!("\nexports written on sn{i}:"));
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            out(format!("  {l}"));
        }
    }
    out(format!("\ndemo finished in {:.1} s", t0.elapsed().as_secs_f64()));
    if remove.is_none() {
        out(format!(
            "the agents stop now; the tree stays in {0}: restart them with `hanfs --config {0}/snN/agent.toml agent`, then `hanfs --config {1} status`",
            dir.display(),
            cfg_path.display()
        ));
    }
    summary.insert("ok".into(), ok.into());
    summary.insert("seconds".into(), t0.elapsed().as_secs_f64().into());
    drop(guard);
    Ok((ok, summary))
}

/// Reads `rel` through libnfs' `nfs-cat` (a real NFSv3 client) from the agent's NFSv3 server, whose
/// export is named after the replica root. The server takes privileged client ports only, as kernel
/// nfsd's `secure`, so this needs root; the line says why when it cannot run.
fn nfs3_read_back(root: &Path, port: u16, rel: &str) -> String {
    if !is_root() {
        return "skipped: nfs-cat needs root for a privileged source port".into();
    }
    let url = format!("nfs://127.0.0.1{}/{IMAGE}/{rel}?nfsport={port}&mountport={port}&version=3", root.display());
    match Command::new("nfs-cat").arg(&url).output() {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            format!("{:?} ({} bytes)", text.lines().next().unwrap_or(""), o.stdout.len())
        }
        Ok(o) => format!("FAILED: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("skipped: nfs-cat not available ({e}); `make deps` installs libnfs-utils"),
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `Command::pre_exec` is `unsafe` (the closure runs between fork and exec); this module is the one
/// place the demo uses it, and the closure makes a single async-signal-safe system call.
#[allow(unsafe_code)]
mod child {
    use std::os::unix::process::CommandExt;

    /// The agents the demo starts get SIGTERM when the demo dies, so none outlives it.
    pub fn die_with_parent(cmd: &mut std::process::Command) {
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
                Ok(())
            });
        }
    }
}
