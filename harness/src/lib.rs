//! # tunscope-harness
//!
//! Builds throw-away networks from Linux network namespaces and runs VPN subjects in them:
//! ours (`tunscope`) or stock OpenVPN 2.6. Only 198.18.0.0/15 and 2001:db8::/32 are used,
//! nothing in the root namespace is touched, and every namespace is named `ts-<pid>-…` and
//! removed at the end (stale ones from crashed runs at the next start).
//!
//! * [`netns`] — namespaces, veth, the setns thread discipline, stale cleanup.
//! * [`process`] — child processes with logs, stopped by pid.
//! * [`pki`] — a per-run test PKI and static key.
//! * [`subjects`] — tunnel variants and OpenVPN-syntax configs for both implementations.
//! * [`traffic`] — ping and verified TCP transfers.
//! * [`kernel_drops`] — where the namespaces' kernels dropped packets during a run.
//! * [`topo`] — small fixed topologies for engine tests.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod capture;
pub mod dhcp;
pub mod filter;
pub mod html;
pub mod impair;
pub mod ipsec;
pub mod kernel_drops;
pub mod netns;
pub mod netstate;
pub mod network;
pub mod openconnect;
pub mod p2p;
pub mod pki;
pub mod process;
pub mod resolved;
pub use tunscope_capture::packet;
pub mod scenario;
pub mod services;
pub mod ssh;
pub mod subjects;
pub mod topo;
pub mod traffic;
pub mod wireguard;
