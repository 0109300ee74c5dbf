//! The configuration every function of the module starts from: the core's [`Config::from_env`], with
//! Python's own default application name.
//!
//! The application name is, first of: the `name` argument, `CKPT_NAME`, `SLURM_JOB_NAME`, the running
//! script's file stem (`train.py` → `train`; `python -m pkg` → `pkg`), and `ckpt`. Outside Slurm the name
//! names the checkpoint file, so two scripts in one directory keep their checkpoints apart; everywhere it
//! is part of the run's identity (see `ckpt_core::identity`). `python -c`, standard input and the
//! interactive interpreter have no script and get `ckpt`, as does a stem that cannot be a file-name
//! component (longer than 64 bytes, `.`, `..`).

use std::path::Path;

use ckpt_core::{Config, Result};
use pyo3::prelude::*;

/// Longest application name (the header's fixed-width field).
const MAX_NAME_LEN: usize = ckpt_core::format::MAX_NAME_LEN;

/// [`Config::from_env`] with Python's default application name (see the module documentation). Every
/// place that reads the configuration goes through here.
pub fn config_from_env(py: Python<'_>, name: Option<&str>) -> Result<Config> {
    let fallback = match name {
        Some(_) => None,
        // The core reads these two itself, the same way (set, valid UTF-8, not blank).
        None if ["CKPT_NAME", "SLURM_JOB_NAME"].iter().any(|k| env_set(k)) => None,
        None => script_name(py),
    };
    Config::from_env(name.or(fallback.as_deref()))
}

fn env_set(key: &str) -> bool {
    std::env::var(key).is_ok_and(|v| !v.trim().is_empty())
}

/// The running script's name from `sys.argv[0]`, or `None` (no script, or no usable name).
pub fn script_name(py: Python<'_>) -> Option<String> {
    let argv0: String = py.import("sys").ok()?.getattr("argv").ok()?.get_item(0).ok()?.extract().ok()?;
    name_from_argv0(&argv0, || std::env::current_dir().ok())
}

/// The application name for `sys.argv[0]` (see the module documentation); `cwd` is asked only for a
/// bare `__main__.py`.
fn name_from_argv0(argv0: &str, cwd: impl FnOnce() -> Option<std::path::PathBuf>) -> Option<String> {
    // `-c`, `-` (standard input), `-m` (while the module is being looked for), `` (interactive).
    if matches!(argv0, "" | "-" | "-c" | "-m") {
        return None;
    }
    let path = Path::new(argv0);
    let stem = path.file_stem()?.to_str()?;
    let name = if stem == "__main__" {
        // `python -m pkg` runs pkg/__main__.py: the package is the program.
        match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => parent.file_name()?.to_str()?.to_string(),
            None => cwd()?.file_name()?.to_str()?.to_string(),
        }
    } else {
        stem.to_string()
    };
    usable(&name).then_some(name)
}

/// Whether `name` can be a file-name component and the header's application name.
fn usable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
}
