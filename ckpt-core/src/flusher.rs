//! The background copy of cached checkpoints to the checkpoint directory (see [`crate::levels`]).
//!
//! One thread per checkpointer with a cache level. It copies one checkpoint at a time with
//! [`Store::flush_checkpoint`]; at most one more waits, and a newer checkpoint replaces a waiting one (it
//! takes over what the older one was waiting for: an exit, `ckpt create` answers). The program's end
//! (dropping the checkpointer, or `exit()` without that) copies the newest cached checkpoint if it is not
//! durable yet and waits for the copy, at most [`CacheLevel::exit_timeout`](crate::CacheLevel).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::control::{ReplyLine, Request};
use crate::error::{Error, Result};
use crate::levels::FlushPolicy;
use crate::reader::{Checkpoint, LoadOptions};
use crate::store::{CommitInfo, Store};

/// What waits for a copy.
#[derive(Default)]
pub(crate) struct Waiters {
    /// A checkpoint asked to be the last: `should_exit` turns true once it is durable.
    pub exit: bool,
    /// The trigger bits of the checkpoints waiting: due again if the copy fails.
    pub taken: u32,
    /// `ckpt create` requests, answered once the copy is durable.
    pub requests: Vec<Request>,
    /// Their answer (the path is replaced by the checkpoint directory's).
    pub reply: ReplyLine,
}

/// One cached checkpoint to copy, and what waits for it.
pub(crate) struct FlushJob {
    pub generation: u64,
    /// A whole checkpoint, or this rank's part of a multi-rank step.
    pub source: Checkpoint,
    /// A rank's part: rank 0 commits the step from the cache's manifest once every part is copied
    /// (`Some`), the other ranks wait for that (`None`).
    pub step: Option<Option<Checkpoint>>,
    pub waiters: Waiters,
}

impl FlushJob {
    /// A job for the committed cache file `path` of `generation`, opened now: a prune of the cache before
    /// the copy starts cannot take it away.
    pub(crate) fn open(store: &Store, generation: u64, path: &std::path::Path, waiters: Waiters) -> Result<FlushJob> {
        let source = Checkpoint::open_with(&**store.storage(), path, LoadOptions { mmap: true })?;
        Ok(FlushJob { generation, source, step: None, waiters })
    }

    /// Takes over what an older job waiting for its copy was waiting for.
    fn absorb(&mut self, older: FlushJob) {
        self.waiters.exit |= older.waiters.exit;
        self.waiters.taken |= older.waiters.taken;
        self.waiters.requests.extend(older.waiters.requests);
    }
}

/// What the program is told when a copy of a generation ends.
pub(crate) type OnFlushed = Box<dyn Fn(u64, Waiters, Result<CommitInfo>) + Send + Sync>;
/// What the program's end is told: seconds waited, whether everything was durable, the newest durable
/// generation.
pub(crate) type OnFinished = Box<dyn Fn(f64, bool, u64) + Send + Sync>;

#[derive(Default)]
struct FlushState {
    next: Option<FlushJob>,
    running: Option<u64>,
    /// Whether an exit waits for the copy running.
    running_exit: bool,
    /// The newest generation this process made durable.
    durable: u64,
    /// The newest generation this process committed to the cache, and its file.
    newest_cached: Option<(u64, PathBuf)>,
    /// Checkpoints committed to the cache (for `CKPT_FLUSH=N`).
    committed: u64,
    stop: bool,
    finished: bool,
    /// Why the last copy failed (cleared by a copy that succeeds).
    last_error: Option<(crate::ErrorKind, String)>,
}

/// The queue between the program's commits and the copying thread.
pub(crate) struct FlushQueue {
    store: Store,
    policy: FlushPolicy,
    exit_timeout: Duration,
    state: Mutex<FlushState>,
    changed: Condvar,
    on_flushed: OnFlushed,
    on_finished: OnFinished,
    /// The process that started the thread: a forked child's `exit()` has no thread to wait for.
    owner: u32,
}

/// The copying thread and its queue.
pub(crate) struct Flusher {
    queue: Arc<FlushQueue>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread copying `store`'s cached checkpoints (the store must have a cache level).
    pub(crate) fn start(store: Store, on_flushed: OnFlushed, on_finished: OnFinished) -> Result<Flusher> {
        let cache = store.config().cache.clone().ok_or_else(|| Error::invalid("no cache level"))?;
        let queue = Arc::new(FlushQueue {
            store,
            policy: cache.flush,
            exit_timeout: cache.exit_timeout,
            state: Mutex::new(FlushState::default()),
            changed: Condvar::new(),
            on_flushed,
            on_finished,
            owner: std::process::id(),
        });
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name("ckpt-flush".into())
            .spawn(move || q.run())
            .map_err(|e| Error::io("start the ckpt-flush thread", e))?;
        register_for_exit(&queue);
        Ok(Flusher { queue, thread: Some(thread) })
    }

    /// The queue, for the program's commits.
    pub(crate) fn queue(&self) -> &Arc<FlushQueue> {
        &self.queue
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        if std::process::id() != self.queue.owner {
            // A forked child (a worker ending normally): the copying thread is the parent's, not in this
            // process; its copies are the parent's to finish. Nothing to wait for, no thread to join.
            if let Some(t) = self.thread.take() {
                std::mem::forget(t);
            }
            return;
        }
        let complete = self.queue.finish();
        self.queue.lock().stop = true;
        self.queue.changed.notify_all();
        if let Some(t) = self.thread.take().filter(|_| complete) {
            let _ = t.join();
        }
        // Otherwise the copy in progress goes on while the program ends; the temporary file it leaves if
        // the process exits first is removed by a later save as a dead writer's.
    }
}

impl FlushQueue {
    fn lock(&self) -> MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A checkpoint was committed to the cache: whether policy, exit or requests make it a copy (`job`
    /// then copies it). Returns `false` when it is not copied (its exit and requests, if any, are
    /// settled by the caller).
    pub(crate) fn committed(&self, generation: u64, path: PathBuf, must: bool) -> bool {
        let mut st = self.lock();
        st.committed += 1;
        st.newest_cached = Some((generation, path));
        must || self.policy.copies(st.committed)
    }

    /// Whether `info` was committed to the cache level.
    pub(crate) fn is_cached(&self, info: &CommitInfo) -> bool {
        info.generation_path.parent().is_some_and(|d| self.store.cache_dir() == Some(d))
    }

    /// Whether `path` lies in the cache directory: a whole checkpoint there, or a rank's part of a
    /// multi-rank step under it (`<cache>/<base>.parts/<N>/rank<R>.ckpt`).
    pub(crate) fn holds(&self, path: &std::path::Path) -> bool {
        self.store.cache_dir().is_some_and(|c| path.starts_with(c))
    }

    /// Opens the committed cache file and queues its copy; when it cannot be opened, the waiters are told
    /// the error at once.
    pub(crate) fn open_and_push(&self, generation: u64, path: &std::path::Path, waiters: Waiters) {
        // Opened before the waiters move into the job: an error must still reach them.
        match Checkpoint::open_with(&**self.store.storage(), path, LoadOptions { mmap: true }) {
            Ok(source) => self.push(FlushJob { generation, source, step: None, waiters }),
            Err(e) => (self.on_flushed)(generation, waiters, Err(e)),
        }
    }

    /// Queues the copy of this rank's part of a committed multi-rank step (and for rank 0, `manifest`: the
    /// step's commit there). Every step is copied, whatever the policy, in order, none replaced by a newer
    /// one: rank 0 waits for every rank's copy of each step, so every rank must copy the same steps. While
    /// one copy already waits to start, this waits for it to start (the caches hold at most two steps
    /// more than the checkpoint directory).
    pub(crate) fn push_step(
        &self,
        generation: u64,
        part: &std::path::Path,
        manifest: Option<&std::path::Path>,
        waiters: Waiters,
    ) {
        let storage = self.store.storage();
        let opened = Checkpoint::open_with(&**storage, part, LoadOptions { mmap: true }).and_then(|source| {
            let manifest =
                manifest.map(|m| Checkpoint::open_with(&**storage, m, LoadOptions { mmap: true })).transpose()?;
            Ok((source, manifest))
        });
        let (source, manifest) = match opened {
            Ok(x) => x,
            Err(e) => return (self.on_flushed)(generation, waiters, Err(e)),
        };
        let mut st = self.lock();
        while st.next.is_some() && !st.stop {
            st = self.changed.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        st.committed += 1;
        st.newest_cached = None; // the end of the program copies no step by itself: every one is queued
        st.next = Some(FlushJob { generation, source, step: Some(manifest), waiters });
        drop(st);
        self.changed.notify_all();
    }

    /// Queues `job`; a job not started yet is replaced by it (and its waiters taken over).
    pub(crate) fn push(&self, mut job: FlushJob) {
        let mut st = self.lock();
        if let Some(older) = st.next.take() {
            job.absorb(older);
        }
        st.next = Some(job);
        drop(st);
        self.changed.notify_all();
    }

    /// Whether a copy that an exit waits for is queued or running.
    pub(crate) fn exit_pending(&self) -> bool {
        let st = self.lock();
        st.next.as_ref().is_some_and(|j| j.waiters.exit) || st.running_exit
    }

    /// The newest generation this process made durable (0: none yet).
    pub(crate) fn durable(&self) -> u64 {
        self.lock().durable
    }

    /// Waits until no copy is queued or running, at most `timeout`: the newest durable generation (0:
    /// none), or the last copy's error.
    pub(crate) fn wait_idle(&self, timeout: Option<Duration>) -> Result<u64> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        while st.next.is_some() || st.running.is_some() {
            st = match deadline {
                None => self.changed.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        let generation = st.running.or(st.next.as_ref().map(|j| j.generation)).unwrap_or(0);
                        return Err(Error::io(
                            &format!("wait for the copy of generation {generation} to the checkpoint directory"),
                            std::io::Error::from(std::io::ErrorKind::TimedOut),
                        ));
                    }
                    self.changed.wait_timeout(st, d - now).unwrap_or_else(std::sync::PoisonError::into_inner).0
                }
            };
        }
        match &st.last_error {
            Some((kind, message)) => Err(Error::new(*kind, message.clone())),
            None => Ok(st.durable),
        }
    }

    fn run(&self) {
        loop {
            let job = {
                let mut st = self.lock();
                loop {
                    if let Some(job) = st.next.take() {
                        st.running = Some(job.generation);
                        st.running_exit = job.waiters.exit;
                        self.changed.notify_all(); // a step waiting to be queued may be now
                        break job;
                    }
                    if st.stop {
                        return;
                    }
                    st = self.changed.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            let result = match &job.step {
                None => self.store.flush_checkpoint(&job.source),
                Some(manifest) => self.store.flush_part(&job.source).and_then(|part| match manifest {
                    Some(m) => self.store.flush_step(m),
                    None => self.store.wait_for_step(job.generation).map(|()| part),
                }),
            };
            let FlushJob { generation, source, step, waiters } = job;
            drop((source, step));
            {
                let mut st = self.lock();
                match &result {
                    Ok(info) => {
                        st.durable = st.durable.max(info.generation);
                        st.last_error = None;
                    }
                    Err(e) => st.last_error = Some((e.kind(), e.to_string())),
                }
            }
            // Told before the copy counts as finished: the program's end waits for what it is told.
            (self.on_flushed)(generation, waiters, result);
            {
                let mut st = self.lock();
                st.running = None;
                st.running_exit = false;
            }
            self.changed.notify_all();
        }
    }

    /// The program ends: copies the newest cached checkpoint if it is not durable yet, and waits for the
    /// copies, at most the exit timeout. Returns whether everything is durable. Once per queue.
    pub(crate) fn finish(&self) -> bool {
        let started = Instant::now();
        let mut st = self.lock();
        if st.finished {
            return st.next.is_none() && st.running.is_none();
        }
        st.finished = true;
        if let Some((generation, path)) = st.newest_cached.clone() {
            let queued = st.next.as_ref().map(|j| j.generation);
            if generation > st.durable && st.running != Some(generation) && queued != Some(generation) {
                drop(st);
                match FlushJob::open(&self.store, generation, &path, Waiters::default()) {
                    Ok(job) => self.push(job),
                    Err(e) => (self.on_flushed)(generation, Waiters::default(), Err(e)),
                }
                st = self.lock();
            }
        }
        let deadline = started + self.exit_timeout;
        while st.next.is_some() || st.running.is_some() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self.changed.wait_timeout(st, deadline - now).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
        let complete = st.next.is_none() && st.running.is_none();
        let durable = st.durable;
        drop(st);
        (self.on_finished)(started.elapsed().as_secs_f64(), complete, durable);
        complete
    }
}

/// Queues whose program may end by `exit()` without dropping its checkpointer (C programs that do not
/// call `ckpt_finalize`, Python's interpreter exit).
static AT_EXIT: Mutex<Vec<Weak<FlushQueue>>> = Mutex::new(Vec::new());
static REGISTER_AT_EXIT: Once = Once::new();

fn register_for_exit(queue: &Arc<FlushQueue>) {
    REGISTER_AT_EXIT.call_once(|| {
        // SAFETY: registers a plain function without arguments for exit(); it waits on the queues'
        // condition variables, which the copying threads (alive until the process ends) signal.
        unsafe { libc::atexit(finish_flushes_at_exit) };
    });
    let mut list = AT_EXIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    list.retain(|q| q.strong_count() > 0);
    list.push(Arc::downgrade(queue));
}

extern "C" fn finish_flushes_at_exit() {
    let queues: Vec<Arc<FlushQueue>> =
        AT_EXIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().filter_map(Weak::upgrade).collect();
    let me = std::process::id();
    for q in queues.iter().filter(|q| q.owner == me) {
        // A panic must not unwind out of an atexit handler.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| q.finish()));
    }
}
