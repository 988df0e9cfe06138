//! The observatory end to end: our client ↔ our server in namespaces, with the control socket
//! and stage captures on. Known traffic must give exact per-stage counts, conservation on both
//! ends and across the link, drops attributed to the right stage and reason, and captures
//! that read back (pcap-file, tshark) with every stage named and journeys complete.
//!
//! Needs root; `.ci/run` provides it.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use tunscope_engine::report::EngineReport;
use tunscope_engine::stats::StageReport;
use tunscope_engine::trace::{self, Outcome};
use tunscope_harness::pki::Pki;
use tunscope_harness::process::Proc;
use tunscope_harness::subjects::{self, Proto, TunnelSpec};
use tunscope_harness::topo::{SERVER_WAN, TwoHosts};
use tunscope_harness::traffic::{self, EchoServer};

struct Pair {
    hosts: TwoHosts,
    server: Proc,
    client: Proc,
    dir: PathBuf,
}

impl Pair {
    fn sock(&self, who: &str) -> PathBuf {
        self.dir.join(format!("{who}.sock"))
    }

    fn cap(&self, who: &str) -> PathBuf {
        self.dir.join(format!("{who}.pcapng"))
    }

    fn stats(&self, who: &str) -> Result<EngineReport> {
        tunscope_engine::control_socket::query(&self.sock(who))
    }
}

/// Our server and client with control sockets (and captures when `sample` is set). IPv6 is
/// off in both namespaces so the tun devices carry exactly the test's packets; keepalive is
/// long so no pings interfere with exact counts.
fn start(sample: Option<u32>) -> Result<Pair> {
    start_over(sample, Proto::Udp, &[])
}

fn start_over(sample: Option<u32>, proto: Proto, server_args: &[&str]) -> Result<Pair> {
    let hosts = TwoHosts::new()?;
    for ns in [&hosts.client, &hosts.server] {
        ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
    }
    let dir = hosts.dir.clone();
    let pki = Pki::generate(&dir.join("pki"))?;
    let (cert, key) = pki.client("client1")?;
    // The client leaves silently (no EXIT), so the server keeps its peer after we stop the
    // client to flush its capture.
    let spec = TunnelSpec {
        proto,
        keepalive: (60, 300),
        client_extra: vec!["explicit-exit-notify 0".into()],
        ..TunnelSpec::default()
    };
    std::fs::write(dir.join("server.conf"), spec.server_config(&pki, &dir)?)?;
    std::fs::write(
        dir.join("client.conf"),
        spec.client_config(&pki, &cert, &key, SERVER_WAN, &dir)?,
    )?;
    let observe = |who: &str| -> Vec<String> {
        let mut v = vec![
            "--control".into(),
            dir.join(format!("{who}.sock")).display().to_string(),
        ];
        if let Some(n) = sample {
            v.extend([
                "--capture".into(),
                dir.join(format!("{who}.pcapng")).display().to_string(),
                "--capture-sample".into(),
                format!("1/{n}"),
            ]);
        }
        v
    };
    let bin = subjects::tunscope_bin()?;
    let mut cmd = hosts.server.command(bin.to_str().context("utf-8 path")?);
    cmd.arg("server")
        .arg("--config")
        .arg(dir.join("server.conf"))
        .args(observe("server"))
        .args(server_args);
    let mut server = Proc::spawn("tunscope server", cmd, &dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    let extra = observe("client");
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut client = subjects::start_tunscope_client(
        &hosts.client,
        &dir.join("client.conf"),
        &dir.join("client.log"),
        &extra,
    )?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    Ok(Pair {
        hosts,
        server,
        client,
        dir,
    })
}

fn stage<'a>(r: &'a EngineReport, name: &str) -> &'a StageReport {
    r.totals
        .stage(name)
        .unwrap_or_else(|| panic!("stage {name} missing"))
}

fn assert_conserved(who: &str, r: &EngineReport) -> Result<()> {
    let v = r.totals.conservation_violations();
    ensure!(v.is_empty(), "{who}: conservation violated: {v:?}");
    for p in &r.peers {
        if let Some(s) = &p.stats {
            let v = s.conservation_violations();
            ensure!(
                v.is_empty(),
                "{who} peer {}: conservation violated: {v:?}",
                p.id
            );
        }
    }
    Ok(())
}

/// Across the link: what left one side's encrypt either reached the other side's decrypt or
/// is accounted for as lost on the wire (sent by socket_tx, never received by socket_rx). On
/// a veth that loss is the receiver's kernel socket drops; with `lossless` there is none.
fn assert_link(from: &EngineReport, to: &EngineReport, lossless: bool) -> Result<()> {
    let (tx, rx) = (stage(from, "socket_tx"), stage(to, "socket_rx"));
    ensure!(
        tx.packets_out >= rx.packets_in,
        "{} received more than {} sent",
        to.role,
        from.role
    );
    let wire_loss = tx.packets_out - rx.packets_in;
    let (enc, dec) = (stage(from, "encrypt"), stage(to, "decrypt"));
    ensure!(
        enc.packets_out >= dec.packets_in,
        "{} decrypted more than {} encrypted",
        to.role,
        from.role
    );
    let vanished = enc.packets_out - dec.packets_in;
    let send_failures: u64 = tx.drops.values().sum();
    ensure!(
        vanished <= wire_loss + send_failures,
        "{} encrypt out {} vs {} decrypt in {}: {vanished} vanished but only {wire_loss} lost on the wire and {send_failures} failed to send\n{}\n{}",
        from.role,
        enc.packets_out,
        to.role,
        dec.packets_in,
        from.table(),
        to.table()
    );
    ensure!(
        wire_loss <= to.kernel_rx_drops,
        "{wire_loss} packets lost on the wire but the receiver's kernel dropped only {}",
        to.kernel_rx_drops
    );
    if lossless {
        ensure!(
            wire_loss == 0 && vanished == 0 && send_failures == 0,
            "loss on an idle link: {wire_loss} on the wire, {send_failures} send failures, {vanished} data"
        );
        // Nothing lost: both sides saw the same packets, so the same bytes (data packets
        // from the tx thread, control packets and pings from the control thread alike).
        ensure!(
            tx.bytes_out == rx.bytes_in,
            "{} socket_tx sent {} bytes in {} packets, {} socket_rx received {} bytes in {}",
            from.role,
            tx.bytes_out,
            tx.packets_out,
            to.role,
            rx.bytes_in,
            rx.packets_in
        );
    }
    Ok(())
}

/// Settles: control ACKs and the last batch counters.
fn settle() {
    std::thread::sleep(Duration::from_millis(700));
}

#[test]
fn ping_gives_exact_counts_and_conservation_on_both_ends() -> Result<()> {
    let pair = start(None)?;
    let before_c = pair.stats("client")?;
    let before_s = pair.stats("server")?;
    let p = traffic::ping(&pair.hosts.client, "198.19.0.1", 10, 56, false)?;
    ensure!(p.received == 10, "{}", p.output);
    settle();
    let c = pair.stats("client")?;
    let s = pair.stats("server")?;
    let delta = |after: &EngineReport, before: &EngineReport, st: &str| {
        let (a, b) = (stage(after, st), stage(before, st));
        (a.packets_in - b.packets_in, a.packets_out - b.packets_out)
    };
    // Echo requests: client tun → server tun, exactly 10 at every stage.
    for st in ["read_tun", "encrypt"] {
        ensure!(
            delta(&c, &before_c, st) == (10, 10),
            "client {st}: {:?}",
            delta(&c, &before_c, st)
        );
    }
    for st in ["decrypt", "write_tun"] {
        ensure!(
            delta(&s, &before_s, st) == (10, 10),
            "server {st}: {:?}",
            delta(&s, &before_s, st)
        );
    }
    // Echo replies back.
    for st in ["read_tun", "encrypt"] {
        ensure!(
            delta(&s, &before_s, st) == (10, 10),
            "server {st}: {:?}",
            delta(&s, &before_s, st)
        );
    }
    for st in ["decrypt", "write_tun"] {
        ensure!(
            delta(&c, &before_c, st) == (10, 10),
            "client {st}: {:?}",
            delta(&c, &before_c, st)
        );
    }
    assert_conserved("client", &c)?;
    assert_conserved("server", &s)?;
    assert_link(&c, &s, true)?;
    assert_link(&s, &c, true)?;
    // Per peer on the server: the one peer carries everything that was attributed to it.
    ensure!(s.peers.len() == 1, "server peers: {:?}", s.peers);
    let peer = s.peers[0].stats.as_ref().context("per-peer stats")?;
    let pd = peer.stage("decrypt").context("peer decrypt")?;
    ensure!(
        pd.packets_in == stage(&s, "decrypt").packets_in,
        "peer decrypt {pd:?}"
    );
    // Latency histograms and control-plane timings are filled.
    ensure!(
        stage(&c, "encrypt").latency_ns.count >= 10,
        "no encrypt latency samples"
    );
    ensure!(
        s.totals.control.handshakes == 1 && c.totals.control.handshakes == 1,
        "handshake timings missing"
    );
    Ok(())
}

#[test]
fn tcp_transfer_conserves_across_the_link() -> Result<()> {
    let pair = start(None)?;
    let echo = EchoServer::start(
        &pair.hosts.server,
        SocketAddr::from(([198, 19, 0, 1], 5001)),
    )?;
    let t = traffic::echo_transfer(&pair.hosts.client, echo.addr, 8 << 20, None)?;
    settle();
    let c = pair.stats("client")?;
    let s = pair.stats("server")?;
    assert_conserved("client", &c)?;
    assert_conserved("server", &s)?;
    assert_link(&c, &s, false)?;
    assert_link(&s, &c, false)?;
    ensure!(
        stage(&s, "write_tun").bytes_in >= t.bytes as u64,
        "server wrote fewer bytes than were sent"
    );
    ensure!(
        stage(&c, "write_tun").bytes_in >= t.bytes as u64,
        "client wrote fewer bytes than were echoed"
    );
    // Batching is visible: the bulk transfer moved more than one packet per batch somewhere.
    let best = ["read_tun", "socket_rx", "decrypt"]
        .iter()
        .map(|st| stage(&s, st).batch_size.max)
        .fold(0.0, f64::max);
    ensure!(best > 1.0, "no batching observed");
    Ok(())
}

/// Packets and bytes at one side's socket_tx equal the other side's socket_rx, both ways,
/// over UDP and TCP: pings, a bulk transfer, and everything the control threads sent.
#[test]
fn socket_tx_matches_peer_socket_rx_in_packets_and_bytes() -> Result<()> {
    for proto in [Proto::Udp, Proto::Tcp] {
        let pair = start_over(None, proto, &[])?;
        let p = traffic::ping(&pair.hosts.client, "198.19.0.1", 20, 1000, false)?;
        if p.received != 20 {
            let (c, s) = (pair.stats("client")?, pair.stats("server")?);
            anyhow::bail!(
                "{proto:?}: {}\nclient\n{}\nserver\n{}",
                p.output,
                c.table(),
                s.table()
            );
        }
        let echo = EchoServer::start(
            &pair.hosts.server,
            SocketAddr::from(([198, 19, 0, 1], 5002)),
        )?;
        traffic::echo_transfer(&pair.hosts.client, echo.addr, 1 << 20, None)?;
        settle();
        let c = pair.stats("client")?;
        let s = pair.stats("server")?;
        assert_conserved("client", &c)?;
        assert_conserved("server", &s)?;
        // A UDP link is lossless unless the receiving kernel dropped datagrams (then the
        // weaker check of assert_link applies); a TCP link always is.
        let lossless = |to: &EngineReport| proto == Proto::Tcp || to.kernel_rx_drops == 0;
        assert_link(&c, &s, lossless(&s)).with_context(|| format!("{proto:?} client→server"))?;
        assert_link(&s, &c, lossless(&c)).with_context(|| format!("{proto:?} server→client"))?;
        for (who, r) in [("client", &c), ("server", &s)] {
            let tx = stage(r, "socket_tx");
            ensure!(
                tx.packets_out > 700 && tx.bytes_out > 1 << 20,
                "{proto:?} {who}: too little traffic counted at socket_tx: {tx:?}"
            );
        }
    }
    Ok(())
}

/// The OpenVPN payload of a link-stage capture record (drops the synthesized IPv4/UDP header).
fn openvpn_payload(frame: &[u8]) -> &[u8] {
    let ihl = usize::from(frame[0] & 0x0f) * 4;
    &frame[ihl + 8..]
}

fn socket_tx_data_packet(cap: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(cap)?;
    let mut r = pcap_file::pcapng::PcapNgReader::new(f)?;
    let mut names = vec![];
    while let Some(b) = r.next_block() {
        match b? {
            pcap_file::pcapng::Block::InterfaceDescription(i) => {
                names.push(format!("{:?}", i.options))
            }
            pcap_file::pcapng::Block::EnhancedPacket(e) => {
                let is_tx = names
                    .get(e.interface_id as usize)
                    .is_some_and(|n| n.contains("client/socket_tx"));
                let p = openvpn_payload(&e.data);
                if is_tx && p.first().map(|b| b >> 3) == Some(9) {
                    return Ok(p.to_vec());
                }
            }
            _ => {}
        }
    }
    anyhow::bail!("no data packet at client/socket_tx in {}", cap.display())
}

/// A server with two receive threads (two UDP sockets on one port, the kernel choosing by
/// source address): a data packet replayed from many source ports reaches both, and both
/// refuse it — one replay window per peer, not per thread.
#[test]
fn replays_are_refused_by_every_receive_thread() -> Result<()> {
    let mut pair = start_over(Some(1), Proto::Udp, &["--threads", "2"])?;
    let p = traffic::ping(&pair.hosts.client, "198.19.0.1", 3, 56, false)?;
    ensure!(p.received == 3, "{}", p.output);
    settle();
    pair.client.signal(Signal::SIGTERM)?;
    pair.client.wait_exit(Duration::from_secs(10))?;
    let pkt = socket_tx_data_packet(&pair.cap("client"))?;
    let before = pair.stats("server")?;
    let target = SocketAddr::from((SERVER_WAN, 1194));
    pair.hosts.client.run(move || {
        // Eight source ports: all eight landing on the thread that saw the original has a
        // chance of 1 in 256.
        for _ in 0..8 {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.send_to(&pkt, target)?;
        }
        Ok(())
    })?;
    settle();
    let after = pair.stats("server")?;
    let drops = |r: &EngineReport, reason: &str| {
        stage(r, "decrypt").drops.get(reason).copied().unwrap_or(0)
    };
    ensure!(
        drops(&after, "replay") - drops(&before, "replay") == 8,
        "replays: {:?}",
        stage(&after, "decrypt").drops
    );
    ensure!(
        stage(&after, "decrypt").packets_out == stage(&before, "decrypt").packets_out,
        "a replayed packet was decrypted"
    );
    assert_conserved("server", &after)?;
    Ok(())
}

#[test]
fn injected_replays_and_corruption_are_dropped_at_decrypt_with_reasons() -> Result<()> {
    let mut pair = start(Some(1))?;
    let p = traffic::ping(&pair.hosts.client, "198.19.0.1", 3, 56, false)?;
    ensure!(p.received == 3, "{}", p.output);
    settle();
    // Make the client flush its capture, then take a real data packet from it.
    pair.client.signal(Signal::SIGTERM)?;
    pair.client.wait_exit(Duration::from_secs(10))?;
    let pkt = socket_tx_data_packet(&pair.cap("client"))?;
    let mut corrupt = pkt.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    let before = pair.stats("server")?;
    let target = SocketAddr::from((SERVER_WAN, 1194));
    pair.hosts.client.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..3 {
            s.send_to(&pkt, target)?;
        }
        for _ in 0..2 {
            s.send_to(&corrupt, target)?;
        }
        Ok(())
    })?;
    settle();
    let after = pair.stats("server")?;
    let drops = |r: &EngineReport, reason: &str| {
        stage(r, "decrypt").drops.get(reason).copied().unwrap_or(0)
    };
    ensure!(
        drops(&after, "replay") - drops(&before, "replay") == 3,
        "replays: {:?}",
        stage(&after, "decrypt").drops
    );
    ensure!(
        drops(&after, "bad_tag") - drops(&before, "bad_tag") == 2,
        "bad tags: {:?}",
        stage(&after, "decrypt").drops
    );
    assert_conserved("server", &after)?;
    // The server's capture names the stage and reason of each injected packet.
    pair.server.signal(Signal::SIGTERM)?;
    pair.server.wait_exit(Duration::from_secs(10))?;
    let records = trace::read_records(&pair.cap("server"))?;
    let js = trace::journeys(&records);
    let replayed = js
        .iter()
        .filter(|j| matches!(&j.outcome, Outcome::Dropped { at, reason } if at == "server/decrypt" && reason == "replay"))
        .count();
    let tampered = js
        .iter()
        .filter(|j| matches!(&j.outcome, Outcome::Dropped { at, reason } if at == "server/decrypt" && reason == "bad_tag"))
        .count();
    ensure!(
        replayed == 3 && tampered == 2,
        "journeys: {replayed} replayed, {tampered} tampered"
    );
    Ok(())
}

#[test]
fn captures_read_back_with_named_stages_and_complete_journeys() -> Result<()> {
    let mut pair = start(Some(2))?;
    let p = traffic::ping(&pair.hosts.client, "198.19.0.1", 10, 56, false)?;
    ensure!(p.received == 10, "{}", p.output);
    settle();
    let c = pair.stats("client")?;
    let s = pair.stats("server")?;
    for proc_ in [&mut pair.client, &mut pair.server] {
        proc_.signal(Signal::SIGTERM)?;
        proc_.wait_exit(Duration::from_secs(10))?;
    }
    for who in ["client", "server"] {
        ensure!(pair.cap(who).exists(), "{who} capture missing");
    }
    // IDB names, read with pcap-file.
    let mut idbs = vec![];
    let mut per_iface: Vec<usize> = vec![];
    let f = std::fs::File::open(pair.cap("client"))?;
    let mut r = pcap_file::pcapng::PcapNgReader::new(f)?;
    while let Some(b) = r.next_block() {
        match b? {
            pcap_file::pcapng::Block::InterfaceDescription(i) => {
                let name = i
                    .options
                    .iter()
                    .find_map(|o| match o {
                        pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .unwrap_or_default();
                idbs.push(name);
                per_iface.push(0);
            }
            pcap_file::pcapng::Block::EnhancedPacket(e) => per_iface[e.interface_id as usize] += 1,
            _ => {}
        }
    }
    for st in [
        "read_tun",
        "encrypt",
        "socket_tx",
        "socket_rx",
        "decrypt",
        "write_tun",
    ] {
        ensure!(
            idbs.contains(&format!("client/{st}")),
            "missing IDB client/{st}: {idbs:?}"
        );
    }
    // With 1/2 sampling by packet-id, the client tapped half of its 10 echo requests at
    // read_tun (packet-ids 1..10 → the 5 even ones) and every control packet it sent.
    let n = |name: &str| {
        idbs.iter()
            .position(|x| x == name)
            .map_or(0, |i| per_iface[i])
    };
    ensure!(
        n("client/read_tun") == 5,
        "read_tun records: {}",
        n("client/read_tun")
    );
    ensure!(
        n("client/write_tun") == 5,
        "write_tun records: {}",
        n("client/write_tun")
    );
    // Every control packet is kept; the stats snapshot was taken before shutdown, which sends
    // EXIT, so the capture holds at least that many.
    let control_sent = stage(&c, "socket_tx").packets_in - stage(&c, "encrypt").packets_in;
    let client_records = trace::read_records(&pair.cap("client"))?;
    let tx_data = client_records
        .iter()
        .filter(|r| r.stage == "socket_tx" && r.pid.is_some())
        .count();
    let tx_control = client_records
        .iter()
        .filter(|r| r.stage == "socket_tx" && r.pid.is_none())
        .count() as u64;
    ensure!(tx_data == 5, "data records at socket_tx: {tx_data}");
    ensure!(
        tx_control >= control_sent,
        "control records {tx_control} < {control_sent} sent"
    );
    ensure!(
        n("client/socket_tx") == tx_data + tx_control as usize,
        "record count mismatch"
    );
    let rx_control = stage(&s, "socket_rx").packets_in - stage(&s, "decrypt").packets_in;
    let server_records = trace::read_records(&pair.cap("server"))?;
    let srv_rx_control = server_records
        .iter()
        .filter(|r| r.stage == "socket_rx" && r.pid.is_none())
        .count() as u64;
    ensure!(
        srv_rx_control >= rx_control,
        "server control records {srv_rx_control} < {rx_control}"
    );
    // Journeys across both captures are complete: every sampled echo request goes from
    // client/read_tun to server/write_tun, every reply back.
    let mut records = trace::read_records(&pair.cap("client"))?;
    records.extend(trace::read_records(&pair.cap("server"))?);
    let js = trace::journeys(&records);
    let delivered: Vec<_> = js
        .iter()
        .filter(|j| j.outcome == Outcome::Delivered)
        .collect();
    ensure!(
        delivered.len() == 10,
        "delivered journeys: {} of {}: {:?}",
        delivered.len(),
        js.len(),
        js.iter().map(|j| &j.outcome).collect::<Vec<_>>()
    );
    let full = delivered
        .iter()
        .find(|j| j.from.as_deref() == Some("client"))
        .context("a client→server journey")?;
    let stages: Vec<String> = full
        .hops
        .iter()
        .map(|h| format!("{}/{}", h.host, h.stage))
        .collect();
    ensure!(
        stages
            == [
                "client/read_tun",
                "client/encrypt",
                "client/socket_tx",
                "server/socket_rx",
                "server/decrypt",
                "server/write_tun"
            ],
        "journey stages {stages:?}"
    );
    // tshark opens the file, names the interfaces, and dissects link stages as OpenVPN.
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(pair.cap("client"))
        .args([
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "openvpn.opcode",
            "-e",
            "_ws.malformed",
            "-e",
            "frame.comment",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ovpn_on_link = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        ensure!(
            f.get(2).is_none_or(|m| m.is_empty()),
            "malformed packet: {line}"
        );
        if f[0].ends_with("socket_tx") || f[0].ends_with("socket_rx") {
            ensure!(
                f.get(1).is_some_and(|o| !o.is_empty()),
                "link stage not dissected as OpenVPN: {line}"
            );
            ovpn_on_link += 1;
        }
    }
    ensure!(ovpn_on_link > 10, "only {ovpn_on_link} link-stage packets");
    ensure!(
        text.contains("tunscope trace="),
        "packet comments not shown by tshark"
    );
    Ok(())
}

#[test]
fn stats_command_json_prometheus_and_http_endpoint() -> Result<()> {
    let pair = start(None)?;
    traffic::ping(&pair.hosts.client, "198.19.0.1", 3, 56, false)?;
    settle();
    let bin = subjects::tunscope_bin()?;
    let table = std::process::Command::new(&bin)
        .arg("stats")
        .arg(pair.sock("client"))
        .output()?;
    let table = String::from_utf8_lossy(&table.stdout);
    for word in [
        "read_tun",
        "write_tun",
        "p99 ns",
        "conservation: in = out + drops",
        "peer",
    ] {
        ensure!(table.contains(word), "table lacks '{word}':\n{table}");
    }
    let json = std::process::Command::new(&bin)
        .arg("stats")
        .arg(pair.sock("server"))
        .arg("--json")
        .output()?;
    let r: EngineReport = serde_json::from_slice(&json.stdout).context("stats --json")?;
    ensure!(r.role == "server" && r.peers.len() == 1, "{r:?}");
    let prom = std::process::Command::new(&bin)
        .arg("stats")
        .arg(pair.sock("server"))
        .arg("--prometheus")
        .output()?;
    let prom = String::from_utf8_lossy(&prom.stdout);
    ensure!(
        prom.contains("tunscope_stage_packets_in_total{stage=\"decrypt\"}"),
        "{prom}"
    );
    ensure!(prom.contains("peer=\"0\""), "no per-peer series:\n{prom}");
    ensure!(prom.contains("tunscope_peers 1"), "{prom}");
    // A bad socket path is a clear error, not a hang.
    let bad = std::process::Command::new(&bin)
        .arg("stats")
        .arg("/nonexistent.sock")
        .output()?;
    ensure!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("cannot connect"),
        "bad path"
    );
    Ok(())
}

#[test]
fn prometheus_endpoint_inside_the_namespace() -> Result<()> {
    let hosts = TwoHosts::new()?;
    let dir = hosts.dir.clone();
    let pki = Pki::generate(&dir.join("pki"))?;
    std::fs::write(
        dir.join("server.conf"),
        TunnelSpec::default().server_config(&pki, &dir)?,
    )?;
    let bin = subjects::tunscope_bin()?;
    let mut cmd = hosts.server.command(bin.to_str().context("utf-8")?);
    cmd.arg("server")
        .arg("--config")
        .arg(dir.join("server.conf"))
        .args(["--prometheus", "198.18.1.1:9100"]);
    let mut server = Proc::spawn("tunscope server", cmd, &dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    let body = hosts.client.run(|| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(
            &SocketAddr::from((SERVER_WAN, 9100)),
            Duration::from_secs(5),
        )?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })?;
    ensure!(body.starts_with("HTTP/1.1 200"), "{body}");
    ensure!(
        body.contains("# TYPE tunscope_stage_packets_in_total counter"),
        "{body}"
    );
    Ok(())
}
