//! `cargo xtask bench mtu`: the tunnel MTU swept, ours and stock side by side in one run.
//!
//! For each cipher and each tunnel MTU (`tun-mtu` on both ends; the veth between the hosts
//! raised when the tunnel needs more than 1500), and once more over a constrained transit
//! link (tunnel MTU 1500 over a veth of `--transit` bytes, so outer packets must be
//! fragmented), both stock↔stock and tunscope↔tunscope carry one iperf3 stream. Reported:
//!
//! * throughput and the wire's packets per second (client → server);
//! * bytes of overhead per packet — the outer IP packet minus the inner one, from what was
//!   measured: for tunscope its own probes (sealed bytes per datagram at socket_tx against
//!   plaintext bytes per packet at read_tun, plus the 28 bytes of IPv4 + UDP headers), for
//!   stock the interface counters (veth frames minus the Ethernet header against the tun
//!   device's packets; stock sends neither GSO nor TSO, so counters count packets);
//! * IPv4 fragments the client's kernel created and ICMP "destination unreachable"
//!   messages (e.g. fragmentation needed) seen by the client, from the namespace's SNMP
//!   counters. Both implementations let the kernel fragment (no DF on the outer packets),
//!   so path-MTU discovery never starts on the outer path; its convergence would show here
//!   as ICMP messages and a throughput step, and is reported as not applicable otherwise.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::flag;
use tunscope_harness::netns::Netns;
use tunscope_harness::pki::Pki;
use tunscope_harness::process::Proc;
use tunscope_harness::subjects::{self, Implementation, TunnelSpec};
use tunscope_harness::topo::{SERVER_WAN, TwoHosts};

/// One configuration of the sweep.
#[derive(Clone, Copy, Debug)]
struct Case {
    tun_mtu: u16,
    link_mtu: u16,
}

impl Case {
    fn label(&self) -> String {
        if self.link_mtu < self.tun_mtu + 60 && self.link_mtu <= 1500 && self.tun_mtu >= 1500 {
            format!("tun {} over a {} transit", self.tun_mtu, self.link_mtu)
        } else {
            format!("tun {}", self.tun_mtu)
        }
    }
}

/// What one run measured.
struct MtuSample {
    gbps: f64,
    pps: f64,
    overhead: Option<f64>,
    fragments: u64,
    icmp_unreach: u64,
}

/// Entry point: `bench mtu [--seconds N] [--mtus 1280,1400,1500,9000] [--ciphers A,B]
/// [--transit BYTES]`.
pub fn run(args: &[&str]) -> Result<()> {
    let secs: u64 = flag(args, "--seconds")
        .map_or(Ok(5), str::parse)
        .context("--seconds")?;
    let mtus: Vec<u16> = flag(args, "--mtus")
        .unwrap_or("1280,1400,1500,9000")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("--mtus")?;
    let ciphers: Vec<String> = flag(args, "--ciphers")
        .unwrap_or("AES-256-GCM,CHACHA20-POLY1305")
        .split(',')
        .map(str::to_owned)
        .collect();
    let transit: u16 = flag(args, "--transit")
        .map_or(Ok(1400), str::parse)
        .context("--transit")?;
    crate::bench::build_release()?;
    let mut cases: Vec<Case> = mtus
        .iter()
        .map(|&m| Case {
            tun_mtu: m,
            // A tunnel bigger than Ethernet needs a link that carries it plus overhead.
            link_mtu: if m > 1400 { (m + 100).max(1500) } else { 1500 },
        })
        .collect();
    cases.push(Case {
        tun_mtu: 1500,
        link_mtu: transit,
    });
    println!("\nMTU sweep: iperf3 single stream {secs} s per cell, UDP tunnel, client → server\n");
    println!(
        "| cipher | case | implementation | Gbit/s | packets/s on the wire | overhead B/packet | fragments | ICMP unreachable |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for cipher in &ciphers {
        for case in &cases {
            for (label, which) in [
                ("openvpn ↔ openvpn", Implementation::OpenVpn),
                ("tunscope ↔ tunscope", Implementation::Ours),
            ] {
                let r = measure(which, cipher, *case, secs)
                    .with_context(|| format!("{cipher} {} {label}", case.label()));
                match r {
                    Ok(s) => println!(
                        "| {cipher} | {} | {label} | {:.3} | {:.0} | {} | {} | {} |",
                        case.label(),
                        s.gbps,
                        s.pps,
                        s.overhead
                            .map_or("n/a (fragmented)".into(), |o| format!("{o:.1}")),
                        s.fragments,
                        s.icmp_unreach
                    ),
                    Err(e) => println!(
                        "| {cipher} | {} | {label} | failed: {e:#} | | | | |",
                        case.label()
                    ),
                }
            }
        }
    }
    println!(
        "\nPath-MTU discovery: not applicable — both implementations send outer packets without DF, so the kernel fragments them (see the fragments column) and no ICMP fragmentation-needed is provoked; the ICMP column shows any that arrived anyway."
    );
    Ok(())
}

/// A counter from a namespace's `/proc/net/snmp` (`Ip: FragCreates`, `Icmp: InDestUnreachs`).
fn snmp(ns: &Netns, group: &str, field: &str) -> u64 {
    let Ok(text) = ns.exec("cat", &["/proc/net/snmp"]) else {
        return 0;
    };
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{group}:")))
        .collect();
    let (Some(names), Some(values)) = (rows.first(), rows.get(1)) else {
        return 0;
    };
    let i = names.split_whitespace().position(|n| n == field);
    i.and_then(|i| values.split_whitespace().nth(i))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// TX packets and bytes of an interface, from sysfs inside the namespace.
fn tx_counters(ns: &Netns, dev: &str) -> (u64, u64) {
    let read = |what: &str| {
        ns.exec("cat", &[&format!("/sys/class/net/{dev}/statistics/{what}")])
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (read("tx_packets"), read("tx_bytes"))
}

/// Packets and bytes at a stage of our engine, from its control socket.
fn probe(sock: &std::path::Path, stage: &str, out: bool) -> Option<(u64, u64)> {
    let r = tunscope_engine::control_socket::query(sock).ok()?;
    let s = r.totals.stage(stage)?;
    Some(if out {
        (s.packets_out, s.bytes_out)
    } else {
        (s.packets_in, s.bytes_in)
    })
}

fn measure(which: Implementation, cipher: &str, case: Case, secs: u64) -> Result<MtuSample> {
    let hosts = TwoHosts::new()?;
    for ns in [&hosts.client, &hosts.server] {
        ns.ip(&["link", "set", "eth0", "mtu", &case.link_mtu.to_string()])?;
    }
    let mtu_line = format!("tun-mtu {}", case.tun_mtu);
    let spec = TunnelSpec {
        server_ciphers: vec![cipher.to_owned()],
        client_ciphers: Some(vec![cipher.to_owned()]),
        server_extra: vec![mtu_line.clone()],
        client_extra: vec![mtu_line],
        ..TunnelSpec::default()
    };
    let dir = hosts.dir.clone();
    let pki = Pki::generate(&dir.join("pki"))?;
    let (cert, key) = pki.client("client1")?;
    let sconf = dir.join("server.conf");
    std::fs::write(&sconf, spec.server_config(&pki, &dir)?)?;
    let cconf = dir.join("client.conf");
    std::fs::write(
        &cconf,
        spec.client_config(&pki, &cert, &key, SERVER_WAN, &dir)?,
    )?;
    let csock = dir.join("client.sock");
    let mut server = subjects::start_server(which, &hosts.server, &sconf, &dir.join("s.log"))?;
    subjects::wait_ready(&mut server, Duration::from_secs(15))?;
    let mut client = match which {
        Implementation::Ours => subjects::start_tunscope_client(
            &hosts.client,
            &cconf,
            &dir.join("c.log"),
            &["--control", csock.to_str().context("utf-8 path")?],
        )?,
        Implementation::OpenVpn => {
            subjects::start_client(which, &hosts.client, &cconf, &dir.join("c.log"))?
        }
    };
    subjects::wait_ready(&mut client, Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_millis(1500));
    let target: Ipv4Addr = spec.server_tun_ip();
    let mut iperf_s = hosts.server.command("iperf3");
    iperf_s.args(["-s", "-1", "--forceflush", "-B", &target.to_string()]);
    let mut srv = Proc::spawn("iperf3 server", iperf_s, &dir.join("iperf3.log"))?;
    srv.wait_for_log("Server listening", Duration::from_secs(10))?;
    let snap = || {
        (
            snmp(&hosts.client, "Ip", "FragCreates"),
            snmp(&hosts.client, "Icmp", "InDestUnreachs"),
            tx_counters(&hosts.client, "eth0"),
            tx_counters(&hosts.client, "tun0"),
            probe(&csock, "socket_tx", true),
            probe(&csock, "read_tun", false),
        )
    };
    let before = snap();
    let start = Instant::now();
    let out = hosts
        .client
        .command("iperf3")
        .args(["-c", &target.to_string(), "-t", &secs.to_string(), "-J"])
        .output()?;
    let wall = start.elapsed().as_secs_f64();
    let after = snap();
    drop(client);
    drop(server);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = json.get("error") {
        bail!("iperf3: {e}");
    }
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON: no sum_received")?;
    let fragments = after.0.saturating_sub(before.0);
    let icmp_unreach = after.1.saturating_sub(before.1);
    let d = |a: (u64, u64), b: (u64, u64)| (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1));
    let per = |(p, b): (u64, u64)| (p > 0).then(|| b as f64 / p as f64);
    let (pps, overhead) = match which {
        Implementation::Ours => {
            let (Some(tx0), Some(tx1), Some(rt0), Some(rt1)) =
                (before.4, after.4, before.5, after.5)
            else {
                bail!("no probes from the client's control socket");
            };
            let tx = d(tx0, tx1);
            let inner = d(rt0, rt1);
            let overhead = match (per(tx), per(inner)) {
                (Some(o), Some(i)) => Some(o + 28.0 - i),
                _ => None,
            };
            (tx.0 as f64 / wall, overhead)
        }
        Implementation::OpenVpn => {
            let veth = d(before.2, after.2);
            let tun = d(before.3, after.3);
            // Frames carry a 14-byte Ethernet header; fragments break the 1:1 pairing.
            let overhead = if fragments > 0 {
                None
            } else {
                match (per(veth), per(tun)) {
                    (Some(o), Some(i)) => Some(o - 14.0 - i),
                    _ => None,
                }
            };
            (veth.0 as f64 / wall, overhead)
        }
    };
    Ok(MtuSample {
        gbps: bps / 1e9,
        pps,
        overhead,
        fragments,
        icmp_unreach,
    })
}
