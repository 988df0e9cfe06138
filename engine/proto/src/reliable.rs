//! The control channel's reliability layer: message ids, acknowledgements, retransmission
//! with exponential backoff, send and receive windows, in-order delivery.
//!
//! One instance per key state and direction (message ids restart at 0 for every key-id).
//! ACKs are not cumulative: each message id is acknowledged on its own. Like OpenVPN 2.6 we
//! remember recently sent ACKs and repeat them in later packets, so a lost ACK does not cost
//! a retransmission round trip (and a 2.6 cookie server sees ACK 0 on the client's first
//! CONTROL packet even when the stand-alone ACK was lost).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::consts::{FAST_RETRANSMIT_ACKS, RELIABLE_RECV_WINDOW, RELIABLE_SEND_WINDOW};
use crate::wire::{AckList, Opcode};

/// Retransmission backoff stops doubling here.
const MAX_RETRANSMIT_TIMEOUT: Duration = Duration::from_secs(32);

#[derive(Debug)]
struct SendEntry {
    id: u32,
    opcode: Opcode,
    payload: Vec<u8>,
    /// `None` until first sent.
    next_try: Option<Instant>,
    timeout: Duration,
    /// ACKs seen for higher ids since the last (re)transmission.
    higher_acks: u8,
}

/// A message due for (re)transmission.
#[derive(Debug, PartialEq, Eq)]
pub struct Due<'a> {
    /// Message id.
    pub id: u32,
    /// Opcode to send it with.
    pub opcode: Opcode,
    /// Payload (TLS bytes; empty for resets).
    pub payload: &'a [u8],
    /// True when this is a retransmission.
    pub retransmit: bool,
}

/// Sending side: assigns message ids, keeps unacknowledged messages, schedules retries.
#[derive(Debug)]
pub struct ReliableSend {
    next_id: u32,
    entries: VecDeque<SendEntry>,
    initial_timeout: Duration,
    retransmits: u64,
}

impl ReliableSend {
    /// A sender whose first retransmission happens after `initial_timeout` (`--tls-timeout`).
    pub fn new(initial_timeout: Duration) -> ReliableSend {
        ReliableSend {
            next_id: 0,
            entries: VecDeque::new(),
            initial_timeout,
            retransmits: 0,
        }
    }

    /// True while fewer than [`RELIABLE_SEND_WINDOW`] messages are unacknowledged.
    pub fn has_room(&self) -> bool {
        self.entries.len() < RELIABLE_SEND_WINDOW
    }

    /// Queues a message; returns its id. Callers check [`ReliableSend::has_room`] first.
    pub fn push(&mut self, opcode: Opcode, payload: Vec<u8>) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.entries.push_back(SendEntry {
            id,
            opcode,
            payload,
            next_try: None,
            timeout: self.initial_timeout,
            higher_acks: 0,
        });
        id
    }

    /// Starts numbering at `id` (a 2.6 cookie server continues after its stateless reset).
    pub fn skip_to(&mut self, id: u32) {
        if self.entries.is_empty() {
            self.next_id = id;
        }
    }

    /// Processes an ACK for `id`. Returns true if it acknowledged an outstanding message.
    pub fn ack(&mut self, id: u32) -> bool {
        let Some(pos) = self.entries.iter().position(|e| e.id == id) else {
            return false;
        };
        self.entries.remove(pos);
        for e in self.entries.iter_mut() {
            if e.id < id && e.next_try.is_some() {
                e.higher_acks = e.higher_acks.saturating_add(1);
            }
        }
        true
    }

    /// The next message to (re)transmit at `now`, marking it sent.
    pub fn poll_due(&mut self, now: Instant) -> Option<Due<'_>> {
        let idx = self.entries.iter().position(|e| match e.next_try {
            None => true,
            Some(t) => t <= now || e.higher_acks >= FAST_RETRANSMIT_ACKS,
        })?;
        let e = &mut self.entries[idx];
        let retransmit = e.next_try.is_some();
        if retransmit {
            e.timeout = (e.timeout * 2).min(MAX_RETRANSMIT_TIMEOUT);
            self.retransmits += 1;
        }
        e.next_try = Some(now + e.timeout);
        e.higher_acks = 0;
        Some(Due {
            id: e.id,
            opcode: e.opcode,
            payload: &e.payload,
            retransmit,
        })
    }

    /// When the next retransmission is due (unsent messages are due immediately).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.iter().filter_map(|e| e.next_try).min()
    }

    /// True when something is waiting to be sent for the first time.
    pub fn has_unsent(&self) -> bool {
        self.entries.iter().any(|e| e.next_try.is_none())
    }

    /// True when every message was acknowledged.
    pub fn is_idle(&self) -> bool {
        self.entries.is_empty()
    }

    /// Id the next pushed message will get.
    pub fn next_id(&self) -> u32 {
        self.next_id
    }

    /// Retransmissions so far.
    pub fn retransmits(&self) -> u64 {
        self.retransmits
    }
}

/// What the receiver made of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvVerdict {
    /// New message, buffered for in-order delivery; acknowledge it.
    New,
    /// Seen before; acknowledge it again (our ACK may have been lost).
    Duplicate,
    /// Too far ahead of the receive window; drop without ACK so the peer retransmits later.
    OutOfWindow,
}

/// Receiving side: buffers out-of-order messages, delivers them in order.
#[derive(Debug, Default)]
pub struct ReliableRecv {
    next: u32,
    pending: BTreeMap<u32, (Opcode, Vec<u8>)>,
}

impl ReliableRecv {
    /// A receiver expecting message id 0.
    pub fn new() -> ReliableRecv {
        ReliableRecv::default()
    }

    /// Offers a received message.
    pub fn offer(&mut self, id: u32, opcode: Opcode, payload: &[u8]) -> RecvVerdict {
        if id < self.next {
            return RecvVerdict::Duplicate;
        }
        if id - self.next >= RELIABLE_RECV_WINDOW {
            return RecvVerdict::OutOfWindow;
        }
        if self.pending.contains_key(&id) {
            return RecvVerdict::Duplicate;
        }
        self.pending.insert(id, (opcode, payload.to_vec()));
        RecvVerdict::New
    }

    /// The next message in order, if it has arrived.
    pub fn pop(&mut self) -> Option<(u32, Opcode, Vec<u8>)> {
        let (opcode, payload) = self.pending.remove(&self.next)?;
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        Some((id, opcode, payload))
    }

    /// Marks everything below `id` as delivered.
    pub fn skip_to(&mut self, id: u32) {
        if id > self.next {
            self.next = id;
            self.pending.retain(|k, _| *k >= id);
        }
    }

    /// The next id expected in order.
    pub fn next_expected(&self) -> u32 {
        self.next
    }
}

/// ACKs owed to the peer plus a short list of recently sent ones to repeat.
#[derive(Debug, Default)]
pub struct AckTracker {
    owed: VecDeque<u32>,
    recent: VecDeque<u32>,
}

/// How many already-sent ACKs are remembered for repetition.
const RECENT_ACKS: usize = 8;

impl AckTracker {
    /// An empty tracker.
    pub fn new() -> AckTracker {
        AckTracker::default()
    }

    /// Records that `id` must be acknowledged.
    pub fn owe(&mut self, id: u32) {
        if !self.owed.contains(&id) {
            self.owed.push_back(id);
        }
    }

    /// True when ACKs are owed.
    pub fn has_owed(&self) -> bool {
        !self.owed.is_empty()
    }

    /// Builds the ACK list of an outgoing packet: owed ACKs first (up to `max`), then
    /// recently sent ones when `repeat` is set and room is left.
    pub fn take(&mut self, max: usize, repeat: bool) -> AckList {
        let mut list = AckList::new();
        while list.len() < max {
            let Some(id) = self.owed.pop_front() else {
                break;
            };
            list.push(id);
            self.recent.retain(|r| *r != id);
            self.recent.push_front(id);
        }
        self.recent.truncate(RECENT_ACKS);
        if repeat {
            for id in self.recent.iter() {
                if list.len() >= max {
                    break;
                }
                if !list.contains(*id) {
                    list.push(*id);
                }
            }
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn send_window_limits_unacked_messages() {
        let mut s = ReliableSend::new(T);
        for i in 0..RELIABLE_SEND_WINDOW {
            assert!(s.has_room());
            assert_eq!(s.push(Opcode::ControlV1, vec![i as u8]), i as u32);
        }
        assert!(!s.has_room());
        assert!(s.ack(3));
        assert!(s.has_room());
        assert!(!s.ack(3), "second ack of the same id changes nothing");
    }

    #[test]
    fn retransmits_with_doubling_backoff_until_acked() {
        let t0 = Instant::now();
        let mut s = ReliableSend::new(T);
        s.push(Opcode::ControlHardResetClientV2, vec![]);
        let d = s.poll_due(t0).expect("first send");
        assert!(!d.retransmit);
        assert!(s.poll_due(t0 + Duration::from_millis(1999)).is_none());
        assert_eq!(s.next_deadline(), Some(t0 + T));
        let d = s.poll_due(t0 + T).expect("first retransmission");
        assert!(d.retransmit);
        assert_eq!(d.id, 0);
        // Timeout doubled: next attempt 4 s after the retransmission.
        assert_eq!(s.next_deadline(), Some(t0 + T + 2 * T));
        assert!(
            s.poll_due(t0 + T + 2 * T - Duration::from_millis(1))
                .is_none()
        );
        assert!(s.poll_due(t0 + 3 * T).is_some());
        s.ack(0);
        assert!(s.is_idle());
        assert!(s.poll_due(t0 + Duration::from_secs(100)).is_none());
        assert_eq!(s.retransmits(), 2);
    }

    #[test]
    fn fast_retransmit_after_three_higher_acks() {
        let t0 = Instant::now();
        let mut s = ReliableSend::new(T);
        for _ in 0..4 {
            s.push(Opcode::ControlV1, vec![]);
        }
        while s.poll_due(t0).is_some() {}
        for id in 1..=3 {
            s.ack(id);
        }
        let d = s
            .poll_due(t0 + Duration::from_millis(10))
            .expect("early resend");
        assert_eq!(d.id, 0);
        assert!(d.retransmit);
    }

    #[test]
    fn receiver_reorders_and_dedups() {
        let mut r = ReliableRecv::new();
        assert_eq!(r.offer(2, Opcode::ControlV1, b"c"), RecvVerdict::New);
        assert_eq!(r.offer(1, Opcode::ControlV1, b"b"), RecvVerdict::New);
        assert!(r.pop().is_none(), "0 missing");
        assert_eq!(r.offer(2, Opcode::ControlV1, b"c"), RecvVerdict::Duplicate);
        assert_eq!(r.offer(0, Opcode::ControlV1, b"a"), RecvVerdict::New);
        let got: Vec<_> = std::iter::from_fn(|| r.pop()).map(|(_, _, p)| p).collect();
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(r.offer(1, Opcode::ControlV1, b"b"), RecvVerdict::Duplicate);
        assert_eq!(
            r.offer(3 + 12, Opcode::ControlV1, b"x"),
            RecvVerdict::OutOfWindow
        );
        assert_eq!(r.offer(3 + 11, Opcode::ControlV1, b"x"), RecvVerdict::New);
    }

    #[test]
    fn acks_are_repeated_from_recent_list() {
        let mut a = AckTracker::new();
        a.owe(0);
        a.owe(0);
        let l = a.take(4, true);
        assert_eq!(l.as_slice(), &[0]);
        assert!(!a.has_owed());
        // A later packet repeats ACK 0 when asked to.
        a.owe(1);
        assert_eq!(a.take(4, true).as_slice(), &[1, 0]);
        assert_eq!(a.take(4, false).as_slice(), &[] as &[u32]);
        for id in 2..12 {
            a.owe(id);
        }
        let l = a.take(8, true);
        assert_eq!(l.len(), 8);
        assert_eq!(l.as_slice()[0], 2, "owed first, in order");
        assert_eq!(a.take(8, false).as_slice(), &[10, 11]);
    }

    /// Two endpoints exchange 50 messages over a link that drops, duplicates and reorders:
    /// everything arrives exactly once, in order.
    #[test]
    fn lossy_link_delivers_in_order() {
        let mut t = Instant::now();
        let mut tx = ReliableSend::new(Duration::from_millis(200));
        let mut rx = ReliableRecv::new();
        let mut acks = AckTracker::new();
        let mut delivered = vec![];
        let mut next_msg = 0u8;
        let mut link: Vec<(u32, Vec<u8>)> = vec![];
        let mut step = 0u64;
        while delivered.len() < 50 && step < 100_000 {
            step += 1;
            while tx.has_room() && next_msg < 50 {
                tx.push(Opcode::ControlV1, vec![next_msg]);
                next_msg += 1;
            }
            while let Some(d) = tx.poll_due(t) {
                link.push((d.id, d.payload.to_vec()));
            }
            // Deterministic impairments: drop every 3rd, duplicate every 5th, reverse order.
            let mut arrived = vec![];
            for (i, m) in link.drain(..).enumerate() {
                if (step as usize + i).is_multiple_of(3) {
                    continue;
                }
                if i % 5 == 0 {
                    arrived.push(m.clone());
                }
                arrived.push(m);
            }
            arrived.reverse();
            for (id, p) in arrived {
                match rx.offer(id, Opcode::ControlV1, &p) {
                    RecvVerdict::New | RecvVerdict::Duplicate => acks.owe(id),
                    RecvVerdict::OutOfWindow => {}
                }
            }
            while let Some((_, _, p)) = rx.pop() {
                delivered.push(p[0]);
            }
            // Every other ACK packet is lost; repetition covers for it.
            let list = acks.take(8, true);
            if step.is_multiple_of(2) {
                for id in list.as_slice() {
                    tx.ack(*id);
                }
            }
            t += Duration::from_millis(50);
        }
        assert_eq!(delivered, (0..50).collect::<Vec<u8>>());
    }
}
