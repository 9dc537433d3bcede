//! `hanfs migrate` and `migrate --back` of a read-write statelite area on the embedded server
//! (issue 13 point 5): two in-process agents, a symmetric pair over the cluster's mutual TLS,
//! each with its own end of a veth pair for the service address in a private network namespace;
//! the controller's `migrate` sees the pair in both agents' status and moves the address
//! (released on sn1: demoted and flushed; claimed on sn2: promoted), then `--back` moves it home
//! after sn2 streamed everything to sn1. A client's writes through each side, its handles
//! answered by the other, nothing lost, both trees equal (content and file ids).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::{
    createhow3, diropargs3, filename3, nfs_fh3, sattr3, stable_how, CREATE3args, Nfs3Option, Nfs3Result, READ3args,
    WRITE3args,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};

type Conn = Nfs3Connection<TokioIo<tokio::net::TcpStream>>;

const AREA: &str = "/nodedata";
const ADDRESS: &str = "10.77.0.101/24";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `f` on a runtime built on a thread inside a fresh network namespace (its workers are
/// spawned from that thread, so they, and the `ip` commands they run, are in it too).
fn in_private_netns(f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static) {
    let t = std::thread::spawn(move || {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            testkit::skip(format!("cannot create a network namespace ({e}): needs root (CAP_SYS_ADMIN)"));
            return;
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(f());
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false)
}

struct Sn {
    name: &'static str,
    dir: PathBuf,
    nfs_port: u16,
    rw: std::net::SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl Sn {
    fn area(&self) -> PathBuf {
        self.dir.join("data/nodedata")
    }
}

/// One agent: its control port (TLS, the `mn` certificate only), the read-only NFSv3 server the
/// controller's health probe asks, and the read-write area, a symmetric pair with `other`.
async fn agent(d: &Path, me: &'static str, other: &str, iface: &str, port: u16, peer: u16) -> (Sn, u16) {
    let dir = d.join(me);
    let nfs_port = free_port();
    let pki = d.join("pki");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nroot = \"{0}/root\"\nstate_dir = \"{0}/state\"\nexports_file = \"{0}/exports\"\n\
         reload = [\"true\"]\nnfs3 = \"127.0.0.1:{nfs_port}\"\nstatelite_roots = [\"{AREA}\"]\nstatelite_prefix = \"{0}/data\"\n\
         takeover_interface = \"{iface}\"\n\
         [tls]\nca = \"{1}/ca.pem\"\ncert = \"{1}/{me}.pem\"\nkey = \"{1}/{me}.key\"\n\
         [[statelite_rw]]\narea = \"{AREA}\"\nlisten = \"127.0.0.1:0\"\npeer = \"127.0.0.1:{peer}\"\npeer_name = \"{other}\"\n\
         peer_timeout_ms = 3000\nreplica_listen = \"127.0.0.1:{port}\"\nprimary = \"{other}\"\nservice_address = \"{ADDRESS}\"\n",
        dir.display(),
        pki.display()
    );
    let cfg = model::AgentConfig::from_toml("agent.toml", &text).unwrap();
    let bound = agent::Agent::new(cfg).unwrap().bind().await.unwrap();
    let rw = bound.statelite_rw_addr(AREA).unwrap();
    assert_eq!(bound.statelite_rw_role(AREA), Some(nfs3::rw::Role::Standby), "{me} does not hold the address");
    let control = bound.local_addr().port();
    let task = tokio::spawn(async move {
        let _ = bound.serve().await;
    });
    (Sn { name: me, dir, nfs_port, rw, _task: task }, control)
}

async fn client(port: u16) -> Conn {
    let root = nfs3_client::nfs3_types::rpc::auth_unix {
        stamp: 1,
        machinename: Opaque::borrowed(b"cn001"),
        uid: 0,
        gid: 0,
        gids: vec![],
    };
    Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", AREA)
        .credential(nfs3_client::nfs3_types::rpc::opaque_auth::auth_unix(&root))
        .mount_port(port)
        .nfs3_port(port)
        .connect_from_privileged_port(true)
        .mount()
        .await
        .unwrap()
}

fn name(n: &[u8]) -> filename3<'static> {
    filename3(Opaque::owned(n.to_vec()))
}

async fn create(c: &mut Conn, dir: &nfs_fh3, n: &[u8]) -> nfs_fh3 {
    let how = createhow3::UNCHECKED(sattr3::default());
    match c.create(&CREATE3args { where_: diropargs3 { dir: dir.clone(), name: name(n) }, how }).await.unwrap() {
        Nfs3Result::Ok(ok) => match ok.obj {
            Nfs3Option::Some(h) => h,
            Nfs3Option::None => panic!("CREATE without a handle"),
        },
        Nfs3Result::Err((e, _)) => panic!("CREATE: {e:?}"),
    }
}

async fn write(c: &mut Conn, f: &nfs_fh3, offset: u64, data: &[u8]) {
    let args = WRITE3args {
        file: f.clone(),
        offset,
        count: data.len() as u32,
        stable: stable_how::FILE_SYNC,
        data: Opaque::owned(data.to_vec()),
    };
    match c.write(&args).await.unwrap() {
        Nfs3Result::Ok(ok) => assert_eq!(ok.count as usize, data.len()),
        Nfs3Result::Err((e, _)) => panic!("WRITE: {e:?}"),
    }
}

async fn read(c: &mut Conn, f: &nfs_fh3) -> Vec<u8> {
    match c.read(&READ3args { file: f.clone(), offset: 0, count: 1 << 16 }).await.unwrap() {
        Nfs3Result::Ok(ok) => ok.data.to_vec(),
        Nfs3Result::Err((e, _)) => panic!("READ: {e:?}"),
    }
}

/// Content and file id of everything beneath `root`.
fn walk(root: &Path) -> BTreeMap<PathBuf, String> {
    fn id(p: &Path) -> Option<Vec<u8>> {
        let mut b = [0u8; 16];
        [nfs3::rw::ID_XATTR, nfs3::rw::TRUSTED_ID_XATTR]
            .iter()
            .find_map(|x| matches!(rustix::fs::lgetxattr(p, *x, &mut b[..]), Ok(16)).then(|| b.to_vec()))
    }
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel.as_os_str() == ".hanfs" {
                continue;
            }
            if p.is_dir() {
                out.insert(rel, format!("dir {:?}", id(&p)));
                go(root, &p, out);
            } else {
                out.insert(
                    rel,
                    format!("file {:?} {:?}", id(&p), String::from_utf8_lossy(&std::fs::read(&p).unwrap())),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    out.insert(PathBuf::from("."), format!("root {:?}", id(root)));
    go(root, root, &mut out);
    out
}

fn log_step(s: &str) {
    eprintln!("step: {s}");
}

fn repointed(_: &[(String, String)], _: bool) -> controller::redirect::Repointed {
    controller::redirect::Repointed { ok: true, steps: vec!["xCAT repointed (test)".into()], xcat: None }
}

#[test]
fn migrate_moves_a_read_write_area_by_its_service_address_and_back_losing_nothing() {
    if !testkit::require_root("claiming a service address in a private network namespace") {
        return;
    }
    in_private_netns(|| {
        Box::pin(async {
            if !(ip(&["link", "set", "lo", "up"])
                && ip(&["link", "add", "hfm1", "type", "veth", "peer", "name", "hfm2"])
                && ip(&["link", "set", "hfm1", "up"])
                && ip(&["link", "set", "hfm2", "up"]))
            {
                testkit::skip("cannot make a veth pair (`ip link add ... type veth`): the kernel needs veth");
                return;
            }
            let tmp = tempfile::tempdir().unwrap();
            let d = tmp.path();
            let pki = d.join("pki");
            transport::ca::init(&pki).unwrap();
            for n in ["mn", "sn1", "sn2"] {
                transport::ca::issue(&pki, n, &["127.0.0.1".to_string()]).unwrap();
            }
            let (p1, p2) = (free_port(), free_port());
            let (sn1, c1) = agent(d, "sn1", "sn2", "hfm1", p1, p2).await;
            let (sn2, c2) = agent(d, "sn2", "sn1", "hfm2", p2, p1).await;
            std::fs::create_dir_all(d.join("src")).unwrap();
            let toml = format!(
                "[cluster]\nsource_root = \"{0}/src\"\nstate_dir = \"{0}/mn-state\"\nfence = [\"true\"]\n\
                 [tls]\nca = \"{1}/ca.pem\"\ncert = \"{1}/mn.pem\"\nkey = \"{1}/mn.key\"\n\
                 [[sn]]\nname = \"sn1\"\naddress = \"127.0.0.1\"\nagent = \"127.0.0.1:{c1}\"\nbackups = [\"sn2\"]\n\
                 service_address = \"{ADDRESS}\"\nnfs_port = {2}\nmount_port = {2}\n\
                 [[sn]]\nname = \"sn2\"\naddress = \"127.0.0.1\"\nagent = \"127.0.0.1:{c2}\"\nbackups = [\"sn1\"]\n\
                 nfs_port = {3}\nmount_port = {3}\n\
                 [[statelite]]\nname = \"nodedata\"\npath = \"{AREA}\"\nclients = \"*\"\n\
                 [[node]]\nname = \"cn001\"\nsns = [\"sn1\", \"sn2\"]\n[[node]]\nname = \"cn002\"\nsns = [\"sn1\", \"sn2\"]\n",
                d.display(),
                pki.display(),
                sn1.nfs_port,
                sn2.nfs_port
            );
            let cluster = model::Cluster::from_toml("hanfs.toml", &toml).unwrap();
            let ctl = Arc::new(controller::Controller::new(cluster).unwrap());
            let sn = |n: &str| ctl.cluster.sn(n).unwrap().clone();

            // sn1 takes its address (as at boot): it serves the area and reconciles sn2.
            controller::address::claim(&ctl, &sn("sn1"), ADDRESS).await.unwrap();
            let mut c = client(sn1.rw.port()).await;
            let top = c.root_nfs_fh3();
            let f = create(&mut c, &top, b"cn001.log").await;
            write(&mut c, &f, 0, b"on sn1\n").await;

            // The address carries every node sn1 serves: one alone is refused, naming the other.
            let mut h = controller::redirect::Hooks { step: &mut log_step, repoint: &mut repointed };
            let e = controller::redirect::migrate(&ctl, &["cn001".into()], "sn2", false, &mut h).await.unwrap_err();
            assert!(e.downcast_ref::<controller::BadInput>().is_some(), "{e:#}");
            assert!(e.to_string().contains("name cn002 too"), "{e:#}");
            let nodes = ["cn001".to_string(), "cn002".to_string()];
            // A dry run says what would happen and changes nothing.
            let rep = controller::redirect::migrate(&ctl, &nodes, "sn2", true, &mut h).await.unwrap();
            assert_eq!(rep.via, Some("service_address"), "{:?}", rep.steps);
            assert!(rep.steps.iter().any(|s| s.contains("would claim 10.77.0.101/24 on sn2")), "{:?}", rep.steps);
            let mut c = client(sn1.rw.port()).await;
            write(&mut c, &f, 7, b"still on sn1\n").await;

            let rep = controller::redirect::migrate(&ctl, &nodes, "sn2", false, &mut h).await.unwrap();
            assert!(rep.ok, "{:?} {:?}", rep.failed, rep.steps);
            assert_eq!((rep.via, rep.rw_areas.clone()), (Some("service_address"), vec![AREA.to_string()]));
            let row = rep.address.as_ref().unwrap();
            assert!(row.released && row.claimed, "{row:?}");
            assert_eq!((rep.moved.len(), rep.moved[0].to.as_str()), (2, "sn2"));
            // sn1 serves no client now; sn2 answers the handle sn1 gave, with every write.
            let mut c = client(sn2.rw.port()).await;
            assert_eq!(read(&mut c, &f).await, b"on sn1\nstill on sn1\n");
            write(&mut c, &f, 20, b"on sn2\n").await;
            assert_eq!(std::fs::read(sn1.area().join("cn001.log")).unwrap(), b"on sn1\nstill on sn1\non sn2\n");

            // And back: sn2 streams to sn1 (in standby), `--back` moves the address home.
            let t0 = Instant::now();
            loop {
                let all = ctl.statelite_rw_status().await;
                if all.iter().any(|(n, s)| n == "sn1" && s.iter().any(|a| a.role == "backup" && a.protected)) {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(20), "sn1 not in sync: {all:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let rep = controller::redirect::back(&ctl, "sn1", false, &mut h).await.unwrap();
            assert!(rep.ok, "{:?} {:?}", rep.failed, rep.steps);
            assert_eq!(rep.via, Some("service_address"), "{:?}", rep.steps);
            assert!(rep.address.as_ref().is_some_and(|a| a.claimed), "{:?}", rep.address);
            assert_eq!(rep.moved.len(), 2, "{:?}", rep.moved);
            let mut c = client(sn1.rw.port()).await;
            assert_eq!(read(&mut c, &f).await, b"on sn1\nstill on sn1\non sn2\n");
            write(&mut c, &f, 27, b"home again\n").await;
            assert_eq!(
                std::fs::read(sn2.area().join("cn001.log")).unwrap(),
                b"on sn1\nstill on sn1\non sn2\nhome again\n"
            );
            assert_eq!(walk(&sn1.area()), walk(&sn2.area()));
            let _ = (sn1.name, sn2.name);
        })
    });
}
