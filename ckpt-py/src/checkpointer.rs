//! `ckpt._ckpt.Checkpointer`: the core [`Checkpointer`] for Python.
//!
//! The pure-Python `ckpt.Checkpointer` wraps this class: it pickles and unpickles, manages the
//! Python-level signal handlers and the context manager; this class owns the core checkpointer (its
//! signal-hook handlers, watcher thread, control socket and log) and writes and reads the bytes.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ckpt_core::{Checkpoint, Checkpointer, Config, Error, ErrorKind, Interval, LoadOptions, parse_interval, triggers};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use serde_json::json;

use crate::background::{Captured, Outcome, PySaveHandle, StagingPool};
use crate::buffers;
use crate::errors::{IntoPyResult, to_py};
use crate::retention::{BestPolicy, Mode};
use crate::signals;
use crate::{restored_info, save_detached};

/// A rank's part identity as Python passes it: `(generation, step, file_len, rank, nranks, header_crc32,
/// table_crc32)` (see `ckpt_core::PartIdentity`).
pub(crate) type PartTuple = (u64, i64, u64, u32, u32, u32, u32);

/// An interval as Python passes it: seconds, or a Slurm time string (`"30"` is 30 minutes), or `"auto"`.
#[derive(FromPyObject)]
pub enum IntervalArg {
    /// A Slurm time string, `auto`, or `off`.
    Text(String),
    /// Seconds.
    Seconds(f64),
}

/// The configuration from the environment, with the arguments given in Python applied on top.
pub fn build_config(
    py: Python<'_>,
    name: Option<&str>,
    directory: Option<PathBuf>,
    interval: Option<IntervalArg>,
    keep: Option<usize>,
    signals: Option<&str>,
) -> Result<Config, Error> {
    let mut cfg = crate::config::config_from_env(py, name)?;
    if let Some(dir) = directory {
        // An explicit directory is where restarts look too, unless CKPT_RESTART_DIR says otherwise.
        if std::env::var_os("CKPT_RESTART_DIR").is_none_or(|v| v.is_empty()) {
            cfg.restart_dir = dir.clone();
        }
        cfg.checkpoint_dir = dir;
    }
    match interval {
        None => {}
        Some(IntervalArg::Seconds(s)) => {
            if !s.is_finite() || s < 0.0 {
                return Err(Error::invalid(format!("interval must be a non-negative number of seconds, not {s}")));
            }
            cfg.interval = (s > 0.0).then(|| Interval::Every(Duration::from_secs_f64(s)));
        }
        Some(IntervalArg::Text(t)) => {
            cfg.interval = parse_interval(&t).map_err(|e| Error::invalid(format!("interval: {}", e.message())))?;
        }
    }
    if let Some(k) = keep {
        if k == 0 {
            return Err(Error::invalid("keep must be at least 1"));
        }
        cfg.keep = k;
    }
    if let Some(list) = signals {
        cfg.signals = if list.trim().is_empty() {
            Vec::new()
        } else {
            triggers::parse_signals(list)
                .map_err(|e| Error::invalid(e.message().replacen("CKPT_SIGNALS", "signals", 1)))?
        };
    }
    Ok(cfg)
}

/// [`Checkpointer::restore`], keeping the notices for Python: the core's method logs them and drops them.
/// Writes the same `restore` event to the checkpointer's log. `max_generation`: only generations up to
/// it (the fallback after a newer one could not be unpickled).
fn restore_logged(
    cp: &Checkpointer,
    max_generation: Option<u64>,
) -> (Result<Option<ckpt_core::Restored>, Error>, Vec<String>) {
    let store = cp.store();
    let r = match max_generation {
        None => store.restore(),
        Some(g) => store.restore_at_most(g),
    };
    let notices = store.take_restore_notices();
    let event = match &r {
        Ok(Some(x)) => json!({
            "path": x.chosen_path, "generation": x.generation, "step": x.app_step.cast_signed(), "other_job": x.other_job,
            "rejected": x.rejected.iter().map(|(p, e)| json!({"path": p, "error": e.to_string()})).collect::<Vec<_>>(),
            "notices": notices,
        }),
        Ok(None) => json!({"path": null, "message": "no checkpoint: fresh start", "notices": notices}),
        Err(e) => json!({"error": e.to_string(), "notices": notices}),
    };
    cp.log_event("restore", event);
    (r, notices)
}

/// After a durable commit of a whole checkpoint (not a rank's part): best-metric retention, when asked
/// for, removes the generations it does not keep (only now: the new one is durable).
fn after_commit(
    cp: &Checkpointer,
    best: Option<&BestPolicy>,
    mut info: ckpt_core::CommitInfo,
    metrics: Option<&str>,
) -> ckpt_core::CommitInfo {
    if let Some(policy) = best
        && cp.config().nranks <= 1
    {
        policy.note(info.generation, metrics);
        let (_, warnings) = policy.retire(cp, info.generation);
        if !warnings.is_empty() {
            cp.log_event("warning", json!({"message": "best-metric retention", "warnings": warnings}));
        }
        info.warnings.extend(warnings);
    }
    info
}

/// A part's identity as Python passes it.
fn part_tuple(cp: &Checkpointer, generation: u64) -> Result<PartTuple, Error> {
    let Some(i) = cp.store().part_identity(generation) else {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!("this process has no durable part of generation {generation}"),
        ));
    };
    Ok(tuple_of(&i))
}

/// A part identity as a Python tuple.
fn tuple_of(i: &ckpt_core::PartIdentity) -> PartTuple {
    (i.generation, i.app_step.cast_signed(), i.file_len, i.rank, i.nranks, i.header_crc32, i.table_crc32)
}

/// Every rank's part identities as Python passes them (indexed by rank).
pub(crate) fn part_identities(parts: Vec<PartTuple>) -> Result<Vec<ckpt_core::PartIdentity>, Error> {
    parts
        .into_iter()
        .enumerate()
        .map(|(r, (generation, step, file_len, rank, nranks, header_crc32, table_crc32))| {
            let app_step = u64::try_from(step)
                .map_err(|_| Error::invalid(format!("parts[{r}] step {step} is negative: steps are 0 or more")))?;
            Ok(ckpt_core::PartIdentity { generation, app_step, file_len, rank, nranks, header_crc32, table_crc32 })
        })
        .collect()
}

/// The core checkpointer behind `ckpt.Checkpointer` (see the module documentation).
#[pyclass(module = "ckpt._ckpt", name = "Checkpointer", frozen)]
pub struct PyCheckpointer {
    cp: RwLock<Option<Arc<Checkpointer>>>,
    config: Config,
    /// The signal dispositions from before the core checkpointer was created.
    before: signals::Snapshot,
    /// The staging buffer of background saves, kept for the next one.
    staging: StagingPool,
    /// Best-metric retention, when asked for.
    best: Option<Arc<BestPolicy>>,
    /// The step `open_step` chose (restart on another number of ranks).
    step: std::sync::Mutex<Option<ckpt_core::Step>>,
}

/// What the thread of a background save writes: the captured bytes, as a Python checkpoint's sections.
struct BackgroundWrite {
    captured: Captured,
    compression: ckpt_core::Compression,
    metrics: Option<String>,
}

impl BackgroundWrite {
    fn run(&self, w: &mut ckpt_core::CheckpointWriter) -> Result<(), Error> {
        buffers::write_sections(w, &self.captured.views(), self.compression, self.metrics.as_deref())
    }

    fn metrics(&self) -> Option<&str> {
        self.metrics.as_deref()
    }
}

/// How a background save's thread finishes the checkpoint begun at the call.
type Finish = dyn FnOnce(&Checkpointer, ckpt_core::PendingCheckpoint, &BackgroundWrite) -> Result<ckpt_core::CommitInfo, Error>
    + Send;

impl PyCheckpointer {
    fn get(&self, py: Python<'_>) -> PyResult<Arc<Checkpointer>> {
        let guard = self.cp.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or_else(|| to_py(py, &Error::new(ErrorKind::InvalidState, "the checkpointer is closed")))
    }

    /// A background save: captures the stream and the buffers into the staging buffer, begins the
    /// checkpoint (`part`: this rank's part of that generation) at the call, taking what made it due, and
    /// hands it to a thread that runs `finish`.
    #[allow(clippy::too_many_arguments)]
    fn start_background(
        &self,
        py: Python<'_>,
        stream: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyList>,
        compress: Option<&str>,
        item_sizes: Option<Vec<usize>>,
        step: i64,
        metrics: Option<String>,
        part: Option<u64>,
        finish: Box<Finish>,
    ) -> PyResult<PySaveHandle> {
        let cp = self.get(py)?;
        let compression = buffers::compression(py, compress, self.config.compression)?;
        let inputs = buffers::Inputs::new(stream, buffers, item_sizes)?;
        let pool = self.staging.clone();
        let started = py.detach(|| -> Result<_, Error> {
            let captured = Captured::new(&inputs.views(), &pool);
            let w = match part {
                Some(generation) => cp.begin_part(generation, step)?,
                None => cp.begin(step)?,
            };
            Ok((captured, w))
        });
        drop(inputs);
        let (captured, w) = started.py_err(py)?;
        let write = BackgroundWrite { captured, compression, metrics };
        let outcome = Arc::new(Outcome::default());
        let theirs = outcome.clone();
        // The writer goes to the thread through a slot, so that it can be abandoned if no thread starts.
        let slot = Arc::new(std::sync::Mutex::new(Some(w)));
        let theirs_slot = slot.clone();
        let thread_cp = cp.clone();
        let spawned = std::thread::Builder::new().name("ckpt-save".into()).spawn(move || {
            let Some(w) = theirs_slot.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finish(&thread_cp, w, &write)))
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::InvalidState, "the ckpt-save thread panicked")));
            drop(write);
            theirs.finish(r);
        });
        if let Err(e) = spawned {
            let e = Error::io("start the ckpt-save thread", e);
            if let Some(w) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                cp.abort(w, &e); // what made it due is due again
            }
            return Err(to_py(py, &e));
        }
        Ok(PySaveHandle { outcome, step })
    }
}

#[pymethods]
impl PyCheckpointer {
    #[new]
    #[pyo3(signature = (name=None, directory=None, interval=None, keep=None, signals=None, keep_best=0, metric=None, mode="min", rank=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: Option<&str>,
        directory: Option<PathBuf>,
        interval: Option<IntervalArg>,
        keep: Option<usize>,
        signals: Option<&str>,
        keep_best: usize,
        metric: Option<String>,
        mode: &str,
        rank: Option<(u32, u32)>,
    ) -> PyResult<PyCheckpointer> {
        let mut config = build_config(py, name, directory, interval, keep, signals).py_err(py)?;
        if let Some((r, n)) = rank {
            // From the communicator (MPI_Comm_rank/size): beats guessing from launcher variables.
            if n == 0 || r >= n {
                return Err(to_py(py, &Error::invalid(format!("rank {r} of {n} is not valid"))));
            }
            config.rank = r;
            config.nranks = n;
        }
        let mode = match mode {
            "min" => Mode::Min,
            "max" => Mode::Max,
            other => return Err(to_py(py, &Error::invalid(format!("mode must be \"min\" or \"max\", not {other:?}")))),
        };
        let best = match (keep_best, metric) {
            (0, _) => None,
            (_, None) => {
                return Err(to_py(py, &Error::invalid("keep_best needs metric= (the name of the metric to rank by)")));
            }
            (n, Some(m)) => {
                if config.nranks > 1 && rank.is_none() {
                    // Rank 0 decides for every rank: only with a communicator to tell them.
                    return Err(to_py(
                        py,
                        &Error::invalid(
                            "keep_best with several ranks needs comm= (an mpi4py communicator): rank 0 decides which \
                             steps every rank keeps",
                        ),
                    ));
                }
                Some(Arc::new(BestPolicy::new(config.keep, n, m, mode)))
            }
        };
        let sigs: Vec<i32> = config.signals.iter().map(|s| s.signal).collect();
        let before = signals::snapshot(&sigs);
        let mut core_config = config.clone();
        if best.is_some() {
            // The policy prunes (after each durable commit); the core keeps every generation.
            core_config.keep = usize::MAX / 2;
        }
        let store = ckpt_core::Store::new(core_config);
        let cp = Checkpointer::new(store).py_err(py)?;
        signals::after_create(&before);
        Ok(PyCheckpointer {
            cp: RwLock::new(Some(Arc::new(cp))),
            config,
            before,
            staging: StagingPool::default(),
            step: std::sync::Mutex::new(None),
            best,
        })
    }

    /// Whether a checkpoint is due (a signal, the interval, the time limit or a request).
    fn should_checkpoint(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.get(py)?.should_checkpoint())
    }

    /// Whether the program should stop now (a checkpoint that asked for an exit was committed).
    fn should_exit(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.get(py)?.should_exit())
    }

    /// Requests a checkpoint as a signal would (`exit=True`: as SIGTERM does).
    #[pyo3(signature = (exit=false))]
    fn request_checkpoint(&self, py: Python<'_>, exit: bool) -> PyResult<()> {
        self.get(py)?.request_checkpoint(exit);
        Ok(())
    }

    /// Seconds left before the job's end, when known.
    fn time_left(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        Ok(self.get(py)?.time_left())
    }

    /// With a cache level: waits (GIL released) until the copies to the checkpoint directory are done, at
    /// most `timeout` seconds; the newest generation durable there.
    #[pyo3(signature = (timeout=None))]
    fn wait_for_flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<u64>> {
        let cp = self.get(py)?;
        let timeout = match timeout {
            Some(t) if t.is_finite() && t >= 0.0 => Some(std::time::Duration::from_secs_f64(t)),
            Some(t) => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!("timeout {t} is not a number of seconds")));
            }
            None => None,
        };
        py.detach(|| cp.wait_for_flush(timeout)).py_err(py)
    }

    /// With a cache level: the newest generation this process made durable in the checkpoint directory.
    fn durable_generation(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        Ok(self.get(py)?.durable_generation())
    }

    /// The node-local cache directory (`CKPT_CACHE_DIR`), if any.
    fn cache_dir(&self, py: Python<'_>) -> PyResult<Option<PathBuf>> {
        Ok(self.get(py)?.store().cache_dir().map(std::path::Path::to_path_buf))
    }

    /// Saves a pickle stream and its out-of-band buffers as the next checkpoint; returns the commit's figures.
    /// `metrics`: a JSON object's text, stored in the header.
    #[pyo3(signature = (stream, buffers, *, step, compress=None, item_sizes=None, metrics=None))]
    #[allow(clippy::too_many_arguments)]
    fn save<'py>(
        &self,
        py: Python<'py>,
        stream: &Bound<'py, PyAny>,
        buffers: &Bound<'py, PyList>,
        step: i64,
        compress: Option<&str>,
        item_sizes: Option<Vec<usize>>,
        metrics: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let cp = self.get(py)?;
        let compression = buffers::compression(py, compress, self.config.compression)?;
        save_detached(py, stream, buffers, item_sizes, |views| {
            let info = cp.checkpoint(step, |w| buffers::write_sections(w, views, compression, metrics))?;
            Ok(after_commit(&cp, self.best.as_deref(), info, metrics))
        })
    }

    /// Starts a background save (see `background`): copies the stream and the buffers, begins the
    /// checkpoint (taking what made it due) and returns; a thread writes and commits it
    /// ([`Checkpointer::checkpoint_begun`]). The caller keeps at most one in flight.
    #[pyo3(signature = (stream, buffers, *, step, compress=None, item_sizes=None, metrics=None))]
    #[allow(clippy::too_many_arguments)]
    fn save_async<'py>(
        &self,
        py: Python<'py>,
        stream: &Bound<'py, PyAny>,
        buffers: &Bound<'py, PyList>,
        step: i64,
        compress: Option<&str>,
        item_sizes: Option<Vec<usize>>,
        metrics: Option<String>,
    ) -> PyResult<PySaveHandle> {
        let best = self.best.clone();
        let finish: Box<Finish> = Box::new(move |cp, w, write| {
            // `begin` took the step (0..=MAX_STEP) at the call.
            let info = cp.checkpoint_begun(w, step.cast_unsigned(), |w| write.run(w))?;
            Ok(after_commit(cp, best.as_deref(), info, write.metrics()))
        });
        self.start_background(py, stream, buffers, compress, item_sizes, step, metrics, None, finish)
    }

    /// [`save_part`](Self::save_part) in the background: copies the state, begins this rank's part of
    /// `generation` and returns; a thread writes and commits the part
    /// ([`Checkpointer::checkpoint_part_begun`]). The step is committed later, collectively, once every
    /// rank's part is durable (`part_identity`, `commit_step_parts`, `finish_step`).
    #[pyo3(signature = (stream, buffers, *, generation, step, compress=None, item_sizes=None, metrics=None))]
    #[allow(clippy::too_many_arguments)]
    fn save_part_async<'py>(
        &self,
        py: Python<'py>,
        stream: &Bound<'py, PyAny>,
        buffers: &Bound<'py, PyList>,
        generation: u64,
        step: i64,
        compress: Option<&str>,
        item_sizes: Option<Vec<usize>>,
        metrics: Option<String>,
    ) -> PyResult<PySaveHandle> {
        let finish: Box<Finish> = Box::new(|cp, w, write| cp.checkpoint_part_begun(w, |w| write.run(w)));
        self.start_background(py, stream, buffers, compress, item_sizes, step, metrics, Some(generation), finish)
    }

    /// This rank's durable part of `generation` as rank 0's `commit_step_parts` needs it: `(generation,
    /// step, file_len, rank, nranks, header_crc32, table_crc32)`.
    fn part_identity(&self, py: Python<'_>, generation: u64) -> PyResult<PartTuple> {
        part_tuple(&*self.get(py)?, generation).py_err(py)
    }

    /// The generation the next checkpoint of this name would get on this rank (the ranks of a collective
    /// save agree on the largest).
    fn next_generation(&self, py: Python<'_>) -> PyResult<u64> {
        let cp = self.get(py)?;
        py.detach(|| cp.store().next_generation()).py_err(py)
    }

    /// Writes this rank's part of multi-rank `generation` (agreed by all ranks) durably; returns the
    /// part's commit figures and its identity `(generation, step, file_len, rank, nranks, header_crc32,
    /// table_crc32)` for rank 0's `commit_step_parts`. The step exists only once rank 0 committed it; every
    /// rank then calls `finish_step` with the outcome.
    #[pyo3(signature = (stream, buffers, *, generation, step, compress=None, item_sizes=None, metrics=None))]
    #[allow(clippy::too_many_arguments)]
    fn save_part<'py>(
        &self,
        py: Python<'py>,
        stream: &Bound<'py, PyAny>,
        buffers: &Bound<'py, PyList>,
        generation: u64,
        step: i64,
        compress: Option<&str>,
        item_sizes: Option<Vec<usize>>,
        metrics: Option<&str>,
    ) -> PyResult<(Bound<'py, PyDict>, PartTuple)> {
        let cp = self.get(py)?;
        let compression = buffers::compression(py, compress, self.config.compression)?;
        let d = save_detached(py, stream, buffers, item_sizes, |views| {
            cp.checkpoint_part(generation, step, |w| buffers::write_sections(w, views, compression, metrics))
        })?;
        Ok((d, part_tuple(&cp, generation).py_err(py)?))
    }

    /// Commits multi-rank `generation` of `step` from every rank's part identity (indexed by rank, from
    /// `save_part`), after every part is durable: writes the step's manifest. Call on rank 0.
    fn commit_step_parts<'py>(
        &self,
        py: Python<'py>,
        generation: u64,
        step: i64,
        parts: Vec<PartTuple>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let cp = self.get(py)?;
        let parts = part_identities(parts).py_err(py)?;
        let info = py.detach(|| cp.store().commit_step_with_parts(generation, step, &parts)).py_err(py)?;
        crate::commit_info(py, &info)
    }

    /// On a rank other than 0, after rank 0 committed multi-rank `generation` of `step` from `parts` (the
    /// identities it committed, broadcast to every rank): records the step's manifest in this rank's
    /// node-local cache too, unless it is there already (a rank on rank 0's node), so that a restart on
    /// the same nodes finds the step in every node's cache. Returns whether it wrote one (`False` without a
    /// cache level). The collective save does this when any rank caches, as `ckpt_mpi.h` does.
    fn record_step(&self, py: Python<'_>, generation: u64, step: i64, parts: Vec<PartTuple>) -> PyResult<bool> {
        let cp = self.get(py)?;
        let parts = part_identities(parts).py_err(py)?;
        let step = u64::try_from(step)
            .map_err(|_| Error::invalid(format!("step {step} is negative: steps are 0 or more")))
            .py_err(py)?;
        py.detach(|| cp.store().record_step(generation, step, &parts)).py_err(py)
    }

    /// Whether this process keeps partner copies (`CKPT_PARTNER=1` with a cache level).
    fn has_partner_copies(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.get(py)?.store().has_partner_copies())
    }

    /// A 64-bit key of this process's node (`CKPT_NODE_ID`, `SLURM_TOPOLOGY_ADDR` naming this host, or the
    /// host name): the collective checkpointer places each rank's partner copy on another node.
    fn node_key(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(ckpt_core::levels::node_key(&self.get(py)?.store().node_name()))
    }

    /// The newest generation this rank can restart from (its part and the manifest verified), 0 when none.
    fn newest_valid_generation(&self, py: Python<'_>) -> PyResult<u64> {
        let cp = self.get(py)?;
        py.detach(|| match cp.store().restore_at_most(u64::MAX) {
            Ok(found) => Ok(found.map_or(0, |r| r.generation)),
            Err(e) if e.kind() == ErrorKind::NoValidCheckpoint => Ok(0),
            Err(e) => Err(e),
        })
        .py_err(py)
    }

    /// `length` bytes at `offset` of a part in this node's cache: this rank's own part (`own`), or the
    /// copy this node keeps of rank `rank`'s part.
    fn read_part_copy<'py>(
        &self,
        py: Python<'py>,
        own: bool,
        generation: u64,
        rank: u32,
        offset: u64,
        length: usize,
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let cp = self.get(py)?;
        let copy = if own { ckpt_core::PartCopy::Own } else { ckpt_core::PartCopy::Partner };
        let mut buf = vec![0u8; length];
        py.detach(|| cp.store().read_cached_part(copy, generation, rank, offset, &mut buf)).py_err(py)?;
        Ok(pyo3::types::PyBytes::new(py, &buf))
    }

    /// Starts receiving a part from another node into this node's cache: as this rank's own part (`own`,
    /// restoring it), or as the copy it keeps of rank `rank`'s part.
    fn receive_part_copy(
        &self,
        py: Python<'_>,
        own: bool,
        generation: u64,
        rank: u32,
    ) -> PyResult<crate::partner::PyPartReceiver> {
        let cp = self.get(py)?;
        let copy = if own { ckpt_core::PartCopy::Own } else { ckpt_core::PartCopy::Partner };
        let receiver = py.detach(|| cp.store().receive_part(copy, generation, rank)).py_err(py)?;
        Ok(crate::partner::PyPartReceiver { store: cp, receiver: std::sync::Mutex::new(Some(receiver)) })
    }

    /// The ranks whose parts of `generation` this node's cache keeps copies of.
    fn partner_copies_held(&self, py: Python<'_>, generation: u64) -> PyResult<Vec<u32>> {
        let cp = self.get(py)?;
        py.detach(|| cp.store().partner_copies_held(generation)).py_err(py)
    }

    /// The step and every part's identity of the step of `generation`, from its manifest (this node's
    /// cache first, then the checkpoint directory; verified).
    fn step_identities(&self, py: Python<'_>, generation: u64) -> PyResult<(i64, Vec<PartTuple>)> {
        let cp = self.get(py)?;
        let (step, parts) = py.detach(|| cp.store().step_identities(generation)).py_err(py)?;
        Ok((step.cast_signed(), parts.iter().map(tuple_of).collect()))
    }

    /// Multi-rank best-metric retention, on rank 0 after the step of `generation` (with `metrics`) was
    /// committed: removes the manifests of the steps the policy does not keep; returns their generations
    /// (every rank then removes its parts of them with `remove_parts`) and warnings. Without a policy:
    /// nothing.
    #[pyo3(signature = (generation, metrics=None))]
    fn best_retire(&self, py: Python<'_>, generation: u64, metrics: Option<&str>) -> PyResult<(Vec<u64>, Vec<String>)> {
        let cp = self.get(py)?;
        let Some(policy) = self.best.as_deref() else { return Ok((Vec::new(), Vec::new())) };
        policy.note(generation, metrics);
        let (removed, warnings) = py.detach(|| policy.retire(&cp, generation));
        if !warnings.is_empty() {
            cp.log_event("warning", json!({"message": "best-metric retention", "warnings": warnings}));
        }
        Ok((removed, warnings))
    }

    /// Removes this rank's parts of `generations` (multi-rank best-metric retention, after rank 0 removed
    /// their manifests); `dirs`: the emptied generation directories too (rank 0, after every rank's
    /// removal). Returns warnings.
    #[pyo3(signature = (generations, dirs=false))]
    fn remove_parts(&self, py: Python<'_>, generations: Vec<u64>, dirs: bool) -> PyResult<Vec<String>> {
        let cp = self.get(py)?;
        let warnings = py.detach(|| crate::retention::remove_parts(&cp, &generations, dirs));
        if !warnings.is_empty() {
            cp.log_event("warning", json!({"message": "best-metric retention", "warnings": warnings}));
        }
        Ok(warnings)
    }

    /// Whether best-metric retention is on.
    #[getter]
    fn keeps_best(&self) -> bool {
        self.best.is_some()
    }

    /// Tells this rank whether the step of its last part was committed (as agreed by all ranks):
    /// committed arms the exit a SIGTERM asked for and removes this rank's parts the step retired; not
    /// committed makes what triggered the part due again.
    fn finish_step(&self, py: Python<'_>, committed: bool) -> PyResult<()> {
        let cp = self.get(py)?;
        py.detach(|| cp.finish_step(committed));
        Ok(())
    }

    /// Whether an exit was asked for and its checkpoint is due or being written (see the core's
    /// `Checkpointer::exit_pending`).
    fn exit_pending(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.get(py)?.exit_pending())
    }

    /// Frees the staging buffer kept for background saves.
    fn release_staging(&self) {
        self.staging.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Restart discovery: `(found, notices)`, where `found` is `None` or `(stream, buffers, info)` of the
    /// newest valid checkpoint of this run, and `notices` what discovery told stderr (a checkpoint taken
    /// from another job, candidates skipped and why). `writable`: copy-on-write views (else read-only);
    /// `max_generation`: only generations up to it.
    #[pyo3(signature = (*, mmap=None, writable=true, max_generation=None))]
    fn restore<'py>(
        &self,
        py: Python<'py>,
        mmap: Option<bool>,
        writable: bool,
        max_generation: Option<u64>,
    ) -> PyResult<(Option<Bound<'py, PyTuple>>, Vec<String>)> {
        let cp = self.get(py)?;
        let (restored, notices) = py.detach(|| restore_logged(&cp, max_generation));
        let Some(mut restored) = restored.py_err(py)? else { return Ok((None, notices)) };
        if let Some(m) = mmap
            && m != restored.checkpoint.is_mapped()
        {
            let path = restored.checkpoint.path().to_path_buf();
            let reopened = py
                .detach(|| Checkpoint::open_with(&ckpt_core::storage::FileStorage, &path, LoadOptions::new().mmap(m)))
                .py_err(py)?;
            // The file discovery verified and judged, not one renamed over it since.
            let same = |c: &Checkpoint| c.owner().map(|o| (o.dev, o.ino));
            if same(&reopened) != same(&restored.checkpoint) {
                return Err(to_py(
                    py,
                    &Error::new(
                        ErrorKind::Untrusted,
                        "refusing to load it: it was replaced while it was being restored",
                    )
                    .with_path(&path),
                ));
            }
            restored.checkpoint = reopened;
        }
        restored_info(py, &restored, &notices, writable).map(|t| (Some(t), notices))
    }

    /// Restart on another number of ranks: the newest committed multi-rank step of this run whatever
    /// number of ranks wrote it (every part verified), selected for `load_part`: `(nranks, step,
    /// generation, manifest path)`, or `None` when there is none.
    fn open_step(&self, py: Python<'_>) -> PyResult<Option<(u32, i64, u64, PathBuf)>> {
        let cp = self.get(py)?;
        let Some(step) = py.detach(|| cp.store().restore_step()).py_err(py)? else { return Ok(None) };
        let found =
            (step.nranks(), step.app_step().cast_signed(), step.generation(), step.manifest().path().to_path_buf());
        *self.step.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(step);
        Ok(Some(found))
    }

    /// Old rank `rank`'s part of the step `open_step` chose: `(stream, buffers, info)` as `restore` gives.
    #[pyo3(signature = (rank, *, writable=true))]
    fn load_part<'py>(&self, py: Python<'py>, rank: u32, writable: bool) -> PyResult<Bound<'py, PyTuple>> {
        let guard = self.step.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(step) = guard.as_ref() else {
            return Err(to_py(py, &Error::new(ErrorKind::InvalidState, "no step is open: call open_step() first")));
        };
        let part = py.detach(|| step.part(rank)).py_err(py)?;
        let (stream, bufs) = buffers::read_sections(py, &part, true, writable)?;
        let info = buffers::header_info(py, &part)?;
        info.set_item("path", step.manifest().path())?;
        PyTuple::new(py, [stream, bufs.into_any(), info.into_any()])
    }

    /// Releases the signal handlers, stops the watcher thread, removes the control socket. Idempotent.
    fn close(&self, py: Python<'_>) {
        let taken = self.cp.write().unwrap_or_else(|p| p.into_inner()).take();
        if taken.is_some() {
            py.detach(move || drop(taken));
            signals::after_close(&self.before);
        }
    }

    /// In the child of a fork: puts back the signal dispositions from before this checkpointer was created
    /// (the child has no checkpointer; the flag-only handlers would make it ignore SIGTERM).
    fn reset_signals_in_child(&self) {
        signals::reset_in_child(&self.before);
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.cp.read().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// The checkpoint's stable path, `<checkpoint_dir>/<job_id>.ckpt`.
    #[getter]
    fn path(&self) -> PathBuf {
        self.config.checkpoint_path()
    }

    /// Where checkpoints are written.
    #[getter]
    fn checkpoint_dir(&self) -> PathBuf {
        self.config.checkpoint_dir.clone()
    }

    /// Where restart discovery looks.
    #[getter]
    fn restart_dir(&self) -> PathBuf {
        self.config.restart_dir.clone()
    }

    /// The application name.
    #[getter]
    fn name(&self) -> &str {
        &self.config.app_name
    }

    /// Generations kept.
    #[getter]
    fn keep(&self) -> usize {
        self.config.keep
    }

    /// The interval in seconds, `"auto"`, or `None`.
    #[getter]
    fn interval<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.config.interval {
            None => py.None().into_bound(py),
            Some(Interval::Auto) => "auto".into_pyobject(py)?.into_any(),
            Some(Interval::Every(d)) => d.as_secs_f64().into_pyobject(py)?.into_any(),
            Some(other) => format!("{other:?}").into_pyobject(py)?.into_any(),
        })
    }

    /// `(signal number, exits)` for each signal that requests a checkpoint.
    #[getter]
    fn signals(&self) -> Vec<(i32, bool)> {
        self.config.signals.iter().map(|s| (s.signal, s.exit)).collect()
    }

    /// This process's rank and the number of ranks.
    #[getter]
    fn rank(&self) -> (u32, u32) {
        (self.config.rank, self.config.nranks)
    }

    /// The control socket (for `ckpt create`), if any.
    #[getter]
    fn socket_path(&self, py: Python<'_>) -> PyResult<Option<PathBuf>> {
        Ok(self.get(py)?.socket_path().map(|p| p.to_path_buf()))
    }

    /// Writes one event to the checkpointer's JSON log (`fields` is a JSON object's text).
    #[pyo3(signature = (event, fields="{}"))]
    fn log_event(&self, py: Python<'_>, event: &str, fields: &str) -> PyResult<()> {
        let value: serde_json::Value = serde_json::from_str(fields)
            .map_err(|e| to_py(py, &Error::invalid(format!("log fields are not JSON: {e}"))))?;
        self.get(py)?.log_event(event, value);
        Ok(())
    }

    /// Marks a generation of this checkpoint name damaged (restart could not unpickle it): it no longer
    /// counts toward `keep`, and the next durable save renames it aside (`<name>.<N>.damaged`).
    fn mark_damaged(&self, py: Python<'_>, generation: u64) -> PyResult<()> {
        self.get(py)?.store().mark_damaged(generation);
        Ok(())
    }
}

impl Drop for PyCheckpointer {
    fn drop(&mut self) {
        let taken = self.cp.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if taken.is_some() {
            drop(taken);
            signals::after_close(&self.before);
        }
    }
}
