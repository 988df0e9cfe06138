//! An in-memory network for the data path (wireguard-go's `conn/bindtest`): ports with
//! made-up socket addresses exchange datagrams, or length-prefixed records over
//! "connections", through bounded queues, without the kernel. The in-process tier runs
//! clients and a server over it without root; a test can move a port to a new address (a
//! NAT rebinding: the server sees its client float) and count what the network dropped.
//!
//! Datagram mode behaves like UDP: a full queue drops the datagram (counted, as a kernel
//! drop would be). Stream mode behaves like TCP: each connection is an ordered byte stream;
//! records are cut at arbitrary points on the way, so the receiver's framing is exercised;
//! a full queue makes the sender wait (back-pressure), up to a limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tunscope_proto::server::PeerAddr;
use tunscope_proto::stage::DropReason;
use tunscope_proto::wire::tcp_frame;

/// Deliveries a port holds before it drops (datagrams) or blocks the sender (streams).
const PORT_QUEUE: usize = 4096;
/// How long a stream sender waits for room before giving up on a record.
const STREAM_WAIT: Duration = Duration::from_secs(2);

/// What arrives at a port: bytes and who sent them.
pub struct Delivery {
    /// The sender as the receiver knows it.
    pub from: PeerAddr,
    /// A datagram, or a piece of a stream.
    pub bytes: Vec<u8>,
}

#[derive(Default)]
struct NetState {
    ports: HashMap<SocketAddr, SyncSender<Delivery>>,
    /// Connection id → (client port address, server port address).
    conns: HashMap<u64, (SocketAddr, SocketAddr)>,
    next_conn: u64,
}

/// The network all ports of a test share.
#[derive(Clone, Default)]
pub struct MemNet {
    state: Arc<Mutex<NetState>>,
    dropped: Arc<AtomicU64>,
    /// Cuts stream records at varying points (a counter, so runs repeat).
    cut: Arc<AtomicU64>,
}

impl MemNet {
    /// A new, empty network.
    pub fn new() -> MemNet {
        MemNet::default()
    }

    /// Datagrams the network dropped because a receiver's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A datagram port at `addr` (a UDP socket).
    pub fn datagram(&self, addr: SocketAddr) -> MemPort {
        self.port(addr, Mode::Datagram)
    }

    /// A server's stream port at `addr` (a TCP listener with its connections).
    pub fn listener(&self, addr: SocketAddr) -> MemPort {
        self.port(addr, Mode::Listener)
    }

    /// A client's stream port at `addr`, connected to the listener at `server`.
    pub fn connect(&self, addr: SocketAddr, server: SocketAddr) -> MemPort {
        let id = {
            let mut st = self.lock();
            st.next_conn += 1;
            let id = st.next_conn;
            st.conns.insert(id, (addr, server));
            id
        };
        self.port(addr, Mode::Connected { id, server })
    }

    fn port(&self, addr: SocketAddr, mode: Mode) -> MemPort {
        let (tx, rx) = std::sync::mpsc::sync_channel(PORT_QUEUE);
        self.lock().ports.insert(addr, tx);
        MemPort {
            net: self.clone(),
            addr: Mutex::new(addr),
            rx: Mutex::new(rx),
            mode,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Datagram,
    Listener,
    Connected { id: u64, server: SocketAddr },
}

/// One endpoint on a [`MemNet`].
pub struct MemPort {
    net: MemNet,
    addr: Mutex<SocketAddr>,
    rx: Mutex<Receiver<Delivery>>,
    mode: Mode,
}

impl MemPort {
    /// This port's address.
    pub fn addr(&self) -> SocketAddr {
        *self.addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True for stream ports (TCP semantics).
    pub fn is_stream(&self) -> bool {
        self.mode != Mode::Datagram
    }

    /// How a connected client port knows its server; `None` for the others.
    pub fn server(&self, server: SocketAddr) -> PeerAddr {
        match self.mode {
            Mode::Connected { .. } => PeerAddr::Tcp(0),
            _ => PeerAddr::Udp(server),
        }
    }

    /// The socket address behind a peer address (capture headers).
    pub fn socket_of(&self, peer: PeerAddr) -> Option<SocketAddr> {
        match (self.mode, peer) {
            (_, PeerAddr::Udp(a)) => Some(a),
            (Mode::Connected { server, .. }, PeerAddr::Tcp(_)) => Some(server),
            (Mode::Listener, PeerAddr::Tcp(id)) => self.net.lock().conns.get(&id).map(|c| c.0),
            _ => None,
        }
    }

    /// Moves the port to `addr` (a NAT rebinding); its peers see datagrams from there.
    pub fn rebind(&self, addr: SocketAddr) {
        let mut st = self.net.lock();
        let mut mine = self.addr.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = st.ports.remove(&mine) {
            st.ports.insert(addr, tx);
        }
        *mine = addr;
    }

    /// Sends one packet to `to`: a datagram, or a record on a connection.
    pub fn send(&self, to: PeerAddr, packet: &[u8]) -> Result<(), DropReason> {
        let from_addr = self.addr();
        match (self.mode, to) {
            (Mode::Datagram, PeerAddr::Udp(dest)) => {
                let tx = self.net.lock().ports.get(&dest).cloned();
                let Some(tx) = tx else {
                    // Nobody there: like UDP, the datagram is gone without an error.
                    self.net.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                };
                let d = Delivery {
                    from: PeerAddr::Udp(from_addr),
                    bytes: packet.to_vec(),
                };
                if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(d) {
                    self.net.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            (Mode::Connected { id, server }, _) => self.stream(server, PeerAddr::Tcp(id), packet),
            (Mode::Listener, PeerAddr::Tcp(id)) => {
                let client = self.net.lock().conns.get(&id).map(|c| c.0);
                let client = client.ok_or(DropReason::UnknownPeer)?;
                self.stream(client, PeerAddr::Tcp(0), packet)
            }
            _ => Err(DropReason::UnknownPeer),
        }
    }

    /// A record onto a connection, cut in two at a varying point.
    fn stream(&self, dest: SocketAddr, from: PeerAddr, packet: &[u8]) -> Result<(), DropReason> {
        let tx = self.net.lock().ports.get(&dest).cloned();
        let tx = tx.ok_or(DropReason::SocketError)?;
        let mut framed = Vec::with_capacity(packet.len() + 2);
        tcp_frame(packet, &mut framed)?;
        let cut = (self.net.cut.fetch_add(7, Ordering::Relaxed) as usize) % (framed.len() + 1);
        let tail = framed.split_off(cut);
        for bytes in [framed, tail] {
            if bytes.is_empty() {
                continue;
            }
            let mut d = Delivery { from, bytes };
            let deadline = Instant::now() + STREAM_WAIT;
            loop {
                match tx.try_send(d) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                        d = back;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(_) => return Err(DropReason::QueueFull),
                }
            }
        }
        Ok(())
    }

    /// Waits up to `wait` for deliveries and takes up to `max` of them.
    pub fn recv_batch(&self, max: usize, wait: Duration, out: &mut Vec<Delivery>) {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        match rx.recv_timeout(wait) {
            Ok(d) => out.push(d),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        }
        while out.len() < max {
            match rx.try_recv() {
                Ok(d) => out.push(d),
                Err(_) => break,
            }
        }
    }
}
