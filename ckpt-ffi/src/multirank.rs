//! Multi-rank steps, the calls under `ckpt_mpi.h`: generations, parts, their identities, the commit of a
//! step and the agreement on the generation to restart from. (`ckpt_request_checkpoint` is here too, where
//! it has always been in the header's order: cbindgen writes the functions in the order it reads them.)

use crate::checkpoint::write_regions;

use crate::state::*;
use crate::status::*;

/// Writes to `*generation_out` the generation number the next checkpoint of this process would use. MPI
/// helpers agree on the maximum over ranks and pass it to `ckpt_checkpoint_part`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_next_generation(generation_out: *mut u64) -> i32 {
    guard(|| {
        null_check(generation_out, "generation_out")?;
        with_state(|s| {
            let g = s.checkpointer.store().next_generation()?;
            // SAFETY: checked non-NULL.
            unsafe { *generation_out = g };
            Ok(CKPT_OK)
        })
    })
}

/// Writes this rank's part of multi-rank `generation` (all protected regions) durably. The step exists
/// only once rank 0 has committed it after every rank's part is durable (`ckpt_mpi.h`: a gather of the
/// parts' identities, `ckpt_get_part_identity`, then `ckpt_commit_step_parts` on rank 0; without them,
/// `ckpt_commit_step`); every rank then calls `ckpt_finish_step` with the outcome. Resets
/// `ckpt_should_checkpoint`; a negative `step` is `CKPT_ERR_INVALID_ARGUMENT`. Thread-safe, but protected
/// memory must not change during the call.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_checkpoint_part(generation: u64, step: i64) -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.checkpoint_part(generation, step, |w| write_regions(s, w))?;
            Ok(CKPT_OK)
        })
    })
}

/// Tells this rank whether the multi-rank step of its last `ckpt_checkpoint_part` was committed
/// (`committed` non-zero) or not (0), as agreed by all ranks. Committed: `ckpt_should_exit` turns 1 if the
/// checkpoint was asked to be the last, `ckpt create` requests are answered, and this rank removes its own
/// parts of the generations the step retired (beyond CKPT_KEEP). Not committed: whatever
/// triggered the part (a signal, the time limit) is due again, so `ckpt_should_checkpoint` turns 1 and
/// the step can be retried; requests get the error. A no-op when no part is pending. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_finish_step(committed: i32) -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.finish_step(committed != 0);
            Ok(CKPT_OK)
        })
    })
}

/// Requests a checkpoint as a signal would: `ckpt_should_checkpoint` turns 1, and with `exit` non-zero
/// `ckpt_should_exit` turns 1 after the next checkpoint. For programs with their own triggers, and for
/// wrappers that must re-arm a request. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_request_checkpoint(exit: i32) -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.request_checkpoint(exit != 0);
            Ok(CKPT_OK)
        })
    })
}

/// Commits multi-rank `generation` after every rank's part is durable: checks every part and writes the
/// step's manifest (call on one rank, normally 0, after a barrier). A negative `step` is
/// `CKPT_ERR_INVALID_ARGUMENT`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_commit_step(generation: u64, step: i64) -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.store().commit_step(generation, step)?;
            Ok(CKPT_OK)
        })
    })
}

/// What a rank's durable part of a multi-rank step is, as the rank that wrote it knows it (the manifest
/// records it): `ckpt_get_part_identity` fills it on each rank, an MPI gather brings every rank's to rank
/// 0, and `ckpt_commit_step_parts` commits the step from them without opening one file per rank. Plain
/// data (40 bytes, no padding), the same on every rank of a job.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct ckpt_part_identity {
    /// The part's generation.
    pub generation: u64,
    /// The application step it holds.
    pub step: i64,
    /// Its length in bytes.
    pub file_len: u64,
    /// The rank that wrote it.
    pub rank: u32,
    /// The number of ranks it was written for.
    pub nranks: u32,
    /// CRC32 of its header.
    pub header_crc32: u32,
    /// CRC32 of its section table.
    pub table_crc32: u32,
}

impl From<ckpt_core::PartIdentity> for ckpt_part_identity {
    fn from(p: ckpt_core::PartIdentity) -> Self {
        ckpt_part_identity {
            generation: p.generation,
            step: p.app_step.cast_signed(),
            file_len: p.file_len,
            rank: p.rank,
            nranks: p.nranks,
            header_crc32: p.header_crc32,
            table_crc32: p.table_crc32,
        }
    }
}

impl From<ckpt_part_identity> for ckpt_core::PartIdentity {
    fn from(p: ckpt_part_identity) -> Self {
        ckpt_core::PartIdentity {
            generation: p.generation,
            // Bit for bit, as the other way; `ckpt_commit_step_parts` refuses negative steps first.
            app_step: p.step.cast_unsigned(),
            file_len: p.file_len,
            rank: p.rank,
            nranks: p.nranks,
            header_crc32: p.header_crc32,
            table_crc32: p.table_crc32,
        }
    }
}

/// Writes to `*identity_out` the identity of this rank's part of `generation`, written durably by this
/// process's `ckpt_checkpoint_part` (CKPT_ERR_INVALID_STATE when it wrote none). For gathering to rank 0
/// before `ckpt_commit_step_parts`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_get_part_identity(generation: u64, identity_out: *mut ckpt_part_identity) -> i32 {
    guard(|| {
        null_check(identity_out, "identity_out")?;
        with_state(|s| {
            let Some(identity) = s.checkpointer.store().part_identity(generation) else {
                return Err(FfiError::new(
                    CKPT_ERR_INVALID_STATE,
                    format!("this process has no durable part of generation {generation}"),
                ));
            };
            // SAFETY: checked non-NULL; the caller provides a writable ckpt_part_identity.
            unsafe { *identity_out = identity.into() };
            Ok(CKPT_OK)
        })
    })
}

/// Commits multi-rank `generation` of application step `step` from `parts`, an array of `nparts`
/// identities indexed by rank (`parts[r]` from rank r's `ckpt_get_part_identity`), after every rank's
/// part is durable: writes the step's manifest without opening the parts (`ckpt_commit_step` opens
/// every one). Call on one rank, normally 0. Each rank then removes its own parts that the step retires
/// when `ckpt_finish_step(1)` tells it the outcome. CKPT_ERR_INVALID_ARGUMENT when `nparts` is not the
/// number of ranks or a step is negative; CKPT_ERR_INVALID_STATE when an identity is not its rank's part of this generation and
/// step. `parts` is read during the call only. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_commit_step_parts(
    generation: u64,
    step: i64,
    parts: *const ckpt_part_identity,
    nparts: usize,
) -> i32 {
    guard(|| {
        let parts = identities(parts, nparts)?;
        with_state(|s| {
            s.checkpointer.store().commit_step_with_parts(generation, step, &parts)?;
            Ok(CKPT_OK)
        })
    })
}

/// Reads `nparts` part identities from `parts` (checked: non-NULL, aligned, a plausible count, no negative
/// step).
pub(crate) fn identities(parts: *const ckpt_part_identity, nparts: usize) -> FfiResult<Vec<ckpt_core::PartIdentity>> {
    null_check(parts, "parts")?;
    if !parts.is_aligned() {
        return Err(FfiError::new(CKPT_ERR_INVALID_ARGUMENT, "parts is not aligned for ckpt_part_identity"));
    }
    if nparts > (1 << 24) {
        return Err(FfiError::new(CKPT_ERR_INVALID_ARGUMENT, format!("nparts {nparts} is not a number of ranks")));
    }
    // SAFETY: non-NULL and aligned (checked); the caller provides nparts readable structs for the call.
    let parts = unsafe { std::slice::from_raw_parts(parts, nparts) };
    if let Some((r, p)) = parts.iter().enumerate().find(|(_, p)| p.step < 0) {
        return Err(FfiError::new(
            CKPT_ERR_INVALID_ARGUMENT,
            format!("parts[{r}].step {} is negative: steps are 0 or more", p.step),
        ));
    }
    Ok(parts.iter().map(|&p| p.into()).collect())
}

/// Writes to `*generation_out` the newest generation, at most `max_generation`, that this rank can
/// restart from (manifest and own part verified), or 0 when there is none (also when checkpoints exist
/// but none is valid: `ckpt_have_restart` tells those cases apart). The generation found is also selected
/// for `ckpt_restart`, already verified. MPI helpers take the minimum over ranks and call
/// `ckpt_select_generation`, which reuses that verification when the agreed generation is this one.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_newest_valid_generation(max_generation: u64, generation_out: *mut u64) -> i32 {
    guard(|| {
        null_check(generation_out, "generation_out")?;
        with_state(|s| {
            let r = s.checkpointer.store().restore_at_most(max_generation);
            // The generation to restore is the ranks' agreement now, not ckpt_restart's own discovery.
            s.looked = true;
            let g = match r {
                Ok(Some(r)) => {
                    // Keep the verified checkpoint: the agreed generation is usually this one, and
                    // ckpt_select_generation / ckpt_restart then need not verify it again.
                    let g = r.generation;
                    s.restored = Some(r);
                    g
                }
                Ok(None) => 0,
                Err(e) if e.kind() == ckpt_core::ErrorKind::NoValidCheckpoint => 0,
                Err(e) => return Err(e.into()),
            };
            // SAFETY: checked non-NULL.
            unsafe { *generation_out = g };
            Ok(CKPT_OK)
        })
    })
}

/// Selects exactly `generation` for the next `ckpt_restart`/`ckpt_restart_size` (verifying it), and
/// writes its step to `*step_out` (may be NULL). Returns `CKPT_ERR_NO_CHECKPOINT` when this rank cannot
/// read that generation. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_select_generation(generation: u64, step_out: *mut i64) -> i32 {
    guard(|| {
        with_state(|s| {
            if let Some(r) = s.restored.as_ref().filter(|r| r.generation == generation) {
                if !step_out.is_null() {
                    // SAFETY: non-NULL, checked.
                    unsafe { *step_out = r.app_step.cast_signed() };
                }
                return Ok(CKPT_OK);
            }
            let r = s.checkpointer.store().restore_at_most(generation);
            s.looked = true;
            let r = match r {
                Ok(Some(r)) if r.generation == generation => r,
                Ok(_) | Err(_) => {
                    s.restored = None;
                    return Err(FfiError::new(
                        CKPT_ERR_NO_CHECKPOINT,
                        format!("generation {generation} is not readable on this rank"),
                    ));
                }
            };
            if !step_out.is_null() {
                // SAFETY: non-NULL, checked.
                unsafe { *step_out = r.app_step.cast_signed() };
            }
            s.restored = Some(r);
            Ok(CKPT_OK)
        })
    })
}
