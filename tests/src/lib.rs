//! Shared helpers of the ckpt integration tests.

use std::path::{Path, PathBuf};

use ckpt_core::Config;

/// A deterministic pseudo-random generator (xorshift64*), so failures reproduce from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced by a fixed constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A smooth float64 field (compressible after byte-shuffling), as little-endian bytes.
pub fn smooth_field(n: usize, phase: f64) -> Vec<u8> {
    (0..n).flat_map(|i| ((i as f64) * 0.001 + phase).sin().to_le_bytes()).collect()
}

/// A configuration for application `name` in `dir` with no environment.
pub fn config(name: &str, dir: &Path) -> Config {
    Config::new(name, dir).expect("valid test config")
}

/// Path of a built binary of this workspace (the test saver child), next to the test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("deps dir").parent().expect("profile dir");
    dir.join(name)
}
