#![allow(missing_docs)] // criterion_group! generates undocumented items
//! The byte-shuffle filter (`format::shuffle_block` / `unshuffle_block`) on 1 MiB blocks of 8-byte elements, the
//! block the writer shuffles before zstd. Baseline in the same run: the original byte loop, which defines the
//! filter's output (FORMAT.md). Throughput is reported in bytes per second of block.

use std::hint::black_box;
use std::time::Duration;

use ckpt_core::format::{SHUFFLE_BLOCK, reference_shuffle, reference_unshuffle, shuffle_block, unshuffle_block};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let es = 8;
    // A smooth float64 field, like the simulation data the filter is meant for.
    let src: Vec<u8> = (0..SHUFFLE_BLOCK / es).flat_map(|i| (i as f64 * 1e-3).sin().to_le_bytes()).collect();
    let mut shuffled = vec![0u8; src.len()];
    let mut dst = vec![0u8; src.len()];
    shuffle_block(&src, &mut shuffled, es);
    reference_shuffle(&src, &mut dst, es);
    assert!(dst == shuffled, "shuffle_block differs from the reference loop");

    let mut g = c.benchmark_group("shuffle-es8-1MiB");
    g.throughput(Throughput::Bytes(src.len() as u64));
    // A/B pairs next to each other, so that both sides of a ratio see the same machine state.
    g.bench_function("shuffle_block", |b| b.iter(|| shuffle_block(black_box(&src), black_box(&mut dst), es)));
    g.bench_function("baseline: reference shuffle loop", |b| {
        b.iter(|| reference_shuffle(black_box(&src), black_box(&mut dst), es))
    });
    g.bench_function("unshuffle_block", |b| b.iter(|| unshuffle_block(black_box(&shuffled), black_box(&mut dst), es)));
    g.bench_function("baseline: reference unshuffle loop", |b| {
        b.iter(|| reference_unshuffle(black_box(&shuffled), black_box(&mut dst), es))
    });
    g.bench_function("baseline: memcpy", |b| b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(30);
    targets = bench
}
criterion_main!(benches);
