//! Directives that mean the same in client and server configs: the tun device, the TLS
//! credentials and checks, timers, MTU and the like. Both config parsers hand every
//! directive here first.

use crate::fragment::FragmentOption;
use crate::options::client::{CertType, MssMode, Mssfix, TlsVersion, VerifyX509Name, X509NameKind};
use crate::options::{ConfigError, Ctx, Directive, Source};
use crate::tls::names;
use crate::wrap::Digest;

/// TLS settings both roles share beyond the credentials: the extra peer-certificate checks
/// and the restrictions on what rustls may negotiate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `crl-verify FILE` (or inline): peers whose certificate is revoked are refused.
    pub crl_verify: Option<Source>,
    /// `ns-cert-type server|client`: the peer's Netscape certificate type must say so.
    pub ns_cert_type: Option<CertType>,
    /// `remote-cert-ku HEX…`: the peer's keyUsage must include one of these (OpenSSL bit
    /// order: 0x80 digitalSignature … 0x01 encipherOnly, 0x8000 decipherOnly). Empty: no check.
    pub remote_cert_ku: Vec<u16>,
    /// `remote-cert-eku OID|NAME`: the peer's extendedKeyUsage must hold this OID (dotted).
    pub remote_cert_eku: Option<String>,
    /// `peer-fingerprint`: SHA-256 fingerprints one of which the peer's certificate must have.
    pub peer_fingerprints: Vec<[u8; 32]>,
    /// `tls-cipher`: TLS 1.2 suites allowed (None: rustls' defaults; empty: no TLS 1.2).
    pub tls12_suites: Option<Vec<rustls::CipherSuite>>,
    /// `tls-ciphersuites`: TLS 1.3 suites allowed.
    pub tls13_suites: Option<Vec<rustls::CipherSuite>>,
    /// `tls-groups` / `ecdh-curve`: key exchange groups allowed.
    pub groups: Option<Vec<rustls::NamedGroup>>,
}

/// Layer 3 (`dev tun`: IP packets) or layer 2 (`dev tap`: Ethernet frames).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DevType {
    /// IP packets.
    #[default]
    Tun,
    /// Ethernet frames.
    Tap,
}

impl DevType {
    /// The name OpenVPN uses (options string, `dev_type` script variable).
    pub fn name(self) -> &'static str {
        match self {
            DevType::Tun => "tun",
            DevType::Tap => "tap",
        }
    }
}

/// The settings of the shared directives, as read so far.
#[derive(Default)]
pub(super) struct Common {
    pub dev: Option<String>,
    /// `dev-type`, when given (else the device name decides).
    pub dev_type: Option<DevType>,
    pub ca: Option<Source>,
    pub cert: Option<Source>,
    pub key: Option<Source>,
    pub tls_crypt: Option<Source>,
    pub tls_crypt_v2: Option<Source>,
    /// `pkcs12 FILE`: certificate, key (and CA certificates) in one PKCS#12 file.
    pub pkcs12: Option<Source>,
    /// `askpass [FILE]`: the private key's (or PKCS#12 file's) password; None inside = ask.
    pub askpass: Option<Option<Source>>,
    pub auth_digest: Option<Digest>,
    pub verify_x509_name: Option<VerifyX509Name>,
    pub tls_min: Option<TlsVersion>,
    pub tls_max: Option<TlsVersion>,
    pub reneg_sec: Option<u64>,
    /// `reneg-bytes`: renegotiate after this many bytes sent with one key.
    pub reneg_bytes: Option<u64>,
    /// `reneg-pkts`: renegotiate after this many packets sent with one key.
    pub reneg_pkts: Option<u64>,
    pub hand_window: Option<u64>,
    pub tls_timeout: Option<u64>,
    pub tran_window: Option<u64>,
    pub ping: Option<u64>,
    pub ping_restart: Option<u64>,
    pub tun_mtu: Option<u16>,
    pub mssfix: Option<Mssfix>,
    /// `mssfix` without a value (2.6: the default, which `fragment` sets).
    pub mssfix_bare: bool,
    /// `fragment N [mtu]` and its line.
    pub fragment: Option<(usize, FragmentOption)>,
    pub verb: Option<u8>,
    pub script_security: u8,
    pub user: Option<String>,
    pub group: Option<String>,
    pub tls: TlsOptions,
    /// Where `tls-cipher` was given (TLS 1.2 without a usable suite is an error only when
    /// TLS 1.3 is off too).
    pub tls_cipher_line: Option<usize>,
    pub link_mtu: Option<u16>,
    pub setenv: Vec<(String, String)>,
}

impl Common {
    /// The device type: `dev-type` when given, else the device name's prefix (as OpenVPN).
    pub fn resolved_dev_type(&self) -> DevType {
        self.dev_type.unwrap_or(match &self.dev {
            Some(d) if d.starts_with("tap") => DevType::Tap,
            _ => DevType::Tun,
        })
    }

    /// `mssfix` as 2.6 settles it when the file says nothing: the 1492-byte default for a
    /// 1500-byte tunnel; for another `tun-mtu`, the tunnel's own size (`mssfix N fixed`: a
    /// bigger tunnel carries bigger segments); off when only `link-mtu` was given.
    pub(super) fn effective_mssfix(&self) -> Option<Mssfix> {
        // With fragment, 2.6 clamps TCP segments to the fragment size (no fragmenting).
        if let Some((_, f)) = self.fragment
            && (self.mssfix.is_none() || self.mssfix_bare)
        {
            return Some(Mssfix {
                value: f.max,
                mode: if f.encap {
                    MssMode::Mtu
                } else {
                    MssMode::Payload
                },
            });
        }
        if self.mssfix.is_some() {
            return self.mssfix;
        }
        match (self.tun_mtu, self.link_mtu) {
            (Some(1500), _) | (None, None) => None,
            (Some(m), _) => Some(Mssfix {
                value: m,
                mode: MssMode::Fixed,
            }),
            (None, Some(_)) => Some(Mssfix {
                value: 0,
                mode: MssMode::Mtu,
            }),
        }
    }

    /// Checks that need every directive seen; called by both parsers' `finish`.
    pub fn finish_tls(
        tls: &TlsOptions,
        tls_cipher_line: Option<usize>,
        ctx: &Ctx<'_>,
        max: TlsVersion,
    ) -> Result<(), ConfigError> {
        if let (Some(line), Some(s)) = (tls_cipher_line, &tls.tls12_suites)
            && s.is_empty()
            && max < TlsVersion::Tls13
        {
            return Err(ctx.error(
                line,
                "option 'tls-cipher': none of these TLS 1.2 suites exists in rustls (it has ECDHE with AES-GCM or ChaCha20 only) and tls-version-max rules out TLS 1.3: allow TLS 1.3 or list e.g. TLS-ECDHE-RSA-WITH-AES-256-GCM-SHA384",
            ));
        }
        Ok(())
    }

    /// Applies `d` when it is one of the shared directives; false when it is not.
    pub fn apply(&mut self, ctx: &mut Ctx<'_>, d: &Directive) -> Result<bool, ConfigError> {
        let line = d.line;
        match d.name.as_str() {
            "dev" => {
                let dev = ctx.arg(d, 0)?;
                if dev.len() > 15 {
                    return Err(ctx.error(
                        line,
                        "option 'dev': interface names are at most 15 characters",
                    ));
                }
                self.dev = Some(dev.to_owned());
            }
            "dev-type" => {
                self.dev_type = Some(match ctx.arg(d, 0)? {
                    "tun" => DevType::Tun,
                    "tap" => DevType::Tap,
                    t => {
                        return Err(ctx.error(
                            line,
                            format!("option 'dev-type': '{t}' is neither tun nor tap"),
                        ));
                    }
                })
            }
            "ca" => self.ca = Some(ctx.source(d)?),
            "pkcs12" => self.pkcs12 = Some(ctx.source(d)?),
            "askpass" => {
                self.askpass = Some(if d.arg(0).is_some() || d.inline.is_some() {
                    Some(ctx.source(d)?)
                } else {
                    None
                })
            }
            "cert" => self.cert = Some(ctx.source(d)?),
            "key" => self.key = Some(ctx.source(d)?),
            "tls-crypt" => self.tls_crypt = Some(ctx.source(d)?),
            "tls-crypt-v2" => {
                if d.arg(1) == Some("force-cookie") || d.arg(1) == Some("allow-noncookie") {
                    ctx.warn(
                        line,
                        format!("tls-crypt-v2 {}: tunscope admits tls-crypt-v2 clients by their wrapped key, without the cookie exchange", d.args[1]),
                    );
                }
                self.tls_crypt_v2 = Some(ctx.source(d)?);
            }
            "auth" => {
                let a = ctx.arg(d, 0)?;
                self.auth_digest = Some(Digest::from_name(a).ok_or_else(|| {
                    ctx.error(
                        line,
                        format!("option 'auth': digest '{a}' is not supported"),
                    )
                })?);
            }
            "verify-x509-name" => {
                let name = ctx.arg(d, 0)?.to_owned();
                let kind = match d.arg(1).unwrap_or("subject") {
                    "subject" => X509NameKind::Subject,
                    "name" => X509NameKind::Name,
                    "name-prefix" => X509NameKind::NamePrefix,
                    o => {
                        return Err(ctx.error(
                            line,
                            format!("option 'verify-x509-name': unknown type '{o}'"),
                        ));
                    }
                };
                self.verify_x509_name = Some(VerifyX509Name { name, kind });
            }
            "tls-version-min" => {
                let v = ctx.arg(d, 0)?;
                self.tls_min = Some(match (v, d.arg(1)) {
                    ("1.0" | "1.1", _) => {
                        ctx.warn(line, format!("tls-version-min {v}: rustls speaks TLS 1.2 and 1.3 only, so 1.2 is the minimum (a server limited to TLS 1.0/1.1 cannot be reached)"));
                        TlsVersion::Tls12
                    }
                    (_, Some("or-highest")) => TlsVersion::parse(v).unwrap_or(TlsVersion::Tls13),
                    _ => TlsVersion::parse(v).map_err(|e| ctx.error(line, e))?,
                })
            }
            "tls-version-max" => {
                self.tls_max =
                    Some(TlsVersion::parse(ctx.arg(d, 0)?).map_err(|e| ctx.error(line, e))?)
            }
            "reneg-sec" => self.reneg_sec = Some(ctx.num(d, 0)?),
            "reneg-bytes" => self.reneg_bytes = Some(ctx.num(d, 0)?).filter(|n| *n > 0),
            "reneg-pkts" => self.reneg_pkts = Some(ctx.num(d, 0)?).filter(|n| *n > 0),
            "hand-window" => self.hand_window = Some(ctx.num(d, 0)?),
            "tls-timeout" => self.tls_timeout = Some(ctx.num(d, 0)?),
            "tran-window" => self.tran_window = Some(ctx.num(d, 0)?),
            "ping" => self.ping = Some(ctx.num(d, 0)?),
            "ping-restart" => self.ping_restart = Some(ctx.num(d, 0)?),
            "keepalive" => {
                self.ping = Some(ctx.num(d, 0)?);
                self.ping_restart = Some(ctx.num(d, 1)?);
            }
            "tun-mtu" => {
                let m: u16 = ctx.num(d, 0)?;
                if !(576..=9000).contains(&m) {
                    return Err(ctx.error(line, "option 'tun-mtu': must be between 576 and 9000"));
                }
                self.tun_mtu = Some(m);
            }
            "mssfix" => {
                let value = if d.arg(0).is_some() {
                    ctx.num(d, 0)?
                } else {
                    1492
                };
                let mode = match d.arg(1) {
                    None => MssMode::Payload,
                    Some("mtu") => MssMode::Mtu,
                    Some("fixed") => MssMode::Fixed,
                    Some(o) => {
                        return Err(ctx.error(line, format!("option 'mssfix': unknown mode '{o}'")));
                    }
                };
                self.mssfix = Some(Mssfix { value, mode });
                self.mssfix_bare = d.arg(0).is_none();
            }
            "fragment" => {
                let max: u16 = ctx.num(d, 0)?;
                if max < 68 {
                    return Err(ctx.error(line, "option 'fragment': the size must be at least 68"));
                }
                let encap = match d.arg(1) {
                    None => false,
                    Some("mtu") => true,
                    Some(o) => {
                        return Err(ctx.error(
                            line,
                            format!("option 'fragment': unknown parameter '{o}' (only 'mtu')"),
                        ));
                    }
                };
                self.fragment = Some((line, FragmentOption { max, encap }));
            }
            "mtu-dynamic" => {
                return Err(ctx.error(
                    line,
                    "option 'mtu-dynamic' was replaced by 'fragment N' in OpenVPN 2.x: write 'fragment 1300' (the largest UDP payload to send)",
                ));
            }
            "verb" => self.verb = Some(ctx.num(d, 0)?),
            "crl-verify" => {
                if d.arg(1) == Some("dir") {
                    return Err(ctx.error(
                        line,
                        "option 'crl-verify DIR dir' (a directory of revoked serials) is not supported: give a CRL file in PEM form",
                    ));
                }
                self.tls.crl_verify = Some(ctx.source(d)?);
            }
            "ns-cert-type" => {
                self.tls.ns_cert_type = Some(match ctx.arg(d, 0)? {
                    "server" => CertType::Server,
                    "client" => CertType::Client,
                    o => {
                        return Err(ctx.error(
                            line,
                            format!("option 'ns-cert-type': unknown type '{o}' (server or client)"),
                        ));
                    }
                });
                ctx.warn(
                    line,
                    "ns-cert-type checks the obsolete Netscape certificate type; remote-cert-tls is its modern equivalent",
                );
            }
            "remote-cert-ku" => {
                let mut v = vec![];
                for a in &d.args {
                    let h = a.trim_start_matches("0x").trim_start_matches("0X");
                    let ku = u16::from_str_radix(h, 16).map_err(|_| {
                        ctx.error(
                            line,
                            format!("option 'remote-cert-ku': '{a}' is not a hex key usage"),
                        )
                    })?;
                    v.push(ku);
                }
                if v.is_empty() {
                    // 2.4+: no argument = "must have some keyUsage, as remote-cert-tls checks".
                    v.push(0);
                }
                self.tls.remote_cert_ku = v;
            }
            "remote-cert-eku" => {
                let a = ctx.arg(d, 0)?;
                self.tls.remote_cert_eku = Some(names::eku_oid(a).ok_or_else(|| {
                    ctx.error(line, format!("option 'remote-cert-eku': '{a}' is neither a dotted OID nor a known name (e.g. 'TLS Web Server Authentication')"))
                })?);
            }
            "peer-fingerprint" => {
                let text = match &d.inline {
                    Some(t) => t.clone(),
                    None => d.args.join(" "),
                };
                for tok in text
                    .split(|c: char| c.is_whitespace())
                    .filter(|t| !t.is_empty() && !t.starts_with('#'))
                {
                    let fp = names::parse_fingerprint(tok).ok_or_else(|| {
                        ctx.error(line, format!("option 'peer-fingerprint': '{tok}' is not a SHA-256 fingerprint (32 hex bytes separated by ':')"))
                    })?;
                    self.tls.peer_fingerprints.push(fp);
                }
                if self.tls.peer_fingerprints.is_empty() {
                    return Err(ctx.error(line, "option 'peer-fingerprint': no fingerprint given"));
                }
            }
            "tls-cipher" => {
                let (suites, dropped) = names::tls12_suites(ctx.arg(d, 0)?);
                if !dropped.is_empty() {
                    ctx.warn(line, format!("tls-cipher: {} not available in rustls (TLS 1.2 has ECDHE with AES-GCM/ChaCha20 only); {}", dropped.join(", "), if suites.as_ref().is_some_and(Vec::is_empty) { "TLS 1.2 is off, TLS 1.3 is unaffected as with OpenSSL" } else { "the rest are used" }));
                }
                self.tls.tls12_suites = suites;
                self.tls_cipher_line = Some(line);
            }
            "tls-ciphersuites" => {
                let (suites, dropped) = names::tls13_suites(ctx.arg(d, 0)?);
                if suites.is_empty() {
                    return Err(ctx.error(line, format!("option 'tls-ciphersuites': none of {} exists in rustls (TLS_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256, TLS_CHACHA20_POLY1305_SHA256)", dropped.join(", "))));
                }
                if !dropped.is_empty() {
                    ctx.warn(
                        line,
                        format!(
                            "tls-ciphersuites: {} not available in rustls, ignored",
                            dropped.join(", ")
                        ),
                    );
                }
                self.tls.tls13_suites = Some(suites);
            }
            "tls-groups" | "ecdh-curve" => {
                let (groups, dropped) = names::groups(ctx.arg(d, 0)?);
                if groups.is_empty() {
                    return Err(ctx.error(line, format!("option '{}': none of {} is available (X25519, secp256r1/prime256v1, secp384r1, X25519MLKEM768)", d.name, dropped.join(", "))));
                }
                if !dropped.is_empty() {
                    ctx.warn(
                        line,
                        format!(
                            "{}: {} not available in rustls, ignored",
                            d.name,
                            dropped.join(", ")
                        ),
                    );
                }
                self.tls.groups = Some(groups);
            }
            "tls-remote" => {
                // Removed in 2.4: matched the X509 subject ("/C=../CN=..") or the CN exactly.
                let a = ctx.arg(d, 0)?;
                let v = if a.starts_with('/') {
                    let subject = a.trim_start_matches('/').replace('/', ", ");
                    ctx.warn(line, format!("tls-remote (removed in 2.4) read as: verify-x509-name \"{subject}\" subject"));
                    VerifyX509Name {
                        name: subject,
                        kind: X509NameKind::Subject,
                    }
                } else {
                    ctx.warn(
                        line,
                        format!("tls-remote (removed in 2.4) read as: verify-x509-name {a} name"),
                    );
                    VerifyX509Name {
                        name: a.to_owned(),
                        kind: X509NameKind::Name,
                    }
                };
                self.verify_x509_name = Some(v);
            }
            "link-mtu" => {
                let m: u16 = ctx.num(d, 0)?;
                if !(576..=65535).contains(&m) {
                    return Err(ctx.error(line, "option 'link-mtu': must be at least 576"));
                }
                ctx.warn(line, "link-mtu is deprecated in 2.6: the tun MTU is derived from it (tun-mtu is the modern option)");
                self.link_mtu = Some(m);
            }
            "dev-node" => {
                let n = ctx.arg(d, 0)?;
                if n != "/dev/net/tun" {
                    return Err(ctx.error(
                        line,
                        format!("option 'dev-node {n}': on Linux the tun device is /dev/net/tun"),
                    ));
                }
            }
            "setenv" if d.arg(0) != Some("opt") => {
                let k = ctx.arg(d, 0)?.to_owned();
                let v = d.args.get(1..).unwrap_or_default().join(" ");
                self.setenv.push((k, v));
            }
            "script-security" => self.script_security = ctx.num(d, 0)?,
            "user" => self.user = Some(ctx.arg(d, 0)?.to_owned()),
            "group" => self.group = Some(ctx.arg(d, 0)?.to_owned()),
            _ => return Ok(false),
        }
        Ok(true)
    }
}
