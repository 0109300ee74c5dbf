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
//!    every 10 s list it.
//! 2. Create `<base>.tmp.…` with `O_CREAT|O_EXCL|O_NOFOLLOW`, stream the sections into it, `fsync` it.
//! 3. `link(tmp, <base>.<N>)`: fails if another process took generation N (exclusion without `flock`,
//!    which Lustre lacks); then `rename(tmp, <base>)`, so `<base>` names the new file atomically.
//! 4. `fsync` the directory. The save is durable from here on.
//! 5. Only now prune generations beyond `keep`.
//!
//! A crash at any instant leaves every earlier committed generation intact; discovery considers `<base>`
//! and every `<base>.<N>`, newest generation first, and takes the first that verifies completely.
//!
//! # Space reuse (`CKPT_REUSE_SPACE`, default on)
//!
//! Writing over blocks a file already has is much faster than writing into new ones on many disks (on
//! this project's virtual disks 1.9-3.0 GB/s against 1.2-1.7 GB/s: the allocation, and the device's own
//! on thin-provisioned or `discard`-mounted disks). So the pruning in step 5 renames the newest retired
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
//! GPFS, BeeGFS, NFS and the like. Space: between saves the directory holds `keep` generations plus the
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

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::format::{Encoding, FileKind, Header};
use crate::reader::{Checkpoint, LoadOptions};
use crate::storage::{DirEntry, FileStorage, Storage, StorageWriter, WriteOptions};
use crate::writer::{Compression, FileBuilder, FileStats, SectionOptions, SectionWriter};

/// Temporary files of writers on other hosts are removed once they have not changed for this long.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);
/// Name of the manifest's section listing the parts.
const MANIFEST_SECTION: &str = "ckpt.parts";
/// Bytes per rank in the manifest section.
const MANIFEST_ENTRY_LEN: usize = 24;

/// What a successful commit produced.
#[derive(Clone, Debug, PartialEq)]
pub struct CommitInfo {
    /// The stable name of the newest checkpoint (`<dir>/<base>`); for a rank's part, the part file.
    pub path: PathBuf,
    /// The generation's own name (`<dir>/<base>.<N>`), or the part file.
    pub generation_path: PathBuf,
    /// The generation number.
    pub generation: u64,
    /// The application step.
    pub app_step: i64,
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

/// Saves and finds checkpoints for one configuration.
#[derive(Debug)]
pub struct Store {
    config: Config,
    storage: Arc<dyn Storage>,
    shared: Arc<Shared>,
    /// The run identity as recorded in every file's header (encoded once, not per save).
    identity_metadata: Vec<u8>,
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
}

/// Multi-rank: the manifests of a checkpoint directory as a rank's last listing saw them, plus the steps
/// it was told were committed since. A rank lists the directory at its first part and then at most every
/// [`LISTING_REUSE`]: the directory may be the job's working directory with thousands of files, and every
/// rank lists it (on a parallel file system, N readdirs of it per step).
#[derive(Clone, Debug)]
struct PartsView {
    dir: PathBuf,
    /// Generations whose manifests exist (at most the newest `keep` once steps are reported).
    manifests: Vec<u64>,
    /// The highest generation number seen under any kind of entry.
    highest: u64,
    listed_at: Instant,
}

/// A part this rank wrote: `<dir>/<base>.parts/<generation>/rank<R>.ckpt`.
#[derive(Clone, Debug)]
struct OwnPart {
    dir: PathBuf,
    path: PathBuf,
    identity: PartIdentity,
}

/// What the manifest records of a rank's durable part, as the rank that wrote it knows it: MPI helpers
/// gather these to rank 0 ([`Store::part_identity`], then [`Store::commit_step_with_parts`]) so that rank
/// 0 commits a step without opening one file per rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartIdentity {
    /// The part's generation.
    pub generation: u64,
    /// The application step it holds.
    pub app_step: i64,
    /// Its length in bytes.
    pub file_len: u64,
    /// The rank that wrote it.
    pub rank: u32,
    /// The number of ranks it was written for.
    pub nranks: u32,
    /// The CRC32 of its header.
    pub header_crc32: u32,
    /// The CRC32 of its section table.
    pub table_crc32: u32,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

fn nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 performs only the existence and permission check; it sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A parsed file name within a checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// `<base>`: the newest checkpoint's stable name.
    Current,
    /// `<base>.<N>`: generation N.
    Generation(u64),
    /// `<base>.tmp.<host>.<pid>.<nonce>`: a save in progress or abandoned.
    Temporary {
        /// Writer's host.
        host: String,
        /// Writer's process id.
        pid: u32,
    },
    /// `<base>.tmp.spare`: a retired checkpoint kept for its blocks, which the next save overwrites.
    Spare,
}

/// Classifies `file_name` relative to checkpoint name `base`.
pub fn classify(base: &str, file_name: &str) -> Option<NameKind> {
    if file_name == base {
        return Some(NameKind::Current);
    }
    let rest = file_name.strip_prefix(base)?.strip_prefix('.')?;
    if rest == "tmp.spare" {
        return Some(NameKind::Spare);
    }
    if let Some(tmp) = rest.strip_prefix("tmp.") {
        let mut parts = tmp.rsplitn(3, '.');
        let _nonce = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?.to_string();
        return Some(NameKind::Temporary { host, pid });
    }
    if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) && !rest.starts_with('0') {
        return rest.parse().ok().map(NameKind::Generation);
    }
    None
}

/// If `file_name` is a checkpoint name of any job (`X.ckpt`, `X.S.ckpt`, or those with `.<N>`), its base.
pub fn any_base(file_name: &str) -> Option<&str> {
    if file_name.ends_with(".ckpt") {
        return Some(file_name);
    }
    let (base, number) = file_name.rsplit_once('.')?;
    (base.ends_with(".ckpt") && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

impl Store {
    /// A store on the real file system.
    pub fn new(config: Config) -> Store {
        Store::with_storage(config, Arc::new(FileStorage))
    }

    /// A store for `app_name` configured from the environment (see [`Config::from_env`]).
    pub fn from_env(app_name: Option<&str>) -> Result<Store> {
        Ok(Store::new(Config::from_env(app_name)?))
    }

    /// A store over any storage (tests use [`crate::storage::MemStorage`]).
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
        };
        let identity_metadata = config.run_identity().to_metadata();
        Store { config, storage, shared: Arc::new(shared), identity_metadata }
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
    pub fn begin(&self, app_step: i64) -> Result<CheckpointWriter> {
        self.begin_in(&self.config.checkpoint_dir.clone(), app_step)
    }

    /// Like [`Store::begin`], into another directory (the seed's `ImageDir`).
    pub fn begin_in(&self, dir: &Path, app_step: i64) -> Result<CheckpointWriter> {
        if self.config.nranks > 1 {
            let generation = self.next_generation_in(dir)?;
            return self.begin_part_in(dir, generation, app_step);
        }
        let base = self.config.base_name();
        let last = self.shared.last_generation.load(Ordering::SeqCst);
        if let Some(listing) = self.shared.reusable_listing(dir, &base) {
            let generation = listing.highest.max(last) + 1;
            // The name about to be claimed must still be free; if anything else wrote here, list again.
            if let Ok(false) = self.storage.exists(&dir.join(format!("{base}.{generation}"))) {
                let header = self.header(FileKind::Data, generation, app_step);
                return self.start(dir, &base, header, Plan::Single { listing });
            }
        }
        // A listing: stale temporary files, the generation number, and what pruning will see.
        let listing = self.list_generations(dir, &base)?;
        let warning = if last == 0 { self.check_name_is_ours(dir, &listing)? } else { None };
        let generation = listing.highest.max(last) + 1;
        let header = self.header(FileKind::Data, generation, app_step);
        let mut writer = self.start(dir, &base, header, Plan::Single { listing })?;
        writer.warnings.extend(warning);
        Ok(writer)
    }

    /// Before this process's first save under its name in `dir`: the newest generation there must be this
    /// run's (the rules of restart, [`crate::identity`]), or the save's retention would remove another
    /// run's checkpoints (a sweep run point after point outside Slurm, a job id reused by another
    /// application). `CKPT_RESUME_FROM` naming a job says the files may be taken over. One header read.
    /// A header that cannot be read for an I/O error gives a warning (reported with the commit).
    fn check_name_is_ours(&self, dir: &Path, listing: &Listing) -> Result<Option<String>> {
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
        let why = self.config.run_identity().own_name_conflicts(&id, self.config.job_id.is_none());
        if why.is_empty() {
            return Ok(None);
        }
        Err(crate::discovery::foreign_run_error(&self.config, dir, &[(path, why)]))
    }

    /// The generation number the next save will use: one above the highest committed in `dir` and above
    /// anything this process wrote. Multi-rank callers agree on it (e.g. an MPI max-reduction) and pass
    /// it to [`Store::begin_part`].
    pub fn next_generation(&self) -> Result<u64> {
        self.next_generation_in(&self.config.checkpoint_dir.clone())
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

    /// Starts this rank's part of multi-rank generation `generation` (all ranks must use the same number).
    pub fn begin_part(&self, generation: u64, app_step: i64) -> Result<CheckpointWriter> {
        self.begin_part_in(&self.config.checkpoint_dir.clone(), generation, app_step)
    }

    /// [`Store::begin_part`] into another directory (the seed's `ImageDir`).
    pub fn begin_part_in(&self, dir: &Path, generation: u64, app_step: i64) -> Result<CheckpointWriter> {
        if generation == 0 {
            return Err(Error::invalid("generation numbers start at 1"));
        }
        let base = self.config.base_name();
        let parts_root = dir.join(format!("{base}.parts"));
        let part_dir = parts_root.join(generation.to_string());
        // The new directories must survive a crash along with the part written into them. The generation's
        // directory is new at every step (another rank may have created it: its parent is synced all the
        // same); the parts root is made durable in `dir` once per process, while it stays in place.
        let root_synced = {
            let synced = lock(&self.shared.synced_parts_root);
            synced.as_deref() == Some(parts_root.as_path())
                && self.storage.exists(&parts_root).map_err(|e| Error::io("stat", e).with_path(&parts_root))?
        };
        // The directory is listed (and created, if it is missing) unless a recent view of it can be reused
        // and the parts root is still in place.
        let view = match self.reusable_parts_view(dir).filter(|_| root_synced) {
            Some(view) => view,
            None => {
                let listing = listing_of(dir, &base, &self.scan(dir, &base)?);
                let view = PartsView {
                    dir: dir.to_path_buf(),
                    manifests: listing.generations.iter().map(|g| g.0).collect(),
                    highest: listing.highest,
                    listed_at: listing.listed_at,
                };
                *lock(&self.shared.parts_view) = Some(view.clone());
                view
            }
        };
        // This rank's parts of generations whose manifests fell out of `keep` (the outcome of the last step
        // was not reported with `after_step_committed`, or a failed step left them): removed before the new
        // part is written, so a rank never holds more than `keep` + 1 generations.
        let warnings = self.prune_own_parts(dir, &view.manifests);
        self.storage.create_dir_all(&part_dir).map_err(|e| Error::io("create directory", e).with_path(&part_dir))?;
        let to_sync: &[&Path] = if root_synced { &[parts_root.as_path()] } else { &[dir, parts_root.as_path()] };
        for d in to_sync {
            self.storage.sync_dir(d).map_err(|e| Error::io("fsync directory", e).with_path(d))?;
        }
        *lock(&self.shared.synced_parts_root) = Some(parts_root.clone());
        // The generation's directory is not listed: with N ranks that is N entries for every rank at every
        // step (N² metadata operations per step). Temporary files that a dead writer left in it are removed
        // by the step's commit, when every rank's part is in place.
        let part_name = format!("rank{}.ckpt", self.config.rank);
        let header = self.header(FileKind::Data, generation, app_step);
        let plan = Plan::Part { dir: part_dir.clone(), name: part_name.clone(), checkpoint_dir: dir.to_path_buf() };
        let mut w = self.start(&part_dir, &part_name, header, plan)?;
        w.warnings = warnings;
        Ok(w)
    }

    /// Multi-rank: tells this rank that the step of generation `generation`, to which it contributed a
    /// part, was committed (its manifest is durable; with MPI, rank 0's broadcast outcome). The rank then
    /// removes its own parts of generations that fell out of `keep`, at once instead of at its next part,
    /// and rank 0's next commit removes their emptied directories. Call it only on a known outcome: a rank
    /// that cannot learn it loses nothing by not calling it (its next part removes them). Returns the
    /// parts that could not be removed, as warnings.
    pub fn after_step_committed(&self, generation: u64) -> Vec<String> {
        let dir =
            lock(&self.shared.own_parts).iter().find(|p| p.identity.generation == generation).map(|p| p.dir.clone());
        let Some(dir) = dir else { return Vec::new() };
        let manifests = {
            let mut view = lock(&self.shared.parts_view);
            match view.as_mut().filter(|v| v.dir == dir) {
                Some(v) => {
                    // Rank 0's commit kept the newest `keep` manifests, this one among them.
                    v.manifests.push(generation);
                    v.manifests.sort_unstable_by(|a, b| b.cmp(a));
                    v.manifests.dedup();
                    v.manifests.truncate(self.config.keep.max(1));
                    v.highest = v.highest.max(generation);
                    v.manifests.clone()
                }
                None => vec![generation],
            }
        };
        self.prune_own_parts(&dir, &manifests)
    }

    /// The view of `dir`'s manifests when it is recent enough to reuse.
    fn reusable_parts_view(&self, dir: &Path) -> Option<PartsView> {
        lock(&self.shared.parts_view)
            .as_ref()
            .filter(|v| v.dir == dir && v.listed_at.elapsed() < LISTING_REUSE)
            .cloned()
    }

    /// This rank's durable part of `generation`, written by this process, for rank 0's
    /// [`Store::commit_step_with_parts`]; `None` when this process has no committed part of it.
    pub fn part_identity(&self, generation: u64) -> Option<PartIdentity> {
        lock(&self.shared.own_parts).iter().map(|p| p.identity).find(|i| i.generation == generation)
    }

    /// Removes this rank's parts in `dir` of generations older than the newest manifest and not among the
    /// newest `keep` manifests (`manifests`: the generations whose manifests exist). Rank 0's commit prunes
    /// exactly those manifests, so no part of a kept step is ever removed.
    fn prune_own_parts(&self, dir: &Path, manifests: &[u64]) -> Vec<String> {
        let mut warnings = Vec::new();
        let Some(&newest) = manifests.iter().max() else { return warnings };
        let mut newest_first = manifests.to_vec();
        newest_first.sort_unstable_by(|a, b| b.cmp(a));
        newest_first.dedup();
        let kept = &newest_first[..newest_first.len().min(self.config.keep.max(1))];
        let spare_min_len = self.spare_min_len(dir);
        let mut spare = lock(&self.shared.part_spare);
        lock(&self.shared.own_parts).retain(|p| {
            let g = p.identity.generation;
            if p.dir != dir || g >= newest || kept.contains(&g) {
                return true;
            }
            let len = p.identity.file_len;
            let result = if *spare != Some(true) && spare_min_len.is_some_and(|min| len >= min) {
                self.retire_part_as_spare(&p.path).map(|()| *spare = Some(true))
            } else {
                self.storage.remove_listed_file(&p.path, len)
            };
            match result {
                Ok(()) => false,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    warnings.push(format!("{}: could not remove an old part: {e}", p.path.display()));
                    true
                }
            }
        });
        warnings
    }

    /// Renames this rank's retired part to its spare in the parts root, for its next part to write over.
    /// No directory `fsync`: should a power cut bring back the part's old name with the file rewritten,
    /// that retired generation's manifest (if it is still there) names a part of another length and
    /// CRCs, so a restart rejects that generation, as it does when a retired part is simply gone.
    fn retire_part_as_spare(&self, part: &Path) -> io::Result<()> {
        let root = part.parent().and_then(Path::parent).unwrap_or(Path::new("."));
        self.storage.rename(part, &part_spare_path(root, self.config.rank))
    }

    fn header(&self, kind: FileKind, generation: u64, app_step: i64) -> Header {
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
                !pid_alive(pid)
            } else {
                e.modified.is_some_and(|m| now.duration_since(m).unwrap_or_default() > STALE_TMP_AGE)
            };
            if stale {
                let _ = self.storage.remove_file(&dir.join(name));
            }
        }
    }

    fn start(&self, dir: &Path, base: &str, header: Header, mut plan: Plan) -> Result<CheckpointWriter> {
        let tmp_name = || dir.join(format!("{base}.tmp.{}.{}.{:x}", self.config.host, std::process::id(), nonce()));
        let mut tmp = tmp_name();
        let mut warnings = Vec::new();
        let spare_min_len = self.spare_min_len(dir);
        let (file, reused_spare) = match self.take_spare(dir, &mut plan, &tmp, spare_min_len, &mut warnings) {
            Some(file) => (file, true),
            None => {
                // A fresh name: a takeover that failed half-way may have left the first one behind.
                tmp = tmp_name();
                let file = self
                    .storage
                    .create_new_with(&tmp, self.write_options())
                    .map_err(|e| Error::io("create temporary file", e).with_path(&tmp))?;
                (file, false)
            }
        };
        let bw = f64::from_bits(self.shared.write_bandwidth.load(Ordering::Relaxed));
        Ok(CheckpointWriter {
            builder: Some(FileBuilder::new(file, header, bw)),
            storage: self.storage.clone(),
            tmp,
            plan,
            keep: self.config.keep,
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
        })
    }

    /// How this store's files are written (the configuration's settings for the storage).
    fn write_options(&self) -> WriteOptions {
        WriteOptions { mode: self.config.file_mode, direct_io: self.config.direct_io }
    }

    /// The smallest retired checkpoint in `dir` kept as a spare, `None` when saves there do not reuse
    /// space (turned off, a file system where the storage cannot tell who has a file open, or files this
    /// process may not write once created).
    fn spare_min_len(&self, dir: &Path) -> Option<u64> {
        let c = &self.config;
        (c.reuse_space && c.file_mode & 0o200 != 0).then(|| self.storage.spare_min_len(dir)).flatten()
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
        if spare_min_len.is_none() {
            let _ = self.storage.remove_file(&spare);
            return None;
        }
        let file = match self.storage.reuse_spare(&spare, tmp, self.write_options()) {
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

    /// Saves one serde value as a whole checkpoint (section `state`, postcard encoding).
    pub fn save_serde<T: Serialize + ?Sized>(&self, app_step: i64, value: &T) -> Result<CommitInfo> {
        let mut w = self.begin(app_step)?;
        w.add_serde("state", value)?;
        w.commit()
    }

    /// [`crate::Checkpointer::checkpoint`] without triggers: begins a checkpoint of step `app_step`, lets
    /// `write` add the sections and commits it (a failing `write` leaves no trace: the temporary file is
    /// removed). With several ranks this writes this rank's part; rank 0 then waits for every part, commits
    /// the step (returning the manifest's figures) and removes its own retired parts
    /// ([`Store::after_step_committed`]).
    pub fn checkpoint(
        &self,
        app_step: i64,
        write: impl FnOnce(&mut CheckpointWriter) -> Result<()>,
    ) -> Result<CommitInfo> {
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

    /// Commits multi-rank generation `generation`: waits (up to the configured commit timeout) until every
    /// rank's part is durable and structurally valid, then writes the manifest. Normally called by rank 0
    /// after a barrier, so the wait is short.
    pub fn commit_step(&self, generation: u64, app_step: i64) -> Result<CommitInfo> {
        self.commit_step_in(&self.config.checkpoint_dir.clone(), generation, app_step)
    }

    /// [`Store::commit_step`] for parts written into `dir`.
    pub fn commit_step_in(&self, dir: &Path, generation: u64, app_step: i64) -> Result<CommitInfo> {
        let start = Instant::now();
        let part_dir = dir.join(format!("{}.parts", self.config.base_name())).join(generation.to_string());
        let nranks = self.config.nranks;
        let mut parts: Vec<Option<PartIdentity>> = vec![None; nranks as usize];
        loop {
            let mut missing = Vec::new();
            for r in 0..nranks {
                if parts[r as usize].is_some() {
                    continue;
                }
                let path = part_dir.join(format!("rank{r}.ckpt"));
                match Checkpoint::open_with(&*self.storage, &path, LoadOptions { mmap: false }) {
                    Ok(cp) => {
                        let h = cp.header();
                        if h.kind != FileKind::Data {
                            return Err(Error::new(ErrorKind::InvalidState, "a rank's part is not a data file")
                                .with_path(&path));
                        }
                        let (header_crc32, table_crc32) = cp.identity();
                        let part = PartIdentity {
                            generation: h.generation,
                            app_step: h.app_step,
                            file_len: cp.file_len(),
                            rank: h.rank,
                            nranks: h.nranks,
                            header_crc32,
                            table_crc32,
                        };
                        check_part(&part, r, nranks, generation, app_step).map_err(|e| e.with_path(&path))?;
                        parts[r as usize] = Some(part);
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => missing.push(r),
                    Err(e) => return Err(e),
                }
            }
            if missing.is_empty() {
                break;
            }
            if start.elapsed() >= self.config.commit_timeout {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "waited {:?} for the parts of ranks {missing:?} of generation {generation}; if only some \
                         processes save, give each its own name and set CKPT_NRANKS=1",
                        self.config.commit_timeout
                    ),
                )
                .with_path(&part_dir));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let parts: Vec<PartIdentity> = parts.into_iter().map(|p| p.expect("all present")).collect();
        self.write_manifest(dir, generation, app_step, &parts, start, false)
    }

    /// Commits multi-rank generation `generation` from the identities of every rank's durable part,
    /// gathered from the ranks (`parts[r]` from rank r's [`Store::part_identity`]): rank 0 opens none of
    /// the parts. For collective callers, after every rank's part is durable. The ranks then remove their
    /// own parts of the generation this commit retires ([`Store::after_step_committed`]: they must be
    /// told the outcome), and a later commit removes the emptied directory; parts that no rank removed are
    /// removed by a later commit all the same. A part whose identity is wrong makes the step unrestorable
    /// for its rank (restart checks every part against the manifest), never a wrong restart.
    pub fn commit_step_with_parts(&self, generation: u64, app_step: i64, parts: &[PartIdentity]) -> Result<CommitInfo> {
        self.commit_step_with_parts_in(&self.config.checkpoint_dir.clone(), generation, app_step, parts)
    }

    /// [`Store::commit_step_with_parts`] for parts written into `dir`.
    pub fn commit_step_with_parts_in(
        &self,
        dir: &Path,
        generation: u64,
        app_step: i64,
        parts: &[PartIdentity],
    ) -> Result<CommitInfo> {
        let start = Instant::now();
        let nranks = self.config.nranks;
        if parts.len() != nranks as usize {
            return Err(Error::invalid(format!(
                "{} part identities for a step of {nranks} ranks: every rank's part is needed",
                parts.len()
            )));
        }
        for (r, part) in parts.iter().enumerate() {
            check_part(part, r as u32, nranks, generation, app_step)?;
        }
        self.write_manifest(dir, generation, app_step, parts, start, true)
    }

    /// Writes the manifest of `generation` (one record per rank, in rank order) through the single-file
    /// protocol, then removes the temporary files dead writers left among the parts.
    fn write_manifest(
        &self,
        dir: &Path,
        generation: u64,
        app_step: i64,
        parts: &[PartIdentity],
        start: Instant,
        ranks_prune_own_parts: bool,
    ) -> Result<CommitInfo> {
        let base = self.config.base_name();
        let mut manifest = Vec::with_capacity(parts.len() * MANIFEST_ENTRY_LEN);
        for p in parts {
            manifest.extend_from_slice(&p.rank.to_le_bytes());
            manifest.extend_from_slice(&0u32.to_le_bytes());
            manifest.extend_from_slice(&p.file_len.to_le_bytes());
            manifest.extend_from_slice(&p.header_crc32.to_le_bytes());
            manifest.extend_from_slice(&p.table_crc32.to_le_bytes());
        }
        // Steps in a row reuse the previous commit's view of the directory, as single saves do (the hard
        // link that claims `<base>.<generation>` still fails if anything else took it).
        let listing = match self.shared.reusable_listing(dir, &base) {
            Some(listing) => listing,
            None => self.list_generations(dir, &base)?,
        };
        let plan = Plan::Single { listing };
        let header = self.header(FileKind::Manifest, generation, app_step);
        let mut w = self.start(dir, &base, header, plan)?;
        w.ranks_prune_own_parts = ranks_prune_own_parts;
        w.add_section_with(MANIFEST_SECTION, &manifest, SectionOptions::new().encoding(Encoding::Manifest))?;
        let mut info = w.commit()?;
        // Every rank's part is in place, so a temporary file still here is a dead writer's (a run that
        // crashed while writing this generation); one listing by names, no `stat` per rank.
        let part_dir = dir.join(format!("{base}.parts")).join(generation.to_string());
        if let Ok(names) = self.storage.list_names(&part_dir) {
            for name in names.iter().filter_map(|n| n.to_str()).filter(|n| is_part_temporary(n)) {
                let _ = self.storage.remove_file(&part_dir.join(name));
            }
        }
        info.seconds = start.elapsed().as_secs_f64();
        Ok(info)
    }
}

/// Checks that `part` is rank `rank`'s part of `generation` and step `app_step` of a step of `nranks`.
fn check_part(part: &PartIdentity, rank: u32, nranks: u32, generation: u64, app_step: i64) -> Result<()> {
    let p = part;
    if p.generation == generation && p.rank == rank && p.nranks == nranks && p.app_step == app_step {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidState,
        format!(
            "part is generation {} step {} rank {}/{}, expected generation {generation} step {app_step} rank \
             {rank}/{nranks}: the ranks did not checkpoint the same step",
            p.generation, p.app_step, p.rank, p.nranks
        ),
    ))
}

/// Whether `name` is a temporary file of some rank's part (`rank<R>.ckpt.tmp.<host>.<pid>.<nonce>`).
fn is_part_temporary(name: &str) -> bool {
    let Some((base, _)) = name.split_once(".tmp.") else { return false };
    let rank = base.strip_prefix("rank").and_then(|b| b.strip_suffix(".ckpt"));
    rank.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        && matches!(classify(base, name), Some(NameKind::Temporary { .. }))
}

/// Manifest entries: (rank, file_len, header_crc32, table_crc32).
pub fn parse_manifest(cp: &Checkpoint) -> Result<Vec<(u32, u64, u32, u32)>> {
    let bytes = cp.read(MANIFEST_SECTION)?;
    let n = cp.header().nranks as usize;
    if bytes.len() != n * MANIFEST_ENTRY_LEN {
        return Err(Error::corrupt(format!("manifest lists {} bytes for {n} ranks", bytes.len()))
            .with_section(MANIFEST_SECTION)
            .with_path(cp.path()));
    }
    let mut out = Vec::with_capacity(n);
    for (i, e) in bytes.chunks_exact(MANIFEST_ENTRY_LEN).enumerate() {
        let rank = u32::from_le_bytes(e[0..4].try_into().expect("4"));
        if rank as usize != i {
            return Err(Error::corrupt("manifest ranks are out of order").with_path(cp.path()));
        }
        if e[4..8] != [0; 4] {
            return Err(Error::corrupt(format!("manifest record {i}: reserved bytes are not zero"))
                .with_section(MANIFEST_SECTION)
                .with_path(cp.path()));
        }
        out.push((
            rank,
            u64::from_le_bytes(e[8..16].try_into().expect("8")),
            u32::from_le_bytes(e[16..20].try_into().expect("4")),
            u32::from_le_bytes(e[20..24].try_into().expect("4")),
        ));
    }
    Ok(out)
}

#[derive(Clone, Debug)]
enum Plan {
    /// Generations of `<base>` in a directory, as listed when the save began (or reused from the
    /// previous save).
    Single { listing: Listing },
    /// A rank's part: `<dir>/<name>`, in the parts root of `checkpoint_dir`.
    Part { dir: PathBuf, name: String, checkpoint_dir: PathBuf },
    /// One file at an exact path, no generations (see [`begin_file`]): whether `<name>.tmp.spare` was there
    /// when the save began, and the length of the regular file the save replaces, if any.
    File { dir: PathBuf, name: String, spare: bool, replaced: Option<u64> },
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

fn has_spare(base: &str, entries: &[DirEntry]) -> bool {
    entries.iter().any(|e| e.is_file && e.name.to_str().and_then(|n| classify(base, n)) == Some(NameKind::Spare))
}

/// `<dir>/<base>.tmp.spare`: in the `.tmp.` names, which the library reserves for files that are never
/// checkpoints, so that it can never be a file of the user's (`begin_file` takes any path).
fn spare_path(dir: &Path, base: &str) -> PathBuf {
    dir.join(format!("{base}.tmp.spare"))
}

/// `<parts root>/rank<R>.spare`: rank R's retired part, kept for its blocks.
fn part_spare_path(parts_root: &Path, rank: u32) -> PathBuf {
    parts_root.join(format!("rank{rank}.spare"))
}

/// Starts a checkpoint written to exactly `path` (no generations, no retention): on commit the file
/// replaces `path` atomically and durably (temporary file in the same directory, fsync, rename, fsync of
/// the directory). For callers that manage their own file names; the header records `config`'s job,
/// application, rank and step id.
pub fn begin_file(path: &Path, app_step: i64, config: &Config, storage: Arc<dyn Storage>) -> Result<CheckpointWriter> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid("the checkpoint path has no UTF-8 file name").with_path(path))?
        .to_string();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let store = Store::with_storage(config.clone(), storage);
    let entries = store.scan(&dir, &name)?;
    store.remove_stale_tmp(&dir, &name, &entries);
    let header = store.header(FileKind::Data, 1, app_step);
    let spare = has_spare(&name, &entries);
    let replaced = entries.iter().find(|e| e.is_file && e.name.to_str() == Some(name.as_str())).map(|e| e.len);
    store.start(&dir, &name, header, Plan::File { dir: dir.clone(), name: name.clone(), spare, replaced })
}

/// A checkpoint being written. Add sections, then [`commit`](CheckpointWriter::commit); dropping it
/// without committing removes the temporary file and leaves the previous checkpoints untouched.
pub struct CheckpointWriter {
    builder: Option<FileBuilder>,
    storage: Arc<dyn Storage>,
    tmp: PathBuf,
    plan: Plan,
    keep: usize,
    default_compression: Compression,
    started: Instant,
    done: bool,
    last_generation: Option<u64>,
    shared: Arc<Shared>,
    /// Problems before the commit that did not endanger it, reported with its [`CommitInfo`].
    warnings: Vec<String>,
    /// A manifest whose ranks remove their own retired parts ([`Store::commit_step_with_parts`]).
    ranks_prune_own_parts: bool,
    /// Retired checkpoints at least this large are kept as the spare (`None`: no spare).
    spare_min_len: Option<u64>,
    /// Whether this file is a spare taken over.
    reused_spare: bool,
    /// The bytes written and the seconds the storage spent writing them, once committed.
    device_time: Option<(u64, f64)>,
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter").field("tmp", &self.tmp).field("plan", &self.plan).finish()
    }
}

impl CheckpointWriter {
    pub(crate) fn builder(&mut self) -> Result<&mut FileBuilder> {
        self.builder.as_mut().ok_or_else(|| Error::new(ErrorKind::InvalidState, "the checkpoint was already committed"))
    }

    /// The generation this checkpoint will have.
    pub fn generation(&self) -> u64 {
        self.builder.as_ref().map(|b| b.header().generation).or(self.last_generation).unwrap_or(0)
    }

    /// The temporary file being written.
    pub fn temporary_path(&self) -> &Path {
        &self.tmp
    }

    /// Adds a user metadata entry (must come before the first section).
    pub fn set_metadata(&mut self, key: &str, value: impl AsRef<[u8]>) -> Result<()> {
        if key == crate::identity::IDENTITY_KEY {
            return Err(Error::invalid(format!(
                "metadata key {key:?} is reserved: ckpt records the run's identity there"
            )));
        }
        let path = self.tmp.clone();
        let header = self.builder()?.header_mut().map_err(|e| e.with_path(&path))?;
        if let Some(slot) = header.metadata.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value.as_ref().to_vec();
        } else {
            header.metadata.push((key.to_string(), value.as_ref().to_vec()));
        }
        Ok(())
    }

    /// Adds a section of opaque bytes with the store's default compression.
    pub fn add_bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let opts = SectionOptions::new().compression(self.default_compression);
        self.add_section_with(name, data, opts)
    }

    /// Adds a section with explicit options.
    pub fn add_section_with(&mut self, name: &str, data: &[u8], opts: SectionOptions) -> Result<()> {
        let path = self.tmp.clone();
        self.builder()?.add_section(name, &opts, data).map_err(|e| e.with_section(name).with_path(&path))
    }

    /// Adds one section gathered from several buffers (written in order, without concatenating them).
    pub fn add_section_parts(&mut self, name: &str, parts: &[&[u8]], opts: SectionOptions) -> Result<()> {
        let path = self.tmp.clone();
        self.builder()?.add_section_parts(name, &opts, parts).map_err(|e| e.with_section(name).with_path(&path))
    }

    /// Adds a serde value, encoded with postcard 1.x (recorded as such in the section).
    pub fn add_serde<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<()> {
        let bytes = postcard::to_allocvec(value).map_err(|e| {
            Error::new(ErrorKind::Encoding, format!("postcard encoding failed: {e}")).with_section(name)
        })?;
        let opts = SectionOptions::new().compression(self.default_compression).encoding(Encoding::Postcard);
        self.add_section_with(name, &bytes, opts)
    }

    /// Streams a section of unknown length (implements `std::io::Write`).
    pub fn section_writer(&mut self, name: &str, opts: SectionOptions) -> Result<SectionWriter<'_>> {
        let path = self.tmp.clone();
        SectionWriter::new(self.builder()?, &path, name, opts).map_err(|e| e.with_path(&path))
    }

    /// Finishes the file and commits it durably (see the module documentation for the protocol).
    pub fn commit(mut self) -> Result<CommitInfo> {
        let result = self.commit_inner();
        match &result {
            Ok(info) => {
                // The device's own time when the storage knows it: the whole save's time would count
                // compressing as writing, and make `auto` compress more the more it compresses.
                let speed = self.device_time.unwrap_or((info.stats.file_bytes, info.seconds));
                self.shared.note_commit(info.generation, speed);
            }
            Err(_) => {
                let _ = self.storage.remove_file(&self.tmp);
                // Whatever went wrong (another writer took the generation, say), list afresh next time.
                *self.shared.listing() = None;
            }
        }
        self.done = true;
        result
    }

    fn commit_inner(&mut self) -> Result<CommitInfo> {
        let tmp = self.tmp.clone();
        let builder = self.builder.take().ok_or_else(|| Error::new(ErrorKind::InvalidState, "already committed"))?;
        let header = builder.header().clone();
        self.last_generation = Some(header.generation);
        let crate::writer::Finished { out: mut file, stats, header_crc32, table_crc32 } =
            builder.finish().map_err(|e| e.with_path(&tmp))?;
        file.sync().map_err(|e| Error::io("fsync", e).with_path(&tmp))?;
        self.device_time = file.device_time();
        drop(file);
        let storage = self.storage.clone();
        let (path, generation_path, dir) = match &self.plan {
            Plan::Single { listing: Listing { dir, base, .. } } => {
                let gen_path = dir.join(format!("{base}.{}", header.generation));
                let current = dir.join(base);
                match storage.hard_link(&tmp, &gen_path) {
                    Ok(()) => {
                        // `<base>` is another name of a generation that stays: replacing it frees nothing.
                        storage
                            .rename_over_other_name(&tmp, &current)
                            .map_err(|e| Error::io("rename", e).with_path(&current))?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "generation {} was committed by another writer at the same time; two processes \
                                 are saving under the same name",
                                header.generation
                            ),
                        )
                        .with_path(&gen_path));
                    }
                    Err(e) if link_unsupported(&e) => {
                        // File systems without hard links: the generation's own name only. Discovery scans
                        // generations, so the checkpoint is still found.
                        storage.rename(&tmp, &gen_path).map_err(|e| Error::io("rename", e).with_path(&gen_path))?;
                    }
                    Err(e) => return Err(Error::io("link", e).with_path(&gen_path)),
                }
                (current, gen_path, dir.clone())
            }
            Plan::File { dir, name, replaced, .. } => {
                let path = dir.join(name);
                let spare = spare_path(dir, name);
                let keep_spare = replaced.is_some_and(|len| self.spare_min_len.is_some_and(|min| len >= min))
                    // The replaced file stays, as the spare the next save overwrites. When this fails (a
                    // spare is there already, no hard links) it is freed as before.
                    && storage.hard_link(&path, &spare).is_ok();
                if let Err(e) = storage.rename(&tmp, &path) {
                    if keep_spare {
                        let _ = storage.remove_file(&spare); // the spare would be another name of `path`
                    }
                    return Err(Error::io("rename", e).with_path(&path));
                }
                (path.clone(), path, dir.clone())
            }
            Plan::Part { dir, name, .. } => {
                let part = dir.join(name);
                storage.rename(&tmp, &part).map_err(|e| Error::io("rename", e).with_path(&part))?;
                (part.clone(), part, dir.clone())
            }
        };
        storage.sync_dir(&dir).map_err(|e| Error::io("fsync directory", e).with_path(&dir))?;
        // Durable from here on: failures below are warnings, never errors.
        let mut warnings = std::mem::take(&mut self.warnings);
        if let Plan::Part { checkpoint_dir, .. } = &self.plan {
            let mut own = lock(&self.shared.own_parts);
            own.retain(|p| p.path != path);
            let identity = PartIdentity {
                generation: header.generation,
                app_step: header.app_step,
                file_len: stats.file_bytes,
                rank: header.rank,
                nranks: header.nranks,
                header_crc32,
                table_crc32,
            };
            own.push(OwnPart { dir: checkpoint_dir.clone(), path: path.clone(), identity });
        }
        if let Plan::Single { listing } = &self.plan {
            let newest = (header.generation, stats.file_bytes);
            // Ranks that remove their own retired parts: leave the generations where this rank's own part is
            // still in place (the ranks remove theirs once told the outcome); a later commit removes the
            // emptied directories.
            let own_parts: Option<Vec<u64>> = self.ranks_prune_own_parts.then(|| {
                lock(&self.shared.own_parts)
                    .iter()
                    .filter(|p| p.dir == listing.dir)
                    .map(|p| p.identity.generation)
                    .collect()
            });
            let damaged: Vec<u64> = lock(&self.shared.damaged)
                .iter()
                .filter(|(d, b, _)| *d == listing.dir && *b == listing.base)
                .map(|&(_, _, g)| g)
                .collect();
            let retire = Retire {
                keep: self.keep,
                spare_min_len: self.spare_min_len,
                own_parts: own_parts.as_deref(),
                nranks: header.nranks,
                damaged: &damaged,
            };
            let (remaining, spare) = prune(&*storage, listing, newest, retire, &mut warnings);
            if !damaged.is_empty() {
                // Renamed aside (or gone): forget them, except those still listed (a rename that failed).
                lock(&self.shared.damaged).retain(|(d, b, g)| {
                    !(*d == listing.dir && *b == listing.base) || remaining.iter().any(|r| r.0 == *g)
                });
            }
            *self.shared.listing() = Some(Listing {
                generations: remaining,
                highest: listing.highest.max(header.generation),
                spare,
                ..listing.clone()
            });
        }
        Ok(CommitInfo {
            path,
            generation_path,
            generation: header.generation,
            app_step: header.app_step,
            stats,
            seconds: self.started.elapsed().as_secs_f64(),
            warnings,
            reused_spare: self.reused_spare,
        })
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.storage.remove_file(&self.tmp);
        }
    }
}

fn link_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS | libc::EMLINK | libc::EXDEV))
}

/// How a commit retires old generations (see [`prune`]).
struct Retire<'a> {
    /// Generations discovery found damaged: they never count toward `keep`.
    damaged: &'a [u64],
    keep: usize,
    spare_min_len: Option<u64>,
    own_parts: Option<&'a [u64]>,
    /// The job's ranks: spares of higher ranks (an earlier run with more ranks) are removed.
    nranks: u32,
}

/// Removes generations beyond the newest `keep` (never `newest` itself), from those present when the save
/// began (the listing's regular files only: a planted symlink must not push a real generation out), and
/// for multi-rank names the part directories of removed generations and of abandoned older ones. Returns
/// the generations that remain, and whether `<base>.tmp.spare` is there.
///
/// With `spare_min_len`, when there is no spare, the newest retired generation at least that large is
/// renamed to `<base>.tmp.spare` instead of removed: the next save overwrites its blocks.
///
/// With `own_parts` (a manifest of [`Store::commit_step_with_parts`]), each rank removes its own parts of
/// retired generations (`Store::after_step_committed`, or its next part), so a retired generation's
/// directory is normally empty by the commit after the one that retired it: one `rmdir` instead of one
/// `unlink` per rank. The generations in `own_parts` (this process's own part is still there) are left for
/// that; any other directory that is not empty (ranks that stopped, an earlier run, a failed step) is
/// emptied here.
fn prune(
    storage: &dyn Storage,
    listing: &Listing,
    newest: (u64, u64),
    retire: Retire<'_>,
    warnings: &mut Vec<String>,
) -> (Vec<(u64, u64)>, bool) {
    let Retire { keep, spare_min_len, own_parts, nranks, damaged } = retire;
    let Listing { dir, base, parts, .. } = listing;
    let mut spare = listing.spare;
    let mut gens: Vec<(u64, u64)> = listing.generations.iter().copied().filter(|&(g, _)| g != newest.0).collect();
    gens.push(newest);
    gens.sort_unstable_by_key(|g| std::cmp::Reverse(g.0));
    gens.dedup_by_key(|g| g.0);
    // A damaged generation never counts toward `keep`: after a restart that fell back past it, counting
    // it would retire a valid older generation and keep the damaged one.
    let kept: Vec<(u64, u64)> =
        gens.iter().copied().filter(|g| g.0 == newest.0 || !damaged.contains(&g.0)).take(keep.max(1)).collect();
    let mut remaining = kept.clone();
    for &(g, len) in gens.iter().filter(|g| !kept.contains(g)) {
        if g == newest.0 {
            continue;
        }
        let p = dir.join(format!("{base}.{g}"));
        if damaged.contains(&g) && g < newest.0 {
            // Kept for a post-mortem under a name no discovery looks at, now that a newer valid generation
            // is durable.
            let aside = dir.join(format!("{base}.{g}.damaged"));
            match storage.rename(&p, &aside) {
                Ok(()) => warnings.push(format!(
                    "{}: generation {g} is damaged (restart rejected it); renamed to {} and no longer counted toward keep",
                    p.display(),
                    aside.display()
                )),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warnings.push(format!("{}: could not rename the damaged generation aside: {e}", p.display()));
                    remaining.push((g, len));
                }
            }
            continue;
        }
        let result = if !spare && spare_min_len.is_some_and(|min| len >= min) {
            match storage.rename(&p, &spare_path(dir, base)) {
                Ok(()) => {
                    spare = true;
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
                // Something else holds the spare's name (a directory, say): remove as without spares.
                Err(e) => {
                    warnings.push(format!("{}: could not keep it as the spare, removing it: {e}", p.display()));
                    storage.remove_listed_file(&p, len)
                }
            }
        } else {
            storage.remove_listed_file(&p, len)
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // pruned meanwhile
            Err(e) => {
                warnings.push(format!("{}: could not remove old generation: {e}", p.display()));
                remaining.push((g, len));
            }
        }
    }
    if !parts {
        return (remaining, spare);
    }
    let parts_root = dir.join(format!("{base}.parts"));
    let Ok(part_dirs) = storage.read_dir(&parts_root) else {
        return (remaining, spare);
    };
    for d in part_dirs {
        let rank_spare =
            d.name.to_str().and_then(|s| s.strip_prefix("rank")?.strip_suffix(".spare")?.parse::<u32>().ok());
        if rank_spare.is_some_and(|r| r >= nranks) {
            let _ = storage.remove_listed_file(&parts_root.join(&d.name), d.len);
        }
        let Some(g) = d.name.to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        // Parts newer than the newest manifest may belong to a save in progress: leave them.
        if kept.iter().any(|k| k.0 == g) || g >= newest.0 {
            continue;
        }
        let pd = parts_root.join(&d.name);
        if let Some(own_parts) = own_parts {
            if own_parts.contains(&g) {
                continue;
            }
            match storage.remove_dir(&pd) {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(_) => {} // not empty: its ranks did not remove their parts
            }
        }
        if let Ok(files) = storage.read_dir(&pd) {
            for f in files {
                let _ = storage.remove_listed_file(&pd.join(&f.name), f.len);
            }
        }
        if let Err(e) = storage.remove_dir(&pd) {
            warnings.push(format!("{}: could not remove old parts: {e}", pd.display()));
        }
    }
    (remaining, spare)
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
            let data: Vec<u8> = (0..5000u32).map(|i| (i as i64 * step) as u8).collect();
            w.add_bytes("raw", &data).unwrap();
            w.add_section_with("shuffled", &data, SectionOptions::new().shuffle(8)).unwrap();
            w.add_serde("meta", &(step, "x")).unwrap();
            let info = w.commit().unwrap();
            assert_eq!(info.generation, step as u64);
        }
        let r = store.restore().unwrap().expect("a checkpoint");
        assert_eq!(r.app_step, 3);
        let expected: Vec<u8> = (0..5000u32).map(|i| (i as i64 * 3) as u8).collect();
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

    #[test]
    fn classify_names() {
        assert_eq!(classify("7.ckpt", "7.ckpt"), Some(NameKind::Current));
        assert_eq!(classify("7.ckpt", "7.ckpt.12"), Some(NameKind::Generation(12)));
        assert_eq!(classify("7.ckpt", "7.ckpt.012"), None);
        assert_eq!(classify("7.ckpt", "7.ckpt.x"), None);
        assert_eq!(classify("7.ckpt", "7.ckpt.tmp.spare"), Some(NameKind::Spare));
        assert_eq!(classify("7.ckpt", "7.ckpt.tmp.spares"), None);
        assert_eq!(
            classify("7.ckpt", "7.ckpt.tmp.node-1.example.org.123.abc"),
            Some(NameKind::Temporary { host: "node-1.example.org".into(), pid: 123 })
        );
        assert_eq!(classify("7.ckpt", "7.1.ckpt"), None);
        assert_eq!(classify("7.ckpt", "77.ckpt"), None);
        assert_eq!(any_base("9.3.ckpt.4"), Some("9.3.ckpt"));
        assert_eq!(any_base("9.ckpt"), Some("9.ckpt"));
        assert_eq!(any_base("9.ckpt.tmp.h.1.2"), None);
        assert_eq!(any_base("notes.txt"), None);
    }
}
