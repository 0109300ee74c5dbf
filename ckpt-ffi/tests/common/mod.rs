//! Helpers shared by the ckpt-ffi integration tests (each test file includes this module).
#![allow(dead_code)] // not every test file uses every helper

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory holding libckpt.so / libckpt.a of this build.
pub fn lib_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps, next to the libckpt.so/.a built for this very
    // test run; target/<profile> holds copies only after a plain `cargo build`, and those may be stale.
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    if deps.join("libckpt.so").exists() { deps.to_path_buf() } else { deps.parent().unwrap().to_path_buf() }
}

/// Whether `tool --version` runs and succeeds.
pub fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Removes inherited ckpt, Slurm and MPI launcher variables from a child's environment, and makes it load
/// the libckpt of this build ([`lib_dir`]): `cargo test` puts target/<profile> on LD_LIBRARY_PATH, which
/// outranks an executable's RUNPATH, and the copy there is only as new as the last plain `cargo build`.
pub fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("CKPT_") || k.starts_with("SLURM_") || k.starts_with("OMPI_") || k.starts_with("PMI") {
            cmd.env_remove(k);
        }
    }
    cmd.env("LD_LIBRARY_PATH", lib_dir());
}

/// The linker arguments for this build's libckpt.so, found at run time through the executable's RUNPATH.
pub fn shared_link() -> Vec<String> {
    let d = lib_dir();
    vec![format!("-L{}", d.display()), "-lckpt".into(), format!("-Wl,-rpath,{}", d.display())]
}

/// Compiles the C test program `source` (a path from the repository root) with `compiler` and `flags`
/// and links it against this build's libckpt.so into `out`; fails the test with the compiler's output.
pub fn build_c(compiler: &str, flags: &[&str], source: &str, out: &Path) {
    let o = Command::new(compiler)
        .args(flags)
        .arg("-I")
        .arg(root().join("include"))
        .arg(root().join(source))
        .arg("-o")
        .arg(out)
        .args(shared_link())
        .output()
        .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
    assert!(o.status.success(), "{compiler} {source}:\n{}", String::from_utf8_lossy(&o.stderr));
}

/// A xorshift generator: the kill tests' random moments, repeatable from the seed.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
