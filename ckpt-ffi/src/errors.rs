//! Strings the library owns: this thread's last error (`ckpt_last_error`), the fixed description of a
//! status code (`ckpt_status_str`) and the version (`ckpt_version`). The status codes themselves and the
//! panic boundary are in `status.rs`.

use std::ffi::c_char;

use crate::status;

/// This thread's message for the last failed call: names the file, the region and the problem. Never
/// NULL (an empty string when nothing failed yet). The string is owned by the library and valid until
/// the next failing call on the same thread.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_last_error() -> *const c_char {
    status::last_error_ptr()
}

/// A fixed, static description of a status code (never NULL; "unknown status code" for unknown values).
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_status_str(status: i32) -> *const c_char {
    status::describe(status).as_ptr().cast()
}

/// The library version, e.g. "0.1.0" (static string, never NULL; see also `CKPT_VERSION_*`).
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
