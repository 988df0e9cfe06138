//! Comparing two normalized captures: flow by flow, and within a flow packet by packet with a
//! sequence alignment (longest common subsequence), so one extra or missing packet shows as
//! exactly that instead of shifting every later comparison.
//!
//! What is reported:
//! * a flow only in A (`flow-missing`) or only in B (`flow-added`);
//! * within a flow: a packet only in A (`missing`) or only in B (`added`), a packet present in
//!   both with different fields (`changed`: the fields), the same packet at another position
//!   (`reordered`), a packet whose delay after the previous packet of its flow changed by
//!   more than the tolerance and the factor (`timing`: a stall, a timeout, a retransmission
//!   wait);
//! * per flow and direction (`volume`): the TCP stream length exactly; bulk packets and
//!   bytes only when asked (`--count-tolerance`, `--exact`).

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::normalize::{Event, Flow, Normalized};

/// Tolerances.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiffOptions {
    /// Timing: a packet's delay after the previous packet of its flow may differ by this
    /// many ms…
    pub time_tolerance_ms: f64,
    /// …or by less than this factor (10: a 0.3 ms DNS answer taking 5 s is reported, a
    /// session that lasted 2 s instead of 0.6 s because the test did more is not). 1 makes
    /// the tolerance purely absolute.
    pub time_factor: f64,
    /// Compare bulk volume: the largest accepted difference of a direction's bulk bytes,
    /// relative to the flow's bulk bytes in both directions (0.5 = half of it); 0 compares
    /// packets and bytes exactly. `None` (default): bulk volume is not compared — how many
    /// ACKs a receiver sends varies several-fold between identical runs — only TCP stream
    /// lengths are, exactly.
    pub count_tolerance: Option<f64>,
    /// A packet that moved only past packets its sender sent less than this many ms from it
    /// is concurrent with them (a resolver's parallel A and AAAA answers): not reported as
    /// reordered. 0 reports every move.
    pub burst_ms: f64,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            time_tolerance_ms: 1000.0,
            time_factor: 10.0,
            count_tolerance: None,
            burst_ms: 1.0,
        }
    }
}

/// One field that differs.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FieldChange {
    /// Field name.
    pub field: String,
    /// Value in A (absent: `None`).
    pub a: Option<String>,
    /// Value in B.
    pub b: Option<String>,
}

/// One difference.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// A flow only in A.
    FlowMissing {
        /// Flow key.
        flow: String,
        /// Its packets in A.
        packets: u64,
        /// First packet (record number in A).
        a: usize,
    },
    /// A flow only in B.
    FlowAdded {
        /// Flow key.
        flow: String,
        /// Its packets in B.
        packets: u64,
        /// First packet (record number in B).
        b: usize,
    },
    /// A packet only in A.
    Missing {
        /// Flow key.
        flow: String,
        /// Record number in A.
        a: usize,
        /// The packet.
        event: String,
    },
    /// A packet only in B.
    Added {
        /// Flow key.
        flow: String,
        /// Record number in B.
        b: usize,
        /// The packet.
        event: String,
    },
    /// The same packet with different fields.
    Changed {
        /// Flow key.
        flow: String,
        /// Record number in A.
        a: usize,
        /// Record number in B.
        b: usize,
        /// The packet as in A.
        event: String,
        /// What differs.
        fields: Vec<FieldChange>,
    },
    /// The same packet at another position in its flow.
    Reordered {
        /// Flow key.
        flow: String,
        /// Record number in A.
        a: usize,
        /// Record number in B.
        b: usize,
        /// The packet.
        event: String,
    },
    /// The same packet, at a time within its flow outside the tolerance.
    Timing {
        /// Flow key.
        flow: String,
        /// Record number in A.
        a: usize,
        /// Record number in B.
        b: usize,
        /// The packet.
        event: String,
        /// ms after the previous packet of the flow, in A.
        a_ms: f64,
        /// … in B.
        b_ms: f64,
    },
    /// Bulk counts of a flow direction differ.
    Volume {
        /// Flow key.
        flow: String,
        /// `→` (first endpoint to second) or `←`.
        direction: String,
        /// `packets`, `bytes` or `tcp stream bytes`.
        what: String,
        /// In A.
        a: u64,
        /// In B.
        b: u64,
    },
}

impl Change {
    /// The flow it concerns.
    pub fn flow(&self) -> &str {
        match self {
            Change::FlowMissing { flow, .. }
            | Change::FlowAdded { flow, .. }
            | Change::Missing { flow, .. }
            | Change::Added { flow, .. }
            | Change::Changed { flow, .. }
            | Change::Reordered { flow, .. }
            | Change::Timing { flow, .. }
            | Change::Volume { flow, .. } => flow,
        }
    }

    /// One line for the text report.
    pub fn line(&self) -> String {
        match self {
            Change::FlowMissing { packets, a, .. } => {
                format!("- flow missing in B ({packets} packets in A, first #{a})")
            }
            Change::FlowAdded { packets, b, .. } => {
                format!("+ flow added in B ({packets} packets in B, first #{b})")
            }
            Change::Missing { a, event, .. } => format!("- missing  A#{a}: {event}"),
            Change::Added { b, event, .. } => format!("+ added    B#{b}: {event}"),
            Change::Changed {
                a,
                b,
                event,
                fields,
                ..
            } => {
                let f: Vec<String> = fields
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: {} → {}",
                            c.field,
                            c.a.as_deref().unwrap_or("(none)"),
                            c.b.as_deref().unwrap_or("(none)")
                        )
                    })
                    .collect();
                format!(
                    "~ changed  A#{a}/B#{b}: {event}\n      {}",
                    f.join("\n      ")
                )
            }
            Change::Reordered { a, b, event, .. } => {
                format!("↕ reordered A#{a}/B#{b}: {event}")
            }
            Change::Timing {
                a,
                b,
                event,
                a_ms,
                b_ms,
                ..
            } => format!(
                "⏱ timing   A#{a}/B#{b}: {a_ms:.1} ms → {b_ms:.1} ms after the flow's previous packet: {event}"
            ),
            Change::Volume {
                direction,
                what,
                a,
                b,
                ..
            } => format!("Σ volume   {direction} {what}: {a} → {b}"),
        }
    }
}

/// The result of comparing two captures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DiffReport {
    /// First capture.
    pub a: String,
    /// Second capture.
    pub b: String,
    /// Packets in A.
    pub a_packets: usize,
    /// Packets in B.
    pub b_packets: usize,
    /// Flows present in both.
    pub flows_compared: usize,
    /// Packets aligned one to one.
    pub packets_aligned: usize,
    /// Every difference, by flow in A's order.
    pub changes: Vec<Change>,
    /// How A was read (records lost, if any).
    pub a_read: crate::read::ReadReport,
    /// How B was read.
    pub b_read: crate::read::ReadReport,
}

impl DiffReport {
    /// No differences, and something compared: a comparison of nothing (both empty) never
    /// counts as equivalent. Whether both files were read whole is [`DiffReport::complete`]
    /// (the command line wants both).
    pub fn equivalent(&self) -> bool {
        self.changes.is_empty() && !self.nothing_compared()
    }

    /// Both captures were read whole.
    pub fn complete(&self) -> bool {
        self.a_read.complete() && self.b_read.complete()
    }

    /// Neither capture had a packet.
    pub fn nothing_compared(&self) -> bool {
        self.a_packets == 0 && self.b_packets == 0
    }

    /// Both had packets and not one flow in common.
    pub fn disjoint(&self) -> bool {
        self.a_packets > 0 && self.b_packets > 0 && self.flows_compared == 0
    }

    /// The readable report.
    pub fn text(&self) -> String {
        let mut s = format!(
            "A: {} ({})\nB: {} ({})\n",
            self.a,
            self.a_read.summary(),
            self.b,
            self.b_read.summary()
        );
        let mut last_flow = "";
        for c in &self.changes {
            if c.flow() != last_flow {
                let _ = writeln!(s, "flow {}", c.flow());
                last_flow = c.flow();
            }
            let _ = writeln!(s, "  {}", c.line());
        }
        if self.nothing_compared() {
            s.push_str("nothing compared: neither capture has a packet\n");
        } else if self.disjoint() {
            s.push_str("the captures have no flow in common\n");
        }
        if !self.complete() {
            s.push_str("not all records could be read: the verdict is about what was read\n");
        }
        let _ = writeln!(
            s,
            "{}: {} flows compared, {} packets aligned, {} difference(s)",
            if self.equivalent() {
                "equivalent"
            } else if self.changes.is_empty() {
                "nothing compared"
            } else {
                "different"
            },
            self.flows_compared,
            self.packets_aligned,
            self.changes.len()
        );
        s
    }
}

enum Op {
    Match(usize, usize),
    Del(usize),
    Ins(usize),
}

/// Longest-common-subsequence alignment of two key sequences.
fn align(a: &[&str], b: &[&str]) -> Vec<Op> {
    let (n, m) = (a.len(), b.len());
    // Common prefix and suffix first: usually almost everything.
    let mut pre = 0;
    while pre < n && pre < m && a[pre] == b[pre] {
        pre += 1;
    }
    let mut suf = 0;
    while suf < n - pre && suf < m - pre && a[n - 1 - suf] == b[m - 1 - suf] {
        suf += 1;
    }
    let (am, bm) = (&a[pre..n - suf], &b[pre..m - suf]);
    let mut ops: Vec<Op> = (0..pre).map(|i| Op::Match(i, i)).collect();
    let (p, q) = (am.len(), bm.len());
    if p * q > 16_000_000 {
        // Too large for the table: position by position.
        for k in 0..p.max(q) {
            match (k < p, k < q) {
                (true, true) if am[k] == bm[k] => ops.push(Op::Match(pre + k, pre + k)),
                (true, true) => {
                    ops.push(Op::Del(pre + k));
                    ops.push(Op::Ins(pre + k));
                }
                (true, false) => ops.push(Op::Del(pre + k)),
                (false, true) => ops.push(Op::Ins(pre + k)),
                (false, false) => {}
            }
        }
    } else {
        let w = q + 1;
        let mut t = vec![0u32; (p + 1) * w];
        for i in (0..p).rev() {
            for j in (0..q).rev() {
                t[i * w + j] = if am[i] == bm[j] {
                    t[(i + 1) * w + j + 1] + 1
                } else {
                    t[(i + 1) * w + j].max(t[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < p || j < q {
            if i < p && j < q && am[i] == bm[j] {
                ops.push(Op::Match(pre + i, pre + j));
                i += 1;
                j += 1;
            } else if j < q && (i == p || t[i * w + j + 1] >= t[(i + 1) * w + j]) {
                ops.push(Op::Ins(pre + j));
                j += 1;
            } else {
                ops.push(Op::Del(pre + i));
                i += 1;
            }
        }
    }
    for k in 0..suf {
        ops.push(Op::Match(n - suf + k, m - suf + k));
    }
    ops
}

/// Each event's delay after the previous event of its flow (either direction, by time),
/// keyed by record number.
fn gaps(n: &Normalized, f: &Flow) -> HashMap<usize, u64> {
    let mut ev: Vec<&Event> = f.events.iter().map(|&i| &n.events[i]).collect();
    ev.sort_by_key(|e| e.t_ns);
    let mut out = HashMap::new();
    for w in ev.windows(2) {
        out.insert(w[1].index, w[1].t_ns.saturating_sub(w[0].t_ns));
    }
    out
}

/// The same alignment seen from the other capture.
fn flip(ops: Vec<Op>) -> Vec<Op> {
    ops.into_iter()
        .map(|o| match o {
            Op::Match(i, j) => Op::Match(j, i),
            Op::Del(i) => Op::Ins(i),
            Op::Ins(j) => Op::Del(j),
        })
        .collect()
}

/// Among equally long alignments, the one that pairs each packet with its twin nearest in
/// time: when one of two identical packets is missing, the report names the right one.
fn prefer_closer_in_time(
    ops: Vec<Op>,
    ka: &[&str],
    ta: &dyn Fn(usize) -> u64,
    tb: &dyn Fn(usize) -> u64,
) -> Vec<Op> {
    let (n, m) = ops.iter().fold((0, 0), |(n, m), o| match o {
        Op::Match(..) => (n + 1, m + 1),
        Op::Del(_) => (n + 1, m),
        Op::Ins(_) => (n, m + 1),
    });
    let mut matches: Vec<(usize, usize)> = ops
        .iter()
        .filter_map(|o| match o {
            Op::Match(i, j) => Some((*i, *j)),
            _ => None,
        })
        .collect();
    let matched: std::collections::HashSet<usize> = matches.iter().map(|m| m.0).collect();
    let dels: Vec<usize> = (0..n).filter(|i| !matched.contains(i)).collect();
    let mut changed = false;
    for d in dels {
        // A matched twin of `d` whose B partner is nearer in time to `d`, where moving the
        // match keeps the alignment monotonic.
        let best = matches
            .iter()
            .enumerate()
            .filter(|(_, (i, _))| ka[*i] == ka[d])
            .filter(|(k, (i, j))| {
                let closer = tb(*j).abs_diff(ta(d)) < tb(*j).abs_diff(ta(*i));
                let lo = k.checked_sub(1).map(|p| matches[p].0);
                let hi = matches.get(k + 1).map(|x| x.0);
                closer && lo.is_none_or(|l| l < d) && hi.is_none_or(|h| d < h)
            })
            .min_by_key(|(_, (_, j))| tb(*j).abs_diff(ta(d)))
            .map(|(k, _)| k);
        if let Some(k) = best {
            matches[k].0 = d;
            changed = true;
        }
    }
    if !changed {
        return ops;
    }
    // Rebuild the operation list from the (still monotonic) matches.
    let mut out = vec![];
    let (mut i, mut j) = (0, 0);
    for (mi, mj) in matches.into_iter().chain(std::iter::once((n, m))) {
        while i < mi {
            out.push(Op::Del(i));
            i += 1;
        }
        while j < mj {
            out.push(Op::Ins(j));
            j += 1;
        }
        if mi < n && mj < m {
            out.push(Op::Match(mi, mj));
            i += 1;
            j += 1;
        }
    }
    out
}

fn identity_key(e: &Event) -> String {
    let mut s = String::new();
    for (n, v) in e.identity() {
        if n == "time" {
            continue;
        }
        let _ = write!(s, "{n}={v}\u{1f}");
    }
    s
}

fn field_changes(a: &Event, b: &Event) -> Vec<FieldChange> {
    let mut names: Vec<&str> = a.fields.iter().map(|(n, _)| *n).collect();
    for (n, _) in &b.fields {
        if !names.contains(n) {
            names.push(n);
        }
    }
    names
        .into_iter()
        .filter(|n| *n != "time" && *n != "iface")
        .filter_map(|n| {
            let (x, y) = (a.get(n), b.get(n));
            (x != y).then(|| FieldChange {
                field: n.to_owned(),
                a: x.map(str::to_owned),
                b: y.map(str::to_owned),
            })
        })
        .collect()
}

/// Aligns one direction of a flow: `(events, flow start)` of A and of B.
fn compare_direction(
    na: &Normalized,
    nb: &Normalized,
    key: &str,
    (ea, start_a, gaps_a): (&[usize], u64, &HashMap<usize, u64>),
    (eb, start_b, gaps_b): (&[usize], u64, &HashMap<usize, u64>),
    opts: &DiffOptions,
    out: &mut Vec<Change>,
) -> usize {
    let key = key.to_owned();
    let burst = (opts.burst_ms * 1e6) as u64;

    let ka: Vec<String> = ea.iter().map(|&i| identity_key(&na.events[i])).collect();
    let kb: Vec<String> = eb.iter().map(|&i| identity_key(&nb.events[i])).collect();
    let ra: Vec<&str> = ka.iter().map(String::as_str).collect();
    let rb: Vec<&str> = kb.iter().map(String::as_str).collect();
    let ev_a = |i: usize| &na.events[ea[i]];
    let ev_b = |j: usize| &nb.events[eb[j]];
    let rel_a = |i: usize| ev_a(i).t_ns.saturating_sub(start_a);
    let rel_b = |j: usize| ev_b(j).t_ns.saturating_sub(start_b);
    // Twins first for missing packets (A side), then for added ones (B side, by swapping
    // the roles).
    let ops = prefer_closer_in_time(align(&ra, &rb), &ra, &rel_a, &rel_b);
    let ops = flip(prefer_closer_in_time(flip(ops), &rb, &rel_b, &rel_a));
    let mut aligned = 0;
    // Gaps between matches: (dels, inss); and which A position each matched B one has.
    let mut gaps: Vec<(Vec<usize>, Vec<usize>)> = vec![(vec![], vec![])];
    let mut b_match: Vec<Option<usize>> = vec![None; eb.len()];
    for op in &ops {
        match *op {
            Op::Match(i, j) => {
                aligned += 1;
                b_match[j] = Some(i);
                let (ea, eb) = (ev_a(i), ev_b(j));
                let ta = gaps_a.get(&ea.index).copied().unwrap_or(0) as f64 / 1e6;
                let tb = gaps_b.get(&eb.index).copied().unwrap_or(0) as f64 / 1e6;
                let (lo, hi) = (ta.min(tb), ta.max(tb));
                if hi - lo > opts.time_tolerance_ms && hi > opts.time_factor * lo {
                    out.push(Change::Timing {
                        flow: key.clone(),
                        a: ea.index,
                        b: eb.index,
                        event: ea.describe(),
                        a_ms: ta,
                        b_ms: tb,
                    });
                }
                gaps.push((vec![], vec![]));
            }
            Op::Del(i) => gaps.last_mut().map_or((), |g| g.0.push(i)),
            Op::Ins(j) => gaps.last_mut().map_or((), |g| g.1.push(j)),
        }
    }
    // 1. The same packet elsewhere: reordered.
    let mut used_b: Vec<bool> = vec![false; eb.len()];
    let mut used_a: Vec<bool> = vec![false; ea.len()];
    let all_ins: Vec<usize> = gaps.iter().flat_map(|g| g.1.iter().copied()).collect();
    for g in &gaps {
        for &i in &g.0 {
            if let Some(&j) = all_ins
                .iter()
                .find(|&&j| !used_b[j] && kb[j] == ka[i] && !g.1.contains(&j))
            {
                used_a[i] = true;
                used_b[j] = true;
                aligned += 1;
                // The A packets it moved past: between its old place and the matched
                // neighbours of its new one. All sent within the burst window of it (a
                // resolver's parallel answers) means concurrency, not a change.
                let before = b_match[..j].iter().rev().find_map(|m| *m);
                let after = b_match[j + 1..].iter().find_map(|m| *m);
                let crossed: Vec<usize> = match (before, after) {
                    (Some(p), _) if i < p => (i + 1..=p).collect(),
                    (_, Some(n)) if i > n => (n..i).collect(),
                    _ => vec![],
                };
                let t = ev_a(i).t_ns;
                if !crossed.is_empty() && crossed.iter().all(|&k| ev_a(k).t_ns.abs_diff(t) < burst)
                {
                    continue;
                }
                out.push(Change::Reordered {
                    flow: key.clone(),
                    a: ev_a(i).index,
                    b: ev_b(j).index,
                    event: ev_a(i).describe(),
                });
            }
        }
    }
    // 2. Same kind in the same gap: changed fields.
    for g in &gaps {
        for &i in &g.0 {
            if used_a[i] {
                continue;
            }
            let kind = ev_a(i).kind();
            if let Some(&j) = g.1.iter().find(|&&j| !used_b[j] && ev_b(j).kind() == kind) {
                used_a[i] = true;
                used_b[j] = true;
                aligned += 1;
                out.push(Change::Changed {
                    flow: key.clone(),
                    a: ev_a(i).index,
                    b: ev_b(j).index,
                    event: ev_a(i).describe(),
                    fields: field_changes(ev_a(i), ev_b(j)),
                });
            }
        }
    }
    // 3. The rest: missing and added.
    for g in &gaps {
        for &i in g.0.iter().filter(|&&i| !used_a[i]) {
            out.push(Change::Missing {
                flow: key.clone(),
                a: ev_a(i).index,
                event: ev_a(i).describe(),
            });
        }
        for &j in g.1.iter().filter(|&&j| !used_b[j]) {
            out.push(Change::Added {
                flow: key.clone(),
                b: ev_b(j).index,
                event: ev_b(j).describe(),
            });
        }
    }
    aligned
}

fn compare_flow(
    na: &Normalized,
    nb: &Normalized,
    fa: &Flow,
    fb: &Flow,
    opts: &DiffOptions,
    out: &mut Vec<Change>,
) -> usize {
    let key = fa.key.clone();
    let mut aligned = 0;
    let (gaps_a, gaps_b) = (gaps(na, fa), gaps(nb, fb));
    // Each direction is aligned on its own: the order of one sender's packets is
    // behaviour, how two senders' packets interleave is timing.
    for forward in [true, false] {
        let ea: Vec<usize> = fa
            .events
            .iter()
            .copied()
            .filter(|&i| na.events[i].forward == forward)
            .collect();
        let eb: Vec<usize> = fb
            .events
            .iter()
            .copied()
            .filter(|&i| nb.events[i].forward == forward)
            .collect();
        aligned += compare_direction(
            na,
            nb,
            &key,
            (&ea, fa.start_ns, &gaps_a),
            (&eb, fb.start_ns, &gaps_b),
            opts,
            out,
        );
    }
    // Bulk volume per direction, against the flow's whole bulk volume: how many ACKs a
    // receiver sends varies several-fold between runs, but is small next to the data.
    let total = |f: &Flow| f.counts[0].bulk_bytes + f.counts[1].bulk_bytes;
    let whole = total(fa).max(total(fb));
    for (d, arrow) in [(0, "→"), (1, "←")] {
        let (ca, cb) = (fa.counts[d], fb.counts[d]);
        let mut vol = |what: &str, x: u64, y: u64| {
            out.push(Change::Volume {
                flow: key.clone(),
                direction: arrow.into(),
                what: what.into(),
                a: x,
                b: y,
            });
        };
        match opts.count_tolerance {
            None => {}
            Some(t) if t <= 0.0 => {
                if ca.bulk_packets != cb.bulk_packets {
                    vol("bulk packets", ca.bulk_packets, cb.bulk_packets);
                }
                if ca.bulk_bytes != cb.bulk_bytes {
                    vol("bulk bytes", ca.bulk_bytes, cb.bulk_bytes);
                }
            }
            Some(t)
                if ca.bulk_bytes.abs_diff(cb.bulk_bytes) as f64 > t * whole as f64
                    && ca.bulk_packets.abs_diff(cb.bulk_packets) > 2 =>
            {
                vol("bulk bytes", ca.bulk_bytes, cb.bulk_bytes);
            }
            Some(_) => {}
        }
        if ca.tcp_stream != cb.tcp_stream && !crate::normalize::variable_stream(&key) {
            vol(
                "tcp stream bytes",
                ca.tcp_stream.unwrap_or(0),
                cb.tcp_stream.unwrap_or(0),
            );
        }
    }
    aligned
}

/// Compares two normalized captures (named `a` and `b` in the report).
pub fn diff(
    a_name: &str,
    na: &Normalized,
    b_name: &str,
    nb: &Normalized,
    opts: &DiffOptions,
) -> DiffReport {
    let by_key: HashMap<&str, &Flow> = nb.flows.iter().map(|f| (f.key.as_str(), f)).collect();
    let mut changes = vec![];
    let mut compared = 0;
    let mut aligned = 0;
    for fa in &na.flows {
        match by_key.get(fa.key.as_str()) {
            Some(fb) => {
                compared += 1;
                aligned += compare_flow(na, nb, fa, fb, opts, &mut changes);
            }
            None => changes.push(Change::FlowMissing {
                flow: fa.key.clone(),
                packets: fa.counts[0].packets + fa.counts[1].packets,
                a: fa.first,
            }),
        }
    }
    let in_a: std::collections::HashSet<&str> = na.flows.iter().map(|f| f.key.as_str()).collect();
    for fb in nb.flows.iter().filter(|f| !in_a.contains(f.key.as_str())) {
        changes.push(Change::FlowAdded {
            flow: fb.key.clone(),
            packets: fb.counts[0].packets + fb.counts[1].packets,
            b: fb.first,
        });
    }
    DiffReport {
        a: a_name.to_owned(),
        b: b_name.to_owned(),
        a_packets: na.packets,
        b_packets: nb.packets,
        flows_compared: compared,
        packets_aligned: aligned,
        changes,
        a_read: na.read.clone(),
        b_read: nb.read.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_finds_the_one_difference() {
        let a = ["a", "b", "c", "d", "e"];
        let b = ["a", "b", "d", "e"];
        let ops = align(&a, &b);
        let dels: Vec<usize> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Del(i) => Some(*i),
                _ => None,
            })
            .collect();
        assert_eq!(dels, vec![2]);
        assert_eq!(ops.iter().filter(|o| matches!(o, Op::Match(..))).count(), 4);
        let ops = align(&["x", "y"], &["y", "x"]);
        assert_eq!(ops.iter().filter(|o| matches!(o, Op::Match(..))).count(), 1);
    }
}
