//! Where the kernels of a scenario's namespaces dropped packets.
//!
//! A transfer that retransmits far more than the impaired link lost, or a tunnel that stalls
//! on a perfect link, lost packets somewhere between the wire and a program: a UDP socket
//! whose receive buffer was full (a VPN process that fell behind), a tun device whose queue
//! overflowed because its engine did not read fast enough, a route that did not exist. The
//! kernel counts each in the namespace's `/proc/net/{snmp,snmp6,netstat,dev}`; a scenario's
//! namespaces are fresh, so the counts are the run's. Read once, while the tunnel's devices
//! still exist, they let a report say "dropped at the server's UDP socket" instead of
//! leaving the engineer to guess.

use serde::{Deserialize, Serialize};

use crate::netns::Netns;

/// One non-zero drop counter of one namespace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelDrop {
    /// The host (`client`, `server`, …).
    pub host: String,
    /// Where it counted: `udp`, `ip6`, `tcp`, or an interface's `tun0 rx`.
    pub place: String,
    /// The kernel's name of the counter (`RcvbufErrors`, `drop`, …).
    pub counter: String,
    /// How many.
    pub count: u64,
    /// What it means, in a user's words.
    pub meaning: String,
}

/// The counters read from `/proc/net/snmp`, `snmp6` and `netstat`: (section, name, place,
/// meaning). Only drops — `InErrors` is left out as the sum of the `Udp` ones listed.
const PROTOCOL_COUNTERS: &[(&str, &str, &str, &str)] = &[
    ("Ip", "InHdrErrors", "ip", "IPv4 packets with a bad header"),
    (
        "Ip",
        "InAddrErrors",
        "ip",
        "IPv4 packets for an address not here",
    ),
    (
        "Ip",
        "InDiscards",
        "ip",
        "IPv4 packets discarded on input (no buffer)",
    ),
    (
        "Ip",
        "OutDiscards",
        "ip",
        "IPv4 packets discarded on output",
    ),
    (
        "Ip",
        "OutNoRoutes",
        "ip",
        "IPv4 packets with no route to send them on",
    ),
    (
        "Ip",
        "ReasmFails",
        "ip",
        "IPv4 fragments that did not reassemble",
    ),
    (
        "Ip",
        "FragFails",
        "ip",
        "IPv4 packets too big and not to be fragmented",
    ),
    (
        "Udp",
        "NoPorts",
        "udp",
        "UDP datagrams to a port no socket listens on",
    ),
    (
        "Udp",
        "RcvbufErrors",
        "udp",
        "UDP datagrams dropped: a socket's receive buffer was full (its reader fell behind)",
    ),
    (
        "Udp",
        "SndbufErrors",
        "udp",
        "UDP datagrams not sent: a socket's send buffer was full",
    ),
    (
        "Udp",
        "InCsumErrors",
        "udp",
        "UDP datagrams with a bad checksum",
    ),
    (
        "Udp",
        "MemErrors",
        "udp",
        "UDP datagrams dropped for lack of memory",
    ),
    (
        "Ip6",
        "InHdrErrors",
        "ip6",
        "IPv6 packets with a bad header",
    ),
    (
        "Ip6",
        "InAddrErrors",
        "ip6",
        "IPv6 packets for an address not here",
    ),
    (
        "Ip6",
        "InDiscards",
        "ip6",
        "IPv6 packets discarded on input (no buffer)",
    ),
    (
        "Ip6",
        "OutDiscards",
        "ip6",
        "IPv6 packets discarded on output",
    ),
    (
        "Ip6",
        "InNoRoutes",
        "ip6",
        "IPv6 packets with no route to forward them on",
    ),
    (
        "Ip6",
        "OutNoRoutes",
        "ip6",
        "IPv6 packets with no route to send them on",
    ),
    (
        "Ip6",
        "ReasmFails",
        "ip6",
        "IPv6 fragments that did not reassemble",
    ),
    (
        "Udp6",
        "NoPorts",
        "udp6",
        "UDP datagrams over IPv6 to a port no socket listens on",
    ),
    (
        "Udp6",
        "RcvbufErrors",
        "udp6",
        "UDP datagrams over IPv6 dropped: a socket's receive buffer was full",
    ),
    (
        "Udp6",
        "SndbufErrors",
        "udp6",
        "UDP datagrams over IPv6 not sent: a socket's send buffer was full",
    ),
    (
        "Udp6",
        "InCsumErrors",
        "udp6",
        "UDP datagrams over IPv6 with a bad checksum",
    ),
    (
        "TcpExt",
        "TCPBacklogDrop",
        "tcp",
        "TCP segments dropped: a socket's backlog was full",
    ),
    (
        "TcpExt",
        "TCPRcvQDrop",
        "tcp",
        "TCP segments dropped: a socket's receive queue was full",
    ),
    (
        "TcpExt",
        "ListenOverflows",
        "tcp",
        "connections refused: a listener's accept queue was full",
    ),
    (
        "TcpExt",
        "PFMemallocDrop",
        "tcp",
        "TCP segments dropped under memory pressure",
    ),
];

/// Reads the drops of every namespace in `hosts` (non-zero counters only, in host order).
/// A namespace that cannot be read is skipped: this is evidence, not a check.
pub fn read_all(hosts: &[(&str, &Netns)]) -> Vec<KernelDrop> {
    let mut out = vec![];
    for (host, ns) in hosts {
        let Ok(text) = ns.exec(
            "cat",
            &[
                "/proc/net/snmp",
                "/proc/net/snmp6",
                "/proc/net/netstat",
                "/proc/net/dev",
            ],
        ) else {
            continue;
        };
        out.extend(parse(host, &text));
    }
    out
}

/// The non-zero drop counters in the concatenated text of `/proc/net/snmp`, `snmp6`,
/// `netstat` and `dev` of one namespace.
pub fn parse(host: &str, text: &str) -> Vec<KernelDrop> {
    let mut found: Vec<KernelDrop> = vec![];
    let mut add = |place: &str, counter: &str, count: u64, meaning: &str| {
        if count > 0 {
            found.push(KernelDrop {
                host: host.to_owned(),
                place: place.to_owned(),
                counter: counter.to_owned(),
                count,
                meaning: meaning.to_owned(),
            });
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        // snmp and netstat: a line of names, then a line of values, both "Section: …".
        let (Some((s1, names)), Some((s2, values))) =
            (pair[0].split_once(": "), pair[1].split_once(": "))
        else {
            continue;
        };
        if s1 != s2 || names.split_whitespace().next().is_some_and(is_number) {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Some((_, _, place, meaning)) = PROTOCOL_COUNTERS
                .iter()
                .find(|(sec, n, _, _)| *sec == s1 && *n == name)
            {
                add(place, name, value.parse().unwrap_or(0), meaning);
            }
        }
    }
    for line in &lines {
        let mut f = line.split_whitespace();
        // snmp6: "Udp6RcvbufErrors   12" per line.
        if let (Some(key), Some(value), None) = (f.next(), f.next(), f.next()) {
            for (sec, name, place, meaning) in PROTOCOL_COUNTERS {
                if sec.ends_with('6') && key.strip_prefix(sec) == Some(name) {
                    add(place, name, value.parse().unwrap_or(0), meaning);
                }
            }
            continue;
        }
        // dev: "  tun0: rx bytes packets errs drop fifo frame compressed multicast tx bytes
        // packets errs drop fifo colls carrier compressed".
        let Some((iface, rest)) = line.split_once(':') else {
            continue;
        };
        let iface = iface.trim();
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if v.len() != 16 || iface.is_empty() || iface.contains(' ') {
            continue;
        }
        let tun = ["tun", "tap", "ipsec"].iter().any(|p| iface.starts_with(p));
        let (rx_meaning, tx_meaning) = if tun {
            (
                "packets the VPN program wrote that the kernel dropped",
                "packets for the VPN program dropped: the device's queue was full (the program did not read them in time)",
            )
        } else {
            ("frames dropped on receive", "frames dropped on send")
        };
        let (rx, tx) = (format!("{iface} rx"), format!("{iface} tx"));
        add(&rx, "drop", v[3], rx_meaning);
        add(&rx, "errs", v[2], "frames received in error");
        add(&tx, "drop", v[11], tx_meaning);
        add(&tx, "errs", v[10], "frames that failed to send");
    }
    found
}

fn is_number(s: &str) -> bool {
    s.parse::<u64>().is_ok()
}

/// One line for a run's progress: `server udp RcvbufErrors 3064, client tun0 tx drop 12`.
pub fn describe(drops: &[KernelDrop]) -> String {
    drops
        .iter()
        .map(|d| format!("{} {} {} {}", d.host, d.place, d.counter, d.count))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Excerpts of a real namespace's files after a run whose stock server fell behind.
    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 1 64 52301 0 0 26019 0 0 26282 32250 0 2 0 0 0 0 0 0 0 32250
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs
Icmp: 3 0 0 3
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 26268 0 3064 5954 3064 0 0 0 0
";
    const SNMP6: &str = "\
Ip6InReceives                   \t12
Ip6InDiscards                   \t0
Ip6OutNoRoutes                  \t4
Udp6RcvbufErrors                \t0
";
    const NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv TCPBacklogDrop ListenOverflows
TcpExt: 0 0 7 0
";
    const DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  tun0: 1000000   900    0    0    0     0          0         0  2000000    1500    0   12    0     0       0          0
  eth0: 5000      50     0    3    0     0          0         0     6000      60    0    0    0     0       0          0
";

    #[test]
    fn every_non_zero_drop_counter_is_found_with_its_place() {
        let text = [SNMP, SNMP6, NETSTAT, DEV].concat();
        let d = parse("server", &text);
        let got: Vec<(String, String, u64)> = d
            .iter()
            .map(|d| (d.place.clone(), d.counter.clone(), d.count))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ip".into(), "OutNoRoutes".into(), 2),
                ("udp".into(), "RcvbufErrors".into(), 3064),
                ("tcp".into(), "TCPBacklogDrop".into(), 7),
                ("ip6".into(), "OutNoRoutes".into(), 4),
                ("tun0 tx".into(), "drop".into(), 12),
                ("eth0 rx".into(), "drop".into(), 3),
            ]
        );
        assert!(d.iter().all(|d| d.host == "server"));
        assert!(
            d[4].meaning.contains("did not read them in time"),
            "{:?}",
            d[4]
        );
        assert_eq!(
            describe(&d[1..2]),
            "server udp RcvbufErrors 3064",
            "the progress line names host, place and counter"
        );
    }

    #[test]
    fn quiet_or_garbled_files_give_nothing_and_never_panic() {
        assert!(parse("client", "").is_empty());
        let quiet = SNMP.replace("3064", "0").replace(" 2 0 0", " 0 0 0");
        assert!(
            parse("client", &quiet).is_empty(),
            "{:?}",
            parse("client", &quiet)
        );
        for cut in 0..DEV.len() {
            let _ = parse("client", &DEV[..cut]);
        }
        let _ = parse(
            "client",
            "Udp: RcvbufErrors\nUdp: notanumber\nUdp6RcvbufErrors x y\n",
        );
    }
}
