//! The producer's fill and the consumer's checksum over one cache-hot chunk, beside the
//! byte-at-a-time fold that does not vectorise at the baseline target (why `checksum`
//! adds words).
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vdi_bench::work;

fn chunk(c: &mut Criterion) {
    let mut g = c.benchmark_group("work/1MiB");
    let mut buf = vec![0u8; 1 << 20];
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("fill", |b| {
        let mut v = 0u8;
        b.iter(|| {
            v = v.wrapping_add(1);
            work::fill(black_box(&mut buf), v)
        })
    });
    g.bench_function("checksum", |b| b.iter(|| work::checksum(black_box(&buf))));
    g.bench_function("byte_fold_for_comparison", |b| {
        b.iter(|| {
            black_box(&buf)
                .iter()
                .fold(0u64, |a, &x| a.wrapping_add(u64::from(x)))
        })
    });
    g.bench_function("fill_then_checksum", |b| {
        let mut v = 0u8;
        b.iter(|| {
            v = v.wrapping_add(1);
            work::fill(black_box(&mut buf), v);
            work::checksum(black_box(&buf))
        })
    });
    g.finish();
}

criterion_group!(benches, chunk);
criterion_main!(benches);
