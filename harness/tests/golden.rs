//! Golden snapshots: every scenario, every pairing it names, run several times. Each run's
//! golden summary (check verdicts, the client's routes/addresses/resolv.conf before, during
//! and after, the DNS transcript, the normalized flow summary of the run's pcapng) must be
//! identical across the runs — proving the snapshot is stable — and equal to the snapshot
//! under `captures/snapshots/`. The runs' pcapngs must also be equivalent under
//! `tunscope diff`'s comparison. An intended change is accepted with `cargo insta review`.
//!
//! `TUNSCOPE_GOLDEN_RUNS` sets the number of runs (default 3). Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use tunscope_capture::diff::{DiffOptions, diff};
use tunscope_capture::normalize::{Rules, normalize};
use tunscope_harness::scenario::run::{RunOptions, run};
use tunscope_harness::scenario::{self, Scenario};

fn snapshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../captures/snapshots")
}

fn line_diff(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out = String::new();
    for l in la.iter().filter(|l| !lb.contains(l)) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in lb.iter().filter(|l| !la.contains(l)) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}

/// Why a run's capture cannot match the others through no fault of the run: a stock subject
/// took a path of its own. openconnect's DTLS handshake can race ocserv's set-up of the
/// session; openconnect then stays on TLS over TCP for a minute (see
/// `harness/src/openconnect.rs`), and the capture holds the tunnel's traffic in another flow.
/// The checks still hold; such a run is played again (at most twice), and says so.
fn external_detour(dir: &std::path::Path) -> Option<&'static str> {
    let log = std::fs::read_to_string(dir.join("client.log")).unwrap_or_default();
    log.contains("DTLS handshake failed")
        .then_some("openconnect's DTLS handshake failed (it raced ocserv), traffic stayed on TLS")
}

fn golden(name: &str) {
    let runs: usize = std::env::var("TUNSCOPE_GOLDEN_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(2);
    let s = Scenario::load(&scenario::find(name).unwrap()).unwrap();
    for p in &s.pairings {
        let mut texts = vec![];
        let mut captures = vec![];
        let mut dirs = vec![];
        for k in 0..runs {
            let mut attempt = 0;
            let r = loop {
                let out = std::env::temp_dir().join("tunscope-tests").join(format!(
                    "golden-{name}-{}-{k}-{attempt}-{}",
                    p.label(),
                    std::process::id()
                ));
                let r = run(
                    &s,
                    &RunOptions {
                        pairing: *p,
                        keep: false,
                        out,
                        verbose: false,
                    },
                )
                .unwrap_or_else(|e| panic!("{name} [{}] run {k}: {e:#}", p.label()));
                assert!(
                    r.passed,
                    "{name} [{}] run {k}:\n{}",
                    p.label(),
                    r.verdict_lines()
                );
                match external_detour(&r.files.dir) {
                    Some(why) if attempt < 2 => {
                        eprintln!("{name} [{}] run {k}: {why}; played again", p.label());
                        let _ = std::fs::remove_dir_all(&r.files.dir);
                        attempt += 1;
                    }
                    _ => break r,
                }
            };
            texts.push(std::fs::read_to_string(&r.files.summary).unwrap());
            captures.push(r.files.pcapng.clone());
            dirs.push(r.files.dir.clone());
        }
        for k in 1..runs {
            assert!(
                texts[k] == texts[0],
                "{name} [{}]: run {k}'s summary differs from run 0's:\n{}",
                p.label(),
                line_diff(&texts[0], &texts[k])
            );
        }
        // The captures themselves compare as equivalent.
        let rules = Rules::default();
        let n0 = normalize(&tunscope_capture::file::read(&captures[0]).unwrap(), &rules);
        for (k, c) in captures.iter().enumerate().skip(1) {
            let nk = normalize(&tunscope_capture::file::read(c).unwrap(), &rules);
            let d = diff(
                "run 0",
                &n0,
                &format!("run {k}"),
                &nk,
                &DiffOptions::default(),
            );
            assert!(d.equivalent(), "{name} [{}]: {}", p.label(), d.text());
        }
        insta::with_settings!({ snapshot_path => snapshot_dir(), prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(format!("{name}-{}", p.label()), texts[0]);
        });
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn golden_split_tunnel() {
    golden("split-tunnel");
}

#[test]
fn golden_full_tunnel() {
    golden("full-tunnel");
}

#[test]
fn golden_split_dns() {
    golden("split-dns");
}

#[test]
fn golden_mtu() {
    golden("mtu");
}

#[test]
fn golden_interop() {
    golden("interop");
}

#[test]
fn golden_bridged() {
    golden("bridged");
}

#[test]
fn a_run_whose_openconnect_fell_back_to_tls_is_told_apart() {
    let dir = std::env::temp_dir().join(format!("tunscope-detour-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(external_detour(&dir), None, "no client log: nothing to say");
    std::fs::write(
        dir.join("client.log"),
        "CSTP connected. DPD 90, Keepalive 32400\nEstablished DTLS connection (using GnuTLS).\n",
    )
    .unwrap();
    assert_eq!(external_detour(&dir), None);
    std::fs::write(
        dir.join("client.log"),
        "CSTP connected. DPD 90, Keepalive 32400\nDTLS handshake failed: Resource temporarily unavailable, try again.\n",
    )
    .unwrap();
    assert!(external_detour(&dir).is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}
