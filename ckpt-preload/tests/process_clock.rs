//! The process CPU-time clock after a restart (DMTCP's `clock` test). The restarted process has another
//! pid, and this version does not virtualize pids: `clock_getcpuclockid(getpid())` called after the
//! restart names the restarted process and works; a clock id taken before the checkpoint names the old
//! pid, and reading it fails with EINVAL while that pid is free (README, scope). This test pins that
//! documented behaviour.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn cpu_clock_ids_name_the_process_of_their_pid() {
    let Some(py) = python() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = dir.join("img");
    let out = dir.join("out.txt");
    let script = dir.join("clock.py");
    // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED), as glibc's clock_getcpuclockid makes it.
    std::fs::write(
        &script,
        "import os, time, errno\ndef clock(pid):\n    return ((~pid) << 3) | 2\nfirst = os.getpid()\n\
         taken = clock(first)\nfor r in range(400):\n    x = 0\n    for i in range(20000):\n        x += i * i\n    \
         fresh = time.clock_gettime(clock(os.getpid())) > 0\n    try:\n        time.clock_gettime(taken)\n        \
         old = 'ok'\n    except OSError as e:\n        old = errno.errorcode[e.errno]\n    \
         print(r, 'restarted' if os.getpid() != first else 'first', fresh, old, flush=True)\n",
    )
    .unwrap();
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", img.to_str().unwrap(), "--"])
        .arg(&py)
        .arg(&script)
        .stdout(out_file(&out, false))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    kill(child.id(), libc::SIGUSR1);
    assert!(wait_for_events(dir, "checkpoint", 1, &mut child, Duration::from_secs(60)), "no checkpoint");
    kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
    let mut restart = command(&ckpt, dir);
    let mut child = restart
        .args(["restart", "--image-dir", img.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(120));
    assert!(status.success(), "the restarted program ended with {status:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 400, "{text}");
    let (first, restarted): (Vec<_>, Vec<_>) = lines.iter().partition(|l| l[1] == "first");
    assert!(!first.is_empty() && !restarted.is_empty(), "{text}");
    // Before the checkpoint both ids are this process's; after the restart a new query works and the old
    // id names the old (dead) pid.
    assert!(first.iter().all(|l| l[2] == "True" && l[3] == "ok"), "{text}");
    assert!(restarted.iter().all(|l| l[2] == "True"), "clock_getcpuclockid(getpid()) after the restart: {text}");
    assert!(restarted.iter().all(|l| l[3] == "EINVAL"), "a clock id taken before the checkpoint: {text}");
}
