//! Checkpoint directories shared the way clusters share them: the tasks of a job array (or a parameter
//! sweep) writing process images into one directory, each restarted with its own environment. A restart
//! must resume its own job's state, never a neighbour's newer image, and refuse rather than guess.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

/// The threads test program (four workers, mutexes, condition variables), built once.
fn threads_program() -> Option<String> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/threads.c");
    let exe = inputs().join("threads-sharing");
    if !exe.exists() {
        let tmp = inputs().join("threads-sharing.tmp");
        let cc = which("cc")?;
        let o =
            std::process::Command::new(cc).args(["-O2", "-o"]).arg(&tmp).arg(&src).arg("-pthread").output().unwrap();
        assert!(o.status.success(), "cc threads: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::rename(&tmp, &exe).unwrap();
    }
    Some(exe.display().to_string())
}

/// One array task's environment: its own job id, the array's id and its index; the end time is far away
/// (no squeue).
fn task_env(cmd: &mut std::process::Command, task: u32) {
    let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 86_400;
    cmd.env("SLURM_JOB_ID", (7100 + task).to_string())
        .env("SLURM_ARRAY_JOB_ID", "7100")
        .env("SLURM_ARRAY_TASK_ID", task.to_string())
        .env("SLURM_JOB_NAME", "sweep")
        .env("SLURM_JOB_END_TIME", end.to_string());
}

fn start(ckpt: &Path, dir: &Path, img: &Path, task: u32, work: &str, out: &Path) -> Child {
    let mut cmd = command(ckpt, dir);
    task_env(&mut cmd, task);
    let stdout = std::fs::File::create(out).unwrap();
    let stderr = stdout.try_clone().unwrap();
    cmd.args(["run", "--dir", img.to_str().unwrap(), "--"])
        .args([threads_program().unwrap().as_str(), "600", work, "3"])
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap()
}

fn checkpoint_and_kill(dir: &Path, child: &mut Child, count: usize) {
    kill(child.id(), libc::SIGUSR1);
    assert!(
        wait_for_events(dir, "checkpoint", count, child, Duration::from_secs(60)),
        "no checkpoint: {}",
        std::fs::read_to_string(dir.join("ckpt.log")).unwrap_or_default()
    );
    kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
}

/// Two tasks of one job array share the image directory and a job name. Task 1 is checkpointed first,
/// task 2 later (its image is the newest in the directory); each is then restarted with its own
/// environment and must finish with exactly the output of its own uninterrupted run.
#[test]
fn array_tasks_sharing_a_directory_each_resume_their_own_image() {
    if threads_program().is_none() {
        return;
    }
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = dir.join("img");
    // Different work per task, so that their outputs differ from the first step on.
    let work = |task: u32| if task == 1 { "2000000" } else { "2500000" };
    let reference = |task: u32| {
        let out = dir.join(format!("ref{task}.txt"));
        let o = std::process::Command::new(threads_program().unwrap())
            .args(["600", work(task), "3"])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success());
        std::fs::write(&out, &o.stdout).unwrap();
        o.stdout
    };
    let (ref1, ref2) = (reference(1), reference(2));
    assert_ne!(ref1, ref2);
    let out = |task: u32| dir.join(format!("out{task}.txt"));
    let mut t1 = start(&ckpt, dir, &img, 1, work(1), &out(1));
    let mut t2 = start(&ckpt, dir, &img, 2, work(2), &out(2));
    std::thread::sleep(Duration::from_millis(300));
    checkpoint_and_kill(dir, &mut t1, 1);
    std::thread::sleep(Duration::from_millis(200));
    checkpoint_and_kill(dir, &mut t2, 2);
    for task in [1u32, 2] {
        let mut cmd = command(&ckpt, dir);
        task_env(&mut cmd, task);
        let err = dir.join(format!("restart{task}.txt"));
        let status = cmd
            .args(["restart", "--image-dir", img.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
            .status()
            .unwrap();
        let log = std::fs::read_to_string(dir.join("ckpt.log")).unwrap_or_default();
        assert!(
            status.success(),
            "task {task}: restart ended with {status:?}: {}\nlog: {log}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        let got = std::fs::read(out(task)).unwrap();
        let want = if task == 1 { &ref1 } else { &ref2 };
        assert!(
            got == *want,
            "task {task} resumed another task's state: its output differs from its own run (got {} bytes, \
             expected {}); restart said: {}",
            got.len(),
            want.len(),
            std::fs::read_to_string(&err).unwrap_or_default()
        );
    }
}

/// Outside Slurm, two different runs (a parameter sweep run by hand) leave their images in one
/// directory: `ckpt restart --image-dir` cannot know which one the user means and refuses, naming both;
/// `CKPT_RESUME_FROM=any` takes the newest.
#[test]
fn two_runs_in_one_directory_outside_slurm_are_not_guessed() {
    if threads_program().is_none() {
        return;
    }
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = dir.join("img");
    // Each point of the sweep named (one name holding two runs' files is refused at the save already).
    let run = |work: &str, out: &str| {
        let stdout = std::fs::File::create(dir.join(out)).unwrap();
        command(&ckpt, dir)
            .env("CKPT_NAME", format!("point-{work}"))
            .args(["run", "--dir", img.to_str().unwrap(), "--"])
            .args([threads_program().unwrap().as_str(), "600", work, "3"])
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = run("2000000", "a.txt");
    std::thread::sleep(Duration::from_millis(300));
    checkpoint_and_kill(dir, &mut a, 1);
    let mut b = run("2500000", "b.txt");
    std::thread::sleep(Duration::from_millis(300));
    checkpoint_and_kill(dir, &mut b, 2);
    let o = command(&ckpt, dir).args(["restart", "--image-dir", img.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a restart chose between two runs by itself: {err}");
    assert!(err.contains("refuses to guess") && err.contains("2000000") && err.contains("2500000"), "{err}");
    let o = command(&ckpt, dir)
        .env("CKPT_RESUME_FROM", "any")
        .args(["restart", "--image-dir", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "CKPT_RESUME_FROM=any: {}", String::from_utf8_lossy(&o.stderr));
    let restored = common::events(dir, "restored");
    assert_eq!(restored.len(), 1);
    let newest = common::events(dir, "checkpoint")[1]["path"].as_str().unwrap().to_string();
    assert_eq!(restored[0]["image"].as_str(), Some(newest.as_str()));
}

/// A second user's newer image in a shared (sticky, world-writable) directory under this job's name:
/// restart never runs another user's code; it says so and resumes this user's older image.
#[test]
fn another_users_newer_image_is_skipped() {
    if threads_program().is_none() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let other =
        std::process::Command::new("id").args(["-u", "ckpt-other"]).output().ok().filter(|o| o.status.success());
    let (true, Some(other)) = (root, other) else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI runs this test as root with the user ckpt-other");
        eprintln!("SKIP: needs root and the user ckpt-other");
        return;
    };
    let other: u32 = String::from_utf8_lossy(&other.stdout).trim().parse().unwrap();
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = dir.join("img");
    std::fs::create_dir(&img).unwrap();
    std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let out = dir.join("out.txt");
    let mut t = start(&ckpt, dir, &img, 1, "2000000", &out);
    std::thread::sleep(Duration::from_millis(300));
    kill(t.id(), libc::SIGUSR1);
    assert!(wait_for_events(dir, "checkpoint", 1, &mut t, Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(200));
    checkpoint_and_kill(dir, &mut t, 2);
    // The newest generation now belongs to the other user.
    let newest = common::events(dir, "checkpoint")[1]["path"].as_str().unwrap().to_string();
    let real = std::fs::canonicalize(&newest).unwrap();
    std::os::unix::fs::chown(&real, Some(other), None).unwrap();
    let mut cmd = command(&ckpt, dir);
    task_env(&mut cmd, 1);
    let o = cmd.args(["restart", "--image-dir", img.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("skipped") && err.contains(&format!("uid {other}")), "{err}");
    let restored = common::events(dir, "restored");
    assert_eq!(restored.len(), 1);
    assert_ne!(restored[0]["image"].as_str().map(std::path::PathBuf::from), Some(real));
}
