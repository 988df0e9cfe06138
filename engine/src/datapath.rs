//! The data path: two threads that move batches of packets between the tun device and the
//! link, with every stage explicit.
//!
//! ```text
//! tx thread:  read_tun ─▶ encrypt ─▶ socket_tx
//! rx thread:  socket_rx ─▶ decrypt ─▶ write_tun
//!                  └──── control packets ─▶ control thread (channel)
//! ```
//!
//! Each stage counts a whole batch locally and publishes once ([`crate::stats`]). Keys come
//! from the control thread through [`Shared::plane`]; a thread re-reads them only when the
//! generation counter changed, one relaxed load per batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tunscope_proto::client::DataPlane;
use tunscope_proto::data::{self, Payload, Receiver};
use tunscope_proto::stage::{DropReason, Stage};
use tunscope_proto::wire::{Opcode, peek_opcode};

use crate::link::{Link, Received, RxBatch, TxBatch};
use crate::stats::{BatchCounts, EngineStats};
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
    /// A signal arrived (SIGINT, SIGTERM).
    Signal(i32),
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
}

impl Shared {
    /// New shared state.
    pub fn new(stats: Arc<EngineStats>, mss: Option<u16>, replay_window: Option<u32>) -> Shared {
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

fn is_ip(p: &[u8]) -> bool {
    match p.first().map(|b| b >> 4) {
        Some(4) => p.len() >= 20,
        Some(6) => p.len() >= 40,
        _ => false,
    }
}

/// tun → link: `read_tun → encrypt → socket_tx`, until `shared.stop`.
pub fn tx_loop(shared: &Shared, tun: &Tun, link: &Link, mtu: u16) {
    let mut reader = TunReader::new(mtu);
    let mut batch = TxBatch::new();
    let mut cache = PlaneCache::new();
    let v2_overhead = data::overhead(true, data::Framing::StubV2);
    let stats = &shared.stats;
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match reader.read_batch(tun, 128) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = crate::poll::wait_readable(std::os::fd::AsRawFd::as_raw_fd(tun), IDLE_WAIT);
                continue;
            }
            Err(e) => {
                tracing::warn!("tun read: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let now = Instant::now();
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
            let out = batch.reserve(p.len() + v2_overhead);
            match keys.seal(plane.header(keys), plane.framing, p, out) {
                Ok(len) => {
                    batch.commit(len);
                    encrypt.pass();
                }
                Err(r) => {
                    batch.abort();
                    encrypt.drop(r);
                }
            }
        }
        stats.stage(Stage::ReadTun).add(&read_tun);
        stats.stage(Stage::Encrypt).add(&encrypt);
        if batch.is_empty() {
            continue;
        }
        let mut socket_tx = BatchCounts::default();
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
    let stats = &shared.stats;
    let peer = link.peer();
    while !shared.stop.load(Ordering::Relaxed) {
        match batch.recv(link, IDLE_WAIT) {
            Received::Packets => {}
            Received::Idle => continue,
            Received::Closed(why) => {
                if !shared.stop.load(Ordering::Relaxed) {
                    let _ = control.send(ControlInput::LinkDown(why));
                }
                return;
            }
        }
        let now = Instant::now();
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
                let _ = control.send(ControlInput::Packet(pkt.to_vec()));
                return;
            }
            decrypt.input(pkt.len());
            match receiver.open(pkt, framing, now) {
                Ok(opened) => {
                    got_data = true;
                    match opened.payload {
                        Payload::Packet(r) => {
                            decrypt.pass();
                            let p = &mut pkt[r];
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
                        }
                        Payload::Ping => decrypt.drop(DropReason::Keepalive),
                        Payload::Occ(_) => decrypt.drop(DropReason::Occ),
                    }
                }
                Err(r) => decrypt.drop(r),
            }
        });
        flush_tun(&mut writer, tun, &mut write_tun);
        if let Err(r) = result {
            let _ = control.send(ControlInput::LinkDown(format!("TCP stream: {r}")));
            shared.stop.store(true, Ordering::Relaxed);
        }
        stats.stage(Stage::SocketRx).add(&socket_rx);
        stats.stage(Stage::Decrypt).add(&decrypt);
        stats.stage(Stage::WriteTun).add(&write_tun);
        if got_data {
            shared.stamp(&shared.last_rx_ns, now);
        }
    }
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
