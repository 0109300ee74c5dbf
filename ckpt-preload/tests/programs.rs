//! Unmodified distribution programs checkpointed under the shim and restarted: the output must be
//! byte-identical to an uninterrupted run.
//!
//! For every program: two uninterrupted runs (they must agree: the oracle is deterministic), one run
//! under the shim without any signal (it must match too), then checkpoints at random moments: SIGUSR1
//! (checkpoint and continue) followed by a SIGKILL a random time later (the output written after the
//! checkpoint must be discarded on restart) and SIGTERM (checkpoint and exit), with `>` and `>>`, one to
//! three generations (restart, checkpoint again, kill, restart again), and a restart from another
//! directory with an empty environment. Every restart's stdout is /dev/null: the output file is
//! reattached from the image. Seeds are printed (CKPT_SHIM_SEED replays them).
//!
//! Knobs: CKPT_SHIM_REPEAT (repetitions of the signal scenarios, default 1), CKPT_SHIM_REPORT (append
//! the per-scenario figures, as JSON lines, to this file).

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Program {
    name: &'static str,
    argv: Vec<String>,
    /// Signals the program installs its own handlers for: the shim leaves them to the program, and the
    /// test asks for checkpoints with the shim's reserved signals instead (what `ckpt create` sends).
    owns: &'static [i32],
}

/// The signal that asks `p` for the checkpoint `sc` means: SIGUSR1/SIGTERM, or the shim's reserved
/// SIGRTMAX-2 (checkpoint and continue) / SIGRTMAX-3 (checkpoint and exit) when the program owns them.
fn request_signal(p: &Program, sc: &Scenario) -> i32 {
    match (p.owns.contains(&sc.signal), sc.signal == libc::SIGTERM) {
        (false, _) => sc.signal,
        (true, false) => libc::SIGRTMAX() - 2,
        (true, true) => libc::SIGRTMAX() - 3,
    }
}

fn program(name: &'static str) -> Option<Program> {
    let d = inputs();
    let s = |p: &Path| p.display().to_string();
    let bin = |n: &str| which(n).map(|p| s(&p));
    let argv = match name {
        "bc" => vec![bin("bc")?, "-l".into(), s(&d.join("pi.bc"))],
        "gzip" => vec![bin("gzip")?, "-9".into(), "-c".into(), s(&d.join("text.txt"))],
        "bzip2" => vec![bin("bzip2")?, "-9".into(), "-c".into(), s(&d.join("text.txt"))],
        // xz installs its own SIGUSR1 and SIGTERM handlers and keeps a self-pipe.
        "xz" => vec![bin("xz")?, "-4".into(), "-T1".into(), "-c".into(), s(&d.join("text3.txt"))],
        "sha256sum" => vec![bin("sha256sum")?, s(&d.join("sparse.bin")), s(&d.join("text.txt"))],
        "mawk" => vec![
            bin("mawk")?,
            "BEGIN{s=0; for(i=0;i<16000000;i++){s=(s*31+i)%1000003; if(i%100000==0) print i, s}}".into(),
        ],
        // An interpreter that dlopens extension modules (_hashlib, libcrypto) after start.
        "python3" => {
            let py = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3".into() } else { bin("python3")? };
            vec![py, s(&d.join("mandel.py"))]
        }
        _ => unreachable!(),
    };
    // gzip, bzip2 and xz clean up and exit on SIGTERM (and more); xz prints its progress on SIGUSR1.
    let owns: &[i32] = match name {
        "gzip" | "bzip2" => &[libc::SIGTERM],
        "xz" => &[libc::SIGTERM, libc::SIGUSR1],
        _ => &[],
    };
    Some(Program { name, argv, owns })
}

/// Runs the program twice without the shim; returns its output and the shorter duration.
fn reference(p: &Program) -> (Vec<u8>, Duration) {
    let mut outs = Vec::new();
    let mut best = Duration::MAX;
    for _ in 0..2 {
        let t = Instant::now();
        let o = Command::new(&p.argv[0]).args(&p.argv[1..]).env("LC_ALL", "C").output().expect("run reference");
        best = best.min(t.elapsed());
        assert!(o.status.success(), "{}: reference run failed: {:?}", p.name, o.status);
        outs.push(o.stdout);
    }
    assert!(outs[0] == outs[1], "{}: two uninterrupted runs differ: not a usable oracle", p.name);
    assert!(!outs[0].is_empty(), "{}: no output", p.name);
    (outs.swap_remove(0), best)
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    signal: i32,
    append: bool,
    generations: usize,
    scrub: bool,
}

fn label(sc: &Scenario) -> String {
    format!(
        "{}{} {}{}",
        if sc.signal == libc::SIGTERM { "TERM" } else { "USR1+KILL" },
        if sc.generations > 1 { format!(" x{}", sc.generations) } else { String::new() },
        if sc.append { ">>" } else { ">" },
        if sc.scrub { " env-i other-cwd" } else { "" }
    )
}

/// The newest image in `img` and the checkpoint-time size of the program's stdout file.
fn newest_image(img: &Path) -> (PathBuf, u64) {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(img).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".ckpt") && !name.contains(".tmp.") {
            let m = e.metadata().unwrap().modified().unwrap();
            if best.as_ref().is_none_or(|(t, _)| m > *t) {
                best = Some((m, e.path()));
            }
        }
    }
    let path = best.expect("an image").1;
    let cp = ckpt_core::Checkpoint::open(&path).unwrap();
    let image = ckpt_image::read(&cp).unwrap();
    let size = image.fds.iter().find(|f| f.fd == 1).map(|f| f.size).unwrap_or(0);
    (path, size)
}

struct Outcome {
    grew_after_checkpoint: bool,
    image_bytes: u64,
    pause_ms: f64,
    write_ms: f64,
    restore_ms: f64,
}

/// One scenario; Err(stderr) when the program finished before a checkpoint could be taken (caller retries).
fn run_scenario(
    p: &Program,
    sc: Scenario,
    expected_ref: &[u8],
    dur: Duration,
    rng: &mut Rng,
) -> Result<Outcome, String> {
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = dir.join("img");
    let out = dir.join("out.txt");
    let mut expected = Vec::new();
    if sc.append {
        std::fs::write(&out, b"earlier output\n").unwrap();
        expected.extend_from_slice(b"earlier output\n");
    }
    expected.extend_from_slice(expected_ref);
    let err = || Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("err.txt")).unwrap());
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", img.to_str().unwrap(), "--"])
        .args(&p.argv)
        .stdout(out_file(&out, sc.append))
        .stderr(err())
        .spawn()
        .unwrap();
    let mut grew = false;
    // Every cycle's share of the run: with several cycles the program must still be running at the last
    // checkpoint (at most 0.75 of the uninterrupted run in all).
    let share = 1.0 / sc.generations.max(1) as f64;
    for g in 0..sc.generations {
        std::thread::sleep(dur.mul_f64(rng.between(0.1, 0.45) * share));
        kill(child.id(), request_signal(p, &sc));
        if !wait_for_events(dir, "checkpoint", g + 1, &mut child, Duration::from_secs(60)) {
            if child.try_wait().unwrap().is_some() {
                return Err(read(dir, "err.txt") + &read(dir, "ckpt.log")); // finished first
            }
            panic!("{} {}: no checkpoint within 60 s; stderr: {}", p.name, label(&sc), read(dir, "err.txt"));
        }
        let (_, size_at_checkpoint) = newest_image(&img);
        if sc.signal == libc::SIGUSR1 {
            std::thread::sleep(dur.mul_f64(rng.between(0.05, 0.3) * share));
            kill(child.id(), libc::SIGKILL);
            let _ = child.wait();
            grew |= std::fs::metadata(&out).unwrap().len() > size_at_checkpoint;
        } else {
            let status = wait_timeout(&mut child, Duration::from_secs(60));
            assert_eq!(status.signal(), Some(libc::SIGTERM), "{}: after the TERM checkpoint: {status:?}", p.name);
        }
        let last = g + 1 == sc.generations;
        let mut restart = if sc.scrub && last {
            let (image, _) = newest_image(&img);
            let mut c = Command::new(&ckpt);
            c.env_clear().current_dir("/").arg("restart").arg(image);
            close_inherited_fds(&mut c);
            c
        } else {
            let mut c = command(&ckpt, dir);
            c.args(["restart", "--image-dir", img.to_str().unwrap()]);
            c
        };
        child = restart.stdout(Stdio::null()).stderr(err()).spawn().unwrap();
    }
    let status = wait_timeout(&mut child, Duration::from_secs(300));
    assert!(
        status.success(),
        "{} {}: restarted run ended with {status:?}; stderr: {}",
        p.name,
        label(&sc),
        read(dir, "err.txt")
    );
    let got = std::fs::read(&out).unwrap();
    if got != expected {
        let at = got.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
        panic!(
            "{} {}: output differs from the uninterrupted run at byte {at} (got {} bytes, expected {}); stderr: {}",
            p.name,
            label(&sc),
            got.len(),
            expected.len(),
            read(dir, "err.txt")
        );
    }
    let ck = events(dir, "checkpoint");
    let rs = events(dir, "restored");
    assert_eq!(rs.len(), sc.generations, "{}: one restored event per restart", p.name);
    let last_ck = ck.last().expect("checkpoint event");
    Ok(Outcome {
        grew_after_checkpoint: grew,
        image_bytes: last_ck["image_bytes"].as_u64().unwrap_or(0),
        pause_ms: last_ck["pause_ms"].as_f64().unwrap_or(0.0),
        write_ms: last_ck["write_ms"].as_f64().unwrap_or(0.0),
        restore_ms: rs.last().and_then(|r| r["restore_us"].as_f64()).unwrap_or(0.0) / 1e3,
    })
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn check_program(name: &'static str, extra: &[Scenario]) {
    let Some(p) = program(name) else {
        eprintln!("SKIP {name}: not installed");
        return;
    };
    let (ckpt, _) = tools();
    let (expected, dur) = reference(&p);
    // Under the shim, with no signal: no interference.
    {
        let tmp = tempfile::tempdir().unwrap();
        let out = command(&ckpt, tmp.path())
            .args(["run", "--dir", tmp.path().join("img").to_str().unwrap(), "--"])
            .args(&p.argv)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} under the shim: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == expected, "{name}: output under the shim (no signal) differs from the plain run");
    }
    let mut rng = Rng::new(seed(name));
    let repeat: usize = std::env::var("CKPT_SHIM_REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let base = [
        Scenario { signal: libc::SIGUSR1, append: false, generations: 1, scrub: false },
        Scenario { signal: libc::SIGTERM, append: false, generations: 1, scrub: false },
    ];
    let mut grew = 0;
    let mut usr1 = 0;
    for sc in base.iter().chain(extra).copied().cycle().take((base.len() + extra.len()) * repeat) {
        let mut outcome = Err(String::new());
        for _ in 0..4 {
            outcome = run_scenario(&p, sc, &expected, dur, &mut rng);
            if outcome.is_ok() {
                break;
            }
        }
        let o = outcome.unwrap_or_else(|e| {
            panic!("{name} {}: the program always finished before the checkpoint; last stderr and log: {e}", label(&sc))
        });
        if sc.signal == libc::SIGUSR1 {
            usr1 += 1;
            grew += o.grew_after_checkpoint as usize;
        }
        let line = serde_json::json!({
            "program": name, "scenario": label(&sc), "result": "identical", "image_bytes": o.image_bytes,
            "pause_ms": o.pause_ms, "write_ms": o.write_ms, "restore_ms": o.restore_ms,
            "run_s": dur.as_secs_f64(),
        });
        eprintln!("{line}");
        if let Ok(path) = std::env::var("CKPT_SHIM_REPORT") {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
            writeln!(f, "{line}").unwrap();
        }
    }
    eprintln!("{name}: {usr1} kill scenarios, {grew} with output written after the checkpoint (then discarded)");
}

const USR1_APPEND: Scenario = Scenario { signal: libc::SIGUSR1, append: true, generations: 1, scrub: false };
const TERM_APPEND: Scenario = Scenario { signal: libc::SIGTERM, append: true, generations: 1, scrub: false };
const GEN2: Scenario = Scenario { signal: libc::SIGUSR1, append: false, generations: 2, scrub: false };
const GEN3: Scenario = Scenario { signal: libc::SIGUSR1, append: false, generations: 3, scrub: false };
const SCRUB: Scenario = Scenario { signal: libc::SIGTERM, append: false, generations: 1, scrub: true };

#[test]
fn bc_pi_digits() {
    check_program("bc", &[SCRUB, GEN2]);
}

#[test]
fn gzip_compressor() {
    check_program("gzip", &[USR1_APPEND, GEN2, SCRUB]);
}

#[test]
fn bzip2_compressor() {
    check_program("bzip2", &[TERM_APPEND, GEN3]);
}

#[test]
fn xz_owns_usr1_and_term() {
    check_program("xz", &[USR1_APPEND]);
}

#[test]
fn sha256sum_large_files() {
    check_program("sha256sum", &[GEN2]);
}

#[test]
fn mawk_interpreter() {
    check_program("mawk", &[USR1_APPEND, GEN3]);
}

#[test]
fn python3_interpreter() {
    check_program("python3", &[GEN2, SCRUB]);
}

/// xz's own SIGUSR1 (progress) and SIGTERM (clean up and exit) handlers run under the shim: neither
/// signal is taken for a checkpoint request (issue 19, "the checkpoint signal is the program's business").
#[test]
fn xz_own_signals_reach_its_handlers() {
    let Some(p) = program("xz") else { return };
    let (expected, dur) = reference(&p);
    let (ckpt, _) = tools();
    for sig in [libc::SIGUSR1, libc::SIGTERM] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let out = dir.join("out.txt");
        let mut child = command(&ckpt, dir)
            .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
            .args(&p.argv)
            .stdout(out_file(&out, false))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(dur.mul_f64(0.3));
        kill(child.id(), sig);
        let status = wait_timeout(&mut child, Duration::from_secs(60));
        let n = events(dir, "checkpoint").len() + events(dir, "checkpoint-refused").len();
        assert_eq!(n, 0, "xz: its own signal {sig} was taken for a checkpoint request");
        if sig == libc::SIGUSR1 {
            assert!(status.success(), "xz after its own SIGUSR1: {status:?}");
            assert!(std::fs::read(&out).unwrap() == expected, "xz: output after its own SIGUSR1 differs");
        } else {
            // xz's handler cleans up and then ends the process by SIGTERM itself.
            assert_eq!(status.signal(), Some(libc::SIGTERM), "xz after its own SIGTERM: {status:?}");
        }
    }
}
