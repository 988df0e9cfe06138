//! LZO1X and LZ4 decompression of arbitrary (authenticated, so attacker-chosen by a peer)
//! payloads: an error or at most the capped output, never a panic or a long loop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunscope_proto::compress::{MAX_INFLATED, lz4_decompress, lzo1x_decompress};

fuzz_target!(|data: &[u8]| {
    let mut out = vec![0u8; MAX_INFLATED];
    if let Ok(n) = lzo1x_decompress(data, &mut out) {
        assert!(n <= MAX_INFLATED);
    }
    if let Ok(n) = lz4_decompress(data, &mut out) {
        assert!(n <= MAX_INFLATED);
    }
});
