//! OpenSSH's tunnel as a scenario subject: `ssh -w 0:0 -o Tunnel=point-to-point` from the
//! client to an sshd with `PermitTunnel` in the server namespace — the layer-3 VPN every
//! Linux host already has. Both ends get a `tun0`; the harness gives them the tunnel
//! network's addresses and, on the client, the routes and DNS the scenario's pushes describe
//! ([`crate::p2p`]), as a user's script around `ssh -w` would.
//!
//! In ethernet mode (`-o Tunnel=ethernet`, a scenario with `dev = "tap"` and a bridged
//! topology) both ends get a `tap0`: on the server sshd attaches to the persistent `tap0`
//! that is a port of the corp LAN's bridge, and the client's `tap0` is only brought up — its
//! address comes from the LAN's DHCP server through the tunnel, as for a bridged OpenVPN.
//!
//! sshd comes from Debian's openssh-server package, unpacked (not installed: installing
//! would start an sshd on the host) into `target/openssh-server/` by `cargo xtask deps`. It
//! runs in a mount namespace of its own: a tmpfs on `/run` for its privilege-separation
//! directory, its `sshd` user in a private copy of `/etc/passwd`. Keys are made per run.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::network::addr;
use crate::p2p::{
    ClientNet, DnsHook, Ends, Tunnel, routes_from_push, run, up_as_tun0, wait_for_ping,
};
use crate::process::Proc;

/// Where `cargo xtask deps` unpacks openssh-server (`TUNSCOPE_SSHD_ROOT` overrides).
pub fn root() -> PathBuf {
    crate::resolved::unpacked_root("TUNSCOPE_SSHD_ROOT", "openssh-server")
}

/// The sshd binary inside [`root`].
pub fn sshd(root: &Path) -> PathBuf {
    root.join("usr/sbin/sshd")
}

fn keygen(path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .context("cannot run ssh-keygen")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A running `ssh -w` tunnel.
pub struct Ssh;

impl Ssh {
    /// Sets up both ends anywhere (`ethernet`: `tap0` devices, see the module text).
    pub fn between(
        ends: &Ends<'_>,
        push: &[String],
        dns: Option<DnsHook<'_>>,
        out: &Path,
        within: Duration,
        ethernet: bool,
    ) -> Result<Tunnel> {
        let (mode, dev) = if ethernet {
            ("ethernet", "tap0")
        } else {
            ("point-to-point", "tun0")
        };
        let root = root();
        if !sshd(&root).exists() {
            bail!(
                "no sshd at {} (cargo xtask deps unpacks it)",
                sshd(&root).display()
            );
        }
        let dir = out.join("ssh");
        std::fs::create_dir_all(&dir)?;
        let (host, key) = (dir.join("host"), dir.join("client"));
        keygen(&host)?;
        keygen(&key)?;
        std::fs::copy(key.with_extension("pub"), dir.join("authorized_keys"))?;
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {endpoint}\nPort 22\nHostKey {host}\nPermitRootLogin prohibit-password\n\
                 AuthorizedKeysFile {dir}/authorized_keys\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 PermitTunnel {mode}\nStrictModes no\nPidFile none\nLogLevel VERBOSE\n",
                endpoint = ends.endpoint,
                host = host.display(),
                dir = dir.display(),
            ),
        )?;
        let script = dir.join("start.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n# sshd in a private mount namespace (tunscope harness).\nset -e\n\
                 mount -t tmpfs -o mode=755 tmpfs /run\nmkdir -p /run/sshd\n\
                 cp /etc/passwd {dir}/passwd\n\
                 grep -q '^sshd:' {dir}/passwd || echo 'sshd:x:992:65534::/run/sshd:/usr/sbin/nologin' >> {dir}/passwd\n\
                 mount --bind {dir}/passwd /etc/passwd\n\
                 exec {sshd} -D -e -f {config}\n",
                dir = dir.display(),
                sshd = sshd(&root).display(),
                config = config.display(),
            ),
        )?;
        let mut cmd = ends.server.command("unshare");
        cmd.args(["-m", "--propagation", "private", "sh"])
            .arg(&script);
        let mut server = Proc::spawn("sshd", cmd, &out.join("server.log"))?;
        server
            .wait_for_log("Server listening", Duration::from_secs(10))
            .context("sshd did not start")?;

        let mut cmd = ends.client.command("ssh");
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(&key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                &format!("Tunnel={mode}"),
                "-w",
                "0:0",
                "-N",
            ])
            .arg(format!("root@{}", ends.endpoint));
        let client = Proc::spawn("ssh -w", cmd, &out.join("client.log"))?;
        // Owned from here, so an error below stops both processes.
        let mut ssh = Tunnel::new(client, server);
        // ssh creates the devices on both ends once the channel is open (a persistent tap0
        // on the server exists already: wait for sshd to have opened it instead).
        let deadline = Instant::now() + within;
        let opened = |ns: &Netns| {
            if ethernet && std::ptr::eq(ns, ends.server) {
                // A persistent tap has no carrier until a process attaches to it.
                run(ns, "ip", &["link", "show", dev]).is_ok_and(|l| l.contains("LOWER_UP"))
            } else {
                run(ns, "ip", &["link", "show", dev]).is_ok()
            }
        };
        for ns in [ends.client, ends.server] {
            ssh.wait_until(deadline, &format!("ssh -w made no {dev}"), |_| opened(ns))?;
        }
        if ethernet {
            // A LAN station: the address comes from the LAN's DHCP server over the tunnel.
            run(ends.client, "ip", &["link", "set", dev, "up"])?;
            ssh.net = ClientNet::apply(ends, dev, &routes_from_push(push), push, dns)?;
            return Ok(ssh);
        }
        let server_ip = Ipv4Addr::from(u32::from(addr::TUNNEL_NET) + 1);
        let client_ip = Ipv4Addr::from(u32::from(addr::TUNNEL_NET) + 2);
        up_as_tun0(ends.server, "tun0", server_ip)?;
        up_as_tun0(ends.client, "tun0", client_ip)?;
        ssh.net = ClientNet::apply(ends, "tun0", &routes_from_push(push), push, dns)?;
        wait_for_ping(ends.client, server_ip, within)?;
        Ok(ssh)
    }
}
