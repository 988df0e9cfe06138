//! Packet-ids and the replay window.
//!
//! The data channel uses a 4-byte packet-id ("short form"); the tls-auth/tls-crypt wrap uses an
//! 8-byte id plus timestamp ("long form"). Both are checked against the same sliding window:
//! id 0 is never valid, an id above the highest seen slides the window, an id more than `size`
//! below it or one already seen is a replay. Only packets that authenticated may update the
//! window, so callers check first and [`ReplayWindow::update`] after decryption.
//!
//! Time rule (simplified from OpenVPN's `packet_id_reap`): an id below the highest is only
//! accepted within `time_window` of the moment the highest id arrived. OpenVPN expires window
//! slots individually; the effect on a live link is the same (a reordered packet must arrive
//! within ~15 s of its successors).

use std::time::{Duration, Instant};

use crate::consts::{REPLAY_TIME_WINDOW_DEFAULT, REPLAY_WINDOW_DEFAULT};
use crate::stage::DropReason;

/// Sliding replay window over u32 packet-ids.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest id accepted so far; 0 before the first packet.
    highest: u32,
    highest_at: Option<Instant>,
    /// Ring of "seen" bits indexed by `id % (64 * bits.len())`.
    bits: Box<[u64]>,
    size: u32,
    time_window: Duration,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow::new(REPLAY_WINDOW_DEFAULT, REPLAY_TIME_WINDOW_DEFAULT)
    }
}

impl ReplayWindow {
    /// A window of `size` packets (OpenVPN allows 0..=65536) and the given time window.
    pub fn new(size: u32, time_window: Duration) -> ReplayWindow {
        let size = size.clamp(1, 65536);
        let words = (size as usize).div_ceil(64).max(1);
        ReplayWindow {
            highest: 0,
            highest_at: None,
            bits: vec![0; words].into_boxed_slice(),
            size,
            time_window,
        }
    }

    fn ring_bits(&self) -> u64 {
        64 * self.bits.len() as u64
    }

    fn slot(&self, id: u32) -> (usize, u64) {
        let i = u64::from(id) % self.ring_bits();
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Checks whether `id` may be accepted, without recording it.
    pub fn check(&self, id: u32, now: Instant) -> Result<(), DropReason> {
        if id == 0 {
            return Err(DropReason::Replay);
        }
        if id > self.highest {
            return Ok(());
        }
        if self.highest - id >= self.size {
            return Err(DropReason::Replay);
        }
        if let Some(at) = self.highest_at
            && now.saturating_duration_since(at) > self.time_window
        {
            return Err(DropReason::Replay);
        }
        let (w, m) = self.slot(id);
        if self.bits[w] & m != 0 {
            return Err(DropReason::Replay);
        }
        Ok(())
    }

    /// Records `id` as seen. Call only after [`ReplayWindow::check`] passed and the packet
    /// authenticated.
    pub fn update(&mut self, id: u32, now: Instant) {
        if id > self.highest {
            let advance = u64::from(id - self.highest);
            if advance >= self.ring_bits() {
                self.bits.fill(0);
            } else {
                for skipped in self.highest + 1..id {
                    let (w, m) = self.slot(skipped);
                    self.bits[w] &= !m;
                }
            }
            self.highest = id;
            self.highest_at = Some(now);
        }
        let (w, m) = self.slot(id);
        self.bits[w] |= m;
    }

    /// Check and update in one step (for callers that already authenticated the packet).
    pub fn accept(&mut self, id: u32, now: Instant) -> Result<(), DropReason> {
        self.check(id, now)?;
        self.update(id, now);
        Ok(())
    }

    /// The highest id seen.
    pub fn highest(&self) -> u32 {
        self.highest
    }
}

/// Replay check for the 8-byte long form `(id, time)` of the control-channel wrap.
#[derive(Clone, Debug, Default)]
pub struct LongReplayWindow {
    time: u32,
    window: ReplayWindow,
}

impl LongReplayWindow {
    /// Checks `(id, time)` without recording it.
    pub fn check(&self, id: u32, time: u32, now: Instant) -> Result<(), DropReason> {
        if id == 0 || time < self.time {
            return Err(DropReason::Replay);
        }
        if time > self.time {
            // A newer sender epoch restarts the window (e.g. after the 2.6 cookie phase).
            return Ok(());
        }
        self.window.check(id, now)
    }

    /// Records `(id, time)`.
    pub fn update(&mut self, id: u32, time: u32, now: Instant) {
        if time > self.time {
            self.time = time;
            self.window = ReplayWindow::default();
        }
        self.window.update(id, now);
    }
}

/// Sender side of the long-form packet-id: the counter is incremented before each use, so the
/// first id on the wire is 1.
#[derive(Clone, Debug)]
pub struct LongPacketIdSend {
    id: u32,
    time: u32,
}

impl LongPacketIdSend {
    /// A counter whose time field is `unix_time` (seconds).
    pub fn new(unix_time: u32) -> LongPacketIdSend {
        LongPacketIdSend {
            id: 0,
            time: unix_time,
        }
    }

    /// Continues after `id` (the 2.6 server skips ahead after its cookie phase).
    pub fn set_last(&mut self, id: u32) {
        self.id = id;
    }

    /// The time field.
    pub fn time(&self) -> u32 {
        self.time
    }

    /// The next `(id, time)`; `None` once the id space is exhausted.
    pub fn next_id(&mut self) -> Option<(u32, u32)> {
        self.id = self.id.checked_add(1)?;
        Some((self.id, self.time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_never_valid() {
        let w = ReplayWindow::default();
        assert_eq!(w.check(0, Instant::now()), Err(DropReason::Replay));
    }

    #[test]
    fn duplicates_and_old_ids_are_replays() {
        let now = Instant::now();
        let mut w = ReplayWindow::default();
        for id in [1, 2, 5, 4, 3] {
            assert_eq!(w.accept(id, now), Ok(()), "id {id}");
        }
        for id in [1, 2, 3, 4, 5] {
            assert_eq!(w.accept(id, now), Err(DropReason::Replay), "id {id}");
        }
        w.accept(100, now).expect("jump ahead");
        assert_eq!(
            w.check(36, now),
            Err(DropReason::Replay),
            "64 below highest"
        );
        assert_eq!(w.check(37, now), Ok(()), "63 below highest, never seen");
        assert_eq!(w.check(99, now), Ok(()));
        assert_eq!(w.check(100, now), Err(DropReason::Replay));
    }

    #[test]
    fn skipped_ids_are_cleared_when_ring_wraps() {
        let now = Instant::now();
        let mut w = ReplayWindow::default();
        w.accept(1, now).expect("first");
        // 65 maps to the same ring slot as 1; after sliding past it must be "unseen".
        w.accept(66, now).expect("ahead");
        assert_eq!(w.check(65, now), Ok(()));
        assert_eq!(w.check(2, now), Err(DropReason::Replay));
    }

    #[test]
    fn reordered_packet_expires_after_time_window() {
        let t0 = Instant::now();
        let mut w = ReplayWindow::new(64, Duration::from_secs(15));
        w.accept(10, t0).expect("first");
        assert_eq!(w.check(9, t0 + Duration::from_secs(14)), Ok(()));
        assert_eq!(
            w.check(9, t0 + Duration::from_secs(16)),
            Err(DropReason::Replay)
        );
        assert_eq!(w.check(11, t0 + Duration::from_secs(16)), Ok(()));
    }

    #[test]
    fn large_window_behaves() {
        let now = Instant::now();
        let mut w = ReplayWindow::new(1000, Duration::from_secs(15));
        w.accept(2000, now).expect("ok");
        assert_eq!(w.check(1001, now), Ok(()));
        assert_eq!(w.check(1000, now), Err(DropReason::Replay));
    }

    #[test]
    fn long_form_newer_time_restarts_window() {
        let now = Instant::now();
        let mut w = LongReplayWindow::default();
        w.check(5, 100, now).expect("ok");
        w.update(5, 100, now);
        assert_eq!(w.check(5, 100, now), Err(DropReason::Replay));
        assert_eq!(w.check(6, 99, now), Err(DropReason::Replay), "older epoch");
        w.check(1, 101, now).expect("newer epoch");
        w.update(1, 101, now);
        assert_eq!(w.check(1, 101, now), Err(DropReason::Replay));
    }

    #[test]
    fn sender_starts_at_one() {
        let mut s = LongPacketIdSend::new(42);
        assert_eq!(s.next_id(), Some((1, 42)));
        assert_eq!(s.next_id(), Some((2, 42)));
        s.set_last(u32::MAX);
        assert_eq!(s.next_id(), None);
    }
}
