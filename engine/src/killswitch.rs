//! A kill switch the client owns: while the tunnel is up, nothing leaves the host's other
//! interfaces except the tunnel's own packets to the server (and DHCP, so the LAN lease is
//! kept). A route the tunnel does not control — a rogue DHCP server's classless static route
//! (option 121, TunnelVision, CVE-2024-3661), a LAN claiming a public prefix (TunnelCrack's
//! LocalNet) — then cannot carry traffic in clear: it is refused, and counted.
//!
//! One nftables table of ours (`inet tunscope_killswitch`), an output chain accepting
//! loopback, the tunnel device, the server's address, DHCP and IPv6 neighbour discovery,
//! and refusing the rest through a named counter: rejected (administratively prohibited)
//! rather than silently dropped, so a program learns at once that its packet may not leave
//! instead of waiting for its timeouts. Installed atomically (one `nft -f`
//! transaction replacing any earlier table of ours), recorded in the state file before it
//! is installed, removed on exit. After a crash it stays (failing closed) until the next
//! start removes it, or `down` does when it runs as OpenVPN's hook (`tunscope kill-switch`).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The table's name.
pub const TABLE: &str = "tunscope_killswitch";

/// The ruleset for tunnel device `dev` and the tunnel's transport to `server` (its address
/// and port, over TCP or UDP): only the tunnel's own packets may go to the server, so a
/// spoofed server address (TunnelCrack's ServerIP) does not open a path for anything else.
pub fn ruleset(dev: &str, server: SocketAddr, tcp: bool) -> String {
    let family = if server.is_ipv4() { "ip" } else { "ip6" };
    let proto = if tcp { "tcp" } else { "udp" };
    let (ip, port) = (server.ip(), server.port());
    format!(
        r#"table inet {TABLE} {{
  counter blocked {{ }}
  chain output {{
    type filter hook output priority 0; policy accept;
    oifname "lo" accept
    oifname "{dev}" accept
    {family} daddr {ip} {proto} dport {port} accept
    udp sport 68 udp dport 67 accept
    icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} accept
    counter name "blocked" reject with icmpx admin-prohibited
  }}
}}
"#
    )
}

fn nft(script: &str) -> Result<String> {
    let mut child = Command::new(crate::netconfig::system_program("nft"))
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (Debian: apt-get install nftables)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs (or replaces) the kill switch, in one transaction.
pub fn install(dev: &str, server: SocketAddr, tcp: bool) -> Result<()> {
    if dev.is_empty()
        || !dev
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        bail!("kill switch: unusable device name {dev:?}");
    }
    // `table … ` first makes the delete valid when no table of ours exists yet.
    nft(&format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\n{}",
        ruleset(dev, server, tcp)
    ))
    .context("cannot install the kill switch")?;
    tracing::info!(
        "kill switch: only {dev}, loopback and the tunnel's {} to {server} carry traffic",
        if tcp { "TCP" } else { "UDP" }
    );
    Ok(())
}

/// Packets the kill switch dropped so far, if it is installed.
pub fn blocked() -> Option<u64> {
    let out = nft(&format!("list counter inet {TABLE} blocked\n")).ok()?;
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "packets")
        .and_then(|w| w[1].parse().ok())
}

/// Removes the kill switch (nothing to do when it is not there); logs what it blocked.
pub fn remove() {
    let Some(n) = blocked() else {
        return;
    };
    match nft(&format!("delete table inet {TABLE}\n")) {
        Ok(_) => tracing::info!("kill switch removed; it blocked {n} packet(s)"),
        Err(e) => tracing::warn!("cannot remove the kill switch: {e:#}"),
    }
}

/// `tunscope kill-switch` as OpenVPN's `up`/`down` script: `up` installs it for `dev`
/// and the server OpenVPN connected to (`trusted_ip`/`trusted_ip6`, `trusted_port`,
/// `proto_1`), `down` removes it.
pub fn run_hook() -> Result<()> {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    match var("script_type").as_str() {
        "up" => {
            let ip: IpAddr = [var("trusted_ip"), var("trusted_ip6")]
                .iter()
                .find_map(|v| v.parse().ok())
                .context("kill switch: OpenVPN named no server address (trusted_ip)")?;
            let port: u16 = var("trusted_port")
                .parse()
                .context("kill switch: OpenVPN named no server port (trusted_port)")?;
            let tcp = var("proto_1").starts_with("tcp");
            install(&var("dev"), SocketAddr::new(ip, port), tcp)
        }
        "down" => {
            remove();
            Ok(())
        }
        "" => bail!("run me as OpenVPN's up/down script (script_type is not set)"),
        other => bail!("unexpected script_type '{other}' (use as up and down script)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_lets_only_the_tunnel_and_its_transport_out() {
        let r = ruleset("tun0", "198.18.2.2:1194".parse().expect("addr"), false);
        assert!(r.contains("oifname \"tun0\" accept"));
        assert!(r.contains("ip daddr 198.18.2.2 udp dport 1194 accept"));
        assert!(r.contains("counter name \"blocked\" reject with icmpx admin-prohibited"));
        let r6 = ruleset("tun0", "[2001:db8:2::2]:443".parse().expect("addr"), true);
        assert!(r6.contains("ip6 daddr 2001:db8:2::2 tcp dport 443 accept"));
        assert!(
            install(
                "tun0; flush ruleset",
                "198.18.2.2:1194".parse().expect("addr"),
                false
            )
            .is_err()
        );
    }
}
