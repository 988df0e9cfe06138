//! The scenario network: the canonical topology of DESIGN.md, built from namespaces, with
//! its services.
//!
//! ```text
//!  client            router ("internet")                server                 corp
//!  eth0 198.18.1.2 ── c0 198.18.1.1 | s0 198.18.2.1 ── eth0 198.18.2.2   lan0 198.19.10.1 ── eth0 198.19.10.53, .80
//!  tun0 198.19.0.x    lo: 198.18.100.53 public DNS       tun0 198.19.0.1                     corp DNS (corp.example)
//!                         198.18.100.80 public web       web 198.18.2.2:80                   corp web
//! ```
//!
//! The corporate LAN reaches the internet through the server's NAT (always); tunnel clients
//! do only when the scenario asks for it (`server_nat`, full tunnel). The router knows no
//! route to 198.19.0.0/16, as the internet would not. IPv6 is switched off in every namespace
//! so captures hold only what the scenario caused (no router solicitations or MLD).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::netns::{self, Netns};
use crate::services::dns::{DnsConfig, DnsServer};
use crate::services::web::WebServer;

/// Addresses of the canonical topology.
pub mod addr {
    use std::net::Ipv4Addr;
    /// Client's WAN address.
    pub const CLIENT_WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    /// Router on the client side (client's default gateway).
    pub const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
    /// Router on the server side.
    pub const ROUTER_SERVER_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
    /// The VPN server's public address.
    pub const SERVER_WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
    /// Public DNS resolver.
    pub const PUBLIC_DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 53);
    /// Public web server.
    pub const PUBLIC_WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 80);
    /// Server's address on the corporate LAN.
    pub const CORP_GW: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 1);
    /// Corporate DNS resolver.
    pub const CORP_DNS: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 53);
    /// Corporate web server.
    pub const CORP_WEB: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 80);
    /// The tunnel network (server .1, clients from .2).
    pub const TUNNEL_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
    /// The corporate LAN.
    pub const CORP_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 0);

    /// IPv6 (dual-stack topology): every link gets a /64 of 2001:db8::/32 whose third
    /// group reads like the IPv4 link's third octet (client LAN `1`, server LAN `2`, corp
    /// `10`, public services `100`), hosts keep their IPv4 host part (`::53`, `::80`).
    pub mod v6 {
        use std::net::Ipv6Addr;
        const fn a(link: u16, host: u16) -> Ipv6Addr {
            Ipv6Addr::new(0x2001, 0xdb8, link, 0, 0, 0, 0, host)
        }
        /// Client's WAN address.
        pub const CLIENT_WAN: Ipv6Addr = a(1, 2);
        /// Router on the client side.
        pub const ROUTER_CLIENT_SIDE: Ipv6Addr = a(1, 1);
        /// Router on the server side.
        pub const ROUTER_SERVER_SIDE: Ipv6Addr = a(2, 1);
        /// The VPN server's public address.
        pub const SERVER_WAN: Ipv6Addr = a(2, 2);
        /// Public DNS resolver.
        pub const PUBLIC_DNS: Ipv6Addr = a(0x100, 0x53);
        /// Public web server.
        pub const PUBLIC_WEB: Ipv6Addr = a(0x100, 0x80);
        /// Server's address on the corporate LAN.
        pub const CORP_GW: Ipv6Addr = a(0x10, 1);
        /// Corporate DNS resolver.
        pub const CORP_DNS: Ipv6Addr = a(0x10, 0x53);
        /// Corporate web server.
        pub const CORP_WEB: Ipv6Addr = a(0x10, 0x80);
        /// The corporate LAN (/64).
        pub const CORP_NET: Ipv6Addr = a(0x10, 0);
        /// The tunnel's IPv6 network (/64) when the server has `server-ipv6`.
        pub const TUNNEL_NET: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0);
    }
    /// WAN address of client `i` (2–4, `[topology] clients`): each further client has an
    /// access link of its own, `198.18.(i+1).0/24` (the first client's is `198.18.1.0/24`).
    pub const fn more_client_wan(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, i + 1, 2)
    }
    /// The router's address on client `i`'s access link.
    pub const fn more_client_gateway(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, i + 1, 1)
    }
    /// The second VPN server's public address (`servers = 2`), on a link of its own.
    pub const SERVER2_WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 12, 2);
    /// The router on the second server's link.
    pub const ROUTER_SERVER2_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 12, 1);
    /// The second server's address on its link to the corp LAN.
    pub const SERVER2_LAN: Ipv4Addr = Ipv4Addr::new(198, 19, 11, 1);
    /// The corp host's address on that link.
    pub const CORP_TO_SERVER2: Ipv4Addr = Ipv4Addr::new(198, 19, 11, 10);
    /// The second server's tunnel network (its clients' addresses tell which server they use).
    pub const TUNNEL2_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 0);
    /// The LAN behind the client (`client_lan`): the client's `lan0`, its gateway.
    pub const HOME_GW: Ipv4Addr = Ipv4Addr::new(198, 19, 20, 1);
    /// A host on the LAN behind the client (`home`, with a web server).
    pub const HOME_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 20, 10);
    /// The LAN behind the client.
    pub const HOME_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 20, 0);
    /// First address the corp LAN's DHCP server leases (bridged topology).
    pub const DHCP_FIRST: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 100);
    /// Last address it leases.
    pub const DHCP_LAST: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 150);
}

/// The server's tap device in the bridged topology (created persistent, a port of `br0`;
/// the VPN server opens it by name).
pub const BRIDGE_TAP: &str = "tap0";

/// Hosts in the order they appear in reports and captures.
pub const HOSTS: [&str; 4] = ["client", "router", "server", "corp"];

/// The most VPN clients a topology has (`[topology] clients`).
pub const MAX_CLIENTS: u8 = 4;

/// A host a scenario may name: the canonical four, or a further client `client2`….
pub fn is_host_name(h: &str) -> bool {
    HOSTS.contains(&h)
        || h == "home"
        || h == "server2"
        || h.strip_prefix("client")
            .and_then(|n| n.parse::<u8>().ok())
            .is_some_and(|n| (2..=MAX_CLIENTS).contains(&n))
}

/// Topology options of a scenario.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopologySpec {
    /// MTU of the router's interface toward the server (the server itself keeps 1500 and
    /// is not told): a smaller transit link in the middle of the path.
    #[serde(default)]
    pub underlay_mtu: Option<u16>,
    /// The router drops the ICMP "fragmentation needed" messages it would send (a PMTU
    /// black hole).
    #[serde(default)]
    pub icmp_blackhole: bool,
    /// The server masquerades tunnel clients to its public address (full tunnel).
    #[serde(default)]
    pub server_nat: bool,
    /// An impaired link (loss, delay, reordering, …; the client's WAN link unless its
    /// `link` says `server` or `corp`): a `wire` namespace bridges it in userspace (see
    /// [`crate::impair`]).
    #[serde(default)]
    pub impair: Option<crate::impair::LinkImpairment>,
    /// A bridged VPN (OpenVPN's `server-bridge`): the server's `tap0` and its corp LAN port
    /// are joined on a Linux bridge `br0` that holds the server's corp address, and a DHCP
    /// server (dnsmasq) on the corp LAN hands out [`addr::DHCP_FIRST`]…[`addr::DHCP_LAST`],
    /// to tunnel clients too. Needs `dev = "tap"` in `[tunnel]`.
    #[serde(default)]
    pub bridge: bool,
    /// Dual stack: IPv6 on every link beside IPv4 ([`addr::v6`]), public and corp DNS and
    /// web over IPv6 too (AAAA records), routers forwarding IPv6. Off: IPv6 is disabled
    /// in every namespace.
    #[serde(default)]
    pub ipv6: bool,
    /// The client's DNS stack is a desktop's: a real systemd-resolved ([`crate::resolved`])
    /// with a D-Bus of its own, resolv.conf pointing at its stub 127.0.0.53, and the WAN
    /// link's DNS (the public resolver) given to it over D-Bus as NetworkManager does.
    #[serde(default)]
    pub resolved: bool,
    /// A hostile DHCP server on the client's LAN (TunnelVision, CVE-2024-3661): the router's
    /// LAN side leases the client its own address with these prefixes as classless static
    /// routes via the router (option 121), and the client's DHCP client applies them before
    /// the VPN starts. Prefixes inside 198.18.0.0/15.
    #[serde(default)]
    pub rogue_dhcp_routes: Vec<String>,
    /// A hostile LAN claiming a public prefix (TunnelCrack's LocalNet): the client's eth0 also
    /// gets the prefix's `.2` as its LAN address, and the LAN's gateway (the router) reaches
    /// it there, so every host of the prefix is on-link for the client. Inside 198.18.0.0/15.
    #[serde(default)]
    pub rogue_lan_prefix: Option<String>,
    /// With `rogue_lan_prefix`: the hostile LAN's gateway is inside the claimed prefix (its
    /// `.1`, the router) and the client's default route goes through it, as when the LAN's
    /// DHCP server hands out the prefix as the LAN itself. `redirect-gateway block-local`
    /// then finds that prefix as the local network and routes it into the tunnel.
    #[serde(default)]
    pub rogue_lan_gateway: bool,
    /// A hostile network spoofing the VPN server's name (TunnelCrack's ServerIP): the
    /// resolver the client asks answers `vpn.example.com` with this address, and the
    /// on-path router forwards the VPN's port there to the real server, so the tunnel works
    /// and the client's route "to its server" sends this address around the tunnel. The
    /// client connects by name (`remote vpn.example.com`). Inside 198.18.0.0/15.
    #[serde(default)]
    pub spoofed_server_dns: Option<Ipv4Addr>,
    /// VPN clients (1–4). The first is `client`, where checks run; `client2`… each reach the
    /// router over an access link of their own ([`addr::more_client_wan`]), run the same
    /// subject with a certificate of their own, and are named by `from` in ping checks and
    /// traffic.
    #[serde(default)]
    pub clients: Option<u8>,
    /// A LAN behind the client (site-to-site): a `home` namespace at
    /// [`addr::HOME_HOST`] (with a web server) whose gateway is the client's `lan0`
    /// ([`addr::HOME_GW`]); the client forwards, and the server routes
    /// [`addr::HOME_NET`]/24 to it (`route` + the client's `iroute` in a
    /// `client-config-dir`), so corp and home reach each other through the tunnel.
    #[serde(default)]
    pub client_lan: bool,
    /// VPN servers (1–2). A second, `server2`, for failover: its own link to the router
    /// ([`addr::SERVER2_WAN`]) and to the corp host ([`addr::SERVER2_LAN`]), its own tunnel
    /// network ([`addr::TUNNEL2_NET`]); the client lists it as a second `remote`.
    #[serde(default)]
    pub servers: Option<u8>,
}

/// The namespaces and services of one scenario run.
pub struct Network {
    /// Run prefix.
    pub prefix: String,
    /// Client namespace.
    pub client: Netns,
    /// Router ("internet") namespace.
    pub router: Netns,
    /// VPN server namespace.
    pub server: Netns,
    /// Corporate LAN namespace.
    pub corp: Netns,
    /// The impairment's namespace on the impaired link (with `impair` only).
    pub wire: Option<Netns>,
    /// Further VPN clients `client2`… (`clients` in the topology), with their host names.
    pub more_clients: Vec<(String, Netns)>,
    /// The LAN behind the client (`client_lan`).
    pub home: Option<Netns>,
    /// The second VPN server (`servers = 2`).
    pub server2: Option<Netns>,
    /// DNS servers (public, corp).
    pub dns: Vec<DnsServer>,
    /// Web servers (public, corp, on the VPN host).
    pub web: Vec<WebServer>,
    /// The corp LAN's DHCP server (bridged topology).
    pub dhcp: Option<crate::process::Proc>,
    /// The client's systemd-resolved (`resolved = true`).
    pub resolved: Option<crate::resolved::Resolved>,
    /// Dual stack (the services answer over IPv6 too).
    pub ipv6: bool,
    /// What the public resolver answers for `vpn.example.com` (the server, unless spoofed).
    pub vpn_name_at: Ipv4Addr,
}

/// A DHCP-only dnsmasq (no DNS, no daemon, no system files) on `iface` in `ns`, with
/// `options` for what it hands out, its leases and log at the given paths.
fn dhcp_server(
    ns: &Netns,
    iface: &str,
    options: &[String],
    leases: &Path,
    log: &Path,
) -> Result<crate::process::Proc> {
    let mut cmd = ns.command("dnsmasq");
    cmd.args([
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",
        "--bind-interfaces",
        "--user=root",
        "--group=root",
        "--pid-file=",
        "--log-dhcp",
        "--log-facility=-",
        "--dhcp-authoritative",
        // No ping before an offer (a 3 s wait, and echoes that are not the client's).
        "--no-ping",
    ])
    .arg(format!("--interface={iface}"))
    .args(options)
    .arg(format!("--dhcp-leasefile={}", leases.display()));
    crate::process::Proc::spawn("dnsmasq", cmd, log)
}

/// Offloads that make the kernel build super-packets: off, so each frame is one datagram.
const WIRE_SIZED: &[&str] = &["tso", "gso", "gro", "tx-udp-segmentation"];

/// `ethtool -K DEV FEATURE off …` inside `ns`.
fn ethtool_off(ns: &Netns, dev: &str, features: &[&str]) -> Result<()> {
    let mut args = vec!["netns", "exec", ns.name(), "ethtool", "-K", dev];
    for f in features {
        args.extend([*f, "off"]);
    }
    netns::sh("ip", &args).map(|_| ())
}

/// A namespace of the run with IPv6 switched off (captures hold only what the scenario caused).
fn ipv4_host(prefix: &str, role: &str) -> Result<Netns> {
    let ns = Netns::create(prefix, role)?;
    ipv6_off(&ns)?;
    Ok(ns)
}

fn ipv6_off(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
}

fn ip(ns: &Netns, args: &str) -> Result<()> {
    let a: Vec<&str> = args.split_whitespace().collect();
    ns.ip(&a).map(|_| ())
}

impl Network {
    /// Builds the namespaces, links, addresses, routes and firewall rules.
    pub fn build(spec: &TopologySpec) -> Result<Network> {
        use addr::*;
        netns::require_root()?;
        netns::cleanup_stale();
        let prefix = netns::run_prefix();
        let client = Netns::create(&prefix, "client")?;
        let router = Netns::create(&prefix, "router")?;
        let server = Netns::create(&prefix, "server")?;
        let corp = Netns::create(&prefix, "corp")?;
        for ns in [&client, &router, &server, &corp] {
            if spec.ipv6 {
                // Addresses usable at once (no duplicate detection), no autoconfiguration
                // and no router solicitations: only what the scenario causes.
                for scope in ["all", "default"] {
                    ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")?;
                    ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_ra"), "0")?;
                    ns.sysctl(&format!("net.ipv6.conf.{scope}.router_solicitations"), "0")?;
                }
            } else {
                ipv6_off(ns)?;
            }
        }
        // With an impairment its link runs through `wire` (`near` ↔ `far`, near facing the
        // client's end of the path), which forwards frames itself; every link else is one veth.
        use crate::impair::ImpairedLink;
        let impaired = spec.impair.as_ref().map(|i| i.link);
        let wire = match &spec.impair {
            Some(i) => {
                i.validate()?;
                Some(ipv4_host(&prefix, "wire")?)
            }
            None => None,
        };
        let links = [
            (ImpairedLink::Client, (&client, "eth0"), (&router, "c0")),
            (ImpairedLink::Server, (&router, "s0"), (&server, "eth0")),
            (ImpairedLink::Corp, (&server, "lan0"), (&corp, "eth0")),
        ];
        for (link, (a, a_if), (b, b_if)) in links {
            match &wire {
                Some(w) if impaired == Some(link) => {
                    netns::veth(a, a_if, w, "near")?;
                    netns::veth(w, "far", b, b_if)?;
                    for dev in ["near", "far"] {
                        ethtool_off(w, dev, WIRE_SIZED)?;
                        ip(w, &format!("link set {dev} promisc on"))?;
                    }
                    // Frames the element reads with AF_PACKET must carry their checksums:
                    // a veth leaves them to be filled in later (checksum offload), and a
                    // frame sent on from userspace would then arrive with a wrong one.
                    ethtool_off(a, a_if, &["tx"])?;
                    ethtool_off(b, b_if, &["tx"])?;
                }
                _ => netns::veth(a, a_if, b, b_if)?,
            }
        }
        let home = if spec.client_lan {
            let h = ipv4_host(&prefix, "home")?;
            netns::veth(&client, "lan0", &h, "eth0")?;
            ethtool_off(&client, "lan0", WIRE_SIZED)?;
            ethtool_off(&h, "eth0", WIRE_SIZED)?;
            ip(&client, &format!("addr add {HOME_GW}/24 dev lan0"))?;
            ip(&h, &format!("addr add {HOME_HOST}/24 dev eth0"))?;
            ip(&h, &format!("route add default via {HOME_GW}"))?;
            client.sysctl("net.ipv4.ip_forward", "1")?;
            h.set_resolv_conf(&format!("nameserver {PUBLIC_DNS}\n"))?;
            Some(h)
        } else {
            None
        };
        let server2 = if spec.servers == Some(2) {
            let s2 = ipv4_host(&prefix, "server2")?;
            netns::veth(&router, "s2", &s2, "eth0")?;
            netns::veth(&s2, "lan0", &corp, "eth1")?;
            for (ns, dev) in [
                (&router, "s2"),
                (&s2, "eth0"),
                (&s2, "lan0"),
                (&corp, "eth1"),
            ] {
                ethtool_off(ns, dev, WIRE_SIZED)?;
            }
            ip(
                &router,
                &format!("addr add {ROUTER_SERVER2_SIDE}/24 dev s2"),
            )?;
            ip(&s2, &format!("addr add {SERVER2_WAN}/24 dev eth0"))?;
            ip(&s2, &format!("route add default via {ROUTER_SERVER2_SIDE}"))?;
            ip(&s2, &format!("addr add {SERVER2_LAN}/24 dev lan0"))?;
            // The corp services live on the corp host's first link; it answers for them on
            // this one too, and sends the second tunnel's replies back this way.
            ip(
                &s2,
                &format!("route add {CORP_NET}/24 via {CORP_TO_SERVER2}"),
            )?;
            ip(&corp, &format!("addr add {CORP_TO_SERVER2}/24 dev eth1"))?;
            ip(
                &corp,
                &format!("route add {TUNNEL2_NET}/24 via {SERVER2_LAN}"),
            )?;
            s2.sysctl("net.ipv4.ip_forward", "1")?;
            s2.set_resolv_conf(&format!("nameserver {PUBLIC_DNS}\n"))?;
            Some(s2)
        } else {
            None
        };
        let mut more_clients = vec![];
        for i in 2..=spec.clients.unwrap_or(1) {
            let host = format!("client{i}");
            let ns = ipv4_host(&prefix, &host)?;
            let port = format!("c{i}");
            netns::veth(&ns, "eth0", &router, &port)?;
            ethtool_off(&ns, "eth0", WIRE_SIZED)?;
            ethtool_off(&router, &port, WIRE_SIZED)?;
            ip(&ns, &format!("addr add {}/24 dev eth0", more_client_wan(i)))?;
            ip(
                &ns,
                &format!("route add default via {}", more_client_gateway(i)),
            )?;
            ip(
                &router,
                &format!("addr add {}/24 dev {port}", more_client_gateway(i)),
            )?;
            ns.set_resolv_conf(&format!("nameserver {PUBLIC_DNS}\n"))?;
            more_clients.push((host, ns));
        }
        // Wire-sized packets on every link, as on a real path: without segmentation
        // offloads the kernel cuts TCP and UDP-GSO super-packets before the capture sees
        // them, so each captured frame is one datagram (one OpenVPN packet per UDP frame).
        for (ns, dev) in [
            (&client, "eth0"),
            (&router, "c0"),
            (&router, "s0"),
            (&server, "eth0"),
            (&server, "lan0"),
            (&corp, "eth0"),
        ] {
            ethtool_off(ns, dev, WIRE_SIZED)?;
        }

        ip(&client, &format!("addr add {CLIENT_WAN}/24 dev eth0"))?;
        ip(
            &client,
            &format!("route add default via {ROUTER_CLIENT_SIDE}"),
        )?;

        ip(&router, &format!("addr add {ROUTER_CLIENT_SIDE}/24 dev c0"))?;
        ip(&router, &format!("addr add {ROUTER_SERVER_SIDE}/24 dev s0"))?;
        ip(&router, &format!("addr add {PUBLIC_DNS}/32 dev lo"))?;
        ip(&router, &format!("addr add {PUBLIC_WEB}/32 dev lo"))?;
        router.sysctl("net.ipv4.ip_forward", "1")?;

        ip(&server, &format!("addr add {SERVER_WAN}/24 dev eth0"))?;
        ip(
            &server,
            &format!("route add default via {ROUTER_SERVER_SIDE}"),
        )?;
        if spec.bridge {
            // As OpenVPN's bridge-start script: a persistent tap joined with the LAN port
            // on a bridge, which takes the server's LAN address.
            ip(&server, &format!("tuntap add dev {BRIDGE_TAP} mode tap"))?;
            // No multicast on the bridge: its IGMP reports come at times of their own and
            // would make runs differ.
            ip(&server, "link add br0 type bridge mcast_snooping 0")?;
            ip(&server, "link set br0 multicast off")?;
            for port in ["lan0", BRIDGE_TAP] {
                ip(&server, &format!("link set {port} master br0"))?;
                ip(&server, &format!("link set {port} up"))?;
            }
            ip(&server, "link set br0 up")?;
            ip(&server, &format!("addr add {CORP_GW}/24 dev br0"))?;
        } else {
            ip(&server, &format!("addr add {CORP_GW}/24 dev lan0"))?;
        }
        server.sysctl("net.ipv4.ip_forward", "1")?;

        ip(&corp, &format!("addr add {CORP_DNS}/24 dev eth0"))?;
        ip(&corp, &format!("addr add {CORP_WEB}/24 dev eth0"))?;
        ip(&corp, &format!("route add default via {CORP_GW}"))?;

        if spec.ipv6 {
            use v6::*;
            ip(
                &client,
                &format!("-6 addr add {CLIENT_WAN}/64 dev eth0 nodad"),
            )?;
            ip(
                &client,
                &format!("-6 route add default via {ROUTER_CLIENT_SIDE}"),
            )?;
            ip(
                &router,
                &format!("-6 addr add {ROUTER_CLIENT_SIDE}/64 dev c0 nodad"),
            )?;
            ip(
                &router,
                &format!("-6 addr add {ROUTER_SERVER_SIDE}/64 dev s0 nodad"),
            )?;
            ip(&router, &format!("-6 addr add {PUBLIC_DNS}/128 dev lo"))?;
            ip(&router, &format!("-6 addr add {PUBLIC_WEB}/128 dev lo"))?;
            router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            ip(
                &server,
                &format!("-6 addr add {SERVER_WAN}/64 dev eth0 nodad"),
            )?;
            ip(
                &server,
                &format!("-6 route add default via {ROUTER_SERVER_SIDE}"),
            )?;
            let lan = if spec.bridge { "br0" } else { "lan0" };
            ip(
                &server,
                &format!("-6 addr add {CORP_GW}/64 dev {lan} nodad"),
            )?;
            server.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            ip(&corp, &format!("-6 addr add {CORP_DNS}/64 dev eth0 nodad"))?;
            ip(&corp, &format!("-6 addr add {CORP_WEB}/64 dev eth0 nodad"))?;
            ip(&corp, &format!("-6 route add default via {CORP_GW}"))?;
        }
        if let Some(mtu) = spec.underlay_mtu {
            // Only the router's side: the server keeps 1500 and does not know, like two hosts
            // behind a smaller transit link. Toward the server, larger packets need
            // fragmenting (or an ICMP "fragmentation needed" when DF is set); from the
            // server, what exceeds it is dropped silently — a black hole either way.
            ip(&router, &format!("link set s0 mtu {mtu}"))?;
            // A veth accepts a few bytes over its MTU (VLAN slack); make the link exact.
            router.nft(&format!(
                "table inet ts_link {{\n\tchain from_server {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n\
                 \t\tiifname \"s0\" ip length > {mtu} counter drop\n\t}}\n}}\n"
            ))?;
        }
        if spec.icmp_blackhole {
            // Locally generated ICMP errors pass the output hook; forwarded ones the forward
            // hook. Counters make the drops visible with `nft list ruleset`.
            router.nft(
                "table inet ts_blackhole {\n\
                 \tchain icmp_out {\n\t\ttype filter hook output priority 0; policy accept;\n\
                 \t\ticmp type destination-unreachable icmp code frag-needed counter drop\n\t}\n\
                 \tchain icmp_forward {\n\t\ttype filter hook forward priority 0; policy accept;\n\
                 \t\ticmp type destination-unreachable icmp code frag-needed counter drop\n\t}\n\
                 }\n",
            )?;
        }
        if let Some(spoof) = spec.spoofed_server_dns {
            // The attacker on the path: the VPN's port at the spoofed address reaches the
            // real server (replies are un-NATed by conntrack).
            router.nft(&format!(
                "table ip ts_serverip {{\n\tchain pre {{ type nat hook prerouting priority -100; policy accept;\n\
                 \t\tip daddr {spoof} udp dport 1194 counter dnat to {SERVER_WAN}\n\
                 \t\tip daddr {spoof} tcp dport 1194 counter dnat to {SERVER_WAN}\n\t}}\n}}\n"
            ))?;
        }
        let mut nat = format!(
            "table ip ts_nat {{\n\tchain post {{ type nat hook postrouting priority 100; policy accept;\n\
             \t\tip saddr {CORP_NET}/24 oifname \"eth0\" masquerade\n"
        );
        if spec.server_nat {
            nat.push_str(&format!(
                "\t\tip saddr {TUNNEL_NET}/24 oifname \"eth0\" masquerade\n"
            ));
        }
        nat.push_str("\t}\n}\n");
        if spec.ipv6 && spec.server_nat {
            // Full tunnel over IPv6 too: the internet has no route to the tunnel's prefix.
            nat.push_str(&format!(
                "table ip6 ts_nat6 {{\n\tchain post {{ type nat hook postrouting priority 100; policy accept;\n\
                 \t\tip6 saddr {}/64 oifname \"eth0\" masquerade\n\t}}\n}}\n",
                v6::TUNNEL_NET
            ));
        }
        server.nft(&nat)?;

        let public_resolver = format!("nameserver {PUBLIC_DNS}\n");
        client.set_resolv_conf(&public_resolver)?;
        router.set_resolv_conf(&public_resolver)?;
        server.set_resolv_conf(&public_resolver)?;
        corp.set_resolv_conf(&format!("nameserver {CORP_DNS}\nsearch corp.example\n"))?;

        Ok(Network {
            prefix,
            client,
            router,
            server,
            corp,
            wire,
            more_clients,
            home,
            server2,
            dns: vec![],
            web: vec![],
            dhcp: None,
            resolved: None,
            ipv6: spec.ipv6,
            vpn_name_at: spec.spoofed_server_dns.unwrap_or(SERVER_WAN),
        })
    }

    /// Starts the DNS and web servers (over IPv6 too, with AAAA records, when dual-stack).
    pub fn start_services(&mut self) -> Result<()> {
        use addr::*;
        let v6 = self.ipv6;
        let records =
            |list: &[(&str, Ipv4Addr, std::net::Ipv6Addr)]| -> BTreeMap<String, Vec<IpAddr>> {
                list.iter()
                    .map(|(n, a4, a6)| {
                        let mut addrs = vec![IpAddr::V4(*a4)];
                        if v6 {
                            addrs.push(IpAddr::V6(*a6));
                        }
                        ((*n).to_owned(), addrs)
                    })
                    .collect()
            };
        let public = records(&[
            ("www.example.com", PUBLIC_WEB, v6::PUBLIC_WEB),
            ("vpn.example.com", self.vpn_name_at, v6::SERVER_WAN),
        ]);
        let corp = records(&[
            ("intranet.corp.example", CORP_WEB, v6::CORP_WEB),
            ("dns.corp.example", CORP_DNS, v6::CORP_DNS),
        ]);
        let mut listen = vec![(IpAddr::V4(PUBLIC_DNS), IpAddr::V4(CORP_DNS))];
        if v6 {
            listen.push((IpAddr::V6(v6::PUBLIC_DNS), IpAddr::V6(v6::CORP_DNS)));
        }
        for (public_at, corp_at) in listen {
            self.dns.push(
                DnsServer::start(
                    &self.router,
                    DnsConfig {
                        label: "public-dns".into(),
                        listen: public_at,
                        records: public.clone(),
                        upstream: None,
                    },
                )
                .context("public DNS")?,
            );
            self.dns.push(
                DnsServer::start(
                    &self.corp,
                    DnsConfig {
                        label: "corp-dns".into(),
                        listen: corp_at,
                        records: corp.clone(),
                        upstream: Some(SocketAddr::new(IpAddr::V4(PUBLIC_DNS), 53)),
                    },
                )
                .context("corp DNS")?,
            );
        }
        let mut webs = vec![
            (&self.router, "public-web", IpAddr::V4(PUBLIC_WEB)),
            (&self.corp, "corp-web", IpAddr::V4(CORP_WEB)),
            (&self.server, "vpn-host-web", IpAddr::V4(SERVER_WAN)),
        ];
        if let Some(h) = &self.home {
            webs.push((h, "home-web", IpAddr::V4(HOME_HOST)));
        }
        if v6 {
            webs.extend([
                (&self.router, "public-web", IpAddr::V6(v6::PUBLIC_WEB)),
                (&self.corp, "corp-web", IpAddr::V6(v6::CORP_WEB)),
                (&self.server, "vpn-host-web", IpAddr::V6(v6::SERVER_WAN)),
            ]);
        }
        for (ns, label, at) in webs {
            self.web.push(WebServer::start(ns, label, at)?);
        }
        Ok(())
    }

    /// Starts the corp LAN's DHCP server (dnsmasq, DHCP only: DNS stays with the corp
    /// resolver) with its log and leases in `dir`. It hands out no router, so a bridged
    /// client keeps its own default route; name server and domain are the corp ones.
    pub fn start_dhcp(&mut self, dir: &Path) -> Result<()> {
        use addr::*;
        let proc = dhcp_server(
            &self.corp,
            "eth0",
            &[
                // The first free address, not one hashed from the (random) MAC: runs repeat.
                "--dhcp-sequential-ip".to_owned(),
                format!("--dhcp-range={DHCP_FIRST},{DHCP_LAST},255.255.255.0,10m"),
                "--dhcp-option=3".to_owned(),
                format!("--dhcp-option=6,{CORP_DNS}"),
                "--dhcp-option=15,corp.example".to_owned(),
            ],
            &dir.join("dhcp.leases"),
            &dir.join("dhcp-server.log"),
        )
        .context("the corp LAN's DHCP server (dnsmasq)")?;
        self.dhcp = Some(proc);
        Ok(())
    }

    /// The hostile LAN of TunnelVision: a DHCP server (dnsmasq) on the router's client side
    /// that leases the client its address with `routes` as option 121 routes via the router,
    /// and the client's DHCP client (udhcpc) taking the lease on eth0, routes included.
    pub fn start_rogue_dhcp(&mut self, routes: &[String], dir: &Path) -> Result<()> {
        use addr::*;
        let option121: Vec<String> = routes
            .iter()
            .map(|r| format!("{r},{ROUTER_CLIENT_SIDE}"))
            .collect();
        let proc = dhcp_server(
            &self.router,
            "c0",
            &[
                format!("--dhcp-range={CLIENT_WAN},{CLIENT_WAN},255.255.255.0,10m"),
                format!("--dhcp-option=3,{ROUTER_CLIENT_SIDE}"),
                format!("--dhcp-option=121,{}", option121.join(",")),
            ],
            &dir.join("rogue-dhcp.leases"),
            &dir.join("rogue-dhcp.log"),
        )
        .context("the rogue DHCP server (dnsmasq)")?;
        self.dhcp = Some(proc);
        crate::dhcp::lease(&self.client, "eth0", dir, true)
            .context("the client's DHCP client on the rogue LAN")?;
        Ok(())
    }

    /// The hostile LAN of LocalNet: the client is handed `.2` of `prefix` on eth0 (the LAN
    /// "is" that public network), and the router, its gateway, answers for the prefix's hosts
    /// there (they are its own addresses) and routes the client's LAN address back over the LAN.
    pub fn start_rogue_lan(&mut self, prefix: &str, gateway_inside: bool) -> Result<()> {
        let (net, len) = prefix
            .split_once('/')
            .and_then(|(a, l)| Some((a.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok()?)))
            .with_context(|| format!("rogue_lan_prefix '{prefix}' is not A.B.C.D/N"))?;
        let mine = Ipv4Addr::from(u32::from(net) + 2);
        ip(&self.client, &format!("addr add {mine}/{len} dev eth0"))?;
        ip(&self.router, &format!("route add {mine}/32 dev c0"))?;
        if gateway_inside {
            // The LAN's gateway at `.1` of the prefix (an address of the router, answered
            // for on the LAN like the prefix's other hosts), and the client's way out.
            let gw = Ipv4Addr::from(u32::from(net) + 1);
            ip(&self.router, &format!("addr add {gw}/32 dev lo"))?;
            ip(
                &self.client,
                &format!("route replace default via {gw} dev eth0"),
            )?;
        }
        Ok(())
    }

    /// Starts systemd-resolved in the client namespace as a desktop has it: resolv.conf on its
    /// stub, the WAN link's DNS (the public resolver) set over D-Bus. Files go to `dir`.
    pub fn start_resolved(&mut self, dir: &Path) -> Result<()> {
        use addr::*;
        let r = crate::resolved::Resolved::start(&self.client, dir)?;
        self.client.link_resolv_conf(&r.stub_resolv_conf)?;
        let mut uplink = vec![PUBLIC_DNS.to_string()];
        if self.ipv6 {
            uplink.push(v6::PUBLIC_DNS.to_string());
        }
        r.configure_uplink(&self.client, "eth0", &uplink)?;
        self.resolved = Some(r);
        Ok(())
    }

    /// The namespace of a host name (`client`, `router`, `server`, `corp`, `client2`…).
    pub fn host(&self, name: &str) -> Option<&Netns> {
        self.hosts()
            .into_iter()
            .find(|(h, _)| *h == name)
            .map(|(_, ns)| ns)
    }

    /// All namespaces with their host names, in report order (the canonical four, then
    /// further clients).
    pub fn hosts(&self) -> Vec<(&str, &Netns)> {
        let mut v = vec![
            ("client", &self.client),
            ("router", &self.router),
            ("server", &self.server),
            ("corp", &self.corp),
        ];
        v.extend(self.server2.iter().map(|ns| ("server2", ns)));
        v.extend(self.home.iter().map(|ns| ("home", ns)));
        v.extend(self.more_clients.iter().map(|(h, ns)| (h.as_str(), ns)));
        v
    }

    /// Leaves the namespaces in place when dropped (`--keep`).
    pub fn keep(&mut self) {
        self.client.keep();
        self.router.keep();
        self.server.keep();
        self.corp.keep();
        for (_, ns) in &mut self.more_clients {
            ns.keep();
        }
        for ns in self.home.iter_mut().chain(self.server2.iter_mut()) {
            ns.keep();
        }
        if let Some(w) = &mut self.wire {
            w.keep();
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Services first: their threads live in the namespaces.
        self.dns.clear();
        self.web.clear();
        self.dhcp = None;
        self.resolved = None;
    }
}
