//! The channel from the data path (and helper threads) to the control thread, bounded.
//!
//! Control packets arrive before anybody is authenticated, so a hostile sender decides how
//! many there are. The queue holds at most [`MAX_INPUTS`] inputs and [`MAX_BYTES`] bytes of
//! packets; beyond that the receive thread drops the packet and counts it (`queue_full` at
//! socket_rx) instead of copying it, and never blocks. Hints that recur by themselves (a
//! float, an exit notification) are dropped silently when the queue is full; events that
//! must arrive (a closed connection, an authentication verdict) wait for room — they come
//! from threads that may wait, and there are at most as many as connections or peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use tunscope_proto::server::PeerAddr;
use tunscope_proto::stage::DropReason;

use super::ControlInput;

/// Inputs the queue holds at most.
pub const MAX_INPUTS: usize = 4096;
/// Bytes of queued control packets at most (a TCP record can be 64 KiB).
pub const MAX_BYTES: usize = 4 << 20;
/// How long an event waits for room in a full queue.
const EVENT_WAIT: Duration = Duration::from_secs(2);

/// A bounded channel to a control thread: the sending and the receiving end.
pub fn control_channel() -> (ControlSender, ControlQueue) {
    let (tx, rx) = std::sync::mpsc::sync_channel(MAX_INPUTS);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        ControlSender {
            tx,
            bytes: Arc::clone(&bytes),
        },
        ControlQueue { rx, bytes },
    )
}

/// The sending end (cloned into every thread that talks to the control thread).
#[derive(Clone)]
pub struct ControlSender {
    tx: SyncSender<ControlInput>,
    bytes: Arc<AtomicUsize>,
}

impl ControlSender {
    /// Queues a control packet, or refuses it: `TooBig` beyond the largest control packet
    /// there is (a 64 KiB TCP record never takes queue room from real handshakes), and
    /// `QueueFull` when the queue is at its bound. Never blocks.
    pub fn packet(&self, from: PeerAddr, packet: &[u8]) -> Result<(), DropReason> {
        let len = packet.len();
        if len > tunscope_proto::consts::MAX_CONTROL_PACKET {
            return Err(DropReason::TooBig);
        }
        if self.bytes.fetch_add(len, Ordering::AcqRel) + len > MAX_BYTES {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(DropReason::QueueFull);
        }
        let input = ControlInput::Packet {
            from,
            packet: packet.to_vec(),
        };
        match self.tx.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.bytes.fetch_sub(len, Ordering::AcqRel);
                Err(DropReason::QueueFull)
            }
        }
    }

    /// Queues a hint that the data path repeats by itself if it is lost (float, exit).
    pub fn hint(&self, input: ControlInput) {
        let _ = self.tx.try_send(input);
    }

    /// Queues an event that must arrive (a closed connection, a verdict), waiting for room
    /// — up to [`EVENT_WAIT`], so that a thread stopping while the control thread is gone
    /// does not wait forever. (A verdict lost that way times out like a slow one.)
    pub fn event(&self, mut input: ControlInput) {
        let deadline = std::time::Instant::now() + EVENT_WAIT;
        loop {
            match self.tx.try_send(input) {
                Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                    input = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                _ => return,
            }
        }
    }
}

/// The receiving end, on the control thread.
pub struct ControlQueue {
    rx: Receiver<ControlInput>,
    bytes: Arc<AtomicUsize>,
}

impl ControlQueue {
    fn taken(&self, input: ControlInput) -> ControlInput {
        if let ControlInput::Packet { packet, .. } = &input {
            self.bytes.fetch_sub(packet.len(), Ordering::AcqRel);
        }
        input
    }

    /// The next input, waiting up to `wait`.
    pub fn recv_timeout(&self, wait: Duration) -> Result<ControlInput, RecvTimeoutError> {
        self.rx.recv_timeout(wait).map(|i| self.taken(i))
    }

    /// The next input if one is queued.
    pub fn try_recv(&self) -> Option<ControlInput> {
        self.rx.try_recv().ok().map(|i| self.taken(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_bounded_in_inputs_and_bytes_and_the_queue_recovers() {
        let (tx, rx) = control_channel();
        let from = PeerAddr::Tcp(1);
        let big = vec![0u8; tunscope_proto::consts::MAX_CONTROL_PACKET];
        let queued = (0..2000).filter(|_| tx.packet(from, &big).is_ok()).count();
        assert_eq!(queued, MAX_BYTES / big.len(), "bounded by bytes");
        assert_eq!(tx.packet(from, &[1]), Err(DropReason::QueueFull));
        let jumbo = vec![0x38; tunscope_proto::consts::MAX_CONTROL_PACKET + 1];
        assert_eq!(tx.packet(from, &jumbo), Err(DropReason::TooBig));
        while rx.try_recv().is_some() {}
        let small = (0..2 * MAX_INPUTS)
            .filter(|_| tx.packet(from, &[0x20; 100]).is_ok())
            .count();
        assert_eq!(small, MAX_INPUTS, "bounded by inputs");
        while rx.try_recv().is_some() {}
        assert!(tx.packet(from, &big).is_ok(), "room again once drained");
    }
}
