//! In-process test tier: a client and a server [`ControlSession`] talking over a simulated
//! link with a virtual clock (quinn's `Pair` model). Deterministic, no sockets, no root.
//!
//! Covers the handshake (reset exchange, TLS 1.2/1.3, key-method-2), TLS-EKM agreement, the
//! data channel with the exported keys, text messages, renegotiation from either side, all
//! wraps, and a link that drops, duplicates and reorders control packets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tunscope_proto::control::{ControlSession, SessionEvent, SessionParams};
use tunscope_proto::data::{Cipher, DataKeys, Framing, Payload, Receiver};
use tunscope_proto::key_method::KeyMethod2;
use tunscope_proto::options::client::{CertType, TlsVersion};
use tunscope_proto::static_key::{Key2, KeyDirection};
use tunscope_proto::tls::{self, ClientCertMode, Identity, PeerCheck};
use tunscope_proto::wire::DataHeader;
use tunscope_proto::wrap::{Digest, TlsWrap, WrapConfig};

struct TestPki {
    ca: CertificateDer<'static>,
    server: Identity,
    client: Identity,
}

fn identity(issuer: &Issuer<'_, KeyPair>, cn: &str, server: bool) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = p.signed_by(&key, issuer).unwrap();
    Identity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

fn pki(ca_name: &str) -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = p.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(p, ca_key);
    TestPki {
        ca: ca.der().clone(),
        server: identity(&issuer, "server", true),
        client: identity(&issuer, "client", false),
    }
}

fn static_key() -> Key2 {
    let mut k = [0u8; 256];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    Key2(k)
}

/// Deterministic impairments of the simulated link, applied per direction.
#[derive(Clone, Copy, Default)]
struct Impair {
    drop_every: usize,
    dup_every: usize,
    reorder: bool,
}

#[derive(Clone)]
struct Setup {
    version: TlsVersion,
    wrap: (WrapConfig, WrapConfig),
    impair: Impair,
    client_ca: Option<CertificateDer<'static>>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            version: TlsVersion::Tls13,
            wrap: (WrapConfig::None, WrapConfig::None),
            impair: Impair::default(),
            client_ca: None,
        }
    }
}

struct Pair {
    now: Instant,
    client: ControlSession,
    server: ControlSession,
    to_server: VecDeque<Vec<u8>>,
    to_client: VecDeque<Vec<u8>>,
    impair: Impair,
    sent: usize,
    client_events: Vec<SessionEvent>,
    server_events: Vec<SessionEvent>,
}

fn km2(from_client: bool) -> KeyMethod2 {
    KeyMethod2 {
        pre_master: from_client.then_some([1; 48]),
        random1: [2; 32],
        random2: [3; 32],
        options: "V4,dev-type tun".into(),
        username: None,
        password: None,
        peer_info: from_client.then(|| "IV_PROTO=142\n".into()),
    }
}

fn params() -> SessionParams {
    SessionParams {
        tls_timeout: Duration::from_secs(2),
        hand_window: Duration::from_secs(60),
        max_payload: 1100,
    }
}

impl Pair {
    fn new(setup: Setup) -> Pair {
        let p = pki("test CA");
        let now = Instant::now();
        let client_ca = setup.client_ca.clone().unwrap_or_else(|| p.ca.clone());
        let ccfg = tls::client_config(
            &[client_ca],
            Some(p.client),
            PeerCheck {
                remote_cert_tls: Some(CertType::Server),
                ..PeerCheck::default()
            },
            &tls::Negotiation::versions(setup.version, setup.version),
        )
        .unwrap();
        let scfg = tls::server_config(
            std::slice::from_ref(&p.ca),
            p.server,
            ClientCertMode::Require,
            PeerCheck {
                remote_cert_tls: Some(CertType::Client),
                ..PeerCheck::default()
            },
            &tls::Negotiation::versions(TlsVersion::Tls12, TlsVersion::Tls13),
        )
        .unwrap();
        let mut client = ControlSession::new_client(
            ccfg,
            TlsWrap::new(&setup.wrap.0, false, 1000),
            params(),
            now,
        );
        let mut reset = vec![];
        assert!(client.poll_transmit(now, &mut reset));
        let server = ControlSession::new_server(
            scfg,
            TlsWrap::new(&setup.wrap.1, true, 2000),
            params(),
            tunscope_proto::wire::SessionId([0x5e; 8]),
            &reset,
            now,
        )
        .expect("server accepts the reset");
        Pair {
            now,
            client,
            server,
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            impair: setup.impair,
            sent: 0,
            client_events: vec![],
            server_events: vec![],
        }
    }

    fn impaired(&mut self, pkts: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut out = vec![];
        for p in pkts {
            self.sent += 1;
            let i = self.impair;
            if i.drop_every > 0 && self.sent.is_multiple_of(i.drop_every) {
                continue;
            }
            if i.dup_every > 0 && self.sent.is_multiple_of(i.dup_every) {
                out.push(p.clone());
            }
            out.push(p);
        }
        if self.impair.reorder {
            out.reverse();
        }
        out
    }

    /// One round: both sides transmit, the link delivers, events are handled.
    fn step(&mut self) -> bool {
        let mut progressed = false;
        let mut c_out = vec![];
        loop {
            let mut b = vec![];
            if !self.client.poll_transmit(self.now, &mut b) {
                break;
            }
            c_out.push(b);
        }
        let mut s_out = vec![];
        loop {
            let mut b = vec![];
            if !self.server.poll_transmit(self.now, &mut b) {
                break;
            }
            s_out.push(b);
        }
        let c = self.impaired(c_out);
        let s = self.impaired(s_out);
        self.to_server.extend(c);
        self.to_client.extend(s);
        while let Some(p) = self.to_server.pop_front() {
            progressed = true;
            let _ = self.server.handle_packet(self.now, &p);
        }
        while let Some(p) = self.to_client.pop_front() {
            progressed = true;
            let _ = self.client.handle_packet(self.now, &p);
        }
        while let Some(ev) = self.client.poll_event() {
            progressed = true;
            if let SessionEvent::TlsStarted { key_id } = ev {
                self.client.send_key_method(key_id, &km2(true)).unwrap();
            }
            self.client_events.push(ev);
        }
        while let Some(ev) = self.server.poll_event() {
            progressed = true;
            if let SessionEvent::PeerKeyMethod { key_id, .. } = &ev {
                self.server.send_key_method(*key_id, &km2(false)).unwrap();
            }
            self.server_events.push(ev);
        }
        progressed
    }

    /// Runs until both sides have key `key_id` active, jumping the clock to the next timer
    /// when the link is idle. Panics after `limit` of virtual time.
    fn drive_until_active(&mut self, key_id: u8, limit: Duration) {
        let end = self.now + limit;
        while !(self.client.is_active(key_id) && self.server.is_active(key_id)) {
            assert!(
                self.now < end,
                "key {key_id} not active after {limit:?}: client {:?} server {:?}",
                self.client_events,
                self.server_events
            );
            if !self.step() {
                let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(self.now + Duration::from_millis(100));
                self.now = next.max(self.now + Duration::from_millis(1));
                self.client.handle_timeout(self.now);
                self.server.handle_timeout(self.now);
            }
        }
        // Flush the last ACKs.
        for _ in 0..3 {
            self.step();
        }
    }

    fn data_keys(&self, key_id: u8, cipher: Cipher) -> (Arc<DataKeys>, Arc<DataKeys>) {
        let c = self
            .client
            .export_key_material(key_id)
            .expect("client exports");
        let s = self
            .server
            .export_key_material(key_id)
            .expect("server exports");
        assert_eq!(c, s, "both ends derive the same key block via TLS-EKM");
        (
            Arc::new(DataKeys::new(cipher, &c, key_id, false)),
            Arc::new(DataKeys::new(cipher, &s, key_id, true)),
        )
    }
}

fn assert_data_flows(pair: &Pair, key_id: u8) {
    for cipher in Cipher::ALL {
        let (ck, sk) = pair.data_keys(key_id, cipher);
        let mut rx_server = Receiver::new();
        rx_server.install(&sk);
        let mut rx_client = Receiver::new();
        rx_client.install(&ck);
        let h = DataHeader {
            key_id,
            peer_id: Some(3),
        };
        let mut buf = [0u8; 256];
        let n = ck.seal(h, Framing::None, b"\x45 up", &mut buf).unwrap();
        let o = rx_server
            .open(&mut buf[..n], Framing::None, false, pair.now)
            .unwrap();
        let Payload::Packet(r) = o.payload else {
            panic!()
        };
        assert_eq!(&buf[r], b"\x45 up");
        let n = sk.seal(h, Framing::None, b"\x45 down", &mut buf).unwrap();
        let o = rx_client
            .open(&mut buf[..n], Framing::None, false, pair.now)
            .unwrap();
        let Payload::Packet(r) = o.payload else {
            panic!()
        };
        assert_eq!(&buf[r], b"\x45 down");
    }
}

#[test]
fn handshake_tls13_and_data() {
    let mut p = Pair::new(Setup::default());
    p.drive_until_active(0, Duration::from_secs(5));
    assert_data_flows(&p, 0);
    assert!(p.client.tls_description(0).unwrap().contains("TLSv1_3"));
    let certs = p.server.peer_certificates(0).unwrap();
    assert_eq!(tls::peer_identity(&certs[0]).unwrap().common_name, "client");
}

#[test]
fn handshake_tls12() {
    let mut p = Pair::new(Setup {
        version: TlsVersion::Tls12,
        ..Setup::default()
    });
    p.drive_until_active(0, Duration::from_secs(5));
    assert!(p.client.tls_description(0).unwrap().contains("TLSv1_2"));
    assert_data_flows(&p, 0);
}

#[test]
fn every_wrap() {
    let wraps = [
        (
            WrapConfig::Auth {
                key: static_key(),
                direction: KeyDirection::Inverse,
                digest: Digest::Sha256,
            },
            WrapConfig::Auth {
                key: static_key(),
                direction: KeyDirection::Normal,
                digest: Digest::Sha256,
            },
        ),
        (
            WrapConfig::Crypt { key: static_key() },
            WrapConfig::Crypt { key: static_key() },
        ),
    ];
    for wrap in wraps {
        let mut p = Pair::new(Setup {
            wrap,
            ..Setup::default()
        });
        p.drive_until_active(0, Duration::from_secs(5));
        assert_data_flows(&p, 0);
    }
}

#[test]
fn lossy_duplicating_reordering_link() {
    let mut p = Pair::new(Setup {
        impair: Impair {
            drop_every: 3,
            dup_every: 4,
            reorder: true,
        },
        wrap: (
            WrapConfig::Crypt { key: static_key() },
            WrapConfig::Crypt { key: static_key() },
        ),
        ..Setup::default()
    });
    p.drive_until_active(0, Duration::from_secs(50));
    assert_data_flows(&p, 0);
    let retransmits = p.client.stats().retransmits + p.server.stats().retransmits;
    assert!(
        retransmits > 0,
        "losses must have been repaired by retransmission"
    );
}

#[test]
fn text_messages_both_ways() {
    let mut p = Pair::new(Setup::default());
    p.drive_until_active(0, Duration::from_secs(5));
    p.client.send_text("PUSH_REQUEST").unwrap();
    p.server
        .send_text("PUSH_REPLY,ping 10,push-continuation 2")
        .unwrap();
    p.server.send_text("PUSH_REPLY,ping-restart 60").unwrap();
    for _ in 0..4 {
        p.step();
    }
    let texts = |evs: &[SessionEvent]| -> Vec<String> {
        evs.iter()
            .filter_map(|e| match e {
                SessionEvent::Text { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(texts(&p.server_events), vec!["PUSH_REQUEST"]);
    assert_eq!(
        texts(&p.client_events),
        vec![
            "PUSH_REPLY,ping 10,push-continuation 2",
            "PUSH_REPLY,ping-restart 60"
        ]
    );
}

#[test]
fn renegotiation_from_either_side_gives_new_keys() {
    let mut p = Pair::new(Setup {
        wrap: (
            WrapConfig::Crypt { key: static_key() },
            WrapConfig::Crypt { key: static_key() },
        ),
        ..Setup::default()
    });
    p.drive_until_active(0, Duration::from_secs(5));
    let k0 = p.client.export_key_material(0).unwrap();
    // Client-initiated: key-id 1.
    assert_eq!(p.client.renegotiate(p.now), Some(1));
    p.drive_until_active(1, Duration::from_secs(10));
    assert!(
        p.server_events
            .contains(&SessionEvent::Renegotiating { key_id: 1 })
    );
    let k1 = p.client.export_key_material(1).unwrap();
    assert_ne!(k0, k1, "a renegotiation derives fresh keys");
    assert_data_flows(&p, 1);
    // Server-initiated: key-id 2.
    assert_eq!(p.server.renegotiate(p.now), Some(2));
    p.drive_until_active(2, Duration::from_secs(10));
    assert!(
        p.client_events
            .contains(&SessionEvent::Renegotiating { key_id: 2 })
    );
    assert_data_flows(&p, 2);
    // Key-ids wrap 7 → 1, never back to 0.
    for expect in [3, 4, 5, 6, 7, 1] {
        assert_eq!(p.client.renegotiate(p.now), Some(expect));
        p.drive_until_active(expect, Duration::from_secs(10));
    }
}

#[test]
fn untrusted_server_fails_the_key_state() {
    let other = pki("other CA");
    let mut p = Pair::new(Setup {
        client_ca: Some(other.ca),
        ..Setup::default()
    });
    for _ in 0..20 {
        p.step();
    }
    let failed = p.client_events.iter().find_map(|e| match e {
        SessionEvent::KeyFailed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    let reason = failed.expect("client key state failed");
    assert!(
        reason.contains("not issued by the configured 'ca'"),
        "{reason}"
    );
    assert!(!p.client.is_active(0));
}

#[test]
fn garbage_and_wrong_session_packets_are_dropped_not_fatal() {
    let mut p = Pair::new(Setup::default());
    p.drive_until_active(0, Duration::from_secs(5));
    use tunscope_proto::stage::DropReason;
    assert_eq!(
        p.client.handle_packet(p.now, &[]),
        Err(DropReason::Malformed)
    );
    assert_eq!(
        p.client.handle_packet(p.now, &[0xff; 40]),
        Err(DropReason::BadOpcode)
    );
    // A valid-looking packet from another session id.
    let mut other = vec![0x20];
    other.extend_from_slice(&[0xab; 8]);
    other.extend_from_slice(&[0, 0, 0, 0, 5]);
    assert_eq!(
        p.client.handle_packet(p.now, &other),
        Err(DropReason::WrongSession)
    );
    // The session still works afterwards.
    p.client.send_text("PUSH_REQUEST").unwrap();
    for _ in 0..3 {
        p.step();
    }
    assert!(
        p.server_events
            .iter()
            .any(|e| matches!(e, SessionEvent::Text { .. }))
    );
}
