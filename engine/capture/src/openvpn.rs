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
    /// Control packet in a `tls-auth`/`tls-crypt` wrap (fields past the session id unknown).
    pub wrapped: bool,
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
/// length prefix).
pub fn decode(p: &[u8]) -> Option<Ovpn> {
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
    // Plain layout: ack count, acks, remote session id (when acks), message packet-id
    // (not in P_ACK_V1), payload.
    let plain = (|| {
        let n = usize::from(*p.get(9)?);
        if n > 8 {
            return None;
        }
        let mut pos = 10 + 4 * n;
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
