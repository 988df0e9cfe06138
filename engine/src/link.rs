//! The link to the peer: a UDP socket (batched with GSO/GRO through quinn-udp) or a TCP stream
//! carrying length-prefixed OpenVPN packets.
//!
//! The link is shared by three threads: the control thread sends single control packets
//! ([`Link::send_one`]); the tx thread sends batches ([`TxBatch`]); the rx thread receives
//! ([`RxBatch`]). UDP sends are independent datagrams, so no lock is needed; TCP writes of
//! whole frames are serialised by a mutex so that records never interleave.

use std::io::{self, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tunscope_proto::stage::DropReason;
use tunscope_proto::wire::{TcpFramer, tcp_frame};

/// Socket buffer size we ask for (with the FORCE variants when running as root). Small
/// default buffers are the main source of loss for a userspace tunnel on a busy box.
const SOCKET_BUFFER: usize = 8 << 20;
/// Largest payload of one GSO send (a UDP datagram's limit, minus headers).
const MAX_GSO_BYTES: usize = 65_000;
/// Datagrams per `recvmmsg`.
const RX_BATCH: usize = 32;
/// Largest buffer one GRO receive can fill.
const GRO_BUFFER: usize = 65535;

/// Which transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// A UDP socket with quinn-udp's batching state (GSO send, GRO + `recvmmsg` receive).
pub struct UdpEndpoint {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl UdpEndpoint {
    /// Binds `addr` and prepares it for batching. Fragmentation is allowed again (quinn-udp
    /// forbids it because QUIC does its own PMTU discovery; OpenVPN leaves it to the kernel,
    /// and a full-size tun packet plus 24 bytes of overhead must get through a 1500-byte link).
    pub fn bind(addr: SocketAddr) -> io::Result<UdpEndpoint> {
        UdpEndpoint::bind_shared(addr, false)
    }

    /// Like [`UdpEndpoint::bind`]; with `reuse_port`, several endpoints share the address
    /// (SO_REUSEPORT) and the kernel spreads senders over them by address hash.
    pub fn bind_shared(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpEndpoint> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if reuse_port {
            sock.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            // As std's bind: IPv6 sockets also take IPv4-mapped traffic where the system allows.
            let _ = sock.set_only_v6(false);
        }
        sock.bind(&addr.into())?;
        let socket: UdpSocket = sock.into();
        let state = UdpSocketState::new((&socket).into())?;
        let fd = socket.as_raw_fd();
        if addr.is_ipv4() {
            set_int_opt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            );
        } else {
            set_int_opt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DONT,
            );
            set_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 0);
        }
        force_buffers(fd);
        Ok(UdpEndpoint { socket, state })
    }

    /// The socket.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Sends one datagram to `dest`.
    pub fn send_to(&self, packet: &[u8], dest: SocketAddr) -> io::Result<()> {
        self.socket.send_to(packet, dest).map(|_| ())
    }
}

enum Sock {
    Udp(UdpEndpoint),
    Tcp {
        read: Mutex<TcpStream>,
        write: Mutex<TcpStream>,
        fd: RawFd,
    },
}

/// A connected link.
pub struct Link {
    sock: Sock,
    peer: SocketAddr,
}

fn force_buffers(fd: RawFd) {
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        let v = SOCKET_BUFFER as libc::c_int;
        let set = |opt| {
            // SAFETY: fd is a valid socket owned by the caller; the option value is a c_int.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 {
            set(plain);
        }
    }
}

/// Datagrams the kernel dropped at this socket (receive buffer full), from `SO_MEMINFO`.
pub fn socket_drops(fd: RawFd) -> Option<u64> {
    const SK_MEMINFO_VARS: usize = 9;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut v = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
    // SAFETY: valid fd; the buffer and its length describe `v`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            v.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (r == 0).then_some(u64::from(v[SK_MEMINFO_DROPS]))
}

impl Link {
    /// A duplicate of the UDP socket's fd (for reading its kernel counters), if UDP.
    pub fn udp_fd(&self) -> Option<std::os::fd::OwnedFd> {
        match &self.sock {
            Sock::Udp(ep) => ep.socket.try_clone().ok().map(std::os::fd::OwnedFd::from),
            Sock::Tcp { .. } => None,
        }
    }
}

fn set_int_opt(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: as in force_buffers.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl Link {
    /// Opens a UDP link to `peer`, bound to `local` (`local ADDR`, else any) and `lport`
    /// (0 = ephemeral).
    pub fn udp(peer: SocketAddr, local: Option<std::net::IpAddr>, lport: u16) -> io::Result<Link> {
        let bind: SocketAddr = match local {
            Some(a) => (a, lport).into(),
            None if peer.is_ipv4() => (std::net::Ipv4Addr::UNSPECIFIED, lport).into(),
            None => (std::net::Ipv6Addr::UNSPECIFIED, lport).into(),
        };
        let ep = UdpEndpoint::bind(bind)?;
        ep.socket.connect(peer)?;
        Ok(Link {
            sock: Sock::Udp(ep),
            peer,
        })
    }

    /// Opens a TCP link to `peer` within `timeout`, from `local` (`local`/`lport`) if given.
    pub fn tcp(peer: SocketAddr, local: Option<SocketAddr>, timeout: Duration) -> io::Result<Link> {
        let stream = match local {
            None => TcpStream::connect_timeout(&peer, timeout)?,
            Some(l) => {
                let sock = socket2::Socket::new(
                    socket2::Domain::for_address(peer),
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                sock.set_reuse_address(true)?;
                sock.bind(&l.into())?;
                sock.connect_timeout(&peer.into(), timeout)?;
                sock.into()
            }
        };
        Link::from_tcp(stream, peer)
    }

    /// A TCP link over an already connected stream (e.g. through a proxy); `peer` names the
    /// far end in logs and captures.
    pub fn from_tcp(stream: TcpStream, peer: SocketAddr) -> io::Result<Link> {
        stream.set_nodelay(true)?;
        // The rx thread wakes up regularly to notice shutdown.
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let fd = stream.as_raw_fd();
        force_buffers(fd);
        let write = stream.try_clone()?;
        Ok(Link {
            sock: Sock::Tcp {
                read: Mutex::new(stream),
                write: Mutex::new(write),
                fd,
            },
            peer,
        })
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.sock {
            Sock::Udp(ep) => ep.socket.local_addr(),
            Sock::Tcp { write, .. } => lock(write).local_addr(),
        }
    }

    /// The transport.
    pub fn kind(&self) -> LinkKind {
        match self.sock {
            Sock::Udp(_) => LinkKind::Udp,
            Sock::Tcp { .. } => LinkKind::Tcp,
        }
    }

    /// The fd to poll for reading.
    pub fn raw_fd(&self) -> RawFd {
        match &self.sock {
            Sock::Udp(ep) => ep.socket.as_raw_fd(),
            Sock::Tcp { fd, .. } => *fd,
        }
    }

    /// Sends one packet (control packets, pings).
    pub fn send_one(&self, packet: &[u8]) -> io::Result<()> {
        match &self.sock {
            Sock::Udp(ep) => ep.socket.send(packet).map(|_| ()),
            Sock::Tcp { write, .. } => {
                let mut frame = Vec::with_capacity(packet.len() + 2);
                tcp_frame(packet, &mut frame).map_err(|_| io::Error::other("packet too big"))?;
                lock(write).write_all(&frame)
            }
        }
    }

    /// Closes the link (wakes a blocked TCP reader).
    pub fn shutdown(&self) {
        if let Sock::Tcp { write, .. } = &self.sock {
            let _ = lock(write).shutdown(std::net::Shutdown::Both);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-write; the stream is still usable
    // for what we do with it (the peer sees a truncated record and resets the connection).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a flush of a [`TxBatch`] did: packets and bytes sent and failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Packets the socket took.
    pub sent: u64,
    /// Their bytes.
    pub sent_bytes: u64,
    /// Packets it refused.
    pub failed: u64,
    /// Their bytes.
    pub failed_bytes: u64,
}

impl Flushed {
    /// All `packets` (`bytes` in total) sent, or all failed.
    pub fn all(ok: bool, packets: u64, bytes: u64) -> Flushed {
        if ok {
            Flushed {
                sent: packets,
                sent_bytes: bytes,
                ..Flushed::default()
            }
        } else {
            Flushed {
                failed: packets,
                failed_bytes: bytes,
                ..Flushed::default()
            }
        }
    }
}

/// Sealed packets waiting to go out, stored back to back for GSO.
pub struct TxBatch {
    buf: Vec<u8>,
    /// Bytes of `buf` holding committed packets (the rest is the open reservation).
    committed: usize,
    lens: Vec<usize>,
    frames: Vec<u8>,
}

impl Default for TxBatch {
    fn default() -> Self {
        TxBatch::new()
    }
}

impl TxBatch {
    /// An empty batch.
    pub fn new() -> TxBatch {
        TxBatch {
            buf: Vec::with_capacity(256 * 1024),
            committed: 0,
            lens: Vec::with_capacity(256),
            frames: Vec::with_capacity(256 * 1024),
        }
    }

    /// Room for the next packet: returns a zeroed slice of `max` bytes to seal into; call
    /// [`TxBatch::commit`] with the length actually used.
    pub fn reserve(&mut self, max: usize) -> &mut [u8] {
        self.buf.resize(self.committed + max, 0);
        &mut self.buf[self.committed..]
    }

    /// Keeps `len` bytes of the last reservation as a packet.
    pub fn commit(&mut self, len: usize) {
        self.committed += len;
        self.buf.truncate(self.committed);
        self.lens.push(len);
    }

    /// Discards the last reservation.
    pub fn abort(&mut self) {
        self.buf.truncate(self.committed);
    }

    /// Where the next committed packet goes, for [`TxBatch::packet_at`].
    pub fn mark(&self) -> (usize, usize) {
        (self.lens.len(), self.committed)
    }

    /// The packet committed at `mark` (from [`TxBatch::mark`]), if any was.
    pub fn packet_at(&self, (index, offset): (usize, usize)) -> Option<&[u8]> {
        let len = *self.lens.get(index)?;
        self.buf.get(offset..offset + len)
    }

    /// Packets in the batch.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Bytes of the committed packets.
    pub fn bytes(&self) -> u64 {
        self.committed as u64
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.committed = 0;
        self.lens.clear();
    }

    /// Sends everything over a connected link and empties the batch.
    pub fn flush(&mut self, link: &Link) -> Flushed {
        let r = match &link.sock {
            Sock::Udp(ep) => self.flush_udp(ep, link.peer),
            Sock::Tcp { write, .. } => {
                let mut frames = std::mem::take(&mut self.frames);
                frames.clear();
                let (n, bytes) = self.frame_into(&mut frames);
                let ok = lock(write).write_all(&frames).is_ok();
                self.frames = frames;
                Flushed::all(ok, n, bytes)
            }
        };
        self.clear();
        r
    }

    /// Hands each packet to `send` (true: it went out) and empties the batch: for
    /// transports without batching.
    pub fn send_each(&mut self, mut send: impl FnMut(&[u8]) -> bool) -> Flushed {
        let mut f = Flushed::default();
        let mut off = 0;
        for &l in &self.lens {
            if send(&self.buf[off..off + l]) {
                f.sent += 1;
                f.sent_bytes += l as u64;
            } else {
                f.failed += 1;
                f.failed_bytes += l as u64;
            }
            off += l;
        }
        self.clear();
        f
    }

    /// Sends everything to `dest` over a UDP endpoint (GSO where sizes allow) and empties the
    /// batch.
    pub fn flush_to(&mut self, ep: &UdpEndpoint, dest: SocketAddr) -> Flushed {
        let r = self.flush_udp(ep, dest);
        self.clear();
        r
    }

    /// Appends the committed packets to `out` as TCP records (length-prefixed), for a TCP
    /// sender, and empties the batch. Returns packets and their bytes (without the prefixes).
    pub fn take_frames(&mut self, out: &mut Vec<u8>) -> (u64, u64) {
        let r = self.frame_into(out);
        self.clear();
        r
    }

    fn frame_into(&self, out: &mut Vec<u8>) -> (u64, u64) {
        let mut off = 0;
        for &l in &self.lens {
            // Packets are far below 64 KiB, framing cannot fail.
            let _ = tcp_frame(&self.buf[off..off + l], out);
            off += l;
        }
        (self.lens.len() as u64, self.committed as u64)
    }

    fn flush_udp(&self, ep: &UdpEndpoint, peer: SocketAddr) -> Flushed {
        let (socket, state) = (&ep.socket, &ep.state);
        let max_segs = state.max_gso_segments().max(1);
        let mut f = Flushed::default();
        let mut i = 0;
        let mut off = 0;
        while i < self.lens.len() {
            // A GSO group: equal-sized packets, optionally ending with one smaller packet.
            let seg = self.lens[i];
            let mut j = i + 1;
            let mut bytes = seg;
            while j < self.lens.len() && j - i < max_segs {
                let l = self.lens[j];
                // One GSO send is one UDP datagram to the kernel: at most 64 KiB in total.
                if l > seg || bytes + l > MAX_GSO_BYTES {
                    break;
                }
                bytes += l;
                j += 1;
                if l < seg {
                    break;
                }
            }
            let count = (j - i) as u64;
            let t = Transmit {
                destination: peer,
                ecn: None,
                contents: &self.buf[off..off + bytes],
                segment_size: (count > 1).then_some(seg),
                src_ip: None,
            };
            match send_retrying(socket, state, &t) {
                Ok(()) => {
                    f.sent += count;
                    f.sent_bytes += bytes as u64;
                }
                Err(e) if count > 1 && e.kind() != io::ErrorKind::WouldBlock => {
                    // GSO refused (e.g. segment above the path MTU): one by one.
                    let mut o = off;
                    for &l in &self.lens[i..j] {
                        match socket.send_to(&self.buf[o..o + l], peer) {
                            Ok(_) => {
                                f.sent += 1;
                                f.sent_bytes += l as u64;
                            }
                            Err(_) => {
                                f.failed += 1;
                                f.failed_bytes += l as u64;
                            }
                        }
                        o += l;
                    }
                }
                Err(_) => {
                    f.failed += count;
                    f.failed_bytes += bytes as u64;
                }
            }
            off += bytes;
            i = j;
        }
        f
    }
}

/// Sends one (possibly GSO) transmit; when the socket buffer is full, waits for room a few
/// times before giving up (the packets are then counted as send failures).
fn send_retrying(socket: &UdpSocket, state: &UdpSocketState, t: &Transmit<'_>) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match state.try_send(socket.into(), t) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < 20 => {
                tries += 1;
                let _ = crate::poll::wait_writable(socket.as_raw_fd(), Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// Buffers for receiving a batch of packets.
pub struct RxBatch {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    n: usize,
    framer: TcpFramer,
    tcp_buf: Vec<u8>,
}

impl Default for RxBatch {
    fn default() -> Self {
        RxBatch::new()
    }
}

/// Result of a receive.
pub enum Received {
    /// Packets are ready (iterate with [`RxBatch::for_each`]).
    Packets,
    /// Nothing arrived within the wait.
    Idle,
    /// The link is gone (TCP closed or a fatal socket error).
    Closed(String),
}

impl RxBatch {
    /// Empty buffers.
    pub fn new() -> RxBatch {
        RxBatch {
            bufs: (0..RX_BATCH).map(|_| vec![0; GRO_BUFFER]).collect(),
            meta: vec![RecvMeta::default(); RX_BATCH],
            n: 0,
            framer: TcpFramer::new(),
            tcp_buf: vec![0; 256 * 1024],
        }
    }

    /// Receives a batch of datagrams from a UDP endpoint, waiting up to `wait` when none is
    /// ready.
    pub fn recv_udp(&mut self, ep: &UdpEndpoint, wait: Duration) -> Received {
        self.n = 0;
        let mut slices: Vec<IoSliceMut<'_>> =
            self.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        match ep
            .state
            .recv((&ep.socket).into(), &mut slices, &mut self.meta)
        {
            Ok(n) => {
                self.n = n;
                Received::Packets
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = crate::poll::wait_readable(ep.socket.as_raw_fd(), wait);
                Received::Idle
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Received::Idle,
            // ICMP errors (port unreachable) surface here on a connected socket.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Received::Idle,
            Err(e) => Received::Closed(format!("UDP receive: {e}")),
        }
    }

    /// Calls `f` with every datagram of the last [`RxBatch::recv_udp`] (GRO buffers split by
    /// their stride) and its source.
    pub fn for_each_datagram(&mut self, mut f: impl FnMut(&mut [u8], SocketAddr)) {
        for i in 0..self.n {
            let m = self.meta[i];
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let mut off = 0;
            while off < m.len {
                let end = (off + stride).min(m.len);
                f(&mut self.bufs[i][off..end], m.addr);
                off = end;
            }
        }
    }

    /// Waits up to `wait` until the link has something to read. Returns true when it has.
    pub fn wait(&self, link: &Link, wait: Duration) -> bool {
        crate::poll::wait_readable(link.raw_fd(), wait).unwrap_or(false)
    }

    /// Receives what is available, waiting up to `wait` for the first bytes.
    pub fn recv(&mut self, link: &Link, wait: Duration) -> Received {
        self.n = 0;
        match &link.sock {
            Sock::Udp(ep) => self.recv_udp(ep, wait),
            Sock::Tcp { read, .. } => {
                let mut s = lock(read);
                match s.read(&mut self.tcp_buf) {
                    Ok(0) => Received::Closed("TCP connection closed by the server".into()),
                    Ok(n) => {
                        self.framer.push(&self.tcp_buf[..n]);
                        Received::Packets
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) =>
                    {
                        Received::Idle
                    }
                    Err(e) => Received::Closed(format!("TCP receive: {e}")),
                }
            }
        }
    }

    /// Calls `f` with every received packet (mutable, for in-place decryption) and its
    /// source address. Stops the TCP stream on a framing error and reports it.
    pub fn for_each(
        &mut self,
        link: &Link,
        mut f: impl FnMut(&mut [u8], SocketAddr),
    ) -> Result<(), DropReason> {
        match &link.sock {
            Sock::Udp(_) => {
                self.for_each_datagram(f);
                Ok(())
            }
            Sock::Tcp { .. } => {
                let peer = link.peer;
                while let Some(p) = self.framer.next_packet()? {
                    f(p, peer);
                }
                Ok(())
            }
        }
    }
}
