//! The golden summary of a scenario run: everything about its behaviour that must not change
//! by accident, in a form that is identical from run to run — check verdicts, the client's
//! routes, addresses and resolv.conf before/during/after, the DNS transcript, and the
//! normalized flow summary of the run's pcapng (every interface and engine stage).
//!
//! Written as `summary.txt` next to each run's pcapng; `harness/tests/golden.rs` compares it
//! with the insta snapshots under `captures/snapshots/` (accept intended changes with
//! `cargo insta review`).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use tunscope_capture::file::Capture;
use tunscope_capture::normalize::{Rules, normalize};

use super::report::RunReport;
use crate::netstate::NetState;
use crate::services::dns::DnsQuery;

fn block(s: &mut String, title: &str, lines: &[String]) {
    let _ = writeln!(s, "  {title}:");
    if lines.is_empty() {
        let _ = writeln!(s, "    (none)");
    }
    for l in lines {
        let _ = writeln!(s, "    {l}");
    }
}

fn state(s: &mut String, when: &str, st: &NetState) {
    let _ = writeln!(s, "{when}:");
    block(s, "routes", &st.routes);
    block(s, "addresses", &st.addresses);
    let resolv: Vec<String> = st
        .resolv_conf
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    block(s, "resolv.conf", &resolv);
}

/// One transcript line; the query's source port is a placeholder unless well known.
fn dns_line(q: &DnsQuery) -> String {
    let port = q.from.port();
    let from = if port < 1024 {
        q.from.to_string()
    } else {
        format!("{}:eph", q.from.ip())
    };
    let answers: Vec<String> = q.answers.iter().map(ToString::to_string).collect();
    format!(
        "{} ← {from} on {}: {} {} → {} [{}]{}",
        q.server,
        q.iface,
        q.qtype,
        q.name,
        q.rcode,
        answers.join(" "),
        if q.forwarded { " (forwarded)" } else { "" }
    )
}

/// The golden summary of a finished run and its capture (`openvpn_port`: the tunnel's port).
pub fn summary(report: &RunReport, capture: &Capture, openvpn_port: u16) -> String {
    let mut s = format!(
        "scenario {} [client {}, server {}]\n\n",
        report.scenario, report.client, report.server
    );
    let _ = writeln!(s, "checks:");
    for c in &report.checks {
        let _ = writeln!(s, "  {} {}", if c.passed { "PASS" } else { "FAIL" }, c.name);
    }
    let _ = writeln!(s, "\nclient namespace");
    state(&mut s, "before", &report.states.before);
    state(&mut s, "during", &report.states.during);
    state(&mut s, "after", &report.states.after);
    // Set semantics: parallel A/AAAA questions come in either order.
    let dns: BTreeSet<String> = report.dns.iter().map(dns_line).collect();
    let _ = writeln!(s, "\nDNS transcript (every scenario resolver):");
    for l in &dns {
        let _ = writeln!(s, "  {l}");
    }
    // The scenario knows its tunnel's port: decoded as OpenVPN and kept literally, whatever
    // the capture shows of the session's start.
    let mut rules = Rules::default();
    rules.openvpn_ports.insert(openvpn_port);
    rules.service_ports.insert(openvpn_port);
    let n = normalize(capture, &rules);
    let _ = writeln!(s, "\nflows (normalized, per interface and stage):");
    for l in tunscope_capture::summary::summary(&n).lines() {
        let _ = writeln!(s, "  {l}");
    }
    s
}
