//! The client side of the VPNs that push nothing (WireGuard, ssh -w), set up as their
//! users' scripts do it, from what an OpenVPN server of the same scenario would push:
//! routes into the tunnel (and a host route to the server over the WAN for a full tunnel),
//! DNS through `tunscope dns` given OpenVPN's script environment (`foreign_option_N`), and
//! both undone when the client stops.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::process::Proc;

/// What the client's routes and AllowedIPs are made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    /// Prefixes sent into the tunnel.
    pub prefixes: Vec<(Ipv4Addr, u8)>,
    /// `redirect-gateway def1`: the server needs a host route over the WAN.
    pub full_tunnel: bool,
}

/// The client's routes from what an OpenVPN server would push.
pub fn routes_from_push(push: &[String]) -> Routes {
    let mut r = Routes {
        prefixes: vec![],
        full_tunnel: false,
    };
    for p in push {
        let w: Vec<&str> = p.split_whitespace().collect();
        match w.as_slice() {
            ["route", net, mask, ..] => {
                if let (Ok(n), Ok(m)) = (net.parse::<Ipv4Addr>(), mask.parse::<Ipv4Addr>()) {
                    let len = u32::from(m).leading_ones() as u8;
                    r.prefixes.push((n, len));
                }
            }
            ["redirect-gateway", rest @ ..] if rest.contains(&"def1") => {
                r.full_tunnel = true;
                r.prefixes.push((Ipv4Addr::new(0, 0, 0, 0), 1));
                r.prefixes.push((Ipv4Addr::new(128, 0, 0, 0), 1));
            }
            _ => {}
        }
    }
    r
}

/// Where the two ends live.
pub struct Ends<'a> {
    /// The client's namespace.
    pub client: &'a Netns,
    /// The server's namespace.
    pub server: &'a Netns,
    /// The server's address on the client's path (the endpoint).
    pub endpoint: Ipv4Addr,
    /// The client's gateway toward it (a full tunnel's host route), when there is one.
    pub gateway: Option<Ipv4Addr>,
    /// The run's namespace prefix (device names derive from it).
    pub prefix: &'a str,
}

impl<'a> Ends<'a> {
    /// The client and server of a scenario's network (the server at its WAN address, the
    /// client's gateway the router).
    pub fn in_network(net: &'a crate::network::Network) -> Ends<'a> {
        Ends {
            client: &net.client,
            server: &net.server,
            endpoint: crate::network::addr::SERVER_WAN,
            gateway: Some(crate::network::addr::ROUTER_CLIENT_SIDE),
            prefix: &net.prefix,
        }
    }
}

/// How the client applies pushed DNS: `tunscope dns --backend BACKEND` (or not at all).
pub struct DnsHook<'a> {
    /// The tunscope binary.
    pub bin: &'a Path,
    /// `stub`, `resolv-conf`, …
    pub backend: &'a str,
    /// Its state file.
    pub state: PathBuf,
}

/// A running tunnel of one of these VPNs: both ends' processes and what the harness set up
/// on the client, undone when the client stops.
pub struct Tunnel {
    /// The client's process.
    pub client: Proc,
    /// The server's.
    pub server: Proc,
    /// Routes and DNS set up on the client.
    pub net: ClientNet,
    /// How the client's user disconnects before the client stops (a command line run in the
    /// host's namespaces), when stopping the process is not how it is done: strongSwan's
    /// `swanctl --terminate` completes the IKE DELETE exchange while both ends still listen.
    pub disconnect: Option<Vec<String>>,
}

impl Tunnel {
    /// Both ends running, nothing set up on the client yet (dropping it stops both).
    pub fn new(client: Proc, server: Proc) -> Tunnel {
        Tunnel {
            client,
            server,
            net: ClientNet::none(),
            disconnect: None,
        }
    }

    /// Takes the client down as its user would: the DNS hook's `down`, the client stopped
    /// (its device and the routes on it go too), then the host route to the server.
    pub fn stop_client(&mut self, ns: &Netns) {
        if let Some((prog, args)) = self
            .disconnect
            .take()
            .as_ref()
            .and_then(|c| c.split_first())
        {
            // Bounded by the command's own timeout; a failure leaves the stop to do it.
            let _ = std::process::Command::new(prog).args(args).output();
        }
        self.net.before_stop(ns);
        self.client.stop(Duration::from_secs(5));
        self.net.after_stop(ns);
    }

    /// Stops the server.
    pub fn stop_server(&mut self) {
        self.server.stop(Duration::from_secs(5));
    }

    /// Waits (polling every 20 ms) until `ready` holds for the client's process; fails with
    /// "`what` within N s" and the client's log tail at `deadline` or when the client exits.
    pub fn wait_until(
        &mut self,
        deadline: Instant,
        what: &str,
        mut ready: impl FnMut(&Proc) -> bool,
    ) -> Result<()> {
        let started = Instant::now();
        while !ready(&self.client) {
            if Instant::now() > deadline || !self.client.is_running() {
                bail!(
                    "{what} within {} s:\n{}",
                    deadline.saturating_duration_since(started).as_secs(),
                    crate::process::tail(&self.client.log(), 10)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// What was set up on the client, to be undone.
pub struct ClientNet {
    host_route: Option<String>,
    /// The hook's command line and the tunnel device it was given.
    dns_hook: Option<(PathBuf, Vec<String>, String)>,
}

impl ClientNet {
    /// Nothing set up yet.
    pub fn none() -> ClientNet {
        ClientNet {
            host_route: None,
            dns_hook: None,
        }
    }

    /// Routes into the tunnel device `dev` (and the host route), then the DNS hook's `up`.
    pub fn apply(
        ends: &Ends<'_>,
        dev: &str,
        routes: &Routes,
        push: &[String],
        dns: Option<DnsHook<'_>>,
    ) -> Result<ClientNet> {
        let mut net = ClientNet::none();
        if routes.full_tunnel
            && let Some(gw) = ends.gateway
        {
            let r = format!("{} via {gw} dev eth0", ends.endpoint);
            run(
                ends.client,
                "ip",
                &["route", "add"]
                    .into_iter()
                    .chain(r.split_whitespace())
                    .collect::<Vec<_>>(),
            )?;
            net.host_route = Some(r);
        }
        for (n, l) in &routes.prefixes {
            run(
                ends.client,
                "ip",
                &["route", "add", &format!("{n}/{l}"), "dev", dev],
            )?;
        }
        if let Some(h) = dns {
            let args = vec![
                "dns".to_owned(),
                "--backend".to_owned(),
                h.backend.to_owned(),
                "--state-file".to_owned(),
                h.state.display().to_string(),
            ];
            let mut cmd = ends.client.command(&h.bin.display().to_string());
            cmd.args(&args).env("script_type", "up").env("dev", dev);
            for (i, p) in push.iter().enumerate() {
                cmd.env(format!("foreign_option_{}", i + 1), p);
            }
            let o = cmd.output().context("tunscope dns (up)")?;
            if !o.status.success() {
                bail!(
                    "tunscope dns --backend {} (up): {}",
                    h.backend,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            net.dns_hook = Some((h.bin.to_owned(), args, dev.to_owned()));
        }
        Ok(net)
    }

    /// Before the tunnel goes: the DNS hook's `down`.
    pub fn before_stop(&mut self, ns: &Netns) {
        if let Some((bin, args, dev)) = self.dns_hook.take() {
            let _ = ns
                .command(&bin.display().to_string())
                .args(&args)
                .env("script_type", "down")
                .env("dev", dev)
                .output();
        }
    }

    /// After it went (its device took its routes along): the host route.
    pub fn after_stop(&mut self, ns: &Netns) {
        if let Some(r) = self.host_route.take() {
            let _ = ns
                .command("ip")
                .args(["route", "del"])
                .args(r.split_whitespace())
                .output();
        }
    }
}

/// Runs `prog args` in `ns`; its stdout, or an error with its stderr.
pub fn run(ns: &Netns, prog: &str, args: &[&str]) -> Result<String> {
    let out = ns
        .command(prog)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pings `to` from `ns` until it answers (at most `within`).
pub fn wait_for_ping(ns: &Netns, to: Ipv4Addr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let p = crate::traffic::ping(ns, &to.to_string(), 1, 56, false)?;
        if p.received > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no ping through the tunnel to {to} within {} s",
                within.as_secs()
            );
        }
    }
}

/// Moves `dev` to the name `tun0`, gives it `ip`/24 and brings it up.
pub fn up_as_tun0(ns: &Netns, dev: &str, ip: Ipv4Addr) -> Result<()> {
    if dev != "tun0" {
        run(ns, "ip", &["link", "set", dev, "name", "tun0"])?;
    }
    run(
        ns,
        "ip",
        &["addr", "add", &format!("{ip}/24"), "dev", "tun0"],
    )?;
    run(ns, "ip", &["link", "set", "tun0", "up"])?;
    Ok(())
}
