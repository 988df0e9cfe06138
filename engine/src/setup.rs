//! Reads what a config refers to (certificates, keys, static keys, credentials) and builds
//! the protocol core's setup. Every error names the option and the file it came from.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use tunscope_proto::client::ClientSetup;
use tunscope_proto::options::Source;
use tunscope_proto::options::client::{
    CertType, ClientConfig, Transport, UserPass, VerifyX509Name, WrapSource, parse_credentials,
};
use tunscope_proto::options::common::TlsOptions;
use tunscope_proto::static_key::Key2;
use tunscope_proto::tls::{self, Identity, PeerCheck};
use tunscope_proto::wrap::{Digest, WrapConfig};

/// The config sources of a run: the `--config` file (if any), then OpenVPN-style options from
/// the command line (`--name args…`) on top; a `--config FILE` among those options is read in
/// place, as stock openvpn does.
pub fn config_sources(
    file: Option<&std::path::Path>,
    options: &[String],
) -> Result<Vec<tunscope_proto::options::ConfigSource>> {
    use tunscope_proto::options::{ConfigSource, decode_text};
    let read = |path: &std::path::Path| -> Result<ConfigSource> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Ok(ConfigSource::from_text(&decode_text(&bytes), path)?)
    };
    let mut sources = vec![];
    if let Some(f) = file {
        sources.push(read(f)?);
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut rest = options;
    while !rest.is_empty() {
        let at = rest.iter().position(|a| a == "--config");
        let (now, after) = rest.split_at(at.unwrap_or(rest.len()));
        if !now.is_empty() {
            sources.push(ConfigSource::from_args(now, &cwd)?);
        }
        if at.is_none() {
            break;
        }
        let path = after
            .get(1)
            .ok_or_else(|| anyhow!("command line: --config needs a file"))?;
        sources.push(read(std::path::Path::new(path))?);
        rest = &after[2..];
    }
    if sources.is_empty() {
        anyhow::bail!("no configuration: give --config FILE and/or OpenVPN options after --");
    }
    Ok(sources)
}

/// Reads inline or file material.
pub fn read_source(src: &Source, option: &str) -> Result<String> {
    match src {
        Source::Inline(t) => Ok(t.clone()),
        Source::File(p) => std::fs::read_to_string(p)
            .with_context(|| format!("option '{option}': cannot read {}", p.display())),
    }
}

/// The peer-certificate checks of a config, with its CRL (`crl-verify`) read.
pub fn peer_check(
    remote_cert_tls: Option<CertType>,
    verify_x509_name: Option<VerifyX509Name>,
    opts: &TlsOptions,
) -> Result<PeerCheck> {
    let mut check = PeerCheck::from_options(remote_cert_tls, verify_x509_name, opts);
    if let Some(src) = &opts.crl_verify {
        check.crls = tls::crls_from_pem(
            &format!("option 'crl-verify' ({})", src.describe()),
            &read_source(src, "crl-verify")?,
        )?;
    }
    Ok(check)
}

/// CA certificates, or none when the config authenticates peers by `peer-fingerprint`.
pub fn load_ca(ca: Option<&Source>) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    match ca {
        Some(src) => Ok(tls::certs_from_pem(
            &format!("option 'ca' ({})", src.describe()),
            &read_source(src, "ca")?,
        )?),
        None => Ok(vec![]),
    }
}

/// The password of a key or PKCS#12 file: the first line of `askpass FILE`, else asked on the
/// terminal as OpenVPN does.
fn key_password(askpass: Option<&Option<Source>>) -> Result<String> {
    match askpass {
        Some(Some(f)) => Ok(read_source(f, "askpass")?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()),
        _ => crate::prompt::ask("Enter Private Key Password: ", true),
    }
}

/// `local HOST`: an address, or a name resolved now; the address of the family `ipv6` asks
/// for, else the first one.
pub fn resolve_local(host: &str, ipv6: bool) -> Result<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = host.parse() {
        return Ok(a);
    }
    let addrs: Vec<std::net::IpAddr> = (host, 0)
        .to_socket_addrs()
        .with_context(|| format!("option 'local': cannot resolve '{host}'"))?
        .map(|a| a.ip())
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv6() == ipv6)
        .or(addrs.first())
        .copied()
        .with_context(|| format!("option 'local': '{host}' has no address"))
}

/// A private key (`key`): PEM, encrypted PKCS#8 (`BEGIN ENCRYPTED PRIVATE KEY`, as easy-rsa 3
/// writes keys with a passphrase) or a traditional encrypted PEM key (`Proc-Type: 4,ENCRYPTED`,
/// easy-rsa 2 and `openssl genrsa -des3`), its password from `askpass FILE` or the terminal.
pub fn load_key(
    src: &Source,
    askpass: Option<&Option<Source>>,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>> {
    let text = read_source(src, "key")?;
    let what = format!("option 'key' ({})", src.describe());
    if crate::legacy_pem::is_encrypted(&text) {
        let password = key_password(askpass)?;
        return crate::legacy_pem::decrypt(&text, password.as_bytes())
            .map_err(|e| anyhow!("{what}: an encrypted traditional PEM key: {e}"));
    }
    let Some(start) = text.find("-----BEGIN ENCRYPTED PRIVATE KEY-----") else {
        return Ok(tls::key_from_pem(&what, &text)?);
    };
    let body = &text[start + "-----BEGIN ENCRYPTED PRIVATE KEY-----".len()..];
    let end = body
        .find("-----END ENCRYPTED PRIVATE KEY-----")
        .ok_or_else(|| anyhow!("{what}: unterminated ENCRYPTED PRIVATE KEY block"))?;
    let der = tunscope_proto::base64::decode(&body[..end])
        .ok_or_else(|| anyhow!("{what}: not base64"))?;
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der.as_slice()).map_err(|e| {
        anyhow!("{what}: {e} (PBES2-encrypted PKCS#8 keys are supported: openssl pkcs8 -topk8 -v2 aes-256-cbc)")
    })?;
    let password = key_password(askpass)?;
    let plain = info
        .decrypt(password.as_bytes())
        .map_err(|e| anyhow!("{what}: cannot decrypt it (wrong password?): {e}"))?;
    Ok(rustls::pki_types::PrivateKeyDer::Pkcs8(
        plain.as_bytes().to_vec().into(),
    ))
}

/// `pkcs12 FILE` (or an inline base64 `<pkcs12>` block): our certificate chain and key, and
/// the CA certificates the file carries. The password is tried empty first, then from
/// `askpass FILE`, then asked on the terminal.
pub fn load_pkcs12(
    src: &Source,
    askpass: Option<&Option<Source>>,
) -> Result<(Identity, Vec<rustls::pki_types::CertificateDer<'static>>)> {
    use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
    let data = match src {
        Source::Inline(text) => tunscope_proto::base64::decode(text)
            .ok_or_else(|| anyhow!("option 'pkcs12' [inline]: not base64"))?,
        Source::File(p) => std::fs::read(p)
            .with_context(|| format!("option 'pkcs12': cannot read {}", p.display()))?,
    };
    let open = |pw: &str| KeyStore::from_pkcs12(&data, pw, Pkcs12ImportPolicy::Relaxed);
    let store = match open("") {
        Ok(s) => s,
        Err(_) => {
            let pw = key_password(askpass)?;
            open(&pw).map_err(|e| {
                anyhow!(
                    "option 'pkcs12' ({}): cannot open it (wrong password?): {e}",
                    src.describe()
                )
            })?
        }
    };
    let (_, chain) = store.private_key_chain().ok_or_else(|| {
        anyhow!(
            "option 'pkcs12' ({}): no private key with its certificate",
            src.describe()
        )
    })?;
    let certs: Vec<_> = chain
        .certs()
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.as_der().to_vec()))
        .collect();
    if certs.is_empty() {
        bail!(
            "option 'pkcs12' ({}): the key has no certificate",
            src.describe()
        );
    }
    // OpenVPN takes the CA from the file's other certificates (and the chain's issuers).
    let mut cas: Vec<_> = store
        .entries()
        .filter_map(|(_, e)| match e {
            KeyStoreEntry::Certificate(c) => {
                Some(rustls::pki_types::CertificateDer::from(c.as_der().to_vec()))
            }
            _ => None,
        })
        .collect();
    cas.extend(certs.iter().skip(1).cloned());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(chain.key().as_der().to_vec().into());
    Ok((Identity { chain: certs, key }, cas))
}

/// Builds the wrap configuration from a config's `tls-auth`/`tls-crypt`/`tls-crypt-v2`
/// (whose key file differs by role).
pub fn load_wrap(wrap: &WrapSource, digest: Digest, is_server: bool) -> Result<WrapConfig> {
    Ok(match wrap {
        WrapSource::None => WrapConfig::None,
        WrapSource::Auth { key, direction } => WrapConfig::Auth {
            key: Key2::parse(&read_source(key, "tls-auth")?)
                .map_err(|e| anyhow!("option 'tls-auth' ({}): {e}", key.describe()))?,
            direction: *direction,
            digest,
        },
        WrapSource::CryptV2(src) => {
            let text = read_source(src, "tls-crypt-v2")?;
            let what = || format!("option 'tls-crypt-v2' ({})", src.describe());
            if is_server {
                WrapConfig::CryptV2Server {
                    key: tunscope_proto::tls_crypt_v2::ServerKey::parse(&text).map_err(|e| {
                        anyhow!(
                            "{}: {e} (a server needs the tls-crypt-v2 server key)",
                            what()
                        )
                    })?,
                }
            } else {
                WrapConfig::CryptV2Client {
                    key: tunscope_proto::tls_crypt_v2::ClientKey::parse(&text).map_err(|e| {
                        anyhow!(
                            "{}: {e} (a client needs its tls-crypt-v2 client key)",
                            what()
                        )
                    })?,
                }
            }
        }
        WrapSource::Crypt(src) => WrapConfig::Crypt {
            key: Key2::parse(&read_source(src, "tls-crypt")?)
                .map_err(|e| anyhow!("option 'tls-crypt' ({}): {e}", src.describe()))?,
        },
    })
}

/// The `auth-user-pass` credentials: from the file or block, or asked on the terminal.
pub fn load_credentials(cfg: &ClientConfig) -> Result<Option<(String, String)>> {
    Ok(match &cfg.auth_user_pass {
        Some(UserPass::From(src)) => Some(
            parse_credentials(&read_source(src, "auth-user-pass")?)
                .map_err(|e| anyhow!("{e} ({})", src.describe()))?,
        ),
        Some(UserPass::Prompt) => Some(crate::prompt::credentials()?),
        None => None,
    })
}

/// Loads everything a client needs for `transport`.
pub fn client_setup(
    cfg: &ClientConfig,
    transport: Transport,
    ipv6_link: bool,
    credentials: Option<(String, String)>,
) -> Result<ClientSetup> {
    let mut ca = load_ca(cfg.ca.as_ref())?;
    let p12 = match &cfg.pkcs12 {
        Some(src) => Some(load_pkcs12(src, cfg.askpass.as_ref())?),
        None => None,
    };
    let identity = match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => Some(Identity {
            chain: tls::certs_from_pem(
                &format!("option 'cert' ({})", c.describe()),
                &read_source(c, "cert")?,
            )?,
            key: load_key(k, cfg.askpass.as_ref())?,
        }),
        _ => None,
    };
    let identity = match p12 {
        Some((id, p12_cas)) => {
            if ca.is_empty() {
                ca = p12_cas;
            }
            Some(id)
        }
        None => identity,
    };
    let check = peer_check(cfg.remote_cert_tls, cfg.verify_x509_name.clone(), &cfg.tls)?;
    let negotiation =
        tls::Negotiation::from_options(cfg.tls_version_min, cfg.tls_version_max, &cfg.tls);
    let tls_cfg = tls::client_config(&ca, identity, check, &negotiation)
        .context("TLS setup (does the key match the certificate?)")?;
    let wrap = load_wrap(&cfg.wrap, cfg.auth_digest, false)?;

    let mut setup = ClientSetup::new(
        cfg,
        Arc::clone(&tls_cfg),
        wrap,
        credentials,
        transport,
        ipv6_link,
    );
    // Testing aid: behave like a pre-2.6 client (no TLS-EKM announced), so a 2.6 server
    // derives the data keys with the legacy PRF.
    setup.announce_ekm = std::env::var_os("TUNSCOPE_NO_EKM").is_none();
    Ok(setup)
}
