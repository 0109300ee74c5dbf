//! Settings given before `ckpt_init` (`ckpt_set_config`, `ckpt_set_rank`) and the rank as the
//! checkpointer sees it (`ckpt_rank_info`).

use std::ffi::c_char;

use crate::state::*;
use crate::status::*;

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
