//! The client config model: what `tunscope client --config FILE` understands.
//!
//! Unknown options are errors naming `file:line` and the option, unless listed in
//! `ignore-unknown-option` or in [`IGNORED`] (harmless options, ignored with a warning).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::consts::{HAND_WINDOW_DEFAULT, TLS_TIMEOUT_DEFAULT};
use crate::data::{Cipher, Framing};
use crate::fragment::FragmentOption;
use crate::options::common::Common;
use crate::options::{ConfigError, ConfigWarning, Ctx, Directive, Source, parse_directives};
use crate::static_key::KeyDirection;
use crate::wrap::Digest;

/// Harmless options ignored with a warning, and why.
pub const IGNORED: &[(&str, &str)] = &[
    (
        "resolv-retry",
        "name resolution is retried with every connection attempt",
    ),
    ("persist-key", "keys are always kept in memory"),
    (
        "persist-tun",
        "the tun device is always kept across reconnects",
    ),
    (
        "mute-replay-warnings",
        "replays are counted, not logged one by one",
    ),
    ("mute", "log rate limiting is not implemented"),
    ("float", "the server address is fixed per connection"),
    ("suppress-timestamps", "log format is fixed"),
    ("sndbuf", "socket buffers are sized by tunscope"),
    ("rcvbuf", "socket buffers are sized by tunscope"),
    ("txqueuelen", "kernel default"),
    ("fast-io", "I/O is always batched"),
    ("block-outside-dns", "Windows only"),
    ("route-delay", "routes are applied immediately"),
    ("route-method", "Windows only"),
    (
        "route-metric",
        "routes into the tunnel use the kernel's default metric",
    ),
    ("ip-win32", "Windows only"),
    ("dhcp-renew", "Windows only"),
    ("dhcp-release", "Windows only"),
    ("register-dns", "Windows only"),
    ("win-sys", "Windows only"),
    ("tap-sleep", "Windows only"),
    ("show-net-up", "Windows only"),
    ("allow-pull-fqdn", "pushed names are accepted"),
    (
        "mlock",
        "memory is not locked (keys live in this process only)",
    ),
    (
        "passtos",
        "the outer packet's TOS is not copied from the inner one",
    ),
    (
        "http-proxy-retry",
        "removed in 2.4: retries follow connect-retry",
    ),
    (
        "socks-proxy-retry",
        "removed in 2.4: retries follow connect-retry",
    ),
    (
        "tls-exit",
        "the client exits on a TLS error only after connect-retry-max",
    ),
    (
        "ping-timer-rem",
        "a client always has a remote, so the ping timer always runs, as with this option",
    ),
    ("persist-local-ip", "the local address is fixed per run"),
    (
        "disable-occ",
        "tunscope never sends OCC option checks nor warns about options-string mismatches",
    ),
    ("log", "logs go to stderr"),
    ("log-append", "logs go to stderr"),
    (
        "syslog",
        "logs go to stderr (journald collects them under systemd)",
    ),
    (
        "writepid",
        "no pid file is written (tunscope runs in the foreground)",
    ),
    ("status", "use --control and tunscope stats instead"),
    ("status-version", "use --control and tunscope stats instead"),
    (
        "keying-material-exporter",
        "exported keying material is only for plugins, which tunscope does not load",
    ),
    ("tun-mtu-extra", "tap only"),
    ("machine-readable-output", "log format is fixed"),
    ("ncp-disable", "cipher negotiation is always on"),
];

/// Transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (client side).
    Tcp,
}

impl Transport {
    fn parse(s: &str) -> Option<Transport> {
        Some(match s {
            "udp" | "udp4" | "udp6" => Transport::Udp,
            "tcp" | "tcp-client" | "tcp4" | "tcp4-client" | "tcp6" | "tcp6-client" => {
                Transport::Tcp
            }
            _ => return None,
        })
    }
}

/// A `remote HOST [PORT [PROTO]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport.
    pub transport: Transport,
}

/// Where the `auth-user-pass` credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserPass {
    /// A file or an inline block: username on the first line, password on the second.
    From(Source),
    /// `auth-user-pass` alone: asked on the terminal when the client starts.
    Prompt,
}

/// `pull-filter accept|ignore|reject TEXT`: what happens to pushed options starting with TEXT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullFilter {
    /// What to do.
    pub action: PullAction,
    /// Prefix of the pushed option text.
    pub text: String,
}

/// A pull-filter's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullAction {
    /// Keep the option (and stop looking at later filters).
    Accept,
    /// Drop the option silently.
    Ignore,
    /// Drop the option and restart the connection (OpenVPN: "reject").
    Reject,
}

/// Which proxy protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// `http-proxy`: HTTP CONNECT.
    Http,
    /// `socks-proxy`: SOCKS5.
    Socks5,
}

/// Where proxy credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyAuth {
    /// None (the proxy is open).
    None,
    /// A file (or inline `<http-proxy-user-pass>` block): username, then password.
    From(Source),
    /// Asked on the terminal (`stdin`).
    Prompt,
}

/// `http-proxy` / `socks-proxy` and `http-proxy-option`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    /// Protocol.
    pub kind: ProxyKind,
    /// Proxy host.
    pub host: String,
    /// Proxy port.
    pub port: u16,
    /// Credentials.
    pub auth: ProxyAuth,
    /// HTTP version of the CONNECT request (`http-proxy-option VERSION`; default 1.0).
    pub http_version: String,
    /// `http-proxy-option AGENT`.
    pub user_agent: Option<String>,
    /// `http-proxy-option CUSTOM-HEADER NAME VALUE`.
    pub headers: Vec<(String, String)>,
}

/// `auth-retry`: what an AUTH_FAILED does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthRetry {
    /// Exit (the default).
    #[default]
    None,
    /// Reconnect with the same credentials.
    NoInteract,
    /// Ask for new credentials (terminal or management interface) and reconnect.
    Interact,
}

/// `management …`: where the management interface listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagementAddr {
    /// `management PATH unix`.
    Unix(PathBuf),
    /// `management IP PORT`.
    Tcp(String, u16),
}

/// The management interface settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagementSettings {
    /// Where it listens.
    pub addr: ManagementAddr,
    /// `management-query-passwords`: ask for auth-user-pass credentials there.
    pub query_passwords: bool,
    /// `management-hold`: wait for `hold release` before connecting.
    pub hold: bool,
    /// `management … PW-FILE`: a client must first send the password in this file's first
    /// line (`stdin`: asked on the terminal at start).
    pub password_file: Option<PathBuf>,
}

/// `remote-cert-tls client|server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertType {
    /// The peer must be a server certificate (EKU serverAuth).
    Server,
    /// The peer must be a client certificate (EKU clientAuth).
    Client,
}

/// How `verify-x509-name` compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum X509NameKind {
    /// Full subject in OpenSSL's RFC 2253-like one-line form (`C=.., CN=..`).
    Subject,
    /// Exact common name.
    Name,
    /// Common name prefix.
    NamePrefix,
}

/// `verify-x509-name NAME [subject|name|name-prefix]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyX509Name {
    /// What to compare against.
    pub name: String,
    /// How.
    pub kind: X509NameKind,
}

/// TLS protocol versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    /// Parses `1.2`, `1.3` (and refuses older versions, which rustls does not implement).
    pub fn parse(s: &str) -> Result<TlsVersion, String> {
        match s {
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            "1.0" | "1.1" => Err(format!("TLS {s} is not supported (minimum is 1.2)")),
            _ => Err(format!("unknown TLS version '{s}'")),
        }
    }
}

/// Control-channel wrap as configured (key material not yet read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WrapSource {
    /// No wrap.
    None,
    /// `tls-auth`.
    Auth {
        /// Key file or inline block.
        key: Source,
        /// Direction (from the second argument or `key-direction`).
        direction: KeyDirection,
    },
    /// `tls-crypt`.
    Crypt(Source),
    /// `tls-crypt-v2`: a client key (client) or the server key (server).
    CryptV2(Source),
}

/// How the `mssfix` value is meant (OpenVPN 2.6 semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MssMode {
    /// `mssfix N`: N bounds the encapsulated packet's link payload (UDP/TCP payload).
    Payload,
    /// `mssfix N mtu`: N bounds the whole outer IP packet.
    Mtu,
    /// `mssfix N fixed`: N bounds the inner IP packet (MSS = N − 40).
    Fixed,
}

/// `mssfix` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mssfix {
    /// The number given.
    pub value: u16,
    /// How to read it.
    pub mode: MssMode,
}

impl Mssfix {
    /// OpenVPN's default: `mssfix 1492 mtu`.
    pub const DEFAULT: Mssfix = Mssfix {
        value: 1492,
        mode: MssMode::Mtu,
    };

    /// The TCP MSS for IPv4 inner packets, given the outer IP+transport header size and the
    /// data channel overhead. `None` when clamping is off.
    pub fn mss_v4(&self, outer_headers: u16, data_overhead: u16) -> Option<u16> {
        if self.value == 0 {
            return None;
        }
        let inner_max = match self.mode {
            MssMode::Fixed => self.value,
            MssMode::Payload => self.value.saturating_sub(data_overhead),
            MssMode::Mtu => self.value.saturating_sub(outer_headers + data_overhead),
        };
        Some(inner_max.saturating_sub(40).max(536))
    }
}

/// Parsed client config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Remotes in the order they are tried.
    pub remotes: Vec<Remote>,
    /// Local UDP port (`lport`); `None` = ephemeral (`nobind`).
    pub lport: Option<u16>,
    /// tun device name (`dev tun` = kernel picks `tunN`).
    pub dev: String,
    /// `dev tun` (IP packets) or `dev tap` (Ethernet frames).
    pub dev_type: crate::options::common::DevType,
    /// CA certificates (None only with `peer-fingerprint`).
    pub ca: Option<Source>,
    /// Client certificate.
    pub cert: Option<Source>,
    /// Client private key.
    pub key: Option<Source>,
    /// `pkcs12`: certificate, key and CA certificates in one file.
    pub pkcs12: Option<Source>,
    /// `askpass`: password of the key or PKCS#12 file (None inside: ask on the terminal).
    pub askpass: Option<Option<Source>>,
    /// Control-channel wrap.
    pub wrap: WrapSource,
    /// `auth` digest (tls-auth HMAC).
    pub auth_digest: Digest,
    /// `auth-user-pass`: a file, an inline block, or a prompt.
    pub auth_user_pass: Option<UserPass>,
    /// `auth-nocache`: forget the password after it was sent (asked again on reconnect).
    pub auth_nocache: bool,
    /// `remote-cert-tls`.
    pub remote_cert_tls: Option<CertType>,
    /// `verify-x509-name`.
    pub verify_x509_name: Option<VerifyX509Name>,
    /// Data ciphers offered, in preference order.
    pub data_ciphers: Vec<Cipher>,
    /// `data-ciphers-fallback`: the cipher of a server that negotiates none (OpenVPN < 2.4).
    pub data_ciphers_fallback: Option<Cipher>,
    /// `tls-version-min`.
    pub tls_version_min: TlsVersion,
    /// `tls-version-max`.
    pub tls_version_max: TlsVersion,
    /// `reneg-sec` (0 = never from our side).
    pub reneg_sec: Duration,
    /// `reneg-pkts` (packets we send with one key).
    pub reneg_pkts: Option<u64>,
    /// `reneg-bytes` (bytes we send with one key).
    pub reneg_bytes: Option<u64>,
    /// `hand-window`.
    pub hand_window: Duration,
    /// `tls-timeout`.
    pub tls_timeout: Duration,
    /// `tran-window`.
    pub tran_window: Duration,
    /// `ping` (overridden by a pushed value).
    pub ping: Option<Duration>,
    /// `ping-restart` (overridden by a pushed value).
    pub ping_restart: Option<Duration>,
    /// `ping-exit`.
    pub ping_exit: Option<Duration>,
    /// `explicit-exit-notify N` (0 = off; default 1 over UDP, unlike OpenVPN's 0).
    pub explicit_exit_notify: u32,
    /// `tun-mtu`.
    pub tun_mtu: u16,
    /// `mssfix` (None = OpenVPN's default of 1492 incl. encapsulation; value 0 = off).
    pub mssfix: Option<Mssfix>,
    /// `fragment N [mtu]`: OpenVPN's own fragmentation of large packets (UDP only).
    pub fragment: Option<FragmentOption>,
    /// Compression stub framing from `comp-lzo no` / `compress stub[-v2]`.
    pub framing: Framing,
    /// Seconds between connection attempts (`connect-retry`).
    pub connect_retry: Duration,
    /// `connect-retry-max` (None = forever).
    pub connect_retry_max: Option<u32>,
    /// `replay-window`.
    pub replay_window: Option<u32>,
    /// `verb`.
    pub verb: u8,
    /// `route-nopull`.
    pub route_nopull: bool,
    /// `route-noexec`: routes are left to the `up` script.
    pub route_noexec: bool,
    /// `block-ipv6`: IPv6 to the internet goes into the tunnel (and no further) rather than
    /// around it.
    pub block_ipv6: bool,
    /// `up CMD` (run after the tun device is configured).
    pub up: Option<Vec<String>>,
    /// `down CMD` (run after the tunnel closed).
    pub down: Option<Vec<String>>,
    /// `script-security` level.
    pub script_security: u8,
    /// `user`: the user to become once the tunnel is set up.
    pub user: Option<String>,
    /// `group`: the group to become.
    pub group: Option<String>,
    /// Routes from the config file itself (`route`), added like pushed ones.
    pub routes: Vec<String>,
    /// `redirect-gateway` from the config file itself (its arguments).
    pub redirect_gateway: Option<String>,
    /// `http-proxy` / `socks-proxy`: the server is reached over TCP through it.
    pub proxy: Option<ProxySettings>,
    /// `management`: OpenVPN's management interface.
    pub management: Option<ManagementSettings>,
    /// `auth-retry`.
    pub auth_retry: AuthRetry,
    /// `ifconfig-noexec`: the tun device gets no addresses from us (the up script sets them).
    pub ifconfig_noexec: bool,
    /// `remote-random`: remotes are tried in a random order (shuffled once per run).
    pub remote_random: bool,
    /// `server-poll-timeout`: how long one remote may take to answer before the next is tried.
    pub server_poll_timeout: Duration,
    /// `persist-remote-ip`: keep the resolved address of the remote across restarts.
    pub persist_remote_ip: bool,
    /// `local ADDR`: the local address the link binds to.
    pub local: Option<String>,
    /// `push-peer-info`: send the fuller peer-info set (platform details) to the server.
    pub push_peer_info: bool,
    /// `inactive SECS [BYTES]`: exit after SECS without (BYTES of) tunnel traffic.
    pub inactive: Option<(Duration, u64)>,
    /// `dhcp-option …` lines of the config itself, applied like pushed ones.
    pub dhcp_options: Vec<String>,
    /// `pull-filter` rules in order.
    pub pull_filters: Vec<PullFilter>,
    /// `down-pre`: run the down script before the tun device is closed (it always is here).
    pub down_pre: bool,
    /// `topology` from the config (the server's push wins).
    pub topology: Option<String>,
    /// `setenv NAME VALUE` pairs, passed to scripts.
    pub setenv: Vec<(String, String)>,
    /// Extra certificate checks and TLS negotiation limits.
    pub tls: crate::options::common::TlsOptions,
    /// Compression settings (`comp-lzo`, `compress`, `allow-compression`).
    pub compression: crate::options::compress::CompressOptions,
    /// Ignored options.
    pub warnings: Vec<ConfigWarning>,
}

impl ClientConfig {
    /// Parses config text. `file` names the config in messages; relative paths resolve
    /// against its directory.
    pub fn parse(text: &str, file: &Path) -> Result<ClientConfig, ConfigError> {
        ClientConfig::from_sources(&[crate::options::ConfigSource::from_text(text, file)?])
    }

    /// Applies several sources in order (a file, then command-line options on top).
    pub fn from_sources(
        sources: &[crate::options::ConfigSource],
    ) -> Result<ClientConfig, ConfigError> {
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
    client_mode: bool,
    remotes: Vec<(String, Option<u16>, Option<Transport>)>,
    tls_client: bool,
    pull: bool,
    remote_random: bool,
    server_poll_timeout: Option<u64>,
    persist_remote_ip: bool,
    local: Option<String>,
    push_peer_info: bool,
    auth_nocache: bool,
    inactive: Option<(u64, u64)>,
    dhcp_options: Vec<String>,
    pull_filters: Vec<PullFilter>,
    down_pre: bool,
    topology: Option<String>,
    proxy: Option<(usize, ProxySettings)>,
    proxy_options: Vec<(usize, Vec<String>)>,
    management: Option<ManagementAddr>,
    management_pw: Option<PathBuf>,
    fixed_ifconfig: Vec<(usize, String)>,
    management_query_passwords: bool,
    management_hold: bool,
    auth_retry: AuthRetry,
    ifconfig_noexec: bool,
    compress: crate::options::compress::CompressBuilder,
    proto: Option<Transport>,
    port: Option<u16>,
    lport: Option<u16>,
    tls_auth: Option<(Source, Option<KeyDirection>)>,
    key_direction: Option<KeyDirection>,
    auth_user_pass: Option<UserPass>,
    remote_cert_tls: Option<CertType>,
    data_ciphers: Option<Vec<Cipher>>,
    fallback: Option<Cipher>,
    ping_exit: Option<u64>,
    explicit_exit_notify: Option<u32>,
    connect_retry: Option<u64>,
    connect_retry_max: Option<u32>,
    replay_window: Option<u32>,
    route_nopull: bool,
    route_noexec: bool,
    block_ipv6: bool,
    up: Option<(usize, Vec<String>)>,
    down: Option<(usize, Vec<String>)>,
    routes: Vec<String>,
    redirect_gateway: Option<String>,
    ignore_unknown: Vec<String>,
}

impl Builder {
    fn apply(&mut self, ctx: &mut Ctx<'_>, d: &Directive) -> Result<(), ConfigError> {
        self.apply_inner(ctx, d, false)
    }

    fn apply_inner(
        &mut self,
        ctx: &mut Ctx<'_>,
        d: &Directive,
        optional: bool,
    ) -> Result<(), ConfigError> {
        // Fixed addresses: point-to-point mode, unless the file is a pulling client (then the
        // server's push decides); known only at the end.
        if matches!(d.name.as_str(), "ifconfig" | "ifconfig-ipv6") {
            self.fixed_ifconfig.push((d.line, d.name.clone()));
            return Ok(());
        }
        if self.common.apply(ctx, d)?
            || crate::options::legacy_option(ctx, d)?
            || self.compress.apply(ctx, d)?
        {
            return Ok(());
        }
        let line = d.line;
        match d.name.as_str() {
            "client" => self.client_mode = true,
            "tls-client" => self.tls_client = true,
            "pull" => self.pull = true,
            "connection" => self.connection(ctx, d)?,
            "remote-random" => self.remote_random = true,
            "server-poll-timeout" | "connect-timeout" => {
                self.server_poll_timeout = Some(ctx.num(d, 0)?)
            }
            "persist-remote-ip" => self.persist_remote_ip = true,
            "topology" => match ctx.arg(d, 0)? {
                t @ ("subnet" | "net30" | "p2p") => self.topology = Some(t.to_owned()),
                o => {
                    return Err(ctx.error(
                        line,
                        format!("option 'topology': unknown value '{o}' (subnet, net30 or p2p)"),
                    ));
                }
            },
            "local" => self.local = Some(ctx.arg(d, 0)?.to_owned()),
            "push-peer-info" => self.push_peer_info = true,
            "auth-nocache" => self.auth_nocache = true,
            "down-pre" => self.down_pre = true,
            "inactive" => {
                let secs = ctx.num(d, 0)?;
                let bytes = if d.arg(1).is_some() {
                    ctx.num(d, 1)?
                } else {
                    0
                };
                self.inactive = Some((secs, bytes));
            }
            "dhcp-option" => {
                // On Linux OpenVPN hands these to the up script like pushed ones; tunscope's
                // DNS backends apply them the same way.
                let l = format!("dhcp-option {}", d.args.join(" "));
                let mut p = crate::options::push::PushedOptions::default();
                p.apply(&l, &[])
                    .map_err(|e| ctx.error(line, e.to_string()))?;
                self.dhcp_options.push(l);
            }
            "pull-filter" => {
                let action = match ctx.arg(d, 0)? {
                    "accept" => PullAction::Accept,
                    "ignore" => PullAction::Ignore,
                    "reject" => PullAction::Reject,
                    o => {
                        return Err(ctx.error(
                            line,
                            format!("option 'pull-filter': unknown action '{o}' (accept, ignore or reject)"),
                        ));
                    }
                };
                let text = ctx.arg(d, 1)?.to_owned();
                self.pull_filters.push(PullFilter { action, text });
            }
            "http-proxy" | "socks-proxy" => {
                let kind = if d.name == "http-proxy" {
                    ProxyKind::Http
                } else {
                    ProxyKind::Socks5
                };
                let host = ctx.arg(d, 0)?.to_owned();
                let port = match (d.arg(1), kind) {
                    (Some(_), _) => ctx.num(d, 1)?,
                    (None, ProxyKind::Socks5) => 1080,
                    (None, ProxyKind::Http) => 8080,
                };
                let auth = match (d.inline.is_some(), d.arg(2)) {
                    (true, _) => ProxyAuth::From(ctx.source(d)?),
                    (false, None | Some("auto" | "auto-nct")) => ProxyAuth::None,
                    (false, Some("stdin")) => ProxyAuth::Prompt,
                    (false, Some(f)) => ProxyAuth::From(Source::File(ctx.path(f))),
                };
                match d.arg(3) {
                    None | Some("basic") | Some("none") => {}
                    Some(m) => {
                        return Err(ctx.error(
                            line,
                            format!("option '{}': authentication method '{m}' is not supported (basic or none)", d.name),
                        ));
                    }
                }
                let auth = if d.arg(3) == Some("none") {
                    ProxyAuth::None
                } else {
                    auth
                };
                self.proxy = Some((
                    line,
                    ProxySettings {
                        kind,
                        host,
                        port,
                        auth,
                        http_version: "1.0".into(),
                        user_agent: None,
                        headers: vec![],
                    },
                ));
            }
            "http-proxy-user-pass" => {
                if let Some((_, p)) = &mut self.proxy {
                    p.auth = ProxyAuth::From(ctx.source(d)?);
                }
            }
            "http-proxy-option" => self.proxy_options.push((line, d.args.clone())),
            "management" => {
                let a = ctx.arg(d, 0)?;
                self.management = Some(match d.arg(1) {
                    Some("unix") => ManagementAddr::Unix(ctx.path(a)),
                    Some(_) => ManagementAddr::Tcp(a.to_owned(), ctx.num(d, 1)?),
                    None => {
                        return Err(ctx.error(
                            line,
                            "option 'management': give 'IP PORT' or 'PATH unix'",
                        ));
                    }
                });
                self.management_pw = match (d.arg(1), d.arg(2)) {
                    // `PATH unix PW-FILE` and `IP PORT PW-FILE`.
                    (Some(_), Some("stdin")) => Some(PathBuf::from("stdin")),
                    (Some(_), Some(f)) => Some(ctx.path(f)),
                    _ => None,
                };
            }
            "management-query-passwords" => self.management_query_passwords = true,
            "management-hold" => self.management_hold = true,
            "management-client-user"
            | "management-client-group"
            | "management-log-cache"
            | "management-up-down"
            | "management-forget-disconnect"
            | "management-signal"
            | "management-client" => ctx.warn(
                line,
                format!("option '{}' ignored: the management socket's file permissions decide who connects", d.name),
            ),
            "auth-retry" => {
                self.auth_retry = match ctx.arg(d, 0)? {
                    "none" => AuthRetry::None,
                    "nointeract" => AuthRetry::NoInteract,
                    "interact" => AuthRetry::Interact,
                    o => {
                        return Err(ctx.error(
                            line,
                            format!("option 'auth-retry': unknown value '{o}' (none, nointeract or interact)"),
                        ));
                    }
                }
            }
            "ifconfig-noexec" => self.ifconfig_noexec = true,
            "up-restart" => ctx.warn(line, "option 'up-restart': the up script runs at every (re)connection"),
            "remote" => {
                let host = ctx.arg(d, 0)?.to_owned();
                let port = if d.arg(1).is_some() {
                    Some(ctx.num(d, 1)?)
                } else {
                    None
                };
                let proto = match d.arg(2) {
                    Some(p) => Some(Transport::parse(p).ok_or_else(|| {
                        ctx.error(line, format!("option 'remote': unknown protocol '{p}'"))
                    })?),
                    None => None,
                };
                self.remotes.push((host, port, proto));
            }
            "proto" => {
                let p = ctx.arg(d, 0)?;
                self.proto = Some(Transport::parse(p).ok_or_else(|| {
                    ctx.error(
                        line,
                        format!("option 'proto': '{p}' is not supported by a client (use udp or tcp-client)"),
                    )
                })?);
            }
            "port" | "rport" => self.port = Some(ctx.num(d, 0)?),
            "lport" => self.lport = Some(ctx.num(d, 0)?),
            "nobind" => self.lport = None,
            "tls-auth" => {
                let dir = match (d.inline.is_some(), d.arg(1)) {
                    (false, Some(x)) => Some(parse_direction(ctx, line, x)?),
                    _ => None,
                };
                self.tls_auth = Some((ctx.source(d)?, dir));
            }
            "key-direction" => {
                self.key_direction = Some(parse_direction(ctx, line, ctx.arg(d, 0)?)?)
            }
            "cipher" => {
                // 2.6: `cipher` plays no part in negotiation (data-ciphers does) and is no
                // fallback (data-ciphers-fallback is).
                let c = ctx.arg(d, 0)?;
                ctx.warn(
                    line,
                    format!("cipher '{c}' is ignored for cipher negotiation, as in OpenVPN 2.6 (use data-ciphers, or data-ciphers-fallback for servers without negotiation)"),
                );
            }
            "data-ciphers" | "ncp-ciphers" => {
                let list = ctx.arg(d, 0)?;
                let mut v = vec![];
                for name in list.split(':') {
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
            "data-ciphers-fallback" => {
                let c = ctx.arg(d, 0)?;
                self.fallback = Some(Cipher::from_name(c).ok_or_else(|| {
                    ctx.error(line, format!("option 'data-ciphers-fallback': cipher '{c}' is not supported (AES-128/192/256-CBC, AES-128/256-GCM, CHACHA20-POLY1305)"))
                })?);
            }
            "auth-user-pass" => {
                self.auth_user_pass = Some(if d.inline.is_some() || d.arg(0).is_some() {
                    UserPass::From(ctx.source(d)?)
                } else {
                    UserPass::Prompt
                });
            }
            "remote-cert-tls" => {
                self.remote_cert_tls = Some(match ctx.arg(d, 0)? {
                    "server" => CertType::Server,
                    "client" => CertType::Client,
                    o => {
                        return Err(ctx.error(
                            line,
                            format!("option 'remote-cert-tls': unknown type '{o}'"),
                        ));
                    }
                });
            }
            "ping-exit" => self.ping_exit = Some(ctx.num(d, 0)?),
            "explicit-exit-notify" => {
                self.explicit_exit_notify = Some(if d.arg(0).is_some() {
                    ctx.num(d, 0)?
                } else {
                    1
                })
            }
            "connect-retry" => self.connect_retry = Some(ctx.num(d, 0)?),
            "connect-retry-max" => self.connect_retry_max = Some(ctx.num(d, 0)?),
            "replay-window" => {
                let n: u32 = ctx.num(d, 0)?;
                if n > 65536 {
                    return Err(ctx.error(line, "option 'replay-window': at most 65536"));
                }
                self.replay_window = Some(n);
            }
            "route-nopull" => self.route_nopull = true,
            "route-noexec" => self.route_noexec = true,
            "block-ipv6" => self.block_ipv6 = true,
            "up" | "down" => {
                let cmd = crate::options::lexer::split_line(ctx.arg(d, 0)?)
                    .map_err(|e| ctx.error(line, format!("option '{}': {e}", d.name)))?;
                let Some(first) = cmd.first() else {
                    return Err(ctx.error(line, format!("option '{}': empty command", d.name)));
                };
                let mut cmd = cmd.clone();
                cmd[0] = ctx.path(first).display().to_string();
                if d.name == "up" {
                    self.up = Some((line, cmd));
                } else {
                    self.down = Some((line, cmd));
                }
            }
            "route" | "route-ipv6" => {
                // Validated with the push parser, applied with the pushed routes.
                let l = format!("{} {}", d.name, d.args.join(" "));
                let mut p = crate::options::push::PushedOptions::default();
                p.apply(&l, &[])
                    .map_err(|e| ctx.error(line, e.to_string()))?;
                self.routes.push(l);
            }
            "redirect-gateway" => {
                let l = format!("redirect-gateway {}", d.args.join(" "));
                let mut p = crate::options::push::PushedOptions::default();
                p.apply(&l, &[])
                    .map_err(|e| ctx.error(line, e.to_string()))?;
                self.redirect_gateway = Some(d.args.join(" "));
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

    /// A `<connection>` block: one remote with its own transport settings, tried in order
    /// with the other blocks and `remote` lines.
    fn connection(&mut self, ctx: &mut Ctx<'_>, d: &Directive) -> Result<(), ConfigError> {
        let text = d.inline.as_deref().unwrap_or_default();
        let inner =
            parse_directives(text).map_err(|e| ctx.error(d.line + e.line, e.error.to_string()))?;
        let mut host = None;
        let mut port = None;
        let mut proto = None;
        for c in inner {
            let line = d.line + c.line;
            let c = Directive { line, ..c };
            match c.name.as_str() {
                "remote" => {
                    host = Some(ctx.arg(&c, 0)?.to_owned());
                    if c.arg(1).is_some() {
                        port = Some(ctx.num(&c, 1)?);
                    }
                    if let Some(p) = c.arg(2) {
                        proto = Some(Transport::parse(p).ok_or_else(|| {
                            ctx.error(line, format!("option 'remote': unknown protocol '{p}'"))
                        })?);
                    }
                }
                "proto" => {
                    let p = ctx.arg(&c, 0)?;
                    proto = Some(Transport::parse(p).ok_or_else(|| {
                        ctx.error(line, format!("option 'proto': '{p}' is not supported by a client (use udp or tcp-client)"))
                    })?);
                }
                "port" | "rport" => port = Some(ctx.num(&c, 0)?),
                // Options OpenVPN allows per connection; tunscope applies them to the whole run.
                "lport"
                | "nobind"
                | "local"
                | "bind"
                | "connect-retry"
                | "connect-retry-max"
                | "connect-timeout"
                | "server-poll-timeout"
                | "explicit-exit-notify"
                | "float"
                | "tun-mtu"
                | "tun-mtu-extra"
                | "link-mtu"
                | "fragment"
                | "mssfix" => {
                    if c.name == "bind" || c.name == "float" || c.name == "tun-mtu-extra" {
                        continue;
                    }
                    self.apply(ctx, &c)?;
                    if !matches!(c.name.as_str(), "lport" | "nobind") {
                        ctx.warn(
                            line,
                            format!(
                                "<connection>: '{}' applies to every connection in tunscope",
                                c.name
                            ),
                        );
                    }
                }
                "http-proxy" | "socks-proxy" | "http-proxy-option" => {
                    return Err(ctx.error(
                        line,
                        format!("option '{}' is not supported yet (proxies)", c.name),
                    ));
                }
                o => {
                    return Err(ctx.error(
                        line,
                        format!("option '{o}' is not allowed inside <connection> (OpenVPN allows only transport options there)"),
                    ));
                }
            }
        }
        let host = host.ok_or_else(|| ctx.error(d.line, "<connection> without 'remote'"))?;
        self.remotes.push((host, port, proto));
        Ok(())
    }

    fn finish(mut self, mut ctx: Ctx<'_>) -> Result<ClientConfig, ConfigError> {
        let mssfix = self.common.effective_mssfix();
        let pull_client = self.tls_client && self.pull;
        for (line, name) in std::mem::take(&mut self.fixed_ifconfig) {
            if self.client_mode || pull_client {
                ctx.warn(line, format!("option '{name}' ignored: a pulling client gets its addresses from the server's push"));
            } else {
                return Err(ctx.error(
                    line,
                    format!("option '{name}': point-to-point mode (fixed ifconfig without client/server) is left out by design: use 'client' with a 'server' that pushes addresses"),
                ));
            }
        }
        if !(self.client_mode || pull_client) {
            return Err(ctx.error(
                0,
                if self.tls_client {
                    "'tls-client' without 'pull' is point-to-point TLS mode, left out by design: add 'client' (or 'pull') and let a server push the addresses"
                } else {
                    "missing 'client': only client mode (client, or pull + tls-client) is supported"
                },
            ));
        }
        if self.remotes.is_empty() {
            // OpenVPN accepts this (front-ends add `--remote` on the command line); the
            // client refuses to start without one.
            ctx.warn(
                0,
                "no 'remote' given: add one, or pass --remote HOST on the command line",
            );
        }
        let ca = match self.common.ca.clone() {
            Some(ca) => Some(ca),
            // The PKCS#12 file's CA certificates, or fingerprints, verify the server.
            None if !self.common.tls.peer_fingerprints.is_empty()
                || self.common.pkcs12.is_some() =>
            {
                None
            }
            None => {
                return Err(ctx.error(
                    0,
                    "missing 'ca' (or 'peer-fingerprint'): the server certificate cannot be verified",
                ));
            }
        };
        if self.common.dev.is_none() {
            ctx.warn(
                0,
                "no 'dev' given: using 'dev tun' (OpenVPN requires the option)",
            );
        }
        if self.common.cert.is_some() != self.common.key.is_some() {
            return Err(ctx.error(0, "'cert' and 'key' must be given together"));
        }
        if self.common.pkcs12.is_some() && self.common.cert.is_some() {
            return Err(ctx.error(
                0,
                "'pkcs12' already holds the certificate and key: drop 'cert'/'key' or 'pkcs12'",
            ));
        }
        if self.common.cert.is_none()
            && self.common.pkcs12.is_none()
            && self.auth_user_pass.is_none()
        {
            return Err(ctx.error(
                0,
                "missing 'cert'/'key' (or 'auth-user-pass' for password-only authentication)",
            ));
        }
        let auth_user_pass = self.auth_user_pass.take();
        let proxy = match self.proxy.take() {
            Some((line, mut p)) => {
                for (l, args) in &self.proxy_options {
                    match (args.first().map(String::as_str), args.get(1)) {
                        (Some("VERSION"), Some(v)) => p.http_version = v.clone(),
                        (Some("AGENT"), Some(_)) => p.user_agent = Some(args[1..].join(" ")),
                        (Some("CUSTOM-HEADER"), Some(h)) => p
                            .headers
                            .push((h.clone(), args.get(2..).unwrap_or_default().join(" "))),
                        (Some("EXT1" | "EXT2"), _) => {}
                        _ => {
                            return Err(ctx.error(*l, "option 'http-proxy-option': expected VERSION, AGENT or CUSTOM-HEADER"));
                        }
                    }
                }
                let udp = self.remotes.iter().any(|(_, _, t)| {
                    t.unwrap_or(self.proto.unwrap_or(Transport::Udp)) == Transport::Udp
                });
                if udp {
                    let what = match p.kind {
                        ProxyKind::Http => {
                            "http-proxy works over TCP only: use 'proto tcp-client' (as OpenVPN requires)"
                        }
                        ProxyKind::Socks5 => {
                            "socks-proxy over UDP is not supported yet: use 'proto tcp-client'"
                        }
                    };
                    return Err(ctx.error(line, what));
                }
                Some(p)
            }
            None => None,
        };
        let compression = self.compress.finish(&mut ctx)?;
        let v2 = self.common.tls_crypt_v2.take();
        if v2.is_some() && (self.tls_auth.is_some() || self.common.tls_crypt.is_some()) {
            return Err(ctx.error(
                0,
                "'tls-crypt-v2' cannot be combined with 'tls-auth' or 'tls-crypt'",
            ));
        }
        let dev_type = self.common.resolved_dev_type();
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
            (None, Some(src)) => WrapSource::Crypt(src),
            (None, None) => WrapSource::None,
        };
        let data_ciphers = self.data_ciphers.unwrap_or_else(|| Cipher::ALL.to_vec());
        let default_port = self.port.unwrap_or(1194);
        let default_proto = self.proto.unwrap_or(Transport::Udp);
        let remotes = self
            .remotes
            .into_iter()
            .map(|(host, port, proto)| Remote {
                host,
                port: port.unwrap_or(default_port),
                transport: proto.unwrap_or(default_proto),
            })
            .collect::<Vec<Remote>>();
        if let Some((line, _)) = self.common.fragment
            && let Some(r) = remotes.iter().find(|r| r.transport != Transport::Udp)
        {
            return Err(ctx.error(
                line,
                format!("option 'fragment' works over UDP only (as in OpenVPN), but remote '{}' uses TCP: drop 'fragment' (TCP needs none) or use proto udp", r.host),
            ));
        }
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
        // As 2.6 warns: with only the CA checked, any client certificate of that CA can
        // pose as the server.
        let checks_server = self.remote_cert_tls.is_some()
            || self.common.verify_x509_name.is_some()
            || self.common.tls.ns_cert_type.is_some()
            || self.common.tls.remote_cert_eku.is_some()
            || !self.common.tls.peer_fingerprints.is_empty();
        if !checks_server {
            ctx.warn(
                0,
                "no server certificate verification beyond the CA (add 'remote-cert-tls server' and/or 'verify-x509-name'): any certificate of this CA, a client's too, is accepted as the server",
            );
        }
        let tun_mtu = match (self.common.tun_mtu, self.common.link_mtu) {
            (Some(m), _) => m,
            // link-mtu bounds the encapsulated packet: subtract 2.6's AEAD overhead (opcode
            // and peer-id 4, packet-id 4, tag 16) and the compression framing byte.
            (None, Some(l)) => l
                .saturating_sub(24 + compression.framing.overhead() as u16)
                .max(576),
            (None, None) => 1500,
        };
        for (line, _) in self.up.iter().chain(self.down.iter()) {
            if self.common.script_security < 2 {
                return Err(ctx.error(*line, "up/down scripts need 'script-security 2'"));
            }
        }
        let secs = Duration::from_secs;
        Ok(ClientConfig {
            remotes,
            lport: self.lport,
            dev_type,
            dev: self.common.dev.unwrap_or_else(|| "tun".into()),
            ca,
            cert: self.common.cert,
            key: self.common.key,
            pkcs12: self.common.pkcs12,
            askpass: self.common.askpass,
            wrap,
            auth_digest: self.common.auth_digest.unwrap_or(Digest::Sha1),
            auth_user_pass,
            remote_cert_tls: self.remote_cert_tls,
            verify_x509_name: self.common.verify_x509_name,
            data_ciphers,
            data_ciphers_fallback: self.fallback,
            tls_version_min,
            tls_version_max,
            reneg_sec: secs(self.common.reneg_sec.unwrap_or(3600)),
            reneg_pkts: self.common.reneg_pkts,
            reneg_bytes: self.common.reneg_bytes,
            hand_window: self.common.hand_window.map_or(HAND_WINDOW_DEFAULT, secs),
            tls_timeout: self.common.tls_timeout.map_or(TLS_TIMEOUT_DEFAULT, secs),
            tran_window: secs(self.common.tran_window.unwrap_or(3600)),
            ping: self.common.ping.map(secs),
            ping_restart: self.common.ping_restart.map(secs),
            ping_exit: self.ping_exit.map(secs),
            // Unlike OpenVPN (default 0) we notify once by default: a server should free the
            // client's state at once when it leaves. `explicit-exit-notify 0` turns it off.
            explicit_exit_notify: self.explicit_exit_notify.unwrap_or(1),
            tun_mtu,
            mssfix,
            fragment: self.common.fragment.map(|(_, f)| f),
            framing: compression.framing,
            connect_retry: secs(self.connect_retry.unwrap_or(1).max(1)),
            connect_retry_max: self.connect_retry_max,
            replay_window: self.replay_window,
            verb: self.common.verb.unwrap_or(1),
            route_nopull: self.route_nopull,
            route_noexec: self.route_noexec,
            block_ipv6: self.block_ipv6,
            up: self.up.map(|(_, c)| c),
            down: self.down.map(|(_, c)| c),
            script_security: self.common.script_security,
            user: self.common.user.clone(),
            group: self.common.group.clone(),
            routes: self.routes,
            redirect_gateway: self.redirect_gateway,
            auth_nocache: self.auth_nocache,
            proxy,
            management: self.management.map(|addr| ManagementSettings {
                addr,
                query_passwords: self.management_query_passwords,
                hold: self.management_hold,
                password_file: self.management_pw,
            }),
            auth_retry: self.auth_retry,
            ifconfig_noexec: self.ifconfig_noexec,
            remote_random: self.remote_random,
            server_poll_timeout: secs(self.server_poll_timeout.unwrap_or(120).max(1)),
            persist_remote_ip: self.persist_remote_ip,
            local: self.local,
            push_peer_info: self.push_peer_info,
            inactive: self.inactive.map(|(s, b)| (secs(s), b)),
            dhcp_options: self.dhcp_options,
            pull_filters: self.pull_filters,
            down_pre: self.down_pre,
            topology: self.topology,
            setenv: self.common.setenv,
            tls: self.common.tls,
            compression,
            warnings: ctx.warnings,
        })
    }
}

fn parse_direction(ctx: &Ctx<'_>, line: usize, s: &str) -> Result<KeyDirection, ConfigError> {
    match s {
        "0" => Ok(KeyDirection::Normal),
        "1" => Ok(KeyDirection::Inverse),
        "bidirectional" => Ok(KeyDirection::Bidirectional),
        _ => Err(ctx.error(line, format!("key direction must be 0 or 1, not '{s}'"))),
    }
}

/// Reads an `auth-user-pass` file: username on the first line, password on the second.
pub fn parse_credentials(text: &str) -> Result<(String, String), String> {
    let mut lines = text.lines();
    let user = lines.next().map(str::trim_end).unwrap_or_default();
    let pass = lines.next().map(str::trim_end).unwrap_or_default();
    if user.is_empty() {
        return Err("auth-user-pass: the first line (username) is empty".into());
    }
    if pass.is_empty() {
        return Err("auth-user-pass: the second line (password) is missing".into());
    }
    if user.len() >= crate::consts::USER_PASS_LEN || pass.len() >= crate::consts::USER_PASS_LEN {
        return Err("auth-user-pass: username and password must be shorter than 128 bytes".into());
    }
    Ok((user.to_owned(), pass.to_owned()))
}

/// Resolves a [`Source`] path for reading; returns the path for files.
pub fn source_path(s: &Source) -> Option<&PathBuf> {
    match s {
        Source::File(p) => Some(p),
        Source::Inline(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientConfig, ConfigError> {
        ClientConfig::parse(text, Path::new("/etc/tunscope/client.conf"))
    }

    const BASE: &str =
        "client\ndev tun\nproto udp\nremote 198.18.2.2 1194\nca ca.crt\ncert c.crt\nkey c.key\n";

    /// `fragment N [mtu]` as 2.6 reads it: UDP only (an error at its line naming the TCP
    /// remote otherwise, also inside `<connection>`), mssfix defaults to N (also a bare
    /// `mssfix`), a given mssfix wins, `mtu-dynamic` names its replacement.
    #[test]
    fn fragment_like_2_6() {
        let c = parse(&format!("{BASE}fragment 1300\n")).expect("parses");
        assert_eq!(
            c.fragment,
            Some(FragmentOption {
                max: 1300,
                encap: false
            })
        );
        assert_eq!(
            c.mssfix,
            Some(Mssfix {
                value: 1300,
                mode: MssMode::Payload
            })
        );
        let c = parse(&format!("{BASE}fragment 1400 mtu\nmssfix\n")).expect("parses");
        assert_eq!(c.fragment.map(|f| f.encap), Some(true));
        assert_eq!(
            c.mssfix.map(|m| (m.value, m.mode)),
            Some((1400, MssMode::Mtu))
        );
        let c = parse(&format!("{BASE}fragment 1400\nmssfix 1200\n")).expect("parses");
        assert_eq!(c.mssfix.map(|m| m.value), Some(1200));
        let e = parse(&format!("{BASE}fragment 1300\nremote 198.18.2.3 443 tcp\n"))
            .expect_err("TCP remote");
        assert!(
            e.to_string().contains(":8:") && e.to_string().contains("UDP only"),
            "{e}"
        );
        let e = parse(&format!("{BASE}fragment 40\n")).expect_err("too small");
        assert!(e.to_string().contains("at least 68"), "{e}");
        let e = parse(&format!("{BASE}fragment 1300 bogus\n")).expect_err("bad parameter");
        assert!(e.to_string().contains("'bogus'"), "{e}");
        let e = parse(&format!("{BASE}mtu-dynamic 1300\n")).expect_err("removed option");
        assert!(e.to_string().contains("fragment"), "{e}");
        let conn = "client\ndev tun\nca ca.crt\ncert c.crt\nkey c.key\n\
                    <connection>\nremote 198.18.2.2 1194 udp\nfragment 1200\n</connection>\n";
        assert_eq!(
            parse(conn).expect("parses").fragment.map(|f| f.max),
            Some(1200)
        );
    }

    /// 2.6's mssfix when the file gives none: the default for a 1500-byte tunnel, the tunnel's
    /// size for another tun-mtu (a 9000-byte tunnel carries 8960-byte segments), off with
    /// link-mtu alone; a given mssfix always wins.
    #[test]
    fn mssfix_follows_tun_mtu_like_2_6() {
        let m = |extra: &str| parse(&format!("{BASE}{extra}")).expect("parses").mssfix;
        assert_eq!(m(""), None);
        assert_eq!(m("tun-mtu 1500\n"), None);
        assert_eq!(
            m("tun-mtu 9000\n"),
            Some(Mssfix {
                value: 9000,
                mode: MssMode::Fixed
            })
        );
        assert_eq!(
            m("tun-mtu 9000\n").and_then(|f| f.mss_v4(28, 24)),
            Some(8960)
        );
        assert_eq!(m("link-mtu 1400\n").and_then(|f| f.mss_v4(28, 24)), None);
        assert_eq!(
            m("tun-mtu 9000\nmssfix 1400\n").map(|f| f.value),
            Some(1400)
        );
    }

    #[test]
    fn typical_client_config() {
        let c = parse(&format!(
            "{BASE}remote-cert-tls server\ntls-crypt ta.key\ndata-ciphers AES-128-GCM:CHACHA20-POLY1305\nresolv-retry infinite\nnobind\npersist-key\nverb 3\n<auth-user-pass>\nalice\npw\n</auth-user-pass>\n"
        ))
        .expect("parses");
        assert_eq!(
            c.remotes,
            vec![Remote {
                host: "198.18.2.2".into(),
                port: 1194,
                transport: Transport::Udp
            }]
        );
        assert_eq!(c.ca, Some(Source::File("/etc/tunscope/ca.crt".into())));
        assert_eq!(
            c.wrap,
            WrapSource::Crypt(Source::File("/etc/tunscope/ta.key".into()))
        );
        assert_eq!(
            c.data_ciphers,
            vec![Cipher::Aes128Gcm, Cipher::Chacha20Poly1305]
        );
        assert_eq!(c.remote_cert_tls, Some(CertType::Server));
        assert_eq!(
            c.auth_user_pass,
            Some(UserPass::From(Source::Inline("alice\npw\n".into())))
        );
        assert_eq!(c.verb, 3);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].line, 11);
    }

    #[test]
    fn unsupported_option_names_file_line_and_option() {
        let e = parse(&format!("{BASE}\n\nfrobnicate 1300\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/tunscope/client.conf:10: unsupported option 'frobnicate'"
        );
        let c = parse(&format!(
            "ignore-unknown-option frobnicate\n{BASE}frobnicate 1300\n"
        ))
        .expect("ignored");
        // (BASE checks the server by its CA only: that warning comes on top.)
        let others = |c: &ClientConfig| {
            c.warnings
                .iter()
                .filter(|w| !w.message.contains("server certificate verification"))
                .count()
        };
        assert_eq!(others(&c), 1);
        // `setenv opt` marks options OpenVPN may not know: ignored with a warning.
        let c = parse(&format!(
            "{BASE}setenv opt block-outside-dns\nsetenv opt frobnicate 1\n"
        ))
        .expect("ignored");
        assert_eq!(others(&c), 2, "{:?}", c.warnings);
        // The tail of a hard-wrapped line is named as such.
        let e = parse(&format!(
            "{BASE}tls-cipher TLS-ECDHE-ECDSA-WITH-C\nHACHA20-POLY1305-SHA256:TLS-X\n"
        ))
        .unwrap_err();
        assert_eq!(e.line, 9);
        assert!(e.message.contains("wrapped"), "{e}");
    }

    #[test]
    fn bad_values_are_located() {
        let e = parse(&format!("{BASE}tun-mtu lots\n")).unwrap_err();
        assert_eq!(e.line, 8);
        assert!(e.message.contains("'lots' is not a valid number"), "{e}");
        let e = parse(&format!("{BASE}compress zstd\n")).unwrap_err();
        assert!(e.message.contains("unknown algorithm 'zstd'"), "{e}");
        let e = parse(&format!("{BASE}allow-compression no\ncomp-lzo\n")).unwrap_err();
        assert!(e.message.contains("allow-compression no"), "{e}");
        let c = parse(&format!("{BASE}dev tap0\n")).unwrap();
        assert_eq!(c.dev_type, crate::options::common::DevType::Tap);
        let c = parse(&format!("{BASE}dev vpn0\ndev-type tap\n")).unwrap();
        assert_eq!(
            (c.dev.as_str(), c.dev_type),
            ("vpn0", crate::options::common::DevType::Tap)
        );
        let e = parse(&format!("{BASE}dev-type ppp\n")).unwrap_err();
        assert!(e.message.contains("neither tun nor tap"), "{e}");
        let e = parse(&format!("{BASE}<key>\nabc\n")).unwrap_err();
        assert_eq!(e.line, 8);
        let e = parse(&format!("{BASE}remote x 1194 sctp\n")).unwrap_err();
        assert!(e.message.contains("sctp"));
        let e = parse(&format!("{BASE}tls-auth ta.key 2\n")).unwrap_err();
        assert!(e.message.contains("key direction"));
        let c = parse(&format!("{BASE}auth-user-pass\n")).unwrap();
        assert_eq!(c.auth_user_pass, Some(UserPass::Prompt));
        let e = parse(&format!("{BASE}data-ciphers BF-CBC\n")).unwrap_err();
        assert!(e.message.contains("none of the ciphers"), "{e}");
    }

    #[test]
    fn missing_required_options() {
        assert!(
            parse("dev tun\nremote x\nca ca\ncert c\nkey k\n")
                .unwrap_err()
                .message
                .contains("client")
        );
        // No remote: accepted (front-ends pass --remote), with a warning.
        let c = parse("client\nca ca\ncert c\nkey k\n").unwrap();
        assert!(c.remotes.is_empty());
        assert!(c.warnings.iter().any(|w| w.message.contains("'remote'")));
        assert!(
            parse("client\nremote x\ncert c\nkey k\n")
                .unwrap_err()
                .message
                .contains("'ca'")
        );
        assert_eq!(
            parse("client\nremote x\nca ca\ncert c\n").unwrap_err().line,
            0
        );
    }

    #[test]
    fn tcp_remote_defaults_and_tls_auth_direction() {
        let c = parse(
            "client\nproto tcp-client\nport 443\nremote a\nremote b 1195 udp\nca ca\ncert c\nkey k\nkey-direction 1\ntls-auth ta.key\nauth SHA256\nkeepalive 10 60\n",
        )
        .expect("parses");
        assert_eq!(c.remotes[0].port, 443);
        assert_eq!(c.remotes[0].transport, Transport::Tcp);
        assert_eq!(c.remotes[1].transport, Transport::Udp);
        assert!(matches!(
            c.wrap,
            WrapSource::Auth {
                direction: KeyDirection::Inverse,
                ..
            }
        ));
        assert_eq!(c.auth_digest, Digest::Sha256);
        assert_eq!(c.ping, Some(Duration::from_secs(10)));
    }

    /// OpenVPN options on the command line, alone or on top of a file: `--name args…`, later
    /// values win, remotes add up, errors name the argument's position.
    #[test]
    fn options_from_the_command_line() {
        use crate::options::ConfigSource;
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cwd = Path::new("/home/u");
        let file = ConfigSource::from_text(BASE, Path::new("/etc/tunscope/client.conf")).unwrap();
        let cli = ConfigSource::from_args(
            &args(&[
                "--verb",
                "5",
                "--remote",
                "198.18.9.9",
                "443",
                "tcp",
                "--auth-user-pass",
                "creds.txt",
            ]),
            cwd,
        )
        .unwrap();
        let c = ClientConfig::from_sources(&[file, cli]).unwrap();
        assert_eq!(c.verb, 5);
        assert_eq!(c.remotes.len(), 2);
        assert_eq!(c.remotes[1].transport, Transport::Tcp);
        // Relative paths on the command line resolve against the working directory.
        assert_eq!(
            c.auth_user_pass,
            Some(UserPass::From(Source::File("/home/u/creds.txt".into())))
        );
        // Options alone.
        let only = ConfigSource::from_args(
            &args(&[
                "--client", "--remote", "x", "--ca", "/ca", "--cert", "/c", "--key", "/k",
            ]),
            cwd,
        )
        .unwrap();
        assert!(ClientConfig::from_sources(&[only]).is_ok());
        // A word before any option; an unknown option names its position.
        let e = ConfigSource::from_args(&args(&["client"]), cwd).unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line:1: 'client' is not an option (options start with --)"
        );
        let bad = ConfigSource::from_args(&args(&["--client", "--frobnicate", "1"]), cwd).unwrap();
        let e = ClientConfig::from_sources(&[bad]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line:2: unsupported option 'frobnicate'"
        );
    }

    #[test]
    fn credentials_file() {
        assert_eq!(parse_credentials("u\np\n"), Ok(("u".into(), "p".into())));
        assert!(parse_credentials("u\n").is_err());
        assert!(parse_credentials("").is_err());
    }
}

#[cfg(test)]
mod mss_tests {
    use super::*;

    #[test]
    fn openvpn_default_mss_values() {
        // AES-GCM + P_DATA_V2 = 24 bytes; UDP/IPv4 outer = 28 → 1400 (see notes §9.3).
        assert_eq!(Mssfix::DEFAULT.mss_v4(28, 24), Some(1400));
        // TCP/IPv4 outer: 40 bytes of headers plus 2 of framing in the overhead → 1386.
        assert_eq!(Mssfix::DEFAULT.mss_v4(40, 26), Some(1386));
        assert_eq!(
            Mssfix {
                value: 0,
                mode: MssMode::Mtu
            }
            .mss_v4(28, 24),
            None
        );
        assert_eq!(
            Mssfix {
                value: 1400,
                mode: MssMode::Fixed
            }
            .mss_v4(28, 24),
            Some(1360)
        );
    }
}
