//! What the stage probes cost per batch and per packet, measured side by side in one run:
//! the encrypt stage on a batch of 64 full-size packets, bare and with the probe work the data
//! path does for it (per-packet counter increments, two clock reads, one histogram record,
//! publishing the batch's counters with relaxed atomics, the periodic histogram merge).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tunscope_engine::stats::{BatchCounts, EngineStats, LocalHist};
use tunscope_proto::data::{Cipher, DataKeys, Framing};
use tunscope_proto::stage::Stage;
use tunscope_proto::wire::DataHeader;

const PACKET: usize = 1400;
const BATCH: usize = 64;

fn probes(c: &mut Criterion) {
    let header = DataHeader {
        key_id: 0,
        peer_id: Some(1),
    };
    let plain = vec![0x45u8; PACKET];
    let keys = Arc::new(DataKeys::new(Cipher::Aes256Gcm, &[7; 256], 0, false));
    let mut out = vec![0u8; BATCH * (PACKET + 32)];
    let stats = EngineStats::default();
    let mut hist = LocalHist::new(2);
    let mut g = c.benchmark_group("encrypt_stage_batch64");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(BenchmarkId::new("probes", "off"), |b| {
        b.iter(|| {
            for chunk in out.chunks_mut(PACKET + 32) {
                keys.seal(header, Framing::None, &plain, chunk).unwrap();
            }
        })
    });
    g.bench_function(BenchmarkId::new("probes", "on"), |b| {
        b.iter(|| {
            let t0 = Instant::now();
            let mut counts = BatchCounts::default();
            for chunk in out.chunks_mut(PACKET + 32) {
                keys.seal(header, Framing::None, &plain, chunk).unwrap();
                counts.pass(plain.len());
            }
            let t1 = Instant::now();
            stats.stage(Stage::Encrypt).add(&counts);
            hist.record(
                Stage::Encrypt,
                counts.packets_in(),
                t1.duration_since(t0).as_nanos() as u64,
            );
            stats.publish_hist(&mut hist, t1, false);
        })
    });
    g.finish();
    // The probe work alone, without the crypto it accompanies.
    let mut g = c.benchmark_group("probe_overhead_batch64");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("probe_work_only", |b| {
        b.iter(|| {
            let t0 = Instant::now();
            let mut counts = BatchCounts::default();
            for _ in 0..BATCH {
                counts.pass(std::hint::black_box(PACKET));
            }
            let t1 = Instant::now();
            stats.stage(Stage::Encrypt).add(&counts);
            hist.record(
                Stage::Encrypt,
                counts.packets_in(),
                t1.duration_since(t0).as_nanos() as u64,
            );
            stats.publish_hist(&mut hist, t1, false);
        })
    });
    g.finish();
}

criterion_group!(benches, probes);
criterion_main!(benches);
