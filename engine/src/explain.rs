//! `tunscope check-config FILE --explain|--json`: how a config is read — the effective options
//! after defaults and what the engine will do with them (remotes in order, ciphers offered,
//! compression, certificate checks, how routes and DNS are applied), so an engineer can see
//! their file through tunscope's eyes.
//!
//! The explanation is a list of sections of (key, value) lines; text and JSON are two
//! renderings of the same list.

use tunscope_proto::options::client::{
    CertType, ClientConfig, PullAction, Transport, UserPass, VerifyX509Name, WrapSource,
};
use tunscope_proto::options::common::TlsOptions;
use tunscope_proto::options::server::{ScriptMethod, ServerConfig, ServerTransport};
use tunscope_proto::options::{ConfigWarning, Source};

/// One section of an explanation.
pub struct Section {
    /// Heading.
    pub title: &'static str,
    /// Lines.
    pub lines: Vec<(String, String)>,
}

/// A whole explanation.
pub struct Explanation {
    /// `client` or `server`.
    pub role: &'static str,
    /// Sections in reading order.
    pub sections: Vec<Section>,
    /// Warnings the parser gave (line, message).
    pub warnings: Vec<ConfigWarning>,
}

struct Builder {
    sections: Vec<Section>,
}

impl Builder {
    fn section(&mut self, title: &'static str) -> &mut Self {
        self.sections.push(Section {
            title,
            lines: vec![],
        });
        self
    }

    fn line(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        if let Some(s) = self.sections.last_mut() {
            s.lines.push((key.to_owned(), value.into()));
        }
        self
    }
}

fn source(s: &Source) -> String {
    match s {
        Source::Inline(_) => "inline block".to_owned(),
        Source::File(p) => p.display().to_string(),
    }
}

fn secs(d: std::time::Duration) -> String {
    format!("{} s", d.as_secs())
}

fn version(v: tunscope_proto::options::client::TlsVersion) -> &'static str {
    match v {
        tunscope_proto::options::client::TlsVersion::Tls12 => "1.2",
        tunscope_proto::options::client::TlsVersion::Tls13 => "1.3",
    }
}

fn cert_type(t: CertType) -> &'static str {
    match t {
        CertType::Server => "server",
        CertType::Client => "client",
    }
}

fn wrap(w: &WrapSource, digest: &str) -> String {
    match w {
        WrapSource::None => "none (control packets are not authenticated before TLS)".into(),
        WrapSource::Auth { key, direction } => {
            format!(
                "tls-auth, HMAC-{digest}, key {}, direction {direction:?}",
                source(key)
            )
        }
        WrapSource::Crypt(k) => format!("tls-crypt (AES-256-CTR + HMAC-SHA256), key {}", source(k)),
        WrapSource::CryptV2(k) => format!(
            "tls-crypt-v2 (per-client tls-crypt key, wrapped for the server), key {}",
            source(k)
        ),
    }
}

/// The certificate checks and TLS limits both roles share.
/// The "TLS" section both roles have.
#[allow(clippy::too_many_arguments)]
fn tls_lines(
    b: &mut Builder,
    remote_cert_tls: Option<CertType>,
    verify: Option<&VerifyX509Name>,
    t: &TlsOptions,
    min: tunscope_proto::options::client::TlsVersion,
    max: tunscope_proto::options::client::TlsVersion,
    wrap_source: &WrapSource,
    digest: tunscope_proto::wrap::Digest,
) {
    b.section("TLS");
    b.line(
        "versions",
        format!("TLS {} to {}", version(min), version(max)),
    );
    b.line("control channel wrap", wrap(wrap_source, digest.name()));
    let suites = |l: &Option<Vec<rustls::CipherSuite>>| match l {
        None => "rustls defaults".to_owned(),
        Some(v) if v.is_empty() => "none (this TLS version is off)".to_owned(),
        Some(v) => v
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    b.line("TLS 1.2 suites", suites(&t.tls12_suites));
    b.line("TLS 1.3 suites", suites(&t.tls13_suites));
    if let Some(g) = &t.groups {
        b.line(
            "key exchange groups",
            g.iter()
                .map(|g| format!("{g:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let mut checks = vec![];
    if let Some(r) = remote_cert_tls {
        checks.push(format!(
            "remote-cert-tls {} (keyUsage present, extendedKeyUsage {}Auth)",
            cert_type(r),
            cert_type(r)
        ));
    }
    if let Some(v) = verify {
        checks.push(format!("verify-x509-name {} ({:?})", v.name, v.kind));
    }
    if let Some(t) = t.ns_cert_type {
        checks.push(format!(
            "ns-cert-type {} (Netscape cert type)",
            cert_type(t)
        ));
    }
    if !t.remote_cert_ku.is_empty() {
        checks.push(format!(
            "remote-cert-ku {}",
            t.remote_cert_ku
                .iter()
                .map(|k| format!("{k:#x}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if let Some(o) = &t.remote_cert_eku {
        checks.push(format!("remote-cert-eku {o}"));
    }
    if let Some(c) = &t.crl_verify {
        checks.push(format!("crl-verify {} (revoked peers refused)", source(c)));
    }
    if !t.peer_fingerprints.is_empty() {
        checks.push(format!(
            "peer-fingerprint: {} SHA-256 fingerprint(s)",
            t.peer_fingerprints.len()
        ));
    }
    b.line(
        "peer certificate checks",
        if checks.is_empty() {
            "chain to the CA only (no remote-cert-tls: any certificate of the CA is accepted)"
                .to_owned()
        } else {
            checks.join("; ")
        },
    );
}

/// Explains a client config.
pub fn client(c: &ClientConfig) -> Explanation {
    let mut b = Builder { sections: vec![] };
    b.section("connection");
    if c.remotes.is_empty() {
        b.line("remotes", "none (give --remote on the command line)");
    }
    for (i, r) in c.remotes.iter().enumerate() {
        b.line(
            &format!("remote {}", i + 1),
            format!(
                "{}:{} {}",
                r.host,
                r.port,
                match r.transport {
                    Transport::Udp => "udp",
                    Transport::Tcp => "tcp",
                }
            ),
        );
    }
    b.line(
        "order",
        if c.remote_random {
            "shuffled once per run (remote-random)"
        } else {
            "as listed; on failure the next one"
        },
    );
    b.line("server-poll-timeout", secs(c.server_poll_timeout));
    b.line(
        "connect-retry",
        format!(
            "{} between attempts, doubling after 5 rounds; {}",
            secs(c.connect_retry),
            c.connect_retry_max
                .map_or("retried forever".to_owned(), |m| format!(
                    "at most {m} round(s)"
                ))
        ),
    );
    b.line(
        "host names",
        if c.persist_remote_ip {
            "resolved once, kept across restarts (persist-remote-ip)"
        } else {
            "resolved again at every attempt"
        },
    );
    b.line(
        "local end",
        format!(
            "{} port {}",
            c.local.as_deref().unwrap_or("any address"),
            c.lport
                .map_or("ephemeral (nobind)".to_owned(), |p| p.to_string())
        ),
    );
    b.section("authentication");
    b.line(
        "ca",
        c.ca.as_ref()
            .map_or("none (peer-fingerprint)".into(), source),
    );
    b.line(
        "client certificate",
        match (&c.cert, &c.key) {
            (Some(cert), Some(key)) => format!("{} with key {}", source(cert), source(key)),
            _ => "none".into(),
        },
    );
    b.line(
        "auth-user-pass",
        match &c.auth_user_pass {
            None => "none".to_owned(),
            Some(UserPass::From(s)) => format!("from {}", source(s)),
            Some(UserPass::Prompt) => "asked on the terminal at start".to_owned(),
        } + if c.auth_nocache {
            " (auth-nocache: asked again at every reconnect)"
        } else {
            ""
        },
    );
    tls_lines(
        &mut b,
        c.remote_cert_tls,
        c.verify_x509_name.as_ref(),
        &c.tls,
        c.tls_version_min,
        c.tls_version_max,
        &c.wrap,
        c.auth_digest,
    );
    b.line(
        "renegotiation",
        if c.reneg_sec.is_zero() {
            "not started by the client (reneg-sec 0; the server may)".to_owned()
        } else {
            format!("every {}", secs(c.reneg_sec))
        },
    );
    b.section("data channel");
    b.line(
        "ciphers offered",
        c.data_ciphers
            .iter()
            .map(|x| x.name())
            .collect::<Vec<_>>()
            .join(":"),
    );
    b.line("compression", c.compression.describe());
    b.line("tun device", format!("{} (MTU {})", c.dev, c.tun_mtu));
    b.line("fragment", describe_fragment(c.fragment));
    b.line(
        "mssfix",
        c.mssfix.map_or("OpenVPN default (1492 mtu)".into(), |m| {
            format!("{} {:?}", m.value, m.mode)
        }),
    );
    b.line(
        "keepalive",
        match (c.ping, c.ping_restart) {
            (None, None) => "as the server pushes".to_owned(),
            (p, r) => format!(
                "ping {}, ping-restart {} (a pushed value wins)",
                p.map_or("-".into(), secs),
                r.map_or("-".into(), secs)
            ),
        },
    );
    if let Some((t, bytes)) = c.inactive {
        b.line(
            "inactive",
            format!(
                "exit after {} with at most {bytes} bytes through the tunnel",
                secs(t)
            ),
        );
    }
    b.line(
        "explicit-exit-notify",
        if c.explicit_exit_notify > 0 {
            "the server is told when the client leaves (UDP)"
        } else {
            "off"
        },
    );
    b.section("network");
    b.line(
        "pushed routes",
        if c.route_nopull {
            "ignored (route-nopull)"
        } else if c.route_noexec {
            "left to the up script (route-noexec)"
        } else {
            "added as kernel routes through the tun device"
        },
    );
    for r in &c.routes {
        b.line("route (config)", r.clone());
    }
    if let Some(rg) = &c.redirect_gateway {
        b.line(
            "redirect-gateway",
            format!("{rg}: 0.0.0.0/1 + 128.0.0.0/1 into the tunnel, host route to the server"),
        );
    }
    for d in &c.dhcp_options {
        b.line("dns (config)", d.clone());
    }
    b.line(
        "pushed DNS",
        "applied by --dns-backend: none (default, left alone), resolv-conf, or stub (split DNS)",
    );
    for f in &c.pull_filters {
        b.line(
            "pull-filter",
            format!(
                "{} options starting with '{}'",
                match f.action {
                    PullAction::Accept => "accept",
                    PullAction::Ignore => "ignore",
                    PullAction::Reject => "reject (restart)",
                },
                f.text
            ),
        );
    }
    if let Some(u) = &c.up {
        b.line("up", u.join(" "));
    }
    if let Some(d) = &c.down {
        b.line("down", d.join(" "));
    }
    Explanation {
        role: "client",
        sections: b.sections,
        warnings: c.warnings.clone(),
    }
}

/// Explains a server config.
pub fn server(c: &ServerConfig) -> Explanation {
    let mut b = Builder { sections: vec![] };
    b.section("listening");
    b.line(
        "socket",
        format!(
            "{} {}:{}",
            match c.transport {
                ServerTransport::Udp => "udp",
                ServerTransport::Tcp => "tcp",
            },
            c.local
                .as_deref()
                .unwrap_or(if c.ipv6_listen { "[::]" } else { "0.0.0.0" }),
            c.port
        ),
    );
    b.line("max-clients", c.max_clients.to_string());
    b.section("addresses");
    use tunscope_proto::options::common::DevType;
    use tunscope_proto::options::server::PushedGateway;
    b.line(
        "device",
        match c.dev_type {
            DevType::Tun => format!("{} (tun: routed IP packets)", c.dev),
            DevType::Tap => format!("{} (tap: bridged Ethernet frames)", c.dev),
        },
    );
    match (c.dev_type, c.pushed_gateway) {
        (_, PushedGateway::Dhcp | PushedGateway::None) => b.line(
            "tunnel network",
            "the LAN's (server-bridge without a pool: clients ask the LAN's DHCP server)"
                .to_owned(),
        ),
        (DevType::Tun, _) => b.line(
            "tunnel network",
            format!("{}/{} (topology subnet)", c.network.0, c.network.1),
        ),
        (DevType::Tap, _) => b.line(
            "tunnel network",
            format!(
                "{}/{}, server {} {}",
                c.network.0,
                c.network.1,
                c.server_ip,
                if c.ifconfig_local {
                    "on the tap device"
                } else {
                    "on the LAN's bridge (server-bridge)"
                }
            ),
        ),
    };
    match c.pool {
        Some((a, z)) => b.line("pool", format!("{a} – {z}")),
        None => b.line(
            "pool",
            "none (fixed ifconfig-push addresses only)".to_owned(),
        ),
    };
    match c.pushed_gateway {
        PushedGateway::Address(g) => {
            b.line("route-gateway", g.to_string());
        }
        PushedGateway::Dhcp => {
            b.line("route-gateway", "dhcp".to_owned());
        }
        PushedGateway::None => {}
    }
    if let Some((n, bits)) = c.pool6 {
        b.line("IPv6 pool", format!("{n}/{bits}"));
    }
    for r in &c.routes {
        b.line(
            "route",
            format!("{}/{} into the tun device", r.network, r.prefix),
        );
    }
    b.section("authentication");
    let opt = |s: &Option<Source>| s.as_ref().map_or("MISSING".to_owned(), source);
    b.line("ca", opt(&c.ca));
    b.line(
        "certificate",
        format!("{} with key {}", opt(&c.cert), opt(&c.key)),
    );
    b.line("client certificates", format!("{:?}", c.verify_client_cert));
    b.line(
        "auth-user-pass-verify",
        c.auth_script.as_ref().map_or("none".into(), |a| {
            format!(
                "{} ({})",
                a.command.join(" "),
                match a.method {
                    ScriptMethod::ViaEnv => "via-env",
                    ScriptMethod::ViaFile => "via-file",
                }
            )
        }),
    );
    if let Some(d) = &c.client_config_dir {
        b.line("client-config-dir", d.display().to_string());
    }
    tls_lines(
        &mut b,
        c.remote_cert_tls,
        c.verify_x509_name.as_ref(),
        &c.tls,
        c.tls_version_min,
        c.tls_version_max,
        &c.wrap,
        c.auth_digest,
    );
    b.section("data channel");
    b.line(
        "ciphers accepted",
        c.data_ciphers
            .iter()
            .map(|x| x.name())
            .collect::<Vec<_>>()
            .join(":"),
    );
    b.line("compression", c.compression.describe());
    b.line("tun device", format!("{} (MTU {})", c.dev, c.tun_mtu));
    b.line("fragment", describe_fragment(c.fragment));
    b.section("pushed to clients");
    for p in c.pushes.iter().chain(&c.dns) {
        b.line("push", p.clone());
    }
    Explanation {
        role: "server",
        sections: b.sections,
        warnings: c.warnings.clone(),
    }
}

impl Explanation {
    /// Plain text: a heading per section, aligned lines, then warnings.
    pub fn text(&self, file: &str) -> String {
        let mut s = format!("{file}: {} config\n", self.role);
        for sec in &self.sections {
            s.push_str(&format!("\n{}\n", sec.title));
            let w = sec.lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in &sec.lines {
                s.push_str(&format!("  {k:<w$}  {v}\n"));
            }
        }
        if !self.warnings.is_empty() {
            s.push_str("\nwarnings\n");
            for w in &self.warnings {
                s.push_str(&format!("  {file}:{}: {}\n", w.line, w.message));
            }
        }
        s
    }

    /// JSON: `{"role", "sections": {title: [[key, value], …]}, "warnings": [{line, message}]}`.
    pub fn json(&self, file: &str) -> serde_json::Value {
        let sections: serde_json::Map<String, serde_json::Value> = self
            .sections
            .iter()
            .map(|s| {
                (
                    s.title.to_owned(),
                    serde_json::Value::Array(
                        s.lines
                            .iter()
                            .map(|(k, v)| serde_json::json!([k, v]))
                            .collect(),
                    ),
                )
            })
            .collect();
        serde_json::json!({
            "file": file,
            "role": self.role,
            "accepted": true,
            "sections": sections,
            "warnings": self.warnings.iter().map(|w| serde_json::json!({"line": w.line, "message": w.message})).collect::<Vec<_>>(),
        })
    }
}

/// `fragment` as a line of the explanation.
fn describe_fragment(f: Option<tunscope_proto::fragment::FragmentOption>) -> String {
    match f {
        None => "off".into(),
        Some(f) => format!(
            "packets over {} bytes per UDP datagram{} are cut into fragments (OpenVPN's own fragmentation)",
            f.max,
            if f.encap { " incl. IP/UDP headers" } else { "" }
        ),
    }
}
