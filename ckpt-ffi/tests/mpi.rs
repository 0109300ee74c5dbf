//! The MPI face of libckpt: builds the C and Fortran heat examples (`examples/c/heat_mpi.c`,
//! `examples/fortran/heat_mpi.f90`, through their Makefiles) against `include/ckpt_mpi.h` /
//! `include/ckpt_mpi.f90` and this build's libckpt, and runs each with 4 ranks:
//!
//! * (a) uninterrupted: the reference checksum;
//! * (b) SIGUSR1 to mpirun (which forwards it to every rank: the sbatch/mpirun path), then SIGTERM to every
//!   rank twice 20 ms apart (as Slurm does): every rank stops after the same checkpointed step with status 0;
//!   the restart resumes there and ends with the reference checksum, bit for bit;
//! * (d) rank 2's part of the newest step damaged: all ranks fall back together to the previous step (the
//!   MIN over ranks) and still end with the reference checksum; with a part of that step damaged too (on
//!   another rank), no step is readable everywhere: an error, never a silent fresh start;
//! * (c) SIGUSR1 to rank 2 only (the ranks agree on the checkpoint), SIGKILL to every rank once the
//!   checkpoint is reported: the restart resumes from it and ends with the reference checksum;
//! * (e) the step of (b) restarted on 2 and on 8 ranks: the example redistributes the rows (C's and
//!   Fortran's `restart_redistributed`), and the result is the reference checksum, bit for bit (with MPICH
//!   the Fortran example runs only this scenario);
//! * (h) three SIGTERM/restart cycles in a row with a node-local cache per simulated node: each restart
//!   resumes at the last run's step, each step is cached on both nodes and copied, and the last restart
//!   (from the caches) ends with the reference checksum.
//!
//! And `tests/mpi/test_mpi.c` checks every collective of `ckpt_mpi.h` with ranks in different states; a last
//! test compiles `ckpt_mpi.h` with strict warnings as C99, C11 and C++.
//!
//! The kill loop (`mpi_job_survives_random_sigkills_open_mpi`): `tests/mpi/kill_loop_mpi.c` with 4 ranks
//! under Open MPI, checkpointing collectively every 5 iterations, is SIGKILLed whole (mpirun, its daemons and
//! every rank, at once) at random moments: while starting or restoring, while computing, while a step's parts
//! or manifest are being written. It is restarted until it completes, then a new round starts in a fresh
//! directory. After every kill the restart must resume at a step >= the last step any rank reported durable
//! (`ckpt_mpi_checkpoint` returned CKPT_OK), and every completed run must print the result of the
//! uninterrupted run, bit for bit. `CKPT_MPI_KILL_ITERATIONS` sets the number of kills (default 12),
//! `CKPT_MPI_KILL_SEED` the random moments, `CKPT_MPI_KILL_STEPS` the iterations of a run (default 200).
//!
//! With Open MPI (`apt-get install openmpi-bin libopenmpi-dev gfortran make`) both examples; with MPICH when
//! it is installed too (`mpich libmpich-dev`, whose tools are `mpicc.mpich`, `mpirun.mpich`...) the C
//! example with fewer iterations (MPICH's ranks spin when oversubscribed: about 10 ms per iteration on 2
//! cores) and the Fortran one built and restarted on other numbers of ranks only (e). Missing tools:
//! skipped with a note. Open MPI as root needs OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM), and 4 ranks on fewer
//! cores `--oversubscribe`; both are set here.
//! Sizes (Open MPI): `CKPT_MPI_TEST_N` (grid, default 64) and `CKPT_MPI_TEST_ITERATIONS` (default 20000;
//! interrupted runs sleep 1 ms per iteration so that they last long enough to be interrupted, restarts do
//! not sleep).

mod common;
use common::{Rng, build_c, clean_env, lib_dir, root};

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const RANKS: usize = 4;

/// One MPI implementation's tools and the run sizes that suit it.
struct Mpi {
    name: &'static str,
    mpirun: String,
    mpicc: String,
    mpif90: String,
    mpirun_args: &'static [&'static str],
    iterations: u64,
    /// Microseconds of sleep per iteration in the runs that get interrupted.
    delay_us: u64,
    /// Rank 0 prints "iteration i" every `progress` iterations; signals are sent only after some progress.
    progress: u64,
}

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn version_says(tool: &str, what: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(what))
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Open MPI: Debian's `*.openmpi` names, or the plain ones when they are Open MPI's.
fn open_mpi() -> Option<Mpi> {
    let suffix = if have("mpirun.openmpi", "--version") {
        ".openmpi"
    } else if version_says("mpirun", "Open MPI") {
        ""
    } else {
        return None;
    };
    Some(Mpi {
        name: "Open MPI",
        mpirun: format!("mpirun{suffix}"),
        mpicc: format!("mpicc{suffix}"),
        mpif90: format!("mpif90{suffix}"),
        mpirun_args: &["--oversubscribe"],
        iterations: env_number("CKPT_MPI_TEST_ITERATIONS", 20000),
        delay_us: 1000,
        progress: 250,
    })
}

/// MPICH, installed next to Open MPI (Debian's `*.mpich` names).
fn mpich() -> Option<Mpi> {
    if !have("mpirun.mpich", "--version") {
        return None;
    }
    Some(Mpi {
        name: "MPICH",
        mpirun: "mpirun.mpich".into(),
        mpicc: "mpicc.mpich".into(),
        mpif90: "mpif90.mpich".into(),
        mpirun_args: &[],
        iterations: 160,
        delay_us: 0,
        progress: 10,
    })
}

/// The tools for `dir` ("c" or "fortran"), or None with a note saying what is missing.
fn toolchain(mpi: Option<Mpi>, which: &str, dir: &str) -> Option<Mpi> {
    let Some(mpi) = mpi else {
        eprintln!(
            "skipped: {which} is not installed (apt-get install {})",
            match which {
                "MPICH" => "mpich libmpich-dev",
                _ => "openmpi-bin libopenmpi-dev",
            }
        );
        return None;
    };
    let compiler = if dir == "c" { &mpi.mpicc } else { &mpi.mpif90 };
    for tool in ["make", compiler.as_str()] {
        if !have(tool, "--version") {
            eprintln!("skipped: {tool} is not installed (apt-get install make gfortran ...)");
            return None;
        }
    }
    Some(mpi)
}

fn build(mpi: &Mpi, dir: &str, out: &Path) -> PathBuf {
    let o = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(root().join("examples").join(dir))
        .arg(format!("OUT={}", out.display()))
        .arg(format!("LIBDIR={}", lib_dir().display()))
        .arg(format!("MPICC={}", mpi.mpicc))
        .arg(format!("MPIF90={}", mpi.mpif90))
        .output()
        .expect("run make");
    assert!(
        o.status.success(),
        "building examples/{dir} with {} failed:\n{}{}",
        mpi.name,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out.join("heat_mpi")
}

type Lines = Arc<(Mutex<Vec<String>>, Condvar)>;

fn collect(stream: impl Read + Send + 'static, lines: Lines) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let (m, c) = &*lines;
            m.lock().unwrap().push(line);
            c.notify_all();
        }
    })
}

/// Starts mpirun as `cmd` says, its stdout and stderr collected line by line as they come.
fn spawn_collecting(cmd: &mut Command) -> (Child, Lines, Lines, Vec<std::thread::JoinHandle<()>>) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start mpirun");
    let (out, err): (Lines, Lines) = Default::default();
    let readers =
        vec![collect(child.stdout.take().unwrap(), out.clone()), collect(child.stderr.take().unwrap(), err.clone())];
    (child, out, err, readers)
}

/// One `mpirun -np 4` of an example, its output collected as it comes.
struct Run {
    child: Child,
    out: Lines,
    err: Lines,
    readers: Vec<std::thread::JoinHandle<()>>,
    pids: Vec<i32>,
    what: String,
}

impl Run {
    fn start(mpi: &Mpi, exe: &Path, work: &Path, args: &[u64], what: &str) -> Run {
        Run::start_np(mpi, exe, work, args, what, RANKS)
    }

    fn start_np(mpi: &Mpi, exe: &Path, work: &Path, args: &[u64], what: &str, np: usize) -> Run {
        Run::start_with(mpi, &[exe], work, args, what, np)
    }

    /// Every rank runs `wrapper exe ARGS` (a script that sets a rank's own environment).
    fn start_wrapped(mpi: &Mpi, wrapper: &Path, exe: &Path, work: &Path, args: &[u64], what: &str) -> Run {
        Run::start_with(mpi, &[wrapper, exe], work, args, what, RANKS)
    }

    fn start_with(mpi: &Mpi, program: &[&Path], work: &Path, args: &[u64], what: &str, np: usize) -> Run {
        let mut cmd = Command::new(&mpi.mpirun);
        cmd.args(mpi.mpirun_args).args(["-np", &np.to_string()]).args(program);
        cmd.args(args.iter().map(u64::to_string));
        clean_env(&mut cmd);
        cmd.env("CKPT_DIR", work.join("checkpoints"))
            .env("CKPT_LOG", work.join("ckpt.log"))
            .env("CKPT_SOCKET", "0")
            // Interrupted runs sleep in every iteration and restarts do not: another command line, which
            // outside Slurm is another run. The restarts name the run they continue, as a user would.
            .env("CKPT_RESUME_FROM", "heat_mpi")
            .env("HEAT_PROGRESS", mpi.progress.to_string())
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .current_dir(work);
        let (child, out, err, readers) = spawn_collecting(&mut cmd);
        Run { child, out, err, readers, pids: Vec::new(), what: what.to_string() }
    }

    fn output(&self) -> String {
        format!(
            "{}:\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.out.0.lock().unwrap().join("\n"),
            self.err.0.lock().unwrap().join("\n")
        )
    }

    /// Waits until `pred` finds what it looks for in stdout.
    fn wait_for<T>(&self, timeout: Duration, what: &str, pred: impl Fn(&[String]) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        let (m, c) = &*self.out;
        let mut lines = m.lock().unwrap();
        loop {
            if let Some(t) = pred(&lines) {
                return t;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(lines);
                panic!("timed out waiting for {what}\n{}", self.output());
            }
            lines = c.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Waits for rank 0's "heat_mpi: 4 ranks, pids P0 P1 P2 P3" line (printed once every rank's signal
    /// handlers are installed).
    fn wait_pids(&mut self) {
        let pids = self.wait_for(Duration::from_secs(60), "the ranks' pids", |lines| {
            let rest = lines.iter().find_map(|l| l.strip_prefix(&format!("heat_mpi: {RANKS} ranks, pids ")))?;
            let pids: Vec<i32> = rest.split_whitespace().map(|p| p.parse().unwrap()).collect();
            assert_eq!(pids.len(), RANKS, "{rest}");
            Some(pids)
        });
        self.pids = pids;
    }

    fn signal_ranks(&self, ranks: &[usize], sig: i32) {
        for &r in ranks {
            // SAFETY: kill(2) on a pid this test's mpirun started; no memory is involved.
            unsafe { libc::kill(self.pids[r], sig) };
        }
    }

    fn signal_mpirun(&self, sig: i32) {
        // SAFETY: as above, the mpirun this test spawned.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for mpirun to end (SIGKILLs everything after `timeout`).
    fn finish(mut self, timeout: Duration) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let out = self.output();
                self.kill_all();
                panic!("mpirun did not finish within {timeout:?}\n{out}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let out = self.out.0.lock().unwrap().clone();
        let text = self.output();
        (status, out, text)
    }

    fn kill_all(&mut self) {
        let all: Vec<usize> = (0..self.pids.len()).collect();
        self.signal_ranks(&all, libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_all();
        }
    }
}

/// The "done: ... crc32 X ..." line's checksum (lower case: Fortran prints hex in upper case).
fn checksum(lines: &[String]) -> Option<String> {
    let l = lines.iter().find(|l| l.starts_with("done:"))?;
    let i = l.find("crc32 ")?;
    Some(l[i + 6..].split(|c: char| c == ',' || c.is_whitespace()).next()?.to_ascii_lowercase())
}

fn number_after(line: &str, prefix: &str) -> Option<u64> {
    line.strip_prefix(prefix)?.trim().parse().ok()
}

/// The last "iteration i" progress line, once it is at least `at_least`.
fn progress(lines: &[String], at_least: u64) -> Option<u64> {
    lines.iter().rev().find_map(|l| number_after(l, "iteration ")).filter(|&i| i >= at_least)
}

fn checkpoints(lines: &[String]) -> Vec<u64> {
    lines.iter().filter_map(|l| number_after(l, "checkpoint at iteration ")).collect()
}

struct Example {
    mpi: Mpi,
    exe: PathBuf,
    n: u64,
    tmp: tempfile::TempDir,
}

impl Example {
    fn work(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn run_to_end(&self, work: &Path, what: &str) -> (Vec<String>, String) {
        let t = Instant::now();
        let run = Run::start(&self.mpi, &self.exe, work, &[self.n, self.mpi.iterations, 0], what);
        let (status, out, text) = run.finish(Duration::from_secs(300));
        assert!(status.success(), "{text}");
        eprintln!("{what}: {:.1} s", t.elapsed().as_secs_f64());
        (out, text)
    }

    /// A run that sleeps in every iteration, so that it can be interrupted.
    fn start_slow(&self, work: &Path, what: &str) -> Run {
        let args = [self.n, self.mpi.iterations, self.mpi.delay_us];
        let mut run = Run::start(&self.mpi, &self.exe, work, &args, what);
        run.wait_pids();
        run
    }

    fn restart_matches(&self, work: &Path, what: &str, resume_at: u64, reference: &str) {
        let (out, text) = self.run_to_end(work, what);
        assert!(
            out.iter().any(|l| number_after(l, "resumed at iteration ") == Some(resume_at)),
            "expected the restart to resume at iteration {resume_at}\n{text}"
        );
        assert_eq!(checksum(&out).as_deref(), Some(reference), "the restarted run's result differs\n{text}");
    }
}

fn newest_generation(checkpoints: &Path, base: &str) -> u64 {
    std::fs::read_dir(checkpoints.join(format!("{base}.parts")))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .expect("a generation of parts")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn damage(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.len() > 4200, "{} is unexpectedly small", path.display());
    bytes[4096 + 5] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

/// (g) `CKPT_PARTNER=1`, ranks 0-1 on node 0 and 2-3 on node 1: each rank's committed part is also kept in
/// the other node's cache. After a SIGUSR1 checkpoint node 1 dies (its ranks SIGKILLed, its cache
/// removed), and the checkpoint directory's files are lost too: ranks 2 and 3 get their parts back from
/// node 0 and every rank resumes at the SIGUSR1 step, bit for bit. Without the partner copies the same
/// loss leaves no step common to every rank: an error.
fn partner_copies(ex: &Example, dir: &str, reference: &str, progress_step: u64) {
    let t = Instant::now();
    let work = ex.work("partners");
    let wrapper = node_cache_wrapper(&work, &work.join("caches"), "export CKPT_PARTNER=1");
    let args = [ex.n, ex.mpi.iterations, ex.mpi.delay_us];
    let mut run = Run::start_wrapped(&ex.mpi, &wrapper, &ex.exe, &work, &args, &format!("{dir} (g) partners"));
    run.wait_pids();
    run.wait_for(Duration::from_secs(60), "some progress", |l| progress(l, progress_step));
    run.signal_mpirun(libc::SIGUSR1);
    let first = run.wait_for(Duration::from_secs(60), "the SIGUSR1 checkpoint", |l| checkpoints(l).first().copied());
    run.wait_for(Duration::from_secs(60), "more progress", |l| progress(l, first + progress_step));
    // Node 1 dies: its ranks are killed (mpirun then ends the job), and below its cache is gone.
    run.signal_ranks(&[2, 3], libc::SIGKILL);
    let (status, _, text) = run.finish(Duration::from_secs(120));
    assert!(!status.success(), "{text}");
    assert!(!text.contains("failed:"), "a partner transfer failed\n{text}");
    let (node0, node1) = (node_cache_dir(&work.join("caches/node0")), node_cache_dir(&work.join("caches/node1")));
    let cps = work.join("checkpoints");
    // Each node keeps the other node's parts of the step (and, with CKPT_CACHE_KEEP=1, only that one).
    let kept_generations = |node: &Path| -> Vec<String> {
        let kept = node.join("heat_mpi.ckpt.partner");
        std::fs::read_dir(&kept).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    };
    let gens = kept_generations(&node0);
    assert_eq!(gens.len(), 1, "{gens:?}");
    let g: u64 = gens[0].parse().unwrap();
    for (node, other, ranks) in [(&node0, &node1, [2, 3]), (&node1, &node0, [0, 1])] {
        assert_eq!(kept_generations(node), [g.to_string()], "{}", node.display());
        for r in ranks {
            let copy = node.join(format!("heat_mpi.ckpt.partner/{g}/rank{r}.ckpt"));
            let own = other.join(format!("heat_mpi.ckpt.parts/{g}/rank{r}.ckpt"));
            assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&own).unwrap(), "{}", copy.display());
        }
    }
    // Node 1 is lost, and so is what the checkpoint directory holds.
    std::fs::remove_dir_all(work.join("caches/node1")).unwrap();
    let aside = work.join("shared-aside");
    std::fs::create_dir_all(&aside).unwrap();
    for e in std::fs::read_dir(&cps).unwrap().flatten() {
        std::fs::rename(e.path(), aside.join(e.file_name())).unwrap();
    }
    let restart = [ex.n, ex.mpi.iterations, 0];
    // Without the partner copies: no step every rank can read, and never a silent fresh start.
    let partners = node0.join("heat_mpi.ckpt.partner");
    let partners_aside = work.join("partners-aside");
    std::fs::rename(&partners, &partners_aside).unwrap();
    let what = format!("{dir} (g) node 1 lost, no partner copies");
    let (status, out, text) =
        Run::start_wrapped(&ex.mpi, &wrapper, &ex.exe, &work, &restart, &what).finish(Duration::from_secs(120));
    assert!(!status.success(), "{text}");
    assert!(!out.iter().any(|l| l.starts_with("starting fresh") || l.starts_with("done")), "{text}");
    std::fs::rename(&partners_aside, &partners).unwrap();
    // With them: ranks 2 and 3 get their parts back from node 0, and the run ends as the reference.
    let what = format!("{dir} (g) node 1 lost, restart from the partners");
    let (status, out, text) =
        Run::start_wrapped(&ex.mpi, &wrapper, &ex.exe, &work, &restart, &what).finish(Duration::from_secs(300));
    assert!(status.success(), "{text}");
    for r in [2, 3] {
        assert!(
            text.contains(&format!("ckpt: rank {r}: its part of generation {g} restored from the copy on rank ")),
            "rank {r}\n{text}"
        );
    }
    assert!(!text.contains("rank 0: its part") && !text.contains("rank 1: its part"), "{text}");
    assert!(out.iter().any(|l| number_after(l, "resumed at iteration ") == Some(first)), "{text}");
    assert_eq!(checksum(&out).as_deref(), Some(reference), "{text}");
    eprintln!("{dir} (g) partner copies: {:.1} s", t.elapsed().as_secs_f64());
}

fn scenarios(mpi: Mpi, lang: &str) {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(&mpi, lang, tmp.path());
    let dir = format!("{lang} ({})", mpi.name);
    eprintln!("{dir}: built in {:.1} s", started.elapsed().as_secs_f64());
    let progress_step = mpi.progress;
    let ex = Example { mpi, exe, n: env_number("CKPT_MPI_TEST_N", 64), tmp };

    // (a) uninterrupted: the reference
    let (out, text) = ex.run_to_end(&ex.work("reference"), &format!("{dir} (a) reference"));
    let reference = checksum(&out).unwrap_or_else(|| panic!("no result line\n{text}"));
    assert!(out.iter().any(|l| l.starts_with("starting fresh")), "{text}");

    // (b) SIGUSR1 through mpirun, then SIGTERM (twice) to every rank
    let t = Instant::now();
    let work = ex.work("interrupted");
    let run = ex.start_slow(&work, &format!("{dir} (b) interrupted"));
    run.wait_for(Duration::from_secs(60), "some progress", |l| progress(l, progress_step));
    run.signal_mpirun(libc::SIGUSR1);
    let first = run.wait_for(Duration::from_secs(60), "the SIGUSR1 checkpoint", |l| checkpoints(l).first().copied());
    run.wait_for(Duration::from_secs(60), "more progress", |l| progress(l, first + progress_step));
    run.signal_ranks(&[0, 1, 2, 3], libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(20));
    run.signal_ranks(&[0, 1, 2, 3], libc::SIGTERM);
    let (status, out, text) = run.finish(Duration::from_secs(60));
    assert!(status.success(), "the ranks must exit with status 0 after the SIGTERM checkpoint\n{text}");
    let stops: Vec<u64> = out
        .iter()
        .find_map(|l| l.split_once("; the ranks stopped at "))
        .map(|(_, list)| list.split_whitespace().map(|i| i.parse().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(stops.len(), RANKS, "every rank reports its stop\n{text}");
    let stop = stops[0];
    assert!(stops.iter().all(|&s| s == stop), "the ranks stopped at different steps: {stops:?}\n{text}");
    assert!(stop > first && checkpoints(&out).contains(&stop), "{text}");
    assert!(stop < ex.mpi.iterations, "the run finished before SIGTERM: raise CKPT_MPI_TEST_ITERATIONS\n{text}");
    eprintln!("{dir} (b) interrupted at {first} and {stop}: {:.1} s", t.elapsed().as_secs_f64());
    // (e) the same step restarted on 2 and on 8 ranks (C and Fortran)
    restarts_on_other_numbers_of_ranks(&ex, &dir, &work, stop, &reference);
    ex.restart_matches(&work, &format!("{dir} (b) restart"), stop, &reference);

    // (f) a node-local cache per simulated node (ranks 0-1, 2-3): SIGTERM's step is copied to the checkpoint
    // directory before the ranks exit; with both caches gone the restart resumes at that step
    {
        let work = ex.work("cached");
        let wrapper = node_cache_wrapper(&work, &work.join("caches"), "");
        let args = [ex.n, ex.mpi.iterations, ex.mpi.delay_us];
        let mut run = Run::start_wrapped(&ex.mpi, &wrapper, &ex.exe, &work, &args, &format!("{dir} (f) cached"));
        run.wait_pids();
        run.wait_for(Duration::from_secs(60), "some progress", |l| progress(l, progress_step));
        run.signal_ranks(&[0, 1, 2, 3], libc::SIGTERM);
        let (status, out, text) = run.finish(Duration::from_secs(120));
        assert!(status.success(), "{text}");
        let stop = *checkpoints(&out).last().unwrap_or_else(|| panic!("no checkpoint\n{text}"));
        assert!(work.join("caches/node0").is_dir() && work.join("caches/node1").is_dir(), "{text}");
        // Requeued on the same nodes: every rank reads its part from its node's cache (each node's cache
        // holds the step's manifest: the helpers record it on every node). Shown by hiding the checkpoint
        // directory's copy of the step: the ranks still agree on it.
        let cps = work.join("checkpoints");
        let g = newest_generation(&cps, "heat_mpi.ckpt");
        let aside = work.join("aside");
        std::fs::create_dir_all(&aside).unwrap();
        for name in ["heat_mpi.ckpt".to_string(), format!("heat_mpi.ckpt.{g}")] {
            std::fs::rename(cps.join(&name), aside.join(&name)).unwrap();
        }
        let args = [ex.n, ex.mpi.iterations, 0];
        let what = format!("{dir} (f) restart from the caches");
        let (status, out, text) =
            Run::start_wrapped(&ex.mpi, &wrapper, &ex.exe, &work, &args, &what).finish(Duration::from_secs(300));
        assert!(status.success(), "{text}");
        assert!(out.iter().any(|l| number_after(l, "resumed at iteration ") == Some(stop)), "{text}");
        assert_eq!(checksum(&out).as_deref(), Some(reference.as_str()), "{text}");
        for name in ["heat_mpi.ckpt".to_string(), format!("heat_mpi.ckpt.{g}")] {
            std::fs::rename(aside.join(&name), cps.join(&name)).unwrap();
        }
        std::fs::remove_dir_all(work.join("caches")).unwrap();
        ex.restart_matches(&work, &format!("{dir} (f) restart without the caches"), stop, &reference);
    }

    // (g) partner copies: a node lost with the checkpoint directory's copy, restored from the partners
    partner_copies(&ex, &dir, &reference, progress_step);

    // (h) three SIGTERM/restart cycles in a row with a node-local cache per simulated node
    restart_cycles_with_caches(&ex, &dir, &reference);

    // (d) rank 2 cannot read the newest step: everyone falls back to the previous one together
    let cps = work.join("checkpoints");
    let newest = newest_generation(&cps, "heat_mpi.ckpt");
    damage(&cps.join(format!("heat_mpi.ckpt.parts/{newest}/rank2.ckpt")));
    ex.restart_matches(&work, &format!("{dir} (d) fallback"), first, &reference);
    // ... and when rank 1 cannot read that one either, no step is readable everywhere: an error
    damage(&cps.join(format!("heat_mpi.ckpt.parts/{}/rank1.ckpt", newest - 1)));
    let args = [ex.n, ex.mpi.iterations, 0];
    let run = Run::start(&ex.mpi, &ex.exe, &work, &args, &format!("{dir} (d) nothing common"));
    let (status, out, text) = run.finish(Duration::from_secs(120));
    assert!(!status.success(), "a restart with no step readable on every rank must fail\n{text}");
    assert!(!out.iter().any(|l| l.starts_with("starting fresh") || l.starts_with("done")), "{text}");
    assert!(text.contains("no valid checkpoint"), "{text}");

    // (c) SIGUSR1 to one rank only, SIGKILL to all after the checkpoint
    let t = Instant::now();
    let work = ex.work("killed");
    let run = ex.start_slow(&work, &format!("{dir} (c) killed"));
    run.wait_for(Duration::from_secs(60), "some progress", |l| progress(l, progress_step));
    run.signal_ranks(&[2], libc::SIGUSR1);
    let at = run.wait_for(Duration::from_secs(60), "the checkpoint", |l| checkpoints(l).first().copied());
    run.signal_ranks(&[0, 1, 2, 3], libc::SIGKILL);
    let (status, _, text) = run.finish(Duration::from_secs(60));
    assert!(!status.success(), "{text}");
    eprintln!("{dir} (c) killed after the checkpoint at {at}: {:.1} s", t.elapsed().as_secs_f64());
    ex.restart_matches(&work, &format!("{dir} (c) restart"), at, &reference);
    eprintln!("{dir}: all scenarios in {:.1} s", started.elapsed().as_secs_f64());
}

/// (e): the step of iteration `stop` that 4 ranks wrote in `work` restarted on 2 and on 8 ranks (each in
/// a copy): the example reads the old ranks' parts it needs (`ckpt_restart_step`, `ckpt_restart_part`, in
/// C and through module ckpt in Fortran) and ends bit for bit as the uninterrupted 4-rank run.
fn restarts_on_other_numbers_of_ranks(ex: &Example, dir: &str, work: &Path, stop: u64, reference: &str) {
    for np in [2usize, 8] {
        let t = Instant::now();
        let copy = ex.work(&format!("reshaped{np}"));
        copy_tree(&work.join("checkpoints"), &copy.join("checkpoints"));
        let what = format!("{dir} (e) restart on {np} ranks");
        let run = Run::start_np(&ex.mpi, &ex.exe, &copy, &[ex.n, ex.mpi.iterations, 0], &what, np);
        let (status, out, text) = run.finish(Duration::from_secs(300));
        assert!(status.success(), "{text}");
        assert!(out.iter().any(|l| l == &format!("redistributed a step of {RANKS} ranks over {np} ranks")), "{text}");
        assert!(out.iter().any(|l| number_after(l, "resumed at iteration ") == Some(stop)), "{text}");
        assert_eq!(checksum(&out).as_deref(), Some(reference), "{np} ranks: the result differs\n{text}");
        eprintln!("{what}: {:.1} s", t.elapsed().as_secs_f64());
    }
}

/// A script that runs its arguments as simulated node `rank / 2` (two ranks per node):
/// `CKPT_CACHE_DIR=<caches>/node<n>`, `CKPT_NODE_ID=node<n>`, and `extra` (more shell lines).
fn node_cache_wrapper(work: &Path, caches: &Path, extra: &str) -> PathBuf {
    let wrapper = work.join("on-node.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nrank=${{OMPI_COMM_WORLD_RANK:-${{PMI_RANK:-0}}}}\nexport CKPT_CACHE_DIR={}/node$((rank / 2))\n\
             export CKPT_NODE_ID=node$((rank / 2))\n{extra}\nexec \"$@\"\n",
            caches.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    wrapper
}

/// The one cache directory in a node's cache root (`<checkpoint directory's name>-<hash>`).
fn node_cache_dir(root: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// (h) Three SIGTERM/restart cycles in a row with a node-local cache per simulated node (ranks 0-1, 2-3),
/// as a job requeued on the same nodes lives them: each run is stopped by SIGTERM to every rank after some
/// progress, its step cached on both nodes (each node's cache holds the step's manifest and its ranks'
/// parts), copied to the checkpoint directory, and logged as cached; each restart resumes at the last
/// run's step, never an older one, with the step numbers going on. The last restart, the checkpoint
/// directory's copy of the newest step hidden, reads every rank's part from its node's cache and ends bit
/// for bit as the uninterrupted run.
fn restart_cycles_with_caches(ex: &Example, dir: &str, reference: &str) {
    let t = Instant::now();
    let work = ex.work("cycles");
    let caches = work.join("caches");
    let wrapper = node_cache_wrapper(&work, &caches, "");
    let cps = work.join("checkpoints");
    let (mut stop, mut newest) = (0u64, 0u64);
    for cycle in 1..=3 {
        let what = format!("{dir} (h) run {cycle}");
        let args = [ex.n, ex.mpi.iterations, ex.mpi.delay_us];
        let mut run = Run::start_wrapped(&ex.mpi, &wrapper, &ex.exe, &work, &args, &what);
        run.wait_pids();
        if cycle > 1 {
            run.wait_for(Duration::from_secs(60), "the restart", |l| {
                l.iter().find_map(|l| number_after(l, "resumed at iteration ")).map(|at| {
                    assert_eq!(at, stop, "{what}: resumed elsewhere than the last run's step");
                })
            });
        }
        run.wait_for(Duration::from_secs(60), "some progress", |l| progress(l, stop + ex.mpi.progress));
        run.signal_ranks(&[0, 1, 2, 3], libc::SIGTERM);
        let (status, out, text) = run.finish(Duration::from_secs(120));
        assert!(status.success(), "{text}");
        assert!(!out.iter().any(|l| l.starts_with("done")), "the run finished before SIGTERM\n{text}");
        let at = *checkpoints(&out).last().unwrap_or_else(|| panic!("no checkpoint\n{text}"));
        assert!(at > stop, "{what}: checkpoint at {at} after the restart at {stop}\n{text}");
        // Every rank left at one iteration, once the step was durable (at it or a few iterations later).
        let stops: Vec<u64> = out
            .iter()
            .find_map(|l| l.split_once("; the ranks stopped at "))
            .map(|(_, list)| list.split_whitespace().map(|i| i.parse().unwrap()).collect())
            .unwrap_or_default();
        assert!(stops.len() == RANKS && stops.iter().all(|&s| s == stops[0] && s >= at), "{what}\n{text}");
        stop = at;
        let g = newest_generation(&cps, "heat_mpi.ckpt");
        assert!(g > newest, "{what}: generation {g} after {newest}");
        newest = g;
        assert!(cps.join(format!("heat_mpi.ckpt.{g}")).is_file(), "{what}: the step is durable\n{text}");
        for node in 0..2 {
            let cache = node_cache_dir(&caches.join(format!("node{node}")));
            assert!(cache.join(format!("heat_mpi.ckpt.{g}")).is_file(), "{what}: node {node}'s cache\n{text}");
            for r in [2 * node, 2 * node + 1] {
                let part = cache.join(format!("heat_mpi.ckpt.parts/{g}/rank{r}.ckpt"));
                assert!(part.is_file(), "{what}: {}", part.display());
            }
        }
    }
    let log = std::fs::read_to_string(work.join("ckpt.log")).unwrap();
    let saved: Vec<&str> = log.lines().filter(|l| l.contains("\"event\":\"checkpoint\"")).collect();
    assert!(saved.len() >= 3 * RANKS, "every rank logs its checkpoints: {saved:#?}");
    assert!(saved.iter().all(|l| l.contains("\"level\":\"cache\"")), "committed to the caches: {saved:#?}");
    assert!(log.lines().any(|l| l.contains("\"event\":\"flushed\"")), "and copied");

    // Requeued on the same nodes once more, the checkpoint directory's copy of the newest step hidden.
    let aside = work.join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    for name in ["heat_mpi.ckpt".to_string(), format!("heat_mpi.ckpt.{newest}")] {
        std::fs::rename(cps.join(&name), aside.join(&name)).unwrap();
    }
    let what = format!("{dir} (h) last restart, from the caches");
    let args = [ex.n, ex.mpi.iterations, 0];
    let run = Run::start_wrapped(&ex.mpi, &wrapper, &ex.exe, &work, &args, &what);
    let (status, out, text) = run.finish(Duration::from_secs(300));
    assert!(status.success(), "{text}");
    assert!(out.iter().any(|l| number_after(l, "resumed at iteration ") == Some(stop)), "{text}");
    assert_eq!(checksum(&out).as_deref(), Some(reference), "{what}: the result differs\n{text}");
    eprintln!("{dir} (h) three restart cycles with caches: {:.1} s", t.elapsed().as_secs_f64());
}

/// For MPICH, where the Fortran example is otherwise built only: (a) the uninterrupted run, a SIGTERM
/// checkpoint of 4 ranks, and (e) its restart on 2 and on 8 ranks.
fn fortran_reshaped(mpi: Mpi) {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(&mpi, "fortran", tmp.path());
    let dir = format!("fortran ({})", mpi.name);
    let progress_step = mpi.progress;
    let ex = Example { mpi, exe, n: env_number("CKPT_MPI_TEST_N", 64), tmp };
    let (out, text) = ex.run_to_end(&ex.work("reference"), &format!("{dir} (a) reference"));
    let reference = checksum(&out).unwrap_or_else(|| panic!("no result line\n{text}"));
    let work = ex.work("interrupted");
    let run = ex.start_slow(&work, &format!("{dir} SIGTERM"));
    run.wait_for(Duration::from_secs(60), "some progress", |l| progress(l, progress_step));
    run.signal_ranks(&[0, 1, 2, 3], libc::SIGTERM);
    let (status, out, text) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{text}");
    let stop = *checkpoints(&out).last().unwrap_or_else(|| panic!("no checkpoint\n{text}"));
    assert!(stop < ex.mpi.iterations, "the run finished before SIGTERM\n{text}");
    restarts_on_other_numbers_of_ranks(&ex, &dir, &work, stop, &reference);
}

#[test]
fn c_heat_mpi_restarts_bit_for_bit_open_mpi() {
    if let Some(mpi) = toolchain(open_mpi(), "Open MPI", "c") {
        scenarios(mpi, "c");
    }
}

#[test]
fn fortran_heat_mpi_restarts_bit_for_bit_open_mpi() {
    if let Some(mpi) = toolchain(open_mpi(), "Open MPI", "fortran") {
        scenarios(mpi, "fortran");
    }
}

#[test]
fn c_heat_mpi_restarts_bit_for_bit_mpich() {
    if let Some(mpi) = toolchain(mpich(), "MPICH", "c") {
        scenarios(mpi, "c");
    }
}

/// The Fortran example and module ckpt_mpi build against MPICH's mpi_f08 too (running them there is
/// left out: MPICH is slow when oversubscribed, and the C run covers the library's behaviour with MPICH).
#[test]
fn fortran_heat_mpi_builds_with_mpich() {
    if let Some(mpi) = toolchain(mpich(), "MPICH", "fortran") {
        let tmp = tempfile::tempdir().unwrap();
        assert!(build(&mpi, "fortran", tmp.path()).exists());
    }
}

/// The Fortran example restarted on 2 and on 8 ranks from a step of 4 with MPICH too (scenario (e)).
#[test]
fn fortran_heat_mpi_restarts_on_other_numbers_of_ranks_mpich() {
    if let Some(mpi) = toolchain(mpich(), "MPICH", "fortran") {
        fortran_reshaped(mpi);
    }
}

/// `tests/mpi/test_mpi.c`: every collective of ckpt_mpi.h, success and error paths, with the ranks in
/// different states (a signal or a bad setting on one rank, regions of different sizes, a wrong size or a
/// damaged part on one rank), with 4 ranks and with 1, for each MPI installed.
#[test]
fn collective_calls_with_ranks_in_different_states() {
    let mut ran = 0;
    for mpi in [open_mpi(), mpich()].into_iter().flatten() {
        if !have(&mpi.mpicc, "--version") {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("test_mpi");
        build_c(&mpi.mpicc, &["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"], "ckpt-ffi/tests/mpi/test_mpi.c", &exe);
        for np in [RANKS, 1] {
            let work = tmp.path().join(format!("np{np}"));
            std::fs::create_dir_all(&work).unwrap();
            let mut cmd = Command::new(&mpi.mpirun);
            cmd.args(mpi.mpirun_args).args(["-np", &np.to_string()]).arg(&exe).arg(&work);
            clean_env(&mut cmd);
            let o = cmd
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
                .stdin(Stdio::null())
                .output()
                .expect("mpirun");
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success() && out.contains(&format!("all MPI checks passed on {np} ranks")),
                "test_mpi with {} and {np} ranks failed ({:?}):\n{out}\n{}",
                mpi.name,
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        ran += 1;
    }
    if ran == 0 {
        eprintln!("skipped: no MPI installed (apt-get install openmpi-bin libopenmpi-dev)");
    }
}

/// ckpt_mpi.h compiles warning-free as C99, C11 and C++ with strict flags, with every MPI installed (it is
/// header-only: every user compiles it).
#[test]
fn ckpt_mpi_h_compiles_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("use.c");
    std::fs::write(
        &src,
        "#include \"ckpt_mpi.h\"\nint main(int argc, char **argv) {\n  MPI_Init(&argc, &argv);\n  \
         int32_t f = 0; int64_t s = 0; size_t n = 0;\n  int32_t rc = ckpt_mpi_init(MPI_COMM_WORLD, \"x\");\n  \
         rc |= ckpt_mpi_have_restart(MPI_COMM_WORLD, &f, &s) | ckpt_mpi_restart_size(MPI_COMM_WORLD, 0, &n);\n  \
         rc |= ckpt_mpi_restart(MPI_COMM_WORLD, &f, &s) | ckpt_mpi_poll(MPI_COMM_WORLD, &f, NULL);\n  \
         if (ckpt_mpi_should_checkpoint(MPI_COMM_WORLD) == 1) rc |= ckpt_mpi_checkpoint(MPI_COMM_WORLD, 1);\n  \
         rc |= ckpt_mpi_should_exit(MPI_COMM_WORLD) | ckpt_mpi_finalize(MPI_COMM_WORLD);\n  \
         MPI_Finalize();\n  return rc != 0;\n}\n",
    )
    .unwrap();
    let cpp = tmp.path().join("use.cpp");
    std::fs::copy(&src, &cpp).unwrap();
    let include = root().join("include");
    let mut compiled = 0;
    for mpi in [open_mpi(), mpich()].into_iter().flatten() {
        if !have(&mpi.mpicc, "--version") {
            continue;
        }
        let strict = ["-Wall", "-Wextra", "-Wshadow", "-Wconversion", "-Werror", "-pedantic", "-c", "-o", "/dev/null"];
        for std in ["-std=c99", "-std=c11"] {
            let o = Command::new(&mpi.mpicc).arg(std).args(strict).arg("-I").arg(&include).arg(&src).output();
            let o = o.expect("mpicc");
            assert!(o.status.success(), "{} {std}: {}", mpi.mpicc, String::from_utf8_lossy(&o.stderr));
        }
        let mpicxx = mpi.mpicc.replace("mpicc", "mpicxx");
        if have(&mpicxx, "--version") {
            // *_SKIP_MPICXX: the MPIs' deprecated C++ bindings warn on their own
            let o = Command::new(&mpicxx)
                .args(["-DOMPI_SKIP_MPICXX", "-DMPICH_SKIP_MPICXX", "-Wall", "-Wextra", "-Wshadow", "-Werror", "-c"])
                .args(["-o", "/dev/null", "-I"])
                .arg(&include)
                .arg(&cpp)
                .output()
                .expect("mpicxx");
            assert!(o.status.success(), "{mpicxx}: {}", String::from_utf8_lossy(&o.stderr));
        }
        compiled += 1;
    }
    if compiled == 0 {
        eprintln!("skipped: no MPI C compiler installed (apt-get install libopenmpi-dev)");
    }
}

// ---------------------------------------------------------------------------------------------------------
// The kill loop: the whole 4-rank job SIGKILLed at random moments, restarted until it completes.

/// Every process descended from `root` (mpirun's daemons and ranks), from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
        let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)) else {
            continue;
        };
        if let Ok(ppid) = ppid.parse::<i32>() {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether `pid` is gone (or a zombie: it can no longer write anything).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z"),
    }
}

/// One mpirun of the kill-loop program, in its own process group, its output collected as it comes.
struct Job {
    child: Child,
    out: Lines,
    err: Lines,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Job {
    fn start(mpi: &Mpi, exe: &Path, dir: &Path, iterations: u64, delay_us: u64, scratch: &Path) -> Job {
        let mut cmd = Command::new(&mpi.mpirun);
        cmd.args(mpi.mpirun_args).args(["-np", &RANKS.to_string()]).arg(exe).arg(dir);
        cmd.arg(iterations.to_string()).arg(delay_us.to_string());
        clean_env(&mut cmd);
        // Open MPI's session directories and shared-memory segments, which a killed job leaves behind, go
        // to `scratch` (removed with the test) rather than /tmp and /dev/shm.
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("TMPDIR", scratch)
            .env("OMPI_MCA_btl_vader_backing_directory", scratch)
            .env("OMPI_MCA_shmem", "mmap") // the posix component's probe leaves /dev/shm/open_mpi.* when killed
            .process_group(0);
        let (child, out, err, readers) = spawn_collecting(&mut cmd);
        Job { child, out, err, readers }
    }

    /// Waits up to `timeout` for a stdout line starting with `prefix`; false if the job ended first.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, c) = &*self.out;
        let mut lines = m.lock().unwrap();
        loop {
            if lines.iter().any(|l| l.starts_with(prefix)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            lines = c.wait_timeout(lines, (deadline - now).min(Duration::from_millis(50))).unwrap().0;
        }
    }

    /// SIGKILLs mpirun, its process group and every descendant, as close to at once as possible, and waits
    /// until none of them can run any more. Returns whether the job was still running.
    fn kill(&mut self) -> bool {
        let pid = self.child.id() as i32;
        let running = matches!(self.child.try_wait(), Ok(None));
        let procs = descendants(pid);
        // SAFETY: kill(2) on this test's mpirun, its process group and its descendants; no memory involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            for &p in &procs {
                libc::kill(p, libc::SIGKILL);
            }
            libc::kill(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !procs.iter().all(|&p| gone(p)) {
            assert!(Instant::now() < deadline, "processes {procs:?} survived SIGKILL");
            std::thread::sleep(Duration::from_millis(5));
        }
        running
    }

    fn finish(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        let status = self.child.wait().unwrap();
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let out = self.out.0.lock().unwrap().clone();
        let err = self.err.0.lock().unwrap().clone();
        (status, out, err)
    }
}

/// Any temporary file (a save in progress) in `dir` or its parts directories.
fn has_tmp(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.contains(".tmp.") || (e.path().is_dir() && has_tmp(&e.path()))
    })
}

/// The newest generation with a manifest and the newest with a parts directory.
fn newest_manifest_and_parts(dir: &Path, base: &str) -> (u64, u64) {
    let gens = |d: &Path, prefix: &str| -> u64 {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix)?.parse::<u64>().ok())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    (gens(dir, &format!("{base}.")), gens(&dir.join(format!("{base}.parts")), ""))
}

fn resumed(lines: &[String]) -> Option<u64> {
    lines.iter().find_map(|l| number_after(l, "resumed "))
}

/// The last step any rank reported durable ("durable <rank> <step>"; a line cut by the kill is ignored).
fn last_durable(lines: &[String]) -> Option<u64> {
    lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                ["durable", r, s] if r.parse::<usize>().is_ok_and(|r| r < RANKS) => s.parse().ok(),
                _ => None,
            }
        })
        .max()
}

fn kill_loop(mpi: Mpi) {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let scratch_root = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { tmp.path() };
    let scratch = tempfile::Builder::new().prefix("ckpt-mpi-kill").tempdir_in(scratch_root).unwrap();
    let exe = tmp.path().join("kill_loop_mpi");
    let flags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"];
    build_c(&mpi.mpicc, &flags, "ckpt-ffi/tests/mpi/kill_loop_mpi.c", &exe);

    let iterations = env_number("CKPT_MPI_KILL_STEPS", 200);
    let delay_us = 2000;
    let kills = env_number("CKPT_MPI_KILL_ITERATIONS", 12);
    let mut rng = Rng(env_number("CKPT_MPI_KILL_SEED", 0x4b11_1e55_5eed) | 1);

    // the uninterrupted run
    let t = Instant::now();
    let reference_dir = tmp.path().join("reference");
    let mut job = Job::start(&mpi, &exe, &reference_dir, iterations, delay_us, scratch.path());
    assert!(job.wait_line("resumed ", Duration::from_secs(120)), "the reference run did not start");
    let loop_start = Instant::now();
    let (status, out, err) = job.finish();
    let loop_ms = loop_start.elapsed().as_millis() as u64;
    assert!(status.success(), "reference run: {status:?}\n{}\n{}", out.join("\n"), err.join("\n"));
    let reference = out.iter().find(|l| l.starts_with("done ")).cloned().expect("a result line");
    assert_eq!(resumed(&out), Some(0), "{}", out.join("\n"));
    assert_eq!(last_durable(&out), Some(iterations - iterations % 5), "{}", out.join("\n"));
    eprintln!(
        "kill loop: the uninterrupted run takes {} ms ({loop_ms} ms after the start): {reference}",
        t.elapsed().as_millis()
    );

    let (mut done_kills, mut rounds, mut completed, mut restarts) = (0u64, 1u64, 0u64, 0u64);
    let (mut in_start, mut mid_tmp, mut mid_step) = (0u64, 0u64, 0u64);
    let mut dir = tmp.path().join("round1");
    let mut durable = 0u64;
    let mut resumed_at: Vec<u64> = Vec::new();
    loop {
        let kill_now = done_kills < kills;
        let mut job = Job::start(&mpi, &exe, &dir, iterations, delay_us, scratch.path());
        let mut killed = false;
        if kill_now {
            if rng.below(5) == 0 {
                // while mpirun starts the ranks, or while they agree on a step and restore it
                std::thread::sleep(Duration::from_millis(rng.below(1500)));
            } else {
                job.wait_line("resumed ", Duration::from_secs(120));
                // while computing or saving: a moment of a whole run's loop (so a restart from a later
                // step is killed less often before it completes)
                std::thread::sleep(Duration::from_millis(rng.below(loop_ms.clamp(100, 10_000))));
            }
            killed = job.kill();
        }
        let (status, out, err) = job.finish();
        let text = || format!("round {rounds}: {status:?}\nstdout:\n{}\nstderr:\n{}", out.join("\n"), err.join("\n"));
        assert!(!err.iter().any(|l| l.contains("kill_loop_mpi:")), "a rank failed\n{}", text());
        if let Some(at) = resumed(&out) {
            assert!(at >= durable, "resumed at step {at}, but step {durable} was reported durable\n{}", text());
            resumed_at.push(at);
            restarts += 1;
        }
        durable = durable.max(last_durable(&out).unwrap_or(0));
        if killed {
            done_kills += 1;
            if done_kills % 100 == 0 {
                eprintln!(
                    "kill loop: {done_kills} kills in {:.0} s, {rounds} rounds, {in_start}/{mid_tmp}/{mid_step} while \
                     starting/with a temporary file/with an uncommitted step",
                    started.elapsed().as_secs_f64()
                );
            }
            if resumed(&out).is_none() {
                in_start += 1;
            }
            if has_tmp(&dir) {
                mid_tmp += 1;
            }
            let (manifest, parts) = newest_manifest_and_parts(&dir, "killmpi.ckpt");
            if parts > manifest {
                mid_step += 1; // parts of a step written, its manifest not (yet)
            }
            continue;
        }
        // not killed (the kills are done, or it completed before the kill landed): it must have completed
        assert!(status.success(), "an unkilled run failed\n{}", text());
        let done = out.iter().find(|l| l.starts_with("done ")).unwrap_or_else(|| panic!("no result\n{}", text()));
        assert_eq!(done, &reference, "the completed run differs from the uninterrupted one\n{}", text());
        assert!(resumed_at.is_sorted(), "a restart went back to an older step: {resumed_at:?}");
        completed += 1;
        if done_kills >= kills {
            break;
        }
        rounds += 1;
        dir = tmp.path().join(format!("round{rounds}"));
        durable = 0;
        resumed_at.clear();
    }
    eprintln!(
        "kill loop: {done_kills} SIGKILLs of the whole {RANKS}-rank job in {:.0} s over {rounds} rounds \
         ({completed} completed runs); {in_start} while starting or restoring, {mid_tmp} with a temporary file \
         present, {mid_step} with parts of an uncommitted step; {restarts} runs got as far as the restore, each \
         at or after the last durable step; every completed run identical to the uninterrupted one",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn mpi_job_survives_random_sigkills_open_mpi() {
    if let Some(mpi) = toolchain(open_mpi(), "Open MPI", "c") {
        kill_loop(mpi);
    }
}
