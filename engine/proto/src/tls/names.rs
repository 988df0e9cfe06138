//! OpenVPN/OpenSSL names for TLS things, mapped onto what rustls (with aws-lc-rs) has:
//! `tls-cipher` (TLS 1.2 suites, IANA names with dashes or OpenSSL names), `tls-ciphersuites`
//! (TLS 1.3), `tls-groups`/`ecdh-curve`, `remote-cert-eku` names, `peer-fingerprint` syntax.

use rustls::{CipherSuite, NamedGroup};

/// TLS 1.2 suites rustls implements, with OpenSSL's names.
const TLS12: &[(CipherSuite, &str)] = &[
    (
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    ),
    (
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    ),
    (
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ),
    (
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384",
    ),
    (
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256",
    ),
    (
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305",
    ),
];

const TLS13: &[CipherSuite] = &[
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// `tls-cipher LIST`: the TLS 1.2 suites named, and the names rustls lacks. `None` when the
/// list only holds OpenSSL keywords (`DEFAULT`, `HIGH`, `!aNULL`, `@SECLEVEL=0` …), which
/// leave rustls' own choice in place.
pub fn tls12_suites(list: &str) -> (Option<Vec<CipherSuite>>, Vec<String>) {
    let mut suites = vec![];
    let mut dropped = vec![];
    let mut named = false;
    for name in list.split(':').map(str::trim).filter(|n| !n.is_empty()) {
        if is_keyword(name) {
            continue;
        }
        named = true;
        // OpenVPN accepts IANA names with dashes ("TLS-ECDHE-RSA-WITH-…") and OpenSSL names.
        let iana = name.replace('-', "_");
        let found = TLS12.iter().find(|(cs, openssl)| {
            format!("{cs:?}").eq_ignore_ascii_case(&iana) || openssl.eq_ignore_ascii_case(name)
        });
        match found {
            Some((cs, _)) if !suites.contains(cs) => suites.push(*cs),
            Some(_) => {}
            None => dropped.push(name.to_owned()),
        }
    }
    ((named).then_some(suites), dropped)
}

fn is_keyword(name: &str) -> bool {
    name.starts_with(['!', '@', '+', '-'])
        || matches!(
            name.to_ascii_uppercase().as_str(),
            "DEFAULT"
                | "HIGH"
                | "MEDIUM"
                | "ALL"
                | "COMPLEMENTOFDEFAULT"
                | "SECURE128"
                | "SECURE256"
        )
}

/// `tls-ciphersuites LIST` (TLS 1.3): the suites named, and those rustls lacks.
pub fn tls13_suites(list: &str) -> (Vec<CipherSuite>, Vec<String>) {
    let mut suites = vec![];
    let mut dropped = vec![];
    for name in list.split(':').map(str::trim).filter(|n| !n.is_empty()) {
        let want = name.replace('-', "_").replace("TLS_", "TLS13_");
        match TLS13
            .iter()
            .find(|cs| format!("{cs:?}").eq_ignore_ascii_case(&want))
        {
            Some(cs) if !suites.contains(cs) => suites.push(*cs),
            Some(_) => {}
            None => dropped.push(name.to_owned()),
        }
    }
    (suites, dropped)
}

/// `tls-groups LIST` / `ecdh-curve NAME`: key exchange groups, and those rustls lacks.
pub fn groups(list: &str) -> (Vec<NamedGroup>, Vec<String>) {
    let mut out = vec![];
    let mut dropped = vec![];
    for name in list.split(':').map(str::trim).filter(|n| !n.is_empty()) {
        let g = match name.to_ascii_lowercase().as_str() {
            "x25519" => Some(NamedGroup::X25519),
            "secp256r1" | "prime256v1" | "p-256" => Some(NamedGroup::secp256r1),
            "secp384r1" | "p-384" => Some(NamedGroup::secp384r1),
            "x25519mlkem768" => Some(NamedGroup::X25519MLKEM768),
            _ => None,
        };
        match g {
            Some(g) if !out.contains(&g) => out.push(g),
            Some(_) => {}
            None => dropped.push(name.to_owned()),
        }
    }
    (out, dropped)
}

/// `remote-cert-eku`: a dotted OID, or a name as OpenSSL prints it (long or short form).
pub fn eku_oid(name: &str) -> Option<String> {
    const NAMES: &[(&str, &str, &str)] = &[
        (
            "TLS Web Server Authentication",
            "serverAuth",
            "1.3.6.1.5.5.7.3.1",
        ),
        (
            "TLS Web Client Authentication",
            "clientAuth",
            "1.3.6.1.5.5.7.3.2",
        ),
        ("Code Signing", "codeSigning", "1.3.6.1.5.5.7.3.3"),
        ("E-mail Protection", "emailProtection", "1.3.6.1.5.5.7.3.4"),
        ("Time Stamping", "timeStamping", "1.3.6.1.5.5.7.3.8"),
        ("OCSP Signing", "OCSPSigning", "1.3.6.1.5.5.7.3.9"),
    ];
    if let Some((_, _, oid)) = NAMES.iter().find(|(l, s, _)| *l == name || *s == name) {
        return Some((*oid).to_owned());
    }
    let dotted = name.split('.').count() >= 2
        && name
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    dotted.then(|| name.to_owned())
}

/// A SHA-256 fingerprint as OpenVPN writes it: 32 hex bytes separated by `:`.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let mut n = 0;
    for part in s.split(':') {
        let b = u8::from_str_radix(part, 16)
            .ok()
            .filter(|_| part.len() == 2)?;
        *out.get_mut(n)? = b;
        n += 1;
    }
    (n == 32).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_cipher_lists_of_real_configs() {
        // A provider's list: only CBC/DHE suites, none in rustls → TLS 1.2 off.
        let (s, d) = tls12_suites(
            "TLS-DHE-RSA-WITH-AES-256-CBC-SHA:TLS-DHE-DSS-WITH-AES-256-CBC-SHA:TLS-RSA-WITH-AES-256-CBC-SHA",
        );
        assert_eq!(s, Some(vec![]));
        assert_eq!(d.len(), 3);
        let (s, d) = tls12_suites(
            "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:TLS-DHE-RSA-WITH-AES-256-CBC-SHA256",
        );
        assert_eq!(
            s,
            Some(vec![
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            ])
        );
        assert_eq!(d, vec!["TLS-DHE-RSA-WITH-AES-256-CBC-SHA256"]);
        assert_eq!(tls12_suites("DEFAULT:@SECLEVEL=0").0, None);
        let (s, d) = tls13_suites("TLS_AES_256_GCM_SHA384:TLS_AES_128_CCM_SHA256");
        assert_eq!(s, vec![CipherSuite::TLS13_AES_256_GCM_SHA384]);
        assert_eq!(d.len(), 1);
        assert_eq!(
            groups("prime256v1:secp521r1").0,
            vec![NamedGroup::secp256r1]
        );
    }

    #[test]
    fn eku_and_fingerprints() {
        assert_eq!(
            eku_oid("TLS Web Server Authentication").as_deref(),
            Some("1.3.6.1.5.5.7.3.1")
        );
        assert_eq!(
            eku_oid("1.3.6.1.5.5.7.3.2").as_deref(),
            Some("1.3.6.1.5.5.7.3.2")
        );
        assert_eq!(eku_oid("web server"), None);
        let fp = "18:0A:6D:FA:3D:5C:B5:D4:8F:FF:2C:7F:45:53:14:FD:71:99:D8:0C:EE:07:68:0D:4A:00:EE:95:D9:59:C9:1B";
        assert_eq!(parse_fingerprint(fp).map(|f| f[1]), Some(0x0a));
        assert_eq!(parse_fingerprint("18:0A"), None);
        assert_eq!(parse_fingerprint(&format!("{fp}:00")), None);
        assert_eq!(parse_fingerprint(&fp.replace("0A", "0G")), None);
    }
}
