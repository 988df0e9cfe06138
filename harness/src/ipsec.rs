//! IPsec as a scenario subject: strongSwan's IKEv2 daemon `charon` in the client and server
//! namespaces with the kernel-libipsec plugin — ESP in userspace through a tun device,
//! because this kernel has no ESP — configured over VICI with `swanctl`, from Debian's
//! packages.
//!
//! * Authentication: IKEv2 with the run's PKI (ECDSA certificates; identities are the
//!   certificates' subject DNs).
//! * What an OpenVPN server of the same scenario would push becomes the server's traffic
//!   selectors and its address pool: `route NET MASK` → `local_ts` NET/len (the client's
//!   `remote_ts`), `redirect-gateway` → 0.0.0.0/0, `dhcp-option DNS` (or `dns server N
//!   address`) → the pool's `dns` attribute, DNS domains → INTERNAL_DNS_DOMAIN (RFC 8598). The client asks for a virtual IP (`vips = 0.0.0.0`) and gets one from
//!   198.19.0.2–254; the server's end of the tunnel is 198.19.0.1, always inside the
//!   selectors so the harness (and the bench) can reach it.
//! * charon installs the routes itself, as on a user's machine: into its routing table 220
//!   (with a policy rule ahead of `main`) on its tun device, which kernel-libipsec names
//!   `ipsec0` — scenario checks naming `tun0` mean that device for this subject
//!   ([`crate::scenario::Scenario::on_tunnel_dev`]).
//! * DNS: with the scenario's `client_dns = "none"`, charon's `resolve` plugin writes the
//!   received DNS server into the namespace's resolv.conf (strongSwan 5.9 has no split DNS on
//!   the client: every name goes to that server). With a backend named, the plugin is not
//!   loaded and `tunscope dns` applies the scenario's DNS, as for the other subjects.
//! * Both charons run in private mount namespaces with a tmpfs on `/run` (its pid file and
//!   VICI socket are at compiled-in paths there; `swanctl` enters that namespace), so
//!   nothing of the host's is read or written. The daemon itself is unpacked from its
//!   package into `target/strongswan/` by `cargo xtask deps` (the package pulls in
//!   strongswan-starter, a host service); its libraries and plugins are installed packages.
//! * ESP is always UDP-encapsulated (port 4500): kernel-libipsec has no raw ESP socket.
//!   MOBIKE is off: the server's inner address, added once charon runs, would otherwise be
//!   announced (an INFORMATIONAL exchange) at a moment that depends on timing.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::network::addr;
use crate::p2p::{ClientNet, DnsHook, Ends, Routes, Tunnel, run, wait_for_ping};
use crate::pki::Pki;
use crate::process::Proc;

/// The tun device kernel-libipsec creates (the name is compiled in).
pub const DEVICE: &str = "ipsec0";

/// Where `cargo xtask deps` unpacks charon (`TUNSCOPE_STRONGSWAN_ROOT` overrides).
pub fn root() -> PathBuf {
    crate::resolved::unpacked_root("TUNSCOPE_STRONGSWAN_ROOT", "strongswan")
}

/// The charon binary inside [`root`].
pub fn charon(root: &Path) -> PathBuf {
    root.join("usr/lib/ipsec/charon")
}

/// Plugins both ends load (no others: `load_modular = no`).
const PLUGINS: &str = "random nonce openssl kdf hmac sha1 sha2 aes gcm pem pkcs1 pkcs8 x509 \
                       pubkey constraints revocation kernel-libipsec kernel-netlink \
                       socket-default vici";

/// The server's address inside the tunnel.
pub fn server_inner() -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr::TUNNEL_NET) + 1)
}

/// A running IPsec tunnel.
pub struct Ipsec;

/// What the server offers for what an OpenVPN server would push: its traffic selectors and
/// the DNS servers of its pool.
#[derive(Debug, PartialEq, Eq)]
pub struct Offer {
    /// The server's side of the child SA (`local_ts`), the client's `remote_ts`.
    pub selectors: Vec<String>,
    /// The pool's `dns` attribute.
    pub dns: Vec<Ipv4Addr>,
    /// DNS domains, sent as INTERNAL_DNS_DOMAIN (RFC 8598, attribute 25).
    pub domains: Vec<String>,
}

impl Offer {
    /// From pushed options; the server's inner address is always in the selectors.
    pub fn from_push(push: &[String]) -> Offer {
        let mut selectors = vec![format!("{}/32", server_inner())];
        let mut dns = vec![];
        let mut domains: Vec<String> = vec![];
        let add = |all: &mut Vec<String>, d: &str| {
            if !all.iter().any(|x| x == d) {
                all.push(d.to_owned());
            }
        };
        let mut full = false;
        for p in push {
            let w: Vec<&str> = p.split_whitespace().collect();
            match w.as_slice() {
                ["route", net, mask, ..] => {
                    if let (Ok(n), Ok(m)) = (net.parse::<Ipv4Addr>(), mask.parse::<Ipv4Addr>()) {
                        selectors.push(format!("{n}/{}", u32::from(m).leading_ones()));
                    }
                }
                ["redirect-gateway", ..] => full = true,
                ["dhcp-option", "DNS", a] | ["dns", "server", _, "address", a] => {
                    if let Ok(a) = a.parse() {
                        dns.push(a);
                    }
                }
                ["dhcp-option", "DOMAIN" | "DOMAIN-SEARCH", d] => add(&mut domains, d),
                ["dns", "search-domains", ds @ ..]
                | ["dns", "server", _, "resolve-domains", ds @ ..] => {
                    ds.iter().for_each(|d| add(&mut domains, d));
                }
                _ => {}
            }
        }
        if full {
            selectors = vec!["0.0.0.0/0".into()];
        }
        Offer {
            selectors,
            dns,
            domains,
        }
    }
}

fn strongswan_conf(plugins: &str, resolv_conf: Option<&Path>) -> String {
    let resolve = resolv_conf.map_or(String::new(), |f| {
        format!("    resolve {{\n      file = {}\n    }}\n", f.display())
    });
    format!(
        "# tunscope harness: charon with userspace ESP (kernel-libipsec)\n\
         charon {{\n  load_modular = no\n  load = {plugins}\n\
         \x20 filelog {{\n    stderr {{\n      default = 1\n      flush_line = yes\n    }}\n  }}\n\
         \x20 plugins {{\n{resolve}  }}\n}}\n"
    )
}

/// One end's directory: strongswan.conf and swanctl's tree with its certificate and key.
fn end_dir(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> Result<PathBuf> {
    let sw = dir.join("swanctl");
    for d in ["x509", "x509ca", "private"] {
        std::fs::create_dir_all(sw.join(d))?;
    }
    std::fs::copy(ca, sw.join("x509ca/ca.pem"))?;
    std::fs::copy(cert, sw.join("x509/cert.pem"))?;
    std::fs::copy(key, sw.join("private/key.pem"))?;
    Ok(sw)
}

/// Starts charon in `ns` in a private mount namespace (tmpfs on /run).
fn start_charon(ns: &Netns, dir: &Path, name: &str, log: &Path) -> Result<Proc> {
    let bin = charon(&root());
    if !bin.exists() {
        bail!(
            "no charon at {} (cargo xtask deps unpacks it)",
            bin.display()
        );
    }
    let script = dir.join("start.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# charon with its pid file and VICI socket on a private /run (tunscope harness).\nset -e\n\
             mount -t tmpfs -o mode=755 tmpfs /run\n\
             export STRONGSWAN_CONF='{}'\nexec '{}'\n",
            dir.join("strongswan.conf").display(),
            bin.display()
        ),
    )?;
    let mut cmd = ns.command("unshare");
    cmd.args(["-m", "--propagation", "private", "sh"])
        .arg(&script);
    Proc::spawn(name, cmd, log)
}

/// `swanctl --load-all` against the charon of `proc`, retried while its VICI socket comes up.
fn load(proc: &mut Proc, swanctl_dir: &Path, deadline: Instant) -> Result<()> {
    let pid = proc.pid().context("charon has exited")?.to_string();
    loop {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-m", "-n", "swanctl", "--load-all"])
            .env("SWANCTL_DIR", swanctl_dir)
            .output()
            .context("cannot run swanctl")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline || !proc.is_running() {
            bail!(
                "swanctl --load-all: {}\ncharon's log:\n{}",
                text.trim(),
                crate::process::tail(&proc.log(), 10)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Ipsec {
    /// Both ends anywhere.
    pub fn between(
        ends: &Ends<'_>,
        push: &[String],
        dns: Option<DnsHook<'_>>,
        out: &Path,
        within: Duration,
    ) -> Result<Tunnel> {
        let deadline = Instant::now() + within;
        let dir = out.join("ipsec");
        let pki = Pki::generate(&dir.join("pki"))?;
        let (ccert, ckey) = pki.client("client")?;
        let offer = Offer::from_push(push);

        // The server: a pool for virtual IPs (with DNS) and the selectors as its local side.
        let sdir = dir.join("server");
        let ssw = end_dir(&sdir, &pki.ca, &pki.server_cert, &pki.server_key)?;
        std::fs::write(sdir.join("strongswan.conf"), strongswan_conf(PLUGINS, None))?;
        let first = Ipv4Addr::from(u32::from(addr::TUNNEL_NET) + 2);
        let last = Ipv4Addr::from(u32::from(addr::TUNNEL_NET) + 254);
        let dns_attr = if offer.dns.is_empty() {
            String::new()
        } else {
            let d: Vec<String> = offer.dns.iter().map(Ipv4Addr::to_string).collect();
            format!("    dns = {}\n", d.join(","))
        } + &if offer.domains.is_empty() {
            String::new()
        } else {
            format!("    25 = {}\n", offer.domains.join(","))
        };
        std::fs::write(
            ssw.join("swanctl.conf"),
            format!(
                "connections {{\n  rw {{\n    version = 2\n    local_addrs = {endpoint}\n    pools = tunnel\n    encap = yes\n    mobike = no\n\
                 \x20   proposals = aes256-sha256-ecp256\n\
                 \x20   local {{\n      auth = pubkey\n      certs = cert.pem\n    }}\n\
                 \x20   remote {{\n      auth = pubkey\n    }}\n\
                 \x20   children {{\n      tunnel {{\n        local_ts = {ts}\n        esp_proposals = aes256gcm16\n      }}\n    }}\n  }}\n}}\n\
                 pools {{\n  tunnel {{\n    addrs = {first}-{last}\n{dns_attr}  }}\n}}\n",
                endpoint = ends.endpoint,
                ts = offer.selectors.join(","),
            ),
        )?;
        let mut server = start_charon(
            ends.server,
            &sdir,
            "charon (server)",
            &out.join("server.log"),
        )?;
        load(&mut server, &ssw, deadline).context("the IPsec server's configuration")?;
        // The server's end of the tunnel (charon gives the responder no address of its own).
        run(
            ends.server,
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/32", server_inner()),
                "dev",
                DEVICE,
            ],
        )?;

        // The client: resolve writes the namespace's own resolv.conf (never the host's).
        let cdir = dir.join("client");
        let csw = end_dir(&cdir, &pki.ca, &ccert, &ckey)?;
        let resolv = ends.client.resolv_conf_path();
        let resolve = dns.is_none() && !offer.dns.is_empty() && resolv.exists();
        let plugins = if resolve {
            format!("{PLUGINS} resolve")
        } else {
            PLUGINS.to_owned()
        };
        std::fs::write(
            cdir.join("strongswan.conf"),
            strongswan_conf(&plugins, resolve.then_some(resolv.as_path())),
        )?;
        std::fs::write(
            csw.join("swanctl.conf"),
            format!(
                "connections {{\n  vpn {{\n    version = 2\n    remote_addrs = {endpoint}\n    vips = 0.0.0.0\n    encap = yes\n    mobike = no\n\
                 \x20   proposals = aes256-sha256-ecp256\n\
                 \x20   local {{\n      auth = pubkey\n      certs = cert.pem\n    }}\n\
                 \x20   remote {{\n      auth = pubkey\n      id = \"CN=server\"\n    }}\n\
                 \x20   children {{\n      tunnel {{\n        remote_ts = {ts}\n        esp_proposals = aes256gcm16\n        start_action = start\n      }}\n    }}\n  }}\n}}\n",
                endpoint = ends.endpoint,
                ts = offer.selectors.join(","),
            ),
        )?;
        let mut client = start_charon(
            ends.client,
            &cdir,
            "charon (client)",
            &out.join("client.log"),
        )?;
        load(&mut client, &csw, deadline).context("the IPsec client's configuration")?;
        let pid = client.pid().context("charon (client) has exited")?;
        let mut t = Tunnel::new(client, server);
        // A user disconnects with swanctl; stopping charon at once would leave the server's
        // answer to its DELETE arriving at a closed port (an ICMP error, depending on timing).
        t.disconnect = Some(
            [
                "nsenter",
                "-t",
                &pid.to_string(),
                "-m",
                "-n",
                "swanctl",
                "--terminate",
                "--ike",
                "vpn",
                "--timeout",
                "5",
            ]
            .map(str::to_owned)
            .to_vec(),
        );
        t.wait_until(deadline, "the IPsec child SA was not established", |c| {
            c.log().contains("CHILD_SA tunnel{1} established")
        })?;
        let no_routes = Routes {
            prefixes: vec![],
            full_tunnel: false,
        };
        t.net = ClientNet::apply(ends, DEVICE, &no_routes, push, dns)?;
        wait_for_ping(
            ends.client,
            server_inner(),
            deadline.saturating_duration_since(Instant::now()),
        )?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_become_selectors_and_the_pools_dns() {
        let push = [
            "route 198.19.10.0 255.255.255.0".to_owned(),
            "dhcp-option DNS 198.19.10.53".to_owned(),
            "dhcp-option DOMAIN corp.example".to_owned(),
            "dns server 0 address 198.19.10.54".to_owned(),
            "dns server 0 resolve-domains corp.example".to_owned(),
            "dns search-domains other.example".to_owned(),
        ];
        assert_eq!(
            Offer::from_push(&push),
            Offer {
                selectors: vec!["198.19.0.1/32".into(), "198.19.10.0/24".into()],
                dns: vec![
                    Ipv4Addr::new(198, 19, 10, 53),
                    Ipv4Addr::new(198, 19, 10, 54)
                ],
                domains: vec!["corp.example".into(), "other.example".into()],
            }
        );
        let full = [
            "redirect-gateway def1".to_owned(),
            "route 198.19.10.0 255.255.255.0".to_owned(),
        ];
        assert_eq!(Offer::from_push(&full).selectors, ["0.0.0.0/0"]);
    }

    #[test]
    fn the_resolve_plugin_is_configured_only_when_asked() {
        let without = strongswan_conf(PLUGINS, None);
        assert!(!without.contains("resolve"), "{without}");
        let with = strongswan_conf(
            &format!("{PLUGINS} resolve"),
            Some(Path::new("/etc/netns/ts-x-client/resolv.conf")),
        );
        assert!(
            with.contains("file = /etc/netns/ts-x-client/resolv.conf"),
            "{with}"
        );
        assert!(with.contains("load_modular = no"), "{with}");
    }
}
