//! Feeds arbitrary bytes to the checkpoint parser: `Checkpoint::from_bytes`, then, when the bytes open,
//! `verify()` and `read()` / `verify_section()` of every section. Whatever the input, the library must
//! return errors: never panic, hang, or allocate hugely (libFuzzer's `-malloc_limit_mb`, by default the
//! 2048 MB `-rss_limit_mb`, reports any single allocation above it as a crash).
//!
//! Run from `ckpt-core/fuzz` with a nightly toolchain and cargo-fuzz:
//!
//! ```text
//! cargo +nightly fuzz run parse -- -max_total_time=60 -dict=parse.dict
//! cargo +nightly fuzz run parse corpus/parse ../../tests/data -- -dict=parse.dict   # seeded with the golden files
//! ```
#![no_main]

use ckpt_core::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cp) = Checkpoint::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = cp.verify();
    let names: Vec<String> = cp.sections().iter().map(|e| e.name.clone()).collect();
    for name in &names {
        let _ = cp.verify_section(name);
        if let Ok(bytes) = cp.read(name) {
            // A section that reads must have exactly the length its table entry claims.
            let entry = cp.section(name).expect("listed section exists");
            assert_eq!(bytes.len() as u64, entry.raw_len, "section {name:?} read back with the wrong length");
        }
    }
});
