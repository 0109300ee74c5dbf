//! Integration tests of the ckpt workspace: one test binary, one module per concern.

mod cli;
mod concurrent;
mod corruption;
mod crash;
mod discovery;
mod faults;
mod golden;
mod identity;
mod io_errors;
mod kill;
mod levels;
mod memory;
mod multirank;
mod partner;
mod roundtrip;
mod runtime_files;
mod settings;
mod spare;
mod triggers;
mod trust_cli;
