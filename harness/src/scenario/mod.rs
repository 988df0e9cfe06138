//! Scenarios: declarative files in `scenarios/*.toml` — topology, subjects, the tunnel and
//! what it pushes, and the checks — and the runner that plays them.
//!
//! ```toml
//! description = "corp routes and the corp DNS domain via the tunnel, everything else direct"
//!
//! [topology]            # the canonical network (see network.rs), with options
//! underlay_mtu = 1400
//!
//! [subjects]            # who plays which role; `pairings` runs several
//! client = "ours"
//! server = "openvpn"
//!
//! [tunnel]
//! push = ["route 198.19.10.0 255.255.255.0", "dhcp-option DNS 198.19.10.53"]
//! client_dns = "stub"
//!
//! [[check]]
//! name = "corp LAN through the tunnel"
//! kind = "route"
//! to = "198.19.10.80"
//! dev = "tun0"
//! ```
//!
//! Check kinds are documented on [`checks::CheckSpec`]. Every error in a file names
//! `file:line`.

pub mod checks;
pub mod golden;
pub mod oracle;
pub mod report;
pub mod run;
pub mod traffic;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::network::TopologySpec;
use crate::subjects::Implementation;

pub use checks::{Check, CheckSpec};
pub use traffic::Traffic;

/// Which implementation plays a role, as written in scenario files.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    /// tunscope.
    Ours,
    /// Stock OpenVPN 2.6.
    Openvpn,
    /// WireGuard (wireguard-go + wg), both roles ([`crate::wireguard`]).
    Wireguard,
    /// OpenSSH's `ssh -w` point-to-point tunnel to sshd, both roles ([`crate::ssh`]).
    Ssh,
    /// openconnect (AnyConnect protocol, vpnc-script) to ocserv, both roles
    /// ([`crate::openconnect`]).
    Openconnect,
    /// strongSwan's charon (IKEv2, userspace ESP through kernel-libipsec), both roles
    /// ([`crate::ipsec`]).
    Ipsec,
}

impl Subject {
    /// The harness's OpenVPN implementation handle (none for another VPN).
    pub fn implementation(self) -> Option<Implementation> {
        match self {
            Subject::Ours => Some(Implementation::Ours),
            Subject::Openvpn => Some(Implementation::OpenVpn),
            Subject::Wireguard | Subject::Ssh | Subject::Openconnect | Subject::Ipsec => None,
        }
    }

    /// `ours` / `openvpn`.
    pub fn name(self) -> &'static str {
        match self {
            Subject::Ours => "ours",
            Subject::Openvpn => "openvpn",
            Subject::Wireguard => "wireguard",
            Subject::Ssh => "ssh",
            Subject::Openconnect => "openconnect",
            Subject::Ipsec => "ipsec",
        }
    }

    /// The client's tunnel device: `tun0` (the name scenario files use), but for strongSwan,
    /// whose kernel-libipsec plugin names its device `ipsec0` and routes by that name.
    pub fn tunnel_dev(self) -> &'static str {
        match self {
            Subject::Ipsec => crate::ipsec::DEVICE,
            _ => "tun0",
        }
    }
}

impl std::str::FromStr for Subject {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ours" | "tunscope" => Ok(Subject::Ours),
            "openvpn" => Ok(Subject::Openvpn),
            "wireguard" | "wg" => Ok(Subject::Wireguard),
            "ssh" => Ok(Subject::Ssh),
            "openconnect" | "anyconnect" => Ok(Subject::Openconnect),
            "ipsec" | "strongswan" => Ok(Subject::Ipsec),
            o => Err(format!(
                "unknown subject '{o}' (ours, openvpn, wireguard, ssh, openconnect, ipsec)"
            )),
        }
    }
}

/// A client/server pairing.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pairing {
    /// Client implementation.
    pub client: Subject,
    /// Server implementation.
    pub server: Subject,
}

impl Pairing {
    /// `ours-openvpn` (client first).
    pub fn label(&self) -> String {
        format!("{}-{}", self.client.name(), self.server.name())
    }
}

/// How the client applies pushed DNS.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ClientDns {
    /// Nothing.
    #[default]
    None,
    /// Rewrite resolv.conf (stock openvpn: the `tunscope dns` script hook).
    ResolvConf,
    /// Split-DNS stub on 127.0.0.1.
    Stub,
    /// systemd-resolved over D-Bus (needs `[topology] resolved = true`).
    Resolved,
    /// A dnsmasq on 127.0.0.1 with per-domain servers (NetworkManager's `dns=dnsmasq`).
    Dnsmasq,
}

impl ClientDns {
    /// The `--dns-backend`/`--backend` argument.
    pub fn arg(self) -> &'static str {
        match self {
            ClientDns::None => "none",
            ClientDns::ResolvConf => "resolv-conf",
            ClientDns::Stub => "stub",
            ClientDns::Resolved => "resolved",
            ClientDns::Dnsmasq => "dnsmasq",
        }
    }
}

/// Transport.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportName {
    /// UDP.
    #[default]
    Udp,
    /// TCP.
    Tcp,
}

/// Control-channel wrap.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WrapName {
    /// None.
    #[default]
    None,
    /// tls-auth.
    TlsAuth,
    /// tls-crypt.
    TlsCrypt,
}

/// The tunnel device: routed IP packets or bridged Ethernet frames.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DevName {
    /// `dev tun`.
    #[default]
    Tun,
    /// `dev tap`.
    Tap,
}

/// The tunnel: transport, ciphers, what the server pushes, how the client applies DNS.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TunnelOpts {
    /// `udp` (default) or `tcp`.
    #[serde(default)]
    pub proto: TransportName,
    /// `tun` (default) or `tap`.
    #[serde(default)]
    pub dev: DevName,
    /// The tunnel itself over IPv6: the server listens on IPv6 (`proto udp6`/`tcp6-server`)
    /// and the client connects to its IPv6 address (needs `ipv6` in `[topology]`).
    #[serde(default)]
    pub outer_ipv6: bool,
    /// Server `data-ciphers` (default: AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305).
    #[serde(default)]
    pub ciphers: Option<Vec<String>>,
    /// Control-channel wrap.
    #[serde(default)]
    pub wrap: WrapName,
    /// Options the server pushes (each becomes `push "…"`).
    #[serde(default)]
    pub push: Vec<String>,
    /// How the client applies pushed DNS.
    #[serde(default)]
    pub client_dns: ClientDns,
    /// Extra client config lines.
    #[serde(default)]
    pub client_options: Vec<String>,
    /// The client's kill switch: ours with `--kill-switch`, stock openvpn with `tunscope
    /// kill-switch` as its up/down script.
    #[serde(default)]
    pub kill_switch: bool,
    /// Extra server config lines.
    #[serde(default)]
    pub server_options: Vec<String>,
}

/// `[capture]`: how much of each frame the scenario's captures keep.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CaptureOpts {
    /// Bytes kept of each frame on the namespaces' interfaces (at least 128: headers, the
    /// OpenVPN opcode and packet-id, a DNS question); the wire length is kept. Absent: whole
    /// frames. For scenarios with `[[traffic]]`, whose payload nobody reads.
    #[serde(default)]
    pub snaplen: Option<u32>,
    /// Our engines' stage taps keep one data packet in this many (by packet-id, so both
    /// ends keep the same packets and journeys stay whole; 1–1000). Absent: every packet.
    #[serde(default)]
    pub stage_sample: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSubjects {
    client: Option<Subject>,
    server: Option<Subject>,
    pairings: Option<Vec<Pairing>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: String,
    #[serde(default)]
    topology: TopologySpec,
    #[serde(default)]
    subjects: RawSubjects,
    #[serde(default)]
    tunnel: TunnelOpts,
    #[serde(default)]
    capture: CaptureOpts,
    #[serde(default)]
    check: Vec<toml::Spanned<toml::Table>>,
    #[serde(default)]
    traffic: Vec<toml::Spanned<toml::Table>>,
    /// The automatic leak oracle is expected to find a leak: the scenario shows one.
    #[serde(default)]
    oracle_expected_failure: Option<String>,
}

/// A loaded scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Name (the file stem).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// What it shows.
    pub description: String,
    /// Network options.
    pub topology: TopologySpec,
    /// Pairings it runs by default.
    pub pairings: Vec<Pairing>,
    /// The tunnel.
    pub tunnel: TunnelOpts,
    /// Capture options.
    pub capture: CaptureOpts,
    /// The checks, in file order.
    pub checks: Vec<Check>,
    /// Bounded load run together once the tunnel is up, each judged as a check.
    pub traffic: Vec<Traffic>,
    /// `oracle_expected_failure = "why"`: the scenario shows a leak, so the automatic leak
    /// oracle passes when it finds one and fails when it does not.
    pub oracle_expected_failure: Option<String>,
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |t| t.matches('\n').count() + 1)
}

impl Scenario {
    /// The scenario for a client whose tunnel device is `dev` ([`Check::on_tunnel_dev`]).
    pub fn on_tunnel_dev(&self, dev: &str) -> Scenario {
        let mut s = self.clone();
        s.checks = self.checks.iter().map(|c| c.on_tunnel_dev(dev)).collect();
        s
    }

    /// Loads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        Scenario::parse(path, &text)
    }

    /// Parses scenario text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Scenario> {
        let file = path.display();
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            anyhow::anyhow!("{file}:{line}: {}", e.message())
        })?;
        let pairings = match raw.subjects.pairings {
            Some(p) if !p.is_empty() => p,
            Some(_) => bail!("{file}: [subjects] pairings is empty"),
            None => vec![Pairing {
                client: raw.subjects.client.unwrap_or(Subject::Ours),
                server: raw.subjects.server.unwrap_or(Subject::Ours),
            }],
        };
        let mut checks = vec![];
        for spanned in raw.check {
            let line = line_of(text, spanned.span().start);
            let check = Check::from_table(spanned.into_inner(), line)
                .map_err(|e| anyhow::anyhow!("{file}:{line}: {e}"))?;
            checks.push(check);
        }
        let mut traffic = vec![];
        for spanned in raw.traffic {
            let line = line_of(text, spanned.span().start);
            let t = Traffic::from_table(spanned.into_inner(), line)
                .map_err(|e| anyhow::anyhow!("{file}:{line}: {e}"))?;
            traffic.push(t);
        }
        if raw.capture.snaplen.is_some_and(|n| n < 128) {
            bail!(
                "{file}: [capture] snaplen must be at least 128 bytes (headers and DNS questions)"
            );
        }
        if raw
            .capture
            .stage_sample
            .is_some_and(|n| !(1..=1000).contains(&n))
        {
            bail!("{file}: [capture] stage_sample must be 1–1000");
        }
        if traffic.len() > 8 {
            bail!("{file}: at most 8 [[traffic]] entries (they run at once)");
        }
        if checks.is_empty() {
            bail!("{file}: no [[check]] entries; a scenario must assert something");
        }
        if raw.tunnel.outer_ipv6 && !raw.topology.ipv6 {
            bail!("{file}: [tunnel] outer_ipv6 = true needs ipv6 = true in [topology]");
        }
        for p in &pairings {
            let other = p.client.implementation().is_none() || p.server.implementation().is_none();
            if other && p.client != p.server {
                bail!(
                    "{file}: pairing {}: {} and {} do not talk to each other (WireGuard and ssh need the same subject on both sides)",
                    p.label(),
                    p.client.name(),
                    p.server.name()
                );
            }
            let ssh_tap = p.client == Subject::Ssh && raw.topology.bridge;
            if other && ((raw.tunnel.dev == DevName::Tap && !ssh_tap) || raw.tunnel.kill_switch) {
                bail!(
                    "{file}: pairing {}: the {} subject has no kill switch here, and tap mode only for ssh in a bridged topology",
                    p.label(),
                    p.client.name()
                );
            }
        }
        if raw
            .oracle_expected_failure
            .as_ref()
            .is_some_and(|w| w.trim().is_empty())
        {
            bail!("{file}: oracle_expected_failure must say why (a non-empty string)");
        }
        for r in raw
            .topology
            .rogue_dhcp_routes
            .iter()
            .chain(&raw.topology.rogue_lan_prefix)
        {
            let ok = r.split_once('/').is_some_and(|(a, l)| {
                a.parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|a| a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18)
                    && l.parse::<u8>().is_ok_and(|l| (15..=32).contains(&l))
            });
            if !ok {
                bail!(
                    "{file}: rogue_dhcp_routes / rogue_lan_prefix: '{r}' is not a prefix inside 198.18.0.0/15 (A.B.C.D/N)"
                );
            }
        }
        if raw.topology.rogue_lan_gateway && raw.topology.rogue_lan_prefix.is_none() {
            bail!("{file}: rogue_lan_gateway = true needs rogue_lan_prefix");
        }
        if let Some(a) = raw.topology.spoofed_server_dns
            && (a.octets()[0] != 198 || (a.octets()[1] & 0xfe) != 18 || raw.tunnel.outer_ipv6)
        {
            bail!(
                "{file}: spoofed_server_dns {a} must lie inside 198.18.0.0/15, with the tunnel over IPv4"
            );
        }
        if !raw.topology.resolved {
            if raw.tunnel.client_dns == ClientDns::Resolved {
                bail!(
                    "{file}: client_dns = \"resolved\" needs a systemd-resolved on the client: resolved = true in [topology]"
                );
            }
            if let Some(c) = checks
                .iter()
                .find(|c| matches!(c.spec, checks::CheckSpec::Resolvectl(_)))
            {
                bail!(
                    "{file}:{}: a resolvectl check needs resolved = true in [topology]",
                    c.line
                );
            }
        }
        let clients = raw.topology.clients.unwrap_or(1);
        if !(1..=crate::network::MAX_CLIENTS).contains(&clients) {
            bail!(
                "{file}: [topology] clients must be 1–{}",
                crate::network::MAX_CLIENTS
            );
        }
        if clients > 1 {
            if let Some(p) = pairings
                .iter()
                .find(|p| p.client.implementation().is_none())
            {
                bail!(
                    "{file}: [topology] clients = {clients} runs OpenVPN clients (ours, openvpn); pairing {} has none",
                    p.label()
                );
            }
            if raw.tunnel.kill_switch || raw.tunnel.client_dns == ClientDns::Resolved {
                bail!(
                    "{file}: [topology] clients = {clients} with kill_switch or client_dns = \"resolved\" is not supported (both belong to the first client's namespace)"
                );
            }
        }
        // A host named by a check or a load must exist in this topology.
        let named = checks
            .iter()
            .filter_map(|c| match &c.spec {
                CheckSpec::Ping(p) => p.from.as_deref().map(|h| (c.line, h)),
                CheckSpec::Leak(l) => l.on.split('/').next().map(|h| (c.line, h)),
                CheckSpec::TcpMss(m) => m.on.split('/').next().map(|h| (c.line, h)),
                _ => None,
            })
            .chain(traffic.iter().map(|t| (t.line, t.from.as_str())));
        for (line, host) in named {
            let more = host
                .strip_prefix("client")
                .and_then(|n| n.parse::<u8>().ok());
            if more.is_some_and(|n| n > clients)
                || (host == "home" && !raw.topology.client_lan)
                || !crate::network::is_host_name(host)
            {
                bail!("{file}:{line}: no host '{host}' here ([topology] clients = {clients})");
            }
        }
        if raw.topology.client_lan
            && let Some(p) = pairings
                .iter()
                .find(|p| p.client.implementation().is_none())
        {
            bail!(
                "{file}: [topology] client_lan routes a LAN behind an OpenVPN client (iroute); pairing {} has none",
                p.label()
            );
        }
        let servers = raw.topology.servers.unwrap_or(1);
        if !(1..=2).contains(&servers) {
            bail!("{file}: [topology] servers must be 1 or 2");
        }
        if servers == 2 {
            if let Some(p) = pairings
                .iter()
                .find(|p| p.server.implementation().is_none())
            {
                bail!(
                    "{file}: [topology] servers = 2 runs OpenVPN servers (ours, openvpn); pairing {} has none",
                    p.label()
                );
            }
            if raw.topology.ipv6
                || raw.topology.bridge
                || raw.tunnel.outer_ipv6
                || raw.topology.spoofed_server_dns.is_some()
            {
                bail!(
                    "{file}: [topology] servers = 2 is IPv4 and routed only (no ipv6, bridge, outer_ipv6 or spoofed_server_dns)"
                );
            }
        }
        if servers < 2
            && let Some(c) = checks
                .iter()
                .find(|c| matches!(c.spec, CheckSpec::Failover(_)))
        {
            bail!(
                "{file}:{}: a failover check needs a second server: servers = 2 in [topology]",
                c.line
            );
        }
        if raw.topology.client_lan && raw.tunnel.dev == DevName::Tap {
            bail!(
                "{file}: [topology] client_lan needs dev = \"tun\" (iroute is for routed tunnels)"
            );
        }
        if raw.topology.bridge && raw.tunnel.dev != DevName::Tap {
            bail!(
                "{file}: [topology] bridge = true bridges Ethernet frames: it needs dev = \"tap\" in [tunnel]"
            );
        }
        Ok(Scenario {
            name: path
                .file_stem()
                .map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned()),
            path: path.to_owned(),
            description: raw.description,
            topology: raw.topology,
            pairings,
            tunnel: raw.tunnel,
            capture: raw.capture,
            checks,
            traffic,
            oracle_expected_failure: raw.oracle_expected_failure,
        })
    }
}

/// The `scenarios/` directory of the workspace (`TUNSCOPE_SCENARIOS` overrides).
pub fn scenarios_dir() -> PathBuf {
    if let Ok(d) = std::env::var("TUNSCOPE_SCENARIOS") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("scenarios"), |p| p.join("scenarios"))
}

/// Finds a scenario by name (or path).
pub fn find(name: &str) -> Result<PathBuf> {
    let as_path = Path::new(name);
    if as_path.extension().is_some_and(|e| e == "toml") && as_path.is_file() {
        return Ok(as_path.to_owned());
    }
    let p = scenarios_dir().join(format!("{name}.toml"));
    if p.is_file() {
        return Ok(p);
    }
    bail!(
        "no scenario '{name}'; available: {}",
        list()?
            .iter()
            .map(|p| p
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// One run of a suite: a scenario with one pairing.
#[derive(Clone, Debug)]
pub struct SuiteRun {
    /// The scenario.
    pub scenario: Scenario,
    /// Who plays client and server.
    pub pairing: Pairing,
}

impl SuiteRun {
    /// `scenario pairing` (what `cargo xtask suite --list` prints).
    pub fn label(&self) -> String {
        format!("{} {}", self.scenario.name, self.pairing.label())
    }
}

/// Every run of the suite, in file and pairing order.
pub fn suite_runs() -> Result<Vec<SuiteRun>> {
    let mut runs = vec![];
    for path in list()? {
        let s = Scenario::load(&path)?;
        for p in &s.pairings {
            runs.push(SuiteRun {
                scenario: s.clone(),
                pairing: *p,
            });
        }
    }
    Ok(runs)
}

/// Whether the run labelled `label` belongs to shard `k` of `n` (1-based): by a hash of the
/// label (FNV-1a), so a run stays in its shard on every machine and when others are added.
pub fn in_shard(label: &str, k: u32, n: u32) -> bool {
    let h = label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    n > 0 && h % u64::from(n) == u64::from(k.saturating_sub(1))
}

/// Parses `K/N` (1 ≤ K ≤ N).
pub fn parse_partition(s: &str) -> Result<(u32, u32)> {
    let (k, n) = s
        .split_once('/')
        .with_context(|| format!("--partition '{s}': write K/N, e.g. 2/4"))?;
    let (k, n): (u32, u32) = (
        k.parse()
            .with_context(|| format!("--partition '{s}': bad K"))?,
        n.parse()
            .with_context(|| format!("--partition '{s}': bad N"))?,
    );
    if n == 0 || k == 0 || k > n {
        bail!("--partition '{s}': need 1 <= K <= N");
    }
    Ok((k, n))
}

/// Every scenario file, sorted by name.
pub fn list() -> Result<Vec<PathBuf>> {
    let dir = scenarios_dir();
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    Ok(v)
}
