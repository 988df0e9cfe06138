//! The send half: `read_tun → (peer by inner destination) → encrypt → socket_tx`, one GSO
//! batch per peer. A tap server's broadcast frame is one packet at read_tun and one per
//! client from encrypt on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tunscope_proto::server::PeerId;
use tunscope_proto::stage::{DropReason, Stage};

use crate::capture::{TapMeta, TapRecord, data_ids};
use crate::link::TxBatch;
use crate::stats::ns_between as ns;
use crate::tun::TunReader;

use super::account::StageBatch;
use super::seal::seal_packet;
use super::{Clock, IDLE_WAIT, PeerTable, Shared, ethernet, is_ip};

/// A sampled packet of a tx batch, waiting for its socket_tx time.
struct TxSample {
    trace: u64,
    ids: (Option<u32>, u8, u32),
    peer: PeerId,
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

/// tun → peers: `read_tun → encrypt → socket_tx`, until `stop`, reading the tun device's
/// queue `queue` (one send thread per queue of a multi-queue device). Waits for the tun
/// device when it does not exist yet (a client before the server's push).
///
/// A batch is read and routed first; then, peer by peer, its packets are sealed and handed
/// to the socket while that peer's `send_order` lock is held, so that with several send
/// threads a peer's packet-ids still leave in order (a receiver's replay window would
/// otherwise see a whole batch arrive "too old").
pub fn tx_loop(shared: &Shared, queue: usize) {
    let tun = loop {
        if shared.stopped() {
            return;
        }
        match shared.tun.get() {
            Some(t) => break t,
            None => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    // A client asks for its queues before the device exists; one it did not get (the
    // device refused multi-queue) has no thread.
    if queue >= tun.queues() {
        return;
    }
    let mut reader = TunReader::on_queue(tun.mtu(), queue);
    let mut batch = TxBatch::default();
    let mut frames = Vec::with_capacity(256 * 1024);
    let mut table = Arc::new(PeerTable::default());
    let mut generation = u64::MAX;
    let mut counts = StageBatch::default();
    let mut samples: Vec<TxSample> = Vec::new();
    let mut scratch = Vec::new();
    // The peers a packet goes to (several for a tap server's broadcast frames; `None`: no
    // route, counted as such at encrypt).
    let mut fanout: Vec<Option<PeerId>> = Vec::new();
    // (peer, packet index) of this batch, grouped by peer in read order.
    let mut plan: Vec<(Option<PeerId>, usize)> = Vec::new();
    // ICMPv6 answers (block-ipv6) written back into the tun device after each batch.
    let mut icmp: Vec<Vec<u8>> = Vec::new();
    let mut icmp_writer: Option<crate::tun::TunWriter> = None;
    let tap = shared.tap.as_deref();
    let clock = Clock::new(tap.is_some());
    while !shared.stopped() {
        let t0 = Instant::now();
        let Some(n) = reader.next_batch(tun, 128, IDLE_WAIT) else {
            continue;
        };
        let t1 = clock.mark(t0);
        if let Some(t) = shared.changed(&mut generation) {
            table = t;
            counts.configure(&table);
        }
        plan.clear();
        for i in 0..n {
            let len = reader.packet(i).len();
            if table.ethernet {
                if !ethernet::is_frame(reader.packet(i)) {
                    counts.drop(Stage::ReadTun, None, len, DropReason::RuntFrame);
                    continue;
                }
                shared.stats.count_frame(true, reader.packet(i));
            } else if !is_ip(reader.packet(i)) {
                counts.drop(Stage::ReadTun, None, len, DropReason::NotIp);
                continue;
            }
            if table.block_ipv6 && reader.packet(i)[0] >> 4 == 6 {
                counts.pass(Stage::ReadTun, None, len);
                counts.drop(Stage::Encrypt, None, len, DropReason::NoRoute);
                if let Some(reply) = tunscope_proto::icmp6::unreachable_no_route(reader.packet(i)) {
                    icmp.push(reply);
                }
                continue;
            }
            // Where it goes: a client sends everything to its server; a server looks up the
            // inner destination (an IP route, or a tap frame's learned MAC address; a
            // broadcast or multicast frame goes to every client).
            fanout.clear();
            let target = if let Some(p) = table.default_peer {
                Some(p)
            } else if table.ethernet {
                let dst = ethernet::dst(reader.packet(i));
                if ethernet::is_group(&dst) {
                    fanout.extend(
                        table
                            .peers
                            .iter()
                            .filter(|(_, dp)| dp.view.plane.send.is_some())
                            .map(|(id, _)| Some(*id)),
                    );
                    None
                } else {
                    shared
                        .macs
                        .lookup(&dst)
                        .filter(|(p, s)| table.peers.get(p).is_some_and(|dp| dp.view.session == *s))
                        .map(|(p, _)| p)
                }
            } else {
                table.routes.lookup_packet(reader.packet(i))
            };
            counts.pass(Stage::ReadTun, target, len);
            if table.mss != 0 {
                let p = reader.packet_mut(i);
                let ip = if table.ethernet {
                    ethernet::ip_payload_mut(p)
                } else {
                    Some(p)
                };
                if let Some(ip) = ip {
                    tunscope_proto::mss::clamp(ip, table.mss);
                }
            }
            if fanout.is_empty() {
                fanout.push(target);
            }
            plan.extend(fanout.iter().map(|&peer| (peer, i)));
        }
        if !icmp.is_empty() {
            let w = icmp_writer.get_or_insert_with(|| crate::tun::TunWriter::new(tun));
            for r in icmp.drain(..) {
                w.push(&r);
            }
            if let Err(e) = w.flush(tun) {
                tracing::debug!("ICMPv6 answer not written: {e}");
            }
        }
        // Peer by peer (a stable sort keeps each peer's packets in read order).
        plan.sort_by_key(|&(peer, _)| peer);
        let (mut encrypt_ns, mut send_ns) = (0u64, 0u64);
        let mut failed_peers: HashSet<PeerId> = HashSet::new();
        for group in plan.chunk_by(|a, b| a.0 == b.0) {
            let peer = group[0].0;
            let Some(dp) = peer.and_then(|t| table.peers.get(&t)) else {
                for &(_, i) in group {
                    let len = reader.packet(i).len();
                    counts.drop(Stage::Encrypt, peer, len, DropReason::NoRoute);
                }
                continue;
            };
            let Some(keys) = dp.view.plane.send.as_ref() else {
                for &(_, i) in group {
                    let len = reader.packet(i).len();
                    counts.drop(Stage::Encrypt, peer, len, DropReason::NoKey);
                }
                continue;
            };
            let in_order = dp.rt.send_order.lock().unwrap_or_else(|e| e.into_inner());
            let e0 = clock.mark(t1);
            for &(_, i) in group {
                let p = reader.packet(i);
                let len = p.len();
                let before = batch.mark();
                match seal_packet(keys, &dp.view.plane, p, &mut scratch, &mut batch) {
                    Ok(_) => {
                        // A sampled packet's journey follows its first data packet.
                        if let Some(tap) = tap
                            && let Some(first) = batch.packet_at(before)
                            && let Some(ids) = data_ids(first).filter(|ids| tap.sampled(ids.2))
                        {
                            samples.push(TxSample {
                                trace: tap.trace_id(),
                                ids,
                                peer: dp.view.id,
                                plain: p.to_vec(),
                                sealed: first.to_vec(),
                            });
                        }
                        counts.pass(Stage::Encrypt, peer, len);
                    }
                    Err(r) => counts.drop(Stage::Encrypt, peer, len, r),
                }
            }
            let e1 = clock.mark(t1);
            if !batch.is_empty() {
                let (f, why) = shared
                    .transport
                    .flush(&mut batch, dp.view.addr, &mut frames);
                counts.pass_n(Stage::SocketTx, peer, f.sent, f.sent_bytes);
                counts.drop_n(Stage::SocketTx, peer, f.failed, f.failed_bytes, why);
                if f.sent == 0 {
                    failed_peers.insert(dp.view.id);
                } else {
                    shared.stamp(&dp.rt.last_tx_ns, t0);
                }
            }
            drop(in_order);
            encrypt_ns += ns(e0, e1);
            send_ns += ns(e1, clock.mark(t1));
        }
        // Stage boundaries of the batch as a whole: its sealing, then its sending.
        let t2 = t1 + std::time::Duration::from_nanos(encrypt_ns);
        let t3 = t2 + std::time::Duration::from_nanos(send_ns);
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
