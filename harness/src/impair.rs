//! A link impairment in userspace (this kernel has no netem): a namespace of its own, `wire`,
//! sits on one link of the topology (the client's WAN link unless `link` says otherwise) as
//! a transparent two-port bridge: port `near` faces the client's end of the path, `far` the
//! other. Every Ethernet frame is
//! read with AF_PACKET on one side and, unless the impairment decides otherwise, written out
//! on the other: lost (at random, or in Gilbert-Elliott bursts), delayed with jitter,
//! reordered, duplicated, corrupted, or dropped during a scheduled outage. Decisions come from
//! a seeded generator, one per direction, so a run can be repeated; every frame the element
//! drops, corrupts or duplicates is counted and kept for the scenario pcapng (interface
//! `wire/impair`, with the reason as the packet comment).
//!
//! ```text
//!  client eth0 ── near [wire: impairment] far ── c0 router        (link = "client")
//!  router s0   ── near [wire: impairment] far ── eth0 server      (link = "server")
//!  server lan0 ── near [wire: impairment] far ── eth0 corp        (link = "corp")
//! ```

use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::capture::Frame;
use crate::netns::Netns;

/// One direction's impairment, as written in a scenario (`[topology.impair]` for both
/// directions, or `to_server`/`to_client` for one).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImpairSpec {
    /// Probability that a frame is lost (0 to 1).
    #[serde(default)]
    pub loss: f64,
    /// Gilbert-Elliott bursts instead: [p(good→bad), p(bad→good), loss in bad].
    #[serde(default)]
    pub burst: Option<[f64; 3]>,
    /// Delay added to every frame, ms.
    #[serde(default)]
    pub delay_ms: u64,
    /// Up to this much more or less delay, uniformly, ms.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability that a frame is held back (by `delay_ms` + 10 ms more) so later ones pass it.
    #[serde(default)]
    pub reorder: f64,
    /// Probability that a frame is sent twice.
    #[serde(default)]
    pub duplicate: f64,
    /// Probability that one bit of a frame (past its Ethernet header) is flipped.
    #[serde(default)]
    pub corrupt: f64,
    /// `[start_s, duration_s]`: everything is dropped from `start_s` after the tunnel came
    /// up for `duration_s` (a link that goes away mid-run and comes back).
    #[serde(default)]
    pub outage: Option<[f64; 2]>,
    /// Link rate in kbit/s (0: unlimited): frames leave one after another at this rate,
    /// after their delay; what would wait longer than `queue_ms` is dropped (tail drop).
    #[serde(default)]
    pub rate_kbit: u64,
    /// The rate limiter's queue, in ms of the rate (default 100).
    #[serde(default)]
    pub queue_ms: Option<u64>,
    /// MTU cap: frames carrying more than this many bytes past the Ethernet header are
    /// dropped without a word (a smaller link in the path that sends no ICMP).
    #[serde(default)]
    pub mtu: Option<u16>,
}

/// The impairment of the client's WAN link (`[topology.impair]`): the fields of
/// [`ImpairSpec`] for both directions, `to_server`/`to_client` tables to set one apart.
/// (The fields are repeated, not `#[serde(flatten)]`ed: serde cannot deny unknown fields
/// through a flatten, and a misspelt impairment must be an error, not a perfect link.)
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkImpairment {
    /// Seed of the decisions (the same seed, the same decisions for the same frames).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// As [`ImpairSpec::loss`], both directions.
    #[serde(default)]
    pub loss: f64,
    /// As [`ImpairSpec::burst`].
    #[serde(default)]
    pub burst: Option<[f64; 3]>,
    /// As [`ImpairSpec::delay_ms`].
    #[serde(default)]
    pub delay_ms: u64,
    /// As [`ImpairSpec::jitter_ms`].
    #[serde(default)]
    pub jitter_ms: u64,
    /// As [`ImpairSpec::reorder`].
    #[serde(default)]
    pub reorder: f64,
    /// As [`ImpairSpec::duplicate`].
    #[serde(default)]
    pub duplicate: f64,
    /// As [`ImpairSpec::corrupt`].
    #[serde(default)]
    pub corrupt: f64,
    /// As [`ImpairSpec::outage`].
    #[serde(default)]
    pub outage: Option<[f64; 2]>,
    /// As [`ImpairSpec::rate_kbit`].
    #[serde(default)]
    pub rate_kbit: u64,
    /// As [`ImpairSpec::queue_ms`].
    #[serde(default)]
    pub queue_ms: Option<u64>,
    /// As [`ImpairSpec::mtu`].
    #[serde(default)]
    pub mtu: Option<u16>,
    /// From the client toward the server, instead of the above.
    #[serde(default)]
    pub to_server: Option<ImpairSpec>,
    /// The link it sits on: `client` (the client's WAN link, default), `server` (the VPN
    /// server's uplink to the router), `corp` (between the server and the corp LAN).
    #[serde(default)]
    pub link: ImpairedLink,
    /// From the server toward the client, instead of the above.
    #[serde(default)]
    pub to_client: Option<ImpairSpec>,
}

fn default_seed() -> u64 {
    1
}

/// Which link of the scenario network an impairment sits on.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ImpairedLink {
    /// The client's WAN link (client eth0 ↔ router c0).
    #[default]
    Client,
    /// The VPN server's uplink (router s0 ↔ server eth0).
    Server,
    /// The server's corp LAN link (server lan0 ↔ corp eth0).
    Corp,
}

impl ImpairedLink {
    /// What the link joins, for reports.
    pub fn describe(self) -> &'static str {
        match self {
            ImpairedLink::Client => "client WAN",
            ImpairedLink::Server => "server uplink",
            ImpairedLink::Corp => "server ↔ corp LAN",
        }
    }
}

impl LinkImpairment {
    /// Checks the numbers; an error names the field.
    pub fn validate(&self) -> Result<()> {
        for (dir, s) in self.directions() {
            for (name, p) in [
                ("loss", s.loss),
                ("reorder", s.reorder),
                ("duplicate", s.duplicate),
                ("corrupt", s.corrupt),
            ] {
                if !(0.0..=1.0).contains(&p) {
                    bail!("impair {dir}: {name} must be between 0 and 1, not {p}");
                }
            }
            if let Some(b) = s.burst
                && b.iter().any(|p| !(0.0..=1.0).contains(p))
            {
                bail!("impair {dir}: burst probabilities must be between 0 and 1");
            }
            if s.delay_ms > 10_000 || s.jitter_ms > s.delay_ms.max(1) * 10 {
                bail!("impair {dir}: delay_ms up to 10000, jitter_ms up to ten times the delay");
            }
            if s.rate_kbit > 10_000_000 || s.queue_ms.is_some_and(|q| q == 0 || q > 10_000) {
                bail!("impair {dir}: rate_kbit up to 10000000, queue_ms between 1 and 10000");
            }
            if s.mtu.is_some_and(|m| !(576..=9000).contains(&m)) {
                bail!("impair {dir}: mtu between 576 and 9000");
            }
        }
        Ok(())
    }

    fn both(&self) -> ImpairSpec {
        ImpairSpec {
            loss: self.loss,
            burst: self.burst,
            delay_ms: self.delay_ms,
            jitter_ms: self.jitter_ms,
            reorder: self.reorder,
            duplicate: self.duplicate,
            corrupt: self.corrupt,
            outage: self.outage,
            rate_kbit: self.rate_kbit,
            queue_ms: self.queue_ms,
            mtu: self.mtu,
        }
    }

    fn directions(&self) -> [(&'static str, ImpairSpec); 2] {
        [
            (
                "to-server",
                self.to_server.clone().unwrap_or_else(|| self.both()),
            ),
            (
                "to-client",
                self.to_client.clone().unwrap_or_else(|| self.both()),
            ),
        ]
    }
}

/// What one direction did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirectionCounts {
    /// Frames that came in.
    pub frames: u64,
    /// Sent on (duplicates included).
    pub sent: u64,
    /// Lost at random or in a burst.
    pub lost: u64,
    /// Dropped during an outage.
    pub outage: u64,
    /// Delayed (any delay).
    pub delayed: u64,
    /// Held back so later frames passed them.
    pub reordered: u64,
    /// Sent twice.
    pub duplicated: u64,
    /// With one bit flipped.
    pub corrupted: u64,
    /// Dropped by the rate limiter (its queue was full).
    #[serde(default)]
    pub rate_dropped: u64,
    /// Dropped for exceeding the MTU cap.
    #[serde(default)]
    pub too_big: u64,
    /// Dropped by the kernel before the element read them: its socket buffer was full (the
    /// element fell behind — a loss the scenario did not ask for, so it is shown).
    #[serde(default)]
    pub overrun: u64,
    /// Refused by the outgoing interface when the element sent them on.
    #[serde(default)]
    pub send_failed: u64,
}

/// The rate limiter: frames leave one after another, each taking `len × 8 / rate` on the
/// link; a frame that would wait longer than the queue allows is dropped.
struct Shaper {
    bytes_per_s: f64,
    queue: Duration,
    free_at: Option<Instant>,
}

impl Shaper {
    fn new(rate_kbit: u64, queue_ms: Option<u64>) -> Option<Shaper> {
        (rate_kbit > 0).then(|| Shaper {
            bytes_per_s: rate_kbit as f64 * 1000.0 / 8.0,
            queue: Duration::from_millis(queue_ms.unwrap_or(100)),
            free_at: None,
        })
    }

    /// When a frame of `len` bytes, ready at `ready`, leaves (None: dropped); `now` is its
    /// arrival.
    fn admit(&mut self, now: Instant, ready: Instant, len: usize) -> Option<Instant> {
        let start = self.free_at.map_or(ready, |f| f.max(ready));
        if start.saturating_duration_since(now.max(ready)) > self.queue {
            return None;
        }
        let done = start + Duration::from_secs_f64(len as f64 / self.bytes_per_s);
        self.free_at = Some(done);
        Some(done)
    }
}

/// What the element did, per direction.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImpairReport {
    /// The link it sat on.
    #[serde(default)]
    pub link: ImpairedLink,
    /// Client → server.
    pub to_server: DirectionCounts,
    /// Server → client.
    pub to_client: DirectionCounts,
}

/// What one direction's thread ends with: its counts and the frames for the capture.
type DirectionResult = (DirectionCounts, Vec<Frame>);

/// The running element.
pub struct Impairment {
    stop: Arc<AtomicBool>,
    /// When the tunnel came up, in ms after the start plus one (0: not yet): outages count
    /// from there.
    origin: Arc<AtomicU64>,
    started: Instant,
    link: ImpairedLink,
    threads: Vec<std::thread::JoinHandle<Result<DirectionResult>>>,
}

/// Frames dropped/corrupted/duplicated kept for the capture, at most (bounded memory).
const MAX_KEPT: usize = 20_000;

impl Impairment {
    /// Starts forwarding between `near` and `far` of `wire`.
    pub fn start(wire: &Netns, spec: &LinkImpairment) -> Result<Impairment> {
        spec.validate()?;
        let stop = Arc::new(AtomicBool::new(false));
        let origin = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let [(_, up), (_, down)] = spec.directions();
        let mut threads = vec![];
        for (from, to, s, seed) in [
            ("near", "far", up, spec.seed),
            ("far", "near", down, spec.seed ^ 0x9e37_79b9_7f4a_7c15),
        ] {
            let (st, o) = (Arc::clone(&stop), Arc::clone(&origin));
            threads.push(wire.spawn(move || forward(from, to, &s, seed, &st, &o, started))?);
        }
        Ok(Impairment {
            stop,
            origin,
            started,
            link: spec.link,
            threads,
        })
    }

    /// The tunnel is up: scheduled outages count from now.
    pub fn tunnel_up(&self) {
        let ms = self.started.elapsed().as_millis() as u64 + 1;
        let _ = self
            .origin
            .compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Stops and returns the counts and the frames for the capture.
    pub fn finish(mut self) -> Result<(ImpairReport, Vec<Frame>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = ImpairReport {
            link: self.link,
            ..ImpairReport::default()
        };
        let mut frames = vec![];
        for (i, t) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            let (c, f) = t
                .join()
                .map_err(|_| anyhow::anyhow!("impairment thread panicked"))??;
            if i == 0 {
                report.to_server = c;
            } else {
                report.to_client = c;
            }
            frames.extend(f);
        }
        Ok((report, frames))
    }
}

impl Drop for Impairment {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A seeded xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A frame waiting for its release time.
struct Held {
    at: Instant,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    // Earliest first in a max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    let index = nix::net::if_::if_nametoindex(ifname).with_context(|| format!("no {ifname}"))?;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: fd was just returned by socket(2) and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_ll is valid; the fields set below make it a bind address.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: sll is a valid sockaddr_ll of the given size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("binding AF_PACKET");
    }
    // Our own transmissions on this interface are not read back.
    let one: libc::c_int = 1;
    // Room for a burst while the element's thread waits for a core (2 cores run both
    // engines, the load and the element): 8 MiB, beyond rmem_max as root may.
    let rcvbuf: libc::c_int = 8 << 20;
    // SAFETY: int options on a socket owned here.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&rcvbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
    Ok(fd)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Forwards frames from `from` to `to` with impairment `s` until `stop`.
fn forward(
    from: &str,
    to: &str,
    s: &ImpairSpec,
    seed: u64,
    stop: &AtomicBool,
    origin: &AtomicU64,
    start: Instant,
) -> Result<DirectionResult> {
    let rx = packet_socket(from)?;
    let tx = packet_socket(to)?;
    let mut rng = Rng(seed.max(1));
    let mut bad = false;
    let mut c = DirectionCounts::default();
    let mut kept: Vec<Frame> = vec![];
    let keep = |kept: &mut Vec<Frame>, data: &[u8], why: String| {
        if kept.len() < MAX_KEPT {
            kept.push(Frame {
                iface: "wire/impair".into(),
                link: tunscope_capture::file::LinkType::Ethernet,
                ts_ns: now_ns(),
                outgoing: None,
                data: data.to_vec(),
                orig_len: data.len() as u32,
                comment: Some(why),
            });
        }
    };
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let mut shaper = Shaper::new(s.rate_kbit, s.queue_ms);
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65_536];
    let dir = if from == "near" {
        "to-server"
    } else {
        "to-client"
    };
    while !stop.load(Ordering::Relaxed) {
        let next = held.peek().map(|h| h.at);
        let wait_ms = next.map_or(50, |t| {
            t.saturating_duration_since(Instant::now())
                .as_millis()
                .min(50) as i32
        });
        let mut pfd = libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        loop {
            // SAFETY: buf is valid for its length; non-blocking read.
            let n = unsafe {
                libc::recv(
                    rx.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
            let mut frame = buf[..n as usize].to_vec();
            c.frames += 1;
            // Seconds since the tunnel came up (outages wait for that).
            let up_ms = origin.load(Ordering::Relaxed);
            let t = (start.elapsed().as_millis() as f64 - up_ms as f64 + 1.0) / 1000.0;
            if let Some([at, dur]) = s.outage
                && up_ms > 0
                && t >= at
                && t < at + dur
            {
                c.outage += 1;
                keep(&mut kept, &frame, format!("impair {dir}: dropped (outage)"));
                continue;
            }
            let lost = match s.burst {
                Some([to_bad, to_good, loss_bad]) => {
                    bad = if bad {
                        rng.unit() >= to_good
                    } else {
                        rng.unit() < to_bad
                    };
                    bad && rng.unit() < loss_bad
                }
                None => rng.unit() < s.loss,
            };
            if lost {
                c.lost += 1;
                keep(&mut kept, &frame, format!("impair {dir}: dropped (loss)"));
                continue;
            }
            if let Some(m) = s.mtu
                && frame.len().saturating_sub(14) > usize::from(m)
            {
                c.too_big += 1;
                keep(
                    &mut kept,
                    &frame,
                    format!(
                        "impair {dir}: dropped ({} bytes over the MTU cap {m})",
                        frame.len() - 14
                    ),
                );
                continue;
            }
            if frame.len() > 14 && rng.unit() < s.corrupt {
                let i = 14 + (rng.next() as usize) % (frame.len() - 14);
                frame[i] ^= 1 << (rng.next() % 8);
                c.corrupted += 1;
                keep(
                    &mut kept,
                    &frame,
                    format!("impair {dir}: corrupted byte {i}"),
                );
            }
            let jitter = if s.jitter_ms > 0 {
                (rng.next() % (2 * s.jitter_ms + 1)) as i64 - s.jitter_ms as i64
            } else {
                0
            };
            let mut delay = (s.delay_ms as i64 + jitter).max(0) as u64;
            if rng.unit() < s.reorder {
                delay += s.delay_ms + 10;
                c.reordered += 1;
            }
            let copies = if rng.unit() < s.duplicate {
                c.duplicated += 1;
                keep(&mut kept, &frame, format!("impair {dir}: duplicated"));
                2
            } else {
                1
            };
            if delay > 0 {
                c.delayed += 1;
            }
            let now = Instant::now();
            let mut at = now + Duration::from_millis(delay);
            if let Some(sh) = shaper.as_mut() {
                match sh.admit(now, at, frame.len()) {
                    Some(t) => at = t,
                    None => {
                        c.rate_dropped += 1;
                        keep(
                            &mut kept,
                            &frame,
                            format!("impair {dir}: dropped (rate limit queue full)"),
                        );
                        continue;
                    }
                }
            }
            for _ in 0..copies {
                seq += 1;
                held.push(Held {
                    at,
                    seq,
                    data: frame.clone(),
                });
            }
        }
        // Release what is due.
        let now = Instant::now();
        while held.peek().is_some_and(|x| x.at <= now) {
            if let Some(x) = held.pop() {
                // SAFETY: x.data is a valid buffer; the socket is bound to the egress device.
                let r =
                    unsafe { libc::send(tx.as_raw_fd(), x.data.as_ptr().cast(), x.data.len(), 0) };
                if r >= 0 {
                    c.sent += 1;
                } else {
                    c.send_failed += 1;
                }
            }
        }
        c.overrun += u64::from(crate::capture::packet_drops(&rx));
    }
    Ok((c, kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_are_checked() {
        let t: LinkImpairment = toml::from_str(
            "seed = 7\nloss = 0.05\ndelay_ms = 20\njitter_ms = 5\n[to_client]\nburst = [0.01, 0.3, 0.5]\n",
        )
        .expect("parses");
        assert_eq!(t.seed, 7);
        let [(_, up), (_, down)] = t.directions();
        assert_eq!((up.loss, up.delay_ms), (0.05, 20));
        assert_eq!(down.burst, Some([0.01, 0.3, 0.5]));
        assert!(t.validate().is_ok());
        let bad: LinkImpairment = toml::from_str("loss = 1.5\n").expect("parses");
        assert!(bad.validate().unwrap_err().to_string().contains("loss"));
        assert!(
            toml::from_str::<LinkImpairment>("lose = 0.1\n").is_err(),
            "unknown field"
        );
    }

    #[test]
    fn the_rate_limiter_paces_and_drops_past_its_queue() {
        // 8 Mbit/s = 1 MB/s: a 1000-byte frame takes 1 ms; the queue holds 5 ms.
        let mut sh = Shaper::new(8000, Some(5)).expect("limited");
        let t0 = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let mut leave = vec![];
        for _ in 0..8 {
            leave.push(sh.admit(t0, t0, 1000));
        }
        // Six leave 1 ms apart (the sixth waits exactly 5 ms); the rest find the queue full.
        let sent: Vec<Instant> = leave.iter().flatten().copied().collect();
        assert_eq!(sent.len(), 6, "{leave:?}");
        for (i, t) in sent.iter().enumerate() {
            let want = t0 + ms(i as u64 + 1);
            assert!(
                t.saturating_duration_since(want) < Duration::from_micros(10),
                "frame {i}"
            );
        }
        // Later, the link is idle again: no wait.
        let later = t0 + ms(100);
        let t = sh.admit(later, later, 1000).expect("admitted");
        assert!(t.saturating_duration_since(later + ms(1)) < Duration::from_micros(10));
        assert!(Shaper::new(0, None).is_none(), "0 is unlimited");
    }

    #[test]
    fn decisions_repeat_with_the_seed() {
        let draw = |seed| {
            let mut r = Rng(seed);
            (0..1000).map(|_| r.unit() < 0.05).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
        let lost = draw(42).iter().filter(|l| **l).count();
        assert!((25..=80).contains(&lost), "{lost} of 1000 at 5 %");
    }
}
