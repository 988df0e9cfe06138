//! Decoding captured frames into the few layers scenarios look at: ARP, IPv4/IPv6 (with
//! fragmentation), TCP (flags, MSS), UDP, ICMP, DNS messages and OpenVPN headers.
//!
//! Hand-written and bounds-checked: a capture holds whatever the network carried, so every
//! read is checked and a short or odd frame decodes as far as it goes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::file::LinkType;

/// Network layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L3 {
    /// ARP (operation, sender and target protocol addresses).
    Arp {
        /// 1 request, 2 reply.
        op: u16,
        /// Sender IPv4 address.
        sender: Ipv4Addr,
        /// Target IPv4 address.
        target: Ipv4Addr,
    },
    /// IPv4 or IPv6.
    Ip(IpHdr),
    /// A plaintext control message from an engine's control tap.
    Text(String),
    /// Something else (ethertype).
    Other(u16),
}

/// An IP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpHdr {
    /// Source.
    pub src: IpAddr,
    /// Destination.
    pub dst: IpAddr,
    /// Transport protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// IPv4 identification (0 for IPv6 unless fragmented).
    pub id: u32,
    /// Don't-fragment bit (IPv4).
    pub df: bool,
    /// Part of a fragmented datagram.
    pub fragment: bool,
    /// Fragment offset in bytes.
    pub frag_offset: u16,
    /// Total length as the header says.
    pub total_len: u32,
}

/// Transport layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Sequence number.
        seq: u32,
        /// Acknowledgment number.
        ack: u32,
        /// Flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
        flags: u8,
        /// MSS option.
        mss: Option<u16>,
    },
    /// UDP.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMP or ICMPv6.
    Icmp {
        /// Type.
        typ: u8,
        /// Code.
        code: u8,
    },
    /// IPsec ESP (IP protocol 50).
    Esp(crate::vpn::Esp),
    /// Not decoded (non-first fragment, other protocol, or no IP).
    None,
}

/// A decoded frame.
#[derive(Clone, Debug)]
pub struct Pkt<'a> {
    /// Network layer.
    pub l3: L3,
    /// Transport layer.
    pub l4: L4,
    /// Transport payload (empty when not decoded).
    pub payload: &'a [u8],
}

impl Pkt<'_> {
    /// The IP header, if any.
    pub fn ip(&self) -> Option<&IpHdr> {
        match &self.l3 {
            L3::Ip(h) => Some(h),
            _ => None,
        }
    }

    /// Source and destination ports (TCP/UDP).
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => Some((sport, dport)),
            _ => None,
        }
    }

    /// A one-line description (tcpdump-like), for evidence in reports.
    pub fn describe(&self) -> String {
        match &self.l3 {
            L3::Arp { op, sender, target } => format!(
                "ARP {} {target} from {sender}",
                if *op == 1 { "who-has" } else { "reply" }
            ),
            L3::Other(t) => format!("ethertype 0x{t:04x}"),
            L3::Text(t) => format!("control message: {t}"),
            L3::Ip(h) => {
                let ports = self.ports();
                let ep = |a: IpAddr, p: Option<u16>| match (a, p) {
                    (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
                    (a, Some(p)) => format!("{a}:{p}"),
                    (a, None) => a.to_string(),
                };
                let (sp, dp) = ports.map_or((None, None), |(s, d)| (Some(s), Some(d)));
                let proto = match &self.l4 {
                    L4::Tcp { flags, .. } => format!("TCP [{}]", tcp_flags(*flags)),
                    L4::Udp { .. } => "UDP".to_owned(),
                    L4::Icmp { typ, code } => format!("ICMP type {typ} code {code}"),
                    L4::Esp(e) => format!("ESP spi 0x{:08x} seq {}", e.spi, e.seq),
                    L4::None if h.fragment => format!("fragment (proto {})", h.proto),
                    L4::None => format!("proto {}", h.proto),
                };
                let mut s = format!(
                    "{} > {} {proto} len {}",
                    ep(h.src, sp),
                    ep(h.dst, dp),
                    h.total_len
                );
                if let Some(d) = self.dns() {
                    s.push_str(&format!(" DNS {}", d.describe()));
                }
                s
            }
        }
    }

    /// The DNS message in a UDP packet to or from port 53.
    pub fn dns(&self) -> Option<DnsInfo> {
        match self.l4 {
            L4::Udp { sport, dport } if sport == 53 || dport == 53 => dns_info(self.payload),
            _ => None,
        }
    }
}

impl Pkt<'_> {
    /// The DHCP message in a UDP packet between ports 67 and 68.
    pub fn dhcp(&self) -> Option<DhcpInfo> {
        match self.l4 {
            L4::Udp { sport, dport }
                if matches!((sport, dport), (67, 68) | (68, 67) | (67, 67)) =>
            {
                dhcp_info(self.payload)
            }
            _ => None,
        }
    }
}

/// The parts of a DHCP message that say what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpInfo {
    /// Transaction id.
    pub xid: u32,
    /// Message type (`discover`, `offer`, `request`, `ack`, `nak`, …); `bootp` without one.
    pub kind: &'static str,
    /// The address it is about: offered/acknowledged (`yiaddr`), requested (option 50),
    /// or the client's own (`ciaddr`).
    pub address: Option<Ipv4Addr>,
}

impl DhcpInfo {
    /// `discover` / `offer 198.19.10.100` / `ack 198.19.10.100`.
    pub fn describe(&self) -> String {
        match self.address {
            Some(a) => format!("{} {a}", self.kind),
            None => self.kind.to_owned(),
        }
    }
}

/// Decodes a BOOTP/DHCP message (RFC 2131/2132): fixed header, magic cookie, options.
pub fn dhcp_info(p: &[u8]) -> Option<DhcpInfo> {
    const COOKIE: [u8; 4] = [99, 130, 83, 99];
    let op = *p.first()?;
    if !(op == 1 || op == 2) || p.get(236..240)? != COOKIE {
        return None;
    }
    let xid = be32(p, 4)?;
    let ip_at = |at: usize| -> Option<Ipv4Addr> {
        let b: [u8; 4] = p.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b)).filter(|a| !a.is_unspecified())
    };
    let (ciaddr, yiaddr) = (ip_at(12), ip_at(16));
    let mut kind = None;
    let mut requested = None;
    let mut i = 240;
    while let Some(&code) = p.get(i) {
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let len = usize::from(*p.get(i + 1)?);
                let v = p.get(i + 2..i + 2 + len)?;
                match (code, v) {
                    (53, [t]) => kind = Some(*t),
                    (50, [a, b, c, d]) => requested = Some(Ipv4Addr::new(*a, *b, *c, *d)),
                    _ => {}
                }
                i += 2 + len;
            }
        }
    }
    let kind = match kind {
        None => "bootp",
        Some(1) => "discover",
        Some(2) => "offer",
        Some(3) => "request",
        Some(4) => "decline",
        Some(5) => "ack",
        Some(6) => "nak",
        Some(7) => "release",
        Some(8) => "inform",
        Some(_) => "dhcp",
    };
    let address = match kind {
        "offer" | "ack" => yiaddr,
        "request" | "decline" => requested.or(ciaddr),
        "discover" | "nak" => None,
        _ => ciaddr.or(yiaddr),
    };
    Some(DhcpInfo { xid, kind, address })
}

/// Flags as letters (`S`, `S.`, `F.`, `R`, `P.`).
pub fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [(0x02, 'S'), (0x01, 'F'), (0x04, 'R'), (0x08, 'P')] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if f & 0x10 != 0 {
        s.push('.');
    }
    s
}

/// The parts of a DNS message scenarios care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsInfo {
    /// Query id.
    pub id: u16,
    /// A response.
    pub response: bool,
    /// First question's name (lowercase, no trailing dot).
    pub name: String,
    /// Question type.
    pub qtype: String,
    /// Response code.
    pub rcode: String,
    /// Answered addresses.
    pub answers: Vec<IpAddr>,
}

impl DnsInfo {
    /// `query A intranet.corp.example` / `answer A intranet.corp.example 198.19.10.80`.
    pub fn describe(&self) -> String {
        if self.response {
            let a: Vec<String> = self.answers.iter().map(ToString::to_string).collect();
            format!(
                "answer {} {} {} [{}]",
                self.qtype,
                self.name,
                self.rcode,
                a.join(" ")
            )
        } else {
            format!("query {} {}", self.qtype, self.name)
        }
    }
}

/// Decodes a DNS message.
pub fn dns_info(payload: &[u8]) -> Option<DnsInfo> {
    use hickory_proto::op::{Message, MessageType};
    let m = Message::from_vec(payload).ok()?;
    let q = m.queries().first()?;
    Some(DnsInfo {
        id: m.id(),
        response: m.message_type() == MessageType::Response,
        name: q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase(),
        qtype: q.query_type().to_string(),
        rcode: m.response_code().to_string(),
        answers: addresses(&m),
    })
}

/// A and AAAA addresses in a message's answer section.
pub fn addresses(m: &hickory_proto::op::Message) -> Vec<IpAddr> {
    use hickory_proto::rr::RData;
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The text of a Wireshark exported-PDU frame (tags skipped).
pub fn upper_pdu_payload(data: &[u8]) -> &[u8] {
    let mut pos = 0;
    while let (Some(tag), Some(len)) = (be16(data, pos), be16(data, pos + 2)) {
        pos += 4 + usize::from(len);
        if tag == 0 {
            break;
        }
    }
    data.get(pos..).unwrap_or(&[])
}

/// Decodes a frame of the given link type.
pub fn parse(link: LinkType, data: &[u8]) -> Pkt<'_> {
    let none = |l3| Pkt {
        l3,
        l4: L4::None,
        payload: &[],
    };
    let by_version = |d: &[u8]| match d.first().map(|b| b >> 4) {
        Some(4) => 0x0800,
        Some(6) => 0x86dd,
        _ => 0,
    };
    let family = |f: u32| match f {
        2 => 0x0800,
        10 | 24 | 28 | 30 => 0x86dd,
        _ => 0,
    };
    let (ethertype, l3): (u16, &[u8]) = match link {
        LinkType::Raw => (by_version(data), data),
        LinkType::Ethernet => {
            let Some(mut t) = be16(data, 12) else {
                return none(L3::Other(0));
            };
            let mut off = 14;
            // One VLAN tag at most (not used by the harness, but cheap to skip).
            if t == 0x8100 {
                t = be16(data, 16).unwrap_or(0);
                off = 18;
            }
            (t, data.get(off..).unwrap_or(&[]))
        }
        LinkType::LinuxSll => (be16(data, 14).unwrap_or(0), data.get(16..).unwrap_or(&[])),
        LinkType::LinuxSll2 => (be16(data, 0).unwrap_or(0), data.get(20..).unwrap_or(&[])),
        LinkType::Null | LinkType::Loop => {
            let Some(b) = data.get(..4) else {
                return none(L3::Other(0));
            };
            let b: [u8; 4] = [b[0], b[1], b[2], b[3]];
            let f = if link == LinkType::Null {
                // Host order of the capturing machine; both orders are tried.
                let le = u32::from_le_bytes(b);
                if le < 256 { le } else { u32::from_be_bytes(b) }
            } else {
                u32::from_be_bytes(b)
            };
            (family(f), &data[4..])
        }
        LinkType::UpperPdu => {
            let text = String::from_utf8_lossy(upper_pdu_payload(data)).into_owned();
            return none(L3::Text(text));
        }
        LinkType::Other(_) => return none(L3::Other(0)),
    };
    match ethertype {
        0x0806 => parse_arp(l3).map_or_else(|| none(L3::Other(0x0806)), none),
        0x0800 => parse_ipv4(l3).unwrap_or_else(|| none(L3::Other(0x0800))),
        0x86dd => parse_ipv6(l3).unwrap_or_else(|| none(L3::Other(0x86dd))),
        t => none(L3::Other(t)),
    }
}

fn parse_arp(b: &[u8]) -> Option<L3> {
    // Ethernet/IPv4 ARP only.
    if be16(b, 2)? != 0x0800 || *b.get(4)? != 6 || *b.get(5)? != 4 {
        return None;
    }
    let ip = |at: usize| -> Option<Ipv4Addr> {
        let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(o))
    };
    Some(L3::Arp {
        op: be16(b, 6)?,
        sender: ip(14)?,
        target: ip(24)?,
    })
}

fn parse_ipv4(b: &[u8]) -> Option<Pkt<'_>> {
    let ihl = usize::from(*b.first()? & 0x0f) * 4;
    if ihl < 20 || b.len() < ihl {
        return None;
    }
    let total = usize::from(be16(b, 2)?);
    let flags_off = be16(b, 6)?;
    let frag_offset = (flags_off & 0x1fff) * 8;
    let more = flags_off & 0x2000 != 0;
    let src: [u8; 4] = b.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = b.get(16..20)?.try_into().ok()?;
    let hdr = IpHdr {
        src: IpAddr::from(src),
        dst: IpAddr::from(dst),
        proto: b[9],
        ttl: b[8],
        id: u32::from(be16(b, 4)?),
        df: flags_off & 0x4000 != 0,
        fragment: more || frag_offset != 0,
        frag_offset,
        total_len: total as u32,
    };
    // GSO super-packets carry total length 0 or more than the frame; use what is there.
    let end = if total >= ihl && total <= b.len() {
        total
    } else {
        b.len()
    };
    let body = &b[ihl..end];
    Some(transport(hdr, body, frag_offset != 0))
}

fn parse_ipv6(b: &[u8]) -> Option<Pkt<'_>> {
    if b.len() < 40 {
        return None;
    }
    let src: [u8; 16] = b.get(8..24)?.try_into().ok()?;
    let dst: [u8; 16] = b.get(24..40)?.try_into().ok()?;
    let mut next = b[6];
    let mut off = 40;
    let mut hdr = IpHdr {
        src: IpAddr::from(Ipv6Addr::from(src)),
        dst: IpAddr::from(Ipv6Addr::from(dst)),
        proto: next,
        ttl: b[7],
        id: 0,
        df: true,
        fragment: false,
        frag_offset: 0,
        total_len: 40 + u32::from(be16(b, 4)?),
    };
    let mut later_fragment = false;
    // Extension headers: hop-by-hop, routing, destination options, fragment.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let len = (usize::from(*b.get(off + 1)?) + 1) * 8;
                next = *b.get(off)?;
                off += len;
            }
            44 => {
                let fo = be16(b, off + 2)?;
                hdr.fragment = true;
                hdr.frag_offset = fo & 0xfff8;
                later_fragment = hdr.frag_offset != 0;
                hdr.id = be32(b, off + 4)?;
                next = *b.get(off)?;
                off += 8;
            }
            _ => break,
        }
    }
    hdr.proto = next;
    let body = b.get(off..).unwrap_or(&[]);
    Some(transport(hdr, body, later_fragment))
}

fn transport(hdr: IpHdr, body: &[u8], later_fragment: bool) -> Pkt<'_> {
    let l4 = if later_fragment {
        None
    } else {
        match hdr.proto {
            6 => tcp(body),
            17 => Some((
                L4::Udp {
                    sport: be16(body, 0).unwrap_or(0),
                    dport: be16(body, 2).unwrap_or(0),
                },
                8,
            )),
            1 | 58 => Some((
                L4::Icmp {
                    typ: *body.first().unwrap_or(&0),
                    code: *body.get(1).unwrap_or(&0),
                },
                body.len().min(8),
            )),
            50 => crate::vpn::Esp::parse(body).map(|e| (L4::Esp(e), 8)),
            _ => None,
        }
    };
    match l4 {
        Some((l4, hlen)) if body.len() >= hlen => Pkt {
            l3: L3::Ip(hdr),
            l4,
            payload: &body[hlen..],
        },
        _ => Pkt {
            l3: L3::Ip(hdr),
            l4: L4::None,
            payload: &[],
        },
    }
}

fn tcp(b: &[u8]) -> Option<(L4, usize)> {
    let data_off = usize::from(*b.get(12)? >> 4) * 4;
    if data_off < 20 || b.len() < data_off {
        return None;
    }
    let mut mss = None;
    let mut i = 20;
    while i < data_off {
        match b[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(*b.get(i + 1)?);
                if len < 2 {
                    break;
                }
                if kind == 2 && len == 4 {
                    mss = be16(b, i + 2);
                }
                i += len;
            }
        }
    }
    Some((
        L4::Tcp {
            sport: be16(b, 0)?,
            dport: be16(b, 2)?,
            seq: be32(b, 4)?,
            ack: be32(b, 8)?,
            flags: b[13],
            mss,
        },
        data_off,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        let total = (20 + 8 + payload.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn udp_and_dns() {
        let q = [
            0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'w', b'w', 7, b'E', b'x', b'a',
            b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1,
        ];
        let p = ipv4_udp([198, 18, 1, 2], [198, 18, 100, 53], 40000, 53, &q);
        let pkt = parse(LinkType::Raw, &p);
        let ip = pkt.ip().unwrap();
        assert!(ip.df && !ip.fragment);
        assert_eq!(pkt.ports(), Some((40000, 53)));
        let d = pkt.dns().unwrap();
        assert_eq!(
            (d.name.as_str(), d.qtype.as_str(), d.response),
            ("www.example.com", "A", false)
        );
        assert!(
            pkt.describe().contains("DNS query A www.example.com"),
            "{}",
            pkt.describe()
        );
    }

    #[test]
    fn truncated_and_garbage_frames_do_not_panic() {
        let p = ipv4_udp([1, 2, 3, 4], [5, 6, 7, 8], 1, 2, b"hello");
        for n in 0..p.len() {
            let _ = parse(LinkType::Raw, &p[..n]).describe();
            let mut eth = vec![0u8; 12];
            eth.extend_from_slice(&[0x08, 0x00]);
            eth.extend_from_slice(&p[..n]);
            let _ = parse(LinkType::Ethernet, &eth).describe();
        }
        let _ = parse(LinkType::Ethernet, &[0xff; 60]).describe();
        let _ = parse(LinkType::Raw, &[0x6f; 80]).describe();
    }

    #[test]
    fn tcp_syn_mss() {
        let mut p = vec![
            0x45, 0, 0, 44, 0, 1, 0x40, 0, 64, 6, 0, 0, 198, 19, 0, 2, 198, 19, 10, 80,
        ];
        p.extend_from_slice(&[
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        p.extend_from_slice(&[2, 4, 0x05, 0x1c]);
        let pkt = parse(LinkType::Raw, &p);
        assert!(matches!(
            pkt.l4,
            L4::Tcp {
                flags: 0x02,
                mss: Some(1308),
                dport: 80,
                ..
            }
        ));
    }
}

#[cfg(test)]
mod dhcp_tests {
    use super::*;

    /// A DHCP message of `kind` (option 53) with `yiaddr` and options `extra`.
    fn message(op: u8, kind: u8, yiaddr: [u8; 4], extra: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; 240];
        m[0] = op;
        m[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        m[16..20].copy_from_slice(&yiaddr);
        m[236..240].copy_from_slice(&[99, 130, 83, 99]);
        m.extend_from_slice(&[53, 1, kind]);
        m.extend_from_slice(extra);
        m.push(255);
        m
    }

    #[test]
    fn messages_are_named_with_their_address() {
        let d = dhcp_info(&message(1, 1, [0; 4], &[0, 0])).unwrap();
        assert_eq!((d.describe(), d.xid), ("discover".into(), 0x1234_5678));
        let o = dhcp_info(&message(2, 2, [198, 19, 10, 100], &[])).unwrap();
        assert_eq!(o.describe(), "offer 198.19.10.100");
        let r = dhcp_info(&message(1, 3, [0; 4], &[50, 4, 198, 19, 10, 100])).unwrap();
        assert_eq!(r.describe(), "request 198.19.10.100");
        let a = dhcp_info(&message(2, 5, [198, 19, 10, 100], &[])).unwrap();
        assert_eq!(a.describe(), "ack 198.19.10.100");
    }

    #[test]
    fn truncated_or_foreign_payloads_are_not_dhcp_and_never_panic() {
        let m = message(
            1,
            3,
            [0; 4],
            &[50, 4, 198, 19, 10, 100, 61, 7, 1, 2, 3, 4, 5, 6, 7],
        );
        for n in 0..m.len() {
            // Cut anywhere: either not DHCP, or decoded from what is there.
            let _ = dhcp_info(&m[..n]);
        }
        assert!(dhcp_info(&m[..200]).is_none(), "no magic cookie");
        let mut bad = m.clone();
        bad[241] = 200; // an option length running past the end
        assert_eq!(dhcp_info(&bad), None);
        let mut not = m;
        not[0] = 9;
        assert_eq!(dhcp_info(&not), None);
    }
}
