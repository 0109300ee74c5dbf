//! The pids a process had before its restarts keep naming it (DMTCP's `clock` test, and more). The
//! restarted process has another pid (this version does not virtualize pids: `getpid()` returns the new
//! one), but a value the program took for itself before the checkpoint still names it after each restart:
//! a CPU-time clock id (`clock_getcpuclockid(getpid())` encodes the pid; before the fix, reading it after
//! the restart failed with EINVAL, or read whatever process had that pid now) and the pid itself given to
//! `kill` (which would signal another process). Two restarts in a row: the first pid is translated from
//! the third process.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

const SCRIPT: &str = r#"
import errno, os, signal, sys, time

def clock(pid):
    # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED), as glibc's clock_getcpuclockid makes it.
    return ((~pid) << 3) | 2

signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
first = os.getpid()
taken = clock(first)
for r in range(int(sys.argv[1])):
    x = 0
    for i in range(20000):
        x += i * i
    fresh = time.clock_gettime(clock(os.getpid())) > 0
    try:
        time.clock_gettime(taken)
        old = 'ok'
    except OSError as e:
        old = errno.errorcode[e.errno]
    try:
        os.kill(first, signal.SIGUSR2)
        info = signal.sigtimedwait([signal.SIGUSR2], 5)
        kill = 'self' if info is not None and info.si_pid == os.getpid() else 'lost'
    except OSError as e:
        kill = errno.errorcode[e.errno]
    print(r, os.getpid(), 'restarted' if os.getpid() != first else 'first', fresh, old, kill, flush=True)
"#;

#[test]
fn earlier_pids_keep_naming_the_process() {
    let Some(py) = python() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = dir.join("img");
    let out = dir.join("out.txt");
    let script = dir.join("pids.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let lines = 600;
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", img.to_str().unwrap(), "--"])
        .arg(&py)
        .arg(&script)
        .arg(lines.to_string())
        .stdout(out_file(&out, false))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for n in 1..=2 {
        let seen = std::fs::read_to_string(&out).unwrap_or_default().lines().count();
        let t = std::time::Instant::now();
        while std::fs::read_to_string(&out).unwrap_or_default().lines().count() < seen + 20 {
            assert!(t.elapsed() < Duration::from_secs(60), "no progress before checkpoint {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(child.id(), libc::SIGUSR1);
        assert!(wait_for_events(dir, "checkpoint", n, &mut child, Duration::from_secs(60)), "no checkpoint {n}");
        kill(child.id(), libc::SIGKILL);
        let _ = child.wait();
        child = command(&ckpt, dir)
            .args(["restart", "--image-dir", img.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_for_events(dir, "restored", n, &mut child, Duration::from_secs(60)), "restart {n}");
    }
    let status = wait_timeout(&mut child, Duration::from_secs(300));
    assert!(status.success(), "the restarted program ended with {status:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(rows.len(), lines, "{text}");
    let pids: std::collections::BTreeSet<&str> = rows.iter().map(|l| l[1]).collect();
    assert_eq!(pids.len(), 3, "three processes (two restarts): {text}");
    assert!(rows.iter().any(|l| l[2] == "first") && rows.iter().any(|l| l[2] == "restarted"), "{text}");
    for l in &rows {
        assert_eq!(l[3], "True", "clock_getcpuclockid(getpid()) of the current process: {l:?}");
        assert_eq!(l[4], "ok", "a clock id taken before the checkpoints: {l:?}");
        assert_eq!(l[5], "self", "kill(first pid) reaches the process itself: {l:?}");
    }
}

/// Nothing but calls given the first run's pid or CPU clock id, back to back: the shim makes the id
/// current (asking the kernel for the pid) and then calls libc, and a checkpoint often lands in between.
const BUSY_IDS: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void) {
  pid_t first = getpid();
  clockid_t cpu;
  if (clock_getcpuclockid(first, &cpu) != 0) return 2;
  for (unsigned long n = 0;; n++) {
    struct timespec ts;
    if (clock_gettime(cpu, &ts) != 0) { printf("ERROR clock_gettime: %s\n", strerror(errno)); fflush(stdout); exit(1); }
    if (kill(first, 0) != 0) { printf("ERROR kill: %s\n", strerror(errno)); fflush(stdout); exit(1); }
    if (n % 1000 == 0) { printf("ok %lu\n", n); fflush(stdout); }
  }
}
"#;

/// A checkpoint taken inside a call given an earlier pid or CPU clock id (after the shim made it current,
/// before libc used it) resumes the call with this incarnation's id: six restarts in a row of a program
/// doing nothing but such calls (before, one restart in a few ended with "ERROR clock_gettime: Invalid
/// argument": the call went on with the previous incarnation's pid).
#[test]
fn a_checkpoint_inside_a_call_given_an_earlier_pid_resumes_it_with_the_current_one() {
    let build = tempfile::tempdir().unwrap();
    let Some(exe) = build_c(build.path(), "ids", BUSY_IDS, &["-O1"]) else { return };
    restart_while_busy(&exe, 8, 3000);
}
