//! Best-metric retention: `Checkpointer(keep=2, keep_best=1, metric="val_loss", mode="min")`.
//!
//! Each save may carry metrics (a JSON object in the header's `metrics` entry). With a best-metric
//! policy the core keeps every generation (its own `keep` is lifted), and after each durable commit this
//! module removes the generations of the checkpoint name that are neither among the newest `keep` nor
//! among the `keep_best` best by `metric` (`min` or `max`; ties: the newer wins; a save without the
//! metric, or with a value that is not a finite number, is never among the best). So the pruning happens
//! only once the new generation is durable, and the best checkpoint survives any number of newer, worse
//! ones. Only regular files that this user owns are judged or removed (a file another user planted in
//! the directory can neither claim to be the best nor push one out); damaged generations are left to
//! the core (renamed aside).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use ckpt_core::storage::FileStorage;
use ckpt_core::{Checkpoint, Checkpointer, LoadOptions, NameKind, classify};

use crate::buffers::METRICS_KEY;

/// Which way is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Smaller is better (a loss).
    Min,
    /// Larger is better (an accuracy).
    Max,
}

/// A best-metric retention policy.
#[derive(Debug)]
pub struct BestPolicy {
    /// The newest generations kept.
    pub keep: usize,
    /// The best generations kept besides.
    pub keep_best: usize,
    /// The metric's name in `save(..., metrics={...})`.
    pub metric: String,
    /// Which way is better.
    pub mode: Mode,
    /// The metric of each generation seen (`None`: absent or not a finite number).
    seen: Mutex<BTreeMap<u64, Option<f64>>>,
}

/// The value of `metric` in a header's metrics entry, when it is a finite number.
pub fn metric_value(metrics: Option<&[u8]>, metric: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_slice(metrics?).ok()?;
    v.get(metric)?.as_f64().filter(|x| x.is_finite())
}

impl BestPolicy {
    /// A policy (`keep` >= 1, `keep_best` >= 1).
    pub fn new(keep: usize, keep_best: usize, metric: String, mode: Mode) -> BestPolicy {
        BestPolicy { keep, keep_best, metric, mode, seen: Mutex::new(BTreeMap::new()) }
    }

    /// Records the metric of a generation just committed (saves re-reading its header).
    pub fn note(&self, generation: u64, metrics: Option<&str>) {
        let value = metric_value(metrics.map(str::as_bytes), &self.metric);
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(generation, value);
    }

    /// The generations to keep among `gens` (generation, metric).
    pub fn chosen(&self, gens: &[(u64, Option<f64>)]) -> Vec<u64> {
        let mut newest: Vec<u64> = gens.iter().map(|g| g.0).collect();
        newest.sort_unstable_by(|a, b| b.cmp(a));
        newest.truncate(self.keep.max(1));
        let mut ranked: Vec<(u64, f64)> = gens.iter().filter_map(|&(g, v)| v.map(|v| (g, v))).collect();
        ranked.sort_by(|a, b| {
            let by_value = match self.mode {
                Mode::Min => a.1.total_cmp(&b.1),
                Mode::Max => b.1.total_cmp(&a.1),
            };
            by_value.then(b.0.cmp(&a.0))
        });
        newest.extend(ranked.into_iter().take(self.keep_best).map(|(g, _)| g));
        newest.sort_unstable();
        newest.dedup();
        newest
    }

    /// Removes the generations of `cp`'s checkpoint name that the policy does not keep (after a durable
    /// commit of `newest`): the files `<name>.ckpt.<N>` (with several ranks, the steps' manifests, on rank
    /// 0; the ranks then remove their parts with [`remove_parts`]). Returns the generations removed, and
    /// warnings for those that could not be judged or removed.
    pub fn retire(&self, cp: &Checkpointer, newest: u64) -> (Vec<u64>, Vec<String>) {
        let cfg = cp.config();
        let path = cfg.checkpoint_path();
        let (Some(dir), Some(base)) = (path.parent(), path.file_name().and_then(|b| b.to_str())) else {
            return (Vec::new(), Vec::new());
        };
        let mut removed = Vec::new();
        let mut warnings = Vec::new();
        let me = ckpt_core::identity::effective_uid();
        let mut gens = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return (Vec::new(), vec![format!("{}: cannot list it for best-metric retention: {e}", dir.display())]);
            }
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(NameKind::Generation(g)) = name.to_str().and_then(|n| classify(base, n)) else { continue };
            // Regular files of this user only (symlink_metadata: a planted link is not followed).
            match entry.path().symlink_metadata() {
                Ok(m) if m.file_type().is_file() && m.uid() == me => {}
                _ => continue,
            }
            let value = match seen.get(&g) {
                Some(v) => *v,
                None => {
                    // A multi-rank step's manifest holds no metrics: its rank 0 part does.
                    let part = dir.join(format!("{base}.parts/{g}/rank0.ckpt"));
                    let v = read_metric(&entry.path(), &self.metric).or_else(|| read_metric(&part, &self.metric));
                    seen.insert(g, v);
                    v
                }
            };
            gens.push((g, value));
        }
        if !gens.iter().any(|g| g.0 == newest) {
            return (removed, warnings); // not listed (a file system without hard links, a race): judge next time
        }
        let keep = self.chosen(&gens);
        for &(g, _) in &gens {
            if keep.contains(&g) || g >= newest {
                continue;
            }
            let p = dir.join(format!("{base}.{g}"));
            match std::fs::remove_file(&p) {
                Ok(()) => {
                    seen.remove(&g);
                    removed.push(g);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    seen.remove(&g);
                    removed.push(g);
                }
                Err(e) => warnings.push(format!("{}: could not remove it (best-metric retention): {e}", p.display())),
            }
        }
        (removed, warnings)
    }
}

/// Multi-rank best-metric retention: removes this rank's parts of `generations` (whose manifests rank 0
/// removed), `<name>.ckpt.parts/<N>/rank<R>.ckpt`, regular files of this user only; with `dirs` (rank 0,
/// once every rank removed its parts) the emptied generation directories too. Returns warnings.
pub fn remove_parts(cp: &Checkpointer, generations: &[u64], dirs: bool) -> Vec<String> {
    let cfg = cp.config();
    let path = cfg.checkpoint_path();
    let (Some(dir), Some(base)) = (path.parent(), path.file_name().and_then(|b| b.to_str())) else {
        return Vec::new();
    };
    let me = ckpt_core::identity::effective_uid();
    let mut warnings = Vec::new();
    for g in generations {
        let gen_dir = dir.join(format!("{base}.parts/{g}"));
        let part = gen_dir.join(format!("rank{}.ckpt", cfg.rank));
        match part.symlink_metadata() {
            Ok(m) if m.file_type().is_file() && m.uid() == me => {
                if let Err(e) = std::fs::remove_file(&part)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warnings.push(format!("{}: could not remove it (best-metric retention): {e}", part.display()));
                }
            }
            _ => {}
        }
        if dirs {
            // Only when empty (a part another rank could not remove stays, with its directory).
            let _ = std::fs::remove_dir(&gen_dir);
        }
    }
    warnings
}

/// The metric of the checkpoint at `path` (its header only; `None` when unreadable or absent).
fn read_metric(path: &Path, metric: &str) -> Option<f64> {
    let cp = Checkpoint::open_with(&FileStorage, path, LoadOptions::new().mmap(false)).ok()?;
    metric_value(cp.metadata(METRICS_KEY), metric)
}
