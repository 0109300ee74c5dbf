//! Saving with the commit protocol, retention, and restart discovery.
//!
//! # On-disk layout (one checkpoint name, `<base>` = `<job_id>.ckpt` or `<job_id>.<step_id>.ckpt`)
//!
//! ```text
//! <dir>/<base>                      the newest committed checkpoint (another name for the newest <base>.<N>)
//! <dir>/<base>.<N>                  generation N (the last `keep` generations are kept)
//! <dir>/<base>.tmp.<host>.<pid>.<nonce>   a save in progress (removed by a later save if its writer died)
//! <dir>/<base>.tmp.spare            the newest retired generation, kept for its blocks (see below)
//! <dir>/<base>.parts/<N>/rank<R>.ckpt     multi-rank jobs: rank R's part of generation N
//! <dir>/<base>.parts/rank<R>.spare        rank R's newest retired part, kept for its blocks
//! ```
//!
//! # Commit protocol (single file)
//!
//! 1. List the directory, remove stale temporary files of dead writers, and choose generation N (one above
//!    the highest present). Saves in a row reuse the previous save's view of the directory for up to 10 s
//!    (checking only that `<base>.<N>` is still free), so a process's first save and at least one save
//!    every 10 s list it. In a large directory ([`Storage::large_dir`], a shared scratch directory) the
//!    generations are found by name instead (`<base>`'s header gives the newest, `<base>.<N+1>` must be
//!    free), and the directory is listed once per process, off the save's path, for dead writers'
//!    temporary files and generations below a gap.
//! 2. Create `<base>.tmp.…` with `O_CREAT|O_EXCL|O_NOFOLLOW`, stream the sections into it, `fsync` it.
//! 3. `link(tmp, <base>.<N>)`: fails if another process took generation N (exclusion without `flock`,
//!    which Lustre lacks); then `rename(tmp, <base>)`, so `<base>` names the new file atomically.
//! 4. `fsync` the directory. The save is durable from here on.
//! 5. Only now prune generations beyond `keep`.
//!
//! A crash at any instant leaves every earlier committed generation intact; discovery considers `<base>`
//! and every `<base>.<N>`, newest generation first, and takes the first that verifies completely (found
//! by name from `<base>`'s header when that settles the choice, from a listing otherwise).
//!
//! # Space reuse (`CKPT_REUSE_SPACE`, default on)
//!
//! Writing over blocks a file already has is much faster than writing into new ones on many disks (the
//! allocation, and the device's own on thin-provisioned or `discard`-mounted disks; figures in
//! BENCHMARKS.md, "Where the time goes"). So the pruning in step 5 renames the newest retired
//! generation of at least 16 MiB to `<base>.tmp.spare` instead of removing it (a `.tmp.` name: never a
//! checkpoint, never a file of the user's), and the next save takes that file over as its temporary file
//! in step 2: it renames it to `<base>.tmp.…` (which claims it: no other saver can take it any more),
//! checks it, `fsync`s the directory (so no committed name can still refer to it after a power cut),
//! overwrites it from the first byte and cuts it to the new length before its `fsync`. From there the
//! protocol is the same. The spare is overwritten only when nothing else holds it: it must be a regular
//! file of this user with that one name, and Linux must grant a write lease on it, which it does only
//! when no process has the file open or mapped (a reader of a retired generation keeps reading the bytes
//! it opened). Otherwise it is removed and the save writes a new file. Leases see only this node's
//! processes, so spares are kept only on local file systems (ext2-4, XFS, tmpfs, F2FS), never on Lustre,
//! GPFS, `BeeGFS`, NFS and the like. Space: between saves the directory holds `keep` generations plus the
//! spare, which is what it held during a save anyway. Saves to an exact path ([`begin_file`]) keep the
//! file they replace as `<path>.tmp.spare` the same way (a hard link made just before the rename). In
//! multi-rank jobs each rank keeps its own retired part as `<base>.parts/rank<R>.spare` (renamed out of
//! its generation's directory) and writes its next part over it. [`CommitInfo::reused_spare`] says
//! whether a save wrote over a spare.
//!
//! # Multi-rank steps
//!
//! Each rank writes its part to `<base>.parts/<N>/rank<R>.ckpt` (tmp + fsync + rename + fsync of the
//! generation's directory; the directory is never listed by the ranks, which with N ranks would cost N²
//! metadata operations per step). When every rank's part is durable, one rank (normally 0, after a
//! barrier) writes the step's manifest (a checkpoint file of kind `Manifest` naming each part and its
//! identity) through the single-file protocol above, either from the identities the ranks report
//! ([`Store::commit_step_with_parts`], what the MPI helpers do: rank 0 opens no part) or by opening and
//! checking every part ([`Store::commit_step`]). A step exists only once its manifest does. As with
//! single saves, each rank (and rank 0 for the manifests) lists the checkpoint directory at its first step
//! and then at most every 10 s, checking in between only that the generation it proposes is free; a
//! listing `stat`s only the checkpoint's own entries (the directory may be the job's working directory).
//!
//! Retiring a generation: rank 0's commit removes the manifests beyond `keep`. With reported identities,
//! each rank removes its own retired part once told that the step was committed
//! ([`Store::after_step_committed`]) or, failing that, before writing its next part, and a later commit of
//! rank 0 removes the emptied directory (or empties it, when some rank did not). With
//! [`Store::commit_step`], rank 0 removes the retired parts itself. Either way no part of a kept step is
//! removed: a rank removes only parts older than the newest manifest it knows of and outside the newest
//! `keep` manifests, which are the generations whose manifests rank 0 removes (every rank must use the
//! same `keep`).

use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::format::{Encoding, FileKind, Header};
use crate::levels::Level;
use crate::reader::{Checkpoint, LoadOptions};
use crate::step::{check_step, step_arg};
use crate::storage::{DirEntry, FileStorage, Storage, StorageWriter, WriteOptions};
use crate::writer::{Compression, FileBuilder, FileStats, SectionOptions, SectionWriter};

mod commit;
mod levels;
mod manifest;
mod naming;
mod partner;
mod parts;
mod prune;

use commit::Plan;
pub use commit::{CheckpointWriter, begin_file};
pub use manifest::parse_manifest;
use naming::*;
pub use naming::{NameKind, any_base, classify};
pub use partner::{PartCopy, PartReceiver};
pub use parts::PartIdentity;
use parts::*;
use prune::*;

/// Temporary files of writers on other hosts are removed once they have not changed for this long.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// What a successful commit produced.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub struct CommitInfo {
    /// The stable name of the newest checkpoint (`<dir>/<base>`); for a rank's part, the part file.
    pub path: PathBuf,
    /// The generation's own name (`<dir>/<base>.<N>`), or the part file.
    pub generation_path: PathBuf,
    /// The generation number.
    pub generation: u64,
    /// The application step.
    pub app_step: u64,
    /// Size figures.
    pub stats: FileStats,
    /// Seconds from the start of the save to the durable commit.
    pub seconds: f64,
    /// Problems after the commit that did not endanger it (a failed prune, say).
    pub warnings: Vec<String>,
    /// Whether the save wrote over the blocks of a retired checkpoint (the spare: see [`Store`]'s space
    /// reuse) instead of new ones.
    pub reused_spare: bool,
}

/// Saves and finds checkpoints for one configuration. A clone shares the original's state (what it
/// learned of the directories, its generation numbers): the copying thread of the cache level uses one.
#[derive(Clone, Debug)]
pub struct Store {
    config: Config,
    storage: Arc<dyn Storage>,
    shared: Arc<Shared>,
    /// The run identity as recorded in every file's header (encoded once, not per save).
    identity_metadata: Vec<u8>,
    /// The cache level's directory for this checkpoint directory (see [`crate::levels`]).
    cache_dir: Option<PathBuf>,
}

/// A save reuses the directory view the previous save left, instead of listing the directory again, for
/// at most this long after the listing it came from. Listing costs a directory scan and a `stat` per entry
/// (on a parallel file system, per rank); small checkpoints saved back to back pay it on every save.
const LISTING_REUSE: Duration = Duration::from_secs(10);

/// What one save learned about the directory, for the next save of the same name: the generations that
/// remain after its prune. Only this process's own saves update it; anything else that writes generations
/// of the same name is caught before the next save claims its number (a `stat` of that name), and by the
/// hard link that claims it.
#[derive(Clone, Debug)]
struct Listing {
    dir: PathBuf,
    base: String,
    /// Generations that are regular files (what pruning may remove), with their lengths in bytes.
    generations: Vec<(u64, u64)>,
    /// The highest generation number seen under any kind of entry.
    highest: u64,
    /// Whether a parts directory exists.
    parts: bool,
    /// Whether `<base>.tmp.spare` is there (seen by the listing, or left by this process's last save).
    spare: bool,
    /// When the directory was last really listed.
    listed_at: Instant,
}

/// What a store's writers report back when they commit.
#[derive(Debug)]
struct Shared {
    /// Highest generation this process has committed.
    last_generation: AtomicU64,
    /// Measured write bandwidth in bytes/s (bits of an f64), for `Compression::Auto`.
    write_bandwidth: AtomicU64,
    /// The directory as the last successful save left it.
    listing: std::sync::Mutex<Option<Listing>>,
    /// A parts root (`<dir>/<base>.parts`) whose entry in its directory this process has made durable.
    synced_parts_root: std::sync::Mutex<Option<PathBuf>>,
    /// Multi-rank: this rank's parts that it wrote and has not removed yet. Each rank removes its own old
    /// parts, so that retiring a generation costs every rank one `unlink` instead of rank 0 one per rank.
    own_parts: std::sync::Mutex<Vec<OwnPart>>,
    /// Multi-rank: whether this rank's spare (`<base>.parts/rank<R>.spare`, a retired part kept for its
    /// blocks) is there: `None` until this process has looked.
    part_spare: std::sync::Mutex<Option<bool>>,
    /// Multi-rank: what this rank knows of the checkpoint directory's manifests.
    parts_view: std::sync::Mutex<Option<PartsView>>,
    /// Generations restart discovery found damaged, per (directory, name): they never count toward
    /// `keep`, and the next commit there renames them aside (`<base>.<N>.damaged`).
    damaged: std::sync::Mutex<Vec<(PathBuf, String, u64)>>,
    /// What the last restart discovery had to tell (see [`Store::take_restore_notices`]).
    restore_notices: std::sync::Mutex<Vec<String>>,
    /// Whether the cache directory was checked (see `Store::check_cache_dir`).
    cache_checked: std::sync::atomic::AtomicBool,
    /// What the listings of large directories made off the saves' path found (see
    /// [`Store::sweep_once`]), for the next save there to retire what finding by name missed.
    swept: std::sync::Mutex<Vec<Listing>>,
}

/// The (directory, name) pairs whose directory this process has listed, or is listing, for dead writers'
/// temporary files after finding its generations by name (see [`Store::sweep_once`]).
static SWEPT: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn listing(&self) -> std::sync::MutexGuard<'_, Option<Listing>> {
        lock(&self.listing)
    }

    /// The cached view of `dir` for `base`, when it is recent enough to reuse.
    fn reusable_listing(&self, dir: &Path, base: &str) -> Option<Listing> {
        self.listing()
            .as_ref()
            .filter(|l| l.dir == dir && l.base == base && l.listed_at.elapsed() < LISTING_REUSE)
            .cloned()
    }

    /// Records a commit: its generation, and the write speed `(bytes, seconds)` it measured.
    fn note_commit(&self, generation: u64, (bytes, secs): (u64, f64)) {
        self.last_generation.fetch_max(generation, Ordering::SeqCst);
        if secs > 0.0 && bytes >= (8 << 20) {
            let measured = bytes as f64 / secs;
            let old = f64::from_bits(self.write_bandwidth.load(Ordering::Relaxed));
            self.write_bandwidth.store((0.5 * old + 0.5 * measured).to_bits(), Ordering::Relaxed);
        }
    }
}

/// The default write bandwidth assumed by `Compression::Auto` before one save has been measured.
const DEFAULT_WRITE_BANDWIDTH: f64 = 1.0e9;

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl Store {
    /// A store on the real file system.
    pub fn new(config: Config) -> Store {
        Store::with_storage(config, Arc::new(FileStorage))
    }

    /// A store for `app_name` configured from the environment (see [`Config::from_env`]).
    ///
    /// # Errors
    ///
    /// As [`Config::from_env`]: [`ErrorKind::InvalidArgument`] naming the malformed variable and its value.
    pub fn from_env(app_name: Option<&str>) -> Result<Store> {
        Ok(Store::new(Config::from_env(app_name)?))
    }

    /// A store over any storage (the workspace's crash tests use an in-memory one).
    pub fn with_storage(config: Config, storage: Arc<dyn Storage>) -> Store {
        let shared = Shared {
            last_generation: AtomicU64::new(0),
            write_bandwidth: AtomicU64::new(DEFAULT_WRITE_BANDWIDTH.to_bits()),
            listing: std::sync::Mutex::new(None),
            synced_parts_root: std::sync::Mutex::new(None),
            part_spare: std::sync::Mutex::new(None),
            own_parts: std::sync::Mutex::new(Vec::new()),
            parts_view: std::sync::Mutex::new(None),
            damaged: std::sync::Mutex::new(Vec::new()),
            restore_notices: std::sync::Mutex::new(Vec::new()),
            cache_checked: std::sync::atomic::AtomicBool::new(false),
            swept: std::sync::Mutex::new(Vec::new()),
        };
        let identity_metadata = config.run_identity().to_metadata();
        let cache_dir = config.cache.as_ref().map(|c| c.dir_for(&config.checkpoint_dir));
        Store { config, storage, shared: Arc::new(shared), identity_metadata, cache_dir }
    }

    /// What the last restart discovery told stderr (a checkpoint taken from another job, candidates
    /// skipped and why), for a face's own log and API; emptied by the call.
    pub fn take_restore_notices(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.shared.restore_notices))
    }

    /// Like [`Store::take_restore_notices`], leaving them in place (a [`crate::Checkpointer`] logs them and
    /// its face can still read them).
    pub fn restore_notices(&self) -> Vec<String> {
        lock(&self.shared.restore_notices).clone()
    }

    pub(crate) fn push_restore_notices(&self, notices: &[String]) {
        *lock(&self.shared.restore_notices) = notices.to_vec();
    }

    /// Marks generation `generation` of this checkpoint name in the restart directory damaged, as discovery
    /// does for one that fails verification: for a face that found a generation unusable after discovery
    /// chose it (Python: a pickle stream that does not load). It no longer counts toward `keep`, and the
    /// next durable save in that directory renames it to `<base>.<N>.damaged`.
    pub fn mark_damaged(&self, generation: u64) {
        let dir = self.config.restart_dir.clone();
        self.note_damaged(&dir, &[generation]);
    }

    /// Remembers generations of this run's checkpoint name that discovery found damaged in `dir`.
    pub(crate) fn note_damaged(&self, dir: &Path, generations: &[u64]) {
        let base = self.config.base_name();
        let mut d = lock(&self.shared.damaged);
        for &g in generations {
            if !d.iter().any(|(dd, b, gg)| dd == dir && *b == base && *gg == g) {
                d.push((dir.to_path_buf(), base.clone(), g));
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The load options this store uses.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions { mmap: self.config.mmap }
    }

    /// Starts a checkpoint of the application's step `app_step` in the checkpoint directory.
    ///
    /// With more than one rank this writes this rank's part of the step (see [`Store::begin_part`]) using
    /// the next generation number as this process sees it; rank 0 then needs [`Store::commit_step`]. That
    /// number agrees across ranks only when every rank takes part in every step: collective callers should
    /// agree on [`Store::next_generation`] (a max-reduction) and call [`Store::begin_part`].
    ///
    /// The step is any integer type (`u64`, `usize`, `i32`, ...) with a value in `0..=`[`MAX_STEP`](crate::MAX_STEP).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for a negative step or one above [`MAX_STEP`](crate::MAX_STEP), naming
    /// it; the directory cannot be listed or created, or the temporary file cannot be created
    /// ([`ErrorKind::Io`]); the checkpoints under this name belong to another run ([`ErrorKind::Conflict`]).
    pub fn begin(&self, app_step: impl TryInto<u64> + Copy + Display) -> Result<CheckpointWriter> {
        self.begin_in(self.save_dir(), step_arg(app_step)?)
    }

    /// Like [`Store::begin`], into another directory (`ImageDir` of Slurm's removed checkpoint interface).
    ///
    /// # Errors
    ///
    /// As [`Store::begin`]: [`ErrorKind::InvalidArgument`] for a step above [`MAX_STEP`](crate::MAX_STEP),
    /// [`ErrorKind::Io`] and [`ErrorKind::Conflict`] for `dir`.
    pub fn begin_in(&self, dir: &Path, app_step: u64) -> Result<CheckpointWriter> {
        if self.config.nranks > 1 {
            let generation =
                if dir == self.save_dir() { self.next_generation()? } else { self.next_generation_in(dir)? };
            return self.begin_part_in(dir, generation, app_step);
        }
        let base = self.config.base_name();
        let mut last = self.shared.last_generation.load(Ordering::SeqCst);
        let mut shared_warning = None;
        if self.level_of(dir) == Level::Cache {
            self.check_cache_dir(dir)?;
        }
        if last == 0 && self.level_of(dir) == Level::Cache {
            let (highest, warning) = self.shared_highest_before_first_save()?;
            last = highest;
            shared_warning = warning;
        }
        if let Some(mut listing) = self.shared.reusable_listing(dir, &base) {
            let generation = listing.highest.max(last) + 1;
            // The name about to be claimed must still be free; if anything else wrote here, list again.
            if let Ok(false) = self.storage.exists(&dir.join(format!("{base}.{generation}"))) {
                self.merge_swept(&mut listing);
                let header = self.header(FileKind::Data, generation, app_step);
                return self.start(dir, &base, header, Plan::Single { listing });
            }
        }
        // A listing (stale temporary files, the generation number, and what pruning will see), or in a
        // large directory the same found by name.
        let listing = self.fresh_listing(dir, &base)?;
        let first = self.shared.last_generation.load(Ordering::SeqCst) == 0;
        let warning = if first { self.check_name_is_ours(dir, &listing)? } else { None };
        let generation = listing.highest.max(last) + 1;
        let header = self.header(FileKind::Data, generation, app_step);
        let mut writer = self.start(dir, &base, header, Plan::Single { listing })?;
        writer.warnings.extend(warning);
        writer.warnings.extend(shared_warning);
        Ok(writer)
    }

    /// Before this process's first save under its name in `dir`: the newest generation there must be this
    /// run's (the rules of restart, [`crate::identity`]), or the save's retention would remove another
    /// run's checkpoints (a sweep run point after point outside Slurm, a job id reused by another
    /// application). `CKPT_RESUME_FROM` naming a job says the files may be taken over. One header read.
    /// A header that cannot be read for an I/O error gives a warning (reported with the commit).
    fn check_name_is_ours(&self, dir: &Path, listing: &Listing) -> Result<Option<String>> {
        self.check_name_is_of(dir, listing, &self.config.run_identity())
    }

    /// [`Store::check_name_is_ours`] for the run `me` (a copy to the checkpoint directory made by another
    /// process, `ckpt flush`, compares the run that wrote the file, not itself).
    fn check_name_is_of(
        &self,
        dir: &Path,
        listing: &Listing,
        me: &crate::identity::RunIdentity,
    ) -> Result<Option<String>> {
        if matches!(self.config.resume_from, crate::identity::ResumeFrom::Job(_) | crate::identity::ResumeFrom::Any) {
            return Ok(None);
        }
        let Some(&(newest, _)) = listing.generations.iter().max_by_key(|g| g.0) else {
            return Ok(None);
        };
        let path = dir.join(format!("{}.{newest}", listing.base));
        let header = match crate::reader::read_header(&*self.storage, &path) {
            Ok(h) => h,
            Err(e) if e.kind() == ErrorKind::Io => {
                return Ok(Some(format!("could not read {} to check which run it belongs to: {e}", path.display())));
            }
            // Gone meanwhile, or damaged: restart judges it; nothing to compare here.
            Err(_) => return Ok(None),
        };
        let Some(Ok(id)) = crate::identity::RunIdentity::of_header(&header) else {
            return Ok(None);
        };
        let why = me.own_name_conflicts(&id, self.config.job_id.is_none());
        if why.is_empty() {
            return Ok(None);
        }
        Err(crate::discovery::foreign_run_error(&self.config, dir, &[(path, why)]))
    }

    /// The generation number the next save will use: one above the highest committed in `dir` and above
    /// anything this process wrote. Multi-rank callers agree on it (e.g. an MPI max-reduction) and pass
    /// it to [`Store::begin_part`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the checkpoint directory exists but cannot be listed (a missing one is generation 1).
    pub fn next_generation(&self) -> Result<u64> {
        let next = self.next_generation_in(self.save_dir())?;
        if self.level_of(self.save_dir()) == Level::Cache && self.shared.last_generation.load(Ordering::SeqCst) == 0 {
            // Before this process's first step: continue the checkpoint directory's numbering too (a job
            // restarted on other nodes, whose caches are empty).
            let (highest, _) = self.shared_highest_before_first_save()?;
            return Ok(next.max(highest + 1));
        }
        Ok(next)
    }

    fn next_generation_in(&self, dir: &Path) -> Result<u64> {
        let base = self.config.base_name();
        let last = self.shared.last_generation.load(Ordering::SeqCst);
        if let Some(view) = self.reusable_parts_view(dir) {
            // A recent view: only the name about to be proposed must still be free.
            let generation = view.highest.max(last) + 1;
            if let Ok(false) = self.storage.exists(&dir.join(format!("{base}.{generation}"))) {
                return Ok(generation);
            }
        }
        let names = match self.storage.list_names(dir) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("list directory", e).with_path(dir)),
        };
        let highest = names
            .iter()
            .filter_map(|n| n.to_str())
            .filter_map(|n| match classify(&base, n) {
                Some(NameKind::Generation(g)) => Some(g),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        Ok(highest.max(self.shared.last_generation.load(Ordering::SeqCst)) + 1)
    }

    fn header(&self, kind: FileKind, generation: u64, app_step: u64) -> Header {
        let c = &self.config;
        Header {
            kind,
            generation,
            app_step,
            created_unix_ns: now_ns(),
            step_id: c.step_id,
            rank: if kind == FileKind::Manifest { 0 } else { c.rank },
            nranks: c.nranks,
            writer_version: crate::writer_version(),
            job_id: c.job_key().to_string(),
            app_name: c.app_name.clone(),
            host: c.host.clone(),
            metadata: vec![(crate::identity::IDENTITY_KEY.to_string(), self.identity_metadata.clone())],
        }
    }

    /// Lists the entries of `dir` named after the checkpoint name `base` (`<base>…`; the others are not
    /// looked at), creating `dir` (and making its entry durable) when it does not exist yet.
    fn scan(&self, dir: &Path, base: &str) -> Result<Vec<DirEntry>> {
        let ours = |name: &std::ffi::OsStr| name.as_encoded_bytes().starts_with(base.as_bytes());
        match self.storage.read_dir_matching(dir, &ours) {
            Ok(entries) => Ok(entries),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.storage.create_dir_all(dir).map_err(|e| Error::io("create directory", e).with_path(dir))?;
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    self.storage.sync_dir(parent).map_err(|e| Error::io("fsync directory", e).with_path(parent))?;
                }
                Ok(Vec::new())
            }
            Err(e) => Err(Error::io("open checkpoint directory", e).with_path(dir)),
        }
    }

    /// The view of `dir` a save of `base` starts from when it has none to reuse: in a large directory
    /// ([`Storage::large_dir`]) found by name ([`Store::generations_by_name`]), the directory being listed
    /// once per process off the save's path for what only a listing finds ([`Store::sweep_once`]);
    /// otherwise, and when finding by name cannot settle it, a listing ([`Store::list_generations`]).
    fn fresh_listing(&self, dir: &Path, base: &str) -> Result<Listing> {
        if let Some(mut listing) = self.generations_by_name(dir, base) {
            self.sweep_once(dir, base);
            self.merge_swept(&mut listing);
            return Ok(listing);
        }
        self.list_generations(dir, base)
    }

    /// What a listing of `dir` would tell a save of `base`, found by name: `<base>`'s header gives the
    /// newest committed generation N; `<base>.<N+1>` must be free; the generations are `<base>.<N>`,
    /// `<base>.<N-1>`, ... down to the first missing number (older ones beyond such a gap, left by a
    /// generation renamed aside as damaged or copied from the cache every k-th step, come from the
    /// process's one listing, [`Store::sweep_once`], at a later save); the spare and the parts directory
    /// by their names. `None` (list instead) when `dir` is not large, `<base>` is missing or unreadable, a
    /// newer generation is there, or a look-up fails.
    fn generations_by_name(&self, dir: &Path, base: &str) -> Option<Listing> {
        if !self.storage.large_dir(dir) {
            return None;
        }
        let newest = crate::reader::read_header(&*self.storage, &dir.join(base)).ok()?.generation;
        let entry = |name: String| self.storage.entry(&dir.join(name)).ok();
        if newest == 0 || newest == u64::MAX || entry(format!("{base}.{}", newest + 1))?.is_some() {
            return None;
        }
        let mut generations = Vec::new();
        let mut g = newest;
        while g > 0 {
            match entry(format!("{base}.{g}"))? {
                Some(e) if e.is_file => generations.push((g, e.len)),
                Some(_) => {}
                None => break,
            }
            g -= 1;
        }
        let parts = entry(format!("{base}.parts"))?.is_some();
        let spare = entry(format!("{base}.tmp.spare"))?.is_some_and(|e| e.is_file);
        Some(Listing {
            dir: dir.to_path_buf(),
            base: base.to_string(),
            generations,
            highest: newest,
            parts,
            spare,
            listed_at: Instant::now(),
        })
    }

    /// Once per process for `base` in `dir`, after a save found its generations by name: lists `dir` on a
    /// thread (on the caller's when I/O threads are disabled, as in the shim), removes dead writers'
    /// temporary files as every listing does, and leaves the generations it saw for the next save's
    /// retention ([`Store::merge_swept`]). Removing another process's stale temporary file is safe at any
    /// time (the rules of [`Store::remove_stale_tmp`]), so this needs no coordination with the saves.
    fn sweep_once(&self, dir: &Path, base: &str) {
        {
            let mut swept = lock(&SWEPT);
            if swept.iter().any(|(d, b)| d == dir && b == base) {
                return;
            }
            swept.push((dir.to_path_buf(), base.to_string()));
        }
        let store = self.clone();
        let (dir, base) = (dir.to_path_buf(), base.to_string());
        let sweep = move || {
            let ours = |name: &std::ffi::OsStr| name.as_encoded_bytes().starts_with(base.as_bytes());
            let Ok(entries) = store.storage.read_dir_matching(&dir, &ours) else {
                lock(&SWEPT).retain(|(d, b)| !(*d == dir && *b == base)); // a later save tries again
                return;
            };
            store.remove_stale_tmp(&dir, &base, &entries);
            lock(&store.shared.swept).push(listing_of(&dir, &base, &entries));
        };
        if crate::storage::io_threads_allowed() {
            let sweep = std::sync::Arc::new(std::sync::Mutex::new(Some(sweep)));
            let on_thread = sweep.clone();
            let spawned = std::thread::Builder::new().name("ckpt-sweep".into()).spawn(move || {
                if let Some(f) = lock(&on_thread).take() {
                    f();
                }
            });
            if spawned.is_ok() {
                return;
            }
            if let Some(f) = lock(&sweep).take() {
                f();
            }
        } else {
            sweep();
        }
    }

    /// Adds to `listing` the generations a sweep of its directory ([`Store::sweep_once`]) saw below every
    /// generation the listing knows: the ones finding by name cannot reach, for retention to remove. A
    /// generation removed since is harmless (retention finds it gone), and never counts toward `keep`:
    /// it is older than the generations that made it retire.
    fn merge_swept(&self, listing: &mut Listing) {
        let mut swept = lock(&self.shared.swept);
        let Some(i) = swept.iter().position(|l| l.dir == listing.dir && l.base == listing.base) else {
            return;
        };
        let seen = swept.swap_remove(i);
        drop(swept);
        let lowest = listing.generations.iter().map(|g| g.0).min().unwrap_or(listing.highest.saturating_add(1));
        listing.generations.extend(seen.generations.iter().filter(|g| g.0 < lowest));
        listing.highest = listing.highest.max(seen.highest);
        listing.parts |= seen.parts;
    }

    /// Lists `dir` afresh for a save of `base`: removes dead writers' temporary files and returns the view
    /// that numbering and pruning use.
    fn list_generations(&self, dir: &Path, base: &str) -> Result<Listing> {
        let entries = self.scan(dir, base)?;
        self.remove_stale_tmp(dir, base, &entries);
        Ok(listing_of(dir, base, &entries))
    }

    fn remove_stale_tmp(&self, dir: &Path, base: &str, entries: &[DirEntry]) {
        let me = &self.config.host;
        let now = SystemTime::now();
        for e in entries {
            let Some(name) = e.name.to_str() else { continue };
            let Some(NameKind::Temporary { host, pid }) = classify(base, name) else {
                continue;
            };
            let stale = if &host == me {
                !crate::sys::process_exists(pid)
            } else {
                e.modified.is_some_and(|m| now.duration_since(m).unwrap_or_default() > STALE_TMP_AGE)
            };
            if stale {
                let _ = self.storage.remove_file(&dir.join(name));
            }
        }
    }

    fn start(&self, dir: &Path, base: &str, header: Header, mut plan: Plan) -> Result<CheckpointWriter> {
        check_step(header.app_step)?;
        let tmp_name = || dir.join(format!("{base}.tmp.{}.{}.{:x}", self.config.host, std::process::id(), nonce()));
        let mut tmp = tmp_name();
        let mut warnings = Vec::new();
        let spare_min_len = self.spare_min_len(dir);
        let (file, reused_spare) = if let Some(file) =
            self.take_spare(dir, &mut plan, &tmp, spare_min_len, self.write_options(), &mut warnings)
        {
            (file, true)
        } else {
            // A fresh name: a takeover that failed half-way may have left the first one behind.
            tmp = tmp_name();
            let file = self
                .storage
                .create_new_with(&tmp, self.write_options())
                .map_err(|e| Error::io("create temporary file", e).with_path(&tmp))?;
            (file, false)
        };
        let bw = f64::from_bits(self.shared.write_bandwidth.load(Ordering::Relaxed));
        Ok(CheckpointWriter {
            builder: Some({
                let mut b = FileBuilder::new(file, header, bw);
                b.compression_threads = self.config.compression_threads;
                b
            }),
            storage: self.storage.clone(),
            tmp,
            plan,
            keep: self.keep_in(dir),
            default_compression: self.config.compression,
            started: Instant::now(),
            done: false,
            last_generation: None,
            shared: self.shared.clone(),
            warnings,
            ranks_prune_own_parts: false,
            spare_min_len,
            reused_spare,
            device_time: None,
            remember_listing: true,
        })
    }

    /// How this store's files are written (the configuration's settings for the storage).
    fn write_options(&self) -> WriteOptions {
        WriteOptions::new(self.config.file_mode).direct_io(self.config.direct_io)
    }

    /// The smallest retired checkpoint in `dir` kept as a spare, `None` when saves there do not reuse
    /// space (turned off, a file system where the storage cannot tell who has a file open, or files this
    /// process may not write once created).
    ///
    /// The cache level keeps one too: a save there then writes over pages the cache (usually memory)
    /// already holds instead of allocating a checkpoint's worth of new ones, about 3x faster here
    /// (BENCHMARKS.md, "Levels and asynchronous saves"), at the price of holding the spare between saves
    /// (`keep + 1` checkpoints, as during a save). `CKPT_REUSE_SPACE=0` turns it off with the rest. A
    /// cached generation the copying thread still has open is never overwritten (the lease).
    fn spare_min_len(&self, dir: &Path) -> Option<u64> {
        let c = &self.config;
        let reuse = self.storage.spare_reuse().filter(|_| c.reuse_space && c.file_mode & 0o200 != 0)?;
        reuse.spare_min_len(dir)
    }

    /// Takes over the spare that `plan` saw (`<base>.tmp.spare`) as the temporary file `tmp`, to overwrite
    /// its blocks; `None` when there is none, or it may not be overwritten (then it is gone), or saves do
    /// not reuse space (then it is removed). The plan no longer counts on a spare afterwards. A failure
    /// only costs the reuse (the save creates a new file) and is reported as a warning.
    fn take_spare(
        &self,
        dir: &Path,
        plan: &mut Plan,
        tmp: &Path,
        spare_min_len: Option<u64>,
        opts: WriteOptions,
        warnings: &mut Vec<String>,
    ) -> Option<Box<dyn StorageWriter>> {
        let (spare, seen) = match plan {
            Plan::Single { listing } => (spare_path(dir, &listing.base), std::mem::take(&mut listing.spare)),
            Plan::File { name, spare, .. } => (spare_path(dir, name), std::mem::take(spare)),
            Plan::Part { dir: part_dir, .. } => {
                let root = part_dir.parent().unwrap_or(Path::new("."));
                let known = lock(&self.shared.part_spare).replace(false);
                (part_spare_path(root, self.config.rank), known != Some(false))
            }
        };
        if !seen {
            return None;
        }
        let reuse = self.storage.spare_reuse().filter(|_| spare_min_len.is_some());
        let Some(reuse) = reuse else {
            let _ = self.storage.remove_file(&spare);
            return None;
        };
        let file = match reuse.reuse_spare(&spare, tmp, opts) {
            Ok(file) => file?,
            Err(e) => {
                // The spare stays where it is (the next retired generation replaces it).
                warnings.push(format!("{}: could not reuse the spare, writing a new file: {e}", spare.display()));
                return None;
            }
        };
        // The spare's earlier name (a retired generation's, renamed at the previous commit) may not be
        // durable yet: after a power cut it would name a file half overwritten. Overwrite only once the
        // directory says `tmp`. (Not for a rank's part: see `retire_part_as_spare`.)
        if matches!(plan, Plan::Part { .. }) {
            return Some(file);
        }
        if let Err(e) = self.storage.sync_dir(dir) {
            drop(file);
            let _ = self.storage.remove_file(tmp);
            warnings.push(format!("{}: could not reuse the spare, writing a new file: {e}", dir.display()));
            return None;
        }
        Some(file)
    }

    /// Saves one serde value as a whole checkpoint (section `state`, see
    /// [`CheckpointWriter::add_serde`]).
    ///
    /// # Errors
    ///
    /// As [`Store::begin`], [`CheckpointWriter::add_serde`] and [`CheckpointWriter::commit`].
    pub fn save_serde<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        app_step: impl TryInto<u64> + Copy + Display,
        value: &T,
    ) -> Result<CommitInfo> {
        let mut w = self.begin(app_step)?;
        w.add_serde("state", value)?;
        w.commit()
    }

    /// [`crate::Checkpointer::checkpoint`] without triggers: begins a checkpoint of step `app_step`, lets
    /// `write` add the sections and commits it (a failing `write` leaves no trace: the temporary file is
    /// removed). With several ranks this writes this rank's part; rank 0 then waits for every part, commits
    /// the step (returning the manifest's figures) and removes its own retired parts
    /// ([`Store::after_step_committed`]).
    ///
    /// # Errors
    ///
    /// As [`Store::begin`], then whatever `write` returns (the temporary file is removed), then as
    /// [`CheckpointWriter::commit`]; on rank 0 of several, as [`Store::commit_step`].
    pub fn checkpoint(
        &self,
        app_step: impl TryInto<u64> + Copy + Display,
        write: impl FnOnce(&mut CheckpointWriter) -> Result<()>,
    ) -> Result<CommitInfo> {
        let app_step = step_arg(app_step)?;
        let mut w = self.begin(app_step)?;
        write(&mut w)?;
        let info = w.commit()?;
        if self.config.nranks <= 1 || self.config.rank != 0 {
            return Ok(info);
        }
        let mut step = self.commit_step(info.generation, app_step)?;
        step.warnings.extend(self.after_step_committed(info.generation));
        Ok(step)
    }
}

fn listing_of(dir: &Path, base: &str, entries: &[DirEntry]) -> Listing {
    let generation = |e: &DirEntry| match e.name.to_str().and_then(|n| classify(base, n)) {
        Some(NameKind::Generation(g)) => Some(g),
        _ => None,
    };
    let generations = entries.iter().filter(|e| e.is_file).filter_map(|e| Some((generation(e)?, e.len))).collect();
    let highest = entries.iter().filter_map(generation).max().unwrap_or(0);
    let parts_name = format!("{base}.parts");
    let parts = entries.iter().any(|e| e.name.to_str() == Some(parts_name.as_str()));
    let spare = has_spare(base, entries);
    Listing {
        dir: dir.to_path_buf(),
        base: base.to_string(),
        generations,
        highest,
        parts,
        spare,
        listed_at: Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole write, commit, prune and restore path on the in-memory storage (runs under Miri:
    /// `bash ckpt-core/miri.sh`).
    #[test]
    fn save_prune_and_restore_in_memory() {
        let storage = Arc::new(crate::storage::MemStorage::new());
        let mut cfg = Config::new("mem", "/ckpt").unwrap();
        cfg.keep = 2;
        cfg.mmap = false;
        let store = Store::with_storage(cfg, storage.clone());
        for step in 1..=3i64 {
            let mut w = store.begin(step).unwrap();
            let data: Vec<u8> = (0..5000u32).map(|i| (i64::from(i) * step) as u8).collect();
            w.add_bytes("raw", &data).unwrap();
            w.add_section_with("shuffled", &data, SectionOptions::new().shuffle(8)).unwrap();
            w.add_serde("meta", &(step, "x".to_string())).unwrap();
            let info = w.commit().unwrap();
            assert_eq!(info.generation, step as u64);
        }
        let r = store.restore().unwrap().expect("a checkpoint");
        assert_eq!(r.app_step, 3);
        let expected: Vec<u8> = (0..5000u32).map(|i| (i64::from(i) * 3) as u8).collect();
        assert_eq!(&r.checkpoint.read("raw").unwrap()[..], &expected[..]);
        assert_eq!(&r.checkpoint.read("shuffled").unwrap()[..], &expected[..]);
        assert_eq!(r.checkpoint.read_serde::<(i64, String)>("meta").unwrap(), (3, "x".to_string()));
        assert_eq!(store.valid_generations().unwrap(), vec![3, 2], "two generations kept, the oldest pruned");
    }

    /// Saves in a row list the directory once; a generation that appears from elsewhere makes the next
    /// save list again (no conflict), and pruning from the reused view keeps exactly `keep` generations.
    #[test]
    fn back_to_back_saves_reuse_the_listing_and_notice_foreign_generations() {
        use crate::storage::{FaultStorage, MemStorage, Op};
        let storage = Arc::new(FaultStorage::new(MemStorage::new(), u64::MAX, libc::EIO));
        let mut cfg = Config::new("mem", "/ckpt").unwrap();
        cfg.keep = 2;
        cfg.mmap = false;
        let store = Store::with_storage(cfg, storage.clone());
        let listings = || storage.ops().iter().filter(|op| **op == Op::ReadDir).count();
        for step in 1..=5i64 {
            assert_eq!(store.save_serde(step, &step).unwrap().generation, step as u64);
        }
        assert_eq!(listings(), 1, "one listing for five saves in a row");
        assert_eq!(store.valid_generations().unwrap(), vec![5, 4]);
        let listed = listings();
        // Another writer's generation 6 (a copy of 5) appears behind the store's back.
        let five = storage.inner().read_file(Path::new("/ckpt/mem.ckpt.5")).unwrap();
        storage.inner().write_file(Path::new("/ckpt/mem.ckpt.6"), &five).unwrap();
        let info = store.save_serde(7, &7i64).unwrap();
        assert_eq!(info.generation, 7, "the foreign generation's number is not claimed twice");
        assert_eq!(listings(), listed + 1, "the foreign name made the save list the directory again");
        let generation_files = || {
            let mut names: Vec<String> = storage
                .inner()
                .list_files()
                .iter()
                .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
                .filter(|n| n.starts_with("mem.ckpt."))
                .collect();
            names.sort();
            names
        };
        // The newest retired generation is the spare the next save overwrites.
        assert_eq!(
            generation_files(),
            ["mem.ckpt.6", "mem.ckpt.7", "mem.ckpt.tmp.spare"],
            "pruned from the fresh listing"
        );
        // A failed save forgets the view: the next one lists again.
        let before = listings();
        let mut w = store.begin(8).unwrap();
        w.add_serde("state", &8i64).unwrap();
        storage.inner().write_file(Path::new("/ckpt/mem.ckpt.8"), &five).unwrap();
        assert_eq!(w.commit().unwrap_err().kind(), ErrorKind::Conflict);
        store.save_serde(9, &9i64).unwrap();
        assert_eq!(listings(), before + 1);
    }
}
