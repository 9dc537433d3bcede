//! Announcement payloads, built as bytes (no I/O). The link-layer header is
//! added by the kernel (`AF_PACKET`/`SOCK_DGRAM`), so these start at the ARP
//! header and at the IPv6 header.

use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherType of ARP (RFC 826).
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6 (RFC 8200).
pub const ETH_P_IPV6: u16 = 0x86dd;
/// The Ethernet broadcast address: where ARP announcements go.
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// ff02::1, the all-nodes multicast group an unsolicited NA goes to
/// (RFC 4861 §7.2.6).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The Ethernet address of ff02::1: 33:33 and its last 32 bits (RFC 2464 §7).
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// ARP operation: a request (RFC 5227 §3 "ARP Announcement") or a reply
/// (the other gratuitous form some hosts only honour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request = 1,
    Reply = 2,
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const ARP_LEN: usize = 28;

/// A gratuitous ARP for `addr` held by `mac`: sender and target protocol
/// address both `addr`. A request leaves the target hardware address zero
/// (RFC 5227 §3: "SHOULD be set to all zeroes"); a reply carries the sender's
/// own, which is what Linux requires before it treats a reply as gratuitous
/// (net/ipv4/arp.c, arp_is_garp).
pub fn garp(op: ArpOp, mac: [u8; 6], addr: Ipv4Addr) -> [u8; ARP_LEN] {
    let mut p = [0u8; ARP_LEN];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
    p[4] = 6; // hardware address length
    p[5] = 4; // protocol address length
    p[6..8].copy_from_slice(&(op as u16).to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&addr.octets());
    if op == ArpOp::Reply {
        p[18..24].copy_from_slice(&mac);
    }
    p[24..28].copy_from_slice(&addr.octets());
    p
}

/// Length of the IPv6 packet carrying an NA with one link-layer option:
/// 40 (IPv6) + 24 (NA) + 8 (option).
pub const NA_LEN: usize = 72;

/// An unsolicited Neighbour Advertisement for `target` (RFC 4861 §4.4,
/// §7.2.6) in its IPv6 packet: from `target` to ff02::1, hop limit 255 (a
/// receiver drops anything else, §7.1.2), Override set, Solicited and Router
/// clear, with the target link-layer address option (type 2) carrying `mac`.
pub fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr) -> [u8; NA_LEN] {
    let mut p = [0u8; NA_LEN];
    p[0] = 0x60; // version 6, traffic class 0, flow label 0
    p[4..6].copy_from_slice(&((NA_LEN - 40) as u16).to_be_bytes());
    p[6] = 58; // next header: ICMPv6
    p[7] = 255; // hop limit
    p[8..24].copy_from_slice(&target.octets());
    p[24..40].copy_from_slice(&ALL_NODES.octets());
    let icmp = 40;
    p[icmp] = 136; // Neighbor Advertisement
    p[icmp + 1] = 0; // code
    p[icmp + 4] = 0x20; // flags R=0 S=0 O=1, then 29 reserved bits
    p[icmp + 8..icmp + 24].copy_from_slice(&target.octets());
    p[icmp + 24] = 2; // option: target link-layer address
    p[icmp + 25] = 1; // its length in units of 8 bytes
    p[icmp + 26..icmp + 32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(&target, &ALL_NODES, &p[icmp..]);
    p[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The ICMPv6 checksum (RFC 4443 §2.3): one's complement of the one's
/// complement sum over the pseudo-header (RFC 8200 §8.1) and the message
/// with its checksum field taken as zero.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u32::from(*b));
            sum += hi | lo;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    // The checksum field (bytes 2..4) counts as zero.
    add(&msg[..2.min(msg.len())]);
    if msg.len() > 4 {
        add(&msg[4..]);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn garp_request_and_reply() {
        let a = Ipv4Addr::new(192, 0, 2, 10);
        let rq = garp(ArpOp::Request, MAC, a);
        assert_eq!(&rq[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&rq[8..14], &MAC);
        assert_eq!(&rq[14..18], &[192, 0, 2, 10]);
        assert_eq!(&rq[18..24], &[0; 6]);
        assert_eq!(&rq[24..28], &[192, 0, 2, 10]);
        let rp = garp(ArpOp::Reply, MAC, a);
        assert_eq!(&rp[6..8], &[0, 2]);
        assert_eq!(&rp[18..24], &MAC);
    }

    #[test]
    fn na_checksum_sums_to_all_ones() {
        let t: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let p = unsolicited_na(MAC, t);
        // Summing a message with its checksum in place gives 0xffff: fold the
        // whole thing including the stored field.
        let mut sum: u32 = 0;
        let mut words = Vec::new();
        words.extend_from_slice(&t.octets());
        words.extend_from_slice(&ALL_NODES.octets());
        words.extend_from_slice(&32u32.to_be_bytes());
        words.extend_from_slice(&[0, 0, 0, 58]);
        words.extend_from_slice(&p[40..]);
        for w in words.chunks(2) {
            sum += (u32::from(w[0]) << 8) | u32::from(w[1]);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert_eq!(p[40], 136);
        assert_eq!(p[44], 0x20);
        assert_eq!(&p[64..72], &[2, 1, 2, 0x11, 0x22, 0x33, 0x44, 0x55]);
    }

    #[test]
    fn checksum_of_an_odd_length_message_pads_with_zero() {
        let s = Ipv6Addr::LOCALHOST;
        let even = icmpv6_checksum(&s, &s, &[1, 2, 0, 0, 5, 0]);
        let odd = icmpv6_checksum(&s, &s, &[1, 2, 0, 0, 5]);
        // Same words, but the pseudo-header length is one less: the sum is one
        // less, so its complement one more.
        assert_eq!(odd.wrapping_sub(1), even);
    }
}
