//! A small HTTP/1.1 server per network: it says who it is, serves verifiable bulk data and
//! accepts verifiable uploads, and logs every request with the address it came from (which
//! is how a scenario sees NAT: the public web server meets the VPN server's address).
//!
//! * `GET /` — `<label> <address>\n`;
//! * `GET /bytes/N` — N bytes of [`crate::traffic::pattern`] (seed [`BULK_SEED`]);
//! * `POST /upload` — reads `Content-Length` bytes, checks them against the same pattern and
//!   answers `received N ok` or `received N corrupt at K`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::netns::Netns;
use crate::traffic::pattern;

/// Seed of the bulk data pattern.
pub const BULK_SEED: u64 = 0x7765_6273_6572_7665;
/// Largest body served or accepted (bounded load).
pub const MAX_BODY: usize = 64 << 20;

/// One request as the server saw it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WebRequest {
    /// Wall clock, ns since the epoch.
    pub at_ns: u64,
    /// The server's label.
    pub server: String,
    /// The peer address.
    pub from: SocketAddr,
    /// Method and path.
    pub request: String,
    /// Status sent.
    pub status: u16,
    /// Body bytes received.
    pub bytes_in: usize,
    /// Body bytes sent.
    pub bytes_out: usize,
}

/// A running web server; stops when dropped.
pub struct WebServer {
    /// Label.
    pub label: String,
    /// Listen address.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<WebRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl WebServer {
    /// Starts listening on `ip:80` inside `ns`.
    pub fn start(ns: &Netns, label: &str, ip: IpAddr) -> Result<WebServer> {
        let addr = SocketAddr::new(ip, 80);
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (lbl, lg, st) = (label.to_owned(), Arc::clone(&log), Arc::clone(&stop));
        let thread = ns.spawn(move || {
            let l = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("bind {addr}: {e}")));
                    anyhow::bail!("bind {addr}: {e}");
                }
            };
            let _ = ready_tx.send(Ok(()));
            accept_loop(&l, &lbl, &lg, &st)
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("web server {label}: {e}"),
            Err(_) => anyhow::bail!("web server {label} did not start"),
        }
        Ok(WebServer {
            label: label.to_owned(),
            addr,
            log,
            stop,
            thread: Some(thread),
        })
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<WebRequest> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    l: &TcpListener,
    label: &str,
    log: &Arc<Mutex<Vec<WebRequest>>>,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let Ok((s, from)) = l.accept() else {
            continue;
        };
        let (label, log, stop) = (label.to_owned(), Arc::clone(log), Arc::clone(stop));
        // Connection threads inherit the namespace of this thread.
        std::thread::spawn(move || {
            if let Some(entry) = handle(s, from, &label, &stop)
                && let Ok(mut l) = log.lock()
            {
                l.push(entry);
            }
        });
    }
    Ok(())
}

fn handle(s: TcpStream, from: SocketAddr, label: &str, stop: &AtomicBool) -> Option<WebRequest> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
    let local = s.local_addr().ok()?;
    let mut reader = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let request = line.trim().to_owned();
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut entry = WebRequest {
        at_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        server: label.to_owned(),
        from,
        request: format!("{method} {path}"),
        status: 200,
        bytes_in: 0,
        bytes_out: 0,
    };
    let mut out = s;
    match (method.as_str(), path.as_str()) {
        ("GET", "/") => {
            let body = format!("{label} {}\n", local.ip());
            entry.bytes_out = body.len();
            respond(&mut out, 200, body.as_bytes());
        }
        ("GET", p) if p.starts_with("/bytes/") => {
            let n = p["/bytes/".len()..]
                .parse::<usize>()
                .ok()
                .filter(|&n| n <= MAX_BODY);
            let Some(n) = n else {
                entry.status = 400;
                respond(&mut out, 400, b"bad size\n");
                return Some(entry);
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            );
            out.write_all(head.as_bytes()).ok()?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0;
            while sent < n && !stop.load(Ordering::Relaxed) {
                let k = buf.len().min(n - sent);
                pattern(BULK_SEED, &mut buf[..k], sent);
                if out.write_all(&buf[..k]).is_err() {
                    break;
                }
                sent += k;
            }
            entry.bytes_out = sent;
        }
        ("POST", "/upload") if content_length <= MAX_BODY => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut expect = vec![0u8; 64 * 1024];
            let mut got = 0;
            let mut corrupt = None;
            while got < content_length && !stop.load(Ordering::Relaxed) {
                let want = buf.len().min(content_length - got);
                let Ok(k) = reader.read(&mut buf[..want]) else {
                    break;
                };
                if k == 0 {
                    break;
                }
                pattern(BULK_SEED, &mut expect[..k], got);
                if corrupt.is_none() {
                    corrupt = (0..k).find(|&i| buf[i] != expect[i]).map(|i| got + i);
                }
                got += k;
            }
            entry.bytes_in = got;
            let body = match corrupt {
                None if got == content_length => format!("received {got} ok\n"),
                None => format!("received {got} short\n"),
                Some(at) => format!("received {got} corrupt at {at}\n"),
            };
            respond(&mut out, 200, body.as_bytes());
        }
        _ => {
            entry.status = 404;
            respond(&mut out, 404, b"not found\n");
        }
    }
    let _ = out.shutdown(std::net::Shutdown::Write);
    Some(entry)
}

fn respond(out: &mut TcpStream, status: u16, body: &[u8]) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(body);
}

/// Checks that `data` is the first `data.len()` bytes of the bulk pattern; returns the
/// offset of the first wrong byte.
pub fn verify_bulk(data: &[u8]) -> Option<usize> {
    let mut expect = vec![0u8; 64 * 1024];
    let mut off = 0;
    while off < data.len() {
        let k = expect.len().min(data.len() - off);
        pattern(BULK_SEED, &mut expect[..k], off);
        if let Some(i) = (0..k).find(|&i| data[off + i] != expect[i]) {
            return Some(off + i);
        }
        off += k;
    }
    None
}

/// Writes `n` bytes of the bulk pattern to `path` (an upload body).
pub fn write_bulk(path: &std::path::Path, n: usize) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0;
    while off < n {
        let k = buf.len().min(n - off);
        pattern(BULK_SEED, &mut buf[..k], off);
        f.write_all(&buf[..k])?;
        off += k;
    }
    Ok(())
}
