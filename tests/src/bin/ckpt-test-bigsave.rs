//! Child process of the write-error tests: `ckpt-test-bigsave DIR NAME MIB STEP` saves one checkpoint of
//! application `NAME` in `DIR` (step `STEP`, one raw section of MIB MiB whose bytes depend on the step, large
//! enough for direct I/O through the I/O thread) and prints `durable <step>`, or prints `error: <message>`
//! and exits 1. The tests run it under a file-size limit (`ulimit -f`, SIGXFSZ ignored) so that a write
//! of the I/O thread fails with EFBIG part-way through the file.

use ckpt_core::{Config, SectionOptions, Store};

/// The section's bytes for `step`.
pub fn content(step: u64, len: usize) -> Vec<u8> {
    let mut x = step.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let mib: usize = args[3].parse().expect("MIB");
    let step: u64 = args[4].parse().expect("STEP");
    let data = content(step, mib << 20);
    // Every invocation continues the named run (the step is an argument, so the command lines differ).
    let mut config = Config::new(&args[2], &dir).expect("config");
    config.resume_from = ckpt_core::identity::ResumeFrom::Job(args[2].clone());
    let store = Store::new(config);
    let result = store.begin(step).and_then(|mut w| {
        w.add_section_with("state", &data, SectionOptions::new())?;
        w.commit()
    });
    match result {
        Ok(_) => println!("durable {step}"),
        Err(e) => {
            println!("error: {e}");
            std::process::exit(1);
        }
    }
}
