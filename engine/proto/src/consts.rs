//! Protocol constants of OpenVPN 2.6, in one place.
//!
//! Each value names where it comes from (see `../shared/notes/openvpn-protocol.md` for the
//! source references). Protocol bytes are written in hex.

use std::time::Duration;

/// Opcode is the high 5 bits of the first byte, key-id the low 3 bits.
pub const OPCODE_SHIFT: u8 = 3;
/// Mask for the key-id in the first byte.
pub const KEY_ID_MASK: u8 = 0x07;

/// Session ids are 8 opaque bytes.
pub const SESSION_ID_LEN: usize = 8;
/// At most this many ACKs are accepted in one packet (`RELIABLE_ACK_SIZE`).
pub const MAX_ACKS_IN_PACKET: usize = 8;
/// At most this many ACKs are piggy-backed on a control packet (`CONTROL_SEND_ACK_MAX`).
pub const MAX_ACKS_PIGGYBACK: usize = 4;

/// Unacknowledged outgoing control packets per key state (`TLS_RELIABLE_N_SEND_BUFFERS`).
pub const RELIABLE_SEND_WINDOW: usize = 6;
/// Receive window of the reliability layer (`TLS_RELIABLE_N_REC_BUFFERS`).
pub const RELIABLE_RECV_WINDOW: u32 = 12;
/// Retransmit early once this many higher-numbered packets were acknowledged.
pub const FAST_RETRANSMIT_ACKS: u8 = 3;
/// Initial retransmission timeout (`--tls-timeout`).
pub const TLS_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// A key state must become active within this time (`--hand-window`).
pub const HAND_WINDOW_DEFAULT: Duration = Duration::from_secs(60);
/// Renegotiation interval (`--reneg-sec`).
pub const RENEG_SEC_DEFAULT: Duration = Duration::from_secs(3600);
/// How long an old key stays usable after a renegotiation (`--tran-window`).
pub const TRAN_WINDOW_DEFAULT: Duration = Duration::from_secs(3600);
/// Interval between PUSH_REQUESTs until a PUSH_REPLY arrives (`PUSH_REQUEST_INTERVAL`).
pub const PUSH_REQUEST_INTERVAL: Duration = Duration::from_secs(5);

/// Default size limit of a control packet including IP and UDP headers (`--max-packet-size`).
pub const MAX_PACKET_SIZE_DEFAULT: usize = 1250;
/// Largest control packet accepted from the network: a full control packet (2.6 sends at
/// most `tls-mtu`, 1250 by default, plus headers and the wrap) with a tls-crypt-v2 client
/// key behind it (at most 1024 bytes). Anything bigger — a 64 KiB TCP record, say — is
/// dropped as `too_big` before any parsing or buffering.
pub const MAX_CONTROL_PACKET: usize = 4096;
/// A single control-channel text message must stay below this (`TLS_CHANNEL_BUF_SIZE`).
pub const TLS_CHANNEL_BUF_SIZE: usize = 2048;
/// Options string limit in the key-method-2 message (`TLS_OPTIONS_LEN`).
pub const TLS_OPTIONS_LEN: usize = 512;
/// Username/password limit in the key-method-2 message (`USER_PASS_LEN`).
pub const USER_PASS_LEN: usize = 128;

/// Data-channel replay window in packets (`--replay-window`, `DEFAULT_SEQ_BACKTRACK`).
pub const REPLAY_WINDOW_DEFAULT: u32 = 64;
/// Time window of the replay check (`DEFAULT_TIME_BACKTRACK`).
pub const REPLAY_TIME_WINDOW_DEFAULT: Duration = Duration::from_secs(15);
/// At this data packet-id a renegotiation is triggered (`PACKET_ID_WRAP_TRIGGER`).
pub const PACKET_ID_WRAP_TRIGGER: u32 = 0xff00_0000;

/// AEAD tag length on the data channel.
pub const AEAD_TAG_LEN: usize = 16;
/// Implicit IV length (12-byte nonce minus the 4-byte packet-id).
pub const IMPLICIT_IV_LEN: usize = 8;
/// Peer-id meaning "no peer-id" in P_DATA_V2.
pub const PEER_ID_UNDEF: u32 = 0x00ff_ffff;

/// Keepalive ping payload (`ping_string`).
pub const PING_MAGIC: [u8; 16] = [
    0x2a, 0x18, 0x7b, 0xf3, 0x64, 0x1e, 0xb4, 0xcb, 0x07, 0xed, 0x2d, 0x0a, 0x98, 0x1f, 0xc7, 0x48,
];
/// Prefix of an OCC message on the data channel (`occ_magic`).
pub const OCC_MAGIC: [u8; 16] = [
    0x28, 0x7f, 0x34, 0x6b, 0xd4, 0xef, 0x7a, 0x81, 0x2d, 0x56, 0xb8, 0xd3, 0xaf, 0xc5, 0x45, 0x9c,
];
/// OCC opcode "EXIT".
pub const OCC_EXIT: u8 = 0x06;

/// TLS exporter label for the data-channel keys.
pub const EKM_LABEL_DATAKEYS: &[u8] = b"EXPORTER-OpenVPN-datakeys";
/// Length of the key2 block (two directions × (64 cipher + 64 hmac)).
pub const KEY2_LEN: usize = 256;

/// Compression framing byte of the legacy `comp-lzo no` stub.
pub const NO_COMPRESS_BYTE: u8 = 0xfa;
/// Compression framing byte of the `compress stub` (v1 with swap).
pub const NO_COMPRESS_BYTE_SWAP: u8 = 0xfb;
/// Escape byte of the v2 compression framing (`compress stub-v2`).
pub const COMP_V2_ESCAPE: u8 = 0x50;
/// Header byte of an LZO-compressed payload (`comp-lzo`, `compress lzo`).
pub const LZO_COMPRESS_BYTE: u8 = 0x66;
/// Header byte of an LZ4-compressed payload (`compress lz4`, with swap).
pub const LZ4_COMPRESS_BYTE: u8 = 0x69;
/// Second byte after [`COMP_V2_ESCAPE`] of an LZ4-compressed payload (`compress lz4-v2`).
pub const COMP_V2_LZ4_BYTE: u8 = 0x01;

/// IV_PROTO bits (2.6).
pub mod iv_proto {
    /// Supports P_DATA_V2.
    pub const DATA_V2: u32 = 1 << 1;
    /// Server may push without waiting for PUSH_REQUEST.
    pub const REQUEST_PUSH: u32 = 1 << 2;
    /// Supports TLS-EKM key derivation.
    pub const TLS_KEY_EXPORT: u32 = 1 << 3;
    /// Understands `AUTH_PENDING,timeout N`.
    pub const AUTH_PENDING_KW: u32 = 1 << 4;
    /// Peer runs in p2p mode.
    pub const NCP_P2P: u32 = 1 << 5;
    /// Understands the pushed `dns` option.
    pub const DNS_OPTION: u32 = 1 << 6;
    /// Sends EXIT on the control channel; understands `protocol-flags`.
    pub const CC_EXIT_NOTIFY: u32 = 1 << 7;
    /// Understands `AUTH_FAILED,TEMP`.
    pub const AUTH_FAIL_TEMP: u32 = 1 << 8;
    /// Dynamic tls-crypt for renegotiations (not implemented, never announced).
    pub const DYN_TLS_CRYPT: u32 = 1 << 9;
}
