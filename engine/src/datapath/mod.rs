//! The data path, one for both roles: threads that move batches of packets between the tun
//! device and the link, with every stage explicit, for any number of peers.
//!
//! ```text
//! rx thread:  socket_rx ─▶ (peer by peer-id / address) ─▶ decrypt ─▶ write_tun
//!                  │                                         └──▶ client-to-client: encrypt ─▶ socket_tx
//!                  └──── control packets ─▶ control thread (channel)
//! tx thread:  read_tun ─▶ (peer by inner destination) ─▶ encrypt ─▶ socket_tx
//! ```
//!
//! A client with several receive threads on its UDP link ([`turns`]) receives a batch at a
//! time with a ticket, decrypts batches side by side, and delivers them in ticket order.
//!
//! A server publishes a [`PeerTable`] with one entry per connected client; a client publishes
//! a table with one peer, the server, reached by default routes (as a wireguard-go device
//! with a single peer). The [`Transport`] hides whether packets travel over a connected link
//! (a client's UDP socket or TCP stream), one UDP socket for many peers, or a TCP listener's
//! connections.
//!
//! Each stage counts a whole batch in an [`account::StageBatch`] whose only mutators are pass
//! and drop, and publishes once per batch ([`crate::stats`]); the clock is read once per stage
//! boundary. Keys come from the control thread with the table; a thread re-reads the table
//! only when the generation counter moved (one relaxed load per batch). Sampled packets are
//! copied to the capture tap ([`crate::capture`]).

pub mod account;
pub mod control_queue;
mod control_tx;
pub mod ethernet;
pub mod memory;
mod rx;
mod seal;
pub mod transport;
pub mod turns;
mod tx;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tunscope_proto::data::Receiver;
use tunscope_proto::server::{AuthResult, PeerAddr, PeerId, PeerView, RouteTable};

use crate::capture::{Tap, Wire};
use crate::stats::{EngineStats, PROBES};
use crate::tun::Tun;

pub use control_queue::{ControlQueue, ControlSender, control_channel};
pub use control_tx::{count_control, send_from_control};
pub use rx::rx_loop;
pub use transport::Transport;
pub use tx::tx_loop;

/// Data threads asked for with `--threads N`: N, or one per core for 0.
pub fn threads_or_cores(n: usize) -> usize {
    match n {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// How long a blocked thread waits before checking for shutdown.
pub const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Per-peer state shared between the data path and the control thread.
pub struct PeerRuntime {
    /// This peer's stage probes (histograms with one significant figure to stay small).
    pub stats: EngineStats,
    /// Nanoseconds after the epoch of the last authenticated data packet received.
    pub last_rx_ns: AtomicU64,
    /// Nanoseconds after the epoch of the last data packet sent.
    pub last_tx_ns: AtomicU64,
    /// Our address as this peer sees it (for capture headers).
    pub local: OnceLock<SocketAddr>,
    /// This peer's keys as a receiver sees them, with their replay windows. One per peer,
    /// shared by every rx thread: a packet replayed towards another thread (another socket
    /// of a multi-threaded server) meets the same window.
    pub receiver: Mutex<Receiver>,
    /// Held by a send thread from sealing this peer's packets of a batch until they are
    /// handed to the socket: with several send threads (the queues of a multi-queue tun) a
    /// peer's packet-ids still leave in the order they were given.
    pub send_order: Mutex<()>,
}

impl PeerRuntime {
    /// A peer's runtime with replay windows of `replay_window` packets.
    pub fn new(replay_window: u32) -> PeerRuntime {
        PeerRuntime {
            stats: EngineStats::new(1),
            last_rx_ns: AtomicU64::new(0),
            last_tx_ns: AtomicU64::new(0),
            local: OnceLock::new(),
            receiver: Mutex::new(Receiver::with_replay_window(replay_window)),
            send_order: Mutex::new(()),
        }
    }

    /// The receiver, locked (a poisoned lock still holds valid windows).
    pub fn receiver(&self) -> std::sync::MutexGuard<'_, Receiver> {
        self.receiver.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl crate::report::ReportSource for PeerRuntime {
    fn scope_report(&self) -> crate::stats::ScopeReport {
        self.stats.report()
    }
}

/// A peer as the data threads see it.
#[derive(Clone)]
pub struct DataPeer {
    /// Keys, addresses, routes of the peer.
    pub view: Arc<PeerView>,
    /// Counters and activity.
    pub rt: Arc<PeerRuntime>,
}

/// The data path's view of all peers at one generation.
#[derive(Default)]
pub struct PeerTable {
    /// Generation it was built from.
    pub generation: u64,
    /// Connected peers.
    pub peers: HashMap<PeerId, DataPeer>,
    /// Transport address → peer.
    pub by_addr: HashMap<PeerAddr, PeerId>,
    /// Inner destination → peer.
    pub routes: RouteTable,
    /// Where every packet goes, without a lookup (a client's server).
    pub default_peer: Option<PeerId>,
    /// `client-to-client`.
    pub client_to_client: bool,
    /// Drop decrypted packets whose inner source the peer does not own (a server's clients
    /// may only send from their tunnel addresses and iroutes; a server may send from any).
    pub check_sources: bool,
    /// Count stages per peer too (a server; a client's one peer is the whole engine).
    pub per_peer_stats: bool,
    /// TCP MSS to clamp SYNs to (0 = off).
    pub mss: u16,
    /// A client with `block-ipv6` and no IPv6 in the tunnel: IPv6 read from the tun device
    /// goes nowhere and is answered "no route" (ICMPv6) at once.
    pub block_ipv6: bool,
    /// `dev tap`: the device carries Ethernet frames; a server forwards them by learned MAC
    /// address ([`ethernet::MacTable`]) instead of by route.
    pub ethernet: bool,
}

impl PeerTable {
    /// A client's table: the server as the only peer, where every packet goes.
    pub fn single(view: PeerView, rt: Arc<PeerRuntime>, mss: u16) -> PeerTable {
        let id = view.id;
        let by_addr = HashMap::from([(view.addr, id)]);
        let peers = HashMap::from([(
            id,
            DataPeer {
                view: Arc::new(view),
                rt,
            },
        )]);
        PeerTable {
            generation: 0,
            peers,
            by_addr,
            routes: RouteTable::new(),
            default_peer: Some(id),
            client_to_client: false,
            check_sources: false,
            per_peer_stats: false,
            mss,
            block_ipv6: false,
            ethernet: false,
        }
    }

    /// The peer that decides about a data packet from `from` carrying `peer_id`: by peer-id
    /// when it names a peer of this table, else by transport address.
    pub fn lookup(&self, peer_id: Option<u32>, from: &PeerAddr) -> Option<(PeerId, &DataPeer)> {
        let id = peer_id
            .filter(|p| self.peers.contains_key(p))
            .or_else(|| self.by_addr.get(from).copied())?;
        self.peers.get(&id).map(|dp| (id, dp))
    }
}

/// Input for the control thread (client or server), from the data path and helpers.
#[derive(Debug)]
pub enum ControlInput {
    /// A control packet.
    Packet {
        /// From where.
        from: PeerAddr,
        /// The packet.
        packet: Vec<u8>,
    },
    /// An authenticated data packet of `peer` came from a new UDP address.
    Float {
        /// The peer.
        peer: PeerId,
        /// Its session (peer-ids are reused).
        session: u64,
        /// Its new address.
        addr: PeerAddr,
    },
    /// OCC EXIT from a peer.
    Exit {
        /// The peer.
        peer: PeerId,
        /// Its session.
        session: u64,
    },
    /// A verification finished (server).
    AuthDone {
        /// The peer.
        peer: PeerId,
        /// The session the verdict is for.
        session: u64,
        /// Key-id.
        key_id: u8,
        /// Verdict.
        result: AuthResult,
    },
    /// A connection (a server's TCP client, a client's link) closed or failed.
    Closed {
        /// Which.
        addr: PeerAddr,
        /// Why.
        why: String,
    },
}

/// State shared by the data-path threads and the control thread of one engine (a server's
/// run, or one connection attempt of a client).
pub struct Shared {
    /// Set to stop the data threads.
    pub stop: AtomicBool,
    /// Current peer table.
    table: RwLock<Arc<PeerTable>>,
    /// Bumped after `table` changes.
    generation: AtomicU64,
    /// Probes summed over all peers (plus packets from unknown senders).
    pub stats: Arc<EngineStats>,
    /// Reference point of activity stamps.
    pub epoch: Instant,
    /// Replay window size.
    pub replay_window: u32,
    /// The link.
    pub transport: Transport,
    /// Bounded channel to the control thread.
    pub control: ControlSender,
    /// Capture tap, when `--capture` is on.
    pub tap: Option<Arc<Tap>>,
    /// The tun device: a client creates it once the server's push says how, so the data
    /// threads start before it exists (control packets flow from the first one on).
    pub tun: OnceLock<Tun>,
    /// A tap server's learned MAC addresses (written by rx threads, read by the tx thread).
    pub macs: ethernet::MacTable,
    /// Set when several receive threads share one connected UDP link (a client's
    /// `--rx-threads N`): the order they deliver in.
    pub rx_turns: Option<turns::Turns>,
}

impl Shared {
    /// Shared state around `transport`; `tun` when the device exists already.
    pub fn new(
        transport: Transport,
        control: ControlSender,
        stats: Arc<EngineStats>,
        tap: Option<Arc<Tap>>,
        replay_window: u32,
        tun: Option<Tun>,
    ) -> Shared {
        let cell = OnceLock::new();
        if let Some(t) = tun {
            let _ = cell.set(t);
        }
        Shared {
            stop: AtomicBool::new(false),
            table: RwLock::new(Arc::new(PeerTable::default())),
            generation: AtomicU64::new(0),
            stats,
            epoch: Instant::now(),
            replay_window,
            transport,
            control,
            tap,
            tun: cell,
            macs: ethernet::MacTable::default(),
            rx_turns: None,
        }
    }

    /// Installs a new table (a tap server forgets the addresses of peers that left).
    pub fn publish(&self, t: PeerTable) {
        if t.ethernet && t.default_peer.is_none() {
            self.macs
                .retain(|p, s| t.peers.get(&p).is_some_and(|dp| dp.view.session == s));
        }
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current table.
    pub fn current(&self) -> Arc<PeerTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The table if it changed since `seen` (updated), else `None`.
    fn changed(&self, seen: &mut u64) -> Option<Arc<PeerTable>> {
        let g = self.generation.load(Ordering::Acquire);
        if g == *seen {
            return None;
        }
        *seen = g;
        Some(self.current())
    }

    /// Records activity.
    pub fn stamp(&self, at: &AtomicU64, now: Instant) {
        let ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        at.store(ns.max(1), Ordering::Relaxed);
    }

    /// Reads an activity stamp.
    pub fn instant(&self, at: &AtomicU64) -> Option<Instant> {
        let v = at.load(Ordering::Relaxed);
        (v != 0).then(|| self.epoch + Duration::from_nanos(v))
    }

    fn wire_for(&self, dp: &DataPeer, outbound: bool) -> Option<Wire> {
        self.transport
            .wire(dp.view.addr, dp.rt.local.get().copied(), outbound)
    }

    /// Stops the data threads and wakes those blocked on the transport.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.transport.wake();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// How long a control thread may wait for input before its state machine's next deadline
/// (at most [`IDLE_WAIT`], so it notices signals and shutdown).
pub fn control_wait(deadline: Option<Instant>, now: Instant) -> Duration {
    deadline
        .map_or(IDLE_WAIT, |t| t.saturating_duration_since(now))
        .min(IDLE_WAIT)
}

/// Stage boundary times of one batch: real clock reads when probes or the tap need them, the
/// batch's single `now` otherwise.
pub struct Clock {
    on: bool,
}

impl Clock {
    /// Reads the clock per stage when probes are compiled in or a tap is active.
    pub fn new(tap: bool) -> Clock {
        Clock { on: PROBES || tap }
    }

    /// The time now, or `fallback` when timing is off.
    #[inline]
    pub fn mark(&self, fallback: Instant) -> Instant {
        if self.on { Instant::now() } else { fallback }
    }
}

/// Whether a tun packet is IP, and of a plausible length.
pub fn is_ip(p: &[u8]) -> bool {
    match p.first().map(|b| b >> 4) {
        Some(4) => p.len() >= 20,
        Some(6) => p.len() >= 40,
        _ => false,
    }
}
