//! An embedded DNS server per network, logging every query with its source and the interface
//! it arrived on — the evidence behind "which resolver answers which name, over which path".
//!
//! Authoritative for its own records; names it has no record for are either forwarded (one
//! upstream socket, query ids remapped, like dnsmasq) to an
//! upstream (a corporate resolver that also resolves the internet) or answered NXDOMAIN (the
//! public resolver, which has never heard of `corp.example`). UDP only, which is what the
//! glibc resolver uses for these small answers.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType, rdata};
use serde::Serialize;

use tunscope_capture::packet::addresses;

use crate::netns::{Netns, ifname};

/// What a DNS server knows.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Label in logs and reports (`public-dns`, `corp-dns`).
    pub label: String,
    /// Address to listen on (port 53).
    pub listen: IpAddr,
    /// Records: lowercase name without trailing dot → addresses.
    pub records: BTreeMap<String, Vec<IpAddr>>,
    /// Where names without a record go; `None` = NXDOMAIN.
    pub upstream: Option<SocketAddr>,
}

/// One query as the server saw it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DnsQuery {
    /// Wall clock, ns since the epoch.
    pub at_ns: u64,
    /// The server's label.
    pub server: String,
    /// Where the query came from.
    pub from: SocketAddr,
    /// The server-side interface it arrived on.
    pub iface: String,
    /// The question's name (lowercase, no trailing dot).
    pub name: String,
    /// Question type (`A`, `AAAA`, …).
    pub qtype: String,
    /// Response code sent.
    pub rcode: String,
    /// Addresses answered.
    pub answers: Vec<IpAddr>,
    /// The answer came from the upstream.
    pub forwarded: bool,
}

/// A running DNS server; stops when dropped.
pub struct DnsServer {
    /// Its configuration.
    pub config: DnsConfig,
    log: Arc<Mutex<Vec<DnsQuery>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl DnsServer {
    /// Starts the server on a thread inside `ns`.
    pub fn start(ns: &Netns, config: DnsConfig) -> Result<DnsServer> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (cfg, lg, st) = (config.clone(), Arc::clone(&log), Arc::clone(&stop));
        let thread = ns.spawn(move || {
            let sock = match bind(cfg.listen) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let _ = ready_tx.send(Ok(()));
            serve(&cfg, &sock, &lg, &st)
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("DNS server {}: {e}", config.label),
            Err(_) => anyhow::bail!("DNS server {} did not start", config.label),
        }
        Ok(DnsServer {
            config,
            log,
            stop,
            thread: Some(thread),
        })
    }

    /// Every query so far.
    pub fn queries(&self) -> Vec<DnsQuery> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind(addr: IpAddr) -> Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::new(addr, 53))
        .with_context(|| format!("cannot bind {addr}:53"))?;
    sock.set_nonblocking(true)?;
    if addr.is_ipv4() {
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv4PacketInfo, &true)?;
    } else {
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv6RecvPacketInfo, &true)?;
    }
    Ok(sock)
}

/// Receives one datagram with the index of the interface it arrived on.
fn recv_with_iface(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u32)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo, libc::in6_pktinfo);
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    let mut ifindex = 0;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(i) => ifindex = i.ipi_ifindex as u32,
                ControlMessageOwned::Ipv6PacketInfo(i) => ifindex = i.ipi6_ifindex,
                _ => {}
            }
        }
    }
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    Ok((msg.bytes, from, ifindex))
}

/// A query forwarded upstream, waiting for its answer.
struct Forwarded {
    client: SocketAddr,
    client_id: u16,
    entry: DnsQuery,
    deadline: std::time::Instant,
}

fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: getrandom writes at most 2 bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    if n == 2 {
        u16::from_ne_bytes(b)
    } else {
        (now_ns() >> 7) as u16
    }
}

fn answer(
    cfg: &DnsConfig,
    query: &Message,
    q: &hickory_proto::op::Query,
    entry: &mut DnsQuery,
) -> Option<Vec<u8>> {
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true)
        .add_query(q.clone());
    match cfg.records.get(&entry.name) {
        None => {
            resp.set_response_code(ResponseCode::NXDomain);
        }
        Some(addrs) => {
            for a in addrs {
                let rdata = match (a, q.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(rdata::A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(rdata::AAAA(*v6)),
                    _ => continue,
                };
                entry.answers.push(*a);
                resp.add_answer(Record::from_rdata(q.name().clone(), 60, rdata));
            }
        }
    }
    entry.rcode = resp.response_code().to_string();
    resp.to_vec().ok()
}

fn serve(
    cfg: &DnsConfig,
    sock: &UdpSocket,
    log: &Arc<Mutex<Vec<DnsQuery>>>,
    stop: &AtomicBool,
) -> Result<()> {
    // One upstream socket for every forwarded query (as dnsmasq does), answers matched by a
    // fresh random query id.
    let upstream = match cfg.upstream {
        Some(u) => {
            let bind: SocketAddr = if u.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(bind).context("upstream socket")?;
            s.set_nonblocking(true)?;
            Some((s, u))
        }
        None => None,
    };
    let mut pending: std::collections::HashMap<u16, Forwarded> = std::collections::HashMap::new();
    let push = |entry: DnsQuery| {
        if let Ok(mut l) = log.lock() {
            l.push(entry);
        }
    };
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = vec![libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some((u, _)) = &upstream {
            fds.push(libc::pollfd {
                fd: u.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: valid pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        // Answers from upstream, relayed with the client's id.
        if let Some((u, addr)) = &upstream {
            while let Ok((n, from)) = u.recv_from(&mut buf) {
                if from != *addr || n < 12 {
                    continue;
                }
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let Some(mut f) = pending.remove(&id) else {
                    continue;
                };
                if let Ok(m) = Message::from_vec(&buf[..n]) {
                    f.entry.rcode = m.response_code().to_string();
                    f.entry.answers = addresses(&m);
                }
                buf[..2].copy_from_slice(&f.client_id.to_be_bytes());
                let _ = sock.send_to(&buf[..n], f.client);
                push(f.entry);
            }
        }
        let now = std::time::Instant::now();
        let expired: Vec<u16> = pending
            .iter()
            .filter(|(_, f)| now >= f.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(mut f) = pending.remove(&id) {
                f.entry.rcode = "timeout".into();
                push(f.entry);
            }
        }
        loop {
            let (n, from, ifindex) = match recv_with_iface(sock, &mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(e).context("DNS receive"),
            };
            // Malformed queries are ignored, as a resolver would.
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if query.message_type() != MessageType::Query {
                continue;
            }
            let Some(q) = query.queries().first().cloned() else {
                continue;
            };
            let name = q
                .name()
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let mut entry = DnsQuery {
                at_ns: now_ns(),
                server: cfg.label.clone(),
                from,
                iface: ifname(ifindex),
                name: name.clone(),
                qtype: q.query_type().to_string(),
                rcode: String::new(),
                answers: vec![],
                forwarded: false,
            };
            match (cfg.records.contains_key(&name), &upstream) {
                (false, Some((u, addr))) => {
                    let mut id = random_id();
                    while pending.contains_key(&id) {
                        id = random_id();
                    }
                    let mut fwd = buf[..n].to_vec();
                    fwd[..2].copy_from_slice(&id.to_be_bytes());
                    entry.forwarded = true;
                    if u.send_to(&fwd, addr).is_ok() {
                        pending.insert(
                            id,
                            Forwarded {
                                client: from,
                                client_id: query.id(),
                                entry,
                                deadline: std::time::Instant::now() + Duration::from_secs(2),
                            },
                        );
                    } else {
                        entry.rcode = "upstream unreachable".into();
                        push(entry);
                    }
                }
                _ => {
                    if let Some(bytes) = answer(cfg, &query, &q, &mut entry) {
                        let _ = sock.send_to(&bytes, from);
                    }
                    push(entry);
                }
            }
        }
    }
    Ok(())
}

/// Parses a name for a record table (lowercase, no trailing dot); rejects invalid names.
pub fn normalize_name(name: &str) -> Result<String> {
    let n = Name::from_ascii(name).with_context(|| format!("invalid DNS name '{name}'"))?;
    Ok(n.to_ascii().trim_end_matches('.').to_ascii_lowercase())
}
