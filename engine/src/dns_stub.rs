//! A split-DNS forwarder on the client's loopback, as NetworkManager does with dnsmasq.
//!
//! Names under the VPN's domains go to the VPN's name servers (which routing puts behind the
//! tunnel); every other name goes to the resolvers configured before the tunnel came up. One
//! thread, two non-blocking sockets, a table of forwarded queries keyed by a fresh query id;
//! an upstream that does not answer within 2 s is replaced by the next one of its group, and
//! when none is left the client gets SERVFAIL.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Forwarding rules.
#[derive(Clone, Debug)]
pub struct StubConfig {
    /// Listen address (127.0.0.1:53).
    pub listen: SocketAddr,
    /// Domains whose names go to `tunnel_servers` (`""` = every name).
    pub split_domains: Vec<String>,
    /// The VPN's name servers.
    pub tunnel_servers: Vec<SocketAddr>,
    /// The resolvers from before the tunnel.
    pub default_servers: Vec<SocketAddr>,
}

/// A running stub.
pub struct Stub {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The first question's name of a DNS message, lowercased, without the trailing dot.
pub fn question_name(msg: &[u8]) -> Option<String> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let mut pos = 12;
    let mut labels: Vec<String> = vec![];
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        // Compression pointers do not occur in a query's first name.
        if len & 0xc0 != 0 {
            return None;
        }
        let l = msg.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
        pos += len;
        if labels.len() > 127 {
            return None;
        }
    }
    Some(labels.join("."))
}

/// True when `name` is `domain` or below it (`""` matches everything).
pub fn in_domain(name: &str, domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d.is_empty() || name == d || name.ends_with(&format!(".{d}"))
}

struct Pending {
    client: SocketAddr,
    client_id: u16,
    query: Vec<u8>,
    servers: Vec<SocketAddr>,
    next: usize,
    deadline: Instant,
}

fn servfail(query: &[u8]) -> Vec<u8> {
    let mut r = query.to_vec();
    if r.len() >= 4 {
        r[2] |= 0x80; // QR
        r[3] = (r[3] & 0xf0) | 2; // RCODE SERVFAIL
    }
    r
}

impl Stub {
    /// Binds and starts the forwarder thread.
    pub fn start(cfg: StubConfig) -> io::Result<Stub> {
        let listen = UdpSocket::bind(cfg.listen)?;
        listen.set_nonblocking(true)?;
        let upstream = UdpSocket::bind(if cfg.listen.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })?;
        upstream.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("dns-stub".into())
            .spawn(move || run(&cfg, &listen, &upstream, &st))?;
        Ok(Stub {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the forwarder.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(cfg: &StubConfig, listen: &UdpSocket, upstream: &UdpSocket, stop: &AtomicBool) {
    let mut pending: HashMap<u16, Pending> = HashMap::new();

    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: listen.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: upstream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        while let Ok((n, client)) = listen.recv_from(&mut buf) {
            let q = &buf[..n];
            if n < 12 {
                continue;
            }
            let name = question_name(q).unwrap_or_default();
            let split = cfg.split_domains.iter().any(|d| in_domain(&name, d));
            let servers = if split || cfg.default_servers.is_empty() {
                cfg.tunnel_servers.clone()
            } else {
                cfg.default_servers.clone()
            };
            // A random forwarding id (not the client's): an off-path attacker must guess
            // it, and two clients' equal ids cannot collide.
            let mut id = random_id();
            while pending.contains_key(&id) {
                id = random_id();
            }
            let mut p = Pending {
                client,
                client_id: u16::from_be_bytes([q[0], q[1]]),
                query: q.to_vec(),
                servers,
                next: 0,
                deadline: Instant::now(),
            };
            if forward(upstream, &mut p, id) {
                pending.insert(id, p);
            } else {
                let _ = listen.send_to(&servfail(q), client);
            }
        }
        while let Ok((n, from)) = upstream.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            // Only answers from the server the query went to.
            let ok = pending
                .get(&id)
                .is_some_and(|p| p.servers.get(p.next.wrapping_sub(1)) == Some(&from));
            if !ok {
                continue;
            }
            if let Some(p) = pending.remove(&id) {
                buf[..2].copy_from_slice(&p.client_id.to_be_bytes());
                let _ = listen.send_to(&buf[..n], p.client);
            }
        }
        let now = Instant::now();
        let expired: Vec<u16> = pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(mut p) = pending.remove(&id) else {
                continue;
            };
            if forward(upstream, &mut p, id) {
                pending.insert(id, p);
            } else {
                let _ = listen.send_to(&servfail(&p.query), p.client);
            }
        }
    }
}

fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: getrandom writes at most 2 bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    if n != 2 {
        // Never fails for 2 bytes after boot; fall back to the clock's low bits.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return (t >> 4) as u16;
    }
    u16::from_ne_bytes(b)
}

/// Sends the query to the next server of its group; false when none is left.
fn forward(upstream: &UdpSocket, p: &mut Pending, id: u16) -> bool {
    while let Some(server) = p.servers.get(p.next).copied() {
        p.next += 1;
        let mut q = p.query.clone();
        q[..2].copy_from_slice(&id.to_be_bytes());
        if upstream.send_to(&q, server).is_ok() {
            p.deadline = Instant::now() + UPSTREAM_TIMEOUT;
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn names_and_domains() {
        assert_eq!(
            question_name(&query("Intranet.Corp.Example")).as_deref(),
            Some("intranet.corp.example")
        );
        assert_eq!(question_name(&[0; 11]), None);
        assert_eq!(question_name(&query("x")[..14]), None);
        assert!(in_domain("intranet.corp.example", "corp.example"));
        assert!(in_domain("corp.example", "corp.example."));
        assert!(!in_domain("notcorp.example", "corp.example"));
        assert!(in_domain("anything", ""));
    }

    /// Two fake upstreams on loopback: names are routed by domain, answers relayed with the
    /// client's query id.
    #[test]
    fn forwards_by_domain() {
        let corp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let public = UdpSocket::bind("127.0.0.1:0").unwrap();
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let stub = Stub::start(StubConfig {
            listen,
            split_domains: vec!["corp.example".into()],
            tunnel_servers: vec![corp.local_addr().unwrap()],
            default_servers: vec![public.local_addr().unwrap()],
        })
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        for (name, upstream) in [
            ("intranet.corp.example", &corp),
            ("www.example.com", &public),
        ] {
            client.send_to(&query(name), listen).unwrap();
            upstream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let mut b = [0u8; 512];
            let (n, from) = upstream
                .recv_from(&mut b)
                .expect("query forwarded to the right upstream");
            assert_eq!(question_name(&b[..n]).as_deref(), Some(name));
            b[2] |= 0x80;
            upstream.send_to(&b[..n], from).unwrap();
            let (m, _) = client.recv_from(&mut b).expect("answer relayed");
            assert_eq!(&b[..2], &[0x12, 0x34], "client's query id restored");
            assert_eq!(m, n);
        }
        stub.stop();
    }
}
