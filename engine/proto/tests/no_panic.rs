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
        prop_assert!(rx.open(&mut buf, Framing::StubSwap, false, Instant::now()).is_err());
    }

    /// Decompressors on arbitrary input, and on real LZ4 data with bytes flipped.
    #[test]
    fn decompressors(data in proptest::collection::vec(any::<u8>(), 0..400), flip in any::<usize>()) {
        use tunscope_proto::compress::{MAX_INFLATED, lz4_compress, lz4_decompress, lzo1x_decompress};
        let mut out = vec![0u8; MAX_INFLATED];
        let _ = lzo1x_decompress(&data, &mut out);
        let _ = lz4_decompress(&data, &mut out);
        let _ = lzo1x_decompress(&data, &mut out[..64]);
        let plain: Vec<u8> = data.iter().chain(data.iter()).copied().collect();
        let mut c = vec![0u8; 1024];
        if let Some(n) = lz4_compress(&plain, &mut c) {
            let m = lz4_decompress(&c[..n], &mut out).unwrap();
            prop_assert_eq!(&out[..m], &plain[..]);
            c[flip % n] ^= 0x5a;
            let _ = lz4_decompress(&c[..n], &mut out);
        }
    }

    /// Every framing, with and without fragment headers, fed arbitrary decrypted payloads
    /// through a real AEAD key.
    #[test]
    fn compressed_framing(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        let keys = Arc::new(DataKeys::new(Cipher::Aes256Gcm, &[7; 256], 0, false));
        let peer = DataKeys::new(Cipher::Aes256Gcm, &[7; 256], 0, true);
        for framing in [Framing::Lzo, Framing::Lz4, Framing::Lz4V2, Framing::LzoStub] {
            for fragmented in [false, true] {
                let mut rx = Receiver::new();
                rx.install(&keys);
                let mut buf = vec![0u8; 512];
                let header = tunscope_proto::wire::DataHeader { key_id: 0, peer_id: Some(1) };
                let n = peer.seal(header, Framing::None, &payload, &mut buf).unwrap();
                let _ = rx.open(&mut buf[..n], framing, fragmented, Instant::now());
            }
        }
    }

    /// Arbitrary fragment sequences (headers and sizes as a hostile peer picks them) through
    /// one receiver: never a panic, and whatever completes fits the reassembly bound.
    #[test]
    fn fragment_sequences(frags in proptest::collection::vec(
        (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..600)), 0..60)) {
        use tunscope_proto::fragment::{MAX_REASSEMBLED, Pushed, Reassembly};
        let mut r = Reassembly::default();
        let mut out = vec![0u8; MAX_REASSEMBLED];
        let now = Instant::now();
        for (h, body) in frags {
            let mut p = h.to_be_bytes().to_vec();
            p.extend_from_slice(&body);
            if let Ok(Pushed::Complete) = r.push(&p, 0..p.len(), now) {
                let n = r.take_into(&mut out);
                prop_assert!(n.is_some_and(|n| n <= MAX_REASSEMBLED));
            }
        }
        prop_assert!(r.pending() <= tunscope_proto::fragment::SLOTS);
    }

    /// tls-crypt-v2: arbitrary WKc bytes and flipped real ones never unwrap nor panic.
    #[test]
    fn tls_crypt_v2_unwrap(data in proptest::collection::vec(any::<u8>(), 0..1100), flip in any::<usize>()) {
        use tunscope_proto::tls_crypt_v2::{ClientKey, ServerKey, split_wkc};
        let server = ServerKey::from_bytes([3; 128]);
        prop_assert!(server.unwrap(&data).is_err());
        let _ = split_wkc(&data);
        let client = ClientKey::generate(&server, Some(&data[..data.len().min(100)]), 0).unwrap();
        let mut wkc = client.wkc.clone();
        let i = flip % wkc.len();
        wkc[i] ^= 0x80;
        prop_assert!(server.unwrap(&wkc).is_err());
        let _ = ClientKey::parse(&String::from_utf8_lossy(&data));
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
