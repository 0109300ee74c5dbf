//! Repeated checkpoint/kill/restart cycles, as DMTCP's test suite runs them by default: three in a row.
//!
//! Every image after the first is written by a restarted process, whose memory the restorer partly mapped
//! from the previous image, and every restart after the first restores such an image. The cases:
//!
//! * small programs, whose read-only data and RELRO page share a page of the file (bc, gzip, xz, mawk,
//!   `stdbuf -oL`, a Python whose executable is a small stub linked to libpython, as pyenv builds it):
//!   an image written after a restart must record their file regions as file regions, and the layout check
//!   must accept one file offset mapped at two addresses;
//! * a program with 8 MiB of state (images written with direct I/O): the first checkpoint after a restart
//!   must not inherit the writer's own state from the image, and a TERM after a restart must checkpoint.
//!
//! Every program runs as batch scripts run them, `> out 2>&1`, and its output is compared byte for byte
//! with an uninterrupted run. Seeds are printed (CKPT_SHIM_SEED replays).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CYCLES: usize = 3;

/// Two uninterrupted runs (they must agree); the output and the shorter duration.
fn reference(argv: &[String]) -> (Vec<u8>, Duration) {
    let mut outs = Vec::new();
    let mut best = Duration::MAX;
    for _ in 0..2 {
        let t = Instant::now();
        let o = Command::new(&argv[0]).args(&argv[1..]).env("LC_ALL", "C").output().expect("run reference");
        best = best.min(t.elapsed());
        assert!(o.status.success(), "{argv:?}: reference run failed: {o:?}");
        // The runs under the shim write stdout and stderr to one file (`> out 2>&1`): the oracle is stdout
        // alone, so the program must not write to stderr.
        assert!(
            o.stderr.is_empty(),
            "{argv:?}: the reference run wrote to stderr: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        outs.push(o.stdout);
    }
    assert!(outs[0] == outs[1], "{argv:?}: two uninterrupted runs differ: not a usable oracle");
    assert!(!outs[0].is_empty(), "{argv:?}: no output");
    (outs.swap_remove(0), best)
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn append(path: &Path) -> Stdio {
    Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap())
}

/// Waits until the log has `count` `restored` events (the restored program's handlers are in place).
fn wait_restored(dir: &Path, count: usize, child: &mut Child) -> bool {
    wait_for_events(dir, "restored", count, child, Duration::from_secs(60))
}

/// One run through `CYCLES` cycles; Err when the program finished before the last checkpoint.
fn run_cycles(
    name: &str,
    argv: &[String],
    signal: i32,
    expected: &[u8],
    dur: Duration,
    rng: &mut Rng,
) -> Result<(), String> {
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = dir.join("img");
    let out = dir.join("out.txt");
    // As batch scripts run programs: `> out 2>&1`, stdout and stderr sharing one open file description
    // (restarts must restore it shared, cut back to its checkpoint-time size); what `ckpt restart` says
    // before the program resumes goes to a file of its own.
    let stdout = std::fs::File::create(&out).unwrap();
    let stderr = stdout.try_clone().unwrap();
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", img.to_str().unwrap(), "--"])
        .args(argv)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let diagnostics = || {
        format!(
            "output: {}\nrestart: {}\nlog: {}",
            {
                let o = std::fs::read(dir.join("out.txt")).unwrap_or_default();
                String::from_utf8_lossy(&o[o.len().saturating_sub(400)..]).into_owned()
            },
            read(dir, "restart.txt"),
            read(dir, "ckpt.log")
        )
    };
    for g in 0..CYCLES {
        std::thread::sleep(dur.mul_f64(rng.between(0.06, 0.16)));
        kill(child.id(), signal);
        if !wait_for_events(dir, "checkpoint", g + 1, &mut child, Duration::from_secs(60)) {
            let status = child.try_wait().unwrap();
            if status.is_some_and(|s| s.success()) && events(dir, "checkpoint-failed").is_empty() {
                return Err(diagnostics()); // finished first
            }
            let _ = child.kill();
            panic!("{name}: cycle {}: no checkpoint (process {status:?}); {}", g + 1, diagnostics());
        }
        if signal == libc::SIGTERM {
            let status = wait_timeout(&mut child, Duration::from_secs(60));
            assert_eq!(
                status.signal(),
                Some(libc::SIGTERM),
                "{name}: cycle {}: after the TERM checkpoint: {status:?}",
                g + 1
            );
        } else {
            std::thread::sleep(dur.mul_f64(rng.between(0.0, 0.1)));
            kill(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
        let mut restart = command(&ckpt, dir);
        restart.args(["restart", "--image-dir", img.to_str().unwrap()]);
        child = restart.stdout(Stdio::null()).stderr(append(&dir.join("restart.txt"))).spawn().unwrap();
        if !wait_restored(dir, g + 1, &mut child) {
            let status = wait_timeout(&mut child, Duration::from_secs(60));
            panic!("{name}: restart {} failed ({status:?}); {}", g + 1, diagnostics());
        }
    }
    let status = wait_timeout(&mut child, Duration::from_secs(300));
    assert!(status.success(), "{name}: the last restarted run ended with {status:?}; {}", diagnostics());
    let got = std::fs::read(&out).unwrap();
    if got != expected {
        let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
        panic!(
            "{name}: output differs from the uninterrupted run at byte {at} (got {} bytes, expected {}); {}",
            got.len(),
            expected.len(),
            diagnostics()
        );
    }
    let ck = events(dir, "checkpoint");
    assert_eq!(ck.len(), CYCLES, "{name}: one checkpoint per cycle; {}", diagnostics());
    for (g, c) in ck.iter().enumerate() {
        assert_eq!(
            c["restarts"].as_u64(),
            Some(g as u64),
            "{name}: checkpoint {} was written after {g} restarts",
            g + 1
        );
    }
    assert_eq!(events(dir, "restored").len(), CYCLES, "{name}: one restored event per restart");
    assert!(
        events(dir, "checkpoint-failed").is_empty() && events(dir, "checkpoint-refused").is_empty(),
        "{}",
        diagnostics()
    );
    Ok(())
}

fn check_cycles(name: &str, argv: Vec<String>, signal: i32) {
    let (expected, dur) = reference(&argv);
    let mut rng = Rng::new(seed(name));
    for attempt in 0..4 {
        match run_cycles(name, &argv, signal, &expected, dur, &mut rng) {
            Ok(()) => {
                eprintln!("{name}: {CYCLES} cycles, output identical");
                return;
            }
            Err(e) if attempt == 3 => panic!("{name}: the program always finished before the last checkpoint: {e}"),
            Err(_) => {}
        }
    }
}

fn bin(name: &str) -> Option<String> {
    which(name).map(|p| p.display().to_string())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A small program built here (when a C compiler is installed): its read-only data and its RELRO page
/// share one page of the executable, as in most small binaries.
#[test]
fn small_binary_three_cycles() {
    let Some(cc) = ["cc", "gcc", "clang"]
        .iter()
        .find_map(|c| Command::new(c).arg("--version").output().ok().filter(|o| o.status.success()).map(|_| *c))
    else {
        eprintln!("SKIP: no C compiler");
        return;
    };
    let dir = inputs();
    let src = dir.join("small.c");
    let exe = dir.join("small");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        std::fs::write(
            &src,
            "#include <stdio.h>\nint main(void) {\n    unsigned long long h = 1469598103934665603ULL;\n    \
             for (long i = 0; i < 600; i++) {\n        for (long j = 0; j < 2000000; j++) h = (h ^ (unsigned long \
             long)j) * 1099511628211ULL;\n        printf(\"%ld %016llx\\n\", i, h);\n        fflush(stdout);\n    }\n    \
             return 0;\n}\n",
        )
        .unwrap();
        let o = Command::new(cc).args(["-O2", "-o"]).arg(&exe).arg(&src).output().unwrap();
        assert!(o.status.success(), "{cc}: {}", String::from_utf8_lossy(&o.stderr));
    });
    check_cycles("small binary", vec![s(&exe)], libc::SIGUSR1);
}

#[test]
fn bc_three_cycles() {
    let Some(bc) = bin("bc") else { return };
    check_cycles("bc", vec![bc, "-l".into(), s(&inputs().join("pi.bc"))], libc::SIGUSR1);
}

#[test]
fn gzip_three_cycles() {
    let Some(gzip) = bin("gzip") else { return };
    check_cycles("gzip", vec![gzip, "-9".into(), "-c".into(), s(&inputs().join("text.txt"))], libc::SIGUSR1);
}

#[test]
fn xz_three_cycles() {
    let Some(xz) = bin("xz") else { return };
    // xz owns SIGUSR1 (its progress report): the shim's reserved signal asks for the checkpoints.
    let argv = vec![xz, "-4".into(), "-T1".into(), "-c".into(), s(&inputs().join("text3.txt"))];
    check_cycles("xz", argv, libc::SIGRTMAX() - 2);
}

const MAWK_PROGRAM: &str = "BEGIN{s=0; for(i=0;i<16000000;i++){s=(s*31+i)%1000003; if(i%100000==0) print i, s}}";

#[test]
fn mawk_three_cycles() {
    let Some(mawk) = bin("mawk") else { return };
    check_cycles("mawk", vec![mawk, MAWK_PROGRAM.into()], libc::SIGUSR1);
}

/// `stdbuf` sets LD_PRELOAD=libstdbuf.so (after the shim) and executes the program in the same process.
#[test]
fn stdbuf_three_cycles() {
    let (Some(stdbuf), Some(mawk)) = (bin("stdbuf"), bin("mawk")) else { return };
    check_cycles("stdbuf", vec![stdbuf, "-oL".into(), mawk, MAWK_PROGRAM.into()], libc::SIGUSR1);
}

#[test]
fn python_three_cycles() {
    let Some(py) = python() else { return };
    check_cycles("python3", vec![py, s(&inputs().join("mandel.py"))], libc::SIGUSR1);
}

/// The executable of the `python3` on PATH when it is another Python than the distribution's (pyenv's:
/// a small executable linked to libpython), resolved past wrapper scripts.
fn other_python() -> Option<PathBuf> {
    let o = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().ok()?;
    let exe = PathBuf::from(String::from_utf8(o.stdout).ok()?.trim());
    let real = exe.canonicalize().ok()?;
    let distro = Path::new("/usr/bin/python3").canonicalize().ok();
    (o.status.success() && Some(&real) != distro.as_ref()).then_some(real)
}

#[test]
fn other_python_three_cycles() {
    let Some(py) = other_python() else {
        eprintln!("SKIP: the python3 on PATH is the distribution's");
        return;
    };
    eprintln!("python3 on PATH: {}", py.display());
    check_cycles("python3 (PATH)", vec![s(&py), s(&inputs().join("mandel.py"))], libc::SIGUSR1);
}

/// A Python program with 8 MiB of state that changes all along: every image is written with direct I/O.
fn big_state_program() -> Option<Vec<String>> {
    static SCRIPT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let py = python()?;
    let script = SCRIPT.get_or_init(|| {
        let script = inputs().join("big_state.py");
        let tmp = inputs().join("big_state.py.tmp");
        std::fs::write(
            &tmp,
            "import hashlib\nbuf = bytearray(hashlib.shake_256(b'ckpt').digest(8 << 20))\nfor r in range(480):\n    \
         i = (r * 52361) % (len(buf) - 64)\n    buf[i:i + 32] = hashlib.sha256(bytes(buf[i:i + 64])).digest()\n    \
         print(r, hashlib.sha256(buf).hexdigest(), flush=True)\n",
        )
        .unwrap();
        std::fs::rename(&tmp, &script).unwrap();
        script
    });
    Some(vec![py, s(script)])
}

#[test]
fn big_state_three_cycles_usr1() {
    let Some(argv) = big_state_program() else { return };
    check_cycles("8 MiB state, USR1+KILL", argv, libc::SIGUSR1);
}

#[test]
fn big_state_three_cycles_term() {
    let Some(argv) = big_state_program() else { return };
    check_cycles("8 MiB state, TERM", argv, libc::SIGTERM);
}

/// A program that lowers its resource limits (the descriptor limit's soft and hard values, the core-file
/// limit) and prints them all along: every restart must give them back (DMTCP's rlimit-restore).
#[test]
fn resource_limits_three_cycles() {
    static SCRIPT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let Some(py) = python() else { return };
    let script = SCRIPT.get_or_init(|| {
        let script = inputs().join("limits.py");
        let tmp = inputs().join("limits.py.tmp");
        std::fs::write(
            &tmp,
            "import resource, hashlib\nresource.setrlimit(resource.RLIMIT_NOFILE, (123, 4096))\n\
             resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))\n\
             h = hashlib.sha256()\nfor r in range(300):\n    for i in range(60000):\n        h.update(b'%d' % i)\n    \
             print(r, resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_CORE)[0], \
             h.hexdigest()[:12], flush=True)\n",
        )
        .unwrap();
        std::fs::rename(&tmp, &script).unwrap();
        script
    });
    check_cycles("resource limits", vec![py, s(script)], libc::SIGUSR1);
}

// ---------------------------------------------------------------------------------------------- threads

/// A test program of `tests/programs/`, built once with `cc` and `flags` (None without a C compiler).
fn built(name: &str, flags: &[&str]) -> Option<String> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs").join(format!("{name}.c"));
    let exe = inputs().join(name);
    if !exe.exists()
        || std::fs::metadata(&exe).unwrap().modified().unwrap() < std::fs::metadata(&src).unwrap().modified().unwrap()
    {
        let tmp = inputs().join(format!("{name}.tmp"));
        let cc = which("cc")?;
        let o = Command::new(cc).args(["-O2", "-o"]).arg(&tmp).arg(&src).args(flags).output().unwrap();
        assert!(o.status.success(), "cc {name}: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::rename(&tmp, &exe).unwrap();
    }
    Some(s(&exe))
}

/// Four worker threads, a mutex and two condition variables, thread-local accumulators, `pthread_kill`
/// to each worker after every step (its handler must run: the tid it was created with names it after a
/// restart) and `pthread_join` at the end (the kernel must clear each restored thread's tid).
#[test]
fn pthreads_three_cycles_usr1() {
    let Some(exe) = built("threads", &["-pthread"]) else { return };
    check_cycles("pthreads, USR1", vec![exe, "300".into(), "3000000".into(), "4".into()], libc::SIGUSR1);
}

/// The same with SIGTERM (checkpoint and exit: the stopped threads end with the process).
#[test]
fn pthreads_three_cycles_term() {
    let Some(exe) = built("threads", &["-pthread"]) else { return };
    check_cycles("pthreads, TERM", vec![exe, "300".into(), "3000000".into(), "4".into()], libc::SIGTERM);
}

/// An OpenMP kernel (libgomp's thread pool, three threads): the restart has the same thread count.
#[test]
fn openmp_three_cycles() {
    let Some(exe) = built("openmp", &["-fopenmp"]) else { return };
    check_cycles("OpenMP", vec![exe, "1500".into()], libc::SIGUSR1);
}

/// A Python program with three worker threads (the GIL, queue's condition variables).
#[test]
fn python_threads_three_cycles() {
    let Some(py) = python() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/threads.py");
    check_cycles("Python threads", vec![py, s(&script), "2500".into()], libc::SIGUSR1);
}

/// 12 MB of text for the two-thread compressors (two blocks for `xz -2 -T2`).
fn text12() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = inputs().join("text12.txt");
        if !path.exists() {
            let text = std::fs::read(inputs().join("text.txt")).unwrap();
            let tmp = inputs().join("text12.tmp");
            std::fs::write(&tmp, &text[..12_000_000]).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        path
    })
    .clone()
}

/// `xz -T2`: a coordinating thread and two compressing threads (xz owns SIGUSR1 and SIGTERM: the shim's
/// reserved signal asks for the checkpoints).
#[test]
fn xz_two_threads_three_cycles() {
    let Some(xz) = bin("xz") else { return };
    let argv = vec![xz, "-2".into(), "-T2".into(), "-c".into(), s(&text12())];
    check_cycles("xz -T2", argv, libc::SIGRTMAX() - 2);
}

/// `zstd -T2`: zstd's worker pool.
#[test]
fn zstd_two_threads_three_cycles() {
    let Some(zstd) = bin("zstd") else { return };
    let argv = vec![zstd, "-q".into(), "-T2".into(), "-14".into(), "-c".into(), s(&text12())];
    check_cycles("zstd -T2", argv, libc::SIGRTMAX() - 2);
}

/// Signals pending at checkpoint time (for the process, for the main thread, for another thread) are
/// pending again after each restart: their handlers run once, where they would have (before: lost).
#[test]
fn pending_signals_three_cycles() {
    let Some(exe) = built("pending", &["-pthread"]) else { return };
    check_cycles("pending signals", vec![exe, "600".into(), "4000000".into()], libc::SIGUSR1);
}
