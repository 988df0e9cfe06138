//! The server config model: what `tunscope server --config FILE` understands.
//!
//! OpenVPN server configs as people write them: `server NET MASK`, `topology subnet`,
//! `push "…"` lines, `keepalive`, `client-config-dir`, `auth-user-pass-verify` and so on.
//! Unknown options are errors naming `file:line`; a short list of harmless ones is ignored
//! with a warning ([`IGNORED`]).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::consts::{HAND_WINDOW_DEFAULT, TLS_TIMEOUT_DEFAULT};
use crate::data::{Cipher, Framing};
use crate::fragment::FragmentOption;
use crate::options::client::{CertType, Mssfix, TlsVersion, VerifyX509Name, WrapSource};
use crate::options::common::{Common, DevType};
use crate::options::lexer::split_line;
use crate::options::push::parse_v6_prefix;
use crate::options::{ConfigError, ConfigWarning, Ctx, Directive, Source, parse_directives};
use crate::static_key::KeyDirection;
use crate::tls::ClientCertMode;
use crate::wrap::Digest;

/// Harmless server options ignored with a warning, and why.
pub const IGNORED: &[(&str, &str)] = &[
    ("persist-key", "keys are always kept in memory"),
    ("persist-tun", "the tun device lives as long as the server"),
    (
        "ifconfig-pool-persist",
        "leases are kept per common name in memory only",
    ),
    ("status", "use the control socket / stats instead"),
    ("status-version", "use the control socket / stats instead"),
    ("log", "logs go to stderr"),
    ("log-append", "logs go to stderr"),
    ("mute", "log rate limiting is not implemented"),
    (
        "mute-replay-warnings",
        "replays are counted, not logged one by one",
    ),
    (
        "block-outside-dns",
        "Windows clients only; push it if needed",
    ),
    ("sndbuf", "socket buffers are sized by tunscope"),
    ("rcvbuf", "socket buffers are sized by tunscope"),
    ("txqueuelen", "kernel default"),
    ("fast-io", "I/O is always batched"),
    ("ecdh-curve", "rustls negotiates its own groups"),
    ("tls-server", "implied by mode server"),
    ("suppress-timestamps", "log format is fixed"),
    ("ncp-disable", "cipher negotiation is always on"),
    (
        "data-ciphers-fallback",
        "clients must negotiate an AEAD cipher",
    ),
    ("opt-verify", "options strings are informational in 2.6"),
    ("float", "authenticated UDP clients always float"),
    (
        "syslog",
        "logs go to stderr (journald collects them under systemd)",
    ),
    (
        "writepid",
        "no pid file is written (tunscope runs in the foreground)",
    ),
    ("daemon", "run tunscope under a service manager instead"),
    ("mlock", "memory is not locked"),
    (
        "passtos",
        "the outer packet's TOS is not copied from the inner one",
    ),
    (
        "ping-timer-rem",
        "the server's ping timers run per connected client, as with this option",
    ),
];

/// Server transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerTransport {
    /// UDP.
    Udp,
    /// TCP (`tcp-server`).
    Tcp,
}

/// `auth-user-pass-verify SCRIPT via-env|via-file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptMethod {
    /// Credentials in the environment (`username`, `password`).
    ViaEnv,
    /// Credentials in a temporary file, its path as the last argument.
    ViaFile,
}

/// The verify script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthScript {
    /// Command line (program and arguments, split like the shell would).
    pub command: Vec<String>,
    /// How credentials are passed.
    pub method: ScriptMethod,
}

/// A kernel route the server adds through its tun device (`route NET MASK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerRoute {
    /// Network.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// What the server tells its clients about their IPv4 gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushedGateway {
    /// `route-gateway ADDR` (the server's tunnel address, or `server-bridge`'s gateway).
    Address(Ipv4Addr),
    /// `route-gateway dhcp`: `server-bridge` without a pool, addresses from the LAN's DHCP.
    Dhcp,
    /// Nothing (`server-bridge nogw`).
    None,
}

/// `server-bridge` as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bridge {
    /// `server-bridge GATEWAY NETMASK POOL-START POOL-END`.
    Pool {
        gateway: Ipv4Addr,
        prefix: u8,
        start: Ipv4Addr,
        end: Ipv4Addr,
    },
    /// `server-bridge [nogw]`: DHCP-proxy mode, no pool.
    Dhcp { push_gateway: bool },
}

/// Parsed server config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Listen port.
    pub port: u16,
    /// Listen address or host name (`local`), resolved when the server starts; None = all.
    pub local: Option<String>,
    /// Transport.
    pub transport: ServerTransport,
    /// Listen on IPv6 (`proto udp6`/`tcp6-server`).
    pub ipv6_listen: bool,
    /// tun device name.
    pub dev: String,
    /// `dev tun` (routed, IP packets) or `dev tap` (bridged, Ethernet frames).
    pub dev_type: crate::options::common::DevType,
    /// CA certificates (the server refuses to start without).
    pub ca: Option<Source>,
    /// Server certificate (required to start).
    pub cert: Option<Source>,
    /// Server key (required to start).
    pub key: Option<Source>,
    /// `pkcs12`: certificate, key and CA certificates in one file.
    pub pkcs12: Option<Source>,
    /// `askpass`: the PKCS#12 password (None inside: ask on the terminal).
    pub askpass: Option<Option<Source>>,
    /// Control-channel wrap.
    pub wrap: WrapSource,
    /// `auth` digest.
    pub auth_digest: Digest,
    /// Ciphers offered to clients, in the server's preference order.
    pub data_ciphers: Vec<Cipher>,
    /// Tunnel network and prefix (`server NET MASK`, or `server-bridge`'s gateway and
    /// netmask); 0.0.0.0/0 in `server-bridge`'s DHCP-proxy mode, where the LAN owns it.
    pub network: (Ipv4Addr, u8),
    /// The server's address in the tunnel network (`server`: network + 1; `server-bridge`:
    /// the gateway, which lives on the LAN's bridge); never leased.
    pub server_ip: Ipv4Addr,
    /// Whether the server puts `server_ip` on its own device (`server`; not `server-bridge`,
    /// whose device is a port of a bridge that holds the address).
    pub ifconfig_local: bool,
    /// Client address pool (`ifconfig-pool START END`), default: .2 to the end of the subnet;
    /// None with `nopool` and in `server-bridge`'s DHCP-proxy mode (clients without a
    /// fixed `ifconfig-push` get no IPv4 address from the server).
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    /// `route-gateway` pushed to clients.
    pub pushed_gateway: PushedGateway,
    /// IPv6 tunnel network (`server-ipv6`).
    pub network6: Option<(Ipv6Addr, u8)>,
    /// IPv6 pool base and prefix (`ifconfig-ipv6-pool`).
    pub pool6: Option<(Ipv6Addr, u8)>,
    /// `push` option lines in order.
    pub pushes: Vec<String>,
    /// 2.6-style `dns …` lines (pushed as `dns` or as `dhcp-option` depending on the client).
    pub dns: Vec<String>,
    /// `ping` interval (from `keepalive` or `ping`).
    pub ping: Option<Duration>,
    /// `ping-restart` as pushed to clients; the server itself waits twice as long.
    pub ping_restart: Option<Duration>,
    /// tun MTU.
    pub tun_mtu: u16,
    /// `mssfix`.
    pub mssfix: Option<Mssfix>,
    /// `fragment N [mtu]`: OpenVPN's own fragmentation of large packets (UDP only).
    pub fragment: Option<FragmentOption>,
    /// `client-to-client`.
    pub client_to_client: bool,
    /// `duplicate-cn`.
    pub duplicate_cn: bool,
    /// `max-clients`: clients admitted at once (handshakes in progress are bounded apart).
    pub max_clients: u32,
    /// `connect-freq-initial N S`: stateless answers to new clients' resets (UDP), N per S
    /// for all sources together (2.6's default 100 per 10 s); each source gets a share.
    pub connect_freq_initial: (u32, Duration),
    /// `connect-freq N S`: new sessions per S seconds.
    pub connect_freq: Option<(u32, Duration)>,
    /// `verify-client-cert`.
    pub verify_client_cert: ClientCertMode,
    /// `auth-user-pass-verify`.
    pub auth_script: Option<AuthScript>,
    /// `script-security`.
    pub script_security: u8,
    /// `user`: the user to become once the tunnel is set up.
    pub user: Option<String>,
    /// `group`: the group to become.
    pub group: Option<String>,
    /// `username-as-common-name`.
    pub username_as_common_name: bool,
    /// `client-config-dir`.
    pub client_config_dir: Option<PathBuf>,
    /// `ccd-exclusive`.
    pub ccd_exclusive: bool,
    /// Kernel routes into the tun device (`route`).
    pub routes: Vec<ServerRoute>,
    /// `remote-cert-tls client`.
    pub remote_cert_tls: Option<CertType>,
    /// `verify-x509-name`.
    pub verify_x509_name: Option<VerifyX509Name>,
    /// TLS versions.
    pub tls_version_min: TlsVersion,
    /// TLS versions.
    pub tls_version_max: TlsVersion,
    /// `reneg-sec` (randomised per client to 90–100 %, like 2.6).
    pub reneg_sec: Duration,
    /// `reneg-pkts`: renegotiate after this many packets sent to a client with one key.
    pub reneg_pkts: Option<u64>,
    /// `reneg-bytes`: the same in bytes.
    pub reneg_bytes: Option<u64>,
    /// `hand-window`.
    pub hand_window: Duration,
    /// `tls-timeout`.
    pub tls_timeout: Duration,
    /// `tran-window`.
    pub tran_window: Duration,
    /// Compression framing the server uses (from `comp-lzo`, `compress`).
    pub framing: Framing,
    /// Compression settings (`comp-lzo`, `compress`, `allow-compression`).
    pub compression: crate::options::compress::CompressOptions,
    /// Extra certificate checks (`crl-verify`, `remote-cert-ku` …) and TLS limits.
    pub tls: crate::options::common::TlsOptions,
    /// `setenv NAME VALUE` pairs, passed to scripts.
    pub setenv: Vec<(String, String)>,
    /// `force-tls-key-material-export`: refuse clients without TLS-EKM (no legacy PRF).
    pub force_tls_key_material_export: bool,
    /// `up CMD`: run once the tun device is configured.
    pub up: Option<Vec<String>>,
    /// `route-up CMD`: run once the server's routes are in place.
    pub route_up: Option<Vec<String>>,
    /// `down CMD`: run when the server stops, after the tun device's routes are gone.
    pub down: Option<Vec<String>>,
    /// `replay-window`.
    pub replay_window: Option<u32>,
    /// `explicit-exit-notify`: tell clients to reconnect when the server stops.
    pub explicit_exit_notify: u32,
    /// `verb`.
    pub verb: u8,
    /// Ignored options.
    pub warnings: Vec<ConfigWarning>,
}

fn prefix_of(ctx: &Ctx<'_>, d: &Directive, mask: &str) -> Result<u8, ConfigError> {
    let m: Ipv4Addr = mask.parse().map_err(|_| {
        ctx.error(
            d.line,
            format!("option '{}': '{mask}' is not a netmask", d.name),
        )
    })?;
    let bits = u32::from(m);
    let n = bits.leading_ones();
    if bits.checked_shl(n).unwrap_or(0) != 0 {
        return Err(ctx.error(
            d.line,
            format!("option '{}': netmask {mask} is not contiguous", d.name),
        ));
    }
    Ok(n as u8)
}

/// How clients get IPv4 addresses, from `server` or `server-bridge`.
struct Addressing {
    network: (Ipv4Addr, u8),
    server_ip: Ipv4Addr,
    ifconfig_local: bool,
    pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pushed_gateway: PushedGateway,
}

fn mask_of(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn ip4(ctx: &Ctx<'_>, d: &Directive, i: usize) -> Result<Ipv4Addr, ConfigError> {
    let s = ctx.arg(d, i)?;
    s.parse().map_err(|_| {
        ctx.error(
            d.line,
            format!("option '{}': '{s}' is not an IPv4 address", d.name),
        )
    })
}

impl ServerConfig {
    /// Parses config text; relative paths resolve against the file's directory.
    pub fn parse(text: &str, file: &Path) -> Result<ServerConfig, ConfigError> {
        ServerConfig::from_sources(&[crate::options::ConfigSource::from_text(text, file)?])
    }

    /// Applies several sources in order (a file, then command-line options on top).
    pub fn from_sources(
        sources: &[crate::options::ConfigSource],
    ) -> Result<ServerConfig, ConfigError> {
        let mut b = Builder::default();
        let ctx = crate::options::apply_sources(sources, |ctx, d, optional| {
            b.apply_inner(ctx, d, optional)
        })?;
        b.finish(ctx)
    }
}

#[derive(Default)]
struct Builder {
    common: Common,
    server_mode: bool,
    port: Option<u16>,
    local: Option<String>,
    transport: Option<(ServerTransport, bool)>,
    dh_seen: bool,
    tls_auth: Option<(Source, Option<KeyDirection>)>,
    key_direction: Option<KeyDirection>,
    data_ciphers: Option<Vec<Cipher>>,
    network: Option<(Ipv4Addr, u8, usize)>,
    /// `server … nopool`.
    nopool: bool,
    /// `server-bridge` and its line.
    bridge: Option<(Bridge, usize)>,
    pool: Option<(Ipv4Addr, Ipv4Addr, usize)>,
    network6: Option<(Ipv6Addr, u8)>,
    pool6: Option<(Ipv6Addr, u8)>,
    topology_line: Option<usize>,
    pushes: Vec<String>,
    dns: Vec<String>,
    client_to_client: bool,
    duplicate_cn: bool,
    max_clients: Option<u32>,
    connect_freq_initial: Option<(u32, Duration)>,
    connect_freq: Option<(u32, Duration)>,
    verify_client_cert: Option<ClientCertMode>,
    auth_script: Option<(usize, AuthScript)>,
    /// Line of `username-as-common-name`.
    username_as_common_name: Option<usize>,
    client_config_dir: Option<PathBuf>,
    ccd_exclusive: bool,
    routes: Vec<ServerRoute>,
    remote_cert_tls: Option<CertType>,
    compress: crate::options::compress::CompressBuilder,
    replay_window: Option<u32>,
    explicit_exit_notify: u32,
    ignore_unknown: Vec<String>,
    force_ekm: bool,
    up: Option<(usize, Vec<String>)>,
    route_up: Option<(usize, Vec<String>)>,
    down: Option<(usize, Vec<String>)>,
}

impl Builder {
    fn apply_inner(
        &mut self,
        ctx: &mut Ctx<'_>,
        d: &Directive,
        optional: bool,
    ) -> Result<(), ConfigError> {
        if self.common.apply(ctx, d)?
            || crate::options::legacy_option(ctx, d)?
            || self.compress.apply(ctx, d)?
        {
            return Ok(());
        }
        let line = d.line;
        match d.name.as_str() {
            "mode" => {
                if ctx.arg(d, 0)? != "server" {
                    return Err(ctx.error(line, "option 'mode': only 'mode server' is supported"));
                }
                self.server_mode = true;
            }
            "server" => {
                let net = ip4(ctx, d, 0)?;
                let prefix = prefix_of(ctx, d, ctx.arg(d, 1)?)?;
                match d.arg(2) {
                    None => {}
                    Some("nopool") => self.nopool = true,
                    Some(x) => {
                        return Err(ctx.error(
                            line,
                            format!("option 'server': unknown flag '{x}' (only 'nopool')"),
                        ));
                    }
                }
                self.network = Some((net, prefix, line));
                self.server_mode = true;
            }
            "server-bridge" => {
                let bridge = match d.args.len() {
                    0 => Bridge::Dhcp { push_gateway: true },
                    1 if d.args[0] == "nogw" => Bridge::Dhcp {
                        push_gateway: false,
                    },
                    4 => Bridge::Pool {
                        gateway: ip4(ctx, d, 0)?,
                        prefix: prefix_of(ctx, d, ctx.arg(d, 1)?)?,
                        start: ip4(ctx, d, 2)?,
                        end: ip4(ctx, d, 3)?,
                    },
                    _ => {
                        return Err(ctx.error(
                            line,
                            "option 'server-bridge': give GATEWAY NETMASK POOL-START POOL-END, 'nogw', or nothing (addresses from the LAN's DHCP server)",
                        ));
                    }
                };
                self.bridge = Some((bridge, line));
                self.server_mode = true;
            }
            "server-ipv6" => {
                let a = ctx.arg(d, 0)?;
                let (net, bits) = parse_v6_prefix(a).ok_or_else(|| {
                    ctx.error(
                        line,
                        format!("option 'server-ipv6': '{a}' is not ADDR/BITS"),
                    )
                })?;
                if bits > 112 {
                    return Err(ctx.error(
                        line,
                        "option 'server-ipv6': the prefix must be /112 or larger",
                    ));
                }
                self.network6 = Some((net, bits));
            }
            "ifconfig-pool" => self.pool = Some((ip4(ctx, d, 0)?, ip4(ctx, d, 1)?, line)),
            "ifconfig-ipv6-pool" => {
                let a = ctx.arg(d, 0)?;
                self.pool6 = Some(parse_v6_prefix(a).ok_or_else(|| {
                    ctx.error(
                        line,
                        format!("option 'ifconfig-ipv6-pool': '{a}' is not ADDR/BITS"),
                    )
                })?);
            }
            "topology" => match ctx.arg(d, 0)? {
                "subnet" => self.topology_line = Some(line),
                t @ ("net30" | "p2p") => {
                    return Err(ctx.error(
                        line,
                        format!("option 'topology {t}' is not supported; use 'topology subnet'"),
                    ));
                }
                t => return Err(ctx.error(line, format!("option 'topology': unknown '{t}'"))),
            },
            "port" | "lport" => self.port = Some(ctx.num(d, 0)?),
            "local" => self.local = Some(ctx.arg(d, 0)?.to_owned()),
            "proto" => {
                self.transport = Some(match ctx.arg(d, 0)? {
                    "udp" | "udp4" => (ServerTransport::Udp, false),
                    "udp6" => (ServerTransport::Udp, true),
                    "tcp-server" | "tcp" | "tcp4-server" | "tcp4" => (ServerTransport::Tcp, false),
                    "tcp6-server" | "tcp6" => (ServerTransport::Tcp, true),
                    p => {
                        return Err(ctx.error(
                            line,
                            format!("option 'proto': '{p}' is not a server protocol"),
                        ));
                    }
                })
            }
            "dh" => {
                self.dh_seen = true;
                if ctx.arg(d, 0)? != "none" && d.inline.is_none() {
                    ctx.warn(line, "dh parameters ignored: only ECDHE key exchange is used (as with 'dh none')");
                }
            }
            "tls-auth" => {
                let dir = match (d.inline.is_some(), d.arg(1)) {
                    (false, Some(x)) => Some(direction(ctx, line, x)?),
                    _ => None,
                };
                self.tls_auth = Some((ctx.source(d)?, dir));
            }
            "key-direction" => self.key_direction = Some(direction(ctx, line, ctx.arg(d, 0)?)?),
            "cipher" => {
                let c = ctx.arg(d, 0)?;
                ctx.warn(line, format!("cipher '{c}' is ignored for cipher negotiation, as in OpenVPN 2.6 (clients negotiate one of data-ciphers)"));
            }
            "data-ciphers" | "ncp-ciphers" => {
                let mut v = vec![];
                for name in ctx.arg(d, 0)?.split(':') {
                    match Cipher::from_name(name) {
                        Some(c) if !v.contains(&c) => v.push(c),
                        Some(_) => {}
                        None => ctx.warn(
                            line,
                            format!("data-ciphers: unsupported cipher '{name}' ignored"),
                        ),
                    }
                }
                if v.is_empty() {
                    return Err(ctx.error(line, "option 'data-ciphers': none of the ciphers is supported (AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305, AES-128/192/256-CBC)"));
                }
                self.data_ciphers = Some(v);
            }
            "push" => {
                let opt = ctx.arg(d, 0)?;
                // Validate the pushed line's quoting now so a broken push is a config error.
                split_line(opt).map_err(|e| ctx.error(line, format!("option 'push': {e}")))?;
                if opt.contains(',') {
                    return Err(ctx.error(line, "option 'push': pushed options cannot contain ','"));
                }
                self.pushes.push(opt.to_owned());
            }
            "dns" => {
                let l = std::iter::once("dns".to_owned())
                    .chain(d.args.iter().map(|a| quote_if_needed(a)))
                    .collect::<Vec<_>>()
                    .join(" ");
                // Validate with the push parser.
                let mut p = crate::options::push::PushedOptions::default();
                p.apply(&l, &[])
                    .map_err(|e| ctx.error(line, e.to_string()))?;
                self.dns.push(l);
            }
            "client-to-client" => self.client_to_client = true,
            "duplicate-cn" => self.duplicate_cn = true,
            "max-clients" => self.max_clients = Some(ctx.num(d, 0)?),
            "connect-freq" | "connect-freq-initial" => {
                let n: u32 = ctx.num(d, 0)?;
                let secs: u64 = ctx.num(d, 1)?;
                if n == 0 || secs == 0 {
                    return Err(ctx.error(
                        line,
                        format!("option '{}': both numbers must be at least 1", d.name),
                    ));
                }
                let limit = Some((n, Duration::from_secs(secs)));
                if d.name == "connect-freq" {
                    self.connect_freq = limit;
                } else {
                    self.connect_freq_initial = limit;
                }
            }
            "verify-client-cert" => {
                self.verify_client_cert = Some(match ctx.arg(d, 0)? {
                    "none" => ClientCertMode::None,
                    "optional" => ClientCertMode::Optional,
                    "require" => ClientCertMode::Require,
                    o => {
                        return Err(
                            ctx.error(line, format!("option 'verify-client-cert': unknown '{o}'"))
                        );
                    }
                })
            }
            "auth-user-pass-verify" => {
                let cmd = ctx.arg(d, 0)?;
                let method = match d.arg(1) {
                    Some("via-env") => ScriptMethod::ViaEnv,
                    Some("via-file") => ScriptMethod::ViaFile,
                    Some(o) => {
                        return Err(ctx.error(
                            line,
                            format!("option 'auth-user-pass-verify': unknown method '{o}'"),
                        ));
                    }
                    None => {
                        return Err(ctx.error(
                            line,
                            "option 'auth-user-pass-verify' needs via-env or via-file",
                        ));
                    }
                };
                let mut command = split_line(cmd).map_err(|e| ctx.error(line, e.to_string()))?;
                if let Some(first) = command.first_mut() {
                    *first = ctx.path(first).display().to_string();
                } else {
                    return Err(ctx.error(line, "option 'auth-user-pass-verify': empty command"));
                }
                self.auth_script = Some((line, AuthScript { command, method }));
            }
            "username-as-common-name" => self.username_as_common_name = Some(line),
            "client-config-dir" => self.client_config_dir = Some(ctx.path(ctx.arg(d, 0)?)),
            "ccd-exclusive" => self.ccd_exclusive = true,
            "route" => {
                let network = ip4(ctx, d, 0)?;
                let prefix = match d.arg(1) {
                    Some(m) => prefix_of(ctx, d, m)?,
                    None => 32,
                };
                if d.arg(2).is_some() {
                    return Err(ctx.error(line, "option 'route': a gateway is not supported on the server (routes go into the tun device)"));
                }
                self.routes.push(ServerRoute { network, prefix });
            }
            "remote-cert-tls" => {
                self.remote_cert_tls = Some(match ctx.arg(d, 0)? {
                    "client" => CertType::Client,
                    "server" => CertType::Server,
                    o => {
                        return Err(ctx.error(
                            line,
                            format!("option 'remote-cert-tls': unknown type '{o}'"),
                        ));
                    }
                })
            }
            "up" | "route-up" | "down" => {
                let cmd = split_line(ctx.arg(d, 0)?)
                    .map_err(|e| ctx.error(line, format!("option '{}': {e}", d.name)))?;
                let Some(first) = cmd.first() else {
                    return Err(ctx.error(line, format!("option '{}': empty command", d.name)));
                };
                let mut cmd = cmd.clone();
                cmd[0] = ctx.path(first).display().to_string();
                let slot = match d.name.as_str() {
                    "up" => &mut self.up,
                    "route-up" => &mut self.route_up,
                    _ => &mut self.down,
                };
                *slot = Some((line, cmd));
            }
            "force-tls-key-material-export" => self.force_ekm = true,
            "remote" | "rport" => {
                return Err(ctx.error(
                    line,
                    format!("option '{}' in a server config: point-to-point mode (one fixed peer) is left out by design; use 'server NET MASK'", d.name),
                ));
            }
            "client-cert-not-required" => {
                ctx.warn(
                    line,
                    "client-cert-not-required (removed in 2.5) read as: verify-client-cert none",
                );
                self.verify_client_cert = Some(ClientCertMode::None);
            }
            "replay-window" => self.replay_window = Some(ctx.num(d, 0)?),
            "explicit-exit-notify" => {
                self.explicit_exit_notify = if d.arg(0).is_some() {
                    ctx.num(d, 0)?
                } else {
                    1
                }
            }
            "cd" => {
                let p = ctx.path(ctx.arg(d, 0)?);
                ctx.base = p;
            }
            "ignore-unknown-option" => self.ignore_unknown.extend(d.args.iter().cloned()),
            _ => crate::options::unknown_option(ctx, d, IGNORED, &self.ignore_unknown, optional)?,
        }
        Ok(())
    }

    fn finish(mut self, mut ctx: Ctx<'_>) -> Result<ServerConfig, ConfigError> {
        let mssfix = self.common.effective_mssfix();
        if !self.server_mode {
            return Err(ctx.error(0, "missing 'server NETWORK NETMASK' (or 'mode server'): only server mode is supported"));
        }
        let dev_type = self.common.resolved_dev_type();
        let tap = dev_type == DevType::Tap;
        let addressing = match (self.network, self.bridge) {
            (Some(_), Some((_, line))) => {
                return Err(ctx.error(line, "'server' and 'server-bridge' cannot be used together"));
            }
            (None, None) => {
                return Err(ctx.error(0, "missing 'server NETWORK NETMASK' (or 'server-bridge' with dev tap): the tunnel network is needed for the address pool"));
            }
            (_, Some((_, line))) if !tap => {
                return Err(ctx.error(
                    line,
                    "option 'server-bridge' only makes sense with dev tap (a bridged server); use 'server NETWORK NETMASK' with dev tun",
                ));
            }
            (Some((net, prefix, line)), None) => {
                let (max, what) = if tap { (30, "tap") } else { (29, "tun") };
                if prefix > max {
                    return Err(ctx.error(
                        line,
                        format!(
                            "option 'server': with dev {what} the network must be /{max} or larger"
                        ),
                    ));
                }
                if !tap && self.topology_line.is_none() {
                    ctx.warn(
                        line,
                        "no 'topology' given: OpenVPN 2.6 would use net30, tunscope uses subnet (add 'topology subnet' to silence this)",
                    );
                }
                let netu = u32::from(net);
                if netu & !mask_of(prefix) != 0 {
                    return Err(ctx.error(
                        line,
                        format!("option 'server': {net} has bits outside the netmask"),
                    ));
                }
                let server_ip = Ipv4Addr::from(netu + 1);
                let broadcast = netu | !mask_of(prefix);
                let default_pool = (Ipv4Addr::from(netu + 2), Ipv4Addr::from(broadcast - 1));
                // OpenVPN refuses `ifconfig-pool` next to `server` unless `nopool`; its
                // meaning (a narrower pool) is safe, so it is honoured either way.
                let pool = match (self.nopool, self.pool) {
                    (_, Some((a, b, _))) => Some((a, b)),
                    (true, None) => None,
                    (false, None) => Some(default_pool),
                };
                Addressing {
                    network: (net, prefix),
                    server_ip,
                    ifconfig_local: true,
                    pool,
                    pushed_gateway: PushedGateway::Address(server_ip),
                }
            }
            (None, Some((bridge, line))) => {
                if let Some((_, _, l)) = self.pool {
                    return Err(ctx.error(
                        l,
                        "option 'ifconfig-pool': 'server-bridge' already defines the pool (as in OpenVPN)",
                    ));
                }
                match bridge {
                    Bridge::Pool {
                        gateway,
                        prefix,
                        start,
                        end,
                    } => {
                        let m = mask_of(prefix);
                        let same = |a: Ipv4Addr| u32::from(a) & m == u32::from(gateway) & m;
                        if !same(start) || !same(end) {
                            return Err(ctx.error(
                                line,
                                format!("option 'server-bridge': the pool {start}-{end} is not in the gateway's subnet {gateway}/{prefix}"),
                            ));
                        }
                        Addressing {
                            network: (Ipv4Addr::from(u32::from(gateway) & m), prefix),
                            server_ip: gateway,
                            ifconfig_local: false,
                            pool: Some((start, end)),
                            pushed_gateway: PushedGateway::Address(gateway),
                        }
                    }
                    Bridge::Dhcp { push_gateway } => Addressing {
                        network: (Ipv4Addr::UNSPECIFIED, 0),
                        server_ip: Ipv4Addr::UNSPECIFIED,
                        ifconfig_local: false,
                        pool: None,
                        pushed_gateway: if push_gateway {
                            PushedGateway::Dhcp
                        } else {
                            PushedGateway::None
                        },
                    },
                }
            }
        };
        if let Some((a, b)) = addressing.pool
            && u32::from(a) > u32::from(b)
        {
            return Err(ctx.error(0, "ifconfig-pool: start is above end"));
        }
        // Like OpenVPN's option parser, a server file without its credentials is read; the
        // server refuses to start without them.
        let ca = self.common.ca.take();
        let cert = self.common.cert.take();
        let key = self.common.key.take();
        for (what, missing) in [
            ("ca", ca.is_none()),
            ("cert", cert.is_none()),
            ("key", key.is_none()),
        ] {
            if missing {
                ctx.warn(
                    0,
                    format!("no '{what}' given: the server cannot start without it"),
                );
            }
        }
        if !self.dh_seen {
            ctx.warn(
                0,
                "no 'dh' given: ECDHE is used, as with 'dh none' (OpenVPN 2.6 requires the option)",
            );
        }
        let verify_client_cert = self.verify_client_cert.unwrap_or(ClientCertMode::Require);
        if verify_client_cert != ClientCertMode::Require && self.auth_script.is_none() {
            return Err(ctx.error(
                0,
                "verify-client-cert none|optional needs auth-user-pass-verify (clients without a certificate must log in)",
            ));
        }
        for (line, _) in [&self.up, &self.route_up, &self.down].into_iter().flatten() {
            if self.common.script_security < 2 {
                return Err(ctx.error(*line, "up/route-up/down scripts need 'script-security 2'"));
            }
        }
        // As 2.6: the username becomes the identity only if something checks it.
        if let Some(line) = self.username_as_common_name
            && self.auth_script.is_none()
        {
            return Err(ctx.error(
                line,
                "username-as-common-name needs auth-user-pass-verify: without it any client could name itself",
            ));
        }
        if let Some((line, _)) = &self.auth_script
            && self.common.script_security < 2
        {
            return Err(ctx.error(
                *line,
                "auth-user-pass-verify needs 'script-security 2' to run the script",
            ));
        }
        let v2 = self.common.tls_crypt_v2.take();
        if v2.is_some() && (self.tls_auth.is_some() || self.common.tls_crypt.is_some()) {
            return Err(ctx.error(
                0,
                "'tls-crypt-v2' cannot be combined with 'tls-auth' or 'tls-crypt'",
            ));
        }
        let wrap = match (self.tls_auth, self.common.tls_crypt) {
            _ if let Some(src) = v2 => WrapSource::CryptV2(src),
            (Some(_), Some(_)) => {
                return Err(ctx.error(0, "'tls-auth' and 'tls-crypt' cannot be used together"));
            }
            (Some((key, dir)), None) => WrapSource::Auth {
                key,
                direction: dir
                    .or(self.key_direction)
                    .unwrap_or(KeyDirection::Bidirectional),
            },
            (None, Some(s)) => WrapSource::Crypt(s),
            (None, None) => WrapSource::None,
        };
        let pool6 = self.pool6.or(self.network6.map(|(n, bits)| {
            // 2.6 starts the IPv6 pool at base + 0x1000.
            (Ipv6Addr::from(u128::from(n) + 0x1000), bits)
        }));
        let tls_version_min = self.common.tls_min.unwrap_or(TlsVersion::Tls12);
        let tls_version_max = self.common.tls_max.unwrap_or(TlsVersion::Tls13);
        if tls_version_min > tls_version_max {
            return Err(ctx.error(0, "tls-version-min is above tls-version-max"));
        }
        Common::finish_tls(
            &self.common.tls,
            self.common.tls_cipher_line,
            &ctx,
            tls_version_max,
        )?;
        let compression = self.compress.finish(&mut ctx)?;
        let secs = Duration::from_secs;
        let default_port = self.port.unwrap_or(1194);
        let (transport, ipv6_listen) = self.transport.unwrap_or((ServerTransport::Udp, false));
        if let Some((line, _)) = self.common.fragment
            && transport == ServerTransport::Tcp
        {
            return Err(ctx.error(
                line,
                "option 'fragment' works over UDP only (as in OpenVPN): drop it (TCP needs none) or use proto udp",
            ));
        }
        Ok(ServerConfig {
            port: default_port,
            local: self.local,
            transport,
            ipv6_listen,
            dev: self.common.dev.unwrap_or_else(|| "tun".into()),
            dev_type,
            ca,
            cert,
            key,
            pkcs12: self.common.pkcs12.take(),
            askpass: self.common.askpass.take(),
            wrap,
            auth_digest: self.common.auth_digest.unwrap_or(Digest::Sha1),
            data_ciphers: self.data_ciphers.unwrap_or_else(|| Cipher::ALL.to_vec()),
            network: addressing.network,
            server_ip: addressing.server_ip,
            ifconfig_local: addressing.ifconfig_local,
            pool: addressing.pool,
            pushed_gateway: addressing.pushed_gateway,
            network6: self.network6,
            pool6,
            pushes: self.pushes,
            dns: self.dns,
            ping: self.common.ping.map(secs),
            ping_restart: self.common.ping_restart.map(secs),
            tun_mtu: self
                .common
                .tun_mtu
                .or(self.common.link_mtu.map(|l| {
                    l.saturating_sub(24 + compression.framing.overhead() as u16)
                        .max(576)
                }))
                .unwrap_or(1500),
            mssfix,
            fragment: self.common.fragment.map(|(_, f)| f),
            client_to_client: self.client_to_client,
            duplicate_cn: self.duplicate_cn,
            max_clients: self.max_clients.unwrap_or(1024),
            connect_freq_initial: self
                .connect_freq_initial
                .unwrap_or((100, Duration::from_secs(10))),
            connect_freq: self.connect_freq,
            verify_client_cert,
            auth_script: self.auth_script.map(|(_, s)| s),
            script_security: self.common.script_security,
            user: self.common.user.clone(),
            group: self.common.group.clone(),
            username_as_common_name: self.username_as_common_name.is_some(),
            client_config_dir: self.client_config_dir,
            ccd_exclusive: self.ccd_exclusive,
            routes: self.routes,
            remote_cert_tls: self.remote_cert_tls,
            verify_x509_name: self.common.verify_x509_name,
            tls_version_min,
            tls_version_max,
            reneg_sec: secs(self.common.reneg_sec.unwrap_or(3600)),
            reneg_pkts: self.common.reneg_pkts,
            reneg_bytes: self.common.reneg_bytes,
            hand_window: self.common.hand_window.map_or(HAND_WINDOW_DEFAULT, secs),
            tls_timeout: self.common.tls_timeout.map_or(TLS_TIMEOUT_DEFAULT, secs),
            tran_window: secs(self.common.tran_window.unwrap_or(3600)),
            framing: compression.framing,
            compression,
            tls: self.common.tls,
            setenv: self.common.setenv,
            force_tls_key_material_export: self.force_ekm,
            up: self.up.map(|(_, c)| c),
            route_up: self.route_up.map(|(_, c)| c),
            down: self.down.map(|(_, c)| c),
            replay_window: self.replay_window,
            explicit_exit_notify: self.explicit_exit_notify,
            verb: self.common.verb.unwrap_or(1),
            warnings: ctx.warnings,
        })
    }
}

fn direction(ctx: &Ctx<'_>, line: usize, s: &str) -> Result<KeyDirection, ConfigError> {
    match s {
        "0" => Ok(KeyDirection::Normal),
        "1" => Ok(KeyDirection::Inverse),
        _ => Err(ctx.error(line, format!("key direction must be 0 or 1, not '{s}'"))),
    }
}

fn quote_if_needed(a: &str) -> String {
    if a.chars().any(char::is_whitespace) {
        format!("\"{}\"", a.replace('"', "\\\""))
    } else {
        a.to_owned()
    }
}

/// A client-config-dir file: per-client overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientOverrides {
    /// `ifconfig-push ADDR NETMASK`.
    pub ifconfig_push: Option<Ipv4Addr>,
    /// `ifconfig-ipv6-push ADDR/BITS`.
    pub ifconfig_ipv6_push: Option<Ipv6Addr>,
    /// `iroute NET MASK`: networks behind this client.
    pub iroutes: Vec<(Ipv4Addr, u8)>,
    /// `iroute-ipv6 NET/BITS`.
    pub iroutes6: Vec<(Ipv6Addr, u8)>,
    /// Extra `push` lines.
    pub pushes: Vec<String>,
    /// `push-reset`: do not send the global pushes.
    pub push_reset: bool,
    /// `disable`: refuse this client.
    pub disable: bool,
}

impl ClientOverrides {
    /// Parses a ccd file.
    pub fn parse(text: &str, file: &Path) -> Result<ClientOverrides, ConfigError> {
        let fname = file.display().to_string();
        let ctx = Ctx {
            file: &fname,
            base: file.parent().map(Path::to_path_buf).unwrap_or_default(),
            warnings: vec![],
        };
        let mut o = ClientOverrides::default();
        for d in parse_directives(text).map_err(|e| ctx.error(e.line, e.error.to_string()))? {
            match d.name.as_str() {
                "ifconfig-push" => {
                    o.ifconfig_push = Some(ip4(&ctx, &d, 0)?);
                    ip4(&ctx, &d, 1)?;
                }
                "ifconfig-ipv6-push" => {
                    let a = ctx.arg(&d, 0)?;
                    o.ifconfig_ipv6_push = Some(
                        parse_v6_prefix(a)
                            .ok_or_else(|| ctx.error(d.line, format!("'{a}' is not ADDR/BITS")))?
                            .0,
                    );
                }
                "iroute" => {
                    let net = ip4(&ctx, &d, 0)?;
                    let prefix = match d.arg(1) {
                        Some(m) => prefix_of(&ctx, &d, m)?,
                        None => 32,
                    };
                    o.iroutes.push((net, prefix));
                }
                "iroute-ipv6" => {
                    let a = ctx.arg(&d, 0)?;
                    o.iroutes6.push(
                        parse_v6_prefix(a)
                            .ok_or_else(|| ctx.error(d.line, format!("'{a}' is not ADDR/BITS")))?,
                    );
                }
                "push" => o.pushes.push(ctx.arg(&d, 0)?.to_owned()),
                "push-reset" => o.push_reset = true,
                "disable" => o.disable = true,
                n => {
                    return Err(ctx.error(
                        d.line,
                        format!("unsupported option '{n}' in client-config-dir file"),
                    ));
                }
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse(text, Path::new("/etc/tunscope/server.conf"))
    }

    const BASE: &str = "port 1194\nproto udp\ndev tun\nca ca.crt\ncert s.crt\nkey s.key\ndh none\nserver 198.19.0.0 255.255.255.0\ntopology subnet\n";

    #[test]
    fn tap_servers_routed_and_bridged() {
        const TAP: &str =
            "port 1194\nproto udp\ndev tap0\nca ca.crt\ncert s.crt\nkey s.key\ndh none\n";
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        // `server` with dev tap: the device gets .1/prefix; /30 is allowed (tun needs /29).
        let c = parse(&format!("{TAP}server 198.19.0.0 255.255.255.252\n")).unwrap();
        assert_eq!(c.dev_type, DevType::Tap);
        assert!(c.ifconfig_local);
        assert_eq!(c.pushed_gateway, PushedGateway::Address(ip("198.19.0.1")));
        assert_eq!(c.pool, Some((ip("198.19.0.2"), ip("198.19.0.2"))));
        assert!(c.warnings.iter().all(|w| !w.message.contains("topology")));
        // server-bridge with a pool: the gateway lives on the bridge, not on the device.
        let c = parse(&format!(
            "{TAP}server-bridge 198.19.0.1 255.255.255.0 198.19.0.100 198.19.0.150\n"
        ))
        .unwrap();
        assert!(!c.ifconfig_local);
        assert_eq!(c.network, (ip("198.19.0.0"), 24));
        assert_eq!(c.server_ip, ip("198.19.0.1"));
        assert_eq!(c.pool, Some((ip("198.19.0.100"), ip("198.19.0.150"))));
        // DHCP-proxy mode: no pool; `route-gateway dhcp`, or nothing with nogw.
        let c = parse(&format!("{TAP}server-bridge\n")).unwrap();
        assert_eq!((c.pool, c.pushed_gateway), (None, PushedGateway::Dhcp));
        let c = parse(&format!("{TAP}server-bridge nogw\n")).unwrap();
        assert_eq!(c.pushed_gateway, PushedGateway::None);
        // `server … nopool` with an own pool.
        let c = parse(
            &format!("{BASE}ifconfig-pool 198.19.0.50 198.19.0.60\n")
                .replace("255.255.255.0\n", "255.255.255.0 nopool\n"),
        )
        .unwrap();
        assert_eq!(c.pool, Some((ip("198.19.0.50"), ip("198.19.0.60"))));
        // Mistakes OpenVPN refuses too, with the line.
        let e = parse(&format!("{BASE}server-bridge\n")).unwrap_err();
        assert!(e.message.contains("cannot be used together"), "{e}");
        let e =
            parse(&BASE.replace("server 198.19.0.0 255.255.255.0", "server-bridge")).unwrap_err();
        assert!(e.message.contains("only makes sense with dev tap"), "{e}");
        let c = parse(&BASE.replace("255.255.255.0\n", "255.255.255.0 nopool\n")).unwrap();
        assert_eq!(c.pool, None);
        let e = parse(&format!(
            "{TAP}server-bridge 198.19.0.1 255.255.255.0 198.19.1.100 198.19.1.150\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("not in the gateway's subnet"), "{e}");
        let e = parse(&format!("{TAP}server-bridge 198.19.0.1\n")).unwrap_err();
        assert_eq!(e.line, 8);
    }

    #[test]
    fn typical_server_config() {
        let c = parse(&format!(
            "{BASE}keepalive 10 120\npush \"route 198.19.10.0 255.255.255.0\"\npush \"dhcp-option DNS 198.19.10.53\"\nclient-to-client\nserver-ipv6 2001:db8:100::/64\ntls-crypt ta.key\ndns server 0 address 198.19.10.53\ndns server 0 resolve-domains corp.example\npersist-key\nclient-config-dir ccd\n"
        ))
        .unwrap();
        assert_eq!(c.network, ("198.19.0.0".parse().unwrap(), 24));
        assert_eq!(
            c.pool,
            Some((
                "198.19.0.2".parse().unwrap(),
                "198.19.0.254".parse().unwrap()
            ))
        );
        assert_eq!(
            c.pushes,
            vec![
                "route 198.19.10.0 255.255.255.0",
                "dhcp-option DNS 198.19.10.53"
            ]
        );
        assert_eq!(c.ping, Some(Duration::from_secs(10)));
        assert!(c.client_to_client);
        assert_eq!(c.pool6, Some(("2001:db8:100::1000".parse().unwrap(), 64)));
        assert_eq!(c.dns.len(), 2);
        assert_eq!(
            c.client_config_dir,
            Some(PathBuf::from("/etc/tunscope/ccd"))
        );
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse(&format!("{BASE}topology net30\n")).unwrap_err();
        assert_eq!(e.line, 10);
        assert!(e.message.contains("net30"));
        let e = parse(&format!("{BASE}plugin /x.so\n")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/tunscope/server.conf:10: option 'plugin': OpenVPN C plugins"),
            "{e}"
        );
        let e = parse(&format!("{BASE}frobnicate\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/tunscope/server.conf:10: unsupported option 'frobnicate'"
        );
        let e = parse(&format!("{BASE}push \"route 1.2.3.0,x\"\n")).unwrap_err();
        assert!(e.message.contains("','"));
        let e = parse(&format!("{BASE}verify-client-cert none\n")).unwrap_err();
        assert!(e.message.contains("auth-user-pass-verify"));
        // 2.6 refuses this too: the username would be an identity nobody checked.
        let e = parse(&format!("{BASE}username-as-common-name\n")).unwrap_err();
        assert_eq!(e.line, 10);
        assert!(e.message.contains("auth-user-pass-verify"), "{e}");
        let e = parse(&format!(
            "{BASE}auth-user-pass-verify ./check.sh via-file\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("script-security"));
        assert!(parse("dev tun\n").unwrap_err().message.contains("server"));
        // A missing `dh` (2.6 refuses the file) means ECDHE, said in a warning.
        let c = parse(&BASE.replace("dh none\n", "")).unwrap();
        assert!(c.warnings.iter().any(|w| w.message.contains("'dh'")));
        let e = parse(&format!("{BASE}dns server x address 1.2.3.4\n")).unwrap_err();
        assert_eq!(e.line, 10);
    }

    #[test]
    fn ccd_file() {
        let o = ClientOverrides::parse(
            "ifconfig-push 198.19.0.50 255.255.255.0\niroute 198.19.50.0 255.255.255.0\npush \"route 198.19.60.0 255.255.255.0\"\n",
            Path::new("/ccd/client1"),
        )
        .unwrap();
        assert_eq!(o.ifconfig_push, Some("198.19.0.50".parse().unwrap()));
        assert_eq!(o.iroutes, vec![("198.19.50.0".parse().unwrap(), 24)]);
        assert_eq!(o.pushes.len(), 1);
        assert!(ClientOverrides::parse("frob 1\n", Path::new("/ccd/x")).is_err());
    }
}
