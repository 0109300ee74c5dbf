//! A setting given with `ckpt_set_config` reaches the code that uses it (`tests/c/test_settings.c`):
//! `ckpt_set_config("CKPT_DIRECT_IO", "0")` makes the checkpoint's writes buffered (the file's pages stay
//! in the page cache), `"1"` direct (they do not, where the file system takes `O_DIRECT`); a malformed
//! value fails `ckpt_init` naming the variable.

mod common;
use common::{build_c, clean_env};

use std::path::Path;
use std::process::Command;

/// Whether `dir`'s file system accepts `O_DIRECT` (tmpfs before Linux 6.6 does not).
fn direct_io_supported(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join("direct-probe");
    let ok = std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(&p).is_ok();
    let _ = std::fs::remove_file(&p);
    ok
}

#[test]
fn ckpt_set_config_of_direct_io_reaches_the_writer() {
    let t = tempfile::tempdir().unwrap();
    let exe = t.path().join("test_settings");
    build_c("cc", &["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"], "ckpt-ffi/tests/c/test_settings.c", &exe);
    for value in ["0", "1"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(&exe);
        cmd.arg(dir.path()).arg(value);
        clean_env(&mut cmd);
        // The environment says the opposite: the override must win.
        cmd.env("CKPT_DIRECT_IO", if value == "0" { "1" } else { "0" });
        let o = cmd.output().expect("run test_settings");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "CKPT_DIRECT_IO={value}: {out}\n{}", String::from_utf8_lossy(&o.stderr));
        let nums: Vec<f64> = out.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        let resident = nums[0] / nums[1];
        if value == "0" {
            assert!(resident > 0.75, "ckpt_set_config(CKPT_DIRECT_IO, 0) was ignored: {out}");
        } else if direct_io_supported(dir.path()) {
            assert!(resident < 0.25, "ckpt_set_config(CKPT_DIRECT_IO, 1) was ignored: {out}");
        }
    }
}
