//! The `ckpt` command as a library: [`run`] takes a command line and returns the exit status, so the
//! Python package (`ckpt-py`) can ship the very same command (`ckpt` and `python -m ckpt`) in its wheel.
//! The binary's `main` is a call of [`run`].

#[path = "main.rs"]
#[allow(dead_code)]
mod cli;

pub use cli::run;
