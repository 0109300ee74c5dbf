//! Golden files of the format, kept in `tests/data/` and read by these tests forever.
//!
//! The files were written once by [`generate_golden_files`] (an `#[ignore]`d test) with the library of the
//! time and committed. **A committed golden file must never be regenerated, edited or deleted**: its whole
//! point is that the bytes written by an old version stay readable by every later version. When the format
//! or the writer gains something new, add a *new* file (a new name, e.g. `v1-…` or `v2-…`) to the generator,
//! run it with
//!
//! ```text
//! cargo test -p ckpt-tests --test integration golden::generate_golden_files -- --ignored --nocapture
//! ```
//!
//! (it only creates files that do not exist yet and refuses to touch existing ones), paste the table it
//! prints into a new [`GoldenFile`] constant below, and describe the file in `tests/data/README.md`.
//!
//! What is asserted is what the writer controlled: every section's decoded bytes (regenerated here from
//! self-contained deterministic functions that use no platform maths, and also pinned by CRC-32 constants),
//! the section table (names, encodings, codecs, filters, tags, lengths, offsets), and the header fields
//! (generation, app_step, job id, application name, host, rank, nranks, step id, metadata, writer version).
//! The creation time is only checked for plausibility. An independent parser of the documented byte layout
//! (the top comment of `ckpt-core/src/format/mod.rs`) checks the same files byte by byte, so the
//! documentation, the files and the reader cannot drift apart silently.

use std::path::{Path, PathBuf};

use ckpt_core::storage::FileStorage;
use ckpt_core::{
    Checkpoint, Codec, Compression, Config, Encoding, FileKind, LoadOptions, ManifestEntry, SectionOptions, Store,
    parse_manifest,
};
use ckpt_tests::config;
use serde::{Deserialize, Serialize};

/// Where the golden files live.
const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data");

/// The host name the generator recorded (set explicitly, so it is deterministic).
const GOLDEN_HOST: &str = "golden-host";

/// The library version that wrote the committed files (`ckpt_core::writer_version()` at generation time).
const GOLDEN_WRITER_VERSION: (u16, u16, u16) = (0, 1, 0);

// -------------------------------------------------------------------------------------------------------
// Deterministic contents. Self-contained on purpose (no dependency on the shared test helpers, whose
// generators may change): these functions must keep producing the same bytes forever.

/// Bytes from a 32-bit LCG (Numerical Recipes constants): the top byte of each state.
fn lcg_bytes(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// A JSON document built from integers only.
fn json_text() -> Vec<u8> {
    let mut s = String::from("{\"cells\":[");
    for i in 0..600u32 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"t\":{},\"flags\":\"{}\"}}",
            (i * 7919) % 1000,
            ["a", "bc", "def"][i as usize % 3]
        ));
    }
    s.push_str("]}");
    s.into_bytes()
}

/// A smooth float64 field computed with exact-input IEEE arithmetic only (+, -, *, / are correctly rounded
/// everywhere; no `sin`, whose last bits differ between math libraries).
fn poly_field(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let x = i as f64 / 1024.0;
            (x * x * 0.5 - 3.0 * x + 1.25).to_le_bytes()
        })
        .collect()
}

/// Little-endian u32 counters 0, 1, 2, … (`len` bytes): crosses the 1 MiB shuffle block.
fn counters_u32(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len.div_ceil(4) as u32).flat_map(|i| i.to_le_bytes()).collect();
    v.truncate(len);
    v
}

fn c_raw_bytes() -> Vec<u8> {
    lcg_bytes(1, 5000)
}
fn c_empty() -> Vec<u8> {
    Vec::new()
}
fn c_json() -> Vec<u8> {
    json_text()
}
fn c_shuffle8() -> Vec<u8> {
    poly_field(3000)
}
fn c_shuffle3_tail() -> Vec<u8> {
    lcg_bytes(3, 1000).iter().map(|b| b & 0x0F).collect()
}
fn c_shuffle4_blocks() -> Vec<u8> {
    counters_u32((1 << 20) + (1 << 18) + 6)
}
fn c_serde() -> Vec<u8> {
    POSTCARD_STATE.to_vec()
}
fn c_other_encoding() -> Vec<u8> {
    b"opaque, encoding 777".to_vec()
}
fn c_rank_field(rank: u32) -> Vec<u8> {
    lcg_bytes(100 + rank, 3000 + 1000 * rank as usize)
}
fn c_rank0_field() -> Vec<u8> {
    c_rank_field(0)
}
fn c_rank1_field() -> Vec<u8> {
    c_rank_field(1)
}
fn c_rank_state(rank: u32) -> Vec<u8> {
    let mut v = poly_field(500);
    v.extend_from_slice(&rank.to_le_bytes());
    v
}
fn c_rank0_state() -> Vec<u8> {
    c_rank_state(0)
}
fn c_rank1_state() -> Vec<u8> {
    c_rank_state(1)
}

/// A smooth float64 field with noisy low mantissa bits, for `v1-planes.ckpt`: [`poly_field`]'s polynomial
/// times `1 + r * 2^-52` with `r` a 32-bit LCG state. Every operand is exact and `*` is correctly rounded,
/// so the bytes are the same everywhere. The sign and exponent bytes change slowly (they compress); the low
/// four mantissa bytes are close to random (they do not).
fn noisy_field(n: usize) -> Vec<u8> {
    let mut r: u32 = 12_345;
    (0..n)
        .flat_map(|i| {
            r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let x = i as f64 / 1024.0;
            let smooth = x * x * 0.5 - 3.0 * x + 1.25;
            (smooth * (1.0 + f64::from(r) * (1.0 / 4_503_599_627_370_496.0))).to_le_bytes()
        })
        .collect()
}

/// Little-endian 24-bit counters 0, 1, 2, … (`len` bytes).
fn counters_u24(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len.div_ceil(3) as u32).flat_map(|i| i.to_le_bytes()[..3].to_vec()).collect();
    v.truncate(len);
    v
}

fn c_planes8_f64() -> Vec<u8> {
    // 140000 values = 1120000 bytes: one full 1 MiB block (131072 values) and a second, shorter one.
    noisy_field(140_000)
}
fn c_planes3_tail() -> Vec<u8> {
    // One block of 1048575 bytes (1 MiB rounded down to a multiple of 3), then 1427 = 3 * 475 + 2 bytes.
    counters_u24(3 * 350_000 + 2)
}
fn c_planes4_random() -> Vec<u8> {
    lcg_bytes(4, 10_000)
}
fn c_planes8_tiny() -> Vec<u8> {
    vec![0xab, 0xcd, 0xef]
}

/// The serde value stored (postcard 1.x) in `v1-data.ckpt`'s `serde.state` section.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct GoldenState {
    step: u64,
    dt: f64,
    name: String,
    ranks: Vec<u16>,
    flag: Option<bool>,
    pair: (i8, i64),
}

fn golden_state() -> GoldenState {
    GoldenState {
        step: 1000,
        dt: 0.125,
        name: "golden ✓".into(),
        ranks: vec![0, 1, 300],
        flag: Some(true),
        pair: (-2, -300),
    }
}

/// The postcard 1.x encoding of [`golden_state`] (its wire format is specified and stable).
const POSTCARD_STATE: &[u8] = &[
    0xe8, 0x07, // step 1000 (varint)
    0, 0, 0, 0, 0, 0, 0xc0, 0x3f, // dt 0.125 (f64 LE)
    10, b'g', b'o', b'l', b'd', b'e', b'n', b' ', 0xe2, 0x9c, 0x93, // name: length 10, UTF-8
    3, 0, 1, 0xac, 0x02, // ranks: length 3, varints 0, 1, 300
    1, 1, // flag: Some(true)
    0xfe, 0xd7, 0x04, // pair: i8 -2 as one byte, i64 -300 zigzag varint (599)
];

// -------------------------------------------------------------------------------------------------------
// The committed files, described.

/// One expected section-table entry, and how to regenerate its decoded bytes.
struct GoldenSection {
    name: &'static str,
    encoding: u16,
    codec: Codec,
    shuffle: bool,
    /// Filter 2 (byte planes) rather than filter 1 (implies `shuffle`).
    planes: bool,
    element_size: u16,
    tag: u32,
    raw_len: u64,
    raw_crc32: u32,
    stored_len: u64,
    offset: u64,
    /// The decoded bytes (`None` for the manifest's section, checked against the part files instead).
    content: Option<fn() -> Vec<u8>>,
}

/// One expected golden file.
struct GoldenFile {
    /// Relative to `tests/data`.
    path: &'static str,
    file_len: u64,
    kind: FileKind,
    generation: u64,
    /// The step as the file's signed field holds it (FORMAT.md): the API took signed steps when they were written, and two of
    /// these files have negative ones, which the `u64` API reads as their two's complement.
    app_step: i64,
    step_id: Option<u32>,
    rank: u32,
    nranks: u32,
    job_id: &'static str,
    app_name: &'static str,
    metadata: &'static [(&'static str, &'static [u8])],
    sections: &'static [GoldenSection],
}

const DATA_METADATA: &[(&str, &[u8])] = &[
    ("run", b"golden run 1"),
    ("empty", b""),
    ("binary", &[0, 1, 2, 0xff, 0xfe, 0x89, b'C', b'K', b'P', 0]),
    ("ключ", "значение".as_bytes()),
];

const PLANES_METADATA: &[(&str, &[u8])] = &[("filter", b"2 (byte planes)")];

// Recorded from the generator's output when the files were written (never edit for existing files).

const V1_DATA: GoldenFile = GoldenFile {
    path: "v1-data.ckpt",
    file_len: 29912,
    kind: FileKind::Data,
    generation: 2,
    app_step: -1234567890123,
    step_id: Some(3),
    rank: 0,
    nranks: 1,
    job_id: "4242",
    app_name: "golden",
    metadata: DATA_METADATA,
    sections: &[
        GoldenSection {
            name: "raw.bytes",
            encoding: 0,
            codec: Codec::None,
            shuffle: false,
            planes: false,
            element_size: 1,
            tag: 1,
            raw_len: 5000,
            raw_crc32: 0x65f08bc4,
            stored_len: 5000,
            offset: 4096,
            content: Some(c_raw_bytes),
        },
        GoldenSection {
            name: "raw.empty",
            encoding: 0,
            codec: Codec::None,
            shuffle: false,
            planes: false,
            element_size: 1,
            tag: 2,
            raw_len: 0,
            raw_crc32: 0x00000000,
            stored_len: 0,
            offset: 12288,
            content: Some(c_empty),
        },
        GoldenSection {
            name: "zstd.json",
            encoding: 3,
            codec: Codec::Zstd,
            shuffle: false,
            planes: false,
            element_size: 1,
            tag: 3,
            raw_len: 19033,
            raw_crc32: 0x5409dda3,
            stored_len: 2738,
            offset: 12288,
            content: Some(c_json),
        },
        GoldenSection {
            name: "zstd.shuffle8.f64",
            encoding: 0,
            codec: Codec::Zstd,
            shuffle: true,
            planes: false,
            element_size: 8,
            tag: 4,
            raw_len: 24000,
            raw_crc32: 0x9af147d3,
            stored_len: 4770,
            offset: 15032,
            content: Some(c_shuffle8),
        },
        GoldenSection {
            name: "zstd.shuffle3.tail",
            encoding: 0,
            codec: Codec::Zstd,
            shuffle: true,
            planes: false,
            element_size: 3,
            tag: 5,
            raw_len: 1000,
            raw_crc32: 0xdf68ae51,
            stored_len: 532,
            offset: 19808,
            content: Some(c_shuffle3_tail),
        },
        GoldenSection {
            name: "zstd.shuffle4.blocks",
            encoding: 0,
            codec: Codec::Zstd,
            shuffle: true,
            planes: false,
            element_size: 4,
            tag: 6,
            raw_len: 1310726,
            raw_crc32: 0xdc0a99bb,
            stored_len: 2375,
            offset: 20344,
            content: Some(c_shuffle4_blocks),
        },
        GoldenSection {
            name: "zstd.empty",
            encoding: 0,
            codec: Codec::Zstd,
            shuffle: false,
            planes: false,
            element_size: 1,
            tag: 7,
            raw_len: 0,
            raw_crc32: 0x00000000,
            stored_len: 9,
            offset: 22720,
            content: Some(c_empty),
        },
        GoldenSection {
            name: "serde.state",
            encoding: 1,
            codec: Codec::None,
            shuffle: false,
            planes: false,
            element_size: 1,
            tag: 0,
            raw_len: 31,
            raw_crc32: 0x4dbe2d0e,
            stored_len: 31,
            offset: 24576,
            content: Some(c_serde),
        },
        GoldenSection {
            name: "other.encoding",
            encoding: 777,
            codec: Codec::None,
            shuffle: false,
            planes: false,
            element_size: 1,
            tag: u32::MAX,
            raw_len: 20,
            raw_crc32: 0xbef49a51,
            stored_len: 20,
            offset: 28672,
            content: Some(c_other_encoding),
        },
    ],
};

const V1_EMPTY: GoldenFile = GoldenFile {
    path: "v1-empty.ckpt",
    file_len: 368,
    kind: FileKind::Data,
    generation: 1,
    app_step: i64::MIN,
    step_id: None,
    rank: 0,
    nranks: 1,
    job_id: "golden-empty",
    app_name: "golden-empty",
    metadata: &[("note", b"a checkpoint without sections")],
    sections: &[],
};

const V1_MULTIRANK_MANIFEST: GoldenFile = GoldenFile {
    path: "v1-multirank/manifest.ckpt",
    file_len: 4336,
    kind: FileKind::Manifest,
    generation: 1,
    app_step: 77,
    step_id: None,
    rank: 0,
    nranks: 2,
    job_id: "4243",
    app_name: "golden-mpi",
    metadata: &[],
    sections: &[GoldenSection {
        name: "ckpt.parts",
        encoding: 4,
        codec: Codec::None,
        shuffle: false,
        planes: false,
        element_size: 1,
        tag: 0,
        raw_len: 48,
        raw_crc32: 0xf82f148a,
        stored_len: 48,
        offset: 4096,
        content: None,
    }],
};

const V1_MULTIRANK_RANK0: GoldenFile = GoldenFile {
    path: "v1-multirank/rank0.ckpt",
    file_len: 8568,
    kind: FileKind::Data,
    generation: 1,
    app_step: 77,
    step_id: None,
    rank: 0,
    nranks: 2,
    job_id: "4243",
    app_name: "golden-mpi",
    metadata: &[("rank", b"0")],
    sections: &[
        GoldenSection {
            name: "rank.field",
            encoding: 0,
            codec: Codec::None,
            shuffle: false,
            planes: false,
            element_size: 1,
            tag: 0,
            raw_len: 3000,
            raw_crc32: 0x71b5c367,
            stored_len: 3000,
            offset: 4096,
            content: Some(c_rank0_field),
        },
        GoldenSection {
            name: "rank.state",
            encoding: 0,
            codec: Codec::Zstd,
            shuffle: true,
            planes: false,
            element_size: 8,
            tag: 0,
            raw_len: 4004,
            raw_crc32: 0x6c896e28,
            stored_len: 1147,
            offset: 7096,
            content: Some(c_rank0_state),
        },
    ],
};

const V1_MULTIRANK_RANK1: GoldenFile = GoldenFile {
    path: "v1-multirank/rank1.ckpt",
    file_len: 9568,
    kind: FileKind::Data,
    generation: 1,
    app_step: 77,
    step_id: None,
    rank: 1,
    nranks: 2,
    job_id: "4243",
    app_name: "golden-mpi",
    metadata: &[("rank", b"1")],
    sections: &[
        GoldenSection {
            name: "rank.field",
            encoding: 0,
            codec: Codec::None,
            shuffle: false,
            planes: false,
            element_size: 1,
            tag: 1,
            raw_len: 4000,
            raw_crc32: 0x526408e9,
            stored_len: 4000,
            offset: 4096,
            content: Some(c_rank1_field),
        },
        GoldenSection {
            name: "rank.state",
            encoding: 0,
            codec: Codec::Zstd,
            shuffle: true,
            planes: false,
            element_size: 8,
            tag: 0,
            raw_len: 4004,
            raw_crc32: 0xd435094d,
            stored_len: 1147,
            offset: 8096,
            content: Some(c_rank1_state),
        },
    ],
};

const V1_PLANES: GoldenFile = GoldenFile {
    path: "v1-planes.ckpt",
    file_len: 756112,
    kind: FileKind::Data,
    generation: 1,
    app_step: 5,
    step_id: None,
    rank: 0,
    nranks: 1,
    job_id: "4244",
    app_name: "golden-planes",
    metadata: PLANES_METADATA,
    sections: &[
        GoldenSection {
            name: "zstd.planes8.f64",
            encoding: 0,
            codec: Codec::Zstd,
            shuffle: true,
            planes: true,
            element_size: 8,
            tag: 11,
            raw_len: 1120000,
            raw_crc32: 0x03624373,
            stored_len: 737824,
            offset: 4096,
            content: Some(c_planes8_f64),
        },
        GoldenSection {
            name: "zstd.planes3.tail",
            encoding: 0,
            codec: Codec::Zstd,
            shuffle: true,
            planes: true,
            element_size: 3,
            tag: 12,
            raw_len: 1050002,
            raw_crc32: 0x5a18834a,
            stored_len: 3428,
            offset: 741920,
            content: Some(c_planes3_tail),
        },
        GoldenSection {
            name: "zstd.planes4.random",
            encoding: 0,
            codec: Codec::Zstd,
            shuffle: true,
            planes: true,
            element_size: 4,
            tag: 13,
            raw_len: 10000,
            raw_crc32: 0xf9541640,
            stored_len: 10016,
            offset: 745352,
            content: Some(c_planes4_random),
        },
        GoldenSection {
            name: "zstd.planes8.tiny",
            encoding: 0,
            codec: Codec::Zstd,
            shuffle: true,
            planes: true,
            element_size: 8,
            tag: 14,
            raw_len: 3,
            raw_crc32: 0x648d3d79,
            stored_len: 35,
            offset: 755368,
            content: Some(c_planes8_tiny),
        },
        GoldenSection {
            name: "zstd.planes8.empty",
            encoding: 0,
            codec: Codec::Zstd,
            shuffle: true,
            planes: true,
            element_size: 8,
            tag: 15,
            raw_len: 0,
            raw_crc32: 0x00000000,
            stored_len: 0,
            offset: 755408,
            content: Some(c_empty),
        },
    ],
};

/// Every golden file, for the layout check.
const ALL_GOLDEN: &[&GoldenFile] =
    &[&V1_DATA, &V1_EMPTY, &V1_MULTIRANK_MANIFEST, &V1_MULTIRANK_RANK0, &V1_MULTIRANK_RANK1, &V1_PLANES];

// -------------------------------------------------------------------------------------------------------
// Checks.

fn data_path(rel: &str) -> PathBuf {
    Path::new(DATA_DIR).join(rel)
}

fn read_golden(rel: &str) -> Vec<u8> {
    let p = data_path(rel);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!("golden file {} is missing ({e}); golden files are committed and never regenerated", p.display())
    })
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and `crc32fast`), written out here so the golden test does not
/// depend on the library's choice of implementation.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    !bytes.iter().fold(!0u32, |c, &b| table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

fn check_file(g: &GoldenFile) {
    let bytes = read_golden(g.path);
    assert_eq!(bytes.len() as u64, g.file_len, "{}: file length", g.path);
    let path = data_path(g.path);
    let opened = [
        ("mmap", Checkpoint::open_with(&FileStorage, &path, LoadOptions::new().mmap(true))),
        ("plain reads", Checkpoint::open_with(&FileStorage, &path, LoadOptions::new().mmap(false))),
        ("from_bytes", Checkpoint::from_bytes(bytes.clone())),
    ];
    for (how, cp) in opened {
        let what = format!("{} ({how})", g.path);
        let cp = cp.unwrap_or_else(|e| panic!("{what}: a golden file no longer opens: {e}"));
        cp.verify().unwrap_or_else(|e| panic!("{what}: a golden file no longer verifies: {e}"));
        let h = cp.header();
        assert_eq!(h.kind, g.kind, "{what}: kind");
        assert_eq!(h.generation, g.generation, "{what}: generation");
        assert_eq!(h.app_step.cast_signed(), g.app_step, "{what}: app_step");
        assert_eq!(cp.step(), g.app_step.cast_unsigned(), "{what}: step()");
        assert_eq!(h.step_id, g.step_id, "{what}: step_id");
        assert_eq!((h.rank, h.nranks), (g.rank, g.nranks), "{what}: rank/nranks");
        assert_eq!(h.job_id, g.job_id, "{what}: job_id");
        assert_eq!(h.app_name, g.app_name, "{what}: app_name");
        assert_eq!(h.host, GOLDEN_HOST, "{what}: host");
        assert_eq!(h.writer_version, GOLDEN_WRITER_VERSION, "{what}: writer_version");
        // 2023-11-14 .. 2100-01-01: the files were written in between.
        assert!(
            (1_700_000_000_000_000_000..4_102_444_800_000_000_000).contains(&h.created_unix_ns),
            "{what}: implausible created_unix_ns {}",
            h.created_unix_ns
        );
        let metadata: Vec<(&str, &[u8])> = h.metadata.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        assert_eq!(metadata, g.metadata, "{what}: metadata");
        assert_eq!(cp.file_len(), g.file_len, "{what}: file_len");

        assert_eq!(cp.sections().len(), g.sections.len(), "{what}: number of sections");
        for (e, s) in cp.sections().iter().zip(g.sections) {
            let sw = format!("{what}: section {:?}", s.name);
            assert_eq!(e.name, s.name, "{sw}: name (table order)");
            assert_eq!(e.encoding, Encoding::from_u16(s.encoding), "{sw}: encoding");
            assert_eq!(e.codec, s.codec, "{sw}: codec");
            assert_eq!((e.shuffle, e.planes, e.element_size), (s.shuffle, s.planes, s.element_size), "{sw}: filter");
            assert_eq!(e.tag, s.tag, "{sw}: tag");
            assert_eq!(e.raw_len, s.raw_len, "{sw}: raw_len");
            assert_eq!(e.raw_crc32, s.raw_crc32, "{sw}: raw_crc32");
            assert_eq!((e.offset, e.stored_len), (s.offset, s.stored_len), "{sw}: placement");
            let got = cp.read(s.name).unwrap_or_else(|err| panic!("{sw}: read: {err}"));
            assert_eq!(got.len() as u64, s.raw_len, "{sw}: decoded length");
            assert_eq!(crc32(&got), s.raw_crc32, "{sw}: CRC-32 of the decoded bytes");
            if let Some(content) = s.content {
                let want = content();
                assert_eq!(crc32(&want), s.raw_crc32, "{sw}: the content generator no longer matches the file");
                assert!(got[..] == want[..], "{sw}: decoded bytes differ from the regenerated content");
            }
            let mut buf = vec![0x55; s.raw_len as usize];
            cp.read_into(s.name, &mut buf).unwrap_or_else(|err| panic!("{sw}: read_into: {err}"));
            assert!(buf[..] == got[..], "{sw}: read_into differs from read");
        }
    }
}

#[test]
fn golden_v1_data_file_reads_back() {
    check_file(&V1_DATA);
    let cp = Checkpoint::from_bytes(read_golden(V1_DATA.path)).expect("open");
    assert_eq!(cp.read_serde::<GoldenState>("serde.state").expect("read_serde"), golden_state());
}

#[test]
fn golden_v1_empty_file_reads_back() {
    check_file(&V1_EMPTY);
}

#[test]
fn golden_v1_multirank_files_read_back() {
    check_file(&V1_MULTIRANK_MANIFEST);
    check_file(&V1_MULTIRANK_RANK0);
    check_file(&V1_MULTIRANK_RANK1);
    // The manifest names exactly these part files.
    let manifest = Checkpoint::from_bytes(read_golden(V1_MULTIRANK_MANIFEST.path)).expect("manifest");
    let entries = parse_manifest(&manifest).expect("parse_manifest");
    let parts = [&V1_MULTIRANK_RANK0, &V1_MULTIRANK_RANK1];
    assert_eq!(entries.len(), parts.len(), "manifest entries");
    for (r, (entry, part)) in entries.iter().zip(parts).enumerate() {
        let cp = Checkpoint::from_bytes(read_golden(part.path)).expect("part");
        let (hc, tc) = cp.identity();
        let expected = ManifestEntry { rank: r as u32, file_len: cp.file_len(), header_crc32: hc, table_crc32: tc };
        assert_eq!(*entry, expected, "manifest entry of rank {r}");
    }
}

/// Shuffled zstd sections stored as byte planes (filter 2) read back; the byte-level plane records are
/// checked by [`golden_files_follow_the_documented_layout`].
#[test]
fn golden_v1_planes_file_reads_back() {
    check_file(&V1_PLANES);
    let cp = Checkpoint::from_bytes(read_golden(V1_PLANES.path)).expect("open");
    for e in cp.sections() {
        assert!(e.shuffle && e.planes && e.codec == Codec::Zstd, "{}: filter 2, zstd", e.name);
    }
}

/// Configuration matching the generator's (see [`generate_golden_files`]).
fn golden_config(dir: &Path, app: &str, job: Option<&str>, step: Option<u32>, rank: u32, nranks: u32) -> Config {
    let mut c = config(app, dir);
    c.job_id = job.map(str::to_string);
    c.step_id = step;
    c.rank = rank;
    c.nranks = nranks;
    c.host = GOLDEN_HOST.to_string();
    c
}

/// Restart discovery of today accepts the old files under their Slurm-style names.
#[test]
fn golden_files_are_found_by_discovery() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Single rank: `<job>.<step>.ckpt.<N>`.
    let dir = tmp.path().join("single");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("4242.3.ckpt.2"), read_golden(V1_DATA.path)).expect("copy");
    let store = Store::new(golden_config(&dir, "golden", Some("4242"), Some(3), 0, 1));
    let r = store.restore().expect("restore").expect("the golden file is found");
    assert_eq!((r.generation, r.app_step.cast_signed()), (V1_DATA.generation, V1_DATA.app_step));
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);

    // Multi-rank: the manifest as `<base>.1`, the parts under `<base>.parts/1/`.
    let dir = tmp.path().join("multi");
    let parts = dir.join("4243.ckpt.parts/1");
    std::fs::create_dir_all(&parts).expect("mkdir");
    std::fs::write(dir.join("4243.ckpt.1"), read_golden(V1_MULTIRANK_MANIFEST.path)).expect("copy");
    for (r, part) in [&V1_MULTIRANK_RANK0, &V1_MULTIRANK_RANK1].iter().enumerate() {
        std::fs::write(parts.join(format!("rank{r}.ckpt")), read_golden(part.path)).expect("copy");
    }
    for (rank, part) in [&V1_MULTIRANK_RANK0, &V1_MULTIRANK_RANK1].iter().enumerate() {
        let store = Store::new(golden_config(&dir, "golden-mpi", Some("4243"), None, rank as u32, 2));
        let r = store.restore().expect("restore").unwrap_or_else(|| panic!("rank {rank} finds the golden step"));
        assert_eq!((r.generation, r.app_step.cast_signed()), (1, V1_MULTIRANK_MANIFEST.app_step), "rank {rank}");
        assert_eq!(r.checkpoint.header().rank, rank as u32, "rank {rank} restores its own part");
        assert_eq!(r.checkpoint.file_len(), part.file_len, "rank {rank} restores its own part");
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    }
}

fn le_u16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
fn padded_str(b: &[u8]) -> &str {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    assert!(b[end..].iter().all(|&c| c == 0), "bytes after the NUL padding");
    std::str::from_utf8(&b[..end]).expect("UTF-8")
}

/// Walks one zstd frame (RFC 8878) that must fill `frame` exactly, without decoding it: the magic, the frame
/// header (its content size, when recorded, must be `n`), the block headers and the optional checksum.
fn check_zstd_frame(what: &str, frame: &[u8], n: usize) {
    assert!(frame.len() >= 6, "{what}: a zstd frame of {} bytes is too short", frame.len());
    assert_eq!(&frame[..4], &[0x28, 0xb5, 0x2f, 0xfd], "{what}: zstd magic");
    let fhd = frame[4];
    assert_eq!(fhd & 0x08, 0, "{what}: zstd frame header reserved bit");
    let (fcs_flag, single_segment, checksum, did_flag) = (fhd >> 6, fhd & 0x20 != 0, fhd & 0x04 != 0, fhd & 3);
    let mut pos = 5 + usize::from(!single_segment) + [0, 1, 2, 4][usize::from(did_flag)];
    let fcs_len = [usize::from(single_segment), 2, 4, 8][usize::from(fcs_flag)];
    if fcs_len > 0 {
        let mut v = [0u8; 8];
        v[..fcs_len].copy_from_slice(&frame[pos..pos + fcs_len]);
        let fcs = u64::from_le_bytes(v) + if fcs_len == 2 { 256 } else { 0 };
        assert_eq!(fcs, n as u64, "{what}: the frame's content size is the plane's length");
    }
    pos += fcs_len;
    loop {
        assert!(pos + 3 <= frame.len(), "{what}: zstd block header past the end of the frame");
        let h = u32::from(frame[pos]) | u32::from(frame[pos + 1]) << 8 | u32::from(frame[pos + 2]) << 16;
        pos += 3;
        let size = (h >> 3) as usize;
        pos += match (h >> 1) & 3 {
            0 | 2 => size, // raw, compressed: `size` bytes follow
            1 => 1,        // RLE: one byte repeated `size` times
            _ => panic!("{what}: reserved zstd block type"),
        };
        if h & 1 != 0 {
            break;
        }
    }
    pos += if checksum { 4 } else { 0 };
    assert_eq!(pos, frame.len(), "{what}: the plane's stored length is exactly one zstd frame");
}

/// Parses the stored bytes of a filter-2 (byte planes) section as documented in `format/mod.rs`: per block
/// of 1 MiB rounded down to a multiple of `es`, `es` u32 words (bit 31 = zstd frame, low 31 bits = stored
/// length), the planes' bytes, then the block's tail. Planes stored as is and tails are un-shuffled here with
/// a plain loop (byte `j` of element `i` is at `j * n + i` in the block) and compared with `content`;
/// compressed planes are checked as zstd frames (the tests crate has no zstd decoder; the reader's decoding
/// is compared with `content` by `check_file`). Returns, per block, whether each plane is compressed.
fn check_planes(sp: &str, stored: &[u8], es: usize, raw_len: u64, content: Option<&[u8]>) -> Vec<Vec<bool>> {
    let block_len = (1usize << 20) / es * es;
    let raw_len = usize::try_from(raw_len).expect("raw_len fits");
    if let Some(c) = content {
        assert_eq!(c.len(), raw_len, "{sp}: content length");
    }
    let mut kinds = Vec::new();
    let (mut pos, mut block_start) = (0usize, 0usize);
    while block_start < raw_len {
        let this = block_len.min(raw_len - block_start);
        let n = this / es;
        let bw = format!("{sp}, block at {block_start}");
        assert!(pos + 4 * es <= stored.len(), "{bw}: plane words past the end of the section");
        let words: Vec<u32> = (0..es).map(|p| le_u32(stored, pos + 4 * p)).collect();
        pos += 4 * es;
        let mut block_kinds = Vec::with_capacity(es);
        for (p, &w) in words.iter().enumerate() {
            let compressed = w & (1 << 31) != 0;
            let len = (w & !(1 << 31)) as usize;
            assert!(pos + len <= stored.len(), "{bw}: plane {p} runs past the end of the section");
            let bytes = &stored[pos..pos + len];
            if compressed {
                assert!(len <= n, "{bw}: compressed plane {p} has {len} bytes, more than its {n}");
                check_zstd_frame(&format!("{bw}: plane {p}"), bytes, n);
            } else {
                assert_eq!(len, n, "{bw}: plane {p} stored as is has {len} bytes, not {n}");
                if let Some(c) = content {
                    for (i, &byte) in bytes.iter().enumerate() {
                        assert_eq!(byte, c[block_start + i * es + p], "{bw}: byte {p} of element {i}");
                    }
                }
            }
            block_kinds.push(compressed);
            pos += len;
        }
        let tail = this - n * es;
        assert!(pos + tail <= stored.len(), "{bw}: tail past the end of the section");
        if let Some(c) = content {
            assert!(stored[pos..pos + tail] == c[block_start + n * es..block_start + this], "{bw}: the tail as is");
        }
        pos += tail;
        kinds.push(block_kinds);
        block_start += this;
    }
    assert_eq!(pos, stored.len(), "{sp}: the blocks' records add up to stored_len");
    kinds
}

/// What the writer chose for the planes of `v1-planes.ckpt`'s sections (fixed by the file's bytes).
fn check_plane_choices(sp: &str, name: &str, kinds: &[Vec<bool>]) {
    let count = |want: bool| kinds.iter().flatten().filter(|&&k| k == want).count();
    match name {
        "zstd.planes8.f64" => {
            assert_eq!(kinds.len(), 2, "{sp}: spans two 1 MiB blocks");
            for k in kinds {
                assert!(k[7] && k[6], "{sp}: the sign/exponent planes are compressed");
                assert!(!k[0] && !k[1] && !k[2] && !k[3], "{sp}: the low mantissa planes are stored as is");
            }
        }
        "zstd.planes3.tail" => assert_eq!(kinds.len(), 2, "{sp}: a block of 1048575 bytes and a short one"),
        "zstd.planes4.random" => assert_eq!(count(true), 0, "{sp}: incompressible planes are stored as is"),
        "zstd.planes8.tiny" => assert_eq!((kinds.len(), count(true)), (1, 0), "{sp}: one block of 0-byte planes"),
        "zstd.planes8.empty" => assert!(kinds.is_empty(), "{sp}: no block at all"),
        _ => {}
    }
    if name == "zstd.planes8.f64" {
        assert!(count(true) > 0 && count(false) > 0, "{sp}: some planes compressed, some stored as is");
    }
}

/// Parses every golden file with the byte layout documented in `format/mod.rs`, independently of the reader.
#[test]
fn golden_files_follow_the_documented_layout() {
    for g in ALL_GOLDEN {
        let b = read_golden(g.path);
        let p = g.path;
        let len = b.len() as u64;
        // Header.
        assert_eq!(&b[0..8], b"\x89CKP\r\n\x1a\n", "{p}: magic");
        assert_eq!(le_u16(&b, 8), 1, "{p}: format_version");
        let kind = match g.kind {
            FileKind::Data => 0,
            FileKind::Manifest => 1,
        };
        assert_eq!(le_u16(&b, 10), kind, "{p}: file_kind");
        let header_len = le_u32(&b, 12) as usize;
        assert!((264..=1 << 20).contains(&header_len), "{p}: header_len {header_len}");
        assert_eq!(le_u64(&b, 16), g.generation, "{p}: generation");
        assert_eq!(le_u64(&b, 24) as i64, g.app_step, "{p}: app_step");
        assert_eq!(le_u32(&b, 40), g.step_id.unwrap_or(u32::MAX), "{p}: step_id");
        assert_eq!((le_u32(&b, 44), le_u32(&b, 48)), (g.rank, g.nranks), "{p}: rank, nranks");
        assert_eq!(le_u32(&b, 52), 0, "{p}: flags");
        let wv = (le_u16(&b, 56), le_u16(&b, 58), le_u16(&b, 60));
        assert_eq!(wv, GOLDEN_WRITER_VERSION, "{p}: writer_version");
        assert_eq!(le_u16(&b, 62), 0, "{p}: reserved");
        assert_eq!(padded_str(&b[64..128]), g.job_id, "{p}: job_id");
        assert_eq!(padded_str(&b[128..192]), g.app_name, "{p}: app_name");
        assert_eq!(padded_str(&b[192..256]), GOLDEN_HOST, "{p}: host");
        assert_eq!(le_u32(&b, 256) as usize, g.metadata.len(), "{p}: metadata_count");
        let mut pos = 260;
        for (k, v) in g.metadata {
            let klen = le_u16(&b, pos) as usize;
            assert_eq!(&b[pos + 2..pos + 2 + klen], k.as_bytes(), "{p}: metadata key");
            pos += 2 + klen;
            let vlen = le_u32(&b, pos) as usize;
            assert_eq!(&b[pos + 4..pos + 4 + vlen], *v, "{p}: metadata value of {k:?}");
            pos += 4 + vlen;
        }
        assert_eq!(pos + 4, header_len, "{p}: the header ends with its CRC after the metadata");
        let header_crc = le_u32(&b, header_len - 4);
        assert_eq!(header_crc, crc32(&b[..header_len - 4]), "{p}: header_crc32");

        // Trailer.
        let t = &b[b.len() - 64..];
        assert_eq!(&t[56..64], b"CKPTEND\n", "{p}: end_magic");
        assert_eq!(le_u32(t, 48), crc32(&t[..48]), "{p}: trailer_crc32");
        assert!(t[28..48].iter().chain(&t[52..56]).all(|&x| x == 0), "{p}: trailer reserved bytes");
        let table_offset = le_u64(t, 0);
        assert_eq!(le_u64(t, 8), len, "{p}: file_len");
        let count = le_u32(t, 16) as usize;
        assert_eq!(count, g.sections.len(), "{p}: section_count");
        assert_eq!(le_u32(t, 24), header_crc, "{p}: the trailer's copy of the header CRC");
        assert_eq!(table_offset % 8, 0, "{p}: table alignment");
        assert_eq!(table_offset + 128 * count as u64 + 64, len, "{p}: table + trailer end the file");
        let table = &b[table_offset as usize..table_offset as usize + 128 * count];
        assert_eq!(le_u32(t, 20), crc32(table), "{p}: table_crc32");

        // Section table and data area.
        let data_start = (header_len as u64).div_ceil(4096) * 4096;
        let mut covered = vec![0u8; b.len()];
        covered[..header_len].fill(1);
        covered[table_offset as usize..].fill(1);
        for (e, s) in table.chunks_exact(128).zip(g.sections) {
            let sp = format!("{p}: section {:?}", s.name);
            assert_eq!(padded_str(&e[0..64]), s.name, "{sp}: name");
            assert_eq!(le_u16(e, 64), s.encoding, "{sp}: encoding");
            let codec = match s.codec {
                Codec::None => 0,
                Codec::Zstd => 1,
            };
            assert_eq!(e[66], codec, "{sp}: codec");
            let filter = if s.planes { 2 } else { u8::from(s.shuffle) };
            assert_eq!(e[67], filter, "{sp}: filter");
            assert_eq!(le_u16(e, 68), s.element_size, "{sp}: element_size");
            assert_eq!(le_u16(e, 70), 0, "{sp}: reserved");
            assert_eq!(le_u32(e, 72), s.tag, "{sp}: tag");
            assert_eq!(le_u32(e, 76), s.raw_crc32, "{sp}: raw_crc32");
            assert_eq!(le_u64(e, 80), s.raw_len, "{sp}: raw_len");
            assert_eq!(le_u64(e, 88), s.stored_len, "{sp}: stored_len");
            assert_eq!(le_u64(e, 96), s.offset, "{sp}: offset");
            assert!(e[108..128].iter().all(|&x| x == 0), "{sp}: reserved tail");
            let (start, end) = (s.offset as usize, (s.offset + s.stored_len) as usize);
            assert!(s.offset >= data_start && s.offset + s.stored_len <= table_offset, "{sp}: inside the data area");
            let stored = &b[start..end];
            assert_eq!(le_u32(e, 104), crc32(stored), "{sp}: stored_crc32");
            match s.codec {
                Codec::None => {
                    assert_eq!(s.offset % 4096, 0, "{sp}: raw sections are 4096-aligned");
                    assert_eq!(s.stored_len, s.raw_len, "{sp}: raw stored_len");
                    assert_eq!(crc32(stored), s.raw_crc32, "{sp}: raw bytes CRC");
                    if let Some(content) = s.content {
                        assert!(stored == &content()[..], "{sp}: raw bytes are stored as is");
                    }
                }
                Codec::Zstd if s.planes => {
                    assert_eq!(s.offset % 8, 0, "{sp}: compressed sections are 8-aligned");
                    assert!(s.element_size > 1, "{sp}: byte planes of elements of more than one byte");
                    let content = s.content.map(|f| f());
                    let kinds = check_planes(&sp, stored, usize::from(s.element_size), s.raw_len, content.as_deref());
                    check_plane_choices(&sp, s.name, &kinds);
                }
                Codec::Zstd => {
                    assert_eq!(s.offset % 8, 0, "{sp}: compressed sections are 8-aligned");
                    assert_eq!(&stored[..4], &[0x28, 0xb5, 0x2f, 0xfd], "{sp}: one zstd frame (magic)");
                }
            }
            assert!(covered[start..end].iter().all(|&c| c == 0), "{sp}: overlaps another part");
            covered[start..end].fill(1);
        }
        for (i, (&c, &byte)) in covered.iter().zip(&b).enumerate() {
            assert!(c == 1 || byte == 0, "{p}: gap byte at offset {i} is {byte:#04x}, not zero padding");
        }
    }
}

/// Every file in `tests/data` is described by a test above (new golden files need their constants).
#[test]
fn every_golden_file_is_checked() {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read tests/data") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).expect("inside").to_string_lossy().into_owned());
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new(DATA_DIR), Path::new(DATA_DIR), &mut found);
    found.retain(|f| f != "README.md");
    found.sort();
    let mut known: Vec<String> = ALL_GOLDEN.iter().map(|g| g.path.to_string()).collect();
    known.sort();
    assert_eq!(found, known, "files in tests/data vs golden files described in golden.rs");
}

// -------------------------------------------------------------------------------------------------------
// The generator (run manually; see the module documentation). NEVER regenerate committed files.

/// How the generator writes one section of the data file.
struct Spec {
    name: &'static str,
    compression: Compression,
    element_size: u16,
    encoding: Encoding,
    tag: u32,
    content: fn() -> Vec<u8>,
}

fn data_specs() -> Vec<Spec> {
    let raw = Compression::None;
    let z = Compression::Zstd(3);
    let s = |name, compression, element_size, encoding, tag, content| Spec {
        name,
        compression,
        element_size,
        encoding,
        tag,
        content,
    };
    vec![
        s("raw.bytes", raw, 1, Encoding::Bytes, 1, c_raw_bytes as fn() -> Vec<u8>),
        s("raw.empty", raw, 1, Encoding::Bytes, 2, c_empty),
        s("zstd.json", z, 1, Encoding::Json, 3, c_json),
        s("zstd.shuffle8.f64", z, 8, Encoding::Bytes, 4, c_shuffle8),
        s("zstd.shuffle3.tail", z, 3, Encoding::Bytes, 5, c_shuffle3_tail),
        s("zstd.shuffle4.blocks", z, 4, Encoding::Bytes, 6, c_shuffle4_blocks),
        s("zstd.empty", z, 1, Encoding::Bytes, 7, c_empty),
        s("serde.state", raw, 1, Encoding::Postcard, 0, c_serde),
        s("other.encoding", raw, 1, Encoding::Other(777), u32::MAX, c_other_encoding),
    ]
}

/// The sections of `v1-planes.ckpt`: every one zstd level 3 with a shuffle width > 1 (filter 2).
fn planes_specs() -> Vec<Spec> {
    let z = Compression::Zstd(3);
    let s = |name, element_size, tag, content| Spec {
        name,
        compression: z,
        element_size,
        encoding: Encoding::Bytes,
        tag,
        content,
    };
    vec![
        s("zstd.planes8.f64", 8, 11, c_planes8_f64 as fn() -> Vec<u8>),
        s("zstd.planes3.tail", 3, 12, c_planes3_tail),
        s("zstd.planes4.random", 4, 13, c_planes4_random),
        s("zstd.planes8.tiny", 8, 14, c_planes8_tiny),
        s("zstd.planes8.empty", 8, 15, c_empty),
    ]
}

fn add_spec(w: &mut ckpt_core::CheckpointWriter, spec: &Spec) {
    if spec.encoding == Encoding::Postcard {
        w.add_serde(spec.name, &golden_state()).expect("add_serde");
    } else {
        let opts = SectionOptions::new()
            .compression(spec.compression)
            .shuffle(spec.element_size)
            .encoding(spec.encoding)
            .tag(spec.tag);
        w.add_section_with(spec.name, &(spec.content)(), opts).expect("add section");
    }
}

/// Prints a `GoldenFile` constant for a written file (to paste above).
fn print_constant(const_name: &str, rel: &str, bytes: &[u8], contents: &[(&str, &str)]) {
    let cp = Checkpoint::from_bytes(bytes.to_vec()).expect("open generated file");
    cp.verify().expect("verify generated file");
    let h = cp.header();
    let mut s = format!("const {const_name}: GoldenFile = GoldenFile {{\n    path: {rel:?},\n");
    s += &format!("    file_len: {},\n    kind: FileKind::{:?},\n", bytes.len(), h.kind);
    s += &format!("    generation: {},\n    app_step: {},\n", h.generation, h.app_step.cast_signed());
    s += &format!("    step_id: {:?},\n    rank: {},\n    nranks: {},\n", h.step_id, h.rank, h.nranks);
    s += &format!("    job_id: {:?},\n    app_name: {:?},\n", h.job_id, h.app_name);
    s += "    metadata: METADATA_PLACEHOLDER,\n    sections: &[\n";
    for e in cp.sections() {
        let content =
            contents.iter().find(|(n, _)| *n == e.name).map_or("None".to_string(), |(_, f)| format!("Some({f})"));
        s += &format!(
            "        GoldenSection {{ name: {:?}, encoding: {}, codec: Codec::{:?}, shuffle: {}, planes: {}, element_size: {}, tag: {}, raw_len: {}, raw_crc32: {:#010x}, stored_len: {}, offset: {}, content: {content} }},\n",
            e.name,
            e.encoding.to_u16(),
            e.codec,
            e.shuffle,
            e.planes,
            e.element_size,
            e.tag,
            e.raw_len,
            e.raw_crc32,
            e.stored_len,
            e.offset
        );
    }
    s += "    ],\n};\n";
    println!("{s}");
}

fn write_new(rel: &str, bytes: &[u8]) {
    let p = data_path(rel);
    assert!(!p.exists(), "{} exists: golden files are never regenerated", p.display());
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, bytes).expect("write golden file");
    println!("// wrote {} ({} bytes)", p.display(), bytes.len());
}

/// Writes the golden files that do not exist yet. Never regenerate committed files (see module docs).
#[test]
#[ignore = "writes NEW golden files into tests/data; run manually, never to regenerate committed ones"]
fn generate_golden_files() {
    assert_eq!(ckpt_core::writer_version(), GOLDEN_WRITER_VERSION, "update GOLDEN_WRITER_VERSION for new files");
    let tmp = tempfile::tempdir().expect("tempdir");

    // v1-data.ckpt: one rank in Slurm job 4242, step 3, generation 2.
    if !data_path("v1-data.ckpt").exists() {
        let dir = tmp.path().join("data");
        let store = Store::new(golden_config(&dir, "golden", Some("4242"), Some(3), 0, 1));
        let mut w = store.begin(0).expect("begin");
        w.add_bytes("throwaway", b"generation 1").expect("section");
        w.commit().expect("commit generation 1");
        // Written while the API took signed steps; steps are 0 or more since, so this could not write it
        // again (committed files are never regenerated).
        let mut w = store.begin(-1_234_567_890_123_i64).expect("begin");
        for (k, v) in DATA_METADATA {
            w.set_metadata(k, v).expect("metadata");
        }
        let specs = data_specs();
        for spec in &specs {
            add_spec(&mut w, spec);
        }
        let info = w.commit().expect("commit");
        assert_eq!(info.generation, 2);
        let bytes = std::fs::read(&info.path).expect("read back");
        write_new("v1-data.ckpt", &bytes);
        let names = [
            ("raw.bytes", "c_raw_bytes"),
            ("raw.empty", "c_empty"),
            ("zstd.json", "c_json"),
            ("zstd.shuffle8.f64", "c_shuffle8"),
            ("zstd.shuffle3.tail", "c_shuffle3_tail"),
            ("zstd.shuffle4.blocks", "c_shuffle4_blocks"),
            ("zstd.empty", "c_empty"),
            ("serde.state", "c_serde"),
            ("other.encoding", "c_other_encoding"),
        ];
        print_constant("V1_DATA", "v1-data.ckpt", &bytes, &names);
    }

    // v1-empty.ckpt: no sections, no Slurm (the application name is the job id), app_step i64::MIN.
    if !data_path("v1-empty.ckpt").exists() {
        let dir = tmp.path().join("empty");
        let store = Store::new(golden_config(&dir, "golden-empty", None, None, 0, 1));
        // As v1-data.ckpt's step: written while the API took signed steps.
        let mut w = store.begin(i64::MIN).expect("begin");
        w.set_metadata("note", b"a checkpoint without sections").expect("metadata");
        let info = w.commit().expect("commit");
        let bytes = std::fs::read(&info.path).expect("read back");
        write_new("v1-empty.ckpt", &bytes);
        print_constant("V1_EMPTY", "v1-empty.ckpt", &bytes, &[]);
    }

    // v1-planes.ckpt: shuffled zstd sections stored as byte planes (filter 2), one rank of job 4244.
    if !data_path("v1-planes.ckpt").exists() {
        let dir = tmp.path().join("planes");
        let store = Store::new(golden_config(&dir, "golden-planes", Some("4244"), None, 0, 1));
        let mut w = store.begin(5).expect("begin");
        for (k, v) in PLANES_METADATA {
            w.set_metadata(k, v).expect("metadata");
        }
        for spec in &planes_specs() {
            add_spec(&mut w, spec);
        }
        let info = w.commit().expect("commit");
        let bytes = std::fs::read(&info.path).expect("read back");
        write_new("v1-planes.ckpt", &bytes);
        let names = [
            ("zstd.planes8.f64", "c_planes8_f64"),
            ("zstd.planes3.tail", "c_planes3_tail"),
            ("zstd.planes4.random", "c_planes4_random"),
            ("zstd.planes8.tiny", "c_planes8_tiny"),
            ("zstd.planes8.empty", "c_empty"),
        ];
        print_constant("V1_PLANES", "v1-planes.ckpt", &bytes, &names);
    }

    // v1-multirank/: a two-rank step of job 4243 (generation 1): both parts and the manifest.
    if !data_path("v1-multirank").exists() {
        let dir = tmp.path().join("multi");
        for rank in 0..2u32 {
            let store = Store::new(golden_config(&dir, "golden-mpi", Some("4243"), None, rank, 2));
            let mut w = store.begin_part(1, 77).expect("begin_part");
            w.set_metadata("rank", rank.to_string()).expect("metadata");
            w.add_section_with("rank.field", &c_rank_field(rank), SectionOptions::new().tag(rank)).expect("field");
            let opts = SectionOptions::new().compression(Compression::Zstd(3)).shuffle(8);
            w.add_section_with("rank.state", &c_rank_state(rank), opts).expect("state");
            w.commit().expect("commit part");
        }
        let store = Store::new(golden_config(&dir, "golden-mpi", Some("4243"), None, 0, 2));
        let info = store.commit_step(1, 77).expect("commit_step");
        let manifest = std::fs::read(&info.generation_path).expect("manifest");
        write_new("v1-multirank/manifest.ckpt", &manifest);
        print_constant("V1_MULTIRANK_MANIFEST", "v1-multirank/manifest.ckpt", &manifest, &[]);
        for rank in 0..2u32 {
            let part = std::fs::read(dir.join(format!("4243.ckpt.parts/1/rank{rank}.ckpt"))).expect("part");
            let rel = format!("v1-multirank/rank{rank}.ckpt");
            write_new(&rel, &part);
            let f = [("rank.field", format!("c_rank{rank}_field")), ("rank.state", format!("c_rank{rank}_state"))];
            let f: Vec<(&str, &str)> = f.iter().map(|(a, b)| (*a, b.as_str())).collect();
            print_constant(&format!("V1_MULTIRANK_RANK{rank}"), &rel, &part, &f);
        }
    }
}
