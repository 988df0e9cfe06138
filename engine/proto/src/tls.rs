//! TLS setup for the control channel: rustls configs and OpenVPN-style certificate checks.
//!
//! OpenVPN does not check host names. A peer certificate is accepted when it chains to `ca`
//! (with OpenSSL's default purpose check: an EKU, if present, must allow the role), has a
//! common name, and passes the optional `remote-cert-tls` (KU present, EKU for the role) and
//! `verify-x509-name` checks. Session resumption is off (every key-id is a full handshake),
//! no SNI or ALPN is sent, like a stock 2.6 client.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    SignatureScheme, SupportedProtocolVersion,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::options::client::{CertType, TlsVersion, VerifyX509Name, X509NameKind};

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

/// The OpenVPN-style checks applied to a peer certificate after chain validation.
#[derive(Clone, Debug, Default)]
pub struct PeerCheck {
    /// `remote-cert-tls`.
    pub remote_cert_tls: Option<CertType>,
    /// `verify-x509-name`.
    pub verify_x509_name: Option<VerifyX509Name>,
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
        other => CertificateError::Other(OtherError(Arc::new(other))),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
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
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(map_webpki)?;
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(map_webpki)?;
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
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(map_webpki)?;
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(map_webpki)?;
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
    min: TlsVersion,
    max: TlsVersion,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let provider = provider();
    let verifier = ServerVerifier {
        roots: anchors(ca)?,
        check,
        provider: provider.clone(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions(min, max))?
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
    min: TlsVersion,
    max: TlsVersion,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let provider = provider();
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
        .with_protocol_versions(&versions(min, max))?
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
