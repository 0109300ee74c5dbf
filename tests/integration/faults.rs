//! Fault injection: a countdown fails the Nth I/O operation of a save (create, write, fsync, link, rename,
//! directory fsync, listing, removal) or of a restore (open, read, map) with an errno, and the outcome is
//! compared with a reference model: for every N the previous checkpoint is intact, no temporary file is
//! left behind, the caller gets an error carrying the errno and the file (or, after the commit is durable,
//! a warning), and the next save without faults works. Then the same conditions for real: a missing,
//! read-only or non-directory checkpoint directory, planted symlinks, a full and a read-only file system.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use ckpt_core::storage::{CrashMode, FaultStorage, FileStorage, MemStorage, Op, Storage};
use ckpt_core::{CommitInfo, Config, ErrorKind, Store};
use ckpt_tests::{Rng, config};

use crate::crash::{APP, DIR, How, SaveSpec, SectionSpec, State, gen_path, mem_config, mem_store, plan};

/// The errnos of the reliability issue, plus EPERM, which `link` returns on file systems without hard
/// links and which the library answers with a rename-only commit.
const ERRNOS: [i32; 4] = [libc::EIO, libc::ENOSPC, libc::EACCES, libc::EPERM];

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EIO => "EIO",
        libc::ENOSPC => "ENOSPC",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EROFS => "EROFS",
        _ => "errno",
    }
}

fn os_text(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

/// Temporary files of saves (the spare, a retired generation kept for its blocks, is not one).
fn tmp_files(mem: &MemStorage) -> Vec<PathBuf> {
    let tmp = |p: &PathBuf| p.to_string_lossy().contains(".tmp.") && !p.to_string_lossy().ends_with(".tmp.spare");
    mem.list_files().into_iter().filter(tmp).collect()
}

fn base_path() -> PathBuf {
    Path::new(DIR).join(format!("{APP}.ckpt"))
}

/// A save through `storage`, returning the full commit information.
fn save_with(cfg: &Config, storage: Arc<dyn Storage>, spec: &SaveSpec) -> ckpt_core::Result<CommitInfo> {
    let store = Store::with_storage(cfg.clone(), storage);
    let mut w = store.begin(spec.app_step)?;
    spec.fill(&mut w)?;
    w.commit()
}

/// A storage holding the first `prior` saves of `plan`, committed by the library; with `spares`, retired
/// generations become the spare that the next save overwrites.
fn with_prior(plan: &[SaveSpec], prior: usize, spares: bool) -> MemStorage {
    let mem = MemStorage::new();
    if !spares {
        mem.set_spare_min_len(None);
    }
    let store = mem_store(&mem_config(), &mem);
    for (i, s) in plan[..prior].iter().enumerate() {
        assert_eq!(s.save(&store).expect("setup save"), i as u64 + 1);
    }
    mem
}

/// Restores from `mem` and checks the result is one of `allowed` generations with exactly its content.
fn restore_check(mem: &MemStorage, plan: &[SaveSpec], allowed: &[u64], ctx: &str) -> u64 {
    let r = mem_store(&mem_config(), mem).restore().unwrap_or_else(|e| panic!("{ctx}: restore failed: {e}"));
    let r = r.unwrap_or_else(|| panic!("{ctx}: restore found nothing"));
    assert!(allowed.contains(&r.generation), "{ctx}: restored gen {}, allowed {allowed:?}", r.generation);
    plan[r.generation as usize - 1]
        .check(&r.checkpoint)
        .unwrap_or_else(|e| panic!("{ctx}: restored gen {} has the wrong content: {e}", r.generation));
    r.generation
}

/// One save with a fault at every operation, on top of `prior` committed generations (keep = 2, so with
/// two prior generations the save retires the oldest and the fault also hits pruning; with three, and
/// `spares`, the save overwrites the spare that the oldest became).
fn sweep_save_faults(prior: usize, spares: bool) -> (u64, BTreeSet<String>) {
    let plan = plan(0xFA17);
    let cfg = mem_config();
    let template = with_prior(&plan, prior, spares);
    // The generations still there (`None`: retired).
    let prior_bytes: Vec<Option<Vec<u8>>> = (1..=prior as u64).map(|g| template.read_file(&gen_path(g)).ok()).collect();
    assert!(prior_bytes[prior - 1].is_some(), "the newest prior generation is there");
    let new_gen = prior as u64 + 1;
    let spec = &plan[prior];
    let later = &plan[(prior + 1) % plan.len()];
    let mut ops_per_save = 0;
    let mut failed_kinds = BTreeSet::new();
    for errno in ERRNOS {
        let en = errno_name(errno);
        // Reference run: no fault; the operations a save performs, in order.
        let mem = template.crash_image(CrashMode::Everything); // a deep copy: everything there is durable
        let counter = FaultStorage::new(mem.clone(), 0, errno);
        let info = save_with(&cfg, Arc::new(counter.clone()), spec).expect("save without faults");
        assert_eq!(info.generation, new_gen);
        let reference = counter.ops();
        let total = counter.op_count();
        assert_eq!(total as usize, reference.len());
        ops_per_save = total;
        let durable_at = reference.iter().rposition(|&o| o == Op::SyncDir).expect("a directory fsync");
        let stale_scan = reference.iter().enumerate().filter(|(_, o)| **o == Op::ReadDir).nth(2).map(|(i, _)| i);
        let parts_scan = reference.iter().rposition(|&o| o == Op::ReadDir);

        for n in 1..=total + 1 {
            let i = n as usize - 1;
            let op = reference.get(i).copied();
            let ctx = format!("prior={prior} {en} N={n}/{total} ({op:?})");
            let mem = template.crash_image(CrashMode::Everything);
            let faulty = FaultStorage::new(mem.clone(), n, errno);
            let result = save_with(&cfg, Arc::new(faulty.clone()), spec);
            let log = faulty.ops();
            if n <= total {
                assert_eq!(log.get(i).copied(), op, "{ctx}: the op sequence diverged before the fault: {log:?}");
                if let Some(op) = op {
                    failed_kinds.insert(format!("{op:?}"));
                }
            }
            // The link succeeded before the fault, or EPERM turned the link into a rename: gen N+1 may be
            // visible under its generation name although the save reported an error.
            let published =
                log[..i.min(log.len())].contains(&Op::Link) || (op == Some(Op::Link) && errno == libc::EPERM);

            // What the caller sees.
            match &result {
                Err(e) => {
                    assert!(n <= total, "{ctx}: a save without a fault failed: {e}");
                    assert!(
                        i <= durable_at,
                        "{ctx}: the fault hit after the commit was durable, yet the save failed: {e}"
                    );
                    assert_eq!(e.kind(), ErrorKind::Io, "{ctx}: error kind of {e}");
                    assert_eq!(e.raw_os_error(), Some(errno), "{ctx}: errno of {e}");
                    let text = e.to_string();
                    assert!(text.contains(&os_text(errno)), "{ctx}: the message lacks the errno: {text}");
                    let path = e.path().unwrap_or_else(|| panic!("{ctx}: the error names no file: {text}"));
                    assert!(path.starts_with(DIR), "{ctx}: the error names {}", path.display());
                }
                Ok(info) => {
                    assert_eq!(info.generation, new_gen, "{ctx}");
                    let silent_ok = Some(i) == stale_scan || (i > durable_at && Some(i) == parts_scan);
                    let warned = info.warnings.iter().any(|w| w.contains(&os_text(errno)));
                    let fallback = op == Some(Op::Link) && errno == libc::EPERM;
                    assert!(
                        n > total || silent_ok || warned || fallback,
                        "{ctx}: the fault was swallowed: the save succeeded without an error or a warning \
                         (warnings {:?})",
                        info.warnings
                    );
                    if n <= total && i > durable_at && !silent_ok {
                        assert!(warned, "{ctx}: a failure after the commit must be a warning: {:?}", info.warnings);
                    }
                }
            }

            // What is on "disk" (the storage below the faults).
            assert_eq!(tmp_files(&mem), Vec::<PathBuf>::new(), "{ctx}: temporary files left behind");
            let previous = mem.read_file(&gen_path(prior as u64));
            assert_eq!(
                previous.ok(),
                prior_bytes[prior - 1],
                "{ctx}: the previous generation's file changed or vanished"
            );
            if result.is_err() {
                for g in 1..=prior as u64 {
                    assert_eq!(
                        mem.read_file(&gen_path(g)).ok(),
                        prior_bytes[g as usize - 1],
                        "{ctx}: gen {g} changed, vanished or came back although the save failed"
                    );
                }
            }
            let current = mem.read_file(&base_path()).unwrap_or_else(|e| panic!("{ctx}: <base> vanished: {e}"));
            let new_bytes = mem.read_file(&gen_path(new_gen)).ok();
            assert!(
                Some(&current) == prior_bytes[prior - 1].as_ref() || Some(&current) == new_bytes.as_ref(),
                "{ctx}: <base> is neither the previous nor the new generation"
            );
            if !published && result.is_err() {
                assert!(new_bytes.is_none(), "{ctx}: gen {new_gen} appeared although it was never linked");
            }
            let allowed: Vec<u64> = if result.is_ok() {
                vec![new_gen]
            } else if published {
                vec![prior as u64, new_gen]
            } else {
                vec![prior as u64]
            };
            restore_check(&mem, &plan, &allowed, &ctx);
            // A power cut now: a successful save is durable; a failed one leaves the previous generation.
            let cut = mem.crash_image(CrashMode::DurableOnly);
            restore_check(&cut, &plan, &allowed, &format!("{ctx}, after a power cut"));

            // The next save without faults works and restores.
            let store = mem_store(&cfg, &mem);
            let g = later.save(&store).unwrap_or_else(|e| panic!("{ctx}: the next save failed: {e}"));
            assert!(g > prior as u64, "{ctx}: the next save got gen {g}");
            let mut later_plan = plan.clone();
            later_plan.resize(g as usize, later.clone());
            later_plan[g as usize - 1] = later.clone();
            restore_check(&mem, &later_plan, &[g], &format!("{ctx}, next save"));
            assert_eq!(tmp_files(&mem), Vec::<PathBuf>::new(), "{ctx}: temporary files after the next save");
        }
    }
    (ops_per_save, failed_kinds)
}

#[test]
fn a_fault_at_every_operation_of_a_save_keeps_the_previous_checkpoint() {
    let (ops, kinds) = sweep_save_faults(1, true);
    println!("save on top of 1 generation: {ops} operations, faulted kinds {kinds:?}");
    for k in ["Create", "Write", "Sync", "Link", "Rename", "SyncDir", "ReadDir"] {
        assert!(kinds.contains(k), "no fault was injected into a {k}: {kinds:?}");
    }
}

#[test]
fn a_fault_at_every_operation_of_a_pruning_save_keeps_the_previous_checkpoint() {
    let (ops, kinds) = sweep_save_faults(2, false);
    println!("save on top of 2 generations (prunes one): {ops} operations, faulted kinds {kinds:?}");
    assert!(kinds.contains("Remove"), "no fault was injected into pruning: {kinds:?}");
    // The same save keeping the retired generation as the spare: a rename instead of the removal.
    let (ops, kinds) = sweep_save_faults(2, true);
    println!("the same, the retired generation kept as the spare: {ops} operations, faulted kinds {kinds:?}");
    assert!(!kinds.contains("Remove"), "the retired generation was removed, not kept: {kinds:?}");
}

#[test]
fn a_fault_at_every_operation_of_a_save_over_the_spare_keeps_the_previous_checkpoint() {
    let (ops, kinds) = sweep_save_faults(3, true);
    println!("save on top of 3 generations (overwrites the spare): {ops} operations, faulted kinds {kinds:?}");
    assert!(kinds.contains("Reuse"), "no fault was injected into taking over the spare: {kinds:?}");
}

/// Read faults during restore: an error naming the file and the errno, or a fallback to an older
/// generation, never wrong content and never "nothing there".
#[test]
fn a_read_fault_at_every_operation_of_a_restore_never_gives_wrong_content() {
    let plan = plan(0x4EAD);
    let mem = with_prior(&plan, 2, true);
    let mut summary = Vec::new();
    for mmap in [true, false] {
        let mut cfg = mem_config();
        cfg.mmap = mmap;
        for errno in [libc::EIO, libc::EACCES] {
            let en = errno_name(errno);
            let counter = FaultStorage::new(mem.clone(), 0, errno);
            let r = Store::with_storage(cfg.clone(), Arc::new(counter.clone())).restore().expect("clean restore");
            assert_eq!(r.map(|r| r.generation), Some(2));
            let total = counter.op_count();
            let reference = counter.ops();
            let (mut newest, mut older, mut errors) = (0, 0, 0);
            for n in 1..=total {
                let op = reference[n as usize - 1];
                let ctx = format!("mmap={mmap} {en} N={n}/{total} ({op:?})");
                let faulty = FaultStorage::new(mem.clone(), n, errno);
                let store = Store::with_storage(cfg.clone(), Arc::new(faulty.clone()));
                match store.restore() {
                    Ok(Some(r)) => {
                        let g = r.generation;
                        assert!(g == 1 || g == 2, "{ctx}: restored gen {g}");
                        plan[g as usize - 1]
                            .check(&r.checkpoint)
                            .unwrap_or_else(|e| panic!("{ctx}: gen {g} restored with the wrong content: {e}"));
                        if g == 2 {
                            newest += 1;
                        } else {
                            older += 1;
                            let why: Vec<String> =
                                r.rejected.iter().map(|(p, e)| format!("{}: {e}", p.display())).collect();
                            assert!(
                                why.iter().any(|w| w.contains(&os_text(errno))),
                                "{ctx}: fell back to gen 1 without a rejection carrying the errno: {why:?}"
                            );
                        }
                    }
                    Ok(None) => panic!("{ctx}: restore found nothing although two generations exist"),
                    Err(e) => {
                        errors += 1;
                        let text = e.to_string();
                        assert!(text.contains(&os_text(errno)), "{ctx}: the error lacks the errno: {text}");
                        let path = e.path().unwrap_or_else(|| panic!("{ctx}: the error names no file: {text}"));
                        assert!(path.starts_with(DIR), "{ctx}: the error names {}", path.display());
                    }
                }
            }
            summary.push(format!(
                "mmap={mmap} {en}: {total} ops, restored gen 2 {newest}x, fell back to gen 1 {older}x, error {errors}x"
            ));
        }
    }
    println!("{}", summary.join("\n"));
}

/// `<base>` and `<base>.<N>` are two names of one file. A transient read error while verifying `<base>`
/// says nothing about the bytes, so `<base>.<N>` must still be tried on its own (the discovery module:
/// "takes the first that verifies completely"), not rejected as "the same file as a rejected candidate"
/// (labelled `Corrupt`) with a fall back to an older generation.
///
/// Currently FAILS: discovery caches the verdict of `<base>` by file identity, including I/O errors, so one
/// EIO while reading discards the newest generation and reports its intact file as corrupt.
#[test]
fn a_transient_read_error_on_base_does_not_discard_the_newest_generation() {
    let plan = plan(0x4EAD);
    let mem = with_prior(&plan, 2, true);
    let mut cfg = mem_config();
    cfg.mmap = false;
    let counter = FaultStorage::new(mem.clone(), 0, libc::EIO);
    Store::with_storage(cfg.clone(), Arc::new(counter.clone())).restore().expect("clean restore");
    // The last operation of a clean restore is the last read verifying the chosen file, `<base>`.
    let n = counter.op_count();
    assert_eq!(counter.ops().last(), Some(&Op::Read));
    let faulty = FaultStorage::new(mem.clone(), n, libc::EIO);
    let r = Store::with_storage(cfg, Arc::new(faulty)).restore().expect("restore").expect("a checkpoint");
    let rejected: Vec<String> = r.rejected.iter().map(|(_, e)| format!("{e} ({:?})", e.kind())).collect();
    for (p, e) in &r.rejected {
        assert!(
            e.kind() != ErrorKind::Corrupt,
            "{} is intact but was reported corrupt after an EIO on another name of it: {rejected:?}",
            p.display()
        );
    }
    assert_eq!(
        r.generation,
        2,
        "one EIO on <base> discarded gen 2 (intact as {}): {rejected:?}",
        gen_path(2).display()
    );
    plan[1].check(&r.checkpoint).expect("gen 2 content");
}

// ---------------------------------------------------------------------------------------------------------
// Real conditions on the real file system.

fn small_spec(step: u64, len: usize, seed: u64) -> SaveSpec {
    let mut rng = Rng::new(seed);
    SaveSpec {
        app_step: step,
        metadata: Vec::new(),
        sections: vec![SectionSpec { name: "blob".into(), how: How::Raw, data: rng.bytes(len) }],
        state: State { step, energy: 0.5, labels: vec!["x".into()], history: vec![1, 2, 3] },
    }
}

fn real_restore(cfg: &Config, spec: &SaveSpec, generation: u64, ctx: &str) {
    let r = Store::new(cfg.clone()).restore().unwrap_or_else(|e| panic!("{ctx}: restore failed: {e}"));
    let r = r.unwrap_or_else(|| panic!("{ctx}: restore found nothing"));
    assert_eq!(r.generation, generation, "{ctx}: restored generation");
    spec.check(&r.checkpoint).unwrap_or_else(|e| panic!("{ctx}: restored content: {e}"));
}

fn real_tmp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp."))
                .collect()
        })
        .unwrap_or_default()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_missing_checkpoint_directory_is_created() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("a/b/c");
    let cfg = config(APP, &dir);
    assert!(Store::new(cfg.clone()).restore().expect("restore from a missing directory").is_none());
    let spec = small_spec(1, 10_000, 1);
    assert_eq!(spec.save(&Store::new(cfg.clone())).expect("save into a missing directory"), 1);
    let meta = fs::metadata(&dir).expect("the directory was created");
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o077, 0, "new checkpoint directories are private (0700)");
    real_restore(&cfg, &spec, 1, "missing directory");
}

#[test]
fn a_checkpoint_directory_that_is_a_regular_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("notadir");
    fs::write(&file, b"precious").expect("write");
    for dir in [file.clone(), file.join("sub")] {
        let ctx = format!("checkpoint directory {}", dir.display());
        let cfg = config(APP, &dir);
        let e = small_spec(1, 100, 2).save(&Store::new(cfg.clone())).expect_err(&ctx);
        assert_eq!(e.kind(), ErrorKind::Io, "{ctx}: {e}");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR), "{ctx}: {e}");
        assert!(e.to_string().contains(&dir.display().to_string()), "{ctx}: the error does not name it: {e}");
        // Restart from it is an error too, not a silent fresh start.
        let e = Store::new(cfg).restore().expect_err(&ctx);
        assert!(e.to_string().contains(&dir.display().to_string()), "{ctx}: the error does not name it: {e}");
        assert_eq!(fs::read(&file).expect("read"), b"precious", "{ctx}: the file was modified");
    }
}

#[test]
fn a_read_only_checkpoint_directory_fails_cleanly() {
    if is_root() {
        println!("note: running as root, which ignores directory permissions; read-only directory test skipped");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ro");
    let cfg = config(APP, &dir);
    let first = small_spec(1, 5_000, 3);
    first.save(&Store::new(cfg.clone())).expect("first save");
    let before = fs::read(dir.join(format!("{APP}.ckpt.1"))).expect("gen 1");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).expect("chmod 0500");
    let result = small_spec(2, 5_000, 4).save(&Store::new(cfg.clone()));
    // Restore works on a read-only directory.
    let restored = Store::new(cfg.clone()).restore();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod back");
    let e = result.expect_err("a save into a read-only directory");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    assert!(e.path().is_some_and(|p| p.starts_with(&dir)), "the error names no file in the directory: {e}");
    let r = restored.expect("restore from a read-only directory").expect("gen 1");
    assert_eq!(r.generation, 1);
    first.check(&r.checkpoint).expect("gen 1 content");
    assert_eq!(fs::read(dir.join(format!("{APP}.ckpt.1"))).expect("gen 1"), before);
    assert_eq!(real_tmp_files(&dir), Vec::<String>::new());
}

/// A stale temporary name of a dead writer that is a symlink: removed as a name, its target untouched.
/// A symlink at `<base>.<N>`: never written through (and removed only as a name by pruning).
#[test]
fn planted_symlinks_are_never_written_through() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ckpt");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).expect("mkdir");
    let cfg = config(APP, &dir);
    let store = Store::new(cfg.clone());
    small_spec(1, 3_000, 5).save(&store).expect("gen 1");

    let targets: Vec<PathBuf> = (0..3).map(|i| outside.join(format!("target{i}"))).collect();
    for t in &targets {
        fs::write(t, b"precious").expect("target");
    }
    // A dead writer on this host (no such pid) and a live writer on another host.
    let dead = dir.join(format!("{APP}.ckpt.tmp.{}.{}.abc", cfg.host, 99_999_999));
    let other = dir.join(format!("{APP}.ckpt.tmp.otherhost.1.abc"));
    let next_gen = dir.join(format!("{APP}.ckpt.2"));
    symlink(&targets[0], &dead).expect("symlink");
    symlink(&targets[1], &other).expect("symlink");
    symlink(&targets[2], &next_gen).expect("symlink");

    let mut last = 0;
    for step in 2..=5 {
        let spec = small_spec(step, 3_000 + step as usize, 10 + step);
        last = spec.save(&store).unwrap_or_else(|e| panic!("save at step {step}: {e}"));
        for t in &targets {
            assert_eq!(fs::read(t).expect("target still there"), b"precious", "step {step}: {} written", t.display());
        }
        real_restore(&cfg, &spec, last, &format!("step {step}"));
    }
    assert!(last > 2, "gen 2 is taken by the symlink, so the saves went above it (last gen {last})");
    assert!(fs::symlink_metadata(&dead).is_err(), "the dead writer's stale tmp symlink was not removed");
    assert!(fs::symlink_metadata(&other).is_ok(), "another host's recent tmp name must be left alone");
}

/// Symlinks planted at the very moment of the save (a racing attacker or a confused script): at the
/// temporary name just before its creation, at `<base>.<N>` just before the link, at `<base>` just before
/// the rename. The save must fail (or replace the symlink itself), never write through it.
fn planting(target: &Path, at: Op, planted: &Arc<Mutex<Option<PathBuf>>>) -> FaultStorage<FileStorage> {
    let (target, planted) = (target.to_path_buf(), planted.clone());
    FaultStorage::new(FileStorage, 0, 0).observe(move |op, path| {
        let mut planted = planted.lock().unwrap_or_else(|p| p.into_inner());
        if op == at && planted.is_none() {
            let _ = fs::remove_file(path);
            symlink(&target, path).expect("plant symlink");
            *planted = Some(path.to_path_buf());
        }
    })
}

#[test]
fn symlinks_planted_during_a_save_are_never_written_through() {
    for at in [Op::Create, Op::Link, Op::Rename] {
        let ctx = format!("symlink planted before {at:?}");
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ckpt");
        let target = tmp.path().join("target");
        fs::write(&target, b"precious").expect("target");
        let cfg = config(APP, &dir);
        let first = small_spec(1, 2_000, 20);
        first.save(&Store::new(cfg.clone())).expect("gen 1");
        let planted = Arc::new(Mutex::new(None));
        let spec = small_spec(2, 2_000, 21);
        let result = save_with(&cfg, Arc::new(planting(&target, at, &planted)), &spec);
        let planted = planted.lock().unwrap().clone().unwrap_or_else(|| panic!("{ctx}: nothing planted"));
        assert_eq!(fs::read(&target).expect("target"), b"precious", "{ctx}: the save wrote through the symlink");
        match at {
            // O_CREAT|O_EXCL|O_NOFOLLOW: the name is taken.
            Op::Create => {
                let e = result.expect_err(&ctx);
                assert_eq!(e.io_error_kind(), Some(io::ErrorKind::AlreadyExists), "{ctx}: {e}");
                assert_eq!(e.path(), Some(planted.as_path()), "{ctx}: {e}");
                real_restore(&cfg, &first, 1, &ctx);
            }
            // link() refuses an existing name: another writer holds the generation.
            Op::Link => {
                let e = result.expect_err(&ctx);
                assert_eq!(e.kind(), ErrorKind::Conflict, "{ctx}: {e}");
                assert_eq!(e.path(), Some(planted.as_path()), "{ctx}: {e}");
                assert!(fs::symlink_metadata(&planted).expect("still there").file_type().is_symlink(), "{ctx}");
                assert_eq!(real_tmp_files(&dir), Vec::<String>::new(), "{ctx}: tmp left behind");
                real_restore(&cfg, &first, 1, &ctx);
            }
            // rename() replaces the symlink itself.
            _ => {
                let info = result.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(info.path, planted, "{ctx}");
                assert!(fs::symlink_metadata(&planted).expect("base").is_file(), "{ctx}: <base> is not a file");
                real_restore(&cfg, &spec, 2, &ctx);
            }
        }
    }
}

/// A tmpfs of a given size mounted for the test's duration (root only).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        if !is_root() {
            println!("note: not root, cannot mount a tmpfs; test skipped");
            return None;
        }
        fs::create_dir_all(dir).ok()?;
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(dir).output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir: dir.to_path_buf() }),
            Ok(o) => {
                println!("note: mount -t tmpfs failed ({}); test skipped", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                println!("note: cannot run mount ({e}); test skipped");
                None
            }
        }
    }

    fn remount(&self, options: &str) {
        let st = Command::new("mount").args(["-o", options]).arg(&self.dir).status().expect("mount -o remount");
        assert!(st.success(), "mount -o {options} {} failed", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

#[test]
fn a_full_file_system_fails_with_enospc_and_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fs_guard) = Tmpfs::mount(&tmp.path().join("mnt"), "size=1m") else {
        return;
    };
    let dir = fs_guard.dir.join("ckpt");
    let cfg = config(APP, &dir);
    let store = Store::new(cfg.clone());
    let first = small_spec(1, 200_000, 30);
    assert_eq!(first.save(&store).expect("gen 1 fits"), 1);
    let gen1 = fs::read(dir.join(format!("{APP}.ckpt.1"))).expect("gen 1");

    let check_failed = |result: ckpt_core::Result<u64>, ctx: &str| {
        let e = result.expect_err(ctx);
        assert_eq!(e.kind(), ErrorKind::Io, "{ctx}: {e}");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{ctx}: {e}");
        assert!(e.to_string().contains(&os_text(libc::ENOSPC)), "{ctx}: {e}");
        assert!(e.path().is_some_and(|p| p.starts_with(&dir)), "{ctx}: the error names no file: {e}");
        assert_eq!(real_tmp_files(&dir), Vec::<String>::new(), "{ctx}: tmp left behind");
        assert_eq!(fs::read(dir.join(format!("{APP}.ckpt.1"))).expect("gen 1"), gen1, "{ctx}: gen 1 changed");
        assert_eq!(fs::read(dir.join(format!("{APP}.ckpt"))).expect("<base>"), gen1, "{ctx}: <base> changed");
        real_restore(&cfg, &first, 1, ctx);
    };
    // A checkpoint larger than the file system.
    check_failed(small_spec(2, 2_000_000, 31).save(&store), "2 MB save on a 1 MB file system");
    // A small checkpoint on a file system filled up by someone else.
    let filler = fs_guard.dir.join("filler");
    {
        use std::io::Write;
        let mut f = fs::File::create(&filler).expect("filler");
        let chunk = vec![0xA5u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    check_failed(small_spec(2, 20_000, 32).save(&store), "small save on a full file system");
    // Space again: the next save works.
    fs::remove_file(&filler).expect("remove filler");
    let spec = small_spec(3, 20_000, 33);
    let g = spec.save(&store).expect("save after space was freed");
    real_restore(&cfg, &spec, g, "after freeing space");
}

#[test]
fn a_read_only_file_system_fails_with_erofs_and_still_restores() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fs_guard) = Tmpfs::mount(&tmp.path().join("mnt"), "size=4m") else {
        return;
    };
    let dir = fs_guard.dir.join("ckpt");
    let cfg = config(APP, &dir);
    let first = small_spec(1, 50_000, 40);
    first.save(&Store::new(cfg.clone())).expect("gen 1");
    fs_guard.remount("remount,ro");
    let e = small_spec(2, 50_000, 41).save(&Store::new(cfg.clone())).expect_err("save on a read-only fs");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert!(e.path().is_some_and(|p| p.starts_with(&dir)), "the error names no file: {e}");
    real_restore(&cfg, &first, 1, "read-only file system");
    assert_eq!(real_tmp_files(&dir), Vec::<String>::new());
    fs_guard.remount("remount,rw");
}
