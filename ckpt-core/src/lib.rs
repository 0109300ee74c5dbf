//! Durable, atomic, verified checkpoint files with restart discovery, for HPC and ML jobs.
//!
//! `ckpt-core` writes a program's state to a self-describing file (magic, version, section table, a
//! CRC-32 per section and over the header and table, optional zstd per section, raw sections 4 KiB
//! aligned for memory mapping; see FORMAT.md and [`format`](mod@format)) and commits it so that a crash at any instant
//! leaves the previous checkpoint intact: a temporary file in the target directory, `fsync`, an atomic
//! rename, `fsync` of the directory, and pruning of old generations only afterwards. Restart discovery
//! picks the newest checkpoint that verifies completely and falls back to older generations by itself.
//!
//! Names and directories follow the Slurm checkpoint interface that Slurm itself removed:
//! `<job_id>.ckpt` or `<job_id>.<step_id>.ckpt` in `SLURM_CHECKPOINT_DIR` (or `CKPT_DIR`), restart from
//! `SLURM_RESTART_DIR`, intervals in the six formats of `SLURM_CHECKPOINT` ([`parse_slurm_time`]). See
//! [`Config`].
//!
//! # Example
//!
//! ```
//! use ckpt_core::{Config, Store};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, PartialEq, Debug)]
//! struct State { step: u64, energy: f64 }
//!
//! # let dir = tempfile::tempdir()?;
//! // Outside Slurm the application name stands in for the job id: the file is `<dir>/heat.ckpt`.
//! let store = Store::new(Config::new("heat", dir.path())?);
//!
//! // First run: nothing to restart from.
//! assert!(store.restore()?.is_none());
//!
//! // Save a field (raw, memory-mappable) and a typed value in one atomic, durable checkpoint.
//! let field = vec![1.5f64; 1024];
//! let bytes: Vec<u8> = field.iter().flat_map(|x| x.to_le_bytes()).collect();
//! let mut w = store.begin(100)?;
//! w.add_bytes("field", &bytes)?;
//! w.add_serde("state", &State { step: 100, energy: -3.25 })?;
//! let info = w.commit()?;
//! assert_eq!(info.path, dir.path().join("heat.ckpt"));
//!
//! // Restart: the newest checkpoint that verifies completely.
//! let restored = store.restore()?.expect("a checkpoint");
//! assert_eq!(restored.app_step, 100);
//! let cp = &restored.checkpoint;
//! assert_eq!(&cp.read("field")?[..], &bytes[..]);
//! assert_eq!(cp.read_serde::<State>("state")?, State { step: 100, energy: -3.25 });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Errors
//!
//! Every failure is an [`Error`] with a matchable [`ErrorKind`], the file, the section when there is one,
//! and a precise message ("crc32 mismatch: expected …, computed …"). The C and Python bindings map the
//! kinds to stable status codes and exception classes.
//!
//! # Testing against crashes
//!
//! All I/O goes through the [`storage::Storage`] trait. The workspace's tests (the `testing` feature) use
//! `storage::MemStorage`, which models what a power cut keeps (only what was fsynced), and
//! `storage::FaultStorage`, which fails the Nth operation, so the commit protocol can be checked at every
//! instant.

#![warn(missing_docs)]

mod checkpointer;
mod config;
pub mod control;
mod discovery;
mod error;
mod events;
pub mod format;
pub mod identity;
mod reader;
pub mod storage;
mod store;
mod sys;
mod timefmt;
pub mod triggers;
pub mod trust;
mod writer;

pub use checkpointer::{Checkpointer, TriggerView};
pub use config::{
    Config, DEFAULT_APP_NAME, DEFAULT_FILE_MODE, DEFAULT_KEEP, Interval, LogTarget, SETTINGS, base_name, hostname,
    parse_ckpt_interval, parse_interval,
};
pub use discovery::{Candidate, CandidateStatus, Discovery, Restored};
pub use error::{Error, ErrorKind, Result};
pub use format::{Codec, Encoding, FileKind, Header, ManifestEntry, SectionEntry};
pub use reader::{Checkpoint, LoadOptions, SectionData, read_header};
pub use store::{
    CheckpointWriter, CommitInfo, NameKind, PartIdentity, Store, any_base, begin_file, classify, parse_manifest,
};
pub use timefmt::{ACCEPTED_FORMS, parse_slurm_time, parse_time_with_units};
// `auto_choice` is for the benchmarks (the cost of `auto`'s decision), not part of the API.
#[doc(hidden)]
pub use writer::auto_choice;
pub use writer::{Compression, FileStats, SectionOptions, SectionWriter};

/// This library's version, as recorded in every file it writes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// (major, minor, patch) of this library.
pub fn writer_version() -> (u16, u16, u16) {
    let mut it = VERSION.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u16>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}
