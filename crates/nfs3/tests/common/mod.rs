//! Shared by the integration tests: a sample tree, a server on a random port, an in-process
//! NFSv3 client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod area;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nfs3_client::nfs3_types::nfs3::{
    diropargs3, fattr3, filename3, nfs_fh3, nfsstat3, GETATTR3args, LOOKUP3args, Nfs3Option, Nfs3Result, READ3args,
    READDIRPLUS3args, READLINK3args,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};
use tokio::net::TcpStream;

pub type Conn = Nfs3Connection<TokioIo<TcpStream>>;

pub const BIG: u64 = 24 << 20;

/// A tree with the kinds of entries an image holds. Returns `(tmp, root, outside)`; `outside`
/// is a sibling of the root holding `secret.txt`.
pub fn sample_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret.txt"), b"TOP SECRET outside the export\n").unwrap();
    fs::create_dir_all(root.join("sub/nested")).unwrap();
    fs::create_dir_all(root.join("sub/.hanfs")).unwrap();
    fs::create_dir_all(root.join(".hanfs/stage/7")).unwrap();
    fs::write(root.join(".hanfs/stage/7/staged"), b"not for clients\n").unwrap();
    fs::write(root.join("sub/.hanfs/private"), b"not for clients either\n").unwrap();
    fs::write(root.join("hello.txt"), b"hello world\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("sub/nested/deep.txt"), b"deep\n".repeat(1000)).unwrap();
    fs::write(root.join("hard1"), b"linked twice\n").unwrap();
    fs::hard_link(root.join("hard1"), root.join("sub/hard2")).unwrap();
    symlink("hello.txt", root.join("link_rel")).unwrap();
    symlink("/etc/passwd", root.join("link_abs")).unwrap();
    symlink("sub", root.join("link_dir")).unwrap();
    symlink("../outside", root.join("escape")).unwrap();
    symlink("../outside/secret.txt", root.join("escape_file")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    fs::create_dir_all(root.join("many")).unwrap();
    for i in 0..300 {
        fs::write(root.join(format!("many/f{i:04}")), format!("{i}\n")).unwrap();
    }
    // A sparse file with data at the start, the middle and the end.
    let mut f = fs::File::create(root.join("big.sparse")).unwrap();
    let block: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    for off in [0, BIG / 2 + 12345, BIG - block.len() as u64] {
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&block).unwrap();
    }
    f.set_len(BIG).unwrap();
    drop(f);
    // Times in the past, with nanoseconds: rsync leaves a directory's time alone when it is in
    // the current second, which would make the copies differ for a reason no replica has.
    let st = std::process::Command::new("find")
        .arg(&root)
        .args(["-exec", "touch", "-h", "-d", "2024-05-01 12:34:56.123456789", "{}", "+"])
        .status()
        .unwrap();
    assert!(st.success());
    (tmp, root, outside)
}

/// A server for tests of other things than the port check: unprivileged client ports accepted.
pub async fn start(root: &Path, export: &str, walk: bool) -> nfs3::Nfs3Server {
    start_with(root, export, walk, true).await
}

pub async fn start_with(root: &Path, export: &str, walk: bool, insecure: bool) -> nfs3::Nfs3Server {
    nfs3::serve(
        root,
        "127.0.0.1:0".parse().unwrap(),
        nfs3::Options { export_name: Some(export.into()), walk_on_start: walk, insecure, ..nfs3::Options::default() },
    )
    .await
    .unwrap()
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a test body with a deadline: nfs3_client 0.9 spins on a closed connection instead of
/// failing, so a refused connection would otherwise hang the test instead of failing it.
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    runtime()
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(30), f).await.expect("test timed out") })
}

pub async fn connect(port: u16, export: &str) -> Conn {
    Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", export).portmapper_port(port).mount().await.unwrap()
}

pub fn name(n: &[u8]) -> filename3<'static> {
    filename3(Opaque::owned(n.to_vec()))
}

pub async fn lookup(c: &mut Conn, dir: &nfs_fh3, n: &[u8]) -> Result<(nfs_fh3, fattr3), nfsstat3> {
    let r = c.lookup(&LOOKUP3args { what: diropargs3 { dir: dir.clone(), name: name(n) } }).await.unwrap();
    match r {
        Nfs3Result::Ok(ok) => match ok.obj_attributes {
            Nfs3Option::Some(a) => Ok((ok.object, a)),
            Nfs3Option::None => panic!("lookup without attributes"),
        },
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

pub async fn lookup_path(c: &mut Conn, path: &str) -> Result<(nfs_fh3, fattr3), nfsstat3> {
    let mut fh = c.root_nfs_fh3();
    let mut attr = getattr(c, &fh).await?;
    for comp in path.split('/').filter(|s| !s.is_empty()) {
        (fh, attr) = lookup(c, &fh, comp.as_bytes()).await?;
    }
    Ok((fh, attr))
}

pub async fn getattr(c: &mut Conn, fh: &nfs_fh3) -> Result<fattr3, nfsstat3> {
    match c.getattr(&GETATTR3args { object: fh.clone() }).await.unwrap() {
        Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

pub async fn read_all(c: &mut Conn, fh: &nfs_fh3) -> Result<Vec<u8>, nfsstat3> {
    let mut out = Vec::new();
    loop {
        let r = c.read(&READ3args { file: fh.clone(), offset: out.len() as u64, count: 1 << 20 }).await.unwrap();
        match r {
            Nfs3Result::Ok(ok) => {
                out.extend_from_slice(&ok.data);
                if ok.eof {
                    return Ok(out);
                }
                assert!(!ok.data.is_empty(), "short read without eof");
            }
            Nfs3Result::Err((e, _)) => return Err(e),
        }
    }
}

pub async fn readlink(c: &mut Conn, fh: &nfs_fh3) -> Result<Vec<u8>, nfsstat3> {
    match c.readlink(&READLINK3args { symlink: fh.clone() }).await.unwrap() {
        Nfs3Result::Ok(ok) => Ok(ok.data.0.to_vec()),
        Nfs3Result::Err((e, _)) => Err(e),
    }
}

/// All entries of a directory via READDIRPLUS in small pages: (name, handle, attributes).
pub async fn readdir(c: &mut Conn, dir: &nfs_fh3) -> Result<Vec<(Vec<u8>, nfs_fh3, fattr3)>, nfsstat3> {
    let mut out = Vec::new();
    let mut cookie = 0;
    let mut verf = Default::default();
    loop {
        let r = c
            .readdirplus(&READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                dircount: 2048,
                maxcount: 8192,
            })
            .await
            .unwrap();
        let ok = match r {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((e, _)) => return Err(e),
        };
        verf = ok.cookieverf;
        let entries = ok.reply.entries.into_inner();
        for e in &entries {
            let (Nfs3Option::Some(fh), Nfs3Option::Some(a)) = (&e.name_handle, &e.name_attributes) else {
                panic!("entry without handle or attributes");
            };
            out.push((e.name.0.to_vec(), fh.clone(), a.clone()));
            cookie = e.cookie;
        }
        if ok.reply.eof {
            return Ok(out);
        }
        assert!(!entries.is_empty());
    }
}

/// What must be equal on every replica: everything but atime and allocated size.
pub fn replica_view(a: &fattr3) -> String {
    let mut v = a.clone();
    v.atime = Default::default();
    v.used = 0;
    format!("{v:?}")
}

/// Every object reachable from the root: path → (handle bytes, replica view of attributes).
pub async fn snapshot(c: &mut Conn) -> BTreeMap<Vec<u8>, (Vec<u8>, String)> {
    let mut out = BTreeMap::new();
    let root = c.root_nfs_fh3();
    let ra = getattr(c, &root).await.unwrap();
    out.insert(Vec::new(), (root.data.to_vec(), replica_view(&ra)));
    let mut stack = vec![(Vec::new(), root)];
    while let Some((path, dir)) = stack.pop() {
        for (n, fh, a) in readdir(c, &dir).await.unwrap() {
            let p = if path.is_empty() { n.clone() } else { [path.as_slice(), b"/", &n].concat() };
            // LOOKUP must agree with READDIRPLUS.
            let (lfh, la) = lookup(c, &dir, &n).await.unwrap();
            assert_eq!(lfh.data.to_vec(), fh.data.to_vec(), "{}", String::from_utf8_lossy(&p));
            assert_eq!(replica_view(&la), replica_view(&a));
            out.insert(p.clone(), (fh.data.to_vec(), replica_view(&a)));
            if matches!(a.type_, nfs3_client::nfs3_types::nfs3::ftype3::NF3DIR) {
                stack.push((p, fh));
            }
        }
    }
    out
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A connection whose calls carry AUTH_UNIX `uid`, `gid`, `gids`.
pub async fn connect_as(
    port: u16,
    export: &str,
    uid: u32,
    gid: u32,
    gids: &[u32],
) -> Result<Conn, nfs3_client::ConnectError> {
    let a = nfs3_client::nfs3_types::rpc::auth_unix {
        stamp: 1,
        machinename: Opaque::borrowed(b"testnode"),
        uid,
        gid,
        gids: gids.to_vec(),
    };
    Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", export)
        .portmapper_port(port)
        .credential(nfs3_client::nfs3_types::rpc::opaque_auth::auth_unix(&a))
        .mount()
        .await
}

/// An NFS NULL call, record-marked.
pub fn null_call(xid: u32) -> Vec<u8> {
    let words = [xid, 0, 2, 100_003, 3, 0, 0, 0, 0, 0];
    let mut v = (0x8000_0000u32 | (words.len() as u32 * 4)).to_be_bytes().to_vec();
    for w in words {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

/// A cluster CA (transport::ca) with certificates for sn1, sn2 and sn3, for the replication
/// tests' mutual TLS.
pub struct Pki(pub tempfile::TempDir);

impl Pki {
    pub fn new() -> Pki {
        let t = tempfile::tempdir().unwrap();
        transport::ca::init(t.path()).unwrap();
        for sn in ["sn1", "sn2", "sn3"] {
            transport::ca::issue(t.path(), sn, &[]).unwrap();
        }
        Pki(t)
    }

    pub fn id(&self, sn: &str) -> transport::Identity {
        let d = self.0.path();
        transport::Identity::load(&d.join("ca.pem"), &d.join(format!("{sn}.pem")), &d.join(format!("{sn}.key")))
            .unwrap()
    }
}
