//! SIGKILL a C program (tests/c/kill_loop.c) at random moments while it computes and checkpoints through
//! libckpt, restart it each time, and require that (1) every restart resumes at a step >= the last step
//! it reported durable, and (2) the run that finally completes prints the checksum of an uninterrupted run.
//! `CKPT_C_KILL_ITERATIONS` sets the number of kills (default 100).

mod common;
use common::{Rng, build_c, clean_env};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn build(out: &Path) {
    build_c("cc", &["-std=c11", "-O2", "-Wall", "-Werror"], "ckpt-ffi/tests/c/kill_loop.c", out);
}

#[test]
fn c_program_survives_random_sigkills() {
    let t = tempfile::tempdir().unwrap();
    let exe = t.path().join("kill_loop");
    build(&exe);
    const ITERS: &str = "400";
    let reference = {
        let dir = t.path().join("reference");
        std::fs::create_dir(&dir).unwrap();
        let mut cmd = Command::new(&exe);
        cmd.arg(&dir).arg(ITERS);
        clean_env(&mut cmd);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).lines().find(|l| l.starts_with("done")).unwrap().to_string()
    };
    let kills: u64 = std::env::var("CKPT_C_KILL_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let mut rng = Rng(0x5eed_c0ff_ee11);
    let (mut done_kills, mut rounds, mut mid_save) = (0u64, 0u64, 0u64);
    while done_kills < kills {
        rounds += 1;
        let dir = t.path().join(format!("round{rounds}"));
        std::fs::create_dir(&dir).unwrap();
        let mut last_durable = 0i64;
        loop {
            let mut cmd = Command::new(&exe);
            cmd.arg(&dir).arg(ITERS).stdout(Stdio::piped()).stderr(Stdio::piped());
            clean_env(&mut cmd);
            let mut child = cmd.spawn().unwrap();
            let pid = child.id();
            let out = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
            let kill_now = done_kills < kills;
            if kill_now {
                std::thread::sleep(Duration::from_millis(rng.below(60)));
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
                done_kills += 1;
            }
            let status = child.wait().unwrap();
            let lines: Vec<String> = rx.iter().collect();
            if let Some(r) = lines.iter().find(|l| l.starts_with("resumed")) {
                let resumed: i64 = r[8..].parse().unwrap();
                assert!(resumed >= last_durable, "resumed at {resumed}, but {last_durable} was reported durable");
            }
            if let Some(d) = lines.iter().rev().find(|l| l.starts_with("durable")) {
                last_durable = d[8..].parse().unwrap();
            }
            let own_tmp = format!(".{pid}.");
            let names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if names.iter().any(|n| n.contains(".tmp.") && n.contains(&own_tmp)) {
                mid_save += 1;
            }
            if let Some(done) = lines.iter().find(|l| l.starts_with("done")) {
                assert_eq!(done, &reference, "round {rounds}: the completed run differs from the uninterrupted one");
                break;
            }
            if !kill_now {
                panic!("an unkilled run did not finish: {status:?} {lines:?}");
            }
        }
    }
    eprintln!(
        "{done_kills} SIGKILLs in {rounds} rounds, {mid_save} left a save in progress; every completed run matched"
    );
}
