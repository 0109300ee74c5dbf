#![allow(missing_docs)] // criterion_group! generates undocumented items
//! `should_checkpoint()` on the hot path, with signals armed (TERM, USR1) and an interval set.
//! Target: a few nanoseconds per call. Baseline in the same run: a relaxed load of a plain atomic.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ckpt_core::{Checkpointer, Config, Interval, LogTarget, Store};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new("bench", dir.path()).unwrap();
    cfg.interval = Some(Interval::Every(Duration::from_secs(3600)));
    cfg.log = LogTarget::Off;
    let cp = Checkpointer::new(Store::new(cfg)).unwrap();
    let mut g = c.benchmark_group("hot-path");
    g.bench_function("should_checkpoint x1000", |b| {
        b.iter(|| {
            let mut n = 0u32;
            for _ in 0..1000 {
                n += u32::from(black_box(&cp).should_checkpoint());
            }
            n
        })
    });
    let plain = AtomicU32::new(0);
    g.bench_function("baseline: relaxed atomic load x1000", |b| {
        b.iter(|| {
            let mut n = 0u32;
            for _ in 0..1000 {
                n += u32::from(black_box(&plain).load(Ordering::Relaxed) != 0);
            }
            n
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
