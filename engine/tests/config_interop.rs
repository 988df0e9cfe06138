//! Real-world config features of our client against stock OpenVPN 2.6 as server, in
//! namespaces made for each test: `crl-verify` (a revoked server certificate is refused),
//! `peer-fingerprint` without a CA, failover past a dead first `remote` and a dead first
//! `<connection>`, and a provider-style file (Latin-1, CRLF, `setenv opt`, `comp-lzo`,
//! removed options) that connects.
//!
//! Needs root; `.ci/run` provides it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use tunscope_harness::pki::Pki;
use tunscope_harness::process::{Proc, tail};
use tunscope_harness::subjects::{self, TunnelSpec};
use tunscope_harness::topo::{SERVER_WAN, TwoHosts};
use tunscope_harness::traffic;

/// A stock server and the text of a client config for it (to be edited by each test).
struct Setup {
    hosts: TwoHosts,
    pki: Pki,
    server: Proc,
    spec: TunnelSpec,
    client_conf: String,
}

fn stock_server(spec: TunnelSpec) -> Result<Setup> {
    let hosts = TwoHosts::new()?;
    let pki = Pki::generate(&hosts.dir.join("pki"))?;
    let (cert, key) = pki.client("client1")?;
    let conf = hosts.dir.join("server.conf");
    std::fs::write(&conf, spec.server_config(&pki, &hosts.dir)?)?;
    let mut server = subjects::start_openvpn(&hosts.server, &conf, &hosts.dir.join("server.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15)).context("stock server")?;
    let client_conf = spec.client_config(&pki, &cert, &key, SERVER_WAN, &hosts.dir)?;
    Ok(Setup {
        hosts,
        pki,
        server,
        spec,
        client_conf,
    })
}

impl Setup {
    /// Starts our client with `conf` (written as raw bytes: encodings are part of the test).
    fn client(&self, conf: &[u8]) -> Result<Proc> {
        self.client_env(conf, &[])
    }

    fn client_env(&self, conf: &[u8], env: &[(&str, &str)]) -> Result<Proc> {
        let path = self.hosts.dir.join("client.conf");
        std::fs::write(&path, conf)?;
        subjects::start_tunscope_client_env(
            &self.hosts.client,
            &path,
            &self.hosts.dir.join("client.log"),
            &[],
            env,
        )
    }

    /// Waits for the tunnel and pings through it.
    fn up_and_ping(&self, client: &mut Proc, within: Duration) -> Result<()> {
        subjects::wait_ready(client, within).with_context(|| {
            format!(
                "client log:\n{}\nserver log:\n{}",
                tail(&client.log(), 30),
                tail(&self.server.log(), 20)
            )
        })?;
        let dst = self.spec.server_tun_ip().to_string();
        let p = traffic::ping(&self.hosts.client, &dst, 3, 56, false)?;
        ensure!(p.received == 3, "ping through the tunnel: {}", p.output);
        Ok(())
    }
}

/// The config without its `ca` and `remote` lines.
fn without(conf: &str, names: &[&str]) -> String {
    conf.lines()
        .filter(|l| {
            !names
                .iter()
                .any(|n| l.split_whitespace().next() == Some(*n))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `crl-verify` with a CRL that revokes the server's certificate: refused, with the reason.
/// The same setup with a CRL revoking only another certificate connects.
#[test]
fn crl_verify_refuses_a_revoked_server() -> Result<()> {
    let s = stock_server(TunnelSpec::default())?;
    let (other, _) = s.pki.client("someone-else")?;
    let crl = s.pki.revoke(&[&other])?;
    let mut ok = s.client(format!("{}crl-verify {}\n", s.client_conf, crl.display()).as_bytes())?;
    s.up_and_ping(&mut ok, Duration::from_secs(20))?;
    ok.signal(Signal::SIGTERM)?;
    ok.wait_exit(Duration::from_secs(10))?;

    let crl = s.pki.revoke(&[&other, &s.pki.server_cert])?;
    let mut client =
        s.client(format!("{}crl-verify {}\n", s.client_conf, crl.display()).as_bytes())?;
    client
        .wait_for_log(
            "peer certificate rejected: it is revoked",
            Duration::from_secs(20),
        )
        .context("a revoked server certificate must be refused")?;
    ensure!(
        !client.log().contains(subjects::READY_LINE),
        "tunnel came up with a revoked server certificate"
    );
    Ok(())
}

/// `peer-fingerprint` instead of `ca`: the server's certificate is pinned by its SHA-256;
/// a wrong fingerprint is refused naming the one seen.
#[test]
fn peer_fingerprint_without_ca() -> Result<()> {
    let s = stock_server(TunnelSpec::default())?;
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(&s.pki.server_cert)
        .map_err(|e| anyhow::anyhow!("server cert: {e}"))?;
    let hex = |fp: [u8; 32]| {
        fp.iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let fp = tunscope_proto::tls::fingerprint(&der);
    let base = without(&s.client_conf, &["ca", "verify-x509-name"]);
    let mut client = s.client(
        format!(
            "{base}<peer-fingerprint>\n{}\n</peer-fingerprint>\n",
            hex(fp)
        )
        .as_bytes(),
    )?;
    s.up_and_ping(&mut client, Duration::from_secs(20))?;
    client.signal(Signal::SIGTERM)?;
    client.wait_exit(Duration::from_secs(10))?;

    let mut wrong = fp;
    wrong[0] ^= 1;
    let mut client = s.client(format!("{base}peer-fingerprint {}\n", hex(wrong)).as_bytes())?;
    client
        .wait_for_log("is not listed", Duration::from_secs(20))
        .context("a wrong fingerprint must be refused")?;
    ensure!(!client.log().contains(subjects::READY_LINE));
    Ok(())
}

/// A dead first `remote` (nothing answers: server-poll-timeout) and a dead first
/// `<connection>` (refused port): the client moves on and connects to the live one.
#[test]
fn failover_past_dead_remotes_and_connection_blocks() -> Result<()> {
    let s = stock_server(TunnelSpec::default())?;
    let base = without(&s.client_conf, &["remote"]);
    let port = s.spec.port;
    // 198.18.2.99 is on the server's link but nobody has it: no answer at all.
    let conf = format!(
        "{base}server-poll-timeout 2\nconnect-retry 1\n\
         remote 198.18.2.99 {port}\n\
         <connection>\nremote {SERVER_WAN} {}\n</connection>\n\
         <connection>\n# the live one\nremote {SERVER_WAN} {port} udp\n</connection>\n",
        port + 7
    );
    let t0 = Instant::now();
    let mut client = s.client(conf.as_bytes())?;
    s.up_and_ping(&mut client, Duration::from_secs(30))?;
    let log = client.log();
    ensure!(
        log.contains("198.18.2.99"),
        "the dead first remote was not tried:\n{log}"
    );
    ensure!(
        log.contains(&format!("{SERVER_WAN}:{}", port + 7)),
        "the dead connection block was not tried:\n{log}"
    );
    eprintln!(
        "connected through the third remote after {:?}",
        t0.elapsed()
    );
    Ok(())
}

/// A provider-style file as users have it: Latin-1 comment, CRLF line ends, no final
/// newline, `setenv opt block-outside-dns`, `comp-lzo`, `persist-remote-ip`, `ping-timer-rem`,
/// `key-method 2`, `keysize`, `tls-cipher` with suites rustls lacks next to one it has — the
/// client connects to a stock server with `comp-lzo`, and check-config agrees.
#[test]
fn provider_style_file_connects() -> Result<()> {
    let s = stock_server(TunnelSpec {
        server_extra: vec!["comp-lzo".into(), "push \"comp-lzo\"".into()],
        ..TunnelSpec::default()
    })?;
    let mut text = String::from("# Fichier de configuration: r\u{e9}seau priv\u{e9}\n");
    text.push_str(&s.client_conf);
    text.push_str(
        "setenv opt block-outside-dns\ncomp-lzo\npersist-remote-ip\nping-timer-rem\n\
         key-method 2\nkeysize 256\nauth-nocache\n\
         tls-cipher TLS-DHE-RSA-WITH-AES-256-CBC-SHA:TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256\n\
         mute-replay-warnings\nverb 3",
    );
    // Latin-1 bytes, CRLF, no final newline.
    let bytes: Vec<u8> = text
        .replace('\n', "\r\n")
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect();
    let path = s.hosts.dir.join("provider.ovpn");
    std::fs::write(&path, &bytes)?;
    let check = std::process::Command::new(subjects::tunscope_bin()?)
        .args(["check-config", "--json"])
        .arg(&path)
        .output()?;
    ensure!(
        check.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let mut client = s.client(&bytes)?;
    s.up_and_ping(&mut client, Duration::from_secs(20))?;
    client.signal(Signal::SIGTERM)?;
    let code = client.wait_exit(Duration::from_secs(10))?;
    ensure!(code == Some(0), "exit {code:?}:\n{}", client.log());
    Ok(())
}

/// A client that does not announce TLS-EKM (as OpenVPN 2.5 and older): stock 2.6 derives the
/// data keys with the legacy TLS 1.0 PRF, and so must we — with UDP and with TCP, for the
/// first key and after a renegotiation (new randoms, same session ids).
#[test]
fn legacy_prf_key_derivation_with_stock_server() -> Result<()> {
    for proto in [subjects::Proto::Udp, subjects::Proto::Tcp] {
        let s = stock_server(TunnelSpec {
            proto,
            server_reneg_sec: Some(4),
            ..TunnelSpec::default()
        })?;
        let mut client = s.client_env(s.client_conf.as_bytes(), &[("TUNSCOPE_NO_EKM", "1")])?;
        s.up_and_ping(&mut client, Duration::from_secs(20))?;
        let log = client.log();
        ensure!(
            log.contains("legacy PRF"),
            "the server should have used the legacy PRF:\n{log}"
        );
        // Past a server-initiated renegotiation (reneg-sec 4), the tunnel still carries data.
        client.wait_for_log("new data keys, key-id 1", Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_secs(1));
        let dst = s.spec.server_tun_ip().to_string();
        let p = traffic::ping(&s.hosts.client, &dst, 3, 56, false)?;
        ensure!(
            p.received == 3,
            "{proto:?}: ping after renegotiation: {}\n{}",
            p.output,
            tail(&client.log(), 20)
        );
        client.signal(Signal::SIGTERM)?;
        client.wait_exit(Duration::from_secs(10))?;
    }
    Ok(())
}

/// The non-AEAD data channel of older servers: AES-CBC with an HMAC (`auth`), negotiated
/// through `data-ciphers` with a stock 2.6 server, with TLS-EKM keys and — as against an
/// OpenVPN 2.4/2.5 server — with legacy PRF keys. Bulk data crosses intact both ways.
#[test]
fn cbc_hmac_data_channel_with_stock_server() -> Result<()> {
    for (cipher, auth, no_ekm) in [
        ("AES-256-CBC", "SHA256", false),
        ("AES-128-CBC", "SHA1", true),
        ("AES-256-CBC", "SHA512", true),
    ] {
        let s = stock_server(TunnelSpec {
            server_ciphers: vec![cipher.into()],
            server_extra: vec![format!("auth {auth}")],
            ..TunnelSpec::default()
        })?;
        let conf = format!("{}data-ciphers {cipher}\nauth {auth}\n", s.client_conf);
        let env: &[(&str, &str)] = if no_ekm {
            &[("TUNSCOPE_NO_EKM", "1")]
        } else {
            &[]
        };
        let mut client = s.client_env(conf.as_bytes(), env)?;
        s.up_and_ping(&mut client, Duration::from_secs(20))
            .with_context(|| format!("{cipher} {auth}"))?;
        let dst = s.spec.server_tun_ip();
        let echo =
            traffic::EchoServer::start(&s.hosts.server, std::net::SocketAddr::from((dst, 5001)))?;
        let t = traffic::echo_transfer(&s.hosts.client, echo.addr, 2 << 20, None)
            .with_context(|| format!("{cipher} {auth}: {}", tail(&client.log(), 20)))?;
        eprintln!(
            "{cipher}/{auth}{}: 2 MiB echoed at {:.0} Mbit/s",
            if no_ekm { " (legacy PRF)" } else { "" },
            t.mbit_per_s()
        );
        ensure!(
            s.server.log().contains(cipher),
            "the stock server did not use {cipher}:\n{}",
            tail(&s.server.log(), 20)
        );
        client.signal(Signal::SIGTERM)?;
        client.wait_exit(Duration::from_secs(10))?;
    }
    Ok(())
}

/// `fragment 600` (OpenVPN's own fragmentation) with a stock server: 1,400-byte pings and a
/// transfer with 1,500-byte packets (`mssfix 0`) are cut into fragments by each side and
/// reassembled by the other. Our client's counters show the fragments it reassembled.
#[test]
fn fragment_with_stock_server() -> Result<()> {
    let s = stock_server(TunnelSpec {
        server_extra: vec!["fragment 600".into(), "mssfix 0".into()],
        ..TunnelSpec::default()
    })?;
    let conf = format!("{}fragment 600\nmssfix 0\n", s.client_conf);
    let mut client = s.client(conf.as_bytes())?;
    s.up_and_ping(&mut client, Duration::from_secs(20))?;
    let dst = s.spec.server_tun_ip();
    let p = traffic::ping(&s.hosts.client, &dst.to_string(), 5, 1400, false)?;
    ensure!(p.received == 5, "1400-byte pings: {}", p.output);
    let echo =
        traffic::EchoServer::start(&s.hosts.server, std::net::SocketAddr::from((dst, 5001)))?;
    traffic::echo_transfer(&s.hosts.client, echo.addr, 1 << 20, None)
        .with_context(|| tail(&client.log(), 20))?;
    client.signal(Signal::SIGTERM)?;
    client.wait_exit(Duration::from_secs(10))?;
    let log = client.log();
    let held = tunscope_harness::process::stage_counter(&log, "decrypt", Some("fragment"))
        .map_or(0, |(n, _)| n);
    ensure!(
        held >= 100,
        "only {held} fragments reassembled:\n{}",
        tail(&log, 30)
    );
    ensure!(!log.contains("bad_fragment"), "{}", tail(&log, 30));
    eprintln!("our client reassembled packets from {held} held fragments");
    Ok(())
}

/// Runs `tunscope genkey` or `openvpn --genkey` for tls-crypt-v2 keys in `dir`:
/// (server key, client key).
fn tls_crypt_v2_keys(
    dir: &std::path::Path,
    stock: bool,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (srv, cli) = (dir.join("v2-server.key"), dir.join("v2-client.key"));
    let _ = std::fs::remove_file(&srv);
    let _ = std::fs::remove_file(&cli);
    let ok = |c: &mut std::process::Command| -> Result<()> {
        let out = c.output()?;
        ensure!(
            out.status.success(),
            "{:?}: {}",
            c,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    if stock {
        ok(std::process::Command::new("openvpn")
            .args(["--genkey", "tls-crypt-v2-server"])
            .arg(&srv))?;
        ok(std::process::Command::new("openvpn")
            .arg("--tls-crypt-v2")
            .arg(&srv)
            .args(["--genkey", "tls-crypt-v2-client"])
            .arg(&cli))?;
    } else {
        let bin = subjects::tunscope_bin()?;
        ok(std::process::Command::new(&bin)
            .args(["genkey", "tls-crypt-v2-server"])
            .arg(&srv))?;
        ok(std::process::Command::new(&bin)
            .args(["genkey", "tls-crypt-v2-client"])
            .arg(&cli)
            .arg("--server-key")
            .arg(&srv))?;
    }
    Ok((srv, cli))
}

/// tls-crypt-v2 with a stock 2.6 server, UDP and TCP, with keys from `openvpn --genkey` and
/// from `tunscope genkey` (the stock server must accept our wrapped client keys); a client
/// key wrapped by another server key is refused without an answer.
#[test]
fn tls_crypt_v2_client_with_stock_server() -> Result<()> {
    for (stock_keys, proto) in [
        (true, subjects::Proto::Udp),
        (false, subjects::Proto::Udp),
        (true, subjects::Proto::Tcp),
    ] {
        let hosts_dir = std::env::temp_dir().join(format!("ts-v2-{}", std::process::id()));
        std::fs::create_dir_all(&hosts_dir)?;
        let (srv, cli) = tls_crypt_v2_keys(&hosts_dir, stock_keys)?;
        let s = stock_server(TunnelSpec {
            proto,
            server_extra: vec![format!("tls-crypt-v2 {}", srv.display())],
            ..TunnelSpec::default()
        })?;
        let conf = format!("{}tls-crypt-v2 {}\n", s.client_conf, cli.display());
        let mut client = s.client(conf.as_bytes())?;
        s.up_and_ping(&mut client, Duration::from_secs(20))
            .with_context(|| {
                format!(
                    "keys from {}",
                    if stock_keys { "openvpn" } else { "tunscope" }
                )
            })?;
        client.signal(Signal::SIGTERM)?;
        client.wait_exit(Duration::from_secs(10))?;
        if !stock_keys {
            // A client key of another server: the stock server cannot unwrap it.
            let other = hosts_dir.join("other");
            std::fs::create_dir_all(&other)?;
            let (_, foreign) = tls_crypt_v2_keys(&other, false)?;
            let conf = format!(
                "{}tls-crypt-v2 {}\nhand-window 5\n",
                s.client_conf,
                foreign.display()
            );
            let mut client = s.client(conf.as_bytes())?;
            std::thread::sleep(Duration::from_secs(4));
            ensure!(
                !client.log().contains(subjects::READY_LINE),
                "connected with a foreign tls-crypt-v2 key"
            );
            client.signal(Signal::SIGTERM)?;
            let _ = client.wait_exit(Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&hosts_dir);
    }
    Ok(())
}

/// Starts a proxy daemon in the server's namespace, logging to `name.log`.
fn proxy_daemon(s: &Setup, name: &str, program: &str, args: &[&str]) -> Result<Proc> {
    let mut cmd = s.hosts.server.command(program);
    cmd.args(args);
    let p = Proc::spawn(name, cmd, &s.hosts.dir.join(format!("{name}.log")))?;
    std::thread::sleep(Duration::from_millis(700));
    Ok(p)
}

/// `http-proxy` through tinyproxy (basic authentication from a file) and `socks-proxy`
/// through dante, both from Debian, in the server's namespace: the client reaches the stock
/// server only through them (TCP), the tunnel carries pings; a wrong proxy password is a
/// clear error naming the proxy's answer.
#[test]
fn through_http_and_socks_proxies() -> Result<()> {
    let s = stock_server(TunnelSpec {
        proto: subjects::Proto::Tcp,
        ..TunnelSpec::default()
    })?;
    let dir = &s.hosts.dir;
    let port = s.spec.port;
    // tinyproxy: CONNECT to the OpenVPN port only, user alice.
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "User nobody\nGroup nogroup\nPort 8888\nListen {SERVER_WAN}\nTimeout 60\n\
             Allow 198.18.0.0/15\nConnectPort {port}\nBasicAuth alice s3cret\nMaxClients 10\nLogLevel Info\n"
        ),
    )?;
    let mut tinyproxy = proxy_daemon(
        &s,
        "tinyproxy",
        "tinyproxy",
        &["-d", "-c", conf.to_str().unwrap_or("")],
    )?;
    let creds = dir.join("proxy-auth.txt");
    std::fs::write(&creds, "alice\ns3cret\n")?;
    let conf = format!(
        "{}http-proxy {SERVER_WAN} 8888 {} basic\nhttp-proxy-option AGENT tunscope-test\n",
        s.client_conf,
        creds.display()
    );
    let mut client = s.client(conf.as_bytes())?;
    s.up_and_ping(&mut client, Duration::from_secs(20))
        .with_context(|| format!("tinyproxy log:\n{}", tail(&tinyproxy.log(), 20)))?;
    ensure!(
        client.log().contains("through HTTP proxy"),
        "{}",
        client.log()
    );
    client.signal(Signal::SIGTERM)?;
    client.wait_exit(Duration::from_secs(10))?;
    // A wrong password: named as such, with the proxy's answer.
    std::fs::write(&creds, "alice\nwrong\n")?;
    let mut client = s.client(conf.as_bytes())?;
    client
        .wait_for_log(
            "http-proxy refused our credentials",
            Duration::from_secs(15),
        )
        .context("a refused proxy login should be reported")?;
    client.signal(Signal::SIGTERM)?;
    let _ = client.wait_exit(Duration::from_secs(10));
    tinyproxy.stop(Duration::from_secs(2));

    // dante: SOCKS5 without authentication.
    let conf = dir.join("danted.conf");
    std::fs::write(
        &conf,
        format!(
            "logoutput: stderr\ninternal: {SERVER_WAN} port = 1080\nexternal: {SERVER_WAN}\n\
             socksmethod: none\nclientmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n\
             client pass {{ from: 198.18.0.0/15 to: 0.0.0.0/0 }}\n\
             socks pass {{ from: 198.18.0.0/15 to: 0.0.0.0/0 command: connect }}\n"
        ),
    )?;
    let mut danted = proxy_daemon(
        &s,
        "danted",
        "danted",
        &["-f", conf.to_str().unwrap_or(""), "-N", "1"],
    )?;
    let conf = format!("{}socks-proxy {SERVER_WAN} 1080\n", s.client_conf);
    let mut client = s.client(conf.as_bytes())?;
    s.up_and_ping(&mut client, Duration::from_secs(20))
        .with_context(|| format!("danted log:\n{}", tail(&danted.log(), 20)))?;
    ensure!(
        client.log().contains("through SOCKS5 proxy"),
        "{}",
        client.log()
    );
    client.signal(Signal::SIGTERM)?;
    client.wait_exit(Duration::from_secs(10))?;
    danted.stop(Duration::from_secs(2));
    Ok(())
}

/// OpenVPN options on the command line, as front-ends start openvpn: alone (no file), through
/// a link named `openvpn` (tunscope then takes OpenVPN's command line as is), and on top of a
/// file (`--data-ciphers` overriding it, seen in the cipher the server reports).
#[test]
fn options_on_the_command_line() -> Result<()> {
    let s = stock_server(TunnelSpec::default())?;
    let (cert, key) = s.pki.client("cli-client")?;
    let p = |x: &std::path::Path| x.display().to_string();
    let port = s.spec.port.to_string();
    let ca = p(&s.pki.ca);
    let (cert, key) = (p(&cert), p(&key));
    let server_wan = SERVER_WAN.to_string();
    let only: Vec<&str> = vec![
        "--client",
        "--dev",
        "tun",
        "--proto",
        "udp",
        "--remote",
        &server_wan,
        &port,
        "--nobind",
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--remote-cert-tls",
        "server",
        "--verb",
        "3",
    ];
    let bin = subjects::tunscope_bin()?;
    let mut cmd = s.hosts.client.command(bin.to_str().unwrap_or("tunscope"));
    cmd.arg("client")
        .arg("--state-file")
        .arg(s.hosts.dir.join("cli-only.state"))
        .arg("--")
        .args(&only);
    let log = s.hosts.dir.join("cli-only.log");
    let mut client = Proc::spawn("tunscope client", cmd, &log)?;
    s.up_and_ping(&mut client, Duration::from_secs(20))?;
    client.signal(Signal::SIGTERM)?;
    client.wait_exit(Duration::from_secs(10))?;

    // Linked as `openvpn`: OpenVPN's command line as front-ends pass it (`--config` in place).
    let link = s.hosts.dir.join("openvpn");
    std::os::unix::fs::symlink(&bin, &link)?;
    let path = s.hosts.dir.join("dropin.conf");
    std::fs::write(&path, &s.client_conf)?;
    let mut cmd = s.hosts.client.command(link.to_str().unwrap_or("openvpn"));
    cmd.arg("--config").arg(&path).args(["--verb", "4"]);
    let mut client = Proc::spawn("openvpn (tunscope)", cmd, &s.hosts.dir.join("dropin.log"))?;
    s.up_and_ping(&mut client, Duration::from_secs(20))?;
    client.signal(Signal::SIGTERM)?;
    client.wait_exit(Duration::from_secs(10))?;

    // A file, with one option overridden on the command line.
    let path = s.hosts.dir.join("base.conf");
    std::fs::write(&path, &s.client_conf)?;
    let mut client = subjects::start_tunscope_client(
        &s.hosts.client,
        &path,
        &s.hosts.dir.join("cli-on-top.log"),
        &["--", "--data-ciphers", "CHACHA20-POLY1305"],
    )?;
    s.up_and_ping(&mut client, Duration::from_secs(20))?;
    ensure!(
        client.log().contains("CHACHA20-POLY1305"),
        "the command-line data-ciphers should win:\n{}",
        tail(&client.log(), 20)
    );
    client.signal(Signal::SIGTERM)?;
    client.wait_exit(Duration::from_secs(10))?;
    Ok(())
}

/// Reads management lines until one contains `want` (returning all read), within `secs`.
fn mgmt_until(r: &mut impl std::io::BufRead, want: &str, secs: u64) -> Result<Vec<String>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut seen = vec![];
    while std::time::Instant::now() < deadline {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(0) => break,
            Ok(_) => {
                let l = l.trim_end().to_owned();
                let hit = l.contains(want);
                seen.push(l);
                if hit {
                    return Ok(seen);
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!(
        "management: no '{want}' within {secs} s; got:\n{}",
        seen.join("\n")
    )
}

/// The management interface driven the way NetworkManager-openvpn does: options on the
/// command line (`--management PATH unix --management-query-passwords --auth-retry interact
/// --management-hold`), `hold release`, `state on`, `bytecount 1`, the password query answered
/// (first wrongly: `Verification Failed`, asked again), `>STATE:…CONNECTED`, byte counts that
/// grow with traffic, then `signal SIGTERM` and `>STATE:…EXITING`.
#[test]
fn management_interface_like_network_manager() -> Result<()> {
    use std::io::{BufReader, Write};
    let s = stock_server(TunnelSpec {
        auth_user_pass: true,
        ..TunnelSpec::default()
    })?;
    let base = without(&s.client_conf, &["auth-user-pass"]);
    let path = s.hosts.dir.join("nm.conf");
    std::fs::write(&path, base)?;
    let sock = s.hosts.dir.join("mgmt.sock");
    let sock_s = sock.display().to_string();
    let mut client = subjects::start_tunscope_client(
        &s.hosts.client,
        &path,
        &s.hosts.dir.join("nm-client.log"),
        &[
            "--",
            "--auth-user-pass",
            "--management",
            &sock_s,
            "unix",
            "--management-query-passwords",
            "--auth-retry",
            "interact",
            "--management-hold",
        ],
    )?;
    let mut stream = None;
    for _ in 0..50 {
        if let Ok(c) = std::os::unix::net::UnixStream::connect(&sock) {
            stream = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stream = stream.context("management socket never appeared")?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    mgmt_until(&mut r, ">HOLD:", 5)?;
    w.write_all(b"state on\nbytecount 1\nhold release\n")?;
    mgmt_until(&mut r, ">PASSWORD:Need 'Auth' username/password", 10)?;
    w.write_all(b"username \"Auth\" alice\npassword \"Auth\" wrong\n")?;
    mgmt_until(&mut r, ">PASSWORD:Verification Failed: 'Auth'", 20)?;
    mgmt_until(&mut r, ">PASSWORD:Need 'Auth'", 10)?;
    let (user, pass) = subjects::TEST_USER;
    w.write_all(format!("username \"Auth\" {user}\npassword \"Auth\" \"{pass}\"\n").as_bytes())?;
    let lines = mgmt_until(&mut r, ",CONNECTED,SUCCESS,", 20)?;
    ensure!(
        lines
            .iter()
            .any(|l| l.contains(">STATE:") && l.contains(",WAIT,")),
        "states before CONNECTED: {lines:?}"
    );
    let dst = s.spec.server_tun_ip().to_string();
    let p = traffic::ping(&s.hosts.client, &dst, 5, 1000, false)?;
    ensure!(p.received == 5, "ping: {}", p.output);
    let lines = mgmt_until(&mut r, ">BYTECOUNT:", 5)?;
    let last = lines.last().cloned().unwrap_or_default();
    let counts: Vec<u64> = last
        .trim_start_matches(">BYTECOUNT:")
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect();
    ensure!(
        counts.len() == 2 && counts[0] > 5000 && counts[1] > 5000,
        "byte counts after 5 kB of pings each way: {last}"
    );
    w.write_all(b"signal SIGTERM\n")?;
    mgmt_until(&mut r, "SUCCESS: signal SIGTERM thrown", 5)?;
    mgmt_until(&mut r, ",EXITING,", 10)?;
    let code = client.wait_exit(Duration::from_secs(10))?;
    ensure!(
        code == Some(0),
        "exit {code:?}:\n{}",
        tail(&client.log(), 20)
    );
    Ok(())
}

/// Reads raw management output until it contains `want` (prompts end without a newline).
fn mgmt_raw_until(r: &mut impl std::io::Read, want: &str, secs: u64) -> Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while std::time::Instant::now() < deadline {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&seen).contains(want) {
                    return Ok(String::from_utf8_lossy(&seen).into_owned());
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!(
        "management: no '{want}' within {secs} s; got: {:?}",
        String::from_utf8_lossy(&seen)
    )
}

/// `management IP PORT PW-FILE`: a TCP management client must give the file's password
/// first. Three wrong answers close the connection (a second's pause after each); the right
/// one opens the usual dialogue, which then controls the tunnel.
#[test]
fn management_over_tcp_asks_for_the_password_file() -> Result<()> {
    use std::io::Write;
    let s = stock_server(TunnelSpec::default())?;
    let pw = s.hosts.dir.join("mgmt-pw.txt");
    std::fs::write(&pw, "s3cret\n")?;
    let pw_s = pw.display().to_string();
    let conf = s.hosts.dir.join("mgmt.conf");
    std::fs::write(&conf, &s.client_conf)?;
    let mut client = subjects::start_tunscope_client(
        &s.hosts.client,
        &conf,
        &s.hosts.dir.join("mgmt-tcp.log"),
        &[
            "--",
            "--management",
            "127.0.0.1",
            "7505",
            &pw_s,
            "--management-hold",
        ],
    )?;
    // The listener lives in the client's namespace: connect from there.
    let connect = || -> Result<std::net::TcpStream> {
        for _ in 0..50 {
            let c = s
                .hosts
                .client
                .run(|| Ok(std::net::TcpStream::connect(("127.0.0.1", 7505))?));
            if let Ok(c) = c {
                c.set_read_timeout(Some(Duration::from_millis(300)))?;
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!("management port never opened:\n{}", tail(&client.log(), 20))
    };
    let mut guesser = connect()?;
    for guess in ["wrong", "s3cret ", "S3CRET"] {
        mgmt_raw_until(&mut guesser, "ENTER PASSWORD:", 5)?;
        guesser.write_all(format!("{guess}\n").as_bytes())?;
        mgmt_raw_until(&mut guesser, "ERROR: bad password", 5)?;
    }
    let rest = mgmt_raw_until(&mut guesser, "never", 3).unwrap_or_default();
    ensure!(!rest.contains(">HOLD"), "a guesser got in: {rest:?}");
    let mut c = connect()?;
    mgmt_raw_until(&mut c, "ENTER PASSWORD:", 5)?;
    c.write_all(b"s3cret\n")?;
    mgmt_raw_until(&mut c, ">HOLD:", 5)?;
    c.write_all(b"state on\nhold release\n")?;
    mgmt_raw_until(&mut c, ",CONNECTED,SUCCESS,", 20)?;
    c.write_all(b"signal SIGTERM\n")?;
    let code = client.wait_exit(Duration::from_secs(10))?;
    ensure!(
        code == Some(0),
        "exit {code:?}:\n{}",
        tail(&client.log(), 20)
    );
    Ok(())
}

/// `pkcs12` instead of `ca`/`cert`/`key`: files made by `openssl pkcs12 -export` with
/// OpenSSL 3's default encryption (AES-256-CBC, PBKDF2) and with 3DES/SHA1 as older tools
/// write them, the password from `askpass FILE`; the CA comes out of the file. Encrypted
/// PKCS#8 and traditional encrypted PEM `key`s likewise. A wrong password is a clear error.
#[test]
fn pkcs12_credentials() -> Result<()> {
    let s = stock_server(TunnelSpec::default())?;
    let (cert, key) = s.pki.client("p12-client")?;
    let dir = &s.hosts.dir;
    let pass = dir.join("p12-pass.txt");
    std::fs::write(&pass, "s3cret\n")?;
    let base = without(&s.client_conf, &["ca", "cert", "key"]);
    for (name, extra) in [
        ("modern.p12", vec![]),
        (
            "legacy.p12",
            vec![
                "-certpbe",
                "PBE-SHA1-3DES",
                "-keypbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
            ],
        ),
    ] {
        let p12 = dir.join(name);
        let out = std::process::Command::new("openssl")
            .args(["pkcs12", "-export", "-passout", "pass:s3cret", "-in"])
            .arg(&cert)
            .arg("-inkey")
            .arg(&key)
            .arg("-certfile")
            .arg(&s.pki.ca)
            .arg("-out")
            .arg(&p12)
            .args(&extra)
            .output()?;
        ensure!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!(
            "{base}pkcs12 {}\naskpass {}\n",
            p12.display(),
            pass.display()
        );
        let mut client = s.client(conf.as_bytes())?;
        s.up_and_ping(&mut client, Duration::from_secs(20))
            .with_context(|| name.to_owned())?;
        client.signal(Signal::SIGTERM)?;
        client.wait_exit(Duration::from_secs(10))?;
    }
    // Encrypted PKCS#8 keys (`BEGIN ENCRYPTED PRIVATE KEY`, as easy-rsa 3 writes keys with a
    // passphrase): PBES2 with AES-256-CBC (OpenSSL 3's default) and with 3DES; and
    // traditional encrypted PEM keys (`Proc-Type: 4,ENCRYPTED`, easy-rsa 2 and old bundles)
    // with AES-256-CBC and DES-EDE3-CBC.
    for (name, tool, scheme) in [
        ("enc-aes.key", "pkcs8", vec!["-topk8", "-v2", "aes-256-cbc"]),
        ("enc-3des.key", "pkcs8", vec!["-topk8", "-v2", "des3"]),
        ("trad-aes.key", "ec", vec!["-aes256"]),
        ("trad-3des.key", "ec", vec!["-des3"]),
    ] {
        let enc = dir.join(name);
        let out = std::process::Command::new("openssl")
            .arg(tool)
            .args(["-passout", "pass:s3cret", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&enc)
            .args(&scheme)
            .output()?;
        ensure!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!(
            "{base}ca {}\ncert {}\nkey {}\naskpass {}\n",
            s.pki.ca.display(),
            cert.display(),
            enc.display(),
            pass.display()
        );
        let mut client = s.client(conf.as_bytes())?;
        s.up_and_ping(&mut client, Duration::from_secs(20))
            .with_context(|| name.to_owned())?;
        client.signal(Signal::SIGTERM)?;
        client.wait_exit(Duration::from_secs(10))?;
    }
    std::fs::write(&pass, "wrong\n")?;
    let conf = format!(
        "{base}pkcs12 {}\naskpass {}\n",
        dir.join("modern.p12").display(),
        pass.display()
    );
    let mut client = s.client(conf.as_bytes())?;
    let code = client.wait_exit(Duration::from_secs(10))?;
    let log = client.log();
    ensure!(
        code == Some(1) && log.contains("wrong password"),
        "exit {code:?}:\n{log}"
    );
    Ok(())
}
