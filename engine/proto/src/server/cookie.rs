//! The stateless HMAC-cookie handshake of a UDP server (as OpenVPN 2.6 does it).
//!
//! The server answers a client's hard reset without creating any state: its session id is
//! `HMAC-SHA256(secret, time slot ‖ client address ‖ client session id)[..8]`. Only when the
//! client's next packet echoes that id (in its ACK block) does the server create a peer. A
//! flood of resets from spoofed addresses therefore costs no memory. Slots are half the
//! hand-window long; the current and the two previous slots are accepted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;

use crate::wire::SessionId;

/// The per-process cookie secret and slot clock.
pub struct CookieJar {
    key: hmac::Key,
    epoch: Instant,
    slot: Duration,
}

impl CookieJar {
    /// A jar with a fresh 32-byte `secret`; slots of `(hand_window + 1) / 2`.
    pub fn new(secret: [u8; 32], epoch: Instant, hand_window: Duration) -> CookieJar {
        CookieJar {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            epoch,
            slot: Duration::from_secs(hand_window.as_secs().div_ceil(2).max(1)),
        }
    }

    fn slot_at(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.epoch).as_secs() / self.slot.as_secs()) as u32
    }

    fn compute(&self, slot: u32, addr: &SocketAddr, client: SessionId) -> SessionId {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&slot.to_be_bytes());
        match addr {
            SocketAddr::V4(a) => ctx.update(&a.ip().octets()),
            SocketAddr::V6(a) => ctx.update(&a.ip().octets()),
        }
        ctx.update(&addr.port().to_be_bytes());
        ctx.update(&client.0);
        let tag = ctx.sign();
        let mut sid = [0u8; 8];
        sid.copy_from_slice(&tag.as_ref()[..8]);
        if sid == [0; 8] {
            sid[0] = 1;
        }
        SessionId(sid)
    }

    /// The server session id to answer `client` at `addr` with.
    pub fn session_id(&self, now: Instant, addr: &SocketAddr, client: SessionId) -> SessionId {
        self.compute(self.slot_at(now), addr, client)
    }

    /// True when `candidate` is a cookie we issued to `client` at `addr` recently.
    pub fn verify(
        &self,
        now: Instant,
        addr: &SocketAddr,
        client: SessionId,
        candidate: SessionId,
    ) -> bool {
        let cur = self.slot_at(now);
        (0..3).any(|back| {
            cur.checked_sub(back).is_some_and(|s| {
                aws_lc_rs::constant_time::verify_slices_are_equal(
                    &self.compute(s, addr, client).0,
                    &candidate.0,
                )
                .is_ok()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_binds_address_client_and_time() {
        let t0 = Instant::now();
        let jar = CookieJar::new([7; 32], t0, Duration::from_secs(60));
        let a: SocketAddr = "198.18.1.2:5000".parse().unwrap();
        let b: SocketAddr = "198.18.1.2:5001".parse().unwrap();
        let c = SessionId([1; 8]);
        let sid = jar.session_id(t0, &a, c);
        assert!(jar.verify(t0, &a, c, sid));
        assert!(!jar.verify(t0, &b, c, sid), "other port");
        assert!(
            !jar.verify(t0, &a, SessionId([2; 8]), sid),
            "other client session"
        );
        assert!(
            jar.verify(t0 + Duration::from_secs(89), &a, c, sid),
            "two slots back"
        );
        assert!(
            !jar.verify(t0 + Duration::from_secs(91), &a, c, sid),
            "expired"
        );
        let other = CookieJar::new([8; 32], t0, Duration::from_secs(60));
        assert!(!other.verify(t0, &a, c, sid), "another secret");
    }
}
