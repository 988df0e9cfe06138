//! Layer 2 (`dev tap`): Ethernet frames instead of IP packets, and the server's table of
//! which client owns which MAC address.
//!
//! As OpenVPN's server in tap mode, a frame read from the tap device goes to the client that
//! sent from its destination MAC (learned from the frames clients send), to every client when
//! the destination is broadcast or multicast, and nowhere when the address is unknown. A
//! client may own at most [`MACS_PER_PEER`] addresses (OpenVPN's `max-routes-per-client`
//! default), and the table as a whole [`MAX_MACS`]: a client that sends from random source
//! addresses cannot grow it without bound, its extra frames are dropped as `mac_limit`.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tunscope_proto::server::PeerId;

/// Ethernet header length.
pub const HEADER: usize = 14;
/// Addresses one client may own.
pub const MACS_PER_PEER: u32 = 256;
/// Addresses the table holds in all.
pub const MAX_MACS: usize = 65_536;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_VLAN: u16 = 0x8100;

/// A MAC address.
pub type Mac = [u8; 6];

/// Whether `f` is long enough to be an Ethernet frame.
pub fn is_frame(f: &[u8]) -> bool {
    f.len() >= HEADER
}

/// Destination address (`f` must be a frame).
pub fn dst(f: &[u8]) -> Mac {
    let mut m = [0; 6];
    m.copy_from_slice(&f[..6]);
    m
}

/// Source address (`f` must be a frame).
pub fn src(f: &[u8]) -> Mac {
    let mut m = [0; 6];
    m.copy_from_slice(&f[6..12]);
    m
}

/// Broadcast or multicast (the group bit of the first octet).
pub fn is_group(m: &Mac) -> bool {
    m[0] & 1 == 1
}

fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

/// The IP packet a frame carries (untagged IPv4/IPv6), for MSS clamping.
pub fn ip_payload_mut(f: &mut [u8]) -> Option<&mut [u8]> {
    match ethertype(f) {
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => f.get_mut(HEADER..),
        _ => None,
    }
}

/// The pcapng-style Ethernet header put in front of an IP packet (captures of a tap engine
/// have one link type: its encrypted records get a header too).
pub fn header_for_ip(packet: &[u8]) -> [u8; HEADER] {
    let mut h = [0; HEADER];
    let t = if packet.first().is_some_and(|b| b >> 4 == 6) {
        ETHERTYPE_IPV6
    } else {
        ETHERTYPE_IPV4
    };
    h[12..].copy_from_slice(&t.to_be_bytes());
    h
}

/// Frames by kind, in one direction.
#[derive(Default)]
pub struct FrameCounts {
    unicast: AtomicU64,
    broadcast: AtomicU64,
    multicast: AtomicU64,
    arp: AtomicU64,
    vlan: AtomicU64,
}

/// [`FrameCounts`] as reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameReport {
    /// Frames to one station.
    pub unicast: u64,
    /// Frames to ff:ff:ff:ff:ff:ff.
    pub broadcast: u64,
    /// Frames to other group addresses (IPv4/IPv6 multicast, STP …).
    pub multicast: u64,
    /// ARP frames (of any destination).
    pub arp: u64,
    /// 802.1Q-tagged frames (of any destination).
    pub vlan: u64,
}

impl FrameReport {
    /// Frames counted.
    pub fn total(&self) -> u64 {
        self.unicast + self.broadcast + self.multicast
    }
}

impl FrameCounts {
    /// Counts one frame (`f` must be a frame).
    pub fn count(&self, f: &[u8]) {
        let d = dst(f);
        let c = if d == [0xff; 6] {
            &self.broadcast
        } else if is_group(&d) {
            &self.multicast
        } else {
            &self.unicast
        };
        c.fetch_add(1, Ordering::Relaxed);
        match ethertype(f) {
            ETHERTYPE_ARP => {
                self.arp.fetch_add(1, Ordering::Relaxed);
            }
            ETHERTYPE_VLAN => {
                self.vlan.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// The counts now.
    pub fn report(&self) -> FrameReport {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FrameReport {
            unicast: l(&self.unicast),
            broadcast: l(&self.broadcast),
            multicast: l(&self.multicast),
            arp: l(&self.arp),
            vlan: l(&self.vlan),
        }
    }
}

/// Learned addresses: which peer (in which session: peer-ids are reused) owns a MAC.
#[derive(Default)]
pub struct MacTable {
    inner: RwLock<Learned>,
}

#[derive(Default)]
struct Learned {
    owner: HashMap<Mac, (PeerId, u64)>,
    count: HashMap<(PeerId, u64), u32>,
}

/// What learning a source address did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learn {
    /// Known already, or learned now.
    Owned,
    /// The peer (or the table) holds as many addresses as it may.
    Full,
}

impl MacTable {
    /// Records that `mac` is behind `peer` (of `session`); a station that moved to another
    /// client is re-learned there.
    pub fn learn(&self, mac: Mac, peer: PeerId, session: u64) -> Learn {
        let key = (peer, session);
        {
            let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if t.owner.get(&mac) == Some(&key) {
                return Learn::Owned;
            }
        }
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let t = &mut *t;
        if t.owner.get(&mac) == Some(&key) {
            return Learn::Owned;
        }
        let mine = t.count.get(&key).copied().unwrap_or(0);
        if mine >= MACS_PER_PEER || (t.owner.len() >= MAX_MACS && !t.owner.contains_key(&mac)) {
            return Learn::Full;
        }
        if let Some(old) = t.owner.insert(mac, key)
            && let Some(n) = t.count.get_mut(&old)
        {
            *n = n.saturating_sub(1);
        }
        *t.count.entry(key).or_insert(0) += 1;
        Learn::Owned
    }

    /// The peer and session behind `mac`, if learned.
    pub fn lookup(&self, mac: &Mac) -> Option<(PeerId, u64)> {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        t.owner.get(mac).copied()
    }

    /// Forgets the addresses of sessions for which `alive` is false (peers that left).
    pub fn retain(&self, alive: impl Fn(PeerId, u64) -> bool) {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        t.owner.retain(|_, (p, s)| alive(*p, *s));
        t.count.retain(|(p, s), _| alive(*p, *s));
    }

    /// Addresses learned.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .owner
            .len()
    }

    /// True when nothing is learned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u32) -> Mac {
        let b = i.to_be_bytes();
        [0x02, 0, b[0], b[1], b[2], b[3]]
    }

    #[test]
    fn a_peer_owns_at_most_its_share_and_stations_move() {
        let t = MacTable::default();
        for i in 0..MACS_PER_PEER {
            assert_eq!(t.learn(mac(i), 1, 7), Learn::Owned);
        }
        assert_eq!(t.learn(mac(9999), 1, 7), Learn::Full);
        // Known addresses stay owned; another peer is not affected.
        assert_eq!(t.learn(mac(3), 1, 7), Learn::Owned);
        assert_eq!(t.learn(mac(9999), 2, 1), Learn::Owned);
        // A station moves to peer 2: peer 1 gets room again.
        assert_eq!(t.learn(mac(5), 2, 1), Learn::Owned);
        assert_eq!(t.lookup(&mac(5)), Some((2, 1)));
        assert_eq!(t.learn(mac(10_000), 1, 7), Learn::Owned);
        // Peer 1 leaves: its addresses go.
        t.retain(|p, _| p != 1);
        assert_eq!(t.lookup(&mac(3)), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn frames_are_classified() {
        let c = FrameCounts::default();
        let mut f = [0u8; 60];
        f[..6].copy_from_slice(&[0xff; 6]);
        f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        c.count(&f);
        f[..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0, 0, 1]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        c.count(&f);
        f[..6].copy_from_slice(&mac(1));
        c.count(&f);
        let r = c.report();
        assert_eq!((r.broadcast, r.multicast, r.unicast, r.arp), (1, 1, 1, 1));
        assert!(ip_payload_mut(&mut f).is_some());
        assert!(!is_frame(&f[..13]));
    }
}
