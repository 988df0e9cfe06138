//! OpenVPN packet headers as seen in a capture: opcode, key-id, peer-id, session ids, ACKs,
//! message packet-id and what the TLS payload is.
//!
//! Control packets are decoded in the plain layout (no `tls-auth`/`tls-crypt`). With a wrap
//! the bytes after the session id are an HMAC or ciphertext; such packets still give opcode,
//! key-id and session id, and are marked `wrapped`. The layout is recognised by checking
//! that the plain reading is consistent (ACK count, lengths, a TLS record or nothing).

use serde::Serialize;

/// Opcode names as OpenVPN spells them.
pub fn opcode_name(op: u8) -> &'static str {
    match op {
        1 => "P_CONTROL_HARD_RESET_CLIENT_V1",
        2 => "P_CONTROL_HARD_RESET_SERVER_V1",
        3 => "P_CONTROL_SOFT_RESET_V1",
        4 => "P_CONTROL_V1",
        5 => "P_ACK_V1",
        6 => "P_DATA_V1",
        7 => "P_CONTROL_HARD_RESET_CLIENT_V2",
        8 => "P_CONTROL_HARD_RESET_SERVER_V2",
        9 => "P_DATA_V2",
        10 => "P_CONTROL_HARD_RESET_CLIENT_V3",
        11 => "P_CONTROL_WKC_V1",
        _ => "P_UNKNOWN",
    }
}

/// A decoded OpenVPN header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ovpn {
    /// Opcode (upper five bits of the first byte).
    pub opcode: u8,
    /// Key-id (lower three bits).
    pub key_id: u8,
    /// Peer-id of P_DATA_V2.
    pub peer_id: Option<u32>,
    /// Sender's session id (control packets).
    pub session: Option<[u8; 8]>,
    /// Acknowledged peer session id, when ACKs are present (plain layout).
    pub remote_session: Option<[u8; 8]>,
    /// Number of ACKs carried (plain layout).
    pub acks: Option<usize>,
    /// Message packet-id of a control packet, or the data packet-id.
    pub packet_id: Option<u32>,
    /// What the payload is: `tls handshake ClientHello`, `tls application-data`, …
    pub payload: Option<String>,
    /// Control packet in a `tls-auth`/`tls-crypt` wrap (fields past the session id unknown
    /// unless the wrap is known and is tls-auth).
    pub wrapped: bool,
    /// The wrap, when known (learned from the session's first packet).
    pub wrap: Option<Wrap>,
}

/// How a session's control packets are wrapped, as learned from its first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Wrap {
    /// No wrap: ACKs, packet-id and TLS records in the clear.
    Plain,
    /// `tls-auth`: an HMAC of this many bytes, a replay packet-id and time, then the plain
    /// fields.
    TlsAuth(usize),
    /// `tls-crypt`: replay packet-id, time, tag, then ciphertext.
    TlsCrypt,
    /// `tls-crypt-v2`: as tls-crypt (the client's first packet also carries its WKc).
    TlsCryptV2,
}

impl Wrap {
    /// The option's name (`none` for no wrap).
    pub fn name(self) -> &'static str {
        match self {
            Wrap::Plain => "none",
            Wrap::TlsAuth(_) => "tls-auth",
            Wrap::TlsCrypt => "tls-crypt",
            Wrap::TlsCryptV2 => "tls-crypt-v2",
        }
    }
}

/// The first message packet-id of a 2.6 peer that supports early negotiation
/// (`EARLY_NEG_START` in OpenVPN's ssl_pkt.h), instead of 0.
const EARLY_NEG_START: u32 = 0x0f00_0000;

/// HMAC lengths of the `auth` digests OpenVPN uses for tls-auth (SHA1 first: the default).
const TLS_AUTH_HMACS: [usize; 6] = [20, 32, 64, 48, 28, 16];

/// A replay time (seconds since the epoch) a real peer could have sent: within a year of
/// the capture's own clock when known, else 2008 to 2100.
fn plausible_time(t: u32, now_s: Option<u64>) -> bool {
    let t = u64::from(t);
    match now_s {
        Some(now) if now > 1_200_000_000 => t.abs_diff(now) <= 366 * 86_400,
        _ => (1_200_000_000..4_102_444_800).contains(&t),
    }
}

/// 2.6's early-negotiation TLVs, or nothing, after a client's hard reset.
fn reset_tail_ok(rest: &[u8]) -> bool {
    let mut r = rest;
    while !r.is_empty() {
        let Some(len) = r
            .get(2..4)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return false;
        };
        let Some(next) = r.get(4 + len..) else {
            return false;
        };
        r = next;
    }
    true
}

/// Recognises the first packet of an OpenVPN session (a client's hard reset, V2 or V3) on
/// any port, from its structure alone, and says which wrap it uses. A UDP payload, or a TCP
/// record without its length prefix.
///
/// Plain: ack count 0 and message packet-id 0 at fixed offsets, then nothing or
/// early-negotiation TLVs. tls-auth: after an HMAC of one of the digest lengths, replay
/// packet-id 1 and a plausible time, then the plain fields as above. tls-crypt(-v2):
/// replay packet-id 1 and a plausible time right after the session id.
///
/// `now_s` is the capture's timestamp of the packet (seconds since the epoch), when it has
/// one: a replay time far from it is no OpenVPN.
pub fn client_reset(p: &[u8], now_s: Option<u64>) -> Option<Wrap> {
    let first = *p.first()?;
    let (opcode, key_id) = (first >> 3, first & 7);
    if key_id != 0 || !matches!(opcode, 7 | 10) {
        return None;
    }
    let replay_ok = |at: usize| {
        be32(p, at) == Some(1) && be32(p, at + 4).is_some_and(|t| plausible_time(t, now_s))
    };
    // The message packet-id of a client's reset: 0, or 2.6's marker for early negotiation.
    let first_msg = |at: usize| matches!(be32(p, at), Some(0 | EARLY_NEG_START));
    if opcode == 10 {
        // V3 exists only with tls-crypt-v2; its replay packet-id varies between versions,
        // the time does not.
        return (p.len() >= 9 + 8 + 32 && be32(p, 13).is_some_and(|t| plausible_time(t, now_s)))
            .then_some(Wrap::TlsCryptV2);
    }
    if p.len() >= 14 && p[9] == 0 && first_msg(10) && reset_tail_ok(&p[14..]) {
        return Some(Wrap::Plain);
    }
    for h in TLS_AUTH_HMACS {
        let at = 9 + h;
        if replay_ok(at)
            && p.get(at + 8) == Some(&0)
            && first_msg(at + 9)
            && reset_tail_ok(p.get(at + 13..).unwrap_or_default())
        {
            return Some(Wrap::TlsAuth(h));
        }
    }
    if p.len() >= 9 + 8 + 32 && replay_ok(9) {
        return Some(Wrap::TlsCrypt);
    }
    None
}

impl Ovpn {
    /// The opcode's name.
    pub fn name(&self) -> &'static str {
        opcode_name(self.opcode)
    }

    /// A data packet (P_DATA_V1/V2).
    pub fn is_data(&self) -> bool {
        matches!(self.opcode, 6 | 9)
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn handshake_type(t: u8) -> &'static str {
    match t {
        1 => "ClientHello",
        2 => "ServerHello",
        4 => "NewSessionTicket",
        8 => "EncryptedExtensions",
        11 => "Certificate",
        12 => "ServerKeyExchange",
        13 => "CertificateRequest",
        14 => "ServerHelloDone",
        15 => "CertificateVerify",
        16 => "ClientKeyExchange",
        20 => "Finished",
        _ => "handshake",
    }
}

/// Names the TLS records that start in `p` (`None` when `p` does not start with one).
fn tls_records(p: &[u8]) -> Option<String> {
    let mut out: Vec<String> = vec![];
    let mut pos = 0;
    while pos + 5 <= p.len() {
        let ct = p[pos];
        if !(20..=23).contains(&ct) || p[pos + 1] != 3 || p[pos + 2] > 4 {
            break;
        }
        let len = usize::from(u16::from_be_bytes([p[pos + 3], p[pos + 4]]));
        let name = match ct {
            20 => "change-cipher-spec".to_owned(),
            21 => "alert".to_owned(),
            22 => match p.get(pos + 5) {
                Some(t) => format!("handshake {}", handshake_type(*t)),
                None => "handshake".to_owned(),
            },
            _ => "application-data".to_owned(),
        };
        if out.last() != Some(&name) {
            out.push(name);
        }
        pos += 5 + len;
    }
    if out.is_empty() {
        None
    } else {
        Some(format!("tls {}", out.join(", ")))
    }
}

/// Decodes an OpenVPN packet (one UDP payload, or one record of a TCP stream without its
/// length prefix), guessing whether control packets are wrapped.
pub fn decode(p: &[u8]) -> Option<Ovpn> {
    decode_with(p, None)
}

/// Decodes an OpenVPN packet of a session whose wrap is known (from [`client_reset`]).
pub fn decode_with(p: &[u8], wrap: Option<Wrap>) -> Option<Ovpn> {
    let first = *p.first()?;
    let opcode = first >> 3;
    let key_id = first & 7;
    if !(1..=11).contains(&opcode) {
        return None;
    }
    let mut o = Ovpn {
        opcode,
        key_id,
        peer_id: None,
        session: None,
        remote_session: None,
        acks: None,
        packet_id: None,
        payload: None,
        wrapped: false,
        wrap,
    };
    match opcode {
        9 => {
            let b = p.get(1..4)?;
            o.peer_id = Some(u32::from_be_bytes([0, b[0], b[1], b[2]]));
            o.packet_id = be32(p, 4);
            return Some(o);
        }
        6 => {
            o.packet_id = be32(p, 1);
            return Some(o);
        }
        _ => {}
    }
    o.session = Some(p.get(1..9)?.try_into().ok()?);
    // Where the plain fields start: after the session id, or after tls-auth's HMAC and
    // replay packet-id/time. tls-crypt encrypts them.
    let start = match wrap {
        None | Some(Wrap::Plain) => 9,
        Some(Wrap::TlsAuth(h)) => 9 + h + 8,
        Some(Wrap::TlsCrypt | Wrap::TlsCryptV2) => {
            o.wrapped = true;
            return Some(o);
        }
    };
    // Plain layout: ack count, acks, remote session id (when acks), message packet-id
    // (not in P_ACK_V1), payload.
    let plain = (|| {
        let n = usize::from(*p.get(start)?);
        if n > 8 {
            return None;
        }
        let mut pos = start + 1 + 4 * n;
        let mut remote = None;
        if n > 0 {
            remote = Some(<[u8; 8]>::try_from(p.get(pos..pos + 8)?).ok()?);
            pos += 8;
        }
        let mut pid = None;
        if opcode != 5 {
            pid = Some(be32(p, pos)?);
            pos += 4;
        }
        let payload = p.get(pos..)?;
        let what = if payload.is_empty() {
            None
        } else if let Some(t) = tls_records(payload) {
            Some(t)
        } else if matches!(opcode, 7 | 10) {
            // 2.6 early negotiation TLVs in the client's hard reset.
            Some("early-negotiation".to_owned())
        } else if opcode == 4 {
            Some("tls continuation".to_owned())
        } else {
            return None;
        };
        if opcode == 5 && !payload.is_empty() {
            return None;
        }
        Some((n, remote, pid, what))
    })();
    match plain {
        Some((n, remote, pid, what)) => {
            o.acks = Some(n);
            o.remote_session = remote;
            o.packet_id = pid;
            o.payload = what;
        }
        None => o.wrapped = true,
    }
    if matches!(wrap, Some(Wrap::TlsAuth(_))) {
        o.wrapped = true;
    }
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_control_and_data() {
        // Client hard reset: opcode 7 key 0, session id, no acks, packet-id 0.
        let mut reset = vec![7 << 3];
        reset.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0]);
        let o = decode(&reset).unwrap();
        assert_eq!(
            (o.name(), o.acks, o.packet_id, o.wrapped),
            ("P_CONTROL_HARD_RESET_CLIENT_V2", Some(0), Some(0), false)
        );
        // P_CONTROL_V1 with one ack and a ClientHello record.
        let mut ctl = vec![4 << 3];
        ctl.extend_from_slice(&[9; 8]);
        ctl.extend_from_slice(&[1, 0, 0, 0, 0]);
        ctl.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        ctl.extend_from_slice(&[0, 0, 0, 1]);
        ctl.extend_from_slice(&[22, 3, 1, 0, 4, 1, 0, 0, 0]);
        let o = decode(&ctl).unwrap();
        assert_eq!(o.payload.as_deref(), Some("tls handshake ClientHello"));
        assert_eq!(o.remote_session, Some([1, 2, 3, 4, 5, 6, 7, 8]));
        // P_DATA_V2 key 1 peer 5.
        let o = decode(&[(9 << 3) | 1, 0, 0, 5, 0, 0, 0, 42, 0xaa]).unwrap();
        assert_eq!((o.key_id, o.peer_id, o.packet_id), (1, Some(5), Some(42)));
        // tls-auth wrapped: an HMAC where the ack count would be.
        let mut wrapped = vec![4 << 3];
        wrapped.extend_from_slice(&[9; 8]);
        wrapped.extend_from_slice(&[0xee; 40]);
        assert!(decode(&wrapped).unwrap().wrapped);
        assert!(decode(&[0xff]).is_none());
        assert!(decode(&[]).is_none());
    }
}
