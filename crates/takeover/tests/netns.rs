#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Claims, announcements and releases against the real kernel: two private
//! network namespaces (A claims, B is a client on the same link) joined by a
//! veth pair. B's kernel is the judge of the announcements: its neighbour
//! entry for the address, seeded with a stale MAC, must change to A's.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::{Handle, LinkUnspec, LinkVeth};
use takeover::packet::Capture;
use takeover::{Announce, Announcement, Change, Error, Released, Takeover};

/// The MAC a dead holder had: what B's entry says before the takeover.
const OLD_MAC: [u8; 6] = [0x02, 0xde, 0xad, 0x00, 0x00, 0x01];
const A_IF: &str = "hfa0";
const B_IF: &str = "hfb0";

/// A fresh network namespace, kept alive by its fd.
fn new_netns() -> std::io::Result<OwnedFd> {
    std::thread::spawn(|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        Ok(File::open("/proc/thread-self/ns/net")?.into())
    })
    .join()
    .map_err(|_| std::io::Error::other("namespace thread panicked"))?
}

/// Run `f` on a thread inside `ns` (sockets it opens stay in `ns`).
fn in_ns<T: Send>(ns: &OwnedFd, rt: &tokio::runtime::Runtime, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
            let _guard = rt.enter();
            f()
        })
        .join()
        .unwrap()
    })
}

fn handle_in(ns: &OwnedFd, rt: &tokio::runtime::Runtime) -> Handle {
    in_ns(ns, rt, || {
        let (conn, handle, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        handle
    })
}

struct Lab {
    rt: tokio::runtime::Runtime,
    b: OwnedFd,
    /// Netlink in A (the claimer) and B (the client).
    ha: Handle,
    hb: Handle,
    t: Takeover,
    mac_a: [u8; 6],
    idx_b: u32,
    _a: OwnedFd,
}

/// Two namespaces and the link between them, or `None` (after saying why)
/// where this machine cannot make them; under CI=true that fails the test.
fn lab() -> Option<Lab> {
    let (a, b) = match new_netns().and_then(|a| Ok((a, new_netns()?))) {
        Ok(ab) => ab,
        Err(e) => {
            let why = format!("cannot create a network namespace ({e}): needs root (CAP_SYS_ADMIN)");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("SKIP: {why}");
            return None;
        }
    };
    // A worker thread drives the repeats while the test blocks on a capture.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let ha = handle_in(&a, &rt);
    let hb = handle_in(&b, &rt);
    let t = in_ns(&a, &rt, || Takeover::new().unwrap());
    let (mac_a, idx_b) = rt.block_on(async {
        if let Err(e) = ha.link().add(LinkVeth::new(A_IF, B_IF).build()).execute().await {
            let why = format!("cannot create a veth pair ({e})");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("SKIP: {why}");
            return None;
        }
        let to_b = LinkUnspec::new_with_name(B_IF).setns_by_fd(b.as_raw_fd()).build();
        ha.link().set(to_b).execute().await.unwrap();
        ha.link().set(LinkUnspec::new_with_name(A_IF).up().build()).execute().await.unwrap();
        hb.link().set(LinkUnspec::new_with_name(B_IF).up().build()).execute().await.unwrap();
        let idx_b = index(&hb, B_IF).await;
        // B is a host of the subnet, as a diskless node is.
        hb.address().add(idx_b, "192.0.2.2".parse().unwrap(), 24).execute().await.unwrap();
        let mut v6 = hb.address().add(idx_b, "2001:db8::2".parse().unwrap(), 64);
        v6.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        v6.execute().await.unwrap();
        Some((mac(&ha, A_IF).await, idx_b))
    })?;
    Some(Lab { rt, b, ha, hb, t, mac_a, idx_b, _a: a })
}

async fn index(h: &Handle, name: &str) -> u32 {
    let m = h.link().get().match_name(name.to_string()).execute().try_next().await.unwrap().unwrap();
    m.header.index
}

async fn mac(h: &Handle, name: &str) -> [u8; 6] {
    let m = h.link().get().match_name(name.to_string()).execute().try_next().await.unwrap().unwrap();
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
            _ => None,
        })
        .unwrap()
}

impl Lab {
    /// B believes `addr` is at OLD_MAC, as after the dead holder's traffic.
    fn seed_stale(&self, addr: IpAddr) {
        self.rt.block_on(async {
            self.hb
                .neighbours()
                .add(self.idx_b, addr)
                .link_layer_address(&OLD_MAC)
                .state(NeighbourState::Stale)
                .execute()
                .await
                .unwrap();
        });
        assert_eq!(self.neighbour(addr), Some(OLD_MAC));
    }

    /// B's neighbour entry for `addr`.
    fn neighbour(&self, addr: IpAddr) -> Option<[u8; 6]> {
        self.rt.block_on(async {
            let all: Vec<_> = self.hb.neighbours().get().execute().try_collect().await.unwrap();
            all.into_iter().find_map(|m| {
                if m.header.ifindex != self.idx_b {
                    return None;
                }
                let mut dst = None;
                let mut lla = None;
                for a in m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => dst = Some(IpAddr::V4(v4)),
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => dst = Some(IpAddr::V6(v6)),
                        NeighbourAttribute::LinkLayerAddress(l) => lla = <[u8; 6]>::try_from(l.as_slice()).ok(),
                        _ => {}
                    }
                }
                (dst == Some(addr)).then_some(lla).flatten()
            })
        })
    }

    /// Wait up to `within` for B's entry for `addr` to become `want`.
    fn neighbour_becomes(&self, addr: IpAddr, want: [u8; 6], within: Duration) -> Option<[u8; 6]> {
        let end = Instant::now() + within;
        loop {
            let now = self.neighbour(addr);
            if now == Some(want) || Instant::now() > end {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn capture(&self) -> Capture {
        let idx = self.idx_b;
        in_ns(&self.b, &self.rt, || Capture::open(idx, Duration::from_millis(100)).unwrap())
    }
}

/// Frames `cap` gets for `within` that `keep` picks, with arrival times.
fn frames(cap: &Capture, within: Duration, want: usize, keep: impl Fn(&[u8]) -> bool) -> Vec<(Instant, Vec<u8>)> {
    let end = Instant::now() + within;
    let mut got = Vec::new();
    while Instant::now() < end && got.len() < want {
        if let Some(f) = cap.recv().unwrap() {
            if keep(&f) {
                got.push((Instant::now(), f));
            }
        }
    }
    got
}

fn is_arp_for(f: &[u8], addr: [u8; 4]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[28..32] == addr
}

fn is_na_for(f: &[u8], target: [u8; 16]) -> bool {
    f.len() >= 14 + 72
        && f[12..14] == [0x86, 0xdd]
        && f[14 + 6] == 58
        && f[14 + 40] == 136
        && f[14 + 48..14 + 64] == target
}

/// RFC 1071 sum, written apart from the crate's: pseudo-header + message.
fn icmpv6_sum_ok(ip6: &[u8]) -> bool {
    let plen = usize::from(u16::from_be_bytes([ip6[4], ip6[5]]));
    let mut data = Vec::new();
    data.extend_from_slice(&ip6[8..40]);
    data.extend_from_slice(&(plen as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, ip6[6]]);
    data.extend_from_slice(&ip6[40..40 + plen]);
    if data.len() % 2 == 1 {
        data.push(0);
    }
    let mut s: u64 = data.chunks(2).map(|w| u64::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn ipv4_claim_sends_gratuitous_arp_and_the_peer_learns_the_new_mac() {
    let Some(lab) = lab() else { return };
    let addr = net("192.0.2.10/24");
    lab.seed_stale(addr.addr());
    let cap = lab.capture();
    let announce = Announce { count: 2, interval: Duration::from_millis(300), arp_reply: true };
    let claimed = lab.rt.block_on(lab.t.claim(A_IF, addr, &announce)).unwrap();
    assert_eq!(claimed.change, Change::Added);
    let Announcement::Sent { mac, first_after, repeats } = claimed.announcement else {
        panic!("not announced: {:?}", claimed.announcement)
    };
    eprintln!("claim() to first gratuitous ARP sent: {first_after:?}");
    assert_eq!((mac, repeats), (lab.mac_a, 1));
    assert!(first_after < Duration::from_secs(1), "{first_after:?}");

    let got = frames(&cap, Duration::from_secs(3), 4, |f| is_arp_for(f, [192, 0, 2, 10]));
    assert_eq!(got.len(), 4, "two rounds of request + reply");
    let m = lab.mac_a;
    for (i, (_, f)) in got.iter().enumerate() {
        let reply = i % 2 == 1;
        assert_eq!(f[0..6], [0xff; 6], "broadcast");
        assert_eq!(f[6..12], m, "source MAC");
        assert_eq!(f[12..14], [0x08, 0x06], "ethertype ARP");
        assert_eq!(f[14..20], [0, 1, 8, 0, 6, 4], "Ethernet/IPv4 ARP");
        assert_eq!(f[20..22], [0, if reply { 2 } else { 1 }], "opcode");
        assert_eq!(f[22..28], m, "sender hardware address");
        assert_eq!(f[28..32], [192, 0, 2, 10], "sender protocol address");
        let tha = if reply { m } else { [0; 6] };
        assert_eq!(f[32..38], tha, "target hardware address");
        assert_eq!(f[38..42], [192, 0, 2, 10], "target protocol address");
    }
    let spacing = got[2].0 - got[0].0;
    assert!(spacing >= Duration::from_millis(250), "rounds {spacing:?} apart");
    assert_eq!(lab.rt.block_on(claimed_rounds(claimed_again(&lab, addr))), 1);

    let now = lab.neighbour_becomes(addr.addr(), m, Duration::from_secs(2));
    assert_eq!(now, Some(m), "B's kernel took the announcement");
}

/// Claim an address that is held: AlreadyPresent, announced once more.
fn claimed_again(lab: &Lab, addr: IpNet) -> takeover::Claimed {
    let c = lab.rt.block_on(lab.t.claim(A_IF, addr, &Announce { count: 1, ..Announce::default() })).unwrap();
    assert_eq!(c.change, Change::AlreadyPresent);
    c
}

async fn claimed_rounds(c: takeover::Claimed) -> u32 {
    c.announced().await.unwrap()
}

#[test]
fn ipv6_claim_sends_unsolicited_na_and_the_peer_learns_the_new_mac() {
    let Some(lab) = lab() else { return };
    let addr = net("2001:db8::10/64");
    let IpAddr::V6(target) = addr.addr() else { unreachable!() };
    lab.seed_stale(addr.addr());
    let cap = lab.capture();
    let announce = Announce { count: 2, interval: Duration::from_millis(300), arp_reply: true };
    let claimed = lab.rt.block_on(lab.t.claim(A_IF, addr, &announce)).unwrap();
    assert_eq!(claimed.change, Change::Added);
    let Announcement::Sent { first_after, .. } = claimed.announcement else {
        panic!("not announced: {:?}", claimed.announcement)
    };
    eprintln!("claim() to first unsolicited NA sent: {first_after:?}");
    let got = frames(&cap, Duration::from_secs(3), 2, |f| is_na_for(f, target.octets()));
    assert_eq!(got.len(), 2, "two rounds");
    let m = lab.mac_a;
    for (_, f) in &got {
        assert_eq!(f[0..6], [0x33, 0x33, 0, 0, 0, 1], "all-nodes multicast MAC");
        assert_eq!(f[6..12], m, "source MAC");
        assert_eq!(f[12..14], [0x86, 0xdd], "ethertype IPv6");
        let ip = &f[14..];
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 32, "payload length");
        assert_eq!(ip[6], 58, "next header ICMPv6");
        assert_eq!(ip[7], 255, "hop limit");
        assert_eq!(ip[8..24], target.octets(), "source: the claimed address");
        assert_eq!(ip[24..40], "ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let icmp = &ip[40..72];
        assert_eq!((icmp[0], icmp[1]), (136, 0), "Neighbor Advertisement");
        assert_eq!(icmp[4..8], [0x20, 0, 0, 0], "O set, R and S clear");
        assert_eq!(icmp[8..24], target.octets(), "target");
        assert_eq!(icmp[24..26], [2, 1], "target link-layer address option");
        assert_eq!(icmp[26..32], m);
        assert!(icmpv6_sum_ok(ip), "ICMPv6 checksum");
    }
    assert!(got[1].0 - got[0].0 >= Duration::from_millis(250));
    let now = lab.neighbour_becomes(addr.addr(), m, Duration::from_secs(2));
    assert_eq!(now, Some(m), "B's kernel took the advertisement");
    // A's kernel uses the address at once (added without DAD).
    let flags = lab.rt.block_on(async {
        let all: Vec<_> = lab.ha.address().get().execute().try_collect().await.unwrap();
        all.into_iter()
            .filter(|m| m.attributes.contains(&AddressAttribute::Address(addr.addr())))
            .flat_map(|m| m.attributes)
            .find_map(|a| match a {
                AddressAttribute::Flags(f) => Some(f),
                _ => None,
            })
    });
    let flags = flags.unwrap();
    assert!(!flags.contains(AddressFlags::Tentative), "{flags:?}");
}

/// The control for the two above: without announcements B keeps the stale
/// MAC, so their change came from the announcement, not from the kernel.
#[test]
fn without_announcement_the_peer_keeps_the_stale_mac() {
    let Some(lab) = lab() else { return };
    let v4 = net("192.0.2.11/24");
    let v6 = net("2001:db8::11/64");
    lab.seed_stale(v4.addr());
    lab.seed_stale(v6.addr());
    let cap = lab.capture();
    for a in [v4, v6] {
        let c = lab.rt.block_on(lab.t.claim(A_IF, a, &Announce::none())).unwrap();
        assert_eq!((c.change, &c.announcement), (Change::Added, &Announcement::Disabled));
    }
    let IpAddr::V6(t6) = v6.addr() else { unreachable!() };
    let seen =
        frames(&cap, Duration::from_millis(1500), 1, |f| is_arp_for(f, [192, 0, 2, 11]) || is_na_for(f, t6.octets()));
    assert!(seen.is_empty(), "{} announcement frames", seen.len());
    assert_eq!(lab.neighbour(v4.addr()), Some(OLD_MAC));
    assert_eq!(lab.neighbour(v6.addr()), Some(OLD_MAC));
}

#[test]
fn claim_and_release_are_idempotent() {
    let Some(lab) = lab() else { return };
    let t = &lab.t;
    for addr in [net("192.0.2.20/24"), net("2001:db8::20/64")] {
        lab.rt.block_on(async {
            assert_eq!(t.holds(addr.addr()).await.unwrap(), None);
            let c = t.claim(A_IF, addr, &Announce::none()).await.unwrap();
            assert_eq!(c.change, Change::Added);
            let h = t.holds(addr.addr()).await.unwrap().unwrap();
            assert_eq!((h.iface.as_str(), h.prefix_len), (A_IF, addr.prefix_len()));
            let c = t.claim(A_IF, addr, &Announce::none()).await.unwrap();
            assert_eq!(c.change, Change::AlreadyPresent);
            assert_eq!(t.release(A_IF, addr).await.unwrap(), Released::Removed);
            assert_eq!(t.holds(addr.addr()).await.unwrap(), None);
            assert_eq!(t.release(A_IF, addr).await.unwrap(), Released::Absent);
        });
    }
}

/// A release stops the repeats: a released address is not announced.
#[test]
fn release_stops_pending_announcements() {
    let Some(lab) = lab() else { return };
    let addr = net("192.0.2.30/24");
    let cap = lab.capture();
    let announce = Announce { count: 5, interval: Duration::from_millis(200), arp_reply: false };
    let c = lab.rt.block_on(lab.t.claim(A_IF, addr, &announce)).unwrap();
    assert_eq!(lab.rt.block_on(lab.t.release(A_IF, addr)).unwrap(), Released::Removed);
    assert!(matches!(lab.rt.block_on(c.announced()), Err(Error::Cancelled(_))));
    let got = frames(&cap, Duration::from_millis(1200), 5, |f| is_arp_for(f, [192, 0, 2, 30]));
    assert_eq!(got.len(), 1, "only the first round went out");
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let Some(lab) = lab() else { return };
    let t = &lab.t;
    lab.rt.block_on(async {
        let addr = net("192.0.2.40/24");
        let e = t.claim("nosuch0", addr, &Announce::none()).await.unwrap_err();
        assert!(matches!(&e, Error::NoSuchInterface(n) if n == "nosuch0"), "{e}");
        assert!(e.to_string().contains("nosuch0"));
        let e = t.release("nosuch0", addr).await.unwrap_err();
        assert!(matches!(e, Error::NoSuchInterface(_)), "{e}");
        let e = t.claim("bad/name", addr, &Announce::none()).await.unwrap_err();
        assert!(matches!(e, Error::BadInterfaceName(_)), "{e}");

        // An interface that is down.
        lab.ha.link().add(LinkVeth::new("hfc0", "hfd0").build()).execute().await.unwrap();
        let e = t.claim("hfc0", addr, &Announce::default()).await.unwrap_err();
        assert!(matches!(e, Error::InterfaceDown(_)), "{e}");
        assert_eq!(t.holds(addr.addr()).await.unwrap(), None);

        // Held with another prefix length, or on another interface.
        t.claim(A_IF, addr, &Announce::none()).await.unwrap();
        let e = t.claim(A_IF, net("192.0.2.40/25"), &Announce::none()).await.unwrap_err();
        assert!(matches!(e, Error::PrefixMismatch { held: 24, wanted: 25, .. }), "{e}");
        let e = t.release(A_IF, net("192.0.2.40/25")).await.unwrap_err();
        assert!(matches!(e, Error::PrefixMismatch { .. }), "{e}");
        lab.ha.link().set(LinkUnspec::new_with_name("hfc0").up().build()).execute().await.unwrap();
        let e = t.claim("hfc0", addr, &Announce::none()).await.unwrap_err();
        assert!(matches!(&e, Error::HeldElsewhere { other, .. } if other == A_IF), "{e}");
        assert_eq!(t.holds(addr.addr()).await.unwrap().unwrap().iface, A_IF);

        let e = t.claim(A_IF, net("224.0.0.9/32"), &Announce::none()).await.unwrap_err();
        assert!(matches!(e, Error::BadAddress { .. }), "{e}");
    });
}

/// A refused release changes nothing: the repeats of the claim go on.
#[test]
fn refused_release_keeps_the_announcements() {
    let Some(lab) = lab() else { return };
    let addr = net("192.0.2.31/24");
    let announce = Announce { count: 3, interval: Duration::from_millis(100), arp_reply: false };
    let c = lab.rt.block_on(lab.t.claim(A_IF, addr, &announce)).unwrap();
    let e = lab.rt.block_on(lab.t.release(A_IF, net("192.0.2.31/25"))).unwrap_err();
    assert!(matches!(e, Error::PrefixMismatch { .. }), "{e}");
    assert_eq!(lab.rt.block_on(c.announced()).unwrap(), 3);
    assert!(lab.rt.block_on(lab.t.holds(addr.addr())).unwrap().is_some());
}
