//! Directives that mean the same in client and server configs: the tun device, the TLS
//! credentials and checks, timers, MTU and the like. Both config parsers hand every
//! directive here first.

use crate::options::client::{MssMode, Mssfix, TlsVersion, VerifyX509Name, X509NameKind};
use crate::options::{ConfigError, Ctx, Directive, Source};
use crate::wrap::Digest;

/// The settings of the shared directives, as read so far.
#[derive(Default)]
pub(super) struct Common {
    pub dev: Option<String>,
    pub ca: Option<Source>,
    pub cert: Option<Source>,
    pub key: Option<Source>,
    pub tls_crypt: Option<Source>,
    pub auth_digest: Option<Digest>,
    pub verify_x509_name: Option<VerifyX509Name>,
    pub tls_min: Option<TlsVersion>,
    pub tls_max: Option<TlsVersion>,
    pub reneg_sec: Option<u64>,
    pub hand_window: Option<u64>,
    pub tls_timeout: Option<u64>,
    pub tran_window: Option<u64>,
    pub ping: Option<u64>,
    pub ping_restart: Option<u64>,
    pub tun_mtu: Option<u16>,
    pub mssfix: Option<Mssfix>,
    pub verb: Option<u8>,
    pub script_security: u8,
}

impl Common {
    /// Applies `d` when it is one of the shared directives; false when it is not.
    pub fn apply(&mut self, ctx: &mut Ctx<'_>, d: &Directive) -> Result<bool, ConfigError> {
        let line = d.line;
        match d.name.as_str() {
            "dev" => {
                let dev = ctx.arg(d, 0)?;
                if dev.starts_with("tap") {
                    return Err(ctx.error(
                        line,
                        "option 'dev': tap devices are not supported (use dev tun)",
                    ));
                }
                if dev.len() > 15 {
                    return Err(ctx.error(
                        line,
                        "option 'dev': interface names are at most 15 characters",
                    ));
                }
                self.dev = Some(dev.to_owned());
            }
            "dev-type" => {
                if ctx.arg(d, 0)? != "tun" {
                    return Err(ctx.error(line, "option 'dev-type': only tun is supported"));
                }
            }
            "ca" => self.ca = Some(ctx.source(d)?),
            "cert" => self.cert = Some(ctx.source(d)?),
            "key" => self.key = Some(ctx.source(d)?),
            "tls-crypt" => self.tls_crypt = Some(ctx.source(d)?),
            "tls-crypt-v2" => {
                return Err(ctx.error(
                    line,
                    "option 'tls-crypt-v2' is not supported (use tls-crypt or tls-auth)",
                ));
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
                self.tls_min =
                    Some(TlsVersion::parse(ctx.arg(d, 0)?).map_err(|e| ctx.error(line, e))?)
            }
            "tls-version-max" => {
                self.tls_max =
                    Some(TlsVersion::parse(ctx.arg(d, 0)?).map_err(|e| ctx.error(line, e))?)
            }
            "reneg-sec" => self.reneg_sec = Some(ctx.num(d, 0)?),
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
            }
            "verb" => self.verb = Some(ctx.num(d, 0)?),
            "script-security" => self.script_security = ctx.num(d, 0)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}
