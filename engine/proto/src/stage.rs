//! The stages of the data path and the reasons a stage may drop a packet.
//!
//! These names are the vocabulary of the whole observatory: counters, pcapng interface names,
//! reports and drop accounting all use them. A stage never silently discards a packet: every
//! packet that enters a stage either leaves it or is dropped with one of the [`DropReason`]s.

use std::fmt;

/// A stage of the engine. Data-path stages first, in the order a packet crosses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Stage {
    /// A packet read from the tun device.
    ReadTun,
    /// Plaintext sealed into a data-channel packet.
    Encrypt,
    /// A packet written to the UDP/TCP socket.
    SocketTx,
    /// A packet read from the UDP/TCP socket.
    SocketRx,
    /// A data-channel packet opened and replay-checked.
    Decrypt,
    /// A plaintext packet written to the tun device.
    WriteTun,
    /// Control-channel packets (reliability layer, TLS, key-method-2).
    Control,
}

impl Stage {
    /// All stages in data-path order.
    pub const ALL: [Stage; 7] = [
        Stage::ReadTun,
        Stage::Encrypt,
        Stage::SocketTx,
        Stage::SocketRx,
        Stage::Decrypt,
        Stage::WriteTun,
        Stage::Control,
    ];

    /// The stages a data packet passes, in path order (all but `control`).
    pub const DATA_PATH: [Stage; 6] = [
        Stage::ReadTun,
        Stage::Encrypt,
        Stage::SocketTx,
        Stage::SocketRx,
        Stage::Decrypt,
        Stage::WriteTun,
    ];

    /// The stage's name as used in reports and capture interface names.
    pub fn name(self) -> &'static str {
        match self {
            Stage::ReadTun => "read_tun",
            Stage::Encrypt => "encrypt",
            Stage::SocketTx => "socket_tx",
            Stage::SocketRx => "socket_rx",
            Stage::Decrypt => "decrypt",
            Stage::WriteTun => "write_tun",
            Stage::Control => "control",
        }
    }

    /// Index into per-stage tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a stage dropped (or consumed without forwarding) a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// Too short, bad length field, or fields that do not parse.
    Malformed,
    /// The first byte carries an opcode that is not defined or not valid here.
    BadOpcode,
    /// AEAD authentication failed (wrong key, corrupted or forged packet).
    BadTag,
    /// tls-auth HMAC or tls-crypt tag did not verify.
    BadHmac,
    /// The packet-id was seen before or is too old for the replay window.
    Replay,
    /// No data key for this key-id (not negotiated yet, or expired).
    NoKey,
    /// The packet does not belong to a known peer or session.
    UnknownPeer,
    /// A control packet outside the reliability layer's receive window.
    OutOfWindow,
    /// A control packet for a session or key state that is not (or no longer) active.
    WrongSession,
    /// The send packet-id space of the key is exhausted.
    PacketIdExhausted,
    /// A packet larger than the buffers or the MTU allow.
    TooBig,
    /// A queue between stages was full.
    QueueFull,
    /// Writing to the tun device failed.
    TunWriteError,
    /// Writing to or reading from the socket failed.
    SocketError,
    /// The tun packet is not IPv4/IPv6 or its version does not match the tunnel.
    NotIp,
    /// A compressed packet where the configuration allows only uncompressed framing
    /// (the peer compresses although `compress`/`comp-lzo` do not say so).
    Compressed,
    /// Compressed data that does not decompress: malformed, truncated, or larger than the
    /// decompression limit, or an unknown compression header byte.
    BadCompression,
    /// Not forwarded because it is a keepalive ping (consumed, not an error).
    Keepalive,
    /// Not forwarded because it is an OCC message (consumed, not an error).
    Occ,
    /// No route to a peer for the inner destination (server side).
    NoRoute,
    /// The inner source address does not belong to the sending client (spoofing).
    BadSource,
    /// Too many handshake attempts; stateless replies are rate limited.
    RateLimited,
    /// The server refused the client (full, disabled, or authentication failed).
    Refused,
    /// A fragment (`fragment`) kept until its packet is reassembled (consumed, not an error;
    /// the fragment completing a packet passes instead).
    Fragment,
    /// A fragment header that does not parse, or a fragment that would overflow reassembly.
    BadFragment,
    /// A tap frame shorter than an Ethernet header (14 bytes).
    RuntFrame,
    /// A tap client sent from more source MAC addresses than a client may own (OpenVPN's
    /// `max-routes-per-client`); frames from addresses beyond it are not learned or forwarded.
    MacLimit,
}

impl DropReason {
    /// All reasons, for tables.
    pub const ALL: [DropReason; 27] = [
        DropReason::Malformed,
        DropReason::BadOpcode,
        DropReason::BadTag,
        DropReason::BadHmac,
        DropReason::Replay,
        DropReason::NoKey,
        DropReason::UnknownPeer,
        DropReason::OutOfWindow,
        DropReason::WrongSession,
        DropReason::PacketIdExhausted,
        DropReason::TooBig,
        DropReason::QueueFull,
        DropReason::TunWriteError,
        DropReason::SocketError,
        DropReason::NotIp,
        DropReason::Compressed,
        DropReason::BadCompression,
        DropReason::Keepalive,
        DropReason::Occ,
        DropReason::NoRoute,
        DropReason::BadSource,
        DropReason::RateLimited,
        DropReason::Refused,
        DropReason::Fragment,
        DropReason::BadFragment,
        DropReason::RuntFrame,
        DropReason::MacLimit,
    ];

    /// The reason's name as used in reports.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadOpcode => "bad_opcode",
            DropReason::BadTag => "bad_tag",
            DropReason::BadHmac => "bad_hmac",
            DropReason::Replay => "replay",
            DropReason::NoKey => "no_key",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::OutOfWindow => "out_of_window",
            DropReason::WrongSession => "wrong_session",
            DropReason::PacketIdExhausted => "packet_id_exhausted",
            DropReason::TooBig => "too_big",
            DropReason::QueueFull => "queue_full",
            DropReason::TunWriteError => "tun_write_error",
            DropReason::SocketError => "socket_error",
            DropReason::NotIp => "not_ip",
            DropReason::Compressed => "compressed",
            DropReason::BadCompression => "bad_compression",
            DropReason::Keepalive => "keepalive",
            DropReason::Occ => "occ",
            DropReason::NoRoute => "no_route",
            DropReason::BadSource => "bad_source",
            DropReason::RateLimited => "rate_limited",
            DropReason::Refused => "refused",
            DropReason::Fragment => "fragment",
            DropReason::BadFragment => "bad_fragment",
            DropReason::RuntFrame => "runt_frame",
            DropReason::MacLimit => "mac_limit",
        }
    }

    /// Index into per-reason tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// True for reasons that are not errors: the packet was consumed by the engine itself.
    pub fn is_consumed(self) -> bool {
        matches!(
            self,
            DropReason::Keepalive | DropReason::Occ | DropReason::Fragment
        )
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_in_index_order() {
        for (i, s) in Stage::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r}");
        }
    }
}
