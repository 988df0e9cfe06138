//! OpenConnect as a scenario subject: ocserv (the AnyConnect protocol's open server) in the
//! server namespace and the `openconnect` client with the stock `vpnc-script` in the client
//! namespace, both from Debian's packages. What an OpenVPN server of the same scenario would
//! push becomes ocserv's configuration — `route` lines are its split-include routes,
//! `redirect-gateway` a full tunnel, `dhcp-option DNS`/`DOMAIN` its `dns`/`split-dns` — and
//! the server pushes them; on the client vpnc-script applies them, as on a user's machine.
//!
//! DNS: with the scenario's `client_dns = "none"` vpnc-script applies DNS itself (it rewrites
//! resolv.conf to the VPN's resolvers for every name: no split DNS without systemd-resolved
//! or dnsmasq). With a backend named, vpnc-script is run without the DNS part of its
//! environment and `tunscope dns` applies it, as for the other subjects.
//!
//! ocserv is unpacked from its package into `target/ocserv/` by `cargo xtask deps` (the
//! package would install a service listening on the host's port 443); openconnect and
//! vpnc-scripts are installed (no service).
//!
//! The client authenticates with its certificate from the run's PKI (`cert-user-oid` CN);
//! it pins the server's key (`--servercert pin-sha256:…`). openconnect runs in a private
//! mount namespace with a tmpfs on `/run/vpnc`, where vpnc-script keeps its backups, so
//! nothing of the host's is written.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::network::addr;
use crate::p2p::{ClientNet, DnsHook, Ends, Routes, Tunnel, run};
use crate::pki::Pki;
use crate::process::Proc;

/// Where `cargo xtask deps` unpacks ocserv (`TUNSCOPE_OCSERV_ROOT` overrides).
pub fn root() -> std::path::PathBuf {
    crate::resolved::unpacked_root("TUNSCOPE_OCSERV_ROOT", "ocserv")
}

/// The ocserv binary inside [`root`].
pub fn ocserv(root: &Path) -> std::path::PathBuf {
    root.join("usr/sbin/ocserv")
}

/// vpnc-script as Debian installs it.
const VPNC_SCRIPT: &str = "/usr/share/vpnc-scripts/vpnc-script";
/// The server's port (TLS and DTLS).
pub const PORT: u16 = 443;

/// A running OpenConnect tunnel.
pub struct OpenConnect;

/// ocserv's configuration lines for what an OpenVPN server would push.
pub fn ocserv_pushes(push: &[String]) -> Vec<String> {
    let mut lines = vec![];
    let mut full = false;
    for p in push {
        let w: Vec<&str> = p.split_whitespace().collect();
        match w.as_slice() {
            ["route", net, mask, ..] => lines.push(format!("route = {net}/{mask}")),
            ["redirect-gateway", ..] => full = true,
            ["dhcp-option", "DNS", a] => lines.push(format!("dns = {a}")),
            ["dhcp-option", "DOMAIN", d] => lines.push(format!("split-dns = {d}")),
            _ => {}
        }
    }
    if full {
        // A full tunnel: no split-include routes at all.
        lines.retain(|l| !l.starts_with("route"));
        lines.push("route = default".into());
    }
    lines
}

/// The base64 SHA-256 of a certificate's public key (openconnect's `pin-sha256:`).
fn key_pin(cert: &Path) -> Result<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            cert.display()
        ))
        .output()
        .context("cannot run openssl")?;
    let pin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || pin.len() != 44 {
        bail!(
            "no key pin for {}: {}",
            cert.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(pin)
}

impl OpenConnect {
    /// Both ends anywhere.
    pub fn between(
        ends: &Ends<'_>,
        push: &[String],
        dns: Option<DnsHook<'_>>,
        out: &Path,
        within: Duration,
    ) -> Result<Tunnel> {
        let dir = out.join("openconnect");
        std::fs::create_dir_all(&dir)?;
        let pki = Pki::generate(&dir.join("pki"))?;
        let (cert, key) = pki.client("client")?;
        let conf = dir.join("ocserv.conf");
        let mut c = vec![
            "auth = \"certificate\"".to_owned(),
            format!("listen-host = {}", ends.endpoint),
            format!("tcp-port = {PORT}"),
            format!("udp-port = {PORT}"),
            format!("socket-file = {}", dir.join("ocserv.sock").display()),
            format!("pid-file = {}", dir.join("ocserv.pid").display()),
            format!("server-cert = {}", pki.server_cert.display()),
            format!("server-key = {}", pki.server_key.display()),
            format!("ca-cert = {}", pki.ca.display()),
            // The user is the certificate's CN.
            "cert-user-oid = 2.5.4.3".into(),
            "isolate-workers = false".into(),
            "use-occtl = false".into(),
            "max-clients = 16".into(),
            "keepalive = 32400".into(),
            "dpd = 90".into(),
            "try-mtu-discovery = false".into(),
            "cookie-timeout = 300".into(),
            "deny-roaming = false".into(),
            "device = vpns".into(),
            // The same address for the same user, run after run.
            "predictable-ips = true".into(),
            format!("ipv4-network = {}", addr::TUNNEL_NET),
            "ipv4-netmask = 255.255.255.0".into(),
            "cisco-client-compat = true".into(),
        ];
        c.extend(ocserv_pushes(push));
        std::fs::write(&conf, c.join("\n") + "\n")?;
        let bin = ocserv(&root());
        if !bin.exists() {
            bail!(
                "no ocserv at {} (cargo xtask deps unpacks it)",
                bin.display()
            );
        }
        let mut cmd = ends.server.command(&bin.display().to_string());
        cmd.args(["-f", "-d", "1", "-c"]).arg(&conf);
        let mut server = Proc::spawn("ocserv", cmd, &out.join("server.log"))?;
        server
            .wait_for_log("sec-mod initialized", Duration::from_secs(10))
            .context("ocserv did not start")?;

        let pin = key_pin(&pki.server_cert)?;
        // With a DNS backend, vpnc-script does routes only and tunscope dns does DNS.
        let script = if dns.is_some() {
            format!("env -u INTERNAL_IP4_DNS -u CISCO_DEF_DOMAIN -u CISCO_SPLIT_DNS {VPNC_SCRIPT}")
        } else {
            VPNC_SCRIPT.to_owned()
        };
        // A namespace without a resolv.conf of its own would have vpnc-script write the
        // host's: give it a private copy then.
        let private_resolv = if ends.client.resolv_conf_path().exists() {
            String::new()
        } else {
            let copy = dir.join("resolv.conf");
            std::fs::copy("/etc/resolv.conf", &copy).context("copying resolv.conf")?;
            format!("mount --bind '{}' /etc/resolv.conf\n", copy.display())
        };
        let start = dir.join("client.sh");
        std::fs::write(
            &start,
            format!(
                "#!/bin/sh\n# openconnect with vpnc-script's backups on a private /run/vpnc (tunscope harness).\nset -e\n\
                 mkdir -p /run/vpnc\nmount -t tmpfs -o mode=755 tmpfs /run/vpnc\n{private_resolv}\
                 exec openconnect --protocol=anyconnect --non-inter --servercert pin-sha256:{pin} \
                 -c '{cert}' -k '{key}' -i tun0 --script '{script}' {endpoint}:{PORT}\n",
                cert = cert.display(),
                key = key.display(),
                endpoint = ends.endpoint,
            ),
        )?;
        let mut cmd = ends.client.command("unshare");
        cmd.args(["-m", "--propagation", "private", "sh"])
            .arg(&start);
        let client = Proc::spawn("openconnect", cmd, &out.join("client.log"))?;
        let mut oc = Tunnel::new(client, server);
        let deadline = Instant::now() + within;
        oc.wait_until(deadline, "openconnect did not connect", |c| {
            c.log().contains("Configured as")
        })?;
        // Traffic moves to DTLS once its handshake is done, which may be after "Configured as"
        // ("DTLS in progress"): wait for it (a little), so that a run's packets usually take
        // one path. A failed handshake races ocserv's set-up of the session and openconnect
        // retries only after a minute: the run goes on over TLS then, and says so in its log.
        let dtls_by = deadline.min(Instant::now() + Duration::from_secs(8));
        while !oc.client.log().contains("Established DTLS connection") {
            if Instant::now() > dtls_by || oc.client.log().contains("DTLS handshake failed") {
                tracing::warn!(
                    "openconnect's DTLS channel is not up: the traffic stays on TLS over TCP"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // vpnc-script has run when tun0 holds its address.
        while !run(ends.client, "ip", &["-4", "addr", "show", "dev", "tun0"])
            .is_ok_and(|o| o.contains("inet "))
        {
            if Instant::now() > deadline {
                bail!("vpnc-script did not configure tun0");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let no_routes = Routes {
            prefixes: vec![],
            full_tunnel: false,
        };
        oc.net = ClientNet::apply(ends, "tun0", &no_routes, push, dns)?;
        let gateway = Ipv4Addr::from(u32::from(addr::TUNNEL_NET) + 1);
        crate::p2p::wait_for_ping(ends.client, gateway, within)?;
        Ok(oc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_become_split_includes_dns_and_split_dns() {
        let push = [
            "route 198.19.10.0 255.255.255.0".to_owned(),
            "dhcp-option DNS 198.19.10.53".to_owned(),
            "dhcp-option DOMAIN corp.example".to_owned(),
        ];
        assert_eq!(
            ocserv_pushes(&push),
            [
                "route = 198.19.10.0/255.255.255.0",
                "dns = 198.19.10.53",
                "split-dns = corp.example"
            ]
        );
        let full = [
            "redirect-gateway def1".to_owned(),
            "route 198.19.10.0 255.255.255.0".to_owned(),
        ];
        assert_eq!(ocserv_pushes(&full), ["route = default"]);
    }
}
