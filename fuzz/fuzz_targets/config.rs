//! The client config parser on arbitrary text: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunscope_proto::options::client::ClientConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ClientConfig::parse(text, std::path::Path::new("/fuzz/client.conf"));
    }
});
