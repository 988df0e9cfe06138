//! `tunscope diff` and `normalize` on captures from the wild (the committed selection of the
//! real-world corpus, `engine/capture/tests/corpus/pcaps/`): verdicts that cannot be had by
//! accident, losses said out loud, OpenVPN found on any port, clean output. No root needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("capture/tests/corpus/pcaps")
        .join(name)
}

fn tunscope(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tunscope"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(name: &str) -> String {
    corpus(name).display().to_string()
}

#[test]
fn diff_verdicts_cannot_be_had_by_accident() {
    let a = path("openvpn__ndpi__openvpn-tlscrypt.pcap");
    let b = path("openvpn__arkime__openvpn_synthetic.pcap");
    // Unrelated captures: different (exit 1), and said to share nothing.
    let (code, out, _) = tunscope(&["diff", &a, &b]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no flow in common"), "{out}");
    // A capture against itself: equivalent, exit 0, with what was compared.
    let (code, out, _) = tunscope(&["diff", &a, &a]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("13 record(s) read") && out.contains("complete"),
        "{out}"
    );
    // Unreadable: exit 2, naming the format.
    let snoop = path("wireshark-wiki__out.cap");
    let (code, _, err) = tunscope(&["diff", &a, &snoop]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("Sun snoop") && err.contains("editcap"),
        "{err}"
    );
    // Read in part: no verdict without --allow-partial (exit 2), the loss on stderr.
    let cut = path("wireshark-wiki__ssl.dump.pcap");
    let (code, _, err) = tunscope(&["diff", &cut, &cut]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cut short") && err.contains("--allow-partial"),
        "{err}"
    );
    let (code, out, _) = tunscope(&["diff", "--allow-partial", &cut, &cut]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("the verdict is about what was read"), "{out}");
}

#[test]
fn normalize_reports_losses_and_reads_gzip() {
    // Cut short: the packets before the cut are printed, the loss said, exit non-zero.
    let (code, out, err) = tunscope(&["normalize", &path("wireshark-wiki__ssl.dump.pcap")]);
    assert_ne!(code, Some(0));
    assert!(out.contains("14 packets"), "{out}");
    assert!(
        err.contains("record 15") && err.contains("cut short"),
        "{err}"
    );
    let (code, _, _) = tunscope(&[
        "normalize",
        "--allow-partial",
        &path("wireshark-wiki__ssl.dump.pcap"),
    ]);
    assert_eq!(code, Some(0));
    // gzip: the same events as the decompressed file.
    let gz = corpus("wireshark__dns+icmp.pcapng.gz");
    let plain = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dns+icmp.pcapng");
    let bytes = Command::new("gzip")
        .arg("-dc")
        .arg(&gz)
        .output()
        .unwrap()
        .stdout;
    std::fs::write(&plain, bytes).unwrap();
    let (c1, o1, _) = tunscope(&["normalize", &gz.display().to_string()]);
    let (c2, o2, _) = tunscope(&["normalize", &plain.display().to_string()]);
    assert_eq!((c1, c2), (Some(0), Some(0)));
    assert!(o1.contains("33 packets"), "{o1}");
    assert_eq!(o1, o2);
}

#[test]
fn openvpn_is_recognised_on_any_port() {
    // Zeek's trace: one session to UDP 1198.
    let (code, out, _) = tunscope(&["normalize", &path("openvpn__zeek-openvpn__openvpn.pcap")]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("udp/openvpn")
            && out.contains(":1198 ")
            && out.contains("P_CONTROL_HARD_RESET_CLIENT_V2"),
        "{out}"
    );
    // nDPI's flows on 443, 13680 and 1234, UDP and TCP.
    let (_, out, _) = tunscope(&[
        "normalize",
        "--summary",
        &path("openvpn__ndpi__openvpn.5fcc122.pcap"),
    ]);
    for port in [443, 13680, 1194] {
        let on_port =
            |l: &str| l.contains(&format!(":{port}:")) || l.contains(&format!(":{port} "));
        assert!(
            out.lines()
                .any(|l| on_port(l) && l.contains("P_CONTROL_HARD_RESET_CLIENT_V2")),
            "no OpenVPN session on {port}:\n{out}"
        );
    }
    // tls-crypt(-v2): control packets are wrapped, never read as cleartext TLS.
    let (_, out, _) = tunscope(&["normalize", &path("openvpn__ndpi__openvpn-tlscrypt.pcap")]);
    assert!(out.contains("ovpn.wrapped=tls-crypt-v2"), "{out}");
    assert!(!out.contains("ovpn.payload=tls"), "{out}");
    // tls-auth with HMAC-SHA256: recognised, and the TLS inside still named.
    let (_, out, _) = tunscope(&[
        "normalize",
        &path("openvpn__zeek-spicy-openvpn__openvpn_udp_hmac_256.pcap"),
    ]);
    assert!(out.contains("ovpn.wrapped=tls-auth"), "{out}");
    assert!(
        out.contains("ovpn.payload=tls handshake ClientHello"),
        "{out}"
    );
}

#[test]
fn output_is_clean_for_pipes_and_terminals() {
    // `| head -1`: ends quietly (no panic message), whatever the exit status.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tunscope"))
        .args([
            "normalize",
            "--exact",
            &path("openvpn__ndpi__openvpn.5fcc122.pcap"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert_ne!(out.status.code(), Some(101));

    // An interface name with a newline stays on its line.
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::{
        InterfaceDescriptionBlock, InterfaceDescriptionOption,
    };
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("newline-name.pcapng");
    let mut w = PcapNgWriter::new(std::fs::File::create(&file).unwrap()).unwrap();
    w.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: pcap_file::DataLink::RAW,
        snaplen: 0,
        options: vec![InterfaceDescriptionOption::IfName("evil\nname".into())],
    })
    .unwrap();
    let ping = [
        0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2, 8, 0, 0, 0, 0, 1, 0,
        1,
    ];
    w.write_pcapng_block(EnhancedPacketBlock {
        interface_id: 0,
        timestamp: std::time::Duration::from_secs(1),
        original_len: ping.len() as u32,
        data: ping.as_slice().into(),
        options: vec![],
    })
    .unwrap();
    drop(w);
    let (code, out, _) = tunscope(&["normalize", &file.display().to_string()]);
    assert_eq!(code, Some(0));
    assert!(out.contains("evil\\nname"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
}
