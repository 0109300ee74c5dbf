//! The job's end time from `squeue`, off every start and exit path: a query in its own process group,
//! polled without blocking and abandoned (killed and reaped) when nobody waits any more, and one query per
//! node and job at a time, shared through the per-user runtime directory.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard, Once, TryLockError};
use std::time::{Duration, Instant};

use super::{parse_slurm_timestamp, unix_now};
use crate::control::{self, RuntimeDir};
use crate::error::{Error, Result};

/// How often squeue is asked again for a job's end time (end times can change), and how long a node's
/// shared answer counts as fresh.
pub const SQUEUE_REFRESH: Duration = Duration::from_secs(300);
/// How long one squeue call may run before it is abandoned (killed).
pub const SQUEUE_TIMEOUT: Duration = Duration::from_secs(15);
/// While another process of the node asks squeue, how often the shared answer is looked for.
const SHARED_POLL: Duration = Duration::from_secs(1);
/// Bytes of squeue output kept (one line is expected).
const MAX_SQUEUE_OUTPUT: usize = 4096;

/// The squeue program: `CKPT_SQUEUE`, else `squeue` from `PATH`.
pub fn squeue_program() -> OsString {
    std::env::var_os("CKPT_SQUEUE").filter(|v| !v.is_empty()).unwrap_or_else(|| "squeue".into())
}

/// Process groups of squeue children in flight, with the pid of the process that started them: killed at
/// `exit()` when their owner exits without dropping them (a C program that never calls `ckpt_finalize`).
static IN_FLIGHT: Mutex<Vec<(u32, libc::pid_t)>> = Mutex::new(Vec::new());
static KILL_AT_EXIT: Once = Once::new();

extern "C" fn kill_queries_at_exit() {
    let list = match IN_FLIGHT.try_lock() {
        Ok(l) => l,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    let me = std::process::id();
    for &(_, pgid) in list.iter().filter(|(owner, _)| *owner == me) {
        // SAFETY: kill has no memory effects. The group's leader is our unreaped child (entries are
        // removed before reaping), so the group id still names its group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

fn in_flight() -> MutexGuard<'static, Vec<(u32, libc::pid_t)>> {
    IN_FLIGHT.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One `squeue -h -j JOB -o %e` in flight, started in its own process group, that never blocks its owner:
/// [`SqueueQuery::poll`] reads what is there and returns at once. Dropping it before it finished abandons
/// it: the whole group (squeue, and anything a wrapper script started) gets SIGKILL, which cannot be
/// ignored, and the child is reaped; no zombie is left.
#[derive(Debug)]
pub struct SqueueQuery {
    child: Option<Child>,
    stdout: Option<ChildStdout>,
    out: Vec<u8>,
    started: Instant,
    program: OsString,
}

impl SqueueQuery {
    /// Starts `squeue -h -j JOB -o %e` ([`squeue_program`]).
    ///
    /// # Errors
    ///
    /// As [`SqueueQuery::spawn_program`].
    pub fn spawn(job_id: &str) -> Result<SqueueQuery> {
        SqueueQuery::spawn_program(&squeue_program(), job_id)
    }

    /// Starts `program -h -j JOB -o %e`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) when `program` cannot be started (not found, not executable).
    pub fn spawn_program(program: &OsStr, job_id: &str) -> Result<SqueueQuery> {
        KILL_AT_EXIT.call_once(|| {
            // SAFETY: registers a plain function without arguments for exit(); it only sends signals.
            unsafe { libc::atexit(kill_queries_at_exit) };
        });
        let mut child = Command::new(program)
            .args(["-h", "-j", job_id, "-o", "%e"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io(&format!("run {}", program.to_string_lossy()), e))?;
        in_flight().push((std::process::id(), child.id() as libc::pid_t));
        let stdout = child.stdout.take();
        if let Some(o) = &stdout {
            // SAFETY: F_SETFL on the pipe's fd, owned by `o`: reads return at once.
            unsafe {
                let fd = o.as_raw_fd();
                libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK);
            }
        }
        Ok(SqueueQuery {
            child: Some(child),
            stdout,
            out: Vec::new(),
            started: Instant::now(),
            program: program.into(),
        })
    }

    /// The pid of the squeue child, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// When it started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The descriptor to `poll(2)` for output (while squeue's output is open).
    pub fn fd(&self) -> Option<RawFd> {
        self.stdout.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn drain(&mut self) {
        let Some(o) = self.stdout.as_mut() else { return };
        let mut buf = [0u8; 1024];
        loop {
            match o.read(&mut buf) {
                Ok(0) => {
                    self.stdout = None;
                    return;
                }
                Ok(n) => {
                    let room = MAX_SQUEUE_OUTPUT.saturating_sub(self.out.len());
                    self.out.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.stdout = None;
                    return;
                }
            }
        }
    }

    /// The child's state, without reaping it (so its process group id stays ours).
    fn state(&self) -> ChildState {
        let Some(child) = &self.child else { return ChildState::Gone };
        // SAFETY: siginfo_t is a plain C struct the kernel fills; WNOWAIT leaves the child waitable.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if rc != 0 {
                // ECHILD: someone else reaped it (SIGCHLD ignored, or a waitpid(-1) of the program).
                ChildState::Gone
            } else if info.si_pid() != 0 {
                ChildState::Exited
            } else {
                ChildState::Running
            }
        }
    }

    /// Kills the child's whole process group with SIGKILL and reaps the child. Waits at most 0.2 s for
    /// the reaping (a process in uninterruptible sleep dies when its I/O ends): past that, a detached
    /// thread reaps it, so no zombie stays and nobody waits.
    fn kill_and_reap(&mut self) -> Option<std::process::ExitStatus> {
        let state = self.state();
        let mut child = self.child.take()?;
        let pid = child.id() as libc::pid_t;
        in_flight().retain(|&(_, p)| p != pid);
        if state == ChildState::Gone {
            // Reaped by someone else: its pid (and group id) may already name another process.
            return None;
        }
        // SAFETY: kill has no memory effects. `pid` is our child, not yet reaped (only this function
        // reaps it, and `state` saw it waitable), so `-pid` still names its process group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Ok(None) => {
                    let reaper = std::thread::Builder::new().name("ckpt-reap".into()).spawn(move || {
                        let _ = child.wait();
                    });
                    drop(reaper);
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads the output that is there; once squeue has exited, reaps it and returns the end time (seconds
    /// since the epoch, `Ok(None)` when the job has none: `Unknown`, `N/A`, `NONE`). Never blocks.
    pub fn poll(&mut self) -> Option<Result<Option<i64>>> {
        self.child.as_ref()?;
        self.drain();
        if self.state() == ChildState::Running {
            return None;
        }
        // Anything left in its group (a wrapper's children holding the pipe) goes with it.
        let status = self.kill_and_reap();
        self.drain();
        self.stdout = None;
        let name = self.program.to_string_lossy().into_owned();
        let text = String::from_utf8_lossy(&self.out);
        let line = text.lines().next().unwrap_or("").trim().to_string();
        if let Some(st) = status.filter(|s| !s.success())
            && line.is_empty()
        {
            return Some(Err(Error::invalid(format!("{name} failed ({st})"))));
        }
        Some(parse_squeue_line(&line, &name))
    }

    /// Abandons the query: its process group is killed (SIGKILL) and the child reaped (see
    /// [`SqueueQuery`]). Dropping does the same.
    pub fn abandon(mut self) {
        self.kill_and_reap();
    }
}

impl Drop for SqueueQuery {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChildState {
    Running,
    Exited,
    Gone,
}

fn parse_squeue_line(line: &str, program: &str) -> Result<Option<i64>> {
    if line.is_empty() || ["unknown", "n/a", "none", "invalid"].contains(&line.to_ascii_lowercase().as_str()) {
        return Ok(None);
    }
    parse_slurm_timestamp(line)
        .map(Some)
        .ok_or_else(|| Error::invalid(format!("cannot parse the end time {line:?} printed by {program}")))
}

/// Asks Slurm for a job's end time with `squeue -h -j JOB -o %e`, waiting up to `timeout` (then the query
/// is killed, see [`SqueueQuery`]). Returns seconds since the epoch, `Ok(None)` when the job has no end
/// time (`Unknown`, `N/A`, `NONE`).
///
/// This blocks its caller for as long as squeue takes: never call it on a start or exit path. The
/// checkpointer asks in the background ([`EndTimeWatch`]); [`timer_plan`](super::timer_plan) never asks.
///
/// # Errors
///
/// [`ErrorKind::Io`](crate::ErrorKind::Io) when squeue cannot be started;
/// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) when it does not answer within `timeout` (it is
/// killed), exits with a failure, or prints something that is not an end time.
pub fn query_squeue_end_time(job_id: &str, timeout: Duration) -> Result<Option<i64>> {
    let mut q = SqueueQuery::spawn(job_id)?;
    loop {
        if let Some(r) = q.poll() {
            return r;
        }
        let left = timeout.saturating_sub(q.started().elapsed());
        if left.is_zero() {
            let name = q.program.to_string_lossy().into_owned();
            q.abandon();
            return Err(Error::invalid(format!("{name} did not answer within {timeout:?} (killed)")));
        }
        wait_readable(q.fd(), left.min(Duration::from_millis(50)));
    }
}

/// Sleeps until `fd` is readable or `max` has passed.
fn wait_readable(fd: Option<RawFd>, max: Duration) {
    let ms = max.as_millis().clamp(1, 1000) as i32;
    match fd {
        Some(fd) => {
            let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one live pollfd for the duration of the call.
            unsafe { libc::poll(&mut p, 1, ms) };
        }
        None => std::thread::sleep(Duration::from_millis(ms as u64)),
    }
}

/// One answer about the job's end time.
#[derive(Clone, Debug, PartialEq)]
pub struct EndTimeReading {
    /// The end time (seconds since the epoch), `None` when squeue gave none or failed.
    pub end_time: Option<i64>,
    /// Why there is no end time, when squeue failed.
    pub error: Option<String>,
    /// When squeue answered (seconds since the epoch).
    pub read_at: f64,
    /// Whether the answer came from another process of this node and job (the shared answer) rather
    /// than from a squeue this process ran.
    pub shared: bool,
}

/// The shared answer's file: per job *and* run of the job (`SLURM_RESTART_COUNT`): after a requeue the
/// job has a new end time, and the previous run's answer (fresh for up to a refresh period) would put the
/// restarted run's time-limit checkpoint in the past, again at every requeue.
fn shared_answer_name(key: &str) -> String {
    format!("squeue.{key}.json")
}

fn shared_lock_name(key: &str) -> String {
    format!("squeue.{key}.lock")
}

/// The key of a job's run: the job id, and the restart count when the job was requeued.
pub fn run_key(job_id: &str, restart_count: Option<u32>) -> String {
    match restart_count {
        Some(n) => format!("{job_id}.r{n}"),
        None => job_id.to_string(),
    }
}

/// Reads the node's shared answer for `job_id` from the verified runtime directory, if it is there, a
/// regular file of ours, well-formed, for this job, and not older than `max_age`.
fn read_shared(dir: &RuntimeDir, job_id: &str, key: &str, max_age: Duration) -> Option<EndTimeReading> {
    let mut f = dir.open_file(&shared_answer_name(key), libc::O_RDONLY, 0).ok()?;
    let mut text = String::new();
    (&mut f).take(MAX_SQUEUE_OUTPUT as u64).read_to_string(&mut text).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    if v.get("job_id").and_then(|j| j.as_str()) != Some(job_id) {
        return None;
    }
    let read_at = v.get("read_at")?.as_f64()?;
    let now = unix_now();
    // An answer from the future (a clock step, a forged file) would look fresh forever.
    if !read_at.is_finite() || read_at > now + 60.0 || now - read_at > max_age.as_secs_f64() {
        return None;
    }
    let end_time = match v.get("end_time")? {
        serde_json::Value::Null => None,
        t => Some(t.as_i64().filter(|&t| t > 0)?),
    };
    let error = v.get("error").and_then(|e| e.as_str()).map(str::to_string);
    Some(EndTimeReading { end_time, error, read_at, shared: true })
}

/// Publishes an answer for the other processes of this node and job: written to a temporary file of this
/// process (created exclusively, 0600, never through a symlink) and renamed over the answer (atomic: a
/// reader sees the old or the new answer, whole).
fn write_shared(dir: &RuntimeDir, job_id: &str, key: &str, reading: &EndTimeReading) -> std::io::Result<()> {
    let name = shared_answer_name(key);
    let tmp = format!("{name}.{}.tmp", std::process::id());
    let _ = dir.unlink(&tmp);
    let mut f = dir.open_file(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)?;
    let text = serde_json::json!({
        "job_id": job_id, "end_time": reading.end_time, "error": reading.error, "read_at": reading.read_at,
        "pid": std::process::id(), "host": crate::hostname(),
    })
    .to_string();
    let written = f.write_all(text.as_bytes()).and_then(|()| dir.rename(&tmp, &name));
    if written.is_err() {
        let _ = dir.unlink(&tmp);
    }
    written
}

/// Takes the node's squeue lock for `job_id` without waiting: `Ok(None)` when another process holds it.
fn try_lock_shared(dir: &RuntimeDir, key: &str) -> std::io::Result<Option<File>> {
    let f = dir.open_file(&shared_lock_name(key), libc::O_RDWR | libc::O_CREAT, 0o600)?;
    // SAFETY: flock on an fd owned by `f`; the lock is released when `f` is closed (or the process dies).
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(None) } else { Err(e) };
    }
    // Its time stamp says when it was last used (the cleanup at start removes locks unused for a day).
    // SAFETY: futimens on an fd owned by `f`; NULL means "now".
    unsafe { libc::futimens(f.as_raw_fd(), std::ptr::null()) };
    Ok(Some(f))
}

/// The freshest answer about `job_id`'s end time that a process of this node published in `socket_dir`
/// (not older than [`SQUEUE_REFRESH`]), without running squeue: for callers that cannot wait, such as
/// program start. `None` when there is none, or the directory is not a private directory of this user.
/// `restart_count` is the job's `SLURM_RESTART_COUNT`: answers are shared per run of the job.
pub fn shared_end_time(socket_dir: &Path, job_id: &str, restart_count: Option<u32>) -> Option<EndTimeReading> {
    let dir = RuntimeDir::open(socket_dir).ok()?;
    read_shared(&dir, job_id, &run_key(job_id, restart_count), SQUEUE_REFRESH)
}

/// Learns the job's end time from squeue in the background, one query per node and job at a time.
///
/// Each call of [`EndTimeWatch::step`] does a bounded amount of work and returns: it never waits for
/// squeue. The processes of one job on one node share the answer through the per-user runtime directory
/// (the control-socket directory, checked to be ours and private): `squeue.<job>.json` holds the last
/// answer and when it was read; a process that finds no answer fresher than the refresh period takes the
/// lock `squeue.<job>.lock` (`flock`, without waiting), asks squeue, and publishes the answer atomically;
/// the others look for the answer every second meanwhile. A lock holder that dies releases the lock with
/// its descriptor, and another process asks. Without a runtime directory (`CKPT_SOCKET=0`), or when it
/// cannot be trusted, each process asks for itself. Dropping the watch abandons a query in flight
/// (killed, reaped: see [`SqueueQuery`]).
#[derive(Debug)]
pub struct EndTimeWatch {
    job_id: String,
    /// The shared answer's key ([`run_key`]).
    key: String,
    program: OsString,
    socket_dir: Option<PathBuf>,
    dir: Option<RuntimeDir>,
    dir_tried: bool,
    query: Option<(SqueueQuery, Option<File>)>,
    next: Instant,
    refresh: Duration,
    timeout: Duration,
    delivered_read_at: Option<f64>,
    warnings: Vec<String>,
}

impl EndTimeWatch {
    /// A watch of `job_id`'s end time, sharing answers through `socket_dir` when given, asking `squeue`
    /// from `PATH` (see [`EndTimeWatch::with_program`]; the environment is not read). Does no I/O.
    pub fn new(job_id: &str, socket_dir: Option<&Path>) -> EndTimeWatch {
        EndTimeWatch {
            job_id: job_id.to_string(),
            key: job_id.to_string(),
            program: OsString::from("squeue"),
            socket_dir: socket_dir.map(Path::to_path_buf),
            dir: None,
            dir_tried: false,
            query: None,
            next: Instant::now(),
            refresh: SQUEUE_REFRESH,
            timeout: SQUEUE_TIMEOUT,
            delivered_read_at: None,
            warnings: Vec::new(),
        }
    }

    /// Shares answers only with the processes of this run of the job (`SLURM_RESTART_COUNT`): a
    /// requeued job has a new end time.
    pub fn for_run(mut self, restart_count: Option<u32>) -> EndTimeWatch {
        self.key = run_key(&self.job_id, restart_count);
        self
    }

    /// Uses `program` instead of [`squeue_program`].
    pub fn with_program(mut self, program: impl Into<OsString>) -> EndTimeWatch {
        self.program = program.into();
        self
    }

    /// Changes the refresh period (also the freshness required of a shared answer) and the time a query
    /// may take. For the tests, which cannot wait the default refresh period.
    #[cfg(test)]
    pub(crate) fn with_timing(mut self, refresh: Duration, timeout: Duration) -> EndTimeWatch {
        self.refresh = refresh;
        self.timeout = timeout;
        self
    }

    /// The descriptor to `poll(2)` while a query runs (its output).
    pub fn fd(&self) -> Option<RawFd> {
        self.query.as_ref().and_then(|(q, _)| q.fd())
    }

    /// The pid of the squeue this process runs now, if any.
    pub fn query_pid(&self) -> Option<u32> {
        self.query.as_ref().and_then(|(q, _)| q.pid())
    }

    /// How long the owner may sleep before [`EndTimeWatch::step`] has something to do.
    pub fn wake_in(&self) -> Duration {
        if self.query.is_some() {
            // The output's descriptor wakes the owner; the exit of a squeue whose pipe something else
            // still holds open does not: look again soon.
            return Duration::from_millis(100);
        }
        self.next.saturating_duration_since(Instant::now())
    }

    /// Warnings since the last call (the runtime directory could not be used: answers are not shared).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    fn verified_dir(&mut self) -> Option<&RuntimeDir> {
        if !self.dir_tried {
            self.dir_tried = true;
            if let Some(d) = &self.socket_dir {
                match control::prepare_socket_dir(d).and_then(|()| RuntimeDir::open(d)) {
                    Ok(dir) => self.dir = Some(dir),
                    Err(e) => self.warnings.push(format!("squeue answers are not shared on this node: {e}")),
                }
            }
        }
        self.dir.as_ref()
    }

    fn deliver_shared(&mut self, r: EndTimeReading) -> Option<EndTimeReading> {
        let age = (unix_now() - r.read_at).max(0.0);
        self.next = Instant::now() + Duration::from_secs_f64((self.refresh.as_secs_f64() - age).max(1.0));
        if self.delivered_read_at == Some(r.read_at) {
            return None;
        }
        self.delivered_read_at = Some(r.read_at);
        Some(r)
    }

    /// Does what is due, without waiting: finishes a query whose answer is in (publishing it for the node),
    /// abandons one that took too long, adopts a fresh answer of another process, or starts a query.
    /// Returns a new answer when there is one.
    pub fn step(&mut self) -> Option<EndTimeReading> {
        if let Some((q, _)) = &mut self.query {
            let outcome = match q.poll() {
                Some(r) => r,
                None if q.started().elapsed() >= self.timeout => Err(Error::invalid(format!(
                    "{} did not answer within {:?} (killed)",
                    self.program.to_string_lossy(),
                    self.timeout
                ))),
                None => return None,
            };
            let (q, lock) = self.query.take()?;
            drop(q);
            let reading = match outcome {
                Ok(end_time) => EndTimeReading { end_time, error: None, read_at: unix_now(), shared: false },
                Err(e) => {
                    EndTimeReading { end_time: None, error: Some(e.to_string()), read_at: unix_now(), shared: false }
                }
            };
            return Some(self.finish(reading, lock));
        }
        if Instant::now() < self.next {
            return None;
        }
        let (job, key, refresh) = (self.job_id.clone(), self.key.clone(), self.refresh);
        let mut lock = None;
        if let Some(dir) = self.verified_dir() {
            if let Some(r) = read_shared(dir, &job, &key, refresh) {
                return self.deliver_shared(r);
            }
            match try_lock_shared(dir, &key) {
                Ok(Some(l)) => {
                    // Another process may have published between the look and the lock.
                    if let Some(r) = read_shared(dir, &job, &key, refresh) {
                        drop(l);
                        return self.deliver_shared(r);
                    }
                    lock = Some(l);
                }
                Ok(None) => {
                    self.next = Instant::now() + SHARED_POLL;
                    return None;
                }
                Err(e) => {
                    let msg = format!("cannot take the squeue lock in {}: {e}; asking alone", dir.path().display());
                    self.warnings.push(msg);
                }
            }
        }
        match SqueueQuery::spawn_program(&self.program, &self.job_id) {
            Ok(q) => {
                self.query = Some((q, lock));
                None
            }
            Err(e) => {
                let reading =
                    EndTimeReading { end_time: None, error: Some(e.to_string()), read_at: unix_now(), shared: false };
                Some(self.finish(reading, lock))
            }
        }
    }

    fn finish(&mut self, reading: EndTimeReading, lock: Option<File>) -> EndTimeReading {
        if let (Some(dir), Some(_)) = (&self.dir, &lock)
            && let Err(e) = write_shared(dir, &self.job_id, &self.key, &reading)
        {
            self.warnings.push(format!("cannot share the squeue answer in {}: {e}", dir.path().display()));
        }
        drop(lock);
        self.next = Instant::now() + self.refresh;
        self.delivered_read_at = Some(reading.read_at);
        reading
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use crate::triggers::timer_plan;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn private_dir(parent: &Path) -> PathBuf {
        let d = parent.join("sock");
        control::prepare_socket_dir(&d).unwrap();
        d
    }

    /// `R` (running), `Z` (zombie) or `None` (gone) for a pid.
    fn proc_state(pid: i32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next())
    }

    fn pids(file: &Path, n: usize) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<i32> = std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(Instant::now() < deadline, "the stand-in did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A squeue that hangs and ignores SIGTERM (and started a child of its own) is abandoned at once: its
    /// whole process group gets SIGKILL, the child is reaped (no zombie), and nobody waits for it.
    #[test]
    fn an_abandoned_query_is_killed_and_reaped_at_once() {
        let t = tempfile::tempdir().unwrap();
        let list = t.path().join("pids");
        let hang = script(
            t.path(),
            "squeue",
            &format!("trap '' TERM\necho $$ >> {0}\nsleep 1000 &\necho $! >> {0}\nwait", list.display()),
        );
        let q = SqueueQuery::spawn_program(hang.as_os_str(), "77").unwrap();
        let got = pids(&list, 2);
        assert_eq!(got[0] as u32, q.pid().unwrap());
        let started = Instant::now();
        drop(q);
        assert!(started.elapsed() < Duration::from_secs(1), "abandoning took {:?}", started.elapsed());
        // Our child is reaped: its pid no longer exists at all (a zombie would still exist).
        assert_eq!(proc_state(got[0]), None, "the squeue child was left behind (or as a zombie)");
        // Its own child went with its group (reaped by whoever adopted it).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(proc_state(got[1]), None | Some('Z')) {
            assert!(Instant::now() < deadline, "the stand-in's sleep survived: {:?}", proc_state(got[1]));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_query_reads_the_end_time_and_reports_failures() {
        let t = tempfile::tempdir().unwrap();
        let ok = script(t.path(), "ok", "echo 2026-11-25T18:00:00");
        let none = script(t.path(), "none", "echo Unknown");
        let fail = script(t.path(), "fail", "echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1");
        let run = |p: &Path| {
            let mut q = SqueueQuery::spawn_program(p.as_os_str(), "1").unwrap();
            loop {
                if let Some(r) = q.poll() {
                    return r;
                }
                wait_readable(q.fd(), Duration::from_millis(20));
            }
        };
        assert_eq!(run(&ok).unwrap(), parse_slurm_timestamp("2026-11-25T18:00:00"));
        assert_eq!(run(&none).unwrap(), None);
        let e = run(&fail).unwrap_err().to_string();
        assert!(e.contains("fail") && e.contains("exit status: 1"), "{e}");
        let missing = SqueueQuery::spawn_program(t.path().join("nope").as_os_str(), "1").unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    /// Four processes' worth of watches of one job on one node: one squeue, four answers.
    #[test]
    fn the_watches_of_one_job_share_one_query() {
        let t = tempfile::tempdir().unwrap();
        let dir = private_dir(t.path());
        let calls = t.path().join("calls");
        let sq =
            script(t.path(), "squeue", &format!("echo x >> {}\nsleep 0.3\necho 2030-01-01T00:00:00", calls.display()));
        let mut watches: Vec<EndTimeWatch> =
            (0..4).map(|_| EndTimeWatch::new("4242", Some(&dir)).with_program(sq.as_os_str())).collect();
        let mut answers: Vec<Option<EndTimeReading>> = vec![None; 4];
        let deadline = Instant::now() + Duration::from_secs(20);
        while answers.iter().any(Option::is_none) {
            assert!(Instant::now() < deadline, "not every watch learned the end time: {answers:?}");
            for (w, a) in watches.iter_mut().zip(answers.iter_mut()) {
                if let Some(r) = w.step() {
                    *a = Some(r);
                }
                assert!(w.take_warnings().is_empty());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let want = parse_slurm_timestamp("2030-01-01T00:00:00");
        assert!(answers.iter().all(|a| a.as_ref().unwrap().end_time == want), "{answers:?}");
        assert_eq!(answers.iter().filter(|a| !a.as_ref().unwrap().shared).count(), 1, "{answers:?}");
        assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 1);
        // The answer is published for processes that start later, and for timer_plan.
        let later = shared_end_time(&dir, "4242", None).unwrap();
        assert_eq!(later.end_time, want);
        let mode = std::fs::symlink_metadata(dir.join("squeue.4242.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A lock holder that hangs is abandoned after the timeout; the others get its error, not a wait.
    #[test]
    fn a_hanging_query_is_abandoned_after_the_timeout_and_shared_as_an_error() {
        let t = tempfile::tempdir().unwrap();
        let dir = private_dir(t.path());
        let hang = script(t.path(), "squeue", "trap '' TERM\nexec sleep 1000");
        let mk = || {
            EndTimeWatch::new("9", Some(&dir))
                .with_program(hang.as_os_str())
                .with_timing(Duration::from_secs(300), Duration::from_millis(300))
        };
        let (mut a, mut b) = (mk(), mk());
        assert!(a.step().is_none() && b.step().is_none());
        let pid = a.query_pid().or(b.query_pid()).expect("one of them asks");
        assert!(a.query_pid().is_none() || b.query_pid().is_none(), "only one asks");
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut ra, mut rb) = (None, None);
        while ra.is_none() || rb.is_none() {
            assert!(Instant::now() < deadline);
            ra = ra.or_else(|| a.step());
            rb = rb.or_else(|| b.step());
            std::thread::sleep(Duration::from_millis(20));
        }
        for r in [ra.unwrap(), rb.unwrap()] {
            assert!(r.end_time.is_none() && r.error.as_deref().unwrap().contains("did not answer"), "{r:?}");
        }
        assert_eq!(proc_state(pid as i32), None);
    }

    /// A shared answer counts only from a private directory of ours, from a regular file (never through a
    /// symlink), for the same job, and while fresh.
    #[test]
    fn answers_are_shared_per_run_of_the_job() {
        // A requeued job (SLURM_RESTART_COUNT=1) has a new end time: the first run's answer, still fresh,
        // must not be taken (it put the restarted run's time-limit checkpoint in the past, at every
        // requeue: the live Slurm test c-deadline).
        let t = tempfile::tempdir().unwrap();
        let dir = private_dir(t.path());
        let first = EndTimeReading { end_time: Some(1_900_000_000), error: None, read_at: unix_now(), shared: false };
        write_shared(&RuntimeDir::open(&dir).unwrap(), "7", &run_key("7", None), &first).unwrap();
        assert_eq!(shared_end_time(&dir, "7", None).unwrap().end_time, Some(1_900_000_000));
        assert!(shared_end_time(&dir, "7", Some(1)).is_none(), "the first run's answer after a requeue");
        let second = EndTimeReading { end_time: Some(1_900_000_100), ..first };
        write_shared(&RuntimeDir::open(&dir).unwrap(), "7", &run_key("7", Some(1)), &second).unwrap();
        assert_eq!(shared_end_time(&dir, "7", Some(1)).unwrap().end_time, Some(1_900_000_100));
        assert!(shared_end_time(&dir, "7", Some(2)).is_none());
    }

    #[test]
    fn a_shared_answer_is_trusted_only_when_it_can_be() {
        let t = tempfile::tempdir().unwrap();
        let dir = private_dir(t.path());
        let answer = |read_at: f64, job: &str| {
            serde_json::json!({"job_id": job, "end_time": 2_000_000_000i64, "error": null, "read_at": read_at})
                .to_string()
        };
        let file = dir.join("squeue.5.json");
        std::fs::write(&file, answer(unix_now(), "5")).unwrap();
        assert_eq!(shared_end_time(&dir, "5", None).unwrap().end_time, Some(2_000_000_000));
        std::fs::write(&file, answer(unix_now() - 301.0, "5")).unwrap();
        assert!(shared_end_time(&dir, "5", None).is_none(), "stale");
        std::fs::write(&file, answer(unix_now() + 3600.0, "5")).unwrap();
        assert!(shared_end_time(&dir, "5", None).is_none(), "from the future");
        std::fs::write(&file, answer(unix_now(), "6")).unwrap();
        assert!(shared_end_time(&dir, "5", None).is_none(), "another job's");
        std::fs::remove_file(&file).unwrap();
        let elsewhere = t.path().join("planted.json");
        std::fs::write(&elsewhere, answer(unix_now(), "5")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        assert!(shared_end_time(&dir, "5", None).is_none(), "through a symlink");
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, answer(unix_now(), "5")).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(shared_end_time(&dir, "5", None).is_none(), "in a directory open to others");
    }

    /// `timer_plan` never runs squeue: with a job id and no end time in the environment, it returns at once
    /// (the end time unknown, saying why), or takes the node's shared answer.
    #[test]
    fn timer_plan_never_runs_squeue() {
        let t = tempfile::tempdir().unwrap();
        let dir = private_dir(t.path());
        let vars = [("SLURM_JOB_ID", "31"), ("CKPT_SOCKET_DIR", dir.to_str().unwrap())];
        let cfg =
            crate::Config::from_lookup(Some("t"), |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
                .unwrap();
        let started = Instant::now();
        let plan = timer_plan(&cfg);
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(plan.end_time, None);
        assert!(plan.end_time_error.unwrap().contains("never run at start"));
        let reading = EndTimeReading { end_time: Some(2_000_000_000), error: None, read_at: unix_now(), shared: false };
        write_shared(&RuntimeDir::open(&dir).unwrap(), "31", "31", &reading).unwrap();
        let plan = timer_plan(&cfg);
        assert_eq!(plan.end_time, Some((2e9, "squeue")));
    }
}
