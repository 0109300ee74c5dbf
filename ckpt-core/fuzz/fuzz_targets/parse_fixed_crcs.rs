//! Like `parse`, but first recomputes every structural CRC of the input (header, its copy in the trailer,
//! section table, trailer) wherever the layout allows, so mutations of sizes, offsets, counts and flags
//! reach the validation and decoding code behind the checksums instead of stopping at the first CRC.
//! Each section's stored CRC is fixed too, so the decoders (zstd frames, byte-plane records) see mutated
//! bytes; the CRC of the decoded bytes is left alone (the reader must catch that itself). The same rules hold: never panic,
//! hang, or allocate hugely.
//!
//! ```text
//! cargo +nightly fuzz run parse_fixed_crcs corpus/parse ../../tests/data -- -dict=parse.dict
//! ```
#![no_main]

use ckpt_core::Checkpoint;
use libfuzzer_sys::fuzz_target;

const TRAILER_LEN: usize = 64;
const ENTRY_LEN: u64 = 128;

fn fix_crcs(b: &mut [u8]) {
    let len = b.len();
    if len < 264 + TRAILER_LEN {
        return;
    }
    let t = len - TRAILER_LEN;
    let header_len = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    if (264..=t).contains(&header_len) {
        let crc = crc32fast::hash(&b[..header_len - 4]).to_le_bytes();
        b[header_len - 4..header_len].copy_from_slice(&crc);
        b[t + 24..t + 28].copy_from_slice(&crc);
    }
    let table_offset = u64::from_le_bytes(b[t..t + 8].try_into().unwrap());
    let count = u64::from(u32::from_le_bytes(b[t + 16..t + 20].try_into().unwrap()));
    if let Some(end) = table_offset.checked_add(count * ENTRY_LEN).filter(|&e| e <= t as u64) {
        // Every section's stored CRC too (where its bytes lie inside the file), so mutated plane records
        // and zstd frames reach the decoders; the decoded CRC is still left for the reader to check.
        for entry in (table_offset..end).step_by(ENTRY_LEN as usize) {
            let e = entry as usize;
            let stored_len = u64::from_le_bytes(b[e + 88..e + 96].try_into().unwrap());
            let offset = u64::from_le_bytes(b[e + 96..e + 104].try_into().unwrap());
            if let Some(stop) = offset.checked_add(stored_len).filter(|&s| s <= t as u64) {
                let crc = crc32fast::hash(&b[offset as usize..stop as usize]).to_le_bytes();
                b[e + 104..e + 108].copy_from_slice(&crc);
            }
        }
        let crc = crc32fast::hash(&b[table_offset as usize..end as usize]).to_le_bytes();
        b[t + 20..t + 24].copy_from_slice(&crc);
    }
    let crc = crc32fast::hash(&b[t..t + 48]).to_le_bytes();
    b[t + 48..t + 52].copy_from_slice(&crc);
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    fix_crcs(&mut bytes);
    let Ok(cp) = Checkpoint::from_bytes(bytes) else {
        return;
    };
    let _ = cp.verify();
    let names: Vec<String> = cp.sections().iter().map(|e| e.name.clone()).collect();
    for name in &names {
        let _ = cp.verify_section(name);
        if let Ok(bytes) = cp.read(name) {
            let entry = cp.section(name).expect("listed section exists");
            assert_eq!(bytes.len() as u64, entry.raw_len, "section {name:?} read back with the wrong length");
        }
    }
});
