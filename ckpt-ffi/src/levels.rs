//! The node-local cache level in multi-rank steps: whether this process has one, and a step's manifest
//! recorded in each node's cache (the MPI helpers broadcast the identities rank 0 committed).

use crate::multirank::{ckpt_part_identity, identities};
use crate::state::*;
use crate::status::*;

/// 1 when this process saves to a node-local cache level first (`CKPT_CACHE_DIR`), else 0 (also before
/// `ckpt_init`). The MPI helpers take the maximum over the ranks to decide whether to record committed
/// steps in every node's cache. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_has_cache_level() -> i32 {
    guard(|| Ok(lock(&STATE).as_ref().map_or(0, |s| i32::from(s.checkpointer.store().cache_dir().is_some())))).max(0)
}

/// On a rank other than 0, after rank 0 committed multi-rank `generation` of step `step` from `parts`
/// (the `nparts` identities it committed, broadcast to every rank): records the step's manifest in this
/// rank's node-local cache too, unless it is there already, so that a restart on the same nodes finds the
/// step in every node's cache. CKPT_OK and nothing written without a cache level. Errors as
/// `ckpt_commit_step_parts`. `parts` is read during the call only. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_record_step_parts(
    generation: u64,
    step: i64,
    parts: *const ckpt_part_identity,
    nparts: usize,
) -> i32 {
    guard(|| {
        let parts = identities(parts, nparts)?;
        let step = u64::try_from(step).map_err(|_| {
            FfiError::new(CKPT_ERR_INVALID_ARGUMENT, format!("step {step} is negative: steps are 0 or more"))
        })?;
        with_state(|s| {
            s.checkpointer.store().record_step(generation, step, &parts)?;
            Ok(CKPT_OK)
        })
    })
}
