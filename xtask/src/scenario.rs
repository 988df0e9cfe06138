//! `cargo xtask scenario NAME` and `cargo xtask suite`: build the engine, then play
//! scenarios from `scenarios/*.toml` with the harness.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use tunscope_harness::html;
use tunscope_harness::scenario::report::{RunError, RunReport, write_junit};
use tunscope_harness::scenario::run::{RunOptions, default_out, run};
use tunscope_harness::scenario::{self, Pairing, Scenario, Subject};

use crate::{cargo, deps, project_root};

struct Args {
    name: Option<String>,
    client: Option<Subject>,
    server: Option<Subject>,
    keep: bool,
    out: Option<PathBuf>,
    /// `suite --list`: print the runs, play none.
    list: bool,
    /// `suite --partition K/N`: only shard K of N.
    partition: Option<(u32, u32)>,
    /// `--release`: our engine built optimized (stage latencies in journeys as a user's
    /// build has them; the tests and the suite share the debug build).
    release: bool,
}

fn parse_args(args: &[&str], want_name: bool) -> Result<Args> {
    let mut a = Args {
        name: None,
        client: None,
        server: None,
        keep: false,
        out: None,
        list: false,
        partition: None,
        release: false,
    };
    let mut it = args.iter();
    while let Some(&arg) = it.next() {
        match arg {
            "--client" => {
                a.client = Some(
                    it.next()
                        .context("--client needs ours|openvpn")?
                        .parse()
                        .map_err(anyhow::Error::msg)?,
                );
            }
            "--server" => {
                a.server = Some(
                    it.next()
                        .context("--server needs ours|openvpn")?
                        .parse()
                        .map_err(anyhow::Error::msg)?,
                );
            }
            "--keep" => a.keep = true,
            "--release" => a.release = true,
            "--list" if !want_name => a.list = true,
            "--partition" if !want_name => {
                a.partition = Some(scenario::parse_partition(
                    it.next().context("--partition needs K/N")?,
                )?);
            }
            "--out" => a.out = Some(PathBuf::from(it.next().context("--out needs a directory")?)),
            s if s.starts_with("--") => bail!("unknown option {s}"),
            s if want_name && a.name.is_none() => a.name = Some(s.to_owned()),
            s => bail!("unexpected argument {s}"),
        }
    }
    if want_name && a.name.is_none() {
        let names: Vec<String> = scenario::list()?
            .iter()
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        bail!(
            "usage: cargo xtask scenario NAME [--client ours|openvpn] [--server ours|openvpn] [--keep] [--release] [--out DIR]\nscenarios: {}",
            names.join(", ")
        );
    }
    Ok(a)
}

/// Builds `tunscope` (debug, shared with the tests; optimized with `release`) and points the
/// harness at it.
fn build_engine(release: bool) -> Result<()> {
    crate::run(
        cargo()
            .args(["build", "-p", "tunscope-engine", "--bin", "tunscope"])
            .args(release.then_some("--release")),
    )?;
    let profile = if release { "release" } else { "debug" };
    let bin = project_root().join("target").join(profile).join("tunscope");
    // SAFETY: set before any thread of ours exists.
    unsafe { std::env::set_var("TUNSCOPE_BIN", bin) };
    Ok(())
}

fn pairings(s: &Scenario, a: &Args) -> Vec<Pairing> {
    if a.client.is_none() && a.server.is_none() {
        return s.pairings.clone();
    }
    let first = s.pairings[0];
    vec![Pairing {
        client: a.client.unwrap_or(first.client),
        server: a.server.unwrap_or(first.server),
    }]
}

/// `3/42, 1m12s elapsed, ~14m left`: runs started so far, time spent, and the rest at the
/// pace so far (plain text: the runs' own output interleaves, so no status line redrawn).
pub(crate) fn progress(done: usize, total: usize, elapsed: std::time::Duration) -> String {
    let fmt = |s: u64| {
        if s >= 60 {
            format!("{}m{:02}s", s / 60, s % 60)
        } else {
            format!("{s}s")
        }
    };
    let spent = elapsed.as_secs();
    let left = if done == 0 {
        "time left unknown yet".to_owned()
    } else {
        let per = elapsed.as_secs_f64() / done as f64;
        format!(
            "~{} left",
            fmt((per * (total - done) as f64).round() as u64)
        )
    };
    format!("{}/{total}, {} elapsed, {left}", done + 1, fmt(spent))
}

/// `cargo xtask suite --merge DIR… [--out DIR]`: one JUnit report from the shards' (each
/// DIR holds a shard's `junit.xml`); fails when a shard failed or a run is in two shards.
fn merge(args: &[&str]) -> Result<()> {
    let mut dirs = vec![];
    let mut out = None;
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        match a {
            "--out" => out = Some(PathBuf::from(it.next().context("--out needs a directory")?)),
            d => dirs.push(PathBuf::from(d)),
        }
    }
    if dirs.is_empty() {
        bail!("usage: cargo xtask suite --merge DIR… [--out DIR]");
    }
    let mut files = vec![];
    for d in &dirs {
        let p = d.join("junit.xml");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        files.push((p.display().to_string(), text));
    }
    let (xml, t) = tunscope_harness::scenario::report::merge_junit(&files)?;
    let out = out.unwrap_or_else(|| project_root().join("target/scenarios/merged"));
    std::fs::create_dir_all(&out)?;
    let junit = out.join("junit.xml");
    std::fs::write(&junit, xml).with_context(|| format!("cannot write {}", junit.display()))?;
    // The pages: every shard's rows in one grid, linking into the shards' directories.
    let mut shards = vec![];
    for d in &dirs {
        let p = d.join("suite.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        shards.push((d.clone(), text));
    }
    let rows = html::suite::merge(&shards, &out)?;
    let wall: f64 = rows.iter().map(|r| r.wall_s).sum();
    let page = html::suite::write(
        &out,
        &format!("tunscope suite ({} shards merged)", dirs.len()),
        &rows,
        wall,
    )?;
    println!(
        "merged {} shard(s): {} runs, {} checks, {} failed, {} broken → {}, {}",
        dirs.len(),
        t.suites,
        t.tests,
        t.failures,
        t.errors,
        junit.display(),
        page.display()
    );
    if t.failures + t.errors > 0 {
        bail!("{} failed check(s), {} broken run(s)", t.failures, t.errors);
    }
    Ok(())
}

fn print_report(r: &RunReport) {
    print!("{}", r.verdict_lines());
    println!("pcapng: {}", r.files.pcapng.display());
    println!(
        "report: {} (page: {})",
        r.files.report.display(),
        r.files.html.display()
    );
    println!("golden summary: {}", r.files.summary.display());
    println!(
        "{} {}",
        if r.passed { "PASSED" } else { "FAILED" },
        r.summary_line()
    );
}

/// `cargo xtask scenario NAME …`.
pub fn scenario(args: &[&str]) -> Result<()> {
    let a = parse_args(args, true)?;
    tunscope_harness::netns::require_root()?;
    deps::ensure()?;
    build_engine(a.release)?;
    let s = Scenario::load(&scenario::find(a.name.as_deref().unwrap_or_default())?)?;
    let ps = pairings(&s, &a);
    let mut failed = 0;
    for p in &ps {
        let out = match &a.out {
            Some(d) if ps.len() > 1 => d.join(p.label()),
            Some(d) => d.clone(),
            None => default_out(&s.name, p),
        };
        let r = run(
            &s,
            &RunOptions {
                pairing: *p,
                keep: a.keep,
                out,
                verbose: true,
            },
        )
        .with_context(|| format!("scenario {} [{}]", s.name, p.label()))?;
        print_report(&r);
        if !r.passed {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} run(s) of {} failed", ps.len(), s.name);
    }
    Ok(())
}

/// `cargo xtask suite [--out DIR]`: every scenario, every pairing it names; JUnit XML.
pub fn suite(args: &[&str]) -> Result<()> {
    if args.first() == Some(&"--merge") {
        return merge(&args[1..]);
    }
    let a = parse_args(args, false)?;
    // Every scenario with its pairings, or with the one `--client`/`--server` make.
    let mut all = vec![];
    for path in scenario::list()? {
        let s = Scenario::load(&path)?;
        for p in pairings(&s, &a) {
            all.push(scenario::SuiteRun {
                scenario: s.clone(),
                pairing: p,
            });
        }
    }
    let total = all.len();
    let mine: Vec<_> = all
        .into_iter()
        .filter(|r| {
            a.partition
                .is_none_or(|(k, n)| scenario::in_shard(&r.label(), k, n))
        })
        .collect();
    if a.list {
        for r in &mine {
            println!("{}", r.label());
        }
        return Ok(());
    }
    if let Some((k, n)) = a.partition {
        println!("shard {k}/{n}: {} of {total} runs", mine.len());
    }
    tunscope_harness::netns::require_root()?;
    deps::ensure()?;
    build_engine(a.release)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| project_root().join("target/scenarios"));
    let started = std::time::Instant::now();
    let mut runs = vec![];
    let mut errors = vec![];
    for (i, r) in mine.iter().enumerate() {
        let (s, p) = (&r.scenario, r.pairing);
        println!(
            "── {} [{}]  ({})",
            s.name,
            p.label(),
            progress(i, mine.len(), started.elapsed())
        );
        let opts = RunOptions {
            pairing: p,
            keep: false,
            out: out.join(&s.name).join(p.label()),
            verbose: true,
        };
        match run(s, &opts) {
            Ok(r) => {
                print_report(&r);
                runs.push(r);
            }
            Err(e) => {
                println!("ERROR {} [{}]: {e:#}", s.name, p.label());
                errors.push(RunError {
                    scenario: s.name.clone(),
                    pairing: p.label(),
                    error: format!("{e:#}"),
                });
            }
        }
    }
    std::fs::create_dir_all(&out)?;
    let junit = out.join("junit.xml");
    write_junit(&junit, &runs, &errors)?;
    let failed_runs = runs.iter().filter(|r| !r.passed).count();
    println!(
        "\nsuite: {} runs in {:.1} s",
        runs.len() + errors.len(),
        started.elapsed().as_secs_f64()
    );
    for r in &runs {
        println!(
            "  {} {}",
            if r.passed { "PASSED" } else { "FAILED" },
            r.summary_line()
        );
    }
    for e in &errors {
        println!("  ERROR  {} [{}]", e.scenario, e.pairing);
    }
    let rows: Vec<html::suite::SuiteRow> = runs
        .iter()
        .map(|r| html::suite::SuiteRow::of_run(r, &out))
        .chain(errors.iter().map(html::suite::SuiteRow::of_error))
        .collect();
    let title = match a.partition {
        Some((k, n)) => format!("tunscope suite, shard {k}/{n}"),
        None => "tunscope suite".to_owned(),
    };
    let page = html::suite::write(&out, &title, &rows, started.elapsed().as_secs_f64())?;
    println!("JUnit XML: {}", junit.display());
    println!("suite page: {}", page.display());
    if failed_runs + errors.len() > 0 {
        bail!("{failed_runs} failed and {} broken run(s)", errors.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_picks_the_optimized_engine_and_unknown_options_are_refused() {
        let a = parse_args(&["split-tunnel", "--release", "--client", "openvpn"], true)
            .expect("parsed");
        assert!(a.release);
        assert_eq!(a.name.as_deref(), Some("split-tunnel"));
        assert!(!parse_args(&["split-tunnel"], true).expect("parsed").release);
        let e = parse_args(&["split-tunnel", "--relase"], true)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("--relase"), "{e}");
    }

    #[test]
    fn progress_counts_runs_and_estimates_from_the_pace() {
        use std::time::Duration;
        assert_eq!(
            progress(0, 42, Duration::from_secs(0)),
            "1/42, 0s elapsed, time left unknown yet"
        );
        // 10 runs in 100 s: 32 more at 10 s each.
        assert_eq!(
            progress(10, 42, Duration::from_secs(100)),
            "11/42, 1m40s elapsed, ~5m20s left"
        );
    }

    /// Two shards' directories merged: one JUnit report and one page whose grid holds both
    /// runs, each cell's link reaching that run's page inside its shard's directory (read
    /// back through headless Chromium).
    #[test]
    fn merged_shards_make_one_page_whose_links_reach_the_runs() {
        use tunscope_harness::html::browser::dump_dom;
        use tunscope_harness::html::suite::{SuiteRow, relative};
        let base = std::env::temp_dir().join(format!("tunscope-merge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mut dirs = vec![];
        for (shard, scenario, verdict) in [("s1", "split-tunnel", "pass"), ("s2", "mtu", "pass")] {
            let dir = base.join(shard);
            let run = dir.join(scenario).join("ours-ours");
            std::fs::create_dir_all(&run).expect("dirs");
            let page = run.join("report.html");
            std::fs::write(&page, format!("<!DOCTYPE html><title>{scenario}</title>"))
                .expect("page");
            let rows = vec![SuiteRow {
                scenario: scenario.into(),
                pairing: "ours-ours".into(),
                verdict: verdict.into(),
                wall_s: 2.0,
                checks: (5, 5),
                detail: String::new(),
                href: Some(relative(&dir, &page)),
            }];
            html::suite::write(&dir, shard, &rows, 2.0).expect("shard page");
            std::fs::write(
                dir.join("junit.xml"),
                tunscope_harness::scenario::report::junit_xml(&[], &[]),
            )
            .expect("junit");
            dirs.push(dir.display().to_string());
        }
        let out = base.join("merged");
        let mut args: Vec<&str> = dirs.iter().map(String::as_str).collect();
        let out_s = out.display().to_string();
        args.extend(["--out", out_s.as_str()]);
        merge(&args).expect("merges");
        let dom = dump_dom(&out.join("suite.html")).expect("chromium reads the merged page");
        assert!(dom.contains("data-run=\"split-tunnel [ours-ours]\""));
        assert!(dom.contains("data-run=\"mtu [ours-ours]\""));
        let hrefs: Vec<&str> = dom
            .split("href=\"")
            .skip(1)
            .filter_map(|h| h.split('"').next())
            .collect();
        assert_eq!(hrefs.len(), 2, "{hrefs:?}");
        for h in hrefs {
            assert!(h.starts_with("../s"), "{h}");
            assert!(
                out.join(h).exists(),
                "{h} does not reach a page from {}",
                out.display()
            );
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    /// The GitHub Actions workflow parses, fans the suite out over a matrix of shards with
    /// `--partition K/N` for every K of its N, and merges them with `--merge`.
    #[test]
    fn the_workflow_fans_out_and_merges() {
        let path = project_root().join(".github/workflows/suite.yml");
        let text = std::fs::read_to_string(&path).expect("workflow exists");
        let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("valid YAML");
        let w = &docs[0];
        let shards = w["jobs"]["shard"]["strategy"]["matrix"]["shard"]
            .as_vec()
            .expect("a shard matrix");
        let n = shards.len();
        let ks: Vec<i64> = shards.iter().filter_map(|k| k.as_i64()).collect();
        assert_eq!(ks, (1..=n as i64).collect::<Vec<_>>(), "shards 1..N");
        // The shell commands of a job's steps.
        let commands = |job: &str| -> Vec<String> {
            w["jobs"][job]["steps"]
                .as_vec()
                .expect("steps")
                .iter()
                .filter_map(|s| s["run"].as_str().map(str::to_owned))
                .collect()
        };
        let runs = commands("shard");
        assert!(
            runs.iter()
                .any(|r| r.contains(&format!("--partition ${{{{ matrix.shard }}}}/{n}"))),
            "{runs:?}"
        );
        assert_eq!(w["jobs"]["merge"]["needs"].as_str(), Some("shard"));
        let merge = commands("merge");
        assert!(
            merge
                .iter()
                .any(|r| r.contains("cargo xtask suite --merge"))
        );
    }
}
