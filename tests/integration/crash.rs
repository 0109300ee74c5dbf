//! Crash-image tests: for every mutating operation of a save sequence (every write, fsync, link, rename,
//! directory fsync and prune), the process "dies" there (`MemStorage::stop_after(k)`), and for every
//! `CrashMode` the surviving bytes must reopen to the last committed checkpoint or to a newer one that was
//! completely written, with exactly the content saved for that generation: never a mixture, never a
//! damaged file under a committed name, never an error once one commit was durable.
//!
//! The harness is checked against itself: the same sweep run over deliberately wrong protocols (no fsync
//! of the file before the rename, no fsync of the directory after it) must report violations, and over a
//! hand-written correct protocol must not.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ckpt_core::storage::{CrashMode, MemStorage, Storage};
use ckpt_core::{CandidateStatus, Checkpoint, Compression, Config, LoadOptions, SectionOptions, Store};
use ckpt_tests::{Rng, config, smooth_field};
use serde::{Deserialize, Serialize};

/// The (absolute) checkpoint directory inside the in-memory file systems.
pub(crate) const DIR: &str = "/ckpt";
/// The application name; the checkpoint's base name is `heat.ckpt`.
pub(crate) const APP: &str = "heat";

pub(crate) const MODES: [CrashMode; 4] =
    [CrashMode::DurableOnly, CrashMode::EntriesWithoutData, CrashMode::Everything, CrashMode::Torn];

/// The typed part of every checkpoint (written with `add_serde`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    pub step: u64,
    pub energy: f64,
    pub labels: Vec<String>,
    pub history: Vec<u32>,
}

/// How a section is written.
#[derive(Clone, Copy, Debug)]
pub(crate) enum How {
    /// `add_section_with`, uncompressed.
    Raw,
    /// `add_section_with`, zstd at a level.
    Zstd(i32),
    /// `add_section_with`, zstd after byte-shuffling elements of the given width.
    ZstdShuffle(i32, u16),
    /// `section_writer` (streaming), zstd at a level, in chunks of the given length.
    Streamed(i32, usize),
}

impl How {
    fn options(self) -> SectionOptions {
        match self {
            How::Raw => SectionOptions::new(),
            How::Zstd(level) | How::Streamed(level, _) => SectionOptions::new().compression(Compression::Zstd(level)),
            How::ZstdShuffle(level, width) => {
                SectionOptions::new().compression(Compression::Zstd(level)).shuffle(width)
            }
        }
    }
}

/// One section of a planned save.
#[derive(Clone, Debug)]
pub(crate) struct SectionSpec {
    pub name: String,
    pub how: How,
    pub data: Vec<u8>,
}

/// One planned save: what the reference model says the generation holds.
#[derive(Clone, Debug)]
pub(crate) struct SaveSpec {
    pub app_step: u64,
    pub metadata: Vec<(String, Vec<u8>)>,
    pub sections: Vec<SectionSpec>,
    pub state: State,
}

impl SaveSpec {
    /// Writes this save through `store` (`begin`, metadata, sections, `add_serde`, `commit`) and returns the
    /// committed generation.
    pub(crate) fn save(&self, store: &Store) -> ckpt_core::Result<u64> {
        let mut w = store.begin(self.app_step)?;
        self.fill(&mut w)?;
        Ok(w.commit()?.generation)
    }

    /// Adds metadata and sections to an open writer.
    pub(crate) fn fill(&self, w: &mut ckpt_core::CheckpointWriter) -> ckpt_core::Result<()> {
        for (k, v) in &self.metadata {
            w.set_metadata(k, v)?;
        }
        for s in &self.sections {
            match s.how {
                How::Streamed(_, chunk) => {
                    let mut sw = w.section_writer(&s.name, s.how.options())?;
                    for c in s.data.chunks(chunk.max(1)) {
                        sw.write_bytes(c)?;
                    }
                    sw.finish()?;
                }
                _ => w.add_section_with(&s.name, &s.data, s.how.options())?,
            }
        }
        w.add_serde("state", &self.state)
    }

    /// Checks that `cp` holds exactly this save (header step, metadata, the same section names, every
    /// section's bytes, the typed state); `Err` describes the first difference.
    pub(crate) fn check(&self, cp: &Checkpoint) -> Result<(), String> {
        let h = cp.header();
        if h.app_step != self.app_step {
            return Err(format!("app_step {} but the save had {}", h.app_step, self.app_step));
        }
        // The run's identity is recorded by the library in every file, beside the save's own entries.
        let user: Vec<(String, Vec<u8>)> =
            h.metadata.iter().filter(|(k, _)| k != ckpt_core::identity::IDENTITY_KEY).cloned().collect();
        if !h.metadata.iter().any(|(k, _)| k == ckpt_core::identity::IDENTITY_KEY) {
            return Err("the file records no run identity".into());
        }
        if user != self.metadata {
            return Err(format!("metadata {:?} but the save had {:?}", user, self.metadata));
        }
        let mut names: Vec<&str> = cp.sections().iter().map(|s| s.name.as_str()).collect();
        let mut want: Vec<&str> = self.sections.iter().map(|s| s.name.as_str()).chain(["state"]).collect();
        names.sort_unstable();
        want.sort_unstable();
        if names != want {
            return Err(format!("sections {names:?} but the save had {want:?}"));
        }
        for s in &self.sections {
            let got = cp.read(&s.name).map_err(|e| format!("reading section `{}`: {e}", s.name))?;
            if got[..] != s.data[..] {
                let first = got.iter().zip(&s.data).position(|(a, b)| a != b);
                return Err(format!(
                    "section `{}` differs: {} bytes read, {} saved, first difference at {first:?}",
                    s.name,
                    got.len(),
                    s.data.len()
                ));
            }
        }
        let state: State = cp.read_serde("state").map_err(|e| format!("reading the state: {e}"))?;
        if state != self.state {
            return Err(format!("state {state:?} but the save had {:?}", self.state));
        }
        Ok(())
    }
}

fn state(step: u64, rng: &mut Rng) -> State {
    State {
        step,
        energy: -1.0 / (step as f64 + 0.5),
        labels: (0..(step % 4 + 1)).map(|i| format!("label-{step}-{i}")).collect(),
        history: (0..rng.below(40) + 1).map(|_| rng.next_u64() as u32).collect(),
    }
}

/// The single-rank save sequence: 4 generations of varying sizes and codecs. A raw section of more than
/// 1 MiB goes to the storage as its own write, so the big saves take several write operations.
pub(crate) fn plan(seed: u64) -> Vec<SaveSpec> {
    let mut rng = Rng::new(seed);
    vec![
        // gen 1: compressible field (zstd + shuffle), 1.1 MB random raw section, metadata.
        SaveSpec {
            app_step: 100,
            metadata: vec![("run".into(), b"alpha".to_vec()), ("empty".into(), Vec::new())],
            sections: vec![
                SectionSpec { name: "field".into(), how: How::ZstdShuffle(3, 8), data: smooth_field(30_000, 0.1) },
                SectionSpec { name: "blob".into(), how: How::Raw, data: rng.bytes(1_100_000) },
            ],
            state: state(100, &mut rng),
        },
        // gen 2: small sections only (one write for the whole file), an empty one, incompressible zstd.
        SaveSpec {
            app_step: 200,
            metadata: Vec::new(),
            sections: vec![
                SectionSpec { name: "field".into(), how: How::ZstdShuffle(3, 8), data: smooth_field(2_000, 0.2) },
                SectionSpec { name: "noise".into(), how: How::Zstd(1), data: rng.bytes(50_000) },
                SectionSpec { name: "empty".into(), how: How::Raw, data: Vec::new() },
                SectionSpec { name: "tiny".into(), how: How::Raw, data: b"0123456789".to_vec() },
            ],
            state: state(200, &mut rng),
        },
        // gen 3: streamed compressed section, big raw section between small ones.
        SaveSpec {
            app_step: 300,
            metadata: vec![("run".into(), b"beta".to_vec())],
            sections: vec![
                SectionSpec { name: "stream".into(), how: How::Streamed(1, 7_919), data: smooth_field(20_000, 0.3) },
                SectionSpec { name: "blob".into(), how: How::Raw, data: rng.bytes(1_200_000) },
                SectionSpec { name: "tail".into(), how: How::Raw, data: rng.bytes(4_097) },
            ],
            state: state(300, &mut rng),
        },
        // gen 4: shuffle width 4, raw section exactly 1 MiB (the coalescing limit).
        SaveSpec {
            app_step: 400,
            metadata: Vec::new(),
            sections: vec![
                SectionSpec { name: "field32".into(), how: How::ZstdShuffle(5, 4), data: smooth_field(10_000, 0.4) },
                SectionSpec { name: "blob".into(), how: How::Raw, data: rng.bytes(1 << 20) },
            ],
            state: state(400, &mut rng),
        },
    ]
}

/// The single-rank configuration of these tests: checkpoints in [`DIR`], keep 2.
pub(crate) fn mem_config() -> Config {
    let mut cfg = config(APP, Path::new(DIR));
    cfg.keep = 2;
    cfg
}

pub(crate) fn mem_store(cfg: &Config, mem: &MemStorage) -> Store {
    Store::with_storage(cfg.clone(), Arc::new(mem.clone()))
}

pub(crate) fn gen_path(generation: u64) -> PathBuf {
    Path::new(DIR).join(format!("{APP}.ckpt.{generation}"))
}

/// One way of running a save sequence against a `MemStorage`, and the oracle for its crash images.
trait Scenario {
    /// The number of saves in the sequence.
    fn saves(&self) -> usize;
    /// Starts a "process" over `mem`: the returned closure performs save `i` (0-based) and returns the
    /// committed generation, or an error (the process died).
    fn start<'a>(&'a self, mem: &MemStorage) -> Box<dyn FnMut(usize) -> Result<u64, String> + 'a>;
    /// Checks a crash image, given the newest generation whose commit returned before the crash
    /// (`durable`, 0 for none) and the newest generation that was being written (`newest`). Returns the
    /// generation restored (0 for none).
    fn check(&self, img: &MemStorage, durable: u64, newest: u64) -> Result<u64, String>;
}

/// What a sweep found.
struct Sweep {
    /// Mutating operations of the whole sequence.
    total_ops: u64,
    /// (crash point, mode) pairs checked.
    images: usize,
    /// How many images restored to each generation (index 0: none).
    restored: Vec<usize>,
    /// Violations, each naming k, the mode and what was wrong.
    violations: Vec<String>,
}

/// Pass 1 counts the sequence's mutating operations; pass 2 crashes after every k of them and checks
/// the image every crash mode leaves. The storage keeps every retired file as the spare that the next
/// save writes over (space reuse at any size); [`sweep_without_spares`] removes them instead.
fn sweep(sc: &dyn Scenario) -> Sweep {
    sweep_with(sc, true, false)
}

/// [`sweep`] with retired files removed, as for checkpoints below the real storage's spare size.
fn sweep_without_spares(sc: &dyn Scenario) -> Sweep {
    sweep_with(sc, false, false)
}

fn fresh_storage(spares: bool, large_dirs: bool) -> MemStorage {
    let mem = MemStorage::new();
    if !spares {
        mem.set_spare_min_len(None);
    }
    // A crowded directory: saves find their files by name instead of listing it.
    mem.set_large_dirs(large_dirs);
    mem
}

fn sweep_with(sc: &dyn Scenario, spares: bool, large_dirs: bool) -> Sweep {
    let mem = fresh_storage(spares, large_dirs);
    {
        let mut run = sc.start(&mem);
        for i in 0..sc.saves() {
            let g = run(i).unwrap_or_else(|e| panic!("pass 1: save {i} failed without any crash: {e}"));
            assert_eq!(g, i as u64 + 1, "pass 1: save {i} committed generation {g}");
        }
    }
    let total = mem.op_count();
    let mut out = Sweep { total_ops: total, images: 0, restored: vec![0; sc.saves() + 1], violations: Vec::new() };
    for k in 0..=total {
        let mem = fresh_storage(spares, large_dirs);
        mem.stop_after(k);
        let mut durable = 0u64;
        let mut crashed = false;
        {
            let mut run = sc.start(&mem);
            for i in 0..sc.saves() {
                match run(i) {
                    Ok(g) => {
                        assert_eq!(g, i as u64 + 1, "k={k}: save {i} committed generation {g}");
                        durable = g;
                    }
                    Err(_) => {
                        crashed = true;
                        break;
                    }
                }
            }
        }
        // A death inside pruning (after the commit is durable) is a warning, not an error: the commit
        // returns and the next save is the one that fails, or none when it was the last save.
        assert!(!crashed || k < total, "k={k}/{total}: the sequence died without a crash");
        let newest = if crashed { durable + 1 } else { durable };
        for mode in MODES {
            let img = mem.crash_image(mode);
            out.images += 1;
            match sc.check(&img, durable, newest) {
                Ok(g) => out.restored[g as usize] += 1,
                Err(v) => out.violations.push(format!(
                    "k={k}/{total} mode={mode:?} (last returned commit: gen {durable}, writing gen {newest}): {v}"
                )),
            }
        }
    }
    out
}

/// The oracle for single-rank images.
///
/// * `restore()` never errors; it returns `None` only while no commit has returned.
/// * The generation restored is at least the last one whose commit returned, at most the one being
///   written, and holds exactly what that save wrote.
/// * Every file under a committed name (`<base>`, `<base>.<N>`) verifies completely (names are only
///   given to fully written, fsynced files), so the newest named generation is the one restored.
fn check_single(plan: &[SaveSpec], cfg: &Config, img: &MemStorage, durable: u64, newest: u64) -> Result<u64, String> {
    let store = mem_store(cfg, img);
    let restored = match store.restore() {
        Err(e) => return Err(format!("restore() failed: {e}")),
        Ok(None) if durable > 0 => return Err(format!("restore() found nothing but gen {durable} was committed")),
        Ok(None) => None,
        Ok(Some(r)) => Some(r),
    };
    let d = store.discover_all().map_err(|e| format!("discover_all() failed: {e}"))?;
    let mut named_max = 0;
    for c in &d.candidates {
        match &c.status {
            CandidateStatus::Valid => named_max = named_max.max(c.generation.unwrap_or(0)),
            CandidateStatus::Invalid(e) => {
                return Err(format!("{} is under a committed name but does not verify: {e}", c.path.display()));
            }
            CandidateStatus::NotChecked => return Err(format!("{}: not checked by discover_all", c.path.display())),
            other => return Err(format!("{}: unexpected status {other:?}", c.path.display())),
        }
    }
    let Some(r) = restored else {
        return if d.candidates.is_empty() {
            Ok(0)
        } else {
            Err(format!("restore() found nothing but there are candidates: {}", d.explanation))
        };
    };
    let g = r.generation;
    if g < durable.max(1) || g > newest {
        return Err(format!("restored gen {g} from {}, expected {durable}..={newest}", r.chosen_path.display()));
    }
    if g != named_max {
        return Err(format!("restored gen {g} but gen {named_max} is present and valid"));
    }
    if r.checkpoint.generation() != g {
        return Err(format!("restored gen {g} but the file's header says {}", r.checkpoint.generation()));
    }
    plan[g as usize - 1].check(&r.checkpoint).map_err(|e| format!("gen {g} ({}): {e}", r.chosen_path.display()))?;
    Ok(g)
}

/// The library's protocol: one `Store` (one process) making the saves of the plan.
struct LibrarySingle {
    plan: Vec<SaveSpec>,
    cfg: Config,
}

/// [`LibrarySingle`] with a new `Store` for every save (a process per save: nothing known of the
/// directory, which in a crowded directory means finding the generations by name each time).
struct LibrarySinglePerProcess(LibrarySingle);

impl Scenario for LibrarySinglePerProcess {
    fn saves(&self) -> usize {
        self.0.saves()
    }
    fn start<'a>(&'a self, mem: &MemStorage) -> Box<dyn FnMut(usize) -> Result<u64, String> + 'a> {
        let mem = mem.clone();
        Box::new(move |i| self.0.plan[i].save(&mem_store(&self.0.cfg, &mem)).map_err(|e| e.to_string()))
    }
    fn check(&self, img: &MemStorage, durable: u64, newest: u64) -> Result<u64, String> {
        self.0.check(img, durable, newest)
    }
}

impl Scenario for LibrarySingle {
    fn saves(&self) -> usize {
        self.plan.len()
    }
    fn start<'a>(&'a self, mem: &MemStorage) -> Box<dyn FnMut(usize) -> Result<u64, String> + 'a> {
        let store = mem_store(&self.cfg, mem);
        Box::new(move |i| self.plan[i].save(&store).map_err(|e| e.to_string()))
    }
    fn check(&self, img: &MemStorage, durable: u64, newest: u64) -> Result<u64, String> {
        check_single(&self.plan, &self.cfg, img, durable, newest)
    }
}

fn report(name: &str, s: &Sweep) -> String {
    let mut msg = format!(
        "{name}: {} mutating ops, {} crash images, restored per generation (0 = none) {:?}, {} violation(s)",
        s.total_ops,
        s.images,
        s.restored,
        s.violations.len()
    );
    for v in s.violations.iter().take(12) {
        msg.push_str("\n  ");
        msg.push_str(v);
    }
    msg
}

/// Sweeps `sc` with retired files kept as spares and with them removed; asserts that neither found a
/// violation and that every generation from `first` on was the one restored for some crash point. Returns
/// the sweeps' summaries with the sweeps.
fn sweep_both_ways(sc: &dyn Scenario, label: &str, first: usize) -> Vec<(Sweep, String)> {
    let mut out = Vec::new();
    for (s, spares) in
        [(sweep(sc), "retired files kept as the spare"), (sweep_without_spares(sc), "retired files removed")]
    {
        let summary = report(&format!("{label}, {spares}"), &s);
        println!("{summary}");
        assert!(s.violations.is_empty(), "{summary}");
        assert!(s.restored.iter().skip(first).all(|&n| n > 0), "some generation was never restored: {summary}");
        out.push((s, summary));
    }
    out
}

#[test]
fn every_crash_point_of_a_save_sequence_restores_the_last_commit() {
    let sc = LibrarySingle { plan: plan(0xC0FFEE), cfg: mem_config() };
    for (s, summary) in sweep_both_ways(&sc, "library protocol, 1 rank", 0) {
        // The sequence is long enough to have crash points inside every save.
        assert!(s.total_ops >= 4 * 8, "{summary}");
    }
}

/// The same in a directory crowded with other files, each save by a new process, which finds the
/// generations by name (from `<base>`'s header) instead of listing the directory.
#[test]
fn every_crash_point_of_a_save_sequence_in_a_crowded_directory_restores_the_last_commit() {
    let sc = LibrarySinglePerProcess(LibrarySingle { plan: plan(0xC0FFEF), cfg: mem_config() });
    for spares in [true, false] {
        let s = sweep_with(&sc, spares, true);
        let summary = report(&format!("library protocol, 1 rank, crowded directory, spares {spares}"), &s);
        println!("{summary}");
        assert!(s.violations.is_empty(), "{summary}");
        assert!(s.total_ops >= 4 * 8, "{summary}");
    }
}

/// Saves to one exact path (`begin_file`, what `ckpt.save(obj, path)` and `ckpt_save_buffer` do): the file
/// it replaces becomes the spare (a hard link made just before the rename) that the next save writes over.
struct LibraryFile {
    plan: Vec<SaveSpec>,
    cfg: Config,
}

impl LibraryFile {
    fn path() -> PathBuf {
        Path::new(DIR).join("state.bin")
    }
}

impl Scenario for LibraryFile {
    fn saves(&self) -> usize {
        self.plan.len()
    }
    fn start<'a>(&'a self, mem: &MemStorage) -> Box<dyn FnMut(usize) -> Result<u64, String> + 'a> {
        let storage: Arc<dyn ckpt_core::storage::Storage> = Arc::new(mem.clone());
        Box::new(move |i| {
            let spec = &self.plan[i];
            let mut w = ckpt_core::begin_file(&Self::path(), spec.app_step, &self.cfg, storage.clone())
                .map_err(|e| e.to_string())?;
            spec.fill(&mut w).map_err(|e| e.to_string())?;
            w.commit().map_err(|e| e.to_string())?;
            Ok(i as u64 + 1)
        })
    }
    /// The file at the path is always one whole save, at least the last one that returned.
    fn check(&self, img: &MemStorage, durable: u64, newest: u64) -> Result<u64, String> {
        let path = Self::path();
        let cp = match Checkpoint::open_with(img, &path, ckpt_core::LoadOptions::new().mmap(false)) {
            Err(_) if durable == 0 && img.read_file(&path).is_err() => return Ok(0),
            Err(e) => return Err(format!("{}: {e}", path.display())),
            Ok(cp) => cp,
        };
        cp.verify().map_err(|e| format!("{} does not verify: {e}", path.display()))?;
        let k = self.plan.iter().position(|s| s.app_step == cp.step()).ok_or("a step no save wrote")?;
        let g = k as u64 + 1;
        if g < durable.max(1) || g > newest {
            return Err(format!("the file holds save {g}, expected {durable}..={newest}"));
        }
        self.plan[k].check(&cp).map_err(|e| format!("save {g}: {e}"))?;
        Ok(g)
    }
}

#[test]
fn every_crash_point_of_saves_to_one_path_leaves_a_whole_save_there() {
    let sc = LibraryFile { plan: plan(0xF11E), cfg: mem_config() };
    sweep_both_ways(&sc, "saves to one path", 1);
}

/// After a crash, a restarted process (a new `Store` on the crash image) saves the next generation and
/// restores it: debris of the dead save (tmp files, names of a generation whose commit never returned)
/// does not get in the way.
#[test]
fn a_restarted_process_saves_and_restores_after_every_crash_point() {
    let plan = plan(0xBEEF);
    let cfg = mem_config();
    let sc = LibrarySingle { plan: plan[..2].to_vec(), cfg: cfg.clone() };
    let probe = MemStorage::new();
    {
        let mut run = sc.start(&probe);
        run(0).expect("save 0");
        run(1).expect("save 1");
    }
    let total = probe.op_count();
    let extra = &plan[2];
    for (k, large_dirs) in (0..=total).flat_map(|k| [(k, false), (k, true)]) {
        let mem = MemStorage::new();
        // Also in a crowded directory, where the new process finds the generations by name.
        mem.set_large_dirs(large_dirs);
        mem.stop_after(k);
        {
            let mut run = sc.start(&mem);
            let _ = run(0).and_then(|_| run(1));
        }
        for mode in MODES {
            let img = mem.crash_image(mode);
            let before = sc.check(&img, 0, 2).unwrap_or_else(|e| panic!("k={k} mode={mode:?}: {e}"));
            let store = mem_store(&cfg, &img);
            let g = extra.save(&store).unwrap_or_else(|e| panic!("k={k} mode={mode:?}: save after restart: {e}"));
            assert!(g > before, "k={k} mode={mode:?}: new save got gen {g}, not above the restored gen {before}");
            let r = store.restore().unwrap_or_else(|e| panic!("k={k} mode={mode:?}: restore: {e}"));
            let r = r.unwrap_or_else(|| panic!("k={k} mode={mode:?}: nothing restored after a new save"));
            assert_eq!(r.generation, g, "k={k} mode={mode:?}: restored gen vs the new save's");
            extra.check(&r.checkpoint).unwrap_or_else(|e| panic!("k={k} mode={mode:?}: new save's content: {e}"));
            // And a power cut right after that save keeps it.
            let img2 = img.crash_image(CrashMode::DurableOnly);
            let r2 = mem_store(&cfg, &img2).restore().unwrap_or_else(|e| panic!("k={k} mode={mode:?}: {e}"));
            assert_eq!(r2.map(|r| r.generation), Some(g), "k={k} mode={mode:?}: power cut after the new save");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Multi-rank steps.

const NRANKS: u32 = 2;

fn rank_config(rank: u32) -> Config {
    let mut cfg = mem_config();
    cfg.nranks = NRANKS;
    cfg.rank = rank;
    cfg.commit_timeout = Duration::from_millis(50);
    cfg
}

/// Per generation, per rank: what the rank's part holds.
fn rank_plan(seed: u64, generations: usize) -> Vec<Vec<SaveSpec>> {
    let mut rng = Rng::new(seed);
    (1..=generations as u64)
        .map(|g| {
            (0..u64::from(NRANKS))
                .map(|r| SaveSpec {
                    app_step: 10 * g,
                    metadata: vec![("rank".into(), r.to_string().into_bytes())],
                    sections: vec![
                        SectionSpec {
                            name: "field".into(),
                            how: How::ZstdShuffle(3, 8),
                            data: smooth_field(3_000 * (g + r) as usize, g as f64 + 0.5 * r as f64),
                        },
                        SectionSpec {
                            name: "blob".into(),
                            how: How::Raw,
                            data: rng.bytes(if g == 2 && r == 1 { 1_050_000 } else { 1_000 * (g + r) as usize }),
                        },
                    ],
                    state: state(10 * g + r, &mut rng),
                })
                .collect()
        })
        .collect()
}

struct LibraryMultiRank {
    plan: Vec<Vec<SaveSpec>>,
    /// Rank 0 commits from the identities the ranks report (`commit_step_with_parts`, as `ckpt_mpi.h`
    /// does) and every rank removes its own retired parts (`after_step_committed`); otherwise rank 0
    /// opens every part and prunes them all (`commit_step`).
    gathered: bool,
}

impl Scenario for LibraryMultiRank {
    fn saves(&self) -> usize {
        self.plan.len()
    }

    fn start<'a>(&'a self, mem: &MemStorage) -> Box<dyn FnMut(usize) -> Result<u64, String> + 'a> {
        let stores: Vec<Store> = (0..NRANKS).map(|r| mem_store(&rank_config(r), mem)).collect();
        Box::new(move |i| {
            let generation = i as u64 + 1;
            let step = self.plan[i][0].app_step;
            for (r, store) in stores.iter().enumerate() {
                let mut w = store.begin_part(generation, step).map_err(|e| format!("rank {r} begin: {e}"))?;
                self.plan[i][r].fill(&mut w).map_err(|e| format!("rank {r} write: {e}"))?;
                w.commit().map_err(|e| format!("rank {r} commit: {e}"))?;
            }
            if !self.gathered {
                let info = stores[0].commit_step(generation, step).map_err(|e| format!("commit_step: {e}"))?;
                return Ok(info.generation);
            }
            let parts = stores
                .iter()
                .map(|s| s.part_identity(generation).ok_or("a committed part has no identity"))
                .collect::<Result<Vec<_>, _>>()?;
            let info = stores[0]
                .commit_step_with_parts(generation, step, &parts)
                .map_err(|e| format!("commit_step_with_parts: {e}"))?;
            for s in &stores {
                s.after_step_committed(generation); // failures are warnings: the step is committed
            }
            Ok(info.generation)
        })
    }

    /// Every rank restores, the same generation, within bounds, its own part with exactly its content; no
    /// error once a step was committed; manifests at or above the last committed step all verify.
    fn check(&self, img: &MemStorage, durable: u64, newest: u64) -> Result<u64, String> {
        let mut gens = Vec::new();
        for r in 0..NRANKS {
            let store = mem_store(&rank_config(r), img);
            let restored = match store.restore() {
                Err(e) => return Err(format!("rank {r}: restore() failed: {e}")),
                Ok(None) if durable > 0 => {
                    return Err(format!("rank {r}: restore() found nothing but step {durable} was committed"));
                }
                Ok(None) => {
                    gens.push(0);
                    continue;
                }
                Ok(Some(res)) => res,
            };
            let g = restored.generation;
            if g < durable.max(1) || g > newest {
                return Err(format!("rank {r}: restored gen {g}, expected {durable}..={newest}"));
            }
            let h = restored.checkpoint.header();
            if h.rank != r || h.generation != g {
                return Err(format!("rank {r}: got the part of rank {} gen {} for gen {g}", h.rank, h.generation));
            }
            self.plan[g as usize - 1][r as usize]
                .check(&restored.checkpoint)
                .map_err(|e| format!("rank {r} gen {g} ({}): {e}", restored.checkpoint.path().display()))?;
            let d = store.discover_all().map_err(|e| format!("rank {r}: discover_all() failed: {e}"))?;
            for c in &d.candidates {
                if let CandidateStatus::Invalid(e) = &c.status
                    && c.generation.is_some_and(|cg| cg >= durable.max(1))
                {
                    return Err(format!("rank {r}: manifest {} does not verify: {e}", c.path.display()));
                }
            }
            gens.push(g);
        }
        if gens.iter().any(|&g| g != gens[0]) {
            return Err(format!("the ranks restored different generations: {gens:?}"));
        }
        Ok(gens[0])
    }
}

/// Sweeps a multi-rank scenario: no violation, and every generation was the restored one for some crash
/// point.
fn sweep_multi_rank(sc: &LibraryMultiRank, label: &str) {
    sweep_both_ways(sc, label, 0);
}

#[test]
fn every_crash_point_of_a_multi_rank_sequence_restores_the_last_step() {
    sweep_multi_rank(&LibraryMultiRank { plan: rank_plan(0xACE, 3), gathered: false }, "library protocol, 2 ranks");
}

/// The MPI helpers' protocol: rank 0 commits from the gathered identities without opening the parts, and
/// each rank removes its own parts of the generation a commit retires. Four steps with `keep` = 2, so two
/// generations are retired by their ranks (and their directories by a later commit) inside the sweep.
#[test]
fn every_crash_point_of_a_gathered_multi_rank_sequence_restores_the_last_step() {
    let sc = LibraryMultiRank { plan: rank_plan(0xBEE, 4), gathered: true };
    sweep_multi_rank(&sc, "gathered identities, ranks prune their own parts, 2 ranks");
    // Without a crash, only the kept generations hold parts; the generation retired by the last step is
    // an empty directory until the next commit.
    let mem = MemStorage::new();
    {
        let mut run = sc.start(&mem);
        for i in 0..sc.saves() {
            run(i).unwrap();
        }
    }
    let mut holding: Vec<String> = mem
        .list_files()
        .iter()
        .filter_map(|p| p.to_str())
        .filter(|p| p.contains(".parts/"))
        .map(|p| p.rsplit_once(".parts/").unwrap().1.to_string())
        .collect();
    holding.sort();
    // Each rank's newest retired part is its spare.
    assert_eq!(
        holding,
        ["3/rank0.ckpt", "3/rank1.ckpt", "4/rank0.ckpt", "4/rank1.ckpt", "rank0.spare", "rank1.spare"],
        "parts left after 4 steps"
    );
}

/// A process makes the parts root durable in its directory once and then syncs only the root at each step;
/// when the root disappears between steps (removed by hand), the next part creates it again and makes it
/// durable again: each part is durable when its commit returns (before any manifest, whose directory sync
/// would hide a missing one), and the step restores on every rank after its manifest.
#[test]
fn a_parts_root_removed_between_steps_is_made_durable_again() {
    let plan = rank_plan(0xB0B, 2);
    let mem = MemStorage::new();
    let stores: Vec<Store> = (0..NRANKS).map(|r| mem_store(&rank_config(r), &mem)).collect();
    let parts = |i: usize| {
        for (r, store) in stores.iter().enumerate() {
            let mut w = store.begin_part(i as u64 + 1, plan[i][0].app_step).unwrap();
            plan[i][r].fill(&mut w).unwrap();
            w.commit().unwrap();
        }
    };
    parts(0);
    stores[0].commit_step(1, plan[0][0].app_step).unwrap();
    // Remove every part and the parts root, then the step-1 manifests, as a user clearing the directory.
    let root = Path::new(DIR).join(format!("{APP}.ckpt.parts"));
    for d in mem.read_dir(&root).unwrap() {
        let gd = root.join(&d.name);
        for f in mem.read_dir(&gd).unwrap() {
            mem.remove_file(&gd.join(&f.name)).unwrap();
        }
        mem.remove_dir(&gd).unwrap();
    }
    mem.remove_dir(&root).unwrap();
    for d in mem.read_dir(Path::new(DIR)).unwrap() {
        if d.is_file {
            mem.remove_file(&Path::new(DIR).join(&d.name)).unwrap();
        }
    }
    mem.sync_dir(Path::new(DIR)).unwrap();
    parts(1);
    let img = mem.crash_image(CrashMode::DurableOnly);
    for r in 0..NRANKS {
        let part = root.join("2").join(format!("rank{r}.ckpt"));
        let cp = Checkpoint::open_with(&img, &part, LoadOptions::new().mmap(false))
            .unwrap_or_else(|e| panic!("rank {r}'s part did not survive the crash: {e}"));
        plan[1][r as usize].check(&cp).unwrap();
    }
    stores[0].commit_step(2, plan[1][0].app_step).unwrap();
    let img = mem.crash_image(CrashMode::DurableOnly);
    for r in 0..NRANKS {
        let restored = mem_store(&rank_config(r), &img).restore().unwrap().expect("step 2 restores");
        assert_eq!(restored.generation, 2, "rank {r}");
        plan[1][r as usize].check(&restored.checkpoint).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------------------
// The harness has teeth: hand-written protocols straight against `MemStorage`.

/// Which steps a hand-written commit performs.
#[derive(Clone, Copy, Debug)]
struct Manual {
    fsync_file: bool,
    fsync_dir: bool,
}

/// A protocol written directly against the storage, with the complete file bytes of each generation
/// produced beforehand by the library (so only the commit steps differ).
struct ManualSingle {
    plan: Vec<SaveSpec>,
    cfg: Config,
    files: Vec<Vec<u8>>,
    steps: Manual,
}

impl ManualSingle {
    fn new(plan: Vec<SaveSpec>, steps: Manual) -> ManualSingle {
        let cfg = mem_config();
        let scratch = MemStorage::new();
        let store = mem_store(&cfg, &scratch);
        let files = plan
            .iter()
            .map(|s| {
                let g = s.save(&store).expect("scratch save");
                scratch.read_file(&gen_path(g)).expect("scratch file")
            })
            .collect();
        ManualSingle { plan, cfg, files, steps }
    }
}

impl Scenario for ManualSingle {
    fn saves(&self) -> usize {
        self.plan.len()
    }
    fn start<'a>(&'a self, mem: &MemStorage) -> Box<dyn FnMut(usize) -> Result<u64, String> + 'a> {
        let mem = mem.clone();
        Box::new(move |i| {
            let e = |e: std::io::Error| e.to_string();
            let dir = Path::new(DIR);
            let g = i as u64 + 1;
            mem.create_dir_all(dir).map_err(e)?;
            // The directory's own entry must be durable too, as the library makes it.
            mem.sync_dir(dir.parent().expect("an absolute directory")).map_err(e)?;
            let tmp = dir.join(format!("{APP}.ckpt.tmp.manual.1.{g}"));
            let mut w = mem.create_new(&tmp, 0o600).map_err(e)?;
            let bytes = &self.files[i];
            let (a, b) = bytes.split_at(bytes.len() / 2);
            w.write_all(a).map_err(e)?;
            w.write_all(b).map_err(e)?;
            if self.steps.fsync_file {
                w.sync().map_err(e)?;
            }
            drop(w);
            mem.hard_link(&tmp, &gen_path(g)).map_err(e)?;
            mem.rename(&tmp, &dir.join(format!("{APP}.ckpt"))).map_err(e)?;
            if self.steps.fsync_dir {
                mem.sync_dir(dir).map_err(e)?;
            }
            Ok(g)
        })
    }
    fn check(&self, img: &MemStorage, durable: u64, newest: u64) -> Result<u64, String> {
        check_single(&self.plan, &self.cfg, img, durable, newest)
    }
}

#[test]
fn the_harness_catches_a_protocol_without_fsync() {
    let plan = plan(0x5EED)[..2].to_vec();

    // Positive control: the correct order of steps, written by hand, passes.
    let good = ManualSingle::new(plan.clone(), Manual { fsync_file: true, fsync_dir: true });
    let s = sweep(&good);
    assert!(s.violations.is_empty(), "{}", report("manual correct protocol", &s));

    // No fsync of the file before the rename: once the names are on disk but the data is not
    // (EntriesWithoutData, Torn), the committed name holds a damaged file.
    let no_fsync = ManualSingle::new(plan.clone(), Manual { fsync_file: false, fsync_dir: true });
    let s = sweep(&no_fsync);
    let summary = report("manual protocol without file fsync", &s);
    println!("{summary}");
    for mode in ["EntriesWithoutData", "Torn"] {
        assert!(
            s.violations.iter().any(|v| v.contains(&format!("mode={mode} "))),
            "a missing file fsync must be caught in mode {mode}: {summary}"
        );
    }
    // The damage itself, directly: after the complete sequence, the newest generation's file in the
    // EntriesWithoutData image is rejected by open + verify.
    let mem = MemStorage::new();
    {
        let mut run = no_fsync.start(&mem);
        run(0).expect("save 0");
        run(1).expect("save 1");
    }
    let img = mem.crash_image(CrashMode::EntriesWithoutData);
    let opened = Checkpoint::open_with(&img, &gen_path(2), LoadOptions::new().mmap(false)).and_then(|cp| cp.verify());
    assert!(opened.is_err(), "the unsynced file must not verify in the EntriesWithoutData image");
    // ... while the library's own commit of the same bytes survives the same image.
    let mem = MemStorage::new();
    let store = mem_store(&mem_config(), &mem);
    for s in &plan {
        s.save(&store).expect("library save");
    }
    let img = mem.crash_image(CrashMode::EntriesWithoutData);
    let cp = Checkpoint::open_with(&img, &gen_path(2), LoadOptions::new().mmap(false)).expect("library file opens");
    cp.verify().expect("library file verifies");

    // No fsync of the directory after the rename: after a power cut (DurableOnly) the generation whose
    // commit returned is gone.
    let no_dir_fsync = ManualSingle::new(plan, Manual { fsync_file: true, fsync_dir: false });
    let s = sweep(&no_dir_fsync);
    let summary = report("manual protocol without directory fsync", &s);
    println!("{summary}");
    assert!(
        s.violations.iter().any(|v| v.contains("mode=DurableOnly ")),
        "a missing directory fsync must be caught in mode DurableOnly: {summary}"
    );
}
