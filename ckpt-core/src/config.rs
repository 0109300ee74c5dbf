//! The effective configuration, read from the environment the way users of Slurm's removed checkpoint
//! interface expect.
//!
//! | setting | first of |
//! |---|---|
//! | application name | the `name` argument, `CKPT_NAME`, `SLURM_JOB_NAME`, `ckpt` (Python: the script's file stem) |
//! | job id | `SLURM_JOB_ID` (none outside Slurm: the application name stands in) |
//! | step id | `SLURM_STEP_ID` (unset in a batch script, so the checkpoint belongs to the whole job) |
//! | rank, nranks | `CKPT_RANK`/`CKPT_NRANKS`, `OMPI_COMM_WORLD_RANK`/`_SIZE`, `PMIX_RANK`, `PMI_RANK`/`PMI_SIZE`, then `SLURM_PROCID`/`SLURM_NTASKS` inside an srun step only (mpirun inside a job leaves `SLURM_PROCID=0` on every rank) |
//! | checkpoint directory | `CKPT_DIR`, `SLURM_CHECKPOINT_DIR`, the current directory |
//! | restart directory | `CKPT_RESTART_DIR`, `SLURM_RESTART_DIR`, the checkpoint directory |
//! | interval | `CKPT_INTERVAL`, `SLURM_CHECKPOINT` (Slurm's six time formats, or `auto`) |
//! | generations kept | `CKPT_KEEP` (default 2) |
//! | file mode | `CKPT_FILE_MODE` (octal, default 0600) |
//! | memory mapping | `CKPT_MMAP` (default on) |
//! | direct I/O for large writes (bypassing the page cache) | `CKPT_DIRECT_IO` (default on) |
//! | overwriting a retired checkpoint's blocks instead of allocating new ones | `CKPT_REUSE_SPACE` (default on) |
//! | compression | `CKPT_COMPRESS` (`off`, `auto`, `zstd`, `zstd:N`; default off) |
//! | threads compressing a shuffled section | `CKPT_COMPRESSION_THREADS` (`auto` or a count; default `auto`: the available cores, at most 8) |
//! | fresh start allowed when no checkpoint verifies | `CKPT_ALLOW_FRESH_START` (default no) |
//! | whose checkpoint restart may take | `CKPT_RESUME_FROM` (`auto`, `none`, a job id; see [`crate::identity`]) |
//! | array job and task (recorded, compared at restart) | `SLURM_ARRAY_JOB_ID`, `SLURM_ARRAY_TASK_ID` |
//! | job end time | `SLURM_JOB_END_TIME`, `CKPT_END_TIME` (epoch seconds) |
//! | restart count | `SLURM_RESTART_COUNT` |
//! | signals that request a checkpoint | `CKPT_SIGNALS` (default `TERM,USR1`; TERM also asks to exit) |
//! | margin before the job's end | `CKPT_MARGIN` (seconds or a Slurm time, default 60 s) |
//! | safety factor on the predicted checkpoint cost | `CKPT_SAFETY_FACTOR` (default 2) |
//! | mean time between failures for `interval = auto` | `CKPT_MTBF` (Slurm time format, default 24:00:00) |
//! | structured log | `CKPT_LOG` (`stderr`, `off`, a path; default `<checkpoint_dir>/<base>.log`) |
//! | control socket directory | `CKPT_SOCKET_DIR` (default `$TMPDIR/ckpt-<uid>`); `CKPT_SOCKET=0` disables |
//! | the program asked for the job's end time | `CKPT_SQUEUE` (default `squeue`) |
//! | node-local cache level, its retention, flush policy and exit wait, partner copies | `CKPT_CACHE_DIR`, `CKPT_CACHE_KEEP`, `CKPT_FLUSH`, `CKPT_FLUSH_TIMEOUT`, `CKPT_PARTNER`, `CKPT_NODE_ID` (see [`crate::levels`]) |
//!
//! A malformed value is an error naming the variable and the value, never silently ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::format;
use crate::identity::{ResumeFrom, RunIdentity};
use crate::levels::CacheLevel;
use crate::timefmt::{parse_slurm_time, parse_time_with_units};
use crate::triggers::{self, SignalSpec};
use crate::writer::Compression;

/// The most threads [`Config::compression_threads`] takes by default, however many cores there are: zstd
/// on one core runs at about 0.5-1.5 GB/s on shuffled planes, so a few threads reach what a node's share of
/// a file system takes.
pub(crate) const MAX_DEFAULT_COMPRESSION_THREADS: u16 = 8;

/// The default of [`Config::compression_threads`]: the cores available to this process (its CPU affinity
/// and cgroup quota, [`std::thread::available_parallelism`]), at most [`MAX_DEFAULT_COMPRESSION_THREADS`].
pub(crate) fn default_compression_threads() -> u16 {
    std::thread::available_parallelism()
        .map_or(1, |n| u16::try_from(n.get()).unwrap_or(u16::MAX))
        .clamp(1, MAX_DEFAULT_COMPRESSION_THREADS)
}

/// Every `CKPT_*` variable the configuration reads (what `ckpt_set_config` accepts).
pub const SETTINGS: &[&str] = &[
    "CKPT_ALLOW_FRESH_START",
    "CKPT_CACHE_DIR",
    "CKPT_CACHE_KEEP",
    "CKPT_COMMIT_TIMEOUT",
    "CKPT_COMPRESS",
    "CKPT_COMPRESSION_THREADS",
    "CKPT_DIR",
    "CKPT_DIRECT_IO",
    "CKPT_END_TIME",
    "CKPT_FILE_MODE",
    "CKPT_FLUSH",
    "CKPT_FLUSH_TIMEOUT",
    "CKPT_INTERVAL",
    "CKPT_KEEP",
    "CKPT_LOG",
    "CKPT_MARGIN",
    "CKPT_MMAP",
    "CKPT_MTBF",
    "CKPT_NAME",
    "CKPT_NODE_ID",
    "CKPT_NRANKS",
    "CKPT_PARTNER",
    "CKPT_RANK",
    "CKPT_RESTART_DIR",
    "CKPT_RESUME_FROM",
    "CKPT_REUSE_SPACE",
    "CKPT_SAFETY_FACTOR",
    "CKPT_SIGNALS",
    "CKPT_SOCKET",
    "CKPT_SOCKET_DIR",
    "CKPT_SQUEUE",
];

/// The application name when nothing else gives one.
pub const DEFAULT_APP_NAME: &str = "ckpt";
/// Generations kept by default.
pub const DEFAULT_KEEP: usize = 2;
/// Permission bits of new checkpoint files by default.
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// When periodic checkpoints are due.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interval {
    /// A fixed period.
    Every(Duration),
    /// Young/Daly's optimum from the measured checkpoint cost and the mean time between failures.
    Auto,
}

/// Where the structured (JSON lines) log goes.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// `<checkpoint_dir>/<base>.log` (the default).
    CheckpointDir,
    /// Standard error.
    Stderr,
    /// Nowhere.
    Off,
    /// This file (appended to).
    File(PathBuf),
}

/// Everything a [`crate::Store`] and a [`crate::Checkpointer`] need to know; usually built by
/// [`Config::from_env`].
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Application name (recorded in every file; matches checkpoints across resubmissions).
    pub app_name: String,
    /// Slurm job id, when running under Slurm.
    pub job_id: Option<String>,
    /// Slurm step id, when running inside a job step.
    pub step_id: Option<u32>,
    /// This process's rank.
    pub rank: u32,
    /// Number of ranks.
    pub nranks: u32,
    /// Where checkpoints are written.
    pub checkpoint_dir: PathBuf,
    /// Where restart discovery looks.
    pub restart_dir: PathBuf,
    /// Generations kept (at least 1).
    pub keep: usize,
    /// Permission bits of new files.
    pub file_mode: u32,
    /// Whether files are memory-mapped when loaded.
    pub mmap: bool,
    /// Whether writes past the first MiB of a file bypass the page cache (`O_DIRECT`), where the file
    /// system allows it; otherwise buffered writes with write-behind.
    pub direct_io: bool,
    /// Whether a save overwrites the blocks of a retired checkpoint (kept as `<base>.tmp.spare`) instead of
    /// allocating new ones (see [`crate::Store`]'s layout).
    pub reuse_space: bool,
    /// Default compression for sections that do not choose.
    pub compression: Compression,
    /// Threads that compress a shuffled section whose options do not choose
    /// ([`crate::SectionOptions::compression_threads`] 0), the saving thread included
    /// (`CKPT_COMPRESSION_THREADS`; default: the cores available to the process, at most
    /// 8).
    pub compression_threads: u16,
    /// Whether restart may start fresh when checkpoints exist but none verifies.
    pub allow_fresh_start: bool,
    /// Periodic checkpoint interval.
    pub interval: Option<Interval>,
    /// The variable that set `interval` and its text as given (`("CKPT_INTERVAL", "2")`), for
    /// [`Config::interval_in_words`]; `None` when no variable set it.
    pub interval_from: Option<(String, String)>,
    /// Job end time (seconds since the epoch), when known from the environment.
    pub end_time: Option<i64>,
    /// Where `end_time` came from.
    pub end_time_source: Option<triggers::EndTimeSource>,
    /// `SLURM_RESTART_COUNT`: how many times Slurm restarted this job.
    pub restart_count: Option<u32>,
    /// This host's name.
    pub host: String,
    /// How long rank 0 waits for the other ranks' parts before committing a multi-rank step.
    pub commit_timeout: Duration,
    /// Signals that request a checkpoint.
    pub signals: Vec<SignalSpec>,
    /// Time kept free before the job's end, on top of the predicted checkpoint cost.
    pub margin: Duration,
    /// Factor applied to the predicted checkpoint cost before the job's end.
    pub safety_factor: f64,
    /// Mean time between failures for `Interval::Auto`.
    pub mtbf: Duration,
    /// Where the JSON log goes.
    pub log: LogTarget,
    /// Directory of the control socket (`None`: no socket).
    pub socket_dir: Option<PathBuf>,
    /// This run's identity, recorded in every file and compared at restart (see [`crate::identity`]).
    pub identity: RunIdentity,
    /// Whose checkpoints restart may take (`CKPT_RESUME_FROM`).
    pub resume_from: ResumeFrom,
    /// The program asked for the job's end time (`CKPT_SQUEUE`, default `squeue` from `PATH`).
    pub squeue: std::ffi::OsString,
    /// The node-local cache level in front of the checkpoint directory (`CKPT_CACHE_DIR`; `None`: saves
    /// go to the checkpoint directory directly).
    pub cache: Option<CacheLevel>,
}

impl Config {
    /// A builder for a configuration of `app_name` in `dir` that ignores the environment: the defaults
    /// of [`Config::new`], changed setting by setting, checked by [`ConfigBuilder::build`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use ckpt_core::{Compression, Config, Interval, LogTarget};
    ///
    /// let config = Config::builder("heat", "/scratch/ckpt")
    ///     .keep(3)
    ///     .compression(Compression::Auto)
    ///     .interval(Interval::Every(Duration::from_secs(600)))
    ///     .log(LogTarget::Stderr)
    ///     .build()?;
    /// assert_eq!(config.keep, 3);
    /// # Ok::<(), ckpt_core::Error>(())
    /// ```
    pub fn builder(app_name: &str, dir: impl AsRef<Path>) -> ConfigBuilder {
        ConfigBuilder { config: Config::new(app_name, dir) }
    }

    /// A configuration for `app_name` in `dir`, ignoring the environment (one process, no Slurm).
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidArgument`] when `app_name` is empty, longer than 64 bytes, or not
    /// usable in a file name.
    pub fn new(app_name: &str, dir: impl AsRef<Path>) -> Result<Config> {
        check_name_component(app_name, "application name")?;
        let dir = dir.as_ref().to_path_buf();
        Ok(Config {
            app_name: app_name.to_string(),
            job_id: None,
            step_id: None,
            rank: 0,
            nranks: 1,
            checkpoint_dir: dir.clone(),
            restart_dir: dir,
            keep: DEFAULT_KEEP,
            file_mode: DEFAULT_FILE_MODE,
            mmap: true,
            direct_io: true,
            reuse_space: true,
            compression: Compression::None,
            compression_threads: default_compression_threads(),
            allow_fresh_start: false,
            interval: None,
            interval_from: None,
            end_time: None,
            end_time_source: None,
            restart_count: None,
            host: hostname(),
            commit_timeout: Duration::from_secs(600),
            signals: triggers::parse_signals(triggers::DEFAULT_SIGNALS)?,
            margin: triggers::DEFAULT_MARGIN,
            safety_factor: triggers::DEFAULT_SAFETY_FACTOR,
            mtbf: triggers::DEFAULT_MTBF,
            log: LogTarget::Off,
            socket_dir: None,
            identity: RunIdentity::of_process(app_name, &|_| None),
            resume_from: ResumeFrom::Auto,
            squeue: "squeue".into(),
            cache: None,
        })
    }

    /// Reads the configuration from this process's environment (the variables are listed in the crate
    /// documentation, [Environment variables](crate#environment-variables)).
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidArgument`] naming the variable and its value when one is malformed.
    pub fn from_env(app_name: Option<&str>) -> Result<Config> {
        Config::from_lookup(app_name, |k| std::env::var(k).ok())
    }

    /// Like [`Config::from_env`], with variables from `lookup` (for tests and for the `ckpt env` tool).
    ///
    /// # Errors
    ///
    /// As [`Config::from_env`]: [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) naming the variable
    /// and its value.
    pub fn from_lookup(app_name: Option<&str>, lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let app_name = match app_name {
            Some(n) => n.to_string(),
            None => get("CKPT_NAME").or_else(|| get("SLURM_JOB_NAME")).unwrap_or_else(|| DEFAULT_APP_NAME.into()),
        };
        // A job name from Slurm may contain anything: keep it usable as a file-name component.
        let app_name = if app_name.len() > format::MAX_NAME_LEN || app_name.contains('/') {
            sanitize(&app_name)
        } else {
            app_name
        };
        let mut cfg = Config::new(&app_name, ".")?;
        cfg.identity = RunIdentity::of_process(&app_name, &get);
        if let Some(v) = get("CKPT_RESUME_FROM") {
            cfg.resume_from = ResumeFrom::parse(&v).ok_or_else(|| {
                Error::invalid(format!("CKPT_RESUME_FROM: invalid value {v:?}: expected a job id, `none` or `auto`"))
            })?;
        }
        if let Some(program) = get("CKPT_SQUEUE") {
            cfg.squeue = program.into();
        }
        for var in ["SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"] {
            if let Some(v) = get(var) {
                check_name_component(&v, var)?;
            }
        }
        if let Some(job) = get("SLURM_JOB_ID") {
            check_name_component(&job, "SLURM_JOB_ID")?;
            cfg.job_id = Some(job);
        }
        cfg.step_id = parse_var(&get, "SLURM_STEP_ID", |v| v.parse::<u32>().ok().filter(|&s| s != format::NO_STEP_ID))?;
        // Slurm marks the batch and extern steps with large reserved numbers: they are not job steps.
        if cfg.step_id.is_some_and(|s| s >= 0xFFFF_FFF0) {
            cfg.step_id = None;
        }
        let in_step = get("SLURM_STEP_ID").is_some();
        let (rank, nranks) = detect_rank(&get, in_step)?;
        cfg.rank = rank;
        cfg.nranks = nranks;
        cfg.checkpoint_dir =
            get("CKPT_DIR").or_else(|| get("SLURM_CHECKPOINT_DIR")).map_or_else(|| PathBuf::from("."), PathBuf::from);
        cfg.restart_dir = get("CKPT_RESTART_DIR")
            .or_else(|| get("SLURM_RESTART_DIR"))
            .map_or_else(|| cfg.checkpoint_dir.clone(), PathBuf::from);
        cfg.keep =
            parse_var(&get, "CKPT_KEEP", |v| v.parse::<usize>().ok().filter(|&k| k >= 1))?.unwrap_or(DEFAULT_KEEP);
        cfg.file_mode = parse_var(&get, "CKPT_FILE_MODE", |v| {
            u32::from_str_radix(v.trim_start_matches("0o"), 8).ok().filter(|&m| m <= 0o777 && m & 0o600 == 0o600)
        })?
        .unwrap_or(DEFAULT_FILE_MODE);
        cfg.mmap = mmap_setting(&get)?;
        cfg.reuse_space = parse_var(&get, "CKPT_REUSE_SPACE", parse_bool)?.unwrap_or(true);
        cfg.direct_io = parse_var(&get, "CKPT_DIRECT_IO", parse_bool)?.unwrap_or(true);
        cfg.allow_fresh_start = parse_var(&get, "CKPT_ALLOW_FRESH_START", parse_bool)?.unwrap_or(false);
        if let Some(c) = get("CKPT_COMPRESS") {
            cfg.compression =
                Compression::parse(&c).map_err(|e| Error::invalid(format!("CKPT_COMPRESS: {}", e.message())))?;
        }
        cfg.compression_threads = parse_var(&get, "CKPT_COMPRESSION_THREADS", |v| {
            if v.eq_ignore_ascii_case("auto") {
                Some(default_compression_threads())
            } else {
                v.parse::<u16>().ok().filter(|&n| (1..=256).contains(&n))
            }
        })?
        .unwrap_or_else(default_compression_threads);
        for var in ["CKPT_INTERVAL", "SLURM_CHECKPOINT"] {
            if let Some(v) = get(var) {
                // SLURM_CHECKPOINT exactly as Slurm defined it; ckpt's own setting also takes units.
                let parsed = if var == "SLURM_CHECKPOINT" { parse_interval(&v) } else { parse_ckpt_interval(&v) };
                cfg.interval = parsed.map_err(|e| Error::invalid(format!("{var}: {}", e.message())))?;
                cfg.interval_from = Some((var.to_string(), v));
                break;
            }
        }
        for (var, source) in [
            ("SLURM_JOB_END_TIME", triggers::EndTimeSource::SlurmEnv),
            ("CKPT_END_TIME", triggers::EndTimeSource::CkptEnv),
        ] {
            if let Some(t) = parse_var(&get, var, |v| v.parse::<i64>().ok().filter(|&t| t > 0))? {
                cfg.end_time = Some(t);
                cfg.end_time_source = Some(source);
                break;
            }
        }
        cfg.restart_count = parse_var(&get, "SLURM_RESTART_COUNT", |v| v.parse::<u32>().ok())?;
        if let Some(t) = get("CKPT_COMMIT_TIMEOUT") {
            cfg.commit_timeout = parse_slurm_time(&t)
                .ok()
                .filter(|_| t.contains(':') || t.contains('-'))
                .or_else(|| t.parse::<u64>().ok().map(Duration::from_secs))
                .ok_or_else(|| Error::invalid(format!("CKPT_COMMIT_TIMEOUT: invalid value {t:?}: expected seconds")))?;
        }
        if let Some(v) = get("CKPT_SIGNALS") {
            cfg.signals = triggers::parse_signals(&v)?;
        }
        let seconds_or_time = |var: &str| -> Result<Option<Duration>> {
            match get(var) {
                None => Ok(None),
                Some(v) => match v.parse::<f64>() {
                    Ok(s) if s.is_finite() && s >= 0.0 && !v.contains(':') => Ok(Some(Duration::from_secs_f64(s))),
                    _ => parse_time_with_units(&v)
                        .map(Some)
                        .map_err(|e| Error::invalid(format!("{var}: {}", e.message()))),
                },
            }
        };
        if let Some(m) = seconds_or_time("CKPT_MARGIN")? {
            cfg.margin = m;
        }
        if let Some(v) = get("CKPT_MTBF") {
            cfg.mtbf = parse_time_with_units(&v).map_err(|e| Error::invalid(format!("CKPT_MTBF: {}", e.message())))?;
            if cfg.mtbf.is_zero() {
                return Err(Error::invalid("CKPT_MTBF: must be positive"));
            }
        }
        if let Some(f) =
            parse_var(&get, "CKPT_SAFETY_FACTOR", |v| v.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 1.0))?
        {
            cfg.safety_factor = f;
        }
        cfg.log = match get("CKPT_LOG").as_deref() {
            None => LogTarget::CheckpointDir,
            Some(v) if v.eq_ignore_ascii_case("stderr") => LogTarget::Stderr,
            Some(v) if ["off", "none", "0", "no"].contains(&v.to_ascii_lowercase().as_str()) => LogTarget::Off,
            Some(path) => LogTarget::File(PathBuf::from(path)),
        };
        cfg.cache = CacheLevel::from_lookup(&get)?;
        let socket_on = parse_var(&get, "CKPT_SOCKET", parse_bool)?.unwrap_or(true);
        cfg.socket_dir = if socket_on {
            Some(get("CKPT_SOCKET_DIR").map_or_else(
                || {
                    let uid = crate::sys::euid();
                    PathBuf::from(get("TMPDIR").unwrap_or_else(|| "/tmp".into())).join(format!("ckpt-{uid}"))
                },
                PathBuf::from,
            ))
        } else {
            None
        };
        Ok(cfg)
    }

    /// The job id, or the application name outside Slurm: the first part of every file name.
    pub fn job_key(&self) -> &str {
        self.job_id.as_deref().unwrap_or(&self.app_name)
    }

    /// The checkpoint's file name: `<job_id>.ckpt`, or `<job_id>.<step_id>.ckpt` in a job step.
    pub fn base_name(&self) -> String {
        base_name(self.job_key(), self.step_id)
    }

    /// Why this run may not resume a file under its own checkpoint name that `writer` wrote (empty: it
    /// may): with `CKPT_RESUME_FROM=any`, another user or application; with `CKPT_RESUME_FROM=<job>`,
    /// nothing (that job's files, whoever's run wrote them); otherwise another run, strict about the
    /// command line outside Slurm (see [`crate::identity`]). Restart discovery and received partner copies
    /// apply the same rules.
    pub(crate) fn resume_conflicts(&self, writer: &RunIdentity) -> Vec<String> {
        let me = self.run_identity();
        match self.resume_from {
            ResumeFrom::Job(_) => Vec::new(),
            ResumeFrom::Any => me.owner_mismatches(writer),
            _ => me.own_name_conflicts(writer, self.job_id.is_none()),
        }
    }

    /// This run's identity as recorded in files: [`Config::identity`] with the application name and job id
    /// this configuration uses (they may have been changed after it was read).
    pub fn run_identity(&self) -> RunIdentity {
        let mut id = self.identity.clone();
        id.app.clone_from(&self.app_name);
        id.job.clone_from(&self.job_id);
        id
    }

    /// The path of the newest checkpoint: `<checkpoint_dir>/<base_name>`.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint_dir.join(self.base_name())
    }
}

/// Builds a [`Config`] setting by setting, without reading the environment ([`Config::builder`]).
/// Errors (an invalid application name, a bad setting) are reported by [`ConfigBuilder::build`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug)]
pub struct ConfigBuilder {
    config: Result<Config>,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $($(#[$doc])* pub fn $name(mut self, $name: $ty) -> ConfigBuilder {
            if let Ok(c) = &mut self.config {
                c.$name = $name;
            }
            self
        })*
    };
}

impl ConfigBuilder {
    setters! {
        /// Generations kept (at least 1; default 2).
        keep: usize,
        /// Permission bits of new checkpoint files (default `0o600`; owner read and write required).
        file_mode: u32,
        /// Whether checkpoints are memory-mapped when loaded (default on).
        mmap: bool,
        /// Whether large writes bypass the page cache (default on).
        direct_io: bool,
        /// Whether a save writes over a retired checkpoint's blocks (default on).
        reuse_space: bool,
        /// The compression of sections that do not choose (default none).
        compression: Compression,
        /// Threads compressing a shuffled section whose options do not choose (default: the available
        /// cores, at most 8).
        compression_threads: u16,
        /// Whether restart may start fresh when checkpoints exist but none verifies (default no).
        allow_fresh_start: bool,
        /// Where the JSON log goes (default: nowhere).
        log: LogTarget,
        /// How long rank 0 waits for the other ranks' parts (default 600 s).
        commit_timeout: Duration,
        /// Time kept free before the job's end, on top of the predicted checkpoint cost (default 60 s).
        margin: Duration,
        /// Factor on the predicted checkpoint cost before the job's end (at least 1; default 2).
        safety_factor: f64,
        /// Mean time between failures for [`Interval::Auto`] (default 24 hours).
        mtbf: Duration,
        /// Directory of the control socket for `ckpt create` (default: none).
        socket_dir: Option<PathBuf>,
        /// Whose checkpoints restart may take (default: this run's own, and matching resubmissions).
        resume_from: ResumeFrom,
        /// The node-local cache level (default: none; see [`crate::levels`]).
        cache: Option<CacheLevel>,
    }

    /// Periodic checkpoints (default: none).
    pub fn interval(mut self, interval: Interval) -> ConfigBuilder {
        if let Ok(c) = &mut self.config {
            c.interval = Some(interval);
        }
        self
    }

    /// The job's end (seconds since the epoch): the time-limit checkpoint is taken before it.
    pub fn end_time(mut self, unix_seconds: i64) -> ConfigBuilder {
        if let Ok(c) = &mut self.config {
            c.end_time = Some(unix_seconds);
            c.end_time_source = Some(triggers::EndTimeSource::CkptEnv);
        }
        self
    }

    /// Where restart looks (default: the checkpoint directory).
    pub fn restart_dir(mut self, dir: impl AsRef<Path>) -> ConfigBuilder {
        if let Ok(c) = &mut self.config {
            c.restart_dir = dir.as_ref().to_path_buf();
        }
        self
    }

    /// This process's rank among `nranks` (default 0 of 1).
    pub fn rank(mut self, rank: u32, nranks: u32) -> ConfigBuilder {
        if let Ok(c) = &mut self.config {
            c.rank = rank;
            c.nranks = nranks;
        }
        self
    }

    /// The signals that request a checkpoint, as `CKPT_SIGNALS` takes them (`"TERM,USR1"`, the default;
    /// `""` for none).
    pub fn signals(mut self, signals: &str) -> ConfigBuilder {
        if let Ok(c) = &mut self.config {
            if signals.trim().is_empty() {
                c.signals.clear();
            } else {
                match triggers::parse_signals(signals) {
                    Ok(s) => c.signals = s,
                    Err(e) => self.config = Err(e),
                }
            }
        }
        self
    }

    /// The configuration.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidArgument`] for an invalid application name or signal list, `keep` 0,
    /// a rank outside `0..nranks`, a file mode without owner read and write, a safety factor below 1 or
    /// not finite, or a zero MTBF.
    pub fn build(self) -> Result<Config> {
        let c = self.config?;
        if c.keep == 0 {
            return Err(Error::invalid("keep must be at least 1"));
        }
        if c.nranks == 0 || c.rank >= c.nranks {
            return Err(Error::invalid(format!("rank {} is not in 0..{}", c.rank, c.nranks)));
        }
        if c.file_mode > 0o777 || c.file_mode & 0o600 != 0o600 {
            return Err(Error::invalid(format!(
                "file mode {:#o} must be at most 0o777 and include 0o600",
                c.file_mode
            )));
        }
        if !(c.safety_factor.is_finite() && c.safety_factor >= 1.0) {
            return Err(Error::invalid(format!("safety factor {} must be finite and at least 1", c.safety_factor)));
        }
        if c.mtbf.is_zero() {
            return Err(Error::invalid("the MTBF must be positive"));
        }
        Ok(c)
    }
}

/// `<job>.ckpt` or `<job>.<step>.ckpt`.
pub fn base_name(job_key: &str, step_id: Option<u32>) -> String {
    match step_id {
        Some(step) => format!("{job_key}.{step}.ckpt"),
        None => format!("{job_key}.ckpt"),
    }
}

/// Parses an interval setting: one of Slurm's six time formats, `auto`, or `0`/`off` for none.
///
/// # Errors
///
/// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) for text that is none of these, naming it and
/// listing the accepted forms.
pub fn parse_interval(text: &str) -> Result<Option<Interval>> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(Some(Interval::Auto));
    }
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let d = parse_slurm_time(t)?;
    Ok(if d.is_zero() { None } else { Some(Interval::Every(d)) })
}

/// Parses `CKPT_INTERVAL`: as [`parse_interval`], and numbers with units (`30s`, `2m`, `1h`, `1h30m`).
///
/// # Errors
///
/// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) for text that is none of these (an unknown unit, a
/// number without one after another with one), naming it and listing the accepted forms.
pub fn parse_ckpt_interval(text: &str) -> Result<Option<Interval>> {
    let t = text.trim();
    if t.contains(|c: char| c.is_ascii_alphabetic())
        && !["auto", "off", "none"].iter().any(|w| t.eq_ignore_ascii_case(w))
    {
        let d = parse_time_with_units(t)?;
        return Ok(if d.is_zero() { None } else { Some(Interval::Every(d)) });
    }
    parse_interval(t)
}

/// `CKPT_MMAP` (default on) from `lookup`, as [`Config::from_lookup`] reads it: also for loads without a
/// configuration ([`crate::LoadOptions::from_env`]).
pub(crate) fn mmap_setting(lookup: &impl Fn(&str) -> Option<String>) -> Result<bool> {
    let get = |k: &str| lookup(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    Ok(parse_var(&get, "CKPT_MMAP", parse_bool)?.unwrap_or(true))
}

pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

fn parse_var<T>(
    get: &impl Fn(&str) -> Option<String>,
    var: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    match get(var) {
        None => Ok(None),
        Some(v) => parse(&v).map(Some).ok_or_else(|| Error::invalid(format!("{var}: invalid value {v:?}"))),
    }
}

fn detect_rank(get: &impl Fn(&str) -> Option<String>, in_step: bool) -> Result<(u32, u32)> {
    let num = |var: &str| parse_var(get, var, |v| v.parse::<u32>().ok());
    let size = |vars: &[&str]| -> Result<Option<u32>> {
        for v in vars {
            if let Some(n) = parse_var(get, v, |s| s.parse::<u32>().ok().filter(|&n| n >= 1))? {
                return Ok(Some(n));
            }
        }
        Ok(None)
    };
    let step_size: &[&str] = if in_step { &["SLURM_NTASKS", "SLURM_NPROCS"] } else { &[] };
    let sources: [(&str, Vec<&str>); 5] = [
        ("CKPT_RANK", vec!["CKPT_NRANKS"]),
        ("OMPI_COMM_WORLD_RANK", vec!["OMPI_COMM_WORLD_SIZE"]),
        ("PMIX_RANK", [&["OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"][..], step_size].concat()),
        ("PMI_RANK", vec!["PMI_SIZE"]),
        ("SLURM_PROCID", step_size.to_vec()),
    ];
    for (rank_var, size_vars) in sources {
        if rank_var == "SLURM_PROCID" && !in_step {
            continue;
        }
        if let Some(rank) = num(rank_var)? {
            let nranks = size(&size_vars)?.unwrap_or(rank + 1);
            if rank >= nranks {
                return Err(Error::invalid(format!("{rank_var}={rank} is not below the number of ranks {nranks}")));
            }
            return Ok((rank, nranks));
        }
    }
    if let Some(n) = size(&["CKPT_NRANKS"])?
        && n != 1
    {
        return Err(Error::invalid("CKPT_NRANKS is set without a rank (CKPT_RANK or the MPI launcher's)"));
    }
    Ok((0, 1))
}

fn check_name_component(name: &str, what: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::invalid(format!("{what} {name:?} cannot be used in a file name")));
    }
    format::check_fixed_string(name, what)
}

fn sanitize(name: &str) -> String {
    let mut s: String = name.chars().map(|c| if c == '/' || c == '\0' { '_' } else { c }).collect();
    while s.len() > format::MAX_NAME_LEN {
        s.pop();
    }
    if s.is_empty() || s == "." || s == ".." { DEFAULT_APP_NAME.to_string() } else { s }
}

/// This machine's host name (`gethostname`), cut to 64 bytes.
pub fn hostname() -> String {
    // Miri cannot call into libc: a fixed name keeps everything that builds a Config testable there.
    if cfg!(miri) {
        return "miri-host".into();
    }
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call; gethostname writes at most
    // `len` bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let mut s = String::from_utf8_lossy(&buf[..end]).into_owned();
    while s.len() > format::MAX_NAME_LEN {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(None, |k| map.get(k).cloned())
    }

    #[test]
    fn the_builder_sets_and_checks() {
        let c = Config::builder("heat", "/d")
            .keep(3)
            .compression(Compression::Zstd(1))
            .interval(Interval::Auto)
            .rank(1, 4)
            .signals("USR2")
            .restart_dir("/r")
            .build()
            .unwrap();
        assert_eq!(
            (c.keep, c.compression, c.interval, c.rank, c.nranks),
            (3, Compression::Zstd(1), Some(Interval::Auto), 1, 4)
        );
        assert_eq!(c.signals.len(), 1);
        assert_eq!(c.restart_dir, PathBuf::from("/r"));
        assert_eq!(c.checkpoint_dir, PathBuf::from("/d"));
        assert!(Config::builder("heat", "/d").signals("").build().unwrap().signals.is_empty());
        for (b, what) in [
            (Config::builder("heat", "/d").keep(0), "keep"),
            (Config::builder("heat", "/d").rank(2, 2), "rank"),
            (Config::builder("heat", "/d").file_mode(0o400), "file mode"),
            (Config::builder("heat", "/d").safety_factor(f64::NAN), "safety factor"),
            (Config::builder("heat", "/d").signals("NOPE"), "NOPE"),
            (Config::builder("a/b", "/d"), "application name"),
        ] {
            let e = b.build().unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn outside_slurm() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.base_name(), "ckpt.ckpt");
        assert_eq!(c.checkpoint_dir, PathBuf::from("."));
        assert_eq!((c.rank, c.nranks), (0, 1));
        assert_eq!(c.interval, None);
        let c = Config::from_lookup(Some("heat"), |_| None).unwrap();
        assert_eq!(c.base_name(), "heat.ckpt");
    }

    #[test]
    fn slurm_names_and_dirs() {
        let c = cfg(&[("SLURM_JOB_ID", "4242"), ("SLURM_CHECKPOINT_DIR", "/scratch/c"), ("SLURM_JOB_NAME", "sim")])
            .unwrap();
        assert_eq!(c.base_name(), "4242.ckpt");
        assert_eq!(c.app_name, "sim");
        assert_eq!(c.checkpoint_dir, PathBuf::from("/scratch/c"));
        assert_eq!(c.restart_dir, PathBuf::from("/scratch/c"));
        let c = cfg(&[
            ("SLURM_JOB_ID", "4242"),
            ("SLURM_STEP_ID", "3"),
            ("CKPT_DIR", "/a"),
            ("SLURM_CHECKPOINT_DIR", "/b"),
            ("SLURM_RESTART_DIR", "/r"),
        ])
        .unwrap();
        assert_eq!(c.base_name(), "4242.3.ckpt");
        assert_eq!(c.checkpoint_dir, PathBuf::from("/a"));
        assert_eq!(c.restart_dir, PathBuf::from("/r"));
        let c = cfg(&[("CKPT_RESTART_DIR", "/x"), ("SLURM_RESTART_DIR", "/r")]).unwrap();
        assert_eq!(c.restart_dir, PathBuf::from("/x"));
    }

    #[test]
    fn interval_formats() {
        let c = cfg(&[("SLURM_CHECKPOINT", "1-02:03:04")]).unwrap();
        assert_eq!(c.interval, Some(Interval::Every(Duration::from_secs(93_784))));
        let c = cfg(&[("SLURM_CHECKPOINT", "10"), ("CKPT_INTERVAL", "auto")]).unwrap();
        assert_eq!(c.interval, Some(Interval::Auto));
        let e = cfg(&[("SLURM_CHECKPOINT", "1:2:3:4")]).unwrap_err();
        assert!(e.to_string().starts_with("SLURM_CHECKPOINT: invalid time \"1:2:3:4\""), "{e}");
    }

    #[test]
    fn rank_detection_prefers_the_launcher_over_slurm_procid() {
        // mpirun inside a batch job: SLURM_PROCID is 0 everywhere and there is no step id.
        let c = cfg(&[
            ("SLURM_PROCID", "0"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("PMIX_RANK", "3"),
        ])
        .unwrap();
        assert_eq!((c.rank, c.nranks), (3, 4));
        // srun --mpi=pmix
        let c =
            cfg(&[("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "2"), ("SLURM_NTASKS", "4"), ("PMIX_RANK", "2")]).unwrap();
        assert_eq!((c.rank, c.nranks), (2, 4));
        // MPICH hydra
        let c = cfg(&[("PMI_RANK", "1"), ("PMI_SIZE", "2")]).unwrap();
        assert_eq!((c.rank, c.nranks), (1, 2));
        // a batch script with -n 4 but one process: not multi-rank
        let c = cfg(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]).unwrap();
        assert_eq!((c.rank, c.nranks), (0, 1));
        // explicit override
        let c = cfg(&[
            ("CKPT_RANK", "0"),
            ("CKPT_NRANKS", "1"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
        ])
        .unwrap();
        assert_eq!((c.rank, c.nranks), (0, 1));
        assert!(cfg(&[("OMPI_COMM_WORLD_RANK", "4"), ("OMPI_COMM_WORLD_SIZE", "4")]).is_err());
    }

    #[test]
    fn compression_threads_default_to_the_available_cores_and_can_be_set() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let default = cfg(&[]).unwrap().compression_threads;
        assert_eq!(usize::from(default), cores.clamp(1, usize::from(MAX_DEFAULT_COMPRESSION_THREADS)));
        assert_eq!(Config::new("a", "/d").unwrap().compression_threads, default);
        assert_eq!(cfg(&[("CKPT_COMPRESSION_THREADS", "1")]).unwrap().compression_threads, 1);
        assert_eq!(cfg(&[("CKPT_COMPRESSION_THREADS", "16")]).unwrap().compression_threads, 16);
        assert_eq!(cfg(&[("CKPT_COMPRESSION_THREADS", "auto")]).unwrap().compression_threads, default);
        for bad in ["0", "-1", "x", "257"] {
            let e = cfg(&[("CKPT_COMPRESSION_THREADS", bad)]).unwrap_err();
            assert!(e.to_string().contains("CKPT_COMPRESSION_THREADS"), "{e}");
        }
    }

    #[test]
    fn every_variable_read_is_listed_in_settings() {
        let source = include_str!("config.rs");
        let body = &source[..source.find("#[cfg(test)]").unwrap()];
        let mut read: Vec<&str> = body.split('"').filter(|w| w.starts_with("CKPT_") && !w.contains(' ')).collect();
        read.sort_unstable();
        read.dedup();
        assert_eq!(read, SETTINGS, "SETTINGS must list exactly the CKPT_* variables from_lookup reads");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("CKPT_KEEP", "0"),
            ("CKPT_KEEP", "x"),
            ("CKPT_MMAP", "maybe"),
            ("CKPT_DIRECT_IO", "of"),
            ("CKPT_REUSE_SPACE", "sometimes"),
            ("CKPT_FILE_MODE", "999"),
            ("SLURM_STEP_ID", "x"),
            ("CKPT_COMPRESS", "lz4"),
            ("SLURM_JOB_ID", "a/b"),
        ] {
            let e = cfg(&[(var, val)]).unwrap_err();
            assert!(e.to_string().contains(var), "{var}={val}: {e}");
        }
    }

    #[test]
    fn other_settings() {
        let c = cfg(&[
            ("CKPT_KEEP", "5"),
            ("CKPT_MMAP", "0"),
            ("CKPT_DIRECT_IO", "off"),
            ("CKPT_REUSE_SPACE", "off"),
            ("CKPT_FILE_MODE", "0640"),
            ("SLURM_JOB_END_TIME", "1800000000"),
            ("SLURM_RESTART_COUNT", "2"),
            ("CKPT_COMPRESS", "auto"),
        ])
        .unwrap();
        assert_eq!(c.keep, 5);
        assert!(!c.mmap);
        assert!(!c.direct_io);
        assert!(cfg(&[]).unwrap().direct_io, "on by default");
        assert!(!c.reuse_space);
        assert!(cfg(&[]).unwrap().reuse_space, "on by default");
        assert_eq!(c.file_mode, 0o640);
        assert_eq!(c.end_time, Some(1_800_000_000));
        assert_eq!(c.restart_count, Some(2));
        assert_eq!(c.compression, Compression::Auto);
    }
}
