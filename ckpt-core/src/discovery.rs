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

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::format::FileKind;
use crate::reader::{Checkpoint, LoadOptions};
use crate::store::{NameKind, Store, any_base, classify, parse_manifest};

/// What discovery concluded about one file.
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
#[derive(Debug)]
pub struct Candidate {
    /// The file.
    pub path: PathBuf,
    /// Generation from the header (or the file name when the header is unreadable).
    pub generation: Option<u64>,
    /// The application step from the header.
    pub app_step: Option<i64>,
    /// Job id recorded in the header.
    pub job_id: Option<String>,
    /// Creation time from the header.
    pub created_unix_ns: Option<i64>,
    /// Whether this is the `<base>` alias of the newest generation.
    pub is_current_name: bool,
    /// Whether the file belongs to this job's own checkpoint name (rather than an earlier job's).
    pub own_job: bool,
    /// The verdict.
    pub status: CandidateStatus,
}

/// Everything discovery saw and what it chose.
#[derive(Debug)]
pub struct Discovery {
    /// The directory searched.
    pub dir: PathBuf,
    /// Candidates, in the order they rank (newest first).
    pub candidates: Vec<Candidate>,
    /// Index of the chosen candidate.
    pub chosen: Option<usize>,
    /// One sentence on why (for logs and `ckpt list`).
    pub explanation: String,
}

/// A checkpoint chosen for restart.
#[derive(Debug)]
pub struct Restored {
    /// The verified checkpoint: the file, or for multi-rank names this rank's part.
    pub checkpoint: Checkpoint,
    /// The file discovery chose (the manifest for multi-rank names).
    pub chosen_path: PathBuf,
    /// Its generation.
    pub generation: u64,
    /// The application step it holds.
    pub app_step: i64,
    /// `Some(job id)` when it was taken from an earlier job of the same application.
    pub other_job: Option<String>,
    /// Newer candidates that were rejected, and why.
    pub rejected: Vec<(PathBuf, Error)>,
}

struct Probe {
    candidate: Candidate,
    checkpoint: Option<Checkpoint>,
    /// Application name and step id from the header, when at least the header is readable.
    owner: Option<(String, Option<u32>)>,
}

impl Store {
    /// Finds the newest valid checkpoint in the restart directory and says which files were looked at.
    /// Stops verifying at the first valid candidate (the rest are [`CandidateStatus::NotChecked`]).
    pub fn discover(&self) -> Result<Discovery> {
        self.discover_impl(false, u64::MAX).map(|(d, _)| d)
    }

    /// Like [`Store::discover`], but verifies every candidate (for `ckpt list` and `ckpt verify`).
    pub fn discover_all(&self) -> Result<Discovery> {
        self.discover_impl(true, u64::MAX).map(|(d, _)| d)
    }

    /// Restart: the newest verified checkpoint, `Ok(None)` when there is none at all (a first run), and an
    /// [`ErrorKind::NoValidCheckpoint`] error when checkpoints exist but none verifies.
    pub fn restore(&self) -> Result<Option<Restored>> {
        self.restore_at_most(u64::MAX)
    }

    /// Like [`Store::restore`], considering only generations up to `max_generation` (multi-rank callers
    /// agree on the minimum over ranks of each one's newest valid generation, then all load that one).
    pub fn restore_at_most(&self, max_generation: u64) -> Result<Option<Restored>> {
        let (discovery, chosen) = self.discover_impl(false, max_generation)?;
        let rejected: Vec<(PathBuf, Error)> = discovery
            .candidates
            .into_iter()
            .filter_map(|c| match c.status {
                CandidateStatus::Invalid(e) => Some((c.path, e)),
                _ => None,
            })
            .collect();
        match chosen {
            Some((checkpoint, chosen_path, generation, app_step, other_job)) => {
                Ok(Some(Restored { checkpoint, chosen_path, generation, app_step, other_job, rejected }))
            }
            None if rejected.is_empty() || self.config().allow_fresh_start => Ok(None),
            None => {
                let mut msg = format!(
                    "{} checkpoint file(s) found in {} but none is valid:",
                    rejected.len(),
                    discovery.dir.display()
                );
                for (p, e) in &rejected {
                    msg.push_str(&format!("\n  {}: {}", p.display(), strip_path(e, p)));
                }
                msg.push_str("\n(set CKPT_ALLOW_FRESH_START=1 to start from scratch anyway)");
                Err(Error::new(ErrorKind::NoValidCheckpoint, msg).with_path(&discovery.dir))
            }
        }
    }

    /// The generations this rank could restart from, newest first (each verified).
    pub fn valid_generations(&self) -> Result<Vec<u64>> {
        let (d, _) = self.discover_impl(true, u64::MAX)?;
        let mut gens: Vec<u64> = d
            .candidates
            .iter()
            .filter(|c| matches!(c.status, CandidateStatus::Valid))
            .filter_map(|c| c.generation)
            .collect();
        gens.dedup();
        Ok(gens)
    }

    #[allow(clippy::type_complexity)]
    fn discover_impl(
        &self,
        verify_all: bool,
        max_generation: u64,
    ) -> Result<(Discovery, Option<(Checkpoint, PathBuf, u64, i64, Option<String>)>)> {
        let cfg = self.config();
        let dir = cfg.restart_dir.clone();
        let storage = self.storage();
        // Only checkpoint names are looked at: the directory may hold many other files.
        let checkpoint_name = |n: &std::ffi::OsStr| n.to_str().and_then(any_base).is_some();
        let names: Vec<String> = match storage.read_dir_matching(&dir, &checkpoint_name) {
            Ok(entries) => {
                entries.into_iter().filter(|e| e.is_file).filter_map(|e| e.name.into_string().ok()).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("list restart directory", e).with_path(&dir)),
        };
        let base = cfg.base_name();
        let opts = LoadOptions { mmap: cfg.mmap };
        let want_kind = if cfg.nranks > 1 { FileKind::Manifest } else { FileKind::Data };

        let probe = |name: &str, own: bool| -> Probe {
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
                is_current_name: matches!(classify(&base, name), Some(NameKind::Current))
                    || (!own && any_base(name) == Some(name)),
                own_job: own,
                status: CandidateStatus::NotChecked,
            };
            match Checkpoint::open_with(&**storage, &path, opts) {
                Ok(cp) => {
                    let h = cp.header();
                    let owner = Some((h.app_name.clone(), h.step_id));
                    c.generation = Some(h.generation);
                    c.app_step = Some(h.app_step);
                    c.job_id = Some(h.job_id.clone());
                    c.created_unix_ns = Some(h.created_unix_ns);
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
                    if h.kind != want_kind || h.nranks != cfg.nranks {
                        c.status = CandidateStatus::Invalid(
                            Error::invalid(format!(
                                "written by a {}-rank job ({:?}) but this job has {} rank(s)",
                                h.nranks, h.kind, cfg.nranks
                            ))
                            .with_path(&path),
                        );
                        return Probe { candidate: c, checkpoint: None, owner };
                    }
                    Probe { candidate: c, checkpoint: Some(cp), owner }
                }
                Err(e) => {
                    // The structure is damaged; the header alone may still say whose file this is.
                    let owner = crate::reader::read_header(&**storage, &path).ok().map(|h| {
                        c.job_id = Some(h.job_id.clone());
                        c.app_step = Some(h.app_step);
                        c.created_unix_ns = Some(h.created_unix_ns);
                        (h.app_name, h.step_id)
                    });
                    c.status = CandidateStatus::Invalid(e);
                    Probe { candidate: c, checkpoint: None, owner }
                }
            }
        };

        let mut probes: Vec<Probe> = names
            .iter()
            .filter(|n| matches!(classify(&base, n), Some(NameKind::Current | NameKind::Generation(_))))
            .map(|n| probe(n, true))
            .collect();
        let mut from_other_jobs = false;
        if probes.is_empty() {
            // A resubmitted job: look for the same application's checkpoints under other job ids.
            probes = names
                .iter()
                .filter(|n| any_base(n).is_some_and(|b| b != base))
                .map(|n| probe(n, false))
                // Files whose header names this application count, even when damaged: a resubmitted job
                // must not start fresh silently because its predecessor's checkpoint is broken. Files
                // whose header is unreadable cannot be attributed to anyone and are left alone.
                .filter(|p| p.owner.as_ref().is_some_and(|(app, step)| *app == cfg.app_name && *step == cfg.step_id))
                .collect();
            from_other_jobs = true;
        }
        // Newest first: by generation for one name; by creation time across jobs. The stable name sorts
        // before the generation it is an alias of.
        probes.sort_by(|a, b| {
            let key = |p: &Probe| {
                (
                    if from_other_jobs { p.candidate.created_unix_ns.unwrap_or(i64::MIN) } else { 0 },
                    p.candidate.generation.unwrap_or(0),
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
            let ok = self.verify_candidate(cp, &dir);
            match ok {
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

        let mut result = None;
        let explanation;
        if let Some(i) = chosen {
            let p = &mut probes[i];
            let cp = p.checkpoint.take().expect("chosen has a checkpoint");
            let part = chosen_cp.flatten();
            let generation = cp.generation();
            let step = cp.step();
            let other = from_other_jobs.then(|| cp.header().job_id.clone());
            let skipped = probes.iter().filter(|q| matches!(q.candidate.status, CandidateStatus::Invalid(_))).count();
            explanation = match &other {
                Some(job) => format!(
                    "no checkpoint of this job; took the newest valid one of job {job} (application {}): {} (generation {generation}, step {step})",
                    cfg.app_name,
                    probes[i].candidate.path.display()
                ),
                None => format!(
                    "newest valid checkpoint: {} (generation {generation}, step {step}){}",
                    probes[i].candidate.path.display(),
                    if skipped > 0 { format!("; {skipped} newer or damaged file(s) rejected") } else { String::new() }
                ),
            };
            let path = probes[i].candidate.path.clone();
            result = Some((part.unwrap_or(cp), path, generation, step, other));
        } else if probes.is_empty() {
            explanation =
                format!("no checkpoint named {base} (or of application {}) in {}", cfg.app_name, dir.display());
        } else {
            explanation = format!("{} candidate file(s), none valid", probes.len());
        }
        let discovery =
            Discovery { dir, candidates: probes.into_iter().map(|p| p.candidate).collect(), chosen, explanation };
        Ok((discovery, result))
    }

    /// Verifies a candidate completely. For a manifest, also this rank's part, which is returned.
    fn verify_candidate(&self, cp: &Checkpoint, dir: &Path) -> Result<Option<Checkpoint>> {
        cp.verify()?;
        if cp.header().kind != FileKind::Manifest {
            return Ok(None);
        }
        let entries = parse_manifest(cp)?;
        let rank = self.config().rank;
        let (_, len, hc, tc) = *entries
            .get(rank as usize)
            .ok_or_else(|| Error::corrupt(format!("manifest has no entry for rank {rank}")).with_path(cp.path()))?;
        let file_name = cp.path().file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let base = any_base(file_name).unwrap_or(file_name);
        let part_path =
            dir.join(format!("{base}.parts")).join(cp.generation().to_string()).join(format!("rank{rank}.ckpt"));
        let part = Checkpoint::open_with(&**self.storage(), &part_path, LoadOptions { mmap: self.config().mmap })
            .map_err(|e| {
                Error::new(e.kind(), format!("part of rank {rank}: {}", strip_path(&e, &part_path)))
                    .with_path(cp.path())
            })?;
        if part.file_len() != len || part.identity() != (hc, tc) {
            return Err(Error::corrupt(format!(
                "part of rank {rank} ({}) is not the file the manifest names",
                part_path.display()
            ))
            .with_path(cp.path()));
        }
        part.verify().map_err(|e| Error::new(e.kind(), format!("part of rank {rank}: {e}")).with_path(cp.path()))?;
        Ok(Some(part))
    }
}

fn strip_path(e: &Error, p: &Path) -> String {
    let s = e.to_string();
    let prefix = format!("{}: ", p.display());
    s.strip_prefix(&prefix).map(str::to_string).unwrap_or(s)
}
