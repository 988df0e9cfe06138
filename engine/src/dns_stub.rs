//! A split-DNS forwarder on the client's loopback, as NetworkManager does with dnsmasq.
//!
//! Names under the VPN's domains go to the VPN's name servers (which routing puts behind the
//! tunnel); every other name goes to the resolvers configured before the tunnel came up. One
//! thread; every forwarded query gets its own socket (a random source port) and a random
//! query id, and only an answer from the server it went to, to that port, with that id and
//! the same question is relayed — an off-path forger must guess about 32 bits, not 16. An
//! upstream that does not answer within 2 s is replaced by the next one of its group; when
//! none is left the client gets SERVFAIL. At most [`MAX_PENDING`] queries are in flight: past
//! that a client gets SERVFAIL at once, so a flood neither grows memory nor stalls shutdown.

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
/// Queries forwarded and not yet answered, at most.
pub const MAX_PENDING: usize = 256;

/// The first question's name of a DNS message, lowercased, without the trailing dot.
pub fn question_name(msg: &[u8]) -> Option<String> {
    let q = question(msg)?;
    let mut pos = 0;
    let mut labels: Vec<String> = vec![];
    loop {
        let len = usize::from(*q.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    Some(labels.join("."))
}

/// The first question (name, type, class) of a DNS message, as bytes: an answer must repeat
/// its query's. `None` when there is none or it does not parse.
pub fn question(msg: &[u8]) -> Option<&[u8]> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let mut pos = 12;
    for _ in 0..128 {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            return msg.get(12..pos + 4);
        }
        // Compression pointers do not occur in a query's first name.
        if len & 0xc0 != 0 {
            return None;
        }
        pos += len;
    }
    None
}

/// True when `name` is `domain` or below it (`""` matches everything).
pub fn in_domain(name: &str, domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d.is_empty() || name == d || name.ends_with(&format!(".{d}"))
}

/// One forwarded query.
struct Pending {
    client: SocketAddr,
    client_id: u16,
    query: Vec<u8>,
    servers: Vec<SocketAddr>,
    /// Index of the server asked last.
    asked: usize,
    deadline: Instant,
    /// The socket and id of the current attempt (new ones for each server tried).
    sock: UdpSocket,
    id: u16,
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
    /// Binds and starts the forwarder thread. Upstreams that are the stub itself are left
    /// out (a server pushing the stub's own address would make it forward to itself).
    pub fn start(mut cfg: StubConfig) -> io::Result<Stub> {
        let listen = UdpSocket::bind(cfg.listen)?;
        listen.set_nonblocking(true)?;
        let me = listen.local_addr()?;
        for servers in [&mut cfg.tunnel_servers, &mut cfg.default_servers] {
            servers.retain(|s| {
                let loops = is_self(*s, me);
                if loops {
                    tracing::warn!("DNS stub: upstream {s} is the stub itself, left out");
                }
                !loops
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("dns-stub".into())
            .spawn(move || run(&cfg, &listen, &st))?;
        Ok(Stub {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the forwarder.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Whether sending to `server` reaches the stub listening on `me`.
fn is_self(server: SocketAddr, me: SocketAddr) -> bool {
    server.port() == me.port()
        && (server.ip() == me.ip()
            || (me.ip().is_unspecified() || me.ip().is_loopback()) && server.ip().is_loopback())
}

fn run(cfg: &StubConfig, listen: &UdpSocket, stop: &AtomicBool) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        fds.clear();
        fds.extend(
            std::iter::once(listen.as_raw_fd())
                .chain(pending.iter().map(|p| p.sock.as_raw_fd()))
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                }),
        );
        // SAFETY: `fds` holds fds.len() valid pollfds for sockets that stay open meanwhile.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        // Answers first: they make room for new queries.
        let mut done = Vec::new();
        for (i, p) in pending.iter().enumerate() {
            if fds[i + 1].revents != 0
                && let Some(n) = take_answer(p, &mut buf)
            {
                buf[..2].copy_from_slice(&p.client_id.to_be_bytes());
                let _ = listen.send_to(&buf[..n], p.client);
                done.push(i);
            }
        }
        // Highest index first, so swap_remove never moves an entry still to be removed.
        for i in done.into_iter().rev() {
            pending.swap_remove(i);
        }
        while let Ok((n, client)) = listen.recv_from(&mut buf) {
            let q = &buf[..n];
            if n < 12 {
                continue;
            }
            if pending.len() >= MAX_PENDING {
                let _ = listen.send_to(&servfail(q), client);
                continue;
            }
            let name = question_name(q).unwrap_or_default();
            let split = cfg.split_domains.iter().any(|d| in_domain(&name, d));
            let servers = if split || cfg.default_servers.is_empty() {
                cfg.tunnel_servers.clone()
            } else {
                cfg.default_servers.clone()
            };
            match forward(q, &servers, 0) {
                Some((sock, id, asked)) => pending.push(Pending {
                    client,
                    client_id: u16::from_be_bytes([q[0], q[1]]),
                    query: q.to_vec(),
                    servers,
                    asked,
                    deadline: Instant::now() + UPSTREAM_TIMEOUT,
                    sock,
                    id,
                }),
                None => {
                    let _ = listen.send_to(&servfail(q), client);
                }
            }
        }
        let now = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            let p = &mut pending[i];
            if now < p.deadline {
                i += 1;
                continue;
            }
            match forward(&p.query, &p.servers, p.asked + 1) {
                Some((sock, id, asked)) => {
                    (p.sock, p.id, p.asked) = (sock, id, asked);
                    p.deadline = now + UPSTREAM_TIMEOUT;
                    i += 1;
                }
                None => {
                    let p = pending.swap_remove(i);
                    let _ = listen.send_to(&servfail(&p.query), p.client);
                }
            }
        }
    }
}

/// Reads what arrived on a query's socket; the length of the first datagram that answers
/// it (its id, a response, the same question), or `None`. Anything else is discarded. The
/// socket is connected to the server, so the kernel already refused other sources.
fn take_answer(p: &Pending, buf: &mut [u8]) -> Option<usize> {
    let want = question(&p.query)?;
    while let Ok(n) = p.sock.recv(buf) {
        let a = &buf[..n];
        let answers = n >= 12
            && u16::from_be_bytes([a[0], a[1]]) == p.id
            && a[2] & 0x80 != 0
            && question(a) == Some(want);
        if answers {
            return Some(n);
        }
        tracing::debug!(
            "DNS stub: a datagram that does not answer query {} discarded",
            p.id
        );
    }
    None
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

/// Sends `query` to the first server from index `from` that a fresh socket (random port,
/// connected to the server) reaches, under a fresh random id. Returns the socket, the id and
/// the server's index; `None` when no server is left.
fn forward(query: &[u8], servers: &[SocketAddr], from: usize) -> Option<(UdpSocket, u16, usize)> {
    for (i, server) in servers.iter().enumerate().skip(from) {
        let any: SocketAddr = if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let Ok(sock) = UdpSocket::bind(any) else {
            continue;
        };
        let id = random_id();
        let mut q = query.to_vec();
        q[..2].copy_from_slice(&id.to_be_bytes());
        let sent = sock.set_nonblocking(true).is_ok()
            && sock.connect(server).is_ok()
            && sock.send(&q).is_ok();
        if sent {
            return Some((sock, id, i));
        }
    }
    None
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
        let q = query("a.bc");
        assert_eq!(question(&q), Some(&q[12..]));
        let mut pointer = query("a");
        pointer[12] = 0xc0;
        assert_eq!(question(&pointer), None);
    }

    /// A stub on a free loopback port with one upstream for everything, and a client socket.
    fn stub_with(upstreams: Vec<SocketAddr>) -> (Stub, SocketAddr, UdpSocket) {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let stub = Stub::start(StubConfig {
            listen,
            split_domains: vec![String::new()],
            tunnel_servers: upstreams,
            default_servers: vec![],
        })
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        (stub, listen, client)
    }

    fn upstream() -> UdpSocket {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        u
    }

    /// Forged answers — from another port, with another id, or for another question — are
    /// not relayed; the real one is, once.
    #[test]
    fn only_the_real_answer_is_relayed() {
        let up = upstream();
        let (stub, listen, client) = stub_with(vec![up.local_addr().unwrap()]);
        client
            .send_to(&query("intranet.corp.example"), listen)
            .unwrap();
        let mut b = [0u8; 512];
        let (n, from) = up.recv_from(&mut b).expect("forwarded");
        let mut answer = b[..n].to_vec();
        answer[2] |= 0x80;
        // From another port of the same host (the socket is connected: the kernel drops it).
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut forged = answer.clone();
        forged.push(1);
        other.send_to(&forged, from).unwrap();
        // The right source, a guessed id.
        let mut wrong_id = answer.clone();
        wrong_id[0] ^= 0x5a;
        wrong_id.push(2);
        up.send_to(&wrong_id, from).unwrap();
        // The right source and id, another question.
        let mut other_q = query("evil.example");
        other_q[..2].copy_from_slice(&answer[..2]);
        other_q[2] |= 0x80;
        up.send_to(&other_q, from).unwrap();
        // Not a response (QR clear).
        let mut not_qr = answer.clone();
        not_qr[2] &= 0x7f;
        not_qr.push(3);
        up.send_to(&not_qr, from).unwrap();
        up.send_to(&answer, from).unwrap();
        let (m, _) = client.recv_from(&mut b).expect("the real answer relayed");
        assert_eq!(m, answer.len(), "a forged answer was relayed");
        assert_eq!(&b[..2], &[0x12, 0x34]);
        assert_eq!(
            question_name(&b[..m]).as_deref(),
            Some("intranet.corp.example")
        );
        assert!(client.recv_from(&mut b).is_err(), "relayed twice");
        stub.stop();
    }

    /// Queries in flight each leave from their own port, under their own id.
    #[test]
    fn each_query_has_its_own_source_port() {
        let up = upstream();
        let (stub, listen, client) = stub_with(vec![up.local_addr().unwrap()]);
        let mut ports = std::collections::HashSet::new();
        for i in 0..8 {
            client
                .send_to(&query(&format!("h{i}.example")), listen)
                .unwrap();
            let mut b = [0u8; 512];
            let (_, from) = up.recv_from(&mut b).expect("forwarded");
            ports.insert(from.port());
        }
        assert_eq!(ports.len(), 8, "source ports reused: {ports:?}");
        stub.stop();
    }

    /// A flood of queries to an upstream that never answers: at most MAX_PENDING wait, the
    /// rest get SERVFAIL at once; the stub stops promptly afterwards (it used to spin
    /// forever once 65,536 ids were taken).
    #[test]
    fn a_flood_is_bounded_and_stop_is_prompt() {
        let silent = upstream();
        let (stub, listen, client) = stub_with(vec![silent.local_addr().unwrap()]);
        let sent = 2000;
        let mut servfails = 0;
        let mut b = [0u8; 512];
        for i in 0..sent {
            client
                .send_to(&query(&format!("f{i}.example")), listen)
                .unwrap();
            if i % 100 == 99 {
                while let Ok((n, _)) = client.recv_from(&mut b) {
                    if n >= 4 && b[3] & 0x0f == 2 {
                        servfails += 1;
                    }
                    client
                        .set_read_timeout(Some(Duration::from_millis(20)))
                        .unwrap();
                }
            }
        }
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        while let Ok((n, _)) = client.recv_from(&mut b) {
            if n >= 4 && b[3] & 0x0f == 2 {
                servfails += 1;
            }
        }
        assert!(
            servfails >= sent - MAX_PENDING,
            "{servfails} SERVFAILs for {sent} queries"
        );
        let t = Instant::now();
        stub.stop();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "stop took {:?}",
            t.elapsed()
        );
    }

    /// A pushed name server that is the stub itself (127.0.0.1:53 when it listens there) is
    /// left out: the client gets SERVFAIL instead of a forwarding loop.
    #[test]
    fn itself_as_upstream_is_left_out() {
        let stub_at = SocketAddr::from(([127, 0, 0, 1], 53));
        assert!(is_self(SocketAddr::from(([127, 0, 0, 53], 53)), stub_at));
        assert!(is_self(stub_at, stub_at));
        assert!(!is_self(SocketAddr::from(([198, 19, 10, 53], 53)), stub_at));
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let stub = Stub::start(StubConfig {
            listen,
            split_domains: vec![String::new()],
            tunnel_servers: vec![listen],
            default_servers: vec![],
        })
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        client.send_to(&query("loop.example"), listen).unwrap();
        let mut b = [0u8; 512];
        let (n, _) = client.recv_from(&mut b).expect("an answer");
        assert_eq!(b[3] & 0x0f, 2, "SERVFAIL expected, got {:?}", &b[..n]);
        stub.stop();
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
