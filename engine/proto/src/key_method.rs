//! The key-method-2 message: the first TLS application data in each direction.
//!
//! ```text
//! u32 0 | u8 key-method (2) | [48 bytes pre-master, client only] | 32 random1 | 32 random2
//! | string options | string username | string password | string peer-info
//! string = u16 length (including a trailing NUL) + bytes; length 0 = absent
//! ```
//!
//! With TLS-EKM key derivation the random fields are unused but still sent.

use std::collections::BTreeMap;
use std::fmt;

use crate::consts::{TLS_OPTIONS_LEN, USER_PASS_LEN, iv_proto};
use crate::wire::{read_u16, read_u32};

/// Errors reading a key-method-2 message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyMethodError {
    /// Ran out of bytes.
    #[error("key-method-2 message truncated")]
    Truncated,
    /// The leading u32 was not zero or the method was not 2.
    #[error("unsupported key method {0}")]
    Method(u8),
    /// A string longer than OpenVPN allows.
    #[error("{0} too long ({1} bytes)")]
    TooLong(&'static str, usize),
    /// A string that is not UTF-8 or not NUL-terminated.
    #[error("{0} is not a valid string")]
    BadString(&'static str),
}

/// A key-method-2 message.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMethod2 {
    /// 48 random bytes, sent by the client only.
    pub pre_master: Option<[u8; 48]>,
    /// Random bytes (legacy PRF input).
    pub random1: [u8; 32],
    /// Random bytes (legacy PRF input).
    pub random2: [u8; 32],
    /// The OCC options string.
    pub options: String,
    /// `auth-user-pass` username.
    pub username: Option<String>,
    /// `auth-user-pass` password.
    pub password: Option<String>,
    /// Peer-info (`IV_*` lines), client to server.
    pub peer_info: Option<String>,
}

impl Drop for KeyMethod2 {
    /// The pre-master secret, the randoms (legacy key derivation input) and the password
    /// are wiped when the message is dropped.
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(p) = self.pre_master.as_mut() {
            p.zeroize();
        }
        self.random1.zeroize();
        self.random2.zeroize();
        if let Some(p) = self.password.as_mut() {
            p.zeroize();
        }
    }
}

impl fmt::Debug for KeyMethod2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMethod2")
            .field("options", &self.options)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("peer_info", &self.peer_info)
            .finish()
    }
}

impl KeyMethod2 {
    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&0u32.to_be_bytes());
        out.push(2);
        if let Some(pm) = &self.pre_master {
            out.extend_from_slice(pm);
        }
        out.extend_from_slice(&self.random1);
        out.extend_from_slice(&self.random2);
        write_string(out, Some(&self.options));
        write_string(out, self.username.as_deref());
        write_string(out, self.password.as_deref());
        write_string(out, self.peer_info.as_deref());
    }

    /// Parses a message. `from_client` selects whether a pre-master secret is present.
    /// Trailing strings that are missing entirely (older peers) read as absent.
    pub fn parse(b: &[u8], from_client: bool) -> Result<KeyMethod2, KeyMethodError> {
        let zero = read_u32(b, 0).ok_or(KeyMethodError::Truncated)?;
        let method = *b.get(4).ok_or(KeyMethodError::Truncated)?;
        if zero != 0 || method & 0x0f != 2 {
            return Err(KeyMethodError::Method(method));
        }
        let mut pos = 5;
        let pre_master = if from_client {
            let pm: [u8; 48] = b
                .get(pos..pos + 48)
                .ok_or(KeyMethodError::Truncated)?
                .try_into()
                .map_err(|_| KeyMethodError::Truncated)?;
            pos += 48;
            Some(pm)
        } else {
            None
        };
        let take32 = |pos: &mut usize| -> Result<[u8; 32], KeyMethodError> {
            let r: [u8; 32] = b
                .get(*pos..*pos + 32)
                .ok_or(KeyMethodError::Truncated)?
                .try_into()
                .map_err(|_| KeyMethodError::Truncated)?;
            *pos += 32;
            Ok(r)
        };
        let random1 = take32(&mut pos)?;
        let random2 = take32(&mut pos)?;
        let options =
            read_string(b, &mut pos, "options", TLS_OPTIONS_LEN, false)?.unwrap_or_default();
        let username = read_string(b, &mut pos, "username", USER_PASS_LEN, true)?;
        let password = read_string(b, &mut pos, "password", USER_PASS_LEN, true)?;
        let peer_info = read_string(b, &mut pos, "peer-info", usize::from(u16::MAX), true)?;
        Ok(KeyMethod2 {
            pre_master,
            random1,
            random2,
            options,
            username,
            password,
            peer_info,
        })
    }
}

fn write_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(&0u16.to_be_bytes()),
        Some(s) => {
            // Callers keep strings far below 64 KiB (options ≤ 512, credentials ≤ 128).
            let len = (s.len() + 1).min(usize::from(u16::MAX)) as u16;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&s.as_bytes()[..usize::from(len) - 1]);
            out.push(0);
        }
    }
}

fn read_string(
    b: &[u8],
    pos: &mut usize,
    what: &'static str,
    limit: usize,
    optional: bool,
) -> Result<Option<String>, KeyMethodError> {
    let Some(len) = read_u16(b, *pos) else {
        return if optional && *pos >= b.len() {
            Ok(None)
        } else {
            Err(KeyMethodError::Truncated)
        };
    };
    *pos += 2;
    let len = usize::from(len);
    if len == 0 {
        return Ok(None);
    }
    if len > limit {
        return Err(KeyMethodError::TooLong(what, len));
    }
    let raw = b.get(*pos..*pos + len).ok_or(KeyMethodError::Truncated)?;
    *pos += len;
    let (last, body) = raw.split_last().ok_or(KeyMethodError::BadString(what))?;
    if *last != 0 {
        return Err(KeyMethodError::BadString(what));
    }
    let s = std::str::from_utf8(body).map_err(|_| KeyMethodError::BadString(what))?;
    Ok(Some(s.to_owned()))
}

/// Parsed peer-info: `KEY=VALUE` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo(pub BTreeMap<String, String>);

impl PeerInfo {
    /// Parses newline-separated `KEY=VALUE` lines; lines without `=` are ignored.
    pub fn parse(s: &str) -> PeerInfo {
        PeerInfo(
            s.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        )
    }

    /// A value by key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The IV_PROTO bit field (0 when absent or malformed).
    pub fn iv_proto(&self) -> u32 {
        self.get("IV_PROTO")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The ciphers the peer offers: IV_CIPHERS, else IV_NCP=2 implies the two AES-GCM ciphers.
    pub fn ciphers(&self) -> Vec<String> {
        if let Some(c) = self.get("IV_CIPHERS") {
            return c.split(':').map(str::to_owned).collect();
        }
        if self.get("IV_NCP").and_then(|v| v.parse::<u32>().ok()) >= Some(2) {
            return vec!["AES-256-GCM".into(), "AES-128-GCM".into()];
        }
        vec![]
    }
}

/// The IV_PROTO bits our client announces: P_DATA_V2, push without request, TLS-EKM, the
/// `dns` option, and EXIT over the control channel.
pub const CLIENT_IV_PROTO: u32 = iv_proto::DATA_V2
    | iv_proto::REQUEST_PUSH
    | iv_proto::TLS_KEY_EXPORT
    | iv_proto::DNS_OPTION
    | iv_proto::CC_EXIT_NOTIFY;

/// Builds our client's peer-info string.
pub fn client_peer_info(
    ciphers: &[crate::data::Cipher],
    tun_mtu_max: u16,
    announce_ekm: bool,
) -> String {
    use crate::data::Cipher;
    let names: Vec<&str> = ciphers.iter().map(|c| c.name()).collect();
    let mut s = format!(
        "IV_VER=2.6.0-tunscope{}\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU={}\n",
        env!("CARGO_PKG_VERSION"),
        tun_mtu_max
    );
    if ciphers.contains(&Cipher::Aes128Gcm) && ciphers.contains(&Cipher::Aes256Gcm) {
        s.push_str("IV_NCP=2\n");
    }
    s.push_str(&format!(
        "IV_CIPHERS={}\nIV_PROTO={}\n",
        names.join(":"),
        if announce_ekm {
            CLIENT_IV_PROTO
        } else {
            CLIENT_IV_PROTO & !iv_proto::TLS_KEY_EXPORT
        }
    ));
    s
}

/// The OCC options string (informational for 2.6 peers; must not contain `comp-lzo`).
pub fn options_string(
    is_server: bool,
    tcp: bool,
    tun_mtu: u16,
    tap: bool,
    cipher: crate::data::Cipher,
    tls_auth: bool,
) -> String {
    let proto = match (tcp, is_server) {
        (false, _) => "UDPv4",
        (true, false) => "TCPv4_CLIENT",
        (true, true) => "TCPv4_SERVER",
    };
    let link_mtu = u32::from(tun_mtu) + 49;
    let mut s = format!(
        "V4,dev-type {},link-mtu {link_mtu},tun-mtu {tun_mtu},proto {proto},cipher {},auth [null-digest],keysize {}",
        if tap { "tap" } else { "tun" },
        cipher.name(),
        cipher.key_len() * 8
    );
    if tls_auth {
        s.push_str(",tls-auth");
    }
    s.push_str(",key-method 2,");
    s.push_str(if is_server {
        "tls-server"
    } else {
        "tls-client"
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Cipher;

    fn sample(client: bool) -> KeyMethod2 {
        KeyMethod2 {
            pre_master: client.then_some([7; 48]),
            random1: [1; 32],
            random2: [2; 32],
            options: "V4,dev-type tun".into(),
            username: client.then(|| "alice".into()),
            password: client.then(|| "secret".into()),
            peer_info: client.then(|| client_peer_info(&Cipher::ALL, 1600, true)),
        }
    }

    #[test]
    fn round_trip_both_directions() {
        for client in [true, false] {
            let m = sample(client);
            let mut b = vec![];
            m.encode(&mut b);
            assert_eq!(KeyMethod2::parse(&b, client), Ok(m));
        }
    }

    #[test]
    fn layout_of_server_message() {
        let mut b = vec![];
        sample(false).encode(&mut b);
        assert_eq!(&b[..5], &[0, 0, 0, 0, 2]);
        // 5 + 64 random + options (2 + 16) + 3 empty strings (2 each)
        assert_eq!(b.len(), 5 + 64 + 2 + 16 + 6);
        assert_eq!(&b[69..71], &[0, 16], "length counts the NUL");
    }

    #[test]
    fn missing_trailing_strings_are_absent() {
        let mut b = vec![];
        sample(false).encode(&mut b);
        b.truncate(b.len() - 6);
        let m = KeyMethod2::parse(&b, false).expect("lenient");
        assert_eq!(m.peer_info, None);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut b = vec![];
        sample(true).encode(&mut b);
        for cut in 0..(5 + 48 + 64 + 2) {
            assert!(KeyMethod2::parse(&b[..cut], true).is_err(), "cut {cut}");
        }
        let mut bad = b.clone();
        bad[4] = 1;
        assert_eq!(
            KeyMethod2::parse(&bad, true),
            Err(KeyMethodError::Method(1))
        );
        // Username length beyond the 128-byte limit.
        let user_len_pos = 5 + 48 + 64 + 2 + 16;
        let mut bad = b.clone();
        bad[user_len_pos..user_len_pos + 2].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(
            KeyMethod2::parse(&bad, true),
            Err(KeyMethodError::TooLong("username", 500))
        );
        // A string without its NUL.
        let mut bad = b.clone();
        bad[user_len_pos + 2 + 5] = b'x';
        assert_eq!(
            KeyMethod2::parse(&bad, true),
            Err(KeyMethodError::BadString("username"))
        );
    }

    #[test]
    fn peer_info_fields() {
        let pi = PeerInfo::parse(&client_peer_info(&Cipher::ALL, 1600, true));
        assert_eq!(pi.iv_proto(), 2 + 4 + 8 + 64 + 128);
        assert_eq!(pi.get("IV_NCP"), Some("2"));
        assert_eq!(
            pi.ciphers(),
            vec!["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"]
        );
        let old = PeerInfo::parse("IV_NCP=2\n");
        assert_eq!(old.ciphers(), vec!["AES-256-GCM", "AES-128-GCM"]);
    }

    #[test]
    fn options_string_never_mentions_compression() {
        let s = options_string(false, true, 1500, false, Cipher::Aes256Gcm, true);
        assert!(s.starts_with("V4,"));
        assert!(s.contains("proto TCPv4_CLIENT"));
        assert!(s.ends_with("tls-client"));
        assert!(!s.contains("comp-lzo"));
    }
}
