//! The real nfs-utils `exportfs` reads every rendered Linux file: no mocks.
//!
//! Each file is installed as `/etc/exports.d/hanfs.exports` of a scratch root (its export
//! directories created there, `/usr`, `/lib`, ... bind-mounted from the host) inside a private mount
//! namespace (`unshare -m`), so the host's `/etc/exports` and `/var/lib/nfs` are never touched and no
//! kernel nfsd is needed. `exportfs -ra` must exit 0 and `exportfs -s` must list every entry with its
//! fsid and its refer=/replicas= value intact. Installs nfs-kernel-server with apt-get when exportfs
//! is missing; skips with a printed reason when it cannot, or when unshare is not permitted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use exports::{escape_path, Exports};
use model::{Cluster, Dialect};
use std::path::{Path, PathBuf};
use std::process::Command;

fn find_exportfs() -> Option<PathBuf> {
    ["/usr/sbin/exportfs", "/sbin/exportfs"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// exportfs, installed with apt-get if missing; or why not.
fn exportfs() -> Result<PathBuf, String> {
    if let Some(p) = find_exportfs() {
        return Ok(p);
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get: {e}"))
    };
    eprintln!("exportfs missing: installing nfs-kernel-server with apt-get");
    apt(&["update", "-q"])?;
    let st = apt(&["install", "-y", "-q", "--no-install-recommends", "nfs-kernel-server"])?;
    find_exportfs().ok_or_else(|| format!("nfs-kernel-server did not install (apt-get: {st})"))
}

fn unshare_ok() -> Result<(), String> {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("unshare -m is not permitted here: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The tools, or `None` after printing why the test is skipped.
fn tools() -> Option<PathBuf> {
    match unshare_ok().and_then(|_| exportfs()) {
        Ok(p) => Some(p),
        Err(why) => {
            eprintln!("SKIP exportfs check: {why}");
            None
        }
    }
}

struct Outcome {
    rc: i32,
    listing: String,
    etab: String,
}

/// Run `exportfs -ra` and `exportfs -s` on `text` as /etc/exports.d/hanfs.exports of a scratch root.
fn run_exportfs(exportfs: &Path, text: &str, dirs: &[String]) -> Outcome {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for d in ["etc/exports.d", "var/lib/nfs", "proc", "dev", "tmp", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/exports"), "").unwrap();
    std::fs::write(root.join("etc/exports.d/hanfs.exports"), text).unwrap();
    for f in ["passwd", "group", "hosts", "nsswitch.conf", "netconfig", "host.conf", "nfs.conf", "netgroup"] {
        let src = Path::new("/etc").join(f);
        if src.is_file() {
            std::fs::copy(&src, root.join("etc").join(f)).unwrap();
        }
    }
    let mut binds = Vec::new();
    for d in ["usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
        let host = Path::new("/").join(d);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                std::os::unix::fs::symlink(std::fs::read_link(&host).unwrap(), root.join(d)).unwrap();
            }
            Ok(m) if m.is_dir() => {
                std::fs::create_dir_all(root.join(d)).unwrap();
                binds.push(d);
            }
            _ => {}
        }
    }
    binds.extend(["proc", "dev"]);
    for d in dirs {
        std::fs::create_dir_all(root.join(d.trim_start_matches('/'))).unwrap();
    }
    let mounts: String = binds.iter().map(|d| format!("mount --bind /{d} \"$R/{d}\" && ")).collect();
    let script = format!(
        "{mounts} chroot \"$R\" {x} -ra; echo rc=$?; echo '--- listing'; chroot \"$R\" {x} -s; \
         echo '--- etab'; cat \"$R/var/lib/nfs/etab\"",
        x = exportfs.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("R", &root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let rc = stdout
        .lines()
        .find_map(|l| l.strip_prefix("rc="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rc from exportfs: stdout {stdout}\nstderr {stderr}"));
    let listing = stdout.split("--- listing\n").nth(1).unwrap_or("").split("--- etab\n").next().unwrap().to_string();
    let etab = stdout.split("--- etab\n").nth(1).unwrap_or("").to_string();
    if rc != 0 {
        eprintln!("exportfs stderr: {stderr}");
    }
    Outcome { rc, listing, etab }
}

/// `exportfs -s` and etab must hold every entry of `ex`, with fsid and fs locations intact; etab
/// tokens must not have grown more than ETAB_GROWTH.
fn check(what: &str, exportfs: &Path, ex: &Exports) {
    let text = exports::render(ex);
    let dirs: Vec<String> = ex.entries.iter().map(|e| e.path.clone()).collect();
    let o = run_exportfs(exportfs, &text, &dirs);
    assert_eq!(o.rc, 0, "{what}: exportfs -ra failed on\n{text}");
    let listed: Vec<&str> = o.listing.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(listed.len(), ex.entries.len(), "{what}: exportfs -s lists\n{}\nfor\n{text}", o.listing);
    for e in &ex.entries {
        let client = e.client.as_deref().unwrap();
        let head = format!("{}  {client}(", escape_path(&e.path));
        let line = listed
            .iter()
            .find(|l| l.starts_with(&head))
            .unwrap_or_else(|| panic!("{what}: `{head}` missing from exportfs -s:\n{}", o.listing));
        let fsid = e.options.iter().find(|o| o.starts_with("fsid=")).unwrap();
        assert!(
            line.contains(&format!(",{fsid},")) || line.contains(&format!("({fsid},")),
            "{what}: {fsid} lost: {line}"
        );
        if let Some(l) = &e.locations {
            // exportfs -s shows the value unescaped.
            let value = format!("{}={}", l.kind.keyword(), e.fsloc_value(false).unwrap());
            assert!(
                line.contains(&format!("{value},")) || line.contains(&format!("{value})")),
                "{what}: {value} not intact in {line}"
            );
        } else {
            assert!(!line.contains("refer=") && !line.contains("replicas="), "{what}: {line}");
        }
        // etab: the expanded token mountd reads must stay within what the limit check assumed.
        let etab_head = format!("{}\t{client}(", escape_path(&e.path));
        let etab_line = o
            .etab
            .lines()
            .find(|l| l.starts_with(&etab_head))
            .unwrap_or_else(|| panic!("{what}: {etab_head} not in etab"));
        let etab_token = etab_line.split_once('\t').unwrap().1;
        let ours = exports::linux::token(e);
        assert!(
            etab_token.len() <= ours.len() + exports::limits::ETAB_GROWTH,
            "{what}: etab grew {} by {} bytes, more than ETAB_GROWTH",
            e.path,
            etab_token.len() - ours.len()
        );
        if let Some(v) = e.fsloc_value(true) {
            assert!(etab_token.contains(&v), "{what}: etab lost {v}: {etab_token}");
        }
    }
}

fn example_clusters() -> Vec<(String, Cluster)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../exports");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let cfg = entry.unwrap().path().join("cluster.toml");
        if cfg.is_file() {
            let text = std::fs::read_to_string(&cfg).unwrap();
            out.push((cfg.display().to_string(), Cluster::from_toml("c", &text).unwrap()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn real_exportfs_accepts_every_linux_example() {
    let Some(x) = tools() else { return };
    let mut n = 0;
    for (name, cluster) in example_clusters() {
        for sn in cluster.sns().iter().filter(|s| s.dialect == Dialect::Linux) {
            check(&format!("{name} {}", sn.name), &x, &exports::build(&cluster, &sn.name).unwrap());
            n += 1;
        }
    }
    assert!(n >= 7, "only {n} Linux SNs in the examples");
}

const EDGE: &str = r#"
[cluster]
source_root = "/install"
plaintext_loopback = true
[[sn]]
name = "sn1"
address = "127.0.0.1"
backups = ["sn2"]
[[sn]]
name = "sn2"
address = "::1"
agent = "[::1]:7468"
backups = ["sn1"]
[[image]]
name = "spaced"
path = "netboot/my image/x86_64/compute test/rootimg"
clients = ["*", "10.1.0.0/16"]
[[image]]
name = "long"
path = "netboot/LONG"
[[statelite]]
name = "nodedata"
path = "/node data"
clients = "10.1.0.0/16"
[[node]]
name = "cn001"
sns = ["sn1"]
served_by = "sn2"
[[node]]
name = "cn002"
sns = ["sn1"]
"#;

#[test]
fn real_exportfs_keeps_escaped_paths_and_values_near_the_limits() {
    let Some(x) = tools() else { return };
    // The longest image path that still fits: the fsloc value just under FSLOC_MAX.
    let mut longest = None;
    for len in (10..240).rev() {
        let text = EDGE.replace("netboot/LONG", &format!("netboot/{}", "d".repeat(len)));
        let c = Cluster::from_toml("edge", &text).unwrap();
        if let Ok(ex) = exports::build(&c, "sn1") {
            longest = Some(ex);
            break;
        }
    }
    let ex = longest.expect("some length fits");
    let v = ex.entries.iter().filter_map(|e| e.fsloc_value(true)).map(|v| v.len()).max().unwrap();
    assert!(v >= exports::limits::FSLOC_MAX - 2, "longest value {v}");
    check("edge sn1", &x, &ex);
    let c = Cluster::from_toml("edge", EDGE).unwrap();
    check("edge sn2", &x, &exports::build(&c, "sn2").unwrap());
    assert!(exports::render(&ex).contains("/install/netboot/my\\040image/x86_64/compute\\040test/rootimg *("));
}

#[test]
fn real_exportfs_rejects_what_it_should() {
    // The harness itself must see failures, or its passes mean nothing.
    let Some(x) = tools() else { return };
    let o = run_exportfs(&x, "/srv/a *(ro,no_such_option)\n", &["/srv/a".into()]);
    assert_ne!(o.rc, 0, "unknown option accepted");
    let o = run_exportfs(&x, "/srv/missing *(ro)\n", &[]);
    assert_ne!(o.rc, 0, "missing directory accepted");
}
