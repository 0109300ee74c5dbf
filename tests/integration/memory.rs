//! Streaming: saving N MiB of state needs bounded scratch memory, not another N MiB.

#[test]
fn a_save_needs_bounded_scratch_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mib = 256;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ckpt-test-memory"))
        .arg(dir.path())
        .arg(mib.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<i64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let extra_mib = (v[1] - v[0]) as f64 / 1024.0;
    eprintln!("saving {mib} MiB raw + {mib} MiB zstd/shuffle raised max RSS by {extra_mib:.1} MiB");
    assert!(extra_mib < 64.0, "a save of {mib} MiB raised max RSS by {extra_mib:.1} MiB (limit 64)");
}
