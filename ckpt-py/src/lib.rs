//! `ckpt._ckpt`, the native module of the `ckpt` Python package.
//!
//! The package (`ckpt-py/python/ckpt`) is pure Python on top of this module: it pickles objects with
//! protocol 5 and hands the pickle stream and the out-of-band buffers (numpy arrays, large bytes...) to
//! the functions here, which write them through `ckpt-core` (atomic, durable, checksummed, one raw
//! 4 KiB-aligned section per buffer, written straight from the buffer's memory), and read them back as
//! zero-copy views of the memory-mapped file. The GIL is released during all I/O, hashing and
//! compression. Errors become `ckpt.CheckpointError` subclasses, or `OSError` subclasses for I/O.
//!
//! Nothing here is public API: use the `ckpt` package.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ckpt_core::storage::FileStorage;
use ckpt_core::{Checkpoint, CommitInfo, Config, Error, LoadOptions, Restored, Store, begin_file};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

mod background;
mod buffers;
mod checkpointer;
mod config;
mod errors;
mod inband;
mod partner;
mod retention;
mod signals;
mod whole;

use buffers::{Inputs, MappedBuffer, PersistentIds};
use checkpointer::{IntervalArg, PyCheckpointer, build_config};
use config::config_from_env;
use errors::IntoPyResult;

/// A dict of a commit's figures.
pub(crate) fn commit_info<'py>(py: Python<'py>, info: &CommitInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("path", &info.path)?;
    d.set_item("generation_path", &info.generation_path)?;
    d.set_item("generation", info.generation)?;
    d.set_item("step", info.app_step)?; // 0..=MAX_STEP: this version wrote it
    d.set_item("file_bytes", info.stats.file_bytes)?;
    d.set_item("raw_bytes", info.stats.raw_bytes)?;
    d.set_item("sections", info.stats.sections)?;
    d.set_item("seconds", info.seconds)?;
    d.set_item("warnings", &info.warnings)?;
    d.set_item("reused_spare", info.reused_spare)?;
    Ok(d)
}

/// `(stream, buffers, info)` of a checkpoint chosen by restart discovery; `notices` are what discovery
/// told stderr (a checkpoint taken from another job, candidates skipped and why). `writable` as for
/// [`buffers::read_sections`].
pub(crate) fn restored_info<'py>(
    py: Python<'py>,
    r: &Restored,
    notices: &[String],
    writable: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let (stream, bufs) = buffers::read_sections(py, &r.checkpoint, true, writable)?;
    let info = buffers::header_info(py, &r.checkpoint)?;
    info.set_item("path", &r.chosen_path)?;
    info.set_item("generation", r.generation)?;
    info.set_item("step", r.app_step.cast_signed())?; // a negative step of a signed-step file as written
    info.set_item("other_job", &r.other_job)?;
    let rejected: Vec<(String, String)> =
        r.rejected.iter().map(|(p, e)| (p.to_string_lossy().into_owned(), e.to_string())).collect();
    info.set_item("rejected", rejected)?;
    info.set_item("notices", notices)?;
    info.set_item("nranks", r.checkpoint.header().nranks)?;
    PyTuple::new(py, [stream, bufs.into_any(), info.into_any()])
}

/// Saves to exactly `path`, atomically and durably (temporary file in the same directory, fsync, rename,
/// fsync of the directory); no generations.
#[pyfunction]
#[pyo3(signature = (path, stream, buffers, *, step, compress=None, item_sizes=None, metrics=None))]
#[allow(clippy::too_many_arguments)]
fn save_file<'py>(
    py: Python<'py>,
    path: PathBuf,
    stream: &Bound<'py, PyAny>,
    buffers: &Bound<'py, PyList>,
    step: i64,
    compress: Option<&str>,
    item_sizes: Option<Vec<usize>>,
    metrics: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let config = config_from_env(py, None).py_err(py)?;
    let compression = buffers::compression(py, compress, config.compression)?;
    save_detached(py, stream, buffers, item_sizes, |views| {
        let mut w = begin_file(&path, step, &config, Arc::new(FileStorage))?;
        buffers::write_sections(&mut w, views, compression, metrics)?;
        w.commit()
    })
}

/// Exports the pickle stream and buffers, releases the GIL and runs `save` on their views; returns the
/// commit's figures. The one place the three save paths share.
pub(crate) fn save_detached<'py>(
    py: Python<'py>,
    stream: &Bound<'py, PyAny>,
    buffers: &Bound<'py, PyList>,
    item_sizes: Option<Vec<usize>>,
    save: impl FnOnce(&buffers::Views<'_>) -> Result<CommitInfo, Error> + Send,
) -> PyResult<Bound<'py, PyDict>> {
    let inputs = Inputs::new(stream, buffers, item_sizes)?;
    let result = py.detach(|| save(&inputs.views()));
    drop(inputs);
    commit_info(py, &result.py_err(py)?)
}

/// Saves as the configured checkpoint (`<checkpoint_dir>/<job_id>.ckpt`, generations, retention).
#[pyfunction]
#[pyo3(signature = (stream, buffers, *, step, compress=None, item_sizes=None, metrics=None))]
fn save_store<'py>(
    py: Python<'py>,
    stream: &Bound<'py, PyAny>,
    buffers: &Bound<'py, PyList>,
    step: i64,
    compress: Option<&str>,
    item_sizes: Option<Vec<usize>>,
    metrics: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let config = config_from_env(py, None).py_err(py)?;
    let compression = buffers::compression(py, compress, config.compression)?;
    let store = store_for(config);
    save_detached(py, stream, buffers, item_sizes, |views| {
        store.checkpoint(step, |w| buffers::write_sections(w, views, compression, metrics))
    })
}

/// The process's store for `config`, made once: a store keeps what one save learns for the next (the
/// directory's listing, the measured write speed `auto` compression relies on, the spare, generations
/// restart found damaged), so the module-level save and load share one per configuration.
fn store_for(config: Config) -> Arc<Store> {
    /// Configurations a process uses are few (one name, maybe a directory or two); this bounds the rest.
    const MAX_STORES: usize = 8;
    static STORES: Mutex<Vec<Arc<Store>>> = Mutex::new(Vec::new());
    let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = stores.iter().position(|s| *s.config() == config) {
        let store = stores.remove(i);
        stores.push(store.clone());
        return store;
    }
    if stores.len() >= MAX_STORES {
        stores.remove(0);
    }
    let store = Arc::new(Store::new(config));
    stores.push(store.clone());
    store
}

/// Reads the Python checkpoint at `path`: `(stream, buffers, info)`. `verify=False` hands out memory-mapped
/// sections without checking their CRC; `writable` chooses copy-on-write or read-only views (see
/// `buffers::read_sections`).
#[pyfunction]
#[pyo3(signature = (path, *, mmap=None, verify=true, writable=true))]
fn load_file<'py>(
    py: Python<'py>,
    path: PathBuf,
    mmap: Option<bool>,
    verify: bool,
    writable: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let opts = match mmap {
        Some(m) => LoadOptions::new().mmap(m),
        None => LoadOptions::from_env().py_err(py)?,
    };
    if !opts.mmap {
        // One read of the whole file into private memory, verified there; the sections are views of it.
        let (cp, owned) = py.detach(|| whole::open(&path)).py_err(py)?;
        let (stream, bufs) = buffers::read_sections_in(py, &cp, true, writable, owned)?;
        let info = buffers::header_info(py, &cp)?;
        info.set_item("path", &path)?;
        info.set_item("mapped", false)?;
        return PyTuple::new(py, [stream, bufs.into_any(), info.into_any()]);
    }
    let cp = py.detach(|| Checkpoint::open_with(&FileStorage, &path, opts)).py_err(py)?;
    let (stream, bufs) = buffers::read_sections(py, &cp, verify, writable)?;
    let info = buffers::header_info(py, &cp)?;
    info.set_item("path", &path)?;
    PyTuple::new(py, [stream, bufs.into_any(), info.into_any()])
}

/// Checks every byte of the checkpoint at `path` (the CRC of every section, the padding).
#[pyfunction]
fn verify_file(py: Python<'_>, path: PathBuf) -> PyResult<()> {
    let opts = LoadOptions::from_env().py_err(py)?;
    py.detach(|| Checkpoint::open_with(&FileStorage, &path, opts)?.verify()).py_err(py)
}

/// Waits until the files earlier saves replaced or pruned are freed (large ones are freed on a thread after
/// the save returns). For measurements; a save never needs it.
#[pyfunction]
fn wait_for_background_frees(py: Python<'_>) {
    py.detach(ckpt_core::storage::wait_for_background_frees);
}

/// Restart discovery with the configuration from the environment: `None` or `(stream, buffers, info)`.
/// `max_generation`: only generations up to it (the fallback after a newer one could not be unpickled).
#[pyfunction]
#[pyo3(signature = (*, mmap=None, writable=true, max_generation=None))]
fn load_store<'py>(
    py: Python<'py>,
    mmap: Option<bool>,
    writable: bool,
    max_generation: Option<u64>,
) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let mut config = config_from_env(py, None).py_err(py)?;
    if let Some(m) = mmap {
        config.mmap = m;
    }
    let store = store_for(config);
    let restored = py
        .detach(|| match max_generation {
            None => store.restore(),
            Some(g) => store.restore_at_most(g),
        })
        .py_err(py)?;
    let notices = store.take_restore_notices();
    restored.map(|r| restored_info(py, &r, &notices, writable)).transpose()
}

/// Why nobody should unpickle the file at `path` whose `stat` says `uid` and `mode` (empty when it may be
/// unpickled): the core's trust rules (`ckpt_core::trust`), the one policy of every face.
#[pyfunction]
fn trust_problems(path: PathBuf, uid: u32, mode: u32) -> Vec<String> {
    ckpt_core::trust::problems(&path, &ckpt_core::storage::FileOwner { uid, mode, dev: 0, ino: 0 })
}

/// The effective configuration (from the environment and the arguments) as a dict, for diagnostics.
#[pyfunction]
#[pyo3(signature = (name=None, directory=None, interval=None, keep=None, signals=None))]
fn effective_config<'py>(
    py: Python<'py>,
    name: Option<&str>,
    directory: Option<PathBuf>,
    interval: Option<IntervalArg>,
    keep: Option<usize>,
    signals: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let c = build_config(py, name, directory, interval, keep, signals).py_err(py)?;
    let d = PyDict::new(py);
    d.set_item("name", &c.app_name)?;
    d.set_item("job_id", &c.job_id)?;
    d.set_item("step_id", c.step_id)?;
    d.set_item("rank", c.rank)?;
    d.set_item("nranks", c.nranks)?;
    d.set_item("path", c.checkpoint_path())?;
    d.set_item("checkpoint_dir", &c.checkpoint_dir)?;
    d.set_item("restart_dir", &c.restart_dir)?;
    d.set_item("keep", c.keep)?;
    d.set_item("mmap", c.mmap)?;
    d.set_item("file_mode", format!("{:04o}", c.file_mode))?;
    d.set_item("compression", format!("{:?}", c.compression))?;
    d.set_item(
        "interval",
        match c.interval {
            None => None,
            Some(ckpt_core::Interval::Auto) => Some("auto".to_string()),
            Some(ckpt_core::Interval::Every(t)) => Some(format!("{}", t.as_secs_f64())),
            Some(other) => Some(format!("{other:?}")),
        },
    )?;
    let sigs: Vec<String> = c.signals.iter().map(|s| ckpt_core::triggers::signal_label(s.signal)).collect();
    d.set_item("signals", sigs)?;
    d.set_item("end_time", c.end_time)?;
    d.set_item("restart_count", c.restart_count)?;
    d.set_item("allow_fresh_start", c.allow_fresh_start)?;
    Ok(d)
}

/// `(signal number, exits)` for a signal list (`None`: `CKPT_SIGNALS` or the default TERM, USR1).
#[pyfunction]
#[pyo3(signature = (signals=None))]
fn signal_specs(py: Python<'_>, signals: Option<&str>) -> PyResult<Vec<(i32, bool)>> {
    let cfg = build_config(py, None, None, None, None, signals).py_err(py)?;
    Ok(cfg.signals.iter().map(|s| (s.signal, s.exit)).collect())
}

/// Whether the core's C-level handler is the one installed for `signal` now.
#[pyfunction]
fn signal_hook_installed(signal: i32) -> bool {
    signals::hook_installed(signal)
}

/// Re-installs the core's C-level handlers replaced by someone else; returns the signals re-installed.
#[pyfunction]
fn reinstall_signal_hooks(signals: Vec<i32>) -> Vec<i32> {
    signals::reinstall(&signals)
}

/// Installs a do-nothing handler for `signal` (a SIGTERM after a handled one, once the checkpointer is
/// closed); returns whether it was installed.
#[pyfunction]
fn absorb_signal(signal: i32) -> bool {
    signals::absorb(signal)
}

/// What restart discovery sees in the restart directory for the checkpoint name of `name`/`directory`
/// (every candidate verified): a list of dicts (path, generation, step, job id, rank, metrics, creation
/// time, whether it is valid or the error, whether restart would choose it).
#[pyfunction]
#[pyo3(signature = (name=None, directory=None))]
fn list_checkpoints<'py>(
    py: Python<'py>,
    name: Option<&str>,
    directory: Option<PathBuf>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let config = build_config(py, name, directory, None, None, Some("")).py_err(py)?;
    let store = Store::new(config);
    let found = py
        .detach(|| -> Result<_, Error> {
            let d = store.discover_all()?;
            let headers: Vec<Option<(u32, u32, Option<String>)>> = d
                .candidates
                .iter()
                .map(|c| {
                    let cp = Checkpoint::open_with(&FileStorage, &c.path, LoadOptions::new().mmap(false)).ok()?;
                    let h = cp.header();
                    let metrics = cp.metadata(buffers::METRICS_KEY).map(|m| String::from_utf8_lossy(m).into_owned());
                    Some((h.rank, h.nranks, metrics))
                })
                .collect();
            Ok((d, headers))
        })
        .py_err(py)?;
    let (d, headers) = found;
    let mut out = Vec::with_capacity(d.candidates.len());
    for (i, (c, h)) in d.candidates.iter().zip(headers).enumerate() {
        let row = PyDict::new(py);
        row.set_item("path", &c.path)?;
        row.set_item("generation", c.generation)?;
        row.set_item("step", c.app_step.map(u64::cast_signed))?;
        row.set_item("job_id", &c.job_id)?;
        row.set_item("created_unix_ns", c.created_unix_ns)?;
        row.set_item("current_name", c.is_current_name)?;
        row.set_item("own_job", c.own_job)?;
        row.set_item("chosen", d.chosen == Some(i))?;
        let (rank, nranks, metrics) = h.map_or((None, None, None), |(r, n, m)| (Some(r), Some(n), m));
        row.set_item("rank", rank)?;
        row.set_item("nranks", nranks)?;
        row.set_item("metrics", metrics)?;
        let (status, error) = match &c.status {
            ckpt_core::CandidateStatus::Valid => ("valid", None),
            ckpt_core::CandidateStatus::Invalid(e) => ("invalid", Some(e.to_string())),
            ckpt_core::CandidateStatus::NotChecked => ("not checked", None),
            _ => ("unknown", None),
        };
        row.set_item("status", status)?;
        row.set_item("error", error)?;
        out.push(row);
    }
    Ok(out)
}

/// Runs the `ckpt` command line `args` (program name first) with the Rust CLI's own code and returns its
/// exit status: `ckpt` and `python -m ckpt` of the wheel (see `ckpt/__main__.py`).
#[pyfunction]
fn cli_main(py: Python<'_>, args: Vec<std::ffi::OsString>) -> u8 {
    let code = py.detach(|| ckpt_cli::run(args));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    code
}

/// The native module.
#[pymodule]
fn _ckpt(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CORE_VERSION", ckpt_core::VERSION)?;
    m.add("PICKLE_SECTION", buffers::PICKLE_SECTION)?;
    m.add_class::<MappedBuffer>()?;
    m.add_class::<PersistentIds>()?;
    m.add_class::<PyCheckpointer>()?;
    m.add_class::<partner::PyPartReceiver>()?;
    m.add_class::<background::PySaveHandle>()?;
    m.add_function(wrap_pyfunction!(save_file, m)?)?;
    m.add_function(wrap_pyfunction!(save_store, m)?)?;
    m.add_function(wrap_pyfunction!(load_file, m)?)?;
    m.add_function(wrap_pyfunction!(load_store, m)?)?;
    m.add_function(wrap_pyfunction!(verify_file, m)?)?;
    m.add_function(wrap_pyfunction!(list_checkpoints, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(trust_problems, m)?)?;
    m.add_function(wrap_pyfunction!(wait_for_background_frees, m)?)?;
    m.add_function(wrap_pyfunction!(effective_config, m)?)?;
    m.add_function(wrap_pyfunction!(signal_specs, m)?)?;
    m.add_function(wrap_pyfunction!(signal_hook_installed, m)?)?;
    m.add_function(wrap_pyfunction!(reinstall_signal_hooks, m)?)?;
    m.add_function(wrap_pyfunction!(absorb_signal, m)?)?;
    Ok(())
}
