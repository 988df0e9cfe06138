//! Turns for receive threads that share one socket: batches are received one at a time,
//! each with a ticket, decrypted in parallel, and delivered in ticket order.
//!
//! Why: a client has one peer behind one connected socket, so a second receive thread can
//! only help by decrypting one batch while another is decrypted or written to the tun
//! device. Delivering batches as they finish would reorder a TCP flow's segments (the
//! receiver's duplicate ACKs then make the sender retransmit), and the replay window would
//! see packet-ids out of order. So receiving and delivering keep arrival order — the ticket
//! is drawn while holding the socket — and only the decryption in between runs side by
//! side (as wireguard-go's per-peer in-order queues do).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// The ticket dispenser and the ticket being served.
#[derive(Default)]
pub struct Turns {
    /// The next ticket; held while receiving, so tickets follow arrival order.
    next: Mutex<u64>,
    /// The ticket whose batch may be delivered now.
    serving: AtomicU64,
    /// Sleepers wait here for `serving` to reach their ticket.
    sleep: Mutex<()>,
    wake: Condvar,
}

impl Turns {
    /// No tickets drawn yet.
    pub fn new() -> Turns {
        Turns::default()
    }

    /// Runs `receive` holding the dispenser; a ticket comes with what it received when
    /// `got` says the batch has packets (an empty receive draws none, so no turn is left
    /// unserved).
    pub fn receive<T>(
        &self,
        receive: impl FnOnce() -> T,
        got: impl FnOnce(&T) -> bool,
    ) -> (T, Option<u64>) {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let r = receive();
        if !got(&r) {
            return (r, None);
        }
        let ticket = *next;
        *next += 1;
        (r, Some(ticket))
    }

    /// Waits until `ticket` is served. False when `stop` was set meanwhile (the thread
    /// then leaves without delivering; the others are stopping too).
    ///
    /// It sleeps at once rather than spinning: measured on two cores shared with the peer
    /// and the load, spinning took CPU time the thread delivering the turn needed.
    pub fn wait(&self, ticket: u64, stop: &AtomicBool) -> bool {
        if self.serving.load(Ordering::Acquire) == ticket {
            return true;
        }
        let mut guard = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
        while self.serving.load(Ordering::Acquire) != ticket {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            guard = self
                .wake
                .wait_timeout(guard, Duration::from_millis(10))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// `ticket`'s batch is delivered: the next one's turn.
    pub fn done(&self, ticket: u64) {
        let _guard = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
        self.serving.store(ticket + 1, Ordering::Release);
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Three threads draw tickets for interleaved "batches", finish their work in scrambled
    /// order, and still deliver strictly in ticket order; an empty receive draws no ticket.
    #[test]
    fn batches_are_delivered_in_the_order_they_were_received() {
        let turns = Arc::new(Turns::new());
        let stop = Arc::new(AtomicBool::new(false));
        let source = Arc::new(AtomicU64::new(0));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..3u64)
            .map(|t| {
                let (turns, stop, source, delivered) = (
                    Arc::clone(&turns),
                    Arc::clone(&stop),
                    Arc::clone(&source),
                    Arc::clone(&delivered),
                );
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let (batch, ticket) =
                            turns.receive(|| source.fetch_add(1, Ordering::Relaxed), |_| true);
                        let (_, none) = turns.receive(|| 0, |_| false);
                        assert_eq!(none, None, "an empty receive draws no ticket");
                        let ticket = ticket.expect("a ticket");
                        // Uneven work: "decryption" takes longer on some threads.
                        if (i + t) % 3 == 0 {
                            std::thread::sleep(Duration::from_micros(50 * (t + 1)));
                        }
                        assert!(turns.wait(ticket, &stop));
                        delivered.lock().unwrap().push(batch);
                        turns.done(ticket);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let d = delivered.lock().unwrap();
        assert_eq!(d.len(), 600);
        assert!(
            d.windows(2).all(|w| w[0] + 1 == w[1]),
            "out of order: {d:?}"
        );
    }

    /// A thread waiting for a turn that never comes leaves when the engine stops.
    #[test]
    fn a_waiter_leaves_when_stopped() {
        let turns = Turns::new();
        let stop = AtomicBool::new(true);
        assert!(!turns.wait(5, &stop));
        assert!(turns.wait(0, &stop), "ticket 0 is served from the start");
    }
}
