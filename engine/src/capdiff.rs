//! `tunscope diff` and `tunscope normalize`: the capture comparison of
//! [`tunscope_capture`] on the command line.
//!
//! Exit status of `diff`: 0 equivalent, 1 different, 2 error (unreadable file, bad option).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tunscope_capture::diff::{DiffOptions, diff};
use tunscope_capture::file::read;
use tunscope_capture::normalize::{Normalized, Rules, normalize_file};

/// Normalization and comparison settings from the command line.
#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    /// Fields to mask in addition to the defaults.
    pub mask: Vec<String>,
    /// Default-masked fields to compare anyway.
    pub unmask: Vec<String>,
    /// More service ports (kept literally, not `ephN`).
    pub service_ports: Vec<u16>,
    /// Every packet an event, counts compared exactly.
    pub exact: bool,
    /// Timing tolerance, ms.
    pub time_tolerance_ms: Option<f64>,
    /// Timing factor.
    pub time_factor: Option<f64>,
    /// Relative tolerance of bulk counts.
    pub count_tolerance: Option<f64>,
    /// Go on with what could be read when records were lost (reported all the same).
    pub allow_partial: bool,
    /// More ports whose payload is OpenVPN (UDP and TCP).
    pub openvpn_ports: Vec<u16>,
}

impl CompareOptions {
    /// The normalization rules.
    pub fn rules(&self) -> Result<Rules> {
        let mut r = Rules::default();
        for f in &self.unmask {
            r.unmask(f)?;
        }
        for f in &self.mask {
            r.mask(f)?;
        }
        r.service_ports.extend(&self.service_ports);
        r.service_ports.extend(&self.openvpn_ports);
        r.openvpn_ports.extend(&self.openvpn_ports);
        if self.exact {
            r.aggregate_bulk = false;
        }
        Ok(r)
    }

    fn diff_options(&self) -> DiffOptions {
        let mut d = DiffOptions::default();
        if self.exact {
            d.count_tolerance = Some(0.0);
        }
        if let Some(t) = self.time_tolerance_ms {
            d.time_tolerance_ms = t;
        }
        if let Some(f) = self.time_factor {
            d.time_factor = f;
        }
        if let Some(c) = self.count_tolerance {
            d.count_tolerance = Some(c);
        }
        d
    }
}

/// How a comparison ended, for the exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffOutcome {
    /// Equivalent (exit 0).
    Equivalent,
    /// Different (exit 1).
    Different,
    /// No verdict possible: nothing to compare, or records lost without `--allow-partial`
    /// (exit 2, like an unreadable file).
    NoVerdict,
}

/// Normalizes a capture as it is read and says on stderr what could not be read.
fn normalize_reported(path: &Path, rules: &Rules) -> Result<Normalized> {
    let n = normalize_file(path, rules)?;
    for line in n.read.lines(&path.display().to_string(), false) {
        eprintln!("{line}");
    }
    Ok(n)
}

/// `tunscope diff A B`: prints the report and says how it ended.
pub fn run_diff(
    a: &Path,
    b: &Path,
    opts: &CompareOptions,
    json: bool,
    write: Option<&PathBuf>,
) -> Result<DiffOutcome> {
    let rules = opts.rules()?;
    let na = normalize_reported(a, &rules)?;
    let nb = normalize_reported(b, &rules)?;
    let report = diff(
        &a.display().to_string(),
        &na,
        &b.display().to_string(),
        &nb,
        &opts.diff_options(),
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if let Some(out) = write {
        // Only this needs the packets themselves: read both again.
        let (ca, cb) = (read(a)?, read(b)?);
        let n = tunscope_capture::write::write_diff_pcapng(out, &ca, &cb, &report)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("{n} packets written to {}", out.display());
    }
    Ok(if report.nothing_compared() {
        eprintln!("tunscope diff: neither capture has a packet: nothing was compared");
        DiffOutcome::NoVerdict
    } else if !report.complete() && !opts.allow_partial {
        eprintln!(
            "tunscope diff: records were lost reading the captures (above); --allow-partial \
             compares what could be read"
        );
        DiffOutcome::NoVerdict
    } else if report.equivalent() {
        DiffOutcome::Equivalent
    } else {
        DiffOutcome::Different
    })
}

/// `tunscope normalize FILE`: the event list (or the flow summary).
pub fn run_normalize(path: &Path, opts: &CompareOptions, json: bool, summary: bool) -> Result<()> {
    let rules = opts.rules()?;
    let n = normalize_reported(path, &rules)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&n)?);
    } else if summary {
        print!("{}", tunscope_capture::summary::summary(&n));
    } else {
        // One buffered writer: a line per event, not a write(2) per line.
        let mut w = std::io::BufWriter::new(std::io::stdout().lock());
        for e in &n.events {
            writeln!(
                w,
                "#{:<6} {:>10.3} ms  {}  {}",
                e.index,
                e.t_ns as f64 / 1e6,
                n.flows[e.flow].iface,
                e.describe()
            )?;
        }
        writeln!(
            w,
            "{} packets, {} flows, {} bulk packets counted per flow (--exact lists them)",
            n.packets,
            n.flows.len(),
            n.packets - n.events.len()
        )?;
        w.flush()?;
    }
    if !n.read.complete() && !opts.allow_partial {
        anyhow::bail!(
            "{}: records were lost reading it (above); --allow-partial accepts what could be read",
            path.display()
        );
    }
    Ok(())
}
