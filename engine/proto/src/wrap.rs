//! Control-channel wrapping: none, `tls-auth` (HMAC firewall) or `tls-crypt` (v1).
//!
//! The wrap turns a plain control packet (see [`crate::wire::ControlPacket`]) into wire bytes
//! and back. The first 9 bytes (opcode/key-id, session id) always stay in clear.
//!
//! ```text
//! tls-auth:  hdr(9) | HMAC(H) | pid(4) time(4) | ack block, msg id, payload
//!            HMAC over pid ‖ time ‖ hdr ‖ rest
//! tls-crypt: hdr(9) | pid(4) time(4) | tag(32) | AES-256-CTR(ack block, msg id, payload)
//!            tag = HMAC-SHA256(hdr ‖ pid ‖ time ‖ plaintext), CTR IV = tag[..16]
//! ```

use std::time::Instant;

use aws_lc_rs::cipher::{
    AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;

use crate::packet_id::{LongPacketIdSend, LongReplayWindow};
use crate::stage::DropReason;
use crate::static_key::{Key2, KeyDirection};
use crate::wire::CONTROL_HEADER_LEN;

/// HMAC digest used by `tls-auth` (`--auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    /// SHA1 (the OpenVPN default).
    Sha1,
    /// SHA224.
    Sha224,
    /// SHA256.
    Sha256,
    /// SHA384.
    Sha384,
    /// SHA512.
    Sha512,
}

impl Digest {
    /// OpenVPN's name.
    pub fn name(self) -> &'static str {
        match self {
            Digest::Sha1 => "SHA1",
            Digest::Sha224 => "SHA224",
            Digest::Sha256 => "SHA256",
            Digest::Sha384 => "SHA384",
            Digest::Sha512 => "SHA512",
        }
    }

    /// Parses an OpenVPN digest name (`SHA1`, `SHA256`, …; case-insensitive).
    pub fn from_name(name: &str) -> Option<Digest> {
        Some(match name.to_ascii_uppercase().replace('-', "").as_str() {
            "SHA1" => Digest::Sha1,
            "SHA224" => Digest::Sha224,
            "SHA256" => Digest::Sha256,
            "SHA384" => Digest::Sha384,
            "SHA512" => Digest::Sha512,
            _ => return None,
        })
    }

    /// Output length in bytes.
    pub fn len(self) -> usize {
        match self {
            Digest::Sha1 => 20,
            Digest::Sha224 => 28,
            Digest::Sha256 => 32,
            Digest::Sha384 => 48,
            Digest::Sha512 => 64,
        }
    }

    /// Never empty; for clippy.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The aws-lc-rs HMAC algorithm.
    pub fn algorithm(self) -> hmac::Algorithm {
        match self {
            Digest::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Digest::Sha224 => hmac::HMAC_SHA224,
            Digest::Sha256 => hmac::HMAC_SHA256,
            Digest::Sha384 => hmac::HMAC_SHA384,
            Digest::Sha512 => hmac::HMAC_SHA512,
        }
    }
}

/// Which wrap a config asks for (the key material, not yet bound to a role).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WrapConfig {
    /// No wrapping.
    None,
    /// `tls-auth KEY [direction]` with the `--auth` digest.
    Auth {
        /// The static key.
        key: Key2,
        /// Direction (absent = bidirectional).
        direction: KeyDirection,
        /// HMAC digest.
        digest: Digest,
    },
    /// `tls-crypt KEY`; directions are fixed by role.
    Crypt {
        /// The static key.
        key: Key2,
    },
    /// `tls-crypt-v2 CLIENT-KEY` (client): tls-crypt with the client's own key, and its
    /// wrapped copy appended to the packets that carry it (the first reset).
    CryptV2Client {
        /// The client's key and WKc.
        key: crate::tls_crypt_v2::ClientKey,
    },
    /// `tls-crypt-v2 SERVER-KEY` (server): each client's key comes out of its WKc; the
    /// session's wrap is then a [`WrapConfig::Crypt`] with that key.
    CryptV2Server {
        /// The server key.
        key: crate::tls_crypt_v2::ServerKey,
    },
}

// Both keyed variants are large; one per session, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Inner {
    None,
    /// tls-crypt-v2 server before a client key is known: every packet is refused.
    Reject,
    Auth {
        send: hmac::Key,
        recv: hmac::Key,
        len: usize,
    },
    Crypt {
        send_enc: EncryptingKey,
        send_auth: hmac::Key,
        recv_dec: DecryptingKey,
        recv_auth: hmac::Key,
    },
}

/// A bound wrap with its replay state: one per control-channel session.
pub struct TlsWrap {
    inner: Inner,
    send_pid: LongPacketIdSend,
    replay: LongReplayWindow,
    /// tls-crypt-v2 client: the WKc appended to `P_CONTROL_HARD_RESET_CLIENT_V3`.
    wkc: Option<Vec<u8>>,
}

const PID_LEN: usize = 8;
const CRYPT_TAG_LEN: usize = 32;

impl TlsWrap {
    /// Binds `config` for a client (`is_server = false`) or server. `unix_time` seeds the time
    /// field of the outgoing replay ids.
    pub fn new(config: &WrapConfig, is_server: bool, unix_time: u32) -> TlsWrap {
        let inner = match config {
            WrapConfig::None => Inner::None,
            WrapConfig::Auth {
                key,
                direction,
                digest,
            } => {
                let alg = digest.algorithm();
                Inner::Auth {
                    send: hmac::Key::new(alg, &key.hmac(direction.send_index())[..digest.len()]),
                    recv: hmac::Key::new(alg, &key.hmac(direction.recv_index())[..digest.len()]),
                    len: digest.len(),
                }
            }
            WrapConfig::CryptV2Client { key } => {
                return TlsWrap {
                    wkc: Some(key.wkc.clone()),
                    ..TlsWrap::new(
                        &WrapConfig::Crypt {
                            key: key.kc.clone(),
                        },
                        is_server,
                        unix_time,
                    )
                };
            }
            // The server-wide wrap of tls-crypt-v2 unwraps nothing by itself: sessions get
            // their client's key from its WKc.
            WrapConfig::CryptV2Server { .. } => Inner::Reject,
            WrapConfig::Crypt { key } => {
                // tls-crypt directions are fixed: server NORMAL, client INVERSE.
                let dir = if is_server {
                    KeyDirection::Normal
                } else {
                    KeyDirection::Inverse
                };
                let (s, r) = (dir.send_index(), dir.recv_index());
                Inner::Crypt {
                    send_enc: ctr_encrypting(&key.cipher(s)[..32]),
                    send_auth: hmac::Key::new(hmac::HMAC_SHA256, &key.hmac(s)[..32]),
                    recv_dec: ctr_decrypting(&key.cipher(r)[..32]),
                    recv_auth: hmac::Key::new(hmac::HMAC_SHA256, &key.hmac(r)[..32]),
                }
            }
        };
        TlsWrap {
            inner,
            send_pid: LongPacketIdSend::new(unix_time),
            replay: LongReplayWindow::default(),
            wkc: None,
        }
    }

    /// True for a tls-crypt-v2 client wrap (its first reset is `..._CLIENT_V3`).
    pub fn has_wkc(&self) -> bool {
        self.wkc.is_some()
    }

    /// Bytes the wrap adds to a plain control packet.
    pub fn overhead(&self) -> usize {
        match &self.inner {
            Inner::None | Inner::Reject => 0,
            Inner::Auth { len, .. } => len + PID_LEN,
            Inner::Crypt { .. } => PID_LEN + CRYPT_TAG_LEN,
        }
    }

    /// True when a wrap is configured.
    pub fn is_wrapped(&self) -> bool {
        !matches!(self.inner, Inner::None)
    }

    /// Continue the outgoing replay ids after `id` (used by a cookie-validating server).
    pub fn set_send_pid(&mut self, id: u32) {
        self.send_pid.set_last(id);
    }

    /// The time field of our outgoing replay ids.
    pub fn send_time(&self) -> u32 {
        self.send_pid.time()
    }

    /// Wraps a plain control packet, appending the wire form to `out`.
    pub fn wrap(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), DropReason> {
        let (id, time) = if self.is_wrapped() {
            self.send_pid
                .next_id()
                .ok_or(DropReason::PacketIdExhausted)?
        } else {
            (0, 0)
        };
        self.wrap_with_pid(plain, out, id, time)
    }

    /// Wraps with an explicit replay id and time, leaving the counter alone (the stateless
    /// reset of a cookie server always uses id 1).
    pub fn wrap_with_pid(
        &self,
        plain: &[u8],
        out: &mut Vec<u8>,
        id: u32,
        time: u32,
    ) -> Result<(), DropReason> {
        if plain.len() < CONTROL_HEADER_LEN {
            return Err(DropReason::Malformed);
        }
        let (hdr, rest) = plain.split_at(CONTROL_HEADER_LEN);
        match &self.inner {
            Inner::None => out.extend_from_slice(plain),
            Inner::Reject => return Err(DropReason::BadHmac),
            Inner::Auth { send, len, .. } => {
                let mut pid = [0u8; PID_LEN];
                pid[..4].copy_from_slice(&id.to_be_bytes());
                pid[4..].copy_from_slice(&time.to_be_bytes());
                let mut ctx = hmac::Context::with_key(send);
                ctx.update(&pid);
                ctx.update(hdr);
                ctx.update(rest);
                let tag = ctx.sign();
                out.extend_from_slice(hdr);
                out.extend_from_slice(&tag.as_ref()[..*len]);
                out.extend_from_slice(&pid);
                out.extend_from_slice(rest);
            }
            Inner::Crypt {
                send_enc,
                send_auth,
                ..
            } => {
                let start = out.len();
                out.extend_from_slice(hdr);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&time.to_be_bytes());
                let mut ctx = hmac::Context::with_key(send_auth);
                ctx.update(&out[start..]);
                ctx.update(rest);
                let tag = ctx.sign();
                out.extend_from_slice(tag.as_ref());
                let ct_start = out.len();
                out.extend_from_slice(rest);
                let iv = ctr_iv(tag.as_ref());
                send_enc
                    .less_safe_encrypt(
                        &mut out[ct_start..],
                        EncryptionContext::Iv128(FixedLength::from(iv)),
                    )
                    .map_err(|_| DropReason::Malformed)?;
                // tls-crypt-v2: the first reset (and a WKC_V1 packet) carry the wrapped
                // client key in clear behind the wrapped packet.
                let op = hdr[0] >> 3;
                if let Some(wkc) = &self.wkc
                    && (op == crate::wire::Opcode::ControlHardResetClientV3 as u8
                        || op == crate::wire::Opcode::ControlWkcV1 as u8)
                {
                    out.extend_from_slice(wkc);
                }
            }
        }
        Ok(())
    }

    /// Verifies and unwraps a wire control packet into `plain` (cleared first), without
    /// touching the replay state. Returns the wrap's `(id, time)` for
    /// [`TlsWrap::check_replay`], or `None` when no wrap is configured.
    pub fn unwrap(
        &self,
        wire: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<Option<(u32, u32)>, DropReason> {
        plain.clear();
        if wire.len() < CONTROL_HEADER_LEN {
            return Err(DropReason::Malformed);
        }
        let (hdr, rest) = wire.split_at(CONTROL_HEADER_LEN);
        match &self.inner {
            Inner::None => {
                plain.extend_from_slice(wire);
                Ok(None)
            }
            Inner::Reject => Err(DropReason::BadHmac),
            Inner::Auth { recv, len, .. } => {
                if rest.len() < len + PID_LEN {
                    return Err(DropReason::Malformed);
                }
                let (tag, rest) = rest.split_at(*len);
                let (pid, rest) = rest.split_at(PID_LEN);
                let mut ctx = hmac::Context::with_key(recv);
                ctx.update(pid);
                ctx.update(hdr);
                ctx.update(rest);
                let expect = ctx.sign();
                verify_slices_are_equal(&expect.as_ref()[..*len], tag)
                    .map_err(|_| DropReason::BadHmac)?;
                plain.extend_from_slice(hdr);
                plain.extend_from_slice(rest);
                Ok(Some(split_pid(pid)))
            }
            Inner::Crypt {
                recv_dec,
                recv_auth,
                ..
            } => {
                if rest.len() < PID_LEN + CRYPT_TAG_LEN {
                    return Err(DropReason::Malformed);
                }
                let (pid, rest) = rest.split_at(PID_LEN);
                let (tag, ct) = rest.split_at(CRYPT_TAG_LEN);
                plain.extend_from_slice(hdr);
                plain.extend_from_slice(ct);
                let iv = ctr_iv(tag);
                recv_dec
                    .decrypt(
                        &mut plain[CONTROL_HEADER_LEN..],
                        DecryptionContext::Iv128(FixedLength::from(iv)),
                    )
                    .map_err(|_| DropReason::Malformed)?;
                let mut ctx = hmac::Context::with_key(recv_auth);
                ctx.update(hdr);
                ctx.update(pid);
                ctx.update(&plain[CONTROL_HEADER_LEN..]);
                let expect = ctx.sign();
                if verify_slices_are_equal(expect.as_ref(), tag).is_err() {
                    plain.clear();
                    return Err(DropReason::BadHmac);
                }
                Ok(Some(split_pid(pid)))
            }
        }
    }

    /// Replay check of an unwrapped packet's `(id, time)`; records it when accepted.
    pub fn check_replay(
        &mut self,
        pid: Option<(u32, u32)>,
        now: Instant,
    ) -> Result<(), DropReason> {
        if let Some((id, time)) = pid {
            self.replay.check(id, time, now)?;
            self.replay.update(id, time, now);
        }
        Ok(())
    }
}

fn split_pid(pid: &[u8]) -> (u32, u32) {
    let id = u32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]);
    let time = u32::from_be_bytes([pid[4], pid[5], pid[6], pid[7]]);
    (id, time)
}

fn ctr_iv(tag: &[u8]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&tag[..16]);
    iv
}

// The key lengths are fixed (32 bytes sliced from a 64-byte slot), so key construction cannot
// fail; a failure would be a bug in aws-lc-rs, not bad input.
#[allow(clippy::expect_used)]
fn ctr_encrypting(key: &[u8]) -> EncryptingKey {
    EncryptingKey::ctr(UnboundCipherKey::new(&AES_256, key).expect("32-byte AES key"))
        .expect("AES-256-CTR")
}

#[allow(clippy::expect_used)]
fn ctr_decrypting(key: &[u8]) -> DecryptingKey {
    DecryptingKey::ctr(UnboundCipherKey::new(&AES_256, key).expect("32-byte AES key"))
        .expect("AES-256-CTR")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AckList, ControlPacket, Opcode, SessionId};

    fn key() -> Key2 {
        let mut k = [0u8; 256];
        for (i, b) in k.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        Key2(k)
    }

    fn plain_packet() -> Vec<u8> {
        let mut acks = AckList::new();
        acks.push(0);
        let p = ControlPacket {
            opcode: Opcode::ControlV1,
            key_id: 0,
            session_id: SessionId([5; 8]),
            acks,
            remote_session_id: Some(SessionId([6; 8])),
            message_id: Some(1),
            payload: b"client hello bytes",
        };
        let mut v = vec![];
        p.emit(&mut v);
        v
    }

    fn configs() -> Vec<(WrapConfig, WrapConfig)> {
        vec![
            (WrapConfig::None, WrapConfig::None),
            (
                WrapConfig::Auth {
                    key: key(),
                    direction: KeyDirection::Inverse,
                    digest: Digest::Sha1,
                },
                WrapConfig::Auth {
                    key: key(),
                    direction: KeyDirection::Normal,
                    digest: Digest::Sha1,
                },
            ),
            (
                WrapConfig::Auth {
                    key: key(),
                    direction: KeyDirection::Bidirectional,
                    digest: Digest::Sha512,
                },
                WrapConfig::Auth {
                    key: key(),
                    direction: KeyDirection::Bidirectional,
                    digest: Digest::Sha512,
                },
            ),
            (
                WrapConfig::Crypt { key: key() },
                WrapConfig::Crypt { key: key() },
            ),
        ]
    }

    #[test]
    fn client_to_server_round_trip() {
        for (c, s) in configs() {
            let mut client = TlsWrap::new(&c, false, 1000);
            let mut server = TlsWrap::new(&s, true, 2000);
            let plain = plain_packet();
            let mut wire = vec![];
            client.wrap(&plain, &mut wire).expect("wraps");
            assert_eq!(wire.len(), plain.len() + client.overhead());
            assert_eq!(&wire[..9], &plain[..9], "header stays in clear");
            let mut out = vec![];
            let pid = server.unwrap(&wire, &mut out).expect("unwraps");
            assert_eq!(out, plain, "{c:?}");
            let now = Instant::now();
            server.check_replay(pid, now).expect("fresh");
            if server.is_wrapped() {
                assert_eq!(server.check_replay(pid, now), Err(DropReason::Replay));
            }
            // And back.
            let mut wire2 = vec![];
            server.wrap(&plain, &mut wire2).expect("wraps");
            client.unwrap(&wire2, &mut out).expect("unwraps");
            assert_eq!(out, plain);
        }
    }

    #[test]
    fn tls_crypt_hides_payload() {
        let mut client = TlsWrap::new(&WrapConfig::Crypt { key: key() }, false, 1);
        let mut wire = vec![];
        let plain = plain_packet();
        client.wrap(&plain, &mut wire).expect("wraps");
        let needle = b"client hello";
        assert!(!wire.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn any_flipped_bit_is_rejected() {
        for (c, s) in configs().into_iter().skip(1) {
            let mut client = TlsWrap::new(&c, false, 1000);
            let server = TlsWrap::new(&s, true, 2000);
            let mut wire = vec![];
            client.wrap(&plain_packet(), &mut wire).expect("wraps");
            for i in 0..wire.len() {
                let mut bad = wire.clone();
                bad[i] ^= 0x01;
                let mut out = vec![];
                assert!(server.unwrap(&bad, &mut out).is_err(), "byte {i} of {c:?}");
            }
            let mut out = vec![];
            for cut in 0..wire.len() {
                assert!(server.unwrap(&wire[..cut], &mut out).is_err());
            }
        }
    }

    #[test]
    fn wrong_direction_fails() {
        let mut a = TlsWrap::new(
            &WrapConfig::Auth {
                key: key(),
                direction: KeyDirection::Normal,
                digest: Digest::Sha256,
            },
            false,
            1,
        );
        let b = TlsWrap::new(
            &WrapConfig::Auth {
                key: key(),
                direction: KeyDirection::Normal,
                digest: Digest::Sha256,
            },
            true,
            1,
        );
        let mut wire = vec![];
        a.wrap(&plain_packet(), &mut wire).expect("wraps");
        let mut out = vec![];
        assert_eq!(b.unwrap(&wire, &mut out), Err(DropReason::BadHmac));
    }
}
