//! The shim's automatic triggers: the interval (`ckpt run --interval`, `SLURM_CHECKPOINT`) and the job's
//! time limit (checkpoint and exit before it), re-armed after a restart with the restarted job's values.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn mawk_argv() -> Option<Vec<String>> {
    let mawk = which("mawk")?;
    Some(vec![
        mawk.display().to_string(),
        // About 6 s of work, printing as it goes.
        "BEGIN{s=0; for(i=0;i<40000000;i++){s=(s*31+i)%1000003; if(i%400000==0) print i, s}}".into(),
    ])
}

#[test]
fn interval_checkpoints_continue_after_restart() {
    let Some(argv) = mawk_argv() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let expected = Command::new(&argv[0]).args(&argv[1..]).output().unwrap().stdout;
    // The formats of Slurm's removed checkpoint interface: "0:0:1" is one second (SLURM_CHECKPOINT), --interval takes the same.
    let mut child = command(&ckpt, dir)
        .env("SLURM_CHECKPOINT", "0:0:1")
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .args(&argv)
        .stdout(out_file(&dir.join("out.txt"), false))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_events(dir, "checkpoint", 2, &mut child, Duration::from_secs(30)), "two interval checkpoints");
    kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
    // A writer the killed program had just forked (a separate process) may still commit and log its
    // checkpoint: count only once the log has been quiet for longer than a write takes.
    let mut before = events(dir, "checkpoint").len();
    let mut quiet_since = std::time::Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(100));
        let now = events(dir, "checkpoint").len();
        if now != before {
            before = now;
            quiet_since = std::time::Instant::now();
        }
    }
    let mut child = command(&ckpt, dir)
        .env("CKPT_INTERVAL", "0:0:1")
        .args(["restart", "--image-dir", dir.join("img").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for_events(dir, "checkpoint", before + 1, &mut child, Duration::from_secs(30)),
        "the restarted process checkpoints at the interval too"
    );
    let status = wait_timeout(&mut child, Duration::from_secs(120));
    assert!(status.success(), "{status:?}");
    assert!(std::fs::read(dir.join("out.txt")).unwrap() == expected, "output differs");
    let after_restart = events(dir, "checkpoint").into_iter().skip(before).collect::<Vec<_>>();
    assert!(after_restart.iter().all(|e| e["restarts"] == 1), "{after_restart:?}");
}

#[test]
fn time_limit_checkpoint_and_exit_then_restart() {
    let Some(argv) = mawk_argv() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let expected = Command::new(&argv[0]).args(&argv[1..]).output().unwrap().stdout;
    // The job "ends" 12 s from now; with a 10 s initial cost guess, safety factor 1 and no margin, the
    // shim checkpoints and exits about 2 s in, well before the work is done.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let start = std::time::Instant::now();
    let mut child = command(&ckpt, dir)
        .env("CKPT_END_TIME", (now + 12).to_string())
        .env("CKPT_MARGIN", "0")
        .env("CKPT_SAFETY_FACTOR", "1")
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .args(&argv)
        .stdout(out_file(&dir.join("out.txt"), false))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "exits by the time-limit checkpoint: {status:?}");
    assert!(start.elapsed() < Duration::from_secs(11), "before the end time");
    let ck = events(dir, "checkpoint");
    assert_eq!(ck.len(), 1);
    assert_eq!(ck[0]["exit"], true);
    // The requeued job has a new, distant end time: it runs to completion.
    let o = command(&ckpt, dir)
        .env("CKPT_END_TIME", (now + 3600).to_string())
        .args(["restart", "--image-dir", dir.join("img").to_str().unwrap()])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(std::fs::read(dir.join("out.txt")).unwrap() == expected, "output differs");
}

/// LD_PRELOAD set by hand (no `ckpt run`): the shim turns randomization off by re-executing the program
/// once, checkpoints on SIGUSR1, and `ckpt restart` resumes it.
#[test]
fn ld_preload_by_hand() {
    let Some(argv) = mawk_argv() else { return };
    let (ckpt, lib) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let expected = Command::new(&argv[0]).args(&argv[1..]).output().unwrap().stdout;
    let mut child = command(std::path::Path::new(&argv[0]), dir)
        .args(&argv[1..])
        .env("LD_PRELOAD", &lib)
        .env("CKPT_DIR", dir.join("img"))
        .stdout(out_file(&dir.join("out.txt"), false))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    kill(child.id(), libc::SIGUSR1);
    assert!(wait_for_events(dir, "checkpoint", 1, &mut child, Duration::from_secs(30)), "a checkpoint");
    kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
    let o = command(&ckpt, dir)
        .args(["restart", "--image-dir", dir.join("img").to_str().unwrap()])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(std::fs::read(dir.join("out.txt")).unwrap() == expected, "output differs");
}

/// A checkpoint during `nanosleep`, `sleep`, `poll` and `select` (calls the kernel never restarts after
/// a handler) is invisible to the program: each returns as if nothing happened, after its full time
/// (issue 19: "poll/sleep return early with EINTR"). Requests by SIGUSR1 and by the reserved SIGRTMAX-2.
#[test]
fn checkpoints_do_not_interrupt_sleeps_and_polls() {
    let Some(cc) = ["cc", "gcc", "clang"]
        .iter()
        .find_map(|c| Command::new(c).arg("--version").output().ok().filter(|o| o.status.success()).map(|_| *c))
    else {
        eprintln!("SKIP: no C compiler");
        return;
    };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = dir.join("sleeps.c");
    let exe = dir.join("sleeps");
    std::fs::write(
        &src,
        r#"#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(void) {
    double t0 = now();
    struct timespec req = {2, 0};
    int r = nanosleep(&req, NULL);
    printf("nanosleep %d %d %.2f\n", r, r ? errno : 0, now() - t0); fflush(stdout);
    t0 = now();
    unsigned s = sleep(2);
    printf("sleep %u 0 %.2f\n", s, now() - t0); fflush(stdout);
    t0 = now();
    r = poll(NULL, 0, 2000);
    printf("poll %d %d %.2f\n", r, r < 0 ? errno : 0, now() - t0); fflush(stdout);
    t0 = now();
    struct timeval tv = {2, 0};
    r = select(0, NULL, NULL, NULL, &tv);
    printf("select %d %d %.2f\n", r, r < 0 ? errno : 0, now() - t0); fflush(stdout);
    return 0;
}
"#,
    )
    .unwrap();
    let o = Command::new(cc).args(["-O2", "-o"]).arg(&exe).arg(&src).output().unwrap();
    assert!(o.status.success(), "{cc}: {}", String::from_utf8_lossy(&o.stderr));
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .arg(&exe)
        .stdout(out_file(&dir.join("out.txt"), false))
        .stderr(out_file(&dir.join("err.txt"), false))
        .spawn()
        .unwrap();
    // One request in the middle of each call (2 s each).
    let start = std::time::Instant::now();
    for (i, at) in [0.7, 2.9, 4.9, 6.9].into_iter().enumerate() {
        std::thread::sleep(Duration::from_secs_f64(at).saturating_sub(start.elapsed()));
        kill(child.id(), if i % 2 == 0 { libc::SIGUSR1 } else { libc::SIGRTMAX() - 2 });
    }
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    let out = std::fs::read_to_string(dir.join("out.txt")).unwrap();
    assert!(status.success(), "{status:?}; stdout: {out}");
    assert!(!events(dir, "checkpoint").is_empty(), "no checkpoint taken; stdout: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((f[1], f[2]), ("0", "0"), "{} was interrupted: {line}", f[0]);
        let took: f64 = f[3].parse().unwrap();
        assert!(took >= 1.95, "{} returned early: {line}", f[0]);
    }
}
