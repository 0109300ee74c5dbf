//! Whose checkpoint a restart takes, through the real environment variables of Slurm: job arrays, sweeps,
//! requeues, resubmissions, `CKPT_RESUME_FROM`, another user's files in a shared directory, a job id reused
//! by another application. Every run is a real child process (`ckpt-test-trigger`) reading its
//! configuration from the environment; the one writing a checkpoint is stopped by SIGTERM, as Slurm does.

use std::path::Path;
use std::time::Duration;

use ckpt_tests::{LiveChild, clean_command, log_events};

const TRIGGER: &str = env!("CARGO_BIN_EXE_ckpt-test-trigger");
const T: Duration = Duration::from_secs(30);

struct Run {
    resumed: Option<u64>,
    stopped: Option<u64>,
    status: std::process::ExitStatus,
    stderr: String,
}

/// Runs the trigger program in `dir` with `env` (plus `args`), SIGTERMs it after `term_after` when given
/// (checkpoint and exit), and reports what it resumed from and printed on stderr.
fn run(dir: &Path, env: &[(&str, &str)], args: &[&str], term_after: Option<Duration>) -> Run {
    let mut cmd = clean_command(Path::new(TRIGGER), dir);
    cmd.current_dir(dir);
    cmd.args(["400", "5"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let err_path = dir.join(format!("stderr.{}", std::process::id() ^ rand_u32()));
    cmd.stderr(std::fs::File::create(&err_path).unwrap());
    let mut c = LiveChild::spawn(cmd);
    let ready = c.wait_for("ready", T);
    if ready.is_some()
        && let Some(d) = term_after
    {
        std::thread::sleep(d);
        c.signal(libc::SIGTERM);
        c.wait_for("exit", T);
    } else if ready.is_some() {
        c.signal(libc::SIGKILL);
    }
    let status = c.finish(T);
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    let num = |prefix: &str| {
        c.lines_with(prefix).first().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok())
    };
    Run { resumed: num("resumed"), stopped: num("exit"), status, stderr }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}

fn array_task(job: &'static str, array_job: &'static str, task: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("SLURM_JOB_ID", job),
        ("SLURM_ARRAY_JOB_ID", array_job),
        ("SLURM_ARRAY_TASK_ID", task),
        ("SLURM_JOB_NAME", "train.sh"),
    ]
}

/// Task 1 of `sbatch --array=1-2` checkpoints; task 2, same name, same directory, starts fresh and says
/// which job it did not take and why. Before, task 2 silently resumed task 1's state.
#[test]
fn a_job_array_task_never_resumes_another_tasks_state() {
    let dir = tempfile::tempdir().unwrap();
    let t1 = run(dir.path(), &array_task("101", "100", "1"), &[], Some(Duration::from_millis(150)));
    let stopped = t1.stopped.expect("task 1 checkpointed at SIGTERM");
    assert!(t1.status.success(), "{}", t1.stderr);
    assert!(dir.path().join("101.ckpt").exists());

    let t2 = run(dir.path(), &array_task("102", "100", "2"), &[], Some(Duration::from_millis(50)));
    assert_eq!(t2.resumed, None, "task 2 resumed task 1's step {stopped}: {}", t2.stderr);
    assert!(
        t2.stderr.contains("not resuming job 101") && t2.stderr.contains("another array task (1)"),
        "task 2 must say which job it did not take and why: {}",
        t2.stderr
    );
    // Its own requeue (same job id) resumes its own state.
    let t2_stop = t2.stopped.expect("task 2 checkpointed");
    let again = run(dir.path(), &array_task("102", "100", "2"), &[], None);
    assert_eq!(again.resumed, Some(t2_stop), "{}", again.stderr);
}

/// A resubmission of task 1 (a new array job, the same task index, command line and directory) takes task
/// 1's checkpoint and announces it on stderr and in the log; with `CKPT_RESUME_FROM=none` it does not.
#[test]
fn a_resubmitted_task_takes_its_predecessors_checkpoint_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let t1 = run(dir.path(), &array_task("101", "100", "1"), &[], Some(Duration::from_millis(150)));
    let stopped = t1.stopped.expect("task 1 checkpointed");

    let mut env = array_task("201", "200", "1");
    env.push(("CKPT_RESUME_FROM", "none"));
    let forbidden = run(dir.path(), &env, &[], None);
    assert_eq!(forbidden.resumed, None, "CKPT_RESUME_FROM=none must forbid adoption: {}", forbidden.stderr);
    assert!(forbidden.stderr.contains("CKPT_RESUME_FROM=none"), "{}", forbidden.stderr);

    let r = run(dir.path(), &array_task("202", "200", "1"), &[], None);
    assert_eq!(r.resumed, Some(stopped), "the resubmitted task 1 must resume job 101: {}", r.stderr);
    assert!(r.stderr.contains("resuming from job 101"), "adoption must be announced: {}", r.stderr);
    let events = log_events(&dir.path().join("ckpt.log"), "restore");
    let last = events.last().expect("a restore event");
    assert_eq!(last["other_job"], "101");
    assert!(last["notices"].to_string().contains("resuming from job 101"), "{last}");
}

/// A parameter sweep submitted as separate jobs with one job name: another argument, another run.
#[test]
fn a_sweep_point_never_resumes_another_points_state() {
    let dir = tempfile::tempdir().unwrap();
    let env = |job: &'static str| vec![("SLURM_JOB_ID", job), ("SLURM_JOB_NAME", "sweep")];
    let a = run(dir.path(), &env("301"), &["lr=0.1"], Some(Duration::from_millis(150)));
    assert!(a.stopped.is_some(), "{}", a.stderr);
    let b = run(dir.path(), &env("302"), &["lr=0.2"], None);
    assert_eq!(b.resumed, None, "point lr=0.2 resumed lr=0.1's state: {}", b.stderr);
    assert!(b.stderr.contains("another command line"), "{}", b.stderr);
    // The same point resubmitted does resume; CKPT_RESUME_FROM takes any of this user's jobs explicitly.
    let c = run(dir.path(), &env("303"), &["lr=0.1"], None);
    assert_eq!(c.resumed, a.stopped, "{}", c.stderr);
    let mut explicit = env("304");
    explicit.push(("CKPT_RESUME_FROM", "301"));
    let d = run(dir.path(), &explicit, &["lr=0.2"], None);
    assert_eq!(d.resumed, a.stopped, "{}", d.stderr);
    assert!(d.stderr.contains("as CKPT_RESUME_FROM asks"), "{}", d.stderr);
    let mut missing = env("305");
    missing.push(("CKPT_RESUME_FROM", "999"));
    let e = run(dir.path(), &missing, &["lr=0.2"], None);
    assert!(!e.status.success() && e.stderr.contains("999.ckpt"), "{}", e.stderr);
}

/// A file under this job's name written by another application (a job id reused after a controller
/// reset, say) is refused loudly, never resumed.
#[test]
fn a_checkpoint_of_another_application_under_this_jobs_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = ckpt_core::Store::new({
        let mut c = ckpt_core::Config::new("simulation", dir.path()).unwrap();
        c.job_id = Some("8".into());
        c
    });
    let mut w = store.begin(1).unwrap();
    w.add_bytes("state", b"not yours").unwrap();
    w.commit().unwrap();
    let r = run(dir.path(), &[("SLURM_JOB_ID", "8")], &[], None);
    assert!(!r.status.success(), "a file of application `simulation` was taken as trigger-test's: {}", r.stderr);
    assert!(
        r.stderr.contains("8.ckpt") && r.stderr.contains("belong to another run") && r.stderr.contains("simulation"),
        "{}",
        r.stderr
    );
}

/// The uid of a second user: `ckpt-other` (created by CI), else `nobody`.
fn other_uid() -> Option<u32> {
    for name in ["ckpt-other", "nobody"] {
        let out = std::process::Command::new("id").args(["-u", name]).output().ok()?;
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().parse().ok();
        }
    }
    None
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The second user's uid when files can be given to it (as root, or through `sudo -n`); in CI a missing
/// second user fails the test instead of skipping it.
pub(crate) fn as_root_or_skip(what: &str) -> Option<u32> {
    let sudo = || std::process::Command::new("sudo").args(["-n", "true"]).status().is_ok_and(|s| s.success());
    let uid = other_uid();
    if uid.is_some() && (is_root() || sudo()) {
        return uid;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what}: CI must run this test with root or sudo and a second user"
    );
    eprintln!("skipped {what}: needs root (or sudo) and a second user (ckpt-other or nobody)");
    None
}

/// Gives `path` to user `uid` (as root, or through `sudo -n chown`).
pub(crate) fn give_to(path: &Path, uid: u32) {
    if is_root() {
        std::os::unix::fs::chown(path, Some(uid), None).unwrap();
    } else {
        let ok = std::process::Command::new("sudo").args(["-n", "chown", &uid.to_string()]).arg(path).status().unwrap();
        assert!(ok.success(), "sudo chown {}", path.display());
    }
}

/// Another user's file among this job's generations (a shared, group-writable scratch directory): discovery
/// skips it with a notice and falls back to the next one, instead of loading it (Rust and C faces) or stopping.
#[test]
fn another_users_generation_is_skipped_with_a_notice_and_restart_falls_back() {
    let Some(other) = as_root_or_skip("another_users_generation_is_skipped") else { return };
    let dir = tempfile::tempdir().unwrap();
    let env = [("SLURM_JOB_ID", "55"), ("CKPT_KEEP", "5")];
    let first = run(dir.path(), &env, &[], Some(Duration::from_millis(100)));
    let s1 = first.stopped.expect("first checkpoint");
    let second = run(dir.path(), &env, &[], Some(Duration::from_millis(100)));
    assert_eq!(second.resumed, Some(s1));
    let s2 = second.stopped.expect("second checkpoint");
    assert!(s2 > s1);
    // The newest generation (and the stable name, the same file) now belongs to someone else.
    let newest = dir.path().join("55.ckpt.2");
    // Readable by everyone, so that a test run without root reads it too: ownership alone must refuse it.
    std::fs::set_permissions(&newest, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    give_to(&newest, other);
    let r = run(dir.path(), &env, &[], None);
    assert_eq!(r.resumed, Some(s1), "another user's file was loaded or restart stopped: {}", r.stderr);
    assert!(r.stderr.contains("55.ckpt.2") && r.stderr.contains("not by you"), "{}", r.stderr);
}

fn ckpt_list_json(dir: &Path) -> serde_json::Value {
    let out = std::process::Command::new(ckpt_tests::ckpt_cli()).args(["list", "--json"]).arg(dir).output().unwrap();
    assert!(out.status.success(), "ckpt list failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `ckpt list` answers for the run that wrote a name (an array task's files are not "another run's" to
/// it) and shows who wrote each file.
#[test]
fn ckpt_list_shows_who_wrote_each_file_and_what_its_restart_takes() {
    let dir = tempfile::tempdir().unwrap();
    let t1 = run(dir.path(), &array_task("101", "100", "1"), &[], Some(Duration::from_millis(100)));
    assert!(t1.stopped.is_some(), "{}", t1.stderr);
    let v = ckpt_list_json(dir.path());
    let choice = v["restart"].as_array().unwrap().iter().find(|c| c["name"] == "101.ckpt").expect("101.ckpt");
    assert!(choice["chosen"].as_str().is_some_and(|p| p.ends_with("101.ckpt")), "{v:#}");
    // 101.ckpt is the newest generation's stable name (a hard link): listed with it, under "also".
    let file = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["also"].as_array().is_some_and(|a| a.iter().any(|p| p.as_str().unwrap().ends_with("101.ckpt"))))
        .unwrap();
    assert!(file["path"].as_str().unwrap().contains("101.ckpt."), "{file:#}");
    assert_eq!(file["written_by"]["array_task"], "1", "{file:#}");
    assert!(file["written_by"]["cmdline"].as_str().unwrap().contains("ckpt-test-trigger"), "{file:#}");
}

/// A multi-rank step with one rank's part damaged: `ckpt list` says restart takes the previous step, as
/// every rank restoring on its own does.
#[test]
fn ckpt_list_of_a_multi_rank_directory_takes_only_steps_whose_every_part_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<ckpt_core::Store> = (0..2u32)
        .map(|r| {
            let mut c = ckpt_core::Config::new("mr", dir.path()).unwrap();
            c.job_id = Some("77".into());
            (c.rank, c.nranks) = (r, 2);
            ckpt_core::Store::new(c)
        })
        .collect();
    for step in [10i64, 20] {
        let mut generation = 0;
        for s in &stores {
            let mut w = s.begin(step).unwrap();
            w.add_bytes("data", &vec![s.config().rank as u8 + 1; 100_000]).unwrap();
            generation = w.commit().unwrap().generation;
        }
        stores[0].commit_step(generation, step).unwrap();
    }
    let part = dir.path().join("77.ckpt.parts/2/rank1.ckpt");
    let cp = ckpt_core::Checkpoint::open(&part).unwrap();
    let offset = cp.section("data").unwrap().offset + 1000;
    drop(cp);
    let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"\xff\x00", offset).unwrap();
    let v = ckpt_list_json(dir.path());
    let choice = v["restart"].as_array().unwrap().iter().find(|c| c["name"] == "77.ckpt").expect("77.ckpt");
    assert!(choice["chosen"].as_str().is_some_and(|p| p.ends_with("77.ckpt.1")), "{v:#}");
}

/// Outside Slurm the name is the run: a sweep run point after point in one directory (`prog lr=0.1`, then
/// `prog lr=0.2`) must neither resume the other point's state nor, by saving, prune its checkpoints.
#[test]
fn outside_slurm_another_command_line_under_one_name_is_refused_and_never_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(dir.path(), &[], &["lr=0.1"], Some(Duration::from_millis(100)));
    let stopped = first.stopped.expect("lr=0.1 checkpointed");
    let second = run(dir.path(), &[], &["lr=0.2"], None);
    assert!(!second.status.success() && second.resumed.is_none(), "lr=0.2 took lr=0.1's state: {}", second.stderr);
    assert!(
        second.stderr.contains("another command line")
            && second.stderr.contains("lr=0.1")
            && second.stderr.contains("CKPT_RESUME_FROM=trigger-test"),
        "the refusal names both runs and the way out: {}",
        second.stderr
    );
    // A program that saves without restoring first (this test process: another command line) is refused
    // before it writes, so retention never removes the other run's checkpoints.
    let store = ckpt_core::Store::new(ckpt_core::Config::new("trigger-test", dir.path()).unwrap());
    let e = store.begin(1).expect_err("a save over another run's name must be refused");
    assert_eq!(e.kind(), ckpt_core::ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("trigger-test.ckpt.1"), "{e}");
    assert!(dir.path().join("trigger-test.ckpt.1").exists(), "the other run's checkpoint is still there");
    // Explicitly: the same program with other arguments resumes it.
    let third = run(dir.path(), &[("CKPT_RESUME_FROM", "trigger-test")], &["lr=0.2"], None);
    assert_eq!(third.resumed, Some(stopped), "{}", third.stderr);
}

/// An inherited environment whose runtime directory (`$TMPDIR/ckpt-<uid>`) another user created first,
/// open to everyone: the program runs and checkpoints as usual, puts nothing there, and says why it has
/// no control socket.
#[test]
fn a_runtime_directory_created_by_another_user_is_not_used_and_the_program_still_checkpoints() {
    let Some(other) = as_root_or_skip("a_runtime_directory_created_by_another_user") else { return };
    let dir = tempfile::tempdir().unwrap();
    let tmpdir = dir.path().join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let planted = tmpdir.join(format!("ckpt-{me}"));
    std::fs::create_dir(&planted).unwrap();
    std::fs::set_permissions(&planted, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    give_to(&planted, other);
    let mut cmd = clean_command(Path::new(TRIGGER), dir.path());
    cmd.env_remove("CKPT_SOCKET_DIR").env("TMPDIR", &tmpdir).env("SLURM_JOB_ID", "91").args(["400", "5"]);
    let mut c = LiveChild::spawn(cmd);
    assert!(c.wait_for("ready", T).is_some(), "{:?}", c.seen);
    std::thread::sleep(Duration::from_millis(100));
    c.signal(libc::SIGTERM);
    assert!(c.wait_for("exit", T).is_some(), "the program must still checkpoint at SIGTERM: {:?}", c.seen);
    assert!(c.finish(T).success());
    assert!(dir.path().join("91.ckpt").exists());
    let left: Vec<_> = std::fs::read_dir(&planted).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "the program put {left:?} into another user's directory");
    let warnings = log_events(&dir.path().join("ckpt.log"), "warning");
    assert!(
        warnings.iter().any(|w| w["message"]
            .as_str()
            .is_some_and(|m| m.contains("no control socket") && m.contains(&format!("ckpt-{me}")))),
        "the log must say why there is no control socket: {warnings:?}"
    );
}
