//! `tunscope diff` on real captures from the harness: two runs of a scenario are
//! equivalent; a run with a changed pushed route, a capture with one packet removed, and
//! one with two packets swapped are each reported as exactly that difference. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tunscope_capture::diff::{Change, DiffOptions, DiffReport, diff};
use tunscope_capture::file::{Capture, read, write_pcapng};
use tunscope_capture::normalize::{Rules, normalize};
use tunscope_harness::scenario::report::RunReport;
use tunscope_harness::scenario::run::{RunOptions, run};
use tunscope_harness::scenario::{self, Pairing, Scenario, Subject};
use tunscope_harness::subjects::tunscope_bin;

fn play(text: &str, tag: &str) -> RunReport {
    let s = Scenario::parse(&scenario::scenarios_dir().join(format!("{tag}.toml")), text).unwrap();
    let r = run(
        &s,
        &RunOptions {
            pairing: Pairing {
                client: Subject::Ours,
                server: Subject::Ours,
            },
            keep: false,
            out: std::env::temp_dir()
                .join("tunscope-tests")
                .join(format!("diff-{tag}-{}", std::process::id())),
            verbose: false,
        },
    )
    .unwrap();
    assert!(r.passed, "{tag}:\n{}", r.verdict_lines());
    r
}

fn compare(a: &Capture, b: &Capture) -> DiffReport {
    let rules = Rules::default();
    diff(
        "a",
        &normalize(a, &rules),
        "b",
        &normalize(b, &rules),
        &DiffOptions::default(),
    )
}

fn cli(args: &[&Path], extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(tunscope_bin().unwrap())
        .arg("diff")
        .args(args)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn real_captures_diff_to_exactly_their_differences() {
    let base_text =
        std::fs::read_to_string(scenario::scenarios_dir().join("split-tunnel.toml")).unwrap();
    let a = play(&base_text, "base");
    let b = play(&base_text, "again");

    // Two runs of the same scenario: equivalent, exit 0.
    let (code, stdout, _) = cli(&[&a.files.pcapng, &b.files.pcapng], &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("equivalent"), "{stdout}");

    let cap_a = read(&a.files.pcapng).unwrap();

    // A changed pushed route: the PUSH_REPLY, as both ends' control taps saw it — nothing
    // else (the route is to a network nobody uses).
    let changed = base_text.replace(
        "\"route 198.19.10.0 255.255.255.0\",",
        "\"route 198.19.10.0 255.255.255.0\",\n    \"route 198.19.99.0 255.255.255.0\",",
    );
    assert_ne!(changed, base_text);
    let c = play(&changed, "route");
    let r = compare(&cap_a, &read(&c.files.pcapng).unwrap());
    assert_eq!(r.changes.len(), 2, "{}", r.text());
    for ch in &r.changes {
        match ch {
            Change::Changed { flow, fields, .. } => {
                assert!(
                    flow == "client/control control" || flow == "server/control control",
                    "{flow}"
                );
                assert_eq!(fields.len(), 1, "{fields:?}");
                assert_eq!(fields[0].field, "text");
                let (x, y) = (
                    fields[0].a.as_deref().unwrap(),
                    fields[0].b.as_deref().unwrap(),
                );
                assert!(
                    x.starts_with("PUSH_REPLY") && !x.contains("198.19.99.0"),
                    "{x}"
                );
                assert!(y.contains("route 198.19.99.0 255.255.255.0"), "{y}");
            }
            other => panic!("unexpected {other:?}\n{}", r.text()),
        }
    }
    let (code, _, _) = cli(&[&a.files.pcapng, &c.files.pcapng], &[]);
    assert_eq!(code, Some(1));

    // One packet removed: the public resolver's answer for www.example.com on client/eth0.
    let n = normalize(&cap_a, &Rules::default());
    let victim = n
        .events
        .iter()
        .find(|e| {
            n.flows[e.flow].iface == "client/eth0"
                && e.get("dns.msg")
                    .is_some_and(|m| m.starts_with("answer A www.example.com"))
        })
        .expect("the DNS answer on client/eth0")
        .index;
    let mut edited = cap_a.clone();
    edited.records.remove(victim - 1);
    let dir = a.files.dir.clone();
    let removed: PathBuf = dir.join("removed.pcapng");
    write_pcapng(&removed, &edited).unwrap();
    let out = dir.join("differences.pcapng");
    let (code, stdout, stderr) = cli(
        &[&a.files.pcapng, &removed],
        &["--json", "--write-pcapng", out.to_str().unwrap()],
    );
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let changes = json["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{stdout}");
    assert_eq!(changes[0]["kind"], "missing");
    assert_eq!(changes[0]["a"], victim);
    assert!(
        changes[0]["flow"]
            .as_str()
            .unwrap()
            .starts_with("client/eth0 udp 198.18.1.2:eph1 <-> 198.18.100.53:53")
    );
    // The differing packet, with its explanation, opens in tshark.
    let t = Command::new("tshark")
        .arg("-r")
        .arg(&out)
        .args(["-T", "fields", "-e", "frame.comment", "-e", "dns.qry.name"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&t.stdout);
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(
        listing.contains("missing in B") && listing.contains("www.example.com"),
        "{listing}"
    );

    // Two packets swapped: the client's ClientHello and its last control packet (the EXIT
    // notification at the end), seconds apart, on client/eth0.
    let ovpn: Vec<usize> = n
        .events
        .iter()
        .filter(|e| {
            n.flows[e.flow].iface == "client/eth0"
                && e.forward
                && e.get("ovpn.op") == Some("P_CONTROL_V1")
        })
        .map(|e| e.index)
        .collect();
    let (first, last) = (ovpn[0], *ovpn.last().unwrap());
    assert!(last > first);
    let mut swapped = cap_a.clone();
    swapped.records.swap(first - 1, last - 1);
    let r = compare(&cap_a, &swapped);
    // Each of the two swapped packets moved past everything between them: both are named,
    // nothing else.
    let mut moved: Vec<usize> = r
        .changes
        .iter()
        .map(|c| match c {
            Change::Reordered { flow, a, .. } if flow.starts_with("client/eth0 udp") => *a,
            other => panic!("unexpected {other:?}\n{}", r.text()),
        })
        .collect();
    moved.sort_unstable();
    assert_eq!(moved, vec![first, last], "{}", r.text());

    // The server on another port: OpenVPN is recognised from the session's first packet
    // and everything decodes the same but the port.
    let moved = with_udp_port(&cap_a, 1194, 41194);
    let rules = Rules::default();
    let (na, nm) = (normalize(&cap_a, &rules), normalize(&moved, &rules));
    assert_eq!(na.events.len(), nm.events.len());
    let ovpn_events = na
        .events
        .iter()
        .filter(|e| e.get("layers").is_some_and(|l| l.ends_with("/openvpn")))
        .count();
    assert!(ovpn_events > 10, "{ovpn_events} OpenVPN events");
    for (x, y) in na.events.iter().zip(&nm.events) {
        let strip = |e: &tunscope_capture::normalize::Event| -> Vec<(&str, String)> {
            e.fields
                .iter()
                .filter(|(n, _)| *n != "src" && *n != "dst")
                .map(|(n, v)| (*n, v.clone()))
                .collect()
        };
        assert_eq!(
            strip(x),
            strip(y),
            "#{} decodes differently on port 41194",
            x.index
        );
    }
    assert!(
        nm.flows.iter().any(|f| f.key.contains(":41194")),
        "the moved server port is kept literally"
    );

    // An unreadable file: exit 2 and the reason.
    let (code, _, stderr) = cli(&[&a.files.pcapng, &dir.join("nope.pcapng")], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("cannot open"), "{stderr}");

    for r in [a, b, c] {
        let _ = std::fs::remove_dir_all(&r.files.dir);
    }
}

/// A copy of a capture with a UDP port rewritten in every IPv4 packet (Ethernet or raw IP),
/// the UDP checksum cleared (allowed over IPv4).
fn with_udp_port(cap: &Capture, from: u16, to: u16) -> Capture {
    let mut out = cap.clone();
    for r in &mut out.records {
        let link = cap.ifaces[r.iface].link;
        let ip = match link {
            tunscope_capture::file::LinkType::Ethernet if r.data.get(12..14) == Some(&[8, 0]) => 14,
            tunscope_capture::file::LinkType::Raw => 0,
            _ => continue,
        };
        let d = &mut r.data;
        if d.len() < ip + 20 || d[ip] >> 4 != 4 || d[ip + 9] != 17 {
            continue;
        }
        let udp = ip + usize::from(d[ip] & 0x0f) * 4;
        if d.len() < udp + 8 {
            continue;
        }
        for at in [udp, udp + 2] {
            if u16::from_be_bytes([d[at], d[at + 1]]) == from {
                d[at..at + 2].copy_from_slice(&to.to_be_bytes());
            }
        }
        d[udp + 6] = 0;
        d[udp + 7] = 0;
    }
    out
}
