//! Stateful fuzzing of the server: random sequences of what its world does to it — real
//! clients handshaking from several addresses, lost packets, verifiers answering late (or for
//! sessions long gone), floats and exits from the data path (current or stale), replayed and
//! garbage packets, restarts, closed transports, time passing — and after every step the
//! invariants a user relies on:
//!
//! - admitted clients never exceed `max-clients`, sessions never exceed what admission
//!   allows (handshakes bounded apart);
//! - every peer with data keys was approved by a verdict for *its* session (a verdict, float
//!   or exit for an earlier session never touches a later one);
//! - no two peers share a tunnel address or a transport address;
//! - what the server sends in one step stays bounded (nothing piles up for a peer that does
//!   not listen).
//!
//! The client gets the same treatment from the other side: a server (ours, with a push that
//! varies from case to case) whose packets are lost, replayed, mangled or mixed with
//! garbage, restarted servers, time passing, renegotiations, and a local close; checked
//! after every step: what the client sends and the events it emits in one step stay
//! bounded, and whenever it says it is connected it has data keys and the push it reported.
//!
//! Runs in every `cargo test` for a bounded number of cases (`PROPTEST_CASES` raises it);
//! a failing case is shrunk and can be replayed from proptest's regression file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tunscope_proto::client::{Client, ClientEvent};
use tunscope_proto::server::{AuthResult, PeerAddr, Server, ServerEvent};

mod common;
use common::{Pki, client, pki, server};

const CLIENTS: usize = 4;
const ADDRS: usize = 6;
const MAX_CLIENTS: usize = 2;
/// Most bytes the server may send in one step (a full round of retransmissions for every
/// session it may hold, with room to spare).
const STEP_BYTES: usize = 512 * 1024;

fn shared_pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| pki(CLIENTS))
}

fn addr(i: usize) -> PeerAddr {
    PeerAddr::Udp(SocketAddr::from((
        [198, 18, 1, 10 + (i % ADDRS) as u8],
        40_000,
    )))
}

/// The next value of a xorshift generator (the fuzzers' own randomness, seeded per case).
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One thing that happens to the server.
#[derive(Clone, Debug)]
enum Op {
    /// Client `c` sends what it has, from its current address.
    ClientSends(usize),
    /// The server sends; each packet is lost with the given probability (per mille).
    ServerSends(u16),
    /// Time passes.
    Advance(u16),
    /// The verifier answers the `n`-th request it holds (possibly for a session gone by now).
    Verdict(usize, bool),
    /// The data path reports a float of peer `p` (with the session it saw, `stale` or current)
    /// to address `a`.
    Float(u32, bool, usize),
    /// The data path reports an OCC exit.
    Exit(u32, bool),
    /// Client `c` starts over (a crash and restart), at address `a`.
    Restart(usize, usize),
    /// A packet seen before, replayed from address `a`.
    Replay(usize, usize),
    /// Garbage from address `a`.
    Garbage(usize, Vec<u8>),
    /// The transport of address `a` closes.
    Closed(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Weighted towards progress, so sequences reach admitted clients (not only
        // handshakes) and then disturb them.
        12 => (0..CLIENTS).prop_map(Op::ClientSends),
        12 => prop_oneof![3 => Just(0u16), 1 => 0u16..400].prop_map(Op::ServerSends),
        3 => (0u16..3000).prop_map(Op::Advance),
        4 => (0usize..4, proptest::bool::weighted(0.8)).prop_map(|(n, ok)| Op::Verdict(n, ok)),
        1 => (0u32..4, any::<bool>(), 0..ADDRS).prop_map(|(p, s, a)| Op::Float(p, s, a)),
        1 => (0u32..4, any::<bool>()).prop_map(|(p, s)| Op::Exit(p, s)),
        1 => (0..CLIENTS, 0..ADDRS).prop_map(|(c, a)| Op::Restart(c, a)),
        1 => (0usize..64, 0..ADDRS).prop_map(|(i, a)| Op::Replay(i, a)),
        1 => (0..ADDRS, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(a, g)| Op::Garbage(a, g)),
        1 => (0..ADDRS).prop_map(Op::Closed),
    ]
}

/// The server and its world.
struct World {
    now: Instant,
    server: Server,
    clients: Vec<(usize, Client)>,
    /// Verification requests not answered yet: (peer, session, key-id).
    held: Vec<(u32, u64, u8)>,
    /// Sessions a verdict approved.
    approved: HashSet<(u32, u64)>,
    /// Sessions the server knows now, per peer-id (from its events): the current session and
    /// the previous one (for stale reports).
    sessions: HashMap<u32, (u64, Option<u64>)>,
    seen: Vec<(PeerAddr, Vec<u8>)>,
    rng: u64,
}

impl World {
    fn new() -> World {
        let p = shared_pki();
        World {
            now: Instant::now(),
            server: server(p, &format!("max-clients {MAX_CLIENTS}\nhand-window 10\n")),
            clients: (0..CLIENTS).map(|i| (i, client(p, i, ""))).collect(),
            held: vec![],
            approved: HashSet::new(),
            sessions: HashMap::new(),
            seen: vec![],
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }

    fn random(&mut self) -> u64 {
        xorshift(&mut self.rng)
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.server.poll_event() {
            if let ServerEvent::AuthRequest {
                peer,
                session,
                key_id,
                ..
            } = e
            {
                self.held.push((peer, session, key_id));
                let entry = self.sessions.entry(peer).or_insert((session, None));
                if entry.0 != session {
                    *entry = (session, Some(entry.0));
                }
            }
        }
    }

    fn session_of(&self, peer: u32, stale: bool) -> u64 {
        match self.sessions.get(&peer) {
            Some((cur, prev)) if stale => prev.unwrap_or(cur.wrapping_sub(1)),
            Some((cur, _)) => *cur,
            None => 0,
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::ClientSends(c) => {
                let (at, cl) = &mut self.clients[*c];
                let from = addr(*at);
                for _ in 0..32 {
                    let mut b = vec![];
                    if cl.poll_transmit(self.now, &mut b).is_none() {
                        break;
                    }
                    if matches!(b[0] >> 3, 6 | 9) {
                        continue;
                    }
                    let _ = self.server.handle_control(self.now, from, &b);
                    if self.seen.len() < 64 {
                        self.seen.push((from, b));
                    }
                }
            }
            Op::ServerSends(loss) => {
                let mut sent = 0usize;
                loop {
                    let mut b = vec![];
                    let Some(to) = self.server.poll_transmit(self.now, &mut b) else {
                        break;
                    };
                    sent += b.len();
                    prop_assert!(
                        sent <= STEP_BYTES,
                        "the server sent {sent} bytes in one step"
                    );
                    if self.random() % 1000 < u64::from(*loss) || matches!(b[0] >> 3, 6 | 9) {
                        continue;
                    }
                    let now = self.now;
                    for (at, cl) in self.clients.iter_mut() {
                        if addr(*at) == to {
                            let _ = cl.handle_control(now, &b);
                            while cl.poll_event().is_some() {}
                        }
                    }
                }
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                let now = self.now;
                for (_, cl) in self.clients.iter_mut() {
                    cl.handle_timeout(now);
                    while cl.poll_event().is_some() {}
                }
                self.server.handle_timeout(now);
            }
            Op::Verdict(n, ok) => {
                if !self.held.is_empty() {
                    let (peer, session, key_id) = self.held.remove(n % self.held.len());
                    if *ok {
                        self.approved.insert((peer, session));
                    }
                    let result = AuthResult {
                        ok: *ok,
                        reason: (!ok).then(|| "fuzz refusal".into()),
                        overrides: None,
                    };
                    self.server
                        .handle_auth_result(self.now, peer, session, key_id, result);
                }
            }
            Op::Float(p, stale, a) => {
                let s = self.session_of(*p, *stale);
                self.server.handle_float(*p, s, addr(*a));
            }
            Op::Exit(p, stale) => {
                let s = self.session_of(*p, *stale);
                self.server.handle_exit_notification(self.now, *p, s);
            }
            Op::Restart(c, a) => {
                self.clients[*c] = (*a, client(shared_pki(), *c, ""));
            }
            Op::Replay(i, a) => {
                if let Some((_, b)) = self.seen.get(i % self.seen.len().max(1)).cloned() {
                    let _ = self.server.handle_control(self.now, addr(*a), &b);
                }
            }
            Op::Garbage(a, g) => {
                let _ = self.server.handle_control(self.now, addr(*a), g);
            }
            Op::Closed(a) => self.server.handle_transport_closed(self.now, addr(*a)),
        }
        self.drain_events();
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let snap = self.server.snapshot();
        prop_assert!(
            snap.peers.len() <= MAX_CLIENTS,
            "{} peers with data keys, max-clients {MAX_CLIENTS}",
            snap.peers.len()
        );
        let counts = self.server.counts();
        prop_assert!(counts.connected <= MAX_CLIENTS);
        prop_assert!(counts.peers <= MAX_CLIENTS + tunscope_proto::server::MIN_HANDSHAKES);
        let mut tunnel = HashSet::new();
        let mut transport = HashSet::new();
        for v in snap.peers.values() {
            prop_assert!(
                self.approved.contains(&(v.id, v.session)),
                "peer {} (session {}) has data keys without a verdict for its session",
                v.id,
                v.session
            );
            if let Some(a) = v.ipv4 {
                prop_assert!(tunnel.insert(a), "tunnel address {a} held twice");
            }
            prop_assert!(
                transport.insert(v.addr),
                "transport address {} held twice",
                v.addr
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn server_invariants_hold_for_any_sequence(ops in proptest::collection::vec(op(), 1..300)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op)?;
        }
    }
}

/// The fuzzer reaches the states that matter: with a friendly sequence, clients connect
/// (so the invariants above are checked on admitted peers, not only on handshakes).
#[test]
fn a_plain_sequence_connects_clients() {
    let mut w = World::new();
    for _ in 0..60 {
        for c in 0..CLIENTS {
            w.apply(&Op::ClientSends(c)).unwrap();
        }
        w.apply(&Op::ServerSends(0)).unwrap();
        while !w.held.is_empty() {
            w.apply(&Op::Verdict(0, true)).unwrap();
        }
        w.apply(&Op::Advance(50)).unwrap();
    }
    assert_eq!(w.server.counts().connected, MAX_CLIENTS);
}

/// What happens to a client, from the network and from its user.
#[derive(Clone, Debug)]
enum ClientOp {
    /// The client sends; what it sends reaches the server.
    ClientSends,
    /// The server sends; each packet is lost with this probability (per mille), and with
    /// `mangle` one bit of the first is flipped (without a control-channel wrap that ends
    /// the TLS session: the client must restart or give up cleanly).
    ServerSends(u16, bool),
    /// The server verifies (or refuses) the pending clients.
    Verdicts(bool),
    /// A packet the client got before comes again.
    ReplayToClient(usize),
    /// Garbage reaches the client.
    Garbage(Vec<u8>),
    /// The server restarts (a new session on the same address).
    ServerRestart,
    Advance(u16),
    /// The user closes the client.
    Close,
}

fn client_op() -> impl Strategy<Value = ClientOp> {
    // Progress is likely, endings (a restart, a close) rare: most sequences connect, then
    // get disturbed.
    prop_oneof![
        48 => Just(ClientOp::ClientSends),
        48 => (prop_oneof![3 => Just(0u16), 1 => 0u16..500], proptest::bool::weighted(0.03))
            .prop_map(|(l, m)| ClientOp::ServerSends(l, m)),
        16 => proptest::bool::weighted(0.85).prop_map(ClientOp::Verdicts),
        6 => (0usize..64).prop_map(ClientOp::ReplayToClient),
        6 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(ClientOp::Garbage),
        1 => Just(ClientOp::ServerRestart),
        10 => (0u16..3000).prop_map(ClientOp::Advance),
        1 => Just(ClientOp::Close),
    ]
}

/// A push the server makes, varied per case.
fn server_extra() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("reneg-sec 3\n".to_owned()),
        Just("push \"comp-lzo no\"\n".to_owned()),
        (1u32..300).prop_map(|n| (0..n)
            .map(|i| format!(
                "push \"route 198.19.{}.{} 255.255.255.255\"\n",
                100 + i / 200,
                i % 200
            ))
            .collect()),
        Just(
            "push \"dhcp-option DNS 127.0.0.1\"\npush \"redirect-gateway def1 block-local\"\n"
                .to_owned()
        ),
    ]
}

struct ClientWorld {
    now: Instant,
    server: Server,
    extra: String,
    client: Client,
    seen: Vec<Vec<u8>>,
    rng: u64,
    connected_events: usize,
}

const CLIENT_ADDR: usize = 0;

impl ClientWorld {
    fn new(extra: String) -> ClientWorld {
        let p = shared_pki();
        ClientWorld {
            now: Instant::now(),
            server: server(p, &extra),
            extra,
            client: client(p, 0, ""),
            seen: vec![],
            rng: 0x9e37_79b9_7f4a_7c15,
            connected_events: 0,
        }
    }

    fn random(&mut self) -> u64 {
        xorshift(&mut self.rng)
    }

    fn deliver(&mut self, b: &[u8]) -> Result<(), TestCaseError> {
        let _ = self.client.handle_control(self.now, b);
        self.drain()
    }

    /// Takes the client's events; bounded per step, and a connection comes with keys. A
    /// restart makes a new client, as the engine does.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        let mut n = 0;
        while let Some(e) = self.client.poll_event() {
            n += 1;
            if let ClientEvent::Restart(_) = &e {
                self.client = client(shared_pki(), 0, "");
                continue;
            }
            prop_assert!(
                n <= 10_000,
                "the client emitted over 10,000 events in one step"
            );
            if let ClientEvent::Connected(c) = &e {
                self.connected_events += 1;
                prop_assert!(
                    self.client.data_plane().send.is_some(),
                    "connected without a key"
                );
                prop_assert!(
                    c.pushed.routes.len() <= tunscope_proto::client::MAX_PUSHED_OPTIONS,
                    "pushed {} routes",
                    c.pushed.routes.len()
                );
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &ClientOp) -> Result<(), TestCaseError> {
        let from = addr(CLIENT_ADDR);
        match op {
            ClientOp::ClientSends => {
                let mut sent = 0usize;
                loop {
                    let mut b = vec![];
                    if self.client.poll_transmit(self.now, &mut b).is_none() {
                        break;
                    }
                    sent += b.len();
                    prop_assert!(
                        sent <= STEP_BYTES,
                        "the client sent {sent} bytes in one step"
                    );
                    if !matches!(b[0] >> 3, 6 | 9) {
                        let _ = self.server.handle_control(self.now, from, &b);
                    }
                }
            }
            ClientOp::ServerSends(loss, mangle) => loop {
                let mut b = vec![];
                if self.server.poll_transmit(self.now, &mut b).is_none() {
                    break;
                }
                if self.random() % 1000 < u64::from(*loss) || matches!(b[0] >> 3, 6 | 9) {
                    continue;
                }
                if *mangle && self.seen.len().is_multiple_of(7) && !b.is_empty() {
                    let i = (self.random() as usize) % b.len();
                    b[i] ^= 1 << (self.random() % 8);
                }
                if self.seen.len() < 64 {
                    self.seen.push(b.clone());
                }
                self.deliver(&b)?;
            },
            ClientOp::Verdicts(ok) => {
                while let Some(e) = self.server.poll_event() {
                    if let ServerEvent::AuthRequest {
                        peer,
                        session,
                        key_id,
                        ..
                    } = e
                    {
                        let result = AuthResult {
                            ok: *ok,
                            reason: (!ok).then(|| "fuzz refusal".into()),
                            overrides: None,
                        };
                        self.server
                            .handle_auth_result(self.now, peer, session, key_id, result);
                    }
                }
            }
            ClientOp::ReplayToClient(i) => {
                if let Some(b) = self.seen.get(i % self.seen.len().max(1)).cloned() {
                    self.deliver(&b)?;
                }
            }
            ClientOp::Garbage(g) => self.deliver(g)?,
            ClientOp::ServerRestart => self.server = server(shared_pki(), &self.extra),
            ClientOp::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.client.handle_timeout(self.now);
                self.server.handle_timeout(self.now);
            }
            ClientOp::Close => self.client.close(self.now),
        }
        self.drain()?;
        if self.client.is_connected() {
            prop_assert!(
                self.client.data_plane().send.is_some(),
                "connected without a send key"
            );
            prop_assert!(self.client.pushed().is_some(), "connected without a push");
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn client_invariants_hold_for_any_server_behaviour(
        extra in server_extra(),
        ops in proptest::collection::vec(client_op(), 1..300),
    ) {
        let mut w = ClientWorld::new(extra);
        for op in &ops {
            w.apply(op)?;
        }
    }
}

/// The client fuzzer reaches a connection with a friendly sequence, whatever the push.
#[test]
fn a_plain_sequence_connects_the_client() {
    for extra in ["", "push \"comp-lzo no\"\n"] {
        let mut w = ClientWorld::new(extra.to_owned());
        for _ in 0..60 {
            w.apply(&ClientOp::ClientSends).unwrap();
            w.apply(&ClientOp::ServerSends(0, false)).unwrap();
            w.apply(&ClientOp::Verdicts(true)).unwrap();
            w.apply(&ClientOp::Advance(50)).unwrap();
        }
        assert_eq!(w.connected_events, 1, "push {extra:?}");
    }
}
