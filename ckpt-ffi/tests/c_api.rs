//! Compiles the C tests in `tests/c/` against `include/ckpt.h` and the freshly built libckpt, and runs
//! them: under AddressSanitizer + UBSan (shared library), linked statically, and under valgrind when it is
//! installed. Also checks that libckpt.so exports only `ckpt_*` symbols.

mod common;
use common::{clean_env, have, lib_dir, root, shared_link};

use std::path::Path;
use std::process::Command;

fn compile(out: &Path, extra: &[&str], link: &[String]) {
    let mut cmd = Command::new("cc");
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-I"]).arg(root().join("include"));
    cmd.args(extra).arg(root().join("ckpt-ffi/tests/c/test_api.c")).arg("-o").arg(out).args(link);
    let o = cmd.output().expect("run cc");
    assert!(o.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

fn run(exe: &Path, prefix: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = if prefix.is_empty() { Command::new(exe) } else { Command::new(prefix[0]) };
    if !prefix.is_empty() {
        cmd.args(&prefix[1..]).arg(exe);
    }
    cmd.arg(dir.path());
    clean_env(&mut cmd);
    let o = cmd.output().expect("run the C test");
    assert!(
        o.status.success(),
        "{} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        exe.display(),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn c_api_under_address_sanitizer() {
    let t = tempfile::tempdir().unwrap();
    let exe = t.path().join("test_api_asan");
    compile(&exe, &["-fsanitize=address,undefined", "-fno-omit-frame-pointer"], &shared_link());
    run(&exe, &[]);
}

#[test]
fn c_api_linked_statically() {
    let t = tempfile::tempdir().unwrap();
    let exe = t.path().join("test_api_static");
    let lib = lib_dir().join("libckpt.a");
    compile(&exe, &["-O1"], &[lib.display().to_string(), "-lpthread".into(), "-ldl".into(), "-lm".into()]);
    run(&exe, &[]);
}

#[test]
fn c_api_under_valgrind() {
    if !have("valgrind") {
        eprintln!("skipped: valgrind is not installed");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let exe = t.path().join("test_api_vg");
    compile(&exe, &["-O0"], &shared_link());
    run(&exe, &["valgrind", "--error-exitcode=9", "--leak-check=full", "--errors-for-leak-kinds=definite", "-q"]);
}

#[test]
fn the_shared_library_exports_only_ckpt_names() {
    let lib = lib_dir().join("libckpt.so");
    let o = Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().expect("nm");
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let mut exported = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (_addr, kind, name) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if matches!(kind, "T" | "D" | "B" | "R" | "W" | "V") {
            exported.push(name.to_string());
        }
    }
    let foreign: Vec<&String> = exported.iter().filter(|n| !n.starts_with("ckpt_")).collect();
    assert!(foreign.is_empty(), "libckpt.so exports non-ckpt symbols: {foreign:?}");
    assert!(exported.iter().any(|n| n == "ckpt_init"), "{exported:?}");
    let o = Command::new("readelf").args(["-d"]).arg(&lib).output().expect("readelf");
    let deps = String::from_utf8_lossy(&o.stdout);
    assert!(!deps.contains("libmpi") && !deps.contains("libpython"), "libckpt links MPI or Python:\n{deps}");
}
