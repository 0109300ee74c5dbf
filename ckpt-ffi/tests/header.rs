//! The committed header `include/ckpt.h` must be exactly what the pinned cbindgen generates, and its
//! version macros must match the crate version.
//!
//! Regenerate with `CKPT_UPDATE_HEADER=1 cargo test -p ckpt-ffi --test header`.

use std::path::PathBuf;

fn generate() -> String {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version.split('.').map(|p| p.split(|c: char| !c.is_ascii_digit()).next().unwrap_or("0"));
    let (major, minor, patch) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let after = format!(
        "\n#define CKPT_VERSION_MAJOR {major}\n#define CKPT_VERSION_MINOR {minor}\n#define CKPT_VERSION_PATCH {patch}\n\
         /* CKPT_VERSION_NUMBER = major * 10000 + minor * 100 + patch */\n\
         #define CKPT_VERSION_NUMBER ({major} * 10000 + {minor} * 100 + {patch})\n#define CKPT_VERSION_STRING \"{version}\""
    );
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_crate(&crate_dir)
        .with_after_include(after)
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("utf-8 header")
}

#[test]
fn committed_header_is_up_to_date() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../include/ckpt.h");
    let fresh = generate();
    if std::env::var_os("CKPT_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("write include/ckpt.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/ckpt.h is out of date with ckpt-ffi: regenerate it with \
         `CKPT_UPDATE_HEADER=1 cargo test -p ckpt-ffi --test header` and commit it"
    );
}

#[test]
fn every_export_is_in_the_header_and_only_ckpt_names_are_exported() {
    let header = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../include/ckpt.h")).unwrap();
    // Every file of the crate's source: the exports are spread over its modules.
    let mut src = String::new();
    for entry in std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            src += &std::fs::read_to_string(&path).unwrap();
        }
    }
    let mut n = 0;
    for line in src.lines() {
        if let Some(rest) = line.trim().strip_prefix("pub extern \"C\" fn ") {
            let name = rest.split('(').next().unwrap();
            assert!(name.starts_with("ckpt_"), "exported name {name} lacks the ckpt_ prefix");
            assert!(
                header.contains(&format!(" {name}(")) || header.contains(&format!("*{name}(")),
                "{name} is missing from include/ckpt.h"
            );
            n += 1;
        }
    }
    assert!(n >= 20, "found only {n} exports");
}
