//! Per-stage costs of the data path, per packet and per batch: sealing (encrypt stage) and
//! opening with replay check (decrypt stage), for each cipher, at a full-size TCP segment.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tunscope_proto::data::{Cipher, DataKeys, Framing, Receiver};
use tunscope_proto::wire::DataHeader;

const PACKET: usize = 1400;
const BATCH: usize = 64;

fn seal_open(c: &mut Criterion) {
    let header = DataHeader {
        key_id: 0,
        peer_id: Some(1),
    };
    let plain = vec![0x45u8; PACKET];
    let mut g = c.benchmark_group("data_channel");
    g.throughput(Throughput::Bytes((PACKET * BATCH) as u64));
    for cipher in Cipher::ALL {
        let tx = Arc::new(DataKeys::new(cipher, &[7; 256], 0, false));
        let rx_keys = Arc::new(DataKeys::new(cipher, &[7; 256], 0, true));
        let mut out = vec![0u8; BATCH * (PACKET + 32)];
        g.bench_function(BenchmarkId::new("seal_batch64", cipher.name()), |b| {
            b.iter(|| {
                let first = tx.reserve_packet_ids(BATCH as u32).unwrap();
                for (i, chunk) in out.chunks_mut(PACKET + 32).enumerate() {
                    tx.seal_with_id(header, Framing::None, first + i as u32, &plain, chunk)
                        .unwrap();
                }
            })
        });
        // Pre-sealed packets with increasing ids; a fresh receiver per iteration would
        // dominate, so ids keep rising across iterations instead.
        let mut rx = Receiver::new();
        rx.install(&rx_keys);
        let sealer = DataKeys::new(cipher, &[7; 256], 0, false);
        let now = Instant::now();
        g.bench_function(BenchmarkId::new("open_batch64", cipher.name()), |b| {
            let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; PACKET + 32]; BATCH];
            b.iter(|| {
                for buf in bufs.iter_mut() {
                    let n = sealer.seal(header, Framing::None, &plain, buf).unwrap();
                    rx.open(&mut buf[..n], Framing::None, false, now).unwrap();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, seal_open);
criterion_main!(benches);
