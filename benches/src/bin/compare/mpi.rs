//! Scenario 10 of the comparison runner: a collective checkpoint of R MPI ranks (`ckpt_mpi_checkpoint`,
//! `include/ckpt_mpi.h`) against the per-rank durable save an MPI programmer would write by hand, with a
//! large state split over the ranks (bandwidth) and 4 KiB per rank (the collective commit's overhead).
//!
//! The timing is done by `benches/mpi/bench_mpi.c` (rank 0 prints one `step <i> <seconds>` line per step),
//! compiled here with Open MPI's `mpicc` against this build's libckpt and launched with `mpirun`.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Opts, Stat, stat, sync_all};

/// The numbers of ranks measured.
const RANKS: [usize; 3] = [1, 2, 4];
/// Bytes per rank of the small case.
const SMALL_BYTES: usize = 4096;
/// Longest an `mpirun` may take before it is killed (with its process group) and the scenario reported failed.
const MPIRUN_TIMEOUT: Duration = Duration::from_secs(600);

struct OpenMpi {
    mpirun: String,
    mpicc: String,
    version: String,
}

/// The first line `tool --version` prints, if it runs and succeeds.
fn version_line(tool: &str) -> Option<String> {
    let o = Command::new(tool).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !o.status.success() {
        return None;
    }
    String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_string())
}

/// Open MPI's tools: Debian's `*.openmpi` names, or the plain ones when `mpirun` is Open MPI's.
fn open_mpi() -> Result<OpenMpi, String> {
    let (suffix, line) = if let Some(line) = version_line("mpirun.openmpi") {
        (".openmpi", line)
    } else {
        match version_line("mpirun") {
            Some(l) if l.contains("Open MPI") || l.contains("OpenRTE") => ("", l),
            Some(l) => return Err(format!("`mpirun` is not Open MPI's (it says `{l}`); only Open MPI is measured")),
            None => {
                return Err("Open MPI is not installed (no `mpirun.openmpi` or `mpirun`; apt-get install \
                            openmpi-bin libopenmpi-dev)"
                    .into());
            }
        }
    };
    let mpicc = format!("mpicc{suffix}");
    if version_line(&mpicc).is_none() {
        return Err(format!("`{mpicc}` is missing (apt-get install libopenmpi-dev)"));
    }
    // "mpirun (Open MPI) 4.1.4" / "mpirun.openmpi (OpenRTE) 4.1.4": the version is the last word.
    let version = line.split_whitespace().last().unwrap_or("unknown").to_string();
    Ok(OpenMpi { mpirun: format!("mpirun{suffix}"), mpicc, version })
}

/// The directory of this build's `libckpt.so` (next to this executable), built or found up to date.
fn libckpt_dir() -> Result<PathBuf, String> {
    let dir = super::build_tools(&["ckpt-ffi"])?;
    if !dir.join("libckpt.so").exists() {
        return Err(format!("no libckpt.so in {} after building ckpt-ffi", dir.display()));
    }
    Ok(dir)
}

/// Compiles `benches/mpi/bench_mpi.c` into `work`.
fn compile(mpi: &OpenMpi, libdir: &Path, work: &Path) -> Result<PathBuf, String> {
    let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
    let include = benches.parent().unwrap_or(benches).join("include");
    let exe = work.join("bench_mpi");
    let o = Command::new(&mpi.mpicc)
        .args(["-O2", "-std=c11", "-Wall", "-Wextra"])
        .arg(format!("-I{}", include.display()))
        .arg(benches.join("mpi/bench_mpi.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", libdir.display()))
        .arg("-lckpt")
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", mpi.mpicc))?;
    if !o.status.success() {
        return Err(format!(
            "compiling benches/mpi/bench_mpi.c failed: {}",
            String::from_utf8_lossy(&o.stderr).trim().replace('\n', " / ")
        ));
    }
    Ok(exe)
}

/// One `mpirun -np ranks bench_mpi mode dir bytes steps`: the step times after the first (warm-up) step.
fn run(case: &Case, ranks: usize, mode: &str, dir: &Path, bytes: usize, steps: usize) -> Result<Vec<f64>, String> {
    let (mpi, exe) = (case.mpi, case.exe);
    let (out_path, err_path) = (case.work.join("mpirun.out"), case.work.join("mpirun.err"));
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()));
    let mut cmd = Command::new(&mpi.mpirun);
    cmd.args(["--oversubscribe", "-np", &ranks.to_string()])
        .arg(exe)
        .arg(mode)
        .arg(dir)
        .arg(bytes.to_string())
        .arg(steps.to_string());
    for (k, _) in std::env::vars() {
        if k.starts_with("CKPT_") || k.starts_with("SLURM_") || k.starts_with("OMPI_") || k.starts_with("PMI") {
            cmd.env_remove(k);
        }
    }
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(file(&out_path)?)
        .stderr(file(&err_path)?);
    let what = format!("`mpirun -np {ranks} bench_mpi {mode} DIR {bytes} {steps}`");
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let t = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if t.elapsed() > MPIRUN_TIMEOUT => {
                // SAFETY: kill has no memory effects; the group is mpirun's own (process_group(0) above).
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!("{what} did not finish within {} s", MPIRUN_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).take(6).collect();
        return Err(format!("{what} failed ({status}): {}", tail.join(" / ")));
    }
    let times: Vec<f64> = stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("step ")?.split_whitespace();
            let step: usize = w.next()?.parse().ok()?;
            let secs: f64 = w.next()?.parse().ok()?;
            Some((step, secs))
        })
        .filter(|&(step, _)| step > 1)
        .map(|(_, secs)| secs)
        .collect();
    if times.len() != steps - 1 {
        return Err(format!("{what} printed {} timed steps, expected {}: {}", times.len(), steps - 1, stdout.trim()));
    }
    Ok(times)
}

/// `bytes` in MiB, with decimals only when it is not a whole number of MiB.
fn mib(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

/// One row: `rounds` rounds of (one `mpirun` of ckpt, one of bare), each doing `steps` steps, in directories
/// of their own kept across the rounds (every timed save replaces an earlier one) and removed afterwards.
struct Case<'a> {
    mpi: &'a OpenMpi,
    exe: &'a Path,
    work: &'a Path,
    rounds: usize,
}

impl Case<'_> {
    fn measure(&self, ranks: usize, bytes: usize, steps: usize, large: bool) -> Result<(Stat, Stat), String> {
        let tag = if large { "large" } else { "small" };
        let dirs = ["ckpt", "bare"].map(|mode| self.work.join(format!("mpi-{tag}-{ranks}-{mode}")));
        let mut samples = [Vec::new(), Vec::new()];
        let result: Result<(), String> = (|| {
            for d in &dirs {
                std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            }
            for _ in 0..self.rounds {
                for (i, mode) in ["ckpt", "bare"].into_iter().enumerate() {
                    sync_all(); // untimed: one mode's dirty data (or a removed row's files) does not bill the other
                    samples[i].extend(run(self, ranks, mode, &dirs[i], bytes, steps)?);
                }
            }
            Ok(())
        })();
        for d in &dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        result?;
        let [a, b] = samples;
        Ok((stat(a), stat(b)))
    }
}

/// Appends section 10 (or the reason it was skipped) to `out`.
pub fn scenario_mpi(o: &Opts, work: &Path, out: &mut String) {
    let _ = writeln!(out, "\n## 10. MPI: collective checkpoint of R ranks\n");
    match measure(o, work) {
        Ok(text) => out.push_str(&text),
        Err(why) => {
            let _ = writeln!(out, "Skipped: {why}.");
        }
    }
    commit_scaling(o, work, out);
}

/// A step's work for many ranks, without MPI: N stores (ranks) in this process write 4 KiB parts, and
/// rank 0 commits the step the way `ckpt_mpi.h` does (from the identities the ranks report, then every rank
/// removes its own retired part) or by opening every part (`commit_step`, for ranks that cannot report).
/// The two run side by side, alternating step by step, in two directories.
fn commit_scaling(o: &Opts, work: &Path, out: &mut String) {
    use ckpt_core::{Config, PartIdentity, SectionOptions, Store};
    // (ranks, other files in the directory): the last row is the job's crowded working directory.
    const CROWD: usize = 10_000;
    let counts: &[(u32, usize)] =
        if o.smoke { &[(4, 0), (16, 0), (16, 100)] } else { &[(16, 0), (64, 0), (256, 0), (1024, 0), (64, CROWD)] };
    let steps: i64 = if o.smoke { 4 } else { 8 };
    let keep = ckpt_core::DEFAULT_KEEP as i64;
    let part = vec![7u8; SMALL_BYTES];
    let crowded = counts.last().map_or(0, |c| c.1);
    let mut rows = String::new();
    for &(n, crowd) in counts {
        let ranks = |dir: &Path| -> Vec<Store> {
            (0..n)
                .map(|r| {
                    let mut c = Config::new("scale", dir).expect("config");
                    c.nranks = n;
                    c.rank = r;
                    Store::new(c)
                })
                .collect()
        };
        let (gathered_dir, opened_dir) =
            (work.join(format!("commit-{n}-{crowd}-gathered")), work.join(format!("commit-{n}-{crowd}-opened")));
        for d in [&gathered_dir, &opened_dir] {
            std::fs::create_dir_all(d).expect("create the directory");
            for i in 0..crowd {
                std::fs::write(d.join(format!("output.{i}.dat")), b"x").expect("an unrelated file");
            }
        }
        let (gathered, opened) = (ranks(&gathered_dir), ranks(&opened_dir));
        let (mut t_gathered, mut t_opened, mut t_part, mut t_after) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for step in 1..=steps {
            let generation = step as u64;
            // From the first step that retires a generation on: the steady state.
            let timed = step > keep + 1;
            for (stores, gathering) in [(&gathered, true), (&opened, false)] {
                let mut part_times = Vec::with_capacity(n as usize);
                for s in stores.iter() {
                    let t = Instant::now();
                    let mut w = s.begin_part(generation, step).expect("begin_part");
                    w.add_section_with("state", &part, SectionOptions::new()).expect("add");
                    w.commit().expect("part");
                    part_times.push(t.elapsed().as_secs_f64());
                }
                if gathering {
                    let parts: Vec<PartIdentity> =
                        stores.iter().map(|s| s.part_identity(generation).expect("identity")).collect();
                    let t = Instant::now();
                    stores[0].commit_step_with_parts(generation, step, &parts).expect("commit_step_with_parts");
                    let commit = t.elapsed().as_secs_f64();
                    let mut after = Vec::with_capacity(n as usize);
                    for s in stores.iter() {
                        let t = Instant::now();
                        s.after_step_committed(generation);
                        after.push(t.elapsed().as_secs_f64());
                    }
                    if timed {
                        t_gathered.push(commit);
                        t_part.push(stat(part_times).median);
                        t_after.push(stat(after).median);
                    }
                } else {
                    let t = Instant::now();
                    stores[0].commit_step(generation, step).expect("commit_step");
                    if timed {
                        t_opened.push(t.elapsed().as_secs_f64());
                    }
                }
            }
        }
        // The restart of the last step: new stores (a new job's ranks) each find the newest step and verify
        // the manifest and their own part, as every rank does in `ckpt_mpi_restart`.
        let mut t_restart = Vec::with_capacity(n as usize);
        for s in &ranks(&gathered_dir) {
            let t = Instant::now();
            let found = s.restore_at_most(u64::MAX).expect("restart").expect("a step to restart from");
            t_restart.push(t.elapsed().as_secs_f64());
            assert_eq!(found.generation, steps as u64);
        }
        let _ = std::fs::remove_dir_all(&gathered_dir);
        let _ = std::fs::remove_dir_all(&opened_dir);
        let (g, op) = (stat(t_gathered), stat(t_opened));
        let _ = writeln!(
            rows,
            "| {n}{} | {:.2} ms ({:.2}–{:.2}) | {:.1} µs | {:.1} ms ({:.1}–{:.1}) | {:.0} µs | {:.2} | {:.0} µs | {:.0} µs | {:.0} µs |",
            if crowd > 0 { format!(", in a directory with {crowd} other files") } else { String::new() },
            g.median * 1e3,
            g.min * 1e3,
            g.max * 1e3,
            g.median * 1e6 / f64::from(n),
            op.median * 1e3,
            op.min * 1e3,
            op.max * 1e3,
            op.median * 1e6 / f64::from(n),
            g.median / op.median,
            stat(t_part).median * 1e6,
            stat(t_after).median * 1e6,
            stat(t_restart).median * 1e6,
        );
    }
    let _ = writeln!(
        out,
        "\n### A step's work for many ranks\n\n\
         For more ranks than this machine can run: N stores of N ranks in one process write their 4 KiB parts \
         of a step, then rank 0 commits it while the other ranks wait for the outcome. **From identities** is \
         what `ckpt_mpi_checkpoint` does: the ranks report their part's identity (an `MPI_Gather` of 48 bytes \
         each), rank 0 writes the manifest without opening any part, and after the outcome each rank removes \
         its own part of the generation the step retired; rank 0 removes that emptied directory at a later \
         commit. **Opening every part** is `commit_step` (`ckpt_commit_step`), for ranks that cannot report: \
         rank 0 opens and checks every part and removes every retired part itself. The two run side by side, \
         alternating step by step; medians of the {} steps from the first that retires a generation, on this \
         machine's local disk. A rank's own part and its removal of its retired part are medians over the \
         ranks of one step, then over the steps: they should not grow with N (a rank lists no directory that \
         holds one entry per rank). On a parallel file system each open and unlink is a metadata round trip, \
         so what rank 0 does per rank costs more there. The last row runs in a directory that also holds \
         {crowded} unrelated files, as the job's working directory (the default checkpoint directory of Slurm's removed checkpoint interface) \
         may: ranks and rank 0 look only at the checkpoint's own entries. *A rank's restart*: new stores (a \
         requeued job's ranks) each find the last step and verify its manifest and their own part, as every \
         rank does in `ckpt_mpi_restart`; the median over the ranks. The manifest holds 48 bytes per rank, so \
         this grows with N, at most linearly.\n\n\
         | ranks | rank 0's commit from identities, median (min–max) | per rank | rank 0's commit opening every part \
         | per rank | ratio | a rank's part | a rank's removal of its retired part | a rank's restart |\n\
         |---|---|---|---|---|---|---|---|---|\n{}",
        steps - keep - 1,
        rows.trim_end()
    );
}

fn measure(o: &Opts, work: &Path) -> Result<String, String> {
    let mpi = open_mpi()?;
    let libdir = libckpt_dir()?;
    let exe = compile(&mpi, &libdir, work)?;
    // Steps per mpirun: the first is discarded (warm-up), so large rows get `rounds * (steps - 1)` samples.
    let (total, rounds, large_steps, small_steps) =
        if o.smoke { (4usize << 20, 2, 3, 3) } else { (o.size_mib << 20, o.runs.max(1), 2, 20) };
    let case = Case { mpi: &mpi, exe: &exe, work, rounds };
    let mut large = Vec::new();
    for r in RANKS {
        let per_rank = total / r;
        large.push((r, per_rank, case.measure(r, per_rank, large_steps, true)?));
    }
    let mut small = Vec::new();
    for r in RANKS {
        small.push((r, case.measure(r, SMALL_BYTES, small_steps, false)?));
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let oversubscribed: Vec<String> = RANKS.iter().filter(|&&r| r > cpus).map(ToString::to_string).collect();

    let mut s = String::new();
    let _ = writeln!(
        s,
        "Every rank holds its share of the state in one buffer (non-constant bytes, touched before any clock \
         starts) and saves it once per step. **ckpt**: the buffer is protected as region 0 (uncompressed, the \
         default) and a step is one `ckpt_mpi_checkpoint(MPI_COMM_WORLD, step)` (`include/ckpt_mpi.h`): the \
         ranks agree on the generation (an allreduce), each rank writes its part (temporary file, fsync, \
         rename, fsync of the directory), a gather of each rank's status and part identity to rank 0 (the \
         barrier), rank 0 writes the step's manifest atomically from the identities, and broadcasts the \
         outcome, after which each rank removes its own part of the generation the step retired (with one rank it is \
         `ckpt_checkpoint(step)`: no agreement, no manifest); pruning at its defaults (keep {keep} generations, \
         older ones removed), like every other setting. **bare**, the baseline an MPI programmer would write by hand \
         (durable and atomic per rank, but nothing records which step is complete on every rank): each rank \
         `open(DIR/bare.<rank>.tmp)`, `write`, `fsync`, `close`, `rename` to `DIR/bare.<rank>` (replacing the \
         previous step's file), `fsync(DIR)`. Rank 0 times each step with `MPI_Wtime` from the exit of an \
         `MPI_Barrier` before the save to the exit of an `MPI_Barrier` after it, so a step ends only when \
         every rank's save is durable.\n\n\
         `benches/mpi/bench_mpi.c`, built with `mpicc -O2` against this build's libckpt and run with \
         `mpirun --oversubscribe -np R` (Open MPI {version}; this machine has {cpus} CPUs{over}). Each row: \
         {rounds} rounds of one `mpirun` of ckpt then one of bare, each doing {large_steps} steps (large \
         state) or {small_steps} steps (4 KiB); the first step of every `mpirun` (its first save) is \
         discarded, so the medians are over {nl} steps per mode (large) and {ns} (4 KiB). Each mode writes to \
         a directory of its own, kept over a row's rounds (every timed save replaces an earlier one) and \
         removed afterwards; `sync` (untimed) before every `mpirun`.\n\n\
         Large state: the same {total} in every row, split evenly over the ranks, so the disk is the limit; \
         throughput is the total divided by the step time (the range from the slowest and the fastest step). \
         4 KiB per rank: the step's latency, i.e. what the collective commit (agreement, manifest) adds to R \
         tiny durable writes. *ckpt / bare* is the ratio of the median step times (below 1: ckpt is faster).\n",
        keep = ckpt_core::DEFAULT_KEEP,
        version = mpi.version,
        over = if oversubscribed.is_empty() {
            String::new()
        } else {
            format!(", so {} ranks oversubscribe it", oversubscribed.join(" and "))
        },
        nl = rounds * (large_steps - 1),
        ns = rounds * (small_steps - 1),
        total = mib(total),
    );
    let _ = writeln!(
        s,
        "| ranks | state | ckpt median (min–max) | bare median (min–max) | ckpt / bare |\n|---|---|---|---|---|"
    );
    let throughput = |bytes: usize, t: &Stat| {
        let g = |secs: f64| bytes as f64 / secs / 1e9;
        format!("{:.2} GB/s ({:.2}–{:.2})", g(t.median), g(t.max), g(t.min))
    };
    for (r, per_rank, (a, b)) in &large {
        let bytes = per_rank * r;
        let _ = writeln!(
            s,
            "| {r} | {} total ({} per rank) | {} | {} | {:.2} |",
            mib(bytes),
            mib(*per_rank),
            throughput(bytes, a),
            throughput(bytes, b),
            a.median / b.median
        );
    }
    let latency = |t: &Stat| format!("{:.2} ms ({:.2}–{:.2})", t.median * 1e3, t.min * 1e3, t.max * 1e3);
    for (r, (a, b)) in &small {
        let _ = writeln!(
            s,
            "| {r} | {} KiB per rank | {} | {} | {:.2} |",
            SMALL_BYTES >> 10,
            latency(a),
            latency(b),
            a.median / b.median
        );
    }
    let _ = writeln!(
        s,
        "\nNo target in the issue; reported because it is what users of an HPC checkpoint library ask: what \
         does a collective checkpoint of N ranks, committed only when every rank's part is durable, cost over \
         each rank writing its own file?\n\n\
         Where the 4 KiB step's time goes: the bare sequence is two fsyncs per rank (the file, the directory). \
         A ckpt part is three: the file, the step's parts directory (the rename into it) and the parts root \
         (the step's directory is new at every step; the parts root's own entry is made durable once per \
         process). Then the ranks' part identities are gathered to rank 0 (the gather is also the barrier), \
         and rank 0 writes the step's manifest durably from them: two more fsyncs, in sequence, while the \
         other ranks wait for the broadcast of the outcome. That second round of durable writes is what \
         makes a step restartable as a whole, and it is what the bare sequence does not have."
    );
    Ok(s)
}
