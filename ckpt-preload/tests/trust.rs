//! Trust and identity on the shim's paths: the image `ckpt restart` verified is the image restored (the
//! descriptor is handed over, a file swapped in at the name afterwards changes nothing), the root marker
//! names only the root process (after a restart, the restored one; a later process with the old pid
//! stays passive), and a Slurm controller that does not answer never delays start or exit.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ckpt_image::{RootMarker, process_start_time};
use common::*;

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Under CI=true a test that cannot run fails; elsewhere it is skipped with the reason.
fn skip(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why}");
    }
    eprintln!("skipped {test}: {why}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The squeue stand-in of the issue: never answers and ignores SIGTERM.
fn hanging_squeue(dir: &Path) -> PathBuf {
    let p = dir.join("squeue");
    std::fs::write(&p, "#!/bin/sh\ntrap '' TERM\nsleep 1000\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// With SLURM_JOB_ID set, no end time in the environment and a squeue that hangs: the program starts at
/// once, takes a SIGUSR1 sent 100 ms after its start as a checkpoint (today the shim sat in squeue for 5 s
/// before installing its handlers, and the signal killed the program), exits promptly, and `ckpt
/// restart` does not wait for the controller either.
#[test]
fn a_hanging_squeue_never_delays_start_or_exit() {
    let Some(py) = python() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let squeue = hanging_squeue(dir);
    let code = "import time\nprint('ready', flush=True)\nt = time.time()\nwhile time.time() - t < 1.5:\n    \
                time.sleep(0.01)\nprint('done', flush=True)\n";
    let slurm = |cmd: &mut Command| {
        cmd.env("SLURM_JOB_ID", "4242").env("CKPT_SQUEUE", &squeue).env("CKPT_NAME", "hang");
    };
    let t0 = Instant::now();
    let mut cmd = command(&ckpt, dir);
    slurm(&mut cmd);
    let mut child = cmd
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .arg(&py)
        .args(["-c", code])
        .stdout(Stdio::piped())
        .stderr(out_file(&dir.join("err.txt"), false))
        .spawn()
        .unwrap();
    // "Start": the program is exec'ed (ckpt run became python).
    let pid = child.id();
    wait_until("the exec of the program", Duration::from_secs(10), || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.to_string_lossy().contains("python"))
    });
    std::thread::sleep(Duration::from_millis(100));
    kill(pid, libc::SIGUSR1);
    let mut out = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut out).unwrap();
    let started = t0.elapsed();
    assert_eq!(out.trim(), "ready", "stderr: {}", read(&dir.join("err.txt")));
    assert!(started < Duration::from_millis(1500), "the program started after {started:?}");
    out.clear();
    std::io::BufRead::read_line(&mut stdout, &mut out).unwrap();
    assert_eq!(out.trim(), "done", "the program died: {:?}; stderr: {}", child.try_wait(), read(&dir.join("err.txt")));
    let done = Instant::now();
    let status = wait_timeout(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}; stderr: {}", read(&dir.join("err.txt")));
    assert!(done.elapsed() < Duration::from_millis(500), "exit took {:?} after the program's end", done.elapsed());
    assert!(wait_for_events(dir, "checkpoint", 1, &mut child, Duration::from_secs(20)), "the USR1 checkpoint");
    let start = events(dir, "start");
    assert_eq!(start[0]["end_time_source"], "squeue (asked in the background)", "{start:?}");
    // `ckpt restart` in the same environment: no squeue on its path either.
    let t1 = Instant::now();
    let mut cmd = command(&ckpt, dir);
    slurm(&mut cmd);
    let o = cmd
        .args(["restart", "--image-dir", dir.join("img").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("done"), "{o:?}");
    assert!(t1.elapsed() < Duration::from_secs(4), "the restart took {:?} (squeue waits 5 s)", t1.elapsed());
}

/// A program for the marker tests: writes `ready.<pid>`, then on `ask` writes its C environment's
/// CKPT_SHIM_ROOT to `marker.<pid>`, on `spawn` (a pid) starts a child that gets that pid (in a pid
/// namespace) and writes its pid to `child`, and ends on `quit`.
const MARKER_PROGRAM: &str = r#"import ctypes, os, subprocess, sys, time
d = sys.argv[1]
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
open(os.path.join(d, 'ready.%d' % os.getpid()), 'w').close()
kids = []
while not os.path.exists(os.path.join(d, 'quit')):
    a = os.path.join(d, 'ask')
    if os.path.exists(a):
        os.remove(a)
        v = libc.getenv(b'CKPT_SHIM_ROOT') or b''
        with open(os.path.join(d, 'marker.%d' % os.getpid()), 'w') as f:
            f.write(v.decode())
    s = os.path.join(d, 'spawn')
    if os.path.exists(s):
        target = int(open(s).read())
        os.remove(s)
        with open('/proc/sys/kernel/ns_last_pid', 'w') as f:
            f.write(str(target - 1))
        kids.append(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']))
        with open(os.path.join(d, 'child.tmp'), 'w') as f:
            f.write(str(kids[-1].pid))
        os.rename(os.path.join(d, 'child.tmp'), os.path.join(d, 'child'))
    time.sleep(0.02)
"#;

fn ask_marker(dir: &Path, pid: u32) -> RootMarker {
    std::fs::write(dir.join("ask"), b"").unwrap();
    let file = dir.join(format!("marker.{pid}"));
    wait_until("the program's marker", Duration::from_secs(20), || !read(&file).is_empty());
    let text = read(&file);
    std::fs::remove_file(&file).unwrap();
    RootMarker::parse(&text).unwrap_or_else(|e| panic!("CKPT_SHIM_ROOT={text:?}: {e}"))
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// After `ckpt restart`, the restored program's CKPT_SHIM_ROOT names the restored process (its pid and
/// start time), not the checkpointed one.
#[test]
fn after_a_restart_the_marker_names_the_restored_process() {
    let Some(py) = python() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let child = command(&ckpt, dir)
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .arg(&py)
        .args(["-c", MARKER_PROGRAM])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(out_file(&dir.join("err.txt"), false))
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let pid = child.0.id();
    wait_until("the program", Duration::from_secs(20), || dir.join(format!("ready.{pid}")).exists());
    let m = ask_marker(dir, pid);
    assert_eq!((m.pid, m.start), (pid, process_start_time(pid).unwrap()), "{m:?}");
    kill(pid, libc::SIGUSR1);
    assert!(wait_for_events(dir, "checkpoint", 1, &mut child.0, Duration::from_secs(30)), "a checkpoint");
    drop(child);
    let restored = command(&ckpt, dir)
        .args(["restart", "--image-dir", dir.join("img").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(out_file(&dir.join("err2.txt"), false))
        .spawn()
        .unwrap();
    let restored = Killed(restored);
    let rpid = restored.0.id();
    let r = ask_marker(dir, rpid);
    assert_eq!(
        (r.pid, r.start),
        (rpid, process_start_time(rpid).unwrap()),
        "the restored environment names {r:?}, not the restored process {rpid}; stderr: {}",
        read(&dir.join("err2.txt"))
    );
    assert_ne!(r.nonce, m.nonce, "a new marker");
    std::fs::write(dir.join("quit"), b"").unwrap();
}

/// The attack of the issue, in a pid namespace (root): after a restart, the restored program starts a
/// child that gets the checkpointed process's old pid. The child inherits a marker naming that pid (the
/// program's own copy of its environment, as Python's os.environ, still has it), but not its start
/// time: it stays passive (no "start" in the log, no registration, no image of its own).
#[test]
fn a_later_process_with_the_old_root_pid_stays_passive() {
    const NAME: &str = "a_later_process_with_the_old_root_pid_stays_passive";
    let Some(py) = python() else { return };
    if !is_root() {
        return skip(NAME, "needs root for a pid namespace (unshare --pid)");
    }
    let Some(unshare) = which("unshare") else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let prog = dir.join("prog.py");
    std::fs::write(&prog, MARKER_PROGRAM).unwrap();
    let script = format!(
        r#"set -e
D={d}
{ckpt} run --dir $D/img -- {py} {prog} $D >/dev/null 2>$D/err1 &
P=$!
while [ ! -e $D/ready.$P ]; do sleep 0.02; done
kill -USR1 $P
while ! grep -q '"event":"checkpoint"' $D/ckpt.log 2>/dev/null; do sleep 0.05; done
kill -9 $P; wait $P || true
echo $P > $D/old_pid
{ckpt} restart --image-dir $D/img >/dev/null 2>$D/err2 &
R=$!
echo $R > $D/restored_pid
while [ ! -e $D/ready.$P ]; do sleep 0.02; done
echo $P > $D/spawn
while [ ! -e $D/child ]; do sleep 0.02; done
C=$(cat $D/child)
sleep 0.5
kill -USR1 $C 2>/dev/null || true
sleep 1
touch $D/quit
wait $R || true
"#,
        d = dir.display(),
        ckpt = ckpt.display(),
        py = py,
        prog = prog.display()
    );
    // Bounded: the script's waits would never end if the restart failed.
    let Some(timeout) = which("timeout") else { return };
    let o = command(&timeout, dir)
        .arg("120")
        .arg(&unshare)
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let diag = format!(
        "{o:?}\nerr1: {}\nerr2: {}\nlog:\n{}",
        read(&dir.join("err1")),
        read(&dir.join("err2")),
        read(&dir.join("ckpt.log"))
    );
    assert!(o.status.success(), "{diag}");
    let old: u64 = read(&dir.join("old_pid")).trim().parse().unwrap();
    let child: u64 = read(&dir.join("child")).trim().parse().unwrap();
    assert_eq!(child, old, "the namespace did not give the child the old pid: {diag}");
    let starts: Vec<_> = events(dir, "start").into_iter().filter(|e| e["pid"] == old).collect();
    assert_eq!(starts.len(), 1, "the child with the old root pid became an active checkpointer: {diag}");
    assert_eq!(events(dir, "checkpoint").len(), 1, "a second image was written: {diag}");
}

/// `ckpt restart IMAGE` verifies the image, then execs the program; a group member who can rename in the
/// image's directory swaps their own image in at that moment (a ptrace stop at the exec makes the
/// moment exact). The restored program is still the verified one: the shim reads the descriptor `ckpt
/// restart` handed over, never the name; and that descriptor is gone from the restored program.
#[test]
fn an_image_swapped_in_after_verification_is_never_restored() {
    let Some(py) = python() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let code = "import os, time\ntag = os.environ['TAG']\nprint('ready', flush=True)\nfor i in range(50):\n    \
                print(tag, i, flush=True)\n    time.sleep(0.03)\nprint('finished', tag, flush=True)\n";
    // Two runs of the same program: ours, and the attacker's (another tag).
    let image_of = |tag: &str| -> PathBuf {
        let img = dir.join(format!("img-{tag}"));
        let mut child = command(&ckpt, dir)
            .env("TAG", tag)
            .env("CKPT_NAME", tag)
            .args(["run", "--dir", img.to_str().unwrap(), "--"])
            .arg(&py)
            .args(["-c", code])
            .stdout(out_file(&dir.join(format!("out-{tag}.txt")), false))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = dir.join(format!("out-{tag}.txt"));
        wait_until("the program", Duration::from_secs(20), || read(&out).contains(&format!("{tag} 3")));
        kill(child.id(), libc::SIGUSR1);
        let before = events(dir, "checkpoint").len();
        assert!(wait_for_events(dir, "checkpoint", before + 1, &mut child, Duration::from_secs(30)));
        kill(child.id(), libc::SIGKILL);
        let _ = child.wait();
        img.join(format!("{tag}.ckpt"))
    };
    let ours = image_of("ours");
    let evil = image_of("evil");
    assert!(ours.is_file() && evil.is_file());
    let mut cmd = command(&ckpt, dir);
    cmd.arg("restart").arg(&ours).stdout(Stdio::null()).stderr(out_file(&dir.join("err.txt"), false));
    // SAFETY: ptrace(PTRACE_TRACEME) between fork and exec touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            );
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let mut child = Killed(child);
    let pid = child.0.id() as libc::pid_t;
    let wait = || {
        let mut status = 0;
        // SAFETY: waits for our own (traced) child; `status` is writable.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        assert_eq!(r, pid, "waitpid");
        assert!(libc::WIFSTOPPED(status), "ckpt restart ended before its exec: {status:#x}");
        status
    };
    // SAFETY: ptrace requests on our stopped, traced child.
    unsafe {
        let s = wait(); // the exec of ckpt itself
        assert_eq!(libc::WSTOPSIG(s), libc::SIGTRAP);
        libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, libc::PTRACE_O_TRACEEXEC);
        libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
        loop {
            let s = wait();
            if s >> 8 == (libc::SIGTRAP | (libc::PTRACE_EVENT_EXEC << 8)) {
                break; // ckpt restart verified the image and exec'ed the program; the shim has not run
            }
            libc::ptrace(libc::PTRACE_CONT, pid, 0, libc::WSTOPSIG(s));
        }
        // The swap: the attacker's image under our image's name.
        std::fs::rename(&evil, &ours).unwrap();
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
    }
    // While it runs, the restored program has no descriptor of either image.
    std::thread::sleep(Duration::from_millis(300));
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            assert!(!target.to_string_lossy().contains(".ckpt"), "the restored program kept {target:?} open");
        }
    }
    let status = wait_timeout(&mut child.0, Duration::from_secs(60));
    let ours_out = read(&dir.join("out-ours.txt"));
    let evil_out = read(&dir.join("out-evil.txt"));
    assert!(!evil_out.contains("finished evil"), "the swapped-in image was restored: {evil_out}");
    assert!(status.success(), "{status:?}: {}", read(&dir.join("err.txt")));
    assert!(ours_out.contains("finished ours"), "the verified image was not restored: {ours_out}");
}

/// A restore set up by hand without the descriptor is refused: the shim never opens an image by name.
#[test]
fn a_restore_without_the_descriptor_is_refused() {
    let (_, lib) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("x.ckpt"), b"not even an image").unwrap();
    let o = command(Path::new("/bin/sh"), dir)
        .arg("-c")
        .arg(format!(
            "exec env CKPT_SHIM_ROOT=$$:$(cut -d' ' -f22 /proc/$$/stat):99 CKPT_SHIM_RESTORE={} LD_PRELOAD={} true",
            dir.join("x.ckpt").display(),
            lib.display()
        ))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("CKPT_SHIM_IMAGE_FD"), "{o:?}");
}

/// A squeue that answers (after 0.5 s) still arms the time-limit checkpoint: the background query's
/// answer reaches the program as a `sigqueue` and sets the deadline (checkpoint and exit before the end).
#[test]
fn the_background_squeue_answer_arms_the_deadline() {
    let Some(mawk) = which("mawk") else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // Slurm prints local time; with a 10 s initial cost guess, safety factor 1 and no margin the shim
    // checkpoints and exits about 3 s in, well before the program's ~6 s of work is done.
    let squeue = dir.join("squeue");
    std::fs::write(&squeue, format!("#!/bin/sh\nsleep 0.5\ndate -d @{} +%Y-%m-%dT%H:%M:%S\n", now + 13)).unwrap();
    std::fs::set_permissions(&squeue, std::fs::Permissions::from_mode(0o755)).unwrap();
    let start = Instant::now();
    let mut child = command(&ckpt, dir)
        .env("SLURM_JOB_ID", "4343")
        .env("CKPT_SQUEUE", &squeue)
        .env("CKPT_MARGIN", "0")
        .env("CKPT_SAFETY_FACTOR", "1")
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .arg(&mawk)
        .arg("BEGIN{s=0; for(i=0;i<40000000;i++){s=(s*31+i)%1000003; if(i%400000==0) print i, s}}")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    use std::os::unix::process::ExitStatusExt;
    let log = read(&dir.join("ckpt.log"));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "exits by the time-limit checkpoint: {status:?}\n{log}");
    assert!(start.elapsed() < Duration::from_secs(12), "before the end time");
    let answer = events(dir, "end-time");
    assert_eq!(answer.len(), 1, "{log}");
    assert_eq!(answer[0]["end_time"], now + 13, "{log}");
    let ck = events(dir, "checkpoint");
    assert_eq!(ck.len(), 1, "{log}");
    assert_eq!(ck[0]["exit"], true, "{log}");
}
