//! `ckpt_restart_info` and its opaque `ckpt_restart_details` handle: which file a restart used and which
//! newer ones it rejected.

use std::ffi::c_char;

use crate::restart::find_restart;

use crate::state::*;
use crate::status::*;

/// What a restart used and what it passed over: the file and generation restored (and the step), and
/// the newer files that were rejected, each with its path, status code and reason. Opaque (like
/// rustls-ffi's handles): created by `ckpt_restart_info`, read with the `ckpt_restart_details_*`
/// functions, released with `ckpt_restart_details_free`. A handle is a snapshot, independent of later
/// calls (even `ckpt_finalize`); it is never modified, so several threads may read one at the same time.
#[allow(non_camel_case_types)]
pub struct ckpt_restart_details {
    path: std::ffi::CString,
    generation: u64,
    step: i64,
    rejected: Vec<(std::ffi::CString, i32, std::ffi::CString)>,
}

fn c_string(bytes: &[u8]) -> std::ffi::CString {
    // Paths and messages have no NUL inside; replace one rather than fail.
    let bytes: Vec<u8> = bytes.iter().map(|&b| if b == 0 { b'?' } else { b }).collect();
    std::ffi::CString::new(bytes).unwrap_or_default()
}

fn path_c_string(p: &std::path::Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    c_string(p.as_os_str().as_bytes())
}

/// Describes the checkpoint a restart uses (looking for it as `ckpt_have_restart` does, when that has
/// not happened yet): on success writes to `*details_out` a new handle, owned by the caller, who releases
/// it with `ckpt_restart_details_free`; the strings read from it stay valid until then. Call it after
/// `ckpt_restart` to log what was restored, or before it to decide.
///
/// Returns `CKPT_ERR_NO_CHECKPOINT` when there is nothing to restart from (a first run), and the errors
/// of `ckpt_have_restart` (`CKPT_ERR_NO_VALID_CHECKPOINT`, `CKPT_ERR_CONFLICT`, ...) when checkpoints exist
/// but none can be used (`ckpt_last_error` names every file and why); `*details_out` is not written
/// then. Thread-safe.
///
/// ```c
/// ckpt_restart_details *d;
/// const char *path, *reason;
/// uint64_t gen;
/// int64_t step;
/// size_t n;
/// if (ckpt_restart_info(&d) == CKPT_OK) {
///     ckpt_restart_details_restored(d, &path, &gen, &step);
///     ckpt_restart_details_rejected_count(d, &n);
///     printf("restarted from %s (generation %llu, step %lld)\n", path, (unsigned long long)gen, (long long)step);
///     for (size_t i = 0; i < n; i++)
///         if (ckpt_restart_details_rejected(d, i, &path, &reason, NULL) == CKPT_OK)
///             printf("  skipped newer %s: %s\n", path, reason);
///     ckpt_restart_details_free(d);
/// }
/// ```
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_info(details_out: *mut *mut ckpt_restart_details) -> i32 {
    guard(|| {
        null_check(details_out, "details_out")?;
        with_state(|s| {
            find_restart(s)?;
            let r = s
                .restored
                .as_ref()
                .ok_or_else(|| FfiError::new(CKPT_ERR_NO_CHECKPOINT, "there is no checkpoint to restart from"))?;
            let details = ckpt_restart_details {
                path: path_c_string(&r.chosen_path),
                generation: r.generation,
                step: r.app_step.cast_signed(),
                rejected: r
                    .rejected
                    .iter()
                    .map(|(p, e)| (path_c_string(p), status_of(e), c_string(e.to_string().as_bytes())))
                    .collect(),
            };
            // SAFETY: details_out was checked non-NULL; the caller provides a writable pointer.
            unsafe { *details_out = Box::into_raw(Box::new(details)) };
            Ok(CKPT_OK)
        })
    })
}

/// Releases a handle from `ckpt_restart_info`, and with it every string read from it. NULL is allowed
/// (nothing to do). Not twice, and not while another thread still reads the handle. Returns `CKPT_OK`.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_details_free(details: *mut ckpt_restart_details) -> i32 {
    guard(|| {
        if !details.is_null() {
            // SAFETY: non-NULL, created by Box::into_raw in ckpt_restart_info and (per the contract) not
            // freed before.
            drop(unsafe { Box::from_raw(details) });
        }
        Ok(CKPT_OK)
    })
}

/// Borrows a handle passed by C; NULL is `CKPT_ERR_NULL_ARGUMENT`.
fn details_ref<'a>(details: *const ckpt_restart_details) -> FfiResult<&'a ckpt_restart_details> {
    null_check(details, "details")?;
    // SAFETY: non-NULL (checked above); a handle comes from ckpt_restart_info and stays valid until
    // ckpt_restart_details_free (the documented contract); it is never modified.
    Ok(unsafe { &*details })
}

/// The checkpoint restored: writes the file the restart reads (for a multi-rank checkpoint, its
/// manifest) to `*path_out` (owned by the handle, valid until `ckpt_restart_details_free`), its
/// generation (the N of `<name>.<N>`) to `*generation_out` and its application step (what was given to
/// `ckpt_checkpoint`) to `*step_out`; `generation_out` and `step_out` may be NULL.
///
/// Returns `CKPT_ERR_NULL_ARGUMENT` (nothing written) when `details` or `path_out` is NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_details_restored(
    details: *const ckpt_restart_details,
    path_out: *mut *const c_char,
    generation_out: *mut u64,
    step_out: *mut i64,
) -> i32 {
    guard(|| {
        let d = details_ref(details)?;
        null_check(path_out, "path_out")?;
        // SAFETY: path_out was checked non-NULL; the others are written only when non-NULL.
        unsafe {
            *path_out = d.path.as_ptr();
            if !generation_out.is_null() {
                *generation_out = d.generation;
            }
            if !step_out.is_null() {
                *step_out = d.step;
            }
        }
        Ok(CKPT_OK)
    })
}

/// Writes to `*count_out` how many files newer than the one restored were rejected (damaged,
/// incomplete, untrusted, another run's...): `ckpt_restart_details_rejected` reads them.
///
/// Returns `CKPT_ERR_NULL_ARGUMENT` (nothing written) when `details` or `count_out` is NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_details_rejected_count(
    details: *const ckpt_restart_details,
    count_out: *mut usize,
) -> i32 {
    guard(|| {
        let d = details_ref(details)?;
        null_check(count_out, "count_out")?;
        // SAFETY: count_out was checked non-NULL.
        unsafe { *count_out = d.rejected.len() };
        Ok(CKPT_OK)
    })
}

/// Rejected file `index` (0-based, newest first): writes its path to `*path_out`, why it was rejected to
/// `*reason_out` (both owned by the handle, valid until `ckpt_restart_details_free`), and the status code
/// of that reason (`CKPT_ERR_CORRUPT`, `CKPT_ERR_UNTRUSTED`, ...) to `*status_out`. `status_out` may be NULL.
///
/// Returns `CKPT_ERR_NULL_ARGUMENT` when `details`, `path_out` or `reason_out` is NULL and
/// `CKPT_ERR_INVALID_ARGUMENT` when `index` is not below the count of `ckpt_restart_details_rejected_count`;
/// nothing is written then. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_details_rejected(
    details: *const ckpt_restart_details,
    index: usize,
    path_out: *mut *const c_char,
    reason_out: *mut *const c_char,
    status_out: *mut i32,
) -> i32 {
    guard(|| {
        let d = details_ref(details)?;
        null_check(path_out, "path_out")?;
        null_check(reason_out, "reason_out")?;
        let (path, code, reason) = d.rejected.get(index).ok_or_else(|| {
            FfiError::new(
                CKPT_ERR_INVALID_ARGUMENT,
                format!("rejected file {index} does not exist (there are {})", d.rejected.len()),
            )
        })?;
        // SAFETY: path_out and reason_out were checked non-NULL; status_out is written only when non-NULL.
        unsafe {
            *path_out = path.as_ptr();
            *reason_out = reason.as_ptr();
            if !status_out.is_null() {
                *status_out = *code;
            }
        }
        Ok(CKPT_OK)
    })
}
