//! # tunscope-proto: the OpenVPN 2.6 wire protocol, sans I/O
//!
//! Everything here is a pure state machine: bytes and `now` go in, bytes, deadlines and
//! events come out. There are no sockets, no tun devices and no clock reads in this crate
//! (an architecture invariant checked by `cargo xtask tidy`). That is what makes the
//! deterministic tests, the fuzz targets, the in-process test tier and the micro-benchmarks
//! possible; the I/O shell lives in `tunscope-engine`.
//!
//! Map of the crate, bottom-up:
//!
//! * [`consts`] — protocol constants, with their OpenVPN names.
//! * [`wire`] — opcodes, control packets, data headers, TCP framing.
//! * [`packet_id`] — packet-ids and the replay window.
//! * [`prf`] — the legacy (pre-2.6) data-channel key derivation: TLS 1.0 PRF.
//! * [`static_key`], [`wrap`] — `tls-auth` / `tls-crypt` wrapping of control packets.
//! * [`reliable`] — the control channel's ACK/retransmit layer.
//! * [`tls`] — rustls configs with OpenVPN's certificate checks.
//! * [`key_method`] — the key-method-2 message, peer-info and options string.
//! * [`compress`] — LZO/LZ4 decompression (and LZ4 compression) of data payloads.
//! * [`data`] — data-channel AEAD, replay checks, compression framing, pings.
//! * [`mss`] — TCP MSS clamping (`mssfix`).
//! * [`options`] — config files and PUSH_REPLY.
//! * [`control`] — one session's control channel: key states, TLS, renegotiation.
//! * [`client`] — the client state machine (push, keepalive, exit notification).
//! * [`server`] — the server state machine: peers, cookies, pools, routes, push.
//! * [`stage`] — names of data-path stages and drop reasons, shared with the observatory.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod base64;
pub mod client;
pub mod compress;
pub mod consts;
pub mod control;
pub mod data;
pub mod fragment;
pub mod icmp6;
pub mod key_method;
pub mod key_schedule;
pub mod mss;
pub mod options;
pub mod packet_id;
pub mod prf;
pub mod reliable;
pub mod rng;
pub mod server;
pub mod stage;
pub mod static_key;
pub mod tls;
pub mod tls_crypt_v2;
pub mod wire;
pub mod wrap;
