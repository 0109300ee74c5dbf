//! A multi-rank step's manifest: written through the single-file protocol, read back by discovery.

use super::*;

use crate::format::{MANIFEST_ENTRY_LEN, MANIFEST_SECTION, ManifestEntry};

impl Store {
    /// Writes the manifest of `generation` (one record per rank, in rank order) through the single-file
    /// protocol, then removes the temporary files dead writers left among the parts.
    pub(super) fn write_manifest(
        &self,
        dir: &Path,
        generation: u64,
        app_step: u64,
        parts: &[PartIdentity],
        start: Instant,
        ranks_prune_own_parts: bool,
    ) -> Result<CommitInfo> {
        let base = self.config.base_name();
        let mut manifest = Vec::with_capacity(parts.len() * MANIFEST_ENTRY_LEN);
        for p in parts {
            let entry = ManifestEntry {
                rank: p.rank,
                file_len: p.file_len,
                header_crc32: p.header_crc32,
                table_crc32: p.table_crc32,
            };
            manifest.extend_from_slice(&entry.to_bytes());
        }
        // Steps in a row reuse the previous commit's view of the directory, as single saves do (the hard
        // link that claims `<base>.<generation>` still fails if anything else took it).
        let listing = match self.shared.reusable_listing(dir, &base) {
            Some(mut listing) => {
                self.merge_swept(&mut listing);
                listing
            }
            None => self.fresh_listing(dir, &base)?,
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

/// The manifest's record of every rank's part, in rank order.
///
/// # Errors
///
/// [`ErrorKind::SectionNotFound`] when `cp` has no manifest section (it is not a manifest); as
/// [`Checkpoint::read`] for the section; [`ErrorKind::Corrupt`] as [`ManifestEntry::parse_all`], naming the
/// section and the file.
pub fn parse_manifest(cp: &Checkpoint) -> Result<Vec<ManifestEntry>> {
    let bytes = cp.read(MANIFEST_SECTION)?;
    ManifestEntry::parse_all(&bytes, cp.header().nranks as usize)
        .map_err(|e| e.with_section(MANIFEST_SECTION).with_path(cp.path()))
}
