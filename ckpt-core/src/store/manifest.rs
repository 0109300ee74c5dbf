//! A multi-rank step's manifest: written through the single-file protocol, read back by discovery.

use super::*;

/// Name of the manifest's section listing the parts.
pub(super) const MANIFEST_SECTION: &str = "ckpt.parts";
/// Bytes per rank in the manifest section.
pub(super) const MANIFEST_ENTRY_LEN: usize = 24;

impl Store {
    /// Writes the manifest of `generation` (one record per rank, in rank order) through the single-file
    /// protocol, then removes the temporary files dead writers left among the parts.
    pub(super) fn write_manifest(
        &self,
        dir: &Path,
        generation: u64,
        app_step: i64,
        parts: &[PartIdentity],
        start: Instant,
        ranks_prune_own_parts: bool,
    ) -> Result<CommitInfo> {
        let base = self.config.base_name();
        let mut manifest = Vec::with_capacity(parts.len() * MANIFEST_ENTRY_LEN);
        for p in parts {
            manifest.extend_from_slice(&p.rank.to_le_bytes());
            manifest.extend_from_slice(&0u32.to_le_bytes());
            manifest.extend_from_slice(&p.file_len.to_le_bytes());
            manifest.extend_from_slice(&p.header_crc32.to_le_bytes());
            manifest.extend_from_slice(&p.table_crc32.to_le_bytes());
        }
        // Steps in a row reuse the previous commit's view of the directory, as single saves do (the hard
        // link that claims `<base>.<generation>` still fails if anything else took it).
        let listing = match self.shared.reusable_listing(dir, &base) {
            Some(listing) => listing,
            None => self.list_generations(dir, &base)?,
        };
        let plan = Plan::Single { listing };
        let header = self.header(FileKind::Manifest, generation, app_step);
        let mut w = self.start(dir, &base, header, plan)?;
        w.ranks_prune_own_parts = ranks_prune_own_parts;
        w.add_section_with(MANIFEST_SECTION, &manifest, SectionOptions::new().encoding(Encoding::Manifest))?;
        let mut info = w.commit()?;
        // Every rank's part is in place, so a temporary file still here is a dead writer's (a run that
        // crashed while writing this generation); one listing by names, no `stat` per rank.
        let part_dir = dir.join(format!("{base}.parts")).join(generation.to_string());
        if let Ok(names) = self.storage.list_names(&part_dir) {
            for name in names.iter().filter_map(|n| n.to_str()).filter(|n| is_part_temporary(n)) {
                let _ = self.storage.remove_file(&part_dir.join(name));
            }
        }
        info.seconds = start.elapsed().as_secs_f64();
        Ok(info)
    }
}

/// Manifest entries: (rank, file_len, header_crc32, table_crc32).
pub fn parse_manifest(cp: &Checkpoint) -> Result<Vec<(u32, u64, u32, u32)>> {
    let bytes = cp.read(MANIFEST_SECTION)?;
    let n = cp.header().nranks as usize;
    if bytes.len() != n * MANIFEST_ENTRY_LEN {
        return Err(Error::corrupt(format!("manifest lists {} bytes for {n} ranks", bytes.len()))
            .with_section(MANIFEST_SECTION)
            .with_path(cp.path()));
    }
    let mut out = Vec::with_capacity(n);
    for (i, e) in bytes.chunks_exact(MANIFEST_ENTRY_LEN).enumerate() {
        let rank = u32::from_le_bytes(e[0..4].try_into().expect("4"));
        if rank as usize != i {
            return Err(Error::corrupt("manifest ranks are out of order").with_path(cp.path()));
        }
        if e[4..8] != [0; 4] {
            return Err(Error::corrupt(format!("manifest record {i}: reserved bytes are not zero"))
                .with_section(MANIFEST_SECTION)
                .with_path(cp.path()));
        }
        out.push((
            rank,
            u64::from_le_bytes(e[8..16].try_into().expect("8")),
            u32::from_le_bytes(e[16..20].try_into().expect("4")),
            u32::from_le_bytes(e[20..24].try_into().expect("4")),
        ));
    }
    Ok(out)
}
