//! PUSH_REPLY splitting and option application on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunscope_proto::data::Cipher;
use tunscope_proto::options::push::{PushedOptions, split_push_reply};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let msg = format!("PUSH_REPLY,{text}");
        if let Some(m) = split_push_reply(&msg) {
            let mut p = PushedOptions::default();
            for o in &m.options {
                let _ = p.apply(o, &Cipher::ALL);
            }
        }
    }
});
