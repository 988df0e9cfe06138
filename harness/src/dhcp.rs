//! A DHCP client on a namespace's interface, as a bridged VPN's user runs one on the tap
//! device once the tunnel is up (OpenVPN leaves the address of a `server-bridge` client to
//! the LAN's DHCP server: it pushes `route-gateway dhcp` and no `ifconfig`).
//!
//! busybox's `udhcpc` asks; its event script (written here) applies only the address: no
//! default route and no resolv.conf, so nothing outside the namespace's interface changes
//! and the lease is recorded for the report.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// What the DHCP server handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Address.
    pub address: String,
    /// Netmask.
    pub netmask: String,
    /// Name servers.
    pub dns: String,
    /// Domain.
    pub domain: String,
    /// How long asking took.
    pub took: Duration,
}

/// Brings `dev` up in `ns` and obtains a lease for it (at most ~15 s); files go to `dir`.
/// With `routes`, the lease's classless static routes (option 121) are applied too, as
/// NetworkManager and dhclient do.
pub fn lease(ns: &Netns, dev: &str, dir: &Path, routes: bool) -> Result<Lease> {
    let script = dir.join("dhcp-client.sh");
    let record = dir.join("dhcp-lease.txt");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# udhcpc event hook: the address and, when asked for, classless static\n# routes (option 121); no default route, no resolv.conf.\n\
             case \"$1\" in\n\
             bound|renew)\n\
             \tip addr replace \"$ip/$subnet\" dev \"$interface\"\n\
             \tset -- $staticroutes\n\
             \twhile [ $# -ge 2 ]; do ip route replace \"$1\" via \"$2\" dev \"$interface\"; shift 2; done\n\
             \tprintf '%s\\n%s\\n%s\\n%s\\n' \"$ip\" \"$subnet\" \"$dns\" \"$domain\" > '{}'\n\
             \t;;\n\
             esac\n",
            record.display()
        ),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    ns.ip(&["link", "set", dev, "up"])?;
    let started = Instant::now();
    let out = ns
        .command("udhcpc")
        .args(["-i", dev, "-f", "-q", "-n", "-t", "6", "-T", "2", "-s"])
        .arg(&script)
        .args(if routes {
            &["-O", "staticroutes"][..]
        } else {
            &[]
        })
        .output()
        .context("cannot run udhcpc")?;
    let took = started.elapsed();
    let text = std::fs::read_to_string(&record).unwrap_or_default();
    let mut l = text.lines().map(str::to_owned);
    let lease = Lease {
        address: l.next().unwrap_or_default(),
        netmask: l.next().unwrap_or_default(),
        dns: l.next().unwrap_or_default(),
        domain: l.next().unwrap_or_default(),
        took,
    };
    if !out.status.success() || lease.address.is_empty() {
        bail!(
            "no DHCP lease on {dev} after {:.1} s: udhcpc {}\n{}{}",
            took.as_secs_f64(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(lease)
}
