//! Helpers shared by the ckpt-ffi integration tests (each test file includes this module).
#![allow(dead_code)] // not every test file uses every helper

use std::path::PathBuf;
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
