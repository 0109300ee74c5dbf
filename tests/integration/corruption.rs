//! Every single-byte corruption of a sample file is detected on load, and discovery falls back to the
//! previous generation.
//!
//! The sample (about 8 KiB) is a small but complete checkpoint: a header with metadata and its zero padding
//! up to the 4 KiB data area, an empty raw section, a raw section, a zstd section, a zstd + byte-shuffle
//! section and an empty zstd section. For every byte offset and several XOR masks the damaged file must fail to open or fail
//! `verify()`, on the mapped path and on the plain-read path, and no section may ever read back wrong bytes.
//! Truncation at every length and appended bytes must be refused at open. Discovery over two generations
//! must skip a damaged newest generation and restore the previous one.
//!
//! The last tests are a stable-toolchain stand-in for the cargo-fuzz target in `ckpt-core/fuzz`: tens of
//! thousands of random and structure-aware mutations (including ones whose CRCs are recomputed so the
//! parser goes deeper) must never panic.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ckpt_core::storage::{FileStorage, MemStorage, Storage};
use ckpt_core::{Checkpoint, Codec, CommitInfo, Compression, ErrorKind, LoadOptions, SectionOptions, Store};
use ckpt_tests::{Rng, config, smooth_field};

use super::golden::crc32;

const TRAILER_LEN: usize = 64;
const ENTRY_LEN: usize = 128;

// -------------------------------------------------------------------------------------------------------
// The sample checkpoint.

/// The sample's sections: name, decoded bytes, options.
fn sample_sections(seed: u64) -> Vec<(&'static str, Vec<u8>, SectionOptions)> {
    let mut rng = Rng::new(seed);
    let text: Vec<u8> =
        (0..400).flat_map(|i| format!("cell {i} value {}\n", (i * 37 + seed) % 1000).into_bytes()).collect();
    let z = Compression::Zstd(3);
    vec![
        ("empty", Vec::new(), SectionOptions::new()),
        ("raw", rng.bytes(1000), SectionOptions::new().tag(1)),
        ("zstd", text, SectionOptions::new().compression(z).tag(2)),
        ("shuffled", smooth_field(256, seed as f64), SectionOptions::new().compression(z).shuffle(8)),
        ("zempty", Vec::new(), SectionOptions::new().compression(z)),
    ]
}

fn write_sample(store: &Store, seed: u64, app_step: u64) -> CommitInfo {
    let mut w = store.begin(app_step).expect("begin");
    w.set_metadata("sample", format!("seed {seed}")).expect("metadata");
    w.set_metadata("units", b"SI").expect("metadata");
    w.set_metadata("blob", [0u8, 1, 2, 3, 0xff]).expect("metadata");
    for (name, data, opts) in sample_sections(seed) {
        w.add_section_with(name, &data, opts).expect("section");
    }
    w.commit().expect("commit")
}

struct Sample {
    bytes: Vec<u8>,
    sections: Vec<(String, Vec<u8>)>,
}

fn sample() -> Sample {
    let mem = MemStorage::new();
    let store = Store::with_storage(config("sample", Path::new("/ckpt")), Arc::new(mem.clone()));
    let info = write_sample(&store, 1, 10);
    let bytes = mem.read_file(&info.path).expect("sample bytes");
    let sections = sample_sections(1).into_iter().map(|(n, d, _)| (n.to_string(), d)).collect();
    let cp = Checkpoint::from_bytes(bytes.clone()).expect("the sample opens");
    cp.verify().expect("the sample verifies");
    let codecs: Vec<Codec> = cp.sections().iter().map(|e| e.codec).collect();
    assert_eq!(codecs, [Codec::None, Codec::None, Codec::Zstd, Codec::Zstd, Codec::Zstd], "sample layout");
    assert!(cp.sections()[3].shuffle, "the sample has a shuffled section");
    assert!(cp.sections()[4].stored_len > 0, "the empty zstd section still holds a frame");
    Sample { bytes, sections }
}

/// Byte ranges of the sample's parts, for reporting where undetected corruption would sit.
fn region_of(bytes: &[u8], off: usize) -> String {
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4")) as usize;
    let t = &bytes[bytes.len() - TRAILER_LEN..];
    let table_offset = u64::from_le_bytes(t[0..8].try_into().expect("8")) as usize;
    if off < header_len {
        return format!("header (length {header_len})");
    }
    if off >= bytes.len() - TRAILER_LEN {
        return format!("trailer byte {}", off - (bytes.len() - TRAILER_LEN));
    }
    if off >= table_offset {
        let i = (off - table_offset) / ENTRY_LEN;
        return format!("table entry {i} byte {}", (off - table_offset) % ENTRY_LEN);
    }
    for e in bytes[table_offset..bytes.len() - TRAILER_LEN].chunks_exact(ENTRY_LEN) {
        let start = u64::from_le_bytes(e[96..104].try_into().expect("8")) as usize;
        let len = u64::from_le_bytes(e[88..96].try_into().expect("8")) as usize;
        if (start..start + len).contains(&off) {
            let name = String::from_utf8_lossy(&e[..64]).trim_end_matches('\0').to_string();
            return format!("section {name:?} byte {}", off - start);
        }
    }
    "padding".to_string()
}

// -------------------------------------------------------------------------------------------------------
// Detection of damaged files.

/// How a damaged file was caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caught {
    Open(ErrorKind),
    Verify(ErrorKind),
}

impl Caught {
    fn kind(self) -> ErrorKind {
        match self {
            Caught::Open(k) | Caught::Verify(k) => k,
        }
    }
}

/// The load paths: `Checkpoint::from_bytes` (mapped bytes) and `open_with` + plain reads.
#[derive(Clone, Copy, Debug)]
enum LoadPath {
    FromBytes,
    PlainReads,
}

fn open(bytes: Vec<u8>, path: LoadPath) -> ckpt_core::Result<Checkpoint> {
    match path {
        LoadPath::FromBytes => Checkpoint::from_bytes(bytes),
        LoadPath::PlainReads => {
            let mem = MemStorage::new();
            let p = Path::new("/d.ckpt");
            mem.write_file(p, &bytes).expect("plant");
            Checkpoint::open_with(&mem, p, LoadOptions::new().mmap(false))
        }
    }
}

/// Opens, reads every section (a read must fail or return the original bytes: damage never yields wrong
/// data; `read()` or `read_into()` as `use_read_into` says), then verifies. `None`: the damage went unnoticed.
fn detect(
    bytes: Vec<u8>,
    path: LoadPath,
    originals: &[(String, Vec<u8>)],
    use_read_into: bool,
    what: &str,
) -> Option<Caught> {
    let cp = match open(bytes, path) {
        Ok(cp) => cp,
        Err(e) => return Some(Caught::Open(e.kind())),
    };
    for (name, original) in originals {
        if use_read_into {
            let mut buf = vec![0u8; original.len()];
            if cp.read_into(name, &mut buf).is_ok() {
                assert!(buf == *original, "{what}: read_into({name:?}) produced wrong bytes instead of an error");
            }
        } else if let Ok(got) = cp.read(name) {
            assert!(got[..] == original[..], "{what}: read({name:?}) returned wrong bytes instead of an error");
        }
    }
    cp.verify().err().map(|e| Caught::Verify(e.kind()))
}

/// Whether `off` lies in the header, the section table or the trailer (the structural bytes).
fn is_structural(bytes: &[u8], off: usize) -> bool {
    let header_len = le_u32(bytes, 12) as usize;
    off < header_len || off >= le_u64(bytes, bytes.len() - TRAILER_LEN) as usize
}

/// Damage statistics of a sweep.
#[derive(Default)]
struct Sweep {
    checked: usize,
    missed: Vec<String>,
    hist: BTreeMap<String, usize>,
}

/// XORs every byte with each of `masks` (and, in the structural bytes, with each of `structural_masks` too)
/// and runs [`detect`] on the result.
fn sweep(s: &Sample, masks: &[u8], structural_masks: &[u8], path: LoadPath) -> Sweep {
    let mut out = Sweep::default();
    for off in 0..s.bytes.len() {
        let extra = if is_structural(&s.bytes, off) { structural_masks } else { &[] };
        for &mask in masks.iter().chain(extra) {
            let mut b = s.bytes.clone();
            b[off] ^= mask;
            let what = format!("{path:?}: byte {off} ^ {mask:#04x} ({})", region_of(&s.bytes, off));
            out.checked += 1;
            match detect(b, path, &s.sections, (off + usize::from(mask)) % 2 == 1, &what) {
                None => out.missed.push(what),
                Some(c) => {
                    let kind = c.kind();
                    assert!(
                        matches!(kind, ErrorKind::Corrupt | ErrorKind::UnsupportedVersion | ErrorKind::TooLarge),
                        "{what}: damage reported as {kind:?}, expected corrupt (or unsupported version / too large)"
                    );
                    let stage = if matches!(c, Caught::Open(_)) { "open" } else { "verify" };
                    *out.hist.entry(format!("{stage}/{kind}")).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

fn report_sweep(label: &str, s: &Sample, r: &Sweep) {
    let structural = (0..s.bytes.len()).filter(|&o| is_structural(&s.bytes, o)).count();
    println!(
        "{label}: {} bytes ({structural} structural), {} corruptions checked, {} undetected ({:.4}% detected); {:?}",
        s.bytes.len(),
        r.checked,
        r.missed.len(),
        100.0 * (r.checked - r.missed.len()) as f64 / r.checked as f64,
        r.hist
    );
    assert!(
        r.missed.is_empty(),
        "{label}: {} of {} corruptions went undetected, e.g.:\n{}",
        r.missed.len(),
        r.checked,
        r.missed[..r.missed.len().min(20)].join("\n")
    );
}

/// The mapped path (`from_bytes`): every byte with masks 0x01, 0x80, 0xFF; every single-bit flip of the
/// header, table and trailer.
#[test]
fn every_single_byte_corruption_is_detected_mapped() {
    let s = sample();
    let r = sweep(&s, &[0x01, 0x80, 0xFF], &[0x02, 0x04, 0x08, 0x10, 0x20, 0x40], LoadPath::FromBytes);
    report_sweep("mapped path", &s, &r);
}

/// The plain-read path (`open_with`, `mmap: false`): every byte with masks 0x01, 0x80, 0xFF.
#[test]
fn every_single_byte_corruption_is_detected_plain_reads() {
    let s = sample();
    let r = sweep(&s, &[0x01, 0x80, 0xFF], &[], LoadPath::PlainReads);
    report_sweep("plain-read path", &s, &r);
}

/// The same sweep through the real file system and a real memory map, on a sample of offsets.
#[test]
fn corruption_is_detected_through_a_real_memory_map() {
    let s = sample();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for off in (0..s.bytes.len()).step_by(29).chain([s.bytes.len() - 1]) {
        let mut b = s.bytes.clone();
        b[off] ^= 0x40;
        let p = tmp.path().join(format!("c{off}.ckpt"));
        std::fs::write(&p, &b).expect("write");
        let what = format!("file byte {off} ({})", region_of(&s.bytes, off));
        let caught = match Checkpoint::open_with(&FileStorage, &p, LoadOptions::new().mmap(true)) {
            Err(_) => true,
            Ok(cp) => {
                assert!(cp.is_mapped(), "{what}: expected a memory map");
                for (name, original) in &s.sections {
                    if let Ok(got) = cp.read(name) {
                        assert!(got[..] == original[..], "{what}: read({name:?}) returned wrong bytes");
                    }
                }
                cp.verify().is_err()
            }
        };
        assert!(caught, "{what}: corruption not detected through the memory map");
        std::fs::remove_file(&p).expect("remove");
        checked += 1;
    }
    println!("real mmap: {checked} corruptions detected");
}

// -------------------------------------------------------------------------------------------------------
// Truncation, appended bytes and error messages.

#[test]
fn truncation_at_every_length_is_detected() {
    let s = sample();
    let len = s.bytes.len();
    let mut not_about_length = Vec::new();
    for cut in 0..len {
        for path in [LoadPath::FromBytes, LoadPath::PlainReads] {
            let e = open(s.bytes[..cut].to_vec(), path)
                .map(|_| ())
                .expect_err(&format!("{path:?}: the file cut to {cut} of {len} bytes opened"));
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{path:?}: cut to {cut}: {e}");
            let m = e.to_string().to_lowercase();
            if !(m.contains("truncat") || m.contains("incomplete") || m.contains("empty")) {
                not_about_length.push(format!("{path:?} cut to {cut}: {e}"));
            }
        }
    }
    assert!(
        not_about_length.is_empty(),
        "{} truncations were refused with a message that does not say truncated/incomplete:\n{}",
        not_about_length.len(),
        not_about_length[..not_about_length.len().min(10)].join("\n")
    );
    // Through the real file system too, at the interesting lengths.
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("cut.ckpt");
    for cut in [0, 1, 15, 16, 263, 264, 4095, 4096, len - 65, len - 64, len - 63, len - 1] {
        std::fs::write(&p, &s.bytes[..cut]).expect("write");
        for mmap in [true, false] {
            let e = Checkpoint::open_with(&FileStorage, &p, LoadOptions::new().mmap(mmap))
                .map(|_| ())
                .expect_err(&format!("real file cut to {cut} (mmap {mmap}) opened"));
            assert_eq!(e.kind(), ErrorKind::Corrupt, "cut to {cut}: {e}");
            assert_eq!(e.path(), Some(p.as_path()), "the error names the file: {e}");
        }
    }
}

#[test]
fn appended_bytes_are_detected() {
    let s = sample();
    let trailer = s.bytes[s.bytes.len() - TRAILER_LEN..].to_vec();
    let mut rng = Rng::new(77);
    let tails: Vec<(&str, Vec<u8>)> = vec![
        ("1 zero byte", vec![0]),
        ("7 zero bytes", vec![0; 7]),
        ("8 zero bytes", vec![0; 8]),
        ("a page of zeros", vec![0; 4096]),
        ("random bytes", rng.bytes(1000)),
        ("a copy of the trailer", trailer.clone()),
        ("a byte and the trailer", [&[0u8][..], &trailer].concat()),
        ("the whole file again", s.bytes.clone()),
    ];
    for (what, tail) in tails {
        let b = [&s.bytes[..], &tail].concat();
        for path in [LoadPath::FromBytes, LoadPath::PlainReads] {
            let e = open(b.clone(), path).map(|_| ()).expect_err(&format!("{path:?}: file + {what} opened"));
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{path:?}: file + {what}: {e}");
        }
    }
    // An appended copy of the trailer leaves a well-formed trailer at the end: only file_len catches it.
    let e = Checkpoint::from_bytes([&s.bytes[..], &trailer].concat()).map(|_| ()).expect_err("trailer copy");
    assert!(e.to_string().contains("extended"), "the message should say the file was extended: {e}");
}

/// Offset of the first stored byte of section `name` in the sample.
fn section_offset(bytes: &[u8], name: &str) -> usize {
    let cp = Checkpoint::from_bytes(bytes.to_vec()).expect("open");
    cp.section(name).expect("section").offset as usize
}

#[test]
fn crc_mismatch_errors_name_the_section_and_both_values() {
    let s = sample();
    for (name, offset_in) in [("raw", 100), ("zstd", 5), ("shuffled", 20)] {
        let mut b = s.bytes.clone();
        b[section_offset(&s.bytes, name) + offset_in] ^= 0x10;
        for path in [LoadPath::FromBytes, LoadPath::PlainReads] {
            let cp = open(b.clone(), path).expect("section damage is found when the section is read, not at open");
            let errors = [
                ("read", cp.read(name).map(|_| ()).expect_err("read of a damaged section")),
                ("read_into", {
                    let len = s.sections.iter().find(|(n, _)| n == name).expect("known").1.len();
                    cp.read_into(name, &mut vec![0; len]).expect_err("read_into of a damaged section")
                }),
                ("verify_section", cp.verify_section(name).expect_err("verify_section of a damaged section")),
                ("verify", open(b.clone(), path).expect("open").verify().expect_err("verify of a damaged file")),
            ];
            for (api, e) in errors {
                let m = e.to_string();
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{path:?} {api} {name}: {m}");
                assert_eq!(e.section(), Some(name), "{path:?} {api}: the error names the section: {m}");
                for word in [name, "crc32", "expected", "computed"] {
                    assert!(m.contains(word), "{path:?} {api} {name}: message lacks {word:?}: {m}");
                }
            }
            // The undamaged sections stay readable.
            for (other, original) in s.sections.iter().filter(|(n, _)| n != name) {
                assert_eq!(&cp.read(other).expect("undamaged section")[..], &original[..], "{other}");
            }
        }
    }
    // A damaged header says so, with both CRC values.
    let mut b = s.bytes.clone();
    b[70] ^= 1; // inside job_id
    let e = Checkpoint::from_bytes(b).map(|_| ()).expect_err("damaged header");
    let m = e.to_string();
    assert!(m.contains("header") && m.contains("expected") && m.contains("computed"), "{m}");
}

/// A compressed section whose decoded bytes do not match its recorded CRC (the stored bytes and every
/// structural CRC being right) is reported as a decoded-CRC mismatch.
#[test]
fn decoded_crc_mismatch_is_reported() {
    let s = sample();
    let mut b = s.bytes.clone();
    let e = entry_offset(&b, entry_index(&b, "zstd"));
    b[e + 76] ^= 0x01; // raw_crc32
    fix_crcs(&mut b);
    let cp = Checkpoint::from_bytes(b).expect("structurally valid after the CRC fix-up");
    for (api, err) in
        [("read", cp.read("zstd").map(|_| ()).expect_err("read")), ("verify", cp.verify().expect_err("verify"))]
    {
        let m = err.to_string();
        assert_eq!(err.section(), Some("zstd"), "{api}: {m}");
        assert!(m.contains("expected") && m.contains("computed"), "{api}: {m}");
    }
}

// -------------------------------------------------------------------------------------------------------
// Discovery falls back to the previous generation.

const BASE: &str = "fallback.ckpt";

/// Two committed generations of the sample (seeds 1 and 2) and their bytes.
fn two_generations() -> (Vec<u8>, Vec<u8>) {
    let mem = MemStorage::new();
    let store = Store::with_storage(config("fallback", Path::new("/ckpt")), Arc::new(mem.clone()));
    let one = write_sample(&store, 1, 100);
    let two = write_sample(&store, 2, 200);
    assert_eq!((one.generation, two.generation), (1, 2));
    let g1 = mem.read_file(Path::new("/ckpt/fallback.ckpt.1")).expect("generation 1");
    let g2 = mem.read_file(Path::new("/ckpt/fallback.ckpt.2")).expect("generation 2");
    assert_eq!(mem.read_file(Path::new("/ckpt/fallback.ckpt")).expect("current"), g2, "<base> is generation 2");
    (g1, g2)
}

/// A store over a fresh MemStorage holding the given files in `/ckpt`.
fn planted(files: &[(&str, &[u8])], mmap: bool) -> Store {
    let mem = MemStorage::new();
    mem.create_dir_all(Path::new("/ckpt")).expect("mkdir");
    for (name, bytes) in files {
        mem.write_file(&Path::new("/ckpt").join(name), bytes).expect("plant");
    }
    let mut cfg = config("fallback", Path::new("/ckpt"));
    cfg.mmap = mmap;
    Store::with_storage(cfg, Arc::new(mem))
}

/// Checks that `store` restores `generation` (the sample of `seed`) and rejects exactly `rejected`.
fn check_restore(store: &Store, generation: u64, seed: u64, rejected: &[&str], what: &str) -> Result<(), String> {
    let r = match store.restore() {
        Ok(Some(r)) => r,
        Ok(None) => return Err(format!("{what}: restore found nothing")),
        Err(e) => return Err(format!("{what}: restore failed: {e}")),
    };
    let rejected_now: Vec<String> =
        r.rejected.iter().map(|(p, e)| format!("{}: {}", p.display(), e.message())).collect();
    if (r.generation, r.app_step) != (generation, generation * 100) {
        return Err(format!(
            "{what}: restored generation {} (step {}), expected {generation}; rejected: {rejected_now:?}",
            r.generation, r.app_step
        ));
    }
    for (name, data, _) in sample_sections(seed) {
        match r.checkpoint.read(name) {
            Ok(got) if got[..] == data[..] => {}
            Ok(_) => return Err(format!("{what}: restored section {name} differs")),
            Err(e) => return Err(format!("{what}: restored section {name}: {e}")),
        }
    }
    let mut got: Vec<PathBuf> = r.rejected.iter().map(|(p, _)| p.clone()).collect();
    got.sort();
    let mut want: Vec<PathBuf> = rejected.iter().map(|n| Path::new("/ckpt").join(n)).collect();
    want.sort();
    if got != want {
        return Err(format!("{what}: rejected {rejected_now:?}, expected exactly {want:?}"));
    }
    Ok(())
}

#[test]
fn discovery_falls_back_when_the_newest_generation_is_damaged() {
    let (g1, g2) = two_generations();
    let masks = [0x01, 0x80, 0xFF];
    let gen2 = format!("{BASE}.2");
    let gen1 = format!("{BASE}.1");
    let mut checked = 0;
    for (i, off) in (0..g2.len()).step_by(7).chain([g2.len() - 1]).enumerate() {
        let mut bad = g2.clone();
        bad[off] ^= masks[i % masks.len()];
        // In the real directory both names are one inode: damage shows under both.
        let store = planted(&[(BASE, &bad), (&gen2, &bad), (&gen1, &g1)], i % 2 == 0);
        let what = format!("generation 2 byte {off} ^ {:#04x} ({})", masks[i % 3], region_of(&g2, off));
        check_restore(&store, 1, 1, &[BASE, &gen2], &what).unwrap_or_else(|e| panic!("{e}"));
        checked += 1;
    }
    println!("discovery fell back to generation 1 for {checked} damaged copies of generation 2");
}

/// When `<base>` and `<base>.2` are separate copies (a directory copied without preserving hard links,
/// e.g. a staged restart directory) and only `<base>` is damaged, the intact `<base>.2` is restored.
#[test]
fn discovery_prefers_an_intact_copy_of_the_newest_generation() {
    let (g1, g2) = two_generations();
    let gen2 = format!("{BASE}.2");
    let gen1 = format!("{BASE}.1");
    let (mut failures, mut checked) = (Vec::new(), 0);
    for (i, off) in (0..g2.len()).step_by(61).enumerate() {
        let mut bad = g2.clone();
        bad[off] ^= 0x80;
        let store = planted(&[(BASE, &bad), (&gen2, &g2), (&gen1, &g1)], i % 2 == 0);
        let what = format!("only <base> damaged at byte {off} ({})", region_of(&g2, off));
        if let Err(e) = check_restore(&store, 2, 2, &[BASE], &what) {
            failures.push(e);
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} damaged <base> copies made discovery skip the intact <base>.2:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
}

#[test]
fn discovery_reports_when_every_generation_is_damaged() {
    let (g1, g2) = two_generations();
    let mut bad1 = g1.clone();
    let mut bad2 = g2.clone();
    let off = section_offset(&g1, "raw") + 5;
    bad1[off] ^= 1;
    bad2[off] ^= 1;
    let gen2 = format!("{BASE}.2");
    let gen1 = format!("{BASE}.1");
    let store = planted(&[(BASE, &bad2), (&gen2, &bad2), (&gen1, &bad1)], true);
    let e = store.restore().map(|_| ()).expect_err("no generation verifies");
    assert_eq!(e.kind(), ErrorKind::NoValidCheckpoint, "{e}");
    let m = e.to_string();
    for name in [BASE, &gen1, &gen2] {
        assert!(m.contains(name), "the error lists {name}: {m}");
    }
}

// -------------------------------------------------------------------------------------------------------
// Crafted files and the fuzz stand-in.

fn le_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4"))
}
fn le_u64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8"))
}

/// Offset of table entry `i` (structure taken from a well-formed trailer).
fn entry_offset(b: &[u8], i: usize) -> usize {
    le_u64(b, b.len() - TRAILER_LEN) as usize + i * ENTRY_LEN
}

/// Index of section `name` in the table.
fn entry_index(b: &[u8], name: &str) -> usize {
    let cp = Checkpoint::from_bytes(b.to_vec()).expect("open");
    cp.sections().iter().position(|e| e.name == name).expect("section exists")
}

/// Recomputes every structural CRC (header, its copy in the trailer, table, trailer) so that a deliberate
/// change reaches the deeper checks. Leaves the bytes alone where the structure no longer parses.
fn fix_crcs(b: &mut [u8]) {
    let len = b.len();
    if len < 264 + TRAILER_LEN {
        return;
    }
    let header_len = le_u32(b, 12) as usize;
    if (264..=len - TRAILER_LEN).contains(&header_len) {
        let crc = crc32(&b[..header_len - 4]);
        b[header_len - 4..header_len].copy_from_slice(&crc.to_le_bytes());
        b[len - 40..len - 36].copy_from_slice(&crc.to_le_bytes());
    }
    let t = len - TRAILER_LEN;
    let table_offset = le_u64(b, t);
    let count = u64::from(le_u32(b, t + 16));
    let table_end = table_offset.checked_add(count * ENTRY_LEN as u64);
    if let Some(end) = table_end.filter(|&e| e <= t as u64) {
        let crc = crc32(&b[table_offset as usize..end as usize]);
        b[t + 20..t + 24].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32(&b[t..t + 48]);
    b[t + 48..t + 52].copy_from_slice(&crc.to_le_bytes());
}

/// Values that tend to break size and offset arithmetic.
const INTERESTING: [u64; 16] = [
    0,
    1,
    7,
    8,
    63,
    64,
    4095,
    4096,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 50,
    (1 << 50) + 1,
    i64::MAX as u64,
    u64::MAX,
];

/// Field positions (offset, width) of the documented layout, for structure-aware mutations.
fn fields(b: &[u8]) -> Vec<(usize, usize)> {
    let mut f: Vec<(usize, usize)> = vec![
        (8, 2),
        (10, 2),
        (12, 4),
        (16, 8),
        (24, 8),
        (32, 8),
        (40, 4),
        (44, 4),
        (48, 4),
        (52, 4),
        (256, 4),
        (260, 2),
        (262, 4),
    ];
    let t = b.len() - TRAILER_LEN;
    f.extend([(t, 8), (t + 8, 8), (t + 16, 4)]);
    let count = le_u32(b, t + 16) as usize;
    for i in 0..count {
        let e = entry_offset(b, i);
        f.extend([(e, 1), (e + 64, 2), (e + 66, 1), (e + 67, 1), (e + 68, 2), (e + 76, 4)]);
        f.extend([(e + 80, 8), (e + 88, 8), (e + 96, 8), (e + 104, 4)]);
    }
    f
}

/// Sections whose claimed raw length is above this are not `read()` by the fuzz loop: allocating a
/// claimed length is covered by [`a_claimed_raw_len_is_not_allocated_before_decoding`].
const FUZZ_READ_LIMIT: u64 = 64 << 20;

/// Exercises every reading API on `bytes`; returns (opened, verified).
fn exercise(bytes: Vec<u8>, plain: bool, skipped_reads: &mut usize) -> (bool, bool) {
    let cp = if plain { open(bytes, LoadPath::PlainReads) } else { Checkpoint::from_bytes(bytes) };
    let Ok(cp) = cp else {
        return (false, false);
    };
    let _ = cp.header().encode();
    let entries: Vec<_> = cp.sections().to_vec();
    for e in &entries {
        let _ = cp.verify_section(&e.name);
        if e.raw_len > FUZZ_READ_LIMIT {
            *skipped_reads += 1;
            continue;
        }
        let _ = cp.read(&e.name);
        let mut buf = vec![0u8; e.raw_len as usize];
        let _ = cp.read_into(&e.name, &mut buf);
        let _ = cp.raw_view(&e.name);
        let _ = cp.read_serde::<(u32, String)>(&e.name);
    }
    let ok = cp.verify().is_ok();
    (true, ok)
}

#[test]
fn fuzz_stand_in_never_panics() {
    let s = sample();
    let n: usize = std::env::var("CKPT_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut rng = Rng::new(0xF022);
    let (mut opened, mut valid, mut skipped, mut undetected) = (0, 0, 0, Vec::new());
    let mut panics = Vec::new();
    let mut by_kind = BTreeMap::new();
    for iter in 0..n {
        let mut b = s.bytes.clone();
        let kind = rng.below(8);
        let mut crc_fixed = false;
        match kind {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] ^= 1 << rng.below(8);
                }
            }
            1 => b.truncate(rng.below(b.len() as u64) as usize),
            2 => {
                // Overwrite a random range with another range of the sample.
                let len = 1 + rng.below(512) as usize;
                let from = rng.below((s.bytes.len() - len) as u64) as usize;
                let to = rng.below((b.len() - len) as u64) as usize;
                b[to..to + len].copy_from_slice(&s.bytes[from..from + len]);
            }
            3 => {
                // Insert or remove a range (shifts everything after it).
                let at = rng.below(b.len() as u64) as usize;
                if rng.below(2) == 0 {
                    let len = 1 + rng.below(256) as usize;
                    let from = rng.below((s.bytes.len() - len) as u64) as usize;
                    b.splice(at..at, s.bytes[from..from + len].iter().copied());
                } else {
                    let end = (at + 1 + rng.below(256) as usize).min(b.len());
                    b.drain(at..end);
                }
            }
            4 => {
                // A random or interesting u64 at a random offset.
                let v = if rng.below(2) == 0 { rng.next_u64() } else { INTERESTING[rng.below(16) as usize] };
                let at = rng.below((b.len() - 8) as u64) as usize;
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            5 => {
                // Structure-aware: an interesting value in a documented field.
                let f = fields(&b);
                let (at, width) = f[rng.below(f.len() as u64) as usize];
                let v = if rng.below(3) == 0 { rng.next_u64() } else { INTERESTING[rng.below(16) as usize] };
                b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            _ => {
                // Structure-aware, then every CRC recomputed so the damage reaches the deeper checks.
                let f = fields(&b);
                for _ in 0..1 + rng.below(2) {
                    let (at, width) = f[rng.below(f.len() as u64) as usize];
                    let v = match rng.below(4) {
                        0 => rng.next_u64(),
                        1 => INTERESTING[rng.below(16) as usize],
                        2 => le_u64(&[&b[at..(at + 8).min(b.len())], &[0u8; 8][..]].concat(), 0)
                            .wrapping_add(rng.below(17).wrapping_sub(8)),
                        _ => rng.below(s.bytes.len() as u64 + 64),
                    };
                    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
                fix_crcs(&mut b);
                crc_fixed = true;
            }
        }
        let plain = iter % 4 == 3;
        let mut sk = 0;
        let result = catch_unwind(AssertUnwindSafe(|| exercise(b.clone(), plain, &mut sk)));
        skipped += sk;
        match result {
            Ok((o, v)) => {
                opened += usize::from(o);
                valid += usize::from(v);
                let counts = by_kind.entry(kind).or_insert((0usize, 0usize, 0usize));
                counts.0 += 1;
                counts.1 += usize::from(o);
                counts.2 += usize::from(v);
                if v && !crc_fixed && b != s.bytes {
                    undetected.push(format!("iteration {iter} (mutation kind {kind}) changed the file undetected"));
                }
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let path = std::env::temp_dir().join(format!("ckpt-fuzz-panic-{iter}.ckpt"));
                let _ = std::fs::write(&path, &b);
                panics.push(format!("iteration {iter} (kind {kind}, plain {plain}): {msg}; input {}", path.display()));
            }
        }
    }
    println!(
        "fuzz stand-in: {n} executions, {opened} opened, {valid} verified, {skipped} reads skipped (claimed > 64 MiB); \
         per kind (runs, opened, verified): {by_kind:?}"
    );
    assert!(panics.is_empty(), "{} panics:\n{}", panics.len(), panics[..panics.len().min(10)].join("\n"));
    assert!(undetected.is_empty(), "{}", undetected.join("\n"));
}

// -------------------------------------------------------------------------------------------------------
// Allocation driven by untrusted lengths.

/// Records the largest single allocation made by the current thread while tracking is on. Other threads
/// (other tests) are unaffected apart from one thread-local check per allocation.
struct PeakAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping neither allocates nor
// unwinds.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

/// The largest single allocation `f` makes on this thread.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, PEAK.with(Cell::get))
}

/// A file whose CRCs are all right but whose table claims a compressed section decodes to 256 MiB, when
/// its 9 stored bytes (an empty zstd frame) cannot decode to more than 9 * 32768 bytes whatever they hold:
/// refused at open, before anything is decoded or allocated, with the section and both numbers named.
#[test]
fn a_claimed_raw_len_beyond_what_zstd_can_produce_is_refused_at_open() {
    let s = sample();
    let mut b = s.bytes.clone();
    let e = entry_offset(&b, entry_index(&b, "zempty")); // an empty zstd frame
    assert_eq!(le_u64(&b, e + 88), 9, "the sample's empty zstd frame is 9 bytes");
    let claimed: u64 = 256 << 20;
    b[e + 80..e + 88].copy_from_slice(&claimed.to_le_bytes());
    fix_crcs(&mut b);
    for path in [LoadPath::FromBytes, LoadPath::PlainReads] {
        let (r, peak) = peak_allocation(|| open(b.clone(), path).map(|_| ()));
        let err = r.expect_err("9 stored bytes cannot decode to 256 MiB");
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert_eq!(err.section(), Some("zempty"), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&claimed.to_string()) && msg.contains("from 9 stored bytes"), "{msg}");
        assert!(peak < (1 << 20), "{path:?}: open allocated {peak} bytes at once");
    }
    // The largest claim zstd could honour is accepted by the structure checks (and fails on reading).
    let mut b = s.bytes.clone();
    let bound = 9 * ckpt_core::format::ZSTD_MAX_RATIO;
    b[e + 80..e + 88].copy_from_slice(&bound.to_le_bytes());
    fix_crcs(&mut b);
    let cp = Checkpoint::from_bytes(b).expect("a claim within zstd's ratio is structurally valid");
    assert_eq!(cp.read("zempty").map(|_| ()).expect_err("the frame is empty").kind(), ErrorKind::Corrupt);
}

/// A compressed section whose claimed raw length is as large as its stored bytes allow (tens of MiB)
/// while they decode to much less: `read()` must report corruption without first allocating the claimed
/// length, and `verify()` streams without ever needing it.
#[test]
fn a_claimed_raw_len_is_not_allocated_before_decoding() {
    let s = sample();
    let mut b = s.bytes.clone();
    let e = entry_offset(&b, entry_index(&b, "zstd"));
    let stored = le_u64(&b, e + 88);
    let claimed = stored * ckpt_core::format::ZSTD_MAX_RATIO;
    assert!(claimed > 16 << 20, "the sample's zstd section ({stored} stored bytes) allows a large claim");
    b[e + 80..e + 88].copy_from_slice(&claimed.to_le_bytes());
    fix_crcs(&mut b);
    let cp = Checkpoint::from_bytes(b).expect("structurally valid");
    assert_eq!(cp.section("zstd").expect("entry").raw_len, claimed);
    let (r, peak) = peak_allocation(|| cp.read("zstd").map(|d| d.len()));
    let e = r.expect_err("the frame decodes to far less than claimed");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(
        peak <= 16 << 20,
        "read() of a section whose {stored} stored bytes claim {claimed} decoded bytes allocated {peak} bytes at \
         once before finding the corruption ({e})"
    );
    let (r, peak) = peak_allocation(|| cp.verify());
    assert!(r.is_err(), "verify must fail");
    assert!(peak <= 16 << 20, "verify() allocated {peak} bytes at once");
}

// -------------------------------------------------------------------------------------------------------
// Hostile files built from scratch: every CRC right, every claim as large as the checks let through.
// (The fuzz corpus's regressions, built here instead of committed as binaries.)

/// A header for hand-built files.
fn hostile_header() -> (Vec<u8>, u32) {
    let h = ckpt_core::Header {
        kind: ckpt_core::FileKind::Data,
        generation: 1,
        app_step: 1,
        created_unix_ns: 1,
        step_id: None,
        rank: 0,
        nranks: 1,
        writer_version: (0, 1, 0),
        job_id: "hostile".into(),
        app_name: "hostile".into(),
        host: "h".into(),
        metadata: Vec::new(),
    };
    let bytes = h.encode().expect("header");
    let crc = le_u32(&bytes, bytes.len() - 4);
    (bytes, crc)
}

/// A zstd section entry named `name` (offset filled in by [`build_file`]).
fn zstd_entry(name: &str, raw_len: u64, stored: &[u8], element_size: u16, planes: bool) -> ckpt_core::SectionEntry {
    ckpt_core::SectionEntry {
        name: name.into(),
        encoding: ckpt_core::Encoding::Bytes,
        codec: Codec::Zstd,
        shuffle: planes,
        planes,
        element_size,
        tag: 0,
        raw_crc32: 0,
        raw_len,
        stored_len: stored.len() as u64,
        offset: 0,
        stored_crc32: crc32(stored),
    }
}

/// A complete file: header, each section's stored bytes (8-aligned, the first at 4096), table and trailer,
/// every CRC right.
fn build_file(sections: &[(ckpt_core::SectionEntry, Vec<u8>)]) -> Vec<u8> {
    let (mut f, header_crc32) = hostile_header();
    let mut table = Vec::new();
    for (i, (entry, stored)) in sections.iter().enumerate() {
        let align = if i == 0 { 4096 } else { 8 };
        f.resize(f.len().next_multiple_of(align), 0);
        let mut e = entry.clone();
        e.offset = f.len() as u64;
        f.extend_from_slice(stored);
        e.encode_into(&mut table).expect("entry");
    }
    f.resize(f.len().next_multiple_of(8), 0);
    let table_offset = f.len() as u64;
    f.extend_from_slice(&table);
    let trailer = ckpt_core::format::Trailer {
        table_offset,
        file_len: (f.len() + TRAILER_LEN) as u64,
        section_count: sections.len() as u32,
        table_crc32: crc32(&table),
        header_crc32,
    };
    f.extend_from_slice(&trailer.encode());
    f
}

/// One zstd frame of `blocks` RLE blocks of 128 KiB each: 4 bytes per block, the densest zstd there is
/// (6 + 4 * blocks bytes decode to blocks * 128 KiB), with no content size in its header.
fn rle_frame(blocks: usize) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x38]; // magic; no content size; window 128 KiB
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let word = last | (1 << 1) | ((128u32 << 10) << 3); // RLE block of 131072 bytes
        f.extend_from_slice(&word.to_le_bytes()[..3]);
        f.push(0xAB);
    }
    f
}

/// The regression of the decompression bomb: 16 KiB of stored bytes (4096 RLE blocks, 512 MiB when
/// decoded) claiming 1 TiB. Before the ratio check the file opened and `verify()` decoded all 512 MiB before
/// the length mismatch; now it is refused at open. A dense frame that claims what it really holds stays
/// valid (the bound is zstd's own, so sections of zeros stay readable) and verifies in one block's memory,
/// and a damaged stored byte fails on the stored CRC, before anything is decoded.
#[test]
fn a_decompression_bomb_is_refused_before_decoding() {
    let frame = rle_frame(4096);
    assert_eq!(frame.len(), 6 + 4 * 4096);
    let claimed: u64 = 1 << 40;
    let b = build_file(&[(zstd_entry("bomb", claimed, &frame, 1, false), frame.clone())]);
    for path in [LoadPath::FromBytes, LoadPath::PlainReads] {
        let err = open(b.clone(), path).map(|_| ()).expect_err("1 TiB cannot come out of 16 KiB of zstd");
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert_eq!(err.section(), Some("bomb"), "{err}");
        let want = format!("{claimed} decoded bytes from {} stored bytes", frame.len());
        assert!(err.to_string().contains(&want), "{err}");
    }

    let frame = rle_frame(64);
    let decoded = vec![0xABu8; 64 << 17];
    let mut entry = zstd_entry("dense", decoded.len() as u64, &frame, 1, false);
    entry.raw_crc32 = crc32(&decoded);
    let b = build_file(&[(entry, frame.clone())]);
    for path in [LoadPath::FromBytes, LoadPath::PlainReads] {
        let cp = open(b.clone(), path).expect("an honest dense frame opens");
        let (r, peak) = peak_allocation(|| cp.verify());
        r.expect("an honest dense frame verifies");
        assert!(peak <= 16 << 20, "verify() allocated {peak} bytes at once");
    }
    let mut damaged = b.clone();
    damaged[4096 + 9] ^= 0x01; // the value byte of the first RLE block
    let cp = Checkpoint::from_bytes(damaged).expect("structure intact");
    let err = cp.verify().expect_err("damaged");
    assert_eq!(err.section(), Some("dense"), "{err}");
    assert!(err.message().starts_with("crc32 mismatch"), "the stored CRC must fail first: {err}");
}

/// A frame whose header records its decoded size (100 bytes) under a table claiming 200: refused before
/// decoding, naming both numbers (not after decoding, as a length mismatch).
#[test]
fn a_frame_content_size_that_contradicts_the_table_is_refused_before_decoding() {
    // Single segment, one-byte content size 100, one last RLE block of 100 bytes.
    let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD, 0x20, 100];
    frame.extend_from_slice(&(1u32 | (1 << 1) | (100 << 3)).to_le_bytes()[..3]);
    frame.push(0x11);
    let mut entry = zstd_entry("declared", 200, &frame, 1, false);
    entry.raw_crc32 = crc32(&[0x11; 200]);
    let b = build_file(&[(entry.clone(), frame.clone())]);
    let cp = Checkpoint::from_bytes(b).expect("structurally valid");
    for err in [cp.verify().expect_err("contradiction"), cp.read("declared").map(|_| ()).expect_err("contradiction")] {
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert_eq!(err.section(), Some("declared"), "{err}");
        assert!(err.message().contains("declares 100 decoded bytes, the section table 200"), "{err}");
    }
    // The same frame under a table that agrees reads back.
    entry.raw_len = 100;
    entry.raw_crc32 = crc32(&[0x11; 100]);
    let cp = Checkpoint::from_bytes(build_file(&[(entry, frame)])).expect("valid");
    assert_eq!(&cp.read("declared").expect("agrees")[..], &[0x11; 100][..]);
}

/// Filter 2: a plane word claiming that 1 stored byte decodes to a 512 KiB plane is refused before the
/// plane is decoded, naming both numbers (the section as a whole is within zstd's ratio: its other plane
/// is stored as is).
#[test]
fn a_plane_claiming_more_than_zstd_can_produce_is_refused() {
    let n: usize = 512 << 10; // element size 2: one block of 1 MiB, two planes of 512 KiB
    let mut stored = Vec::new();
    stored.extend_from_slice(&(n as u32).to_le_bytes()); // plane 0: stored as is
    stored.extend_from_slice(&(ckpt_core::format::PLANE_COMPRESSED | 1).to_le_bytes()); // plane 1: 1 byte
    stored.extend(std::iter::repeat_n(7u8, n));
    stored.push(0);
    let b = build_file(&[(zstd_entry("planes", 2 * n as u64, &stored, 2, true), stored.clone())]);
    let cp = Checkpoint::from_bytes(b).expect("structurally valid");
    for err in [cp.verify().expect_err("hostile plane"), cp.read("planes").map(|_| ()).expect_err("hostile plane")] {
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert_eq!(err.section(), Some("planes"), "{err}");
        assert!(err.message().contains(&format!("{n} decoded bytes from 1 stored bytes")), "{err}");
    }
}

/// A claimed gap of 256 MiB of zero padding (a sparse file: the section table sits 256 MiB after the
/// header) is checked in bounded chunks by `verify()` with plain reads (`CKPT_MMAP=0`), not read into one
/// buffer; a non-zero byte at its far end is still found and named by its offset.
#[test]
fn a_huge_padding_gap_is_verified_in_bounded_memory() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let gap: u64 = 256 << 20;
    let (header, header_crc32) = hostile_header();
    let table_offset = (header.len() as u64 + gap).next_multiple_of(8);
    let trailer = ckpt_core::format::Trailer {
        table_offset,
        file_len: table_offset + TRAILER_LEN as u64,
        section_count: 0,
        table_crc32: crc32(&[]),
        header_crc32,
    };
    let path = dir.path().join("gap.ckpt");
    let f = std::fs::File::create(&path).expect("create");
    f.write_all_at(&header, 0).expect("header");
    f.write_all_at(&trailer.encode(), table_offset).expect("trailer"); // the gap is a hole: zeros
    let open_plain = || Checkpoint::open_with(&FileStorage, &path, LoadOptions::new().mmap(false)).expect("opens");
    let cp = open_plain();
    let (r, peak) = peak_allocation(|| cp.verify());
    r.expect("a gap of zeros verifies");
    assert!(peak <= 16 << 20, "verify() of a {gap}-byte gap allocated {peak} bytes at once");
    let bad = table_offset - 3;
    f.write_all_at(&[1], bad).expect("poke");
    let cp = open_plain();
    let (r, peak) = peak_allocation(|| cp.verify());
    let err = r.expect_err("a non-zero padding byte");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.message().contains(&format!("padding byte at offset {bad} is not zero")), "{err}");
    assert!(peak <= 16 << 20, "verify() of a {gap}-byte gap allocated {peak} bytes at once");
}

/// Plain reads of damaged files go through `Storage`; make sure a path-level error names the file.
#[test]
fn open_errors_name_the_file() {
    let s = sample();
    let mem = MemStorage::new();
    let p = Path::new("/x/bad.ckpt");
    let mut b = s.bytes.clone();
    b[0] ^= 0xFF;
    mem.create_dir_all(Path::new("/x")).expect("mkdir");
    mem.write_file(p, &b).expect("plant");
    for mmap in [true, false] {
        let e = Checkpoint::open_with(&mem, p, LoadOptions::new().mmap(mmap)).map(|_| ()).expect_err("bad magic");
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert_eq!(e.path(), Some(p), "{e}");
        assert!(e.to_string().contains("magic"), "{e}");
    }
    let e = Checkpoint::open_with(&mem, Path::new("/x/none.ckpt"), LoadOptions::new().mmap(true))
        .map(|_| ())
        .expect_err("missing file");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}
