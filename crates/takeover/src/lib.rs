//! Service-address takeover: put a floating address on a local interface,
//! tell the link it moved, and take it off again.
//!
//! When a service node dies, its backup claims the address the dead node's
//! clients mount from. Clients keep a neighbour-cache entry mapping that
//! address to the dead node's link-layer address, so after adding the
//! address (through rtnetlink, never by running `ip`) the claim announces
//! it: a gratuitous ARP (RFC 5227 §3 "ARP Announcement" request, and a
//! gratuitous reply for hosts that only honour those) for IPv4, an
//! unsolicited Neighbour Advertisement with the Override flag to ff02::1
//! (RFC 4861 §7.2.6) for IPv6. The first announcement is sent before
//! [`Takeover::claim`] returns; the repeats (RFC 5227 sends two, 2 s apart;
//! the default here is three, 1 s apart) run on a tokio task.
//!
//! ```no_run
//! # async fn f() -> Result<(), takeover::Error> {
//! use takeover::{Announce, Takeover};
//! let t = Takeover::new()?; // inside a tokio runtime
//! let claimed = t.claim("eth0", "10.0.0.1/24".parse().unwrap(), &Announce::default()).await?;
//! println!("{:?}, first announcement after {:?}", claimed.change, claimed.announcement);
//! // ... serve ...
//! t.release("eth0", "10.0.0.1/24".parse().unwrap()).await?;
//! # Ok(()) }
//! ```
//!
//! Semantics the caller can rely on:
//! - Idempotent: claiming an address the interface already has is
//!   [`Change::AlreadyPresent`] (announced all the same: the point of a claim
//!   is that the link learns it); releasing one it does not have is
//!   [`Released::Absent`].
//! - Bad input changes nothing: an interface that does not exist
//!   ([`Error::NoSuchInterface`]) or is down, a multicast or unspecified
//!   address, the address held with another prefix length or on another
//!   interface are all refused before anything is added.
//! - IPv6 addresses are added with `IFA_F_NODAD`: a takeover happens after
//!   the old holder was fenced, and duplicate address detection would keep
//!   the address tentative (unusable) for a second or more.
//! - All sockets (netlink and packet) are opened by [`Takeover::new`], in the
//!   network namespace of the calling thread, and stay there.
//! - Releasing an address (or claiming it again) stops its pending repeats,
//!   so a released address is never announced.
//! - Deleting an IPv4 *primary* address makes the kernel delete the
//!   secondaries of its subnet too unless
//!   `net.ipv4.conf.<iface>.promote_secondaries` is 1; a service address
//!   added beside the host's own address in the same subnet is a secondary,
//!   so releasing it is harmless. A primary being released is logged.
//! - Announcements need an Ethernet interface with ARP (the link type of
//!   Ethernet, bonds, VLANs, bridges, veth); on another (IPoIB, loopback,
//!   `NOARP`) the address is still added and [`Announcement::Skipped`] says
//!   why; clients then learn the new holder only when their entry expires.
#![deny(unsafe_code)]

pub mod frame;
pub mod packet;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use rtnetlink::{AddressMessageBuilder, Handle};
use tokio::task::{AbortHandle, JoinHandle};

pub use ipnet;

/// The longest interface name Linux takes (IFNAMSIZ 16 with its NUL).
const IFNAMSIZ_MAX: usize = 15;
/// At most this many announcement rounds.
pub const MAX_ANNOUNCE_COUNT: u32 = 100;

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface name {0:?} is not valid: 1-{IFNAMSIZ_MAX} bytes, no '/', ':', whitespace or NUL")]
    BadInterfaceName(String),
    #[error("no interface named {0:?} on this host")]
    NoSuchInterface(String),
    #[error("interface {0} is down (a service address is claimed only on an interface that is up)")]
    InterfaceDown(String),
    #[error("{addr} cannot be a service address: {why}")]
    BadAddress { addr: IpNet, why: &'static str },
    #[error("{addr} is on {iface} as /{held}, not /{wanted}: release it with that prefix length first")]
    PrefixMismatch { addr: IpAddr, iface: String, held: u8, wanted: u8 },
    #[error("{addr} is already on interface {other}, not on {iface}")]
    HeldElsewhere { addr: IpAddr, iface: String, other: String },
    #[error("announcement settings: {0}")]
    BadAnnounce(String),
    #[error("Takeover::new needs a tokio runtime (it spawns the netlink connection)")]
    NoRuntime,
    #[error("opening the {what} socket: {source}")]
    Open { what: &'static str, source: std::io::Error },
    #[error("netlink, {context}: {source}")]
    Netlink { context: String, source: rtnetlink::Error },
    #[error("announcing {addr} on {iface}: {source}")]
    Announce { addr: IpAddr, iface: String, source: std::io::Error },
    #[error("the announcements for {0} were stopped: it was released or claimed again")]
    Cancelled(IpAddr),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a claim announces the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// Rounds of announcements (0: none). One round is an ARP request, plus a
    /// reply when `arp_reply`, for IPv4; one NA for IPv6.
    pub count: u32,
    /// Time between rounds.
    pub interval: Duration,
    /// Also send a gratuitous ARP reply in each IPv4 round.
    pub arp_reply: bool,
}

impl Default for Announce {
    fn default() -> Self {
        Announce { count: 3, interval: Duration::from_secs(1), arp_reply: true }
    }
}

impl Announce {
    /// Add the address without telling the link.
    pub fn none() -> Self {
        Announce { count: 0, ..Announce::default() }
    }

    fn check(&self) -> Result<()> {
        if self.count > MAX_ANNOUNCE_COUNT {
            return Err(Error::BadAnnounce(format!("count {} is over {MAX_ANNOUNCE_COUNT}", self.count)));
        }
        if self.count > 1 && self.interval.is_zero() {
            return Err(Error::BadAnnounce("repeated announcements need a non-zero interval".into()));
        }
        Ok(())
    }
}

/// What a claim changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    AlreadyPresent,
}

/// What a release changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    Removed,
    Absent,
}

/// What a claim announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// The first round went out `first_after` the call to `claim` began;
    /// `repeats` more follow on a task (see [`Claimed::announced`]).
    Sent { mac: [u8; 6], first_after: Duration, repeats: u32 },
    /// `Announce::count` was 0.
    Disabled,
    /// The interface cannot carry these announcements.
    Skipped(String),
}

/// A claimed address.
#[derive(Debug)]
pub struct Claimed {
    pub iface: String,
    pub ifindex: u32,
    pub addr: IpNet,
    pub change: Change,
    pub announcement: Announcement,
    repeats: Option<JoinHandle<Result<u32>>>,
}

impl Claimed {
    /// Wait for the repeated announcements; the number of rounds sent in
    /// all, the first included. Dropping the `Claimed` instead lets them run.
    pub async fn announced(self) -> Result<u32> {
        let first = u32::from(matches!(self.announcement, Announcement::Sent { .. }));
        match self.repeats {
            None => Ok(first),
            Some(task) => match task.await {
                Ok(r) => r.map(|n| n + first),
                Err(_) => Err(Error::Cancelled(self.addr.addr())),
            },
        }
    }
}

/// Which interface holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub iface: String,
    pub ifindex: u32,
    pub prefix_len: u8,
}

/// The interface facts a claim needs.
struct Link {
    name: String,
    index: u32,
    flags: LinkFlags,
    kind: LinkLayerType,
    mac: Option<[u8; 6]>,
}

/// Address takeover on this host (one network namespace). Cheap to share:
/// every method takes `&self`.
#[derive(Debug)]
pub struct Takeover {
    handle: Handle,
    sender: Arc<packet::Sender>,
    /// Pending repeats per address, stopped by a release or a new claim.
    repeats: Mutex<HashMap<IpAddr, AbortHandle>>,
}

impl Takeover {
    /// Open the netlink and packet sockets (in the calling thread's network
    /// namespace) and spawn the netlink connection on the current tokio
    /// runtime. Needs `CAP_NET_ADMIN` to change addresses and `CAP_NET_RAW`
    /// for the packet socket.
    pub fn new() -> Result<Self> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| Error::Open { what: "netlink", source })?;
        let sender = packet::Sender::open().map_err(|source| Error::Open { what: "AF_PACKET", source })?;
        rt.spawn(conn);
        Ok(Takeover { handle, sender: Arc::new(sender), repeats: Mutex::new(HashMap::new()) })
    }

    /// Add `addr` to `iface` (if it is not there yet) and announce it.
    /// Returns once the first announcement is sent. An [`Error::Announce`]
    /// from here means the address is on the interface but its first
    /// announcement failed; claiming again (idempotent) retries it.
    pub async fn claim(&self, iface: &str, addr: IpNet, announce: &Announce) -> Result<Claimed> {
        let start = Instant::now();
        check_addr(addr)?;
        announce.check()?;
        let link = self.link(iface).await?;
        if !link.flags.contains(LinkFlags::Up) {
            return Err(Error::InterfaceDown(link.name));
        }
        let change = match self.find(addr.addr()).await? {
            Some(h) if h.ifindex != link.index => {
                return Err(Error::HeldElsewhere { addr: addr.addr(), iface: link.name, other: h.iface })
            }
            Some(h) if h.prefix_len != addr.prefix_len() => {
                return Err(Error::PrefixMismatch {
                    addr: addr.addr(),
                    iface: link.name,
                    held: h.prefix_len,
                    wanted: addr.prefix_len(),
                })
            }
            Some(_) => Change::AlreadyPresent,
            None => self.add(&link, addr).await?,
        };
        self.stop_repeats(addr.addr());
        let mut repeats = None;
        let announcement = match announceable(&link) {
            Err(why) => {
                tracing::warn!(%addr, iface = %link.name, "not announced: {why}");
                Announcement::Skipped(why)
            }
            Ok(_) if announce.count == 0 => Announcement::Disabled,
            Ok(mac) => {
                let round = Round {
                    sender: self.sender.clone(),
                    ifindex: link.index,
                    iface: link.name.clone(),
                    mac,
                    addr: addr.addr(),
                    arp_reply: announce.arp_reply,
                };
                round.send()?;
                let first_after = start.elapsed();
                tracing::info!(%addr, iface = %link.name, ?change, ?first_after, "claimed and announced");
                let more = announce.count - 1;
                if more > 0 {
                    let task = tokio::spawn(repeat(round, more, announce.interval));
                    self.repeats
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(addr.addr(), task.abort_handle());
                    repeats = Some(task);
                }
                Announcement::Sent { mac, first_after, repeats: more }
            }
        };
        Ok(Claimed { iface: link.name, ifindex: link.index, addr, change, announcement, repeats })
    }

    /// Take `addr` off `iface`; stops its pending announcements first.
    pub async fn release(&self, iface: &str, addr: IpNet) -> Result<Released> {
        check_addr(addr)?;
        let link = self.link(iface).await?;
        let mut primary = false;
        let mut found = false;
        for m in self.addresses().await? {
            if m.header.index != link.index || address_of(&m) != Some(addr.addr()) {
                continue;
            }
            if m.header.prefix_len != addr.prefix_len() {
                return Err(Error::PrefixMismatch {
                    addr: addr.addr(),
                    iface: link.name,
                    held: m.header.prefix_len,
                    wanted: addr.prefix_len(),
                });
            }
            found = true;
            primary = addr.addr().is_ipv4() && !flags_of(&m).contains(AddressFlags::Secondary);
        }
        // Checked, so stop the repeats now: none may follow the release.
        self.stop_repeats(addr.addr());
        if !found {
            return Ok(Released::Absent);
        }
        if primary {
            tracing::warn!(%addr, iface = %link.name,
                "releasing a primary IPv4 address: its subnet's secondaries go too unless promote_secondaries is set");
        }
        let msg = address_message(link.index, addr);
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(Released::Removed),
            Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => Ok(Released::Absent),
            Err(source) => Err(Error::Netlink { context: format!("deleting {addr} from {}", link.name), source }),
        }
    }

    /// The interface holding `addr`, if any interface of this namespace does
    /// (an IPv6 address whose duplicate address detection failed does not
    /// count: the kernel does not use it).
    pub async fn holds(&self, addr: IpAddr) -> Result<Option<Holder>> {
        self.find(addr).await
    }

    async fn find(&self, addr: IpAddr) -> Result<Option<Holder>> {
        let Some(m) = self
            .addresses()
            .await?
            .into_iter()
            .find(|m| address_of(m) == Some(addr) && !flags_of(m).contains(AddressFlags::Dadfailed))
        else {
            return Ok(None);
        };
        let iface = match self.link_by_index(m.header.index).await {
            Ok(l) => l.name,
            Err(_) => format!("#{}", m.header.index),
        };
        Ok(Some(Holder { iface, ifindex: m.header.index, prefix_len: m.header.prefix_len }))
    }

    async fn add(&self, link: &Link, addr: IpNet) -> Result<Change> {
        let mut req = self.handle.address().add(link.index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(Change::Added),
            // Added by someone else since we looked: what we wanted.
            Err(e) if errno(&e) == Some(EEXIST) => Ok(Change::AlreadyPresent),
            Err(source) => Err(Error::Netlink { context: format!("adding {addr} to {}", link.name), source }),
        }
    }

    async fn addresses(&self) -> Result<Vec<AddressMessage>> {
        self.handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| Error::Netlink { context: "listing addresses".into(), source })
    }

    async fn link(&self, name: &str) -> Result<Link> {
        check_iface(name)?;
        let msg = self.handle.link().get().match_name(name.to_string()).execute().try_next().await;
        match msg {
            Ok(Some(m)) => Ok(link_of(m)),
            Ok(None) => Err(Error::NoSuchInterface(name.into())),
            Err(e) if errno(&e) == Some(ENODEV) => Err(Error::NoSuchInterface(name.into())),
            Err(source) => Err(Error::Netlink { context: format!("looking up interface {name}"), source }),
        }
    }

    async fn link_by_index(&self, index: u32) -> Result<Link> {
        let msg = self.handle.link().get().match_index(index).execute().try_next().await;
        match msg {
            Ok(Some(m)) => Ok(link_of(m)),
            Ok(None) => Err(Error::NoSuchInterface(format!("#{index}"))),
            Err(source) => Err(Error::Netlink { context: format!("looking up interface #{index}"), source }),
        }
    }

    fn stop_repeats(&self, addr: IpAddr) {
        let old = self.repeats.lock().unwrap_or_else(PoisonError::into_inner).remove(&addr);
        if let Some(task) = old {
            task.abort();
        }
    }
}

/// One round of announcements for one address.
struct Round {
    sender: Arc<packet::Sender>,
    ifindex: u32,
    iface: String,
    mac: [u8; 6],
    addr: IpAddr,
    arp_reply: bool,
}

impl Round {
    fn send(&self) -> Result<()> {
        let r = match self.addr {
            IpAddr::V4(a) => self.send_v4(a),
            IpAddr::V6(a) => self.send_v6(a),
        };
        r.map_err(|source| Error::Announce { addr: self.addr, iface: self.iface.clone(), source })
    }

    fn send_v4(&self, a: Ipv4Addr) -> std::io::Result<()> {
        let rq = frame::garp(frame::ArpOp::Request, self.mac, a);
        self.sender.send(self.ifindex, frame::ETH_P_ARP, frame::BROADCAST, &rq)?;
        if self.arp_reply {
            let rp = frame::garp(frame::ArpOp::Reply, self.mac, a);
            self.sender.send(self.ifindex, frame::ETH_P_ARP, frame::BROADCAST, &rp)?;
        }
        Ok(())
    }

    fn send_v6(&self, a: Ipv6Addr) -> std::io::Result<()> {
        let na = frame::unsolicited_na(self.mac, a);
        self.sender.send(self.ifindex, frame::ETH_P_IPV6, frame::ALL_NODES_MAC, &na)
    }
}

async fn repeat(round: Round, count: u32, interval: Duration) -> Result<u32> {
    for sent in 0..count {
        tokio::time::sleep(interval).await;
        if let Err(e) = round.send() {
            tracing::warn!("{e}");
            return if sent == 0 { Err(e) } else { Ok(sent) };
        }
    }
    Ok(count)
}

fn check_iface(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > IFNAMSIZ_MAX
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if bad {
        return Err(Error::BadInterfaceName(name.into()));
    }
    Ok(())
}

fn check_addr(addr: IpNet) -> Result<()> {
    let a = addr.addr();
    let why = if a.is_unspecified() {
        Some("it is the unspecified address")
    } else if a.is_multicast() {
        Some("it is a multicast address")
    } else if a.is_loopback() {
        Some("it is a loopback address")
    } else if a == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("it is the broadcast address")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::BadAddress { addr, why }),
        None => Ok(()),
    }
}

/// The link-layer address to announce, or why this link cannot be announced.
fn announceable(link: &Link) -> Result<[u8; 6], String> {
    if link.kind != LinkLayerType::Ether {
        return Err(format!(
            "link type {:?} is not Ethernet (gratuitous ARP and NA are sent only on Ethernet links)",
            link.kind
        ));
    }
    if link.flags.contains(LinkFlags::Noarp) {
        return Err("the interface has NOARP set".into());
    }
    link.mac.ok_or_else(|| "the interface has no 6-byte link-layer address".into())
}

fn link_of(m: LinkMessage) -> Link {
    let mut name = String::new();
    let mut mac = None;
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n,
            LinkAttribute::Address(b) => mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            _ => {}
        }
    }
    Link { name, index: m.header.index, flags: m.header.flags, kind: m.header.link_layer_type, mac }
}

/// The address of an address message: IFA_LOCAL (for a point-to-point IPv4
/// address IFA_ADDRESS is the peer), else IFA_ADDRESS.
fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(l) => return Some(*l),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address
}

fn flags_of(m: &AddressMessage) -> AddressFlags {
    m.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(m.header.flags.bits())))
}

fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    match addr.addr() {
        IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(a, addr.prefix_len()).build(),
        IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(a, addr.prefix_len()).build(),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for bad in ["", "a/b", "eth 0", "a:1", "0123456789abcdef", ".", ".."] {
            assert!(matches!(check_iface(bad), Err(Error::BadInterfaceName(_))), "{bad:?}");
        }
        for good in ["eth0", "bond0.100", "0123456789abcde", "ib0"] {
            assert!(check_iface(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn addresses_refused() {
        for bad in ["0.0.0.0/0", "224.0.0.1/32", "127.0.0.2/8", "255.255.255.255/32", "::/0", "ff02::1/128", "::1/128"]
        {
            let n: IpNet = bad.parse().unwrap();
            assert!(matches!(check_addr(n), Err(Error::BadAddress { .. })), "{bad}");
        }
        assert!(check_addr("10.0.0.1/24".parse().unwrap()).is_ok());
        assert!(check_addr("2001:db8::1/64".parse().unwrap()).is_ok());
    }

    #[test]
    fn announce_limits() {
        assert!(Announce::default().check().is_ok());
        assert!(Announce::none().check().is_ok());
        let many = Announce { count: MAX_ANNOUNCE_COUNT + 1, ..Announce::default() };
        assert!(matches!(many.check(), Err(Error::BadAnnounce(_))));
        let busy = Announce { count: 2, interval: Duration::ZERO, arp_reply: false };
        assert!(matches!(busy.check(), Err(Error::BadAnnounce(_))));
    }
}
