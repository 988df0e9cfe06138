//! Formatting, clippy, and the architecture rules that the compiler cannot check.

use std::path::Path;

use anyhow::{Result, bail};

use crate::{cargo, run as run_cmd};

/// Words that must not appear in the sans-I/O core's non-test code: it takes `now` as a
/// parameter and never touches sockets, files, threads or async runtimes.
const PROTO_FORBIDDEN: &[&str] = &[
    "Instant::now(",
    "SystemTime::now(",
    "std::net::UdpSocket",
    "std::net::TcpStream",
    "std::net::TcpListener",
    "std::fs::",
    "std::thread",
    "tokio",
];

/// Runs all checks.
pub fn run() -> Result<()> {
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    sans_io_invariant(Path::new("engine/proto/src"))?;
    seed_only_in_tests(&["engine/src", "engine/proto/src", "harness/src", "xtask/src"])?;
    eprintln!("tidy: ok");
    Ok(())
}

/// Checks [`PROTO_FORBIDDEN`] over the crate's sources.
fn sans_io_invariant(dir: &Path) -> Result<()> {
    forbid_outside_tests(&[dir], &[], PROTO_FORBIDDEN, "in the sans-I/O core")
}

/// A seeded random stream is predictable: only tests may seed (`rng::seed_thread`).
fn seed_only_in_tests(dirs: &[&str]) -> Result<()> {
    let dirs: Vec<&Path> = dirs.iter().map(Path::new).collect();
    forbid_outside_tests(
        &dirs,
        &["rng.rs", "tidy.rs"],
        &["seed_thread("],
        "seeds the core's randomness outside a test",
    )
}

/// Fails when one of `words` appears in non-test code under `dirs` (comments and the
/// `#[cfg(test)]` modules at the end of files skipped; files named in `skip` too).
fn forbid_outside_tests(dirs: &[&Path], skip: &[&str], words: &[&str], why: &str) -> Result<()> {
    let mut violations = vec![];
    for dir in dirs {
        visit(dir, &mut |path, text| {
            if skip.iter().any(|f| path.ends_with(f)) {
                return;
            }
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (i, line) in code.lines().enumerate() {
                let l = line.trim_start();
                if l.starts_with("//") {
                    continue;
                }
                for w in words.iter().filter(|w| l.contains(*w)) {
                    violations.push(format!("{}:{}: `{w}` {why}", path.display(), i + 1));
                }
            }
        })?;
    }
    if !violations.is_empty() {
        bail!("architecture invariant broken:\n{}", violations.join("\n"));
    }
    Ok(())
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path, &str)) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            visit(&p, f)?;
        } else if p.extension().is_some_and(|e| e == "rs") {
            f(&p, &std::fs::read_to_string(&p)?);
        }
    }
    Ok(())
}
