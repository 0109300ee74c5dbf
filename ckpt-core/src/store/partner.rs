//! Partner copies (`CKPT_PARTNER=1`, see [`crate::levels`]): each rank's part of a multi-rank step is also
//! kept in the node-local cache of a rank on another node, so that a job that loses one node (its cache
//! with it) restarts from the partners' caches without the checkpoint directory.
//!
//! The MPI helpers move the bytes (libckpt links no MPI); this module owns the files at both ends:
//!
//! ```text
//! <cache>/<base>.parts/<N>/rank<R>.ckpt     rank R's own part of generation N (the cache level)
//! <cache>/<base>.partner/<N>/rank<S>.ckpt   the copy this node keeps of rank S's part of generation N
//! ```
//!
//! A file received from another node is written to a temporary file next to its place, and counts only
//! once it is exactly the part it is announced as (the identity rank 0 committed: length, rank, generation,
//! step and checksums), verifies completely (every CRC) and belongs to this run; then it is fsynced and
//! renamed into place, its directory fsynced. Partner copies of generations beyond the cache's `keep` are
//! removed after each new one. Restoring a lost part writes it as the rank's own cached part, so restart
//! discovery finds it like any other.

use super::*;
use crate::storage::StorageWriter;

/// Which copy of a rank's part a transfer reads or writes.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartCopy {
    /// This rank's own part, in its node's cache (`<cache>/<base>.parts/<N>/rank<R>.ckpt`).
    Own,
    /// The copy this node keeps of another rank's part (`<cache>/<base>.partner/<N>/rank<S>.ckpt`).
    Partner,
}

/// A part being received from another node ([`Store::receive_part`]): bytes in order, then
/// [`Store::commit_received_part`]. Dropped without a commit, its temporary file is removed.
pub struct PartReceiver {
    // Dropped first: the file is closed before the writer's drop removes it.
    file: Box<dyn StorageWriter>,
    publisher: CheckpointWriter,
    copy: PartCopy,
    generation: u64,
    rank: u32,
    received: u64,
}

impl std::fmt::Debug for PartReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartReceiver")
            .field("copy", &self.copy)
            .field("generation", &self.generation)
            .field("rank", &self.rank)
            .field("received", &self.received)
            .field("tmp", &self.publisher.tmp)
            .finish_non_exhaustive()
    }
}

impl PartReceiver {
    /// Which copy, of which generation and rank, this receives.
    pub fn target(&self) -> (PartCopy, u64, u32) {
        (self.copy, self.generation, self.rank)
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends the bytes that start at `offset` of the file (the bytes received so far: transfers are in
    /// order).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] when `offset` is not the number of bytes received so far;
    /// [`ErrorKind::Io`] when they cannot be written.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        if offset != self.received {
            return Err(Error::invalid(format!(
                "bytes of rank {}'s part of generation {} arrive at offset {offset}, but {} bytes were received \
                 so far: transfers are in order",
                self.rank, self.generation, self.received
            ))
            .with_path(&self.publisher.tmp));
        }
        self.file.write_all(bytes).map_err(|e| Error::io("write", e).with_path(&self.publisher.tmp))?;
        self.received += bytes.len() as u64;
        Ok(())
    }
}

impl Store {
    /// Whether this process keeps partner copies: `CKPT_PARTNER=1` with a cache level.
    pub fn has_partner_copies(&self) -> bool {
        self.cache_dir.is_some() && self.config.cache.as_ref().is_some_and(|c| c.partner)
    }

    /// The name of this process's node, for placing partner copies on another node: `CKPT_NODE_ID` when
    /// set (tests simulate nodes with it), else Slurm's `SLURM_TOPOLOGY_ADDR` (the node's place in the
    /// network topology, ending with its name), else the host name.
    pub fn node_name(&self) -> String {
        self.config.cache.as_ref().and_then(|c| c.node.clone()).unwrap_or_else(|| self.config.host.clone())
    }

    /// Where `copy` of `rank`'s part of `generation` lies in the cache.
    fn cached_part_path(&self, copy: PartCopy, generation: u64, rank: u32) -> Result<PathBuf> {
        let Some(cache) = self.cache_dir.as_deref() else {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "parts are exchanged between nodes' caches only with a cache level (CKPT_CACHE_DIR)",
            ));
        };
        if generation == 0 {
            return Err(Error::invalid("generation numbers start at 1"));
        }
        let base = self.config.base_name();
        match copy {
            PartCopy::Own if rank != self.config.rank => Err(Error::invalid(format!(
                "rank {} reads or writes its own part only, not rank {rank}'s",
                self.config.rank
            ))),
            PartCopy::Own => {
                Ok(cache.join(format!("{base}.parts")).join(generation.to_string()).join(format!("rank{rank}.ckpt")))
            }
            PartCopy::Partner if rank >= self.config.nranks => {
                Err(Error::invalid(format!("rank {rank} is not a rank of this job of {} ranks", self.config.nranks)))
            }
            PartCopy::Partner => {
                Ok(cache.join(format!("{base}.partner")).join(generation.to_string()).join(format!("rank{rank}.ckpt")))
            }
        }
    }

    /// Reads `buf.len()` bytes at `offset` of `copy` of `rank`'s part of `generation` in this node's cache
    /// (to send them to another node; the receiver verifies what arrives).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidState`] without a cache level; [`ErrorKind::InvalidArgument`] for another rank's
    /// own part, a rank out of range or generation 0; [`ErrorKind::NotFound`] when the cache does not hold
    /// it; [`ErrorKind::Untrusted`] when the file or a directory on its way from the cache directory is
    /// another user's or writable by others; [`ErrorKind::Io`] when it cannot be read (also past its end).
    pub fn read_cached_part(
        &self,
        copy: PartCopy,
        generation: u64,
        rank: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let path = self.cached_part_path(copy, generation, rank)?;
        // What restart sends back to a lost node must be what this user's run kept, not a file another
        // user could have put there.
        self.check_private_path(&path, true)?;
        let file = self.storage.open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::new(
                    ErrorKind::NotFound,
                    format!("this node's cache holds no copy of rank {rank}'s part of generation {generation}"),
                )
                .with_path(&path)
            } else {
                Error::io("open", e).with_path(&path)
            }
        })?;
        file.read_exact_at(buf, offset).map_err(|e| Error::io("read", e).with_path(&path))
    }

    /// Starts receiving `copy` of `rank`'s part of `generation` into this node's cache: a temporary file
    /// next to its place.
    ///
    /// # Errors
    ///
    /// As [`Store::read_cached_part`] for the arguments; [`ErrorKind::Untrusted`] when the cache directory,
    /// or a directory below it on the way to the copy's place, is not this user's alone; [`ErrorKind::Io`]
    /// when the directories or the temporary file cannot be created.
    pub fn receive_part(&self, copy: PartCopy, generation: u64, rank: u32) -> Result<PartReceiver> {
        let path = self.cached_part_path(copy, generation, rank)?;
        let cache = self.cache_dir.clone().unwrap_or_default();
        self.check_cache_dir(&cache)?;
        let gen_dir = path.parent().unwrap_or(&cache).to_path_buf();
        let root = gen_dir.parent().unwrap_or(&cache).to_path_buf();
        // The directories below the cache too (`<base>.partner`, `<N>`): another user who can write one could
        // replace the copy once it is kept. Checked before anything is created in them, and again after.
        self.check_private_path(&gen_dir, false)?;
        self.storage.create_dir_all(&gen_dir).map_err(|e| Error::io("create directory", e).with_path(&gen_dir))?;
        self.check_private_path(&gen_dir, false)?;
        for d in [cache.as_path(), root.as_path()] {
            self.storage.sync_dir(d).map_err(|e| Error::io("fsync directory", e).with_path(d))?;
        }
        let name = format!("rank{rank}.ckpt");
        let tmp = gen_dir.join(format!("{name}.tmp.{}.{}.{:x}", self.config.host, std::process::id(), nonce()));
        let opts = WriteOptions::new(self.config.file_mode).direct_io(false).bounded_writeback(false);
        let file = self
            .storage
            .create_new_with(&tmp, opts)
            .map_err(|e| Error::io("create temporary file", e).with_path(&tmp))?;
        let plan = Plan::Part { dir: gen_dir, name, checkpoint_dir: cache };
        let mut publisher = self.publisher(&tmp, plan, Instant::now());
        // This rank's own part goes on the list of its parts, so that retention removes it in time.
        publisher.remember_listing = copy == PartCopy::Own;
        Ok(PartReceiver { file, publisher, copy, generation, rank, received: 0 })
    }

    /// Commits a received part once it is exactly `expected` (the identity rank 0 committed: length,
    /// rank, ranks, generation, step and checksums), verifies completely and was written by this run:
    /// fsync, rename into place, fsync of its directory. Then partner copies of generations beyond the
    /// cache's `keep` are removed (a failure there is a warning in the result). A failed commit removes
    /// the temporary file and leaves the cache as it was.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Corrupt`] when the file is not `expected` or does not verify; [`ErrorKind::Conflict`] when
    /// another run wrote it; [`ErrorKind::Io`] when it cannot be made durable.
    pub fn commit_received_part(&self, receiver: PartReceiver, expected: &PartIdentity) -> Result<CommitInfo> {
        let PartReceiver { mut file, mut publisher, copy, generation, rank, received } = receiver;
        let tmp = publisher.tmp.clone();
        let wanted = (expected.generation, expected.rank, expected.nranks);
        if wanted != (generation, rank, self.config.nranks) {
            return Err(Error::invalid(format!(
                "the part received as rank {rank}'s of generation {generation} ({} ranks) is announced as rank {}'s \
                 of generation {} ({} ranks)",
                self.config.nranks, expected.rank, expected.generation, expected.nranks
            ))
            .with_path(&tmp));
        }
        let part = Checkpoint::open_with(&*self.storage, &tmp, self.load_options())?;
        let header = part.header().clone();
        let found = PartIdentity {
            generation: header.generation,
            app_step: header.app_step,
            file_len: part.file_len(),
            rank: header.rank,
            nranks: header.nranks,
            header_crc32: part.identity().0,
            table_crc32: part.identity().1,
        };
        if header.kind != FileKind::Data || found != *expected || received != expected.file_len {
            return Err(Error::corrupt(format!(
                "the copy received of rank {rank}'s part of generation {generation} is not the part committed: \
                 received {received} bytes, {found:?}; committed {expected:?}"
            ))
            .with_path(&tmp));
        }
        // The rules restart discovery applies to a file under this run's name (an explicit
        // CKPT_RESUME_FROM resumes that job's files whoever's run wrote them).
        if let Some(Ok(writer)) = crate::identity::RunIdentity::of_header(&header) {
            let why = self.config.resume_conflicts(&writer);
            if !why.is_empty() {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("the part received was written by another run: {}", why.join(", ")),
                )
                .with_path(&tmp));
            }
        }
        part.verify()?;
        let stats = FileStats {
            raw_bytes: part.raw_len(),
            file_bytes: expected.file_len,
            sections: u32::try_from(part.sections().len()).unwrap_or(u32::MAX),
        };
        drop(part);
        file.sync().map_err(|e| Error::io("fsync", e).with_path(&tmp))?;
        drop(file);
        let mut info = publisher.publish(&header, stats, expected.header_crc32, expected.table_crc32)?;
        publisher.done = true;
        if copy == PartCopy::Partner {
            info.warnings.extend(self.prune_partner_copies(generation));
        }
        Ok(info)
    }

    /// The ranks whose parts of `generation` this node's cache keeps partner copies of, ascending (their
    /// files are checked when they are restored, not here).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the directory exists but cannot be listed.
    pub fn partner_copies_held(&self, generation: u64) -> Result<Vec<u32>> {
        let Some(cache) = self.cache_dir.as_deref() else { return Ok(Vec::new()) };
        let dir = cache.join(format!("{}.partner", self.config.base_name())).join(generation.to_string());
        let names = match self.storage.list_names(&dir) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list directory", e).with_path(&dir)),
        };
        let mut ranks: Vec<u32> = names
            .iter()
            .filter_map(|n| n.to_str()?.strip_prefix("rank")?.strip_suffix(".ckpt")?.parse().ok())
            .filter(|&r| r < self.config.nranks)
            .collect();
        ranks.sort_unstable();
        Ok(ranks)
    }

    /// The application step and every part's identity of the step of `generation`, from its manifest in
    /// this node's cache or, failing that, the checkpoint directory (verified completely; a restored rank
    /// records it in its own cache with [`Store::record_step`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when no level holds the manifest; [`ErrorKind::Corrupt`] when it does not
    /// verify or is not a manifest of this job's number of ranks; [`ErrorKind::Untrusted`] when another user
    /// could have written it (the last level's refusal, when none holds a manifest that may be used).
    pub fn step_identities(&self, generation: u64) -> Result<(u64, Vec<PartIdentity>)> {
        let name = format!("{}.{generation}", self.config.base_name());
        let dirs = self.cache_dir.iter().map(PathBuf::as_path).chain([self.config.checkpoint_dir.as_path()]);
        let mut last_error = None;
        for dir in dirs {
            let path = dir.join(&name);
            if !matches!(self.storage.exists(&path), Ok(true)) {
                continue;
            }
            let manifest = match Checkpoint::open_with(&*self.storage, &path, self.load_options()) {
                Ok(m) => m,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            // The rules restart discovery applies (who could have written it), and in the cache the
            // directories' owner too, as for the parts it names.
            let checked = self.check_private_path(&path, true).and_then(|()| crate::trust::check(&manifest));
            match checked.and_then(|()| manifest.verify()).and_then(|()| self.identities_in(&manifest, generation)) {
                Ok(found) => return Ok(found),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no level this node sees holds the manifest of generation {generation}"),
            )
            .with_path(self.config.checkpoint_dir.join(&name))
        }))
    }

    fn identities_in(&self, manifest: &Checkpoint, generation: u64) -> Result<(u64, Vec<PartIdentity>)> {
        let header = manifest.header();
        if header.kind != FileKind::Manifest || header.generation != generation || header.nranks != self.config.nranks {
            return Err(Error::corrupt(format!(
                "not the manifest of generation {generation} of {} ranks (a {:?} of generation {}, {} ranks)",
                self.config.nranks, header.kind, header.generation, header.nranks
            ))
            .with_path(manifest.path()));
        }
        let entries = parse_manifest(manifest)?;
        let parts = entries
            .iter()
            .enumerate()
            .map(|(r, e)| PartIdentity {
                generation,
                app_step: header.app_step,
                file_len: e.file_len,
                rank: r as u32,
                nranks: header.nranks,
                header_crc32: e.header_crc32,
                table_crc32: e.table_crc32,
            })
            .collect();
        Ok((header.app_step, parts))
    }

    /// `path` (a file when `is_file`, else a directory) and every directory from it up to the cache
    /// directory must be this user's and writable by no one else (the rule of [`Store::check_cache_dir`]);
    /// what does not exist yet passes. The real file system only (in-memory storages have no owners).
    fn check_private_path(&self, path: &Path, is_file: bool) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let Some(cache) = self.cache_dir.as_deref() else { return Ok(()) };
        let me = crate::sys::euid();
        let mut at = Some(path);
        while let Some(p) = at.filter(|p| p.starts_with(cache)) {
            let file = is_file && p == path;
            let what = if file { "file" } else { "directory" };
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() || m.is_dir() == file => {
                    return Err(Error::new(
                        ErrorKind::Untrusted,
                        format!("this {what} in the node-local cache is not a {what} (a symbolic link?)"),
                    )
                    .with_path(p));
                }
                Ok(m) if m.uid() != me || m.mode() & 0o022 != 0 => {
                    return Err(Error::new(
                        ErrorKind::Untrusted,
                        format!(
                            "this {what} in the node-local cache belongs to {} with mode {:o}: it must be this \
                             user's ({}) and writable by no one else, or another user could have replaced what \
                             it holds; nothing is kept there or restored from it (remove it, or choose another \
                             CKPT_CACHE_DIR)",
                            crate::trust::user_label(m.uid()),
                            m.mode() & 0o7777,
                            crate::trust::user_label(me)
                        ),
                    )
                    .with_path(p));
                }
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::io("stat", e).with_path(p)),
                _ => {}
            }
            at = p.parent().filter(|_| p != cache);
        }
        Ok(())
    }

    /// Removes this node's partner copies of generations older than the newest `keep` it holds. Other
    /// ranks of the node prune the same directory: what is gone already is not an error.
    fn prune_partner_copies(&self, newest: u64) -> Vec<String> {
        let Some(cache) = self.cache_dir.as_deref() else { return Vec::new() };
        let keep = self.config.cache.as_ref().map_or(DEFAULT_KEEP_PARTNER, |c| c.keep);
        let root = cache.join(format!("{}.partner", self.config.base_name()));
        let Ok(names) = self.storage.list_names(&root) else { return Vec::new() };
        let mut generations: Vec<u64> = names.iter().filter_map(|n| n.to_str()?.parse().ok()).collect();
        generations.sort_unstable_by(|a, b| b.cmp(a));
        let mut warnings = Vec::new();
        let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
        for g in generations.into_iter().filter(|&g| g <= newest).skip(keep) {
            let dir = root.join(g.to_string());
            let files = match self.storage.list_names(&dir) {
                Ok(f) => f,
                Err(e) if gone(&e) => continue,
                Err(e) => {
                    warnings.push(format!("could not list {}: {e}", dir.display()));
                    continue;
                }
            };
            for f in files {
                let path = dir.join(&f);
                if let Err(e) = self.storage.remove_file(&path)
                    && !gone(&e)
                {
                    warnings.push(format!("could not remove {}: {e}", path.display()));
                }
            }
            if let Err(e) = self.storage.remove_dir(&dir)
                && !gone(&e)
                && e.raw_os_error() != Some(libc::ENOTEMPTY)
            {
                warnings.push(format!("could not remove {}: {e}", dir.display()));
            }
        }
        warnings
    }
}

/// Partner copies kept without a cache level's setting (never used: partner copies need a cache level).
const DEFAULT_KEEP_PARTNER: usize = crate::levels::DEFAULT_CACHE_KEEP;
