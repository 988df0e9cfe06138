//! The automatic leak oracle: every scenario run, without declaring anything, fails when
//! the client's underlay carries in clear what the tunnel should have carried.
//!
//! - A packet on a client interface other than the tunnel device (and `lo`), while the
//!   tunnel was up, whose far end the client's own routing table (recorded while the tunnel
//!   was up) sends into the tunnel: outgoing by destination, incoming by source. The lookup is
//!   the kernel's: the longest matching prefix of the main table wins, so the host route to
//!   the VPN server via the WAN exempts the tunnel's own packets from a `def1` redirect.
//! - A DNS question for a name under a domain the server pushes (`dhcp-option DOMAIN`,
//!   `DOMAIN-SEARCH`, `dns … resolve-domains`) on such an interface while the tunnel was up.
//!
//! Declared `leak` checks stay for more (allow-lists, DNS of any name, before/after).

use std::net::IpAddr;

use tunscope_capture::packet::{self, L3};

use crate::capture::Frame;

/// A route of the client's main table, as `ip route` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    net: IpAddr,
    len: u8,
    dev: Option<String>,
    metric: u32,
}

/// Parses `ip -4 route` / `ip -6 route` lines (types like `unreachable` have no device).
fn parse_route(line: &str) -> Option<Route> {
    let mut w: Vec<&str> = line.split_whitespace().collect();
    if matches!(
        w.first().copied(),
        Some("unreachable" | "blackhole" | "prohibit" | "throw")
    ) {
        w.remove(0);
    }
    let dst = *w.first()?;
    let (net, len) = match dst {
        "default" => {
            let v6 = w.iter().any(|t| t.contains(':'));
            if v6 {
                (IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0)
            } else {
                (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
            }
        }
        d => match d.split_once('/') {
            Some((a, l)) => (a.parse().ok()?, l.parse().ok()?),
            None => {
                let a: IpAddr = d.parse().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        },
    };
    let after = |key: &str| w.iter().position(|t| *t == key).and_then(|i| w.get(i + 1));
    Some(Route {
        net,
        len,
        dev: after("dev").map(|d| (*d).to_owned()),
        metric: after("metric").and_then(|m| m.parse().ok()).unwrap_or(0),
    })
}

fn covers(r: &Route, a: IpAddr) -> bool {
    match (r.net, a) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let m = if r.len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(r.len.min(32)))
            };
            u32::from(n) & m == u32::from(a) & m
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let m = if r.len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(r.len.min(128)))
            };
            u128::from(n) & m == u128::from(a) & m
        }
        _ => false,
    }
}

/// The client's routing decisions while the tunnel was up.
pub struct Table {
    routes: Vec<Route>,
    tunnel_devs: Vec<String>,
}

impl Table {
    /// From the recorded route lines (both families) and the tunnel's device names.
    pub fn new(lines: &[String], tunnel_devs: &[String]) -> Table {
        Table {
            routes: lines.iter().filter_map(|l| parse_route(l)).collect(),
            tunnel_devs: tunnel_devs.to_vec(),
        }
    }

    /// The device the longest matching prefix (then the lowest metric) sends `a` to.
    fn dev_for(&self, a: IpAddr) -> Option<&str> {
        self.routes
            .iter()
            .filter(|r| covers(r, a))
            .max_by(|x, y| x.len.cmp(&y.len).then(y.metric.cmp(&x.metric)))
            .and_then(|r| r.dev.as_deref())
    }

    /// Whether the tunnel carries traffic to `a`.
    pub fn tunneled(&self, a: IpAddr) -> bool {
        self.dev_for(a)
            .is_some_and(|d| self.tunnel_devs.iter().any(|t| t == d))
    }
}

/// Domains a pushed option makes the tunnel's (`dhcp-option DOMAIN x`, `DOMAIN-SEARCH x`,
/// `dns search-domains x`, `dns server N resolve-domains x …`).
pub fn pushed_domains(pushes: &[String]) -> Vec<String> {
    let mut out = vec![];
    for p in pushes {
        let w: Vec<&str> = p.split_whitespace().collect();
        let take = match w.as_slice() {
            [
                "dhcp-option",
                "DOMAIN" | "DOMAIN-SEARCH" | "ADAPTER_DOMAIN_SUFFIX",
                rest @ ..,
            ] => rest,
            ["dns", "search-domains", rest @ ..] => rest,
            ["dns", "server", _, "resolve-domains", rest @ ..] => rest,
            _ => &[],
        };
        out.extend(take.iter().map(|d| {
            d.trim_start_matches('~')
                .trim_end_matches('.')
                .to_ascii_lowercase()
        }));
    }
    out.sort();
    out.dedup();
    out
}

/// Addresses no route decides about: link-local, multicast, broadcast, unspecified.
fn on_link_only(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => {
            v.is_link_local() || v.is_multicast() || v.is_broadcast() || v.is_unspecified()
        }
        IpAddr::V6(v) => {
            v.is_multicast() || v.is_unspecified() || (v.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// What the oracle found.
#[derive(Clone, Debug, Default)]
pub struct Finding {
    /// Packets inspected on the underlay while the tunnel was up.
    pub inspected: usize,
    /// Offending packets, described (all of them counted, the first ones kept).
    pub leaks: Vec<String>,
    /// How many offended.
    pub count: usize,
}

/// Judges the client's underlay frames between `from_ns` and `to_ns`.
pub fn judge(
    frames: &[Frame],
    underlay: &[String],
    table: &Table,
    domains: &[String],
    from_ns: u64,
    to_ns: u64,
) -> Finding {
    let mut f = Finding::default();
    let start = frames.first().map_or(0, |x| x.ts_ns);
    for fr in frames
        .iter()
        .filter(|x| underlay.contains(&x.iface) && x.ts_ns >= from_ns && x.ts_ns <= to_ns)
    {
        f.inspected += 1;
        let p = packet::parse(fr.link, &fr.data);
        let L3::Ip(h) = &p.l3 else { continue };
        let far = if fr.outgoing == Some(false) {
            h.src
        } else {
            h.dst
        };
        let why = if on_link_only(far) {
            // Link-local and multicast addresses belong to the link, not to a route.
            None
        } else if table.tunneled(far) {
            Some(format!("{far} is routed into the tunnel"))
        } else if let Some(d) = p.dns().filter(|d| !d.response) {
            domains
                .iter()
                .find(|dom| d.name == **dom || d.name.ends_with(&format!(".{dom}")))
                .map(|dom| format!("a question for {} (pushed domain {dom})", d.name))
        } else {
            None
        };
        if let Some(why) = why {
            f.count += 1;
            if f.leaks.len() < 5 {
                f.leaks.push(format!(
                    "+{:.3}s {} {} {}: {why}",
                    fr.ts_ns.saturating_sub(start) as f64 / 1e9,
                    fr.iface,
                    if fr.outgoing == Some(false) {
                        "in"
                    } else {
                        "out"
                    },
                    p.describe()
                ));
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let lines: Vec<String> = [
            "0.0.0.0/1 via 198.19.0.1 dev tun0",
            "128.0.0.0/1 via 198.19.0.1 dev tun0",
            "default via 198.18.1.1 dev eth0",
            "198.18.1.0/24 dev eth0 proto kernel scope link src 198.18.1.2",
            "198.18.2.2 via 198.18.1.1 dev eth0",
            "198.19.0.0/24 dev tun0 proto kernel scope link src 198.19.0.2",
            "2001:db8:10::/64 dev tun0 metric 1024 pref medium",
            "fe80::/64 dev eth0 proto kernel metric 256 pref medium",
            "default via 2001:db8:1::1 dev eth0 metric 1024 pref medium",
            "unreachable 198.51.100.0/24",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        Table::new(&lines, &["tun0".to_owned()])
    }

    #[test]
    fn the_longest_prefix_decides() {
        let t = table();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(t.tunneled(ip("198.18.100.80")), "def1 covers the internet");
        assert!(
            !t.tunneled(ip("198.18.2.2")),
            "the server's host route wins"
        );
        assert!(!t.tunneled(ip("198.18.1.1")), "the LAN stays on eth0");
        assert!(t.tunneled(ip("2001:db8:10::80")));
        assert!(!t.tunneled(ip("2001:db8:100::80")), "IPv6 default on eth0");
        assert!(
            !t.tunneled(ip("198.51.100.7")),
            "an unreachable route has no device"
        );
        assert!(on_link_only(ip("fe80::1")) && on_link_only(ip("ff02::16")));
        assert!(on_link_only(ip("224.0.0.22")) && !on_link_only(ip("198.19.10.80")));
    }

    /// A raw IPv4/UDP DNS query for `name` from the client's WAN address.
    fn dns_query(name: &str) -> Frame {
        let mut dns = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            dns.push(label.len() as u8);
            dns.extend_from_slice(label.as_bytes());
        }
        dns.extend_from_slice(&[0, 0, 1, 0, 1]);
        let total = 28 + dns.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ];
        p.extend_from_slice(&[198, 18, 1, 2, 198, 18, 100, 53]);
        p.extend_from_slice(&[0xc0, 0x00, 0, 53, 0, (8 + dns.len()) as u8, 0, 0]);
        p.extend_from_slice(&dns);
        Frame {
            iface: "client/eth0".into(),
            link: tunscope_capture::file::LinkType::Raw,
            ts_ns: 10,
            outgoing: Some(true),
            orig_len: p.len() as u32,
            data: p,
            comment: None,
        }
    }

    #[test]
    fn questions_for_pushed_domains_on_the_underlay_are_leaks() {
        let t = Table::new(
            &["default via 198.18.1.1 dev eth0".to_owned()],
            &["tun0".to_owned()],
        );
        let domains = vec!["corp.example".to_owned()];
        let under = vec!["client/eth0".to_owned()];
        let frames = vec![
            dns_query("intranet.corp.example"),
            dns_query("www.example.com"),
            dns_query("corp.example"),
        ];
        let f = judge(&frames, &under, &t, &domains, 0, 100);
        assert_eq!((f.inspected, f.count), (3, 2), "{:?}", f.leaks);
        assert!(f.leaks[0].contains("intranet.corp.example (pushed domain corp.example)"));
        // Outside the tunnel's time nothing counts.
        assert_eq!(judge(&frames, &under, &t, &domains, 11, 100).inspected, 0);
    }

    #[test]
    fn pushed_domains_from_every_form() {
        let pushes: Vec<String> = [
            "dhcp-option DOMAIN corp.example",
            "dhcp-option DOMAIN-SEARCH Lab.Example.",
            "dns server 0 resolve-domains ~a.example b.example",
            "route 198.19.10.0 255.255.255.0",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(
            pushed_domains(&pushes),
            ["a.example", "b.example", "corp.example", "lab.example"]
        );
    }
}
