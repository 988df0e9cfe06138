//! System packages the tests, scenarios and benchmarks use, installed on demand (Debian).
//!
//! Nothing is installed by hand on CI machines: `cargo xtask test` calls [`ensure`] first.

use std::process::Command;

use anyhow::{Context, Result, bail};

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
    // WireGuard as a scenario subject (userspace: this kernel has no WireGuard module).
    ("wireguard-go", "wireguard-go"),
    ("wg", "wireguard-tools"),
    // The bus of the client namespace's systemd-resolved (scenarios with resolved = true).
    ("dbus-daemon", "dbus-daemon"),
    // Headless, it opens the HTML reports in their tests as a person's browser would.
    ("chromium", "chromium"),
    // OpenConnect as a scenario subject: the client (vpnc-scripts comes with it); ocserv is
    // unpacked, see ensure_unpacked.
    ("openconnect", "openconnect"),
    // IPsec as a scenario subject: swanctl (VICI, no service); charon is unpacked, see
    // ensure_unpacked.
    ("swanctl", "strongswan-swanctl"),
    ("nsenter", "util-linux"),
];

/// Libraries an unpacked daemon links against (ocserv's; charon's libraries and the
/// plugins it loads), installed as packages: plain libraries, no services.
const LIBRARIES: &[&str] = &[
    "libstrongswan",
    "libstrongswan-standard-plugins",
    "strongswan-libcharon",
    "libcharon-extra-plugins",
    "libev4",
    "libgnutls30",
    "libgssapi-krb5-2",
    "libhttp-parser2.9",
    "liblz4-1",
    "libmaxminddb0",
    "libnettle8",
    "libnl-3-200",
    "libnl-route-3-200",
    "liboath0",
    "libpam0g",
    "libprotobuf-c1",
    "libradcli4",
    "libreadline8",
    "libseccomp2",
    "libtalloc2",
    "libtasn1-6",
];

/// Whether dpkg has `pkg` installed.
fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

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
    ensure_packages()?;
    ensure_unpacked()
}

/// Daemons the scenarios run that Debian would start on the host if installed, unpacked
/// into `target/` instead: systemd-resolved (installing it points the host's
/// `/etc/resolv.conf` at its stub; `libsystemd-shared` of the same version comes along, so
/// the daemon does not depend on the host's systemd), openssh-server (installing it
/// starts an sshd on the host), ocserv (its package ships an init script and a socket
/// unit listening on the host's port 443) and strongSwan's charon (its package depends on
/// strongswan-starter, the host's IPsec service).
fn ensure_unpacked() -> Result<()> {
    let resolved = tunscope_harness::resolved::root();
    unpack(
        &resolved,
        &tunscope_harness::resolved::daemon(&resolved),
        &["systemd-resolved", "libsystemd-shared"],
    )?;
    let ssh = tunscope_harness::ssh::root();
    unpack(
        &ssh,
        &tunscope_harness::ssh::sshd(&ssh),
        &["openssh-server"],
    )?;
    let ocserv = tunscope_harness::openconnect::root();
    unpack(
        &ocserv,
        &tunscope_harness::openconnect::ocserv(&ocserv),
        &["ocserv"],
    )?;
    let strongswan = tunscope_harness::ipsec::root();
    unpack(
        &strongswan,
        &tunscope_harness::ipsec::charon(&strongswan),
        &["strongswan-charon"],
    )
}

/// Downloads `packages` (all at the first one's candidate version) and unpacks them into
/// `root`, unless `marker` is there already.
fn unpack(root: &std::path::Path, marker: &std::path::Path, packages: &[&str]) -> Result<()> {
    if marker.exists() {
        return Ok(());
    }
    let first = packages.first().context("no package to unpack")?;
    if !nix_is_root() {
        bail!("{first} is not unpacked yet; run as root once (cargo xtask deps)");
    }
    let version = |pkg: &str| -> Option<String> {
        let out = Command::new("apt-cache")
            .args(["show", "--no-all-versions", pkg])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Version: ").map(str::to_owned))
    };
    let v = match version(first) {
        Some(v) => v,
        None => {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
            version(first).with_context(|| format!("apt knows no {first} package"))?
        }
    };
    let debs = root.with_extension("debs");
    std::fs::create_dir_all(&debs)?;
    eprintln!("unpacking {packages:?} {v} into {}", root.display());
    let wanted: Vec<String> = packages.iter().map(|p| format!("{p}={v}")).collect();
    let ok = Command::new("apt-get")
        .current_dir(&debs)
        .args(["download", "-q"])
        .args(&wanted)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("apt-get download {wanted:?} failed");
    }
    for deb in std::fs::read_dir(&debs)? {
        let deb = deb?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            let ok = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(root)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!("dpkg-deb -x {} failed", deb.display());
            }
        }
    }
    if !marker.exists() {
        bail!("the unpacked packages hold no {}", marker.display());
    }
    Ok(())
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|(_, p)| *p)
        .chain(LIBRARIES.iter().copied().filter(|p| !installed(p)))
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
