//! Playing one scenario with one client/server pairing:
//!
//! network → captures → services → state "before" → server → client (tunnel up) → state
//! "during" → live checks → client stops → state "after" → server stops → captures merged
//! into one pcapng → every check judged → report.
//!
//! Everything is torn down on the way out, also on error or panic (the namespaces and
//! processes are owned values); `--keep` leaves the namespaces in place.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::capture::{self, NsCapture};
use crate::netstate::NetState;
use crate::network::{Network, addr};
use crate::pki::Pki;
use crate::process::Proc;
use crate::subjects::{self, Implementation, Proto, TunnelSpec, Wrap};

use super::checks::{self, Live, RunData};
use super::report::{CheckReport, Engines, HostView, RunFiles, RunReport, States};
use super::{ClientDns, DevName, Pairing, Scenario, Subject, TransportName, WrapName};

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Who plays client and server.
    pub pairing: Pairing,
    /// Leave the namespaces up at the end (and wait for Enter on a terminal first).
    pub keep: bool,
    /// Output directory (emptied first).
    pub out: PathBuf,
    /// Print progress and verdict lines.
    pub verbose: bool,
}

/// The default output directory of a scenario run.
pub fn default_out(scenario: &str, pairing: &Pairing) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), |p| p.join("target"))
        .join("scenarios")
        .join(scenario)
        .join(pairing.label())
}

struct Progress {
    start: Instant,
    verbose: bool,
}

impl Progress {
    fn line(&self, msg: &str) {
        if self.verbose {
            println!("[{:6.2}s] {msg}", self.start.elapsed().as_secs_f64());
        }
    }
}

/// The tunnel spec both implementations are configured from.
fn tunnel_spec(s: &Scenario) -> TunnelSpec {
    let t = &s.tunnel;
    let mut spec = TunnelSpec {
        proto: match t.proto {
            TransportName::Udp => Proto::Udp,
            TransportName::Tcp => Proto::Tcp,
        },
        wrap: match t.wrap {
            WrapName::None => Wrap::None,
            WrapName::TlsAuth => Wrap::TlsAuth,
            WrapName::TlsCrypt => Wrap::TlsCrypt,
        },
        tunnel_net: addr::TUNNEL_NET,
        explicit_exit_notify: Some(1),
        tap: t.dev == DevName::Tap,
        ..TunnelSpec::default()
    };
    if s.topology.bridge {
        // The server's tap is a port of the corp LAN's bridge; clients ask its DHCP server.
        spec.server_dev = Some(crate::network::BRIDGE_TAP.to_owned());
        spec.server_bridge = Some(String::new());
    }
    if let Some(c) = &t.ciphers {
        spec.server_ciphers = c.clone();
    }
    // `push "…"`: OpenVPN's quoting; the pushed text itself has no double quotes.
    spec.server_extra = t
        .push
        .iter()
        .map(|p| format!("push \"{}\"", p.replace('"', "")))
        .chain(t.server_options.iter().cloned())
        .collect();
    spec.client_extra = t.client_options.clone();
    if s.topology.servers == Some(2) {
        // Failover: the second server as the next `remote` (OpenVPN tries them in file order).
        spec.client_extra
            .push(format!("remote {} {}", addr::SERVER2_WAN, spec.port));
    }
    if s.topology.client_lan {
        // Site-to-site: the kernel route to the LAN behind the client, and (in the client's
        // client-config-dir file, written with the PKI) the iroute naming that client.
        spec.server_extra
            .push(format!("route {} 255.255.255.0", addr::HOME_NET));
    }
    if s.tunnel.outer_ipv6 {
        spec.server_extra.push(
            match t.proto {
                TransportName::Udp => "proto udp6",
                TransportName::Tcp => "proto tcp6-server",
            }
            .to_owned(),
        );
    }
    spec
}

fn log_tail(p: &Path, n: usize) -> String {
    crate::process::tail(&std::fs::read_to_string(p).unwrap_or_default(), n)
}

/// The automatic leak oracle's verdict ([`super::oracle`]): the client's interfaces before
/// the tunnel (but `lo`) are its underlay, those that appeared with it the tunnel's.
fn leak_oracle(s: &Scenario, data: &RunData, from_ns: u64, to_ns: u64) -> CheckReport {
    let devs = |st: &NetState| -> Vec<String> {
        let mut d: Vec<String> = st
            .addresses
            .iter()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|d| d != "lo")
            .collect();
        d.sort();
        d.dedup();
        d
    };
    let before = devs(&data.before);
    let tunnel: Vec<String> = devs(&data.during)
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    let underlay: Vec<String> = before.iter().map(|d| format!("client/{d}")).collect();
    let routes: Vec<String> = data
        .during
        .routes
        .iter()
        .chain(&data.during.routes6)
        .cloned()
        .collect();
    let table = super::oracle::Table::new(&routes, &tunnel);
    let domains = super::oracle::pushed_domains(&s.tunnel.push);
    let f = super::oracle::judge(&data.frames, &underlay, &table, &domains, from_ns, to_ns);
    let summary = format!(
        "{} packets on {} while the tunnel ({}) was up, {} in clear that the tunnel routes{}",
        f.inspected,
        underlay.join(", "),
        tunnel.join(", "),
        f.count,
        if domains.is_empty() {
            String::new()
        } else {
            format!(" or that ask for {}", domains.join(", "))
        }
    );
    let message = match f.leaks.first() {
        Some(first) => format!("{} leaked packet(s); first: {first}", f.count),
        None => summary.clone(),
    };
    // A scenario that shows a leak expects the oracle to find it (as `expected_failure`).
    let (passed, message) = match &s.oracle_expected_failure {
        None => (f.count == 0, message),
        Some(why) if f.count == 0 => (
            false,
            format!("expected to find a leak ({why}), but found none: {message}"),
        ),
        Some(why) => (
            true,
            format!("finds the leak as expected ({why}): {message}"),
        ),
    };
    CheckReport {
        name: "automatic leak oracle: nothing the tunnel routes appears in clear on the underlay"
            .into(),
        kind: "leak-oracle".into(),
        line: 0,
        passed,
        message,
        evidence: std::iter::once(summary).chain(f.leaks).collect(),
        duration_ms: 0,
    }
}

/// An engine's live report (`tunscope stats --json`) when it serves a control socket (ours).
fn engine_report(bin: &Path, sock: &Path) -> Option<serde_json::Value> {
    if !sock.exists() {
        return None;
    }
    let out = std::process::Command::new(bin)
        .arg("stats")
        .arg(sock)
        .arg("--json")
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// How many packet journeys a report keeps: enough for a waterfall, small enough to read.
const JOURNEYS_KEPT: usize = 16;

/// A sample of packet journeys from our engines' stage captures (`tunscope trace --json`):
/// every journey that did not end delivered first (they are what a reader looks for), then
/// delivered ones spread over the run.
fn journey_sample(bin: &Path, taps: &[&Path]) -> Vec<serde_json::Value> {
    let files: Vec<&&Path> = taps.iter().filter(|p| p.exists()).collect();
    if files.is_empty() {
        return vec![];
    }
    let Ok(out) = std::process::Command::new(bin)
        .arg("trace")
        .arg("--json")
        .args(files)
        .output()
    else {
        return vec![];
    };
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let delivered = |j: &serde_json::Value| j["outcome"] == "Delivered";
    let mut kept: Vec<serde_json::Value> = all
        .iter()
        .filter(|j| !delivered(j))
        .take(JOURNEYS_KEPT / 2)
        .cloned()
        .collect();
    let ok: Vec<&serde_json::Value> = all.iter().filter(|j| delivered(j)).collect();
    let want = JOURNEYS_KEPT - kept.len();
    let step = ok.len().div_ceil(want.max(1)).max(1);
    kept.extend(ok.into_iter().step_by(step).take(want).cloned());
    kept
}

/// How a report says a check does not apply to a subject (a pass that is not silent).
pub const NOT_APPLICABLE: &str = "not applicable: ";

/// Why a check cannot apply to this pairing's subjects, if it cannot.
fn not_applicable(c: &checks::Check, p: Pairing) -> Option<&'static str> {
    match (p.client, &c.spec) {
        (Subject::Wireguard, checks::CheckSpec::Counter(_)) => {
            Some("WireGuard (wireguard-go) has no stage probes; its packets are in the capture")
        }
        (Subject::Wireguard, checks::CheckSpec::Reconnect(_)) => {
            Some("WireGuard has no connection to re-establish; it handshakes again on demand")
        }
        (Subject::Ssh, checks::CheckSpec::Counter(_)) => {
            Some("ssh has no stage probes; its packets are in the capture")
        }
        (Subject::Ssh, checks::CheckSpec::Reconnect(_)) => {
            Some("ssh -w does not reconnect by itself (a user's loop around it would)")
        }
        (Subject::Openconnect, checks::CheckSpec::Counter(_)) => {
            Some("openconnect and ocserv have no stage probes; their packets are in the capture")
        }
        (Subject::Openconnect, checks::CheckSpec::Reconnect(_)) => Some(
            "the check reads OpenVPN's \"Initialization Sequence Completed\"; openconnect's own reconnection is not followed yet",
        ),
        (Subject::Ipsec, checks::CheckSpec::Counter(_)) => {
            Some("strongSwan's charon has no stage probes; its packets are in the capture")
        }
        (Subject::Ipsec, checks::CheckSpec::Reconnect(_)) => Some(
            "the check reads OpenVPN's \"Initialization Sequence Completed\"; charon's own re-establishment (DPD, close_action) is not followed yet",
        ),
        _ => None,
    }
}

/// Runs a scenario once with one pairing.
pub fn run(s: &Scenario, opts: &RunOptions) -> Result<RunReport> {
    // Checks name the canonical tunnel device; a subject may call its own otherwise.
    let renamed;
    let s = match opts.pairing.client.tunnel_dev() {
        "tun0" => s,
        dev => {
            renamed = s.on_tunnel_dev(dev);
            &renamed
        }
    };
    let progress = Progress {
        start: Instant::now(),
        verbose: opts.verbose,
    };
    let out = &opts.out;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot empty {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = std::fs::canonicalize(out)?;
    progress.line(&format!(
        "scenario {} [client {}, server {}]: {}",
        s.name,
        opts.pairing.client.name(),
        opts.pairing.server.name(),
        s.description
    ));

    // Declared first, dropped last: processes and services go before the namespaces.
    let mut net = Network::build(&s.topology)?;
    let host_names: Vec<String> = net.hosts().iter().map(|(h, _)| (*h).to_owned()).collect();
    progress.line(&format!(
        "network up: {}-{{{}}}",
        net.prefix,
        host_names.join(",")
    ));
    // Our engines' stage taps keep one data packet in this many (`[capture] stage_sample`).
    let stage_sample = s.capture.stage_sample.unwrap_or(1).to_string();
    let mut captures = vec![];
    for (host, ns) in net.hosts() {
        captures.push(NsCapture::start(
            ns,
            host,
            s.capture.snaplen.map(|n| n as usize),
        )?);
    }
    let impairment = match (&net.wire, &s.topology.impair) {
        (Some(w), Some(spec)) => {
            progress.line(&format!("{} link impaired: {spec:?}", spec.link.describe()));
            Some(crate::impair::Impairment::start(w, spec)?)
        }
        _ => None,
    };
    net.start_services()?;
    progress.line("capturing every interface; DNS (public 198.18.100.53, corp 198.19.10.53) and web servers up");
    if s.topology.bridge {
        net.start_dhcp(&out)?;
        progress.line(&format!(
            "server tap0 bridged with the corp LAN on br0; DHCP server on the corp LAN ({}–{})",
            addr::DHCP_FIRST,
            addr::DHCP_LAST
        ));
    }
    if s.topology.resolved {
        net.start_resolved(&out)?;
        progress.line("systemd-resolved in the client namespace with its own D-Bus; resolv.conf → 127.0.0.53, eth0's DNS → the public resolver");
    }
    if let Some(p) = &s.topology.rogue_lan_prefix {
        net.start_rogue_lan(p, s.topology.rogue_lan_gateway)?;
        progress.line(&format!(
            "hostile LAN: it claims {p}; the client has an address in it on eth0, its hosts are on-link{}",
            if s.topology.rogue_lan_gateway {
                ", its gateway is the prefix's .1"
            } else {
                ""
            }
        ));
    }
    if !s.topology.rogue_dhcp_routes.is_empty() {
        net.start_rogue_dhcp(&s.topology.rogue_dhcp_routes, &out)?;
        progress.line(&format!(
            "hostile LAN: a rogue DHCP server leased the client its address with option 121 routes {} via the router",
            s.topology.rogue_dhcp_routes.join(", ")
        ));
    }
    // `resolvectl status` at the three moments, when the client runs systemd-resolved.
    let resolvectl = |net: &Network| -> Option<String> {
        let r = net.resolved.as_ref()?;
        Some(
            r.resolvectl(&net.client, &["status"])
                .unwrap_or_else(|e| format!("{e:#}")),
        )
    };
    let mut resolvectl_states = vec![];
    resolvectl_states.extend(resolvectl(&net));
    let before = NetState::record(&net.client)?;

    let pki = Pki::generate(&out.join("pki"))?;
    let (ccert, ckey) = pki.client("client")?;
    let mut spec = tunnel_spec(s);
    if s.topology.client_lan {
        let ccd = out.join("ccd");
        std::fs::create_dir_all(&ccd)?;
        std::fs::write(
            ccd.join("client"),
            format!("iroute {} 255.255.255.0\n", addr::HOME_NET),
        )?;
        spec.server_extra
            .push(format!("client-config-dir {}", ccd.display()));
    }
    let server_conf = out.join("server.conf");
    std::fs::write(&server_conf, spec.server_config(&pki, &out)?)?;
    let server_at: std::net::IpAddr = if s.tunnel.outer_ipv6 {
        addr::v6::SERVER_WAN.into()
    } else {
        addr::SERVER_WAN.into()
    };
    let mut client_text = spec.client_config(&pki, &ccert, &ckey, server_at, &out)?;
    if s.topology.spoofed_server_dns.is_some() {
        // The client finds its server by name, as users' configs do (`remote NAME PORT`).
        client_text = client_text.replacen(
            &format!("remote {server_at} "),
            "remote vpn.example.com ",
            1,
        );
    }
    let bin = subjects::tunscope_bin()?;
    let client_impl = opts.pairing.client.implementation();
    // Stock openvpn applies no DNS on Linux by itself; the same backends as ours, as its
    // up/down script hook (a state file per client).
    let stock_dns_hook = |state: &Path| -> String {
        let hook = format!(
            "{} dns --backend {} --state-file {}",
            bin.display(),
            s.tunnel.client_dns.arg(),
            state.display()
        );
        format!("script-security 2\nup \"{hook}\"\ndown \"{hook}\"\n")
    };
    if client_impl == Some(Implementation::OpenVpn) && s.tunnel.client_dns != ClientDns::None {
        client_text.push_str(&stock_dns_hook(&out.join("client-dns.state")));
        if let Some(r) = &net.resolved {
            // The hook finds the namespace's bus as a desktop's finds the system bus.
            client_text.push_str(&format!(
                "setenv DBUS_SYSTEM_BUS_ADDRESS {}\n",
                r.bus_address()
            ));
        }
    }
    if client_impl == Some(Implementation::OpenVpn) && s.tunnel.kill_switch {
        if s.tunnel.client_dns != ClientDns::None {
            anyhow::bail!(
                "stock openvpn takes one up/down script: kill_switch together with client_dns is not supported for an openvpn client"
            );
        }
        // As a user of stock openvpn would: the kill switch as its up/down script.
        let hook = format!("{} kill-switch", bin.display());
        client_text.push_str(&format!(
            "script-security 2\nup \"{hook}\"\ndown \"{hook}\"\n"
        ));
    }
    let client_conf = out.join("client.conf");
    std::fs::write(&client_conf, client_text)?;

    let server_log = out.join("server.log");
    let client_log = out.join("client.log");
    let server_taps = out.join("server-stages.pcapng");
    let client_taps = out.join("client-stages.pcapng");
    // Our engines' live statistics, read once the checks are done (for the HTML report).
    let server_sock = out.join("server.sock");
    let client_sock = out.join("client.sock");
    // Over an impaired link the handshake's lost packets wait for retransmission timers.
    let up_within = Duration::from_secs(if s.topology.impair.is_some() { 60 } else { 20 });
    let mut server: Option<Proc> = None;
    let mut server2: Option<Proc> = None;
    let mut client: Option<Proc> = None;
    // A VPN other than OpenVPN (WireGuard, ssh, OpenConnect, IPsec): both ends in one.
    let mut other: Option<crate::p2p::Tunnel> = None;
    let client_started;
    if opts.pairing.client.implementation().is_none() {
        client_started = Instant::now();
        let dns = (s.tunnel.client_dns != ClientDns::None).then(|| crate::p2p::DnsHook {
            bin: &bin,
            backend: s.tunnel.client_dns.arg(),
            state: out.join("client-dns.state"),
        });
        let push = &s.tunnel.push;
        let ends = crate::p2p::Ends::in_network(&net);
        other = Some(match opts.pairing.client {
            Subject::Ssh => crate::ssh::Ssh::between(
                &ends,
                push,
                dns,
                &out,
                up_within,
                s.tunnel.dev == DevName::Tap,
            )
            .context("the ssh -w tunnel did not come up")?,
            Subject::Openconnect => {
                crate::openconnect::OpenConnect::between(&ends, push, dns, &out, up_within)
                    .context("the OpenConnect tunnel did not come up")?
            }
            Subject::Ipsec => crate::ipsec::Ipsec::between(&ends, push, dns, &out, up_within)
                .context("the IPsec tunnel did not come up")?,
            _ => crate::wireguard::WireGuard::between(&ends, push, dns, &out, up_within)
                .context("the WireGuard tunnel did not come up")?,
        });
    } else {
        let mut srv: Proc = match opts.pairing.server.implementation() {
            Some(Implementation::Ours) => subjects::start_tunscope_server_with(
                &net.server,
                &server_conf,
                &server_log,
                &[
                    "--capture",
                    &server_taps.display().to_string(),
                    "--capture-name",
                    "server",
                    "--control",
                    &server_sock.display().to_string(),
                    "--capture-sample",
                    &stage_sample,
                ],
            )?,
            _ => subjects::start_openvpn(&net.server, &server_conf, &server_log)?,
        };
        subjects::wait_ready(&mut srv, Duration::from_secs(15))
            .context("the VPN server did not start")?;
        if let Some(ns2) = &net.server2 {
            // The failover server: the same implementation and options, its own tunnel
            // network (its clients' addresses say which server they reached).
            let mut spec2 = spec.clone();
            spec2.tunnel_net = addr::TUNNEL2_NET;
            let conf2 = out.join("server2.conf");
            std::fs::write(&conf2, spec2.server_config(&pki, &out)?)?;
            let log2 = out.join("server2.log");
            let mut p = match opts.pairing.server.implementation() {
                Some(imp) => subjects::start_server(imp, ns2, &conf2, &log2)?,
                None => anyhow::bail!("a second server needs an OpenVPN subject"),
            };
            subjects::wait_ready(&mut p, Duration::from_secs(15))
                .context("the second VPN server did not start")?;
            server2 = Some(p);
        }
        client_started = Instant::now();
        let bus_env: Vec<(&str, String)> = net
            .resolved
            .iter()
            .map(|r| ("DBUS_SYSTEM_BUS_ADDRESS", r.bus_address()))
            .collect();
        let bus_env: Vec<(&str, &str)> = bus_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut cl: Proc = match client_impl {
            Some(Implementation::Ours) => subjects::start_tunscope_client_env(
                &net.client,
                &client_conf,
                &client_log,
                &[
                    "--dns-backend",
                    s.tunnel.client_dns.arg(),
                    "--state-file",
                    &out.join("client.state").display().to_string(),
                    "--capture",
                    &client_taps.display().to_string(),
                    "--capture-name",
                    "client",
                    "--control",
                    &client_sock.display().to_string(),
                    "--capture-sample",
                    &stage_sample,
                ]
                .into_iter()
                .chain(s.tunnel.kill_switch.then_some("--kill-switch"))
                .collect::<Vec<&str>>(),
                &bus_env,
            )?,
            _ => subjects::start_openvpn(&net.client, &client_conf, &client_log)?,
        };
        subjects::wait_ready(&mut cl, up_within).with_context(|| {
            format!(
                "the tunnel did not come up; server log:\n{}",
                log_tail(&server_log, 15)
            )
        })?;
        server = Some(srv);
        client = Some(cl);
    }
    let tunnel_up_s = client_started.elapsed().as_secs_f64();
    // Further clients (`[topology] clients`): the same subject and options, a certificate
    // each, up before the checks.
    let mut more_clients: Vec<Proc> = vec![];
    for (host, ns) in &net.more_clients {
        let Some(imp) = client_impl else { break };
        let (cert, key) = pki.client(host)?;
        let mut text = spec.client_config(&pki, &cert, &key, server_at, &out)?;
        let conf = out.join(format!("{host}.conf"));
        let log = out.join(format!("{host}.log"));
        let state = out.join(format!("{host}.state"));
        let mut p = if imp == Implementation::Ours {
            std::fs::write(&conf, text)?;
            subjects::start_tunscope_client_env(
                ns,
                &conf,
                &log,
                &[
                    "--dns-backend",
                    s.tunnel.client_dns.arg(),
                    "--state-file",
                    &state.display().to_string(),
                ],
                &[],
            )?
        } else {
            if s.tunnel.client_dns != ClientDns::None {
                text.push_str(&stock_dns_hook(&state));
            }
            std::fs::write(&conf, text)?;
            subjects::start_openvpn(ns, &conf, &log)?
        };
        subjects::wait_ready(&mut p, up_within)
            .with_context(|| format!("{host}'s tunnel did not come up"))?;
        progress.line(&format!("{host}: tunnel up"));
        more_clients.push(p);
    }
    if let Some(i) = &impairment {
        i.tunnel_up();
    }
    if s.topology.bridge {
        // As a bridged client's user would: ask the LAN's DHCP server through the tunnel.
        let l = crate::dhcp::lease(&net.client, "tap0", &out, false).with_context(|| {
            format!(
                "DHCP over the tunnel failed; DHCP server log:\n{}",
                log_tail(&out.join("dhcp-server.log"), 15)
            )
        })?;
        progress.line(&format!(
            "DHCP over the tunnel: {} netmask {} (name server {}, domain {}) in {:.2} s",
            l.address,
            l.netmask,
            l.dns,
            l.domain,
            l.took.as_secs_f64()
        ));
    }
    let during = NetState::record(&net.client)?;
    resolvectl_states.extend(resolvectl(&net));
    let mut topology = vec![];
    for (host, ns) in net.hosts() {
        topology.push(HostView {
            host: host.to_owned(),
            namespace: ns.name().to_owned(),
            addresses: NetState::record(ns)?.addresses,
        });
    }
    let tunnel_up_ns = checks::now_ns();
    let tun_addr = during
        .addresses
        .iter()
        .find(|l| l.starts_with("tun") || l.starts_with("tap") || l.starts_with("ipsec"))
        .cloned()
        .unwrap_or_else(|| "no tunnel address".into());
    progress.line(&format!("tunnel up in {tunnel_up_s:.2} s: {tun_addr}"));

    // Bounded load first, all of it at once; its rows join the checks'.
    let traffic_reports = if s.traffic.is_empty() {
        vec![]
    } else {
        let r = super::traffic::run_all(&s.traffic, &net, &out)?;
        for t in &r {
            progress.line(&format!(
                "traffic: {}{}",
                if t.passed { "" } else { "FAILED: " },
                t.message
            ));
        }
        r
    };
    let mut lives: Vec<Live> = Vec::with_capacity(s.checks.len());
    for c in &s.checks {
        if c.is_live() && not_applicable(c, opts.pairing).is_none() {
            if matches!(c.spec, checks::CheckSpec::Failover(_))
                && let Some(sv) = server.as_mut()
            {
                // The first server goes away (as on shutdown: it tells its clients to
                // restart); the check then watches where the client comes back.
                sv.stop(Duration::from_secs(5));
                progress.line("failover: the first server stopped");
            }
            let live = checks::act(c, &net, &out)?;
            progress.line(&live.summary);
            lives.push(live);
        } else {
            lives.push(Live::default());
        }
    }

    if opts.keep {
        net.keep();
        let p = &net.prefix;
        let kept: Vec<String> = host_names.iter().map(|h| format!("{p}-{h}")).collect();
        println!(
            "namespaces kept: {}\n  enter one: ip netns exec {p}-client bash\n  remove them: for n in {}; do ip netns del {p}-$n; done (or the next run removes them)",
            kept.join(", "),
            host_names.join(" ")
        );
        // SAFETY: isatty on fd 0 has no preconditions.
        if unsafe { libc::isatty(0) } == 1 {
            println!("the tunnel is up; press Enter to stop it and finish the run");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
    }

    let engines = Engines {
        client: engine_report(&bin, &client_sock),
        server: engine_report(&bin, &server_sock),
    };
    // Before any device goes: the tun queues' drops vanish with their devices.
    let mut hosts = net.hosts();
    hosts.extend(net.wire.iter().map(|ns| ("wire", ns)));
    let kernel_drops = crate::kernel_drops::read_all(&hosts);
    if !kernel_drops.is_empty() {
        progress.line(&format!(
            "dropped in the kernels: {}",
            crate::kernel_drops::describe(&kernel_drops)
        ));
    }
    // Teardown: the client first, so "after" is what it leaves behind.
    let client_stop_ns = checks::now_ns();
    if let Some(c) = client.as_mut() {
        c.stop(Duration::from_secs(5));
    }
    for c in &mut more_clients {
        c.stop(Duration::from_secs(5));
    }
    if let Some(t) = other.as_mut() {
        t.stop_client(&net.client);
    }
    let after = NetState::record(&net.client)?;
    resolvectl_states.extend(resolvectl(&net));
    for sv in server.iter_mut().chain(server2.iter_mut()) {
        sv.stop(Duration::from_secs(5));
    }
    if let Some(t) = other.as_mut() {
        t.stop_server();
    }
    progress.line("client and server stopped");

    let mut frames = vec![];
    let impair_report = match impairment {
        Some(i) => {
            let (r, f) = i.finish()?;
            progress.line(&format!(
                "impairment: to the server {} frames, {} lost, {} in outages, {} reordered, {} duplicated, {} corrupted, {} over the rate, {} too big, {} overrun, {} unsent; to the client {} frames, {} lost, {} in outages, {} reordered, {} duplicated, {} corrupted, {} over the rate, {} too big, {} overrun, {} unsent",
                r.to_server.frames,
                r.to_server.lost,
                r.to_server.outage,
                r.to_server.reordered,
                r.to_server.duplicated,
                r.to_server.corrupted,
                r.to_server.rate_dropped,
                r.to_server.too_big,
                r.to_server.overrun,
                r.to_server.send_failed,
                r.to_client.frames,
                r.to_client.lost,
                r.to_client.outage,
                r.to_client.reordered,
                r.to_client.duplicated,
                r.to_client.corrupted,
                r.to_client.rate_dropped,
                r.to_client.too_big,
                r.to_client.overrun,
                r.to_client.send_failed
            ));
            frames.extend(f);
            Some(r)
        }
        None => None,
    };
    let mut capture_drops = 0u64;
    for c in captures {
        let got = c.finish()?;
        capture_drops += u64::from(got.kernel_drops) + got.over_limit;
        frames.extend(got.frames);
    }
    for taps in [&client_taps, &server_taps] {
        if taps.exists() {
            frames.extend(capture::read_pcapng_frames(taps)?);
        }
    }
    let pcapng = out.join(format!("{}.pcapng", s.name));
    let order: Vec<&str> = host_names.iter().map(String::as_str).collect();
    let summary = capture::write_run_pcapng(&pcapng, &mut frames, &order)?;
    progress.line(&format!(
        "{} packets on {} interfaces and stages → {}",
        summary.packets,
        summary.interfaces.len(),
        pcapng.display()
    ));

    let data = RunData {
        frames,
        dns: net.dns.iter().flat_map(|d| d.queries()).collect(),
        web: net.web.iter().flat_map(|w| w.requests()).collect(),
        before,
        during,
        after,
        client_log: std::fs::read_to_string(&client_log).unwrap_or_default(),
        server_log: std::fs::read_to_string(&server_log).unwrap_or_default(),
    };
    let mut reports = vec![];
    for (c, live) in s.checks.iter().zip(&lives) {
        if let Some(why) = not_applicable(c, opts.pairing) {
            reports.push(CheckReport {
                name: c.name.clone(),
                kind: c.kind().to_owned(),
                line: c.line,
                passed: true,
                message: format!("{NOT_APPLICABLE}{why}"),
                evidence: vec![],
                duration_ms: 0,
            });
            continue;
        }
        let v = checks::judge(c, live, &data);
        reports.push(CheckReport {
            name: c.name.clone(),
            kind: c.kind().to_owned(),
            line: c.line,
            passed: v.passed,
            message: v.message,
            evidence: v.evidence,
            duration_ms: live.t1_ns.saturating_sub(live.t0_ns) / 1_000_000,
        });
    }
    reports.extend(traffic_reports);
    reports.push(leak_oracle(s, &data, tunnel_up_ns, client_stop_ns));
    let journeys = journey_sample(&bin, &[&client_taps, &server_taps]);
    let mut dns = data.dns;
    dns.sort_by_key(|q| q.at_ns);
    let mut web = data.web;
    web.sort_by_key(|w| w.at_ns);
    let report = RunReport {
        scenario: s.name.clone(),
        description: s.description.clone(),
        client: opts.pairing.client.name().to_owned(),
        server: opts.pairing.server.name().to_owned(),
        passed: reports.iter().all(|r| r.passed),
        checks: reports,
        tunnel_up_s,
        wall_s: progress.start.elapsed().as_secs_f64(),
        states: States {
            before: data.before,
            during: data.during,
            after: data.after,
        },
        dns,
        web,
        capture: summary,
        capture_drops,
        kernel_drops,
        impairment: impair_report,
        topology,
        resolvectl: resolvectl_states,
        engines,
        journeys,
        files: RunFiles {
            report: out.join("report.json"),
            html: out.join("report.html"),
            summary: out.join("summary.txt"),
            dir: out.clone(),
            pcapng,
            client_log,
            server_log,
        },
    };
    report.write_json()?;
    let html = crate::html::run::render(&report);
    std::fs::write(&report.files.html, html)
        .with_context(|| format!("cannot write {}", report.files.html.display()))?;
    let cap = tunscope_capture::file::read(&report.files.pcapng)?;
    std::fs::write(
        &report.files.summary,
        super::golden::summary(&report, &cap, tunnel_spec(s).port),
    )
    .with_context(|| format!("cannot write {}", report.files.summary.display()))?;
    Ok(report)
}
