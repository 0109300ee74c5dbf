//! When to checkpoint: signals, the interval, the job's time limit and requests from outside.
//!
//! A [`Checkpointer`] owns a [`Store`] and decides when checkpoints are due. The program asks at its safe
//! points with [`Checkpointer::should_checkpoint`] (one relaxed atomic load: cheap enough for every
//! iteration of a hot loop) and, after a checkpoint, [`Checkpointer::should_exit`].
//!
//! * **Signals** (`CKPT_SIGNALS`, default `TERM,USR1`): the handlers only set bits in an atomic word
//!   (async-signal-safe); handlers installed earlier keep being called (signal-hook chains them). SIGTERM
//!   asks for a checkpoint and an exit, the others for a checkpoint. Duplicates (Slurm sends SIGTERM twice
//!   to srun steps) set the same bit again: harmless. SIGINT is left alone.
//! * **Interval** (`CKPT_INTERVAL`, `SLURM_CHECKPOINT`): due when that much time has passed since the last
//!   checkpoint ended (or since start). `auto` uses Daly's optimum from the measured cost and `CKPT_MTBF`.
//! * **Time limit**: from `SLURM_JOB_END_TIME`, else `squeue` (asked in the background every 5 minutes,
//!   never on the start, exit or hot path; one query per node and job at a time, the answer shared through
//!   the runtime directory, see [`triggers::EndTimeWatch`]), else `CKPT_END_TIME`. When the time left
//!   falls below the predicted cost times the safety factor plus the margin, one checkpoint is requested,
//!   and `should_exit` turns true after it. The cost is what the program waits for: the save, for a rank's
//!   part the rest of its step until [`Checkpointer::finish_step`] (the MPI helpers' gather, commit and
//!   copies to partner nodes), and with a cache level the copy to the checkpoint directory.
//! * **Requests** through the control socket (`ckpt create`), see [`crate::control`].
//!
//! A background thread (`ckpt-watch`) does the timing, the squeue queries and the socket; it only ever
//! sets bits. The checkpoint itself is always written by the program's own thread. Dropping the
//! checkpointer never waits for squeue: a query in flight is killed (SIGKILL to its process group) and
//! reaped.
//!
//! Every checkpoint and every decision is logged as one JSON line (`CKPT_LOG`). The log file is opened
//! without following a symlink (`O_NOFOLLOW`), created 0600, and used only when it is a regular file of
//! this user with one link; otherwise the log goes to stderr, with a message saying why.
//!
//! The control socket is removed when the checkpointer is dropped and, failing that, when the process
//! exits normally (`exit()`, a return from `main`); at start, the sockets that processes which died left
//! in the runtime directory are removed ([`control`]).

use std::ffi::CString;
use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{Config, Interval, LogTarget};
use crate::control::{self, Incoming, ReplyLine, Request, RuntimeDir};
use crate::discovery::Restored;
use crate::error::{Error, Result};
use crate::events::{self, EndTime, Event, IntervalSetting, Rejected, Trigger};
use crate::flusher::{FlushQueue, Flusher, Waiters};
use crate::store::{CheckpointWriter, CommitInfo, Store};
use crate::triggers::{self, CostEstimate, EndTimeReading, EndTimeSource, EndTimeWatch, signal_label, unix_now};

/// A checkpoint was requested by a signal (not SIGTERM).
const SIGNAL: u32 = 1;
/// SIGTERM: checkpoint, then exit.
const SIGNAL_EXIT: u32 = 2;
/// The interval elapsed.
const INTERVAL: u32 = 4;
/// The job's end is near: checkpoint, then exit.
const DEADLINE: u32 = 8;
/// A request arrived on the control socket.
const REQUEST: u32 = 16;
/// All "a checkpoint is due" bits.
const DUE_MASK: u32 = 0xff;
/// A checkpoint that was asked to be followed by an exit has been committed.
const EXIT_READY: u32 = 1 << 8;

/// The watcher re-evaluates at least this often.
const WATCH_TICK: Duration = Duration::from_millis(500);

/// Per signal number: how many live checkpointers listen to it.
static ACTIVE: [AtomicU32; 65] = [const { AtomicU32::new(0) }; 65];
/// Per signal number: whether the process-wide fallback action is installed.
static FALLBACK: Mutex<[bool; 65]> = Mutex::new([false; 65]);
/// Set once a checkpointer has received a signal that asks to exit (SIGTERM): the process is on its way
/// out, and later deliveries (Slurm sends SIGTERM twice to job steps) must stay harmless.
static EXIT_SIGNAL_SEEN: AtomicBool = AtomicBool::new(false);

/// Installs, once per exit signal (SIGTERM) and process, an action that gives the signal back its default
/// effect while no checkpointer listens to it, if it had the default disposition before ckpt touched it
/// and no checkpointer has received it yet. signal-hook never uninstalls its handler, so without this a
/// program that keeps running after `ckpt_finalize` could no longer be terminated by SIGTERM. A SIGTERM
/// that arrives after one was already handled is a duplicate and stays harmless; signals that only ask
/// for a checkpoint (USR1, ...) stay ignored once no checkpointer listens, so a warning signal that
/// arrives as the program finishes cannot kill it.
fn ensure_fallback(signal: i32) -> Result<()> {
    let idx = usize::try_from(signal)
        .ok()
        .filter(|&i| i < ACTIVE.len())
        .ok_or_else(|| Error::invalid(format!("signal {signal} is out of range")))?;
    let mut installed = FALLBACK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if installed[idx] {
        return Ok(());
    }
    // SAFETY: querying the current disposition only (NULL new action); `old` is a zeroed struct we own.
    let was_default = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_DFL
    };
    // SAFETY: the action only loads atomics and, when no checkpointer listens, calls signal-hook's
    // emulate_default_handler, which is documented as async-signal-safe.
    unsafe {
        signal_hook::low_level::register(signal, move || {
            if was_default && ACTIVE[idx].load(Ordering::SeqCst) == 0 && !EXIT_SIGNAL_SEEN.load(Ordering::SeqCst) {
                let _ = signal_hook::low_level::emulate_default_handler(signal);
            }
        })
    }
    .map_err(|e| Error::io(&format!("install handler for SIG{}", signal_label(signal)), e))?;
    installed[idx] = true;
    Ok(())
}

/// Why a checkpoint is being taken (the names used in the log).
pub fn reasons(bits: u32) -> Vec<&'static str> {
    let mut v = Vec::new();
    for (bit, name) in [
        (SIGNAL, "signal"),
        (SIGNAL_EXIT, "sigterm"),
        (INTERVAL, "interval"),
        (DEADLINE, "time-limit"),
        (REQUEST, "request"),
    ] {
        if bits & bit != 0 {
            v.push(name);
        }
    }
    if v.is_empty() {
        v.push("explicit");
    }
    v
}

struct TimerState {
    /// When the last checkpoint ended (or the checkpointer started).
    last_end: Instant,
    cost: CostEstimate,
    /// What copying a cached checkpoint to the checkpoint directory costs: the time-limit checkpoint must
    /// be durable there before the end.
    flush_cost: CostEstimate,
    /// What a multi-rank step costs this rank once its part is durable, until [`Checkpointer::finish_step`]
    /// (the MPI helpers' gather, rank 0's commit, the copies to partner nodes): the time-limit step must
    /// be committed, its copies made, before the end.
    step_cost: CostEstimate,
    end_time: Option<(f64, EndTimeSource)>,
    deadline_fired: bool,
    interval_fired: bool,
    /// What the checkpoint in progress took.
    in_progress: Option<Taken>,
    /// Whether the checkpoint in progress is one rank's part of a multi-rank step.
    in_progress_is_part: bool,
    /// A part committed durably whose step is not yet known to be committed: its trigger bits and requests
    /// wait for [`Checkpointer::finish_step`].
    pending_step: Option<PendingStep>,
    requests: Vec<Request>,
}

/// What a checkpoint took when it began: the trigger bits it cleared and the requests it answers.
struct Taken {
    bits: u32,
    requests: Vec<Request>,
    started: Instant,
}

/// A rank's durable part waiting for its step's outcome, with the answer its requests get then.
struct PendingStep {
    bits: u32,
    requests: Vec<Request>,
    reply: ReplyLine,
    generation: u64,
    step: u64,
    /// Since when the rest of the step runs: the part's commit, or for a background part the wait that
    /// returned it (the program computes in between).
    since: Instant,
}

struct Inner {
    flags: AtomicU32,
    stop: AtomicBool,
    state: Mutex<TimerState>,
    log: Mutex<LogSink>,
    config: Config,
    base: String,
    wake: Option<UnixStream>,
    /// The queue of the cache level's copying thread.
    flush: std::sync::OnceLock<Arc<FlushQueue>>,
}

enum LogSink {
    Off,
    Stderr,
    Pending(PathBuf),
    File(File),
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, TimerState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn log(&self, event: &impl Serialize) {
        let line = events::line(event, (unix_now() * 1000.0).round() / 1000.0, self.config.rank, &self.base);
        let mut sink = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let LogSink::Pending(path) = &*sink {
            *sink = match open_log(path) {
                Ok(f) => LogSink::File(f),
                Err(why) => {
                    eprintln!("ckpt: log {}: {why}; logging to stderr instead", path.display());
                    LogSink::Stderr
                }
            };
        }
        match &mut *sink {
            LogSink::Off | LogSink::Pending(_) => {}
            LogSink::Stderr => {
                let _ = std::io::stderr().write_all(format!("ckpt: {line}").as_bytes());
            }
            LogSink::File(f) => {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    fn wake(&self) {
        if let Some(w) = &self.wake {
            // SAFETY: the fd is owned by `w` and open; a one-byte buffer on the stack.
            unsafe { libc::send(w.as_raw_fd(), [1u8].as_ptr().cast(), 1, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        }
    }

    fn interval(&self, st: &TimerState) -> Option<Duration> {
        match self.config.interval? {
            Interval::Every(d) => Some(d),
            Interval::Auto => Some(triggers::daly_interval(
                Self::checkpoint_cost(st).unwrap_or(triggers::INITIAL_COST_GUESS),
                self.config.mtbf,
            )),
        }
    }

    /// What a checkpoint costs the program: its save, and for a rank's part the rest of the step.
    fn checkpoint_cost(st: &TimerState) -> Option<Duration> {
        st.cost.predict().map(|c| c + st.step_cost.predict().unwrap_or(Duration::ZERO))
    }

    /// Seconds before the end at which the end-of-job checkpoint must start.
    fn deadline_lead(&self, st: &TimerState) -> f64 {
        let cost =
            Self::checkpoint_cost(st).unwrap_or(Duration::ZERO) + st.flush_cost.predict().unwrap_or(Duration::ZERO);
        cost.as_secs_f64() * self.config.safety_factor + self.config.margin.as_secs_f64()
    }

    /// One evaluation of the timers; returns how long to sleep.
    fn evaluate(&self) -> Duration {
        let mut st = self.lock();
        let now = Instant::now();
        let mut sleep = WATCH_TICK;
        if let (Some(every), false) = (self.interval(&st), st.interval_fired) {
            let due = st.last_end + every;
            if now >= due {
                st.interval_fired = true;
                self.flags.fetch_or(INTERVAL, Ordering::SeqCst);
                drop(st);
                self.log(&Event::Trigger(Trigger::Interval { interval_s: every.as_secs_f64() }));
                return Duration::from_millis(10);
            }
            sleep = sleep.min(due - now);
        }
        if let (Some((end, source)), false) = (st.end_time, st.deadline_fired) {
            let lead = self.deadline_lead(&st);
            let left = end - unix_now();
            if left <= lead {
                st.deadline_fired = true;
                self.flags.fetch_or(DEADLINE, Ordering::SeqCst);
                let predicted = Self::checkpoint_cost(&st).map(|c| c.as_secs_f64());
                drop(st);
                self.log(&Event::Trigger(Trigger::TimeLimit {
                    time_left_s: left,
                    predicted_cost_s: predicted,
                    safety_factor: self.config.safety_factor,
                    margin_s: self.config.margin.as_secs_f64(),
                    end_time: end,
                    end_time_source: source.as_str(),
                }));
                return Duration::from_millis(10);
            }
            sleep = sleep.min(Duration::from_secs_f64((left - lead).max(0.001)));
        }
        sleep.max(Duration::from_millis(1))
    }

    /// Takes in an answer of squeue (this process's, or the node's shared one).
    fn end_time_answer(&self, r: EndTimeReading) {
        match (r.end_time, r.error) {
            (Some(end), _) => {
                let end = end as f64;
                let mut st = self.lock();
                let changed = st.end_time.map(|(e, _)| e) != Some(end);
                if changed && !matches!(st.end_time, Some((_, EndTimeSource::SlurmEnv))) {
                    st.end_time = Some((end, EndTimeSource::Squeue));
                    drop(st);
                    let source = EndTimeSource::Squeue.as_str();
                    let time_left_s = end - unix_now();
                    self.log(&Event::EndTime(EndTime::Known { source, end_time: end, time_left_s, shared: r.shared }));
                }
            }
            (None, Some(e)) => {
                let source = EndTimeSource::Squeue.as_str();
                self.log(&Event::EndTime(EndTime::Failed { source, error: &e, shared: r.shared }));
            }
            (None, None) => {}
        }
    }

    fn accept(&self, listener: &UnixListener) {
        while let Ok((stream, _)) = listener.accept() {
            match control::read_request(stream) {
                Ok(Incoming::Request(req)) => {
                    let dir = req.image_dir.clone();
                    let vacate = req.vacate;
                    self.lock().requests.push(req);
                    self.flags.fetch_or(REQUEST, Ordering::SeqCst);
                    self.log(&Event::Trigger(Trigger::Request { image_dir: dir.as_deref(), vacate }));
                }
                Ok(Incoming::Refused(why)) => self.log(&Event::RequestRefused { error: why }),
                Ok(Incoming::Probe) => {}
                Err(e) => self.log(&Event::RequestRefused { error: e.to_string() }),
            }
        }
    }
}

impl Inner {
    /// A checkpoint that took `taken` failed (or was abandoned): signals, the interval and the time limit
    /// stay due so the program tries again at its next safe point; requests get the error.
    fn fail(&self, taken: u32, requests: Vec<Request>, e: &Error) {
        self.flags.fetch_or(taken & (SIGNAL | SIGNAL_EXIT | DEADLINE | INTERVAL), Ordering::SeqCst);
        for r in requests {
            r.answer(&ReplyLine::failed(e.to_string()));
        }
        self.log(&Event::CheckpointFailed { trigger: reasons(taken), error: e.to_string() });
    }

    /// The checkpoint in progress (if it is still this one's) was abandoned.
    fn abandon(&self, error: &Error) {
        if let Some(t) = self.lock().in_progress.take() {
            self.fail(t.bits, t.requests, error);
        }
    }

    /// Commits `writer` and does the bookkeeping of the checkpoint in progress.
    fn commit(&self, writer: CheckpointWriter) -> Result<CommitInfo> {
        let Taken { bits: taken, requests, started } =
            self.lock().in_progress.take().unwrap_or(Taken { bits: 0, requests: Vec::new(), started: Instant::now() });
        let result = writer.commit();
        match &result {
            Ok(info) => self.committed(taken, requests, started, info),
            Err(e) => self.fail(taken, requests, e),
        }
        result
    }

    fn committed(&self, taken: u32, requests: Vec<Request>, started: Instant, info: &CommitInfo) {
        let cost = started.elapsed();
        let vacate = requests.iter().any(|r| r.vacate);
        let reply = ReplyLine {
            ok: true,
            path: Some(info.path.clone()),
            generation: Some(info.generation),
            step: Some(info.app_step),
            seconds: Some(info.seconds),
            error: None,
        };
        let (interval, time_left, part) = {
            let mut st = self.lock();
            st.cost.record(cost);
            st.last_end = Instant::now();
            st.interval_fired = false;
            let part = st.in_progress_is_part;
            (self.interval(&st), st.end_time.map(|(e, _)| e - unix_now()), part)
        };
        let exit_asked = taken & (SIGNAL_EXIT | DEADLINE) != 0 || vacate;
        let cached = self.flush.get().filter(|q| !part && q.is_cached(info));
        // A rank's part in the cache is cached too (copied once the step is committed).
        let in_cache = cached.is_some() || (part && self.flush.get().is_some_and(|q| q.holds(&info.generation_path)));
        let level = if in_cache { "cache" } else { "shared" };
        if part {
            // A rank's part: the step exists only once it is committed; exit and answers wait for that.
            let pending = PendingStep {
                bits: taken,
                requests,
                reply,
                generation: info.generation,
                step: info.app_step,
                since: Instant::now(),
            };
            self.lock().pending_step = Some(pending);
        } else if let Some(q) = cached {
            // Cached: exit and answers wait for the copy to the checkpoint directory.
            let must = exit_asked || !requests.is_empty();
            if q.committed(info.generation, info.generation_path.clone(), must) {
                let waiters = Waiters { exit: exit_asked, taken, requests, reply };
                q.open_and_push(info.generation, &info.generation_path, waiters);
            }
        } else {
            if exit_asked {
                self.flags.fetch_or(EXIT_READY, Ordering::SeqCst);
            }
            for r in requests {
                r.answer(&reply);
            }
        }
        let secs = cost.as_secs_f64();
        self.log(&Event::Checkpoint {
            trigger: reasons(taken),
            step: info.app_step,
            generation: info.generation,
            path: &info.path,
            bytes: info.stats.file_bytes,
            raw_bytes: info.stats.raw_bytes,
            seconds: secs,
            bandwidth_mbps: if secs > 0.0 { info.stats.file_bytes as f64 / secs / 1e6 } else { 0.0 },
            time_left_s: time_left,
            interval_s: interval.map(|d| d.as_secs_f64()),
            exit: self.flags.load(Ordering::Relaxed) & EXIT_READY != 0,
            warnings: &info.warnings,
            level,
        });
        self.wake();
    }

    /// A copy of a cached checkpoint to the checkpoint directory ended (the copying thread).
    fn flushed(&self, generation: u64, waiters: Waiters, result: Result<CommitInfo>) {
        let Waiters { exit, taken, requests, reply } = waiters;
        match result {
            Ok(info) => {
                self.lock().flush_cost.record(Duration::from_secs_f64(info.seconds));
                if exit {
                    self.flags.fetch_or(EXIT_READY, Ordering::SeqCst);
                }
                let reply = ReplyLine { path: Some(info.path.clone()), ..reply };
                for r in requests {
                    r.answer(&reply);
                }
                let secs = info.seconds;
                self.log(&Event::Flushed {
                    step: info.app_step,
                    generation: info.generation,
                    path: &info.generation_path,
                    bytes: info.stats.file_bytes,
                    seconds: secs,
                    bandwidth_mbps: if secs > 0.0 { info.stats.file_bytes as f64 / secs / 1e6 } else { 0.0 },
                    exit,
                    warnings: &info.warnings,
                });
            }
            Err(e) => {
                // The cached checkpoint stays; an exit that waited for it needs another checkpoint, which
                // is due again (so the program tries again at its next safe point).
                if exit {
                    self.flags.fetch_or(taken & (SIGNAL_EXIT | DEADLINE), Ordering::SeqCst);
                }
                for r in requests {
                    r.answer(&ReplyLine::failed(format!(
                        "the checkpoint was cached but could not be copied to the checkpoint directory: {e}"
                    )));
                }
                self.log(&Event::FlushFailed { generation, error: e.to_string(), exit });
            }
        }
        self.wake();
    }
}

/// A checkpoint begun with [`Checkpointer::begin`]: add sections through it (it dereferences to a
/// [`CheckpointWriter`]), then [`commit`](PendingCheckpoint::commit) it.
///
/// Committing through the guard is what makes the checkpointer's bookkeeping happen: the cost is
/// recorded (interval `auto`, time limit), `ckpt create` requests are answered, the checkpoint is logged,
/// and [`Checkpointer::should_exit`] turns true when the checkpoint was asked to be the last (SIGTERM, the
/// time limit, a vacating request). Dropping the guard without committing is the same as
/// [`abort`](PendingCheckpoint::abort): the temporary file is removed, the previous checkpoints stay, and
/// whatever triggered this checkpoint is due again (a warning goes to the log).
///
/// The guard owns what it needs (it does not borrow the checkpointer), so it can be sent to a thread that
/// writes in the background.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let mut config = ckpt_core::Config::new("doc", dir.path())?;
/// # config.log = ckpt_core::LogTarget::Off;
/// let cp = ckpt_core::Checkpointer::new(ckpt_core::Store::new(config))?;
/// cp.request_checkpoint(true); // what SIGTERM does
/// let mut w = cp.begin(1)?;
/// w.add_bytes("field", &[0u8; 64])?;
/// w.commit()?;
/// assert!(cp.should_exit(), "SIGTERM's checkpoint is durable: time to exit");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a checkpoint that is not committed is abandoned when dropped"]
pub struct PendingCheckpoint {
    writer: Option<CheckpointWriter>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PendingCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCheckpoint").field("writer", &self.writer).finish()
    }
}

impl PendingCheckpoint {
    /// Commits the checkpoint durably (see [`CheckpointWriter::commit`]) and does the checkpointer's
    /// bookkeeping (see [`PendingCheckpoint`]). Blocks for the file's `fsync`, its rename and the
    /// directory's `fsync`.
    ///
    /// # Errors
    ///
    /// As [`CheckpointWriter::commit`]; then whatever triggered this checkpoint is due again and pending
    /// `ckpt create` requests get the error.
    ///
    /// # Panics
    ///
    /// Never: the guard holds its writer until `commit` or `abort` consumes it.
    pub fn commit(mut self) -> Result<CommitInfo> {
        let writer = self.writer.take().expect("a pending checkpoint holds its writer until it is consumed");
        self.inner.commit(writer)
    }

    /// Abandons the checkpoint (a section could not be written): the temporary file is removed, the
    /// previous checkpoints stay, whatever triggered this checkpoint (a signal, SIGTERM's exit, the time
    /// limit) is due again, and pending `ckpt create` requests get `error`.
    pub fn abort(mut self, error: &Error) {
        drop(self.writer.take());
        self.inner.abandon(error);
    }
}

impl std::ops::Deref for PendingCheckpoint {
    type Target = CheckpointWriter;
    fn deref(&self) -> &CheckpointWriter {
        self.writer.as_ref().expect("a pending checkpoint holds its writer until it is consumed")
    }
}

impl std::ops::DerefMut for PendingCheckpoint {
    fn deref_mut(&mut self) -> &mut CheckpointWriter {
        self.writer.as_mut().expect("a pending checkpoint holds its writer until it is consumed")
    }
}

impl Drop for PendingCheckpoint {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            drop(w);
            let e = Error::new(
                crate::ErrorKind::InvalidState,
                "the checkpoint was dropped without commit: abandoned, its trigger is due again",
            );
            self.inner.log(&Event::Warning { message: e.to_string() });
            self.inner.abandon(&e);
        }
    }
}

#[allow(clippy::needless_pass_by_value, reason = "the watcher thread's main: it owns what it watches")]
fn watch(inner: Arc<Inner>, listener: Option<UnixListener>, wake_rx: UnixStream, mut end: Option<EndTimeWatch>) {
    while !inner.stop.load(Ordering::SeqCst) {
        if let Some(w) = end.as_mut() {
            if let Some(r) = w.step() {
                inner.end_time_answer(r);
            }
            for warning in w.take_warnings() {
                inner.log(&Event::Warning { message: warning });
            }
        }
        let mut sleep = inner.evaluate();
        let mut fds = vec![libc::pollfd { fd: wake_rx.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        if let Some(l) = &listener {
            fds.push(libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        if let Some(w) = &end {
            sleep = sleep.min(w.wake_in().max(Duration::from_millis(1)));
            if let Some(fd) = w.fd() {
                fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
            }
        }
        let ms = sleep.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            let mut buf = [0u8; 64];
            // SAFETY: reading into a stack buffer of the given length from an fd owned by `wake_rx`.
            unsafe { libc::recv(wake_rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        }
        if let (Some(l), Some(p)) = (&listener, fds.get(1))
            && p.revents != 0
        {
            inner.accept(l);
        }
    }
    // A squeue in flight is abandoned here (killed and reaped), so exit never waits for the controller.
    drop(end);
}

/// Opens the JSON log for appending: never through a symlink at its name (`O_NOFOLLOW`), without blocking
/// on a FIFO planted there, close-on-exec, created 0600; and only a regular file of this user with one
/// link is used (another user's file, a hard link to some other file, a device or a FIFO are refused).
fn open_log(path: &Path) -> std::result::Result<File, String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create its directory: {e}"))?;
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "is a symbolic link: refusing to follow it".to_string(),
            Some(libc::ENXIO) => "is a FIFO or a socket, not a regular file: refusing it".to_string(),
            _ => format!("cannot open it: {e}"),
        })?;
    let meta = file.metadata().map_err(|e| format!("cannot stat it: {e}"))?;
    let me = crate::sys::euid();
    if !meta.file_type().is_file() {
        return Err("is not a regular file: refusing it".into());
    }
    if meta.uid() != me {
        return Err(format!("belongs to uid {}, not to us ({me}): refusing to append to it", meta.uid()));
    }
    if meta.nlink() != 1 {
        return Err(format!("has {} hard links (another name of some file?): refusing to append to it", meta.nlink()));
    }
    // SAFETY: F_SETFL on the fd owned by `file`: back to blocking writes (O_NONBLOCK was for the open).
    unsafe {
        let fd = file.as_raw_fd();
        libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) & !libc::O_NONBLOCK);
    }
    Ok(file)
}

/// Control sockets this process created and has not removed yet: removed at `exit()` if still there
/// (a C program that never calls `ckpt_finalize`, a Python interpreter that exits without closing).
struct OwnSocket {
    /// The process that bound it (a forked child inherits the list, not the socket).
    owner: u32,
    path: CString,
    dev: u64,
    ino: u64,
}

static OWN_SOCKETS: Mutex<Vec<OwnSocket>> = Mutex::new(Vec::new());
static REMOVE_AT_EXIT: Once = Once::new();

/// Removes `s` if its path still names the socket this process bound (same device and inode).
fn remove_own_socket(s: &OwnSocket) {
    // SAFETY: `st` is a plain C struct the kernel fills; the path is NUL-terminated; unlink removes the
    // directory entry itself (never what a symlink points to).
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::lstat(s.path.as_ptr(), &mut st) == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
            && st.st_dev == s.dev
            && st.st_ino == s.ino
        {
            libc::unlink(s.path.as_ptr());
        }
    }
}

extern "C" fn remove_sockets_at_exit() {
    let list = match OWN_SOCKETS.try_lock() {
        Ok(l) => l,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    let me = std::process::id();
    for s in list.iter().filter(|s| s.owner == me) {
        remove_own_socket(s);
    }
}

fn own_sockets() -> MutexGuard<'static, Vec<OwnSocket>> {
    OWN_SOCKETS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remembers the socket just bound at `path`, for removal at exit.
fn remember_socket(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return };
    REMOVE_AT_EXIT.call_once(|| {
        // SAFETY: registers a plain function without arguments for exit(); it only calls lstat and unlink.
        unsafe { libc::atexit(remove_sockets_at_exit) };
    });
    own_sockets().push(OwnSocket { owner: std::process::id(), path: c, dev: meta.dev(), ino: meta.ino() });
}

/// Removes the socket at `path` now (if it is still the one bound) and forgets it.
fn remove_socket_now(path: &Path) {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return };
    let mut list = own_sockets();
    let me = std::process::id();
    if let Some(i) = list.iter().position(|s| s.owner == me && s.path == c) {
        let s = list.swap_remove(i);
        remove_own_socket(&s);
    }
}

/// A cheap, clonable view of a [`Checkpointer`]'s trigger state, for hot loops and foreign-language
/// bindings that cannot hold a reference to the checkpointer itself.
#[derive(Clone)]
pub struct TriggerView {
    inner: Arc<Inner>,
}

impl TriggerView {
    /// Same as [`Checkpointer::should_checkpoint`].
    #[inline]
    #[must_use]
    pub fn should_checkpoint(&self) -> bool {
        self.inner.flags.load(Ordering::Relaxed) & DUE_MASK != 0
    }
    /// Same as [`Checkpointer::should_exit`].
    #[inline]
    #[must_use]
    pub fn should_exit(&self) -> bool {
        self.inner.flags.load(Ordering::Relaxed) & EXIT_READY != 0
    }
}

impl std::fmt::Debug for TriggerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerView").field("flags", &self.inner.flags.load(Ordering::Relaxed)).finish()
    }
}

/// Decides when to checkpoint and writes checkpoints through its [`Store`]: signals and `should_exit`,
/// the interval and the time limit, `ckpt create` requests (see the crate documentation,
/// [Signals and `should_exit`](crate#signals-and-should_exit) and
/// [Intervals and the time limit](crate#intervals-and-the-time-limit)).
///
/// One per process is the intended use (signals are process-wide).
pub struct Checkpointer {
    store: Store,
    inner: Arc<Inner>,
    /// The cache level's copying thread.
    flusher: Option<Flusher>,
    /// The background checkpoint in flight ([`Checkpointer::checkpoint_async`]).
    in_flight: Mutex<Option<crate::async_save::InFlight>>,
    signal_ids: Vec<signal_hook::SigId>,
    watcher: Option<JoinHandle<()>>,
    socket_path: Option<PathBuf>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").field("config", &self.inner.config).field("socket", &self.socket_path).finish()
    }
}

impl Checkpointer {
    /// A checkpointer for `app_name` configured from the environment; installs the signal handlers, starts
    /// the watcher thread and the control socket.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) naming the variable and its value when a
    /// `CKPT_*` or `SLURM_*` setting is malformed ([`Config::from_env`]); otherwise as [`Checkpointer::new`].
    pub fn from_env(app_name: Option<&str>) -> Result<Checkpointer> {
        Checkpointer::new(Store::new(Config::from_env(app_name)?))
    }

    /// A checkpointer around `store`, using the store's configuration.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) when a signal handler cannot be installed (a signal the OS does not let
    /// a process catch, such as `KILL` or `STOP`, given in the configuration), the wake-up socket pair cannot be
    /// created, or the watcher thread cannot be started;
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) for a signal number out of range. Nothing is
    /// left installed then. A control socket that cannot be bound is not an error (logged as a warning).
    pub fn new(store: Store) -> Result<Checkpointer> {
        let config = store.config().clone();
        let base = config.base_name();
        let log = match &config.log {
            LogTarget::Off => LogSink::Off,
            LogTarget::Stderr => LogSink::Stderr,
            LogTarget::File(p) => LogSink::Pending(p.clone()),
            LogTarget::CheckpointDir => LogSink::Pending(config.checkpoint_dir.join(format!("{base}.log"))),
        };
        let end_time = config.end_time.map(|t| (t as f64, config.end_time_source.unwrap_or(EndTimeSource::CkptEnv)));
        // Slurm older than 23.02 has no SLURM_JOB_END_TIME: ask squeue (in the background, never here).
        let from_slurm = config.end_time_source == Some(EndTimeSource::SlurmEnv);
        let end_watch = match (&config.job_id, from_slurm) {
            (Some(job), false) => Some(
                EndTimeWatch::new(job, config.socket_dir.as_deref())
                    .for_run(config.restart_count)
                    .with_program(&config.squeue),
            ),
            _ => None,
        };
        let (wake_tx, wake_rx) = UnixStream::pair().map_err(|e| Error::io("socketpair", e))?;
        let inner = Arc::new(Inner {
            flags: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            state: Mutex::new(TimerState {
                last_end: Instant::now(),
                cost: CostEstimate::default(),
                flush_cost: CostEstimate::default(),
                step_cost: CostEstimate::default(),
                end_time,
                deadline_fired: false,
                interval_fired: false,
                in_progress: None,
                in_progress_is_part: false,
                pending_step: None,
                requests: Vec::new(),
            }),
            log: Mutex::new(log),
            config: config.clone(),
            base,
            wake: Some(wake_tx),
            flush: std::sync::OnceLock::new(),
        });
        let flusher = match store.config().cache.as_ref() {
            Some(_) => {
                let weak = Arc::downgrade(&inner);
                let weak_end = weak.clone();
                let f = Flusher::start(
                    store.clone(),
                    Box::new(move |generation, waiters, result| {
                        if let Some(inner) = weak.upgrade() {
                            inner.flushed(generation, waiters, result);
                        }
                    }),
                    Box::new(move |seconds, complete, durable| {
                        if let Some(inner) = weak_end.upgrade() {
                            inner.log(&Event::FlushWait {
                                seconds,
                                complete,
                                durable_generation: (durable > 0).then_some(durable),
                            });
                        }
                    }),
                )?;
                let _ = inner.flush.set(f.queue().clone());
                Some(f)
            }
            None => None,
        };
        let mut signal_ids = Vec::new();
        let mut listening = Vec::new();
        let installed: Result<()> = config.signals.iter().try_for_each(|spec| {
            if spec.exit {
                ensure_fallback(spec.signal)?;
            }
            let bits = if spec.exit { SIGNAL_EXIT } else { SIGNAL };
            let exit = spec.exit;
            let flags = inner.clone();
            // SAFETY: the action only performs atomic stores on memory kept alive by the Arc it owns and on
            // a static, which is async-signal-safe (no allocation, no locks, no I/O).
            let id = unsafe {
                signal_hook::low_level::register(spec.signal, move || {
                    flags.flags.fetch_or(bits, Ordering::SeqCst);
                    if exit {
                        EXIT_SIGNAL_SEEN.store(true, Ordering::SeqCst);
                    }
                })
            }
            .map_err(|e| Error::io(&format!("install handler for SIG{}", signal_label(spec.signal)), e))?;
            signal_ids.push(id);
            ACTIVE[spec.signal as usize].fetch_add(1, Ordering::SeqCst);
            listening.push(spec.signal);
            Ok(())
        });
        if let Err(e) = installed {
            for id in signal_ids {
                signal_hook::low_level::unregister(id);
            }
            for sig in listening {
                ACTIVE[sig as usize].fetch_sub(1, Ordering::SeqCst);
            }
            return Err(e);
        }
        let mut socket_path = None;
        let mut listener = None;
        let mut removed = Vec::new();
        if let Some(dir) = &config.socket_dir {
            let name = control::socket_name(std::process::id(), config.job_id.as_deref(), config.step_id);
            match control::listen(dir, &name) {
                Ok((l, p)) => {
                    remember_socket(&p);
                    listener = Some(l);
                    socket_path = Some(p);
                }
                Err(e) => inner.log(&Event::Warning { message: format!("no control socket: {e}") }),
            }
            // What processes that died left behind, in the directory only once it is verified as ours.
            if let Ok(verified) = RuntimeDir::open(dir) {
                removed = control::remove_stale(&verified, Some(&name));
            }
        }
        let thread_inner = inner.clone();
        let spawned = std::thread::Builder::new()
            .name("ckpt-watch".into())
            .spawn(move || watch(thread_inner, listener, wake_rx, end_watch));
        let watcher = match spawned {
            Ok(w) => w,
            Err(e) => {
                for id in signal_ids {
                    signal_hook::low_level::unregister(id);
                }
                for sig in listening {
                    ACTIVE[sig as usize].fetch_sub(1, Ordering::SeqCst);
                }
                if let Some(p) = &socket_path {
                    remove_socket_now(p);
                }
                return Err(Error::io("start the ckpt-watch thread", e));
            }
        };
        if !removed.is_empty() {
            inner.log(&Event::Cleanup {
                message: "removed what processes that died left in the socket directory",
                directory: config.socket_dir.as_deref(),
                removed: &removed,
            });
        }
        let cp = Checkpointer {
            store,
            inner,
            flusher,
            in_flight: Mutex::new(None),
            signal_ids,
            watcher: Some(watcher),
            socket_path,
        };
        let signals: Vec<String> = config.signals.iter().map(|s| signal_label(s.signal)).collect();
        let end = cp.inner.lock().end_time;
        cp.inner.log(&Event::Start {
            pid: std::process::id(),
            job_id: config.job_id.as_deref(),
            step_id: config.step_id,
            nranks: config.nranks,
            checkpoint_dir: &config.checkpoint_dir,
            restart_dir: &config.restart_dir,
            interval: config.interval.map(IntervalSetting),
            interval_description: config.interval_in_words(),
            signals,
            end_time: end.map(|(t, _)| t),
            end_time_source: end.map(|(_, s)| s.as_str()),
            restart_count: config.restart_count,
            socket: cp.socket_path.as_deref(),
        });
        if let (Some(cache), Some(dir)) = (&config.cache, cp.store.cache_dir()) {
            cp.inner.log(&Event::Levels {
                cache_dir: dir,
                cache_keep: cache.keep,
                flush: cache.flush.to_string(),
                flush_timeout_s: cache.exit_timeout.as_secs_f64(),
            });
        }
        Ok(cp)
    }

    pub(crate) fn lock_in_flight(&self) -> MutexGuard<'_, Option<crate::async_save::InFlight>> {
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store checkpoints are written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.store.config()
    }

    /// The control socket this process listens on, if any.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }

    /// Whether a checkpoint is due (a signal, the interval, the time limit or a request). One atomic load:
    /// call it as often as you like.
    #[inline]
    pub fn should_checkpoint(&self) -> bool {
        self.inner.flags.load(Ordering::Relaxed) & DUE_MASK != 0
    }

    /// Whether the program should stop now: a checkpoint asked to be followed by an exit (SIGTERM, the time
    /// limit, a vacating request) has been committed.
    #[inline]
    pub fn should_exit(&self) -> bool {
        self.inner.flags.load(Ordering::Relaxed) & EXIT_READY != 0
    }

    /// A view of the trigger flags that outlives borrows of the checkpointer (see [`TriggerView`]).
    #[must_use]
    pub fn trigger_view(&self) -> TriggerView {
        TriggerView { inner: self.inner.clone() }
    }

    /// Whether an exit was asked for (SIGTERM, the time limit, a vacating `ckpt create`) and
    /// [`Checkpointer::should_exit`] is not yet armed: its checkpoint is due, or being written. For
    /// faces that write in the background (Python's `save(blocking=False)`): they wait for the save in
    /// flight before answering `should_exit` only then.
    #[must_use]
    pub fn exit_pending(&self) -> bool {
        let exit_bits = SIGNAL_EXIT | DEADLINE;
        if self.inner.flags.load(Ordering::SeqCst) & exit_bits != 0 {
            return true;
        }
        let st = self.inner.lock();
        let taken_exit = |taken: u32, requests: &[Request]| taken & exit_bits != 0 || requests.iter().any(|r| r.vacate);
        st.in_progress.as_ref().is_some_and(|t| taken_exit(t.bits, &t.requests))
            || st.pending_step.as_ref().is_some_and(|p| taken_exit(p.bits, &p.requests))
            || st.requests.iter().any(|r| r.vacate)
            || self.inner.flush.get().is_some_and(|q| q.exit_pending())
    }

    /// Requests a checkpoint as a signal would (for tests and programmatic triggers).
    pub fn request_checkpoint(&self, exit: bool) {
        self.inner.flags.fetch_or(if exit { SIGNAL_EXIT } else { SIGNAL }, Ordering::SeqCst);
    }

    /// With a cache level (`CKPT_CACHE_DIR`, see [`crate::levels`]): waits until the copies of cached
    /// checkpoints to the checkpoint directory are done, at most `timeout` (`None`: as long as it takes),
    /// and returns the newest generation this process made durable there (`None`: none yet). Without a
    /// cache level every committed checkpoint is durable: `Ok(None)` at once.
    ///
    /// # Errors
    ///
    /// The last copy's error (the checkpoint stays in the cache; a later copy that succeeds clears it), or
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) (timed out) when a copy is still running after `timeout`.
    pub fn wait_for_flush(&self, timeout: Option<Duration>) -> Result<Option<u64>> {
        match self.inner.flush.get() {
            Some(q) => q.wait_idle(timeout).map(|g| (g > 0).then_some(g)),
            None => Ok(None),
        }
    }

    /// With a cache level: the newest generation this process made durable in the checkpoint directory
    /// (`None`: none yet, or no cache level).
    #[must_use]
    pub fn durable_generation(&self) -> Option<u64> {
        self.inner.flush.get().map(|q| q.durable()).filter(|&g| g > 0)
    }

    /// Seconds left before the job's end, if known.
    #[must_use]
    pub fn time_left(&self) -> Option<f64> {
        self.inner.lock().end_time.map(|(e, _)| e - unix_now())
    }

    /// Restart discovery through the store (logged).
    ///
    /// # Errors
    ///
    /// As [`Store::restore`]: [`ErrorKind::NoValidCheckpoint`](crate::ErrorKind::NoValidCheckpoint) when
    /// checkpoints exist but none verifies (the message lists each file and why),
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) when files under this run's name belong to another
    /// run, [`ErrorKind::Io`](crate::ErrorKind::Io) when the restart directory cannot be listed,
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) when `CKPT_RESUME_FROM` names a job that has no
    /// checkpoint there. The failure is logged.
    pub fn restore(&self) -> Result<Option<Restored>> {
        let r = self.store.restore();
        self.log_restore(&r);
        r
    }

    /// [`Checkpointer::restore`] straight into the application's buffers, in one pass over the chosen file
    /// ([`Store::restore_into`]: its contract on the buffers), logged as a restore.
    ///
    /// # Errors
    ///
    /// As [`Store::restore_into`].
    pub fn restore_into(&self, targets: &mut [(&str, &mut [u8])]) -> Result<Option<Restored>> {
        let r = self.store.restore_into(targets);
        self.log_restore(&r);
        r
    }

    /// [`Checkpointer::restore_into`] where the section of each buffer depends on the checkpoint
    /// ([`Store::restore_into_with`]: its contract on `sections`), logged as a restore.
    ///
    /// # Errors
    ///
    /// As [`Store::restore_into_with`].
    pub fn restore_into_with(
        &self,
        buffers: &mut [&mut [u8]],
        sections: impl FnMut(&crate::Checkpoint) -> Result<Vec<String>>,
    ) -> Result<Option<Restored>> {
        let r = self.store.restore_into_with(buffers, sections);
        self.log_restore(&r);
        r
    }

    fn log_restore(&self, r: &Result<Option<Restored>>) {
        let notices = self.store.restore_notices();
        match r {
            Ok(Some(x)) => self.inner.log(&Event::Restore(events::Restore::Found {
                path: &x.chosen_path,
                generation: x.generation,
                step: x.app_step,
                other_job: x.other_job.as_deref(),
                rejected: x.rejected.iter().map(|(path, e)| Rejected { path, error: e.to_string() }).collect(),
                notices: &notices,
            })),
            Ok(None) => self.inner.log(&Event::Restore(events::Restore::Nothing {
                path: None,
                message: "no checkpoint: fresh start",
                notices: &notices,
            })),
            Err(e) => self.inner.log(&Event::Restore(events::Restore::Failed { error: e.to_string() })),
        }
    }

    /// Starts a checkpoint of step `app_step`, taking (and clearing) whatever made it due. Add sections to
    /// the returned [`PendingCheckpoint`] (it dereferences to a [`CheckpointWriter`]), then call its
    /// [`commit`](PendingCheckpoint::commit) (or pass it to [`Checkpointer::commit`]): that records the
    /// cost, answers `ckpt create` requests, logs, and arms [`Checkpointer::should_exit`] when the
    /// checkpoint was asked to be the last (SIGTERM, the time limit). Dropping it without committing
    /// removes the temporary file and makes whatever triggered the checkpoint due again.
    ///
    /// The step is any integer type (`u64`, `usize`, `i32`, ...) with a value in
    /// `0..=`[`MAX_STEP`](crate::MAX_STEP).
    ///
    /// # Errors
    ///
    /// A negative step or one above [`MAX_STEP`](crate::MAX_STEP)
    /// ([`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument), naming it; nothing is taken or
    /// written). The checkpoint directory cannot be listed or created, or the temporary file cannot be
    /// created ([`ErrorKind::Io`](crate::ErrorKind::Io)); another run's checkpoints are under this name
    /// ([`ErrorKind::Conflict`](crate::ErrorKind::Conflict)). The trigger stays due.
    pub fn begin(&self, app_step: impl TryInto<u64> + Copy + Display) -> Result<PendingCheckpoint> {
        self.begin_with(crate::step::step_arg(app_step)?, None)
    }

    /// Like [`Checkpointer::begin`] for this rank's part of multi-rank generation `generation` (agreed by
    /// all ranks); one rank commits the step with [`Store::commit_step`] once every part is durable.
    ///
    /// # Errors
    ///
    /// As [`Checkpointer::begin`].
    pub fn begin_part(
        &self,
        generation: u64,
        app_step: impl TryInto<u64> + Copy + Display,
    ) -> Result<PendingCheckpoint> {
        self.begin_with(crate::step::step_arg(app_step)?, Some(generation))
    }

    fn begin_with(&self, app_step: u64, part: Option<u64>) -> Result<PendingCheckpoint> {
        let taken = self.inner.flags.fetch_and(!DUE_MASK, Ordering::SeqCst) & DUE_MASK;
        let mut st = self.inner.lock();
        let requests = if taken & REQUEST != 0 { std::mem::take(&mut st.requests) } else { Vec::new() };
        let image_dir = requests.iter().find_map(|r| r.image_dir.clone());
        st.in_progress = Some(Taken { bits: taken, requests: Vec::new(), started: Instant::now() });
        st.in_progress_is_part = part.is_some() || self.store.config().nranks > 1;
        drop(st);
        let dir = image_dir.unwrap_or_else(|| self.store.save_dir().to_path_buf());
        let result = match part {
            Some(generation) => self.store.begin_part_in(&dir, generation, app_step),
            None => self.store.begin_in(&dir, app_step),
        };
        match result {
            Ok(w) => {
                if let Some(t) = self.inner.lock().in_progress.as_mut() {
                    t.requests = requests;
                }
                Ok(PendingCheckpoint { writer: Some(w), inner: self.inner.clone() })
            }
            Err(e) => {
                self.inner.fail(taken, requests, &e);
                Err(e)
            }
        }
    }

    /// Commits a checkpoint begun with [`Checkpointer::begin`]: the same as
    /// [`PendingCheckpoint::commit`].
    ///
    /// # Errors
    ///
    /// As [`CheckpointWriter::commit`]; whatever triggered the checkpoint is due again.
    pub fn commit(&self, writer: PendingCheckpoint) -> Result<CommitInfo> {
        writer.commit()
    }

    /// Abandons a checkpoint begun with [`Checkpointer::begin`] that could not be written (a section
    /// failed): the same as [`PendingCheckpoint::abort`].
    pub fn abort(&self, writer: PendingCheckpoint, error: &Error) {
        writer.abort(error);
    }

    /// Concludes a multi-rank step after this rank's part was committed: `committed` says whether the step
    /// itself was committed (its manifest written; every rank must be told the same). On success the exit
    /// is armed if the part's trigger asked for it, pending `ckpt create` requests are answered, and this
    /// rank removes its parts of generations that fell out of `keep` ([`Store::after_step_committed`]); on
    /// failure the signals and time limit that triggered the part are due again and requests get the error.
    pub fn finish_step(&self, committed: bool) {
        self.finish_step_with(committed, true);
    }

    /// For a rank that cannot learn whether its step was committed (several ranks without MPI: rank 0
    /// commits alone): counts its durable part as the step, as [`Checkpointer::finish_step`] with `true`
    /// does, but keeps its older parts, since the step's manifest may not exist; its next part removes
    /// those that the directory then shows retired.
    pub fn finish_step_unconfirmed(&self) {
        self.finish_step_with(true, false);
    }

    /// A background part was waited for: the rest of its step is timed from now.
    pub(crate) fn step_continues_now(&self) {
        if let Some(p) = self.inner.lock().pending_step.as_mut() {
            p.since = Instant::now();
        }
    }

    fn finish_step_with(&self, committed: bool, outcome_known: bool) {
        let Some(PendingStep { bits: taken, requests, reply, generation, step, since }) = ({
            let mut st = self.inner.lock();
            let pending = st.pending_step.take();
            if let (Some(p), true) = (&pending, committed) {
                st.step_cost.record(p.since.elapsed());
            }
            pending
        }) else {
            return;
        };
        // The time-limit lead has changed: the watcher looks again.
        self.inner.wake();
        let collective_s = since.elapsed().as_secs_f64();
        if committed && outcome_known {
            let warnings = self.store.after_step_committed(generation);
            if !warnings.is_empty() {
                self.inner.log(&Event::PruneParts { warnings: &warnings });
            }
        }
        let cached = self.inner.flush.get().and_then(|q| Some((q, self.store.cached_part(generation)?)));
        if let (true, Some((q, part))) = (committed, cached) {
            // A step committed in the node-local caches: exit and answers wait for its copy to the
            // checkpoint directory (rank 0 commits it there once every rank's part is copied).
            self.inner.log(&Event::StepCommitted { step, generation, seconds: collective_s });
            let exit = taken & (SIGNAL_EXIT | DEADLINE) != 0 || requests.iter().any(|r| r.vacate);
            let manifest = (self.store.config().rank == 0)
                .then(|| self.store.save_dir().join(format!("{}.{generation}", self.store.config().base_name())));
            q.push_step(generation, &part, manifest.as_deref(), Waiters { exit, taken, requests, reply });
        } else if committed {
            if taken & (SIGNAL_EXIT | DEADLINE) != 0 || requests.iter().any(|r| r.vacate) {
                self.inner.flags.fetch_or(EXIT_READY, Ordering::SeqCst);
            }
            for r in requests {
                r.answer(&reply);
            }
            self.inner.log(&Event::StepCommitted { step, generation, seconds: collective_s });
        } else {
            let e = Error::new(crate::ErrorKind::InvalidState, "the multi-rank step could not be committed");
            self.inner.fail(taken, requests, &e);
        }
    }

    /// Saves one serde value as a checkpoint (begin, `add_serde("state")`, commit). With several ranks it
    /// writes this rank's part only, as [`Checkpointer::checkpoint_part`] does.
    ///
    /// # Errors
    ///
    /// As [`Checkpointer::begin`], [`CheckpointWriter::add_serde`] and [`PendingCheckpoint::commit`];
    /// whatever triggered the checkpoint is then due again.
    pub fn save_serde<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        app_step: impl TryInto<u64> + Copy + Display,
        value: &T,
    ) -> Result<CommitInfo> {
        Self::write_and_commit(self.begin(app_step), |w| w.add_serde("state", value))
    }

    /// Takes a whole checkpoint of step `app_step`: begins it, lets `write` add the sections, and commits
    /// it durably; when `write` fails the checkpoint is abandoned ([`Checkpointer::abort`]) and its error
    /// returned. The sequence every face uses, so that abort and the step policy live in one place.
    ///
    /// With several ranks and no collective layer (MPI helpers use [`Checkpointer::checkpoint_part`]
    /// and commit the step themselves), this writes this rank's part; rank 0 then waits for every rank's
    /// part and commits the step ([`Store::commit_step`], whose figures it returns), and concludes it with
    /// [`Checkpointer::finish_step`]; the other ranks cannot learn the outcome and count their durable part
    /// ([`Checkpointer::finish_step_unconfirmed`]).
    ///
    /// # Errors
    ///
    /// As [`Checkpointer::begin`] (a negative step, the directory, another run's files), then whatever `write` returns
    /// (the checkpoint is abandoned), then as [`PendingCheckpoint::commit`]. With several ranks and no collective
    /// layer, rank 0 also fails as [`Store::commit_step`] does:
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) when the other ranks' parts are not all durable
    /// within `commit_timeout` or are not parts of this step. Whatever triggered the checkpoint is due again after any
    /// failure.
    pub fn checkpoint(
        &self,
        app_step: impl TryInto<u64> + Copy + Display,
        write: impl FnOnce(&mut CheckpointWriter) -> Result<()>,
    ) -> Result<CommitInfo> {
        let app_step = crate::step::step_arg(app_step)?;
        self.checkpoint_begun(self.begin(app_step)?, app_step, write)
    }

    /// [`Checkpointer::checkpoint`] of a checkpoint begun earlier with [`Checkpointer::begin`] (which took
    /// what made it due): for a save that begins at the call and is written on another thread (Python's
    /// `save(blocking=False)`). Abort on error and the step policy are `checkpoint`'s.
    ///
    /// # Errors
    ///
    /// As [`Checkpointer::checkpoint`], from the write on.
    pub fn checkpoint_begun(
        &self,
        writer: PendingCheckpoint,
        app_step: u64,
        write: impl FnOnce(&mut CheckpointWriter) -> Result<()>,
    ) -> Result<CommitInfo> {
        let info = Self::write_and_commit(Ok(writer), write)?;
        let config = self.store.config();
        if config.nranks <= 1 {
            return Ok(info);
        }
        if config.rank != 0 {
            self.finish_step_unconfirmed();
            return Ok(info);
        }
        let step = self.store.commit_step(info.generation, app_step);
        self.finish_step(step.is_ok());
        step
    }

    /// This rank's part of multi-rank generation `generation` (agreed by all ranks), written by `write`
    /// as in [`Checkpointer::checkpoint`]; the step is committed elsewhere (rank 0, once every part is
    /// durable) and concluded on every rank with [`Checkpointer::finish_step`].
    ///
    /// # Errors
    ///
    /// As [`Checkpointer::begin_part`], then whatever `write` returns (the part is abandoned), then as
    /// [`PendingCheckpoint::commit`]; whatever triggered the part is due again.
    pub fn checkpoint_part(
        &self,
        generation: u64,
        app_step: impl TryInto<u64> + Copy + Display,
        write: impl FnOnce(&mut CheckpointWriter) -> Result<()>,
    ) -> Result<CommitInfo> {
        Self::write_and_commit(self.begin_part(generation, app_step), write)
    }

    /// [`Checkpointer::checkpoint_part`] of a part begun earlier with [`Checkpointer::begin_part`], as
    /// [`Checkpointer::checkpoint_begun`] is for whole checkpoints.
    ///
    /// # Errors
    ///
    /// As [`Checkpointer::checkpoint_part`], from the write on.
    pub fn checkpoint_part_begun(
        &self,
        writer: PendingCheckpoint,
        write: impl FnOnce(&mut CheckpointWriter) -> Result<()>,
    ) -> Result<CommitInfo> {
        Self::write_and_commit(Ok(writer), write)
    }

    /// Begun → written → committed, or abandoned when `write` fails.
    fn write_and_commit(
        begun: Result<PendingCheckpoint>,
        write: impl FnOnce(&mut CheckpointWriter) -> Result<()>,
    ) -> Result<CommitInfo> {
        let mut w = begun?;
        if let Err(e) = write(&mut w) {
            // Keeps what made the checkpoint due (SIGTERM's exit included) due again.
            w.abort(&e);
            return Err(e);
        }
        w.commit()
    }

    /// Writes one line to the structured log (for programs that want their own events there): `event`
    /// and the fields of `fields` (a struct or map; anything else is recorded under `"value"`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let cp = ckpt_core::Checkpointer::new(ckpt_core::Store::new(ckpt_core::Config::new("sim", dir.path()).unwrap())).unwrap();
    /// #[derive(serde::Serialize)]
    /// struct Converged {
    ///     step: u64,
    ///     residual: f64,
    /// }
    /// cp.log_event("converged", Converged { step: 120, residual: 1e-9 });
    /// ```
    pub fn log_event(&self, event: &str, fields: impl serde::Serialize) {
        let mut v = json!({"event": event});
        let fields = serde_json::to_value(fields)
            .unwrap_or_else(|e| json!({"error": format!("the event's fields did not serialize: {e}")}));
        if let Value::Object(m) = &mut v {
            match fields {
                Value::Object(extra) => m.extend(extra),
                Value::Null => {}
                other => {
                    m.insert("value".into(), other);
                }
            }
        }
        self.inner.log(&v);
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // A background checkpoint is finished, then the newest cached checkpoint is copied before the
        // program goes (bounded wait, logged).
        self.finish_in_flight();
        drop(self.flusher.take());
        for id in self.signal_ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        for spec in &self.store.config().signals {
            ACTIVE[spec.signal as usize].fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake();
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        if let Some(p) = &self.socket_path {
            remove_socket_now(p);
        }
        let pending = std::mem::take(&mut self.inner.lock().requests);
        for r in pending {
            r.answer(&ReplyLine::failed("the process finished without taking the checkpoint"));
        }
        self.inner.log(&Event::Finish);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpointer(dir: &Path) -> Checkpointer {
        let mut config = Config::new("guard", dir).unwrap();
        config.log = LogTarget::Off;
        config.signals.clear();
        config.socket_dir = None;
        Checkpointer::new(Store::new(config)).unwrap()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// `let w = cp.begin(1)?; w.commit()?` after SIGTERM arms `should_exit`: the guard's commit does the
    /// checkpointer's bookkeeping (the defect: the writer's own commit skipped it).
    #[test]
    fn committing_the_guard_arms_should_exit_after_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let cp = checkpointer(dir.path());
        cp.request_checkpoint(true);
        assert!(cp.should_checkpoint());
        let mut w = cp.begin(1).unwrap();
        assert!(!cp.should_checkpoint(), "begin takes what made the checkpoint due");
        w.add_bytes("x", b"state").unwrap();
        let info = w.commit().unwrap();
        assert_eq!(info.generation, 1);
        assert!(cp.should_exit(), "SIGTERM's checkpoint is committed: should_exit");
        assert!(!cp.should_checkpoint());
    }

    /// A guard dropped without commit removes its temporary file and makes the trigger due again.
    #[test]
    fn dropping_the_guard_aborts_and_rearms_the_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let cp = checkpointer(dir.path());
        cp.request_checkpoint(true);
        {
            let mut w = cp.begin(1).unwrap();
            w.add_bytes("x", b"state").unwrap();
            assert!(w.temporary_path().exists());
            assert!(!cp.should_checkpoint());
        }
        assert!(cp.should_checkpoint(), "the dropped checkpoint's trigger is due again");
        assert!(!cp.should_exit(), "nothing was committed: no exit");
        assert!(entries(dir.path()).iter().all(|n| !n.contains(".tmp.")), "{:?}", entries(dir.path()));
        assert!(cp.store().restore().unwrap().is_none(), "no checkpoint was committed");
        // The retry takes the re-armed exit request and arms the exit.
        let w = cp.begin(2).unwrap();
        cp.commit(w).unwrap();
        assert!(cp.should_exit());
    }

    /// Steps are `u64`, given as any integer type: `u64` and `usize` steps need no cast.
    #[test]
    fn steps_take_any_integer_type() {
        let dir = tempfile::tempdir().unwrap();
        let cp = checkpointer(dir.path());
        let step: u64 = 41;
        assert_eq!(cp.save_serde(step + 1, &step).unwrap().app_step, 42);
        let e = cp.save_serde(u64::MAX, &step).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("step 18446744073709551615 is above 9223372036854775807"), "{e}");
        assert_eq!(cp.begin(7usize).unwrap().commit().unwrap().app_step, 7);
        assert_eq!(cp.restore().unwrap().unwrap().app_step, 7);
    }

    /// A negative step is refused by every entry point, naming it, before anything is written or taken.
    #[test]
    fn negative_steps_are_refused_naming_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let cp = checkpointer(dir.path());
        cp.request_checkpoint(true);
        let refused = |r: Result<CommitInfo>, value: &str| {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{e}");
            assert!(e.to_string().contains(&format!("step {value} is negative")), "{e}");
        };
        refused(cp.begin(-1).map(|_| unreachable!()), "-1");
        refused(cp.begin_part(1, -2i32).map(|_| unreachable!()), "-2");
        refused(cp.save_serde(-3i64, &0u8), "-3");
        refused(cp.checkpoint(i64::MIN, |_| Ok(())), "-9223372036854775808");
        refused(cp.checkpoint_part(1, -5i8, |_| Ok(())), "-5");
        let store = cp.store();
        refused(store.begin(-6).map(|_| unreachable!()), "-6");
        refused(store.begin_part(1, -7).map(|_| unreachable!()), "-7");
        refused(store.save_serde(-8, &0u8), "-8");
        refused(store.checkpoint(-9, |_| Ok(())), "-9");
        refused(store.commit_step(1, -10), "-10");
        refused(store.commit_step_with_parts(1, -11, &[]), "-11");
        let path = dir.path().join("exact.ckpt");
        let storage = store.storage().clone();
        refused(crate::begin_file(&path, -12, store.config(), storage).map(|_| unreachable!()), "-12");
        // The `u64` entry points refuse what the file cannot record, before creating anything.
        let e = store.begin_in(dir.path(), crate::MAX_STEP + 1).map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{e}");
        assert!(entries(dir.path()).iter().all(|n| !n.contains(".tmp.")), "{:?}", entries(dir.path()));
        assert!(cp.should_checkpoint() && !cp.should_exit(), "a refused step takes no trigger");
        assert_eq!(cp.save_serde(crate::MAX_STEP, &0u8).unwrap().app_step, crate::MAX_STEP);
        assert!(cp.should_exit());
    }

    /// An aborted checkpoint that the interval triggered stays due (before, the interval never fired again).
    #[test]
    fn an_aborted_interval_checkpoint_is_due_again() {
        let dir = tempfile::tempdir().unwrap();
        let cp = checkpointer(dir.path());
        cp.inner.flags.fetch_or(INTERVAL, Ordering::SeqCst);
        let w = cp.begin(1).unwrap();
        w.abort(&Error::invalid("a section failed"));
        assert!(cp.should_checkpoint());
    }
}
