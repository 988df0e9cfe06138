//! Normalization: a capture becomes a list of events whose fields mean the same thing in
//! every run, grouped into flows.
//!
//! Two captures of the same behaviour never match byte for byte. The rules below replace
//! what changes from run to run by stable placeholders, and hide (mask) what cannot be made
//! stable, so that what remains differs only when behaviour differs.
//!
//! # Fields of an event
//!
//! | field | meaning | default |
//! |---|---|---|
//! | `iface` | interface or engine stage (`client/eth0`, `server/decrypt`) | kept |
//! | `dir` | `out` / `in` when the file records it | kept |
//! | `layers` | `eth/ipv4/udp/openvpn`, `raw/ipv6/tcp`, `text` … | kept |
//! | `src`, `dst` | addresses and ports; ephemeral ports as `ephN` | kept |
//! | `size` | IP total length (frame length without IP) | kept |
//! | `ip.ttl`, `ip.df`, `ip.frag` | TTL, don't-fragment, fragment offset/more | kept |
//! | `ip.id` | IPv4 identification | masked |
//! | `tcp.flags`, `tcp.len`, `tcp.mss` | flags (`S`, `S.`, `F.`, `R`; PSH left out: it marks where writes ended), payload length (not for FIN/RST segments: what rides on them depends on write timing; the flow's stream length is exact), MSS | kept |
//! | `tcp.seq`, `tcp.ack` | relative to the flow's ISNs | masked |
//! | `icmp` | type and code | kept |
//! | `arp` | request/reply, addresses | kept |
//! | `ovpn.op`, `ovpn.key`, `ovpn.peer` | opcode name, key-id, peer-id | kept |
//! | `ovpn.sid`, `ovpn.rsid` | session ids as `S1`, `S2` … by first appearance | kept |
//! | `ovpn.payload`, `ovpn.wrapped` | TLS records carried; tls-auth/tls-crypt wrap | kept |
//! | `ovpn.acks` | number of ACKs piggybacked (depends on timing) | masked |
//! | `ovpn.pid` | control message / data packet-id | masked |
//! | `ovpn.ctl_size` | a control packet's size instead of `size` (certificates and signatures vary by a byte or two per key) | masked |
//! | `dns.msg` | `query A name` / `answer A name NOERROR [addresses]` | kept |
//! | `dns.id` | query id | masked |
//! | `dhcp.msg` | `discover`, `offer ADDR`, `request ADDR`, `ack ADDR` … (inside tap tunnels too) | kept |
//! | `wg.msg` | WireGuard `handshake-initiation`, `handshake-response`, `cookie-reply`, `transport` (any UDP port) | kept |
//! | `wg.idx`, `wg.counter` | sender/receiver indices, the transport counter | masked |
//! | `ike.msg` | `IKE_SA_INIT request`, `IKE_AUTH response` …, `ISAKMP Identity Protection` … (UDP 500/4500) | kept |
//! | `ike.spi` | initiator/responder SPIs | masked |
//! | `ike.mid` | IKE message id | kept |
//! | `esp.spi`, `esp.seq` | ESP (IP protocol 50, or UDP 4500) SPI and sequence number | masked |
//! | `tls.rec` | TLS (TCP 443, first record of a segment) and DTLS (every record of a datagram) record kinds, `handshake client_hello` … | kept |
//! | `tls.hs_size` | a TLS handshake segment's size instead of `size` and `tcp.len` (certificates and signatures vary by a byte or two per key) | masked |
//! | `text` | plaintext control message (engine control taps); version strings in peer-info (`IV_VER`, `IV_SSL`, `IV_PLAT_VER`, `IV_HWADDR`, `IV_GUI_VER`) as `*` | kept |
//! | `tap.drop`, `tap.key`, `tap.peer` | from an engine tap's comment | kept |
//! | `tap.trace`, `tap.pid`, `tap.stage_ns` | per-run counters and timings | masked |
//! | `time` | ms since the first packet of the capture | masked (timing is compared separately, per flow, with a tolerance) |
//!
//! Ports below 1024 and the configured service ports (1194, 4500) are kept; any other port is
//! ephemeral and becomes `ephN`, numbered in order of first appearance among connections
//! between the same host and service. A DNS exchange over UDP is a connection of its own
//! (ephemeral port *and* query id): a resolver closes its socket once answered and the kernel
//! may hand the same port to a later query, which would otherwise merge two lookups into one
//! flow in one run and not in the next. Session ids become `S1`, `S2` … in order of first
//! appearance. Masks are adjustable ([`Rules::mask`], [`Rules::unmask`]; `tunscope diff
//! --mask F --unmask F`).
//!
//! # Bulk packets
//!
//! TCP segments without SYN, FIN or RST, retransmitted SYN/FIN/RST segments and OpenVPN
//! control packets, OpenVPN data packets, standalone OpenVPN ACKs and ARP come and go with
//! timing (delayed ACKs, coalescing, losses under load, cache expiry). By default they are
//! not events of their own but counted per flow and direction (packets, bytes, and for TCP
//! the exact stream length from the sequence numbers); `--exact` makes every packet an event.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use crate::file::{Capture, Iface, LinkType, Record};
use crate::openvpn::{self, Wrap};
use crate::packet::{self, L3, L4, Pkt};

/// Hash maps keyed by what a capture file says: aHash is several times faster than SipHash
/// here and, randomly keyed per run, still no target for crafted collisions.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
type HashSet<K> = std::collections::HashSet<K, ahash::RandomState>;

/// Fields masked by default.
pub const DEFAULT_MASKS: &[&str] = &[
    "time",
    "ip.id",
    "tcp.seq",
    "tcp.ack",
    "ovpn.acks",
    "ovpn.pid",
    "ovpn.ctl_size",
    "tls.hs_size",
    "dns.id",
    "wg.idx",
    "wg.counter",
    "esp.spi",
    "esp.seq",
    "ike.spi",
    "tap.trace",
    "tap.pid",
    "tap.stage_ns",
];

/// Every field name, in output order.
pub const FIELDS: &[&str] = &[
    "iface",
    "dir",
    "layers",
    "src",
    "dst",
    "size",
    "ip.ttl",
    "ip.df",
    "ip.frag",
    "ip.id",
    "tcp.flags",
    "tcp.len",
    "tcp.mss",
    "tcp.seq",
    "tcp.ack",
    "icmp",
    "arp",
    "ovpn.op",
    "ovpn.key",
    "ovpn.peer",
    "ovpn.sid",
    "ovpn.rsid",
    "ovpn.acks",
    "ovpn.pid",
    "ovpn.payload",
    "ovpn.wrapped",
    "ovpn.ctl_size",
    "dns.id",
    "dns.msg",
    "dhcp.msg",
    "wg.msg",
    "wg.idx",
    "wg.counter",
    "esp.spi",
    "esp.seq",
    "ike.msg",
    "ike.spi",
    "ike.mid",
    "tls.rec",
    "tls.hs_size",
    "text",
    "tap.key",
    "tap.peer",
    "tap.drop",
    "tap.trace",
    "tap.pid",
    "tap.stage_ns",
    "time",
];

/// Peer-info keys whose values are versions or hardware, not behaviour.
const VOLATILE_PEER_INFO: &[&str] = &["IV_VER", "IV_SSL", "IV_PLAT_VER", "IV_HWADDR", "IV_GUI_VER"];

/// Normalization rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Masked fields (not compared, not shown).
    pub masks: BTreeSet<String>,
    /// Ports ≥ 1024 kept literally (service ports); 1194 and 4500 by default.
    pub service_ports: BTreeSet<u16>,
    /// Ports whose UDP/TCP payload is decoded as OpenVPN.
    pub openvpn_ports: BTreeSet<u16>,
    /// Count bulk packets per flow instead of making them events.
    pub aggregate_bulk: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            masks: DEFAULT_MASKS.iter().map(|s| (*s).to_owned()).collect(),
            // OpenVPN and IPsec NAT traversal. (Not WireGuard's 51820: it lies in Linux's
            // ephemeral range, so a client port could take it by chance.)
            service_ports: [1194, 4500].into_iter().collect(),
            openvpn_ports: [1194].into_iter().collect(),
            aggregate_bulk: true,
        }
    }
}

/// An unknown field name in a mask rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown field '{0}' (fields: {fields})", fields = FIELDS.join(", "))]
pub struct UnknownField(pub String);

impl Rules {
    /// Masks a field.
    pub fn mask(&mut self, field: &str) -> Result<(), UnknownField> {
        if !FIELDS.contains(&field) {
            return Err(UnknownField(field.to_owned()));
        }
        self.masks.insert(field.to_owned());
        Ok(())
    }

    /// Unmasks a field.
    pub fn unmask(&mut self, field: &str) -> Result<(), UnknownField> {
        if !FIELDS.contains(&field) {
            return Err(UnknownField(field.to_owned()));
        }
        self.masks.remove(field);
        Ok(())
    }

    fn masked(&self, f: &str) -> bool {
        self.masks.contains(f)
    }
}

/// One normalized packet.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Event {
    /// 1-based record number in the file.
    pub index: usize,
    /// Index into [`Normalized::flows`].
    pub flow: usize,
    /// Direction within the flow: `true` = from the flow key's first endpoint to the second
    /// (for flows without endpoints: sent, or unknown).
    pub forward: bool,
    /// Time since the capture's first packet, ns.
    pub t_ns: u64,
    /// Unmasked fields in [`FIELDS`] order.
    pub fields: Vec<(&'static str, String)>,
}

impl Event {
    /// A field's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// What must be equal for two events to be "the same packet" (every field but `iface`,
    /// which the flow already fixes).
    pub fn identity(&self) -> Vec<(&'static str, &str)> {
        self.fields
            .iter()
            .filter(|(n, _)| *n != "iface")
            .map(|(n, v)| (*n, v.as_str()))
            .collect()
    }

    /// A short kind for pairing changed events: layers plus the main message field.
    pub fn kind(&self) -> String {
        let mut k = self.get("layers").unwrap_or("").to_owned();
        for f in ["ovpn.op", "tcp.flags", "icmp"] {
            if let Some(v) = self.get(f) {
                k.push(' ');
                k.push_str(v);
            }
        }
        if let Some(d) = self.get("dhcp.msg") {
            // The message type, not the address.
            k.push(' ');
            k.push_str(d.split_whitespace().next().unwrap_or(""));
        }
        if let Some(d) = self.get("dns.msg") {
            // query/answer and type, not the name.
            k.push(' ');
            k.push_str(&d.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
        }
        k
    }

    /// One line: `out udp 198.18.1.2:eph1 > 198.18.2.2:1194 size 56 ovpn.op=…`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let skip = ["iface", "src", "dst", "dir", "layers"];
        if let Some(d) = self.get("dir") {
            let _ = write!(s, "{d} ");
        }
        if let Some(l) = self.get("layers") {
            let _ = write!(s, "{l} ");
        }
        match (self.get("src"), self.get("dst")) {
            (Some(a), Some(b)) => {
                let _ = write!(s, "{a} > {b}");
            }
            _ => s.push('-'),
        }
        for (n, v) in &self.fields {
            if !skip.contains(n) {
                let _ = write!(s, " {n}={v}");
            }
        }
        s
    }
}

/// Counts of one direction of a flow.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DirCounts {
    /// Packets (events and bulk).
    pub packets: u64,
    /// Bytes (`size` of each).
    pub bytes: u64,
    /// Bulk packets.
    pub bulk_packets: u64,
    /// Bytes of the bulk packets.
    pub bulk_bytes: u64,
    /// TCP stream bytes (highest sequence reached minus the ISN), when the SYN was seen.
    pub tcp_stream: Option<u64>,
}

/// A flow: one interface, one protocol, two normalized endpoints.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Flow {
    /// `client/eth0 udp 198.18.1.2:eph1 <-> 198.18.2.2:1194`.
    pub key: String,
    /// Interface or stage.
    pub iface: String,
    /// Non-bulk events, in file order (indices into [`Normalized::events`]).
    pub events: Vec<usize>,
    /// Counts from the key's first endpoint to the second, and back.
    pub counts: [DirCounts; 2],
    /// Time of the flow's earliest packet since the capture's earliest, ns.
    pub start_ns: u64,
    /// Record number of its first packet.
    pub first: usize,
    /// Short kinds seen per direction (for summaries): opcodes, flags, DNS messages.
    pub kinds: [BTreeSet<String>; 2],
}

/// A normalized capture.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Normalized {
    /// Events of the packets that are not bulk, in file order (bulk packets are counted in
    /// their flow).
    pub events: Vec<Event>,
    /// Flows in order of first appearance.
    pub flows: Vec<Flow>,
    /// How the file was read (records lost, oddities).
    pub read: crate::read::ReadReport,
    /// Records normalized (events plus bulk packets).
    pub packets: usize,
}

/// An OpenVPN session's transport: (IP protocol, client address and port, server's).
type OvpnFlow = (u8, (IpAddr, u16), (IpAddr, u16));

/// Stable names for run-specific values.
#[derive(Default)]
struct Placeholders {
    /// (ephemeral ip, service ip, service port, proto) → ephemeral ports in order, each with
    /// the DNS query id of its exchange when it carries DNS over UDP.
    eph: HashMap<(IpAddr, IpAddr, u16, u8), Vec<EphemeralEnd>>,
    /// Ports of flows with two ephemeral ends, per host pair.
    eph_pair: HashMap<(IpAddr, IpAddr, u8), Vec<u16>>,
    sessions: Vec<[u8; 8]>,
    /// TCP ISN per (src ip, src port, dst ip, dst port).
    isn: HashMap<(IpAddr, u16, IpAddr, u16), u32>,
    /// Interface of the record being normalized (retransmissions are per interface).
    iface: String,
    /// SYN/FIN/RST segments seen: (iface, src, sport, dst, dport, seq, flags).
    tcp_seen: HashSet<(String, IpAddr, u16, IpAddr, u16, u32, u8)>,
    /// Control packets seen: (iface, session, packet-id, opcode).
    ctl_seen: HashSet<(String, [u8; 8], u32, u8)>,
    /// OpenVPN sessions recognised by their first packet: (proto, client, server) → wrap.
    ovpn_flows: HashMap<OvpnFlow, Wrap>,
    /// Server ports of those sessions (kept literally, like configured service ports).
    ovpn_ports: BTreeSet<u16>,
    /// Timestamp of the record being normalized.
    now_ns: u64,
    /// Endpoint names by (source, port, destination, port, protocol).
    endpoints: HashMap<EndpointKey, (String, String)>,
}

/// An ephemeral port and, for DNS over UDP, the query id of its exchange.
type EphemeralEnd = (u16, Option<u16>);

/// A packet's addresses, ports, IP protocol and DNS query id (DNS over UDP).
type EndpointKey = (IpAddr, Option<u16>, IpAddr, Option<u16>, u8, Option<u16>);

impl Placeholders {
    /// Whether a UDP/TCP packet belongs to OpenVPN, and the session's wrap when known
    /// (`Some(None)`: OpenVPN, wrap unknown). Sessions are recognised on any port by a
    /// client's first packet ([`openvpn::client_reset`]); configured ports are OpenVPN
    /// whatever their first packet.
    fn openvpn_flow(
        &mut self,
        rules: &Rules,
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
        proto: u8,
        tcp: bool,
        payload: &[u8],
    ) -> Option<Option<Wrap>> {
        let known = self
            .ovpn_flows
            .get(&(proto, src, dst))
            .or_else(|| self.ovpn_flows.get(&(proto, dst, src)))
            .copied();
        if known.is_some() {
            return Some(known);
        }
        // The client's hard reset starts the session (a TCP record: after its length).
        let record = if tcp {
            payload
                .get(..2)
                .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                .filter(|&l| l + 2 == payload.len())
                .and_then(|_| payload.get(2..))
        } else {
            Some(payload)
        };
        let now_s = Some(self.now_ns / 1_000_000_000);
        if let Some(wrap) = record.and_then(|r| openvpn::client_reset(r, now_s)) {
            self.ovpn_flows.insert((proto, src, dst), wrap);
            self.ovpn_ports.insert(dst.1);
            return Some(Some(wrap));
        }
        (rules.openvpn_ports.contains(&src.1) || rules.openvpn_ports.contains(&dst.1))
            .then_some(None)
    }

    fn session(&mut self, sid: [u8; 8]) -> String {
        let n = match self.sessions.iter().position(|s| *s == sid) {
            Some(i) => i + 1,
            None => {
                self.sessions.push(sid);
                self.sessions.len()
            }
        };
        format!("S{n}")
    }

    fn numbered<T: PartialEq>(list: &mut Vec<T>, port: T) -> usize {
        match list.iter().position(|p| *p == port) {
            Some(i) => i + 1,
            None => {
                list.push(port);
                list.len()
            }
        }
    }
}

fn ep(a: IpAddr, port: Option<String>) -> String {
    match (a, port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

fn icmp_name(v6: bool, t: u8, c: u8) -> String {
    let n = match (v6, t, c) {
        (false, 0, _) | (true, 129, _) => "echo-reply",
        (false, 8, _) | (true, 128, _) => "echo-request",
        (false, 3, 4) => "frag-needed",
        (true, 2, _) => "packet-too-big",
        (false, 3, _) | (true, 1, _) => "unreachable",
        (false, 11, _) | (true, 3, _) => "time-exceeded",
        _ => "",
    };
    if n.is_empty() {
        format!("type {t} code {c}")
    } else {
        n.to_owned()
    }
}

fn clean_text(t: &str) -> String {
    // `…, peer-info 'IV_VER=2.6.3;IV_SSL=OpenSSL 3.0.20 …;IV_PROTO=990'` → versions as `*`.
    const MARK: &str = "peer-info '";
    let Some(at) = t.find(MARK) else {
        return t.to_owned();
    };
    let (head, rest) = t.split_at(at + MARK.len());
    let (body, tail) = match rest.rfind('\'') {
        Some(end) => rest.split_at(end),
        None => (rest, ""),
    };
    let parts: Vec<String> = body
        .split(';')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if VOLATILE_PEER_INFO.contains(&k) => format!("{k}=*"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{head}{}{tail}", parts.join(";"))
}

/// Parses `tunscope trace=1 peer=0 key=0 pid=5 stage_ns=123 drop=x` comments.
fn tap_fields(comment: &str) -> Vec<(&'static str, String)> {
    let mut out = vec![];
    if !comment.starts_with("tunscope ") {
        return out;
    }
    for kv in comment.split_whitespace().skip(1) {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let name = match k {
            "trace" => "tap.trace",
            "peer" => "tap.peer",
            "key" => "tap.key",
            "pid" => "tap.pid",
            "stage_ns" => "tap.stage_ns",
            "drop" => "tap.drop",
            _ => continue,
        };
        out.push((name, v.to_owned()));
    }
    out
}

/// Normalizes a capture held in memory.
pub fn normalize(cap: &Capture, rules: &Rules) -> Normalized {
    let mut n = Normalizer::new(rules);
    for rec in &cap.records {
        n.push(&cap.ifaces, rec);
    }
    n.finish(cap.report.clone())
}

/// Normalizes a capture file as it is read: memory holds the flows and their non-bulk
/// events, never the packets (one record buffer, reused). The file's read report comes
/// with the result.
pub fn normalize_file(
    path: &std::path::Path,
    rules: &Rules,
) -> Result<Normalized, crate::read::ReadError> {
    let mut r = crate::read::Reader::open(path)?;
    let mut n = Normalizer::new(rules);
    let mut rec = Record::default();
    while r.read_into(&mut rec) {
        n.push(r.ifaces(), &rec);
    }
    Ok(n.finish(r.report().clone()))
}

/// Normalization one record at a time ([`normalize`], [`normalize_file`]).
pub struct Normalizer<'r> {
    rules: &'r Rules,
    ph: Placeholders,
    out: Normalized,
    flow_ids: HashMap<String, usize>,
    /// Records pushed so far.
    records: usize,
    /// Earliest timestamp so far (times are rebased on it at the end).
    t0: u64,
    /// Fields not masked (position in [`FIELDS`], name), in that order (`time` is added at
    /// the end).
    shown: Vec<(usize, &'static str)>,
}

impl<'r> Normalizer<'r> {
    /// A normalizer applying `rules`.
    pub fn new(rules: &'r Rules) -> Self {
        Normalizer {
            rules,
            ph: Placeholders::default(),
            out: Normalized::default(),
            flow_ids: HashMap::default(),
            records: 0,
            t0: u64::MAX,
            shown: FIELDS
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, n)| *n != "time" && !rules.masked(n))
                .collect(),
        }
    }

    /// The normalized capture; `read` is how its file was read.
    pub fn finish(mut self, read: crate::read::ReadReport) -> Normalized {
        let t0 = if self.records == 0 { 0 } else { self.t0 };
        let show_time = !self.rules.masked("time");
        for e in &mut self.out.events {
            e.t_ns = e.t_ns.saturating_sub(t0);
            if show_time {
                e.fields
                    .push(("time", format!("{:.3}", e.t_ns as f64 / 1e6)));
            }
        }
        for f in &mut self.out.flows {
            f.start_ns = f.start_ns.saturating_sub(t0);
        }
        self.out.packets = self.records;
        self.out.read = read;
        self.out
    }

    /// Normalizes one record (`ifaces`: the capture's interfaces so far).
    pub fn push(&mut self, ifaces: &[Iface], rec: &Record) {
        let (rules, ph, out) = (self.rules, &mut self.ph, &mut self.out);
        let i = self.records;
        self.records += 1;
        self.t0 = self.t0.min(rec.ts_ns);
        let flow_ids = &mut self.flow_ids;
        let iface = ifaces.get(rec.iface);
        let name = iface.map_or_else(|| format!("if{}", rec.iface), |i| i.name.clone());
        let link = iface.map_or(LinkType::Raw, |i| i.link);
        let pkt = packet::parse(link, &rec.data);
        ph.iface.clone_from(&name);
        ph.now_ns = rec.ts_ns;
        let mut f = Fields::new();
        f.insert("iface", name.clone());
        if let Some(o) = rec.outgoing {
            f.insert("dir", if o { "out" } else { "in" });
        }
        let link_name = match link {
            LinkType::Ethernet => "eth",
            LinkType::Raw => "raw",
            LinkType::LinuxSll | LinkType::LinuxSll2 => "sll",
            LinkType::Null | LinkType::Loop => "null",
            LinkType::UpperPdu => "pdu",
            LinkType::Other(_) => "other",
        };
        let mut layers = vec![link_name.to_owned()];
        let mut bulk = false;
        let (src, dst, proto_label, sp_dp) = describe_l3(
            &pkt,
            &mut f,
            &mut layers,
            &mut bulk,
            ph,
            rules,
            rec.orig_len,
        );
        if let Some(c) = &rec.comment {
            for (k, v) in tap_fields(c) {
                f.insert(k, v);
            }
        }
        f.insert("layers", layers.join("/"));
        // `time` (last in FIELDS) is added at the end, when the earliest time is known.

        // The flow: interface, protocol, endpoints (sorted so both directions meet).
        let forward = match (&src, &dst) {
            (Some(a), Some(b)) => a <= b,
            _ => rec.outgoing != Some(false),
        };
        let (lo, hi) = if src <= dst {
            (&src, &dst)
        } else {
            (&dst, &src)
        };
        let key = match (lo, hi) {
            (Some(lo), Some(hi)) => format!("{name} {proto_label} {lo} <-> {hi}"),
            _ => format!("{name} {proto_label}"),
        };
        let flow = match flow_ids.get(&key) {
            Some(&id) => id,
            None => {
                out.flows.push(Flow {
                    key: key.clone(),
                    iface: name.clone(),
                    events: vec![],
                    counts: [DirCounts::default(); 2],
                    start_ns: rec.ts_ns,
                    first: i + 1,
                    kinds: [BTreeSet::new(), BTreeSet::new()],
                });
                flow_ids.insert(key, out.flows.len() - 1);
                out.flows.len() - 1
            }
        };
        let size: u64 = match f.get("size") {
            Some(Val::Num(n)) => *n,
            _ => 0,
        };
        let bulk = bulk && rules.aggregate_bulk;
        {
            let fl = &mut out.flows[flow];
            // The earliest packet, whatever the file order.
            fl.start_ns = fl.start_ns.min(rec.ts_ns);
            let c = &mut fl.counts[usize::from(!forward)];
            c.packets += 1;
            c.bytes += size;
            if bulk {
                c.bulk_packets += 1;
                c.bulk_bytes += size;
            }
            if let (L4::Tcp { seq, flags, .. }, Some((s, d))) = (&pkt.l4, sp_dp)
                && let Some(ip) = pkt.ip()
            {
                {
                    let k = (ip.src, s, ip.dst, d);
                    if let Some(isn) = ph.isn.get(&k) {
                        let syn_fin = u32::from(flags & 0x03 != 0);
                        let end = seq
                            .wrapping_add(pkt.payload.len() as u32)
                            .wrapping_add(syn_fin)
                            .wrapping_sub(*isn)
                            .wrapping_sub(1);
                        // Only forward progress within a sane window counts.
                        if end < 1 << 30 {
                            let cur = c.tcp_stream.unwrap_or(0);
                            c.tcp_stream = Some(cur.max(u64::from(end)));
                        }
                    }
                }
            }
            let kind = short_kind(&f);
            let kinds = &mut fl.kinds[usize::from(!forward)];
            if !kinds.contains(&kind) {
                kinds.insert(kind);
            }
        }
        // Bulk packets live on as their flow's counts only.
        if !bulk {
            let fields: Vec<(&'static str, String)> = self
                .shown
                .iter()
                .filter_map(|&(i, n)| f.take_at(i).map(|v| (n, v.into_string())))
                .collect();
            out.flows[flow].events.push(out.events.len());
            out.events.push(Event {
                index: i + 1,
                flow,
                forward,
                t_ns: rec.ts_ns,
                fields,
            });
        }
    }
}

/// The kind shown in summaries: opcode, TCP flags, DNS message, ICMP type, text.
/// A field's value while a packet is normalized: numbers stay numbers until an event is
/// made of the packet (most packets are bulk and only counted).
#[derive(Clone, Debug)]
enum Val {
    Str(String),
    Static(&'static str),
    Num(u64),
    Bool(bool),
}

impl Val {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Val::Str(s) => s.as_str().into(),
            Val::Static(s) => (*s).into(),
            Val::Num(n) => n.to_string().into(),
            Val::Bool(b) => if *b { "true" } else { "false" }.into(),
        }
    }

    fn into_string(self) -> String {
        match self {
            Val::Str(s) => s,
            other => other.text().into_owned(),
        }
    }
}

impl From<String> for Val {
    fn from(s: String) -> Val {
        Val::Str(s)
    }
}

impl From<&'static str> for Val {
    fn from(s: &'static str) -> Val {
        Val::Static(s)
    }
}

impl From<bool> for Val {
    fn from(b: bool) -> Val {
        Val::Bool(b)
    }
}

macro_rules! val_from_num {
    ($($t:ty),*) => {$(
        impl From<$t> for Val {
            fn from(n: $t) -> Val {
                Val::Num(n as u64)
            }
        }
    )*};
}
val_from_num!(u8, u16, u32, u64, usize);

/// The fields of the packet being normalized, by position in [`FIELDS`].
struct Fields([Option<Val>; FIELDS.len()]);

impl Fields {
    fn new() -> Fields {
        Fields(std::array::from_fn(|_| None))
    }

    fn slot(name: &str) -> usize {
        // Every name used here is in FIELDS (a test checks the list); unknown names land on
        // the last slot (`time`), which is never filled during a packet.
        FIELDS
            .iter()
            .position(|f| *f == name)
            .unwrap_or(FIELDS.len() - 1)
    }

    fn insert(&mut self, name: &'static str, v: impl Into<Val>) {
        self.0[Self::slot(name)] = Some(v.into());
    }

    fn get(&self, name: &str) -> Option<&Val> {
        self.0[Self::slot(name)].as_ref()
    }

    fn get_str(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.get(name).map(Val::text)
    }

    fn remove(&mut self, name: &str) -> Option<Val> {
        self.0[Self::slot(name)].take()
    }

    fn take_at(&mut self, i: usize) -> Option<Val> {
        self.0[i].take()
    }
}

fn short_kind(f: &Fields) -> String {
    if let Some(t) = f.get_str("text") {
        return t.into_owned();
    }
    if let Some(d) = f.get_str("dns.msg") {
        return format!("dns {d}");
    }
    if let Some(d) = f.get_str("dhcp.msg") {
        return format!("dhcp {d}");
    }
    if let Some(w) = f.get_str("wg.msg") {
        return format!("wireguard {w}");
    }
    if let Some(m) = f.get_str("ike.msg") {
        return m.into_owned();
    }
    if f.get("esp.spi").is_some() {
        return "esp".into();
    }
    if let Some(r) = f.get_str("tls.rec") {
        return format!("tls {r}");
    }
    if let Some(op) = f.get_str("ovpn.op") {
        return op.into_owned();
    }
    if let Some(fl) = f.get_str("tcp.flags") {
        let base = if fl.contains('S') || fl.contains('F') || fl.contains('R') {
            fl.trim_end_matches('.').replace('P', "")
        } else {
            // Data and ACKs are one kind.
            "data".into()
        };
        return format!("tcp {base}");
    }
    if let Some(i) = f.get_str("icmp") {
        return format!("icmp {i}");
    }
    if let Some(a) = f.get_str("arp") {
        return format!("arp {}", a.split_whitespace().next().unwrap_or(""));
    }
    if f.get("ip.frag").is_some() {
        return "fragment".into();
    }
    f.get_str("layers")
        .map(|l| l.into_owned())
        .unwrap_or_default()
}

type L3Out = (Option<String>, Option<String>, String, Option<(u16, u16)>);

#[allow(clippy::too_many_arguments)]
fn describe_l3(
    pkt: &Pkt<'_>,
    f: &mut Fields,
    layers: &mut Vec<String>,
    bulk: &mut bool,
    ph: &mut Placeholders,
    rules: &Rules,
    orig_len: u32,
) -> L3Out {
    match &pkt.l3 {
        L3::Arp { op, sender, target } => {
            layers.push("arp".into());
            f.insert(
                "arp",
                format!(
                    "{} {target} from {sender}",
                    if *op == 1 { "request" } else { "reply" }
                ),
            );
            f.insert("size", orig_len);
            *bulk = true;
            (None, None, "arp".into(), None)
        }
        L3::Text(t) => {
            layers.push("text".into());
            f.insert("text", clean_text(t));
            (None, None, "control".into(), None)
        }
        L3::Other(t) => {
            layers.push(format!("0x{t:04x}"));
            f.insert("size", orig_len);
            (None, None, "other".into(), None)
        }
        L3::Ip(h) => {
            let v6 = h.src.is_ipv6();
            layers.push(if v6 { "ipv6" } else { "ipv4" }.into());
            f.insert("size", h.total_len);
            f.insert("ip.ttl", h.ttl);
            if !v6 {
                f.insert("ip.df", h.df);
                f.insert("ip.id", h.id);
            }
            if h.fragment {
                f.insert(
                    "ip.frag",
                    format!(
                        "offset {}{}",
                        h.frag_offset,
                        if matches!(pkt.l4, L4::None) && h.frag_offset != 0 {
                            ""
                        } else {
                            " first"
                        }
                    ),
                );
            }
            let (proto, ports) = match &pkt.l4 {
                L4::Tcp { sport, dport, .. } => ("tcp", Some((*sport, *dport))),
                L4::Udp { sport, dport } => ("udp", Some((*sport, *dport))),
                L4::Icmp { .. } => (if v6 { "icmp6" } else { "icmp" }, None),
                L4::Esp(_) => ("esp", None),
                L4::None if h.fragment => ("frag", None),
                L4::None => ("ip", None),
            };
            if proto != "frag" && proto != "ip" {
                layers.push(proto.into());
            }
            let proto_num = h.proto;
            // OpenVPN on this flow? A configured port, or a session seen starting (on any
            // port: then the server's port is a service port, kept literally).
            // (Never on DNS's port: its messages are decoded as DNS.)
            let ovpn = ports
                .filter(|&(s, d)| s != 53 && d != 53)
                .and_then(|(s, d)| {
                    let tcp = matches!(pkt.l4, L4::Tcp { .. });
                    ph.openvpn_flow(rules, (h.src, s), (h.dst, d), proto_num, tcp, pkt.payload)
                });
            let dns = pkt.dns();
            // Endpoint names are fixed at a tuple's first packet (ports numbered in order of
            // appearance): formatted once per tuple, not per packet.
            let tuple = (
                h.src,
                ports.map(|p| p.0),
                h.dst,
                ports.map(|p| p.1),
                proto_num,
                dns.as_ref().map(|d| d.id),
            );
            let (src, dst) = match ph.endpoints.get(&tuple) {
                Some(e) => e.clone(),
                None => {
                    let (sp, dp) = match ports {
                        Some((s, d)) => {
                            let conv = Conversation {
                                proto: proto_num,
                                dns_id: dns.as_ref().map(|d| d.id),
                            };
                            let (a, b) = port_names(ph, rules, (h.src, s), (h.dst, d), conv);
                            (Some(a), Some(b))
                        }
                        None => (None, None),
                    };
                    let e = (ep(h.src, sp), ep(h.dst, dp));
                    ph.endpoints.insert(tuple, e.clone());
                    e
                }
            };
            f.insert("src", src.clone());
            f.insert("dst", dst.clone());
            match &pkt.l4 {
                L4::Tcp {
                    sport,
                    dport,
                    seq,
                    ack,
                    flags,
                    mss,
                } => {
                    let key = (h.src, *sport, h.dst, *dport);
                    if flags & 0x02 != 0 {
                        ph.isn.insert(key, *seq);
                    }
                    // PSH marks where the sender's writes ended, which is timing, not
                    // behaviour.
                    f.insert("tcp.flags", packet::tcp_flags(*flags & !0x08));
                    f.insert("tcp.len", pkt.payload.len());
                    if let Some(m) = mss {
                        f.insert("tcp.mss", *m);
                    }
                    if let Some(isn) = ph.isn.get(&key) {
                        f.insert("tcp.seq", seq.wrapping_sub(*isn));
                    }
                    if let Some(isn) = ph.isn.get(&(h.dst, *dport, h.src, *sport)) {
                        f.insert("tcp.ack", ack.wrapping_sub(*isn));
                    }
                    let retransmitted = flags & 0x07 != 0
                        && !ph.tcp_seen.insert((
                            ph.iface.clone(),
                            h.src,
                            *sport,
                            h.dst,
                            *dport,
                            *seq,
                            flags & 0x07,
                        ));
                    if flags & 0x07 == 0 || retransmitted {
                        // Data, ACKs and retransmitted SYN/FIN/RST: counted, not events
                        // (how often a sender retransmits is load, not behaviour).
                        *bulk = true;
                    } else if flags & 0x05 != 0 {
                        // How much data rides on a FIN or RST depends on the sender's write
                        // pattern; the stream length (counted per flow) is what is exact.
                        f.remove("size");
                        f.remove("tcp.len");
                    }
                    // OpenVPN over TCP: the first record of the segment.
                    if !pkt.payload.is_empty()
                        && let Some(wrap) = ovpn
                        && let Some(rec) = pkt.payload.get(2..)
                    {
                        ovpn_fields(rec, wrap, f, layers, bulk, ph);
                    } else if (*sport == 443 || *dport == 443)
                        && let Some(r) = crate::vpn::TlsRecord::parse(pkt.payload, false)
                    {
                        // TLS on 443 (openconnect): the first record of the segment; a
                        // handshake record in the clear is an event, the rest is bulk.
                        layers.push("tls".into());
                        f.insert("tls.rec", r.describe());
                        if r.content == 22 && r.handshake.is_some() && !retransmitted {
                            *bulk = false;
                            // Certificates and signatures: a byte or two more or less per key.
                            if let Some(size) = f.remove("size") {
                                f.insert("tls.hs_size", size);
                            }
                            f.remove("tcp.len");
                        }
                    }
                }
                L4::Udp { .. } => {
                    if let Some(d) = dns {
                        layers.push("dns".into());
                        f.insert("dns.id", d.id);
                        f.insert("dns.msg", d.describe());
                    } else if let Some(d) = pkt.dhcp() {
                        layers.push("dhcp".into());
                        f.insert("dhcp.msg", d.describe());
                    } else if let Some(wrap) = ovpn {
                        ovpn_fields(pkt.payload, wrap, f, layers, bulk, ph);
                    } else if let Some((s, d)) = ports {
                        other_vpn_fields(pkt.payload, s, d, f, layers, bulk);
                    }
                }
                L4::Icmp { typ, code } => {
                    f.insert("icmp", icmp_name(v6, *typ, *code));
                }
                L4::Esp(e) => esp_fields(e, f, bulk),
                L4::None => {}
            }
            (Some(src), Some(dst), proto.to_owned(), ports)
        }
    }
}

/// A flow key of an encrypted stream whose length is not behaviour: SSH (`… tcp A:P <->
/// B:22`: its own padding and, for an `ssh -w` tunnel, how the traffic inside was packed)
/// and TLS on 443 (HTTPS and AnyConnect's CSTP: the HTTP inside carries dates and cookies of
/// varying length). Summaries leave its stream length out and diffs do not compare it exactly.
pub fn variable_stream(key: &str) -> bool {
    key.contains(" tcp ")
        && key
            .split(' ')
            .any(|e| e.ends_with(":22") || e.ends_with(":443"))
}

/// A flow key of DTLS on 443 (AnyConnect's data channel beside its TLS on TCP 443): whether
/// a run's packets took it or the TLS channel follows how its handshake raced the server's
/// set-up (openconnect retries a failed one only after a minute), so summaries name the flow
/// without its record kinds.
pub fn variable_datagram_path(key: &str) -> bool {
    key.contains(" udp ") && key.split(' ').any(|e| e.ends_with(":443"))
}

fn esp_fields(e: &crate::vpn::Esp, f: &mut Fields, bulk: &mut bool) {
    // SPIs are chosen anew by every negotiation and sequence numbers count traffic: both
    // masked by default; the packets are counted per flow.
    f.insert("esp.spi", format!("0x{:08x}", e.spi));
    f.insert("esp.seq", e.seq);
    *bulk = true;
}

/// WireGuard (any port), IKE and ESP-in-UDP (500/4500), DTLS (any port, when every record
/// of the datagram parses and they fill it exactly).
fn other_vpn_fields(
    p: &[u8],
    sport: u16,
    dport: u16,
    f: &mut Fields,
    layers: &mut Vec<String>,
    bulk: &mut bool,
) {
    use crate::vpn::{Esp, Ike, TlsRecord, WireGuard};
    let ike_port = [500, 4500].contains(&sport) || [500, 4500].contains(&dport);
    if ike_port {
        let nat_t = sport == 4500 || dport == 4500;
        let (ike, rest) = match p.get(..4) {
            Some([0, 0, 0, 0]) if nat_t => (true, &p[4..]),
            Some(_) if nat_t => (false, p),
            _ => (true, p),
        };
        if ike {
            if let Some(h) = Ike::parse(rest) {
                layers.push(if h.major == 2 { "ikev2" } else { "isakmp" }.into());
                f.insert("ike.msg", h.describe());
                f.insert("ike.spi", format!("{:016x}/{:016x}", h.ispi, h.rspi));
                f.insert("ike.mid", h.mid);
                *bulk = false;
            }
        } else if let Some(e) = Esp::parse(rest) {
            layers.push("esp".into());
            esp_fields(&e, f, bulk);
        }
        return;
    }
    if let Some(w) = WireGuard::parse(p) {
        layers.push("wireguard".into());
        f.insert("wg.msg", w.kind());
        match w {
            WireGuard::Initiation { sender } => f.insert("wg.idx", format!("{sender:08x}")),
            WireGuard::Response { sender, receiver } => {
                f.insert("wg.idx", format!("{sender:08x}/{receiver:08x}"))
            }
            WireGuard::CookieReply { receiver } => f.insert("wg.idx", format!("{receiver:08x}")),
            WireGuard::Transport { receiver, counter } => {
                f.insert("wg.idx", format!("{receiver:08x}"));
                f.insert("wg.counter", counter);
            }
        }
        // Transport data and keepalives come with traffic and timers: counted, not events.
        *bulk = matches!(w, WireGuard::Transport { .. });
        return;
    }
    let records = TlsRecord::all(p, true);
    if !records.is_empty() && records.iter().map(|r| r.len).sum::<usize>() == p.len() {
        layers.push("dtls".into());
        let kinds: Vec<String> = records.iter().map(TlsRecord::describe).collect();
        f.insert("tls.rec", kinds.join(", "));
        *bulk = records.iter().all(|r| r.content == 23);
    }
}

fn ovpn_fields(
    p: &[u8],
    wrap: Option<Wrap>,
    f: &mut Fields,
    layers: &mut Vec<String>,
    bulk: &mut bool,
    ph: &mut Placeholders,
) {
    let Some(o) = openvpn::decode_with(p, wrap) else {
        return;
    };
    layers.push("openvpn".into());
    f.insert("ovpn.op", o.name());
    f.insert("ovpn.key", o.key_id);
    if let Some(peer) = o.peer_id {
        f.insert("ovpn.peer", peer);
    }
    if let Some(s) = o.session {
        f.insert("ovpn.sid", ph.session(s));
    }
    if let Some(s) = o.remote_session {
        f.insert("ovpn.rsid", ph.session(s));
    }
    if let Some(n) = o.acks {
        f.insert("ovpn.acks", n);
    }
    if let Some(pid) = o.packet_id {
        f.insert("ovpn.pid", pid);
    }
    if let Some(pl) = &o.payload {
        f.insert("ovpn.payload", pl.clone());
    }
    if o.wrapped {
        let kind = o
            .wrap
            .filter(|w| *w != Wrap::Plain)
            .map_or("true", Wrap::name);
        f.insert("ovpn.wrapped", kind);
    }
    // Data packets, standalone ACKs and retransmitted control packets depend on traffic
    // and timing.
    let retransmitted = match (o.session, o.packet_id) {
        (Some(sid), Some(pid)) if !o.wrapped => {
            !ph.ctl_seen.insert((ph.iface.clone(), sid, pid, o.opcode))
        }
        _ => false,
    };
    if o.is_data() || o.opcode == 5 || retransmitted {
        *bulk = true;
    } else {
        *bulk = false;
        // Control packets carry certificates and signatures whose DER length varies by a
        // byte or two from one key to the next: their size is a field of its own.
        if let Some(size) = f.remove("size") {
            f.insert("ovpn.ctl_size", size);
        }
    }
}

/// What, beside its addresses and ports, tells one connection from another.
#[derive(Clone, Copy)]
struct Conversation {
    proto: u8,
    /// The query id of a DNS exchange over UDP: a reused port is a new exchange.
    dns_id: Option<u16>,
}

/// Names both ports: well-known and service ports literally, others `ephN`.
fn port_names(
    ph: &mut Placeholders,
    rules: &Rules,
    (src, sp): (IpAddr, u16),
    (dst, dp): (IpAddr, u16),
    conv: Conversation,
) -> (String, String) {
    let proto = conv.proto;
    let service =
        |p: u16| p < 1024 || rules.service_ports.contains(&p) || ph.ovpn_ports.contains(&p);
    match (service(sp), service(dp)) {
        (true, true) => (sp.to_string(), dp.to_string()),
        (false, true) => {
            let list = ph.eph.entry((src, dst, dp, proto)).or_default();
            (
                format!("eph{}", Placeholders::numbered(list, (sp, conv.dns_id))),
                dp.to_string(),
            )
        }
        (true, false) => {
            let list = ph.eph.entry((dst, src, sp, proto)).or_default();
            (
                sp.to_string(),
                format!("eph{}", Placeholders::numbered(list, (dp, conv.dns_id))),
            )
        }
        (false, false) => {
            let (lo, hi) = if src <= dst { (src, dst) } else { (dst, src) };
            let list = ph.eph_pair.entry((lo, hi, proto)).or_default();
            let a = Placeholders::numbered(list, sp);
            let b = Placeholders::numbered(list, dp);
            (format!("eph{a}"), format!("eph{b}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_set_is_a_known_field() {
        // `Fields` keeps values by position in FIELDS; a name outside it would be lost.
        let src = include_str!("normalize.rs");
        let mut n = 0;
        for part in src.split("f.insert(\"").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(FIELDS.contains(&name), "{name} is not in FIELDS");
            n += 1;
        }
        assert!(n > 20);
        for (name, _) in tap_fields("tunscope trace=1 peer=2 key=0 pid=3 stage_ns=4 drop=x") {
            assert!(FIELDS.contains(&name), "{name}");
        }
    }
    use crate::file::{Iface, Record};

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        let total = (28 + payload.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    fn cap(pkts: Vec<Vec<u8>>) -> Capture {
        Capture {
            ifaces: vec![Iface {
                name: "client/eth0".into(),
                link: LinkType::Raw,
                snaplen: 0,
            }],
            records: pkts
                .into_iter()
                .enumerate()
                .map(|(i, data)| Record {
                    iface: 0,
                    ts_ns: 1_000_000 * i as u64,
                    orig_len: data.len() as u32,
                    data,
                    comment: None,
                    outgoing: None,
                })
                .collect(),
            report: Default::default(),
        }
    }

    #[test]
    fn ephemeral_ports_and_sessions_get_placeholders() {
        let mut reset_a = vec![7 << 3];
        reset_a.extend_from_slice(&[0xaa; 8]);
        reset_a.extend_from_slice(&[0, 0, 0, 0, 0]);
        let mut reset_b = vec![8 << 3];
        reset_b.extend_from_slice(&[0xbb; 8]);
        reset_b.extend_from_slice(&[0, 0, 0, 0, 0]);
        let n1 = normalize(
            &cap(vec![
                udp([198, 18, 1, 2], [198, 18, 2, 2], 40001, 1194, &reset_a),
                udp([198, 18, 2, 2], [198, 18, 1, 2], 1194, 40001, &reset_b),
            ]),
            &Rules::default(),
        );
        // Another run: other ports, other session ids, same behaviour.
        let mut reset_c = reset_a.clone();
        reset_c[1..9].copy_from_slice(&[0x11; 8]);
        let mut reset_d = reset_b.clone();
        reset_d[1..9].copy_from_slice(&[0x22; 8]);
        let n2 = normalize(
            &cap(vec![
                udp([198, 18, 1, 2], [198, 18, 2, 2], 51234, 1194, &reset_c),
                udp([198, 18, 2, 2], [198, 18, 1, 2], 1194, 51234, &reset_d),
            ]),
            &Rules::default(),
        );
        assert_eq!(n1.flows.len(), 1);
        assert_eq!(
            n1.flows[0].key,
            "client/eth0 udp 198.18.1.2:eph1 <-> 198.18.2.2:1194"
        );
        let ids = |n: &Normalized| {
            n.events
                .iter()
                .map(|e| {
                    e.identity()
                        .iter()
                        .map(|(a, b)| format!("{a}={b}"))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&n1), ids(&n2));
        assert_eq!(n1.events[0].get("ovpn.sid"), Some("S1"));
        assert_eq!(n1.events[1].get("ovpn.sid"), Some("S2"));
        assert!(!n1.events[1].forward);
        assert_eq!(n1.events[0].get("ip.id"), None, "masked by default");
        let mut rules = Rules::default();
        rules.unmask("ip.id").unwrap();
        assert!(rules.mask("ip.idd").is_err());
        let n3 = normalize(
            &cap(vec![udp([1, 1, 1, 1], [2, 2, 2, 2], 5, 6, b"x")]),
            &rules,
        );
        assert_eq!(n3.events[0].get("ip.id"), Some("4660"));
    }

    /// A DNS message: one question for `name` of type `qtype` (1 = A, 28 = AAAA).
    fn dns(id: u16, response: bool, qtype: u16) -> Vec<u8> {
        let flags: u16 = if response { 0x8180 } else { 0x0100 };
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        for label in ["intranet", "corp", "example"] {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        m
    }

    #[test]
    fn a_dns_exchange_on_a_reused_port_is_a_flow_of_its_own() {
        let (client, server) = ([198, 19, 0, 2], [198, 19, 10, 53]);
        // A lookup of A, then A and AAAA from fresh sockets; in the second run the kernel
        // handed the first socket's port to the AAAA query.
        let run = |aaaa_port: u16| {
            let mut pkts = vec![];
            for (port, id, qtype) in [(40001, 7, 1), (40002, 8, 1), (aaaa_port, 9, 28)] {
                pkts.push(udp(client, server, port, 53, &dns(id, false, qtype)));
                pkts.push(udp(server, client, 53, port, &dns(id, true, qtype)));
            }
            normalize(&cap(pkts), &Rules::default())
        };
        let (fresh, reused) = (run(40003), run(40001));
        let keys = |n: &Normalized| n.flows.iter().map(|f| f.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&fresh), keys(&reused));
        assert_eq!(
            keys(&fresh),
            [1, 2, 3].map(|n| format!("client/eth0 udp 198.19.0.2:eph{n} <-> 198.19.10.53:53"))
        );
        assert_eq!(
            crate::summary::summary(&fresh),
            crate::summary::summary(&reused)
        );
        // One socket asking A and AAAA (glibc's resolver): two exchanges, two flows, as when
        // each had its own socket.
        let one_socket = normalize(
            &cap(vec![
                udp(client, server, 40001, 53, &dns(7, false, 1)),
                udp(client, server, 40005, 53, &dns(8, false, 1)),
                udp(client, server, 40005, 53, &dns(9, false, 28)),
                udp(server, client, 53, 40005, &dns(9, true, 28)),
                udp(server, client, 53, 40005, &dns(8, true, 1)),
                udp(server, client, 53, 40001, &dns(7, true, 1)),
            ]),
            &Rules::default(),
        );
        assert_eq!(keys(&one_socket), keys(&fresh));
        assert_eq!(
            crate::summary::summary(&one_socket),
            crate::summary::summary(&fresh)
        );
    }

    #[test]
    fn peer_info_versions_are_masked_in_text() {
        let t = "key-method 2, options 'V4,dev-type tun', peer-info 'IV_VER=2.6.3;IV_PLAT=linux;IV_SSL=OpenSSL 3.0.20 1 Jan;IV_PROTO=990'";
        assert_eq!(
            clean_text(t),
            "key-method 2, options 'V4,dev-type tun', peer-info 'IV_VER=*;IV_PLAT=linux;IV_SSL=*;IV_PROTO=990'"
        );
    }
}
