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

// cbindgen writes the header's functions in the order of these `mod` lines, then in each file's order
// (the committed include/ckpt.h must not change): a new function goes where the header should list
// it. The blank lines keep rustfmt from sorting the modules.

// Status codes, the last error and the panic boundary (`guard`).
mod status;

// The process-wide state and the helpers that read arguments.
mod state;

// ckpt_init, ckpt_finalize.
mod session;

// Protected memory: ckpt_protect, ckpt_unprotect.
mod regions;

// The triggers' lock-free flags and ckpt_checkpoint.
mod checkpoint;

// ckpt_have_restart, ckpt_restart_size, ckpt_restart.
mod restart;

// ckpt_last_error, ckpt_status_str, ckpt_version.
mod errors;

// Settings before ckpt_init, and the rank.
mod config;

// Key/value strings in the checkpoint's header.
mod metadata;

// One buffer to and from a named file (no ckpt_init).
mod buffer;

// Multi-rank steps (the calls under ckpt_mpi.h).
mod multirank;

// ckpt_restart_info and its details handle.
mod restart_info;

// Asynchronous checkpoints: ckpt_checkpoint_async, ckpt_checkpoint_part_async, ckpt_checkpoint_wait.
mod asynchronous;

// Restart on another number of ranks: ckpt_restart_step, ckpt_restart_part and their sizes.
mod restart_parts;

// The cache level in multi-rank steps: ckpt_has_cache_level, ckpt_record_step_parts.
mod levels;

mod partner;

pub use asynchronous::*;
pub use buffer::*;
pub use checkpoint::*;
pub use config::*;
pub use errors::*;
pub use levels::*;
pub use metadata::*;
pub use multirank::*;
pub use partner::*;
pub use regions::*;
pub use restart::*;
pub use restart_info::*;
pub use restart_parts::*;
pub use session::*;
pub use status::*;
