//! `Claim`/`Release`: the agent takes over a floating service address (a dead SN's, so its nodes
//! keep mounting from the same address) on its `takeover_interface`, through crate `takeover`
//! (rtnetlink, gratuitous ARP / unsolicited NA). A refusal is an `Error` reply with the reason;
//! the session goes on.

use crate::Agent;
use proto::reply;
use std::net::{IpAddr, SocketAddr};
use takeover::{ipnet::IpNet, Announce, Announcement, Change, Released, Takeover};

/// The interface a claim goes on, and the address checked against `takeover_allowed`.
fn checked<'a>(agent: &'a Agent, what: &str, address: &str) -> Result<(&'a str, IpNet), String> {
    let Some(iface) = agent.cfg.takeover_interface.as_deref() else {
        return Err(format!(
            "{what} {address} refused: this agent has no takeover_interface in its config, so it takes over no address"
        ));
    };
    // Decoding checked it already; a caller in this process may not have.
    let net: IpNet = address.parse().map_err(|_| format!("{what} refused: `{address}` is not an address/prefix"))?;
    if let Some(allowed) = &agent.cfg.takeover_allowed {
        if !allowed.iter().any(|n| n.contains(&net.addr())) {
            let list: Vec<String> = allowed.iter().map(|n| n.to_string()).collect();
            return Err(format!(
                "{what} {address} refused: not in takeover_allowed ({}) of this agent's config",
                list.join(", ")
            ));
        }
    }
    Ok((iface, net))
}

/// The agent's one `Takeover`, opened on first use (in the agent's network namespace): an agent
/// that never claims never opens netlink or packet sockets. A failure to open is not kept, so a
/// claim after the cause is fixed (capabilities) succeeds.
async fn takeover(agent: &Agent) -> Result<&Takeover, String> {
    agent
        .takeover
        .get_or_try_init(|| async { Takeover::new() })
        .await
        .map_err(|e| format!("address takeover is not available on this host: {e}"))
}

/// What the controller should know about serving the claimed address over NFSv3.
fn nfs3_note(nfs3: Option<SocketAddr>, addr: IpAddr) -> String {
    let Some(l) = nfs3 else {
        return "no embedded NFSv3 server (nfs3 unset): the host's own NFS server must listen on this address".into();
    };
    match (l.ip(), addr) {
        (IpAddr::V4(a), IpAddr::V4(_)) if a.is_unspecified() => format!("embedded NFSv3 on {l} serves it"),
        (IpAddr::V6(a), IpAddr::V6(_)) if a.is_unspecified() => format!("embedded NFSv3 on {l} serves it"),
        (IpAddr::V6(a), IpAddr::V4(_)) if a.is_unspecified() => {
            format!("embedded NFSv3 on {l} serves it unless net.ipv6.bindv6only is 1")
        }
        (ip, _) if ip == addr => format!("embedded NFSv3 on {l} serves it"),
        _ => format!(
            "embedded NFSv3 listens on {l} only: it will not serve {addr} (set nfs3 to {}:{} to serve any address)",
            if l.is_ipv6() { "[::]" } else { "0.0.0.0" },
            l.port()
        ),
    }
}

/// Promotes (or demotes) the read-write areas that follow `addr`; returns the areas whose role
/// changed, with the role each had.
async fn follow(agent: &Agent, addr: IpAddr, promote: bool) -> Result<Vec<(String, nfs3::rw::Role)>, String> {
    let mut changed = Vec::new();
    for f in agent.rw_follow.iter().filter(|f| f.address.addr() == addr) {
        let r = if promote { f.server.promote().await } else { f.server.demote().await };
        match r {
            Ok(was) if was.serves() != promote => changed.push((f.area.clone(), was)),
            Ok(_) => {}
            Err(e) => return Err(format!("statelite area {}: {e}", f.area)),
        }
    }
    Ok(changed)
}

pub(crate) async fn claim(agent: &Agent, address: &str) -> Result<reply::Claimed, String> {
    let (iface, net) = checked(agent, "claim of", address).inspect_err(|e| tracing::warn!(address, "{e}"))?;
    let t = takeover(agent).await.inspect_err(|e| tracing::warn!(address, iface, "{e}"))?;
    // The areas that follow the address are served before it is here, so the clients' first
    // packets to it find them serving (the controller claims only after fencing the old holder).
    let promoted = follow(agent, net.addr(), true).await.inspect_err(|e| tracing::warn!(address, "{e}"))?;
    for (area, was) in &promoted {
        tracing::info!(address, area = %area, from = was.as_str(), to = "promoted", "statelite area promoted: served read-write here, the primary's stream refused");
    }
    let claimed = match t.claim(iface, net, &Announce::default()).await {
        Ok(c) => c,
        Err(e) => {
            let e = format!("claim of {address} on {iface} failed: {e}");
            tracing::warn!(address, iface, "{e}");
            // Not here after all: back to standby what this claim promoted.
            for (area, _) in &promoted {
                if let Some(f) = agent.rw_follow.iter().find(|f| f.area == *area) {
                    let _ = f.server.demote().await;
                }
            }
            return Err(e);
        }
    };
    let change = match claimed.change {
        Change::Added => "added",
        Change::AlreadyPresent => "already present",
    };
    let (announced, how) = match &claimed.announcement {
        Announcement::Sent { first_after, repeats, .. } => {
            (true, format!("announced after {first_after:?}, {repeats} repeats follow"))
        }
        Announcement::Disabled => (false, "not announced (disabled)".to_string()),
        Announcement::Skipped(why) => (false, format!("not announced: {why}")),
    };
    let mut detail = format!("{how}; {}", nfs3_note(agent.cfg.nfs3, net.addr()));
    let following: Vec<&str> =
        agent.rw_follow.iter().filter(|f| f.address.addr() == net.addr()).map(|f| f.area.as_str()).collect();
    if !following.is_empty() {
        detail.push_str(&format!("; statelite areas served read-write here: {}", following.join(", ")));
    }
    tracing::info!(address, iface, change, announced, %detail, "service address claimed");
    // Dropped, not awaited: the repeated announcements go on on their task.
    drop(claimed);
    Ok(reply::Claimed { change: change.into(), announced, detail })
}

pub(crate) async fn release(agent: &Agent, address: &str) -> Result<reply::Released, String> {
    let (iface, net) = checked(agent, "release of", address).inspect_err(|e| tracing::warn!(address, "{e}"))?;
    let t = takeover(agent).await.inspect_err(|e| tracing::warn!(address, iface, "{e}"))?;
    let released = t.release(iface, net).await.map_err(|e| {
        let e = format!("release of {address} from {iface} failed: {e}");
        tracing::warn!(address, iface, "{e}");
        e
    })?;
    let change = match released {
        Released::Removed => "removed",
        Released::Absent => "absent",
    };
    // Its connections go with it: a stale socket of this address's clients would swallow their
    // packets (no reset) when the address is claimed here again.
    for c in &agent.nfs3_closers {
        c.close_connections_to(net.addr());
    }
    // Its areas go back to standby once the change being applied is done; the reply (and with
    // it the claim on the next holder) waits for that.
    let demoted = follow(agent, net.addr(), false).await.inspect_err(|e| tracing::warn!(address, "{e}"))?;
    for (area, was) in &demoted {
        tracing::info!(address, area = %area, from = was.as_str(), to = "standby", "statelite area in standby: no client served, the primary's stream accepted");
    }
    tracing::info!(address, iface, change, "service address released");
    Ok(reply::Released { change: change.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfs3_notes_say_when_the_claimed_address_is_not_served() {
        let v4: IpAddr = "10.0.1.101".parse().unwrap();
        let v6: IpAddr = "fd00::65".parse().unwrap();
        let n = |l: &str, a| nfs3_note(Some(l.parse().unwrap()), a);
        assert_eq!(n("0.0.0.0:2050", v4), "embedded NFSv3 on 0.0.0.0:2050 serves it");
        assert_eq!(n("10.0.1.101:2050", v4), "embedded NFSv3 on 10.0.1.101:2050 serves it");
        assert!(n("10.0.1.5:2050", v4).contains("will not serve 10.0.1.101 (set nfs3 to 0.0.0.0:2050"));
        assert!(n("0.0.0.0:2050", v6).contains("will not serve fd00::65"));
        assert!(n("[::]:2050", v4).contains("bindv6only"));
        assert!(nfs3_note(None, v4).contains("nfs3 unset"));
    }
}
