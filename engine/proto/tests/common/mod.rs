//! What the in-process protocol tests share: a throw-away PKI and our client and server
//! state machines built from config text.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tunscope_proto::client::{Client, ClientSetup};
use tunscope_proto::options::client::{ClientConfig, Transport};
use tunscope_proto::options::server::ServerConfig;
use tunscope_proto::server::{Server, ServerSetup};
use tunscope_proto::tls::{self, Identity, PeerCheck};
use tunscope_proto::wrap::WrapConfig;

pub struct Pki {
    pub ca_pem: String,
    pub server: (String, String),
    pub clients: Vec<(String, String)>,
}

pub fn pki(n_clients: usize) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "test CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = p.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(p, ca_key);
    let leaf = |cn: &str, server: bool| {
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
        let c = p.signed_by(&key, &issuer).unwrap();
        (c.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: leaf("server", true),
        clients: (0..n_clients)
            .map(|i| leaf(&format!("client{i}"), false))
            .collect(),
    }
}

pub fn identity(cert: &str, key: &str) -> Identity {
    Identity {
        chain: tls::certs_from_pem("cert", cert).unwrap(),
        key: tls::key_from_pem("key", key).unwrap(),
    }
}

pub fn server(pki: &Pki, extra: &str) -> Server {
    server_with(pki, extra, WrapConfig::None)
}

pub fn server_with(pki: &Pki, extra: &str, wrap: WrapConfig) -> Server {
    let text = format!(
        "port 1194\nproto udp\ndev tun\nca ca\ncert c\nkey k\ndh none\nserver 198.19.0.0 255.255.255.0\ntopology subnet\nkeepalive 10 60\npush \"route 198.19.10.0 255.255.255.0\"\ndns server 0 address 198.19.10.53\ndns server 0 resolve-domains corp.example\n{extra}"
    );
    server_from(pki, &text, wrap)
}

/// A server from the whole config text (credentials come from `pki`).
pub fn server_from(pki: &Pki, text: &str, wrap: WrapConfig) -> Server {
    let config = ServerConfig::parse(text, Path::new("/t/server.conf")).unwrap();
    let ca = tls::certs_from_pem("ca", &pki.ca_pem).unwrap();
    let tls = tls::server_config(
        &ca,
        identity(&pki.server.0, &pki.server.1),
        config.verify_client_cert,
        PeerCheck::default(),
        &tls::Negotiation::versions(config.tls_version_min, config.tls_version_max),
    )
    .unwrap();
    let setup = ServerSetup {
        tls,
        wrap,
        config,
        ipv6_link: false,
    };
    Server::new(Arc::new(setup), Instant::now(), 1_000)
}

pub fn client(pki: &Pki, i: usize, extra: &str) -> Client {
    client_with(pki, i, extra, |_| {})
}

pub fn client_with(
    pki: &Pki,
    i: usize,
    extra: &str,
    tweak: impl FnOnce(&mut ClientSetup),
) -> Client {
    let text = format!("client\nremote 198.18.1.1 1194\nca ca\ncert c\nkey k\n{extra}");
    let cfg = ClientConfig::parse(&text, Path::new("/t/client.conf")).unwrap();
    let ca = tls::certs_from_pem("ca", &pki.ca_pem).unwrap();
    let tls = tls::client_config(
        &ca,
        Some(identity(&pki.clients[i].0, &pki.clients[i].1)),
        PeerCheck::default(),
        &tls::Negotiation::versions(cfg.tls_version_min, cfg.tls_version_max),
    )
    .unwrap();
    let mut setup = ClientSetup::new(&cfg, tls, WrapConfig::None, None, Transport::Udp, false);
    tweak(&mut setup);
    Client::new(Arc::new(setup), Instant::now(), 2_000)
}
