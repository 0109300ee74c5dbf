//! Levels and asynchronous saves (issue 20), side by side in one run: what the application waits for
//! when it saves to the checkpoint directory, to a node-local cache level, or in the background; how fast
//! the background copy (the "flush") runs against `dd` to the same directory; and the same with several
//! simulated ranks. Prints Markdown (the section "Levels and asynchronous saves" of BENCHMARKS.md).
//!
//! `cargo run --release -p ckpt-benches --bin ckpt-bench-levels -- [--runs N] [--size-mib M] [--dir DIR]
//! [--cache-root DIR] [--ranks R] [--rank-mib M] [--only 1,2,3] [--smoke] [--output FILE]`
//!
//! 1. Application-visible time of one checkpoint of `--size-mib`: synchronous save to the checkpoint
//!    directory (`--dir`, on the disk), cached (`CacheLevel` in `--cache-root`, tmpfs), asynchronous
//!    (`checkpoint_async`, until the call returns, staging copy included: into a new `Vec`, or into the
//!    previous call's buffer as `ckpt_checkpoint_async` does) and both. Rows interleaved,
//!    rotating; every checkpoint is made durable (untimed) before the next row runs.
//! 2. Flush throughput: `Store::flush_checkpoint` of a cached checkpoint against `dd if=<the cached file>
//!    of=<dir>/x bs=8M conv=fsync`, interleaved.
//! 3. `--ranks` simulated ranks (threads, each with its own single-process checkpointer, checkpoint
//!    directory and state of `--rank-mib`): time until every rank's save returned, synchronous vs cached.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Barrier, mpsc};
use std::time::Instant;

use ckpt_core::storage::wait_for_background_frees;
use ckpt_core::{CacheLevel, Checkpoint, Checkpointer, Config, LoadOptions, LogTarget, SectionOptions, Store};

struct Opts {
    runs: usize,
    size_mib: usize,
    dir: PathBuf,
    cache_root: PathBuf,
    ranks: usize,
    rank_mib: usize,
    only: Vec<String>,
    smoke: bool,
    output: Option<PathBuf>,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        runs: 7,
        size_mib: 1024,
        dir: PathBuf::from("target"),
        cache_root: PathBuf::from("/dev/shm"),
        ranks: 4,
        rank_mib: 256,
        only: Vec::new(),
        smoke: false,
        output: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().unwrap_or_else(|| panic!("{a} needs {what}"));
        match a.as_str() {
            "--runs" => o.runs = value("N").parse().expect("--runs N"),
            "--size-mib" => o.size_mib = value("M").parse().expect("--size-mib M"),
            "--dir" => o.dir = PathBuf::from(value("DIR")),
            "--cache-root" => o.cache_root = PathBuf::from(value("DIR")),
            "--ranks" => o.ranks = value("R").parse().expect("--ranks R"),
            "--rank-mib" => o.rank_mib = value("M").parse().expect("--rank-mib M"),
            "--only" => o.only = value("N,M").split(',').map(|v| v.trim().to_string()).collect(),
            "--output" => o.output = Some(PathBuf::from(value("FILE"))),
            "--smoke" => o.smoke = true,
            other => panic!("unknown argument {other}"),
        }
    }
    if o.smoke {
        o.runs = 2;
        o.size_mib = 16;
        o.rank_mib = 4;
    }
    o
}

/// The statistics every row quotes (one definition for all the runners).
use ckpt_benches::{median, stat};

/// The median over rounds of `a[i] / b[i]` (both measured in round `i`).
fn paired(a: &[f64], b: &[f64]) -> f64 {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&mut r)
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

/// Incompressible bytes (xorshift), the same for a given seed.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sync_all() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

/// The order of `n` rows in round `round`: rotated by `round / 2`, backwards in odd rounds (as the
/// comparison runner's `rotated`).
fn rotated(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).map(|i| (i + round / 2) % n).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// Runs `dd` with `args` (plus `status=none`) and returns its wall time in seconds.
fn timed_dd(args: &[String]) -> f64 {
    let t = Instant::now();
    let st = Command::new("dd").args(args).arg("status=none").status().expect("dd");
    assert!(st.success(), "dd {args:?} failed");
    t.elapsed().as_secs_f64()
}

fn config(name: &str, dir: &Path, cache: Option<&Path>) -> Config {
    std::fs::create_dir_all(dir).expect("create checkpoint directory");
    let mut c = Config::new(name, dir).expect("config");
    c.keep = 1;
    c.signals = Vec::new();
    c.log = LogTarget::Off;
    c.cache = cache.map(CacheLevel::new);
    c
}

fn checkpointer(name: &str, dir: &Path, cache: Option<&Path>) -> Checkpointer {
    Checkpointer::new(Store::new(config(name, dir, cache))).expect("checkpointer")
}

fn save(cp: &Checkpointer, step: u64, data: &[u8]) {
    cp.checkpoint(step, |w| w.add_section_with("state", data, SectionOptions::new())).expect("checkpoint");
}

/// One row of scenario 1: what the application waits for, and the time until the checkpoint is durable in
/// the checkpoint directory (the rest waited for untimed, before the next row).
struct Visible {
    returned: f64,
    durable: f64,
}

/// 1. Application-visible time of one large checkpoint.
fn scenario_visible(o: &Opts, work: &Path, cache_root: &Path, out: &mut String) {
    let size = o.size_mib << 20;
    let data = random_bytes(size, 42);
    let sync_cp = checkpointer("sync", &work.join("sync"), None);
    let cached_cp = checkpointer("cached", &work.join("cached"), Some(cache_root));
    let async_cp = checkpointer("async", &work.join("async"), None);
    let reused_cp = checkpointer("async-reused", &work.join("async-reused"), None);
    let both_cp = checkpointer("async-cached", &work.join("async-cached"), Some(cache_root));
    let both_reused_cp = checkpointer("async-cached-reused", &work.join("async-cached-reused"), Some(cache_root));
    // The staging buffers the "reused" rows copy into, handed back by their writers after the save.
    let mut staging: [Option<Vec<u8>>; 2] = [Some(vec![0u8; size]), Some(vec![0u8; size])];
    let labels = [
        "synchronous: `Checkpointer::checkpoint` to the checkpoint directory",
        "cached: the same with `Config.cache = Some(CacheLevel::new(\"/dev/shm/…\"))` (the flush runs after the return)",
        "async: `checkpoint_async`, the state copied into a new `Vec` first",
        "async, staging buffer reused: the state copied into the previous call's buffer (as `ckpt_checkpoint_async` does)",
        "async + cached: `checkpoint_async` (new `Vec`) with the cache level",
        "async + cached, staging buffer reused: `ckpt_checkpoint_async` with `CKPT_CACHE_DIR`",
    ];
    let mut rows: Vec<Vec<Visible>> = labels.iter().map(|_| Vec::new()).collect();
    let mut step = 0u64;
    let mut run_row = |i: usize, step: u64| -> Visible {
        let t = Instant::now();
        let v = match i {
            0 => {
                save(&sync_cp, step, &data);
                let s = t.elapsed().as_secs_f64();
                Visible { returned: s, durable: s }
            }
            1 => {
                save(&cached_cp, step, &data);
                let returned = t.elapsed().as_secs_f64();
                cached_cp.wait_for_flush(None).expect("flush");
                Visible { returned, durable: t.elapsed().as_secs_f64() }
            }
            2 | 4 => {
                let cp = if i == 2 { &async_cp } else { &both_cp };
                let copy = data.to_vec();
                cp.checkpoint_async(step, move |w| w.add_section_with("state", &copy, SectionOptions::new()))
                    .expect("checkpoint_async");
                let returned = t.elapsed().as_secs_f64();
                cp.checkpoint_wait().expect("checkpoint_wait").expect("one in flight");
                Visible { returned, durable: t.elapsed().as_secs_f64() }
            }
            _ => {
                let (cp, slot) = if i == 3 { (&reused_cp, 0) } else { (&both_reused_cp, 1) };
                let mut buf = staging[slot].take().expect("the staging buffer is back");
                buf.copy_from_slice(&data);
                let (back, back_rx) = mpsc::channel();
                cp.checkpoint_async(step, move |w| {
                    let r = w.add_section_with("state", &buf, SectionOptions::new());
                    let _ = back.send(buf);
                    r
                })
                .expect("checkpoint_async");
                let returned = t.elapsed().as_secs_f64();
                cp.checkpoint_wait().expect("checkpoint_wait").expect("one in flight");
                staging[slot] = Some(back_rx.recv().expect("the writer hands the buffer back"));
                Visible { returned, durable: t.elapsed().as_secs_f64() }
            }
        };
        wait_for_background_frees();
        v
    };
    // Warm-up: twice each, so that every directory has the spare a running job's saves find.
    for i in [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5] {
        step += 1;
        run_row(i, step);
    }
    for run in 0..o.runs {
        for i in rotated(labels.len(), run) {
            step += 1;
            sync_all();
            rows[i].push(run_row(i, step));
        }
    }
    let returned: Vec<Vec<f64>> = rows.iter().map(|r| r.iter().map(|v| v.returned).collect()).collect();
    let durable: Vec<Vec<f64>> = rows.iter().map(|r| r.iter().map(|v| v.durable).collect()).collect();
    let _ = writeln!(out, "\n### 1. Application-visible time of a {} MiB checkpoint\n", o.size_mib);
    let _ = writeln!(
        out,
        "One raw section of incompressible bytes; `keep = 1`, each save replacing the previous one (a save writes \
         over the spare's blocks, as in section 1). *Returned*: until the call returns, what the application \
         waits for. *Durable*: until the checkpoint is committed in the checkpoint directory (`wait_for_flush`, \
         `checkpoint_wait`), waited for before the next row, so no row's background work overlaps another's \
         measurement. `sync` (untimed) before each. Rows rotate from run to run; {} runs after a warm-up of two \
         saves per row. *Paired*: the median over runs of the row's time over the synchronous save's time in the \
         same run.\n",
        o.runs
    );
    let _ = writeln!(
        out,
        "| | returned: median (min–max) | / synchronous (medians) | paired | durable: median (min–max) |\n|---|---|---|---|---|"
    );
    let base = stat(&returned[0]).median;
    for (i, label) in labels.iter().enumerate() {
        let r = stat(&returned[i]);
        let d = stat(&durable[i]);
        let _ = writeln!(
            out,
            "| {label} | {:.3} s ({:.3}–{:.3}) | {:.2} | {:.2} | {:.3} s ({:.3}–{:.3}) |",
            r.median,
            r.min,
            r.max,
            r.median / base,
            paired(&returned[i], &returned[0]),
            d.median,
            d.min,
            d.max
        );
    }
    let ratio = stat(&returned[1]).median / base;
    let both = stat(&returned[5]).median / base;
    let _ = writeln!(
        out,
        "\nCached / synchronous: **{ratio:.2}** (paired {:.2}; target ≤ 0.3: {}). With the cache level through \
         `ckpt_checkpoint_async` (staging buffer reused): **{both:.2}** (paired {:.2}; target ≤ 0.3: {}). \
         Async / synchronous {:.2}, async with a reused staging buffer {:.2}, async + cached (new `Vec`) {:.2}.",
        paired(&returned[1], &returned[0]),
        if ratio <= 0.3 { "met" } else { "NOT met" },
        paired(&returned[5], &returned[0]),
        if both <= 0.3 { "met" } else { "NOT met" },
        stat(&returned[2]).median / base,
        stat(&returned[3]).median / base,
        stat(&returned[4]).median / base,
    );
}

/// 2. The flush (cache → checkpoint directory) against dd from the cached file to the same directory.
fn scenario_flush(o: &Opts, work: &Path, cache_root: &Path, out: &mut String) {
    let size = o.size_mib << 20;
    let data = random_bytes(size, 7);
    let shared = work.join("flush");
    let store = Store::new(config("flush", &shared, Some(cache_root)));
    // The reference: the same copies into new blocks (no spare in the checkpoint directory).
    let store_new = Store::new({
        let mut c = config("flush", &work.join("flush-new"), Some(cache_root));
        c.reuse_space = false;
        c
    });
    let dd_dir = work.join("flush-dd");
    std::fs::create_dir_all(&dd_dir).expect("dd directory");
    let dd_target = dd_dir.join("x");
    let dd_over = dd_dir.join("y");
    let mut step = 0u64;
    let cache_once = |step: u64| -> Checkpoint {
        let mut w = store.begin(step).expect("begin");
        w.add_section_with("state", &data, SectionOptions::new()).expect("add");
        let info = w.commit().expect("commit to the cache");
        assert_eq!(store.level_of(info.generation_path.parent().expect("dir")), ckpt_core::Level::Cache);
        Checkpoint::open_with(&**store.storage(), &info.generation_path, LoadOptions::new())
            .expect("open the cached checkpoint")
    };
    let flush_once = |store: &Store, source: &Checkpoint| -> f64 {
        sync_all();
        let t = Instant::now();
        store.flush_checkpoint(source).expect("flush");
        let s = t.elapsed().as_secs_f64();
        wait_for_background_frees();
        s
    };
    let dd_once = |source: &Checkpoint, over: bool| -> f64 {
        if !over {
            // Removed untimed: dd writes new blocks, and frees none.
            let _ = std::fs::remove_file(&dd_target);
        }
        sync_all();
        timed_dd(&[
            format!("if={}", source.path().display()),
            format!("of={}", if over { dd_over.display() } else { dd_target.display() }),
            "bs=8M".into(),
            if over { "conv=notrunc,fsync".into() } else { "conv=fsync".into() },
        ])
    };
    for _ in 0..2 {
        step += 1;
        let source = cache_once(step);
        flush_once(&store, &source);
        flush_once(&store_new, &source);
        dd_once(&source, false);
        dd_once(&source, true);
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 4];
    for run in 0..o.runs {
        step += 1;
        let source = cache_once(step);
        let file_len = source.file_len();
        for i in rotated(4, run) {
            times[i].push(match i {
                0 => flush_once(&store, &source),
                1 => flush_once(&store_new, &source),
                2 => dd_once(&source, false),
                _ => dd_once(&source, true),
            });
        }
        assert_eq!(std::fs::metadata(&dd_target).expect("dd's copy").len(), file_len);
    }
    let (flush, dd) = (&times[0], &times[2]);
    let stats: Vec<_> = times.iter().map(|t| stat(t)).collect();
    let (sf, sd) = (&stats[0], &stats[2]);
    let ratio = sd.median / sf.median;
    let _ = writeln!(
        out,
        "\n### 2. Flush throughput: {} MiB from the cache (tmpfs) to the checkpoint directory\n",
        o.size_mib
    );
    let _ = writeln!(
        out,
        "Per run a checkpoint is committed to the cache (untimed), then, in rotating order, `Store::flush_checkpoint` \
         copies it to the checkpoint directory (buffered writes over the directory's spare, the retired \
         generation it keeps as a save there does; fsync on a thread while the copy is read back and verified; \
         link, rename, fsync of the directory, retention), the same into new blocks (`reuse_space` off), and \
         `dd` copies the same cached file to the same file system, into new blocks (its target removed untimed \
         first) and over its previous copy (`conv=notrunc`). `sync` (untimed) before each. {} runs after 2 \
         warm-up rounds.\n",
        o.runs
    );
    let _ = writeln!(out, "| | median (min–max) | throughput (median) |\n|---|---|---|");
    let labels = [
        "`Store::flush_checkpoint` (over the spare)",
        "reference: `Store::flush_checkpoint` into new blocks (`CKPT_REUSE_SPACE=0`)",
        "baseline: `dd if=CACHED of=DIR/x bs=8M conv=fsync` (new blocks)",
        "reference: `dd … conv=notrunc,fsync` (over its previous copy)",
    ];
    for (label, st) in labels.iter().zip(&stats) {
        let _ = writeln!(
            out,
            "| {label} | {:.3} s ({:.3}–{:.3}) | {:.2} GB/s |",
            st.median,
            st.min,
            st.max,
            gbps(size, st.median)
        );
    }
    let _ = writeln!(
        out,
        "\nThroughput flush / dd: **{ratio:.2}** (paired {:.2}; target ≥ 0.9: {}). References: the flush into new \
         blocks / `dd` into new blocks {:.2} (paired {:.2}); the flush over the spare / `dd conv=notrunc` {:.2} \
         (paired {:.2}).",
        paired(dd, flush),
        if ratio >= 0.9 { "met" } else { "NOT met" },
        sd.median / stats[1].median,
        paired(dd, &times[1]),
        stats[3].median / sf.median,
        paired(&times[3], flush),
    );
}

/// 3. Several simulated ranks saving at once: until the last one's save returned.
fn scenario_ranks(o: &Opts, work: &Path, cache_root: &Path, out: &mut String) {
    let size = o.rank_mib << 20;
    let states: Vec<Vec<u8>> = (0..o.ranks).map(|r| random_bytes(size, 100 + r as u64)).collect();
    let make = |mode: &str, cache: Option<&Path>| -> Vec<Checkpointer> {
        (0..o.ranks).map(|r| checkpointer("rank", &work.join(format!("ranks-{mode}/rank{r}")), cache)).collect()
    };
    let cps = [make("sync", None), make("cached", Some(cache_root))];
    // One step of every rank at once: (time until every rank returned, median of the ranks' own times,
    // time until every rank's checkpoint is durable in its checkpoint directory).
    let step_all = |cps: &[Checkpointer], step: u64| -> (f64, f64, f64) {
        let barrier = Barrier::new(cps.len());
        let times: Vec<(Instant, Instant)> = std::thread::scope(|s| {
            let handles: Vec<_> = cps
                .iter()
                .zip(&states)
                .map(|(cp, state)| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        let t = Instant::now();
                        save(cp, step, state);
                        (t, Instant::now())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
        });
        let start = times.iter().map(|t| t.0).min().expect("ranks");
        let end = times.iter().map(|t| t.1).max().expect("ranks");
        let mut own: Vec<f64> = times.iter().map(|(a, b)| (*b - *a).as_secs_f64()).collect();
        for cp in cps {
            cp.wait_for_flush(None).expect("flush");
        }
        let durable = start.elapsed().as_secs_f64();
        wait_for_background_frees();
        ((end - start).as_secs_f64(), median(&mut own), durable)
    };
    let mut step = 0u64;
    for _ in 0..2 {
        for c in &cps {
            step += 1;
            step_all(c, step);
        }
    }
    let mut rows: [Vec<(f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for run in 0..o.runs {
        for i in rotated(2, run) {
            step += 1;
            sync_all();
            rows[i].push(step_all(&cps[i], step));
        }
    }
    let col = |i: usize, f: fn(&(f64, f64, f64)) -> f64| -> Vec<f64> { rows[i].iter().map(f).collect() };
    let _ = writeln!(
        out,
        "\n### 3. {} simulated ranks, {} MiB each ({} MiB in all)\n",
        o.ranks,
        o.rank_mib,
        o.ranks * o.rank_mib
    );
    let _ = writeln!(
        out,
        "{} threads of one process, each a rank with its own single-process `Checkpointer` (its own checkpoint \
         directory, and with the cache level its own cache directory in the same tmpfs), start their saves at \
         a barrier. *All returned*: from the barrier until the last rank's save returned (what a job whose \
         ranks synchronise after a checkpoint waits for). *Per rank*: the median of the ranks' own save times. \
         *Durable*: until every rank's checkpoint is committed in its checkpoint directory (waited for before \
         the next row). Rows alternate; {} runs after 2 warm-up rounds; `sync` (untimed) before each.\n",
        o.ranks, o.runs
    );
    let _ = writeln!(
        out,
        "| | all returned: median (min–max) | aggregate throughput | per rank (median) | durable: median (min–max) |\n|---|---|---|---|---|"
    );
    for (i, label) in ["synchronous", "cached (tmpfs)"].iter().enumerate() {
        let a = stat(&col(i, |t| t.0));
        let p = stat(&col(i, |t| t.1));
        let d = stat(&col(i, |t| t.2));
        let _ = writeln!(
            out,
            "| {label} | {:.3} s ({:.3}–{:.3}) | {:.2} GB/s | {:.3} s | {:.3} s ({:.3}–{:.3}) |",
            a.median,
            a.min,
            a.max,
            gbps(size * o.ranks, a.median),
            p.median,
            d.median,
            d.min,
            d.max
        );
    }
    let (s, c) = (col(0, |t| t.0), col(1, |t| t.0));
    let ratio = stat(&c).median / stat(&s).median;
    let _ = writeln!(
        out,
        "\nAll ranks returned, cached / synchronous: **{ratio:.2}** (paired {:.2}; the single-rank target ≤ 0.3: {}).",
        paired(&c, &s),
        if ratio <= 0.3 { "met" } else { "NOT met" }
    );
}

fn machine(dir: &Path, cache_root: &Path) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).and_then(|l| l.split(':').nth(1));
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd).args(args).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let fs = |d: &Path| {
        let line =
            run("findmnt", &["-n", "-o", "FSTYPE,SOURCE", "--target", &d.display().to_string()]).unwrap_or_default();
        let mut fields = line.lines().next().unwrap_or_default().split_whitespace();
        match (fields.next(), fields.next()) {
            (Some(t), Some(s)) if t != s => format!("{t} on {s}"),
            (Some(t), _) => t.to_string(),
            _ => "an unknown file system".to_string(),
        }
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cpus} x {}, {:.0} GiB RAM, Linux {}; checkpoint directories on {} ({}), cache on {} ({}); load average \
         at the start {}",
        model.unwrap_or("unknown CPU").trim(),
        mem_kib as f64 / 1048576.0,
        run("uname", &["-r"]).unwrap_or_default(),
        fs(dir),
        dir.display(),
        fs(cache_root),
        cache_root.display(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

fn main() {
    let o = parse_args();
    let work = o.dir.join(format!("ckpt-bench-levels.{}", std::process::id()));
    let cache_root = o.cache_root.join(format!("ckpt-bench-levels.{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work directory");
    std::fs::create_dir_all(&cache_root).expect("cache root");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`cargo run --release -p ckpt-benches --bin ckpt-bench-levels -- --runs {} --size-mib {} --dir {} \
         --cache-root {} --ranks {} --rank-mib {}`\n\nMachine: {}.{}",
        o.runs,
        o.size_mib,
        o.dir.display(),
        o.cache_root.display(),
        o.ranks,
        o.rank_mib,
        machine(&o.dir, &o.cache_root),
        if o.smoke { " **Smoke run (small sizes): not a measurement.**" } else { "" }
    );
    let want = |n: &str| o.only.is_empty() || o.only.iter().any(|w| w == n);
    type Scenario = fn(&Opts, &Path, &Path, &mut String);
    let scenarios: [(&str, Scenario); 3] = [("1", scenario_visible), ("2", scenario_flush), ("3", scenario_ranks)];
    for (name, f) in scenarios {
        if want(name) {
            let started = Instant::now();
            f(&o, &work, &cache_root, &mut out);
            eprintln!("scenario {name}: {:.0} s", started.elapsed().as_secs_f64());
            // Everything of a scenario is gone before the next one starts (the cache is memory).
            let _ = std::fs::remove_dir_all(&work);
            let _ = std::fs::remove_dir_all(&cache_root);
            wait_for_background_frees();
            std::fs::create_dir_all(&work).expect("work directory");
            std::fs::create_dir_all(&cache_root).expect("cache root");
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&cache_root);
    print!("{out}");
    if let Some(path) = &o.output {
        std::fs::write(path, &out).expect("write --output");
    }
}
