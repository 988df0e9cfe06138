//! Real-world OpenVPN configs (`tests/corpus/real-world-ovpn/`, 80 files with their sources in
//! `SOURCES.tsv`): what tunscope makes of each, against what stock `openvpn` makes of it.
//!
//! * `verdicts_match_the_table` (no root): every file is parsed as `tunscope check-config`
//!   would (role detected like OpenVPN does) and the verdict — accepted, or the error with its
//!   line — must equal `tests/corpus/verdicts.tsv`. A change of behaviour shows up as a diff
//!   of that table; `UPDATE_CORPUS=1 cargo test --test config_corpus` rewrites it.
//! * `accepts_what_stock_accepts` (root): runs the distribution's `openvpn` on every file in an
//!   empty network namespace, with tmpfs over `/tmp`, `/run` and `/var/log` so a config's
//!   `log`/`status`/`writepid` cannot touch the machine, and classifies its verdict (an
//!   `Options error` other than a missing file, or a `REMOVED OPTION`, is a rejection). Every
//!   file stock accepts must be accepted by tunscope, or refused for a feature the README lists
//!   as left out by design or not yet built (issue 9's list, shrinking as it lands).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use tunscope_proto::options::client::ClientConfig;
use tunscope_proto::options::server::ServerConfig;
use tunscope_proto::options::{Role, decode_text, parse_directives};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/real-world-ovpn")
}

fn table_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/verdicts.tsv")
}

/// The config files of the corpus, sorted.
fn corpus_files() -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("README.md" | "SOURCES.tsv")
            )
        })
        .collect();
    v.sort();
    Ok(v)
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// tunscope's verdict: `accepted (client, N warnings)` or `refused: line N: message`.
fn ours(path: &Path) -> String {
    let text = match std::fs::read(path) {
        Ok(b) => decode_text(&b),
        Err(e) => return format!("refused: {e}"),
    };
    let role = match parse_directives(&text) {
        Ok(d) => Role::detect(&d),
        Err(e) => return format!("refused: line {}: {}", e.line, e.error),
    };
    let result = match role {
        Role::Client => ClientConfig::parse(&text, path).map(|c| ("client", c.warnings.len())),
        Role::Server => ServerConfig::parse(&text, path).map(|c| ("server", c.warnings.len())),
    };
    match result {
        Ok((role, w)) => format!("accepted ({role}, {w} warnings)"),
        Err(e) if e.line == 0 => format!("refused: {}", e.message),
        Err(e) => format!("refused: line {}: {}", e.line, e.message),
    }
}

fn read_table() -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(table_path()).context("reading verdicts.tsv")?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split_once('\t'))
        .map(|(f, v)| (f.to_owned(), v.to_owned()))
        .collect())
}

#[test]
fn verdicts_match_the_table() -> Result<()> {
    let files = corpus_files()?;
    assert_eq!(files.len(), 80, "the corpus has 80 files");
    let now: BTreeMap<String, String> = files.iter().map(|p| (name(p), ours(p))).collect();
    if std::env::var_os("UPDATE_CORPUS").is_some() {
        let mut out = String::from(
            "# file\ttunscope check-config verdict (engine/tests/config_corpus.rs; UPDATE_CORPUS=1 rewrites)\n",
        );
        for (f, v) in &now {
            out.push_str(&format!("{f}\t{v}\n"));
        }
        std::fs::write(table_path(), out)?;
    }
    let table = read_table()?;
    let mut diffs = vec![];
    for (f, v) in &now {
        match table.get(f) {
            Some(t) if t == v => {}
            Some(t) => diffs.push(format!("{f}\n   table: {t}\n   now:   {v}")),
            None => diffs.push(format!("{f}: not in the table (now: {v})")),
        }
    }
    let accepted = now.values().filter(|v| v.starts_with("accepted")).count();
    eprintln!("tunscope accepts {accepted} of {} files", now.len());
    if !diffs.is_empty() {
        bail!(
            "{} verdict(s) differ from tests/corpus/verdicts.tsv (UPDATE_CORPUS=1 to accept):\n{}",
            diffs.len(),
            diffs.join("\n")
        );
    }
    Ok(())
}

/// Reasons a file stock accepts may still be refused: features left out by design (README,
/// "Left out by design") and features issue 9 has not delivered yet.
const ALLOWED_REFUSALS: &[&str] = &["left out by design", "not supported yet"];

/// Stock openvpn's verdict on one file: Ok(()) when its option parser accepts it.
fn stock(ns: &str, dir: &Path, file: &str) -> Result<Result<(), String>> {
    // The first `--log` wins in OpenVPN, so a config's own `log FILE` cannot hide the output.
    let script = format!(
        "mount -t tmpfs ts /tmp && mount -t tmpfs ts /run && mount -t tmpfs ts /var/log && \
         exec timeout -s KILL 5 openvpn --log /dev/stderr --config '{file}'"
    );
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "unshare", "--mount", "sh", "-c", &script,
        ])
        .current_dir(dir)
        .output()
        .context("running openvpn")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let rejection = text.lines().find(|l| {
        (l.contains("Options error:")
            && !l.contains("fails with '")
            && !l.contains("Please correct"))
            || l.contains("REMOVED OPTION")
    });
    Ok(match rejection {
        Some(l) => Err(l.to_owned()),
        None => Ok(()),
    })
}

#[test]
fn accepts_what_stock_accepts() -> Result<()> {
    tunscope_harness::netns::require_root()?;
    let prefix = tunscope_harness::netns::run_prefix();
    let ns = tunscope_harness::netns::Netns::create(&prefix, "corpus")?;
    // A scratch copy: stock may write status or pool files next to the config.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-corpus"));
    std::fs::create_dir_all(&dir)?;
    let files = corpus_files()?;
    for f in &files {
        std::fs::copy(f, dir.join(name(f)))?;
    }
    let handles: Vec<_> = files
        .iter()
        .map(|f| {
            let (ns, dir, file) = (ns.name().to_owned(), dir.clone(), name(f));
            std::thread::spawn(move || (file.clone(), stock(&ns, &dir, &file)))
        })
        .collect();
    let mut stock_accepts = 0;
    let mut both = 0;
    let mut problems = vec![];
    let mut allowed = vec![];
    let mut rejected = vec![];
    for h in handles {
        let (file, verdict) = h
            .join()
            .map_err(|_| anyhow::anyhow!("stock thread panicked"))?;
        if let Err(why) = verdict? {
            rejected.push(format!("{file}: {why}"));
            continue;
        }
        stock_accepts += 1;
        let v = ours(&corpus_dir().join(&file));
        if v.starts_with("accepted") {
            both += 1;
        } else if ALLOWED_REFUSALS.iter().any(|r| v.contains(r)) {
            allowed.push(format!("{file}: {v}"));
        } else {
            problems.push(format!("{file}: {v}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "stock openvpn accepts {stock_accepts} of {}; tunscope accepts {both} of those.\nStock rejects:\n  {}\nRefused by tunscope for listed features:\n  {}",
        files.len(),
        rejected.join("\n  "),
        allowed.join("\n  ")
    );
    assert!(
        stock_accepts >= 60,
        "stock openvpn accepted only {stock_accepts} files: is it installed and working?"
    );
    if !problems.is_empty() {
        bail!(
            "stock openvpn accepts these but tunscope refuses them for an unlisted reason:\n{}",
            problems.join("\n")
        );
    }
    Ok(())
}
