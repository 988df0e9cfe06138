//! TLS setup for the control channel: rustls configs and OpenVPN-style certificate checks.
//!
//! OpenVPN does not check host names. A peer certificate is accepted when it chains to `ca`
//! (with OpenSSL's default purpose check: an EKU, if present, must allow the role), has a
//! common name, and passes the optional `remote-cert-tls` (KU present, EKU for the role) and
//! `verify-x509-name` checks. Session resumption is off (every key-id is a full handshake),
//! no SNI or ALPN is sent, like a stock 2.6 client.

pub mod names;

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    SignatureScheme, SupportedProtocolVersion,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::options::client::{CertType, TlsVersion, VerifyX509Name, X509NameKind};
use crate::options::common::TlsOptions;

/// Errors while building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// No certificate in a PEM input.
    #[error("{0}: no certificate found")]
    NoCertificate(String),
    /// Unreadable PEM or DER.
    #[error("{what}: {detail}")]
    BadPem {
        /// Which input.
        what: String,
        /// Parser message.
        detail: String,
    },
    /// rustls refused the configuration (e.g. key does not match certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] TlsError),
}

/// Reads all certificates of a PEM text.
pub fn certs_from_pem(
    what: &str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsSetupError::BadPem {
        what: what.to_owned(),
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate(what.to_owned()));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1) from PEM text.
pub fn key_from_pem(what: &str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsSetupError::BadPem {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

/// Our own certificate chain and key.
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

/// The OpenVPN-style checks applied to a peer certificate: revocation during chain
/// validation, the rest after it.
#[derive(Clone, Debug, Default)]
pub struct PeerCheck {
    /// `remote-cert-tls`.
    pub remote_cert_tls: Option<CertType>,
    /// `verify-x509-name`.
    pub verify_x509_name: Option<VerifyX509Name>,
    /// `ns-cert-type`.
    pub ns_cert_type: Option<CertType>,
    /// `remote-cert-ku` (0 = "some keyUsage").
    pub remote_cert_ku: Vec<u16>,
    /// `remote-cert-eku` (dotted OID).
    pub remote_cert_eku: Option<String>,
    /// `peer-fingerprint`: without a CA these alone authenticate the peer.
    pub fingerprints: Vec<[u8; 32]>,
    /// `crl-verify`: revocation lists checked for the peer's certificate.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl PeerCheck {
    /// The certificate checks of a config (CRLs are added once read).
    pub fn from_options(
        remote_cert_tls: Option<CertType>,
        verify_x509_name: Option<VerifyX509Name>,
        tls: &TlsOptions,
    ) -> PeerCheck {
        PeerCheck {
            remote_cert_tls,
            verify_x509_name,
            ns_cert_type: tls.ns_cert_type,
            remote_cert_ku: tls.remote_cert_ku.clone(),
            remote_cert_eku: tls.remote_cert_eku.clone(),
            fingerprints: tls.peer_fingerprints.clone(),
            crls: vec![],
        }
    }
}

/// What rustls may negotiate: versions (`tls-version-min/max`), suites (`tls-cipher`,
/// `tls-ciphersuites`) and groups (`tls-groups`).
#[derive(Clone, Debug)]
pub struct Negotiation {
    /// Lowest version.
    pub min: TlsVersion,
    /// Highest version.
    pub max: TlsVersion,
    /// TLS 1.2 suites (None: all rustls has; empty: TLS 1.2 off).
    pub tls12_suites: Option<Vec<rustls::CipherSuite>>,
    /// TLS 1.3 suites.
    pub tls13_suites: Option<Vec<rustls::CipherSuite>>,
    /// Key exchange groups.
    pub groups: Option<Vec<rustls::NamedGroup>>,
}

impl Negotiation {
    /// Every version and suite rustls has, between `min` and `max`.
    pub fn versions(min: TlsVersion, max: TlsVersion) -> Negotiation {
        Negotiation {
            min,
            max,
            tls12_suites: None,
            tls13_suites: None,
            groups: None,
        }
    }

    /// From a config's settings.
    pub fn from_options(min: TlsVersion, max: TlsVersion, tls: &TlsOptions) -> Negotiation {
        Negotiation {
            min,
            max,
            tls12_suites: tls.tls12_suites.clone(),
            tls13_suites: tls.tls13_suites.clone(),
            groups: tls.groups.clone(),
        }
    }

    /// The crypto provider restricted to the allowed suites and groups, and the versions.
    fn provider(
        &self,
    ) -> Result<(Arc<CryptoProvider>, Vec<&'static SupportedProtocolVersion>), TlsSetupError> {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        p.cipher_suites.retain(|cs| {
            let s = cs.suite();
            let list = match cs {
                rustls::SupportedCipherSuite::Tls12(_) => &self.tls12_suites,
                rustls::SupportedCipherSuite::Tls13(_) => &self.tls13_suites,
            };
            list.as_ref().is_none_or(|l| l.contains(&s))
        });
        if let Some(g) = &self.groups {
            p.kx_groups.retain(|kx| g.contains(&kx.name()));
        }
        let mut v = versions(self.min, self.max);
        if self.tls12_suites.as_ref().is_some_and(Vec::is_empty) {
            v.retain(|v| v.version != rustls::ProtocolVersion::TLSv1_2);
        }
        if v.is_empty() {
            return Err(TlsSetupError::NoCertificate(
                "tls-cipher/tls-version: no TLS version is left to negotiate".into(),
            ));
        }
        Ok((Arc::new(p), v))
    }
}

/// Reads every CRL of a PEM text (`crl-verify`).
pub fn crls_from_pem(
    what: &str,
    pem: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsSetupError> {
    let crls: Result<Vec<_>, _> =
        CertificateRevocationListDer::pem_slice_iter(pem.as_bytes()).collect();
    let crls = crls.map_err(|e| TlsSetupError::BadPem {
        what: what.to_owned(),
        detail: e.to_string(),
    })?;
    if crls.is_empty() {
        return Err(TlsSetupError::BadPem {
            what: what.to_owned(),
            detail: "no X509 CRL block found".into(),
        });
    }
    for c in &crls {
        webpki::OwnedCertRevocationList::from_der(c.as_ref()).map_err(|e| {
            TlsSetupError::BadPem {
                what: what.to_owned(),
                detail: format!("CRL does not parse: {e:?}"),
            }
        })?;
    }
    Ok(crls)
}

/// Why a peer certificate was refused after chain validation.
#[derive(Debug, thiserror::Error)]
pub enum PeerCertError {
    /// Unparseable certificate.
    #[error("peer certificate does not parse: {0}")]
    Parse(String),
    /// No CN in the subject.
    #[error("peer certificate has no common name (CN)")]
    NoCommonName,
    /// remote-cert-tls: no key usage extension.
    #[error("remote-cert-tls {0}: peer certificate has no keyUsage extension")]
    NoKeyUsage(&'static str),
    /// remote-cert-tls: EKU missing or wrong.
    #[error("remote-cert-tls {0}: peer certificate lacks extendedKeyUsage {1}")]
    WrongEku(&'static str, &'static str),
    /// ns-cert-type: Netscape certificate type missing or wrong.
    #[error("ns-cert-type {0}: peer certificate's nsCertType does not include SSL {0}")]
    WrongNsCertType(&'static str),
    /// remote-cert-ku: no matching key usage.
    #[error("remote-cert-ku: peer certificate keyUsage {found:#04x} matches none of {expected}")]
    WrongKeyUsage {
        /// The peer's key usage (OpenSSL bit order).
        found: u16,
        /// What the config listed.
        expected: String,
    },
    /// remote-cert-eku: the OID is absent.
    #[error("remote-cert-eku: peer certificate lacks extendedKeyUsage {0}")]
    MissingEku(String),
    /// peer-fingerprint: no match.
    #[error("peer-fingerprint: peer certificate fingerprint {0} is not listed")]
    FingerprintMismatch(String),
    /// verify-x509-name mismatch.
    #[error("verify-x509-name: peer '{found}' does not match '{expected}'")]
    NameMismatch {
        /// What we saw.
        found: String,
        /// What the config asked for.
        expected: String,
    },
}

/// Facts about a verified peer certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Common name.
    pub common_name: String,
    /// Subject in one-line form.
    pub subject: String,
}

/// Reads the CN and subject of a certificate.
pub fn peer_identity(der: &[u8]) -> Result<PeerIdentity, PeerCertError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| PeerCertError::Parse(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .ok_or(PeerCertError::NoCommonName)?;
    Ok(PeerIdentity {
        common_name: cn.to_owned(),
        subject: cert.subject().to_string(),
    })
}

impl PeerCheck {
    /// Applies the OpenVPN checks to a (chain-validated) leaf certificate.
    pub fn check(&self, der: &[u8]) -> Result<PeerIdentity, PeerCertError> {
        let id = peer_identity(der)?;
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PeerCertError::Parse(e.to_string()))?;
        if let Some(t) = self.remote_cert_tls {
            let role = match t {
                CertType::Server => "server",
                CertType::Client => "client",
            };
            let ku = cert
                .key_usage()
                .map_err(|e| PeerCertError::Parse(e.to_string()))?;
            if ku.is_none() {
                return Err(PeerCertError::NoKeyUsage(role));
            }
            let eku = cert
                .extended_key_usage()
                .map_err(|e| PeerCertError::Parse(e.to_string()))?;
            let ok = eku.is_some_and(|e| match t {
                CertType::Server => e.value.server_auth,
                CertType::Client => e.value.client_auth,
            });
            if !ok {
                let want = match t {
                    CertType::Server => "serverAuth",
                    CertType::Client => "clientAuth",
                };
                return Err(PeerCertError::WrongEku(role, want));
            }
        }
        if let Some(t) = self.ns_cert_type {
            let (role, ok) = match ns_cert_type(&cert) {
                Some((client, server)) => match t {
                    CertType::Server => ("server", server),
                    CertType::Client => ("client", client),
                },
                None => (
                    match t {
                        CertType::Server => "server",
                        CertType::Client => "client",
                    },
                    false,
                ),
            };
            if !ok {
                return Err(PeerCertError::WrongNsCertType(role));
            }
        }
        if !self.remote_cert_ku.is_empty() {
            let ku = cert
                .key_usage()
                .map_err(|e| PeerCertError::Parse(e.to_string()))?
                .ok_or(PeerCertError::NoKeyUsage("remote-cert-ku"))?;
            // OpenSSL's order, as OpenVPN compares: digitalSignature = 0x80 … encipherOnly = 0x01.
            let mut nku: u16 = 0;
            for i in 0..8 {
                if ku.value.flags & (1 << i) != 0 {
                    nku |= 1 << (7 - i);
                }
            }
            let ok = self
                .remote_cert_ku
                .iter()
                .any(|&want| want == 0 || (nku & want) == want);
            if !ok {
                return Err(PeerCertError::WrongKeyUsage {
                    found: nku,
                    expected: self
                        .remote_cert_ku
                        .iter()
                        .map(|k| format!("{k:#x}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                });
            }
        }
        if let Some(oid) = &self.remote_cert_eku {
            let eku = cert
                .extended_key_usage()
                .map_err(|e| PeerCertError::Parse(e.to_string()))?;
            let has = eku.is_some_and(|e| {
                let e = &e.value;
                match oid.as_str() {
                    "1.3.6.1.5.5.7.3.1" => e.server_auth,
                    "1.3.6.1.5.5.7.3.2" => e.client_auth,
                    "1.3.6.1.5.5.7.3.3" => e.code_signing,
                    "1.3.6.1.5.5.7.3.4" => e.email_protection,
                    "1.3.6.1.5.5.7.3.8" => e.time_stamping,
                    "1.3.6.1.5.5.7.3.9" => e.ocsp_signing,
                    o => e.other.iter().any(|x| x.to_id_string() == o),
                }
            });
            if !has {
                return Err(PeerCertError::MissingEku(oid.clone()));
            }
        }
        if !self.fingerprints.is_empty() {
            let fp = fingerprint(der);
            if !self.fingerprints.contains(&fp) {
                return Err(PeerCertError::FingerprintMismatch(
                    fp.iter()
                        .map(|b| format!("{b:02X}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                ));
            }
        }
        if let Some(v) = &self.verify_x509_name {
            let (found, ok) = match v.kind {
                X509NameKind::Name => (id.common_name.clone(), id.common_name == v.name),
                X509NameKind::NamePrefix => {
                    (id.common_name.clone(), id.common_name.starts_with(&v.name))
                }
                X509NameKind::Subject => (
                    id.subject.clone(),
                    normalize_dn(&id.subject) == normalize_dn(&v.name),
                ),
            };
            if !ok {
                return Err(PeerCertError::NameMismatch {
                    found,
                    expected: v.name.clone(),
                });
            }
        }
        Ok(id)
    }
}

/// The Netscape certificate type (SSL client, SSL server), if the extension is there.
fn ns_cert_type(cert: &X509Certificate<'_>) -> Option<(bool, bool)> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::NSCertType(t) => {
                Some((t.ssl_client(), t.ssl_server()))
            }
            _ => None,
        })
}

/// SHA-256 of a certificate, as `peer-fingerprint` lists it.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Chain validation against `roots` with the CRLs of `check` — skipped when the config has
/// no CA but `peer-fingerprint`s (self-signed peers, as OpenVPN allows).
fn verify_chain(
    provider: &CryptoProvider,
    roots: &[rustls::pki_types::TrustAnchor<'static>],
    check: &PeerCheck,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<(), TlsError> {
    if roots.is_empty() && !check.fingerprints.is_empty() {
        // Still a certificate we can parse, within its validity period.
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(map_webpki)?;
        drop(ee);
        return Ok(());
    }
    let ee = webpki::EndEntityCert::try_from(end_entity).map_err(map_webpki)?;
    let owned: Vec<webpki::CertRevocationList<'static>> = check
        .crls
        .iter()
        .filter_map(|c| webpki::OwnedCertRevocationList::from_der(c.as_ref()).ok())
        .map(webpki::CertRevocationList::from)
        .collect();
    let refs: Vec<&webpki::CertRevocationList<'_>> = owned.iter().collect();
    let revocation = match webpki::RevocationOptionsBuilder::new(&refs) {
        Ok(b) => Some(
            b.with_depth(webpki::RevocationCheckDepth::EndEntity)
                .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                .build(),
        ),
        Err(_) => None,
    };
    ee.verify_for_usage(
        provider.signature_verification_algorithms.all,
        roots,
        intermediates,
        now,
        usage,
        revocation,
        None,
    )
    .map_err(map_webpki)?;
    Ok(())
}

/// Compares subjects written as `C=US, CN=x` or `C=US,CN=x`.
fn normalize_dn(s: &str) -> String {
    s.split(',').map(str::trim).collect::<Vec<_>>().join(",")
}

fn cert_error(e: impl std::error::Error + Send + Sync + 'static) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn map_webpki(e: webpki::Error) -> TlsError {
    use webpki::Error as W;
    TlsError::InvalidCertificate(match e {
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::CertRevoked => CertificateError::Revoked,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    })
}

fn versions(min: TlsVersion, max: TlsVersion) -> Vec<&'static SupportedProtocolVersion> {
    let mut v = vec![];
    if min <= TlsVersion::Tls13 && max >= TlsVersion::Tls13 {
        v.push(&rustls::version::TLS13);
    }
    if min <= TlsVersion::Tls12 && max >= TlsVersion::Tls12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

fn anchors(
    ca: &[CertificateDer<'static>],
) -> Result<Vec<rustls::pki_types::TrustAnchor<'static>>, TlsSetupError> {
    ca.iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| TlsSetupError::BadPem {
                    what: "ca".into(),
                    detail: e.to_string(),
                })
        })
        .collect()
}

/// Verifies a server certificate like an OpenVPN client.
#[derive(Debug)]
struct ServerVerifier {
    roots: Vec<rustls::pki_types::TrustAnchor<'static>>,
    check: PeerCheck,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        verify_chain(
            &self.provider,
            &self.roots,
            &self.check,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        self.check.check(end_entity).map_err(cert_error)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether a server asks for client certificates (`verify-client-cert`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCertMode {
    /// Required (the default).
    Require,
    /// Requested; a client without one is accepted (then it must use a password).
    Optional,
    /// Not requested.
    None,
}

/// Verifies a client certificate like an OpenVPN server.
#[derive(Debug)]
struct ClientVerifier {
    roots: Vec<rustls::pki_types::TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
    check: PeerCheck,
    mode: ClientCertMode,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.mode != ClientCertMode::None
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == ClientCertMode::Require
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        verify_chain(
            &self.provider,
            &self.roots,
            &self.check,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        self.check.check(end_entity).map_err(cert_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Builds the rustls client config of an OpenVPN client.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: Option<Identity>,
    check: PeerCheck,
    negotiation: &Negotiation,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let (provider, versions) = negotiation.provider()?;
    let verifier = ServerVerifier {
        roots: anchors(ca)?,
        check,
        provider: provider.clone(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    };
    cfg.enable_sni = false;
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Builds the rustls server config of an OpenVPN server.
pub fn server_config(
    ca: &[CertificateDer<'static>],
    identity: Identity,
    mode: ClientCertMode,
    check: PeerCheck,
    negotiation: &Negotiation,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let (provider, versions) = negotiation.provider()?;
    let roots = anchors(ca)?;
    let subjects = roots
        .iter()
        .map(|a| DistinguishedName::in_sequence(a.subject.as_ref()))
        .collect();
    let verifier = ClientVerifier {
        roots,
        subjects,
        check,
        mode,
        provider: provider.clone(),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(identity.chain, identity.key)?;
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(cfg))
}

/// The server name handed to rustls: an IP address, for which no SNI is sent.
pub fn dummy_server_name() -> ServerName<'static> {
    ServerName::IpAddress(rustls::pki_types::IpAddr::V4(
        rustls::pki_types::Ipv4Addr::from([0, 0, 0, 0]),
    ))
}
