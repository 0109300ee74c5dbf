//! Space reuse on the real file system: a retired checkpoint is kept as `<base>.spare`, and the next save
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

fn save(store: &Store, step: i64, data: &[u8]) -> CommitInfo {
    let mut w = store.begin(step).unwrap();
    w.add_bytes("data", data).unwrap();
    w.commit().unwrap()
}

fn store(dir: &Path, keep: usize, reuse_space: bool) -> (Store, PathBuf) {
    let mut cfg: Config = config("spare", dir);
    cfg.keep = keep;
    cfg.reuse_space = reuse_space;
    let spare = dir.join(format!("{}.spare", cfg.base_name()));
    (Store::new(cfg), spare)
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
        let info = save(&store, i as i64 + 1, &data);
        check(&store, &info, &data);
        inodes.push(inode(&info.generation_path));
        match i {
            0 | 1 => assert!(!spare.exists(), "save {i}: nothing retired yet"),
            _ => {
                // This save retired generation i-1 (keep 2): it is the spare now.
                assert_eq!(inode(&spare), inodes[i - 2], "save {i}: the retired generation is the spare");
            }
        }
        if let Some(old) = spare_before {
            assert_eq!(inodes[i], old, "save {i}: the save wrote over the spare");
        }
        assert!(store.valid_generations().unwrap().len() <= 2);
    }
    assert_eq!(store.valid_generations().unwrap(), vec![6, 5]);
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".log"))
        .collect();
    names.sort();
    let base = store.config().base_name();
    assert_eq!(names, [base.clone(), format!("{base}.5"), format!("{base}.6"), format!("{base}.spare")]);
}

#[test]
fn a_spare_that_something_still_reads_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (store, spare) = store(dir.path(), 1, true);
    let mut rng = Rng::new(11);
    let first = rng.bytes(BIG);
    let info = save(&store, 1, &first);
    // A reader maps generation 1 and keeps it.
    let held = Checkpoint::open_with(&FileStorage, &info.generation_path, LoadOptions { mmap: true }).unwrap();
    assert!(held.is_mapped());
    let held_inode = inode(&info.generation_path);
    save(&store, 2, &rng.bytes(BIG)); // retires generation 1: the spare, still mapped
    assert_eq!(inode(&spare), held_inode);
    let third = rng.bytes(BIG);
    let info3 = save(&store, 3, &third);
    check(&store, &info3, &third);
    assert_ne!(inode(&info3.generation_path), held_inode, "a mapped file was overwritten");
    held.verify().expect("the mapped checkpoint still verifies");
    assert_eq!(&held.read("data").unwrap()[..], &first[..]);
    drop(held);

    // With nothing holding it, the spare (generation 2 now) is overwritten: the check above can fail.
    let spare_inode = inode(&spare);
    let info4 = save(&store, 4, &rng.bytes(BIG));
    assert_eq!(inode(&info4.generation_path), spare_inode, "an unused spare is overwritten");

    // A spare with another name (a user's hard-linked copy) is left alone, and so is the copy.
    let backup = dir.path().join("backup.bin");
    fs::hard_link(&spare, &backup).unwrap();
    let backup_bytes = fs::read(&backup).unwrap();
    let info5 = save(&store, 5, &rng.bytes(BIG));
    assert_ne!(inode(&info5.generation_path), inode(&backup));
    assert_eq!(fs::read(&backup).unwrap(), backup_bytes, "a file with another name was overwritten");
}

#[test]
fn a_file_saved_to_one_path_keeps_the_file_it_replaced_as_the_spare() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.ckpt");
    let spare = dir.path().join("state.ckpt.spare");
    let cfg = config("spare", dir.path());
    let save_file = |cfg: &Config, data: &[u8]| {
        let mut w = begin_file(&path, 1, cfg, Arc::new(FileStorage)).unwrap();
        w.add_bytes("data", data).unwrap();
        let info = w.commit().unwrap();
        assert_eq!(&Checkpoint::open(&path).unwrap().read("data").unwrap()[..], data);
        assert_eq!(fs::metadata(&path).unwrap().len(), info.stats.file_bytes);
    };
    let mut rng = Rng::new(12);
    save_file(&cfg, &rng.bytes(BIG));
    assert!(!spare.exists());
    let first = inode(&path);
    save_file(&cfg, &rng.bytes(BIG + 70_000));
    assert_eq!(inode(&spare), first, "the replaced file is the spare");
    let second = inode(&path);
    save_file(&cfg, &rng.bytes(BIG - 70_000));
    assert_eq!(inode(&path), first, "the save wrote over the spare");
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
    save_file(&off, &rng.bytes(BIG));
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
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".log"))
        .collect();
    names.sort();
    assert_eq!(names, [base.clone(), format!("{base}.4")]);
}
