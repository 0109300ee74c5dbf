//! Opening, verifying and reading checkpoint files.
//!
//! [`Checkpoint::open`] checks the structure (header, trailer and section table with their CRCs, every
//! offset and size) before returning; section bytes are verified against their CRC the first time they
//! are read, and [`Checkpoint::verify`] checks everything at once, including that the padding between
//! parts is zero, so that no single corrupted byte anywhere in the file goes unnoticed.
//!
//! Whatever a file claims, checking it costs work bounded by its size and memory bounded by a block:
//! padding is checked in chunks, a compressed section or plane claiming more than zstd can produce from
//! its stored bytes (32768x) is refused before decoding, a frame's recorded content size must match the
//! table, and the stored CRC is checked before anything is decoded (FORMAT.md, "What a reader checks").
//!
//! Files are memory-mapped when possible, so raw sections are returned without a copy. When mapping fails
//! (some network file systems) or is disabled (`CKPT_MMAP=0`, [`LoadOptions::mmap`]), plain positioned reads
//! are used instead. The environment is read by [`crate::Config`] and [`LoadOptions::from_env`], through one
//! parser.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(not(feature = "zstd"))]
use crate::zstd_stub as zstd;
use bytemuck::Pod;
use serde::de::DeserializeOwned;
use zstd::stream::raw::{Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use crate::error::{Error, ErrorKind, Result};
use crate::format::{self, Codec, Encoding, Header, SectionEntry, TRAILER_LEN, Trailer};
use crate::storage::{FileOwner, FileStorage, MappedBytes, Storage, StorageReader};
use crate::typed::SliceRead;

/// Chunk size for plain reads and CRC passes.
const READ_CHUNK: usize = 8 << 20;
/// The longest zstd frame header (RFC 8878: magic, descriptor, window, dictionary id, content size).
const ZSTD_FRAME_HEADER_MAX: u64 = 18;

/// How to open a checkpoint: `LoadOptions::new().mmap(false)`.
///
/// The default (and [`LoadOptions::new`]) memory-maps; [`LoadOptions::from_env`] reads `CKPT_MMAP`.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Memory-map the file (falls back to plain reads automatically when mapping fails).
    pub mmap: bool,
}

impl LoadOptions {
    /// The defaults: memory-mapped. The environment is not read (see [`LoadOptions::from_env`]).
    #[must_use]
    pub const fn new() -> LoadOptions {
        LoadOptions { mmap: true }
    }

    /// Whether to memory-map the file (otherwise plain positioned reads, for Lustre or NFS).
    #[must_use]
    pub const fn mmap(mut self, mmap: bool) -> LoadOptions {
        self.mmap = mmap;
        self
    }

    /// The options this process's environment asks for: `CKPT_MMAP`, read exactly as
    /// [`crate::Config::from_env`] reads it. A malformed value is an error naming the variable. For loads
    /// without a [`crate::Config`] (with one, use [`crate::Store::load_options`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] naming `CKPT_MMAP` and its value when it is not a boolean (`0`/`1`, `on`/`off`,
    /// `true`/`false`, `yes`/`no`).
    pub fn from_env() -> Result<LoadOptions> {
        LoadOptions::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`LoadOptions::from_env`] with variables from `lookup`.
    ///
    /// # Errors
    ///
    /// As [`LoadOptions::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<LoadOptions> {
        Ok(LoadOptions { mmap: crate::config::mmap_setting(&lookup)? })
    }
}

impl Default for LoadOptions {
    /// [`LoadOptions::new`]: memory-mapped, whatever the environment says (only `from_env` reads it).
    fn default() -> LoadOptions {
        LoadOptions::new()
    }
}

/// Reads and verifies only the header of a file (its magic, version and CRC), for attributing a file
/// whose body is damaged.
///
/// # Errors
///
/// [`ErrorKind::Io`] when the file cannot be opened or read (a missing file is `Io` with
/// [`Error::io_error_kind`](crate::Error::io_error_kind) `NotFound`); as [`Header::decode`] for the bytes
/// (`Corrupt`, `UnsupportedVersion`, `TooLarge`). The error names the path.
pub fn read_header(storage: &dyn Storage, path: &Path) -> Result<Header> {
    let r = storage.open(path).map_err(|e| Error::io("open", e).with_path(path))?;
    let len = r.len();
    let mut prefix = vec![0u8; len.min(16) as usize];
    r.read_exact_at(&mut prefix, 0).map_err(|e| Error::io("read", e).with_path(path))?;
    let header_len = Header::peek_len(&prefix, len).map_err(|e| e.with_path(path))?;
    let mut bytes = vec![0u8; header_len as usize];
    r.read_exact_at(&mut bytes, 0).map_err(|e| Error::io("read", e).with_path(path))?;
    Header::decode(&bytes).map(|(h, _)| h).map_err(|e| e.with_path(path))
}

enum Source {
    Mapped(MappedBytes),
    Read(Box<dyn StorageReader>),
}

/// An open, structurally verified checkpoint file.
pub struct Checkpoint {
    path: PathBuf,
    header: Header,
    header_len: u32,
    trailer: Trailer,
    sections: Vec<SectionEntry>,
    index: HashMap<String, usize>,
    source: Source,
    file_len: u64,
    verified: Vec<AtomicBool>,
    owner: Option<FileOwner>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("sections", &self.sections.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// The decoded bytes of a section: borrowed from the memory map when the section is raw, owned otherwise.
pub type SectionData<'a> = Cow<'a, [u8]>;

impl Checkpoint {
    /// Opens `path` from the real file system with the options of the environment
    /// ([`LoadOptions::from_env`]: a malformed `CKPT_MMAP` is an error).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] for a malformed `CKPT_MMAP`; otherwise as [`Checkpoint::open_with`].
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let opts = LoadOptions::from_env().map_err(|e| e.with_path(path))?;
        Checkpoint::open_with(&FileStorage, path, opts)
    }

    /// Opens `path` through `storage`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the file cannot be opened or read (a symlink at the last component is refused); for the
    /// structure (header, section table, trailer and their CRCs, every offset and length): [`ErrorKind::Corrupt`] (an
    /// empty or truncated file, a bad magic or CRC, sections outside the file), [`ErrorKind::UnsupportedVersion`] (a
    /// newer format version), [`ErrorKind::TooLarge`] (a length above its documented limit). Sections' own CRCs are
    /// checked when they are read or verified, not here. The error names the path. A file someone else could have
    /// written is opened all the same: see [`crate::trust::check`].
    pub fn open_with(storage: &dyn Storage, path: &Path, opts: LoadOptions) -> Result<Checkpoint> {
        let reader = storage.open(path).map_err(|e| Error::io("open", e).with_path(path))?;
        let owner = reader.owner();
        let source = if opts.mmap {
            match reader.map() {
                Ok(Some(map)) => Source::Mapped(map),
                // Mapping refused (ENODEV on some network mounts, ENOMEM...): read instead.
                Ok(None) | Err(_) => Source::Read(reader),
            }
        } else {
            Source::Read(reader)
        };
        let mut cp = Checkpoint::from_source(path.to_path_buf(), source).map_err(|e| e.with_path(path))?;
        cp.owner = owner;
        Ok(cp)
    }

    /// Owner and mode of the file, from the descriptor that was read (`None` in memory): what
    /// [`crate::trust::check`] judges.
    pub fn owner(&self) -> Option<FileOwner> {
        self.owner
    }

    /// Parses a checkpoint held in memory (used by the fuzz target and by tools).
    ///
    /// # Errors
    ///
    /// As [`Checkpoint::open_with`] for the structure (never `Io`).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Checkpoint> {
        Checkpoint::from_source(PathBuf::from("<memory>"), Source::Mapped(std::sync::Arc::new(bytes)))
    }

    fn from_source(path: PathBuf, source: Source) -> Result<Checkpoint> {
        let file_len = match &source {
            Source::Mapped(m) => (**m).as_ref().len() as u64,
            Source::Read(r) => r.len(),
        };
        let mut cp = Checkpoint {
            path,
            header: Header {
                kind: format::FileKind::Data,
                generation: 0,
                app_step: 0,
                created_unix_ns: 0,
                step_id: None,
                rank: 0,
                nranks: 1,
                writer_version: (0, 0, 0),
                job_id: String::new(),
                app_name: String::new(),
                host: String::new(),
                metadata: Vec::new(),
            },
            header_len: 0,
            trailer: Trailer { table_offset: 0, file_len: 0, section_count: 0, table_crc32: 0, header_crc32: 0 },
            sections: Vec::new(),
            index: HashMap::new(),
            source,
            file_len,
            verified: Vec::new(),
            owner: None,
        };
        if file_len == 0 {
            return Err(Error::corrupt("the file is empty (0 bytes): a save was interrupted before any data"));
        }
        let prefix = cp.read_range(0..file_len.min(16))?;
        let header_len = Header::peek_len(&prefix, file_len)?;
        let header_bytes = cp.read_range(0..u64::from(header_len))?;
        let (header, header_crc) = Header::decode(&header_bytes)?;
        let trailer_bytes = cp.read_range(file_len - TRAILER_LEN as u64..file_len)?;
        let trailer = Trailer::decode(&trailer_bytes, file_len, header_len, header_crc)?;
        let table_len = u64::from(trailer.section_count) * format::TABLE_ENTRY_LEN as u64;
        let table = cp.read_range(trailer.table_offset..trailer.table_offset + table_len)?;
        let sections = format::validate_table(&table, &trailer, header_len)?;
        cp.index = sections.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        cp.verified = sections.iter().map(|_| AtomicBool::new(false)).collect();
        cp.header = header;
        cp.header_len = header_len;
        cp.trailer = trailer;
        cp.sections = sections;
        Ok(cp)
    }

    fn read_range(&self, range: Range<u64>) -> Result<Cow<'_, [u8]>> {
        match &self.source {
            Source::Mapped(m) => {
                let bytes = (**m).as_ref();
                let r = usize::try_from(range.start).ok().zip(usize::try_from(range.end).ok());
                match r {
                    Some((s, e)) if s <= e && e <= bytes.len() => Ok(Cow::Borrowed(&bytes[s..e])),
                    _ => Err(Error::corrupt("truncated: a range lies past the end of the file")),
                }
            }
            Source::Read(r) => {
                let len = usize::try_from(range.end - range.start)
                    .map_err(|_| Error::new(ErrorKind::TooLarge, "range too large"))?;
                let mut buf = Vec::new();
                buf.try_reserve_exact(len)
                    .map_err(|_| Error::new(ErrorKind::TooLarge, format!("cannot allocate {len} bytes")))?;
                buf.resize(len, 0);
                r.read_exact_at(&mut buf, range.start).map_err(|e| Error::io("read", e))?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    /// Calls `f` on consecutive chunks of `range` (no full copy for plain reads: at most [`READ_CHUNK`]
    /// bytes are buffered, whatever the range's length).
    fn for_chunks(&self, range: Range<u64>, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        match &self.source {
            Source::Mapped(_) => f(&self.read_range(range)?),
            Source::Read(r) => {
                let len = range.end.saturating_sub(range.start);
                let mut buf = vec![0u8; usize::try_from(len).map_or(READ_CHUNK, |l| l.min(READ_CHUNK))];
                let mut pos = range.start;
                while pos < range.end {
                    let n = ((range.end - pos) as usize).min(buf.len());
                    r.read_exact_at(&mut buf[..n], pos).map_err(|e| Error::io("read", e))?;
                    f(&buf[..n])?;
                    pos += n as u64;
                }
                Ok(())
            }
        }
    }

    /// Passes the whole file, byte for byte, to `f` in consecutive chunks of at most `chunk` bytes (to
    /// copy a committed checkpoint to another level).
    pub(crate) fn for_each_chunk(&self, chunk: usize, f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        match &self.source {
            Source::Mapped(m) => (**m).as_ref().chunks(chunk.max(1)).try_for_each(f),
            Source::Read(_) => self.for_chunks(0..self.file_len, f),
        }
    }

    /// The sum of the sections' decoded lengths.
    pub fn raw_len(&self) -> u64 {
        self.sections.iter().map(|s| s.raw_len).sum()
    }

    /// The file this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// The application step recorded at save time (see [`Header::app_step`] for older files with a
    /// negative step).
    pub fn step(&self) -> u64 {
        self.header.app_step
    }
    /// The generation (save sequence number) of this file.
    pub fn generation(&self) -> u64 {
        self.header.generation
    }
    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }
    /// Whether the file is memory-mapped (otherwise sections are read with positioned reads).
    pub fn is_mapped(&self) -> bool {
        matches!(self.source, Source::Mapped(_))
    }
    /// All sections, in file order.
    pub fn sections(&self) -> &[SectionEntry] {
        &self.sections
    }
    /// The header's CRC and the table's CRC: together they identify this exact file.
    pub fn identity(&self) -> (u32, u32) {
        (self.trailer.header_crc32, self.trailer.table_crc32)
    }
    /// Whether a section exists.
    pub fn has_section(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    /// User metadata value for `key`.
    pub fn metadata(&self, key: &str) -> Option<&[u8]> {
        self.header.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
    }

    /// The table entry of section `name`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::SectionNotFound`] naming the section and the file.
    pub fn section(&self, name: &str) -> Result<&SectionEntry> {
        self.index
            .get(name)
            .map(|&i| &self.sections[i])
            .ok_or_else(|| self.err(Error::new(ErrorKind::SectionNotFound, "no such section").with_section(name)))
    }

    fn err(&self, e: Error) -> Error {
        e.with_path(&self.path)
    }

    fn stored_range(e: &SectionEntry) -> Range<u64> {
        e.offset..e.offset + e.stored_len
    }

    fn check_stored_crc(&self, i: usize) -> Result<()> {
        let e = &self.sections[i];
        let mut h = crc32fast::Hasher::new();
        self.for_chunks(Self::stored_range(e), |c| {
            h.update(c);
            Ok(())
        })?;
        check_crc("crc32", e.stored_crc32, h.finalize()).map_err(|err| err.with_section(&e.name))?;
        Ok(())
    }

    /// Verifies one section completely (stored CRC, and for compressed sections a full decode against the
    /// raw CRC).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::SectionNotFound`]; [`ErrorKind::Corrupt`] when a CRC does not match (expected and computed values
    /// in the message) or a compressed section does not decode; [`ErrorKind::Io`] when a plain read fails, or for a
    /// compressed section when the crate is built without the `zstd` feature.
    pub fn verify_section(&self, name: &str) -> Result<()> {
        let i = self.section(name).map(|_| self.index[name])?;
        self.verify_index(i).map_err(|e| self.err(e))
    }

    fn verify_index(&self, i: usize) -> Result<()> {
        self.verify_index_inner(i).map_err(|err| err.with_section(&self.sections[i].name))
    }

    fn verify_index_inner(&self, i: usize) -> Result<()> {
        if self.verified[i].load(Ordering::Relaxed) {
            return Ok(());
        }
        // The stored bytes' CRC first: a damaged file fails here, before any decoding.
        self.check_stored_crc(i)?;
        let e = &self.sections[i];
        if e.codec != Codec::None {
            let mut h = crc32fast::Hasher::new();
            let mut len = 0u64;
            self.decode_stream(e, &mut |chunk| {
                h.update(chunk);
                len += chunk.len() as u64;
                Ok(())
            })?;
            check_crc("decoded crc32", e.raw_crc32, h.finalize()).map_err(|err| err.with_section(&e.name))?;
        }
        self.verified[i].store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Verifies the whole file: every section's CRCs and that every byte outside header, sections, table
    /// and trailer is zero padding.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Corrupt`] for a non-zero padding byte (its offset in the message) or, as
    /// [`Checkpoint::verify_section`], for the first section that fails; [`ErrorKind::Io`] when a plain read fails.
    pub fn verify(&self) -> Result<()> {
        self.verify_inner().map_err(|e| self.err(e))
    }

    /// [`Checkpoint::verify`] and [`Checkpoint::read_into`] of the sections named in `targets` in one pass:
    /// the other sections, the padding, header and table are verified first, then each target section is
    /// decoded into its buffer, a raw section of a mapped file checksummed chunk by chunk as it is copied
    /// (`copy.rs`: each chunk's CRC brings it into the cache, the copy then reads it from there), instead
    /// of a verification pass over the whole mapping followed by a copy. What a restart into the
    /// application's memory needs ([`crate::Store::restore_into`]).
    ///
    /// # Errors
    ///
    /// Before anything is written: [`ErrorKind::SectionNotFound`] for a target the file does not have,
    /// [`ErrorKind::InvalidArgument`] for a buffer whose length is not the section's raw length, and as
    /// [`Checkpoint::verify`] for every other section. Then as [`Checkpoint::read_into`]: a target that
    /// does not verify is an error, and its buffer (and the targets before it) may hold damaged bytes.
    pub fn verify_into(&self, targets: &mut [(&str, &mut [u8])]) -> Result<()> {
        self.verify_into_tracked(targets, &mut false)
    }

    /// [`Checkpoint::verify_into`], setting `*wrote` once a byte of a buffer may have been written.
    pub(crate) fn verify_into_tracked(&self, targets: &mut [(&str, &mut [u8])], wrote: &mut bool) -> Result<()> {
        let mut wanted = Vec::with_capacity(targets.len());
        for (name, dst) in targets.iter() {
            let e = self.section(name)?;
            if dst.len() as u64 != e.raw_len {
                return Err(self.err(
                    Error::invalid(format!("destination holds {} bytes but the section has {}", dst.len(), e.raw_len))
                        .with_section(*name),
                ));
            }
            wanted.push(self.index[*name]);
        }
        self.check_padding().map_err(|e| self.err(e))?;
        for i in (0..self.sections.len()).filter(|i| !wanted.contains(i)) {
            self.verify_index(i).map_err(|e| self.err(e))?;
        }
        for ((name, dst), &i) in targets.iter_mut().zip(&wanted) {
            let e = &self.sections[i];
            *wrote = true;
            let result = match &self.source {
                Source::Mapped(_) if e.codec == Codec::None && !self.verified[i].load(Ordering::Relaxed) => {
                    self.read_range(Self::stored_range(e)).and_then(|src| {
                        let mut h = crc32fast::Hasher::new();
                        crate::copy::checksum_and_copy(&mut h, &src, dst);
                        check_crc("crc32", e.stored_crc32, h.finalize())?;
                        self.verified[i].store(true, Ordering::Relaxed);
                        Ok(())
                    })
                }
                // Decoded (or read) and checked as it arrives: every CRC of the section, one pass.
                _ => self.read_into_inner(i, e, dst),
            };
            result.map_err(|err| self.err(err.with_section(*name)))?;
        }
        Ok(())
    }

    /// Every byte outside header, sections, table and trailer is zero padding.
    fn check_padding(&self) -> Result<()> {
        let mut covered: Vec<Range<u64>> = self.sections.iter().map(Self::stored_range).collect();
        covered.push(0..u64::from(self.header_len));
        covered.push(self.trailer.table_offset..self.file_len);
        covered.sort_by_key(|r| r.start);
        let mut pos = 0u64;
        for r in &covered {
            if r.start > pos {
                // In chunks: the gap's length comes from the file (writers leave less than 4096 bytes, a
                // hostile table can claim gigabytes), and plain reads must not buffer it whole.
                let mut at = pos;
                self.for_chunks(pos..r.start, |chunk| {
                    if let Some(off) = chunk.iter().position(|&b| b != 0) {
                        return Err(Error::corrupt(format!("padding byte at offset {} is not zero", at + off as u64)));
                    }
                    at += chunk.len() as u64;
                    Ok(())
                })?;
            }
            pos = pos.max(r.end);
        }
        Ok(())
    }

    fn verify_inner(&self) -> Result<()> {
        self.check_padding()?;
        for i in 0..self.sections.len() {
            self.verify_index(i)?;
        }
        Ok(())
    }

    /// The decoded bytes of section `name`, verified. Raw sections of a mapped file are borrowed from the
    /// map (zero copy); others are read or decoded into a new buffer.
    ///
    /// # Errors
    ///
    /// As [`Checkpoint::verify_section`] (the section is verified as it is read: a damaged one is never
    /// returned); [`ErrorKind::TooLarge`] when the decoded section cannot be allocated.
    pub fn read(&self, name: &str) -> Result<SectionData<'_>> {
        let e = self.section(name)?;
        let i = self.index[name];
        self.read_inner(i, e).map_err(|err| self.err(err.with_section(name)))
    }

    fn read_inner(&self, i: usize, e: &SectionEntry) -> Result<SectionData<'_>> {
        if e.codec == Codec::None {
            let bytes = self.read_range(Self::stored_range(e))?;
            if !self.verified[i].load(Ordering::Relaxed) {
                check_crc("crc32", e.stored_crc32, crc32fast::hash(&bytes))?;
                self.verified[i].store(true, Ordering::Relaxed);
            }
            return Ok(bytes);
        }
        // The recorded length is not trusted for allocation: a few hostile bytes can claim a terabyte. The
        // buffer grows with what the decoder really produces (never past raw_len, checked while decoding).
        usize::try_from(e.raw_len).map_err(|_| Error::new(ErrorKind::TooLarge, "section too large"))?;
        self.check_stored_crc(i)?;
        let mut out: Vec<u8> = Vec::new();
        let initial = e.raw_len.min(e.stored_len.saturating_mul(4)).min(64 << 20) as usize;
        out.try_reserve_exact(initial).map_err(|_| Error::new(ErrorKind::TooLarge, "cannot allocate the section"))?;
        // The decoded CRC is folded into the decoding: each chunk is checksummed while it is hot in cache.
        let mut h = crc32fast::Hasher::new();
        self.decode_stream(e, &mut |chunk| {
            out.try_reserve(chunk.len()).map_err(|_| {
                Error::new(ErrorKind::TooLarge, format!("cannot allocate {} bytes for the section", e.raw_len))
            })?;
            h.update(chunk);
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        check_crc("crc32", e.raw_crc32, h.finalize())?;
        self.verified[i].store(true, Ordering::Relaxed);
        Ok(Cow::Owned(out))
    }

    /// Decodes section `name` into `dst`, whose length must equal the section's raw length (no allocation
    /// of the section's size; this is how the C API restores registered regions in place).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] when `dst` is not exactly the section's raw length (nothing is written); as
    /// [`Checkpoint::read`] otherwise (on a CRC mismatch `dst` may hold the damaged bytes).
    pub fn read_into(&self, name: &str, dst: &mut [u8]) -> Result<()> {
        let e = self.section(name)?;
        let i = self.index[name];
        if dst.len() as u64 != e.raw_len {
            return Err(self.err(
                Error::invalid(format!("destination holds {} bytes but the section has {}", dst.len(), e.raw_len))
                    .with_section(name),
            ));
        }
        self.read_into_inner(i, e, dst).map_err(|err| self.err(err.with_section(name)))
    }

    /// A raw section already verified (by [`Checkpoint::verify`], as a restore does) is only copied, as
    /// [`Checkpoint::read`] returns it without a second check. Otherwise a mapped raw section is checked
    /// first and then copied in one call (so `dst` is left alone when the file is damaged), and chunks
    /// that are read or decoded are checksummed as each arrives, while it is in cache.
    ///
    /// Why not copy and checksum chunk by chunk from a mapping: on the benchmark machine (AMD EPYC VM)
    /// copies of 64 KiB to 64 MiB out of a file mapping ran 2-3x slower than one copy of the whole
    /// section, which the C library does with non-temporal stores (BENCHMARKS.md, scenario 2).
    fn read_into_inner(&self, i: usize, e: &SectionEntry, dst: &mut [u8]) -> Result<()> {
        let verified = self.verified[i].load(Ordering::Relaxed);
        let mut h = crc32fast::Hasher::new();
        match e.codec {
            Codec::None => {
                match &self.source {
                    Source::Mapped(_) => {
                        let src = self.read_range(Self::stored_range(e))?;
                        if !verified {
                            check_crc("crc32", e.stored_crc32, crc32fast::hash(&src))?;
                            self.verified[i].store(true, Ordering::Relaxed);
                        }
                        dst.copy_from_slice(&src);
                        return Ok(());
                    }
                    Source::Read(r) => {
                        for (k, chunk) in dst.chunks_mut(READ_CHUNK).enumerate() {
                            let off = e.offset + (k * READ_CHUNK) as u64;
                            r.read_exact_at(chunk, off).map_err(|err| Error::io("read", err))?;
                            // Plain reads are checked even when verified: the bytes read now are not
                            // the ones the verification read.
                            h.update(chunk);
                        }
                    }
                }
            }
            Codec::Zstd => {
                if !verified {
                    self.check_stored_crc(i)?;
                }
                let mut pos = 0usize;
                self.decode_stream(e, &mut |chunk| {
                    let d = &mut dst[pos..pos + chunk.len()];
                    d.copy_from_slice(chunk);
                    h.update(d);
                    pos += chunk.len();
                    Ok(())
                })?;
            }
        }
        check_crc("crc32", e.raw_crc32, h.finalize())?;
        self.verified[i].store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Decodes a compressed section, calling `sink` with consecutive decoded (and unshuffled) chunks whose
    /// total is exactly `raw_len`; any other length is corruption.
    fn decode_stream(&self, e: &SectionEntry, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if e.planes {
            return self.decode_planes(e, sink);
        }
        // A frame that records its decoded size must agree with the table before anything is decoded.
        let head = self.read_range(e.offset..e.offset + e.stored_len.min(ZSTD_FRAME_HEADER_MAX))?;
        if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(&head)
            && declared != e.raw_len
        {
            return Err(Error::corrupt(format!(
                "the zstd frame declares {declared} decoded bytes, the section table {}",
                e.raw_len
            )));
        }
        drop(head);
        let mut dec = ZstdDecoder::new().map_err(|err| Error::io("zstd init", err))?;
        let es = usize::from(e.element_size);
        let block_len = if e.shuffle { format::shuffle_block_len(es) } else { 1 << 20 };
        let mut out = vec![0u8; block_len];
        let mut unshuffled = if e.shuffle { vec![0u8; block_len] } else { Vec::new() };
        let mut filled = 0usize;
        let mut produced = 0u64;
        let mut frame_done = false;
        let too_long = || Error::corrupt("decoded data is longer than the recorded length");
        let mut emit_block = |block: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>| -> Result<()> {
            if e.shuffle {
                let u = &mut unshuffled[..block.len()];
                format::unshuffle_block(block, u, es);
                sink(u)
            } else {
                sink(block)
            }
        };
        // One run of the decoder: what it produced is gathered into `out`, and passed on when a block is
        // full. Returns the bytes produced and whether the frame is complete.
        let mut step = |input: &mut InBuffer<'_>, sink: &mut dyn FnMut(&[u8]) -> Result<()>| -> Result<(usize, bool)> {
            let mut ob = OutBuffer::around(&mut out[filled..]);
            let hint = dec.run(input, &mut ob).map_err(|err| Error::corrupt(format!("zstd: {err}")))?;
            let n = ob.pos();
            filled += n;
            if filled == block_len {
                produced += filled as u64;
                if produced > e.raw_len {
                    return Err(too_long());
                }
                emit_block(&out[..filled], sink)?;
                filled = 0;
            }
            Ok((n, hint == 0))
        };
        self.for_chunks(Self::stored_range(e), |chunk| {
            let mut input = InBuffer::around(chunk);
            while input.pos() < chunk.len() {
                if frame_done {
                    return Err(Error::corrupt("bytes after the end of the compressed frame"));
                }
                frame_done = step(&mut input, sink)?.1;
            }
            Ok(())
        })?;
        // Drain what the decoder still holds.
        while !frame_done {
            let (n, done) = step(&mut InBuffer::around(&[][..]), sink)?;
            frame_done = done;
            if n == 0 && !done {
                return Err(Error::corrupt("compressed data ends before its frame is complete"));
            }
        }
        if filled > 0 {
            produced += filled as u64;
            if produced > e.raw_len {
                return Err(too_long());
            }
            emit_block(&out[..filled], sink)?;
        }
        if produced != e.raw_len {
            return Err(Error::corrupt(format!(
                "decoded length {produced} differs from the recorded length {}",
                e.raw_len
            )));
        }
        Ok(())
    }

    /// Decodes filter 2 (byte planes, FORMAT.md): block by block, each plane from its zstd frame or as is,
    /// then the inverse shuffle. Every length is checked against the block before anything is read, so a
    /// hostile file costs at most one block of memory.
    fn decode_planes(&self, e: &SectionEntry, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let es = usize::from(e.element_size);
        let block_len = format::shuffle_block_len(es);
        let end = e.offset + e.stored_len;
        let mut pos = e.offset;
        let mut take = |len: u64, what: &str| -> Result<Range<u64>> {
            match pos.checked_add(len) {
                Some(next) if next <= end => {
                    let r = pos..next;
                    pos = next;
                    Ok(r)
                }
                _ => Err(Error::corrupt(format!("{what} runs past the end of the section"))),
            }
        };
        let mut dctx = zstd::bulk::Decompressor::new().map_err(|err| Error::io("zstd init", err))?;
        let mut shuffled = vec![0u8; block_len.min(usize::try_from(e.raw_len).unwrap_or(block_len))];
        let mut out = vec![0u8; shuffled.len()];
        let mut remaining = e.raw_len;
        while remaining > 0 {
            let this = remaining.min(block_len as u64) as usize;
            let n = this / es;
            let words = self.read_range(take(4 * es as u64, "a block's plane lengths")?)?;
            for p in 0..es {
                let word = u32::from_le_bytes(words[4 * p..4 * p + 4].try_into().expect("4 bytes"));
                let len = (word & !format::PLANE_COMPRESSED) as usize;
                let dst = &mut shuffled[p * n..(p + 1) * n];
                if word & format::PLANE_COMPRESSED != 0 {
                    if len > n {
                        return Err(Error::corrupt(format!("a compressed plane of {len} bytes exceeds its {n} bytes")));
                    }
                    format::check_zstd_ratio(n as u64, len as u64, "a compressed plane")?;
                    let src = self.read_range(take(len as u64, "a plane")?)?;
                    let got = dctx
                        .decompress_to_buffer(&src[..], dst)
                        .map_err(|err| Error::corrupt(format!("zstd: {err}")))?;
                    if got != n {
                        return Err(Error::corrupt(format!("a plane decodes to {got} bytes, not {n}")));
                    }
                } else {
                    if len != n {
                        return Err(Error::corrupt(format!("a stored plane has {len} bytes, not {n}")));
                    }
                    dst.copy_from_slice(&self.read_range(take(len as u64, "a plane")?)?);
                }
            }
            let tail = this - n * es;
            shuffled[n * es..this].copy_from_slice(&self.read_range(take(tail as u64, "a block's tail")?)?);
            format::unshuffle_block(&shuffled[..this], &mut out[..this], es);
            sink(&out[..this])?;
            remaining -= this as u64;
        }
        if pos != end {
            return Err(Error::corrupt("bytes after the last block of the section"));
        }
        Ok(())
    }

    /// Decodes a serde value from a section written by [`crate::CheckpointWriter::add_serde`].
    ///
    /// The section records the type it was written from: a value of another type is refused with an
    /// error naming both (type names are compared without their module paths, so moving a type to
    /// another module keeps its checkpoints readable; the schema hash, when both sides have one, catches
    /// a struct whose fields or an enum whose variants changed). Every byte must be used: bytes left over
    /// mean the section holds something else. Sections written before fingerprints existed (encoding
    /// [`Encoding::Postcard`]) are read without the type check.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::SectionNotFound`]; [`ErrorKind::Encoding`] when the section is not a serde section,
    /// holds another type, does not decode, or has bytes left over; the errors of
    /// [`Checkpoint::read`] (corruption, I/O).
    pub fn read_serde<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        self.read_serde_checked(name, true)
    }

    /// [`Checkpoint::read_serde`] without the type check: for a type that was renamed, or whose
    /// `Deserialize` changed its shape in a way postcard still reads (a field renamed). Bytes left over are
    /// still an error.
    ///
    /// # Errors
    ///
    /// As [`Checkpoint::read_serde`], except that another type's section is decoded as `T`.
    pub fn read_serde_unchecked<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        self.read_serde_checked(name, false)
    }

    fn read_serde_checked<T: DeserializeOwned>(&self, name: &str, check_type: bool) -> Result<T> {
        let e = self.section(name)?;
        let fail = |err: Error| self.err(err.with_section(name));
        if !matches!(e.encoding, Encoding::Postcard | Encoding::TypedPostcard) {
            return Err(fail(Error::new(
                ErrorKind::Encoding,
                format!("section is encoded as {}, not postcard", e.encoding.name()),
            )));
        }
        let typed = e.encoding == Encoding::TypedPostcard;
        let bytes = self.read(name)?;
        let payload = if typed {
            let (written, payload) = crate::typed::Fingerprint::decode(&bytes).map_err(fail)?;
            if check_type {
                written.check_read_as(&crate::typed::Fingerprint::of::<T>()).map_err(fail)?;
            }
            payload
        } else {
            &bytes[..]
        };
        let encoding = |m: String| fail(Error::new(ErrorKind::Encoding, m));
        match postcard::take_from_bytes::<T>(payload) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(encoding(format!(
                "decoding as `{}` used {} of the section's {} bytes: it holds another type",
                std::any::type_name::<T>(),
                payload.len() - rest.len(),
                payload.len()
            ))),
            Err(err) => Err(encoding(format!("postcard decoding as `{}` failed: {err}", std::any::type_name::<T>()))),
        }
    }

    /// The elements of a section written by [`crate::CheckpointWriter::add_slice`], borrowed from the
    /// memory map when the section is raw and aligned for `T` (zero copy), copied otherwise (a compressed
    /// section, plain reads, or the other byte order, which is converted for the number types).
    ///
    /// The section's recorded element type must be `T`'s (`f64`, `u32`, ..., or for other [`Pod`]
    /// types the same size); a section of plain bytes ([`crate::CheckpointWriter::add_bytes`], the C API)
    /// is read as `T`s when its length is a whole number of them.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Encoding`] when the section holds another element type or encoding, or a length
    /// that is not a whole number of `T`; the errors of [`Checkpoint::read`].
    pub fn read_slice<T: Pod>(&self, name: &str) -> Result<Cow<'_, [T]>> {
        let e = self.section(name)?;
        let how = crate::typed::check_slice_read::<T>(e.encoding, e.raw_len)
            .map_err(|err| self.err(err.with_section(name)))?;
        let bytes = self.read(name)?;
        let size = std::mem::size_of::<T>();
        match (bytes, how) {
            (Cow::Borrowed(b), SliceRead::AsIs) => match bytemuck::try_cast_slice::<u8, T>(b) {
                Ok(slice) => Ok(Cow::Borrowed(slice)),
                Err(_) => Ok(Cow::Owned(bytemuck::pod_collect_to_vec(b))),
            },
            (bytes, how) => {
                let mut out: Vec<T> = bytemuck::pod_collect_to_vec(&bytes);
                if how == SliceRead::Swap {
                    crate::typed::swap_elements(bytemuck::cast_slice_mut(&mut out), size);
                }
                Ok(Cow::Owned(out))
            }
        }
    }

    /// Decodes a section written by [`crate::CheckpointWriter::add_slice`] into `dst`, whose length must
    /// be the section's element count (no allocation of the section's size), with the checks of
    /// [`Checkpoint::read_slice`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] when `dst` has another length; as [`Checkpoint::read_slice`].
    pub fn read_into_slice<T: Pod>(&self, name: &str, dst: &mut [T]) -> Result<()> {
        let e = self.section(name)?;
        let how = crate::typed::check_slice_read::<T>(e.encoding, e.raw_len)
            .map_err(|err| self.err(err.with_section(name)))?;
        let size = std::mem::size_of::<T>();
        let count = e.raw_len / size as u64;
        if dst.len() as u64 != count {
            return Err(self.err(
                Error::invalid(format!("destination holds {} elements but the section has {count}", dst.len()))
                    .with_section(name),
            ));
        }
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        self.read_into(name, bytes)?;
        if how == SliceRead::Swap {
            crate::typed::swap_elements(bytes, size);
        }
        Ok(())
    }

    /// The mapped bytes of the whole file and the byte range of a raw section inside it, for callers that
    /// hand out zero-copy views that must keep the mapping alive (the Python module). `None` when the file
    /// is not mapped or the section is compressed.
    ///
    /// # Errors
    ///
    /// As [`Checkpoint::read`] for a raw section of a mapped file (its CRC is checked); otherwise only
    /// [`ErrorKind::SectionNotFound`].
    pub fn raw_view(&self, name: &str) -> Result<Option<(MappedBytes, Range<usize>)>> {
        let e = self.section(name)?;
        let i = self.index[name];
        match &self.source {
            Source::Mapped(m) if e.codec == Codec::None => {
                self.read_inner(i, e).map_err(|err| self.err(err.with_section(name)))?;
                Ok(Some((m.clone(), e.offset as usize..(e.offset + e.stored_len) as usize)))
            }
            _ => Ok(None),
        }
    }

    /// [`Checkpoint::raw_view`] without reading the section first: the structure (header, table, trailer
    /// and their CRCs, every offset and length) was checked at open, but not the section's own CRC, so a
    /// damaged byte inside it goes unnoticed. For callers that hand out views of large sections in
    /// constant time (`ckpt.load(path, verify=False)` in Python); [`Checkpoint::verify_section`] checks
    /// the section later.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::SectionNotFound`].
    pub fn raw_view_unverified(&self, name: &str) -> Result<Option<(MappedBytes, Range<usize>)>> {
        let e = self.section(name)?;
        match &self.source {
            Source::Mapped(m) if e.codec == Codec::None => {
                Ok(Some((m.clone(), e.offset as usize..(e.offset + e.stored_len) as usize)))
            }
            _ => Ok(None),
        }
    }
}

/// A computed CRC against the one the file records: `what` names it in the error ("crc32", "decoded crc32").
fn check_crc(what: &str, expected: u32, actual: u32) -> Result<()> {
    if actual == expected {
        return Ok(());
    }
    Err(Error::corrupt(format!("{what} mismatch: expected {expected:#010x}, computed {actual:#010x}")))
}
