//! Restart on another number of ranks: `ckpt_restart_step` finds the newest committed multi-rank step of
//! this run whatever number of ranks wrote it (every part verified), and any rank reads any old rank's
//! regions from it (`ckpt_restart_part`, `ckpt_restart_part_named`) to redistribute its data itself.

use std::ffi::{c_char, c_void};

use ckpt_core::Checkpoint;

use crate::regions::{RegionKey, region_name};
use crate::restart::stored_section;
use crate::state::*;
use crate::status::*;

/// The part of old rank `rank` of the step `ckpt_restart_step` chose, opened (and verified) once.
fn part(s: &mut State, rank: u32) -> FfiResult<&Checkpoint> {
    let Some((step, parts)) = s.step.as_mut() else {
        return Err(FfiError::new(
            CKPT_ERR_INVALID_STATE,
            "no step is selected: call ckpt_restart_step first (it says how many ranks wrote it)",
        ));
    };
    match parts.entry(rank) {
        std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
        std::collections::btree_map::Entry::Vacant(e) => Ok(e.insert(step.part(rank)?)),
    }
}

/// Restart on another number of ranks: finds the newest committed multi-rank step of this run, whatever
/// number of ranks wrote it, with every rank's part verified (so every rank that calls it chooses the same
/// step), and selects it for `ckpt_restart_part`. Writes the number of ranks that wrote it to
/// `*nranks_out` (its parts are `0 .. *nranks_out - 1`) and its application step to `*step_out`
/// (`step_out` may be NULL). `CKPT_ERR_NO_CHECKPOINT` when there is none (a first run); `CKPT_ERR_NO_VALID_CHECKPOINT` when
/// steps exist but none verifies. Call it after `ckpt_init` on every rank that redistributes; the usual
/// `ckpt_restart` refuses a step of another number of ranks. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_step(nranks_out: *mut u32, step_out: *mut i64) -> i32 {
    guard(|| {
        null_check(nranks_out, "nranks_out")?;
        with_state(|s| {
            let step =
                s.checkpointer.store().restore_step()?.ok_or_else(|| {
                    FfiError::new(CKPT_ERR_NO_CHECKPOINT, "there is no multi-rank step to restart from")
                })?;
            // SAFETY: checked non-NULL; the caller provides a writable uint32_t (and int64_t, when given).
            unsafe {
                *nranks_out = step.nranks();
                if !step_out.is_null() {
                    *step_out = step.app_step().cast_signed();
                }
            }
            s.step = Some((step, std::collections::BTreeMap::new()));
            Ok(CKPT_OK)
        })
    })
}

fn part_size(rank: u32, key: RegionKey, len_out: *mut usize) -> FfiResult<i32> {
    null_check(len_out, "len_out")?;
    with_state(|s| {
        let (_, raw_len) = stored_section(part(s, rank)?, &key)?;
        let len = usize::try_from(raw_len)
            .map_err(|_| FfiError::new(CKPT_ERR_TOO_LARGE, format!("{key} of rank {rank}: {raw_len} bytes")))?;
        // SAFETY: checked non-NULL; the caller provides a writable size_t.
        unsafe { *len_out = len };
        Ok(CKPT_OK)
    })
}

/// Writes to `*len_out` the size in bytes of region `id` in old rank `rank`'s part of the step
/// `ckpt_restart_step` selected (a rank's share of the data differs from rank to rank).
/// `CKPT_ERR_INVALID_STATE` before `ckpt_restart_step`, `CKPT_ERR_INVALID_ARGUMENT` for a rank that did
/// not write the step, `CKPT_ERR_SECTION_NOT_FOUND` when the part has no such region. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_part_size(rank: u32, id: i32, len_out: *mut usize) -> i32 {
    guard(|| part_size(rank, RegionKey::Id(id), len_out))
}

/// `ckpt_restart_part_size` for a region protected by name. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_part_size_named(rank: u32, name: *const c_char, len_out: *mut usize) -> i32 {
    guard(|| part_size(rank, RegionKey::Name(region_name(name)?), len_out))
}

fn read_part(rank: u32, key: RegionKey, buf: *mut c_void, len: usize) -> FfiResult<i32> {
    if buf.is_null() && len != 0 {
        return Err(FfiError::new(CKPT_ERR_NULL_ARGUMENT, format!("{key}: buf is NULL but len is {len}")));
    }
    with_state(|s| {
        let cp = part(s, rank)?;
        let (section, raw_len) = stored_section(cp, &key)?;
        if raw_len != len as u64 {
            return Err(FfiError::new(
                CKPT_ERR_SIZE_MISMATCH,
                format!(
                    "{}: {key} of rank {rank} holds {raw_len} bytes but the buffer has {len} (ckpt_restart_part_size \
                     gives the size)",
                    cp.path().display()
                ),
            ));
        }
        let dst: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: non-NULL for len > 0 (checked above); the caller provides `len` writable bytes that
            // nothing else uses during the call.
            unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) }
        };
        cp.read_into(&section, dst)?;
        Ok(CKPT_OK)
    })
}

/// Reads region `id` of old rank `rank`'s part of the step `ckpt_restart_step` selected into `buf`, which
/// must be exactly its size (`ckpt_restart_part_size`): any rank reads any part, to redistribute the data
/// over another number of ranks. The part was verified by `ckpt_restart_step` and is verified again
/// (every CRC) the first time it is read. `buf` is written only on success; it may be NULL only when
/// `len` is 0. Errors as `ckpt_restart_part_size`, and `CKPT_ERR_SIZE_MISMATCH` (naming the region, the
/// rank and both sizes). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_part(rank: u32, id: i32, buf: *mut c_void, len: usize) -> i32 {
    guard(|| read_part(rank, RegionKey::Id(id), buf, len))
}

/// `ckpt_restart_part` for a region protected by name. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_part_named(rank: u32, name: *const c_char, buf: *mut c_void, len: usize) -> i32 {
    guard(|| read_part(rank, RegionKey::Name(region_name(name)?), buf, len))
}
