//! Retiring old generations after a commit: pruning beyond `keep`, the spare, damaged generations, and
//! each rank's own retired parts.

use super::*;

/// How a commit retires old generations (see [`prune`]).
#[derive(Clone, Copy)]
pub(super) struct Retire<'a> {
    /// Generations discovery found damaged: they never count toward `keep`.
    pub(super) damaged: &'a [u64],
    pub(super) keep: usize,
    pub(super) spare_min_len: Option<u64>,
    pub(super) own_parts: Option<&'a [u64]>,
    /// The job's ranks: spares of higher ranks (an earlier run with more ranks) are removed.
    pub(super) nranks: u32,
}

/// Removes generations beyond the newest `keep` (never `newest` itself), from those present when the save
/// began (the listing's regular files only: a planted symlink must not push a real generation out), and
/// for multi-rank names the part directories of removed generations and of abandoned older ones. Returns
/// the generations that remain, and whether `<base>.tmp.spare` is there.
///
/// With `spare_min_len`, when there is no spare, the newest retired generation at least that large is
/// renamed to `<base>.tmp.spare` instead of removed: the next save overwrites its blocks.
///
/// With `own_parts` (a manifest of [`Store::commit_step_with_parts`]), each rank removes its own parts of
/// retired generations (`Store::after_step_committed`, or its next part), so a retired generation's
/// directory is normally empty by the commit after the one that retired it: one `rmdir` instead of one
/// `unlink` per rank. The generations in `own_parts` (this process's own part is still there) are left for
/// that; any other directory that is not empty (ranks that stopped, an earlier run, a failed step) is
/// emptied here.
pub(super) fn prune(
    storage: &dyn Storage,
    listing: &Listing,
    newest: (u64, u64),
    retire: Retire<'_>,
    warnings: &mut Vec<String>,
) -> (Vec<(u64, u64)>, bool) {
    let Retire { keep, spare_min_len, own_parts, nranks, damaged } = retire;
    let Listing { dir, base, parts, .. } = listing;
    let mut spare = listing.spare;
    let mut gens: Vec<(u64, u64)> = listing.generations.iter().copied().filter(|&(g, _)| g != newest.0).collect();
    gens.push(newest);
    gens.sort_unstable_by_key(|g| std::cmp::Reverse(g.0));
    gens.dedup_by_key(|g| g.0);
    // A damaged generation never counts toward `keep`: after a restart that fell back past it, counting
    // it would retire a valid older generation and keep the damaged one.
    let kept: Vec<(u64, u64)> =
        gens.iter().copied().filter(|g| g.0 == newest.0 || !damaged.contains(&g.0)).take(keep.max(1)).collect();
    let mut remaining = kept.clone();
    for &(g, len) in gens.iter().filter(|g| !kept.contains(g)) {
        if g == newest.0 {
            continue;
        }
        let p = dir.join(format!("{base}.{g}"));
        if damaged.contains(&g) && g < newest.0 {
            // Kept for a post-mortem under a name no discovery looks at, now that a newer valid generation
            // is durable.
            let aside = dir.join(format!("{base}.{g}.damaged"));
            match storage.rename(&p, &aside) {
                Ok(()) => warnings.push(format!(
                    "{}: generation {g} is damaged (restart rejected it); renamed to {} and no longer counted toward keep",
                    p.display(),
                    aside.display()
                )),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warnings.push(format!("{}: could not rename the damaged generation aside: {e}", p.display()));
                    remaining.push((g, len));
                }
            }
            continue;
        }
        let result = if !spare && spare_min_len.is_some_and(|min| len >= min) {
            match storage.rename(&p, &spare_path(dir, base)) {
                Ok(()) => {
                    spare = true;
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
                // Something else holds the spare's name (a directory, say): remove as without spares.
                Err(e) => {
                    warnings.push(format!("{}: could not keep it as the spare, removing it: {e}", p.display()));
                    storage.remove_listed_file(&p, len)
                }
            }
        } else {
            storage.remove_listed_file(&p, len)
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // pruned meanwhile
            Err(e) => {
                warnings.push(format!("{}: could not remove old generation: {e}", p.display()));
                remaining.push((g, len));
            }
        }
    }
    if !parts {
        return (remaining, spare);
    }
    let parts_root = dir.join(format!("{base}.parts"));
    let Ok(part_dirs) = storage.read_dir(&parts_root) else {
        return (remaining, spare);
    };
    for d in part_dirs {
        let rank_spare =
            d.name.to_str().and_then(|s| s.strip_prefix("rank")?.strip_suffix(".spare")?.parse::<u32>().ok());
        if rank_spare.is_some_and(|r| r >= nranks) {
            let _ = storage.remove_listed_file(&parts_root.join(&d.name), d.len);
        }
        let Some(g) = d.name.to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        // Parts newer than the newest manifest may belong to a save in progress: leave them.
        if kept.iter().any(|k| k.0 == g) || g >= newest.0 {
            continue;
        }
        let pd = parts_root.join(&d.name);
        if let Some(own_parts) = own_parts {
            if own_parts.contains(&g) {
                continue;
            }
            match storage.remove_dir(&pd) {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(_) => {} // not empty: its ranks did not remove their parts
            }
        }
        if let Ok(files) = storage.read_dir(&pd) {
            for f in files {
                let _ = storage.remove_listed_file(&pd.join(&f.name), f.len);
            }
        }
        if let Err(e) = storage.remove_dir(&pd) {
            warnings.push(format!("{}: could not remove old parts: {e}", pd.display()));
        }
    }
    (remaining, spare)
}

impl Store {
    /// Removes this rank's parts in `dir` of generations older than the newest manifest and not among the
    /// newest `keep` manifests (`manifests`: the generations whose manifests exist). Rank 0's commit prunes
    /// exactly those manifests, so no part of a kept step is ever removed.
    pub(super) fn prune_own_parts(&self, dir: &Path, manifests: &[u64]) -> Vec<String> {
        let mut warnings = Vec::new();
        let Some(&newest) = manifests.iter().max() else { return warnings };
        let mut newest_first = manifests.to_vec();
        newest_first.sort_unstable_by(|a, b| b.cmp(a));
        newest_first.dedup();
        let kept = &newest_first[..newest_first.len().min(self.keep_in(dir).max(1))];
        let spare_min_len = self.spare_min_len(dir);
        let mut spare = lock(&self.shared.part_spare);
        lock(&self.shared.own_parts).retain(|p| {
            let g = p.identity.generation;
            if p.dir != dir || g >= newest || kept.contains(&g) {
                return true;
            }
            let len = p.identity.file_len;
            let result = if *spare != Some(true) && spare_min_len.is_some_and(|min| len >= min) {
                self.retire_part_as_spare(&p.path).map(|()| *spare = Some(true))
            } else {
                self.storage.remove_listed_file(&p.path, len)
            };
            match result {
                Ok(()) => false,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    warnings.push(format!("{}: could not remove an old part: {e}", p.path.display()));
                    true
                }
            }
        });
        warnings
    }

    /// Renames this rank's retired part to its spare in the parts root, for its next part to write over.
    /// No directory `fsync`: should a power cut bring back the part's old name with the file rewritten,
    /// that retired generation's manifest (if it is still there) names a part of another length and
    /// CRCs, so a restart rejects that generation, as it does when a retired part is simply gone.
    pub(super) fn retire_part_as_spare(&self, part: &Path) -> io::Result<()> {
        let root = part.parent().and_then(Path::parent).unwrap_or(Path::new("."));
        self.storage.rename(part, &part_spare_path(root, self.config.rank))
    }
}
