//! The impairment element itself, on real frames: two namespaces joined through the `wire`
//! namespace's userspace bridge, UDP datagrams from one to the other. Loss stays within a
//! binomial bound of its probability, every datagram is accounted for (received = sent −
//! lost + duplicated, nothing else dropped), and a seed repeats its decisions exactly.
//!
//! Needs root (namespaces, AF_PACKET); `.ci/run` provides it.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tunscope_harness::impair::{DirectionCounts, Impairment, LinkImpairment};
use tunscope_harness::netns::{self, Netns};

const SENT: u32 = 2000;
const A: &str = "198.18.9.1";
const B: &str = "198.18.9.2";

/// Sender `a` — wire — receiver `b`, with static neighbours (no ARP through the element,
/// so the frames it decides about are exactly the datagrams) and no IPv6.
struct Link {
    a: Netns,
    b: Netns,
    wire: Netns,
}

fn off(ns: &Netns, dev: &str, features: &[&str]) -> Result<()> {
    let mut args = vec!["netns", "exec", ns.name(), "ethtool", "-K", dev];
    for f in features {
        args.extend([*f, "off"]);
    }
    netns::sh("ip", &args).map(|_| ())
}

fn link() -> Result<Link> {
    netns::require_root()?;
    let prefix = netns::run_prefix();
    let a = Netns::create(&prefix, "ia")?;
    let wire = Netns::create(&prefix, "iwire")?;
    let b = Netns::create(&prefix, "ib")?;
    for ns in [&a, &wire, &b] {
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    }
    netns::veth(&a, "eth0", &wire, "near")?;
    netns::veth(&wire, "far", &b, "eth0")?;
    for dev in ["near", "far"] {
        off(&wire, dev, &["tso", "gso", "gro", "tx-udp-segmentation"])?;
        wire.ip(&["link", "set", dev, "promisc", "on"])?;
    }
    // Checksums filled in by the sender, not later by the veth (the element forwards bytes).
    for ns in [&a, &b] {
        off(ns, "eth0", &["tx"])?;
    }
    let mac = |n: u8| format!("02:00:00:00:09:{n:02x}");
    for (ns, me, n, other, m) in [(&a, A, 1, B, 2), (&b, B, 2, A, 1)] {
        ns.ip(&["link", "set", "eth0", "address", &mac(n)])?;
        ns.ip(&["addr", "add", &format!("{me}/24"), "dev", "eth0"])?;
        ns.ip(&[
            "neigh",
            "replace",
            other,
            "lladdr",
            &mac(m),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
    }
    Ok(Link { a, b, wire })
}

/// Sends `SENT` datagrams a → b through an element configured by `spec`; returns how many
/// arrived and what the element says it did toward b.
fn blast(spec: &str) -> Result<(u32, DirectionCounts)> {
    let l = link()?;
    let spec: LinkImpairment = toml::from_str(spec).context("impairment spec")?;
    let element = Impairment::start(&l.wire, &spec)?;
    let to: SocketAddr = format!("{B}:9000").parse()?;
    let receiver = l.b.spawn(move || {
        let s = UdpSocket::bind(to)?;
        s.set_read_timeout(Some(Duration::from_millis(1500)))?;
        let mut buf = [0u8; 2048];
        let mut got = 0u32;
        while s.recv(&mut buf).is_ok() {
            got += 1;
        }
        Ok(got)
    })?;
    std::thread::sleep(Duration::from_millis(200));
    l.a.run(move || {
        let s = UdpSocket::bind(format!("{A}:0"))?;
        let started = Instant::now();
        for i in 0..SENT {
            s.send_to(&i.to_be_bytes(), to)?;
            // Paced well below what the element and the socket buffers take.
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "sending took too long"
        );
        Ok(())
    })?;
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let (report, _frames) = element.finish()?;
    Ok((got, report.to_server))
}

/// `k` events among `n` trials of probability `p` lie within `sigmas` standard deviations.
fn within(k: u64, n: u32, p: f64, sigmas: f64) -> bool {
    let (n, k) = (f64::from(n), k as f64);
    (k - n * p).abs() <= sigmas * (n * p * (1.0 - p)).sqrt()
}

#[test]
fn loss_is_within_its_binomial_bound_and_every_datagram_is_accounted_for() -> Result<()> {
    let (got, c) = blast("seed = 5\nloss = 0.1\n")?;
    eprintln!("loss 0.1: {got} of {SENT} arrived, element: {c:?}");
    ensure!(
        c.frames == u64::from(SENT),
        "the element saw {} frames",
        c.frames
    );
    ensure!(
        u64::from(got) == u64::from(SENT) - c.lost,
        "{got} arrived, {} lost of {SENT}: something else dropped",
        c.lost
    );
    ensure!(
        c.overrun == 0 && c.send_failed == 0 && c.sent == u64::from(got),
        "the element's own account: {} overrun, {} unsent, {} sent for {got} received",
        c.overrun,
        c.send_failed,
        c.sent
    );
    ensure!(
        within(c.lost, SENT, 0.1, 4.0),
        "{} of {SENT} lost at p = 0.1 (expected 200 ± 54)",
        c.lost
    );
    Ok(())
}

#[test]
fn a_seed_repeats_reordering_and_duplication_exactly() -> Result<()> {
    let spec = "seed = 9\ndelay_ms = 1\nreorder = 0.2\nduplicate = 0.1\n";
    let (got1, c1) = blast(spec)?;
    let (got2, c2) = blast(spec)?;
    eprintln!("seed 9: {got1} and {got2} arrived, element: {c1:?}");
    ensure!(
        c1 == c2,
        "the same seed decided differently: {c1:?} vs {c2:?}"
    );
    ensure!(
        u64::from(got1) == u64::from(SENT) + c1.duplicated && got1 == got2,
        "arrived {got1} and {got2}, expected {SENT} + {} duplicates",
        c1.duplicated
    );
    ensure!(within(c1.reordered, SENT, 0.2, 4.0), "{c1:?}");
    ensure!(within(c1.duplicated, SENT, 0.1, 4.0), "{c1:?}");
    let (_, other) = blast("seed = 10\ndelay_ms = 1\nreorder = 0.2\nduplicate = 0.1\n")?;
    ensure!(other != c1, "another seed, other decisions");
    Ok(())
}
