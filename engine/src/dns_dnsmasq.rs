//! The `dnsmasq` DNS backend, as NetworkManager's `dns=dnsmasq` does it: a dnsmasq of our
//! own on 127.0.0.1:53 that sends the pushed domains to the tunnel's servers
//! (`--server=/corp.example/198.19.10.53`) and every other name to the resolvers configured
//! before (or, for a full tunnel, everything to the tunnel's servers); resolv.conf then
//! names 127.0.0.1 with the pushed search domains.
//!
//! dnsmasq runs in its own session (a client's or OpenVPN's signals do not reach it) with no
//! cache, so every question reaches a server. Its pid goes into the state file *before* it
//! is trusted to serve; undo, or recovery after a crash, stops it only when that pid is
//! still a dnsmasq with our pid file on its command line.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// What dnsmasq is told.
pub struct DnsmasqConfig<'a> {
    /// The tunnel's servers.
    pub servers: &'a [IpAddr],
    /// Domains sent to them (ignored for a full tunnel).
    pub split: &'a [String],
    /// The resolvers configured before (everything else goes there).
    pub previous: &'a [IpAddr],
    /// Every name goes to the tunnel's servers.
    pub full_tunnel: bool,
    /// dnsmasq's pid file (its command line names it: how recovery recognises it).
    pub pid_file: &'a Path,
}

/// The running dnsmasq, as the state file records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsmasqRecord {
    /// Its pid.
    pub pid: i32,
    /// Its pid file.
    pub pid_file: PathBuf,
}

/// dnsmasq's command line for `cfg`.
pub fn args(cfg: &DnsmasqConfig<'_>) -> Vec<String> {
    let mut a: Vec<String> = [
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--port=53",
        "--conf-file=/dev/null",
        "--cache-size=0",
        "--log-facility=-",
    ]
    .map(str::to_owned)
    .to_vec();
    a.push(format!("--pid-file={}", cfg.pid_file.display()));
    if cfg.full_tunnel {
        a.extend(cfg.servers.iter().map(|s| format!("--server={s}")));
    } else {
        for d in cfg.split {
            for s in cfg.servers {
                a.push(format!("--server=/{d}/{s}"));
            }
        }
        a.extend(
            cfg.previous
                .iter()
                .filter(|s| !s.is_loopback())
                .map(|s| format!("--server={s}")),
        );
    }
    a
}

/// A dnsmasq we started.
pub struct Dnsmasq {
    child: Child,
    /// What the state file holds of it.
    pub record: DnsmasqRecord,
}

impl Dnsmasq {
    /// Starts dnsmasq and waits until it has bound its port (its pid file appears), at most
    /// 5 s. `on_spawn` records it before it serves.
    pub fn start(
        cfg: &DnsmasqConfig<'_>,
        on_spawn: impl FnOnce(&DnsmasqRecord) -> Result<()>,
    ) -> Result<Dnsmasq> {
        if cfg.servers.is_empty() || cfg.servers.iter().any(|s| s.is_loopback()) {
            bail!("dnsmasq backend: no usable tunnel name server");
        }
        let _ = std::fs::remove_file(cfg.pid_file);
        let log = cfg.pid_file.with_extension("log");
        let logf = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(crate::netconfig::system_program("dnsmasq"));
        {
            use std::os::unix::process::CommandExt;
            // argv[0] as recovery recognises it, whatever the path.
            cmd.arg0("dnsmasq");
        }
        cmd.args(args(cfg))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(logf));
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .context("cannot start dnsmasq (Debian: apt-get install dnsmasq-base)")?;
        let record = DnsmasqRecord {
            pid: child.id() as i32,
            pid_file: cfg.pid_file.to_owned(),
        };
        if let Err(e) = on_spawn(&record) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cfg.pid_file.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "dnsmasq exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default().trim()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("dnsmasq did not start within 5 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Dnsmasq { child, record })
    }

    /// Stops it (SIGTERM, then SIGKILL after 2 s) and reaps it.
    pub fn stop(mut self) {
        stop_recorded(&self.record);
        let _ = self.child.wait();
    }
}

/// Stops the dnsmasq a state file recorded, only if that pid is still a dnsmasq with our
/// pid file on its command line (a pid reused by another program is left alone).
pub fn stop_recorded(r: &DnsmasqRecord) {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", r.pid)).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    let ours = cmdline.starts_with("dnsmasq")
        && cmdline.contains(&format!("--pid-file={}", r.pid_file.display()));
    if !ours {
        let _ = std::fs::remove_file(&r.pid_file);
        return;
    }
    // SAFETY: kill(2) on the pid we started and just recognised.
    unsafe { libc::kill(r.pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Path::new(&format!("/proc/{}/cmdline", r.pid)).exists()
        && std::fs::read(format!("/proc/{}/cmdline", r.pid)).is_ok_and(|c| !c.is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    if std::fs::read(format!("/proc/{}/cmdline", r.pid)).is_ok_and(|c| !c.is_empty()) {
        // SAFETY: as above.
        unsafe { libc::kill(r.pid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(&r.pid_file);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_domains_go_to_the_tunnel_the_rest_to_the_previous_resolvers() {
        let servers = ["198.19.10.53".parse().expect("ip")];
        let previous = [
            "198.18.100.53".parse().expect("ip"),
            "127.0.0.1".parse().expect("ip"),
        ];
        let split = ["corp.example".to_owned()];
        let pid = Path::new("/run/x.dnsmasq.pid");
        let mut cfg = DnsmasqConfig {
            servers: &servers,
            split: &split,
            previous: &previous,
            full_tunnel: false,
            pid_file: pid,
        };
        let a = args(&cfg);
        assert!(a.contains(&"--server=/corp.example/198.19.10.53".to_owned()));
        assert!(a.contains(&"--server=198.18.100.53".to_owned()));
        // Our own loopback is never an upstream (it would loop).
        assert!(
            !a.iter()
                .any(|x| x.contains("127.0.0.1") && x.starts_with("--server"))
        );
        assert!(a.contains(&"--pid-file=/run/x.dnsmasq.pid".to_owned()));
        cfg.full_tunnel = true;
        let a = args(&cfg);
        assert!(a.contains(&"--server=198.19.10.53".to_owned()));
        assert!(!a.iter().any(|x| x.contains("198.18.100.53")));
    }
}
