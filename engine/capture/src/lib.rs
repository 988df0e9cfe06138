//! # tunscope-capture
//!
//! Packet captures as tunscope reads them: any pcap or pcapng (tcpdump, Wireshark, the
//! harness's run captures, the engines' stage taps), decoded into the layers that matter for a
//! VPN, normalized so that runs can be compared, and diffed.
//!
//! * [`read`] — streaming pcap/pcapng (gzip too) as libpcap and Wireshark read them, with
//!   a report of anything not read.
//! * [`file`] — captures in memory, and writing pcapng.
//! * [`packet`] — bounds-checked decoding: ARP, IPv4/6, TCP, UDP, ICMP, DNS, control text.
//! * [`openvpn`] — OpenVPN headers: opcodes, key-id, peer-id, sessions, TLS payload kind.
//! * [`normalize`] — events with stable placeholders and masks, grouped into flows.
//! * [`diff`] — flow-by-flow, packet-by-packet (aligned) comparison.
//! * [`summary`] — a run-to-run stable flow summary for golden snapshots.
//! * [`write`] — the differing packets as pcapng with comments.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod diff;
pub mod file;
pub mod normalize;
pub mod openvpn;
pub mod packet;
pub mod read;
pub mod summary;
pub mod vpn;
pub mod write;
