//! The triggers' lock-free flags (`ckpt_should_checkpoint`, `ckpt_should_exit`) and `ckpt_checkpoint`,
//! which writes every protected region.

use std::sync::atomic::Ordering;

use ckpt_core::SectionOptions;

use crate::state::*;
use crate::status::*;

/// 1 when a checkpoint is due (a signal, the interval, the job's time limit, or a `ckpt create` request),
/// else 0 (also before `ckpt_init`). One atomic load, no lock: call it every iteration. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_should_checkpoint() -> i32 {
    let v = VIEW.load(Ordering::Acquire);
    if v.is_null() {
        return 0;
    }
    // SAFETY: views are leaked by ckpt_init and never freed, so a non-NULL pointer stays valid.
    i32::from(unsafe { &*v }.should_checkpoint())
}

/// 1 when the program should stop: a checkpoint asked to be the last (SIGTERM, the time limit, a
/// vacating request) has been written durably. Else 0 (also before `ckpt_init`). Lock-free. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_should_exit() -> i32 {
    let v = VIEW.load(Ordering::Acquire);
    if v.is_null() {
        return 0;
    }
    // SAFETY: as in ckpt_should_checkpoint.
    i32::from(unsafe { &*v }.should_exit())
}

pub(crate) fn write_regions(s: &State, w: &mut ckpt_core::CheckpointWriter) -> ckpt_core::Result<()> {
    for (k, v) in &s.metadata {
        w.set_metadata(k, v)?;
    }
    for (key, r) in &s.regions {
        let data: &[u8] = if r.len == 0 {
            &[]
        } else {
            // SAFETY: ckpt_protect checked ptr is non-NULL for len > 0; the caller guarantees the region is
            // valid and not modified concurrently while protected (documented contract).
            unsafe { std::slice::from_raw_parts(r.ptr, r.len) }
        };
        let opts = SectionOptions::new().compression(s.checkpointer.config().compression).tag(key.tag());
        w.add_section_with(&key.section(), data, opts)?;
    }
    Ok(())
}

/// Writes every protected region durably as application step `step` (atomic: either the whole new
/// checkpoint exists afterwards, or the previous one is still the newest). With several ranks this writes
/// this rank's part; rank 0 then waits for all parts and commits the step (`ckpt_mpi.h` does this
/// collectively). Steps are 0 or more: a negative `step` is `CKPT_ERR_INVALID_ARGUMENT` (nothing written,
/// `ckpt_should_checkpoint` unchanged).
///
/// Resets `ckpt_should_checkpoint` to 0; sets `ckpt_should_exit` when the checkpoint was asked to be the
/// last. Thread-safe, but protected memory must not change during the call.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_checkpoint(step: i64) -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.checkpoint(step, |w| write_regions(s, w))?;
            Ok(CKPT_OK)
        })
    })
}
