//! libckpt: the C ABI of ckpt, for C, Fortran and MPI codes.
//!
//! One checkpointer per process (like SCR, VeloC and FTI): `ckpt_init` reads the environment (the
//! `SLURM_*`/`CKPT_*` variables, see the README) and installs the signal handlers; the program registers
//! memory regions with `ckpt_protect`, asks `ckpt_should_checkpoint` at its safe points, writes them all
//! with `ckpt_checkpoint`, and after a restart reads them back with `ckpt_restart`.
//!
//! Conventions (the header repeats them):
//! * Every fallible function returns an `int32_t` status: `CKPT_OK` (0) or a negative `CKPT_ERR_*` code.
//!   Codes are stable and never reused. `ckpt_last_error()` gives this thread's message for the last
//!   failure (naming the file, the region and the problem); `ckpt_status_str(code)` a fixed description.
//! * Out-parameters (`*_out`) are written only on success.
//! * A NULL pointer where one is required gives `CKPT_ERR_NULL_ARGUMENT`, never a crash. No Rust panic
//!   crosses the boundary: it becomes `CKPT_ERR_PANIC`.
//! * Strings are NUL-terminated UTF-8; the library copies what it keeps.
//! * Thread safety: every function may be called from any thread; calls are serialised internally, except
//!   `ckpt_should_checkpoint`/`ckpt_should_exit`, which are lock-free. Protected memory must not be
//!   modified by other threads while `ckpt_checkpoint` or `ckpt_restart` runs.
//! * libckpt exports only `ckpt_*` symbols and links neither MPI nor Python; `ckpt_mpi.h` (header-only)
//!   adds the collective calls.

#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod status;

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_void};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ckpt_core::storage::FileStorage;
use ckpt_core::{Checkpoint, Checkpointer, Config, Restored, SectionOptions, Store, TriggerView};

pub use status::*;
use status::{FfiError, FfiResult, guard};

/// A registered memory region: owned by the C caller, which promises it stays valid while protected.
struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Region is only a record of the caller's pointer; it is dereferenced only inside calls made by
// the caller (under the global lock), as the API documents. Moving the record between threads is sound.
unsafe impl Send for Region {}

struct State {
    checkpointer: Checkpointer,
    regions: BTreeMap<i32, Region>,
    metadata: Vec<(String, String)>,
    /// The checkpoint chosen by `ckpt_have_restart` (verified), reused by `ckpt_restart`.
    restored: Option<Restored>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
/// Settings given before `ckpt_init`, by environment-variable name; they take precedence over the
/// environment.
static OVERRIDES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// Lock-free view of the trigger flags for `ckpt_should_checkpoint`. A view is never freed, since a
/// reader on another thread may still hold it after `ckpt_finalize`; every view ever created stays
/// reachable from `VIEWS` (one small allocation per `ckpt_init`).
static VIEW: AtomicPtr<TriggerView> = AtomicPtr::new(ptr::null_mut());
static VIEWS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn with_state<T>(f: impl FnOnce(&mut State) -> FfiResult<T>) -> FfiResult<T> {
    let mut g = lock(&STATE);
    match g.as_mut() {
        Some(s) => f(s),
        None => Err(FfiError::new(CKPT_ERR_NOT_INITIALIZED, "ckpt_init has not been called")),
    }
}

/// Reads a C string argument. NULL gives `None` when `optional`, otherwise `CKPT_ERR_NULL_ARGUMENT`.
fn c_str(p: *const c_char, what: &str, optional: bool) -> FfiResult<Option<String>> {
    if p.is_null() {
        return if optional { Ok(None) } else { Err(FfiError::new(CKPT_ERR_NULL_ARGUMENT, format!("{what} is NULL"))) };
    }
    // SAFETY: non-NULL (checked above); the API requires a NUL-terminated string that stays valid for the
    // duration of the call.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(|s| Some(s.to_string()))
        .map_err(|_| FfiError::new(CKPT_ERR_INVALID_UTF8, format!("{what} is not valid UTF-8")))
}

fn null_check<T>(p: *const T, what: &str) -> FfiResult<()> {
    if p.is_null() { Err(FfiError::new(CKPT_ERR_NULL_ARGUMENT, format!("{what} is NULL"))) } else { Ok(()) }
}

fn config_from_env(name: Option<&str>) -> FfiResult<Config> {
    let overrides = lock(&OVERRIDES).clone();
    Ok(Config::from_lookup(name, |k| {
        overrides.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone()).or_else(|| std::env::var(k).ok())
    })?)
}

fn section_name(id: i32) -> String {
    format!("region.{id}")
}

/// Initialises the process-wide checkpointer. `name` is the application name used outside Slurm (it
/// stands in for the job id in file names); NULL means the default (`CKPT_NAME`, `SLURM_JOB_NAME` or
/// "ckpt"). Reads the environment and the settings given with `ckpt_set_config`, installs the signal
/// handlers (chained after existing ones) and starts the watcher thread.
///
/// Returns `CKPT_ERR_ALREADY_INITIALIZED` when called twice, `CKPT_ERR_INVALID_ARGUMENT` for a malformed
/// setting (the message names the variable). `name` is copied. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_init(name: *const c_char) -> i32 {
    guard(|| {
        let name = c_str(name, "name", true)?;
        let mut g = lock(&STATE);
        if g.is_some() {
            return Err(FfiError::new(CKPT_ERR_ALREADY_INITIALIZED, "ckpt_init was already called"));
        }
        let config = config_from_env(name.as_deref())?;
        let checkpointer = Checkpointer::new(Store::new(config))?;
        let view = Box::into_raw(Box::new(checkpointer.trigger_view()));
        lock(&VIEWS).push(view as usize);
        VIEW.store(view, Ordering::SeqCst);
        *g = Some(State { checkpointer, regions: BTreeMap::new(), metadata: Vec::new(), restored: None });
        Ok(CKPT_OK)
    })
}

/// Shuts the checkpointer down: removes the signal handlers (restoring the chain), stops the watcher
/// thread, forgets the protected regions (their memory stays the caller's). Writes nothing.
///
/// Returns `CKPT_ERR_NOT_INITIALIZED` if not initialised. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_finalize() -> i32 {
    guard(|| {
        let state = lock(&STATE).take();
        match state {
            None => Err(FfiError::new(CKPT_ERR_NOT_INITIALIZED, "ckpt_init has not been called")),
            Some(s) => {
                // The view stays allocated (a reader may still hold it); later calls see NULL.
                VIEW.store(ptr::null_mut(), Ordering::SeqCst);
                drop(s);
                Ok(CKPT_OK)
            }
        }
    })
}

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

fn write_regions(s: &State, w: &mut ckpt_core::CheckpointWriter) -> ckpt_core::Result<()> {
    for (k, v) in &s.metadata {
        w.set_metadata(k, v)?;
    }
    for (&id, r) in &s.regions {
        let data: &[u8] = if r.len == 0 {
            &[]
        } else {
            // SAFETY: ckpt_protect checked ptr is non-NULL for len > 0; the caller guarantees the region is
            // valid and not modified concurrently while protected (documented contract).
            unsafe { std::slice::from_raw_parts(r.ptr, r.len) }
        };
        let opts = SectionOptions::new().compression(s.checkpointer.config().compression).tag(id as u32);
        w.add_section_with(&section_name(id), data, opts)?;
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

fn find_restart(s: &mut State) -> FfiResult<()> {
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

fn restored_checkpoint(s: &mut State) -> FfiResult<&Checkpoint> {
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
                unsafe { *step_out = restored.app_step.cast_signed() };
            }
            Ok(CKPT_OK)
        })
    })
}

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

/// Sets a configuration value before `ckpt_init`, by the name of the environment variable it mirrors
/// (`CKPT_DIR`, `CKPT_RESTART_DIR`, `CKPT_INTERVAL`, `CKPT_KEEP`, `CKPT_SIGNALS`, `CKPT_COMPRESS`,
/// `CKPT_END_TIME`, `CKPT_MARGIN`, `CKPT_RANK`, `CKPT_NRANKS`, ...; see the README). It takes precedence
/// over the environment. A NULL `value` removes an earlier setting. The value is checked at `ckpt_init`.
///
/// Returns `CKPT_ERR_INVALID_STATE` after `ckpt_init`, `CKPT_ERR_INVALID_ARGUMENT` for a name that is not
/// a ckpt setting (a misspelled `CKPT_*` name) or a Slurm one. Copies both strings. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_set_config(name: *const c_char, value: *const c_char) -> i32 {
    guard(|| {
        let name = c_str(name, "name", false)?.unwrap_or_default();
        let value = c_str(value, "value", true)?;
        if !(name.starts_with("CKPT_") || name.starts_with("SLURM_")) || name.contains('=') {
            return Err(FfiError::new(
                CKPT_ERR_INVALID_ARGUMENT,
                format!("{name:?} is not a CKPT_* or SLURM_* setting"),
            ));
        }
        // A misspelled setting would otherwise be accepted and never read.
        if name.starts_with("CKPT_") && !ckpt_core::SETTINGS.contains(&name.as_str()) {
            return Err(FfiError::new(
                CKPT_ERR_INVALID_ARGUMENT,
                format!("{name} is not a ckpt setting (the settings: {})", ckpt_core::SETTINGS.join(", ")),
            ));
        }
        if lock(&STATE).is_some() {
            return Err(FfiError::new(CKPT_ERR_INVALID_STATE, format!("{name} must be set before ckpt_init")));
        }
        let mut o = lock(&OVERRIDES);
        o.retain(|(k, _)| *k != name);
        if let Some(v) = value {
            o.push((name, v));
        }
        Ok(CKPT_OK)
    })
}

/// Sets this process's rank and the number of ranks before `ckpt_init` (the MPI helpers call it with
/// `MPI_Comm_rank`/`MPI_Comm_size`, which beats guessing from launcher variables).
///
/// Returns `CKPT_ERR_INVALID_ARGUMENT` unless `0 <= rank < nranks`, `CKPT_ERR_INVALID_STATE` after
/// `ckpt_init`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_set_rank(rank: i32, nranks: i32) -> i32 {
    guard(|| {
        if rank < 0 || nranks < 1 || rank >= nranks {
            return Err(FfiError::new(CKPT_ERR_INVALID_ARGUMENT, format!("rank {rank} of {nranks} is not valid")));
        }
        if lock(&STATE).is_some() {
            return Err(FfiError::new(CKPT_ERR_INVALID_STATE, "the rank must be set before ckpt_init"));
        }
        let mut o = lock(&OVERRIDES);
        o.retain(|(k, _)| k != "CKPT_RANK" && k != "CKPT_NRANKS");
        o.push(("CKPT_RANK".into(), rank.to_string()));
        o.push(("CKPT_NRANKS".into(), nranks.to_string()));
        Ok(CKPT_OK)
    })
}

/// Writes this process's rank and the number of ranks as the checkpointer sees them. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_rank_info(rank_out: *mut i32, nranks_out: *mut i32) -> i32 {
    guard(|| {
        null_check(rank_out, "rank_out")?;
        null_check(nranks_out, "nranks_out")?;
        with_state(|s| {
            let c = s.checkpointer.config();
            // SAFETY: both pointers were checked non-NULL.
            unsafe {
                *rank_out = c.rank as i32;
                *nranks_out = c.nranks as i32;
            }
            Ok(CKPT_OK)
        })
    })
}

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

/// Writes to `*generation_out` the generation number the next checkpoint of this process would use. MPI
/// helpers agree on the maximum over ranks and pass it to `ckpt_checkpoint_part`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_next_generation(generation_out: *mut u64) -> i32 {
    guard(|| {
        null_check(generation_out, "generation_out")?;
        with_state(|s| {
            let g = s.checkpointer.store().next_generation()?;
            // SAFETY: checked non-NULL.
            unsafe { *generation_out = g };
            Ok(CKPT_OK)
        })
    })
}

/// Writes this rank's part of multi-rank `generation` (all protected regions) durably. The step exists
/// only once rank 0 has committed it after every rank's part is durable (`ckpt_mpi.h`: a gather of the
/// parts' identities, `ckpt_get_part_identity`, then `ckpt_commit_step_parts` on rank 0; without them,
/// `ckpt_commit_step`); every rank then calls `ckpt_finish_step` with the outcome. Resets
/// `ckpt_should_checkpoint`; a negative `step` is `CKPT_ERR_INVALID_ARGUMENT`. Thread-safe, but protected
/// memory must not change during the call.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_checkpoint_part(generation: u64, step: i64) -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.checkpoint_part(generation, step, |w| write_regions(s, w))?;
            Ok(CKPT_OK)
        })
    })
}

/// Tells this rank whether the multi-rank step of its last `ckpt_checkpoint_part` was committed
/// (`committed` non-zero) or not (0), as agreed by all ranks. Committed: `ckpt_should_exit` turns 1 if the
/// checkpoint was asked to be the last, `ckpt create` requests are answered, and this rank removes its own
/// parts of the generations the step retired (beyond CKPT_KEEP). Not committed: whatever
/// triggered the part (a signal, the time limit) is due again, so `ckpt_should_checkpoint` turns 1 and
/// the step can be retried; requests get the error. A no-op when no part is pending. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_finish_step(committed: i32) -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.finish_step(committed != 0);
            Ok(CKPT_OK)
        })
    })
}

/// Requests a checkpoint as a signal would: `ckpt_should_checkpoint` turns 1, and with `exit` non-zero
/// `ckpt_should_exit` turns 1 after the next checkpoint. For programs with their own triggers, and for
/// wrappers that must re-arm a request. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_request_checkpoint(exit: i32) -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.request_checkpoint(exit != 0);
            Ok(CKPT_OK)
        })
    })
}

/// Commits multi-rank `generation` after every rank's part is durable: checks every part and writes the
/// step's manifest (call on one rank, normally 0, after a barrier). A negative `step` is
/// `CKPT_ERR_INVALID_ARGUMENT`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_commit_step(generation: u64, step: i64) -> i32 {
    guard(|| {
        with_state(|s| {
            s.checkpointer.store().commit_step(generation, step)?;
            Ok(CKPT_OK)
        })
    })
}

/// What a rank's durable part of a multi-rank step is, as the rank that wrote it knows it (the manifest
/// records it): `ckpt_get_part_identity` fills it on each rank, an MPI gather brings every rank's to rank
/// 0, and `ckpt_commit_step_parts` commits the step from them without opening one file per rank. Plain
/// data (40 bytes, no padding), the same on every rank of a job.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct ckpt_part_identity {
    /// The part's generation.
    pub generation: u64,
    /// The application step it holds.
    pub step: i64,
    /// Its length in bytes.
    pub file_len: u64,
    /// The rank that wrote it.
    pub rank: u32,
    /// The number of ranks it was written for.
    pub nranks: u32,
    /// CRC32 of its header.
    pub header_crc32: u32,
    /// CRC32 of its section table.
    pub table_crc32: u32,
}

impl From<ckpt_core::PartIdentity> for ckpt_part_identity {
    fn from(p: ckpt_core::PartIdentity) -> Self {
        ckpt_part_identity {
            generation: p.generation,
            step: p.app_step.cast_signed(),
            file_len: p.file_len,
            rank: p.rank,
            nranks: p.nranks,
            header_crc32: p.header_crc32,
            table_crc32: p.table_crc32,
        }
    }
}

impl From<ckpt_part_identity> for ckpt_core::PartIdentity {
    fn from(p: ckpt_part_identity) -> Self {
        ckpt_core::PartIdentity {
            generation: p.generation,
            // Bit for bit, as the other way; `ckpt_commit_step_parts` refuses negative steps first.
            app_step: p.step.cast_unsigned(),
            file_len: p.file_len,
            rank: p.rank,
            nranks: p.nranks,
            header_crc32: p.header_crc32,
            table_crc32: p.table_crc32,
        }
    }
}

/// Writes to `*identity_out` the identity of this rank's part of `generation`, written durably by this
/// process's `ckpt_checkpoint_part` (CKPT_ERR_INVALID_STATE when it wrote none). For gathering to rank 0
/// before `ckpt_commit_step_parts`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_get_part_identity(generation: u64, identity_out: *mut ckpt_part_identity) -> i32 {
    guard(|| {
        null_check(identity_out, "identity_out")?;
        with_state(|s| {
            let Some(identity) = s.checkpointer.store().part_identity(generation) else {
                return Err(FfiError::new(
                    CKPT_ERR_INVALID_STATE,
                    format!("this process has no durable part of generation {generation}"),
                ));
            };
            // SAFETY: checked non-NULL; the caller provides a writable ckpt_part_identity.
            unsafe { *identity_out = identity.into() };
            Ok(CKPT_OK)
        })
    })
}

/// Commits multi-rank `generation` of application step `step` from `parts`, an array of `nparts`
/// identities indexed by rank (`parts[r]` from rank r's `ckpt_get_part_identity`), after every rank's
/// part is durable: writes the step's manifest without opening the parts (`ckpt_commit_step` opens
/// every one). Call on one rank, normally 0. Each rank then removes its own parts that the step retires
/// when `ckpt_finish_step(1)` tells it the outcome. CKPT_ERR_INVALID_ARGUMENT when `nparts` is not the
/// number of ranks or a step is negative; CKPT_ERR_INVALID_STATE when an identity is not its rank's part of this generation and
/// step. `parts` is read during the call only. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_commit_step_parts(
    generation: u64,
    step: i64,
    parts: *const ckpt_part_identity,
    nparts: usize,
) -> i32 {
    guard(|| {
        null_check(parts, "parts")?;
        if !parts.is_aligned() {
            return Err(FfiError::new(CKPT_ERR_INVALID_ARGUMENT, "parts is not aligned for ckpt_part_identity"));
        }
        if nparts > (1 << 24) {
            return Err(FfiError::new(CKPT_ERR_INVALID_ARGUMENT, format!("nparts {nparts} is not a number of ranks")));
        }
        // SAFETY: non-NULL and aligned (checked); the caller provides nparts readable structs for the call.
        let parts = unsafe { std::slice::from_raw_parts(parts, nparts) };
        if let Some((r, p)) = parts.iter().enumerate().find(|(_, p)| p.step < 0) {
            return Err(FfiError::new(
                CKPT_ERR_INVALID_ARGUMENT,
                format!("parts[{r}].step {} is negative: steps are 0 or more", p.step),
            ));
        }
        let parts: Vec<ckpt_core::PartIdentity> = parts.iter().map(|&p| p.into()).collect();
        with_state(|s| {
            s.checkpointer.store().commit_step_with_parts(generation, step, &parts)?;
            Ok(CKPT_OK)
        })
    })
}

/// Writes to `*generation_out` the newest generation, at most `max_generation`, that this rank can
/// restart from (manifest and own part verified), or 0 when there is none (also when checkpoints exist
/// but none is valid: `ckpt_have_restart` tells those cases apart). The generation found is also selected
/// for `ckpt_restart`, already verified. MPI helpers take the minimum over ranks and call
/// `ckpt_select_generation`, which reuses that verification when the agreed generation is this one.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_newest_valid_generation(max_generation: u64, generation_out: *mut u64) -> i32 {
    guard(|| {
        null_check(generation_out, "generation_out")?;
        with_state(|s| {
            let r = s.checkpointer.store().restore_at_most(max_generation);
            let g = match r {
                Ok(Some(r)) => {
                    // Keep the verified checkpoint: the agreed generation is usually this one, and
                    // ckpt_select_generation / ckpt_restart then need not verify it again.
                    let g = r.generation;
                    s.restored = Some(r);
                    g
                }
                Ok(None) => 0,
                Err(e) if e.kind() == ckpt_core::ErrorKind::NoValidCheckpoint => 0,
                Err(e) => return Err(e.into()),
            };
            // SAFETY: checked non-NULL.
            unsafe { *generation_out = g };
            Ok(CKPT_OK)
        })
    })
}

/// Selects exactly `generation` for the next `ckpt_restart`/`ckpt_restart_size` (verifying it), and
/// writes its step to `*step_out` (may be NULL). Returns `CKPT_ERR_NO_CHECKPOINT` when this rank cannot
/// read that generation. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_select_generation(generation: u64, step_out: *mut i64) -> i32 {
    guard(|| {
        with_state(|s| {
            if let Some(r) = s.restored.as_ref().filter(|r| r.generation == generation) {
                if !step_out.is_null() {
                    // SAFETY: non-NULL, checked.
                    unsafe { *step_out = r.app_step.cast_signed() };
                }
                return Ok(CKPT_OK);
            }
            let r = s.checkpointer.store().restore_at_most(generation);
            let r = match r {
                Ok(Some(r)) if r.generation == generation => r,
                Ok(_) | Err(_) => {
                    s.restored = None;
                    return Err(FfiError::new(
                        CKPT_ERR_NO_CHECKPOINT,
                        format!("generation {generation} is not readable on this rank"),
                    ));
                }
            };
            if !step_out.is_null() {
                // SAFETY: non-NULL, checked.
                unsafe { *step_out = r.app_step.cast_signed() };
            }
            s.restored = Some(r);
            Ok(CKPT_OK)
        })
    })
}

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
                    .map(|(p, e)| (path_c_string(p), status::status_of(e), c_string(e.to_string().as_bytes())))
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
