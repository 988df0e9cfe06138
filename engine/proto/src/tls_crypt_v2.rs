//! tls-crypt-v2: per-client control-channel keys (OpenVPN 2.5+, `doc/tls-crypt-v2.txt`).
//!
//! The server holds one server key (Ke for AES-256-CTR, Ka for HMAC-SHA256). Each client has
//! its own tls-crypt key Kc and a wrapped copy WKc that only the server can open:
//!
//! ```text
//! WKc = T ‖ AES-256-CTR(Ke, IV = T[..16], Kc ‖ metadata) ‖ len      (len: u16, all of WKc)
//! T   = HMAC-SHA256(Ka, len ‖ Kc ‖ metadata)
//! ```
//!
//! The client sends WKc in clear after its first (tls-crypt wrapped, with Kc) packet,
//! `P_CONTROL_HARD_RESET_CLIENT_V3`; from then on both sides use Kc exactly as tls-crypt.
//! Key files are PEM: `OpenVPN tls-crypt-v2 server key` (128 bytes: cipher[64] ‖ hmac[64])
//! and `OpenVPN tls-crypt-v2 client key` (Kc, 256 bytes, ‖ WKc).

use aws_lc_rs::cipher::{
    DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;

use crate::base64::{decode as base64_decode, encode as base64_encode};
use crate::consts::KEY2_LEN;
use crate::static_key::Key2;

/// Largest WKc OpenVPN accepts.
pub const MAX_WKC_LEN: usize = 1024;
/// Metadata type byte: user-supplied bytes.
pub const METADATA_USER: u8 = 0x00;
/// Metadata type byte: 64-bit big-endian creation time (`--genkey` without metadata).
pub const METADATA_TIMESTAMP: u8 = 0x01;

const SERVER_LABEL: &str = "OpenVPN tls-crypt-v2 server key";
const CLIENT_LABEL: &str = "OpenVPN tls-crypt-v2 client key";
const TAG_LEN: usize = 32;

/// Errors reading keys or unwrapping a client key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsCryptV2Error {
    /// No PEM block with the expected label.
    #[error("no '-----BEGIN {0}-----' block")]
    NoBlock(&'static str),
    /// Bad base64.
    #[error("the key is not valid base64")]
    Base64,
    /// Wrong size.
    #[error("the key has {0} bytes, expected {1}")]
    Length(usize, &'static str),
    /// WKc length field disagrees with its size, or it is too short/long.
    #[error("wrapped client key is malformed")]
    Malformed,
    /// WKc tag does not verify with the server key.
    #[error("wrapped client key does not authenticate with the server key")]
    BadTag,
}

/// The server's tls-crypt-v2 key.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerKey {
    ke: [u8; 32],
    ka: [u8; 32],
    raw: [u8; 128],
}

impl Drop for ServerKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.ke.zeroize();
        self.ka.zeroize();
        self.raw.zeroize();
    }
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

impl ServerKey {
    /// From the 128 bytes of the key file (cipher[64] ‖ hmac[64]).
    pub fn from_bytes(raw: [u8; 128]) -> ServerKey {
        let mut ke = [0u8; 32];
        let mut ka = [0u8; 32];
        ke.copy_from_slice(&raw[..32]);
        ka.copy_from_slice(&raw[64..96]);
        ServerKey { ke, ka, raw }
    }

    /// A fresh random key.
    pub fn generate() -> ServerKey {
        ServerKey::from_bytes(crate::control::random_bytes())
    }

    /// Parses `-----BEGIN OpenVPN tls-crypt-v2 server key-----`.
    pub fn parse(text: &str) -> Result<ServerKey, TlsCryptV2Error> {
        let b = pem_block(text, SERVER_LABEL)?;
        let raw: [u8; 128] = b
            .try_into()
            .map_err(|b: Vec<u8>| TlsCryptV2Error::Length(b.len(), "128"))?;
        Ok(ServerKey::from_bytes(raw))
    }

    /// The key file text.
    pub fn to_pem(&self) -> String {
        to_pem(SERVER_LABEL, &self.raw)
    }

    /// Wraps a client key with `metadata` (type byte included) into WKc.
    pub fn wrap(&self, kc: &Key2, metadata: &[u8]) -> Result<Vec<u8>, TlsCryptV2Error> {
        let total = TAG_LEN + KEY2_LEN + metadata.len() + 2;
        if total > MAX_WKC_LEN {
            return Err(TlsCryptV2Error::Malformed);
        }
        let len = (total as u16).to_be_bytes();
        let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &self.ka));
        ctx.update(&len);
        ctx.update(&kc.0);
        ctx.update(metadata);
        let tag = ctx.sign();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(tag.as_ref());
        out.extend_from_slice(&kc.0);
        out.extend_from_slice(metadata);
        let key = UnboundCipherKey::new(&aws_lc_rs::cipher::AES_256, &self.ke)
            .map_err(|_| TlsCryptV2Error::Malformed)?;
        let enc = EncryptingKey::ctr(key).map_err(|_| TlsCryptV2Error::Malformed)?;
        enc.less_safe_encrypt(
            &mut out[TAG_LEN..],
            EncryptionContext::Iv128(FixedLength::from(iv(tag.as_ref()))),
        )
        .map_err(|_| TlsCryptV2Error::Malformed)?;
        out.extend_from_slice(&len);
        Ok(out)
    }

    /// Opens a WKc: the client's tls-crypt key and its metadata. Authenticated before use;
    /// any bad input is an error.
    pub fn unwrap(&self, wkc: &[u8]) -> Result<(Key2, Vec<u8>), TlsCryptV2Error> {
        if wkc.len() < TAG_LEN + KEY2_LEN + 2 || wkc.len() > MAX_WKC_LEN {
            return Err(TlsCryptV2Error::Malformed);
        }
        let (body, len) = wkc.split_at(wkc.len() - 2);
        if usize::from(u16::from_be_bytes([len[0], len[1]])) != wkc.len() {
            return Err(TlsCryptV2Error::Malformed);
        }
        let (tag, ct) = body.split_at(TAG_LEN);
        let mut plain = ct.to_vec();
        let key = UnboundCipherKey::new(&aws_lc_rs::cipher::AES_256, &self.ke)
            .map_err(|_| TlsCryptV2Error::Malformed)?;
        let dec = DecryptingKey::ctr(key).map_err(|_| TlsCryptV2Error::Malformed)?;
        dec.decrypt(
            &mut plain,
            DecryptionContext::Iv128(FixedLength::from(iv(tag))),
        )
        .map_err(|_| TlsCryptV2Error::Malformed)?;
        let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &self.ka));
        ctx.update(len);
        ctx.update(&plain);
        verify_slices_are_equal(ctx.sign().as_ref(), tag).map_err(|_| TlsCryptV2Error::BadTag)?;
        let mut kc = [0u8; KEY2_LEN];
        kc.copy_from_slice(&plain[..KEY2_LEN]);
        Ok((Key2(kc), plain[KEY2_LEN..].to_vec()))
    }
}

/// A client's tls-crypt-v2 key: its own tls-crypt key and the wrapped copy for the server.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// The tls-crypt key (used like a `tls-crypt` key, client direction).
    pub kc: Key2,
    /// The wrapped key sent to the server.
    pub wkc: Vec<u8>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKey(wkc {} bytes)", self.wkc.len())
    }
}

impl ClientKey {
    /// Generates a client key wrapped with `server`'s key; without `metadata` the creation
    /// time is embedded, as `openvpn --genkey tls-crypt-v2-client` does.
    pub fn generate(
        server: &ServerKey,
        metadata: Option<&[u8]>,
        unix_time: u64,
    ) -> Result<ClientKey, TlsCryptV2Error> {
        let kc = Key2(crate::control::random_bytes());
        let meta = match metadata {
            Some(m) => [&[METADATA_USER][..], m].concat(),
            None => [&[METADATA_TIMESTAMP][..], &unix_time.to_be_bytes()].concat(),
        };
        let wkc = server.wrap(&kc, &meta)?;
        Ok(ClientKey { kc, wkc })
    }

    /// Parses `-----BEGIN OpenVPN tls-crypt-v2 client key-----`.
    pub fn parse(text: &str) -> Result<ClientKey, TlsCryptV2Error> {
        let b = pem_block(text, CLIENT_LABEL)?;
        if b.len() < KEY2_LEN + TAG_LEN + KEY2_LEN + 2 || b.len() > KEY2_LEN + MAX_WKC_LEN {
            return Err(TlsCryptV2Error::Length(b.len(), "256 + a wrapped key"));
        }
        let mut kc = [0u8; KEY2_LEN];
        kc.copy_from_slice(&b[..KEY2_LEN]);
        let wkc = b[KEY2_LEN..].to_vec();
        let len = usize::from(u16::from_be_bytes([wkc[wkc.len() - 2], wkc[wkc.len() - 1]]));
        if len != wkc.len() {
            return Err(TlsCryptV2Error::Malformed);
        }
        Ok(ClientKey { kc: Key2(kc), wkc })
    }

    /// The key file text.
    pub fn to_pem(&self) -> String {
        let mut b = self.kc.0.to_vec();
        b.extend_from_slice(&self.wkc);
        to_pem(CLIENT_LABEL, &b)
    }
}

/// The WKc at the end of a packet (its last two bytes give its length), and the rest.
pub fn split_wkc(packet: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = packet.len();
    if n < 2 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([packet[n - 2], packet[n - 1]]));
    if !(TAG_LEN + KEY2_LEN + 2..=MAX_WKC_LEN).contains(&len) || len > n {
        return None;
    }
    Some(packet.split_at(n - len))
}

fn iv(tag: &[u8]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&tag[..16]);
    iv
}

fn pem_block(text: &str, label: &'static str) -> Result<Vec<u8>, TlsCryptV2Error> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or(TlsCryptV2Error::NoBlock(label))? + begin.len();
    let stop = text[start..]
        .find(&end)
        .ok_or(TlsCryptV2Error::NoBlock(label))?
        + start;
    base64_decode(&text[start..stop]).ok_or(TlsCryptV2Error::Base64)
}

fn to_pem(label: &str, bytes: &[u8]) -> String {
    let b64 = base64_encode(bytes);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(line));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_key_files() {
        let server = ServerKey::generate();
        let client = ClientKey::generate(&server, None, 1_700_000_000).unwrap();
        assert_eq!(client.wkc.len(), 32 + 256 + 9 + 2);
        let (kc, meta) = server.unwrap(&client.wkc).unwrap();
        assert_eq!(kc, client.kc);
        assert_eq!(meta[0], METADATA_TIMESTAMP);
        assert_eq!(&meta[1..], &1_700_000_000u64.to_be_bytes());
        // Files round-trip.
        let s2 = ServerKey::parse(&server.to_pem()).unwrap();
        assert_eq!(s2.unwrap(&client.wkc).unwrap().0, client.kc);
        assert_eq!(ClientKey::parse(&client.to_pem()).unwrap(), client);
        // Tampering anywhere, a foreign server key, a wrong length: refused.
        for i in [0, 40, client.wkc.len() - 3] {
            let mut bad = client.wkc.clone();
            bad[i] ^= 1;
            assert_eq!(
                server.unwrap(&bad),
                Err(TlsCryptV2Error::BadTag),
                "byte {i}"
            );
        }
        assert_eq!(
            ServerKey::generate().unwrap(&client.wkc),
            Err(TlsCryptV2Error::BadTag)
        );
        let mut bad = client.wkc.clone();
        bad.pop();
        assert_eq!(server.unwrap(&bad), Err(TlsCryptV2Error::Malformed));
        assert!(server.unwrap(&[]).is_err());
        // User metadata.
        let c = ClientKey::generate(&server, Some(b"alice"), 0).unwrap();
        assert_eq!(server.unwrap(&c.wkc).unwrap().1, b"\x00alice");
        // split_wkc finds it after a packet.
        let mut pkt = vec![0x50; 60];
        pkt.extend_from_slice(&client.wkc);
        let (head, wkc) = split_wkc(&pkt).unwrap();
        assert_eq!(head.len(), 60);
        assert_eq!(wkc, &client.wkc[..]);
        assert!(split_wkc(&[0, 1]).is_none());
    }
}
