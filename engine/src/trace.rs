//! `tunscope trace FILE.pcapng…`: packet journeys and per-stage latency from stage taps.
//!
//! A host's tap records of one packet share a trace id; the two hosts' halves of a journey
//! are joined across the crypto boundary by (peer-id, key-id, packet-id), which both ends see
//! in the clear data-packet header. A journey ends delivered (write_tun on the receiver),
//! dropped (a record with `drop=` names host, stage and reason), or lost on the wire (the
//! sender's socket_tx is the last trace of it).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pcap_file::pcapng::{Block, PcapNgReader};
use serde::Serialize;
use tunscope_proto::stage::Stage;

/// One tap record read back from a capture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TapRecordRead {
    /// Host part of the interface name (`client`, `server`, …).
    pub host: String,
    /// Stage part of the interface name.
    pub stage: String,
    /// Timestamp, ns since the epoch.
    pub ts_ns: u128,
    /// Trace id on that host.
    pub trace: u64,
    /// Peer-id.
    pub peer: Option<u32>,
    /// Key-id.
    pub key: Option<u8>,
    /// Packet-id.
    pub pid: Option<u32>,
    /// Time in the stage.
    pub stage_ns: u64,
    /// Drop reason, if dropped here.
    pub drop: Option<String>,
    /// Captured length.
    pub len: usize,
}

fn parse_comment(c: &str) -> Option<BTreeMap<&str, &str>> {
    let rest = c.strip_prefix("tunscope ")?;
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect(),
    )
}

/// Reads every tunscope tap record of a pcapng file (other packets are skipped).
pub fn read_records(path: &Path) -> Result<Vec<TapRecordRead>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut r = PcapNgReader::new(BufReader::new(f))
        .with_context(|| format!("{} is not a pcapng file", path.display()))?;
    let mut names: Vec<String> = vec![];
    let mut out = vec![];
    while let Some(block) = r.next_block() {
        let block = block.with_context(|| format!("corrupt block in {}", path.display()))?;
        match block {
            Block::SectionHeader(_) => names.clear(),
            Block::InterfaceDescription(idb) => {
                let name = idb
                    .options
                    .iter()
                    .find_map(|o| match o {
                        pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption::IfName(n) => {
                            Some(n.to_string())
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                names.push(name);
            }
            Block::EnhancedPacket(epb) => {
                let Some(name) = names.get(epb.interface_id as usize) else {
                    continue;
                };
                let Some((host, stage)) = name.split_once('/') else {
                    continue;
                };
                let comment = epb.options.iter().find_map(|o| match o {
                    pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption::Comment(
                        c,
                    ) => Some(c.to_string()),
                    _ => None,
                });
                let Some(comment) = comment else { continue };
                let Some(kv) = parse_comment(&comment) else {
                    continue;
                };
                let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok());
                out.push(TapRecordRead {
                    host: host.to_owned(),
                    stage: stage.to_owned(),
                    ts_ns: epb.timestamp.as_nanos(),
                    trace: num("trace").unwrap_or(0),
                    peer: num("peer").map(|v| v as u32),
                    key: num("key").map(|v| v as u8),
                    pid: num("pid").map(|v| v as u32),
                    stage_ns: num("stage_ns").unwrap_or(0),
                    drop: kv.get("drop").map(|s| (*s).to_owned()),
                    len: epb.data.len(),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// How a journey ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Written to the receiver's tun device.
    Delivered,
    /// Dropped at `host/stage` for `reason`.
    Dropped {
        /// Where.
        at: String,
        /// Why.
        reason: String,
    },
    /// Last seen leaving the sender; never seen by the receiver.
    LostOnWire {
        /// The last stage that saw it.
        after: String,
    },
    /// Only the receiving half was captured (the sender was not tapped).
    ReceiveOnly,
}

/// One packet's path through both hosts.
#[derive(Clone, Debug, Serialize)]
pub struct Journey {
    /// (peer-id, key-id, packet-id).
    pub id: (Option<u32>, u8, u32),
    /// Sending host.
    pub from: Option<String>,
    /// Receiving host.
    pub to: Option<String>,
    /// Records in time order.
    pub hops: Vec<TapRecordRead>,
    /// How it ended.
    pub outcome: Outcome,
}

const TX_STAGES: [&str; 3] = ["read_tun", "encrypt", "socket_tx"];

/// Position of a stage in a packet's path (hops are ordered by path, not by clock: the two
/// hosts' clock reads are per batch).
fn stage_rank(s: &str) -> usize {
    Stage::DATA_PATH
        .iter()
        .position(|x| x.name() == s)
        .unwrap_or(Stage::DATA_PATH.len())
}

/// Groups records into journeys.
pub fn journeys(records: &[TapRecordRead]) -> Vec<Journey> {
    // Halves: (host, trace) → records; only data packets (with a packet-id) make journeys.
    let mut halves: BTreeMap<(String, u64), Vec<TapRecordRead>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.pid.is_some()) {
        halves
            .entry((r.host.clone(), r.trace))
            .or_default()
            .push(r.clone());
    }
    let mut tx: Vec<Vec<TapRecordRead>> = vec![];
    let mut rx: HashMap<(Option<u32>, u8, u32), Vec<Vec<TapRecordRead>>> = HashMap::new();
    for (_, mut h) in halves {
        h.sort_by_key(|r| (stage_rank(&r.stage), r.ts_ns));
        let first = &h[0];
        let id = (first.peer, first.key.unwrap_or(0), first.pid.unwrap_or(0));
        if TX_STAGES.contains(&first.stage.as_str()) {
            tx.push(h);
        } else {
            rx.entry(id).or_default().push(h);
        }
    }
    let mut out = vec![];
    for t in tx {
        let first = &t[0];
        let id = (first.peer, first.key.unwrap_or(0), first.pid.unwrap_or(0));
        let host = first.host.clone();
        let matched = rx.get_mut(&id).and_then(|v| {
            let i = v.iter().position(|h| h[0].host != host)?;
            Some(v.remove(i))
        });
        let mut hops = t;
        let to = matched.as_ref().map(|m| m[0].host.clone());
        if let Some(m) = matched {
            hops.extend(m);
        }
        let outcome = outcome_of(&hops, to.is_some());
        out.push(Journey {
            id,
            from: Some(host),
            to,
            hops,
            outcome,
        });
    }
    for (id, rest) in rx {
        for h in rest {
            let outcome = match h.iter().find(|r| r.drop.is_some()) {
                Some(d) => Outcome::Dropped {
                    at: format!("{}/{}", d.host, d.stage),
                    reason: d.drop.clone().unwrap_or_default(),
                },
                None => Outcome::ReceiveOnly,
            };
            out.push(Journey {
                id,
                from: None,
                to: Some(h[0].host.clone()),
                hops: h,
                outcome,
            });
        }
    }
    out.sort_by_key(|j| j.hops.first().map_or(0, |h| h.ts_ns));
    out
}

fn outcome_of(hops: &[TapRecordRead], received: bool) -> Outcome {
    if let Some(d) = hops.iter().find(|r| r.drop.is_some()) {
        return Outcome::Dropped {
            at: format!("{}/{}", d.host, d.stage),
            reason: d.drop.clone().unwrap_or_default(),
        };
    }
    if !received {
        let last = hops
            .last()
            .map(|r| format!("{}/{}", r.host, r.stage))
            .unwrap_or_default();
        return Outcome::LostOnWire { after: last };
    }
    if hops.iter().any(|r| r.stage == "write_tun") {
        Outcome::Delivered
    } else {
        let last = hops
            .last()
            .map(|r| format!("{}/{}", r.host, r.stage))
            .unwrap_or_default();
        Outcome::Dropped {
            at: last,
            reason: "not written to tun".into(),
        }
    }
}

fn pct(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Per-stage latency over all journeys: time in each `host/stage`, wire time (socket_tx →
/// socket_rx), and end to end (read_tun → write_tun).
pub fn breakdown(js: &[Journey]) -> Vec<(String, usize, u64, u64)> {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for j in js {
        for h in &j.hops {
            by.entry(format!("{}/{}", h.host, h.stage))
                .or_default()
                .push(h.stage_ns);
        }
        let find = |stage: &str| j.hops.iter().find(|h| h.stage == stage).map(|h| h.ts_ns);
        if let (Some(a), Some(b)) = (find("socket_tx"), find("socket_rx")) {
            by.entry("wire (socket_tx → socket_rx)".into())
                .or_default()
                .push(b.saturating_sub(a) as u64);
        }
        if let (Some(a), Some(b)) = (find("read_tun"), find("write_tun")) {
            by.entry("end to end (read_tun → write_tun)".into())
                .or_default()
                .push(b.saturating_sub(a) as u64);
        }
    }
    let mut rows: Vec<(String, usize, u64, u64)> = by
        .into_iter()
        .map(|(k, mut v)| {
            let n = v.len();
            let p50 = pct(&mut v, 0.5);
            let p99 = pct(&mut v, 0.99);
            (k, n, p50, p99)
        })
        .collect();
    // Host by host along the packet's path, then the wire and end to end.
    rows.sort_by_key(|(k, ..)| match k.split_once('/') {
        Some((host, stage)) if !k.starts_with("wire") && !k.starts_with("end") => {
            (0, host.to_owned(), stage_rank(stage))
        }
        _ if k.starts_with("wire") => (1, String::new(), 0),
        _ => (2, String::new(), 0),
    });
    rows
}

/// `tunscope trace`: prints journeys and the latency breakdown.
pub fn run(files: &[PathBuf], limit: usize, json: bool) -> Result<()> {
    let mut records = vec![];
    for f in files {
        records.extend(read_records(f)?);
    }
    let js = journeys(&records);
    if json {
        println!("{}", serde_json::to_string_pretty(&js)?);
        return Ok(());
    }
    let delivered = js
        .iter()
        .filter(|j| j.outcome == Outcome::Delivered)
        .count();
    let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
    let mut lost = 0;
    for j in &js {
        match &j.outcome {
            Outcome::Dropped { at, reason } => {
                *dropped.entry(format!("{at} ({reason})")).or_default() += 1
            }
            Outcome::LostOnWire { .. } => lost += 1,
            _ => {}
        }
    }
    println!(
        "{} tap records, {} journeys: {delivered} delivered, {lost} lost on the wire, {} dropped",
        records.len(),
        js.len(),
        dropped.values().sum::<usize>()
    );
    for (k, n) in &dropped {
        println!("  dropped at {k}: {n}");
    }
    println!(
        "\n{:<40} {:>8} {:>12} {:>12}",
        "stage", "packets", "p50 ns", "p99 ns"
    );
    for (k, n, p50, p99) in breakdown(&js) {
        println!("{k:<40} {n:>8} {p50:>12} {p99:>12}");
    }
    println!();
    for j in js.iter().take(limit) {
        let (peer, key, pid) = j.id;
        let start = j.hops.first().map_or(0, |h| h.ts_ns);
        let path: Vec<String> = j
            .hops
            .iter()
            .map(|h| format!("{}/{}+{}µs", h.host, h.stage, (h.ts_ns - start) / 1000))
            .collect();
        println!(
            "peer {} key {key} pid {pid}: {:?}\n    {}",
            peer.map_or("-".into(), |p| p.to_string()),
            j.outcome,
            path.join(" → ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        host: &str,
        stage: &str,
        ts: u128,
        trace: u64,
        pid: u32,
        drop: Option<&str>,
    ) -> TapRecordRead {
        TapRecordRead {
            host: host.into(),
            stage: stage.into(),
            ts_ns: ts,
            trace,
            peer: Some(0),
            key: Some(0),
            pid: Some(pid),
            stage_ns: 100,
            drop: drop.map(str::to_owned),
            len: 100,
        }
    }

    #[test]
    fn joins_halves_and_names_outcomes() {
        let rs = vec![
            // pid 1: delivered.
            rec("client", "read_tun", 10, 1, 1, None),
            rec("client", "encrypt", 20, 1, 1, None),
            rec("client", "socket_tx", 30, 1, 1, None),
            rec("server", "socket_rx", 40, 7, 1, None),
            rec("server", "decrypt", 50, 7, 1, None),
            rec("server", "write_tun", 60, 7, 1, None),
            // pid 2: lost on the wire.
            rec("client", "read_tun", 110, 2, 2, None),
            rec("client", "socket_tx", 130, 2, 2, None),
            // pid 3: dropped by the server.
            rec("client", "socket_tx", 230, 3, 3, None),
            rec("server", "socket_rx", 240, 8, 3, None),
            rec("server", "decrypt", 250, 8, 3, Some("bad_tag")),
            // pid 1 the other way (server → client) must not join with the above.
            rec("server", "read_tun", 300, 9, 1, None),
            rec("server", "socket_tx", 310, 9, 1, None),
            rec("client", "socket_rx", 320, 4, 1, None),
            rec("client", "write_tun", 330, 4, 1, None),
        ];
        let js = journeys(&rs);
        assert_eq!(js.len(), 4);
        assert_eq!(js[0].outcome, Outcome::Delivered);
        assert_eq!(js[0].hops.len(), 6);
        assert_eq!(
            js[1].outcome,
            Outcome::LostOnWire {
                after: "client/socket_tx".into()
            }
        );
        assert_eq!(
            js[2].outcome,
            Outcome::Dropped {
                at: "server/decrypt".into(),
                reason: "bad_tag".into()
            }
        );
        assert_eq!(js[3].outcome, Outcome::Delivered);
        assert_eq!(js[3].from.as_deref(), Some("server"));
        let b = breakdown(&js);
        let wire = b.iter().find(|x| x.0.starts_with("wire")).unwrap();
        assert_eq!(wire.1, 3);
        assert_eq!(wire.2, 10);
    }
}
