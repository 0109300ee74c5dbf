//! The cache level's side of the store (see [`crate::levels`]): which directory saves go to, and the copy
//! of a committed checkpoint from the cache to the checkpoint directory ("flush") with the same commit
//! protocol as a save: a temporary file, every byte verified, fsync, link, rename, fsync of the directory,
//! then retention.

use super::*;
use crate::levels::Level;

/// Bytes per write of a copy to the checkpoint directory.
const COPY_CHUNK: usize = 8 << 20;

impl Store {
    /// The node-local cache directory of this store's checkpoint directory (`None` without a cache level).
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// Where saves are committed first: the cache directory, or the checkpoint directory without a cache
    /// level.
    pub fn save_dir(&self) -> &Path {
        self.cache_dir.as_deref().unwrap_or(&self.config.checkpoint_dir)
    }

    /// The level a directory of this store is: the cache directory, or anything else (the checkpoint
    /// directory, a directory `ckpt create --image-dir` named).
    pub fn level_of(&self, dir: &Path) -> Level {
        if self.cache_dir.as_deref() == Some(dir) { Level::Cache } else { Level::Shared }
    }

    /// Before the first save to the cache directory: it must be a directory of this user that nobody else
    /// may write (a node-local directory such as `/dev/shm` is shared by every user of the node: a
    /// directory another user created under the expected name would let them replace what restart
    /// loads). Created (mode 0700) when missing.
    pub(super) fn check_cache_dir(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        if self.shared.cache_checked.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.storage.create_dir_all(dir).map_err(|e| Error::io("create cache directory", e).with_path(dir))?;
        // The real file system only (in-memory storages used by tests have no owners).
        match std::fs::symlink_metadata(dir) {
            Ok(m) if !m.file_type().is_dir() => {
                return Err(Error::new(
                    ErrorKind::Untrusted,
                    "the cache directory is not a directory (a symbolic link?)",
                )
                .with_path(dir));
            }
            Ok(m) if m.uid() != crate::sys::euid() || m.mode() & 0o022 != 0 => {
                return Err(Error::new(
                    ErrorKind::Untrusted,
                    format!(
                        "the cache directory belongs to uid {} with mode {:o}: it must be this user's (uid {}) and \
                         writable by no one else; remove it or choose another CKPT_CACHE_DIR",
                        m.uid(),
                        m.mode() & 0o7777,
                        crate::sys::euid()
                    ),
                )
                .with_path(dir));
            }
            _ => {}
        }
        self.shared.cache_checked.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Generations kept in `dir`.
    pub(super) fn keep_in(&self, dir: &Path) -> usize {
        match (&self.config.cache, self.level_of(dir)) {
            (Some(cache), Level::Cache) => cache.keep,
            _ => self.config.keep,
        }
    }

    /// The highest generation in the checkpoint directory, read once before this process's first save to
    /// the cache: a job restarted on another node (its cache empty) continues the numbering of the shared
    /// level instead of writing generations that restart would rank below the old ones. Also checks that
    /// the shared level's newest checkpoint under this name is this run's ([`Store::check_name_is_ours`]),
    /// as the first save there would.
    pub(super) fn shared_highest_before_first_save(&self) -> Result<(u64, Option<String>)> {
        let dir = self.config.checkpoint_dir.clone();
        let base = self.config.base_name();
        let entries = match self.storage.read_dir_matching(&dir, &|n| n.as_encoded_bytes().starts_with(base.as_bytes()))
        {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, None)),
            Err(e) => return Err(Error::io("open checkpoint directory", e).with_path(&dir)),
        };
        let listing = listing_of(&dir, &base, &entries);
        let warning = self.check_name_is_ours(&dir, &listing)?;
        Ok((listing.highest, warning))
    }

    /// Copies a committed checkpoint of this store's cache (opened by the caller, so that a prune of the
    /// cache meanwhile cannot take it away) to the checkpoint directory under the same generation, and
    /// commits it there: written to a temporary file (over the checkpoint directory's spare when there is
    /// one, as a save there), verified completely (every CRC, every byte; the copy is read back from
    /// memory while its fsync, on another thread, writes it out), fsynced, linked to
    /// `<base>.<N>`, renamed to `<base>` unless a newer generation is there already, the directory fsynced;
    /// then generations beyond `keep` are retired there. A generation already in the checkpoint directory
    /// as this very file (the same length and checksums) counts as copied.
    ///
    /// Whole checkpoints of one process, and a multi-rank step's manifest once every part is there
    /// ([`Store::flush_step`]); parts are copied with [`Store::flush_part`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for a rank's part or a manifest; [`ErrorKind::Io`] when the copy
    /// cannot be written or made durable (the temporary file is removed; the checkpoint directory is as
    /// it was); [`ErrorKind::Corrupt`] when the copy does not verify; [`ErrorKind::Conflict`] when the
    /// generation is there already as another file, or the name's checkpoints there belong to another run.
    pub fn flush_checkpoint(&self, source: &Checkpoint) -> Result<CommitInfo> {
        let started = Instant::now();
        let header = source.header().clone();
        if header.kind == FileKind::Data && header.nranks > 1 {
            return Err(Error::invalid("a rank's part is copied with Store::flush_part").with_path(source.path()));
        }
        let dir = self.config.checkpoint_dir.clone();
        let base = self.config.base_name();
        let gen_path = dir.join(format!("{base}.{}", header.generation));
        if let Some(info) = self.already_copied(source, &gen_path, started)? {
            return Ok(info);
        }
        let listing = self.list_generations(&dir, &base)?;
        let mut warnings = Vec::new();
        if listing.generations.iter().all(|&(g, _)| g < header.generation) && listing.highest < header.generation {
            // The newest there must be of the run that wrote the copy before its retention may remove
            // anything there.
            let writer = match crate::identity::RunIdentity::of_header(&header) {
                Some(Ok(id)) => id,
                _ => self.config.run_identity(),
            };
            warnings.extend(self.check_name_is_of(&dir, &listing, &writer)?);
        }
        let tmp = dir.join(format!("{base}.tmp.{}.{}.{:x}", self.config.host, std::process::id(), nonce()));
        let result = self.copy_and_publish_with(source, &tmp, Plan::Single { listing }, started, warnings);
        match result {
            Ok(info) => Ok(info),
            Err(e) if e.kind() == ErrorKind::Conflict => {
                // Another process (`ckpt flush` in an epilog, say) copied it meanwhile.
                match self.already_copied(source, &gen_path, started)? {
                    Some(info) => Ok(info),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn copy_and_publish(&self, source: &Checkpoint, tmp: &Path, plan: Plan, started: Instant) -> Result<CommitInfo> {
        self.copy_and_publish_with(source, tmp, plan, started, Vec::new())
    }

    /// Writes `source`'s bytes to `tmp` (a whole checkpoint: over the spare of `plan`'s directory, which
    /// the commit then renews), reads the copy back and verifies it while it is fsynced, and publishes it as
    /// `plan` says (the commit's link/rename, directory fsync and retention). The temporary file is
    /// removed on failure.
    fn copy_and_publish_with(
        &self,
        source: &Checkpoint,
        tmp: &Path,
        plan: Plan,
        started: Instant,
        warnings: Vec<String>,
    ) -> Result<CommitInfo> {
        let header = source.header().clone();
        let opts =
            WriteOptions::new(self.config.file_mode).direct_io(false).bounded_writeback(false).write_behind(false);
        let (mut plan, mut warnings) = (plan, warnings);
        // A copy of a whole checkpoint writes over the checkpoint directory's spare, as a save there does:
        // its blocks, and its pages where they are still cached (new page cache and new blocks cost the
        // copy about half its speed here; BENCHMARKS.md, "Levels and asynchronous saves").
        let spare_min_len = match &plan {
            Plan::Single { listing } => self.spare_min_len(&listing.dir),
            _ => None,
        };
        let had_spare = matches!(&plan, Plan::Single { listing } if listing.spare);
        let taken = match &plan {
            Plan::Single { listing } => {
                let dir = listing.dir.clone();
                self.take_spare(&dir, &mut plan, tmp, spare_min_len, opts, &mut warnings)
            }
            _ => None,
        };
        let reused_spare = taken.is_some();
        let mut file = match taken {
            Some(file) => file,
            None => {
                if had_spare {
                    // A takeover that failed half-way may have left this name behind: it is this copy's own.
                    let _ = self.storage.remove_file(tmp);
                }
                self.storage
                    .create_new_with(tmp, opts)
                    .map_err(|e| Error::io("create temporary file", e).with_path(tmp))?
            }
        };
        let mut writer = self.publisher(tmp, plan, started);
        writer.warnings = warnings;
        writer.spare_min_len = spare_min_len;
        writer.reused_spare = reused_spare;
        let mapped = source.is_mapped();
        source.for_each_chunk(COPY_CHUNK, |chunk| {
            if mapped {
                // The source's pages mapped in one call, so the write does not take a fault per page.
                crate::sys::populate_read(chunk);
            }
            file.write_all(chunk).map_err(|e| Error::io("write", e).with_path(tmp))
        })?;
        // Read back what was written while the fsync writes it out: the pages are still in memory, so the
        // check costs a pass over memory, not a read of the device, and it runs beside the writeback (on
        // another thread) instead of before it. The copy is published only when both succeeded.
        let verify = || -> Result<()> {
            let copy = Checkpoint::open_with(&*self.storage, tmp, self.load_options())?;
            if copy.file_len() != source.file_len() || copy.identity() != source.identity() {
                return Err(Error::corrupt(format!(
                    "the copy of {} is not the same file ({} bytes, checksums {:08x?}; the original {} bytes, {:08x?})",
                    source.path().display(),
                    copy.file_len(),
                    copy.identity(),
                    source.file_len(),
                    source.identity()
                ))
                .with_path(tmp));
            }
            copy.verify()
        };
        // A spare longer than the copy: cut before it is read back (its `sync` would, but runs beside).
        file.cut_to_written().map_err(|e| Error::io("truncate", e).with_path(tmp))?;
        let file = std::sync::Mutex::new(file);
        let sync = || lock(&file).sync();
        let (synced, verified) = if crate::storage::io_threads_allowed() {
            std::thread::scope(|s| {
                let syncing = std::thread::Builder::new().name("ckpt-fsync".into()).spawn_scoped(s, sync);
                match syncing {
                    Ok(h) => {
                        let verified = verify();
                        (h.join().unwrap_or_else(|_| Err(io::Error::other("the fsync thread panicked"))), verified)
                    }
                    // No thread (the closure that would have run on it is dropped unrun): in sequence.
                    Err(_) => {
                        let verified = verify();
                        (sync(), verified)
                    }
                }
            })
        } else {
            let verified = verify();
            (if verified.is_ok() { sync() } else { Ok(()) }, verified)
        };
        verified?;
        synced.map_err(|e| Error::io("fsync", e).with_path(tmp))?;
        drop(file);
        let stats = FileStats {
            raw_bytes: source.raw_len(),
            file_bytes: source.file_len(),
            sections: source.sections().len() as u32,
        };
        let (header_crc32, table_crc32) = source.identity();
        // On failure the writer's drop removes the temporary file (not done).
        let info = writer.publish(&header, stats, header_crc32, table_crc32)?;
        writer.done = true;
        Ok(info)
    }

    /// Copies this rank's committed part of a multi-rank step from the cache to the checkpoint directory
    /// (`<dir>/<base>.parts/<N>/rank<R>.ckpt`), verified, fsynced and renamed into place, its directories
    /// made durable. A part there already as this very file counts as copied. Rank 0 commits the step
    /// there once every part is ([`Store::flush_step`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the copy cannot be written or made durable; [`ErrorKind::Corrupt`] when it
    /// does not verify; [`ErrorKind::Conflict`] when another file is there under its name.
    pub fn flush_part(&self, source: &Checkpoint) -> Result<CommitInfo> {
        let started = Instant::now();
        let header = source.header().clone();
        let dir = self.config.checkpoint_dir.clone();
        let base = self.config.base_name();
        let parts_root = dir.join(format!("{base}.parts"));
        let part_dir = parts_root.join(header.generation.to_string());
        let name = format!("rank{}.ckpt", header.rank);
        let path = part_dir.join(&name);
        if let Some(mut info) = self.already_copied(source, &path, started)? {
            info.path = path;
            return Ok(info);
        }
        self.storage.create_dir_all(&part_dir).map_err(|e| Error::io("create directory", e).with_path(&part_dir))?;
        for d in [dir.as_path(), parts_root.as_path()] {
            self.storage.sync_dir(d).map_err(|e| Error::io("fsync directory", e).with_path(d))?;
        }
        let tmp = part_dir.join(format!("{name}.tmp.{}.{}.{:x}", self.config.host, std::process::id(), nonce()));
        let plan = Plan::Part { dir: part_dir.clone(), name, checkpoint_dir: dir.clone() };
        let mut info = self.copy_and_publish(source, &tmp, plan, started)?;
        info.path = path;
        Ok(info)
    }

    /// Rank 0: commits a multi-rank step in the checkpoint directory from the cache's manifest, once every
    /// rank's part is there as the very file the manifest names (waiting for the ranks' copies, at most
    /// the commit timeout), then retires old steps there. Afterwards the step is durable.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidState`] when parts are still missing after the commit timeout (naming the
    /// ranks); as [`Store::flush_checkpoint`].
    pub fn flush_step(&self, manifest: &Checkpoint) -> Result<CommitInfo> {
        let started = Instant::now();
        let entries = parse_manifest(manifest)?;
        let part_dir = self
            .config
            .checkpoint_dir
            .join(format!("{}.parts", self.config.base_name()))
            .join(manifest.generation().to_string());
        let mut done = vec![false; entries.len()];
        loop {
            for (r, e) in entries.iter().enumerate() {
                if done[r] {
                    continue;
                }
                let path = part_dir.join(format!("rank{r}.ckpt"));
                if let Ok(cp) = Checkpoint::open_with(&*self.storage, &path, LoadOptions::new().mmap(false))
                    && cp.file_len() == e.file_len
                    && cp.identity() == (e.header_crc32, e.table_crc32)
                {
                    done[r] = true;
                }
            }
            let missing: Vec<usize> = (0..entries.len()).filter(|&r| !done[r]).collect();
            if missing.is_empty() {
                break;
            }
            if started.elapsed() >= self.config.commit_timeout {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "waited {:?} for the copies of ranks {missing:?} of generation {} in the checkpoint directory",
                        self.config.commit_timeout,
                        manifest.generation()
                    ),
                )
                .with_path(&part_dir));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.flush_checkpoint(manifest)
    }

    /// Ranks but 0: waits until the step of `generation` is committed in the checkpoint directory (its
    /// manifest there), at most the commit timeout.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidState`] when it is not after the commit timeout.
    pub fn wait_for_step(&self, generation: u64) -> Result<()> {
        let started = Instant::now();
        let path = self.config.checkpoint_dir.join(format!("{}.{generation}", self.config.base_name()));
        loop {
            if matches!(self.storage.exists(&path), Ok(true)) {
                return Ok(());
            }
            if started.elapsed() >= self.config.commit_timeout {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "waited {:?} for rank 0 to commit generation {generation} in the checkpoint directory",
                        self.config.commit_timeout
                    ),
                )
                .with_path(&path));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A rank other than 0, told a multi-rank step was committed (with the identities rank 0 committed):
    /// records the step's manifest in this rank's node-local cache too, unless it is there already (a
    /// rank on rank 0's node), so that a restart on the same nodes finds the step in every node's cache.
    /// `Ok(false)` when there is nothing to record (no cache level, or the manifest is there).
    ///
    /// # Errors
    ///
    /// As [`Store::commit_step_with_parts`].
    pub fn record_step(&self, generation: u64, app_step: u64, parts: &[PartIdentity]) -> Result<bool> {
        let Some(cache) = self.cache_dir.clone() else { return Ok(false) };
        let manifest = cache.join(format!("{}.{generation}", self.config.base_name()));
        if matches!(self.storage.exists(&manifest), Ok(true)) {
            return Ok(false);
        }
        let nranks = self.config.nranks;
        if parts.len() != nranks as usize {
            return Err(Error::invalid(format!("{} part identities for a step of {nranks} ranks", parts.len())));
        }
        for (r, part) in parts.iter().enumerate() {
            check_part(part, r as u32, nranks, generation, app_step)?;
        }
        match self.write_manifest(&cache, generation, app_step, parts, Instant::now(), true) {
            Ok(_) => Ok(true),
            // Another rank of this node recorded it at the same time.
            Err(e) if e.kind() == ErrorKind::Conflict && matches!(self.storage.exists(&manifest), Ok(true)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// This rank's committed part of `generation` in the cache, if this process wrote one.
    pub(crate) fn cached_part(&self, generation: u64) -> Option<PathBuf> {
        let cache = self.cache_dir.as_deref()?;
        lock(&self.shared.own_parts)
            .iter()
            .find(|p| p.identity.generation == generation && p.dir == cache)
            .map(|p| p.path.clone())
    }

    /// `Some` when `gen_path` exists and is `source`'s copy; a conflict when it is another file.
    fn already_copied(&self, source: &Checkpoint, gen_path: &Path, started: Instant) -> Result<Option<CommitInfo>> {
        match self.storage.exists(gen_path) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => return Err(Error::io("stat", e).with_path(gen_path)),
        }
        let there = Checkpoint::open_with(&*self.storage, gen_path, self.load_options())?;
        if there.file_len() != source.file_len() || there.identity() != source.identity() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "generation {} is in the checkpoint directory already, as another file than the cache's {}",
                    source.generation(),
                    source.path().display()
                ),
            )
            .with_path(gen_path));
        }
        let dir = gen_path.parent().unwrap_or(Path::new("."));
        Ok(Some(CommitInfo {
            path: dir.join(self.config.base_name()),
            generation_path: gen_path.to_path_buf(),
            generation: source.generation(),
            app_step: source.step(),
            stats: FileStats {
                raw_bytes: source.raw_len(),
                file_bytes: source.file_len(),
                sections: source.sections().len() as u32,
            },
            seconds: started.elapsed().as_secs_f64(),
            warnings: Vec::new(),
            reused_spare: false,
        }))
    }

    /// The cache's generations of this store's name that the checkpoint directory does not hold, oldest
    /// first (what `ckpt flush` copies).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when a directory cannot be listed.
    pub fn cached_not_flushed(&self) -> Result<Vec<u64>> {
        let Some(cache) = self.cache_dir.clone() else { return Ok(Vec::new()) };
        let base = self.config.base_name();
        let generations_in = |dir: &Path| -> Result<Vec<u64>> {
            let names = match self.storage.list_names(dir) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(Error::io("list directory", e).with_path(dir)),
            };
            Ok(names
                .iter()
                .filter_map(|n| n.to_str())
                .filter_map(|n| match classify(&base, n) {
                    Some(NameKind::Generation(g)) => Some(g),
                    _ => None,
                })
                .collect())
        };
        let shared = generations_in(&self.config.checkpoint_dir)?;
        let newest_shared = shared.iter().copied().max().unwrap_or(0);
        let mut missing: Vec<u64> =
            generations_in(&cache)?.into_iter().filter(|g| *g > newest_shared && !shared.contains(g)).collect();
        missing.sort_unstable();
        Ok(missing)
    }
}
