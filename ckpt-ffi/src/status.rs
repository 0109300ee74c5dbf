//! Status codes, the thread-local last-error message, and the panic boundary.

use std::cell::RefCell;
use std::ffi::{CString, c_char};

use ckpt_core::{Error, ErrorKind};

/// Success.
pub const CKPT_OK: i32 = 0;
/// An operating-system I/O call failed (the message names the file and the errno).
pub const CKPT_ERR_IO: i32 = -1;
/// A file or directory does not exist.
pub const CKPT_ERR_NOT_FOUND: i32 = -2;
/// A checkpoint file is damaged (bad magic, CRC mismatch, truncated...).
pub const CKPT_ERR_CORRUPT: i32 = -3;
/// A checkpoint file was written by a newer, unsupported format version.
pub const CKPT_ERR_UNSUPPORTED_VERSION: i32 = -4;
/// A size exceeds a limit.
pub const CKPT_ERR_TOO_LARGE: i32 = -5;
/// An argument or a configuration value is invalid (the message says which and why).
pub const CKPT_ERR_INVALID_ARGUMENT: i32 = -6;
/// Checkpoints exist but none verifies (the message lists every file and why).
pub const CKPT_ERR_NO_VALID_CHECKPOINT: i32 = -7;
/// Another process saved the same checkpoint name at the same time.
pub const CKPT_ERR_CONFLICT: i32 = -8;
/// A region or section is not in the checkpoint.
pub const CKPT_ERR_SECTION_NOT_FOUND: i32 = -9;
/// Encoding or decoding failed.
pub const CKPT_ERR_ENCODING: i32 = -10;
/// An operation was called in a state that does not allow it.
pub const CKPT_ERR_INVALID_STATE: i32 = -11;
/// A checkpoint was refused because someone other than this user could have written or replaced it
/// (another owner, writable by everyone, or in a directory everyone can write without the sticky bit);
/// the message names the file and why (see SECURITY.md).
pub const CKPT_ERR_UNTRUSTED: i32 = -12;
/// A pointer argument that must not be NULL was NULL.
pub const CKPT_ERR_NULL_ARGUMENT: i32 = -20;
/// `ckpt_init` has not been called (or `ckpt_finalize` was).
pub const CKPT_ERR_NOT_INITIALIZED: i32 = -21;
/// `ckpt_init` was called twice without `ckpt_finalize`.
pub const CKPT_ERR_ALREADY_INITIALIZED: i32 = -22;
/// No region is protected under this id.
pub const CKPT_ERR_UNKNOWN_REGION: i32 = -23;
/// A protected region's size differs from the size stored in the checkpoint (resize it first: see
/// `ckpt_restart_size`).
pub const CKPT_ERR_SIZE_MISMATCH: i32 = -24;
/// There is no checkpoint to restart from.
pub const CKPT_ERR_NO_CHECKPOINT: i32 = -25;
/// A caller's buffer is too small.
pub const CKPT_ERR_BUFFER_TOO_SMALL: i32 = -26;
/// A string argument is not valid UTF-8.
pub const CKPT_ERR_INVALID_UTF8: i32 = -27;
/// An MPI call failed (used by the header-only MPI helpers in `ckpt_mpi.h`; libckpt itself never
/// calls MPI).
pub const CKPT_ERR_MPI: i32 = -30;
/// An error this version of the library does not classify further.
pub const CKPT_ERR_OTHER: i32 = -98;
/// A bug: the library panicked (the panic was caught; the message says where). Please report it.
pub const CKPT_ERR_PANIC: i32 = -99;

/// An error on its way to C: a status code and a message.
pub(crate) struct FfiError {
    pub code: i32,
    pub message: String,
}

impl FfiError {
    pub fn new(code: i32, message: impl Into<String>) -> FfiError {
        FfiError { code, message: message.into() }
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> FfiError {
        FfiError { code: status_of(&e), message: e.to_string() }
    }
}

/// The status code of a library error.
pub(crate) fn status_of(e: &Error) -> i32 {
    match e.kind() {
        ErrorKind::Io => CKPT_ERR_IO,
        ErrorKind::NotFound => CKPT_ERR_NOT_FOUND,
        ErrorKind::Corrupt => CKPT_ERR_CORRUPT,
        ErrorKind::UnsupportedVersion => CKPT_ERR_UNSUPPORTED_VERSION,
        ErrorKind::TooLarge => CKPT_ERR_TOO_LARGE,
        ErrorKind::InvalidArgument => CKPT_ERR_INVALID_ARGUMENT,
        ErrorKind::NoValidCheckpoint => CKPT_ERR_NO_VALID_CHECKPOINT,
        ErrorKind::Conflict => CKPT_ERR_CONFLICT,
        ErrorKind::SectionNotFound => CKPT_ERR_SECTION_NOT_FOUND,
        ErrorKind::Encoding => CKPT_ERR_ENCODING,
        ErrorKind::InvalidState => CKPT_ERR_INVALID_STATE,
        ErrorKind::Untrusted => CKPT_ERR_UNTRUSTED,
        _ => CKPT_ERR_OTHER,
    }
}

pub(crate) type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The thread's last error message; valid until the next failing call on this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Runs an export's body: a returned error or a caught panic becomes a status code plus the thread's
/// last-error message; nothing unwinds into C.
pub(crate) fn guard(body: impl FnOnce() -> FfiResult<i32>) -> i32 {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.code
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (a bug in libckpt, please report it): {what}"));
            CKPT_ERR_PANIC
        }
    }
}

/// The fixed description of a status code.
pub(crate) fn describe(code: i32) -> &'static str {
    match code {
        CKPT_OK => "success\0",
        CKPT_ERR_IO => "I/O error\0",
        CKPT_ERR_NOT_FOUND => "not found\0",
        CKPT_ERR_CORRUPT => "corrupt checkpoint\0",
        CKPT_ERR_UNSUPPORTED_VERSION => "unsupported format version\0",
        CKPT_ERR_TOO_LARGE => "too large\0",
        CKPT_ERR_INVALID_ARGUMENT => "invalid argument\0",
        CKPT_ERR_NO_VALID_CHECKPOINT => "no valid checkpoint\0",
        CKPT_ERR_CONFLICT => "conflicting writer\0",
        CKPT_ERR_SECTION_NOT_FOUND => "region or section not in the checkpoint\0",
        CKPT_ERR_ENCODING => "encoding error\0",
        CKPT_ERR_INVALID_STATE => "invalid state\0",
        CKPT_ERR_UNTRUSTED => "untrusted checkpoint\0",
        CKPT_ERR_NULL_ARGUMENT => "NULL argument\0",
        CKPT_ERR_NOT_INITIALIZED => "ckpt_init has not been called\0",
        CKPT_ERR_ALREADY_INITIALIZED => "already initialized\0",
        CKPT_ERR_UNKNOWN_REGION => "unknown region id\0",
        CKPT_ERR_SIZE_MISMATCH => "region size differs from the checkpoint\0",
        CKPT_ERR_NO_CHECKPOINT => "no checkpoint to restart from\0",
        CKPT_ERR_BUFFER_TOO_SMALL => "buffer too small\0",
        CKPT_ERR_INVALID_UTF8 => "string is not valid UTF-8\0",
        CKPT_ERR_MPI => "an MPI call failed\0",
        CKPT_ERR_OTHER => "other error\0",
        CKPT_ERR_PANIC => "internal error (panic)\0",
        _ => "unknown status code\0",
    }
}
