//! Reading capture files: pcap (µs or ns) and pcapng (any number of interfaces, any
//! `if_tsresol`), from tcpdump, Wireshark, the harness or an engine's stage taps.

use std::path::Path;
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use serde::Serialize;

/// The link layer a packet starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum LinkType {
    /// Ethernet II.
    Ethernet,
    /// Raw IPv4/IPv6 (tun devices, engine stage taps).
    Raw,
    /// Linux cooked capture v1 (`tcpdump -i any`).
    LinuxSll,
    /// Linux cooked capture v2.
    LinuxSll2,
    /// BSD loopback (4-byte address family, host order).
    Null,
    /// OpenBSD loopback (4-byte address family, network order).
    Loop,
    /// Wireshark exported PDU (engine control taps: plaintext control messages).
    UpperPdu,
    /// Anything else (kept, not decoded).
    Other(u32),
}

impl LinkType {
    /// From a pcap/pcapng data link.
    pub fn from_datalink(d: DataLink) -> LinkType {
        match d {
            DataLink::ETHERNET => LinkType::Ethernet,
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => LinkType::Raw,
            DataLink::LINUX_SLL => LinkType::LinuxSll,
            DataLink::LINUX_SLL2 => LinkType::LinuxSll2,
            DataLink::NULL => LinkType::Null,
            DataLink::LOOP => LinkType::Loop,
            DataLink::WIRESHARK_UPPER_PDU => LinkType::UpperPdu,
            other => LinkType::Other(u32::from(other)),
        }
    }

    /// To a pcap/pcapng data link.
    pub fn datalink(self) -> DataLink {
        match self {
            LinkType::Ethernet => DataLink::ETHERNET,
            LinkType::Raw => DataLink::RAW,
            LinkType::LinuxSll => DataLink::LINUX_SLL,
            LinkType::LinuxSll2 => DataLink::LINUX_SLL2,
            LinkType::Null => DataLink::NULL,
            LinkType::Loop => DataLink::LOOP,
            LinkType::UpperPdu => DataLink::WIRESHARK_UPPER_PDU,
            LinkType::Other(n) => DataLink::from(n),
        }
    }
}

/// One interface of a capture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Iface {
    /// Its name (`client/eth0`, `server/decrypt`); `capture` for a plain pcap.
    pub name: String,
    /// Link layer.
    pub link: LinkType,
}

/// One packet record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Index into [`Capture::ifaces`].
    pub iface: usize,
    /// Wall-clock timestamp, ns since the epoch.
    pub ts_ns: u64,
    /// Captured bytes.
    pub data: Vec<u8>,
    /// Length on the wire.
    pub orig_len: u32,
    /// Packet comment (engine taps: trace id, stage time …).
    pub comment: Option<String>,
    /// Direction, when the file records it (pcapng `epb_flags`).
    pub outgoing: Option<bool>,
}

/// A whole capture file in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// Interfaces.
    pub ifaces: Vec<Iface>,
    /// Packets in file order.
    pub records: Vec<Record>,
}

/// A capture that cannot be read, with the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening failed.
    #[error("cannot open {path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        reason: std::io::Error,
    },
    /// Not a pcap or pcapng file.
    #[error("{path} is not a pcap or pcapng file ({reason})")]
    Format {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A record refers to an interface the file never described.
    #[error("{path}: packet {index} refers to interface {iface}, which is not described")]
    Interface {
        /// The file.
        path: String,
        /// 1-based packet number.
        index: usize,
        /// The interface id.
        iface: u32,
    },
}

/// Ticks per second for an `if_tsresol` value.
fn tsresol_per_sec(res: u8) -> u64 {
    if res & 0x80 == 0 {
        10u64.saturating_pow(u32::from(res))
    } else {
        1u64.checked_shl(u32::from(res & 0x7f)).unwrap_or(u64::MAX)
    }
}

/// Reads a pcap or pcapng file. A file cut short (a crashed writer) yields the complete
/// records before the cut.
pub fn read(path: &Path) -> Result<Capture, ReadError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|reason| ReadError::Open {
        path: p.clone(),
        reason,
    })?;
    let magic = bytes.get(..4).unwrap_or_default();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        read_pcapng(&p, &bytes)
    } else {
        read_pcap(&p, &bytes)
    }
}

fn read_pcap(path: &str, bytes: &[u8]) -> Result<Capture, ReadError> {
    const MAGICS: [[u8; 4]; 4] = [
        [0xd4, 0xc3, 0xb2, 0xa1],
        [0xa1, 0xb2, 0xc3, 0xd4],
        [0x4d, 0x3c, 0xb2, 0xa1],
        [0xa1, 0xb2, 0x3c, 0x4d],
    ];
    let magic = bytes.get(..4).unwrap_or_default();
    if !MAGICS.iter().any(|m| m == magic) {
        return Err(ReadError::Format {
            path: path.to_owned(),
            reason: if bytes.len() < 4 {
                "file too short".to_owned()
            } else {
                format!("unknown magic number {magic:02x?}")
            },
        });
    }
    let mut r = PcapReader::new(bytes).map_err(|e| ReadError::Format {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let link = LinkType::from_datalink(r.header().datalink);
    let mut cap = Capture {
        ifaces: vec![Iface {
            name: "capture".into(),
            link,
        }],
        records: vec![],
    };
    while let Some(pkt) = r.next_packet() {
        let Ok(pkt) = pkt else { break };
        cap.records.push(Record {
            iface: 0,
            ts_ns: pkt.timestamp.as_nanos() as u64,
            data: pkt.data.into_owned(),
            orig_len: pkt.orig_len,
            comment: None,
            outgoing: None,
        });
    }
    Ok(cap)
}

fn read_pcapng(path: &str, bytes: &[u8]) -> Result<Capture, ReadError> {
    let mut r = PcapNgReader::new(bytes).map_err(|e| ReadError::Format {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut cap = Capture::default();
    // ns per tick for each interface.
    let mut scale: Vec<u64> = vec![];
    while let Some(block) = r.next_block() {
        let Ok(block) = block else { break };
        match block {
            Block::InterfaceDescription(idb) => {
                let mut name = format!("if{}", cap.ifaces.len());
                let mut per_sec = 1_000_000u64;
                for o in &idb.options {
                    match o {
                        InterfaceDescriptionOption::IfName(n) => name = n.to_string(),
                        InterfaceDescriptionOption::IfTsResol(res) => {
                            per_sec = tsresol_per_sec(*res);
                        }
                        _ => {}
                    }
                }
                scale.push((1_000_000_000 / per_sec.max(1)).max(1));
                cap.ifaces.push(Iface {
                    name,
                    link: LinkType::from_datalink(idb.linktype),
                });
            }
            Block::EnhancedPacket(epb) => {
                let Some(&ns_per_tick) = scale.get(epb.interface_id as usize) else {
                    return Err(ReadError::Interface {
                        path: path.to_owned(),
                        index: cap.records.len() + 1,
                        iface: epb.interface_id,
                    });
                };
                // pcap-file hands back the raw tick count as nanoseconds.
                let ticks = epb.timestamp.as_nanos() as u64;
                let mut comment = None;
                let mut outgoing = None;
                for o in &epb.options {
                    match o {
                        EnhancedPacketOption::Comment(c) => comment = Some(c.to_string()),
                        EnhancedPacketOption::Flags(f) => {
                            outgoing = match f & 3 {
                                1 => Some(false),
                                2 => Some(true),
                                _ => None,
                            };
                        }
                        _ => {}
                    }
                }
                cap.records.push(Record {
                    iface: epb.interface_id as usize,
                    ts_ns: ticks.saturating_mul(ns_per_tick),
                    data: epb.data.into_owned(),
                    orig_len: epb.original_len,
                    comment,
                    outgoing,
                });
            }
            Block::SimplePacket(spb) => {
                if cap.ifaces.is_empty() {
                    continue;
                }
                cap.records.push(Record {
                    iface: 0,
                    ts_ns: 0,
                    data: spb.data.into_owned(),
                    orig_len: spb.original_len,
                    comment: None,
                    outgoing: None,
                });
            }
            _ => {}
        }
    }
    Ok(cap)
}

/// Writes a capture as pcapng (nanosecond timestamps, names, comments, directions).
pub fn write_pcapng(path: &Path, cap: &Capture) -> anyhow::Result<()> {
    use anyhow::Context;
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use std::borrow::Cow;
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = PcapNgWriter::new(std::io::BufWriter::new(file))?;
    for i in &cap.ifaces {
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: i.link.datalink(),
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed(i.name.as_str())),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })?;
    }
    for r in &cap.records {
        let mut options = vec![];
        if let Some(c) = &r.comment {
            options.push(EnhancedPacketOption::Comment(Cow::Borrowed(c.as_str())));
        }
        if let Some(out) = r.outgoing {
            options.push(EnhancedPacketOption::Flags(if out { 2 } else { 1 }));
        }
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: r.iface as u32,
            timestamp: Duration::from_nanos(r.ts_ns),
            original_len: r.orig_len,
            data: Cow::Borrowed(&r.data),
            options,
        })?;
    }
    w.into_inner()
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(())
}
