//! Triggers with real signals delivered to real child processes (`ckpt-test-trigger`): SIGUSR1 mid-run,
//! SIGTERM (checkpoint, then exit 0), SIGTERM twice 20 ms apart as Slurm sends it, handler chaining,
//! SIGINT left alone, the interval, and the job's time limit from `CKPT_END_TIME`.

use std::path::Path;
use std::time::{Duration, Instant};

use ckpt_tests::{LiveChild, clean_command, log_events};

const TRIGGER: &str = env!("CARGO_BIN_EXE_ckpt-test-trigger");
const T: Duration = Duration::from_secs(20);

fn child(dir: &Path, iterations: u64, sleep_ms: u64, mode: &str, env: &[(&str, &str)]) -> LiveChild {
    let mut cmd = clean_command(Path::new(TRIGGER), dir);
    cmd.args([iterations.to_string(), sleep_ms.to_string(), mode.to_string()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut c = LiveChild::spawn(cmd);
    assert!(c.wait_for("ready", T).is_some(), "child did not start: {:?}", c.seen);
    c
}

fn step_of(line: &str) -> u64 {
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no step in {line:?}"))
}

/// The result of an uninterrupted run of `iterations` steps.
fn reference(iterations: u64) -> String {
    let sum: u64 = (1..=iterations).map(|s| s * s).sum();
    format!("done {iterations} {sum}")
}

#[test]
fn usr1_checkpoints_at_the_next_safe_point_and_the_run_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = child(dir.path(), 150, 10, "", &[]);
    std::thread::sleep(Duration::from_millis(300));
    c.signal(libc::SIGUSR1);
    let line = c.wait_for("checkpoint", T).expect("a checkpoint after SIGUSR1");
    assert!(line.ends_with("trigger-test.ckpt"), "{line}");
    let status = c.finish(T);
    assert!(status.success(), "{status:?} {:?}", c.seen);
    assert_eq!(c.lines_with("checkpoint").len(), 1, "{:?}", c.seen);
    assert_eq!(c.lines_with("done").last().map(|s| s.as_str()), Some(reference(150).as_str()));
    let events = log_events(&dir.path().join("ckpt.log"), "checkpoint");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["trigger"][0], "signal");
    assert!(events[0]["bytes"].as_u64().unwrap() > 0 && events[0]["seconds"].as_f64().is_some());
}

#[test]
fn sigterm_checkpoints_then_exits_zero_and_the_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = child(dir.path(), 150, 10, "", &[]);
    std::thread::sleep(Duration::from_millis(300));
    c.signal(libc::SIGTERM);
    let ck = c.wait_for("checkpoint", T).expect("checkpoint after SIGTERM");
    let exit = c.wait_for("exit", T).expect("exit after the checkpoint");
    assert_eq!(step_of(&ck), step_of(&exit), "the exit follows the checkpoint of the same step");
    assert!(c.finish(T).success(), "exit status 0 after SIGTERM: {:?}", c.seen);
    let stopped = step_of(&exit);
    assert!(stopped < 150);

    let mut again = child(dir.path(), 150, 10, "", &[]);
    let resumed = again.seen.iter().find(|l| l.starts_with("resumed")).cloned().expect("resumed line");
    assert_eq!(step_of(&resumed), stopped);
    assert!(again.finish(T).success());
    assert_eq!(again.lines_with("done").last().map(|s| s.as_str()), Some(reference(150).as_str()));
}

#[test]
fn two_sigterms_20ms_apart_give_one_checkpoint_and_a_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    // Steps of 50 ms: both signals land within one step, as Slurm's two SIGTERMs to an srun step do.
    let mut c = child(dir.path(), 400, 50, "", &[]);
    std::thread::sleep(Duration::from_millis(200));
    c.signal(libc::SIGCONT); // Slurm sends SIGCONT first
    c.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(20));
    c.signal(libc::SIGTERM);
    let status = c.finish(T);
    assert!(status.success(), "{status:?} {:?}", c.seen);
    assert_eq!(c.lines_with("checkpoint").len(), 1, "exactly one checkpoint: {:?}", c.seen);
    assert_eq!(c.lines_with("exit").len(), 1, "{:?}", c.seen);
}

#[test]
fn a_handler_installed_before_ours_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = child(dir.path(), 150, 10, "chain", &[]);
    std::thread::sleep(Duration::from_millis(200));
    c.signal(libc::SIGUSR1);
    assert!(c.wait_for("checkpoint", T).is_some(), "{:?}", c.seen);
    assert!(c.finish(T).success());
    assert!(!c.lines_with("user-handler").is_empty(), "the program's own handler must still run: {:?}", c.seen);
}

#[test]
fn sigint_stays_the_users() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = child(dir.path(), 1000, 10, "", &[]);
    c.signal(libc::SIGINT);
    let status = c.finish(T);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGINT), "SIGINT keeps its default action: {status:?}");
    assert!(c.lines_with("checkpoint").is_empty());
}

#[test]
fn configured_signals_replace_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = child(dir.path(), 120, 10, "", &[("CKPT_SIGNALS", "USR2,TERM")]);
    std::thread::sleep(Duration::from_millis(150));
    c.signal(libc::SIGUSR2);
    assert!(c.wait_for("checkpoint", T).is_some(), "USR2 was configured: {:?}", c.seen);
    assert!(c.finish(T).success());
    // A malformed list is a clear startup error.
    let mut cmd = clean_command(Path::new(TRIGGER), dir.path());
    cmd.args(["5", "1"]).env("CKPT_SIGNALS", "USR1,BOGUS");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CKPT_SIGNALS") && err.contains("BOGUS"), "{err}");
}

#[test]
fn the_interval_triggers_periodic_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    // 0:01 is "minutes:seconds": one second. 150 steps of 10 ms take ~1.6 s or more.
    let mut c = child(dir.path(), 150, 10, "", &[("SLURM_CHECKPOINT", "0:01")]);
    assert!(c.finish(T).success(), "{:?}", c.seen);
    let n = c.lines_with("checkpoint").len();
    assert!(n >= 1, "at least one interval checkpoint: {:?}", c.seen);
    let events = log_events(&dir.path().join("ckpt.log"), "checkpoint");
    assert!(events.iter().all(|e| e["trigger"][0] == "interval" && e["interval_s"] == 1.0), "{events:?}");
    // A malformed interval is a clear startup error quoting the value.
    let mut cmd = clean_command(Path::new(TRIGGER), dir.path());
    cmd.args(["5", "1"]).env("SLURM_CHECKPOINT", "1:2:3:4");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SLURM_CHECKPOINT") && err.contains("\"1:2:3:4\""), "{err}");
}

#[test]
fn the_time_limit_checkpoint_happens_before_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let end = (now + 3.0).ceil() as i64;
    let started = Instant::now();
    let mut c = child(dir.path(), 100_000, 10, "", &[("CKPT_END_TIME", &end.to_string()), ("CKPT_MARGIN", "1")]);
    let ck = c.wait_for("checkpoint", Duration::from_secs(10)).expect("a checkpoint before the time limit");
    assert!(c.wait_for("exit", T).is_some(), "should_exit after the deadline checkpoint: {:?}", c.seen);
    assert!(c.finish(T).success());
    let finished = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(finished < end as f64, "the job ended at {finished}, after its end time {end}");
    assert!(started.elapsed() >= Duration::from_millis(500), "not immediately: {ck}");
    let triggers = log_events(&dir.path().join("ckpt.log"), "trigger");
    let t = triggers.iter().find(|e| e["reason"] == "time-limit").expect("a time-limit decision in the log");
    assert!(t["time_left_s"].as_f64().unwrap() > 0.0 && t["end_time_source"] == "CKPT_END_TIME", "{t}");
    let cks = log_events(&dir.path().join("ckpt.log"), "checkpoint");
    assert_eq!(cks[0]["trigger"][0], "time-limit");
    assert!(cks[0]["ts"].as_f64().unwrap() < end as f64);
}

/// Slurm 22.05 has no SLURM_JOB_END_TIME: the end time comes from `squeue -h -j JOB -o %e` (a stand-in
/// script here, through CKPT_SQUEUE), queried in the background.
#[test]
fn the_end_time_comes_from_squeue_when_slurm_does_not_export_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let squeue = dir.path().join("squeue");
    let calls = dir.path().join("squeue.calls");
    // Prints the local time 3 s from now in Slurm's format, and records its arguments.
    std::fs::write(
        &squeue,
        format!("#!/bin/sh\necho \"$@\" >> {}\ndate -d @$(( $(date +%s) + 3 )) +%Y-%m-%dT%H:%M:%S\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(&squeue, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sq = squeue.to_str().unwrap();
    let mut c =
        child(dir.path(), 100_000, 10, "", &[("SLURM_JOB_ID", "4242"), ("CKPT_SQUEUE", sq), ("CKPT_MARGIN", "1")]);
    assert!(c.wait_for("checkpoint", Duration::from_secs(10)).is_some(), "{:?}", c.seen);
    assert!(c.wait_for("exit", T).is_some(), "{:?}", c.seen);
    assert!(c.finish(T).success());
    assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().next(), Some("-h -j 4242 -o %e"));
    let log = dir.path().join("ckpt.log");
    let ends = log_events(&log, "end-time");
    assert!(ends.iter().any(|e| e["source"] == "squeue" && e["time_left_s"].as_f64().unwrap() > 0.0), "{ends:?}");
    let t = log_events(&log, "trigger");
    assert!(t.iter().any(|e| e["reason"] == "time-limit" && e["end_time_source"] == "squeue"), "{t:?}");
}

/// `interval = auto`: Daly's interval from the measured cost and CKPT_MTBF (a tiny MTBF here, so the
/// interval is short enough to observe).
#[test]
fn the_auto_interval_follows_daly() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = child(dir.path(), 150, 10, "", &[("CKPT_INTERVAL", "auto"), ("CKPT_MTBF", "0:01")]);
    assert!(c.finish(T).success(), "{:?}", c.seen);
    let events = log_events(&dir.path().join("ckpt.log"), "checkpoint");
    assert!(!events.is_empty(), "auto with MTBF=1s must checkpoint within ~1.5 s: {:?}", c.seen);
    // After a measured cost C, the chosen interval is Daly's for (C, 1 s): at most the MTBF.
    let chosen = events.last().unwrap()["interval_s"].as_f64().unwrap();
    assert!(chosen > 0.0 && chosen <= 1.0, "{chosen}");
}

/// A checkpoint that fails while its sections are written is abandoned without losing the request that
/// triggered it: SIGTERM's "checkpoint, then exit" stays due, and no temporary file is left.
#[test]
fn an_aborted_checkpoint_keeps_its_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ckpt_core::Config::new("abort", dir.path()).unwrap();
    cfg.log = ckpt_core::LogTarget::Off;
    let cp = ckpt_core::Checkpointer::new(ckpt_core::Store::new(cfg)).unwrap();
    cp.request_checkpoint(true);
    let w = cp.begin(1).unwrap();
    assert!(!cp.should_checkpoint());
    cp.abort(w, &ckpt_core::Error::invalid("the application could not serialise its state"));
    assert!(cp.should_checkpoint(), "the request is due again");
    assert!(!cp.should_exit(), "nothing was saved, so no exit");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().contains(".tmp.")), "{names:?}");
    cp.save_serde(1, &42u32).unwrap();
    assert!(cp.should_exit(), "the retried checkpoint carries SIGTERM's exit");
}

/// Once the checkpointer is gone (`ckpt_finalize`), SIGTERM terminates the program again (signal-hook never
/// uninstalls its handler; ckpt's fallback action emulates the default), while SIGUSR1, which only asks
/// for checkpoints, stays harmless (a warning arriving as the program finishes must not kill it).
#[test]
fn after_the_checkpointer_is_dropped_sigterm_terminates_and_sigusr1_is_harmless() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let mut c = child(dir.path(), 10, 1, "drop", &[]);
    assert!(c.wait_for("dropped", T).is_some(), "{:?}", c.seen);
    c.signal(libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(c.child.try_wait().unwrap().is_none(), "SIGUSR1 after the checkpointer must not kill");
    c.signal(libc::SIGTERM);
    let status = c.finish(T);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "SIGTERM terminates again: {status:?}");
}

/// A SIGTERM handled by ckpt puts the process on its way out: a duplicate arriving after the checkpointer
/// is gone (Slurm sends SIGTERM twice to job steps) must not turn a clean exit into a death by signal.
#[test]
fn a_duplicate_sigterm_after_the_exit_checkpoint_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let mut c = child(dir.path(), 100_000, 5, "", &[]);
        c.signal(libc::SIGTERM);
        assert!(c.wait_for("exit", T).is_some(), "{:?}", c.seen);
        // The child is now dropping its checkpointer and exiting: a straggler TERM lands in that window.
        c.signal(libc::SIGTERM);
        let status = c.finish(T);
        assert!(status.success(), "a duplicate SIGTERM killed the exiting process: {status:?}");
    }
}

/// A squeue stand-in script in `dir`: `body` after a line that records its pid in `dir/squeue.pids`.
fn squeue_stand_in(dir: &Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("squeue");
    std::fs::write(&p, format!("#!/bin/sh\necho $$ >> {}\n{body}\n", dir.join("squeue.pids").display())).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The pids the stand-in recorded (waits up to 10 s for at least `n`).
fn stand_in_pids(dir: &Path, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = std::fs::read_to_string(dir.join("squeue.pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() >= n || Instant::now() >= deadline {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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

/// With SLURM_JOB_ID set, no end time in the environment and a controller that never answers (a squeue
/// that hangs and ignores SIGTERM, with a child of its own), the checkpointer starts and stops at once:
/// squeue is asked in the background, and abandoned (its process group killed) when the checkpointer is
/// dropped. Before: the drop waited for the query's 15 s timeout.
#[test]
fn a_hanging_squeue_delays_neither_start_nor_exit() {
    let dir = tempfile::tempdir().unwrap();
    let sq =
        squeue_stand_in(dir.path(), "trap '' TERM\nsleep 1000 &\necho $! >> \"$(dirname \"$0\")/squeue.pids\"\nwait");
    let sq = sq.to_str().unwrap();
    let started = Instant::now();
    let mut cmd = clean_command(Path::new(TRIGGER), dir.path());
    cmd.args(["150", "10"]).env("SLURM_JOB_ID", "5151").env("CKPT_SQUEUE", sq);
    let mut c = LiveChild::spawn(cmd);
    assert!(c.wait_for("ready", T).is_some(), "{:?}", c.seen);
    let init = started.elapsed();
    assert!(init < Duration::from_secs(1), "start took {init:?}");
    let pids = stand_in_pids(dir.path(), 2);
    assert_eq!(pids.len(), 2, "the stand-in squeue was not started in the background");
    assert!(c.wait_for("done", T).is_some(), "{:?}", c.seen);
    let done = Instant::now();
    let status = c.finish(T);
    let exit = done.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(exit < Duration::from_secs(1), "exit took {exit:?}: it waited for squeue");
    for pid in pids {
        assert!(ends(pid), "squeue stand-in process {pid} was left behind");
    }
}

/// Eight processes of one job on one node (one runtime directory), a squeue that counts its calls: squeue
/// runs once (twice at most, should a loaded machine let the asking process finish before its answer),
/// and every process learns the end time (the others take the shared answer). Before: eight calls.
#[test]
fn the_processes_of_a_job_on_a_node_ask_squeue_once() {
    let dir = tempfile::tempdir().unwrap();
    let sq = squeue_stand_in(dir.path(), "sleep 0.3\ndate -d @$(( $(date +%s) + 3600 )) +%Y-%m-%dT%H:%M:%S");
    let sq = sq.to_str().unwrap();
    let n = 8;
    let mut children: Vec<LiveChild> = (0..n)
        .map(|i| {
            let mut cmd = clean_command(Path::new(TRIGGER), dir.path());
            cmd.args(["300", "10"])
                .env("SLURM_JOB_ID", "6161")
                .env("CKPT_SQUEUE", sq)
                .env("CKPT_LOG", dir.path().join(format!("rank{i}.log")));
            LiveChild::spawn(cmd)
        })
        .collect();
    for c in &mut children {
        assert!(c.finish(T).success(), "{:?}", c.seen);
    }
    let calls = stand_in_pids(dir.path(), 1).len();
    assert!(calls <= 2, "{calls} squeue calls for {n} processes of one job on one node");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let mut shared = 0;
    for i in 0..n {
        let ends = log_events(&dir.path().join(format!("rank{i}.log")), "end-time");
        let e = ends.iter().find(|e| e["end_time"].is_number()).unwrap_or_else(|| panic!("rank {i}: {ends:?}"));
        let left = e["end_time"].as_f64().unwrap() - now;
        assert!((3500.0..3700.0).contains(&left), "rank {i}: {e}");
        shared += usize::from(e["shared"] == true);
    }
    assert!(shared >= n - calls, "{shared} of {n} took the shared answer after {calls} calls");
}

/// Without a runtime directory (CKPT_SOCKET=0) each process asks squeue itself, in the background.
#[test]
fn without_a_socket_directory_each_process_asks_squeue_itself() {
    let dir = tempfile::tempdir().unwrap();
    let sq = squeue_stand_in(dir.path(), "date -d @$(( $(date +%s) + 3600 )) +%Y-%m-%dT%H:%M:%S");
    let sq = sq.to_str().unwrap();
    let mut c = child(dir.path(), 50, 10, "", &[("SLURM_JOB_ID", "7171"), ("CKPT_SQUEUE", sq), ("CKPT_SOCKET", "0")]);
    assert!(c.finish(T).success(), "{:?}", c.seen);
    let ends = log_events(&dir.path().join("ckpt.log"), "end-time");
    assert!(ends.iter().any(|e| e["end_time"].is_number() && e["shared"] == false), "{ends:?}");
    assert!(!dir.path().join("sock").exists());
}
