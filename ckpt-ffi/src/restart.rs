//! Restart: finding the checkpoint (`ckpt_have_restart`), a region's stored size (`ckpt_restart_size`)
//! and reading the regions back (`ckpt_restart`).

use std::collections::BTreeMap;
use std::ffi::c_char;

use ckpt_core::Checkpoint;

use crate::regions::RegionKey;

use crate::state::*;
use crate::status::*;

pub(crate) fn find_restart(s: &mut State) -> FfiResult<()> {
    if s.restored.is_none() {
        s.restored = s.checkpointer.restore()?;
        s.looked = true;
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
///
/// Called without a lookup before it (`ckpt_have_restart`, `ckpt_restart_size`, a generation selected
/// for MPI), it finds the checkpoint and copies it in one pass: each region's bytes are checked while
/// they are copied, and a checkpoint found damaged then is replaced by the next valid one's bytes, as
/// discovery would have chosen. When none verifies the result is `CKPT_ERR_NO_VALID_CHECKPOINT` and the
/// regions may hold a damaged checkpoint's bytes; with `CKPT_ALLOW_FRESH_START=1` too (the message says
/// so: initialise them again before a fresh start). Thread-safe, but protected memory must not be used
/// by other threads during the call.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart(step_out: *mut i64) -> i32 {
    guard(|| {
        with_state(|s| {
            let step = if !s.looked && !regions_overlap(s) {
                restore_regions(s)?
            } else {
                // Looked for before, or regions sharing memory (filled one after the other, the last one's
                // bytes staying where they overlap).
                find_restart(s)?;
                read_regions(s)?
            };
            if !step_out.is_null() {
                // SAFETY: non-NULL, checked just above; the caller provides a writable int64_t.
                unsafe { *step_out = step.cast_signed() };
            }
            Ok(CKPT_OK)
        })
    })
}

/// Whether two protected regions share bytes.
fn regions_overlap(s: &State) -> bool {
    let mut spans: Vec<(usize, usize)> =
        s.regions.values().filter(|r| r.len > 0).map(|r| (r.ptr as usize, r.ptr as usize + r.len)).collect();
    spans.sort_unstable();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

/// The protected regions as the caller's memory (none of them overlapping: [`regions_overlap`]).
fn region_buffers(regions: &mut BTreeMap<RegionKey, Region>) -> Vec<&mut [u8]> {
    regions
        .values_mut()
        .map(|r| -> &mut [u8] {
            if r.len == 0 {
                &mut []
            } else {
                // SAFETY: non-NULL for len > 0 (checked by ckpt_protect); the caller guarantees the region is
                // valid, writable and not used concurrently during the call (documented contract); the
                // caller checked that no two regions overlap, so the slices alias nothing.
                unsafe { std::slice::from_raw_parts_mut(r.ptr, r.len) }
            }
        })
        .collect()
}

/// The section of `cp` that region `key` of `len` bytes is read from, or why it cannot be.
fn region_section(cp: &Checkpoint, key: &RegionKey, len: usize) -> FfiResult<String> {
    let (section, raw_len) = stored_section(cp, key)?;
    if raw_len != len as u64 {
        let size = match key {
            RegionKey::Id(_) => "ckpt_restart_size",
            RegionKey::Name(_) => "ckpt_restart_size_named",
        };
        return Err(FfiError::new(
            CKPT_ERR_SIZE_MISMATCH,
            format!(
                "{}: {key} holds {len} bytes but the checkpoint stored {raw_len} (resize it: {size})",
                cp.path().display()
            ),
        ));
    }
    Ok(section)
}

/// Discovery and the copy into the regions in one pass over the chosen file (each raw section is checked
/// while it is copied: `Checkpointer::restore_into_with`); the step restored.
fn restore_regions(s: &mut State) -> FfiResult<u64> {
    let keys: Vec<(RegionKey, usize)> = s.regions.iter().map(|(k, r)| (k.clone(), r.len)).collect();
    let mut buffers = region_buffers(&mut s.regions);
    // Why the regions do not fit the last candidate looked at, in this library's words.
    let mut refused: Option<FfiError> = None;
    let found = s.checkpointer.restore_into_with(&mut buffers, |cp| {
        let sections = keys.iter().map(|(key, len)| region_section(cp, key, *len)).collect::<FfiResult<Vec<_>>>();
        match sections {
            Ok(sections) => {
                refused = None;
                Ok(sections)
            }
            Err(e) => {
                let error = ckpt_core::Error::invalid(e.message.clone());
                refused = Some(e);
                Err(error)
            }
        }
    });
    drop(buffers);
    match found {
        Ok(Some(restored)) => {
            let step = restored.app_step;
            s.restored = Some(restored);
            s.looked = true;
            Ok(step)
        }
        Ok(None) => {
            s.looked = true;
            Err(FfiError::new(CKPT_ERR_NO_CHECKPOINT, "there is no checkpoint to restart from"))
        }
        Err(e) => match refused {
            Some(why) if e.kind() == ckpt_core::ErrorKind::InvalidArgument => Err(why),
            _ => Err(e.into()),
        },
    }
}

/// The regions read from the checkpoint found before (`ckpt_have_restart`, `ckpt_restart_size`): every
/// one checked first, so that a mismatch leaves them all untouched; the step restored.
fn read_regions(s: &mut State) -> FfiResult<u64> {
    let restored = s
        .restored
        .as_ref()
        .ok_or_else(|| FfiError::new(CKPT_ERR_NO_CHECKPOINT, "there is no checkpoint to restart from"))?;
    let cp = &restored.checkpoint;
    let sections = s.regions.iter().map(|(key, r)| region_section(cp, key, r.len)).collect::<FfiResult<Vec<_>>>()?;
    for (r, section) in s.regions.values().zip(&sections) {
        let dst: &mut [u8] = if r.len == 0 {
            &mut []
        } else {
            // SAFETY: non-NULL for len > 0 (checked by ckpt_protect); the caller guarantees the region is
            // valid, writable and not used concurrently during the call (documented contract). One region
            // at a time: regions may overlap.
            unsafe { std::slice::from_raw_parts_mut(r.ptr, r.len) }
        };
        cp.read_into(section, dst)?;
    }
    Ok(restored.app_step)
}
