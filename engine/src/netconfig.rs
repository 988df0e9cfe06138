//! What a VPN client does with what the server pushes: routes, `redirect-gateway`, DNS, and
//! the `up`/`down` scripts — and how it undoes all of it.
//!
//! Everything applied is first written to a state file. A clean exit undoes it and removes
//! the file; after a crash the next start finds the file, undoes what it lists (routes,
//! resolv.conf), and only then configures anew. Operates in the calling process's network and
//! mount namespace (a namespace's own `/etc/resolv.conf` under `ip netns exec`).
//!
//! DNS backends:
//! * `none` — nothing (like OpenVPN 2.6 on Linux without scripts);
//! * `resolv-conf` — the pushed servers and domains replace `/etc/resolv.conf`;
//! * `stub` — a split-DNS forwarder on 127.0.0.1:53 ([`crate::dns_stub`]): names under the
//!   pushed domains go to the pushed servers (through the tunnel by routing), every other name
//!   to the resolvers configured before — or everything to the pushed servers when the server
//!   redirects the default gateway (full tunnel).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tunscope_proto::options::push::PushedOptions;

use crate::dbus::{MessageWriter, SystemBus};
use crate::dns_dnsmasq::{Dnsmasq, DnsmasqConfig, DnsmasqRecord};
use crate::dns_stub::{Stub, StubConfig};
use crate::netlink::{self, Route};
use crate::private_files;
use std::os::unix::fs::OpenOptionsExt;

/// How DNS is configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsBackend {
    /// Leave DNS alone.
    #[default]
    None,
    /// Rewrite `/etc/resolv.conf`.
    ResolvConf,
    /// Split-DNS forwarder on loopback.
    Stub,
    /// systemd-resolved over D-Bus: the tunnel's link gets the pushed servers, its domains
    /// as routing (and search) domains, and the default route only for a full tunnel.
    Resolved,
    /// A dnsmasq on 127.0.0.1:53 with per-domain servers, as NetworkManager's `dns=dnsmasq`.
    Dnsmasq,
}

impl std::str::FromStr for DnsBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(DnsBackend::None),
            "resolv-conf" | "resolvconf" => Ok(DnsBackend::ResolvConf),
            "stub" => Ok(DnsBackend::Stub),
            "resolved" | "systemd-resolved" => Ok(DnsBackend::Resolved),
            "dnsmasq" => Ok(DnsBackend::Dnsmasq),
            o => Err(format!(
                "unknown DNS backend '{o}' (none, resolv-conf, stub, resolved, dnsmasq)"
            )),
        }
    }
}

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// A system program's path: on `PATH`, else where distributions put it (OpenVPN runs its
/// scripts with no `PATH` at all).
pub(crate) fn system_program(name: &str) -> PathBuf {
    let dirs = std::env::var("PATH").unwrap_or_default();
    dirs.split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// What has been applied, as recorded in the state file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Applied {
    /// Routes we added (deleted on undo, in reverse order).
    pub routes: Vec<RouteRecord>,
    /// resolv.conf before we changed it.
    pub resolv_conf: Option<String>,
    /// The down command and its environment, run on undo.
    pub down: Option<DownScript>,
    /// The interface index whose DNS we gave systemd-resolved (reverted on undo).
    #[serde(default)]
    pub resolved_link: Option<i32>,
    /// The dnsmasq we started (stopped on undo).
    #[serde(default)]
    pub dnsmasq: Option<DnsmasqRecord>,
    /// The kill switch is installed (removed on undo).
    #[serde(default)]
    pub kill_switch: bool,
}

/// The `down` script to run on undo: its command line and OpenVPN environment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DownScript {
    /// Program and arguments.
    pub cmd: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
}

/// A serializable route.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteRecord {
    /// Destination.
    pub dst: IpAddr,
    /// Prefix.
    pub prefix: u8,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Metric.
    pub metric: Option<u32>,
}

impl From<&RouteRecord> for Route {
    fn from(r: &RouteRecord) -> Route {
        Route {
            dst: r.dst,
            prefix: r.prefix,
            gateway: r.gateway,
            oif: r.oif,
            metric: r.metric,
        }
    }
}

/// Inputs for configuring the network.
pub struct Settings<'a> {
    /// The tun device.
    pub dev: &'a str,
    /// Its MTU.
    pub mtu: u16,
    /// The server's address on the underlay.
    pub remote: SocketAddr,
    /// DNS backend.
    pub dns: DnsBackend,
    /// Do not install routes (`route-noexec`), leave them to the `up` script.
    pub route_noexec: bool,
    /// `up` command.
    pub up: Option<&'a [String]>,
    /// `down` command.
    pub down: Option<&'a [String]>,
    /// Config file (for the scripts' `config` variable).
    pub config: &'a Path,
    /// `setenv NAME VALUE` pairs for the scripts.
    pub setenv: &'a [(String, String)],
    /// `block-ipv6` in the config (a server may push it too).
    pub block_ipv6: bool,
    /// Install the kill switch ([`crate::killswitch`]) while the tunnel is up.
    pub kill_switch: bool,
    /// The tunnel's transport to `remote` is TCP (else UDP).
    pub remote_tcp: bool,
}

/// Applied network configuration; undo with [`NetConfig::undo`].
pub struct NetConfig {
    state_path: PathBuf,
    applied: Applied,
    stub: Option<Stub>,
    /// The bus connection the link was configured over, kept so the revert goes out with the
    /// same (root) credentials after a client gives up root.
    bus: Option<SystemBus>,
    /// The dnsmasq of the `dnsmasq` backend.
    dnsmasq: Option<Dnsmasq>,
}

/// Files opened while still root, for a client that gives up root (`user`): the state file
/// and resolv.conf are then written through these descriptors (in place), since their
/// directories are no longer ours to write.
struct Pinned {
    state: Option<(PathBuf, std::fs::File)>,
    resolv_conf: Option<std::fs::File>,
}

static PINNED: std::sync::Mutex<Pinned> = std::sync::Mutex::new(Pinned {
    state: None,
    resolv_conf: None,
});

fn pinned() -> std::sync::MutexGuard<'static, Pinned> {
    PINNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens the state file and resolv.conf for later in-place writes (call before dropping
/// root). A missing resolv.conf is not an error.
pub fn pin_files(state_path: &Path) -> Result<()> {
    let state = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(state_path)
        .with_context(|| format!("cannot open {}", state_path.display()))?;
    let resolv = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(RESOLV_CONF)
        .ok();
    let mut p = pinned();
    p.state = Some((state_path.to_owned(), state));
    p.resolv_conf = resolv;
    Ok(())
}

/// Replaces a pinned file's content in place.
fn rewrite(f: &mut std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    f.set_len(0)?;
    f.seek(std::io::SeekFrom::Start(0))?;
    f.write_all(bytes)?;
    f.sync_data()
}

/// The state file's content, through the pinned descriptor when there is one.
fn read_state(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    if let Some((p, f)) = pinned().state.as_mut()
        && p == path
    {
        let mut out = Vec::new();
        f.seek(std::io::SeekFrom::Start(0))?;
        f.read_to_end(&mut out)?;
        return Ok(out);
    }
    std::fs::read(path)
}

/// Empties the state file (it is pinned: it cannot be removed without root) or removes it.
fn clear_state(path: &Path) {
    if let Some((p, f)) = pinned().state.as_mut()
        && p == path
    {
        let _ = f.set_len(0);
        return;
    }
    let _ = std::fs::remove_file(path);
}

fn write_state(path: &Path, a: &Applied) -> Result<()> {
    use std::io::Write;
    if let Some((p, f)) = pinned().state.as_mut()
        && p == path
    {
        let bytes = serde_json::to_vec_pretty(a)?;
        return rewrite(f, &bytes).with_context(|| format!("cannot write {}", path.display()));
    }
    if let Some(dir) = path.parent() {
        private_files::create_dir(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A fresh temporary file each time (whatever was planted under its name is removed, not
    // followed), 0600, renamed over the state file.
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    private_files::create_new(&tmp)
        .and_then(|mut f| f.write_all(&serde_json::to_vec_pretty(a)?))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Undoes what a state file lists (after a crash), then removes it. Returns what was undone.
///
/// The file is believed only when it is ours (a regular file of our user that nobody else
/// may write): otherwise whoever planted it would choose the routes we delete and the
/// command we run. Its `down` command runs only when it is `expected_down` (this config's),
/// and only with OpenVPN's lower-case script variables (never `LD_PRELOAD`, `PATH`, …).
pub fn recover(state_path: &Path, expected_down: Option<&[String]>) -> Result<Option<Applied>> {
    // A pinned state file is the one this run opened as root: no need (and, without root,
    // no permission) to look it up again.
    let pinned_here = pinned()
        .state
        .as_ref()
        .is_some_and(|(p, _)| p == state_path);
    if !pinned_here {
        if std::fs::symlink_metadata(state_path).is_err() {
            return Ok(None);
        }
        if let Some(why) = private_files::distrust(state_path) {
            anyhow::bail!(
                "state file {} is not trusted ({why}): not acted on; remove it if it is yours",
                state_path.display()
            );
        }
    }
    let text = read_state(state_path)
        .with_context(|| format!("cannot read state file {}", state_path.display()))?;
    // Emptied by a run that had given up root (it could not remove the file): nothing left.
    if text.is_empty() {
        clear_state(state_path);
        return Ok(None);
    }
    let mut applied: Applied = serde_json::from_slice(&text)
        .with_context(|| format!("unreadable state file {}", state_path.display()))?;
    if let Some(down) = applied.down.take() {
        // The command is the config's `down` followed by OpenVPN's arguments (dev, mtu, …).
        if expected_down.is_some_and(|e| !e.is_empty() && down.cmd.starts_with(e)) {
            let env = down
                .env
                .into_iter()
                .filter(|(k, _)| is_script_variable(k))
                .collect();
            applied.down = Some(DownScript { cmd: down.cmd, env });
        } else {
            tracing::warn!(
                "state file {}: its down command {:?} is not this config's; not run",
                state_path.display(),
                down.cmd
            );
        }
    }
    undo_applied(&applied);
    clear_state(state_path);
    Ok(Some(applied))
}

/// OpenVPN's script variables are lower case (`dev`, `ifconfig_local`, `foreign_option_1`,
/// …); nothing a dynamic loader or shell reads.
fn is_script_variable(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn undo_applied(a: &Applied) {
    for r in a.routes.iter().rev() {
        if let Err(e) = netlink::del_route(&Route::from(r)) {
            // The tun device going away removes its routes; that is not an error.
            if e.raw_os_error() != Some(libc::ESRCH) && e.raw_os_error() != Some(libc::ENODEV) {
                tracing::debug!("removing route {}/{}: {e}", r.dst, r.prefix);
            }
        }
    }
    if let Some(orig) = &a.resolv_conf
        && let Err(e) = write_in_place(Path::new(RESOLV_CONF), orig)
    {
        tracing::warn!("cannot restore {RESOLV_CONF}: {e}");
    }
    if let Some(d) = &a.dnsmasq {
        crate::dns_dnsmasq::stop_recorded(d);
    }
    if a.kill_switch {
        crate::killswitch::remove();
    }
    if let Some(ifindex) = a.resolved_link {
        match SystemBus::connect() {
            Ok(mut bus) => revert_resolved_link(&mut bus, ifindex),
            Err(e) => tracing::warn!("cannot revert systemd-resolved link {ifindex}: {e}"),
        }
    }
    if let Some(DownScript { cmd, env }) = &a.down {
        run_script(cmd, env, "down");
    }
}

const RESOLVE1: &str = "org.freedesktop.resolve1";
const RESOLVE1_PATH: &str = "/org/freedesktop/resolve1";
const RESOLVE1_MANAGER: &str = "org.freedesktop.resolve1.Manager";

/// Calls a method of systemd-resolved's manager with the body `w` wrote.
fn resolve1(
    bus: &mut SystemBus,
    member: &str,
    signature: &str,
    w: MessageWriter,
) -> Result<(), crate::dbus::DbusError> {
    bus.call(
        RESOLVE1,
        RESOLVE1_PATH,
        RESOLVE1_MANAGER,
        member,
        signature,
        &w.into_bytes(),
    )
}

/// What systemd-resolved is told about the tunnel's link.
struct ResolvedLink<'a> {
    ifindex: i32,
    servers: &'a [IpAddr],
    /// Domains routed to the tunnel's servers only (`~corp.example`).
    split: &'a [String],
    /// Search domains (routed too).
    search: &'a [String],
    /// Whether names outside every routing domain may go here (a full tunnel's DNS).
    default_route: bool,
}

impl ResolvedLink<'_> {
    /// `(domain, routing only)` pairs: search domains as such, split-only domains as routing
    /// domains; a full tunnel adds `~.` so every name may go to its servers.
    fn domains(&self) -> Vec<(String, bool)> {
        let mut d: Vec<(String, bool)> = self.search.iter().map(|s| (s.clone(), false)).collect();
        for s in self.split {
            if !self.search.contains(s) {
                d.push((s.clone(), true));
            }
        }
        if self.default_route {
            d.push((".".into(), true));
        }
        d
    }

    /// SetLinkDNS, SetLinkDomains, SetLinkDefaultRoute (what `resolvectl dns/domain/
    /// default-route` send; org.freedesktop.resolve1(5)).
    fn apply(&self, bus: &mut SystemBus) -> Result<(), crate::dbus::DbusError> {
        let mut w = MessageWriter::default();
        w.i32(self.ifindex);
        w.array(8, |w| {
            for a in self.servers {
                w.structure(|w| match a {
                    IpAddr::V4(v4) => {
                        w.i32(libc::AF_INET);
                        w.bytes(&v4.octets())
                    }
                    IpAddr::V6(v6) => {
                        w.i32(libc::AF_INET6);
                        w.bytes(&v6.octets())
                    }
                })?;
            }
            Ok(())
        })?;
        resolve1(bus, "SetLinkDNS", "ia(iay)", w)?;
        let mut w = MessageWriter::default();
        w.i32(self.ifindex);
        w.array(8, |w| {
            for (d, route_only) in self.domains() {
                w.structure(|w| {
                    w.string(&d)?;
                    w.bool(route_only);
                    Ok(())
                })?;
            }
            Ok(())
        })?;
        resolve1(bus, "SetLinkDomains", "ia(sb)", w)?;
        let mut w = MessageWriter::default();
        w.i32(self.ifindex);
        w.bool(self.default_route);
        resolve1(bus, "SetLinkDefaultRoute", "ib", w)
    }
}

/// RevertLink: the link's DNS back to what resolved had before us. A link that is gone (the
/// tun device closed first) has nothing left to revert.
fn revert_resolved_link(bus: &mut SystemBus, ifindex: i32) {
    let mut w = MessageWriter::default();
    w.i32(ifindex);
    match resolve1(bus, "RevertLink", "i", w) {
        Ok(()) => tracing::info!("systemd-resolved: link {ifindex} reverted"),
        Err(e) => tracing::debug!("systemd-resolved: reverting link {ifindex}: {e}"),
    }
}

/// Writes a file in place (truncate + write) so that a bind mount of it stays intact.
fn write_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if path == Path::new(RESOLV_CONF)
        && let Some(f) = pinned().resolv_conf.as_mut()
    {
        return rewrite(f, text.as_bytes());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Whether `net/prefix` contains `a`.
fn covers4(net: Ipv4Addr, prefix: u8, a: Ipv4Addr) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    u32::from(net) & mask == u32::from(a) & mask
}

/// Whether `net/prefix` contains `a`.
fn covers6(net: Ipv6Addr, prefix: u8, a: Ipv6Addr) -> bool {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0);
    u128::from(net) & mask == u128::from(a) & mask
}

fn prefix_of(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

/// Name servers of a pushed configuration: 2.6 `dns server` entries (by priority) win over
/// `dhcp-option DNS`.
pub fn pushed_servers(p: &PushedOptions) -> Vec<IpAddr> {
    if !p.dns_servers.is_empty() {
        return p
            .dns_servers
            .values()
            .flat_map(|s| s.addresses.iter().map(|(a, _)| *a))
            .collect();
    }
    p.dhcp_dns.clone()
}

/// Domains routed to the pushed servers (split DNS) and search domains.
pub fn pushed_domains(p: &PushedOptions) -> (Vec<String>, Vec<String>) {
    let mut split: Vec<String> = p
        .dns_servers
        .values()
        .flat_map(|s| s.resolve_domains.iter().cloned())
        .collect();
    let mut search: Vec<String> = p.dns_search_domains.clone();
    if p.dns_servers.is_empty() {
        split.extend(p.dhcp_domains.iter().cloned());
        split.extend(p.dhcp_search.iter().cloned());
        search.extend(p.dhcp_domains.iter().cloned());
        search.extend(p.dhcp_search.iter().cloned());
    }
    split.dedup();
    search.dedup();
    (split, search)
}

fn resolv_conf_text(servers: &[IpAddr], search: &[String]) -> String {
    let mut s =
        String::from("# written by tunscope; the original is restored when the tunnel closes\n");
    if !search.is_empty() {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    for a in servers {
        s.push_str(&format!("nameserver {a}\n"));
    }
    s
}

/// Name servers listed in resolv.conf text.
pub fn resolv_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// OpenVPN's script environment for the pushed options.
pub fn script_env(p: &PushedOptions, s: &Settings<'_>, script_type: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("script_type".to_owned(), script_type.to_owned()),
        ("dev".to_owned(), s.dev.to_owned()),
        ("dev_type".to_owned(), "tun".to_owned()),
        ("tun_mtu".to_owned(), s.mtu.to_string()),
        ("trusted_ip".to_owned(), s.remote.ip().to_string()),
        ("trusted_port".to_owned(), s.remote.port().to_string()),
        ("config".to_owned(), s.config.display().to_string()),
        ("script_context".to_owned(), "init".to_owned()),
    ];
    env.extend(s.setenv.iter().cloned());
    if let Some((a, m)) = p.ifconfig {
        env.push(("ifconfig_local".into(), a.to_string()));
        env.push(("ifconfig_netmask".into(), m.to_string()));
    }
    if let Some((a, bits, _)) = p.ifconfig_ipv6 {
        env.push(("ifconfig_ipv6_local".into(), a.to_string()));
        env.push(("ifconfig_ipv6_netbits".into(), bits.to_string()));
    }
    if let Some(g) = p.route_gateway {
        env.push(("route_vpn_gateway".into(), g.to_string()));
    }
    for (i, r) in p.routes.iter().enumerate() {
        let n = i + 1;
        env.push((format!("route_network_{n}"), r.network.to_string()));
        env.push((format!("route_netmask_{n}"), r.netmask.to_string()));
        if let Some(g) = r.gateway.or(p.route_gateway) {
            env.push((format!("route_gateway_{n}"), g.to_string()));
        }
    }
    for (i, r) in p.routes_ipv6.iter().enumerate() {
        env.push((
            format!("route_ipv6_network_{}", i + 1),
            format!("{}/{}", r.network, r.prefix),
        ));
    }
    let mut n = 0;
    let mut foreign = |v: String| {
        n += 1;
        env.push((format!("foreign_option_{n}"), v));
    };
    for a in &p.dhcp_dns {
        foreign(format!(
            "dhcp-option DNS{} {a}",
            if a.is_ipv6() { "6" } else { "" }
        ));
    }
    for d in &p.dhcp_domains {
        foreign(format!("dhcp-option DOMAIN {d}"));
    }
    for d in &p.dhcp_search {
        foreign(format!("dhcp-option DOMAIN-SEARCH {d}"));
    }
    for (prio, srv) in &p.dns_servers {
        for (i, (a, port)) in srv.addresses.iter().enumerate() {
            env.push((
                format!("dns_server_{prio}_address_{}", i + 1),
                a.to_string(),
            ));
            if let Some(port) = port {
                env.push((
                    format!("dns_server_{prio}_port_{}", i + 1),
                    port.to_string(),
                ));
            }
        }
        for (i, d) in srv.resolve_domains.iter().enumerate() {
            env.push((
                format!("dns_server_{prio}_resolve_domain_{}", i + 1),
                d.clone(),
            ));
        }
    }
    for (i, d) in p.dns_search_domains.iter().enumerate() {
        env.push((format!("dns_search_domain_{}", i + 1), d.clone()));
    }
    env
}

/// Runs an OpenVPN-style script with `env`; false (and a warning) when it fails.
pub fn run_script(cmd: &[String], env: &[(String, String)], what: &str) -> bool {
    let Some((prog, args)) = cmd.split_first() else {
        return false;
    };
    match Command::new(prog)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .status()
    {
        Ok(st) if st.success() => true,
        Ok(st) => {
            tracing::warn!("{what} script {prog} failed ({st})");
            false
        }
        Err(e) => {
            tracing::warn!("cannot run {what} script {prog}: {e}");
            false
        }
    }
}

impl NetConfig {
    /// Nothing applied: a client on an in-memory tun device (the in-process tier) has no
    /// kernel state to change.
    pub fn nothing() -> NetConfig {
        NetConfig {
            state_path: PathBuf::new(),
            applied: Applied::default(),
            stub: None,
            bus: None,
            dnsmasq: None,
        }
    }

    /// Applies routes, DNS and the up script for a pushed configuration.
    pub fn apply(p: &PushedOptions, s: &Settings<'_>, state_path: &Path) -> Result<NetConfig> {
        let mut nc = NetConfig {
            state_path: state_path.to_owned(),
            applied: Applied::default(),
            stub: None,
            bus: None,
            dnsmasq: None,
        };
        let oif = netlink::ifindex(s.dev).with_context(|| format!("no interface {}", s.dev))?;
        if !s.route_noexec {
            nc.apply_routes(p, oif, s)?;
        }
        nc.apply_dns(p, s.dns, s.dev)?;
        if s.kill_switch {
            // Recorded first: a crash after this still removes it at the next start.
            nc.applied.kill_switch = true;
            nc.save()?;
            crate::killswitch::install(s.dev, s.remote, s.remote_tcp)?;
        }
        let env = script_env(p, s, "up");
        if let Some(up) = s.up {
            // OpenVPN's arguments: dev tun_mtu link_mtu ifconfig_local ifconfig_netmask init.
            let mut cmd = up.to_vec();
            cmd.extend([
                s.dev.to_owned(),
                s.mtu.to_string(),
                "0".into(),
                p.ifconfig.map_or(String::new(), |(a, _)| a.to_string()),
                p.ifconfig.map_or(String::new(), |(_, m)| m.to_string()),
                "init".into(),
            ]);
            if !run_script(&cmd, &env, "up") {
                anyhow::bail!("up script {} failed", up[0]);
            }
        }
        if let Some(down) = s.down {
            let mut cmd = down.to_vec();
            cmd.extend([
                s.dev.to_owned(),
                s.mtu.to_string(),
                "0".into(),
                String::new(),
                String::new(),
                "init".into(),
            ]);
            let mut env = script_env(p, s, "down");
            env.retain(|(k, _)| k != "script_type");
            env.push(("script_type".into(), "down".into()));
            nc.applied.down = Some(DownScript { cmd, env });
            nc.save()?;
        }
        Ok(nc)
    }

    fn save(&self) -> Result<()> {
        write_state(&self.state_path, &self.applied)
    }

    fn add_route(&mut self, r: RouteRecord) -> Result<()> {
        // Recorded before it exists, so a crash right after still gets it removed.
        self.applied.routes.push(r.clone());
        self.save()?;
        match netlink::add_route(&Route::from(&r)) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // Somebody else's route: not ours to remove later.
                self.applied.routes.pop();
                self.save()?;
                tracing::warn!("route {}/{} exists already; left as it is", r.dst, r.prefix);
                Ok(())
            }
            Err(e) => {
                self.applied.routes.pop();
                self.save()?;
                Err(e).with_context(|| format!("cannot add route {}/{}", r.dst, r.prefix))
            }
        }
    }

    fn apply_routes(&mut self, p: &PushedOptions, oif: u32, s: &Settings<'_>) -> Result<()> {
        let gw = p.route_gateway.map(IpAddr::V4);
        let metric = p.route_metric;
        let server = s.remote.ip();
        // Where the tunnel's own packets go now, before any route of the server's.
        let original = netlink::route_get(server).context("route to the VPN server")?;
        let rg = p.redirect_gateway.as_ref();
        let redirect4 = rg.is_some_and(|r| !r.no_ipv4);
        let redirect6 = rg.is_some_and(|r| r.ipv6) && p.ifconfig_ipv6.is_some();
        let block_ipv6 = s.block_ipv6 || p.block_ipv6;
        // Anything routed into the tunnel that covers the server's own address would send the
        // tunnel into itself: the server keeps a host route on the original path first (as
        // redirect-gateway does in OpenVPN; for IPv6 servers and pushed routes too).
        let by_route = match server {
            IpAddr::V4(a) => p
                .routes
                .iter()
                .find(|r| covers4(r.network, prefix_of(r.netmask), a))
                .map(|r| format!("route {}/{}", r.network, prefix_of(r.netmask))),
            IpAddr::V6(a) => p
                .routes_ipv6
                .iter()
                .find(|r| covers6(r.network, r.prefix, a))
                .map(|r| format!("route-ipv6 {}/{}", r.network, r.prefix)),
        };
        let by_redirect = match server {
            IpAddr::V4(_) => redirect4,
            IpAddr::V6(a) => {
                (redirect6 || block_ipv6)
                    && covers6(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3, a)
            }
        };
        let local = rg.is_some_and(|r| r.local);
        if (by_redirect && !local) || by_route.is_some() {
            if let Some(r) = &by_route {
                tracing::warn!(
                    "pushed {r} covers the VPN server {server}: the server keeps a host route outside the tunnel"
                );
            }
            self.add_route(RouteRecord {
                dst: server,
                prefix: if server.is_ipv4() { 32 } else { 128 },
                gateway: original.gateway,
                oif: original.oif,
                metric: None,
            })?;
        }
        if let Some(rg) = rg.filter(|_| redirect4) {
            if !rg.def1 {
                anyhow::bail!(
                    "redirect-gateway without def1 (replacing the default route) is not supported; push 'redirect-gateway def1'"
                );
            }
            for net in [Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::new(128, 0, 0, 0)] {
                self.add_route(RouteRecord {
                    dst: IpAddr::V4(net),
                    prefix: 1,
                    gateway: gw,
                    oif: Some(oif),
                    metric,
                })?;
            }
            if rg.block_local && !rg.local {
                self.block_local(&original, server, gw, oif, metric)?;
            }
        }
        if redirect6 || block_ipv6 {
            // With block-ipv6 and no IPv6 in the tunnel, the server drops what comes (it is
            // not the client's address): IPv6 never leaves by the local network.
            for net in ["2000::", "3000::"] {
                let dst: Ipv6Addr = net.parse().context("constant")?;
                self.add_route(RouteRecord {
                    dst: IpAddr::V6(dst),
                    prefix: 4,
                    gateway: None,
                    oif: Some(oif),
                    metric,
                })?;
            }
        }
        for r in &p.routes {
            self.add_route(RouteRecord {
                dst: IpAddr::V4(r.network),
                prefix: prefix_of(r.netmask),
                gateway: r.gateway.map(IpAddr::V4).or(gw),
                oif: Some(oif),
                metric: r.metric.or(metric),
            })?;
        }
        for r in &p.routes_ipv6 {
            self.add_route(RouteRecord {
                dst: IpAddr::V6(r.network),
                prefix: r.prefix,
                gateway: None,
                oif: Some(oif),
                metric: r.metric.or(metric),
            })?;
        }
        Ok(())
    }

    /// `redirect-gateway … block-local` (TunnelCrack LocalNet): the local network the server
    /// is reached through goes into the tunnel too, as two halves more specific than its
    /// connected route (as OpenVPN does); the server's host route keeps the tunnel itself on
    /// the local path. Without it, a hostile LAN handing out a public prefix sees that
    /// prefix's traffic in the clear.
    fn block_local(
        &mut self,
        original: &netlink::RouteTo,
        server: IpAddr,
        gw: Option<IpAddr>,
        oif: u32,
        metric: Option<u32>,
    ) -> Result<()> {
        let IpAddr::V4(target) = original.gateway.unwrap_or(server) else {
            return Ok(());
        };
        let dev = original.oif.and_then(netlink::ifname);
        let local = netlink::dump_routes(false)
            .context("reading the routing table for block-local")?
            .into_iter()
            .filter(|r| r.gateway.is_none() && r.dev == dev && r.table == 254)
            .filter_map(|r| match r.dst {
                IpAddr::V4(n) if (1..32).contains(&r.prefix) && covers4(n, r.prefix, target) => {
                    Some((n, r.prefix))
                }
                _ => None,
            })
            .max_by_key(|(_, prefix)| *prefix);
        let Some((net, prefix)) = local else {
            tracing::warn!("block-local: no local network found for {target}; nothing to block");
            return Ok(());
        };
        let half = 1u32 << (31 - u32::from(prefix));
        for dst in [u32::from(net), u32::from(net) + half] {
            self.add_route(RouteRecord {
                dst: IpAddr::V4(Ipv4Addr::from(dst)),
                prefix: prefix + 1,
                gateway: gw,
                oif: Some(oif),
                metric,
            })?;
        }
        tracing::info!("block-local: {net}/{prefix} goes through the tunnel");
        Ok(())
    }

    /// Applies only the DNS part (for OpenVPN's `up` script hook, `tunscope dns`).
    pub fn apply_dns_only(
        p: &PushedOptions,
        dns: DnsBackend,
        dev: &str,
        state_path: &Path,
    ) -> Result<NetConfig> {
        let mut nc = NetConfig {
            state_path: state_path.to_owned(),
            applied: Applied::default(),
            stub: None,
            bus: None,
            dnsmasq: None,
        };
        nc.apply_dns(p, dns, dev)?;
        Ok(nc)
    }

    fn apply_dns(&mut self, p: &PushedOptions, dns: DnsBackend, dev: &str) -> Result<()> {
        let servers = pushed_servers(p);
        if dns == DnsBackend::None || servers.is_empty() {
            return Ok(());
        }
        let full_tunnel = p
            .redirect_gateway
            .as_ref()
            .is_some_and(|r| r.def1 && !r.no_ipv4);
        let (split, search) = pushed_domains(p);
        if dns == DnsBackend::Resolved {
            let ifindex = netlink::ifindex(dev).with_context(|| format!("no interface {dev}"))?;
            let ifindex = i32::try_from(ifindex).context("interface index")?;
            let link = ResolvedLink {
                ifindex,
                servers: &servers,
                split: &split,
                search: &search,
                default_route: full_tunnel,
            };
            let mut bus =
                SystemBus::connect().context("cannot reach systemd-resolved: no system D-Bus")?;
            // Recorded first: a crash half-way still reverts the link.
            self.applied.resolved_link = Some(ifindex);
            self.save()?;
            link.apply(&mut bus)
                .with_context(|| format!("systemd-resolved refused the DNS of {dev}"))?;
            tracing::info!(
                "systemd-resolved: {dev} → {:?}, domains {}, default route {}",
                servers,
                link.domains()
                    .iter()
                    .map(|(d, route_only)| if *route_only {
                        format!("~{d}")
                    } else {
                        d.clone()
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                if full_tunnel { "yes" } else { "no" }
            );
            self.bus = Some(bus);
            return Ok(());
        }
        let original = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        let text = match dns {
            DnsBackend::None | DnsBackend::Resolved => return Ok(()),
            DnsBackend::ResolvConf => resolv_conf_text(&servers, &search),
            DnsBackend::Dnsmasq => {
                let previous = resolv_nameservers(&original);
                let pid_file = self.state_path.with_extension("dnsmasq.pid");
                let cfg = DnsmasqConfig {
                    servers: &servers,
                    split: &split,
                    previous: &previous,
                    full_tunnel,
                    pid_file: &pid_file,
                };
                // Recorded before it serves: a crash from here on still stops it.
                let d = Dnsmasq::start(&cfg, |rec| {
                    self.applied.dnsmasq = Some(rec.clone());
                    self.save()
                })?;
                tracing::info!(
                    "dnsmasq on 127.0.0.1:53 (pid {}): {} → {:?}, everything else → {:?}",
                    d.record.pid,
                    if full_tunnel {
                        "all names".to_owned()
                    } else {
                        split.join(", ")
                    },
                    servers,
                    previous
                );
                self.dnsmasq = Some(d);
                resolv_conf_text(&[IpAddr::V4(Ipv4Addr::LOCALHOST)], &search)
            }
            DnsBackend::Stub => {
                let stub = Stub::start(StubConfig {
                    listen: SocketAddr::from(([127, 0, 0, 1], 53)),
                    split_domains: if full_tunnel {
                        vec![String::new()]
                    } else {
                        split.clone()
                    },
                    tunnel_servers: servers.iter().map(|a| SocketAddr::new(*a, 53)).collect(),
                    default_servers: resolv_nameservers(&original)
                        .into_iter()
                        .filter(|a| !a.is_loopback())
                        .map(|a| SocketAddr::new(a, 53))
                        .collect(),
                })
                .context("cannot start the DNS stub on 127.0.0.1:53")?;
                tracing::info!(
                    "DNS stub on 127.0.0.1:53: {} → {:?}, everything else → the previous resolvers",
                    if full_tunnel {
                        "all names".to_owned()
                    } else {
                        split.join(", ")
                    },
                    servers
                );
                self.stub = Some(stub);
                resolv_conf_text(&[IpAddr::V4(Ipv4Addr::LOCALHOST)], &search)
            }
        };
        self.applied.resolv_conf = Some(original);
        self.save()?;
        write_in_place(Path::new(RESOLV_CONF), &text)
            .with_context(|| format!("cannot write {RESOLV_CONF}"))?;
        Ok(())
    }

    /// Undoes everything and removes the state file.
    pub fn undo(mut self) {
        self.undo_now();
    }

    fn undo_now(&mut self) {
        if let Some(stub) = self.stub.take() {
            stub.stop();
        }
        let mut applied = std::mem::take(&mut self.applied);
        if let Some(d) = self.dnsmasq.take() {
            d.stop();
            applied.dnsmasq = None;
        }
        if let (Some(ifindex), Some(bus)) = (applied.resolved_link, self.bus.as_mut()) {
            revert_resolved_link(bus, ifindex);
            applied.resolved_link = None;
        }
        self.bus = None;
        undo_applied(&applied);
        clear_state(&self.state_path);
    }

    /// What was applied.
    pub fn applied(&self) -> &Applied {
        &self.applied
    }
}

impl Drop for NetConfig {
    /// Also on an early return or a panic unwinding through the connection: whatever is
    /// still applied is undone (only a killed process leaves it to the state file).
    fn drop(&mut self) {
        if self.stub.is_some()
            || self.bus.is_some()
            || self.dnsmasq.is_some()
            || self.applied != Applied::default()
        {
            self.undo_now();
        }
    }
}

/// The default state file for a config: one per config file path.
pub fn default_state_path(config: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_owned());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in abs.to_string_lossy().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    PathBuf::from(format!("/run/tunscope/client-{h:016x}.state"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunscope_proto::data::Cipher;

    /// A state file is acted on only when it is ours; its down command runs only when it is
    /// this config's, and without variables a loader or shell would read.
    #[test]
    fn recovery_believes_only_our_state_and_our_down_command() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("tunscope-recover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = dir.join("client.state");
        let mark = dir.join("ran");
        let down: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("echo \"[$LD_PRELOAD][$dev]\" > {}", mark.display()),
        ];
        let applied = |cmd: Vec<String>| Applied {
            down: Some(DownScript {
                cmd,
                env: vec![
                    ("LD_PRELOAD".into(), "/tmp/evil.so".into()),
                    ("dev".into(), "tun0".into()),
                ],
            }),
            ..Applied::default()
        };
        // Another config's (or a planted) command: not run.
        write_state(&state, &applied(down.clone())).expect("write");
        assert_eq!(std::fs::metadata(&state).expect("m").mode() & 0o777, 0o600);
        recover(&state, Some(&["/usr/bin/other".to_owned()])).expect("recover");
        assert!(!mark.exists(), "a down command that is not ours ran");
        assert!(!state.exists());
        // Ours: run, with `dev` but without LD_PRELOAD.
        let mut with_args = down.clone();
        with_args.extend(["tun0".to_owned(), "1500".to_owned()]);
        write_state(&state, &applied(with_args)).expect("write");
        recover(&state, Some(&down)).expect("recover");
        assert_eq!(std::fs::read_to_string(&mark).expect("ran"), "[][tun0]\n");
        // A state file others may write is not acted on at all.
        write_state(&state, &applied(down.clone())).expect("write");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let e = recover(&state, Some(&down)).expect_err("untrusted");
        assert!(e.to_string().contains("not trusted"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn pushed(opts: &[&str]) -> PushedOptions {
        let mut p = PushedOptions::default();
        for o in opts {
            p.apply(o, &Cipher::ALL).unwrap();
        }
        p
    }

    /// What systemd-resolved is told: search domains stay search domains, split-only ones
    /// become routing domains (`~d`), and only a full tunnel routes every name (`~.`).
    #[test]
    fn resolved_domains_route_only_what_the_push_says() {
        let servers = [IpAddr::V4(Ipv4Addr::new(198, 19, 10, 53))];
        let split = vec!["corp.example".to_owned(), "lab.example".to_owned()];
        let search = vec!["corp.example".to_owned()];
        let link = ResolvedLink {
            ifindex: 4,
            servers: &servers,
            split: &split,
            search: &search,
            default_route: false,
        };
        assert_eq!(
            link.domains(),
            vec![
                ("corp.example".to_owned(), false),
                ("lab.example".to_owned(), true)
            ]
        );
        let full = ResolvedLink {
            default_route: true,
            ..link
        };
        assert_eq!(full.domains().last(), Some(&(".".to_owned(), true)));
        assert_eq!(
            "systemd-resolved".parse::<DnsBackend>(),
            Ok(DnsBackend::Resolved)
        );
    }

    #[test]
    fn dns_servers_and_domains() {
        let p = pushed(&[
            "dhcp-option DNS 198.19.10.53",
            "dhcp-option DOMAIN corp.example",
        ]);
        assert_eq!(
            pushed_servers(&p),
            vec!["198.19.10.53".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            pushed_domains(&p),
            (
                vec!["corp.example".to_owned()],
                vec!["corp.example".to_owned()]
            )
        );
        let p = pushed(&[
            "dhcp-option DNS 1.2.3.4",
            "dns server 0 address 198.19.10.53",
            "dns server 0 resolve-domains corp.example lab.example",
            "dns search-domains corp.example",
        ]);
        assert_eq!(
            pushed_servers(&p),
            vec!["198.19.10.53".parse::<IpAddr>().unwrap()],
            "2.6 dns wins"
        );
        assert_eq!(pushed_domains(&p).0, vec!["corp.example", "lab.example"]);
        assert_eq!(
            resolv_nameservers("# x\nnameserver 198.18.100.53\nsearch a\nnameserver ::1\n").len(),
            2
        );
    }

    #[test]
    fn script_environment_like_openvpn() {
        let p = pushed(&[
            "ifconfig 198.19.0.2 255.255.255.0",
            "route-gateway 198.19.0.1",
            "route 198.19.10.0 255.255.255.0",
            "dhcp-option DNS 198.19.10.53",
            "dhcp-option DOMAIN corp.example",
        ]);
        let s = Settings {
            dev: "tun0",
            mtu: 1500,
            remote: "198.18.2.2:1194".parse().unwrap(),
            dns: DnsBackend::None,
            route_noexec: false,
            up: None,
            down: None,
            config: Path::new("/etc/c.conf"),
            setenv: &[],
            block_ipv6: false,
            kill_switch: false,
            remote_tcp: false,
        };
        let env = script_env(&p, &s, "up");
        let get = |k: &str| env.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        assert_eq!(get("dev"), Some("tun0"));
        assert_eq!(get("ifconfig_local"), Some("198.19.0.2"));
        assert_eq!(get("route_network_1"), Some("198.19.10.0"));
        assert_eq!(get("route_gateway_1"), Some("198.19.0.1"));
        assert_eq!(
            get("foreign_option_1"),
            Some("dhcp-option DNS 198.19.10.53")
        );
        assert_eq!(
            get("foreign_option_2"),
            Some("dhcp-option DOMAIN corp.example")
        );
        assert_eq!(get("trusted_ip"), Some("198.18.2.2"));
    }
}
