//! Protected memory regions: `ckpt_protect`, `ckpt_unprotect`.

use std::ffi::c_void;

use crate::state::*;
use crate::status::*;

/// Registers `len` bytes at `ptr` as region `id` (any integer), to be saved by `ckpt_checkpoint` and
/// restored by `ckpt_restart`. Protecting an id again replaces its pointer and length (after a resize).
///
/// The memory stays owned by the caller and must remain valid until `ckpt_unprotect(id)` or
/// `ckpt_finalize`. `ptr` may be NULL only when `len` is 0. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_protect(id: i32, ptr: *mut c_void, len: usize) -> i32 {
    guard(|| {
        if ptr.is_null() && len != 0 {
            return Err(FfiError::new(CKPT_ERR_NULL_ARGUMENT, format!("region {id}: ptr is NULL but len is {len}")));
        }
        if len > isize::MAX as usize {
            return Err(FfiError::new(CKPT_ERR_TOO_LARGE, format!("region {id}: len {len} is too large")));
        }
        with_state(|s| {
            s.regions.insert(id, Region { ptr: ptr.cast(), len });
            Ok(CKPT_OK)
        })
    })
}

/// Forgets region `id`. Returns `CKPT_ERR_UNKNOWN_REGION` if it was not protected. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_unprotect(id: i32) -> i32 {
    guard(|| {
        with_state(|s| match s.regions.remove(&id) {
            Some(_) => Ok(CKPT_OK),
            None => Err(FfiError::new(CKPT_ERR_UNKNOWN_REGION, format!("region {id} is not protected"))),
        })
    })
}
