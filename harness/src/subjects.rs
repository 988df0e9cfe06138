//! Subjects: the VPN implementations a test or scenario runs, ours or stock OpenVPN 2.6, and
//! the OpenVPN-syntax config files both read.
//!
//! A client config written here is valid for both `tunscope client` and `openvpn`, so the
//! same variant runs any pairing.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::Netns;
use crate::pki::Pki;
use crate::process::Proc;

/// Link transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// Control-channel wrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrap {
    /// None.
    None,
    /// `tls-auth` with key directions 0 (server) / 1 (client).
    TlsAuth,
    /// `tls-crypt`.
    TlsCrypt,
}

/// Username and password accepted by the test's `auth-user-pass-verify` script.
pub const TEST_USER: (&str, &str) = ("alice", "correct horse");

/// One tunnel variant: what both ends are configured with.
#[derive(Clone, Debug)]
pub struct TunnelSpec {
    /// Transport.
    pub proto: Proto,
    /// Server port.
    pub port: u16,
    /// `data-ciphers` of the server (the first one the client also offers wins).
    pub server_ciphers: Vec<String>,
    /// `data-ciphers` of the client (None = default).
    pub client_ciphers: Option<Vec<String>>,
    /// Control-channel wrap.
    pub wrap: Wrap,
    /// Client authenticates with a password as well as its certificate.
    pub auth_user_pass: bool,
    /// `reneg-sec` on the server.
    pub server_reneg_sec: Option<u32>,
    /// `reneg-sec` on the client.
    pub client_reneg_sec: Option<u32>,
    /// Tunnel network (server takes .1).
    pub tunnel_net: Ipv4Addr,
    /// `keepalive` on the server.
    pub keepalive: (u32, u32),
    /// `explicit-exit-notify` on the client (UDP only).
    pub explicit_exit_notify: Option<u32>,
    /// Extra server config lines.
    pub server_extra: Vec<String>,
    /// Extra client config lines.
    pub client_extra: Vec<String>,
    /// `dev tap` on both sides (Ethernet frames; the server's `server` line then gives the
    /// tap device its address and pushes `route-gateway`).
    pub tap: bool,
    /// The server's device by name (an existing persistent one, e.g. a bridge port) instead
    /// of one the kernel names.
    pub server_dev: Option<String>,
    /// `server-bridge ARGS` instead of `server NET MASK` (a bridged tap server; empty ARGS:
    /// addresses from the LAN's DHCP server).
    pub server_bridge: Option<String>,
}

impl Default for TunnelSpec {
    fn default() -> Self {
        TunnelSpec {
            proto: Proto::Udp,
            port: 1194,
            server_ciphers: vec![
                "AES-256-GCM".into(),
                "AES-128-GCM".into(),
                "CHACHA20-POLY1305".into(),
            ],
            client_ciphers: None,
            wrap: Wrap::None,
            auth_user_pass: false,
            server_reneg_sec: None,
            client_reneg_sec: None,
            tunnel_net: Ipv4Addr::new(198, 19, 0, 0),
            keepalive: (10, 60),
            explicit_exit_notify: None,
            server_extra: vec![],
            client_extra: vec![],
            tap: false,
            server_dev: None,
            server_bridge: None,
        }
    }
}

impl TunnelSpec {
    /// The server's tunnel address (.1 of the tunnel network).
    pub fn server_tun_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.tunnel_net) + 1)
    }

    /// A short label for reports.
    pub fn label(&self) -> String {
        format!(
            "{}/{}/{:?}{}",
            match self.proto {
                Proto::Udp => "udp",
                Proto::Tcp => "tcp",
            },
            self.server_ciphers
                .first()
                .map_or("default", String::as_str),
            self.wrap,
            if self.auth_user_pass { "/password" } else { "" }
        ) + if self.tap { "/tap" } else { "" }
    }

    /// The control-channel wrap's config lines; `key_direction` 0 on the server, 1 on the
    /// client (for tls-auth).
    fn wrap_lines(&self, pki: &Pki, key_direction: u8) -> String {
        let key = pki.static_key.display();
        match self.wrap {
            Wrap::None => String::new(),
            Wrap::TlsAuth => format!("tls-auth {key} {key_direction}\nauth SHA256\n"),
            Wrap::TlsCrypt => format!("tls-crypt {key}\n"),
        }
    }

    /// Stock OpenVPN server config. Writes the auth script into `dir` if needed.
    pub fn server_config(&self, pki: &Pki, dir: &Path) -> Result<String> {
        let mut c = String::new();
        let proto = match self.proto {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp-server",
        };
        let dev = match (&self.server_dev, self.tap) {
            (Some(d), true) => format!("dev {d}\ndev-type tap"),
            (Some(d), false) => format!("dev {d}\ndev-type tun\ntopology subnet"),
            (None, true) => "dev tap".to_owned(),
            (None, false) => "dev tun\ntopology subnet".to_owned(),
        };
        let _ = writeln!(c, "port {}\nproto {proto}\n{dev}", self.port);
        match &self.server_bridge {
            Some(args) => {
                let _ = writeln!(c, "server-bridge {args}");
            }
            None => {
                let _ = writeln!(c, "server {} 255.255.255.0", self.tunnel_net);
            }
        }
        let _ = writeln!(
            c,
            "ca {}\ncert {}\nkey {}\ndh none",
            pki.ca.display(),
            pki.server_cert.display(),
            pki.server_key.display()
        );
        let _ = writeln!(c, "data-ciphers {}", self.server_ciphers.join(":"));
        let _ = writeln!(c, "keepalive {} {}", self.keepalive.0, self.keepalive.1);
        let _ = writeln!(c, "remote-cert-tls client");
        c.push_str(&self.wrap_lines(pki, 0));
        if self.auth_user_pass {
            let script = dir.join("check-password.sh");
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\n# Accepts exactly the test user.\nu=$(sed -n 1p \"$1\"); p=$(sed -n 2p \"$1\")\n[ \"$u\" = \"{}\" ] && [ \"$p\" = \"{}\" ]\n",
                    TEST_USER.0, TEST_USER.1
                ),
            )?;
            set_executable(&script)?;
            let _ = writeln!(
                c,
                "script-security 2\nauth-user-pass-verify {} via-file",
                script.display()
            );
        }
        if let Some(r) = self.server_reneg_sec {
            let _ = writeln!(c, "reneg-sec {r}");
        }
        let _ = writeln!(c, "verb 3");
        for l in &self.server_extra {
            let _ = writeln!(c, "{l}");
        }
        Ok(c)
    }

    /// Client config (OpenVPN syntax, for `tunscope client` or `openvpn`).
    pub fn client_config(
        &self,
        pki: &Pki,
        cert: &Path,
        key: &Path,
        server: impl Into<std::net::IpAddr>,
        dir: &Path,
    ) -> Result<String> {
        let server: std::net::IpAddr = server.into();
        let mut c = String::new();
        let proto = match self.proto {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp-client",
        };
        // A client given its own port (`lport` in the extra lines) binds it.
        let bind = self.client_extra.iter().any(|l| l.starts_with("lport"));
        let _ = writeln!(
            c,
            "client\ndev {}\nproto {proto}\nremote {server} {}{}",
            if self.tap { "tap" } else { "tun" },
            self.port,
            if bind { "" } else { "\nnobind" }
        );
        let _ = writeln!(
            c,
            "ca {}\ncert {}\nkey {}",
            pki.ca.display(),
            cert.display(),
            key.display()
        );
        let _ = writeln!(c, "remote-cert-tls server\nverify-x509-name server name");
        if let Some(ciphers) = &self.client_ciphers {
            let _ = writeln!(c, "data-ciphers {}", ciphers.join(":"));
        }
        c.push_str(&self.wrap_lines(pki, 1));
        if self.auth_user_pass {
            let f = dir.join("credentials.txt");
            std::fs::write(&f, format!("{}\n{}\n", TEST_USER.0, TEST_USER.1))?;
            let _ = writeln!(c, "auth-user-pass {}", f.display());
        }
        if let Some(r) = self.client_reneg_sec {
            let _ = writeln!(c, "reneg-sec {r}");
        }
        if let (Some(n), Proto::Udp) = (self.explicit_exit_notify, self.proto) {
            let _ = writeln!(c, "explicit-exit-notify {n}");
        }
        let _ = writeln!(c, "verb 3");
        for l in &self.client_extra {
            let _ = writeln!(c, "{l}");
        }
        Ok(c)
    }
}

fn set_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(p)?.permissions();
    perm.set_mode(0o755);
    std::fs::set_permissions(p, perm)?;
    Ok(())
}

/// Which implementation plays a role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// tunscope.
    Ours,
    /// Stock OpenVPN 2.6 from the distribution.
    OpenVpn,
}

/// Path of the `tunscope` binary: `TUNSCOPE_BIN`, or next to the running test executable's
/// target directory.
pub fn tunscope_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("TUNSCOPE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let cand = dir.join("tunscope");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    anyhow::bail!("tunscope binary not found; set TUNSCOPE_BIN")
}

/// Starts stock `openvpn --config FILE` in `ns`, logging to `log`.
pub fn start_openvpn(ns: &Netns, config: &Path, log: &Path) -> Result<Proc> {
    let mut cmd = ns.command("openvpn");
    cmd.args(["--config"]).arg(config);
    Proc::spawn("openvpn", cmd, log)
}

/// Starts `tunscope client --config FILE` in `ns`.
pub fn start_tunscope_client(
    ns: &Netns,
    config: &Path,
    log: &Path,
    extra: &[&str],
) -> Result<Proc> {
    start_tunscope_client_env(ns, config, log, extra, &[])
}

/// Like [`start_tunscope_client`], with extra environment variables.
pub fn start_tunscope_client_env(
    ns: &Netns,
    config: &Path,
    log: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Proc> {
    let bin = tunscope_bin()?;
    let mut cmd = ns.command(bin.to_str().context("binary path is not UTF-8")?);
    cmd.arg("client").arg("--config").arg(config);
    // Keep the state file with the test's files, not in the machine's /run (before `extra`,
    // which may end with `-- OPENVPN-OPTIONS`).
    if !extra.contains(&"--state-file") {
        cmd.arg("--state-file").arg(log.with_extension("state"));
    }
    cmd.args(extra);
    cmd.env(
        "TUNSCOPE_LOG",
        std::env::var("TUNSCOPE_LOG").unwrap_or_else(|_| "info".into()),
    );
    cmd.envs(env.iter().copied());
    Proc::spawn("tunscope client", cmd, log)
}

/// Starts `tunscope server --config FILE` in `ns`.
pub fn start_tunscope_server(ns: &Netns, config: &Path, log: &Path) -> Result<Proc> {
    start_tunscope_server_with(ns, config, log, &[])
}

/// Starts `tunscope server --config FILE EXTRA…` in `ns`.
pub fn start_tunscope_server_with(
    ns: &Netns,
    config: &Path,
    log: &Path,
    extra: &[&str],
) -> Result<Proc> {
    let bin = tunscope_bin()?;
    let mut cmd = ns.command(bin.to_str().context("binary path is not UTF-8")?);
    cmd.arg("server").arg("--config").arg(config).args(extra);
    cmd.env(
        "TUNSCOPE_LOG",
        std::env::var("TUNSCOPE_LOG").unwrap_or_else(|_| "info".into()),
    );
    Proc::spawn("tunscope server", cmd, log)
}

/// Starts a server of either implementation.
pub fn start_server(which: Implementation, ns: &Netns, config: &Path, log: &Path) -> Result<Proc> {
    match which {
        Implementation::Ours => start_tunscope_server(ns, config, log),
        Implementation::OpenVpn => start_openvpn(ns, config, log),
    }
}

/// Starts a client of either implementation.
pub fn start_client(which: Implementation, ns: &Netns, config: &Path, log: &Path) -> Result<Proc> {
    match which {
        Implementation::Ours => start_tunscope_client(ns, config, log, &[]),
        Implementation::OpenVpn => start_openvpn(ns, config, log),
    }
}

/// Both implementations print this when the tunnel is up.
pub const READY_LINE: &str = "Initialization Sequence Completed";

/// Waits for a subject's ready line.
pub fn wait_ready(p: &mut Proc, timeout: Duration) -> Result<()> {
    p.wait_for_log(READY_LINE, timeout)
}
