//! A flow summary that stays the same from run to run of the same behaviour: per interface,
//! its flows (normalized endpoints) and the kinds of packets seen in each direction — no
//! counts or sizes, which vary with timing. Golden snapshots of scenarios are made of it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::normalize::{Flow, Normalized};

fn kinds(f: &Flow, d: usize) -> String {
    f.kinds[d].iter().cloned().collect::<Vec<_>>().join(", ")
}

/// The summary text: one block per interface (in `order` of hosts first, then by name).
pub fn summary(n: &Normalized) -> String {
    let mut by_iface: BTreeMap<&str, Vec<&Flow>> = BTreeMap::new();
    for f in &n.flows {
        by_iface.entry(f.iface.as_str()).or_default().push(f);
    }
    let mut s = String::new();
    for (iface, mut flows) in by_iface {
        flows.sort_by(|a, b| a.key.cmp(&b.key));
        let _ = writeln!(s, "{iface}");
        for f in flows {
            let what = f.key[iface.len()..].trim();
            if what == "control" {
                // Plaintext control messages: one per line, in both directions.
                for (d, arrow) in [(0, "→"), (1, "←")] {
                    for k in &f.kinds[d] {
                        let _ = writeln!(s, "  {arrow} {k}");
                    }
                }
                continue;
            }
            let _ = write!(s, "  {what}:");
            if what == "arp" {
                // Who asks whom depends on whose neighbour entry went stale first (the
                // kernel re-validates entries in use every 15–45 s with unicast probes), i.e.
                // on how long a run took: ARP is summarized without direction.
                let both: std::collections::BTreeSet<&String> =
                    f.kinds[0].iter().chain(&f.kinds[1]).collect();
                let both: Vec<&str> = both.into_iter().map(String::as_str).collect();
                let _ = writeln!(s, " ↔ {}", both.join(", "));
                continue;
            }
            let dtls = f.kinds.iter().flatten().any(|k| k.starts_with("tls "));
            if dtls && crate::normalize::variable_datagram_path(&f.key) {
                let _ = writeln!(s, " ↔ dtls");
                continue;
            }
            let (fw, bw) = (kinds(f, 0), kinds(f, 1));
            if !fw.is_empty() {
                let _ = write!(s, " → {fw}");
            }
            if !bw.is_empty() {
                let _ = write!(s, "{} ← {bw}", if fw.is_empty() { "" } else { " |" });
            }
            // Stream lengths of TCP connections closed from both sides are exact — but SSH's and TLS's
            // ([`crate::normalize::variable_stream`]).
            let closed = |d: usize| f.kinds[d].iter().any(|k| k.starts_with("tcp F"));
            if !crate::normalize::variable_stream(&f.key)
                && closed(0)
                && closed(1)
                && let (Some(a), Some(b)) = (f.counts[0].tcp_stream, f.counts[1].tcp_stream)
            {
                let _ = write!(s, "; stream → {a} B ← {b} B");
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::DirCounts;

    fn flow(key: &str, there: &[&str], back: &[&str]) -> Flow {
        let set = |k: &[&str]| k.iter().map(|s| (*s).to_owned()).collect();
        Flow {
            key: key.into(),
            iface: "client/eth0".into(),
            events: vec![],
            counts: [DirCounts::default(); 2],
            start_ns: 0,
            first: 0,
            kinds: [set(there), set(back)],
        }
    }

    #[test]
    fn arp_and_dtls_on_443_are_summarized_by_presence_other_flows_in_full() {
        // Two runs: in the second the peer re-validated its entry with a probe of its own.
        let one = |back_probe: bool| Normalized {
            flows: vec![
                flow(
                    "client/eth0 arp",
                    &["arp request"],
                    if back_probe {
                        &["arp reply", "arp request"]
                    } else {
                        &["arp reply"]
                    },
                ),
                flow(
                    "client/eth0 udp 198.18.1.2:eph1 <-> 198.18.2.2:1194",
                    &["P_DATA_V2"],
                    &[],
                ),
                // AnyConnect's DTLS: carrying the traffic in one run, only its handshake in
                // the other (the traffic took TLS on TCP 443).
                flow(
                    "client/eth0 udp 198.18.1.2:eph2 <-> 198.18.2.2:443",
                    if back_probe {
                        &["tls handshake client_hello"]
                    } else {
                        &["tls handshake client_hello", "tls application_data"]
                    },
                    &["tls handshake server_hello"],
                ),
            ],
            ..Default::default()
        };
        let text = summary(&one(false));
        assert_eq!(text, summary(&one(true)));
        assert!(text.contains("  arp: ↔ arp reply, arp request\n"), "{text}");
        assert!(text.contains("198.18.2.2:443: ↔ dtls\n"), "{text}");
        assert!(
            text.contains("198.18.2.2:1194: → P_DATA_V2\n"),
            "other flows keep their direction: {text}"
        );
    }
}
