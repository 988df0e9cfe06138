//! The server's data path: the same stages as the client, with a peer lookup on the way in
//! and a route lookup on the way out, counted and timed globally and per peer.
//!
//! ```text
//! rx thread:  socket_rx ─▶ (peer by peer-id / address) ─▶ decrypt ─▶ write_tun
//!                                                              └──▶ client-to-client: encrypt ─▶ socket_tx
//! tx thread:  read_tun ─▶ (peer by inner destination) ─▶ encrypt ─▶ socket_tx
//! ```

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tunscope_proto::consts::{OCC_EXIT, PEER_ID_UNDEF};
use tunscope_proto::data::{self, Payload, Receiver};
use tunscope_proto::server::routes::packet_src;
use tunscope_proto::server::{AuthResult, PeerAddr, PeerId, PeerView, RouteTable};
use tunscope_proto::stage::{DropReason, Stage};
use tunscope_proto::wire::{DataHeader, Opcode, TcpFramer, peek_opcode, tcp_frame};

use crate::capture::{Tap, TapMeta, TapRecord, Wire, data_ids};
use crate::datapath::{Clock, is_ip};
use crate::link::{Received, RxBatch, TxBatch, UdpEndpoint};
use crate::server::tcp::{TcpConns, TcpEvent};
use crate::stats::ns_between as ns;
use crate::stats::{BatchCounts, EngineStats, LocalHist};
use crate::tun::{Tun, TunReader, TunWriter};

const IDLE_WAIT: Duration = Duration::from_millis(200);
const N_STAGES: usize = Stage::ALL.len();

/// A sampled packet's trace id and (peer-id, key-id, packet-id).
type SampleIds = (u64, (Option<u32>, u8, u32));
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
}

impl Default for PeerRuntime {
    fn default() -> Self {
        PeerRuntime {
            stats: EngineStats::new(1),
            last_rx_ns: AtomicU64::new(0),
            last_tx_ns: AtomicU64::new(0),
            local: OnceLock::new(),
        }
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
    /// `client-to-client`.
    pub client_to_client: bool,
}

/// The server's link.
pub enum Transport {
    /// One UDP socket for all clients.
    Udp(UdpEndpoint),
    /// A listener and one connection per client.
    Tcp(TcpConns),
}

impl Transport {
    /// Sends one packet (control, ping, forwarded data) to a peer.
    pub fn send_one(&self, to: PeerAddr, packet: &[u8]) -> Result<(), DropReason> {
        match (self, to) {
            (Transport::Udp(ep), PeerAddr::Udp(a)) => {
                ep.send_to(packet, a).map_err(|_| DropReason::SocketError)
            }
            (Transport::Tcp(c), PeerAddr::Tcp(id)) => {
                let mut f = Vec::with_capacity(packet.len() + 2);
                tcp_frame(packet, &mut f)?;
                c.send(id, &f)
            }
            _ => Err(DropReason::UnknownPeer),
        }
    }

    /// The wire description of a packet between us and `peer` (for capture headers).
    pub fn wire(&self, peer: PeerAddr, local: Option<SocketAddr>, outbound: bool) -> Option<Wire> {
        let (remote, local, tcp) = match (self, peer) {
            (Transport::Udp(ep), PeerAddr::Udp(a)) => {
                let local = local.or_else(|| {
                    let bound = ep.socket().local_addr().ok()?;
                    if !bound.ip().is_unspecified() {
                        return Some(bound);
                    }
                    // A wildcard socket: our address toward this peer, as routing picks it
                    // (control packets before the peer's own address is cached).
                    let src = crate::netlink::route_get(a.ip()).ok()?.prefsrc?;
                    Some(SocketAddr::new(src, bound.port()))
                })?;
                (a, local, false)
            }
            (Transport::Tcp(c), PeerAddr::Tcp(id)) => {
                let conn = c.get(id)?;
                (conn.remote, conn.local, true)
            }
            _ => return None,
        };
        Some(if outbound {
            Wire {
                src: local,
                dst: remote,
                tcp,
            }
        } else {
            Wire {
                src: remote,
                dst: local,
                tcp,
            }
        })
    }
}

/// Input for the server's control thread.
#[derive(Debug)]
pub enum ServerInput {
    /// A control packet.
    Control {
        /// From where.
        from: PeerAddr,
        /// The packet.
        packet: Vec<u8>,
    },
    /// An authenticated data packet of `peer` came from a new UDP address.
    Float {
        /// The peer.
        peer: PeerId,
        /// Its new address.
        addr: PeerAddr,
    },
    /// OCC EXIT from a peer.
    Exit {
        /// The peer.
        peer: PeerId,
    },
    /// A verification finished.
    AuthDone {
        /// The peer.
        peer: PeerId,
        /// Key-id.
        key_id: u8,
        /// Verdict.
        result: AuthResult,
    },
    /// A TCP connection closed.
    Closed {
        /// Which.
        addr: PeerAddr,
        /// Why.
        why: String,
    },
}

/// State shared by the server's threads.
pub struct Shared {
    /// Set to stop the data threads.
    pub stop: AtomicBool,
    /// Current peer table.
    pub table: RwLock<Arc<PeerTable>>,
    /// Bumped after `table` changes.
    pub generation: AtomicU64,
    /// Probes summed over all peers (plus packets from unknown senders).
    pub stats: Arc<EngineStats>,
    /// Reference point of activity stamps.
    pub epoch: Instant,
    /// TCP MSS clamp (0 = off).
    pub mss: u16,
    /// Replay window size.
    pub replay_window: u32,
    /// The link.
    pub transport: Transport,
    /// Channel to the control thread.
    pub control: Sender<ServerInput>,
    /// Capture tap, when `--capture` is on.
    pub tap: Option<Arc<Tap>>,
}

impl Shared {
    /// Installs a new table.
    pub fn publish(&self, t: PeerTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn current(&self) -> Arc<PeerTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
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
}

/// Batch counters and histograms of one thread, global and per peer.
struct Counts {
    global: [BatchCounts; N_STAGES],
    peers: HashMap<PeerId, [BatchCounts; N_STAGES]>,
    hist: LocalHist,
    peer_hist: HashMap<PeerId, LocalHist>,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            global: Default::default(),
            peers: HashMap::new(),
            hist: LocalHist::new(2),
            peer_hist: HashMap::new(),
        }
    }
}

impl Counts {
    fn input(&mut self, s: Stage, peer: Option<PeerId>, bytes: usize) {
        self.global[s.index()].input(bytes);
        if let Some(p) = peer {
            self.peers.entry(p).or_default()[s.index()].input(bytes);
        }
    }

    fn pass(&mut self, s: Stage, peer: Option<PeerId>) {
        self.global[s.index()].pass();
        if let Some(p) = peer {
            self.peers.entry(p).or_default()[s.index()].pass();
        }
    }

    fn drop(&mut self, s: Stage, peer: Option<PeerId>, r: DropReason) {
        self.global[s.index()].drop(r);
        if let Some(p) = peer {
            self.peers.entry(p).or_default()[s.index()].drop(r);
        }
    }

    /// Counts `passed + dropped` packets entering `s`, `dropped` of them for `r`.
    fn bulk(&mut self, s: Stage, peer: Option<PeerId>, passed: u64, dropped: u64, r: DropReason) {
        let apply = |c: &mut BatchCounts| {
            c.packets_in += passed + dropped;
            c.packets_out += passed;
            c.drops[r.index()] += dropped;
        };
        apply(&mut self.global[s.index()]);
        if let Some(p) = peer {
            apply(&mut self.peers.entry(p).or_default()[s.index()]);
        }
    }

    /// Publishes counts and records each stage's batch time for its packets.
    fn publish(
        &mut self,
        shared: &Shared,
        table: &PeerTable,
        stage_ns: &[(Stage, u64)],
        now: Instant,
    ) {
        for s in Stage::ALL {
            shared.stats.stage(s).add(&self.global[s.index()]);
        }
        for (stage, ns) in stage_ns {
            self.hist
                .record(*stage, self.global[stage.index()].packets_in, *ns);
        }
        shared.stats.publish_hist(&mut self.hist, now, false);
        for (p, c) in self.peers.drain() {
            let Some(dp) = table.peers.get(&p) else {
                continue;
            };
            for s in Stage::ALL {
                dp.rt.stats.stage(s).add(&c[s.index()]);
            }
            let h = self.peer_hist.entry(p).or_insert_with(|| LocalHist::new(1));
            for (stage, ns) in stage_ns {
                h.record(*stage, c[stage.index()].packets_in, *ns);
            }
            dp.rt.stats.publish_hist(h, now, false);
        }
        self.peer_hist.retain(|p, _| table.peers.contains_key(p));
        self.global = Default::default();
    }

    fn flush_hist(&mut self, shared: &Shared, table: &PeerTable) {
        let now = Instant::now();
        shared.stats.publish_hist(&mut self.hist, now, true);
        for (p, h) in self.peer_hist.iter_mut() {
            if let Some(dp) = table.peers.get(p) {
                dp.rt.stats.publish_hist(h, now, true);
            }
        }
    }
}

/// A sampled received packet waiting for its later stage times.
struct RxSample {
    trace: u64,
    ids: (Option<u32>, u8, u32),
    plain: Vec<u8>,
    peer: PeerId,
}

/// What the rx thread carries from packet to packet.
struct Rx<'a> {
    shared: &'a Shared,
    tun: &'a Tun,
    table: Arc<PeerTable>,
    generation: u64,
    receivers: HashMap<PeerId, Receiver>,
    writer: TunWriter,
    counts: Counts,
    floated: HashSet<PeerId>,
    active: HashSet<PeerId>,
    fwd: Vec<u8>,
    samples: Vec<RxSample>,
    /// Receive time and the end of socket_rx for the current batch.
    t0: Instant,
    t1: Instant,
}

impl<'a> Rx<'a> {
    fn new(shared: &'a Shared, tun: &'a Tun) -> Rx<'a> {
        let now = Instant::now();
        Rx {
            shared,
            tun,
            table: Arc::new(PeerTable::default()),
            generation: u64::MAX,
            receivers: HashMap::new(),
            writer: TunWriter::new(tun),
            counts: Counts::default(),
            floated: HashSet::new(),
            active: HashSet::new(),
            fwd: vec![0; 2048],
            samples: Vec::new(),
            t0: now,
            t1: now,
        }
    }

    fn refresh(&mut self) {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g == self.generation {
            return;
        }
        self.generation = g;
        self.table = self.shared.current();
        let table = &self.table;
        self.receivers.retain(|id, _| table.peers.contains_key(id));
        for (id, dp) in &table.peers {
            let r = self
                .receivers
                .entry(*id)
                .or_insert_with(|| Receiver::with_replay_window(self.shared.replay_window));
            r.retain(&dp.view.plane.recv);
            for k in &dp.view.plane.recv {
                r.install(k);
            }
        }
    }

    fn tap(&self) -> Option<&'a Tap> {
        self.shared.tap.as_deref()
    }

    fn packet(&mut self, pkt: &mut [u8], from: PeerAddr) {
        let now = self.t0;
        self.counts.input(Stage::SocketRx, None, pkt.len());
        let op = match peek_opcode(pkt) {
            Ok((op, _)) => op,
            Err(r) => return self.counts.drop(Stage::SocketRx, None, r),
        };
        if !matches!(op, Opcode::DataV1 | Opcode::DataV2) {
            self.counts.pass(Stage::SocketRx, None);
            if let Some(tap) = self.tap() {
                tap.emit(TapRecord {
                    stage: Stage::SocketRx,
                    at: self.t0,
                    data: pkt.to_vec(),
                    wire: self.shared.transport.wire(from, None, false),
                    meta: TapMeta {
                        trace: tap.trace_id(),
                        stage_ns: ns(self.t0, self.t1),
                        ..TapMeta::default()
                    },
                });
            }
            let _ = self.shared.control.send(ServerInput::Control {
                from,
                packet: pkt.to_vec(),
            });
            return;
        }
        let id = match DataHeader::parse(pkt) {
            Ok(DataHeader {
                peer_id: Some(p), ..
            }) if p != PEER_ID_UNDEF => Some(p),
            Ok(_) => self.table.by_addr.get(&from).copied(),
            Err(r) => return self.counts.drop(Stage::SocketRx, None, r),
        };
        let Some((id, dp)) = id.and_then(|i| self.table.peers.get(&i).map(|d| (i, d.clone())))
        else {
            return self
                .counts
                .drop(Stage::SocketRx, None, DropReason::UnknownPeer);
        };
        // A TCP connection speaks only for its own peer.
        if matches!(from, PeerAddr::Tcp(_)) && from != dp.view.addr {
            return self
                .counts
                .drop(Stage::SocketRx, None, DropReason::UnknownPeer);
        }
        self.counts.pass(Stage::SocketRx, None);
        let peer = Some(id);
        // Sampled packets: socket_rx record now, the rest when their fate is known.
        let sample = self.tap().and_then(|tap| {
            let ids = data_ids(pkt).filter(|ids| tap.sampled(ids.2))?;
            let trace = tap.trace_id();
            let wire = self.shared.wire_for(&dp, false);
            tap.emit(TapRecord {
                stage: Stage::SocketRx,
                at: self.t0,
                data: pkt.to_vec(),
                wire,
                meta: TapMeta::data(trace, ids, ns(self.t0, self.t1), None),
            });
            Some((trace, ids, pkt.to_vec(), wire))
        });
        let tap_drop = |stage: Stage, r: DropReason, data: Vec<u8>, wire: Option<Wire>| {
            if let (Some(tap), Some((trace, ids, _, _))) = (self.shared.tap.as_deref(), &sample) {
                tap.emit(TapRecord {
                    stage,
                    at: self.t1,
                    data,
                    wire,
                    meta: TapMeta::data(*trace, *ids, 0, Some(r)),
                });
            }
        };
        self.counts.input(Stage::Decrypt, peer, pkt.len());
        let Some(rx) = self.receivers.get_mut(&id) else {
            self.counts.drop(Stage::Decrypt, peer, DropReason::NoKey);
            if let Some((_, _, c, w)) = &sample {
                tap_drop(Stage::Decrypt, DropReason::NoKey, c.clone(), *w);
            }
            return;
        };
        let opened = match rx.open(pkt, dp.view.plane.framing, now) {
            Ok(o) => o,
            Err(r) => {
                self.counts.drop(Stage::Decrypt, peer, r);
                if let Some((_, _, c, w)) = &sample {
                    tap_drop(Stage::Decrypt, r, c.clone(), *w);
                }
                return;
            }
        };
        self.active.insert(id);
        if from != dp.view.addr && self.floated.insert(id) {
            let _ = self.shared.control.send(ServerInput::Float {
                peer: id,
                addr: from,
            });
        }
        let ids = sample.as_ref().map(|(trace, ids, _, _)| (*trace, *ids));
        match opened.payload {
            Payload::Packet(r) => self.deliver(id, &dp, &mut pkt[r], ids, now),
            Payload::Inflated(r) => {
                let (from, to) = (rx.compressed_len() as u64, r.len() as u64);
                self.shared.stats.add_decompressed(1, from, to);
                dp.rt.stats.add_decompressed(1, from, to);
                // Decompressed into the receiver's buffer: lend it out while delivering.
                let mut buf = rx.take_inflated();
                if let Some(p) = buf.get_mut(r) {
                    self.deliver(id, &dp, p, ids, now);
                }
                if let Some(rx) = self.receivers.get_mut(&id) {
                    rx.put_inflated(buf);
                }
            }
            Payload::Ping => {
                self.counts
                    .drop(Stage::Decrypt, peer, DropReason::Keepalive);
                if let Some((_, _, c, w)) = &sample {
                    tap_drop(Stage::Decrypt, DropReason::Keepalive, c.clone(), *w);
                }
            }
            Payload::Occ(code) => {
                if code == OCC_EXIT {
                    let _ = self.shared.control.send(ServerInput::Exit { peer: id });
                }
                self.counts.drop(Stage::Decrypt, peer, DropReason::Occ);
            }
        }
    }

    /// A decrypted packet of peer `id`: source check, then client-to-client or write_tun.
    fn deliver(
        &mut self,
        id: PeerId,
        dp: &DataPeer,
        p: &mut [u8],
        sample: Option<SampleIds>,
        now: Instant,
    ) {
        let peer = Some(id);
        self.counts.pass(Stage::Decrypt, peer);
        self.counts.input(Stage::WriteTun, peer, p.len());
        let verdict = if !is_ip(p) {
            Some(DropReason::NotIp)
        } else if !packet_src(p).is_some_and(|s| dp.view.owns_source(s)) {
            Some(DropReason::BadSource)
        } else {
            None
        };
        if let Some(r) = verdict {
            self.counts.drop(Stage::WriteTun, peer, r);
            if let (Some(tap), Some((trace, ids))) = (self.tap(), sample) {
                tap.emit(TapRecord {
                    stage: Stage::WriteTun,
                    at: self.t1,
                    data: p.to_vec(),
                    wire: None,
                    meta: TapMeta::data(trace, ids, 0, Some(r)),
                });
            }
            return;
        }
        if self.shared.mss != 0 {
            tunscope_proto::mss::clamp(p, self.shared.mss);
        }
        if let Some((trace, ids)) = sample {
            self.samples.push(RxSample {
                trace,
                ids,
                plain: p.to_vec(),
                peer: id,
            });
        }
        if self.table.client_to_client
            && let Some(target) = self.table.routes.lookup_packet(p).filter(|t| *t != id)
        {
            self.counts.pass(Stage::WriteTun, peer);
            return self.forward(target, p, now);
        }
        if self.writer.is_full() {
            self.flush_tun();
        }
        self.writer.push(p);
        self.counts.pass(Stage::WriteTun, peer);
    }

    /// client-to-client: straight back out to the other client, without the kernel.
    fn forward(&mut self, target: PeerId, p: &[u8], now: Instant) {
        let t = Some(target);
        self.counts.input(Stage::Encrypt, t, p.len());
        let Some(dp) = self.table.peers.get(&target).cloned() else {
            return self.counts.drop(Stage::Encrypt, t, DropReason::NoRoute);
        };
        let Some(keys) = dp.view.plane.send.as_ref() else {
            return self.counts.drop(Stage::Encrypt, t, DropReason::NoKey);
        };
        let need = data::seal_room(p.len());
        if self.fwd.len() < need {
            self.fwd.resize(need, 0);
        }
        let n = match keys.seal(
            dp.view.plane.header(keys),
            dp.view.plane.framing,
            p,
            &mut self.fwd,
        ) {
            Ok(n) => n,
            Err(r) => return self.counts.drop(Stage::Encrypt, t, r),
        };
        self.counts.pass(Stage::Encrypt, t);
        self.counts.input(Stage::SocketTx, t, n);
        match self.shared.transport.send_one(dp.view.addr, &self.fwd[..n]) {
            Ok(()) => {
                self.counts.pass(Stage::SocketTx, t);
                self.shared.stamp(&dp.rt.last_tx_ns, now);
            }
            Err(r) => self.counts.drop(Stage::SocketTx, t, r),
        }
    }

    fn flush_tun(&mut self) {
        let n = self.writer.pending() as u64;
        if n == 0 {
            return;
        }
        if let Err(e) = self.writer.flush(self.tun) {
            // The packets were counted as passed to write_tun; account the failure globally.
            tracing::debug!("tun write: {e}");
            self.counts.global[Stage::WriteTun.index()].packets_out -= n;
            self.counts.global[Stage::WriteTun.index()].drops[DropReason::TunWriteError.index()] +=
                n;
        }
    }

    fn finish(&mut self, clock: &Clock) {
        let t2 = clock.mark(self.t0);
        self.flush_tun();
        let t3 = clock.mark(self.t0);
        let table = self.table.clone();
        if let Some(tap) = self.tap() {
            for s in self.samples.drain(..) {
                let _ = s.peer;
                tap.emit(TapRecord {
                    stage: Stage::Decrypt,
                    at: self.t1,
                    data: s.plain.clone(),
                    wire: None,
                    meta: TapMeta::data(s.trace, s.ids, ns(self.t1, t2), None),
                });
                tap.emit(TapRecord {
                    stage: Stage::WriteTun,
                    at: t2,
                    data: s.plain,
                    wire: None,
                    meta: TapMeta::data(s.trace, s.ids, ns(t2, t3), None),
                });
            }
        }
        let stage_ns = [
            (Stage::SocketRx, ns(self.t0, self.t1)),
            (Stage::Decrypt, ns(self.t1, t2)),
            (Stage::WriteTun, ns(t2, t3)),
        ];
        self.counts.publish(self.shared, &table, &stage_ns, t3);
        for id in self.active.drain() {
            if let Some(dp) = table.peers.get(&id) {
                self.shared.stamp(&dp.rt.last_rx_ns, self.t0);
            }
        }
        self.floated.clear();
    }
}

/// UDP: `socket_rx → decrypt → write_tun` for all peers, until `stop`.
pub fn rx_loop_udp(shared: &Shared, tun: &Tun, ep: &UdpEndpoint) {
    let mut batch = RxBatch::new();
    let mut rx = Rx::new(shared, tun);
    let clock = Clock::new(shared.tap.is_some());
    while !shared.stop.load(Ordering::Relaxed) {
        if !crate::poll::wait_readable(std::os::fd::AsRawFd::as_raw_fd(ep.socket()), IDLE_WAIT)
            .unwrap_or(false)
        {
            continue;
        }
        rx.t0 = Instant::now();
        match batch.recv_udp(ep, Duration::ZERO) {
            Received::Packets => {}
            Received::Idle => continue,
            Received::Closed(why) => {
                tracing::warn!("{why}");
                std::thread::sleep(IDLE_WAIT);
                continue;
            }
        }
        rx.t1 = clock.mark(rx.t0);
        rx.refresh();
        batch.for_each_datagram(|pkt, from| rx.packet(pkt, PeerAddr::Udp(from)));
        rx.finish(&clock);
    }
    let table = rx.table.clone();
    rx.counts.flush_hist(shared, &table);
}

/// TCP: accept, read and frame all connections, then the same stages, until `stop`.
pub fn rx_loop_tcp(shared: &Shared, tun: &Tun, conns: &TcpConns) {
    let mut rx = Rx::new(shared, tun);
    let clock = Clock::new(shared.tap.is_some());
    let mut framers: HashMap<u64, TcpFramer> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    while !shared.stop.load(Ordering::Relaxed) {
        rx.refresh();
        let mut closed: Vec<(u64, String)> = vec![];
        let mut records: Vec<(u64, Vec<u8>)> = vec![];
        conns.poll_once(IDLE_WAIT.as_millis() as i32, &mut buf, |ev| match ev {
            TcpEvent::Data(c, bytes) => {
                let f = framers.entry(c.id).or_default();
                f.push(bytes);
                loop {
                    match f.next_packet() {
                        Ok(Some(p)) => records.push((c.id, p.to_vec())),
                        Ok(None) => break,
                        Err(_) => {
                            closed.push((c.id, "TCP framing error".into()));
                            break;
                        }
                    }
                }
            }
            TcpEvent::Closed(id, why) => closed.push((id, why)),
        });
        if !records.is_empty() {
            rx.t0 = Instant::now();
            rx.t1 = rx.t0;
            for (id, mut p) in records {
                rx.packet(&mut p, PeerAddr::Tcp(id));
            }
            rx.finish(&clock);
        }
        for (id, why) in closed {
            framers.remove(&id);
            conns.close(id);
            let _ = shared.control.send(ServerInput::Closed {
                addr: PeerAddr::Tcp(id),
                why,
            });
        }
    }
    let table = rx.table.clone();
    rx.counts.flush_hist(shared, &table);
}

/// A sampled packet of a tx batch, waiting for its socket_tx time.
struct TxSample {
    trace: u64,
    ids: (Option<u32>, u8, u32),
    peer: PeerId,
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

/// tun → peers: `read_tun → encrypt → socket_tx`, until `stop`.
pub fn tx_loop(shared: &Shared, tun: &Tun, mtu: u16) {
    let mut reader = TunReader::new(mtu);
    let mut batches: HashMap<PeerId, TxBatch> = HashMap::new();
    let mut frames = Vec::with_capacity(256 * 1024);
    let mut table = Arc::new(PeerTable::default());
    let mut generation = u64::MAX;
    let mut counts = Counts::default();
    let mut samples: Vec<TxSample> = Vec::new();
    let tap = shared.tap.as_deref();
    let clock = Clock::new(tap.is_some());
    while !shared.stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let Some(n) = reader.next_batch(tun, 128, IDLE_WAIT) else {
            continue;
        };
        let t1 = clock.mark(t0);
        let g = shared.generation.load(Ordering::Acquire);
        if g != generation {
            generation = g;
            table = shared.current();
            batches.retain(|id, _| table.peers.contains_key(id));
        }
        for i in 0..n {
            let len = reader.packet(i).len();
            counts.input(Stage::ReadTun, None, len);
            if !is_ip(reader.packet(i)) {
                counts.drop(Stage::ReadTun, None, DropReason::NotIp);
                continue;
            }
            counts.pass(Stage::ReadTun, None);
            let target = table.routes.lookup_packet(reader.packet(i));
            counts.input(Stage::Encrypt, target, len);
            let Some(dp) = target.and_then(|t| table.peers.get(&t)) else {
                counts.drop(Stage::Encrypt, target, DropReason::NoRoute);
                continue;
            };
            let Some(keys) = dp.view.plane.send.as_ref() else {
                counts.drop(Stage::Encrypt, target, DropReason::NoKey);
                continue;
            };
            if shared.mss != 0 {
                tunscope_proto::mss::clamp(reader.packet_mut(i), shared.mss);
            }
            let p = reader.packet(i);
            let batch = batches.entry(dp.view.id).or_default();
            let out = batch.reserve(data::seal_room(p.len()));
            match keys.seal(dp.view.plane.header(keys), dp.view.plane.framing, p, out) {
                Ok(l) => {
                    if let Some(tap) = tap
                        && let Some(ids) = data_ids(&out[..l]).filter(|ids| tap.sampled(ids.2))
                    {
                        samples.push(TxSample {
                            trace: tap.trace_id(),
                            ids,
                            peer: dp.view.id,
                            plain: p.to_vec(),
                            sealed: out[..l].to_vec(),
                        });
                    }
                    batch.commit(l);
                    counts.pass(Stage::Encrypt, target);
                }
                Err(r) => {
                    batch.abort();
                    counts.drop(Stage::Encrypt, target, r);
                }
            }
        }
        let t2 = clock.mark(t0);
        let mut failed_peers: HashSet<PeerId> = HashSet::new();
        for (id, batch) in batches.iter_mut().filter(|(_, b)| !b.is_empty()) {
            let Some(dp) = table.peers.get(id) else {
                continue;
            };
            let peer = Some(*id);
            let count = batch.len() as u64;
            let (sent, failed, why) = match (&shared.transport, dp.view.addr) {
                (Transport::Udp(ep), PeerAddr::Udp(a)) => {
                    let (s, f) = batch.flush_to(ep, a);
                    (s, f, DropReason::SocketError)
                }
                (Transport::Tcp(c), PeerAddr::Tcp(cid)) => {
                    frames.clear();
                    batch.take_frames(&mut frames);
                    match c.send(cid, &frames) {
                        Ok(()) => (count, 0, DropReason::SocketError),
                        Err(r) => (0, count, r),
                    }
                }
                _ => {
                    let mut sink = Vec::new();
                    batch.take_frames(&mut sink);
                    (0, count, DropReason::UnknownPeer)
                }
            };
            counts.bulk(Stage::SocketTx, peer, sent, failed, why);
            if sent == 0 {
                failed_peers.insert(*id);
            } else {
                shared.stamp(&dp.rt.last_tx_ns, t0);
            }
        }
        let t3 = clock.mark(t0);
        if let Some(tap) = tap {
            for s in samples.drain(..) {
                let Some(dp) = table.peers.get(&s.peer) else {
                    continue;
                };
                let wire = shared.wire_for(dp, true);
                tap.emit(TapRecord {
                    stage: Stage::ReadTun,
                    at: t0,
                    data: s.plain,
                    wire: None,
                    meta: TapMeta::data(s.trace, s.ids, ns(t0, t1), None),
                });
                tap.emit(TapRecord {
                    stage: Stage::Encrypt,
                    at: t1,
                    data: s.sealed.clone(),
                    wire,
                    meta: TapMeta::data(s.trace, s.ids, ns(t1, t2), None),
                });
                let drop = failed_peers
                    .contains(&s.peer)
                    .then_some(DropReason::SocketError);
                tap.emit(TapRecord {
                    stage: Stage::SocketTx,
                    at: t2,
                    data: s.sealed,
                    wire,
                    meta: TapMeta::data(s.trace, s.ids, ns(t2, t3), drop),
                });
            }
        }
        let stage_ns = [
            (Stage::ReadTun, ns(t0, t1)),
            (Stage::Encrypt, ns(t1, t2)),
            (Stage::SocketTx, ns(t2, t3)),
        ];
        counts.publish(shared, &table, &stage_ns, t3);
    }
    counts.flush_hist(shared, &table);
}
