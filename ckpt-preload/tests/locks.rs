//! File locks across a restart. A program holding an `flock` lock and a POSIX record lock (`lockf`)
//! holds them again after `ckpt restart` (before: the restart dropped them silently, and another process
//! could take the file the program believed it owned). When another process holds one of them at restart
//! time, the restart is refused with a message naming the file, before anything is replaced.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const PROGRAM: &str = "import fcntl, sys, time\n\
a = open(sys.argv[1], 'w')\nfcntl.flock(a, fcntl.LOCK_EX)\n\
b = open(sys.argv[2], 'r+')\nfcntl.lockf(b, fcntl.LOCK_EX, 10, 0)\n\
print('ready', flush=True)\n\
for i in range(600):\n    time.sleep(0.05)\n    print(i, flush=True)\n";

/// Whether another process can take the lock now: 0 = free, 1 = held by someone.
fn probe(py: &str, kind: &str, file: &Path) -> bool {
    let code = match kind {
        "flock" => {
            "import fcntl,sys\nf=open(sys.argv[1])\ntry:\n    fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(1)\n"
        }
        _ => {
            "import fcntl,sys\nf=open(sys.argv[1],'r+')\ntry:\n    fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB, 10, 0)\nexcept OSError:\n    sys.exit(1)\n"
        }
    };
    let st = Command::new(py).args(["-c", code]).arg(file).status().unwrap();
    st.code() == Some(1)
}

fn start(py: &str, dir: &Path) -> Child {
    let (ckpt, _) = tools();
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .args([py, "-c", PROGRAM])
        .arg(dir.join("a.lock"))
        .arg(dir.join("b.lock"))
        .stdout(Stdio::piped())
        .stderr(out_file(&dir.join("err.txt"), false))
        .spawn()
        .unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut buf).unwrap();
    child
}

fn checkpoint_and_kill(dir: &Path, child: &mut Child) {
    kill(child.id(), libc::SIGUSR1);
    assert!(wait_for_events(dir, "checkpoint", 1, child, Duration::from_secs(60)), "no checkpoint");
    kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
}

#[test]
fn flock_and_posix_locks_are_held_again_after_a_restart() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("b.lock"), b"0123456789abcdef").unwrap();
    let mut child = start(&py, dir);
    assert!(probe(&py, "flock", &dir.join("a.lock")) && probe(&py, "posix", &dir.join("b.lock")), "held at start");
    checkpoint_and_kill(dir, &mut child);
    assert!(
        !probe(&py, "flock", &dir.join("a.lock")) && !probe(&py, "posix", &dir.join("b.lock")),
        "freed by the kill"
    );
    let (ckpt, _) = tools();
    let mut child = command(&ckpt, dir)
        .args(["restart", "--image-dir", dir.join("img").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(out_file(&dir.join("restart.err"), false))
        .spawn()
        .unwrap();
    assert!(
        wait_for_events(dir, "restored", 1, &mut child, Duration::from_secs(60)),
        "{}",
        std::fs::read_to_string(dir.join("restart.err")).unwrap_or_default()
    );
    assert!(probe(&py, "flock", &dir.join("a.lock")), "the flock lock is held again after the restart");
    assert!(probe(&py, "posix", &dir.join("b.lock")), "the POSIX lock is held again after the restart");
    kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
}

#[test]
fn a_lock_taken_by_another_process_refuses_the_restart() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("b.lock"), b"0123456789abcdef").unwrap();
    let mut child = start(&py, dir);
    checkpoint_and_kill(dir, &mut child);
    // Another process takes the flock lock and keeps it.
    let mut holder = Command::new(&py)
        .args(["-c", "import fcntl,sys,time\nf=open(sys.argv[1])\nfcntl.flock(f, fcntl.LOCK_EX)\nprint('held',flush=True)\ntime.sleep(60)\n"])
        .arg(dir.join("a.lock"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4];
    std::io::Read::read_exact(holder.stdout.as_mut().unwrap(), &mut buf).unwrap();
    let (ckpt, _) = tools();
    let o = command(&ckpt, dir).args(["restart", "--image-dir", dir.join("img").to_str().unwrap()]).output().unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("a.lock is locked by another process"), "{err}");
}
