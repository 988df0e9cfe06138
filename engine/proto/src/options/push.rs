//! PUSH_REPLY parsing: what the server tells the client to configure.
//!
//! `PUSH_REPLY,opt,opt,…[,push-continuation 2|1]`: each option is a config line. A 2.6 server
//! splits long replies into several messages; `push-continuation 2` means more will follow.
//!
//! Options we understand are parsed into [`PushedOptions`]; options we know but do not act on
//! are listed in `ignored`; unknown ones in `unsupported` (a warning, as in OpenVPN 2.6). Only
//! options that would make the tunnel wrong are errors (real compression, a cipher we did not
//! offer, a malformed address).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::data::{Cipher, Framing};
use crate::options::lexer::split_line;

/// A pushed option that cannot be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pushed option '{option}': {reason}")]
pub struct PushError {
    /// The option as pushed.
    pub option: String,
    /// Why it was refused.
    pub reason: String,
}

/// Interface topology.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Topology {
    /// Point-to-point /30 per client (the 2.6 default when nothing is pushed).
    #[default]
    Net30,
    /// Point-to-point addresses.
    P2p,
    /// One subnet, `ifconfig ADDR NETMASK`.
    Subnet,
}

/// `route NETWORK [NETMASK [GATEWAY [METRIC]]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Network address.
    pub network: Ipv4Addr,
    /// Netmask (default 255.255.255.255).
    pub netmask: Ipv4Addr,
    /// Gateway; `None` = route-gateway / the tunnel peer.
    pub gateway: Option<Ipv4Addr>,
    /// Metric.
    pub metric: Option<u32>,
}

/// `route-ipv6 NETWORK/BITS [GATEWAY [METRIC]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route6 {
    /// Network.
    pub network: Ipv6Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Gateway.
    pub gateway: Option<Ipv6Addr>,
    /// Metric.
    pub metric: Option<u32>,
}

/// `redirect-gateway` flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedirectGateway {
    /// `def1`: two /1 routes instead of replacing the default route.
    pub def1: bool,
    /// `ipv6`: redirect IPv6 as well.
    pub ipv6: bool,
    /// `!ipv4`: do not redirect IPv4.
    pub no_ipv4: bool,
    /// `local`: server is on the local network (no host route).
    pub local: bool,
    /// `bypass-dhcp`.
    pub bypass_dhcp: bool,
    /// `bypass-dns`.
    pub bypass_dns: bool,
    /// `block-local`.
    pub block_local: bool,
}

/// One `dns server N …` entry (2.6 style DNS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsServer {
    /// Addresses with optional port.
    pub addresses: Vec<(IpAddr, Option<u16>)>,
    /// Domains this server resolves (split DNS).
    pub resolve_domains: Vec<String>,
    /// `dnssec yes|no|optional`.
    pub dnssec: Option<String>,
    /// `transport plain|DoH|DoT`.
    pub transport: Option<String>,
    /// `sni NAME`.
    pub sni: Option<String>,
}

/// `protocol-flags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtocolFlags {
    /// EXIT over the control channel.
    pub cc_exit: bool,
    /// TLS-EKM key derivation.
    pub tls_ekm: bool,
    /// Dynamic tls-crypt (we never announce it, so a server should not push it).
    pub dyn_tls_crypt: bool,
}

/// Everything a PUSH_REPLY may configure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushedOptions {
    /// `topology`.
    pub topology: Topology,
    /// `ifconfig LOCAL NETMASK|REMOTE`.
    pub ifconfig: Option<(Ipv4Addr, Ipv4Addr)>,
    /// `ifconfig-ipv6 ADDR/BITS [REMOTE]`.
    pub ifconfig_ipv6: Option<(Ipv6Addr, u8, Option<Ipv6Addr>)>,
    /// `route-gateway`.
    pub route_gateway: Option<Ipv4Addr>,
    /// `route-gateway dhcp`: a bridged (tap) server leaves the address to the LAN's DHCP
    /// server, which the client asks through the tunnel.
    pub route_gateway_dhcp: bool,
    /// `route` entries.
    pub routes: Vec<Route>,
    /// `route-ipv6` entries.
    pub routes_ipv6: Vec<Route6>,
    /// `route-metric`.
    pub route_metric: Option<u32>,
    /// `redirect-gateway`.
    pub redirect_gateway: Option<RedirectGateway>,
    /// `dhcp-option DNS|DNS6`.
    pub dhcp_dns: Vec<IpAddr>,
    /// `dhcp-option DOMAIN` (first is the connection domain).
    pub dhcp_domains: Vec<String>,
    /// `dhcp-option DOMAIN-SEARCH`.
    pub dhcp_search: Vec<String>,
    /// `dns server N …` by priority.
    pub dns_servers: BTreeMap<i8, DnsServer>,
    /// `dns search-domains`.
    pub dns_search_domains: Vec<String>,
    /// `peer-id`.
    pub peer_id: Option<u32>,
    /// `cipher` (the negotiated data cipher).
    pub cipher: Option<Cipher>,
    /// `key-derivation tls-ekm`.
    pub key_derivation_ekm: bool,
    /// `protocol-flags`.
    pub protocol_flags: ProtocolFlags,
    /// `tun-mtu`.
    pub tun_mtu: Option<u16>,
    /// `ping N`.
    pub ping: Option<u32>,
    /// `ping-restart N`.
    pub ping_restart: Option<u32>,
    /// `ping-exit N`.
    pub ping_exit: Option<u32>,
    /// `auth-token`.
    pub auth_token: Option<String>,
    /// `auth-token-user` (base64).
    pub auth_token_user: Option<String>,
    /// Compression stub framing requested by `comp-lzo no` / `compress stub[-v2]`.
    pub framing: Option<Framing>,
    /// `explicit-exit-notify N`.
    pub explicit_exit_notify: Option<u32>,
    /// `inactive`, `session-timeout`, … recognised but not acted on.
    pub ignored: Vec<String>,
    /// Options we do not know (a warning each).
    pub unsupported: Vec<String>,
    /// `block-ipv6`.
    pub block_ipv6: bool,
    /// Options refused as harmful, with why (a warning each; the rest of the push applies).
    pub refused: Vec<String>,
}

/// Why a pushed name server address cannot be the VPN's: on this host (a forwarding loop
/// through the split-DNS stub, or the host's own resolver hijacked), unspecified or multicast.
fn bad_dns_server(ip: IpAddr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some(
            "a name server on this host's loopback is not the VPN's (it would loop or hijack local DNS)",
        )
    } else if ip.is_unspecified() || ip.is_multicast() {
        Some("not a unicast address")
    } else {
        None
    }
}

/// Result of splitting one PUSH_REPLY message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushMessage {
    /// Option lines in order (without `push-continuation`).
    pub options: Vec<String>,
    /// True when `push-continuation 2` announced more parts.
    pub more: bool,
}

/// Splits a `PUSH_REPLY,…` message. `None` if it is not a PUSH_REPLY.
pub fn split_push_reply(msg: &str) -> Option<PushMessage> {
    let rest = msg.strip_prefix("PUSH_REPLY")?;
    if !(rest.is_empty() || rest.starts_with(',')) {
        return None;
    }
    let mut options = Vec::new();
    let mut more = false;
    for part in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some(v) = part.strip_prefix("push-continuation") {
            more = v.trim() == "2";
            continue;
        }
        options.push(part.to_owned());
    }
    Some(PushMessage { options, more })
}

impl PushedOptions {
    /// Applies one pushed option line. `offered` are the ciphers we announced.
    pub fn apply(&mut self, line: &str, offered: &[Cipher]) -> Result<(), PushError> {
        let err = |reason: &str| PushError {
            option: line.to_owned(),
            reason: reason.to_owned(),
        };
        let tokens = split_line(line).map_err(|e| err(&e.to_string()))?;
        let Some((name, args)) = tokens.split_first() else {
            return Ok(());
        };
        let arg = |i: usize| args.get(i).map(String::as_str);
        let need = |i: usize| arg(i).ok_or_else(|| err("missing argument"));
        let ip4 = |s: &str| s.parse::<Ipv4Addr>().map_err(|_| err("bad IPv4 address"));
        let num = |s: &str| s.parse::<u32>().map_err(|_| err("bad number"));
        match name.as_str() {
            "topology" => {
                self.topology = match need(0)? {
                    "subnet" => Topology::Subnet,
                    "net30" => Topology::Net30,
                    "p2p" => Topology::P2p,
                    _ => return Err(err("unknown topology")),
                }
            }
            "ifconfig" => self.ifconfig = Some((ip4(need(0)?)?, ip4(need(1)?)?)),
            "ifconfig-ipv6" => {
                let (addr, bits) =
                    parse_v6_prefix(need(0)?).ok_or_else(|| err("bad IPv6 prefix"))?;
                let remote = match arg(1) {
                    Some(r) => Some(r.parse().map_err(|_| err("bad IPv6 address"))?),
                    None => None,
                };
                self.ifconfig_ipv6 = Some((addr, bits, remote));
            }
            "route-gateway" => {
                // `route-gateway dhcp` is for tap; meaningless on tun.
                if need(0)? == "dhcp" {
                    self.route_gateway_dhcp = true;
                } else {
                    self.route_gateway = Some(ip4(need(0)?)?);
                }
            }
            "route" => {
                let netmask = match arg(1) {
                    Some(m) if m != "default" => ip4(m)?,
                    _ => Ipv4Addr::BROADCAST,
                };
                let gateway = match arg(2) {
                    Some(g) if g != "vpn_gateway" && g != "default" => Some(ip4(g)?),
                    _ => None,
                };
                let metric = arg(3).map(num).transpose()?;
                let network = ip4(need(0)?)?;
                if u32::from(network) & !u32::from(netmask) != 0 {
                    return Err(err("network has bits outside the netmask"));
                }
                self.routes.push(Route {
                    network,
                    netmask,
                    gateway,
                    metric,
                });
            }
            "route-ipv6" => {
                let (network, prefix) =
                    parse_v6_prefix(need(0)?).ok_or_else(|| err("bad IPv6 prefix"))?;
                let gateway = match arg(1) {
                    Some(g) => Some(g.parse().map_err(|_| err("bad IPv6 gateway"))?),
                    None => None,
                };
                let metric = arg(2).map(num).transpose()?;
                self.routes_ipv6.push(Route6 {
                    network,
                    prefix,
                    gateway,
                    metric,
                });
            }
            "route-metric" => self.route_metric = Some(num(need(0)?)?),
            "redirect-gateway" | "redirect-private" => {
                let mut rg = RedirectGateway::default();
                for a in args {
                    match a.as_str() {
                        "def1" => rg.def1 = true,
                        "ipv6" => rg.ipv6 = true,
                        "!ipv4" => rg.no_ipv4 = true,
                        "local" | "autolocal" => rg.local = true,
                        "bypass-dhcp" => rg.bypass_dhcp = true,
                        "bypass-dns" => rg.bypass_dns = true,
                        "block-local" => rg.block_local = true,
                        _ => return Err(err("unknown redirect-gateway flag")),
                    }
                }
                if name == "redirect-gateway" {
                    self.redirect_gateway = Some(rg);
                } else {
                    self.ignored.push(line.to_owned());
                }
            }
            "dhcp-option" => {
                let kind = need(0)?;
                match kind {
                    "DNS" | "DNS6" => {
                        let ip: IpAddr = need(1)?
                            .parse()
                            .map_err(|_| err("bad DNS server address"))?;
                        match bad_dns_server(ip) {
                            Some(why) => self.refused.push(format!("{line}: {why}")),
                            None => self.dhcp_dns.push(ip),
                        }
                    }
                    "DOMAIN" | "ADAPTER_DOMAIN_SUFFIX" => {
                        self.dhcp_domains.push(need(1)?.to_owned())
                    }
                    "DOMAIN-SEARCH" => self.dhcp_search.push(need(1)?.to_owned()),
                    _ => self.ignored.push(line.to_owned()),
                }
            }
            "dns" => self.apply_dns(args, &err)?,
            "block-ipv6" => self.block_ipv6 = true,
            "peer-id" => {
                let id = num(need(0)?)?;
                if id >= crate::consts::PEER_ID_UNDEF {
                    return Err(err("peer-id out of range"));
                }
                self.peer_id = Some(id);
            }
            "cipher" => {
                let c = Cipher::from_name(need(0)?)
                    .ok_or_else(|| err("cipher not supported by this client"))?;
                if !offered.contains(&c) {
                    return Err(err("cipher was not offered in data-ciphers"));
                }
                self.cipher = Some(c);
            }
            "key-derivation" => {
                if need(0)? == "tls-ekm" {
                    self.key_derivation_ekm = true;
                } else {
                    return Err(err("unknown key derivation"));
                }
            }
            "protocol-flags" => {
                for a in args {
                    match a.as_str() {
                        "cc-exit" => self.protocol_flags.cc_exit = true,
                        "tls-ekm" => self.protocol_flags.tls_ekm = true,
                        "dyn-tls-crypt" => self.protocol_flags.dyn_tls_crypt = true,
                        _ => self.unsupported.push(format!("protocol-flags {a}")),
                    }
                }
            }
            "tun-mtu" => {
                let m = num(need(0)?)?;
                // 2.6.21+ clamps pushed values to at least 100.
                if !(100..=65535).contains(&m) {
                    return Err(err("tun-mtu out of range"));
                }
                self.tun_mtu = Some(m as u16);
            }
            "ping" => self.ping = Some(num(need(0)?)?),
            "ping-restart" => self.ping_restart = Some(num(need(0)?)?),
            "ping-exit" => self.ping_exit = Some(num(need(0)?)?),
            "auth-token" => self.auth_token = Some(need(0)?.to_owned()),
            "auth-token-user" => self.auth_token_user = Some(need(0)?.to_owned()),
            "explicit-exit-notify" => {
                self.explicit_exit_notify = Some(arg(0).map(num).transpose()?.unwrap_or(1))
            }
            // Whether compression is allowed is the client's decision (`allow-compression`).
            "comp-lzo" => {
                self.framing = Some(
                    crate::options::compress::parse_comp_lzo(arg(0))
                        .map_err(|e| err(&e))?
                        .0,
                )
            }
            "compress" => {
                self.framing =
                    Some(crate::options::compress::parse_compress(arg(0)).map_err(|e| err(&e))?)
            }
            "block-outside-dns" | "register-dns" | "inactive" | "session-timeout"
            | "socket-flags" | "tun-ipv6" | "route-delay" | "setenv" | "setenv-safe" | "echo"
            | "dhcp-renew" | "dhcp-release" | "ip-win32" | "persist-key" | "persist-tun"
            | "redirect-dns" | "sndbuf" | "rcvbuf" | "auth-nocache" | "tun-mtu-extra" => {
                self.ignored.push(line.to_owned())
            }
            _ => self.unsupported.push(line.to_owned()),
        }
        Ok(())
    }

    fn apply_dns(
        &mut self,
        args: &[String],
        err: &dyn Fn(&str) -> PushError,
    ) -> Result<(), PushError> {
        match args.first().map(String::as_str) {
            Some("search-domains") => {
                self.dns_search_domains.extend(args[1..].iter().cloned());
                Ok(())
            }
            Some("server") => {
                let prio: i8 = args
                    .get(1)
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| err("bad dns server priority"))?;
                let srv = self.dns_servers.entry(prio).or_default();
                let key = args
                    .get(2)
                    .map(String::as_str)
                    .ok_or_else(|| err("missing dns server key"))?;
                let vals = &args[3..];
                match key {
                    "address" => {
                        for v in vals {
                            let a =
                                parse_addr_port(v).ok_or_else(|| err("bad dns server address"))?;
                            match bad_dns_server(a.0) {
                                Some(why) => {
                                    self.refused.push(format!("dns server address {v}: {why}"))
                                }
                                None => srv.addresses.push(a),
                            }
                        }
                        if srv.addresses.len() > 8 {
                            return Err(err("more than 8 addresses"));
                        }
                    }
                    "resolve-domains" => srv.resolve_domains.extend(vals.iter().cloned()),
                    "dnssec" => srv.dnssec = vals.first().cloned(),
                    "transport" => srv.transport = vals.first().cloned(),
                    "sni" => srv.sni = vals.first().cloned(),
                    _ => return Err(err("unknown dns server key")),
                }
                Ok(())
            }
            _ => Err(err("unknown dns sub-option")),
        }
    }

    /// True when data keys must come from TLS-EKM.
    pub fn uses_ekm(&self) -> bool {
        self.key_derivation_ekm || self.protocol_flags.tls_ekm
    }
}

/// Parses `ADDR/BITS` for IPv6.
pub fn parse_v6_prefix(s: &str) -> Option<(Ipv6Addr, u8)> {
    let (a, b) = s.split_once('/').unwrap_or((s, "128"));
    let bits: u8 = b.parse().ok()?;
    (bits <= 128).then_some(())?;
    Some((a.parse().ok()?, bits))
}

/// Parses `1.2.3.4`, `1.2.3.4:53`, `2001:db8::1`, `[2001:db8::1]:53`.
fn parse_addr_port(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip, None));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some((sa.ip(), Some(sa.port())));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "PUSH_REPLY,redirect-gateway def1,dhcp-option DNS 198.19.10.53,route-gateway 198.19.0.1,topology subnet,ping 10,ping-restart 120,ifconfig 198.19.0.2 255.255.255.0,peer-id 0,cipher AES-256-GCM,protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500";

    fn apply_all(msg: &str) -> Result<PushedOptions, PushError> {
        let m = split_push_reply(msg).expect("push reply");
        let mut p = PushedOptions::default();
        for o in &m.options {
            p.apply(o, &Cipher::ALL)?;
        }
        Ok(p)
    }

    #[test]
    fn typical_2_6_reply() {
        let p = apply_all(EXAMPLE).expect("applies");
        assert_eq!(p.topology, Topology::Subnet);
        assert_eq!(
            p.ifconfig,
            Some((
                "198.19.0.2".parse().unwrap(),
                "255.255.255.0".parse().unwrap()
            ))
        );
        assert_eq!(p.peer_id, Some(0));
        assert_eq!(p.cipher, Some(Cipher::Aes256Gcm));
        assert!(p.uses_ekm());
        assert!(p.protocol_flags.cc_exit);
        assert_eq!(p.ping, Some(10));
        assert_eq!(p.ping_restart, Some(120));
        assert_eq!(p.tun_mtu, Some(1500));
        assert!(p.redirect_gateway.as_ref().is_some_and(|r| r.def1));
        assert_eq!(p.dhcp_dns, vec!["198.19.10.53".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn continuation() {
        let m = split_push_reply("PUSH_REPLY,route 198.19.10.0 255.255.255.0,push-continuation 2")
            .unwrap();
        assert!(m.more);
        assert_eq!(m.options, vec!["route 198.19.10.0 255.255.255.0"]);
        let m = split_push_reply("PUSH_REPLY,ping 10,push-continuation 1").unwrap();
        assert!(!m.more);
        assert_eq!(split_push_reply("PUSH_REPLY").unwrap().options.len(), 0);
        assert!(split_push_reply("PUSH_REQUEST").is_none());
        assert!(split_push_reply("PUSH_REPLYX").is_none());
    }

    #[test]
    fn routes_and_dns() {
        let p = apply_all(
            "PUSH_REPLY,route 198.19.10.0 255.255.255.0,route 198.19.20.1,route-ipv6 2001:db8:10::/48,dns server 0 address 198.19.10.53 [2001:db8::53]:5353,dns server 0 resolve-domains corp.example,dns search-domains corp.example,dhcp-option DOMAIN corp.example",
        )
        .unwrap();
        assert_eq!(p.routes.len(), 2);
        assert_eq!(p.routes[1].netmask, Ipv4Addr::BROADCAST);
        assert_eq!(p.routes_ipv6[0].prefix, 48);
        let srv = &p.dns_servers[&0];
        assert_eq!(srv.addresses.len(), 2);
        assert_eq!(srv.addresses[1].1, Some(5353));
        assert_eq!(srv.resolve_domains, vec!["corp.example"]);
        assert_eq!(p.dhcp_domains, vec!["corp.example"]);
    }

    /// A hostile or broken server pushing name servers on the client's own loopback (or
    /// unspecified/multicast ones): refused with the reason, the rest of the push applies.
    #[test]
    fn loopback_name_servers_are_refused() {
        let p = apply_all(
            "PUSH_REPLY,dhcp-option DNS 127.0.0.1,dhcp-option DNS6 ::1,dhcp-option DNS 0.0.0.0,dhcp-option DNS 198.19.10.53,dns server 1 address 127.0.0.53 198.19.10.54,route 198.19.10.0 255.255.255.0",
        )
        .unwrap();
        assert_eq!(p.dhcp_dns, vec!["198.19.10.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.dns_servers[&1].addresses.len(), 1);
        assert_eq!(p.refused.len(), 4, "{:?}", p.refused);
        assert!(p.refused[0].contains("127.0.0.1") && p.refused[0].contains("loopback"));
        assert_eq!(p.routes.len(), 1);
    }

    #[test]
    fn refused_and_unknown_options() {
        let e = apply_all("PUSH_REPLY,compress zstd").unwrap_err();
        assert!(e.reason.contains("zstd"), "{e}");
        let p = apply_all("PUSH_REPLY,comp-lzo yes").unwrap();
        assert_eq!(p.framing, Some(Framing::Lzo));
        let p = apply_all("PUSH_REPLY,compress lz4-v2").unwrap();
        assert_eq!(p.framing, Some(Framing::Lz4V2));
        let p = apply_all("PUSH_REPLY,compress stub-v2").unwrap();
        assert_eq!(p.framing, Some(Framing::StubV2));
        let mut p = PushedOptions::default();
        assert!(p.apply("cipher AES-128-GCM", &[Cipher::Aes256Gcm]).is_err());
        assert!(p.apply("cipher BF-CBC", &Cipher::ALL).is_err());
        assert!(
            p.apply("ifconfig 198.19.0.300 255.255.255.0", &Cipher::ALL)
                .is_err()
        );
        assert!(
            p.apply("route 198.19.10.1 255.255.255.0", &Cipher::ALL)
                .is_err()
        );
        assert!(p.apply("peer-id 16777215", &Cipher::ALL).is_err());
        p.apply("frobnicate 1", &Cipher::ALL).unwrap();
        p.apply("block-outside-dns", &Cipher::ALL).unwrap();
        assert_eq!(p.unsupported, vec!["frobnicate 1"]);
        assert_eq!(p.ignored, vec!["block-outside-dns"]);
    }
}
