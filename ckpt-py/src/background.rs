//! Saves written in the background: `ckpt.Checkpointer.save(obj, blocking=False)`.
//!
//! The call captures the state: the pickle stream and every out-of-band buffer are copied, at memory
//! speed (two threads), into one staging buffer that the checkpointer keeps for the next background save
//! (so from the second save on the copy touches no new pages), and the checkpoint is begun (what made it
//! due is taken, as a blocking save takes it). A thread then writes the sections from the staging buffer
//! and commits, with no GIL and no reference to Python objects: later changes of the arrays and
//! containers cannot reach the file. [`PySaveHandle`] reports the outcome.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ckpt_core::{CommitInfo, Error};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::buffers::Views;
use crate::commit_info;
use crate::errors::to_py;

/// Buffers start on this boundary in the staging buffer (numpy's and the file's alignment needs none, but
/// aligned copies are faster).
const ALIGN: usize = 64;

/// The staging buffer of a checkpointer, reused by its next background save once the previous one is done.
pub type StagingPool = Arc<Mutex<Option<Vec<u8>>>>;

/// A copy of one save's bytes: the stream and the buffers, at `ranges` of `bytes`.
pub struct Captured {
    bytes: Vec<u8>,
    stream: Range<usize>,
    buffers: Vec<(Range<usize>, usize)>,
    pool: StagingPool,
}

impl Captured {
    /// Copies `views` into the pool's buffer (grown, or a new one, as needed). No GIL needed.
    pub fn new(views: &Views<'_>, pool: &StagingPool) -> Captured {
        let (stream, buffers) = views.parts();
        let mut at = 0usize;
        let mut place = |len: usize| {
            let r = at..at + len;
            at = (at + len).div_ceil(ALIGN) * ALIGN;
            r
        };
        let stream_range = place(stream.len());
        let ranges: Vec<(Range<usize>, usize)> = buffers.iter().map(|(b, size)| (place(b.len()), *size)).collect();
        let total = at;
        let mut bytes = pool.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        if bytes.len() < total {
            // A fresh allocation (calloc: pages come on first touch, during the copy below).
            bytes = vec![0; total];
        }
        let mut jobs: Vec<(&[u8], Range<usize>)> = vec![(stream, stream_range.clone())];
        jobs.extend(buffers.iter().zip(&ranges).map(|((b, _), (r, _))| (*b, r.clone())));
        copy_parallel(&mut bytes, &jobs);
        Captured { bytes, stream: stream_range, buffers: ranges, pool: pool.clone() }
    }

    /// The captured bytes as a save writes them.
    pub fn views(&self) -> Views<'_> {
        Views::from_parts(
            &self.bytes[self.stream.clone()],
            self.buffers.iter().map(|(r, size)| (&self.bytes[r.clone()], *size)).collect(),
        )
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        // Back to the pool for the next background save (the larger one wins).
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.as_ref().is_none_or(|b| b.len() < self.bytes.len()) {
            *pool = Some(std::mem::take(&mut self.bytes));
        }
    }
}

/// Copies each `(source, range)` into `dst[range]`, split in chunks over two threads for large totals.
fn copy_parallel(dst: &mut [u8], jobs: &[(&[u8], Range<usize>)]) {
    const CHUNK: usize = 8 << 20;
    let total: usize = jobs.iter().map(|(s, _)| s.len()).sum();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4);
    if total < 4 * CHUNK || threads < 2 {
        for (src, r) in jobs {
            dst[r.clone()].copy_from_slice(src);
        }
        return;
    }
    // Split the destination into disjoint chunks, each with its source slice, and deal them out.
    let mut pieces: Vec<(&[u8], &mut [u8])> = Vec::new();
    let mut rest: &mut [u8] = dst;
    let mut consumed = 0usize;
    let mut sorted: Vec<&(&[u8], Range<usize>)> = jobs.iter().collect();
    sorted.sort_by_key(|(_, r)| r.start);
    for (src, r) in sorted {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - consumed);
        let (mut target, tail) = tail.split_at_mut(r.len());
        rest = tail;
        consumed = r.end;
        let mut s: &[u8] = src;
        while !s.is_empty() {
            let n = s.len().min(CHUNK);
            let (a, b) = s.split_at(n);
            let (t, u) = std::mem::take(&mut target).split_at_mut(n);
            pieces.push((a, t));
            s = b;
            target = u;
        }
    }
    let per = pieces.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut iter = pieces.into_iter();
        loop {
            let batch: Vec<(&[u8], &mut [u8])> = iter.by_ref().take(per).collect();
            if batch.is_empty() {
                break;
            }
            scope.spawn(move || {
                for (s, d) in batch {
                    d.copy_from_slice(s);
                }
            });
        }
    });
}

/// The outcome of a background save, shared by its thread and its handle.
#[derive(Default)]
pub struct Outcome {
    result: Mutex<Option<Result<CommitInfo, Error>>>,
    done: Condvar,
}

impl Outcome {
    /// Records the result (from the writing thread) and wakes the waiters.
    pub fn finish(&self, r: Result<CommitInfo, Error>) {
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        self.done.notify_all();
    }

    fn is_done(&self) -> bool {
        self.result.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Waits until done or `timeout`; whether it is done.
    fn wait(&self, timeout: Option<Duration>) -> bool {
        let guard = self.result.lock().unwrap_or_else(|p| p.into_inner());
        match timeout {
            None => self.done.wait_while(guard, |r| r.is_none()).unwrap_or_else(|p| p.into_inner()).is_some(),
            Some(t) => {
                self.done.wait_timeout_while(guard, t, |r| r.is_none()).unwrap_or_else(|p| p.into_inner()).0.is_some()
            }
        }
    }
}

/// The handle of a background save (see the module documentation).
#[pyclass(module = "ckpt._ckpt", name = "SaveHandle", frozen)]
pub struct PySaveHandle {
    pub(crate) outcome: Arc<Outcome>,
    pub(crate) step: i64,
}

#[pymethods]
impl PySaveHandle {
    /// Whether the save is finished (committed durably, or failed).
    fn done(&self) -> bool {
        self.outcome.is_done()
    }

    /// Waits (without the GIL) until the save is finished or `timeout` seconds passed; returns whether it
    /// is finished.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> bool {
        let t = timeout.map(|s| Duration::from_secs_f64(s.max(0.0)));
        let outcome = self.outcome.clone();
        py.detach(move || outcome.wait(t))
    }

    /// The commit's figures once finished (`None` before); raises the save's error if it failed.
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let guard = self.outcome.result.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            None => Ok(None),
            Some(Ok(info)) => commit_info(py, info).map(Some),
            Some(Err(e)) => Err(to_py(py, e)),
        }
    }

    /// The step being saved.
    #[getter]
    fn step(&self) -> i64 {
        self.step
    }
}
