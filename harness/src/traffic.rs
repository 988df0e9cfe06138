//! Real traffic through a topology: ping (the system's), and TCP transfers whose content is
//! verified byte for byte by an echo server running in another namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// Outcome of `ping`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Replies received.
    pub received: u32,
    /// ping's summary lines, for evidence.
    pub output: String,
}

/// Runs the system `ping` inside `ns`: `count` requests, `size` payload bytes, optionally with
/// the don't-fragment bit (`-M do`).
pub fn ping(
    ns: &Netns,
    dst: &str,
    count: u32,
    size: u32,
    dont_fragment: bool,
) -> Result<PingResult> {
    let count_s = count.to_string();
    let size_s = size.to_string();
    let mut args = vec!["-n", "-c", &count_s, "-i", "0.2", "-W", "2", "-s", &size_s];
    if dont_fragment {
        args.extend(["-M", "do"]);
    }
    args.push(dst);
    let out = ns
        .command("ping")
        .args(&args)
        .output()
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default()
        .to_owned();
    let nums: Vec<u32> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    Ok(PingResult {
        transmitted: nums.first().copied().unwrap_or(0),
        received: nums.get(1).copied().unwrap_or(0),
        output: text.lines().rev().take(3).collect::<Vec<_>>().join(" | "),
    })
}

/// A TCP echo server running in a namespace until dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl EchoServer {
    /// Listens on `addr` inside `ns` and echoes every connection back, one at a time.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<EchoServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s2 = Arc::clone(&stop);
        let handle = ns.spawn(move || {
            let l = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("bind {addr}: {e}")));
                    bail!("bind {addr}: {e}");
                }
            };
            l.set_nonblocking(true)?;
            let _ = ready_tx.send(Ok(()));
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false)?;
                        s.set_read_timeout(Some(Duration::from_secs(30)))?;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => bail!("accept: {e}"),
                }
            }
            Ok(())
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("echo server: {e}"),
            Err(_) => bail!("echo server did not start"),
        }
        Ok(EchoServer {
            stop,
            handle: Some(handle),
            addr,
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Result of a verified transfer.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// Bytes sent and received back intact.
    pub bytes: usize,
    /// Wall time.
    pub elapsed: Duration,
}

impl Transfer {
    /// Goodput in Mbit/s, counting both directions.
    pub fn mbit_per_s(&self) -> f64 {
        (2 * self.bytes) as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Deterministic test data: byte `n` of the stream depends only on `seed` and `n`
/// (splitmix64 per 8-byte block), so any corruption or reordering shows as a mismatch.
pub fn pattern(seed: u64, buf: &mut [u8], offset: usize) {
    let block = |k: u64| {
        let mut z = seed.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    };
    let mut i = 0;
    while i < buf.len() {
        let abs = offset + i;
        let b = block((abs / 8) as u64);
        let from = abs % 8;
        let n = (8 - from).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&b[from..from + n]);
        i += n;
    }
}

/// Sends `bytes` to an [`EchoServer`] at `addr` from inside `ns` and checks that exactly the
/// same bytes come back. `duration` spreads the sending over that time (to keep a transfer
/// running across an event such as a renegotiation); `None` sends as fast as possible.
pub fn echo_transfer(
    ns: &Netns,
    addr: SocketAddr,
    bytes: usize,
    duration: Option<Duration>,
) -> Result<Transfer> {
    ns.run(move || {
        let start = Instant::now();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut writer = stream.try_clone()?;
        let seed = 0x7475_6e73_636f_7065u64;
        let chunk = 64 * 1024;
        let sender = std::thread::spawn(move || -> Result<()> {
            // Deterministic chunks; all chunks have the same content pattern per offset.
            let mut buf = vec![0u8; chunk];
            let mut sent = 0;
            while sent < bytes {
                let n = chunk.min(bytes - sent);
                pattern(seed, &mut buf[..n], sent);
                writer.write_all(&buf[..n])?;
                sent += n;
                if let Some(d) = duration {
                    let due = start + d.mul_f64(sent as f64 / bytes as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
            }
            writer.shutdown(std::net::Shutdown::Write)?;
            Ok(())
        });
        let mut reader = stream;
        let mut got = 0usize;
        let mut buf = vec![0u8; chunk];
        let mut expect = vec![0u8; chunk];
        while got < bytes {
            let n = reader
                .read(&mut buf)
                .with_context(|| format!("reading echo after {got} of {bytes} bytes"))?;
            if n == 0 {
                bail!("connection closed after {got} of {bytes} bytes");
            }
            pattern(seed, &mut expect[..n], got);
            if let Some(i) = (0..n).find(|&i| buf[i] != expect[i]) {
                bail!("content mismatch at byte {}", got + i);
            }
            got += n;
        }
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
        Ok(Transfer {
            bytes,
            elapsed: start.elapsed(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_offset_consistent() {
        let mut whole = vec![0u8; 1000];
        pattern(5, &mut whole, 0);
        for split in [1, 7, 8, 9, 500, 999] {
            let mut a = vec![0u8; split];
            let mut b = vec![0u8; 1000 - split];
            pattern(5, &mut a, 0);
            pattern(5, &mut b, split);
            assert_eq!([a, b].concat(), whole, "split at {split}");
        }
    }
}
