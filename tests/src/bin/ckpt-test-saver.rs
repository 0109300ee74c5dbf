//! Child process of the kill tests: saves checkpoints in a loop until it is killed.
//!
//! Usage: `ckpt-test-saver DIR NAME`
//!
//! It restores the newest checkpoint of application `NAME` in `DIR` (if there is one), checks that its
//! content is exactly [`expected_state`] of its step, prints `restored <step>` (0 when there was none),
//! then loops forever: `step += 1`, build the state of `step`, print `saving <step>`, save it with
//! `Store::begin(step)` / `commit()`, and only after the commit returned `Ok` print `durable <step>` and flush
//! stdout. The kill test SIGKILLs it
//! at random moments and checks that restart finds a checkpoint at least as new as the last `durable`
//! line, holding exactly the content of its step.
//!
//! `CKPT_SAVER_MAX_STEPS=N` makes it stop (exit 0) after N saves, for a smoke test without a kill.
//! `CKPT_SAVER_TOLERATE_CONFLICTS=1` reports a lost race with another writer (`conflict <step>`) and goes on.
//! `CKPT_SAVER_RAW_MIB=M` makes the raw section M to M + 2 MiB (default 1): from 16, retired generations
//! are kept as the spare that the next save writes over.
//!
//! The kill test includes this file as a module to share [`expected_state`] and [`check_checkpoint`].

use std::io::Write;
use std::path::Path;

use ckpt_core::{Checkpoint, CommitInfo, Compression, Config, Encoding, SectionOptions, Store};
use ckpt_tests::{Rng, smooth_field};
use serde::{Deserialize, Serialize};

/// Raw (uncompressed, memory-mappable) bytes, M to M + 2 MiB depending on the step (M = 1 by default).
pub const RAW_SECTION: &str = "raw";
/// A smooth f64 field stored zstd-compressed with the 8-byte shuffle filter.
pub const FIELD_SECTION: &str = "field";
/// A serde (postcard) struct that names the step.
pub const META_SECTION: &str = "meta";

/// The typed part of the state.
#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
pub struct Meta {
    /// The step this state belongs to.
    pub step: u64,
    /// Length of the raw section.
    pub raw_len: u64,
    /// Number of f64 values in the field section.
    pub field_values: u64,
    /// A step-dependent label.
    pub label: String,
}

/// The whole state of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Content of [`RAW_SECTION`].
    pub raw: Vec<u8>,
    /// Content of [`FIELD_SECTION`] (little-endian f64 values).
    pub field: Vec<u8>,
    /// Content of [`META_SECTION`].
    pub meta: Meta,
}

fn step_seed(step: u64) -> u64 {
    step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0123_4567_89AB_CDEF
}

/// The state of `step` with a raw section of `raw_mib` MiB or more: a deterministic function of these
/// only, different for every step.
pub fn expected_state(step: u64, raw_mib: usize) -> State {
    let mut rng = Rng::new(step_seed(step));
    let raw_len = (raw_mib << 20) + rng.below(2 << 20) as usize;
    let raw = rng.bytes(raw_len);
    let field_values = 32 * 1024 + ((step % 17) as usize) * 512;
    let field = smooth_field(field_values, step as f64 * 0.37);
    let meta = Meta {
        step,
        raw_len: raw_len as u64,
        field_values: field_values as u64,
        label: format!("state of step {step}"),
    };
    State { raw, field, meta }
}

/// Saves the state of `step` as one checkpoint.
pub fn save_state(store: &Store, step: u64, state: &State) -> ckpt_core::Result<CommitInfo> {
    let mut w = store.begin(step)?;
    w.add_bytes(RAW_SECTION, &state.raw)?;
    w.add_section_with(
        FIELD_SECTION,
        &state.field,
        SectionOptions::new().compression(Compression::Zstd(1)).shuffle(8).encoding(Encoding::Bytes),
    )?;
    w.add_serde(META_SECTION, &state.meta)?;
    w.commit()
}

/// Checks that `cp` holds exactly the state of `step` (every section, byte for byte), saved with a raw
/// section of `raw_mib` MiB or more.
pub fn check_checkpoint(cp: &Checkpoint, step: u64, raw_mib: usize) -> Result<(), String> {
    let path = cp.path().display().to_string();
    if cp.step() != step {
        return Err(format!("{path}: header step {} != expected {step}", cp.step()));
    }
    let want = expected_state(step, raw_mib);
    let meta: Meta = cp.read_serde(META_SECTION).map_err(|e| format!("{path}: reading meta: {e}"))?;
    if meta != want.meta {
        return Err(format!("{path}: meta section {meta:?} is not that of step {step}: {:?}", want.meta));
    }
    let raw = cp.read(RAW_SECTION).map_err(|e| format!("{path}: reading raw: {e}"))?;
    if raw[..] != want.raw[..] {
        let first = raw.iter().zip(&want.raw).position(|(a, b)| a != b);
        return Err(format!(
            "{path}: raw section of step {step} differs (len {} vs {}, first difference at {first:?})",
            raw.len(),
            want.raw.len()
        ));
    }
    let field = cp.read(FIELD_SECTION).map_err(|e| format!("{path}: reading field: {e}"))?;
    if field[..] != want.field[..] {
        let first = field.iter().zip(&want.field).position(|(a, b)| a != b);
        return Err(format!(
            "{path}: field section of step {step} differs (len {} vs {}, first difference at {first:?})",
            field.len(),
            want.field.len()
        ));
    }
    if cp.sections().len() != 3 {
        return Err(format!("{path}: {} sections, expected 3", cp.sections().len()));
    }
    Ok(())
}

fn run(dir: &Path, name: &str, max_steps: Option<u64>, raw_mib: usize) -> Result<(), String> {
    let config = Config::new(name, dir).map_err(|e| format!("config: {e}"))?;
    let store = Store::new(config);
    let mut step = match store.restore() {
        Ok(Some(r)) => {
            check_checkpoint(&r.checkpoint, r.app_step, raw_mib)?;
            r.app_step
        }
        Ok(None) => 0,
        Err(e) => return Err(format!("restore failed: {e}")),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "restored {step}").and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))?;
    let tolerate_conflicts = std::env::var_os("CKPT_SAVER_TOLERATE_CONFLICTS").is_some();
    let mut saved = 0u64;
    while max_steps.is_none_or(|m| saved < m) {
        step += 1;
        let state = expected_state(step, raw_mib);
        // Lets the parent aim its kill at the save itself rather than at building the state.
        writeln!(out, "saving {step}").and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))?;
        match save_state(&store, step, &state) {
            Ok(_) => {}
            // Two processes saving under one name: one of them loses each race for a generation.
            Err(e) if tolerate_conflicts && e.kind() == ckpt_core::ErrorKind::Conflict => {
                writeln!(out, "conflict {step}").and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))?;
                saved += 1;
                continue;
            }
            Err(e) => return Err(format!("save of step {step} failed: {e}")),
        }
        // Only now is the step durable: report it.
        writeln!(out, "durable {step}").and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))?;
        saved += 1;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: ckpt-test-saver DIR NAME");
        std::process::exit(2);
    }
    let max_steps = std::env::var("CKPT_SAVER_MAX_STEPS").ok().map(|v| {
        v.parse::<u64>().unwrap_or_else(|_| {
            eprintln!("CKPT_SAVER_MAX_STEPS: invalid value {v:?}");
            std::process::exit(2)
        })
    });
    let raw_mib = std::env::var("CKPT_SAVER_RAW_MIB").ok().map_or(1, |v| {
        v.parse::<usize>().unwrap_or_else(|_| {
            eprintln!("CKPT_SAVER_RAW_MIB: invalid value {v:?}");
            std::process::exit(2)
        })
    });
    if let Err(e) = run(Path::new(&args[1]), &args[2], max_steps, raw_mib) {
        eprintln!("ckpt-test-saver: {e}");
        std::process::exit(1);
    }
}
