//! Property tests: every parser that sees network bytes or config text returns an error on
//! garbage instead of panicking. (The same inputs are fuzzed longer by `fuzz/`.)
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use tunscope_proto::data::{Cipher, DataKeys, Framing, Receiver};
use tunscope_proto::key_method::KeyMethod2;
use tunscope_proto::options::client::ClientConfig;
use tunscope_proto::options::push::{PushedOptions, split_push_reply};
use tunscope_proto::static_key::{Key2, KeyDirection};
use tunscope_proto::wire::{ControlPacket, DataHeader, TcpFramer};
use tunscope_proto::wrap::{Digest, TlsWrap, WrapConfig};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn packet_parsers(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = ControlPacket::parse(&data);
        let _ = DataHeader::parse(&data);
        let _ = KeyMethod2::parse(&data, true);
        let _ = KeyMethod2::parse(&data, false);
        let mut f = TcpFramer::new();
        f.push(&data);
        while let Ok(Some(_)) = f.next_packet() {}
        for cfg in [
            WrapConfig::Auth { key: Key2([3; 256]), direction: KeyDirection::Inverse, digest: Digest::Sha256 },
            WrapConfig::Crypt { key: Key2([3; 256]) },
        ] {
            let w = TlsWrap::new(&cfg, false, 1);
            let mut plain = vec![];
            // Random bytes never authenticate.
            prop_assert!(w.unwrap(&data, &mut plain).is_err());
        }
        let mut rx = Receiver::new();
        for k in 0..8 {
            rx.install(&Arc::new(DataKeys::new(Cipher::Chacha20Poly1305, &[9; 256], k, false)));
        }
        let mut buf = data.clone();
        prop_assert!(rx.open(&mut buf, Framing::StubSwap, Instant::now()).is_err());
    }

    #[test]
    fn config_text(lines in proptest::collection::vec("[ -~\t]{0,40}", 0..20)) {
        let text = lines.join("\n");
        let _ = ClientConfig::parse(&text, std::path::Path::new("/x/c.conf"));
    }

    #[test]
    fn config_with_known_options(opts in proptest::collection::vec(
        prop_oneof![
            Just("client"), Just("remote"), Just("proto"), Just("tls-auth"), Just("<ca>"),
            Just("</ca>"), Just("data-ciphers"), Just("compress"), Just("mssfix"), Just("\""),
        ], 0..12),
        args in proptest::collection::vec("[a-z0-9:. \"']{0,12}", 0..12)) {
        let text: String = opts.iter().zip(args.iter().chain(std::iter::repeat(&String::new())))
            .map(|(o, a)| format!("{o} {a}\n")).collect();
        let _ = ClientConfig::parse(&text, std::path::Path::new("/x/c.conf"));
    }

    #[test]
    fn push_reply(parts in proptest::collection::vec("[ -+\\--~]{0,30}", 0..10)) {
        let msg = format!("PUSH_REPLY,{}", parts.join(","));
        let m = split_push_reply(&msg).unwrap();
        let mut p = PushedOptions::default();
        for o in &m.options {
            let _ = p.apply(o, &Cipher::ALL);
        }
    }
}
