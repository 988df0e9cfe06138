//! Our server with stock OpenVPN 2.6 clients and with our own clients, in namespaces made for
//! each test (a star: server namespace with a bridge, one namespace per client).
//!
//! Needs root; `.ci/run` provides it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use tunscope_harness::pki::Pki;
use tunscope_harness::process::{
    Proc, ensure_both_threads_worked, ensure_success, stage_counter, tail, thread_pair_ticks,
};
use tunscope_harness::subjects::{self, Implementation, Proto, TunnelSpec, Wrap};
use tunscope_harness::topo::{SERVER_WAN, Star};
use tunscope_harness::traffic::{self, EchoServer};

use Implementation::{OpenVpn as Stock, Ours};

struct Net {
    star: Star,
    pki: Pki,
    server: Proc,
    clients: Vec<Proc>,
    spec: TunnelSpec,
}

fn start(spec: TunnelSpec, clients: &[Implementation]) -> Result<Net> {
    start_n(spec, clients.len(), clients)
}

/// Like [`start`], with `namespaces` client namespaces of which the first `clients.len()`
/// get a client now.
fn start_n(spec: TunnelSpec, namespaces: usize, clients: &[Implementation]) -> Result<Net> {
    start_n_with(spec, namespaces, clients, &[])
}

/// Like [`start_n`], our server started with `server_args` too.
fn start_n_with(
    spec: TunnelSpec,
    namespaces: usize,
    clients: &[Implementation],
    server_args: &[&str],
) -> Result<Net> {
    let star = Star::new(namespaces)?;
    let pki = Pki::generate(&star.dir.join("pki"))?;
    let conf = star.dir.join("server.conf");
    std::fs::write(&conf, spec.server_config(&pki, &star.dir)?)?;
    let mut server = subjects::start_tunscope_server_with(
        &star.server,
        &conf,
        &star.dir.join("server.log"),
        server_args,
    )?;
    subjects::wait_ready(&mut server, Duration::from_secs(15)).context("tunscope server")?;
    let mut net = Net {
        star,
        pki,
        server,
        clients: vec![],
        spec,
    };
    for (i, which) in clients.iter().enumerate() {
        let p = net.start_client(i, *which, &format!("client{i}"))?;
        net.clients.push(p);
    }
    Ok(net)
}

impl Net {
    fn start_client(&self, i: usize, which: Implementation, cn: &str) -> Result<Proc> {
        let dir = self.star.dir.join(format!("c{i}"));
        std::fs::create_dir_all(&dir)?;
        let (cert, key) = self.pki.client(cn)?;
        let conf = dir.join("client.conf");
        std::fs::write(
            &conf,
            self.spec
                .client_config(&self.pki, &cert, &key, SERVER_WAN, &dir)?,
        )?;
        subjects::start_client(which, &self.star.clients[i], &conf, &dir.join("client.log"))
    }

    fn wait_all(&mut self) -> Result<()> {
        for (i, c) in self.clients.iter_mut().enumerate() {
            subjects::wait_ready(c, Duration::from_secs(30)).with_context(|| {
                format!("client {i}; server log:\n{}", tail(&self.server.log(), 30))
            })?;
        }
        Ok(())
    }

    fn server_tun(&self) -> Ipv4Addr {
        self.spec.server_tun_ip()
    }

    /// Pings the server through client `i`'s tunnel and echoes `bytes` through it.
    fn traffic(&self, i: usize, bytes: usize) -> Result<()> {
        let dst = self.server_tun();
        let p = traffic::ping(&self.star.clients[i], &dst.to_string(), 3, 56, false)?;
        ensure!(
            p.received == 3,
            "client {i} ping through the tunnel: {}",
            p.output
        );
        let echo = EchoServer::start(&self.star.server, SocketAddr::from((dst, 5001)))?;
        traffic::echo_transfer(&self.star.clients[i], echo.addr, bytes, None)
            .with_context(|| format!("client {i} log:\n{}", tail(&self.clients[i].log(), 20)))?;
        Ok(())
    }

    /// The tunnel address client `i` was given (from its tun device).
    fn client_tun_ip(&self, i: usize) -> Result<Ipv4Addr> {
        let dev = if self.spec.tap { "tap0" } else { "tun0" };
        let out = self.star.clients[i].ip(&["-4", "-o", "addr", "show", "dev", dev])?;
        let cidr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .context("no IPv4 address on the tunnel device")?;
        Ok(cidr.split('/').next().unwrap_or("").parse()?)
    }
}

fn base(proto: Proto, cipher: &str, wrap: Wrap, password: bool) -> TunnelSpec {
    TunnelSpec {
        proto,
        server_ciphers: vec![cipher.into()],
        wrap,
        auth_user_pass: password,
        server_extra: vec![
            "push \"route 198.19.10.0 255.255.255.0\"".into(),
            "push \"dhcp-option DNS 198.19.10.53\"".into(),
            "push \"dhcp-option DOMAIN corp.example\"".into(),
        ],
        ..TunnelSpec::default()
    }
}

/// What a stock client logs and installs: the PUSH_REPLY with our options, the pushed route
/// in its kernel routing table, and an address from our pool.
fn check_stock_client(net: &Net, i: usize) -> Result<()> {
    let log = net.clients[i].log();
    let reply = log
        .lines()
        .find(|l| l.contains("PUSH_REPLY"))
        .context("stock client did not log the PUSH_REPLY")?;
    for opt in [
        "route 198.19.10.0 255.255.255.0",
        "dhcp-option DNS 198.19.10.53",
        "dhcp-option DOMAIN corp.example",
        "topology subnet",
        "peer-id",
        "cipher",
    ] {
        ensure!(reply.contains(opt), "PUSH_REPLY lacks '{opt}': {reply}");
    }
    let routes = net.star.clients[i].ip(&["route", "show", "dev", "tun0"])?;
    ensure!(
        routes.contains("198.19.10.0/24"),
        "pushed route not installed:\n{routes}"
    );
    let ip = net.client_tun_ip(i)?;
    ensure!(
        ip.octets()[..3] == [198, 19, 0] && ip.octets()[3] >= 2,
        "tunnel address {ip}"
    );
    Ok(())
}

/// Stock 2.6 clients compressing what they send (`allow-compression yes`, LZ4-v2 and LZO)
/// to our server, which decompresses: compressible pings and a transfer arrive intact and the
/// server's counters show the packets it inflated.
/// `dev tap`: our server with a stock client and one of ours. Each pings and echoes through
/// the server's tap device (ARP across the tunnel); with client-to-client they reach each
/// other through the server's table of learned MAC addresses; the server counts frames.
#[test]
fn tap_server_with_stock_and_our_clients() -> Result<()> {
    let spec = TunnelSpec {
        tap: true,
        server_extra: vec!["client-to-client".into()],
        ..TunnelSpec::default()
    };
    let mut net = start(spec, &[Stock, Ours])?;
    net.wait_all()?;
    for i in 0..2 {
        net.traffic(i, 1 << 20)?;
    }
    let other = net.client_tun_ip(1)?;
    let p = traffic::ping(&net.star.clients[0], &other.to_string(), 3, 56, false)?;
    ensure!(
        p.received == 3,
        "stock client → our client through the server's switch: {}",
        p.output
    );
    let neigh = net.star.clients[0].ip(&["neigh", "show", "dev", "tap0"])?;
    ensure!(
        neigh.contains(&format!("{other} lladdr")),
        "the other client was not resolved by ARP:\n{neigh}"
    );
    net.server.signal(Signal::SIGTERM)?;
    net.server.wait_exit(Duration::from_secs(10))?;
    let log = net.server.log();
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .map(str::to_owned)
            .with_context(|| format!("no '{what}' counts at exit:\n{}", tail(&log, 40)))
    };
    // The clients' ARP requests are broadcasts into the server's device.
    let out = line("frames out of tunnel:")?;
    eprintln!("our tap server: {}", out.trim());
    ensure!(
        !out.contains(" 0 broadcast") && !out.contains(" 0 ARP"),
        "{out}"
    );
    let (limited, wt) = stage_counter(&log, "write_tun", Some("mac_limit"))
        .with_context(|| format!("no write_tun line at exit:\n{}", tail(&log, 30)))?;
    ensure!(limited == 0, "a client exceeded its addresses: {wt}");
    Ok(())
}

#[test]
fn stock_clients_compressing_are_decompressed() -> Result<()> {
    for alg in ["compress lz4-v2", "comp-lzo yes"] {
        let mut spec = base(Proto::Udp, "AES-256-GCM", Wrap::None, false);
        spec.server_extra.push(alg.into());
        spec.client_extra = vec!["allow-compression yes".into(), alg.into()];
        let mut net = start(spec, &[Stock])?;
        net.wait_all()?;
        let dst = net.server_tun().to_string();
        let p = traffic::ping(&net.star.clients[0], &dst, 10, 1200, false)?;
        ensure!(p.received == 10, "{alg}: compressible pings: {}", p.output);
        net.traffic(0, 1 << 20)?;
        net.server.signal(Signal::SIGTERM)?;
        net.server.wait_exit(Duration::from_secs(10))?;
        let log = net.server.log();
        let n: u64 = log
            .lines()
            .filter_map(|l| l.split("compression: ").nth(1))
            .filter_map(|r| r.split_whitespace().next()?.parse().ok())
            .next_back()
            .unwrap_or(0);
        ensure!(
            n >= 10,
            "{alg}: only {n} packets decompressed:\n{}",
            tail(&log, 40)
        );
        eprintln!("{alg}: {n} packets decompressed by our server");
    }
    Ok(())
}

/// `fragment 600` on our server with a stock client and one of ours: 1,400-byte pings and
/// transfers of 1,500-byte packets (`mssfix 0`) are cut and reassembled in both directions;
/// the server's counters show the fragments it held and none malformed.
#[test]
fn fragment_with_stock_and_our_clients() -> Result<()> {
    let mut spec = base(Proto::Udp, "AES-256-GCM", Wrap::TlsCrypt, false);
    spec.server_extra
        .extend(["fragment 600".into(), "mssfix 0".into()]);
    spec.client_extra = vec!["fragment 600".into(), "mssfix 0".into()];
    let mut net = start(spec, &[Stock, Ours])?;
    net.wait_all()?;
    let dst = net.server_tun().to_string();
    for i in 0..2 {
        let p = traffic::ping(&net.star.clients[i], &dst, 5, 1400, false)?;
        ensure!(p.received == 5, "client {i}: 1400-byte pings: {}", p.output);
        net.traffic(i, 1 << 20)?;
    }
    net.server.signal(Signal::SIGTERM)?;
    net.server.wait_exit(Duration::from_secs(10))?;
    let log = net.server.log();
    let held = stage_counter(&log, "decrypt", Some("fragment")).map_or(0, |(n, _)| n);
    ensure!(
        held >= 200,
        "only {held} fragments held:\n{}",
        tail(&log, 40)
    );
    ensure!(!log.contains("bad_fragment"), "{}", tail(&log, 40));
    eprintln!("our server reassembled packets from {held} held fragments");
    Ok(())
}

/// Stock 2.6 clients negotiating AES-256-CBC with HMAC-SHA256 (`data-ciphers AES-256-CBC`,
/// `auth SHA256` on both sides) with our server: pings and a transfer cross intact.
#[test]
fn stock_clients_cbc_hmac_data_channel() -> Result<()> {
    let mut spec = base(Proto::Udp, "AES-256-CBC", Wrap::None, false);
    spec.server_extra.push("auth SHA256".into());
    spec.client_ciphers = Some(vec!["AES-256-CBC".into()]);
    spec.client_extra = vec!["auth SHA256".into()];
    let mut net = start(spec, &[Stock, Ours])?;
    net.wait_all()?;
    check_stock_client(&net, 0)?;
    net.traffic(0, 2 << 20)?;
    net.traffic(1, 2 << 20)?;
    ensure!(
        net.clients[0].log().contains("AES-256-CBC"),
        "stock client did not use AES-256-CBC:\n{}",
        tail(&net.clients[0].log(), 20)
    );
    Ok(())
}

/// tls-crypt-v2 on our server: a server key from `openvpn --genkey`, client keys wrapped by
/// stock openvpn and by `tunscope genkey`; stock 2.6 clients (which announce early
/// negotiation: over UDP they are admitted through 2.6's stateless cookie, their key resent in
/// P_CONTROL_WKC_V1) and ours connect over UDP and TCP. (A key wrapped by another server is
/// refused before any state: `tls_crypt_v2::tests`, `config_interop`.)
#[test]
fn tls_crypt_v2_stock_and_our_clients() -> Result<()> {
    for proto in [Proto::Udp, Proto::Tcp] {
        let dir = std::env::temp_dir().join(format!("ts-v2s-{}-{proto:?}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let srv = dir.join("server.key");
        let run = |args: &[&std::ffi::OsStr], bin: &std::path::Path| -> Result<()> {
            let out = std::process::Command::new(bin).args(args).output()?;
            ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        let openvpn = std::path::Path::new("openvpn");
        run(
            &[
                "--genkey".as_ref(),
                "tls-crypt-v2-server".as_ref(),
                srv.as_os_str(),
            ],
            openvpn,
        )?;
        let stock_cli = dir.join("stock-client.key");
        run(
            &[
                "--tls-crypt-v2".as_ref(),
                srv.as_os_str(),
                "--genkey".as_ref(),
                "tls-crypt-v2-client".as_ref(),
                stock_cli.as_os_str(),
            ],
            openvpn,
        )?;
        let our_cli = dir.join("our-client.key");
        let bin = subjects::tunscope_bin()?;
        run(
            &[
                "genkey".as_ref(),
                "tls-crypt-v2-client".as_ref(),
                our_cli.as_os_str(),
                "--server-key".as_ref(),
                srv.as_os_str(),
            ],
            &bin,
        )?;
        let mut spec = base(proto, "AES-256-GCM", Wrap::None, false);
        spec.server_extra
            .push(format!("tls-crypt-v2 {}", srv.display()));
        // Both clients read their key from the line below: the stock-wrapped key for the
        // stock client, ours for our client (client_extra is shared, so swap files).
        spec.client_extra = vec![format!("tls-crypt-v2 {}", dir.join("client.key").display())];
        std::fs::copy(&stock_cli, dir.join("client.key"))?;
        let mut net = start(spec, &[Stock])?;
        net.wait_all()?;
        check_stock_client(&net, 0)?;
        net.traffic(0, 1 << 20)?;
        // 2.6 clients announce early negotiation: over UDP the server answers statelessly
        // and creates the session only from the key resent in P_CONTROL_WKC_V1.
        if proto == Proto::Udp {
            ensure!(
                net.server.log().contains("admitted by cookie"),
                "the stock client was not admitted through the tls-crypt-v2 cookie:\n{}",
                tail(&net.server.log(), 20)
            );
        }
        std::fs::copy(&our_cli, dir.join("client.key"))?;
        let p = net.start_client(0, Ours, "client-ours")?;
        net.clients[0].stop(Duration::from_secs(5));
        net.clients[0] = p;
        net.wait_all()?;
        net.traffic(0, 1 << 20)?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

#[test]
fn stock_clients_udp_aes256_tls_crypt_password() -> Result<()> {
    let mut net = start(
        base(Proto::Udp, "AES-256-GCM", Wrap::TlsCrypt, true),
        &[Stock],
    )?;
    net.wait_all()?;
    check_stock_client(&net, 0)?;
    net.traffic(0, 4 << 20)
}

/// Also: 2.6-style `dns` options and a pushed `tun-mtu` as the stock client sees them.
#[test]
fn stock_clients_udp_chacha20_cert_only() -> Result<()> {
    let mut spec = base(Proto::Udp, "CHACHA20-POLY1305", Wrap::None, false);
    spec.server_extra.extend([
        "dns server 0 address 198.19.10.53".into(),
        "dns server 0 resolve-domains corp.example".into(),
        "tun-mtu 1400".into(),
        "block-outside-dns".into(),
    ]);
    let mut net = start(spec, &[Stock])?;
    net.wait_all()?;
    check_stock_client(&net, 0)?;
    let log = net.clients[0].log();
    let reply = log
        .lines()
        .find(|l| l.contains("PUSH_REPLY"))
        .unwrap_or_default();
    ensure!(
        reply.contains("dns server 0 address 198.19.10.53"),
        "no 2.6 dns option: {reply}"
    );
    ensure!(reply.contains("tun-mtu 1400"), "no tun-mtu: {reply}");
    let link = net.star.clients[0].ip(&["link", "show", "dev", "tun0"])?;
    ensure!(
        link.contains("mtu 1400"),
        "stock client did not apply the pushed MTU: {link}"
    );
    ensure!(
        net.server.log().contains("block-outside-dns"),
        "block-outside-dns should be ignored with a warning"
    );
    net.traffic(0, 4 << 20)
}

#[test]
fn stock_clients_tcp_chacha20_tls_crypt_password() -> Result<()> {
    let mut net = start(
        base(Proto::Tcp, "CHACHA20-POLY1305", Wrap::TlsCrypt, true),
        &[Stock],
    )?;
    net.wait_all()?;
    check_stock_client(&net, 0)?;
    net.traffic(0, 4 << 20)
}

#[test]
fn stock_clients_tcp_aes256_tls_auth() -> Result<()> {
    let mut net = start(
        base(Proto::Tcp, "AES-256-GCM", Wrap::TlsAuth, false),
        &[Stock],
    )?;
    net.wait_all()?;
    check_stock_client(&net, 0)?;
    net.traffic(0, 4 << 20)
}

#[test]
fn our_clients_udp_and_tcp_variants() -> Result<()> {
    for spec in [
        base(Proto::Udp, "AES-256-GCM", Wrap::TlsCrypt, true),
        base(Proto::Udp, "CHACHA20-POLY1305", Wrap::TlsAuth, false),
        base(Proto::Tcp, "AES-256-GCM", Wrap::None, true),
        base(Proto::Tcp, "CHACHA20-POLY1305", Wrap::TlsCrypt, false),
    ] {
        let label = spec.label();
        let mut net = start(spec, &[Ours])?;
        net.wait_all().with_context(|| label.clone())?;
        net.traffic(0, 4 << 20).with_context(|| label.clone())?;
        let log = net.clients[0].log();
        ensure!(
            log.contains("pushed: 1 routes"),
            "{label}: pushed route not received:\n{log}"
        );
    }
    Ok(())
}

/// Two stock clients and one of ours reach each other through the server
/// (`client-to-client`), and each gets its own address.
#[test]
fn client_to_client_mixed_implementations() -> Result<()> {
    let mut spec = base(Proto::Udp, "AES-256-GCM", Wrap::TlsCrypt, false);
    spec.server_extra.push("client-to-client".into());
    let mut net = start(spec, &[Stock, Ours, Stock])?;
    net.wait_all()?;
    let ips: Vec<Ipv4Addr> = (0..3)
        .map(|i| net.client_tun_ip(i))
        .collect::<Result<_>>()?;
    ensure!(
        ips[0] != ips[1] && ips[1] != ips[2] && ips[0] != ips[2],
        "addresses {ips:?}"
    );
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        let p = traffic::ping(&net.star.clients[a], &ips[b].to_string(), 3, 56, false)?;
        ensure!(
            p.received == 3,
            "client {a} → client {b} ({}): {}",
            ips[b],
            p.output
        );
    }
    // And data with verified content between two clients.
    let echo = EchoServer::start(&net.star.clients[2], SocketAddr::from((ips[2], 5002)))?;
    traffic::echo_transfer(&net.star.clients[1], echo.addr, 2 << 20, None)?;
    Ok(())
}

/// IPv6 inside the tunnel: server-ipv6 pool, pushed route-ipv6, stock client and ours.
#[test]
fn ipv6_pool_and_routes() -> Result<()> {
    let mut spec = base(Proto::Udp, "AES-256-GCM", Wrap::None, false);
    spec.server_extra
        .push("server-ipv6 2001:db8:100::/64".into());
    spec.server_extra
        .push("push \"route-ipv6 2001:db8:200::/48\"".into());
    let mut net = start(spec, &[Stock, Ours])?;
    net.wait_all()?;
    for i in 0..2 {
        let p = traffic::ping(&net.star.clients[i], "2001:db8:100::1", 3, 1000, false)?;
        ensure!(p.received == 3, "client {i} IPv6 ping: {}", p.output);
    }
    let routes = net.star.clients[0].ip(&["-6", "route", "show", "dev", "tun0"])?;
    ensure!(
        routes.contains("2001:db8:200::/48"),
        "stock client lacks pushed IPv6 route:\n{routes}"
    );
    Ok(())
}

/// A wrong password is refused: the stock client logs AUTH_FAILED, others are unaffected.
#[test]
fn wrong_password_refused_others_unaffected() -> Result<()> {
    let mut net = start(
        base(Proto::Udp, "AES-256-GCM", Wrap::None, true),
        &[Stock, Stock],
    )?;
    net.wait_all()?;
    // Restart client 1 with a wrong password.
    net.clients[1].stop(Duration::from_secs(3));
    let dir = net.star.dir.join("c1");
    std::fs::write(dir.join("credentials.txt"), "alice\nnot the password\n")?;
    let conf = dir.join("client.conf");
    net.clients[1] =
        subjects::start_client(Stock, &net.star.clients[1], &conf, &dir.join("client2.log"))?;
    net.clients[1]
        .wait_for_log("AUTH_FAILED", Duration::from_secs(20))
        .context("stock client should be told AUTH_FAILED")?;
    net.traffic(0, 1 << 20)?;
    Ok(())
}

/// The deferred-auth race (the CVE-2020-15078 class) with a slow verifier: client A (right
/// password) dies while its 2-second check runs; client B (wrong password) comes from the
/// same address and port and gets the same peer-id. A's late "yes" must not admit B: B is
/// told AUTH_FAILED and never gets a tunnel.
#[test]
fn a_late_verdict_never_admits_the_next_client() -> Result<()> {
    let mut spec = base(Proto::Udp, "AES-256-GCM", Wrap::None, true);
    spec.client_extra = vec!["lport 41194".into()];
    let mut net = start_n(spec, 1, &[])?;
    let script = net.star.dir.join("check-password.sh");
    let check = std::fs::read_to_string(&script)?;
    std::fs::write(&script, check.replacen("\nu=", "\nsleep 2\nu=", 1))?;
    let a = net.start_client(0, Ours, "client0")?;
    net.clients.push(a);
    // The handshake takes milliseconds; the check runs 2 s: A dies while it runs.
    std::thread::sleep(Duration::from_millis(700));
    net.clients[0].signal(Signal::SIGKILL)?;
    net.clients[0].wait_exit(Duration::from_secs(5))?;
    let dir = net.star.dir.join("c0");
    std::fs::write(dir.join("credentials.txt"), "alice\nnot the password\n")?;
    let mut b = subjects::start_client(
        Ours,
        &net.star.clients[0],
        &dir.join("client.conf"),
        &dir.join("client-b.log"),
    )?;
    let code = b.wait_exit(Duration::from_secs(15))?;
    let log = b.log();
    ensure!(
        log.contains("AUTH_FAILED") && !log.contains("Initialization Sequence Completed"),
        "client B (wrong password) exit {code:?}:\n{}\nserver:\n{}",
        tail(&log, 20),
        tail(&net.server.log(), 20)
    );
    Ok(())
}

/// client-config-dir: a fixed address (ifconfig-push) and a network behind the client
/// (iroute + server route) that the server reaches through the tunnel.
#[test]
fn client_config_dir_fixed_address_and_iroute() -> Result<()> {
    let mut spec = base(Proto::Udp, "AES-256-GCM", Wrap::None, false);
    let ccd = std::env::temp_dir().join(format!("tunscope-ccd-{}", std::process::id()));
    std::fs::create_dir_all(&ccd)?;
    std::fs::write(
        ccd.join("client0"),
        "ifconfig-push 198.19.0.77 255.255.255.0\niroute 198.19.77.0 255.255.255.0\n",
    )?;
    spec.server_extra
        .push(format!("client-config-dir {}", ccd.display()));
    spec.server_extra
        .push("route 198.19.77.0 255.255.255.0".into());
    let r = (|| -> Result<()> {
        let mut net = start(spec, &[Stock])?;
        net.wait_all()?;
        ensure!(
            net.client_tun_ip(0)? == Ipv4Addr::new(198, 19, 0, 77),
            "ifconfig-push not applied"
        );
        // The network behind the client: an address on its loopback.
        net.star.clients[0].ip(&["addr", "add", "198.19.77.1/32", "dev", "lo"])?;
        let p = traffic::ping(&net.star.server, "198.19.77.1", 3, 56, false)?;
        ensure!(p.received == 3, "server → iroute network: {}", p.output);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&ccd);
    r
}

/// Renegotiation per client (server reneg-sec) while data flows, with a stock client.
#[test]
fn renegotiation_with_stock_client_mid_transfer() -> Result<()> {
    let mut spec = base(Proto::Udp, "AES-256-GCM", Wrap::TlsCrypt, true);
    spec.server_reneg_sec = Some(3);
    let mut net = start(spec, &[Stock])?;
    net.wait_all()?;
    let dst = net.server_tun();
    let echo = EchoServer::start(&net.star.server, SocketAddr::from((dst, 5001)))?;
    traffic::echo_transfer(
        &net.star.clients[0],
        echo.addr,
        6 << 20,
        Some(Duration::from_secs(8)),
    )?;
    let renegs = net.server.log().matches("new data keys").count();
    ensure!(
        renegs >= 2,
        "expected ≥2 renegotiations, server log:\n{}",
        tail(&net.server.log(), 30)
    );
    Ok(())
}

/// Garbage, forged data packets and a flood of handshake attempts from an attacker do not
/// disturb a client's transfer; the server counts and drops them.
#[test]
fn hostile_peer_does_not_disturb_clients() -> Result<()> {
    let mut net = start(
        base(Proto::Udp, "AES-256-GCM", Wrap::None, false),
        &[Ours, Ours],
    )?;
    net.wait_all()?;
    // Client 1's namespace plays the attacker: it sends junk to the server port from a
    // second socket while client 0 transfers.
    let target = SocketAddr::from((SERVER_WAN, 1194));
    let attacker = net.star.clients[1].spawn(move || -> Result<u64> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut n = 0u64;
        let mut x: u64 = 0x1234_5678;
        while Instant::now() < deadline {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut pkt = x.to_le_bytes().repeat(12);
            match n % 4 {
                // P_DATA_V2 for peer-id 0 with a bad tag.
                0 => pkt[..4].copy_from_slice(&[0x48, 0, 0, 0]),
                // A client hard reset (needs a stateless reply, rate limited).
                1 => {
                    pkt.truncate(14);
                    pkt[0] = 0x38;
                    pkt[9] = 0;
                    pkt[10..14].copy_from_slice(&[0; 4]);
                }
                // Undefined opcode.
                2 => pkt[0] = 0xf8,
                _ => pkt.truncate(3),
            }
            let _ = s.send_to(&pkt, target);
            n += 1;
            if n.is_multiple_of(64) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(n)
    })?;
    net.traffic(0, 4 << 20)?;
    let sent = attacker
        .join()
        .map_err(|_| anyhow::anyhow!("attacker panicked"))??;
    ensure!(sent > 1000, "attacker sent only {sent}");
    net.traffic(1, 256 << 10)
        .context("the attacker's own tunnel still works too")?;
    net.server.signal(Signal::SIGTERM)?;
    net.server.wait_exit(Duration::from_secs(10))?;
    let log = net.server.log();
    for reason in ["bad_tag", "bad_opcode", "malformed"] {
        ensure!(
            log.contains(reason),
            "server did not count '{reason}' drops:\n{}",
            tail(&log, 12)
        );
    }
    Ok(())
}

/// A flood of well-formed hard resets from one attacker address (new session ids at full
/// speed from 32 ports, and one captured reset replayed over and over) while a stock client
/// and ours connect: one source only gets its share of the stateless answers, so both are
/// up within 5 s and carry data during the flood (with one global bucket, the flood took every answer and the client waited
/// as long as the flood lasted). The flood shows as `rate_limited` at control.
#[test]
fn reset_flood_and_replays_from_one_source_leave_room() -> Result<()> {
    let spec = base(Proto::Udp, "AES-256-GCM", Wrap::None, false);
    let mut net = start_n(spec, 3, &[])?;
    let pid = net.server.pid().context("server pid")?;
    let rss0 = rss_kib(pid);
    let target = SocketAddr::from((SERVER_WAN, 1194));
    let attacker = net.star.clients[2].spawn(move || -> Result<u64> {
        let socks: Vec<std::net::UdpSocket> = (0..32)
            .map(|_| std::net::UdpSocket::bind("0.0.0.0:0"))
            .collect::<std::io::Result<_>>()?;
        // P_CONTROL_HARD_RESET_CLIENT_V2, key-id 0: session id, no ACKs, message-id 0.
        let reset = |sid: u64| {
            let mut p = vec![0x38];
            p.extend_from_slice(&(sid | 1).to_be_bytes());
            p.push(0);
            p.extend_from_slice(&[0; 4]);
            p
        };
        let captured = reset(0x5eed_5eed_5eed_5eed);
        let deadline = Instant::now() + Duration::from_secs(8);
        let (mut n, mut x) = (0u64, 0x9e37_79b9_7f4a_7c15u64);
        while Instant::now() < deadline {
            for s in &socks {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let pkt = if n % 2 == 0 {
                    reset(x)
                } else {
                    captured.clone()
                };
                let _ = s.send_to(&pkt, target);
                n += 1;
            }
            if n.is_multiple_of(512) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(n)
    })?;
    std::thread::sleep(Duration::from_secs(1));
    // A stock client and ours, each new during the flood.
    let t = Instant::now();
    for (i, which) in [Stock, Ours].into_iter().enumerate() {
        let p = net.start_client(i, which, &format!("client{i}"))?;
        net.clients.push(p);
    }
    for i in 0..2 {
        subjects::wait_ready(&mut net.clients[i], Duration::from_secs(5)).with_context(|| {
            format!(
                "client {i}, new during the reset flood; server log:\n{}",
                tail(&net.server.log(), 20)
            )
        })?;
    }
    let connected_in = t.elapsed();
    // Both keep their tunnels while the flood goes on.
    for i in 0..2 {
        net.traffic(i, 128 << 10)?;
    }
    let sent = attacker
        .join()
        .map_err(|_| anyhow::anyhow!("attacker panicked"))??;
    ensure!(sent > 20_000, "attacker sent only {sent}");
    let peak = rss_kib(pid);
    ensure!(
        peak < rss0 + 64 * 1024,
        "server memory {rss0} -> {peak} KiB"
    );
    let after = cpu_over(pid, Duration::from_secs(2));
    ensure!(after < 50.0, "server at {after:.0} % CPU after the attack");
    net.traffic(0, 256 << 10)?;
    eprintln!(
        "connected in {connected_in:?} during a flood of {sent} hard resets; RSS {rss0} -> {peak} KiB"
    );
    net.server.signal(Signal::SIGTERM)?;
    net.server.wait_exit(Duration::from_secs(10))?;
    let log = net.server.log();
    ensure!(
        stage_counter(&log, "control", Some("rate_limited")).is_some_and(|(n, _)| n > 0),
        "the flood was not counted as rate_limited:\n{}",
        tail(&log, 12)
    );
    Ok(())
}

/// A client that crashed and restarts from the same address and port (`lport`) reconnects
/// at once — ours and stock — instead of its packets going to its dead session until that
/// times out.
#[test]
fn restart_from_the_same_lport_reconnects() -> Result<()> {
    let mut spec = base(Proto::Udp, "AES-256-GCM", Wrap::TlsCrypt, false);
    spec.client_extra = vec!["lport 41194".into()];
    spec.keepalive = (10, 120);
    let mut net = start(spec, &[Stock, Ours])?;
    net.wait_all()?;
    for i in 0..2 {
        net.clients[i].signal(Signal::SIGKILL)?;
        net.clients[i].wait_exit(Duration::from_secs(5))?;
    }
    for (i, which) in [Stock, Ours].into_iter().enumerate() {
        let p = net.start_client(i, which, &format!("client{i}"))?;
        net.clients[i] = p;
    }
    for (i, c) in net.clients.iter_mut().enumerate() {
        let t = Instant::now();
        subjects::wait_ready(c, Duration::from_secs(8)).with_context(|| {
            format!(
                "client {i} restarted on its port; server log:\n{}",
                tail(&net.server.log(), 20)
            )
        })?;
        eprintln!("client {i} reconnected in {:?}", t.elapsed());
    }
    for i in 0..2 {
        net.traffic(i, 128 << 10)?;
    }
    let log = net.server.log();
    ensure!(
        log.matches("replaced by a new session from the same address")
            .count()
            >= 2,
        "{}",
        tail(&log, 30)
    );
    Ok(())
}

/// A server's memory in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// An unauthenticated flood of control packets (P_CONTROL_V1 and P_ACK_V1 for made-up
/// sessions) from 64 source ports at full speed while a new stock client connects: the client
/// is up within 5 s and its tunnel works, the server's memory stays bounded, and the flood
/// shows in the counters (control packets refused, and what the bounded queue could not hold
/// dropped at socket_rx as queue_full, not buffered).
#[test]
fn control_flood_from_many_ports_leaves_room_for_a_new_client() -> Result<()> {
    let spec = base(Proto::Udp, "AES-256-GCM", Wrap::None, false);
    let mut net = start_n(spec, 2, &[])?;
    let server_pid = net.server.pid().context("server pid")?;
    let baseline = rss_kib(server_pid);
    let target = SocketAddr::from((SERVER_WAN, 1194));
    let attacker = net.star.clients[1].spawn(move || -> Result<u64> {
        let socks: Vec<std::net::UdpSocket> = (0..64)
            .map(|_| std::net::UdpSocket::bind("0.0.0.0:0"))
            .collect::<std::io::Result<_>>()?;
        for s in &socks {
            s.set_nonblocking(true)?;
        }
        let deadline = Instant::now() + Duration::from_secs(8);
        let (mut n, mut x) = (0u64, 0x9e37_79b9_7f4a_7c15u64);
        while Instant::now() < deadline {
            for s in &socks {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut pkt = x.to_le_bytes().repeat(16);
                // P_CONTROL_V1 (opcode 4) or P_ACK_V1 (opcode 5), key-id 0.
                pkt[0] = if n % 2 == 0 { 0x20 } else { 0x28 };
                let _ = s.send_to(&pkt, target);
                n += 1;
            }
        }
        Ok(n)
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let p = net.start_client(0, Stock, "client0")?;
    net.clients.push(p);
    let t = Instant::now();
    subjects::wait_ready(&mut net.clients[0], Duration::from_secs(5)).with_context(|| {
        format!(
            "a new client during the flood; server log:\n{}",
            tail(&net.server.log(), 20)
        )
    })?;
    let connected_in = t.elapsed();
    let peak = rss_kib(server_pid);
    let sent = attacker
        .join()
        .map_err(|_| anyhow::anyhow!("attacker panicked"))??;
    ensure!(sent > 50_000, "attacker sent only {sent}");
    ensure!(
        peak < baseline + 64 * 1024,
        "server memory grew from {baseline} KiB to {peak} KiB during the flood"
    );
    net.traffic(0, 256 << 10)
        .context("the new client's tunnel works after the flood")?;
    eprintln!(
        "connected in {connected_in:?} during a flood of {sent} packets; RSS {baseline} -> {peak} KiB"
    );
    net.server.signal(Signal::SIGTERM)?;
    net.server.wait_exit(Duration::from_secs(10))?;
    // The exit table: the control stage saw the flood and refused it.
    let log = net.server.log();
    let control_in: u64 = log
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("control")).then(|| w.next()?.parse().ok())?
        })
        .unwrap_or(0);
    ensure!(
        control_in > 10_000,
        "the control stage counted {control_in} packets of the flood:\n{}",
        tail(&log, 14)
    );
    Ok(())
}

/// Descriptors a process holds.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// CPU (% of one core) a process used over `d`.
fn cpu_over(pid: u32, d: Duration) -> f64 {
    let ticks = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1.to_owned();
                let f: Vec<u64> = after
                    .split_whitespace()
                    .map(|v| v.parse().unwrap_or(0))
                    .collect();
                Some(f.get(11)? + f.get(12)?)
            })
            .unwrap_or(0)
    };
    let (a, t) = (ticks(), Instant::now());
    std::thread::sleep(d);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks() - a) as f64 / hz / t.elapsed().as_secs_f64() * 100.0
}

/// A TCP server with the common 1,024-descriptor limit and 1,100 idle connections from one
/// attacker: a stock client still connects within 5 s, the server does not spin (it used to
/// sit at 60-90 % CPU on EMFILE), over-cap connections are closed at once, idle ones at the
/// hand-window, and the descriptors come back when the attack stops.
#[test]
fn tcp_idle_flood_past_the_descriptor_limit() -> Result<()> {
    let mut spec = base(Proto::Tcp, "AES-256-GCM", Wrap::None, false);
    spec.server_extra.push("hand-window 4".into());
    let star = Star::new(2)?;
    let pki = Pki::generate(&star.dir.join("pki"))?;
    let conf = star.dir.join("server.conf");
    std::fs::write(&conf, spec.server_config(&pki, &star.dir)?)?;
    let bin = subjects::tunscope_bin()?;
    let mut cmd = star.server.command("sh");
    cmd.args([
        "-c",
        "ulimit -n 1024 && exec \"$0\" server --config \"$1\"",
        bin.to_str().context("utf-8 path")?,
        conf.to_str().context("utf-8 path")?,
    ]);
    let mut server = Proc::spawn("tunscope server", cmd, &star.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    let pid = server.pid().context("server pid")?;
    let baseline = fd_count(pid);
    let rss0 = rss_kib(pid);
    let mut net = Net {
        star,
        pki,
        server,
        clients: vec![],
        spec,
    };
    let target = SocketAddr::from((SERVER_WAN, 1194));
    let attacker = net.star.clients[1].spawn(move || -> Result<usize> {
        let mut held = vec![];
        for _ in 0..1100 {
            if let Ok(s) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                held.push(s);
            }
        }
        let n = held.len();
        std::thread::sleep(Duration::from_secs(7));
        drop(held);
        Ok(n)
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let busy = cpu_over(pid, Duration::from_secs(2));
    let p = net.start_client(0, Stock, "client0")?;
    net.clients.push(p);
    subjects::wait_ready(&mut net.clients[0], Duration::from_secs(5)).with_context(|| {
        format!(
            "a client during the flood; server log:\n{}",
            tail(&net.server.log(), 20)
        )
    })?;
    let peak = rss_kib(pid);
    let opened = attacker
        .join()
        .map_err(|_| anyhow::anyhow!("attacker panicked"))??;
    ensure!(
        opened >= 1000,
        "the attacker opened only {opened} connections"
    );
    ensure!(
        peak <= rss0 + 64 * 1024,
        "server memory {rss0} -> {peak} KiB with 1,100 hostile connections"
    );
    ensure!(
        busy < 50.0,
        "server at {busy:.0} % CPU while 1,100 idle connections were held"
    );
    std::thread::sleep(Duration::from_secs(1));
    let after = cpu_over(pid, Duration::from_secs(2));
    ensure!(after < 50.0, "server at {after:.0} % CPU after the attack");
    let fds = fd_count(pid);
    ensure!(
        fds <= baseline + 3,
        "server holds {fds} descriptors after the attack, {baseline} before (one client since)"
    );
    net.traffic(0, 256 << 10)
        .context("the client's tunnel works after the flood")?;
    net.server.signal(Signal::SIGTERM)?;
    net.server.wait_exit(Duration::from_secs(10))?;
    let log = net.server.log();
    ensure!(
        log.contains("closed over the connection caps"),
        "no connection was refused by a cap:\n{}",
        tail(&log, 12)
    );
    Ok(())
}

/// TCP attackers that never become clients: 16 connections sending 64 KiB records of
/// garbage as fast as they can, and 16 slowloris connections trickling a record one byte at a
/// time. A stock client connects within 5 s; oversized records are dropped unparsed
/// (`too_big`), memory stays bounded, the trickling connections are closed at the
/// hand-window, and CPU and descriptors come back when the attack stops.
#[test]
fn tcp_record_flood_and_slowloris() -> Result<()> {
    use std::io::Write;
    let mut spec = base(Proto::Tcp, "AES-256-GCM", Wrap::None, false);
    spec.server_extra.push("hand-window 4".into());
    let mut net = start_n(spec, 2, &[])?;
    let pid = net.server.pid().context("server pid")?;
    let (fds0, rss0) = (fd_count(pid), rss_kib(pid));
    let target = SocketAddr::from((SERVER_WAN, 1194));
    let attacker = net.star.clients[1].spawn(move || -> Result<(u64, usize)> {
        let deadline = Instant::now() + Duration::from_secs(7);
        let floods: Vec<std::thread::JoinHandle<u64>> = (0..16)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut sent = 0u64;
                    let mut record = vec![(i as u8) | 0x38; 65_537];
                    record[..2].copy_from_slice(&[0xff, 0xff]);
                    while Instant::now() < deadline {
                        let Ok(mut s) =
                            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1))
                        else {
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        };
                        let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
                        while Instant::now() < deadline && s.write_all(&record).is_ok() {
                            sent += 1;
                        }
                    }
                    sent
                })
            })
            .collect();
        let mut slow: Vec<std::net::TcpStream> = (0..16)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)).ok()
            })
            .collect();
        for s in &mut slow {
            let _ = s.write_all(&[0x00, 0x40]);
        }
        let mut trickled = 0usize;
        while Instant::now() < deadline {
            for s in &mut slow {
                if s.write_all(&[0x38]).is_ok() {
                    trickled += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let records = floods.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        Ok((records, trickled))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let p = net.start_client(0, Stock, "client0")?;
    net.clients.push(p);
    subjects::wait_ready(&mut net.clients[0], Duration::from_secs(5)).with_context(|| {
        format!(
            "a client during the TCP flood; server log:\n{}",
            tail(&net.server.log(), 20)
        )
    })?;
    let peak = rss_kib(pid);
    let (records, trickled) = attacker
        .join()
        .map_err(|_| anyhow::anyhow!("attacker panicked"))??;
    ensure!(
        records > 100,
        "the attacker sent only {records} 64 KiB records"
    );
    ensure!(
        peak < rss0 + 64 * 1024,
        "server memory grew from {rss0} KiB to {peak} KiB"
    );
    std::thread::sleep(Duration::from_secs(1));
    let after = cpu_over(pid, Duration::from_secs(2));
    ensure!(after < 50.0, "server at {after:.0} % CPU after the attack");
    let fds = fd_count(pid);
    ensure!(
        fds <= fds0 + 3,
        "server holds {fds} descriptors after the attack, {fds0} before (one client since)"
    );
    net.traffic(0, 256 << 10)?;
    eprintln!(
        "{records} records of 64 KiB and {trickled} trickled bytes; RSS {rss0} -> {peak} KiB; fds {fds0} -> {fds}"
    );
    net.server.signal(Signal::SIGTERM)?;
    net.server.wait_exit(Duration::from_secs(10))?;
    let log = net.server.log();
    ensure!(
        stage_counter(&log, "socket_rx", Some("too_big")).is_some_and(|(n, _)| n > 0),
        "oversized records were not dropped as too_big:\n{}",
        tail(&log, 14)
    );
    Ok(())
}

/// `user nobody` / `group nogroup` on our server: once set up, every thread runs as nobody
/// with no capability at all; a stock client and ours connect and carry data. (Scripts run
/// from then on — auth, down — run as nobody, as in OpenVPN.)
#[test]
fn our_server_gives_up_root() -> Result<()> {
    let mut spec = base(Proto::Udp, "AES-256-GCM", Wrap::TlsCrypt, false);
    spec.server_extra
        .extend(["user nobody".into(), "group nogroup".into()]);
    let mut net = start(spec, &[Stock, Ours])?;
    net.wait_all()?;
    let pid = net.server.pid().context("server pid")?;
    let ids = tunscope_harness::process::thread_identities(pid)?;
    ensure!(
        ids.iter().all(|&(uid, cap)| uid == 65534 && cap == 0),
        "server threads (uid, CapEff): {ids:?}"
    );
    ensure!(
        net.server.log().contains("privileges dropped"),
        "{}",
        tail(&net.server.log(), 10)
    );
    for i in 0..2 {
        net.traffic(i, 256 << 10)?;
    }
    Ok(())
}

/// 50 clients at once (25 stock, 25 ours): all connect, all ping through the tunnel, all
/// leave; the server ends with no peers and the threads and file descriptors it started with.
#[test]
fn fifty_concurrent_clients() -> Result<()> {
    let n = 50;
    let kinds: Vec<Implementation> = (0..n)
        .map(|i| if i % 2 == 0 { Stock } else { Ours })
        .collect();
    let mut spec = base(Proto::Udp, "AES-256-GCM", Wrap::TlsCrypt, false);
    spec.explicit_exit_notify = Some(1);
    let star = Star::new(n)?;
    let pki = Pki::generate(&star.dir.join("pki"))?;
    let conf = star.dir.join("server.conf");
    std::fs::write(&conf, spec.server_config(&pki, &star.dir)?)?;
    let mut server =
        subjects::start_server(Ours, &star.server, &conf, &star.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    let pid = server.pid().context("server pid")?;
    let before = settled_counts(pid)?;
    let mut net = Net {
        star,
        pki,
        server,
        clients: vec![],
        spec,
    };
    let t0 = Instant::now();
    for (i, k) in kinds.iter().enumerate() {
        let p = net.start_client(i, *k, &format!("client{i}"))?;
        net.clients.push(p);
    }
    net.wait_all()?;
    let connect_time = t0.elapsed();
    let during = proc_counts(pid)?;
    for (i, kind) in kinds.iter().enumerate() {
        let p = traffic::ping(
            &net.star.clients[i],
            &net.server_tun().to_string(),
            2,
            56,
            false,
        )?;
        ensure!(p.received == 2, "client {i} ({kind:?}): {}", p.output);
    }
    for c in net.clients.iter_mut() {
        c.signal(Signal::SIGTERM)?;
    }
    for c in net.clients.iter_mut() {
        c.wait_exit(Duration::from_secs(15))?;
    }
    // Every peer must be gone (explicit exit, or the inactivity timeout at worst).
    net.server
        .wait_for_log_count("gone:", n, Duration::from_secs(30))
        .with_context(|| format!("server log:\n{}", tail(&net.server.log(), 20)))?;
    std::thread::sleep(Duration::from_millis(500));
    let after = proc_counts(pid)?;
    eprintln!(
        "50 clients: connected in {:.1} s; server RSS {} KiB idle, {} KiB with 50 clients ({} KiB per client); threads {}→{}→{}, fds {}→{}→{}",
        connect_time.as_secs_f64(),
        before.rss_kib,
        during.rss_kib,
        during.rss_kib.saturating_sub(before.rss_kib) / n as u64,
        before.threads,
        during.threads,
        after.threads,
        before.fds,
        during.fds,
        after.fds
    );
    ensure!(
        after.threads == before.threads,
        "leaked threads: {} → {}",
        before.threads,
        after.threads
    );
    ensure!(
        after.fds == before.fds,
        "leaked fds: {} → {}",
        before.fds,
        after.fds
    );
    let log = net.server.log();
    ensure!(
        log.matches(" connected").count() >= n,
        "not all peers connected"
    );
    Ok(())
}

struct ProcCounts {
    rss_kib: u64,
    threads: usize,
    fds: usize,
}

/// The process's counts once its thread count holds still: the server logs that it is
/// ready before it starts its data threads, so a count taken at once can miss one (CI saw
/// "leaked threads: 2 → 3" that way).
fn settled_counts(pid: u32) -> Result<ProcCounts> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = proc_counts(pid)?;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = proc_counts(pid)?;
        if now.threads == last.threads || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

fn proc_counts(pid: u32) -> Result<ProcCounts> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcCounts {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:") as usize,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count(),
    })
}

/// A server with two threads opens its tun device with two queues, one send thread each,
/// and writes a client's packets through queue `peer % 2`, so that the kernel hands that
/// client's flows back on the same queue: two clients downloading at once (four flows
/// each) keep both send threads busy and every packet reaches its client in packet-id order
/// (no replay drop).
#[test]
fn a_two_queue_server_sends_to_each_client_from_its_own_queue() -> Result<()> {
    let spec = base(Proto::Udp, "AES-256-GCM", Wrap::None, false);
    let mut net = start_n_with(spec, 2, &[Ours, Ours], &["--threads", "2"])?;
    let pid = net.server.pid().context("server pid")?;
    net.wait_all()?;
    let mut iperf = vec![];
    for i in 0..2 {
        let mut cmd = net.star.server.command("iperf3");
        cmd.args([
            "-s",
            "-1",
            "-B",
            "198.19.0.1",
            "-p",
            &(5201 + i).to_string(),
        ]);
        iperf.push(Proc::spawn(
            "iperf3 -s",
            cmd,
            &net.star.dir.join(format!("iperf3-{i}.log")),
        )?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = thread_pair_ticks(pid, "tx")?;
    let downloads: Vec<std::process::Child> = (0..2)
        .map(|i| {
            net.star.clients[i]
                .command("iperf3")
                .args(["-c", "198.19.0.1", "-R", "-P", "4", "-t", "3"])
                .args(["-p", &(5201 + i).to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    for d in downloads {
        let out = d.wait_with_output()?;
        ensure_success("iperf3", &out)?;
    }
    ensure_both_threads_worked("tx", before, thread_pair_ticks(pid, "tx")?)?;
    for (i, c) in net.clients.iter_mut().enumerate() {
        c.signal(Signal::SIGTERM)?;
        c.wait_exit(Duration::from_secs(10))?;
        let log = c.log();
        let (replays, line) = stage_counter(&log, "decrypt", Some("replay"))
            .with_context(|| format!("client {i}: no decrypt line at exit:\n{}", tail(&log, 30)))?;
        ensure!(replays == 0, "client {i}: packets out of order: {line}");
        let (written, wt) = stage_counter(&log, "write_tun", None)
            .with_context(|| format!("client {i}: no write_tun line:\n{}", tail(&log, 30)))?;
        ensure!(written > 10_000, "client {i}: a 3 s download: {wt}");
    }
    net.server.signal(Signal::SIGTERM)?;
    net.server.wait_exit(Duration::from_secs(10))?;
    let log = net.server.log();
    ensure!(
        !log.contains("multi-queue tun unavailable") && !log.contains("not opened"),
        "{}",
        tail(&log, 20)
    );
    Ok(())
}
