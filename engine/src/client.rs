//! `tunscope client`: runs the protocol core's [`Client`] against a real link and tun device.
//!
//! One connection attempt at a time:
//!
//! 1. open the link (UDP socket or TCP stream) to the next `remote`;
//! 2. handshake phase: the control thread alone reads the link until the server's PUSH_REPLY;
//! 3. connected phase: the tun device is configured with the pushed address and MTU (created
//!    once, kept across reconnects), the tx and rx data-path threads start, and the control
//!    thread serves control packets, timers and signals;
//! 4. on `Restart` the link is dropped and the next attempt starts after `connect-retry`
//!    (doubling up to 5 minutes); on SIGINT/SIGTERM the client sends explicit-exit-notify
//!    (UDP) and exits 0; on a fatal error it exits with the reason.
//!
//! The observatory spans the whole run: stage counters and histograms, the capture tap, and
//! the control socket / Prometheus endpoint survive reconnects.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tunscope_proto::client::{Client, ClientEvent, Connected, DataPlane, TransmitKind};
use tunscope_proto::consts::PEER_ID_UNDEF;
use tunscope_proto::data;
use tunscope_proto::options::client::{ClientConfig, Mssfix, Remote, Transport};
use tunscope_proto::options::common::DevType;
use tunscope_proto::options::push::{PushedOptions, Topology};
use tunscope_proto::server::{PeerAddr, PeerView};
use tunscope_proto::stage::Stage;

use crate::capture::Tap;
use crate::datapath::{
    self, ControlInput, PeerRuntime, PeerTable, Shared, count_control, send_from_control,
};
use crate::link::Link;
use crate::netconfig::{DnsBackend, NetConfig, Settings};
use crate::observe::{Observatory, ObserveOptions};
use crate::report::{Observer, PeerReport};
use crate::stats::EngineStats;
use crate::tun::{Tun, TunAddresses};

/// Command-line options of `tunscope client`.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The OpenVPN-style config file (empty: options only).
    pub config: PathBuf,
    /// OpenVPN options from the command line (`--name args…`), applied on top of the file.
    pub options: Vec<String>,
    /// Disable tun offload (TSO/GRO).
    pub no_offload: bool,
    /// Observatory options.
    pub observe: ObserveOptions,
    /// How pushed DNS settings are applied.
    pub dns: DnsBackend,
    /// Where applied network changes are recorded (default: per config file, under /run).
    pub state_file: Option<PathBuf>,
    /// While the tunnel is up, let nothing but the tunnel and its transport leave
    /// ([`crate::killswitch`]).
    pub kill_switch: bool,
    /// Send threads, one per queue of a multi-queue tun device (0 = one per core); the
    /// kernel spreads flows over the queues, so several flows are sealed on several cores.
    pub threads: usize,
    /// Receive threads on a UDP link (0 = one per core): batches decrypted side by side,
    /// delivered in turn ([`datapath::turns`]).
    pub rx_threads: usize,
}

/// How one connection attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Closed on request (a signal, `inactive`, the server's goodbye acknowledged).
    Closed,
    /// Ended in a way another attempt may fix (link down, ping-restart, RESTART).
    Restart(String),
    /// Ended for good (AUTH_FAILED, broken keys, a refused config).
    Fatal(String),
}

/// Loads and checks a client config (used by `run` and by `tunscope check-config`): the
/// file, with OpenVPN-style command-line `options` on top.
pub fn load_config(path: &Path, options: &[String]) -> Result<ClientConfig> {
    let file = (!path.as_os_str().is_empty()).then_some(path);
    let cfg = ClientConfig::from_sources(&crate::setup::config_sources(file, options)?)?;
    for w in &cfg.warnings {
        tracing::warn!("{}:{}: {}", path.display(), w.line, w.message);
    }
    Ok(cfg)
}

/// Everything that lives across connection attempts.
struct Run<'a> {
    cfg: &'a ClientConfig,
    opts: &'a ClientOptions,
    term: &'a AtomicBool,
    stats: Arc<EngineStats>,
    observer: Arc<Observer>,
    tap: Option<Arc<Tap>>,
    tun: Option<Tun>,
    state_path: PathBuf,
    /// Remotes in the order they are tried (shuffled once with `remote-random`).
    remotes: Vec<Remote>,
    /// Addresses resolved so far, by (host, port): `persist-remote-ip` reuses them.
    resolved: HashMap<(String, u16), SocketAddr>,
    /// `auth-user-pass` credentials, kept across attempts unless `auth-nocache`.
    credentials: Option<(String, String)>,
    /// Proxy credentials, asked or read once.
    proxy_credentials: Option<(String, String)>,
    /// The management interface (`management …`).
    mgmt: Option<Arc<crate::management::Management>>,
    /// The last attempt ended in AUTH_FAILED (`auth-retry interact` asks again).
    auth_failed: bool,
    /// `user`/`group`: whom to become once the first tunnel is up (None when done or not
    /// asked for).
    become_user: Option<crate::privileges::Target>,
}

/// Runs the client until it is told to stop or fails for good.
pub fn run(opts: &ClientOptions) -> Result<()> {
    let cfg = load_config(&opts.config, &opts.options)?;
    if cfg.remotes.is_empty() {
        bail!(
            "{}: no 'remote' given: nothing to connect to",
            opts.config.display()
        );
    }
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&term))
            .context("installing signal handlers")?;
    }
    let Observatory {
        stats,
        observer,
        capture,
        endpoints,
    } = crate::observe::ObserveOptions {
        ethernet: cfg.dev_type == DevType::Tap,
        ..opts.observe.clone()
    }
    .start("client")?;
    let state_path = opts.state_file.clone().unwrap_or_else(|| {
        // Options-only runs are told apart by their options.
        let key = if opts.config.as_os_str().is_empty() {
            PathBuf::from(opts.options.join(" "))
        } else {
            opts.config.clone()
        };
        crate::netconfig::default_state_path(&key)
    });
    // Resolved now, so a typo fails before anything is set up.
    let become_user = crate::privileges::lookup(cfg.user.as_deref(), cfg.group.as_deref())
        .context("option 'user'/'group'")?;
    // One client per state file: a second instance of the same config would undo the
    // first one's routes and DNS when it exits.
    let lock_path = state_path.with_extension("lock");
    if let Some(dir) = lock_path.parent() {
        crate::private_files::create_dir(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _lock = match crate::private_files::Lock::try_take(&lock_path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let holder = crate::private_files::Lock::holder(&lock_path)
                .map_or_else(String::new, |p| format!(" (pid {p})"));
            anyhow::bail!(
                "another tunscope client with this configuration is running{holder}: it owns {}; stop it first, or give this one its own --state-file",
                state_path.display()
            );
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()));
        }
    };
    // A previous run that crashed left its routes and resolv.conf behind: put them back.
    if let Some(undone) = crate::netconfig::recover(&state_path, cfg.down.as_deref())? {
        tracing::warn!(
            "undid {} route(s){} left by a previous run ({})",
            undone.routes.len(),
            if undone.resolv_conf.is_some() {
                " and restored resolv.conf"
            } else {
                ""
            },
            state_path.display()
        );
    }
    let mut run = Run {
        cfg: &cfg,
        opts,
        term: &term,
        stats: Arc::clone(&stats),
        observer,
        tap: capture.as_ref().map(|c| Arc::clone(&c.tap)),
        tun: None,
        state_path,
        remotes: ordered_remotes(&cfg),
        resolved: HashMap::new(),
        credentials: None,
        proxy_credentials: None,
        mgmt: None,
        auth_failed: false,
        become_user,
    };
    if let Some(m) = &cfg.management {
        let endpoint = match &m.addr {
            tunscope_proto::options::client::ManagementAddr::Unix(p) => {
                crate::management::Endpoint::Unix(p.clone())
            }
            tunscope_proto::options::client::ManagementAddr::Tcp(h, port) => {
                crate::management::Endpoint::Tcp(SocketAddr::new(
                    h.parse()
                        .with_context(|| format!("management: '{h}' is not an address"))?,
                    *port,
                ))
            }
        };
        let password = match &m.password_file {
            None => None,
            Some(f) if f.as_os_str() == "stdin" => Some(crate::prompt::ask(
                "Enter management interface password",
                true,
            )?),
            Some(f) => Some(crate::management::read_password_file(f)?),
        };
        let st = Arc::clone(&stats);
        let mgmt = crate::management::Management::start(
            &endpoint,
            password,
            m.hold,
            Arc::clone(&term),
            Box::new(move || {
                (
                    st.stage(Stage::SocketRx).snapshot().bytes_in,
                    st.stage(Stage::SocketTx).snapshot().bytes_in,
                )
            }),
        )?;
        tracing::info!("management interface listening on {endpoint:?}");
        mgmt.wait_hold()?;
        run.mgmt = Some(mgmt);
    }
    let result = run.attempts();
    if let Some(m) = &run.mgmt {
        m.state(crate::management::State::Exiting, "exit", "", None);
    }
    drop(endpoints);
    run.tap = None;
    if let Some(c) = capture {
        c.finish()?;
    }
    tracing::info!("stage counters\n{}", stats.table());
    result
}

impl Drop for Run<'_> {
    /// Credentials kept across attempts are wiped when the client ends.
    fn drop(&mut self) {
        for creds in [self.credentials.as_mut(), self.proxy_credentials.as_mut()]
            .into_iter()
            .flatten()
        {
            zeroize::Zeroize::zeroize(&mut creds.1);
        }
    }
}

impl Run<'_> {
    /// Send threads (and tun queues) asked for: `--threads`, 0 meaning one per core.
    fn send_threads(&self) -> usize {
        datapath::threads_or_cores(self.opts.threads)
    }

    fn mgmt_state(&self, s: crate::management::State, detail: &str, peer: Option<SocketAddr>) {
        if let Some(m) = &self.mgmt {
            m.state(s, detail, "", peer);
        }
    }

    fn attempts(&mut self) -> Result<()> {
        let mut attempt: u32 = 0;
        let mut remote_idx = 0;
        let cfg = self.cfg;
        let n_remotes = self.remotes.len().max(1) as u32;
        loop {
            let remote = self.remotes[remote_idx % self.remotes.len()].clone();
            let remote = &remote;
            let outcome = match self.connect_once(remote) {
                Ok(o) => o,
                Err(e) => Outcome::Restart(format!("{e:#}")),
            };
            match outcome {
                Outcome::Closed => {
                    tracing::info!("exiting");
                    return Ok(());
                }
                Outcome::Fatal(reason)
                    if reason.contains("AUTH_FAILED")
                        && cfg.auth_retry != tunscope_proto::options::client::AuthRetry::None =>
                {
                    // auth-retry: reconnect; `interact` asks for new credentials first.
                    tracing::warn!("{reason}: retrying (auth-retry)");
                    if cfg.auth_retry == tunscope_proto::options::client::AuthRetry::Interact {
                        if let Some((_, p)) = self.credentials.as_mut() {
                            zeroize::Zeroize::zeroize(p);
                        }
                        self.credentials = None;
                        self.auth_failed = true;
                    }
                    if self.term.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Outcome::Fatal(reason) => bail!("{reason}"),
                Outcome::Restart(reason) => {
                    if let Some(m) = &self.mgmt {
                        m.state(crate::management::State::Reconnecting, "restart", "", None);
                    }
                    attempt += 1;
                    tracing::warn!(
                        "connection to {}:{} ended: {reason}",
                        remote.host,
                        remote.port
                    );
                    if self.term.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if cfg
                        .connect_retry_max
                        .is_some_and(|m| attempt >= m * n_remotes)
                    {
                        bail!("giving up after {attempt} attempts (connect-retry-max): {reason}");
                    }
                    remote_idx += 1;
                    // As OpenVPN: the next remote after connect-retry seconds; after five
                    // rounds through the list the wait doubles each round (at most 300 s).
                    let rounds = (attempt - 1) / n_remotes;
                    let backoff =
                        cfg.connect_retry * 2u32.saturating_pow(rounds.saturating_sub(4).min(8));
                    let wait = backoff.min(Duration::from_secs(300));
                    tracing::info!("restarting in {} s", wait.as_secs());
                    let until = Instant::now() + wait;
                    while Instant::now() < until {
                        if self.term.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
    }

    fn connect_once(&mut self, remote: &Remote) -> Result<Outcome> {
        let cfg = self.cfg;
        self.mgmt_state(crate::management::State::Connecting, "", None);
        // Through a proxy, the proxy is the far end of our socket and resolves the server.
        if let Some(proxy) = &cfg.proxy {
            let (peer, link) = self.proxy_link(remote, proxy)?;
            return self.run_on_link(remote, peer, link);
        }
        // persist-remote-ip: the address resolved first is kept across restarts.
        let key = (remote.host.clone(), remote.port);
        let peer = match self.resolved.get(&key) {
            Some(a) if cfg.persist_remote_ip => *a,
            _ => {
                let a = resolve(remote)?;
                self.resolved.insert(key, a);
                a
            }
        };
        let local = match &cfg.local {
            Some(h) => Some(crate::setup::resolve_local(h, peer.is_ipv6())?),
            None => None,
        };
        let link = match remote.transport {
            Transport::Udp => Link::udp(peer, local, cfg.lport.unwrap_or(0)),
            Transport::Tcp => Link::tcp(
                peer,
                (local.is_some() || cfg.lport.is_some_and(|p| p != 0)).then(|| {
                    let ip = local.unwrap_or(if peer.is_ipv4() {
                        std::net::Ipv4Addr::UNSPECIFIED.into()
                    } else {
                        std::net::Ipv6Addr::UNSPECIFIED.into()
                    });
                    SocketAddr::new(ip, cfg.lport.unwrap_or(0))
                }),
                cfg.server_poll_timeout.min(Duration::from_secs(120)),
            ),
        }
        .with_context(|| format!("cannot open link to {peer}"))?;
        self.run_on_link(remote, peer, link)
    }

    /// A TCP link to `remote` through `proxy` (HTTP CONNECT or SOCKS5).
    fn proxy_link(
        &mut self,
        remote: &Remote,
        proxy: &tunscope_proto::options::client::ProxySettings,
    ) -> Result<(SocketAddr, Link)> {
        use tunscope_proto::options::client::ProxyAuth;
        let cfg = self.cfg;
        let addr = resolve(&Remote {
            host: proxy.host.clone(),
            port: proxy.port,
            transport: Transport::Tcp,
        })
        .context("proxy")?;
        if self.proxy_credentials.is_none() {
            self.proxy_credentials = match &proxy.auth {
                ProxyAuth::None => None,
                ProxyAuth::From(src) => Some(
                    tunscope_proto::options::client::parse_credentials(&crate::setup::read_source(
                        src,
                        "http-proxy",
                    )?)
                    .map_err(|e| anyhow::anyhow!("proxy credentials ({}): {e}", src.describe()))?,
                ),
                ProxyAuth::Prompt => Some(crate::prompt::credentials()?),
            };
        }
        tracing::info!(
            "connecting to {}:{} through {} proxy {addr}",
            remote.host,
            remote.port,
            match proxy.kind {
                tunscope_proto::options::client::ProxyKind::Http => "HTTP",
                tunscope_proto::options::client::ProxyKind::Socks5 => "SOCKS5",
            }
        );
        let stream = crate::proxy::connect(
            proxy,
            addr,
            &remote.host,
            remote.port,
            self.proxy_credentials.as_ref(),
            cfg.server_poll_timeout.min(Duration::from_secs(120)),
        )
        .with_context(|| format!("proxy {addr}"))?;
        Ok((addr, Link::from_tcp(stream, addr)?))
    }

    /// The connection attempt on an open link: handshake, tunnel, data path, until it ends.
    fn run_on_link(&mut self, remote: &Remote, peer: SocketAddr, link: Link) -> Result<Outcome> {
        self.observer.set_socket(link.udp_fd());
        let addr = datapath::Transport::link_addr(&link);
        self.run_on_transport(remote, peer, datapath::Transport::Link(link), addr)
    }

    /// The connection attempt on an open transport whose far end, the server, is `addr`.
    fn run_on_transport(
        &mut self,
        remote: &Remote,
        peer: SocketAddr,
        transport: datapath::Transport,
        addr: PeerAddr,
    ) -> Result<Outcome> {
        let cfg = self.cfg;
        // Credentials are asked for (or read) once and kept, unless auth-nocache; with
        // `management-query-passwords` the management client is asked instead of the terminal.
        if self.credentials.is_none() || cfg.auth_nocache {
            let creds = match (&self.mgmt, &cfg.management, &cfg.auth_user_pass) {
                (Some(m), Some(ms), Some(tunscope_proto::options::client::UserPass::Prompt))
                    if ms.query_passwords =>
                {
                    m.ask_credentials(self.auth_failed).map(Some)
                }
                _ => crate::setup::load_credentials(cfg),
            };
            self.credentials = match creds {
                Ok(c) => c,
                // A missing credentials file or a closed terminal: retrying cannot help.
                Err(e) => return Ok(Outcome::Fatal(format!("{e:#}"))),
            };
            self.auth_failed = false;
        }
        self.mgmt_state(crate::management::State::Wait, "", Some(peer));
        // Unreadable keys, a wrong PKCS#12 password …: retrying cannot help.
        let setup = match crate::setup::client_setup(
            cfg,
            remote.transport,
            peer.is_ipv6(),
            self.credentials.clone(),
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => return Ok(Outcome::Fatal(format!("{e:#}"))),
        };
        tracing::info!(
            "connecting to {peer} over {}",
            if remote.transport == Transport::Udp {
                "UDP"
            } else {
                "TCP"
            }
        );
        let (ctl_tx, ctl_rx) = datapath::control_channel();
        // Receive threads on a UDP link share its one socket (batches decrypted side by
        // side, delivered in turn); a TCP stream is read by one.
        let receive_threads = match &transport {
            datapath::Transport::Link(l) if l.kind() == crate::link::LinkKind::Udp => {
                datapath::threads_or_cores(self.opts.rx_threads)
            }
            _ => 1,
        };
        let mut shared = Shared::new(
            transport,
            ctl_tx,
            Arc::clone(&self.stats),
            self.tap.clone(),
            cfg.replay_window
                .unwrap_or(tunscope_proto::consts::REPLAY_WINDOW_DEFAULT),
            self.tun.take(),
        );
        if receive_threads > 1 {
            shared.rx_turns = Some(datapath::turns::Turns::new());
        }
        // The server is our only peer; until the handshake is done it has no keys, so data
        // packets that arrive early are dropped at decrypt (`no_key`), counted.
        let rt = Arc::new(PeerRuntime::new(shared.replay_window));
        shared.publish(server_table(addr, DataPlane::default(), &rt, 0));
        // The data threads run from the first packet on: rx hands control packets to this
        // thread; tx waits for the tun device, which the server's push shapes.
        let outcome = std::thread::scope(|s| -> Result<Outcome> {
            let sh = &shared;
            let rx_threads = (0..receive_threads)
                .map(|i| {
                    let name = if receive_threads == 1 {
                        "rx".to_owned()
                    } else {
                        format!("rx{i}")
                    };
                    std::thread::Builder::new()
                        .name(name)
                        .spawn_scoped(s, move || datapath::rx_loop(sh, 0))
                })
                .collect::<std::io::Result<Vec<_>>>()?;
            // One send thread per queue the device is asked for (the device is made once
            // the push arrives; a queue it refuses ends its thread).
            let tx_threads = (0..self.send_threads())
                .map(|q| {
                    std::thread::Builder::new()
                        .name(format!("tx{q}"))
                        .spawn_scoped(s, move || datapath::tx_loop(sh, q))
                })
                .collect::<std::io::Result<Vec<_>>>()?;
            let session = Session {
                shared: sh,
                ctl: &ctl_rx,
                addr,
                peer,
                rt: &rt,
            };
            let r = self.session(&session, remote, setup);
            shared.stop();
            for t in rx_threads {
                let _ = t.join();
            }
            for t in tx_threads {
                let _ = t.join();
            }
            r
        });
        self.tun = shared.tun.into_inner();
        self.observer.set_peers(vec![]);
        outcome
    }

    /// One connection on its link, data threads running: handshake, tunnel, until it ends.
    fn session(
        &mut self,
        sn: &Session<'_>,
        remote: &Remote,
        setup: Arc<tunscope_proto::client::ClientSetup>,
    ) -> Result<Outcome> {
        let cfg = self.cfg;
        let shared = sn.shared;
        let peer = sn.peer;
        let mut client = Client::new(setup, Instant::now(), unix_now());
        // Handshake phase: until the server's PUSH_REPLY.
        let connected = match handshake(&mut client, sn, self.term, cfg.server_poll_timeout)? {
            Ok(c) => c,
            Err(o) => return Ok(o),
        };
        self.stats
            .control()
            .handshake(connected.handshake, Some(connected.push));
        tracing::info!(
            "connected in {} ms: cipher {}, peer-id {}, {}",
            connected.handshake.as_millis(),
            connected.cipher.name(),
            connected
                .pushed
                .peer_id
                .map_or("none".into(), |p| p.to_string()),
            connected.tls
        );
        let plane = client.data_plane();
        let mtu = connected.pushed.tun_mtu.unwrap_or(cfg.tun_mtu);
        let tap = cfg.dev_type == DevType::Tap;
        let addrs = tun_addresses(&connected.pushed, tap)?;
        if shared.tun.get().is_none() {
            // tap keeps one queue (frames of a bridge, not flows to spread).
            let queues = if tap { 1 } else { self.send_threads() };
            let t = Tun::create_queues(Some(&cfg.dev), mtu, !self.opts.no_offload, tap, queues)
                .context("cannot create tun device")?;
            t.set_nonblocking()?;
            let _ = shared.tun.set(t);
        }
        let Some(tun) = shared.tun.get() else {
            bail!("tun device missing")
        };
        self.mgmt_state(
            crate::management::State::AssignIp,
            &addrs.ipv4.map_or(String::new(), |(a, _, _)| a.to_string()),
            Some(peer),
        );
        // ifconfig-noexec: the up script (a front-end's helper) sets the addresses.
        let mut addrs = addrs;
        if cfg.ifconfig_noexec {
            addrs.ipv4 = None;
            addrs.ipv6 = None;
        }
        tun.configure(&addrs, mtu)
            .with_context(|| format!("cannot configure {}", tun.name()))?;
        tracing::info!(
            "{}: {}{} mtu {mtu}, offload {}",
            tun.name(),
            addrs
                .ipv4
                .map_or(String::new(), |(a, p, _)| format!("{a}/{p} ")),
            addrs
                .ipv6
                .map_or(String::new(), |(a, p)| format!("{a}/{p} ")),
            tun.offload()
        );
        log_pushed(&connected.pushed);
        let effective = effective_options(cfg, &connected.pushed);
        let net = if tun.is_memory() {
            Ok(NetConfig::nothing())
        } else {
            NetConfig::apply(
                &effective,
                &Settings {
                    dev: tun.name(),
                    mtu,
                    remote: peer,
                    dns: self.opts.dns,
                    route_noexec: cfg.route_noexec,
                    up: cfg.up.as_deref(),
                    down: cfg.down.as_deref(),
                    config: &self.opts.config,
                    setenv: &cfg.setenv,
                    block_ipv6: cfg.block_ipv6,
                    kill_switch: self.opts.kill_switch,
                    remote_tcp: remote.transport == Transport::Tcp,
                },
                &self.state_path,
            )
        };
        let net = match net {
            Ok(n) => n,
            // Without its routes the tunnel is not what the user asked for: stop, after
            // undoing whatever part was applied (the state file lists it).
            Err(e) => {
                let _ = crate::netconfig::recover(&self.state_path, self.cfg.down.as_deref());
                return Ok(Outcome::Fatal(format!("{e:#}")));
            }
        };
        self.observer.set_peers(vec![(
            PeerReport {
                id: connected.pushed.peer_id.unwrap_or(0),
                name: "server".into(),
                addr: peer.to_string(),
                tunnel: addrs.ipv4.map(|(a, p, _)| format!("{a}/{p}")),
                cipher: Some(connected.cipher.name().into()),
                stats: None,
            },
            None,
        )]);
        let v2 = plane.peer_id.is_some_and(|p| p != PEER_ID_UNDEF);
        let mss = mss_for(cfg, remote.transport, peer.is_ipv6(), &plane, v2).unwrap_or(0);
        // block-ipv6 without IPv6 in the tunnel: IPv6 is answered "no route" locally.
        let block_ipv6 = (cfg.block_ipv6 || connected.pushed.block_ipv6)
            && connected.pushed.ifconfig_ipv6.is_none();
        let table = |plane: DataPlane| {
            let mut t = server_table(sn.addr, plane, sn.rt, mss);
            t.block_ipv6 = block_ipv6 && !tap;
            t.ethernet = tap;
            t
        };
        shared.publish(table(plane));
        let mut published = client.data_plane_generation();
        // The first tunnel is set up: become `user`/`group` (as OpenVPN at this point). This
        // thread keeps what reconnecting and undoing need (routes, tun, the DNS stub's
        // port); the state file and resolv.conf are pinned open first.
        if let Some(t) = self.become_user.take() {
            crate::netconfig::pin_files(&self.state_path)?;
            crate::privileges::drop_keeping_net_admin(&t)
                .with_context(|| format!("cannot become {}", t.name))?;
            tracing::info!(
                "privileges dropped: now uid {} gid {} ({}), CAP_NET_ADMIN kept by the control thread only",
                t.uid,
                t.gid,
                t.name
            );
        }
        // The line OpenVPN prints at this point; scripts and tests wait for it.
        tracing::info!("Initialization Sequence Completed");
        if let Some(m) = &self.mgmt {
            let local_ip = tun_addresses(&connected.pushed, tap)
                .ok()
                .and_then(|a| a.ipv4)
                .map_or(String::new(), |(a, _, _)| a.to_string());
            m.state(
                crate::management::State::Connected,
                "SUCCESS",
                &local_ip,
                Some(peer),
            );
        }

        let term = self.term;
        let mut buf = Vec::with_capacity(2048);
        let mut closing = false;
        // `inactive N [BYTES]`: tun traffic seen at the start of the current period.
        let tun_bytes = || {
            self.stats.stage(Stage::ReadTun).snapshot().bytes_in
                + self.stats.stage(Stage::WriteTun).snapshot().bytes_in
        };
        let mut inactive_mark = (Instant::now(), tun_bytes());
        let outcome = loop {
            if term.load(Ordering::Relaxed) && !closing {
                closing = true;
                tracing::info!("signal received, closing");
                client.close(Instant::now());
            }
            if let Some(m) = &self.mgmt
                && m.restart.swap(false, Ordering::Relaxed)
            {
                break Outcome::Restart("SIGUSR1 from the management interface".into());
            }
            if let Some((period, min_bytes)) = cfg.inactive
                && !closing
            {
                let (since, base) = inactive_mark;
                let moved = tun_bytes().saturating_sub(base);
                if moved > min_bytes {
                    // Traffic: with a byte threshold the period restarts when it is over,
                    // without one at every packet.
                    if min_bytes == 0 || since.elapsed() >= period {
                        inactive_mark = (Instant::now(), tun_bytes());
                    }
                } else if since.elapsed() >= period {
                    tracing::info!(
                        "inactive for {} s ({moved} bytes through the tunnel): exiting (inactive)",
                        period.as_secs()
                    );
                    closing = true;
                    client.close(Instant::now());
                }
            }
            client.set_data_activity(
                shared.instant(&sn.rt.last_rx_ns),
                shared.instant(&sn.rt.last_tx_ns),
            );
            let now = Instant::now();
            let wait = datapath::control_wait(client.poll_timeout(), now);
            match sn.ctl.recv_timeout(wait) {
                Ok(ControlInput::Packet { packet, .. }) => {
                    control_packet(&mut client, shared, &packet)
                }
                Ok(ControlInput::Closed { why, .. }) => break Outcome::Restart(why),
                Ok(ControlInput::Exit { .. }) => {
                    // As OpenVPN: the peer said it is going away (OCC EXIT): restart.
                    break Outcome::Restart("the server sent an exit notification".into());
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    break Outcome::Restart("data path stopped".into());
                }
            }
            let now = Instant::now();
            client.handle_timeout(now);
            transmit(&mut client, sn, &mut buf, now);
            if client.data_plane_generation() != published {
                published = client.data_plane_generation();
                shared.publish(table(client.data_plane()));
            }
            if let Some(o) = drain_events(&mut client, &self.stats) {
                break o;
            }
        };
        net.undo();
        Ok(outcome)
    }
}

/// The remotes in the order they are tried: as written, or shuffled once (`remote-random`).
fn ordered_remotes(cfg: &ClientConfig) -> Vec<Remote> {
    let mut v = cfg.remotes.clone();
    if cfg.remote_random && v.len() > 1 {
        // Fisher-Yates with the kernel's randomness (no clock-seeded generator).
        let mut seed = [0u8; 8];
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| {
            use std::io::Read;
            f.read_exact(&mut seed)
        });
        let mut x = u64::from_le_bytes(seed) | 1;
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
    }
    v
}

fn resolve(remote: &Remote) -> Result<SocketAddr> {
    (remote.host.as_str(), remote.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve remote {}", remote.host))?
        .next()
        .with_context(|| format!("remote {} has no address", remote.host))
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

fn mss_for(
    cfg: &ClientConfig,
    transport: Transport,
    ipv6_link: bool,
    plane: &tunscope_proto::client::DataPlane,
    v2: bool,
) -> Option<u16> {
    let outer = match (transport, ipv6_link) {
        (Transport::Udp, false) => 28,
        (Transport::Udp, true) => 48,
        (Transport::Tcp, false) => 40,
        (Transport::Tcp, true) => 60,
    };
    // TCP's record length, or the fragment header inside the encryption.
    let framing_extra = match transport {
        Transport::Tcp => 2,
        Transport::Udp if cfg.fragment.is_some() => tunscope_proto::fragment::HEADER_LEN as u16,
        Transport::Udp => 0,
    } + if cfg.dev_type == DevType::Tap {
        // A tap frame carries its Ethernet header inside the tunnel.
        datapath::ethernet::HEADER as u16
    } else {
        0
    };
    let cipher = plane
        .send
        .as_ref()
        .map_or(data::Cipher::Aes256Gcm, |k| k.cipher());
    let overhead =
        data::overhead_with(cipher, cfg.auth_digest, v2, plane.framing) as u16 + framing_extra;
    cfg.mssfix
        .unwrap_or(Mssfix::DEFAULT)
        .mss_v4(outer, overhead)
}

/// One connection attempt's data path as the control thread sees it.
struct Session<'a> {
    shared: &'a Shared,
    /// Control packets and link events from the rx thread.
    ctl: &'a datapath::ControlQueue,
    /// The server's address on the transport.
    addr: PeerAddr,
    /// The server's socket address (logs).
    peer: SocketAddr,
    /// The server's activity stamps.
    rt: &'a Arc<PeerRuntime>,
}

/// The data path's table on a client: the server as the only peer, with the keys of `plane`.
fn server_table(addr: PeerAddr, plane: DataPlane, rt: &Arc<PeerRuntime>, mss: u16) -> PeerTable {
    let view = PeerView {
        id: plane.peer_id.filter(|p| *p != PEER_ID_UNDEF).unwrap_or(0),
        session: 0,
        addr,
        plane,
        ipv4: None,
        ipv6: None,
        iroutes: Vec::new(),
        common_name: "server".into(),
    };
    PeerTable::single(view, Arc::clone(rt), mss)
}

/// Runs the control plane until the server's PUSH_REPLY (Ok(Ok)) or the end of the attempt
/// (Ok(Err(outcome))).
fn handshake(
    client: &mut Client,
    sn: &Session<'_>,
    term: &AtomicBool,
    poll_timeout: Duration,
) -> Result<Result<Connected, Outcome>> {
    let mut buf = Vec::with_capacity(2048);
    let started = Instant::now();
    let mut heard = false;
    loop {
        if term.load(Ordering::Relaxed) {
            return Ok(Err(Outcome::Closed));
        }
        let now = Instant::now();
        // server-poll-timeout: a remote that never answers is left for the next one.
        if !heard && now.duration_since(started) >= poll_timeout {
            return Ok(Err(Outcome::Restart(format!(
                "no answer from {} within {} s (server-poll-timeout)",
                sn.peer,
                poll_timeout.as_secs()
            ))));
        }
        client.handle_timeout(now);
        transmit(client, sn, &mut buf, now);
        if let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::Connected(c) => {
                    // Flush what the connect produced (ACKs) before the data path starts.
                    transmit(client, sn, &mut buf, Instant::now());
                    return Ok(Ok(*c));
                }
                other => {
                    if let Some(o) = event_outcome(other, &sn.shared.stats) {
                        return Ok(Err(o));
                    }
                }
            }
            continue;
        }
        let wait = datapath::control_wait(client.poll_timeout(), now);
        match sn.ctl.recv_timeout(wait) {
            Ok(ControlInput::Packet { packet, .. }) => {
                heard = true;
                control_packet(client, sn.shared, &packet);
            }
            Ok(ControlInput::Closed { why, .. }) => return Ok(Err(Outcome::Restart(why))),
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Ok(Err(Outcome::Restart("data path stopped".into())));
            }
        }
    }
}

fn control_packet(client: &mut Client, shared: &Shared, p: &[u8]) {
    let r = client.handle_control(Instant::now(), p);
    count_control(&shared.stats, p.len(), r);
}

/// Sends what the state machine produced (counted at socket_tx; pings and exit notifications
/// are data packets, so at encrypt too); plaintext control messages go to the control tap.
fn transmit(client: &mut Client, sn: &Session<'_>, buf: &mut Vec<u8>, now: Instant) {
    let tap = sn.shared.tap.as_deref();
    while let Some(m) = client.poll_control_message() {
        if let Some(tap) = tap {
            tap.emit(crate::capture::control_record(tap, None, &m));
        }
    }
    loop {
        buf.clear();
        let Some(kind) = client.poll_transmit(now, buf) else {
            break;
        };
        let _ = send_from_control(sn.shared, sn.addr, buf, kind == TransmitKind::Data);
    }
}

fn drain_events(client: &mut Client, stats: &EngineStats) -> Option<Outcome> {
    while let Some(ev) = client.poll_event() {
        if let Some(o) = event_outcome(ev, stats) {
            return Some(o);
        }
    }
    None
}

fn event_outcome(ev: ClientEvent, stats: &EngineStats) -> Option<Outcome> {
    match ev {
        ClientEvent::Connected(_) => None,
        ClientEvent::KeysChanged { key_id, took } => {
            stats.control().renegotiation(took);
            tracing::info!("new data keys, key-id {key_id} ({} ms)", took.as_millis());
            None
        }
        ClientEvent::RenegotiationFailed(w) => {
            stats.control().failures += 1;
            tracing::warn!("{w}");
            None
        }
        ClientEvent::Warning(w) => {
            tracing::warn!("{w}");
            None
        }
        ClientEvent::Info(i) => {
            tracing::info!("{i}");
            None
        }
        ClientEvent::Restart(r) => {
            stats.control().failures += 1;
            Some(Outcome::Restart(r))
        }
        ClientEvent::Fatal(r) => Some(Outcome::Fatal(r)),
        ClientEvent::Closed => Some(Outcome::Closed),
    }
}

/// The pushed options as applied: `route-nopull` drops pushed routes; `route` and
/// `redirect-gateway` lines of the config file itself are added.
fn effective_options(cfg: &ClientConfig, pushed: &PushedOptions) -> PushedOptions {
    let mut p = pushed.clone();
    if cfg.route_nopull {
        p.routes.clear();
        p.routes_ipv6.clear();
        p.redirect_gateway = None;
    }
    for l in cfg.routes.iter().chain(&cfg.dhcp_options) {
        let _ = p.apply(l, &[]);
    }
    if let Some(rg) = &cfg.redirect_gateway {
        let _ = p.apply(&format!("redirect-gateway {rg}"), &[]);
    }
    p
}

fn log_pushed(p: &PushedOptions) {
    let dns: Vec<String> = p
        .dhcp_dns
        .iter()
        .map(ToString::to_string)
        .chain(
            p.dns_servers
                .values()
                .flat_map(|s| s.addresses.iter().map(|(a, _)| a.to_string())),
        )
        .collect();
    tracing::info!(
        "pushed: {} routes, {} IPv6 routes, redirect-gateway {}, DNS [{}], domains [{}]",
        p.routes.len(),
        p.routes_ipv6.len(),
        p.redirect_gateway.is_some(),
        dns.join(", "),
        p.dhcp_domains
            .iter()
            .chain(p.dns_search_domains.iter())
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    for o in &p.ignored {
        tracing::debug!("pushed option ignored: {o}");
    }
}

fn prefix_len(mask: std::net::Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let n = m.leading_ones();
    (m.checked_shl(n).unwrap_or(0) == 0).then_some(n as u8)
}

/// Interface addresses from the pushed `ifconfig`/`ifconfig-ipv6` and topology (a tap
/// device's `ifconfig` is always address and netmask).
pub fn tun_addresses(p: &PushedOptions, tap: bool) -> Result<TunAddresses> {
    let ipv4 = match p.ifconfig {
        None => None,
        Some((local, mask)) if tap || p.topology == Topology::Subnet => {
            let prefix = prefix_len(mask)
                .with_context(|| format!("pushed ifconfig netmask {mask} is not contiguous"))?;
            Some((local, prefix, None))
        }
        // net30/p2p: the second address is the point-to-point peer.
        Some((local, peer)) => Some((local, 32, Some(peer))),
    };
    Ok(TunAddresses {
        ipv4,
        ipv6: p.ifconfig_ipv6.map(|(a, bits, _)| (a, bits)),
    })
}

/// The in-process tier: one connection attempt of a client configured by `cfg` over an
/// in-memory port to the server at `server`, with an in-memory tun device, until `term` or
/// the attempt's end. No kernel state is touched; counters and taps go to `obs`.
pub fn run_in_memory(
    cfg: &ClientConfig,
    obs: &Observatory,
    term: &AtomicBool,
    tun: Tun,
    port: Arc<datapath::memory::MemPort>,
    server: SocketAddr,
) -> Result<Outcome> {
    let opts = ClientOptions {
        config: PathBuf::new(),
        options: vec![],
        no_offload: true,
        observe: ObserveOptions::default(),
        dns: DnsBackend::None,
        state_file: None,
        kill_switch: false,
        threads: 1,
        rx_threads: 1,
    };
    let remote = cfg
        .remotes
        .first()
        .cloned()
        .context("no 'remote' given: nothing to connect to")?;
    let mut run = Run {
        cfg,
        opts: &opts,
        term,
        stats: Arc::clone(&obs.stats),
        observer: Arc::clone(&obs.observer),
        tap: obs.capture.as_ref().map(|c| Arc::clone(&c.tap)),
        tun: Some(tun),
        state_path: PathBuf::new(),
        remotes: vec![remote.clone()],
        resolved: HashMap::new(),
        credentials: None,
        proxy_credentials: None,
        mgmt: None,
        auth_failed: false,
        // In-process runs share the test's process: never change its identity.
        become_user: None,
    };
    let addr = port.server(server);
    run.run_on_transport(&remote, server, datapath::Transport::Memory(port), addr)
}
