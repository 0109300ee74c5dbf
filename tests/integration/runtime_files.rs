//! The files a running checkpointer keeps outside its checkpoints: the JSON log (never through a symlink
//! or into a file that is not ours) and the control sockets in the per-user runtime directory (removed at
//! exit, and those of processes that died removed at start).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ckpt_tests::{LiveChild, clean_command, log_events};

const TRIGGER: &str = env!("CARGO_BIN_EXE_ckpt-test-trigger");
const T: Duration = Duration::from_secs(20);

/// Runs the trigger program for a few steps with `env`, killing it after 20 s (a log open that blocks).
fn run(dir: &Path, env: &[(&str, &Path)]) -> Output {
    let mut cmd = clean_command(Path::new(TRIGGER), dir);
    cmd.args(["3", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + T;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON log never follows a symlink planted at its name: the file it points to is untouched, the
/// refusal is said on stderr naming the log, and the lines go to stderr. Before: appended to the target.
#[test]
fn the_log_never_follows_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"precious\n").unwrap();
    let log = dir.path().join("job.log");
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let o = run(dir.path(), &[("CKPT_LOG", &log)]);
    assert!(o.status.success(), "{:?} {}", o.status, stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n", "the symlink's target was written to");
    let err = stderr(&o);
    assert!(err.contains(&log.display().to_string()) && err.contains("symbolic link"), "{err}");
    assert!(err.contains("\"event\":\"start\""), "the log lines go to stderr instead: {err}");
}

/// A FIFO at the log's name is refused without blocking (before: the open waited for a reader forever),
/// a hard link to another file is refused, and a new log is created 0600 whatever the umask.
#[test]
fn the_log_is_a_private_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.log");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let started = Instant::now();
    let o = run(dir.path(), &[("CKPT_LOG", &fifo)]);
    assert!(o.status.success() && started.elapsed() < Duration::from_secs(10), "{:?} {}", o.status, stderr(&o));
    assert!(stderr(&o).contains("FIFO"), "{}", stderr(&o));

    let other = dir.path().join("notes.txt");
    std::fs::write(&other, b"mine\n").unwrap();
    let linked = dir.path().join("linked.log");
    std::fs::hard_link(&other, &linked).unwrap();
    let o = run(dir.path(), &[("CKPT_LOG", &linked)]);
    assert!(o.status.success());
    assert_eq!(std::fs::read(&other).unwrap(), b"mine\n");
    assert!(stderr(&o).contains("hard links"), "{}", stderr(&o));

    let fresh = dir.path().join("fresh.log");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("umask 022; exec {} 3 1", TRIGGER));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CKPT_") || k.starts_with("SLURM_")) {
        cmd.env_remove(k);
    }
    let o = cmd
        .env("CKPT_DIR", dir.path())
        .env("CKPT_LOG", &fresh)
        .env("CKPT_SOCKET_DIR", dir.path().join("sock"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o600);
    assert!(!log_events(&fresh, "start").is_empty());
}

/// A log file of another user is refused (needs root to create one; skipped otherwise).
#[test]
fn the_log_of_another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to create a file of another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs.log");
    std::fs::write(&theirs, b"theirs\n").unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let o = run(dir.path(), &[("CKPT_LOG", &theirs)]);
    assert!(o.status.success());
    assert_eq!(std::fs::read(&theirs).unwrap(), b"theirs\n");
    assert!(stderr(&o).contains("belongs to uid 65534"), "{}", stderr(&o));
}

fn sockets(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| n.ends_with(".sock"));
    v.sort();
    v
}

fn sock_name(pid: u32) -> String {
    format!("{pid}.-.-.sock")
}

/// A process killed with SIGKILL leaves its control socket; the next checkpointer to start in the same
/// runtime directory removes it (and says so in its log), and keeps the sockets of live processes.
/// Before: sockets of dead processes piled up forever.
#[test]
fn sockets_of_processes_that_died_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let spawn = |mode: &str| {
        let mut cmd = clean_command(Path::new(TRIGGER), dir.path());
        cmd.args(["100000", "10", mode]);
        let mut c = LiveChild::spawn(cmd);
        assert!(c.wait_for("ready", T).is_some(), "{:?}", c.seen);
        c
    };
    let mut killed = spawn("stall");
    let live = spawn("stall");
    let dead = killed.child.id();
    assert_eq!(sockets(&sock), {
        let mut v = vec![sock_name(dead), sock_name(live.child.id())];
        v.sort();
        v
    });
    killed.signal(libc::SIGKILL);
    let _ = killed.child.wait();
    assert!(sockets(&sock).contains(&sock_name(dead)), "SIGKILL leaves the socket behind");

    let newcomer = spawn("stall");
    let mut want = vec![sock_name(live.child.id()), sock_name(newcomer.child.id())];
    want.sort();
    assert_eq!(sockets(&sock), want, "the dead process's socket is removed, the live ones stay");
    let cleanups = log_events(&dir.path().join("ckpt.log"), "cleanup");
    assert!(cleanups.iter().any(|e| e["removed"][0] == sock_name(dead)), "{cleanups:?}");
}

/// The process's own socket goes when the checkpointer is dropped, and when the process exits without
/// dropping it (here: the program exits on a restore error with its checkpointer alive, as a C program
/// that never calls ckpt_finalize does). Before: the socket of a process that exited stayed.
#[test]
fn the_own_socket_is_removed_at_drop_and_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let mut cfg = ckpt_core::Config::new("own", dir.path()).unwrap();
    cfg.socket_dir = Some(sock.clone());
    let cp = ckpt_core::Checkpointer::new(ckpt_core::Store::new(cfg)).unwrap();
    let path: PathBuf = cp.socket_path().unwrap().to_path_buf();
    assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    drop(cp);
    assert!(!path.exists(), "the socket outlived its checkpointer");

    // A checkpoint that does not verify: the trigger program exits(3) on the restore error.
    std::fs::write(dir.path().join("trigger-test.ckpt"), b"not a checkpoint at all").unwrap();
    let mut cmd = clean_command(Path::new(TRIGGER), dir.path());
    let o = cmd.args(["3", "1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(sockets(&sock), Vec::<String>::new(), "the socket outlived its process");
}
