//! POSIX timers of the program's own (`timer_create`) are not restored yet: the checkpoint is refused with
//! a message naming them (before, it was accepted and the restarted program got no more timer signals),
//! and the program goes on. (DMTCP's timer1 in dmtcp.rs is the same check; the shim's own interval timer
//! does not count: triggers.rs.)

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <time.h>

int main(void) {
  timer_t t;
  struct sigevent ev = {0};
  ev.sigev_notify = SIGEV_NONE;
  if (timer_create(CLOCK_MONOTONIC, &ev, &t) != 0) { printf("ERROR timer_create\n"); return 1; }
  struct itimerspec its = {{1, 0}, {1, 0}};
  timer_settime(t, 0, &its, NULL);
  for (unsigned long n = 0;; n++) {
    printf("ok %lu\n", n); fflush(stdout);
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
}
"#;

#[test]
fn a_program_with_posix_timers_is_refused_with_a_message() {
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(exe) = build_c(dir, "timers", PROGRAM, &["-lrt"]) else { return };
    let out = dir.join("out.txt");
    let mut child = command(&ckpt, dir)
        .arg("run")
        .arg("--dir")
        .arg(dir.join("img"))
        .arg("--")
        .arg(&exe)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(dir.join("err.txt")).unwrap()))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    kill(child.id(), libc::SIGUSR1);
    let refused = wait_for_events(dir, "checkpoint-refused", 1, &mut child, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(refused, "not refused: {:?}", std::fs::read_to_string(dir.join("ckpt.log")));
    let reason = events(dir, "checkpoint-refused")[0]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("1 POSIX timer"), "{reason}");
    assert!(std::fs::read_to_string(dir.join("err.txt")).unwrap().contains("POSIX timer"));
    assert!(events(dir, "checkpoint").is_empty());
    assert!(running, "the program must go on after the refusal");
}
