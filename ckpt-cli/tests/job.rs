//! `ckpt job`, the batch-script supervisor: USR1 and TERM sent to it (as Slurm sends them to the batch
//! shell) become a checkpoint request and a final checkpoint of a C program using libckpt
//! (tests/c/job_loop.c) and of an unmodified program under the shim (tests/c/plain_loop.c,
//! `--transparent`); the exit status says what happened; a second `ckpt job` resumes and ends with the
//! output of an uninterrupted run; `--requeue` calls a stand-in `scontrol` only near the time limit.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const CKPT: &str = env!("CARGO_BIN_EXE_ckpt");
const T: Duration = Duration::from_secs(60);

/// target/<profile>, where libckpt.so and libckpt_preload.so are built (once per test process).
fn target_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-q", "-p", "ckpt-ffi", "-p", "ckpt-preload"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().expect("cargo build").success(), "building libckpt and the shim failed");
        dir
    })
    .clone()
}

fn have_cc() -> bool {
    let ok = Command::new("cc").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok || std::env::var("CI").as_deref() != Ok("true"), "no C compiler under CI=true");
    if !ok {
        eprintln!("SKIP: no C compiler");
    }
    ok
}

/// Compiles tests/c/`name`.c into `dir` (linked with this build's libckpt when `libckpt`).
fn build(name: &str, dir: &Path, libckpt: bool) -> PathBuf {
    let out = dir.join(name);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new("cc");
    cmd.args(["-std=c11", "-O1", "-Wall", "-Werror"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c").join(format!("{name}.c")))
        .arg("-o")
        .arg(&out);
    if libckpt {
        let lib = target_dir();
        cmd.arg("-I").arg(root.join("include")).arg(format!("-L{}", lib.display())).arg("-lckpt");
        cmd.arg(format!("-Wl,-rpath,{}", lib.display()));
    }
    let o = cmd.output().expect("run cc");
    assert!(o.status.success(), "cc {name}.c:\n{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// `ckpt job ARGS` with a clean environment for `dir` (no CKPT_*/SLURM_* of the caller, no inherited
/// descriptors above stderr, which the shim would rightly refuse).
fn ckpt_job(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(CKPT);
    for (k, _) in std::env::vars() {
        if ["CKPT_", "SLURM_", "LD_PRELOAD", "OMPI_", "PMI"].iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(k);
        }
    }
    cmd.arg("job")
        .args(args)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .env("LD_LIBRARY_PATH", target_dir())
        .env("CKPT_PRELOAD_LIB", target_dir().join("libckpt_preload.so"))
        .env("CKPT_SOCKET_DIR", dir.join("sock"))
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: close_range is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd
}

/// A supervisor whose stdout lines arrive on a channel.
struct Live {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Live {
    fn spawn(mut cmd: Command, stderr: &Path) -> Live {
        cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(stderr).unwrap());
        let mut child = cmd.spawn().expect("run ckpt job");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Live { child, lines, seen: Vec::new() }
    }

    /// Waits for a line starting with `prefix`.
    fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(l.clone());
                if l.starts_with(prefix) {
                    return l;
                }
            }
        }
        let _ = self.child.kill();
        panic!("no line {prefix:?} within {T:?}; seen {:?}", self.seen);
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for the exit; returns the status and every stdout line.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let st = wait(&mut self.child);
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        (st, self.seen)
    }
}

fn wait(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + T;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ckpt job did not finish within {T:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The final line of an uninterrupted run of job_loop.
fn reference(exe: &Path, steps: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let o = ckpt_job(d.path(), &["--", exe.to_str().unwrap(), steps, "0"], &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().find(|l| l.starts_with("done")).expect("done line").to_string()
}

#[test]
fn library_program_checkpoints_on_usr1_stops_on_term_and_resumes() {
    if !have_cc() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let exe = build("job_loop", t.path(), true);
    let want = reference(&exe, "300");
    let dir = t.path().join("ckpt");
    let d = dir.to_str().unwrap();
    let args = ["--on-warning", "checkpoint", "--dir", d, "--", exe.to_str().unwrap(), "300", "10000"];
    let err = t.path().join("job1.err");
    let mut job = Live::spawn(ckpt_job(t.path(), &args, &[]), &err);
    job.wait_line("step 20");
    job.signal(libc::SIGUSR1); // the warning, --on-warning checkpoint: a checkpoint, and the run goes on
    let first = job.wait_line("checkpoint ");
    job.wait_line(&format!("step {}", first.trim_start_matches("checkpoint ").parse::<i64>().unwrap() + 5));
    assert!(dir.join("jobloop.ckpt").is_file(), "no checkpoint file: {}", stderr_of(&err));
    job.signal(libc::SIGTERM); // the time limit: a final checkpoint, then stop
    let (st, lines) = job.finish();
    let log = stderr_of(&err);
    assert_eq!(st.code(), Some(3), "checkpointed and stopped, not requeued: {lines:?}\n{log}");
    assert!(lines.iter().any(|l| l.starts_with("stopped at")), "{lines:?}");
    assert!(lines.iter().filter(|l| l.starts_with("checkpoint ")).count() >= 2, "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("done")), "{lines:?}");
    assert!(log.contains("TERM: final checkpoint") && log.contains("not requeued (no --requeue)"), "{log}");

    // The same command again resumes from the final checkpoint and ends as an uninterrupted run.
    let err2 = t.path().join("job2.err");
    let (st, lines) = Live::spawn(ckpt_job(t.path(), &args, &[]), &err2).finish();
    assert_eq!(st.code(), Some(0), "finished: {lines:?}\n{}", stderr_of(&err2));
    assert!(lines.iter().any(|l| l.starts_with("restarted at")), "{lines:?}");
    assert_eq!(lines.iter().find(|l| l.starts_with("done")), Some(&want), "{lines:?}");
    assert!(stderr_of(&err2).contains("finished: the program exited with status 0 (exit 0)"));
}

#[test]
fn failing_program_status_is_passed_on() {
    let t = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| ckpt_job(t.path(), args, &[]).output().unwrap().status.code();
    assert_eq!(run(&["--", "sh", "-c", "exit 7"]), Some(7));
    // 2 to 4 are `ckpt job`'s own answers: a program failing with them is reported as 1.
    assert_eq!(run(&["--", "sh", "-c", "exit 3"]), Some(1));
    assert_eq!(run(&["--", "sh", "-c", "kill -KILL $$"]), Some(128 + 9));
    assert_eq!(run(&["--", "true"]), Some(0));
    assert_eq!(run(&["--", "/nonexistent/program"]), Some(2));
}

/// A stand-in `scontrol` that records its calls, answers `show job` with `FAKE_REASON`, and on `requeue`
/// sends SIGTERM to its caller, as slurmstepd does to every process of a job it requeues.
fn scontrol_stand_in(dir: &Path) -> (PathBuf, PathBuf) {
    let calls = dir.join("scontrol.calls");
    let scontrol = dir.join("scontrol");
    let body = format!(
        "#!/bin/sh\necho \"$@\" >> {}\n[ \"$1\" = show ] && echo \"JobId=$4 JobState=RUNNING Reason=$FAKE_REASON\"\n\
         [ \"$1\" = requeue ] && kill -TERM $PPID\nexit 0\n",
        calls.display()
    );
    std::fs::write(&scontrol, body).unwrap();
    std::fs::set_permissions(&scontrol, std::fs::Permissions::from_mode(0o755)).unwrap();
    (scontrol, calls)
}

/// SIGTERM as Slurm sends it in a job (the time limit, scancel): to every process, `ckpt job` and the
/// program it started (whose pid it names on stderr), which `ckpt job` then does not signal again.
fn slurm_term(job: &Live, err: &Path) {
    let text = stderr_of(err);
    let pid: i32 = text
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text}"));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    job.signal(libc::SIGTERM);
}

#[test]
fn requeue_after_the_warning_but_not_after_scancel() {
    if !have_cc() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let exe = build("job_loop", t.path(), true);
    let (scontrol, calls) = scontrol_stand_in(t.path());
    let dir = t.path().join("ckpt");
    let d = dir.to_str().unwrap();
    let end =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600).to_string();
    let args = ["--requeue", "--max-restarts", "3", "--dir", d, "--", exe.to_str().unwrap(), "100000", "10000"];
    let env = |count: &'static str, reason: &'static str| {
        [
            ("SLURM_JOB_ID", "77".to_string()),
            ("SLURM_RESTART_COUNT", count.to_string()),
            ("SLURM_JOB_END_TIME", end.clone()),
            ("CKPT_SCONTROL", scontrol.to_str().unwrap().to_string()),
            ("FAKE_REASON", reason.to_string()),
        ]
    };
    let calls_text = || std::fs::read_to_string(&calls).unwrap_or_default();

    // The warning (B:USR1, --on-warning stop by default): final checkpoint, stop, requeue.
    let e = env("0", "None");
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let err = t.path().join("job1.err");
    let mut job = Live::spawn(ckpt_job(t.path(), &args, &e), &err);
    job.wait_line("step 10");
    job.signal(libc::SIGUSR1);
    let (st, lines) = job.finish();
    assert_eq!(st.code(), Some(4), "checkpointed and requeued: {lines:?}\n{}", stderr_of(&err));
    assert!(dir.join("77.ckpt").is_file());
    assert_eq!(calls_text(), "requeue 77\n", "{}", stderr_of(&err));

    // The restarted job resumes; SIGTERM from scancel (Slurm's reason is not TimeLimit): final
    // checkpoint, no requeue.
    let e = env("1", "None");
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let err = t.path().join("job2.err");
    let mut job = Live::spawn(ckpt_job(t.path(), &args, &e), &err);
    job.wait_line("restarted at");
    job.wait_line("step ");
    slurm_term(&job, &err);
    let (st, lines) = job.finish();
    let log = stderr_of(&err);
    assert_eq!(st.code(), Some(3), "checkpointed, not requeued: {lines:?}\n{log}");
    assert!(log.contains("TERM: Slurm sent it to every process of the job"), "{log}");
    assert!(log.contains("Reason None") || log.contains("reason None"), "{log}");
    assert_eq!(calls_text(), "requeue 77\nshow job -o 77\n", "{log}");

    // The time limit's SIGTERM (Reason=TimeLimit): requeued again (progress was made).
    let e = env("1", "TimeLimit");
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let err = t.path().join("job3.err");
    let mut job = Live::spawn(ckpt_job(t.path(), &args, &e), &err);
    job.wait_line("restarted at");
    job.wait_line("step ");
    slurm_term(&job, &err);
    let (st, lines) = job.finish();
    assert_eq!(st.code(), Some(4), "requeued at the time limit: {lines:?}\n{}", stderr_of(&err));
    assert!(calls_text().ends_with("show job -o 77\nrequeue 77\n"), "{}", calls_text());
}

/// `srun ckpt job --requeue -- ./app`: every task of the step runs its own `ckpt job`, and only task 0
/// requeues the job (once); the others say so and exit 3. (The program here is told it runs alone: the
/// step's variables are removed from its environment by `env -u`.)
#[test]
fn in_an_srun_step_only_task_0_requeues() {
    if !have_cc() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let exe = build("job_loop", t.path(), true);
    let (scontrol, calls) = scontrol_stand_in(t.path());
    let dir = t.path().join("ckpt");
    let d = dir.to_str().unwrap();
    let end =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600).to_string();
    let mut args = vec!["--requeue", "--max-restarts", "3", "--dir", d, "--", "env"];
    for v in ["SLURM_STEP_ID", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"] {
        args.extend(["-u", v]);
    }
    args.extend([exe.to_str().unwrap(), "100000", "10000"]);
    let calls_text = || std::fs::read_to_string(&calls).unwrap_or_default();
    for (task, code) in [("1", 3), ("0", 4)] {
        let env = [
            ("SLURM_JOB_ID", "77"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", task),
            ("SLURM_STEP_NUM_TASKS", "2"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_RESTART_COUNT", "0"),
            ("SLURM_JOB_END_TIME", end.as_str()),
            ("CKPT_SCONTROL", scontrol.to_str().unwrap()),
            ("FAKE_REASON", "None"),
        ];
        let err = t.path().join(format!("task{task}.err"));
        let mut job = Live::spawn(ckpt_job(t.path(), &args, &env), &err);
        job.wait_line("step ");
        job.signal(libc::SIGUSR1);
        let (st, lines) = job.finish();
        let log = stderr_of(&err);
        assert_eq!(st.code(), Some(code), "task {task}: {lines:?}\n{log}");
        if task == "1" {
            assert!(log.contains("not requeued (task 1 of 2 of this srun step: task 0 requeues the job)"), "{log}");
            assert_eq!(calls_text(), "", "task 1 called scontrol: {log}");
        } else {
            assert_eq!(calls_text(), "requeue 77\n", "{log}");
        }
    }
}

#[test]
fn unmodified_program_under_the_shim_checkpoints_stops_and_resumes() {
    if !have_cc() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let exe = build("plain_loop", t.path(), false);
    let want = {
        let o = Command::new(&exe).args(["200", "0"]).output().unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap()
    };
    let dir = t.path().join("images");
    let d = dir.to_str().unwrap();
    let out = t.path().join("program.out");
    let o = out.to_str().unwrap();
    let args = [
        "--transparent",
        "--on-warning",
        "checkpoint",
        "--dir",
        d,
        "--output",
        o,
        "--",
        exe.to_str().unwrap(),
        "200",
        "20000",
    ];
    // A stale output file of an earlier run: a fresh start truncates it.
    std::fs::write(&out, "stale\n".repeat(1000)).unwrap();
    let err = t.path().join("job1.err");
    let mut cmd = ckpt_job(t.path(), &args, &[]);
    cmd.stderr(std::fs::File::create(&err).unwrap());
    let mut child = cmd.spawn().unwrap();
    let lines = || std::fs::read_to_string(&out).unwrap_or_default().lines().count();
    let deadline = Instant::now() + T;
    while lines() < 10 || std::fs::read_to_string(&out).unwrap_or_default().contains("stale") {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none(), "{}", stderr_of(&err));
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id() as libc::pid_t;
    let kill = |sig| {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) }
    };
    kill(libc::SIGUSR1); // a checkpoint (the shim's RTMAX-2), and the program goes on
    while !dir.join("plain_loop.ckpt").is_file() {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none(), "{}", stderr_of(&err));
        std::thread::sleep(Duration::from_millis(10));
    }
    let at_first = lines();
    while lines() < at_first + 5 {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none(), "{}", stderr_of(&err));
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(libc::SIGTERM); // final checkpoint (RTMAX-3), then the program ends
    let st = wait(&mut child);
    let log = stderr_of(&err);
    assert_eq!(st.code(), Some(3), "checkpointed and stopped: {log}");
    assert!(!std::fs::read_to_string(&out).unwrap().contains("done"), "{log}");

    // The same command resumes the program from its newest image; its output ends as an uninterrupted run's.
    let err2 = t.path().join("job2.err");
    let mut cmd = ckpt_job(t.path(), &args, &[]);
    cmd.stderr(std::fs::File::create(&err2).unwrap());
    let st = wait(&mut cmd.spawn().unwrap());
    let log2 = stderr_of(&err2);
    assert_eq!(st.code(), Some(0), "{log2}");
    assert!(log2.contains("resuming from the newest image"), "{log2}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), want, "{log}\n{log2}");
}

#[test]
fn a_program_killed_before_its_copy_has_its_cached_checkpoint_copied_by_ckpt_job() {
    if !have_cc() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let exe = build("job_loop", t.path(), true);
    let dir = t.path().join("ckpt");
    let cache = t.path().join("node-local");
    let d = dir.to_str().unwrap();
    // Outside Slurm the checkpoint's name is the application's: `--name` says it.
    let args =
        ["--on-warning", "checkpoint", "--name", "jobloop", "--dir", d, "--", exe.to_str().unwrap(), "300", "10000"];
    let err = t.path().join("job.err");
    // Only the last checkpoint is copied, at the program's end, which the SIGKILL below never reaches.
    let env = [("CKPT_CACHE_DIR", cache.to_str().unwrap()), ("CKPT_FLUSH", "exit")];
    let mut job = Live::spawn(ckpt_job(t.path(), &args, &env), &err);
    job.wait_line("step 20");
    job.signal(libc::SIGUSR1);
    job.wait_line("checkpoint ");
    assert!(!dir.join("jobloop.ckpt.1").exists(), "not copied by the program");
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", job.child.id())).unwrap();
    let program: i32 = children.split_whitespace().next().expect("the program").parse().unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(program, libc::SIGKILL) };
    let (st, lines) = job.finish();
    let log = stderr_of(&err);
    assert!(log.contains("copied generation 1 from the node-local cache"), "{lines:?}\n{log}");
    assert!(dir.join("jobloop.ckpt.1").is_file(), "{log}");
    assert_ne!(st.code(), Some(0), "the program was killed: {log}");
}
