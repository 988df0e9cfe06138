//! The "OpenVPN Static key V1" file format used by `tls-auth` and `tls-crypt`, and the
//! `key2` layout shared with the data-channel key block.
//!
//! 256 bytes = two keys, each 64 bytes of cipher key followed by 64 bytes of HMAC key. An
//! algorithm uses the leading bytes of a slot.

use std::fmt;

use crate::consts::KEY2_LEN;

const HEAD: &str = "-----BEGIN OpenVPN Static key V1-----";
const FOOT: &str = "-----END OpenVPN Static key V1-----";

/// Which of the two keys of a key2 block is used for sending and which for receiving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDirection {
    /// Key 0 both ways (no direction given).
    Bidirectional,
    /// Send with key 0, receive with key 1 (`key-direction 0`).
    Normal,
    /// Send with key 1, receive with key 0 (`key-direction 1`).
    Inverse,
}

impl KeyDirection {
    /// Index of the key used for sending.
    pub fn send_index(self) -> usize {
        match self {
            KeyDirection::Bidirectional | KeyDirection::Normal => 0,
            KeyDirection::Inverse => 1,
        }
    }

    /// Index of the key used for receiving.
    pub fn recv_index(self) -> usize {
        match self {
            KeyDirection::Bidirectional | KeyDirection::Inverse => 0,
            KeyDirection::Normal => 1,
        }
    }
}

/// Why a static key file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StaticKeyError {
    /// The BEGIN line is missing.
    #[error("missing '{HEAD}' line")]
    NoHeader,
    /// The END line is missing.
    #[error("missing '{FOOT}' line")]
    NoFooter,
    /// A character that is neither hex nor whitespace.
    #[error("invalid character {0:?} in static key")]
    BadChar(char),
    /// Not exactly 256 bytes.
    #[error("static key has {0} bytes, expected 256")]
    BadLength(usize),
}

/// A 256-byte key2 block.
#[derive(Clone, PartialEq, Eq)]
pub struct Key2(pub [u8; KEY2_LEN]);

impl Drop for Key2 {
    /// Key material does not outlive its use in freed memory.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Key2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key2(..)")
    }
}

impl Key2 {
    /// Parses the PEM-like static key file text.
    pub fn parse(text: &str) -> Result<Key2, StaticKeyError> {
        let start = text.find(HEAD).ok_or(StaticKeyError::NoHeader)? + HEAD.len();
        let end = text[start..].find(FOOT).ok_or(StaticKeyError::NoFooter)? + start;
        let mut bytes = Vec::with_capacity(KEY2_LEN);
        let mut high: Option<u8> = None;
        for c in text[start..end].chars() {
            if c.is_whitespace() {
                continue;
            }
            let v = c.to_digit(16).ok_or(StaticKeyError::BadChar(c))? as u8;
            match high.take() {
                None => high = Some(v),
                Some(h) => bytes.push(h << 4 | v),
            }
        }
        if high.is_some() || bytes.len() != KEY2_LEN {
            return Err(StaticKeyError::BadLength(bytes.len()));
        }
        let mut k = [0u8; KEY2_LEN];
        k.copy_from_slice(&bytes);
        Ok(Key2(k))
    }

    /// Writes the file format (16 bytes per line, like `openvpn --genkey`).
    pub fn to_pem(&self) -> String {
        let mut s = String::from("#\n# 2048 bit OpenVPN static key\n#\n");
        s.push_str(HEAD);
        s.push('\n');
        for line in self.0.chunks(16) {
            for b in line {
                s.push_str(&format!("{b:02x}"));
            }
            s.push('\n');
        }
        s.push_str(FOOT);
        s.push('\n');
        s
    }

    /// The 64-byte cipher slot of key `i` (0 or 1).
    pub fn cipher(&self, i: usize) -> &[u8] {
        &self.0[i * 128..i * 128 + 64]
    }

    /// The 64-byte HMAC slot of key `i` (0 or 1).
    pub fn hmac(&self, i: usize) -> &[u8] {
        &self.0[i * 128 + 64..i * 128 + 128]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_slots() {
        let mut k = [0u8; KEY2_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        let key = Key2(k);
        let parsed = Key2::parse(&key.to_pem()).expect("parses");
        assert_eq!(parsed, key);
        assert_eq!(parsed.cipher(1)[0], 128);
        assert_eq!(parsed.hmac(1)[0], 192);
        assert_eq!(parsed.hmac(0)[0], 64);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(Key2::parse("nothing"), Err(StaticKeyError::NoHeader));
        assert_eq!(
            Key2::parse(&format!("{HEAD}\nab")),
            Err(StaticKeyError::NoFooter)
        );
        assert_eq!(
            Key2::parse(&format!("{HEAD}\nzz\n{FOOT}")),
            Err(StaticKeyError::BadChar('z'))
        );
        assert_eq!(
            Key2::parse(&format!("{HEAD}\nabcd\n{FOOT}")),
            Err(StaticKeyError::BadLength(2))
        );
    }

    #[test]
    fn directions() {
        assert_eq!(KeyDirection::Normal.send_index(), 0);
        assert_eq!(KeyDirection::Normal.recv_index(), 1);
        assert_eq!(KeyDirection::Inverse.send_index(), 1);
        assert_eq!(KeyDirection::Inverse.recv_index(), 0);
        assert_eq!(KeyDirection::Bidirectional.recv_index(), 0);
    }
}
