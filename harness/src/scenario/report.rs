//! Results of scenario runs: the JSON report of one run, the terminal lines, JUnit XML for
//! a suite.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::capture::PcapngSummary;
use crate::netstate::NetState;
use crate::services::dns::DnsQuery;
use crate::services::web::WebRequest;

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// Check name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Line in the scenario file.
    pub line: usize,
    /// Passed.
    pub passed: bool,
    /// Failure reason, or what was seen.
    pub message: String,
    /// Evidence.
    pub evidence: Vec<String>,
    /// Time the check took while the tunnel was up.
    pub duration_ms: u64,
}

/// Client namespace state at three moments.
#[derive(Clone, Debug, Default, Serialize)]
pub struct States {
    /// Before the client started.
    pub before: NetState,
    /// While the tunnel was up.
    pub during: NetState,
    /// After the client stopped.
    pub after: NetState,
}

/// Files a run wrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunFiles {
    /// Output directory.
    pub dir: PathBuf,
    /// The run's pcapng (all interfaces and stages).
    pub pcapng: PathBuf,
    /// This report.
    pub report: PathBuf,
    /// The same as a page to look at (`report.html`).
    pub html: PathBuf,
    /// The golden summary (`summary.txt`).
    pub summary: PathBuf,
    /// Client log.
    pub client_log: PathBuf,
    /// Server log.
    pub server_log: PathBuf,
}

/// The report of one scenario run (one pairing).
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// Client implementation.
    pub client: String,
    /// Server implementation.
    pub server: String,
    /// Every check passed.
    pub passed: bool,
    /// Checks in file order.
    pub checks: Vec<CheckReport>,
    /// Seconds from start to the tunnel being up (client started → ready).
    pub tunnel_up_s: f64,
    /// Whole run, seconds.
    pub wall_s: f64,
    /// Client namespace state.
    pub states: States,
    /// Every DNS query the scenario's resolvers saw (the DNS transcript).
    pub dns: Vec<DnsQuery>,
    /// Every web request.
    pub web: Vec<WebRequest>,
    /// What went into the pcapng.
    pub capture: PcapngSummary,
    /// Packets the kernel dropped before the capture sockets read them.
    pub capture_drops: u64,
    /// Where the namespaces' kernels dropped packets (non-zero counters, read while the
    /// tunnel was still up): full socket buffers, overflowing tun queues, missing routes.
    #[serde(default)]
    pub kernel_drops: Vec<crate::kernel_drops::KernelDrop>,
    /// What the link impairment did (scenarios with `[topology.impair]`).
    #[serde(default)]
    pub impairment: Option<crate::impair::ImpairReport>,
    /// Every namespace of the network with its addresses, recorded while the tunnel was up.
    pub topology: Vec<HostView>,
    /// `resolvectl status` before, during and after the tunnel, when the client runs
    /// systemd-resolved (empty otherwise).
    pub resolvectl: Vec<String>,
    /// Our engines' own reports at the end of the checks (stock openvpn has none).
    pub engines: Engines,
    /// A sample of packet journeys across both hosts (`tunscope trace --json`).
    pub journeys: Vec<serde_json::Value>,
    /// Files.
    pub files: RunFiles,
}

/// One namespace of a scenario's network.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostView {
    /// Role (`client`, `router`, `server`, `corp`).
    pub host: String,
    /// The namespace's name (`ts-…-client`).
    pub namespace: String,
    /// `<ifname> <address>/<len>` per address.
    pub addresses: Vec<String>,
}

/// Our engines' reports (`tunscope stats --json`), `None` for stock openvpn.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Engines {
    /// The client's.
    pub client: Option<serde_json::Value>,
    /// The server's.
    pub server: Option<serde_json::Value>,
}

impl RunReport {
    /// `ours-openvpn`.
    pub fn pairing(&self) -> String {
        format!("{}-{}", self.client, self.server)
    }

    /// Writes the JSON report to `files.report`.
    pub fn write_json(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&self.files.report, text)
            .with_context(|| format!("cannot write {}", self.files.report.display()))
    }

    /// PASS/FAIL lines, evidence under failures.
    pub fn verdict_lines(&self) -> String {
        let mut s = String::new();
        for c in &self.checks {
            if c.passed {
                let _ = writeln!(s, "PASS  {}: {}", c.name, c.message);
            } else {
                let _ = writeln!(s, "FAIL  {} (line {}): {}", c.name, c.line, c.message);
                for e in &c.evidence {
                    let _ = writeln!(s, "        {e}");
                }
            }
        }
        s
    }

    /// The closing summary line.
    pub fn summary_line(&self) -> String {
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        format!(
            "{} [{}]: {} passed, {} failed in {:.1} s (tunnel up in {:.2} s)",
            self.scenario,
            self.pairing(),
            self.checks.len() - failed,
            failed,
            self.wall_s,
            self.tunnel_up_s
        )
    }
}

/// A run that could not be completed (setup failed), for suites.
#[derive(Clone, Debug, Serialize)]
pub struct RunError {
    /// Scenario.
    pub scenario: String,
    /// Pairing label.
    pub pairing: String,
    /// What went wrong.
    pub error: String,
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => o.push(c),
        }
    }
    o
}

/// JUnit XML for a suite: one `<testsuite>` per scenario run, one `<testcase>` per check;
/// a run that could not start is one test case with an `<error>`.
pub fn junit_xml(runs: &[RunReport], errors: &[RunError]) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let tests: usize = runs.iter().map(|r| r.checks.len()).sum::<usize>() + errors.len();
    let failures: usize = runs
        .iter()
        .map(|r| r.checks.iter().filter(|c| !c.passed).count())
        .sum();
    let _ = writeln!(
        x,
        "<testsuites name=\"tunscope scenarios\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{}\">",
        errors.len()
    );
    for r in runs {
        let f = r.checks.iter().filter(|c| !c.passed).count();
        let _ = writeln!(
            x,
            "  <testsuite name=\"{} [{}]\" tests=\"{}\" failures=\"{f}\" errors=\"0\" time=\"{:.3}\">",
            xml_escape(&r.scenario),
            r.pairing(),
            r.checks.len(),
            r.wall_s
        );
        for c in &r.checks {
            let _ = write!(
                x,
                "    <testcase classname=\"{}.{}\" name=\"{}\" time=\"{:.3}\"",
                xml_escape(&r.scenario),
                r.pairing(),
                xml_escape(&c.name),
                c.duration_ms as f64 / 1000.0
            );
            if c.passed && c.message.starts_with(super::run::NOT_APPLICABLE) {
                let _ = writeln!(
                    x,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    xml_escape(&c.message)
                );
            } else if c.passed {
                x.push_str("/>\n");
            } else {
                let _ = writeln!(
                    x,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    xml_escape(&c.message),
                    xml_escape(&c.evidence.join("\n"))
                );
            }
        }
        let _ = writeln!(
            x,
            "    <system-out>{}</system-out>\n  </testsuite>",
            xml_escape(&format!(
                "pcapng: {}\nreport: {}",
                r.files.pcapng.display(),
                r.files.report.display()
            ))
        );
    }
    for e in errors {
        let _ = writeln!(
            x,
            "  <testsuite name=\"{} [{}]\" tests=\"1\" failures=\"0\" errors=\"1\">\n    <testcase classname=\"{}.{}\" name=\"setup\">\n      <error message=\"{}\"/>\n    </testcase>\n  </testsuite>",
            xml_escape(&e.scenario),
            e.pairing,
            xml_escape(&e.scenario),
            e.pairing,
            xml_escape(&e.error)
        );
    }
    x.push_str("</testsuites>\n");
    x
}

/// Totals of a merged JUnit report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JunitTotals {
    /// Scenario runs (test suites).
    pub suites: usize,
    /// Checks (test cases).
    pub tests: usize,
    /// Failed checks.
    pub failures: usize,
    /// Runs that broke before judging.
    pub errors: usize,
}

fn attr(tag: &str, name: &str) -> Option<usize> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    tag[start..].split('"').next()?.parse().ok()
}

/// Merges the JUnit files of a suite's shards (as [`junit_xml`] writes them) into one: their
/// test suites side by side, the totals summed. A run found in two shards is an error.
pub fn merge_junit(files: &[(String, String)]) -> Result<(String, JunitTotals)> {
    let mut t = JunitTotals::default();
    let mut body = String::new();
    let mut names = std::collections::BTreeMap::new();
    for (from, text) in files {
        let open = text
            .find("<testsuites")
            .and_then(|i| text[i..].find('>').map(|j| (i, i + j)))
            .with_context(|| format!("{from}: no <testsuites> element"))?;
        let head = &text[open.0..=open.1];
        let close = text
            .rfind("</testsuites>")
            .with_context(|| format!("{from}: no </testsuites>"))?;
        let inner = &text[open.1 + 1..close];
        for line in inner
            .lines()
            .filter(|l| l.trim_start().starts_with("<testsuite "))
        {
            let name = line
                .split("name=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned();
            if let Some(other) = names.insert(name.clone(), from.clone()) {
                anyhow::bail!("{name} is in two shards: {other} and {from}");
            }
            t.suites += 1;
        }
        t.tests += attr(head, "tests").unwrap_or(0);
        t.failures += attr(head, "failures").unwrap_or(0);
        t.errors += attr(head, "errors").unwrap_or(0);
        body.push_str(inner.trim_matches('\n'));
        body.push('\n');
    }
    let x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"tunscope scenarios\" tests=\"{}\" failures=\"{}\" errors=\"{}\">\n{body}</testsuites>\n",
        t.tests, t.failures, t.errors
    );
    Ok((x, t))
}

/// Writes the JUnit XML of a suite.
pub fn write_junit(path: &Path, runs: &[RunReport], errors: &[RunError]) -> Result<()> {
    std::fs::write(path, junit_xml(runs, errors))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(name: &str, tests: usize, failures: usize) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"tunscope scenarios\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\">\n  <testsuite name=\"{name} [ours-ours]\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" time=\"1.000\">\n    <testcase classname=\"{name}.ours-ours\" name=\"c\" time=\"0.001\"/>\n  </testsuite>\n</testsuites>\n"
        )
    }

    #[test]
    fn shards_merge_into_one_report_and_a_run_twice_is_an_error() {
        let (x, t) = merge_junit(&[
            ("a".into(), shard("split-tunnel", 12, 0)),
            ("b".into(), shard("mtu", 9, 2)),
        ])
        .expect("merges");
        assert_eq!(
            t,
            JunitTotals {
                suites: 2,
                tests: 21,
                failures: 2,
                errors: 0
            }
        );
        assert!(x.contains("tests=\"21\" failures=\"2\""));
        assert!(x.contains("split-tunnel [ours-ours]") && x.contains("mtu [ours-ours]"));
        assert_eq!(x.matches("<testsuites").count(), 1);
        let e = merge_junit(&[
            ("a".into(), shard("mtu", 9, 0)),
            ("b".into(), shard("mtu", 9, 0)),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("in two shards"), "{e}");
        assert!(merge_junit(&[("c".into(), "garbage".into())]).is_err());
    }
}
