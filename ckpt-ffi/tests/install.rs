//! `ckpt-ffi/install.sh --prefix P` (with `--lib-from` this build's libckpt, so the test does not rebuild in
//! release mode; with `CKPT_TEST_RELEASE_INSTALL=1`, the real thing: a release build with the SONAME
//! `libckpt.so.0`, into a separate target directory), then a small C program built against the installed files every documented way: the
//! three-line build of `examples/c/README.md` (run as written), pkg-config (shared and static), CMake's
//! `find_package(ckpt)` (`ckpt::ckpt`, `ckpt::ckpt_static`, `ckpt::fortran`, and the version check),
//! gfortran with the installed module, and the MPI examples' Makefiles with `PREFIX=P`. Each part is skipped
//! with a note when its tool (pkg-config, cmake, gfortran, mpicc) is missing.

mod common;
use common::{have, lib_dir, root};

use std::path::{Path, PathBuf};
use std::process::Command;

fn version() -> String {
    let h = std::fs::read_to_string(root().join("include/ckpt.h")).unwrap();
    let line = h.lines().find(|l| l.starts_with("#define CKPT_VERSION_STRING")).unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

/// Runs `cmd`, asserts success, returns stdout.
fn ok(cmd: &mut Command, what: &str) -> String {
    for (k, _) in std::env::vars() {
        if k.starts_with("CKPT_") || k.starts_with("SLURM_") {
            cmd.env_remove(k);
        }
    }
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const APP_C: &str = r#"#include <ckpt.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    double x[4] = {1, 2, 3, 4};
    int64_t step = 0;
    size_t len = 0;
    if (ckpt_save_buffer("app.buf", x, sizeof x, 7) != CKPT_OK) return 1;
    if (ckpt_load_buffer("app.buf", x, sizeof x, &len, &step) != CKPT_OK || step != 7 || len != sizeof x) return 2;
    printf("libckpt %s (header %s)\n", ckpt_version(), CKPT_VERSION_STRING);
    return strcmp(ckpt_version(), CKPT_VERSION_STRING) != 0;
}
"#;

const APP_F90: &str = r#"program app
  use ckpt
  implicit none
  if (ckpt_version_f() /= CKPT_VERSION_STRING) error stop 1
  print '(a,a)', 'libckpt ', ckpt_version_f()
end program app
"#;

/// The fenced block right after the install-test marker of examples/c/README.md.
fn readme_build_block() -> String {
    let readme = std::fs::read_to_string(root().join("examples/c/README.md")).unwrap();
    let at = readme.find("ckpt-ffi/tests/install.rs runs this block").expect("the marker in examples/c/README.md");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").expect("a ```sh block after the marker") + 6;
    let end = rest[start..].find("```").unwrap();
    rest[start..start + end].to_string()
}

fn run_app(exe: &Path, dir: &Path) -> String {
    // Not cargo's LD_LIBRARY_PATH (target/<profile>): the program must find the installed library.
    let out =
        ok(Command::new(exe).env_remove("LD_LIBRARY_PATH").current_dir(dir), &format!("running {}", exe.display()));
    assert!(out.contains(&format!("libckpt {}", version())), "{out}");
    out
}

#[test]
fn install_then_build_three_ways() {
    if !have("bash") || !have("cc") {
        eprintln!("skipped: bash or cc is not installed (apt-get install build-essential)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let prefix = t.join("prefix");
    let release = std::env::var_os("CKPT_TEST_RELEASE_INSTALL").is_some_and(|v| v != "0");
    let mut install = Command::new("bash");
    install.arg(root().join("ckpt-ffi/install.sh")).arg("--prefix").arg(&prefix);
    if release {
        install.env("CARGO_TARGET_DIR", lib_dir().parent().unwrap().join("install-release"));
    } else {
        install.arg("--lib-from").arg(lib_dir());
    }
    let out = ok(&mut install, "install.sh");
    assert!(out.contains("installed libckpt"), "{out}");
    if release {
        let real = format!("lib/libckpt.so.{}", version());
        assert!(prefix.join(&real).is_file(), "{real}");
        assert_eq!(std::fs::read_link(prefix.join("lib/libckpt.so.0")).unwrap(), PathBuf::from(&real[4..]));
        assert_eq!(std::fs::read_link(prefix.join("lib/libckpt.so")).unwrap(), PathBuf::from("libckpt.so.0"));
        let o = ok(Command::new("readelf").arg("-d").arg(prefix.join(&real)), "readelf");
        assert!(o.contains("Library soname: [libckpt.so.0]"), "{o}");
    }
    for f in [
        "lib/libckpt.so",
        "lib/libckpt.a",
        "include/ckpt.h",
        "include/ckpt_mpi.h",
        "include/ckpt.hpp",
        "include/ckpt.f90",
        "include/ckpt_mpi.f90",
        "lib/pkgconfig/ckpt.pc",
        "lib/cmake/ckpt/ckptConfig.cmake",
        "lib/cmake/ckpt/ckptConfigVersion.cmake",
    ] {
        assert!(prefix.join(f).exists(), "{f} was not installed");
    }
    let lib = prefix.join("lib");
    // The C++ example against the installed header and library.
    if have("c++") {
        let exe = t.join("heat_cpp");
        ok(
            Command::new("c++")
                .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-I"])
                .arg(prefix.join("include"))
                .arg(root().join("examples/cpp/heat.cpp"))
                .arg("-o")
                .arg(&exe)
                .arg(format!("-L{}", lib.display()))
                .arg("-lckpt")
                .arg(format!("-Wl,-rpath,{}", lib.display())),
            "c++ examples/cpp/heat.cpp",
        );
    }
    std::fs::write(t.join("app.c"), APP_C).unwrap();

    // 1. the three lines of the README, as written
    let readme = t.join("readme");
    std::fs::create_dir_all(&readme).unwrap();
    std::fs::copy(t.join("app.c"), readme.join("app.c")).unwrap();
    let block = readme_build_block();
    assert_eq!(block.lines().count(), 3, "the README's C build is three lines:\n{block}");
    let out = ok(
        Command::new("bash")
            .args(["-euc", &block])
            .env("PREFIX", &prefix)
            .env_remove("LD_LIBRARY_PATH")
            .current_dir(&readme),
        "the README's three-line build",
    );
    assert!(out.contains(&format!("libckpt {}", version())), "{out}");

    // 2. pkg-config, shared and static
    if have("pkg-config") {
        let pc = |args: &[&str]| {
            ok(Command::new("pkg-config").args(args).env("PKG_CONFIG_PATH", lib.join("pkgconfig")), "pkg-config")
                .trim()
                .to_string()
        };
        assert_eq!(pc(&["--modversion", "ckpt"]), version());
        let flags = pc(&["--cflags", "--libs", "ckpt"]);
        let exe = t.join("app_pc");
        ok(
            Command::new("cc")
                .arg(t.join("app.c"))
                .arg("-o")
                .arg(&exe)
                .args(flags.split_whitespace())
                .arg(format!("-Wl,-rpath,{}", lib.display())),
            "cc with pkg-config",
        );
        run_app(&exe, t);
        let statics = pc(&["--static", "--libs-only-l", "ckpt"]);
        for l in ["-lckpt", "-lpthread", "-ldl", "-lm"] {
            assert!(statics.split_whitespace().any(|f| f == l), "pkg-config --static lacks {l}: {statics}");
        }
        let exe = t.join("app_static");
        let cflags = pc(&["--cflags", "ckpt"]);
        let private: Vec<String> = statics.split_whitespace().filter(|f| *f != "-lckpt").map(str::to_string).collect();
        ok(
            Command::new("cc")
                .arg(t.join("app.c"))
                .args(cflags.split_whitespace())
                .arg("-o")
                .arg(&exe)
                .arg(lib.join("libckpt.a"))
                .args(&private),
            "cc, static, with pkg-config --static",
        );
        run_app(&exe, t);
    } else {
        eprintln!("skipped pkg-config: not installed (apt-get install pkg-config)");
    }

    // 3. CMake
    let fortran = lib.join("fortran/gfortran/ckpt.mod").exists() && have("gfortran");
    if have("cmake") {
        let src = t.join("cmake-src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::copy(t.join("app.c"), src.join("app.c")).unwrap();
        std::fs::write(src.join("app.f90"), APP_F90).unwrap();
        let langs = if fortran { "C Fortran" } else { "C" };
        let fortran_part = if fortran {
            "add_executable(app_fortran app.f90)\ntarget_link_libraries(app_fortran PRIVATE ckpt::fortran)\n"
        } else {
            ""
        };
        std::fs::write(
            src.join("CMakeLists.txt"),
            format!(
                "cmake_minimum_required(VERSION 3.13)\nproject(app LANGUAGES {langs})\n\
                 find_package(ckpt 9.0 QUIET)\nif(ckpt_FOUND)\n  message(FATAL_ERROR \"ckpt 9.0 must not be found\")\nendif()\n\
                 unset(ckpt_DIR CACHE)\n\
                 find_package(ckpt 0.1 REQUIRED)\nmessage(STATUS \"found ckpt ${{ckpt_VERSION}}\")\n\
                 add_executable(app app.c)\ntarget_link_libraries(app PRIVATE ckpt::ckpt)\n\
                 add_executable(app_static app.c)\ntarget_link_libraries(app_static PRIVATE ckpt::ckpt_static)\n\
                 {fortran_part}"
            ),
        )
        .unwrap();
        let build = t.join("cmake-build");
        let out = ok(
            Command::new("cmake")
                .arg("-S")
                .arg(&src)
                .arg("-B")
                .arg(&build)
                .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())),
            "cmake configure",
        );
        assert!(out.contains(&format!("found ckpt {}", version())), "{out}");
        ok(Command::new("cmake").arg("--build").arg(&build), "cmake --build");
        run_app(&build.join("app"), t);
        run_app(&build.join("app_static"), t);
        if fortran {
            run_app(&build.join("app_fortran"), t);
        }
    } else {
        eprintln!("skipped CMake: not installed (apt-get install cmake)");
    }

    // 4. Fortran with the installed gfortran module
    if fortran {
        std::fs::write(t.join("app.f90"), APP_F90).unwrap();
        let exe = t.join("app_f");
        ok(
            Command::new("gfortran")
                .arg(t.join("app.f90"))
                .arg("-o")
                .arg(&exe)
                .arg(format!("-I{}", lib.join("fortran/gfortran").display()))
                .arg(format!("-L{}", lib.display()))
                .args(["-lckpt_fortran", "-lckpt"])
                .arg(format!("-Wl,-rpath,{}", lib.display())),
            "gfortran with the installed module",
        );
        run_app(&exe, t);
    } else {
        eprintln!("skipped Fortran: gfortran is not installed");
    }

    // 5. the MPI examples' Makefiles against the prefix (running them is tests/mpi.rs's job)
    if have("mpicc") && have("make") {
        let dirs: &[&str] = if have("mpif90") { &["c", "fortran"] } else { &["c"] };
        for dir in dirs {
            let out_dir = t.join(format!("mpi-{dir}"));
            std::fs::create_dir_all(&out_dir).unwrap();
            ok(
                Command::new("make")
                    .arg("-s")
                    .arg("-C")
                    .arg(root().join("examples").join(dir))
                    .arg(format!("PREFIX={}", prefix.display()))
                    .arg(format!("OUT={}", out_dir.display())),
                &format!("make -C examples/{dir} PREFIX=..."),
            );
            assert!(out_dir.join("heat_mpi").exists());
        }
    } else {
        eprintln!("skipped the MPI examples: mpicc or make is not installed");
    }
}
