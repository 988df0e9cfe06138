//! `tunscope dns`: the DNS backends as an OpenVPN `up`/`down` script, so stock `openvpn`
//! gets the same resolv.conf handling and split-DNS stub as `tunscope client`:
//!
//! ```text
//! script-security 2
//! up   "/usr/bin/tunscope dns --backend stub --state-file /run/vpn-dns.state"
//! down "/usr/bin/tunscope dns --backend stub --state-file /run/vpn-dns.state"
//! ```
//!
//! OpenVPN passes the pushed options in the environment (`foreign_option_N` for
//! `dhcp-option`, `dns_server_*`/`dns_search_domain_*` for 2.6 `dns`) and `script_type`
//! says which hook runs. `up` applies; for the stub, a daemon (this program again, with
//! `--serve`) keeps the forwarder running until `down` stops it by the pid it recorded. The
//! same state file as the client's makes a crash recoverable (`down`, or the next `up`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tunscope_proto::data::Cipher;
use tunscope_proto::options::push::PushedOptions;

use crate::netconfig::{DnsBackend, NetConfig, recover};

/// Options of `tunscope dns`.
#[derive(Clone, Debug)]
pub struct DnsScriptOptions {
    /// Backend.
    pub backend: DnsBackend,
    /// State file.
    pub state_file: PathBuf,
    /// Run as the stub daemon (internal).
    pub serve: bool,
}

/// Rebuilds the DNS part of the pushed options from OpenVPN's script environment.
pub fn pushed_from_env(env: &[(String, String)]) -> PushedOptions {
    let get = |k: &str| env.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    let mut lines: Vec<String> = vec![];
    for n in 1.. {
        match get(&format!("foreign_option_{n}")) {
            Some(v) => lines.push(v),
            None => break,
        }
    }
    // 2.6 `dns`: dns_server_{prio}_address_{i}, dns_server_{prio}_resolve_domain_{i},
    // dns_search_domain_{i}.
    let mut prios: Vec<i32> = env
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("dns_server_"))
        .filter_map(|r| r.split('_').next()?.parse().ok())
        .collect();
    prios.sort_unstable();
    prios.dedup();
    for prio in prios {
        for i in 1.. {
            match get(&format!("dns_server_{prio}_address_{i}")) {
                Some(a) => lines.push(format!("dns server {prio} address {a}")),
                None => break,
            }
        }
        let domains: Vec<String> = (1..)
            .map_while(|i| get(&format!("dns_server_{prio}_resolve_domain_{i}")))
            .collect();
        if !domains.is_empty() {
            lines.push(format!(
                "dns server {prio} resolve-domains {}",
                domains.join(" ")
            ));
        }
    }
    let search: Vec<String> = (1..)
        .map_while(|i| get(&format!("dns_search_domain_{i}")))
        .collect();
    if !search.is_empty() {
        lines.push(format!("dns search-domains {}", search.join(" ")));
    }
    let mut p = PushedOptions::default();
    for l in &lines {
        // An option this build does not know is skipped, as OpenVPN's scripts do.
        if let Err(e) = p.apply(l, &Cipher::ALL) {
            tracing::warn!("ignoring '{l}': {e}");
        }
    }
    for r in &p.refused {
        tracing::warn!("pushed option refused: {r}");
    }
    p
}

fn pid_path(state: &Path) -> PathBuf {
    state.with_extension("pid")
}

/// Runs `tunscope dns`.
pub fn run(opts: &DnsScriptOptions) -> Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    if opts.serve {
        return serve(opts, &env);
    }
    let script_type = env
        .iter()
        .find(|(k, _)| k == "script_type")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    match script_type {
        "up" => up(opts, &env),
        "down" => down(opts),
        "" => bail!("run me as OpenVPN's up/down script (script_type is not set)"),
        other => bail!("unexpected script_type '{other}' (use as up and down script)"),
    }
}

/// The tunnel device OpenVPN names in the script's environment.
fn dev(env: &[(String, String)]) -> &str {
    env.iter()
        .find(|(k, _)| k == "dev")
        .map_or("", |(_, v)| v.as_str())
}

fn up(opts: &DnsScriptOptions, env: &[(String, String)]) -> Result<()> {
    // Leftovers of a crashed earlier session first.
    stop_daemon(&opts.state_file);
    recover(&opts.state_file, None)?;
    match opts.backend {
        DnsBackend::None => Ok(()),
        DnsBackend::ResolvConf | DnsBackend::Resolved | DnsBackend::Dnsmasq => {
            let p = pushed_from_env(env);
            // Applied and recorded; `down` restores from the state file (resolv.conf, the
            // resolved link reverted, dnsmasq stopped). dnsmasq runs on in its own session.
            let nc = NetConfig::apply_dns_only(&p, opts.backend, dev(env), &opts.state_file)?;
            // Stays applied after this process: `down` restores it from the state file.
            std::mem::forget(nc);
            Ok(())
        }
        DnsBackend::Stub => {
            let exe = std::env::current_exe().context("own path")?;
            let log = opts.state_file.with_extension("log");
            let logf = std::fs::File::create(&log)
                .with_context(|| format!("cannot create {}", log.display()))?;
            let mut cmd = Command::new(exe);
            cmd.args(["dns", "--serve", "--backend", "stub", "--state-file"])
                .arg(&opts.state_file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(logf));
            // Its own session: OpenVPN's signals to its process group do not reach it; `down`
            // stops it by pid.
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
            let mut child = cmd.spawn().context("starting the DNS stub daemon")?;
            let out = child.stdout.take().context("daemon stdout")?;
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line)?;
            if line.trim() != "ready" {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "DNS stub daemon failed: {}",
                    std::fs::read_to_string(&log).unwrap_or_default().trim()
                );
            }
            Ok(())
        }
    }
}

fn serve(opts: &DnsScriptOptions, env: &[(String, String)]) -> Result<()> {
    use std::io::Write;
    let p = pushed_from_env(env);
    let nc = NetConfig::apply_dns_only(&p, opts.backend, dev(env), &opts.state_file)?;
    let pid_file = pid_path(&opts.state_file);
    std::fs::write(&pid_file, std::process::id().to_string())
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    println!("ready");
    std::io::stdout().flush()?;
    let _ = signals.forever().next();
    nc.undo();
    let _ = std::fs::remove_file(&pid_file);
    Ok(())
}

/// Stops a stub daemon recorded next to the state file (SIGTERM, then waits up to 3 s).
fn stop_daemon(state: &Path) {
    let pid_file = pid_path(state);
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    // Only a process that is still our daemon (its command line says so).
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("--serve") {
        let _ = std::fs::remove_file(&pid_file);
        return;
    }
    // SAFETY: plain kill(2) on the pid we recorded.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&pid_file);
}

fn down(opts: &DnsScriptOptions) -> Result<()> {
    stop_daemon(&opts.state_file);
    recover(&opts.state_file, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netconfig::{pushed_domains, pushed_servers};

    #[test]
    fn openvpn_environment_back_to_options() {
        let env: Vec<(String, String)> = [
            ("foreign_option_1", "dhcp-option DNS 198.19.10.53"),
            ("foreign_option_2", "dhcp-option DOMAIN corp.example"),
            ("foreign_option_3", "dhcp-option WEIRD x"),
            ("dev", "tun0"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let p = pushed_from_env(&env);
        assert_eq!(
            pushed_servers(&p),
            vec!["198.19.10.53".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(pushed_domains(&p).0, vec!["corp.example"]);

        let env: Vec<(String, String)> = [
            ("dns_server_0_address_1", "198.19.10.53"),
            ("dns_server_0_resolve_domain_1", "corp.example"),
            ("dns_server_0_resolve_domain_2", "lab.example"),
            ("dns_search_domain_1", "corp.example"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let p = pushed_from_env(&env);
        assert_eq!(pushed_servers(&p).len(), 1);
        assert_eq!(pushed_domains(&p).0, vec!["corp.example", "lab.example"]);
    }
}
