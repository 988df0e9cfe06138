//! `cargo xtask bench tunnel`: end-to-end TCP throughput through a tunnel, side by side with
//! the references in the same run on the same machine:
//!
//! * `veth` — plain veth between the namespaces (no tunnel; the machine's ceiling);
//! * `openvpn↔openvpn` — stock OpenVPN 2.6 client and server (the reference to beat);
//! * `tunscope↔openvpn` — our client against the stock server;
//! * `openvpn↔tunscope`, `tunscope↔tunscope` — stock and our client against our server;
//! * `wireguard-go↔wireguard-go` — userspace WireGuard (Debian's), and `ssh -w↔sshd` —
//!   OpenSSH's tunnel: the other VPNs beside us.
//!
//! iperf3 single stream, client → server, `--seconds` per repetition, median of `--reps`.
//! CPU is the tunnel processes' user+system time over the run, in % of one core.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tunscope_harness::ipsec::Ipsec;
use tunscope_harness::netns::Netns;
use tunscope_harness::openconnect::OpenConnect;
use tunscope_harness::p2p::Ends;
use tunscope_harness::pki::Pki;
use tunscope_harness::process::Proc;
use tunscope_harness::ssh::Ssh;
use tunscope_harness::subjects::{self, Implementation, Proto, TunnelSpec};
use tunscope_harness::topo::{SERVER_WAN, Star, TwoHosts};
use tunscope_harness::wireguard::WireGuard;
use tunscope_proto::stage::Stage;

use crate::bench_report::{BenchRun, Machine, PathResult, Rep};
use crate::bench_rtt;
use crate::{cargo, project_root, run as run_cmd};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Anchor {
    Veth,
    Stock,
    Ours,
    OursServer,
    OursBoth,
    /// wireguard-go ↔ wireguard-go (the userspace WireGuard on this machine).
    WireGuard,
    /// ssh -w ↔ sshd (OpenSSH's point-to-point tunnel).
    Ssh,
    /// openconnect ↔ ocserv (the AnyConnect protocol, DTLS data channel).
    OpenConnect,
    /// strongSwan ↔ strongSwan (IKEv2, userspace ESP in UDP through kernel-libipsec).
    Ipsec,
}

impl Anchor {
    fn label(self) -> &'static str {
        match self {
            Anchor::Veth => "veth (no tunnel)",
            Anchor::Stock => "openvpn client ↔ openvpn server",
            Anchor::Ours => "tunscope client ↔ openvpn server",
            Anchor::OursServer => "openvpn client ↔ tunscope server",
            Anchor::OursBoth => "tunscope client ↔ tunscope server",
            Anchor::WireGuard => "wireguard-go ↔ wireguard-go",
            Anchor::Ssh => "ssh -w ↔ sshd",
            Anchor::OpenConnect => "openconnect ↔ ocserv",
            Anchor::Ipsec => "strongSwan ↔ strongSwan (kernel-libipsec)",
        }
    }

    /// Not OpenVPN: one client, set up by the harness's subject module.
    fn is_other_vpn(self) -> bool {
        matches!(
            self,
            Anchor::WireGuard | Anchor::Ssh | Anchor::OpenConnect | Anchor::Ipsec
        )
    }

    fn client(self) -> Implementation {
        match self {
            Anchor::Ours | Anchor::OursBoth => Implementation::Ours,
            _ => Implementation::OpenVpn,
        }
    }

    fn server(self) -> Implementation {
        match self {
            Anchor::OursServer | Anchor::OursBoth => Implementation::Ours,
            _ => Implementation::OpenVpn,
        }
    }
}

struct Sample {
    gbps: f64,
    retransmits: u64,
    cpu_client: f64,
    cpu_server: f64,
    /// User and system CPU (% of one core) of client and server.
    split: [(f64, f64); 2],
    /// Our engines' time per data-path stage over the run (ns), client and server.
    stages: [Option<[u64; 6]>; 2],
    /// Average ping round trip through the path while idle (ms).
    rtt_ms: f64,
    /// Average ping round trip with the path's processes and ping on one core, 2 ms apart
    /// (ms; see `bench_rtt`).
    rtt_one_core_ms: f64,
}

impl Sample {
    /// The repetition as the bench's files keep it.
    fn rep(&self) -> Rep {
        Rep {
            gbps: self.gbps,
            retransmits: self.retransmits,
            cpu: self.split,
            stages: self.stages,
            rtt_ms: self.rtt_ms,
            rtt_one_core_ms: self.rtt_one_core_ms,
        }
    }
}

/// Busy time per stage from an engine's control socket.
fn stage_busy(sock: &std::path::Path) -> Option<[u64; 6]> {
    let r = tunscope_engine::control_socket::query(sock).ok()?;
    let mut out = [0u64; 6];
    for (i, stage) in Stage::DATA_PATH.iter().enumerate() {
        out[i] = r.totals.stage(stage.name())?.busy_ns;
    }
    Some(out)
}

/// The median of one figure over the repetitions of a path.
fn median_of(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let mut g: Vec<f64> = v.iter().map(f).collect();
    g.sort_by(f64::total_cmp);
    g.get(g.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Each stage's share of an engine's data-path time, as `stage NN%` items.
fn shares(busy: &[u64; 6]) -> String {
    let total: u64 = busy.iter().sum();
    if total == 0 {
        return "no samples".into();
    }
    Stage::DATA_PATH
        .iter()
        .zip(busy)
        .filter(|(_, b)| **b > 0)
        .map(|(n, b)| format!("{} {:.0}%", n.name(), *b as f64 * 100.0 / total as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Installs what benches use and builds the release binary the harness then starts.
pub fn build_release() -> Result<()> {
    crate::deps::ensure()?;
    run_cmd(cargo().args([
        "build",
        "--release",
        "-p",
        "tunscope-engine",
        "--bin",
        "tunscope",
    ]))?;
    // SAFETY: single-threaded at this point; the variable is read by the harness later.
    unsafe {
        std::env::set_var(
            "TUNSCOPE_BIN",
            project_root().join("target/release/tunscope"),
        )
    };
    Ok(())
}

/// Entry point: `bench tunnel [--seconds N] [--reps N] [--proto udp|tcp] [--cipher NAME]`.
pub fn run(args: &[&str]) -> Result<()> {
    match args.first().copied() {
        Some("tunnel") => tunnel(&args[1..]),
        Some("probes") => probes(&args[1..]),
        Some("capture") => capture(&args[1..]),
        Some("mtu") => crate::bench_mtu::run(&args[1..]),
        _ => bail!(
            "usage: cargo xtask bench tunnel [--seconds N] [--reps N] [--proto udp|tcp] [--cipher NAME] [--streams N] [--clients N] [--threads N] [--rx-threads N] [--reverse] [--scaling] [--paths veth,stock,client,server,both,wireguard,ssh,openconnect,ipsec] [--out DIR]\n       cargo xtask bench mtu [--seconds N] [--mtus 1280,1400,1500,9000] [--ciphers A,B] [--transit BYTES]\n       cargo xtask bench probes [--seconds N] [--reps N]\n       cargo xtask bench capture FILE [--reps N]"
        ),
    }
}

/// The value after `name` in `args`.
pub(crate) fn flag<'a>(args: &'a [&'a str], name: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1])
}

fn tunnel(args: &[&str]) -> Result<()> {
    let secs: u64 = flag(args, "--seconds")
        .map_or(Ok(10), str::parse)
        .context("--seconds")?;
    let reps: usize = flag(args, "--reps")
        .map_or(Ok(3), str::parse)
        .context("--reps")?;
    let proto = match flag(args, "--proto").unwrap_or("udp") {
        "udp" => Proto::Udp,
        "tcp" => Proto::Tcp,
        p => bail!("unknown --proto {p}"),
    };
    let cipher = flag(args, "--cipher").unwrap_or("AES-256-GCM").to_owned();
    let streams: u32 = flag(args, "--streams")
        .map_or(Ok(1), str::parse)
        .context("--streams")?;
    let clients: usize = flag(args, "--clients")
        .map_or(Ok(1), str::parse)
        .context("--clients")?;
    // Downloads (iperf3 -R): the server sends, the clients receive.
    let reverse = args.contains(&"--reverse");
    // Our server's receive and send threads and our clients' send threads (stock openvpn has
    // one thread).
    let threads: usize = flag(args, "--threads")
        .map_or(Ok(1), str::parse)
        .context("--threads")?;
    // Our clients' receive threads (`tunscope client --rx-threads N`), for downloads.
    let client_rx: usize = flag(args, "--rx-threads")
        .map_or(Ok(1), str::parse)
        .context("--rx-threads")?;
    build_release()?;

    // Both sides offer only the cipher under test (a CBC cipher is in no default list).
    let spec = TunnelSpec {
        proto,
        server_ciphers: vec![cipher.clone()],
        client_ciphers: Some(vec![cipher.clone()]),
        ..TunnelSpec::default()
    };
    // `--paths veth,stock,client,server,both,wireguard`: a subset (profiling one path); all by
    // default.
    let all = [
        ("veth", Anchor::Veth),
        ("stock", Anchor::Stock),
        ("client", Anchor::Ours),
        ("server", Anchor::OursServer),
        ("both", Anchor::OursBoth),
        ("wireguard", Anchor::WireGuard),
        ("ssh", Anchor::Ssh),
        ("openconnect", Anchor::OpenConnect),
        ("ipsec", Anchor::Ipsec),
    ];
    let chosen: Vec<Anchor> = match flag(args, "--paths") {
        // WireGuard here has one peer: with several clients it sits out unless asked for.
        None => all
            .iter()
            .map(|(_, a)| *a)
            .filter(|a| clients == 1 || !a.is_other_vpn())
            .collect(),
        Some(list) => list
            .split(',')
            .map(|n| {
                all.iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, a)| *a)
                    .with_context(|| {
                        format!(
                            "--paths: unknown path {n} (veth, stock, client, server, both, wireguard, ssh, openconnect, ipsec)"
                        )
                    })
            })
            .collect::<Result<_>>()?,
    };
    // `--scaling`: the whole measurement confined to the first 1, 2, … N CPUs in turn (the
    // processes it starts inherit the affinity), our server with as many receive threads.
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scaling = args.contains(&"--scaling");
    let core_counts: Vec<usize> = if scaling {
        (1..=ncpu).collect()
    } else {
        vec![ncpu]
    };
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut results = vec![];
    let total = core_counts.len() * chosen.len() * reps;
    let started = std::time::Instant::now();
    let mut done = 0;
    for &cores in &core_counts {
        let threads = Threads {
            engine: if scaling { cores } else { threads },
            client_rx,
        };
        if scaling {
            confine_to(cores)?;
        }
        let mut rows = vec![];
        for &anchor in &chosen {
            let mut samples = vec![];
            for rep in 0..reps {
                eprintln!(
                    "── {} rep {}{}  ({})",
                    anchor.label(),
                    rep + 1,
                    if scaling {
                        format!(", {cores} core(s)")
                    } else {
                        String::new()
                    },
                    crate::scenario::progress(done, total, started.elapsed())
                );
                done += 1;
                let s = measure(anchor, &spec, secs, streams, clients, threads, reverse)
                    .with_context(|| format!("{} rep {}", anchor.label(), rep + 1))?;
                eprintln!(
                    "{:<34} rep {}: {:.3} Gbit/s, {} retransmits, cpu {:.0}%/{:.0}%, rtt {:.3} ms idle, {:.3} ms on one core",
                    anchor.label(),
                    rep + 1,
                    s.gbps,
                    s.retransmits,
                    s.cpu_client,
                    s.cpu_server,
                    s.rtt_ms,
                    s.rtt_one_core_ms
                );
                samples.push(s);
            }
            rows.push((anchor, samples));
        }
        println!(
            "\nTCP throughput, {proto:?} tunnel, {cipher}, {clients} client(s) × iperf3 {streams} stream(s) ({}), our server with {} receive and send thread(s), our clients with {} send and {} receive thread(s), {secs} s × {reps}{} (median; clients summed)\n",
            if reverse { "downloads" } else { "uploads" },
            threads.engine,
            threads.engine,
            threads.client_rx,
            if scaling {
                format!(", confined to {cores} of {ncpu} CPUs")
            } else {
                String::new()
            }
        );
        print_tables(&rows);
        for (anchor, samples) in rows {
            results.push(PathResult {
                key: all
                    .iter()
                    .find(|(_, a)| *a == anchor)
                    .map_or("?", |(k, _)| *k)
                    .to_owned(),
                label: anchor.label().to_owned(),
                cores,
                threads: threads.engine,
                client_rx_threads: threads.client_rx,
                reps: samples.iter().map(Sample::rep).collect(),
            });
        }
    }
    if scaling {
        confine_to(ncpu)?;
    }
    let run = BenchRun {
        started_unix,
        machine: Machine::this(),
        proto: format!("{proto:?}").to_uppercase(),
        cipher: cipher.clone(),
        seconds: secs,
        streams,
        clients,
        direction: if reverse { "download" } else { "upload" }.into(),
        paths: results,
    };
    let scaling_rows = run.scaling();
    if !scaling_rows.is_empty() {
        println!(
            "\nScaling over cores (median Gbit/s; Amdahl fitted to the speedup at {ncpu} cores)\n"
        );
        println!(
            "| path | Gbit/s at 1..{ncpu} cores | speedup | serial fraction | predicted on 16 cores |"
        );
        println!("|---|---|---|---|---|");
        for crate::bench_report::ScalingRow {
            label,
            gbps: figs,
            fit,
        } in &scaling_rows
        {
            let f: Vec<String> = figs.iter().map(|g| format!("{g:.3}")).collect();
            let speedup = figs.last().copied().unwrap_or(f64::NAN)
                / figs.first().copied().unwrap_or(f64::NAN);
            let (serial, pred) = fit.map_or(("no fit".to_owned(), "—".to_owned()), |(s, p)| {
                (
                    format!("{s:.2}"),
                    format!(
                        "{:.3} Gbit/s ({p:.2}×)",
                        figs.first().copied().unwrap_or(f64::NAN) * p
                    ),
                )
            });
            println!(
                "| {label} | {} | {speedup:.2}× | {serial} | {pred} |",
                f.join(" → ")
            );
        }
    }
    let out = flag(args, "--out").map_or_else(
        || {
            project_root()
                .join("target/bench")
                .join(format!("tunnel-{started_unix}"))
        },
        std::path::PathBuf::from,
    );
    let page = run.write(&out)?;
    println!(
        "\nbench.json, bench.csv: {}\npage: {}",
        out.display(),
        page.display()
    );
    Ok(())
}

/// Confines this process, and so every process it starts from now on, to the first `n` CPUs.
fn confine_to(n: usize) -> Result<()> {
    if !bench_rtt::set_affinity(0, &bench_rtt::cpu_set(0..n)) {
        bail!(
            "sched_setaffinity to {n} CPUs: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The terminal tables of one core count: throughput per path, then the time shares.
fn print_tables(rows: &[(Anchor, Vec<Sample>)]) {
    let median = |v: &[Sample]| median_of(v, |s| s.gbps);
    let median_rtt = |v: &[Sample]| median_of(v, |s| s.rtt_ms);
    let median_rtt1 = |v: &[Sample]| median_of(v, |s| s.rtt_one_core_ms);
    let of_path = |anchor: Anchor, f: &dyn Fn(&[Sample]) -> f64| {
        rows.iter()
            .find(|(a, _)| *a == anchor)
            .map_or(f64::NAN, |(_, s)| f(s))
    };
    let stock = of_path(Anchor::Stock, &median);
    println!(
        "| path | median Gbit/s | reps | vs stock | tunnel CPU client / server (% core) | ping RTT ms idle | ping RTT ms one core |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (anchor, s) in rows {
        let m = median(s);
        let reps: Vec<String> = s.iter().map(|x| format!("{:.3}", x.gbps)).collect();
        let cpu = if *anchor == Anchor::Veth {
            "n/a".to_owned()
        } else {
            format!(
                "{:.0} / {:.0}",
                median_of(s, |x| x.cpu_client),
                median_of(s, |x| x.cpu_server)
            )
        };
        println!(
            "| {} | **{m:.3}** | {} | {:.2}× | {cpu} | {:.3} | {:.3} |",
            anchor.label(),
            reps.join(", "),
            m / stock,
            median_rtt(s),
            median_rtt1(s)
        );
    }
    let veth = of_path(Anchor::Veth, &median);
    let veth_rtt = of_path(Anchor::Veth, &median_rtt);
    let veth_rtt1 = of_path(Anchor::Veth, &median_rtt1);
    if let Some((_, s)) = rows.iter().find(|(a, _)| *a == Anchor::OursBoth) {
        println!(
            "\ntunscope ↔ tunscope: {:.2}× stock, {:.3} of plain veth, ping RTT +{:.3} ms over veth idle, +{:.3} ms on one core",
            median(s) / stock,
            median(s) / veth,
            median_rtt(s) - veth_rtt,
            median_rtt1(s) - veth_rtt1
        );
    }
    if let Some((_, s)) = rows.iter().find(|(a, _)| *a == Anchor::Stock) {
        println!(
            "openvpn ↔ openvpn: ping RTT +{:.3} ms over veth idle, +{:.3} ms on one core",
            median_rtt(s) - veth_rtt,
            median_rtt1(s) - veth_rtt1
        );
    }
    println!(
        "(idle: 200 ms apart, where the scheduler puts each thread; one core: the tunnel's processes and ping confined to one CPU, 2 ms apart, where ping yields rather than sleeps: no wake-up crosses cores, the core never idles)"
    );
    println!(
        "\nWhere the time goes (our engines' stage probes over the whole run; CPU user/system % of one core, median rep)\n"
    );
    println!("| path | side | CPU user / sys | stage shares of data-path time |");
    println!("|---|---|---|---|");
    for (anchor, s) in rows {
        if *anchor == Anchor::Veth {
            continue;
        }
        let mut order: Vec<&Sample> = s.iter().collect();
        order.sort_by(|a, b| a.gbps.total_cmp(&b.gbps));
        let Some(mid) = order.get(order.len() / 2) else {
            continue;
        };
        for (i, side) in ["client", "server"].iter().enumerate() {
            let (u, y) = mid.split[i];
            let st = mid.stages[i].map_or("(not ours: no probes)".to_owned(), |b| shares(&b));
            println!("| {} | {side} | {u:.0} / {y:.0} | {st} |", anchor.label());
        }
    }
}

/// `bench probes`: tunscope ↔ tunscope throughput with stage probes compiled in (the
/// default build) and compiled out (`--no-default-features`), repetitions interleaved so
/// both builds see the same machine conditions.
fn probes(args: &[&str]) -> Result<()> {
    let secs: u64 = flag(args, "--seconds")
        .map_or(Ok(10), str::parse)
        .context("--seconds")?;
    let reps: usize = flag(args, "--reps")
        .map_or(Ok(5), str::parse)
        .context("--reps")?;
    crate::deps::ensure()?;
    let release = project_root().join("target/release");
    let mut bins = vec![];
    for (label, extra) in [
        ("probes on", &[][..]),
        ("probes off", &["--no-default-features"][..]),
    ] {
        run_cmd(
            cargo()
                .args([
                    "build",
                    "--release",
                    "-p",
                    "tunscope-engine",
                    "--bin",
                    "tunscope",
                ])
                .args(extra),
        )?;
        let dst = release.join(format!("tunscope-{}", label.replace(' ', "-")));
        std::fs::copy(release.join("tunscope"), &dst)?;
        bins.push((label, dst));
    }
    let spec = TunnelSpec::default();
    let mut results: Vec<(&str, Vec<Sample>)> = bins.iter().map(|(l, _)| (*l, vec![])).collect();
    for rep in 0..reps {
        for (i, (label, bin)) in bins.iter().enumerate() {
            // SAFETY: single-threaded here; read by the harness when it starts processes.
            unsafe { std::env::set_var("TUNSCOPE_BIN", bin) };
            let s = measure(Anchor::OursBoth, &spec, secs, 1, 1, Threads::ONE, false)
                .with_context(|| format!("{label} rep {}", rep + 1))?;
            eprintln!(
                "{label:<11} rep {}: {:.3} Gbit/s, cpu {:.0}%/{:.0}%",
                rep + 1,
                s.gbps,
                s.cpu_client,
                s.cpu_server
            );
            results[i].1.push(s);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\ntunscope client ↔ tunscope server, UDP, AES-256-GCM, iperf3 {secs} s × {reps}, interleaved (median)\n"
    );
    println!("| build | median Gbit/s | reps | CPU client / server (% core) | CPU per Gbit/s |");
    println!("|---|---|---|---|---|");
    let mut base = None;
    for (label, samples) in &results {
        let mut g: Vec<f64> = samples.iter().map(|s| s.gbps).collect();
        let mut c: Vec<f64> = samples.iter().map(|s| s.cpu_client).collect();
        let mut d: Vec<f64> = samples.iter().map(|s| s.cpu_server).collect();
        let reps: Vec<String> = samples.iter().map(|s| format!("{:.3}", s.gbps)).collect();
        let (gm, cm, dm) = (med(&mut g), med(&mut c), med(&mut d));
        println!(
            "| {label} | **{gm:.3}** | {} | {cm:.0} / {dm:.0} | {:.0} |",
            reps.join(", "),
            (cm + dm) / gm
        );
        base.get_or_insert(gm);
        if let Some(b) = base.filter(|_| *label != "probes on") {
            println!("\nprobes on / probes off throughput: {:.3}", b / gm);
        }
    }
    Ok(())
}

/// utime and stime of a process and its descendants (sshd serves a tunnel from a grandchild
/// of the listener), in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    crate::bench_rtt::process_tree(pid, 3)
        .into_iter()
        .map(own_cpu_ticks)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// utime and stime of one process in clock ticks.
fn own_cpu_ticks(pid: u32) -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0, 0);
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (get(11), get(12))
}

/// The namespaces of one measurement: a veth pair for one client, a bridge for several.
enum Topo {
    Two(TwoHosts),
    Star(Star),
}

impl Topo {
    fn new(clients: usize) -> Result<Topo> {
        Ok(if clients <= 1 {
            Topo::Two(TwoHosts::new()?)
        } else {
            Topo::Star(Star::new(clients)?)
        })
    }

    fn server(&self) -> &Netns {
        match self {
            Topo::Two(t) => &t.server,
            Topo::Star(s) => &s.server,
        }
    }

    fn clients(&self) -> Vec<&Netns> {
        match self {
            Topo::Two(t) => vec![&t.client],
            Topo::Star(s) => s.clients.iter().collect(),
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Topo::Two(t) => &t.dir,
            Topo::Star(s) => &s.dir,
        }
    }
}

/// One repetition of one path: `clients` clients, each running iperf3 with `streams`
/// streams to the server at once (from it with `reverse`); throughput summed.
/// Data threads of our engines in a measurement.
#[derive(Clone, Copy)]
struct Threads {
    /// `--threads` of our server (receive and send) and our clients (send).
    engine: usize,
    /// `--rx-threads` of our clients.
    client_rx: usize,
}

impl Threads {
    const ONE: Threads = Threads {
        engine: 1,
        client_rx: 1,
    };
}

fn measure(
    anchor: Anchor,
    spec: &TunnelSpec,
    secs: u64,
    streams: u32,
    clients: usize,
    threads: Threads,
    reverse: bool,
) -> Result<Sample> {
    let hosts = Topo::new(clients)?;
    let dir = hosts.dir().to_owned();
    let mut procs: Vec<Proc> = vec![];
    let target: Ipv4Addr = if anchor == Anchor::Veth {
        SERVER_WAN
    } else if anchor.is_other_vpn() {
        let Topo::Two(two) = &hosts else {
            bail!(
                "the wireguard, ssh, openconnect and ipsec paths run with one client (--clients 1)"
            );
        };
        let ends = Ends {
            client: &two.client,
            server: &two.server,
            endpoint: SERVER_WAN,
            gateway: None,
            prefix: &two.prefix,
        };
        let within = Duration::from_secs(15);
        // Client first, the server last, as for the other paths.
        if anchor == Anchor::Ssh {
            let t = Ssh::between(&ends, &[], None, &dir, within, false)?;
            procs.push(t.client);
            procs.push(t.server);
        } else if anchor == Anchor::OpenConnect {
            // Split: only the tunnel network (ocserv gives a full tunnel without routes).
            let push = ["route 198.19.0.0 255.255.255.0".to_owned()];
            let oc = OpenConnect::between(&ends, &push, None, &dir, within)?;
            procs.push(oc.client);
            procs.push(oc.server);
        } else if anchor == Anchor::Ipsec {
            // The server's inner address (198.19.0.1) is always in the selectors.
            let t = Ipsec::between(&ends, &[], None, &dir, within)?;
            procs.push(t.client);
            procs.push(t.server);
        } else {
            let wg = WireGuard::between(&ends, &[], None, &dir, within)?;
            procs.push(wg.client);
            procs.push(wg.server);
        }
        spec.server_tun_ip()
    } else {
        let pki = Pki::generate(&dir.join("pki"))?;
        let sconf = dir.join("server.conf");
        std::fs::write(&sconf, spec.server_config(&pki, &dir)?)?;
        let slog = dir.join("server.log");
        let ssock = dir.join("server.sock");
        let mut server = match anchor.server() {
            Implementation::Ours => subjects::start_tunscope_server_with(
                hosts.server(),
                &sconf,
                &slog,
                &[
                    "--control",
                    ssock.to_str().context("utf-8 path")?,
                    "--threads",
                    &threads.engine.to_string(),
                ],
            )?,
            Implementation::OpenVpn => {
                subjects::start_server(Implementation::OpenVpn, hosts.server(), &sconf, &slog)?
            }
        };
        subjects::wait_ready(&mut server, Duration::from_secs(15))?;
        for (i, ns) in hosts.clients().into_iter().enumerate() {
            let (cert, key) = pki.client(&format!("client{}", i + 1))?;
            let cconf = dir.join(format!("client{i}.conf"));
            std::fs::write(
                &cconf,
                spec.client_config(&pki, &cert, &key, SERVER_WAN, &dir)?,
            )?;
            let clog = dir.join(format!("client{i}.log"));
            // The first client's stage probes stand for all of them.
            let csock = dir.join(if i == 0 {
                "client.sock".to_owned()
            } else {
                format!("client{i}.sock")
            });
            let mut client = match anchor.client() {
                Implementation::Ours => subjects::start_tunscope_client(
                    ns,
                    &cconf,
                    &clog,
                    &[
                        "--control",
                        csock.to_str().context("utf-8 path")?,
                        "--threads",
                        &threads.engine.to_string(),
                        "--rx-threads",
                        &threads.client_rx.to_string(),
                    ],
                )?,
                Implementation::OpenVpn => {
                    subjects::start_client(Implementation::OpenVpn, ns, &cconf, &clog)?
                }
            };
            subjects::wait_ready(&mut client, Duration::from_secs(20))?;
            procs.push(client);
        }
        // The stock server installs the data keys on its next 1 s housekeeping tick.
        std::thread::sleep(Duration::from_millis(1500));
        procs.push(server);
        spec.server_tun_ip()
    };
    let mut iperf_servers = vec![];
    for i in 0..hosts.clients().len() {
        let port = (5201 + i).to_string();
        let mut iperf_s = hosts.server().command("iperf3");
        iperf_s.args([
            "-s",
            "-1",
            "--forceflush",
            "-p",
            &port,
            "-B",
            &target.to_string(),
        ]);
        let mut srv = Proc::spawn(
            "iperf3 server",
            iperf_s,
            &dir.join(format!("iperf3-server{i}.log")),
        )?;
        srv.wait_for_log("Server listening", Duration::from_secs(10))?;
        iperf_servers.push(srv);
    }
    // Latency first, on the idle path: 20 echo requests of 56 bytes 200 ms apart.
    let first = hosts.clients()[0];
    let target_s = target.to_string();
    let rtt_ms = bench_rtt::idle(first, &target_s).unwrap_or_else(|e| {
        eprintln!("idle ping: {e:#}");
        f64::NAN
    });
    // Then on one core, 2 ms apart: the tunnel's own work without the cores' wake-ups.
    let pids: Vec<u32> = procs.iter().filter_map(Proc::pid).collect();
    let rtt_one_core_ms = bench_rtt::one_core(first, &target_s, &pids).unwrap_or_else(|e| {
        eprintln!("one-core ping: {e:#}");
        f64::NAN
    });
    let socks = [dir.join("client.sock"), dir.join("server.sock")];
    let busy0: Vec<Option<[u64; 6]>> = socks.iter().map(|s| stage_busy(s)).collect();
    let ticks0: Vec<(u64, u64)> = procs
        .iter()
        .map(|p| p.pid().map_or((0, 0), cpu_ticks))
        .collect();
    let start = Instant::now();
    let runs: Vec<std::process::Child> = hosts
        .clients()
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            ns.command("iperf3")
                .args([
                    "-c",
                    &target.to_string(),
                    "-p",
                    &(5201 + i).to_string(),
                    "-t",
                    &secs.to_string(),
                    "-P",
                    &streams.to_string(),
                    "-J",
                ])
                .args(reverse.then_some("-R"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("starting iperf3")
        })
        .collect::<Result<_>>()?;
    let outs: Vec<std::process::Output> = runs
        .into_iter()
        .map(|c| c.wait_with_output().context("iperf3"))
        .collect::<Result<_>>()?;
    let wall = start.elapsed().as_secs_f64();
    let ticks1: Vec<(u64, u64)> = procs
        .iter()
        .map(|p| p.pid().map_or((0, 0), cpu_ticks))
        .collect();
    let busy1: Vec<Option<[u64; 6]>> = socks.iter().map(|s| stage_busy(s)).collect();
    let stages: [Option<[u64; 6]>; 2] = std::array::from_fn(|i| {
        let (a, b) = (
            busy0.get(i).copied().flatten()?,
            busy1.get(i).copied().flatten()?,
        );
        Some(std::array::from_fn(|k| b[k].saturating_sub(a[k])))
    });
    let (mut bps, mut retransmits) = (0.0, 0);
    for out in &outs {
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
        if let Some(e) = json.get("error") {
            bail!("iperf3: {e}");
        }
        bps += json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 JSON: no sum_received")?;
        retransmits += json["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let pct = |t: u64| t as f64 / hz / wall * 100.0;
    let delta = |i: usize| match (ticks0.get(i), ticks1.get(i)) {
        (Some(a), Some(b)) => (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)),
        _ => (0, 0),
    };
    // Clients summed, then the server (the last process).
    let n = procs.len();
    let mut client_ticks = (0, 0);
    for i in 0..n.saturating_sub(1) {
        let (u, y) = delta(i);
        client_ticks = (client_ticks.0 + u, client_ticks.1 + y);
    }
    let server_ticks = if n > 0 { delta(n - 1) } else { (0, 0) };
    let split = [
        (pct(client_ticks.0), pct(client_ticks.1)),
        (pct(server_ticks.0), pct(server_ticks.1)),
    ];
    Ok(Sample {
        gbps: bps / 1e9,
        retransmits,
        cpu_client: split[0].0 + split[0].1,
        cpu_server: split[1].0 + split[1].1,
        split,
        stages,
        rtt_ms,
        rtt_one_core_ms,
    })
}

/// Runs a command with stdout discarded; its wall time and peak memory (KiB).
fn timed(cmd: &mut std::process::Command) -> Result<(Duration, i64)> {
    let t = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot start")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for the child we just spawned, with valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    Ok((t.elapsed(), ru.ru_maxrss))
}

/// `bench capture FILE`: `tunscope normalize` against `tshark -T fields` on the same file,
/// repetitions interleaved so both see the same machine; packets/s, ratio, peak memory.
fn capture(args: &[&str]) -> Result<()> {
    let Some(file) = args.first().filter(|a| !a.starts_with("--")) else {
        bail!("usage: cargo xtask bench capture FILE [--reps N]");
    };
    let reps: usize = flag(args, "--reps")
        .map_or(Ok(3), str::parse)
        .context("--reps")?;
    build_release()?;
    let ours = project_root().join("target/release/tunscope");
    // The packet count, from our own summary line.
    let out = std::process::Command::new(&ours)
        .args(["normalize", "--allow-partial", file])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let packets: f64 = text
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no packet count from tunscope normalize")?;
    let mut rows: Vec<(f64, f64, i64, i64)> = vec![];
    for rep in 1..=reps {
        let (a, a_kb) =
            timed(std::process::Command::new(&ours).args(["normalize", "--allow-partial", file]))?;
        let (b, b_kb) = timed(std::process::Command::new("tshark").args([
            "-n",
            "-r",
            file,
            "-T",
            "fields",
            "-e",
            "frame.number",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
        ]))?;
        println!(
            "rep {rep}: tunscope normalize {:.2} s ({:.0} packets/s, {a_kb} KiB), tshark -T fields {:.2} s ({:.0} packets/s, {b_kb} KiB): {:.1}x",
            a.as_secs_f64(),
            packets / a.as_secs_f64(),
            b.as_secs_f64(),
            packets / b.as_secs_f64(),
            b.as_secs_f64() / a.as_secs_f64()
        );
        rows.push((a.as_secs_f64(), b.as_secs_f64(), a_kb, b_kb));
    }
    let mut ratios: Vec<f64> = rows.iter().map(|r| r.1 / r.0).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "{packets:.0} packets; median ratio {:.1}x (tshark time / tunscope time)",
        ratios[ratios.len() / 2]
    );
    Ok(())
}
