//! Scenario checks: what each kind does while the tunnel is up ([`act`]) and how it is judged
//! once the run's captures and service logs are complete ([`judge`]).
//!
//! Acting and judging are split because several checks are answered by evidence that is
//! only whole at the end: which interface a DNS query left on (the client's capture), which
//! address a web server saw (its log), whether anything leaked on an interface.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::capture::Frame;
use crate::filter::Filter;
use crate::netns::Netns;
use crate::netstate::NetState;
use crate::network::{HOSTS, Network};
use crate::services::dns::DnsQuery;
use crate::services::web::{WebRequest, verify_bulk, write_bulk};
use tunscope_capture::packet::{self, L4};

fn yes() -> bool {
    true
}
fn three() -> u32 {
    3
}
fn ping_size() -> u32 {
    56
}
fn ten() -> u64 {
    10
}

/// `kind = "route"`: where the client's kernel sends a destination (`to`, as `ip route get`
/// answers) or whether its table holds a prefix (`prefix`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteCheck {
    /// Destination to look up.
    pub to: Option<IpAddr>,
    /// Prefix that must (not) be in the main table (`0.0.0.0/1`, `198.18.2.2/32`).
    pub prefix: Option<String>,
    /// Expected output device.
    pub dev: Option<String>,
    /// false: the route (or the lookup via `dev`) must not exist.
    #[serde(default = "yes")]
    pub present: bool,
}

/// `kind = "resolve"`: the client's system resolver (`getent ahostsv4`) resolves `host`;
/// `resolver` is the only DNS server that got the question from the client, and the client
/// sent it over `via` only.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResolveCheck {
    /// Host name to resolve.
    pub host: String,
    /// Expected address among the answers.
    pub answer: Option<IpAddr>,
    /// `public-dns` or `corp-dns`.
    pub resolver: Option<String>,
    /// Client interface the query left on (`eth0`, `tun0`).
    pub via: Option<String>,
    /// The name must not resolve.
    #[serde(default)]
    pub fails: bool,
}

/// `kind = "http"`: `curl URL` from the client.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// URL (names go through the client's resolver).
    pub url: String,
    /// Text the body must contain.
    pub body: Option<String>,
    /// Client interface of the connection's local address.
    pub via: Option<String>,
    /// Address the web server must have seen the request from (NAT).
    pub seen_from: Option<IpAddr>,
    /// The request must fail.
    #[serde(default)]
    pub fails: bool,
    /// Force the request out of this client interface (`curl --interface`), whatever the
    /// routes say: a deliberately misrouted request (the leak oracle's negative control).
    pub interface: Option<String>,
}

/// `kind = "transfer"`: a verified bulk download (`GET URL/bytes/N`) or upload
/// (`POST URL/upload`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TransferCheck {
    /// Base URL of a scenario web server (`http://198.19.10.80`).
    pub url: String,
    /// Bytes to move.
    pub bytes: usize,
    /// Upload instead of download.
    #[serde(default)]
    pub upload: bool,
    /// Client interface of the connection's local address.
    pub via: Option<String>,
    /// The transfer must fail (e.g. a black-holed path).
    #[serde(default)]
    pub fails: bool,
    /// Give up after this many seconds.
    #[serde(default = "ten")]
    pub timeout_s: u64,
}

/// `kind = "ping"`: the system `ping` from the client (or another client, `from`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PingCheck {
    /// The client that pings (`client2`… with `[topology] clients`); default `client`.
    #[serde(default)]
    pub from: Option<String>,
    /// Destination.
    pub to: IpAddr,
    /// Echo requests.
    #[serde(default = "three")]
    pub count: u32,
    /// Payload bytes.
    #[serde(default = "ping_size")]
    pub size: u32,
    /// No reply must come back.
    #[serde(default)]
    pub fails: bool,
}

/// `kind = "mtu"`: the largest IPv4 packet (bytes, with don't-fragment) that gets from the
/// client to `to` and back, found by bisection with `ping -M do`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MtuCheck {
    /// Destination.
    pub to: IpAddr,
    /// Expected largest packet size.
    pub expect: u32,
}

/// `kind = "leak"`: on interface `on` (`client/eth0`), every packet matches one of `allow`
/// (when given) and none matches `forbid`. Filters: see [`crate::filter`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LeakCheck {
    /// `<host>/<interface>`.
    pub on: String,
    /// Flows allowed (anything else is a leak).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Flows forbidden.
    #[serde(default)]
    pub forbid: Vec<String>,
}

/// `kind = "tcp-mss"`: TCP SYNs seen on `on` (optionally only those matching `filter`)
/// carry an MSS of at most `max`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpMssCheck {
    /// `<host>/<interface>`.
    pub on: String,
    /// Which SYNs.
    pub filter: Option<String>,
    /// Largest acceptable MSS.
    pub max: u16,
}

/// `kind = "teardown"`: after the client stopped, its namespace's routes, addresses and
/// resolv.conf are what they were before it started.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TeardownCheck {}

/// `kind = "counter"`: a stage counter of one of our engines, from the table it logs when it
/// stops (`who` = `client` or `server`; the side must be ours): packets in/out at `stage`, or
/// drops for `drop` reason there; at least `min` and at most `max`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CounterCheck {
    /// `client` or `server`.
    pub who: String,
    /// Stage name (`decrypt`, `socket_rx`, …).
    pub stage: String,
    /// A drop reason (`replay`, `bad_tag`, …); without it, packets out of the stage.
    #[serde(default)]
    pub drop: Option<String>,
    /// Lower bound.
    #[serde(default)]
    pub min: u64,
    /// Upper bound.
    #[serde(default)]
    pub max: Option<u64>,
}

/// `kind = "reconnect"`: the client comes back on its own — its log shows the tunnel up
/// once more (OpenVPN's "Initialization Sequence Completed", ours and stock alike) within
/// `within_s` seconds — after an outage of the link, say.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReconnectCheck {
    /// How long to wait.
    #[serde(default = "thirty")]
    pub within_s: u64,
}

fn thirty() -> u64 {
    30
}

/// `kind = "failover"` (needs `[topology] servers = 2`): the first server is stopped, and the
/// client must come back up within `within_s`, on the second server (its tunnel address in
/// the second server's network).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FailoverCheck {
    /// How long to wait.
    #[serde(default = "thirty")]
    pub within_s: u64,
}

/// `kind = "link"`: the state of a client interface while the tunnel is up: its IPv4
/// address lies in `address_in` (`A.B.C.D-E.F.G.H` or `A.B.C.D/N`: e.g. a DHCP server's
/// range), and `neighbor` answers a ping after its MAC address was resolved on `dev` (ARP
/// across a tap tunnel).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LinkCheck {
    /// Client interface.
    pub dev: String,
    /// Range or prefix the interface's IPv4 address must lie in.
    pub address_in: Option<String>,
    /// Address that must be resolved on `dev` (lladdr known).
    pub neighbor: Option<Ipv4Addr>,
}

/// `A-B` or `A/N` → inclusive range.
fn parse_range(r: &str) -> Result<(u32, u32), String> {
    let ip = |s: &str| {
        s.trim()
            .parse::<Ipv4Addr>()
            .map(u32::from)
            .map_err(|_| format!("'{s}' in '{r}' is not an IPv4 address"))
    };
    if let Some((a, b)) = r.split_once('-') {
        let (a, b) = (ip(a)?, ip(b)?);
        if a > b {
            return Err(format!("range '{r}' ends before it starts"));
        }
        return Ok((a, b));
    }
    let (a, n) = r
        .split_once('/')
        .ok_or_else(|| format!("'{r}' is neither A-B nor A/N"))?;
    let n: u32 = n
        .parse()
        .ok()
        .filter(|n| *n <= 32)
        .ok_or_else(|| format!("bad prefix length in '{r}'"))?;
    let mask = if n == 0 { 0 } else { u32::MAX << (32 - n) };
    let base = ip(a)? & mask;
    Ok((base, base | !mask))
}

/// `kind = "resolvectl"`: what systemd-resolved says of a client link while the tunnel is
/// up (`resolvectl status LINK`, as a user asks it): every text of `shows` appears in it and
/// none of `lacks`. Needs `[topology] resolved = true`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResolvectlCheck {
    /// The link (`tun0`, `eth0`).
    pub link: String,
    /// Texts that must appear (`198.19.10.53`, `corp.example`, `-DefaultRoute`).
    #[serde(default)]
    pub shows: Vec<String>,
    /// Texts that must not appear.
    #[serde(default)]
    pub lacks: Vec<String>,
}

/// What a check asserts.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CheckSpec {
    /// Routing.
    Route(RouteCheck),
    /// Name resolution.
    Resolve(ResolveCheck),
    /// An HTTP request.
    Http(HttpCheck),
    /// A verified bulk transfer.
    Transfer(TransferCheck),
    /// ICMP echo.
    Ping(PingCheck),
    /// Path MTU.
    Mtu(MtuCheck),
    /// Only allowed flows on an interface.
    Leak(LeakCheck),
    /// MSS clamping.
    TcpMss(TcpMssCheck),
    /// The client reconnects by itself.
    Reconnect(ReconnectCheck),
    /// An engine's stage counter.
    Counter(CounterCheck),
    /// The prior state is back.
    Teardown(TeardownCheck),
    /// A client interface's address and neighbours.
    Link(LinkCheck),
    /// What systemd-resolved holds for a link.
    Resolvectl(ResolvectlCheck),
    /// The client moves to the second server when the first goes away.
    Failover(FailoverCheck),
}

/// One check of a scenario.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Check {
    /// What it is called in reports.
    pub name: String,
    /// Line in the scenario file.
    pub line: usize,
    /// What it asserts.
    pub spec: CheckSpec,
    /// `expected_failure = "why"`: the scenario shows a problem (a leak, a misconfiguration)
    /// whose evidence is the check failing; it passes when it fails and fails when it passes.
    pub expected_failure: Option<String>,
}

impl Check {
    /// This check for a subject whose client tunnel device is `dev`: wherever the file names
    /// the canonical `tun0` (a route's device, a connection's or query's interface, a capture
    /// interface, a link), `dev` is meant.
    pub fn on_tunnel_dev(&self, dev: &str) -> Check {
        let mut c = self.clone();
        let swap = |s: &mut String| {
            if s == "tun0" {
                dev.clone_into(s);
            } else if s == "client/tun0" {
                *s = format!("client/{dev}");
            }
        };
        match &mut c.spec {
            CheckSpec::Route(r) => r.dev.iter_mut().for_each(swap),
            CheckSpec::Resolve(r) => r.via.iter_mut().for_each(swap),
            CheckSpec::Http(h) => h.via.iter_mut().chain(&mut h.interface).for_each(swap),
            CheckSpec::Transfer(t) => t.via.iter_mut().for_each(swap),
            CheckSpec::Leak(l) => swap(&mut l.on),
            CheckSpec::TcpMss(t) => swap(&mut t.on),
            CheckSpec::Link(l) => swap(&mut l.dev),
            CheckSpec::Resolvectl(r) => swap(&mut r.link),
            CheckSpec::Ping(_)
            | CheckSpec::Mtu(_)
            | CheckSpec::Reconnect(_)
            | CheckSpec::Counter(_)
            | CheckSpec::Teardown(_)
            | CheckSpec::Failover(_) => {}
        }
        c
    }
}

fn check_iface(on: &str) -> Result<(), String> {
    let (host, ifname) = on
        .split_once('/')
        .ok_or_else(|| format!("'{on}' is not <host>/<interface>"))?;
    if !crate::network::is_host_name(host) || ifname.is_empty() {
        return Err(format!(
            "'{on}': host must be one of {}, client2…client4 followed by /<interface>",
            HOSTS.join(", ")
        ));
    }
    Ok(())
}

impl Check {
    /// Builds a check from its `[[check]]` table (`name`, `kind`, and the kind's fields).
    pub fn from_table(mut t: toml::Table, line: usize) -> Result<Check, String> {
        let name = match t.remove("name") {
            Some(toml::Value::String(s)) => s,
            Some(_) => return Err("check 'name' must be a string".into()),
            None => return Err("check without a 'name'".into()),
        };
        let expected_failure = match t.remove("expected_failure") {
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s),
            Some(_) => {
                return Err(format!(
                    "check '{name}': expected_failure must say why (a non-empty string)"
                ));
            }
            None => None,
        };
        let kind = match t.remove("kind") {
            Some(toml::Value::String(s)) => s,
            _ => {
                return Err(format!(
                    "check '{name}' needs kind = \"…\" (route, resolve, http, transfer, ping, mtu, leak, tcp-mss, link, resolvectl, reconnect, failover, counter, teardown)"
                ));
            }
        };
        let v = toml::Value::Table(t);
        let err = |e: toml::de::Error| format!("check '{name}' ({kind}): {}", e.message());
        let spec = match kind.as_str() {
            "route" => CheckSpec::Route(v.try_into().map_err(err)?),
            "resolve" => CheckSpec::Resolve(v.try_into().map_err(err)?),
            "http" => CheckSpec::Http(v.try_into().map_err(err)?),
            "transfer" => CheckSpec::Transfer(v.try_into().map_err(err)?),
            "ping" => CheckSpec::Ping(v.try_into().map_err(err)?),
            "reconnect" => CheckSpec::Reconnect(v.try_into().map_err(err)?),
            "failover" => CheckSpec::Failover(v.try_into().map_err(err)?),
            "counter" => CheckSpec::Counter(v.try_into().map_err(err)?),
            "mtu" => CheckSpec::Mtu(v.try_into().map_err(err)?),
            "leak" => CheckSpec::Leak(v.try_into().map_err(err)?),
            "tcp-mss" => CheckSpec::TcpMss(v.try_into().map_err(err)?),
            "teardown" => CheckSpec::Teardown(v.try_into().map_err(err)?),
            "link" => CheckSpec::Link(v.try_into().map_err(err)?),
            "resolvectl" => CheckSpec::Resolvectl(v.try_into().map_err(err)?),
            other => {
                return Err(format!(
                    "check '{name}': unknown kind '{other}' (route, resolve, http, transfer, ping, mtu, leak, tcp-mss, link, resolvectl, reconnect, failover, counter, teardown)"
                ));
            }
        };
        let bad = |m: String| format!("check '{name}': {m}");
        match &spec {
            CheckSpec::Route(r) => {
                if r.to.is_some() == r.prefix.is_some() {
                    return Err(bad("give exactly one of 'to' and 'prefix'".into()));
                }
                if let Some(p) = &r.prefix {
                    parse_prefix(p).map_err(bad)?;
                }
            }
            CheckSpec::Resolve(r) => {
                if let Some(res) = &r.resolver
                    && res != "public-dns"
                    && res != "corp-dns"
                {
                    return Err(bad(format!(
                        "resolver '{res}' is not one of public-dns, corp-dns"
                    )));
                }
            }
            CheckSpec::Http(h) => {
                if !h.url.starts_with("http://") {
                    return Err(bad(format!("url '{}' must start with http://", h.url)));
                }
            }
            CheckSpec::Transfer(t) => {
                if !t.url.starts_with("http://") {
                    return Err(bad(format!("url '{}' must start with http://", t.url)));
                }
                if t.bytes == 0 || t.bytes > crate::services::web::MAX_BODY {
                    return Err(bad("bytes must be between 1 and 64 MiB".into()));
                }
            }
            CheckSpec::Leak(l) => {
                check_iface(&l.on).map_err(bad)?;
                if l.allow.is_empty() && l.forbid.is_empty() {
                    return Err(bad("a leak check needs 'allow' or 'forbid' filters".into()));
                }
                for f in l.allow.iter().chain(&l.forbid) {
                    Filter::parse(f).map_err(|e| bad(e.to_string()))?;
                }
            }
            CheckSpec::TcpMss(m) => {
                check_iface(&m.on).map_err(bad)?;
                if let Some(f) = &m.filter {
                    Filter::parse(f).map_err(|e| bad(e.to_string()))?;
                }
            }
            CheckSpec::Counter(c) => {
                if c.who != "client" && c.who != "server" {
                    return Err(bad(format!(
                        "who must be client or server, not '{}'",
                        c.who
                    )));
                }
            }
            CheckSpec::Link(l) => {
                if let Some(r) = &l.address_in {
                    parse_range(r).map_err(bad)?;
                }
                if l.address_in.is_none() && l.neighbor.is_none() {
                    return Err(bad("a link check needs 'address_in' or 'neighbor'".into()));
                }
            }
            CheckSpec::Resolvectl(r) => {
                if r.shows.is_empty() && r.lacks.is_empty() {
                    return Err(bad("a resolvectl check needs 'shows' or 'lacks'".into()));
                }
            }
            CheckSpec::Ping(_)
            | CheckSpec::Mtu(_)
            | CheckSpec::Teardown(_)
            | CheckSpec::Reconnect(_)
            | CheckSpec::Failover(_) => {}
        }
        Ok(Check {
            name,
            line,
            spec,
            expected_failure,
        })
    }

    /// The kind as written in files.
    pub fn kind(&self) -> &'static str {
        match self.spec {
            CheckSpec::Route(_) => "route",
            CheckSpec::Resolve(_) => "resolve",
            CheckSpec::Http(_) => "http",
            CheckSpec::Transfer(_) => "transfer",
            CheckSpec::Ping(_) => "ping",
            CheckSpec::Reconnect(_) => "reconnect",
            CheckSpec::Counter(_) => "counter",
            CheckSpec::Mtu(_) => "mtu",
            CheckSpec::Leak(_) => "leak",
            CheckSpec::TcpMss(_) => "tcp-mss",
            CheckSpec::Teardown(_) => "teardown",
            CheckSpec::Link(_) => "link",
            CheckSpec::Resolvectl(_) => "resolvectl",
            CheckSpec::Failover(_) => "failover",
        }
    }

    /// True for checks that do something while the tunnel is up.
    pub fn is_live(&self) -> bool {
        !matches!(
            self.spec,
            CheckSpec::Leak(_)
                | CheckSpec::TcpMss(_)
                | CheckSpec::Teardown(_)
                | CheckSpec::Counter(_)
        )
    }
}

/// `A.B.C.D/N` → (address, length), and the form `ip route` prints it in.
fn parse_prefix(p: &str) -> Result<(IpAddr, u8, String), String> {
    let (a, l) = p
        .split_once('/')
        .ok_or_else(|| format!("prefix '{p}' is not ADDR/LEN"))?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("'{a}' in prefix '{p}' is not an IP address"))?;
    let len: u8 = l
        .parse()
        .map_err(|_| format!("bad length in prefix '{p}'"))?;
    let full = if addr.is_ipv4() { 32 } else { 128 };
    if len > full {
        return Err(format!("length too long in prefix '{p}'"));
    }
    let shown = if len == 0 {
        "default".to_owned()
    } else if len == full {
        addr.to_string()
    } else {
        format!("{addr}/{len}")
    };
    Ok((addr, len, shown))
}

/// Wall clock in ns.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What acting on a check observed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Live {
    /// Start of the check (wall clock, ns).
    pub t0_ns: u64,
    /// End of the check.
    pub t1_ns: u64,
    /// Assertions that already failed.
    pub failures: Vec<String>,
    /// What was seen (shown with failures, kept in the report).
    pub evidence: Vec<String>,
    /// One line for the progress output.
    pub summary: String,
}

/// Everything a run recorded, for judging.
pub struct RunData {
    /// All frames of all namespaces and stage taps.
    pub frames: Vec<Frame>,
    /// Every DNS query the scenario's servers saw.
    pub dns: Vec<DnsQuery>,
    /// Every web request.
    pub web: Vec<WebRequest>,
    /// Client namespace before the client started.
    pub before: NetState,
    /// While the tunnel was up.
    pub during: NetState,
    /// After the client stopped.
    pub after: NetState,
    /// The client's and the server's logs (our engines end theirs with the stage table).
    pub client_log: String,
    /// The server's log.
    pub server_log: String,
}

/// The verdict on one check.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// Passed.
    pub passed: bool,
    /// Why it failed (first line), or what it saw when it passed.
    pub message: String,
    /// Supporting evidence.
    pub evidence: Vec<String>,
}

/// Output of a command run inside a namespace.
pub(crate) struct Output {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) timed_out: bool,
}

/// Runs `prog args` in `ns` (its own /etc, so its own resolv.conf) with a deadline.
pub(crate) fn run_in(ns: &Netns, prog: &str, args: &[&str], timeout: Duration) -> Result<Output> {
    use std::process::Stdio;
    let mut child = ns
        .command(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {prog}"))?;
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            // Our own child, by pid.
            let _ = child.kill();
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output()?;
    Ok(Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        timed_out,
    })
}

/// Runs a live check against the client namespace.
pub fn act(check: &Check, net: &Network, dir: &Path) -> Result<Live> {
    let mut live = Live {
        t0_ns: now_ns(),
        ..Live::default()
    };
    let started = Instant::now();
    match &check.spec {
        CheckSpec::Route(r) => act_route(r, net, &mut live)?,
        CheckSpec::Resolve(r) => act_resolve(r, net, &mut live)?,
        CheckSpec::Http(h) => act_http(h, net, dir, &mut live)?,
        CheckSpec::Transfer(t) => act_transfer(t, net, dir, &mut live)?,
        CheckSpec::Ping(p) => act_ping(p, net, &mut live)?,
        CheckSpec::Reconnect(r) => act_reconnect(r, dir, &mut live)?,
        CheckSpec::Failover(f) => act_failover(f, net, dir, &mut live)?,
        CheckSpec::Mtu(m) => act_mtu(m, net, &mut live)?,
        CheckSpec::Link(l) => act_link(l, net, &mut live)?,
        CheckSpec::Resolvectl(r) => act_resolvectl(r, net, &mut live),
        CheckSpec::Leak(_)
        | CheckSpec::TcpMss(_)
        | CheckSpec::Teardown(_)
        | CheckSpec::Counter(_) => {}
    }
    live.t1_ns = now_ns();
    if live.summary.is_empty() {
        live.summary = format!("{} ({} ms)", check.name, started.elapsed().as_millis());
    } else {
        live.summary = format!("{} ({} ms)", live.summary, started.elapsed().as_millis());
    }
    Ok(live)
}

fn act_route(r: &RouteCheck, net: &Network, live: &mut Live) -> Result<()> {
    if let Some(to) = r.to {
        let out = net
            .client
            .ip(&["route", "get", &to.to_string()])
            .unwrap_or_else(|e| format!("(no route: {e:#})"));
        let line = out.lines().next().unwrap_or("").trim().to_owned();
        let dev = line
            .split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
            .map(str::to_owned);
        live.evidence.push(format!("ip route get {to}: {line}"));
        live.summary = format!("route to {to} → {}", dev.as_deref().unwrap_or("none"));
        match (&r.dev, r.present) {
            (Some(want), true) if dev.as_deref() != Some(want) => live.failures.push(format!(
                "{to} is routed via {}, expected {want}",
                dev.as_deref().unwrap_or("nothing")
            )),
            (Some(want), false) if dev.as_deref() == Some(want) => {
                live.failures
                    .push(format!("{to} is routed via {want}, expected not"));
            }
            (None, true) if dev.is_none() => live.failures.push(format!("no route to {to}")),
            (None, false) if dev.is_some() => live.failures.push(format!(
                "{to} is routed via {}, expected no route",
                dev.as_deref().unwrap_or("?")
            )),
            _ => {}
        }
    }
    if let Some(p) = &r.prefix {
        let (_, _, shown) = parse_prefix(p).map_err(anyhow::Error::msg)?;
        let table = NetState::record(&net.client)?.routes;
        let hits: Vec<&String> = table
            .iter()
            .filter(|l| l.split_whitespace().next() == Some(shown.as_str()))
            .filter(|l| {
                r.dev.as_ref().is_none_or(|d| {
                    l.split_whitespace().skip_while(|w| *w != "dev").nth(1) == Some(d)
                })
            })
            .collect();
        live.summary = format!(
            "route {p}{}: {}",
            r.dev
                .as_ref()
                .map_or(String::new(), |d| format!(" dev {d}")),
            if hits.is_empty() { "absent" } else { "present" }
        );
        match (hits.is_empty(), r.present) {
            (true, true) => {
                live.failures.push(format!(
                    "no route {p}{} in the client's table",
                    r.dev
                        .as_ref()
                        .map_or(String::new(), |d| format!(" via {d}"))
                ));
                live.evidence
                    .extend(table.iter().map(|l| format!("route: {l}")));
            }
            (false, false) => {
                live.failures
                    .push(format!("route {p} is present, expected absent"));
                live.evidence
                    .extend(hits.iter().map(|l| format!("route: {l}")));
            }
            _ => live
                .evidence
                .extend(hits.iter().map(|l| format!("route: {l}"))),
        }
    }
    Ok(())
}

fn act_resolve(r: &ResolveCheck, net: &Network, live: &mut Live) -> Result<()> {
    let out = run_in(
        &net.client,
        "getent",
        &[
            if r.answer.is_some_and(|a| a.is_ipv6()) {
                "ahostsv6"
            } else {
                "ahostsv4"
            },
            &r.host,
        ],
        Duration::from_secs(12),
    )?;
    let addrs: BTreeSet<IpAddr> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    live.evidence.push(format!(
        "getent {}: {}",
        r.host,
        if addrs.is_empty() {
            format!(
                "no answer (exit {:?}{})",
                out.code,
                if out.timed_out { ", timed out" } else { "" }
            )
        } else {
            shown.join(" ")
        }
    ));
    live.summary = format!(
        "resolve {} → {}",
        r.host,
        if shown.is_empty() {
            "nothing".to_owned()
        } else {
            shown.join(" ")
        }
    );
    if r.fails {
        if !addrs.is_empty() {
            live.failures.push(format!(
                "{} resolved to {}, expected no answer",
                r.host,
                shown.join(" ")
            ));
        }
        return Ok(());
    }
    if addrs.is_empty() {
        live.failures.push(format!("{} did not resolve", r.host));
    } else if let Some(want) = r.answer
        && !addrs.contains(&want)
    {
        live.failures.push(format!(
            "{} resolved to {}, expected {want}",
            r.host,
            shown.join(" ")
        ));
    }
    Ok(())
}

/// What `curl` reported.
struct Curl {
    exit: Option<i32>,
    code: u16,
    local: Option<IpAddr>,
    body: String,
    stderr: String,
}

/// `curl` in the client namespace.
fn curl(net: &Network, args: &[&str], timeout_s: u64) -> Result<Curl> {
    let max = timeout_s.to_string();
    let mut a = vec![
        "-sS",
        "--max-time",
        &max,
        "-w",
        "\n%{http_code} %{local_ip}",
    ];
    a.extend_from_slice(args);
    let out = run_in(&net.client, "curl", &a, Duration::from_secs(timeout_s + 5))?;
    let (body, tail) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    let mut t = tail.split_whitespace();
    Ok(Curl {
        exit: out.code,
        code: t.next().and_then(|c| c.parse().ok()).unwrap_or(0),
        local: t.next().and_then(|a| a.parse().ok()),
        body: body.to_owned(),
        stderr: out.stderr,
    })
}

fn check_via(via: Option<&String>, local: Option<IpAddr>, net: &Network, live: &mut Live) {
    let Some(want) = via else { return };
    let state = NetState::record(&net.client).unwrap_or_default();
    let iface = local.and_then(|a| state.iface_of(a));
    live.evidence.push(format!(
        "local address {} on {}",
        local.map_or("?".into(), |a| a.to_string()),
        iface.as_deref().unwrap_or("?")
    ));
    if iface.as_deref() != Some(want.as_str()) {
        live.failures.push(format!(
            "the connection left via {}, expected {want}",
            iface.as_deref().unwrap_or("an unknown interface")
        ));
    }
}

fn act_http(h: &HttpCheck, net: &Network, dir: &Path, live: &mut Live) -> Result<()> {
    let _ = dir;
    let Curl {
        exit,
        code,
        local,
        body,
        stderr: err,
    } = match &h.interface {
        Some(i) => curl(net, &["--interface", i, &h.url], 8)?,
        None => curl(net, &[&h.url], 8)?,
    };
    live.evidence.push(format!(
        "curl {}: exit {:?}, HTTP {code}, body {:?}{}",
        h.url,
        exit,
        body.trim(),
        if err.is_empty() {
            String::new()
        } else {
            format!(", {err}")
        }
    ));
    live.summary = format!(
        "GET {} → {}",
        h.url,
        if exit == Some(0) {
            format!("{code} {:?}", body.trim())
        } else {
            format!("failed ({err})")
        }
    );
    if h.fails {
        if exit == Some(0) {
            live.failures
                .push(format!("{} answered, expected failure", h.url));
        }
        return Ok(());
    }
    if exit != Some(0) || code != 200 {
        live.failures.push(format!(
            "GET {} failed: exit {exit:?}, HTTP {code} {err}",
            h.url
        ));
        return Ok(());
    }
    if let Some(want) = &h.body
        && !body.contains(want.as_str())
    {
        live.failures
            .push(format!("body {:?} does not contain {want:?}", body.trim()));
    }
    check_via(h.via.as_ref(), local, net, live);
    Ok(())
}

/// TCP segments the client namespace retransmitted so far (`RetransSegs` of its
/// /proc/net/snmp): the inner connections' and, with a TCP tunnel, the outer one's.
fn tcp_retransmits(ns: &Netns) -> Option<u64> {
    let out = run_in(ns, "cat", &["/proc/net/snmp"], Duration::from_secs(5)).ok()?;
    let mut tcp = out.stdout.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let i = names.split_whitespace().position(|n| n == "RetransSegs")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn act_transfer(t: &TransferCheck, net: &Network, dir: &Path, live: &mut Live) -> Result<()> {
    let retrans_before = tcp_retransmits(&net.client);
    let started = Instant::now();
    let base = t.url.trim_end_matches('/');
    let (r, what) = if t.upload {
        let file = dir.join("upload.bin");
        write_bulk(&file, t.bytes)?;
        let data = format!("@{}", file.display());
        let url = format!("{base}/upload");
        let r = curl(
            net,
            &[
                // No "Expect: 100-continue" (curl would wait a second for it).
                "-H",
                "Expect:",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &data,
                &url,
            ],
            t.timeout_s,
        )?;
        let _ = std::fs::remove_file(&file);
        (r, format!("upload {} bytes to {url}", t.bytes))
    } else {
        let file = dir.join("download.bin");
        let url = format!("{base}/bytes/{}", t.bytes);
        let out = file.display().to_string();
        let mut r = curl(net, &["-o", &out, &url], t.timeout_s)?;
        let data = std::fs::read(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        let verdict = if data.len() != t.bytes {
            format!("received {} of {} bytes", data.len(), t.bytes)
        } else {
            match verify_bulk(&data) {
                None => format!("received {} ok", data.len()),
                Some(at) => format!("received {} corrupt at {at}", data.len()),
            }
        };
        // The body went to the file; judge by what arrived there.
        r.body = verdict;
        (r, format!("download {} bytes from {url}", t.bytes))
    };
    let Curl {
        exit,
        code,
        local,
        body,
        stderr: err,
    } = r;
    let secs = started.elapsed().as_secs_f64();
    let ok = exit == Some(0) && code == 200 && body.trim() == format!("received {} ok", t.bytes);
    live.evidence.push(format!(
        "{what}: exit {exit:?}, HTTP {code}, {} in {secs:.2} s{}",
        body.trim(),
        if err.is_empty() {
            String::new()
        } else {
            format!(", {err}")
        }
    ));
    let retransmitted = match (retrans_before, tcp_retransmits(&net.client)) {
        (Some(a), Some(b)) => format!(", {} TCP segments retransmitted", b.saturating_sub(a)),
        _ => String::new(),
    };
    live.evidence
        .push(format!("client namespace{retransmitted}"));
    live.summary = if ok {
        format!(
            "{what}: ok, {:.1} Mbit/s{retransmitted}",
            t.bytes as f64 * 8.0 / secs / 1e6
        )
    } else {
        format!(
            "{what}: failed ({})",
            if err.is_empty() { body.trim() } else { &err }
        )
    };
    if t.fails {
        if ok {
            live.failures
                .push(format!("{what} succeeded, expected failure"));
        }
        return Ok(());
    }
    if !ok {
        live.failures.push(format!(
            "{what} failed: exit {exit:?}, HTTP {code}, {}{}",
            body.trim(),
            if err.is_empty() {
                String::new()
            } else {
                format!(", {err}")
            }
        ));
        return Ok(());
    }
    check_via(t.via.as_ref(), local, net, live);
    Ok(())
}

/// Waits for the client's log (`client.log` in the run directory) to show the tunnel up once
/// more than it did when the check started.
fn act_reconnect(r: &ReconnectCheck, dir: &Path, live: &mut Live) -> Result<()> {
    const UP: &str = "Initialization Sequence Completed";
    let log = dir.join("client.log");
    let ups = || {
        std::fs::read_to_string(&log)
            .map(|t| t.matches(UP).count())
            .unwrap_or(0)
    };
    let before = ups();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(r.within_s);
    while ups() <= before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = ups();
    if after > before {
        live.summary = format!(
            "the client reconnected after {:.1} s",
            start.elapsed().as_secs_f64()
        );
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        live.evidence.extend(
            text.lines()
                .filter(|l| l.contains("restart") || l.contains("Restart") || l.contains(UP))
                .map(str::to_owned)
                .take(10),
        );
    } else {
        live.summary = "no reconnection".into();
        live.failures.push(format!(
            "the client did not come back within {} s",
            r.within_s
        ));
    }
    Ok(())
}

/// The first server has just been stopped (by the runner): the client's next tunnel must
/// be the second server's.
fn act_failover(f: &FailoverCheck, net: &Network, dir: &Path, live: &mut Live) -> Result<()> {
    act_reconnect(
        &ReconnectCheck {
            within_s: f.within_s,
        },
        dir,
        live,
    )?;
    if !live.failures.is_empty() {
        return Ok(());
    }
    let net2 = crate::network::addr::TUNNEL2_NET.octets();
    let state = NetState::record(&net.client)?;
    let tun = state
        .addresses
        .iter()
        .find(|a| a.starts_with("tun") || a.starts_with("tap"))
        .cloned();
    live.evidence.push(format!(
        "tunnel address now: {}",
        tun.as_deref().unwrap_or("none")
    ));
    let on_second = tun.as_deref().is_some_and(|a| {
        a.split_whitespace()
            .nth(1)
            .and_then(|cidr| cidr.split('/').next()?.parse::<Ipv4Addr>().ok())
            .is_some_and(|ip| ip.octets()[..3] == net2[..3])
    });
    if on_second {
        live.summary = format!("{} — on the second server", live.summary);
    } else {
        live.failures.push(format!(
            "the client came back, but not on the second server (its tunnel address is not in {}/24)",
            crate::network::addr::TUNNEL2_NET
        ));
    }
    Ok(())
}

fn act_link(l: &LinkCheck, net: &Network, live: &mut Live) -> Result<()> {
    let mut seen = vec![];
    if let Some(r) = &l.address_in {
        let (lo, hi) = parse_range(r).map_err(anyhow::Error::msg)?;
        let out = net
            .client
            .ip(&["-4", "-o", "addr", "show", "dev", &l.dev])
            .unwrap_or_else(|e| format!("({e:#})"));
        live.evidence
            .push(format!("ip -4 addr show dev {}: {}", l.dev, out.trim()));
        let words: Vec<&str> = out.split_whitespace().collect();
        let addrs: Vec<Ipv4Addr> = words
            .windows(2)
            .filter(|w| w[0] == "inet")
            .filter_map(|w| w[1].split('/').next()?.parse().ok())
            .collect();
        match addrs.iter().find(|a| (lo..=hi).contains(&u32::from(**a))) {
            Some(a) => seen.push(format!("{} has {a} (in {r})", l.dev)),
            None => live
                .failures
                .push(format!("{} has no IPv4 address in {r} ({addrs:?})", l.dev)),
        }
    }
    if let Some(n) = l.neighbor {
        let p = crate::traffic::ping(&net.client, &n.to_string(), 1, 56, false)?;
        let out = net
            .client
            .ip(&["-4", "neigh", "show", "dev", &l.dev, &n.to_string()])
            .unwrap_or_else(|e| format!("({e:#})"));
        let line = out.lines().next().unwrap_or("").trim().to_owned();
        live.evidence.push(format!(
            "ping {n}: {}/{} replies; ip neigh: {}",
            p.received,
            p.transmitted,
            if line.is_empty() { "(no entry)" } else { &line }
        ));
        let resolved =
            line.contains("lladdr") && !line.contains("FAILED") && !line.contains("INCOMPLETE");
        if resolved && p.received > 0 {
            // The MAC address is in the evidence; the summary stays the same across runs.
            seen.push(format!("{n} resolved on {}", l.dev));
        } else {
            live.failures.push(format!(
                "{n} not resolved on {} ({} of 1 pings answered)",
                l.dev, p.received
            ));
        }
    }
    live.summary = format!("link {}: {}", l.dev, seen.join("; "));
    Ok(())
}

fn act_resolvectl(r: &ResolvectlCheck, net: &Network, live: &mut Live) {
    let Some(resolved) = &net.resolved else {
        live.failures
            .push("not applicable: the client runs no systemd-resolved".into());
        return;
    };
    let out = match resolved.resolvectl(&net.client, &["status", &r.link]) {
        Ok(o) => o,
        Err(e) => {
            live.failures.push(format!("{e:#}"));
            return;
        }
    };
    live.evidence.extend(
        std::iter::once(format!("resolvectl status {}:", r.link))
            .chain(out.lines().map(|l| format!("  {}", l.trim_end()))),
    );
    for s in &r.shows {
        if !out.contains(s.as_str()) {
            live.failures
                .push(format!("resolvectl status {} does not show {s:?}", r.link));
        }
    }
    for s in &r.lacks {
        if out.contains(s.as_str()) {
            live.failures
                .push(format!("resolvectl status {} shows {s:?}", r.link));
        }
    }
    live.summary = format!(
        "resolvectl status {}: {}",
        r.link,
        if live.failures.is_empty() {
            let mut seen: Vec<String> = r.shows.iter().map(|s| format!("shows {s}")).collect();
            seen.extend(r.lacks.iter().map(|s| format!("lacks {s}")));
            seen.join(", ")
        } else {
            live.failures.join("; ")
        }
    );
}

fn act_ping(p: &PingCheck, net: &Network, live: &mut Live) -> Result<()> {
    let from = p.from.as_deref().unwrap_or("client");
    let ns = net
        .host(from)
        .with_context(|| format!("no host '{from}' in this topology"))?;
    let r = crate::traffic::ping(ns, &p.to.to_string(), p.count, p.size, false)?;
    live.evidence
        .push(format!("ping {} from {from}: {}", p.to, r.output));
    live.summary = format!(
        "ping {} from {from}: {}/{} replies",
        p.to, r.received, r.transmitted
    );
    if p.fails {
        if r.received > 0 {
            live.failures.push(format!(
                "{} answered {} of {} pings, expected none",
                p.to, r.received, r.transmitted
            ));
        }
    } else if r.received < p.count {
        live.failures.push(format!(
            "{} answered {} of {} pings",
            p.to, r.received, p.count
        ));
    }
    Ok(())
}

/// One don't-fragment echo of `size` total bytes; true when answered.
fn df_probe(ns: &Netns, to: IpAddr, size: u32) -> Result<bool> {
    let payload = size.saturating_sub(28).to_string();
    let out = run_in(
        ns,
        "ping",
        &[
            "-n",
            "-c",
            "1",
            "-W",
            "0.25",
            "-M",
            "do",
            "-s",
            &payload,
            &to.to_string(),
        ],
        Duration::from_secs(3),
    )?;
    Ok(out.code == Some(0))
}

fn act_mtu(m: &MtuCheck, net: &Network, live: &mut Live) -> Result<()> {
    // Bisection between a size that must pass (576, the IPv4 minimum every path carries)
    // and one past the largest interface MTU.
    let (mut lo, mut hi) = (576u32, 1501u32);
    let mut probes = vec![];
    if !df_probe(&net.client, m.to, lo)? {
        live.failures
            .push(format!("even a {lo}-byte packet does not reach {}", m.to));
        live.summary = format!("path MTU to {}: below {lo}", m.to);
        return Ok(());
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let ok = df_probe(&net.client, m.to, mid)?;
        probes.push(format!("{mid}:{}", if ok { "ok" } else { "lost" }));
        if ok {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    live.evidence.push(format!(
        "ping -M do probes (bytes:result): {}",
        probes.join(" ")
    ));
    live.summary = format!("largest packet to {} with DF: {lo} bytes", m.to);
    if lo != m.expect {
        live.failures.push(format!(
            "the largest packet that reaches {} is {lo} bytes, expected {}",
            m.to, m.expect
        ));
    }
    Ok(())
}

/// Judges a check with everything the run recorded.
pub fn judge(check: &Check, live: &Live, data: &RunData) -> Verdict {
    let v = judge_check(check, live, data);
    match &check.expected_failure {
        None => v,
        Some(why) if v.passed => Verdict {
            passed: false,
            message: format!("expected to fail ({why}), but passed: {}", v.message),
            evidence: v.evidence,
        },
        Some(why) => Verdict {
            passed: true,
            message: format!("fails as expected ({why}): {}", v.message),
            evidence: v.evidence,
        },
    }
}

fn judge_check(check: &Check, live: &Live, data: &RunData) -> Verdict {
    let mut failures = live.failures.clone();
    let mut evidence = live.evidence.clone();
    // Client addresses: WAN and tunnel (from the state while the tunnel was up).
    let client_addrs: Vec<IpAddr> = data
        .during
        .addresses
        .iter()
        .filter_map(|l| l.split_once(' ')?.1.split('/').next()?.parse().ok())
        .filter(|a: &IpAddr| !a.is_loopback())
        .collect();
    // Service logs and kernel capture timestamps are taken before the check's command
    // returns, so the window needs no slack.
    let in_window = |ts: u64| ts >= live.t0_ns && ts <= live.t1_ns;
    match &check.spec {
        CheckSpec::Resolve(r) => {
            let asked: Vec<&DnsQuery> = data
                .dns
                .iter()
                .filter(|q| q.name == r.host.to_ascii_lowercase() && in_window(q.at_ns))
                .collect();
            for q in &asked {
                evidence.push(format!(
                    "{} got {} {} from {} on {}{} → {} {:?}",
                    q.server,
                    q.qtype,
                    q.name,
                    q.from,
                    q.iface,
                    if q.forwarded {
                        " (forwarded upstream)"
                    } else {
                        ""
                    },
                    q.rcode,
                    q.answers
                ));
            }
            let from_client: BTreeSet<&str> = asked
                .iter()
                .filter(|q| client_addrs.contains(&q.from.ip()))
                .map(|q| q.server.as_str())
                .collect();
            if let Some(want) = &r.resolver
                && from_client.iter().copied().collect::<Vec<_>>() != [want.as_str()]
            {
                failures.push(format!(
                    "{} was asked of {} by the client, expected {want} only",
                    r.host,
                    if from_client.is_empty() {
                        "no scenario resolver".to_owned()
                    } else {
                        from_client
                            .iter()
                            .copied()
                            .collect::<Vec<_>>()
                            .join(" and ")
                    }
                ));
            }
            if let Some(via) = &r.via {
                let mut ifaces: BTreeSet<String> = BTreeSet::new();
                for f in data.frames.iter().filter(|f| {
                    f.iface.starts_with("client/")
                        && f.iface != "client/lo"
                        && f.outgoing == Some(true)
                        && in_window(f.ts_ns)
                }) {
                    let p = packet::parse(f.link, &f.data);
                    if p.dns()
                        .is_some_and(|d| !d.response && d.name == r.host.to_ascii_lowercase())
                    {
                        ifaces.insert(f.iface["client/".len()..].to_owned());
                    }
                }
                evidence.push(format!(
                    "client sent the query on: {}",
                    if ifaces.is_empty() {
                        "no interface (answered locally?)".to_owned()
                    } else {
                        ifaces.iter().cloned().collect::<Vec<_>>().join(", ")
                    }
                ));
                if ifaces.iter().collect::<Vec<_>>() != [via] {
                    failures.push(format!(
                        "the query for {} left the client on {}, expected {via} only",
                        r.host,
                        if ifaces.is_empty() {
                            "no interface".to_owned()
                        } else {
                            ifaces.into_iter().collect::<Vec<_>>().join(" and ")
                        }
                    ));
                }
            }
        }
        CheckSpec::Http(h) if !h.fails => {
            if let Some(want) = h.seen_from {
                let seen: Vec<IpAddr> = data
                    .web
                    .iter()
                    .filter(|w| in_window(w.at_ns))
                    .map(|w| w.from.ip())
                    .collect();
                evidence.push(format!("web servers saw requests from {seen:?}"));
                if !seen.contains(&want) || seen.iter().any(|a| *a != want) {
                    failures.push(format!(
                        "the web server saw the request from {seen:?}, expected {want}"
                    ));
                }
            }
        }
        CheckSpec::Leak(l) => judge_leak(l, data, &mut failures, &mut evidence),
        CheckSpec::TcpMss(m) => {
            let filter = m.filter.as_deref().and_then(|f| Filter::parse(f).ok());
            let mut seen = vec![];
            for f in data.frames.iter().filter(|f| f.iface == m.on) {
                let p = packet::parse(f.link, &f.data);
                if let L4::Tcp { flags, mss, .. } = p.l4
                    && flags & 0x02 != 0
                    && filter.as_ref().is_none_or(|x| x.matches(&p, f.outgoing))
                {
                    seen.push((mss, p.describe()));
                }
            }
            evidence.extend(seen.iter().take(6).map(|(mss, d)| {
                format!("{d} mss {}", mss.map_or("none".into(), |m| m.to_string()))
            }));
            if seen.is_empty() {
                failures.push(format!("no TCP SYN seen on {}", m.on));
            }
            for (mss, d) in &seen {
                match mss {
                    Some(v) if *v <= m.max => {}
                    Some(v) => failures.push(format!("{d}: MSS {v} > {}", m.max)),
                    None => failures.push(format!("{d}: no MSS option")),
                }
            }
        }
        CheckSpec::Counter(c) => {
            let log = if c.who == "client" {
                &data.client_log
            } else {
                &data.server_log
            };
            match crate::process::stage_counter(log, &c.stage, c.drop.as_deref()) {
                Some((n, line)) => {
                    evidence.push(line);
                    let what = match c.drop.as_deref() {
                        Some(d) => format!("{} {} drops '{d}'", c.who, c.stage),
                        None if c.stage == "reordering" => {
                            format!("{} packets accepted late", c.who)
                        }
                        None => format!("{} {} out", c.who, c.stage),
                    };
                    if n < c.min || c.max.is_some_and(|m| n > m) {
                        failures.push(format!(
                            "{what}: {n}, expected {}{}",
                            c.min,
                            c.max
                                .map_or_else(|| " or more".to_owned(), |m| format!("..={m}"))
                        ));
                    } else {
                        evidence.insert(0, format!("{what}: {n}"));
                    }
                }
                None => failures.push(format!(
                    "no '{}' stage in the {} log's counter table (is that side ours?)",
                    c.stage, c.who
                )),
            }
        }
        CheckSpec::Teardown(_) => {
            let diff = data.before.diff(&data.after);
            if diff.is_empty() {
                evidence.push(format!(
                    "{} routes, {} addresses and resolv.conf as before",
                    data.after.routes.len(),
                    data.after.addresses.len()
                ));
            } else {
                failures.push(format!(
                    "the client namespace differs from before the tunnel ({} lines)",
                    diff.len()
                ));
                evidence.extend(diff);
            }
        }
        _ => {}
    }
    Verdict {
        passed: failures.is_empty(),
        message: failures.first().cloned().unwrap_or_else(|| {
            if live.summary.is_empty() {
                evidence.first().cloned().unwrap_or_default()
            } else {
                live.summary.clone()
            }
        }),
        evidence: if failures.len() > 1 {
            failures[1..].iter().cloned().chain(evidence).collect()
        } else {
            evidence
        },
    }
}

fn judge_leak(
    l: &LeakCheck,
    data: &RunData,
    failures: &mut Vec<String>,
    evidence: &mut Vec<String>,
) {
    let allow: Vec<Filter> = l
        .allow
        .iter()
        .filter_map(|f| Filter::parse(f).ok())
        .collect();
    let forbid: Vec<Filter> = l
        .forbid
        .iter()
        .filter_map(|f| Filter::parse(f).ok())
        .collect();
    let start = data.frames.first().map_or(0, |f| f.ts_ns);
    let mut total = 0usize;
    let mut bad = vec![];
    for f in data.frames.iter().filter(|f| f.iface == l.on) {
        total += 1;
        let p = packet::parse(f.link, &f.data);
        let why = if let Some(x) = forbid.iter().find(|x| x.matches(&p, f.outgoing)) {
            Some(format!("matches forbidden '{x}'"))
        } else if !allow.is_empty() && !allow.iter().any(|x| x.matches(&p, f.outgoing)) {
            Some("matches no allowed flow".to_owned())
        } else {
            None
        };
        if let Some(why) = why {
            bad.push(format!(
                "+{:.3}s {} {}: {why}",
                (f.ts_ns.saturating_sub(start)) as f64 / 1e9,
                if f.outgoing == Some(true) {
                    "out"
                } else {
                    "in"
                },
                p.describe()
            ));
        }
    }
    evidence.push(format!(
        "{total} packets on {}, {} outside the rules",
        l.on,
        bad.len()
    ));
    if total == 0 {
        failures.push(format!(
            "no packets captured on {} (is the interface name right?)",
            l.on
        ));
    }
    if !bad.is_empty() {
        failures.push(format!(
            "{} packet(s) on {} break the rules; first: {}",
            bad.len(),
            l.on,
            bad[0]
        ));
        evidence.extend(bad.into_iter().take(8));
    }
}
