//! The desktop's DNS stack in a scenario's client namespace: a real `systemd-resolved` with a
//! D-Bus system bus of its own, so VPN clients configure it as they would on a laptop
//! (org.freedesktop.resolve1 over D-Bus) and the namespace's resolv.conf points at its stub
//! (127.0.0.53), as Debian's and Ubuntu's do.
//!
//! Nothing of the host's is touched: the daemon runs in a mount namespace of its own
//! (`unshare -m`) with a tmpfs over `/run` (its runtime files and configuration drop-in), its
//! service user added to a private copy of `/etc/passwd` bind-mounted there, and the bus
//! socket in the run's directory. The binaries come from Debian's packages unpacked into
//! `target/systemd-resolved/` by `cargo xtask deps` (installing the package would point the
//! host's `/etc/resolv.conf` at its stub).
//!
//! Its configuration keeps it inside the scenario's network: no fallback servers (the
//! compiled-in ones are public resolvers), no LLMNR/mDNS multicast, no DNSSEC, no cache (every
//! question reaches a server, so the DNS transcript shows where each went).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::process::Proc;

/// Where `cargo xtask deps` unpacks the packages (`TUNSCOPE_RESOLVED_ROOT` overrides).
pub fn root() -> PathBuf {
    unpacked_root("TUNSCOPE_RESOLVED_ROOT", "systemd-resolved")
}

/// `target/NAME` of the workspace, where `cargo xtask deps` unpacks a package (the
/// environment variable `var` overrides).
pub fn unpacked_root(var: &str, name: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map_or_else(|| PathBuf::from("target"), |p| p.join("target"))
                .join(name)
        },
        PathBuf::from,
    )
}

/// The daemon binary inside [`root`].
pub fn daemon(root: &Path) -> PathBuf {
    root.join("lib/systemd/systemd-resolved")
}

const DROP_IN: &str = "[Resolve]
DNS=
FallbackDNS=
Domains=
LLMNR=no
MulticastDNS=no
DNSSEC=no
DNSOverTLS=no
Cache=no
DNSStubListener=yes
ReadEtcHosts=no
";

const BUS_CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=@BUS@</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#;

/// A running systemd-resolved with its bus.
pub struct Resolved {
    proc: Proc,
    /// The bus socket (`DBUS_SYSTEM_BUS_ADDRESS=unix:path=…` for its clients).
    pub bus: PathBuf,
    root: PathBuf,
    /// The resolv.conf it writes: its stub and the search domains of every link.
    pub stub_resolv_conf: PathBuf,
}

impl Resolved {
    /// Starts the bus and the daemon in `ns`, files in `dir`; returns once `resolvectl`
    /// gets answers.
    pub fn start(ns: &Netns, dir: &Path) -> Result<Resolved> {
        let root = root();
        if !daemon(&root).exists() {
            bail!(
                "no systemd-resolved at {} (cargo xtask deps unpacks it)",
                daemon(&root).display()
            );
        }
        let dir = dir.join("resolved");
        std::fs::create_dir_all(&dir)?;
        let bus = dir.join("bus");
        // A Unix socket path has at most 107 bytes.
        if bus.as_os_str().len() > 100 {
            bail!("{} is too long for a socket path", bus.display());
        }
        // systemd-resolved's runtime directory, owned by its user (991 in the private passwd).
        let rundir = dir.join("run");
        std::fs::create_dir_all(&rundir)?;
        nix::unistd::chown(
            &rundir,
            Some(nix::unistd::Uid::from_raw(991)),
            Some(nix::unistd::Gid::from_raw(991)),
        )
        .with_context(|| format!("cannot hand {} to systemd-resolve", rundir.display()))?;
        let bus_conf = dir.join("bus.conf");
        std::fs::write(
            &bus_conf,
            BUS_CONFIG.replace("@BUS@", &bus.display().to_string()),
        )?;
        let script = dir.join("start.sh");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
# systemd-resolved with a D-Bus of its own, in a private mount namespace (tunscope harness).
set -e
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/systemd/resolved.conf.d /run/systemd/resolve
# Its runtime directory is the run's, so the namespace's resolv.conf can link to the
# stub-resolv.conf it keeps up to date (search domains included), as a desktop's does.
mount --bind {rundir} /run/systemd/resolve
cat > /run/systemd/resolved.conf.d/tunscope.conf <<'EOF'
{DROP_IN}EOF
cp /etc/passwd {dir}/passwd
cp /etc/group {dir}/group
grep -q '^systemd-resolve:' {dir}/passwd || echo 'systemd-resolve:x:991:991:systemd Resolver:/:/usr/sbin/nologin' >> {dir}/passwd
grep -q '^systemd-resolve:' {dir}/group || echo 'systemd-resolve:x:991:' >> {dir}/group
mount --bind {dir}/passwd /etc/passwd
mount --bind {dir}/group /etc/group
rm -f {bus}
dbus-daemon --nofork --nopidfile --config-file={bus_conf} &
BUS_PID=$!
i=0
while [ ! -S {bus} ] && [ $i -lt 200 ]; do sleep 0.02; i=$((i+1)); done
DBUS_SYSTEM_BUS_ADDRESS=unix:path={bus} LD_LIBRARY_PATH={lib} {daemon} &
RESOLVED_PID=$!
trap 'kill $RESOLVED_PID $BUS_PID 2>/dev/null; wait; exit 0' TERM INT
wait $RESOLVED_PID || true
kill $BUS_PID 2>/dev/null
wait
"#,
                dir = dir.display(),
                rundir = rundir.display(),
                bus = bus.display(),
                bus_conf = bus_conf.display(),
                lib = root.join("usr/lib/x86_64-linux-gnu/systemd").display(),
                daemon = daemon(&root).display(),
            ),
        )?;
        let mut cmd = ns.command("unshare");
        cmd.args(["-m", "--propagation", "private", "sh"])
            .arg(&script);
        let proc = Proc::spawn("systemd-resolved", cmd, &dir.join("resolved.log"))
            .context("starting systemd-resolved")?;
        let r = Resolved {
            proc,
            bus,
            root,
            stub_resolv_conf: rundir.join("stub-resolv.conf"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if r.resolvectl(ns, &["status"]).is_ok() && r.stub_resolv_conf.exists() {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!(
                    "systemd-resolved did not answer on its bus within 10 s:\n{}",
                    crate::process::tail(
                        &std::fs::read_to_string(dir.join("resolved.log")).unwrap_or_default(),
                        15
                    )
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `DBUS_SYSTEM_BUS_ADDRESS` for processes that talk to this daemon.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.bus.display())
    }

    /// Runs `resolvectl ARGS` in `ns` against this daemon; its output, or an error with it.
    pub fn resolvectl(&self, ns: &Netns, args: &[&str]) -> Result<String> {
        let out = ns
            .command(&self.root.join("usr/bin/resolvectl").display().to_string())
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .env(
                "LD_LIBRARY_PATH",
                self.root.join("usr/lib/x86_64-linux-gnu/systemd"),
            )
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .output()
            .context("cannot run resolvectl")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("resolvectl {}: {}", args.join(" "), text.trim());
        }
        Ok(text)
    }

    /// What NetworkManager does for the uplink: its DNS server on the link, which takes
    /// names no other link claims.
    pub fn configure_uplink(&self, ns: &Netns, dev: &str, dns: &[String]) -> Result<()> {
        let mut args = vec!["dns", dev];
        args.extend(dns.iter().map(String::as_str));
        self.resolvectl(ns, &args)?;
        self.resolvectl(ns, &["default-route", dev, "yes"])?;
        Ok(())
    }

    /// Stops the daemon and its bus.
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(3));
    }
}
