//! Service-address takeover driven from the MN: ask one SN's agent to claim (put on its
//! `takeover_interface` and announce) or release a floating service address, the address a dead
//! SN's nodes mount from. One short session per call; the agent's refusal (no
//! `takeover_interface`, outside `takeover_allowed`, no such interface) is [`SnError::Refused`]
//! with its reason.

use crate::{Controller, SnError};
use model::ServiceNode;
use proto::{reply, req};

/// `address` (`10.0.1.101/24`, `fd00::65/64`) checked here, before any SN is dialled.
fn check(address: &str) -> Result<(), SnError> {
    let ok = address.split_once('/').is_some_and(|(ip, len)| {
        let max = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => 32,
            Ok(std::net::IpAddr::V6(_)) => 128,
            Err(_) => return false,
        };
        // Digits only: `u8::from_str` would take `+24`, which the agent refuses.
        !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) && len.parse::<u8>().is_ok_and(|l| l <= max)
    });
    match ok {
        true => Ok(()),
        false => Err(SnError::Local(anyhow::anyhow!(
            "`{address}` is not a service address with a prefix length (10.0.1.101/24, fd00::65/64)"
        ))),
    }
}

/// Has `sn`'s agent claim `address`; idempotent (`change` is then `already present`, and the
/// address is announced again).
pub async fn claim(ctl: &Controller, sn: &ServiceNode, address: &str) -> Result<reply::Claimed, SnError> {
    check(address)?;
    let mut c = ctl.connect(sn).await?;
    let r = c.call(req::Claim { address: address.to_string() }).await;
    c.bye().await;
    match r {
        Ok(r) => {
            tracing::info!(sn = %sn.name, address, change = %r.change, announced = r.announced, detail = %r.detail,
                "service address claimed");
            Ok(r)
        }
        Err(e) => {
            let e = SnError::from(e);
            tracing::warn!(sn = %sn.name, address, "claim of the service address failed: {e}");
            Err(e)
        }
    }
}

/// Has `sn`'s agent release `address`; idempotent (`change` is then `absent`).
pub async fn release(ctl: &Controller, sn: &ServiceNode, address: &str) -> Result<reply::Released, SnError> {
    check(address)?;
    let mut c = ctl.connect(sn).await?;
    let r = c.call(req::Release { address: address.to_string() }).await;
    c.bye().await;
    match r {
        Ok(r) => {
            tracing::info!(sn = %sn.name, address, change = %r.change, "service address released");
            Ok(r)
        }
        Err(e) => {
            let e = SnError::from(e);
            tracing::warn!(sn = %sn.name, address, "release of the service address failed: {e}");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A controller of one SN whose agent is at `agent`.
    fn controller(dir: &std::path::Path, agent: std::net::SocketAddr) -> Controller {
        std::fs::create_dir_all(dir.join("src/img")).unwrap();
        let toml = format!(
            "[cluster]\nsource_root = \"{0}/src\"\nstate_dir = \"{0}/state\"\nplaintext_loopback = true\n\
             [[sn]]\nname = \"sn1\"\naddress = \"127.0.0.1\"\nagent = \"{agent}\"\n\
             [[image]]\nname = \"img\"\npath = \"img\"\nclients = \"*\"\n",
            dir.display()
        );
        let mut ctl = Controller::new(model::Cluster::from_toml("t.toml", &toml).unwrap()).unwrap();
        ctl.timeouts.frame = Duration::from_secs(20);
        ctl
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_agents_refusal_comes_back_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent::testing::spawn(&dir.path().join("sn1"), "").await.unwrap();
        let ctl = controller(dir.path(), a.addr);
        let sn = ctl.cluster.sns()[0].clone();
        match claim(&ctl, &sn, "10.0.1.101/24").await {
            Err(SnError::Refused(m)) => assert!(m.contains("no takeover_interface"), "{m}"),
            other => panic!("{other:?}"),
        }
        match release(&ctl, &sn, "10.0.1.101/24").await {
            Err(SnError::Refused(m)) => assert!(m.contains("no takeover_interface"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_address_is_refused_before_the_sn_is_dialled() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens there (bound, never listening, held): a dial would be a Connect error.
        let (_held, port) = testkit::refusing_port();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let ctl = controller(dir.path(), addr);
        let sn = ctl.cluster.sns()[0].clone();
        for bad in ["10.0.1.101", "eth1", "10.0.1.101/40"] {
            match claim(&ctl, &sn, bad).await {
                Err(SnError::Local(e)) => assert!(e.to_string().contains("prefix length"), "{e}"),
                other => panic!("{bad}: {other:?}"),
            }
            assert!(matches!(release(&ctl, &sn, bad).await, Err(SnError::Local(_))), "{bad}");
        }
        assert!(matches!(claim(&ctl, &sn, "10.0.1.101/24").await, Err(SnError::Connect { .. })));
    }
}
