//! System packages the tests, scenarios and benchmarks use, installed on demand (Debian).
//!
//! Nothing is installed by hand on CI machines: `cargo xtask test` calls [`ensure`] first.

use std::process::Command;

use anyhow::{Result, bail};

/// (command that must exist, Debian package providing it).
const NEEDED: &[(&str, &str)] = &[
    ("openvpn", "openvpn"),
    ("ip", "iproute2"),
    ("tshark", "tshark"),
    // Wireshark's own reader, counting the capture corpus in one process.
    ("capinfos", "wireshark-common"),
    ("openssl", "openssl"),
    ("ping", "iputils-ping"),
    ("nft", "nftables"),
    ("iperf3", "iperf3"),
    ("tcpdump", "tcpdump"),
    ("dig", "dnsutils"),
    ("curl", "curl"),
    ("ethtool", "ethtool"),
    ("getent", "libc-bin"),
    // Proxies the client is tested through (http-proxy, socks-proxy).
    ("tinyproxy", "tinyproxy"),
    ("danted", "dante-server"),
    // The bridged scenario: the corp LAN's DHCP server (the binary only, no system service)
    // and the client's DHCP client on its tap device.
    ("dnsmasq", "dnsmasq-base"),
    ("udhcpc", "udhcpc"),
    // Headless, it opens the HTML reports in their tests as a person's browser would.
    ("chromium", "chromium"),
];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
        || ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .any(|d| std::path::Path::new(&format!("{d}/{cmd}")).exists())
}

/// Installs whatever is missing.
pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!("missing packages {missing:?}; run as root so they can be installed with apt-get");
    }
    eprintln!("installing {missing:?}");
    // tshark asks whether non-root users may capture; answer once, non-interactively.
    let _ = Command::new("sh")
        .args(["-c", "echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections"])
        .status();
    let install = |update: bool| -> bool {
        if update {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
        }
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install(false) && !install(true) {
        bail!("apt-get install {missing:?} failed");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
