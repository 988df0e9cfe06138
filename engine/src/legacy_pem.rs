//! Traditional encrypted PEM keys: `BEGIN RSA|EC PRIVATE KEY` with `Proc-Type: 4,ENCRYPTED`
//! and `DEK-Info: CIPHER,IV`, as `openssl genrsa -des3|-aes256`, `openssl ec -aes256` and
//! easy-rsa 2 wrote them (and many old `.ovpn` bundles still carry them, with `askpass`).
//!
//! The key is OpenSSL's `EVP_BytesToKey` with MD5 and one round: `D1 = MD5(password ‖
//! salt)`, `Di = MD5(Di-1 ‖ password ‖ salt)`, concatenated to the key length, the salt being
//! the first 8 bytes of the IV. The body is CBC with PKCS#7 padding: AES-128/192/256 (through
//! AWS-LC) or DES-EDE3 (the `des` crate; AWS-LC's Rust API has no 3DES). What comes out is
//! the PKCS#1 (RSA) or SEC1 (EC) key.

use anyhow::{Result, anyhow, bail};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivateSec1KeyDer};

/// Whether `text` holds a traditional encrypted PEM key.
pub fn is_encrypted(text: &str) -> bool {
    text.contains("Proc-Type: 4,ENCRYPTED")
}

/// Decrypts the traditional encrypted PEM key in `text` with `password`.
pub fn decrypt(text: &str, password: &[u8]) -> Result<PrivateKeyDer<'static>> {
    let Block {
        kind,
        headers,
        body,
    } = split(text)?;
    let dek = headers
        .iter()
        .find_map(|(k, v)| (*k == "DEK-Info").then_some(*v))
        .ok_or_else(|| anyhow!("no DEK-Info header"))?;
    let (cipher, iv_hex) = dek
        .split_once(',')
        .ok_or_else(|| anyhow!("DEK-Info '{dek}' names no IV"))?;
    let iv = hex(iv_hex.trim()).ok_or_else(|| anyhow!("DEK-Info IV is not hex"))?;
    let mut data = tunscope_proto::base64::decode(body).ok_or_else(|| anyhow!("not base64"))?;
    let plain = match cipher.trim() {
        c @ ("AES-128-CBC" | "AES-192-CBC" | "AES-256-CBC") => {
            let len = match c {
                "AES-128-CBC" => 16,
                "AES-192-CBC" => 24,
                _ => 32,
            };
            let iv: [u8; 16] = iv
                .as_slice()
                .try_into()
                .map_err(|_| anyhow!("IV is not 16 bytes"))?;
            let key = derive(password, &iv[..8], len);
            aes_cbc(&key, iv, &mut data)?
        }
        "DES-EDE3-CBC" => {
            let iv: [u8; 8] = iv
                .as_slice()
                .try_into()
                .map_err(|_| anyhow!("IV is not 8 bytes"))?;
            let key = derive(password, &iv, 24);
            des3_cbc(&key, iv, &mut data)?
        }
        other => bail!(
            "cipher {other} is not supported for traditional PEM keys (AES-128/192/256-CBC and DES-EDE3-CBC are): convert the key with 'openssl pkcs8 -topk8'"
        ),
    };
    // A wrong password can leave valid-looking padding (1 in 256): the result must also be
    // one whole DER SEQUENCE.
    if !is_der_sequence(&plain) {
        bail!("cannot decrypt it (wrong password?)");
    }
    Ok(match kind {
        "RSA" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(plain)),
        "EC" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(plain)),
        other => bail!("{other} keys are not supported"),
    })
}

/// The parts of a traditional key block.
struct Block<'a> {
    /// `RSA` or `EC` (from `BEGIN RSA PRIVATE KEY`).
    kind: &'a str,
    /// `Proc-Type`, `DEK-Info`, … as (name, value).
    headers: Vec<(&'a str, &'a str)>,
    /// The base64 body.
    body: &'a str,
}

/// The first traditional key block of `text`.
fn split(text: &str) -> Result<Block<'_>> {
    let begin = text
        .find("-----BEGIN ")
        .ok_or_else(|| anyhow!("no BEGIN line"))?;
    let rest = &text[begin + "-----BEGIN ".len()..];
    let kind_end = rest
        .find(" PRIVATE KEY-----")
        .ok_or_else(|| anyhow!("not a PRIVATE KEY block"))?;
    let kind = &rest[..kind_end];
    let rest = &rest[kind_end + " PRIVATE KEY-----".len()..];
    let end = rest
        .find("-----END ")
        .ok_or_else(|| anyhow!("unterminated key block"))?;
    let block = &rest[..end];
    let mut headers = vec![];
    let mut body_start = 0;
    for line in block.split_inclusive('\n') {
        let l = line.trim();
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim(), v.trim()));
            body_start += line.len();
        } else if l.is_empty() {
            body_start += line.len();
            if !headers.is_empty() {
                break;
            }
        } else {
            break;
        }
    }
    Ok(Block {
        kind,
        headers,
        body: &block[body_start..],
    })
}

/// Whether `der` is exactly one DER SEQUENCE (tag, length, that many bytes).
fn is_der_sequence(der: &[u8]) -> bool {
    let (Some(&0x30), Some(&first)) = (der.first(), der.get(1)) else {
        return false;
    };
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || der.len() < 2 + n {
            return false;
        }
        let len = der[2..2 + n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, 2 + n)
    };
    header + len == der.len()
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// OpenSSL's `EVP_BytesToKey(MD5, salt, password, 1 round)`, `len` bytes of key.
fn derive(password: &[u8], salt: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut prev: Option<[u8; 16]> = None;
    while out.len() < len {
        let d = match &prev {
            Some(p) => tunscope_proto::prf::md5(&[p, password, salt]),
            None => tunscope_proto::prf::md5(&[password, salt]),
        };
        out.extend_from_slice(&d);
        prev = Some(d);
    }
    out.truncate(len);
    out
}

fn aes_cbc(key: &[u8], iv: [u8; 16], data: &mut [u8]) -> Result<Vec<u8>> {
    use aws_lc_rs::cipher::{
        AES_128, AES_192, AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey,
    };
    let alg = match key.len() {
        16 => &AES_128,
        24 => &AES_192,
        _ => &AES_256,
    };
    let k = UnboundCipherKey::new(alg, key).map_err(|_| anyhow!("bad AES key"))?;
    let dec = PaddedBlockDecryptingKey::cbc_pkcs7(k).map_err(|_| anyhow!("bad AES key"))?;
    let plain = dec
        .decrypt(data, DecryptionContext::Iv128(iv.into()))
        .map_err(|_| anyhow!("cannot decrypt it (wrong password?)"))?;
    Ok(plain.to_vec())
}

fn des3_cbc(key: &[u8], iv: [u8; 8], data: &mut [u8]) -> Result<Vec<u8>> {
    use des::cipher::{Block, BlockCipherDecrypt, KeyInit};
    if data.is_empty() || !data.len().is_multiple_of(8) {
        bail!("cannot decrypt it: not whole DES blocks");
    }
    let cipher = des::TdesEde3::new_from_slice(key).map_err(|_| anyhow!("bad 3DES key"))?;
    let mut prev = iv;
    for chunk in data.chunks_exact_mut(8) {
        let mut this = [0u8; 8];
        this.copy_from_slice(chunk);
        let block =
            <&mut Block<des::TdesEde3>>::try_from(&mut *chunk).map_err(|_| anyhow!("DES block"))?;
        cipher.decrypt_block(block);
        for (b, p) in chunk.iter_mut().zip(prev) {
            *b ^= p;
        }
        prev = this;
    }
    let pad = usize::from(*data.last().unwrap_or(&0));
    let valid = (1..=8).contains(&pad)
        && data.len() >= pad
        && data[data.len() - pad..]
            .iter()
            .all(|b| usize::from(*b) == pad);
    if !valid {
        bail!("cannot decrypt it (wrong password?)");
    }
    Ok(data[..data.len() - pad].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenSSL's own key derivation for a known case: `openssl enc -aes-256-cbc -P -nosalt`
    /// style check is not available offline, so the first block equals MD5(password ‖ salt).
    #[test]
    fn key_derivation_is_evp_bytes_to_key() {
        let k = derive(b"pw", b"12345678", 32);
        assert_eq!(k[..16], tunscope_proto::prf::md5(&[b"pw", b"12345678"]));
        let d1 = tunscope_proto::prf::md5(&[b"pw", b"12345678"]);
        assert_eq!(
            k[16..],
            tunscope_proto::prf::md5(&[&d1, b"pw", b"12345678"])
        );
    }

    /// Keys made by the openssl tool (when present) in each cipher decrypt to what openssl
    /// itself decrypts them to; a wrong password is a clear error.
    #[test]
    fn openssl_keys_decrypt() {
        let dir = std::env::temp_dir().join(format!("tunscope-legacy-pem-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let run = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| o.stdout)
        };
        let plain = dir.join("plain.key");
        let Some(_) = run(&[
            "genrsa",
            "-traditional",
            "-out",
            plain.to_str().unwrap_or(""),
            "1024",
        ]) else {
            eprintln!("no openssl here: skipped");
            return;
        };
        let want = run(&[
            "rsa",
            "-in",
            plain.to_str().unwrap_or(""),
            "-traditional",
            "-outform",
            "DER",
        ])
        .expect("openssl rsa");
        for c in ["-aes128", "-aes192", "-aes256", "-des3"] {
            let enc = run(&[
                "rsa",
                "-in",
                plain.to_str().unwrap_or(""),
                "-traditional",
                c,
                "-passout",
                "pass:s3cret",
            ])
            .expect("openssl rsa -enc");
            let text = String::from_utf8(enc).expect("utf-8");
            assert!(is_encrypted(&text), "{c}");
            let key = decrypt(&text, b"s3cret").expect(c);
            assert_eq!(key.secret_der(), want.as_slice(), "{c}");
            let e = decrypt(&text, b"wrong").expect_err("wrong password");
            assert!(e.to_string().contains("wrong password"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
