//! The wire side of the data path: a client's connected link, a server's UDP socket shared
//! by all clients, or a server's TCP connections. The data threads and the control thread
//! send through this one type; receiving is per kind (see [`super::rx`]).

use std::net::SocketAddr;

use tunscope_proto::server::PeerAddr;
use tunscope_proto::stage::DropReason;
use tunscope_proto::wire::tcp_frame;

use crate::capture::Wire;
use crate::link::{Flushed, Link, LinkKind, TxBatch, UdpEndpoint};
use crate::server::tcp::TcpConns;

use super::memory::MemPort;

/// How packets reach the peers.
pub enum Transport {
    /// A client's link to its server (UDP socket connected to it, or a TCP stream).
    Link(Link),
    /// UDP sockets for all clients: one, or one per receive thread, all on the same port
    /// (SO_REUSEPORT; the kernel keeps each client on one of them by address hash).
    Udp(Vec<UdpEndpoint>),
    /// A listener and one connection per client.
    Tcp(TcpConns),
    /// A port on an in-memory network (the in-process tier), either role, UDP or TCP.
    Memory(std::sync::Arc<MemPort>),
}

impl Transport {
    /// The address under which a connected link's peer is known (the server, for a client).
    pub fn link_addr(link: &Link) -> PeerAddr {
        match link.kind() {
            LinkKind::Udp => PeerAddr::Udp(link.peer()),
            LinkKind::Tcp => PeerAddr::Tcp(0),
        }
    }

    /// Sends one packet (control, ping, forwarded data) to a peer.
    pub fn send_one(&self, to: PeerAddr, packet: &[u8]) -> Result<(), DropReason> {
        match (self, to) {
            (Transport::Link(l), _) => l.send_one(packet).map_err(|e| {
                tracing::debug!("send: {e}");
                DropReason::SocketError
            }),
            (Transport::Udp(eps), PeerAddr::Udp(a)) => eps
                .first()
                .ok_or(DropReason::SocketError)?
                .send_to(packet, a)
                .map_err(|_| DropReason::SocketError),
            (Transport::Tcp(c), PeerAddr::Tcp(id)) => {
                let mut f = Vec::with_capacity(packet.len() + 2);
                tcp_frame(packet, &mut f)?;
                c.send(id, &f)
            }
            (Transport::Memory(port), to) => port.send(to, packet),
            _ => Err(DropReason::UnknownPeer),
        }
    }

    /// Sends a batch of sealed packets to one peer and empties it; `frames` is scratch space
    /// for TCP records. Failed packets are reported with the reason that applies.
    pub fn flush(
        &self,
        batch: &mut TxBatch,
        to: PeerAddr,
        frames: &mut Vec<u8>,
    ) -> (Flushed, DropReason) {
        match (self, to) {
            (Transport::Link(l), _) => (batch.flush(l), DropReason::SocketError),
            (Transport::Udp(eps), PeerAddr::Udp(a)) if !eps.is_empty() => {
                (batch.flush_to(&eps[0], a), DropReason::SocketError)
            }
            (Transport::Memory(port), to) => (
                batch.send_each(|p| port.send(to, p).is_ok()),
                DropReason::SocketError,
            ),
            (Transport::Tcp(c), PeerAddr::Tcp(cid)) => {
                frames.clear();
                let (n, bytes) = batch.take_frames(frames);
                match c.send(cid, frames) {
                    Ok(()) => (Flushed::all(true, n, bytes), DropReason::SocketError),
                    Err(r) => (Flushed::all(false, n, bytes), r),
                }
            }
            _ => {
                frames.clear();
                let (n, bytes) = batch.take_frames(frames);
                (Flushed::all(false, n, bytes), DropReason::UnknownPeer)
            }
        }
    }

    /// The wire description of a packet between us and `peer` (for capture headers);
    /// `local` is our address toward that peer when known.
    pub fn wire(&self, peer: PeerAddr, local: Option<SocketAddr>, outbound: bool) -> Option<Wire> {
        let (remote, local, tcp) = match (self, peer) {
            (Transport::Link(l), _) => (l.peer(), l.local_addr().ok()?, l.kind() == LinkKind::Tcp),
            (Transport::Udp(eps), PeerAddr::Udp(a)) => {
                let ep = eps.first()?;
                let local = local.or_else(|| {
                    let bound = ep.socket().local_addr().ok()?;
                    if !bound.ip().is_unspecified() {
                        return Some(bound);
                    }
                    // A wildcard socket: our address toward this peer, as routing picks it
                    // (control packets before the peer's own address is cached).
                    let src = crate::netlink::route_get(a.ip()).ok()?.prefsrc?;
                    Some(SocketAddr::new(src, bound.port()))
                })?;
                (a, local, false)
            }
            (Transport::Tcp(c), PeerAddr::Tcp(id)) => {
                let conn = c.get(id)?;
                (conn.remote, conn.local, true)
            }
            (Transport::Memory(port), peer) => {
                (port.socket_of(peer)?, port.addr(), port.is_stream())
            }
            _ => return None,
        };
        Some(if outbound {
            Wire {
                src: local,
                dst: remote,
                tcp,
            }
        } else {
            Wire {
                src: remote,
                dst: local,
                tcp,
            }
        })
    }

    /// The UDP sockets of a server (empty for other transports).
    pub fn udp(&self) -> &[UdpEndpoint] {
        match self {
            Transport::Udp(eps) => eps,
            _ => &[],
        }
    }

    /// How many receive threads the transport feeds.
    pub fn receivers(&self) -> usize {
        self.udp().len().max(1)
    }

    /// Wakes threads blocked on the transport at shutdown (closes TCP streams).
    pub fn wake(&self) {
        match self {
            Transport::Link(l) => l.shutdown(),
            Transport::Udp(_) | Transport::Memory(_) => {}
            Transport::Tcp(c) => c.close_all(),
        }
    }

    /// A printable transport address (TCP connections by their remote address).
    pub fn describe(&self, a: PeerAddr) -> String {
        match (a, self) {
            (PeerAddr::Tcp(id), Transport::Tcp(c)) => c
                .get(id)
                .map_or(a.to_string(), |c| format!("tcp:{}", c.remote)),
            (_, Transport::Link(l)) => l.peer().to_string(),
            _ => a.to_string(),
        }
    }
}
