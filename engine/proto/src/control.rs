//! The control channel of one OpenVPN session: session ids, the tls wrap, and the key states
//! (one per key-id) that each carry a reliability layer and a TLS connection.
//!
//! A [`ControlSession`] is role-neutral; the client ([`crate::client`]) and the server drive it.
//! Inputs are wire packets and `now`; outputs are wire packets ([`ControlSession::poll_transmit`]),
//! a deadline ([`ControlSession::poll_timeout`]) and [`SessionEvent`]s.
//!
//! Key state life cycle:
//!
//! ```text
//! Reset ──own reset ACKed──▶ Tls ──TLS up, key-method-2 both ways, our data ACKed──▶ Active
//!   └──────────────── hand-window expired / TLS or protocol error ──────────────▶ Failed
//! ```

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::consts::{
    EKM_LABEL_DATAKEYS, KEY2_LEN, MAX_ACKS_IN_PACKET, MAX_ACKS_PIGGYBACK, TLS_CHANNEL_BUF_SIZE,
};
use crate::key_method::KeyMethod2;
use crate::reliable::{AckTracker, RecvVerdict, ReliableRecv, ReliableSend};
use crate::stage::DropReason;
use crate::wire::{AckList, ControlPacket, Opcode, SessionId};
use crate::wrap::TlsWrap;

/// Which end of the TLS connection we are.
#[derive(Clone)]
pub enum TlsRole {
    /// OpenVPN client = TLS client.
    Client(Arc<rustls::ClientConfig>),
    /// OpenVPN server = TLS server.
    Server(Arc<rustls::ServerConfig>),
}

impl TlsRole {
    fn is_server(&self) -> bool {
        matches!(self, TlsRole::Server(_))
    }
}

/// Timing and sizing parameters of a session.
#[derive(Clone, Debug)]
pub struct SessionParams {
    /// Initial retransmission timeout (`tls-timeout`).
    pub tls_timeout: Duration,
    /// Deadline for a key state to become active (`hand-window`).
    pub hand_window: Duration,
    /// Largest TLS payload per control packet.
    pub max_payload: usize,
}

/// Something the owner of a session must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// The reset exchange of this key state finished and TLS started. A client writes its
    /// key-method-2 message now (rustls holds it until the handshake completes).
    TlsStarted {
        /// Key-id.
        key_id: u8,
    },
    /// The peer's key-method-2 message of this key state arrived. A server authenticates it
    /// and answers with [`ControlSession::send_key_method`]; a client just notes it.
    PeerKeyMethod {
        /// Key-id.
        key_id: u8,
        /// The message.
        message: Box<KeyMethod2>,
    },
    /// TLS is up and key-method-2 went both ways: the data keys of this key state can be
    /// exported ([`ControlSession::export_key_material`]), before the last ACKs settle.
    KeyMaterialReady {
        /// Key-id.
        key_id: u8,
    },
    /// The key state is active: keys can be exported.
    KeyActive {
        /// Key-id.
        key_id: u8,
    },
    /// A NUL-terminated text message on the control channel.
    Text {
        /// Key-id it arrived on.
        key_id: u8,
        /// The message, without the NUL and trailing CR/LF.
        text: String,
    },
    /// The peer started a renegotiation (soft reset) for this key-id.
    Renegotiating {
        /// The new key-id.
        key_id: u8,
    },
    /// A key state failed; the reason is for humans.
    KeyFailed {
        /// Key-id.
        key_id: u8,
        /// Why.
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for our reset to be acknowledged.
    Reset,
    /// TLS handshake and key-method-2 exchange.
    Tls,
    /// Established.
    Active,
    /// Gave up.
    Failed,
}

/// One key-id's control channel.
struct KeyState {
    key_id: u8,
    phase: Phase,
    send: ReliableSend,
    recv: ReliableRecv,
    acks: AckTracker,
    tls: Option<rustls::Connection>,
    /// TLS ciphertext not yet put into control packets.
    tls_out: Vec<u8>,
    /// TLS bytes that arrived before our TLS connection existed (our reset's ACK was late).
    tls_in_early: Vec<u8>,
    /// Text-channel bytes after the key-method-2 record.
    text_in: Vec<u8>,
    peer_km2_seen: bool,
    own_km2_written: bool,
    /// Both key-method-2 messages, kept for the legacy (pre-2.6) key derivation.
    own_km2: Option<Box<KeyMethod2>>,
    peer_km2: Option<Box<KeyMethod2>>,
    started: Instant,
    /// Set once the peer's reset has been seen (learned through the reliability layer).
    peer_reset_seen: bool,
    /// KeyMaterialReady was emitted.
    material_ready: bool,
}

impl KeyState {
    fn new(key_id: u8, reset: Opcode, now: Instant, params: &SessionParams) -> KeyState {
        let mut send = ReliableSend::new(params.tls_timeout);
        send.push(reset, Vec::new());
        KeyState {
            key_id,
            phase: Phase::Reset,
            send,
            recv: ReliableRecv::new(),
            acks: AckTracker::new(),
            tls: None,
            tls_out: Vec::new(),
            tls_in_early: Vec::new(),
            text_in: Vec::new(),
            peer_km2_seen: false,
            own_km2_written: false,
            own_km2: None,
            peer_km2: None,
            started: now,
            peer_reset_seen: false,
            material_ready: false,
        }
    }

    fn fail(&mut self, reason: String, events: &mut VecDeque<SessionEvent>) {
        if self.phase != Phase::Failed {
            self.phase = Phase::Failed;
            events.push_back(SessionEvent::KeyFailed {
                key_id: self.key_id,
                reason,
            });
        }
    }

    /// Moves TLS output into reliable control packets while the send window has room.
    fn packetize(&mut self, max_payload: usize) {
        if let Some(tls) = self.tls.as_mut() {
            while tls.wants_write() {
                if tls.write_tls(&mut self.tls_out).is_err() {
                    break;
                }
            }
        }
        while !self.tls_out.is_empty() && self.send.has_room() {
            let n = self.tls_out.len().min(max_payload);
            let chunk: Vec<u8> = self.tls_out.drain(..n).collect();
            self.send.push(Opcode::ControlV1, chunk);
        }
    }

    /// Feeds in-order TLS bytes, then reads plaintext into events.
    fn feed_tls(&mut self, payload: &[u8], events: &mut VecDeque<SessionEvent>) {
        let Some(tls) = self.tls.as_mut() else {
            // TLS bytes before our reset was acknowledged (the ACK was lost or reordered):
            // keep them for when TLS starts, they will not be retransmitted.
            if self.tls_in_early.len() + payload.len() > 64 * 1024 {
                self.fail(
                    "too much TLS data before the reset exchange finished".into(),
                    events,
                );
                return;
            }
            self.tls_in_early.extend_from_slice(payload);
            return;
        };
        let mut rd = payload;
        while !rd.is_empty() {
            match tls.read_tls(&mut rd) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    let reason = format!("TLS read: {e}");
                    self.fail(reason, events);
                    return;
                }
            }
            if let Err(e) = tls.process_new_packets() {
                // Let rustls send its alert before we give up.
                while tls.wants_write() {
                    if tls.write_tls(&mut self.tls_out).is_err() {
                        break;
                    }
                }
                let reason = format!("TLS error: {}", describe_tls_error(&e));
                self.fail(reason, events);
                return;
            }
        }
        self.read_plaintext(events);
    }

    fn read_plaintext(&mut self, events: &mut VecDeque<SessionEvent>) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        loop {
            let mut reader = tls.reader();
            let chunk = match reader.fill_buf() {
                Ok([]) => break,
                Ok(c) => c.to_vec(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            };
            reader.consume(chunk.len());
            if !self.peer_km2_seen {
                // The key-method-2 message is always alone in the first record.
                self.peer_km2_seen = true;
                let from_client = matches!(tls, rustls::Connection::Server(_));
                match KeyMethod2::parse(&chunk, from_client) {
                    Ok(m) => {
                        self.peer_km2 = Some(Box::new(m.clone()));
                        events.push_back(SessionEvent::PeerKeyMethod {
                            key_id: self.key_id,
                            message: Box::new(m),
                        })
                    }
                    Err(e) => {
                        self.fail(format!("peer key-method-2 message: {e}"), events);
                        return;
                    }
                }
            } else {
                self.text_in.extend_from_slice(&chunk);
                while let Some(nul) = self.text_in.iter().position(|b| *b == 0) {
                    let raw: Vec<u8> = self.text_in.drain(..=nul).collect();
                    let raw = &raw[..raw.len() - 1];
                    let text = String::from_utf8_lossy(raw)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    if text.chars().all(|c| !c.is_control()) && !text.is_empty() {
                        events.push_back(SessionEvent::Text {
                            key_id: self.key_id,
                            text,
                        });
                    }
                }
                if self.text_in.len() > TLS_CHANNEL_BUF_SIZE {
                    self.fail(
                        "control message without NUL terminator exceeds 2048 bytes".into(),
                        events,
                    );
                    return;
                }
            }
        }
    }

    fn keys_exchanged(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| !t.is_handshaking())
            && self.peer_km2_seen
            && self.own_km2_written
    }

    fn update_phase(&mut self, events: &mut VecDeque<SessionEvent>) {
        if matches!(self.phase, Phase::Tls | Phase::Active)
            && !self.material_ready
            && self.keys_exchanged()
        {
            self.material_ready = true;
            events.push_back(SessionEvent::KeyMaterialReady {
                key_id: self.key_id,
            });
        }
        if self.phase == Phase::Tls {
            let tls_done = self.tls.as_ref().is_some_and(|t| !t.is_handshaking());
            if tls_done
                && self.peer_km2_seen
                && self.own_km2_written
                && self.send.is_idle()
                && self.tls_out.is_empty()
            {
                self.phase = Phase::Active;
                events.push_back(SessionEvent::KeyActive {
                    key_id: self.key_id,
                });
            }
        }
    }
}

/// A control-channel message in plaintext (what TLS carries), for the observatory's control
/// tap: text messages (`PUSH_REQUEST`, `PUSH_REPLY,…`, `EXIT`, …) and the readable parts of
/// key-method-2 (options string, user name, peer-info — never key material or passwords).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlMessage {
    /// Sent by us (`true`) or received.
    pub outgoing: bool,
    /// Key-id of the TLS session that carried it.
    pub key_id: u8,
    /// The message.
    pub text: String,
}

/// Messages kept for [`ControlSession::poll_message`] before older ones are dropped (a shell
/// that does not read them costs bounded memory).
const TRANSCRIPT_MAX: usize = 64;

fn key_method_text(m: &KeyMethod2) -> String {
    let mut t = format!("key-method 2, options '{}'", m.options);
    if let Some(u) = &m.username {
        t.push_str(&format!(", username '{u}'"));
    }
    if let Some(pi) = &m.peer_info {
        let lines: Vec<&str> = pi.lines().filter(|l| !l.is_empty()).collect();
        t.push_str(&format!(", peer-info '{}'", lines.join(";")));
    }
    t
}

/// The control channel of one session.
pub struct ControlSession {
    tls_role: TlsRole,
    params: SessionParams,
    local_sid: SessionId,
    remote_sid: Option<SessionId>,
    wrap: TlsWrap,
    /// Newest key state first; at most two (current and the one it replaces).
    keys: Vec<KeyState>,
    events: VecDeque<SessionEvent>,
    transcript: VecDeque<ControlMessage>,
    scratch: Vec<u8>,
    plain: Vec<u8>,
    last_rx: Instant,
    last_tx: Option<Instant>,
}

/// Counts of the control plane, for the observatory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Retransmitted control packets.
    pub retransmits: u64,
}

impl ControlSession {
    /// The TLS configuration key negotiations use from now on (a client's renewed
    /// certificate); a server session keeps its own.
    pub fn set_tls_config(&mut self, tls: Arc<rustls::ClientConfig>) {
        if let TlsRole::Client(_) = self.tls_role {
            self.tls_role = TlsRole::Client(tls);
        }
    }

    /// A client session: queues the hard reset for key-id 0.
    pub fn new_client(
        tls: Arc<rustls::ClientConfig>,
        wrap: TlsWrap,
        params: SessionParams,
        now: Instant,
    ) -> ControlSession {
        // tls-crypt-v2 clients open with V3: the wrap appends their wrapped key to it.
        let reset = if wrap.has_wkc() {
            Opcode::ControlHardResetClientV3
        } else {
            Opcode::ControlHardResetClientV2
        };
        let mut s =
            ControlSession::new(TlsRole::Client(tls), wrap, params, random_session_id(), now);
        let ks = KeyState::new(0, reset, now, &s.params);
        s.keys.push(ks);
        s
    }

    /// A server session answering a client's hard reset. `reset` is the client's
    /// P_CONTROL_HARD_RESET_CLIENT_V2 as received (wrapped); `local_sid` is random or the
    /// cookie-derived id of a stateless UDP server.
    pub fn new_server(
        tls: Arc<rustls::ServerConfig>,
        wrap: TlsWrap,
        params: SessionParams,
        local_sid: SessionId,
        reset: &[u8],
        now: Instant,
    ) -> Result<ControlSession, DropReason> {
        let mut s = ControlSession::new(TlsRole::Server(tls), wrap, params, local_sid, now);
        let mut plain = Vec::new();
        let pid = s.wrap.unwrap(reset, &mut plain)?;
        let pkt = ControlPacket::parse(&plain)?;
        if !matches!(
            pkt.opcode,
            Opcode::ControlHardResetClientV2 | Opcode::ControlHardResetClientV3
        ) || pkt.key_id != 0
        {
            return Err(DropReason::BadOpcode);
        }
        // 2.6 ignores a hard reset whose message id is not 0.
        if pkt.message_id != Some(0) || !pkt.session_id.is_defined() {
            return Err(DropReason::Malformed);
        }
        s.wrap.check_replay(pid, now)?;
        s.remote_sid = Some(pkt.session_id);
        let mut ks = KeyState::new(0, Opcode::ControlHardResetServerV2, now, &s.params);
        ks.recv.skip_to(1);
        ks.acks.owe(0);
        ks.peer_reset_seen = true;
        s.keys.push(ks);
        Ok(s)
    }

    /// A server session created after the client echoed our stateless cookie: our reset
    /// (message 0, wrap replay id 1) was sent without state and is acknowledged, the client's
    /// reset (message 0) was acknowledged in it. The packet that echoed the cookie is handled
    /// next with [`ControlSession::handle_packet`].
    pub fn new_server_cookie(
        tls: Arc<rustls::ServerConfig>,
        mut wrap: TlsWrap,
        params: SessionParams,
        local_sid: SessionId,
        client_sid: SessionId,
        now: Instant,
    ) -> ControlSession {
        wrap.set_send_pid(1);
        let mut s = ControlSession::new(TlsRole::Server(tls), wrap, params, local_sid, now);
        s.remote_sid = Some(client_sid);
        let mut ks = KeyState::new(0, Opcode::ControlHardResetServerV2, now, &s.params);
        ks.send = ReliableSend::new(s.params.tls_timeout);
        ks.send.skip_to(1);
        ks.recv.skip_to(1);
        ks.peer_reset_seen = true;
        s.keys.push(ks);
        s
    }

    /// The stateless server reset answering a client reset: session id `cookie`, ACK of the
    /// client's message 0, message id 0, wrap replay id 1. Appended to `out`.
    pub fn stateless_reset(
        wrap: &TlsWrap,
        cookie: SessionId,
        client_sid: SessionId,
        out: &mut Vec<u8>,
    ) -> Result<(), DropReason> {
        ControlSession::stateless_reset_with(wrap, cookie, client_sid, &[], out)
    }

    /// Like [`ControlSession::stateless_reset`] with a payload: the early-negotiation TLVs a
    /// tls-crypt-v2 client asked for by its packet-id (`RESEND_WKC`: send the wrapped key
    /// again with the next packet, as `P_CONTROL_WKC_V1`).
    pub fn stateless_reset_with(
        wrap: &TlsWrap,
        cookie: SessionId,
        client_sid: SessionId,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), DropReason> {
        let mut acks = AckList::new();
        acks.push(0);
        let pkt = ControlPacket {
            opcode: Opcode::ControlHardResetServerV2,
            key_id: 0,
            session_id: cookie,
            acks,
            remote_session_id: Some(client_sid),
            message_id: Some(0),
            payload,
        };
        let mut plain = Vec::with_capacity(32);
        pkt.emit(&mut plain);
        wrap.wrap_with_pid(&plain, out, 1, wrap.send_time())
    }

    fn new(
        tls_role: TlsRole,
        wrap: TlsWrap,
        params: SessionParams,
        local_sid: SessionId,
        now: Instant,
    ) -> ControlSession {
        ControlSession {
            tls_role,
            params,
            local_sid,
            remote_sid: None,
            wrap,
            keys: Vec::new(),
            events: VecDeque::new(),
            transcript: VecDeque::new(),
            scratch: Vec::with_capacity(2048),
            plain: Vec::with_capacity(2048),
            last_rx: now,
            last_tx: None,
        }
    }

    /// Our session id.
    pub fn local_session_id(&self) -> SessionId {
        self.local_sid
    }

    /// The peer's session id, once known.
    pub fn remote_session_id(&self) -> Option<SessionId> {
        self.remote_sid
    }

    /// Time the last authenticated control packet arrived.
    pub fn last_rx(&self) -> Instant {
        self.last_rx
    }

    /// Time we last transmitted a control packet.
    pub fn last_tx(&self) -> Option<Instant> {
        self.last_tx
    }

    /// Control-plane counters.
    pub fn stats(&self) -> ControlStats {
        ControlStats {
            retransmits: self.keys.iter().map(|k| k.send.retransmits()).sum(),
        }
    }

    /// The key-id of the newest key state.
    pub fn current_key_id(&self) -> Option<u8> {
        self.keys.first().map(|k| k.key_id)
    }

    /// True when the key state `key_id` is active.
    pub fn is_active(&self, key_id: u8) -> bool {
        self.keys
            .iter()
            .any(|k| k.key_id == key_id && k.phase == Phase::Active)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        let ev = self.events.pop_front()?;
        match &ev {
            SessionEvent::Text { key_id, text } => self.note(false, *key_id, text.clone()),
            SessionEvent::PeerKeyMethod { key_id, message } => {
                self.note(false, *key_id, key_method_text(message));
            }
            _ => {}
        }
        Some(ev)
    }

    /// The next control-channel message sent or received, in plaintext (for taps).
    pub fn poll_message(&mut self) -> Option<ControlMessage> {
        self.transcript.pop_front()
    }

    fn note(&mut self, outgoing: bool, key_id: u8, text: String) {
        if self.transcript.len() >= TRANSCRIPT_MAX {
            self.transcript.pop_front();
        }
        self.transcript.push_back(ControlMessage {
            outgoing,
            key_id,
            text,
        });
    }

    /// Handles a wire control packet. Errors are drop reasons for the observatory.
    pub fn handle_packet(&mut self, now: Instant, wire: &[u8]) -> Result<(), DropReason> {
        let mut plain = std::mem::take(&mut self.plain);
        let r = self.handle_packet_inner(now, wire, &mut plain);
        self.plain = plain;
        r
    }

    fn handle_packet_inner(
        &mut self,
        now: Instant,
        wire: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<(), DropReason> {
        let pid = self.wrap.unwrap(wire, plain)?;
        let pkt = ControlPacket::parse(plain)?;
        let is_server = self.tls_role.is_server();
        match pkt.opcode {
            Opcode::ControlHardResetClientV2 | Opcode::ControlHardResetClientV3 if !is_server => {
                return Err(DropReason::BadOpcode);
            }
            Opcode::ControlHardResetServerV2 if is_server => return Err(DropReason::BadOpcode),
            _ => {}
        }
        match self.remote_sid {
            Some(sid) if sid != pkt.session_id => return Err(DropReason::WrongSession),
            Some(_) => {}
            None => {
                // A client learns the server's session id from the server's reset.
                if pkt.opcode != Opcode::ControlHardResetServerV2 || !pkt.session_id.is_defined() {
                    return Err(DropReason::WrongSession);
                }
            }
        }
        if let Some(rsid) = pkt.remote_session_id
            && rsid != self.local_sid
        {
            return Err(DropReason::WrongSession);
        }
        self.wrap.check_replay(pid, now)?;
        if self.remote_sid.is_none() {
            self.remote_sid = Some(pkt.session_id);
        }
        self.last_rx = now;

        // Find the key state, or start one for a peer-initiated renegotiation.
        let idx = match self.keys.iter().position(|k| k.key_id == pkt.key_id) {
            Some(i) => i,
            None if pkt.opcode == Opcode::ControlSoftResetV1 && pkt.message_id == Some(0) => {
                let current_ok = self.keys.first().is_some_and(|k| k.phase == Phase::Active);
                if !current_ok {
                    return Err(DropReason::WrongSession);
                }
                self.start_key_state(pkt.key_id, now);
                self.events
                    .push_back(SessionEvent::Renegotiating { key_id: pkt.key_id });
                0
            }
            None => return Err(DropReason::NoKey),
        };
        let max_payload = self.params.max_payload;
        let ks = &mut self.keys[idx];
        for id in pkt.acks.as_slice() {
            ks.send.ack(*id);
        }
        Self::advance(ks, &self.tls_role, max_payload, &mut self.events);
        if let Some(id) = pkt.message_id {
            match ks.recv.offer(id, pkt.opcode, pkt.payload) {
                RecvVerdict::New | RecvVerdict::Duplicate => ks.acks.owe(id),
                RecvVerdict::OutOfWindow => return Err(DropReason::OutOfWindow),
            }
        }
        while let Some((_, opcode, payload)) = ks.recv.pop() {
            match opcode {
                Opcode::ControlHardResetClientV2
                | Opcode::ControlHardResetClientV3
                | Opcode::ControlHardResetServerV2
                | Opcode::ControlSoftResetV1 => ks.peer_reset_seen = true,
                // tls-crypt-v2: P_CONTROL_WKC_V1 is a P_CONTROL_V1 that carried the client key.
                Opcode::ControlV1 | Opcode::ControlWkcV1 => ks.feed_tls(&payload, &mut self.events),
                _ => {}
            }
        }
        Self::advance(ks, &self.tls_role, max_payload, &mut self.events);
        Ok(())
    }

    /// Starts TLS once our reset is acknowledged; updates the phase.
    fn advance(
        ks: &mut KeyState,
        role: &TlsRole,
        max_payload: usize,
        events: &mut VecDeque<SessionEvent>,
    ) {
        if ks.phase == Phase::Reset && ks.send.is_idle() && ks.peer_reset_seen {
            let conn = match role {
                TlsRole::Client(cfg) => {
                    rustls::ClientConnection::new(cfg.clone(), crate::tls::dummy_server_name())
                        .map(rustls::Connection::Client)
                }
                TlsRole::Server(cfg) => {
                    rustls::ServerConnection::new(cfg.clone()).map(rustls::Connection::Server)
                }
            };
            match conn {
                Ok(c) => {
                    ks.tls = Some(c);
                    ks.phase = Phase::Tls;
                    events.push_back(SessionEvent::TlsStarted { key_id: ks.key_id });
                    let early = std::mem::take(&mut ks.tls_in_early);
                    if !early.is_empty() {
                        ks.feed_tls(&early, events);
                    }
                }
                Err(e) => ks.fail(format!("TLS setup: {e}"), events),
            }
        }
        ks.packetize(max_payload);
        ks.update_phase(events);
    }

    fn start_key_state(&mut self, key_id: u8, now: Instant) {
        let ks = KeyState::new(key_id, Opcode::ControlSoftResetV1, now, &self.params);
        self.keys.insert(0, ks);
        // Keep the new state and the one it replaces.
        self.keys.truncate(2);
    }

    /// Starts a renegotiation from our side with the next key-id. Returns it.
    pub fn renegotiate(&mut self, now: Instant) -> Option<u8> {
        let cur = self.keys.first()?;
        if cur.phase != Phase::Active {
            return None;
        }
        // Key-ids cycle 1..=7 after the initial 0.
        let next = if cur.key_id >= 7 { 1 } else { cur.key_id + 1 };
        self.start_key_state(next, now);
        Some(next)
    }

    /// Writes our key-method-2 message into the key state's TLS stream.
    pub fn send_key_method(&mut self, key_id: u8, msg: &KeyMethod2) -> Result<(), DropReason> {
        let mut buf = Vec::with_capacity(512);
        msg.encode(&mut buf);
        self.write_plaintext(key_id, &buf)?;
        self.note(true, key_id, key_method_text(msg));
        if let Some(ks) = self.keys.iter_mut().find(|k| k.key_id == key_id) {
            ks.own_km2_written = true;
            ks.own_km2 = Some(Box::new(msg.clone()));
            ks.update_phase(&mut self.events);
        }
        Ok(())
    }

    /// Sends a NUL-terminated text message (PUSH_REQUEST, PUSH_REPLY, EXIT, …) on the newest
    /// active key state.
    pub fn send_text(&mut self, text: &str) -> Result<(), DropReason> {
        let key_id = self
            .keys
            .iter()
            .find(|k| k.phase == Phase::Active)
            .map(|k| k.key_id)
            .ok_or(DropReason::NoKey)?;
        if text.len() + 1 > TLS_CHANNEL_BUF_SIZE {
            return Err(DropReason::TooBig);
        }
        let mut buf = Vec::with_capacity(text.len() + 1);
        buf.extend_from_slice(text.as_bytes());
        buf.push(0);
        self.write_plaintext(key_id, &buf)?;
        self.note(true, key_id, text.to_owned());
        Ok(())
    }

    fn write_plaintext(&mut self, key_id: u8, bytes: &[u8]) -> Result<(), DropReason> {
        let max_payload = self.params.max_payload;
        let ks = self
            .keys
            .iter_mut()
            .find(|k| k.key_id == key_id)
            .ok_or(DropReason::NoKey)?;
        let tls = ks.tls.as_mut().ok_or(DropReason::NoKey)?;
        // One write call = one TLS record (messages are far below the record size).
        tls.writer()
            .write_all(bytes)
            .map_err(|_| DropReason::TooBig)?;
        ks.packetize(max_payload);
        Ok(())
    }

    /// Exports the 256-byte data-channel key block of an active key state (TLS-EKM).
    pub fn export_key_material(&self, key_id: u8) -> Option<zeroize::Zeroizing<[u8; KEY2_LEN]>> {
        let ks = self
            .keys
            .iter()
            .find(|k| k.key_id == key_id && k.phase != Phase::Failed && k.keys_exchanged())?;
        let tls = ks.tls.as_ref()?;
        tls.export_keying_material([0u8; KEY2_LEN], EKM_LABEL_DATAKEYS, None)
            .ok()
            .map(zeroize::Zeroizing::new)
    }

    /// The 256-byte key block of the legacy derivation (TLS 1.0 PRF over both key-method-2
    /// messages and the session ids), for peers without TLS-EKM.
    pub fn prf_key_material(&self, key_id: u8) -> Option<zeroize::Zeroizing<[u8; KEY2_LEN]>> {
        let ks = self
            .keys
            .iter()
            .find(|k| k.key_id == key_id && k.phase != Phase::Failed && k.keys_exchanged())?;
        let (own, peer) = (ks.own_km2.as_deref()?, ks.peer_km2.as_deref()?);
        let remote = self.remote_sid?;
        fn source(m: &KeyMethod2) -> crate::prf::KeySource<'_> {
            crate::prf::KeySource {
                pre_master: m.pre_master.as_ref(),
                random1: &m.random1,
                random2: &m.random2,
            }
        }
        let is_server = matches!(ks.tls, Some(rustls::Connection::Server(_)));
        let (client, server, csid, ssid) = if is_server {
            (peer, own, remote, self.local_sid)
        } else {
            (own, peer, self.local_sid, remote)
        };
        crate::prf::key_expansion(source(client), source(server), csid.0, ssid.0)
            .map(zeroize::Zeroizing::new)
    }

    /// The peer's certificate chain (leaf first) of a key state, once TLS is up.
    pub fn peer_certificates(&self, key_id: u8) -> Option<Vec<Vec<u8>>> {
        let ks = self.keys.iter().find(|k| k.key_id == key_id)?;
        let certs = ks.tls.as_ref()?.peer_certificates()?;
        Some(certs.iter().map(|c| c.as_ref().to_vec()).collect())
    }

    /// A one-line description of the negotiated TLS parameters.
    pub fn tls_description(&self, key_id: u8) -> Option<String> {
        let ks = self.keys.iter().find(|k| k.key_id == key_id)?;
        let tls = ks.tls.as_ref()?;
        Some(format!(
            "{:?}, {:?}",
            tls.protocol_version()?,
            tls.negotiated_cipher_suite()?.suite()
        ))
    }

    /// Drops key states other than the newest (after a renegotiation completed or failed).
    pub fn retire_old_key_states(&mut self) {
        self.keys.truncate(1);
    }

    /// Removes a failed key state; returns true if it was the newest.
    pub fn remove_key_state(&mut self, key_id: u8) -> bool {
        let newest = self.keys.first().is_some_and(|k| k.key_id == key_id);
        self.keys.retain(|k| k.key_id != key_id);
        newest
    }

    /// The next control packet to send (wire form appended to `out`). Returns false when
    /// nothing is due.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let max_payload = self.params.max_payload;
        for i in 0..self.keys.len() {
            let ks = &mut self.keys[i];
            if ks.phase == Phase::Failed && ks.tls_out.is_empty() && ks.send.is_idle() {
                continue;
            }
            ks.packetize(max_payload);
            let remote = self.remote_sid;
            if let Some(due) = ks.send.poll_due(now) {
                let acks = if remote.is_some() {
                    ks.acks.take(MAX_ACKS_PIGGYBACK, true)
                } else {
                    AckList::new()
                };
                let pkt = ControlPacket {
                    opcode: due.opcode,
                    key_id: ks.key_id,
                    session_id: self.local_sid,
                    remote_session_id: (!acks.is_empty()).then_some(remote.unwrap_or_default()),
                    acks,
                    message_id: Some(due.id),
                    payload: due.payload,
                };
                self.scratch.clear();
                pkt.emit(&mut self.scratch);
                if self.wrap.wrap(&self.scratch, out).is_ok() {
                    self.last_tx = Some(now);
                    return true;
                }
                continue;
            }
            if ks.acks.has_owed() {
                let Some(remote) = remote else { continue };
                let acks = ks.acks.take(MAX_ACKS_IN_PACKET, true);
                let pkt = ControlPacket {
                    opcode: Opcode::AckV1,
                    key_id: ks.key_id,
                    session_id: self.local_sid,
                    remote_session_id: Some(remote),
                    acks,
                    message_id: None,
                    payload: &[],
                };
                self.scratch.clear();
                pkt.emit(&mut self.scratch);
                if self.wrap.wrap(&self.scratch, out).is_ok() {
                    self.last_tx = Some(now);
                    return true;
                }
            }
        }
        false
    }

    /// Earliest time [`ControlSession::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        for ks in &self.keys {
            if ks.phase == Phase::Failed {
                continue;
            }
            if ks.acks.has_owed() || ks.send.has_unsent() {
                // Due now; any instant in the past says so without reading the clock.
                min(ks.started);
            }
            if let Some(d) = ks.send.next_deadline() {
                min(d);
            }
            if ks.phase != Phase::Active {
                min(ks.started + self.params.hand_window);
            }
        }
        t
    }

    /// True when something can be transmitted right now without waiting for a timer.
    pub fn wants_transmit(&self) -> bool {
        self.keys.iter().any(|ks| {
            ks.phase != Phase::Failed
                && (ks.acks.has_owed()
                    || ks.send.has_unsent()
                    || (!ks.tls_out.is_empty() && ks.send.has_room()))
        })
    }

    /// Fires timers: hand-window expiry. Retransmissions happen in `poll_transmit`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let hw = self.params.hand_window;
        for ks in &mut self.keys {
            if matches!(ks.phase, Phase::Reset | Phase::Tls) && now >= ks.started + hw {
                let reason = format!(
                    "TLS key negotiation did not complete within {} s (hand-window)",
                    hw.as_secs()
                );
                ks.fail(reason, &mut self.events);
            }
        }
        for ks in &mut self.keys {
            Self::advance(
                ks,
                &self.tls_role,
                self.params.max_payload,
                &mut self.events,
            );
        }
    }
}

/// Words for the TLS failures users meet most: certificate trouble and peer alerts.
fn describe_tls_error(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(c) => {
            let what = match c {
                C::UnknownIssuer => {
                    "it is not issued by the configured 'ca' (unknown issuer)".to_owned()
                }
                C::BadSignature => {
                    "its signature does not verify against the configured 'ca'".to_owned()
                }
                C::Expired | C::ExpiredContext { .. } => "it has expired".to_owned(),
                C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".to_owned(),
                C::Revoked => "it is revoked (listed in the crl-verify CRL)".to_owned(),
                C::Other(o) => o.to_string(),
                other => format!("{other:?}"),
            };
            format!("peer certificate rejected: {what}")
        }
        E::AlertReceived(a) => {
            format!("the peer sent TLS alert {a:?} (it rejected our certificate or parameters)")
        }
        E::NoCertificatesPresented => "the peer presented no certificate".to_owned(),
        other => other.to_string(),
    }
}

fn random_session_id() -> SessionId {
    let mut b = crate::rng::bytes::<8>();
    if b == [0; 8] {
        b[0] = 1;
    }
    SessionId(b)
}

/// Random bytes for key-method-2 fields and session ids ([`crate::rng`]: seedable in tests).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    crate::rng::bytes()
}
