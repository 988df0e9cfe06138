//! Every packet parser on arbitrary bytes: control packets, data headers, TCP framing,
//! key-method-2, tls-auth/tls-crypt unwrapping, data-channel opening. Must never panic.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tunscope_proto::data::{Cipher, DataKeys, Framing, Receiver};
use tunscope_proto::key_method::KeyMethod2;
use tunscope_proto::static_key::{Key2, KeyDirection};
use tunscope_proto::wire::{ControlPacket, DataHeader, TcpFramer};
use tunscope_proto::wrap::{Digest, TlsWrap, WrapConfig};

fuzz_target!(|data: &[u8]| {
    let _ = ControlPacket::parse(data);
    let _ = DataHeader::parse(data);
    let _ = KeyMethod2::parse(data, true);
    let _ = KeyMethod2::parse(data, false);
    let mut f = TcpFramer::new();
    f.push(data);
    while let Ok(Some(_)) = f.next_packet() {}
    let key = Key2([7; 256]);
    for cfg in [
        WrapConfig::None,
        WrapConfig::Auth { key: key.clone(), direction: KeyDirection::Normal, digest: Digest::Sha1 },
        WrapConfig::Crypt { key: key.clone() },
    ] {
        let mut w = TlsWrap::new(&cfg, true, 1);
        let mut plain = Vec::new();
        if let Ok(pid) = w.unwrap(data, &mut plain) {
            let _ = w.check_replay(pid, Instant::now());
            let _ = ControlPacket::parse(&plain);
        }
    }
    let mut rx = Receiver::new();
    rx.install(&Arc::new(DataKeys::new(Cipher::Aes256Gcm, &[1; 256], data.first().map_or(0, |b| b & 7), true)));
    for framing in [Framing::None, Framing::LzoStub, Framing::StubSwap, Framing::StubV2] {
        for fragmented in [false, true] {
            let mut buf = data.to_vec();
            let _ = rx.open(&mut buf, framing, fragmented, Instant::now());
        }
    }
    // Fragment headers and reassembly as a peer past authentication could send them.
    let mut r = tunscope_proto::fragment::Reassembly::default();
    let mut out = vec![0u8; tunscope_proto::fragment::MAX_REASSEMBLED];
    for chunk in data.chunks(97) {
        if let Ok(tunscope_proto::fragment::Pushed::Complete) = r.push(chunk, 0..chunk.len(), Instant::now()) {
            let _ = r.take_into(&mut out);
        }
    }
});
