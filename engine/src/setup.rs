//! Reads what a config refers to (certificates, keys, static keys, credentials) and builds
//! the protocol core's setup. Every error names the option and the file it came from.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use tunscope_proto::client::ClientSetup;
use tunscope_proto::options::Source;
use tunscope_proto::options::client::{ClientConfig, Transport, WrapSource, parse_credentials};
use tunscope_proto::static_key::Key2;
use tunscope_proto::tls::{self, Identity, PeerCheck};
use tunscope_proto::wrap::{Digest, WrapConfig};

/// Reads inline or file material.
pub fn read_source(src: &Source, option: &str) -> Result<String> {
    match src {
        Source::Inline(t) => Ok(t.clone()),
        Source::File(p) => std::fs::read_to_string(p)
            .with_context(|| format!("option '{option}': cannot read {}", p.display())),
    }
}

/// Builds the wrap configuration from a config's `tls-auth`/`tls-crypt`.
pub fn load_wrap(wrap: &WrapSource, digest: Digest) -> Result<WrapConfig> {
    Ok(match wrap {
        WrapSource::None => WrapConfig::None,
        WrapSource::Auth { key, direction } => WrapConfig::Auth {
            key: Key2::parse(&read_source(key, "tls-auth")?)
                .map_err(|e| anyhow!("option 'tls-auth' ({}): {e}", key.describe()))?,
            direction: *direction,
            digest,
        },
        WrapSource::Crypt(src) => WrapConfig::Crypt {
            key: Key2::parse(&read_source(src, "tls-crypt")?)
                .map_err(|e| anyhow!("option 'tls-crypt' ({}): {e}", src.describe()))?,
        },
    })
}

/// Loads everything a client needs for `transport`.
pub fn client_setup(
    cfg: &ClientConfig,
    transport: Transport,
    ipv6_link: bool,
) -> Result<ClientSetup> {
    let ca_text = read_source(&cfg.ca, "ca")?;
    let ca = tls::certs_from_pem(&format!("option 'ca' ({})", cfg.ca.describe()), &ca_text)?;
    let identity = match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => Some(Identity {
            chain: tls::certs_from_pem(
                &format!("option 'cert' ({})", c.describe()),
                &read_source(c, "cert")?,
            )?,
            key: tls::key_from_pem(
                &format!("option 'key' ({})", k.describe()),
                &read_source(k, "key")?,
            )?,
        }),
        _ => None,
    };
    let check = PeerCheck {
        remote_cert_tls: cfg.remote_cert_tls,
        verify_x509_name: cfg.verify_x509_name.clone(),
    };
    let tls_cfg = tls::client_config(
        &ca,
        identity,
        check,
        cfg.tls_version_min,
        cfg.tls_version_max,
    )
    .context("TLS setup (does the key match the certificate?)")?;
    let wrap = load_wrap(&cfg.wrap, cfg.auth_digest)?;
    let credentials = match &cfg.auth_user_pass {
        Some(src) => Some(
            parse_credentials(&read_source(src, "auth-user-pass")?)
                .map_err(|e| anyhow!("{e} ({})", src.describe()))?,
        ),
        None => None,
    };
    Ok(ClientSetup::new(
        cfg,
        Arc::clone(&tls_cfg),
        wrap,
        credentials,
        transport,
        ipv6_link,
    ))
}
