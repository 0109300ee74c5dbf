//! Space reuse on the real file system: a retired checkpoint is kept as `<base>.tmp.spare`, and the next save
//! overwrites its blocks instead of allocating new ones. Never a file that something still reads (an
//! open descriptor, a memory map, another name), and never with its old bytes left past the new end.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ckpt_core::storage::FileStorage;
use ckpt_core::{Checkpoint, CommitInfo, Config, LoadOptions, Store, begin_file};
use ckpt_tests::{Rng, config};

/// Above the size from which the real file system keeps a retired checkpoint as the spare (16 MiB).
const BIG: usize = 17 << 20;

fn inode(p: &Path) -> u64 {
    fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).ino()
}

fn save(store: &Store, step: u64, data: &[u8]) -> CommitInfo {
    let mut w = store.begin(step).unwrap();
    w.add_bytes("data", data).unwrap();
    w.commit().unwrap()
}

fn store(dir: &Path, keep: usize, reuse_space: bool) -> (Store, PathBuf) {
    let mut cfg: Config = config("spare", dir);
    cfg.keep = keep;
    cfg.reuse_space = reuse_space;
    let spare = dir.join(format!("{}.tmp.spare", cfg.base_name()));
    (Store::new(cfg), spare)
}

/// The file names in `dir`, sorted, without the JSON log.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

/// The newest checkpoint restores with exactly `data`, and every kept generation file is exactly as long
/// as what its save wrote (a spare longer than the new save is cut).
fn check(store: &Store, info: &CommitInfo, data: &[u8]) {
    let r = store.restore().unwrap().expect("a checkpoint");
    assert_eq!(r.generation, info.generation);
    assert_eq!(&r.checkpoint.read("data").unwrap()[..], data);
    assert_eq!(fs::metadata(&info.generation_path).unwrap().len(), info.stats.file_bytes);
}

#[test]
fn a_save_overwrites_the_retired_generation_kept_as_the_spare() {
    let dir = tempfile::tempdir().unwrap();
    let (store, spare) = store(dir.path(), 2, true);
    let mut rng = Rng::new(0x5EA2E);
    // Sizes go up and down: a save longer than the spare extends it, a shorter one cuts it.
    let sizes = [BIG + 300_000, BIG, BIG + 2_000_000, BIG - 5_000, BIG + 123, BIG + 4_000_000];
    let mut inodes = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let data = rng.bytes(len);
        let spare_before = spare.exists().then(|| inode(&spare));
        let info = save(&store, i as u64 + 1, &data);
        check(&store, &info, &data);
        inodes.push(inode(&info.generation_path));
        match i {
            0 | 1 => assert!(!spare.exists(), "save {i}: nothing retired yet"),
            _ => {
                // This save retired generation i-1 (keep 2): it is the spare now.
                assert_eq!(inode(&spare), inodes[i - 2], "save {i}: the retired generation is the spare");
            }
        }
        assert_eq!(info.reused_spare, spare_before.is_some(), "save {i}");
        if let Some(old) = spare_before {
            assert_eq!(inodes[i], old, "save {i}: the save wrote over the spare");
        }
        assert!(store.valid_generations().unwrap().len() <= 2);
    }
    assert_eq!(store.valid_generations().unwrap(), vec![6, 5]);
    let names = names_in(dir.path());
    let base = store.config().base_name();
    assert_eq!(names, [base.clone(), format!("{base}.5"), format!("{base}.6"), format!("{base}.tmp.spare")]);
}

#[test]
fn a_spare_that_something_still_reads_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (store, spare) = store(dir.path(), 1, true);
    let mut rng = Rng::new(11);
    let first = rng.bytes(BIG);
    let info = save(&store, 1, &first);
    // A reader maps generation 1 and keeps it.
    let held = Checkpoint::open_with(&FileStorage, &info.generation_path, LoadOptions::new().mmap(true)).unwrap();
    assert!(held.is_mapped());
    let held_inode = inode(&info.generation_path);
    save(&store, 2, &rng.bytes(BIG)); // retires generation 1: the spare, still mapped
    assert_eq!(inode(&spare), held_inode);
    let third = rng.bytes(BIG);
    let info3 = save(&store, 3, &third);
    check(&store, &info3, &third);
    assert!(!info3.reused_spare, "a mapped file was overwritten");
    assert_ne!(inode(&info3.generation_path), held_inode, "a mapped file was overwritten");
    held.verify().expect("the mapped checkpoint still verifies");
    assert_eq!(&held.read("data").unwrap()[..], &first[..]);
    drop(held);

    // With nothing holding it, the spare (generation 2 now) is overwritten: the check above can fail.
    let spare_inode = inode(&spare);
    let info4 = save(&store, 4, &rng.bytes(BIG));
    assert!(info4.reused_spare, "an unused spare is overwritten");
    assert_eq!(inode(&info4.generation_path), spare_inode, "an unused spare is overwritten");

    // A spare with another name (a user's hard-linked copy) is left alone, and so is the copy.
    let backup = dir.path().join("backup.bin");
    fs::hard_link(&spare, &backup).unwrap();
    let backup_bytes = fs::read(&backup).unwrap();
    let info5 = save(&store, 5, &rng.bytes(BIG));
    assert!(!info5.reused_spare);
    assert_ne!(inode(&info5.generation_path), inode(&backup));
    assert_eq!(fs::read(&backup).unwrap(), backup_bytes, "a file with another name was overwritten");
}

#[test]
fn a_file_saved_to_one_path_keeps_the_file_it_replaced_as_the_spare() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.ckpt");
    let spare = dir.path().join("state.ckpt.tmp.spare");
    let cfg = config("spare", dir.path());
    let save_file = |cfg: &Config, data: &[u8]| {
        let mut w = begin_file(&path, 1, cfg, Arc::new(FileStorage)).unwrap();
        w.add_bytes("data", data).unwrap();
        let info = w.commit().unwrap();
        assert_eq!(&Checkpoint::open(&path).unwrap().read("data").unwrap()[..], data);
        assert_eq!(fs::metadata(&path).unwrap().len(), info.stats.file_bytes);
        info.reused_spare
    };
    // A user's own file named like a spare of another library is not ours: never touched.
    let users = dir.path().join("state.ckpt.spare");
    fs::write(&users, b"the user's").unwrap();
    let mut rng = Rng::new(12);
    assert!(!save_file(&cfg, &rng.bytes(BIG)));
    assert!(!spare.exists());
    let first = inode(&path);
    assert!(!save_file(&cfg, &rng.bytes(BIG + 70_000)));
    assert_eq!(inode(&spare), first, "the replaced file is the spare");
    let second = inode(&path);
    assert!(save_file(&cfg, &rng.bytes(BIG - 70_000)));
    assert_eq!(inode(&path), first, "the save wrote over the spare");
    assert_eq!(fs::read(&users).unwrap(), b"the user's");
    assert_eq!(inode(&spare), second);
    // A small file replaced is not worth keeping.
    save_file(&cfg, b"small");
    save_file(&cfg, b"small again");
    assert!(!spare.exists(), "a spare was kept for a small file");

    // Reuse turned off: the spare goes at the next save, and none is kept.
    save_file(&cfg, &rng.bytes(BIG));
    save_file(&cfg, &rng.bytes(BIG));
    assert!(spare.exists());
    let mut off = cfg.clone();
    off.reuse_space = false;
    assert!(!save_file(&off, &rng.bytes(BIG)));
    assert!(!spare.exists(), "the spare outlived CKPT_REUSE_SPACE=0");
    save_file(&off, &rng.bytes(BIG));
    assert!(!spare.exists());
}

#[test]
fn with_reuse_off_generations_are_removed_and_an_old_spare_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (on, spare) = store(dir.path(), 1, true);
    let mut rng = Rng::new(13);
    save(&on, 1, &rng.bytes(BIG));
    save(&on, 2, &rng.bytes(BIG));
    assert!(spare.exists());
    let (off, _) = store(dir.path(), 1, false);
    save(&off, 3, &rng.bytes(BIG));
    assert!(!spare.exists(), "the spare outlived reuse_space = false");
    save(&off, 4, &rng.bytes(BIG));
    assert!(!spare.exists());
    let base = off.config().base_name();
    let names = names_in(dir.path());
    assert_eq!(names, [base.clone(), format!("{base}.4")]);
}

/// Multi-rank steps (rank 0 commits from the ranks' reported identities, each rank removes its own retired
/// part): each rank keeps its retired part as `<base>.parts/rank<R>.spare` and writes its next part over
/// it; a spare of a rank the job no longer has is removed by rank 0's commit.
#[test]
fn each_rank_writes_its_next_part_over_its_own_retired_part() {
    let dir = tempfile::tempdir().unwrap();
    let nranks = 2u32;
    let stores: Vec<Store> = (0..nranks)
        .map(|rank| {
            let mut c = config("ranks", dir.path());
            (c.rank, c.nranks, c.keep) = (rank, nranks, 1);
            Store::new(c)
        })
        .collect();
    let base = stores[0].config().base_name();
    let root = dir.path().join(format!("{base}.parts"));
    let part = |g: u64, rank: u32| root.join(format!("{g}/rank{rank}.ckpt"));
    let spare = |rank: u32| root.join(format!("rank{rank}.spare"));
    fs::create_dir_all(&root).unwrap();
    let stale = root.join("rank7.spare"); // an earlier run's rank 7
    fs::write(&stale, b"an earlier run with more ranks").unwrap();
    let mut rng = Rng::new(14);
    let mut inodes: Vec<Vec<u64>> = Vec::new();
    for g in 1..=5u64 {
        let spares_before: Vec<Option<u64>> =
            (0..nranks).map(|r| spare(r).exists().then(|| inode(&spare(r)))).collect();
        let data: Vec<Vec<u8>> = (0..nranks).map(|r| rng.bytes(BIG + r as usize * 4096 + g as usize)).collect();
        for (r, (s, d)) in stores.iter().zip(&data).enumerate() {
            let mut w = s.begin_part(g, g).unwrap();
            w.add_bytes("data", d).unwrap();
            assert_eq!(w.commit().unwrap().reused_spare, spares_before[r].is_some(), "step {g}, rank {r}");
        }
        let ids: Vec<_> = stores.iter().map(|s| s.part_identity(g).unwrap()).collect();
        stores[0].commit_step_with_parts(g, g, &ids).unwrap();
        for s in &stores {
            assert!(s.after_step_committed(g).is_empty());
        }
        inodes.push((0..nranks).map(|r| inode(&part(g, r))).collect());
        for r in 0..nranks {
            if let Some(old) = spares_before[r as usize] {
                assert_eq!(inodes[g as usize - 1][r as usize], old, "step {g}, rank {r}: the part went over the spare");
            }
            if g >= 2 {
                // keep = 1: this step retired the previous one, whose part is the rank's spare now.
                assert_eq!(inode(&spare(r)), inodes[g as usize - 2][r as usize], "step {g}, rank {r}");
                assert!(!part(g - 1, r).exists());
            }
        }
        for (r, s) in stores.iter().enumerate() {
            let restored = s.restore().unwrap().expect("a step");
            assert_eq!(restored.generation, g);
            assert_eq!(&restored.checkpoint.read("data").unwrap()[..], &data[r][..], "rank {r}");
            assert_eq!(fs::metadata(part(g, r as u32)).unwrap().len(), restored.checkpoint.file_len());
        }
    }
    assert!(!stale.exists(), "the spare of a rank the job does not have survived");
    let mut names: Vec<String> =
        fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["4", "5", "rank0.spare", "rank1.spare"], "retired generations' directories go");
}

/// Something that is not a regular file under the spare's name is left alone, and retention goes on
/// without a spare: generations never pile up.
#[test]
fn a_directory_at_the_spares_name_is_left_alone_and_generations_are_still_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let (store, spare) = store(dir.path(), 1, true);
    fs::create_dir(&spare).unwrap();
    fs::write(spare.join("inside"), b"x").unwrap();
    let mut rng = Rng::new(15);
    for step in 1..=4 {
        let info = save(&store, step, &rng.bytes(BIG));
        assert!(!info.reused_spare);
        assert_eq!(store.valid_generations().unwrap(), vec![step], "step {step}");
    }
    assert_eq!(fs::read(spare.join("inside")).unwrap(), b"x");
}

/// Two savers under one name at once (threads with a store each), with spares: each save either commits
/// or loses the generation race (`Conflict`), never writes into a file the other one claimed, and every
/// checkpoint left verifies and holds exactly what its commit wrote.
#[test]
fn two_savers_under_one_name_never_share_a_spare() {
    let dir = tempfile::tempdir().unwrap();
    let data = |saver: u64, i: u64| Rng::new(saver << 32 | i).bytes(BIG + (i as usize % 3) * 8192);
    let committed: Vec<Vec<(u64, u64, u64, bool)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2u64)
            .map(|saver| {
                let dir = dir.path();
                scope.spawn(move || {
                    let (store, _) = store(dir, 2, true);
                    let mut done = Vec::new();
                    for i in 0..10u64 {
                        let mut w = store.begin(i).unwrap();
                        w.add_bytes("data", &data(saver, i)).unwrap();
                        match w.commit() {
                            Ok(info) => done.push((info.generation, saver, i, info.reused_spare)),
                            Err(e) if e.kind() == ckpt_core::ErrorKind::Conflict => {}
                            Err(e) => panic!("saver {saver}, save {i}: {e}"),
                        }
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let committed: Vec<(u64, u64, u64, bool)> = committed.into_iter().flatten().collect();
    assert!(committed.len() >= 10, "{committed:?}");
    assert!(committed.iter().any(|c| c.3), "no save wrote over a spare: {committed:?}");
    let (check, _) = store(dir.path(), 2, true);
    let d = check.discover_all().unwrap();
    assert!(!d.candidates.is_empty());
    for c in &d.candidates {
        assert!(matches!(c.status, ckpt_core::CandidateStatus::Valid), "{}: {:?}", c.path.display(), c.status);
        let g = c.generation.expect("a generation");
        let &(_, saver, i, _) = committed.iter().find(|c| c.0 == g).expect("a generation nobody committed");
        let cp = Checkpoint::open(&c.path).unwrap();
        assert_eq!(&cp.read("data").unwrap()[..], &data(saver, i)[..], "generation {g}");
    }
}

/// A reused spare gets exactly the mode a new file gets: `CKPT_FILE_MODE` less the umask (0666 under umask
/// 022 is 0644, not a world-writable 0666 that the trust checks would then refuse), for the store's
/// generations and for saves to one path, under several umasks (each run in a child process: the umask is
/// the process's).
#[test]
fn a_reused_spare_gets_the_umask_like_a_new_file() {
    use std::os::unix::fs::PermissionsExt;
    let name = "spare::a_reused_spare_gets_the_umask_like_a_new_file";
    let Ok(umask) = std::env::var("CKPT_TEST_UMASK") else {
        for umask in ["022", "027", "002"] {
            let mask = u32::from_str_radix(umask, 8).unwrap();
            assert!(!super::settings::in_child_process(name, &[("CKPT_TEST_UMASK", umask)], Some(mask)));
        }
        return;
    };
    let umask = u32::from_str_radix(&umask, 8).unwrap();
    let mode_of = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(0x0666);
    for file_mode in [0o666, 0o660, 0o640, 0o600] {
        let sub = dir.path().join(format!("m{file_mode:o}"));
        fs::create_dir(&sub).unwrap();
        let (store, spare) = store(&sub, 1, true);
        let mut cfg = store.config().clone();
        cfg.file_mode = file_mode;
        let store = Store::new(cfg.clone());
        let want = file_mode & !umask;
        let first = save(&store, 1, &rng.bytes(BIG));
        assert_eq!(mode_of(&first.generation_path), want, "umask {umask:03o}: a new file of mode {file_mode:03o}");
        save(&store, 2, &rng.bytes(BIG)); // retires generation 1 as the spare
        assert!(spare.exists(), "the spare is kept");
        let third = save(&store, 3, &rng.bytes(BIG));
        assert!(third.reused_spare, "the spare is reused");
        assert_eq!(mode_of(&third.generation_path), want, "umask {umask:03o}: a reused spare of mode {file_mode:03o}");

        // Saves to one path (ckpt.save in Python, ckpt_save_buffer in C).
        let path = sub.join("state.ckpt");
        let mut reused = Vec::new();
        for _ in 0..3 {
            let mut w = begin_file(&path, 1, &cfg, Arc::new(FileStorage)).unwrap();
            w.add_bytes("data", &rng.bytes(BIG)).unwrap();
            reused.push(w.commit().unwrap().reused_spare);
            assert_eq!(mode_of(&path), want, "umask {umask:03o}: {} of mode {file_mode:03o}", path.display());
        }
        assert_eq!(reused, [false, false, true], "the file the second save replaced is the third's spare");
    }
}
