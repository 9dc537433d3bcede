//! Two agents from their TOML configs, a primary and a backup of one read-write statelite area
//! (`[[statelite_rw]]` with `peer`/`peer_name` and `replica_listen`/`primary`), the stream over
//! real mutual TLS with certificates of the cluster CA: a client's stable write through the
//! primary's NFSv3 server is on the backup's disk with the same file id when the reply comes;
//! with the backup gone the primary goes on within `peer_timeout_ms` and reports the area
//! unprotected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::{
    createhow3, diropargs3, nfs_fh3, sattr3, stable_how, CREATE3args, Nfs3Option, Nfs3Result, WRITE3args,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};

type Conn = Nfs3Connection<TokioIo<tokio::net::TcpStream>>;

const AREA: &str = "/nodedata";

fn pki(dir: &Path) {
    transport::ca::init(dir).unwrap();
    for n in ["mn", "sn1", "sn2"] {
        transport::ca::issue(dir, n, &[]).unwrap();
    }
}

fn config(dir: &Path, pki: &Path, me: &str, rw: &str) -> model::AgentConfig {
    let p = pki.display();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nroot = \"{0}/root\"\nstate_dir = \"{0}/state\"\nexports_file = \"{0}/exports\"\nreload = [\"true\"]\nstatelite_roots = [\"{AREA}\"]\nstatelite_prefix = \"{0}/data\"\n[tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/{me}.pem\"\nkey = \"{p}/{me}.key\"\n[[statelite_rw]]\narea = \"{AREA}\"\nlisten = \"127.0.0.1:0\"\n{rw}",
        dir.display()
    );
    model::AgentConfig::from_toml("agent.toml", &text).unwrap()
}

async fn client(port: u16) -> Conn {
    let root = nfs3_client::nfs3_types::rpc::auth_unix {
        stamp: 1,
        machinename: Opaque::borrowed(b"node1"),
        uid: 0,
        gid: 0,
        gids: Vec::new(),
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

fn id_of(p: &Path) -> Option<Vec<u8>> {
    let mut b = [0u8; 16];
    for x in [nfs3::rw::ID_XATTR, nfs3::rw::TRUSTED_ID_XATTR] {
        if let Ok(16) = rustix::fs::lgetxattr(p, x, &mut b[..]) {
            return Some(b.to_vec());
        }
    }
    None
}

async fn write(c: &mut Conn, f: &nfs_fh3, off: u64, data: &[u8]) {
    let args = WRITE3args {
        file: f.clone(),
        offset: off,
        count: data.len() as u32,
        stable: stable_how::FILE_SYNC,
        data: Opaque::owned(data.to_vec()),
    };
    assert!(matches!(c.write(&args).await.unwrap(), Nfs3Result::Ok(_)));
}

#[test]
fn a_primary_agent_replicates_to_its_backup_agent_and_goes_on_without_it() {
    if !testkit::require_root("the rw server serving changes to root, from a privileged port") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let ca = t.path().join("pki");
    pki(&ca);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let bdir = t.path().join("b");
            let backup = config(&bdir, &ca, "sn2", "replica_listen = \"127.0.0.1:0\"\nprimary = \"sn1\"\n");
            let backup = agent::Agent::new(backup).unwrap().bind().await.unwrap();
            let raddr = backup.statelite_rw_replica_addr(AREA).unwrap();
            let pdir = t.path().join("p");
            let rw = format!("peer = \"{raddr}\"\npeer_name = \"sn2\"\npeer_timeout_ms = 700\n");
            let primary = agent::Agent::new(config(&pdir, &ca, "sn1", &rw)).unwrap().bind().await.unwrap();
            assert_eq!(primary.statelite_rw_unprotected(), vec![(AREA.to_string(), false)]);

            let mut c = client(primary.statelite_rw_addr(AREA).unwrap().port()).await;
            let top = c.root_nfs_fh3();
            let args = CREATE3args {
                where_: diropargs3 {
                    dir: top.clone(),
                    name: nfs3_client::nfs3_types::nfs3::filename3(Opaque::borrowed(b"state")),
                },
                how: createhow3::UNCHECKED(sattr3::default()),
            };
            let f = match c.create(&args).await.unwrap() {
                Nfs3Result::Ok(ok) => match ok.obj {
                    Nfs3Option::Some(h) => h,
                    Nfs3Option::None => panic!("no handle"),
                },
                Nfs3Result::Err(e) => panic!("{e:?}"),
            };
            write(&mut c, &f, 0, b"persistent\n").await;
            let (pf, bf) = (pdir.join("data/nodedata/state"), bdir.join("data/nodedata/state"));
            assert_eq!(std::fs::read(&bf).unwrap(), b"persistent\n");
            assert!(id_of(&pf).is_some());
            assert_eq!(id_of(&pf), id_of(&bf));
            // The backup (no service_address to follow) never serves while the primary does: in
            // standby, its server refuses every client.
            assert_eq!(backup.statelite_rw_role(AREA), Some(nfs3::rw::Role::Standby));
            assert_eq!(primary.statelite_rw_role(AREA), Some(nfs3::rw::Role::Serving));
            let root = nfs3_client::nfs3_types::rpc::auth_unix {
                stamp: 1,
                machinename: Opaque::borrowed(b"node1"),
                uid: 0,
                gid: 0,
                gids: Vec::new(),
            };
            let bport = backup.statelite_rw_addr(AREA).unwrap().port();
            let refused = Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", AREA)
                .credential(nfs3_client::nfs3_types::rpc::opaque_auth::auth_unix(&root))
                .mount_port(bport)
                .nfs3_port(bport)
                .connect_from_privileged_port(true)
                .mount()
                .await;
            assert!(refused.is_err(), "the standby backup served a client");
            assert_eq!(primary.statelite_rw_unprotected(), vec![(AREA.to_string(), false)]);

            // The backup agent stops: the primary answers within peer_timeout_ms, unprotected.
            drop(backup);
            let t0 = Instant::now();
            write(&mut c, &f, 11, b"more\n").await;
            write(&mut c, &f, 16, b"again\n").await;
            assert!(t0.elapsed() < Duration::from_millis(700 + 1500), "{:?}", t0.elapsed());
            assert_eq!(primary.statelite_rw_unprotected(), vec![(AREA.to_string(), true)]);
            assert_eq!(std::fs::read(&pf).unwrap(), b"persistent\nmore\nagain\n");
            assert_eq!(std::fs::read(&bf).unwrap(), b"persistent\n");
        })
        .await
        .expect("test timed out");
    });
}

/// Kind, mode, content and file id of everything beneath `root`.
fn walk(root: &Path) -> std::collections::BTreeMap<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    fn go(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<std::path::PathBuf, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel.as_os_str() == ".hanfs" {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mode = md.permissions().mode() & 0o7777;
            let v = if md.file_type().is_symlink() {
                format!("symlink -> {}", std::fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                format!("dir {mode:o} id {:?}", id_of(&p))
            } else {
                format!("file {mode:o} id {:?} {:?}", id_of(&p), std::fs::read(&p).unwrap())
            };
            out.insert(rel, v);
            if md.is_dir() {
                go(root, &p, out);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    out.insert(".".into(), format!("root id {:?}", id_of(root)));
    go(root, root, &mut out);
    out
}

async fn rw_status(addr: &str, ca: &Path) -> Vec<proto::reply::RwArea> {
    let id = transport::Identity::load(&ca.join("ca.pem"), &ca.join("mn.pem"), &ca.join("mn.key")).unwrap();
    let mut c =
        transport::connect(addr, "sn1", Some(id.client_config().unwrap()), Duration::from_secs(5)).await.unwrap();
    c.call(proto::req::Hello { version: proto::VERSION, controller: "mn".into() }).await.unwrap();
    let r = c.call(proto::req::StateliteRwStatus).await.unwrap();
    c.bye().await;
    r.areas
}

#[test]
fn a_backup_agent_killed_during_a_write_burst_catches_up_when_it_returns() {
    if !testkit::require_root("the rw server serving changes to root, from a privileged port") {
        return;
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let t = tempfile::tempdir().unwrap();
    let ca = t.path().join("pki");
    pki(&ca);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            // The backup's replication port is fixed: it comes back on it.
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let bdir = t.path().join("b");
            let bconf =
                || config(&bdir, &ca, "sn2", &format!("replica_listen = \"127.0.0.1:{port}\"\nprimary = \"sn1\"\n"));
            let backup = agent::Agent::new(bconf()).unwrap().bind().await.unwrap();
            let pdir = t.path().join("p");
            let rw = format!("peer = \"127.0.0.1:{port}\"\npeer_name = \"sn2\"\npeer_timeout_ms = 700\n");
            let primary = agent::Agent::new(config(&pdir, &ca, "sn1", &rw)).unwrap().bind().await.unwrap();
            assert_eq!(primary.statelite_rw_unprotected(), vec![(AREA.to_string(), false)]);
            let rep = primary.statelite_rw_replicator(AREA).unwrap();
            let nfs_port = primary.statelite_rw_addr(AREA).unwrap().port();
            let control = primary.local_addr().to_string();
            let serving = tokio::spawn(primary.serve());
            let s = rw_status(&control, &ca).await;
            assert_eq!(s.len(), 1);
            assert!(s[0].protected && s[0].role == "primary" && s[0].last_reconcile_ok == Some(true), "{s:?}");

            let mut c = client(nfs_port).await;
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let top = c.root_nfs_fh3();
                    let (mut i, mut worst) = (0u32, Duration::ZERO);
                    while !stop.load(Ordering::SeqCst) {
                        let t0 = Instant::now();
                        let args = CREATE3args {
                            where_: diropargs3 {
                                dir: top.clone(),
                                name: nfs3_client::nfs3_types::nfs3::filename3(Opaque::owned(
                                    format!("n{i}").into_bytes(),
                                )),
                            },
                            how: createhow3::UNCHECKED(sattr3::default()),
                        };
                        let f = match c.create(&args).await.unwrap() {
                            Nfs3Result::Ok(ok) => match ok.obj {
                                Nfs3Option::Some(h) => h,
                                Nfs3Option::None => panic!("no handle"),
                            },
                            Nfs3Result::Err(e) => panic!("{e:?}"),
                        };
                        write(&mut c, &f, 0, format!("state {i}\n").as_bytes()).await;
                        worst = worst.max(t0.elapsed());
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    (i, worst)
                })
            };
            tokio::time::sleep(Duration::from_millis(300)).await;
            // The backup agent goes away mid-burst.
            drop(backup);
            let t0 = Instant::now();
            while rep.protected() {
                assert!(t0.elapsed() < Duration::from_millis(700 + 2000), "still protected");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let s = rw_status(&control, &ca).await;
            assert!(!s[0].protected && s[0].reason.is_some() && s[0].lag_ms > 0 && s[0].lag_bytes > 0, "{s:?}");
            // It comes back (a new agent on the same state dir and port).
            let t1 = Instant::now();
            let backup = loop {
                match agent::Agent::new(bconf()) {
                    Ok(a) => match a.bind().await {
                        Ok(l) => break l,
                        Err(e) if t1.elapsed() < Duration::from_secs(5) => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("{e}"),
                    },
                    Err(e) if t1.elapsed() < Duration::from_secs(5) => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            let t2 = Instant::now();
            while !rep.protected() {
                assert!(t2.elapsed() < Duration::from_secs(20), "not reconciled: {:?}", rep.last_reconcile());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.store(true, Ordering::SeqCst);
            let (steps, worst) = writer.await.unwrap();
            assert!(steps > 20, "{steps}");
            assert!(worst < Duration::from_millis(700 + 800), "a step took {worst:?}");
            let (p, b) = (pdir.join("data/nodedata"), bdir.join("data/nodedata"));
            assert_eq!(walk(&p), walk(&b));
            assert_eq!(walk(&p).len() as u32, steps + 1);
            assert_eq!(rep.lag().entries, 0);
            let s = rw_status(&control, &ca).await;
            assert!(s[0].protected && s[0].lag_ms == 0 && s[0].lag_bytes == 0, "{s:?}");
            assert_eq!(s[0].last_reconcile_ok, Some(true), "{s:?}");
            drop(backup);
            serving.abort();
        })
        .await
        .expect("test timed out");
    });
}
