//! The process-wide state behind the C ABI (the checkpointer, the protected regions, the settings given
//! before `ckpt_init`, the lock-free trigger view) and the helpers every export uses to reach it and to
//! read its arguments.

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char};
use std::ptr;
use std::sync::atomic::AtomicPtr;
use std::sync::{Mutex, MutexGuard};

use ckpt_core::{Checkpointer, Config, Restored, TriggerView};

use crate::regions::RegionKey;
use crate::status::*;

/// A registered memory region: owned by the C caller, which promises it stays valid while protected.
pub(crate) struct Region {
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
}

// SAFETY: a Region is only a record of the caller's pointer; it is dereferenced only inside calls made by
// the caller (under the global lock), as the API documents. Moving the record between threads is sound.
unsafe impl Send for Region {}

pub(crate) struct State {
    pub(crate) checkpointer: Checkpointer,
    pub(crate) regions: BTreeMap<RegionKey, Region>,
    pub(crate) metadata: Vec<(String, String)>,
    /// The checkpoint chosen by `ckpt_have_restart` (verified), reused by `ckpt_restart`.
    pub(crate) restored: Option<Restored>,
    /// Whether restart discovery ran since `ckpt_init` (`restored` is its answer, `None` included): then
    /// `ckpt_restart` reads what it chose instead of looking again.
    pub(crate) looked: bool,
    /// The step `ckpt_restart_step` chose, and the parts read from it so far (each verified once).
    pub(crate) step: Option<(ckpt_core::Step, std::collections::BTreeMap<u32, ckpt_core::Checkpoint>)>,
    /// Staging buffers of asynchronous checkpoints, kept for the next one.
    pub(crate) staging: crate::asynchronous::StagingPool,
    /// Parts being received from other nodes (`ckpt_part_copy_write`), until committed.
    pub(crate) receiving: Vec<ckpt_core::PartReceiver>,
}

pub(crate) static STATE: Mutex<Option<State>> = Mutex::new(None);
/// Settings given before `ckpt_init`, by environment-variable name; they take precedence over the
/// environment.
pub(crate) static OVERRIDES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// Lock-free view of the trigger flags for `ckpt_should_checkpoint`. A view is never freed, since a
/// reader on another thread may still hold it after `ckpt_finalize`; every view ever created stays
/// reachable from `VIEWS` (one small allocation per `ckpt_init`).
pub(crate) static VIEW: AtomicPtr<TriggerView> = AtomicPtr::new(ptr::null_mut());
pub(crate) static VIEWS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn with_state<T>(f: impl FnOnce(&mut State) -> FfiResult<T>) -> FfiResult<T> {
    let mut g = lock(&STATE);
    match g.as_mut() {
        Some(s) => f(s),
        None => Err(FfiError::new(CKPT_ERR_NOT_INITIALIZED, "ckpt_init has not been called")),
    }
}

/// Reads a C string argument. NULL gives `None` when `optional`, otherwise `CKPT_ERR_NULL_ARGUMENT`.
pub(crate) fn c_str(p: *const c_char, what: &str, optional: bool) -> FfiResult<Option<String>> {
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

pub(crate) fn null_check<T>(p: *const T, what: &str) -> FfiResult<()> {
    if p.is_null() { Err(FfiError::new(CKPT_ERR_NULL_ARGUMENT, format!("{what} is NULL"))) } else { Ok(()) }
}

pub(crate) fn config_from_env(name: Option<&str>) -> FfiResult<Config> {
    let overrides = lock(&OVERRIDES).clone();
    Ok(Config::from_lookup(name, |k| {
        overrides.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone()).or_else(|| std::env::var(k).ok())
    })?)
}

pub(crate) fn section_name(id: i32) -> String {
    format!("region.{id}")
}
