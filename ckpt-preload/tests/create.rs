//! `ckpt create` against processes under the shim: by pid and by job id, into another directory, with
//! --vacate, and failing after --max-wait when the process cannot be checkpointed.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn create_by_pid_and_job_restart_from_image_dir() {
    let Some(gzip) = which("gzip") else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = inputs().join("text.txt");
    let expected = Command::new(&gzip).args(["-9", "-c"]).arg(&input).output().unwrap().stdout;
    let mut child = command(&ckpt, dir)
        .env("SLURM_JOB_ID", "4711")
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .arg(&gzip)
        .args(["-9", "-c"])
        .arg(&input)
        .stdout(out_file(&dir.join("out.txt"), false))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the shim registered the process (a loaded machine may take a while to start it).
    let t = std::time::Instant::now();
    while !std::fs::read_dir(dir.join("sock"))
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".shim")))
        .unwrap_or(false)
    {
        assert!(t.elapsed() < Duration::from_secs(30), "the shim never registered the process");
        std::thread::sleep(Duration::from_millis(10));
    }
    let elsewhere = dir.join("elsewhere");
    // By job id (what an operator types), into another directory.
    let o = command(&ckpt, dir)
        .args(["create", "4711", "--image-dir", elsewhere.to_str().unwrap(), "--max-wait", "30"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let reported = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(Path::new(&reported).starts_with(&elsewhere) && Path::new(&reported).is_file(), "reported {reported:?}");
    assert_eq!(
        reported,
        elsewhere.join("4711.ckpt").display().to_string(),
        "named by the rules of Slurm's removed checkpoint interface"
    );
    // By pid, with --vacate: checkpoint and exit.
    let o =
        command(&ckpt, dir).args(["create", &child.id().to_string(), "--vacate", "--max-wait", "30"]).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    // The program's registration is gone with it.
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("sock")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "left in the socket directory: {leftovers:?}");
    // Restart from the directory the operator chose: the older image; the output is still exact.
    let o = command(&ckpt, dir).args(["restart", "--image-dir", elsewhere.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(std::fs::read(dir.join("out.txt")).unwrap() == expected, "output after restart differs");
}

#[test]
fn create_fails_after_max_wait_when_refused() {
    let Some(py) = python() else { return };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A child process that does not run the shim: refused in the handler at every checkpoint, before any
    // answer to `ckpt create`.
    let code = "import os,subprocess,time\nenv=dict(os.environ)\nenv.pop('LD_PRELOAD',None)\n\
                p=subprocess.Popen(['sleep','60'],env=env)\nprint('ready',flush=True)\ntime.sleep(60)\n";
    let mut child = command(&ckpt, dir)
        .args(["run", "--dir", dir.join("img").to_str().unwrap(), "--"])
        .arg(py)
        .args(["-c", code])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut buf).unwrap();
    let t = std::time::Instant::now();
    let o = command(&ckpt, dir).args(["create", &child.id().to_string(), "--max-wait", "2"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no checkpoint within 2 s"), "{o:?}");
    assert!(t.elapsed() >= Duration::from_secs(2) && t.elapsed() < Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
}
