//! Key/value strings stored in every checkpoint's header: `ckpt_set_metadata`, `ckpt_restart_metadata`.

use std::ffi::c_char;
use std::ptr;

use crate::restart::restored_checkpoint;

use crate::state::*;
use crate::status::*;

/// Adds (or replaces) a key/value string stored in the header of every later checkpoint (both strings are
/// copied; at most 1024 bytes of key). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_set_metadata(key: *const c_char, value: *const c_char) -> i32 {
    guard(|| {
        let key = c_str(key, "key", false)?.unwrap_or_default();
        let value = c_str(value, "value", false)?.unwrap_or_default();
        if key.is_empty() || key.len() > 1024 {
            return Err(FfiError::new(CKPT_ERR_INVALID_ARGUMENT, "a metadata key must be 1 to 1024 bytes"));
        }
        with_state(|s| {
            s.metadata.retain(|(k, _)| *k != key);
            s.metadata.push((key, value));
            Ok(CKPT_OK)
        })
    })
}

/// Copies the metadata value of `key` from the checkpoint a restart would use into `buf` (capacity `cap`
/// bytes, NUL-terminated) and writes its length without the NUL to `*len_out`. Returns
/// `CKPT_ERR_BUFFER_TOO_SMALL` (nothing written) when `cap` is not enough, `CKPT_ERR_SECTION_NOT_FOUND`
/// when the key is absent. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restart_metadata(key: *const c_char, buf: *mut c_char, cap: usize, len_out: *mut usize) -> i32 {
    guard(|| {
        let key = c_str(key, "key", false)?.unwrap_or_default();
        null_check(buf, "buf")?;
        null_check(len_out, "len_out")?;
        with_state(|s| {
            let cp = restored_checkpoint(s)?;
            let v = cp.metadata(&key).ok_or_else(|| {
                FfiError::new(CKPT_ERR_SECTION_NOT_FOUND, format!("{}: no metadata key {key:?}", cp.path().display()))
            })?;
            if v.len() + 1 > cap {
                return Err(FfiError::new(
                    CKPT_ERR_BUFFER_TOO_SMALL,
                    format!("metadata {key:?} needs {} bytes", v.len() + 1),
                ));
            }
            // SAFETY: buf is non-NULL with room for cap >= v.len() + 1 bytes (caller's contract); len_out
            // is non-NULL.
            unsafe {
                ptr::copy_nonoverlapping(v.as_ptr(), buf.cast::<u8>(), v.len());
                *buf.add(v.len()) = 0;
                *len_out = v.len();
            }
            Ok(CKPT_OK)
        })
    })
}
