//! Kernel routes over rtnetlink (`NETLINK_ROUTE`): add, delete, and "which route reaches X".
//!
//! A few messages built by hand (`nlmsghdr` + `rtmsg` + attributes), like OpenVPN 2.6's own
//! netlink code; no external tool is run. Operates in the calling thread's network namespace.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// A route to add or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub dst: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index, if any.
    pub oif: Option<u32>,
    /// Metric.
    pub metric: Option<u32>,
}

/// The answer to "how is this address reached".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTo {
    /// Next hop (None for directly connected).
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Preferred source address.
    pub prefsrc: Option<IpAddr>,
}

fn family(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn push_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

struct Socket(OwnedFd);

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let s = Socket(unsafe { OwnedFd::from_raw_fd(fd) });
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: valid fd and a timeval of the right size.
        unsafe {
            libc::setsockopt(
                s.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(s)
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: buffer pointer and length describe `msg`; sockaddr_nl zeroed = kernel.
        let r = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buffer pointer and length describe `buf`.
        let r = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

/// Builds an rtnetlink route message.
fn route_msg(
    ty: u16,
    flags: u16,
    seq: u32,
    fam: u8,
    dst_len: u8,
    scope: u8,
    attrs: &[(u16, Vec<u8>)],
) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    // rtmsg
    m.extend_from_slice(&[
        fam,
        dst_len,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        scope,
        RTN_UNICAST,
    ]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    for (t, d) in attrs {
        push_attr(&mut m, *t, d);
    }
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&ty.to_ne_bytes());
    m[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

fn route_attrs(r: &Route) -> Vec<(u16, Vec<u8>)> {
    let mut a = vec![
        (RTA_DST, addr_bytes(&r.dst)),
        (RTA_TABLE, u32::from(RT_TABLE_MAIN).to_ne_bytes().to_vec()),
    ];
    if let Some(g) = &r.gateway {
        a.push((RTA_GATEWAY, addr_bytes(g)));
    }
    if let Some(o) = r.oif {
        a.push((RTA_OIF, o.to_ne_bytes().to_vec()));
    }
    if let Some(m) = r.metric {
        a.push((RTA_PRIORITY, m.to_ne_bytes().to_vec()));
    }
    a
}

/// Sends a request and waits for the kernel's ACK (or error).
fn request_ack(msg: &[u8]) -> io::Result<()> {
    let s = Socket::open()?;
    s.send(msg)?;
    let mut buf = vec![0u8; 8192];
    let n = s.recv(&mut buf)?;
    let mut off = 0;
    while off + 16 <= n {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if ty == NLMSG_ERROR && off + 20 <= n {
            let code =
                i32::from_ne_bytes([buf[off + 16], buf[off + 17], buf[off + 18], buf[off + 19]]);
            return if code == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-code))
            };
        }
        if len < 16 {
            break;
        }
        off += (len + 3) & !3;
    }
    Err(io::Error::other("no netlink acknowledgement"))
}

fn scope_for(r: &Route) -> u8 {
    if r.gateway.is_none() {
        RT_SCOPE_LINK
    } else {
        RT_SCOPE_UNIVERSE
    }
}

/// Adds a route (fails with `EEXIST` if an identical one exists).
pub fn add_route(r: &Route) -> io::Result<()> {
    let msg = route_msg(
        RTM_NEWROUTE,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        1,
        family(&r.dst),
        r.prefix,
        scope_for(r),
        &route_attrs(r),
    );
    request_ack(&msg)
}

/// Deletes a route.
pub fn del_route(r: &Route) -> io::Result<()> {
    let msg = route_msg(
        RTM_DELROUTE,
        NLM_F_ACK,
        2,
        family(&r.dst),
        r.prefix,
        scope_for(r),
        &route_attrs(r),
    );
    request_ack(&msg)
}

/// The route the kernel would use to reach `dst` (like `ip route get`).
pub fn route_get(dst: IpAddr) -> io::Result<RouteTo> {
    let bits = if dst.is_ipv4() { 32 } else { 128 };
    let msg = route_msg(
        RTM_GETROUTE,
        0,
        3,
        family(&dst),
        bits,
        0,
        &[(RTA_DST, addr_bytes(&dst))],
    );
    let s = Socket::open()?;
    s.send(&msg)?;
    let mut buf = vec![0u8; 8192];
    let n = s.recv(&mut buf)?;
    let mut off = 0;
    while off + 16 <= n {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < 16 || off + len > n {
            break;
        }
        match ty {
            NLMSG_ERROR => {
                let code = i32::from_ne_bytes([
                    buf[off + 16],
                    buf[off + 17],
                    buf[off + 18],
                    buf[off + 19],
                ]);
                return Err(io::Error::from_raw_os_error(-code));
            }
            NLMSG_DONE => break,
            RTM_NEWROUTE => {
                let fam = buf[off + 16];
                let mut out = RouteTo {
                    gateway: None,
                    oif: None,
                    prefsrc: None,
                };
                let mut a = off + 16 + 12;
                while a + 4 <= off + len {
                    let alen = u16::from_ne_bytes([buf[a], buf[a + 1]]) as usize;
                    let aty = u16::from_ne_bytes([buf[a + 2], buf[a + 3]]);
                    if alen < 4 || a + alen > off + len {
                        break;
                    }
                    let data = &buf[a + 4..a + alen];
                    let ip = |d: &[u8]| -> Option<IpAddr> {
                        match (fam as i32, d.len()) {
                            (libc::AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(d).ok()?)),
                            (libc::AF_INET6, 16) => {
                                Some(IpAddr::from(<[u8; 16]>::try_from(d).ok()?))
                            }
                            _ => None,
                        }
                    };
                    match aty {
                        RTA_GATEWAY => out.gateway = ip(data),
                        RTA_PREFSRC => out.prefsrc = ip(data),
                        RTA_OIF if data.len() == 4 => {
                            out.oif = Some(u32::from_ne_bytes([data[0], data[1], data[2], data[3]]))
                        }
                        _ => {}
                    }
                    a += (alen + 3) & !3;
                }
                return Ok(out);
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Err(io::Error::other("no route in netlink reply"))
}

/// Interface index of `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::other("bad interface name"))?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i)
}

/// One entry of a routing table dump.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteEntry {
    /// Destination (unspecified address for a default route).
    pub dst: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface name.
    pub dev: Option<String>,
    /// Metric.
    pub metric: Option<u32>,
    /// Routing table id.
    pub table: u32,
}

impl std::fmt::Display for RouteEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}/{}", self.dst, self.prefix)?;
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        Ok(())
    }
}

/// Name of an interface index.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated string into buf.
    let c = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(c.to_string_lossy().into_owned())
}

/// The main table's routes of one family (`AF_INET` or `AF_INET6`), like `ip route show`.
pub fn dump_routes(ipv6: bool) -> io::Result<Vec<RouteEntry>> {
    const NLM_F_DUMP: u16 = 0x300;
    const RTA_TABLE_ID: u16 = 15;
    let fam = if ipv6 {
        libc::AF_INET6 as u8
    } else {
        libc::AF_INET as u8
    };
    let msg = route_msg(RTM_GETROUTE, NLM_F_DUMP, 4, fam, 0, 0, &[]);
    let s = Socket::open()?;
    s.send(&msg)?;
    let mut out = vec![];
    let mut buf = vec![0u8; 65536];
    loop {
        let n = s.recv(&mut buf)?;
        let mut off = 0;
        while off + 16 <= n {
            let len =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < 16 || off + len > n {
                return Ok(out);
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes([
                        buf[off + 16],
                        buf[off + 17],
                        buf[off + 18],
                        buf[off + 19],
                    ]);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                RTM_NEWROUTE => {
                    let rt = &buf[off + 16..off + len];
                    let (dst_len, table_hdr, rtype) = (rt[1], rt[4], rt[7]);
                    let mut e = RouteEntry {
                        dst: if ipv6 {
                            IpAddr::from([0u8; 16])
                        } else {
                            IpAddr::from([0u8; 4])
                        },
                        prefix: dst_len,
                        gateway: None,
                        dev: None,
                        metric: None,
                        table: u32::from(table_hdr),
                    };
                    let mut a = 12;
                    while a + 4 <= rt.len() {
                        let alen = u16::from_ne_bytes([rt[a], rt[a + 1]]) as usize;
                        let aty = u16::from_ne_bytes([rt[a + 2], rt[a + 3]]);
                        if alen < 4 || a + alen > rt.len() {
                            break;
                        }
                        let d = &rt[a + 4..a + alen];
                        let ip = |d: &[u8]| -> Option<IpAddr> {
                            match d.len() {
                                4 => Some(IpAddr::from(<[u8; 4]>::try_from(d).ok()?)),
                                16 => Some(IpAddr::from(<[u8; 16]>::try_from(d).ok()?)),
                                _ => None,
                            }
                        };
                        let u32v = |d: &[u8]| <[u8; 4]>::try_from(d).ok().map(u32::from_ne_bytes);
                        match aty {
                            RTA_DST => {
                                if let Some(x) = ip(d) {
                                    e.dst = x;
                                }
                            }
                            RTA_GATEWAY => e.gateway = ip(d),
                            RTA_OIF => e.dev = u32v(d).and_then(ifname),
                            RTA_PRIORITY => e.metric = u32v(d),
                            RTA_TABLE_ID => {
                                if let Some(t) = u32v(d) {
                                    e.table = t;
                                }
                            }
                            _ => {}
                        }
                        a += (alen + 3) & !3;
                    }
                    // Unicast routes of the main table only (what `ip route show` lists).
                    if e.table == u32::from(RT_TABLE_MAIN) && rtype == RTN_UNICAST {
                        out.push(e);
                    }
                }
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}
