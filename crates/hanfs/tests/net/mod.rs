//! Shared rig for the network tests: real `hanfs agent` processes on loopback ports, each with its
//! own root, state dir and config; a cluster config naming them; a sample image with every entry kind;
//! an independent walk to compare trees. Agents are killed when the rig drops.
#![allow(dead_code)]

pub mod proxy;

use model::config::{sp, Clients, ClusterSection, ConfigFile, ImageSection, SnSection};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE_PATH: &str = "netboot/test/x86_64/compute/rootimg";
/// What `hanfs agent` prints once its embedded NFSv3 server is bound, before the address.
const NFS3_LINE: &str = "hanfs agent: serving NFSv3 on ";

pub fn hanfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hanfs"))
}

pub struct AgentProc {
    pub name: String,
    pub port: u16,
    /// The embedded NFSv3 server's port, as the last start printed it (`nfs3` in its config).
    pub nfs3_port: Option<u16>,
    pub conf: PathBuf,
    pub log: PathBuf,
    pub root: PathBuf,
    pub child: Option<Child>,
}

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub agents: Vec<AgentProc>,
    pub cluster: PathBuf,
    pub tls: bool,
}

fn run_ok(args: &[&str]) {
    let o = Command::new(hanfs_bin()).args(args).output().unwrap();
    assert!(o.status.success(), "hanfs {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

impl Rig {
    pub fn new(n: usize, tls: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        std::fs::create_dir_all(d.join("src").join(IMAGE_PATH)).unwrap();
        let ca = d.join("ca");
        if tls {
            run_ok(&["ca", "init", ca.to_str().unwrap()]);
            run_ok(&["ca", "issue", ca.to_str().unwrap(), "--name", "mn"]);
        }
        let s = |p: PathBuf| p.to_str().unwrap().to_string();
        let mut section = ClusterSection::new(s(d.join("src")));
        section.state_dir = Some(sp(s(d.join("mn-state"))));
        section.backups = Some(sp("ring".into()));
        section.plaintext_loopback = !tls;
        let mut cluster = ConfigFile::new(section);
        if tls {
            cluster.tls = Some(model::TlsFiles {
                ca: s(ca.join("ca.pem")),
                cert: s(ca.join("mn.pem")),
                key: s(ca.join("mn.key")),
            });
        }
        let mut agents = Vec::new();
        for i in 1..=n {
            let name = format!("sn{i}");
            let sd = d.join(&name);
            std::fs::create_dir_all(&sd).unwrap();
            let root = sd.join("root");
            let mut conf = format!(
                "listen = \"127.0.0.1:0\"\nroot = \"{}\"\nstate_dir = \"{}\"\nexports_file = \"{}\"\nreload = [\"true\"]\n",
                root.display(),
                sd.join("state").display(),
                sd.join("exports").display()
            );
            if tls {
                run_ok(&["ca", "issue", ca.to_str().unwrap(), "--name", &name, "--san", "127.0.0.1"]);
                conf += &format!(
                    "[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/{1}.pem\"\nkey = \"{0}/{1}.key\"\n",
                    ca.display(),
                    name
                );
            } else {
                conf = format!("plaintext_loopback = true\n{conf}");
            }
            let cpath = sd.join("agent.toml");
            std::fs::write(&cpath, conf).unwrap();
            agents.push(AgentProc {
                name,
                port: 0,
                nfs3_port: None,
                conf: cpath,
                log: sd.join("agent.log"),
                root,
                child: None,
            });
        }
        cluster.image.push(ImageSection::new("compute", IMAGE_PATH).clients(Clients::One("*".into())));
        let cpath = d.join("cluster.toml");
        let mut rig = Rig { dir, agents, cluster: cpath, tls };
        // Each agent binds port 0 and says which port it got; the cluster config names those.
        for i in 0..n {
            rig.start(i);
            let a = &rig.agents[i];
            cluster.sn.push(
                SnSection::new(a.name.clone(), "127.0.0.1")
                    .agent(format!("127.0.0.1:{}", a.port))
                    .root(s(a.root.clone())),
            );
        }
        std::fs::write(&rig.cluster, cluster.to_toml().unwrap()).unwrap();
        rig
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Points the cluster config's entry for agent `i` at `port` (a proxy in front of it).
    pub fn route_through(&self, i: usize, port: u16) {
        let text = std::fs::read_to_string(&self.cluster).unwrap();
        let from = format!("agent = \"127.0.0.1:{}\"", self.agents[i].port);
        assert!(text.contains(&from), "{text}");
        std::fs::write(&self.cluster, text.replace(&from, &format!("agent = \"127.0.0.1:{port}\""))).unwrap();
    }

    /// Edits the cluster config through model's schema.
    pub fn edit_config(&self, edit: impl FnOnce(&mut ConfigFile)) {
        let text = std::fs::read_to_string(&self.cluster).unwrap();
        let mut c = ConfigFile::parse("cluster.toml", &text).unwrap();
        edit(&mut c);
        std::fs::write(&self.cluster, c.to_toml().unwrap()).unwrap();
    }

    /// Adds `line` to the `[cluster]` table of the cluster config.
    pub fn cluster_option(&self, line: &str) {
        let text = std::fs::read_to_string(&self.cluster).unwrap();
        std::fs::write(&self.cluster, text.replacen("[cluster]\n", &format!("[cluster]\n{line}\n"), 1)).unwrap();
    }

    pub fn source(&self) -> PathBuf {
        self.path().join("src").join(IMAGE_PATH)
    }

    pub fn replica(&self, i: usize) -> PathBuf {
        self.agents[i].root.join(IMAGE_PATH)
    }

    pub fn start(&mut self, i: usize) {
        self.start_with(i, |conf| {
            let mut c = Command::new(hanfs_bin());
            c.args(["--config", conf.to_str().unwrap(), "agent"]);
            c
        });
    }

    /// Starts agent `i` with the command `cmd` makes from its config path, and waits until that
    /// process says which address it listens on (`hanfs agent: listening on ADDR`; with `nfs3`
    /// configured, `hanfs agent: serving NFSv3 on ADDR` before it gives `nfs3_port`). The first start
    /// binds port 0; the port the kernel gave is then written into the agent's config (so a restart
    /// keeps it) and into the cluster config. A restart whose port another process took meanwhile
    /// binds port 0 again, rather than the test talking to someone else's listener.
    pub fn start_with(&mut self, i: usize, cmd: impl Fn(&Path) -> Command) {
        for _attempt in 0..3 {
            let before = self.log(i).matches("hanfs agent: listening on").count();
            let nfs3_before = self.log(i).matches(NFS3_LINE).count();
            let a = &mut self.agents[i];
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&a.log).unwrap();
            let mut child = cmd(&a.conf)
                .env("HANFS_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let t = Instant::now();
            let bound = loop {
                let log = self.log(i);
                if log.matches("hanfs agent: listening on").count() > before {
                    let line = log.lines().rev().find(|l| l.contains("hanfs agent: listening on")).unwrap();
                    let addr: std::net::SocketAddr = line.rsplit(' ').next().unwrap().trim().parse().unwrap();
                    break Some(addr.port());
                }
                if child.try_wait().unwrap().is_some() {
                    break None;
                }
                assert!(t.elapsed() < Duration::from_secs(20), "agent {i} did not start: {}", self.log(i));
                std::thread::sleep(Duration::from_millis(20));
            };
            let old = self.agents[i].port;
            let Some(port) = bound else {
                if old == 0 || !self.log(i).contains("binding") {
                    panic!("agent {i} exited: {}", self.log(i));
                }
                // Its port was taken while it was down: bind port 0 again.
                self.set_port(i, 0);
                continue;
            };
            self.agents[i].child = Some(child);
            let log = self.log(i);
            self.agents[i].nfs3_port = (log.matches(NFS3_LINE).count() > nfs3_before)
                .then(|| log.lines().rev().find_map(|l| l.split(NFS3_LINE).nth(1)))
                .flatten()
                .map(|a| a.trim().parse::<std::net::SocketAddr>().unwrap().port());
            if port != old {
                self.set_port(i, port);
            }
            return;
        }
        panic!("agent {i} could not get a port: {}", self.log(i));
    }

    /// Writes agent `i`'s listen port into its config and, for a real port, into the cluster
    /// config (when that exists and named the old one).
    fn set_port(&mut self, i: usize, port: u16) {
        let conf = std::fs::read_to_string(&self.agents[i].conf).unwrap();
        let conf: String =
            conf.lines()
                .map(|l| {
                    if l.starts_with("listen = ") {
                        format!("listen = \"127.0.0.1:{port}\"\n")
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
        std::fs::write(&self.agents[i].conf, conf).unwrap();
        if port == 0 {
            return;
        }
        let old = self.agents[i].port;
        if let Ok(text) = std::fs::read_to_string(&self.cluster) {
            let text = text.replace(&format!("agent = \"127.0.0.1:{old}\""), &format!("agent = \"127.0.0.1:{port}\""));
            std::fs::write(&self.cluster, text).unwrap();
        }
        self.agents[i].port = port;
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.agents[i].log).unwrap_or_default()
    }

    pub fn hanfs(&self, args: &[&str]) -> Output {
        Command::new(hanfs_bin()).arg("--config").arg(&self.cluster).args(args).output().unwrap()
    }

    pub fn hanfs_json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.hanfs(&a);
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!("{args:?}: {e}: {} / {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        });
        (o.status.code().unwrap_or(-1), v)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for i in 0..self.agents.len() {
            self.kill(i);
        }
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A deterministic pseudo-random byte stream (xorshift), so trees are reproducible.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tree with every entry kind: regular files of many sizes, directories, symlinks, hard links,
/// a fifo, a device node (when root), xattrs, a sparse file, setuid and odd modes, numeric owners.
pub fn fill(root: &Path, files: usize) {
    use std::os::unix::fs::PermissionsExt;
    for d in ["etc", "usr/bin", "usr/lib/x", "var/empty", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for i in 0..files {
        let size = [0usize, 1, 100, 3000, 40_000, 300_000][i % 6] + i;
        std::fs::write(root.join(format!("usr/lib/x/f{i:04}")), bytes(i as u64, size)).unwrap();
    }
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::os::unix::fs::symlink("../etc/hosts", root.join("usr/bin/hosts-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("usr/bin/dangling")).unwrap();
    std::fs::hard_link(root.join("usr/lib/x/f0003"), root.join("usr/bin/hard-a")).unwrap();
    std::fs::hard_link(root.join("usr/lib/x/f0003"), root.join("etc/hard-b")).unwrap();
    std::fs::write(root.join("usr/bin/suid"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(root.join("usr/bin/suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(root.join("var/empty"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    {
        use rustix::fs::{chownat, makedev, mknodat, AtFlags, FileType, Gid, Mode, Uid, CWD};
        mknodat(CWD, root.join("dev/initctl"), FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        if is_root() {
            mknodat(CWD, root.join("dev/null"), FileType::CharacterDevice, Mode::from_raw_mode(0o666), makedev(1, 3))
                .unwrap();
            let (u, g) = (Some(Uid::from_raw(1234)), Some(Gid::from_raw(5678)));
            chownat(CWD, root.join("etc/hosts"), u, g, AtFlags::SYMLINK_NOFOLLOW).unwrap();
        }
    }
    xattr::set(root.join("etc/hosts"), "user.hanfs.test", b"value").unwrap();
    xattr::set(root.join("usr/lib/x"), "user.dir", b"d").unwrap();
    let mut f = std::fs::File::create(root.join("var/sparse.img")).unwrap();
    f.set_len(8 << 20).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(4 << 20)).unwrap();
    f.write_all(b"data in the middle of holes").unwrap();
}

#[derive(Debug, PartialEq, Eq)]
pub struct Rec {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    content: u64,
    target: Option<PathBuf>,
    rdev: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// An independent walk (std only, not the tree engine): every entry's kind, mode, owner, mtime,
/// content, link target, device number and user xattrs, plus the hard-link groups.
pub fn walk(root: &Path) -> (BTreeMap<String, Rec>, BTreeSet<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<String>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let content = if ft.is_file() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&p).unwrap().hash(&mut h);
            h.finish()
        } else {
            0
        };
        let mut xattrs: Vec<(String, Vec<u8>)> = xattr::list(&p)
            .map(|l| {
                l.filter_map(|n| n.into_string().ok())
                    .filter(|n| n.starts_with("user."))
                    .map(|n| {
                        let v = xattr::get(&p, &n).unwrap().unwrap_or_default();
                        (n, v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        xattrs.sort();
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
                size: if ft.is_dir() { 0 } else { md.len() },
                content,
                target: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                rdev: md.rdev(),
                xattrs,
            },
        );
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                if rel.as_os_str().is_empty() && e.file_name() == ".hanfs" {
                    continue; // the engine's control directory, not part of the image
                }
                stack.push(rel.join(e.file_name()));
            }
        }
    }
    let groups = inodes
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    (out, groups)
}

pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, ga) = walk(a);
    let (tb, gb) = walk(b);
    for (k, v) in &ta {
        assert_eq!(Some(v), tb.get(k), "{k} differs between {} and {}", a.display(), b.display());
    }
    assert_eq!(
        ta.len(),
        tb.len(),
        "entry counts differ: {:?}",
        tb.keys().filter(|k| !ta.contains_key(*k)).collect::<Vec<_>>()
    );
    assert_eq!(ga, gb, "hard-link groups differ");
}

/// One HTTP GET of the metrics endpoint on `port` (None: nothing answered yet).
pub fn scrape(port: u16) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A `hanfs daemon` process of a test; killed (and reaped) when dropped.
pub struct DaemonProc(pub Child);

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Rig {
    /// [`Rig::daemon`] with `--metrics 127.0.0.1:0`; waits for `hanfs daemon: metrics on ADDR`
    /// and returns the port the daemon got.
    pub fn daemon_with_metrics(&self, args: &[&str]) -> (DaemonProc, u16) {
        let mut a = args.to_vec();
        a.extend(["--metrics", "127.0.0.1:0"]);
        let mut d = self.daemon(&a);
        let t = Instant::now();
        loop {
            let log = std::fs::read_to_string(self.path().join("daemon.log")).unwrap_or_default();
            if let Some(addr) = log.lines().find_map(|l| l.strip_prefix("hanfs daemon: metrics on ")) {
                let port = addr.trim().parse::<std::net::SocketAddr>().unwrap().port();
                return (d, port);
            }
            assert!(d.0.try_wait().unwrap().is_none(), "the daemon exited:\n{log}");
            assert!(t.elapsed() < Duration::from_secs(20), "the daemon never served metrics:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `hanfs daemon ARGS` on the rig's cluster config, logging (HANFS_LOG=info) to
    /// `daemon.log` in the rig's directory.
    pub fn daemon(&self, args: &[&str]) -> DaemonProc {
        let log = std::fs::File::create(self.path().join("daemon.log")).unwrap();
        DaemonProc(
            Command::new(hanfs_bin())
                .arg("--config")
                .arg(&self.cluster)
                .arg("daemon")
                .args(args)
                .env("HANFS_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}
