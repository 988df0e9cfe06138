//! Wire formats: opcodes, control packets (in their unwrapped form), data-packet headers and
//! the TCP record framing.
//!
//! A control packet on the wire may be wrapped by tls-auth or tls-crypt (see [`crate::wrap`]);
//! this module only deals with the plain layout:
//!
//! ```text
//! opcode/key-id (1) | own session id (8) | ack count N (1) | N × acked message id (4)
//! | remote session id (8, only if N > 0) | message id (4, absent in P_ACK_V1) | payload
//! ```
//!
//! Parsing never panics: every accessor works on a slice whose length was checked first.

use std::fmt;

use crate::consts::{KEY_ID_MASK, MAX_ACKS_IN_PACKET, OPCODE_SHIFT, SESSION_ID_LEN};
use crate::stage::DropReason;

/// The opcode in the high five bits of a packet's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Key-method 1 client reset; rejected by 2.6 and by us.
    ControlHardResetClientV1 = 0x01,
    /// Key-method 1 server reset; rejected.
    ControlHardResetServerV1 = 0x02,
    /// Starts the renegotiation of a new key-id.
    ControlSoftResetV1 = 0x03,
    /// Reliable control packet carrying TLS bytes.
    ControlV1 = 0x04,
    /// Acknowledgements only.
    AckV1 = 0x05,
    /// Data packet with a 1-byte header.
    DataV1 = 0x06,
    /// The client's initial packet.
    ControlHardResetClientV2 = 0x07,
    /// The server's initial packet.
    ControlHardResetServerV2 = 0x08,
    /// Data packet with a 4-byte header carrying the peer-id.
    DataV2 = 0x09,
    /// tls-crypt-v2 client reset (not supported).
    ControlHardResetClientV3 = 0x0a,
    /// tls-crypt-v2 control packet with wrapped key (not supported).
    ControlWkcV1 = 0x0b,
}

impl Opcode {
    /// Decodes the opcode bits; `None` for undefined values.
    pub fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x01 => Opcode::ControlHardResetClientV1,
            0x02 => Opcode::ControlHardResetServerV1,
            0x03 => Opcode::ControlSoftResetV1,
            0x04 => Opcode::ControlV1,
            0x05 => Opcode::AckV1,
            0x06 => Opcode::DataV1,
            0x07 => Opcode::ControlHardResetClientV2,
            0x08 => Opcode::ControlHardResetServerV2,
            0x09 => Opcode::DataV2,
            0x0a => Opcode::ControlHardResetClientV3,
            0x0b => Opcode::ControlWkcV1,
            _ => return None,
        })
    }

    /// True for the two data opcodes.
    pub fn is_data(self) -> bool {
        matches!(self, Opcode::DataV1 | Opcode::DataV2)
    }

    /// True for control opcodes that carry a message id (everything but ACK and data).
    pub fn is_reliable(self) -> bool {
        !self.is_data() && self != Opcode::AckV1
    }

    /// The protocol's name, as Wireshark shows it.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::ControlHardResetClientV1 => "P_CONTROL_HARD_RESET_CLIENT_V1",
            Opcode::ControlHardResetServerV1 => "P_CONTROL_HARD_RESET_SERVER_V1",
            Opcode::ControlSoftResetV1 => "P_CONTROL_SOFT_RESET_V1",
            Opcode::ControlV1 => "P_CONTROL_V1",
            Opcode::AckV1 => "P_ACK_V1",
            Opcode::DataV1 => "P_DATA_V1",
            Opcode::ControlHardResetClientV2 => "P_CONTROL_HARD_RESET_CLIENT_V2",
            Opcode::ControlHardResetServerV2 => "P_CONTROL_HARD_RESET_SERVER_V2",
            Opcode::DataV2 => "P_DATA_V2",
            Opcode::ControlHardResetClientV3 => "P_CONTROL_HARD_RESET_CLIENT_V3",
            Opcode::ControlWkcV1 => "P_CONTROL_WKC_V1",
        }
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The first byte of every packet: opcode and key-id.
pub fn first_byte(opcode: Opcode, key_id: u8) -> u8 {
    ((opcode as u8) << OPCODE_SHIFT) | (key_id & KEY_ID_MASK)
}

/// Splits the first byte of a packet into opcode and key-id.
pub fn split_first_byte(b: u8) -> Result<(Opcode, u8), DropReason> {
    let op = Opcode::from_bits(b >> OPCODE_SHIFT).ok_or(DropReason::BadOpcode)?;
    Ok((op, b & KEY_ID_MASK))
}

/// Peeks at the opcode of a packet without parsing the rest.
pub fn peek_opcode(packet: &[u8]) -> Result<(Opcode, u8), DropReason> {
    let b = *packet.first().ok_or(DropReason::Malformed)?;
    split_first_byte(b)
}

/// An 8-byte control-channel session id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SessionId(pub [u8; SESSION_ID_LEN]);

impl SessionId {
    /// Reads a session id from the first 8 bytes of `b`.
    pub fn read(b: &[u8]) -> Option<SessionId> {
        let arr: [u8; SESSION_ID_LEN] = b.get(..SESSION_ID_LEN)?.try_into().ok()?;
        Some(SessionId(arr))
    }

    /// All-zero means "undefined" in OpenVPN.
    pub fn is_defined(&self) -> bool {
        self.0 != [0; SESSION_ID_LEN]
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Up to [`MAX_ACKS_IN_PACKET`] acknowledged message ids, without allocation.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct AckList {
    ids: [u32; MAX_ACKS_IN_PACKET],
    len: u8,
}

impl AckList {
    /// An empty list.
    pub const fn new() -> AckList {
        AckList {
            ids: [0; MAX_ACKS_IN_PACKET],
            len: 0,
        }
    }

    /// Adds an id; returns false when the list is full.
    pub fn push(&mut self, id: u32) -> bool {
        if usize::from(self.len) >= MAX_ACKS_IN_PACKET {
            return false;
        }
        self.ids[usize::from(self.len)] = id;
        self.len += 1;
        true
    }

    /// The ids in order.
    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..usize::from(self.len)]
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True when there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if `id` is in the list.
    pub fn contains(&self, id: u32) -> bool {
        self.as_slice().contains(&id)
    }
}

impl fmt::Debug for AckList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// A control packet in its plain (unwrapped) form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPacket<'a> {
    /// Opcode; never a data opcode.
    pub opcode: Opcode,
    /// Key-id (0..=7).
    pub key_id: u8,
    /// The sender's session id.
    pub session_id: SessionId,
    /// Message ids acknowledged by this packet.
    pub acks: AckList,
    /// The receiver's session id; present exactly when `acks` is non-empty.
    pub remote_session_id: Option<SessionId>,
    /// The reliability-layer message id; `None` for P_ACK_V1.
    pub message_id: Option<u32>,
    /// TLS bytes (P_CONTROL_V1) or early-negotiation TLVs (resets).
    pub payload: &'a [u8],
}

/// Offset of the ACK block in the plain layout (after opcode and session id).
pub const CONTROL_HEADER_LEN: usize = 1 + SESSION_ID_LEN;

impl<'a> ControlPacket<'a> {
    /// Parses a plain control packet. Data opcodes and unsupported control opcodes fail.
    pub fn parse(b: &'a [u8]) -> Result<ControlPacket<'a>, DropReason> {
        let (opcode, key_id) = peek_opcode(b)?;
        match opcode {
            Opcode::ControlSoftResetV1
            | Opcode::ControlV1
            | Opcode::AckV1
            | Opcode::ControlHardResetClientV2
            | Opcode::ControlHardResetClientV3
            | Opcode::ControlWkcV1
            | Opcode::ControlHardResetServerV2 => {}
            _ => return Err(DropReason::BadOpcode),
        }
        let session_id = SessionId::read(&b[1..]).ok_or(DropReason::Malformed)?;
        let mut pos = CONTROL_HEADER_LEN;
        let n = usize::from(*b.get(pos).ok_or(DropReason::Malformed)?);
        pos += 1;
        if n > MAX_ACKS_IN_PACKET {
            return Err(DropReason::Malformed);
        }
        let mut acks = AckList::new();
        for _ in 0..n {
            acks.push(read_u32(b, pos).ok_or(DropReason::Malformed)?);
            pos += 4;
        }
        let remote_session_id = if n > 0 {
            let sid = SessionId::read(b.get(pos..).ok_or(DropReason::Malformed)?)
                .ok_or(DropReason::Malformed)?;
            pos += SESSION_ID_LEN;
            Some(sid)
        } else {
            None
        };
        let message_id = if opcode == Opcode::AckV1 {
            if n == 0 {
                // An ACK packet that acknowledges nothing is meaningless.
                return Err(DropReason::Malformed);
            }
            None
        } else {
            let id = read_u32(b, pos).ok_or(DropReason::Malformed)?;
            pos += 4;
            Some(id)
        };
        Ok(ControlPacket {
            opcode,
            key_id,
            session_id,
            acks,
            remote_session_id,
            message_id,
            payload: &b[pos..],
        })
    }

    /// Encoded length.
    pub fn buffer_len(&self) -> usize {
        let acks = if self.acks.is_empty() {
            1
        } else {
            1 + 4 * self.acks.len() + SESSION_ID_LEN
        };
        CONTROL_HEADER_LEN
            + acks
            + if self.message_id.is_some() { 4 } else { 0 }
            + self.payload.len()
    }

    /// Appends the encoded packet to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(first_byte(self.opcode, self.key_id));
        out.extend_from_slice(&self.session_id.0);
        // Invariant: AckList holds at most MAX_ACKS_IN_PACKET (8) entries, so this fits a u8.
        out.push(self.acks.len() as u8);
        for id in self.acks.as_slice() {
            out.extend_from_slice(&id.to_be_bytes());
        }
        if !self.acks.is_empty() {
            out.extend_from_slice(&self.remote_session_id.unwrap_or_default().0);
        }
        if let Some(id) = self.message_id {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(self.payload);
    }
}

/// Reads a big-endian u32 at `pos`.
pub(crate) fn read_u32(b: &[u8], pos: usize) -> Option<u32> {
    let s: [u8; 4] = b.get(pos..pos + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(s))
}

/// Reads a big-endian u16 at `pos`.
pub(crate) fn read_u16(b: &[u8], pos: usize) -> Option<u16> {
    let s: [u8; 2] = b.get(pos..pos + 2)?.try_into().ok()?;
    Some(u16::from_be_bytes(s))
}

/// The header of a data packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// Key-id selecting the data key.
    pub key_id: u8,
    /// The peer-id of P_DATA_V2; `None` for P_DATA_V1.
    pub peer_id: Option<u32>,
}

impl DataHeader {
    /// Length of the header on the wire (1 for V1, 4 for V2).
    pub fn len(&self) -> usize {
        if self.peer_id.is_some() { 4 } else { 1 }
    }

    /// Never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Parses the header of a data packet.
    pub fn parse(b: &[u8]) -> Result<DataHeader, DropReason> {
        let (op, key_id) = peek_opcode(b)?;
        match op {
            Opcode::DataV1 => Ok(DataHeader {
                key_id,
                peer_id: None,
            }),
            Opcode::DataV2 => {
                let w = read_u32(b, 0).ok_or(DropReason::Malformed)?;
                Ok(DataHeader {
                    key_id,
                    peer_id: Some(w & 0x00ff_ffff),
                })
            }
            _ => Err(DropReason::BadOpcode),
        }
    }

    /// Writes the header into the start of `out` (which must hold `self.len()` bytes).
    pub fn write(&self, out: &mut [u8]) {
        match self.peer_id {
            None => out[0] = first_byte(Opcode::DataV1, self.key_id),
            Some(pid) => {
                let w = (u32::from(first_byte(Opcode::DataV2, self.key_id)) << 24)
                    | (pid & 0x00ff_ffff);
                out[..4].copy_from_slice(&w.to_be_bytes());
            }
        }
    }
}

/// Reassembles the TCP byte stream into OpenVPN packets (`u16` length prefix, big-endian).
///
/// Bytes go in with [`TcpFramer::push`]; whole packets come out of [`TcpFramer::next_packet`].
/// A zero length field is malformed (OpenVPN never sends an empty packet) and poisons the stream,
/// because after a framing error the record boundaries cannot be found again.
#[derive(Debug, Default)]
pub struct TcpFramer {
    buf: Vec<u8>,
    start: usize,
    poisoned: bool,
}

impl TcpFramer {
    /// A new, empty framer.
    pub fn new() -> TcpFramer {
        TcpFramer::default()
    }

    /// Appends stream bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete packet, if any. `Err` once the stream is unusable.
    pub fn next_packet(&mut self) -> Result<Option<&mut [u8]>, DropReason> {
        if self.poisoned {
            return Err(DropReason::Malformed);
        }
        let avail = &self.buf[self.start..];
        let Some(len) = read_u16(avail, 0) else {
            return Ok(None);
        };
        let len = usize::from(len);
        if len == 0 {
            self.poisoned = true;
            return Err(DropReason::Malformed);
        }
        if avail.len() < 2 + len {
            return Ok(None);
        }
        let begin = self.start + 2;
        self.start = begin + len;
        Ok(Some(&mut self.buf[begin..begin + len]))
    }

    /// Bytes buffered but not yet returned as packets.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Appends one TCP record (length prefix plus packet) to `out`.
pub fn tcp_frame(packet: &[u8], out: &mut Vec<u8>) -> Result<(), DropReason> {
    let len = u16::try_from(packet.len()).map_err(|_| DropReason::TooBig)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, AckList) {
        let mut acks = AckList::new();
        acks.push(0);
        acks.push(7);
        let p = ControlPacket {
            opcode: Opcode::ControlV1,
            key_id: 2,
            session_id: SessionId([1, 2, 3, 4, 5, 6, 7, 8]),
            acks,
            remote_session_id: Some(SessionId([9; 8])),
            message_id: Some(0x0102_0304),
            payload: b"tls",
        };
        let mut out = vec![];
        p.emit(&mut out);
        assert_eq!(out.len(), p.buffer_len());
        (out, acks)
    }

    #[test]
    fn control_packet_round_trip() {
        let (bytes, acks) = sample();
        assert_eq!(bytes[0], 0x22, "opcode 4 << 3 | key-id 2");
        let p = ControlPacket::parse(&bytes).expect("parses");
        assert_eq!(p.opcode, Opcode::ControlV1);
        assert_eq!(p.key_id, 2);
        assert_eq!(p.acks, acks);
        assert_eq!(p.remote_session_id, Some(SessionId([9; 8])));
        assert_eq!(p.message_id, Some(0x0102_0304));
        assert_eq!(p.payload, b"tls");
    }

    #[test]
    fn client_reset_has_documented_size() {
        let p = ControlPacket {
            opcode: Opcode::ControlHardResetClientV2,
            key_id: 0,
            session_id: SessionId([1; 8]),
            acks: AckList::new(),
            remote_session_id: None,
            message_id: Some(0),
            payload: &[],
        };
        let mut out = vec![];
        p.emit(&mut out);
        assert_eq!(out.len(), 14);
        assert_eq!(out[0], 0x38);
    }

    #[test]
    fn every_truncation_is_malformed_not_a_panic() {
        let (bytes, _) = sample();
        // Up to the end of the message id every prefix is incomplete.
        let header_end = bytes.len() - 3;
        for cut in 0..header_end {
            assert!(ControlPacket::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn too_many_acks_and_bad_opcodes_are_rejected() {
        let (mut bytes, _) = sample();
        bytes[9] = 9;
        assert_eq!(ControlPacket::parse(&bytes), Err(DropReason::Malformed));
        assert_eq!(
            ControlPacket::parse(&[0xf8; 20]),
            Err(DropReason::BadOpcode)
        );
        assert_eq!(
            ControlPacket::parse(&[0x30; 20]),
            Err(DropReason::BadOpcode),
            "data opcode"
        );
        assert_eq!(
            ControlPacket::parse(&[0x08; 20]),
            Err(DropReason::BadOpcode),
            "key-method 1 is refused"
        );
    }

    #[test]
    fn ack_packet_needs_acks() {
        let mut b = vec![first_byte(Opcode::AckV1, 0)];
        b.extend_from_slice(&[1; 8]);
        b.push(0);
        assert_eq!(ControlPacket::parse(&b), Err(DropReason::Malformed));
    }

    #[test]
    fn data_header_v2_carries_peer_id() {
        let h = DataHeader {
            key_id: 3,
            peer_id: Some(0x00ab_cdef),
        };
        let mut b = [0u8; 4];
        h.write(&mut b);
        assert_eq!(b, [0x4b, 0xab, 0xcd, 0xef]);
        assert_eq!(DataHeader::parse(&b), Ok(h));
        let v1 = DataHeader {
            key_id: 1,
            peer_id: None,
        };
        let mut b = [0u8; 1];
        v1.write(&mut b);
        assert_eq!(b, [0x31]);
        assert_eq!(DataHeader::parse(&b), Ok(v1));
        assert_eq!(DataHeader::parse(&[0x48, 1]), Err(DropReason::Malformed));
    }

    #[test]
    fn tcp_framer_splits_and_joins() {
        let mut stream = vec![];
        tcp_frame(b"hello", &mut stream).expect("fits");
        tcp_frame(b"world!", &mut stream).expect("fits");
        let mut f = TcpFramer::new();
        // Feed one byte at a time: packets appear only when complete.
        let mut got = vec![];
        for b in &stream {
            f.push(std::slice::from_ref(b));
            while let Some(p) = f.next_packet().expect("ok") {
                got.push(p.to_vec());
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), b"world!".to_vec()]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn tcp_framer_zero_length_poisons() {
        let mut f = TcpFramer::new();
        f.push(&[0, 0, 1, 2]);
        assert_eq!(f.next_packet(), Err(DropReason::Malformed));
        assert_eq!(f.next_packet(), Err(DropReason::Malformed));
    }
}
