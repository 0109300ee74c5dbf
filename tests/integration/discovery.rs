//! Restart discovery on the real file system: retention, fallback past damaged files, the error when
//! nothing verifies, odd candidates (truncated, empty, newer format, directories), checkpoints of earlier
//! job ids of the same application, job step names, a separate restart directory, stale temporary files,
//! two writers racing for one generation, and the environment's naming rules.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ckpt_core::{
    CandidateStatus, Checkpoint, CommitInfo, Config, Discovery, Error, ErrorKind, NameKind, Restored, Store, classify,
};
use ckpt_tests::{Rng, config};

/// The content saved for `step` (different for every step, 64 KiB + a step-dependent tail).
fn payload(step: u64) -> Vec<u8> {
    let mut rng = Rng::new(0xD15C_0000 ^ step);
    rng.bytes(64 * 1024 + ((step % 13) as usize) * 100)
}

fn save(store: &Store, step: u64) -> CommitInfo {
    let mut w = store.begin(step).unwrap_or_else(|e| panic!("begin(step {step}): {e}"));
    w.add_bytes("data", &payload(step)).unwrap();
    w.add_serde("step", &step).unwrap();
    let info = w.commit().unwrap_or_else(|e| panic!("commit(step {step}): {e}"));
    assert!(info.warnings.is_empty(), "commit of step {step} warned: {:?}", info.warnings);
    info
}

/// Checks that `r` holds exactly what [`save`] wrote for `step`.
fn assert_holds(r: &Restored, step: u64) {
    let cp = &r.checkpoint;
    assert_eq!(r.app_step, step, "restored {} (generation {})", r.chosen_path.display(), r.generation);
    assert_eq!(cp.read_serde::<u64>("step").unwrap(), step, "{}", cp.path().display());
    assert!(
        cp.read("data").unwrap()[..] == payload(step)[..],
        "{}: data is not that of step {step}",
        cp.path().display()
    );
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

/// Flips one byte in the middle of section `section` of the file at `path` (in place, so every hard link to
/// the file sees it).
fn flip_byte_in_section(path: &Path, section: &str) {
    let offset = {
        let cp = Checkpoint::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let s = cp.section(section).unwrap();
        s.offset + s.stored_len / 2
    };
    let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, offset).unwrap();
    f.sync_all().unwrap();
}

fn same_inode(a: &Path, b: &Path) -> bool {
    let (ma, mb) = (fs::metadata(a).unwrap(), fs::metadata(b).unwrap());
    (ma.dev(), ma.ino()) == (mb.dev(), mb.ino())
}

/// Damages `<base>.<g>` and makes sure `<base>` is damaged too when it is another name of it (it is a hard
/// link on file systems that have them; otherwise it is damaged separately).
fn damage_newest(dir: &Path, base: &str, g: u64) {
    let gen_path = dir.join(format!("{base}.{g}"));
    flip_byte_in_section(&gen_path, "data");
    let cur = dir.join(base);
    if !same_inode(&gen_path, &cur) {
        flip_byte_in_section(&cur, "data");
    }
}

fn candidate<'a>(d: &'a Discovery, path: &Path) -> &'a ckpt_core::Candidate {
    d.candidates.iter().find(|c| c.path == path).unwrap_or_else(|| {
        panic!(
            "{} is not a candidate; candidates: {:?}",
            path.display(),
            d.candidates.iter().map(|c| &c.path).collect::<Vec<_>>()
        )
    })
}

fn invalid_kind(d: &Discovery, path: &Path) -> (ErrorKind, String) {
    match &candidate(d, path).status {
        CandidateStatus::Invalid(e) => (e.kind(), e.to_string()),
        s => panic!("{} should be invalid, is {s:?}", path.display()),
    }
}

fn rejected_paths(r: &Restored) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = r.rejected.iter().map(|(p, _)| p.clone()).collect();
    v.sort();
    v
}

#[test]
fn retention_keeps_the_newest_two_generations_and_the_stable_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("ret", dir.path());
    cfg.keep = 2;
    let store = Store::new(cfg);
    for step in 1..=5 {
        let info = save(&store, step * 10);
        assert_eq!(info.generation, step);
        assert_eq!(info.path, dir.path().join("ret.ckpt"));
        assert_eq!(info.generation_path, dir.path().join(format!("ret.ckpt.{step}")));
    }
    assert_eq!(names(dir.path()), ["ret.ckpt", "ret.ckpt.4", "ret.ckpt.5"], "after 5 saves with keep=2");
    let cur = fs::read(dir.path().join("ret.ckpt")).unwrap();
    let g5 = fs::read(dir.path().join("ret.ckpt.5")).unwrap();
    assert!(cur == g5, "ret.ckpt is not the same content as generation 5");
    let r = store.restore().unwrap().expect("a checkpoint");
    assert_eq!(r.generation, 5);
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    assert_holds(&r, 50);
    let d = store.discover_all().unwrap();
    let valid: Vec<_> =
        d.candidates.iter().filter(|c| matches!(c.status, CandidateStatus::Valid)).map(|c| c.generation).collect();
    assert_eq!(valid, [Some(5), Some(5), Some(4)], "discover_all: {d:?}");
    assert_eq!(store.valid_generations().unwrap(), [5, 4]);
}

#[test]
fn damaged_newest_generation_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(config("fb", dir.path()));
    for step in 1..=5 {
        save(&store, step);
    }
    damage_newest(dir.path(), "fb.ckpt", 5);
    let r = store.restore().expect("restore with a damaged newest generation").expect("a checkpoint");
    assert_eq!(r.generation, 4, "restored {}", r.chosen_path.display());
    assert_eq!(r.chosen_path, dir.path().join("fb.ckpt.4"));
    assert_eq!(r.other_job, None);
    assert_holds(&r, 4);
    assert_eq!(rejected_paths(&r), [dir.path().join("fb.ckpt"), dir.path().join("fb.ckpt.5")]);
    for (p, e) in &r.rejected {
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{}: {e}", p.display());
    }
    let (_, first) = &r.rejected.iter().find(|(p, _)| p.ends_with("fb.ckpt")).unwrap();
    assert!(first.to_string().contains("crc32 mismatch"), "reason for fb.ckpt: {first}");

    let d = store.discover().unwrap();
    assert_eq!(d.chosen.map(|i| d.candidates[i].path.clone()), Some(dir.path().join("fb.ckpt.4")));
    assert!(d.explanation.contains("fb.ckpt.4"), "explanation: {}", d.explanation);
    assert!(d.explanation.contains("rejected"), "explanation does not mention the rejection: {}", d.explanation);
    assert_eq!(store.valid_generations().unwrap(), [4]);
}

#[test]
fn nothing_valid_is_an_error_naming_every_file_unless_a_fresh_start_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(config("bad", dir.path()));
    for step in 1..=5 {
        save(&store, step);
    }
    damage_newest(dir.path(), "bad.ckpt", 5);
    flip_byte_in_section(&dir.path().join("bad.ckpt.4"), "data");
    let e = store.restore().expect_err("restore must fail when no checkpoint verifies");
    assert_eq!(e.kind(), ErrorKind::NoValidCheckpoint, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("3 checkpoint file(s)"), "message: {msg}");
    for name in ["bad.ckpt", "bad.ckpt.5", "bad.ckpt.4"] {
        let p = dir.path().join(name).display().to_string();
        let line = error_line(&msg, &p).unwrap_or_else(|| panic!("the message does not name {p}: {msg}"));
        assert!(line.len() > p.len() + 10, "no reason given for {p}: {line:?}");
    }
    for name in ["bad.ckpt", "bad.ckpt.4"] {
        let p = dir.path().join(name).display().to_string();
        let line = error_line(&msg, &p).unwrap();
        assert!(line.contains("crc32 mismatch"), "reason for {name} is not the checksum: {line:?}");
    }
    assert!(msg.contains("CKPT_ALLOW_FRESH_START"), "message does not say how to start fresh: {msg}");

    let mut cfg = config("bad", dir.path());
    cfg.allow_fresh_start = true;
    let r = Store::new(cfg).restore().expect("allow_fresh_start: no error");
    assert!(r.is_none(), "allow_fresh_start must give Ok(None), got {:?}", r.map(|r| r.chosen_path));
}

/// The line of a `NoValidCheckpoint` message about file `p` (`  <p>: <reason>`).
fn error_line<'a>(msg: &'a str, p: &str) -> Option<&'a str> {
    msg.lines().find(|l| l.trim_start().strip_prefix(p).is_some_and(|rest| rest.starts_with(": ")))
}

/// `<base>` and `<base>.<N>` are two names of one file. When it is damaged, the second name examined must
/// still say what is wrong (or which file it duplicates), not only "same file as a rejected candidate",
/// which leaves the reader of a `NoValidCheckpoint` message guessing which candidate and why.
#[test]
fn the_second_name_of_a_damaged_file_says_why_it_was_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(config("dup", dir.path()));
    save(&store, 1);
    damage_newest(dir.path(), "dup.ckpt", 1);
    let e = store.restore().expect_err("the only checkpoint is damaged");
    assert_eq!(e.kind(), ErrorKind::NoValidCheckpoint, "{e}");
    let msg = e.to_string();
    for name in ["dup.ckpt", "dup.ckpt.1"] {
        let p = dir.path().join(name).display().to_string();
        let line = error_line(&msg, &p).unwrap_or_else(|| panic!("the message does not name {p}: {msg}"));
        let reason = &line.trim_start()[p.len() + 2..];
        let names_the_twin = ["dup.ckpt", "dup.ckpt.1"].iter().any(|n| *n != name && reason.contains(&format!("/{n}")));
        assert!(
            reason.contains("crc32 mismatch") || names_the_twin,
            "the reason for {name} neither gives the damage nor names the file it duplicates: {reason:?}\nwhole message:\n{msg}"
        );
    }
}

#[test]
fn truncated_empty_newer_version_and_directory_candidates_each_get_their_own_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("odd", dir.path());
    cfg.keep = 10;
    let store = Store::new(cfg);
    for step in 1..=5 {
        save(&store, step);
    }
    let p = |s: &str| dir.path().join(s);
    // generation 3: truncated to half its length
    let len3 = fs::metadata(p("odd.ckpt.3")).unwrap().len();
    OpenOptions::new().write(true).open(p("odd.ckpt.3")).unwrap().set_len(len3 / 2).unwrap();
    // generation 4: zero length
    OpenOptions::new().write(true).open(p("odd.ckpt.4")).unwrap().set_len(0).unwrap();
    // generation 5 (and odd.ckpt, the same file): a newer format version, nothing else changed
    {
        let f = OpenOptions::new().read(true).write(true).open(p("odd.ckpt.5")).unwrap();
        f.write_all_at(&2u16.to_le_bytes(), 8).unwrap();
        if !same_inode(&p("odd.ckpt.5"), &p("odd.ckpt")) {
            let f = OpenOptions::new().write(true).open(p("odd.ckpt")).unwrap();
            f.write_all_at(&2u16.to_le_bytes(), 8).unwrap();
        }
    }
    // generation 6: a directory
    fs::create_dir(p("odd.ckpt.6")).unwrap();
    fs::write(p("odd.ckpt.6").join("rank0.ckpt"), b"not a checkpoint").unwrap();

    let r = store.restore().expect("restore must fall back to generation 2").expect("a checkpoint");
    assert_eq!(r.generation, 2, "chose {}", r.chosen_path.display());
    assert_holds(&r, 2);
    assert_eq!(rejected_paths(&r), [p("odd.ckpt"), p("odd.ckpt.3"), p("odd.ckpt.4"), p("odd.ckpt.5")]);

    let d = store.discover_all().unwrap();
    let (k, m) = invalid_kind(&d, &p("odd.ckpt.3"));
    assert_eq!(k, ErrorKind::Corrupt, "{m}");
    assert!(m.contains("truncated"), "truncated file: {m}");
    let (k, m) = invalid_kind(&d, &p("odd.ckpt.4"));
    assert_eq!(k, ErrorKind::Corrupt, "{m}");
    assert!(m.contains("empty") && m.contains("0 bytes"), "empty file: {m}");
    for name in ["odd.ckpt.5", "odd.ckpt"] {
        let (k, m) = invalid_kind(&d, &p(name));
        assert_eq!(k, ErrorKind::UnsupportedVersion, "{name}: {m}");
        assert!(m.contains("version 2"), "{name}: {m}");
    }
    assert!(
        d.candidates.iter().all(|c| c.path != p("odd.ckpt.6")),
        "a directory is not a checkpoint candidate: {:?}",
        d.candidates.iter().map(|c| &c.path).collect::<Vec<_>>()
    );
    // Generation names come from the file names (the header is unreadable for three of them).
    assert_eq!(candidate(&d, &p("odd.ckpt.4")).generation, Some(4));
    assert!(matches!(candidate(&d, &p("odd.ckpt.1")).status, CandidateStatus::Valid));
    assert_eq!(store.valid_generations().unwrap(), [2, 1]);

    // Saving past all this works and becomes the newest (above the directory's number too); the damaged
    // generations restart rejected are renamed aside (the newer-version one is left alone).
    let mut w = store.begin(7).unwrap();
    w.add_bytes("data", &payload(7)).unwrap();
    w.add_serde("step", &7u64).unwrap();
    let info = w.commit().unwrap();
    assert!(info.generation > 6, "generation {} would collide with the names present", info.generation);
    assert_eq!(info.warnings.len(), 2, "{:?}", info.warnings);
    for g in [3, 4] {
        assert!(
            p(&format!("odd.ckpt.{g}.damaged")).exists() && !p(&format!("odd.ckpt.{g}")).exists(),
            "generation {g}"
        );
    }
    assert!(p("odd.ckpt.5").exists(), "a file of a newer format version is not damaged");
    let r = store.restore().unwrap().unwrap();
    assert_eq!(r.generation, info.generation);
    assert_holds(&r, 7);
}

#[test]
fn a_directory_at_the_stable_name_makes_the_save_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(config("dirname", dir.path()));
    fs::create_dir(dir.path().join("dirname.ckpt")).unwrap();
    assert!(store.restore().unwrap().is_none(), "a directory alone is not a checkpoint");
    let mut w = store.begin(1).unwrap();
    w.add_bytes("data", &payload(1)).unwrap();
    w.add_serde("step", &1u64).unwrap();
    let e = w.commit().expect_err("renaming over a directory must fail");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("dirname.ckpt"), "{e}");
    let left: Vec<String> = names(dir.path()).into_iter().filter(|n| n.contains(".tmp.")).collect();
    assert!(left.is_empty(), "the failed save left temporary files: {left:?}");
    // Restore does not panic, and the directory is no candidate. (The generation name linked before the
    // failed rename, `dirname.ckpt.1`, stays behind; it is a complete file, so taking it is harmless.)
    let d = store.discover_all().unwrap();
    assert!(d.candidates.iter().all(|c| c.path != dir.path().join("dirname.ckpt")), "{d:?}");
    if let Some(r) = store.restore().expect("restore next to a directory named like the checkpoint") {
        assert_holds(&r, 1);
    }
}

#[test]
fn a_resubmitted_job_finds_the_checkpoint_of_the_earlier_job_of_the_same_application() {
    let dir = tempfile::tempdir().unwrap();
    let with_job = |app: &str, job: &str| {
        let mut c = config(app, dir.path());
        c.job_id = Some(job.to_string());
        Store::new(c)
    };
    let first = with_job("sim", "1000");
    save(&first, 10);
    let info = save(&first, 20);
    assert_eq!(info.path, dir.path().join("1000.ckpt"));

    let second = with_job("sim", "2000");
    let r = second.restore().unwrap().expect("the checkpoint of job 1000");
    assert_eq!(r.other_job.as_deref(), Some("1000"), "chosen {}", r.chosen_path.display());
    assert_eq!(r.generation, 2);
    assert_holds(&r, 20);
    let d = second.discover().unwrap();
    assert!(d.explanation.contains("1000"), "explanation does not name the earlier job: {}", d.explanation);

    let other_app = with_job("other", "2000");
    let r = other_app.restore().expect("another application's files are no error");
    assert!(r.is_none(), "a different application took {:?}", r.map(|r| r.chosen_path));

    // The earlier job's newest file is damaged: its previous generation is taken.
    damage_newest(dir.path(), "1000.ckpt", 2);
    let r = second.restore().unwrap().expect("generation 1 of job 1000");
    assert_eq!(r.other_job.as_deref(), Some("1000"));
    assert_eq!(r.generation, 1, "chosen {}", r.chosen_path.display());
    assert_holds(&r, 10);

    // Once the new job has its own checkpoint, it is preferred.
    save(&second, 30);
    let r = second.restore().unwrap().unwrap();
    assert_eq!(r.other_job, None, "chosen {}", r.chosen_path.display());
    assert_eq!(r.chosen_path.parent(), Some(dir.path()));
    assert!(r.chosen_path.file_name().unwrap().to_str().unwrap().starts_with("2000.ckpt"), "{r:?}");
    assert_holds(&r, 30);
}

/// A resubmitted job (new job id) whose only checkpoint from the earlier job is damaged so that it does not
/// open (here: truncated by 10 bytes, as a partial copy into the restart directory would leave it) must get
/// the same `NoValidCheckpoint` error the earlier job id gets, not a silent fresh start: the crate promises
/// "if checkpoints exist but none verifies, that is an error listing every file and why, never a silent
/// fresh start". The file's header is intact and names application `sim`.
#[test]
fn a_resubmitted_job_does_not_silently_start_fresh_when_the_earlier_jobs_checkpoint_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let with_job = |job: &str| {
        let mut c = config("sim", dir.path());
        c.job_id = Some(job.to_string());
        Store::new(c)
    };
    save(&with_job("1000"), 10);
    let p = dir.path().join("1000.ckpt.1");
    let len = fs::metadata(&p).unwrap().len();
    OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 10).unwrap();
    if !same_inode(&p, &dir.path().join("1000.ckpt")) {
        OpenOptions::new().write(true).open(dir.path().join("1000.ckpt")).unwrap().set_len(len - 10).unwrap();
    }
    // The header alone still says whose checkpoint this is.
    let bytes = fs::read(&p).unwrap();
    let header_len = ckpt_core::Header::peek_len(&bytes, bytes.len() as u64).unwrap() as usize;
    let (header, _) = ckpt_core::Header::decode(&bytes[..header_len]).unwrap();
    assert_eq!((header.app_name.as_str(), header.job_id.as_str()), ("sim", "1000"));
    let same_job = with_job("1000").restore().expect_err("job 1000 itself gets an error");
    assert_eq!(same_job.kind(), ErrorKind::NoValidCheckpoint, "{same_job}");
    match with_job("2000").restore() {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::NoValidCheckpoint, "{e}");
            assert!(e.to_string().contains("1000.ckpt"), "{e}");
        }
        Ok(r) => panic!(
            "job 2000 of the same application silently starts fresh ({:?}) although job 1000's checkpoint \
             exists and does not verify; job 1000 itself gets: {same_job}",
            r.map(|r| r.chosen_path)
        ),
    }
}

#[test]
fn job_step_checkpoints_are_named_job_dot_step() {
    let dir = tempfile::tempdir().unwrap();
    let store_for = |step_id: Option<u32>| {
        let mut c = config("sim", dir.path());
        c.job_id = Some("77".into());
        c.step_id = step_id;
        Store::new(c)
    };
    let s3 = store_for(Some(3));
    assert_eq!(s3.config().base_name(), "77.3.ckpt");
    let info = save(&s3, 5);
    assert_eq!(info.path, dir.path().join("77.3.ckpt"));
    assert_eq!(info.generation_path, dir.path().join("77.3.ckpt.1"));
    let r = s3.restore().unwrap().unwrap();
    assert_eq!(r.checkpoint.header().step_id, Some(3));
    assert_eq!(r.other_job, None);
    assert_holds(&r, 5);
    for other in [None, Some(4)] {
        let r = store_for(other).restore().unwrap();
        assert!(r.is_none(), "step {other:?} took the checkpoint of step 3: {:?}", r.map(|r| r.chosen_path));
    }
}

#[test]
fn restart_directory_can_differ_from_the_checkpoint_directory() {
    let root = tempfile::tempdir().unwrap();
    let ckdir = root.path().join("ckpt");
    let rsdir = root.path().join("restart");
    // A previous run wrote to what is now the restart directory.
    save(&Store::new(config("rs", &rsdir)), 5);

    let mut cfg = config("rs", &ckdir);
    cfg.restart_dir = rsdir.clone();
    let store = Store::new(cfg);
    let r = store.restore().unwrap().expect("the checkpoint in the restart directory");
    assert_eq!(r.chosen_path.parent(), Some(rsdir.as_path()));
    assert_holds(&r, 5);

    let info = save(&store, 6);
    assert_eq!(info.path, ckdir.join("rs.ckpt"), "saves go to the checkpoint directory");
    assert_eq!(names(&rsdir), ["rs.ckpt", "rs.ckpt.1"], "the restart directory must not change");
    // Restart still reads the restart directory...
    assert_holds(&store.restore().unwrap().unwrap(), 5);
    // ... and a run whose restart directory is the checkpoint directory finds the new save.
    assert_holds(&Store::new(config("rs", &ckdir)).restore().unwrap().unwrap(), 6);
}

fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().unwrap();
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    assert_eq!(rc, -1, "pid {pid} of an exited child still exists");
    pid
}

#[test]
fn stale_temporary_files_of_dead_writers_are_removed_by_the_next_save() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("stale", dir.path());
    let host = cfg.host.clone();
    assert_eq!(host, ckpt_core::hostname());
    let store = Store::new(cfg);
    save(&store, 1);
    let dead = format!("stale.ckpt.tmp.{host}.{}.abc", dead_pid());
    let live = format!("stale.ckpt.tmp.{host}.{}.def", std::process::id());
    let remote_recent = "stale.ckpt.tmp.otherhost.1.x".to_string();
    let remote_old = "stale.ckpt.tmp.otherhost.1.y".to_string();
    for n in [&dead, &live, &remote_recent, &remote_old] {
        assert!(matches!(classify("stale.ckpt", n), Some(NameKind::Temporary { .. })), "{n}");
        fs::write(dir.path().join(n), b"partial save").unwrap();
    }
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    fs::File::options().write(true).open(dir.path().join(&remote_old)).unwrap().set_modified(two_hours_ago).unwrap();

    // Discovery ignores them.
    let r = store.restore().unwrap().unwrap();
    assert!(r.rejected.is_empty(), "temporary files are not candidates: {:?}", r.rejected);

    // The first save of a process lists the directory (later saves reuse the listing for a few seconds),
    // as the save after a restart does.
    let store = Store::new(config("stale", dir.path()));
    save(&store, 2);
    let left = names(dir.path());
    assert!(!left.contains(&dead), "the dead writer's file {dead} survived the save: {left:?}");
    assert!(!left.contains(&remote_old), "another host's 2-hour-old file survived: {left:?}");
    assert!(left.contains(&live), "a live writer's file was removed: {left:?}");
    assert!(left.contains(&remote_recent), "another host's recent file was removed: {left:?}");

    // A save to an exact path (`begin_file`, what `ckpt.save` and `ckpt_save_file` use) cleans up after
    // its own dead writers too, whatever the configuration's checkpoint name.
    let dead_file = format!("state.bin.tmp.{host}.{}.abc", dead_pid());
    fs::write(dir.path().join(&dead_file), b"partial save").unwrap();
    let cfg = config("stale", dir.path());
    let mut w = ckpt_core::begin_file(
        &dir.path().join("state.bin"),
        1,
        &cfg,
        std::sync::Arc::new(ckpt_core::storage::FileStorage),
    )
    .unwrap();
    w.add_bytes("x", b"state").unwrap();
    w.commit().unwrap();
    let left = names(dir.path());
    assert!(!left.contains(&dead_file), "the dead writer's file {dead_file} survived the save: {left:?}");
}

#[test]
fn two_writers_on_one_generation_conflict_and_the_first_commit_wins() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::new(config("race", dir.path()));
    let b = Store::new(config("race", dir.path()));
    for (round, a_first) in [(1u64, true), (2, false)] {
        let (sa, sb) = (round * 100 + 1, round * 100 + 2);
        let mut wa = a.begin(sa).unwrap();
        let mut wb = b.begin(sb).unwrap();
        assert_eq!(wa.generation(), round, "round {round}");
        assert_eq!(wb.generation(), round, "both writers must choose the same generation");
        for (w, s) in [(&mut wa, sa), (&mut wb, sb)] {
            w.add_bytes("data", &payload(s)).unwrap();
            w.add_serde("step", &s).unwrap();
        }
        let (winner, first, second) = if a_first { (sa, wa, wb) } else { (sb, wb, wa) };
        let info = first.commit().unwrap_or_else(|e| panic!("round {round}: first commit: {e}"));
        assert_eq!(info.generation, round);
        let e = second.commit().expect_err("the second writer of the same generation must fail");
        assert_eq!(e.kind(), ErrorKind::Conflict, "round {round}: {e}");
        assert!(e.to_string().contains(&format!("race.ckpt.{round}")), "{e}");
        let r = a.restore().unwrap().unwrap();
        assert_eq!(r.generation, round);
        assert_holds(&r, winner);
        let tmps: Vec<String> = names(dir.path()).into_iter().filter(|n| n.contains(".tmp.")).collect();
        assert!(tmps.is_empty(), "round {round}: the loser left {tmps:?}");
        // The stable name is the winner's file too.
        let cur = Checkpoint::open(dir.path().join("race.ckpt")).unwrap();
        assert_eq!(cur.step(), winner, "race.ckpt is not the winner's file");
    }
}

#[test]
fn config_from_the_environment_names_and_places_the_files() {
    let root = tempfile::tempdir().unwrap();
    let dir_s = |s: &str| root.path().join(s).display().to_string();
    let store_from = |vars: &[(&str, String)]| {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        Store::new(Config::from_lookup(None, |k| map.get(k).cloned()).expect("valid environment"))
    };

    // A job step with separate checkpoint and restart directories.
    let s = store_from(&[
        ("SLURM_JOB_ID", "4242".into()),
        ("SLURM_STEP_ID", "3".into()),
        ("SLURM_JOB_NAME", "sim".into()),
        ("SLURM_CHECKPOINT_DIR", dir_s("a")),
        ("SLURM_RESTART_DIR", dir_s("r")),
    ]);
    assert!(s.restore().unwrap().is_none(), "empty restart directory");
    let info = save(&s, 1);
    assert_eq!(info.path, root.path().join("a/4242.3.ckpt"), "the checkpoint directory is created when missing");
    let h = Checkpoint::open(&info.path).unwrap().header().clone();
    assert_eq!((h.job_id.as_str(), h.app_name.as_str(), h.step_id), ("4242", "sim", Some(3)));
    assert!(s.restore().unwrap().is_none(), "restart reads SLURM_RESTART_DIR, not the checkpoint directory");

    // CKPT_DIR wins over SLURM_CHECKPOINT_DIR; the restart directory defaults to the checkpoint directory.
    let s = store_from(&[
        ("SLURM_JOB_ID", "4242".into()),
        ("SLURM_STEP_ID", "3".into()),
        ("CKPT_DIR", dir_s("b")),
        ("SLURM_CHECKPOINT_DIR", dir_s("a")),
    ]);
    let info = save(&s, 2);
    assert_eq!(info.path, root.path().join("b/4242.3.ckpt"));
    assert_holds(&s.restore().unwrap().unwrap(), 2);

    // The batch step (0xFFFFFFFE) is not a job step: the checkpoint belongs to the whole job.
    let s = store_from(&[
        ("SLURM_JOB_ID", "4242".into()),
        ("SLURM_STEP_ID", "4294967294".into()),
        ("CKPT_DIR", dir_s("c")),
    ]);
    assert_eq!(save(&s, 3).path, root.path().join("c/4242.ckpt"));

    // Outside Slurm the application name stands in for the job id.
    let s = store_from(&[("CKPT_NAME", "heat".into()), ("CKPT_DIR", dir_s("d"))]);
    assert_eq!(save(&s, 4).path, root.path().join("d/heat.ckpt"));

    // The restart directory of a resubmission is the previous job's checkpoint directory.
    let s = store_from(&[
        ("SLURM_JOB_ID", "5000".into()),
        ("SLURM_STEP_ID", "3".into()),
        ("SLURM_JOB_NAME", "sim".into()),
        ("CKPT_DIR", dir_s("e")),
        ("SLURM_RESTART_DIR", dir_s("a")),
    ]);
    let r = s.restore().unwrap().expect("job 4242's step-3 checkpoint");
    assert_eq!(r.other_job.as_deref(), Some("4242"));
    assert_holds(&r, 1);
}

/// After a restart that fell back past a damaged newest generation, the next save must not retire the
/// valid older generation and keep the damaged one (keep = 2 left one valid file before).
#[test]
fn damaged_generations_never_count_toward_keep() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(config("keep", dir.path()));
    save(&store, 1);
    save(&store, 2);
    let p = |s: &str| dir.path().join(s);
    flip_byte_in_section(&p("keep.ckpt.2"), "data");

    let restarted = Store::new(config("keep", dir.path()));
    let r = restarted.restore().unwrap().expect("falls back to generation 1");
    assert_eq!(r.generation, 1);
    let mut w = restarted.begin(3).unwrap();
    w.add_bytes("data", &payload(3)).unwrap();
    w.add_serde("step", &3u64).unwrap();
    let info = w.commit().unwrap();
    assert_eq!(info.generation, 3);
    assert!(
        info.warnings.iter().any(|w| w.contains("keep.ckpt.2") && w.contains("damaged") && w.contains("renamed")),
        "the commit must say the damaged generation was renamed aside: {:?}",
        info.warnings
    );
    assert!(p("keep.ckpt.1").exists(), "the valid older generation was retired for a damaged one");
    assert!(p("keep.ckpt.2.damaged").exists() && !p("keep.ckpt.2").exists());
    assert_eq!(Store::new(config("keep", dir.path())).valid_generations().unwrap(), [3, 1]);
    // Two valid generations remain: damage the newest, and restart still has one.
    flip_byte_in_section(&p("keep.ckpt.3"), "data");
    let r = Store::new(config("keep", dir.path())).restore().unwrap().unwrap();
    assert_eq!(r.generation, 1);
    assert_holds(&r, 1);
}

/// A store over the real file system whose operations are recorded (none fails).
fn observed(cfg: Config) -> (Store, ckpt_core::storage::FaultStorage<ckpt_core::storage::FileStorage>) {
    let storage = ckpt_core::storage::FaultStorage::new(ckpt_core::storage::FileStorage, u64::MAX, libc::EIO);
    (Store::with_storage(cfg, std::sync::Arc::new(storage.clone())), storage)
}

fn listings(s: &ckpt_core::storage::FaultStorage<ckpt_core::storage::FileStorage>) -> usize {
    s.ops().iter().filter(|o| **o == ckpt_core::storage::Op::ReadDir).count()
}

/// `n` empty files of other jobs in `dir` (a shared scratch directory).
fn crowd(dir: &Path, n: usize) {
    for i in 0..n {
        fs::write(dir.join(format!("other-job-{i}.out")), b"").unwrap();
    }
}

#[test]
fn restart_finds_the_newest_checkpoint_by_name_and_lists_only_when_that_cannot_settle_it() {
    let dir = tempfile::tempdir().unwrap();
    crowd(dir.path(), 50);
    let mut cfg = config("byname", dir.path());
    cfg.keep = 5;
    let store = Store::new(cfg.clone());
    for step in 1..=5 {
        save(&store, step);
    }
    let p = |s: &str| dir.path().join(s);
    let restore = || {
        let (s, ops) = observed(cfg.clone());
        let r = s.restore().unwrap().expect("a checkpoint");
        (r, listings(&ops))
    };

    // The common case: `<base>` is the newest generation and verifies. No listing.
    let (r, listed) = restore();
    assert_eq!((r.generation, r.chosen_path.clone()), (5, p("byname.ckpt")));
    assert_holds(&r, 5);
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    assert_eq!(listed, 0, "the restart listed the directory");

    // `<base>` and its generation damaged: the generations below, found by name, settle it.
    damage_newest(dir.path(), "byname.ckpt", 5);
    let (r, listed) = restore();
    assert_eq!((r.generation, r.chosen_path.clone()), (4, p("byname.ckpt.4")));
    assert_holds(&r, 4);
    assert_eq!(rejected_paths(&r), [p("byname.ckpt"), p("byname.ckpt.5")]);
    assert_eq!(listed, 0);

    // A gap (generation 3 gone) below a damaged generation 4: only a listing finds 2 and 1.
    flip_byte_in_section(&p("byname.ckpt.4"), "data");
    fs::rename(p("byname.ckpt.3"), p("byname.ckpt.3.moved")).unwrap();
    let (r, listed) = restore();
    assert_eq!((r.generation, r.chosen_path.clone()), (2, p("byname.ckpt.2")));
    assert_holds(&r, 2);
    assert_eq!(rejected_paths(&r), [p("byname.ckpt"), p("byname.ckpt.4"), p("byname.ckpt.5")]);
    assert!(listed >= 1, "a gap below every valid generation found by name must make discovery list");

    // `<base>` missing, generations present (a file system without hard links, a hand-removed name).
    fs::remove_file(p("byname.ckpt")).unwrap();
    let (r, listed) = restore();
    assert_eq!((r.generation, r.chosen_path.clone()), (2, p("byname.ckpt.2")));
    assert!(listed >= 1);
    assert_eq!(rejected_paths(&r), [p("byname.ckpt.4"), p("byname.ckpt.5")]);

    // A generation above `<base>` (a save that died between its link and its rename): it is newer, so
    // it is chosen, as a listing would.
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = config("above", dir2.path());
    let s2 = Store::new(cfg2.clone());
    for step in 1..=3 {
        save(&s2, step);
    }
    let (cur, g2) = (dir2.path().join("above.ckpt"), dir2.path().join("above.ckpt.2"));
    let tmp = dir2.path().join("x");
    fs::hard_link(&g2, &tmp).unwrap();
    fs::rename(&tmp, &cur).unwrap(); // `<base>` back at generation 2; generation 3 stays
    let (s, ops) = observed(cfg2);
    let r = s.restore().unwrap().unwrap();
    assert_eq!((r.generation, r.chosen_path.clone()), (3, dir2.path().join("above.ckpt.3")));
    assert_holds(&r, 3);
    assert!(listings(&ops) >= 1);
}

#[test]
fn saves_in_a_crowded_directory_find_their_files_by_name() {
    use ckpt_core::storage::Storage as _;
    let dir = tempfile::tempdir().unwrap();
    // Enough names that the directory counts as large (its size, about 64 KiB of entries).
    crowd(dir.path(), 4000);
    assert!(ckpt_core::storage::FileStorage.large_dir(dir.path()), "not a large directory");
    let p = |s: &str| dir.path().join(s);
    let mut cfg = config("crowded", dir.path());
    cfg.keep = 3;
    let first = Store::new(cfg.clone());
    for step in 1..=4 {
        save(&first, step);
    }
    // A gap below the newest generations, and a dead writer's temporary file.
    fs::rename(p("crowded.ckpt.3"), p("crowded.ckpt.3.moved")).unwrap();
    let dead = format!("crowded.ckpt.tmp.{}.{}.abc", cfg.host, dead_pid());
    fs::write(p(&dead), b"partial save").unwrap();

    // A new process's first save: numbered from `<base>`'s header; the dead writer's file goes with the
    // one listing the process makes, off the save's path.
    let second = Store::new(cfg.clone());
    let info = save(&second, 5);
    assert_eq!(info.generation, 5);
    let t = std::time::Instant::now();
    while p(&dead).exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "the dead writer's file was never removed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The next save retires what finding by name did not reach (generation 2, below the gap).
    std::thread::sleep(Duration::from_millis(50));
    let info = save(&second, 6);
    assert_eq!(info.generation, 6);
    let left: Vec<String> = names(dir.path()).into_iter().filter(|n| n.starts_with("crowded.")).collect();
    assert_eq!(
        left,
        ["crowded.ckpt", "crowded.ckpt.3.moved", "crowded.ckpt.4", "crowded.ckpt.5", "crowded.ckpt.6"],
        "keep = 3"
    );

    // Another store of this process (the directory already swept): its saves never list.
    let (third, ops) = observed(cfg.clone());
    let info = save(&third, 7);
    assert_eq!(info.generation, 7);
    save(&third, 8);
    assert_eq!(listings(&ops), 0, "a save listed the crowded directory");
    let left: Vec<String> = names(dir.path()).into_iter().filter(|n| n.starts_with("crowded.")).collect();
    assert_eq!(left, ["crowded.ckpt", "crowded.ckpt.3.moved", "crowded.ckpt.6", "crowded.ckpt.7", "crowded.ckpt.8"]);
    let r = third.restore().unwrap().unwrap();
    assert_eq!(r.generation, 8);
    assert_holds(&r, 8);
    assert_eq!(listings(&ops), 0);
}

#[test]
fn restore_into_copies_the_newest_valid_checkpoint_in_one_pass_and_falls_back_past_damage() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("into", dir.path());
    cfg.keep = 3;
    let store = Store::new(cfg.clone());
    for step in 1..=3 {
        save(&store, step);
    }
    let fresh = || Store::new(cfg.clone());
    let mut buf = vec![0u8; payload(3).len()];
    let r = fresh().restore_into(&mut [("data", &mut buf[..])]).unwrap().expect("a checkpoint");
    assert_eq!(r.generation, 3);
    assert!(buf == payload(3), "the buffer does not hold step 3's data");
    assert!(r.rejected.is_empty());
    assert_eq!(r.checkpoint.read_serde::<u64>("step").unwrap(), 3);

    // A buffer of another size, or a section the checkpoint lacks: an error, nothing written, no fallback.
    let mut small = [9u8; 100];
    let e = fresh().restore_into(&mut [("data", &mut small[..])]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(small.iter().all(|&b| b == 9));
    let mut other = [9u8; 8];
    let e = fresh().restore_into(&mut [("data", &mut buf[..]), ("nope", &mut other[..])]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SectionNotFound, "{e}");
    assert!(other.iter().all(|&b| b == 9));

    // The newest damaged in the section being copied: rejected after its copy, the previous one copied
    // over it, exactly what restore() would have chosen.
    damage_newest(dir.path(), "into.ckpt", 3);
    let mut buf = vec![0u8; payload(2).len()];
    let r = fresh().restore_into(&mut [("data", &mut buf[..])]).unwrap().expect("generation 2");
    assert_eq!(r.generation, 2);
    assert!(buf == payload(2), "the buffer does not hold step 2's data");
    let p = |s: &str| dir.path().join(s);
    assert_eq!(rejected_paths(&r), [p("into.ckpt"), p("into.ckpt.3")]);
    for (path, e) in &r.rejected {
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{}: {e}", path.display());
    }
    assert_eq!(fresh().restore().unwrap().unwrap().generation, 2, "restore() chooses the same");

    // Damage in a section that is not copied is found before anything is written.
    flip_byte_in_section(&p("into.ckpt.2"), "step");
    let mut buf = vec![0u8; payload(1).len()];
    let r = fresh().restore_into(&mut [("data", &mut buf[..])]).unwrap().expect("generation 1");
    assert_eq!(r.generation, 1);
    assert!(buf == payload(1));

    // Nothing valid: the error of restore().
    flip_byte_in_section(&p("into.ckpt.1"), "data");
    let e = fresh().restore_into(&mut [("data", &mut buf[..])]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoValidCheckpoint, "{e}");
    // Nothing valid and a fresh start allowed: restore() starts fresh, but buffers that a damaged
    // candidate was copied into are not a fresh start's: an error saying so, not Ok(None).
    let mut lenient = cfg.clone();
    lenient.allow_fresh_start = true;
    assert!(Store::new(lenient.clone()).restore().unwrap().is_none());
    let e = Store::new(lenient).restore_into(&mut [("data", &mut buf[..])]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoValidCheckpoint, "{e}");
    assert!(e.to_string().contains("initialise them again"), "{e}");
    // No checkpoint at all: Ok(None), the buffer untouched.
    let empty = tempfile::tempdir().unwrap();
    let mut untouched = [5u8; 16];
    assert!(
        Store::new(config("into", empty.path())).restore_into(&mut [("data", &mut untouched[..])]).unwrap().is_none()
    );
    assert!(untouched.iter().all(|&b| b == 5));
}

/// `restore_into_with`: the sections are named per candidate; a candidate the names refuse is an error
/// when it verifies (nothing written, no fallback) and skipped as damaged when it does not.
#[test]
fn restore_into_with_names_sections_per_candidate_and_refuses_only_the_chosen_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("with", dir.path());
    cfg.keep = 3;
    let store = Store::new(cfg.clone());
    for step in 1..=2 {
        save(&store, step);
    }
    let fresh = || Store::new(cfg.clone());
    let p = |s: &str| dir.path().join(s);
    let mut buf = vec![7u8; payload(2).len()];
    let mut asked = Vec::new();
    let r = fresh()
        .restore_into_with(&mut [&mut buf[..]], |cp| {
            asked.push(cp.header().app_step);
            Ok(vec!["data".to_string()])
        })
        .unwrap()
        .unwrap();
    assert_eq!((r.generation, asked), (2, vec![2]));
    assert!(buf == payload(2));

    // The names refuse the newest, which verifies: that error, nothing written, no fallback.
    let mut buf = vec![7u8; payload(2).len()];
    let e = fresh()
        .restore_into_with(&mut [&mut buf[..]], |cp| {
            if cp.header().app_step == 2 { Err(Error::invalid("step 2 does not fit")) } else { Ok(vec!["data".into()]) }
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("step 2 does not fit"), "{e}");
    assert!(buf.iter().all(|&b| b == 7));
    // A count of names that is not the count of buffers.
    let e = fresh().restore_into_with(&mut [&mut buf[..]], |_| Ok(vec![])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");

    // The newest damaged: refused by the names, skipped as damaged, the older one copied.
    flip_byte_in_section(&p("with.ckpt"), "step");
    let mut buf = vec![7u8; payload(1).len()];
    let r = fresh()
        .restore_into_with(&mut [&mut buf[..]], |cp| {
            if cp.header().app_step == 2 { Err(Error::invalid("step 2 does not fit")) } else { Ok(vec!["data".into()]) }
        })
        .unwrap()
        .unwrap();
    assert_eq!(r.generation, 1);
    assert!(buf == payload(1));
}

#[test]
fn restore_into_decodes_compressed_sections_and_reads_without_a_mapping() {
    use ckpt_core::{Compression, SectionOptions};
    let dir = tempfile::tempdir().unwrap();
    let field = ckpt_tests::smooth_field(300_000, 0.5);
    let raw = payload(7);
    for mmap in [true, false] {
        let mut cfg = config("intoz", dir.path());
        cfg.mmap = mmap;
        let store = Store::new(cfg.clone());
        let mut w = store.begin(7).unwrap();
        w.add_section_with("field", &field, SectionOptions::new().compression(Compression::Zstd(1)).shuffle(8))
            .unwrap();
        w.add_bytes("raw", &raw).unwrap();
        w.commit().unwrap();
        let (mut f, mut r) = (vec![0u8; field.len()], vec![0u8; raw.len()]);
        let got = Store::new(cfg).restore_into(&mut [("field", &mut f[..]), ("raw", &mut r[..])]).unwrap().unwrap();
        assert_eq!(got.app_step, 7);
        assert!(f == field && r == raw, "mmap {mmap}");
    }
}
