//! Multi-rank steps: each rank's part, its identity, and rank 0's commit of the step.

use super::*;

/// Multi-rank: the manifests of a checkpoint directory as a rank's last listing saw them, plus the steps
/// it was told were committed since. A rank lists the directory at its first part and then at most every
/// [`LISTING_REUSE`]: the directory may be the job's working directory with thousands of files, and every
/// rank lists it (on a parallel file system, N readdirs of it per step).
#[derive(Clone, Debug)]
pub(super) struct PartsView {
    pub(super) dir: PathBuf,
    /// Generations whose manifests exist (at most the newest `keep` once steps are reported).
    pub(super) manifests: Vec<u64>,
    /// The highest generation number seen under any kind of entry.
    pub(super) highest: u64,
    pub(super) listed_at: Instant,
}

/// A part this rank wrote: `<dir>/<base>.parts/<generation>/rank<R>.ckpt`.
#[derive(Clone, Debug)]
pub(super) struct OwnPart {
    pub(super) dir: PathBuf,
    pub(super) path: PathBuf,
    pub(super) identity: PartIdentity,
}

/// What the manifest records of a rank's durable part, as the rank that wrote it knows it: MPI helpers
/// gather these to rank 0 ([`Store::part_identity`], then [`Store::commit_step_with_parts`]) so that rank
/// 0 commits a step without opening one file per rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartIdentity {
    /// The part's generation.
    pub generation: u64,
    /// The application step it holds.
    pub app_step: u64,
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

impl Store {
    /// Starts this rank's part of multi-rank generation `generation` (all ranks must use the same number).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for a negative step or one above [`MAX_STEP`](crate::MAX_STEP), or generation 0;
    /// [`ErrorKind::Io`] when the part's directory cannot be created or made durable, or its temporary file cannot be
    /// created; [`ErrorKind::Conflict`] before this process's first part when the newest step under this name
    /// belongs to another run.
    pub fn begin_part(
        &self,
        generation: u64,
        app_step: impl TryInto<u64> + Copy + Display,
    ) -> Result<CheckpointWriter> {
        self.begin_part_in(self.save_dir(), generation, step_arg(app_step)?)
    }

    /// [`Store::begin_part`] into another directory (`ImageDir` of Slurm's removed checkpoint interface).
    ///
    /// # Errors
    ///
    /// As [`Store::begin_part`].
    pub fn begin_part_in(&self, dir: &Path, generation: u64, app_step: u64) -> Result<CheckpointWriter> {
        if generation == 0 {
            return Err(Error::invalid("generation numbers start at 1"));
        }
        // A part goes into the node-local cache only if it is this user's alone, as a whole checkpoint does.
        if self.level_of(dir) == Level::Cache {
            self.check_cache_dir(dir)?;
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
        let first = self.shared.last_generation.load(Ordering::SeqCst) == 0;
        let mut name_warning = None;
        let view = if let Some(view) = self.reusable_parts_view(dir).filter(|_| root_synced && !first) {
            view
        } else {
            let listing = listing_of(dir, &base, &self.scan(dir, &base)?);
            // Before this process's first part: the newest step under the name must be this run's, as for a
            // single save, or this step's retention would remove another run's steps there, their parts and
            // the partner copies kept of them (a sweep run outside Slurm sharing a node's cache).
            if first {
                name_warning = self.check_name_is_ours(dir, &listing)?;
            }
            let view = PartsView {
                dir: dir.to_path_buf(),
                manifests: listing.generations.iter().map(|g| g.0).collect(),
                highest: listing.highest,
                listed_at: listing.listed_at,
            };
            *lock(&self.shared.parts_view) = Some(view.clone());
            view
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
        w.warnings.extend(name_warning);
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
                    v.manifests.truncate(self.keep_in(&dir).max(1));
                    v.highest = v.highest.max(generation);
                    v.manifests.clone()
                }
                None => vec![generation],
            }
        };
        self.prune_own_parts(&dir, &manifests)
    }

    /// The view of `dir`'s manifests when it is recent enough to reuse.
    pub(super) fn reusable_parts_view(&self, dir: &Path) -> Option<PartsView> {
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

    /// Commits multi-rank generation `generation`: waits (up to the configured commit timeout) until every
    /// rank's part is durable and structurally valid, then writes the manifest. Normally called by rank 0
    /// after a barrier, so the wait is short.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for a negative step or one above [`MAX_STEP`](crate::MAX_STEP);
    /// [`ErrorKind::InvalidState`] when some ranks' parts are still missing after `commit_timeout` (the message names
    /// them), or a part is not a data file or not this generation's, step's and rank's part (the ranks did not
    /// checkpoint the same step); as [`Checkpoint::open_with`] for a part that is there but unreadable
    /// (`Corrupt`, `Io`...); as [`CheckpointWriter::commit`] for the manifest. The step does not exist then.
    pub fn commit_step(&self, generation: u64, app_step: impl TryInto<u64> + Copy + Display) -> Result<CommitInfo> {
        self.commit_step_in(self.save_dir(), generation, step_arg(app_step)?)
    }

    /// [`Store::commit_step`] for parts written into `dir`.
    ///
    /// # Errors
    ///
    /// As [`Store::commit_step`].
    ///
    /// # Panics
    ///
    /// Never: the manifest is written only once every rank's part is present.
    pub fn commit_step_in(&self, dir: &Path, generation: u64, app_step: u64) -> Result<CommitInfo> {
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
                match Checkpoint::open_with(&*self.storage, &path, LoadOptions::new().mmap(false)) {
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
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for a negative step or one above [`MAX_STEP`](crate::MAX_STEP), or when `parts`
    /// does not hold one identity per rank; [`ErrorKind::InvalidState`] when an identity is not its rank's part of
    /// this generation and step; as [`CheckpointWriter::commit`] for the manifest.
    pub fn commit_step_with_parts(
        &self,
        generation: u64,
        app_step: impl TryInto<u64> + Copy + Display,
        parts: &[PartIdentity],
    ) -> Result<CommitInfo> {
        self.commit_step_with_parts_in(self.save_dir(), generation, step_arg(app_step)?, parts)
    }

    /// [`Store::commit_step_with_parts`] for parts written into `dir`.
    ///
    /// # Errors
    ///
    /// As [`Store::commit_step_with_parts`].
    pub fn commit_step_with_parts_in(
        &self,
        dir: &Path,
        generation: u64,
        app_step: u64,
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
}

/// Checks that `part` is rank `rank`'s part of `generation` and step `app_step` of a step of `nranks`.
pub(super) fn check_part(part: &PartIdentity, rank: u32, nranks: u32, generation: u64, app_step: u64) -> Result<()> {
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
