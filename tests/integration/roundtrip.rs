//! Round-trip property tests over arbitrary sections, sizes, codecs and metadata.
//!
//! A generated [`Case`] is a whole checkpoint: 0..12 sections with arbitrary valid unique names, sizes biased
//! toward the edges that matter to the format (0, 1, 4095/4096/4097 around the raw alignment, 1 MiB ± 1
//! around the shuffle block), random / zero / smooth-f64 contents, every compression choice and shuffle
//! width, tags, encodings, metadata, any `app_step`, three ways of writing a section (one buffer, gathered
//! parts, streaming `std::io::Write` in random chunk sizes) and both load paths (mmap and plain reads).
//! Every case is written through a [`Store`] (over `MemStorage`, and for some cases the real file system)
//! and read back with every reading API.
//!
//! The number of cases is modest because debug builds of zstd are slow; `PROPTEST_CASES=N` overrides it.

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ckpt_core::storage::{FileStorage, MemStorage, Storage};
use ckpt_core::{
    Checkpoint, Codec, CommitInfo, Compression, Encoding, ErrorKind, FileKind, LoadOptions, SectionOptions, Store,
};
use ckpt_tests::{Rng, config, smooth_field};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

const MIB: usize = 1 << 20;
const RAW_ALIGN: u64 = 4096;
const TABLE_ENTRY_LEN: u64 = 128;
const TRAILER_LEN: u64 = 64;
/// Upper bound on the decoded bytes of one generated case (keeps a debug-build case well under a second).
const CASE_BYTE_BUDGET: usize = 6 * MIB;

/// What a section holds.
#[derive(Clone, Debug)]
enum Content {
    /// Incompressible bytes from a seed.
    Random(u64),
    /// All zero (compresses to almost nothing).
    Zeros,
    /// A smooth float64 field with a phase (compressible after shuffling).
    Smooth(u16),
}

/// How a section is handed to the writer.
#[derive(Clone, Debug)]
enum WriteMode {
    /// `add_section_with` from one buffer.
    Whole,
    /// `add_section_parts`, cut at random points (seed), empty parts included.
    Parts(u64),
    /// `section_writer` + `std::io::Write` in random chunk sizes (seed).
    Stream(u64),
}

#[derive(Clone, Debug)]
struct SectionSpec {
    name: String,
    len: usize,
    content: Content,
    compression: Compression,
    element_size: u16,
    encoding: Encoding,
    tag: u32,
    mode: WriteMode,
}

#[derive(Clone, Debug)]
struct Case {
    sections: Vec<SectionSpec>,
    metadata: Vec<(String, Vec<u8>)>,
    app_step: u64,
    mmap: bool,
    /// Checkpoints committed before the one under test (so its generation is `prior_commits + 1`).
    prior_commits: u8,
}

/// Where a case is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Mem,
    Fs,
}

fn proptest_config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    ProptestConfig {
        // No regression files are written next to the sources; a failure prints the minimal case instead.
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::with_cases(cases)
    }
}

/// Keeps whole characters while the UTF-8 length stays within `max` bytes.
fn truncate_utf8(chars: Vec<char>, max: usize) -> String {
    let mut s = String::new();
    for c in chars {
        if s.len() + c.len_utf8() > max {
            break;
        }
        s.push(c);
    }
    s
}

fn non_nul_char() -> impl Strategy<Value = char> {
    any::<char>().prop_filter("NUL is not allowed in names", |c| *c != '\0')
}

/// Valid section names: 1..=64 bytes of UTF-8 without NUL, including the exact 64-byte limit.
fn name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_.:/ -]{1,24}",
        1 => "[a-z0-9]{64}",
        1 => "[a-z]{62}é",
        2 => proptest::collection::vec(non_nul_char(), 1..40).prop_map(|cs| truncate_utf8(cs, 64)),
    ]
}

/// Section sizes, biased toward the alignment and shuffle-block edges.
fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => prop::sample::select(vec![0, 1, 7, 8, 9, 4095, 4096, 4097, MIB - 1, MIB, MIB + 1, 2 * MIB + 3]),
        4 => 0usize..10_000,
        1 => 0usize..3 * MIB,
    ]
}

fn compression_strategy() -> impl Strategy<Value = Compression> {
    prop_oneof![
        2 => Just(Compression::None),
        3 => (-3i32..=9).prop_map(Compression::Zstd),
        1 => Just(Compression::Auto),
    ]
}

fn section_strategy() -> impl Strategy<Value = SectionSpec> {
    let content = prop_oneof![
        any::<u64>().prop_map(Content::Random),
        Just(Content::Zeros),
        any::<u16>().prop_map(Content::Smooth),
    ];
    let encoding = prop_oneof![3 => 0u16..=4, 1 => any::<u16>()].prop_map(Encoding::from_u16);
    let mode = prop_oneof![
        3 => Just(WriteMode::Whole),
        1 => any::<u64>().prop_map(WriteMode::Parts),
        2 => any::<u64>().prop_map(WriteMode::Stream),
    ];
    (
        name_strategy(),
        size_strategy(),
        content,
        compression_strategy(),
        prop::sample::select(vec![1u16, 2, 4, 8, 3, 16]),
        encoding,
        any::<u32>(),
        mode,
    )
        .prop_map(|(name, len, content, compression, element_size, encoding, tag, mode)| SectionSpec {
            name,
            len,
            content,
            compression,
            element_size,
            encoding,
            tag,
            mode,
        })
}

fn metadata_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let key = prop_oneof![
        3 => "[a-zA-Z0-9_.-]{1,40}",
        1 => proptest::collection::vec(non_nul_char(), 1..20).prop_map(|cs| truncate_utf8(cs, 40)),
    ];
    let value = proptest::collection::vec(any::<u8>(), 0..200);
    proptest::collection::vec((key, value), 0..8).prop_map(|mut entries| {
        let mut seen = std::collections::HashSet::new();
        entries.retain(|(k, _)| seen.insert(k.clone()));
        entries
    })
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(section_strategy(), 0..12),
        metadata_strategy(),
        0..=ckpt_core::MAX_STEP,
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(mut sections, metadata, app_step, mmap, prior_commits)| {
            let mut seen = std::collections::HashSet::new();
            sections.retain(|s| seen.insert(s.name.clone()));
            let mut budget = CASE_BYTE_BUDGET;
            for s in &mut sections {
                s.len = s.len.min(budget);
                budget -= s.len;
            }
            Case { sections, metadata, app_step, mmap, prior_commits }
        })
}

fn content_bytes(content: &Content, len: usize) -> Vec<u8> {
    match content {
        Content::Random(seed) => Rng::new(*seed).bytes(len),
        Content::Zeros => vec![0; len],
        Content::Smooth(phase) => {
            let mut v = smooth_field(len.div_ceil(8), f64::from(*phase) * 0.01);
            v.truncate(len);
            v
        }
    }
}

fn section_options(spec: &SectionSpec) -> SectionOptions {
    SectionOptions::new().compression(spec.compression).shuffle(spec.element_size).encoding(spec.encoding).tag(spec.tag)
}

/// Random chunk lengths summing to `len`, mixing tiny, page-sized and block-crossing chunks.
fn random_cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut left = len;
    loop {
        let want = match rng.below(5) {
            0 => 0,
            1 => rng.below(16) as usize,
            2 => rng.below(5000) as usize,
            3 => rng.below(300_000) as usize,
            _ => rng.below(1_500_000) as usize,
        };
        let n = want.min(left);
        cuts.push(n);
        left -= n;
        if left == 0 && rng.below(3) == 0 {
            return cuts;
        }
        if cuts.len() > 64 {
            cuts.push(left);
            return cuts;
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as i64
}

/// Writes the case's checkpoint through `store` and returns what the commit reported and the creation-time
/// window.
fn write_case(store: &Store, case: &Case, data: &[Vec<u8>]) -> (CommitInfo, i64, i64) {
    for k in 0..case.prior_commits {
        let mut w = store.begin(k).expect("begin a prior checkpoint");
        w.add_bytes("prior", &[k; 10]).expect("prior section");
        w.commit().expect("commit a prior checkpoint");
    }
    let t0 = now_ns();
    let mut w = store.begin(case.app_step).expect("begin");
    assert_eq!(w.generation(), u64::from(case.prior_commits) + 1, "generation announced by the writer");
    for (k, v) in &case.metadata {
        w.set_metadata(k, v).unwrap_or_else(|e| panic!("set_metadata({k:?}): {e}"));
    }
    for (spec, bytes) in case.sections.iter().zip(data) {
        let opts = section_options(spec);
        let name = &spec.name;
        match spec.mode {
            WriteMode::Whole => {
                w.add_section_with(name, bytes, opts).unwrap_or_else(|e| panic!("add_section_with({name:?}): {e}"))
            }
            WriteMode::Parts(seed) => {
                let mut rng = Rng::new(seed);
                let mut parts: Vec<&[u8]> = Vec::new();
                let mut pos = 0;
                for n in random_cuts(&mut rng, bytes.len()) {
                    parts.push(&bytes[pos..pos + n]);
                    pos += n;
                }
                w.add_section_parts(name, &parts, opts)
                    .unwrap_or_else(|e| panic!("add_section_parts({name:?}, {} parts): {e}", parts.len()));
            }
            WriteMode::Stream(seed) => {
                let mut rng = Rng::new(seed);
                let mut sw = w.section_writer(name, opts).unwrap_or_else(|e| panic!("section_writer({name:?}): {e}"));
                let mut pos = 0;
                for n in random_cuts(&mut rng, bytes.len()) {
                    let chunk = &bytes[pos..pos + n];
                    if n == 0 {
                        assert_eq!(sw.write(chunk).expect("empty write"), 0);
                    } else {
                        sw.write_all(chunk).unwrap_or_else(|e| panic!("streaming {n} bytes into {name:?}: {e}"));
                    }
                    pos += n;
                }
                sw.flush().expect("flush");
                sw.finish().unwrap_or_else(|e| panic!("finishing streamed section {name:?}: {e}"));
            }
        }
    }
    let info = w.commit().expect("commit");
    (info, t0, now_ns())
}

/// Everything a written checkpoint must satisfy.
struct Expect<'a> {
    case: &'a Case,
    data: &'a [Vec<u8>],
    generation: u64,
    app_name: &'a str,
    host: &'a str,
    created: (i64, i64),
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn check_checkpoint(cp: &Checkpoint, x: &Expect<'_>, mmap: bool) {
    let case = x.case;
    let where_ = cp.path().display().to_string();
    assert_eq!(cp.is_mapped(), mmap, "{where_}: is_mapped() with LoadOptions {{ mmap: {mmap} }}");

    // Header.
    let h = cp.header();
    assert_eq!(h.kind, FileKind::Data, "{where_}: file kind");
    assert_eq!(h.generation, x.generation, "{where_}: generation");
    assert_eq!(cp.generation(), x.generation, "{where_}: generation()");
    assert_eq!(h.app_step, case.app_step, "{where_}: app_step");
    assert_eq!(cp.step(), case.app_step, "{where_}: step()");
    assert_eq!(h.step_id, None, "{where_}: step id");
    assert_eq!((h.rank, h.nranks), (0, 1), "{where_}: rank/nranks");
    assert_eq!(h.writer_version, ckpt_core::writer_version(), "{where_}: writer version");
    assert_eq!(h.job_id, x.app_name, "{where_}: job id outside Slurm is the application name");
    assert_eq!(h.app_name, x.app_name, "{where_}: application name");
    assert_eq!(h.host, x.host, "{where_}: host");
    assert!(
        (x.created.0..=x.created.1).contains(&h.created_unix_ns),
        "{where_}: created_unix_ns {} outside the save window {:?}",
        h.created_unix_ns,
        x.created
    );
    let user: Vec<(String, Vec<u8>)> =
        h.metadata.iter().filter(|(k, _)| k != ckpt_core::identity::IDENTITY_KEY).cloned().collect();
    assert_eq!(user, case.metadata, "{where_}: metadata (in insertion order)");
    for (k, v) in &case.metadata {
        assert_eq!(cp.metadata(k), Some(&v[..]), "{where_}: metadata({k:?})");
    }

    // Whole-file verification, before any section was read (nothing cached as verified yet).
    cp.verify().unwrap_or_else(|e| panic!("{where_}: verify() of a freshly written file failed: {e}"));

    // Section table.
    let n = case.sections.len();
    let entries = cp.sections();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let want: Vec<&str> = case.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, want, "{where_}: section names in table order");
    let header_len = h.encode().expect("re-encode header").len() as u64;
    let data_start = align_up(header_len, RAW_ALIGN);
    let table_offset = cp.file_len() - TRAILER_LEN - TABLE_ENTRY_LEN * n as u64;
    assert_eq!(table_offset % 8, 0, "{where_}: table offset {table_offset} is not 8-aligned");
    let mut prev_end = header_len;
    for (i, (spec, (e, bytes))) in case.sections.iter().zip(entries.iter().zip(x.data)).enumerate() {
        let s = format!("{where_}: section #{i} {:?} ({spec:?})", e.name);
        assert_eq!(cp.section(&e.name).expect("section()"), e, "{s}: section() entry");
        assert!(cp.has_section(&e.name), "{s}: has_section");
        assert_eq!(e.raw_len, bytes.len() as u64, "{s}: raw_len");
        assert_eq!(e.encoding, spec.encoding, "{s}: encoding");
        assert_eq!(e.tag, spec.tag, "{s}: tag");
        match spec.compression {
            Compression::None => assert_eq!(e.codec, Codec::None, "{s}: codec"),
            Compression::Zstd(_) => assert_eq!(e.codec, Codec::Zstd, "{s}: codec"),
            _ => {}
        }
        let es = spec.element_size.max(1);
        match e.codec {
            Codec::None => {
                assert_eq!((e.shuffle, e.element_size), (false, 1), "{s}: raw sections are never shuffled");
                assert_eq!(e.stored_len, e.raw_len, "{s}: raw stored_len");
                assert_eq!(e.offset % RAW_ALIGN, 0, "{s}: raw section offset {} is not 4096-aligned", e.offset);
                assert_eq!(e.stored_crc32, e.raw_crc32, "{s}: raw section's two CRCs");
            }
            Codec::Zstd => {
                assert_eq!((e.shuffle, e.element_size), (es > 1, es), "{s}: shuffle filter and width");
                assert_eq!(e.offset % 8, 0, "{s}: compressed section offset {} is not 8-aligned", e.offset);
            }
        }
        if i == 0 {
            assert_eq!(e.offset, data_start, "{s}: the first section starts the data area");
        }
        assert!(e.offset >= prev_end, "{s}: offset {} overlaps the previous part ending at {prev_end}", e.offset);
        prev_end = e.offset + e.stored_len;

        // read(): borrowed from the map exactly for raw sections of a mapped file.
        let got = cp.read(&e.name).unwrap_or_else(|err| panic!("{s}: read: {err}"));
        assert!(got[..] == bytes[..], "{s}: read() returned different bytes (len {} vs {})", got.len(), bytes.len());
        let zero_copy = e.codec == Codec::None && mmap;
        match (&got, zero_copy) {
            (Cow::Borrowed(b), true) => {
                let (map, range) =
                    cp.raw_view(&e.name).expect("raw_view").expect("a raw section of a mapped file has a view");
                let mapped: &[u8] = (*map).as_ref();
                assert_eq!(range, e.offset as usize..(e.offset + e.stored_len) as usize, "{s}: raw_view range");
                assert_eq!(b.as_ptr(), mapped[range].as_ptr(), "{s}: read() is not a view of the mapped file");
            }
            (Cow::Owned(_), false) => {}
            (other, _) => panic!(
                "{s}: read() returned {} but zero copy expected = {zero_copy}",
                if matches!(other, Cow::Borrowed(_)) { "Cow::Borrowed" } else { "Cow::Owned" }
            ),
        }

        // read_into(): a buffer of exactly the raw length, pre-filled with garbage.
        let mut buf = vec![0xA5u8; bytes.len()];
        cp.read_into(&e.name, &mut buf).unwrap_or_else(|err| panic!("{s}: read_into: {err}"));
        assert!(buf == *bytes, "{s}: read_into() produced different bytes");
        cp.verify_section(&e.name).unwrap_or_else(|err| panic!("{s}: verify_section: {err}"));
    }
    assert!(prev_end <= table_offset, "{where_}: sections end at {prev_end}, after the table at {table_offset}");
    cp.verify().unwrap_or_else(|e| panic!("{where_}: verify() after reading failed: {e}"));
}

fn run_case(case: &Case, backend: Backend) {
    let data: Vec<Vec<u8>> = case.sections.iter().map(|s| content_bytes(&s.content, s.len)).collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (storage, dir): (Arc<dyn Storage>, &Path) = match backend {
        Backend::Mem => (Arc::new(MemStorage::new()), Path::new("/ckpt")),
        Backend::Fs => (Arc::new(FileStorage), tmp.path()),
    };
    let mut cfg = config("roundtrip", dir);
    cfg.mmap = case.mmap;
    let host = cfg.host.clone();
    let store = Store::with_storage(cfg, storage.clone());
    let (info, t0, t1) = write_case(&store, case, &data);

    let generation = u64::from(case.prior_commits) + 1;
    assert_eq!(info.generation, generation, "CommitInfo.generation");
    assert_eq!(info.app_step, case.app_step, "CommitInfo.app_step");
    assert_eq!(info.path, dir.join("roundtrip.ckpt"), "CommitInfo.path");
    assert_eq!(info.generation_path, dir.join(format!("roundtrip.ckpt.{generation}")), "CommitInfo.generation_path");
    assert_eq!(info.stats.sections as usize, case.sections.len(), "FileStats.sections");
    assert_eq!(info.stats.raw_bytes, data.iter().map(|d| d.len() as u64).sum::<u64>(), "FileStats.raw_bytes");

    let expect = Expect { case, data: &data, generation, app_name: "roundtrip", host: &host, created: (t0, t1) };
    let mut identities = Vec::new();
    for path in [&info.path, &info.generation_path] {
        // The case's own load path, then the other one on the alias, so both paths see every case.
        let mmap = if path == &info.path { case.mmap } else { !case.mmap };
        let cp = Checkpoint::open_with(&*storage, path, LoadOptions::new().mmap(mmap))
            .unwrap_or_else(|e| panic!("open {} (mmap {mmap}): {e}", path.display()));
        assert_eq!(cp.file_len(), info.stats.file_bytes, "{}: file_len vs FileStats.file_bytes", path.display());
        check_checkpoint(&cp, &expect, mmap);
        identities.push(cp.identity());
    }
    assert_eq!(identities[0], identities[1], "<base> and <base>.<N> must be the same file");

    // Restart discovery finds the same checkpoint.
    let restored = store.restore().expect("restore").expect("a checkpoint to restore");
    assert_eq!(restored.generation, generation, "restored generation");
    assert_eq!(restored.app_step, case.app_step, "restored app_step");
    assert!(restored.rejected.is_empty(), "nothing should be rejected: {:?}", restored.rejected);
    assert_eq!(restored.checkpoint.identity(), identities[0], "restore chose another file");
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn round_trip_in_memory(case in case_strategy()) {
        run_case(&case, Backend::Mem);
    }
}

proptest! {
    #![proptest_config(proptest_config(6))]

    #[test]
    fn round_trip_on_file_system(case in case_strategy()) {
        run_case(&case, Backend::Fs);
    }
}

/// Every edge size with every codec kind and write mode, on the real file system (mapped and plain
/// reads), independent of what the random cases happen to draw.
#[test]
fn edge_sizes_on_file_system() {
    let sizes = [0, 1, 4095, 4096, 4097, MIB - 1, MIB, MIB + 1];
    let mut sections = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let (compression, element_size, content) = match i % 4 {
            0 => (Compression::None, 1, Content::Random(i as u64 + 1)),
            1 => (Compression::Zstd(1), 8, Content::Smooth(i as u16)),
            2 => (Compression::Zstd(-1), 3, Content::Random(i as u64 + 1)),
            _ => (Compression::Auto, 16, Content::Zeros),
        };
        let mode = match i % 3 {
            0 => WriteMode::Whole,
            1 => WriteMode::Stream(i as u64 + 7),
            _ => WriteMode::Parts(i as u64 + 11),
        };
        sections.push(SectionSpec {
            name: format!("edge-{len}"),
            len,
            content,
            compression,
            element_size,
            encoding: Encoding::Bytes,
            tag: i as u32,
            mode,
        });
    }
    // The same sizes once more uncompressed, so the raw alignment edges are all on disk.
    for &len in &sizes {
        sections.push(SectionSpec {
            name: format!("raw-{len}"),
            len,
            content: Content::Random(len as u64),
            compression: Compression::None,
            element_size: 1,
            encoding: Encoding::Other(999),
            tag: u32::MAX,
            mode: WriteMode::Stream(len as u64),
        });
    }
    let metadata = vec![("k".to_string(), b"v".to_vec()), ("empty".to_string(), Vec::new())];
    for mmap in [true, false] {
        let case =
            Case { sections: sections.clone(), metadata: metadata.clone(), app_step: 42, mmap, prior_commits: 1 };
        run_case(&case, Backend::Fs);
    }
}

// -------------------------------------------------------------------------------------------------------
// Argument and state errors.

fn mem_store(name: &str) -> (MemStorage, Store) {
    let mem = MemStorage::new();
    let store = Store::with_storage(config(name, Path::new("/ckpt")), Arc::new(mem.clone()));
    (mem, store)
}

fn open_mem(mem: &MemStorage, path: &Path) -> Checkpoint {
    Checkpoint::open_with(mem, path, LoadOptions::new().mmap(true)).expect("open")
}

#[test]
fn duplicate_section_name_is_invalid_argument() {
    let (mem, store) = mem_store("dup");
    let mut w = store.begin(1).expect("begin");
    w.add_bytes("state", b"first").expect("first section");
    let e = w.add_bytes("state", b"second").expect_err("a second `state` section must be rejected");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("state"), "the message should name the section: {e}");
    let e = w.add_section_parts("state", &[b"x"], SectionOptions::new()).expect_err("add_section_parts duplicate");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let opts = SectionOptions::new().compression(Compression::Zstd(3));
    let e = w.section_writer("state", opts).map(|_| ()).expect_err("section_writer duplicate");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = w.add_serde("state", &7u32).expect_err("add_serde duplicate");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    // Rejected arguments leave the checkpoint usable.
    w.add_bytes("other", b"ok").expect("another section after the rejected ones");
    let info = w.commit().expect("commit after rejected duplicates");
    let cp = open_mem(&mem, &info.path);
    cp.verify().expect("verify");
    assert_eq!(cp.sections().len(), 2, "{:?}", cp.sections());
    assert_eq!(&cp.read("state").expect("read")[..], b"first");
}

#[test]
fn section_name_length_limits() {
    let (mem, store) = mem_store("names");
    let mut w = store.begin(1).expect("begin");
    let ok_ascii = "n".repeat(64);
    let ok_utf8 = format!("{}é", "n".repeat(62)); // 64 bytes
    let too_long_ascii = "n".repeat(65);
    let too_long_utf8 = format!("{}é", "n".repeat(63)); // 65 bytes
    w.add_bytes(&ok_ascii, b"a").expect("a 64-byte name is valid");
    w.add_bytes(&ok_utf8, b"b").expect("a 64-byte UTF-8 name is valid");
    for bad in [too_long_ascii.as_str(), too_long_utf8.as_str(), "", "nul\0inside"] {
        let e = w.add_bytes(bad, b"x").expect_err(&format!("name {bad:?} ({} bytes) must be rejected", bad.len()));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "name {bad:?}: {e}");
        let e = w
            .section_writer(bad, SectionOptions::new())
            .map(|_| ())
            .expect_err(&format!("section_writer({bad:?}) must be rejected"));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "section_writer name {bad:?}: {e}");
    }
    let info = w.commit().expect("commit");
    let cp = open_mem(&mem, &info.path);
    let names: Vec<&str> = cp.sections().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, [ok_ascii.as_str(), ok_utf8.as_str()]);
    assert_eq!(&cp.read(&ok_utf8).expect("read")[..], b"b");
}

#[test]
fn metadata_after_first_section_is_invalid_state() {
    let (mem, store) = mem_store("meta");
    let mut w = store.begin(1).expect("begin");
    w.set_metadata("before", b"1").expect("metadata before any section");
    w.set_metadata("before", b"2").expect("setting a key again replaces it");
    w.add_bytes("s", b"data").expect("section");
    let e = w.set_metadata("after", b"x").expect_err("metadata after the first section must be refused");
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    let e = w.set_metadata("before", b"3").expect_err("changing metadata after the first section must be refused");
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    let info = w.commit().expect("commit");
    let cp = open_mem(&mem, &info.path);
    assert_eq!(cp.header().metadata[1..], [("before".to_string(), b"2".to_vec())]);
    assert_eq!(cp.header().metadata[0].0, ckpt_core::identity::IDENTITY_KEY, "the library records the run first");
    assert_eq!(cp.metadata("after"), None);
    let mut w = store.begin(3).expect("begin");
    let e = w.set_metadata(ckpt_core::identity::IDENTITY_KEY, b"{}").expect_err("the identity key is reserved");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    drop(w);

    // The same through a streamed first section.
    let mut w = store.begin(2).expect("begin");
    let mut sw = w.section_writer("s", SectionOptions::new()).expect("section_writer");
    sw.write_all(b"abc").expect("write");
    sw.finish().expect("finish");
    let e = w.set_metadata("late", b"x").expect_err("metadata after a streamed section must be refused");
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
}

#[test]
fn read_into_with_wrong_size_is_invalid_argument() {
    let (mem, store) = mem_store("into");
    let mut w = store.begin(1).expect("begin");
    let data = Rng::new(5).bytes(10_000);
    w.add_section_with("raw", &data, SectionOptions::new()).expect("raw");
    w.add_section_with("z", &data, SectionOptions::new().compression(Compression::Zstd(3)).shuffle(4)).expect("z");
    w.add_section_with("empty", &[], SectionOptions::new()).expect("empty");
    let info = w.commit().expect("commit");
    for mmap in [true, false] {
        let cp = Checkpoint::open_with(&mem, &info.path, LoadOptions::new().mmap(mmap)).expect("open");
        for (name, len) in [("raw", data.len()), ("z", data.len()), ("empty", 0)] {
            for wrong in [len + 1, len.saturating_sub(1), len + 4096, 0] {
                if wrong == len {
                    continue;
                }
                let mut buf = vec![0u8; wrong];
                let e = cp
                    .read_into(name, &mut buf)
                    .expect_err(&format!("read_into({name}) with {wrong} bytes for {len} must fail"));
                assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{name}, {wrong} bytes: {e}");
                assert_eq!(e.section(), Some(name), "the error names the section: {e}");
                assert!(buf.iter().all(|&b| b == 0), "a rejected read_into must not write into the buffer");
            }
            let mut buf = vec![0u8; len];
            cp.read_into(name, &mut buf).expect("read_into with the right size");
        }
    }
}

#[test]
fn missing_section_is_section_not_found() {
    let (mem, store) = mem_store("missing");
    let mut w = store.begin(1).expect("begin");
    w.add_bytes("present", b"here").expect("section");
    let info = w.commit().expect("commit");
    let cp = open_mem(&mem, &info.path);
    let check = |what: &str, e: ckpt_core::Error| {
        assert_eq!(e.kind(), ErrorKind::SectionNotFound, "{what}: {e}");
        assert_eq!(e.section(), Some("absent"), "{what}: the error names the section: {e}");
    };
    check("read", cp.read("absent").expect_err("read of a missing section"));
    check("read_into", cp.read_into("absent", &mut [0u8; 4]).expect_err("read_into of a missing section"));
    check("section", cp.section("absent").map(|_| ()).expect_err("section() of a missing section"));
    check("verify_section", cp.verify_section("absent").expect_err("verify_section of a missing section"));
    check("read_serde", cp.read_serde::<u32>("absent").expect_err("read_serde of a missing section"));
    check("raw_view", cp.raw_view("absent").map(|_| ()).expect_err("raw_view of a missing section"));
    assert!(!cp.has_section("absent"));
    // Names are exact: no prefix or case folding.
    for near in ["presen", "Present", "present\u{0}", "present "] {
        let e = cp.read(near).map(|_| ()).expect_err(&format!("{near:?} must not match `present`"));
        assert_eq!(e.kind(), ErrorKind::SectionNotFound, "{near:?}: {e}");
    }
}

#[test]
fn serde_sections_round_trip_and_check_their_encoding() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct State {
        step: u64,
        energy: f64,
        label: String,
        history: Vec<i32>,
    }
    let (mem, store) = mem_store("serde");
    let state = State { step: 99, energy: -1.5e-3, label: "héat".into(), history: vec![-1, 0, 1 << 30] };
    let mut w = store.begin(1).expect("begin");
    w.add_serde("state", &state).expect("add_serde");
    w.add_bytes("bytes", b"not postcard").expect("bytes");
    let info = w.commit().expect("commit");
    let cp = open_mem(&mem, &info.path);
    assert_eq!(cp.section("state").expect("entry").encoding, Encoding::TypedPostcard);
    assert_eq!(cp.read_serde::<State>("state").expect("read_serde"), state);
    let e = cp.read_serde::<State>("bytes").expect_err("read_serde of a bytes section");
    assert_eq!(e.kind(), ErrorKind::Encoding, "{e}");
}
