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
