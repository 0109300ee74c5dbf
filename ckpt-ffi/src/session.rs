//! `ckpt_init` and `ckpt_finalize`: the process-wide checkpointer's life.

use std::collections::BTreeMap;
use std::ffi::c_char;
use std::ptr;
use std::sync::atomic::Ordering;

use ckpt_core::{Checkpointer, Store};

use crate::state::*;
use crate::status::*;

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
        *g = Some(State {
            checkpointer,
            regions: BTreeMap::new(),
            metadata: Vec::new(),
            restored: None,
            looked: false,
            step: None,
            staging: Default::default(),
            receiving: Vec::new(),
        });
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
