//! tls-crypt-v2: a server unwrapping attacker-chosen wrapped client keys (WKc), and key files
//! parsed from arbitrary text. Errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunscope_proto::tls_crypt_v2::{ClientKey, ServerKey, split_wkc};

fuzz_target!(|data: &[u8]| {
    let server = ServerKey::from_bytes([7; 128]);
    assert!(server.unwrap(data).is_err());
    if let Some((_, wkc)) = split_wkc(data) {
        assert!(server.unwrap(wkc).is_err());
    }
    let text = String::from_utf8_lossy(data);
    let _ = ClientKey::parse(&text);
    let _ = ServerKey::parse(&text);
});
