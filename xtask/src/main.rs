//! `cargo xtask` — project automation (alias in `.cargo/config.toml`).
//!
//! * `cargo xtask test` — installs missing system packages, checks formatting, clippy and the
//!   architecture rules (`tidy`), then runs every test (needs root: namespaces and tun).
//! * `cargo xtask scenario NAME [--client ours|openvpn] [--server ours|openvpn] [--keep]
//!   [--out DIR]` — plays `scenarios/NAME.toml`; `cargo xtask suite` plays them all (JUnit).
//! * `cargo xtask diff A B [OPTIONS]` — `tunscope diff` (semantic capture comparison).
//! * `cargo xtask deps` — only installs the system packages the tests and scenarios use.
//! * `cargo xtask tidy` — formatting, clippy, architecture invariants.
//! * `cargo xtask fuzz [SECONDS]` — runs every cargo-fuzz target for SECONDS (default 60).
//! * `cargo xtask bench tunnel` — end-to-end TCP throughput: plain veth, stock OpenVPN
//!   client ↔ stock server, our client ↔ stock server, side by side in one run.

mod bench;
mod bench_mtu;
mod bench_report;
mod bench_rtt;
mod deps;
mod scenario;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> std::process::ExitCode {
    match run_command() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_command() -> Result<()> {
    let root = project_root();
    std::env::set_current_dir(&root)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(&rest),
        Some("deps") => deps::ensure(),
        Some("tidy") => tidy::run(),
        Some("bench") => bench::run(&rest),
        Some("fuzz") => fuzz(&rest),
        Some("scenario") => scenario::scenario(&rest),
        Some("diff") => diff(&rest),
        Some("suite") => scenario::suite(&rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  scenario NAME [--client ours|openvpn] [--server ours|openvpn] [--keep] [--out DIR]\n                   play scenarios/NAME.toml in namespaces (root)\n  suite [--out DIR] [--list] [--partition K/N]\n                   every scenario and pairing (or shard K of N; --list prints them); JUnit XML\n  suite --merge DIR… [--out DIR]\n                   one JUnit report from shards' directories\n  diff A B [OPTIONS]  compare two captures (tunscope diff; exit 0 same, 1 different, 2 error)\n  test [FILTER…]   install deps, tidy, run all tests (root)\n  deps             install system packages (openvpn, iproute2, tshark, …)\n  tidy             fmt, clippy, architecture rules\n  bench tunnel     end-to-end throughput, side by side with the references\n  bench capture F  tunscope normalize vs tshark on capture F (packets/s)\n  fuzz [SECONDS]   run every fuzz target (installs cargo-fuzz) and the stateful fuzzers"
            );
            bail!("unknown command");
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, failing when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn test(filters: &[&str]) -> Result<()> {
    deps::ensure()?;
    tidy::run()?;
    // Integration tests outside the engine package find the binary through TUNSCOPE_BIN.
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    let bin = project_root().join("target/debug/tunscope");
    let mut cmd = cargo();
    if has_nextest() {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    cmd.args(filters);
    cmd.env("TUNSCOPE_BIN", &bin).env("INSTA_UPDATE", "no");
    run(&mut cmd)
}

/// `cargo xtask diff A B …`: builds `tunscope` and runs `tunscope diff`, keeping its exit
/// status (0 equivalent, 1 different, 2 error).
fn diff(args: &[&str]) -> Result<()> {
    run(cargo().args(["build", "-q", "-p", "tunscope-engine", "--bin", "tunscope"]))?;
    let status = Command::new(project_root().join("target/debug/tunscope"))
        .arg("diff")
        .args(args)
        .status()
        .context("running tunscope diff")?;
    std::process::exit(status.code().unwrap_or(2));
}

/// Runs each fuzz target for `seconds`. cargo-fuzz needs nightly flags; the stable toolchain
/// accepts them with RUSTC_BOOTSTRAP=1.
fn fuzz(args: &[&str]) -> Result<()> {
    let secs = args
        .first()
        .map_or(Ok(60), |s| s.parse::<u64>())
        .context("SECONDS")?;
    if !cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let root = project_root();
    for target in ["packets", "config", "push", "decompress", "tls_crypt_v2"] {
        // The working corpus (fuzz/corpus, not committed) grows from the committed seeds:
        // fuzz/seeds/TARGET, and for configs the 80 real-world files of the corpus test.
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = if target == "config" {
            root.join("engine/tests/corpus/real-world-ovpn")
        } else {
            root.join("fuzz/seeds").join(target)
        };
        run(cargo()
            .current_dir(root.join("fuzz"))
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target])
            .arg(&corpus)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={secs}")]))?;
    }
    // The stateful fuzzers of the server and the client (proptest; a bounded run of them is
    // part of every `cargo test`): about 50 sequences per second given.
    run(cargo()
        .env("PROPTEST_CASES", (secs * 50).max(100).to_string())
        .args([
            "test",
            "-p",
            "tunscope-proto",
            "--test",
            "stateful",
            "--release",
        ]))?;
    Ok(())
}
