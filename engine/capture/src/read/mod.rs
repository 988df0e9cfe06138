//! Reading capture files the way libpcap and Wireshark read them, streaming.
//!
//! [`Reader`] yields one [`Record`] at a time (memory bounded by the largest record, not the
//! file) from classic pcap (both byte orders, µs and ns, the "modified" variant) or pcapng
//! (all sections, interfaces and packet block types), optionally gzip-compressed. Whatever it
//! could not read is counted in its [`ReadReport`]: records skipped by reason, a last record
//! cut short, or the damaged spot where reading had to stop. Nothing is dropped silently.
//!
//! Our own parser rather than a crate: pcap-file (kept for writing) refuses records libpcap
//! and Wireshark accept (`orig_len > snaplen`, options without an end marker, …) and ends the
//! read at the first one; what each oddity means is a decision this module writes down.

mod pcap;
mod pcapng;
mod source;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use serde::Serialize;

pub use crate::file::{Iface, LinkType, Record};
use source::Source;

/// Fixed-width integers of a header in the file's byte order (`None` past the end).
fn rd<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn rd16(b: &[u8], at: usize, be: bool) -> Option<u16> {
    rd(b, at).map(|x| {
        if be {
            u16::from_be_bytes(x)
        } else {
            u16::from_le_bytes(x)
        }
    })
}

fn rd32(b: &[u8], at: usize, be: bool) -> Option<u32> {
    rd(b, at).map(|x| {
        if be {
            u32::from_be_bytes(x)
        } else {
            u32::from_le_bytes(x)
        }
    })
}

fn rd64(b: &[u8], at: usize, be: bool) -> Option<u64> {
    rd(b, at).map(|x| {
        if be {
            u64::from_be_bytes(x)
        } else {
            u64::from_le_bytes(x)
        }
    })
}

/// What a read could not take, and oddities it read past.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReadReport {
    /// `pcap 2.4, µs, little-endian`, `pcapng, big-endian`, with `, gzip` when compressed.
    pub format: String,
    /// Records read.
    pub records: u64,
    /// Records (packet blocks) skipped while reading went on, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// The last record was cut short (a writer that did not finish, a cut file).
    pub truncated: Option<String>,
    /// Reading ended early at a damaged spot; what followed it is unread.
    pub stopped: Option<String>,
    /// Oddities read past without losing anything, by kind.
    pub notes: BTreeMap<String, u64>,
}

impl ReadReport {
    /// Every record of the file was read.
    pub fn complete(&self) -> bool {
        self.skipped.is_empty() && self.truncated.is_none() && self.stopped.is_none()
    }

    /// Records known to be lost (skipped plus a truncated last one; a stop loses an unknown
    /// number more).
    pub fn lost(&self) -> u64 {
        self.skipped.values().sum::<u64>() + u64::from(self.truncated.is_some())
    }

    pub(crate) fn skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_owned()).or_default() += 1;
    }

    pub(crate) fn note(&mut self, what: &str) {
        if let Some(n) = self.notes.get_mut(what) {
            *n += 1;
        } else {
            self.notes.insert(what.to_owned(), 1);
        }
    }

    /// Lines for a person (stderr), empty when there is nothing to say. Notes are included
    /// only with `notes`.
    pub fn lines(&self, path: &str, notes: bool) -> Vec<String> {
        let mut out = vec![];
        for (why, n) in &self.skipped {
            out.push(format!("{path}: {n} record(s) skipped: {why}"));
        }
        if let Some(t) = &self.truncated {
            out.push(format!("{path}: last record cut short, not read: {t}"));
        }
        if let Some(s) = &self.stopped {
            out.push(format!("{path}: reading stopped early: {s}"));
        }
        if notes {
            for (what, n) in &self.notes {
                out.push(format!("{path}: note: {what} ({n}×)"));
            }
        }
        out
    }

    /// One line: `1234 records, complete` or what was lost.
    pub fn summary(&self) -> String {
        let mut s = format!("{} record(s) read ({})", self.records, self.format);
        if self.complete() {
            s.push_str(", complete");
        } else {
            let _ = write!(s, ", {} lost", self.lost());
            if self.stopped.is_some() {
                s.push_str(" and the rest after a damaged spot");
            }
        }
        s
    }
}

/// A capture that cannot be read at all, with the file and the reason.
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
    /// Another capture format (one Wireshark reads, so `editcap` converts it).
    #[error(
        "{path} is a {format} capture, not pcap or pcapng; convert it with \
         `editcap -F pcapng {path} OUT.pcapng`"
    )]
    OtherCapture {
        /// The file.
        path: String,
        /// The format found.
        format: &'static str,
    },
    /// Not a capture, or a pcap/pcapng file whose header cannot be read.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Capture formats other than pcap/pcapng, by magic.
fn other_capture(head: &[u8]) -> Option<&'static str> {
    const FORMATS: &[(&[u8], &str)] = &[
        (b"snoop\0\0\0", "Sun snoop"),
        (b"GMBU", "Microsoft Network Monitor 2.x"),
        (b"RTSS", "Microsoft Network Monitor 1.x"),
        (b"XCP\0", "NetXRay / Windows Sniffer"),
        (b"TRSNIFF data", "Network General Sniffer (DOS)"),
        (b"\x01\x02\x03\x04\x05\x06", "Novell LANalyzer"),
        (b"iptrace", "AIX iptrace"),
        (b"ObserverPktBuffe", "Network Instruments Observer"),
        (
            b"\x00\x00\x00\x00\x00\x00\x00\x01\x00\x0bBTSNOOP",
            "BTSnoop",
        ),
        (b"btsnoop\0", "BTSnoop"),
    ];
    FORMATS
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|(_, f)| *f)
}

/// What a file that is not a capture looks like, for the error message.
fn not_a_capture(head: &[u8]) -> String {
    const KINDS: &[(&[u8], &str)] = &[
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"\x89PNG", "a PNG image"),
        (b"PK\x03\x04", "a zip archive"),
        (
            b"\x28\xb5\x2f\xfd",
            "zstd-compressed (decompress it first: zstd -d)",
        ),
        (
            b"\x04\x22\x4d\x18",
            "LZ4-compressed (decompress it first: lz4 -d)",
        ),
        (b"BZh", "bzip2-compressed (decompress it first: bunzip2)"),
        (b"\xfd7zXZ", "xz-compressed (decompress it first: unxz)"),
        (
            b"\xff\xfe",
            "UTF-16 text (IBM iSeries traces are; `editcap -F pcapng` converts them)",
        ),
        (b"\x7fELF", "an ELF executable"),
    ];
    if head.is_empty() {
        return "empty file, not a capture".into();
    }
    if let Some((_, k)) = KINDS.iter().find(|(m, _)| head.starts_with(m)) {
        return format!("not a pcap or pcapng file: {k}");
    }
    if head
        .iter()
        .all(|&c| c == b'\n' || c == b'\r' || c == b'\t' || (0x20..0x7f).contains(&c))
    {
        return "not a pcap or pcapng file: text".into();
    }
    let shown: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!(
        "not a pcap or pcapng file (starts with {}, no magic number tunscope knows); if \
         Wireshark opens it, `editcap -F pcapng FILE OUT.pcapng` converts it",
        shown.join(" ")
    )
}

/// Escapes control characters (a name with a newline must not split an output line).
pub fn escape_control(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

enum Format {
    Pcap(pcap::Pcap),
    Pcapng(pcapng::Pcapng),
}

/// A streaming reader over one capture.
pub struct Reader {
    format: Format,
    ifaces: Vec<Iface>,
    report: ReadReport,
}

impl Reader {
    /// Opens a capture file (pcap or pcapng, gzip-compressed or not).
    pub fn open(path: &Path) -> Result<Reader, ReadError> {
        let p = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|reason| ReadError::Open {
            path: p.clone(),
            reason,
        })?;
        Reader::new(&p, Box::new(file))
    }

    /// Reads a capture from any byte stream; `name` is used in messages.
    pub fn new(name: &str, input: Box<dyn Read + Send>) -> Result<Reader, ReadError> {
        let fmt_err = |reason: String| ReadError::Format {
            path: name.to_owned(),
            reason,
        };
        let (mut src, gz) = Source::new(input).map_err(|e| fmt_err(e.to_string()))?;
        let head = src.peek(16).map_err(|e| fmt_err(e.to_string()))?.to_vec();
        let mut ifaces = vec![];
        let mut report = ReadReport::default();
        let format = if head.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
            Format::Pcapng(pcapng::Pcapng::open(src, &mut report).map_err(fmt_err)?)
        } else if head.len() >= 4 && pcap::magic(&head[..4]).is_some() {
            Format::Pcap(pcap::Pcap::open(src, &mut ifaces, &mut report).map_err(fmt_err)?)
        } else if let Some(format) = other_capture(&head) {
            return Err(ReadError::OtherCapture {
                path: name.to_owned(),
                format,
            });
        } else {
            return Err(fmt_err(not_a_capture(&head)));
        };
        if gz {
            report.format.push_str(", gzip");
        }
        Ok(Reader {
            format,
            ifaces,
            report,
        })
    }

    /// The next record, `None` at the end (see [`Reader::report`] for whether it was all).
    pub fn next_record(&mut self) -> Option<Record> {
        let mut rec = Record::default();
        self.read_into(&mut rec).then_some(rec)
    }

    /// Reads the next record into `rec`, reusing its buffer (no allocation per packet);
    /// `false` at the end.
    pub fn read_into(&mut self, rec: &mut Record) -> bool {
        match &mut self.format {
            Format::Pcap(p) => p.next(rec, &mut self.report),
            Format::Pcapng(p) => p.next(rec, &mut self.ifaces, &mut self.report),
        }
    }

    /// Interfaces described so far (pcapng describes them as the file goes).
    pub fn ifaces(&self) -> &[Iface] {
        &self.ifaces
    }

    /// What was read, skipped and lost so far.
    pub fn report(&self) -> &ReadReport {
        &self.report
    }
}

impl Iterator for Reader {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        self.next_record()
    }
}
