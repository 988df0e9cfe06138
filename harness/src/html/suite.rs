//! A suite's page (`suite.html` beside `junit.xml`): scenarios down, pairings across, each cell
//! coloured by its verdict with its duration and first failing check, linking to the run's
//! own page. `suite.json` holds the same rows, so shards' pages can be merged into one.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{esc, page};
use crate::scenario::report::{RunError, RunReport};

/// One run of a suite, as its page shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuiteRow {
    /// Scenario name.
    pub scenario: String,
    /// Pairing label (`ours-openvpn`).
    pub pairing: String,
    /// `pass`, `fail` or `error` (the run broke before its checks were judged).
    pub verdict: String,
    /// Seconds the run took (0 for a broken run).
    pub wall_s: f64,
    /// Checks passed and judged.
    pub checks: (usize, usize),
    /// The first failing check, or the error.
    pub detail: String,
    /// The run's page, relative to the suite's directory (none for a broken run).
    pub href: Option<String>,
}

impl SuiteRow {
    /// The row of a run, its page linked relative to `suite_dir`.
    pub fn of_run(r: &RunReport, suite_dir: &Path) -> SuiteRow {
        let passed = r.checks.iter().filter(|c| c.passed).count();
        SuiteRow {
            scenario: r.scenario.clone(),
            pairing: r.pairing(),
            verdict: if r.passed { "pass" } else { "fail" }.into(),
            wall_s: r.wall_s,
            checks: (passed, r.checks.len()),
            detail: r
                .checks
                .iter()
                .find(|c| !c.passed)
                .map(|c| format!("{}: {}", c.name, c.message))
                .unwrap_or_default(),
            href: Some(relative(suite_dir, &r.files.html)),
        }
    }

    /// The row of a run that broke.
    pub fn of_error(e: &RunError) -> SuiteRow {
        SuiteRow {
            scenario: e.scenario.clone(),
            pairing: e.pairing.clone(),
            verdict: "error".into(),
            wall_s: 0.0,
            checks: (0, 0),
            detail: e.error.clone(),
            href: None,
        }
    }
}

/// `to` as a path relative to the directory `from` (both made absolute first), with `/`.
pub fn relative(from: &Path, to: &Path) -> String {
    let abs = |p: &Path| -> PathBuf {
        std::fs::canonicalize(p).unwrap_or_else(|_| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                std::env::current_dir().unwrap_or_default().join(p)
            }
        })
    };
    let (f, t) = (abs(from), abs(to));
    let fc: Vec<Component> = f.components().collect();
    let tc: Vec<Component> = t.components().collect();
    let common = fc.iter().zip(&tc).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); fc.len() - common];
    parts.extend(
        tc[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// The suite's page.
pub fn render(title: &str, rows: &[SuiteRow], wall_s: f64) -> String {
    let scenarios: BTreeSet<&str> = rows.iter().map(|r| r.scenario.as_str()).collect();
    let pairings: BTreeSet<&str> = rows.iter().map(|r| r.pairing.as_str()).collect();
    let count = |v: &str| rows.iter().filter(|r| r.verdict == v).count();
    let mut b = format!(
        "<h1>{}</h1><p class=\"summary\">{} runs: <span class=\"pass\">{} passed</span>, <span class=\"fail\">{} failed</span>, {} broken · {:.1} s</p>",
        esc(title),
        rows.len(),
        count("pass"),
        count("fail"),
        count("error"),
        wall_s
    );
    b.push_str("<table class=\"grid\"><tr><th>scenario</th>");
    for p in &pairings {
        let _ = write!(b, "<th>{}</th>", esc(p));
    }
    b.push_str("</tr>\n");
    for s in &scenarios {
        let _ = write!(b, "<tr><th>{}</th>", esc(s));
        for p in &pairings {
            match rows.iter().find(|r| r.scenario == *s && r.pairing == *p) {
                None => b.push_str("<td class=\"cell none na\">—</td>"),
                Some(r) => {
                    let label = match r.verdict.as_str() {
                        "pass" => "PASS",
                        "fail" => "FAIL",
                        _ => "ERROR",
                    };
                    let head = match &r.href {
                        Some(h) => format!("<a href=\"{}\">{label}</a>", esc(h)),
                        None => label.to_owned(),
                    };
                    let _ = write!(
                        b,
                        "<td class=\"cell {}\" data-run=\"{} [{}]\">{head} · {:.1} s · {}/{} checks{}</td>",
                        esc(&r.verdict),
                        esc(s),
                        esc(p),
                        r.wall_s,
                        r.checks.0,
                        r.checks.1,
                        if r.detail.is_empty() {
                            String::new()
                        } else {
                            format!("<br><small>{}</small>", esc(&r.detail))
                        }
                    );
                }
            }
        }
        b.push_str("</tr>\n");
    }
    b.push_str("</table><p class=\"muted\">Each cell links to the run's own report (network, checks with evidence, the client's routes and DNS, engine stages, packet journeys). JUnit XML for CI sits beside this page.</p>");
    page(title, &b)
}

/// Writes `suite.json` and `suite.html` into `dir`.
pub fn write(dir: &Path, title: &str, rows: &[SuiteRow], wall_s: f64) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    let json = dir.join("suite.json");
    std::fs::write(&json, serde_json::to_string_pretty(rows)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let html = dir.join("suite.html");
    std::fs::write(&html, render(title, rows, wall_s))
        .with_context(|| format!("cannot write {}", html.display()))?;
    Ok(html)
}

/// Rows of shards (`(shard dir, its suite.json text)`) as one suite seen from `out`: links
/// rewritten to reach each shard's run pages from `out`; a run in two shards is an error.
pub fn merge(shards: &[(PathBuf, String)], out: &Path) -> anyhow::Result<Vec<SuiteRow>> {
    use anyhow::Context as _;
    let mut all: Vec<SuiteRow> = vec![];
    for (dir, text) in shards {
        let rows: Vec<SuiteRow> = serde_json::from_str(text)
            .with_context(|| format!("{}: not a suite.json", dir.display()))?;
        for mut r in rows {
            if all
                .iter()
                .any(|o| o.scenario == r.scenario && o.pairing == r.pairing)
            {
                anyhow::bail!(
                    "{} [{}] is in two shards (again in {})",
                    r.scenario,
                    r.pairing,
                    dir.display()
                );
            }
            r.href = r.href.map(|h| relative(out, &dir.join(h)));
            all.push(r);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(s: &str, p: &str, v: &str) -> SuiteRow {
        SuiteRow {
            scenario: s.into(),
            pairing: p.into(),
            verdict: v.into(),
            wall_s: 2.5,
            checks: (3, 4),
            detail: if v == "pass" {
                String::new()
            } else {
                "dns: no answer".into()
            },
            href: Some(format!("{s}/{p}/report.html")),
        }
    }

    #[test]
    fn the_grid_has_a_cell_per_run_and_links_survive_a_merge() {
        let rows = vec![
            row("split-tunnel", "ours-ours", "pass"),
            row("mtu", "ours-openvpn", "fail"),
        ];
        let h = render("suite", &rows, 10.0);
        assert!(h.contains("data-run=\"split-tunnel [ours-ours]\""));
        assert!(h.contains("<td class=\"cell fail\" data-run=\"mtu [ours-openvpn]\""));
        // Two scenarios × two pairings: two runs and two empty cells.
        assert_eq!(h.matches("class=\"cell none").count(), 2);
        assert!(h.contains("dns: no answer"));

        let out = Path::new("/tmp/ts-merge/out");
        let shard = |name: &str, rows: &[SuiteRow]| {
            (
                PathBuf::from(format!("/tmp/ts-merge/{name}")),
                serde_json::to_string(rows).expect("json"),
            )
        };
        let merged = merge(&[shard("a", &rows[..1]), shard("b", &rows[1..])], out).expect("merges");
        assert_eq!(
            merged[0].href.as_deref(),
            Some("../a/split-tunnel/ours-ours/report.html")
        );
        assert_eq!(
            merged[1].href.as_deref(),
            Some("../b/mtu/ours-openvpn/report.html")
        );
        let twice = merge(&[shard("a", &rows), shard("b", &rows[..1])], out).unwrap_err();
        assert!(twice.to_string().contains("two shards"), "{twice}");
    }
}
