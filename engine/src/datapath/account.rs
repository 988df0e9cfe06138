//! Accounting of one batch: what each stage did with each packet, globally and per peer.
//!
//! [`StageBatch`] is the only way the data path counts. Its mutators are [`StageBatch::pass`]
//! and [`StageBatch::drop`] (with bulk forms for socket and tun flushes, which succeed or fail
//! for many packets at once); each takes the packet's size. A packet is therefore counted
//! once per stage, with its bytes, when its fate there is known: `in = out + drops` and the
//! byte counts hold by construction. The batch is published once ([`StageBatch::publish`]),
//! with one latency sample per stage for its packets.

use std::time::Instant;

use tunscope_proto::server::PeerId;
use tunscope_proto::stage::{DropReason, Stage};

use crate::stats::{BatchCounts, LocalHist};

use super::{PeerTable, Shared};

const N_STAGES: usize = Stage::ALL.len();

/// Counts of one batch per stage, for the engine and for each peer it touched.
pub struct StageBatch {
    global: [BatchCounts; N_STAGES],
    /// Peers touched by this batch (a handful; a linear scan beats hashing).
    peers: Vec<(PeerId, [BatchCounts; N_STAGES])>,
    hist: LocalHist,
    peer_hist: Vec<(PeerId, LocalHist)>,
    per_peer: bool,
}

impl Default for StageBatch {
    fn default() -> Self {
        StageBatch {
            global: Default::default(),
            peers: Vec::new(),
            hist: LocalHist::new(2),
            peer_hist: Vec::new(),
            per_peer: true,
        }
    }
}

impl StageBatch {
    /// Follows the table's choice of per-peer counting.
    pub fn configure(&mut self, table: &PeerTable) {
        self.per_peer = table.per_peer_stats;
    }

    fn scope(&mut self, s: Stage, peer: Option<PeerId>, mut f: impl FnMut(&mut BatchCounts)) {
        f(&mut self.global[s.index()]);
        let Some(p) = peer.filter(|_| self.per_peer) else {
            return;
        };
        let i = match self.peers.iter().position(|(id, _)| *id == p) {
            Some(i) => i,
            None => {
                self.peers.push((p, Default::default()));
                self.peers.len() - 1
            }
        };
        f(&mut self.peers[i].1[s.index()]);
    }

    /// A packet of `bytes` passed `s` (for `peer`, when known).
    #[inline]
    pub fn pass(&mut self, s: Stage, peer: Option<PeerId>, bytes: usize) {
        self.scope(s, peer, |c| c.pass(bytes));
    }

    /// A packet of `bytes` was dropped at `s` for `r`.
    #[inline]
    pub fn drop(&mut self, s: Stage, peer: Option<PeerId>, bytes: usize, r: DropReason) {
        self.scope(s, peer, |c| c.drop(bytes, r));
    }

    /// `packets` packets (`bytes` in total) passed `s`.
    pub fn pass_n(&mut self, s: Stage, peer: Option<PeerId>, packets: u64, bytes: u64) {
        if packets > 0 {
            self.scope(s, peer, |c| c.pass_n(packets, bytes));
        }
    }

    /// `packets` packets (`bytes` in total) were dropped at `s` for `r`.
    pub fn drop_n(
        &mut self,
        s: Stage,
        peer: Option<PeerId>,
        packets: u64,
        bytes: u64,
        r: DropReason,
    ) {
        if packets > 0 {
            self.scope(s, peer, |c| c.drop_n(packets, bytes, r));
        }
    }

    /// Publishes the batch's counts and records each stage's time for its packets; empties it.
    pub fn publish(
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
            let n = self.global[stage.index()].packets_in();
            self.hist.record(*stage, n, *ns);
            if n > 0 {
                shared.stats.stage(*stage).add_busy(*ns);
            }
        }
        shared.stats.publish_hist(&mut self.hist, now, false);
        for (p, c) in self.peers.drain(..) {
            let Some(dp) = table.peers.get(&p) else {
                continue;
            };
            for s in Stage::ALL {
                dp.rt.stats.stage(s).add(&c[s.index()]);
            }
            let h = match self.peer_hist.iter().position(|(id, _)| *id == p) {
                Some(i) => &mut self.peer_hist[i].1,
                None => {
                    self.peer_hist.push((p, LocalHist::new(1)));
                    let last = self.peer_hist.len() - 1;
                    &mut self.peer_hist[last].1
                }
            };
            for (stage, ns) in stage_ns {
                h.record(*stage, c[stage.index()].packets_in(), *ns);
            }
            dp.rt.stats.publish_hist(h, now, false);
        }
        self.peer_hist.retain(|(p, _)| table.peers.contains_key(p));
        self.global = Default::default();
    }

    /// Publishes histograms still held by this thread (at exit).
    pub fn flush_hist(&mut self, shared: &Shared, table: &PeerTable) {
        let now = Instant::now();
        shared.stats.publish_hist(&mut self.hist, now, true);
        for (p, h) in self.peer_hist.iter_mut() {
            if let Some(dp) = table.peers.get(p) {
                dp.rt.stats.publish_hist(h, now, true);
            }
        }
    }
}
