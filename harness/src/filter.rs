//! A small packet filter language for leak rules ("on client/eth0 only flows matching …"),
//! close to tcpdump's so it reads familiar:
//!
//! ```text
//! udp and host 198.18.2.2 and port 1194
//! arp or (icmp and dst net 198.18.0.0/15)
//! dns name corp.example            # DNS messages about names in corp.example
//! not tcp and outbound
//! ```
//!
//! Primitives: `ip`, `ip6`, `arp`, `tcp`, `udp`, `icmp`, `frag`, `syn`, `dns`,
//! `dns name DOMAIN`, `[src|dst] host ADDR`, `[src|dst] net CIDR`, `[src|dst] port N`,
//! `inbound`, `outbound`, `any`. Operators: `not`/`!`, `and`/`&&` (also implied between
//! two primitives), `or`/`||`, parentheses.

use std::fmt;
use std::net::IpAddr;

use tunscope_capture::packet::{L3, L4, Pkt};

/// A parsed filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    expr: Expr,
    text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Dir {
    Src,
    Dst,
    Either,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    Any,
    Ip4,
    Ip6,
    Arp,
    Tcp,
    Udp,
    Icmp,
    Frag,
    Syn,
    Dns,
    DnsName(String),
    Host(Dir, IpAddr),
    Net(Dir, IpAddr, u8),
    Port(Dir, u16),
    Inbound,
    Outbound,
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// A filter that does not parse, with the reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("filter '{text}': {reason}")]
pub struct FilterError {
    text: String,
    reason: String,
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn tokens(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' | ')' | '!' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

struct Parser {
    toks: Vec<String>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.toks.get(self.pos).map(String::as_str)
    }

    fn next(&mut self) -> Option<String> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while matches!(self.peek(), Some("or" | "||")) {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.not()?;
        loop {
            match self.peek() {
                Some("and" | "&&") => {
                    self.pos += 1;
                }
                Some("or" | "||" | ")") | None => break,
                Some(_) => {} // implied "and"
            }
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if matches!(self.peek(), Some("not" | "!")) {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let t = self.next().ok_or("unexpected end")?;
        let dir = match t.as_str() {
            "src" => Some(Dir::Src),
            "dst" => Some(Dir::Dst),
            _ => None,
        };
        if let Some(dir) = dir {
            let what = self
                .next()
                .ok_or(format!("'{t}' needs host, net or port"))?;
            return match what.as_str() {
                "host" => self.host(dir),
                "net" => self.net(dir),
                "port" => self.port(dir),
                // `src 1.2.3.4` means `src host 1.2.3.4`.
                a => a
                    .parse()
                    .map(|ip| Expr::Host(dir, ip))
                    .map_err(|_| format!("'{t}' needs host, net or port, not '{a}'")),
            };
        }
        Ok(match t.as_str() {
            "(" => {
                let e = self.or()?;
                if self.next().as_deref() != Some(")") {
                    return Err("missing ')'".into());
                }
                e
            }
            "any" | "all" => Expr::Any,
            "ip" => Expr::Ip4,
            "ip6" => Expr::Ip6,
            "arp" => Expr::Arp,
            "tcp" => Expr::Tcp,
            "udp" => Expr::Udp,
            "icmp" | "icmp6" => Expr::Icmp,
            "frag" => Expr::Frag,
            "syn" => Expr::Syn,
            "inbound" => Expr::Inbound,
            "outbound" => Expr::Outbound,
            "dns" => {
                if self.peek() == Some("name") {
                    self.pos += 1;
                    let d = self.next().ok_or("'dns name' needs a domain")?;
                    Expr::DnsName(d.trim_end_matches('.').to_ascii_lowercase())
                } else {
                    Expr::Dns
                }
            }
            "host" => self.host(Dir::Either)?,
            "net" => self.net(Dir::Either)?,
            "port" => self.port(Dir::Either)?,
            other => return Err(format!("unknown word '{other}'")),
        })
    }

    fn host(&mut self, dir: Dir) -> Result<Expr, String> {
        let a = self.next().ok_or("'host' needs an address")?;
        a.parse()
            .map(|ip| Expr::Host(dir, ip))
            .map_err(|_| format!("'{a}' is not an IP address"))
    }

    fn net(&mut self, dir: Dir) -> Result<Expr, String> {
        let a = self.next().ok_or("'net' needs a prefix")?;
        let (ip, len) = a.split_once('/').ok_or(format!("'{a}' is not ADDR/LEN"))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("'{ip}' is not an IP address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("bad prefix length in '{a}'"))?;
        if len > if ip.is_ipv4() { 32 } else { 128 } {
            return Err(format!("prefix length too long in '{a}'"));
        }
        Ok(Expr::Net(dir, ip, len))
    }

    fn port(&mut self, dir: Dir) -> Result<Expr, String> {
        let p = self.next().ok_or("'port' needs a number")?;
        p.parse()
            .map(|n| Expr::Port(dir, n))
            .map_err(|_| format!("'{p}' is not a port number"))
    }
}

fn in_net(a: IpAddr, net: IpAddr, len: u8) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

fn dir_match<T: PartialEq + Copy>(dir: &Dir, src: T, dst: T, f: impl Fn(T) -> bool) -> bool {
    match dir {
        Dir::Src => f(src),
        Dir::Dst => f(dst),
        Dir::Either => f(src) || f(dst),
    }
}

impl Expr {
    fn eval(&self, p: &Pkt<'_>, outgoing: Option<bool>) -> bool {
        let ip = p.ip();
        match self {
            Expr::Any => true,
            Expr::Ip4 => ip.is_some_and(|h| h.src.is_ipv4()),
            Expr::Ip6 => ip.is_some_and(|h| h.src.is_ipv6()),
            Expr::Arp => matches!(p.l3, L3::Arp { .. }),
            Expr::Tcp => ip.is_some_and(|h| h.proto == 6),
            Expr::Udp => ip.is_some_and(|h| h.proto == 17),
            Expr::Icmp => ip.is_some_and(|h| h.proto == 1 || h.proto == 58),
            Expr::Frag => ip.is_some_and(|h| h.fragment),
            Expr::Syn => matches!(p.l4, L4::Tcp { flags, .. } if flags & 0x02 != 0),
            Expr::Dns => p.ports().is_some_and(|(s, d)| s == 53 || d == 53),
            Expr::DnsName(d) => p.dns().is_some_and(|m| {
                d.is_empty() || m.name == *d || m.name.ends_with(&format!(".{d}"))
            }),
            Expr::Host(dir, a) => {
                ip.is_some_and(|h| dir_match(dir, h.src, h.dst, |x| x == *a))
                    || matches!(&p.l3, L3::Arp { sender, target, .. }
                    if dir_match(dir, IpAddr::V4(*sender), IpAddr::V4(*target), |x| x == *a))
            }
            Expr::Net(dir, n, len) => {
                ip.is_some_and(|h| dir_match(dir, h.src, h.dst, |x| in_net(x, *n, *len)))
            }
            Expr::Port(dir, port) => p
                .ports()
                .is_some_and(|(s, d)| dir_match(dir, s, d, |x| x == *port)),
            Expr::Inbound => outgoing == Some(false),
            Expr::Outbound => outgoing == Some(true),
            Expr::Not(e) => !e.eval(p, outgoing),
            Expr::And(a, b) => a.eval(p, outgoing) && b.eval(p, outgoing),
            Expr::Or(a, b) => a.eval(p, outgoing) || b.eval(p, outgoing),
        }
    }
}

impl Filter {
    /// Parses a filter expression.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let err = |reason: String| FilterError {
            text: text.to_owned(),
            reason,
        };
        let toks = tokens(text);
        if toks.is_empty() {
            return Err(err("empty filter".into()));
        }
        let mut p = Parser { toks, pos: 0 };
        let expr = p.or().map_err(err)?;
        if let Some(t) = p.peek() {
            return Err(err(format!("unexpected '{t}'")));
        }
        Ok(Filter {
            expr,
            text: text.to_owned(),
        })
    }

    /// True when the packet matches. `outgoing` is the capture direction, if known.
    pub fn matches(&self, p: &Pkt<'_>, outgoing: Option<bool>) -> bool {
        self.expr.eval(p, outgoing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunscope_capture::file::LinkType;
    use tunscope_capture::packet::parse;

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 8, 0, 0]);
        p
    }

    #[test]
    fn matches_like_tcpdump() {
        let tunnel = udp([198, 18, 1, 2], [198, 18, 2, 2], 40000, 1194);
        let dns = udp([198, 18, 1, 2], [198, 18, 100, 53], 40001, 53);
        let t = parse(LinkType::Raw, &tunnel);
        let d = parse(LinkType::Raw, &dns);
        let f = Filter::parse("udp and host 198.18.2.2 and port 1194").unwrap();
        assert!(f.matches(&t, None));
        assert!(!f.matches(&d, None));
        let f = Filter::parse("not (dns or arp) && dst net 198.18.0.0/16").unwrap();
        assert!(f.matches(&t, None) && !f.matches(&d, None));
        let f = Filter::parse("src 198.18.1.2 dst port 53 outbound").unwrap();
        assert!(f.matches(&d, Some(true)) && !f.matches(&d, Some(false)));
        assert!(
            !Filter::parse("net 198.18.2.0/24")
                .unwrap()
                .matches(&d, None)
        );
    }

    #[test]
    fn errors_name_the_problem() {
        for (text, want) in [
            ("udp and hots 1.2.3.4", "unknown word 'hots'"),
            ("host 1.2.3", "'1.2.3' is not an IP address"),
            ("(udp", "missing ')'"),
            ("udp )", "unexpected ')'"),
            ("", "empty filter"),
            ("net 10.0.0.0/33", "prefix length too long"),
        ] {
            let e = Filter::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
