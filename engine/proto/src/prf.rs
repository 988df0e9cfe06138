//! OpenVPN's legacy data-channel key derivation, for peers without TLS-EKM (every OpenVPN
//! before 2.6, and 2.6 peers that do not announce `IV_PROTO` bit 3).
//!
//! ```text
//! master    = PRF(pre_master, "OpenVPN master secret", c.random1 ‖ s.random1)           48 bytes
//! key block = PRF(master, "OpenVPN key expansion",
//!                 c.random2 ‖ s.random2 ‖ client session id ‖ server session id)        256 bytes
//! PRF       = TLS 1.0 PRF: P_MD5(first half of secret) ⊕ P_SHA1(second half)
//! ```
//!
//! aws-lc-rs offers no MD5, so MD5 (RFC 1321) and HMAC-MD5 (RFC 2104) are written here; they
//! serve this key derivation only, as in the TLS 1.0 PRF itself. SHA-1 HMAC is aws-lc-rs'.

use aws_lc_rs::hmac;

use crate::consts::KEY2_LEN;

/// Label of the master-secret step.
const MASTER_LABEL: &[u8] = b"OpenVPN master secret";
/// Label of the key-expansion step.
const EXPANSION_LABEL: &[u8] = b"OpenVPN key expansion";

/// The inputs one side of a key-method-2 exchange contributes.
#[derive(Clone, Copy, Debug)]
pub struct KeySource<'a> {
    /// 48 bytes, client only.
    pub pre_master: Option<&'a [u8; 48]>,
    /// First random.
    pub random1: &'a [u8; 32],
    /// Second random.
    pub random2: &'a [u8; 32],
}

/// The 256-byte key2 block of the legacy derivation (same layout as the EKM one).
pub fn key_expansion(
    client: KeySource<'_>,
    server: KeySource<'_>,
    client_sid: [u8; 8],
    server_sid: [u8; 8],
) -> Option<[u8; KEY2_LEN]> {
    let pre_master = client.pre_master?;
    let mut seed = Vec::with_capacity(64);
    seed.extend_from_slice(client.random1);
    seed.extend_from_slice(server.random1);
    let mut master = [0u8; 48];
    tls1_prf(pre_master, MASTER_LABEL, &seed, &mut master);
    seed.clear();
    seed.extend_from_slice(client.random2);
    seed.extend_from_slice(server.random2);
    seed.extend_from_slice(&client_sid);
    seed.extend_from_slice(&server_sid);
    let mut out = [0u8; KEY2_LEN];
    tls1_prf(&master, EXPANSION_LABEL, &seed, &mut out);
    Some(out)
}

/// The TLS 1.0/1.1 PRF (RFC 2246 §5).
pub fn tls1_prf(secret: &[u8], label: &[u8], seed: &[u8], out: &mut [u8]) {
    let half = secret.len().div_ceil(2);
    let (s1, s2) = (&secret[..half], &secret[secret.len() - half..]);
    let mut ls = Vec::with_capacity(label.len() + seed.len());
    ls.extend_from_slice(label);
    ls.extend_from_slice(seed);
    p_md5(s1, &ls, out);
    let mut sha = vec![0u8; out.len()];
    p_sha1(s2, &ls, &mut sha);
    for (o, s) in out.iter_mut().zip(sha) {
        *o ^= s;
    }
}

fn p_sha1(secret: &[u8], seed: &[u8], out: &mut [u8]) {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mut a = hmac::sign(&key, seed);
    for chunk in out.chunks_mut(20) {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(a.as_ref());
        ctx.update(seed);
        let block = ctx.sign();
        chunk.copy_from_slice(&block.as_ref()[..chunk.len()]);
        a = hmac::sign(&key, a.as_ref());
    }
}

fn p_md5(secret: &[u8], seed: &[u8], out: &mut [u8]) {
    let mut a = hmac_md5(secret, &[seed]);
    for chunk in out.chunks_mut(16) {
        let block = hmac_md5(secret, &[&a, seed]);
        chunk.copy_from_slice(&block[..chunk.len()]);
        a = hmac_md5(secret, &[&a]);
    }
}

/// HMAC-MD5 over the concatenation of `parts` (RFC 2104).
fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..16].copy_from_slice(&md5(&[key]));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let mut inner: Vec<&[u8]> = vec![&ipad];
    inner.extend_from_slice(parts);
    let ih = md5(&inner);
    md5(&[&opad, &ih])
}

/// MD5 (RFC 1321) of the concatenation of `parts`.
pub fn md5(parts: &[&[u8]]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    // K[i] = floor(2^32 × |sin(i + 1)|), as RFC 1321 tabulates.
    const K: [u32; 64] = [
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
        0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
        0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
        0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
        0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
        0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
        0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
        0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
        0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
        0xeb86d391,
    ];
    let mut msg: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let bit_len = (msg.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    let mut h: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
    for block in msg.chunks_exact(64) {
        let m: Vec<u32> = block
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let t = d;
            d = c;
            c = b;
            b = b.wrapping_add(
                a.wrapping_add(f)
                    .wrapping_add(K[i])
                    .wrapping_add(m[g])
                    .rotate_left(S[i]),
            );
            a = t;
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
    }
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn md5_and_hmac_md5_vectors() {
        // RFC 1321 appendix A.5.
        assert_eq!(hex(&md5(&[b""])), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(&md5(&[b"abc"])), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hex(&md5(&[
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ])),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
        // RFC 2202 test case 2.
        assert_eq!(
            hex(&hmac_md5(b"Jefe", &[b"what do ya want ", b"for nothing?"])),
            "750c783e6ab0b503eaa86e310a5db738"
        );
    }

    /// Computed with Python's hashlib/hmac from the RFC 2246 definition.
    #[test]
    fn openvpn_key_expansion_vector() {
        let pre: [u8; 48] = std::array::from_fn(|i| i as u8);
        let (c1, s1, c2, s2) = ([1u8; 32], [2u8; 32], [3u8; 32], [4u8; 32]);
        let mut master = [0u8; 48];
        let mut seed = c1.to_vec();
        seed.extend_from_slice(&s1);
        tls1_prf(&pre, MASTER_LABEL, &seed, &mut master);
        assert_eq!(
            hex(&master),
            "fdb21e80f3b6b0e921fdf14137e2cc5743bc3645daba04ae4fc1a691e1caed964d7e19a07d6218b194b9f28bfcd99a71"
        );
        let kb = key_expansion(
            KeySource {
                pre_master: Some(&pre),
                random1: &c1,
                random2: &c2,
            },
            KeySource {
                pre_master: None,
                random1: &s1,
                random2: &s2,
            },
            [5; 8],
            [6; 8],
        )
        .unwrap();
        assert_eq!(
            hex(&kb[..32]),
            "3d2dfe5efd4d35d2d8f55b0d3c0caea77d4782e4ab543ea6853bb143d8606dd3"
        );
        assert_eq!(
            hex(&kb[224..]),
            "7aab709e27ee279249a6d5ec155dd96642b24cf9b700da111e6b82f86a1698d3"
        );
    }
}
