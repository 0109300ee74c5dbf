#![doc = include_str!("guide.md")]
#![warn(missing_docs)]

// The README's Rust example is compiled as a test, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

mod checkpointer;
mod config;
pub mod control;
mod discovery;
mod error;
pub mod format;
pub mod identity;
mod reader;
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
    Config, ConfigBuilder, DEFAULT_APP_NAME, DEFAULT_FILE_MODE, DEFAULT_KEEP, Interval, LogTarget, SETTINGS, base_name,
    hostname, parse_interval,
};
pub use discovery::{Candidate, CandidateStatus, Discovery, Restored};
pub use error::{Error, ErrorKind, Result};
pub use format::{Codec, ElementType, Encoding, FileKind, Header, ManifestEntry, SectionEntry};
pub use reader::{Checkpoint, LoadOptions, SectionData, read_header};
pub use store::{
    CheckpointWriter, CommitInfo, NameKind, PartIdentity, Store, any_base, begin_file, classify, parse_manifest,
};
pub use timefmt::{ACCEPTED_FORMS, parse_slurm_time};
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
