//! Progress bars on stderr for the commands that can take long (`ckpt verify` of large files, `ckpt
//! create` waiting up to `--max-wait`): only when stderr is a terminal, never with `--json` (programs
//! read those outputs, and a bar in a log file or a pipe is noise). They are cleared when done.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether a command shows progress bars: stderr is a terminal and the output is not JSON.
pub(crate) fn enabled(as_json: bool) -> bool {
    !as_json && std::io::stderr().is_terminal()
}

/// A bar over `total` bytes, labelled `msg` (e.g. the file verified).
pub(crate) fn bytes(total: u64, msg: String) -> ProgressBar {
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    b.set_message(msg);
    b
}

/// A bar over the `total` bytes of the cached checkpoints `ckpt flush` copies, a generation at a time; it
/// ticks by itself (with the time spent) while one is being copied.
pub(crate) fn copying(total: u64) -> ProgressBar {
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template("{spinner} ckpt flush: {msg} [{bar:30}] {bytes}/{total_bytes}, {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    b.enable_steady_tick(Duration::from_millis(100));
    b
}

/// A bar over `n` processes asked for a checkpoint, with the time waited so far and the longest wait
/// (`--max-wait`); it ticks by itself while the requests wait.
pub(crate) fn waiting(n: u64, max_wait: Duration) -> ProgressBar {
    let b = ProgressBar::new(n);
    b.set_style(
        ProgressStyle::with_template(
            "{spinner} ckpt create: {pos}/{len} checkpoint(s) durable, waited {elapsed} of at most {msg}",
        )
        .expect("template"),
    );
    b.set_message(format!("{}s", max_wait.as_secs_f64()));
    b.enable_steady_tick(Duration::from_millis(100));
    b
}
