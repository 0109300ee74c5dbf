//! Restart discovery: the newest complete, verified checkpoint, with automatic fallback.
//!
//! Candidates are `<base>` and every `<base>.<N>` in the restart directory, tried newest generation first;
//! the first that verifies completely (every CRC, every byte) wins. When this job has none, which is what
//! a resubmitted job sees since its job id is new, the candidates are the checkpoints of *other* job ids
//! recorded with the same application name and step id, newest first, and the choice says so. If
//! checkpoints exist but none verifies, that is an error listing every file and why, never a silent fresh
//! start (unless [`Config::allow_fresh_start`](crate::Config) says otherwise).
//!
//! For multi-rank names the candidates are manifests; one is valid for this rank when the manifest
//! verifies and this rank's part verifies and is the very file the manifest names.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::base_name;
use crate::error::{Error, ErrorKind, Result};
use crate::format::{FileKind, ManifestEntry};
use crate::identity::{ResumeFrom, RunIdentity};
use crate::levels::Level;
use crate::reader::{Checkpoint, LoadOptions};
use crate::storage::Storage;
use crate::store::{NameKind, Store, any_base, classify, parse_manifest};
use crate::trust;

/// What discovery concluded about one file.
#[non_exhaustive]
#[derive(Debug)]
pub enum CandidateStatus {
    /// Verified completely.
    Valid,
    /// Damaged, incomplete or unreadable.
    Invalid(Error),
    /// Not examined, because a newer candidate was chosen first.
    NotChecked,
}

/// One file discovery looked at.
#[non_exhaustive]
#[derive(Debug)]
pub struct Candidate {
    /// The file.
    pub path: PathBuf,
    /// Generation from the header (or the file name when the header is unreadable).
    pub generation: Option<u64>,
    /// The application step from the header.
    pub app_step: Option<u64>,
    /// Job id recorded in the header.
    pub job_id: Option<String>,
    /// Creation time from the header.
    pub created_unix_ns: Option<i64>,
    /// Whether this is the `<base>` alias of the newest generation.
    pub is_current_name: bool,
    /// Whether the file belongs to this job's own checkpoint name (rather than an earlier job's).
    pub own_job: bool,
    /// The level it lies on: the node-local cache or the checkpoint directory (see [`crate::levels`]).
    pub level: Level,
    /// The verdict.
    pub status: CandidateStatus,
}

/// Everything discovery saw and what it chose.
#[non_exhaustive]
#[derive(Debug)]
pub struct Discovery {
    /// The directory searched.
    pub dir: PathBuf,
    /// Candidates, in the order they rank (newest first). [`Store::discover`] finds them by name when that
    /// settles the choice (no listing of a crowded directory): generations older than a missing one are
    /// then not among them (they rank below the chosen one); [`Store::discover_all`] lists every file.
    pub candidates: Vec<Candidate>,
    /// Index of the chosen candidate.
    pub chosen: Option<usize>,
    /// One sentence on why (for logs and `ckpt list`).
    pub explanation: String,
    /// What a user must be told: a checkpoint taken from another job, candidates skipped (another user's
    /// files, other jobs whose identity differs) and why.
    pub notices: Vec<String>,
}

/// A checkpoint chosen for restart.
#[non_exhaustive]
#[derive(Debug)]
pub struct Restored {
    /// The verified checkpoint: the file, or for multi-rank names this rank's part.
    pub checkpoint: Checkpoint,
    /// The file discovery chose (the manifest for multi-rank names).
    pub chosen_path: PathBuf,
    /// Its generation.
    pub generation: u64,
    /// The application step it holds.
    pub app_step: u64,
    /// `Some(job id)` when it was taken from an earlier job of the same application.
    pub other_job: Option<String>,
    /// Newer candidates that were rejected, and why.
    pub rejected: Vec<(PathBuf, Error)>,
    /// The level it was found on (the node-local cache, or the checkpoint directory).
    pub level: Level,
}

struct Probe {
    candidate: Candidate,
    checkpoint: Option<Checkpoint>,
    /// Application name, step id and recorded identity from the header, when at least the header is
    /// readable.
    owner: Option<Owner>,
}

struct Owner {
    app: String,
    step_id: Option<u32>,
    identity: Option<std::result::Result<RunIdentity, String>>,
}

/// Opens and judges one candidate file by itself (structure, trust, generation, kind and ranks); the
/// rules between candidates (whose run, which is newest) are [`Store::discover_impl`]'s.
#[derive(Clone, Copy)]
struct Prober<'a> {
    dir: &'a Path,
    level: Level,
    storage: &'a dyn Storage,
    /// The checkpoint name this run resumes.
    base: &'a str,
    opts: LoadOptions,
    want_kind: FileKind,
    /// The number of ranks the files must be written by (`None`: any, for [`Store::restore_step`]).
    nranks: Option<u32>,
}

impl Prober<'_> {
    /// `name` in the restart directory; `own`: it is under the name this run resumes.
    fn probe(&self, name: &str, own: bool) -> Probe {
        let Prober { dir, level, storage, base, opts, want_kind, nranks } = *self;
        let path = dir.join(name);
        let name_gen = match any_base(name).and_then(|b| classify(b, name)) {
            Some(NameKind::Generation(g)) => Some(g),
            _ => None,
        };
        let mut c = Candidate {
            path: path.clone(),
            generation: name_gen,
            app_step: None,
            job_id: None,
            created_unix_ns: None,
            is_current_name: matches!(classify(base, name), Some(NameKind::Current))
                || (!own && any_base(name) == Some(name)),
            own_job: own,
            level,
            status: CandidateStatus::NotChecked,
        };
        let owner_of = |h: &crate::format::Header| Owner {
            app: h.app_name.clone(),
            step_id: h.step_id,
            identity: RunIdentity::of_header(h),
        };
        match Checkpoint::open_with(storage, &path, opts) {
            Ok(cp) => {
                let h = cp.header();
                let owner = Some(owner_of(h));
                c.generation = Some(h.generation);
                c.app_step = Some(h.app_step);
                c.job_id = Some(h.job_id.clone());
                c.created_unix_ns = Some(h.created_unix_ns);
                // Nobody but this user may have written what restart loads.
                if let Err(e) = trust::check(&cp) {
                    c.status = CandidateStatus::Invalid(e);
                    return Probe { candidate: c, checkpoint: None, owner };
                }
                if name_gen.is_some_and(|g| g != h.generation) {
                    c.status = CandidateStatus::Invalid(
                        Error::corrupt(format!(
                            "file name says generation {} but the header says {}",
                            name_gen.unwrap_or(0),
                            h.generation
                        ))
                        .with_path(&path),
                    );
                    return Probe { candidate: c, checkpoint: None, owner };
                }
                if h.kind != want_kind || nranks.is_some_and(|n| h.nranks != n) {
                    let why = match nranks {
                        Some(n) => {
                            format!("written by a {}-rank job ({:?}) but this job has {n} rank(s)", h.nranks, h.kind)
                        }
                        None => format!("a {:?} file, not a multi-rank step's manifest", h.kind),
                    };
                    c.status = CandidateStatus::Invalid(
                        Error::invalid(format!(
                            "{why}{}",
                            if nranks.is_some() && h.kind == FileKind::Manifest {
                                " (a program that redistributes its data reads any number of ranks' parts with \
                                 Store::restore_step, ckpt_restart_step in C and Fortran, Checkpointer.open_step \
                                 in Python)"
                            } else {
                                ""
                            }
                        ))
                        .with_path(&path),
                    );
                    return Probe { candidate: c, checkpoint: None, owner };
                }
                Probe { candidate: c, checkpoint: Some(cp), owner }
            }
            Err(e) => {
                // The structure is damaged; the header alone may still say whose file this is.
                let owner = crate::reader::read_header(storage, &path).ok().map(|h| {
                    c.job_id = Some(h.job_id.clone());
                    c.app_step = Some(h.app_step);
                    c.created_unix_ns = Some(h.created_unix_ns);
                    owner_of(&h)
                });
                c.status = CandidateStatus::Invalid(e);
                Probe { candidate: c, checkpoint: None, owner }
            }
        }
    }
}

/// Whether the candidate was refused as someone else's to write (trust): it is skipped with a notice.
fn untrusted(p: &Probe) -> bool {
    matches!(&p.candidate.status, CandidateStatus::Invalid(e) if e.kind() == ErrorKind::Untrusted)
}

/// How discovery looks at multi-rank steps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parts {
    /// Every part of a step must verify: what a rank restoring on its own must know, since another rank
    /// whose part is damaged would otherwise fall back to an older step.
    All,
    /// This rank's part only: the MPI helpers agree on the step over all ranks.
    Own,
    /// A step of any number of ranks, every part verified, none of them this rank's own
    /// ([`Store::restore_step`]).
    Every,
}

/// What a restore into the application's buffers ([`Store::restore_into`]) does with a candidate instead
/// of verifying it: `Ok(Ok(()))` verified and copied, `Ok(Err(_))` the candidate does not verify (the next
/// one is tried), `Err(_)` stop (the buffers do not fit the checkpoint: nothing was written).
type Fill<'f> = dyn FnMut(&Checkpoint) -> Result<Result<()>> + 'f;

/// What one discovery pass produced, before it is packaged for its caller.
struct Found {
    discovery: Discovery,
    chosen: Option<(Checkpoint, PathBuf, u64, u64, Option<String>)>,
    /// Own-name generations that are damaged (corrupt), for retention, with their directory.
    damaged: Vec<(PathBuf, u64)>,
}

impl Store {
    /// Finds the newest valid checkpoint in the restart directory and says which files were looked at.
    /// Stops verifying at the first valid candidate (the rest are [`CandidateStatus::NotChecked`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the restart directory exists but cannot be listed; [`ErrorKind::Conflict`] when files
    /// under this run's own name were written by another run (see [`crate::identity`]); [`ErrorKind::NotFound`] when
    /// `CKPT_RESUME_FROM` names another job that has no checkpoint of this user there. Damaged or untrusted candidates
    /// are not errors: they are in [`Discovery::candidates`] with their reason.
    pub fn discover(&self) -> Result<Discovery> {
        self.discover_impl(false, u64::MAX, Parts::All, None).map(|f| f.discovery)
    }

    /// Like [`Store::discover`], but verifies every candidate (for `ckpt list` and `ckpt verify`).
    ///
    /// # Errors
    ///
    /// As [`Store::discover`].
    pub fn discover_all(&self) -> Result<Discovery> {
        self.discover_impl(true, u64::MAX, Parts::All, None).map(|f| f.discovery)
    }

    /// Restart: the newest verified checkpoint of this run (see [`crate::identity`] for whose checkpoints
    /// count), `Ok(None)` when there is none at all (a first run), and an [`ErrorKind::NoValidCheckpoint`]
    /// error when checkpoints exist but none verifies. For a multi-rank step every rank's part must verify,
    /// so that ranks restoring without talking to each other all choose the same step. Notices (a
    /// checkpoint taken from another job, candidates skipped and why) go to stderr and
    /// [`Store::take_restore_notices`].
    ///
    /// # Errors
    ///
    /// As [`Store::discover`]; and [`ErrorKind::NoValidCheckpoint`] when checkpoints exist but none verifies, the
    /// message listing every file and why (unless [`Config::allow_fresh_start`](crate::Config::allow_fresh_start) says
    /// to start fresh). A file another user could have written is skipped with a notice, not an error.
    pub fn restore(&self) -> Result<Option<Restored>> {
        self.restore_with(u64::MAX, Parts::All, None)
    }

    /// [`Store::restore`] and [`Checkpoint::read_into`] of the sections named in `targets`, in one pass over
    /// the chosen file: a candidate's raw sections are checksummed as they are copied into the buffers
    /// ([`Checkpoint::verify_into`]), where a restore followed by reads verifies every byte and then copies
    /// it. The choice is [`Store::restore`]'s: a candidate whose copy does not verify is rejected as a
    /// damaged one is, and the next is copied over it. For a multi-rank step, this rank's part is verified
    /// and then read (two passes, as before).
    ///
    /// The buffers: before anything is written, the checkpoint restart chooses must have every section
    /// named, each of the buffer's length; otherwise the error says which, and no buffer is touched (no
    /// older generation is tried; a candidate that does not fit is verified first, and skipped if damaged,
    /// as `restore()` would). After an `Ok(Some(_))` they hold the chosen checkpoint's
    /// sections. After `Ok(None)` they are untouched: when none verifies and a fresh start is allowed
    /// ([`Config::allow_fresh_start`](crate::Config::allow_fresh_start)) but a damaged candidate was
    /// copied into them before its damage showed, the result is an [`ErrorKind::NoValidCheckpoint`] error
    /// saying so instead. After any other error they may hold bytes of a checkpoint that turned out
    /// damaged, as after a failed [`Checkpoint::read_into`].
    ///
    /// # Errors
    ///
    /// As [`Store::restore`]; [`ErrorKind::SectionNotFound`] and [`ErrorKind::InvalidArgument`] (a buffer
    /// of another length) for the checkpoint restart chooses, as [`Checkpoint::read_into`].
    pub fn restore_into(&self, targets: &mut [(&str, &mut [u8])]) -> Result<Option<Restored>> {
        let names: Vec<String> = targets.iter().map(|(n, _)| (*n).to_string()).collect();
        let mut buffers: Vec<&mut [u8]> = targets.iter_mut().map(|(_, b)| &mut **b).collect();
        self.restore_into_with(&mut buffers, |_| Ok(names.clone()))
    }

    /// [`Store::restore_into`] where the section each buffer is read from depends on the checkpoint:
    /// `sections` names them for a candidate, one name per buffer in order (for a face whose names map to
    /// sections in more than one way across versions, or that checks the sizes itself to say how to
    /// resize). An error from `sections` means the buffers do not fit that candidate, as a missing section
    /// or a buffer of another length does: it is returned when the candidate is the one restart chooses
    /// (it verifies), and nothing is written; a damaged candidate is skipped as `restore()` skips it.
    ///
    /// # Errors
    ///
    /// As [`Store::restore_into`], and the error of `sections` for the chosen checkpoint;
    /// [`ErrorKind::InvalidArgument`] when `sections` names another number of sections than there are buffers.
    pub fn restore_into_with(
        &self,
        buffers: &mut [&mut [u8]],
        mut sections: impl FnMut(&Checkpoint) -> Result<Vec<String>>,
    ) -> Result<Option<Restored>> {
        let count = buffers.len();
        let mut names_for = |cp: &Checkpoint| -> Result<Vec<String>> {
            let names = sections(cp)?;
            if names.len() != count {
                return Err(Error::invalid(format!("{} section name(s) for {count} buffer(s)", names.len())));
            }
            Ok(names)
        };
        let mut filled: Option<PathBuf> = None;
        // A candidate found damaged while it was copied has left its bytes in the buffers.
        let mut touched = false;
        let mut fill = |cp: &Checkpoint| -> Result<Result<()>> {
            let not_fitting = |e: Error| cp.verify().map_or_else(|damaged| Ok(Err(damaged)), |()| Err(e));
            let names = match names_for(cp) {
                Ok(n) => n,
                Err(e) => return not_fitting(e),
            };
            let mut targets: Vec<(&str, &mut [u8])> =
                names.iter().map(String::as_str).zip(buffers.iter_mut().map(|b| &mut **b)).collect();
            let mut wrote = false;
            let result = cp.verify_into_tracked(&mut targets, &mut wrote);
            touched |= wrote && result.is_err();
            match result {
                Ok(()) => {
                    filled = Some(cp.path().to_path_buf());
                    Ok(Ok(()))
                }
                // The buffers do not fit this candidate: an error if it is the one restore() chooses,
                // which it is when it verifies.
                Err(e) if matches!(e.kind(), ErrorKind::SectionNotFound | ErrorKind::InvalidArgument) => not_fitting(e),
                Err(e) => Ok(Err(e)),
            }
        };
        let restored = self.restore_with(u64::MAX, Parts::All, Some(&mut fill))?;
        if restored.is_none() && touched {
            // A fresh start (CKPT_ALLOW_FRESH_START) must not begin from a damaged checkpoint's bytes.
            return Err(Error::new(
                ErrorKind::NoValidCheckpoint,
                format!(
                    "no checkpoint in {} verifies, and the buffers given to the restore now hold bytes of one \
                     found damaged while it was copied into them: initialise them again before starting \
                     from scratch",
                    self.config().restart_dir.display()
                ),
            ));
        }
        if let Some(r) = &restored
            && filled.as_deref() != Some(r.checkpoint.path())
        {
            // A rank's part of a multi-rank step (its manifest was what discovery verified).
            let names = names_for(&r.checkpoint)?;
            for (name, dst) in names.iter().zip(buffers.iter_mut()) {
                r.checkpoint.read_into(name, dst)?;
            }
        }
        Ok(restored)
    }

    /// Like [`Store::restore`], considering only generations up to `max_generation` and verifying only this
    /// rank's part of a multi-rank step: for callers that agree on the generation over all ranks (the MPI
    /// helpers take the minimum over ranks of each one's newest valid generation, then all load that one).
    ///
    /// # Errors
    ///
    /// As [`Store::restore`].
    pub fn restore_at_most(&self, max_generation: u64) -> Result<Option<Restored>> {
        self.restore_with(max_generation, Parts::Own, None)
    }

    fn restore_with(&self, max_generation: u64, parts: Parts, into: Option<&mut Fill<'_>>) -> Result<Option<Restored>> {
        let found = self.discover_impl(false, max_generation, parts, into)?;
        let mut dirs: Vec<&PathBuf> = found.damaged.iter().map(|(d, _)| d).collect();
        dirs.dedup();
        for dir in dirs {
            let generations: Vec<u64> = found.damaged.iter().filter(|(d, _)| d == dir).map(|&(_, g)| g).collect();
            self.note_damaged(dir, &generations);
        }
        let Found { discovery, chosen, .. } = found;
        for n in &discovery.notices {
            eprintln!("ckpt: {n}");
        }
        self.push_restore_notices(&discovery.notices);
        let rejected: Vec<(PathBuf, Error)> = discovery
            .candidates
            .into_iter()
            .filter_map(|c| match c.status {
                CandidateStatus::Invalid(e) if e.kind() != ErrorKind::Untrusted => Some((c.path, e)),
                _ => None,
            })
            .collect();
        match chosen {
            Some((checkpoint, chosen_path, generation, app_step, other_job)) => {
                let level = self.level_of(chosen_path.parent().unwrap_or(Path::new(".")));
                Ok(Some(Restored { checkpoint, chosen_path, generation, app_step, other_job, rejected, level }))
            }
            None if rejected.is_empty() || self.config().allow_fresh_start => Ok(None),
            None => {
                let mut msg = format!(
                    "{} checkpoint file(s) found in {} but none is valid:",
                    rejected.len(),
                    discovery.dir.display()
                );
                for (p, e) in &rejected {
                    let _ = write!(msg, "\n  {}: {}", p.display(), strip_path(e, p));
                }
                msg.push_str("\n(set CKPT_ALLOW_FRESH_START=1 to start from scratch anyway)");
                Err(Error::new(ErrorKind::NoValidCheckpoint, msg).with_path(&discovery.dir))
            }
        }
    }

    /// The generations this rank could restart from, newest first (each verified; for multi-rank steps,
    /// this rank's part). For this workspace's tests (the `testing` feature), not part of the API.
    ///
    /// # Errors
    ///
    /// As [`Store::discover_all`].
    #[cfg(any(test, feature = "testing"))]
    pub fn valid_generations(&self) -> Result<Vec<u64>> {
        let d = self.discover_impl(true, u64::MAX, Parts::Own, None)?.discovery;
        let mut gens: Vec<u64> = d
            .candidates
            .iter()
            .filter(|c| matches!(c.status, CandidateStatus::Valid))
            .filter_map(|c| c.generation)
            .collect();
        gens.dedup();
        Ok(gens)
    }

    /// A resubmitted job has none of its own: the checkpoints of other jobs under the same application and
    /// step that this run may adopt. The ones it may not are listed in `notices` with the reason.
    fn probe_other_jobs(
        &self,
        prober: &Prober<'_>,
        names: &[String],
        own_base: &str,
        me: &RunIdentity,
        notices: &mut Vec<String>,
    ) -> Vec<Probe> {
        let cfg = self.config();
        // A resubmitted job: another job's checkpoints of the same application and step, but only when
        // the identity matches fully (never another task of a job array, another point of a sweep).
        let mut not_adopted: Vec<(String, String)> = Vec::new();
        let mut others: Vec<Probe> = Vec::new();
        for n in names.iter().filter(|n| any_base(n).is_some_and(|b| b != own_base)) {
            let p = prober.probe(n, false);
            // Files whose header is unreadable cannot be attributed to anyone and are left alone.
            let Some(owner) = &p.owner else { continue };
            if owner.app != cfg.app_name || owner.step_id != cfg.step_id {
                continue;
            }
            let job = p.candidate.job_id.clone().unwrap_or_default();
            let why = match &owner.identity {
                _ if untrusted(&p) => match &p.candidate.status {
                    CandidateStatus::Invalid(e) => strip_path(e, &p.candidate.path),
                    _ => String::new(),
                },
                None => "it records no identity (written by an older ckpt)".to_string(),
                Some(Err(e)) => e.clone(),
                Some(Ok(id)) if cfg.resume_from == ResumeFrom::Any => me.owner_mismatches(id).join(", "),
                Some(Ok(id)) => me.adoption_mismatches(id).join(", "),
            };
            if why.is_empty() && cfg.resume_from == ResumeFrom::OwnOnly {
                not_adopted.push((job, "CKPT_RESUME_FROM=none".into()));
            } else if why.is_empty() {
                others.push(p);
            } else {
                not_adopted.push((job, why));
            }
        }
        not_adopted.sort();
        not_adopted.dedup();
        for (job, why) in &not_adopted {
            notices.push(format!(
                "not resuming job {job}'s checkpoint of application {} in {}: {why} (CKPT_RESUME_FROM={job} resumes it)",
                cfg.app_name,
                prober.dir.display()
            ));
        }
        others
    }

    /// Discovery: first by name ([`names_by_probing`]: no listing, whatever else the directories hold),
    /// and when that cannot settle the choice exactly as a listing would (no `<base>`, a newer generation
    /// beside it, nothing valid among the generations found by name, an error to report), again from
    /// listings. `verify_all` (`ckpt list`, `ckpt verify`) always lists: it reports every file.
    fn discover_impl(
        &self,
        verify_all: bool,
        max_generation: u64,
        parts: Parts,
        mut into: Option<&mut Fill<'_>>,
    ) -> Result<Found> {
        if !verify_all
            && let Some(found) = self.discover_pass(false, max_generation, parts, true, into.as_deref_mut())?
        {
            return Ok(found);
        }
        let found = self.discover_pass(verify_all, max_generation, parts, false, into)?;
        Ok(found.expect("a pass over listings always settles"))
    }

    /// One discovery pass. `by_name`: each level's candidates are found by name where possible, and the
    /// pass returns `Ok(None)` unless its choice is the one a pass over listings would make (every
    /// candidate a listing would add ranks below the chosen one), leaving errors and reports on
    /// everything to that pass.
    fn discover_pass(
        &self,
        verify_all: bool,
        max_generation: u64,
        parts: Parts,
        by_name: bool,
        mut into: Option<&mut Fill<'_>>,
    ) -> Result<Option<Found>> {
        let cfg = self.config();
        let dir = cfg.restart_dir.clone();
        let storage = self.storage();
        // Every level this node sees: the cache of the checkpoint directory (unless restart is pointed
        // at another directory), then the restart directory.
        let mut levels: Vec<(PathBuf, Level)> = Vec::new();
        if let Some(cache) = self.cache_dir().filter(|_| cfg.restart_dir == cfg.checkpoint_dir) {
            levels.push((cache.to_path_buf(), Level::Cache));
        }
        levels.push((dir.clone(), Level::Shared));
        let own_base = cfg.base_name();
        let me = cfg.run_identity();
        // The name whose files this run resumes: its own, or the job CKPT_RESUME_FROM names.
        let (base, explicit) = match &cfg.resume_from {
            ResumeFrom::Job(job) => (base_name(job, cfg.step_id), true),
            _ => (own_base.clone(), false),
        };
        // Only checkpoint names are looked at: the directory may hold many other files.
        let checkpoint_name = |n: &std::ffi::OsStr| n.to_str().and_then(any_base).is_some();
        let mut names_by_level: Vec<Vec<String>> = Vec::new();
        // Per level found by name: every checkpoint of `base` there not among its names is of a lower
        // generation than this.
        let mut unseen_below: Vec<u64> = Vec::new();
        for (d, level) in &levels {
            if by_name && let Some((names, below)) = names_by_probing(&**storage, d, &base) {
                names_by_level.push(names);
                unseen_below.push(below);
                continue;
            }
            names_by_level.push(match storage.read_dir_matching(d, &checkpoint_name) {
                Ok(entries) => {
                    entries.into_iter().filter(|e| e.is_file).filter_map(|e| e.name.into_string().ok()).collect()
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    let what = if *level == Level::Cache { "list cache directory" } else { "list restart directory" };
                    return Err(Error::io(what, e).with_path(d));
                }
            });
        }
        let opts = LoadOptions { mmap: cfg.mmap };
        let want_kind = if cfg.nranks > 1 || parts == Parts::Every { FileKind::Manifest } else { FileKind::Data };
        let want_nranks = if parts == Parts::Every { None } else { Some(cfg.nranks) };
        let mut notices: Vec<String> = Vec::new();

        let probers: Vec<Prober<'_>> = levels
            .iter()
            .map(|(d, level)| Prober {
                dir: d,
                level: *level,
                storage: &**storage,
                base: &base,
                opts,
                want_kind,
                nranks: want_nranks,
            })
            .collect();
        let mut probes: Vec<Probe> = Vec::new();
        for (prober, names) in probers.iter().zip(&names_by_level) {
            probes.extend(
                names
                    .iter()
                    .filter(|n| matches!(classify(&base, n), Some(NameKind::Current | NameKind::Generation(_))))
                    .map(|n| prober.probe(n, !explicit)),
            );
        }
        for p in probes.iter().filter(|p| untrusted(p)) {
            if let CandidateStatus::Invalid(e) = &p.candidate.status {
                notices.push(format!("skipped {e}"));
            }
        }
        if !explicit {
            // Files under this run's own name written by another run (a job id reused after a controller
            // reset, another program outside Slurm): resuming them would be silently wrong, and starting
            // fresh would prune them.
            let mut conflicts = Vec::new();
            for p in probes.iter().filter(|p| !untrusted(p)) {
                if let Some(Owner { identity: Some(Ok(id)), .. }) = &p.owner {
                    let why = cfg.resume_conflicts(id);
                    if !why.is_empty() {
                        conflicts.push((p.candidate.path.clone(), why));
                    }
                }
            }
            if !conflicts.is_empty() {
                if by_name {
                    return Ok(None); // the listings name every such file
                }
                return Err(foreign_run_error(cfg, &dir, &conflicts));
            }
        }
        probes.retain(|p| !untrusted(p));
        if by_name && probes.is_empty() {
            return Ok(None); // another job's checkpoints, or nothing: only listings tell
        }
        // Asking for this run's own name explicitly (in a script that also starts the first run) finds
        // nothing on a first run: a fresh start. Another job's name that has nothing is an error.
        if explicit && probes.is_empty() && base != own_base {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "CKPT_RESUME_FROM asks for the checkpoint {base}, but there is none (of this user) in {}",
                    dir.display()
                ),
            )
            .with_path(&dir));
        }
        let mut from_other_jobs = false;
        if probes.is_empty() && !explicit {
            for (prober, names) in probers.iter().zip(&names_by_level) {
                probes.extend(self.probe_other_jobs(prober, names, &own_base, &me, &mut notices));
            }
            from_other_jobs = true;
        }
        // Newest first: by generation for one name; by creation time across jobs. Of one generation, the
        // cache's copy first (the faster read), and the stable name before the generation it is an alias of.
        probes.sort_by(|a, b| {
            let key = |p: &Probe| {
                (
                    if from_other_jobs { p.candidate.created_unix_ns.unwrap_or(i64::MIN) } else { 0 },
                    p.candidate.generation.unwrap_or(0),
                    p.candidate.level == Level::Cache,
                    p.candidate.is_current_name,
                )
            };
            key(b).cmp(&key(a))
        });

        let mut chosen = None;
        let mut chosen_cp = None;
        for (i, p) in probes.iter_mut().enumerate() {
            let Some(cp) = p.checkpoint.as_ref() else {
                continue;
            };
            if p.candidate.generation.is_some_and(|g| g > max_generation) {
                continue;
            }
            if chosen.is_some() && !verify_all {
                continue;
            }
            // Every name is verified on its own: `<base>` and `<base>.<N>` are normally one file, but a copy
            // or a damaged block can make them differ, and each must be judged by its own bytes.
            let candidate_dir = p.candidate.path.parent().map_or_else(|| dir.clone(), Path::to_path_buf);
            let verdict = match into.as_deref_mut() {
                // A single file restored into the application's buffers: verified while it is copied.
                Some(fill) if cp.header().kind != FileKind::Manifest => fill(cp)?.map(|()| None),
                _ => self.verify_candidate(cp, &candidate_dir, parts),
            };
            match verdict {
                Ok(part) => {
                    p.candidate.status = CandidateStatus::Valid;
                    if chosen.is_none() {
                        chosen = Some(i);
                        chosen_cp = Some(part);
                    }
                }
                Err(e) => p.candidate.status = CandidateStatus::Invalid(e),
            }
        }
        if by_name {
            // Candidates a listing would add rank below every generation found by name in their level.
            let settled = chosen
                .and_then(|i| probes[i].candidate.generation)
                .is_some_and(|g| unseen_below.iter().all(|&below| g >= below));
            if !settled {
                return Ok(None);
            }
        }
        let damaged: Vec<(PathBuf, u64)> = if from_other_jobs || explicit {
            Vec::new()
        } else {
            probes
                .iter()
                .filter(|p| matches!(&p.candidate.status, CandidateStatus::Invalid(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::TooLarge)))
                .filter(|p| !p.candidate.is_current_name)
                .filter_map(|p| Some((p.candidate.path.parent()?.to_path_buf(), p.candidate.generation?)))
                .collect()
        };

        let mut result = None;
        let explanation;
        if let Some(i) = chosen {
            let p = &mut probes[i];
            let cp = p.checkpoint.take().expect("chosen has a checkpoint");
            let part = chosen_cp.flatten();
            let generation = cp.generation();
            let step = cp.step();
            let other = (from_other_jobs || (explicit && base != own_base)).then(|| cp.header().job_id.clone());
            let skipped = probes.iter().filter(|q| matches!(q.candidate.status, CandidateStatus::Invalid(_))).count();
            let path = probes[i].candidate.path.clone();
            explanation = match &other {
                Some(job) if from_other_jobs => format!(
                    "no checkpoint of this job; took the newest valid one of job {job} (application {}): {} (generation {generation}, step {step})",
                    cfg.app_name,
                    path.display()
                ),
                Some(job) => format!(
                    "took job {job}'s checkpoint as CKPT_RESUME_FROM asks: {} (generation {generation}, step {step})",
                    path.display()
                ),
                None => format!(
                    "newest valid checkpoint: {} (generation {generation}, step {step}){}",
                    path.display(),
                    if skipped > 0 { format!("; {skipped} newer or damaged file(s) rejected") } else { String::new() }
                ),
            };
            if let Some(job) = &other {
                let why = if from_other_jobs && cfg.resume_from == ResumeFrom::Any {
                    "CKPT_RESUME_FROM=any takes the newest checkpoint of this application in the restart directory"
                } else if from_other_jobs {
                    "this job has none of its own, and that job's user, application, command line, working directory and array task are this run's; CKPT_RESUME_FROM=none forbids this"
                } else {
                    "as CKPT_RESUME_FROM asks"
                };
                notices.push(format!(
                    "resuming from job {job}'s checkpoint {} (generation {generation}, step {step}): {why}",
                    path.display()
                ));
            }
            result = Some((part.unwrap_or(cp), path, generation, step, other));
        } else if probes.is_empty() {
            explanation =
                format!("no checkpoint named {base} (or of application {}) in {}", cfg.app_name, dir.display());
        } else {
            explanation = format!("{} candidate file(s), none valid", probes.len());
        }
        let discovery = Discovery {
            dir,
            candidates: probes.into_iter().map(|p| p.candidate).collect(),
            chosen,
            explanation,
            notices,
        };
        Ok(Some(Found { discovery, chosen: result, damaged }))
    }

    /// Verifies a candidate completely. For a manifest, also this rank's part, which is returned, and with
    /// [`Parts::All`] every other rank's part too (a rank restoring on its own may only choose a step that
    /// every rank can restore).
    fn verify_candidate(&self, cp: &Checkpoint, dir: &Path, parts: Parts) -> Result<Option<Checkpoint>> {
        cp.verify()?;
        if cp.header().kind != FileKind::Manifest {
            return Ok(None);
        }
        let entries = parse_manifest(cp)?;
        let rank = self.config().rank;
        if entries.len() != cp.header().nranks as usize {
            return Err(Error::corrupt(format!(
                "manifest lists {} part(s) for {} rank(s)",
                entries.len(),
                cp.header().nranks
            ))
            .with_path(cp.path()));
        }
        if parts != Parts::Every && rank as usize >= entries.len() {
            return Err(Error::corrupt(format!("manifest has no entry for rank {rank}")).with_path(cp.path()));
        }
        let generation_dir = parts_dir_of(cp, dir);
        let opts = LoadOptions { mmap: self.config().mmap };
        let open_part = |r: u32| open_part(&**self.storage(), opts, cp, &generation_dir, &entries, r);
        if parts == Parts::Every {
            for r in 0..cp.header().nranks {
                open_part(r)?;
            }
            return Ok(None);
        }
        let own = open_part(rank)?;
        if parts == Parts::All {
            for r in (0..cp.header().nranks).filter(|&r| r != rank) {
                open_part(r).map_err(|e| {
                    Error::new(
                        e.kind(),
                        format!(
                            "{} (every rank's part must verify for a rank to choose this step without the MPI helper)",
                            strip_path(&e, cp.path())
                        ),
                    )
                    .with_path(cp.path())
                })?;
            }
        }
        Ok(Some(own))
    }
}

/// The checkpoints of `base` in `dir` found by name, without listing `dir`: `<base>` (the newest committed
/// checkpoint; its header says generation N), then `<base>.<N>`, `<base>.<N-1>`, ... down to the first
/// generation that is missing, and that generation: every other checkpoint of `base` there is older.
/// `None` when this cannot stand for a listing: `<base>` missing, not a regular file or unreadable, or
/// `<base>.<N+1>` present (a save that died between its link and its rename, or a file system without
/// hard links).
fn names_by_probing(storage: &dyn Storage, dir: &Path, base: &str) -> Option<(Vec<String>, u64)> {
    let newest = crate::reader::read_header(storage, &dir.join(base)).ok()?.generation;
    let entry = |g: u64| storage.entry(&dir.join(format!("{base}.{g}")));
    if newest == 0 || newest == u64::MAX || !matches!(entry(newest + 1), Ok(None)) {
        return None;
    }
    let mut names = vec![base.to_string()];
    let mut g = newest;
    while g > 0 {
        match entry(g).ok()? {
            Some(e) if e.is_file => names.push(format!("{base}.{g}")),
            Some(_) => {} // not a candidate, as in a listing
            None => break,
        }
        g -= 1;
    }
    Some((names, g))
}

/// `<dir>/<base>.parts/<generation>` of a manifest in `dir`.
fn parts_dir_of(manifest: &Checkpoint, dir: &Path) -> PathBuf {
    let file_name = manifest.path().file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let base = any_base(file_name).unwrap_or(file_name);
    dir.join(format!("{base}.parts")).join(manifest.generation().to_string())
}

/// Opens rank `r`'s part of the step whose manifest is `manifest` (entries `entries`): trusted, the very
/// file the manifest names (length and checksums), verified completely.
fn open_part(
    storage: &dyn Storage,
    opts: LoadOptions,
    manifest: &Checkpoint,
    generation_dir: &Path,
    entries: &[ManifestEntry],
    r: u32,
) -> Result<Checkpoint> {
    let Some(&ManifestEntry { file_len: len, header_crc32: hc, table_crc32: tc, .. }) = entries.get(r as usize) else {
        return Err(Error::invalid(format!("the step has {} part(s): there is no rank {r}", entries.len()))
            .with_path(manifest.path()));
    };
    let part_path = generation_dir.join(format!("rank{r}.ckpt"));
    let named = |e: Error| {
        Error::new(e.kind(), format!("part of rank {r}: {}", strip_path(&e, &part_path))).with_path(manifest.path())
    };
    let part = Checkpoint::open_with(storage, &part_path, opts).map_err(named)?;
    trust::check(&part).map_err(named)?;
    if part.file_len() != len || part.identity() != (hc, tc) {
        return Err(Error::corrupt(format!(
            "part of rank {r} ({}) is not the file the manifest names",
            part_path.display()
        ))
        .with_path(manifest.path()));
    }
    part.verify().map_err(|e| Error::new(e.kind(), format!("part of rank {r}: {e}")).with_path(manifest.path()))?;
    Ok(part)
}

/// A committed multi-rank step opened to read any rank's part, whatever number of ranks wrote it (see
/// [`Store::restore_step`]): a job restarted on M ranks where N wrote the step reads the parts it needs and
/// redistributes the data itself.
#[derive(Debug)]
pub struct Step {
    manifest: Checkpoint,
    entries: Vec<ManifestEntry>,
    parts_dir: PathBuf,
    storage: std::sync::Arc<dyn Storage>,
    opts: LoadOptions,
    level: Level,
}

impl Step {
    /// The number of ranks that wrote the step (its parts are `0..nranks`).
    pub fn nranks(&self) -> u32 {
        self.entries.len() as u32
    }

    /// The step's generation.
    pub fn generation(&self) -> u64 {
        self.manifest.generation()
    }

    /// The application step it holds.
    pub fn app_step(&self) -> u64 {
        self.manifest.step()
    }

    /// The manifest (its header: job, application, when it was written).
    pub fn manifest(&self) -> &Checkpoint {
        &self.manifest
    }

    /// The level the step was found on.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Rank `rank`'s part, verified again (every CRC) and checked to be the file the manifest names.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for a rank outside `0..nranks`; the part is missing, damaged or
    /// another file than the manifest names ([`ErrorKind::NotFound`], [`ErrorKind::Corrupt`], ...), or
    /// another user could have written it ([`ErrorKind::Untrusted`]).
    pub fn part(&self, rank: u32) -> Result<Checkpoint> {
        open_part(&*self.storage, self.opts, &self.manifest, &self.parts_dir, &self.entries, rank)
    }
}

impl Store {
    /// Restart on another number of ranks: the newest committed multi-rank step of this run, whatever number
    /// of ranks wrote it, with every rank's part verified (so every rank that calls it chooses the same
    /// step); `Ok(None)` when there is none. Read the parts you need with [`Step::part`]. The rules of
    /// [`Store::restore`] apply otherwise (whose files, the cache level first, fallback to older steps, an
    /// error when steps exist but none verifies).
    ///
    /// # Errors
    ///
    /// As [`Store::restore`].
    pub fn restore_step(&self) -> Result<Option<Step>> {
        let Some(r) = self.restore_with(u64::MAX, Parts::Every, None)? else { return Ok(None) };
        let dir = r.chosen_path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let manifest = r.checkpoint;
        let entries = parse_manifest(&manifest)?;
        let parts_dir = parts_dir_of(&manifest, &dir);
        Ok(Some(Step {
            manifest,
            entries,
            parts_dir,
            storage: self.storage().clone(),
            opts: LoadOptions { mmap: self.config().mmap },
            level: r.level,
        }))
    }
}

/// The error for files under this run's own name that another run wrote (see [`crate::identity`]): it
/// names each file and why, both runs, and what to do.
pub(crate) fn foreign_run_error(cfg: &crate::Config, dir: &Path, conflicts: &[(PathBuf, Vec<String>)]) -> Error {
    let me = cfg.run_identity();
    let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut msg = format!(
        "checkpoint(s) named {} in {} belong to another run, not to this one ({:?} in {}):",
        cfg.base_name(),
        shown.display(),
        me.cmdline,
        me.cwd
    );
    for (p, why) in conflicts {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = write!(msg, "\n  {name}: {}", why.join("; "));
    }
    if cfg.job_id.is_none() {
        let _ = write!(
            msg,
            "\nOutside Slurm the name is what identifies a run. To resume it anyway, set CKPT_RESUME_FROM={}; to keep runs apart, give each its own name (CKPT_NAME) or directory (CKPT_DIR).",
            cfg.job_key()
        );
    } else {
        let _ = write!(
            msg,
            "\nTo resume it anyway, set CKPT_RESUME_FROM={}; otherwise move these files away.",
            cfg.job_key()
        );
    }
    Error::new(ErrorKind::Conflict, msg).with_path(shown)
}

fn strip_path(e: &Error, p: &Path) -> String {
    let s = e.to_string();
    let prefix = format!("{}: ", p.display());
    s.strip_prefix(&prefix).map(str::to_string).unwrap_or(s)
}
