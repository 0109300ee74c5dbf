//! Descriptors across checkpoint and restart: open file descriptions shared by several descriptors
//! (`> f 2>&1`, `&>> f`, a program's own `dup`) stay shared, through three restart cycles in a row;
//! descriptors inherited from the launcher that cannot be restored follow `CKPT_SHIM_FOREIGN_FDS`; the
//! restarted process shows its command line in `/proc/<pid>/cmdline`.
//!
//! The test program is a small C program (built with `cc`): it writes numbered lines through stdout and
//! stderr and, given a file, through a descriptor of that file and a `dup` of it, busy between lines.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

const FDSHARE_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void put(int fd, const char *tag, int i) {
    char b[64];
    int n = snprintf(b, sizeof b, "%s %d\n", tag, i);
    if (write(fd, b, n) != n) _exit(9);
}

static void spin(long n) {
    volatile long x = 0;
    for (long k = 0; k < n; k++) x += k;
}

/* More than a page of read-only data: the read-only segment and the RELRO segment then start at different
   file offsets. (With a one-page read-only segment both start at the same offset, which the layout check
   of this version takes for a moved layout at the second restart: issue 19's second item, fixed apart;
   these tests are about descriptors.) */
static const char rodata_pad[8192] __attribute__((used)) = {1};

/* fdshare LINES WORK [FILE]: per line, "out i" on stdout, "err i" on stderr and, with FILE, "f i" through
   a descriptor of FILE and "g i" through a dup of it. */
int main(int argc, char **argv) {
    int lines = atoi(argv[1]);
    long work = atol(argv[2]);
    int f = -1, g = -1;
    if (argc > 3) {
        f = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        g = dup(f);
        if (f < 0 || g < 0) return 8;
    }
    for (int i = 0; i < lines; i++) {
        put(1, "out", i);
        put(2, "err", i);
        if (f >= 0) {
            put(f, "f", i);
            put(g, "g", i);
        }
        spin(work);
    }
    return 0;
}
"#;

const LINES: usize = 6000;
const WORK: &str = "1000000";

/// The test program, built once per test process (None without a C compiler; under CI that fails).
fn fdshare() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let cc = which("cc")?;
        let dir = target_dir().join("shim-test-descriptors");
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("fdshare.c");
        std::fs::write(&src, FDSHARE_C).unwrap();
        let bin = dir.join(format!("fdshare-{}", std::process::id()));
        let o = Command::new(cc).arg("-O1").arg("-o").arg(&bin).arg(&src).output().unwrap();
        assert!(o.status.success(), "cc failed: {}", String::from_utf8_lossy(&o.stderr));
        Some(bin)
    })
    .clone()
}

fn expected(prefix: &[u8], tags: &[&str]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    for i in 0..LINES {
        for t in tags {
            v.extend_from_slice(format!("{t} {i}\n").as_bytes());
        }
    }
    v
}

fn log_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("ckpt.log")).unwrap_or_default()
}

/// Waits until `path` holds at least `len` bytes (the program is running and writing).
fn wait_for_len(path: &Path, len: u64, child: &mut Child, what: &str) {
    let t = Instant::now();
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < len {
        if let Ok(Some(s)) = child.try_wait() {
            let dir = path.parent().unwrap();
            let tail = |name: &str| {
                let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
                text.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            };
            panic!(
                "{what}: the program ended ({s:?}) before writing {len} bytes\noutput ends: {}\nerr: {}\nrestart.err: {}\nlog: {}",
                tail(path.file_name().unwrap().to_str().unwrap()),
                tail("err.txt"),
                tail("restart.err"),
                log_text(dir)
            );
        }
        assert!(t.elapsed() < Duration::from_secs(120), "{what}: {} never reached {len} bytes", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The restart command for the images in `dir`/img, its stdout and stderr on /dev/null (the image's
/// regular files come back from the image).
fn restart(dir: &Path) -> Child {
    let (ckpt, _) = tools();
    command(&ckpt, dir)
        .args(["restart", "--image-dir", dir.join("img").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join("restart.err")).unwrap(),
        ))
        .spawn()
        .unwrap()
}

/// Checkpoints the running program (`child`) three times in a row, each time once `out` has grown by a
/// sixth of `total` more bytes: SIGTERM (checkpoint and exit), SIGUSR1 then SIGKILL a little later (the
/// output written after the checkpoint is discarded on restart), SIGTERM; restarts after each. Returns the
/// last restarted process.
fn three_cycles(dir: &Path, out: &Path, total: usize, mut child: Child, what: &str) -> Child {
    for cycle in 0..3 {
        wait_for_len(out, (total * (cycle + 1) / 6) as u64, &mut child, what);
        let signal = if cycle == 1 { libc::SIGUSR1 } else { libc::SIGTERM };
        kill(child.id(), signal);
        assert!(
            wait_for_events(dir, "checkpoint", cycle + 1, &mut child, Duration::from_secs(60)),
            "{what}: no checkpoint {}; log: {}",
            cycle + 1,
            log_text(dir)
        );
        if signal == libc::SIGUSR1 {
            std::thread::sleep(Duration::from_millis(150));
            kill(child.id(), libc::SIGKILL);
            let _ = child.wait();
        } else {
            let status = wait_timeout(&mut child, Duration::from_secs(60));
            assert_eq!(status.signal(), Some(libc::SIGTERM), "{what}: after the TERM checkpoint");
        }
        child = restart(dir);
        assert!(
            wait_for_events(dir, "restored", cycle + 1, &mut child, Duration::from_secs(60)),
            "{what}: restart {} did not restore; stderr: {}",
            cycle + 1,
            std::fs::read_to_string(dir.join("restart.err")).unwrap_or_default()
        );
    }
    child
}

fn finish(mut child: Child, dir: &Path, what: &str) {
    let status = wait_timeout(&mut child, Duration::from_secs(300));
    assert!(
        status.success(),
        "{what}: the restarted run ended with {status:?}; stderr: {}",
        std::fs::read_to_string(dir.join("restart.err")).unwrap_or_default()
    );
    assert_eq!(events(dir, "restored").len(), 3, "{what}: three restarts");
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        let show = |b: &[u8]| String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())]).into_owned();
        panic!(
            "{what}: differs from the uninterrupted run at byte {at} (got {} bytes, expected {}):\n got: {:?}\nwant: {:?}",
            got.len(),
            want.len(),
            show(got),
            show(want)
        );
    }
}

/// `> out 2>&1` (or `&>> out` with `append`) and a file written through a descriptor and its `dup`.
fn shared_descriptions(append: bool, env: &[(&str, &str)]) -> tempfile::TempDir {
    let (ckpt, _) = tools();
    let bin = fdshare().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("out.txt");
    let dupped = dir.join("dupped.txt");
    let prefix: &[u8] = if append { b"earlier output\n" } else { b"" };
    std::fs::write(&out, prefix).unwrap();
    let what = if append { "&>> out" } else { "> out 2>&1" };
    let child = {
        let stdout = std::fs::OpenOptions::new().write(true).append(append).truncate(!append).open(&out).unwrap();
        // 2>&1: the same open file description (dup), as the shell makes it.
        let stderr = stdout.try_clone().unwrap();
        let mut cmd = command(&ckpt, dir);
        cmd.args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
            .arg(&bin)
            .args([&LINES.to_string(), WORK, dupped.to_str().unwrap()])
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
        // The test's own descriptors of the file are closed here (it is not "also written by the parent").
    };
    let want = expected(prefix, &["out", "err"]);
    let child = three_cycles(dir, &out, want.len(), child, what);
    finish(child, dir, what);
    assert_same(&std::fs::read(&out).unwrap(), &want, what);
    assert_same(&std::fs::read(&dupped).unwrap(), &expected(b"", &["f", "g"]), &format!("{what}: the dup'ed file"));
    for c in events(dir, "checkpoint") {
        assert_eq!(c["shared_fds"], 2, "{what}: fd 2 and the program's dup are shared: {c}");
    }
    tmp
}

#[test]
fn stdout_and_stderr_on_one_file_through_three_restarts() {
    if fdshare().is_none() {
        return;
    }
    let tmp = shared_descriptions(false, &[]);
    assert!(events(tmp.path(), "checkpoint").iter().all(|c| c["fd_sharing_by"] == "kcmp"));
}

#[test]
fn appending_stdout_and_stderr_through_three_restarts() {
    if fdshare().is_none() {
        return;
    }
    shared_descriptions(true, &[]);
}

/// Without kcmp (seccomp or YAMA can forbid it), the probe finds the same groups.
#[test]
fn shared_descriptions_found_without_kcmp() {
    if fdshare().is_none() {
        return;
    }
    let tmp = shared_descriptions(false, &[("CKPT_SHIM_NO_KCMP", "1")]);
    assert!(events(tmp.path(), "checkpoint").iter().all(|c| c["fd_sharing_by"] == "probe"));
}

/// A pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two new descriptors, owned below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both were just created and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// `ckpt run` of the test program with `extra` moved to descriptor 7 (a launcher's pipe the program never
/// uses), stdout on `out`. Every other descriptor above stderr is closed.
fn run_with_fd7(dir: &Path, extra: &OwnedFd, policy: Option<&str>) -> Child {
    let (ckpt, _) = tools();
    let bin = fdshare().unwrap();
    let mut cmd = Command::new(&ckpt);
    for (k, _) in std::env::vars() {
        if ["CKPT_", "SLURM_", "LD_PRELOAD"].iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(k);
        }
    }
    cmd.env("LC_ALL", "C")
        .env("CKPT_LOG", dir.join("ckpt.log"))
        .env("CKPT_SOCKET_DIR", dir.join("sock"))
        .env("CKPT_PRELOAD_LIB", tools().1)
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .arg(&bin)
        .args([&LINES.to_string(), WORK])
        .stdout(out_file(&dir.join("out.txt"), false))
        .stderr(out_file(&dir.join("err.txt"), false));
    if let Some(p) = policy {
        cmd.env("CKPT_SHIM_FOREIGN_FDS", p);
    }
    let raw = extra.as_raw_fd();
    // SAFETY: dup2 and close_range are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 7) != 7 {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_close_range, 3u32, 6u32, 0u32);
            libc::syscall(libc::SYS_close_range, 8u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn fd_target(pid: u32, fd: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()
}

/// A launcher's pipe left open at fd 7: checkpoints work (the descriptor is recorded as foreign), the
/// restart warns and gives the program /dev/null there (or nothing, with `close`), and the output is exact.
fn foreign_pipe(policy: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_reader, writer) = pipe();
    let mut child = run_with_fd7(dir, &writer, policy);
    drop(writer);
    let out = dir.join("out.txt");
    let want = expected(b"", &["out"]);
    wait_for_len(&out, want.len() as u64 / 4, &mut child, "fd 7");
    assert!(fd_target(child.id(), 7).is_some_and(|p| p.to_string_lossy().starts_with("pipe:")));
    kill(child.id(), libc::SIGTERM);
    assert!(
        wait_for_events(dir, "checkpoint", 1, &mut child, Duration::from_secs(60)),
        "no checkpoint with a launcher's pipe at fd 7; stderr: {}; log: {}",
        std::fs::read_to_string(dir.join("err.txt")).unwrap_or_default(),
        log_text(dir)
    );
    assert_eq!(wait_timeout(&mut child, Duration::from_secs(60)).signal(), Some(libc::SIGTERM));
    let as_what = if policy == Some("close") { "closed" } else { "/dev/null" };
    let ck = &events(dir, "checkpoint")[0];
    assert_eq!(ck["foreign_fds"][0]["fd"], 7, "{ck}");
    assert!(ck["foreign_fds"][0]["was"].as_str().unwrap().starts_with("pipe:["), "{ck}");
    assert_eq!(ck["foreign_fds"][0]["restored_as"], as_what, "{ck}");
    let mut child = restart(dir);
    assert!(wait_for_events(dir, "restored", 1, &mut child, Duration::from_secs(60)));
    let now = fd_target(child.id(), 7);
    match policy {
        Some("close") => assert_eq!(now, None, "fd 7 stays closed"),
        _ => assert_eq!(now.as_deref(), Some(Path::new("/dev/null")), "fd 7 is /dev/null"),
    }
    // The access mode of the launcher's pipe end (write) is kept.
    if now.is_some() {
        let info = std::fs::read_to_string(format!("/proc/{}/fdinfo/7", child.id())).unwrap();
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim().to_string();
        assert_eq!(i32::from_str_radix(&flags, 8).unwrap() & libc::O_ACCMODE, libc::O_WRONLY, "the pipe's access mode");
    }
    let status = wait_timeout(&mut child, Duration::from_secs(300));
    let err = std::fs::read_to_string(dir.join("restart.err")).unwrap_or_default();
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("descriptor 7 (pipe:[") && err.contains(&format!("restored as {as_what}")), "{err}");
    let logged = events(dir, "foreign-fd");
    assert!(logged.len() == 1 && logged[0]["fd"] == 7 && logged[0]["restored_as"] == as_what, "{logged:?}");
    assert_same(&std::fs::read(&out).unwrap(), &want, "fd 7");
}

#[test]
fn a_launchers_pipe_is_restored_as_dev_null() {
    if fdshare().is_none() {
        return;
    }
    foreign_pipe(None);
}

#[test]
fn a_launchers_pipe_is_restored_closed_when_asked() {
    if fdshare().is_none() {
        return;
    }
    foreign_pipe(Some("close"));
}

#[test]
fn a_launchers_pipe_refuses_the_checkpoint_when_asked() {
    if fdshare().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_reader, writer) = pipe();
    let mut child = run_with_fd7(dir, &writer, Some("refuse"));
    drop(writer);
    wait_for_len(&dir.join("out.txt"), 1000, &mut child, "refuse");
    kill(child.id(), libc::SIGUSR1);
    assert!(wait_for_events(dir, "checkpoint-refused", 1, &mut child, Duration::from_secs(60)), "{}", log_text(dir));
    let reason = events(dir, "checkpoint-refused")[0]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("fd 7 is a pipe") && reason.contains("CKPT_SHIM_FOREIGN_FDS=refuse"), "{reason}");
    kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
    assert!(std::fs::read_to_string(dir.join("err.txt")).unwrap().contains("fd 7 is a pipe"));
    assert!(events(dir, "checkpoint").is_empty());
}

#[test]
fn a_misspelled_foreign_fd_setting_is_an_error_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (ckpt, _) = tools();
    let o = command(&ckpt, tmp.path())
        .env("CKPT_SHIM_FOREIGN_FDS", "null")
        .args(["run", "--", "/bin/true"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("CKPT_SHIM_FOREIGN_FDS") && err.contains("devnull, close, refuse"), "{err}");
}

/// A descriptor above stderr that shares stdin's open file (`exec 7<&0`, stdin a pipe) is restored as a
/// duplicate of the restart command's stdin, not as a foreign descriptor.
#[test]
fn a_duplicate_of_stdin_follows_the_restart_commands_stdin() {
    if fdshare().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (reader, _writer) = pipe();
    let (ckpt, _) = tools();
    let bin = fdshare().unwrap();
    let mut cmd = command(&ckpt, dir);
    cmd.args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .arg(&bin)
        .args([&LINES.to_string(), WORK])
        .stdin(Stdio::from(reader))
        .stdout(out_file(&dir.join("out.txt"), false))
        .stderr(out_file(&dir.join("err.txt"), false));
    // SAFETY: dup2 is async-signal-safe (runs after command()'s close_range).
    unsafe {
        cmd.pre_exec(|| {
            if libc::dup2(0, 7) != 7 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let out = dir.join("out.txt");
    let want = expected(b"", &["out"]);
    wait_for_len(&out, want.len() as u64 / 4, &mut child, "7<&0");
    kill(child.id(), libc::SIGTERM);
    assert!(wait_for_events(dir, "checkpoint", 1, &mut child, Duration::from_secs(60)), "{}", log_text(dir));
    assert_eq!(wait_timeout(&mut child, Duration::from_secs(60)).signal(), Some(libc::SIGTERM));
    assert_eq!(events(dir, "checkpoint")[0]["foreign_fds"], serde_json::json!([]));
    // The restart's stdin: another pipe.
    let (reader2, _writer2) = pipe();
    let (ckpt, _) = tools();
    let mut child = command(&ckpt, dir)
        .args(["restart", "--image-dir", dir.join("img").to_str().unwrap()])
        .stdin(Stdio::from(reader2))
        .stdout(Stdio::null())
        .stderr(out_file(&dir.join("restart.err"), false))
        .spawn()
        .unwrap();
    assert!(wait_for_events(dir, "restored", 1, &mut child, Duration::from_secs(60)));
    let (zero, seven) = (fd_target(child.id(), 0), fd_target(child.id(), 7));
    assert!(zero.as_ref().is_some_and(|p| p.to_string_lossy().starts_with("pipe:")), "{zero:?}");
    assert_eq!(zero, seven, "fd 7 is the restart command's stdin");
    assert!(wait_timeout(&mut child, Duration::from_secs(300)).success());
    assert_same(&std::fs::read(&out).unwrap(), &want, "7<&0");
}

/// `/proc/<pid>/cmdline` of a restarted process (what ps, pgrep -f and scancel scripts read) is the
/// original command line, after each of two restarts.
#[test]
fn the_restarted_process_shows_its_command_line() {
    let Some(bin) = fdshare() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let argv = [bin.to_str().unwrap().to_string(), LINES.to_string(), WORK.to_string()];
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .args(&argv)
        .stdout(out_file(&dir.join("out.txt"), false))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = dir.join("out.txt");
    let total = expected(b"", &["out"]).len() as u64;
    for cycle in 0..2 {
        wait_for_len(&out, total * (cycle + 1) / 4, &mut child, "cmdline");
        kill(child.id(), libc::SIGTERM);
        assert!(wait_for_events(dir, "checkpoint", cycle as usize + 1, &mut child, Duration::from_secs(60)));
        let _ = wait_timeout(&mut child, Duration::from_secs(60));
        child = restart(dir);
        assert!(wait_for_events(dir, "restored", cycle as usize + 1, &mut child, Duration::from_secs(60)));
        let got = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "cmdline after restart {}",
            cycle + 1
        );
        let restored = events(dir, "restored");
        assert_eq!(restored[cycle as usize]["cmdline"], true, "{restored:?}");
    }
    assert!(wait_timeout(&mut child, Duration::from_secs(300)).success());
}

const PROCFDS_C: &str = r#"
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void spin(long n) {
    volatile long x = 0;
    for (long k = 0; k < n; k++) x += k;
}

/* procfds LINES WORK [PEER]: holds /proc/self/fd (a directory), /proc/self/status, /proc/<pid>/stat (its own
   pid spelled out), /proc/thread-self/comm and /proc/meminfo open; per line, checks through each that they
   describe the process as it is now (its pid after a restart), and prints "ok i". With PEER (a pid), also
   holds /proc/PEER/status open. */
int main(int argc, char **argv) {
    int lines = atoi(argv[1]);
    long work = atol(argv[2]);
    char path[64];
    int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY);
    int status = open("/proc/self/status", O_RDONLY);
    snprintf(path, sizeof path, "/proc/%d/stat", (int)getpid());
    int stat = open(path, O_RDONLY);
    int comm = open("/proc/thread-self/comm", O_RDONLY);
    int meminfo = open("/proc/meminfo", O_RDONLY);
    if (dir < 0 || status < 0 || stat < 0 || comm < 0 || meminfo < 0) return 8;
    if (argc > 3) {
        snprintf(path, sizeof path, "/proc/%s/status", argv[3]);
        if (open(path, O_RDONLY) < 0) return 8;
    }
    char buf[4096], want[64];
    for (int i = 0; i < lines; i++) {
        struct stat st;
        /* The directory is this process's fd table: the status descriptor is in it. */
        snprintf(want, sizeof want, "%d", status);
        if (fstatat(dir, want, &st, 0) != 0) { printf("FAIL fd dir %d\n", i); return 1; }
        /* The pid changes at a restart, which may come between a read and the comparison: compare only
           what was read within one incarnation (the same pid before and after), else read again. */
        int pid;
        ssize_t n;
        do {
            pid = getpid();
            n = pread(status, buf, sizeof buf - 1, 0);
        } while (getpid() != pid);
        if (n <= 0) { printf("FAIL status %d\n", i); return 1; }
        buf[n] = 0;
        snprintf(want, sizeof want, "\nPid:\t%d\n", pid);
        if (!strstr(buf, want)) { printf("FAIL status pid %d\n", i); return 1; }
        do {
            pid = getpid();
            n = pread(stat, buf, sizeof buf - 1, 0);
        } while (getpid() != pid);
        if (n <= 0 || atoi(buf) != pid) {
            if (n > 0) buf[n < 60 ? n : 60] = 0; else buf[0] = 0;
            printf("FAIL stat pid %d: read %zd bytes \"%s\", pid %d\n", i, n, buf, pid);
            return 1;
        }
        n = pread(comm, buf, sizeof buf - 1, 0);
        if (n <= 0) { printf("FAIL comm %d\n", i); return 1; }
        n = pread(meminfo, buf, sizeof buf - 1, 0);
        if (n <= 0 || strncmp(buf, "MemTotal:", 9) != 0) { printf("FAIL meminfo %d\n", i); return 1; }
        printf("ok %d\n", i);
        fflush(stdout);
        spin(work);
    }
    return 0;
}
"#;

fn procfds() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = target_dir().join("shim-test-descriptors");
        std::fs::create_dir_all(&dir).unwrap();
        build_c(&dir, &format!("procfds-{}", std::process::id()), PROCFDS_C, &["-O1"])
    })
    .clone()
}

/// Descriptors of the program's own `/proc` entry (`/proc/self/...`, `/proc/<its pid>/...`,
/// `/proc/thread-self/...`) and of other `/proc` files are reopened in the restored process, naming the
/// restored process, through three restarts (before: the restart refused the image, "file descriptor 3
/// (/proc/2921/fd): No such file or directory", and the job was lost at its time limit).
#[test]
fn own_proc_descriptors_name_the_restored_process() {
    let Some(bin) = procfds() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("out.txt");
    let lines = 3000;
    let child = command(&ckpt, dir)
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .args([bin.to_str().unwrap(), &lines.to_string(), "2000000"])
        .stdout(out_file(&out, false))
        .stderr(out_file(&dir.join("err.txt"), false))
        .spawn()
        .unwrap();
    let want: String = (0..lines).map(|i| format!("ok {i}\n")).collect();
    let child = three_cycles(dir, &out, want.len(), child, "/proc descriptors");
    finish(child, dir, "/proc descriptors");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), want);
}

/// A descriptor of another process's `/proc` entry cannot be reached from a restart: the checkpoint is
/// refused with a message naming it, and the program goes on.
#[test]
fn another_process_proc_descriptor_refuses_the_checkpoint() {
    let Some(bin) = procfds() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("out.txt");
    let peer = std::process::id().to_string();
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .args([bin.to_str().unwrap(), "100000", "2000000", &peer])
        .stdout(out_file(&out, false))
        .stderr(out_file(&dir.join("err.txt"), false))
        .spawn()
        .unwrap();
    wait_for_len(&out, 100, &mut child, "peer /proc");
    kill(child.id(), libc::SIGUSR1);
    assert!(wait_for_events(dir, "checkpoint-refused", 1, &mut child, Duration::from_secs(60)), "{}", log_text(dir));
    let reason = events(dir, "checkpoint-refused")[0]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains(&format!("/proc/{peer}/status")) && reason.contains("another process"), "{reason}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "the program goes on after a refusal");
    kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
}
