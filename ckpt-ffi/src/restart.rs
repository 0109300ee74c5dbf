//! Restart: finding the checkpoint (`ckpt_have_restart`), a region's stored size (`ckpt_restart_size`)
//! and reading the regions back (`ckpt_restart`).

use ckpt_core::Checkpoint;

use crate::state::*;
use crate::status::*;

pub(crate) fn find_restart(s: &mut State) -> FfiResult<()> {
    if s.restored.is_none() {
        s.restored = s.checkpointer.restore()?;
    }
    Ok(())
}

/// Looks for a checkpoint to restart from (the newest that verifies completely; older generations are
/// tried when the newest is damaged). On success writes `*found_out` (1 or 0) and, when found,
/// `*step_out` (the step given to `ckpt_checkpoint`); `step_out` may be NULL.
///
/// Returns `CKPT_ERR_NO_VALID_CHECKPOINT` when checkpoints exist but none verifies (the message lists
/// them) rather than reporting "not found", and `CKPT_ERR_CONFLICT` when files under this job's name
/// belong to another run: check the status, not only `*found_out` (`if (ckpt_have_restart(&f, &s) ==
/// CKPT_OK && f)` turns those errors into a silent fresh start). Most programs call `ckpt_restart`
/// directly and treat only `CKPT_ERR_NO_CHECKPOINT` as a first run. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_have_restart(found_out: *mut i32, step_out: *mut i64) -> i32 {
    guard(|| {
        null_check(found_out, "found_out")?;
        with_state(|s| {
            find_restart(s)?;
            let step = s.restored.as_ref().map(|r| r.app_step);
            // SAFETY: found_out was checked non-NULL; step_out is written only when non-NULL.
            unsafe {
                *found_out = i32::from(step.is_some());
                if let (Some(st), false) = (step, step_out.is_null()) {
                    *step_out = st;
                }
            }
            Ok(CKPT_OK)
        })
    })
}

pub(crate) fn restored_checkpoint(s: &mut State) -> FfiResult<&Checkpoint> {
    find_restart(s)?;
    s.restored
        .as_ref()
        .map(|r| &r.checkpoint)
        .ok_or_else(|| FfiError::new(CKPT_ERR_NO_CHECKPOINT, "there is no checkpoint to restart from"))
}

/// Writes to `*len_out` the stored size in bytes of region `id` in the checkpoint a restart would use, so
/// the program can allocate or resize the region before `ckpt_protect` and `ckpt_restart`.
///
/// Returns `CKPT_ERR_NO_CHECKPOINT` when there is none and `CKPT_ERR_SECTION_NOT_FOUND` when the
/// checkpoint has no region `id`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_size(id: i32, len_out: *mut usize) -> i32 {
    guard(|| {
        null_check(len_out, "len_out")?;
        with_state(|s| {
            let cp = restored_checkpoint(s)?;
            let e = cp.section(&section_name(id)).map_err(|_| {
                FfiError::new(
                    CKPT_ERR_SECTION_NOT_FOUND,
                    format!("{}: region {id} is not in this checkpoint", cp.path().display()),
                )
            })?;
            let len = usize::try_from(e.raw_len).map_err(|_| FfiError::new(CKPT_ERR_TOO_LARGE, "region too large"))?;
            // SAFETY: len_out was checked non-NULL.
            unsafe { *len_out = len };
            Ok(CKPT_OK)
        })
    })
}

/// Reads every protected region back from the newest valid checkpoint, in place, and writes the step it
/// was taken at to `*step_out` (may be NULL).
///
/// All regions are checked before any memory is written: a protected region missing from the checkpoint
/// (`CKPT_ERR_SECTION_NOT_FOUND`) or of another size (`CKPT_ERR_SIZE_MISMATCH`) leaves every region
/// untouched. Regions in the checkpoint that are not protected are ignored. Returns
/// `CKPT_ERR_NO_CHECKPOINT` when there is nothing to restart from. Thread-safe, but protected memory must
/// not be used by other threads during the call.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart(step_out: *mut i64) -> i32 {
    guard(|| {
        with_state(|s| {
            find_restart(s)?;
            let restored = s
                .restored
                .as_ref()
                .ok_or_else(|| FfiError::new(CKPT_ERR_NO_CHECKPOINT, "there is no checkpoint to restart from"))?;
            let cp = &restored.checkpoint;
            for (&id, r) in &s.regions {
                let e = cp.section(&section_name(id)).map_err(|_| {
                    FfiError::new(
                        CKPT_ERR_SECTION_NOT_FOUND,
                        format!("{}: region {id} is not in this checkpoint", cp.path().display()),
                    )
                })?;
                if e.raw_len != r.len as u64 {
                    return Err(FfiError::new(
                        CKPT_ERR_SIZE_MISMATCH,
                        format!(
                            "{}: region {id} holds {} bytes but the checkpoint stored {} (resize it: ckpt_restart_size)",
                            cp.path().display(),
                            r.len,
                            e.raw_len
                        ),
                    ));
                }
            }
            for (&id, r) in &s.regions {
                let dst: &mut [u8] = if r.len == 0 {
                    &mut []
                } else {
                    // SAFETY: non-NULL for len > 0 (checked by ckpt_protect); the caller guarantees the region is
                    // valid, writable and not used concurrently during the call (documented contract).
                    unsafe { std::slice::from_raw_parts_mut(r.ptr, r.len) }
                };
                cp.read_into(&section_name(id), dst)?;
            }
            if !step_out.is_null() {
                // SAFETY: non-NULL, checked just above; the caller provides a writable int64_t.
                unsafe { *step_out = restored.app_step };
            }
            Ok(CKPT_OK)
        })
    })
}
