//! Asynchronous checkpoints of the protected regions: `ckpt_checkpoint_async` copies them into a staging
//! area and returns; a background thread writes the checkpoint from the copy; `ckpt_checkpoint_wait`
//! waits until it is durable (with a cache level, in the checkpoint directory).

use ckpt_core::{CheckpointWriter, Compression, SectionOptions};

use crate::state::*;
use crate::status::*;

/// The protected regions and metadata as they were at the call.
struct Snapshot {
    metadata: Vec<(String, String)>,
    sections: Vec<(String, u32, Vec<u8>)>,
    compression: Compression,
}

/// Staging buffers of earlier asynchronous checkpoints, kept for the next one: writing into memory already
/// allocated and touched costs a copy, new memory also its page faults (BENCHMARKS.md: 0.25x against
/// 1.5x the synchronous save). Freed by `ckpt_finalize`.
pub(crate) type StagingPool = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

impl Snapshot {
    /// Copies every protected region (the staging area: as much memory as the regions, reused from one
    /// call to the next).
    fn take(s: &State) -> FfiResult<Snapshot> {
        let mut spare: Vec<Vec<u8>> = std::mem::take(&mut *lock(&s.staging));
        let mut sections = Vec::with_capacity(s.regions.len());
        for (key, r) in &s.regions {
            // The spare buffer closest above the size, else a new one.
            let best = spare
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= r.len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            let mut copy = best.map(|i| spare.swap_remove(i)).unwrap_or_default();
            copy.clear();
            copy.try_reserve_exact(r.len).map_err(|_| {
                FfiError::new(CKPT_ERR_TOO_LARGE, format!("cannot allocate {} bytes to stage {key}", r.len))
            })?;
            if r.len > 0 {
                // SAFETY: ckpt_protect checked ptr is non-NULL for len > 0; the caller guarantees the region
                // is valid and not modified concurrently during this call (documented contract).
                copy.extend_from_slice(unsafe { std::slice::from_raw_parts(r.ptr, r.len) });
            }
            sections.push((key.section(), key.tag(), copy));
        }
        Ok(Snapshot { metadata: s.metadata.clone(), sections, compression: s.checkpointer.config().compression })
    }

    /// Gives the staging buffers back for the next call (the sections are written: the writer keeps no
    /// reference to them).
    fn recycle(self, pool: &StagingPool) {
        lock(pool).extend(self.sections.into_iter().map(|(_, _, b)| b));
    }

    fn write(&self, w: &mut CheckpointWriter) -> ckpt_core::Result<()> {
        for (k, v) in &self.metadata {
            w.set_metadata(k, v)?;
        }
        for (name, tag, data) in &self.sections {
            w.add_section_with(name, data, SectionOptions::new().compression(self.compression).tag(*tag))?;
        }
        Ok(())
    }
}

/// What a background checkpoint writes: the regions as they are now (staged), whose buffers go back to the
/// pool once written.
fn staged_writer(s: &State) -> FfiResult<impl FnOnce(&mut CheckpointWriter) -> ckpt_core::Result<()> + Send + 'static> {
    let snapshot = Snapshot::take(s)?;
    let pool = s.staging.clone();
    Ok(move |w: &mut CheckpointWriter| {
        let written = snapshot.write(w);
        snapshot.recycle(&pool);
        written
    })
}

/// Starts a checkpoint of every protected region as application step `step` and returns once the
/// regions are copied (a staging area as large as the regions, kept for the next call until
/// `ckpt_finalize`): the program may change them right after, the checkpoint holds them as they were at the call. A background thread writes and commits it
/// like `ckpt_checkpoint`; `ckpt_checkpoint_wait` waits for it. At most one is in flight: a call while
/// one is waits for it first, and returns its error if it failed (this one is then not started).
/// Resets `ckpt_should_checkpoint`; `ckpt_should_exit` turns 1 once a checkpoint asked to be the last is
/// durable. One process only: CKPT_ERR_INVALID_ARGUMENT with several ranks (`ckpt_mpi.h`'s
/// `ckpt_mpi_checkpoint_async` writes parts). CKPT_ERR_TOO_LARGE when the staging area cannot be
/// allocated (nothing started); a negative `step` is CKPT_ERR_INVALID_ARGUMENT. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_checkpoint_async(step: i64) -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.checkpoint_async(step, staged_writer(s)?)?;
            Ok(CKPT_OK)
        })
    })
}

/// `ckpt_checkpoint_async` for this rank's part of multi-rank `generation` (agreed by all ranks, as for
/// `ckpt_checkpoint_part`); after `ckpt_checkpoint_wait` the step is committed as after
/// `ckpt_checkpoint_part` (`ckpt_mpi.h`'s `ckpt_mpi_checkpoint_wait` does). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_checkpoint_part_async(generation: u64, step: i64) -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.checkpoint_part_async(generation, step, staged_writer(s)?)?;
            Ok(CKPT_OK)
        })
    })
}

/// Waits for the checkpoint `ckpt_checkpoint_async` started: CKPT_OK when it is committed (and, with a
/// cache level, `CKPT_CACHE_DIR`, copied to the checkpoint directory and verified there), CKPT_OK at
/// once when none is in flight, else its error (what made it due is due again). Other calls wait
/// meanwhile. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_checkpoint_wait() -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.checkpoint_wait()?;
            Ok(CKPT_OK)
        })
    })
}
