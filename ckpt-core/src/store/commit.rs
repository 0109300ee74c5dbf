//! A checkpoint being written and its commit: the temporary file, the link/rename, the directory
//! `fsync`, then the retirement of old generations.

use super::*;

use bytemuck::Pod;
use serde::de::DeserializeOwned;

#[derive(Clone, Debug)]
pub(super) enum Plan {
    /// Generations of `<base>` in a directory, as listed when the save began (or reused from the
    /// previous save).
    Single { listing: Listing },
    /// A rank's part: `<dir>/<name>`, in the parts root of `checkpoint_dir`.
    Part { dir: PathBuf, name: String, checkpoint_dir: PathBuf },
    /// One file at an exact path, no generations (see [`begin_file`]): whether `<name>.tmp.spare` was there
    /// when the save began, and the length of the regular file the save replaces, if any.
    File { dir: PathBuf, name: String, spare: bool, replaced: Option<u64> },
}

/// Starts a checkpoint written to exactly `path` (no generations, no retention): on commit the file
/// replaces `path` atomically and durably (temporary file in the same directory, fsync, rename, fsync of
/// the directory). For callers that manage their own file names; the header records `config`'s job,
/// application, rank and step id.
///
/// The step is any integer type with a value in `0..=`[`MAX_STEP`](crate::MAX_STEP).
///
/// # Errors
///
/// [`ErrorKind::InvalidArgument`] for a negative step or one above `MAX_STEP`, or a path without a UTF-8 file name;
/// [`ErrorKind::Io`] when the directory cannot be created or listed or the temporary file cannot be created.
pub fn begin_file(
    path: &Path,
    app_step: impl TryInto<u64> + Copy + Display,
    config: &Config,
    storage: Arc<dyn Storage>,
) -> Result<CheckpointWriter> {
    let app_step = step_arg(app_step)?;
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
#[must_use = "a checkpoint that is not committed is abandoned (its temporary file removed) when dropped"]
pub struct CheckpointWriter {
    pub(super) builder: Option<FileBuilder>,
    pub(super) storage: Arc<dyn Storage>,
    pub(super) tmp: PathBuf,
    pub(super) plan: Plan,
    pub(super) keep: usize,
    pub(super) default_compression: Compression,
    pub(super) started: Instant,
    pub(super) done: bool,
    pub(super) last_generation: Option<u64>,
    pub(super) shared: Arc<Shared>,
    /// Problems before the commit that did not endanger it, reported with its [`CommitInfo`].
    pub(super) warnings: Vec<String>,
    /// A manifest whose ranks remove their own retired parts ([`Store::commit_step_with_parts`]).
    pub(super) ranks_prune_own_parts: bool,
    /// Retired checkpoints at least this large are kept as the spare (`None`: no spare).
    pub(super) spare_min_len: Option<u64>,
    /// Whether this file is a spare taken over.
    pub(super) reused_spare: bool,
    /// The bytes written and the seconds the storage spent writing them, once committed.
    pub(super) device_time: Option<(u64, f64)>,
    /// Whether the commit leaves its directory's listing for the next save to reuse, and a part is
    /// recorded as this rank's own (not for copies to another level: they would push out the listing of
    /// the directory saves go to, and the parts there are rank 0's to retire).
    pub(super) remember_listing: bool,
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
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for the key ckpt reserves for the run's identity; [`ErrorKind::InvalidState`]
    /// after the first section (the header is written then) or after the commit. A key that is empty, longer than 1024
    /// bytes or makes the header exceed 1 MiB fails at the first section or the commit
    /// ([`Header::encode`](crate::Header::encode)).
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
    ///
    /// # Errors
    ///
    /// As [`CheckpointWriter::add_section_with`].
    pub fn add_bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let opts = SectionOptions::new().compression(self.default_compression);
        self.add_section_with(name, data, opts)
    }

    /// Adds a section with explicit options.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for a name that is empty, longer than 64 bytes, contains a NUL or is already
    /// used, and for the header's own fields at the first section ([`Header::encode`](crate::Header::encode));
    /// [`ErrorKind::TooLarge`] for a section above 1 PiB, more sections than the format holds, or too much metadata;
    /// [`ErrorKind::Io`] when the write fails (`ENOSPC`...), or when compression is asked for and the crate is built
    /// without the `zstd` feature; [`ErrorKind::InvalidState`] after the commit, while a
    /// [`SectionWriter`] is open, or after an earlier write failed (the checkpoint cannot be completed then:
    /// drop it). The error names the section and the temporary file.
    pub fn add_section_with(&mut self, name: &str, data: &[u8], opts: SectionOptions) -> Result<()> {
        let path = self.tmp.clone();
        self.builder()?.add_section(name, &opts, data).map_err(|e| e.with_section(name).with_path(&path))
    }

    /// Adds one section gathered from several buffers (written in order, without concatenating them).
    ///
    /// # Errors
    ///
    /// As [`CheckpointWriter::add_section_with`].
    pub fn add_section_parts(&mut self, name: &str, parts: &[&[u8]], opts: SectionOptions) -> Result<()> {
        let path = self.tmp.clone();
        self.builder()?.add_section_parts(name, &opts, parts).map_err(|e| e.with_section(name).with_path(&path))
    }

    /// Adds a serde value: a fingerprint of its type (name and schema hash) followed by its postcard 1.x
    /// encoding (encoding [`Encoding::TypedPostcard`]), read back with [`crate::Checkpoint::read_serde`].
    ///
    /// A value that saves must load: the encoded bytes are decoded back as `T` before they are written,
    /// so what postcard cannot represent fails here, at save time, rather than at restart. Postcard is
    /// compact and not self-describing, which rules out `#[serde(skip_serializing_if)]` (the reader cannot
    /// know a field is missing), `#[serde(flatten)]`, `#[serde(untagged)]` and internally tagged enums,
    /// and types that deserialize through `deserialize_any` (`serde_json::Value`). See "Serde sections" in
    /// the crate documentation for the rules. The check costs one decode of the value; large arrays belong
    /// in [`CheckpointWriter::add_slice`] sections, which are neither encoded nor decoded.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Encoding`] when the value cannot be encoded or does not decode back as `T` (the message
    /// says why); the errors of [`CheckpointWriter::add_section_with`].
    pub fn add_serde<T: Serialize + DeserializeOwned>(&mut self, name: &str, value: &T) -> Result<()> {
        let encoding_error = |m: String| Error::new(ErrorKind::Encoding, m).with_section(name).with_path(&self.tmp);
        let fingerprint = crate::typed::Fingerprint::of::<T>();
        let bytes = fingerprint.encode();
        let start = bytes.len();
        let mut bytes = postcard::to_extend(value, bytes)
            .map_err(|e| encoding_error(format!("postcard encoding of `{}` failed: {e}", fingerprint.type_name)))?;
        check_decodes_back::<T>(&bytes[start..]).map_err(|why| {
            encoding_error(format!(
                "a `{}` value saved with postcard would not load again: {why}. Postcard is not self-describing: \
                 #[serde(skip_serializing_if)], #[serde(flatten)], #[serde(untagged)] and internally tagged enums, \
                 and types that need deserialize_any (serde_json::Value) cannot be saved",
                fingerprint.type_name
            ))
        })?;
        bytes.shrink_to_fit();
        let opts = SectionOptions::new().compression(self.default_compression).encoding(Encoding::TypedPostcard);
        self.add_section_with(name, &bytes, opts)
    }

    /// Adds a slice of plain-old-data values without encoding or copying them (a raw section is 4 KiB
    /// aligned in the file, so a restart maps it back with [`crate::Checkpoint::read_slice`] without a
    /// copy). The section records the element type (`f64`, `u32`, ...; the size of other [`Pod`]
    /// types) and this machine's byte order, and is compressed as the store's default says, with the
    /// byte-shuffle filter at the element's width.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for elements larger than 4095 bytes; the errors of
    /// [`CheckpointWriter::add_section_with`].
    pub fn add_slice<T: Pod>(&mut self, name: &str, data: &[T]) -> Result<()> {
        let opts = SectionOptions::new().compression(self.default_compression);
        self.add_slice_with(name, data, opts)
    }

    /// [`CheckpointWriter::add_slice`] with explicit options; the encoding is the slice's (the options'
    /// encoding is ignored), and the shuffle width is the element's unless the options set one.
    ///
    /// # Errors
    ///
    /// As [`CheckpointWriter::add_slice`].
    pub fn add_slice_with<T: Pod>(&mut self, name: &str, data: &[T], opts: SectionOptions) -> Result<()> {
        let encoding = crate::typed::slice_encoding::<T>().map_err(|e| e.with_section(name).with_path(&self.tmp))?;
        let width = match encoding {
            Encoding::Slice { element: crate::format::ElementType::Opaque(_), .. } => 1,
            Encoding::Slice { element, .. } => element.size() as u16,
            _ => 1,
        };
        let width = if opts.element_size > 1 { opts.element_size } else { width };
        let opts = opts.encoding(encoding).shuffle(width);
        self.add_section_with(name, bytemuck::cast_slice(data), opts)
    }

    /// Streams a section of unknown length (implements `std::io::Write`).
    ///
    /// # Errors
    ///
    /// As [`CheckpointWriter::add_section_with`] for the name, the state and the first bytes; the writes and
    /// [`SectionWriter::finish`] then fail as it does for the rest.
    pub fn section_writer(&mut self, name: &str, opts: SectionOptions) -> Result<SectionWriter<'_>> {
        let path = self.tmp.clone();
        SectionWriter::new(self.builder()?, &path, name, opts).map_err(|e| e.with_path(&path))
    }

    /// Finishes the file and commits it durably: `fsync` of the file, a link to `<base>.<N>`, a rename
    /// to `<base>`, `fsync` of the directory, then the pruning of generations beyond `keep` (FORMAT.md,
    /// "Commit protocol"). Blocks for all of these.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when a step fails (the temporary file is removed; earlier checkpoints are
    /// intact); [`ErrorKind::Conflict`] when another process committed the same generation;
    /// [`ErrorKind::InvalidState`] when already committed.
    pub fn commit(mut self) -> Result<CommitInfo> {
        let result = self.commit_inner();
        if let Ok(info) = &result {
            // The device's own time when the storage knows it: the whole save's time would count
            // compressing as writing, and make `auto` compress more the more it compresses.
            let speed = self.device_time.unwrap_or((info.stats.file_bytes, info.seconds));
            self.shared.note_commit(info.generation, speed);
        } else {
            let _ = self.storage.remove_file(&self.tmp);
            // Whatever went wrong (another writer took the generation, say), list afresh next time.
            *self.shared.listing() = None;
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
        self.publish(&header, stats, header_crc32, table_crc32)
    }

    /// Publishes the temporary file, complete and fsynced, under its names (link, rename, fsync of the
    /// directory), then retires old generations: the commit after the bytes are written, for files this
    /// writer built and for copies of committed files ([`Store::flush_checkpoint`]).
    pub(super) fn publish(
        &mut self,
        header: &Header,
        stats: FileStats,
        header_crc32: u32,
        table_crc32: u32,
    ) -> Result<CommitInfo> {
        let tmp = self.tmp.clone();
        self.last_generation = Some(header.generation);
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
        if let Plan::Part { checkpoint_dir, .. } = &self.plan
            && self.remember_listing
        {
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
            if self.remember_listing {
                *self.shared.listing() = Some(Listing {
                    generations: remaining,
                    highest: listing.highest.max(header.generation),
                    spare,
                    ..listing.clone()
                });
            }
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

impl Store {
    /// A writer that only publishes a temporary file written by other means (a copy, a received part).
    pub(super) fn publisher(&self, tmp: &Path, plan: Plan, started: Instant) -> CheckpointWriter {
        CheckpointWriter {
            builder: None,
            storage: self.storage.clone(),
            tmp: tmp.to_path_buf(),
            plan,
            keep: self.config.keep,
            default_compression: self.config.compression,
            started,
            done: false,
            last_generation: None,
            shared: self.shared.clone(),
            warnings: Vec::new(),
            ranks_prune_own_parts: false,
            spare_min_len: None,
            reused_spare: false,
            device_time: None,
            remember_listing: false,
        }
    }
}

pub(super) fn link_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS | libc::EMLINK | libc::EXDEV))
}

/// Decodes postcard `bytes` as `T` and checks that every byte was used: what `read_serde` will do.
fn check_decodes_back<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<(), String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((_, [])) => Ok(()),
        Ok((_, rest)) => {
            Err(format!("decoding it back uses {} of its {} bytes", bytes.len() - rest.len(), bytes.len()))
        }
        Err(e) => Err(format!("decoding it back fails: {e}")),
    }
}
