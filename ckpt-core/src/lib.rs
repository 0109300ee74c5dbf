#![doc = include_str!("guide.md")]
#![warn(missing_docs)]
// Every public fallible function says which `ErrorKind`s and when; every panic a caller could meet is
// documented (`cargo clippy` enforces both without `-W clippy::pedantic`).
#![warn(clippy::missing_errors_doc, clippy::missing_panics_doc)]
// `cargo clippy -p ckpt-core --all-targets -- -W clippy::pedantic` (the tests and examples too, with and
// without the `zstd` and `testing` features), reviewed group by group: what is not fixed is
// allowed here, each with why.
#![allow(
    clippy::must_use_candidate,
    clippy::return_self_not_must_use,
    reason = "#[must_use] is on the writers, the pending checkpoint and the getters whose result decides \
              something (should_checkpoint, should_exit, time_left...); the other candidates are plain accessors"
)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "lengths from the format are u64 checked against their caps before use and fit usize on the 64-bit \
              Linux targets the crate supports; float casts feed statistics (seconds, bandwidth, the Daly interval)"
)]
#![allow(
    clippy::too_many_lines,
    reason = "the long functions are protocols read top to bottom (commit, discovery, the watcher's loop)"
)]
#![allow(
    clippy::struct_excessive_bools,
    reason = "Config's settings are on/off switches, as the CKPT_* variables they mirror"
)]
#![allow(clippy::wildcard_imports, reason = "store's submodules share store/mod.rs's imports")]
#![allow(
    clippy::missing_fields_in_debug,
    reason = "Debug shows what identifies a value (paths, configuration), not buffers, handles and locks"
)]
#![allow(
    clippy::inline_always,
    reason = "the shuffle's per-width kernels are inlined into their loops on purpose (BENCHMARKS.md)"
)]
#![allow(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "the names compared are ckpt's own (`.ckpt`, `.sock`), always written in lower case"
)]
#![allow(
    clippy::borrow_as_ptr,
    clippy::ref_as_ptr,
    reason = "arguments of system calls inside reviewed unsafe blocks (each with its SAFETY comment)"
)]

// The README's Rust example is compiled as a test, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

mod async_save;
mod checkpointer;
mod config;
mod copy;
// The control socket and request files: shared with the faces (`ckpt create` in ckpt-cli and ckpt-image),
// not part of the library's API.
#[doc(hidden)]
pub mod control;
mod discovery;
mod error;
mod events;
mod flusher;
pub mod format;
pub mod identity;
pub mod levels;
mod reader;
mod step;
pub mod storage;
mod store;
mod sys;
mod timefmt;
pub mod triggers;
pub mod trust;
mod typed;
mod writer;
#[cfg(not(feature = "zstd"))]
mod zstd_stub;

pub use checkpointer::{Checkpointer, PendingCheckpoint, TriggerView};
pub use config::{
    Config, ConfigBuilder, DEFAULT_APP_NAME, DEFAULT_FILE_MODE, DEFAULT_KEEP, Interval, LogTarget, base_name,
    parse_ckpt_interval, parse_interval,
};
// Helpers the faces share (the CLI's settings table, listings and names; the shim's image discovery): not
// part of the library's API.
#[doc(hidden)]
pub use config::{SETTINGS, hostname};
pub use discovery::{Candidate, CandidateStatus, Discovery, Restored, Step};
pub use error::{Error, ErrorKind, Result};
pub use format::{Codec, ElementType, Encoding, FileKind, Header, ManifestEntry, SectionEntry};
pub use levels::{CacheLevel, FlushPolicy, Level};
#[doc(hidden)]
pub use reader::read_header;
pub use reader::{Checkpoint, LoadOptions, SectionData};
pub use step::MAX_STEP;
pub use store::{CheckpointWriter, CommitInfo, PartCopy, PartIdentity, PartReceiver, Store, begin_file};
#[doc(hidden)]
pub use store::{NameKind, any_base, classify, parse_manifest};
pub use timefmt::{ACCEPTED_FORMS, parse_slurm_time, parse_time_with_units};
// `auto_choice` is for the benchmarks (the cost of `auto`'s decision), not part of the API.
#[doc(hidden)]
pub use writer::auto_choice;
pub use writer::{Compression, FileStats, SectionOptions, SectionWriter};

/// This library's version, as recorded in every file it writes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// (major, minor, patch) of this library.
#[doc(hidden)]
pub fn writer_version() -> (u16, u16, u16) {
    let mut it = VERSION.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u16>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}
