#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `Claim`/`Release` of a floating service address, driven by the controller's end of a session
//! against an in-process agent. The refusals need nothing from the machine; the claim itself runs
//! in a private network namespace (the agent's runtime is built on a thread inside it, so its
//! sockets, netlink's included, stay there) on one end of a veth pair, judged by the kernel's own
//! address list.

use proto::{req, Error as ProtoError};
use std::net::IpAddr;
use std::time::Duration;
use transport::Error;

const T: Duration = Duration::from_secs(20);
const IF_A: &str = "hfw0";
const IF_B: &str = "hfw1";

async fn session(a: &agent::testing::TestAgent) -> transport::Conn<proto::Controller> {
    let mut c = transport::connect(&a.addr.to_string(), "agent", None, T).await.unwrap();
    c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.unwrap();
    c
}

fn refusal<R: std::fmt::Debug>(r: Result<R, Error>) -> String {
    match r {
        Err(Error::Proto(ProtoError::Remote(reason))) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_is_refused_without_a_takeover_interface() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent::testing::spawn(dir.path(), "").await.unwrap();
    let mut c = session(&a).await;
    let why = refusal(c.call(req::Claim { address: "10.0.1.101/24".into() }).await);
    assert!(why.contains("no takeover_interface"), "{why}");
    let why = refusal(c.call(req::Release { address: "10.0.1.101/24".into() }).await);
    assert!(why.contains("no takeover_interface"), "{why}");
    // A refused claim does not end the session.
    c.call(req::Ping).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_outside_takeover_allowed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "takeover_interface = \"lo\"\ntakeover_allowed = [\"10.0.1.0/24\", \"fd00:1::/64\"]\n";
    let a = agent::testing::spawn(dir.path(), extra).await.unwrap();
    let mut c = session(&a).await;
    for address in ["10.0.2.101/24", "fd00:2::65/64", "192.168.0.1/32"] {
        let why = refusal(c.call(req::Claim { address: address.into() }).await);
        assert!(why.contains("not in takeover_allowed (10.0.1.0/24, fd00:1::/64)"), "{address}: {why}");
        let why = refusal(c.call(req::Release { address: address.into() }).await);
        assert!(why.contains("not in takeover_allowed"), "{address}: {why}");
    }
    c.call(req::Ping).await.unwrap();
}

/// Runs `f` on a runtime built on a thread inside a fresh network namespace (its workers are
/// spawned from that thread, so they are in it too), or skips saying why.
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

/// In the current namespace: loopback up (the agent listens there), and a veth pair whose first
/// end carries the service addresses. False (after skipping) when the kernel makes no veth.
async fn links() -> bool {
    use rtnetlink::{LinkUnspec, LinkVeth};
    let (conn, h, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(conn);
    h.link().set(LinkUnspec::new_with_name("lo").up().build()).execute().await.unwrap();
    if let Err(e) = h.link().add(LinkVeth::new(IF_A, IF_B).build()).execute().await {
        testkit::skip(format!("cannot create a veth pair ({e}): the kernel needs veth"));
        return false;
    }
    for i in [IF_A, IF_B] {
        h.link().set(LinkUnspec::new_with_name(i).up().build()).execute().await.unwrap();
    }
    true
}

#[test]
fn claim_puts_the_address_on_the_interface_and_release_takes_it_off() {
    in_private_netns(|| {
        Box::pin(async {
            if !links().await {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let extra = format!(
                "takeover_interface = \"{IF_A}\"\ntakeover_allowed = [\"10.0.1.0/24\", \"fd00:1::/64\"]\nnfs3 = \"0.0.0.0:0\"\n"
            );
            let a = agent::testing::spawn(dir.path(), &extra).await.unwrap();
            let mut c = session(&a).await;
            // The judge: the kernel's address list, read through its own netlink socket.
            let judge = takeover::Takeover::new().unwrap();
            for address in ["10.0.1.101/24", "fd00:1::65/64"] {
                let ip: IpAddr = address.split('/').next().unwrap().parse().unwrap();
                assert_eq!(judge.holds(ip).await.unwrap(), None, "{address} before the claim");
                let r = c.call(req::Claim { address: address.into() }).await.unwrap();
                assert_eq!(r.change, "added", "{address}: {r:?}");
                assert!(r.announced, "{address}: a veth carries ARP and NA: {r:?}");
                let held = judge.holds(ip).await.unwrap().expect("held after the claim");
                assert_eq!((held.iface.as_str(), u32::from(held.prefix_len)), (IF_A, address_prefix(address)));
                if ip.is_ipv4() {
                    assert!(r.detail.contains("embedded NFSv3 on 0.0.0.0:0 serves it"), "{}", r.detail);
                } else {
                    assert!(r.detail.contains("will not serve fd00:1::65"), "{}", r.detail);
                }
                // Again: idempotent.
                let r = c.call(req::Claim { address: address.into() }).await.unwrap();
                assert_eq!(r.change, "already present");
                let r = c.call(req::Release { address: address.into() }).await.unwrap();
                assert_eq!(r.change, "removed");
                assert_eq!(judge.holds(ip).await.unwrap(), None, "{address} after the release");
                let r = c.call(req::Release { address: address.into() }).await.unwrap();
                assert_eq!(r.change, "absent");
            }
            // An interface that is not there: refused with the reason, nothing added, session on.
            let dir2 = tempfile::tempdir().unwrap();
            let b = agent::testing::spawn(dir2.path(), "takeover_interface = \"hfnone0\"\n").await.unwrap();
            let mut c2 = session(&b).await;
            let why = refusal(c2.call(req::Claim { address: "10.0.1.102/24".into() }).await);
            assert!(why.contains("no interface named \"hfnone0\""), "{why}");
            assert_eq!(judge.holds("10.0.1.102".parse().unwrap()).await.unwrap(), None);
            c2.call(req::Ping).await.unwrap();
        })
    });
}

fn address_prefix(a: &str) -> u32 {
    a.rsplit('/').next().unwrap().parse().unwrap()
}

/// Whether a root client (privileged port) can mount `area` on `port` and read its root.
async fn rw_reachable(port: u16, area: &str) -> bool {
    use nfs3_client::nfs3_types::xdr_codec::Opaque;
    let root = nfs3_client::nfs3_types::rpc::auth_unix {
        stamp: 1,
        machinename: Opaque::borrowed(b"node1"),
        uid: 0,
        gid: 0,
        gids: Vec::new(),
    };
    let c = nfs3_client::Nfs3ConnectionBuilder::new(nfs3_client::tokio::TokioConnector, "127.0.0.1", area)
        .credential(nfs3_client::nfs3_types::rpc::opaque_auth::auth_unix(&root))
        .mount_port(port)
        .nfs3_port(port)
        .connect_from_privileged_port(true)
        .mount()
        .await;
    match c {
        Ok(mut c) => c.null().await.is_ok(),
        Err(_) => false,
    }
}

/// A read-write area that follows a service address (`[[statelite_rw]] service_address`): in
/// standby while the agent does not hold it (no client served), served once it is claimed, back
/// in standby when it is released; other addresses leave it alone.
#[test]
fn a_statelite_area_is_served_only_while_its_service_address_is_claimed_here() {
    if !testkit::require_root("a privileged client port for the read-write area") {
        return;
    }
    in_private_netns(|| {
        Box::pin(async {
            if !links().await {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().display();
            let extra = format!(
                "takeover_interface = \"{IF_A}\"\ntakeover_allowed = [\"10.0.1.0/24\"]\nstatelite_roots = [\"/nodedata\"]\nstatelite_prefix = \"{d}/data\"\n[[statelite_rw]]\narea = \"/nodedata\"\nlisten = \"127.0.0.1:0\"\nservice_address = \"10.0.1.101/24\"\n"
            );
            let cfg = agent::testing::config(dir.path(), &extra).unwrap();
            let bound = agent::Agent::new(cfg).unwrap().bind().await.unwrap();
            assert_eq!(bound.statelite_rw_role("/nodedata"), Some(nfs3::rw::Role::Standby));
            let port = bound.statelite_rw_addr("/nodedata").unwrap().port();
            let addr = bound.local_addr();
            let task = tokio::spawn(async move { bound.serve().await });
            let mut c = transport::connect(&addr.to_string(), "agent", None, T).await.unwrap();
            c.call(req::Hello { version: proto::VERSION, controller: "test".into() }).await.unwrap();
            assert!(!rw_reachable(port, "/nodedata").await, "served before its address was claimed");
            // Another address: nothing changes.
            let r = c.call(req::Claim { address: "10.0.1.102/24".into() }).await.unwrap();
            assert!(!r.detail.contains("statelite"), "{}", r.detail);
            assert!(!rw_reachable(port, "/nodedata").await, "served after another address's claim");
            let r = c.call(req::Claim { address: "10.0.1.101/24".into() }).await.unwrap();
            assert_eq!(r.change, "added");
            assert!(r.detail.contains("statelite areas served read-write here: /nodedata"), "{}", r.detail);
            assert!(rw_reachable(port, "/nodedata").await, "not served after the claim");
            let r = c.call(req::Release { address: "10.0.1.101/24".into() }).await.unwrap();
            assert_eq!(r.change, "removed");
            assert!(!rw_reachable(port, "/nodedata").await, "served after the release");
            // Claimed again: served again (a second takeover to this SN).
            c.call(req::Claim { address: "10.0.1.101/24".into() }).await.unwrap();
            assert!(rw_reachable(port, "/nodedata").await, "not served after the second claim");
            task.abort();
        })
    });
}
