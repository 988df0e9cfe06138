//! TCP connections of a `proto tcp-server` server.
//!
//! All connections are served by one thread with `poll(2)` (accept, read, and flushing of
//! queued output). Writers (the tx thread, the control thread) never block on a slow client:
//! frames go out immediately when the socket takes them, the rest waits in a bounded per-
//! connection queue; a client that does not read fills its queue and further frames for it
//! are dropped with `queue_full`, without holding up anybody else.
//!
//! Connections cost a descriptor each before anybody has authenticated, so they are limited
//! ([`TcpLimits`]): in total (below the process's descriptor limit), per source address, and
//! in time — a connection that has not become a peer within `hand-window` is closed. One
//! over a limit is accepted and closed at once (which drains the kernel's backlog); when the
//! process runs out of descriptors anyway, the listener rests for a moment instead of
//! spinning on a readable socket it cannot accept from.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tunscope_proto::stage::DropReason;

/// Per-connection output queue limit.
const MAX_QUEUED: usize = 4 << 20;
/// How long the listener rests after accept failed for lack of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits on connections that cost descriptors before authentication.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// Connections in total.
    pub total: usize,
    /// Connections from one source address.
    pub per_source: usize,
    /// Time a connection has to become a peer (`hand-window`).
    pub hand_window: Duration,
}

impl TcpLimits {
    /// Limits for a server: `max_clients` peers plus room for as many handshakes, within the
    /// process's descriptor limit (keeping 64 for everything else).
    pub fn for_server(max_clients: u32, hand_window: Duration) -> TcpLimits {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
        } else {
            1024
        };
        let total = (max_clients as usize)
            .saturating_mul(2)
            .max(64)
            .min(nofile.saturating_sub(64).max(16));
        TcpLimits {
            total,
            per_source: 32.min(total),
            hand_window,
        }
    }
}

/// One accepted connection.
pub struct Conn {
    /// Connection id (the `PeerAddr::Tcp` number).
    pub id: u64,
    /// Remote address.
    pub remote: SocketAddr,
    /// Local address.
    pub local: SocketAddr,
    stream: TcpStream,
    out: Mutex<Vec<u8>>,
    closed: AtomicBool,
    accepted: Instant,
    /// Became a peer: the hand-window no longer applies.
    established: AtomicBool,
}

impl Conn {
    /// Sends whole frames (length-prefixed records). Bytes the socket does not take now are
    /// queued; returns true when the poll thread must watch for writability.
    pub fn send(&self, frames: &[u8]) -> Result<bool, DropReason> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(DropReason::SocketError);
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if out.is_empty() {
            let mut w = &self.stream;
            match w.write(frames) {
                Ok(n) if n == frames.len() => return Ok(false),
                Ok(n) => out.extend_from_slice(&frames[n..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.extend_from_slice(frames),
                Err(_) => return Err(DropReason::SocketError),
            }
            return Ok(true);
        }
        if out.len() + frames.len() > MAX_QUEUED {
            return Err(DropReason::QueueFull);
        }
        out.extend_from_slice(frames);
        Ok(true)
    }

    /// Writes queued output; true when the queue is empty afterwards.
    fn flush(&self) -> io::Result<bool> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let mut w = &self.stream;
        while !out.is_empty() {
            match w.write(&out) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn has_output(&self) -> bool {
        !self
            .out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The listener and all connections.
pub struct TcpConns {
    listener: TcpListener,
    conns: RwLock<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    wake: OwnedFd,
    limits: TcpLimits,
    /// The listener rests until then (descriptors ran out).
    accept_paused: Mutex<Option<Instant>>,
    /// Connections closed by a limit: (over the total or per-source cap, hand-window).
    refused: AtomicU64,
    expired: AtomicU64,
}

/// What the poll loop saw.
pub enum TcpEvent<'a> {
    /// Bytes arrived on a connection.
    Data(&'a Arc<Conn>, &'a [u8]),
    /// The connection closed (EOF or error).
    Closed(u64, String),
}

impl TcpConns {
    /// Listens on `addr`.
    pub fn listen(addr: SocketAddr, limits: TcpLimits) -> io::Result<TcpConns> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        // SAFETY: eventfd(2) with valid flags; the fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpConns {
            listener,
            conns: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            // SAFETY: fresh valid fd.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            limits,
            accept_paused: Mutex::new(None),
            refused: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        })
    }

    /// The connection became a peer: it may stay past the hand-window.
    pub fn established(&self, id: u64) {
        if let Some(c) = self.get(id) {
            c.established.store(true, Ordering::Relaxed);
        }
    }

    /// Connections closed so far by the caps and by the hand-window.
    pub fn closed_by_limits(&self) -> (u64, u64) {
        (
            self.refused.load(Ordering::Relaxed),
            self.expired.load(Ordering::Relaxed),
        )
    }

    /// A connection by id.
    pub fn get(&self, id: u64) -> Option<Arc<Conn>> {
        self.conns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.conns.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True without connections.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends frames to a connection; wakes the poll thread if output was queued.
    pub fn send(&self, id: u64, frames: &[u8]) -> Result<(), DropReason> {
        let c = self.get(id).ok_or(DropReason::UnknownPeer)?;
        if c.send(frames)? {
            self.wake();
        }
        Ok(())
    }

    /// Closes and forgets a connection.
    pub fn close(&self, id: u64) {
        if let Some(c) = self
            .conns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            c.close();
        }
        self.wake();
    }

    /// Closes everything.
    pub fn close_all(&self) {
        let all: Vec<Arc<Conn>> = self
            .conns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        for c in all {
            c.close();
        }
        self.wake();
    }

    /// Wakes the poll loop (to re-read the connection set).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to a valid eventfd.
        unsafe {
            libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// One round of the poll loop: waits up to `timeout_ms`, accepts, flushes, and reports
    /// received bytes and closed connections to `f`.
    pub fn poll_once(&self, timeout_ms: i32, buf: &mut [u8], mut f: impl FnMut(TcpEvent<'_>)) {
        let conns: Vec<Arc<Conn>> = self
            .conns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        // Connections that did not become a peer within the hand-window are closed.
        let now = Instant::now();
        for c in &conns {
            if !c.established.load(Ordering::Relaxed)
                && now.saturating_duration_since(c.accepted) > self.limits.hand_window
            {
                self.close(c.id);
                self.expired.fetch_add(1, Ordering::Relaxed);
                f(TcpEvent::Closed(
                    c.id,
                    "no peer within hand-window: closed".into(),
                ));
            }
        }
        let mut fds = Vec::with_capacity(conns.len() + 2);
        let pfd = |fd: RawFd, events: libc::c_short| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // A resting listener is left out of the poll set (it would be readable at once).
        let mut timeout_ms = timeout_ms;
        let resting = {
            let mut paused = self.accept_paused.lock().unwrap_or_else(|e| e.into_inner());
            match *paused {
                Some(t) if t > now => {
                    let left = t.saturating_duration_since(now).as_millis() as i32;
                    timeout_ms = timeout_ms.min(left.max(1));
                    true
                }
                _ => {
                    *paused = None;
                    false
                }
            }
        };
        fds.push(pfd(
            if resting {
                -1
            } else {
                self.listener.as_raw_fd()
            },
            libc::POLLIN,
        ));
        fds.push(pfd(self.wake.as_raw_fd(), libc::POLLIN));
        for c in &conns {
            let ev = if c.has_output() {
                libc::POLLIN | libc::POLLOUT
            } else {
                libc::POLLIN
            };
            fds.push(pfd(c.stream.as_raw_fd(), ev));
        }
        // SAFETY: fds is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r <= 0 {
            return;
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let mut v = [0u8; 8];
            // SAFETY: reading 8 bytes from a valid eventfd into a local buffer.
            unsafe {
                libc::read(self.wake.as_raw_fd(), v.as_mut_ptr().cast(), 8);
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            self.accept_all();
        }
        for (c, p) in conns.iter().zip(&fds[2..]) {
            if p.revents & libc::POLLOUT != 0
                && let Err(e) = c.flush()
            {
                self.close(c.id);
                f(TcpEvent::Closed(c.id, format!("write: {e}")));
                continue;
            }
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                // Read what is there, bounded so one busy client cannot starve the others.
                for _ in 0..8 {
                    let mut rd = &c.stream;
                    match rd.read(buf) {
                        Ok(0) => {
                            self.close(c.id);
                            f(TcpEvent::Closed(
                                c.id,
                                "connection closed by the client".into(),
                            ));
                            break;
                        }
                        Ok(n) => f(TcpEvent::Data(c, &buf[..n])),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            self.close(c.id);
                            f(TcpEvent::Closed(c.id, format!("read: {e}")));
                            break;
                        }
                    }
                }
            }
        }
    }

    fn accept_all(&self) {
        loop {
            match self.listener.accept() {
                Ok((stream, remote)) => {
                    // Over a cap: accepted only to be closed (the backlog drains, the
                    // descriptor comes back at once).
                    let (total, from_source) = {
                        let conns = self.conns.read().unwrap_or_else(|e| e.into_inner());
                        let same = conns
                            .values()
                            .filter(|c| c.remote.ip() == remote.ip())
                            .count();
                        (conns.len(), same)
                    };
                    if total >= self.limits.total || from_source >= self.limits.per_source {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                        continue;
                    }
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let local = stream.local_addr().unwrap_or(remote);
                    let c = Arc::new(Conn {
                        id,
                        remote,
                        local,
                        stream,
                        out: Mutex::new(Vec::new()),
                        closed: AtomicBool::new(false),
                        accepted: Instant::now(),
                        established: AtomicBool::new(false),
                    });
                    self.conns
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, c);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors (EMFILE/ENFILE) and the like: rest, do not spin.
                Err(e) => {
                    tracing::warn!("accept: {e}; pausing the listener");
                    *self.accept_paused.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }
}
