//! Our client against stock OpenVPN 2.6 (the distribution's `openvpn`) as server, in network
//! namespaces made for each test. Every variant pings through the tunnel and moves data over
//! TCP whose content is verified byte for byte in both directions.
//!
//! Needs root (namespaces, tun); `.ci/run` runs it as root with openvpn and tshark installed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use tunscope_harness::process::{
    Proc, ensure_both_threads_worked, ensure_success, stage_counter, tail, thread_pair_ticks,
};
use tunscope_harness::subjects::{self, Proto, TunnelSpec, Wrap};
use tunscope_harness::topo::{SERVER_WAN, TwoHosts};
use tunscope_harness::traffic::{self, EchoServer};

/// A running pair: stock server, our client.
struct Pair {
    hosts: TwoHosts,
    server: Proc,
    client: Proc,
    spec: TunnelSpec,
}

fn ciphers(c: &str) -> Vec<String> {
    vec![c.to_owned()]
}

fn bring_up(spec: TunnelSpec) -> Result<Pair> {
    bring_up_with(spec, |_| Ok(()))
}

/// Starts the stock server, runs `before_client` (e.g. start a capture), then our client.
fn bring_up_with(
    spec: TunnelSpec,
    before_client: impl FnOnce(&TwoHosts) -> Result<()>,
) -> Result<Pair> {
    bring_up_full(spec, before_client, &[])
}

/// [`bring_up_with`], our client started with `client_args` besides its config.
fn bring_up_full(
    spec: TunnelSpec,
    before_client: impl FnOnce(&TwoHosts) -> Result<()>,
    client_args: &[&str],
) -> Result<Pair> {
    let (hosts, server_conf, client_conf) = configured(&spec, None)?;
    let mut server =
        subjects::start_openvpn(&hosts.server, &server_conf, &hosts.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15)).context("stock openvpn server")?;
    before_client(&hosts)?;
    let client = subjects::start_tunscope_client(
        &hosts.client,
        &client_conf,
        &hosts.dir.join("client.log"),
        client_args,
    )?;
    Ok(Pair {
        hosts,
        server,
        client,
        spec,
    })
}

impl Pair {
    fn wait_connected(&mut self) -> Result<()> {
        subjects::wait_ready(&mut self.client, Duration::from_secs(20)).with_context(|| {
            format!(
                "server log:\n{}",
                tunscope_harness::process::tail(&self.server.log(), 30)
            )
        })
    }

    /// Pings the server's tunnel address and moves `bytes` through an echo server there.
    fn traffic(&self, bytes: usize, spread: Option<Duration>) -> Result<traffic::Transfer> {
        let dst = self.spec.server_tun_ip();
        let p = traffic::ping(&self.hosts.client, &dst.to_string(), 3, 56, false)?;
        ensure!(p.received == 3, "ping through the tunnel: {}", p.output);
        let echo = EchoServer::start(&self.hosts.server, SocketAddr::from((dst, 5001)))?;
        let t = traffic::echo_transfer(&self.hosts.client, echo.addr, bytes, spread).with_context(
            || {
                format!(
                    "client log:\n{}",
                    tunscope_harness::process::tail(&self.client.log(), 20)
                )
            },
        )?;
        Ok(t)
    }
}

fn run_variant(spec: TunnelSpec) -> Result<()> {
    run_variant_checked(spec, |_| Ok(()))
}

/// Like [`run_variant`], with an extra check on the client's log.
fn run_variant_checked(spec: TunnelSpec, check_log: impl FnOnce(&str) -> Result<()>) -> Result<()> {
    let label = spec.label();
    let mut pair = bring_up(spec)?;
    pair.wait_connected()?;
    let t = pair.traffic(4 << 20, None)?;
    eprintln!(
        "{label}: 4 MiB echoed in {:?} ({:.0} Mbit/s)",
        t.elapsed,
        t.mbit_per_s()
    );
    check_log(&pair.client.log())?;
    // Clean exit on SIGTERM.
    pair.client.signal(Signal::SIGTERM)?;
    let code = pair.client.wait_exit(Duration::from_secs(10))?;
    ensure!(
        code == Some(0),
        "client exit code {code:?}; log:\n{}",
        pair.client.log()
    );
    Ok(())
}

#[test]
fn udp_aes256gcm_no_wrap() -> Result<()> {
    run_variant(TunnelSpec {
        server_ciphers: ciphers("AES-256-GCM"),
        ..TunnelSpec::default()
    })
}

#[test]
fn udp_aes128gcm_tls_auth() -> Result<()> {
    run_variant(TunnelSpec {
        server_ciphers: ciphers("AES-128-GCM"),
        wrap: Wrap::TlsAuth,
        ..TunnelSpec::default()
    })
}

#[test]
fn udp_chacha20_tls_crypt_password() -> Result<()> {
    run_variant(TunnelSpec {
        server_ciphers: ciphers("CHACHA20-POLY1305"),
        wrap: Wrap::TlsCrypt,
        auth_user_pass: true,
        ..TunnelSpec::default()
    })
}

#[test]
fn tcp_aes256gcm_tls_crypt() -> Result<()> {
    run_variant(TunnelSpec {
        proto: Proto::Tcp,
        server_ciphers: ciphers("AES-256-GCM"),
        wrap: Wrap::TlsCrypt,
        ..TunnelSpec::default()
    })
}

#[test]
fn tcp_chacha20_tls_auth_password() -> Result<()> {
    run_variant(TunnelSpec {
        proto: Proto::Tcp,
        server_ciphers: ciphers("CHACHA20-POLY1305"),
        wrap: Wrap::TlsAuth,
        auth_user_pass: true,
        ..TunnelSpec::default()
    })
}

#[test]
fn tcp_aes128gcm_no_wrap_password() -> Result<()> {
    run_variant(TunnelSpec {
        proto: Proto::Tcp,
        server_ciphers: ciphers("AES-128-GCM"),
        auth_user_pass: true,
        ..TunnelSpec::default()
    })
}

/// TLS 1.2 on the control channel: EKM key export must match OpenSSL's TLS 1.2 exporter.
#[test]
fn udp_tls12_control_channel() -> Result<()> {
    run_variant_checked(
        TunnelSpec {
            client_extra: vec!["tls-version-max 1.2".into()],
            wrap: Wrap::TlsAuth,
            ..TunnelSpec::default()
        },
        |log| {
            ensure!(
                log.contains("TLSv1_2"),
                "TLS 1.2 was not negotiated:\n{log}"
            );
            Ok(())
        },
    )
}

/// IPv6 inside the tunnel: the pushed `ifconfig-ipv6` is applied and IPv6 flows.
#[test]
fn ipv6_inside_the_tunnel() -> Result<()> {
    let mut pair = bring_up(TunnelSpec {
        server_extra: vec!["server-ipv6 2001:db8:0:1::/64".into()],
        ..TunnelSpec::default()
    })?;
    pair.wait_connected()?;
    let p = traffic::ping(&pair.hosts.client, "2001:db8:0:1::1", 3, 1200, false)?;
    ensure!(
        p.received == 3,
        "IPv6 ping through the tunnel: {}",
        p.output
    );
    let addrs = pair
        .hosts
        .client
        .ip(&["-6", "addr", "show", "dev", "tun0"])?;
    ensure!(
        addrs.contains("2001:db8:0:1::1000"),
        "pushed IPv6 address missing:\n{addrs}"
    );
    pair.traffic(1 << 20, None)?;
    Ok(())
}

/// `dev tap` against a stock tap server: the pushed address and netmask land on the tap
/// device, ARP resolves the server across the tunnel, ping and 4 MiB of echo pass, and the
/// exit table counts the frames by kind.
#[test]
fn tap_against_a_stock_tap_server() -> Result<()> {
    let mut pair = bring_up(TunnelSpec {
        tap: true,
        ..TunnelSpec::default()
    })?;
    pair.wait_connected()?;
    pair.traffic(4 << 20, None)?;
    let addr = pair
        .hosts
        .client
        .ip(&["-4", "addr", "show", "dev", "tap0"])?;
    ensure!(
        addr.contains("inet 198.19.0.") && addr.contains("/24"),
        "pushed address and netmask missing on tap0:\n{addr}"
    );
    let neigh = pair.hosts.client.ip(&["neigh", "show", "dev", "tap0"])?;
    ensure!(
        neigh.contains("198.19.0.1 lladdr"),
        "the server's address was not resolved by ARP across the tunnel:\n{neigh}"
    );
    pair.client.signal(Signal::SIGTERM)?;
    let code = pair.client.wait_exit(Duration::from_secs(10))?;
    let log = pair.client.log();
    ensure!(code == Some(0), "client exit code {code:?}; log:\n{log}");
    let frames = log
        .lines()
        .find(|l| l.contains("frames into tunnel:"))
        .with_context(|| format!("no frame counts at exit:\n{}", tail(&log, 40)))?;
    eprintln!("our tap client: {}", frames.trim());
    ensure!(
        !frames.contains(" 0 ARP") && !frames.contains(": 0 unicast"),
        "ARP and unicast frames expected: {frames}"
    );
    Ok(())
}

/// A PUSH_REPLY too long for one message arrives in parts (push-continuation); 60 pushed
/// routes and DNS options must all be received.
#[test]
fn long_push_reply_in_parts() -> Result<()> {
    let mut extra: Vec<String> = (0..60)
        .map(|i| format!("push \"route 198.19.{}.0 255.255.255.0\"", 100 + i))
        .collect();
    extra.push("push \"dhcp-option DNS 198.19.10.53\"".into());
    extra.push("push \"dhcp-option DOMAIN corp.example\"".into());
    let mut pair = bring_up(TunnelSpec {
        server_extra: extra,
        ..TunnelSpec::default()
    })?;
    pair.wait_connected()?;
    pair.traffic(1 << 20, None)?;
    let server_log = pair.server.log();
    ensure!(
        server_log.contains("push-continuation 2"),
        "server did not split the reply:\n{server_log}"
    );
    let routes = pair
        .client
        .log()
        .lines()
        .find(|l| l.contains("pushed:"))
        .map(str::to_owned)
        .unwrap_or_default();
    ensure!(
        routes.contains("60 routes"),
        "client did not report all routes: {routes:?}"
    );
    Ok(())
}

/// Compression stubs as stock 2.6 sends them when compression is off.
#[test]
fn compression_stubs_interoperate() -> Result<()> {
    for (server_line, push_line) in [
        ("compress stub-v2", "push \"compress stub-v2\""),
        ("comp-lzo no", "push \"comp-lzo no\""),
        ("compress", "push \"compress\""),
    ] {
        let mut pair = bring_up(TunnelSpec {
            server_extra: vec![server_line.into(), push_line.into()],
            ..TunnelSpec::default()
        })?;
        pair.wait_connected()
            .with_context(|| server_line.to_owned())?;
        pair.traffic(1 << 20, None)
            .with_context(|| server_line.to_owned())?;
    }
    Ok(())
}

/// The number in the engine's exit table line `compression: N packet(s) decompressed`.
fn decompressed(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split("compression: ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// Stock 2.6 compressing what it sends (`allow-compression yes`) with LZ4-v2, LZ4 (v1, swapped
/// framing) and LZO (`comp-lzo adaptive`), pushed to our client: the client decompresses,
/// compressible pings and an incompressible transfer arrive intact, and its counters show
/// the packets it inflated.
#[test]
fn stock_server_compressing_is_decompressed() -> Result<()> {
    for (alg, push) in [
        ("compress lz4-v2", "push \"compress lz4-v2\""),
        ("compress lz4", "push \"compress lz4\""),
        ("comp-lzo adaptive", "push \"comp-lzo adaptive\""),
    ] {
        let mut pair = bring_up(TunnelSpec {
            server_extra: vec!["allow-compression yes".into(), alg.into(), push.into()],
            ..TunnelSpec::default()
        })?;
        pair.wait_connected().with_context(|| alg.to_owned())?;
        // ping's payload repeats every 256 bytes: stock compresses the replies.
        let dst = pair.spec.server_tun_ip().to_string();
        let p = traffic::ping(&pair.hosts.client, &dst, 10, 1200, false)?;
        ensure!(p.received == 10, "{alg}: compressible pings: {}", p.output);
        pair.traffic(1 << 20, None)
            .with_context(|| alg.to_owned())?;
        pair.client.signal(Signal::SIGTERM)?;
        let code = pair.client.wait_exit(Duration::from_secs(10))?;
        let log = pair.client.log();
        ensure!(code == Some(0), "{alg}: exit {code:?}\n{log}");
        let n = decompressed(&log);
        ensure!(n >= 10, "{alg}: only {n} packets decompressed:\n{log}");
        eprintln!("{alg}: {n} packets decompressed by our client");
    }
    Ok(())
}

/// UDP payload lengths tcpdump sees on `ns`'s eth0 (destination port `port`) while `f` runs.
fn wire_lengths(
    ns: &tunscope_harness::netns::Netns,
    port: u16,
    f: impl FnOnce() -> Result<()>,
) -> Result<Vec<usize>> {
    let mut cmd = ns.command("tcpdump");
    cmd.args(["-i", "eth0", "-n", "-l", "-q", "udp", "dst", "port"])
        .arg(port.to_string());
    let log = std::env::temp_dir().join(format!("ts-tcpdump-{}-{port}.txt", std::process::id()));
    let mut dump = Proc::spawn("tcpdump", cmd, &log)?;
    std::thread::sleep(Duration::from_millis(800));
    let r = f();
    std::thread::sleep(Duration::from_millis(300));
    dump.signal(Signal::SIGINT)?;
    let _ = dump.wait_exit(Duration::from_secs(5));
    r?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    Ok(text
        .lines()
        .filter_map(|l| l.rsplit("length ").next()?.trim().parse().ok())
        .collect())
}

/// Our client compressing what it sends (`allow-compression yes`, LZ4-v2 and LZ4) to a stock
/// server that decompresses: 1200-byte compressible pings cross the wire in packets under
/// 600 bytes and come back (the replies compressed by stock, decompressed by us).
#[test]
fn our_client_compressing_is_decompressed_by_stock() -> Result<()> {
    for alg in ["compress lz4-v2", "compress lz4"] {
        let push = format!("push \"{alg}\"");
        let mut pair = bring_up(TunnelSpec {
            server_extra: vec!["allow-compression yes".into(), alg.into(), push],
            client_extra: vec!["allow-compression yes".into()],
            ..TunnelSpec::default()
        })?;
        pair.wait_connected().with_context(|| alg.to_owned())?;
        let dst = pair.spec.server_tun_ip().to_string();
        let client_ns = &pair.hosts.client;
        let lens = wire_lengths(&pair.hosts.server, pair.spec.port, || {
            let p = traffic::ping(client_ns, &dst, 5, 1200, false)?;
            ensure!(p.received == 5, "{alg}: pings: {}", p.output);
            Ok(())
        })?;
        let max = lens.iter().copied().max().unwrap_or(0);
        ensure!(
            lens.len() >= 5 && max < 600,
            "{alg}: our packets on the wire {lens:?} (1200-byte pings should shrink)"
        );
        eprintln!("{alg}: largest client→server packet {max} bytes for 1200-byte pings");
    }
    Ok(())
}

/// `allow-compression no` on our side: a server pushing real compression is refused with a
/// clear error naming the option, as 2.6 does.
#[test]
fn pushed_compression_refused_with_allow_compression_no() -> Result<()> {
    let mut pair = bring_up(TunnelSpec {
        server_extra: vec![
            "allow-compression yes".into(),
            "compress lz4-v2".into(),
            "push \"compress lz4-v2\"".into(),
        ],
        client_extra: vec!["allow-compression no".into()],
        ..TunnelSpec::default()
    })?;
    let code = pair.client.wait_exit(Duration::from_secs(20))?;
    let log = pair.client.log();
    ensure!(code == Some(1), "exit code {code:?}; log:\n{log}");
    ensure!(
        log.contains("allow-compression no"),
        "unclear error:\n{log}"
    );
    Ok(())
}

/// The server dies: the client notices through ping-restart, keeps its tun device, and
/// reconnects by itself when the server is back.
#[test]
fn ping_restart_then_reconnect() -> Result<()> {
    let mut pair = bring_up(TunnelSpec {
        keepalive: (1, 4),
        ..TunnelSpec::default()
    })?;
    pair.wait_connected()?;
    pair.traffic(256 << 10, None)?;
    pair.server.signal(Signal::SIGKILL)?;
    pair.server.wait_exit(Duration::from_secs(5))?;
    pair.client
        .wait_for_log("ping-restart", Duration::from_secs(15))
        .context("client should notice the dead server")?;
    let conf = pair.hosts.dir.join("server.conf");
    pair.server = subjects::start_openvpn(
        &pair.hosts.server,
        &conf,
        &pair.hosts.dir.join("server2.log"),
    )?;
    subjects::wait_ready(&mut pair.server, Duration::from_secs(15))?;
    pair.client
        .wait_for_log_count(subjects::READY_LINE, 2, Duration::from_secs(30))
        .context("client should reconnect")?;
    pair.traffic(256 << 10, None)?;
    Ok(())
}

/// Counts the distinct data key-ids our client installed after the first.
fn key_changes(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split("new data keys, ").nth(1).map(str::to_owned))
        .collect()
}

/// The stock server renegotiates every ~3 s while a transfer runs; no byte may be lost or
/// corrupted, and the client must have moved to new key-ids.
#[test]
fn server_initiated_renegotiation_mid_transfer() -> Result<()> {
    let mut pair = bring_up(TunnelSpec {
        server_reneg_sec: Some(3),
        wrap: Wrap::TlsCrypt,
        auth_user_pass: true,
        ..TunnelSpec::default()
    })?;
    pair.wait_connected()?;
    let t = pair.traffic(6 << 20, Some(Duration::from_secs(8)))?;
    let changes = key_changes(&pair.client.log());
    ensure!(
        changes.len() >= 2,
        "expected ≥2 renegotiations during {:?}, saw {changes:?}",
        t.elapsed
    );
    Ok(())
}

/// Our client renegotiates (reneg-sec 3) over TCP while a transfer runs.
#[test]
fn client_initiated_renegotiation_mid_transfer() -> Result<()> {
    let mut pair = bring_up(TunnelSpec {
        proto: Proto::Tcp,
        client_reneg_sec: Some(3),
        wrap: Wrap::TlsAuth,
        ..TunnelSpec::default()
    })?;
    pair.wait_connected()?;
    let t = pair.traffic(6 << 20, Some(Duration::from_secs(8)))?;
    let changes = key_changes(&pair.client.log());
    ensure!(
        changes.len() >= 2,
        "expected ≥2 renegotiations during {:?}, saw {changes:?}",
        t.elapsed
    );
    ensure!(
        pair.client.log().contains("renegotiating: new key-id"),
        "renegotiation was not started by the client"
    );
    Ok(())
}

/// A wrong password ends the client with AUTH_FAILED instead of a retry loop or a hang.
#[test]
fn wrong_password_is_a_clear_fatal_error() -> Result<()> {
    let spec = TunnelSpec {
        auth_user_pass: true,
        ..TunnelSpec::default()
    };
    let mut pair = bring_up(spec)?;
    // Overwrite the credentials after the config was written.
    std::fs::write(pair.hosts.dir.join("credentials.txt"), "alice\nwrong\n")?;
    // Restart the client so it reads the wrong password.
    pair.client.stop(Duration::from_secs(2));
    let conf = pair.hosts.dir.join("client.conf");
    pair.client = subjects::start_tunscope_client(
        &pair.hosts.client,
        &conf,
        &pair.hosts.dir.join("client2.log"),
        &[],
    )?;
    let code = pair.client.wait_exit(Duration::from_secs(30))?;
    let log = pair.client.log();
    ensure!(code == Some(1), "exit code {code:?}, log:\n{log}");
    ensure!(
        log.contains("AUTH_FAILED"),
        "log does not name AUTH_FAILED:\n{log}"
    );
    Ok(())
}

/// A server whose certificate does not chain to our CA is refused at the TLS layer.
#[test]
fn server_from_foreign_ca_is_refused() -> Result<()> {
    let hosts = TwoHosts::new()?;
    let pki = tunscope_harness::pki::Pki::generate(&hosts.dir.join("pki"))?;
    let other =
        tunscope_harness::pki::Pki::generate_named(&hosts.dir.join("other"), "unrelated CA")?;
    let (cert, key) = pki.client("client1")?;
    let spec = TunnelSpec::default();
    // The server presents a certificate from `other`, trusting both CAs for client certs.
    let mut server_pki = other.clone();
    server_pki.ca = pki.ca.clone();
    let conf = hosts.dir.join("server.conf");
    std::fs::write(&conf, spec.server_config(&server_pki, &hosts.dir)?)?;
    let client_conf = hosts.dir.join("client.conf");
    std::fs::write(
        &client_conf,
        spec.client_config(&pki, &cert, &key, SERVER_WAN, &hosts.dir)?,
    )?;
    let mut server = subjects::start_openvpn(&hosts.server, &conf, &hosts.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    let mut client = subjects::start_tunscope_client(
        &hosts.client,
        &client_conf,
        &hosts.dir.join("client.log"),
        &[],
    )?;
    client
        .wait_for_log(
            "peer certificate rejected: it is not issued by the configured 'ca'",
            Duration::from_secs(20),
        )
        .context("client should reject the server certificate")?;
    ensure!(
        !client.log().contains(subjects::READY_LINE),
        "tunnel came up with an untrusted server"
    );
    Ok(())
}

/// tshark decodes a capture of our client's traffic as OpenVPN without malformed packets.
#[test]
fn tshark_decodes_our_traffic() -> Result<()> {
    for proto in [Proto::Udp, Proto::Tcp] {
        let pcap_dir =
            std::env::temp_dir().join(format!("tunscope-tshark-{}-{proto:?}", std::process::id()));
        std::fs::create_dir_all(&pcap_dir)?;
        let pcap = pcap_dir.join("wire.pcap");
        let mut tshark_proc = None;
        let mut pair = bring_up_with(
            TunnelSpec {
                proto,
                ..TunnelSpec::default()
            },
            |hosts| {
                let mut cap = hosts.server.command("tshark");
                cap.args(["-q", "-i", "eth0", "-w"]).arg(&pcap);
                let mut p = Proc::spawn("tshark", cap, &pcap_dir.join("tshark.log"))?;
                p.wait_for_log("Capturing on", Duration::from_secs(15))?;
                tshark_proc = Some(p);
                Ok(())
            },
        )?;
        let mut tshark = tshark_proc.context("capture not started")?;
        pair.wait_connected()?;
        pair.traffic(256 << 10, None)?;
        std::thread::sleep(Duration::from_millis(300));
        tshark.signal(Signal::SIGINT)?;
        tshark.wait_exit(Duration::from_secs(10))?;
        let port = match proto {
            Proto::Udp => "udp.port==1194,openvpn",
            Proto::Tcp => "tcp.port==1194,openvpn",
        };
        let out = std::process::Command::new("tshark")
            .args(["-r"])
            .arg(&pcap)
            .args([
                "-d",
                port,
                "-T",
                "fields",
                "-e",
                "openvpn.opcode",
                "-e",
                "_ws.malformed",
                "-e",
                "_ws.expert.message",
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let _ = std::fs::remove_dir_all(&pcap_dir);
        let mut opcodes = std::collections::BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.get(1).is_some_and(|m| !m.is_empty())
                || f.get(2).is_some_and(|m| m.contains("alformed"))
            {
                bail!("{proto:?}: malformed packet in tshark output: {line}");
            }
            for op in f
                .first()
                .unwrap_or(&"")
                .split(',')
                .filter(|s| !s.is_empty())
            {
                *opcodes.entry(op.to_owned()).or_insert(0) += 1;
            }
        }
        // 0x07 client reset, 0x08 server reset, 0x04 control, 0x05 ack, 0x09 data v2.
        for op in ["0x07", "0x08", "0x04", "0x09"] {
            ensure!(
                opcodes.contains_key(op),
                "{proto:?}: opcode {op} not decoded; saw {opcodes:?}"
            );
        }
    }
    Ok(())
}

/// What the server pushes is applied to the client's namespace — routes, redirect-gateway
/// def1 with the host route to the server, resolv.conf — and undone on exit. After a crash
/// (SIGKILL) the leftovers stay, and the next start undoes them from the state file first.
#[test]
fn pushed_network_config_is_applied_undone_and_recovered_after_a_crash() -> Result<()> {
    use tunscope_harness::netstate::NetState;
    let spec = TunnelSpec {
        server_extra: [
            "push \"redirect-gateway def1\"",
            "push \"route 198.19.20.0 255.255.255.0\"",
            "push \"dhcp-option DNS 198.19.0.1\"",
            "push \"dhcp-option DOMAIN corp.example\"",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..TunnelSpec::default()
    };
    let (hosts, server_conf, client_conf) = configured(&spec, Some("nameserver 198.18.1.1\n"))?;
    let mut server =
        subjects::start_openvpn(&hosts.server, &server_conf, &hosts.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    let before = NetState::record(&hosts.client)?;
    let state = hosts.dir.join("client.state");
    let args = [
        "--dns-backend",
        "resolv-conf",
        "--state-file",
        state.to_str().context("path")?,
    ];
    let start = |log: &str| {
        subjects::start_tunscope_client(&hosts.client, &client_conf, &hosts.dir.join(log), &args)
    };

    let mut client = start("client1.log")?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    let during = NetState::record(&hosts.client)?;
    for want in [
        "0.0.0.0/1 via 198.19.0.1 dev tun0",
        "128.0.0.0/1 via 198.19.0.1 dev tun0",
        "198.19.20.0/24 via 198.19.0.1 dev tun0",
        "198.18.1.1 dev eth0",
    ] {
        ensure!(
            during.routes.iter().any(|r| r.starts_with(want)),
            "no route '{want}' while connected: {:#?}",
            during.routes
        );
    }
    ensure!(
        during.resolv_conf.contains("nameserver 198.19.0.1")
            && during.resolv_conf.contains("search corp.example")
            && !during.resolv_conf.contains("198.18.1.1"),
        "resolv.conf while connected:\n{}",
        during.resolv_conf
    );
    ensure!(state.exists(), "no state file while connected");

    // A crash: nothing gets undone by the client itself.
    client.signal(Signal::SIGKILL)?;
    client.wait_exit(Duration::from_secs(5))?;
    let crashed = NetState::record(&hosts.client)?;
    ensure!(
        crashed.resolv_conf.contains("198.19.0.1")
            && crashed
                .routes
                .iter()
                .any(|r| r.starts_with("198.18.1.1 dev eth0")),
        "expected leftovers after SIGKILL: {crashed:#?}"
    );

    // The next start restores first, then connects and configures anew.
    let mut client = start("client2.log")?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    ensure!(
        client.log().contains("left by a previous run"),
        "no recovery in the log:\n{}",
        client.log()
    );
    client.signal(Signal::SIGTERM)?;
    ensure!(client.wait_exit(Duration::from_secs(10))? == Some(0));
    let after = NetState::record(&hosts.client)?;
    let diff = before.diff(&after);
    ensure!(diff.is_empty(), "not restored: {diff:#?}");
    ensure!(!state.exists(), "state file left after a clean exit");
    Ok(())
}

/// `--dns-backend resolved` against a real systemd-resolved (its own D-Bus, in the client's
/// namespace): the tunnel's link gets the pushed server and domain, not the default route;
/// a clean exit reverts the link; after a crash (SIGKILL) the link is gone with its device,
/// the next start reverts what the state file recorded, and a clean exit leaves no state.
#[test]
fn resolved_backend_configures_the_link_and_reverts_it() -> Result<()> {
    let spec = TunnelSpec {
        server_extra: [
            "push \"route 198.19.20.0 255.255.255.0\"",
            "push \"dhcp-option DNS 198.19.0.1\"",
            "push \"dhcp-option DOMAIN corp.example\"",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..TunnelSpec::default()
    };
    let (hosts, server_conf, client_conf) = configured(&spec, None)?;
    let resolved = tunscope_harness::resolved::Resolved::start(&hosts.client, &hosts.dir)?;
    resolved.configure_uplink(&hosts.client, "eth0", &["198.18.1.1".to_owned()])?;
    let mut server =
        subjects::start_openvpn(&hosts.server, &server_conf, &hosts.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    let state = hosts.dir.join("client.state");
    let bus = resolved.bus_address();
    let start = |log: &str| {
        subjects::start_tunscope_client_env(
            &hosts.client,
            &client_conf,
            &hosts.dir.join(log),
            &[
                "--dns-backend",
                "resolved",
                "--state-file",
                state.to_str().context("path")?,
            ],
            &[("DBUS_SYSTEM_BUS_ADDRESS", bus.as_str())],
        )
    };
    let status = || resolved.resolvectl(&hosts.client, &["status"]);

    let mut client = start("client1.log")?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    let tun0 = resolved.resolvectl(&hosts.client, &["status", "tun0"])?;
    for want in [
        "DNS Servers: 198.19.0.1",
        "DNS Domain: corp.example",
        "-DefaultRoute",
    ] {
        ensure!(tun0.contains(want), "tun0 lacks {want:?}:\n{tun0}");
    }
    client.signal(Signal::SIGTERM)?;
    ensure!(client.wait_exit(Duration::from_secs(10))? == Some(0));
    ensure!(
        client.log().contains("reverted"),
        "no revert in the log:\n{}",
        tail(&client.log(), 15)
    );
    ensure!(
        !status()?.contains("198.19.0.1"),
        "left behind:\n{}",
        status()?
    );
    ensure!(!state.exists(), "state file left after a clean exit");

    // A crash: the device goes with the process, and resolved forgets its link.
    let mut client = start("client2.log")?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    ensure!(status()?.contains("198.19.0.1"));
    client.signal(Signal::SIGKILL)?;
    client.wait_exit(Duration::from_secs(5))?;
    ensure!(
        state.exists(),
        "the crash left no state file to recover from"
    );
    let mut client = start("client3.log")?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    ensure!(
        client.log().contains("left by a previous run"),
        "no recovery in the log:\n{}",
        tail(&client.log(), 15)
    );
    ensure!(status()?.contains("DNS Domain: corp.example"));
    client.signal(Signal::SIGTERM)?;
    ensure!(client.wait_exit(Duration::from_secs(10))? == Some(0));
    let after = status()?;
    ensure!(
        !after.contains("198.19.0.1") && after.contains("198.18.1.1"),
        "after the tunnel:\n{after}"
    );
    ensure!(!state.exists());
    Ok(())
}

/// `--dns-backend dnsmasq`: a dnsmasq answers on 127.0.0.1 with the pushed domain sent to
/// the pushed server; a crash (SIGKILL) leaves it running in its own session, and the next
/// start stops exactly that process (its pid and pid file from the state file) before
/// starting its own; a clean exit leaves no dnsmasq and resolv.conf as it was.
#[test]
fn dnsmasq_backend_runs_one_dnsmasq_and_a_crash_leaves_none_behind() -> Result<()> {
    use tunscope_harness::netstate::NetState;
    let spec = TunnelSpec {
        server_extra: [
            "push \"dhcp-option DNS 198.19.0.1\"",
            "push \"dhcp-option DOMAIN corp.example\"",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..TunnelSpec::default()
    };
    let (hosts, server_conf, client_conf) = configured(&spec, Some("nameserver 198.18.1.1\n"))?;
    let mut server =
        subjects::start_openvpn(&hosts.server, &server_conf, &hosts.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    let before = NetState::record(&hosts.client)?;
    let state = hosts.dir.join("client.state");
    let args = [
        "--dns-backend",
        "dnsmasq",
        "--state-file",
        state.to_str().context("path")?,
    ];
    let start = |log: &str| {
        subjects::start_tunscope_client(&hosts.client, &client_conf, &hosts.dir.join(log), &args)
    };
    // The dnsmasq serving this client: the pid in its pid file, if that process lives.
    let pid_file = state.with_extension("dnsmasq.pid");
    let running = || -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmd)
            .starts_with("dnsmasq")
            .then_some(pid)
    };

    let mut client = start("client1.log")?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    let during = NetState::record(&hosts.client)?;
    ensure!(
        during.resolv_conf.contains("nameserver 127.0.0.1")
            && during.resolv_conf.contains("search corp.example"),
        "resolv.conf while connected:\n{}",
        during.resolv_conf
    );
    let first = running().context("no dnsmasq while connected")?;
    client.signal(Signal::SIGKILL)?;
    client.wait_exit(Duration::from_secs(5))?;
    ensure!(
        running() == Some(first),
        "the crash should leave dnsmasq {first} running"
    );

    let mut client = start("client2.log")?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    ensure!(
        !std::path::Path::new(&format!("/proc/{first}/cmdline")).exists()
            || std::fs::read(format!("/proc/{first}/cmdline")).is_ok_and(|c| c.is_empty()),
        "the crashed run's dnsmasq {first} still runs"
    );
    let second = running().context("no dnsmasq after the restart")?;
    ensure!(second != first);
    client.signal(Signal::SIGTERM)?;
    ensure!(client.wait_exit(Duration::from_secs(10))? == Some(0));
    ensure!(running().is_none(), "dnsmasq left after a clean exit");
    let after = NetState::record(&hosts.client)?;
    let diff = before.diff(&after);
    ensure!(diff.is_empty(), "not restored: {diff:#?}");
    Ok(())
}

/// `--kill-switch`: the nftables table is there while the tunnel is up and gone after a
/// clean exit; a crash leaves it (failing closed: only the server's address gets out, so the
/// tunnel can come back) until the next start replaces it, whose clean exit removes it.
#[test]
fn kill_switch_is_owned_by_the_client_and_fails_closed_after_a_crash() -> Result<()> {
    let spec = TunnelSpec::default();
    let (hosts, server_conf, client_conf) = configured(&spec, None)?;
    let mut server =
        subjects::start_openvpn(&hosts.server, &server_conf, &hosts.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    let state = hosts.dir.join("client.state");
    let args = [
        "--kill-switch",
        "--state-file",
        state.to_str().context("path")?,
    ];
    let start = |log: &str| {
        subjects::start_tunscope_client(&hosts.client, &client_conf, &hosts.dir.join(log), &args)
    };
    let table = || -> Result<Option<String>> {
        let out = hosts
            .client
            .command("nft")
            .args(["list", "table", "inet", "tunscope_killswitch"])
            .output()?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    };
    ensure!(
        table()?.is_none(),
        "a kill switch before the client started"
    );
    let mut client = start("client1.log")?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    let t = table()?.context("no kill switch while connected")?;
    ensure!(
        t.contains("oifname \"tun0\" accept")
            && t.contains(&format!("ip daddr {SERVER_WAN} udp dport 1194 accept")),
        "{t}"
    );
    // The tunnel works through it.
    let p = traffic::ping(
        &hosts.client,
        &spec.server_tun_ip().to_string(),
        3,
        56,
        false,
    )?;
    ensure!(p.received == 3, "{}", p.output);
    client.signal(Signal::SIGTERM)?;
    ensure!(client.wait_exit(Duration::from_secs(10))? == Some(0));
    ensure!(table()?.is_none(), "kill switch left after a clean exit");
    ensure!(client.log().contains("kill switch removed"));

    let mut client = start("client2.log")?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    client.signal(Signal::SIGKILL)?;
    client.wait_exit(Duration::from_secs(5))?;
    ensure!(
        table()?.is_some(),
        "a crash should leave the kill switch (fail closed)"
    );
    let mut client = start("client3.log")?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    ensure!(
        client.log().contains("left by a previous run"),
        "{}",
        tail(&client.log(), 10)
    );
    ensure!(table()?.is_some());
    client.signal(Signal::SIGTERM)?;
    ensure!(client.wait_exit(Duration::from_secs(10))? == Some(0));
    ensure!(
        table()?.is_none(),
        "kill switch left after the recovered run"
    );
    Ok(())
}

/// A hostile (or broken) server pushing name servers on the client's own loopback: our
/// client refuses those options with a log line naming them, keeps the tunnel and the
/// genuine name server, and leaves the host's DNS as it was when the push holds nothing
/// else.
#[test]
fn pushed_loopback_name_servers_are_refused() -> Result<()> {
    use tunscope_harness::netstate::NetState;
    for (genuine, pushes) in [
        (
            true,
            vec![
                "push \"dhcp-option DNS 127.0.0.1\"",
                "push \"dhcp-option DNS 198.19.0.1\"",
                "push \"dhcp-option DNS6 ::1\"",
            ],
        ),
        (false, vec!["push \"dhcp-option DNS 127.0.0.53\""]),
    ] {
        let spec = TunnelSpec {
            server_extra: pushes.iter().map(|p| (*p).to_owned()).collect(),
            ..TunnelSpec::default()
        };
        let (hosts, server_conf, client_conf) = configured(&spec, Some("nameserver 198.18.1.1\n"))?;
        let mut server =
            subjects::start_openvpn(&hosts.server, &server_conf, &hosts.dir.join("server.log"))?;
        subjects::wait_ready(&mut server, Duration::from_secs(15))?;
        let before = NetState::record(&hosts.client)?;
        let mut client = subjects::start_tunscope_client(
            &hosts.client,
            &client_conf,
            &hosts.dir.join("client.log"),
            &["--dns-backend", "resolv-conf"],
        )?;
        subjects::wait_ready(&mut client, Duration::from_secs(20))?;
        let p = traffic::ping(
            &hosts.client,
            &spec.server_tun_ip().to_string(),
            3,
            56,
            false,
        )?;
        ensure!(p.received == 3, "tunnel: {}", p.output);
        let log = client.log();
        ensure!(
            log.contains("pushed option refused: dhcp-option DNS 127.0.0"),
            "no refusal logged:\n{log}"
        );
        let during = NetState::record(&hosts.client)?;
        ensure!(
            !during.resolv_conf.contains("nameserver 127.") && !during.resolv_conf.contains("::1"),
            "a loopback name server was installed:\n{}",
            during.resolv_conf
        );
        if genuine {
            ensure!(
                during.resolv_conf.contains("nameserver 198.19.0.1"),
                "the genuine name server is missing:\n{}",
                during.resolv_conf
            );
        } else {
            ensure!(
                during.resolv_conf == before.resolv_conf,
                "resolv.conf changed though nothing valid was pushed:\n{}",
                during.resolv_conf
            );
        }
        client.signal(Signal::SIGTERM)?;
        ensure!(client.wait_exit(Duration::from_secs(10))? == Some(0));
        let diff = before.diff(&NetState::record(&hosts.client)?);
        ensure!(diff.is_empty(), "not restored: {diff:#?}");
    }
    Ok(())
}

/// Routes that would take the tunnel's own packets, or local traffic, where they must not
/// go, from a stock server: `redirect-gateway def1 block-local` sends the local network
/// (TunnelCrack LocalNet) through the tunnel as two halves, a pushed route covering the
/// server's own address gets the server a host route outside the tunnel first (else the
/// tunnel would carry itself), and the client's `block-ipv6` routes IPv6 to the internet
/// into the tunnel. The tunnel works throughout; everything is undone on exit.
#[test]
fn block_local_block_ipv6_and_routes_covering_the_server() -> Result<()> {
    use tunscope_harness::netstate::NetState;
    let spec = TunnelSpec {
        server_extra: [
            "push \"redirect-gateway def1 block-local\"",
            "push \"route 198.18.1.0 255.255.255.128\"",
        ]
        .map(str::to_owned)
        .to_vec(),
        client_extra: vec!["block-ipv6".into()],
        ..TunnelSpec::default()
    };
    let (hosts, server_conf, client_conf) = configured(&spec, None)?;
    let mut server =
        subjects::start_openvpn(&hosts.server, &server_conf, &hosts.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    let before = NetState::record(&hosts.client)?;
    let via = |dst: &str| -> Result<String> { hosts.client.ip(&["route", "get", dst]) };
    ensure!(via("198.18.1.77")?.contains("dev eth0"), "LAN before");
    let mut client = subjects::start_tunscope_client(
        &hosts.client,
        &client_conf,
        &hosts.dir.join("client.log"),
        &[],
    )?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    // Past the point where a route carrying the tunnel into itself would have broken it.
    std::thread::sleep(Duration::from_secs(2));
    let p = traffic::ping(
        &hosts.client,
        &spec.server_tun_ip().to_string(),
        3,
        56,
        false,
    )?;
    ensure!(
        p.received == 3,
        "tunnel: {}\n{}",
        p.output,
        tail(&client.log(), 20)
    );
    let during = NetState::record(&hosts.client)?;
    for want in [
        "198.18.1.1 dev eth0",
        "198.18.1.0/25 via 198.19.0.1 dev tun0",
        "198.18.1.128/25 via 198.19.0.1 dev tun0",
    ] {
        ensure!(
            during.routes.iter().any(|r| r.starts_with(want)),
            "no route '{want}': {:#?}",
            during.routes
        );
    }
    ensure!(
        via("198.18.1.77")?.contains("dev tun0"),
        "the local network is not blocked: {}",
        via("198.18.1.77")?
    );
    ensure!(
        via("198.18.1.1")?.contains("dev eth0"),
        "the server must stay outside"
    );
    for want in ["2000::/4 dev tun0", "3000::/4 dev tun0"] {
        ensure!(
            during.routes6.iter().any(|r| r.starts_with(want)),
            "no IPv6 route '{want}': {:#?}",
            during.routes6
        );
    }
    ensure!(
        client.log().contains("covers the VPN server"),
        "{}",
        tail(&client.log(), 20)
    );
    // IPv6 from a dual-stack LAN address goes into the tunnel, where the client answers
    // "no route" at once (no IPv6 in this tunnel) instead of leaking or hanging.
    hosts.client.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1::2/64",
        "dev",
        "eth0",
        "nodad",
    ])?;
    let t = std::time::Instant::now();
    let out = hosts
        .client
        .command("ping")
        .args(["-6", "-n", "-c", "1", "-W", "3", "2001:db8:99::1"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        text.contains("Destination unreachable") && t.elapsed() < Duration::from_secs(2),
        "IPv6 with block-ipv6 ({:?}): {text}",
        t.elapsed()
    );
    hosts
        .client
        .ip(&["-6", "addr", "del", "2001:db8:1::2/64", "dev", "eth0"])?;
    client.signal(Signal::SIGTERM)?;
    ensure!(client.wait_exit(Duration::from_secs(10))? == Some(0));
    let diff = before.diff(&NetState::record(&hosts.client)?);
    ensure!(diff.is_empty(), "not restored: {diff:#?}");
    Ok(())
}

/// A stock server pushing 100,000 routes (hundreds of push-continuation parts): our client
/// refuses the push with a clear reason instead of installing them, and the host's routes
/// and DNS are as they were.
#[test]
fn a_push_of_100000_routes_is_refused_cleanly() -> Result<()> {
    use tunscope_harness::netstate::NetState;
    let spec = TunnelSpec {
        server_extra: (0..100_000u32)
            .map(|i| {
                format!(
                    "push \"route 198.19.{}.{} 255.255.255.255\"",
                    100 + (i / 250) % 150,
                    i % 250
                )
            })
            .collect(),
        ..TunnelSpec::default()
    };
    let (hosts, server_conf, client_conf) = configured(&spec, Some("nameserver 198.18.1.1\n"))?;
    let mut server =
        subjects::start_openvpn(&hosts.server, &server_conf, &hosts.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(60))?;
    let before = NetState::record(&hosts.client)?;
    let mut client = subjects::start_tunscope_client(
        &hosts.client,
        &client_conf,
        &hosts.dir.join("client.log"),
        &["--dns-backend", "resolv-conf"],
    )?;
    let code = client.wait_exit(Duration::from_secs(60))?;
    let log = client.log();
    ensure!(
        code.is_some_and(|c| c != 0) && log.contains("more than 8192 options"),
        "exit {code:?}:\n{}",
        tail(&log, 20)
    );
    let diff = before.diff(&NetState::record(&hosts.client)?);
    ensure!(diff.is_empty(), "host changed: {diff:#?}");
    Ok(())
}

/// Local safety: a second client started with the same configuration refuses to run (it
/// would undo the first one's routes and DNS on exit) and says who holds it; the first keeps
/// its tunnel. Its capture and control socket are ours alone (0600): the capture holds the
/// PUSH_REPLY, the socket serves statistics.
#[test]
fn a_second_instance_of_one_config_is_refused_and_files_are_private() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let s = stock_server_pair()?;
    let capture = s.1.dir.join("client.pcapng");
    let control = s.1.dir.join("client.sock");
    // One state file, as two runs of one config get by default (/run/tunscope/client-…).
    let state = s.1.dir.join("client.state");
    let state = state.to_str().context("path")?;
    let args = [
        "--state-file",
        state,
        "--capture",
        capture.to_str().context("path")?,
        "--control",
        control.to_str().context("path")?,
    ];
    let conf = s.1.dir.join("client.conf");
    let mut first =
        subjects::start_tunscope_client(&s.1.client, &conf, &s.1.dir.join("first.log"), &args)?;
    subjects::wait_ready(&mut first, Duration::from_secs(20))?;
    let mut second = subjects::start_tunscope_client(
        &s.1.client,
        &conf,
        &s.1.dir.join("second.log"),
        &["--state-file", state],
    )?;
    let code = second.wait_exit(Duration::from_secs(10))?;
    let log = second.log();
    ensure!(
        code.is_some_and(|c| c != 0)
            && log.contains("another tunscope client with this configuration is running")
            && log.contains(&format!("pid {}", first.pid().context("pid")?)),
        "second instance: exit {code:?}\n{log}"
    );
    let p = traffic::ping(&s.1.client, &s.2.to_string(), 3, 56, false)?;
    ensure!(p.received == 3, "the first tunnel suffered: {}", p.output);
    for f in [&capture, &control] {
        let mode = std::fs::metadata(f)?.mode() & 0o777;
        ensure!(mode == 0o600, "{} has mode {mode:o}", f.display());
    }
    first.signal(Signal::SIGTERM)?;
    ensure!(first.wait_exit(Duration::from_secs(10))? == Some(0));
    drop(s);
    Ok(())
}

/// Fresh namespaces for `spec`, the client's resolv.conf set to `resolv` when given, with
/// the server's and the client's configs written: (hosts, server config, client config).
fn configured(
    spec: &TunnelSpec,
    resolv: Option<&str>,
) -> Result<(TwoHosts, std::path::PathBuf, std::path::PathBuf)> {
    let hosts = TwoHosts::new()?;
    if let Some(r) = resolv {
        hosts.client.set_resolv_conf(r)?;
    }
    let pki = tunscope_harness::pki::Pki::generate(&hosts.dir.join("pki"))?;
    let (cert, key) = pki.client("client1")?;
    let server_conf = hosts.dir.join("server.conf");
    std::fs::write(&server_conf, spec.server_config(&pki, &hosts.dir)?)?;
    let client_conf = hosts.dir.join("client.conf");
    std::fs::write(
        &client_conf,
        spec.client_config(&pki, &cert, &key, SERVER_WAN, &hosts.dir)?,
    )?;
    Ok((hosts, server_conf, client_conf))
}

/// A stock server and our client's config for it, in fresh namespaces: (server, hosts,
/// server tunnel address).
fn stock_server_pair() -> Result<(Proc, TwoHosts, std::net::Ipv4Addr)> {
    let spec = TunnelSpec::default();
    let (hosts, server_conf, _) = configured(&spec, None)?;
    let mut server =
        subjects::start_openvpn(&hosts.server, &server_conf, &hosts.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    Ok((server, hosts, spec.server_tun_ip()))
}

/// `user nobody` / `group nogroup` in our client: once the tunnel is up every thread runs as
/// nobody; the control thread alone keeps CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, the others
/// (the data path's) have no capability. It still reconnects after the server restarts
/// (routes and resolv.conf applied again without root) and restores everything on exit.
#[test]
fn our_client_gives_up_root_and_still_reconnects_and_restores() -> Result<()> {
    use tunscope_harness::netstate::NetState;
    let spec = TunnelSpec {
        server_extra: [
            "push \"route 198.19.20.0 255.255.255.0\"",
            "push \"dhcp-option DNS 198.19.0.1\"",
        ]
        .map(str::to_owned)
        .to_vec(),
        client_extra: vec!["user nobody".into(), "group nogroup".into()],
        keepalive: (1, 4),
        ..TunnelSpec::default()
    };
    let (hosts, server_conf, client_conf) = configured(&spec, Some("nameserver 198.18.1.1\n"))?;
    let start_server = |log: &str| -> Result<Proc> {
        let mut s = subjects::start_openvpn(&hosts.server, &server_conf, &hosts.dir.join(log))?;
        subjects::wait_ready(&mut s, Duration::from_secs(15))?;
        Ok(s)
    };
    let mut server = start_server("server1.log")?;
    let before = NetState::record(&hosts.client)?;
    let mut client = subjects::start_tunscope_client(
        &hosts.client,
        &client_conf,
        &hosts.dir.join("client.log"),
        &["--dns-backend", "resolv-conf"],
    )?;
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    let pid = client.pid().context("pid")?;
    let ids = tunscope_harness::process::thread_identities(pid)?;
    let net_admin = (1u64 << 12) | (1 << 10);
    ensure!(
        ids.iter().all(|(uid, _)| *uid == 65534),
        "threads not all nobody: {ids:?}"
    );
    ensure!(
        ids.iter().filter(|(_, cap)| *cap == net_admin).count() == 1
            && ids.iter().all(|(_, cap)| *cap == 0 || *cap == net_admin),
        "capabilities per thread: {ids:?}"
    );
    let dst = spec.server_tun_ip().to_string();
    let p = traffic::ping(&hosts.client, &dst, 3, 56, false)?;
    ensure!(p.received == 3, "tunnel: {}", p.output);
    // The server restarts: ping-restart, reconnect, routes and DNS again — without root.
    server.stop(Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(1));
    let _server2 = start_server("server2.log")?;
    client
        .wait_for_log_count(
            "Initialization Sequence Completed",
            2,
            Duration::from_secs(30),
        )
        .with_context(|| tail(&client.log(), 30))?;
    std::thread::sleep(Duration::from_millis(500));
    let p = traffic::ping(&hosts.client, &dst, 3, 56, false)?;
    ensure!(
        p.received == 3,
        "after the reconnect: {}\n{}",
        p.output,
        tail(&client.log(), 20)
    );
    let during = NetState::record(&hosts.client)?;
    ensure!(
        during
            .routes
            .iter()
            .any(|r| r.starts_with("198.19.20.0/24 via 198.19.0.1 dev tun0"))
            && during.resolv_conf.contains("nameserver 198.19.0.1"),
        "not reapplied after the reconnect: {during:#?}"
    );
    client.signal(Signal::SIGTERM)?;
    ensure!(
        client.wait_exit(Duration::from_secs(10))? == Some(0),
        "{}",
        tail(&client.log(), 20)
    );
    let diff = before.diff(&NetState::record(&hosts.client)?);
    ensure!(diff.is_empty(), "not restored: {diff:#?}");
    Ok(())
}

/// `iperf3 -s` for one test on the server's tunnel address, and that address.
fn iperf_server_on_tunnel(pair: &Pair) -> Result<(Proc, String)> {
    let dst = pair.spec.server_tun_ip().to_string();
    let mut cmd = pair.hosts.server.command("iperf3");
    cmd.args(["-s", "-1", "-B", &dst]);
    let iperf = Proc::spawn("iperf3 -s", cmd, &pair.hosts.dir.join("iperf3.log"))?;
    std::thread::sleep(Duration::from_millis(300));
    Ok((iperf, dst))
}

/// Our client with two send threads (`--threads 2`: a two-queue tun device) uploading eight
/// flows to a stock server: the kernel spreads the flows over the queues, both send threads
/// seal, and the stock server sees the packet-ids in order — no replay complaint, every
/// packet our client sent decrypted.
#[test]
fn two_send_threads_upload_in_order_to_a_stock_server() -> Result<()> {
    let mut pair = bring_up_full(TunnelSpec::default(), |_| Ok(()), &["--threads", "2"])?;
    pair.wait_connected()?;
    let pid = pair.client.pid().context("client pid")?;
    let (_iperf, dst) = iperf_server_on_tunnel(&pair)?;
    let before = thread_pair_ticks(pid, "tx")?;
    let out = pair
        .hosts
        .client
        .command("iperf3")
        .args(["-c", &dst, "-P", "8", "-t", "3"])
        .output()?;
    ensure_success("iperf3", &out)?;
    let worked = ensure_both_threads_worked("tx", before, thread_pair_ticks(pid, "tx")?);
    pair.client.signal(Signal::SIGTERM)?;
    pair.client.wait_exit(Duration::from_secs(10))?;
    let log = pair.client.log();
    worked.with_context(|| format!("the client's log ends:\n{}", tail(&log, 30)))?;
    let (sent, line) = stage_counter(&log, "socket_tx", None)
        .with_context(|| format!("no socket_tx line at exit:\n{}", tail(&log, 30)))?;
    ensure!(sent > 10_000, "a 3 s upload: {line}");
    ensure!(
        !log.contains("multi-queue tun unavailable"),
        "{}",
        tail(&log, 20)
    );
    let server = pair.server.log();
    ensure!(
        !server.contains("replay") && !server.contains("packet ID"),
        "the stock server saw packet-ids out of order:\n{}",
        tail(&server, 20)
    );
    Ok(())
}

/// Our client with two receive threads (`--rx-threads 2` on a UDP link) downloading four
/// UDP streams from a stock server: both threads decrypt batches side by side, and the
/// datagrams still reach the tun device in the order they arrived — iperf3's receiver counts
/// not one out of order (loss does not count there, so a stock server that cannot keep up
/// does not blur the verdict; swapped batches would) — and no packet is refused as a replay.
#[test]
fn two_receive_threads_download_in_order_from_a_stock_server() -> Result<()> {
    let mut pair = bring_up_full(TunnelSpec::default(), |_| Ok(()), &["--rx-threads", "2"])?;
    pair.wait_connected()?;
    let pid = pair.client.pid().context("client pid")?;
    let (_iperf, dst) = iperf_server_on_tunnel(&pair)?;
    let before = thread_pair_ticks(pid, "rx")?;
    let out = pair
        .hosts
        .client
        .command("iperf3")
        .args([
            "-c", &dst, "-u", "-b", "100M", "-l", "1300", "-P", "4", "-t", "3", "-R", "-J",
        ])
        .output()?;
    ensure_success("iperf3", &out)?;
    let worked = ensure_both_threads_worked("rx", before, thread_pair_ticks(pid, "rx")?);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J")?;
    let streams = report["end"]["streams"]
        .as_array()
        .context("iperf3 -J: no end.streams")?;
    let sum = |field: &str| -> u64 {
        streams
            .iter()
            .filter_map(|s| s["udp"][field].as_u64())
            .sum()
    };
    let (received, out_of_order, lost) = (sum("packets"), sum("out_of_order"), sum("lost_packets"));
    pair.client.signal(Signal::SIGTERM)?;
    pair.client.wait_exit(Duration::from_secs(10))?;
    let log = pair.client.log();
    worked.with_context(|| format!("the client's log ends:\n{}", tail(&log, 30)))?;
    let (written, line) = stage_counter(&log, "write_tun", None)
        .with_context(|| format!("no write_tun line at exit:\n{}", tail(&log, 30)))?;
    ensure!(written > 10_000, "a 3 s download: {line}");
    let (replays, line) = stage_counter(&log, "decrypt", Some("replay"))
        .with_context(|| format!("no decrypt line at exit:\n{}", tail(&log, 30)))?;
    ensure!(replays == 0, "packets refused as replays: {line}");
    ensure!(
        out_of_order == 0,
        "{out_of_order} of {received} datagrams arrived out of order ({lost} lost)"
    );
    eprintln!("{written} packets written, {received} datagrams received in order, {lost} lost");
    Ok(())
}
