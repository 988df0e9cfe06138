//! Packets the control thread handles itself, counted and tapped like the data threads' so
//! that one side's socket_tx and the other side's socket_rx agree packet for packet: control
//! packets it sends, pings and exit notifications it seals, control packets it receives.

use std::time::Instant;

use tunscope_proto::server::PeerAddr;
use tunscope_proto::stage::{DropReason, Stage};

use crate::capture::{TapMeta, TapRecord, data_ids};
use crate::stats::{BatchCounts, EngineStats};

use super::Shared;

/// Sends one packet the control thread produced to `to`. Control packets count at socket_tx;
/// `data` packets (pings, OCC messages, sealed by the state machine) at encrypt too. Counted
/// globally and, on a server, for the peer at `to`.
pub fn send_from_control(
    shared: &Shared,
    to: PeerAddr,
    packet: &[u8],
    data: bool,
) -> Result<(), DropReason> {
    let table = shared.current();
    let peer = table
        .by_addr
        .get(&to)
        .and_then(|id| table.peers.get(id))
        .map(|dp| &dp.rt);
    let mut encrypt = BatchCounts::default();
    let mut socket_tx = BatchCounts::default();
    if data {
        encrypt.pass(packet.len());
    }
    // The tap's time is taken before the send: the peer's answer can be recorded by the rx
    // thread before this thread runs again, and a capture must never show it first.
    let at = Instant::now();
    let sent = shared.transport.send_one(to, packet);
    match sent {
        Ok(()) => socket_tx.pass(packet.len()),
        Err(r) => {
            tracing::debug!("send to {to}: {r}");
            socket_tx.drop(packet.len(), r);
        }
    }
    if let Some(tap) = shared.tap.as_deref() {
        let ids = data_ids(packet).filter(|_| data);
        tap.emit(TapRecord {
            stage: Stage::SocketTx,
            at,
            data: packet.to_vec(),
            wire: shared
                .transport
                .wire(to, peer.and_then(|rt| rt.local.get().copied()), true),
            meta: TapMeta {
                trace: tap.trace_id(),
                peer: ids.and_then(|i| i.0),
                key_id: ids.map(|i| i.1),
                packet_id: ids.map(|i| i.2),
                drop: sent.err(),
                ..TapMeta::default()
            },
        });
    }
    let per_peer = peer.filter(|_| table.per_peer_stats).map(|rt| &rt.stats);
    for stats in std::iter::once(&*shared.stats).chain(per_peer) {
        stats.stage(Stage::Encrypt).add(&encrypt);
        stats.stage(Stage::SocketTx).add(&socket_tx);
    }
    sent
}

/// Counts a control packet handed to the state machine at the `control` stage: passed when
/// it took it, dropped with its reason otherwise.
pub fn count_control(stats: &EngineStats, len: usize, result: Result<(), DropReason>) {
    let mut c = BatchCounts::default();
    match result {
        Ok(()) => c.pass(len),
        Err(r) => {
            tracing::debug!("control packet dropped: {r}");
            c.drop(len, r);
        }
    }
    stats.stage(Stage::Control).add(&c);
}
