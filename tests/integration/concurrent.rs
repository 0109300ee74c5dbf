//! Two real processes saving under the same checkpoint name at once: exclusion without `flock` (the
//! hard link that claims a generation fails for the loser). Every commit either succeeds or reports
//! `Conflict`; no file is ever mixed, and the survivor restores cleanly.

use std::process::{Command, Stdio};

use ckpt_core::Store;

use crate::kill::saver;

#[test]
fn two_processes_saving_under_one_name() {
    let dir = tempfile::tempdir().unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_ckpt-test-saver"))
            .arg(dir.path())
            .arg("shared")
            .env("CKPT_SAVER_MAX_STEPS", "30")
            .env("CKPT_SAVER_TOLERATE_CONFLICTS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut durable = 0;
    let mut conflicts = 0;
    for o in [&a, &b] {
        assert!(o.status.success(), "a writer failed: {}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout);
        durable += text.lines().filter(|l| l.starts_with("durable")).count();
        conflicts += text.lines().filter(|l| l.starts_with("conflict")).count();
    }
    eprintln!("two writers: {durable} commits, {conflicts} lost races");
    assert_eq!(durable + conflicts, 60);
    assert!(durable >= 30, "at least one writer's worth of commits succeeded: {durable}");
    // Whatever interleaving happened, every name holds one whole checkpoint of one step.
    let store = Store::new(ckpt_tests::reader_config("shared", dir.path()));
    let r = store.restore().unwrap().expect("a checkpoint");
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    saver::check_checkpoint(&r.checkpoint, r.app_step, 1).unwrap();
    let d = store.discover_all().unwrap();
    for c in &d.candidates {
        assert!(matches!(c.status, ckpt_core::CandidateStatus::Valid), "{}: {:?}", c.path.display(), c.status);
    }
    let tmp: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
}
