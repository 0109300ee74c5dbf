//! include/ckpt.hpp, the header-only C++17 interface: the C++ example (examples/cpp/heat.cpp) built under
//! AddressSanitizer is SIGKILLed after a checkpoint and run again, and ends with the line of an
//! uninterrupted run (its vectors resized by `restart()`); and `restart()` refuses regions protected in
//! another size or under another name, naming the region, and reads them by name in any order, also from a
//! checkpoint the header wrote before named regions (tests/cpp/names.cpp).

mod common;
use common::{clean_env, have, root, shared_link};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn build_cpp(source: &Path, out: &Path) -> bool {
    if !have("c++") {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "no C++ compiler under CI=true");
        eprintln!("skipped: no C++ compiler");
        return false;
    }
    let o = Command::new("c++")
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-g",
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
        ])
        .arg("-I")
        .arg(root().join("include"))
        .arg(source)
        .arg("-o")
        .arg(out)
        .args(shared_link())
        .output()
        .expect("run c++");
    assert!(o.status.success(), "c++ {}:\n{}", source.display(), String::from_utf8_lossy(&o.stderr));
    true
}

fn command(exe: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    clean_env(&mut cmd);
    cmd.env("CKPT_DIR", dir)
        .env("CKPT_SOCKET_DIR", dir.join("sock"))
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=86")
        .env("UBSAN_OPTIONS", "halt_on_error=1:exitcode=87");
    cmd
}

fn output(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run the C++ program");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{:?}\n{out}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn cpp_example_under_asan_is_killed_and_resumes_identically() {
    let t = tempfile::tempdir().unwrap();
    let exe = t.path().join("heat");
    if !build_cpp(&root().join("examples/cpp/heat.cpp"), &exe) {
        return;
    }
    let args = ["512", "600", "3000", "50"];
    let reference = {
        let dir = t.path().join("reference");
        std::fs::create_dir(&dir).unwrap();
        let out = output(&mut command(&exe, &dir, &["512", "600", "0", "0"]));
        out.lines().find(|l| l.starts_with("done")).expect("done line").to_string()
    };
    let dir = t.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    let mut child = command(&exe, &dir, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = lines.next().expect("the program ended early").unwrap();
        if l == "checkpoint 150" {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint 150 within 60 s");
    }
    child.kill().unwrap(); // SIGKILL after a durable checkpoint, mid-run
    let st = child.wait().unwrap();
    assert!(!st.success());
    let out = output(&mut command(&exe, &dir, &args));
    let resumed: i64 = out
        .lines()
        .find_map(|l| l.strip_prefix("restarted at ").and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no restart: {out}"));
    assert!(resumed >= 150, "{out}");
    assert!(out.contains("(512 cells)"), "the vector was not resized to the checkpoint's length: {out}");
    assert_eq!(out.lines().find(|l| l.starts_with("done")), Some(reference.as_str()), "{out}");
}

#[test]
fn cpp_restart_checks_names_and_sizes() {
    let t = tempfile::tempdir().unwrap();
    let exe = t.path().join("names");
    if !build_cpp(&root().join("ckpt-ffi/tests/cpp/names.cpp"), &exe) {
        return;
    }
    let dir = t.path();
    let run = |mode: &str| {
        let o = command(&exe, dir, &[mode]).env("CKPT_RESUME_FROM", "names").output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = run("save");
    assert_eq!((code, out.as_str()), (Some(0), "saved\n"), "{err}");
    let (code, out, err) = run("resume");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "restored=1 step=7 a=3:1,2,3 b=3:4,5,6 n=42\n", "{err}");
    let (code, out, err) = run("swapped");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "restored=1 step=7 a=3:1,2,3 b=3:4,5,6 n=42\n", "read by name, in any order: {err}");
    let (code, out, err) = run("renamed");
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(
        out.starts_with("error -9: ") && out.contains("region \"c\" is not in this checkpoint (it holds \""),
        "{out}"
    );
    // A checkpoint the header wrote before named regions (numbered, names in the metadata) is read by name.
    let (code, out, err) = run("oldsave");
    assert_eq!((code, out.as_str()), (Some(0), "saved\n"), "{err}");
    let (code, out, err) = run("resume");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "restored=1 step=7 a=3:1,2,3 b=3:4,5,6 n=42\n", "{err}");
    let (code, out, err) = run("swapped");
    assert_eq!((code, out.as_str()), (Some(0), "restored=1 step=7 a=3:1,2,3 b=3:4,5,6 n=42\n"), "{err}");
    let (code, out, err) = run("size");
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(
        out.starts_with("error -24: ") && out.contains("region \"n\" holds 4 bytes in the checkpoint, 8 here"),
        "{out}"
    );
}
