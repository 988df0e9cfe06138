//! Real-world captures read as Wireshark reads them.
//!
//! The corpus is `../shared/fixtures/real-world-pcaps/` (2,047 files from tcpdump's,
//! libpcap's, Wireshark's, Zeek's, suricata's and others' test suites, many deliberately
//! malformed; `TUNSCOPE_PCAP_CORPUS` points elsewhere). Without it, the selection committed
//! in `tests/corpus/pcaps/` (the files that are damaged, cut, compressed, in other formats or
//! OpenVPN) is used. For every file:
//!
//! * Wireshark's count — `capinfos` (Wireshark's reader, one process for all files), and
//!   `tshark` for the files capinfos cannot finish — must equal ours, or we report the file
//!   as read in part (with the reason) or refuse it naming what it is;
//! * no silent loss: fewer records than Wireshark only with a loss reported;
//! * the bytes on the wire (sum of original lengths) agree where the link layer has no
//!   pseudo-header Wireshark strips;
//! * no panic and no hang (each file read under a deadline).
//!
//! Our verdicts are also a committed table (`tests/corpus/pcap-verdicts.tsv`); a change of
//! behaviour shows as a diff of it. `UPDATE_CORPUS=1` rewrites it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tunscope_capture::file::LinkType;
use tunscope_capture::read::{ReadError, Reader};

fn full_corpus() -> PathBuf {
    match std::env::var_os("TUNSCOPE_PCAP_CORPUS") {
        Some(p) => PathBuf::from(p),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/real-world-pcaps")
        }
    }
}

fn committed_selection() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/pcaps")
}

fn verdict_table() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/pcap-verdicts.tsv")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            p.is_file() && !n.ends_with(".md") && !n.ends_with(".tsv")
        })
        .collect();
    v.sort();
    v
}

/// What we made of a file.
#[derive(Debug)]
struct Ours {
    /// Records read, or the refusal.
    read: Result<u64, String>,
    /// A loss was reported (skipped, cut short, stopped).
    partial: Option<String>,
    /// Sum of original lengths.
    wire_bytes: u64,
    /// Every interface has a link layer without a pseudo-header.
    plain_links: bool,
    /// The refusal names another capture format or what the file is.
    named: bool,
}

impl Ours {
    fn verdict(&self) -> String {
        match (&self.read, &self.partial) {
            (Ok(n), None) => format!("read {n}"),
            (Ok(n), Some(why)) => format!("partial {n}: {why}"),
            (Err(e), _) => format!("refused: {e}"),
        }
    }
}

fn ours(path: &Path) -> Ours {
    let mut out = Ours {
        read: Ok(0),
        partial: None,
        wire_bytes: 0,
        plain_links: true,
        named: false,
    };
    let mut r = match Reader::open(path) {
        Ok(r) => r,
        Err(e) => {
            out.named = matches!(e, ReadError::OtherCapture { .. })
                || !e.to_string().contains("no magic number");
            // The file name is in the message already; the table keeps the reason.
            let msg = e.to_string();
            let name = path.display().to_string();
            out.read = Err(msg.replace(&name, "FILE"));
            return out;
        }
    };
    while let Some(rec) = r.next_record() {
        out.wire_bytes += u64::from(rec.orig_len);
    }
    let rep = r.report();
    out.plain_links = r.ifaces().iter().all(|i| {
        matches!(
            i.link,
            LinkType::Ethernet
                | LinkType::Raw
                | LinkType::LinuxSll
                | LinkType::LinuxSll2
                | LinkType::Null
                | LinkType::Loop
        )
    });
    out.read = Ok(rep.records);
    if !rep.complete() {
        let mut why: Vec<String> = rep
            .skipped
            .keys()
            .map(|k| format!("skipped: {k}"))
            .collect();
        if rep.truncated.is_some() {
            why.push("last record cut short".into());
        }
        if let Some(s) = &rep.stopped {
            // Offsets and lengths vary by file; the kind of damage is what the table keeps.
            let kind = s
                .split(": ")
                .nth(1)
                .unwrap_or(s)
                .split(" (")
                .next()
                .unwrap_or(s);
            let kind: String = kind
                .chars()
                .map(|c| if c.is_ascii_digit() { 'N' } else { c })
                .collect();
            why.push(format!("stopped: {kind}"));
        }
        out.partial = Some(why.join("; "));
    }
    out
}

/// Wireshark's view of a file: records it read, data bytes, and the error it ended with.
#[derive(Debug, Default)]
struct Wireshark {
    /// File type (`pcap`, `pcapng`, `snoop`, …) when capinfos read it.
    file_type: Option<String>,
    records: u64,
    data_bytes: Option<u64>,
    error: Option<String>,
}

fn capinfos(paths: &[PathBuf]) -> BTreeMap<String, Wireshark> {
    let mut out = BTreeMap::new();
    for chunk in paths.chunks(300) {
        let o = Command::new("capinfos")
            .args(["-T", "-r", "-t", "-c", "-d", "-M", "--"])
            .args(chunk)
            .output()
            .expect("capinfos runs (cargo xtask deps installs wireshark-common)");
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 4 {
                continue;
            }
            let name = Path::new(f[0])
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let (Ok(records), Ok(bytes)) = (f[2].parse(), f[3].parse()) else {
                continue;
            };
            out.insert(
                name,
                Wireshark {
                    file_type: Some(f[1].to_owned()),
                    records,
                    data_bytes: Some(bytes),
                    error: None,
                },
            );
        }
    }
    out
}

fn tshark(path: &Path) -> Wireshark {
    let o = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(path)
        .args(["-T", "fields", "-e", "frame.number"])
        .output()
        .expect("tshark runs");
    let err: String = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.contains("Running as user"))
        .collect::<Vec<_>>()
        .join(" ");
    Wireshark {
        file_type: None,
        records: String::from_utf8_lossy(&o.stdout).lines().count() as u64,
        data_bytes: None,
        error: (!err.trim().is_empty()).then_some(err),
    }
}

#[test]
fn every_record_wireshark_reads_is_read_or_its_loss_reported() {
    let full = full_corpus();
    let (dir, whole) = if full.is_dir() {
        (full, true)
    } else {
        eprintln!(
            "corpus not at {} (TUNSCOPE_PCAP_CORPUS): using the committed selection",
            full.display()
        );
        (committed_selection(), false)
    };
    let paths = files(&dir);
    if whole {
        assert!(
            paths.len() >= 2000,
            "the corpus has 2,047 captures, found {}",
            paths.len()
        );
    }
    // Ours, on a thread with a deadline: a hang is a failure, not a stuck test.
    let (tx, rx) = std::sync::mpsc::channel();
    let list = paths.clone();
    std::thread::spawn(move || {
        for p in list {
            let o = ours(&p);
            tx.send((p, o)).unwrap();
        }
    });
    let mut ours_by: BTreeMap<String, Ours> = BTreeMap::new();
    for _ in 0..paths.len() {
        let (p, o) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a capture took over 20 s to read (hang?)");
        ours_by.insert(p.file_name().unwrap().to_string_lossy().into_owned(), o);
    }
    let mut ws = capinfos(&paths);
    for p in &paths {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        ws.entry(name).or_insert_with(|| tshark(p));
    }

    let mut problems = vec![];
    let mut agree = 0;
    for (name, o) in &ours_by {
        let w = &ws[name];
        // Wireshark gives up on link types it does not know and on link-layer
        // pseudo-headers it cannot parse; the records are still there to read.
        let unsupported_link = w.error.as_deref().is_some_and(|e| {
            e.contains("network type") || e.contains("encapsulation") || e.contains("pseudo-header")
        });
        match &o.read {
            Ok(n) => {
                let damage = w.error.is_some() && !unsupported_link;
                if *n < w.records && o.partial.is_none() {
                    problems.push(format!(
                        "{name}: silent loss: {n} records, Wireshark {}",
                        w.records
                    ));
                } else if w.error.is_none() && *n != w.records {
                    problems.push(format!("{name}: {n} records, Wireshark {}", w.records));
                } else if damage && *n == w.records && o.partial.is_none() {
                    // Where Wireshark meets damage and we read the same, we must say so too
                    // (reading past it, as pcapng's block lengths allow, is better still).
                    problems.push(format!(
                        "{name}: Wireshark stops with an error ({}), we report nothing",
                        w.error.as_deref().unwrap_or_default()
                    ));
                } else if let Some(bytes) = w.data_bytes
                    && o.plain_links
                    && bytes != o.wire_bytes
                {
                    problems.push(format!(
                        "{name}: {} bytes on the wire, Wireshark {bytes}",
                        o.wire_bytes
                    ));
                } else {
                    agree += 1;
                }
            }
            Err(e) => {
                // Refusing is right for what Wireshark refuses too, and for other formats
                // named as such (Wireshark reads NetMon, snoop, … which we convert away from).
                // (Wireshark also reads NetMon, snoop, hcidump, …: we name them where they
                // have a magic number, and at least say they are not pcap/pcapng.)
                let other_format = w
                    .file_type
                    .as_deref()
                    .is_some_and(|t| !t.starts_with("pcap"));
                if w.records > 0 && !(o.named || other_format && e.contains("not a pcap or pcapng"))
                {
                    problems.push(format!(
                        "{name}: refused ({e}) but Wireshark reads {}",
                        w.records
                    ));
                }
            }
        }
    }
    eprintln!(
        "{} captures: {agree} read exactly as Wireshark reads them, {} refused, {} partial",
        ours_by.len(),
        ours_by.values().filter(|o| o.read.is_err()).count(),
        ours_by.values().filter(|o| o.partial.is_some()).count()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );

    // The committed table (for the whole corpus; the selection checks its own rows).
    let table: String = ours_by
        .iter()
        .map(|(n, o)| format!("{n}\t{}\n", o.verdict()))
        .collect();
    let header =
        "# file\ttunscope's verdict (engine/capture/tests/corpus.rs; UPDATE_CORPUS=1 rewrites)\n";
    if whole && std::env::var_os("UPDATE_CORPUS").is_some() {
        std::fs::write(verdict_table(), format!("{header}{table}")).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(verdict_table()).unwrap();
    let committed: BTreeMap<&str, &str> = committed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .collect();
    let mut changed = vec![];
    for line in table.lines() {
        let (n, v) = line.split_once('\t').unwrap();
        if committed.get(n) != Some(&v) {
            changed.push(format!(
                "{n}: now '{v}', table '{}'",
                committed.get(n).unwrap_or(&"-")
            ));
        }
    }
    assert!(
        changed.is_empty(),
        "{} verdict(s) differ from tests/corpus/pcap-verdicts.tsv (UPDATE_CORPUS=1 to accept):\n{}",
        changed.len(),
        changed.join("\n")
    );
}
