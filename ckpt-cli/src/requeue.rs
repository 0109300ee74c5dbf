//! `ckpt requeue`: requeue this Slurm job for a restart, boundedly (the restart count and progress since
//! the previous requeue), in text or JSON; `ckpt job`'s requeue is the same.

use std::io::Write;
use std::process::ExitCode;

use ckpt_core::{Config, Error, Store};
use serde_json::{Value, json};

/// The newest valid checkpoint of this job in the checkpoint directory, whatever wrote it: the batch step
/// (`<job>.ckpt`), a job step (`<job>.<step>.ckpt`), one rank or many (the step and rank count come from
/// the file's header, so a batch script's `ckpt requeue` sees an srun step's 4-rank checkpoint). Returns
/// (name, generation, step).
fn newest_checkpoint(cfg: &Config) -> Result<Option<(String, u64, i64)>, Error> {
    let dir = &cfg.checkpoint_dir;
    let job = cfg.job_key().to_string();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("list the checkpoint directory", e).with_path(dir)),
    };
    let mut best: Option<(i64, String, u64, i64)> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".ckpt") else { continue };
        let ours = stem == job || stem.strip_prefix(&format!("{job}.")).is_some_and(|s| s.parse::<u32>().is_ok());
        if !ours {
            continue;
        }
        let Ok(h) = ckpt_core::read_header(&ckpt_core::storage::FileStorage, &e.path()) else { continue };
        let mut c = Config::new(&h.app_name, dir)?;
        c.job_id = (!h.job_id.is_empty()).then(|| h.job_id.clone());
        c.step_id = h.step_id;
        c.rank = 0;
        c.nranks = h.nranks.max(1);
        c.restart_dir = dir.clone();
        c.allow_fresh_start = true;
        if c.base_name() != name {
            continue;
        }
        if let Ok(Some(r)) = Store::new(c).restore() {
            let created = r.checkpoint.header().created_unix_ns;
            if best.as_ref().is_none_or(|b| created > b.0) {
                best = Some((created, name.clone(), r.generation, r.app_step.cast_signed()));
            }
        }
    }
    Ok(best.map(|(_, n, g, s)| (n, g, s)))
}

/// What `ckpt requeue` decided, and why: printed as one line of text or as a JSON object.
struct Outcome {
    job: String,
    requeued: bool,
    dry_run: bool,
    restart_count: u32,
    max_restarts: u32,
    /// The newest valid checkpoint: name, generation, step.
    checkpoint: Option<(String, u64, i64)>,
    /// The one recorded at the previous requeue.
    previous: Option<(String, u64, i64)>,
    /// Why not: `"limit"`, `"no-checkpoint"`, `"no-progress"`; `None` when requeued (or it would be).
    reason: Option<&'static str>,
    message: String,
}

impl Outcome {
    fn json(&self) -> Value {
        let cp = |c: &Option<(String, u64, i64)>| {
            c.as_ref().map(|(name, g, step)| json!({"name": name, "generation": g, "step": step}))
        };
        json!({
            "job": self.job, "requeued": self.requeued, "dry_run": self.dry_run,
            "restart": self.restart_count, "max_restarts": self.max_restarts,
            "checkpoint": cp(&self.checkpoint), "previous": cp(&self.previous),
            "reason": self.reason, "message": self.message,
        })
    }

    /// Exit 0 when requeued (or, with --dry-run, when it would be), 1 when refused.
    fn code(&self) -> ExitCode {
        if self.reason.is_none() { ExitCode::SUCCESS } else { ExitCode::from(1) }
    }
}

/// `ckpt requeue`: text (one line) or JSON on `out`.
pub(crate) fn requeue(
    max_restarts: u32,
    name: Option<&str>,
    dry_run: bool,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<ExitCode, Error> {
    // Slurm's SIGTERM after the requeue must not cut the answer off (it lands in the job's log).
    super::scontrol::hold_sigterm();
    let o = decide(&Config::from_env(name)?, max_restarts, dry_run)?;
    // A failed write of the answer leaves nothing else to say.
    let _ = if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&o.json()).expect("json"))
    } else {
        writeln!(out, "{}", o.message)
    };
    Ok(o.code())
}

/// `ckpt requeue` for the configuration `cfg` (`ckpt job`'s requeue), its line of text on `out`.
pub(crate) fn requeue_with(
    cfg: &Config,
    max_restarts: u32,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<ExitCode, Error> {
    let o = decide(cfg, max_restarts, dry_run)?;
    let _ = writeln!(out, "{}", o.message);
    Ok(o.code())
}

fn decide(cfg: &Config, max_restarts: u32, dry_run: bool) -> Result<Outcome, Error> {
    let job = cfg
        .job_id
        .clone()
        .ok_or_else(|| Error::invalid("SLURM_JOB_ID is not set: `ckpt requeue` runs inside a Slurm job"))?;
    let count = cfg.restart_count.unwrap_or(0);
    let mut o = Outcome {
        job: job.clone(),
        requeued: false,
        dry_run,
        restart_count: count,
        max_restarts,
        checkpoint: None,
        previous: None,
        reason: None,
        message: String::new(),
    };
    if count >= max_restarts {
        o.reason = Some("limit");
        o.message = format!(
            "ckpt requeue: not requeuing job {job}: it was restarted {count} time(s), the limit is {max_restarts}"
        );
        return Ok(o);
    }
    // Progress: the newest checkpoint must be newer than the one seen at the previous requeue.
    let record = cfg.checkpoint_dir.join(format!("{}.requeue", cfg.base_name()));
    o.checkpoint = newest_checkpoint(cfg)?;
    // The record: "<name> <generation> <step>" (older records: "<generation> <step>").
    o.previous = std::fs::read_to_string(&record).ok().and_then(|t| {
        let f: Vec<&str> = t.split_whitespace().collect();
        match f[..] {
            [n, g, st] => Some((n.to_string(), g.parse().ok()?, st.parse().ok()?)),
            [g, st] => Some((cfg.base_name(), g.parse().ok()?, st.parse().ok()?)),
            _ => None,
        }
    });
    let Some((name, g, step)) = o.checkpoint.clone() else {
        o.reason = Some("no-checkpoint");
        o.message = format!("ckpt requeue: not requeuing job {job}: it has no valid checkpoint to restart from");
        return Ok(o);
    };
    if let Some((pname, pg, pstep)) = &o.previous
        && count > 0
        && name == *pname
        && g <= *pg
    {
        o.reason = Some("no-progress");
        o.message = format!(
            "ckpt requeue: not requeuing job {job}: no progress since the last restart (newest checkpoint \
             generation {g}, step {step}; at the previous requeue generation {pg}, step {pstep})"
        );
        return Ok(o);
    }
    if dry_run {
        o.message = format!(
            "ckpt requeue: would requeue job {job} (restart {} of {max_restarts}; checkpoint step {step})",
            count + 1
        );
        return Ok(o);
    }
    std::fs::write(&record, format!("{name} {g} {step}\n")).map_err(|e| Error::io("write", e).with_path(&record))?;
    super::scontrol::run(&["requeue", &job], super::scontrol::SCONTROL_TIMEOUT)?;
    o.requeued = true;
    o.message =
        format!("ckpt requeue: requeued job {job} (restart {} of {max_restarts}; checkpoint step {step})", count + 1);
    Ok(o)
}
