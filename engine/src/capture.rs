//! Stage taps: sampled packets of every data-path stage written to one pcapng file.
//!
//! * One Interface Description Block per stage, named `<host>/<stage>` (`client/read_tun`,
//!   `server/socket_rx`, …), link type RAW (IP), nanosecond timestamps.
//! * Tun stages (read_tun, decrypt, write_tun) hold the plaintext IP packet. Link stages
//!   (encrypt, socket_tx, socket_rx) hold the OpenVPN packet inside the IP/UDP (or IP/TCP with
//!   the 2-byte record length) headers it has on the wire, so Wireshark dissects it as OpenVPN.
//! * A record's timestamp is when the packet entered the stage; `stage_ns` is how long it
//!   stayed there (its batch's time in the stage).
//! * Each packet carries a comment `tunscope trace=T peer=P key=K pid=N stage_ns=S [drop=R]`:
//!   the trace id given at read_tun/socket_rx, and the (peer, key-id, packet-id) that matches
//!   the two ends of a packet's journey across the crypto boundary (see `tunscope trace`).
//! * Sampling is by packet-id (`pid % N == 0`), so both ends pick the same packets; control
//!   packets are always kept. A size cap stops the file from growing without bound.
//!
//! The data threads hand records to a writer thread through a bounded channel and never block
//! on it: when the writer falls behind, records are dropped and counted.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use tunscope_proto::stage::{DropReason, Stage};
use tunscope_proto::wire::DataHeader;

/// Capture settings from the command line.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Output file.
    pub path: PathBuf,
    /// Keep one packet in `sample` (by packet-id).
    pub sample: u32,
    /// Stop writing after this many bytes.
    pub max_bytes: u64,
    /// Host name in interface names (`client`, `server`, or `--capture-name`).
    pub host: String,
    /// A tap engine: the data stages carry Ethernet frames (link type Ethernet; encrypted
    /// records get an Ethernet header in front of their synthesized IP/UDP headers).
    pub ethernet: bool,
}

/// Where a link-stage packet travelled: addresses and transport, for the synthesized headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wire {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// TCP (records with a length prefix) rather than UDP.
    pub tcp: bool,
}

/// Per-packet annotations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapMeta {
    /// Trace id (unique per host).
    pub trace: u64,
    /// Peer-id of the data packet.
    pub peer: Option<u32>,
    /// Key-id.
    pub key_id: Option<u8>,
    /// Packet-id.
    pub packet_id: Option<u32>,
    /// Time the packet spent in this stage.
    pub stage_ns: u64,
    /// Dropped here, for this reason.
    pub drop: Option<DropReason>,
    /// Sent (`Some(true)`) or received; written as the packet's direction flag.
    pub outgoing: Option<bool>,
}

impl TapMeta {
    /// The metadata of a data packet: `ids` are (peer-id, key-id, packet-id).
    pub fn data(
        trace: u64,
        ids: (Option<u32>, u8, u32),
        stage_ns: u64,
        drop: Option<DropReason>,
    ) -> TapMeta {
        TapMeta {
            trace,
            peer: ids.0,
            key_id: Some(ids.1),
            packet_id: Some(ids.2),
            stage_ns,
            drop,
            outgoing: None,
        }
    }

    /// The comment string.
    pub fn comment(&self) -> String {
        let mut s = format!("tunscope trace={}", self.trace);
        if let Some(p) = self.peer {
            s.push_str(&format!(" peer={p}"));
        }
        if let Some(k) = self.key_id {
            s.push_str(&format!(" key={k}"));
        }
        if let Some(p) = self.packet_id {
            s.push_str(&format!(" pid={p}"));
        }
        s.push_str(&format!(" stage_ns={}", self.stage_ns));
        if let Some(d) = self.drop {
            s.push_str(&format!(" drop={}", d.name()));
        }
        s
    }
}

/// One record for the writer.
pub struct TapRecord {
    /// Stage.
    pub stage: Stage,
    /// When the packet entered the stage (`meta.stage_ns` is how long it stayed).
    pub at: Instant,
    /// Packet bytes (IP packet, or OpenVPN packet when `wire` is set).
    pub data: Vec<u8>,
    /// Link addresses for link stages.
    pub wire: Option<Wire>,
    /// Annotations.
    pub meta: TapMeta,
}

/// Counters shared by the tap and the writer thread. (The writer must not hold the `Tap`
/// itself: the tap owns the channel's sender, and the writer stops when all senders are gone.)
#[derive(Default)]
struct TapCounters {
    lost: AtomicU64,
    written: AtomicU64,
    full: AtomicBool,
}

/// The data threads' handle: sampling decision and a non-blocking sender.
pub struct Tap {
    tx: SyncSender<TapRecord>,
    sample: u32,
    counters: std::sync::Arc<TapCounters>,
    next_trace: AtomicU64,
}

impl Tap {
    /// True when the packet with this packet-id is to be recorded.
    #[inline]
    pub fn sampled(&self, packet_id: u32) -> bool {
        !self.counters.full.load(Ordering::Relaxed) && packet_id.is_multiple_of(self.sample)
    }

    /// A fresh trace id.
    pub fn trace_id(&self) -> u64 {
        self.next_trace.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands a record to the writer; drops (and counts) it when the writer is behind.
    pub fn emit(&self, rec: TapRecord) {
        match self.tx.try_send(rec) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records lost because the writer was behind.
    pub fn lost(&self) -> u64 {
        self.counters.lost.load(Ordering::Relaxed)
    }

    /// Records written.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }
}

/// Reads the key-id, peer-id and packet-id of a data packet (in clear in its header).
pub fn data_ids(packet: &[u8]) -> Option<(Option<u32>, u8, u32)> {
    let h = DataHeader::parse(packet).ok()?;
    let pos = h.len();
    let b: [u8; 4] = packet.get(pos..pos + 4)?.try_into().ok()?;
    Some((h.peer_id, h.key_id, u32::from_be_bytes(b)))
}

/// The capture: the tap for the data threads and the writer thread behind it.
pub struct Capture {
    /// Handle for the data threads.
    pub tap: std::sync::Arc<Tap>,
    writer: Option<JoinHandle<Result<()>>>,
}

impl Capture {
    /// Creates the file and starts the writer thread.
    pub fn start(cfg: &CaptureConfig) -> Result<Capture> {
        // 0600: captures hold the control channel's plaintext (PUSH_REPLY, auth-token).
        let file = crate::private_files::create(&cfg.path)
            .with_context(|| format!("cannot create capture {}", cfg.path.display()))?;
        let (tx, rx) = sync_channel(8192);
        let counters = std::sync::Arc::new(TapCounters::default());
        let tap = std::sync::Arc::new(Tap {
            tx,
            sample: cfg.sample.max(1),
            counters: std::sync::Arc::clone(&counters),
            next_trace: AtomicU64::new(1),
        });
        let host = cfg.host.clone();
        let (max, ethernet) = (cfg.max_bytes, cfg.ethernet);
        let writer = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || write_loop(BufWriter::new(file), &host, max, ethernet, rx, &counters))?;
        Ok(Capture {
            tap,
            writer: Some(writer),
        })
    }

    /// Flushes and closes the file (after the data threads stopped).
    pub fn finish(mut self) -> Result<()> {
        let tap = self.tap;
        let writer = self.writer.take();
        // Dropping the last sender ends the writer loop; the data threads' clones are gone.
        drop(tap);
        if let Some(w) = writer {
            w.join()
                .map_err(|_| anyhow::anyhow!("capture writer panicked"))??;
        }
        Ok(())
    }
}

/// Maps an `Instant` to wall-clock time, anchored once.
struct WallClock {
    instant: Instant,
    wall: Duration,
}

impl WallClock {
    fn new() -> WallClock {
        WallClock {
            instant: Instant::now(),
            wall: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    fn at(&self, t: Instant) -> Duration {
        if t >= self.instant {
            self.wall + (t - self.instant)
        } else {
            self.wall.saturating_sub(self.instant - t)
        }
    }
}

fn write_loop(
    out: BufWriter<File>,
    host: &str,
    max: u64,
    ethernet: bool,
    rx: Receiver<TapRecord>,
    tap: &TapCounters,
) -> Result<()> {
    let mut w = PcapNgWriter::new(out).context("writing pcapng header")?;
    let clock = WallClock::new();
    let mut ifaces: HashMap<Stage, u32> = HashMap::new();
    // Every stage gets its interface up front so readers see all of them, even unused ones.
    // The control stage carries plaintext control messages as text (Wireshark's exported-PDU
    // link type, shown as "Line-based text data").
    for stage in Stage::ALL.iter() {
        let id = ifaces.len() as u32;
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: if *stage == Stage::Control {
                DataLink::WIRESHARK_UPPER_PDU
            } else if ethernet {
                DataLink::ETHERNET
            } else {
                DataLink::RAW
            },
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(format!("{host}/{}", stage.name()).into()),
                InterfaceDescriptionOption::IfDescription(
                    format!("tunscope stage {} on {host}", stage.name()).into(),
                ),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })?;
        ifaces.insert(*stage, id);
    }
    let mut bytes = 0u64;
    let mut tcp_seq: HashMap<(SocketAddr, SocketAddr), u32> = HashMap::new();
    let mut buf = Vec::with_capacity(2048);
    while let Ok(rec) = rx.recv() {
        if bytes >= max {
            tap.full.store(true, Ordering::Relaxed);
            continue;
        }
        let Some(&iface) = ifaces.get(&rec.stage) else {
            continue;
        };
        buf.clear();
        let data: &[u8] = match rec.wire {
            None if rec.stage == Stage::Control => {
                text_pdu(&rec.data, &mut buf);
                &buf
            }
            None => &rec.data,
            Some(wire) => {
                encapsulate(&wire, &rec.data, &mut tcp_seq, &mut buf);
                if ethernet {
                    let h = crate::datapath::ethernet::header_for_ip(&buf);
                    buf.splice(0..0, h);
                }
                &buf
            }
        };
        let mut options = vec![EnhancedPacketOption::Comment(rec.meta.comment().into())];
        if let Some(out) = rec.meta.outgoing {
            // epb_flags direction: 1 inbound, 2 outbound.
            options.push(EnhancedPacketOption::Flags(if out { 2 } else { 1 }));
        }
        let n = w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: iface,
            timestamp: clock.at(rec.at),
            original_len: data.len() as u32,
            data: std::borrow::Cow::Borrowed(data),
            options,
        })?;
        bytes += n as u64;
        tap.written.fetch_add(1, Ordering::Relaxed);
    }
    w.into_inner()
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(())
}

/// An exported-PDU header naming Wireshark's text dissector, then the text.
fn text_pdu(text: &[u8], out: &mut Vec<u8>) {
    const DISSECTOR: &[u8] = b"data-text-lines";
    // Tag 12 (dissector name), value padded to 4 bytes; tag 0 ends the header.
    let padded = DISSECTOR.len().div_ceil(4) * 4;
    out.extend_from_slice(&12u16.to_be_bytes());
    out.extend_from_slice(&(padded as u16).to_be_bytes());
    out.extend_from_slice(DISSECTOR);
    out.resize(out.len() + padded - DISSECTOR.len(), 0);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(text);
}

/// A tap record for a plaintext control message.
pub fn control_record(
    tap: &Tap,
    peer: Option<u32>,
    m: &tunscope_proto::control::ControlMessage,
) -> TapRecord {
    TapRecord {
        stage: Stage::Control,
        at: Instant::now(),
        data: m.text.as_bytes().to_vec(),
        wire: None,
        meta: TapMeta {
            trace: tap.trace_id(),
            peer,
            key_id: Some(m.key_id),
            outgoing: Some(m.outgoing),
            ..TapMeta::default()
        },
    }
}

/// Puts an OpenVPN packet inside the IP and UDP/TCP headers it travels in.
fn encapsulate(
    wire: &Wire,
    payload: &[u8],
    tcp_seq: &mut HashMap<(SocketAddr, SocketAddr), u32>,
    out: &mut Vec<u8>,
) {
    use etherparse::PacketBuilder;
    let (sp, dp) = (wire.src.port(), wire.dst.port());
    let ip = match (wire.src, wire.dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            PacketBuilder::ipv4(s.ip().octets(), d.ip().octets(), 64)
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V6(a) => a.ip().octets(),
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
            };
            PacketBuilder::ipv6(v6(s), v6(d), 64)
        }
    };
    let r = if wire.tcp {
        let mut framed = Vec::with_capacity(payload.len() + 2);
        framed.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        framed.extend_from_slice(payload);
        let seq = tcp_seq.entry((wire.src, wire.dst)).or_insert(1);
        let this = *seq;
        *seq = seq.wrapping_add(framed.len() as u32);
        let ack = *tcp_seq.entry((wire.dst, wire.src)).or_insert(1);
        ip.tcp(sp, dp, this, 65535)
            .psh()
            .ack(ack)
            .write(out, &framed)
    } else {
        ip.udp(sp, dp).write(out, payload)
    };
    if r.is_err() {
        // Oversized for an IP packet; keep the bare payload rather than nothing.
        out.clear();
        out.extend_from_slice(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_format() {
        let m = TapMeta {
            trace: 7,
            peer: Some(0),
            key_id: Some(1),
            packet_id: Some(42),
            stage_ns: 1500,
            drop: Some(DropReason::Replay),
            outgoing: None,
        };
        assert_eq!(
            m.comment(),
            "tunscope trace=7 peer=0 key=1 pid=42 stage_ns=1500 drop=replay"
        );
    }

    #[test]
    fn data_ids_from_header() {
        let mut p = vec![0x49, 0, 0, 5, 0, 0, 0, 9];
        p.extend_from_slice(&[0; 20]);
        assert_eq!(data_ids(&p), Some((Some(5), 1, 9)));
        assert_eq!(data_ids(&[0x31, 0, 0, 0, 3, 1]), Some((None, 1, 3)));
        assert_eq!(data_ids(&[0x49, 0]), None);
    }
}
