//! A 2 TiB `MAP_NORESERVE` reservation with a few touched pages (ThreadSanitizer's shadow memory; DMTCP's
//! mmap-noreserve in dmtcp.rs runs it through three cycles): the checkpoint skips the untouched pages
//! (`PAGEMAP_SCAN`) instead of reading 2 TiB of page entries, and the restart maps the region back with
//! `MAP_NORESERVE` (`nr` in the restored process's smaps), its touched pages intact.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;

const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>

#define BYTES ((size_t)2 << 40)

int main(void) {
  unsigned char *r = mmap(NULL, BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) { printf("ERROR mmap\n"); return 1; }
  size_t at[3] = {65536, BYTES / 2, BYTES - 65536};
  for (int i = 0; i < 3; i++) r[at[i]] = 17 + i;
  printf("region %p\n", (void *)r); fflush(stdout);
  for (unsigned long n = 0;; n++) {
    for (int i = 0; i < 3; i++)
      if (r[at[i]] != 17 + i) { printf("ERROR page %d lost\n", i); fflush(stdout); return 1; }
    printf("ok %lu\n", n); fflush(stdout);
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
}
"#;

#[test]
fn a_huge_noreserve_region_is_checkpointed_quickly_and_mapped_back() {
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = dir.join("img");
    let Some(exe) = build_c(dir, "nr", PROGRAM, &["-O1"]) else { return };
    let out = dir.join("out.txt");
    let mut child = command(&ckpt, dir)
        .arg("run")
        .arg("--dir")
        .arg(&img)
        .arg("--")
        .arg(&exe)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    kill(child.id(), libc::SIGTERM);
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{:?}", std::fs::read_to_string(&out));
    let cps = events(dir, "checkpoint");
    assert_eq!(cps.len(), 1, "{:?}", std::fs::read_to_string(dir.join("ckpt.log")));
    let write_ms = cps[0]["write_ms"].as_f64().unwrap_or(f64::MAX);
    // Before: 3.0 s to read the page entries of 2 TiB.
    assert!(write_ms < 1000.0, "the checkpoint took {write_ms} ms");
    let text = std::fs::read_to_string(&out).unwrap();
    let region = text.lines().find_map(|l| l.strip_prefix("region 0x")).expect("region line").to_string();
    let mut restarted = command(&ckpt, dir)
        .arg("restart")
        .arg("--image-dir")
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("err.txt")).unwrap()))
        .spawn()
        .unwrap();
    assert!(
        wait_for_events(dir, "restored", 1, &mut restarted, Duration::from_secs(60)),
        "not restored: {:?}",
        std::fs::read_to_string(dir.join("err.txt"))
    );
    std::thread::sleep(Duration::from_millis(300));
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", restarted.id())).unwrap_or_default();
    let _ = restarted.kill();
    let _ = restarted.wait();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("ERROR"), "{text}");
    // The region's smaps entry (possibly split by the pages mapped from the image) has `nr`.
    let lines: Vec<&str> = smaps.lines().collect();
    let start = lines.iter().position(|l| l.starts_with(&region)).expect("the region in the restored smaps");
    let flags = lines[start..].iter().find(|l| l.starts_with("VmFlags:")).unwrap();
    assert!(flags.split_whitespace().any(|f| f == "nr"), "not MAP_NORESERVE after the restart: {flags}");
}
