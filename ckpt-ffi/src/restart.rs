//! Restart: finding the checkpoint (`ckpt_have_restart`), a region's stored size (`ckpt_restart_size`)
//! and reading the regions back (`ckpt_restart`).

use std::ffi::c_char;

use ckpt_core::Checkpoint;

use crate::regions::RegionKey;

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
                    *step_out = st.cast_signed();
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

/// The key ckpt.hpp recorded its region names under before it protected them by name: the names, one a
/// line, the first one region 0. Checkpoints it wrote that way are still read by name.
const HPP_REGION_NAMES: &str = "ckpt.hpp.regions";

/// The section of `cp` that holds `key`, or `CKPT_ERR_SECTION_NOT_FOUND` naming the region and listing
/// the regions the checkpoint has. A named region is the section of its name, or in a checkpoint that
/// ckpt.hpp wrote before named regions existed, the numbered section its names list gives it.
pub(crate) fn stored_section(cp: &Checkpoint, key: &RegionKey) -> FfiResult<(String, u64)> {
    let section = key.section();
    if let Ok(e) = cp.section(&section) {
        return Ok((section, e.raw_len));
    }
    if let RegionKey::Name(name) = key {
        let names = cp.metadata(HPP_REGION_NAMES).map(String::from_utf8_lossy).unwrap_or_default();
        if let Some(i) = names.split_terminator('\n').position(|n| n == name) {
            let section = section_name(i as i32);
            if let Ok(e) = cp.section(&section) {
                return Ok((section, e.raw_len));
            }
        }
    }
    let (mut named, mut numbered) = (Vec::new(), 0);
    for e in cp.sections() {
        match e.name.strip_prefix("region.").and_then(|n| n.parse::<i32>().ok()) {
            Some(_) => numbered += 1,
            None => named.push(format!("{:?}", e.name)),
        }
    }
    let holds = match (named.is_empty(), numbered) {
        (true, 0) => "it holds no regions".to_string(),
        (true, n) => format!("it holds {n} region(s) by number only, written with ckpt_protect"),
        (false, 0) => format!("it holds {}", named.join(", ")),
        (false, n) => format!("it holds {} and {n} region(s) by number", named.join(", ")),
    };
    let what = match key {
        RegionKey::Id(_) => String::new(),
        RegionKey::Name(_) => format!(" ({holds}: were the regions renamed or another program's protected?)"),
    };
    Err(FfiError::new(
        CKPT_ERR_SECTION_NOT_FOUND,
        format!("{}: {key} is not in this checkpoint{what}", cp.path().display()),
    ))
}

fn restart_size(key: RegionKey, len_out: *mut usize) -> FfiResult<i32> {
    null_check(len_out, "len_out")?;
    with_state(|s| {
        let cp = restored_checkpoint(s)?;
        let (_, raw_len) = stored_section(cp, &key)?;
        let len =
            usize::try_from(raw_len).map_err(|_| FfiError::new(CKPT_ERR_TOO_LARGE, format!("{key} is too large")))?;
        // SAFETY: len_out was checked non-NULL.
        unsafe { *len_out = len };
        Ok(CKPT_OK)
    })
}

/// Writes to `*len_out` the stored size in bytes of region `id` in the checkpoint a restart would use, so
/// the program can allocate or resize the region before `ckpt_protect` and `ckpt_restart`.
///
/// Returns `CKPT_ERR_NO_CHECKPOINT` when there is none and `CKPT_ERR_SECTION_NOT_FOUND` when the
/// checkpoint has no region `id`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_size(id: i32, len_out: *mut usize) -> i32 {
    guard(|| restart_size(RegionKey::Id(id), len_out))
}

/// Writes to `*len_out` the stored size in bytes of the region called `name` (of `ckpt_protect_named`) in
/// the checkpoint a restart would use, so the program can allocate or resize it before
/// `ckpt_protect_named` and `ckpt_restart`. `name` is read during the call only.
///
/// Returns `CKPT_ERR_NULL_ARGUMENT` when `name` or `len_out` is NULL, `CKPT_ERR_NO_CHECKPOINT` when there
/// is no checkpoint, and `CKPT_ERR_SECTION_NOT_FOUND` when it has no region of that name (the message
/// names the region and lists those it has). `*len_out` is written only on success. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_size_named(name: *const c_char, len_out: *mut usize) -> i32 {
    guard(|| {
        let name = c_str(name, "name", false)?.unwrap_or_default();
        restart_size(RegionKey::Name(name), len_out)
    })
}

/// Reads every protected region back from the newest valid checkpoint, in place, and writes the step it
/// was taken at to `*step_out` (may be NULL). Each region is read from what the checkpoint stored under
/// its id (`ckpt_protect`) or its name (`ckpt_protect_named`).
///
/// All regions are checked before any memory is written: a protected region missing from the checkpoint
/// (`CKPT_ERR_SECTION_NOT_FOUND`, naming it: `region 3`, `region "e"`) or of another size
/// (`CKPT_ERR_SIZE_MISMATCH`) leaves every region untouched. Regions in the checkpoint that are not
/// protected are ignored. Returns `CKPT_ERR_NO_CHECKPOINT` when there is nothing to restart from.
/// Thread-safe, but protected memory must not be used by other threads during the call.
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
            let mut sections = Vec::with_capacity(s.regions.len());
            for (key, r) in &s.regions {
                let (section, raw_len) = stored_section(cp, key)?;
                if raw_len != r.len as u64 {
                    let size = match key {
                        RegionKey::Id(_) => "ckpt_restart_size",
                        RegionKey::Name(_) => "ckpt_restart_size_named",
                    };
                    return Err(FfiError::new(
                        CKPT_ERR_SIZE_MISMATCH,
                        format!(
                            "{}: {key} holds {} bytes but the checkpoint stored {raw_len} (resize it: {size})",
                            cp.path().display(),
                            r.len,
                        ),
                    ));
                }
                sections.push(section);
            }
            for (r, section) in s.regions.values().zip(&sections) {
                let dst: &mut [u8] = if r.len == 0 {
                    &mut []
                } else {
                    // SAFETY: non-NULL for len > 0 (checked by ckpt_protect); the caller guarantees the region is
                    // valid, writable and not used concurrently during the call (documented contract).
                    unsafe { std::slice::from_raw_parts_mut(r.ptr, r.len) }
                };
                cp.read_into(section, dst)?;
            }
            if !step_out.is_null() {
                // SAFETY: non-NULL, checked just above; the caller provides a writable int64_t.
                unsafe { *step_out = restored.app_step.cast_signed() };
            }
            Ok(CKPT_OK)
        })
    })
}
