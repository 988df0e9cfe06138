//! Routing of inner packets to peers by destination address (server side).
//!
//! Each connected client owns its tunnel address(es) and its `iroute` networks. Lookups are
//! longest-prefix-match: host routes in a hash map, shorter prefixes in a list ordered from
//! longest to shortest (a handful per server).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A peer's identifier (its P_DATA_V2 peer-id).
pub type PeerId = u32;

/// Destination → peer.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    hosts4: HashMap<Ipv4Addr, PeerId>,
    hosts6: HashMap<Ipv6Addr, PeerId>,
    nets4: Vec<(u32, u8, PeerId)>,
    nets6: Vec<(u128, u8, PeerId)>,
}

fn mask4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

fn mask6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix.min(128)))
    }
}

impl RouteTable {
    /// Empty table.
    pub fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Routes `net/prefix` to `peer` (host routes for /32 and /128).
    pub fn add(&mut self, net: IpAddr, prefix: u8, peer: PeerId) {
        match net {
            IpAddr::V4(a) if prefix >= 32 => {
                self.hosts4.insert(a, peer);
            }
            IpAddr::V6(a) if prefix >= 128 => {
                self.hosts6.insert(a, peer);
            }
            IpAddr::V4(a) => {
                self.nets4
                    .push((u32::from(a) & mask4(prefix), prefix, peer));
                self.nets4.sort_by_key(|e| std::cmp::Reverse(e.1));
            }
            IpAddr::V6(a) => {
                self.nets6
                    .push((u128::from(a) & mask6(prefix), prefix, peer));
                self.nets6.sort_by_key(|e| std::cmp::Reverse(e.1));
            }
        }
    }

    /// The peer for an IPv4 destination.
    pub fn lookup4(&self, dst: Ipv4Addr) -> Option<PeerId> {
        if let Some(p) = self.hosts4.get(&dst) {
            return Some(*p);
        }
        let d = u32::from(dst);
        self.nets4
            .iter()
            .find(|(n, p, _)| d & mask4(*p) == *n)
            .map(|e| e.2)
    }

    /// The peer for an IPv6 destination.
    pub fn lookup6(&self, dst: Ipv6Addr) -> Option<PeerId> {
        if let Some(p) = self.hosts6.get(&dst) {
            return Some(*p);
        }
        let d = u128::from(dst);
        self.nets6
            .iter()
            .find(|(n, p, _)| d & mask6(*p) == *n)
            .map(|e| e.2)
    }

    /// The peer for the destination of an IP packet; `None` if not routed to a peer or not IP.
    pub fn lookup_packet(&self, packet: &[u8]) -> Option<PeerId> {
        match packet_dst(packet)? {
            IpAddr::V4(a) => self.lookup4(a),
            IpAddr::V6(a) => self.lookup6(a),
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.hosts4.len() + self.hosts6.len() + self.nets4.len() + self.nets6.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Destination address of an IPv4/IPv6 packet.
pub fn packet_dst(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]))),
        6 if p.len() >= 40 => {
            let b: [u8; 16] = p[24..40].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Source address of an IPv4/IPv6 packet.
pub fn packet_src(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]))),
        6 if p.len() >= 40 => {
            let b: [u8; 16] = p[8..24].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut t = RouteTable::new();
        t.add("198.19.0.2".parse().unwrap(), 32, 1);
        t.add("198.19.50.0".parse().unwrap(), 24, 2);
        t.add("198.19.50.128".parse().unwrap(), 25, 3);
        t.add("2001:db8::1000".parse().unwrap(), 128, 4);
        t.add("2001:db8:50::".parse().unwrap(), 48, 5);
        assert_eq!(t.lookup4("198.19.0.2".parse().unwrap()), Some(1));
        assert_eq!(t.lookup4("198.19.50.7".parse().unwrap()), Some(2));
        assert_eq!(t.lookup4("198.19.50.200".parse().unwrap()), Some(3));
        assert_eq!(t.lookup4("198.19.0.3".parse().unwrap()), None);
        assert_eq!(t.lookup6("2001:db8::1000".parse().unwrap()), Some(4));
        assert_eq!(t.lookup6("2001:db8:50::9".parse().unwrap()), Some(5));
        assert_eq!(t.lookup6("2001:db8:51::9".parse().unwrap()), None);
    }

    #[test]
    fn packet_addresses() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[198, 19, 0, 2]);
        v4[16..20].copy_from_slice(&[198, 19, 0, 1]);
        assert_eq!(packet_src(&v4), Some("198.19.0.2".parse().unwrap()));
        assert_eq!(packet_dst(&v4), Some("198.19.0.1".parse().unwrap()));
        assert_eq!(packet_dst(&v4[..19]), None);
        assert_eq!(packet_dst(&[0x60; 39]), None);
        assert_eq!(packet_dst(&[]), None);
    }
}
