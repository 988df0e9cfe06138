//! OpenVPN's own datagram fragmentation (`--fragment N [mtu]`), UDP only.
//!
//! With `fragment`, every data-channel plaintext starts with a 4-byte big-endian header, inside
//! the encryption and before the compression framing (OpenVPN: compress → fragment → encrypt).
//! Bits 0–1 are the type: whole packet, a fragment that is not the last, the last fragment
//! (type 3, "test", was never implemented). Bits 2–9 carry a per-tunnel sequence id shared by
//! a packet's fragments, bits 10–14 the fragment's index (at most 32 per packet), and in the
//! last fragment bits 15–28 the size of every other fragment divided by 4. Every fragment is
//! sealed on its own with its own packet-id, so the replay window and authentication see each.
//!
//! The receiver reassembles up to 25 packets at once in a window of sequence ids that slides
//! forward (ids older than the window are forgotten) and forgets a partial packet after 10 s,
//! as OpenVPN's `fragment.c` does. Reassembly is bounded: a packet never grows beyond
//! [`MAX_REASSEMBLED`] bytes, whatever sizes and indices a peer claims.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::data::Cipher;
use crate::stage::DropReason;
use crate::wrap::Digest;

/// Bytes the fragment header adds to every data packet.
pub const HEADER_LEN: usize = 4;
/// The header of a packet sent whole.
pub const WHOLE: [u8; HEADER_LEN] = [0; HEADER_LEN];
/// Most fragments one packet is cut into (the index has 5 bits).
pub const MAX_FRAGS: usize = 32;
/// Packets reassembled at once (OpenVPN's `N_FRAG_BUF`).
pub const SLOTS: usize = 25;
/// How long a partial packet waits for its other fragments.
pub const TTL: Duration = Duration::from_secs(10);
/// Largest packet reassembly builds (a framed 64 KiB packet at most).
pub const MAX_REASSEMBLED: usize = 65_536 + 8;
/// Most bytes all partial packets of one tunnel hold together: 25 jumbo (9000-byte) packets
/// fit; a peer claiming 25 packets of 64 KiB does not get 1.6 MiB.
pub const HELD_BUDGET: usize = 256 * 1024;
/// A slot's buffer beyond this size is given back when its packet is done.
const KEEP_CAPACITY: usize = 16 * 1024;

const TYPE_WHOLE: u32 = 0;
const TYPE_NOT_LAST: u32 = 1;
const TYPE_LAST: u32 = 2;
const SEQ_SHIFT: u32 = 2;
const ID_SHIFT: u32 = 10;
const SIZE_SHIFT: u32 = 15;
/// Fragment sizes travel divided by 4, so the size of all but the last is a multiple of 4.
const SIZE_ROUND: usize = 4;

/// `fragment N [mtu]` as written in a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentOption {
    /// N: the most bytes of one UDP datagram's payload (or of its whole IP packet with `mtu`).
    pub max: u16,
    /// `mtu`: N counts the outer IP and UDP headers too.
    pub encap: bool,
}

impl FragmentOption {
    /// The most bytes of framed payload one fragment carries (2.6's `max_fragment_size`) for
    /// `cipher` (with `auth` for CBC) and P_DATA_V2 (`v2`) or V1 headers: N less the data
    /// channel's header and crypto overhead, less the outer IPv6 and UDP headers with `mtu`
    /// (the larger family, so the bound holds for both), less the fragment header. With CBC
    /// the ciphertext is whole blocks with at least one padding byte, and the packet-id is
    /// inside it.
    pub fn payload_max(self, cipher: Cipher, auth: Digest, v2: bool) -> usize {
        let header_len = if v2 { 4 } else { 1 };
        let cbc = !cipher.is_aead();
        // AEAD: packet-id and tag; CBC: IV and HMAC.
        let crypto = if cbc { 16 + auth.len() } else { 4 + 16 };
        let encap = if self.encap { 40 + 8 } else { 0 };
        let target = usize::from(self.max).saturating_sub(header_len + crypto + encap);
        let target = if cbc {
            (target / 16 * 16).saturating_sub(1 + 4)
        } else {
            target
        };
        // Keep at least a small payload per fragment whatever the option says.
        target.saturating_sub(HEADER_LEN).max(64)
    }
}

/// The send side of one tunnel: the fragment size and the sequence id counter.
#[derive(Clone, Debug)]
pub struct Fragmenter {
    /// The most framed payload bytes per data packet (see [`FragmentOption::payload_max`]).
    pub max: usize,
    seq: Arc<AtomicU32>,
}

impl PartialEq for Fragmenter {
    fn eq(&self, other: &Self) -> bool {
        self.max == other.max
    }
}

impl Eq for Fragmenter {}

impl Fragmenter {
    /// A fragmenter for `max`-byte payloads whose sequence ids start at `first_seq` (OpenVPN
    /// starts at a random id so a restarted peer does not collide with stale fragments).
    pub fn new(max: usize, first_seq: u8) -> Fragmenter {
        Fragmenter {
            max: max.max(64),
            seq: Arc::new(AtomicU32::new(u32::from(first_seq))),
        }
    }

    /// Whether a framed payload of `framed_len` bytes must be cut.
    pub fn needs_cutting(&self, framed_len: usize) -> bool {
        framed_len > self.max
    }

    /// Cuts `framed` (a framed packet longer than [`Fragmenter::max`]) into fragments, each
    /// with its header. `None` when it would take more than [`MAX_FRAGS`].
    pub fn cut<'a>(&self, framed: &'a [u8]) -> Option<Pieces<'a>> {
        let size = piece_size(framed.len(), self.max);
        if framed.len() > size * MAX_FRAGS {
            return None;
        }
        let seq = (self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1) & 0xff) as u8;
        Some(Pieces {
            rest: framed,
            size,
            seq,
            next: 0,
        })
    }
}

/// OpenVPN's `optimal_fragment_size`: without changing how many fragments a packet needs,
/// a possibly smaller size (a multiple of 4) so the last fragment is about as big as the rest.
fn piece_size(len: usize, max: usize) -> usize {
    let aligned = max & !(SIZE_ROUND - 1);
    let (div, rem) = (len / aligned, len % aligned);
    if div > 0 && rem > 0 && rem < aligned * 3 / 4 {
        let even = (max - (max - rem) / (div + 1) + SIZE_ROUND - 1) & !(SIZE_ROUND - 1);
        aligned.min(even)
    } else {
        aligned
    }
}

/// The fragments of one packet, in order: (header, piece).
pub struct Pieces<'a> {
    rest: &'a [u8],
    size: usize,
    seq: u8,
    next: u32,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = ([u8; HEADER_LEN], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let last = self.rest.len() <= self.size;
        let (piece, rest) = self.rest.split_at(self.rest.len().min(self.size));
        self.rest = rest;
        let mut h = (u32::from(self.seq) << SEQ_SHIFT) | (self.next << ID_SHIFT);
        h |= if last {
            TYPE_LAST | (((self.size / SIZE_ROUND) as u32 & 0x3fff) << SIZE_SHIFT)
        } else {
            TYPE_NOT_LAST
        };
        self.next += 1;
        Some((h.to_be_bytes(), piece))
    }
}

/// What [`Reassembly::push`] made of one decrypted payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// A whole packet: its framed bytes are at this range of the input.
    Whole(Range<usize>),
    /// A fragment, kept until its packet is complete.
    Held,
    /// The fragment completed its packet: [`Reassembly::take`] hands it out.
    Complete,
}

/// One packet being reassembled.
#[derive(Default)]
struct Slot {
    defined: bool,
    size: usize,
    /// Bit n: fragment n arrived (the last fragment sets all bits from its index up).
    map: u32,
    since: Option<Instant>,
    buf: Vec<u8>,
    len: usize,
}

impl Slot {
    /// Done with this slot's packet: empty, and small again if a big packet grew it.
    fn release(&mut self) {
        self.defined = false;
        self.len = 0;
        self.buf.clear();
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }
}

/// The receive side of one tunnel: fragments waiting for their packets' other fragments.
#[derive(Default)]
pub struct Reassembly {
    slots: Vec<Slot>,
    /// Highest sequence id seen and its slot.
    seq: u8,
    index: usize,
    complete: Option<usize>,
}

impl Reassembly {
    /// Reads the fragment header of a decrypted payload (`buf[range]`). Whole packets are
    /// passed through; fragments are stored. Malformed headers, sizes and overflows are
    /// [`DropReason::BadFragment`].
    pub fn push(
        &mut self,
        buf: &[u8],
        range: Range<usize>,
        now: Instant,
    ) -> Result<Pushed, DropReason> {
        let head = buf
            .get(range.start..range.start + HEADER_LEN)
            .ok_or(DropReason::BadFragment)?;
        let h = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let body = range.start + HEADER_LEN..range.end;
        let seq = ((h >> SEQ_SHIFT) & 0xff) as u8;
        let n = ((h >> ID_SHIFT) & 0x1f) as usize;
        match h & 3 {
            TYPE_WHOLE if seq == 0 && n == 0 => return Ok(Pushed::Whole(body)),
            TYPE_NOT_LAST | TYPE_LAST => {}
            // Spurious bits on a whole packet, or the never-implemented "test" type.
            _ => return Err(DropReason::BadFragment),
        }
        let last = h & 3 == TYPE_LAST;
        let piece = &buf[body];
        let size = if last {
            (((h >> SIZE_SHIFT) & 0x3fff) as usize) * SIZE_ROUND
        } else {
            piece.len()
        };
        if size == 0 || size % SIZE_ROUND != 0 {
            return Err(DropReason::BadFragment);
        }
        let end = n * size + piece.len();
        if end > MAX_REASSEMBLED || (last && piece.len() > size) {
            return Err(DropReason::BadFragment);
        }
        self.expire(now);
        let i = self.slot_for(seq);
        let held: usize = self.slots.iter().map(|s| s.buf.len()).sum();
        let slot = &mut self.slots[i];
        if !slot.defined || slot.size != size {
            let mut buf = std::mem::take(&mut slot.buf);
            buf.clear();
            *slot = Slot {
                defined: true,
                size,
                buf,
                ..Slot::default()
            };
        }
        if end > slot.buf.len() && held - slot.buf.len().min(held) + end > HELD_BUDGET {
            return Err(DropReason::BadFragment);
        }
        if slot.buf.len() < end {
            slot.buf.resize(end, 0);
        }
        slot.buf[n * size..end].copy_from_slice(piece);
        slot.len = slot.len.max(end);
        slot.map |= if last { u32::MAX << n } else { 1 << n };
        slot.since = Some(now);
        if slot.map == u32::MAX {
            slot.defined = false;
            self.complete = Some(i);
            return Ok(Pushed::Complete);
        }
        Ok(Pushed::Held)
    }

    /// Copies the packet the last [`Pushed::Complete`] finished (still framed) to the start
    /// of `out`; returns its length. `None` when there is none or `out` is too small.
    pub fn take_into(&mut self, out: &mut [u8]) -> Option<usize> {
        let slot = self.complete.take().and_then(|i| self.slots.get_mut(i))?;
        let n = slot.len;
        let copied = out.get_mut(..n).map(|o| o.copy_from_slice(&slot.buf[..n]));
        slot.release();
        copied.map(|()| n)
    }

    /// Packets waiting for fragments.
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| s.defined).count()
    }

    /// The slot for `seq`, sliding the window forward (or restarting it) as OpenVPN does.
    fn slot_for(&mut self, seq: u8) -> usize {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, Slot::default);
            self.seq = seq;
            self.index = 0;
        }
        let diff = i32::from(seq.wrapping_sub(self.seq) as i8);
        if diff.unsigned_abs() as usize >= SLOTS {
            self.slots.iter_mut().for_each(Slot::release);
            self.seq = seq;
            self.index = 0;
            return 0;
        }
        for _ in 0..diff.max(0) {
            self.index = (self.index + 1) % SLOTS;
            self.slots[self.index].release();
            self.seq = self.seq.wrapping_add(1);
        }
        let back = diff.min(0).unsigned_abs() as usize;
        (self.index + SLOTS - back) % SLOTS
    }

    /// Forgets partial packets older than [`TTL`].
    fn expire(&mut self, now: Instant) {
        for s in self.slots.iter_mut().filter(|s| s.defined) {
            if s.since
                .is_some_and(|t| now.saturating_duration_since(t) >= TTL)
            {
                s.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// Feeds `pieces` (header ‖ piece each) and returns the reassembled packet, if any.
    fn feed(r: &mut Reassembly, pieces: &[Vec<u8>], now: Instant) -> Option<Vec<u8>> {
        let mut done = None;
        for p in pieces {
            match r.push(p, 0..p.len(), now).expect("valid fragment") {
                Pushed::Complete => {
                    let mut out = vec![0; MAX_REASSEMBLED];
                    let n = r.take_into(&mut out).expect("a complete packet");
                    out.truncate(n);
                    done = Some(out);
                }
                Pushed::Held => {}
                Pushed::Whole(_) => panic!("whole packet among fragments"),
            }
        }
        done
    }

    fn cut(f: &Fragmenter, packet: &[u8]) -> Vec<Vec<u8>> {
        f.cut(packet)
            .expect("fits in 32 fragments")
            .map(|(h, p)| [&h[..], p].concat())
            .collect()
    }

    #[test]
    fn pieces_reassemble_in_any_order() {
        let f = Fragmenter::new(500, 9);
        let now = Instant::now();
        for len in [501, 999, 1000, 1499, 4000, 9002] {
            let packet = framed(len);
            let mut pieces = cut(&f, &packet);
            assert!(pieces.iter().all(|p| p.len() <= 500 + HEADER_LEN));
            let mut r = Reassembly::default();
            assert_eq!(
                feed(&mut r, &pieces, now),
                Some(packet.clone()),
                "len {len}"
            );
            pieces.reverse();
            let mut r = Reassembly::default();
            assert_eq!(
                feed(&mut r, &pieces, now),
                Some(packet),
                "reversed, len {len}"
            );
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn the_header_is_openvpns() {
        // 1000 bytes at 500: optimal size 500, two fragments, sequence id 10 (9 + 1).
        let f = Fragmenter::new(500, 9);
        let packet = framed(1000);
        let heads: Vec<u32> = f
            .cut(&packet)
            .expect("cut")
            .map(|(h, _)| u32::from_be_bytes(h))
            .collect();
        assert_eq!(
            heads,
            vec![1 | (10 << 2), 2 | (10 << 2) | (1 << 10) | (125 << 15)]
        );
        // A 1100-byte packet at 500 takes three; the sizes even out (368, 368, 364).
        let sizes: Vec<usize> = f
            .cut(&framed(1100))
            .expect("cut")
            .map(|(_, p)| p.len())
            .collect();
        assert_eq!(sizes, vec![368, 368, 364]);
        assert!(f.cut(&framed(500 * 33)).is_none(), "more than 32 fragments");
    }

    #[test]
    fn whole_packets_pass_and_spurious_bits_are_refused() {
        let mut r = Reassembly::default();
        let now = Instant::now();
        let p = [0, 0, 0, 0, 0x45, 1, 2];
        assert_eq!(r.push(&p, 0..7, now), Ok(Pushed::Whole(4..7)));
        for bad in [[0, 0, 0, 4], [0, 0, 0, 3], [0, 0, 4, 0]] {
            assert_eq!(r.push(&bad, 0..4, now), Err(DropReason::BadFragment));
        }
        assert_eq!(r.push(&[0, 0], 0..2, now), Err(DropReason::BadFragment));
    }

    #[test]
    fn hostile_sizes_and_indices_stay_bounded() {
        let mut r = Reassembly::default();
        let now = Instant::now();
        // Last fragment, index 31, claimed size 0x3fff*4: would land 2 MB in.
        let h = 2 | (31 << 10) | (0x3fff << 15);
        let mut p = u32::to_be_bytes(h).to_vec();
        p.extend_from_slice(&[1; 100]);
        assert_eq!(r.push(&p, 0..p.len(), now), Err(DropReason::BadFragment));
        // A last fragment bigger than the size it announces.
        let h = 2u32 | (1 << 15);
        let mut p = h.to_be_bytes().to_vec();
        p.extend_from_slice(&[1; 100]);
        assert_eq!(r.push(&p, 0..p.len(), now), Err(DropReason::BadFragment));
        // A size that is not a multiple of 4 in a non-last fragment.
        let mut p = 1u32.to_be_bytes().to_vec();
        p.extend_from_slice(&[1; 101]);
        assert_eq!(r.push(&p, 0..p.len(), now), Err(DropReason::BadFragment));
        // Many sequence ids, each with one fragment: never more than 25 held.
        for seq in 0..1000u32 {
            let mut p = (1 | ((seq & 0xff) << 2)).to_be_bytes().to_vec();
            p.extend_from_slice(&[7; 1000]);
            assert_eq!(r.push(&p, 0..p.len(), now), Ok(Pushed::Held));
        }
        assert!(r.pending() <= SLOTS);
        assert!(r.slots.iter().map(|s| s.buf.capacity()).sum::<usize>() <= SLOTS * 2000);
        // 25 packets of 60 KiB claimed: the held bytes stay within the budget.
        let mut r = Reassembly::default();
        let mut refused = 0;
        for seq in 0..25u32 {
            let h = 2 | (seq << 2) | (15 << 10) | ((4000 / 4) << 15);
            let mut p = h.to_be_bytes().to_vec();
            p.extend_from_slice(&[7; 4000]);
            if r.push(&p, 0..p.len(), now) == Err(DropReason::BadFragment) {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert!(r.slots.iter().map(|s| s.buf.len()).sum::<usize>() <= HELD_BUDGET);
    }

    #[test]
    fn partial_packets_expire_and_old_ids_slide_out() {
        let f = Fragmenter::new(400, 0);
        let now = Instant::now();
        let mut r = Reassembly::default();
        let first = cut(&f, &framed(1000));
        feed(&mut r, &first[..1], now);
        assert_eq!(r.pending(), 1);
        // Its other fragments come after the TTL: the first is forgotten, so no packet.
        let later = now + TTL + Duration::from_secs(1);
        assert_eq!(feed(&mut r, &first[1..], later), None);
        // 30 later packets each leave one fragment: the window holds the newest 25 only.
        let mut r = Reassembly::default();
        for _ in 0..30 {
            let p = cut(&f, &framed(1000));
            feed(&mut r, &p[..1], now);
        }
        assert_eq!(r.pending(), SLOTS);
        // Interleaved packets (two in flight) still complete.
        let a = cut(&f, &framed(1200));
        let b = cut(&f, &framed(900));
        let mut r = Reassembly::default();
        assert_eq!(feed(&mut r, &[a[0].clone(), b[0].clone()], now), None);
        assert_eq!(feed(&mut r, &b[1..], now), Some(framed(900)));
        assert_eq!(feed(&mut r, &a[1..], now), Some(framed(1200)));
    }

    #[test]
    fn payload_max_matches_2_6() {
        let frag = |max, encap| FragmentOption { max, encap };
        let gcm = Cipher::Aes256Gcm;
        // AEAD with peer-id: 1300 − (4 + 4 + 16) − 4 = 1272.
        assert_eq!(frag(1300, false).payload_max(gcm, Digest::Sha1, true), 1272);
        // `mtu`: the outer IPv6 + UDP headers count too.
        assert_eq!(frag(1300, true).payload_max(gcm, Digest::Sha1, true), 1224);
        // CBC/SHA1: 1300 − (1 + 16 + 20) = 1263 → 1248 in blocks, − 1 padding − 4 pid − 4.
        let cbc = Cipher::Aes256Cbc;
        assert_eq!(
            frag(1300, false).payload_max(cbc, Digest::Sha1, false),
            1239
        );
    }
}
