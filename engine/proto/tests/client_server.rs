//! In-process tier: our `Client` state machines against our `Server` over simulated UDP links
//! with a virtual clock. Covers the stateless cookie handshake, authentication hand-off,
//! PUSH_REPLY contents, the data channel both ways with the keys each side derived,
//! renegotiation, EXIT, inactivity timeouts, refusals, and that unauthenticated packets leave
//! no state behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tunscope_proto::client::{Client, ClientEvent, ClientSetup};
use tunscope_proto::data::{Payload, Receiver};
use tunscope_proto::options::client::{ClientConfig, TlsVersion, Transport};
use tunscope_proto::options::server::ClientOverrides;
use tunscope_proto::server::{AuthResult, PeerAddr, Server, ServerEvent};
use tunscope_proto::stage::DropReason;
use tunscope_proto::tls::{self, PeerCheck};
use tunscope_proto::wrap::WrapConfig;

mod common;
use common::{Pki, client, client_with, identity, pki, server, server_from, server_with};

/// Several clients and one server on a loss-free simulated network.
struct Net {
    now: Instant,
    server: Server,
    clients: Vec<(SocketAddr, Client, Vec<ClientEvent>)>,
    server_events: Vec<ServerEvent>,
    auth: Box<dyn FnMut(&ServerEvent) -> AuthResult>,
    /// When set, verification requests are kept here (peer, session, key-id) instead of
    /// being answered: a slow verifier the test answers itself.
    held: Option<Vec<(u32, u64, u8)>>,
    drops: Vec<DropReason>,
    /// When set, what the server sends is lost (counted here): a client that never hears,
    /// and never acknowledges, the server.
    blackhole: Option<usize>,
}

impl Net {
    fn new(server: Server, clients: Vec<Client>) -> Net {
        Net {
            now: Instant::now(),
            server,
            clients: clients
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    (
                        SocketAddr::from(([198, 18, 1, 2], 40000 + i as u16)),
                        c,
                        vec![],
                    )
                })
                .collect(),
            server_events: vec![],
            auth: Box::new(|_| AuthResult {
                ok: true,
                ..AuthResult::default()
            }),
            held: None,
            drops: vec![],
            blackhole: None,
        }
    }

    fn step(&mut self) -> bool {
        let mut moved = false;
        let now = self.now;
        for (addr, c, evs) in self.clients.iter_mut() {
            loop {
                let mut b = vec![];
                if c.poll_transmit(now, &mut b).is_none() {
                    break;
                }
                moved = true;
                // Data packets (pings, OCC exit) are the data path's; only control goes here.
                if matches!(b[0] >> 3, 6 | 9) {
                    continue;
                }
                if let Err(r) = self.server.handle_control(now, PeerAddr::Udp(*addr), &b) {
                    self.drops.push(r);
                }
            }
            while let Some(e) = c.poll_event() {
                evs.push(e);
            }
        }
        loop {
            let mut b = vec![];
            let Some(to) = self.server.poll_transmit(now, &mut b) else {
                break;
            };
            moved = true;
            if matches!(b[0] >> 3, 6 | 9) {
                continue;
            }
            if let Some(lost) = self.blackhole.as_mut() {
                *lost += 1;
                continue;
            }
            if let Some((_, c, evs)) = self
                .clients
                .iter_mut()
                .find(|(a, _, _)| PeerAddr::Udp(*a) == to)
            {
                let _ = c.handle_control(now, &b);
                while let Some(e) = c.poll_event() {
                    evs.push(e);
                }
            }
        }
        while let Some(e) = self.server.poll_event() {
            moved = true;
            if let ServerEvent::AuthRequest {
                peer,
                session,
                key_id,
                ..
            } = &e
            {
                match self.held.as_mut() {
                    Some(h) => h.push((*peer, *session, *key_id)),
                    None => {
                        let r = (self.auth)(&e);
                        self.server
                            .handle_auth_result(now, *peer, *session, *key_id, r);
                    }
                }
            }
            self.server_events.push(e);
        }
        moved
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for (_, c, _) in self.clients.iter_mut() {
            c.handle_timeout(self.now);
        }
        self.server.handle_timeout(self.now);
    }

    fn run(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) {
        let end = self.now + limit;
        while !done(self) {
            assert!(
                self.now < end,
                "condition not reached; server events {:?}; client events {:?}",
                self.server_events,
                self.clients.iter().map(|c| &c.2).collect::<Vec<_>>()
            );
            if !self.step() {
                self.advance(Duration::from_millis(50));
            }
        }
    }

    fn connected(&self, i: usize) -> bool {
        self.clients[i]
            .2
            .iter()
            .any(|e| matches!(e, ClientEvent::Connected(_)))
    }
}

/// Seals on one side and opens on the other with the keys each side derived itself.
fn assert_data_both_ways(net: &Net, i: usize) {
    let client = &net.clients[i].1;
    let snap = net.server.snapshot();
    let cplane = client.data_plane();
    let peer_id = cplane.peer_id.expect("peer-id pushed");
    let view = snap.peers.get(&peer_id).expect("server knows the peer");
    // Client → server.
    let ck = cplane.send.clone().unwrap();
    let mut buf = vec![0u8; 256];
    let n = ck
        .seal(cplane.header(&ck), cplane.framing, b"\x45up", &mut buf)
        .unwrap();
    let mut rx = Receiver::new();
    for k in &view.plane.recv {
        rx.install(k);
    }
    let o = rx
        .open(&mut buf[..n], view.plane.framing, false, net.now)
        .unwrap();
    let Payload::Packet(r) = o.payload else {
        panic!()
    };
    assert_eq!(&buf[r], b"\x45up");
    // Server → client.
    let sk = view.plane.send.clone().unwrap();
    let n = sk
        .seal(
            view.plane.header(&sk),
            view.plane.framing,
            b"\x45down",
            &mut buf,
        )
        .unwrap();
    let mut rx = Receiver::new();
    for k in &cplane.recv {
        rx.install(k);
    }
    let o = rx
        .open(&mut buf[..n], cplane.framing, false, net.now)
        .unwrap();
    let Payload::Packet(r) = o.payload else {
        panic!()
    };
    assert_eq!(&buf[r], b"\x45down");
}

#[test]
fn cookie_handshake_push_and_data() {
    let pki = pki(1);
    let mut net = Net::new(server(&pki, ""), vec![client(&pki, 0, "")]);
    net.run(Duration::from_secs(10), |n| n.connected(0));
    let pushed = net.clients[0].1.pushed().unwrap().clone();
    assert_eq!(
        pushed.ifconfig,
        Some((
            "198.19.0.2".parse().unwrap(),
            "255.255.255.0".parse().unwrap()
        ))
    );
    assert_eq!(pushed.routes.len(), 1);
    assert_eq!(pushed.ping, Some(10));
    assert_eq!(pushed.ping_restart, Some(60));
    assert!(pushed.protocol_flags.cc_exit && pushed.protocol_flags.tls_ekm);
    // Our client announces the dns option, so it gets `dns` rather than dhcp-option.
    assert_eq!(pushed.dns_servers[&0].resolve_domains, vec!["corp.example"]);
    assert!(
        net.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::PeerConnected { peer: 0, .. }))
    );
    assert_data_both_ways(&net, 0);
    // Only the cookie echo created state: no drops on the way.
    assert!(net.drops.is_empty(), "{:?}", net.drops);
}

/// A bridged tap server: with a pool, clients lease from it and are told the bridge's
/// gateway; without one (DHCP-proxy mode) they get no address and `route-gateway dhcp`;
/// either way no `topology` (a tun matter) and data flows.
#[test]
fn tap_bridge_with_a_pool_and_in_dhcp_mode() {
    let pki = pki(2);
    const TAP: &str =
        "port 1194\nproto udp\ndev tap0\nca ca\ncert c\nkey k\ndh none\nkeepalive 10 60\n";
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
    let s = server_from(
        &pki,
        &format!("{TAP}server-bridge 198.19.0.1 255.255.255.0 198.19.0.100 198.19.0.101\n"),
        WrapConfig::None,
    );
    let clients = (0..2).map(|i| client(&pki, i, "dev tap\n")).collect();
    let mut net = Net::new(s, clients);
    net.run(Duration::from_secs(10), |n| {
        n.connected(0) && n.connected(1)
    });
    let mut leased = vec![];
    for i in 0..2 {
        let p = net.clients[i].1.pushed().unwrap().clone();
        let (a, mask) = p.ifconfig.unwrap();
        assert_eq!(mask, ip("255.255.255.0"));
        assert_eq!(p.route_gateway, Some(ip("198.19.0.1")));
        // No `topology` pushed: the client keeps 2.6's default.
        assert_eq!(
            p.topology,
            tunscope_proto::options::push::Topology::default()
        );
        leased.push(a);
        assert_data_both_ways(&net, i);
    }
    leased.sort();
    assert_eq!(leased, [ip("198.19.0.100"), ip("198.19.0.101")]);

    let s = server_from(&pki, &format!("{TAP}server-bridge\n"), WrapConfig::None);
    let mut net = Net::new(s, vec![client(&pki, 0, "dev tap\n")]);
    net.run(Duration::from_secs(10), |n| n.connected(0));
    let p = net.clients[0].1.pushed().unwrap().clone();
    assert_eq!((p.ifconfig, p.route_gateway), (None, None));
    assert!(p.route_gateway_dhcp);
    assert_data_both_ways(&net, 0);
}

/// With a seed (the in-process tier's replay), a client's random choices repeat: the session
/// id and the key-method-2 randoms in what it sends; another seed gives others.
#[test]
fn a_seeded_client_repeats_its_choices() {
    let pki = pki(1);
    let first_packets = |seed: u64| {
        tunscope_proto::rng::seed_thread(seed);
        let mut c = client(&pki, 0, "");
        let now = Instant::now();
        let mut b = Vec::new();
        assert!(c.poll_transmit(now, &mut b).is_some());
        // The session id of the HARD_RESET (after the opcode byte).
        b[1..9].to_vec()
    };
    let a = first_packets(7);
    assert_eq!(a, first_packets(7));
    assert_ne!(a, first_packets(8));
}

#[test]
fn many_clients_get_distinct_addresses_and_peer_ids() {
    let pki = pki(8);
    let clients = (0..8).map(|i| client(&pki, i, "")).collect();
    let mut net = Net::new(server(&pki, "client-to-client\n"), clients);
    net.run(Duration::from_secs(20), |n| (0..8).all(|i| n.connected(i)));
    let snap = net.server.snapshot();
    assert_eq!(snap.peers.len(), 8);
    let mut ips: Vec<_> = net
        .clients
        .iter()
        .map(|c| c.1.pushed().unwrap().ifconfig.unwrap().0)
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 8);
    for (i, c) in net.clients.iter().enumerate() {
        let ip = c.1.pushed().unwrap().ifconfig.unwrap().0;
        let pid = c.1.data_plane().peer_id.unwrap();
        assert_eq!(snap.routes.lookup4(ip), Some(pid), "route to client {i}");
        assert_data_both_ways(&net, i);
    }
}

#[test]
fn pool_exhaustion_is_a_clear_refusal() {
    let pki = pki(3);
    let clients = (0..3).map(|i| client(&pki, i, "")).collect();
    let mut net = Net::new(
        server(&pki, "ifconfig-pool 198.19.0.2 198.19.0.3\n"),
        clients,
    );
    net.run(Duration::from_secs(20), |n| {
        n.clients
            .iter()
            .filter(|c| {
                c.2.iter()
                    .any(|e| matches!(e, ClientEvent::Connected(_) | ClientEvent::Fatal(_)))
            })
            .count()
            == 3
    });
    let fatal: Vec<String> = net
        .clients
        .iter()
        .flat_map(|c| c.2.iter())
        .filter_map(|e| match e {
            ClientEvent::Fatal(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(fatal.len(), 1, "exactly one client refused");
    assert!(fatal[0].contains("AUTH_FAILED"), "{fatal:?}");
    assert!(
        net.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::Log(l) if l.contains("address pool exhausted")))
    );
    net.run(Duration::from_secs(5), |n| n.server.counts().peers == 2);
}

#[test]
fn failed_authentication_and_disabled_client() {
    let pki = pki(2);
    let mut net = Net::new(
        server(&pki, ""),
        vec![client(&pki, 0, ""), client(&pki, 1, "")],
    );
    net.auth = Box::new(|e| match e {
        ServerEvent::AuthRequest { common_name, .. }
            if common_name.as_deref() == Some("client0") =>
        {
            AuthResult {
                ok: false,
                reason: Some("bad password".into()),
                overrides: None,
            }
        }
        _ => AuthResult {
            ok: true,
            reason: None,
            overrides: Some(ClientOverrides {
                disable: true,
                ..ClientOverrides::default()
            }),
        },
    });
    net.run(Duration::from_secs(20), |n| {
        (0..2).all(|i| {
            n.clients[i]
                .2
                .iter()
                .any(|e| matches!(e, ClientEvent::Fatal(_)))
        })
    });
    net.run(Duration::from_secs(5), |n| n.server.counts().peers == 0);
    assert!(net.server.snapshot().peers.is_empty());
}

#[test]
fn ccd_fixed_address_and_iroute() {
    let pki = pki(1);
    let mut net = Net::new(server(&pki, ""), vec![client(&pki, 0, "")]);
    net.auth = Box::new(|_| {
        AuthResult {
        ok: true,
        reason: None,
        overrides: Some(
            ClientOverrides::parse(
                "ifconfig-push 198.19.0.77 255.255.255.0\niroute 198.19.77.0 255.255.255.0\npush \"route 198.19.88.0 255.255.255.0\"\n",
                Path::new("/ccd/client0"),
            )
            .unwrap(),
        ),
    }
    });
    net.run(Duration::from_secs(10), |n| n.connected(0));
    let pushed = net.clients[0].1.pushed().unwrap();
    assert_eq!(
        pushed.ifconfig.unwrap().0,
        "198.19.0.77".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(pushed.routes.len(), 2);
    let snap = net.server.snapshot();
    assert_eq!(snap.routes.lookup4("198.19.77.9".parse().unwrap()), Some(0));
    let view = &snap.peers[&0];
    assert!(view.owns_source("198.19.77.9".parse().unwrap()));
    assert!(!view.owns_source("198.19.0.2".parse().unwrap()));
}

/// A client without TLS-EKM (as OpenVPN 2.5): the server pushes no `tls-ekm`, both derive
/// keys with the legacy PRF, data flows, also after a renegotiation; with
/// `force-tls-key-material-export` the server refuses such a client.
#[test]
fn legacy_prf_client_and_force_ekm() {
    let pki = pki(1);
    let old = |pki: &Pki| client_with(pki, 0, "", |s| s.announce_ekm = false);
    let mut net = Net::new(server(&pki, "reneg-sec 20\n"), vec![old(&pki)]);
    net.run(Duration::from_secs(10), |n| n.connected(0));
    let pushed = net.clients[0].1.pushed().unwrap().clone();
    assert!(!pushed.uses_ekm());
    assert_data_both_ways(&net, 0);
    net.run(Duration::from_secs(30), |n| {
        n.clients[0]
            .2
            .iter()
            .any(|e| matches!(e, ClientEvent::KeysChanged { key_id: 1, .. }))
    });
    net.advance(Duration::from_secs(2));
    assert_data_both_ways(&net, 0);

    let mut net = Net::new(
        server(&pki, "force-tls-key-material-export\n"),
        vec![old(&pki)],
    );
    net.run(Duration::from_secs(10), |n| {
        n.clients[0]
            .2
            .iter()
            .any(|e| matches!(e, ClientEvent::Fatal(_) | ClientEvent::Restart(_)))
    });
    assert!(!net.connected(0));
}

/// `reneg-bytes` / `reneg-pkts` on the client: once that much was sent with a key, the client
/// renegotiates (new key-id, data still flows both ways).
#[test]
fn client_renegotiates_after_reneg_bytes_and_pkts() {
    for extra in ["reneg-bytes 10000\n", "reneg-pkts 20\n"] {
        let pki = pki(1);
        let mut net = Net::new(server(&pki, ""), vec![client(&pki, 0, extra)]);
        net.run(Duration::from_secs(10), |n| n.connected(0));
        let plane = net.clients[0].1.data_plane();
        let k = plane.send.clone().unwrap();
        let mut buf = vec![0u8; 2048];
        for _ in 0..25 {
            k.seal(plane.header(&k), plane.framing, &[0x45; 1000], &mut buf)
                .unwrap();
        }
        net.run(Duration::from_secs(30), |n| {
            n.clients[0]
                .2
                .iter()
                .any(|e| matches!(e, ClientEvent::KeysChanged { key_id: 1, .. }))
        });
        net.advance(Duration::from_secs(2));
        assert_eq!(
            net.clients[0].1.data_plane().send.unwrap().key_id(),
            1,
            "{extra}"
        );
        assert_data_both_ways(&net, 0);
    }
}

/// The server renegotiates with a client for the same reasons a client does: packets or
/// bytes it sent with one key (and packet-ids running out, the same check).
#[test]
fn server_renegotiates_after_reneg_bytes_and_pkts() {
    for extra in ["reneg-bytes 10000\n", "reneg-pkts 20\n"] {
        let pki = pki(1);
        let mut net = Net::new(server(&pki, extra), vec![client(&pki, 0, "")]);
        net.run(Duration::from_secs(10), |n| n.connected(0));
        let peer_id = net.clients[0].1.data_plane().peer_id.expect("peer-id");
        let snap = net.server.snapshot();
        let plane = &snap.peers.get(&peer_id).expect("peer").plane;
        let k = plane.send.clone().unwrap();
        let mut buf = vec![0u8; 2048];
        for _ in 0..25 {
            k.seal(plane.header(&k), plane.framing, &[0x45; 1000], &mut buf)
                .unwrap();
        }
        net.run(Duration::from_secs(30), |n| {
            n.server_events
                .iter()
                .any(|e| matches!(e, ServerEvent::PeerKeysChanged { key_id: 1, .. }))
        });
        net.advance(Duration::from_secs(2));
        let snap = net.server.snapshot();
        let view = snap.peers.get(&peer_id).expect("peer");
        assert_eq!(view.plane.send.as_ref().unwrap().key_id(), 1, "{extra}");
        assert_data_both_ways(&net, 0);
    }
}

/// tls-crypt-v2 admission over UDP, attacked: a client reset announcing early negotiation
/// gets a stateless answer (no peer) however often it is replayed, from any address; a reset
/// whose wrapped key does not authenticate gets no answer at all.
#[test]
fn tls_crypt_v2_resets_create_no_state() {
    use tunscope_proto::control::{ControlSession, SessionParams};
    use tunscope_proto::tls_crypt_v2::{ClientKey, ServerKey};
    use tunscope_proto::wrap::TlsWrap;
    let pki = pki(1);
    let skey = ServerKey::generate();
    let mut server = server_with(&pki, "", WrapConfig::CryptV2Server { key: skey.clone() });
    // A 2.6-style client reset: V3, wrap packet-id 0x0f000001, wrapped key behind it.
    let reset = |key: &ClientKey| {
        let mut wrap = TlsWrap::new(&WrapConfig::CryptV2Client { key: key.clone() }, false, 7);
        wrap.set_send_pid(0x0f00_0000);
        let tls = tls::client_config(
            &tls::certs_from_pem("ca", &pki.ca_pem).unwrap(),
            None,
            PeerCheck::default(),
            &tls::Negotiation::versions(TlsVersion::Tls12, TlsVersion::Tls13),
        )
        .unwrap();
        let params = SessionParams {
            tls_timeout: Duration::from_secs(2),
            hand_window: Duration::from_secs(60),
            max_payload: 1200,
        };
        let mut s = ControlSession::new_client(tls, wrap, params, Instant::now());
        let mut out = Vec::new();
        assert!(s.poll_transmit(Instant::now(), &mut out));
        out
    };
    let good = ClientKey::generate(&skey, None, 0).unwrap();
    let pkt = reset(&good);
    assert_eq!(pkt[0] >> 3, 10, "a V3 reset");
    let now = Instant::now();
    let mut out = Vec::new();
    for i in 0..50u16 {
        let from = PeerAddr::Udp(SocketAddr::from(([198, 18, 7, (i % 200) as u8], 1000 + i)));
        server.handle_control(now, from, &pkt).unwrap();
        out.clear();
        assert!(
            server.poll_transmit(now, &mut out).is_some(),
            "a stateless reply"
        );
    }
    assert_eq!(server.counts().peers, 0, "replayed resets created state");
    // A key wrapped by another server: dropped unanswered.
    let foreign = ClientKey::generate(&ServerKey::generate(), None, 0).unwrap();
    let from = PeerAddr::Udp(SocketAddr::from(([198, 18, 7, 1], 999)));
    assert_eq!(
        server.handle_control(now, from, &reset(&foreign)),
        Err(DropReason::BadHmac)
    );
    out.clear();
    assert!(server.poll_transmit(now, &mut out).is_none());
    assert_eq!(server.counts().peers, 0);
}

#[test]
fn server_renegotiation_installs_new_keys() {
    let pki = pki(1);
    let mut net = Net::new(server(&pki, "reneg-sec 20\n"), vec![client(&pki, 0, "")]);
    net.run(Duration::from_secs(10), |n| n.connected(0));
    net.run(Duration::from_secs(30), |n| {
        n.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::PeerKeysChanged { key_id: 1, .. }))
            && n.clients[0]
                .2
                .iter()
                .any(|e| matches!(e, ClientEvent::KeysChanged { key_id: 1, .. }))
    });
    // After the client switched its send key, data on key-id 1 flows both ways.
    net.advance(Duration::from_secs(2));
    assert_eq!(net.clients[0].1.data_plane().send.unwrap().key_id(), 1);
    assert_data_both_ways(&net, 0);
}

#[test]
fn exit_and_inactivity_remove_peers() {
    let pki = pki(2);
    let mut net = Net::new(
        server(&pki, ""),
        vec![client(&pki, 0, ""), client(&pki, 1, "")],
    );
    net.run(Duration::from_secs(10), |n| {
        n.connected(0) && n.connected(1)
    });
    let t = net.now;
    net.clients[0].1.close(t);
    net.run(Duration::from_secs(5), |n| {
        n.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::PeerGone { reason, .. } if reason.contains("EXIT")))
    });
    // Client 1 goes silent (its data path is not simulated): the server times it out after
    // twice ping-restart (2 × 60 s).
    net.clients.truncate(1);
    net.run(Duration::from_secs(130), |n| n.server.counts().peers == 0);
    net.step();
    let gone: Vec<_> = net
        .server_events
        .iter()
        .filter(|e| matches!(e, ServerEvent::PeerGone { .. }))
        .collect();
    assert!(
        gone.iter().any(
            |e| matches!(e, ServerEvent::PeerGone { reason, .. } if reason.contains("inactivity"))
        ),
        "{gone:?}"
    );
}

#[test]
fn unauthenticated_packets_leave_no_state() {
    let pki = pki(1);
    let mut s = server(&pki, "");
    let now = Instant::now();
    let from = PeerAddr::Udp("198.18.9.9:5555".parse().unwrap());
    // A valid client reset gets a stateless answer, no peer.
    let mut c = client(&pki, 0, "");
    let mut reset = vec![];
    c.poll_transmit(now, &mut reset).unwrap();
    s.handle_control(now, from, &reset).unwrap();
    assert_eq!(s.counts().peers, 0);
    let mut out = vec![];
    assert_eq!(s.poll_transmit(now, &mut out), Some(from));
    // A forged "cookie echo": ACK with a made-up server session id.
    let mut forged = vec![0x28];
    forged.extend_from_slice(&[1; 8]);
    forged.push(1);
    forged.extend_from_slice(&0u32.to_be_bytes());
    forged.extend_from_slice(&[0xee; 8]);
    assert_eq!(
        s.handle_control(now, from, &forged),
        Err(DropReason::UnknownPeer)
    );
    assert_eq!(s.counts().peers, 0);
    // Garbage, data packets from strangers, truncated packets.
    assert!(s.handle_control(now, from, &[]).is_err());
    assert!(s.handle_control(now, from, &[0x48, 0, 0, 1, 2, 3]).is_err());
    assert!(s.handle_control(now, from, &reset[..5]).is_err());
    assert_eq!(s.counts().peers, 0);
    // A reset flood is rate limited (100 per 10 s), still without state.
    let mut limited = 0;
    for _ in 0..150 {
        if s.handle_control(now, from, &reset) == Err(DropReason::RateLimited) {
            limited += 1;
        }
    }
    assert!(limited >= 50, "{limited}");
    assert_eq!(s.counts().peers, 0);
}

#[test]
fn duplicate_common_name_replaces_the_old_session() {
    let pki = pki(1);
    // Both clients present client0's certificate.
    let mut net = Net::new(
        server(&pki, ""),
        vec![client(&pki, 0, ""), client(&pki, 0, "")],
    );
    net.run(Duration::from_secs(10), |n| n.connected(1));
    net.step();
    assert!(
        net.server_events.iter().any(
            |e| matches!(e, ServerEvent::PeerGone { reason, .. } if reason.contains("replaced"))
        )
    );
    assert_eq!(net.server.snapshot().peers.len(), 1);
    // With duplicate-cn both stay.
    let mut net = Net::new(
        server(&pki, "duplicate-cn\n"),
        vec![client(&pki, 0, ""), client(&pki, 0, "")],
    );
    net.run(Duration::from_secs(10), |n| {
        n.connected(0) && n.connected(1)
    });
    assert_eq!(net.server.snapshot().peers.len(), 2);
}

#[test]
fn max_clients_refuses_without_state() {
    let pki = pki(3);
    let clients = (0..3).map(|i| client(&pki, i, "")).collect();
    let mut net = Net::new(server(&pki, "max-clients 2\n"), clients);
    net.run(Duration::from_secs(10), |n| {
        n.connected(0) && n.connected(1)
    });
    for _ in 0..50 {
        net.step();
        net.advance(Duration::from_millis(100));
    }
    assert!(!net.connected(2));
    assert_eq!(net.server.counts().peers, 2);
    // Refused with a reason: at admission when the others were in (no state), or at
    // authentication when all three handshook at once ("server full", AUTH_FAILED).
    let full = net
        .server_events
        .iter()
        .any(|e| matches!(e, ServerEvent::Log(l) if l.contains("server full (max-clients 2)")));
    assert!(
        full || net.drops.contains(&DropReason::Refused),
        "{:?}",
        net.server_events
    );
}

#[test]
fn certificate_less_client_with_username_as_common_name() {
    let pki = pki(1);
    let s = server(
        &pki,
        "verify-client-cert none\nusername-as-common-name\nscript-security 2\nauth-user-pass-verify /bin/true via-env\n",
    );
    // A client without certificate, with credentials.
    let text = "client\nremote 198.18.1.1 1194\nca ca\nauth-user-pass creds\n";
    let cfg = ClientConfig::parse(text, Path::new("/t/client.conf")).unwrap();
    let ca = tls::certs_from_pem("ca", &pki.ca_pem).unwrap();
    let tls = tls::client_config(
        &ca,
        None,
        PeerCheck::default(),
        &tls::Negotiation::versions(cfg.tls_version_min, cfg.tls_version_max),
    )
    .unwrap();
    let setup = ClientSetup::new(
        &cfg,
        tls,
        WrapConfig::None,
        Some(("carol".into(), "pw".into())),
        Transport::Udp,
        false,
    );
    let c = Client::new(Arc::new(setup), Instant::now(), 3);
    let mut net = Net::new(s, vec![c]);
    net.auth = Box::new(|e| {
        let ServerEvent::AuthRequest {
            common_name,
            username,
            password,
            ..
        } = e
        else {
            panic!()
        };
        assert_eq!(common_name.as_deref(), Some("carol"));
        assert_eq!(
            (username.as_deref(), password.as_deref()),
            (Some("carol"), Some("pw"))
        );
        AuthResult {
            ok: true,
            ..AuthResult::default()
        }
    });
    net.run(Duration::from_secs(10), |n| n.connected(0));
    assert_eq!(net.server.snapshot().peers[&0].common_name, "carol");
}

#[test]
fn float_moves_a_peer_to_its_new_address() {
    let pki = pki(1);
    let mut net = Net::new(server(&pki, ""), vec![client(&pki, 0, "")]);
    net.run(Duration::from_secs(10), |n| n.connected(0));
    let old = PeerAddr::Udp(net.clients[0].0);
    let new = PeerAddr::Udp("198.18.1.99:41000".parse().unwrap());
    let g = net.server.generation();
    let session = net.server.snapshot().peers[&0].session;
    // A report about another session with the same peer-id changes nothing.
    net.server.handle_float(0, session + 1, new);
    assert_eq!(net.server.generation(), g, "a stale float moved the peer");
    net.server.handle_float(0, session, new);
    assert!(net.server.generation() > g, "data path must see the change");
    let snap = net.server.snapshot();
    assert_eq!(snap.by_addr.get(&new), Some(&0));
    assert_eq!(snap.by_addr.get(&old), None);
    assert_eq!(snap.peers[&0].addr, new);
    // Control replies now go to the new address.
    net.clients[0].0 = "198.18.1.99:41000".parse().unwrap();
    let t = net.now;
    net.clients[0].1.close(t);
    net.run(Duration::from_secs(5), |n| n.server.counts().peers == 0);
}

/// A client cannot float onto another live client's address (with forged source addresses it
/// would take that client's traffic): the float is refused, both keep their addresses.
#[test]
fn float_onto_another_clients_address_is_refused() {
    let pki = pki(2);
    let mut net = Net::new(
        server(&pki, ""),
        vec![client(&pki, 0, ""), client(&pki, 1, "")],
    );
    net.run(Duration::from_secs(10), |n| {
        n.connected(0) && n.connected(1)
    });
    let snap = net.server.snapshot();
    let (a, b) = (
        PeerAddr::Udp(net.clients[0].0),
        PeerAddr::Udp(net.clients[1].0),
    );
    let (pa, pb) = (snap.by_addr[&a], snap.by_addr[&b]);
    let session = snap.peers[&pa].session;
    let g = net.server.generation();
    net.server.handle_float(pa, session, b);
    assert_eq!(net.server.generation(), g, "the float went through");
    let snap = net.server.snapshot();
    assert_eq!((snap.by_addr[&a], snap.by_addr[&b]), (pa, pb));
    assert_eq!((snap.peers[&pa].addr, snap.peers[&pb].addr), (a, b));
}

/// A verdict that comes back after its session is gone never admits the next session that
/// got the same peer-id (the CVE-2020-15078 class): verdicts are bound to sessions.
#[test]
fn a_stale_auth_verdict_never_admits_a_later_session() {
    let pki = pki(2);
    let mut net = Net::new(server(&pki, ""), vec![client(&pki, 0, "")]);
    net.held = Some(vec![]);
    net.run(Duration::from_secs(10), |n| {
        n.held.as_ref().is_some_and(|h| !h.is_empty())
    });
    let (peer, first, key_id) = net.held.as_mut().unwrap().remove(0);
    // The first session goes away while its verification is still running.
    net.server.handle_exit_notification(net.now, peer, first);
    assert!(net.server.snapshot().peers.is_empty());
    net.clients.clear();
    net.clients.push((
        SocketAddr::from(([198, 18, 1, 3], 40100)),
        client(&pki, 1, ""),
        vec![],
    ));
    net.run(Duration::from_secs(10), |n| {
        n.held.as_ref().is_some_and(|h| !h.is_empty())
    });
    let (peer2, second, _) = net.held.as_mut().unwrap().remove(0);
    assert_eq!(peer2, peer, "the peer-id is reused");
    assert_ne!(second, first);
    // The first session's verdict arrives late: ignored.
    let ok = || AuthResult {
        ok: true,
        ..AuthResult::default()
    };
    net.server
        .handle_auth_result(net.now, peer, first, key_id, ok());
    for _ in 0..60 {
        if !net.step() {
            net.advance(Duration::from_millis(50));
        }
    }
    assert!(
        !net.connected(0),
        "a verdict for another session admitted this one"
    );
    // Its own verdict admits it.
    net.server
        .handle_auth_result(net.now, peer, second, 0, ok());
    net.run(Duration::from_secs(10), |n| n.connected(0));
}

/// Credentials that would break a via-file script, the client-config-dir lookup or a log line
/// (a username with a line break or other control character, a password with a line break)
/// are refused before any verification sees them: no AuthRequest, the client gets AUTH_FAILED.
#[test]
fn credentials_with_control_characters_are_refused_unseen() {
    for (user, pass) in [
        ("eve\nadmin", "pw"),
        ("eve\u{1b}[2J", "pw"),
        ("eve", "pw\nroot"),
    ] {
        let pki = pki(1);
        let text = "client\nremote 198.18.1.1 1194\nca ca\ncert c\nkey k\nauth-user-pass creds\n";
        let cfg = ClientConfig::parse(text, Path::new("/t/client.conf")).unwrap();
        let ca = tls::certs_from_pem("ca", &pki.ca_pem).unwrap();
        let id = identity(&pki.clients[0].0, &pki.clients[0].1);
        let tls = tls::client_config(
            &ca,
            Some(id),
            PeerCheck::default(),
            &tls::Negotiation::versions(cfg.tls_version_min, cfg.tls_version_max),
        )
        .unwrap();
        let setup = ClientSetup::new(
            &cfg,
            tls,
            WrapConfig::None,
            Some((user.into(), pass.into())),
            Transport::Udp,
            false,
        );
        let c = Client::new(Arc::new(setup), Instant::now(), 3);
        let mut net = Net::new(server(&pki, ""), vec![c]);
        net.run(Duration::from_secs(20), |n| {
            n.clients[0]
                .2
                .iter()
                .any(|e| matches!(e, ClientEvent::Fatal(r) if r.contains("AUTH_FAILED")))
        });
        assert!(
            !net.server_events
                .iter()
                .any(|e| matches!(e, ServerEvent::AuthRequest { .. })),
            "{user:?}/{pass:?} reached verification"
        );
    }
}

/// Drives one client's handshake up to the server creating its session (the cookie echo),
/// then abandons it: a handshake that never completes, as a flood makes them. Returns what
/// the server said to the echo.
fn stalled_handshake(
    s: &mut Server,
    c: &mut Client,
    now: Instant,
    from: PeerAddr,
) -> Result<(), DropReason> {
    let mut reset = vec![];
    c.poll_transmit(now, &mut reset).unwrap();
    s.handle_control(now, from, &reset)?;
    let mut reply = vec![];
    while let Some(to) = s.poll_transmit(now, &mut reply) {
        if to == from {
            break;
        }
        reply.clear();
    }
    c.handle_control(now, &reply).unwrap();
    let mut echo = vec![];
    c.poll_transmit(now, &mut echo).unwrap();
    s.handle_control(now, from, &echo)
}

/// Handshakes that never complete, from one address, cannot fill `max-clients`: they are
/// counted apart from admitted clients and bounded per source; a client from elsewhere
/// still connects.
#[test]
fn stalled_handshakes_from_one_source_leave_room_for_others() {
    let pki = pki(2);
    let mut net = Net::new(server(&pki, "max-clients 4\n"), vec![client(&pki, 0, "")]);
    let mut opened = 0;
    for round in 0..4u16 {
        for i in 0..10u16 {
            let from = PeerAddr::Udp(SocketAddr::from(([198, 18, 9, 9], 20000 + round * 100 + i)));
            let mut c = client(&pki, 1, "");
            if stalled_handshake(&mut net.server, &mut c, net.now, from).is_ok() {
                opened += 1;
            }
        }
        // The next round comes after the source's share of stateless answers refilled.
        net.now += Duration::from_secs(10);
    }
    assert_eq!(
        opened,
        tunscope_proto::server::HANDSHAKES_PER_SOURCE,
        "handshakes opened"
    );
    assert!(net.server.counts().peers <= tunscope_proto::server::HANDSHAKES_PER_SOURCE);
    net.run(Duration::from_secs(10), |n| n.connected(0));
    assert_data_both_ways(&net, 0);
}

/// A client restarted on the same address and port (`lport`, after a crash) reconnects at
/// once: its new session replaces the old peer when its cookie comes back, instead of its
/// packets going to the dead session until that times out.
#[test]
fn a_client_restarting_on_the_same_port_reconnects() {
    let pki = pki(1);
    let mut net = Net::new(server(&pki, ""), vec![client(&pki, 0, "")]);
    net.run(Duration::from_secs(10), |n| n.connected(0));
    let old_peer = net.clients[0].1.data_plane().peer_id;
    // The same address, a fresh client (new session ids, no memory of the old tunnel).
    net.clients[0].1 = client(&pki, 0, "");
    net.clients[0].2.clear();
    net.run(Duration::from_secs(5), |n| n.connected(0));
    assert_eq!(net.server.counts().peers, 1, "the old session was replaced");
    assert!(net.clients[0].1.data_plane().peer_id.is_some() && old_peer.is_some());
    assert_data_both_ways(&net, 0);
}

/// Oversized control packets (a 64 KiB TCP record, a jumbo datagram) are dropped before any
/// parsing, in both roles.
#[test]
fn oversized_control_packets_are_dropped() {
    let pki = pki(1);
    let mut s = server(&pki, "");
    let now = Instant::now();
    let mut big = vec![0x38];
    big.resize(tunscope_proto::consts::MAX_CONTROL_PACKET + 1, 0);
    let from = PeerAddr::Udp("198.18.9.9:5555".parse().unwrap());
    assert_eq!(s.handle_control(now, from, &big), Err(DropReason::TooBig));
    let mut c = client(&pki, 0, "");
    big[0] = 0x40;
    assert_eq!(c.handle_control(now, &big), Err(DropReason::TooBig));
}

/// A fixed address (`ifconfig-push`) inside the dynamic pool, reserved from the ccd files at
/// start: dynamic clients never get it (the pool is exhausted sooner instead), and its owner
/// connects with it; no two clients ever share an address.
#[test]
fn reserved_fixed_addresses_are_never_leased_dynamically() {
    let pki = pki(3);
    let clients = (0..3).map(|i| client(&pki, i, "")).collect();
    let mut s = server(&pki, "ifconfig-pool 198.19.0.2 198.19.0.3\n");
    let fixed: std::net::Ipv4Addr = "198.19.0.2".parse().unwrap();
    s.reserve_fixed(&[fixed], &[]);
    let mut net = Net::new(s, clients);
    net.auth = Box::new(|e| {
        let owner =
            matches!(e, ServerEvent::AuthRequest { common_name: Some(cn), .. } if cn == "client2");
        AuthResult {
            ok: true,
            reason: None,
            overrides: owner.then(|| {
                ClientOverrides::parse(
                    "ifconfig-push 198.19.0.2 255.255.255.0\n",
                    Path::new("/ccd/client2"),
                )
                .unwrap()
            }),
        }
    });
    net.run(Duration::from_secs(15), |n| {
        n.connected(2) && (n.connected(0) || n.connected(1))
    });
    for _ in 0..20 {
        net.step();
        net.advance(Duration::from_millis(100));
    }
    let addrs: Vec<std::net::Ipv4Addr> = (0..3)
        .filter(|i| net.connected(*i))
        .map(|i| net.clients[i].1.pushed().unwrap().ifconfig.unwrap().0)
        .collect();
    assert_eq!(
        addrs.len(),
        2,
        "one dynamic client must be refused: {addrs:?}"
    );
    assert_eq!(
        net.clients[2].1.pushed().unwrap().ifconfig.unwrap().0,
        fixed
    );
    assert!(addrs[0] != addrs[1], "{addrs:?}");
}

/// A server pushing more options than any real setup (here 9,000 routes, sent in many
/// push-continuation parts) is refused with a clear reason; 3,000 routes are taken.
#[test]
fn endless_pushes_are_refused_large_ones_taken() {
    let pki = pki(1);
    let pushes = |n: u32| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "push \"route 198.19.{}.{} 255.255.255.255\"\n",
                    100 + i / 250,
                    i % 250
                )
            })
            .collect()
    };
    let mut net = Net::new(server(&pki, &pushes(3000)), vec![client(&pki, 0, "")]);
    net.run(Duration::from_secs(20), |n| n.connected(0));
    assert!(net.clients[0].1.pushed().unwrap().routes.len() >= 3000);
    let mut net = Net::new(server(&pki, &pushes(9000)), vec![client(&pki, 0, "")]);
    net.run(Duration::from_secs(20), |n| {
        n.clients[0]
            .2
            .iter()
            .any(|e| matches!(e, ClientEvent::Fatal(r) if r.contains("more than 8192 options")))
    });
    assert!(!net.connected(0));
}

/// A refused client that keeps talking — retransmitting, PUSH_REQUEST after PUSH_REQUEST,
/// EXIT — and never hears or acknowledges AUTH_FAILED: its slot goes within 3 s of the
/// refusal all the same (later messages never postpone the end; before, a refused client
/// whose key never became active kept its slot for good), and what the server sends it
/// meanwhile stays a handful of retransmissions.
#[test]
fn a_refused_client_talking_on_loses_its_slot_on_time() {
    let pki = pki(1);
    let mut net = Net::new(server(&pki, ""), vec![client(&pki, 0, "")]);
    net.auth = Box::new(|_| AuthResult {
        ok: false,
        reason: Some("test refusal".into()),
        overrides: None,
    });
    net.run(Duration::from_secs(10), |n| {
        n.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::Log(l) if l.contains("refused: test refusal")))
    });
    let refused_at = net.now;
    net.blackhole = Some(0);
    let mut exited = false;
    let mut gone_at = None;
    while net.now < refused_at + Duration::from_secs(12) {
        net.step();
        net.advance(Duration::from_millis(100));
        if !exited && net.now >= refused_at + Duration::from_secs(1) {
            net.clients[0].1.close(net.now);
            exited = true;
        }
        if gone_at.is_none() && net.server.counts().peers == 0 {
            gone_at = Some(net.now);
        }
    }
    let gone = gone_at.expect("the refused peer was never removed");
    assert!(
        gone <= refused_at + tunscope_proto::server::REFUSED_GRACE + Duration::from_millis(200),
        "removed {:?} after the refusal",
        gone - refused_at
    );
    assert_eq!(net.server.counts().peers, 0, "it came back");
    let lost = net.blackhole.unwrap_or(0);
    assert!(
        lost <= 12,
        "{lost} packets sent to a client that never answers"
    );
}

/// 2.6's common-name lock: a client that renegotiates with another certificate (here the
/// CA's other client certificate) loses its session rather than keeping the address and
/// rights the first identity got.
#[test]
fn a_renegotiation_with_another_certificate_ends_the_session() {
    let pki = pki(2);
    let mut net = Net::new(server(&pki, ""), vec![client(&pki, 0, "reneg-sec 2\n")]);
    net.run(Duration::from_secs(10), |n| n.connected(0));
    // The next key negotiation presents client1's certificate.
    let other = client_with(&pki, 1, "reneg-sec 2\n", |_| {});
    let setup = other.setup();
    net.clients[0].1.renew_setup(setup);
    net.run(Duration::from_secs(10), |n| {
        n.server_events.iter().any(
            |e| matches!(e, ServerEvent::PeerGone { reason, .. } if reason.contains("common name changed")),
        )
    });
    assert_eq!(net.server.counts().peers, 0);
}

/// A client may start a renegotiation once a second at most: one that renegotiates after
/// every packet (`reneg-pkts 1`, sending all the time) has soft resets held back
/// (`rate_limited`), resent, and taken a moment later: renegotiations go on at the paced
/// rate and data still flows.
#[test]
fn client_renegotiations_are_paced() {
    let pki = pki(1);
    let mut net = Net::new(server(&pki, ""), vec![client(&pki, 0, "reneg-pkts 1\n")]);
    net.run(Duration::from_secs(10), |n| n.connected(0));
    let start = net.now;
    let mut buf = vec![0u8; 256];
    while net.now < start + Duration::from_secs(10) {
        let plane = net.clients[0].1.data_plane();
        if let Some(k) = plane.send.clone() {
            let _ = k.seal(plane.header(&k), plane.framing, b"\x45x", &mut buf);
        }
        if !net.step() {
            net.advance(Duration::from_millis(20));
        }
    }
    let renegotiations = net
        .server_events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Log(l) if l.contains("client started renegotiation")))
        .count();
    assert!(
        net.drops.contains(&DropReason::RateLimited),
        "{:?}",
        net.drops
    );
    assert!(
        (5..=11).contains(&renegotiations),
        "{renegotiations} client renegotiations in 10 s"
    );
    assert_data_both_ways(&net, 0);
}
