//! Multi-rank steps, with 4 ranks simulated as 4 `Store`s on one directory (`rank = r`, `nranks = 4`):
//! every rank writes its part, rank 0 commits the step's manifest, every rank restores its own part.
//! Also: a missing part (commit times out, the generation is never restored), a damaged part of one rank
//! (that rank falls back; agreeing on the minimum is the caller's job), retention of part directories,
//! parts of a save in progress surviving the pruning of an older step's commit, a manifest never tying
//! together parts of different application steps, and stale manifest temporary files being cleaned.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ckpt_core::{Checkpoint, ErrorKind, FileKind, Restored, Store};
use ckpt_tests::{Rng, config};

const NRANKS: u32 = 4;
const APP: &str = "mr";
const BASE: &str = "mr.ckpt";

fn part_payload(step: u64, rank: u32) -> Vec<u8> {
    let mut rng = Rng::new(step << 8 | u64::from(rank) | 0x4D52_0000_0000);
    rng.bytes(16 * 1024 + rank as usize * 1000 + ((step % 7) as usize) * 10)
}

/// Rank `rank` of `nranks` saving `APP` in `dir`, keeping `keep` generations.
fn rank_config(dir: &Path, rank: u32, nranks: u32, keep: usize) -> ckpt_core::Config {
    let mut c = config(APP, dir);
    (c.rank, c.nranks, c.keep) = (rank, nranks, keep);
    c.commit_timeout = Duration::from_millis(200);
    c
}

fn ranks(dir: &Path, keep: usize) -> Vec<Store> {
    (0..NRANKS).map(|r| Store::new(rank_config(dir, r, NRANKS, keep))).collect()
}

fn part_path(dir: &Path, generation: u64, rank: u32) -> PathBuf {
    dir.join(format!("{BASE}.parts/{generation}/rank{rank}.ckpt"))
}

/// Rank `rank` writes its part of `step` with `Store::begin` (the next generation); returns the generation.
fn write_part(store: &Store, step: u64) -> u64 {
    let rank = store.config().rank;
    let mut w = store.begin(step).unwrap_or_else(|e| panic!("rank {rank}: begin(step {step}): {e}"));
    w.add_bytes("data", &part_payload(step, rank)).unwrap();
    w.add_serde("who", &(rank, step)).unwrap();
    let g = w.generation();
    let info = w.commit().unwrap_or_else(|e| panic!("rank {rank}: commit of the part of step {step}: {e}"));
    assert_eq!(info.generation, g);
    assert_eq!(info.path, part_path(&store.config().checkpoint_dir, g, rank), "rank {rank}: part file name");
    g
}

/// A whole step: every rank writes its part (all must pick the same generation), rank 0 commits.
fn save_step(stores: &[Store], step: u64) -> u64 {
    let gens: Vec<u64> = stores.iter().map(|s| write_part(s, step)).collect();
    assert!(gens.iter().all(|&g| g == gens[0]), "step {step}: ranks chose different generations {gens:?}");
    let info = stores[0].commit_step(gens[0], step).unwrap_or_else(|e| panic!("commit_step(step {step}): {e}"));
    let dir = &stores[0].config().checkpoint_dir;
    assert_eq!(info.path, dir.join(BASE));
    assert_eq!(info.generation_path, dir.join(format!("{BASE}.{}", gens[0])));
    assert_eq!(info.generation, gens[0]);
    gens[0]
}

fn assert_own_part(r: &Restored, rank: u32, generation: u64, step: u64) {
    let cp = &r.checkpoint;
    let h = cp.header();
    assert_eq!(r.generation, generation, "rank {rank} restored {} ({})", r.chosen_path.display(), cp.path().display());
    assert_eq!(r.app_step, step, "rank {rank}");
    assert_eq!((h.kind, h.rank, h.nranks), (FileKind::Data, rank, NRANKS), "rank {rank}: {}", cp.path().display());
    assert_eq!(cp.path(), part_path(r.chosen_path.parent().unwrap(), generation, rank));
    assert_eq!(cp.read_serde::<(u32, u64)>("who").unwrap(), (rank, step), "rank {rank}");
    assert!(cp.read("data").unwrap()[..] == part_payload(step, rank)[..], "rank {rank}: data is not its own part");
}

fn part_generations(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(dir.join(format!("{BASE}.parts")))
        .map(|it| it.map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap()).collect())
        .unwrap_or_default();
    v.sort_unstable();
    v
}

fn top_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn flip_byte_in_section(path: &Path, section: &str) {
    let offset = {
        let cp = Checkpoint::open(path).unwrap();
        let s = cp.section(section).unwrap();
        s.offset + s.stored_len / 3
    };
    let f = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0xA5;
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn every_rank_restores_its_own_part_of_the_newest_step() {
    let dir = tempfile::tempdir().unwrap();
    let stores = ranks(dir.path(), 2);
    for s in &stores {
        assert!(s.restore().unwrap().is_none(), "first run");
    }
    assert_eq!(save_step(&stores, 10), 1);
    assert_eq!(save_step(&stores, 20), 2);
    let manifest = Checkpoint::open(dir.path().join(BASE)).unwrap();
    assert_eq!((manifest.header().kind, manifest.generation()), (FileKind::Manifest, 2));
    let entries = ckpt_core::parse_manifest(&manifest).unwrap();
    assert_eq!(entries.iter().map(|e| e.rank).collect::<Vec<_>>(), [0, 1, 2, 3]);
    for (r, s) in stores.iter().enumerate() {
        let r = r as u32;
        assert_eq!(entries[r as usize].file_len, fs::metadata(part_path(dir.path(), 2, r)).unwrap().len());
        let restored = s.restore().unwrap().unwrap_or_else(|| panic!("rank {r}: nothing restored"));
        assert!(restored.rejected.is_empty(), "rank {r}: {:?}", restored.rejected);
        assert_eq!(restored.chosen_path, dir.path().join(BASE), "rank {r}: the manifest is what is chosen");
        assert_own_part(&restored, r, 2, 20);
        assert_eq!(s.valid_generations().unwrap(), [2, 1], "rank {r}");
        assert_own_part(&s.restore_at_most(1).unwrap().unwrap(), r, 1, 10);
    }
    // Straight into the rank's buffer (`restore_into`): the same step, the rank's own part.
    for (r, s) in stores.iter().enumerate() {
        let r = r as u32;
        let mut buf = vec![0u8; part_payload(20, r).len()];
        let restored = s.restore_into(&mut [("data", &mut buf[..])]).unwrap().expect("a step");
        assert_eq!((restored.generation, restored.app_step), (2, 20), "rank {r}");
        assert!(buf == part_payload(20, r), "rank {r}: the buffer does not hold its own part");
    }
    // A single-process run of the same name cannot take a 4-rank step, and says why.
    let e = Store::new(config(APP, dir.path())).restore().expect_err("1 rank vs 4-rank manifests");
    assert_eq!(e.kind(), ErrorKind::NoValidCheckpoint, "{e}");
    assert!(e.to_string().contains("4-rank"), "{e}");
}

#[test]
fn a_missing_part_makes_commit_step_time_out_and_that_generation_is_never_restored() {
    let dir = tempfile::tempdir().unwrap();
    let stores = ranks(dir.path(), 2);
    assert_eq!(save_step(&stores, 1), 1);
    // Rank 2 does not write its part of step 2.
    for r in [0usize, 1, 3] {
        assert_eq!(write_part(&stores[r], 2), 2, "rank {r}");
    }
    let t = Instant::now();
    let e = stores[0].commit_step(2, 2).expect_err("commit_step must time out without rank 2's part");
    let waited = t.elapsed();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("[2]") && msg.contains("generation 2"), "the error must name rank 2 and generation 2: {msg}");
    assert!(waited >= Duration::from_millis(200), "gave up after {waited:?}, before the 200 ms timeout");
    assert!(waited < Duration::from_secs(10), "took {waited:?} for a 200 ms timeout");
    assert!(!dir.path().join(format!("{BASE}.2")).exists(), "a manifest of generation 2 exists");
    let tmps: Vec<String> = top_names(dir.path()).into_iter().filter(|n| n.contains(".tmp.")).collect();
    assert!(tmps.is_empty(), "the failed commit left {tmps:?}");
    for (r, s) in stores.iter().enumerate() {
        assert_own_part(&s.restore().unwrap().unwrap(), r as u32, 1, 1);
        assert_eq!(s.valid_generations().unwrap(), [1], "rank {r}");
    }

    // Rank 2's part arrives late: still no manifest, so generation 2 is still never restored.
    assert_eq!(write_part(&stores[2], 2), 2);
    for (r, s) in stores.iter().enumerate() {
        assert_own_part(&s.restore().unwrap().unwrap(), r as u32, 1, 1);
    }
    // The next step goes on above the abandoned generation, and its commit prunes the abandoned parts.
    assert_eq!(save_step(&stores, 3), 3);
    for (r, s) in stores.iter().enumerate() {
        assert_own_part(&s.restore().unwrap().unwrap(), r as u32, 3, 3);
        assert_eq!(s.valid_generations().unwrap(), [3, 1], "rank {r}");
    }
    assert_eq!(part_generations(dir.path()), [1, 3], "the abandoned generation 2's parts must be pruned");
}

/// After a step that failed because one rank wrote nothing, the ranks agree on the next generation the way
/// the documentation says (a max-reduction of `next_generation()`), and that step commits.
#[test]
fn after_a_failed_step_ranks_agree_on_the_next_generation_by_max_reduction() {
    let dir = tempfile::tempdir().unwrap();
    let stores = ranks(dir.path(), 2);
    save_step(&stores, 1);
    for r in [0usize, 1, 3] {
        write_part(&stores[r], 2);
    }
    assert_eq!(stores[0].commit_step(2, 2).unwrap_err().kind(), ErrorKind::InvalidState);
    let proposals: Vec<u64> = stores.iter().map(|s| s.next_generation().unwrap()).collect();
    let g = *proposals.iter().max().unwrap();
    assert!(g >= 2, "proposals {proposals:?}");
    for (r, s) in stores.iter().enumerate() {
        let mut w = s.begin_part(g, 3).unwrap();
        w.add_bytes("data", &part_payload(3, r as u32)).unwrap();
        w.add_serde("who", &(r as u32, 3u64)).unwrap();
        w.commit().unwrap_or_else(|e| panic!("rank {r}: part of generation {g}: {e}"));
    }
    stores[0].commit_step(g, 3).unwrap_or_else(|e| panic!("commit_step({g}) after agreeing: {e}"));
    for (r, s) in stores.iter().enumerate() {
        assert_own_part(&s.restore().unwrap().unwrap(), r as u32, g, 3);
    }
}

#[test]
fn a_damaged_part_makes_only_that_rank_fall_back_and_the_minimum_is_agreed_with_restore_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let stores = ranks(dir.path(), 2);
    save_step(&stores, 10);
    save_step(&stores, 20);
    flip_byte_in_section(&part_path(dir.path(), 2, 2), "data");

    let r2 = stores[2].restore().unwrap().expect("rank 2 falls back to generation 1");
    assert_own_part(&r2, 2, 1, 10);
    let mut rejected: Vec<&Path> = r2.rejected.iter().map(|(p, _)| p.as_path()).collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [dir.path().join(BASE), dir.path().join(format!("{BASE}.2"))],
        "rank 2 must reject both names of generation 2's manifest"
    );
    for (p, e) in &r2.rejected {
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{}: {e}", p.display());
    }
    // (The second name's reason is only "same file as a rejected candidate": see the discovery test
    // `the_second_name_of_a_damaged_file_says_why_it_was_rejected`.)
    assert!(
        r2.rejected.iter().any(|(_, e)| {
            let m = e.to_string();
            m.contains("part of rank 2") && m.contains("crc32 mismatch")
        }),
        "no rejection says that rank 2's part fails its checksum: {:?}",
        r2.rejected
    );

    let valid: Vec<Vec<u64>> = stores.iter().map(|s| s.valid_generations().unwrap()).collect();
    assert_eq!(valid, [vec![2, 1], vec![2, 1], vec![1], vec![2, 1]], "valid generations per rank");
    // Without a collective, a rank may only choose a step whose every part verifies: the other ranks fall
    // back with rank 2 (before, ranks 0, 1 and 3 restored step 20 and rank 2 step 10).
    for r in [0usize, 1, 3] {
        let restored = stores[r].restore().unwrap().unwrap();
        assert_own_part(&restored, r as u32, 1, 10);
        assert!(
            restored.rejected.iter().any(|(_, e)| e.to_string().contains("part of rank 2")),
            "rank {r}: {:?}",
            restored.rejected
        );
    }
    // The caller agrees on the minimum over ranks of each rank's newest valid generation.
    let agreed = valid.iter().map(|v| v[0]).min().unwrap();
    assert_eq!(agreed, 1);
    for (r, s) in stores.iter().enumerate() {
        assert_own_part(&s.restore_at_most(agreed).unwrap().unwrap(), r as u32, 1, 10);
    }
}

#[test]
fn retention_removes_the_part_directories_of_old_generations() {
    let dir = tempfile::tempdir().unwrap();
    let stores = ranks(dir.path(), 2);
    for step in 1..=4 {
        assert_eq!(save_step(&stores, step * 100), step);
    }
    assert_eq!(
        top_names(dir.path()),
        [BASE.to_string(), format!("{BASE}.3"), format!("{BASE}.4"), format!("{BASE}.parts")]
    );
    assert_eq!(part_generations(dir.path()), [3, 4], "part directories after 4 steps with keep=2");
    for g in [3, 4] {
        let mut files: Vec<String> = fs::read_dir(dir.path().join(format!("{BASE}.parts/{g}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["rank0.ckpt", "rank1.ckpt", "rank2.ckpt", "rank3.ckpt"], "generation {g}");
    }
    for (r, s) in stores.iter().enumerate() {
        assert_own_part(&s.restore_at_most(3).unwrap().unwrap(), r as u32, 3, 300);
    }
}

#[test]
fn parts_of_a_save_in_progress_are_never_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let stores = ranks(dir.path(), 1);
    save_step(&stores, 1);
    // Step 2: every rank has written its part, but before rank 0 commits, ranks 1 and 3 already write
    // their parts of step 3 (a save in progress, newer than any manifest).
    for s in &stores {
        assert_eq!(write_part(s, 2), 2);
    }
    for r in [1usize, 3] {
        assert_eq!(write_part(&stores[r], 3), 3, "rank {r} moves on to generation 3");
    }
    stores[0].commit_step(2, 2).unwrap();
    assert_eq!(part_generations(dir.path()), [2, 3], "keep=1: generation 1's parts go, generation 3's stay");
    for r in [1u32, 3] {
        assert!(part_path(dir.path(), 3, r).exists(), "rank {r}'s part of the save in progress was removed");
    }
    // The save in progress completes.
    for r in [0usize, 2] {
        assert_eq!(write_part(&stores[r], 3), 3, "rank {r}");
    }
    stores[0].commit_step(3, 3).unwrap();
    for (r, s) in stores.iter().enumerate() {
        assert_own_part(&s.restore().unwrap().unwrap(), r as u32, 3, 3);
    }
    assert_eq!(part_generations(dir.path()), [3]);
    assert_eq!(top_names(dir.path()), [BASE.to_string(), format!("{BASE}.3"), format!("{BASE}.parts")]);
}

/// A manifest must only tie together parts of the step it commits. Here rank 2's part of generation 1
/// holds application step 99 while the others hold step 10; `commit_step(1, 10)` checks each part's
/// generation, rank, rank count and kind, but not its step, so it commits a step whose ranks restart
/// from different iterations. (In practice this happens when ranks' `begin()` pick different generations
/// after a failed step: see the report; the minimal reproduction uses `begin_part`.)
#[test]
fn commit_step_refuses_parts_of_different_application_steps() {
    let dir = tempfile::tempdir().unwrap();
    let stores = ranks(dir.path(), 2);
    for (r, s) in stores.iter().enumerate() {
        let step = if r == 2 { 99 } else { 10 };
        let mut w = s.begin_part(1, step).unwrap();
        w.add_bytes("data", &part_payload(step, r as u32)).unwrap();
        w.add_serde("who", &(r as u32, step)).unwrap();
        w.commit().unwrap();
    }
    match stores[0].commit_step(1, 10) {
        Err(e) => assert!(e.to_string().contains("rank2") || e.to_string().contains("rank 2"), "{e}"),
        Ok(info) => {
            let r2 = stores[2].restore().unwrap().unwrap();
            panic!(
                "commit_step(1, step 10) committed {} although rank 2's part holds step 99; rank 2 now restores \
                 Restored::app_step {} with a part whose header says step {}",
                info.path.display(),
                r2.app_step,
                r2.checkpoint.step()
            );
        }
    }
}

/// The layout promises that `<base>.tmp.<host>.<pid>.<nonce>` is "removed by the next save if its writer
/// died". In a multi-rank directory the manifest is written through such a temporary file by rank 0; one
/// left by a killed rank 0 must go with the next run's first step (a run lists the directory at its first
/// commit and then at least every 10 s).
#[test]
fn a_stale_manifest_temporary_file_is_removed_by_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    save_step(&ranks(dir.path(), 2), 1);
    let stores = ranks(dir.path(), 2); // the next run
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    // SAFETY: signal 0 only checks whether the process exists.
    assert_eq!(unsafe { libc::kill(dead as libc::pid_t, 0) }, -1, "pid {dead} of an exited child still exists");
    let stale = format!("{BASE}.tmp.{}.{dead}.1f", stores[0].config().host);
    fs::write(dir.path().join(&stale), b"half a manifest").unwrap();
    save_step(&stores, 2);
    save_step(&stores, 3);
    let left = top_names(dir.path());
    assert!(!left.contains(&stale), "the dead rank 0's manifest temporary file survived two steps: {left:?}");
}

/// A rank's durable part is not a step: `should_exit` waits for the agreed outcome (`finish_step`), and
/// a step that could not be committed makes the request due again.
#[test]
fn exit_waits_for_the_step_and_a_failed_step_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ckpt_core::Config::new("steps", dir.path()).unwrap();
    cfg.rank = 0;
    cfg.nranks = 2;
    cfg.log = ckpt_core::LogTarget::Off;
    let cp = ckpt_core::Checkpointer::new(ckpt_core::Store::new(cfg)).unwrap();
    cp.request_checkpoint(true);
    assert!(cp.should_checkpoint());
    let mut w = cp.begin_part(1, 5).unwrap();
    w.add_bytes("x", b"part").unwrap();
    cp.commit(w).unwrap();
    assert!(!cp.should_checkpoint() && !cp.should_exit(), "a part alone neither exits nor stays due");
    cp.finish_step(false);
    assert!(cp.should_checkpoint(), "the step failed: the request is due again");
    assert!(!cp.should_exit());
    let mut w = cp.begin_part(2, 6).unwrap();
    w.add_bytes("x", b"part").unwrap();
    cp.commit(w).unwrap();
    assert!(!cp.should_exit());
    cp.finish_step(true);
    assert!(cp.should_exit(), "the step was committed: exit as SIGTERM asked");
    assert!(!cp.should_checkpoint());
}

// ---------------------------------------------------------------------------------------------------------
// Committing from gathered identities (what `ckpt_mpi.h` does), and ranks removing their own parts.

/// Every storage call a store makes, counted (the real file system underneath), and the directory
/// entries it looked at (`stat`ed) when listing.
#[derive(Debug, Default)]
struct CountingStorage {
    calls: std::sync::atomic::AtomicU64,
    looked_at: std::sync::atomic::AtomicU64,
    listed: std::sync::Mutex<Vec<PathBuf>>,
}

impl CountingStorage {
    fn count(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn looked_at(&self) -> u64 {
        self.looked_at.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// How many times `dir` was listed (by names or with entries).
    fn listings_of(&self, dir: &Path) -> usize {
        self.listed.lock().unwrap().iter().filter(|d| *d == dir).count()
    }
    fn note_listing(&self, dir: &Path) {
        self.listed.lock().unwrap().push(dir.to_path_buf());
    }
    fn tick(&self) -> ckpt_core::storage::FileStorage {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ckpt_core::storage::FileStorage
    }
}

impl ckpt_core::storage::Storage for CountingStorage {
    fn create_new(&self, p: &Path, mode: u32) -> std::io::Result<Box<dyn ckpt_core::storage::StorageWriter>> {
        self.tick().create_new(p, mode)
    }
    fn open(&self, p: &Path) -> std::io::Result<Box<dyn ckpt_core::storage::StorageReader>> {
        self.tick().open(p)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.tick().rename(from, to)
    }
    fn hard_link(&self, original: &Path, link: &Path) -> std::io::Result<()> {
        self.tick().hard_link(original, link)
    }
    fn remove_file(&self, p: &Path) -> std::io::Result<()> {
        self.tick().remove_file(p)
    }
    fn sync_dir(&self, d: &Path) -> std::io::Result<()> {
        self.tick().sync_dir(d)
    }
    fn read_dir(&self, d: &Path) -> std::io::Result<Vec<ckpt_core::storage::DirEntry>> {
        self.note_listing(d);
        let entries = self.tick().read_dir(d)?;
        self.looked_at.fetch_add(entries.len() as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(entries)
    }
    fn read_dir_matching(
        &self,
        d: &Path,
        wanted: &dyn Fn(&std::ffi::OsStr) -> bool,
    ) -> std::io::Result<Vec<ckpt_core::storage::DirEntry>> {
        self.note_listing(d);
        let entries = self.tick().read_dir_matching(d, wanted)?;
        self.looked_at.fetch_add(entries.len() as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(entries)
    }
    fn list_names(&self, d: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
        self.note_listing(d);
        self.tick().list_names(d)
    }
    fn create_dir_all(&self, d: &Path) -> std::io::Result<()> {
        self.tick().create_dir_all(d)
    }
    fn remove_dir(&self, d: &Path) -> std::io::Result<()> {
        self.tick().remove_dir(d)
    }
    fn exists(&self, p: &Path) -> std::io::Result<bool> {
        self.tick().exists(p)
    }
}

fn stores_over(dir: &Path, nranks: u32, keep: usize, storage: &std::sync::Arc<CountingStorage>) -> Vec<Store> {
    (0..nranks).map(|r| Store::with_storage(rank_config(dir, r, nranks, keep), storage.clone())).collect()
}

/// A whole step as `ckpt_mpi_checkpoint` runs it: every rank writes its part of generation `g` and reports
/// its identity, rank 0 commits from the identities, every rank is told the outcome.
fn gathered_step(stores: &[Store], g: u64, step: u64) -> ckpt_core::CommitInfo {
    for s in stores {
        let rank = s.config().rank;
        let mut w = s.begin_part(g, step).unwrap();
        w.add_bytes("data", &part_payload(step, rank)).unwrap();
        w.add_serde("who", &(rank, step)).unwrap();
        w.commit().unwrap_or_else(|e| panic!("rank {rank}: part of generation {g}: {e}"));
    }
    let parts: Vec<ckpt_core::PartIdentity> = stores.iter().map(|s| s.part_identity(g).expect("identity")).collect();
    let info = stores[0].commit_step_with_parts(g, step, &parts).unwrap_or_else(|e| panic!("commit of {g}: {e}"));
    for s in stores {
        assert!(s.after_step_committed(g).is_empty(), "rank {}: warnings", s.config().rank);
    }
    info
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|it| it.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn rank_0_commits_from_gathered_identities_with_the_same_work_for_any_number_of_ranks() {
    let mut gathered = Vec::new();
    let mut opened = Vec::new();
    for n in [4u32, 32] {
        let dir = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(CountingStorage::default());
        let stores = stores_over(dir.path(), n, 2, &storage);
        for g in 1..=3 {
            gathered_step(&stores, g, g);
        }
        // Step 4 retires generation 2 (its ranks remove their parts) and removes generation 1's directory,
        // which its ranks emptied after step 3: the same calls for 4 ranks and for 32.
        for s in &stores {
            let mut w = s.begin_part(4, 4).unwrap();
            w.add_bytes("data", b"x").unwrap();
            w.commit().unwrap();
        }
        let parts: Vec<_> = stores.iter().map(|s| s.part_identity(4).unwrap()).collect();
        let before = storage.count();
        stores[0].commit_step_with_parts(4, 4, &parts).unwrap();
        gathered.push(storage.count() - before);
        assert_eq!(part_generations(dir.path()), [2, 3, 4], "{n} ranks: generation 1's emptied directory is gone");
        for s in &stores {
            s.after_step_committed(4);
        }
        assert!(files_in(&dir.path().join(format!("{BASE}.parts/2"))).is_empty(), "{n} ranks: retired parts");
        // The commit that opens every part, for comparison: it grows with the ranks.
        for s in &stores {
            let mut w = s.begin_part(5, 5).unwrap();
            w.add_bytes("data", b"x").unwrap();
            w.commit().unwrap();
        }
        let before = storage.count();
        stores[0].commit_step(5, 5).unwrap();
        opened.push(storage.count() - before);
        for (r, s) in stores.iter().enumerate() {
            assert_eq!(s.restore().unwrap().unwrap().generation, 5, "rank {r} of {n}");
        }
    }
    assert_eq!(gathered[0], gathered[1], "storage calls of rank 0's commit from identities, 4 ranks vs 32");
    assert!(opened[1] >= opened[0] + 28, "commit_step opens every part: {opened:?} calls for 4 and 32 ranks");
}

#[test]
fn each_rank_removes_its_own_retired_parts_and_a_later_commit_removes_their_directory() {
    let dir = tempfile::tempdir().unwrap();
    let stores = ranks(dir.path(), 2);
    let parts_of = |g: u64| files_in(&dir.path().join(format!("{BASE}.parts/{g}")));
    let all = ["rank0.ckpt", "rank1.ckpt", "rank2.ckpt", "rank3.ckpt"];
    gathered_step(&stores, 1, 10);
    gathered_step(&stores, 2, 20);
    assert_eq!(parts_of(1), all);
    gathered_step(&stores, 3, 30);
    assert_eq!(part_generations(dir.path()), [1, 2, 3], "generation 1 is retired, its directory stays a step");
    assert!(parts_of(1).is_empty(), "every rank removed its own part of generation 1: {:?}", parts_of(1));
    assert_eq!(parts_of(2), all, "generation 2 is kept");
    gathered_step(&stores, 4, 40);
    assert_eq!(part_generations(dir.path()), [2, 3, 4], "the next commit removed generation 1's directory");
    assert!(parts_of(2).is_empty());
    assert_eq!(
        top_names(dir.path()),
        [BASE.to_string(), format!("{BASE}.3"), format!("{BASE}.4"), format!("{BASE}.parts")]
    );
    for (r, s) in stores.iter().enumerate() {
        assert_own_part(&s.restore().unwrap().unwrap(), r as u32, 4, 40);
        assert_own_part(&s.restore_at_most(3).unwrap().unwrap(), r as u32, 3, 30);
    }
}

/// A rank that never learns the outcome keeps its retired part (it would remove it with its next part);
/// when that never comes (the job ended, the rank died), the first commit of a later run removes it.
#[test]
fn parts_their_rank_never_removed_are_removed_by_a_later_commit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let stores = ranks(dir.path(), 2);
        for g in 1..=3u64 {
            for s in &stores {
                let mut w = s.begin_part(g, g).unwrap();
                w.add_bytes("data", &part_payload(g, s.config().rank)).unwrap();
                w.commit().unwrap();
            }
            let parts: Vec<_> = stores.iter().map(|s| s.part_identity(g).unwrap()).collect();
            stores[0].commit_step_with_parts(g, g, &parts).unwrap();
            for s in &stores[..3] {
                s.after_step_committed(g); // rank 3 is never told
            }
        }
    }
    assert_eq!(files_in(&dir.path().join(format!("{BASE}.parts/1"))), ["rank3.ckpt"]);
    // The next run (new processes): its first commit finds generation 1's directory not empty, and retires
    // generation 2, whose parts no process of this run wrote: it removes both.
    let stores = ranks(dir.path(), 2);
    gathered_step(&stores, 4, 4);
    assert_eq!(part_generations(dir.path()), [3, 4], "after the new run's first commit");
}

#[test]
fn a_commit_from_identities_checks_every_identity_and_a_forged_one_never_restores() {
    let dir = tempfile::tempdir().unwrap();
    let stores = ranks(dir.path(), 2);
    gathered_step(&stores, 1, 10);
    for s in &stores {
        let mut w = s.begin_part(2, 20).unwrap();
        w.add_bytes("data", &part_payload(20, s.config().rank)).unwrap();
        w.add_serde("who", &(s.config().rank, 20u64)).unwrap();
        w.commit().unwrap();
    }
    let parts: Vec<_> = stores.iter().map(|s| s.part_identity(2).unwrap()).collect();
    assert_eq!(stores[1].part_identity(7), None, "no part of generation 7");
    let e = stores[0].commit_step_with_parts(2, 20, &parts[..3]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("3 part identities") && e.to_string().contains("4 ranks"), "{e}");
    let mut swapped = parts.clone();
    swapped.swap(1, 2);
    let e = stores[0].commit_step_with_parts(2, 20, &swapped).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    assert!(e.to_string().contains("rank 2/4") && e.to_string().contains("rank 1/4"), "{e}");
    let e = stores[0].commit_step_with_parts(2, 21, &parts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    assert!(e.to_string().contains("step 20") && e.to_string().contains("step 21"), "{e}");
    assert!(!dir.path().join(format!("{BASE}.2")).exists(), "a refused commit wrote a manifest");
    // An identity that does not describe the file (a rank reporting wrongly): the step commits, but no rank
    // restoring on its own may take it (rank 2 cannot), so every rank falls back to generation 1; with the
    // MPI helpers' agreement (`restore_at_most`), only rank 2's own check counts.
    let mut forged = parts.clone();
    forged[2].table_crc32 ^= 1;
    stores[0].commit_step_with_parts(2, 20, &forged).unwrap();
    for (r, s) in stores.iter().enumerate() {
        let restored = s.restore().unwrap().unwrap();
        assert_own_part(&restored, r as u32, 1, 10);
        assert!(
            restored.rejected.iter().any(|(_, e)| e.to_string().contains("part of rank 2")),
            "rank {r} must say that rank 2's part refuses generation 2: {:?}",
            restored.rejected
        );
    }
    let valid: Vec<u64> = stores.iter().map(|s| s.valid_generations().unwrap()[0]).collect();
    assert_eq!(valid, [2, 2, 1, 2], "newest valid generation per rank, own part only");
}

/// A temporary part file that a dead writer left in a generation's directory (a run killed while writing
/// that generation, whose number the next run takes again) is removed by the commit of that generation.
#[test]
fn a_dead_writers_temporary_part_is_removed_by_the_commit_of_its_generation() {
    let dir = tempfile::tempdir().unwrap();
    let stores = ranks(dir.path(), 2);
    gathered_step(&stores, 1, 1);
    let gdir = dir.path().join(format!("{BASE}.parts/2"));
    fs::create_dir_all(&gdir).unwrap();
    fs::write(gdir.join("rank2.ckpt.tmp.othernode.4242.9a"), b"half a part").unwrap();
    fs::write(gdir.join("notes.txt"), b"not ours").unwrap();
    gathered_step(&stores, 2, 2);
    let mut want: Vec<String> = (0..NRANKS).map(|r| format!("rank{r}.ckpt")).collect();
    want.push("notes.txt".into());
    want.sort();
    assert_eq!(files_in(&gdir), want, "the temporary part is gone, anything else stays");
}

/// `Checkpointer::finish_step(true)` (the outcome known, as with MPI) removes the rank's retired part at
/// once; `finish_step_unconfirmed` (a rank without MPI, which cannot know) keeps it for its next part.
#[test]
fn only_a_known_outcome_lets_a_rank_remove_its_retired_part_at_once() {
    for known in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let rank0 = Store::new(rank_config(dir.path(), 0, 2, 1));
        let mut c = rank_config(dir.path(), 1, 2, 1);
        c.log = ckpt_core::LogTarget::Off;
        let rank1 = ckpt_core::Checkpointer::new(Store::new(c)).unwrap();
        for g in 1..=2u64 {
            let mut w = rank0.begin_part(g, g).unwrap();
            w.add_bytes("x", b"rank 0").unwrap();
            w.commit().unwrap();
            let mut w = rank1.begin_part(g, g).unwrap();
            w.add_bytes("x", b"rank 1").unwrap();
            rank1.commit(w).unwrap();
            let parts = [rank0.part_identity(g).unwrap(), rank1.store().part_identity(g).unwrap()];
            rank0.commit_step_with_parts(g, g, &parts).unwrap();
            rank0.after_step_committed(g);
            if known {
                rank1.finish_step(true);
            } else {
                rank1.finish_step_unconfirmed();
            }
        }
        let left = files_in(&dir.path().join(format!("{BASE}.parts/1")));
        let want: &[&str] = if known { &[] } else { &["rank1.ckpt"] };
        assert_eq!(left, want, "outcome known: {known}");
    }
}

/// The checkpoint directory is often the job's working directory (Slurm's old `--checkpoint-dir` default), full of other
/// files. Steps in a row do not list it (each rank lists it at its first step and then at most every 10 s),
/// and a listing looks at (`stat`s) only the checkpoint's own entries: N ranks listing 2000 other files at
/// every step would be N readdirs and N × 2000 `stat`s per step on a parallel file system.
#[test]
fn a_step_looks_only_at_the_checkpoints_own_entries_of_a_crowded_directory() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..2000 {
        fs::write(dir.path().join(format!("output.{i}.dat")), b"x").unwrap();
    }
    fs::write(dir.path().join("otherjob.ckpt"), b"not ours").unwrap();
    let storage = std::sync::Arc::new(CountingStorage::default());
    let stores = stores_over(dir.path(), NRANKS, 2, &storage);
    // As `ckpt_mpi_checkpoint`: the ranks agree on the next generation (a MAX), then the step.
    let step = |s: u64| {
        let g = stores.iter().map(|st| st.next_generation().unwrap()).max().unwrap();
        gathered_step(&stores, g, s);
    };
    for s in 1..=3 {
        step(s);
    }
    assert!(storage.listings_of(dir.path()) <= 2 * NRANKS as usize + 1, "first steps: each rank lists once");
    let (before, listings) = (storage.looked_at(), storage.listings_of(dir.path()));
    step(4);
    assert_eq!(storage.listings_of(dir.path()), listings, "a step right after another listed the directory");
    let per_step = storage.looked_at() - before;
    assert!(per_step <= 8 * u64::from(NRANKS), "one step of {NRANKS} ranks looked at {per_step} entries");
    let first = stores_over(dir.path(), NRANKS, 2, &storage);
    let mut w = first[1].begin(5).unwrap(); // a new process lists: `stat`s only the checkpoint's entries
    w.add_bytes("data", b"x").unwrap();
    drop(w);
    let listed = storage.looked_at() - before - per_step;
    assert!(listed <= 8, "a fresh listing looked at {listed} entries");
    let before = storage.looked_at();
    for (r, s) in stores.iter().enumerate() {
        assert_eq!(s.restore().unwrap().unwrap().generation, 4, "rank {r}");
    }
    let restores = storage.looked_at() - before;
    assert!(restores <= 16 * u64::from(NRANKS), "{NRANKS} restores looked at {restores} entries");
}

/// Rows `[first, first + count)` of `total` owned by rank `rank` of `nranks` (the first `total % nranks`
/// ranks own one more), as the heat examples split their grid.
fn rows_of(total: usize, rank: u32, nranks: u32) -> (usize, usize) {
    let (base, extra, r) = (total / nranks as usize, total % nranks as usize, rank as usize);
    (r * base + r.min(extra), base + usize::from(r < extra))
}

#[test]
fn a_step_of_4_ranks_restarts_on_2_and_on_8_ranks_reading_any_rank_s_part() {
    let tmp = tempfile::tempdir().unwrap();
    let total = 1003; // uneven splits on 4, 2 and 8 ranks
    let global: Vec<f64> = (0..total).map(|i| (i as f64).sin() * 100.0).collect();
    let writers = ranks(tmp.path(), 2);
    let gens: Vec<u64> = writers
        .iter()
        .map(|s| {
            let (first, count) = rows_of(total, s.config().rank, NRANKS);
            let mut w = s.begin(40u64).unwrap();
            w.add_slice("rows", &global[first..first + count]).unwrap();
            w.commit().unwrap().generation
        })
        .collect();
    writers[0].commit_step(gens[0], 40u64).unwrap();

    for m in [2u32, 8] {
        let mut rebuilt = vec![f64::NAN; total];
        for rank in 0..m {
            let store = Store::new(rank_config(tmp.path(), rank, m, 2));
            // The usual restart refuses a step of another number of ranks, and says what to use instead.
            let e = store.restore().unwrap_err();
            assert!(e.to_string().contains("restore_step"), "{e}");
            let step = store.restore_step().unwrap().expect("the 4-rank step");
            assert_eq!((step.nranks(), step.app_step(), step.generation()), (NRANKS, 40, gens[0]));
            // This rank's rows, from the old ranks' parts that hold some of them.
            let (first, count) = rows_of(total, rank, m);
            for old in 0..step.nranks() {
                let (ofirst, ocount) = rows_of(total, old, step.nranks());
                let (lo, hi) = (first.max(ofirst), (first + count).min(ofirst + ocount));
                if lo >= hi {
                    continue;
                }
                let part = step.part(old).unwrap();
                let rows = part.read_slice::<f64>("rows").unwrap();
                rebuilt[lo..hi].copy_from_slice(&rows[lo - ofirst..hi - ofirst]);
            }
        }
        assert_eq!(rebuilt, global, "{m} ranks rebuilt the global field bit for bit");
    }

    // A damaged part: the step is not offered (every part is verified), and says which.
    flip_byte_in_section(&part_path(tmp.path(), gens[0], 3), "rows");
    let e = Store::new(rank_config(tmp.path(), 0, 2, 2)).restore_step().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoValidCheckpoint, "{e}");
    assert!(e.to_string().contains("part of rank 3"), "{e}");
    let step_of_one = Store::new(rank_config(tmp.path(), 0, 1, 2));
    assert!(step_of_one.restore_step().is_err(), "one process reads a damaged step neither");
}

/// The time-limit lead counts the whole step on this rank, not only its part's save: what follows the
/// part (the MPI helpers' gather, rank 0's commit, the copies to partner nodes, here 1.5 s) until
/// `finish_step`. Before, the checkpoint before the end was asked for when the part's save alone (a few
/// milliseconds) was left, and the copies did not finish before the job was killed.
#[test]
fn the_time_limit_lead_counts_the_rest_of_the_step_after_the_part() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ckpt_core::Config::new("lead", dir.path()).unwrap();
    cfg.rank = 1;
    cfg.nranks = 2;
    cfg.log = ckpt_core::LogTarget::Off;
    cfg.margin = Duration::ZERO;
    cfg.safety_factor = 1.0;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let end = now.ceil() as i64 + 6;
    cfg.end_time = Some(end);
    cfg.end_time_source = Some(ckpt_core::triggers::EndTimeSource::CkptEnv);
    let cp = ckpt_core::Checkpointer::new(ckpt_core::Store::new(cfg)).unwrap();
    cp.checkpoint_part(1, 1, |w| w.add_bytes("x", b"part")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    cp.finish_step(true);
    let t = Instant::now();
    while !cp.should_checkpoint() {
        assert!(t.elapsed() < Duration::from_secs(10), "no time-limit checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = cp.time_left().unwrap();
    assert!(left > 1.0, "the time-limit checkpoint was asked for {left:.3} s before the end, not 1.5 s");
}
