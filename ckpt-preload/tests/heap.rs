//! The program break after a restart. The restorer sets the kernel's break to the checkpoint's, so that
//! the restored malloc's next `sbrk` grows the heap where it ends. Before the fix the break stayed where
//! the restarting process had left it (higher, when the restarting process's own heap had grown past the
//! checkpoint's: the kernel refused to shrink a heap mapping that was already unmapped), and a later
//! `sbrk` mapped its memory above that break: a hole under the new memory, and a crash when the program
//! touched it (seen as a rare SIGSEGV of DMTCP's syscall-tester after a restart, and xz's second restart).
//!
//! The test program keeps a small heap of its own (no malloc, no stdio: its break stays near the start,
//! below what the restarting process uses), checks on every line that the break its libc remembers is the
//! kernel's, grows it with `sbrk` and writes the new memory, and shrinks it now and then; three restarts.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const HEAP_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void say(const char *s, long n) {
    char b[64];
    int k = snprintf(b, sizeof b, "%s %ld\n", s, n);
    if (write(1, b, k) != k) _exit(9);
}

static void spin(long n) {
    volatile long x = 0;
    for (long k = 0; k < n; k++) x += k;
}

int main(int argc, char **argv) {
    int lines = atoi(argv[1]);
    long work = atol(argv[2]);
    long grown = 0;
    for (int i = 0; i < lines; i++) {
        char *top = sbrk(0);
        long kernel = syscall(SYS_brk, 0);
        if ((long)top != kernel) { say("FAIL break differs from the kernel's, line", i); return 1; }
        if (i % 16 == 15) {
            if (sbrk(-grown) == (void *)-1) { say("FAIL shrink, line", i); return 1; }
            grown = 0;
        } else {
            char *p = sbrk(8192);
            if (p == (void *)-1) { say("FAIL sbrk, line", i); return 1; }
            memset(p, i & 0xff, 8192);
            grown += 8192;
        }
        say("ok", i);
        spin(work);
    }
    return 0;
}
"#;

fn heap_program() -> Option<PathBuf> {
    let dir = target_dir().join("shim-test-heap");
    std::fs::create_dir_all(&dir).unwrap();
    build_c(&dir, &format!("heap-{}", std::process::id()), HEAP_C, &["-O1"])
}

#[test]
fn the_program_break_is_the_checkpoints_after_each_restart() {
    let Some(bin) = heap_program() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("out.txt");
    let lines = 2400;
    let mut run = command(&ckpt, dir);
    // Many variables: the restarting process decodes each into an allocation of its own, so its heap
    // grows past the program's before the break is set (the case that went wrong).
    for i in 0..3000 {
        run.env(format!("HEAP_TEST_PAD_{i}"), "x".repeat(100));
    }
    let mut child = run
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .args([bin.to_str().unwrap(), &lines.to_string(), "2000000"])
        .stdout(out_file(&out, false))
        .stderr(out_file(&dir.join("err.txt"), false))
        .spawn()
        .unwrap();
    let count = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default().lines().count();
    for n in 1..=3 {
        let t = Instant::now();
        while count(&out) < n * lines / 5 {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("the program ended ({s:?}) before checkpoint {n}: {}", std::fs::read_to_string(&out).unwrap());
            }
            assert!(t.elapsed() < Duration::from_secs(120), "no progress before checkpoint {n}");
            std::thread::sleep(Duration::from_millis(5));
        }
        kill(child.id(), libc::SIGTERM);
        assert!(wait_for_events(dir, "checkpoint", n, &mut child, Duration::from_secs(60)), "no checkpoint {n}");
        let _ = wait_timeout(&mut child, Duration::from_secs(60));
        child = command(&ckpt, dir)
            .args(["restart", "--image-dir", dir.join("img").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(out_file(&dir.join("restart.err"), true))
            .spawn()
            .unwrap();
        assert!(
            wait_for_events(dir, "restored", n, &mut child, Duration::from_secs(60)),
            "restart {n}: {}",
            std::fs::read_to_string(dir.join("restart.err")).unwrap_or_default()
        );
    }
    let status = wait_timeout(&mut child, Duration::from_secs(300));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        status.success(),
        "the restarted program ended with {status:?}: {}",
        &text[text.len().saturating_sub(300)..]
    );
    let want: String = (0..lines).map(|i| format!("ok {i}\n")).collect();
    assert_eq!(text, want);
}
