//! The client's data path: two threads that move batches of packets between the tun device
//! and the link, with every stage explicit.
//!
//! ```text
//! tx thread:  read_tun ─▶ encrypt ─▶ socket_tx
//! rx thread:  socket_rx ─▶ decrypt ─▶ write_tun
//!                  └──── control packets ─▶ control thread (channel)
//! ```
//!
//! Each stage counts a whole batch locally and publishes once ([`crate::stats`]); the clock is
//! read once per stage boundary. Keys come from the control thread through [`Shared::plane`];
//! a thread re-reads them only when the generation counter changed (one relaxed load per
//! batch). Sampled packets are copied to the capture tap ([`crate::capture`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tunscope_proto::client::DataPlane;
use tunscope_proto::data::{self, Payload, Receiver};
use tunscope_proto::stage::{DropReason, Stage};
use tunscope_proto::wire::{Opcode, peek_opcode};

use crate::capture::{Tap, TapMeta, TapRecord, Wire, data_ids};
use crate::link::{Link, LinkKind, Received, RxBatch, TxBatch};
use crate::stats::ns_between as ns;
use crate::stats::{BatchCounts, EngineStats, LocalHist, PROBES};
use crate::tun::{Tun, TunReader, TunWriter};

/// How long a blocked thread waits before checking for shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Input for the control thread.
#[derive(Debug)]
pub enum ControlInput {
    /// A control packet from the link.
    Packet(Vec<u8>),
    /// The link failed or closed.
    LinkDown(String),
}

/// State shared by the data-path threads and the control thread of one connection.
pub struct Shared {
    /// Set to stop the threads.
    pub stop: AtomicBool,
    /// Keys and header settings; replaced by the control thread.
    pub plane: Mutex<DataPlane>,
    /// Bumped after `plane` changes.
    pub generation: AtomicU64,
    /// Counters.
    pub stats: Arc<EngineStats>,
    /// Reference point for the activity stamps.
    pub epoch: Instant,
    /// Nanoseconds after `epoch` of the last authenticated data packet received (0 = never).
    pub last_rx_ns: AtomicU64,
    /// Nanoseconds after `epoch` of the last data packet sent (0 = never).
    pub last_tx_ns: AtomicU64,
    /// TCP MSS to clamp SYNs to (0 = off).
    pub mss: u16,
    /// Replay window size in packets.
    pub replay_window: u32,
    /// Capture tap, when `--capture` is on.
    pub tap: Option<Arc<Tap>>,
}

impl Shared {
    /// New shared state.
    pub fn new(
        stats: Arc<EngineStats>,
        mss: Option<u16>,
        replay_window: Option<u32>,
        tap: Option<Arc<Tap>>,
    ) -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            plane: Mutex::new(DataPlane::default()),
            generation: AtomicU64::new(0),
            stats,
            epoch: Instant::now(),
            last_rx_ns: AtomicU64::new(0),
            last_tx_ns: AtomicU64::new(0),
            mss: mss.unwrap_or(0),
            replay_window: replay_window.unwrap_or(tunscope_proto::consts::REPLAY_WINDOW_DEFAULT),
            tap,
        }
    }

    /// Publishes new keys.
    pub fn publish(&self, plane: DataPlane) {
        *self.plane.lock().unwrap_or_else(|e| e.into_inner()) = plane;
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn snapshot(&self) -> DataPlane {
        self.plane.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn stamp(&self, at: &AtomicU64, now: Instant) {
        let ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        at.store(ns.max(1), Ordering::Relaxed);
    }

    /// The activity stamps as instants.
    pub fn activity(&self) -> (Option<Instant>, Option<Instant>) {
        let get = |a: &AtomicU64| {
            let v = a.load(Ordering::Relaxed);
            (v != 0).then(|| self.epoch + Duration::from_nanos(v))
        };
        (get(&self.last_rx_ns), get(&self.last_tx_ns))
    }
}

/// A cached copy of the data plane, refreshed when the generation moves.
struct PlaneCache {
    generation: u64,
    plane: DataPlane,
}

impl PlaneCache {
    fn new() -> PlaneCache {
        PlaneCache {
            generation: u64::MAX,
            plane: DataPlane::default(),
        }
    }

    /// True when the plane changed.
    fn refresh(&mut self, shared: &Shared) -> bool {
        let g = shared.generation.load(Ordering::Acquire);
        if g == self.generation {
            return false;
        }
        self.plane = shared.snapshot();
        self.generation = g;
        true
    }
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

/// A sampled packet of a tx batch, waiting for its socket_tx time.
struct TxSample {
    trace: u64,
    ids: (Option<u32>, u8, u32),
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

fn link_wire(link: &Link, outbound: bool) -> Option<Wire> {
    let local = link.local_addr().ok()?;
    let peer = link.peer();
    let tcp = link.kind() == LinkKind::Tcp;
    Some(if outbound {
        Wire {
            src: local,
            dst: peer,
            tcp,
        }
    } else {
        Wire {
            src: peer,
            dst: local,
            tcp,
        }
    })
}

/// tun → link: `read_tun → encrypt → socket_tx`, until `shared.stop`.
pub fn tx_loop(shared: &Shared, tun: &Tun, link: &Link, mtu: u16) {
    let mut reader = TunReader::new(mtu);
    let mut batch = TxBatch::new();
    let mut cache = PlaneCache::new();
    let mut hist = LocalHist::new(2);
    let mut samples: Vec<TxSample> = Vec::new();
    let tap = shared.tap.as_deref();
    let clock = Clock::new(tap.is_some());
    let wire = link_wire(link, true);
    let stats = &shared.stats;
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let Some(n) = reader.next_batch(tun, 128, IDLE_WAIT) else {
            continue;
        };
        let t1 = clock.mark(now);
        cache.refresh(shared);
        let plane = &cache.plane;
        let mut read_tun = BatchCounts::default();
        let mut encrypt = BatchCounts::default();
        for i in 0..n {
            let p = reader.packet(i);
            read_tun.input(p.len());
            if !is_ip(p) {
                read_tun.drop(DropReason::NotIp);
                continue;
            }
            read_tun.pass();
            if shared.mss != 0 {
                tunscope_proto::mss::clamp(reader.packet_mut(i), shared.mss);
            }
            let p = reader.packet(i);
            encrypt.input(p.len());
            let Some(keys) = plane.send.as_ref() else {
                encrypt.drop(DropReason::NoKey);
                continue;
            };
            let out = batch.reserve(data::seal_room(p.len()));
            match keys.seal(plane.header(keys), plane.framing, p, out) {
                Ok(len) => {
                    if let Some(tap) = tap
                        && let Some(ids) = data_ids(&out[..len]).filter(|ids| tap.sampled(ids.2))
                    {
                        samples.push(TxSample {
                            trace: tap.trace_id(),
                            ids,
                            plain: p.to_vec(),
                            sealed: out[..len].to_vec(),
                        });
                    }
                    batch.commit(len);
                    encrypt.pass();
                }
                Err(r) => {
                    batch.abort();
                    encrypt.drop(r);
                }
            }
        }
        let t2 = clock.mark(now);
        stats.stage(Stage::ReadTun).add(&read_tun);
        stats.stage(Stage::Encrypt).add(&encrypt);
        hist.record(Stage::ReadTun, read_tun.packets_in, ns(now, t1));
        hist.record(Stage::Encrypt, encrypt.packets_in, ns(t1, t2));
        let mut socket_tx = BatchCounts::default();
        if !batch.is_empty() {
            let count = batch.len() as u64;
            socket_tx.packets_in = count;
            let (sent, failed) = batch.flush(link);
            socket_tx.packets_out = sent;
            socket_tx.drops[DropReason::SocketError.index()] = failed;
            stats.stage(Stage::SocketTx).add(&socket_tx);
            if sent > 0 {
                shared.stamp(&shared.last_tx_ns, now);
            }
        }
        let t3 = clock.mark(now);
        hist.record(Stage::SocketTx, socket_tx.packets_in, ns(t2, t3));
        if let Some(tap) = tap {
            let failed = socket_tx.packets_out == 0 && socket_tx.packets_in > 0;
            for s in samples.drain(..) {
                tap.emit(TapRecord {
                    stage: Stage::ReadTun,
                    at: now,
                    data: s.plain,
                    wire: None,
                    meta: TapMeta::data(s.trace, s.ids, ns(now, t1), None),
                });
                tap.emit(TapRecord {
                    stage: Stage::Encrypt,
                    at: t1,
                    data: s.sealed.clone(),
                    wire,
                    meta: TapMeta::data(s.trace, s.ids, ns(t1, t2), None),
                });
                tap.emit(TapRecord {
                    stage: Stage::SocketTx,
                    at: t2,
                    data: s.sealed,
                    wire,
                    meta: TapMeta::data(
                        s.trace,
                        s.ids,
                        ns(t2, t3),
                        failed.then_some(DropReason::SocketError),
                    ),
                });
            }
        }
        stats.publish_hist(&mut hist, t3, false);
    }
    stats.publish_hist(&mut hist, Instant::now(), true);
}

/// A sampled received packet waiting for its write_tun time.
struct RxSample {
    trace: u64,
    ids: (Option<u32>, u8, u32),
    plain: Vec<u8>,
}

/// link → tun: `socket_rx → decrypt → write_tun`, control packets to `control`, until
/// `shared.stop`. `batch` carries over from the handshake (a TCP stream may hold a partial
/// record).
pub fn rx_loop(
    shared: &Shared,
    tun: &Tun,
    link: &Link,
    mut batch: RxBatch,
    control: &Sender<ControlInput>,
) {
    let mut writer = TunWriter::new(tun);
    let mut cache = PlaneCache::new();
    let mut receiver = Receiver::with_replay_window(shared.replay_window);
    let mut hist = LocalHist::new(2);
    let mut samples: Vec<RxSample> = Vec::new();
    let tap = shared.tap.as_deref();
    let clock = Clock::new(tap.is_some());
    let wire = link_wire(link, false);
    let stats = &shared.stats;
    let peer = link.peer();
    // A TCP stream may already hold records from the handshake phase.
    let mut pending = link.kind() == LinkKind::Tcp;
    while !shared.stop.load(Ordering::Relaxed) {
        let t0 = if pending {
            // Drain records left in the framer by the handshake phase first.
            pending = false;
            Instant::now()
        } else {
            if !batch.wait(link, IDLE_WAIT) {
                continue;
            }
            let t0 = Instant::now();
            match batch.recv(link, Duration::ZERO) {
                Received::Packets => {}
                Received::Idle => continue,
                Received::Closed(why) => {
                    if !shared.stop.load(Ordering::Relaxed) {
                        let _ = control.send(ControlInput::LinkDown(why));
                    }
                    return;
                }
            }
            t0
        };
        let t1 = clock.mark(t0);
        if cache.refresh(shared) {
            // Keys that stay keep their replay windows; new ones start fresh.
            receiver.retain(&cache.plane.recv);
            for k in &cache.plane.recv {
                receiver.install(k);
            }
        }
        let framing = cache.plane.framing;
        let mut socket_rx = BatchCounts::default();
        let mut decrypt = BatchCounts::default();
        let mut write_tun = BatchCounts::default();
        let mut got_data = false;
        let mss = shared.mss;
        let result = batch.for_each(link, |pkt, from| {
            socket_rx.input(pkt.len());
            if from != peer {
                socket_rx.drop(DropReason::UnknownPeer);
                return;
            }
            let op = match peek_opcode(pkt) {
                Ok((op, _)) => op,
                Err(r) => {
                    socket_rx.drop(r);
                    return;
                }
            };
            socket_rx.pass();
            if !matches!(op, Opcode::DataV1 | Opcode::DataV2) {
                if let Some(tap) = tap {
                    tap.emit(TapRecord {
                        stage: Stage::SocketRx,
                        at: t0,
                        data: pkt.to_vec(),
                        wire,
                        meta: TapMeta {
                            trace: tap.trace_id(),
                            stage_ns: ns(t0, t1),
                            ..TapMeta::default()
                        },
                    });
                }
                let _ = control.send(ControlInput::Packet(pkt.to_vec()));
                return;
            }
            let sample = tap.and_then(|tap| {
                let ids = data_ids(pkt).filter(|ids| tap.sampled(ids.2))?;
                let trace = tap.trace_id();
                tap.emit(TapRecord {
                    stage: Stage::SocketRx,
                    at: t0,
                    data: pkt.to_vec(),
                    wire,
                    meta: TapMeta::data(trace, ids, ns(t0, t1), None),
                });
                Some((trace, ids, pkt.to_vec()))
            });
            decrypt.input(pkt.len());
            let outcome = receiver.open(pkt, framing, t0);
            let drop_here = |r: DropReason| {
                if let (Some(tap), Some((trace, ids, cipher))) = (tap, &sample) {
                    tap.emit(TapRecord {
                        stage: Stage::Decrypt,
                        at: t1,
                        data: cipher.clone(),
                        wire,
                        meta: TapMeta::data(*trace, *ids, 0, Some(r)),
                    });
                }
            };
            match outcome {
                Ok(opened) => {
                    got_data = true;
                    // Decompressed packets live in the receiver's buffer, the rest in place.
                    let plain = match opened.payload {
                        Payload::Packet(ref r) => pkt.get_mut(r.clone()),
                        Payload::Inflated(ref r) => {
                            shared.stats.add_decompressed(
                                1,
                                receiver.compressed_len() as u64,
                                r.len() as u64,
                            );
                            receiver.inflated_mut().get_mut(r.clone())
                        }
                        _ => None,
                    };
                    match (plain, opened.payload) {
                        (Some(p), _) => {
                            decrypt.pass();
                            write_tun.input(p.len());
                            if !is_ip(p) {
                                write_tun.drop(DropReason::NotIp);
                                return;
                            }
                            if mss != 0 {
                                tunscope_proto::mss::clamp(p, mss);
                            }
                            if writer.is_full() {
                                flush_tun(&mut writer, tun, &mut write_tun);
                            }
                            writer.push(p);
                            if let Some((trace, ids, _)) = sample {
                                samples.push(RxSample {
                                    trace,
                                    ids,
                                    plain: p.to_vec(),
                                });
                            }
                        }
                        (None, Payload::Ping) => {
                            decrypt.drop(DropReason::Keepalive);
                            drop_here(DropReason::Keepalive);
                        }
                        (None, Payload::Occ(_)) => {
                            decrypt.drop(DropReason::Occ);
                            drop_here(DropReason::Occ);
                        }
                        (None, _) => {
                            decrypt.drop(DropReason::BadCompression);
                            drop_here(DropReason::BadCompression);
                        }
                    }
                }
                Err(r) => {
                    decrypt.drop(r);
                    drop_here(r);
                }
            }
        });
        let t2 = clock.mark(t0);
        flush_tun(&mut writer, tun, &mut write_tun);
        let t3 = clock.mark(t0);
        if let Err(r) = result {
            let _ = control.send(ControlInput::LinkDown(format!("TCP stream: {r}")));
            shared.stop.store(true, Ordering::Relaxed);
        }
        stats.stage(Stage::SocketRx).add(&socket_rx);
        stats.stage(Stage::Decrypt).add(&decrypt);
        stats.stage(Stage::WriteTun).add(&write_tun);
        hist.record(Stage::SocketRx, socket_rx.packets_in, ns(t0, t1));
        hist.record(Stage::Decrypt, decrypt.packets_in, ns(t1, t2));
        hist.record(Stage::WriteTun, write_tun.packets_in, ns(t2, t3));
        if let Some(tap) = tap {
            let failed = write_tun.drops[DropReason::TunWriteError.index()] > 0;
            for s in samples.drain(..) {
                tap.emit(TapRecord {
                    stage: Stage::Decrypt,
                    at: t1,
                    data: s.plain.clone(),
                    wire: None,
                    meta: TapMeta::data(s.trace, s.ids, ns(t1, t2), None),
                });
                tap.emit(TapRecord {
                    stage: Stage::WriteTun,
                    at: t2,
                    data: s.plain,
                    wire: None,
                    meta: TapMeta::data(
                        s.trace,
                        s.ids,
                        ns(t2, t3),
                        failed.then_some(DropReason::TunWriteError),
                    ),
                });
            }
        }
        if got_data {
            shared.stamp(&shared.last_rx_ns, t0);
        }
        stats.publish_hist(&mut hist, t3, false);
    }
    stats.publish_hist(&mut hist, Instant::now(), true);
}

fn flush_tun(writer: &mut TunWriter, tun: &Tun, counts: &mut BatchCounts) {
    let n = writer.pending() as u64;
    if n == 0 {
        return;
    }
    match writer.flush(tun) {
        Ok(_) => counts.packets_out += n,
        Err(e) => {
            tracing::debug!("tun write: {e}");
            counts.drops[DropReason::TunWriteError.index()] += n;
        }
    }
}

/// The wire description of a link, for taps written by the control thread.
pub fn wire_of(link: &Link, outbound: bool) -> Option<Wire> {
    link_wire(link, outbound)
}
