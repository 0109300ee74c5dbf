//! The checkpoint file format, version 1: byte layout, encoding and validation.
//!
//! A checkpoint file has four parts, in this order. All integers are little-endian; all strings are UTF-8.
//! FORMAT.md at the repository root is the prose version of this comment.
//!
//! ```text
//! HEADER (at offset 0, header_len bytes, header_len <= 1 MiB)
//!   off  size  field
//!     0     8  magic             89 43 4B 50 0D 0A 1A 0A  ("\x89CKP\r\n\x1a\n", catches text-mode transfer)
//!     8     2  format_version    u16, 1
//!    10     2  file_kind         u16, 0 = data (one process's state), 1 = manifest (a multi-rank step)
//!    12     4  header_len        u32, bytes from offset 0 to the end of header_crc32
//!    16     8  generation        u64, save sequence number within one checkpoint name (1, 2, ...)
//!    24     8  app_step          i64, the application's step / iteration number (written 0..=i64::MAX)
//!    32     8  created_unix_ns   i64, creation time, nanoseconds since the Unix epoch
//!    40     4  step_id           u32, Slurm job step id; 0xFFFF_FFFF = none (the whole job)
//!    44     4  rank              u32, this process's rank
//!    48     4  nranks            u32, number of ranks (>= 1)
//!    52     4  flags             u32, 0 (reserved; readers reject unknown bits)
//!    56     6  writer_version    3 x u16: major, minor, patch of the library that wrote the file
//!    62     2  reserved          0
//!    64    64  job_id            NUL-padded (Slurm job id, or the application name outside Slurm)
//!   128    64  app_name          NUL-padded
//!   192    64  host              NUL-padded
//!   256     4  metadata_count    u32 (<= 65536)
//!   260     …  metadata entries  key_len u16 (1..=1024), key, value_len u32, value
//!     …     4  header_crc32      CRC-32 (IEEE) of bytes [0, header_len - 4)
//!
//! DATA (from align_up(header_len, 4096))
//!   The sections' stored bytes, in table order. A raw (uncompressed) section starts at a multiple of
//!   4096 so it can be memory-mapped in place; other sections start at a multiple of 8. Gaps are zero.
//!
//! SECTION TABLE (at table_offset, a multiple of 8; section_count entries of 128 bytes)
//!   off  size  field
//!     0    64  name              NUL-padded, 1..=64 bytes, unique within the file
//!    64     2  encoding          u16: 0 bytes, 1 postcard 1.x (serde), 2 Python pickle protocol 5,
//!                                3 JSON, 4 ckpt manifest, 5 postcard after a type fingerprint,
//!                                0x0101..=0x018C and 0x1001..=0x2FFF typed slices (FORMAT.md, "Typed
//!                                sections"); unknown values read as bytes
//!    66     1  codec             u8: 0 none, 1 zstd (one frame; per plane with filter 2)
//!    67     1  filter            u8: 0 none, 1 byte-shuffle before the codec (blocks of 1 MiB),
//!                                2 byte planes (zstd codec only; see PLANES below)
//!    68     2  element_size      u16, shuffle width in bytes (1 when no filter)
//!    70     2  reserved          0
//!    72     4  tag               u32, free for the application (the C API stores region ids here)
//!    76     4  raw_crc32         CRC-32 of the decoded bytes
//!    80     8  raw_len           u64, decoded length
//!    88     8  stored_len        u64, length on disk (== raw_len when codec is none)
//!    96     8  offset            u64, where the stored bytes start
//!   104     4  stored_crc32      CRC-32 of the stored bytes
//!   108    20  reserved          0
//!
//! PLANES (filter 2): the decoded bytes are cut into blocks of 1 MiB (rounded down to a multiple of the
//!   element size; the last block is shorter) and each block is byte-shuffled as for filter 1, giving
//!   element_size planes of n = block_len / element_size bytes, then the block's tail (block_len mod
//!   element_size bytes). Each block is stored as: element_size words (u32 LE), one per plane: bit 31 set
//!   = the plane is one zstd frame that decodes to exactly n bytes, clear = stored as is; bits 0..=30 = the
//!   plane's stored length (n when stored as is, at most n when compressed); then the planes' bytes in
//!   order; then the tail as is. An empty section has no block (stored_len 0); any element_size >= 1 is
//!   valid. Writers compress only the planes that pay (the exponent bytes of smooth floating-point
//!   fields) and copy the others, which a single zstd stream would also search for matches.
//!
//! TRAILER (the last 64 bytes of the file)
//!     0     8  table_offset      u64
//!     8     8  file_len          u64, the whole file's length (catches truncation and appended bytes)
//!    16     4  section_count     u32 (<= 1048576)
//!    20     4  table_crc32       CRC-32 of the section table
//!    24     4  header_crc32      copy of the header's CRC (ties the trailer to its header)
//!    28    20  reserved          0
//!    48     4  trailer_crc32     CRC-32 of trailer bytes [0, 48)
//!    52     4  reserved          0
//!    56     8  end_magic         "CKPTEND\n"
//! ```
//!
//! Readers check, before trusting any size: the magic, the version, `header_len` against its cap and the
//! file length, every CRC, `file_len` against the real length, that `table_offset + 128 * count + 64 ==
//! file_len`, that every section lies inside the data area without overlapping another, that raw sections
//! are aligned and have `stored_len == raw_len`, that a zstd section's `raw_len` is at most
//! `stored_len * 32768` (what zstd can produce at most, [`ZSTD_MAX_RATIO`]), and that names are valid and
//! unique. All arithmetic on values read from a file is checked. Gaps between the parts are zero bytes;
//! writers leave less than 4096 bytes, readers accept any length and check them in bounded chunks.

use std::collections::HashSet;

use crate::error::{Error, ErrorKind, Result};

mod manifest;
mod shuffle;

pub use manifest::{MANIFEST_ENTRY_LEN, MANIFEST_SECTION, ManifestEntry};
#[cfg(any(test, feature = "testing"))]
pub use shuffle::{reference_shuffle, reference_unshuffle};
pub use shuffle::{shuffle_block, shuffle_block_len, unshuffle_block};

/// The 8 bytes every checkpoint file starts with.
pub const MAGIC: [u8; 8] = *b"\x89CKP\r\n\x1a\n";
/// The 8 bytes every checkpoint file ends with.
pub const END_MAGIC: [u8; 8] = *b"CKPTEND\n";
/// The format version this library writes.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the fixed part of the header (before the metadata entries).
pub const HEADER_FIXED_LEN: usize = 260;
/// Upper bound on `header_len`, so a hostile file cannot make the reader allocate much.
pub const MAX_HEADER_LEN: u32 = 1 << 20;
/// Upper bound on the number of metadata entries.
pub const MAX_METADATA_ENTRIES: u32 = 65_536;
/// Upper bound on a metadata key's length in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 1024;
/// Length of one section-table entry.
pub const TABLE_ENTRY_LEN: usize = 128;
/// Upper bound on the number of sections in one file.
pub const MAX_SECTIONS: u32 = 1 << 20;
/// Length of the trailer.
pub const TRAILER_LEN: usize = 64;
/// Alignment of raw sections (and of the data area), so they can be memory-mapped in place.
pub const RAW_ALIGN: u64 = 4096;
/// Alignment of other sections and of the section table.
pub const SMALL_ALIGN: u64 = 8;
/// Longest name, job id, application name or host accepted in the fixed-width fields.
pub const MAX_NAME_LEN: usize = 64;
/// Upper bound on any section's decoded length (1 PiB): larger values are treated as corruption.
pub const MAX_SECTION_LEN: u64 = 1 << 50;
/// The step id stored when the checkpoint belongs to a whole job rather than one step.
pub const NO_STEP_ID: u32 = u32::MAX;
/// Block size of the byte-shuffle filter (rounded down to a multiple of the element size).
pub const SHUFFLE_BLOCK: usize = 1 << 20;
/// Filter 2 (byte planes): bit 31 of a plane's word marks a zstd frame; the other bits are its length.
pub const PLANE_COMPRESSED: u32 = 1 << 31;
/// The most a zstd frame can expand: every block decodes to at most 128 KiB (RFC 8878, `Block_Maximum_Size`)
/// and takes at least 4 bytes (a 3-byte block header and the one byte of an RLE block; a compressed block
/// needs more), so `n` stored bytes decode to fewer than `n * 32768` bytes whatever they hold (the frame
/// header and checksum only add stored bytes). Readers refuse a compressed section or plane that claims
/// more, before decoding anything: the work of verifying a file is bounded by its size. (1 GiB of zeros
/// at zstd's strongest setting takes 33,006 bytes here, a ratio of 32,531.)
pub const ZSTD_MAX_RATIO: u64 = 32_768;

/// Checks that `stored` bytes of zstd can decode to `raw` bytes (see [`ZSTD_MAX_RATIO`]); the error names
/// `what` and both numbers.
///
/// # Errors
///
/// [`ErrorKind::Corrupt`] when `raw` exceeds `stored` × [`ZSTD_MAX_RATIO`].
pub fn check_zstd_ratio(raw: u64, stored: u64, what: &str) -> Result<()> {
    if raw > stored.saturating_mul(ZSTD_MAX_RATIO) {
        return Err(Error::corrupt(format!(
            "{what} claims {raw} decoded bytes from {stored} stored bytes, more than zstd can produce \
             (at most {ZSTD_MAX_RATIO} per stored byte)"
        )));
    }
    Ok(())
}

/// What a checkpoint file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// The state of one process (or one rank).
    Data,
    /// The manifest of a multi-rank step: it lists every rank's part.
    Manifest,
}

impl FileKind {
    fn to_u16(self) -> u16 {
        match self {
            FileKind::Data => 0,
            FileKind::Manifest => 1,
        }
    }
    fn from_u16(v: u16) -> Option<FileKind> {
        match v {
            0 => Some(FileKind::Data),
            1 => Some(FileKind::Manifest),
            _ => None,
        }
    }
}

/// How a section's decoded bytes are to be interpreted. Recorded per section so old files stay readable
/// when new encodings are added.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Opaque bytes (a memory region, an array).
    Bytes,
    /// A serde value encoded with postcard 1.x (its wire format is specified and stable).
    Postcard,
    /// A Python pickle, protocol 5 (written by the Python module).
    Pickle5,
    /// A UTF-8 JSON document.
    Json,
    /// A ckpt manifest (see FORMAT.md).
    Manifest,
    /// A serde value encoded with postcard 1.x after a fingerprint of its Rust type (name and schema
    /// hash), what [`crate::CheckpointWriter::add_serde`] writes (FORMAT.md, "Typed sections").
    TypedPostcard,
    /// An array of `element`s in the byte order the flag says, what
    /// [`crate::CheckpointWriter::add_slice`] writes (FORMAT.md, "Typed sections").
    Slice {
        /// The element type.
        element: ElementType,
        /// Whether the elements are big-endian (the writer's byte order).
        big_endian: bool,
    },
    /// An encoding this library version does not know; the bytes are still readable.
    Other(u16),
}

/// The element type of a [`Encoding::Slice`] section.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// `u8`
    U8,
    /// `i8`
    I8,
    /// `u16`
    U16,
    /// `i16`
    I16,
    /// `u32`
    U32,
    /// `i32`
    I32,
    /// `u64`
    U64,
    /// `i64`
    I64,
    /// `u128`
    U128,
    /// `i128`
    I128,
    /// `f32` (IEEE 754 binary32)
    F32,
    /// `f64` (IEEE 754 binary64)
    F64,
    /// Another plain-old-data type (a `#[repr(C)]` struct, an array) of this many bytes, 1 to
    /// [`ElementType::MAX_OPAQUE`]: only its size is recorded.
    Opaque(u16),
}

impl ElementType {
    /// The largest element size recorded for an [`ElementType::Opaque`] type.
    pub const MAX_OPAQUE: u16 = 0x0FFF;

    const NUMBERS: [ElementType; 12] = [
        ElementType::U8,
        ElementType::I8,
        ElementType::U16,
        ElementType::I16,
        ElementType::U32,
        ElementType::I32,
        ElementType::U64,
        ElementType::I64,
        ElementType::U128,
        ElementType::I128,
        ElementType::F32,
        ElementType::F64,
    ];

    /// The size of one element in bytes.
    #[must_use]
    pub fn size(self) -> usize {
        match self {
            ElementType::U8 | ElementType::I8 => 1,
            ElementType::U16 | ElementType::I16 => 2,
            ElementType::U32 | ElementType::I32 | ElementType::F32 => 4,
            ElementType::U64 | ElementType::I64 | ElementType::F64 => 8,
            ElementType::U128 | ElementType::I128 => 16,
            ElementType::Opaque(n) => usize::from(n),
        }
    }

    /// Whether the other byte order is converted by reversing each element's bytes (the numbers; not an
    /// opaque type, whose fields ckpt does not know).
    #[must_use]
    pub fn swappable(self) -> bool {
        !matches!(self, ElementType::Opaque(_))
    }

    /// The Rust name of the type (`f64`), or `N-byte elements`.
    #[must_use]
    pub fn name(self) -> String {
        match self {
            ElementType::Opaque(n) => format!("{n}-byte elements"),
            e => format!("{e:?}").to_lowercase(),
        }
    }

    /// The code of a number type in a slice encoding (1..=12).
    fn code(self) -> Option<u16> {
        ElementType::NUMBERS.iter().position(|&e| e == self).map(|i| i as u16 + 1)
    }
}

impl Encoding {
    /// The number stored in the section table.
    pub fn to_u16(self) -> u16 {
        match self {
            Encoding::Bytes => 0,
            Encoding::Postcard => 1,
            Encoding::Pickle5 => 2,
            Encoding::Json => 3,
            Encoding::Manifest => 4,
            Encoding::TypedPostcard => 5,
            Encoding::Slice { element, big_endian } => match element.code() {
                Some(code) => 0x0100 | if big_endian { 0x80 } else { 0 } | code,
                None => (if big_endian { 0x2000 } else { 0x1000 }) | element.size() as u16,
            },
            Encoding::Other(v) => v,
        }
    }
    /// The encoding for a number stored in the section table.
    pub fn from_u16(v: u16) -> Encoding {
        match v {
            0 => Encoding::Bytes,
            1 => Encoding::Postcard,
            2 => Encoding::Pickle5,
            3 => Encoding::Json,
            4 => Encoding::Manifest,
            5 => Encoding::TypedPostcard,
            0x0101..=0x010C | 0x0181..=0x018C => Encoding::Slice {
                element: ElementType::NUMBERS[usize::from((v & 0x7F) - 1)],
                big_endian: v & 0x80 != 0,
            },
            0x1001..=0x1FFF | 0x2001..=0x2FFF => {
                Encoding::Slice { element: ElementType::Opaque(v & 0x0FFF), big_endian: v & 0x2000 != 0 }
            }
            v => Encoding::Other(v),
        }
    }
    /// A short name for tools.
    pub fn name(self) -> String {
        match self {
            Encoding::Bytes => "bytes".into(),
            Encoding::Postcard => "postcard".into(),
            Encoding::Pickle5 => "pickle5".into(),
            Encoding::Json => "json".into(),
            Encoding::Manifest => "manifest".into(),
            Encoding::TypedPostcard => "postcard-typed".into(),
            Encoding::Slice { element, big_endian } => {
                format!("slice:{}:{}", element.name().replace(' ', "-"), if big_endian { "be" } else { "le" })
            }
            Encoding::Other(v) => format!("encoding#{v}"),
        }
    }
}

/// How a section's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Stored as is (and aligned for memory mapping).
    None,
    /// One zstd frame.
    Zstd,
}

impl Codec {
    fn from_u8(v: u8) -> Option<Codec> {
        match v {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
    fn to_u8(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
        }
    }
    /// A short name for tools.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Zstd => "zstd",
        }
    }
}

/// The fixed-width description of one checkpoint (everything in the header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Data or manifest.
    pub kind: FileKind,
    /// Save sequence number within this checkpoint name.
    pub generation: u64,
    /// The application's step or iteration number. The file's field is a signed 64-bit integer; this
    /// version writes `0..=`[`MAX_STEP`](crate::MAX_STEP) (the same bytes either way) and refuses other
    /// steps. A file written while the API took signed steps may hold a negative one: it reads as its two's
    /// complement, above `MAX_STEP` (`app_step.cast_signed()` is the negative number).
    pub app_step: u64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: i64,
    /// Slurm job step id, `None` for a whole job.
    pub step_id: Option<u32>,
    /// Rank of the writer.
    pub rank: u32,
    /// Number of ranks.
    pub nranks: u32,
    /// Version (major, minor, patch) of the library that wrote the file.
    pub writer_version: (u16, u16, u16),
    /// Slurm job id, or the application name outside Slurm.
    pub job_id: String,
    /// Application name.
    pub app_name: String,
    /// Host name of the writer.
    pub host: String,
    /// User key/value metadata, in insertion order.
    pub metadata: Vec<(String, Vec<u8>)>,
}

/// One section-table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionEntry {
    /// Unique name within the file.
    pub name: String,
    /// How to interpret the decoded bytes.
    pub encoding: Encoding,
    /// How the bytes are stored.
    pub codec: Codec,
    /// Whether the byte-shuffle filter was applied before the codec.
    pub shuffle: bool,
    /// Filter 2: the shuffled blocks are stored plane by plane, each plane zstd-compressed or as is (implies
    /// `shuffle` and the zstd codec).
    pub planes: bool,
    /// Shuffle width (1 when no filter).
    pub element_size: u16,
    /// Free application tag (the C API stores region ids here).
    pub tag: u32,
    /// CRC-32 of the decoded bytes.
    pub raw_crc32: u32,
    /// Decoded length.
    pub raw_len: u64,
    /// Stored length.
    pub stored_len: u64,
    /// Offset of the stored bytes.
    pub offset: u64,
    /// CRC-32 of the stored bytes.
    pub stored_crc32: u32,
}

/// The parsed trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Offset of the section table.
    pub table_offset: u64,
    /// Length of the whole file.
    pub file_len: u64,
    /// Number of sections.
    pub section_count: u32,
    /// CRC-32 of the section table.
    pub table_crc32: u32,
    /// CRC-32 of the header.
    pub header_crc32: u32,
}

/// Rounds `value` up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn put_name(out: &mut Vec<u8>, value: &str, what: &str) -> Result<()> {
    check_fixed_string(value, what)?;
    let mut field = [0u8; MAX_NAME_LEN];
    field[..value.len()].copy_from_slice(value.as_bytes());
    out.extend_from_slice(&field);
    Ok(())
}

/// Checks that `value` fits a fixed-width string field (at most 64 bytes, no NUL).
///
/// # Errors
///
/// [`ErrorKind::InvalidArgument`] naming `what` and the value when it is longer than 64 bytes or contains a NUL.
pub fn check_fixed_string(value: &str, what: &str) -> Result<()> {
    if value.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!("{what} {value:?} is longer than {MAX_NAME_LEN} bytes")));
    }
    if value.contains('\0') {
        return Err(Error::invalid(format!("{what} {value:?} contains a NUL byte")));
    }
    Ok(())
}

/// Checks a section name: 1..=64 bytes, no NUL.
///
/// # Errors
///
/// [`ErrorKind::InvalidArgument`] when the name is empty, longer than 64 bytes or contains a NUL.
pub fn check_section_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("a section name must not be empty"));
    }
    check_fixed_string(name, "section name")
}

fn get_name(bytes: &[u8], what: &str) -> Result<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    if bytes[end..].iter().any(|&b| b != 0) {
        return Err(Error::corrupt(format!("{what} field has bytes after its NUL padding")));
    }
    String::from_utf8(bytes[..end].to_vec()).map_err(|_| Error::corrupt(format!("{what} is not valid UTF-8")))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
fn i64_at(b: &[u8], off: usize) -> i64 {
    i64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

impl Header {
    /// Encodes the header, including its trailing CRC. Returns the bytes; their CRC is the last 4.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] when a name field (job id, application, host) does not fit 64 bytes or has a
    /// NUL, `rank` is not below `nranks`, the step id is the reserved `0xFFFF_FFFF`, or a metadata key is empty,
    /// longer than 1024 bytes or given twice; [`ErrorKind::TooLarge`] for more than 65,536 metadata entries or a header
    /// above 1 MiB.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(HEADER_FIXED_LEN + 64);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.kind.to_u16().to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // header_len, patched below
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.app_step.to_le_bytes());
        out.extend_from_slice(&self.created_unix_ns.to_le_bytes());
        out.extend_from_slice(&self.step_id.unwrap_or(NO_STEP_ID).to_le_bytes());
        out.extend_from_slice(&self.rank.to_le_bytes());
        out.extend_from_slice(&self.nranks.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // flags
        out.extend_from_slice(&self.writer_version.0.to_le_bytes());
        out.extend_from_slice(&self.writer_version.1.to_le_bytes());
        out.extend_from_slice(&self.writer_version.2.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        put_name(&mut out, &self.job_id, "job id")?;
        put_name(&mut out, &self.app_name, "application name")?;
        put_name(&mut out, &self.host, "host name")?;
        debug_assert_eq!(out.len(), HEADER_FIXED_LEN - 4);
        if self.nranks == 0 || self.rank >= self.nranks {
            return Err(Error::invalid(format!("rank {} is not below nranks {}", self.rank, self.nranks)));
        }
        if self.step_id == Some(NO_STEP_ID) {
            return Err(Error::invalid(format!("step id {NO_STEP_ID} is reserved")));
        }
        let count = u32::try_from(self.metadata.len())
            .ok()
            .filter(|&c| c <= MAX_METADATA_ENTRIES)
            .ok_or_else(|| Error::new(ErrorKind::TooLarge, "too many metadata entries"))?;
        out.extend_from_slice(&count.to_le_bytes());
        let mut seen = HashSet::new();
        for (key, value) in &self.metadata {
            if key.is_empty() || key.len() > MAX_METADATA_KEY_LEN {
                return Err(Error::invalid(format!(
                    "metadata key {key:?} must be 1 to {MAX_METADATA_KEY_LEN} bytes long"
                )));
            }
            if !seen.insert(key.as_str()) {
                return Err(Error::invalid(format!("metadata key {key:?} is given twice")));
            }
            out.extend_from_slice(&(key.len() as u16).to_le_bytes());
            out.extend_from_slice(key.as_bytes());
            let vlen = u32::try_from(value.len())
                .map_err(|_| Error::new(ErrorKind::TooLarge, format!("metadata value of {key:?} is too large")))?;
            out.extend_from_slice(&vlen.to_le_bytes());
            out.extend_from_slice(value);
            if out.len() + 4 > MAX_HEADER_LEN as usize {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!("metadata makes the header larger than {MAX_HEADER_LEN} bytes"),
                ));
            }
        }
        let header_len = (out.len() + 4) as u32;
        out[12..16].copy_from_slice(&header_len.to_le_bytes());
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Reads `header_len` from the first 16 bytes (after checking magic and version).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Corrupt`] for a file shorter than a header and trailer, a bad magic (the message says when the
    /// file went through a text-mode transfer) or a header length too small; [`ErrorKind::UnsupportedVersion`] for a
    /// format version this library does not read; [`ErrorKind::TooLarge`] for a header length above 1 MiB.
    pub fn peek_len(prefix: &[u8], file_len: u64) -> Result<u32> {
        if prefix.len() < 16 || file_len < 16 {
            return Err(Error::corrupt(format!("truncated: {file_len} bytes is too short for a checkpoint")));
        }
        if prefix[..8] != MAGIC {
            return Err(bad_magic(&prefix[..8]));
        }
        let version = u16_at(prefix, 8);
        if version == 0 || version > FORMAT_VERSION {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!("format version {version} is not supported (this library reads 1 to {FORMAT_VERSION})"),
            ));
        }
        let header_len = u32_at(prefix, 12);
        if header_len > MAX_HEADER_LEN {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("header length {header_len} exceeds the limit of {MAX_HEADER_LEN} bytes"),
            ));
        }
        if (header_len as usize) < HEADER_FIXED_LEN + 4 {
            return Err(Error::corrupt(format!("header length {header_len} is too small")));
        }
        let min_file = u64::from(header_len) + TRAILER_LEN as u64;
        if file_len < min_file {
            return Err(Error::corrupt(format!(
                "truncated: file has {file_len} bytes, header and trailer alone need {min_file}"
            )));
        }
        Ok(header_len)
    }

    /// Decodes and verifies a header from exactly `header_len` bytes. Returns it with its CRC.
    ///
    /// # Errors
    ///
    /// As [`Header::peek_len`]; [`ErrorKind::Corrupt`] when the length does not
    /// match, the CRC does not (both values in the message), the file kind is unknown, a name field is not
    /// NUL-padded UTF-8, `rank` is not below `nranks`, or the metadata entries do not parse (a key twice,
    /// bytes past the end); [`ErrorKind::UnsupportedVersion`] for
    /// header flags this library does not know; [`ErrorKind::TooLarge`] for
    /// more than 65,536 metadata entries.
    pub fn decode(bytes: &[u8]) -> Result<(Header, u32)> {
        let header_len = Header::peek_len(bytes, u64::MAX)? as usize;
        if bytes.len() != header_len {
            return Err(Error::corrupt("header length does not match"));
        }
        let body = &bytes[..header_len - 4];
        let stored = u32_at(bytes, header_len - 4);
        let actual = crc32(body);
        if stored != actual {
            return Err(Error::corrupt(format!(
                "header crc32 mismatch: expected {stored:#010x}, computed {actual:#010x}"
            )));
        }
        let kind = FileKind::from_u16(u16_at(bytes, 10))
            .ok_or_else(|| Error::corrupt(format!("unknown file kind {}", u16_at(bytes, 10))))?;
        let flags = u32_at(bytes, 52);
        if flags != 0 {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!("header flags {flags:#x} are not understood by this library"),
            ));
        }
        let step_id = match u32_at(bytes, 40) {
            NO_STEP_ID => None,
            s => Some(s),
        };
        let rank = u32_at(bytes, 44);
        let nranks = u32_at(bytes, 48);
        if nranks == 0 || rank >= nranks {
            return Err(Error::corrupt(format!("rank {rank} is not below nranks {nranks}")));
        }
        let mut header = Header {
            kind,
            generation: u64_at(bytes, 16),
            app_step: u64_at(bytes, 24),
            created_unix_ns: i64_at(bytes, 32),
            step_id,
            rank,
            nranks,
            writer_version: (u16_at(bytes, 56), u16_at(bytes, 58), u16_at(bytes, 60)),
            job_id: get_name(&bytes[64..128], "job id")?,
            app_name: get_name(&bytes[128..192], "application name")?,
            host: get_name(&bytes[192..256], "host name")?,
            metadata: Vec::new(),
        };
        let count = u32_at(bytes, 256);
        if count > MAX_METADATA_ENTRIES {
            return Err(Error::new(ErrorKind::TooLarge, format!("{count} metadata entries exceed the limit")));
        }
        let mut pos = HEADER_FIXED_LEN;
        let end = header_len - 4;
        let short = || Error::corrupt("metadata runs past the end of the header");
        let mut seen = HashSet::new();
        for _ in 0..count {
            if pos + 2 > end {
                return Err(short());
            }
            let klen = u16_at(bytes, pos) as usize;
            pos += 2;
            if klen == 0 || klen > MAX_METADATA_KEY_LEN || pos + klen + 4 > end {
                return Err(short());
            }
            let key = String::from_utf8(bytes[pos..pos + klen].to_vec())
                .map_err(|_| Error::corrupt("metadata key is not valid UTF-8"))?;
            pos += klen;
            let vlen = u32_at(bytes, pos) as usize;
            pos += 4;
            if vlen > end - pos {
                return Err(short());
            }
            if !seen.insert(key.clone()) {
                return Err(Error::corrupt(format!("metadata key {key:?} appears twice")));
            }
            header.metadata.push((key, bytes[pos..pos + vlen].to_vec()));
            pos += vlen;
        }
        if pos != end {
            return Err(Error::corrupt("unexpected bytes after the metadata"));
        }
        Ok((header, stored))
    }
}

fn bad_magic(found: &[u8]) -> Error {
    let hint = if found.starts_with(b"\x89CKP\n") || found.starts_with(b"\x89CKP\r\r") {
        " (line endings were changed: was the file transferred in text mode?)"
    } else if found.starts_with(b"CKP") || found.starts_with(b"\xc2\x89CKP") {
        " (the file was re-encoded as text)"
    } else {
        " (not a ckpt checkpoint file)"
    };
    Error::corrupt(format!("bad magic {}{hint}", hex(found)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

impl SectionEntry {
    /// Encodes one 128-byte table entry.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidArgument`] when the name is empty, longer than 64 bytes or contains a NUL.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        check_section_name(&self.name)?;
        put_name(out, &self.name, "section name")?;
        out.extend_from_slice(&self.encoding.to_u16().to_le_bytes());
        out.push(self.codec.to_u8());
        out.push(if self.planes { 2 } else { u8::from(self.shuffle) });
        out.extend_from_slice(&self.element_size.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.tag.to_le_bytes());
        out.extend_from_slice(&self.raw_crc32.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_crc32.to_le_bytes());
        out.extend_from_slice(&[0u8; 20]);
        debug_assert_eq!(out.len() - start, TABLE_ENTRY_LEN);
        Ok(())
    }

    /// Decodes one table entry (structure only; placement is checked by [`validate_table`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Corrupt`] when the name is empty, not NUL-padded or not
    /// UTF-8, the codec or filter is unknown (or the byte-plane filter without zstd), the element size does
    /// not match the filter, or reserved bytes are not zero.
    ///
    /// # Panics
    ///
    /// When `b` is shorter than a table entry (128 bytes).
    pub fn decode(b: &[u8]) -> Result<SectionEntry> {
        let name = get_name(&b[0..64], "section name")?;
        if name.is_empty() {
            return Err(Error::corrupt("a section has an empty name"));
        }
        let err = |what: String| Error::corrupt(what).with_section(name.clone());
        let codec = Codec::from_u8(b[66]).ok_or_else(|| err(format!("unknown codec {}", b[66])))?;
        let (shuffle, planes) = match b[67] {
            0 => (false, false),
            1 => (true, false),
            2 if codec == Codec::Zstd => (true, true),
            2 => return Err(err("the byte-plane filter needs the zstd codec".into())),
            f => return Err(err(format!("unknown filter {f}"))),
        };
        let element_size = u16_at(b, 68);
        if element_size == 0 || (!shuffle && element_size != 1) {
            return Err(err(format!("element size {element_size} does not match the filter")));
        }
        if u16_at(b, 70) != 0 || b[108..128].iter().any(|&x| x != 0) {
            return Err(err("reserved bytes are not zero".into()));
        }
        Ok(SectionEntry {
            encoding: Encoding::from_u16(u16_at(b, 64)),
            codec,
            shuffle,
            planes,
            element_size,
            tag: u32_at(b, 72),
            raw_crc32: u32_at(b, 76),
            raw_len: u64_at(b, 80),
            stored_len: u64_at(b, 88),
            offset: u64_at(b, 96),
            stored_crc32: u32_at(b, 104),
            name,
        })
    }
}

impl Trailer {
    /// Encodes the 64-byte trailer.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut t = [0u8; TRAILER_LEN];
        t[0..8].copy_from_slice(&self.table_offset.to_le_bytes());
        t[8..16].copy_from_slice(&self.file_len.to_le_bytes());
        t[16..20].copy_from_slice(&self.section_count.to_le_bytes());
        t[20..24].copy_from_slice(&self.table_crc32.to_le_bytes());
        t[24..28].copy_from_slice(&self.header_crc32.to_le_bytes());
        let crc = crc32(&t[..48]);
        t[48..52].copy_from_slice(&crc.to_le_bytes());
        t[56..64].copy_from_slice(&END_MAGIC);
        t
    }

    /// Decodes and checks the trailer against the real file length and the header's CRC.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Corrupt`] when the end marker is missing (a truncated or unfinished file), the CRC does not match,
    /// reserved bytes are set, the recorded length is not the file's, the header CRC is not the header's, or
    /// the section table does not fit between the header and the trailer.
    ///
    /// # Panics
    ///
    /// When `t` is shorter than the trailer ([`TRAILER_LEN`] bytes).
    pub fn decode(t: &[u8], real_file_len: u64, header_len: u32, header_crc32: u32) -> Result<Trailer> {
        if t[56..64] != END_MAGIC {
            return Err(Error::corrupt(format!(
                "truncated or incomplete: the file does not end with the end marker (found {})",
                hex(&t[56..64])
            )));
        }
        let stored = u32_at(t, 48);
        let actual = crc32(&t[..48]);
        if stored != actual {
            return Err(Error::corrupt(format!(
                "trailer crc32 mismatch: expected {stored:#010x}, computed {actual:#010x}"
            )));
        }
        if t[28..48].iter().any(|&b| b != 0) || t[52..56].iter().any(|&b| b != 0) {
            return Err(Error::corrupt("trailer reserved bytes are not zero"));
        }
        let trailer = Trailer {
            table_offset: u64_at(t, 0),
            file_len: u64_at(t, 8),
            section_count: u32_at(t, 16),
            table_crc32: u32_at(t, 20),
            header_crc32: u32_at(t, 24),
        };
        if trailer.file_len != real_file_len {
            return Err(Error::corrupt(format!(
                "truncated or extended: the trailer says {} bytes, the file has {real_file_len}",
                trailer.file_len
            )));
        }
        if trailer.header_crc32 != header_crc32 {
            return Err(Error::corrupt("the trailer does not belong to this header (crc32 differs)"));
        }
        if trailer.section_count > MAX_SECTIONS {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("{} sections exceed the limit of {MAX_SECTIONS}", trailer.section_count),
            ));
        }
        let data_start = align_up(u64::from(header_len), RAW_ALIGN).expect("small");
        let table_len = u64::from(trailer.section_count) * TABLE_ENTRY_LEN as u64;
        let expected_end = trailer
            .table_offset
            .checked_add(table_len)
            .and_then(|v| v.checked_add(TRAILER_LEN as u64))
            .ok_or_else(|| Error::corrupt("table offset overflows"))?;
        if expected_end != real_file_len
            || trailer.table_offset < u64::from(header_len)
            || !trailer.table_offset.is_multiple_of(SMALL_ALIGN)
            || (trailer.section_count > 0 && trailer.table_offset < data_start)
        {
            return Err(Error::corrupt(format!(
                "section table at {} with {} entries does not fit the file of {real_file_len} bytes",
                trailer.table_offset, trailer.section_count
            )));
        }
        Ok(trailer)
    }
}

/// Decodes and validates the whole table: CRC, placement, alignment, overlaps and names.
///
/// # Errors
///
/// [`ErrorKind::Corrupt`] when the table's CRC does not match, an entry does
/// not decode ([`SectionEntry::decode`]), two sections share a name, a section lies outside the data area
/// or overlaps another, a raw section is not 4096-aligned or stores other bytes than its raw ones, or a
/// compressed one claims more than [`ZSTD_MAX_RATIO`] allows; [`ErrorKind::TooLarge`]
/// for a section above 1 PiB.
///
/// # Panics
///
/// Never in practice: `table` is expected to hold whole 128-byte entries, as [`Checkpoint`](crate::Checkpoint)
/// reads it; a 4 GiB header cannot overflow the alignment of the data area.
pub fn validate_table(table: &[u8], trailer: &Trailer, header_len: u32) -> Result<Vec<SectionEntry>> {
    let actual = crc32(table);
    if actual != trailer.table_crc32 {
        return Err(Error::corrupt(format!(
            "section table crc32 mismatch: expected {:#010x}, computed {actual:#010x}",
            trailer.table_crc32
        )));
    }
    let data_start = align_up(u64::from(header_len), RAW_ALIGN).expect("small");
    let mut entries = Vec::with_capacity(trailer.section_count as usize);
    let mut names = HashSet::with_capacity(trailer.section_count as usize);
    for chunk in table.chunks_exact(TABLE_ENTRY_LEN) {
        let e = SectionEntry::decode(chunk)?;
        let err = |what: String| Error::corrupt(what).with_section(e.name.clone());
        if !names.insert(e.name.clone()) {
            return Err(err("section name appears twice".into()));
        }
        let end = e.offset.checked_add(e.stored_len).ok_or_else(|| err("section offset overflows".into()))?;
        if e.offset < data_start || end > trailer.table_offset {
            return Err(err(format!(
                "section bytes [{}, {end}) lie outside the data area [{data_start}, {})",
                e.offset, trailer.table_offset
            )));
        }
        if e.raw_len > MAX_SECTION_LEN {
            return Err(Error::new(ErrorKind::TooLarge, format!("section length {} exceeds 1 PiB", e.raw_len))
                .with_section(e.name.clone()));
        }
        match e.codec {
            Codec::None => {
                if e.stored_len != e.raw_len || e.shuffle {
                    return Err(err("an uncompressed section must store exactly its raw bytes".into()));
                }
                if e.offset % RAW_ALIGN != 0 {
                    return Err(err(format!("raw section at offset {} is not 4096-aligned", e.offset)));
                }
                if e.raw_crc32 != e.stored_crc32 {
                    return Err(err("raw and stored crc32 of an uncompressed section differ".into()));
                }
            }
            Codec::Zstd => {
                if e.offset % SMALL_ALIGN != 0 {
                    return Err(err(format!("section at offset {} is not 8-aligned", e.offset)));
                }
                // Filter 2 too: each block's stored record is at least its planes' frames and its tail.
                check_zstd_ratio(e.raw_len, e.stored_len, "the section").map_err(|x| x.with_section(e.name.clone()))?;
            }
        }
        entries.push(e);
    }
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].offset);
    for pair in order.windows(2) {
        let (a, b) = (&entries[pair[0]], &entries[pair[1]]);
        if a.offset + a.stored_len > b.offset {
            return Err(Error::corrupt(format!("sections `{}` and `{}` overlap", a.name, b.name)));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table value maps to one encoding and back, so unknown values survive a rewrite.
    #[test]
    fn encodings_round_trip_every_value() {
        for v in 0..=u16::MAX {
            assert_eq!(Encoding::from_u16(v).to_u16(), v, "{v:#06x}");
        }
        assert_eq!(Encoding::from_u16(0x010C), Encoding::Slice { element: ElementType::F64, big_endian: false });
        assert_eq!(Encoding::from_u16(0x0181), Encoding::Slice { element: ElementType::U8, big_endian: true });
        assert_eq!(Encoding::from_u16(0x1018), Encoding::Slice { element: ElementType::Opaque(24), big_endian: false });
        assert_eq!(Encoding::from_u16(0x010D), Encoding::Other(0x010D));
        assert_eq!(Encoding::from_u16(0x1000), Encoding::Other(0x1000));
        assert_eq!(Encoding::from_u16(5).name(), "postcard-typed");
        assert_eq!(Encoding::from_u16(0x010C).name(), "slice:f64:le");
    }

    fn sample_header() -> Header {
        Header {
            kind: FileKind::Data,
            generation: 3,
            app_step: 7,
            created_unix_ns: 1_700_000_000_000_000_000,
            step_id: Some(2),
            rank: 1,
            nranks: 4,
            writer_version: (0, 1, 0),
            job_id: "12345".into(),
            app_name: "heat".into(),
            host: "node001".into(),
            metadata: vec![("k".into(), b"v".to_vec()), ("empty".into(), vec![])],
        }
    }

    #[test]
    fn header_round_trip() {
        let h = sample_header();
        let bytes = h.encode().unwrap();
        let (back, crc) = Header::decode(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(crc, crc32fast::hash(&bytes[..bytes.len() - 4]));
    }

    #[test]
    fn a_negative_step_of_0_1_0_reads_as_its_twos_complement() {
        // The API took signed steps before; the field is the same 8 bytes.
        let mut h = sample_header();
        h.app_step = (-7i64).cast_unsigned();
        let bytes = h.encode().unwrap();
        assert_eq!(bytes[24..32], (-7i64).to_le_bytes());
        let (back, _) = Header::decode(&bytes).unwrap();
        assert_eq!(back.app_step.cast_signed(), -7);
    }

    #[test]
    fn header_rejects_every_bit_flip() {
        let bytes = sample_header().encode().unwrap();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(Header::decode(&b).is_err(), "bit {i} flip not detected");
        }
    }

    #[test]
    fn text_mode_magic_is_explained() {
        let mut bytes = sample_header().encode().unwrap();
        bytes[4] = b'\n';
        let e = Header::peek_len(&bytes, 10_000).unwrap_err();
        assert!(e.to_string().contains("text mode"), "{e}");
    }

    #[test]
    fn newer_version_is_unsupported() {
        let mut bytes = sample_header().encode().unwrap();
        bytes[8] = 2;
        assert_eq!(Header::peek_len(&bytes, 10_000).unwrap_err().kind(), ErrorKind::UnsupportedVersion);
    }
}
