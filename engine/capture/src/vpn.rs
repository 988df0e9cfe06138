//! The other VPNs' wire formats, as far as `normalize`/`diff`/golden summaries need them: the
//! kind of each message and the identifiers that tie messages together. Nothing here
//! decrypts; every length is checked, and a payload that does not fit a format is simply not
//! that format.
//!
//! * WireGuard (the protocol's whitepaper, section 5.4): a 1-byte type, 3 reserved zero
//!   bytes, then fixed sizes — handshake initiation (148 bytes), response (92), cookie reply
//!   (64) — or transport data (≥ 32: receiver index, 64-bit counter, ≥ 16 bytes of sealed
//!   data).
//! * ESP (RFC 4303): SPI and sequence number; over IP protocol 50, or in UDP on port 4500
//!   (RFC 3948: a non-zero first word; four zero bytes mark IKE there).
//! * IKE (RFC 7296, and ISAKMP/IKEv1, RFC 2408): the 28-byte header — SPIs, version,
//!   exchange type, flags, message id.
//! * TLS and DTLS records (RFC 8446 / 9147 and earlier): content type and version; for a
//!   handshake record in the clear, the handshake message type (openconnect: TLS on TCP 443,
//!   DTLS on UDP 443).

/// A WireGuard message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireGuard {
    /// Type 1: sender index.
    Initiation {
        /// The initiator's index.
        sender: u32,
    },
    /// Type 2: sender and receiver indices.
    Response {
        /// The responder's index.
        sender: u32,
        /// The initiator's index.
        receiver: u32,
    },
    /// Type 3: the index it answers.
    CookieReply {
        /// The receiver's index.
        receiver: u32,
    },
    /// Type 4: receiver index and counter.
    Transport {
        /// The receiver's index.
        receiver: u32,
        /// The nonce counter.
        counter: u64,
    },
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl WireGuard {
    /// Parses a UDP payload as a WireGuard message (None when it is not one).
    pub fn parse(p: &[u8]) -> Option<WireGuard> {
        if p.get(1..4)? != [0, 0, 0] {
            return None;
        }
        match (p[0], p.len()) {
            (1, 148) => Some(WireGuard::Initiation {
                sender: le32(p, 4)?,
            }),
            (2, 92) => Some(WireGuard::Response {
                sender: le32(p, 4)?,
                receiver: le32(p, 8)?,
            }),
            (3, 64) => Some(WireGuard::CookieReply {
                receiver: le32(p, 4)?,
            }),
            // Sealed data is a multiple of 16, but captures cut packets short: any length
            // from the smallest (a keepalive) up, as Wireshark reads them.
            (4, n) if n >= 32 => Some(WireGuard::Transport {
                receiver: le32(p, 4)?,
                counter: u64::from_le_bytes(p.get(8..16)?.try_into().ok()?),
            }),
            _ => None,
        }
    }

    /// The message's name.
    pub fn kind(&self) -> &'static str {
        match self {
            WireGuard::Initiation { .. } => "handshake-initiation",
            WireGuard::Response { .. } => "handshake-response",
            WireGuard::CookieReply { .. } => "cookie-reply",
            WireGuard::Transport { .. } => "transport",
        }
    }
}

/// An ESP packet's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esp {
    /// Security parameter index.
    pub spi: u32,
    /// Sequence number.
    pub seq: u32,
}

impl Esp {
    /// Parses an ESP header (IP protocol 50's payload, or UDP-encapsulated after the port).
    pub fn parse(p: &[u8]) -> Option<Esp> {
        let spi = be32(p, 0)?;
        // SPI 0 is reserved (and marks IKE in UDP 4500); 1–255 are reserved too.
        if spi < 256 {
            return None;
        }
        Some(Esp {
            spi,
            seq: be32(p, 4)?,
        })
    }
}

/// An IKE (v2) or ISAKMP (IKEv1) message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ike {
    /// Initiator's SPI.
    pub ispi: u64,
    /// Responder's SPI (0 in the first message).
    pub rspi: u64,
    /// Major version (2 or 1).
    pub major: u8,
    /// Exchange type.
    pub exchange: u8,
    /// Flags.
    pub flags: u8,
    /// Message id.
    pub mid: u32,
}

impl Ike {
    /// Parses an IKE header (UDP 500's payload, or UDP 4500's after the four zero bytes).
    pub fn parse(p: &[u8]) -> Option<Ike> {
        let version = *p.get(17)?;
        let major = version >> 4;
        let len = be32(p, 24)? as usize;
        if !(1..=2).contains(&major) || len < 28 {
            return None;
        }
        Some(Ike {
            ispi: u64::from_be_bytes(p.get(0..8)?.try_into().ok()?),
            rspi: u64::from_be_bytes(p.get(8..16)?.try_into().ok()?),
            major,
            exchange: *p.get(18)?,
            flags: *p.get(19)?,
            mid: be32(p, 20)?,
        })
    }

    /// `IKE_SA_INIT request`, `IKE_AUTH response`, `ISAKMP Identity Protection` …
    pub fn describe(&self) -> String {
        if self.major == 2 {
            let x = match self.exchange {
                34 => "IKE_SA_INIT".to_owned(),
                35 => "IKE_AUTH".to_owned(),
                36 => "CREATE_CHILD_SA".to_owned(),
                37 => "INFORMATIONAL".to_owned(),
                38 => "IKE_SESSION_RESUME".to_owned(),
                43 => "IKE_INTERMEDIATE".to_owned(),
                n => format!("exchange-{n}"),
            };
            // Flags: I (0x08) initiator, R (0x20) response.
            let role = if self.flags & 0x20 != 0 {
                "response"
            } else {
                "request"
            };
            format!("{x} {role}")
        } else {
            let x = match self.exchange {
                1 => "Base".to_owned(),
                2 => "Identity Protection".to_owned(),
                3 => "Authentication Only".to_owned(),
                4 => "Aggressive".to_owned(),
                5 => "Informational".to_owned(),
                32 => "Quick Mode".to_owned(),
                33 => "New Group Mode".to_owned(),
                n => format!("exchange-{n}"),
            };
            format!("ISAKMP {x}")
        }
    }
}

/// A TLS or DTLS record header (and, for a cleartext handshake record, its message type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsRecord {
    /// Content type (20 change_cipher_spec, 21 alert, 22 handshake, 23 application_data).
    pub content: u8,
    /// DTLS (13-byte header with epoch and sequence) rather than TLS (5 bytes).
    pub dtls: bool,
    /// The epoch (DTLS).
    pub epoch: u16,
    /// The handshake message type of a handshake record, when readable.
    pub handshake: Option<u8>,
    /// Bytes of the record, header included.
    pub len: usize,
}

impl TlsRecord {
    /// Parses the record at the start of `p` (TLS when `dtls` is false).
    pub fn parse(p: &[u8], dtls: bool) -> Option<TlsRecord> {
        let content = *p.first()?;
        if !(20..=24).contains(&content) {
            return None;
        }
        let (major, minor) = (*p.get(1)?, *p.get(2)?);
        let (hlen, epoch) = if dtls {
            // DTLS 1.0 is 0xfeff, 1.2 0xfefd (1.3's records are sent with 1.2's number);
            // 0x0100 is OpenSSL's DTLS before 0.9.8f, still in old captures.
            if !matches!((major, minor), (0xfe, 0xff) | (0xfe, 0xfd) | (0x01, 0x00)) {
                return None;
            }
            (13, u16::from_be_bytes([*p.get(3)?, *p.get(4)?]))
        } else {
            if major != 3 || minor > 4 {
                return None;
            }
            (5, 0)
        };
        let body = usize::from(u16::from_be_bytes([*p.get(hlen - 2)?, *p.get(hlen - 1)?]));
        // TLS allows 2^14 + 2048 bytes of ciphertext; more is not TLS.
        if body > 18_432 {
            return None;
        }
        let handshake = (content == 22 && epoch == 0)
            .then(|| p.get(hlen).copied())
            .flatten();
        Some(TlsRecord {
            content,
            dtls,
            epoch,
            handshake,
            len: hlen + body,
        })
    }

    /// Every record of a datagram (DTLS packs several), as long as they parse and fit.
    pub fn all(mut p: &[u8], dtls: bool) -> Vec<TlsRecord> {
        let mut out = vec![];
        while let Some(r) = TlsRecord::parse(p, dtls) {
            out.push(r);
            match p.get(r.len..) {
                Some(rest) if !rest.is_empty() => p = rest,
                _ => break,
            }
            if out.len() >= 64 {
                break;
            }
        }
        out
    }

    /// `handshake client_hello`, `application_data`, `alert` …
    pub fn describe(&self) -> String {
        let c = match self.content {
            20 => "change_cipher_spec",
            21 => "alert",
            22 => "handshake",
            23 => "application_data",
            _ => "heartbeat",
        };
        match (self.content, self.handshake) {
            (22, Some(h)) => {
                let m = match h {
                    0 => "hello_request".to_owned(),
                    1 => "client_hello".to_owned(),
                    2 => "server_hello".to_owned(),
                    3 => "hello_verify_request".to_owned(),
                    4 => "new_session_ticket".to_owned(),
                    11 => "certificate".to_owned(),
                    12 => "server_key_exchange".to_owned(),
                    13 => "certificate_request".to_owned(),
                    14 => "server_hello_done".to_owned(),
                    15 => "certificate_verify".to_owned(),
                    16 => "client_key_exchange".to_owned(),
                    20 => "finished".to_owned(),
                    n => format!("type-{n}"),
                };
                format!("{c} {m}")
            }
            (22, None) => format!("{c} (encrypted)"),
            _ => c.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wireguard_messages_by_type_and_size() {
        let mut init = vec![0u8; 148];
        init[0] = 1;
        init[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            WireGuard::parse(&init),
            Some(WireGuard::Initiation { sender: 7 })
        );
        // Wrong size or non-zero reserved bytes: not WireGuard.
        assert_eq!(WireGuard::parse(&init[..147]), None);
        init[2] = 1;
        assert_eq!(WireGuard::parse(&init), None);
        let mut data = vec![0u8; 48];
        data[0] = 4;
        data[8] = 5;
        assert_eq!(
            WireGuard::parse(&data),
            Some(WireGuard::Transport {
                receiver: 0,
                counter: 5
            })
        );
        assert_eq!(
            WireGuard::parse(&data[..31]),
            None,
            "shorter than a keepalive"
        );
    }

    #[test]
    fn ike_esp_and_tls_headers() {
        let mut ike = vec![0u8; 28];
        ike[0] = 1;
        ike[17] = 0x20;
        ike[18] = 34;
        ike[19] = 0x08;
        ike[24..28].copy_from_slice(&28u32.to_be_bytes());
        let h = Ike::parse(&ike).expect("ike");
        assert_eq!(h.describe(), "IKE_SA_INIT request");
        ike[19] = 0x20;
        assert_eq!(
            Ike::parse(&ike).expect("ike").describe(),
            "IKE_SA_INIT response"
        );
        assert_eq!(Ike::parse(&ike[..27]), None);
        assert_eq!(
            Esp::parse(&[0, 0, 0, 0, 0, 0, 0, 1]),
            None,
            "SPI 0 is IKE's marker"
        );
        assert_eq!(
            Esp::parse(&[0, 0, 1, 0, 0, 0, 0, 9]),
            Some(Esp { spi: 256, seq: 9 })
        );
        let hello = [22, 3, 1, 0, 4, 1, 0, 0, 0];
        let r = TlsRecord::parse(&hello, false).expect("tls");
        assert_eq!(r.describe(), "handshake client_hello");
        let dtls = [
            23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 2, 0, 1, 0xaa, 22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0,
            0, 3, 0, 1, 1,
        ];
        let all = TlsRecord::all(&dtls, true);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].describe(), "application_data");
        assert_eq!(all[1].describe(), "handshake client_hello");
        // Every truncation of every format: not that format, or a shorter one; never a panic.
        for n in 0..dtls.len() {
            let _ = TlsRecord::all(&dtls[..n], true);
        }
        for n in 0..ike.len() {
            assert_eq!(Ike::parse(&ike[..n]), None);
            let _ = Esp::parse(&ike[..n]);
            let _ = WireGuard::parse(&ike[..n]);
        }
    }
}
