//! Process trees under the shim: a shell pipeline, `popen`, and forked workers talking through pipes,
//! checkpointed together, killed (the whole process group, as a node failure or `scancel` does) or ended
//! by the checkpoint-and-exit signal, and restarted, three times in a row. Output goes to one file,
//! `> out 2>&1` (the processes share its open file description) and must equal an uninterrupted run's
//! byte for byte. A child that does not run the shim refuses the checkpoint with a message naming it.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CYCLES: usize = 3;

/// A C program of `tests/programs/`, built once.
fn program(name: &str) -> Option<String> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs").join(format!("{name}.c"));
    let exe = inputs().join(format!("tree-{name}"));
    if !exe.exists()
        || std::fs::metadata(&exe).unwrap().modified().unwrap() < std::fs::metadata(&src).unwrap().modified().unwrap()
    {
        let tmp = inputs().join(format!("tree-{name}.tmp"));
        let cc = which("cc")?;
        let o = Command::new(cc).args(["-O2", "-o"]).arg(&tmp).arg(&src).output().unwrap();
        assert!(o.status.success(), "cc {name}: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::rename(&tmp, &exe).unwrap();
    }
    Some(exe.display().to_string())
}

fn read(dir: &Path, name: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(dir.join(name)).unwrap_or_default()).into_owned()
}

/// Whether any process of the process group `pgid` is alive.
fn group_alive(pgid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks.
    unsafe { libc::kill(-(pgid as i32), 0) == 0 }
}

fn kill_group(pgid: u32) {
    // SAFETY: kills the process group the test created.
    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
}

/// Runs `argv` (in `dir`) to the end without the shim: the reference output.
fn reference(dir: &Path, argv: &[String]) -> Vec<u8> {
    let o = Command::new(&argv[0]).args(&argv[1..]).current_dir(dir).stderr(Stdio::inherit()).output().unwrap();
    assert!(o.status.success(), "reference run of {argv:?}: {:?}", o.status);
    o.stdout
}

/// Checkpoint, kill (or checkpoint-and-exit) and restart `argv` CYCLES times; the output and the files
/// named in `extra_outputs` must equal the uninterrupted run's.
fn tree_cycles(name: &str, argv: Vec<String>, signal: i32, to_group: bool, delay: Duration, extra_outputs: &[&str]) {
    // A run that finished before its last checkpoint (a busy machine runs the program faster than the
    // delays assume, or slower) is tried again; anything else fails at once.
    for attempt in 0..4 {
        match tree_cycles_once(name, &argv, signal, to_group, delay, extra_outputs) {
            Ok(()) => return,
            Err(e) if attempt == 3 => panic!("{name}: the program always finished before the last checkpoint: {e}"),
            Err(e) => eprintln!("{name}: finished before the last checkpoint, again: {e}"),
        }
    }
}

/// One run of [`tree_cycles`]; `Err` when the program finished before the last checkpoint.
fn tree_cycles_once(
    name: &str,
    argv: &[String],
    signal: i32,
    to_group: bool,
    delay: Duration,
    extra_outputs: &[&str],
) -> Result<(), String> {
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let expected = reference(dir, argv);
    let expected_extra: Vec<Vec<u8>> = extra_outputs.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect();
    for f in extra_outputs {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    let img = dir.join("img");
    let out = dir.join("out.txt");
    let stdout = std::fs::File::create(&out).unwrap();
    let stderr = stdout.try_clone().unwrap();
    let mut child: Child = command(&ckpt, dir)
        .current_dir(dir)
        .args(["run", "--dir", img.to_str().unwrap(), "--"])
        .args(argv)
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap();
    let diagnostics = |dir: &Path| {
        format!(
            "output tail: {:?}\nrestart: {}\nlog: {}",
            {
                let o = read(dir, "out.txt");
                o[o.len().saturating_sub(300)..].to_string()
            },
            read(dir, "restart.txt"),
            read(dir, "ckpt.log")
        )
    };
    let mut rng = Rng::new(seed(name));
    for g in 0..CYCLES {
        std::thread::sleep(delay.mul_f64(rng.between(0.5, 1.0)));
        if to_group {
            // As Slurm's `--signal` and `scancel --signal` do: every process of the step.
            // SAFETY: signals the process group the test created.
            unsafe { libc::kill(-(child.id() as i32), signal) };
        } else {
            kill(child.id(), signal);
        }
        if !wait_for_events(dir, "checkpoint", g + 1, &mut child, Duration::from_secs(60)) {
            let status = child.try_wait().unwrap();
            kill_group(child.id());
            let quiet = events(dir, "checkpoint-failed").is_empty() && events(dir, "checkpoint-refused").is_empty();
            if status.is_some_and(|s| s.success()) && quiet {
                let o = read(dir, "out.txt");
                return Err(format!("cycle {}; output ends {:?}", g + 1, &o[o.len().saturating_sub(120)..]));
            }
            panic!("{name}: cycle {}: no checkpoint (root: {status:?}); {}", g + 1, diagnostics(dir));
        }
        let ck = &events(dir, "checkpoint")[g];
        assert!(ck["processes"].as_u64().unwrap_or(1) > 1, "{name}: the checkpoint holds one process: {ck}");
        if signal == libc::SIGTERM {
            let status = wait_timeout(&mut child, Duration::from_secs(60));
            assert_eq!(status.signal(), Some(libc::SIGTERM), "{name}: cycle {}: {status:?}", g + 1);
            // The members end with the root once the image is committed.
            let start = std::time::Instant::now();
            while group_alive(child.id()) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(!group_alive(child.id()), "{name}: cycle {}: members outlived the checkpoint-and-exit", g + 1);
        } else {
            std::thread::sleep(Duration::from_millis(50));
            kill_group(child.id());
            let _ = child.wait();
        }
        let errors = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("restart.txt")).unwrap();
        child = command(&ckpt, dir)
            .args(["restart", "--image-dir", img.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(errors)
            .process_group(0)
            .spawn()
            .unwrap();
        if !wait_for_events(dir, "restored", 0, &mut child, Duration::from_secs(1)) || {
            let start = std::time::Instant::now();
            while root_restores(dir) < g + 1 && start.elapsed() < Duration::from_secs(60) {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            root_restores(dir) < g + 1
        } {
            let status = child.try_wait().unwrap();
            kill_group(child.id());
            panic!("{name}: restart {} failed ({status:?}); {}", g + 1, diagnostics(dir));
        }
    }
    let status = wait_timeout(&mut child, Duration::from_secs(120));
    kill_group(child.id());
    assert!(status.success(), "{name}: the last restarted run ended with {status:?}; {}", diagnostics(dir));
    let got = std::fs::read(&out).unwrap();
    assert!(
        got == expected,
        "{name}: output differs from the uninterrupted run (got {} bytes, expected {}); {}",
        got.len(),
        expected.len(),
        diagnostics(dir)
    );
    for (f, want) in extra_outputs.iter().zip(&expected_extra) {
        assert!(std::fs::read(dir.join(f)).unwrap() == *want, "{name}: {f} differs from the uninterrupted run's");
    }
    assert!(
        events(dir, "checkpoint-failed").is_empty() && events(dir, "checkpoint-refused").is_empty(),
        "{name}: {}",
        diagnostics(dir)
    );
    Ok(())
}

fn s(p: impl AsRef<Path>) -> String {
    p.as_ref().display().to_string()
}

fn pipeline() -> Option<Vec<String>> {
    which("mawk")?;
    Some(vec![
        "sh".into(),
        "-c".into(),
        "seq 1 24000000 | mawk '{ s += $1 } NR % 1000000 == 0 { print NR, s; fflush() }'".into(),
    ])
}

/// `sh -c 'seq | mawk'`: three processes, a pipe between two exec'd members, the root waiting for them;
/// mawk writes to the output file it shares with the shell. Checkpoint (USR1), kill the process group,
/// restart.
#[test]
fn shell_pipeline_three_cycles_usr1() {
    let Some(argv) = pipeline() else { return };
    tree_cycles("pipeline, USR1", argv, libc::SIGUSR1, false, Duration::from_millis(700), &[]);
}

/// The same with SIGTERM (checkpoint and exit): the members end once the image is committed.
#[test]
fn shell_pipeline_three_cycles_term() {
    let Some(argv) = pipeline() else { return };
    tree_cycles("pipeline, TERM", argv, libc::SIGTERM, false, Duration::from_millis(700), &[]);
}

/// Three forked workers (no exec), two pipes each, requests and answers in flight at the checkpoint; at
/// the end the parent reaches each worker by the pid fork gave it (`kill`, `waitpid`) and each worker
/// checks `getppid()`: pids the program kept stay valid after every restart.
#[test]
fn forked_workers_three_cycles() {
    workers_cycles("workers", false);
}

/// The workers program through three cycles with USR1 (to the root, or to every process).
fn workers_cycles(name: &str, to_group: bool) {
    let Some(exe) = program("workers") else { return };
    let argv = vec![exe, "8000".into(), "200000".into(), "3".into()];
    tree_cycles(name, argv, libc::SIGUSR1, to_group, Duration::from_millis(500), &[]);
}

/// `popen(..., "w")` to a shell running mawk, which writes a file of its own: the pipe's unread bytes are
/// put back at every restart, and pclose's status is the command's.
#[test]
fn popen_three_cycles() {
    let Some(exe) = program("popen") else { return };
    if which("mawk").is_none() {
        return;
    }
    let cmd = "mawk '{ s += $1 } NR % 500 == 0 { print NR, s; fflush() }' > mawk.txt";
    tree_cycles(
        "popen",
        vec![exe, "60000".into(), "20000".into(), cmd.into()],
        libc::SIGUSR1,
        false,
        Duration::from_millis(400),
        &["mawk.txt"],
    );
}

/// USR1 to every process of the tree, as `sbatch --signal=USR1@90` (without `B:`) sends it: the members
/// leave the request to the root (without the shim, USR1 would kill them).
#[test]
fn workers_signalled_together_three_cycles_usr1() {
    workers_cycles("workers, USR1 to all", true);
}

/// TERM to every process, as Slurm does at the time limit: the members wait for the root's checkpoint
/// and end after it.
#[test]
fn pipeline_signalled_together_three_cycles_term() {
    let Some(argv) = pipeline() else { return };
    tree_cycles("pipeline, TERM to all", argv, libc::SIGTERM, true, Duration::from_millis(700), &[]);
}

/// A Python parent blocked in `subprocess.Popen.wait()` (`waitpid(child)`) at every checkpoint: the
/// kernel restarts the wait after the restore, and it must wait for the child as it is now. Before, the
/// restarted wait named the child's checkpoint-time pid, failed with ECHILD, and Python took that for an
/// exit status of 0: the run ended with "child exit status 0" where the child exits with 7, silently.
#[test]
fn a_parent_waiting_for_its_child_in_python_gets_the_childs_status_through_three_cycles() {
    let Some(py) = python() else { return };
    let child = "import sys\nfor i in range(1500):\n    sum(k * k for k in range(160000))\n    print('child', i, flush=True)\nsys.exit(7)";
    let parent = format!(
        "import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', {child:?}])\nprint('child exit status', p.wait(), flush=True)"
    );
    tree_cycles("python wait", vec![py, "-c".into(), parent], libc::SIGUSR1, false, Duration::from_millis(700), &[]);
}

/// A pipe the launcher left open above stderr (a wrapper's, as job launchers do), inherited by every
/// process of the tree: restored as `/dev/null` in each (CKPT_SHIM_FOREIGN_FDS's default), said so in the
/// log, and the pipeline's output is still exact after a kill and a restart.
#[test]
fn a_pipe_inherited_from_the_launcher_reaches_every_process_as_dev_null() {
    let Some(argv) = pipeline() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let expected = reference(dir, &argv);
    let img = dir.join("img");
    let out = dir.join("out.txt");
    let stdout = std::fs::File::create(&out).unwrap();
    let stderr = stdout.try_clone().unwrap();
    // The launcher: its stdin (a pipe from this test) moved to descriptor 7, then `ckpt run`.
    let script = format!("exec 7<&0 0</dev/null; exec {} run --dir {} -- \"$@\"", s(&ckpt), s(&img));
    let mut child = command(Path::new("/bin/sh"), dir)
        .arg("-c")
        .arg(script)
        .arg("launcher")
        .args(&argv)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap();
    let _keep_open = child.stdin.take();
    // Signalled once the pipeline runs (its first line is out), not after a fixed delay: a loaded machine
    // may not have started `ckpt run`'s program, or installed its handlers, within any fixed time.
    let started = Instant::now();
    while read(dir, "out.txt").lines().next().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "the pipeline printed nothing: {}", read(dir, "ckpt.log"));
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(child.id(), libc::SIGUSR1);
    assert!(wait_for_events(dir, "checkpoint", 1, &mut child, Duration::from_secs(60)), "{}", read(dir, "ckpt.log"));
    let ck = &events(dir, "checkpoint")[0];
    assert_eq!(ck["processes"].as_u64(), Some(3), "{ck}");
    assert!(ck["foreign_fds"].to_string().contains("\"fd\":7"), "{ck}");
    kill_group(child.id());
    let _ = child.wait();
    let mut restart = command(&ckpt, dir)
        .args(["restart", "--image-dir", img.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("restart.txt")).unwrap()))
        .process_group(0)
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut restart, Duration::from_secs(120));
    kill_group(restart.id());
    assert!(status.success(), "{status:?}: {}", read(dir, "restart.txt"));
    assert!(read(dir, "restart.txt").contains("descriptor 7"), "{}", read(dir, "restart.txt"));
    assert!(std::fs::read(&out).unwrap() == expected, "output differs: {}", read(dir, "out.txt"));
}

/// A child that does not run the shim (LD_PRELOAD removed from its environment) cannot be checkpointed
/// with its parent: the checkpoint is refused with a message naming it, and the program runs on to the
/// same output.
#[test]
fn a_child_without_the_shim_refuses_the_checkpoint() {
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let argv = ["sh", "-c", "env -u LD_PRELOAD sleep 2; echo done"];
    let out = dir.join("out.txt");
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", s(dir.join("img")).as_str(), "--"])
        .args(argv)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::from(std::fs::File::create(dir.join("err.txt")).unwrap()))
        .process_group(0)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    kill(child.id(), libc::SIGUSR1);
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    kill_group(child.id());
    assert!(status.success(), "{status:?}");
    assert_eq!(read(dir, "out.txt"), "done\n");
    let refused = events(dir, "checkpoint-refused");
    assert_eq!(refused.len(), 1, "{}", read(dir, "ckpt.log"));
    let reason = refused[0]["reason"].as_str().unwrap();
    assert!(reason.contains("(sleep)") && reason.contains("does not run the shim"), "{reason}");
    assert!(read(dir, "err.txt").contains("does not run the shim"), "{}", read(dir, "err.txt"));
    let _: PathBuf = dir.join("img");
}

/// A program that starts a short child process over and over and reaps it a moment after it ended, so
/// that an unreaped child (a zombie, which cannot be checkpointed) exists four fifths of the time.
const SHORT_CHILDREN: &str = r#"
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (long i = 0;; i++) {
        pid_t kid = fork();
        if (kid < 0) {
            printf("ERROR fork\n");
            return 1;
        }
        if (kid == 0) _exit(0);
        usleep(8000); /* the child is a zombie meanwhile */
        int st;
        if (waitpid(kid, &st, 0) != kid) {
            printf("ERROR waitpid\n");
            return 1;
        }
        usleep(2000);
        printf("ok %ld\n", i);
    }
}
"#;

/// The time limit's SIGTERM to a program that is, at that instant, between a child's end and its
/// `waitpid` (a driver script, `make`): the checkpoint is refused for the zombie, and tried again a few
/// milliseconds later, once the program has reaped it, instead of ending the program without its last
/// checkpoint (before: "child process N has exited and was not waited for yet", then SIGTERM's action,
/// and the restart resumed from the checkpoint before, or found none). Four SIGTERM cycles.
#[test]
fn a_checkpoint_and_exit_refused_for_an_unreaped_child_is_taken_a_moment_later() {
    let build = tempfile::tempdir().unwrap();
    let Some(exe) = build_c(build.path(), "short_children", SHORT_CHILDREN, &["-O1"]) else { return };
    restart_while_busy(&exe, 5, 100);
}

/// Two children inside `system()` when the checkpoint comes: each refuses it, leaving its reason for the
/// root in a file beside the coordination file; the root reports one, and no file of the refused
/// checkpoint is left behind in /dev/shm or /tmp (before: the other child's reason stayed, in 2 runs of
/// 3; the root now removes every member's reason when it gives up).
#[test]
fn a_tree_checkpoint_refused_by_two_children_leaves_no_files() {
    const TWO_IN_SYSTEM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    for (int k = 0; k < 2; k++)
        if (fork() == 0) {
            system("sleep 3");
            _exit(0);
        }
    while (wait(NULL) > 0) {}
    printf("done\n");
    return 0;
}
"#;
    let build = tempfile::tempdir().unwrap();
    let Some(exe) = build_c(build.path(), "two_in_system", TWO_IN_SYSTEM, &["-O1"]) else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", s(dir.join("img")).as_str(), "--"])
        .arg(&exe)
        .stdout(std::fs::File::create(dir.join("out.txt")).unwrap())
        .stderr(Stdio::from(std::fs::File::create(dir.join("err.txt")).unwrap()))
        .process_group(0)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let root = child.id();
    kill(root, libc::SIGUSR1);
    assert!(
        wait_for_events(dir, "checkpoint-refused", 1, &mut child, Duration::from_secs(30)),
        "no refusal: {}",
        read(dir, "ckpt.log")
    );
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    kill_group(root);
    assert!(status.success(), "{status:?}: {}", read(dir, "err.txt"));
    let reason = events(dir, "checkpoint-refused")[0]["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.contains("system()"), "{reason}");
    // The coordination files name the root by its pid (ten digits), start time and nonce.
    let ours = format!("-{root:010}-");
    let left: Vec<String> = ["/dev/shm", "/tmp"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-tree-") && n.contains(&ours))
        .collect();
    assert!(left.is_empty(), "files of the refused checkpoint left behind: {left:?}");
}
