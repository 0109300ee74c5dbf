//! Asynchronous checkpoints: begun at the call (what made the checkpoint due is taken then), written and
//! committed on a background thread while the program computes on, then waited for. At most one is in
//! flight: the next call waits for the previous one first, and a failure of the previous one is returned
//! there (or by [`Checkpointer::checkpoint_wait`]).
//!
//! The state a background checkpoint saves is what its closure owns, captured at the call: the closure
//! is `'static`, so the program cannot change it afterwards (the C ABI copies the protected regions into
//! such a staging area before it returns). With a cache level, waiting also waits for the copy to the
//! checkpoint directory: a waited-for checkpoint is durable there.

use std::fmt::Display;
use std::thread::JoinHandle;

use crate::checkpointer::Checkpointer;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{CheckpointWriter, CommitInfo};

/// A checkpoint written on a background thread.
pub(crate) struct InFlight {
    thread: JoinHandle<Result<CommitInfo>>,
    /// The process that started it (a forked child has no such thread).
    owner: u32,
    /// A rank's part (the step is committed by the caller, the MPI helpers, after the wait).
    part: bool,
}

impl Checkpointer {
    /// Starts a checkpoint of step `app_step` that `write` writes on a background thread, and returns as
    /// soon as it is begun: what made it due is taken now ([`Checkpointer::should_checkpoint`] turns false),
    /// and [`Checkpointer::checkpoint_wait`] waits for it. `write` owns what it saves (it is `'static`), so
    /// the checkpoint holds exactly the state at the call whatever the program does next: move or copy
    /// the state into it.
    ///
    /// A checkpoint still in flight is waited for first; if it failed, its error is returned and this one
    /// is not started (what made it due stays due). One process only: several ranks use
    /// [`Checkpointer::checkpoint_part_async`] and commit the step after the wait, as the MPI helpers do.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let config = ckpt_core::Config::new("doc", dir.path())?;
    /// let cp = ckpt_core::Checkpointer::new(ckpt_core::Store::new(config))?;
    /// let mut field = vec![1.0f64; 1 << 16];
    /// let snapshot = field.clone(); // the state at the call
    /// cp.checkpoint_async(1u64, move |w| w.add_slice("field", &snapshot))?;
    /// field.iter_mut().for_each(|x| *x *= 2.0); // computing on meanwhile
    /// let info = cp.checkpoint_wait()?.expect("one was in flight");
    /// assert_eq!(info.app_step, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The previous background checkpoint's error; as [`Checkpointer::begin`] (nothing started);
    /// [`ErrorKind::InvalidArgument`] with several ranks; [`ErrorKind::Io`] when the thread cannot start
    /// (the checkpoint is abandoned, its trigger due again).
    pub fn checkpoint_async<F>(&self, app_step: impl TryInto<u64> + Copy + Display, write: F) -> Result<()>
    where
        F: FnOnce(&mut CheckpointWriter) -> Result<()> + Send + 'static,
    {
        if self.store().config().nranks > 1 {
            return Err(Error::invalid(
                "checkpoint_async writes a whole checkpoint of one process: with several ranks use \
                 checkpoint_part_async and commit the step after checkpoint_wait (ckpt_mpi.h does)",
            ));
        }
        self.join_in_flight()?;
        let pending = self.begin(app_step)?;
        self.spawn(pending, write, false)
    }

    /// [`Checkpointer::checkpoint_async`] for this rank's part of multi-rank generation `generation`
    /// (agreed by all ranks). After [`Checkpointer::checkpoint_wait`] the step is committed as for
    /// [`Checkpointer::checkpoint_part`] (rank 0, once every part is durable) and concluded with
    /// [`Checkpointer::finish_step`].
    ///
    /// # Errors
    ///
    /// As [`Checkpointer::checkpoint_async`].
    pub fn checkpoint_part_async<F>(
        &self,
        generation: u64,
        app_step: impl TryInto<u64> + Copy + Display,
        write: F,
    ) -> Result<()>
    where
        F: FnOnce(&mut CheckpointWriter) -> Result<()> + Send + 'static,
    {
        self.join_in_flight()?;
        let pending = self.begin_part(generation, app_step)?;
        self.spawn(pending, write, true)
    }

    /// Waits for the background checkpoint in flight: `Ok(None)` when there is none, else what its commit
    /// returned. With a cache level (`CKPT_CACHE_DIR`) a whole checkpoint is also waited for until its copy
    /// to the checkpoint directory is durable (see [`Checkpointer::wait_for_flush`]).
    ///
    /// # Errors
    ///
    /// The background checkpoint's error (what made it due is due again), or its copy's;
    /// [`ErrorKind::InvalidState`] when its thread panicked.
    pub fn checkpoint_wait(&self) -> Result<Option<CommitInfo>> {
        let Some(InFlight { thread, part, .. }) = self.take_in_flight() else { return Ok(None) };
        let info = join(thread)?;
        if part {
            self.step_continues_now();
        }
        let dir = info.generation_path.parent().unwrap_or(std::path::Path::new("."));
        if !part && self.store().level_of(dir) == crate::Level::Cache {
            self.wait_for_flush(None)?;
        }
        Ok(Some(info))
    }

    /// Whether a background checkpoint was started and not yet waited for.
    #[must_use]
    pub fn checkpoint_in_flight(&self) -> bool {
        self.lock_in_flight().is_some()
    }

    /// At most one in flight: waits for the previous one's write (not its copy to another level).
    fn join_in_flight(&self) -> Result<()> {
        match self.take_in_flight() {
            Some(InFlight { thread, .. }) => join(thread).map(drop),
            None => Ok(()),
        }
    }

    fn spawn<F>(&self, pending: crate::PendingCheckpoint, write: F, part: bool) -> Result<()>
    where
        F: FnOnce(&mut CheckpointWriter) -> Result<()> + Send + 'static,
    {
        // The guard travels to the thread; if the thread cannot start, dropping it abandons the checkpoint
        // (trigger due again).
        let thread = std::thread::Builder::new()
            .name("ckpt-async".into())
            .spawn(move || {
                let mut w = pending;
                if let Err(e) = write(&mut w) {
                    w.abort(&e);
                    return Err(e);
                }
                w.commit()
            })
            .map_err(|e| Error::io("start the ckpt-async thread", e))?;
        *self.lock_in_flight() = Some(InFlight { thread, owner: std::process::id(), part });
        Ok(())
    }

    fn take_in_flight(&self) -> Option<InFlight> {
        self.lock_in_flight().take()
    }

    /// Finishes a background checkpoint before the checkpointer goes (its error, if any, is in the log).
    pub(crate) fn finish_in_flight(&self) {
        match self.take_in_flight() {
            // A forked child: the thread is the parent's.
            Some(InFlight { thread, owner, .. }) if owner != std::process::id() => std::mem::forget(thread),
            Some(InFlight { thread, .. }) => drop(join(thread)),
            None => {}
        }
    }
}

fn join(thread: JoinHandle<Result<CommitInfo>>) -> Result<CommitInfo> {
    thread.join().unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::InvalidState,
            "the background checkpoint's thread panicked (the checkpoint was abandoned)",
        ))
    })
}
