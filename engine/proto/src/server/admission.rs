//! How fast a server lets new clients in, and how fairly.
//!
//! A UDP server answers hard resets statelessly (see `cookie.rs`). Those answers are limited
//! as 2.6's `connect-freq-initial N S` does (default 100 per 10 s, for all sources together),
//! which bounds the server as a reflector. A single global bucket lets one sender take every
//! token, so new clients elsewhere go unanswered for as long as the flood lasts. Here each
//! source address first gets its own share (a tenth of N, at least 4, per S), and only what a
//! source is allowed spends the global tokens. A reset resent with the same session id from
//! the same address is answered at most once a second, so a captured reset replayed (even
//! from its owner's spoofed address) cannot spend its owner's share; the owner's own
//! retransmissions, seconds apart, still get answers.
//!
//! `connect-freq N S` limits the sessions actually created (a client that echoed its
//! cookie, a TCP connection's first reset, a tls-crypt-v2 client without cookie support).
//!
//! Every table here is bounded: past [`MAX_SOURCES`] addresses, entries whose period is over
//! are forgotten first; if none is, new sources share one overflow bucket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::wire::SessionId;

/// Source addresses tracked at most.
pub const MAX_SOURCES: usize = 4096;
/// The same reset from the same address is answered at most this often.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A token bucket refilled completely at the start of each period.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    capacity: u32,
    tokens: u32,
    period: Duration,
    last: Instant,
}

impl RateLimit {
    /// `n` per `period`.
    pub fn new(n: u32, period: Duration, now: Instant) -> RateLimit {
        RateLimit {
            capacity: n,
            tokens: n,
            period,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last) >= self.period {
            self.tokens = self.capacity;
            self.last = now;
        }
    }

    /// Takes a token; false when the limit is reached.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// Whether a token would be available (without taking it).
    fn has_token(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens > 0
    }

    fn idle(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= self.period
    }
}

/// The stateless-reply limiter of a UDP server.
pub struct ResetLimiter {
    global: RateLimit,
    share: u32,
    period: Duration,
    sources: HashMap<IpAddr, RateLimit>,
    overflow: RateLimit,
    last_reset: HashMap<SocketAddr, (SessionId, Instant)>,
}

impl ResetLimiter {
    /// `n` answers per `period` in all (`connect-freq-initial n period`).
    pub fn new(n: u32, period: Duration, now: Instant) -> ResetLimiter {
        let share = (n / 10).max(4).min(n.max(1));
        ResetLimiter {
            global: RateLimit::new(n, period, now),
            share,
            period,
            sources: HashMap::new(),
            overflow: RateLimit::new(share, period, now),
            last_reset: HashMap::new(),
        }
    }

    /// Whether to answer the reset with session id `sid` from `from` now.
    pub fn allow(&mut self, now: Instant, from: SocketAddr, sid: SessionId) -> bool {
        if let Some((last_sid, at)) = self.last_reset.get(&from)
            && *last_sid == sid
            && now.saturating_duration_since(*at) < REPEAT_INTERVAL
        {
            return false;
        }
        if !self.global.has_token(now) {
            return false;
        }
        let source = self.source(now, from.ip());
        if !source.allow(now) {
            return false;
        }
        self.global.allow(now);
        if self.last_reset.len() >= MAX_SOURCES {
            self.last_reset
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < REPEAT_INTERVAL);
        }
        if self.last_reset.len() < MAX_SOURCES {
            self.last_reset.insert(from, (sid, now));
        }
        true
    }

    /// The bucket of `ip` (made on first use; the overflow bucket when the table is full).
    fn source(&mut self, now: Instant, ip: IpAddr) -> &mut RateLimit {
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_SOURCES {
            self.sources.retain(|_, b| !b.idle(now));
        }
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            return &mut self.overflow;
        }
        let (share, period) = (self.share, self.period);
        self.sources
            .entry(ip)
            .or_insert_with(|| RateLimit::new(share, period, now))
    }

    /// Sources tracked (for tests and reports).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(n: u64) -> SessionId {
        SessionId(n.to_be_bytes())
    }

    fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    /// One source flooding (new session ids, many ports) gets its share and no more; another
    /// source is still answered, within the global limit.
    #[test]
    fn one_source_cannot_take_every_answer() {
        let t0 = Instant::now();
        let mut l = ResetLimiter::new(100, Duration::from_secs(10), t0);
        let answered = (0..10_000u64)
            .filter(|i| l.allow(t0, addr([198, 18, 9, 9], 1000 + (*i % 50) as u16), sid(*i)))
            .count();
        assert_eq!(answered, 10);
        assert!(l.allow(t0, addr([198, 18, 0, 1], 40000), sid(1)));
        // Ten flooding sources spend the global 100; the 11th waits for the next period.
        for s in 1..=9u8 {
            for i in 0..20u64 {
                l.allow(t0, addr([198, 18, 8, s], 1), sid(i));
            }
        }
        assert!(!l.allow(t0, addr([198, 18, 0, 2], 40000), sid(2)));
        let later = t0 + Duration::from_secs(10);
        assert!(l.allow(later, addr([198, 18, 0, 2], 40000), sid(2)));
    }

    /// A reset replayed (same address, same session id) is answered once a second at most and
    /// does not spend the address's share; a new session id from there still gets through.
    #[test]
    fn replays_do_not_spend_the_share() {
        let t0 = Instant::now();
        let mut l = ResetLimiter::new(100, Duration::from_secs(10), t0);
        let victim = addr([198, 18, 0, 1], 40000);
        assert!(l.allow(t0, victim, sid(7)));
        for i in 0..1000u32 {
            let t = t0 + Duration::from_micros(u64::from(i) * 900);
            assert!(!l.allow(t, victim, sid(7)), "replay {i} answered");
        }
        // The client's own retransmission 2 s later is answered, and so is a new attempt.
        assert!(l.allow(t0 + Duration::from_secs(2), victim, sid(7)));
        assert!(l.allow(t0 + Duration::from_secs(2), victim, sid(8)));
    }

    #[test]
    fn rate_limit_refills_per_period() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(3, Duration::from_secs(10), t0);
        assert!(r.allow(t0) && r.allow(t0) && r.allow(t0));
        assert!(!r.allow(t0 + Duration::from_secs(9)));
        assert!(r.allow(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn tables_stay_bounded() {
        let t0 = Instant::now();
        let mut l = ResetLimiter::new(1_000_000, Duration::from_secs(10), t0);
        for i in 0..20_000u32 {
            let ip = std::net::Ipv4Addr::from(0xc612_0000 + i);
            l.allow(t0, SocketAddr::from((ip, 1)), sid(u64::from(i)));
        }
        assert!(l.tracked() <= MAX_SOURCES);
        assert!(l.last_reset.len() <= MAX_SOURCES);
    }
}
