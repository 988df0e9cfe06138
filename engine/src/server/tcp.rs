//! TCP connections of a `proto tcp-server` server.
//!
//! All connections are served by one thread with `poll(2)` (accept, read, and flushing of
//! queued output). Writers (the tx thread, the control thread) never block on a slow client:
//! frames go out immediately when the socket takes them, the rest waits in a bounded per-
//! connection queue; a client that does not read fills its queue and further frames for it
//! are dropped with `queue_full`, without holding up anybody else.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tunscope_proto::stage::DropReason;

/// Per-connection output queue limit.
const MAX_QUEUED: usize = 4 << 20;

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
    pub fn listen(addr: SocketAddr) -> io::Result<TcpConns> {
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
        })
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
        let mut fds = Vec::with_capacity(conns.len() + 2);
        let pfd = |fd: RawFd, events: libc::c_short| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        fds.push(pfd(self.listener.as_raw_fd(), libc::POLLIN));
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
                    });
                    self.conns
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, c);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of fds and the like: try again at the next poll round.
                Err(_) => return,
            }
        }
    }
}
