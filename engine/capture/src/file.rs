//! Captures as data: interfaces, records, a whole file in memory ([`read`]; streaming is
//! [`crate::read`]), and writing pcapng.

use std::path::Path;
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use serde::Serialize;

pub use crate::read::{ReadError, ReadReport, Reader};

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
    /// From a pcap/pcapng link-type number (tcpdump.org's LINKTYPE_ values).
    pub fn from_u32(n: u32) -> LinkType {
        match n {
            1 => LinkType::Ethernet,
            // LINKTYPE_RAW, and the pcap-only numbers 12/14 some systems write for it,
            // LINKTYPE_IPV4, LINKTYPE_IPV6.
            101 | 12 | 14 | 228 | 229 => LinkType::Raw,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            0 => LinkType::Null,
            108 => LinkType::Loop,
            252 => LinkType::UpperPdu,
            other => LinkType::Other(other),
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
    /// Snap length the file declares (0: none).
    pub snaplen: u32,
}

/// One packet record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    /// What reading the file could not take (empty for a capture built in memory).
    pub report: ReadReport,
}

/// Reads a whole capture into memory (pcap or pcapng, gzip or not). What could not be read
/// is in [`Capture::report`]; a file cut short yields the complete records before the cut.
/// Large files are better streamed with [`Reader`].
pub fn read(path: &Path) -> Result<Capture, ReadError> {
    let mut r = Reader::open(path)?;
    let mut records = vec![];
    while let Some(rec) = r.next_record() {
        records.push(rec);
    }
    Ok(Capture {
        ifaces: r.ifaces().to_vec(),
        records,
        report: r.report().clone(),
    })
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
