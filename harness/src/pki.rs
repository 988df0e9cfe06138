//! A throw-away test PKI, generated per run (no private key is ever committed).
//!
//! ECDSA P-256 certificates shaped the way OpenVPN expects them: a CN on every leaf, a
//! keyUsage extension, and extendedKeyUsage serverAuth/clientAuth so that
//! `remote-cert-tls server|client` passes on both stock OpenVPN and tunscope.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tunscope_proto::static_key::Key2;

/// Files of a generated PKI.
#[derive(Clone, Debug)]
pub struct Pki {
    /// Directory holding the files.
    pub dir: PathBuf,
    /// CA certificate.
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// A static key for tls-auth / tls-crypt.
    pub static_key: PathBuf,
}

impl Pki {
    /// Generates a CA, a server certificate (CN `server`), and a static key into `dir`.
    pub fn generate(dir: &Path) -> Result<Pki> {
        Pki::generate_named(dir, "tunscope test CA")
    }

    /// Like [`Pki::generate`] with a CA common name of choice (a second, unrelated CA).
    pub fn generate_named(dir: &Path, ca_cn: &str) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = dn(ca_cn);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let pki = Pki {
            dir: dir.to_owned(),
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            static_key: dir.join("ta.key"),
        };
        write(&pki.ca, &ca_cert.pem())?;
        std::fs::write(dir.join("ca.key"), ca_key.serialize_pem())?;
        std::fs::write(dir.join("ca.cn"), ca_cn)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let (c, k) = leaf(&issuer, "server", true)?;
        write(&pki.server_cert, &c)?;
        write(&pki.server_key, &k)?;
        let mut key = [0u8; 256];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| anyhow::anyhow!("random"))?;
        write(&pki.static_key, &Key2(key).to_pem())?;
        Ok(pki)
    }

    /// Issues a client certificate with common name `cn`; returns (cert, key) paths.
    pub fn client(&self, cn: &str) -> Result<(PathBuf, PathBuf)> {
        let issuer = self.issuer()?;
        let (c, k) = leaf(&issuer, cn, false)?;
        let cert = self.dir.join(format!("{cn}.crt"));
        let key = self.dir.join(format!("{cn}.key"));
        write(&cert, &c)?;
        write(&key, &k)?;
        Ok((cert, key))
    }

    /// A CRL from the CA revoking `certs` (PEM files it issued); written next to the CA.
    pub fn revoke(&self, certs: &[&Path]) -> Result<PathBuf> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let mut revoked = vec![];
        for c in certs {
            use rustls_pki_types::pem::PemObject;
            let der = rustls_pki_types::CertificateDer::from_pem_file(c)
                .map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?;
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?;
            revoked.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let issuer = self.issuer()?;
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)?;
        let path = self.dir.join("crl.pem");
        write(&path, &crl.pem()?)?;
        Ok(path)
    }

    /// The CA as an issuer (its name and key; the certificate itself is not needed to sign).
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(self.dir.join("ca.key"))?)?;
        let ca_cn = std::fs::read_to_string(self.dir.join("ca.cn"))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = dn(&ca_cn);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(Issuer::new(ca_params, ca_key))
    }

    /// Issues a certificate from a *different* CA (for negative tests); returns (cert, key).
    pub fn foreign_client(&self, cn: &str) -> Result<(PathBuf, PathBuf)> {
        let other = Pki::generate_named(&self.dir.join("foreign"), "foreign CA")?;
        other.client(cn)
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

fn leaf(issuer: &Issuer<'_, KeyPair>, cn: &str, server: bool) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = dn(cn);
    p.key_usages = if server {
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
