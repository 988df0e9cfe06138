//! # tunscope-engine: the I/O shell of the tunscope VPN engine
//!
//! The protocol lives in `tunscope-proto` (sans I/O). This crate gives it real I/O: the tun
//! device ([`tun`]), the UDP/TCP link ([`link`]), the data-path threads with their stages
//! ([`datapath`]), stage counters ([`stats`]), kernel routes ([`netlink`]), the client
//! runner ([`client`]) and the server ([`server`]).
//!
//! Threads of a connected client:
//!
//! ```text
//!   tx thread     read_tun → encrypt → socket_tx
//!   rx thread     socket_rx → decrypt → write_tun      (control packets → channel)
//!   control       Client state machine: control packets, timers, signals, key updates
//! ```
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod capdiff;
pub mod capture;
pub mod client;
pub mod control_socket;
pub mod datapath;
pub mod dbus;
pub mod dns_dnsmasq;
pub mod dns_script;
pub mod dns_stub;
pub mod explain;
pub mod killswitch;
pub mod legacy_pem;
pub mod link;
pub mod management;
pub mod netconfig;
pub mod netlink;
pub mod observe;
pub mod poll;
pub mod private_files;
pub mod privileges;
pub mod prompt;
pub mod proxy;
pub mod report;
pub mod server;
pub mod setup;
pub mod stats;
pub mod trace;
pub mod tun;
