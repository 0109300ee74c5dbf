//! One buffer saved to and loaded from a path the program names, without `ckpt_init`: `ckpt_save_buffer`,
//! `ckpt_buffer_size`, `ckpt_load_buffer`.

use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::sync::Arc;

use ckpt_core::storage::FileStorage;
use ckpt_core::{Checkpoint, SectionOptions};

use crate::state::*;
use crate::status::*;

fn path_arg(path: *const c_char) -> FfiResult<PathBuf> {
    let p = c_str(path, "path", false)?.unwrap_or_default();
    if p.is_empty() {
        return Err(FfiError::new(CKPT_ERR_INVALID_ARGUMENT, "path is empty"));
    }
    Ok(PathBuf::from(p))
}

/// Saves one buffer to exactly `path`, atomically and durably (temporary file in the same directory,
/// fsync, rename, fsync of the directory), as a checkpoint file with one section "buffer". The file it
/// replaces, when 16 MiB or more, is kept as `<path>.tmp.spare` and the next save writes over its blocks
/// (unless something has it open or mapped; `CKPT_REUSE_SPACE=0` turns this off). Needs no
/// `ckpt_init`. `buf` may be NULL only when `len` is 0; a negative `step` is `CKPT_ERR_INVALID_ARGUMENT`.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_save_buffer(path: *const c_char, buf: *const c_void, len: usize, step: i64) -> i32 {
    guard(|| {
        let path = path_arg(path)?;
        if buf.is_null() && len != 0 {
            return Err(FfiError::new(CKPT_ERR_NULL_ARGUMENT, "buf is NULL but len is not 0"));
        }
        let data: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: non-NULL for len > 0 (checked); the caller provides len readable bytes for the call.
            unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }
        };
        let config = config_from_env(None)?;
        let mut w = ckpt_core::begin_file(&path, step, &config, Arc::new(FileStorage))?;
        w.add_section_with("buffer", data, SectionOptions::new().compression(config.compression))?;
        w.commit()?;
        Ok(CKPT_OK)
    })
}

/// Opens a file a C program names (`ckpt_load_buffer`, `ckpt_buffer_size`): with the configuration's
/// settings (`CKPT_MMAP`, including `ckpt_set_config`'s), and only when the trust rules allow it.
fn open_explicit(path: &std::path::Path) -> FfiResult<Checkpoint> {
    let config = config_from_env(None)?;
    let cp = Checkpoint::open_with(&FileStorage, path, ckpt_core::LoadOptions::new().mmap(config.mmap))?;
    ckpt_core::trust::check(&cp)?;
    Ok(cp)
}

/// Writes to `*len_out` the size of the buffer saved in `path` by `ckpt_save_buffer` (after verifying the
/// whole file). Returns `CKPT_ERR_UNTRUSTED` when someone else could have written the file (another owner,
/// world-writable, or in a world-writable directory without the sticky bit; see SECURITY.md). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_buffer_size(path: *const c_char, len_out: *mut usize) -> i32 {
    guard(|| {
        let path = path_arg(path)?;
        null_check(len_out, "len_out")?;
        let cp = open_explicit(&path)?;
        cp.verify()?;
        let len = cp.section("buffer")?.raw_len as usize;
        // SAFETY: len_out was checked non-NULL.
        unsafe { *len_out = len };
        Ok(CKPT_OK)
    })
}

/// Loads the buffer saved in `path` by `ckpt_save_buffer` into `buf` (capacity `cap` bytes), verifying
/// every CRC, and writes its length to `*len_out` and its step to `*step_out` (may be NULL). Returns
/// `CKPT_ERR_BUFFER_TOO_SMALL` (nothing written) when `cap` is too small, and `CKPT_ERR_UNTRUSTED`
/// (nothing written) when someone else could have written the file (see `ckpt_buffer_size`). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_load_buffer(
    path: *const c_char,
    buf: *mut c_void,
    cap: usize,
    len_out: *mut usize,
    step_out: *mut i64,
) -> i32 {
    guard(|| {
        let path = path_arg(path)?;
        null_check(len_out, "len_out")?;
        if buf.is_null() && cap != 0 {
            return Err(FfiError::new(CKPT_ERR_NULL_ARGUMENT, "buf is NULL but cap is not 0"));
        }
        let cp = open_explicit(&path)?;
        cp.verify()?;
        let len = cp.section("buffer")?.raw_len as usize;
        if len > cap {
            return Err(FfiError::new(
                CKPT_ERR_BUFFER_TOO_SMALL,
                format!("{}: the buffer needs {len} bytes, cap is {cap}", path.display()),
            ));
        }
        let dst: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: buf is non-NULL (cap >= len > 0) with cap writable bytes (caller's contract).
            unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) }
        };
        cp.read_into("buffer", dst)?;
        // SAFETY: len_out checked non-NULL; step_out written only when non-NULL.
        unsafe {
            *len_out = len;
            if !step_out.is_null() {
                *step_out = cp.step().cast_signed();
            }
        }
        Ok(CKPT_OK)
    })
}
