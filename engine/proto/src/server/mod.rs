//! The OpenVPN server as a sans-I/O state machine: many peers, each with its own control
//! session, addresses, keys and timers.
//!
//! Drive it like the client:
//!
//! * inputs: [`Server::handle_control`] (control packets, tagged with the transport address),
//!   [`Server::handle_auth_result`] (after the shell ran the verify script / read the ccd file
//!   for an [`ServerEvent::AuthRequest`]), [`Server::handle_transport_closed`] (TCP),
//!   [`Server::handle_float`], [`Server::handle_exit_notification`] and
//!   [`Server::set_peer_activity`] (from the data path), [`Server::handle_timeout`];
//! * outputs: [`Server::poll_transmit`] (control packets and pings with their destination),
//!   [`Server::poll_event`], [`Server::poll_timeout`], and [`Server::snapshot`]: the peers'
//!   keys, addresses and the route table the data path works with (re-read whenever
//!   [`Server::generation`] changes).
//!
//! Admission: over UDP the first reply is a stateless HMAC-cookie reset ([`cookie`]); a peer
//! is created only when the client echoes the cookie. Over TCP the connection itself is the
//! proof of address and the peer is created at the first reset.

pub mod admission;
pub mod cookie;
pub mod pool;
pub mod routes;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::DataPlane;
use crate::consts::{PING_MAGIC, iv_proto};
use crate::control::{ControlSession, SessionEvent, SessionParams, random_bytes};
use crate::data::{Cipher, DataKeys};
use crate::key_method::{KeyMethod2, PeerInfo, options_string};
use crate::key_schedule::{KeySchedule, ScheduleConfig, random_jitter};
use crate::options::common::DevType;
use crate::options::push::PushedOptions;
use crate::options::server::{ClientOverrides, PushedGateway, ServerConfig, ServerTransport};
use crate::stage::DropReason;
use crate::wire::CONTROL_HEADER_LEN;
use crate::wire::{ControlPacket, Opcode, SessionId, peek_opcode};
use crate::wrap::{TlsWrap, WrapConfig};

use self::admission::{RateLimit, ResetLimiter};
use self::cookie::CookieJar;
use self::pool::{Pool4, Pool6};
pub use self::routes::{PeerId, RouteTable};

/// Where a peer is reached: a UDP address or a TCP connection (numbered by the shell).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerAddr {
    /// UDP source address.
    Udp(SocketAddr),
    /// TCP connection id.
    Tcp(u64),
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Udp(a) => write!(f, "{a}"),
            PeerAddr::Tcp(c) => write!(f, "tcp#{c}"),
        }
    }
}

/// Everything the server needs, with key material loaded.
pub struct ServerSetup {
    /// rustls server config.
    pub tls: Arc<rustls::ServerConfig>,
    /// Control-channel wrap.
    pub wrap: WrapConfig,
    /// The parsed config.
    pub config: ServerConfig,
    /// The listen socket is IPv6 (control packet size budget).
    pub ipv6_link: bool,
}

/// What the shell decided about a client's credentials.
#[derive(Clone, Debug, Default)]
pub struct AuthResult {
    /// Accepted.
    pub ok: bool,
    /// Why not (sent to the client as `AUTH_FAILED,<reason>` only in the log, like 2.6).
    pub reason: Option<String>,
    /// The client's `client-config-dir` file, if any.
    pub overrides: Option<ClientOverrides>,
}

/// Things the shell must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// Verify a client (run `auth-user-pass-verify`, read its ccd file), then call
    /// [`Server::handle_auth_result`].
    AuthRequest {
        /// The peer.
        peer: PeerId,
        /// The peer's session: peer-ids are reused, sessions never (pass it back).
        session: u64,
        /// Key-id being authenticated (0 at connect, >0 on renegotiation).
        key_id: u8,
        /// Certificate common name (or username with `username-as-common-name`).
        common_name: Option<String>,
        /// `auth-user-pass` username.
        username: Option<String>,
        /// `auth-user-pass` password.
        password: Option<String>,
        /// Transport address.
        addr: PeerAddr,
    },
    /// A peer's tunnel is up (addresses assigned, keys installed).
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// From the client's first packet to keys installed.
        handshake: Duration,
    },
    /// A peer has new data keys after a renegotiation.
    PeerKeysChanged {
        /// The peer.
        peer: PeerId,
        /// New key-id.
        key_id: u8,
        /// How long the renegotiation took.
        took: Duration,
    },
    /// A peer's renegotiation failed (its old key stays in use).
    PeerKeyFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A peer is gone (its state freed).
    PeerGone {
        /// The peer.
        peer: PeerId,
        /// Where it was.
        addr: PeerAddr,
        /// Why.
        reason: String,
    },
    /// Close this TCP connection.
    CloseTransport(PeerAddr),
    /// Something to log.
    Log(String),
}

/// A peer as the data path sees it.
#[derive(Clone, Debug)]
pub struct PeerView {
    /// Peer-id (reused after the peer is gone).
    pub id: PeerId,
    /// This session of the peer, unique for the server's life: what the data path reports
    /// about a peer (float, exit) names it, so a report about an earlier session that had the
    /// same peer-id changes nothing.
    pub session: u64,
    /// Transport address.
    pub addr: PeerAddr,
    /// Keys and header settings.
    pub plane: DataPlane,
    /// Tunnel IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Tunnel IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Networks behind the client (`iroute`).
    pub iroutes: Vec<(IpAddr, u8)>,
    /// Common name.
    pub common_name: String,
}

impl PeerView {
    /// True when `src` may appear as the inner source address of this peer's packets.
    pub fn owns_source(&self, src: IpAddr) -> bool {
        match src {
            IpAddr::V4(a) => {
                self.ipv4 == Some(a)
                    || self.iroutes.iter().any(|(n, p)| match n {
                        IpAddr::V4(n) => {
                            let m = if *p == 0 {
                                0
                            } else {
                                u32::MAX << (32 - u32::from(*p))
                            };
                            u32::from(a) & m == u32::from(*n) & m
                        }
                        IpAddr::V6(_) => false,
                    })
            }
            IpAddr::V6(a) => {
                // Link-local sources (router solicitations) are the client's own too.
                self.ipv6 == Some(a)
                    || a.segments()[0] & 0xffc0 == 0xfe80
                    || self.iroutes.iter().any(|(n, p)| match n {
                        IpAddr::V6(n) => {
                            let m = if *p == 0 {
                                0
                            } else {
                                u128::MAX << (128 - u32::from(*p))
                            };
                            u128::from(a) & m == u128::from(*n) & m
                        }
                        IpAddr::V4(_) => false,
                    })
            }
        }
    }
}

/// The data path's view of the server at one generation.
#[derive(Clone, Debug, Default)]
pub struct ServerSnapshot {
    /// Generation.
    pub generation: u64,
    /// Connected peers by id.
    pub peers: HashMap<PeerId, Arc<PeerView>>,
    /// Transport address → peer (for P_DATA_V1 and float detection).
    pub by_addr: HashMap<PeerAddr, PeerId>,
    /// Inner destination → peer.
    pub routes: RouteTable,
    /// `client-to-client`.
    pub client_to_client: bool,
}

/// Sessions still handshaking from one UDP address, at most (TCP connections are bounded
/// per source by the TCP listener).
pub const HANDSHAKES_PER_SOURCE: usize = 16;
/// How often a client may start a renegotiation.
pub const MIN_CLIENT_RENEG_INTERVAL: Duration = Duration::from_secs(1);
/// How long a refused client keeps its slot at most (to hear AUTH_FAILED).
pub const REFUSED_GRACE: Duration = Duration::from_secs(3);
/// Handshakes in progress allowed at once even when `max-clients` is smaller.
pub const MIN_HANDSHAKES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerState {
    /// TLS / key-method-2 in progress.
    Handshake,
    /// Waiting for the shell's verdict.
    Authenticating,
    /// Accepted; waiting for the key state to become active.
    Authenticated,
    /// Accepted but refused: AUTH_FAILED will be sent once TLS is active.
    Refused,
    /// Tunnel up.
    Connected,
}

struct Peer {
    id: PeerId,
    /// Unique for the server's life (peer-ids are reused): see [`PeerView::session`].
    serial: u64,
    addr: PeerAddr,
    session: ControlSession,
    state: PeerState,
    common_name: Option<String>,
    username: Option<String>,
    peer_info: PeerInfo,
    cipher: Option<Cipher>,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    overrides: ClientOverrides,
    refusal: Option<String>,
    /// Data keys over time: current, lame duck, renegotiation timing.
    keys: KeySchedule,
    plane: DataPlane,
    push_sent: bool,
    data_rx: Option<Instant>,
    data_tx: Option<Instant>,
    ping_due: bool,
    close_at: Option<(Instant, String)>,
    /// AUTH_FAILED went out (it is sent once).
    auth_failed_sent: bool,
    created: Instant,
    /// The certificate's common name at connect: a renegotiation must present the same
    /// (2.6's common-name lock), as the username must stay the same.
    cert_cn: Option<String>,
    /// When the client last started a renegotiation it was allowed, and for which key-id.
    client_reneg: Option<(Instant, u8)>,
}

impl Peer {
    /// Not admitted yet: TLS or the credentials check still running.
    fn handshaking(&self) -> bool {
        matches!(self.state, PeerState::Handshake | PeerState::Authenticating)
    }

    /// Schedules the peer's removal at `at`, unless an earlier one is scheduled: nothing a
    /// client sends (EXIT after EXIT, PUSH_REQUEST after AUTH_FAILED) postpones its end.
    fn close_by(&mut self, at: Instant, why: String) {
        if self.close_at.as_ref().is_none_or(|(t, _)| at < *t) {
            self.close_at = Some((at, why));
        }
    }

    /// Publishes the schedule's keys to this peer's data plane.
    fn sync_keys(&mut self) {
        self.plane.send = self.keys.send_key().cloned();
        self.plane.recv = self.keys.recv_keys().to_vec();
        self.plane.generation += 1;
    }

    fn last_rx(&self) -> Instant {
        self.session
            .last_rx()
            .max(self.data_rx.unwrap_or(self.created))
    }

    fn last_tx(&self) -> Instant {
        self.session
            .last_tx()
            .max(self.data_tx)
            .unwrap_or(self.created)
    }

    fn iv_proto(&self) -> u32 {
        self.peer_info.iv_proto()
    }
}

/// The server.
pub struct Server {
    setup: Arc<ServerSetup>,
    params: SessionParams,
    server_ip: Ipv4Addr,
    netmask: Ipv4Addr,
    server_ip6: Option<(Ipv6Addr, u8)>,
    peers: BTreeMap<PeerId, Peer>,
    by_addr: HashMap<PeerAddr, PeerId>,
    pool4: Pool4,
    pool6: Option<Pool6>,
    cookies: CookieJar,
    /// Stateless answers to hard resets (`connect-freq-initial`, per source, no replays).
    resets: ResetLimiter,
    /// New sessions (`connect-freq`).
    connect_freq: Option<RateLimit>,
    verifier: TlsWrap,
    unix_time: u32,
    generation: u64,
    /// The last session number handed out.
    sessions: u64,
    events: VecDeque<ServerEvent>,
    stateless_out: VecDeque<(PeerAddr, Vec<u8>)>,
    touched: BTreeSet<PeerId>,
    scratch: Vec<u8>,
    shutting_down: bool,
}

/// Counts of what a server did, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounts {
    /// Peers currently known (any state).
    pub peers: usize,
    /// Peers with the tunnel up.
    pub connected: usize,
}

impl Server {
    /// A server at `now`; `unix_time` seeds the wrap's replay timestamps.
    pub fn new(setup: Arc<ServerSetup>, now: Instant, unix_time: u32) -> Server {
        let cfg = &setup.config;
        let prefix = cfg.network.1;
        let server_ip = cfg.server_ip;
        let netmask = Ipv4Addr::from(if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        });
        let server_ip6 = cfg
            .network6
            .map(|(n, bits)| (Ipv6Addr::from(u128::from(n) + 1), bits));
        let pool4 = match cfg.pool {
            Some((start, end)) => Pool4::new(start, end, cfg.network, server_ip),
            None => Pool4::fixed_only(cfg.network, server_ip),
        };
        let pool6 = cfg.pool6.map(|(base, bits)| {
            Pool6::new(
                base,
                bits,
                server_ip6.map_or(Ipv6Addr::UNSPECIFIED, |s| s.0),
            )
        });
        let wrap_overhead = TlsWrap::new(&setup.wrap, true, unix_time).overhead();
        let link = match (cfg.transport, setup.ipv6_link) {
            (ServerTransport::Udp, false) => 28,
            (ServerTransport::Udp, true) => 48,
            (ServerTransport::Tcp, false) => 42,
            (ServerTransport::Tcp, true) => 62,
        };
        let params = SessionParams {
            tls_timeout: cfg.tls_timeout,
            hand_window: cfg.hand_window,
            max_payload: crate::consts::MAX_PACKET_SIZE_DEFAULT - link - 38 - wrap_overhead,
        };
        Server {
            verifier: TlsWrap::new(&setup.wrap, true, unix_time),
            cookies: CookieJar::new(random_bytes::<32>(), now, cfg.hand_window),
            resets: {
                let (n, period) = cfg.connect_freq_initial;
                ResetLimiter::new(n, period, now)
            },
            connect_freq: cfg
                .connect_freq
                .map(|(n, period)| RateLimit::new(n, period, now)),
            params,
            server_ip,
            netmask,
            server_ip6,
            peers: BTreeMap::new(),
            by_addr: HashMap::new(),
            pool4,
            pool6,
            unix_time,
            generation: 1,
            sessions: 0,
            events: VecDeque::new(),
            stateless_out: VecDeque::new(),
            touched: BTreeSet::new(),
            scratch: Vec::with_capacity(2048),
            shutting_down: false,
            setup,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.setup.config
    }

    /// The server's own tunnel address and netmask.
    pub fn tunnel_address(&self) -> (Ipv4Addr, Ipv4Addr) {
        (self.server_ip, self.netmask)
    }

    /// The server's tunnel IPv6 address and prefix, if configured.
    pub fn tunnel_address6(&self) -> Option<(Ipv6Addr, u8)> {
        self.server_ip6
    }

    /// Changes whenever the data path's view changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Peer counts.
    pub fn counts(&self) -> ServerCounts {
        ServerCounts {
            peers: self.peers.len(),
            connected: self
                .peers
                .values()
                .filter(|p| p.state == PeerState::Connected)
                .count(),
        }
    }

    /// The data path's view.
    pub fn snapshot(&self) -> ServerSnapshot {
        let mut snap = ServerSnapshot {
            generation: self.generation,
            client_to_client: self.setup.config.client_to_client,
            ..ServerSnapshot::default()
        };
        for p in self.peers.values() {
            if p.plane.recv.is_empty() {
                continue;
            }
            let mut iroutes: Vec<(IpAddr, u8)> = p
                .overrides
                .iroutes
                .iter()
                .map(|(n, b)| (IpAddr::V4(*n), *b))
                .collect();
            iroutes.extend(
                p.overrides
                    .iroutes6
                    .iter()
                    .map(|(n, b)| (IpAddr::V6(*n), *b)),
            );
            if let Some(a) = p.ipv4 {
                snap.routes.add(IpAddr::V4(a), 32, p.id);
            }
            if let Some(a) = p.ipv6 {
                snap.routes.add(IpAddr::V6(a), 128, p.id);
            }
            for (n, b) in &iroutes {
                snap.routes.add(*n, *b, p.id);
            }
            snap.by_addr.insert(p.addr, p.id);
            snap.peers.insert(
                p.id,
                Arc::new(PeerView {
                    id: p.id,
                    session: p.serial,
                    addr: p.addr,
                    plane: p.plane.clone(),
                    ipv4: p.ipv4,
                    ipv6: p.ipv6,
                    iroutes,
                    common_name: p.common_name.clone().unwrap_or_else(|| "UNDEF".into()),
                }),
            );
        }
        snap
    }

    /// Keeps the fixed addresses of `client-config-dir` files (`ifconfig-push`,
    /// `ifconfig-ipv6-push`) out of dynamic leases, so a client with a fixed address never
    /// finds it leased to somebody else.
    pub fn reserve_fixed(&mut self, v4: &[Ipv4Addr], v6: &[Ipv6Addr]) {
        for a in v4 {
            self.pool4.reserve(*a);
        }
        if let Some(pool) = self.pool6.as_mut() {
            for a in v6 {
                pool.reserve(*a);
            }
        }
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next plaintext control-channel message of any peer (for the control tap).
    pub fn poll_control_message(&mut self) -> Option<(PeerId, crate::control::ControlMessage)> {
        self.peers
            .values_mut()
            .find_map(|p| p.session.poll_message().map(|m| (p.id, m)))
    }

    fn log(&mut self, msg: String) {
        self.events.push_back(ServerEvent::Log(msg));
    }

    fn bump(&mut self) {
        self.generation += 1;
    }

    /// Handles a control packet from `from`.
    pub fn handle_control(
        &mut self,
        now: Instant,
        from: PeerAddr,
        wire: &[u8],
    ) -> Result<(), DropReason> {
        if wire.len() > crate::consts::MAX_CONTROL_PACKET {
            return Err(DropReason::TooBig);
        }
        let (op, key_id) = peek_opcode(wire)?;
        if let Some(&id) = self.by_addr.get(&from) {
            // A new session from a known UDP address is a client restarted on the same port
            // (`lport`): its hard reset is answered statelessly, and its next packet (the
            // cookie echo, or P_CONTROL_WKC_V1) goes to admission, which replaces the old
            // peer once the cookie verifies. Packets of the peer's own session stay its.
            let new_session = matches!(from, PeerAddr::Udp(_))
                && self.peers.get(&id).is_some_and(|p| {
                    crate::wire::SessionId::read(wire.get(1..).unwrap_or(&[]))
                        != p.session.remote_session_id()
                });
            let restarted = new_session
                && (matches!(
                    op,
                    Opcode::ControlHardResetClientV2 | Opcode::ControlHardResetClientV3
                ) || key_id == 0
                    && matches!(op, Opcode::AckV1 | Opcode::ControlV1 | Opcode::ControlWkcV1));
            // A client may start a renegotiation once a second at most: each is a TLS
            // handshake's work for the server. Resends of the one in progress pass.
            if op == Opcode::ControlSoftResetV1
                && let Some(p) = self.peers.get(&id)
                && let Some((at, k)) = p.client_reneg
                && k != key_id
                && now.saturating_duration_since(at) < MIN_CLIENT_RENEG_INTERVAL
            {
                return Err(DropReason::RateLimited);
            }
            if !restarted {
                // A retransmitted P_CONTROL_WKC_V1 still carries the client key: strip it.
                let wire = if op == Opcode::ControlWkcV1 {
                    crate::tls_crypt_v2::split_wkc(wire).map_or(wire, |(p, _)| p)
                } else {
                    wire
                };
                let r = self.with_peer(now, id, |p, now| p.session.handle_packet(now, wire));
                return r.unwrap_or(Err(DropReason::UnknownPeer));
            }
        }
        if self.shutting_down {
            return Err(DropReason::Refused);
        }
        if op == Opcode::ControlHardResetClientV3 && key_id == 0 {
            return self.admit_tls_crypt_v2(now, from, wire);
        }
        if let (Opcode::ControlWkcV1, 0, PeerAddr::Udp(addr)) = (op, key_id, from) {
            return self.admit_wkc_cookie(now, addr, wire);
        }
        match from {
            PeerAddr::Tcp(_) => self.admit_tcp(now, from, wire),
            PeerAddr::Udp(addr) => match op {
                Opcode::ControlHardResetClientV2 if key_id == 0 => {
                    self.stateless_reply(now, addr, wire)
                }
                Opcode::AckV1 | Opcode::ControlV1 if key_id == 0 => {
                    self.admit_cookie(now, addr, wire)
                }
                _ => Err(DropReason::UnknownPeer),
            },
        }
    }

    /// Runs `f` on a peer and processes what it produced.
    fn with_peer<T>(
        &mut self,
        now: Instant,
        id: PeerId,
        f: impl FnOnce(&mut Peer, Instant) -> T,
    ) -> Option<T> {
        let peer = self.peers.get_mut(&id)?;
        let r = f(peer, now);
        self.touched.insert(id);
        self.process_peer_events(now, id);
        Some(r)
    }

    fn unwrap_reset(&mut self, wire: &[u8]) -> Result<(SessionId, Vec<u8>), DropReason> {
        let mut plain = std::mem::take(&mut self.scratch);
        let r = (|| {
            self.verifier.unwrap(wire, &mut plain)?;
            let pkt = ControlPacket::parse(&plain)?;
            if pkt.message_id != Some(0) || !pkt.session_id.is_defined() {
                return Err(DropReason::Malformed);
            }
            Ok(pkt.session_id)
        })();
        let out = plain.clone();
        self.scratch = plain;
        r.map(|sid| (sid, out))
    }

    fn stateless_reply(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        wire: &[u8],
    ) -> Result<(), DropReason> {
        let (client_sid, _) = self.unwrap_reset(wire)?;
        if !self.resets.allow(now, addr, client_sid) {
            return Err(DropReason::RateLimited);
        }
        let cookie = self.cookies.session_id(now, &addr, client_sid);
        let mut out = Vec::with_capacity(128);
        ControlSession::stateless_reset(&self.verifier, cookie, client_sid, &mut out)?;
        self.stateless_out.push_back((PeerAddr::Udp(addr), out));
        Ok(())
    }

    fn admit_cookie(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        wire: &[u8],
    ) -> Result<(), DropReason> {
        let wrap = TlsWrap::new(&self.setup.wrap, true, self.unix_time);
        self.admit_echoed_cookie(now, addr, wrap, wire)
    }

    /// The client's packet after our stateless reset, unwrapped with `wrap`: a session is
    /// created only when it echoes our cookie (2.6 rules: only the first packet may do so).
    fn admit_echoed_cookie(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        wrap: TlsWrap,
        packet: &[u8],
    ) -> Result<(), DropReason> {
        let mut plain = Vec::with_capacity(packet.len());
        wrap.unwrap(packet, &mut plain)?;
        let pkt = ControlPacket::parse(&plain)?;
        let cookie = pkt.remote_session_id.ok_or(DropReason::UnknownPeer)?;
        if pkt.acks.as_slice().iter().any(|a| *a > 1) || pkt.message_id.is_some_and(|m| m > 1) {
            return Err(DropReason::UnknownPeer);
        }
        if !self.cookies.verify(now, &addr, pkt.session_id, cookie) {
            return Err(DropReason::UnknownPeer);
        }
        let from = PeerAddr::Udp(addr);
        self.make_room_for(now, from)?;
        let session = ControlSession::new_server_cookie(
            self.setup.tls.clone(),
            wrap,
            self.params.clone(),
            cookie,
            pkt.session_id,
            now,
        );
        let id = self.insert_peer(now, from, session);
        self.with_peer(now, id, |p, now| p.session.handle_packet(now, packet))
            .unwrap_or(Err(DropReason::UnknownPeer))
    }

    /// Splits a tls-crypt-v2 packet from the wrapped client key behind it and opens that key
    /// with our server key: the packet, and the client's own wrap for it.
    fn open_wkc<'w>(&self, wire: &'w [u8]) -> Result<(&'w [u8], TlsWrap), DropReason> {
        let crate::wrap::WrapConfig::CryptV2Server { key } = &self.setup.wrap else {
            return Err(DropReason::BadOpcode);
        };
        let (packet, wkc) = crate::tls_crypt_v2::split_wkc(wire).ok_or(DropReason::Malformed)?;
        let (kc, _metadata) = key.unwrap(wkc).map_err(|_| DropReason::BadHmac)?;
        let wrap = TlsWrap::new(
            &crate::wrap::WrapConfig::Crypt { key: kc },
            true,
            self.unix_time,
        );
        Ok((packet, wrap))
    }

    /// A tls-crypt-v2 client's first reset: its wrapped key (WKc) behind the packet must
    /// authenticate with our server key before anything else; the session then uses the
    /// client's own key. State is created here, over UDP too (as 2.6 does for clients
    /// without early negotiation): forging a WKc needs a client key, and the admission rate
    /// limit bounds replays of a captured one.
    fn admit_tls_crypt_v2(
        &mut self,
        now: Instant,
        from: PeerAddr,
        wire: &[u8],
    ) -> Result<(), DropReason> {
        let (packet, wrap) = self.open_wkc(wire)?;
        if let PeerAddr::Udp(addr) = from {
            // The session id travels in clear in front of the tls-crypt packet.
            let sid = SessionId::read(packet.get(1..).unwrap_or(&[])).unwrap_or_default();
            if !self.resets.allow(now, addr, sid) {
                return Err(DropReason::RateLimited);
            }
        }
        // A client announcing early negotiation (wrap packet-id 0x0f……, as 2.6 clients do)
        // gets the stateless cookie reset over UDP, asking it to resend its wrapped key with
        // its next packet (P_CONTROL_WKC_V1); only then is a session created.
        let early_neg = packet
            .get(CONTROL_HEADER_LEN..CONTROL_HEADER_LEN + 4)
            .is_some_and(|b| b[0] == 0x0f);
        if let (true, PeerAddr::Udp(addr)) = (early_neg, from) {
            let mut plain = Vec::with_capacity(packet.len());
            wrap.unwrap(packet, &mut plain)?;
            let pkt = ControlPacket::parse(&plain)?;
            if pkt.message_id != Some(0) || !pkt.session_id.is_defined() {
                return Err(DropReason::Malformed);
            }
            let cookie = self.cookies.session_id(now, &addr, pkt.session_id);
            // TLV: type EARLY_NEG_FLAGS (1), length 2, flags RESEND_WKC (1).
            let tlv = [0, 1, 0, 2, 0, 1];
            let mut out = Vec::with_capacity(128);
            ControlSession::stateless_reset_with(&wrap, cookie, pkt.session_id, &tlv, &mut out)?;
            self.stateless_out.push_back((from, out));
            return Ok(());
        }
        self.make_room_for(now, from)?;
        let session = ControlSession::new_server(
            self.setup.tls.clone(),
            wrap,
            self.params.clone(),
            SessionId(random_bytes::<8>()),
            packet,
            now,
        )?;
        let id = self.insert_peer(now, from, session);
        self.touched.insert(id);
        Ok(())
    }

    /// The third packet of a stateless tls-crypt-v2 handshake: P_CONTROL_WKC_V1, the client's
    /// first TLS bytes plus its wrapped key again. The key must authenticate and the session
    /// id must be our cookie before a session exists.
    fn admit_wkc_cookie(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        wire: &[u8],
    ) -> Result<(), DropReason> {
        let (packet, wrap) = self.open_wkc(wire)?;
        self.admit_echoed_cookie(now, addr, wrap, packet)?;
        if let Some(&id) = self.by_addr.get(&PeerAddr::Udp(addr)) {
            self.log(format!(
                "peer {id}: tls-crypt-v2 client admitted by cookie (its key came back in P_CONTROL_WKC_V1)"
            ));
        }
        Ok(())
    }

    fn admit_tcp(&mut self, now: Instant, from: PeerAddr, wire: &[u8]) -> Result<(), DropReason> {
        self.check_capacity(now, from)?;
        let wrap = TlsWrap::new(&self.setup.wrap, true, self.unix_time);
        let sid = SessionId(random_bytes::<8>());
        let session = ControlSession::new_server(
            self.setup.tls.clone(),
            wrap,
            self.params.clone(),
            sid,
            wire,
            now,
        )?;
        let id = self.insert_peer(now, from, session);
        self.touched.insert(id);
        Ok(())
    }

    /// Before a new session from `from`: the old one from that address goes, and the server
    /// must have room.
    fn make_room_for(&mut self, now: Instant, from: PeerAddr) -> Result<(), DropReason> {
        if let Some(old) = self.by_addr.get(&from).copied() {
            self.remove_peer(
                now,
                old,
                "replaced by a new session from the same address".into(),
            );
        }
        self.check_capacity(now, from)
    }

    /// Room for a new session from `from`: clients still handshaking are counted apart from
    /// admitted ones (so a flood of handshakes that never authenticate cannot fill
    /// `max-clients`), at most `max-clients` (or [`MIN_HANDSHAKES`]) of them at once and
    /// [`HANDSHAKES_PER_SOURCE`]
    /// from one UDP address; `connect-freq` bounds how fast sessions are made.
    fn check_capacity(&mut self, now: Instant, from: PeerAddr) -> Result<(), DropReason> {
        let max = self.setup.config.max_clients as usize;
        let source = match from {
            PeerAddr::Udp(a) => Some(a.ip()),
            PeerAddr::Tcp(_) => None,
        };
        let (mut handshaking, mut same_source) = (0, 0);
        for p in self.peers.values().filter(|p| p.handshaking()) {
            handshaking += 1;
            if source.is_some() && matches!(p.addr, PeerAddr::Udp(a) if Some(a.ip()) == source) {
                same_source += 1;
            }
        }
        if self.peers.len() - handshaking >= max || handshaking >= max.max(MIN_HANDSHAKES) {
            return Err(DropReason::Refused);
        }
        if same_source >= HANDSHAKES_PER_SOURCE {
            return Err(DropReason::RateLimited);
        }
        if let Some(limit) = self.connect_freq.as_mut()
            && !limit.allow(now)
        {
            return Err(DropReason::RateLimited);
        }
        Ok(())
    }

    /// Clients admitted (authenticated or connected): what `max-clients` bounds.
    fn admitted(&self) -> usize {
        self.peers
            .values()
            .filter(|p| matches!(p.state, PeerState::Authenticated | PeerState::Connected))
            .count()
    }

    fn insert_peer(&mut self, now: Instant, addr: PeerAddr, session: ControlSession) -> PeerId {
        self.sessions += 1;
        // Lowest free peer-id (2.6 uses array slots the same way).
        let id = (0..).find(|i| !self.peers.contains_key(i)).unwrap_or(0);
        // 2.6 randomises reneg-sec to 90–100 % per client so renegotiations do not align.
        let keys = KeySchedule::new(
            ScheduleConfig {
                reneg_sec: self.setup.config.reneg_sec,
                reneg_sec_min: 0.9,
                reneg_pkts: self.setup.config.reneg_pkts,
                reneg_bytes: self.setup.config.reneg_bytes,
                tran_window: self.setup.config.tran_window,
            },
            now,
            random_jitter(),
        );
        let plane = DataPlane {
            framing: self.setup.config.framing.with_tx_compression(
                self.setup.config.compression.allow
                    == crate::options::compress::AllowCompression::Yes,
            ),
            replay_window: self.setup.config.replay_window,
            ..DataPlane::default()
        };
        self.peers.insert(
            id,
            Peer {
                id,
                serial: self.sessions,
                addr,
                session,
                state: PeerState::Handshake,
                common_name: None,
                username: None,
                peer_info: PeerInfo::default(),
                cipher: None,
                ipv4: None,
                ipv6: None,
                overrides: ClientOverrides::default(),
                refusal: None,
                keys,
                plane,
                push_sent: false,
                data_rx: None,
                data_tx: None,
                ping_due: false,
                close_at: None,
                auth_failed_sent: false,
                created: now,
                cert_cn: None,
                client_reneg: None,
            },
        );
        self.by_addr.insert(addr, id);
        self.log(format!("peer {id} from {addr}: new session"));
        id
    }

    fn remove_peer(&mut self, _now: Instant, id: PeerId, reason: String) {
        let Some(p) = self.peers.remove(&id) else {
            return;
        };
        if self.by_addr.get(&p.addr) == Some(&id) {
            self.by_addr.remove(&p.addr);
        }
        if let Some(a) = p.ipv4 {
            self.pool4.release(a);
        }
        if let (Some(a), Some(pool)) = (p.ipv6, self.pool6.as_mut()) {
            pool.release(a);
        }
        self.touched.remove(&id);
        if !p.plane.recv.is_empty() {
            self.bump();
        }
        if matches!(p.addr, PeerAddr::Tcp(_)) {
            self.events.push_back(ServerEvent::CloseTransport(p.addr));
        }
        self.events.push_back(ServerEvent::PeerGone {
            peer: id,
            addr: p.addr,
            reason,
        });
    }

    /// The TCP connection of a peer closed.
    pub fn handle_transport_closed(&mut self, now: Instant, addr: PeerAddr) {
        if let Some(id) = self.by_addr.get(&addr).copied() {
            self.remove_peer(now, id, "connection closed".into());
        }
    }

    /// An authenticated data packet of `peer`'s `session` arrived from a new UDP address.
    pub fn handle_float(&mut self, peer: PeerId, session: u64, addr: PeerAddr) {
        let Some(p) = self.peers.get_mut(&peer).filter(|p| p.serial == session) else {
            return;
        };
        if p.addr == addr {
            return;
        }
        // Never onto an address another live peer holds: a client that can forge source
        // addresses would take the other one's traffic (2.6 refuses the same float).
        if let Some(other) = self.by_addr.get(&addr).copied()
            && other != peer
            && self.peers.contains_key(&other)
        {
            self.log(format!(
                "peer {peer}: float to {addr} refused: peer {other} is there"
            ));
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let old = p.addr;
        p.addr = addr;
        if self.by_addr.get(&old) == Some(&peer) {
            self.by_addr.remove(&old);
        }
        self.by_addr.insert(addr, peer);
        self.bump();
        self.log(format!("peer {peer} floated from {old} to {addr}"));
    }

    /// The data path saw an OCC EXIT from `peer`'s `session`.
    pub fn handle_exit_notification(&mut self, now: Instant, peer: PeerId, session: u64) {
        if self.peers.get(&peer).is_some_and(|p| p.serial == session) {
            self.remove_peer(now, peer, "client exited (explicit-exit-notify)".into());
        }
    }

    /// Tells the server when the data path last received from / sent to `peer`.
    pub fn set_peer_activity(
        &mut self,
        peer: PeerId,
        last_rx: Option<Instant>,
        last_tx: Option<Instant>,
    ) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.data_rx = last_rx.max(p.data_rx);
            p.data_tx = last_tx.max(p.data_tx);
        }
    }

    /// Ids of all peers.
    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    /// The verdict for an [`ServerEvent::AuthRequest`]. A verdict for another session than
    /// the peer's current one (the peer-id was reused meanwhile) is ignored: it must never
    /// admit somebody it did not check.
    pub fn handle_auth_result(
        &mut self,
        now: Instant,
        peer: PeerId,
        session: u64,
        key_id: u8,
        result: AuthResult,
    ) {
        let Some(p) = self.peers.get_mut(&peer).filter(|p| p.serial == session) else {
            return;
        };
        let initial = p.state == PeerState::Authenticating;
        if initial {
            let verdict = if result.ok {
                self.admit_client(now, peer, result.overrides.unwrap_or_default())
            } else {
                Err(result
                    .reason
                    .unwrap_or_else(|| "authentication failed".into()))
            };
            let Some(p) = self.peers.get_mut(&peer) else {
                return;
            };
            match verdict {
                Ok(()) => p.state = PeerState::Authenticated,
                Err(why) => {
                    p.state = PeerState::Refused;
                    p.refusal = Some(why.clone());
                    // The slot goes soon whatever the client does: AUTH_FAILED goes out when
                    // the key state is active (and moves this earlier), but a client that
                    // never gets that far — or never acknowledges — must not keep it.
                    p.close_by(now + REFUSED_GRACE, format!("refused: {why}"));
                    self.log(format!("peer {peer}: refused: {why}"));
                }
            }
        } else if !result.ok {
            let why = result
                .reason
                .unwrap_or_else(|| "re-authentication failed".into());
            self.with_peer(now, peer, |p, _| {
                let _ = p.session.send_text("AUTH_FAILED");
            });
            if let Some(p) = self.peers.get_mut(&peer) {
                p.close_by(
                    now + Duration::from_secs(1),
                    format!("renegotiation refused: {why}"),
                );
            }
            return;
        }
        let msg = self.server_key_method();
        self.with_peer(now, peer, |p, _| {
            let _ = p.session.send_key_method(key_id, &msg);
        });
    }

    /// Accepts an authenticated client: cipher, key derivation, addresses, duplicate CN.
    fn admit_client(
        &mut self,
        now: Instant,
        peer: PeerId,
        overrides: ClientOverrides,
    ) -> Result<(), String> {
        if overrides.disable {
            return Err("client disabled in client-config-dir".into());
        }
        if self.admitted() >= self.setup.config.max_clients as usize {
            return Err(format!(
                "server full (max-clients {})",
                self.setup.config.max_clients
            ));
        }
        let setup = Arc::clone(&self.setup);
        let cfg = &setup.config;
        let Some(p) = self.peers.get(&peer) else {
            return Err("peer gone".into());
        };
        let offered = p.peer_info.ciphers();
        let cipher = cfg
            .data_ciphers
            .iter()
            .find(|c| offered.iter().any(|o| o.eq_ignore_ascii_case(c.name())))
            .copied()
            .ok_or_else(|| {
                "Data channel cipher negotiation failed (no shared cipher)".to_owned()
            })?;
        // Clients before 2.6 (no IV_PROTO bit 3) get the legacy PRF, as 2.6 does, unless
        // `force-tls-key-material-export`.
        if p.iv_proto() & iv_proto::TLS_KEY_EXPORT == 0 && cfg.force_tls_key_material_export {
            return Err(
                "client does not support TLS-EKM key derivation and force-tls-key-material-export is set"
                    .into(),
            );
        }
        let cn = p.common_name.clone();
        if !cfg.duplicate_cn
            && let Some(cn) = &cn
        {
            let dups: Vec<PeerId> = self
                .peers
                .values()
                .filter(|o| {
                    o.id != peer
                        && o.common_name.as_ref() == Some(cn)
                        && matches!(o.state, PeerState::Authenticated | PeerState::Connected)
                })
                .map(|o| o.id)
                .collect();
            for d in dups {
                self.remove_peer(
                    now,
                    d,
                    format!("replaced by a new connection with common name '{cn}'"),
                );
            }
        }
        let lease = cn.as_deref().filter(|_| !cfg.duplicate_cn);
        let ipv4 = self
            .pool4
            .lease(lease, overrides.ifconfig_push)
            .map_err(|e| e.to_string())?;
        let ipv6 = match self.pool6.as_mut() {
            Some(pool) => match pool.acquire(lease, overrides.ifconfig_ipv6_push) {
                Ok(a) => Some(a),
                Err(e) => {
                    if let Some(a) = ipv4 {
                        self.pool4.release(a);
                    }
                    return Err(e.to_string());
                }
            },
            None => None,
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err("peer gone".into());
        };
        p.cipher = Some(cipher);
        p.ipv4 = ipv4;
        p.ipv6 = ipv6;
        p.overrides = overrides;
        Ok(())
    }

    fn server_key_method(&self) -> KeyMethod2 {
        let cfg = &self.setup.config;
        KeyMethod2 {
            pre_master: None,
            random1: random_bytes::<32>(),
            random2: random_bytes::<32>(),
            options: options_string(
                true,
                cfg.transport == ServerTransport::Tcp,
                cfg.tun_mtu,
                cfg.dev_type == DevType::Tap,
                cfg.data_ciphers
                    .first()
                    .copied()
                    .unwrap_or(Cipher::Aes256Gcm),
                matches!(self.setup.wrap, WrapConfig::Auth { .. }),
            ),
            username: None,
            password: None,
            peer_info: None,
        }
    }

    fn process_peer_events(&mut self, now: Instant, id: PeerId) {
        loop {
            let Some(p) = self.peers.get_mut(&id) else {
                return;
            };
            let Some(ev) = p.session.poll_event() else {
                return;
            };
            match ev {
                SessionEvent::TlsStarted { .. } => {}
                SessionEvent::Renegotiating { key_id } => {
                    p.keys.started(now);
                    p.client_reneg = Some((now, key_id));
                    self.log(format!(
                        "peer {id}: client started renegotiation of key-id {key_id}"
                    ));
                }
                SessionEvent::PeerKeyMethod { key_id, message } => {
                    self.on_peer_key_method(now, id, key_id, *message)
                }
                SessionEvent::KeyMaterialReady { key_id } => self.on_key_material(id, key_id),
                SessionEvent::KeyActive { key_id } => self.on_key_active(now, id, key_id),
                SessionEvent::KeyFailed { key_id, reason } => {
                    let initial = p.state != PeerState::Connected;
                    if initial {
                        self.remove_peer(now, id, format!("handshake failed: {reason}"));
                        return;
                    }
                    if p.session.current_key_id() == Some(key_id) {
                        p.session.remove_key_state(key_id);
                    }
                    // Whichever key failed, it must not be switched to later.
                    if p.keys.failed(now, key_id) {
                        p.sync_keys();
                        self.bump();
                    }
                    self.events.push_back(ServerEvent::PeerKeyFailed {
                        peer: id,
                        reason: format!("renegotiation of key-id {key_id} failed: {reason}"),
                    });
                }
                SessionEvent::Text { text, .. } => self.on_text(now, id, &text),
            }
        }
    }

    fn on_peer_key_method(&mut self, now: Instant, id: PeerId, key_id: u8, msg: KeyMethod2) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let cert_cn = p
            .session
            .peer_certificates(key_id)
            .and_then(|c| {
                c.first()
                    .and_then(|der| crate::tls::peer_identity(der).ok())
            })
            .map(|i| i.common_name);
        if key_id != 0 && p.state == PeerState::Connected {
            // A renegotiation is the same client: another certificate or another username
            // ends the session (2.6 locks both; otherwise a client could swap identities
            // and keep the address, routes and ccd rights it got for the first).
            let changed = if cert_cn != p.cert_cn {
                Some(format!(
                    "common name changed in renegotiation ({} -> {})",
                    p.cert_cn.as_deref().unwrap_or("none"),
                    cert_cn.as_deref().unwrap_or("none")
                ))
            } else if msg.username.is_some() && msg.username != p.username {
                Some("username changed in renegotiation".to_owned())
            } else {
                None
            };
            if let Some(why) = changed {
                self.remove_peer(now, id, why);
                return;
            }
        }
        if key_id == 0 || p.state != PeerState::Connected {
            p.peer_info = PeerInfo::parse(msg.peer_info.as_deref().unwrap_or(""));
            p.cert_cn = cert_cn.clone();
            p.username = msg.username.clone();
            p.common_name = if self.setup.config.username_as_common_name {
                msg.username.clone().or(cert_cn)
            } else {
                cert_cn
            };
            p.state = PeerState::Authenticating;
        }
        // Credentials go to scripts (a via-file script reads them line by line), to the
        // client-config-dir lookup and to logs: control characters in a username, and line
        // breaks or NUL in a password, are refused before any of that sees them.
        if let Some(why) = bad_credentials(msg.username.as_deref(), msg.password.as_deref()) {
            let serial = p.serial;
            self.log(format!("peer {id}: refused: {why}"));
            let refused = AuthResult {
                ok: false,
                reason: Some(why),
                ..AuthResult::default()
            };
            self.handle_auth_result(now, id, serial, key_id, refused);
            return;
        }
        let ev = ServerEvent::AuthRequest {
            peer: id,
            session: p.serial,
            key_id,
            common_name: p.common_name.clone(),
            username: msg.username.clone(),
            // Handed to the shell's verifier; the message's copy is wiped when it drops.
            password: msg.password.clone(),
            addr: p.addr,
        };
        self.events.push_back(ev);
    }

    fn derive(&self, p: &Peer, key_id: u8) -> Option<Arc<DataKeys>> {
        let km = if p.iv_proto() & iv_proto::TLS_KEY_EXPORT == 0 {
            p.session.prf_key_material(key_id)?
        } else {
            p.session.export_key_material(key_id)?
        };
        Some(Arc::new(
            DataKeys::with_auth(p.cipher?, self.setup.config.auth_digest, &km, key_id, true)
                .counting_bytes(self.setup.config.reneg_bytes.is_some()),
        ))
    }

    fn on_key_material(&mut self, id: PeerId, key_id: u8) {
        let Some(p) = self.peers.get(&id) else { return };
        if p.state != PeerState::Connected || p.keys.has_key(key_id) {
            return;
        }
        let Some(k) = self.derive(p, key_id) else {
            return;
        };
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.keys.material_ready(k) {
            p.sync_keys();
            self.bump();
        }
    }

    fn on_key_active(&mut self, now: Instant, id: PeerId, key_id: u8) {
        let Some(p) = self.peers.get(&id) else { return };
        match p.state {
            PeerState::Authenticated => {
                let Some(k) = self.derive(p, key_id) else {
                    self.remove_peer(now, id, "key export failed".into());
                    return;
                };
                let v2 = p.iv_proto() & iv_proto::DATA_V2 != 0;
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                let config = &self.setup.config;
                p.plane.fragment =
                    DataPlane::fragmenter(config.fragment, k.cipher(), config.auth_digest, v2);
                p.keys.start(now, k);
                p.sync_keys();
                p.plane.peer_id = v2.then_some(id);
                p.state = PeerState::Connected;
                let created = p.created;
                let push_now = p.iv_proto() & iv_proto::REQUEST_PUSH != 0;
                self.bump();
                if push_now {
                    self.send_push_reply(now, id);
                }
                self.events.push_back(ServerEvent::PeerConnected {
                    peer: id,
                    handshake: now.saturating_duration_since(created),
                });
            }
            PeerState::Refused => {
                let why = p.refusal.clone().unwrap_or_default();
                self.with_peer(now, id, |p, _| {
                    if !p.auth_failed_sent {
                        let _ = p.session.send_text("AUTH_FAILED");
                        p.auth_failed_sent = true;
                    }
                });
                if let Some(p) = self.peers.get_mut(&id) {
                    p.close_by(now + Duration::from_secs(2), format!("refused: {why}"));
                }
            }
            PeerState::Connected => {
                self.on_key_material(id, key_id);
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                // The client derived these keys before we became active (it is active once
                // our key-method-2 arrives), so sending on them is safe at once.
                let Some(took) = p.keys.activated(now, key_id, Duration::ZERO) else {
                    p.keys.failed(now, key_id);
                    self.events.push_back(ServerEvent::PeerKeyFailed {
                        peer: id,
                        reason: format!("key export failed for key-id {key_id}"),
                    });
                    return;
                };
                p.sync_keys();
                p.session.retire_old_key_states();
                self.bump();
                self.events.push_back(ServerEvent::PeerKeysChanged {
                    peer: id,
                    key_id,
                    took,
                });
            }
            PeerState::Handshake | PeerState::Authenticating => {}
        }
    }

    fn on_text(&mut self, now: Instant, id: PeerId, text: &str) {
        let Some(p) = self.peers.get(&id) else { return };
        if text == "PUSH_REQUEST" {
            match p.state {
                PeerState::Connected if !p.push_sent => self.send_push_reply(now, id),
                // Once per peer: a refused client asking again and again (and not
                // acknowledging) must not grow what we keep for it.
                PeerState::Refused if !p.auth_failed_sent => {
                    self.with_peer(now, id, |p, _| {
                        let _ = p.session.send_text("AUTH_FAILED");
                        p.auth_failed_sent = true;
                    });
                }
                _ => {}
            }
        } else if text == "EXIT" {
            if let Some(p) = self.peers.get_mut(&id) {
                // Let the ACK of the EXIT go out first. Repeated EXITs do not postpone it.
                p.close_by(
                    now + Duration::from_millis(500),
                    "client exited (EXIT)".into(),
                );
            }
        } else {
            self.log(format!("peer {id}: control message ignored: {text}"));
        }
    }

    /// The PUSH_REPLY options for a peer, in 2.6's order.
    fn push_options(&self, p: &Peer) -> Vec<String> {
        let cfg = &self.setup.config;
        let mut o: Vec<String> = vec![];
        if !p.overrides.push_reset {
            o.extend(cfg.pushes.iter().cloned());
        }
        o.extend(p.overrides.pushes.iter().cloned());
        let iv = p.iv_proto();
        if iv & iv_proto::DNS_OPTION != 0 {
            o.extend(cfg.dns.iter().cloned());
        } else if !cfg.dns.is_empty() {
            // Older clients get the equivalent dhcp-options.
            let mut d = PushedOptions::default();
            for l in &cfg.dns {
                let _ = d.apply(l, &[]);
            }
            for s in d.dns_servers.values() {
                for (a, _) in &s.addresses {
                    o.push(format!(
                        "dhcp-option DNS{} {a}",
                        if a.is_ipv6() { "6" } else { "" }
                    ));
                }
                for dom in &s.resolve_domains {
                    o.push(format!("dhcp-option DOMAIN {dom}"));
                }
            }
            for dom in &d.dns_search_domains {
                o.push(format!("dhcp-option DOMAIN-SEARCH {dom}"));
            }
        }
        match cfg.pushed_gateway {
            PushedGateway::Address(gw) => o.push(format!("route-gateway {gw}")),
            PushedGateway::Dhcp => o.push("route-gateway dhcp".into()),
            PushedGateway::None => {}
        }
        // A tap client's address always comes with a netmask: topology is a tun matter.
        if cfg.dev_type == DevType::Tun {
            o.push("topology subnet".into());
        }
        if let (Some(ping), Some(restart)) = (cfg.ping, cfg.ping_restart) {
            o.push(format!("ping {}", ping.as_secs()));
            o.push(format!("ping-restart {}", restart.as_secs()));
        }
        if let (Some(a), Some((srv, bits))) = (p.ipv6, self.server_ip6) {
            o.push(format!("ifconfig-ipv6 {a}/{bits} {srv}"));
        }
        if let Some(a) = p.ipv4 {
            o.push(format!("ifconfig {a} {}", self.netmask));
        }
        if iv & iv_proto::DATA_V2 != 0 {
            o.push(format!("peer-id {}", p.id));
        }
        if let Some(c) = p.cipher {
            o.push(format!("cipher {}", c.name()));
        }
        let ekm = iv & iv_proto::TLS_KEY_EXPORT != 0;
        match (iv & iv_proto::CC_EXIT_NOTIFY != 0, ekm) {
            (true, true) => o.push("protocol-flags cc-exit tls-ekm".into()),
            (true, false) => o.push("protocol-flags cc-exit".into()),
            (false, true) => o.push("key-derivation tls-ekm".into()),
            (false, false) => {}
        }
        if p.peer_info.get("IV_MTU").is_some() {
            o.push(format!("tun-mtu {}", cfg.tun_mtu));
        }
        o
    }

    fn send_push_reply(&mut self, now: Instant, id: PeerId) {
        let Some(p) = self.peers.get(&id) else { return };
        let messages = split_push_reply(&self.push_options(p));
        self.with_peer(now, id, |p, _| {
            for m in &messages {
                let _ = p.session.send_text(m);
            }
            p.push_sent = true;
        });
    }

    /// Starts a graceful shutdown: connected clients are told to reconnect (`RESTART`) when
    /// `explicit-exit-notify` is configured; no new clients are admitted.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        if self.setup.config.explicit_exit_notify == 0 {
            return;
        }
        let ids: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Connected)
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.with_peer(now, id, |p, _| {
                let _ = p.session.send_text("RESTART");
            });
        }
    }

    /// Fires timers of all peers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.peer_timeout(now, id);
        }
    }

    fn peer_timeout(&mut self, now: Instant, id: PeerId) {
        let cfg_ping = self.setup.config.ping;
        let cfg_restart = self.setup.config.ping_restart;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.session.handle_timeout(now);
        self.touched.insert(id);
        self.process_peer_events(now, id);
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if let Some((at, why)) = &p.close_at
            && now >= *at
        {
            let why = why.clone();
            self.remove_peer(now, id, why);
            return;
        }
        if p.state != PeerState::Connected {
            // A client that never finished (or never asked for its push) is dropped at the
            // hand-window like in 2.6.
            if now >= p.created + self.setup.config.hand_window {
                self.remove_peer(
                    now,
                    id,
                    "handshake did not complete within hand-window".into(),
                );
            }
            return;
        }
        // The server waits twice the pushed ping-restart (2.6 semantics).
        if let Some(r) = cfg_restart
            && now >= p.last_rx() + r * 2
        {
            self.remove_peer(
                now,
                id,
                format!("inactivity timeout ({} s, ping-restart)", (r * 2).as_secs()),
            );
            return;
        }
        if let Some(ping) = cfg_ping
            && now >= p.last_tx() + ping
        {
            p.ping_due = true;
        }
        if p.keys.on_timeout(now) {
            p.sync_keys();
            self.generation += 1;
        }
        // reneg-sec (with this peer's jitter), or the sending key near its packet-id limit.
        if p.keys.due(now)
            && let Some(k) = p.session.renegotiate(now)
        {
            p.keys.started(now);
            self.log(format!("peer {id}: renegotiating, new key-id {k}"));
        }
    }

    /// Earliest time [`Server::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        for p in self.peers.values() {
            if let Some(x) = p.session.poll_timeout() {
                min(x);
            }
            if let Some((at, _)) = &p.close_at {
                min(*at);
            }
            if p.state != PeerState::Connected {
                min(p.created + self.setup.config.hand_window);
                continue;
            }
            if let Some(r) = self.setup.config.ping_restart {
                min(p.last_rx() + r * 2);
            }
            if let Some(ping) = self.setup.config.ping {
                min(p.last_tx() + ping);
            }
            if let Some(x) = p.keys.next_deadline() {
                min(x);
            }
        }
        t
    }

    /// The next packet to send and where; appended to `out`.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<PeerAddr> {
        if let Some((to, pkt)) = self.stateless_out.pop_front() {
            out.extend_from_slice(&pkt);
            return Some(to);
        }
        while let Some(&id) = self.touched.iter().next() {
            if let Some(p) = self.peers.get_mut(&id) {
                if p.session.poll_transmit(now, out) {
                    return Some(p.addr);
                }
                if p.ping_due {
                    p.ping_due = false;
                    if let Some(keys) = p.plane.send.clone() {
                        let start = out.len();
                        out.resize(start + crate::data::seal_room(PING_MAGIC.len()), 0);
                        match p.plane.seal_whole(&keys, &PING_MAGIC, &mut out[start..]) {
                            Ok(n) => {
                                out.truncate(start + n);
                                p.data_tx = Some(now);
                                return Some(p.addr);
                            }
                            Err(_) => out.truncate(start),
                        }
                    }
                }
                // Anything produced by events handled during transmit goes out next round.
                if p.session.wants_transmit() {
                    continue;
                }
            }
            self.touched.remove(&id);
        }
        None
    }
}

/// Splits push options into PUSH_REPLY messages of at most ~1 KB (2.6's `PUSH_BUNDLE_SIZE`
/// minus its reserve), marking parts with `push-continuation 2` and the last one with `1`.
pub fn split_push_reply(options: &[String]) -> Vec<String> {
    const LIMIT: usize = 1024 - 84;
    let mut msgs = vec![];
    let mut cur = String::from("PUSH_REPLY");
    for o in options {
        if cur.len() + 1 + o.len() > LIMIT && cur != "PUSH_REPLY" {
            cur.push_str(",push-continuation 2");
            msgs.push(std::mem::replace(&mut cur, String::from("PUSH_REPLY")));
        }
        cur.push(',');
        cur.push_str(o);
    }
    if !msgs.is_empty() {
        cur.push_str(",push-continuation 1");
    }
    msgs.push(cur);
    msgs
}

/// Why credentials are refused before any check sees them, if they are.
fn bad_credentials(username: Option<&str>, password: Option<&str>) -> Option<String> {
    if let Some(u) = username
        && u.chars().any(char::is_control)
    {
        return Some(format!(
            "username with control characters ({})",
            u.escape_debug()
        ));
    }
    if password.is_some_and(|p| p.contains(['\n', '\r', '\0'])) {
        return Some("password with a line break or NUL".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_reply_split_marks_continuation() {
        let opts: Vec<String> = (0..80)
            .map(|i| format!("route 198.19.{i}.0 255.255.255.0"))
            .collect();
        let msgs = split_push_reply(&opts);
        assert!(msgs.len() >= 3);
        for m in &msgs[..msgs.len() - 1] {
            assert!(m.ends_with(",push-continuation 2"), "{m}");
            assert!(m.len() <= 1024);
        }
        assert!(msgs.last().unwrap().ends_with(",push-continuation 1"));
        let total: usize = msgs.iter().map(|m| m.matches("route ").count()).sum();
        assert_eq!(total, 80);
        assert_eq!(
            split_push_reply(&["ping 10".into()]),
            vec!["PUSH_REPLY,ping 10"]
        );
    }
}
