//! The manifest section of a multi-rank step (FORMAT.md, "Manifest files"): one 24-byte record per rank,
//! in rank order.

use crate::error::{Error, Result};

/// Name of the manifest file's section listing the parts.
pub const MANIFEST_SECTION: &str = "ckpt.parts";
/// Bytes per rank in the manifest section.
pub const MANIFEST_ENTRY_LEN: usize = 24;

/// What a step's manifest records of one rank's part: enough to tell that the part file restart finds is
/// the one that was committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The rank that wrote the part.
    pub rank: u32,
    /// The part file's length in bytes.
    pub file_len: u64,
    /// The CRC-32 of the part's header.
    pub header_crc32: u32,
    /// The CRC-32 of the part's section table.
    pub table_crc32: u32,
}

impl ManifestEntry {
    /// The record's bytes: rank u32, reserved u32 (zero), `file_len` u64, `header_crc32` u32, `table_crc32` u32.
    pub fn to_bytes(&self) -> [u8; MANIFEST_ENTRY_LEN] {
        let mut out = [0u8; MANIFEST_ENTRY_LEN];
        out[0..4].copy_from_slice(&self.rank.to_le_bytes());
        out[8..16].copy_from_slice(&self.file_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.header_crc32.to_le_bytes());
        out[20..24].copy_from_slice(&self.table_crc32.to_le_bytes());
        out
    }

    /// Parses the manifest section of a step of `nranks` ranks: exactly one record per rank, in rank order,
    /// reserved bytes zero. Errors are `Corrupt`, without path or section (the caller adds them).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt) when the length is not `nranks` records, a record's rank is
    /// out of order, or its reserved bytes are not zero.
    ///
    /// # Panics
    ///
    /// Never: the records are taken in fixed-size chunks.
    pub fn parse_all(bytes: &[u8], nranks: usize) -> Result<Vec<ManifestEntry>> {
        if bytes.len() != nranks * MANIFEST_ENTRY_LEN {
            return Err(Error::corrupt(format!("manifest lists {} bytes for {nranks} ranks", bytes.len())));
        }
        let mut out = Vec::with_capacity(nranks);
        for (i, e) in bytes.chunks_exact(MANIFEST_ENTRY_LEN).enumerate() {
            let rank = u32::from_le_bytes(e[0..4].try_into().expect("4"));
            if rank as usize != i {
                return Err(Error::corrupt("manifest ranks are out of order"));
            }
            if e[4..8] != [0; 4] {
                return Err(Error::corrupt(format!("manifest record {i}: reserved bytes are not zero")));
            }
            out.push(ManifestEntry {
                rank,
                file_len: u64::from_le_bytes(e[8..16].try_into().expect("8")),
                header_crc32: u32::from_le_bytes(e[16..20].try_into().expect("4")),
                table_crc32: u32::from_le_bytes(e[20..24].try_into().expect("4")),
            });
        }
        Ok(out)
    }
}
