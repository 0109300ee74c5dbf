#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Durable saves: a 4 KiB checkpoint against the bare open/write/fsync/rename/fsync(dir) sequence, and a
//! 64 MiB raw section (throughput), both measured in the same run.

use std::hint::black_box;
use std::time::Duration;

use ckpt_benches::bare_durable_save;
use ckpt_core::{Config, Store};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(std::env::var("CKPT_BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let small = vec![7u8; 4096];
    let store = Store::new(Config::new("small", dir.path()).unwrap());
    let mut g = c.benchmark_group("save-4KiB");
    g.bench_function("ckpt", |b| {
        b.iter(|| {
            let mut w = store.begin(1).unwrap();
            w.add_bytes("state", black_box(&small)).unwrap();
            w.commit().unwrap()
        })
    });
    g.bench_function("baseline: bare durable sequence", |b| {
        b.iter(|| bare_durable_save(dir.path(), "bare", black_box(&small)).unwrap())
    });
    g.finish();

    let big = vec![1u8; 64 << 20];
    let store = Store::new(Config::new("big", dir.path()).unwrap());
    let mut g = c.benchmark_group("save-64MiB");
    g.throughput(Throughput::Bytes(big.len() as u64)).sample_size(10);
    g.bench_function("ckpt", |b| {
        b.iter(|| {
            let mut w = store.begin(1).unwrap();
            w.add_bytes("field", black_box(&big)).unwrap();
            w.commit().unwrap()
        })
    });
    g.bench_function("baseline: bare durable sequence", |b| {
        b.iter(|| bare_durable_save(dir.path(), "bare-big", black_box(&big)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
