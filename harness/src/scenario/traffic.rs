//! `[[traffic]]`: bounded load a scenario puts through the network while the tunnel is up —
//! iperf3 streams, HTTP downloads, DNS queries. Every entry starts at once (load is about
//! what runs together), after the tunnel is up and before the checks; each becomes a row of
//! the report judged against the thresholds it names.
//!
//! ```toml
//! [[traffic]]
//! name = "two TCP streams to the corp LAN"
//! kind = "iperf3"
//! to = "198.19.10.80"     # the iperf3 server runs in the namespace holding this address
//! streams = 2
//! seconds = 3
//! min_mbps = 20
//! ```
//!
//! Every amount is bounded (streams, seconds, transfers, queries, rate) so a scenario file
//! cannot turn the harness into an unbounded load generator, and every address must lie in
//! the scenario's own ranges (198.18.0.0/15, 2001:db8::/32).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::checks::{Live, now_ns, run_in};
use super::report::CheckReport;
use crate::netns::Netns;
use crate::network::Network;
use crate::process::Proc;

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn ten() -> u32 {
    10
}
fn two() -> u32 {
    2
}
fn fifty() -> u32 {
    50
}
fn hundred() -> u32 {
    100
}

/// `kind = "iperf3"`: iperf3 from the client to a server the harness starts in the
/// namespace that holds `to`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Iperf3Load {
    /// Destination address (its namespace runs `iperf3 -s`).
    pub to: IpAddr,
    /// Parallel streams (1–16).
    #[serde(default = "one")]
    pub streams: u32,
    /// Duration (1–30 s).
    #[serde(default = "three")]
    pub seconds: u32,
    /// Server to client (`iperf3 -R`) instead of client to server.
    #[serde(default)]
    pub reverse: bool,
    /// UDP instead of TCP (needs `mbps`).
    #[serde(default)]
    pub udp: bool,
    /// The sending rate, Mbit/s over all streams (1–1000; TCP: unlimited when absent).
    /// Captures hold every packet: a bounded rate keeps a run's pcapng small.
    #[serde(default)]
    pub mbps: Option<u32>,
    /// Fails below this throughput (Mbit/s, what the receiver got).
    #[serde(default)]
    pub min_mbps: Option<f64>,
    /// Fails above this many TCP retransmissions (the sender's count).
    #[serde(default)]
    pub max_retransmits: Option<u64>,
    /// Fails above this UDP loss (percent of datagrams).
    #[serde(default)]
    pub max_loss_percent: Option<f64>,
}

/// `kind = "http"`: `count` downloads of `bytes` each from `url` (a scenario web server's
/// `/bytes/N`), `parallel` at a time (curl `--parallel`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpLoad {
    /// Base URL of a scenario web server (`http://198.19.10.80`).
    pub url: String,
    /// Bytes per download (at most 100 MB).
    pub bytes: usize,
    /// Downloads (1–1000).
    #[serde(default = "ten")]
    pub count: u32,
    /// At a time (1–16).
    #[serde(default = "two")]
    pub parallel: u32,
    /// Fails below this aggregate throughput (Mbit/s).
    #[serde(default)]
    pub min_mbps: Option<f64>,
    /// Downloads allowed to fail.
    #[serde(default)]
    pub max_failures: u32,
    /// Give up on the whole load after this many seconds (at most 120).
    #[serde(default = "thirty_s")]
    pub timeout_s: u64,
}

fn thirty_s() -> u64 {
    30
}

/// `kind = "dns"`: `queries` A (or AAAA, when `answer` is IPv6) questions for `host` at
/// `rate` per second, to `server` or to the first name server of the client's resolv.conf
/// (what a program on the client asks).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsLoad {
    /// The name asked.
    pub host: String,
    /// The address every answer must hold.
    #[serde(default)]
    pub answer: Option<IpAddr>,
    /// Questions (1–10000).
    #[serde(default = "hundred")]
    pub queries: u32,
    /// Questions per second (1–1000).
    #[serde(default = "fifty")]
    pub rate: u32,
    /// The resolver asked (default: the client's resolv.conf).
    #[serde(default)]
    pub server: Option<IpAddr>,
    /// Questions allowed to go unanswered or be answered wrongly.
    #[serde(default)]
    pub max_failures: u32,
    /// Tries per question, 2 s each, as glibc's resolver (`options attempts:2`): a question
    /// fails only when every try got no answer or SERVFAIL (1–5).
    #[serde(default = "two")]
    pub attempts: u32,
}

/// What a traffic entry generates.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LoadSpec {
    /// iperf3 streams.
    Iperf3(Iperf3Load),
    /// HTTP downloads.
    Http(HttpLoad),
    /// DNS questions.
    Dns(DnsLoad),
}

/// One `[[traffic]]` entry.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Traffic {
    /// What it is called in reports.
    pub name: String,
    /// The client it runs on (`from = "client2"` with `[topology] clients`).
    pub from: String,
    /// Line in the scenario file.
    pub line: usize,
    /// The load.
    pub spec: LoadSpec,
}

/// Inside the ranges scenarios may use.
fn in_scenario_ranges(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18,
        IpAddr::V6(v6) => v6.segments()[0] == 0x2001 && v6.segments()[1] == 0xdb8,
    }
}

fn url_host(url: &str) -> Option<IpAddr> {
    let rest = url.strip_prefix("http://")?;
    let host = rest.split('/').next()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split(']').next())
        .unwrap_or_else(|| host.split(':').next().unwrap_or(host));
    host.parse().ok()
}

impl Traffic {
    /// Parses one `[[traffic]]` table (errors without the file:line prefix).
    pub fn from_table(mut t: toml::Table, line: usize) -> Result<Traffic, String> {
        let name = match t.remove("name") {
            Some(toml::Value::String(s)) if !s.trim().is_empty() => s,
            _ => return Err("traffic entry without a 'name' (a string)".into()),
        };
        let kind = match t.remove("kind") {
            Some(toml::Value::String(s)) => s,
            _ => {
                return Err(format!(
                    "traffic '{name}' needs kind = \"…\" (iperf3, http, dns)"
                ));
            }
        };
        let from = match t.remove("from") {
            None => "client".to_owned(),
            Some(toml::Value::String(s))
                if (s.starts_with("client") || s == "home") && crate::network::is_host_name(&s) =>
            {
                s
            }
            Some(_) => {
                return Err(format!(
                    "traffic '{name}': from must be client, client2…client4 or home"
                ));
            }
        };
        let v = toml::Value::Table(t);
        let err = |e: toml::de::Error| format!("traffic '{name}' ({kind}): {}", e.message());
        let spec = match kind.as_str() {
            "iperf3" => LoadSpec::Iperf3(v.try_into().map_err(err)?),
            "http" => LoadSpec::Http(v.try_into().map_err(err)?),
            "dns" => LoadSpec::Dns(v.try_into().map_err(err)?),
            other => {
                return Err(format!(
                    "traffic '{name}': unknown kind '{other}' (iperf3, http, dns)"
                ));
            }
        };
        let bad = |m: String| Err(format!("traffic '{name}': {m}"));
        match &spec {
            LoadSpec::Iperf3(i) => {
                if !in_scenario_ranges(i.to) {
                    return bad(format!(
                        "to = {} is outside 198.18.0.0/15 and 2001:db8::/32",
                        i.to
                    ));
                }
                if !(1..=16).contains(&i.streams) || !(1..=30).contains(&i.seconds) {
                    return bad("streams must be 1–16 and seconds 1–30".into());
                }
                if i.mbps.is_some_and(|r| !(1..=1000).contains(&r)) {
                    return bad("mbps must be 1–1000".into());
                }
                if i.udp && i.mbps.is_none() {
                    return bad("udp = true needs mbps (the rate to send at)".into());
                }
                if !i.udp && i.max_loss_percent.is_some() {
                    return bad("max_loss_percent is for udp = true (TCP does not lose)".into());
                }
                if i.udp && i.max_retransmits.is_some() {
                    return bad("max_retransmits is for TCP (not udp = true)".into());
                }
            }
            LoadSpec::Http(h) => {
                match url_host(&h.url) {
                    Some(a) if in_scenario_ranges(a) => {}
                    _ => {
                        return bad(format!(
                            "url '{}' must be http:// to an address inside 198.18.0.0/15 or 2001:db8::/32",
                            h.url
                        ));
                    }
                }
                if h.bytes == 0 || h.bytes > 100_000_000 {
                    return bad("bytes must be 1–100000000".into());
                }
                if !(1..=1000).contains(&h.count) || !(1..=16).contains(&h.parallel) {
                    return bad("count must be 1–1000 and parallel 1–16".into());
                }
                if h.timeout_s == 0 || h.timeout_s > 120 {
                    return bad("timeout_s must be 1–120".into());
                }
            }
            LoadSpec::Dns(d) => {
                if !(1..=10_000).contains(&d.queries) || !(1..=1000).contains(&d.rate) {
                    return bad("queries must be 1–10000 and rate 1–1000 per second".into());
                }
                if d.queries / d.rate > 60 {
                    return bad("queries / rate must stay within 60 s".into());
                }
                if d.server
                    .is_some_and(|s| !in_scenario_ranges(s) && !s.is_loopback())
                {
                    return bad("server must be a scenario address or loopback".into());
                }
                if !(1..=5).contains(&d.attempts) {
                    return bad("attempts must be 1–5".into());
                }
                if d.host.is_empty() || d.host.len() > 253 {
                    return bad("host must be a DNS name".into());
                }
            }
        }
        Ok(Traffic {
            name,
            from,
            line,
            spec,
        })
    }

    /// `traffic-iperf3`, `traffic-http`, `traffic-dns`.
    pub fn kind(&self) -> &'static str {
        match self.spec {
            LoadSpec::Iperf3(_) => "traffic-iperf3",
            LoadSpec::Http(_) => "traffic-http",
            LoadSpec::Dns(_) => "traffic-dns",
        }
    }
}

/// The namespace (by host name) whose interfaces hold `addr`.
fn owner_of(net: &Network, addr: IpAddr) -> Option<&crate::netns::Netns> {
    let needle = format!(" {addr}/");
    net.hosts().into_iter().map(|(_, ns)| ns).find(|ns| {
        ns.ip(&["-o", "addr", "show"])
            .is_ok_and(|out| out.contains(&needle))
    })
}

/// Runs every entry at once and returns the report rows, in file order.
pub fn run_all(loads: &[Traffic], net: &Network, dir: &Path) -> Result<Vec<CheckReport>> {
    // iperf3 servers first, one port each, in the namespace of their address.
    let mut servers: Vec<Option<Proc>> = Vec::with_capacity(loads.len());
    for (i, t) in loads.iter().enumerate() {
        let LoadSpec::Iperf3(l) = &t.spec else {
            servers.push(None);
            continue;
        };
        let Some(ns) = owner_of(net, l.to) else {
            servers.push(None);
            continue;
        };
        let mut cmd = ns.command("iperf3");
        cmd.args([
            "-s",
            "-1",
            "--forceflush",
            "-p",
            &port(i),
            "-B",
            &l.to.to_string(),
        ]);
        let mut p = Proc::spawn(
            "iperf3 server",
            cmd,
            &dir.join(format!("traffic-{i}-iperf3-server.log")),
        )?;
        p.wait_for_log("Server listening", Duration::from_secs(10))?;
        servers.push(Some(p));
    }
    let lives: Vec<Live> = std::thread::scope(|scope| {
        let handles: Vec<_> = loads
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let has_server = servers[i].is_some();
                scope.spawn(move || {
                    let mut live = Live {
                        t0_ns: now_ns(),
                        ..Live::default()
                    };
                    let Some(client) = net.host(&t.from) else {
                        live.failures
                            .push(format!("no host '{}' in this topology", t.from));
                        return live;
                    };
                    let r = match &t.spec {
                        LoadSpec::Iperf3(l) if !has_server => {
                            live.failures.push(format!(
                                "no namespace of the scenario holds {} (nothing to run iperf3 -s in)",
                                l.to
                            ));
                            Ok(())
                        }
                        LoadSpec::Iperf3(l) => iperf3(l, &port(i), client, &mut live),
                        LoadSpec::Http(h) => http(h, client, &mut live),
                        LoadSpec::Dns(d) => dns(d, client, &mut live),
                    };
                    if let Err(e) = r {
                        live.failures.push(format!("{e:#}"));
                    }
                    if t.from != "client" {
                        live.summary = format!("from {}: {}", t.from, live.summary);
                    }
                    live.t1_ns = now_ns();
                    live
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    // A server whose client never connected exits with the run (`-1` serves one test).
    drop(servers);
    Ok(loads
        .iter()
        .zip(lives)
        .map(|(t, live)| CheckReport {
            name: t.name.clone(),
            kind: t.kind().to_owned(),
            line: t.line,
            passed: live.failures.is_empty(),
            message: live
                .failures
                .first()
                .cloned()
                .unwrap_or_else(|| live.summary.clone()),
            evidence: live
                .failures
                .iter()
                .skip(1)
                .cloned()
                .chain(live.evidence)
                .collect(),
            duration_ms: live.t1_ns.saturating_sub(live.t0_ns) / 1_000_000,
        })
        .collect())
}

fn port(i: usize) -> String {
    (5301 + i).to_string()
}

fn iperf3(l: &Iperf3Load, port: &str, client: &Netns, live: &mut Live) -> Result<()> {
    let secs = l.seconds.to_string();
    let streams = l.streams.to_string();
    let to = l.to.to_string();
    // iperf3's -b is per stream.
    let rate = l
        .mbps
        .map(|r| format!("{}K", u64::from(r) * 1000 / u64::from(l.streams)));
    let mut args = vec!["-c", &to, "-p", port, "-t", &secs, "-P", &streams, "-J"];
    if l.reverse {
        args.push("-R");
    }
    if l.udp {
        args.push("-u");
    }
    if let Some(r) = &rate {
        args.extend(["-b", r]);
    }
    let out = run_in(
        client,
        "iperf3",
        &args,
        Duration::from_secs(u64::from(l.seconds) + 20),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON (exit {:?}{}): {}",
            out.code,
            if out.timed_out { ", timed out" } else { "" },
            out.stderr
        )
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        live.failures.push(format!("iperf3: {e}"));
        return Ok(());
    }
    let end = &v["end"];
    let what = format!(
        "iperf3 {} {} stream(s) for {} s {} {}",
        if l.udp { "UDP" } else { "TCP" },
        l.streams,
        l.seconds,
        if l.reverse { "from" } else { "to" },
        l.to
    );
    let (mbps, detail) = if l.udp {
        let sum = &end["sum"];
        let mbps = sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6;
        let lost = sum["lost_percent"].as_f64().unwrap_or(100.0);
        let jitter = sum["jitter_ms"].as_f64().unwrap_or(0.0);
        if let Some(max) = l.max_loss_percent
            && lost > max
        {
            live.failures
                .push(format!("{lost:.2} % of datagrams lost, more than {max} %"));
        }
        (mbps, format!("{lost:.2} % lost, jitter {jitter:.3} ms"))
    } else {
        let mbps = end["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e6;
        let retrans = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        if let Some(max) = l.max_retransmits
            && retrans > max
        {
            live.failures
                .push(format!("{retrans} TCP retransmissions, more than {max}"));
        }
        (mbps, format!("{retrans} TCP retransmissions"))
    };
    if let Some(min) = l.min_mbps
        && mbps < min
    {
        live.failures.push(format!(
            "{mbps:.1} Mbit/s, below the {min} Mbit/s asked for"
        ));
    }
    live.summary = format!("{what}: {mbps:.1} Mbit/s, {detail}");
    live.evidence.push(live.summary.clone());
    Ok(())
}

fn http(h: &HttpLoad, client: &Netns, live: &mut Live) -> Result<()> {
    let url = format!("{}/bytes/{}", h.url.trim_end_matches('/'), h.bytes);
    let max = h.timeout_s.to_string();
    let parallel = h.parallel.to_string();
    let mut args: Vec<&str> = vec![
        "-sS",
        "--parallel",
        "--parallel-max",
        &parallel,
        "--max-time",
        &max,
        "-w",
        "%{http_code} %{size_download} %{time_total}\n",
    ];
    for _ in 0..h.count {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    let started = Instant::now();
    let out = run_in(client, "curl", &args, Duration::from_secs(h.timeout_s + 5))?;
    let secs = started.elapsed().as_secs_f64();
    let mut ok = 0u32;
    let mut bytes = 0u64;
    let mut times: Vec<f64> = vec![];
    for l in out.stdout.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let [code, size, t] = f[..] else { continue };
        let size: u64 = size.parse().unwrap_or(0);
        bytes += size;
        if code == "200" && size == h.bytes as u64 {
            ok += 1;
            times.push(t.parse().unwrap_or(0.0));
        }
    }
    let failed = h.count - ok.min(h.count);
    let mbps = bytes as f64 * 8.0 / secs.max(1e-9) / 1e6;
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    live.summary = format!(
        "{ok}/{} downloads of {} bytes from {url}, {} at a time: {mbps:.1} Mbit/s, each p50 {:.3} s p99 {:.3} s",
        h.count,
        h.bytes,
        h.parallel,
        pct(0.5),
        pct(0.99)
    );
    live.evidence.push(live.summary.clone());
    if !out.stderr.is_empty() {
        live.evidence.push(format!("curl: {}", out.stderr));
    }
    if failed > h.max_failures {
        live.failures.push(format!(
            "{failed} of {} downloads failed (at most {} allowed)",
            h.count, h.max_failures
        ));
    }
    if let Some(min) = h.min_mbps
        && mbps < min
    {
        live.failures.push(format!(
            "{mbps:.1} Mbit/s, below the {min} Mbit/s asked for"
        ));
    }
    Ok(())
}

/// What one DNS question got.
enum Outcome {
    /// The addresses, the time from the first try, and how many tries it took.
    Answered(Vec<IpAddr>, Duration, u32),
    Failed(String),
}

fn dns(d: &DnsLoad, client: &Netns, live: &mut Live) -> Result<()> {
    let server = match d.server {
        Some(s) => s,
        None => client
            .resolv_conf()
            .lines()
            .find_map(|l| l.strip_prefix("nameserver")?.trim().parse().ok())
            .context("the client's resolv.conf names no name server")?,
    };
    let d2 = d.clone();
    let outcomes: Vec<Outcome> = client.run(move || ask_all(&d2, server))?;
    let mut times: Vec<Duration> = vec![];
    let mut failures: Vec<String> = vec![];
    let mut retried = 0;
    for o in outcomes {
        match o {
            Outcome::Answered(addrs, t, tries) => match d.answer {
                Some(want) if !addrs.contains(&want) => {
                    failures.push(format!("answered {addrs:?}, not {want}",))
                }
                _ if addrs.is_empty() => failures.push("answered with no address".into()),
                _ => {
                    retried += u32::from(tries > 1);
                    times.push(t);
                }
            },
            Outcome::Failed(why) => failures.push(why),
        }
    }
    times.sort();
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |t| t.as_secs_f64() * 1e3)
    };
    live.summary = format!(
        "{}/{} questions for {} to {server} at {}/s answered right ({retried} after a retry), p50 {:.2} ms p99 {:.2} ms",
        times.len(),
        d.queries,
        d.host,
        d.rate,
        pct(0.5),
        pct(0.99)
    );
    live.evidence.push(live.summary.clone());
    // The distinct reasons, not one line per question.
    let mut reasons: Vec<String> = failures.clone();
    reasons.sort();
    reasons.dedup();
    live.evidence
        .extend(reasons.iter().take(5).map(|r| format!("failed: {r}")));
    if failures.len() > d.max_failures as usize {
        live.failures.push(format!(
            "{} of {} questions failed (at most {} allowed)",
            failures.len(),
            d.queries,
            d.max_failures
        ));
    }
    Ok(())
}

/// Asks every question at the load's pace, from the calling thread's namespace.
fn ask_all(d: &DnsLoad, server: IpAddr) -> Result<Vec<Outcome>> {
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::{Name, RecordType};
    let name = Name::from_ascii(&d.host).with_context(|| format!("'{}' is no DNS name", d.host))?;
    let rtype = if d.answer.is_some_and(|a| a.is_ipv6()) {
        RecordType::AAAA
    } else {
        RecordType::A
    };
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let sock = UdpSocket::bind(bind).context("binding the DNS load's socket")?;
    let to = SocketAddr::new(server, 53);
    let gap = Duration::from_secs_f64(1.0 / f64::from(d.rate));
    let start = Instant::now();
    let mut out = Vec::with_capacity(d.queries as usize);
    let mut id: u16 = 0;
    for i in 0..d.queries {
        // Paced from the start, so a slow answer does not slow the rate.
        let due = start + gap * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let asked = Instant::now();
        let mut last = Attempt::Final(Outcome::Failed("not asked".into()));
        let mut tries = 0;
        for _ in 0..d.attempts {
            tries += 1;
            id = id.wrapping_add(1);
            let mut m = Message::new();
            m.set_id(id)
                .set_message_type(MessageType::Query)
                .set_recursion_desired(true)
                .add_query(Query::query(name.clone(), rtype));
            let wire = m.to_vec().context("encoding a DNS question")?;
            last = ask_once(&sock, to, &wire, id)?;
            if matches!(last, Attempt::Final(_)) {
                break;
            }
        }
        out.push(match last {
            Attempt::Final(Outcome::Answered(addrs, ..)) => {
                Outcome::Answered(addrs, asked.elapsed(), tries)
            }
            Attempt::Final(o) => o,
            Attempt::Retry(why) => Outcome::Failed(format!("{why} ({} tries)", d.attempts)),
        });
    }
    Ok(out)
}

/// One try of one question.
enum Attempt {
    /// An answer, or a failure a resolver would not retry (NXDOMAIN, a malformed answer).
    Final(Outcome),
    /// No answer or SERVFAIL: a resolver tries again.
    Retry(String),
}

fn ask_once(sock: &UdpSocket, to: SocketAddr, wire: &[u8], id: u16) -> Result<Attempt> {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RData;
    let sent = Instant::now();
    if let Err(e) = sock.send_to(wire, to) {
        return Ok(Attempt::Retry(format!("send: {e}")));
    }
    let mut buf = [0u8; 1500];
    // One question in flight: wait for its answer (2 s), skipping stale ones.
    let deadline = sent + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Attempt::Retry("no answer within 2 s".into()));
        }
        sock.set_read_timeout(Some(left))?;
        let n = match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == to => n,
            Ok(_) => continue,
            Err(_) => return Ok(Attempt::Retry("no answer within 2 s".into())),
        };
        let Ok(resp) = Message::from_vec(&buf[..n]) else {
            return Ok(Attempt::Final(Outcome::Failed(
                "an answer that does not parse".into(),
            )));
        };
        if resp.id() != id {
            continue;
        }
        return Ok(match resp.response_code() {
            ResponseCode::NoError => {
                let addrs = resp
                    .answers()
                    .iter()
                    .filter_map(|r| match r.data() {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect();
                Attempt::Final(Outcome::Answered(addrs, sent.elapsed(), 1))
            }
            ResponseCode::ServFail => Attempt::Retry("SERVFAIL".into()),
            other => Attempt::Final(Outcome::Failed(format!("answer {other}"))),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Traffic, String> {
        let t: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        Traffic::from_table(t, 7)
    }

    #[test]
    fn entries_parse_with_their_defaults() {
        let t = parse("name = \"n\"\nkind = \"iperf3\"\nto = \"198.19.10.80\"\n").unwrap();
        let LoadSpec::Iperf3(i) = t.spec else {
            panic!("not iperf3")
        };
        assert_eq!((i.streams, i.seconds, i.reverse), (1, 3, false));
        let t = parse("name = \"n\"\nkind = \"dns\"\nhost = \"a.corp.example\"\n").unwrap();
        assert_eq!(t.kind(), "traffic-dns");
        let t = parse("name = \"n\"\nkind = \"http\"\nurl = \"http://198.19.10.80\"\nbytes = 10\n")
            .unwrap();
        assert_eq!(t.line, 7);
    }

    #[test]
    fn unbounded_or_foreign_load_is_refused_with_the_reason() {
        for (text, says) in [
            (
                "kind = \"iperf3\"\nto = \"198.19.10.80\"",
                "without a 'name'",
            ),
            ("name = \"n\"\nkind = \"flood\"", "unknown kind 'flood'"),
            (
                "name = \"n\"\nkind = \"iperf3\"\nto = \"10.0.0.1\"",
                "outside 198.18.0.0/15",
            ),
            (
                "name = \"n\"\nkind = \"iperf3\"\nto = \"198.19.10.80\"\nstreams = 64",
                "streams must be 1–16",
            ),
            (
                "name = \"n\"\nkind = \"iperf3\"\nto = \"198.19.10.80\"\nseconds = 3600",
                "seconds 1–30",
            ),
            (
                "name = \"n\"\nkind = \"iperf3\"\nto = \"198.19.10.80\"\nmax_loss_percent = 1.0",
                "is for udp = true",
            ),
            (
                "name = \"n\"\nkind = \"iperf3\"\nto = \"198.19.10.80\"\nudp = true",
                "needs mbps",
            ),
            (
                "name = \"n\"\nkind = \"dns\"\nhost = \"x\"\nattempts = 50",
                "attempts must be 1–5",
            ),
            (
                "name = \"n\"\nkind = \"http\"\nurl = \"http://192.0.2.1\"\nbytes = 10",
                "must be http://",
            ),
            (
                "name = \"n\"\nkind = \"http\"\nurl = \"http://198.19.10.80\"\nbytes = 10\ncount = 100000",
                "count must be 1–1000",
            ),
            (
                "name = \"n\"\nkind = \"dns\"\nhost = \"x\"\nqueries = 10000\nrate = 1",
                "within 60 s",
            ),
            (
                "name = \"n\"\nkind = \"dns\"\nhost = \"x\"\nserver = \"8.8.8.8\"",
                "scenario address",
            ),
            (
                "name = \"n\"\nkind = \"dns\"\nhost = \"x\"\nspeed = 3",
                "unknown field `speed`",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn url_hosts_are_read_for_both_families() {
        assert_eq!(
            url_host("http://198.19.10.80/x"),
            "198.19.10.80".parse().ok()
        );
        assert_eq!(
            url_host("http://198.19.10.80:8080"),
            "198.19.10.80".parse().ok()
        );
        assert_eq!(
            url_host("http://[2001:db8:10::80]/"),
            "2001:db8:10::80".parse().ok()
        );
        assert_eq!(url_host("http://intranet.corp.example/"), None);
    }
}
