//! A namespace's network configuration as a user would inspect it — routes, addresses,
//! resolv.conf — recorded before, during and after a tunnel, and compared.

use std::net::IpAddr;

use anyhow::Result;
use serde::Serialize;

use crate::netns::Netns;

/// Routes, addresses and resolver configuration of one namespace at one moment.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct NetState {
    /// `ip -4 route show table main` lines and other tables' routes (`… table N …`), sorted.
    pub routes: Vec<String>,
    /// `ip -6 route show` lines and other tables' routes, sorted.
    pub routes6: Vec<String>,
    /// `<ifname> <address>/<len>` per address, sorted.
    pub addresses: Vec<String>,
    /// resolv.conf as it is inside the namespace.
    pub resolv_conf: String,
}

/// Routes of tables other than `main` and `local` (e.g. strongSwan's table 220, consulted
/// by a policy rule ahead of `main`), each line naming its table.
fn policy_routes(ns: &Netns, family: &str) -> Vec<String> {
    ns.ip(&[family, "route", "show", "table", "all"])
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| {
            let table = l.split_whitespace().skip_while(|w| *w != "table").nth(1);
            table.is_some_and(|t| t != "local" && t != "main")
        })
        .collect()
}

impl NetState {
    /// Records the state of `ns`.
    pub fn record(ns: &Netns) -> Result<NetState> {
        let mut routes: Vec<String> = ns
            .ip(&["-4", "route", "show", "table", "main"])?
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .chain(policy_routes(ns, "-4"))
            .collect();
        routes.sort();
        let mut routes6: Vec<String> = ns
            .ip(&["-6", "route", "show"])
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .chain(policy_routes(ns, "-6"))
            .collect();
        routes6.sort();
        let mut addresses = vec![];
        for line in ns.ip(&["-o", "addr", "show"])?.lines() {
            // "2: eth0    inet 198.18.1.2/24 brd … scope global eth0\ ..."
            let f: Vec<&str> = line.split_whitespace().collect();
            if let (Some(dev), Some(fam), Some(a)) = (f.get(1), f.get(2), f.get(3))
                && (*fam == "inet" || *fam == "inet6")
            {
                addresses.push(format!("{dev} {a}"));
            }
        }
        addresses.sort();
        Ok(NetState {
            routes,
            routes6,
            addresses,
            resolv_conf: ns.resolv_conf(),
        })
    }

    /// The interface holding `ip`, if any.
    pub fn iface_of(&self, ip: IpAddr) -> Option<String> {
        self.addresses.iter().find_map(|l| {
            let (dev, a) = l.split_once(' ')?;
            let addr: IpAddr = a.split('/').next()?.parse().ok()?;
            (addr == ip).then(|| dev.to_owned())
        })
    }

    /// Lines that differ: `- line` only in `self`, `+ line` only in `other`.
    pub fn diff(&self, other: &NetState) -> Vec<String> {
        let mut out = vec![];
        let mut cmp = |what: &str, a: &[String], b: &[String]| {
            for l in a.iter().filter(|l| !b.contains(l)) {
                out.push(format!("- {what}: {l}"));
            }
            for l in b.iter().filter(|l| !a.contains(l)) {
                out.push(format!("+ {what}: {l}"));
            }
        };
        cmp("route", &self.routes, &other.routes);
        cmp("route6", &self.routes6, &other.routes6);
        cmp("address", &self.addresses, &other.addresses);
        let lines = |s: &str| s.lines().map(str::to_owned).collect::<Vec<_>>();
        cmp(
            "resolv.conf",
            &lines(&self.resolv_conf),
            &lines(&other.resolv_conf),
        );
        out
    }
}
