//! WireGuard as a scenario subject: wireguard-go (this kernel has no WireGuard module)
//! configured with wg(8) in the client and server namespaces, set up as a user's wg-quick
//! would, from the same scenario file as the OpenVPN subjects.
//!
//! * The tunnel network is the OpenVPN subjects' (server 198.19.0.1, client 198.19.0.2 on a
//!   device called `tun0`, so every check names the same interface): wireguard-go creates a
//!   device with a run-unique name (its UAPI socket in `/var/run/wireguard/` is shared by
//!   every namespace), wg(8) configures it through that name, then the device is renamed.
//! * What the OpenVPN server would push becomes the client's `AllowedIPs` and routes:
//!   `route NET MASK` → NET/len; `redirect-gateway def1` → 0.0.0.0/1 and 128.0.0.0/1, plus a
//!   host route to the server over the WAN (wg-quick uses policy routing instead; a host route
//!   is what OpenVPN does and what the checks expect).
//! * Pushed DNS is applied by the same hook stock openvpn uses (`tunscope dns`, given
//!   OpenVPN's script environment: `foreign_option_N`), as a user's PostUp script would.
//! * WireGuard handshakes lazily: the tunnel counts as up once a ping through it answers.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::network::addr;
use crate::p2p::{
    ClientNet, DnsHook, Ends, Tunnel, routes_from_push, run, up_as_tun0, wait_for_ping,
};
use crate::process::Proc;

/// The server's UDP port.
pub const PORT: u16 = 51820;

/// A run-unique device name for wireguard-go (at most 15 bytes).
fn device_name(prefix: &str, side: char) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in prefix.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("tsw{h:08x}{side}")
}

fn keypair(dir: &Path, side: &str) -> Result<(PathBuf, String)> {
    let key = dir.join(format!("wg-{side}.key"));
    let out = Command::new("wg")
        .arg("genkey")
        .output()
        .context("wg genkey")?;
    if !out.status.success() {
        bail!("wg genkey failed");
    }
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)?
            .write_all(&out.stdout)?;
    }
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("wg pubkey")?;
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .context("wg pubkey stdin")?
            .write_all(&out.stdout)?;
    }
    let public = child.wait_with_output()?;
    Ok((
        key,
        String::from_utf8_lossy(&public.stdout).trim().to_owned(),
    ))
}

/// Starts wireguard-go for `dev` in `ns` and waits for its UAPI socket.
fn start_device(ns: &Netns, dev: &str, log: &Path) -> Result<Proc> {
    let sock = Path::new("/var/run/wireguard").join(format!("{dev}.sock"));
    let _ = std::fs::remove_file(&sock);
    let mut cmd = ns.command("wireguard-go");
    cmd.args(["-f", dev])
        .env("WG_PROCESS_FOREGROUND", "1")
        .env("LOG_LEVEL", "error");
    let p = Proc::spawn("wireguard-go", cmd, log)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        if Instant::now() > deadline {
            bail!("wireguard-go did not create {}", sock.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(p)
}

/// A running WireGuard tunnel between the scenario's client and server.
pub struct WireGuard;

impl WireGuard {
    /// Sets up both ends anywhere (the bench's two hosts, a scenario's network).
    pub fn between(
        ends: &Ends<'_>,
        push: &[String],
        dns: Option<DnsHook<'_>>,
        out: &Path,
        within: Duration,
    ) -> Result<Tunnel> {
        let server_ip = Ipv4Addr::from(u32::from(addr::TUNNEL_NET) + 1);
        let client_ip = Ipv4Addr::from(u32::from(addr::TUNNEL_NET) + 2);
        let (skey, spub) = keypair(out, "server")?;
        let (ckey, cpub) = keypair(out, "client")?;
        let (sdev, cdev) = (device_name(ends.prefix, 's'), device_name(ends.prefix, 'c'));

        let server = start_device(ends.server, &sdev, &out.join("server.log"))?;
        let port = PORT.to_string();
        run(
            ends.server,
            "wg",
            &[
                "set",
                &sdev,
                "private-key",
                &skey.display().to_string(),
                "listen-port",
                &port,
                "peer",
                &cpub,
                "allowed-ips",
                &format!("{client_ip}/32"),
            ],
        )?;
        up_as_tun0(ends.server, &sdev, server_ip)?;

        let client = start_device(ends.client, &cdev, &out.join("client.log"))?;
        let routes = routes_from_push(push);
        let mut allowed: Vec<String> = vec![format!("{}/24", addr::TUNNEL_NET)];
        allowed.extend(routes.prefixes.iter().map(|(n, l)| format!("{n}/{l}")));
        run(
            ends.client,
            "wg",
            &[
                "set",
                &cdev,
                "private-key",
                &ckey.display().to_string(),
                "peer",
                &spub,
                "endpoint",
                &format!("{}:{PORT}", ends.endpoint),
                "allowed-ips",
                &allowed.join(","),
            ],
        )?;
        up_as_tun0(ends.client, &cdev, client_ip)?;
        let mut wg = Tunnel::new(client, server);
        wg.net = ClientNet::apply(ends, "tun0", &routes, push, dns)?;
        // Lazy handshake: the first packet starts it.
        wait_for_ping(ends.client, server_ip, within)
            .with_context(|| run(ends.client, "wg", &["show", &cdev]).unwrap_or_default())?;
        Ok(wg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_become_allowed_ips_and_routes() {
        let r = routes_from_push(&[
            "route 198.19.10.0 255.255.255.0".to_owned(),
            "dhcp-option DNS 198.19.10.53".to_owned(),
        ]);
        assert_eq!(r.prefixes, vec![(Ipv4Addr::new(198, 19, 10, 0), 24)]);
        assert!(!r.full_tunnel);
        let f = routes_from_push(&["redirect-gateway def1".to_owned()]);
        assert!(f.full_tunnel);
        assert_eq!(f.prefixes.len(), 2);
        let n = device_name("ts-4194304-999", 'c');
        assert!(n.len() <= 15 && n.ends_with('c'), "{n}");
        assert_ne!(n, device_name("ts-4194304-998", 'c'));
    }
}
