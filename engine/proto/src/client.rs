//! The OpenVPN client as a sans-I/O state machine.
//!
//! Drive it like quinn-proto's `Connection`:
//!
//! * inputs: [`Client::handle_control`] for control packets from the link, [`Client::handle_timeout`]
//!   when [`Client::poll_timeout`] passes, [`Client::set_data_activity`] with what the data path saw,
//!   [`Client::close`] on shutdown;
//! * outputs: [`Client::poll_transmit`] (control packets, keepalive pings, exit notifications),
//!   [`Client::poll_event`], and [`Client::data_plane`], the keys the data path seals and opens
//!   with (re-read it whenever [`Client::data_plane_generation`] changes).
//!
//! Data packets themselves never pass through here; the data path opens and seals them with the
//! [`DataPlane`] so that the control state is not on the hot path.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::consts::{PING_MAGIC, PUSH_REQUEST_INTERVAL};
use crate::control::{ControlSession, SessionEvent, SessionParams, random_bytes};
use crate::data::{Cipher, DataKeys, Framing, occ_exit_payload};
use crate::fragment::{FragmentOption, Fragmenter};
use crate::key_method::{KeyMethod2, client_peer_info, options_string};
use crate::key_schedule::{KeySchedule, ScheduleConfig, random_jitter};
use crate::options::client::{ClientConfig, Transport};
use crate::options::push::{PushedOptions, split_push_reply};
use crate::stage::DropReason;
use crate::wire::DataHeader;
use crate::wrap::{TlsWrap, WrapConfig};

/// Everything the client needs, with key material already loaded.
#[derive(Clone)]
pub struct ClientSetup {
    /// rustls client config (CA, our identity, OpenVPN peer checks).
    pub tls: Arc<rustls::ClientConfig>,
    /// Control-channel wrap.
    pub wrap: WrapConfig,
    /// Link transport.
    pub transport: Transport,
    /// True when the link is IPv6 (control packet size budget).
    pub ipv6_link: bool,
    /// Data ciphers offered.
    pub ciphers: Vec<Cipher>,
    /// `data-ciphers-fallback`: used when the server pushes no cipher.
    pub fallback_cipher: Option<Cipher>,
    /// `auth`: the HMAC digest of CBC data channels.
    pub auth: crate::wrap::Digest,
    /// `auth-user-pass` credentials.
    pub credentials: Option<(String, String)>,
    /// Our tun MTU.
    pub tun_mtu: u16,
    /// `dev tap`: Ethernet frames (announced in the options string).
    pub tap: bool,
    /// `reneg-sec` (zero = never initiate).
    pub reneg_sec: Duration,
    /// `reneg-pkts`: renegotiate after this many packets sent with a key.
    pub reneg_pkts: Option<u64>,
    /// `reneg-bytes`: renegotiate after this many bytes sent with a key.
    pub reneg_bytes: Option<u64>,
    /// `hand-window`.
    pub hand_window: Duration,
    /// `tls-timeout`.
    pub tls_timeout: Duration,
    /// `tran-window`.
    pub tran_window: Duration,
    /// `ping` from the config (a pushed value wins).
    pub ping: Option<Duration>,
    /// `ping-restart` from the config (a pushed value wins).
    pub ping_restart: Option<Duration>,
    /// `ping-exit`.
    pub ping_exit: Option<Duration>,
    /// `explicit-exit-notify N`.
    pub explicit_exit_notify: u32,
    /// Compression stub framing from the config (a pushed value wins).
    pub framing: Framing,
    /// `fragment`.
    pub fragment: Option<FragmentOption>,
    /// Whether a tls-auth wrap is configured (for the options string).
    pub tls_auth: bool,
    /// `replay-window`.
    pub replay_window: Option<u32>,
    /// `pull-filter` rules, applied to each pushed option in order.
    pub pull_filters: Vec<crate::options::client::PullFilter>,
    /// Extra peer-info lines (`push-peer-info`, compression support).
    pub extra_peer_info: String,
    /// `allow-compression`: whether a pushed compression algorithm may be used.
    pub allow_compression: crate::options::compress::AllowCompression,
    /// Announce TLS-EKM key derivation (`IV_PROTO` bit 3). Off only to test the legacy PRF
    /// against a 2.6 peer, which then uses it as with an OpenVPN 2.5 client.
    pub announce_ekm: bool,
}

impl Drop for ClientSetup {
    /// The `auth-user-pass` password is wiped with the setup.
    fn drop(&mut self) {
        if let Some((_, password)) = self.credentials.as_mut() {
            zeroize::Zeroize::zeroize(password);
        }
    }
}

impl ClientSetup {
    /// When to renegotiate and how long old keys stay: `reneg-sec` randomised to 90–100 %
    /// like a 2.6 server does, so that clients started together do not renegotiate together.
    pub fn schedule(&self) -> ScheduleConfig {
        ScheduleConfig {
            reneg_sec: self.reneg_sec,
            reneg_sec_min: 0.9,
            reneg_pkts: self.reneg_pkts,
            reneg_bytes: self.reneg_bytes,
            tran_window: self.tran_window,
        }
    }

    /// Builds the setup from a parsed config plus loaded material.
    pub fn new(
        cfg: &ClientConfig,
        tls: Arc<rustls::ClientConfig>,
        wrap: WrapConfig,
        credentials: Option<(String, String)>,
        transport: Transport,
        ipv6_link: bool,
    ) -> ClientSetup {
        let tls_auth = matches!(wrap, WrapConfig::Auth { .. });
        ClientSetup {
            tls,
            wrap,
            transport,
            ipv6_link,
            ciphers: cfg.data_ciphers.clone(),
            fallback_cipher: cfg.data_ciphers_fallback,
            auth: cfg.auth_digest,
            credentials,
            tun_mtu: cfg.tun_mtu,
            tap: cfg.dev_type == crate::options::common::DevType::Tap,
            reneg_sec: cfg.reneg_sec,
            reneg_pkts: cfg.reneg_pkts,
            reneg_bytes: cfg.reneg_bytes,
            hand_window: cfg.hand_window,
            tls_timeout: cfg.tls_timeout,
            tran_window: cfg.tran_window,
            ping: cfg.ping,
            ping_restart: cfg.ping_restart,
            ping_exit: cfg.ping_exit,
            explicit_exit_notify: cfg.explicit_exit_notify,
            framing: cfg.framing,
            fragment: cfg.fragment,
            tls_auth,
            replay_window: cfg.replay_window,
            pull_filters: cfg.pull_filters.clone(),
            extra_peer_info: extra_peer_info(cfg),
            allow_compression: cfg.compression.allow,
            announce_ekm: true,
        }
    }

    /// What `pull-filter` says about one pushed option (first matching rule wins; no rule:
    /// accept).
    fn filter(&self, option: &str) -> crate::options::client::PullAction {
        self.pull_filters
            .iter()
            .find(|f| option.starts_with(f.text.as_str()))
            .map_or(crate::options::client::PullAction::Accept, |f| f.action)
    }

    fn max_payload(&self, wrap_overhead: usize) -> usize {
        let link = match (self.transport, self.ipv6_link) {
            (Transport::Udp, false) => 28,
            (Transport::Udp, true) => 48,
            (Transport::Tcp, false) => 40 + 2,
            (Transport::Tcp, true) => 60 + 2,
        };
        // opcode + session id + 4 piggy-backed ACKs + remote session id + message id
        let header = 1 + 8 + 1 + 4 * 4 + 8 + 4;
        crate::consts::MAX_PACKET_SIZE_DEFAULT - link - header - wrap_overhead
    }
}

/// Peer-info lines beyond the defaults: compression support as 2.6 advertises it when the
/// config allows compression, and with `push-peer-info` the TLS library and `UV_*` setenv
/// variables.
fn extra_peer_info(cfg: &ClientConfig) -> String {
    use crate::options::compress::AllowCompression;
    let mut s = String::new();
    let c = &cfg.compression;
    if c.framing.is_compression() && c.allow != AllowCompression::No {
        s.push_str("IV_LZ4=1\nIV_LZ4v2=1\nIV_LZO=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n");
    }
    if cfg.push_peer_info {
        s.push_str("IV_SSL=rustls\n");
        for (k, v) in &cfg.setenv {
            if k.starts_with("UV_") && !v.contains('\n') {
                s.push_str(&format!("{k}={v}\n"));
            }
        }
    }
    s
}

/// What the tunnel looks like once connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// The pushed options.
    pub pushed: PushedOptions,
    /// Negotiated data cipher.
    pub cipher: Cipher,
    /// TLS version and suite, for logs.
    pub tls: String,
    /// From the first packet to the tunnel being up.
    pub handshake: Duration,
    /// From the key state becoming active (PUSH_REQUEST) to the final PUSH_REPLY.
    pub push: Duration,
}

/// Something the shell must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The tunnel is up: configure the tun device and start moving data.
    Connected(Box<Connected>),
    /// New data keys after a renegotiation (the data plane generation changed).
    KeysChanged {
        /// The new key-id.
        key_id: u8,
        /// How long the renegotiation took.
        took: Duration,
    },
    /// A renegotiation failed; the old key stays in use.
    RenegotiationFailed(String),
    /// Something worth logging that does not stop the client.
    Warning(String),
    /// Informational message (e.g. `INFO` from the server).
    Info(String),
    /// The connection must be restarted from scratch (new session), for this reason.
    Restart(String),
    /// The client must stop, for this reason (authentication failed, HALT, bad push).
    Fatal(String),
    /// [`Client::close`] finished (exit notification sent).
    Closed,
}

/// Most options one push may carry, all its parts together (real servers push a few dozen;
/// large split-tunnel setups some hundreds of routes).
pub const MAX_PUSHED_OPTIONS: usize = 8192;

/// Which kind of packet [`Client::poll_transmit`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransmitKind {
    /// A control-channel packet.
    Control,
    /// A data-channel packet made by the client itself (ping, OCC exit).
    Data,
}

/// The keys and header settings the data path uses.
#[derive(Clone, Debug, Default)]
pub struct DataPlane {
    /// Changes whenever anything below changes.
    pub generation: u64,
    /// Key to seal with (None until connected).
    pub send: Option<Arc<DataKeys>>,
    /// Keys to open with (current and lame duck).
    pub recv: Vec<Arc<DataKeys>>,
    /// Peer-id for P_DATA_V2 (None = P_DATA_V1).
    pub peer_id: Option<u32>,
    /// Compression stub framing.
    pub framing: Framing,
    /// Replay window size (`replay-window`).
    pub replay_window: Option<u32>,
    /// `fragment`: every packet carries a fragment header; big ones are cut.
    pub fragment: Option<Fragmenter>,
}

impl DataPlane {
    /// Builds the fragmenter for `fragment` with the negotiated cipher (None without it).
    pub fn fragmenter(
        option: Option<FragmentOption>,
        cipher: Cipher,
        auth: crate::wrap::Digest,
        v2: bool,
    ) -> Option<Fragmenter> {
        let first_seq = crate::control::random_bytes::<1>()[0];
        option.map(|f| Fragmenter::new(f.payload_max(cipher, auth, v2), first_seq))
    }

    /// Seals a payload that fits in one packet (pings, OCC messages, small tunnel packets):
    /// with `fragment`, behind a "whole packet" fragment header.
    pub fn seal_whole(
        &self,
        keys: &DataKeys,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        let prefix: &[u8] = if self.fragment.is_some() {
            &crate::fragment::WHOLE
        } else {
            &[]
        };
        keys.seal_prefixed(self.header(keys), prefix, self.framing, plain, out)
    }

    /// The header for sealing with `keys`.
    pub fn header(&self, keys: &DataKeys) -> DataHeader {
        DataHeader {
            key_id: keys.key_id(),
            peer_id: self.peer_id,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Handshake,
    Push,
    Connected,
    Exiting {
        deadline: Instant,
        occ_left: u32,
        next_occ: Instant,
    },
    Done,
}

/// The client.
pub struct Client {
    setup: Arc<ClientSetup>,
    session: ControlSession,
    state: State,
    push: PushedOptions,
    /// Options received in the PUSH_REPLY parts so far (bounded: [`MAX_PUSHED_OPTIONS`]).
    push_options: usize,
    pushed: Option<PushedOptions>,
    next_push_request: Option<Instant>,
    cipher: Option<Cipher>,
    /// The server derives data keys with the legacy PRF (it did not push
    /// `key-derivation tls-ekm`: OpenVPN before 2.6, or we did not announce EKM).
    legacy_prf: bool,
    data: DataPlane,
    /// Data keys over time: current, lame duck, renegotiation timing.
    keys: KeySchedule,
    /// When the TLS session of the handshake became active (the push must follow within
    /// `hand-window`).
    key_started: Instant,
    data_rx: Option<Instant>,
    data_tx: Option<Instant>,
    events: VecDeque<ClientEvent>,
    started: Instant,
    tls_active_at: Option<Instant>,
}

/// Send the first packet on new keys this long after they are established, so that a stock
/// peer has derived them too (it does so when our ACK of its key-method-2 arrives).
const SEND_KEY_SWITCH_DELAY: Duration = Duration::from_secs(1);
/// How long an EXIT over the control channel may take to be acknowledged.
const CC_EXIT_WAIT: Duration = Duration::from_secs(2);

impl Client {
    /// Starts a new session at `now`. `unix_time` seeds the wrap's replay timestamps.
    pub fn new(setup: Arc<ClientSetup>, now: Instant, unix_time: u32) -> Client {
        let wrap = TlsWrap::new(&setup.wrap, false, unix_time);
        let params = SessionParams {
            tls_timeout: setup.tls_timeout,
            hand_window: setup.hand_window,
            max_payload: setup.max_payload(wrap.overhead()),
        };
        let session = ControlSession::new_client(setup.tls.clone(), wrap, params, now);
        let data = DataPlane {
            framing: setup.framing,
            ..DataPlane::default()
        };
        Client {
            keys: KeySchedule::new(setup.schedule(), now, random_jitter()),
            setup,
            session,
            state: State::Handshake,
            push: PushedOptions::default(),
            push_options: 0,
            pushed: None,
            next_push_request: None,
            cipher: None,
            legacy_prf: false,
            data,
            key_started: now,
            data_rx: None,
            data_tx: None,
            events: VecDeque::new(),
            started: now,
            tls_active_at: None,
        }
    }

    /// True once the tunnel is up.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected | State::Exiting { .. })
    }

    /// The options pushed by the server, once connected.
    pub fn pushed(&self) -> Option<&PushedOptions> {
        self.pushed.as_ref()
    }

    /// The setup this client runs with.
    pub fn setup(&self) -> Arc<ClientSetup> {
        Arc::clone(&self.setup)
    }

    /// Uses `setup` for the key negotiations from now on (a renewed certificate, new
    /// credentials) while the session goes on. A server locks the common name and username
    /// across renegotiations, so a different identity ends the session there.
    pub fn renew_setup(&mut self, setup: Arc<ClientSetup>) {
        self.session.set_tls_config(setup.tls.clone());
        self.setup = setup;
    }

    /// The data path's keys.
    pub fn data_plane(&self) -> DataPlane {
        self.data.clone()
    }

    /// Generation of [`Client::data_plane`].
    pub fn data_plane_generation(&self) -> u64 {
        self.data.generation
    }

    /// Control-plane retransmissions so far.
    pub fn control_retransmits(&self) -> u64 {
        self.session.stats().retransmits
    }

    /// Tells the client when the data path last received an authenticated packet and last
    /// sent one (keepalive and ping-restart need both).
    pub fn set_data_activity(&mut self, last_rx: Option<Instant>, last_tx: Option<Instant>) {
        self.data_rx = last_rx.max(self.data_rx);
        self.data_tx = last_tx.max(self.data_tx);
    }

    /// The next plaintext control-channel message sent or received (for the control tap).
    pub fn poll_control_message(&mut self) -> Option<crate::control::ControlMessage> {
        self.session.poll_message()
    }

    /// Next event for the shell.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Handles a control packet from the link.
    pub fn handle_control(&mut self, now: Instant, wire: &[u8]) -> Result<(), DropReason> {
        if self.state == State::Done {
            return Err(DropReason::WrongSession);
        }
        if wire.len() > crate::consts::MAX_CONTROL_PACKET {
            return Err(DropReason::TooBig);
        }
        let r = self.session.handle_packet(now, wire);
        self.process_session_events(now);
        r
    }

    /// Fires timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now);
        self.process_session_events(now);
        match self.state {
            State::Push => {
                if self.next_push_request.is_some_and(|t| now >= t) {
                    self.send_push_request(now);
                }
                if now >= self.key_started + self.setup.hand_window {
                    self.restart(format!(
                        "no PUSH_REPLY within {} s (hand-window)",
                        self.setup.hand_window.as_secs()
                    ));
                }
            }
            State::Connected => self.connected_timers(now),
            State::Exiting { deadline, .. } => {
                if now >= deadline || (self.cc_exit() && self.session.poll_timeout().is_none()) {
                    self.state = State::Done;
                    self.events.push_back(ClientEvent::Closed);
                }
            }
            State::Handshake | State::Done => {}
        }
    }

    fn connected_timers(&mut self, now: Instant) {
        if self.keys.on_timeout(now) {
            self.sync_keys();
        }
        let last_rx = self.last_rx();
        if let Some(limit) = self.ping_exit()
            && now >= last_rx + limit
        {
            self.fail(format!(
                "ping-exit: nothing received from the server for {} s",
                limit.as_secs()
            ));
            return;
        }
        if let Some(limit) = self.ping_restart()
            && now >= last_rx + limit
        {
            self.restart(format!(
                "ping-restart: nothing received from the server for {} s",
                limit.as_secs()
            ));
            return;
        }
        if self.keys.due(now)
            && let Some(id) = self.session.renegotiate(now)
        {
            self.keys.started(now);
            self.events
                .push_back(ClientEvent::Info(format!("renegotiating: new key-id {id}")));
        }
    }

    fn cc_exit(&self) -> bool {
        self.pushed
            .as_ref()
            .is_some_and(|p| p.protocol_flags.cc_exit)
    }

    fn ping_interval(&self) -> Option<Duration> {
        let pushed = self
            .pushed
            .as_ref()
            .and_then(|p| p.ping)
            .map(|s| Duration::from_secs(u64::from(s)));
        pushed.or(self.setup.ping).filter(|d| !d.is_zero())
    }

    fn ping_restart(&self) -> Option<Duration> {
        let pushed = self
            .pushed
            .as_ref()
            .and_then(|p| p.ping_restart)
            .map(|s| Duration::from_secs(u64::from(s)));
        pushed.or(self.setup.ping_restart).filter(|d| !d.is_zero())
    }

    fn ping_exit(&self) -> Option<Duration> {
        let pushed = self
            .pushed
            .as_ref()
            .and_then(|p| p.ping_exit)
            .map(|s| Duration::from_secs(u64::from(s)));
        pushed.or(self.setup.ping_exit).filter(|d| !d.is_zero())
    }

    fn last_rx(&self) -> Instant {
        self.session
            .last_rx()
            .max(self.data_rx.unwrap_or(self.started))
    }

    fn last_tx(&self) -> Instant {
        self.session
            .last_tx()
            .max(self.data_tx)
            .unwrap_or(self.started)
    }

    /// Earliest time [`Client::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.session.poll_timeout();
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        match self.state {
            State::Push => {
                if let Some(p) = self.next_push_request {
                    min(p);
                }
                min(self.key_started + self.setup.hand_window);
            }
            State::Connected => {
                if let Some(x) = self.keys.next_deadline() {
                    min(x);
                }
                if let Some(p) = self.ping_interval() {
                    min(self.last_tx() + p);
                }
                if let Some(p) = self.ping_restart() {
                    min(self.last_rx() + p);
                }
                if let Some(p) = self.ping_exit() {
                    min(self.last_rx() + p);
                }
            }
            State::Exiting {
                deadline, next_occ, ..
            } => {
                min(deadline);
                min(next_occ);
            }
            State::Handshake | State::Done => {}
        }
        t
    }

    /// The next packet to send, appended to `out`.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<TransmitKind> {
        if self.state == State::Done {
            return None;
        }
        if self.session.poll_transmit(now, out) {
            return Some(TransmitKind::Control);
        }
        match self.state {
            State::Connected => {
                let ping = self.ping_interval()?;
                if now >= self.last_tx() + ping && self.seal_into(&PING_MAGIC, out).is_ok() {
                    self.data_tx = Some(now);
                    return Some(TransmitKind::Data);
                }
                None
            }
            State::Exiting {
                deadline,
                occ_left,
                next_occ,
            } if occ_left > 0 && now >= next_occ => {
                let left = occ_left - 1;
                self.state = State::Exiting {
                    deadline: if left == 0 {
                        now.min(deadline)
                    } else {
                        deadline
                    },
                    occ_left: left,
                    next_occ: now + Duration::from_secs(1),
                };
                self.seal_into(&occ_exit_payload(), out).ok()?;
                Some(TransmitKind::Data)
            }
            _ => None,
        }
    }

    /// Seals a data-channel payload with the current send key (pings, tests).
    pub fn seal_into(&self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), DropReason> {
        let keys = self.data.send.as_ref().ok_or(DropReason::NoKey)?;
        let start = out.len();
        out.resize(start + plain.len() + crate::data::MAX_OVERHEAD, 0);
        let n = self.data.seal_whole(keys, plain, &mut out[start..])?;
        out.truncate(start + n);
        Ok(())
    }

    /// Starts a graceful shutdown: tells the server (explicit-exit-notify over UDP) and emits
    /// [`ClientEvent::Closed`] when done.
    pub fn close(&mut self, now: Instant) {
        if matches!(self.state, State::Exiting { .. } | State::Done) {
            return;
        }
        let notify = self.setup.transport == Transport::Udp
            && self.setup.explicit_exit_notify > 0
            && self.state == State::Connected;
        if !notify {
            self.state = State::Done;
            self.events.push_back(ClientEvent::Closed);
            return;
        }
        if self.cc_exit() && self.session.send_text("EXIT").is_ok() {
            self.state = State::Exiting {
                deadline: now + CC_EXIT_WAIT,
                occ_left: 0,
                next_occ: now + CC_EXIT_WAIT,
            };
            return;
        }
        let n = self.setup.explicit_exit_notify;
        self.state = State::Exiting {
            deadline: now + Duration::from_secs(u64::from(n)),
            occ_left: n,
            next_occ: now,
        };
    }

    fn restart(&mut self, reason: String) {
        if self.state != State::Done {
            self.state = State::Done;
            self.events.push_back(ClientEvent::Restart(reason));
        }
    }

    fn fail(&mut self, reason: String) {
        if self.state != State::Done {
            self.state = State::Done;
            self.events.push_back(ClientEvent::Fatal(reason));
        }
    }

    fn key_method_message(&self) -> KeyMethod2 {
        let cipher = self
            .setup
            .ciphers
            .first()
            .copied()
            .unwrap_or(Cipher::Aes256Gcm);
        let (username, password) = match &self.setup.credentials {
            Some((u, p)) => {
                // After a pushed auth-token, renegotiations authenticate with the token.
                let token = self.pushed.as_ref().and_then(|p| p.auth_token.clone());
                (Some(u.clone()), Some(token.unwrap_or_else(|| p.clone())))
            }
            None => (None, None),
        };
        KeyMethod2 {
            pre_master: Some(random_bytes::<48>()),
            random1: random_bytes::<32>(),
            random2: random_bytes::<32>(),
            options: options_string(
                false,
                self.setup.transport == Transport::Tcp,
                self.setup.tun_mtu,
                self.setup.tap,
                cipher,
                self.setup.tls_auth,
            ),
            username,
            password,
            peer_info: Some(
                client_peer_info(
                    &self.setup.ciphers,
                    self.setup.tun_mtu.max(1600),
                    self.setup.announce_ekm,
                ) + &self.setup.extra_peer_info,
            ),
        }
    }

    fn send_push_request(&mut self, now: Instant) {
        if self.session.send_text("PUSH_REQUEST").is_ok() {
            self.next_push_request = Some(now + PUSH_REQUEST_INTERVAL);
        }
    }

    fn process_session_events(&mut self, now: Instant) {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                SessionEvent::TlsStarted { key_id } => {
                    let msg = self.key_method_message();
                    if let Err(e) = self.session.send_key_method(key_id, &msg) {
                        self.restart(format!("cannot send key-method-2 message: {e}"));
                    }
                }
                SessionEvent::PeerKeyMethod { .. } => {}
                SessionEvent::Renegotiating { key_id } => {
                    self.keys.started(now);
                    self.events.push_back(ClientEvent::Info(format!(
                        "server started renegotiation of key-id {key_id}"
                    )));
                }
                SessionEvent::KeyMaterialReady { key_id } => self.on_key_material(key_id),
                SessionEvent::KeyActive { key_id } => self.on_key_active(now, key_id),
                SessionEvent::KeyFailed { key_id, reason } => {
                    if self.state == State::Connected
                        && self.session.current_key_id() == Some(key_id)
                        && key_id != 0
                    {
                        self.session.remove_key_state(key_id);
                        if self.keys.failed(now, key_id) {
                            self.sync_keys();
                        }
                        self.events.push_back(ClientEvent::RenegotiationFailed(format!(
                            "renegotiation of key-id {key_id} failed: {reason}; keeping the old key"
                        )));
                    } else if self.session.current_key_id() == Some(key_id) {
                        self.restart(reason);
                    }
                }
                SessionEvent::Text { text, .. } => self.on_text(now, &text),
            }
        }
    }

    /// A renegotiated key can decrypt as soon as its material exists: the peer may start
    /// sending with it before our last ACK reaches it.
    fn on_key_material(&mut self, key_id: u8) {
        if self.state != State::Connected || self.keys.has_key(key_id) {
            return;
        }
        let Some(cipher) = self.cipher else { return };
        let Some(km) = self.key_material(key_id) else {
            return;
        };
        let key = Arc::new(
            DataKeys::with_auth(cipher, self.setup.auth, &km, key_id, false)
                .counting_bytes(self.setup.reneg_bytes.is_some()),
        );
        if self.keys.material_ready(key) {
            self.sync_keys();
        }
    }

    /// Publishes the schedule's keys to the data plane.
    fn sync_keys(&mut self) {
        self.data.send = self.keys.send_key().cloned();
        self.data.recv = self.keys.recv_keys().to_vec();
        self.data.generation += 1;
    }

    /// The data-channel key block of a key state: TLS-EKM, or the legacy PRF for servers
    /// without it.
    fn key_material(
        &self,
        key_id: u8,
    ) -> Option<zeroize::Zeroizing<[u8; crate::consts::KEY2_LEN]>> {
        if self.legacy_prf {
            self.session.prf_key_material(key_id)
        } else {
            self.session.export_key_material(key_id)
        }
    }

    fn on_key_active(&mut self, now: Instant, key_id: u8) {
        match self.state {
            State::Handshake => {
                self.state = State::Push;
                self.key_started = now;
                self.tls_active_at = Some(now);
                self.send_push_request(now);
            }
            State::Connected => {
                self.on_key_material(key_id);
                // Send on the new key a moment later, when the peer has surely derived it.
                let Some(took) = self.keys.activated(now, key_id, SEND_KEY_SWITCH_DELAY) else {
                    self.restart(format!("key export failed for key-id {key_id}"));
                    return;
                };
                self.sync_keys();
                self.session.retire_old_key_states();
                self.events
                    .push_back(ClientEvent::KeysChanged { key_id, took });
            }
            _ => {}
        }
    }

    fn on_text(&mut self, now: Instant, text: &str) {
        if text.starts_with("PUSH_REPLY") {
            self.on_push_reply(now, text);
        } else if let Some(reason) = text.strip_prefix("AUTH_FAILED") {
            let reason = reason.trim_start_matches(',');
            self.fail(if reason.is_empty() {
                "AUTH_FAILED: the server refused our credentials".to_owned()
            } else {
                format!("AUTH_FAILED: {reason}")
            });
        } else if text.starts_with("RESTART") {
            self.restart(format!("server requested restart ({text})"));
        } else if text.starts_with("HALT") {
            self.fail(format!("server requested halt ({text})"));
        } else if text.starts_with("INFO") || text.starts_with("AUTH_PENDING") {
            self.events.push_back(ClientEvent::Info(text.to_owned()));
        } else {
            self.events.push_back(ClientEvent::Warning(format!(
                "unknown control message from server: {text}"
            )));
        }
    }

    fn on_push_reply(&mut self, now: Instant, text: &str) {
        let Some(msg) = split_push_reply(text) else {
            return;
        };
        if self.state == State::Connected {
            // Later PUSH_REPLYs (2.6 sends one with a renewed auth-token) only update tokens.
            for o in &msg.options {
                if o.starts_with("auth-token")
                    && let Some(p) = self.pushed.as_mut()
                {
                    let _ = p.apply(o, &self.setup.ciphers);
                }
            }
            return;
        }
        if self.state != State::Push {
            return;
        }
        // A server that keeps pushing (endless push-continuation, 100,000 routes) is refused
        // rather than followed into unbounded memory and kernel routes.
        self.push_options += msg.options.len();
        if self.push_options > MAX_PUSHED_OPTIONS {
            self.fail(format!(
                "the server pushed more than {MAX_PUSHED_OPTIONS} options: refused (a broken or hostile server)"
            ));
            return;
        }
        for o in &msg.options {
            use crate::options::client::PullAction;
            match self.setup.filter(o) {
                PullAction::Accept => {}
                PullAction::Ignore => {
                    self.events.push_back(ClientEvent::Warning(format!(
                        "pushed option ignored by pull-filter: {o}"
                    )));
                    continue;
                }
                PullAction::Reject => {
                    self.restart(format!("pushed option rejected by pull-filter: {o}"));
                    return;
                }
            }
            if let Err(e) = self.push.apply(o, &self.setup.ciphers) {
                self.fail(e.to_string());
                return;
            }
        }
        if self.push.framing.is_some_and(|f| f.is_compression())
            && self.setup.allow_compression == crate::options::compress::AllowCompression::No
        {
            self.fail("the server pushed compression but 'allow-compression no' is set".into());
            return;
        }
        if msg.more {
            return;
        }
        self.finish_push(now);
    }

    fn finish_push(&mut self, now: Instant) {
        let pushed = std::mem::take(&mut self.push);
        self.push_options = 0;
        for u in &pushed.unsupported {
            self.events.push_back(ClientEvent::Warning(format!(
                "pushed option not supported, ignored: {u}"
            )));
        }
        for r in &pushed.refused {
            self.events
                .push_back(ClientEvent::Warning(format!("pushed option refused: {r}")));
        }
        let Some(cipher) = pushed.cipher.or(self.setup.fallback_cipher) else {
            self.fail(
                "the server did not push a data cipher (no cipher negotiation: OpenVPN before 2.4); add its cipher as data-ciphers-fallback"
                    .into(),
            );
            return;
        };
        self.legacy_prf = !pushed.uses_ekm();
        if self.legacy_prf {
            self.events.push_back(ClientEvent::Info(
                "the server derives data keys with the legacy PRF (no TLS-EKM: OpenVPN before 2.6)"
                    .into(),
            ));
        }
        let Some(key_id) = self.session.current_key_id() else {
            return;
        };
        let Some(km) = self.key_material(key_id) else {
            self.restart("key export failed".into());
            return;
        };
        let keys = Arc::new(
            DataKeys::with_auth(cipher, self.setup.auth, &km, key_id, false)
                .counting_bytes(self.setup.reneg_bytes.is_some()),
        );
        self.keys.start(now, keys.clone());
        self.data = DataPlane {
            generation: self.data.generation + 1,
            send: Some(keys),
            recv: self.keys.recv_keys().to_vec(),
            peer_id: pushed.peer_id,
            framing: pushed
                .framing
                .unwrap_or(self.setup.framing)
                .with_tx_compression(
                    self.setup.allow_compression == crate::options::compress::AllowCompression::Yes,
                ),
            replay_window: self.setup.replay_window,
            fragment: DataPlane::fragmenter(
                self.setup.fragment,
                cipher,
                self.setup.auth,
                pushed.peer_id.is_some(),
            ),
        };
        self.cipher = Some(cipher);
        self.key_started = now;
        self.next_push_request = None;
        self.state = State::Connected;
        let tls = self.session.tls_description(key_id).unwrap_or_default();
        self.pushed = Some(pushed.clone());
        self.events
            .push_back(ClientEvent::Connected(Box::new(Connected {
                pushed,
                cipher,
                tls,
                handshake: now.saturating_duration_since(self.started),
                push: now.saturating_duration_since(self.tls_active_at.unwrap_or(now)),
            })));
    }
}
