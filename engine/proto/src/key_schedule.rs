//! The data-channel key schedule of one tunnel (a client's server, or one client of a
//! server): which keys decrypt, which key encrypts, when the next renegotiation is due, and
//! how long a replaced key lingers as lame duck. Both roles own one, so they renegotiate
//! for the same reasons (`reneg-sec` with jitter, `reneg-pkts`, `reneg-bytes`, packet-ids
//! running out) and retire keys the same way.
//!
//! Life of a renegotiation:
//!
//! ```text
//!  due() ─▶ started() ─▶ material_ready(new)   new key decrypts (the peer may use it first)
//!                          │
//!                          ├─▶ activated()    new key encrypts (now or after a delay);
//!                          │                  the old one decrypts until the lame-duck expiry
//!                          └─▶ failed()       the new key is forgotten; the old stays
//! ```
//!
//! Like the rest of the core it reads no clock: every method takes `now`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::consts::PACKET_ID_WRAP_TRIGGER;
use crate::control::random_bytes;
use crate::data::DataKeys;

/// A jitter value for [`KeySchedule::new`] from the core's random source.
pub fn random_jitter() -> f64 {
    f64::from(u16::from_le_bytes(random_bytes::<2>())) / f64::from(u16::MAX)
}

/// When to renegotiate and how long old keys stay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleConfig {
    /// `reneg-sec` (zero: never on time).
    pub reneg_sec: Duration,
    /// Randomise `reneg-sec` per tunnel down to this fraction of it (2.6: 0.9), so that the
    /// renegotiations of many tunnels started together do not align.
    pub reneg_sec_min: f64,
    /// `reneg-pkts`: after this many packets sent with one key.
    pub reneg_pkts: Option<u64>,
    /// `reneg-bytes`: after this many bytes sent with one key.
    pub reneg_bytes: Option<u64>,
    /// `tran-window`: how long the previous key still decrypts after a new one is active.
    pub tran_window: Duration,
}

/// Data-channel keys of one tunnel over time.
#[derive(Debug)]
pub struct KeySchedule {
    cfg: ScheduleConfig,
    /// Keys that decrypt, newest first: at most the current one and a lame duck (or a
    /// renegotiated key not active yet and the current one).
    keys: Vec<Arc<DataKeys>>,
    /// The key that encrypts.
    send: Option<Arc<DataKeys>>,
    switch_send_at: Option<Instant>,
    lame_expires_at: Option<Instant>,
    key_started: Instant,
    /// `reneg-sec` after jitter.
    reneg_after: Duration,
    /// A renegotiation is under way since this time.
    pending_since: Option<Instant>,
}

impl KeySchedule {
    /// A schedule without keys. `jitter` in 0..=1 picks where in [`ScheduleConfig::reneg_sec_min`]
    /// ..= 1 of `reneg-sec` this tunnel renegotiates (from the core's random source).
    pub fn new(cfg: ScheduleConfig, now: Instant, jitter: f64) -> KeySchedule {
        let min = cfg.reneg_sec_min.clamp(0.0, 1.0);
        let factor = 1.0 - (1.0 - min) * jitter.clamp(0.0, 1.0);
        KeySchedule {
            cfg,
            keys: Vec::new(),
            send: None,
            switch_send_at: None,
            lame_expires_at: None,
            key_started: now,
            reneg_after: cfg.reneg_sec.mul_f64(factor),
            pending_since: None,
        }
    }

    /// The first key of the tunnel: it encrypts and decrypts at once.
    pub fn start(&mut self, now: Instant, key: Arc<DataKeys>) {
        self.keys = vec![key.clone()];
        self.send = Some(key);
        self.switch_send_at = None;
        self.lame_expires_at = None;
        self.key_started = now;
        self.pending_since = None;
    }

    /// The key that encrypts.
    pub fn send_key(&self) -> Option<&Arc<DataKeys>> {
        self.send.as_ref()
    }

    /// The keys that decrypt, newest first.
    pub fn recv_keys(&self) -> &[Arc<DataKeys>] {
        &self.keys
    }

    /// `reneg-sec` for this tunnel, after jitter.
    pub fn reneg_after(&self) -> Duration {
        self.reneg_after
    }

    /// True while a renegotiation is under way.
    pub fn is_pending(&self) -> bool {
        self.pending_since.is_some()
    }

    /// True when a key with this key-id decrypts.
    pub fn has_key(&self, key_id: u8) -> bool {
        self.keys.iter().any(|k| k.key_id() == key_id)
    }

    /// A renegotiation started (by us or by the peer).
    pub fn started(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// True when we should start a renegotiation: `reneg-sec` passed, or the sending key
    /// reached `reneg-pkts`/`reneg-bytes` or the packet-id limit, and none is under way.
    pub fn due(&self, now: Instant) -> bool {
        if self.pending_since.is_some() || self.send.is_none() {
            return false;
        }
        let timed = !self.cfg.reneg_sec.is_zero() && now >= self.key_started + self.reneg_after;
        timed || self.exhausted()
    }

    fn exhausted(&self) -> bool {
        self.send.as_ref().is_some_and(|k| {
            k.packets_sent() >= u64::from(PACKET_ID_WRAP_TRIGGER)
                || self.cfg.reneg_pkts.is_some_and(|n| k.packets_sent() >= n)
                || self.cfg.reneg_bytes.is_some_and(|n| k.bytes_sent() >= n)
        })
    }

    /// New key material exists: the key decrypts from now on (the peer may start sending
    /// with it before it is active here). Returns false when it was known already.
    pub fn material_ready(&mut self, key: Arc<DataKeys>) -> bool {
        if self.has_key(key.key_id()) {
            return false;
        }
        self.keys.insert(0, key);
        // The newest, the one that encrypts now, and nothing older.
        let send_id = self.send.as_ref().map(|k| k.key_id());
        let mut kept = 0;
        self.keys.retain(|k| {
            kept += 1;
            kept == 1 || Some(k.key_id()) == send_id
        });
        true
    }

    /// The renegotiation of `key_id` completed: it encrypts after `send_delay` (at once
    /// when zero), the previous key decrypts until `tran-window` ends. Returns how long the
    /// renegotiation took, or `None` when that key has no material (nothing changes).
    pub fn activated(
        &mut self,
        now: Instant,
        key_id: u8,
        send_delay: Duration,
    ) -> Option<Duration> {
        let newest = self.keys.first().filter(|k| k.key_id() == key_id)?.clone();
        if send_delay.is_zero() {
            self.send = Some(newest);
            self.switch_send_at = None;
        } else {
            self.switch_send_at = Some(now + send_delay);
        }
        self.lame_expires_at = Some(now + self.cfg.tran_window);
        self.key_started = now;
        let took = now.saturating_duration_since(self.pending_since.take().unwrap_or(now));
        Some(took)
    }

    /// The renegotiation of `key_id` failed: its key is forgotten, so that nothing can
    /// switch to it later, and the next attempt waits a full period (or the limit that
    /// triggered it).
    pub fn failed(&mut self, now: Instant, key_id: u8) -> bool {
        let before = self.keys.len();
        let send_id = self.send.as_ref().map(|k| k.key_id());
        self.keys
            .retain(|k| k.key_id() != key_id || Some(key_id) == send_id);
        self.pending_since = None;
        self.key_started = now;
        self.keys.len() != before
    }

    /// Runs the timers: the switch to the new sending key, the lame duck's expiry. Returns
    /// true when the keys changed.
    pub fn on_timeout(&mut self, now: Instant) -> bool {
        let mut changed = false;
        if let Some(t) = self.switch_send_at
            && now >= t
        {
            self.switch_send_at = None;
            if let Some(k) = self.keys.first() {
                self.send = Some(k.clone());
                changed = true;
            }
        }
        if let Some(t) = self.lame_expires_at
            && now >= t
            && self.switch_send_at.is_none()
        {
            self.lame_expires_at = None;
            let send_id = self.send.as_ref().map(|k| k.key_id());
            let before = self.keys.len();
            self.keys.retain(|k| Some(k.key_id()) == send_id);
            changed |= self.keys.len() != before;
        }
        changed
    }

    /// The next time [`KeySchedule::on_timeout`] or [`KeySchedule::due`] can change
    /// something (limits by packets or bytes are checked at every timeout).
    pub fn next_deadline(&self) -> Option<Instant> {
        let reneg = (!self.cfg.reneg_sec.is_zero() && self.pending_since.is_none())
            .then(|| self.key_started + self.reneg_after);
        [self.switch_send_at, self.lame_expires_at, reneg]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::KEY2_LEN;
    use crate::data::Cipher;

    fn key(id: u8) -> Arc<DataKeys> {
        Arc::new(DataKeys::new(Cipher::Aes256Gcm, &[id; KEY2_LEN], id, false))
    }

    fn cfg() -> ScheduleConfig {
        ScheduleConfig {
            reneg_sec: Duration::from_secs(100),
            reneg_sec_min: 0.9,
            reneg_pkts: None,
            reneg_bytes: None,
            tran_window: Duration::from_secs(60),
        }
    }

    fn ids(s: &KeySchedule) -> Vec<u8> {
        s.recv_keys().iter().map(|k| k.key_id()).collect()
    }

    #[test]
    fn jitter_spreads_reneg_sec_between_min_and_full() {
        let now = Instant::now();
        assert_eq!(
            KeySchedule::new(cfg(), now, 0.0).reneg_after(),
            Duration::from_secs(100)
        );
        assert_eq!(
            KeySchedule::new(cfg(), now, 1.0).reneg_after(),
            Duration::from_secs(90)
        );
        let mid = KeySchedule::new(cfg(), now, 0.5).reneg_after();
        assert!(mid > Duration::from_secs(90) && mid < Duration::from_secs(100));
    }

    #[test]
    fn renegotiation_switches_keys_and_expires_the_lame_duck() {
        let t0 = Instant::now();
        let mut s = KeySchedule::new(cfg(), t0, 0.0);
        s.start(t0, key(0));
        assert!(!s.due(t0 + Duration::from_secs(99)));
        assert!(s.due(t0 + Duration::from_secs(100)));
        let t1 = t0 + Duration::from_secs(100);
        s.started(t1);
        assert!(!s.due(t1), "one renegotiation at a time");
        assert!(s.material_ready(key(1)));
        assert_eq!(ids(&s), [1, 0]);
        assert_eq!(s.send_key().map(|k| k.key_id()), Some(0));
        let took = s.activated(t1 + Duration::from_millis(50), 1, Duration::from_secs(1));
        assert_eq!(took, Some(Duration::from_millis(50)));
        assert_eq!(
            s.send_key().map(|k| k.key_id()),
            Some(0),
            "switch is delayed"
        );
        assert!(s.on_timeout(t1 + Duration::from_secs(2)));
        assert_eq!(s.send_key().map(|k| k.key_id()), Some(1));
        assert_eq!(ids(&s), [1, 0], "old key decrypts during tran-window");
        assert!(s.on_timeout(t1 + Duration::from_secs(61)));
        assert_eq!(ids(&s), [1]);
    }

    #[test]
    fn a_failed_renegotiation_leaves_no_key_behind() {
        let t0 = Instant::now();
        let mut s = KeySchedule::new(cfg(), t0, 0.0);
        s.start(t0, key(0));
        s.started(t0);
        s.material_ready(key(1));
        assert!(s.failed(t0 + Duration::from_secs(5), 1));
        assert_eq!(ids(&s), [0]);
        assert_eq!(
            s.activated(t0, 1, Duration::ZERO),
            None,
            "cannot switch to it"
        );
        // The next renegotiation keeps the current key next to the new one.
        s.started(t0 + Duration::from_secs(200));
        s.material_ready(key(2));
        assert_eq!(ids(&s), [2, 0]);
        assert_eq!(s.send_key().map(|k| k.key_id()), Some(0));
        assert!(
            s.activated(t0 + Duration::from_secs(201), 2, Duration::ZERO)
                .is_some()
        );
        assert_eq!(s.send_key().map(|k| k.key_id()), Some(2));
    }

    #[test]
    fn packet_limits_make_a_renegotiation_due() {
        let t0 = Instant::now();
        let mut s = KeySchedule::new(
            ScheduleConfig {
                reneg_sec: Duration::ZERO,
                reneg_pkts: Some(3),
                ..cfg()
            },
            t0,
            0.0,
        );
        s.start(t0, key(0));
        assert!(!s.due(t0 + Duration::from_secs(10_000)), "no reneg-sec");
        let k = s.send_key().cloned().expect("key");
        let mut out = vec![0u8; 256];
        let h = crate::wire::DataHeader {
            key_id: 0,
            peer_id: None,
        };
        for _ in 0..3 {
            k.seal(h, crate::data::Framing::None, &[0x45; 20], &mut out)
                .expect("seal");
        }
        assert!(s.due(t0));
        assert_eq!(s.next_deadline(), None);
    }
}
