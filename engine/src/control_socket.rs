//! The live view's endpoints: a Unix control socket (`--control PATH`, read by
//! `tunscope stats PATH`) and a Prometheus scrape endpoint (`--prometheus ADDR`).
//!
//! Protocol of the control socket: the client sends one line (`stats`), the engine answers
//! with the JSON report and closes. Both servers run on their own threads and stop with the
//! engine (non-blocking accept polled every 200 ms).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::report::{EngineReport, Observer};

/// Running endpoints; stopped and cleaned up on drop.
pub struct Endpoints {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    socket: Option<PathBuf>,
}

impl Endpoints {
    /// Starts the control socket and/or the Prometheus endpoint.
    pub fn start(
        observer: Arc<Observer>,
        control: Option<&Path>,
        prometheus: Option<SocketAddr>,
    ) -> Result<Endpoints> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = vec![];
        if let Some(path) = control {
            // A stale socket from a previous run would make bind fail.
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)
                .with_context(|| format!("cannot create control socket {}", path.display()))?;
            // Connecting needs write permission on the socket: ours alone.
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
            l.set_nonblocking(true)?;
            let (obs, st) = (Arc::clone(&observer), Arc::clone(&stop));
            threads.push(
                std::thread::Builder::new()
                    .name("control-socket".into())
                    .spawn(move || {
                        while !st.load(Ordering::Relaxed) {
                            match l.accept() {
                                Ok((s, _)) => serve_control(s, &obs),
                                Err(_) => std::thread::sleep(Duration::from_millis(200)),
                            }
                        }
                    })?,
            );
        }
        if let Some(addr) = prometheus {
            let l = TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} for Prometheus"))?;
            l.set_nonblocking(true)?;
            let (obs, st) = (Arc::clone(&observer), Arc::clone(&stop));
            threads.push(
                std::thread::Builder::new()
                    .name("prometheus".into())
                    .spawn(move || {
                        while !st.load(Ordering::Relaxed) {
                            match l.accept() {
                                Ok((s, _)) => serve_http(s, &obs),
                                Err(_) => std::thread::sleep(Duration::from_millis(200)),
                            }
                        }
                    })?,
            );
        }
        Ok(Endpoints {
            stop,
            threads,
            socket: control.map(Path::to_path_buf),
        })
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn serve_control(s: UnixStream, obs: &Observer) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let mut r = BufReader::new(&s);
    if r.read_line(&mut line).is_err() {
        return;
    }
    let mut w = &s;
    let reply = match line.trim() {
        "stats" | "" => serde_json::to_string(&obs.report())
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        other => format!("{{\"error\":\"unknown command '{other}'\"}}"),
    };
    let _ = w.write_all(reply.as_bytes());
    let _ = w.write_all(b"\n");
}

fn serve_http(mut s: std::net::TcpStream, obs: &Observer) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut req = [0u8; 1024];
    let n = s.read(&mut req).unwrap_or(0);
    let head = String::from_utf8_lossy(&req[..n]);
    let (status, body) = if head.starts_with("GET /metrics") || head.starts_with("GET / ") {
        ("200 OK", obs.report().prometheus())
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Asks a running engine for its report (`tunscope stats PATH`).
pub fn query(path: &Path) -> Result<EngineReport> {
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("cannot connect to control socket {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"stats\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    if text.contains("\"error\"") && !text.contains("\"totals\"") {
        bail!("engine answered: {}", text.trim());
    }
    serde_json::from_str(&text).context("unreadable report from the control socket")
}
