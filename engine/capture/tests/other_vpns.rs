//! The other VPNs' wire formats in real captures nobody here wrote (tcpdump's, Wireshark's,
//! nDPI's and Zeek's test suites): WireGuard, IKEv2/ISAKMP, ESP (raw and in UDP), DTLS. For
//! each capture, what `normalize` decodes is compared with what Wireshark's dissectors decode
//! in the same file (tshark from the distribution), message by message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use tunscope_capture::file::read;
use tunscope_capture::normalize::{Rules, normalize};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/real-world-pcaps")
        .join(name)
}

/// Every value of one field of our events (bulk packets as events, nothing masked).
fn ours(name: &str, field: &str) -> Vec<String> {
    let cap = read(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let rules = Rules {
        aggregate_bulk: false,
        masks: Default::default(),
        ..Rules::default()
    };
    let n = normalize(&cap, &rules);
    n.events
        .iter()
        .filter_map(|e| {
            let d = e.describe();
            let at = d.find(&format!(" {field}="))?;
            let rest = &d[at + field.len() + 2..];
            // Values run to the next ` key=`.
            let end = rest
                .match_indices(' ')
                .find(|(i, _)| {
                    rest[i + 1..]
                        .split_once('=')
                        .is_some_and(|(k, _)| !k.contains(' ') && k.contains('.'))
                })
                .map_or(rest.len(), |(i, _)| i);
            Some(rest[..end].to_owned())
        })
        .collect()
}

/// One field per packet from tshark (`-T fields`), the packets a display filter selects.
fn tshark(name: &str, filter: &str, field: &str, extra: &[&str]) -> Vec<String> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(fixture(name))
        .args(extra)
        .args(["-Y", filter, "-T", "fields", "-e", field])
        .output()
        .expect("tshark runs");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn counts<I: IntoIterator<Item = String>>(v: I) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for k in v {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

#[test]
fn wireguard_messages_match_wiresharks() {
    for file in [
        "ndpi__wireguard.pcap",
        "zeek-spicy-wireguard__wireguard.pcap",
        "ndpi__mullvad_wireguard.pcap",
        "zeek-spicy-wireguard__tailscale_linux.pcap",
    ] {
        let names = |t: &str| {
            match t {
                "1" => "handshake-initiation",
                "2" => "handshake-response",
                "3" => "cookie-reply",
                "4" => "transport",
                o => o,
            }
            .to_owned()
        };
        let theirs = counts(
            tshark(file, "wg", "wg.type", &["--enable-heuristic", "wg"])
                .iter()
                .map(|t| names(t)),
        );
        let ours = counts(ours(file, "wg.msg"));
        assert!(!ours.is_empty(), "{file}: no WireGuard decoded");
        assert_eq!(ours, theirs, "{file}");
    }
}

#[test]
fn ike_exchanges_match_wiresharks() {
    for file in ["tcpdump__ikev2four.pcap", "tcpdump__ISAKMP_sa_setup.pcap"] {
        let ours = ours(file, "ike.msg");
        let theirs = tshark(file, "isakmp", "isakmp.exchangetype", &[]);
        assert!(!ours.is_empty(), "{file}: no IKE decoded");
        assert_eq!(ours.len(), theirs.len(), "{file}: {ours:?} vs {theirs:?}");
    }
    let v2 = ours("tcpdump__ikev2four.pcap", "ike.msg");
    assert_eq!(v2[0], "IKE_SA_INIT request");
    assert_eq!(v2[1], "IKE_SA_INIT response");
    assert!(v2.iter().any(|m| m == "IKE_AUTH request"), "{v2:?}");
}

#[test]
fn esp_packets_match_wiresharks() {
    for file in [
        "tcpdump__02-sunrise-sunset-esp.pcap",
        "tcpdump__08-sunrise-sunset-esp2.pcap",
        "tcpdump__espudp1.pcap",
    ] {
        let ours = counts(ours(file, "esp.spi"));
        // Wireshark prints SPIs as 0x%08x too.
        let theirs = counts(tshark(file, "esp", "esp.spi", &[]));
        assert!(!ours.is_empty(), "{file}: no ESP decoded");
        assert_eq!(ours, theirs, "{file}");
    }
}

#[test]
fn dtls_records_match_wiresharks() {
    let file = "wireshark__snakeoil-dtls.pcap";
    let kind = |t: &str| {
        match t {
            "20" => "change_cipher_spec",
            "21" => "alert",
            "22" => "handshake",
            "23" => "application_data",
            o => o,
        }
        .to_owned()
    };
    let theirs = counts(
        tshark(file, "dtls", "dtls.record.content_type", &[])
            .iter()
            .flat_map(|l| l.split(',').map(kind).collect::<Vec<_>>()),
    );
    let ours = counts(ours(file, "tls.rec").iter().flat_map(|l| {
        l.split(", ")
            .map(|r| r.split(' ').next().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    }));
    assert!(!ours.is_empty(), "{file}: no DTLS decoded");
    assert_eq!(ours, theirs, "{file}");
}
