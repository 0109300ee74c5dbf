//! Measures the peak extra memory of a save: `ckpt-test-memory DIR MIB` allocates and touches MIB MiB of
//! state, then saves it raw and zstd+shuffle compressed, and prints `before_kib after_kib` (max RSS).

use ckpt_core::{Compression, Config, SectionOptions, Store};

fn max_rss_kib() -> i64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let mib: usize = args[2].parse().unwrap();
    let state: Vec<u8> = (0..mib << 20).map(|i: usize| (i / 4096) as u8 ^ (i as u8 & 7)).collect();
    let store = Store::new(Config::new("memory", &dir).unwrap());
    let before = max_rss_kib();
    let mut w = store.begin(1).unwrap();
    w.add_section_with("raw", &state, SectionOptions::new()).unwrap();
    w.add_section_with("zstd", &state, SectionOptions::new().compression(Compression::Zstd(1)).shuffle(8)).unwrap();
    w.commit().unwrap();
    println!("{before} {}", max_rss_kib());
}
