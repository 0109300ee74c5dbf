//! Fuzzes the multi-rank manifest: the `ckpt.parts` section of a manifest file, which names each rank's
//! part of a step by length and CRCs (`parse_manifest`, used by restart discovery).
//!
//! Setup (once): in a `MemStorage` directory, 3 ranks each write a part of generations 1 and 2 and rank 0
//! commits both steps, so the directory holds `heat.ckpt.1`, `heat.ckpt.2` (= `heat.ckpt`) and the six
//! parts. Each input then replaces generation 2's manifest by a file rebuilt around fuzzed manifest bytes,
//! with a valid header, table and trailer (every CRC recomputed), so the bytes reach `parse_manifest` and
//! the part checks behind it instead of stopping at a checksum. Input layout:
//!
//! * byte 0, bit 0: the rest is XORed onto the genuine manifest (so near-valid records are common), else it
//!   is the manifest itself; bit 1: byte 1 replaces the header's `nranks`;
//! * byte 2: the rank that restarts (mod 3);
//! * the rest: the manifest bytes (or the XOR mask).
//!
//! What must hold, whatever the bytes:
//! * `parse_manifest` of the rebuilt file never panics; when it succeeds it lists `nranks` records in rank
//!   order;
//! * restart discovery never panics or errs and never returns a wrong part: it restores generation 2 only
//!   when the rank's record names exactly its genuine part (then the bytes are that part's), otherwise it
//!   falls back to generation 1 with that generation's part.
//!
//! ```text
//! cargo +nightly fuzz run manifest -- -max_total_time=60
//! ```
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ckpt_core::storage::{CrashMode, MemStorage};
use ckpt_core::{Checkpoint, Config, Store, parse_manifest};
use libfuzzer_sys::fuzz_target;

const DIR: &str = "/ckpt";
const NRANKS: u32 = 3;
const TRAILER_LEN: usize = 64;
const ENTRY_LEN: usize = 128;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

struct Setup {
    /// The directory after both commits.
    mem: MemStorage,
    /// Generation 2's manifest file as the library wrote it.
    manifest_file: Vec<u8>,
    /// Its `ckpt.parts` section.
    manifest: Vec<u8>,
    /// `field[g - 1][r]`: the bytes of rank r's part of generation g.
    field: Vec<Vec<Vec<u8>>>,
}

fn config(rank: u32) -> Config {
    let mut cfg = Config::new("heat", Path::new(DIR)).expect("config");
    cfg.nranks = NRANKS;
    cfg.rank = rank;
    cfg.keep = 2;
    cfg.mmap = false;
    cfg.commit_timeout = Duration::from_millis(10);
    cfg
}

fn store(rank: u32, mem: &MemStorage) -> Store {
    Store::with_storage(config(rank), Arc::new(mem.clone()))
}

fn setup() -> Setup {
    let mem = MemStorage::new();
    let mut field = Vec::new();
    for g in 1..=2u64 {
        let mut per_rank = Vec::new();
        for r in 0..NRANKS {
            let bytes: Vec<u8> =
                (0..300 + 100 * r as usize).map(|i| (i as u64 * 31 + g * 7 + u64::from(r)) as u8).collect();
            let mut w = store(r, &mem).begin_part(g, 10 * g as i64).expect("begin_part");
            w.add_bytes("field", &bytes).expect("add_bytes");
            w.commit().expect("commit part");
            per_rank.push(bytes);
        }
        store(0, &mem).commit_step(g, 10 * g as i64).expect("commit_step");
        field.push(per_rank);
    }
    let manifest_file = mem.read_file(&Path::new(DIR).join("heat.ckpt.2")).expect("generation 2's manifest");
    let cp = Checkpoint::from_bytes(manifest_file.clone()).expect("the manifest opens");
    let manifest = cp.read("ckpt.parts").expect("ckpt.parts").to_vec();
    assert_eq!(manifest.len(), NRANKS as usize * 24);
    let s = Setup { mem, manifest_file, manifest, field };
    // The rebuilder must reproduce the library's own file byte for byte, or the fuzzing tests something else.
    assert!(rebuild(&s, &s.manifest, None) == s.manifest_file, "rebuild() does not reproduce the manifest file");
    s
}

/// The manifest file of generation 2 with `manifest` as its `ckpt.parts` section (and `nranks` in the
/// header when given): the library's header, the section at the first 4 KiB boundary, the library's table
/// entry with this section's lengths, offset and CRCs, and a trailer; every CRC valid.
fn rebuild(s: &Setup, manifest: &[u8], nranks: Option<u32>) -> Vec<u8> {
    let t = &s.manifest_file;
    let header_len = u32_at(t, 12) as usize;
    let trailer = t.len() - TRAILER_LEN;
    let table = u64_at(t, trailer) as usize;
    assert_eq!(u32_at(t, trailer + 16), 1, "one section");
    assert_eq!(t[table + 66], 0, "the manifest section is stored raw");

    let mut out = t[..header_len].to_vec();
    if let Some(n) = nranks {
        out[48..52].copy_from_slice(&n.to_le_bytes());
    }
    let header_crc = crc32fast::hash(&out[..header_len - 4]).to_le_bytes();
    out[header_len - 4..].copy_from_slice(&header_crc);
    let data = header_len.next_multiple_of(4096);
    out.resize(data, 0);
    out.extend_from_slice(manifest);
    out.resize(out.len().next_multiple_of(8), 0);
    let table_offset = out.len();
    let mut entry = t[table..table + ENTRY_LEN].to_vec();
    let crc = crc32fast::hash(manifest).to_le_bytes();
    entry[76..80].copy_from_slice(&crc);
    entry[80..88].copy_from_slice(&(manifest.len() as u64).to_le_bytes());
    entry[88..96].copy_from_slice(&(manifest.len() as u64).to_le_bytes());
    entry[96..104].copy_from_slice(&(data as u64).to_le_bytes());
    entry[104..108].copy_from_slice(&crc);
    out.extend_from_slice(&entry);
    let mut tr = t[trailer..].to_vec();
    tr[0..8].copy_from_slice(&(table_offset as u64).to_le_bytes());
    tr[8..16].copy_from_slice(&((table_offset + ENTRY_LEN + TRAILER_LEN) as u64).to_le_bytes());
    tr[20..24].copy_from_slice(&crc32fast::hash(&entry).to_le_bytes());
    tr[24..28].copy_from_slice(&header_crc);
    let trailer_crc = crc32fast::hash(&tr[..48]).to_le_bytes();
    tr[48..52].copy_from_slice(&trailer_crc);
    out.extend_from_slice(&tr);
    out
}

static SETUP: OnceLock<Setup> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let s = SETUP.get_or_init(setup);
    let (flags, n, rank, rest) = (data[0], data[1], u32::from(data[2]) % NRANKS, &data[3..]);
    let manifest: Vec<u8> = if flags & 1 != 0 {
        let len = rest.len().max(s.manifest.len());
        (0..len).map(|i| s.manifest.get(i).copied().unwrap_or(0) ^ rest.get(i).copied().unwrap_or(0)).collect()
    } else {
        rest.to_vec()
    };
    let nranks = (flags & 2 != 0).then_some(u32::from(n));
    let file = rebuild(s, &manifest, nranks);

    // parse_manifest on the file itself
    if let Ok(cp) = Checkpoint::from_bytes(file.clone())
        && let Ok(entries) = parse_manifest(&cp)
    {
        assert_eq!(entries.len(), cp.header().nranks as usize, "one record per rank");
        assert!(entries.iter().enumerate().all(|(i, e)| e.rank as usize == i), "records in rank order");
    }

    // restart discovery over the directory with this file as generation 2's manifest
    let mem = s.mem.crash_image(CrashMode::Everything);
    let dir = Path::new(DIR);
    mem.write_file(&dir.join("heat.ckpt.2"), &file).unwrap();
    mem.write_file(&dir.join("heat.ckpt"), &file).unwrap();
    let restored = match store(rank, &mem).restore() {
        Ok(Some(r)) => r,
        Ok(None) => panic!("rank {rank}: nothing restored although generation 1 is intact"),
        Err(e) => panic!("rank {rank}: restore failed although generation 1 is intact: {e}"),
    };
    let g = restored.generation;
    assert!(g == 1 || g == 2, "rank {rank}: restored generation {g}");
    let h = restored.checkpoint.header();
    assert_eq!((h.rank, h.generation, h.nranks), (rank, g, NRANKS), "rank {rank}: the wrong part");
    let field = restored.checkpoint.read("field").expect("the restored part reads");
    assert!(field[..] == s.field[g as usize - 1][rank as usize][..], "rank {rank}: wrong bytes for generation {g}");
    if g == 2 {
        // accepted: the header says 3 ranks and this rank's record is exactly the genuine one
        let genuine = 24 * rank as usize..24 * (rank as usize + 1);
        assert_eq!(nranks.unwrap_or(NRANKS), NRANKS, "a manifest for another number of ranks was accepted");
        assert_eq!(manifest.len(), s.manifest.len(), "a manifest of the wrong length was accepted");
        assert!(
            manifest[genuine.clone()][..4] == s.manifest[genuine.clone()][..4]
                && manifest[genuine.clone()][8..] == s.manifest[genuine][8..],
            "rank {rank}: a wrong record accepted"
        );
    }
});
