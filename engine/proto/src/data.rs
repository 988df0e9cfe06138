//! The data channel: AEAD keys, packet sealing and opening, replay checks, compression stub
//! framing, keepalive pings and OCC messages.
//!
//! Older servers (OpenVPN 2.3/2.4 era) use the non-AEAD format instead: AES-CBC with an HMAC
//! over IV and ciphertext (encrypt-then-MAC); the packet-id travels inside the ciphertext:
//!
//! ```text
//! P_DATA_V2: op/key-id (1) | peer-id (3) | HMAC (auth digest) | IV (16) | CBC(packet-id ‖ payload ‖ PKCS#7)
//! ```
//!
//! Wire layout of an AEAD data packet (OpenVPN 2.6):
//!
//! ```text
//! P_DATA_V2: op/key-id (1) | peer-id (3) | packet-id (4) | tag (16) | ciphertext
//! P_DATA_V1: op/key-id (1) |               packet-id (4) | tag (16) | ciphertext
//! nonce = packet-id ‖ implicit IV (8);  AAD = header ‖ packet-id (V2) or packet-id (V1)
//! ```
//!
//! This is the hot path: nothing here allocates per packet. Sealing writes into a caller's
//! buffer; opening works in place and returns the plaintext range.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aws_lc_rs::aead::{
    AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey,
};

use crate::compress::{MAX_INFLATED, lz4_decompress, lzo1x_decompress};
use crate::consts::{
    AEAD_TAG_LEN, COMP_V2_ESCAPE, COMP_V2_LZ4_BYTE, IMPLICIT_IV_LEN, KEY2_LEN, LZ4_COMPRESS_BYTE,
    LZO_COMPRESS_BYTE, NO_COMPRESS_BYTE, NO_COMPRESS_BYTE_SWAP, OCC_MAGIC, PING_MAGIC,
    REPLAY_TIME_WINDOW_DEFAULT, REPLAY_WINDOW_DEFAULT,
};
use crate::fragment::Pushed;
use crate::packet_id::ReplayWindow;
use crate::stage::DropReason;
use crate::wire::DataHeader;
use crate::wrap::Digest;
use aws_lc_rs::cipher::{DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;

/// A data-channel cipher: the AEAD ones 2.6 negotiates, and AES-CBC (with the `auth` HMAC)
/// for older servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// AES-128-GCM.
    Aes128Gcm,
    /// AES-256-GCM.
    Aes256Gcm,
    /// ChaCha20-Poly1305.
    Chacha20Poly1305,
    /// AES-128-CBC + HMAC.
    Aes128Cbc,
    /// AES-192-CBC + HMAC.
    Aes192Cbc,
    /// AES-256-CBC + HMAC.
    Aes256Cbc,
}

impl Cipher {
    /// All supported ciphers, in our default preference order.
    pub const ALL: [Cipher; 3] = [
        Cipher::Aes256Gcm,
        Cipher::Aes128Gcm,
        Cipher::Chacha20Poly1305,
    ];

    /// Parses an OpenVPN cipher name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Cipher> {
        Some(match name.to_ascii_uppercase().as_str() {
            "AES-128-GCM" => Cipher::Aes128Gcm,
            "AES-256-GCM" => Cipher::Aes256Gcm,
            "CHACHA20-POLY1305" => Cipher::Chacha20Poly1305,
            "AES-128-CBC" => Cipher::Aes128Cbc,
            "AES-192-CBC" => Cipher::Aes192Cbc,
            "AES-256-CBC" => Cipher::Aes256Cbc,
            _ => return None,
        })
    }

    /// An AEAD cipher (the 2.6 format), as opposed to CBC + HMAC.
    pub fn is_aead(self) -> bool {
        matches!(
            self,
            Cipher::Aes128Gcm | Cipher::Aes256Gcm | Cipher::Chacha20Poly1305
        )
    }

    /// The OpenVPN name.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::Chacha20Poly1305 => "CHACHA20-POLY1305",
            Cipher::Aes128Cbc => "AES-128-CBC",
            Cipher::Aes192Cbc => "AES-192-CBC",
            Cipher::Aes256Cbc => "AES-256-CBC",
        }
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm | Cipher::Aes128Cbc => 16,
            Cipher::Aes192Cbc => 24,
            Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 | Cipher::Aes256Cbc => 32,
        }
    }

    /// Worst-case bytes this cipher adds to a packet (before header and framing): tag and
    /// packet-id, or HMAC, IV, packet-id and a full block of padding.
    pub fn overhead(self, auth: Digest) -> usize {
        if self.is_aead() {
            PID_TAG_LEN
        } else {
            auth.len() + CBC_BLOCK + 4 + CBC_BLOCK
        }
    }
}

/// Compression framing inside the encrypted payload. We send packets uncompressed in every
/// framing (always legal: the header byte says so); the compression framings also accept
/// packets the peer compressed, which [`Receiver::open`] decompresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// No framing byte (2.6 default).
    #[default]
    None,
    /// `comp-lzo no`: a 0xFA byte before each packet.
    LzoStub,
    /// `compress` / `compress stub`: first byte moved to the end, 0xFB in front.
    StubSwap,
    /// `compress stub-v2`: only a leading 0x50 is escaped as 0x50 0x00.
    StubV2,
    /// `comp-lzo [yes|adaptive]`, `compress lzo`: like `LzoStub`; 0x66 marks LZO data.
    Lzo,
    /// `compress lz4`: like `StubSwap`; 0x69 marks LZ4 data (also swapped).
    Lz4,
    /// `compress lz4-v2`: like `StubV2`; 0x50 0x01 marks LZ4 data.
    Lz4V2,
    /// `compress lz4` with `allow-compression yes`: what we send is LZ4-compressed when that
    /// makes it smaller.
    Lz4Tx,
    /// `compress lz4-v2` with `allow-compression yes`: likewise.
    Lz4V2Tx,
}

/// What a payload is after its framing byte(s) were read.
enum Unframed {
    /// Plain packet at this range.
    Plain(Range<usize>),
    /// LZO data at this range.
    Lzo(Range<usize>),
    /// LZ4 block at this range.
    Lz4(Range<usize>),
}

impl Framing {
    /// Worst-case bytes the framing adds.
    pub fn overhead(self) -> usize {
        match self {
            Framing::None => 0,
            Framing::LzoStub | Framing::StubSwap | Framing::Lzo | Framing::Lz4 | Framing::Lz4Tx => {
                1
            }
            Framing::StubV2 | Framing::Lz4V2 | Framing::Lz4V2Tx => 2,
        }
    }

    /// Whether packets the peer compressed are accepted (not only stub framing).
    pub fn is_compression(self) -> bool {
        matches!(
            self,
            Framing::Lzo | Framing::Lz4 | Framing::Lz4V2 | Framing::Lz4Tx | Framing::Lz4V2Tx
        )
    }

    /// The framing that also compresses what we send (`allow-compression yes`); LZO stays
    /// uncompressed on send (legal: the header byte says so), as there is no LZO compressor.
    pub fn with_tx_compression(self, allow: bool) -> Framing {
        match (self, allow) {
            (Framing::Lz4, true) => Framing::Lz4Tx,
            (Framing::Lz4V2, true) => Framing::Lz4V2Tx,
            (f, _) => f,
        }
    }

    /// OpenVPN's option for this framing.
    pub fn name(self) -> &'static str {
        match self {
            Framing::None => "no compression framing",
            Framing::LzoStub => "comp-lzo no",
            Framing::StubSwap => "compress stub",
            Framing::StubV2 => "compress stub-v2",
            Framing::Lzo => "comp-lzo (LZO)",
            Framing::Lz4 => "compress lz4",
            Framing::Lz4V2 => "compress lz4-v2",
            Framing::Lz4Tx => "compress lz4 (compressing)",
            Framing::Lz4V2Tx => "compress lz4-v2 (compressing)",
        }
    }

    /// Writes `plain` with framing into `out`; returns the written length.
    pub fn encode(self, plain: &[u8], out: &mut [u8]) -> Option<usize> {
        match self {
            Framing::Lzo => Framing::LzoStub.encode(plain, out),
            Framing::Lz4 => Framing::StubSwap.encode(plain, out),
            Framing::Lz4V2 => Framing::StubV2.encode(plain, out),
            Framing::Lz4Tx => {
                // [0x69] ‖ c[1..] ‖ c[0]: v1 moves the first byte to the end, as for stubs.
                match crate::compress::lz4_compress(plain, out.get_mut(1..)?) {
                    Some(n) if n >= 1 => {
                        let first = out[1];
                        out.copy_within(2..1 + n, 1);
                        out[n] = first;
                        out[0] = LZ4_COMPRESS_BYTE;
                        Some(n + 1)
                    }
                    _ => Framing::StubSwap.encode(plain, out),
                }
            }
            Framing::Lz4V2Tx => match crate::compress::lz4_compress(plain, out.get_mut(2..)?) {
                Some(n) => {
                    out[0] = COMP_V2_ESCAPE;
                    out[1] = COMP_V2_LZ4_BYTE;
                    Some(n + 2)
                }
                None => Framing::StubV2.encode(plain, out),
            },
            Framing::None => {
                out.get_mut(..plain.len())?.copy_from_slice(plain);
                Some(plain.len())
            }
            Framing::LzoStub => {
                *out.first_mut()? = NO_COMPRESS_BYTE;
                out.get_mut(1..=plain.len())?.copy_from_slice(plain);
                Some(plain.len() + 1)
            }
            Framing::StubSwap => {
                let Some((&first, rest)) = plain.split_first() else {
                    *out.first_mut()? = NO_COMPRESS_BYTE_SWAP;
                    return Some(1);
                };
                *out.first_mut()? = NO_COMPRESS_BYTE_SWAP;
                out.get_mut(1..=rest.len())?.copy_from_slice(rest);
                *out.get_mut(plain.len())? = first;
                Some(plain.len() + 1)
            }
            Framing::StubV2 => {
                if plain.first() == Some(&COMP_V2_ESCAPE) {
                    out.get_mut(..2)?.copy_from_slice(&[COMP_V2_ESCAPE, 0x00]);
                    out.get_mut(2..2 + plain.len())?.copy_from_slice(plain);
                    Some(plain.len() + 2)
                } else {
                    out.get_mut(..plain.len())?.copy_from_slice(plain);
                    Some(plain.len())
                }
            }
        }
    }

    /// Removes framing in place from `buf[range]`; says where the payload is and whether it
    /// is compressed.
    fn decode(self, buf: &mut [u8], range: Range<usize>) -> Result<Unframed, DropReason> {
        let first = buf.get(range.start).copied();
        match self {
            Framing::Lzo => match first {
                Some(NO_COMPRESS_BYTE) => Ok(Unframed::Plain(range.start + 1..range.end)),
                Some(LZO_COMPRESS_BYTE) => Ok(Unframed::Lzo(range.start + 1..range.end)),
                Some(_) => Err(DropReason::BadCompression),
                None => Err(DropReason::Malformed),
            },
            Framing::Lz4 | Framing::Lz4Tx => match first {
                Some(c @ (NO_COMPRESS_BYTE_SWAP | LZ4_COMPRESS_BYTE)) => {
                    // The payload's first byte travels at the end.
                    if range.len() == 1 {
                        return Ok(Unframed::Plain(range.end..range.end));
                    }
                    buf[range.start] = buf[range.end - 1];
                    let r = range.start..range.end - 1;
                    Ok(if c == LZ4_COMPRESS_BYTE {
                        Unframed::Lz4(r)
                    } else {
                        Unframed::Plain(r)
                    })
                }
                Some(_) => Err(DropReason::BadCompression),
                None => Err(DropReason::Malformed),
            },
            Framing::Lz4V2 | Framing::Lz4V2Tx => match first {
                Some(COMP_V2_ESCAPE) => match buf.get(range.start + 1) {
                    Some(0x00) => Ok(Unframed::Plain(range.start + 2..range.end)),
                    Some(&COMP_V2_LZ4_BYTE) => Ok(Unframed::Lz4(range.start + 2..range.end)),
                    Some(_) => Err(DropReason::BadCompression),
                    None => Err(DropReason::Malformed),
                },
                _ => Ok(Unframed::Plain(range)),
            },
            stub => stub.decode_stub(buf, range).map(Unframed::Plain),
        }
    }

    /// The stub framings: only uncompressed packets are accepted.
    fn decode_stub(self, buf: &mut [u8], range: Range<usize>) -> Result<Range<usize>, DropReason> {
        let first = buf.get(range.start).copied();
        match self {
            Framing::None
            | Framing::Lzo
            | Framing::Lz4
            | Framing::Lz4V2
            | Framing::Lz4Tx
            | Framing::Lz4V2Tx => Ok(range),
            Framing::LzoStub => match first {
                Some(NO_COMPRESS_BYTE) => Ok(range.start + 1..range.end),
                Some(_) => Err(DropReason::Compressed),
                None => Err(DropReason::Malformed),
            },
            Framing::StubSwap => match first {
                Some(NO_COMPRESS_BYTE_SWAP) => {
                    if range.len() == 1 {
                        return Ok(range.end..range.end);
                    }
                    buf[range.start] = buf[range.end - 1];
                    Ok(range.start..range.end - 1)
                }
                Some(_) => Err(DropReason::Compressed),
                None => Err(DropReason::Malformed),
            },
            Framing::StubV2 => match first {
                Some(COMP_V2_ESCAPE) => match buf.get(range.start + 1) {
                    Some(0x00) => Ok(range.start + 2..range.end),
                    Some(_) => Err(DropReason::Compressed),
                    None => Err(DropReason::Malformed),
                },
                _ => Ok(range),
            },
        }
    }
}

/// What goes inside the encryption: an optional header (the fragment header), then the
/// packet in its compression framing.
#[derive(Clone, Copy)]
struct Body<'a> {
    prefix: &'a [u8],
    framing: Framing,
    plain: &'a [u8],
}

impl Body<'_> {
    fn encode(self, out: &mut [u8]) -> Option<usize> {
        let p = self.prefix.len();
        out.get_mut(..p)?.copy_from_slice(self.prefix);
        Some(p + self.framing.encode(self.plain, out.get_mut(p..)?)?)
    }
}

/// One direction's key: AEAD key and implicit IV, or CBC key and HMAC key. (Two per key-id,
/// created at each renegotiation: boxing the larger variant would buy nothing.)
#[allow(clippy::large_enum_variant)]
enum DirectionKey {
    Aead {
        aead: LessSafeKey,
        implicit_iv: [u8; IMPLICIT_IV_LEN],
    },
    Cbc {
        enc: EncryptingKey,
        dec: DecryptingKey,
        hmac: hmac::Key,
        hmac_len: usize,
    },
}

/// AES block (and CBC IV) size.
const CBC_BLOCK: usize = 16;

impl DirectionKey {
    /// `key` and `iv_or_hmac` are the 64-byte cipher and HMAC slots of one key2 half.
    fn new(cipher: Cipher, auth: Digest, key: &[u8], iv_or_hmac: &[u8]) -> DirectionKey {
        // Key lengths match the algorithms by construction (sliced with key_len()).
        #[allow(clippy::expect_used)]
        match cipher {
            Cipher::Aes128Gcm | Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => {
                let alg = match cipher {
                    Cipher::Aes128Gcm => &AES_128_GCM,
                    Cipher::Aes256Gcm => &AES_256_GCM,
                    _ => &CHACHA20_POLY1305,
                };
                let unbound = UnboundKey::new(alg, &key[..cipher.key_len()])
                    .expect("key length matches cipher");
                let mut implicit_iv = [0u8; IMPLICIT_IV_LEN];
                implicit_iv.copy_from_slice(&iv_or_hmac[..IMPLICIT_IV_LEN]);
                DirectionKey::Aead {
                    aead: LessSafeKey::new(unbound),
                    implicit_iv,
                }
            }
            Cipher::Aes128Cbc | Cipher::Aes192Cbc | Cipher::Aes256Cbc => {
                let alg = match cipher {
                    Cipher::Aes128Cbc => &aws_lc_rs::cipher::AES_128,
                    Cipher::Aes192Cbc => &aws_lc_rs::cipher::AES_192,
                    _ => &aws_lc_rs::cipher::AES_256,
                };
                let k = &key[..cipher.key_len()];
                let unbound = || {
                    aws_lc_rs::cipher::UnboundCipherKey::new(alg, k)
                        .expect("key length matches cipher")
                };
                DirectionKey::Cbc {
                    enc: EncryptingKey::cbc(unbound()).expect("AES-CBC key"),
                    dec: DecryptingKey::cbc(unbound()).expect("AES-CBC key"),
                    hmac: hmac::Key::new(auth.algorithm(), &iv_or_hmac[..auth.len()]),
                    hmac_len: auth.len(),
                }
            }
        }
    }
}

fn aead_nonce(implicit_iv: &[u8; IMPLICIT_IV_LEN], packet_id: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&packet_id.to_be_bytes());
    n[4..].copy_from_slice(implicit_iv);
    Nonce::assume_unique_for_key(n)
}

/// The data keys of one key-id, both directions.
///
/// Shared between the threads of the data path: sealing takes `&self` and reserves packet-ids
/// with one atomic add per batch.
pub struct DataKeys {
    key_id: u8,
    cipher: Cipher,
    seal: DirectionKey,
    open: DirectionKey,
    /// Next packet-id to send (starts at 1; u64 so exhaustion is detectable without wrap).
    next_packet_id: AtomicU64,
    /// Plaintext bytes sealed, counted only for `reneg-bytes` (off the hot path otherwise).
    bytes_sealed: Option<AtomicU64>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys")
            .field("key_id", &self.key_id)
            .field("cipher", &self.cipher)
            .field("sent", &self.packets_sent())
            .finish()
    }
}

/// Bytes between the start of a data packet's packet-id and its ciphertext.
const PID_TAG_LEN: usize = 4 + AEAD_TAG_LEN;

impl DataKeys {
    /// Derives the keys of `key_id` from a 256-byte key2 block (TLS-EKM output).
    /// The client sends with key 0 and receives with key 1; the server the reverse.
    /// (CBC ciphers use OpenVPN's default `auth SHA1`; see [`DataKeys::with_auth`].)
    pub fn new(cipher: Cipher, key2: &[u8; KEY2_LEN], key_id: u8, is_server: bool) -> DataKeys {
        DataKeys::with_auth(cipher, Digest::Sha1, key2, key_id, is_server)
    }

    /// Like [`DataKeys::new`], with the HMAC digest (`auth`) a CBC cipher uses.
    pub fn with_auth(
        cipher: Cipher,
        auth: Digest,
        key2: &[u8; KEY2_LEN],
        key_id: u8,
        is_server: bool,
    ) -> DataKeys {
        let slot = |i: usize| {
            (
                &key2[i * 128..i * 128 + 64],
                &key2[i * 128 + 64..i * 128 + 128],
            )
        };
        let (tx, rx) = if is_server { (1, 0) } else { (0, 1) };
        let (tx_key, tx_iv) = slot(tx);
        let (rx_key, rx_iv) = slot(rx);
        DataKeys {
            key_id,
            cipher,
            seal: DirectionKey::new(cipher, auth, tx_key, tx_iv),
            open: DirectionKey::new(cipher, auth, rx_key, rx_iv),
            next_packet_id: AtomicU64::new(1),
            bytes_sealed: None,
        }
    }

    /// The key-id.
    pub fn key_id(&self) -> u8 {
        self.key_id
    }

    /// The cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Counts the plaintext bytes sealed (for `reneg-bytes`); off by default.
    pub fn counting_bytes(mut self, on: bool) -> DataKeys {
        self.bytes_sealed = on.then(|| AtomicU64::new(0));
        self
    }

    /// Plaintext bytes sealed so far (0 unless [`DataKeys::counting_bytes`]).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sealed
            .as_ref()
            .map_or(0, |b| b.load(Ordering::Relaxed))
    }

    /// Packets sealed so far.
    pub fn packets_sent(&self) -> u64 {
        self.next_packet_id
            .load(Ordering::Relaxed)
            .saturating_sub(1)
    }

    /// Reserves `n` consecutive packet-ids; `None` when the 32-bit space is exhausted.
    pub fn reserve_packet_ids(&self, n: u32) -> Option<u32> {
        let first = self
            .next_packet_id
            .fetch_add(u64::from(n), Ordering::Relaxed);
        let last = first + u64::from(n.max(1)) - 1;
        if last > u64::from(u32::MAX) {
            return None;
        }
        u32::try_from(first).ok()
    }

    /// Seals `plain` as a data packet with an explicit `packet_id` into `out`.
    /// Returns the packet length.
    pub fn seal_with_id(
        &self,
        header: DataHeader,
        framing: Framing,
        packet_id: u32,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        let body = Body {
            prefix: &[],
            framing,
            plain,
        };
        self.seal_body(header, packet_id, body, out)
    }

    fn seal_body(
        &self,
        header: DataHeader,
        packet_id: u32,
        body: Body<'_>,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        if let Some(b) = &self.bytes_sealed {
            b.fetch_add(body.plain.len() as u64, Ordering::Relaxed);
        }
        let hl = header.len();
        let (enc, hmac, hmac_len) = match &self.seal {
            DirectionKey::Aead { aead, implicit_iv } => {
                return seal_aead(aead, implicit_iv, header, packet_id, body, out);
            }
            DirectionKey::Cbc {
                enc,
                hmac,
                hmac_len,
                ..
            } => (enc, hmac, *hmac_len),
        };
        // header | HMAC | IV | CBC(packet-id ‖ framed payload ‖ padding)
        let iv_start = hl + hmac_len;
        let ct_start = iv_start + CBC_BLOCK;
        if out.len() < ct_start + 4 {
            return Err(DropReason::TooBig);
        }
        header.write(out);
        let iv: [u8; CBC_BLOCK] = crate::control::random_bytes();
        out[iv_start..ct_start].copy_from_slice(&iv);
        out[ct_start..ct_start + 4].copy_from_slice(&packet_id.to_be_bytes());
        let body_len = body
            .encode(&mut out[ct_start + 4..])
            .ok_or(DropReason::TooBig)?;
        let clear = 4 + body_len;
        let pad = CBC_BLOCK - clear % CBC_BLOCK;
        let ct_end = ct_start + clear + pad;
        out.get_mut(ct_start + clear..ct_end)
            .ok_or(DropReason::TooBig)?
            .fill(pad as u8);
        enc.less_safe_encrypt(
            &mut out[ct_start..ct_end],
            EncryptionContext::Iv128(FixedLength::from(iv)),
        )
        .map_err(|_| DropReason::TooBig)?;
        let tag = hmac::sign(hmac, &out[iv_start..ct_end]);
        out[hl..iv_start].copy_from_slice(&tag.as_ref()[..hmac_len]);
        Ok(ct_end)
    }

    /// Seals `plain` with the next packet-id.
    pub fn seal(
        &self,
        header: DataHeader,
        framing: Framing,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        self.seal_prefixed(header, &[], framing, plain, out)
    }

    /// Seals `prefix ‖ framing(plain)` with the next packet-id: the prefix is a header that
    /// goes before the compression framing (OpenVPN's fragment header).
    pub fn seal_prefixed(
        &self,
        header: DataHeader,
        prefix: &[u8],
        framing: Framing,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        let pid = self
            .reserve_packet_ids(1)
            .ok_or(DropReason::PacketIdExhausted)?;
        let body = Body {
            prefix,
            framing,
            plain,
        };
        self.seal_body(header, pid, body, out)
    }

    /// Authenticates and decrypts a data packet in place. Returns the packet-id and the
    /// ciphertext (now plaintext, still framed) range. The replay check is the caller's.
    pub fn open_in_place(
        &self,
        header: DataHeader,
        packet: &mut [u8],
    ) -> Result<(u32, Range<usize>), DropReason> {
        let hl = header.len();
        let (dec, hmac, hmac_len) = match &self.open {
            DirectionKey::Aead { aead, implicit_iv } => {
                return open_aead(aead, implicit_iv, header, packet);
            }
            DirectionKey::Cbc {
                dec,
                hmac,
                hmac_len,
                ..
            } => (dec, hmac, *hmac_len),
        };
        let iv_start = hl + hmac_len;
        let ct_start = iv_start + CBC_BLOCK;
        let ct_len = packet.len().saturating_sub(ct_start);
        if ct_len == 0 || !ct_len.is_multiple_of(CBC_BLOCK) {
            return Err(DropReason::Malformed);
        }
        // Encrypt-then-MAC: authenticate before touching the ciphertext.
        hmac::verify(hmac, &packet[iv_start..], &packet[hl..iv_start])
            .map_err(|_| DropReason::BadHmac)?;
        let mut iv = [0u8; CBC_BLOCK];
        iv.copy_from_slice(&packet[iv_start..ct_start]);
        let clear = dec
            .decrypt(
                &mut packet[ct_start..],
                DecryptionContext::Iv128(FixedLength::from(iv)),
            )
            .map_err(|_| DropReason::Malformed)?;
        // PKCS#7 padding, then the packet-id.
        let pad = usize::from(*clear.last().ok_or(DropReason::Malformed)?);
        if pad == 0 || pad > CBC_BLOCK || pad > clear.len() {
            return Err(DropReason::Malformed);
        }
        let end = ct_start + clear.len() - pad;
        if end < ct_start + 4 {
            return Err(DropReason::Malformed);
        }
        let p = &packet[ct_start..ct_start + 4];
        let pid = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        Ok((pid, ct_start + 4..end))
    }
}

/// AEAD sealing: header | packet-id | tag | ciphertext, AAD = header (V2) and packet-id.
fn seal_aead(
    aead: &LessSafeKey,
    implicit_iv: &[u8; IMPLICIT_IV_LEN],
    header: DataHeader,
    packet_id: u32,
    body: Body<'_>,
    out: &mut [u8],
) -> Result<usize, DropReason> {
    let hl = header.len();
    let ct_start = hl + PID_TAG_LEN;
    if out.len() < ct_start {
        return Err(DropReason::TooBig);
    }
    header.write(out);
    out[hl..hl + 4].copy_from_slice(&packet_id.to_be_bytes());
    let body_len = body
        .encode(&mut out[ct_start..])
        .ok_or(DropReason::TooBig)?;
    let (head, body) = out.split_at_mut(ct_start);
    let aad: &[u8] = if header.peer_id.is_some() {
        &head[..8]
    } else {
        &head[1..5]
    };
    let tag = aead
        .seal_in_place_separate_tag(
            aead_nonce(implicit_iv, packet_id),
            Aad::from(aad),
            &mut body[..body_len],
        )
        .map_err(|_| DropReason::TooBig)?;
    head[hl + 4..ct_start].copy_from_slice(tag.as_ref());
    Ok(ct_start + body_len)
}

/// AEAD opening in place; returns the packet-id and the plaintext range.
fn open_aead(
    aead: &LessSafeKey,
    implicit_iv: &[u8; IMPLICIT_IV_LEN],
    header: DataHeader,
    packet: &mut [u8],
) -> Result<(u32, Range<usize>), DropReason> {
    let hl = header.len();
    let ct_start = hl + PID_TAG_LEN;
    // At least one byte of ciphertext (OpenVPN's minimum).
    if packet.len() <= ct_start {
        return Err(DropReason::Malformed);
    }
    let (head, body) = packet.split_at_mut(ct_start);
    let pid = u32::from_be_bytes([head[hl], head[hl + 1], head[hl + 2], head[hl + 3]]);
    let aad: &[u8] = if header.peer_id.is_some() {
        &head[..8]
    } else {
        &head[1..5]
    };
    aead.open_in_place_separate_tag(
        aead_nonce(implicit_iv, pid),
        Aad::from(aad),
        &head[hl + 4..ct_start],
        body,
    )
    .map_err(|_| DropReason::BadTag)?;
    Ok((pid, ct_start..packet.len()))
}

/// Per-packet overhead of the AEAD data channel (header, packet-id, tag, framing).
pub fn overhead(v2: bool, framing: Framing) -> usize {
    let header = if v2 { 4 } else { 1 };
    header + PID_TAG_LEN + framing.overhead()
}

/// Per-packet overhead with `cipher` (CBC adds HMAC, IV and padding).
pub fn overhead_with(cipher: Cipher, auth: Digest, v2: bool, framing: Framing) -> usize {
    let header = if v2 { 4 } else { 1 };
    header + cipher.overhead(auth) + framing.overhead()
}

/// The most any cipher, digest and framing add to a packet.
pub const MAX_OVERHEAD: usize = 4 + 64 + CBC_BLOCK + 4 + CBC_BLOCK + 2;

/// Room to give [`DataKeys::seal`] for a `plain_len`-byte packet: the overhead, plus what the
/// LZ4 compressor needs as scratch (it wants its worst-case output size even when the result
/// is smaller).
pub fn seal_room(plain_len: usize) -> usize {
    plain_len + plain_len / 8 + 24 + MAX_OVERHEAD
}

/// What a successfully opened data packet contained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A tunnel packet at this range of the buffer.
    Packet(Range<usize>),
    /// A tunnel packet the peer compressed, decompressed into [`Receiver::inflated_mut`] at
    /// this range.
    Inflated(Range<usize>),
    /// A tunnel packet reassembled from fragments (`fragment`), in
    /// [`Receiver::inflated_mut`] at this range.
    Reassembled(Range<usize>),
    /// A fragment held until its packet is complete (`fragment`).
    Fragment,
    /// A keepalive ping.
    Ping,
    /// An OCC message with this opcode (e.g. [`crate::consts::OCC_EXIT`]).
    Occ(u8),
}

/// Classifies a decrypted, unframed payload.
pub fn classify(buf: &[u8], range: Range<usize>) -> Payload {
    let p = &buf[range.clone()];
    if p == PING_MAGIC {
        return Payload::Ping;
    }
    if p.len() > OCC_MAGIC.len() && p[..OCC_MAGIC.len()] == OCC_MAGIC {
        return Payload::Occ(p[OCC_MAGIC.len()]);
    }
    Payload::Packet(range)
}

/// The receive side of the data channel for one peer: keys by key-id and their replay
/// windows. Owned by the thread that decrypts.
#[derive(Default)]
pub struct Receiver {
    slots: [Option<(std::sync::Arc<DataKeys>, ReplayWindow)>; 8],
    replay_window: Option<u32>,
    /// Where decompressed packets go (allocated at the first compressed packet).
    inflated: Vec<u8>,
    /// Compressed size of the last packet decompressed.
    inflated_from: usize,
    /// Fragments waiting for the rest of their packets (`fragment`; made at the first).
    fragments: Option<Box<crate::fragment::Reassembly>>,
}

impl Receiver {
    /// A receiver with the default replay window.
    pub fn new() -> Receiver {
        Receiver::default()
    }

    /// Uses a replay window of `size` packets (`--replay-window`).
    pub fn with_replay_window(size: u32) -> Receiver {
        Receiver {
            replay_window: Some(size),
            ..Receiver::default()
        }
    }

    /// Installs (or keeps) the keys for their key-id. Replacing a key resets its window.
    pub fn install(&mut self, keys: &std::sync::Arc<DataKeys>) {
        let slot = &mut self.slots[usize::from(keys.key_id() & 7)];
        if let Some((k, _)) = slot
            && std::sync::Arc::ptr_eq(k, keys)
        {
            return;
        }
        let window = ReplayWindow::new(
            self.replay_window.unwrap_or(REPLAY_WINDOW_DEFAULT),
            REPLAY_TIME_WINDOW_DEFAULT,
        );
        *slot = Some((keys.clone(), window));
    }

    /// Removes keys whose key-id is not in `keep`.
    pub fn retain(&mut self, keep: &[std::sync::Arc<DataKeys>]) {
        for slot in self.slots.iter_mut() {
            if let Some((k, _)) = slot
                && !keep.iter().any(|x| std::sync::Arc::ptr_eq(x, k))
            {
                *slot = None;
            }
        }
    }

    /// Opens a data packet in place: key lookup, authentication, replay check, fragment
    /// header (when `fragmented`: OpenVPN's `fragment`), framing. Returns the key-id,
    /// packet-id and what the packet carried.
    pub fn open(
        &mut self,
        packet: &mut [u8],
        framing: Framing,
        fragmented: bool,
        now: Instant,
    ) -> Result<Opened, DropReason> {
        let (header, keys) = self.keys_for(packet)?;
        let decrypted = keys.open_in_place(header, packet)?;
        self.accept(&keys, header, decrypted, packet, framing, fragmented, now)
    }

    /// The first half of [`Receiver::open`], for decrypting without holding the receiver
    /// (several threads opening one peer's packets at once): the header and the keys its
    /// key-id names. Decrypt with [`DataKeys::open_in_place`], then hand the result to
    /// [`Receiver::accept`] in the order the packets arrived.
    pub fn keys_for(
        &self,
        packet: &[u8],
    ) -> Result<(DataHeader, std::sync::Arc<DataKeys>), DropReason> {
        let header = DataHeader::parse(packet)?;
        let (keys, _) = self.slots[usize::from(header.key_id)]
            .as_ref()
            .ok_or(DropReason::NoKey)?;
        Ok((header, keys.clone()))
    }

    /// The second half of [`Receiver::open`] for a packet `keys` decrypted in place
    /// (`decrypted`: its packet-id and plaintext range): the replay check — refused as
    /// `NoKey` if a renegotiation replaced the keys of that key-id meanwhile, so a packet is
    /// never counted against another key's window — then fragments and framing.
    #[allow(clippy::too_many_arguments)]
    pub fn accept(
        &mut self,
        keys: &std::sync::Arc<DataKeys>,
        header: DataHeader,
        decrypted: (u32, Range<usize>),
        packet: &mut [u8],
        framing: Framing,
        fragmented: bool,
        now: Instant,
    ) -> Result<Opened, DropReason> {
        let (pid, mut range) = decrypted;
        let window = match self.slots[usize::from(header.key_id)].as_mut() {
            Some((k, w)) if std::sync::Arc::ptr_eq(k, keys) => w,
            _ => return Err(DropReason::NoKey),
        };
        window.check(pid, now)?;
        // Behind one already accepted: the link reordered it (inside the window's width).
        let late = pid < window.highest();
        window.update(pid, now);
        let opened = |payload| Opened {
            key_id: header.key_id,
            packet_id: pid,
            late,
            payload,
        };
        if fragmented {
            let fragments = self.fragments.get_or_insert_with(Box::default);
            match fragments.push(packet, range, now)? {
                Pushed::Whole(r) => range = r,
                Pushed::Held => return Ok(opened(Payload::Fragment)),
                Pushed::Complete => return self.reassembled(framing).map(opened),
            }
        }
        let payload = match framing.decode(packet, range)? {
            Unframed::Plain(range) => classify(packet, range),
            Unframed::Lzo(range) => self.inflate(&packet[range], lzo1x_decompress)?,
            Unframed::Lz4(range) => self.inflate(&packet[range], lz4_decompress)?,
        };
        Ok(opened(payload))
    }

    /// The packet the last fragment completed: copied into the receiver's buffer and
    /// unframed there.
    fn reassembled(&mut self, framing: Framing) -> Result<Payload, DropReason> {
        self.reserve_buffer();
        let n = self
            .fragments
            .as_mut()
            .and_then(|f| f.take_into(&mut self.inflated))
            .ok_or(DropReason::BadFragment)?;
        Ok(match framing.decode(&mut self.inflated, 0..n)? {
            Unframed::Plain(r) => match classify(&self.inflated, r) {
                Payload::Packet(r) => Payload::Reassembled(r),
                other => other,
            },
            // Compressed and fragmented: decompress from a copy (rare: large packets that
            // did not compress below the fragment size).
            Unframed::Lzo(r) => {
                let data = self.inflated[r].to_vec();
                self.inflate(&data, lzo1x_decompress)?
            }
            Unframed::Lz4(r) => {
                let data = self.inflated[r].to_vec();
                self.inflate(&data, lz4_decompress)?
            }
        })
    }

    /// Makes the receiver's own buffer big enough for any decompressed or reassembled packet.
    fn reserve_buffer(&mut self) {
        let size = MAX_INFLATED.max(crate::fragment::MAX_REASSEMBLED);
        if self.inflated.len() < size {
            self.inflated = vec![0; size];
        }
    }

    fn inflate(
        &mut self,
        data: &[u8],
        decompress: fn(&[u8], &mut [u8]) -> Result<usize, crate::compress::DecompressError>,
    ) -> Result<Payload, DropReason> {
        self.reserve_buffer();
        let n = decompress(data, &mut self.inflated).map_err(|_| DropReason::BadCompression)?;
        self.inflated_from = data.len();
        Ok(match classify(&self.inflated, 0..n) {
            Payload::Packet(r) => Payload::Inflated(r),
            other => other,
        })
    }

    /// The buffer a [`Payload::Inflated`] or [`Payload::Reassembled`] range refers to.
    pub fn inflated_mut(&mut self) -> &mut [u8] {
        &mut self.inflated
    }

    /// Compressed size of the last [`Payload::Inflated`] packet (for the counters).
    pub fn compressed_len(&self) -> usize {
        self.inflated_from
    }

    /// Lends the decompression buffer out (give it back with [`Receiver::put_inflated`], or
    /// the next compressed packet allocates a new one).
    pub fn take_inflated(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.inflated)
    }

    /// Returns a buffer lent by [`Receiver::take_inflated`].
    pub fn put_inflated(&mut self, buf: Vec<u8>) {
        self.inflated = buf;
    }
}

/// Result of [`Receiver::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Key-id the packet was sealed with.
    pub key_id: u8,
    /// Its packet-id.
    pub packet_id: u32,
    /// Accepted behind a higher packet-id: reordered on the way, still inside the replay
    /// window.
    pub late: bool,
    /// What it carried.
    pub payload: Payload,
}

/// Builds the 17-byte OCC EXIT payload.
pub fn occ_exit_payload() -> [u8; 17] {
    let mut p = [0u8; 17];
    p[..16].copy_from_slice(&OCC_MAGIC);
    p[16] = crate::consts::OCC_EXIT;
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key2() -> [u8; KEY2_LEN] {
        let mut k = [0u8; KEY2_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(13).wrapping_add(1);
        }
        k
    }

    fn pair(cipher: Cipher) -> (Arc<DataKeys>, Arc<DataKeys>) {
        (
            Arc::new(DataKeys::new(cipher, &key2(), 1, false)),
            Arc::new(DataKeys::new(cipher, &key2(), 1, true)),
        )
    }

    const V2: DataHeader = DataHeader {
        key_id: 1,
        peer_id: Some(7),
    };

    #[test]
    fn round_trip_every_cipher_and_framing() {
        let now = Instant::now();
        for cipher in Cipher::ALL {
            for framing in [
                Framing::None,
                Framing::LzoStub,
                Framing::StubSwap,
                Framing::StubV2,
                Framing::Lzo,
                Framing::Lz4,
                Framing::Lz4V2,
            ] {
                for header in [
                    V2,
                    DataHeader {
                        key_id: 1,
                        peer_id: None,
                    },
                ] {
                    let (client, server) = pair(cipher);
                    let mut rx = Receiver::new();
                    rx.install(&server);
                    for plain in [&b"\x45hello ip packet"[..], b"\x50escaped", b"x"] {
                        let mut buf = [0u8; 128];
                        let n = client.seal(header, framing, plain, &mut buf).expect("seal");
                        assert_eq!(
                            n,
                            header.len() + 20 + plain.len() + {
                                match framing {
                                    Framing::None => 0,
                                    Framing::LzoStub
                                    | Framing::StubSwap
                                    | Framing::Lzo
                                    | Framing::Lz4 => 1,
                                    Framing::StubV2 | Framing::Lz4V2 => {
                                        usize::from(plain[0] == 0x50) * 2
                                    }
                                    Framing::Lz4Tx | Framing::Lz4V2Tx => unreachable!(),
                                }
                            }
                        );
                        let opened = rx.open(&mut buf[..n], framing, false, now).expect("open");
                        let Payload::Packet(r) = opened.payload else {
                            panic!("not a packet");
                        };
                        assert_eq!(&buf[r], plain, "{cipher:?} {framing:?}");
                    }
                }
            }
        }
    }

    /// Decrypting apart from the receiver (keys_for, open_in_place, accept) is `open`:
    /// packets decrypted out of order but accepted in arrival order pass, a replay is still
    /// refused, and a packet whose keys were replaced while it was being decrypted is
    /// refused rather than checked against the new key's window.
    #[test]
    fn open_in_two_halves_keeps_the_replay_check_and_refuses_replaced_keys() {
        let now = Instant::now();
        let (mut rx, sealed) = four_sealed_packets();
        // Two "threads": both packets decrypted first (in reverse), then accepted in order.
        let mut a = sealed[0].clone();
        let mut b = sealed[1].clone();
        let (ha, ka) = rx.keys_for(&a).unwrap();
        let (hb, kb) = rx.keys_for(&b).unwrap();
        let db = kb.open_in_place(hb, &mut b).unwrap();
        let da = ka.open_in_place(ha, &mut a).unwrap();
        for (h, k, d, p, want) in [(ha, &ka, da, &mut a, 0u8), (hb, &kb, db, &mut b, 1)] {
            let o = rx.accept(k, h, d, p, Framing::None, false, now).unwrap();
            assert_eq!(p[o_range(&o)], [0x45, want]);
            assert!(!o.late, "accepted in arrival order: {o:?}");
        }
        // The same packet again is a replay, whichever half sees it.
        let mut again = sealed[1].clone();
        let (h, k) = rx.keys_for(&again).unwrap();
        let d = k.open_in_place(h, &mut again).unwrap();
        let r = rx.accept(&k, h, d, &mut again, Framing::None, false, now);
        assert!(matches!(r, Err(DropReason::Replay)), "{r:?}");
        // Keys replaced (renegotiated with the same key-id) between decrypt and accept.
        let mut c = sealed[2].clone();
        let (h, k) = rx.keys_for(&c).unwrap();
        let d = k.open_in_place(h, &mut c).unwrap();
        let (_, newer) = pair(Cipher::Aes256Gcm);
        rx.install(&newer);
        let r = rx.accept(&k, h, d, &mut c, Framing::None, false, now);
        assert_eq!(r, Err(DropReason::NoKey));
    }

    /// A packet the link reordered (accepted behind a higher packet-id, inside the window)
    /// is marked late; the in-order ones are not; a duplicate is still a replay.
    #[test]
    fn packets_behind_a_later_one_are_marked_late() {
        let now = Instant::now();
        let (mut rx, sealed) = four_sealed_packets();
        let mut late = vec![];
        for i in [0usize, 2, 1, 3] {
            let mut p = sealed[i].clone();
            late.push(rx.open(&mut p, Framing::None, false, now).unwrap().late);
        }
        assert_eq!(late, [false, false, true, false]);
        let mut dup = sealed[1].clone();
        assert_eq!(
            rx.open(&mut dup, Framing::None, false, now),
            Err(DropReason::Replay)
        );
    }

    /// A receiver with keys installed and four packets sealed for it (packet-ids 1–4,
    /// payloads `45 00` … `45 03`).
    fn four_sealed_packets() -> (Receiver, Vec<Vec<u8>>) {
        let (client, server) = pair(Cipher::Aes256Gcm);
        let mut rx = Receiver::new();
        rx.install(&server);
        let sealed = (0..4u8)
            .map(|i| {
                let mut buf = vec![0u8; 128];
                let n = client
                    .seal(V2, Framing::None, &[0x45, i], &mut buf)
                    .unwrap();
                buf.truncate(n);
                buf
            })
            .collect();
        (rx, sealed)
    }

    fn o_range(o: &Opened) -> Range<usize> {
        match &o.payload {
            Payload::Packet(r) => r.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// `allow-compression yes` with LZ4: compressible packets travel compressed (smaller on
    /// the wire) and come back out whole; incompressible ones go uncompressed.
    #[test]
    fn lz4_sending_compresses_when_it_helps() {
        let now = Instant::now();
        let (client, server) = pair(Cipher::Aes256Gcm);
        let mut rx = Receiver::new();
        rx.install(&server);
        let compressible: Vec<u8> = (0..1200u32).map(|i| (i % 7) as u8 + 0x45).collect();
        let noise: Vec<u8> = (0..600u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for (tx, rx_framing) in [
            (Framing::Lz4Tx, Framing::Lz4),
            (Framing::Lz4V2Tx, Framing::Lz4V2),
        ] {
            for plain in [&compressible[..], &noise[..], b"\x50", b"x"] {
                let mut buf = vec![0u8; 2048];
                let n = client.seal(V2, tx, plain, &mut buf).unwrap();
                if plain.len() > 100 && plain[1] == plain[8] {
                    assert!(n < plain.len() / 2, "{tx:?}: {n} bytes on the wire");
                }
                let opened = rx.open(&mut buf[..n], rx_framing, false, now).unwrap();
                let got = match opened.payload {
                    Payload::Packet(r) => buf[r].to_vec(),
                    Payload::Inflated(r) => rx.inflated_mut()[r].to_vec(),
                    other => panic!("{other:?}"),
                };
                assert_eq!(got, plain, "{tx:?}");
            }
        }
    }

    /// Packets a peer compressed (LZO from lzop, LZ4 from lz4_flex) come out decompressed in
    /// every compression framing; bad data and compressed packets under stub framing are
    /// counted drops.
    #[test]
    fn compressed_payloads_are_inflated_or_dropped() {
        let now = Instant::now();
        let (client, server) = pair(Cipher::Aes256Gcm);
        let mut rx = Receiver::new();
        rx.install(&server);
        let plain: Vec<u8> = {
            let mut v = vec![0x45, 0, 0, 0x80];
            for _ in 0..6 {
                v.extend_from_slice(b"hello hello hello hello tunscope compress test ");
            }
            v.extend(0u8..40);
            v
        };
        let lzo = crate::compress::tests_support::lzo_vector();
        let mut lz4 = vec![0u8; 1024];
        let n4 = crate::compress::lz4_compress(&plain, &mut lz4).unwrap();
        lz4.truncate(n4);
        // What a compressing peer puts inside the encryption, framing included.
        let mut lzo_framed = vec![LZO_COMPRESS_BYTE];
        lzo_framed.extend_from_slice(&lzo);
        let mut lz4v2_framed = vec![COMP_V2_ESCAPE, COMP_V2_LZ4_BYTE];
        lz4v2_framed.extend_from_slice(&lz4);
        // v1 LZ4 swaps: header byte in front, the data's first byte moved to the end.
        let mut lz4_framed = vec![LZ4_COMPRESS_BYTE];
        lz4_framed.extend_from_slice(&lz4[1..]);
        lz4_framed.push(lz4[0]);
        for (framing, wire) in [
            (Framing::Lzo, &lzo_framed),
            (Framing::Lz4, &lz4_framed),
            (Framing::Lz4V2, &lz4v2_framed),
        ] {
            let mut buf = [0u8; 2048];
            let n = client.seal(V2, Framing::None, wire, &mut buf).unwrap();
            let opened = rx.open(&mut buf[..n], framing, false, now).expect("open");
            let Payload::Inflated(r) = opened.payload else {
                panic!("{framing:?}: not inflated: {:?}", opened.payload);
            };
            assert_eq!(&rx.inflated_mut()[r], &plain[..], "{framing:?}");
            // The same packet where only stub framing is configured.
            let stub = match framing {
                Framing::Lzo => Framing::LzoStub,
                Framing::Lz4 => Framing::StubSwap,
                _ => Framing::StubV2,
            };
            let n = client.seal(V2, Framing::None, wire, &mut buf).unwrap();
            assert_eq!(
                rx.open(&mut buf[..n], stub, false, now),
                Err(DropReason::Compressed)
            );
            // Corrupt compressed data (inside a valid AEAD packet).
            let mut bad = wire.clone();
            bad.truncate(wire.len() - 3);
            let n = client.seal(V2, Framing::None, &bad, &mut buf).unwrap();
            assert_eq!(
                rx.open(&mut buf[..n], framing, false, now),
                Err(DropReason::BadCompression),
                "{framing:?}"
            );
        }
        // An unknown header byte.
        let mut buf = [0u8; 256];
        let n = client
            .seal(V2, Framing::None, b"\x77junk", &mut buf)
            .unwrap();
        assert_eq!(
            rx.open(&mut buf[..n], Framing::Lzo, false, now),
            Err(DropReason::BadCompression)
        );
    }

    /// The CBC + HMAC format: every AES size and digest, every framing, both headers;
    /// tampering anywhere is a counted drop, replays are refused, sizes follow the padding.
    #[test]
    fn cbc_hmac_round_trip_and_tampering() {
        let now = Instant::now();
        for cipher in [Cipher::Aes128Cbc, Cipher::Aes192Cbc, Cipher::Aes256Cbc] {
            for auth in [Digest::Sha1, Digest::Sha256, Digest::Sha512] {
                let client = Arc::new(DataKeys::with_auth(cipher, auth, &key2(), 1, false));
                let server = Arc::new(DataKeys::with_auth(cipher, auth, &key2(), 1, true));
                let mut rx = Receiver::new();
                rx.install(&server);
                for framing in [Framing::None, Framing::LzoStub, Framing::Lz4V2] {
                    for plain in [&b"\x45hello ip packet"[..], b"x", &[0x45; 1300][..]] {
                        let mut buf = [0u8; 1600];
                        let n = client.seal(V2, framing, plain, &mut buf).expect("seal");
                        // header + HMAC + IV + blocks of (pid + framed payload + padding)
                        let clear = 4
                            + plain.len()
                            + usize::from(
                                framing != Framing::None
                                    && !(framing == Framing::Lz4V2 && plain[0] != 0x50),
                            );
                        let blocks = clear / 16 + 1;
                        assert_eq!(n, 4 + auth.len() + 16 + blocks * 16, "{cipher:?} {auth:?}");
                        assert!(n <= 4 + cipher.overhead(auth) + plain.len() + framing.overhead());
                        let mut copy = buf;
                        let opened = rx.open(&mut buf[..n], framing, false, now).expect("open");
                        let Payload::Packet(r) = opened.payload else {
                            panic!("not a packet")
                        };
                        assert_eq!(&buf[r], plain);
                        // The same packet again: a replay.
                        let mut again = copy;
                        assert_eq!(
                            rx.open(&mut again[..n], framing, false, now),
                            Err(DropReason::Replay)
                        );
                        // Any flipped byte after the header fails the HMAC.
                        for i in [4, 4 + auth.len(), n - 1] {
                            let mut bad = copy;
                            bad[i] ^= 1;
                            assert_eq!(
                                rx.open(&mut bad[..n], framing, false, now),
                                Err(DropReason::BadHmac)
                            );
                        }
                        // Not a whole number of blocks.
                        assert_eq!(
                            rx.open(&mut copy[..n - 1], framing, false, now),
                            Err(DropReason::Malformed)
                        );
                    }
                }
            }
        }
        // A packet shorter than HMAC + IV.
        let server = Arc::new(DataKeys::with_auth(
            Cipher::Aes256Cbc,
            Digest::Sha256,
            &key2(),
            1,
            true,
        ));
        let mut rx = Receiver::new();
        rx.install(&server);
        assert_eq!(
            rx.open(&mut [0x49, 0, 0, 7, 1, 2, 3][..], Framing::None, false, now),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn layout_matches_openvpn() {
        let (client, _) = pair(Cipher::Aes256Gcm);
        let mut buf = [0u8; 64];
        let n = client
            .seal(V2, Framing::None, b"abc", &mut buf)
            .expect("seal");
        assert_eq!(n, 4 + 4 + 16 + 3);
        assert_eq!(&buf[..4], &[0x49, 0, 0, 7], "P_DATA_V2 key-id 1 peer-id 7");
        assert_eq!(&buf[4..8], &[0, 0, 0, 1], "first packet-id is 1");
    }

    #[test]
    fn tampering_replay_and_wrong_key_are_counted_drops() {
        let now = Instant::now();
        let (client, server) = pair(Cipher::Chacha20Poly1305);
        let mut rx = Receiver::new();
        rx.install(&server);
        let mut buf = [0u8; 64];
        let n = client
            .seal(V2, Framing::None, b"payload", &mut buf)
            .expect("seal");
        for i in 0..n {
            let mut bad = buf;
            bad[i] ^= 0x80;
            let r = rx.open(&mut bad[..n], Framing::None, false, now);
            assert!(r.is_err(), "flip at {i} accepted");
        }
        let mut good = buf;
        rx.open(&mut good[..n], Framing::None, false, now)
            .expect("original opens");
        let mut again = buf;
        assert_eq!(
            rx.open(&mut again[..n], Framing::None, false, now),
            Err(DropReason::Replay)
        );
        // Same key-id but another key (e.g. both sides disagree on EKM): bad tag.
        let other = Arc::new(DataKeys::new(
            Cipher::Chacha20Poly1305,
            &[9; KEY2_LEN],
            1,
            true,
        ));
        let mut rx2 = Receiver::new();
        rx2.install(&other);
        let mut copy = buf;
        assert_eq!(
            rx2.open(&mut copy[..n], Framing::None, false, now),
            Err(DropReason::BadTag)
        );
        // Unknown key-id.
        let mut rx3 = Receiver::new();
        let mut copy = buf;
        assert_eq!(
            rx3.open(&mut copy[..n], Framing::None, false, now),
            Err(DropReason::NoKey)
        );
        // Truncated and garbage.
        let mut copy = buf;
        assert_eq!(
            rx.open(&mut copy[..24], Framing::None, false, now),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            rx.open(&mut [], Framing::None, false, now),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            rx.open(&mut [0xff; 40], Framing::None, false, now),
            Err(DropReason::BadOpcode)
        );
    }

    #[test]
    fn ping_and_occ_are_recognised() {
        let now = Instant::now();
        let (client, server) = pair(Cipher::Aes128Gcm);
        let mut rx = Receiver::new();
        rx.install(&server);
        let mut buf = [0u8; 64];
        let n = client
            .seal(V2, Framing::StubSwap, &PING_MAGIC, &mut buf)
            .expect("seal");
        assert_eq!(
            rx.open(&mut buf[..n], Framing::StubSwap, false, now)
                .expect("ping")
                .payload,
            Payload::Ping
        );
        let n = client
            .seal(V2, Framing::None, &occ_exit_payload(), &mut buf)
            .expect("seal");
        assert_eq!(
            rx.open(&mut buf[..n], Framing::None, false, now)
                .expect("occ")
                .payload,
            Payload::Occ(6)
        );
    }

    #[test]
    fn real_compression_is_refused() {
        let now = Instant::now();
        let (client, server) = pair(Cipher::Aes256Gcm);
        let mut rx = Receiver::new();
        rx.install(&server);
        let mut buf = [0u8; 64];
        // An LZ4-v2 compressed packet: 0x50 0x01 ...
        let n = client
            .seal(V2, Framing::None, b"\x50\x01data", &mut buf)
            .expect("seal");
        assert_eq!(
            rx.open(&mut buf[..n], Framing::StubV2, false, now),
            Err(DropReason::Compressed)
        );
        let n = client
            .seal(V2, Framing::None, b"\x66lzo", &mut buf)
            .expect("seal");
        assert_eq!(
            rx.open(&mut buf[..n], Framing::LzoStub, false, now),
            Err(DropReason::Compressed)
        );
    }

    #[test]
    fn packet_id_exhaustion_is_detected() {
        let (client, _) = pair(Cipher::Aes256Gcm);
        client
            .next_packet_id
            .store(u64::from(u32::MAX), Ordering::Relaxed);
        let mut buf = [0u8; 64];
        client
            .seal(V2, Framing::None, b"last", &mut buf)
            .expect("id u32::MAX is valid");
        assert_eq!(
            client.seal(V2, Framing::None, b"over", &mut buf),
            Err(DropReason::PacketIdExhausted)
        );
    }
}
