//! The core's randomness: session ids, key-method-2 randoms, cookie secrets, renegotiation
//! jitter, CBC IVs, generated keys.
//!
//! Always the system CSPRNG, except on a thread of the in-process test tier that called
//! [`seed_thread`]: its draws then come from a stream of that seed, so a failing run's
//! random choices can be replayed from the seed it printed. The client and the server run on
//! threads of their own, each seeded, so their choices do not depend on which one happened to
//! draw first. What a seed does not cover: rustls' and aws-lc's own randomness inside the TLS
//! handshake, the data threads (CBC IVs), and thread timing.
//!
//! A seeded stream is predictable by design: only tests call [`seed_thread`] (`cargo xtask
//! tidy` refuses it anywhere else).

use std::cell::Cell;

thread_local! {
    /// This thread's stream position, when seeded.
    static STREAM: Cell<Option<u64>> = const { Cell::new(None) };
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Makes this thread's later draws come from `seed` (tests only; see the module docs).
pub fn seed_thread(seed: u64) {
    STREAM.with(|s| s.set(Some(splitmix(seed))));
}

/// Whether this thread's draws are seeded.
pub fn is_seeded() -> bool {
    STREAM.with(|s| s.get().is_some())
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) {
    let seeded = STREAM.with(|s| {
        let Some(mut x) = s.get() else {
            return false;
        };
        for chunk in buf.chunks_mut(8) {
            x = x.wrapping_add(GOLDEN);
            let v = splitmix(x).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        s.set(Some(x));
        true
    });
    if seeded {
        return;
    }
    // A CSPRNG failure is not recoverable and not caused by input.
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::fill(buf).expect("system random");
}

/// `N` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fill(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(seed: Option<u64>) -> Vec<[u8; 16]> {
        if let Some(s) = seed {
            seed_thread(s);
        }
        (0..3).map(|_| bytes::<16>()).collect()
    }

    #[test]
    fn a_seed_repeats_the_draws_and_only_on_its_thread() {
        let a = draws(Some(42));
        assert!(is_seeded());
        assert_eq!(a, draws(Some(42)), "the same seed repeats its draws");
        assert_ne!(a, draws(Some(43)), "another seed, other values");
        assert_ne!(a[0], a[1]);
        // Another thread is not seeded: system randomness.
        let other = std::thread::spawn(|| (is_seeded(), bytes::<16>()))
            .join()
            .unwrap_or((true, [0; 16]));
        assert!(!other.0);
        assert!(!a.contains(&other.1));
    }
}
