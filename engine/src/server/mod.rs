//! `tunscope server`: runs the protocol core's [`Server`] with a tun device and a UDP socket or
//! a TCP listener.
//!
//! Threads:
//!
//! ```text
//!   rx        UDP socket or TCP poll loop → socket_rx → decrypt → write_tun / client-to-client
//!   tx        read_tun → route by destination → encrypt → socket_tx
//!             (both are [`crate::datapath`], shared with the client)
//!   control   Server state machine: control packets, auth results, timers, signals,
//!             publishing the peer table to the data threads
//!   auth-N    one short-lived thread per verification (script, ccd file)
//! ```

pub mod auth;
pub mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tunscope_proto::options::client::Mssfix;
use tunscope_proto::options::common::DevType;
use tunscope_proto::options::server::{ServerConfig, ServerTransport};
use tunscope_proto::server::{PeerAddr, PeerId, Server, ServerEvent, ServerSetup};
use tunscope_proto::tls::{self, Identity};

use crate::datapath::{
    self, ControlInput, ControlQueue, ControlSender, DataPeer, PeerRuntime, PeerTable, Shared,
    Transport, count_control, send_from_control,
};

/// Control inputs handled per round of the control loop before its timers run.
const INPUTS_PER_ROUND: usize = 256;
use crate::netlink;
use crate::report::{Observer, PeerReport};
use crate::setup::{load_wrap, read_source};
use crate::tun::{Tun, TunAddresses};

/// Command-line options of `tunscope server`.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The OpenVPN-style server config (empty: options only).
    pub config: PathBuf,
    /// OpenVPN options from the command line, applied on top of the file.
    pub options: Vec<String>,
    /// Disable tun offload.
    pub no_offload: bool,
    /// UDP receive threads (0 = one per core).
    pub threads: usize,
    /// Observatory options.
    pub observe: crate::observe::ObserveOptions,
}

/// Loads and checks a server config.
pub fn load_config(path: &Path, options: &[String]) -> Result<ServerConfig> {
    let file = (!path.as_os_str().is_empty()).then_some(path);
    let cfg = ServerConfig::from_sources(&crate::setup::config_sources(file, options)?)?;
    for w in &cfg.warnings {
        tracing::warn!("{}:{}: {}", path.display(), w.line, w.message);
    }
    Ok(cfg)
}

fn setup(cfg: ServerConfig) -> Result<ServerSetup> {
    let (ca, identity) = match (&cfg.pkcs12, &cfg.ca, &cfg.cert, &cfg.key) {
        (Some(p12), ca_src, _, _) => {
            let (identity, p12_cas) = crate::setup::load_pkcs12(p12, cfg.askpass.as_ref())?;
            let ca = match ca_src {
                Some(src) => crate::setup::load_ca(Some(src))?,
                None => p12_cas,
            };
            (ca, identity)
        }
        (None, Some(ca_src), Some(cert), Some(key)) => (
            crate::setup::load_ca(Some(ca_src))?,
            Identity {
                chain: tls::certs_from_pem(
                    &format!("option 'cert' ({})", cert.describe()),
                    &read_source(cert, "cert")?,
                )?,
                key: crate::setup::load_key(key, cfg.askpass.as_ref())?,
            },
        ),
        _ => bail!("the server needs 'ca', 'cert' and 'key' (or 'pkcs12') to start"),
    };
    let check =
        crate::setup::peer_check(cfg.remote_cert_tls, cfg.verify_x509_name.clone(), &cfg.tls)?;
    let negotiation =
        tls::Negotiation::from_options(cfg.tls_version_min, cfg.tls_version_max, &cfg.tls);
    let tls = tls::server_config(&ca, identity, cfg.verify_client_cert, check, &negotiation)
        .context("TLS setup (does the key match the certificate?)")?;
    let wrap = load_wrap(&cfg.wrap, cfg.auth_digest, true)?;
    Ok(ServerSetup {
        tls,
        wrap,
        ipv6_link: cfg.ipv6_listen,
        config: cfg,
    })
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run(opts: &ServerOptions) -> Result<()> {
    let cfg = load_config(&opts.config, &opts.options)?;
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&term))
            .context("installing signal handlers")?;
    }
    let setup = Arc::new(setup(cfg)?);
    let cfg = &setup.config;
    // Resolved now, so a typo fails before anything is set up.
    let become_user = crate::privileges::lookup(cfg.user.as_deref(), cfg.group.as_deref())
        .context("option 'user'/'group'")?;
    let mut server = Server::new(Arc::clone(&setup), Instant::now(), unix_now());
    let (fixed4, fixed6) = auth::ccd_reservations(&setup.config);
    server.reserve_fixed(&fixed4, &fixed6);

    // The tun device with the server's own tunnel addresses, and kernel routes into it.
    let (ip, mask) = server.tunnel_address();
    let prefix = u32::from(mask).leading_ones() as u8;
    let tap = cfg.dev_type == DevType::Tap;
    let threads = datapath::threads_or_cores(opts.threads);
    // A UDP server sends from as many threads as it receives with: one per queue of a
    // multi-queue tun (the kernel spreads flows over the queues).
    let queues = if matches!(cfg.transport, ServerTransport::Udp) && !tap {
        threads
    } else {
        1
    };
    let tun = Tun::create_queues(Some(&cfg.dev), cfg.tun_mtu, !opts.no_offload, tap, queues)
        .context("cannot create tun device")?;
    tun.set_nonblocking()?;
    // server-bridge: the device is a port of the LAN's bridge, which holds the address.
    let addrs = TunAddresses {
        ipv4: cfg.ifconfig_local.then_some((ip, prefix, None)),
        ipv6: server.tunnel_address6(),
    };
    tun.configure(&addrs, cfg.tun_mtu)
        .with_context(|| format!("cannot configure {}", tun.name()))?;
    let oif = netlink::ifindex(tun.name())?;
    for r in &cfg.routes {
        netlink::add_route(&netlink::Route {
            dst: IpAddr::V4(r.network),
            prefix: r.prefix,
            gateway: None,
            oif: Some(oif),
            metric: None,
        })
        .or_else(|e| {
            if e.raw_os_error() == Some(libc::EEXIST) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .with_context(|| {
            format!(
                "cannot add route {}/{} via {}",
                r.network,
                r.prefix,
                tun.name()
            )
        })?;
    }

    // OpenVPN's server scripts: `up` with the device configured, `route-up` with its routes.
    let dev = tun.name().to_owned();
    let script_env = |script_type: &str| -> Vec<(String, String)> {
        let mut env = vec![
            ("script_type".to_owned(), script_type.to_owned()),
            ("dev".to_owned(), dev.clone()),
            ("dev_type".to_owned(), cfg.dev_type.name().to_owned()),
            ("tun_mtu".to_owned(), cfg.tun_mtu.to_string()),
            ("ifconfig_local".to_owned(), ip.to_string()),
            ("ifconfig_netmask".to_owned(), mask.to_string()),
            ("config".to_owned(), opts.config.display().to_string()),
            ("script_context".to_owned(), "init".to_owned()),
        ];
        env.extend(cfg.setenv.iter().cloned());
        env
    };
    if let Some(cmd) = &cfg.up
        && !crate::netconfig::run_script(cmd, &script_env("up"), "up")
    {
        bail!("the up script failed");
    }
    if let Some(cmd) = &cfg.route_up {
        crate::netconfig::run_script(cmd, &script_env("route-up"), "route-up");
    }
    let local = match &cfg.local {
        Some(host) => Some(crate::setup::resolve_local(host, cfg.ipv6_listen)?),
        None => None,
    };
    let listen: SocketAddr = match (local, cfg.ipv6_listen) {
        (Some(a), _) => SocketAddr::new(a, cfg.port),
        (None, false) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), cfg.port),
        (None, true) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), cfg.port),
    };
    let transport = match cfg.transport {
        ServerTransport::Udp => {
            let n = threads;
            let mut sockets = Vec::with_capacity(n);
            for _ in 0..n {
                sockets.push(
                    crate::link::UdpEndpoint::bind_shared(listen, n > 1)
                        .with_context(|| format!("cannot bind UDP {listen}"))?,
                );
            }
            Transport::Udp(sockets)
        }
        ServerTransport::Tcp => Transport::Tcp(
            tcp::TcpConns::listen(
                listen,
                tcp::TcpLimits::for_server(cfg.max_clients, cfg.hand_window),
            )
            .with_context(|| format!("cannot listen on TCP {listen}"))?,
        ),
    };
    let crate::observe::Observatory {
        stats,
        observer,
        capture,
        endpoints,
    } = crate::observe::ObserveOptions {
        ethernet: tap,
        ..opts.observe.clone()
    }
    .start("server")?;
    let (ctl_tx, ctl_rx) = datapath::control_channel();
    let shared = Shared::new(
        transport,
        ctl_tx,
        Arc::clone(&stats),
        capture.as_ref().map(|c| Arc::clone(&c.tap)),
        cfg.replay_window
            .unwrap_or(tunscope_proto::consts::REPLAY_WINDOW_DEFAULT),
        Some(tun),
    );
    tracing::info!(
        "server {dev}: listening on {listen} ({:?}), tunnel {ip}/{prefix}{}, ciphers {}",
        cfg.transport,
        server
            .tunnel_address6()
            .map_or(String::new(), |(a, b)| format!(" {a}/{b}")),
        cfg.data_ciphers
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(":")
    );
    if let Some(ep) = shared.transport.udp().first() {
        observer.set_socket(ep.socket().try_clone().ok().map(std::os::fd::OwnedFd::from));
    }
    // Everything privileged is done (tun, routes, sockets, capture, scripts): as OpenVPN,
    // become `user`/`group`, here with no capability left in any thread. Scripts run from
    // now on (auth, down) run as that user.
    if let Some(t) = &become_user {
        crate::privileges::drop_all(t).with_context(|| format!("cannot become {}", t.name))?;
        tracing::info!(
            "privileges dropped: now uid {} gid {} ({})",
            t.uid,
            t.gid,
            t.name
        );
    }
    tracing::info!("Initialization Sequence Completed");
    serve(&mut server, &shared, &ctl_rx, &term, &dev, &observer)?;
    if let Transport::Tcp(c) = &shared.transport {
        let (refused, expired) = c.closed_by_limits();
        if refused + expired > 0 {
            tracing::info!(
                "TCP: {refused} connection(s) closed over the connection caps, {expired} for no peer within hand-window"
            );
        }
    }
    for r in &cfg.routes {
        let _ = netlink::del_route(&netlink::Route {
            dst: IpAddr::V4(r.network),
            prefix: r.prefix,
            gateway: None,
            oif: Some(oif),
            metric: None,
        });
    }
    if let Some(cmd) = &cfg.down {
        crate::netconfig::run_script(cmd, &script_env("down"), "down");
    }
    drop(endpoints);
    drop(shared);
    if let Some(c) = capture {
        c.finish()?;
    }
    tracing::info!("exiting\n{}", stats.table());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn control_loop(
    server: &mut Server,
    shared: &Shared,
    inputs: &ControlQueue,
    ctl_tx: &ControlSender,
    term: &AtomicBool,
    dev: &str,
    observer: &Observer,
    mss: u16,
) -> Result<()> {
    let mut runtimes: HashMap<PeerId, Arc<PeerRuntime>> = HashMap::new();
    let mut published = 0u64;
    let mut buf = Vec::with_capacity(2048);
    let mut shutdown_at: Option<Instant> = None;
    let setup_cfg = Arc::new(server_config_for_auth(server));
    loop {
        let now = Instant::now();
        if term.load(Ordering::Relaxed) && shutdown_at.is_none() {
            tracing::info!("signal received, shutting down");
            server.shutdown(now);
            // Give RESTART notifications a moment to be sent and acknowledged.
            shutdown_at = Some(
                now + Duration::from_millis(if server.counts().connected > 0 {
                    1000
                } else {
                    0
                }),
            );
        }
        // Done when the grace period is over, or earlier once every peer is gone (all
        // acknowledged the RESTART or said goodbye themselves).
        if shutdown_at.is_some_and(|t| now >= t || server.counts().connected == 0) {
            return Ok(());
        }
        // Activity from the data path feeds keepalive and timeouts.
        for (id, rt) in &runtimes {
            server.set_peer_activity(
                *id,
                shared.instant(&rt.last_rx_ns),
                shared.instant(&rt.last_tx_ns),
            );
        }
        let wait = datapath::control_wait(server.poll_timeout(), now);
        match inputs.recv_timeout(wait) {
            Ok(input) => handle_input(server, shared, input),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        // More of what is queued, but not so much that a flood starves the timers (the
        // queue itself is bounded: what does not fit is dropped at socket_rx).
        for _ in 0..INPUTS_PER_ROUND {
            let Some(input) = inputs.try_recv() else {
                break;
            };
            handle_input(server, shared, input);
        }
        let now = Instant::now();
        server.handle_timeout(now);
        // Keys reach the data path before the packets that let the peer use them (a
        // PUSH_REPLY, our half of a renegotiation) leave.
        publish_table(server, shared, &mut runtimes, &mut published, observer, mss);
        transmit(server, shared, &mut buf, now);
        while let Some(ev) = server.poll_event() {
            handle_event(server, shared, ev, &mut runtimes, ctl_tx, &setup_cfg, dev);
        }
        publish_table(server, shared, &mut runtimes, &mut published, observer, mss);
    }
}

/// Publishes the peer table to the data threads (and the peers to reports) if the state
/// machine's generation moved since `published`.
fn publish_table(
    server: &Server,
    shared: &Shared,
    runtimes: &mut HashMap<PeerId, Arc<PeerRuntime>>,
    published: &mut u64,
    observer: &Observer,
    mss: u16,
) {
    if server.generation() == *published {
        return;
    }
    *published = server.generation();
    let table = build_table(server, runtimes, mss, shared.replay_window);
    observer.set_peers(
        table
            .peers
            .values()
            .map(|dp| {
                (
                    PeerReport {
                        id: dp.view.id,
                        name: dp.view.common_name.clone(),
                        addr: shared.transport.describe(dp.view.addr),
                        tunnel: dp.view.ipv4.map(|a| a.to_string()),
                        cipher: dp
                            .view
                            .plane
                            .send
                            .as_ref()
                            .map(|k| k.cipher().name().to_owned()),
                        stats: None,
                    },
                    Some(Arc::clone(&dp.rt) as Arc<dyn crate::report::ReportSource>),
                )
            })
            .collect(),
    );
    shared.publish(table);
}

/// MSS to clamp to, for the largest overhead of the ciphers clients may negotiate.
fn clamp_mss(cfg: &ServerConfig) -> u16 {
    let overhead = cfg
        .data_ciphers
        .iter()
        .map(|c| tunscope_proto::data::overhead_with(*c, cfg.auth_digest, true, cfg.framing))
        .max()
        .unwrap_or(0) as u16
        + match cfg.transport {
            ServerTransport::Tcp => 2,
            ServerTransport::Udp if cfg.fragment.is_some() => {
                tunscope_proto::fragment::HEADER_LEN as u16
            }
            ServerTransport::Udp => 0,
        }
        // A tap frame carries its Ethernet header inside the tunnel.
        + if cfg.dev_type == DevType::Tap {
            crate::datapath::ethernet::HEADER as u16
        } else {
            0
        };
    let outer = match (cfg.transport, cfg.ipv6_listen) {
        (ServerTransport::Udp, false) => 28,
        (ServerTransport::Udp, true) => 48,
        (ServerTransport::Tcp, false) => 40,
        (ServerTransport::Tcp, true) => 60,
    };
    cfg.mssfix
        .unwrap_or(Mssfix::DEFAULT)
        .mss_v4(outer, overhead)
        .unwrap_or(0)
}

/// Runs a server on a prepared data path until `term`: the rx and tx threads, and the
/// control loop on this thread. `shared.control`'s receiving end is `inputs`.
pub fn serve(
    server: &mut Server,
    shared: &Shared,
    inputs: &ControlQueue,
    term: &AtomicBool,
    dev: &str,
    observer: &Observer,
) -> Result<()> {
    let mss = clamp_mss(server.config());
    let ctl_tx = shared.control.clone();
    std::thread::scope(|s| -> Result<()> {
        // One receive thread per socket of the transport (several UDP sockets with
        // SO_REUSEPORT), one send thread per queue of the tun device.
        let mut rx = vec![];
        for worker in 0..shared.transport.receivers() {
            rx.push(
                std::thread::Builder::new()
                    .name(format!("rx{worker}"))
                    .spawn_scoped(s, move || datapath::rx_loop(shared, worker))?,
            );
        }
        let mut tx = vec![];
        let queues = shared.tun.get().map_or(1, |t| t.queues());
        for queue in 0..queues {
            tx.push(
                std::thread::Builder::new()
                    .name(format!("tx{queue}"))
                    .spawn_scoped(s, move || datapath::tx_loop(shared, queue))?,
            );
        }
        let r = control_loop(server, shared, inputs, &ctl_tx, term, dev, observer, mss);
        shared.stop();
        for t in rx.into_iter().chain(tx) {
            let _ = t.join();
        }
        r
    })
}

/// The in-process tier: a server on an in-memory port and tun device (no kernel routes, no
/// scripts, no root), until `term`. Counters and taps go to `obs`.
pub fn run_in_memory(
    cfg: ServerConfig,
    obs: &crate::observe::Observatory,
    term: &AtomicBool,
    tun: Tun,
    port: Arc<datapath::memory::MemPort>,
) -> Result<()> {
    let setup = Arc::new(setup(cfg)?);
    let mut server = Server::new(Arc::clone(&setup), Instant::now(), unix_now());
    let (fixed4, fixed6) = auth::ccd_reservations(&setup.config);
    server.reserve_fixed(&fixed4, &fixed6);
    let (ctl_tx, ctl_rx) = datapath::control_channel();
    let dev = tun.name().to_owned();
    let shared = Shared::new(
        Transport::Memory(port),
        ctl_tx,
        Arc::clone(&obs.stats),
        obs.capture.as_ref().map(|c| Arc::clone(&c.tap)),
        setup
            .config
            .replay_window
            .unwrap_or(tunscope_proto::consts::REPLAY_WINDOW_DEFAULT),
        Some(tun),
    );
    serve(&mut server, &shared, &ctl_rx, term, &dev, &obs.observer)
}

fn server_config_for_auth(server: &Server) -> ServerConfig {
    server.config().clone()
}

fn handle_input(server: &mut Server, shared: &Shared, input: ControlInput) {
    let now = Instant::now();
    match input {
        ControlInput::Packet { from, packet } => {
            let r = server.handle_control(now, from, &packet);
            count_control(&shared.stats, packet.len(), r);
        }
        ControlInput::Float {
            peer,
            session,
            addr,
        } => server.handle_float(peer, session, addr),
        ControlInput::Exit { peer, session } => server.handle_exit_notification(now, peer, session),
        ControlInput::AuthDone {
            peer,
            session,
            key_id,
            result,
        } => server.handle_auth_result(now, peer, session, key_id, result),
        ControlInput::Closed { addr, why } => {
            tracing::debug!("{addr}: {why}");
            server.handle_transport_closed(now, addr);
        }
    }
}

fn handle_event(
    server: &Server,
    shared: &Shared,
    ev: ServerEvent,
    runtimes: &mut HashMap<PeerId, Arc<PeerRuntime>>,
    ctl_tx: &ControlSender,
    cfg: &Arc<ServerConfig>,
    dev: &str,
) {
    match ev {
        ServerEvent::AuthRequest {
            peer,
            session,
            key_id,
            common_name,
            username,
            password,
            addr,
        } => {
            let remote = match (&shared.transport, addr) {
                (Transport::Tcp(c), PeerAddr::Tcp(id)) => c.get(id).map(|c| c.remote),
                _ => None,
            };
            let req = auth::AuthRequest {
                common_name,
                username,
                password,
                addr,
                remote,
            };
            let (tx, cfg, dev) = (ctl_tx.clone(), Arc::clone(cfg), dev.to_owned());
            let spawned = std::thread::Builder::new()
                .name(format!("auth-{peer}"))
                .spawn(move || {
                    let result = auth::verify(&cfg, &dev, &req);
                    tx.event(ControlInput::AuthDone {
                        peer,
                        session,
                        key_id,
                        result,
                    });
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start verification for peer {peer}: {e}");
            }
        }
        ServerEvent::PeerConnected { peer, handshake } => {
            if let (Transport::Tcp(c), Some(PeerAddr::Tcp(id))) = (
                &shared.transport,
                server.snapshot().peers.get(&peer).map(|v| v.addr),
            ) {
                c.established(id);
            }
            let rt = runtimes
                .entry(peer)
                .or_insert_with(|| Arc::new(PeerRuntime::new(shared.replay_window)));
            rt.stats.control().handshake(handshake, None);
            shared.stats.control().handshake(handshake, None);
            if let Some(PeerAddr::Udp(a)) = server.snapshot().peers.get(&peer).map(|v| v.addr) {
                // Our address as the peer sees it, for capture headers.
                if let Ok(r) = crate::netlink::route_get(a.ip())
                    && let Some(src) = r.prefsrc
                {
                    let port = match &shared.transport {
                        Transport::Udp(eps) => eps
                            .first()
                            .and_then(|ep| ep.socket().local_addr().ok())
                            .map_or(0, |l| l.port()),
                        Transport::Tcp(_) | Transport::Link(_) | Transport::Memory(_) => 0,
                    };
                    let _ = rt.local.set(SocketAddr::new(src, port));
                }
            }
            if let Some(v) = server.snapshot().peers.get(&peer) {
                tracing::info!(
                    "peer {peer} '{}' from {}: {}{} connected",
                    v.common_name,
                    v.addr,
                    v.ipv4.map_or(String::new(), |a| a.to_string()),
                    v.ipv6.map_or(String::new(), |a| format!(" {a}")),
                );
            }
        }
        ServerEvent::PeerKeysChanged { peer, key_id, took } => {
            if let Some(rt) = runtimes.get(&peer) {
                rt.stats.control().renegotiation(took);
            }
            shared.stats.control().renegotiation(took);
            tracing::info!(
                "peer {peer}: new data keys, key-id {key_id} ({} ms)",
                took.as_millis()
            );
        }
        ServerEvent::PeerKeyFailed { peer, reason } => {
            if let Some(rt) = runtimes.get(&peer) {
                rt.stats.control().failures += 1;
            }
            shared.stats.control().failures += 1;
            tracing::warn!("peer {peer}: {reason}");
        }
        ServerEvent::PeerGone { peer, addr, reason } => {
            let summary = runtimes
                .remove(&peer)
                .map(|rt| rt.stats.summary())
                .unwrap_or_default();
            tracing::info!("peer {peer} at {addr} gone: {reason} [{summary}]");
        }
        ServerEvent::CloseTransport(PeerAddr::Tcp(id)) => {
            if let Transport::Tcp(c) = &shared.transport {
                c.close(id);
            }
        }
        ServerEvent::CloseTransport(_) => {}
        ServerEvent::Log(l) => tracing::info!("{l}"),
    }
}

/// Sends what the state machine produced; counts it at socket_tx (and pings at encrypt),
/// globally and for the peer it goes to.
fn transmit(server: &mut Server, shared: &Shared, buf: &mut Vec<u8>, now: Instant) {
    while let Some((peer, m)) = server.poll_control_message() {
        if let Some(tap) = shared.tap.as_deref() {
            tap.emit(crate::capture::control_record(tap, Some(peer), &m));
        }
    }
    loop {
        buf.clear();
        let Some(to) = server.poll_transmit(now, buf) else {
            break;
        };
        let data = tunscope_proto::wire::peek_opcode(buf).is_ok_and(|(op, _)| op.is_data());
        let _ = send_from_control(shared, to, buf, data);
    }
}

fn build_table(
    server: &Server,
    runtimes: &mut HashMap<PeerId, Arc<PeerRuntime>>,
    mss: u16,
    replay_window: u32,
) -> PeerTable {
    let snap = server.snapshot();
    let ethernet = server.config().dev_type == DevType::Tap;
    let mut peers = HashMap::with_capacity(snap.peers.len());
    for (id, view) in snap.peers {
        let rt = runtimes
            .entry(id)
            .or_insert_with(|| Arc::new(PeerRuntime::new(replay_window)))
            .clone();
        peers.insert(id, DataPeer { view, rt });
    }
    PeerTable {
        generation: snap.generation,
        peers,
        by_addr: snap.by_addr,
        routes: snap.routes,
        default_peer: None,
        client_to_client: snap.client_to_client,
        check_sources: true,
        per_peer_stats: true,
        mss,
        block_ipv6: false,
        ethernet,
    }
}
