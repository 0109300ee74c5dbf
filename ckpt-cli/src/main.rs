//! `ckpt`: inspect, verify and list checkpoints, show the effective configuration, request checkpoints
//! from running processes, and restart programs from a checkpoint directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use ckpt_core::{Checkpoint, Config, Error, Interval, LoadOptions, any_base, control, triggers::signal_label};
use clap::{CommandFactory, Parser, Subcommand};
use indicatif::HumanBytes;

mod flush;
mod job;
mod list;
mod progress;
mod requeue;
mod scontrol;
mod shim;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "ckpt", version, about = "Checkpoint files for HPC and ML jobs: inspect, verify, list, request")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a checkpoint file's header and sections (sizes, codecs, compression ratios).
    Inspect {
        /// The checkpoint file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every CRC of checkpoint files (directories: every checkpoint file inside). Exit status 0 when
    /// all are good, 1 otherwise with one line per problem.
    Verify {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print JSON instead of text (one object per file; the exit status is the same).
        #[arg(long)]
        json: bool,
    },
    /// List the checkpoints in a directory, complete or not, and which one a restart would choose, and why.
    List {
        /// The directory (default: the restart directory of this environment).
        dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copy the checkpoints that the node-local cache (CKPT_CACHE_DIR) holds for this job and the checkpoint
    /// directory lacks (verified, committed under the same generation). For the end of a batch script or
    /// Slurm's epilog. Exit status 0 when everything is copied, 1 otherwise.
    Flush {
        /// First wait (up to --timeout) for a copy in progress by the program itself.
        #[arg(long)]
        wait: bool,
        /// The bound on --wait, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        timeout: u64,
        /// Application name the program uses (default as `ckpt env`).
        #[arg(long)]
        name: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration in this environment (job id, rank, directories, interval...).
    Env {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Application name (as the program passes it; default CKPT_NAME, SLURM_JOB_NAME or "ckpt").
        #[arg(long)]
        name: Option<String>,
    },
    /// Ask running processes for a checkpoint and wait until it is durable (like the old
    /// `scontrol checkpoint create <jobid> ImageDir=... MaxWait=...`).
    Create {
        /// A process id, a job id, or jobid.stepid (the processes of that job on this node).
        target: String,
        /// Write this checkpoint to DIR instead of the checkpoint directory.
        #[arg(long, value_name = "DIR")]
        image_dir: Option<PathBuf>,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
        max_wait: f64,
        /// Ask the processes to exit after the checkpoint.
        #[arg(long)]
        vacate: bool,
        /// Print JSON instead of text: `{"checkpoints": [{"pid": N, "path": P} or {"pid": N, "error": E}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Requeue this Slurm job (`scontrol requeue $SLURM_JOB_ID`) for a restart, but only while
    /// SLURM_RESTART_COUNT < N and the last restart made progress (its newest checkpoint is newer than
    /// the one recorded at the previous requeue). For a batch script's trap or after the program exits.
    /// The SIGTERM Slurm sends the job's processes on a requeue does not cut its answer off; scontrol is
    /// killed after 12 s (a hung controller) and that is an error.
    /// Exit 0 when requeued, 1 when refused (with the reason), 2 on errors.
    Requeue {
        /// Give up after this many restarts.
        #[arg(long, value_name = "N")]
        max_restarts: u32,
        /// Application name the program uses (for finding its checkpoints; default as `ckpt env`).
        #[arg(long)]
        name: Option<String>,
        /// Print what would be done without calling scontrol.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text: `{"job", "requeued", "dry_run", "restart", "max_restarts",
        /// "checkpoint": {"name", "generation", "step"} or null, "previous", "reason", "message"}`.
        #[arg(long)]
        json: bool,
    },
    /// Restart. With a command (`ckpt restart --image-dir DIR -- PROGRAM ARGS`): run a program that
    /// uses libckpt so it restarts from the checkpoints in DIR (sets CKPT_RESTART_DIR and
    /// SLURM_RESTART_DIR, and CKPT_RESUME_FROM=any unless set: the newest checkpoint of the program in DIR,
    /// whichever run wrote it), like the old `scontrol checkpoint restart <jobid> ImageDir=...`. Without one:
    /// resume a program checkpointed under `ckpt run` from IMAGE, or from the newest complete, verified
    /// process image in DIR (default: the restart directory of this environment). Exit status 3 when the
    /// image cannot be restored here (with the reason).
    Restart {
        /// A process image written under `ckpt run` (the LD_PRELOAD shim).
        #[arg(value_name = "IMAGE", conflicts_with = "command")]
        image: Option<PathBuf>,
        /// Directory to restart from.
        #[arg(long, value_name = "DIR")]
        image_dir: Option<PathBuf>,
        /// The program and its arguments (a program using libckpt).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run an unmodified, dynamically linked program under the LD_PRELOAD shim (libckpt_preload.so): it
    /// is checkpointed on SIGRTMAX-2 (and continues), SIGRTMAX-3 (and exits), SIGUSR1/SIGTERM likewise
    /// unless the program handles them itself, every --interval, before the job's time limit, and on
    /// `ckpt create`; `ckpt restart IMAGE` resumes it. Single-threaded
    /// programs on Linux x86_64 with glibc; see ckpt-preload/README.md for the scope.
    Run {
        /// Checkpoint interval: a number with a unit (30s, 2m, 1h) or any of SLURM_CHECKPOINT's formats (sets
        /// CKPT_INTERVAL).
        #[arg(long, value_name = "TIME")]
        interval: Option<String>,
        /// Directory for the images (sets CKPT_DIR; default: the checkpoint directory of this environment).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Supervise a program in a batch job (`exec ckpt job ... -- PROGRAM ARGS` as the script's last line):
    /// run it, turn the signals Slurm sends the batch shell into checkpoint requests (`--signal=B:USR1@T`:
    /// see --on-warning) or a final checkpoint (SIGTERM), wait until it has exited, requeue the job
    /// boundedly with --requeue (as `ckpt requeue`; not after scancel), and exit 0 (finished), 3
    /// (stopped after a checkpoint, not requeued), 4 (stopped after a checkpoint, requeued), 2 (could not
    /// start), or the program's failing status (128+N for signal N; its 2-4 as 1). Signals go to the
    /// program's root process only, never to its process group. In a batch script: `exec ckpt job ...`
    /// (bash would die of USR1 itself).
    Job {
        /// Requeue the job (scontrol requeue) after the program stopped at a checkpoint near the time
        /// limit, while SLURM_RESTART_COUNT < --max-restarts and the last run made progress.
        #[arg(long)]
        requeue: bool,
        /// The bound on restarts for --requeue (implies --requeue).
        #[arg(long, value_name = "N")]
        max_restarts: Option<u32>,
        /// What the time-limit warning (USR1 or USR2 to `ckpt job`) does: `stop` takes the final checkpoint
        /// now and stops the program (then requeues), `checkpoint` only asks for a checkpoint.
        #[arg(long, value_enum, value_name = "WHAT", default_value = "stop")]
        on_warning: job::OnWarning,
        /// The program is unmodified: run it under the LD_PRELOAD shim (`ckpt run`), or resume it from its
        /// newest image (`ckpt restart`) when this run has one.
        #[arg(long)]
        transparent: bool,
        /// Pass SIGTERM on to the program inside a Slurm job too (by default only outside a job: in a job
        /// Slurm sends its own to every process of the job, and a second one makes mpirun abort).
        #[arg(long)]
        forward_term: bool,
        /// Application name the program uses (for finding its checkpoints; default as `ckpt env`).
        #[arg(long)]
        name: Option<String>,
        /// Checkpoint directory (sets CKPT_DIR; default: the checkpoint directory of this environment).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The program's standard output: created when it starts from the beginning, kept for the restore
        /// when --transparent resumes it (which cuts it back to its size at the checkpoint), appended to
        /// for a program using libckpt.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a shell completion script for `ckpt` (bash: save it as
    /// ~/.local/share/bash-completion/completions/ckpt, or `source <(ckpt completions bash)`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page ckpt(1) (roff: `ckpt man | man -l -`), or with --dir write it and one page per
    /// subcommand (ckpt-inspect.1, ...) into DIR.
    Man {
        /// Write ckpt.1 and ckpt-SUBCOMMAND.1 into this directory instead of printing ckpt.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    ExitCode::from(run(std::env::args_os()))
}

/// Runs the command line `args` (the program's name first, as `std::env::args_os` gives it) and returns
/// the exit status. What `main` does; also the Python package's `ckpt` command (`ckpt._ckpt.cli_main`),
/// so both have the same subcommands and output. Errors of the command line itself (clap's usage
/// messages, `--help`, `--version`) print and exit the process, as for the binary.
pub fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Inspect { file, json } => inspect(&file, json),
        Command::Verify { paths, json } => verify(&paths, json),
        Command::List { dir, json } => list::list(dir, json),
        Command::Flush { wait, timeout, name, json } => {
            flush::run(name.as_deref(), wait, Duration::from_secs(timeout), json)
        }
        Command::Env { json, name } => env(json, name.as_deref()),
        Command::Create { target, image_dir, max_wait, vacate, json } => {
            create(&target, image_dir.as_deref(), max_wait, vacate, json)
        }
        Command::Restart { image, image_dir, command } => {
            if command.is_empty() {
                shim::restart(image.as_deref(), image_dir.as_deref())
            } else {
                restart(image_dir.as_deref(), &command)
            }
        }
        Command::Run { interval, dir, command } => shim::run(interval.as_deref(), dir.as_deref(), &command),
        Command::Requeue { max_restarts, name, dry_run, json } => {
            requeue::requeue(max_restarts, name.as_deref(), dry_run, json, &mut std::io::stdout())
        }
        Command::Job { requeue, max_restarts, on_warning, transparent, forward_term, name, dir, output, command } => {
            job::job(&job::JobArgs {
                requeue: requeue || max_restarts.is_some(),
                max_restarts: max_restarts.unwrap_or(10),
                on_warning,
                transparent,
                forward_term,
                name: name.as_deref(),
                dir: dir.as_deref(),
                output: output.as_deref(),
                command: &command,
            })
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ckpt", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => man(dir.as_deref()),
    };
    match result {
        Ok(code) => status(code),
        Err(e) => {
            eprintln!("ckpt: {e}");
            2
        }
    }
}

/// `ckpt man`: ckpt(1) to stdout, or with `dir` every page (`ckpt.1`, `ckpt-SUBCOMMAND.1`) into it.
fn man(dir: Option<&Path>) -> Result<ExitCode, Error> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(cmd).render(&mut out).map_err(|e| Error::io("write the manual page", e))?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", e).with_path(dir))?;
    clap_mangen::generate_to(cmd, dir).map_err(|e| Error::io("write the manual pages", e).with_path(dir))?;
    Ok(ExitCode::SUCCESS)
}

/// The number an [`ExitCode`] stands for (the subcommands use 0 to 3).
fn status(code: ExitCode) -> u8 {
    (0..=u8::MAX).find(|&n| ExitCode::from(n) == code).unwrap_or(1)
}

fn printable(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t') => s.to_string(),
        _ => format!("0x{}", v.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

fn header_json(cp: &Checkpoint) -> Value {
    let h = cp.header();
    let meta: BTreeMap<String, String> = h.metadata.iter().map(|(k, v)| (k.clone(), printable(v))).collect();
    // Steps are shown as the file's signed field (FORMAT.md): a negative step of a file written while steps were signed, as written.
    json!({
        "path": cp.path(), "file_bytes": cp.file_len(), "kind": format!("{:?}", h.kind).to_lowercase(),
        "generation": h.generation, "step": h.app_step.cast_signed(), "created_unix_ns": h.created_unix_ns,
        "created": iso_utc(h.created_unix_ns),
        "job_id": h.job_id, "app_name": h.app_name, "step_id": h.step_id, "rank": h.rank, "nranks": h.nranks,
        "host": h.host, "writer_version": format!("{}.{}.{}", h.writer_version.0, h.writer_version.1, h.writer_version.2),
        "metadata": meta,
    })
}

/// Nanoseconds since the epoch, now.
fn now_unix_ns() -> i128 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// `2026-12-06T13:55:02Z`: a header's `created_unix_ns` as an ISO 8601 date and time in UTC (whole
/// seconds, rounded down).
fn iso_utc(unix_ns: impl Into<i128>) -> String {
    let secs = unix_ns.into().div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// How long before `now_ns` a time `then_ns` was, in words, to the minute (so that two runs a moment
/// apart print the same): `less than a minute ago`, `12m ago`, `2h 5m ago`, `4d 3h ago` (or `in ...` for a
/// time in the future, e.g. a clock skew between nodes).
fn age(then_ns: impl Into<i128>, now_ns: i128) -> String {
    let diff = now_ns - then_ns.into();
    let m = (diff.abs() / 60_000_000_000) as u128;
    let words = match m {
        0 => "less than a minute".to_string(),
        1..60 => format!("{m}m"),
        60..1440 => format!("{}h {}m", m / 60, m % 60),
        _ => format!("{}d {}h", m / 1440, m / 60 % 24),
    };
    if diff < 0 { format!("in {words}") } else { format!("{words} ago") }
}

fn inspect(file: &Path, as_json: bool) -> Result<ExitCode, Error> {
    let cp = Checkpoint::open(file)?;
    let sections: Vec<Value> = cp
        .sections()
        .iter()
        .map(|s| {
            json!({
                "name": s.name, "encoding": s.encoding.name(), "codec": s.codec.name(),
                "shuffle": if s.shuffle { Some(s.element_size) } else { None }, "tag": s.tag,
                "raw_bytes": s.raw_len, "stored_bytes": s.stored_len, "offset": s.offset,
                "ratio": if s.stored_len > 0 { s.raw_len as f64 / s.stored_len as f64 } else { 1.0 },
                "raw_crc32": format!("{:08x}", s.raw_crc32), "stored_crc32": format!("{:08x}", s.stored_crc32),
            })
        })
        .collect();
    let metrics: Value = cp
        .metadata("metrics")
        .and_then(|m| serde_json::from_slice::<Value>(m).ok())
        .filter(Value::is_object)
        .unwrap_or(Value::Null);
    if as_json {
        let mut v = header_json(&cp);
        v["sections"] = json!(sections);
        v["metrics"] = metrics;
        if cp.metadata(ckpt_image::IMAGE_METADATA_KEY).is_some() {
            v["process_image"] = shim::image_json(&cp)?;
        }
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(ExitCode::SUCCESS);
    }
    let h = cp.header();
    println!("file        {} ({})", file.display(), HumanBytes(cp.file_len()));
    println!("kind        {:?}, format version {}", h.kind, ckpt_core::format::FORMAT_VERSION);
    println!("checkpoint  generation {}, application step {}", h.generation, h.app_step.cast_signed());
    println!(
        "job         {} (application {}{}), rank {}/{}",
        h.job_id,
        h.app_name,
        h.step_id.map(|s| format!(", step {s}")).unwrap_or_default(),
        h.rank,
        h.nranks
    );
    println!(
        "written     {} ({}) on {} by ckpt {}.{}.{}",
        iso_utc(h.created_unix_ns),
        age(h.created_unix_ns, now_unix_ns()),
        h.host,
        h.writer_version.0,
        h.writer_version.1,
        h.writer_version.2
    );
    for (k, v) in &h.metadata {
        println!("metadata    {k} = {}", printable(v));
    }
    if !metrics.is_null() {
        println!("metrics    {}", list::metrics_text(&metrics).trim_start().trim_start_matches("metrics"));
    }
    println!(
        "{:<24} {:>10} {:>6} {:>8} {:>12} {:>12} {:>7}",
        "section", "encoding", "codec", "shuffle", "raw", "stored", "ratio"
    );
    for s in cp.sections() {
        let ratio = if s.stored_len > 0 { s.raw_len as f64 / s.stored_len as f64 } else { 1.0 };
        println!(
            "{:<24} {:>10} {:>6} {:>8} {:>12} {:>12} {:>7.2}",
            s.name,
            s.encoding.name(),
            s.codec.name(),
            if s.shuffle { s.element_size.to_string() } else { "-".into() },
            HumanBytes(s.raw_len),
            HumanBytes(s.stored_len),
            ratio
        );
    }
    let raw: u64 = cp.sections().iter().map(|s| s.raw_len).sum();
    println!(
        "total       {} sections, {} raw in {} on disk",
        cp.sections().len(),
        HumanBytes(raw),
        HumanBytes(cp.file_len())
    );
    if cp.metadata(ckpt_image::IMAGE_METADATA_KEY).is_some() {
        shim::print_image(&cp)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list directory", e).with_path(dir))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if any_base(&name).is_some() {
            out.push(path);
        } else if name.ends_with(".parts") && path.is_dir() {
            for g in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                for f in std::fs::read_dir(g.path()).into_iter().flatten().flatten() {
                    if f.file_name().to_string_lossy().ends_with(".ckpt") {
                        out.push(f.path());
                    }
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Merges the names of one file (`<base>` is a hard link to the newest `<base>.<N>`): returns the files
/// with each listed once, under its generation name (`<base>.<N>`, the longest name), and for those with
/// more names, the others.
fn merge_hard_links(files: Vec<PathBuf>) -> (Vec<PathBuf>, BTreeMap<PathBuf, Vec<PathBuf>>) {
    use std::os::unix::fs::MetadataExt;
    let mut by_inode: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    let mut out = Vec::new();
    for f in files {
        match std::fs::symlink_metadata(&f) {
            Ok(m) if m.is_file() && m.nlink() > 1 => by_inode.entry((m.dev(), m.ino())).or_default().push(f),
            _ => out.push(f),
        }
    }
    let mut aliases = BTreeMap::new();
    for (_, mut names) in by_inode {
        names.sort_by_key(|p| std::cmp::Reverse((p.as_os_str().len(), p.clone())));
        let primary = names.remove(0);
        if !names.is_empty() {
            names.sort();
            aliases.insert(primary.clone(), names);
        }
        out.push(primary);
    }
    out.sort();
    (out, aliases)
}

fn verify(paths: &[PathBuf], as_json: bool) -> Result<ExitCode, Error> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(checkpoint_files(p)?);
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        eprintln!("ckpt verify: no checkpoint files found");
        return Ok(ExitCode::from(1));
    }
    let tty = progress::enabled(as_json);
    let mut bad = 0usize;
    let mut results = Vec::new();
    for f in &files {
        let r = verify_one(f, tty, as_json);
        if as_json {
            results.push(match &r {
                Ok(cp) => json!({"path": f, "ok": true, "generation": cp.generation(), "step": cp.step().cast_signed(),
                                 "sections": cp.sections().len(), "bytes": cp.file_len()}),
                Err(e) => json!({"path": f, "ok": false, "error": e.to_string()}),
            });
            bad += usize::from(r.is_err());
            continue;
        }
        match r {
            Ok(cp) => println!(
                "OK    {} (generation {}, step {}, {} sections, {})",
                f.display(),
                cp.generation(),
                cp.step().cast_signed(),
                cp.sections().len(),
                HumanBytes(cp.file_len())
            ),
            Err(e) => {
                bad += 1;
                println!("BAD   {e}");
            }
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&json!({"files": results, "failed": bad})).expect("json"));
    }
    if bad > 0 {
        eprintln!("ckpt verify: {bad} of {} file(s) failed", files.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Verifies section by section, with a progress bar for large files when `tty` (stderr is a terminal and
/// the output is not JSON: [`progress::enabled`]), plain lines on stderr otherwise (none with `--json`).
fn verify_one(path: &Path, tty: bool, as_json: bool) -> Result<Checkpoint, Error> {
    let cp = Checkpoint::open_with(&ckpt_core::storage::FileStorage, path, LoadOptions::new().mmap(false))?;
    let total: u64 = cp.sections().iter().map(|s| s.stored_len).sum();
    let large = total >= 256 << 20;
    let bar = (tty && large).then(|| progress::bytes(total, path.display().to_string()));
    let n = cp.sections().len();
    for (i, s) in cp.sections().iter().enumerate() {
        cp.verify_section(&s.name)?;
        match &bar {
            Some(b) => b.inc(s.stored_len),
            None if large && !as_json => {
                eprintln!(
                    "verify {}: section {}/{n} `{}` ok ({})",
                    path.display(),
                    i + 1,
                    s.name,
                    HumanBytes(s.stored_len)
                )
            }
            None => {}
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    cp.verify()?;
    Ok(cp)
}

fn env(as_json: bool, name: Option<&str>) -> Result<ExitCode, Error> {
    let c = Config::from_env(name)?;
    let interval = match c.interval {
        None => json!(null),
        Some(Interval::Every(d)) => json!(d.as_secs()),
        Some(Interval::Auto) => json!("auto"),
        Some(other) => json!(format!("{other:?}")),
    };
    let v = json!({
        "app_name": c.app_name, "job_id": c.job_id, "step_id": c.step_id, "rank": c.rank, "nranks": c.nranks,
        "checkpoint_dir": c.checkpoint_dir, "restart_dir": c.restart_dir, "checkpoint_name": c.base_name(),
        "checkpoint_path": c.checkpoint_path(), "interval_seconds": interval,
        "interval_description": c.interval_in_words(), "end_time": c.end_time,
        "end_time_source": c.end_time_source.map(|s| s.as_str()),
        "signals": c.signals.iter().map(|s| signal_label(s.signal)).collect::<Vec<_>>(),
        "exit_signals": c.signals.iter().filter(|s| s.exit).map(|s| signal_label(s.signal)).collect::<Vec<_>>(),
        "keep": c.keep, "file_mode": format!("{:04o}", c.file_mode), "mmap": c.mmap,
        "reuse_space": c.reuse_space,
        "compression": format!("{:?}", c.compression).to_lowercase(), "allow_fresh_start": c.allow_fresh_start,
        "margin_seconds": c.margin.as_secs_f64(), "safety_factor": c.safety_factor, "mtbf_seconds": c.mtbf.as_secs(),
        "restart_count": c.restart_count, "log": format!("{:?}", c.log), "socket_dir": c.socket_dir, "host": c.host,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else if let Value::Object(m) = v {
        for (k, val) in m {
            println!("{k:<18} {}", if let Value::String(s) = &val { s.clone() } else { val.to_string() });
        }
        // Outside a job the file name comes from the application name, which the program passes to
        // ckpt_init: say so when this command could only guess it.
        let named = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if name.is_none() && c.job_id.is_none() && !named("CKPT_NAME") && !named("SLURM_JOB_NAME") {
            eprintln!(
                "ckpt env: the application name is the default {:?}; a program calling ckpt_init(\"NAME\") \
                 uses NAME.ckpt: see it with `ckpt env --name NAME`",
                c.app_name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn create(
    target: &str,
    image_dir: Option<&Path>,
    max_wait: f64,
    vacate: bool,
    as_json: bool,
) -> Result<ExitCode, Error> {
    if !max_wait.is_finite() || max_wait < 0.0 {
        return Err(Error::invalid(format!("--max-wait {max_wait} must be a non-negative number of seconds")));
    }
    let cfg = Config::from_env(None)?;
    let dir = cfg.socket_dir.ok_or_else(|| Error::invalid("control sockets are disabled (CKPT_SOCKET=0)"))?;
    // The directory is checked (ours, 0700, no symlink) before anything in it is read, connected to or
    // signalled; from here on it is reached through its descriptor.
    let Some(sock_dir) = control::ClientDir::open(&dir)? else {
        eprintln!("ckpt create: no process of {target:?} on this node is listening ({} does not exist)", dir.display());
        return Ok(ExitCode::from(1));
    };
    let sock_dir = std::sync::Arc::new(sock_dir);
    let sockets = sock_dir.find(target, ".sock")?;
    // Unmodified programs under the LD_PRELOAD shim are asked by signal.
    let shims = sock_dir.find(target, ".shim")?;
    if sockets.is_empty() && shims.is_empty() {
        eprintln!("ckpt create: no process of {target:?} on this node is listening (looked in {})", dir.display());
        return Ok(ExitCode::from(1));
    }
    if let Some(d) = image_dir {
        std::fs::create_dir_all(d).map_err(|e| Error::io("create image directory", e).with_path(d))?;
    }
    let image_dir = image_dir.map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf()));
    let wait = Duration::from_secs_f64(max_wait);
    // Each request answers on the channel when its checkpoint is durable (or failed), in whatever order;
    // the answers are printed in the order the processes were asked, once all are in.
    let (tx, rx) = std::sync::mpsc::channel::<(usize, u32, Result<PathBuf, Error>)>();
    let mut asked = 0usize;
    for (pid, name) in sockets {
        let (img, d, tx) = (image_dir.clone(), sock_dir.clone(), tx.clone());
        let i = asked;
        std::thread::spawn(move || {
            let r = control::request_checkpoint_in(&d, &name, img.as_deref(), vacate, wait).map(|r| r.path);
            let _ = tx.send((i, pid, r));
        });
        asked += 1;
    }
    for (pid, reg) in shims {
        let (img, d, tx) = (image_dir.clone(), sock_dir.clone(), tx.clone());
        let i = asked;
        std::thread::spawn(move || {
            let r = ckpt_image::control::request_checkpoint(pid, &d, &reg, img.as_deref(), vacate, wait);
            let _ = tx.send((i, pid, r));
        });
        asked += 1;
    }
    drop(tx);
    let bar = progress::enabled(as_json).then(|| progress::waiting(asked as u64, wait));
    let mut answers: Vec<Option<(u32, Result<PathBuf, Error>)>> = (0..asked).map(|_| None).collect();
    for (i, pid, r) in rx {
        answers[i] = Some((pid, r));
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut failed = 0;
    let mut results = Vec::new();
    for (pid, r) in answers.into_iter().map(|a| a.expect("every request thread answers")) {
        match r {
            Ok(path) if as_json => results.push(json!({"pid": pid, "path": path})),
            Ok(path) => println!("{}", path.display()),
            Err(e) => {
                failed += 1;
                if as_json {
                    results.push(json!({"pid": pid, "error": e.to_string()}));
                }
                eprintln!("ckpt create: process {pid}: {e}");
            }
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&json!({"checkpoints": results})).expect("json"));
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn restart(image_dir: Option<&Path>, command: &[String]) -> Result<ExitCode, Error> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    if let Some(d) = image_dir {
        if !d.is_dir() {
            return Err(Error::new(ckpt_core::ErrorKind::NotFound, "image directory does not exist").with_path(d));
        }
        cmd.env("CKPT_RESTART_DIR", d).env("SLURM_RESTART_DIR", d);
        // The user names the checkpoints to restart from: whichever run of the program wrote them (unless
        // CKPT_RESUME_FROM says otherwise).
        if std::env::var_os("CKPT_RESUME_FROM").is_none_or(|v| v.is_empty()) {
            cmd.env("CKPT_RESUME_FROM", "any");
        }
    }
    let err = cmd.exec();
    Err(Error::io(&format!("run {}", command[0]), err))
}

#[cfg(test)]
mod tests {
    use super::{age, iso_utc};

    #[test]
    fn dates_are_iso_8601_utc() {
        assert_eq!(iso_utc(0i64), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(951_782_400_000_000_000i64), "2000-02-29T00:00:00Z");
        assert_eq!(iso_utc(1_700_000_000_999_999_999i64), "2023-11-14T22:13:20Z");
        assert_eq!(iso_utc(4_107_542_399_000_000_000i64), "2100-02-28T23:59:59Z");
        assert_eq!(iso_utc(-1i64), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn ages_read_as_words() {
        let s = 1_000_000_000i128;
        assert_eq!(age(0i64, 5 * s), "less than a minute ago");
        assert_eq!(age(0i64, 192 * s), "3m ago");
        assert_eq!(age(0i64, (2 * 3600 + 5 * 60 + 7) * s), "2h 5m ago");
        assert_eq!(age(0i64, (4 * 86_400 + 3 * 3600) * s), "4d 3h ago");
        assert_eq!(age(90_000_000_000i64, 0), "in 1m");
    }
}
