//! The `ckpt` command: env, inspect, verify, list, and `create` against live processes (with and without
//! `--image-dir`, by pid and by job id, the MaxWait failure, `--vacate`, and refusal of other users).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ckpt_core::{Config, Store};
use ckpt_tests::{LiveChild, ckpt_cli, clean_command, output_text as text};
use serde_json::Value;

const TRIGGER: &str = env!("CARGO_BIN_EXE_ckpt-test-trigger");
const T: Duration = Duration::from_secs(20);

fn ckpt(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = clean_command(&ckpt_cli(), dir);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ckpt")
}

#[test]
fn env_shows_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let o = ckpt(
        dir.path(),
        &["env", "--json"],
        &[
            ("SLURM_CHECKPOINT", "1-02:03:04"),
            ("SLURM_JOB_ID", "4242"),
            ("SLURM_STEP_ID", "1"),
            ("SLURM_RESTART_DIR", "/r"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["interval_seconds"], 93784);
    assert_eq!(v["job_id"], "4242");
    assert_eq!(v["step_id"], 1);
    assert_eq!(v["rank"], 0);
    assert_eq!(v["nranks"], 1);
    assert_eq!(v["checkpoint_dir"], dir.path().to_str().unwrap());
    assert_eq!(v["restart_dir"], "/r");
    assert_eq!(v["checkpoint_name"], "4242.1.ckpt");
    assert_eq!(v["end_time"], Value::Null);
    assert_eq!(v["signals"], serde_json::json!(["TERM", "USR1"]));

    let o = ckpt(dir.path(), &["env", "--json"], &[("CKPT_END_TIME", "1900000000")]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["interval_seconds"], Value::Null);
    assert_eq!(v["end_time"], 1_900_000_000);

    let o = ckpt(dir.path(), &["env", "--json"], &[("SLURM_CHECKPOINT", "1-2-3")]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("SLURM_CHECKPOINT") && err.contains("\"1-2-3\"") && err.contains("days-hours:minutes:seconds"),
        "{err}"
    );
}

fn make_checkpoints(dir: &Path) -> Store {
    let store = Store::new(Config::new("app", dir).unwrap());
    for step in 1..=2 {
        let mut w = store.begin(step * 10).unwrap();
        w.set_metadata("note", "hello").unwrap();
        w.add_bytes("field", &vec![step as u8; 100_000]).unwrap();
        w.add_serde("state", &(step, "x".to_string())).unwrap();
        w.commit().unwrap();
    }
    store
}

#[test]
fn inspect_verify_and_list() {
    let dir = tempfile::tempdir().unwrap();
    make_checkpoints(dir.path());
    let file = dir.path().join("app.ckpt");

    let o = ckpt(dir.path(), &["inspect", "--json", file.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["generation"], 2);
    assert_eq!(v["step"], 20);
    assert_eq!(v["metadata"]["note"], "hello");
    assert_eq!(v["sections"][0]["name"], "field");
    assert_eq!(v["sections"][0]["raw_bytes"], 100_000);
    let o = ckpt(dir.path(), &["inspect", file.to_str().unwrap()], &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("field"), "{}", text(&o));

    // A spare (a retired checkpoint kept for its blocks) is neither verified nor a restart candidate.
    std::fs::write(dir.path().join("app.ckpt.tmp.spare"), vec![7u8; 5000]).unwrap();
    let o = ckpt(dir.path(), &["verify", dir.path().to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("OK")).count(), 3, "{}", text(&o));

    // Damage generation 1 in a section: verify names the file and the section and fails.
    let g1 = dir.path().join("app.ckpt.1");
    let mut bytes = std::fs::read(&g1).unwrap();
    bytes[4096 + 10] ^= 0xFF;
    std::fs::write(&g1, &bytes).unwrap();
    let o = ckpt(dir.path(), &["verify", g1.to_str().unwrap(), file.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let bad: Vec<&str> = out.lines().filter(|l| l.starts_with("BAD")).collect();
    assert_eq!(bad.len(), 1, "{out}");
    assert!(
        bad[0].contains("app.ckpt.1") && bad[0].contains("section `field`") && bad[0].contains("crc32 mismatch"),
        "{out}"
    );

    let o = ckpt(dir.path(), &["list", "--json", dir.path().to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let files = v["files"].as_array().unwrap();
    // app.ckpt.2 and its hard link app.ckpt: one row, with both names.
    assert_eq!(files.iter().filter(|f| f["status"] == "valid").count(), 1, "{v}");
    let newest = files.iter().find(|f| f["status"] == "valid").unwrap();
    assert!(newest["path"].as_str().unwrap().ends_with("app.ckpt.2"), "{v}");
    assert!(newest["also"][0].as_str().unwrap().ends_with("app.ckpt"), "{v}");
    assert_eq!(files.iter().filter(|f| f["status"] == "invalid").count(), 1, "{v}");
    assert!(v["restart"][0]["chosen"].as_str().unwrap().ends_with("app.ckpt"), "{v}");
    let spares: Vec<&Value> = files.iter().filter(|f| f["status"] == "spare").collect();
    assert_eq!(spares.len(), 1, "{v}");
    assert!(spares[0]["path"].as_str().unwrap().ends_with("app.ckpt.tmp.spare") && spares[0]["bytes"] == 5000, "{v}");
    let o = ckpt(dir.path(), &["list", dir.path().to_str().unwrap()], &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("spare      "), "{}", text(&o));

    let o = ckpt(dir.path(), &["verify", dir.path().join("missing").to_str().unwrap()], &[]);
    assert!(!o.status.success());
}

fn trigger_child(dir: &Path, mode: &str, env: &[(&str, &str)]) -> LiveChild {
    let mut cmd = clean_command(Path::new(TRIGGER), dir);
    cmd.args(["100000", "5", mode]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut c = LiveChild::spawn(cmd);
    assert!(c.wait_for("ready", T).is_some(), "{:?}", c.seen);
    c
}

#[test]
fn create_by_pid_with_and_without_image_dir_and_vacate() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = trigger_child(dir.path(), "", &[]);
    let pid = c.child.id().to_string();

    let o = ckpt(dir.path(), &["create", &pid, "--max-wait", "20"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(Path::new(&path), dir.path().join("trigger-test.ckpt"));
    assert!(Path::new(&path).exists());

    let images = dir.path().join("images");
    let o = ckpt(dir.path(), &["create", &pid, "--image-dir", images.to_str().unwrap(), "--max-wait", "20"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(Path::new(&path), images.join("trigger-test.ckpt"), "{}", text(&o));
    assert!(ckpt_core::Checkpoint::open(&path).unwrap().verify().is_ok());

    let o = ckpt(dir.path(), &["create", &pid, "--max-wait", "20", "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["checkpoints"][0]["pid"].to_string(), pid, "{v}");
    assert_eq!(v["checkpoints"][0]["path"], dir.path().join("trigger-test.ckpt").to_str().unwrap(), "{v}");
    assert_eq!(v["checkpoints"].as_array().unwrap().len(), 1, "{v}");

    let o = ckpt(dir.path(), &["create", &pid, "--vacate", "--max-wait", "20"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let status = c.finish(T);
    assert!(status.success() && !c.lines_with("exit").is_empty(), "vacate makes the process exit: {:?}", c.seen);
}

#[test]
fn create_by_job_id_reaches_every_process_of_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let d1 = dir.path().join("a");
    let d2 = dir.path().join("b");
    let sock = dir.path().join("sock");
    let env = [("SLURM_JOB_ID", "777"), ("CKPT_SOCKET_DIR", sock.to_str().unwrap())];
    let _c1 = trigger_child(&d1, "", &[env[0], env[1], ("SLURM_STEP_ID", "0")]);
    let _c2 = trigger_child(&d2, "", &[env[0], env[1], ("SLURM_STEP_ID", "1")]);
    let o = ckpt(dir.path(), &["create", "777", "--max-wait", "20"], &[("CKPT_SOCKET_DIR", sock.to_str().unwrap())]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let mut paths: Vec<&str> = out.lines().collect();
    paths.sort();
    assert_eq!(
        paths,
        vec![d1.join("777.0.ckpt").to_str().unwrap(), d2.join("777.1.ckpt").to_str().unwrap()],
        "{}",
        text(&o)
    );
    // jobid.stepid picks one step.
    let o = ckpt(dir.path(), &["create", "777.1", "--max-wait", "20"], &[("CKPT_SOCKET_DIR", sock.to_str().unwrap())]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d2.join("777.1.ckpt").to_str().unwrap(), "{}", text(&o));
    // Nobody listening.
    let o = ckpt(dir.path(), &["create", "778", "--max-wait", "1"], &[("CKPT_SOCKET_DIR", sock.to_str().unwrap())]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn create_fails_after_max_wait_when_no_safe_point_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let c = trigger_child(dir.path(), "stall", &[]);
    let started = Instant::now();
    let o = ckpt(dir.path(), &["create", &c.child.id().to_string(), "--max-wait", "1"], &[]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("MaxWait"), "{}", text(&o));
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "{took:?}");
}

/// Runs `ckpt create` as another user (root only): the private socket directory refuses the connection;
/// with the directory opened up on purpose, SO_PEERCRED still refuses the request.
#[test]
fn another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to act as a second user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = trigger_child(dir.path(), "", &[]);
    let pid = c.child.id();
    let sock_dir = dir.path().join("sock");
    let sock = std::fs::read_dir(&sock_dir).unwrap().next().unwrap().unwrap().path();
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new(ckpt_cli());
        cmd.args(args).env("CKPT_SOCKET_DIR", &sock_dir).uid(65534).gid(65534);
        cmd.output().unwrap()
    };
    // Layer 1: the 0700 directory.
    let o = as_nobody(&["create", &pid.to_string(), "--max-wait", "2"]);
    assert!(!o.status.success(), "{}", text(&o));
    // Layer 2: open the directory and socket on purpose; the peer-uid check still refuses.
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let client = r#"import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
try: s.sendall(b'{"op":"checkpoint"}\n')
except OSError: pass
print(s.recv(4096).decode())"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", client, sock.to_str().unwrap()]).uid(65534).gid(65534);
    let o = cmd.output().unwrap();
    let answer = String::from_utf8_lossy(&o.stdout);
    assert!(answer.contains("permission denied"), "{}", text(&o));
    assert!(!dir.path().join("trigger-test.ckpt").exists(), "no checkpoint for another user's request");
    drop(c);
}

/// `ckpt restart --image-dir DIR -- CMD`: the program restarts from the checkpoints in DIR even though its
/// checkpoint directory is elsewhere.
#[test]
fn restart_runs_a_program_from_an_image_directory() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let mut c = trigger_child(&images, "", &[]);
    c.signal(libc::SIGTERM);
    assert!(c.finish(T).success(), "{:?}", c.seen);
    let stopped: u64 = c.lines_with("exit")[0].split_whitespace().nth(1).unwrap().parse().unwrap();

    let elsewhere = dir.path().join("new-run");
    let o = ckpt(&elsewhere, &["restart", "--image-dir", images.to_str().unwrap(), "--", TRIGGER, "3", "1"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("resumed {stopped}")), "{}", text(&o));
    let o =
        ckpt(&elsewhere, &["restart", "--image-dir", dir.path().join("nope").to_str().unwrap(), "--", TRIGGER], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope"), "{}", text(&o));
}

/// A stand-in `scontrol` in `dir` that appends its arguments to a file, and that file.
fn scontrol_stand_in(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let calls = dir.join("scontrol.calls");
    let scontrol = dir.join("scontrol");
    std::fs::write(&scontrol, format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display())).unwrap();
    std::fs::set_permissions(&scontrol, std::fs::Permissions::from_mode(0o755)).unwrap();
    (scontrol, calls)
}

/// `ckpt requeue --max-restarts N`: requeues only while SLURM_RESTART_COUNT < N and the last restart made
/// progress (a stand-in scontrol records the calls).
#[test]
fn requeue_is_bounded_by_count_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (scontrol, calls) = scontrol_stand_in(dir.path());
    let sc = scontrol.to_str().unwrap();
    let requeue = |count: &str| {
        ckpt(
            dir.path(),
            &["requeue", "--max-restarts", "3"],
            &[("SLURM_JOB_ID", "77"), ("SLURM_RESTART_COUNT", count), ("CKPT_SCONTROL", sc)],
        )
    };
    let n_calls = || std::fs::read_to_string(&calls).map(|t| t.lines().count()).unwrap_or(0);
    let save = |step: u64| {
        let mut cfg = Config::new("ckpt", dir.path()).unwrap();
        cfg.job_id = Some("77".into());
        Store::new(cfg).save_serde(step, &step).unwrap();
    };

    let o = requeue("0");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no valid checkpoint"), "{}", text(&o));
    save(10);
    let o = requeue("0");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&calls).unwrap().trim(), "requeue 77");
    // Restarted once, but no new checkpoint since: refuse.
    let o = requeue("1");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no progress"), "{}", text(&o));
    assert_eq!(n_calls(), 1);
    // Progress made: requeue again.
    save(20);
    let o = requeue("1");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(n_calls(), 2);
    // The limit.
    save(30);
    let o = requeue("3");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("limit is 3"), "{}", text(&o));
    assert_eq!(n_calls(), 2);
    // Outside Slurm: a clear error.
    let o = ckpt(dir.path(), &["requeue", "--max-restarts", "3"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("SLURM_JOB_ID"), "{}", text(&o));
}

/// `ckpt requeue` in a batch script (no SLURM_STEP_ID, one task) sees the checkpoint a 4-rank srun step
/// wrote (`<job>.0.ckpt` with a manifest), and counts a new step there as progress.
#[test]
fn requeue_from_the_batch_script_sees_multi_rank_step_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (scontrol, calls) = scontrol_stand_in(dir.path());
    let sc = scontrol.to_str().unwrap();
    let save_step = |step: u64| {
        let stores: Vec<Store> = (0..4)
            .map(|rank| {
                let mut c = Config::new("heat_mpi", dir.path()).unwrap();
                c.job_id = Some("78".into());
                c.step_id = Some(0);
                c.rank = rank;
                c.nranks = 4;
                Store::new(c)
            })
            .collect();
        let mut g = 0;
        for s in &stores {
            let mut w = s.begin(step).unwrap();
            w.add_bytes("u", &step.to_le_bytes()).unwrap();
            g = w.generation();
            w.commit().unwrap();
        }
        stores[0].commit_step(g, step).unwrap();
    };
    let requeue = |count: &str| {
        ckpt(
            dir.path(),
            &["requeue", "--max-restarts", "3", "--name", "heat_mpi"],
            &[("SLURM_JOB_ID", "78"), ("SLURM_RESTART_COUNT", count), ("CKPT_SCONTROL", sc)],
        )
    };
    save_step(40);
    let o = requeue("0");
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("checkpoint step 40"), "{}", text(&o));
    let o = requeue("1");
    assert_eq!(o.status.code(), Some(1), "no progress: {}", text(&o));
    save_step(80);
    let o = requeue("1");
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("checkpoint step 80"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 2);
}
