//! The reference handshake capture (tcpdump, stock OpenVPN 2.6 p2p over UDP, in
//! `captures/reference/`) normalized, and the diff's verdicts on edited copies of it:
//! a removed packet, two swapped packets, a changed byte — each reported as exactly that.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use tunscope_capture::diff::{Change, DiffOptions, DiffReport, diff};
use tunscope_capture::file::{Capture, read, write_pcapng};
use tunscope_capture::normalize::{Rules, normalize};

fn reference() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../captures/reference/openvpn-udp-handshake.pcap")
}

fn snapshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../captures/snapshots")
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

#[test]
fn reference_handshake_normalizes_to_a_sensible_event_list() {
    let cap = read(&reference()).unwrap();
    assert_eq!(cap.records.len(), 32);
    let rules = Rules {
        aggregate_bulk: false,
        ..Rules::default()
    };
    let n = normalize(&cap, &rules);
    let mut text = String::new();
    for e in &n.events {
        text.push_str(&format!("#{:<3} {}\n", e.index, e.describe()));
    }
    text.push_str("\nflow summary:\n");
    text.push_str(&tunscope_capture::summary::summary(&n));
    // What a reader expects of an OpenVPN 2.6 UDP handshake.
    assert!(text.contains("#1   eth/ipv4/udp/openvpn 198.18.0.1:eph1 > 198.18.0.2:1194"));
    assert!(text.contains("ovpn.op=P_CONTROL_HARD_RESET_CLIENT_V2 ovpn.key=0 ovpn.sid=S1"));
    assert!(
        text.contains("ovpn.op=P_CONTROL_HARD_RESET_SERVER_V2 ovpn.key=0 ovpn.sid=S2 ovpn.rsid=S1")
    );
    assert!(text.contains("ovpn.payload=tls handshake ClientHello"));
    assert_eq!(
        text.matches("ovpn.op=P_DATA_V2 ovpn.key=0 ovpn.peer=")
            .count(),
        20
    );
    insta::with_settings!({ snapshot_path => snapshot_dir(), prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("reference-openvpn-udp-handshake", text);
    });
}

#[test]
fn a_capture_is_equivalent_to_itself_and_to_a_rewritten_copy() {
    let cap = read(&reference()).unwrap();
    assert!(compare(&cap, &cap).equivalent());
    // Through pcapng (another format, ns timestamps): still the same packets.
    let copy = std::env::temp_dir().join(format!("ts-ref-{}.pcapng", std::process::id()));
    write_pcapng(&copy, &cap).unwrap();
    let back = read(&copy).unwrap();
    let _ = std::fs::remove_file(&copy);
    assert_eq!(back.records.len(), cap.records.len());
    assert_eq!(back.records[5].ts_ns, cap.records[5].ts_ns);
    let r = compare(&cap, &back);
    assert!(r.equivalent(), "{}", r.text());
}

#[test]
fn a_removed_packet_is_reported_as_exactly_that() {
    let cap = read(&reference()).unwrap();
    let mut edited = cap.clone();
    // Packet 3, the client's ClientHello.
    edited.records.remove(2);
    let r = compare(&cap, &edited);
    assert_eq!(r.changes.len(), 1, "{}", r.text());
    match &r.changes[0] {
        Change::Missing { a, event, .. } => {
            assert_eq!(*a, 3);
            assert!(event.contains("ClientHello"), "{event}");
        }
        other => panic!("expected a missing packet, got {other:?}"),
    }
    assert!(r.text().contains("- missing  A#3"), "{}", r.text());
}

#[test]
fn swapped_packets_are_reported_as_reordered() {
    let cap = read(&reference()).unwrap();
    let mut edited = cap.clone();
    // The client's ClientHello (3) and its second flight (7), 2.6 ms apart.
    edited.records.swap(2, 6);
    let r = compare(&cap, &edited);
    assert_eq!(r.changes.len(), 1, "{}", r.text());
    assert!(
        matches!(r.changes[0], Change::Reordered { .. }),
        "{}",
        r.text()
    );
}

#[test]
fn a_changed_field_is_reported_with_both_values() {
    let cap = read(&reference()).unwrap();
    let mut edited = cap.clone();
    // The server's hard reset (packet 2) with key-id 1 instead of 0.
    let op = 14 + 20 + 8;
    edited.records[1].data[op] |= 1;
    let r = compare(&cap, &edited);
    assert_eq!(r.changes.len(), 1, "{}", r.text());
    match &r.changes[0] {
        Change::Changed { fields, .. } => {
            assert_eq!(fields.len(), 1);
            assert_eq!(fields[0].field, "ovpn.key");
            assert_eq!(
                (fields[0].a.as_deref(), fields[0].b.as_deref()),
                (Some("0"), Some("1"))
            );
        }
        other => panic!("expected a changed packet, got {other:?}"),
    }
}

#[test]
fn a_stall_is_reported_as_timing() {
    let cap = read(&reference()).unwrap();
    let mut edited = cap.clone();
    // The server's last handshake packet (11) and everything after it 3 s later, as if the
    // server had stalled.
    for r in &mut edited.records[10..] {
        r.ts_ns += 3_000_000_000;
    }
    let r = compare(&cap, &edited);
    assert_eq!(r.changes.len(), 1, "{}", r.text());
    match &r.changes[0] {
        Change::Timing { a, a_ms, b_ms, .. } => {
            assert_eq!(*a, 11);
            assert!(*a_ms < 1.0 && *b_ms > 3000.0, "{a_ms} {b_ms}");
        }
        other => panic!("expected a timing change, got {other:?}"),
    }
}

#[test]
fn unreadable_files_are_clear_errors() {
    let dir = std::env::temp_dir();
    let garbage = dir.join(format!("ts-garbage-{}.pcap", std::process::id()));
    std::fs::write(&garbage, b"this is not a capture").unwrap();
    let e = read(&garbage).unwrap_err().to_string();
    let _ = std::fs::remove_file(&garbage);
    assert!(
        e.contains("not a pcap or pcapng file") && e.contains("text"),
        "{e}"
    );
    let e = read(&dir.join("ts-no-such-file.pcap"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot open") && e.contains("ts-no-such-file.pcap"),
        "{e}"
    );
    // A truncated file yields the complete packets before the cut.
    let bytes = std::fs::read(reference()).unwrap();
    let cut = dir.join(format!("ts-cut-{}.pcap", std::process::id()));
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let c = read(&cut).unwrap();
    let _ = std::fs::remove_file(&cut);
    assert_eq!(c.records.len(), 31);
    // … and says the last one was cut short.
    assert!(!c.report.complete());
    assert!(
        c.report
            .truncated
            .as_deref()
            .is_some_and(|t| t.contains("record 32")),
        "{:?}",
        c.report
    );
}
