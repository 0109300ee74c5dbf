//! Settings have one source: every setting is read once into `Config` (or, for loads without one,
//! `LoadOptions::from_env`, through the same parser), and what a face sets is what the code that uses it
//! sees. `CKPT_DIRECT_IO` reaches the file writer through the store (observed from outside: a buffered
//! save leaves the file in the page cache, a direct one does not); a malformed `CKPT_MMAP` is an error
//! naming the variable on a standalone load instead of being taken for "on".

use std::collections::HashMap;
use std::path::Path;

use ckpt_core::{Checkpoint, Config, ErrorKind, LoadOptions, Store};

/// Runs the test `name` of this binary alone in a child process with `env` set (and `CKPT_TEST_CHILD`),
/// for tests that need process-wide state (the environment, the umask). `umask`, when given, is set in the
/// child before it starts. Returns whether this is the child, which then runs the test's body.
pub(crate) fn in_child_process(name: &str, env: &[(&str, &str)], umask: Option<u32>) -> bool {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("CKPT_TEST_CHILD").is_some() {
        return true;
    }
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([name, "--exact", "--test-threads=1", "--nocapture"]).env("CKPT_TEST_CHILD", "1");
    for (k, _) in std::env::vars() {
        if k.starts_with("CKPT_") || k.starts_with("SLURM_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).env("CKPT_TEST_CHILD", "1");
    if let Some(mask) = umask {
        // SAFETY: umask is async-signal-safe and touches no memory; nothing else runs in the child yet.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
    }
    let out = cmd.output().expect("run the test in a child process");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "{name} in a child process:\n{text}");
    false
}

/// The fraction of `path`'s pages that are in the page cache (`mincore` over a read-only mapping, which
/// itself brings no page in).
pub(crate) fn resident_fraction(path: &Path) -> f64 {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open");
    let len = file.metadata().expect("stat").len() as usize;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let pages = len.div_ceil(page);
    // SAFETY: a fresh shared read-only mapping of a file this function holds open; unmapped below.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    assert_ne!(map, libc::MAP_FAILED, "mmap");
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` is a mapping of `len` bytes; `vec` holds one byte per page of it.
    let rc = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
    // SAFETY: the mapping made above, of `len` bytes, no longer used.
    unsafe { libc::munmap(map, len) };
    assert_eq!(rc, 0, "mincore");
    vec.iter().filter(|&&b| b & 1 != 0).count() as f64 / pages as f64
}

/// Whether `dir`'s file system accepts `O_DIRECT` (tmpfs before Linux 6.6 does not).
pub(crate) fn direct_io_supported(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join("direct-probe");
    let ok = std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(&p).is_ok();
    let _ = std::fs::remove_file(&p);
    ok
}

/// `CKPT_DIRECT_IO` as a face sets it (the environment a `Config` is read from, or a C program's
/// `ckpt_set_config`, both of which end in `Config::from_lookup`) decides how the store's writer writes:
/// `0` leaves a 32 MiB save in the page cache (buffered writes), `1` does not (direct writes), where the
/// file system takes `O_DIRECT`.
#[test]
fn the_direct_io_setting_reaches_the_file_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = vec![0x5Au8; 32 << 20];
    let direct_ok = direct_io_supported(dir.path());
    for setting in ["0", "off", "1"] {
        let vars: HashMap<&str, String> = [
            ("CKPT_DIR", dir.path().display().to_string()),
            ("CKPT_LOG", "off".into()),
            ("CKPT_SOCKET", "0".into()),
            ("CKPT_REUSE_SPACE", "0".into()),
            ("CKPT_DIRECT_IO", setting.into()),
        ]
        .into_iter()
        .collect();
        let cfg = Config::from_lookup(Some(&format!("direct{setting}")), |k| vars.get(k).cloned()).expect("config");
        let store = Store::new(cfg);
        let mut w = store.begin(1).expect("begin");
        w.add_bytes("data", &data).expect("section");
        let info = w.commit().expect("commit");
        let resident = resident_fraction(&info.path);
        if setting == "1" {
            if direct_ok {
                assert!(resident < 0.25, "CKPT_DIRECT_IO=1: {:.0}% of the file is in the page cache", resident * 100.0);
            }
        } else {
            assert!(
                resident > 0.75,
                "CKPT_DIRECT_IO={setting}: only {:.0}% of the file is in the page cache: it was written direct",
                resident * 100.0
            );
        }
        assert_eq!(
            &store.restore().expect("restore").expect("found").checkpoint.read("data").expect("read")[..],
            &data[..]
        );
    }
}

/// A load without a configuration (`Checkpoint::open`, what Python's `ckpt.load(path)` and the C buffer
/// functions use) reads `CKPT_MMAP` with the configuration's parser: `0` reads, a typo is an error naming
/// the variable and the file, never taken for "on".
#[test]
fn a_malformed_ckpt_mmap_is_an_error_on_a_standalone_load() {
    let name = "settings::a_malformed_ckpt_mmap_is_an_error_on_a_standalone_load";
    let value = std::env::var("CKPT_TEST_MMAP_VALUE").unwrap_or_default();
    if !in_child_process(name, &[("CKPT_MMAP", "maybe"), ("CKPT_TEST_MMAP_VALUE", "maybe")], None) {
        assert!(!in_child_process(name, &[("CKPT_MMAP", "0"), ("CKPT_TEST_MMAP_VALUE", "0")], None));
        assert!(!in_child_process(name, &[("CKPT_TEST_MMAP_VALUE", "")], None));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.ckpt");
    let cfg = Config::new("standalone", dir.path()).expect("config");
    let mut w =
        ckpt_core::begin_file(&path, 1, &cfg, std::sync::Arc::new(ckpt_core::storage::FileStorage)).expect("begin");
    w.add_bytes("x", b"payload").expect("section");
    w.commit().expect("commit");
    match value.as_str() {
        "maybe" => {
            let e = Checkpoint::open(&path).expect_err("CKPT_MMAP=maybe is not a setting");
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
            assert!(e.to_string().contains("CKPT_MMAP") && e.to_string().contains("maybe"), "{e}");
            assert_eq!(e.path(), Some(path.as_path()), "{e}");
            let e = LoadOptions::from_env().expect_err("the same parser");
            assert!(e.to_string().contains("CKPT_MMAP"), "{e}");
            let e = Config::from_env(Some("standalone")).expect_err("the same parser");
            assert!(e.to_string().contains("CKPT_MMAP"), "{e}");
        }
        "0" => {
            let cp = Checkpoint::open(&path).expect("open");
            assert!(!cp.is_mapped(), "CKPT_MMAP=0 reads");
            assert!(!LoadOptions::from_env().expect("a setting").mmap);
            assert!(LoadOptions::default().mmap, "only from_env reads the environment");
        }
        _ => {
            let cp = Checkpoint::open(&path).expect("open");
            assert!(cp.is_mapped(), "maps by default");
            assert_eq!(LoadOptions::from_env().expect("no setting"), LoadOptions::new().mmap(true));
        }
    }
}
