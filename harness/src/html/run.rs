//! The page of one scenario run (`report.html` beside `report.json`): what a person triaging
//! a run looks at first — the network, the verdicts with their evidence, what the tunnel did
//! to the client's routes and DNS, and inside the engines.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;
use tunscope_proto::stage::Stage;

use super::{esc, fmt_ns, histogram, line_diff, page, table, td, td_num, verdict};
use crate::scenario::report::{HostView, RunReport};
use crate::scenario::run::NOT_APPLICABLE;

/// Renders a run's report page.
pub fn render(r: &RunReport) -> String {
    let mut b = String::new();
    let failed = r.checks.iter().filter(|c| !c.passed).count();
    let _ = write!(
        b,
        "<h1>{} <span class=\"muted\">[{}]</span> <span class=\"badge {}\" data-verdict=\"{}\">{}</span></h1>\
         <p>{}</p><p class=\"muted\">client: {} · server: {} · {} checks, {failed} failed · tunnel up in {:.2} s · run {:.1} s</p>",
        esc(&r.scenario),
        esc(&r.pairing()),
        if r.passed { "pass" } else { "fail" },
        if r.passed { "pass" } else { "fail" },
        if r.passed { "PASSED" } else { "FAILED" },
        esc(&r.description),
        esc(&r.client),
        esc(&r.server),
        r.checks.len(),
        r.tunnel_up_s,
        r.wall_s
    );
    b.push_str(&files(r));
    b.push_str("<h2>Network</h2>");
    b.push_str(&topology(&r.topology));
    b.push_str(&checks(r));
    b.push_str(&states(r));
    b.push_str(&dns(r));
    b.push_str("<h2>Inside the engines</h2>");
    for (side, report, implementation) in [
        ("client", &r.engines.client, &r.client),
        ("server", &r.engines.server, &r.server),
    ] {
        b.push_str(&engine(side, report.as_ref(), implementation));
    }
    b.push_str(&journeys(&r.journeys));
    if let Some(i) = &r.impairment {
        let _ = write!(b, "<h2>Link impairment ({})</h2>", esc(i.link.describe()));
        let row = |dir: &str, c: &crate::impair::DirectionCounts| {
            vec![
                td(dir),
                td_num(&c.frames.to_string()),
                td_num(&c.sent.to_string()),
                td_num(&c.lost.to_string()),
                td_num(&c.outage.to_string()),
                td_num(&c.delayed.to_string()),
                td_num(&c.reordered.to_string()),
                td_num(&c.duplicated.to_string()),
                td_num(&c.corrupted.to_string()),
                td_num(&c.rate_dropped.to_string()),
                td_num(&c.too_big.to_string()),
                td_num(&c.overrun.to_string()),
                td_num(&c.send_failed.to_string()),
            ]
        };
        b.push_str(&table(
            "impairment",
            &[
                "direction",
                "frames",
                "sent",
                "lost",
                "in outages",
                "delayed",
                "reordered",
                "duplicated",
                "corrupted",
                "over the rate",
                "too big",
                "overrun",
                "unsent",
            ],
            &[
                row("to the server", &i.to_server),
                row("to the client", &i.to_client),
            ],
        ));
    }
    if !r.kernel_drops.is_empty() {
        b.push_str("<h2>Dropped in the kernels</h2>");
        let rows: Vec<Vec<String>> = r
            .kernel_drops
            .iter()
            .map(|d| {
                vec![
                    td(&d.host),
                    td(&d.place),
                    td(&d.counter),
                    td_num(&d.count.to_string()),
                    td(&d.meaning),
                ]
            })
            .collect();
        b.push_str(&table(
            "kernel-drops",
            &["host", "where", "counter", "count", "meaning"],
            &rows,
        ));
    }
    let _ = write!(
        b,
        "<h2>Capture</h2><p>{} packets on {} interfaces and stages; {} dropped by the kernel before capture.</p><pre>{}</pre>",
        r.capture.packets,
        r.capture.interfaces.len(),
        r.capture_drops,
        esc(&r.capture.interfaces.join("\n"))
    );
    page(&format!("{} [{}]", r.scenario, r.pairing()), &b)
}

/// Links to the run's files, relative (the page sits in the run's directory).
fn files(r: &RunReport) -> String {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut s = String::from("<p class=\"files\">");
    for (what, p) in [
        ("pcapng (every interface and stage)", &r.files.pcapng),
        ("report.json", &r.files.report),
        ("golden summary", &r.files.summary),
        ("client log", &r.files.client_log),
        ("server log", &r.files.server_log),
    ] {
        let n = name(p);
        let _ = write!(
            s,
            "<a href=\"{}\">{}</a> · ",
            esc(&n),
            esc(&format!("{what}: {n}"))
        );
    }
    s.truncate(s.len() - " · ".len());
    s.push_str("</p>");
    s
}

/// The namespaces side by side with their interfaces and addresses; veth links between
/// neighbours; further clients (`client2`…) in a second row, linked to the router; the
/// tunnel as a dashed arc from the client to the server.
fn topology(hosts: &[HostView]) -> String {
    const BOX_W: f64 = 270.0;
    const GAP: f64 = 26.0;
    const LINE: f64 = 15.0;
    if hosts.is_empty() {
        return "<p class=\"na\">topology not recorded</p>".into();
    }
    // The second row's hosts and the first-row host each hangs off: further clients off the
    // router, the LAN behind the client off the client.
    let anchor = |h: &HostView| match h.host.as_str() {
        "home" => Some("client"),
        "server2" => Some("router"),
        c if c != "client" && c.starts_with("client") && crate::network::is_host_name(c) => {
            Some("router")
        }
        _ => None,
    };
    let row1: Vec<&HostView> = hosts.iter().filter(|h| anchor(h).is_none()).collect();
    let row2: Vec<&HostView> = hosts.iter().filter(|h| anchor(h).is_some()).collect();
    let tallest = hosts.iter().map(|h| h.addresses.len()).max().unwrap_or(0);
    let box_h = 44.0 + LINE * tallest as f64;
    let top = 64.0;
    let top2 = top + box_h + 2.0 * GAP;
    let w = row1.len().max(row2.len()) as f64 * (BOX_W + GAP);
    let h = if row2.is_empty() { top } else { top2 } + box_h + 10.0;
    let mut s = format!(
        "<svg class=\"topology\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">"
    );
    let x_of = |i: usize| i as f64 * (BOX_W + GAP) + 2.0;
    let link = |s: &mut String, (x1, y1): (f64, f64), (x2, y2): (f64, f64)| {
        let _ = write!(
            s,
            "<line class=\"link\" x1=\"{x1:.0}\" y1=\"{y1:.0}\" x2=\"{x2:.0}\" y2=\"{y2:.0}\" stroke=\"#555\" stroke-width=\"3\"/>"
        );
    };
    let y = top + box_h / 2.0;
    for i in 1..row1.len() {
        link(&mut s, (x_of(i - 1) + BOX_W, y), (x_of(i), y));
    }
    for (k, h) in row2.iter().enumerate() {
        if let Some(a) = row1.iter().position(|r| Some(r.host.as_str()) == anchor(h)) {
            link(
                &mut s,
                (x_of(k) + BOX_W / 2.0, top2),
                (x_of(a) + BOX_W / 2.0, top + box_h),
            );
        }
    }
    let rows = row1
        .iter()
        .enumerate()
        .map(|(i, h)| (x_of(i), top, *h))
        .chain(row2.iter().enumerate().map(|(k, h)| (x_of(k), top2, *h)));
    for (x, top, host) in rows {
        let _ = write!(
            s,
            "<g class=\"namespace\" data-namespace=\"{}\"><rect x=\"{x:.0}\" y=\"{top}\" width=\"{BOX_W}\" height=\"{box_h:.0}\" rx=\"6\" fill=\"#f4f7fb\" stroke=\"#345\"/>\
             <text x=\"{:.0}\" y=\"{:.0}\" font-weight=\"bold\" font-size=\"13\">{}</text>\
             <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" fill=\"#555\">{}</text>",
            esc(&host.namespace),
            x + 8.0,
            top + 18.0,
            esc(&host.host),
            x + 8.0,
            top + 33.0,
            esc(&host.namespace)
        );
        for (k, a) in host.addresses.iter().enumerate() {
            let tunnel = a.starts_with("tun") || a.starts_with("tap");
            let _ = write!(
                s,
                "<text class=\"iface\" x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" font-family=\"monospace\" fill=\"{}\">{}</text>",
                x + 8.0,
                top + 50.0 + LINE * k as f64,
                if tunnel { "#b4236b" } else { "#123" },
                esc(a)
            );
        }
        s.push_str("</g>");
    }
    let hosts = &row1;
    let client = hosts.iter().position(|h| h.host == "client");
    let server = hosts.iter().position(|h| h.host == "server");
    if let (Some(c), Some(sv)) = (client, server) {
        let (x1, x2) = (x_of(c) + BOX_W / 2.0, x_of(sv) + BOX_W / 2.0);
        let tun: Vec<&str> = hosts[c]
            .addresses
            .iter()
            .filter(|a| a.starts_with("tun") || a.starts_with("tap"))
            .map(String::as_str)
            .collect();
        let _ = write!(
            s,
            "<path class=\"tunnel\" d=\"M{x1:.0},{top} C{x1:.0},24 {x2:.0},24 {x2:.0},{top}\" fill=\"none\" stroke=\"#b4236b\" stroke-width=\"2.5\" stroke-dasharray=\"7,4\"/>\
             <text x=\"{:.0}\" y=\"16\" text-anchor=\"middle\" font-size=\"12\" fill=\"#b4236b\">tunnel{}</text>",
            (x1 + x2) / 2.0,
            if tun.is_empty() {
                String::new()
            } else {
                format!(": {}", esc(&tun.join(", ")))
            }
        );
    }
    s.push_str("</svg>");
    s
}

fn checks(r: &RunReport) -> String {
    let rows: Vec<Vec<String>> = r
        .checks
        .iter()
        .map(|c| {
            let evidence = if c.evidence.is_empty() {
                String::new()
            } else {
                format!(
                    "<details{}><summary>evidence ({} lines)</summary><pre>{}</pre></details>",
                    if c.passed { "" } else { " open" },
                    c.evidence.len(),
                    esc(&c.evidence.join("\n"))
                )
            };
            vec![
                if c.passed && c.message.starts_with(NOT_APPLICABLE) {
                    format!(
                        "<td data-check=\"{}\" data-verdict=\"not-applicable\"><span class=\"na\">N/A</span></td>",
                        esc(&c.name)
                    )
                } else {
                    format!(
                        "<td data-check=\"{}\" data-verdict=\"{}\">{}</td>",
                        esc(&c.name),
                        if c.passed { "pass" } else { "fail" },
                        verdict(c.passed)
                    )
                },
                td(&c.name),
                td(&c.kind),
                td_num(&if c.line == 0 {
                    "—".to_owned()
                } else {
                    c.line.to_string()
                }),
                format!("<td>{}{evidence}</td>", esc(&c.message)),
            ]
        })
        .collect();
    format!(
        "<h2>Checks</h2>{}",
        table(
            "checks",
            &["verdict", "check", "kind", "line", "what was seen"],
            &rows
        )
    )
}

/// The client's routes, addresses and resolv.conf: what the tunnel changed, and whether
/// stopping it put everything back.
fn states(r: &RunReport) -> String {
    let st = &r.states;
    let lines = |t: &str| -> Vec<String> { t.lines().map(str::to_owned).collect() };
    let mut s = String::from(
        "<h2>The client's network: before → during the tunnel → after</h2>\
         <table class=\"states\"><tr><th></th><th>before → during</th><th>during → after</th></tr>",
    );
    for (what, a, b, c) in [
        (
            "IPv4 routes",
            &st.before.routes,
            &st.during.routes,
            &st.after.routes,
        ),
        (
            "IPv6 routes",
            &st.before.routes6,
            &st.during.routes6,
            &st.after.routes6,
        ),
        (
            "addresses",
            &st.before.addresses,
            &st.during.addresses,
            &st.after.addresses,
        ),
    ] {
        let _ = write!(
            s,
            "<tr><th>{what}</th><td>{}</td><td>{}</td></tr>",
            line_diff(a, b),
            line_diff(b, c)
        );
    }
    let (a, b, c) = (
        lines(&st.before.resolv_conf),
        lines(&st.during.resolv_conf),
        lines(&st.after.resolv_conf),
    );
    let _ = write!(
        s,
        "<tr><th>resolv.conf</th><td>{}</td><td>{}</td></tr></table>",
        line_diff(&a, &b),
        line_diff(&b, &c)
    );
    if let [a, b, c] = r.resolvectl.as_slice() {
        let (a, b, c) = (lines(a), lines(b), lines(c));
        let _ = write!(
            s,
            "<table class=\"states resolvectl\"><tr><th>resolvectl status</th><td>{}</td><td>{}</td></tr></table>",
            line_diff(&a, &b),
            line_diff(&b, &c)
        );
    }
    let restored = st.before.routes == st.after.routes
        && st.before.routes6 == st.after.routes6
        && st.before.addresses == st.after.addresses
        && st.before.resolv_conf == st.after.resolv_conf;
    let _ = write!(
        s,
        "<p class=\"restored\" data-restored=\"{restored}\">{}</p>",
        if restored {
            "After the tunnel the client's routes, addresses and resolv.conf are as before."
        } else {
            "After the tunnel the client's network differs from before (see the right column)."
        }
    );
    s
}

fn dns(r: &RunReport) -> String {
    let t0 = r.dns.first().map_or(0, |q| q.at_ns);
    let rows: Vec<Vec<String>> = r
        .dns
        .iter()
        .map(|q| {
            let answers: Vec<String> = q.answers.iter().map(|a| a.to_string()).collect();
            vec![
                td_num(&format!(
                    "+{:.3} s",
                    q.at_ns.saturating_sub(t0) as f64 / 1e9
                )),
                td(&q.server),
                td(&q.from.to_string()),
                td(&q.iface),
                td(&q.name),
                td(&q.qtype),
                td(&q.rcode),
                td(&answers.join(", ")),
            ]
        })
        .collect();
    let mut s = String::from("<h2>DNS transcript</h2>");
    if rows.is_empty() {
        s.push_str("<p class=\"na\">No DNS query reached the scenario's resolvers.</p>");
    } else {
        s.push_str(&table(
            "dns",
            &[
                "time",
                "resolver",
                "from",
                "arrived on",
                "name",
                "type",
                "rcode",
                "answers",
            ],
            &rows,
        ));
    }
    if !r.web.is_empty() {
        let w0 = r.web.first().map_or(0, |w| w.at_ns);
        let rows: Vec<Vec<String>> = r
            .web
            .iter()
            .map(|w| {
                vec![
                    td_num(&format!(
                        "+{:.3} s",
                        w.at_ns.saturating_sub(w0) as f64 / 1e9
                    )),
                    td(&w.server),
                    td(&w.from.to_string()),
                    td(&w.request),
                    td_num(&w.status.to_string()),
                    td_num(&w.bytes_out.to_string()),
                ]
            })
            .collect();
        s.push_str("<h3>Web requests</h3>");
        s.push_str(&table(
            "web",
            &["time", "server", "from", "request", "status", "bytes sent"],
            &rows,
        ));
    }
    s
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// One engine's stage table and latency histograms, or why there are none.
fn engine(side: &str, report: Option<&Value>, implementation: &str) -> String {
    let mut s = format!("<h3 class=\"engine\" data-side=\"{side}\">{side} ({implementation})</h3>");
    let Some(r) = report else {
        let _ = write!(
            s,
            "<p class=\"na\" data-side=\"{side}\">not applicable: {}</p>",
            match implementation {
                "openvpn" => "stock openvpn has no stage probes; its packets are in the capture.",
                "wireguard" => "wireguard-go has no stage probes; its packets are in the capture.",
                "ssh" => "ssh has no stage probes; its packets are in the capture.",
                _ => "no report was read from this engine.",
            }
        );
        return s;
    };
    let stages: Vec<&Value> = r["totals"]["stages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|st| {
                    let name = st["stage"].as_str().unwrap_or("");
                    Stage::DATA_PATH.iter().any(|d| d.name() == name)
                })
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = stages
        .iter()
        .map(|st| {
            let drops: Vec<String> = st["drops"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k} {}", num(v))).collect())
                .unwrap_or_default();
            let q = &st["latency_ns"];
            vec![
                td(st["stage"].as_str().unwrap_or("?")),
                td_num(&num(&st["packets_in"]).to_string()),
                td_num(&num(&st["packets_out"]).to_string()),
                td_num(&num(&st["bytes_out"]).to_string()),
                td(&drops.join(", ")),
                td_num(&fmt_ns(q["p50"].as_f64().unwrap_or(0.0))),
                td_num(&fmt_ns(q["p99"].as_f64().unwrap_or(0.0))),
                td(if st["conserved"].as_bool() == Some(true) {
                    "in = out + drops"
                } else {
                    "NOT CONSERVED"
                }),
            ]
        })
        .collect();
    s.push_str(&table(
        "stages",
        &[
            "stage",
            "packets in",
            "packets out",
            "bytes out",
            "drops by reason",
            "latency p50",
            "p99",
            "accounting",
        ],
        &rows,
    ));
    let late = num(&r["totals"]["late_packets"]);
    if late > 0 {
        let _ = write!(
            s,
            "<p class=\"late\" data-side=\"{side}\">{late} packet(s) accepted late: reordered on the way, inside the replay window.</p>"
        );
    }
    s.push_str("<div class=\"hists\">");
    for st in &stages {
        let name = st["stage"].as_str().unwrap_or("?");
        let buckets: Vec<(u64, u64)> = st["latency_histogram"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some((p.get(0)?.as_u64()?, p.get(1)?.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        s.push_str(&histogram(
            &format!("{side} {name}: time per packet"),
            name,
            &buckets,
        ));
    }
    s.push_str("</div>");
    s
}

/// A waterfall of sampled packet journeys: per packet a row, each stage a bar placed at its
/// time since the packet's first stage, coloured by host.
fn journeys(js: &[Value]) -> String {
    const LABEL_W: f64 = 300.0;
    const PLOT_W: f64 = 620.0;
    const ROW_H: f64 = 22.0;
    let mut s = String::from("<h2>Packet journeys (a sample)</h2>");
    if js.is_empty() {
        s.push_str("<p class=\"na\">No journeys: the stage taps exist only where our engine runs (stock openvpn has none).</p>");
        return s;
    }
    // (start ns, stage ns, host, stage) per hop, relative to the journey's first hop.
    let hops = |j: &Value| -> Vec<(f64, f64, String, String)> {
        let hs = j["hops"].as_array().cloned().unwrap_or_default();
        let t0 = hs
            .iter()
            .filter_map(|h| h["ts_ns"].as_f64())
            .fold(f64::INFINITY, f64::min);
        hs.iter()
            .map(|h| {
                let ts = h["ts_ns"].as_f64().unwrap_or(t0);
                let d = h["stage_ns"].as_f64().unwrap_or(0.0);
                (
                    (ts - t0).max(0.0),
                    d,
                    h["host"].as_str().unwrap_or("?").to_owned(),
                    h["stage"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect()
    };
    let span = js
        .iter()
        .flat_map(|j| hops(j).into_iter().map(|(t, d, _, _)| t + d))
        .fold(1.0f64, f64::max);
    let scale = PLOT_W / span;
    let h = ROW_H * js.len() as f64 + 22.0;
    let _ = write!(
        s,
        "<p class=\"muted\">Each row is one data packet (peer-id, key-id, packet-id) from the sender's read_tun to the receiver's write_tun; blue: client, orange: server. Scale 0 – {}.</p>\
         <svg class=\"waterfall\" width=\"{}\" height=\"{h}\" viewBox=\"0 0 {} {h}\" role=\"img\">",
        fmt_ns(span),
        LABEL_W + PLOT_W + 10.0,
        LABEL_W + PLOT_W + 10.0
    );
    for (i, j) in js.iter().enumerate() {
        let y = i as f64 * ROW_H + 2.0;
        let id = &j["id"];
        let outcome = match &j["outcome"] {
            Value::String(o) => o.clone(),
            Value::Object(m) => m
                .iter()
                .next()
                .map(|(k, v)| format!("{k} {}", v.to_string().replace('"', "")))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let _ = write!(
            s,
            "<g class=\"journey\" data-outcome=\"{}\"><text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\">{} → {} pid {} · {}</text>",
            esc(&outcome),
            LABEL_W - 6.0,
            y + ROW_H * 0.65,
            esc(j["from"].as_str().unwrap_or("?")),
            esc(j["to"].as_str().unwrap_or("?")),
            id.get(2).map_or(String::new(), |p| p.to_string()),
            esc(&outcome)
        );
        for (t, d, host, stage) in hops(j) {
            let colour = if host == "client" {
                "#3b7dd8"
            } else {
                "#e0832b"
            };
            let _ = write!(
                s,
                "<rect class=\"hop\" data-stage=\"{}\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>{host} {stage}: at +{}, {} in stage</title></rect>",
                esc(&stage),
                LABEL_W + t * scale,
                (d * scale).max(2.0),
                ROW_H - 6.0,
                fmt_ns(t),
                fmt_ns(d)
            );
        }
        s.push_str("</g>");
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::engine;

    /// An engine's section shows its stages and, when the replay window accepted packets
    /// late, how many; stock openvpn's says why it has none.
    #[test]
    fn an_engine_section_shows_stages_and_late_packets() {
        let report = |late: u64| {
            serde_json::json!({ "totals": {
                "stages": [{ "stage": "decrypt", "packets_in": 10, "packets_out": 9,
                    "bytes_out": 900, "drops": { "replay": 1 }, "conserved": true,
                    "latency_ns": { "p50": 1000.0, "p99": 2000.0 }, "latency_histogram": [] }],
                "late_packets": late,
            }})
        };
        let with = engine("server", Some(&report(17)), "ours");
        assert!(with.contains("<td>decrypt</td>"), "{with}");
        assert!(with.contains("replay 1"), "{with}");
        assert!(with.contains("17 packet(s) accepted late"), "{with}");
        let without = engine("server", Some(&report(0)), "ours");
        assert!(!without.contains("accepted late"), "{without}");
        let stock = engine("client", None, "openvpn");
        assert!(stock.contains("not applicable"), "{stock}");
    }
}
