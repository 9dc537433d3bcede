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
