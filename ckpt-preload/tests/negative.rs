//! What the shim cannot restore is refused with a message and a non-zero exit, never mis-restored and
//! never a crash: a thread that cannot be stopped, sockets, a changed binary or library, a modified input file, a different stack
//! limit at restart, a static program.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn restart_dir(dir: &Path) -> Output {
    let (ckpt, _) = tools();
    command(&ckpt, dir).args(["restart", "--image-dir", dir.join("img").to_str().unwrap()]).output().unwrap()
}

/// Asserts a clean refusal: exited (no signal), non-zero, and stderr says `needle`.
fn assert_refused(o: &Output, needle: &str) {
    assert_eq!(o.status.signal(), None, "killed by a signal instead of refusing: {}", text(o));
    assert_ne!(o.status.code(), Some(0), "should have failed: {}", text(o));
    assert!(String::from_utf8_lossy(&o.stderr).contains(needle), "stderr should say {needle:?}: {}", text(o));
}

/// Starts `argv` under the shim, waits for "ready" on stdout, sends USR1 and returns the stderr text
/// after the refusal was logged (then stops the program with SIGTERM, which must not be swallowed).
fn refuse_at_checkpoint(argv: &[String], dir: &Path) -> String {
    let (ckpt, _) = tools();
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .args(argv)
        .stdout(Stdio::piped())
        .stderr(out_file(&dir.join("err.txt"), false))
        .spawn()
        .unwrap();
    // A failed assertion below must not leave the program running (a spinning thread outlives the test).
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            kill(self.0, libc::SIGKILL);
        }
    }
    let _guard = KillOnDrop(child.id());
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut buf).expect("program printed ready");
    kill(child.id(), libc::SIGUSR1);
    assert!(
        wait_for_events(dir, "checkpoint-refused", 1, &mut child, Duration::from_secs(30)),
        "no refusal logged; stderr: {}",
        std::fs::read_to_string(dir.join("err.txt")).unwrap_or_default()
    );
    // No checkpoint: SIGTERM gets the program's own (here: default) action.
    kill(child.id(), libc::SIGTERM);
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "the program should die by its default SIGTERM action");
    assert!(events(dir, "checkpoint").is_empty(), "no image may be written");
    std::fs::read_to_string(dir.join("err.txt")).unwrap()
}

const BLOCKING_THREAD_C: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

/* A thread that blocks every signal with the raw system call (past libc's wrappers, which the shim
   interposes) and spins: it can never be stopped for a checkpoint. */
static volatile int blocked;

static void *spin(void *arg) {
    unsigned long all = ~0UL;
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, NULL, 8);
    blocked = 1;
    volatile unsigned long x = 0;
    for (;;) x++;
    return arg;
}

int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, spin, NULL);
    while (!blocked) usleep(1000);
    printf("ready\n");
    fflush(stdout);
    for (;;) sleep(1);
}
"#;

/// Threads are checkpointed (tests/cycles.rs); one that cannot be stopped (it blocks every signal
/// behind the shim's back) makes the checkpoint a refusal after 2 s, naming it, and the program goes on.
#[test]
fn a_thread_that_cannot_be_stopped_refuses_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = build_c(tmp.path(), "blocking_thread", BLOCKING_THREAD_C, &["-pthread"]) else { return };
    let err = refuse_at_checkpoint(&[exe.display().to_string()], tmp.path());
    assert!(err.contains("a thread did not stop within 2 s (tid "), "{err}");
    assert_refused(&restart_dir(tmp.path()), "no complete, verified process image");
}

#[test]
fn sockets_are_refused() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let code = "import socket,time\ns=socket.socket()\nprint('ready',flush=True)\ntime.sleep(60)\n";
    let err = refuse_at_checkpoint(&[py, "-c".into(), code.into()], tmp.path());
    assert!(err.contains("is a socket"), "{err}");
    assert_refused(&restart_dir(tmp.path()), "no complete, verified process image");
}

/// Runs `argv` under the shim (with `env`), checkpoints it with SIGTERM after `delay`, returns the dir.
fn checkpoint_with_term(argv: &[String], env: &[(&str, &str)], delay: Duration) -> tempfile::TempDir {
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cmd = command(&ckpt, dir);
    cmd.args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"]).args(argv);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(out_file(&dir.join("out.txt"), false)).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(delay);
    // gzip and bzip2 own SIGTERM (they clean up): the shim's reserved checkpoint-and-exit signal
    // (SIGRTMAX-3, what `ckpt create --vacate` sends) ends them by SIGTERM after the checkpoint.
    kill(child.id(), libc::SIGRTMAX() - 3);
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert_eq!(events(dir, "checkpoint").len(), 1, "one image");
    tmp
}

fn gzip_argv(input: &Path, gzip: &Path) -> Vec<String> {
    vec![gzip.display().to_string(), "-9".into(), "-c".into(), input.display().to_string()]
}

#[test]
fn changed_binary_is_refused() {
    let Some(gzip) = which("gzip") else { return };
    let bin = tempfile::tempdir().unwrap();
    let copy = bin.path().join("gzip");
    std::fs::copy(&gzip, &copy).unwrap();
    let tmp = checkpoint_with_term(&gzip_argv(&inputs().join("text.txt"), &copy), &[], Duration::from_millis(400));
    // Same content, new modification time: a rebuilt or reinstalled binary.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&copy, std::fs::read(&gzip).unwrap()).unwrap();
    assert_refused(&restart_dir(tmp.path()), "changed since the checkpoint");
}

#[test]
fn changed_library_is_refused() {
    let Some(bzip2) = which("bzip2") else { return };
    let lib = ["/lib/x86_64-linux-gnu/libbz2.so.1.0", "/usr/lib/x86_64-linux-gnu/libbz2.so.1.0"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(lib) = lib else { return };
    let libdir = tempfile::tempdir().unwrap();
    let copy = libdir.path().join("libbz2.so.1.0");
    std::fs::copy(&lib, &copy).unwrap();
    let argv =
        vec![bzip2.display().to_string(), "-9".into(), "-c".into(), inputs().join("text.txt").display().to_string()];
    let ld = libdir.path().display().to_string();
    let tmp = checkpoint_with_term(&argv, &[("LD_LIBRARY_PATH", &ld)], Duration::from_millis(400));
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&copy, std::fs::read(&lib).unwrap()).unwrap();
    let o = restart_dir(tmp.path());
    assert_refused(&o, "changed since the checkpoint");
    assert!(String::from_utf8_lossy(&o.stderr).contains("libbz2"), "{}", text(&o));
}

#[test]
fn modified_input_file_is_refused() {
    let Some(gzip) = which("gzip") else { return };
    let data = tempfile::tempdir().unwrap();
    let input = data.path().join("input.txt");
    std::fs::copy(inputs().join("text.txt"), &input).unwrap();
    let tmp = checkpoint_with_term(&gzip_argv(&input, &gzip), &[], Duration::from_millis(400));
    std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
        f.write_all(b"one more line\n").unwrap();
    }
    assert_refused(&restart_dir(tmp.path()), "was modified since the checkpoint");
}

#[test]
fn stack_limit_at_restart() {
    let Some(gzip) = which("gzip") else { return };
    let argv = gzip_argv(&inputs().join("text.txt"), &gzip);
    let tmp = checkpoint_with_term(&argv, &[], Duration::from_millis(400));
    let dir = tmp.path();
    let (ckpt, lib) = tools();
    let img = dir.join("img");
    // A hard limit below the checkpoint's soft limit: ckpt restart cannot reapply it.
    let mut sh = command(Path::new("/bin/sh"), dir);
    sh.arg("-c").arg(format!(
        "ulimit -Ss 4096 && ulimit -Hs 4096 && exec {} restart --image-dir {}",
        ckpt.display(),
        img.display()
    ));
    assert_refused(&sh.output().unwrap(), "stack limit");
    // Bypassing `ckpt restart` with another limit: the shim's preflight refuses before touching anything.
    let image = std::fs::read_dir(&img)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "ckpt"))
        .unwrap();
    let mut sh = command(Path::new("/bin/sh"), dir);
    sh.arg("-c").arg(format!(
        "ulimit -s unlimited && exec 7<{} && exec setarch x86_64 -R env \
         CKPT_SHIM_ROOT=$$:$(cut -d' ' -f22 /proc/$$/stat):1234abcd CKPT_SHIM_IMAGE_FD=7 CKPT_SHIM_RESTORE={} \
         LD_PRELOAD={} {}",
        image.display(),
        image.display(),
        lib.display(),
        argv.join(" ")
    ));
    assert_refused(&sh.output().unwrap(), "stack limit");
    // With a larger soft limit in the shell, ckpt restart reapplies the checkpoint's and the run completes.
    let expected = Command::new(&gzip).args(&argv[1..]).output().unwrap().stdout;
    let mut sh = command(Path::new("/bin/sh"), dir);
    sh.arg("-c").arg(format!("ulimit -s unlimited && exec {} restart --image-dir {}", ckpt.display(), img.display()));
    let o = sh.stdout(Stdio::null()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(dir.join("out.txt")).unwrap() == expected, "output after the restart differs");
}

#[test]
fn static_programs_are_refused_at_start() {
    let Some(stat) = ["/sbin/ldconfig", "/usr/sbin/ldconfig"].iter().map(PathBuf::from).find(|p| p.exists()) else {
        return;
    };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let o = command(&ckpt, tmp.path()).args(["run", "--"]).arg(&stat).arg("-p").output().unwrap();
    assert_refused(&o, "statically linked");
}

#[test]
fn not_a_process_image() {
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let store = ckpt_core::Store::new(ckpt_core::Config::new("app", tmp.path()).unwrap());
    let mut w = store.begin(1).unwrap();
    w.add_bytes("x", b"data").unwrap();
    let info = w.commit().unwrap();
    let o = command(&ckpt, tmp.path()).arg("restart").arg(&info.path).output().unwrap();
    assert_refused(&o, "not a process image");
    // A damaged image: a clear error, never an attempt.
    std::fs::write(tmp.path().join("junk.ckpt"), b"CKPT\0garbage").unwrap();
    let o = command(&ckpt, tmp.path()).arg("restart").arg(tmp.path().join("junk.ckpt")).output().unwrap();
    assert_refused(&o, "junk.ckpt");
}

/// Children inherit LD_PRELOAD and are checkpointed with the root (process trees), but the signals they
/// handle stay theirs: a child's own USR1 handler runs, and the root's checkpoint holds both processes.
#[test]
fn a_childs_own_handler_runs_and_the_checkpoint_holds_both() {
    let Some(py) = python() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let child_code = "import signal,sys,time,os\nsignal.signal(signal.SIGUSR1, lambda *a: print('child got USR1', flush=True))\n\
                      print('child', os.getpid(), flush=True)\ntime.sleep(5)\n";
    let mut root = command(&ckpt, dir)
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--", "/bin/sh", "-c"])
        .arg(format!("{py} -c \"$0\"; echo root done",))
        .arg(child_code)
        .stdout(out_file(&dir.join("out.txt"), false))
        .stderr(out_file(&dir.join("err.txt"), false))
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let child_pid = loop {
        let out = std::fs::read_to_string(dir.join("out.txt")).unwrap_or_default();
        if let Some(pid) = out.lines().find_map(|l| l.strip_prefix("child ")).and_then(|p| p.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the child never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    kill(child_pid, libc::SIGUSR1);
    kill(root.id(), libc::SIGUSR1);
    assert!(wait_for_events(dir, "checkpoint", 1, &mut root, Duration::from_secs(30)));
    let status = wait_timeout(&mut root, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let out = std::fs::read_to_string(dir.join("out.txt")).unwrap();
    assert!(out.contains("child got USR1"), "the child's own handler must run: {out}");
    assert!(out.contains("root done"), "{out}");
    let ck = events(dir, "checkpoint");
    assert_eq!(ck[0]["processes"].as_u64(), Some(2), "{ck:?}");
    assert!(events(dir, "checkpoint-refused").is_empty());
}

/// An image another user could have written is never restored: restoring runs its code.
#[test]
fn images_writable_by_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let Some(gzip) = which("gzip") else { return };
    let tmp = checkpoint_with_term(&gzip_argv(&inputs().join("text.txt"), &gzip), &[], Duration::from_millis(300));
    let img = tmp.path().join("img");
    let set_modes = |mode: u32| {
        for e in std::fs::read_dir(&img).unwrap().flatten() {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    set_modes(0o666);
    let o = restart_dir(tmp.path());
    assert_refused(&o, "every user can write it");
    // An image is code: unlike a data checkpoint, a group-writable one is refused too.
    set_modes(0o660);
    let o = restart_dir(tmp.path());
    assert_refused(&o, "writable by its group");
}

/// A file the parent process also writes (a batch script's output file that the program inherited) is not
/// cut back on restart: the parent's lines written after the checkpoint survive, the program continues at
/// the end.
#[test]
fn files_shared_with_the_parent_are_not_cut_back() {
    let Some(mawk) = which("mawk") else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let prog = "BEGIN{s=0; for(i=0;i<12000000;i++){s=(s*31+i)%1000003; if(i%20000==0) print i, s}}";
    let expected = Command::new(&mawk).arg(prog).output().unwrap().stdout;
    let log = dir.join("job.out");
    let script = format!(
        "exec >> {log}; echo start; {ckpt} run --dir {img} -- {mawk} '{prog}'; echo \"exit $?\"",
        log = log.display(),
        ckpt = ckpt.display(),
        img = dir.join("img").display(),
        mawk = mawk.display()
    );
    let mut sh = command(Path::new("/bin/sh"), dir).arg("-c").arg(script).spawn().unwrap();
    // The program is the shell's child; checkpoint-and-exit it once it has printed something.
    let t = std::time::Instant::now();
    let pid = loop {
        let kids = std::fs::read_to_string(format!("/proc/{}/task/{}/children", sh.id(), sh.id())).unwrap_or_default();
        if let Some(p) = kids.split_whitespace().next().and_then(|p| p.parse::<u32>().ok())
            && std::fs::read_to_string(format!("/proc/{p}/maps")).is_ok_and(|m| m.contains("libckpt_preload"))
        {
            break p;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the program never started");
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(300));
    kill(pid, libc::SIGTERM);
    assert!(wait_timeout(&mut sh, Duration::from_secs(60)).success());
    let o = restart_dir(dir);
    assert!(o.status.success(), "{}", text(&o));
    let got = std::fs::read(&log).unwrap();
    let text_got = String::from_utf8_lossy(&got).into_owned();
    assert!(text_got.starts_with("start\n"), "{text_got:.100}");
    assert!(text_got.contains("exit 143\n"), "the parent's line after the checkpoint must survive");
    let program_output = text_got.replacen("start\n", "", 1).replacen("exit 143\n", "", 1);
    assert!(program_output.as_bytes() == expected, "the program's output, with the parent's lines taken out, is exact");
}

#[test]
fn shared_writable_mappings_are_refused() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let code = "import mmap,time\nm=mmap.mmap(-1, 1<<20, flags=mmap.MAP_SHARED)\nm[0]=1\nprint('ready',flush=True)\ntime.sleep(60)\n";
    let err = refuse_at_checkpoint(&[py, "-c".into(), code.into()], tmp.path());
    assert!(err.contains("shared writable mapping"), "{err}");
}

#[test]
fn special_descriptors_are_refused() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let code = "import os,time\nfd=os.eventfd(0)\nprint('ready',flush=True)\ntime.sleep(60)\n";
    let err = refuse_at_checkpoint(&[py, "-c".into(), code.into()], tmp.path());
    assert!(err.contains("cannot restore") && err.contains("eventfd"), "{err}");
}

/// A pseudo-terminal the program opened (`os.openpty()`: the master from /dev/ptmx and its slave): reopened
/// by name, the master would be a new terminal and the slave another one, so the checkpoint is refused
/// (before: accepted, and the restored program wrote to a terminal nobody reads).
#[test]
fn pseudo_terminals_are_refused() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let code = "import os,time\nm,s=os.openpty()\nprint('ready',flush=True)\ntime.sleep(60)\n";
    let err = refuse_at_checkpoint(&[py, "-c".into(), code.into()], tmp.path());
    assert!(err.contains("pseudo-terminal master") || err.contains("is a terminal"), "{err}");
}
