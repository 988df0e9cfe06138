//! Per-stage counters of the data path.
//!
//! Each stage records packets in, packets out, bytes and drops by reason. Threads accumulate
//! a whole batch locally ([`BatchCounts`]) and publish it with one relaxed atomic add per
//! counter, so the cost is per batch, not per packet. Conservation holds by construction of the
//! call sites: every packet that enters a stage is either passed on or dropped with a reason.

use std::sync::atomic::{AtomicU64, Ordering};

use tunscope_proto::stage::{DropReason, Stage};

const N_REASONS: usize = DropReason::ALL.len();
const N_STAGES: usize = Stage::ALL.len();

/// Counters of one stage.
#[derive(Default)]
pub struct StageCounters {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_in: AtomicU64,
    batches: AtomicU64,
    drops: [AtomicU64; N_REASONS],
}

/// A batch's worth of counts for one stage, kept on the stack of the thread that runs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Packets that entered the stage.
    pub packets_in: u64,
    /// Packets passed on.
    pub packets_out: u64,
    /// Bytes that entered the stage.
    pub bytes_in: u64,
    /// Drops by reason index.
    pub drops: [u64; N_REASONS],
}

impl BatchCounts {
    /// Counts a packet entering the stage.
    #[inline]
    pub fn input(&mut self, bytes: usize) {
        self.packets_in += 1;
        self.bytes_in += bytes as u64;
    }

    /// Counts a packet passed on.
    #[inline]
    pub fn pass(&mut self) {
        self.packets_out += 1;
    }

    /// Counts a dropped packet.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.packets_in == 0
    }
}

impl StageCounters {
    /// Publishes a batch.
    pub fn add(&self, b: &BatchCounts) {
        if b.is_empty() {
            return;
        }
        self.packets_in.fetch_add(b.packets_in, Ordering::Relaxed);
        self.packets_out.fetch_add(b.packets_out, Ordering::Relaxed);
        self.bytes_in.fetch_add(b.bytes_in, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        for (i, d) in b.drops.iter().enumerate() {
            if *d != 0 {
                self.drops[i].fetch_add(*d, Ordering::Relaxed);
            }
        }
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> StageSnapshot {
        StageSnapshot {
            packets_in: self.packets_in.load(Ordering::Relaxed),
            packets_out: self.packets_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            drops: std::array::from_fn(|i| self.drops[i].load(Ordering::Relaxed)),
        }
    }
}

/// A stage's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageSnapshot {
    /// Packets in.
    pub packets_in: u64,
    /// Packets out.
    pub packets_out: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Batches.
    pub batches: u64,
    /// Drops by reason index.
    pub drops: [u64; N_REASONS],
}

impl StageSnapshot {
    /// Total drops.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Drops for one reason.
    pub fn drops_for(&self, r: DropReason) -> u64 {
        self.drops[r.index()]
    }

    /// `in == out + drops`.
    pub fn conserved(&self) -> bool {
        self.packets_in == self.packets_out + self.dropped()
    }
}

/// All stages of one engine.
#[derive(Default)]
pub struct EngineStats {
    stages: [StageCounters; N_STAGES],
}

impl EngineStats {
    /// The counters of a stage.
    pub fn stage(&self, s: Stage) -> &StageCounters {
        &self.stages[s.index()]
    }

    /// All stages at one moment.
    pub fn snapshot(&self) -> [(Stage, StageSnapshot); N_STAGES] {
        std::array::from_fn(|i| (Stage::ALL[i], self.stages[i].snapshot()))
    }

    /// One line: `stage in/out` for stages that saw packets, then drops by reason.
    pub fn summary(&self) -> String {
        let mut parts = vec![];
        let mut drops = vec![];
        for (stage, snap) in self.snapshot() {
            if snap.packets_in == 0 {
                continue;
            }
            parts.push(format!(
                "{} {}/{}",
                stage.name(),
                snap.packets_in,
                snap.packets_out
            ));
            for r in DropReason::ALL {
                let n = snap.drops_for(r);
                if n > 0 {
                    drops.push(format!("{}:{}={n}", stage.name(), r.name()));
                }
            }
        }
        if parts.is_empty() {
            return "no data packets".into();
        }
        if drops.is_empty() {
            parts.join(", ")
        } else {
            format!("{}; drops {}", parts.join(", "), drops.join(" "))
        }
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<10} {:>10} {:>10} {:>12} {:>8}  drops\n",
            "stage", "in", "out", "bytes", "batches"
        );
        for (stage, snap) in self.snapshot() {
            let drops: Vec<String> = DropReason::ALL
                .iter()
                .filter(|r| snap.drops_for(**r) > 0)
                .map(|r| format!("{}={}", r.name(), snap.drops_for(*r)))
                .collect();
            s.push_str(&format!(
                "{:<10} {:>10} {:>10} {:>12} {:>8}  {}\n",
                stage.name(),
                snap.packets_in,
                snap.packets_out,
                snap.bytes_in,
                snap.batches,
                drops.join(" ")
            ));
        }
        s
    }
}
