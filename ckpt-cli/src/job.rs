//! `ckpt job`: the supervisor a batch script `exec`s in place of the usual ~40 lines of bash. It runs the
//! program (one using libckpt, or an unmodified one under the shim with `--transparent`), turns the
//! signals Slurm sends the batch shell into checkpoint requests or a final checkpoint, waits through
//! them until the program has really exited, requeues the job boundedly (the progress check of
//! `ckpt requeue`), and exits with a status that says what happened:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | the program finished |
//! | 2 | `ckpt job` could not start the program (usage, settings, program not found) |
//! | 3 | the program stopped after a checkpoint and the job was not requeued (run the same command again, or resubmit, to continue) |
//! | 4 | the program stopped after a checkpoint and the job was requeued |
//! | other | the program failed: its exit status (128+N when signal N ended it; its statuses 2 to 4 are reported as 1) |
//!
//! Signals go to the program's root process only (the pid `ckpt job` started), never to its process
//! group: under the shim the root takes the checkpoint of the whole process tree and its children ignore
//! requests; a launcher (mpirun, srun) passes them on to its ranks itself. Inside a Slurm job SIGTERM is
//! not passed on to a program using libckpt (Slurm sends its own to every process of the job; a second
//! one makes mpirun abort), unless `--forward-term`; under `--transparent` it becomes the shim's
//! checkpoint-and-exit signal, SIGRTMAX-3, and the warning's checkpoint request SIGRTMAX-2.
//!
//! As an srun step's program (`srun ckpt job --requeue -- ./app`, one per task) each task supervises its
//! rank and only task 0 requeues the job.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use ckpt_core::{Config, Error, ErrorKind};

/// What the time-limit warning (`--signal=B:USR1@T`, or USR2) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnWarning {
    /// Ask for a checkpoint; the program continues (until the time limit's SIGTERM).
    Checkpoint,
    /// The final checkpoint now, then stop (and requeue with `--requeue`).
    Stop,
}

/// The settings of `ckpt job`.
pub struct JobArgs<'a> {
    /// Requeue the job after the program stopped at a checkpoint.
    pub requeue: bool,
    /// The bound on restarts (as `ckpt requeue --max-restarts`).
    pub max_restarts: u32,
    /// What the warning signal does.
    pub on_warning: OnWarning,
    /// Run an unmodified program under the shim (`ckpt run` / `ckpt restart`).
    pub transparent: bool,
    /// Pass SIGTERM on to the program inside a Slurm job too.
    pub forward_term: bool,
    /// The application name (for finding the checkpoints, as `ckpt requeue --name`).
    pub name: Option<&'a str>,
    /// The checkpoint directory (exported as CKPT_DIR).
    pub dir: Option<&'a Path>,
    /// The program's standard output: created when the program starts from the beginning, left to the
    /// restore when `--transparent` resumes it, appended to otherwise.
    pub output: Option<&'a Path>,
    /// The program and its arguments.
    pub command: &'a [String],
}

/// Why the program was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopCause {
    /// The time-limit warning with `--on-warning stop`.
    Warning,
    /// SIGTERM to `ckpt job`: the time limit, scancel or preemption.
    Term,
}

const HANDLED: [libc::c_int; 6] =
    [libc::SIGUSR1, libc::SIGUSR2, libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD];

fn say(msg: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr(), "ckpt job: {msg}");
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it and sigaddset takes valid numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// The signals (checkpoint and continue, checkpoint and exit) the program takes as requests.
fn request_signals(transparent: bool, cfg: &Config) -> (libc::c_int, libc::c_int) {
    if transparent {
        // The shim's own signals: they work even when the program handles USR1/TERM itself.
        return (libc::SIGRTMAX() - 2, libc::SIGRTMAX() - 3);
    }
    let go_on = cfg.signals.iter().find(|s| !s.exit).map(|s| s.signal).unwrap_or(libc::SIGUSR1);
    let stop = cfg.signals.iter().find(|s| s.exit).map(|s| s.signal).unwrap_or(libc::SIGTERM);
    (go_on, stop)
}

fn send(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; `pid` is our child (not yet reaped).
    unsafe { libc::kill(pid, sig) };
}

fn label(sig: libc::c_int) -> String {
    ckpt_core::triggers::signal_label(sig)
}

/// Whether a file name belongs to this job's checkpoints or logs (everything outside Slurm).
fn ours(name: &str, job: Option<&str>) -> bool {
    job.is_none_or(|j| name.strip_prefix(j).is_some_and(|rest| rest.starts_with('.')))
}

/// The newest modification time of a committed checkpoint of this job in `dir` (multi-rank parts too).
fn newest_checkpoint_time(dir: &Path, job: Option<&str>) -> Option<SystemTime> {
    let mut newest: Option<SystemTime> = None;
    let mut consider = |p: &Path| {
        if let Ok(t) = std::fs::metadata(p).and_then(|m| m.modified()) {
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
    };
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !ours(&name, job) {
            continue;
        }
        if let Some(base) = ckpt_core::any_base(&name)
            && matches!(
                ckpt_core::classify(base, &name),
                Some(ckpt_core::NameKind::Current | ckpt_core::NameKind::Generation(_))
            )
        {
            consider(&e.path());
        }
    }
    newest
}

/// The log lines since `since` (unix seconds) of this job's logs in `dir` (and CKPT_LOG's file) that
/// record a checkpoint after which the program was to exit (or a time-limit checkpoint): their triggers
/// (`time-limit`, `signal`...).
fn exit_checkpoints(cfg: &Config, dir: &Path, job: Option<&str>, since: f64) -> Vec<Vec<String>> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".log") && ours(&n, job)
        })
        .map(|e| e.path())
        .collect();
    if let ckpt_core::LogTarget::File(p) = &cfg.log {
        logs.push(p.clone());
    }
    let mut out = Vec::new();
    for log in logs {
        let Ok(text) = std::fs::read_to_string(&log) else { continue };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            // A rank's part of a multi-rank step logs "exit": false (the exit is decided when the step is
            // committed), but a time-limit checkpoint always ends the run.
            let time_limit = v["trigger"].as_array().is_some_and(|a| a.iter().any(|t| t == "time-limit"));
            if v["event"] == "checkpoint"
                && (v["exit"] == true || time_limit)
                && v["ts"].as_f64().is_some_and(|t| t >= since)
            {
                let triggers = v["trigger"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                out.push(triggers);
            }
        }
    }
    out
}

/// Whether a program image of this run is in `dir` (`ckpt restart` then chooses and verifies it).
fn has_image(dir: &Path, base: &str) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with(base)
            && ckpt_core::any_base(&name).is_some_and(|b| {
                matches!(
                    ckpt_core::classify(b, &name),
                    Some(ckpt_core::NameKind::Current | ckpt_core::NameKind::Generation(_))
                )
            })
    })
}

/// The application name the shim gives a program: `name`, CKPT_NAME, SLURM_JOB_NAME, or the file name of
/// the executable (symbolic links resolved, as /proc/self/exe shows it).
fn shim_app_name(name: Option<&str>, program: &str) -> String {
    let env = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
    if let Some(n) = name.map(String::from).or_else(|| env("CKPT_NAME")).or_else(|| env("SLURM_JOB_NAME")) {
        return n;
    }
    let path = if program.contains('/') {
        Some(PathBuf::from(program))
    } else {
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|c| c.is_file()))
    };
    path.and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| program.rsplit('/').next().unwrap_or(program).to_string())
}

/// This process's task number and the step's task count when it is a task of an srun step of several
/// tasks (`srun ckpt job -- ./app`: one `ckpt job` per rank), from SLURM_STEP_ID, SLURM_PROCID and
/// SLURM_STEP_NUM_TASKS (or SLURM_NTASKS).
fn step_task() -> Option<(u32, u32)> {
    let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
    var("SLURM_STEP_ID")?;
    let task = var("SLURM_PROCID")?.parse().ok()?;
    let ntasks: u32 = var("SLURM_STEP_NUM_TASKS").or_else(|| var("SLURM_NTASKS"))?.parse().ok()?;
    (ntasks > 1).then_some((task, ntasks))
}

/// Slurm's reason for a job's state (`TimeLimit`, `None`...), from `scontrol show job -o`.
fn slurm_reason(job: &str) -> Option<String> {
    let text = super::scontrol::run(&["show", "job", "-o", job], super::scontrol::SCONTROL_TIMEOUT).ok()?;
    text.split_whitespace().find_map(|f| f.strip_prefix("Reason=")).map(String::from)
}

/// `ckpt job`.
pub fn job(args: &JobArgs) -> Result<ExitCode, Error> {
    // Settings for the program (and for finding its checkpoints here), on top of this environment.
    let mut overrides: Vec<(&str, String)> = Vec::new();
    if let Some(d) = args.dir {
        std::fs::create_dir_all(d).map_err(|e| Error::io("create the checkpoint directory", e).with_path(d))?;
        let abs = std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
        overrides.push(("CKPT_DIR", abs.to_string_lossy().into_owned()));
    }
    // The shim names its images after CKPT_NAME, SLURM_JOB_NAME or the program's file (the job id comes
    // first in a job): the same name here finds them.
    let shim_name = args.transparent.then(|| shim_app_name(args.name, &args.command[0]));
    if let (Some(n), Some(_)) = (&shim_name, args.name) {
        overrides.push(("CKPT_NAME", n.clone()));
    }
    let lookup =
        |k: &str| overrides.iter().find(|(o, _)| *o == k).map(|(_, v)| v.clone()).or_else(|| std::env::var(k).ok());
    let cfg = Config::from_lookup(shim_name.as_deref().or(args.name), lookup)?;
    // `ckpt requeue --name NAME` as the batch script would run it (with this CKPT_DIR).
    let requeue_cfg = Config::from_lookup(args.name, lookup)?;
    let job_id = cfg.job_id.clone();
    let dir = cfg.checkpoint_dir.clone();
    let (go_on_sig, stop_sig) = request_signals(args.transparent, &cfg);

    let resumes_image = args.transparent && has_image(&cfg.restart_dir, &cfg.base_name());
    let mut cmd;
    if args.transparent {
        // `ckpt run` / `ckpt restart` of this very executable (not of a Python interpreter that runs the
        // command from the ckpt-hpc wheel, which has no shim).
        let me = std::env::current_exe().map_err(|e| Error::io("locate the ckpt executable", e))?;
        if !me.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ckpt")) {
            return Err(Error::invalid(format!(
                "--transparent needs the ckpt executable of ckpt-cli (this is {})",
                me.display()
            )));
        }
        cmd = std::process::Command::new(&me);
        if resumes_image {
            say(format_args!("resuming from the newest image in {}", cfg.restart_dir.display()));
            cmd.arg("restart").arg("--image-dir").arg(&cfg.restart_dir);
        } else {
            cmd.arg("run").arg("--dir").arg(&dir).arg("--").args(args.command);
        }
    } else {
        cmd = std::process::Command::new(&args.command[0]);
        cmd.args(&args.command[1..]);
    }
    for (k, v) in &overrides {
        cmd.env(k, v);
    }
    if let Some(out) = args.output {
        let mut o = std::fs::OpenOptions::new();
        if !args.transparent {
            o.append(true).create(true);
        } else if resumes_image {
            // The restore reopens it and cuts it back to its size at the checkpoint: keep its bytes.
            o.write(true);
        } else {
            o.write(true).create(true).truncate(true);
        }
        let f = o.open(out).map_err(|e| Error::io("open the output file", e).with_path(out))?;
        cmd.stdout(f);
    }

    // The signals are blocked in this process and taken with sigtimedwait: none is lost while the child
    // starts, and waiting continues through them. The child unblocks them before its exec.
    let set = signal_set();
    // SAFETY: valid sigset; SIGCHLD's default action (not SIG_IGN) so the child can be waited for.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    {
        use std::os::unix::process::CommandExt;
        let unblock = set;
        // SAFETY: only sigprocmask, which is async-signal-safe, runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::sigprocmask(libc::SIG_UNBLOCK, &unblock, std::ptr::null_mut());
                Ok(())
            });
        }
    }
    let started = SystemTime::now();
    let started_unix = started.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            // SAFETY: valid sigset.
            unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
            return Err(Error::new(ErrorKind::NotFound, format!("cannot run {}: {e}", args.command[0])));
        }
    };
    let pid = child.id() as libc::pid_t;
    say(format_args!(
        "started {} (pid {pid}){}; {}",
        args.command.join(" "),
        job_id
            .as_deref()
            .map(|j| format!(" in job {j}, restart {}", cfg.restart_count.unwrap_or(0)))
            .unwrap_or_default(),
        cfg.interval_in_words()
    ));

    // In a job, Slurm's SIGTERM (time limit, scancel, preemption) reaches every process of the job, the
    // program too: a second one from here would make a launcher abort at once (Open MPI's mpirun kills its
    // ranks on the second), so it is passed on only outside a job, with --forward-term, or as the shim's
    // own checkpoint-and-exit signal (which the program cannot take for its own).
    let forward_term = args.transparent || job_id.is_none() || args.forward_term;
    let mut stop: Option<(StopCause, SystemTime)> = None;
    let raw_status = loop {
        let mut st: libc::c_int = 0;
        // SAFETY: `st` is writable; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            break st;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(Error::io("wait for the program", std::io::Error::last_os_error()));
        }
        let timeout = libc::timespec { tv_sec: 1, tv_nsec: 0 };
        // SAFETY: valid sigset and timespec; the siginfo pointer may be null.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        match sig {
            libc::SIGUSR1 | libc::SIGUSR2 => match args.on_warning {
                OnWarning::Checkpoint => {
                    say(format_args!("{}: checkpoint requested (pid {pid}, {})", label(sig), label(go_on_sig)));
                    send(pid, go_on_sig);
                }
                OnWarning::Stop if stop.is_none() => {
                    say(format_args!(
                        "{}: the time limit is near: final checkpoint, then stop (pid {pid}, {})",
                        label(sig),
                        label(stop_sig)
                    ));
                    stop = Some((StopCause::Warning, SystemTime::now()));
                    send(pid, stop_sig);
                }
                OnWarning::Stop => say(format_args!("{}: already stopping", label(sig))),
            },
            libc::SIGTERM if stop.is_none_or(|(c, _)| c == StopCause::Warning) => {
                if !forward_term {
                    say(format_args!("TERM: Slurm sent it to every process of the job: final checkpoint, then stop"));
                } else if stop.is_none() {
                    say(format_args!("TERM: final checkpoint, then stop (pid {pid}, {})", label(stop_sig)));
                    send(pid, stop_sig);
                }
                stop = Some((StopCause::Term, stop.map_or_else(SystemTime::now, |(_, t)| t)));
            }
            libc::SIGTERM => say(format_args!("TERM: already stopping")),
            libc::SIGINT | libc::SIGHUP => {
                say(format_args!("{}: passed on to the program (pid {pid})", label(sig)));
                send(pid, sig);
            }
            _ => {} // SIGCHLD or the timeout: look again
        }
    };
    // SIGTERM stays blocked: what is left (the copy from the cache, the requeue and its report) must not
    // be cut off by the SIGTERM Slurm sends every process of the job on a requeue (or at the time limit:
    // SIGKILL follows after KillWait).
    let mut after = set;
    // SAFETY: a valid sigset and a valid signal number.
    unsafe {
        libc::sigdelset(&mut after, libc::SIGTERM);
        libc::sigprocmask(libc::SIG_UNBLOCK, &after, std::ptr::null_mut());
    }
    drop(child);

    let program_status =
        if libc::WIFEXITED(raw_status) { libc::WEXITSTATUS(raw_status) } else { 128 + libc::WTERMSIG(raw_status) };
    let how = if libc::WIFSIGNALED(raw_status) {
        format!("was ended by signal {}", label(libc::WTERMSIG(raw_status)))
    } else {
        format!("exited with status {program_status}")
    };

    // With a cache level, what the program left in the node-local cache and not in the checkpoint
    // directory (killed during its background copy, or its exit's wait timed out) is copied now, so that
    // the requeue's progress check, another node and `ckpt requeue` see it.
    if cfg.cache.is_some() {
        match super::flush::flush(cfg.clone(), true, std::time::Duration::from_secs(600)) {
            Ok(f) => {
                for r in &f.rows {
                    match r["ok"].as_bool() {
                        Some(true) => say(format_args!(
                            "copied generation {} from the node-local cache to the checkpoint directory",
                            r["generation"]
                        )),
                        _ => say(format_args!(
                            "could not copy generation {} from the node-local cache: {}",
                            r["generation"],
                            r["error"].as_str().unwrap_or("?")
                        )),
                    }
                }
            }
            Err(e) => say(format_args!("could not copy from the node-local cache: {e}")),
        }
    }

    // Stopped at a checkpoint: asked to stop, and a checkpoint was committed since; or the program took
    // a checkpoint after which it was to exit (the time-limit trigger, a signal, `ckpt create --vacate`).
    let job_key = job_id.as_deref();
    let newest = newest_checkpoint_time(&dir, job_key);
    // After the warning we asked for the checkpoint: it must be newer than the request. Slurm's SIGTERM
    // reaches an srun step's ranks before the batch step (this process): any checkpoint of this run counts
    // (and the requeue's progress check compares it with the previous requeue's).
    let after_stop = match stop {
        Some((StopCause::Warning, t)) => newest.is_some_and(|n| n >= t),
        Some((StopCause::Term, _)) => newest.is_some_and(|n| n >= started),
        None => false,
    };
    let own_exits = exit_checkpoints(&cfg, &dir, job_key, started_unix);
    // The shim ends a program after its checkpoint-and-exit (time limit, SIGTERM to the program itself,
    // `ckpt create --vacate`) by SIGTERM's default action; its log names no trigger.
    let shim_exit = args.transparent
        && libc::WIFSIGNALED(raw_status)
        && libc::WTERMSIG(raw_status) == libc::SIGTERM
        && newest.is_some_and(|n| n >= started);
    let own_time_limit = shim_exit || own_exits.iter().any(|t| t.iter().any(|x| x == "time-limit"));
    if !after_stop && own_exits.is_empty() && !shim_exit {
        if program_status == 0 {
            say(format_args!("finished: the program exited with status 0 (exit 0)"));
            return Ok(ExitCode::SUCCESS);
        }
        let code = if (2..=4).contains(&program_status) { 1 } else { program_status };
        say(format_args!(
            "failed: the program {how}{} (exit {code})",
            if stop.is_some() { " without a checkpoint after the stop request" } else { "" }
        ));
        return Ok(ExitCode::from(code as u8));
    }
    say(format_args!("the program {how} after a checkpoint"));

    // Requeue: only in a job, when asked, and not after scancel or preemption; in an srun step whose
    // every task runs `ckpt job` (`srun ckpt job -- ./app`), by its task 0 only (one requeue per job).
    let step_task = step_task();
    let why_not = if !args.requeue {
        Some("no --requeue".to_string())
    } else if job_id.is_none() {
        Some("not in a Slurm job".to_string())
    } else if let Some((task, ntasks)) = step_task.filter(|&(task, _)| task > 0) {
        Some(format!("task {task} of {ntasks} of this srun step: task 0 requeues the job"))
    } else {
        match stop.map(|(c, _)| c) {
            Some(StopCause::Warning) => None,
            Some(StopCause::Term) => match slurm_reason(job_id.as_deref().unwrap_or_default()) {
                Some(r) if r == "TimeLimit" => None,
                r => Some(format!(
                    "SIGTERM with Slurm reason {} (cancelled or preempted, not the time limit)",
                    r.as_deref().unwrap_or("unknown")
                )),
            },
            None if own_time_limit => None,
            None => Some("the program stopped at a checkpoint on a request (not the time limit)".into()),
        }
    };
    let not_requeued = |why: &str| {
        say(format_args!(
            "stopped after a checkpoint, not requeued ({why}): run the same command again, or resubmit, to \
             continue (exit 3)"
        ));
        Ok(ExitCode::from(3))
    };
    if let Some(why) = why_not {
        return not_requeued(&why);
    }
    match super::requeue::requeue_with(&requeue_cfg, args.max_restarts, false, &mut std::io::stderr()) {
        Ok(code) if code == ExitCode::SUCCESS => {
            say(format_args!("stopped after a checkpoint, requeued (exit 4)"));
            Ok(ExitCode::from(4))
        }
        Ok(_) => not_requeued("see ckpt requeue's reason above"),
        Err(e) => not_requeued(&format!("requeue failed: {e}")),
    }
}
