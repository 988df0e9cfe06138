//! Stage probes: counters, latency and batch-size histograms per stage, and control-plane
//! timings, for the whole engine and (on a server) per peer.
//!
//! Cost model (VPP's per-node counters): a data-path thread measures a whole batch at once.
//! It reads the clock once per stage boundary, keeps counts in a [`BatchCounts`] on its stack
//! and histograms in a thread-local [`LocalHist`]; counts are published once per batch with
//! relaxed atomic adds, histograms are merged into the shared ones every 100 ms. Nothing is
//! done per packet beyond incrementing plain integers.
//!
//! Conservation: every packet entering a stage leaves it or is dropped with a reason, so for
//! every stage `packets_in == packets_out + drops` ([`StageSnapshot::conserved`]).
//!
//! With the `probes` feature off all of this compiles to nothing (see `cargo xtask bench
//! probes` for the measured difference).

use crate::datapath::ethernet::{FrameCounts, FrameReport};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tunscope_proto::stage::{DropReason, Stage};

const N_REASONS: usize = DropReason::ALL.len();
const N_STAGES: usize = Stage::ALL.len();

/// True when probes are compiled in.
pub const PROBES: bool = cfg!(feature = "probes");

/// Counters of one stage.
#[derive(Default)]
pub struct StageCounters {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    batches: AtomicU64,
    busy_ns: AtomicU64,
    drops: [AtomicU64; N_REASONS],
}

/// A batch's worth of counts for one stage, kept on the stack of the thread that runs it.
///
/// Its only mutators are [`BatchCounts::pass`] and [`BatchCounts::drop`] (and their bulk
/// forms): a packet is counted once, when its fate at the stage is known, with its size. So
/// `packets_in == packets_out + drops` and `bytes_in == bytes_out + dropped bytes` hold by
/// construction, not by the discipline of the code that counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    packets_in: u64,
    packets_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    drops: [u64; N_REASONS],
}

impl BatchCounts {
    /// A packet of `bytes` entered the stage and was passed on.
    #[inline]
    pub fn pass(&mut self, bytes: usize) {
        self.pass_n(1, bytes as u64);
    }

    /// A packet of `bytes` entered the stage and was dropped for `reason`.
    #[inline]
    pub fn drop(&mut self, bytes: usize, reason: DropReason) {
        self.drop_n(1, bytes as u64, reason);
    }

    /// `packets` packets of `bytes` in total entered and were passed on.
    #[inline]
    pub fn pass_n(&mut self, packets: u64, bytes: u64) {
        self.packets_in += packets;
        self.packets_out += packets;
        self.bytes_in += bytes;
        self.bytes_out += bytes;
    }

    /// `packets` packets of `bytes` in total entered and were dropped for `reason`.
    #[inline]
    pub fn drop_n(&mut self, packets: u64, bytes: u64, reason: DropReason) {
        self.packets_in += packets;
        self.bytes_in += bytes;
        self.drops[reason.index()] += packets;
    }

    /// Packets that entered the stage.
    pub fn packets_in(&self) -> u64 {
        self.packets_in
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.packets_in == 0
    }
}

impl StageCounters {
    /// Publishes a batch.
    #[inline]
    pub fn add(&self, b: &BatchCounts) {
        if !PROBES || b.is_empty() {
            return;
        }
        self.packets_in.fetch_add(b.packets_in, Ordering::Relaxed);
        self.packets_out.fetch_add(b.packets_out, Ordering::Relaxed);
        self.bytes_in.fetch_add(b.bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(b.bytes_out, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        for (i, d) in b.drops.iter().enumerate() {
            if *d != 0 {
                self.drops[i].fetch_add(*d, Ordering::Relaxed);
            }
        }
    }

    /// Adds the time a thread spent in this stage for one batch (where the time goes).
    #[inline]
    pub fn add_busy(&self, ns: u64) {
        if PROBES && ns > 0 {
            self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> StageSnapshot {
        StageSnapshot {
            packets_in: self.packets_in.load(Ordering::Relaxed),
            packets_out: self.packets_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
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
    /// Bytes of the packets passed on.
    pub bytes_out: u64,
    /// Batches.
    pub batches: u64,
    /// Time threads spent in the stage, summed over batches.
    pub busy_ns: u64,
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

fn new_hist(sigfig: u8) -> Histogram<u64> {
    // 1 ns .. 60 s covers every stage and control-plane duration.
    #[allow(clippy::expect_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 60_000_000_000, sigfig).expect("valid histogram bounds")
}

/// Latency (ns per packet) and batch-size histograms per stage.
///
/// A thread's records wait in `pending` and reach the shared histograms one by one when it
/// publishes; only when more than [`PENDING_MAX`] pile up between publications (under load)
/// are they folded into the thread's own histograms, which are then merged whole. Merging
/// whole histograms reads and zeroes tens of kilobytes per stage: done after every batch at
/// light load (each batch comes more than [`PUBLISH_EVERY`] after the last), it cost an
/// idle ping through ours↔ours about 0.05–0.1 ms.
pub struct LocalHist {
    latency: [Histogram<u64>; N_STAGES],
    batch: [Histogram<u64>; N_STAGES],
    /// (stage index, ns per packet, packets) not yet in `latency`/`batch`.
    pending: Vec<(usize, u64, u64)>,
    /// Whether `latency`/`batch` hold records not yet merged.
    folded: bool,
    published: Instant,
}

/// How often thread-local histograms are merged into the shared ones.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Records a thread keeps as a list before folding them into its histograms.
const PENDING_MAX: usize = 64;

impl LocalHist {
    /// Histograms with `sigfig` significant figures (2 for engine totals, 1 per peer).
    pub fn new(sigfig: u8) -> LocalHist {
        LocalHist {
            latency: std::array::from_fn(|_| new_hist(sigfig)),
            batch: std::array::from_fn(|_| new_hist(1)),
            pending: Vec::with_capacity(PENDING_MAX),
            folded: false,
            published: Instant::now(),
        }
    }

    /// Records that `packets` packets spent `ns` in `stage` (one batch).
    #[inline]
    pub fn record(&mut self, stage: Stage, packets: u64, ns: u64) {
        if !PROBES || packets == 0 {
            return;
        }
        if self.pending.len() == PENDING_MAX {
            self.fold();
        }
        self.pending.push((stage.index(), ns.max(1), packets));
    }

    /// Whether there are records not yet published.
    fn dirty(&self) -> bool {
        self.folded || !self.pending.is_empty()
    }

    /// Moves the pending records into this thread's histograms.
    fn fold(&mut self) {
        for (i, ns, n) in self.pending.drain(..) {
            let _ = self.latency[i].record_n(ns, n);
            let _ = self.batch[i].record(n);
        }
        self.folded = true;
    }

    fn merge_into(&mut self, target: &mut LocalHist) {
        for (i, ns, n) in self.pending.drain(..) {
            let _ = target.latency[i].record_n(ns, n);
            let _ = target.batch[i].record(n);
        }
        if self.folded {
            for i in 0..N_STAGES {
                let _ = target.latency[i].add(&self.latency[i]);
                let _ = target.batch[i].add(&self.batch[i]);
                self.latency[i].reset();
                self.batch[i].reset();
            }
            self.folded = false;
        }
    }
}

/// Control-plane timings: handshakes, renegotiations, push replies.
pub struct ControlMetrics {
    /// Completed handshakes (until the tunnel was up).
    pub handshakes: u64,
    /// Completed renegotiations.
    pub renegotiations: u64,
    /// Failed key negotiations.
    pub failures: u64,
    handshake_ns: Histogram<u64>,
    reneg_ns: Histogram<u64>,
    push_ns: Histogram<u64>,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        ControlMetrics {
            handshakes: 0,
            renegotiations: 0,
            failures: 0,
            handshake_ns: new_hist(2),
            reneg_ns: new_hist(2),
            push_ns: new_hist(2),
        }
    }
}

impl ControlMetrics {
    /// A handshake took `d` from the first packet to the tunnel being up, `push` of it
    /// waiting for/sending the PUSH_REPLY.
    pub fn handshake(&mut self, d: Duration, push: Option<Duration>) {
        self.handshakes += 1;
        let _ = self.handshake_ns.record((d.as_nanos() as u64).max(1));
        if let Some(p) = push {
            let _ = self.push_ns.record((p.as_nanos() as u64).max(1));
        }
    }

    /// A renegotiation took `d`.
    pub fn renegotiation(&mut self, d: Duration) {
        self.renegotiations += 1;
        let _ = self.reneg_ns.record((d.as_nanos() as u64).max(1));
    }
}

/// All probes of one scope: the engine as a whole, or one peer of a server.
pub struct EngineStats {
    stages: [StageCounters; N_STAGES],
    hist: Mutex<LocalHist>,
    control: Mutex<ControlMetrics>,
    /// Packets the peer compressed that decrypt inflated: packets, bytes before, after.
    decompressed: [AtomicU64; 3],
    /// Data packets accepted behind a higher packet-id (reordered on the way).
    late: AtomicU64,
    /// A tap engine's frames by kind: read from the device (into the tunnel), written to it.
    frames: [FrameCounts; 2],
}

impl Default for EngineStats {
    fn default() -> Self {
        EngineStats::new(2)
    }
}

impl EngineStats {
    /// Probes whose histograms keep `sigfig` significant figures.
    pub fn new(sigfig: u8) -> EngineStats {
        EngineStats {
            stages: Default::default(),
            hist: Mutex::new(LocalHist::new(sigfig)),
            control: Mutex::new(ControlMetrics::default()),
            decompressed: Default::default(),
            late: AtomicU64::new(0),
            frames: Default::default(),
        }
    }

    /// Counts a frame a tap engine read from its device (`to_tunnel`) or wrote to it.
    #[inline]
    pub fn count_frame(&self, to_tunnel: bool, f: &[u8]) {
        self.frames[usize::from(!to_tunnel)].count(f);
    }

    /// The counters of a stage.
    pub fn stage(&self, s: Stage) -> &StageCounters {
        &self.stages[s.index()]
    }

    /// Merges a thread's histograms if they are due (or `force`).
    pub fn publish_hist(&self, local: &mut LocalHist, now: Instant, force: bool) {
        if !local.dirty()
            || (!force && now.saturating_duration_since(local.published) < PUBLISH_EVERY)
        {
            return;
        }
        local.published = now;
        let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        local.merge_into(&mut h);
    }

    /// Counts packets decompressed in a batch (`bytes_in` compressed, `bytes_out` inflated).
    pub fn add_decompressed(&self, packets: u64, bytes_in: u64, bytes_out: u64) {
        if packets == 0 {
            return;
        }
        for (c, v) in self.decompressed.iter().zip([packets, bytes_in, bytes_out]) {
            c.fetch_add(v, Ordering::Relaxed);
        }
    }

    /// Counts data packets accepted behind a higher packet-id in a batch.
    pub fn add_late(&self, packets: u64) {
        if packets > 0 {
            self.late.fetch_add(packets, Ordering::Relaxed);
        }
    }

    /// Control-plane metrics.
    pub fn control(&self) -> std::sync::MutexGuard<'_, ControlMetrics> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// All stages' counters at one moment.
    pub fn snapshot(&self) -> [(Stage, StageSnapshot); N_STAGES] {
        std::array::from_fn(|i| (Stage::ALL[i], self.stages[i].snapshot()))
    }

    /// A serializable report of this scope.
    pub fn report(&self) -> ScopeReport {
        let h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        let stages = self
            .snapshot()
            .iter()
            .map(|(stage, s)| StageReport {
                stage: stage.name().to_owned(),
                packets_in: s.packets_in,
                packets_out: s.packets_out,
                bytes_in: s.bytes_in,
                bytes_out: s.bytes_out,
                batches: s.batches,
                busy_ns: s.busy_ns,
                drops: DropReason::ALL
                    .iter()
                    .filter(|r| s.drops_for(**r) > 0)
                    .map(|r| (r.name().to_owned(), s.drops_for(*r)))
                    .collect(),
                latency_ns: Quantiles::of(&h.latency[stage.index()]),
                latency_histogram: log2_buckets(&h.latency[stage.index()]),
                batch_size: Quantiles::of(&h.batch[stage.index()]),
                conserved: s.conserved(),
            })
            .collect();
        let c = self.control();
        ScopeReport {
            stages,
            control: ControlReport {
                handshakes: c.handshakes,
                renegotiations: c.renegotiations,
                failures: c.failures,
                handshake_ms: Quantiles::of(&c.handshake_ns).scaled(1e-6),
                renegotiation_ms: Quantiles::of(&c.reneg_ns).scaled(1e-6),
                push_ms: Quantiles::of(&c.push_ns).scaled(1e-6),
            },
            compression: CompressionReport {
                decompressed_packets: self.decompressed[0].load(Ordering::Relaxed),
                compressed_bytes: self.decompressed[1].load(Ordering::Relaxed),
                inflated_bytes: self.decompressed[2].load(Ordering::Relaxed),
            },
            late_packets: self.late.load(Ordering::Relaxed),
            ethernet: {
                let (to, from) = (self.frames[0].report(), self.frames[1].report());
                (to.total() + from.total() > 0).then_some(EthernetReport {
                    to_tunnel: to,
                    from_tunnel: from,
                })
            },
        }
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
            return "no packets".into();
        }
        if drops.is_empty() {
            parts.join(", ")
        } else {
            format!("{}; drops {}", parts.join(", "), drops.join(" "))
        }
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        self.report().table()
    }
}

/// p50/p90/p99/max of a histogram (0 when empty).
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// A histogram's counts in power-of-two buckets: `(upper bound, count)` where the bucket
/// holds values in `(upper/2, upper]`, empty buckets left out.
fn log2_buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = vec![];
    for v in h.iter_recorded() {
        let upper = v.value_iterated_to().max(1).next_power_of_two();
        match out.last_mut() {
            Some((u, c)) if *u == upper => *c += v.count_at_value(),
            _ => out.push((upper, v.count_at_value())),
        }
    }
    out
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Quantiles {
        if h.is_empty() {
            return Quantiles::default();
        }
        Quantiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5) as f64,
            p90: h.value_at_quantile(0.9) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            max: h.max() as f64,
        }
    }

    fn scaled(self, f: f64) -> Quantiles {
        Quantiles {
            count: self.count,
            p50: self.p50 * f,
            p90: self.p90 * f,
            p99: self.p99 * f,
            max: self.max * f,
        }
    }
}

/// One stage in a report.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct StageReport {
    /// Stage name.
    pub stage: String,
    /// Packets in.
    pub packets_in: u64,
    /// Packets out.
    pub packets_out: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes of the packets passed on (what a socket stage really sent or received).
    #[serde(default)]
    pub bytes_out: u64,
    /// Batches.
    pub batches: u64,
    /// Time the data threads spent in this stage, summed over batches (ns): the stage's
    /// share of the engine's time.
    #[serde(default)]
    pub busy_ns: u64,
    /// Drops by reason name.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Time spent in the stage per packet.
    pub latency_ns: Quantiles,
    /// The same as a histogram: packets per power-of-two bucket of ns, `(upper bound, count)`
    /// for the buckets that hold any (what a report draws).
    #[serde(default)]
    pub latency_histogram: Vec<(u64, u64)>,
    /// Packets per batch.
    pub batch_size: Quantiles,
    /// `in == out + drops`.
    pub conserved: bool,
}

/// Control-plane part of a report.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ControlReport {
    /// Handshakes completed.
    pub handshakes: u64,
    /// Renegotiations completed.
    pub renegotiations: u64,
    /// Key negotiations that failed.
    pub failures: u64,
    /// Handshake durations.
    pub handshake_ms: Quantiles,
    /// Renegotiation durations.
    pub renegotiation_ms: Quantiles,
    /// PUSH_REQUEST → PUSH_REPLY (client) or key active → PUSH_REPLY sent (server).
    pub push_ms: Quantiles,
}

/// The probes of one scope.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ScopeReport {
    /// Data-path stages.
    pub stages: Vec<StageReport>,
    /// Control plane.
    pub control: ControlReport,
    /// Decompression at the decrypt stage.
    #[serde(default)]
    pub compression: CompressionReport,
    /// Data packets decrypt accepted behind a higher packet-id: reordered on the way,
    /// inside the replay window (a duplicate is a `replay` drop instead).
    #[serde(default)]
    pub late_packets: u64,
    /// A tap engine's Ethernet frames by kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethernet: Option<EthernetReport>,
}

/// A tap engine's frames by kind in each direction.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct EthernetReport {
    /// Read from the tap device (read_tun), into the tunnel.
    pub to_tunnel: FrameReport,
    /// Written to the tap device (write_tun), out of the tunnel.
    pub from_tunnel: FrameReport,
}

/// Packets the peer compressed, inflated at decrypt (their drops are `bad_compression`).
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CompressionReport {
    /// Packets decompressed.
    pub decompressed_packets: u64,
    /// Their bytes as they arrived (after the framing byte).
    pub compressed_bytes: u64,
    /// Their bytes after decompression.
    pub inflated_bytes: u64,
}

impl ScopeReport {
    /// A stage by name.
    pub fn stage(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.stage == name)
    }

    /// Stages where `in != out + drops`.
    pub fn conservation_violations(&self) -> Vec<String> {
        self.stages
            .iter()
            .filter(|s| !s.conserved)
            .map(|s| {
                format!(
                    "{}: in {} != out {} + drops {}",
                    s.stage,
                    s.packets_in,
                    s.packets_out,
                    s.drops.values().sum::<u64>()
                )
            })
            .collect()
    }

    /// Table: stage × packets, bytes, drops by reason, p50/p99 latency.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<10} {:>10} {:>10} {:>12} {:>8} {:>9} {:>9}  drops\n",
            "stage", "in", "out", "bytes", "batch50", "p50 ns", "p99 ns"
        );
        for st in &self.stages {
            let drops: Vec<String> = st.drops.iter().map(|(r, n)| format!("{r}={n}")).collect();
            s.push_str(&format!(
                "{:<10} {:>10} {:>10} {:>12} {:>8} {:>9} {:>9}  {}\n",
                st.stage,
                st.packets_in,
                st.packets_out,
                st.bytes_in,
                st.batch_size.p50,
                st.latency_ns.p50,
                st.latency_ns.p99,
                drops.join(" ")
            ));
        }
        let c = &self.control;
        s.push_str(&format!(
            "control: {} handshake(s) p50 {:.1} ms, {} renegotiation(s) p50 {:.1} ms, push p50 {:.1} ms, {} failure(s)\n",
            c.handshakes, c.handshake_ms.p50, c.renegotiations, c.renegotiation_ms.p50, c.push_ms.p50, c.failures
        ));
        if self.late_packets > 0 {
            s.push_str(&format!(
                "reordering: {} packet(s) accepted late (behind a higher packet-id, inside the replay window)\n",
                self.late_packets
            ));
        }
        let z = &self.compression;
        if z.decompressed_packets > 0 {
            s.push_str(&format!(
                "compression: {} packet(s) decompressed, {} -> {} bytes\n",
                z.decompressed_packets, z.compressed_bytes, z.inflated_bytes
            ));
        }
        if let Some(e) = &self.ethernet {
            for (what, f) in [
                ("into tunnel", e.to_tunnel),
                ("out of tunnel", e.from_tunnel),
            ] {
                s.push_str(&format!(
                    "frames {what}: {} unicast, {} broadcast, {} multicast; {} ARP, {} VLAN-tagged\n",
                    f.unicast, f.broadcast, f.multicast, f.arp, f.vlan
                ));
            }
        }
        s
    }
}

/// Nanoseconds from `a` to `b` (0 when `b` is earlier): stage times in taps and journeys.
pub fn ns_between(a: std::time::Instant, b: std::time::Instant) -> u64 {
    b.saturating_duration_since(a).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_publish_the_same_whether_records_were_few_or_many() {
        if !PROBES {
            return;
        }
        // Few records between publications travel one by one, many are folded and merged
        // whole; the shared histograms must not tell the two apart.
        for records in [3usize, PENDING_MAX, PENDING_MAX + 1, 5 * PENDING_MAX + 7] {
            let stats = EngineStats::default();
            let mut local = LocalHist::new(2);
            let mut total = 0;
            for k in 0..records as u64 {
                local.record(Stage::Encrypt, 2, 1_000 + k);
                total += 2;
            }
            local.record(Stage::Encrypt, 0, 99); // nothing to record
            stats.publish_hist(&mut local, Instant::now(), true);
            let e = stats.report();
            let e = e.stage("encrypt").expect("stage");
            assert_eq!(e.latency_ns.count, total, "{records} records");
            assert_eq!(e.batch_size.count, records as u64, "{records} records");
            assert!(
                (1_000.0..=1_000.0 + records as f64 + 10.0).contains(&e.latency_ns.p50),
                "{records}: {:?}",
                e.latency_ns
            );
            // Published once: the next publication adds nothing.
            stats.publish_hist(&mut local, Instant::now(), true);
            let again = stats.report();
            let again = again.stage("encrypt").expect("stage");
            assert_eq!(again.latency_ns.count, total, "{records} records, twice");
        }
    }

    #[test]
    fn batches_publish_counts_and_histograms() {
        let stats = EngineStats::default();
        let mut b = BatchCounts::default();
        for _ in 0..8 {
            b.pass(100);
        }
        b.drop(100, DropReason::Replay);
        b.drop(100, DropReason::BadTag);
        stats.stage(Stage::Decrypt).add(&b);
        let mut local = LocalHist::new(2);
        local.record(Stage::Decrypt, 10, 5_000);
        stats.publish_hist(&mut local, Instant::now(), true);
        let r = stats.report();
        let d = r.stage("decrypt").expect("stage");
        if PROBES {
            assert_eq!(
                (
                    d.packets_in,
                    d.packets_out,
                    d.bytes_in,
                    d.bytes_out,
                    d.batches
                ),
                (10, 8, 1000, 800, 1)
            );
            assert_eq!(d.drops.get("replay"), Some(&1));
            assert!(d.conserved);
            assert_eq!(d.latency_ns.count, 10);
            assert!(
                (4_900.0..=5_100.0).contains(&d.latency_ns.p50),
                "{:?}",
                d.latency_ns
            );
            assert_eq!(d.batch_size.p50, 10.0);
            // 5 µs per packet lies in the (4096, 8192] ns bucket.
            assert_eq!(d.latency_histogram, vec![(8192, 10)]);
            assert!(r.conservation_violations().is_empty());
        }
        // Later packets of another speed fill their own bucket, in order.
        local.record(Stage::Decrypt, 3, 300);
        stats.publish_hist(&mut local, Instant::now(), true);
        if PROBES {
            let r = stats.report();
            let h = &r.stage("decrypt").expect("stage").latency_histogram;
            assert_eq!(h, &vec![(512, 3), (8192, 10)]);
        }
        // A counter published by hand (not through BatchCounts) is caught by the check.
        let mut r = stats.report();
        r.stages[0].packets_in += 1;
        r.stages[0].conserved = false;
        if PROBES {
            assert_eq!(r.conservation_violations().len(), 1);
        }
    }
}
