//! The in-process tier: a real client and a real server (their control loops, state
//! machines and the one data path) in this process, over an in-memory network and
//! in-memory tun devices. No root, no namespaces, no kernel state: it runs under a plain
//! `cargo test`. The test plays the kernels on both sides: it writes IP packets into one
//! tun and reads them out of the other.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tunscope_engine::client::Outcome;
use tunscope_engine::datapath::memory::{MemNet, MemPort};
use tunscope_engine::observe::{Observatory, ObserveOptions};
use tunscope_engine::report::EngineReport;
use tunscope_engine::stats::StageReport;
use tunscope_engine::tun::{MemTunHandle, Tun};
use tunscope_harness::pki::Pki;
use tunscope_harness::subjects::{Proto, TunnelSpec};

const SERVER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 1194);
const CLIENT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 40_000);
const SERVER_TUN: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);

/// A server and a client running in threads of this process.
struct Pair {
    net: MemNet,
    term: Arc<AtomicBool>,
    server_obs: Arc<Observatory>,
    client_obs: Arc<Observatory>,
    server_tun: MemTunHandle,
    client_tun: MemTunHandle,
    client_ip: Ipv4Addr,
    server: Option<JoinHandle<Result<()>>>,
    client: Option<JoinHandle<Result<Outcome>>>,
    /// The client's port, shared with its thread so a test can move it (float).
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> std::io::Result<Dir> {
            let p = std::env::temp_dir().join(format!(
                "tunscope-inprocess-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p)?;
            Ok(Dir(p))
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The seed of the engines' core randomness in this run: `TUNSCOPE_SEED` replays a failed
/// run's choices (session ids, key-method randoms, renegotiation jitter, cookie secrets), else
/// a fresh one, printed so a failure shows it.
fn seed() -> u64 {
    let seed = std::env::var("TUNSCOPE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from_le_bytes(tunscope_proto::rng::bytes()));
    eprintln!("in-process seed {seed} (replay: TUNSCOPE_SEED={seed})");
    seed
}

fn observatory(dir: &Path, who: &'static str, capture: bool) -> Result<Arc<Observatory>> {
    let opts = ObserveOptions {
        capture: capture.then(|| dir.join(format!("{who}.pcapng"))),
        capture_sample: 1,
        ..ObserveOptions::default()
    };
    Ok(Arc::new(opts.start(who)?))
}

impl Pair {
    /// Starts both sides over `proto` and waits until the client is connected. `client_port`
    /// receives the client's port when the caller wants to move it later.
    fn start(tag: &str, spec: &TunnelSpec, capture: bool) -> Result<(Pair, Option<MemHandle>)> {
        let dir = tempdir::Dir::new(tag)?;
        let pki = Pki::generate(&dir.0.join("pki"))?;
        let (cert, key) = pki.client("client1")?;
        let sconf = dir.0.join("server.conf");
        std::fs::write(&sconf, spec.server_config(&pki, &dir.0)?)?;
        let cconf = dir.0.join("client.conf");
        let server_ip = match SERVER.ip() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => bail!("IPv4 expected"),
        };
        std::fs::write(
            &cconf,
            spec.client_config(&pki, &cert, &key, server_ip, &dir.0)?,
        )?;
        let scfg = tunscope_engine::server::load_config(&sconf, &[])?;
        let ccfg = tunscope_engine::client::load_config(&cconf, &[])?;
        let net = MemNet::new();
        let (server_port, client_port) = match spec.proto {
            Proto::Udp => (net.datagram(SERVER), net.datagram(CLIENT)),
            Proto::Tcp => (net.listener(SERVER), net.connect(CLIENT, SERVER)),
        };
        let term = Arc::new(AtomicBool::new(false));
        let server_obs = observatory(&dir.0, "server", capture)?;
        let client_obs = observatory(&dir.0, "client", capture)?;
        let (stun, server_tun) = Tun::memory("tun-s", 1500);
        let (ctun, client_tun) = Tun::memory("tun-c", 1500);
        // Each side draws its core randomness from a stream of its own, from the seed.
        let seed = seed();
        let server = {
            let (obs, term) = (Arc::clone(&server_obs), Arc::clone(&term));
            let port = Arc::new(server_port);
            std::thread::Builder::new()
                .name("server".into())
                .spawn(move || {
                    tunscope_proto::rng::seed_thread(seed ^ 0x5e);
                    tunscope_engine::server::run_in_memory(scfg, &obs, &term, stun, port)
                })?
        };
        let handle = MemHandle::default();
        let client = {
            let (obs, term) = (Arc::clone(&client_obs), Arc::clone(&term));
            let h = handle.clone();
            std::thread::Builder::new()
                .name("client".into())
                .spawn(move || {
                    tunscope_proto::rng::seed_thread(seed ^ 0xc1);
                    let port = h.hold(client_port);
                    tunscope_engine::client::run_in_memory(&ccfg, &obs, &term, ctun, port, SERVER)
                })?
        };
        let mut pair = Pair {
            net,
            term,
            server_obs,
            client_obs,
            server_tun,
            client_tun,
            client_ip: Ipv4Addr::UNSPECIFIED,
            server: Some(server),
            client: Some(client),
            _dir: dir,
        };
        pair.client_ip = pair.wait_connected()?;
        Ok((pair, Some(handle)))
    }

    /// Waits until the client reports its tunnel address (it is up) and returns it.
    fn wait_connected(&mut self) -> Result<Ipv4Addr> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let r = self.client_obs.observer.report();
            if let Some(t) = r.peers.first().and_then(|p| p.tunnel.clone()) {
                let ip = t.split('/').next().unwrap_or("").parse()?;
                // The server installs the peer's keys before its PUSH_REPLY leaves, so
                // data can flow now.
                return Ok(ip);
            }
            if self.client.as_ref().is_some_and(JoinHandle::is_finished) {
                let r = self.client.take().map(JoinHandle::join);
                bail!("client ended before connecting: {r:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("client not connected within 20 s")
    }

    /// Both reports once the counters have stopped moving. A data thread publishes a
    /// batch's counts after its tun write, so a test that has just read the last packet
    /// can see that batch uncounted; wait until two snapshots 100 ms apart agree (at most
    /// 5 s: a side that never goes quiet is reported as it is).
    fn reports(&self) -> (EngineReport, EngineReport) {
        let snapshot = || {
            (
                self.client_obs.observer.report(),
                self.server_obs.observer.report(),
            )
        };
        let counts = |r: &EngineReport| -> Vec<(u64, u64, u64, u64)> {
            let st = &r.totals.stages;
            st.iter()
                .map(|s| (s.packets_in, s.packets_out, s.bytes_in, s.bytes_out))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = snapshot();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = snapshot();
            let quiet = counts(&now.0) == counts(&last.0) && counts(&now.1) == counts(&last.1);
            if quiet || Instant::now() >= deadline {
                return now;
            }
            last = now;
        }
    }

    /// Stops both sides and returns how the client's attempt ended, with both observatories
    /// back (their captures can then be finished).
    fn stop_all(mut self) -> Result<(Outcome, Observatory, Observatory, tempdir::Dir)> {
        let outcome = self.stop_threads()?;
        let Pair {
            server_obs,
            client_obs,
            _dir,
            ..
        } = self;
        let take = |o: Arc<Observatory>| {
            Arc::try_unwrap(o).map_err(|_| anyhow::anyhow!("observatory still shared"))
        };
        Ok((outcome, take(client_obs)?, take(server_obs)?, _dir))
    }

    /// Stops both sides and returns how the client's attempt ended.
    fn stop(mut self) -> Result<Outcome> {
        self.stop_threads()
    }

    fn stop_threads(&mut self) -> Result<Outcome> {
        self.term.store(true, Ordering::Relaxed);
        let client = self
            .client
            .take()
            .context("client thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        self.server
            .take()
            .context("server thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        Ok(client)
    }
}

/// Lets a test reach the client's port while the client runs (to move it: float).
#[derive(Clone, Default)]
struct MemHandle(Arc<std::sync::Mutex<Option<Arc<MemPort>>>>);

impl MemHandle {
    fn hold(&self, port: MemPort) -> Arc<MemPort> {
        let p = Arc::new(port);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&p));
        p
    }

    fn rebind(&self, addr: SocketAddr) -> Result<()> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().context("no port")?.rebind(addr);
        Ok(())
    }
}

/// An IPv4/UDP packet (header checksum set; the engine does not check the UDP checksum).
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, seq: u32, len: usize) -> Vec<u8> {
    let total = 20 + 8 + len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = 0;
    for i in (0..20).step_by(2) {
        sum += u32::from(u16::from_be_bytes([p[i], p[i + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&5000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5001u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = (seq as usize + i) as u8;
    }
    p[28..32].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Sends `n` packets into `from` and expects every one, unchanged, out of `to`.
fn transfer(
    from: &MemTunHandle,
    to: &MemTunHandle,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    n: u32,
) -> Result<()> {
    let sent: Vec<Vec<u8>> = (0..n)
        .map(|i| ipv4_udp(src, dst, i, 200 + (i as usize * 37) % 1200))
        .collect();
    let mut got = 0usize;
    for (i, p) in sent.iter().enumerate() {
        from.to_engine
            .send(p.clone())
            .map_err(|_| anyhow::anyhow!("tun closed"))?;
        // Keep the in-flight window small: the memory network drops like a full socket.
        if i % 32 == 31 {
            got += drain(to, &sent[..=i], got, Duration::from_millis(500))?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while got < sent.len() && Instant::now() < deadline {
        got += drain(to, &sent, got, Duration::from_millis(100))?;
    }
    ensure!(got == sent.len(), "{got} of {} packets arrived", sent.len());
    Ok(())
}

/// Reads what arrived until all of `sent` did (or `wait` passed), checking it is the next
/// expected packets; returns how many.
fn drain(to: &MemTunHandle, sent: &[Vec<u8>], already: usize, wait: Duration) -> Result<usize> {
    let mut n = 0;
    let deadline = Instant::now() + wait;
    while already + n < sent.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(p) = to.from_engine.recv_timeout(left) else {
            break;
        };
        ensure!(
            p == sent[already + n],
            "packet {} arrived changed or out of order",
            already + n
        );
        n += 1;
    }
    Ok(n)
}

fn stage<'a>(r: &'a EngineReport, name: &str) -> Result<&'a StageReport> {
    r.totals
        .stage(name)
        .with_context(|| format!("no stage {name}"))
}

/// Conservation inside each engine, and across the (lossless) memory network in packets and
/// bytes, both ways.
fn assert_conserved(c: &EngineReport, s: &EngineReport) -> Result<()> {
    for (who, r) in [("client", c), ("server", s)] {
        let v = r.totals.conservation_violations();
        ensure!(v.is_empty(), "{who}: {v:?}");
    }
    for (from, to) in [(c, s), (s, c)] {
        let (tx, rx) = (stage(from, "socket_tx")?, stage(to, "socket_rx")?);
        ensure!(
            (tx.packets_out, tx.bytes_out) == (rx.packets_in, rx.bytes_in),
            "{} socket_tx {}/{} B vs {} socket_rx {}/{} B",
            from.role,
            tx.packets_out,
            tx.bytes_out,
            to.role,
            rx.packets_in,
            rx.bytes_in
        );
    }
    Ok(())
}

fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

#[test]
fn client_and_server_over_udp_and_tcp_conserve_packets_and_bytes() -> Result<()> {
    for proto in [Proto::Udp, Proto::Tcp] {
        let spec = TunnelSpec {
            proto,
            ..TunnelSpec::default()
        };
        let (pair, _) = Pair::start(&format!("{proto:?}"), &spec, false)?;
        transfer(
            &pair.client_tun,
            &pair.server_tun,
            pair.client_ip,
            SERVER_TUN,
            300,
        )
        .with_context(|| format!("{proto:?} client→server"))?;
        transfer(
            &pair.server_tun,
            &pair.client_tun,
            SERVER_TUN,
            pair.client_ip,
            300,
        )
        .with_context(|| format!("{proto:?} server→client"))?;
        settle();
        let (c, s) = pair.reports();
        ensure!(
            pair.net.dropped() == 0,
            "the memory network dropped packets"
        );
        assert_conserved(&c, &s).with_context(|| format!("{proto:?}"))?;
        ensure!(
            stage(&s, "write_tun")?.packets_out >= 300
                && stage(&c, "write_tun")?.packets_out >= 300,
            "{proto:?}: packets missing at write_tun"
        );
        let outcome = pair.stop()?;
        ensure!(
            outcome == Outcome::Closed,
            "{proto:?}: client ended {outcome:?}"
        );
    }
    Ok(())
}

/// A client whose address changes mid-session (a NAT rebinding) keeps its tunnel: the
/// server sees authenticated data from the new address, moves the peer there, and its
/// replies follow.
#[test]
fn float_to_a_new_address_keeps_the_tunnel() -> Result<()> {
    let (pair, handle) = Pair::start("float", &TunnelSpec::default(), false)?;
    let handle = handle.context("port handle")?;
    transfer(
        &pair.client_tun,
        &pair.server_tun,
        pair.client_ip,
        SERVER_TUN,
        20,
    )?;
    let moved = SocketAddr::from(([198, 18, 0, 77], 50_000));
    handle.rebind(moved)?;
    transfer(
        &pair.client_tun,
        &pair.server_tun,
        pair.client_ip,
        SERVER_TUN,
        20,
    )
    .context("client→server from the new address")?;
    settle();
    transfer(
        &pair.server_tun,
        &pair.client_tun,
        SERVER_TUN,
        pair.client_ip,
        20,
    )
    .context("server→client after the float")?;
    let (c, s) = pair.reports();
    ensure!(
        s.peers.first().map(|p| p.addr.as_str()) == Some("198.18.0.77:50000"),
        "server still has the peer at {:?}",
        s.peers.first().map(|p| &p.addr)
    );
    assert_conserved(&c, &s)?;
    pair.stop()?;
    Ok(())
}

/// Renegotiations while packets flow both ways lose nothing: the new key decrypts before
/// it encrypts, the old one until tran-window ends.
#[test]
fn renegotiation_under_traffic_loses_nothing() -> Result<()> {
    let spec = TunnelSpec {
        client_reneg_sec: Some(2),
        ..TunnelSpec::default()
    };
    let (pair, _) = Pair::start("reneg", &spec, false)?;
    let until = Instant::now() + Duration::from_secs(7);
    let mut rounds = 0;
    while Instant::now() < until {
        transfer(
            &pair.client_tun,
            &pair.server_tun,
            pair.client_ip,
            SERVER_TUN,
            40,
        )
        .with_context(|| format!("round {rounds} up"))?;
        transfer(
            &pair.server_tun,
            &pair.client_tun,
            SERVER_TUN,
            pair.client_ip,
            40,
        )
        .with_context(|| format!("round {rounds} down"))?;
        rounds += 1;
    }
    settle();
    let (c, s) = pair.reports();
    for (who, r) in [("client", &c), ("server", &s)] {
        ensure!(
            r.totals.control.renegotiations >= 2,
            "{who}: {} renegotiations in 7 s with reneg-sec 2",
            r.totals.control.renegotiations
        );
        let d = stage(r, "decrypt")?;
        let bad: u64 = d
            .drops
            .iter()
            .filter(|(k, _)| k.as_str() != "keepalive")
            .map(|(_, v)| v)
            .sum();
        ensure!(bad == 0, "{who}: decrypt drops {:?}", d.drops);
    }
    assert_conserved(&c, &s)?;
    pair.stop()?;
    Ok(())
}

/// `fragment 500` on both sides: packets up to 1,400 bytes are cut into fragments, each
/// sealed on its own, and reassembled intact and in order on the other side, both ways. The
/// counters say so: more data packets on the wire than tunnel packets, the fragments held
/// for reassembly counted as consumed (`fragment`), none malformed, nothing lost.
#[test]
fn fragment_cuts_and_reassembles_both_ways() -> Result<()> {
    let spec = TunnelSpec {
        server_extra: vec!["fragment 500".into(), "mssfix 0".into()],
        client_extra: vec!["fragment 500".into(), "mssfix 0".into()],
        ..TunnelSpec::default()
    };
    let (pair, _) = Pair::start("fragment", &spec, false)?;
    transfer(
        &pair.client_tun,
        &pair.server_tun,
        pair.client_ip,
        SERVER_TUN,
        300,
    )
    .context("client→server")?;
    transfer(
        &pair.server_tun,
        &pair.client_tun,
        SERVER_TUN,
        pair.client_ip,
        300,
    )
    .context("server→client")?;
    settle();
    let (c, s) = pair.reports();
    assert_conserved(&c, &s)?;
    for (who, r) in [("client", &c), ("server", &s)] {
        let (read, sent) = (stage(r, "read_tun")?, stage(r, "socket_tx")?);
        // Sizes 228–1428 at 500 bytes per fragment: well over one data packet each.
        ensure!(
            sent.packets_out > read.packets_out * 3 / 2,
            "{who}: {} tunnel packets became only {} data packets",
            read.packets_out,
            sent.packets_out
        );
        let d = stage(r, "decrypt")?;
        ensure!(
            d.drops.get("fragment").copied().unwrap_or(0) >= 300,
            "{who}: fragments held {:?}",
            d.drops
        );
        ensure!(
            !d.drops.contains_key("bad_fragment"),
            "{who}: {:?}",
            d.drops
        );
        ensure!(
            stage(r, "write_tun")?.packets_out >= 300,
            "{who}: write_tun"
        );
    }
    pair.stop()?;
    Ok(())
}

/// Stage taps on both sides join into complete journeys across the crypto boundary.
#[test]
fn taps_join_into_complete_journeys() -> Result<()> {
    let (pair, _) = Pair::start("taps", &TunnelSpec::default(), true)?;
    transfer(
        &pair.client_tun,
        &pair.server_tun,
        pair.client_ip,
        SERVER_TUN,
        25,
    )?;
    transfer(
        &pair.server_tun,
        &pair.client_tun,
        SERVER_TUN,
        pair.client_ip,
        25,
    )?;
    settle();
    let (_, client_obs, server_obs, dir) = pair.stop_all()?;
    let dir = dir.0.clone();
    for obs in [client_obs, server_obs] {
        if let Some(c) = obs.capture {
            c.finish()?;
        }
    }
    let mut records = tunscope_engine::trace::read_records(&dir.join("client.pcapng"))?;
    records.extend(tunscope_engine::trace::read_records(
        &dir.join("server.pcapng"),
    )?);
    let js = tunscope_engine::trace::journeys(&records);
    let delivered = js
        .iter()
        .filter(|j| j.outcome == tunscope_engine::trace::Outcome::Delivered)
        .count();
    ensure!(
        delivered >= 50,
        "{delivered} delivered journeys of {}: {:?}",
        js.len(),
        js.iter().map(|j| &j.outcome).take(10).collect::<Vec<_>>()
    );
    let full = js
        .iter()
        .find(|j| {
            j.from.as_deref() == Some("client")
                && j.outcome == tunscope_engine::trace::Outcome::Delivered
        })
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
        "{stages:?}"
    );
    Ok(())
}

/// An Ethernet frame from `src` to `dst` of `ethertype` around `payload`.
fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Sends `frames` into `from` and returns what came out of `to` within `wait`.
fn exchange(
    from: &MemTunHandle,
    to: &MemTunHandle,
    frames: &[Vec<u8>],
    wait: Duration,
) -> Result<Vec<Vec<u8>>> {
    for f in frames {
        from.to_engine
            .send(f.clone())
            .map_err(|_| anyhow::anyhow!("tun closed"))?;
    }
    let mut got = vec![];
    let deadline = Instant::now() + wait;
    while got.len() < frames.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match to.from_engine.recv_timeout(left) {
            Ok(f) => got.push(f),
            Err(_) => break,
        }
    }
    Ok(got)
}

/// `dev tap`: frames cross unchanged both ways; the server sends a frame to the client that
/// sent from its destination address, a broadcast to every client, an unknown destination
/// nowhere; a client cannot make the server learn more than its share of addresses; frames
/// are counted by kind.
#[test]
fn tap_frames_are_switched_by_learned_address() -> Result<()> {
    let spec = TunnelSpec {
        tap: true,
        ..TunnelSpec::default()
    };
    let (pair, _) = Pair::start("tap", &spec, false)?;
    let (client_mac, station) = ([2, 0, 0, 0, 0, 0x0a], [2, 0, 0, 0, 0, 0x01]);
    let up: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            let ip = ipv4_udp(pair.client_ip, SERVER_TUN, i, 100 + i as usize * 50);
            frame(station, client_mac, 0x0800, &ip)
        })
        .collect();
    let got = exchange(
        &pair.client_tun,
        &pair.server_tun,
        &up,
        Duration::from_secs(5),
    )?;
    ensure!(
        got == up,
        "{} of 20 frames reached the server intact",
        got.len()
    );
    // The server learned the client's address: frames to it go to the client.
    let down: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            let ip = ipv4_udp(SERVER_TUN, pair.client_ip, i, 900 - i as usize * 30);
            frame(client_mac, station, 0x0800, &ip)
        })
        .collect();
    let got = exchange(
        &pair.server_tun,
        &pair.client_tun,
        &down,
        Duration::from_secs(5),
    )?;
    ensure!(
        got == down,
        "{} of 20 frames reached the client intact",
        got.len()
    );
    // A broadcast (an ARP request) reaches the client; an unknown destination does not.
    let arp = frame([0xff; 6], station, 0x0806, &[0u8; 28]);
    let unknown = frame([2, 0, 0, 0, 0, 0x99], station, 0x0800, &down[0][14..]);
    let got = exchange(
        &pair.server_tun,
        &pair.client_tun,
        &[unknown, arp.clone()],
        Duration::from_millis(1500),
    )?;
    ensure!(
        got == [arp],
        "got {} frames, expected the ARP broadcast only",
        got.len()
    );
    // A runt frame stops at the client's read_tun.
    pair.client_tun
        .to_engine
        .send(vec![0u8; 10])
        .map_err(|_| anyhow::anyhow!("tun closed"))?;
    // A client sending from 300 made-up addresses gets no more than its share learned.
    let flood: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            let b = i.to_be_bytes();
            let ip = ipv4_udp(pair.client_ip, SERVER_TUN, i, 64);
            frame(station, [2, 0x42, b[0], b[1], b[2], b[3]], 0x0800, &ip)
        })
        .collect();
    let mut got = 0;
    for chunk in flood.chunks(30) {
        got += exchange(
            &pair.client_tun,
            &pair.server_tun,
            chunk,
            Duration::from_millis(700),
        )?
        .len();
    }
    // The client's own address already counts against its share of 256.
    ensure!(got == 255, "{got} flood frames delivered, expected 255");
    let (c, s) = pair.reports();
    assert_conserved(&c, &s)?;
    let drops = |r: &EngineReport, st: &str, why: &str| -> Result<u64> {
        Ok(stage(r, st)?.drops.get(why).copied().unwrap_or(0))
    };
    ensure!(
        drops(&s, "write_tun", "mac_limit")? == 45,
        "server: {}",
        s.totals.table()
    );
    ensure!(
        drops(&s, "encrypt", "no_route")? == 1,
        "server: {}",
        s.totals.table()
    );
    ensure!(
        drops(&c, "read_tun", "runt_frame")? == 1,
        "client: {}",
        c.totals.table()
    );
    let ce = c.totals.ethernet.context("client counts frames")?;
    ensure!(
        ce.from_tunnel.broadcast == 1 && ce.from_tunnel.arp == 1 && ce.from_tunnel.unicast == 20,
        "client frames: {ce:?}"
    );
    let se = s.totals.ethernet.context("server counts frames")?;
    ensure!(
        se.to_tunnel.broadcast == 1 && se.to_tunnel.unicast == 21,
        "server frames: {se:?}"
    );
    pair.stop()?;
    Ok(())
}
