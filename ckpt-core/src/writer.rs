//! Streaming encoder of checkpoint files (format in [`crate::format`]).
//!
//! Sections are written straight from the caller's buffers: raw sections go to the file in large chunks
//! (CRC computed chunk by chunk while the bytes are hot in cache), compressed sections pass through a
//! bounded shuffle block and a bounded zstd output buffer. The scratch memory of a save is therefore a
//! few MiB whatever the state size.

use std::collections::HashSet;
use std::io;
use std::time::Instant;

#[cfg(not(feature = "zstd"))]
use crate::zstd_stub as zstd;
use crc32fast::Hasher;
use zstd::stream::raw::{Encoder as ZstdEncoder, Operation, OutBuffer};

use crate::error::{Error, ErrorKind, Result};
use crate::format::{self, Codec, Encoding, Header, RAW_ALIGN, SMALL_ALIGN, SectionEntry, Trailer, shuffle_block_len};
use crate::storage::StorageWriter;

/// Small writes are gathered into a buffer of this size before reaching the storage.
const COALESCE: usize = 1 << 20;
/// Writes of at least this size go to the storage directly (after what is gathered), without a copy into
/// the gathering buffer: the storage stages large files for direct I/O itself.
const DIRECT_EMIT: usize = 64 << 10;
/// Raw data is checksummed and written in chunks of this size.
const RAW_CHUNK: usize = 8 << 20;
/// zstd output buffer.
const ZSTD_OUT: usize = 256 << 10;
/// Sections below this size are never compressed by `Auto`.
const AUTO_MIN_LEN: usize = 16 << 10;
/// `Auto` compresses up to this many sample windows of [`AUTO_WINDOW`] bytes before deciding.
const AUTO_WINDOWS: usize = 4;
const AUTO_WINDOW: usize = 32 << 10;
/// The zstd level `Auto` uses when it decides to compress: one of zstd's fast levels. A fast disk writing
/// over reused blocks leaves compression little time to pay for itself: at level 1 the exponent planes of
/// a float64 field only just did; at -1 they pay with the same ratio (BENCHMARKS.md, scenario 5).
pub const AUTO_LEVEL: i32 = -1;

/// How a section is compressed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Stored as is (4 KiB aligned, memory-mappable). The default.
    #[default]
    None,
    /// zstd at the given level (1..=22; negative levels are zstd's fast modes).
    Zstd(i32),
    /// Compress samples first, and compress the section (zstd's fast level -1) only when the predicted
    /// time of compressing and writing the smaller output beats writing the raw bytes at the measured
    /// write bandwidth, and the ratio is at least 1.1. Incompressible data costs only the samples. Shuffled
    /// sections (element size > 1) are judged and then stored byte plane by byte plane: only the planes
    /// whose compression pays in time are compressed (FORMAT.md, filter 2).
    Auto,
}

impl Compression {
    /// Parses `off`/`none`/`0`, `auto`, `zstd`, `zstd:N` or a bare level `N` (as `CKPT_COMPRESS` takes).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] naming the text for anything else, or a level outside -7..=22.
    pub fn parse(text: &str) -> Result<Compression> {
        let t = text.trim().to_ascii_lowercase();
        let level = |s: &str| -> Result<i32> {
            let level: i32 = s.parse().map_err(|_| bad_compression(text))?;
            if !(-7..=22).contains(&level) {
                return Err(bad_compression(text));
            }
            Ok(level)
        };
        match t.as_str() {
            "off" | "none" | "no" | "0" | "false" => Ok(Compression::None),
            "auto" => Ok(Compression::Auto),
            "zstd" | "on" | "yes" | "true" => Ok(Compression::Zstd(3)),
            _ => match t.strip_prefix("zstd:") {
                Some(n) => Ok(Compression::Zstd(level(n)?)),
                None => Ok(Compression::Zstd(level(&t)?)),
            },
        }
    }
}

fn bad_compression(text: &str) -> Error {
    Error::invalid(format!(
        "invalid compression {text:?}: expected off, auto, zstd, zstd:LEVEL or a level from -7 to 22"
    ))
}

/// Per-section choices.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionOptions {
    /// Compression of this section.
    pub compression: Compression,
    /// Width in bytes of the elements (8 for `f64`) for the byte-shuffle filter applied before zstd; 1
    /// disables the filter. Ignored for uncompressed sections.
    pub element_size: u16,
    /// How the bytes are to be interpreted, recorded in the file.
    pub encoding: Encoding,
    /// A free tag stored with the section (the C API stores region ids here).
    pub tag: u32,
    /// Threads that compress a shuffled section (element size > 1) block by block, this thread included;
    /// 1 compresses on the calling thread only; 0 (the default) takes the store's setting
    /// ([`crate::Config::compression_threads`], `CKPT_COMPRESSION_THREADS`: by default the available
    /// cores, at most 8). Each thread samples its own blocks to decide which planes to compress, so the
    /// stored bytes may differ with the count; they decode to the same section. More threads pay only
    /// where cores are free (BENCHMARKS.md, scenario 5).
    pub compression_threads: u16,
}

impl Default for SectionOptions {
    fn default() -> SectionOptions {
        SectionOptions {
            compression: Compression::None,
            element_size: 1,
            encoding: Encoding::Bytes,
            tag: 0,
            compression_threads: 0,
        }
    }
}

impl SectionOptions {
    /// Uncompressed opaque bytes.
    pub fn new() -> SectionOptions {
        SectionOptions::default()
    }
    /// Sets the compression.
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> SectionOptions {
        self.compression = compression;
        self
    }
    /// Enables the byte-shuffle filter for elements of `element_size` bytes (when compressed).
    #[must_use]
    pub fn shuffle(mut self, element_size: u16) -> SectionOptions {
        self.element_size = element_size.max(1);
        self
    }
    /// Sets the recorded encoding.
    #[must_use]
    pub fn encoding(mut self, encoding: Encoding) -> SectionOptions {
        self.encoding = encoding;
        self
    }
    /// Sets the tag.
    #[must_use]
    pub fn tag(mut self, tag: u32) -> SectionOptions {
        self.tag = tag;
        self
    }
    /// Compresses a shuffled section on `threads` threads, this one included (see
    /// [`SectionOptions::compression_threads`]); 0 means the store's setting
    /// ([`crate::Config::compression_threads`]).
    #[must_use]
    pub fn compression_threads(mut self, threads: u16) -> SectionOptions {
        self.compression_threads = threads;
        self
    }
}

/// Size figures of a finished file.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Sum of the sections' decoded lengths.
    pub raw_bytes: u64,
    /// Length of the file on disk.
    pub file_bytes: u64,
    /// Number of sections.
    pub sections: u32,
}

struct OpenSection {
    name: String,
    encoding: Encoding,
    tag: u32,
    codec: Codec,
    element_size: usize,
    offset: u64,
    raw_len: u64,
    stored_len: u64,
    raw_crc: Hasher,
    stored_crc: Hasher,
    encoder: Option<ZstdEncoder<'static>>,
    /// Shuffled sections: stored plane by plane (FORMAT.md, filter 2).
    planes: Option<PlaneCoder>,
    /// The zstd level of the planes, for the coders of other threads.
    level: i32,
    /// Threads that compress the planes (this one included).
    threads: usize,
    /// Pending bytes of an unfinished shuffle block (shuffled sections only).
    block: Vec<u8>,
}

/// Every this many blocks a shuffled section compresses all its planes again to re-decide which pay.
const PLANE_SAMPLE_EVERY: u64 = 64;
/// A plane is compressed only when zstd saves at least this fraction of it.
const PLANE_MIN_SAVING: f64 = 0.1;

/// Chooses, block by block, which byte planes of a shuffled section are worth compressing, and compresses
/// them. The low-order bytes of floating-point data are close to random: zstd spends its time searching
/// them for matches and saves nothing, while the exponent bytes compress many times over, fast. Sampling
/// blocks compress every plane (their results are stored, so a sample costs nothing extra) and record, per
/// plane, whether it saved at least 10% and, with `Compression::Auto`, whether the time it took is less
/// than writing the bytes it saved at the measured write bandwidth; the blocks in between compress only
/// those planes.
struct PlaneCoder {
    ctx: zstd::bulk::Compressor<'static>,
    /// Which planes the last sample found worth compressing.
    compress: Vec<bool>,
    /// `Compression::Auto`: also weigh compression time against write time.
    weigh_time: bool,
    /// Blocks stored so far.
    blocks: u64,
    /// Compressed output of one plane.
    out: Vec<u8>,
}

impl PlaneCoder {
    fn new(level: i32, element_size: usize, weigh_time: bool) -> Result<PlaneCoder> {
        let mut ctx = zstd::bulk::Compressor::new(level).map_err(|e| Error::io("zstd init", e))?;
        ctx.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(false)).map_err(|e| Error::io("zstd init", e))?;
        Ok(PlaneCoder { ctx, compress: vec![true; element_size], weigh_time, blocks: 0, out: Vec::new() })
    }

    /// Shuffles `block` into `enc` and compresses the planes that pay (FORMAT.md, filter 2): `enc` then
    /// holds the block's plane words, its compressed planes and the shuffled bytes the others are stored
    /// from. `bandwidth`: the write speed `Compression::Auto` weighs compression time against.
    fn encode(&mut self, block: &[u8], es: usize, bandwidth: f64, enc: &mut EncodedBlock) -> Result<()> {
        enc.shuffled.resize(block.len(), 0);
        format::shuffle_block(block, &mut enc.shuffled, es);
        enc.words.clear();
        enc.packed.clear();
        let n = block.len() / es;
        let sample = self.blocks.is_multiple_of(PLANE_SAMPLE_EVERY);
        self.out.resize(zstd::zstd_safe::compress_bound(n), 0);
        for p in 0..es {
            let plane = &enc.shuffled[p * n..(p + 1) * n];
            if n == 0 || !(sample || self.compress[p]) {
                enc.words.push(n as u32);
                continue;
            }
            let start = Instant::now();
            let len =
                self.ctx.compress_to_buffer(plane, &mut self.out).map_err(|e| Error::io("zstd compression", e))?;
            let saved = n.saturating_sub(len) as f64;
            if sample {
                let pays_in_size = saved >= PLANE_MIN_SAVING * n as f64;
                let pays_in_time = saved / bandwidth > start.elapsed().as_secs_f64();
                self.compress[p] = pays_in_size && (!self.weigh_time || pays_in_time);
            }
            if len < n {
                enc.words.push(len as u32 | format::PLANE_COMPRESSED);
                enc.packed.extend_from_slice(&self.out[..len]);
            } else {
                enc.words.push(n as u32);
            }
        }
        self.blocks += 1;
        Ok(())
    }
}

/// One block of a shuffled section, encoded by [`PlaneCoder::encode`] and not yet written.
#[derive(Default)]
struct EncodedBlock {
    /// The shuffled block: stored planes and the tail are written from here.
    shuffled: Vec<u8>,
    /// The compressed planes, in plane order.
    packed: Vec<u8>,
    /// Per plane: its stored length, with [`format::PLANE_COMPRESSED`] when compressed.
    words: Vec<u32>,
}

/// Blocks of a shuffled section on their way from a helper thread to the writing thread, per helper: with
/// the one it is compressing, a helper is at most this many blocks ahead.
const BLOCKS_QUEUED: usize = 2;

/// Writes one checkpoint file sequentially. Used by [`crate::CheckpointWriter`].
pub(crate) struct FileBuilder {
    out: Box<dyn StorageWriter>,
    buf: Vec<u8>,
    pos: u64,
    header: Header,
    header_crc: Option<(u32, u32)>,
    entries: Vec<SectionEntry>,
    names: HashSet<String>,
    open: Option<OpenSection>,
    /// The block being encoded by this thread (shuffled sections), kept from block to block.
    encoded: EncodedBlock,
    zbuf: Vec<u8>,
    /// Write bandwidth (bytes/s) assumed by `Compression::Auto`.
    pub(crate) write_bandwidth: f64,
    /// Threads compressing a shuffled section whose options say 0 (the store's setting).
    pub(crate) compression_threads: u16,
    poisoned: bool,
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::io(what, e)
}

impl FileBuilder {
    pub(crate) fn new(out: Box<dyn StorageWriter>, header: Header, write_bandwidth: f64) -> FileBuilder {
        FileBuilder {
            out,
            buf: Vec::with_capacity(64 << 10),
            pos: 0,
            header,
            header_crc: None,
            entries: Vec::new(),
            names: HashSet::new(),
            open: None,
            encoded: EncodedBlock::default(),
            zbuf: Vec::new(),
            write_bandwidth,
            compression_threads: 1,
            poisoned: false,
        }
    }

    pub(crate) fn header_mut(&mut self) -> Result<&mut Header> {
        if self.header_crc.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "metadata must be set before the first section is written",
            ));
        }
        Ok(&mut self.header)
    }

    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::new(ErrorKind::InvalidState, "an earlier write to this checkpoint failed"));
        }
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() >= DIRECT_EMIT {
            self.flush_buf()?;
            self.out.write_all(bytes).map_err(io_err("write"))?;
        } else {
            if self.buf.len() + bytes.len() > COALESCE {
                self.flush_buf()?;
            }
            self.buf.extend_from_slice(bytes);
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn flush_buf(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf).map_err(io_err("write"))?;
            self.buf.clear();
        }
        Ok(())
    }

    fn pad_to(&mut self, align: u64) -> Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let target = format::align_up(self.pos, align).expect("offset overflow");
        while self.pos < target {
            let n = ((target - self.pos) as usize).min(ZEROS.len());
            self.emit(&ZEROS[..n])?;
        }
        Ok(())
    }

    fn ensure_header(&mut self) -> Result<()> {
        if self.header_crc.is_none() {
            let bytes = self.header.encode()?;
            let crc = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"));
            self.emit(&bytes)?;
            self.header_crc = Some((bytes.len() as u32, crc));
        }
        Ok(())
    }

    /// Starts a section whose codec is already decided.
    fn begin(&mut self, name: &str, opts: &SectionOptions, codec: Codec) -> Result<()> {
        self.check_usable()?;
        if self.open.is_some() {
            return Err(Error::new(ErrorKind::InvalidState, "another section is still being written"));
        }
        format::check_section_name(name)?;
        if self.names.contains(name) {
            return Err(Error::invalid(format!("section `{name}` is written twice")));
        }
        if self.entries.len() >= format::MAX_SECTIONS as usize {
            return Err(Error::new(ErrorKind::TooLarge, "too many sections"));
        }
        self.ensure_header()?;
        let align = if self.entries.is_empty() || codec == Codec::None { RAW_ALIGN } else { SMALL_ALIGN };
        self.pad_to(align)?;
        let element_size = if codec == Codec::None { 1 } else { usize::from(opts.element_size.max(1)) };
        let level = match opts.compression {
            Compression::Zstd(level) => level,
            _ => AUTO_LEVEL,
        };
        let (encoder, planes) = match codec {
            Codec::None => (None, None),
            Codec::Zstd if element_size > 1 => {
                (None, Some(PlaneCoder::new(level, element_size, opts.compression == Compression::Auto)?))
            }
            Codec::Zstd => (Some(new_encoder(level)?), None),
        };
        if encoder.is_some() && self.zbuf.len() != ZSTD_OUT {
            self.zbuf = vec![0; ZSTD_OUT];
        }
        self.open = Some(OpenSection {
            name: name.to_string(),
            encoding: opts.encoding,
            tag: opts.tag,
            codec,
            element_size,
            offset: self.pos,
            raw_len: 0,
            stored_len: 0,
            raw_crc: Hasher::new(),
            stored_crc: Hasher::new(),
            encoder,
            planes,
            level,
            threads: usize::from(match opts.compression_threads {
                0 => self.compression_threads.max(1),
                n => n,
            }),
            block: Vec::new(),
        });
        Ok(())
    }

    fn feed(&mut self, data: &[u8]) -> Result<()> {
        let mut sec = self.open.take().expect("a section is open");
        let result = self.feed_inner(&mut sec, data);
        self.open = Some(sec);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn feed_inner(&mut self, sec: &mut OpenSection, data: &[u8]) -> Result<()> {
        sec.raw_len += data.len() as u64;
        if sec.raw_len > format::MAX_SECTION_LEN {
            return Err(Error::new(ErrorKind::TooLarge, "section larger than 1 PiB").with_section(&sec.name));
        }
        match sec.codec {
            Codec::None => {
                for chunk in data.chunks(RAW_CHUNK) {
                    sec.raw_crc.update(chunk);
                    self.emit(chunk)?;
                }
                sec.stored_len = sec.raw_len;
            }
            Codec::Zstd if sec.element_size <= 1 => {
                for chunk in data.chunks(RAW_CHUNK) {
                    sec.raw_crc.update(chunk);
                    self.compress(sec, chunk)?;
                }
            }
            Codec::Zstd => {
                sec.raw_crc.update(data);
                let block_len = shuffle_block_len(sec.element_size);
                let mut rest = data;
                // Complete a pending partial block first.
                if !sec.block.is_empty() {
                    let take = (block_len - sec.block.len()).min(rest.len());
                    sec.block.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if sec.block.len() == block_len {
                        let block = std::mem::take(&mut sec.block);
                        self.shuffle_and_compress(sec, &block)?;
                        sec.block = block;
                        sec.block.clear();
                    }
                }
                let whole = rest.len() / block_len * block_len;
                if sec.threads > 1 && whole >= 2 * block_len && crate::storage::io_threads_allowed() {
                    self.compress_blocks_parallel(sec, &rest[..whole])?;
                    rest = &rest[whole..];
                }
                while rest.len() >= block_len {
                    self.shuffle_and_compress(sec, &rest[..block_len])?;
                    rest = &rest[block_len..];
                }
                sec.block.extend_from_slice(rest);
            }
        }
        Ok(())
    }

    fn shuffle_and_compress(&mut self, sec: &mut OpenSection, block: &[u8]) -> Result<()> {
        let mut enc = std::mem::take(&mut self.encoded);
        let coder = sec.planes.as_mut().expect("a plane-coded section");
        let r = coder
            .encode(block, sec.element_size, self.write_bandwidth.max(1.0), &mut enc)
            .map_err(|e| e.with_section(&sec.name))
            .and_then(|()| self.emit_encoded(sec, &enc));
        self.encoded = enc;
        r
    }

    /// Compresses the whole blocks of `data` on `sec.threads` threads: block `k` on thread `k % threads`
    /// (this one takes its share with the section's own coder, each helper has a coder of its own), and
    /// writes them in order from this thread. Each helper runs at most [`BLOCKS_QUEUED`] blocks ahead, and
    /// gets back the buffers of the blocks written, so memory stays a few blocks per thread. A helper that
    /// cannot be started leaves its blocks to this thread.
    fn compress_blocks_parallel(&mut self, sec: &mut OpenSection, data: &[u8]) -> Result<()> {
        let es = sec.element_size;
        let block_len = shuffle_block_len(es);
        let blocks: Vec<&[u8]> = data.chunks(block_len).collect();
        let threads = sec.threads.min(blocks.len());
        let (level, weigh_time) = (sec.level, sec.planes.as_ref().is_some_and(|c| c.weigh_time));
        let bandwidth = self.write_bandwidth.max(1.0);
        std::thread::scope(|scope| {
            type Lane = (std::sync::mpsc::Receiver<Result<EncodedBlock>>, std::sync::mpsc::Sender<EncodedBlock>);
            let mut lanes: Vec<Option<Lane>> = Vec::with_capacity(threads);
            lanes.push(None); // lane 0: this thread
            for lane in 1..threads {
                let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<Result<EncodedBlock>>(BLOCKS_QUEUED);
                let (free_tx, free_rx) = std::sync::mpsc::channel::<EncodedBlock>();
                let blocks = &blocks;
                let helper = move || {
                    let mut coder = match PlaneCoder::new(level, es, weigh_time) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = done_tx.send(Err(e));
                            return;
                        }
                    };
                    for block in blocks.iter().skip(lane).step_by(threads) {
                        let mut enc = free_rx.try_recv().unwrap_or_default();
                        let r = coder.encode(block, es, bandwidth, &mut enc).map(|()| enc);
                        // The writing thread stopped (an error): so does this one.
                        if done_tx.send(r).is_err() {
                            return;
                        }
                    }
                };
                let started = std::thread::Builder::new().name("ckpt-zstd".into()).spawn_scoped(scope, helper);
                lanes.push(started.ok().map(|_| (done_rx, free_tx)));
            }
            for (k, block) in blocks.iter().enumerate() {
                match &lanes[k % threads] {
                    Some((done, free)) => {
                        let enc = done
                            .recv()
                            .map_err(|_| Error::new(ErrorKind::Io, "a compression thread stopped"))?
                            .map_err(|e| e.with_section(&sec.name))?;
                        self.emit_encoded(sec, &enc)?;
                        let _ = free.send(enc);
                    }
                    None => self.shuffle_and_compress(sec, block)?,
                }
            }
            Ok(())
        })
    }

    /// Writes one encoded block as its plane records (FORMAT.md, filter 2).
    fn emit_encoded(&mut self, sec: &mut OpenSection, enc: &EncodedBlock) -> Result<()> {
        let es = sec.element_size;
        let n = enc.shuffled.len() / es;
        let mut header = Vec::with_capacity(4 * es);
        for w in &enc.words {
            header.extend_from_slice(&w.to_le_bytes());
        }
        self.emit_stored(sec, &header)?;
        let mut packed_at = 0;
        for (p, w) in enc.words.iter().enumerate() {
            if w & format::PLANE_COMPRESSED != 0 {
                let len = (w & !format::PLANE_COMPRESSED) as usize;
                self.emit_stored(sec, &enc.packed[packed_at..packed_at + len])?;
                packed_at += len;
            } else {
                self.emit_stored(sec, &enc.shuffled[p * n..(p + 1) * n])?;
            }
        }
        self.emit_stored(sec, &enc.shuffled[n * es..])
    }

    /// Emits stored bytes of a compressed section (counted and checksummed).
    fn emit_stored(&mut self, sec: &mut OpenSection, bytes: &[u8]) -> Result<()> {
        sec.stored_crc.update(bytes);
        sec.stored_len += bytes.len() as u64;
        self.emit(bytes)
    }

    fn compress(&mut self, sec: &mut OpenSection, mut input: &[u8]) -> Result<()> {
        let mut zbuf = std::mem::take(&mut self.zbuf);
        let enc = sec.encoder.as_mut().expect("zstd section has an encoder");
        let mut result = Ok(());
        while !input.is_empty() {
            let status = match enc.run_on_buffers(input, &mut zbuf) {
                Ok(s) => s,
                Err(e) => {
                    result = Err(Error::io("zstd compression", e).with_section(&sec.name));
                    break;
                }
            };
            input = &input[status.bytes_read..];
            let out = &zbuf[..status.bytes_written];
            sec.stored_crc.update(out);
            sec.stored_len += out.len() as u64;
            if let Err(e) = self.emit(out) {
                result = Err(e);
                break;
            }
        }
        self.zbuf = zbuf;
        result
    }

    fn end(&mut self) -> Result<()> {
        let mut sec = self.open.take().expect("a section is open");
        let result = self.end_inner(&mut sec);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn end_inner(&mut self, sec: &mut OpenSection) -> Result<()> {
        if sec.planes.is_some() && !sec.block.is_empty() {
            let block = std::mem::take(&mut sec.block);
            self.shuffle_and_compress(sec, &block)?;
        }
        if let Some(enc) = sec.encoder.as_mut() {
            let mut zbuf = std::mem::take(&mut self.zbuf);
            loop {
                let mut out = OutBuffer::around(&mut zbuf[..]);
                let remaining = enc.finish(&mut out, true).map_err(|e| Error::io("zstd compression", e))?;
                let n = out.pos();
                sec.stored_crc.update(&zbuf[..n]);
                sec.stored_len += n as u64;
                self.emit(&zbuf[..n])?;
                if remaining == 0 {
                    break;
                }
            }
            self.zbuf = zbuf;
        }
        let raw_crc32 = sec.raw_crc.clone().finalize();
        let stored_crc32 = if sec.codec == Codec::None { raw_crc32 } else { sec.stored_crc.clone().finalize() };
        self.names.insert(sec.name.clone());
        self.entries.push(SectionEntry {
            name: std::mem::take(&mut sec.name),
            encoding: sec.encoding,
            codec: sec.codec,
            shuffle: sec.codec == Codec::Zstd && sec.element_size > 1,
            planes: sec.planes.is_some(),
            element_size: if sec.codec == Codec::Zstd { sec.element_size as u16 } else { 1 },
            tag: sec.tag,
            raw_crc32,
            raw_len: sec.raw_len,
            stored_len: sec.stored_len,
            offset: sec.offset,
            stored_crc32,
        });
        Ok(())
    }

    /// Writes a whole section from one buffer.
    pub(crate) fn add_section(&mut self, name: &str, opts: &SectionOptions, data: &[u8]) -> Result<()> {
        let codec = self.resolve(opts, data)?;
        self.begin(name, opts, codec)?;
        self.feed(data)?;
        self.end()
    }

    /// Writes a section gathered from several buffers, in order.
    pub(crate) fn add_section_parts(&mut self, name: &str, opts: &SectionOptions, parts: &[&[u8]]) -> Result<()> {
        let codec = self.resolve(opts, parts.iter().copied().find(|p| !p.is_empty()).unwrap_or(&[]))?;
        self.begin(name, opts, codec)?;
        for part in parts {
            self.feed(part)?;
        }
        self.end()
    }

    fn resolve(&self, opts: &SectionOptions, sample_source: &[u8]) -> Result<Codec> {
        Ok(match opts.compression {
            Compression::None => Codec::None,
            Compression::Zstd(level) => {
                if !(-7..=22).contains(&level) {
                    return Err(bad_compression(&level.to_string()));
                }
                Codec::Zstd
            }
            Compression::Auto => {
                auto_choice(sample_source, usize::from(opts.element_size.max(1)), self.write_bandwidth)
            }
        })
    }

    /// Finishes the file: section table and trailer.
    pub(crate) fn finish(mut self) -> Result<Finished> {
        self.check_usable()?;
        if self.open.is_some() {
            return Err(Error::new(ErrorKind::InvalidState, "a section is still being written"));
        }
        self.ensure_header()?;
        self.pad_to(SMALL_ALIGN)?;
        let table_offset = self.pos;
        let mut table = Vec::with_capacity(self.entries.len() * format::TABLE_ENTRY_LEN);
        for e in &self.entries {
            e.encode_into(&mut table)?;
        }
        let (_, header_crc32) = self.header_crc.expect("header written");
        self.emit(&table)?;
        let table_crc32 = crc32fast::hash(&table);
        let trailer = Trailer {
            table_offset,
            file_len: self.pos + format::TRAILER_LEN as u64,
            section_count: self.entries.len() as u32,
            table_crc32,
            header_crc32,
        };
        self.emit(&trailer.encode())?;
        self.flush_buf()?;
        let stats = FileStats {
            raw_bytes: self.entries.iter().map(|e| e.raw_len).sum(),
            file_bytes: self.pos,
            sections: self.entries.len() as u32,
        };
        Ok(Finished { out: self.out, stats, header_crc32, table_crc32 })
    }
}

/// A file whose last byte is written: the storage writer (not yet synced), the figures, and the file's
/// identity (what `Checkpoint::identity` reads back).
pub(crate) struct Finished {
    pub(crate) out: Box<dyn StorageWriter>,
    pub(crate) stats: FileStats,
    pub(crate) header_crc32: u32,
    pub(crate) table_crc32: u32,
}

fn new_encoder(level: i32) -> Result<ZstdEncoder<'static>> {
    let mut enc = ZstdEncoder::new(level).map_err(|e| Error::io("zstd init", e))?;
    // Our own CRCs cover the data; zstd's checksum would only cost time.
    enc.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(false)).map_err(|e| Error::io("zstd init", e))?;
    Ok(enc)
}

/// What `Compression::Auto` samples with, kept per thread from one save to the next: a zstd context and
/// buffers made anew at every save cost more than compressing the samples (their fresh memory is
/// page-faulted in each time, about ten times the cost of compressing the samples).
struct Sampler {
    ctx: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
    out: Vec<u8>,
}

thread_local! {
    static SAMPLER: std::cell::RefCell<Option<Sampler>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's [`Sampler`], its buffers at least `scratch` and `out` bytes long; `None`
/// when zstd cannot make a context.
fn with_sampler<R>(scratch: usize, out: usize, f: impl FnOnce(&mut Sampler) -> R) -> Option<R> {
    SAMPLER.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            let ctx = zstd::bulk::Compressor::new(AUTO_LEVEL).ok()?;
            *slot = Some(Sampler { ctx, scratch: Vec::new(), out: Vec::new() });
        }
        let sampler = slot.as_mut()?;
        if sampler.scratch.len() < scratch {
            sampler.scratch.resize(scratch, 0);
        }
        if sampler.out.len() < out {
            sampler.out.resize(out, 0);
        }
        Some(f(sampler))
    })
}

/// The codec `Compression::Auto` picks for `data` (see [`Compression::Auto`]).
pub fn auto_choice(data: &[u8], element_size: usize, write_bandwidth: f64) -> Codec {
    if data.len() < AUTO_MIN_LEN {
        return Codec::None;
    }
    if element_size > 1 {
        return auto_choice_planes(data, element_size, write_bandwidth);
    }
    let window = AUTO_WINDOW.min(data.len());
    let windows = AUTO_WINDOWS.min(data.len() / window).max(1);
    let stride = if windows > 1 { (data.len() - window) / (windows - 1) } else { 0 };
    let sample = |s: &mut Sampler| {
        let (mut raw, mut packed) = (0usize, 0usize);
        let start = Instant::now();
        for i in 0..windows {
            let input = &data[i * stride..i * stride + window];
            let Ok(n) = s.ctx.compress_to_buffer(input, &mut s.out[..]) else {
                return Codec::None;
            };
            raw += input.len();
            packed += n;
            // Clearly incompressible after the first window: stop sampling.
            if i == 0 && (raw as f64) < 1.02 * packed as f64 {
                return Codec::None;
            }
        }
        let secs = start.elapsed().as_secs_f64().max(1e-7);
        let ratio = raw as f64 / packed.max(1) as f64;
        let compress_speed = raw as f64 / secs;
        let bw = write_bandwidth.max(1.0);
        let t_raw = 1.0 / bw;
        let t_zstd = 1.0 / compress_speed + 1.0 / (ratio * bw);
        if ratio >= 1.1 && t_zstd < 0.95 * t_raw { Codec::Zstd } else { Codec::None }
    };
    with_sampler(0, zstd::zstd_safe::compress_bound(window), sample).unwrap_or(Codec::None)
}

/// `auto_choice` for shuffled data, which is stored plane by plane: compress when at least one byte plane
/// of the samples pays (saves 10% and takes less time than writing what it saves), as the writer's
/// [`PlaneCoder`] will then decide block by block.
fn auto_choice_planes(data: &[u8], element_size: usize, write_bandwidth: f64) -> Codec {
    const WINDOW: usize = 256 << 10;
    const WINDOWS: usize = 2;
    let window = WINDOW.min(data.len()) / element_size * element_size;
    if window == 0 {
        return Codec::None;
    }
    let windows = WINDOWS.min(data.len() / window).max(1);
    let stride = if windows > 1 { (data.len() - window) / (windows - 1) / element_size * element_size } else { 0 };
    let n = window / element_size;
    let sample = |s: &mut Sampler| {
        let (mut saved, mut secs) = (vec![0.0f64; element_size], vec![0.0f64; element_size]);
        let shuffled = &mut s.scratch[..window];
        for i in 0..windows {
            format::shuffle_block(&data[i * stride..i * stride + window], shuffled, element_size);
            for p in 0..element_size {
                let start = Instant::now();
                let Ok(len) = s.ctx.compress_to_buffer(&shuffled[p * n..(p + 1) * n], &mut s.out[..]) else {
                    return None;
                };
                secs[p] += start.elapsed().as_secs_f64();
                saved[p] += n.saturating_sub(len) as f64;
            }
            // No plane of the first window comes near paying (incompressible data): stop sampling.
            if i == 0 && saved.iter().all(|&b| b < 0.25 * PLANE_MIN_SAVING * n as f64) {
                return Some((saved, secs));
            }
        }
        Some((saved, secs))
    };
    let Some(Some((saved, secs))) = with_sampler(window, zstd::zstd_safe::compress_bound(n), sample) else {
        return Codec::None;
    };
    let plane_bytes = (n * windows) as f64;
    let bw = write_bandwidth.max(1.0);
    let pays = (0..element_size).any(|p| saved[p] >= PLANE_MIN_SAVING * plane_bytes && saved[p] / bw > secs[p]);
    if pays { Codec::Zstd } else { Codec::None }
}

/// Streams one section of unknown length; obtained from [`crate::CheckpointWriter::section_writer`].
///
/// Call [`SectionWriter::finish`] to complete the section; dropping it unfinished poisons the checkpoint
/// (its commit then fails and the temporary file is removed).
#[must_use = "a section writer must be finished, or the checkpoint cannot be committed"]
pub struct SectionWriter<'a> {
    builder: &'a mut FileBuilder,
    /// The temporary file, named in errors.
    path: std::path::PathBuf,
    name: String,
    opts: SectionOptions,
    /// With `Compression::Auto`, the first bytes are held until enough are seen to decide.
    pending: Option<Vec<u8>>,
    finished: bool,
}

impl<'a> SectionWriter<'a> {
    pub(crate) fn new(
        builder: &'a mut FileBuilder,
        path: &std::path::Path,
        name: &str,
        opts: SectionOptions,
    ) -> Result<SectionWriter<'a>> {
        builder.check_usable()?;
        format::check_section_name(name)?;
        if builder.names.contains(name) {
            return Err(Error::invalid(format!("section `{name}` is written twice")));
        }
        let mut w = SectionWriter {
            builder,
            path: path.to_path_buf(),
            name: name.to_string(),
            opts,
            pending: None,
            finished: false,
        };
        if opts.compression == Compression::Auto {
            w.pending = Some(Vec::new());
        } else {
            let codec = w.builder.resolve(&opts, &[])?;
            w.builder.begin(name, &opts, codec)?;
        }
        Ok(w)
    }

    fn decide(&mut self) -> Result<()> {
        if let Some(pending) = self.pending.take() {
            let codec = auto_choice(&pending, usize::from(self.opts.element_size.max(1)), self.builder.write_bandwidth);
            self.builder.begin(&self.name, &self.opts, codec)?;
            self.builder.feed(&pending)?;
        }
        Ok(())
    }

    /// Appends bytes to the section.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the write fails (or compression without the `zstd` feature); [`ErrorKind::TooLarge`] past
    /// 1 PiB; [`ErrorKind::InvalidState`] after an earlier write failed. The error names the section and the file.
    pub fn write_bytes(&mut self, data: &[u8]) -> Result<()> {
        let result = if let Some(p) = &mut self.pending {
            p.extend_from_slice(data);
            if p.len() >= AUTO_WINDOWS * AUTO_WINDOW { self.decide() } else { Ok(()) }
        } else {
            self.builder.feed(data)
        };
        result.map_err(|e| self.located(e))
    }

    /// Completes the section.
    ///
    /// # Errors
    ///
    /// As [`SectionWriter::write_bytes`], for the bytes still buffered and the section's end.
    pub fn finish(mut self) -> Result<()> {
        let result = self.decide().and_then(|()| {
            self.finished = true;
            self.builder.end()
        });
        result.map_err(|e| self.located(e))
    }

    /// Names the section and the file in an error.
    fn located(&self, e: Error) -> Error {
        e.with_section(self.name.clone()).with_path(&self.path)
    }
}

impl io::Write for SectionWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SectionWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.builder.poisoned = true;
            self.builder.open = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_parse() {
        assert_eq!(Compression::parse("off").unwrap(), Compression::None);
        assert_eq!(Compression::parse("AUTO").unwrap(), Compression::Auto);
        assert_eq!(Compression::parse("zstd").unwrap(), Compression::Zstd(3));
        assert_eq!(Compression::parse("zstd:19").unwrap(), Compression::Zstd(19));
        assert_eq!(Compression::parse("5").unwrap(), Compression::Zstd(5));
        assert!(Compression::parse("zstd:99").is_err());
        assert!(Compression::parse("gzip").unwrap_err().to_string().contains("\"gzip\""));
    }

    #[cfg_attr(not(feature = "zstd"), ignore = "compresses: needs the zstd feature")]
    #[test]
    #[cfg_attr(miri, ignore = "compresses with zstd (C code through FFI)")]
    fn auto_skips_random_and_takes_zeros_on_slow_disks() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let random: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(auto_choice(&random, 1, 1e9), Codec::None);
        assert_eq!(auto_choice(&random, 1, 1e6), Codec::None, "incompressible data never compresses");
        let zeros = vec![0u8; 1 << 20];
        assert_eq!(auto_choice(&zeros, 1, 1e8), Codec::Zstd);
        assert_eq!(auto_choice(&zeros[..100], 1, 1e6), Codec::None, "tiny sections stay raw");
    }

    /// A float64 field whose high bytes are smooth and whose low bytes are noise.
    fn noisy_field(elements: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..elements)
            .flat_map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let smooth = 273.15 + (i / 4096) as f64;
                (smooth + (x >> 40) as f64 * 1e-12).to_le_bytes()
            })
            .collect()
    }

    /// The plane words of every block of a filter-2 section, read back from the file's bytes.
    fn plane_words(bytes: &[u8], e: &SectionEntry) -> Vec<Vec<u32>> {
        let es = usize::from(e.element_size);
        let (mut pos, end, mut left) = (e.offset as usize, (e.offset + e.stored_len) as usize, e.raw_len as usize);
        let mut blocks = Vec::new();
        while left > 0 {
            let this = left.min(format::shuffle_block_len(es));
            let words: Vec<u32> =
                (0..es).map(|p| u32::from_le_bytes(bytes[pos + 4 * p..pos + 4 * p + 4].try_into().unwrap())).collect();
            pos += 4 * es + words.iter().map(|w| (w & !format::PLANE_COMPRESSED) as usize).sum::<usize>();
            pos += this % es;
            left -= this;
            blocks.push(words);
        }
        assert_eq!(pos, end, "the block records fill the section exactly");
        blocks
    }

    /// A shuffled section compressed on several threads reads back and verifies, with the size one thread
    /// gives (within 1%: each thread samples its own blocks), whatever the split of the blocks; so does a
    /// section fed in pieces that cut blocks.
    #[cfg_attr(not(feature = "zstd"), ignore = "compresses: needs the zstd feature")]
    #[test]
    #[cfg_attr(miri, ignore = "compresses with zstd (C code through FFI)")]
    fn threaded_plane_compression_reads_back() {
        use std::sync::Arc;

        use crate::storage::MemStorage;
        let field = noisy_field(1_300_000); // 9.9 blocks of 1 MiB
        let save = |threads: u16, pieces: &[usize]| {
            let storage = Arc::new(MemStorage::new());
            let mut cfg = crate::Config::new("threads", "/d").unwrap();
            cfg.mmap = false;
            let store = crate::Store::with_storage(cfg, storage.clone());
            let mut w = store.begin(1).unwrap();
            let opts = SectionOptions::new().compression(Compression::Zstd(1)).shuffle(8).compression_threads(threads);
            if pieces.is_empty() {
                w.add_section_with("f", &field, opts).unwrap();
            } else {
                let mut s = w.section_writer("f", opts).unwrap();
                let mut at = 0usize;
                for &len in pieces.iter().chain(std::iter::once(&usize::MAX)) {
                    let end = at.saturating_add(len).min(field.len());
                    s.write_bytes(&field[at..end]).unwrap();
                    at = end;
                }
                s.finish().unwrap();
            }
            w.commit().unwrap();
            let bytes = storage.read_file(std::path::Path::new("/d/threads.ckpt")).unwrap();
            let cp = crate::Checkpoint::from_bytes(bytes.clone()).unwrap();
            cp.verify().unwrap();
            assert!(cp.read("f").unwrap()[..] == field[..], "{threads} threads round-trip");
            let e = cp.section("f").unwrap().clone();
            assert!(e.planes);
            (e.stored_len, e.raw_crc32)
        };
        let (one, crc) = save(1, &[]);
        for (threads, pieces) in [(2, &[][..]), (3, &[]), (16, &[]), (2, &[1000, 3 << 20, 5, 2 << 20])] {
            let (len, raw_crc) = save(threads, pieces);
            assert_eq!(raw_crc, crc);
            assert!(len.abs_diff(one) * 100 <= one, "{threads} threads: {len} bytes, one thread {one}");
        }
    }

    #[cfg_attr(not(feature = "zstd"), ignore = "compresses: needs the zstd feature")]
    #[test]
    #[cfg_attr(miri, ignore = "compresses with zstd (C code through FFI)")]
    fn shuffled_sections_compress_only_the_planes_that_pay() {
        use std::sync::Arc;

        use crate::storage::MemStorage;
        let field = noisy_field(300_000); // 2.3 blocks of 1 MiB
        let save = |compression: Compression, bandwidth: f64| {
            let storage = Arc::new(MemStorage::new());
            let mut cfg = crate::Config::new("planes", "/d").unwrap();
            cfg.mmap = false;
            let store = crate::Store::with_storage(cfg, storage.clone());
            let mut w = store.begin(1).unwrap();
            w.builder().unwrap().write_bandwidth = bandwidth;
            w.add_section_with("f", &field, SectionOptions::new().compression(compression).shuffle(8)).unwrap();
            w.commit().unwrap();
            let bytes = storage.read_file(std::path::Path::new("/d/planes.ckpt")).unwrap();
            let cp = crate::Checkpoint::from_bytes(bytes.clone()).unwrap();
            assert_eq!(&cp.read("f").unwrap()[..], &field[..], "{compression:?} round-trips");
            let e = cp.section("f").unwrap().clone();
            let blocks = if e.planes { plane_words(&bytes, &e) } else { Vec::new() };
            (e, blocks)
        };
        let compressed = |w: &u32| w & format::PLANE_COMPRESSED != 0;
        // An explicit level: the sign/exponent planes compress, the noisy low planes are stored as is.
        let (e, blocks) = save(Compression::Zstd(3), 2e9);
        assert!(e.planes && e.shuffle && e.codec == Codec::Zstd);
        assert_eq!(blocks.len(), 3);
        for words in &blocks {
            assert!(compressed(&words[7]) && compressed(&words[6]), "exponent planes compressed: {words:x?}");
            assert!(!compressed(&words[0]) && !compressed(&words[1]), "noise planes stored: {words:x?}");
            assert_eq!(words[0] & !format::PLANE_COMPRESSED, words[0], "a stored plane's length is n");
        }
        // `auto` on a very fast disk: nothing pays for its time, so the section is not compressed at all.
        let (e, _) = save(Compression::Auto, 1e15);
        assert_eq!((e.codec, e.planes), (Codec::None, false));
        // `auto` on a slow disk: the compressible planes pay.
        let (e, blocks) = save(Compression::Auto, 1e7);
        assert!(e.planes);
        assert!(blocks.iter().all(|w| compressed(&w[7]) && !compressed(&w[0])), "{blocks:x?}");
    }
}
