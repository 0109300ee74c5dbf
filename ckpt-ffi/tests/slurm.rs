//! A C program using libckpt under Slurm with a controller that does not answer: `SLURM_JOB_ID` set, no
//! `SLURM_JOB_END_TIME`, and a squeue stand-in (`CKPT_SQUEUE`) that hangs and ignores SIGTERM. `ckpt_init`
//! and `ckpt_finalize` each stay under a second, no squeue child is left behind (the program has no child
//! at all after `ckpt_finalize`: none running, no zombie), and a program that returns from `main` without
//! `ckpt_finalize` neither leaves its control socket nor the squeue stand-in running.

mod common;
use common::{build_c, clean_env};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn build(out: &Path) {
    build_c("cc", &["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror"], "ckpt-ffi/tests/c/slurm_exit.c", out);
}

/// A squeue that records its pid and its child's in `dir/pids`, ignores SIGTERM and never answers.
fn hanging_squeue(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("squeue");
    let pids = dir.join("pids");
    let body = format!(
        "#!/bin/sh\ntrap '' TERM\nsleep 1000 &\necho $! >> {0}.tmp\necho $$ >> {0}.tmp\nmv {0}.tmp {0}\nwait\n",
        pids.display()
    );
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Whether `pid` is gone or a zombie waiting for its (new) parent, within 5 s.
fn ends(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()));
        if matches!(state, None | Some('Z')) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn seconds(out: &str, what: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix(what).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {what:?} line in {out:?}"))
}

fn run(mode: &str) -> (String, Duration, std::path::PathBuf, Vec<i32>, tempfile::TempDir) {
    let t = tempfile::tempdir().unwrap();
    let exe = t.path().join("slurm_exit");
    build(&exe);
    let sq = hanging_squeue(t.path());
    let mut cmd = Command::new(&exe);
    cmd.arg(mode).arg(t.path().join("pids"));
    clean_env(&mut cmd);
    cmd.env("SLURM_JOB_ID", "8181")
        .env("CKPT_SQUEUE", &sq)
        .env("CKPT_DIR", t.path())
        .env("CKPT_LOG", t.path().join("ckpt.log"))
        .env("CKPT_SOCKET_DIR", t.path().join("sock"));
    let started = Instant::now();
    let o = cmd.output().expect("run the C program");
    let took = started.elapsed();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{:?}\n{out}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    let pids: Vec<i32> = std::fs::read_to_string(t.path().join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "the squeue stand-in was not started in the background: {out}");
    (out, took, t.path().join("sock"), pids, t)
}

#[test]
fn init_and_finalize_do_not_wait_for_a_hanging_squeue() {
    let (out, _, sock, pids, _t) = run("finalize");
    assert!(seconds(&out, "init") < 1.0, "{out}");
    assert!(seconds(&out, "finalize") < 1.0, "ckpt_finalize waited for squeue: {out}");
    assert!(out.contains("children none"), "a squeue child (or its zombie) was left: {out}");
    for pid in pids {
        assert!(ends(pid), "squeue stand-in process {pid} was left behind");
    }
    let left: Vec<_> = std::fs::read_dir(&sock).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().ends_with(".sock")), "{left:?}");
}

#[test]
fn returning_from_main_without_finalize_leaves_no_socket_and_no_squeue() {
    let (out, took, sock, pids, _t) = run("return");
    assert!(seconds(&out, "init") < 1.0, "{out}");
    assert!(took < Duration::from_secs(5), "the program took {took:?}");
    for pid in pids {
        assert!(ends(pid), "squeue stand-in process {pid} was left behind");
    }
    let left: Vec<_> = std::fs::read_dir(&sock).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().ends_with(".sock")), "the socket outlived the program: {left:?}");
}
