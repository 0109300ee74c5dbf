//! The thread id glibc caches, over two restarts: a recursive and an error-checking mutex held across the
//! checkpoints still belong to the thread (glibc compares their owner with the cached tid), and the pthread
//! calls that hand the cached tid to the kernel for the calling thread (`pthread_getattr_np`, affinity,
//! scheduling) act on the restored thread. (DMTCP's mutex1, dlopen1 and dlopen2 in dmtcp.rs are the same
//! check with DMTCP's programs.)

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::*;

const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void check(const char *what, int rc) {
  if (rc != 0) { printf("ERROR %s: %s\n", what, strerror(rc)); fflush(stdout); exit(1); }
}

int main(void) {
  pthread_mutex_t rec, ec;
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init(&rec, &a);
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
  pthread_mutex_init(&ec, &a);
  check("lock recursive", pthread_mutex_lock(&rec));
  check("lock errorcheck", pthread_mutex_lock(&ec));
  for (unsigned long n = 0;; n++) {
    check("trylock recursive (held)", pthread_mutex_trylock(&rec));
    check("unlock recursive", pthread_mutex_unlock(&rec));
    if (pthread_mutex_lock(&ec) != EDEADLK) { printf("ERROR errorcheck mutex no longer ours\n"); exit(1); }
    pthread_attr_t at;
    check("pthread_getattr_np", pthread_getattr_np(pthread_self(), &at));
    pthread_attr_destroy(&at);
    cpu_set_t set;
    check("pthread_getaffinity_np", pthread_getaffinity_np(pthread_self(), sizeof set, &set));
    check("pthread_setaffinity_np", pthread_setaffinity_np(pthread_self(), sizeof set, &set));
    int policy; struct sched_param sp;
    check("pthread_getschedparam", pthread_getschedparam(pthread_self(), &policy, &sp));
    check("pthread_setschedparam", pthread_setschedparam(pthread_self(), policy, &sp));
    printf("ok %lu\n", n); fflush(stdout);
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
}
"#;

#[test]
fn held_mutexes_and_pthread_calls_on_self_survive_two_restarts() {
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(exe) = build_c(dir, "locks", PROGRAM, &["-O1", "-lpthread"]) else { return };
    let out = dir.join("out.txt");
    let mut last = -1i64;
    for cycle in 0..3 {
        let mut child = incarnation(&ckpt, dir, &exe, cycle);
        std::thread::sleep(Duration::from_millis(600));
        // Checkpoint and exit (the last cycle only checks the restored program runs).
        kill(child.id(), if cycle < 2 { libc::SIGTERM } else { libc::SIGKILL });
        let status = wait_timeout(&mut child, Duration::from_secs(60));
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(!text.contains("ERROR"), "cycle {cycle}: {text}");
        let n = text.lines().rev().find_map(|l| l.strip_prefix("ok ")?.parse::<i64>().ok()).unwrap_or(-1);
        assert!(n >= last + 3, "cycle {cycle}: no progress ({status:?}): {text}");
        last = n;
        let expected = if cycle < 2 { libc::SIGTERM } else { libc::SIGKILL };
        assert_eq!(status.signal(), Some(expected), "cycle {cycle}: {text}");
    }
    assert_eq!(events(dir, "checkpoint").len(), 2);
    assert_eq!(events(dir, "restored").len(), 2);
}

/// Calls on the calling thread that glibc makes with the cached tid, back to back: a checkpoint almost
/// always lands inside one (`pthread_getattr_np` reads `/proc/self/maps` before it asks the kernel for
/// the thread's affinity).
const BUSY_PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(const char *what, int rc) {
  if (rc != 0) { printf("ERROR %s: %s\n", what, strerror(rc)); fflush(stdout); exit(1); }
}

int main(void) {
  for (unsigned long n = 0;; n++) {
    pthread_attr_t at;
    check("pthread_getattr_np", pthread_getattr_np(pthread_self(), &at));
    pthread_attr_destroy(&at);
    cpu_set_t set;
    check("pthread_getaffinity_np", pthread_getaffinity_np(pthread_self(), sizeof set, &set));
    check("pthread_setaffinity_np", pthread_setaffinity_np(pthread_self(), sizeof set, &set));
    int policy; struct sched_param sp;
    check("pthread_getschedparam", pthread_getschedparam(pthread_self(), &policy, &sp));
    if (n % 100 == 0) { printf("ok %lu\n", n); fflush(stdout); }
  }
}
"#;

/// A checkpoint taken inside a pthread call on the calling thread of a restored process (while the
/// shim has put the kernel's tid in the thread control block for the call) resumes that call on the
/// restored thread: five restarts in a row, each checkpoint taken while the program does nothing but
/// such calls (before: "ERROR pthread_getattr_np: No such process" after the second restart, the call
/// went on with the previous incarnation's tid).
#[test]
fn a_checkpoint_inside_a_pthread_call_on_self_resumes_it_on_the_restored_thread() {
    let build = tempfile::tempdir().unwrap();
    let Some(exe) = build_c(build.path(), "busy", BUSY_PROGRAM, &["-O1", "-lpthread"]) else { return };
    restart_while_busy(&exe, 6, 300);
}
