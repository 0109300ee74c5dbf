//! Write errors part-way through a large save: the I/O thread's failed write must fail the save, leave no
//! temporary file, and leave the previous checkpoint the one restart finds.

use std::process::Command;

use ckpt_core::Store;

const BIGSAVE: &str = env!("CARGO_BIN_EXE_ckpt-test-bigsave");

#[path = "../src/bin/ckpt-test-bigsave.rs"]
#[allow(dead_code)]
mod bigsave;

/// Runs the saver, optionally under a file-size limit in KiB (bash's `ulimit -f` unit).
fn bigsave(dir: &std::path::Path, mib: usize, step: u64, limit_kib: Option<u64>) -> (bool, String) {
    let limit = limit_kib.map(|k| format!("ulimit -f {k}; ")).unwrap_or_default();
    // SIGXFSZ ignored (inherited through exec): the write returns EFBIG instead of killing the process.
    let script = format!("trap '' XFSZ; {limit}exec \"$0\" \"$@\"");
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(BIGSAVE)
        .arg(dir)
        .arg("big")
        .arg(mib.to_string())
        .arg(step.to_string())
        .output()
        .expect("run ckpt-test-bigsave");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_failed_write_of_the_io_thread_fails_the_save_and_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = bigsave(dir.path(), 40, 1, None);
    assert!(ok, "the unlimited save failed: {out}");
    // 40 MiB under a 20 MiB limit: the writes past 20 MiB fail (EFBIG), in the I/O thread or in the
    // caller's final direct write, with staging buffers still in flight.
    let (ok, out) = bigsave(dir.path(), 40, 2, Some(20 << 10));
    assert!(!ok, "the save past the file-size limit succeeded: {out}");
    assert!(out.contains("error:") && out.contains(".tmp."), "the error names the temporary file: {out}");
    assert!(out.to_lowercase().contains("too large"), "the error is the write's EFBIG: {out}");
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains(".tmp.")), "a temporary file was left behind: {names:?}");
    let store = Store::new(ckpt_tests::reader_config("big", dir.path()));
    let r = store.restore().unwrap().expect("the first checkpoint");
    assert_eq!((r.generation, r.app_step), (1, 1), "restart finds the previous checkpoint");
    assert!(r.rejected.is_empty(), "nothing half-written is a candidate: {:?}", r.rejected);
    assert_eq!(&r.checkpoint.read("state").unwrap()[..], &bigsave::content(1, 40 << 20)[..]);
    // And the next save, without the limit, works and becomes the newest.
    let (ok, out) = bigsave(dir.path(), 40, 3, None);
    assert!(ok, "{out}");
    let r = store.restore().unwrap().expect("a checkpoint");
    assert_eq!(r.app_step, 3);
    assert_eq!(&r.checkpoint.read("state").unwrap()[..], &bigsave::content(3, 40 << 20)[..]);
}
