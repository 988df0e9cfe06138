//! The receive half: `socket_rx → decrypt → write_tun`, control packets to the control
//! thread, client-to-client forwarding. One [`Rx`] does the per-packet work for every
//! transport; [`rx_loop`] only differs in how a batch is read off the wire.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::ops::Range;
use tunscope_proto::consts::OCC_EXIT;
use tunscope_proto::data::{DataKeys, Payload};
use tunscope_proto::server::routes::packet_src;
use tunscope_proto::server::{PeerAddr, PeerId};
use tunscope_proto::stage::{DropReason, Stage};
use tunscope_proto::wire::{DataHeader, Opcode, TcpFramer, peek_opcode};

use crate::capture::{Tap, TapMeta, TapRecord, data_ids};
use crate::link::{Link, Received, RxBatch, TxBatch, UdpEndpoint};

use super::memory::MemPort;
use crate::server::tcp::{TcpConns, TcpEvent};
use crate::stats::ns_between as ns;
use crate::tun::TunWriter;

use super::account::StageBatch;
use super::seal::seal_packet;
use super::{
    Clock, ControlInput, DataPeer, IDLE_WAIT, PeerTable, Shared, Transport, ethernet, is_ip,
};

/// A sampled packet's trace id and (peer-id, key-id, packet-id).
type SampleIds = (u64, (Option<u32>, u8, u32));

/// A sampled received packet waiting for its later stage times.
struct RxSample {
    trace: u64,
    ids: (Option<u32>, u8, u32),
    plain: Vec<u8>,
}

/// A data packet decrypted ahead of its turn by a receive thread sharing the link with
/// others: its peer, header, the keys that opened it (an index into the batch's
/// [`AheadKeys`]) and the outcome, for [`Receiver::accept`](tunscope_proto::data::Receiver::accept)
/// when the batch's turn comes.
struct Ahead {
    id: PeerId,
    header: DataHeader,
    key: usize,
    decrypted: Result<(u32, Range<usize>), DropReason>,
}

/// The keys a batch's packets were decrypted with (by peer and key-id): looked up once per
/// batch, so threads decrypting side by side do not share a reference count per packet.
type AheadKeys = Vec<(PeerId, u8, Arc<DataKeys>)>;

/// Packets waiting for one queue of the tun device.
struct QueueWriter {
    writer: TunWriter,
    /// Peer and size of each packet queued in `writer`: write_tun counts them when the
    /// write succeeds or fails, not before.
    queued: Vec<(PeerId, usize)>,
}

/// What the rx thread carries from packet to packet.
struct Rx<'a> {
    shared: &'a Shared,
    table: Arc<PeerTable>,
    generation: u64,
    /// One per queue of the tun device, created once it exists (a client's comes with the
    /// server's push). A server writes a peer's packets through queue `peer % queues`, a
    /// client (one peer) each flow's through `flow hash % queues`: the kernel then returns
    /// those flows on the same queue, to the same send thread (it steers by the queue a
    /// flow last arrived on).
    writers: Vec<QueueWriter>,
    tun_failed: bool,
    counts: StageBatch,
    floated: HashSet<PeerId>,
    active: HashSet<PeerId>,
    /// client-to-client: packets sealed for another peer, their TCP records, and the
    /// framing scratch of a packet to cut into fragments.
    fwd: TxBatch,
    frames: Vec<u8>,
    scratch: Vec<u8>,
    samples: Vec<RxSample>,
    /// Receive time and the end of socket_rx for the current batch.
    t0: Instant,
    t1: Instant,
}

impl<'a> Rx<'a> {
    fn new(shared: &'a Shared) -> Rx<'a> {
        let now = Instant::now();
        Rx {
            shared,
            table: Arc::new(PeerTable::default()),
            generation: u64::MAX,
            writers: Vec::new(),
            tun_failed: false,
            counts: StageBatch::default(),
            floated: HashSet::new(),
            active: HashSet::new(),
            fwd: TxBatch::new(),
            frames: Vec::new(),
            scratch: Vec::new(),
            samples: Vec::new(),
            t0: now,
            t1: now,
        }
    }

    /// Picks up a new peer table: keys that stay keep their replay windows, new ones start
    /// fresh, peers that left lose theirs.
    fn refresh(&mut self) {
        if self.writers.is_empty()
            && let Some(tun) = self.shared.tun.get()
        {
            self.writers = (0..tun.queues())
                .map(|q| QueueWriter {
                    writer: TunWriter::on_queue(tun, q),
                    queued: Vec::new(),
                })
                .collect();
        }
        let Some(table) = self.shared.changed(&mut self.generation) else {
            return;
        };
        self.table = table;
        self.counts.configure(&self.table);
        // Installing is idempotent: whichever rx thread sees the table first does it.
        for dp in self.table.peers.values() {
            let mut r = dp.rt.receiver();
            r.retain(&dp.view.plane.recv);
            for k in &dp.view.plane.recv {
                r.install(k);
            }
        }
    }

    fn tap(&self) -> Option<&'a Tap> {
        self.shared.tap.as_deref()
    }

    /// Counts a packet refused at socket_rx before any peer was known.
    fn refuse(&mut self, len: usize, r: DropReason) {
        self.counts.drop(Stage::SocketRx, None, len, r);
    }

    fn packet(&mut self, pkt: &mut [u8], from: PeerAddr) {
        self.packet_ahead(pkt, from, None);
    }

    /// Decrypts a data packet of a known peer in place without holding its receiver, for a
    /// thread that delivers its batch later, in turn. None for everything else — control
    /// packets, unknown peers, missing keys, and sampled packets (their socket_rx record
    /// must show the sealed bytes) — which [`Rx::packet_ahead`] then handles as usual.
    fn decrypt_ahead(&self, pkt: &mut [u8], from: PeerAddr, keys: &mut AheadKeys) -> Option<Ahead> {
        let (op, _) = peek_opcode(pkt).ok()?;
        if !matches!(op, Opcode::DataV1 | Opcode::DataV2) {
            return None;
        }
        let header = DataHeader::parse(pkt).ok()?;
        let peer_id = header
            .peer_id
            .filter(|p| *p != tunscope_proto::consts::PEER_ID_UNDEF);
        let (id, dp) = self.table.lookup(peer_id, &from)?;
        if let Some(tap) = self.tap()
            && data_ids(pkt).is_some_and(|ids| tap.sampled(ids.2))
        {
            return None;
        }
        let key = match keys
            .iter()
            .position(|(p, k, _)| *p == id && *k == header.key_id)
        {
            Some(i) => i,
            None => {
                let (_, k) = dp.rt.receiver().keys_for(pkt).ok()?;
                keys.push((id, header.key_id, k));
                keys.len() - 1
            }
        };
        let decrypted = keys[key].2.open_in_place(header, pkt);
        Some(Ahead {
            id,
            header,
            key,
            decrypted,
        })
    }

    /// A control packet: to the control thread (bounded: under a flood it is dropped here,
    /// counted, not copied).
    fn control_packet(&mut self, pkt: &[u8], from: PeerAddr) {
        if let Err(r) = self.shared.control.packet(from, pkt) {
            return self.refuse(pkt.len(), r);
        }
        self.counts.pass(Stage::SocketRx, None, pkt.len());
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
    }

    /// [`Rx::packet`], for a packet [`Rx::decrypt_ahead`] may have decrypted already.
    fn packet_ahead(
        &mut self,
        pkt: &mut [u8],
        from: PeerAddr,
        ahead: Option<(Ahead, &Arc<DataKeys>)>,
    ) {
        let now = self.t0;
        let found = match &ahead {
            // Decrypted ahead: a data packet whose peer was looked up then, in this same
            // table (the batch's two passes have no refresh between them).
            Some((a, _)) => self.table.peers.get(&a.id).map(|dp| (a.id, dp.clone())),
            None => {
                let op = match peek_opcode(pkt) {
                    Ok((op, _)) => op,
                    Err(r) => return self.refuse(pkt.len(), r),
                };
                if !matches!(op, Opcode::DataV1 | Opcode::DataV2) {
                    return self.control_packet(pkt, from);
                }
                let peer_id = match DataHeader::parse(pkt) {
                    Ok(h) => h
                        .peer_id
                        .filter(|p| *p != tunscope_proto::consts::PEER_ID_UNDEF),
                    Err(r) => return self.refuse(pkt.len(), r),
                };
                self.table
                    .lookup(peer_id, &from)
                    .map(|(id, dp)| (id, dp.clone()))
            }
        };
        let Some((id, dp)) = found else {
            return self.refuse(pkt.len(), DropReason::UnknownPeer);
        };
        // A TCP connection speaks only for its own peer.
        if matches!(from, PeerAddr::Tcp(_)) && from != dp.view.addr {
            return self.refuse(pkt.len(), DropReason::UnknownPeer);
        }
        let peer = Some(id);
        self.counts.pass(Stage::SocketRx, peer, pkt.len());
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
            Some((trace, ids, wire))
        });
        let len = pkt.len();
        let tap_drop = |r: DropReason, data: &[u8]| {
            if let (Some(tap), Some((trace, ids, wire))) = (self.shared.tap.as_deref(), &sample) {
                tap.emit(TapRecord {
                    stage: Stage::Decrypt,
                    at: self.t1,
                    data: data.to_vec(),
                    wire: *wire,
                    meta: TapMeta::data(*trace, *ids, 0, Some(r)),
                });
            }
        };
        let mut rx = dp.rt.receiver();
        let plane = &dp.view.plane;
        let fragmented = plane.fragment.is_some();
        let opened = match ahead.filter(|(a, _)| a.id == id) {
            Some((a, keys)) => a
                .decrypted
                .and_then(|d| rx.accept(keys, a.header, d, pkt, plane.framing, fragmented, now)),
            None => rx.open(pkt, plane.framing, fragmented, now),
        };
        let opened = match opened {
            Ok(o) => o,
            Err(r) => {
                drop(rx);
                self.counts.drop(Stage::Decrypt, peer, len, r);
                return tap_drop(r, pkt);
            }
        };
        if opened.late {
            self.shared.stats.add_late(1);
            dp.rt.stats.add_late(1);
        }
        self.active.insert(id);
        if from != dp.view.addr && self.floated.insert(id) {
            self.shared.control.hint(ControlInput::Float {
                peer: id,
                session: dp.view.session,
                addr: from,
            });
        }
        let ids = sample.as_ref().map(|(trace, ids, _)| (*trace, *ids));
        match opened.payload {
            Payload::Packet(r) => {
                drop(rx);
                self.deliver(id, &dp, len, &mut pkt[r], ids, now);
            }
            Payload::Inflated(ref r) | Payload::Reassembled(ref r) => {
                let r = r.clone();
                if matches!(opened.payload, Payload::Inflated(_)) {
                    let (from, to) = (rx.compressed_len() as u64, r.len() as u64);
                    self.shared.stats.add_decompressed(1, from, to);
                    dp.rt.stats.add_decompressed(1, from, to);
                }
                // Decompressed or reassembled into the receiver's buffer: lend it out while
                // delivering.
                let mut buf = rx.take_inflated();
                drop(rx);
                match buf.get_mut(r) {
                    Some(p) => self.deliver(id, &dp, len, p, ids, now),
                    None => {
                        self.counts
                            .drop(Stage::Decrypt, peer, len, DropReason::Malformed);
                    }
                }
                dp.rt.receiver().put_inflated(buf);
            }
            Payload::Fragment => {
                drop(rx);
                self.counts
                    .drop(Stage::Decrypt, peer, len, DropReason::Fragment);
                tap_drop(DropReason::Fragment, pkt);
            }
            Payload::Ping => {
                drop(rx);
                self.counts
                    .drop(Stage::Decrypt, peer, len, DropReason::Keepalive);
                tap_drop(DropReason::Keepalive, pkt);
            }
            Payload::Occ(code) => {
                drop(rx);
                if code == OCC_EXIT {
                    self.shared.control.hint(ControlInput::Exit {
                        peer: id,
                        session: dp.view.session,
                    });
                }
                self.counts.drop(Stage::Decrypt, peer, len, DropReason::Occ);
                tap_drop(DropReason::Occ, pkt);
            }
        }
    }

    /// A decrypted packet of peer `id` (`sealed_len` bytes on the wire): source check, then
    /// client-to-client or write_tun.
    fn deliver(
        &mut self,
        id: PeerId,
        dp: &DataPeer,
        sealed_len: usize,
        p: &mut [u8],
        sample: Option<SampleIds>,
        now: Instant,
    ) {
        let peer = Some(id);
        self.counts.pass(Stage::Decrypt, peer, sealed_len);
        let verdict = if self.table.ethernet {
            self.frame_verdict(id, dp, p)
        } else if !is_ip(p) {
            Some(DropReason::NotIp)
        } else if self.table.check_sources && !packet_src(p).is_some_and(|s| dp.view.owns_source(s))
        {
            Some(DropReason::BadSource)
        } else if self.writers.is_empty() {
            Some(DropReason::TunWriteError)
        } else {
            None
        };
        if let Some(r) = verdict {
            self.counts.drop(Stage::WriteTun, peer, p.len(), r);
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
        if self.table.mss != 0 {
            let ip = if self.table.ethernet {
                ethernet::ip_payload_mut(p)
            } else {
                Some(&mut *p)
            };
            if let Some(ip) = ip {
                tunscope_proto::mss::clamp(ip, self.table.mss);
            }
        }
        if let Some((trace, ids)) = sample {
            self.samples.push(RxSample {
                trace,
                ids,
                plain: p.to_vec(),
            });
        }
        if self.table.client_to_client {
            let target = if self.table.ethernet {
                self.frame_target(id, p, now)
            } else {
                self.table.routes.lookup_packet(p).filter(|t| *t != id)
            };
            if let Some(target) = target {
                self.counts.pass(Stage::WriteTun, peer, p.len());
                return self.forward(target, p, now);
            }
        }
        if self.table.ethernet {
            self.shared.stats.count_frame(false, p);
        }
        if self.writers.is_empty() {
            return;
        }
        let n = self.writers.len();
        let q = if n > 1 && self.table.default_peer.is_some() {
            flow_hash(p) as usize % n
        } else {
            id as usize % n
        };
        if self.writers[q].writer.is_full() {
            self.flush_queue(q);
        }
        let w = &mut self.writers[q];
        w.writer.push(p);
        w.queued.push((id, p.len()));
    }

    /// Whether a tap peer's decrypted frame may be delivered: a server learns its source
    /// address (a client may own only so many), and never accepts a group address as source.
    fn frame_verdict(&self, id: PeerId, dp: &DataPeer, f: &[u8]) -> Option<DropReason> {
        if !ethernet::is_frame(f) {
            return Some(DropReason::RuntFrame);
        }
        if self.table.default_peer.is_none() {
            let src = ethernet::src(f);
            if ethernet::is_group(&src) {
                return Some(DropReason::BadSource);
            }
            if self.shared.macs.learn(src, id, dp.view.session) == ethernet::Learn::Full {
                return Some(DropReason::MacLimit);
            }
        }
        self.writers.is_empty().then_some(DropReason::TunWriteError)
    }

    /// client-to-client for a tap server's frame from `id`: the client owning the unicast
    /// destination, if another; a broadcast or multicast frame is sent to every other
    /// client here and still written to the device (None).
    fn frame_target(&mut self, id: PeerId, f: &[u8], now: Instant) -> Option<PeerId> {
        let dst = ethernet::dst(f);
        if ethernet::is_group(&dst) {
            let others: Vec<PeerId> = self
                .table
                .peers
                .iter()
                .filter(|(p, dp)| **p != id && dp.view.plane.send.is_some())
                .map(|(p, _)| *p)
                .collect();
            for t in others {
                self.forward(t, f, now);
            }
            return None;
        }
        let (t, session) = self.shared.macs.lookup(&dst)?;
        let alive = self
            .table
            .peers
            .get(&t)
            .is_some_and(|dp| dp.view.session == session);
        (alive && t != id).then_some(t)
    }

    /// client-to-client: straight back out to the other client, without the kernel.
    fn forward(&mut self, target: PeerId, p: &[u8], now: Instant) {
        let t = Some(target);
        let Some(dp) = self.table.peers.get(&target).cloned() else {
            return self
                .counts
                .drop(Stage::Encrypt, t, p.len(), DropReason::NoRoute);
        };
        let Some(keys) = dp.view.plane.send.as_ref() else {
            return self
                .counts
                .drop(Stage::Encrypt, t, p.len(), DropReason::NoKey);
        };
        let sealed = seal_packet(keys, &dp.view.plane, p, &mut self.scratch, &mut self.fwd);
        match sealed {
            Ok(_) => self.counts.pass(Stage::Encrypt, t, p.len()),
            Err(r) => self.counts.drop(Stage::Encrypt, t, p.len(), r),
        }
        if self.fwd.is_empty() {
            return;
        }
        let (f, why) = self
            .shared
            .transport
            .flush(&mut self.fwd, dp.view.addr, &mut self.frames);
        self.counts.pass_n(Stage::SocketTx, t, f.sent, f.sent_bytes);
        self.counts
            .drop_n(Stage::SocketTx, t, f.failed, f.failed_bytes, why);
        if f.sent > 0 {
            self.shared.stamp(&dp.rt.last_tx_ns, now);
        }
    }

    /// Writes the packets queued for every queue of the device.
    fn flush_tun(&mut self) {
        for q in 0..self.writers.len() {
            self.flush_queue(q);
        }
    }

    /// Writes the packets queued for queue `q` and counts them at write_tun, all passed or
    /// all failed.
    fn flush_queue(&mut self, q: usize) {
        let (Some(w), Some(tun)) = (self.writers.get_mut(q), self.shared.tun.get()) else {
            return;
        };
        if w.writer.pending() == 0 {
            return;
        }
        let ok = match w.writer.flush(tun) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("tun write: {e}");
                self.tun_failed = true;
                false
            }
        };
        for (id, len) in w.queued.drain(..) {
            if ok {
                self.counts.pass(Stage::WriteTun, Some(id), len);
            } else {
                self.counts
                    .drop(Stage::WriteTun, Some(id), len, DropReason::TunWriteError);
            }
        }
    }

    fn finish(&mut self, clock: &Clock) {
        let t2 = clock.mark(self.t0);
        self.flush_tun();
        let t3 = clock.mark(self.t0);
        let table = self.table.clone();
        if let Some(tap) = self.tap() {
            let failed = self.tun_failed.then_some(DropReason::TunWriteError);
            for s in self.samples.drain(..) {
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
                    meta: TapMeta::data(s.trace, s.ids, ns(t2, t3), failed),
                });
            }
        }
        self.tun_failed = false;
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

    fn exit(mut self) {
        let table = self.table.clone();
        self.counts.flush_hist(self.shared, &table);
    }
}

/// `socket_rx → decrypt → write_tun` for all peers of `shared`'s transport, until `stop`.
/// `worker` picks the socket when the transport has several (a multi-threaded server).
pub fn rx_loop(shared: &Shared, worker: usize) {
    let mut rx = Rx::new(shared);
    let clock = Clock::new(shared.tap.is_some());
    match &shared.transport {
        Transport::Link(link) => rx_link(&mut rx, link, &clock),
        Transport::Udp(eps) => {
            if let Some(ep) = eps.get(worker) {
                rx_udp(&mut rx, ep, &clock);
            }
        }
        Transport::Tcp(conns) => rx_tcp(&mut rx, conns, &clock),
        Transport::Memory(port) => rx_memory(&mut rx, port, &clock),
    }
    rx.exit();
}

/// A client's link: datagrams of the connected socket, or records of the TCP stream. With
/// several receive threads on a UDP link (`shared.rx_turns`), each batch is received with a
/// ticket, decrypted while other threads work on theirs, and delivered in ticket order.
fn rx_link(rx: &mut Rx<'_>, link: &Link, clock: &Clock) {
    let shared = rx.shared;
    let mut batch = RxBatch::new();
    let addr = Transport::link_addr(link);
    let peer = link.peer();
    // Turns only on UDP: a TCP stream's records are cut from one byte stream in order.
    let turns = shared
        .rx_turns
        .as_ref()
        .filter(|_| link.kind() == crate::link::LinkKind::Udp);
    let mut aheads: Vec<Option<Ahead>> = Vec::new();
    let mut ahead_keys: AheadKeys = Vec::new();
    while !shared.stopped() {
        if !batch.wait(link, IDLE_WAIT) {
            continue;
        }
        rx.t0 = Instant::now();
        let (received, ticket) = match turns {
            Some(t) => t.receive(
                || batch.recv(link, Duration::ZERO),
                |r| matches!(r, Received::Packets),
            ),
            None => (batch.recv(link, Duration::ZERO), None),
        };
        match received {
            Received::Packets => {}
            Received::Idle => continue,
            Received::Closed(why) => {
                if !shared.stopped() {
                    shared.control.event(ControlInput::Closed { addr, why });
                }
                return;
            }
        }
        rx.t1 = clock.mark(rx.t0);
        rx.refresh();
        if let (Some(turns), Some(ticket)) = (turns, ticket) {
            // Decrypt now, beside the thread delivering the batch before this one.
            aheads.clear();
            ahead_keys.clear();
            batch.for_each_datagram(|pkt, from| {
                let a = (from == peer)
                    .then(|| rx.decrypt_ahead(pkt, addr, &mut ahead_keys))
                    .flatten();
                aheads.push(a);
            });
            if !turns.wait(ticket, &shared.stop) {
                return;
            }
            let mut next = aheads.drain(..);
            batch.for_each_datagram(|pkt, from| {
                let a = next.next().flatten();
                if from == peer {
                    let a = a.map(|a| {
                        let k = &ahead_keys[a.key].2;
                        (a, k)
                    });
                    rx.packet_ahead(pkt, addr, a);
                } else {
                    rx.refuse(pkt.len(), DropReason::UnknownPeer);
                }
            });
            drop(next);
            rx.finish(clock);
            turns.done(ticket);
            continue;
        }
        let r = batch.for_each(link, |pkt, from| {
            if from == peer {
                rx.packet(pkt, addr);
            } else {
                rx.refuse(pkt.len(), DropReason::UnknownPeer);
            }
        });
        rx.finish(clock);
        if let Err(r) = r {
            let why = format!("TCP stream: {r}");
            shared.control.event(ControlInput::Closed { addr, why });
            return;
        }
    }
}

/// A server's UDP socket: datagrams from every client.
fn rx_udp(rx: &mut Rx<'_>, ep: &UdpEndpoint, clock: &Clock) {
    let shared = rx.shared;
    let mut batch = RxBatch::new();
    while !shared.stopped() {
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
        rx.finish(clock);
    }
}

/// A server's TCP listener: accept, read and frame all connections.
fn rx_tcp(rx: &mut Rx<'_>, conns: &TcpConns, clock: &Clock) {
    let shared = rx.shared;
    let mut framers: HashMap<u64, TcpFramer> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    while !shared.stopped() {
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
            // The table may have changed while poll waited (a peer's keys, published just
            // before the PUSH_REPLY that lets it send).
            rx.refresh();
            for (id, mut p) in records {
                rx.packet(&mut p, PeerAddr::Tcp(id));
            }
            rx.finish(clock);
        }
        for (id, why) in closed {
            framers.remove(&id);
            conns.close(id);
            shared.control.event(ControlInput::Closed {
                addr: PeerAddr::Tcp(id),
                why,
            });
        }
    }
}

/// A port of the in-memory network: datagrams, or pieces of connection streams framed here
/// exactly as a TCP socket's bytes are.
fn rx_memory(rx: &mut Rx<'_>, port: &MemPort, clock: &Clock) {
    let shared = rx.shared;
    let mut framers: HashMap<PeerAddr, TcpFramer> = HashMap::new();
    let mut batch = Vec::with_capacity(64);
    while !shared.stopped() {
        batch.clear();
        port.recv_batch(64, IDLE_WAIT, &mut batch);
        if batch.is_empty() {
            continue;
        }
        rx.t0 = Instant::now();
        rx.t1 = clock.mark(rx.t0);
        rx.refresh();
        let mut broken = vec![];
        for d in batch.iter_mut() {
            if !port.is_stream() {
                rx.packet(&mut d.bytes, d.from);
                continue;
            }
            let f = framers.entry(d.from).or_default();
            f.push(&d.bytes);
            loop {
                match f.next_packet() {
                    Ok(Some(p)) => rx.packet(p, d.from),
                    Ok(None) => break,
                    Err(_) => {
                        broken.push(d.from);
                        break;
                    }
                }
            }
        }
        rx.finish(clock);
        for addr in broken {
            framers.remove(&addr);
            let why = "TCP framing error".to_owned();
            shared.control.event(ControlInput::Closed { addr, why });
        }
    }
}

/// A hash of an IP packet's flow (addresses, protocol and, for TCP and UDP, ports): the
/// same for every packet of a flow, so a client writes a flow through one tun queue. Other
/// packets (fragments, unknown versions) hash by what they have.
fn flow_hash(p: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let (addrs, proto, l4) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let first_fragment = u16::from_be_bytes([p[6], p[7]]) & 0x1fff == 0;
            (&p[12..20], p[9], first_fragment.then_some(ihl))
        }
        Some(6) if p.len() >= 40 => (&p[8..40], p[6], Some(40)),
        _ => (p.get(..p.len().min(20)).unwrap_or_default(), 0, None),
    };
    addrs.hash(&mut h);
    proto.hash(&mut h);
    if matches!(proto, 6 | 17)
        && let Some(ports) = l4.and_then(|o| p.get(o..o + 4))
    {
        ports.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod flow_hash_tests {
    use super::flow_hash;

    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16, payload: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 8, 0, 0, payload]);
        p
    }

    #[test]
    fn a_flow_hashes_alike_whatever_its_payload_and_flows_spread() {
        let (a, b) = ([198, 19, 0, 2], [198, 19, 10, 80]);
        assert_eq!(
            flow_hash(&v4(a, b, 6, 40000, 80, 1)),
            flow_hash(&v4(a, b, 6, 40000, 80, 2))
        );
        // Sixteen flows over two queues: both queues get some.
        let on_one = (0..16u16)
            .filter(|i| flow_hash(&v4(a, b, 6, 40000 + i, 80, 0)).is_multiple_of(2))
            .count();
        assert!((1..16).contains(&on_one), "{on_one} of 16 on queue 0");
        // Truncated or foreign packets hash without panicking.
        for p in [&[][..], &[0x45][..], &[0x60; 39][..], &[0xff; 64][..]] {
            let _ = flow_hash(p);
        }
    }
}
