//! Storage levels: a node-local cache in front of the checkpoint directory.
//!
//! With `CKPT_CACHE_DIR` set, a save commits to a node-local directory first (a RAM disk such as
//! `/dev/shm/$USER`, or local NVMe), with the same atomic, verified protocol as everywhere: the checkpoint
//! is **cached**. A background thread then copies it to the checkpoint directory (`CKPT_DIR`,
//! `SLURM_CHECKPOINT_DIR`), verifies the copy there and commits it under the same generation number: the
//! checkpoint is **durable**. `CKPT_FLUSH` says which checkpoints are copied; the one that precedes an exit
//! (SIGTERM, the time limit, a vacating `ckpt create`) always is, and
//! [`Checkpointer::should_exit`](crate::Checkpointer::should_exit) turns true only once it is durable.
//!
//! Multi-rank steps: each rank copies its part; rank 0 commits the step in the checkpoint directory (its
//! manifest) once every rank's copy is there, and the other ranks wait for that. Every step is copied,
//! whatever the policy, in order, since rank 0 waits for every rank's copy of each step.
//!
//! Each checkpoint directory has its own cache directory, `<CKPT_CACHE_DIR>/<last component>-<hash of
//! its absolute path>` (mode 0700), so that jobs of a sweep caching on one node stay apart and a restart
//! on the same node finds its files again. Restart takes the newest generation that verifies on any level
//! this node sees, the cache's copy before the checkpoint directory's (see [`Store::restore`](crate::Store::restore)).
//!
//! | setting | variable | default |
//! |---|---|---|
//! | cache directory | `CKPT_CACHE_DIR` | unset: saves go to the checkpoint directory directly |
//! | generations kept in the cache | `CKPT_CACHE_KEEP` | 1 |
//! | which checkpoints are copied | `CKPT_FLUSH` (`every`, `N` for every Nth, `exit`) | `every` |
//! | how long the program's exit waits for a copy in progress | `CKPT_FLUSH_TIMEOUT` (seconds, or with units) | 600 s |
//! | a partner rank on another node keeps a copy of each part (MPI helpers) | `CKPT_PARTNER` | off |
//! | this process's node, for choosing partners on other nodes | `CKPT_NODE_ID` | `SLURM_TOPOLOGY_ADDR` when it names this host, else the host name |
//!
//! # Partner copies
//!
//! With `CKPT_PARTNER=1` the MPI helpers (`ckpt_mpi.h`, `ckpt_mpi.f90`) also keep each rank's committed
//! part in the cache of a rank on the next node (nodes ordered by their lowest rank, a rank's partner
//! being the rank of the same local index there, modulo the number of ranks on that node), and a restart
//! where some rank lacks the newest step every other rank can read gets the missing part (and the step's
//! manifest) back from the node that keeps it, before the ranks agree on the step. See
//! [`Store::receive_part`](crate::Store::receive_part) for the files.
//!
//! Which node a rank is on: `CKPT_NODE_ID` when set (tests simulate nodes with it); else Slurm's
//! `SLURM_TOPOLOGY_ADDR` when its last component is this host's name (launchers such as MPICH's Hydra
//! pass the launching shell's environment to every rank, so a Slurm variable may describe another
//! node: a copy "on another node" that is on the same node would be lost with it); else the host name.
//! `SLURM_NODEID` and `OMPI_COMM_WORLD_NODE_RANK` are not used: the first is propagated the same way, the
//! second numbers ranks within a node, not nodes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Where a checkpoint lies.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// The node-local cache (`CKPT_CACHE_DIR`): fast, lost with the node.
    Cache,
    /// The checkpoint directory (the shared, parallel file system): durable.
    Shared,
}

impl Level {
    /// `"cache"` or `"shared"`, as the log and `ckpt list` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Cache => "cache",
            Level::Shared => "shared",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which cached checkpoints are copied to the checkpoint directory (`CKPT_FLUSH`). Whatever the policy,
/// the checkpoint before an exit and the one a `ckpt create` asked for are copied, and so is the newest
/// one when the program ends normally.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every checkpoint (`every`, the default). When checkpoints are committed faster than they can be
    /// copied, a copy that has not started yet is replaced by the newer checkpoint's.
    Every,
    /// Every Nth checkpoint this process commits (`N`).
    Nth(u64),
    /// Only the last one (`exit`).
    Exit,
}

impl FlushPolicy {
    /// Parses `CKPT_FLUSH`'s value.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidArgument`] for anything but `every`, `exit` or a positive integer.
    pub fn parse(text: &str) -> Result<FlushPolicy> {
        match text.trim().to_ascii_lowercase().as_str() {
            "every" | "all" | "1" => Ok(FlushPolicy::Every),
            "exit" | "last" => Ok(FlushPolicy::Exit),
            n => match n.parse::<u64>() {
                Ok(n) if n > 0 => Ok(FlushPolicy::Nth(n)),
                _ => Err(Error::invalid(format!(
                    "invalid value {text:?}: expected `every`, `exit` or a positive number N (every Nth checkpoint)"
                ))),
            },
        }
    }

    /// Whether the `count`th checkpoint this process committed (from 1) is copied by policy alone.
    pub fn copies(self, count: u64) -> bool {
        match self {
            FlushPolicy::Every => true,
            FlushPolicy::Nth(n) => count.is_multiple_of(n),
            FlushPolicy::Exit => false,
        }
    }
}

impl std::fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushPolicy::Every => f.write_str("every"),
            FlushPolicy::Nth(n) => write!(f, "{n}"),
            FlushPolicy::Exit => f.write_str("exit"),
        }
    }
}

/// Generations kept in the cache by default: the cache is usually memory.
pub const DEFAULT_CACHE_KEEP: usize = 1;

/// How long the program's normal exit waits for a copy in progress, by default.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(600);

/// The node-local cache level (see the [module documentation](self)).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub struct CacheLevel {
    /// The cache's root (`CKPT_CACHE_DIR`); each checkpoint directory has its own directory in it
    /// ([`CacheLevel::dir_for`]).
    pub root: PathBuf,
    /// Generations kept in the cache (at least 1).
    pub keep: usize,
    /// Which checkpoints are copied to the checkpoint directory.
    pub flush: FlushPolicy,
    /// How long the program's normal exit waits for a copy in progress.
    pub exit_timeout: Duration,
    /// Whether the MPI helpers also keep each rank's part in a partner rank's cache on another node.
    pub partner: bool,
    /// This node's name when a setting gives it (`CKPT_NODE_ID`, or `SLURM_TOPOLOGY_ADDR` naming this
    /// host); `None`: the host name ([`Store::node_name`](crate::Store::node_name)).
    pub node: Option<String>,
}

impl CacheLevel {
    /// A cache level in `root` with the defaults: one generation kept, every checkpoint copied.
    pub fn new(root: impl AsRef<Path>) -> CacheLevel {
        CacheLevel {
            root: root.as_ref().to_path_buf(),
            keep: DEFAULT_CACHE_KEEP,
            flush: FlushPolicy::Every,
            exit_timeout: DEFAULT_FLUSH_TIMEOUT,
            partner: false,
            node: None,
        }
    }

    /// Reads `CKPT_CACHE_DIR`, `CKPT_CACHE_KEEP`, `CKPT_FLUSH`, `CKPT_FLUSH_TIMEOUT` and `CKPT_PARTNER`;
    /// `None` without `CKPT_CACHE_DIR` (the other settings are then checked but have no effect).
    pub(crate) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Option<CacheLevel>> {
        let named = |var: &str, e: Error| Error::invalid(format!("{var}: {}", e.message()));
        let keep = match get("CKPT_CACHE_KEEP") {
            Some(v) => v.trim().parse::<usize>().ok().filter(|&k| k >= 1).ok_or_else(|| {
                Error::invalid(format!("CKPT_CACHE_KEEP: invalid value {v:?}: expected a number of generations ≥ 1"))
            })?,
            None => DEFAULT_CACHE_KEEP,
        };
        let flush = match get("CKPT_FLUSH") {
            Some(v) => FlushPolicy::parse(&v).map_err(|e| named("CKPT_FLUSH", e))?,
            None => FlushPolicy::Every,
        };
        let exit_timeout = match get("CKPT_FLUSH_TIMEOUT") {
            Some(v) => parse_seconds_or_units(&v).map_err(|e| named("CKPT_FLUSH_TIMEOUT", e))?,
            None => DEFAULT_FLUSH_TIMEOUT,
        };
        let partner = match get("CKPT_PARTNER") {
            Some(v) => crate::config::parse_bool(&v)
                .ok_or_else(|| Error::invalid(format!("CKPT_PARTNER: invalid value {v:?}: expected 0 or 1")))?,
            None => false,
        };
        let node = node_from(get);
        let Some(root) = get("CKPT_CACHE_DIR").filter(|v| !v.trim().is_empty()) else {
            return Ok(None);
        };
        let root = PathBuf::from(root);
        if !root.is_absolute() {
            return Err(Error::invalid(format!(
                "CKPT_CACHE_DIR: {} is not an absolute path (a node-local directory such as /dev/shm/$USER or \
                 $TMPDIR)",
                root.display()
            )));
        }
        Ok(Some(CacheLevel { root, keep, flush, exit_timeout, partner, node }))
    }

    /// The cache directory of `checkpoint_dir`: `<root>/<its last component>-<16 hex digits of a hash of
    /// its absolute path>`. The path is resolved (symbolic links too) when it exists, so that the first
    /// run and a restart, started from different directories, agree.
    pub fn dir_for(&self, checkpoint_dir: &Path) -> PathBuf {
        let absolute = std::fs::canonicalize(checkpoint_dir)
            .or_else(|_| std::path::absolute(checkpoint_dir))
            .unwrap_or_else(|_| checkpoint_dir.to_path_buf());
        let last: String = absolute
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("root")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
            .take(40)
            .collect();
        let last = last.trim_start_matches('.');
        let last = if last.is_empty() { "dir" } else { last };
        self.root.join(format!("{last}-{:016x}", fnv1a64(absolute.as_os_str().as_encoded_bytes())))
    }
}

/// The node's name from the settings: `CKPT_NODE_ID`, or `SLURM_TOPOLOGY_ADDR` when its last component
/// is this host's short name (see the module documentation for why a launcher's variables are checked).
fn node_from(get: &impl Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(id) = get("CKPT_NODE_ID").map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
        return Some(id);
    }
    let addr = get("SLURM_TOPOLOGY_ADDR")?;
    let host = crate::config::hostname();
    let short = host.split('.').next().unwrap_or(&host);
    (addr.rsplit('.').next() == Some(short)).then_some(addr)
}

/// A 64-bit key of a node's name, the same in every process and build (the MPI helpers exchange keys,
/// not names).
pub fn node_key(name: &str) -> u64 {
    fnv1a64(name.as_bytes())
}

/// FNV-1a, 64 bits: stable across builds and Rust versions (the cache's name must be the same for the run
/// that wrote it and the one that restarts), unlike the standard library's hasher.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Seconds (`90`) or a duration with units (`30s`, `10m`, `1h`).
fn parse_seconds_or_units(v: &str) -> Result<Duration> {
    if let Ok(s) = v.trim().parse::<f64>()
        && s.is_finite()
        && s >= 0.0
    {
        return Ok(Duration::from_secs_f64(s));
    }
    crate::timefmt::parse_time_with_units(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| vars.iter().rev().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_string())
    }

    #[test]
    fn settings_parse_and_reject() {
        assert_eq!(CacheLevel::from_lookup(&lookup(&[])).unwrap(), None);
        let c = CacheLevel::from_lookup(&lookup(&[("CKPT_CACHE_DIR", "/dev/shm/u")])).unwrap().unwrap();
        assert_eq!((c.keep, c.flush, c.partner), (1, FlushPolicy::Every, false));
        let c = CacheLevel::from_lookup(&lookup(&[
            ("CKPT_CACHE_DIR", "/tmp/c"),
            ("CKPT_FLUSH", "3"),
            ("CKPT_CACHE_KEEP", "2"),
            ("CKPT_FLUSH_TIMEOUT", "2m"),
            ("CKPT_PARTNER", "1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.keep, c.flush, c.exit_timeout, c.partner),
            (2, FlushPolicy::Nth(3), Duration::from_secs(120), true)
        );
        assert_eq!(FlushPolicy::parse("exit").unwrap(), FlushPolicy::Exit);
        let c =
            CacheLevel::from_lookup(&lookup(&[("CKPT_CACHE_DIR", "/c"), ("CKPT_NODE_ID", " n7 ")])).unwrap().unwrap();
        assert_eq!(c.node.as_deref(), Some("n7"));
        // A topology address naming another host (passed on by a launcher) is not this node's.
        let c = CacheLevel::from_lookup(&lookup(&[
            ("CKPT_CACHE_DIR", "/c"),
            ("SLURM_TOPOLOGY_ADDR", "s1.not-this-host-x"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.node, None);
        for (var, value, says) in [
            ("CKPT_FLUSH", "sometimes", "CKPT_FLUSH: invalid value \"sometimes\""),
            ("CKPT_FLUSH", "0", "CKPT_FLUSH"),
            ("CKPT_CACHE_KEEP", "0", "CKPT_CACHE_KEEP"),
            ("CKPT_CACHE_DIR", "relative/dir", "not an absolute path"),
        ] {
            let vars: &'static [(&str, &str)] =
                Box::leak(vec![("CKPT_CACHE_DIR", "/c"), (var, value)].into_boxed_slice());
            let e = CacheLevel::from_lookup(&lookup(vars)).unwrap_err();
            assert!(e.to_string().contains(says), "{var}={value}: {e}");
        }
    }

    #[test]
    fn each_checkpoint_directory_has_its_own_cache_directory() {
        let c = CacheLevel::new("/dev/shm/me");
        let a = c.dir_for(Path::new("/scratch/sweep/point1"));
        let b = c.dir_for(Path::new("/scratch/sweep2/point1"));
        assert_ne!(a, b);
        assert!(a.starts_with("/dev/shm/me"));
        assert!(a.file_name().unwrap().to_str().unwrap().starts_with("point1-"), "{a:?}");
        assert_eq!(a, c.dir_for(Path::new("/scratch/sweep/point1")), "stable");
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a's published value");
        assert!(FlushPolicy::Nth(3).copies(6) && !FlushPolicy::Nth(3).copies(4) && !FlushPolicy::Exit.copies(1));
    }
}
