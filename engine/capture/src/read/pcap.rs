//! Classic pcap (libpcap's format): both byte orders, microsecond and nanosecond magic, and
//! the "modified" format of Alexey Kuznetsov's patched libpcap (24-byte record headers).
//!
//! Record rules follow libpcap and Wireshark, not the letter of the header: a captured length
//! above the header's snap length, an original length below the captured length and a
//! microsecond field of a second or more are all read as they are (short snap lengths and
//! odd writers produce them); only a captured length beyond what any reader accepts
//! (Wireshark's maximum for the link type) is damage, and reading stops there.

use super::source::{Fill, Source};
use super::{Iface, LinkType, ReadReport, Record, rd16, rd32};

/// Wireshark's largest captured length for a link type (`wtap_max_snaplen_for_encap`).
fn max_caplen(link: u32) -> u32 {
    match link {
        // D-Bus and USBPcap carry whole messages/transfers.
        231 | 249 => 128 << 20,
        // EBHSCR (automotive bus recorder).
        279 => 8 << 20,
        _ => 256 << 10,
    }
}

/// A classic pcap file after its header.
pub(crate) struct Pcap {
    src: Source,
    big_endian: bool,
    /// Fraction unit: ns per tick (1000 for µs files, 1 for ns files).
    ns_per_frac: u64,
    /// Record header length: 16, or 24 in the modified format.
    rec_hdr: usize,
    max_caplen: u32,
    index: u64,
}

/// What the 4-byte magic says, if it is classic pcap.
pub(crate) fn magic(m: &[u8]) -> Option<(bool, u64, usize)> {
    // (big-endian, ns per fraction unit, record header length)
    match m {
        [0xa1, 0xb2, 0xc3, 0xd4] => Some((true, 1000, 16)),
        [0xd4, 0xc3, 0xb2, 0xa1] => Some((false, 1000, 16)),
        [0xa1, 0xb2, 0x3c, 0x4d] => Some((true, 1, 16)),
        [0x4d, 0x3c, 0xb2, 0xa1] => Some((false, 1, 16)),
        [0xa1, 0xb2, 0xcd, 0x34] => Some((true, 1000, 24)),
        [0x34, 0xcd, 0xb2, 0xa1] => Some((false, 1000, 24)),
        _ => None,
    }
}

impl Pcap {
    /// Reads the 24-byte file header. `Err` is the reason the file cannot be read at all.
    pub fn open(
        mut src: Source,
        ifaces: &mut Vec<Iface>,
        report: &mut ReadReport,
    ) -> Result<Pcap, String> {
        let mut h = [0u8; 24];
        match src.fill(&mut h).map_err(|e| e.to_string())? {
            Fill::Full => {}
            _ => return Err("pcap file header cut short (under 24 bytes)".into()),
        }
        let Some((be, ns_per_frac, rec_hdr)) = magic(&h[..4]) else {
            return Err("not a pcap magic number".into());
        };
        let (major, minor) = (rd16(&h, 4, be).unwrap_or(0), rd16(&h, 6, be).unwrap_or(0));
        // Version 2.x is the only one ever written with these magics (libpcap and
        // Wireshark refuse the rest, e.g. libpcap's own test file with major version 1).
        if major != 2 {
            return Err(format!(
                "pcap version {major}.{minor} is not supported (only 2.x exists)"
            ));
        }
        let snaplen = rd32(&h, 16, be).unwrap_or(0);
        let linkfield = rd32(&h, 20, be).unwrap_or(0);
        // Bits 16..26 are reserved (zero); 26..32 carry the FCS length (pcap spec §4).
        if linkfield & 0x03ff_0000 != 0 {
            return Err(format!(
                "link-type field 0x{linkfield:08x} has reserved bits set (damaged header)"
            ));
        }
        let link = linkfield & 0xffff;
        ifaces.push(Iface {
            name: "capture".into(),
            link: LinkType::from_u32(link),
            snaplen,
        });
        report.format = format!(
            "pcap {major}.{minor}{}{}, {}-endian",
            if ns_per_frac == 1 { ", ns" } else { ", µs" },
            if rec_hdr == 24 {
                ", modified (Kuznetsov)"
            } else {
                ""
            },
            if be { "big" } else { "little" },
        );
        Ok(Pcap {
            src,
            big_endian: be,
            ns_per_frac,
            rec_hdr,
            max_caplen: max_caplen(link),
            index: 0,
        })
    }

    /// Reads the next record into `rec` (its buffer reused); `false` at the end or where the
    /// file is damaged (said in `report`).
    pub fn next(&mut self, rec: &mut Record, report: &mut ReadReport) -> bool {
        let be = self.big_endian;
        let mut h = [0u8; 24];
        let at = self.src.offset;
        let hdr = &mut h[..self.rec_hdr];
        match self.src.fill(hdr) {
            Ok(Fill::Full) => {}
            Ok(Fill::Eof) => return false,
            Ok(Fill::Short(n)) => {
                report.truncated = Some(format!(
                    "record {} at byte {at}: header cut short ({n} of {} bytes)",
                    self.index + 1,
                    self.rec_hdr
                ));
                return false;
            }
            Err(e) => {
                report.stopped = Some(format!("byte {at}: {e}"));
                return false;
            }
        }
        self.index += 1;
        let sec = u64::from(rd32(&h, 0, be).unwrap_or(0));
        let frac = u64::from(rd32(&h, 4, be).unwrap_or(0));
        let incl = rd32(&h, 8, be).unwrap_or(0);
        let orig = rd32(&h, 12, be).unwrap_or(0);
        if incl > self.max_caplen {
            let rest = self.src.remaining();
            report.stopped = Some(format!(
                "record {} at byte {at}: captured length {incl} exceeds the maximum {} for its \
                 link type (damaged file); {rest} byte(s) after it not read",
                self.index, self.max_caplen
            ));
            return false;
        }
        match self.src.fill_vec(&mut rec.data, incl as usize) {
            Ok(Fill::Full) => {}
            Ok(_) => {
                report.truncated = Some(format!(
                    "record {} at byte {at}: {} of {incl} captured bytes present",
                    self.index,
                    rec.data.len()
                ));
                return false;
            }
            Err(e) => {
                report.stopped = Some(format!("record {} at byte {at}: {e}", self.index));
                return false;
            }
        }
        if frac * self.ns_per_frac >= 1_000_000_000 {
            report.note("timestamp fraction of a second or more (carried into the seconds)");
        }
        if orig < incl {
            report.note("original length below captured length (read as captured)");
        }
        report.records += 1;
        rec.iface = 0;
        rec.ts_ns = sec
            .saturating_mul(1_000_000_000)
            .saturating_add(frac.saturating_mul(self.ns_per_frac));
        rec.orig_len = orig;
        rec.comment = None;
        rec.outgoing = None;
        true
    }
}
