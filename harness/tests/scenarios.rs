//! Scenario files and the scenario runner, end to end (root: namespaces, tun).
//!
//! The suite itself (`cargo xtask suite`) plays every scenario; these tests prove the parts a
//! user relies on: files load or fail with file:line, a passing run produces a pcapng that
//! tshark reads with every interface and stage named, and wrong expectations FAIL with a
//! message that says what was wrong (negative controls).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tunscope_harness::scenario::report::RunReport;
use tunscope_harness::scenario::run::{RunOptions, run};
use tunscope_harness::scenario::{self, Pairing, Scenario, Subject};

fn out_dir(name: &str) -> PathBuf {
    std::env::temp_dir()
        .join("tunscope-tests")
        .join(format!("{name}-{}", std::process::id()))
}

fn play(s: &Scenario, name: &str) -> RunReport {
    let out = out_dir(name);
    let r = run(
        s,
        &RunOptions {
            pairing: Pairing {
                client: Subject::Ours,
                server: Subject::Ours,
            },
            keep: false,
            out: out.clone(),
            verbose: true,
        },
    )
    .expect("scenario run");
    print!("{}", r.verdict_lines());
    r
}

/// The report row whose name starts with `prefix`.
fn row<'a>(r: &'a RunReport, prefix: &str) -> &'a tunscope_harness::scenario::report::CheckReport {
    r.checks
        .iter()
        .find(|c| c.name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no row {prefix}"))
}

/// Each named row failed, its message saying what is given.
fn assert_fail_saying(r: &RunReport, expect: &[(&str, &str)]) {
    for (name, says) in expect {
        let c = row(r, name);
        assert!(!c.passed, "{name} passed");
        assert!(c.message.contains(says), "{name}: message {:?}", c.message);
    }
}

/// Every row not named "WRONG…" passed.
fn assert_right_ones_pass(r: &RunReport) {
    assert!(
        r.checks
            .iter()
            .filter(|c| !c.name.starts_with("WRONG"))
            .all(|c| c.passed),
        "{}",
        r.verdict_lines()
    );
}

fn split_tunnel_text() -> String {
    std::fs::read_to_string(scenario::scenarios_dir().join("split-tunnel.toml")).unwrap()
}

#[test]
fn every_scenario_file_loads() {
    let files = scenario::list().unwrap();
    for required in ["split-tunnel", "full-tunnel", "split-dns", "mtu", "interop"] {
        assert!(
            files
                .iter()
                .any(|p| p.file_stem().unwrap().to_string_lossy() == required),
            "scenarios/{required}.toml is missing"
        );
    }
    for f in files {
        let s = Scenario::load(&f).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        assert!(!s.checks.is_empty());
    }
}

#[test]
fn checks_naming_tun0_mean_the_subjects_own_tunnel_device() {
    // strongSwan's kernel-libipsec calls its device ipsec0: the scenario files' tun0 (a
    // route's device, a connection's or query's interface, a capture interface) means it.
    let s = Scenario::load(&scenario::find("split-tunnel").unwrap()).unwrap();
    assert_eq!(Subject::Ipsec.tunnel_dev(), "ipsec0");
    assert_eq!(Subject::Wireguard.tunnel_dev(), "tun0");
    let before = serde_json::to_string(&s.checks).unwrap();
    let after = serde_json::to_string(&s.on_tunnel_dev("ipsec0").checks).unwrap();
    assert!(before.contains("\"tun0\""), "{before}");
    assert!(!after.contains("tun0"), "{after}");
    assert!(after.contains("\"ipsec0\""), "{after}");
    // Nothing but the device changed (eth0 checks and everything else as written).
    assert_eq!(after.replace("ipsec0", "tun0"), before);
}

#[test]
fn broken_scenario_files_name_file_and_line() {
    let path = Path::new("scenarios/broken.toml");
    let cases = [
        (
            "description = \"x\"\n[tunnel]\nproto = \"sctp\"\n",
            "broken.toml:3",
            "sctp",
        ),
        (
            "description = \"x\"\n\n[[check]]\nname = \"a\"\nkind = \"leak\"\non = \"client/eth0\"\nallow = [\"udp and hots 1.2.3.4\"]\n",
            "broken.toml:3",
            "unknown word 'hots'",
        ),
        (
            "description = \"x\"\n[[check]]\nname = \"a\"\nkind = \"route\"\nto = \"198.19.10.80\"\ndevice = \"tun0\"\n",
            "broken.toml:2",
            "unknown field `device`",
        ),
        (
            "description = \"x\"\n[[check]]\nname = \"a\"\nkind = \"teleport\"\n",
            "broken.toml:2",
            "unknown kind 'teleport'",
        ),
        (
            "description = \"x\"\n[[check]]\nkind = \"teardown\"\n",
            "broken.toml:2",
            "without a 'name'",
        ),
        (
            "description = \"x\"\n[[check]]\nname = \"a\"\nkind = \"leak\"\non = \"laptop/eth0\"\nforbid = [\"dns\"]\n",
            "broken.toml:2",
            "host must be one of",
        ),
        ("description = \"x\"\n", "broken.toml", "no [[check]]"),
        (
            "description = \"x\"\n[[check]]\nname = \"a\"\nkind = \"teardown\"\nexpected_failure = \"\"\n",
            "broken.toml:2",
            "expected_failure must say why",
        ),
        (
            "description = \"x\"\n[topology]\nbridge = true\n[[check]]\nname = \"a\"\nkind = \"teardown\"\n",
            "broken.toml",
            "needs dev = \"tap\"",
        ),
        (
            "description = \"x\"\n[topology]\nclients = 9\n[[check]]\nname = \"a\"\nkind = \"teardown\"\n",
            "broken.toml",
            "clients must be 1–4",
        ),
        (
            "description = \"x\"\n[subjects]\nclient = \"wireguard\"\nserver = \"wireguard\"\n[topology]\nclients = 2\n[[check]]\nname = \"a\"\nkind = \"teardown\"\n",
            "broken.toml",
            "runs OpenVPN clients",
        ),
        (
            "description = \"x\"\n[topology]\nclients = 2\n\n[[check]]\nname = \"a\"\nkind = \"ping\"\nfrom = \"client3\"\nto = \"198.19.10.80\"\n",
            "broken.toml:5",
            "no host 'client3' here",
        ),
        (
            "description = \"x\"\n[[check]]\nname = \"a\"\nkind = \"teardown\"\n\n[[traffic]]\nname = \"t\"\nkind = \"dns\"\nhost = \"a.example\"\nfrom = \"client2\"\n",
            "broken.toml:6",
            "no host 'client2' here",
        ),
        (
            "description = \"x\"\n\n[[check]]\nname = \"a\"\nkind = \"ping\"\nfrom = \"home\"\nto = \"198.19.10.80\"\n",
            "broken.toml:3",
            "no host 'home' here",
        ),
        (
            "description = \"x\"\n\n[[check]]\nname = \"a\"\nkind = \"failover\"\n",
            "broken.toml:3",
            "needs a second server",
        ),
        (
            "description = \"x\"\n[subjects]\nclient = \"ssh\"\nserver = \"ssh\"\n[topology]\nservers = 2\n[[check]]\nname = \"a\"\nkind = \"teardown\"\n",
            "broken.toml",
            "runs OpenVPN servers",
        ),
        (
            "description = \"x\"\n[topology]\nrogue_lan_gateway = true\n[[check]]\nname = \"a\"\nkind = \"teardown\"\n",
            "broken.toml",
            "needs rogue_lan_prefix",
        ),
        (
            "description = \"x\"\n[topology.impair]\nlink = \"moon\"\n[[check]]\nname = \"a\"\nkind = \"teardown\"\n",
            "broken.toml:3",
            "unknown variant `moon`",
        ),
        (
            "description = \"x\"\n[capture]\nsnaplen = 40\n[[check]]\nname = \"a\"\nkind = \"teardown\"\n",
            "broken.toml",
            "snaplen must be at least 128",
        ),
    ];
    for (text, place, what) in cases {
        let e = format!("{:#}", Scenario::parse(path, text).unwrap_err());
        assert!(e.contains(place) && e.contains(what), "{text:?} gave: {e}");
    }
}

#[test]
fn split_tunnel_passes_and_its_pcapng_names_every_interface_and_stage() {
    let s = Scenario::load(&scenario::find("split-tunnel").unwrap()).unwrap();
    let r = play(&s, "split-tunnel");
    assert!(r.passed, "split-tunnel failed:\n{}", r.verdict_lines());
    assert!(r.wall_s < 10.0, "split-tunnel took {:.1} s", r.wall_s);
    // The client namespace was recorded at all three moments, and the tunnel's changes show.
    assert!(
        r.states
            .during
            .routes
            .iter()
            .any(|l| l.starts_with("198.19.10.0/24") && l.contains("tun0"))
    );
    assert!(r.states.during.resolv_conf.contains("127.0.0.1"));
    assert_eq!(r.states.before, r.states.after);
    // DNS transcript: the corp name reached the corp resolver from the tunnel address.
    assert!(r.dns.iter().any(|q| q.server == "corp-dns"
        && q.name == "intranet.corp.example"
        && q.from.ip().to_string() == "198.19.0.2"));

    let out = Command::new("tshark")
        .args(["-r"])
        .arg(&r.files.pcapng)
        .args(["-T", "fields", "-e", "frame.interface_name"])
        .output()
        .expect("tshark runs");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    for want in [
        "client/eth0",
        "client/tun0",
        "client/lo",
        "router/c0",
        "router/s0",
        "server/eth0",
        "server/tun0",
        "server/lan0",
        "corp/eth0",
        "client/read_tun",
        "client/encrypt",
        "client/socket_tx",
        "client/socket_rx",
        "client/decrypt",
        "client/write_tun",
        "server/read_tun",
        "server/encrypt",
        "server/socket_tx",
        "server/socket_rx",
        "server/decrypt",
        "server/write_tun",
    ] {
        assert!(
            names.contains(want),
            "{want} missing from the pcapng: {names:?}"
        );
    }
    // Wireshark decodes the WAN traffic as OpenVPN, one packet per frame.
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(&r.files.pcapng)
        .args([
            "-d",
            "udp.port==1194,openvpn",
            "-Y",
            "frame.interface_name == \"client/eth0\" && openvpn.opcode == 9",
            "-T",
            "fields",
            "-e",
            "openvpn.peerid",
        ])
        .output()
        .unwrap();
    let data_packets = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(
        data_packets > 1000,
        "only {data_packets} P_DATA_V2 packets decoded on client/eth0"
    );
    the_run_page_shows_what_a_person_looks_for(&r);
    let _ = std::fs::remove_dir_all(&r.files.dir);
}

/// The run's HTML page, opened in headless Chromium: the verdict, every check with its
/// verdict, the network's namespaces, the client's changes undone, both engines' six stages
/// each with a non-empty latency histogram, packet journeys, and a screenshot.
fn the_run_page_shows_what_a_person_looks_for(r: &RunReport) {
    use tunscope_harness::html::browser::{count, dump_dom, screenshot};
    let dom = dump_dom(&r.files.html).expect("chromium reads the page");
    assert!(dom.contains("data-verdict=\"pass\">PASSED</span>"));
    for c in &r.checks {
        let cell = format!(
            "data-check=\"{}\" data-verdict=\"pass\"",
            tunscope_harness::html::esc(&c.name)
        );
        assert!(dom.contains(&cell), "no PASS cell for {:?}", c.name);
    }
    assert_eq!(r.topology.len(), 4);
    for h in &r.topology {
        assert!(h.namespace.starts_with("ts-"), "{}", h.namespace);
        assert_eq!(
            count(&dom, "g", &[&format!("data-namespace=\"{}\"", h.namespace)]),
            1,
            "namespace {} not drawn",
            h.namespace
        );
    }
    assert_eq!(count(&dom, "path", &["class=\"tunnel\""]), 1);
    assert!(dom.contains("data-restored=\"true\""));
    assert!(dom.contains("intranet.corp.example"), "DNS transcript");
    for stage in tunscope_proto::stage::Stage::DATA_PATH.map(|s| s.name()) {
        let hists = count(
            &dom,
            "div",
            &["class=\"hist\"", &format!("data-stage=\"{stage}\"")],
        );
        assert_eq!(hists, 2, "{stage}: one histogram per engine");
    }
    // Every histogram has packets in it (a bucket of height > 0).
    let filled = dom
        .split("<div class=\"hist\"")
        .skip(1)
        .filter_map(|h| h.split("</div>").next())
        .filter(|h| h.matches("data-count=\"").count() > h.matches("data-count=\"0\"").count())
        .count();
    assert_eq!(filled, 12, "every stage histogram holds packets");
    let journeys = count(&dom, "g", &["class=\"journey\""]);
    assert!(journeys >= 8, "{journeys} journeys drawn");
    assert!(count(&dom, "rect", &["class=\"hop\""]) >= journeys * 6);
    let png = r.files.dir.join("report.png");
    let bytes = screenshot(&r.files.html, &png, 3000).expect("screenshot");
    assert!(bytes > 50_000, "a {bytes}-byte screenshot of a full page");
}

/// Deliberately wrong expectations against a working tunnel: each must FAIL and say why,
/// while the right ones next to them still pass.
#[test]
fn negative_controls_fail_with_clear_messages() {
    let mut text = split_tunnel_text();
    text.push_str(
        r#"
[[check]]
name = "WRONG: corp route expected absent"
kind = "route"
prefix = "198.19.10.0/24"
present = false

[[check]]
name = "WRONG: corp name expected from the public resolver over the WAN"
kind = "resolve"
host = "intranet.corp.example"
resolver = "public-dns"
via = "eth0"

[[check]]
name = "WRONG: the intranet expected to answer with the public page"
kind = "http"
url = "http://intranet.corp.example/"
body = "public-web"

[[check]]
name = "WRONG: no DNS at all on the WAN"
kind = "leak"
on = "client/eth0"
forbid = ["dns"]

[[check]]
name = "WRONG: corp web expected unreachable"
kind = "ping"
to = "198.19.10.80"
fails = true

[[check]]
name = "WRONG: a working corp route declared a known failure"
kind = "route"
to = "198.19.10.80"
dev = "tun0"
expected_failure = "pretend the corp route is broken"
"#,
    );
    let s = Scenario::parse(&scenario::scenarios_dir().join("negative.toml"), &text).unwrap();
    let r = play(&s, "negative");
    assert!(!r.passed);
    let get = |prefix: &str| row(&r, prefix);
    assert_fail_saying(
        &r,
        &[
            (
                "WRONG: corp route",
                "route 198.19.10.0/24 is present, expected absent",
            ),
            (
                "WRONG: corp name",
                "was asked of corp-dns by the client, expected public-dns only",
            ),
            ("WRONG: the intranet", "does not contain \"public-web\""),
            ("WRONG: no DNS", "break the rules; first:"),
            ("WRONG: corp web", "answered 3 of 3 pings, expected none"),
            (
                "WRONG: a working corp route",
                "expected to fail (pretend the corp route is broken), but passed",
            ),
        ],
    );
    // The WAN DNS leak names the offending packet; the via mismatch is in the evidence.
    assert!(get("WRONG: no DNS").message.contains("198.18.100.53:53"));
    assert!(
        get("WRONG: corp name")
            .evidence
            .iter()
            .any(|e| e.contains("left the client on tun0, expected eth0"))
    );
    // The correct checks of the same run are unaffected.
    assert_right_ones_pass(&r);
    // The report says so too.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&r.files.report).unwrap()).unwrap();
    assert_eq!(json["passed"], false);
    failures_show_on_the_run_and_suite_pages(&r);
    let _ = std::fs::remove_dir_all(&r.files.dir);
}

/// The failed run's page says FAILED and marks each wrong check; a suite page holding the
/// run and a broken run shows both cells, the failing one linking to that page.
fn failures_show_on_the_run_and_suite_pages(r: &RunReport) {
    use tunscope_harness::html::browser::{count, dump_dom, screenshot};
    use tunscope_harness::html::suite::{self, SuiteRow};
    use tunscope_harness::scenario::report::RunError;
    let dom = dump_dom(&r.files.html).expect("chromium reads the run page");
    assert!(dom.contains("data-verdict=\"fail\">FAILED</span>"));
    let failed = count(&dom, "td", &["data-verdict=\"fail\""]);
    assert_eq!(failed, r.checks.iter().filter(|c| !c.passed).count());
    // A failing check's evidence is open to read.
    assert!(dom.contains("<details open=\"\">") || dom.contains("<details open>"));

    let dir = r.files.dir.parent().unwrap().join("suite-page");
    std::fs::create_dir_all(&dir).unwrap();
    let rows = vec![
        SuiteRow::of_run(r, &dir),
        SuiteRow::of_error(&RunError {
            scenario: "split-tunnel".into(),
            pairing: "openvpn-ours".into(),
            error: "the tunnel did not come up".into(),
        }),
    ];
    let page = suite::write(&dir, "suite test", &rows, r.wall_s).unwrap();
    let dom = dump_dom(&page).expect("chromium reads the suite page");
    let cell = format!("data-run=\"{} [ours-ours]\"", r.scenario);
    assert_eq!(
        count(&dom, "td", &["class=\"cell fail\"", &cell]),
        1,
        "{dom}"
    );
    assert_eq!(
        count(
            &dom,
            "td",
            &[
                "class=\"cell error\"",
                "data-run=\"split-tunnel [openvpn-ours]\""
            ]
        ),
        1
    );
    assert!(dom.contains("the tunnel did not come up"));
    assert!(dom.contains("2 runs: <span class=\"pass\">0 passed</span>, <span class=\"fail\">1 failed</span>, 1 broken"));
    // The failing cell's link reaches the run's page.
    let href = rows[0].href.clone().unwrap();
    assert!(dom.contains(&format!("href=\"{href}\"")));
    assert!(dir.join(&href).exists(), "{href} from {}", dir.display());
    let bytes = screenshot(&page, &dir.join("suite.png"), 600).expect("screenshot");
    assert!(bytes > 5_000, "{bytes}-byte screenshot");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The automatic leak oracle's negative control: a scenario that declares no leak check at
/// all, with one request forced out of the WAN interface to a destination the tunnel routes.
/// The request's own check passes (it fails, as it says); the oracle fails the run and names
/// the packet.
#[test]
fn the_leak_oracle_catches_what_no_check_declared() {
    let text = r#"
description = "oracle negative control"
[tunnel]
push = ["route 198.19.10.0 255.255.255.0"]

[[check]]
name = "the corp web answers through the tunnel"
kind = "http"
url = "http://198.19.10.80/"
body = "corp-web"
via = "tun0"

[[check]]
name = "a request to the corp web forced out of the WAN interface"
kind = "http"
url = "http://198.19.10.80/"
interface = "eth0"
fails = true
"#;
    let s = Scenario::parse(&scenario::scenarios_dir().join("oracle.toml"), text).unwrap();
    let r = play(&s, "oracle");
    assert!(!r.passed, "{}", r.verdict_lines());
    let failed: Vec<_> = r.checks.iter().filter(|c| !c.passed).collect();
    assert_eq!(failed.len(), 1, "{}", r.verdict_lines());
    assert_eq!(failed[0].kind, "leak-oracle");
    assert!(
        failed[0]
            .message
            .contains("198.19.10.80 is routed into the tunnel"),
        "{}",
        failed[0].message
    );
    let _ = std::fs::remove_dir_all(&r.files.dir);
}

/// `cargo xtask suite --partition K/N`: for any N the shards add up to the whole suite, no
/// run in two shards, none missed; a run's shard depends only on its label.
#[test]
fn suite_shards_add_up_to_the_suite() {
    let runs = scenario::suite_runs().unwrap();
    let labels: Vec<String> = runs.iter().map(|r| r.label()).collect();
    assert!(labels.len() > 30, "{} runs", labels.len());
    let unique: std::collections::BTreeSet<&String> = labels.iter().collect();
    assert_eq!(unique.len(), labels.len(), "every run has its own label");
    for n in 1..=6u32 {
        let mut seen = std::collections::BTreeMap::new();
        for k in 1..=n {
            for l in labels.iter().filter(|l| scenario::in_shard(l, k, n)) {
                assert!(
                    seen.insert(l.clone(), k).is_none(),
                    "{l} in two shards of {n}"
                );
            }
        }
        assert_eq!(seen.len(), labels.len(), "shards of {n} miss runs");
    }
    assert!(scenario::parse_partition("0/3").is_err());
    assert!(scenario::parse_partition("4/3").is_err());
    assert_eq!(scenario::parse_partition("2/3").unwrap(), (2, 3));
}

/// `[[traffic]]`: the corp-load scenario's loads run at once and pass, and loads with wrong
/// expectations next to them fail and say why — a rate the tunnel cannot reach, a name the
/// corp resolver does not know, an address no namespace holds.
#[test]
fn traffic_loads_run_at_once_and_wrong_expectations_fail() {
    let mut text =
        std::fs::read_to_string(scenario::scenarios_dir().join("corp-load.toml")).unwrap();
    text.push_str(
        r#"
[[traffic]]
name = "WRONG: 900 Mbit/s asked of a 10 Mbit/s stream"
kind = "iperf3"
to = "198.19.10.80"
seconds = 2
mbps = 10
min_mbps = 900

[[traffic]]
name = "WRONG: a name the corp resolver does not know"
kind = "dns"
host = "nosuch.corp.example"
queries = 5
rate = 10

[[traffic]]
name = "WRONG: an address no host of the scenario holds"
kind = "iperf3"
to = "198.18.99.99"
seconds = 1
"#,
    );
    let s = Scenario::parse(&scenario::scenarios_dir().join("load-negative.toml"), &text).unwrap();
    assert_eq!(s.traffic.len(), 7);
    let r = play(&s, "load-negative");
    let get = |prefix: &str| row(&r, prefix);
    assert_fail_saying(
        &r,
        &[
            ("WRONG: 900", "below the 900 Mbit/s asked for"),
            ("WRONG: a name", "5 of 5 questions failed"),
            (
                "WRONG: an address",
                "no namespace of the scenario holds 198.18.99.99",
            ),
        ],
    );
    for name in ["WRONG: 900", "WRONG: a name", "WRONG: an address"] {
        assert!(get(name).kind.starts_with("traffic-"), "{}", get(name).kind);
    }
    assert!(
        get("WRONG: a name")
            .evidence
            .iter()
            .any(|e| e.contains("failed: answer")),
        "the DNS answer's code is in the evidence"
    );
    assert_right_ones_pass(&r);
    // The two 3 s iperf3 loads measured what they asked for, within their bounds.
    let up = get("two TCP streams upload");
    assert!(
        up.message
            .contains("iperf3 TCP 2 stream(s) for 3 s to 198.19.10.80")
    );
    assert!(up.duration_ms >= 3000, "{}", up.duration_ms);
    // Run at once, not one after another: the loads' durations add up to more than the
    // whole run took.
    let busy: u64 = r
        .checks
        .iter()
        .filter(|c| c.kind.starts_with("traffic-"))
        .map(|c| c.duration_ms)
        .sum();
    assert!(
        busy as f64 / 1000.0 > r.wall_s,
        "loads took {busy} ms in all, the run {:.1} s",
        r.wall_s
    );
    let _ = std::fs::remove_dir_all(&r.files.dir);
}
