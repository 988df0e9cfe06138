//! pcapng: sections in either byte order, interfaces with any `if_tsresol` and `if_tsoffset`,
//! Enhanced, Simple and the obsolete Packet Block (type 2), options with or without an end
//! marker, unknown blocks and options skipped.
//!
//! Blocks carry their own length, so one damaged packet block is skipped (and counted) and
//! reading goes on with the next; only a damaged block *frame* (a length that cannot be, or
//! leading and trailing lengths that differ) ends the read, because after it no block
//! boundary can be trusted.

use super::source::{Fill, Source};
use super::{Iface, LinkType, ReadReport, Record, escape_control, rd16, rd32, rd64};

const SHB: u32 = 0x0A0D_0D0A;
const BOM: u32 = 0x1A2B_3C4D;
/// Wireshark's largest block (`MAX_BLOCK_SIZE`: the largest packet plus headers).
const MAX_BLOCK: u32 = (128 << 20) + (128 << 10);

/// An interface of the current section.
struct SectionIface {
    /// Index into the reader's interface list (interfaces of all sections).
    global: usize,
    /// Timestamp ticks per second (`if_tsresol`).
    per_sec: u64,
    /// `if_tsoffset`: seconds added to every timestamp.
    offset_s: i64,
    snaplen: u32,
}

pub(crate) struct Pcapng {
    src: Source,
    big_endian: bool,
    section: Vec<SectionIface>,
    sections: u32,
    blocks: u64,
    /// Timestamp of the last record (for Simple Packet Blocks, which have none).
    last_ts: u64,
    /// The block being read (reused).
    body: Vec<u8>,
}

/// Ticks per second for an `if_tsresol` value (0x80 bit: power of two, else of ten).
fn tsresol_per_sec(res: u8) -> u64 {
    if res & 0x80 == 0 {
        10u64.checked_pow(u32::from(res)).unwrap_or(u64::MAX)
    } else {
        1u64.checked_shl(u32::from(res & 0x7f)).unwrap_or(u64::MAX)
    }
}

/// The options of a block: (code, value) until the end marker or the end of the bytes.
/// An option running past the block ends the list (noted).
fn options<'a>(b: &'a [u8], be: bool, report: &mut ReadReport) -> Vec<(u16, &'a [u8])> {
    let mut out = vec![];
    let mut at = 0;
    while at + 4 <= b.len() {
        let (Some(code), Some(len)) = (rd16(b, at, be), rd16(b, at + 2, be)) else {
            break;
        };
        if code == 0 {
            break;
        }
        let len = usize::from(len);
        let Some(v) = b.get(at + 4..at + 4 + len) else {
            report.note("option longer than the rest of its block (rest of the options ignored)");
            break;
        };
        out.push((code, v));
        at += 4 + len.next_multiple_of(4);
    }
    out
}

fn text(v: &[u8]) -> String {
    // Strings are UTF-8, not NUL-terminated, but some writers add a NUL anyway.
    let v = v.split(|&c| c == 0).next().unwrap_or_default();
    escape_control(&String::from_utf8_lossy(v))
}

/// Why a section header cannot be read.
fn shb_version_ok(major: u16, minor: u16) -> bool {
    // 1.0 is the format; 1.2 was written by early implementations and is read as 1.0
    // (Wireshark and libpcap do the same). libpcap's rejection tests use 0.1 and 1.1.
    major == 1 && (minor == 0 || minor == 2)
}

impl Pcapng {
    /// Reads the first section header. `Err` is the reason the file cannot be read at all.
    pub fn open(src: Source, report: &mut ReadReport) -> Result<Pcapng, String> {
        let mut r = Pcapng {
            src,
            big_endian: false,
            section: vec![],
            sections: 0,
            blocks: 0,
            last_ts: 0,
            body: Vec::new(),
        };
        let mut hdr = [0u8; 8];
        if r.src.fill(&mut hdr).map_err(|e| e.to_string())? != Fill::Full {
            return Err("pcapng section header cut short".into());
        }
        r.section_header(&hdr, report)?;
        report.format = format!(
            "pcapng, {}-endian",
            if r.big_endian { "big" } else { "little" }
        );
        Ok(r)
    }

    /// Reads the rest of a Section Header Block whose first 8 bytes are `hdr`.
    fn section_header(&mut self, hdr: &[u8; 8], report: &mut ReadReport) -> Result<(), String> {
        let mut bom = [0u8; 4];
        if self.src.fill(&mut bom).map_err(|e| e.to_string())? != Fill::Full {
            return Err("section header cut short".into());
        }
        let be = match u32::from_be_bytes(bom) {
            BOM => true,
            x if x.swap_bytes() == BOM => false,
            _ => {
                return Err(format!(
                    "section header without byte-order magic ({bom:02x?})"
                ));
            }
        };
        let total = rd32(hdr, 4, be).unwrap_or(0);
        if total < 28 || !total.is_multiple_of(4) || total > MAX_BLOCK {
            return Err(format!("section header length {total} is impossible"));
        }
        let mut body = Vec::new();
        if self
            .src
            .fill_vec(&mut body, total as usize - 16)
            .map_err(|e| e.to_string())?
            != Fill::Full
        {
            return Err("section header cut short".into());
        }
        let (major, minor) = (
            rd16(&body, 0, be).unwrap_or(0),
            rd16(&body, 2, be).unwrap_or(0),
        );
        if !shb_version_ok(major, minor) {
            return Err(format!(
                "pcapng version {major}.{minor} is not supported (only 1.0)"
            ));
        }
        self.trailer(total, total, be)?;
        // Section-wide options (shb_hardware, shb_os, …) say nothing about packets, but an
        // option that cannot be is damage, as Wireshark treats it.
        if let Some(opts) = body.get(12..) {
            let mut at = 0;
            while at + 4 <= opts.len() {
                let code = rd16(opts, at, be).unwrap_or(0);
                let len = usize::from(rd16(opts, at + 2, be).unwrap_or(0));
                if code == 0 {
                    break;
                }
                if at + 4 + len > opts.len() {
                    return Err(format!(
                        "section header option {code} of length {len} runs past the block"
                    ));
                }
                at += 4 + len.next_multiple_of(4);
            }
        }
        self.big_endian = be;
        self.section.clear();
        self.sections += 1;
        self.blocks += 1;
        if self.sections > 1 {
            report.note("more than one section (interfaces numbered across sections)");
        }
        Ok(())
    }

    /// Reads and checks a block's trailing length (the declared or the padded length).
    fn trailer(&mut self, total: u32, declared: u32, be: bool) -> Result<(), String> {
        let mut t = [0u8; 4];
        if self.src.fill(&mut t).map_err(|e| e.to_string())? != Fill::Full {
            return Err("block trailer cut short".into());
        }
        let trailing = rd32(&t, 0, be).unwrap_or(0);
        if trailing != total && trailing != declared {
            return Err(format!(
                "block lengths differ (leading {declared}, trailing {trailing})"
            ));
        }
        Ok(())
    }

    /// Reads the next record into `rec` (its buffer reused); `false` at the end or where the
    /// file is damaged (said in `report`).
    pub fn next(
        &mut self,
        rec: &mut Record,
        ifaces: &mut Vec<Iface>,
        report: &mut ReadReport,
    ) -> bool {
        loop {
            let at = self.src.offset;
            let mut hdr = [0u8; 8];
            match self.src.fill(&mut hdr) {
                Ok(Fill::Full) => {}
                Ok(Fill::Eof) => return false,
                Ok(Fill::Short(n)) => {
                    report.truncated = Some(format!(
                        "block at byte {at}: header cut short ({n} of 8 bytes)"
                    ));
                    return false;
                }
                Err(e) => {
                    report.stopped = Some(format!("byte {at}: {e}"));
                    return false;
                }
            }
            let be = self.big_endian;
            let btype = rd32(&hdr, 0, be).unwrap_or(0);
            if btype == SHB {
                if let Err(e) = self.section_header(&hdr, report) {
                    report.stopped =
                        Some(format!("section {} at byte {at}: {e}", self.sections + 1));
                    return false;
                }
                continue;
            }
            let declared = rd32(&hdr, 4, be).unwrap_or(0);
            // Early pcapng writers (the .ntar era) declared the unpadded length; the block
            // still ends on a 4-byte boundary, and its trailer repeats the declared value.
            let total = declared.next_multiple_of(4);
            if total != declared {
                report.note("block length not a multiple of 4 (padded to one, as written)");
            }
            if !(12..=MAX_BLOCK).contains(&total) {
                let rest = self.src.remaining();
                report.stopped = Some(format!(
                    "block of type 0x{btype:x} at byte {at}: length {total} is impossible \
                     (damaged file); {rest} byte(s) after it not read"
                ));
                return false;
            }
            // One block buffer for the whole file (an early return ends the read anyway).
            let mut body = std::mem::take(&mut self.body);
            match self.src.fill_vec(&mut body, total as usize - 12) {
                Ok(Fill::Full) => {}
                Ok(_) => {
                    let what = block_name(btype);
                    let msg = format!(
                        "{what} at byte {at}: {} of {} bytes present",
                        body.len() + 8,
                        total
                    );
                    if carries_packet(btype) {
                        report.truncated = Some(msg);
                    } else {
                        report.note("last block (not a packet) cut short");
                    }
                    return false;
                }
                Err(e) => {
                    report.stopped = Some(format!("block at byte {at}: {e}"));
                    return false;
                }
            }
            if let Err(e) = self.trailer(total, declared, be) {
                let rest = self.src.remaining();
                let what = block_name(btype);
                if e.contains("cut short") && carries_packet(btype) {
                    report.truncated = Some(format!("{what} at byte {at}: {e}"));
                } else {
                    report.stopped = Some(format!(
                        "{what} at byte {at}: {e} (damaged file); {rest} byte(s) after it not read"
                    ));
                }
                return false;
            }
            self.blocks += 1;
            let produced = match btype {
                1 => {
                    self.interface(&body, ifaces, report);
                    false
                }
                6 => self.enhanced(&body, rec, report),
                2 => self.obsolete_packet(&body, rec, report),
                3 => self.simple(&body, rec, report),
                // Name resolution, interface statistics, decryption secrets, custom blocks:
                // no packets in them.
                4 | 5 | 0x0A | 0x0BAD | 0x4000_0BAD => false,
                other => {
                    report.note(&format!(
                        "block of unknown type 0x{other:x} skipped (not a packet block)"
                    ));
                    false
                }
            };
            self.body = body;
            if produced {
                return true;
            }
        }
    }

    fn interface(&mut self, b: &[u8], ifaces: &mut Vec<Iface>, report: &mut ReadReport) {
        let be = self.big_endian;
        let (Some(link), Some(snaplen)) = (rd16(b, 0, be), rd32(b, 4, be)) else {
            report.skip("Interface Description Block shorter than 8 bytes");
            return;
        };
        let mut name = None;
        let mut per_sec = 1_000_000;
        let mut offset_s = 0i64;
        for (code, v) in options(b.get(8..).unwrap_or_default(), be, report) {
            match code {
                2 => name = Some(text(v)),
                9 => match v.first() {
                    Some(&r) => per_sec = tsresol_per_sec(r),
                    None => report.note("empty if_tsresol option ignored"),
                },
                14 => match rd64(v, 0, be) {
                    Some(o) => offset_s = o as i64,
                    None => report.note("short if_tsoffset option ignored"),
                },
                _ => {}
            }
        }
        let global = ifaces.len();
        ifaces.push(Iface {
            name: name.unwrap_or_else(|| format!("if{global}")),
            link: LinkType::from_u32(u32::from(link)),
            snaplen,
        });
        self.section.push(SectionIface {
            global,
            per_sec,
            offset_s,
            snaplen,
        });
    }

    fn time(&self, iface: &SectionIface, hi: u32, lo: u32) -> u64 {
        let ticks = (u128::from(hi) << 32) | u128::from(lo);
        let ns = ticks * 1_000_000_000 / u128::from(iface.per_sec.max(1));
        let ns = ns as i128 + i128::from(iface.offset_s) * 1_000_000_000;
        ns.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// Enhanced Packet Block (6) and the obsolete Packet Block (2) share a layout after
    /// the interface field.
    fn packet(
        &mut self,
        what: &str,
        iface: u32,
        rest: &[u8],
        rec: &mut Record,
        report: &mut ReadReport,
    ) -> bool {
        let be = self.big_endian;
        let Some(sec) = self.section.get(iface as usize) else {
            report.skip(&format!(
                "{what} refers to an interface not described before it"
            ));
            return false;
        };
        let (Some(hi), Some(lo), Some(caplen), Some(orig)) = (
            rd32(rest, 0, be),
            rd32(rest, 4, be),
            rd32(rest, 8, be),
            rd32(rest, 12, be),
        ) else {
            report.skip(&format!("{what} too short for its fields"));
            return false;
        };
        let data_end = 16usize.saturating_add(caplen as usize);
        let Some(data) = rest.get(16..data_end) else {
            report.skip(&format!("{what} captured length beyond its block"));
            return false;
        };
        let ts_ns = self.time(sec, hi, lo);
        let global = sec.global;
        let mut comment = None;
        let mut outgoing = None;
        let opts_at = 16 + (caplen as usize).next_multiple_of(4);
        for (code, v) in options(rest.get(opts_at..).unwrap_or_default(), be, report) {
            match code {
                1 => comment = Some(String::from_utf8_lossy(v).into_owned()),
                2 => {
                    // epb_flags is 32 bits; the obsolete block's pack_flags the same.
                    if let Some(f) = rd32(v, 0, be) {
                        outgoing = match f & 3 {
                            1 => Some(false),
                            2 => Some(true),
                            _ => None,
                        };
                    }
                }
                _ => {}
            }
        }
        if orig < caplen {
            report.note("original length below captured length (read as captured)");
        }
        self.last_ts = ts_ns;
        report.records += 1;
        rec.iface = global;
        rec.ts_ns = ts_ns;
        rec.data.clear();
        rec.data.extend_from_slice(data);
        rec.orig_len = orig;
        rec.comment = comment;
        rec.outgoing = outgoing;
        true
    }

    fn enhanced(&mut self, b: &[u8], rec: &mut Record, report: &mut ReadReport) -> bool {
        let Some(iface) = rd32(b, 0, self.big_endian) else {
            report.skip("Enhanced Packet Block too short for its fields");
            return false;
        };
        self.packet("Enhanced Packet Block", iface, &b[4..], rec, report)
    }

    fn obsolete_packet(&mut self, b: &[u8], rec: &mut Record, report: &mut ReadReport) -> bool {
        let Some(iface) = rd16(b, 0, self.big_endian) else {
            report.skip("Packet Block too short for its fields");
            return false;
        };
        report.note("obsolete Packet Block (type 2) read");
        // Interface (16 bits) and drops count (16 bits), then as an Enhanced Packet Block.
        self.packet(
            "Packet Block",
            u32::from(iface),
            b.get(4..).unwrap_or_default(),
            rec,
            report,
        )
    }

    fn simple(&mut self, b: &[u8], rec: &mut Record, report: &mut ReadReport) -> bool {
        let Some(sec) = self.section.first() else {
            report.skip("Simple Packet Block before any interface");
            return false;
        };
        let Some(orig) = rd32(b, 0, self.big_endian) else {
            report.skip("Simple Packet Block too short for its fields");
            return false;
        };
        let room = b.len() - 4;
        let mut caplen = (orig as usize).min(room);
        if sec.snaplen != 0 {
            caplen = caplen.min(sec.snaplen as usize);
        }
        report.note("Simple Packet Block without timestamp (time of the record before used)");
        report.records += 1;
        rec.iface = sec.global;
        rec.ts_ns = self.last_ts;
        rec.data.clear();
        rec.data.extend_from_slice(&b[4..4 + caplen]);
        rec.orig_len = orig;
        rec.comment = None;
        rec.outgoing = None;
        true
    }
}

fn carries_packet(btype: u32) -> bool {
    matches!(btype, 2 | 3 | 6)
}

fn block_name(btype: u32) -> String {
    match btype {
        1 => "Interface Description Block".into(),
        2 => "Packet Block".into(),
        3 => "Simple Packet Block".into(),
        4 => "Name Resolution Block".into(),
        5 => "Interface Statistics Block".into(),
        6 => "Enhanced Packet Block".into(),
        other => format!("block of type 0x{other:x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Reader;

    fn block(t: u32, body: &[u8]) -> Vec<u8> {
        let total = (12 + body.len()).next_multiple_of(4) as u32;
        let mut b = t.to_le_bytes().to_vec();
        b.extend_from_slice(&total.to_le_bytes());
        b.extend_from_slice(body);
        b.resize(total as usize - 4, 0);
        b.extend_from_slice(&total.to_le_bytes());
        b
    }

    fn epb(iface: u32, ts: u64, caplen: u32, data: &[u8], opts: &[u8]) -> Vec<u8> {
        let mut b = iface.to_le_bytes().to_vec();
        b.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        b.extend_from_slice(&(ts as u32).to_le_bytes());
        b.extend_from_slice(&caplen.to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
        b.resize(b.len().next_multiple_of(4), 0);
        b.extend_from_slice(opts);
        block(6, &b)
    }

    #[test]
    fn damaged_packet_blocks_are_skipped_and_counted_the_rest_read() {
        let mut f = block(
            0x0A0D_0D0A,
            &[
                0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        );
        // Interface: raw IP, ns resolution, offset 10 s; options without an end marker.
        let mut idb = vec![101, 0, 0, 0, 0, 0, 0, 0];
        idb.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0]);
        idb.extend_from_slice(&[14, 0, 8, 0, 10, 0, 0, 0, 0, 0, 0, 0]);
        idb.extend_from_slice(&[2, 0, 4, 0, b't', b'u', b'n', b'\n']);
        f.extend(block(1, &idb));
        f.extend(epb(0, 5, 4, b"abcd", &[1, 0, 2, 0, b'h', b'i', 0, 0]));
        // Captured length beyond the block: skipped, reading goes on.
        f.extend(epb(0, 6, 400, b"efgh", &[]));
        // An interface never described: skipped.
        f.extend(epb(7, 7, 4, b"ijkl", &[]));
        // Obsolete Packet Block (interface 0, drops 0).
        let mut pb = vec![0, 0, 0, 0];
        pb.extend_from_slice(&epb(0, 8, 2, b"mn", &[])[12..32]);
        pb.extend_from_slice(b"mn\0\0");
        f.extend(block(2, &pb));
        // Simple Packet Block: no timestamp.
        f.extend(block(3, &[3, 0, 0, 0, b'o', b'p', b'q']));
        let mut r = Reader::new("t", Box::new(std::io::Cursor::new(f))).unwrap();
        let recs: Vec<_> = std::iter::from_fn(|| r.next_record()).collect();
        let rep = r.report();
        assert_eq!(
            recs.iter().map(|r| r.data.as_slice()).collect::<Vec<_>>(),
            [&b"abcd"[..], b"mn", b"opq"]
        );
        assert_eq!(recs[0].ts_ns, 10_000_000_005);
        assert_eq!(recs[0].comment.as_deref(), Some("hi"));
        assert_eq!(recs[2].ts_ns, recs[1].ts_ns, "SPB takes the time before it");
        assert_eq!(r.ifaces()[0].name, "tun\\n");
        assert_eq!(rep.records, 3);
        assert_eq!(rep.lost(), 2);
        assert!(rep.skipped.keys().any(|k| k.contains("beyond its block")));
        assert!(rep.skipped.keys().any(|k| k.contains("not described")));
        assert!(rep.truncated.is_none() && rep.stopped.is_none());
    }
}
