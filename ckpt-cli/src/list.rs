//! `ckpt list`: every checkpoint file of a directory and its node-local cache (with the partner copies the
//! cache keeps for ranks on other nodes), whether each verifies, and what a restart would choose.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ckpt_core::identity::RunIdentity;
use ckpt_core::{Checkpoint, Config, Error, LoadOptions, Store, any_base, classify};
use indicatif::HumanBytes;
use serde_json::{Value, json};

use super::{checkpoint_files, iso_utc, merge_hard_links};

pub(crate) fn list(dir: Option<PathBuf>, as_json: bool) -> Result<ExitCode, Error> {
    let env_cfg = Config::from_env(None)?;
    let dir = dir.unwrap_or_else(|| env_cfg.restart_dir.clone());
    // The node-local cache of this checkpoint directory (CKPT_CACHE_DIR), listed first.
    let cache = env_cfg.cache.clone().filter(|_| dir == env_cfg.checkpoint_dir);
    let cache_dir = cache.as_ref().map(|c| c.dir_for(&dir));
    let mut files = checkpoint_files(&dir)?;
    if let Some(c) = cache_dir.as_deref().filter(|c| c.is_dir()) {
        files.extend(checkpoint_files(c)?);
    }
    let level_of = |p: &Path| if cache_dir.as_deref().is_some_and(|c| p.starts_with(c)) { "cache" } else { "shared" };
    // `<base>` is a hard link to the newest `<base>.<N>`: one file under two names, listed once.
    let (files, aliases) = merge_hard_links(files);
    let mut rows = Vec::new();
    #[allow(clippy::type_complexity)]
    let mut bases: BTreeMap<String, (String, Option<u32>, String, Option<RunIdentity>)> = BTreeMap::new();
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let also = aliases.get(f).cloned().unwrap_or_default();
        let mut row = match Checkpoint::open_with(&ckpt_core::storage::FileStorage, f, LoadOptions::new().mmap(false))
            .and_then(|cp| cp.verify().map(|_| cp))
        {
            Ok(cp) => {
                let h = cp.header();
                let identity = RunIdentity::of_header(h).and_then(|r| r.ok());
                if let Some(b) = any_base(&name) {
                    bases.entry(b.to_string()).or_insert((
                        h.job_id.clone(),
                        h.step_id,
                        h.app_name.clone(),
                        identity.clone(),
                    ));
                }
                // A listing shows every file, but says which ones restart would refuse to load.
                let (status, error) = match ckpt_core::trust::check(&cp) {
                    Ok(()) => ("valid", None),
                    Err(e) => ("untrusted", Some(e.to_string())),
                };
                // Metrics given with the save (a JSON object in the header's `metrics` entry), if any.
                let metrics: Value = cp
                    .metadata("metrics")
                    .and_then(|m| serde_json::from_slice::<Value>(m).ok())
                    .filter(Value::is_object)
                    .unwrap_or(Value::Null);
                json!({"path": f, "status": status, "error": error, "generation": h.generation, "step": h.app_step.cast_signed(), "job_id": h.job_id, "metrics": metrics,
                       "app_name": h.app_name, "rank": h.rank, "nranks": h.nranks, "bytes": cp.file_len(), "created_unix_ns": h.created_unix_ns,
                       "written_by": identity.as_ref().map(|i| json!({"uid": i.uid, "cmdline": i.cmdline, "cwd": i.cwd, "array_job": i.array_job, "array_task": i.array_task}))})
            }
            Err(e) => json!({"path": f, "status": "invalid", "error": e.to_string()}),
        };
        if let Some(h) = row["created_unix_ns"].as_i64() {
            row["created"] = json!(iso_utc(h));
        }
        // The other names of the same file (the newest checkpoint's stable name).
        row["also"] = json!(also);
        row["level"] = json!(level_of(f));
        rows.push(row);
    }
    // Saves in progress (or abandoned), and spares.
    let listed_dirs = std::iter::once(dir.clone()).chain(cache_dir.clone());
    for e in listed_dirs.flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((base, _)) = name.split_once(".tmp.")
            && matches!(classify(base, &name), Some(ckpt_core::NameKind::Temporary { .. }))
        {
            rows.push(json!({"path": e.path(), "level": level_of(&e.path()),
                             "status": "incomplete (a save in progress, or abandoned by a killed writer)"}));
        }
        if let Some(base) = name.strip_suffix(".tmp.spare")
            && classify(base, &name) == Some(ckpt_core::NameKind::Spare)
        {
            let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
            rows.push(json!({"path": e.path(), "status": "spare", "bytes": bytes}));
        }
    }
    // The copies this node's cache keeps of parts of ranks on other nodes (CKPT_PARTNER).
    if let Some(c) = cache_dir.as_deref() {
        rows.extend(partner_rows(c));
    }
    // What a restart would choose, per checkpoint name.
    let mut choices = Vec::new();
    for (base, (job, step, app, identity)) in &bases {
        let mut cfg = Config::new(app, &dir)?;
        cfg.cache.clone_from(&cache);
        cfg.job_id = Some(job.clone());
        cfg.step_id = *step;
        // Ask as the run that wrote the name would on restart (its identity, not this command's).
        if let Some(id) = identity {
            cfg.identity = id.clone();
        }
        if base.trim_end_matches(".ckpt") != ckpt_core::base_name(job, *step).trim_end_matches(".ckpt") {
            continue;
        }
        // Multi-rank names: ask as rank 0 of a job of the recorded size.
        if let Some(n) = rows
            .iter()
            .find(|r| {
                let names = std::iter::once(&r["path"]).chain(r["also"].as_array().into_iter().flatten());
                names.filter_map(Value::as_str).any(|p| p.ends_with(base.as_str())) && r["nranks"].is_u64()
            })
            .and_then(|r| r["nranks"].as_u64())
        {
            cfg.nranks = n as u32;
        }
        let store = Store::new(cfg);
        match store.discover() {
            Ok(d) => {
                let chosen = d.chosen.map(|i| d.candidates[i].path.clone());
                choices.push(json!({"name": base, "chosen": chosen, "why": d.explanation, "notices": d.notices}));
            }
            // Files of several runs under one name: what restart would say.
            Err(e) => choices.push(json!({"name": base, "chosen": null, "why": e.to_string(), "notices": []})),
        }
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"dir": dir, "cache_dir": cache_dir, "files": rows, "restart": choices})
            )
            .expect("json")
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("checkpoints in {}", dir.display());
    if let Some(c) = &cache_dir {
        println!("and in its node-local cache {} (CKPT_CACHE_DIR; marked [cache])", c.display());
        if rows.iter().any(|r| r["level"] == "partner") {
            println!("which keeps copies of parts of ranks on other nodes (CKPT_PARTNER; marked [partner])");
        }
    }
    if rows.is_empty() {
        println!("  (none)");
    }
    for r in &rows {
        let mut path = r["path"].as_str().unwrap_or("?").to_string();
        if cache_dir.is_some() && r["level"] != "shared" {
            path = format!("[{}] {path}", r["level"].as_str().unwrap_or("cache"));
        }
        let also: Vec<String> = r["also"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .map(|a| Path::new(a).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            .collect();
        if !also.is_empty() {
            path = format!("{path} (also {}, the newest)", also.join(", "));
        }
        match r["status"].as_str() {
            Some("valid") => println!(
                "  valid      {path}  generation {} step {} written {} job {} rank {}/{} {}{}",
                r["generation"],
                r["step"],
                r["created"].as_str().unwrap_or("?"),
                r["job_id"].as_str().unwrap_or(""),
                r["rank"],
                r["nranks"],
                HumanBytes(r["bytes"].as_u64().unwrap_or(0)),
                metrics_text(&r["metrics"])
            ),
            Some("invalid") => println!("  INVALID    {path}: {}", r["error"].as_str().unwrap_or("")),
            Some("untrusted") => println!("  UNTRUSTED  {path}: {}", r["error"].as_str().unwrap_or("")),
            Some("spare") => println!(
                "  spare      {path}  {} (a retired checkpoint, kept for its blocks: the next save writes over it)",
                HumanBytes(r["bytes"].as_u64().unwrap_or(0))
            ),
            Some(other) => println!("  incomplete {path} ({other})"),
            None => {}
        }
    }
    for c in &choices {
        println!("restart of {}: {}", c["name"].as_str().unwrap_or(""), c["why"].as_str().unwrap_or(""));
        for n in c["notices"].as_array().into_iter().flatten() {
            println!("  note: {}", n.as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `  metrics val_loss=0.31 epoch=3` for a row's metrics (empty without any).
pub(crate) fn metrics_text(metrics: &Value) -> String {
    let Some(m) = metrics.as_object().filter(|m| !m.is_empty()) else { return String::new() };
    let parts: Vec<String> = m
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!("  metrics {}", parts.join(" "))
}

/// Rows for the partner copies in a cache directory, `<cache>/<base>.partner/<N>/rank<S>.ckpt` (each
/// verified), and the transfers left unfinished there.
/// Whether `dir` is this user's and writable by no one else (what restart requires of the directories
/// that hold partner copies); the reason when it is not.
fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: a directory of uid {} with mode {:o} (restart uses copies only in directories of this user, uid \
             {me}, that no one else may write)",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

fn partner_rows(cache: &Path) -> Vec<Value> {
    let mut rows = Vec::new();
    let dirs = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()).collect();
        v.sort();
        v
    };
    let roots = dirs(cache).into_iter().filter(|p| p.is_dir() && p.extension().is_some_and(|e| e == "partner"));
    for generation_dir in roots.flat_map(|root| dirs(&root)) {
        for f in dirs(&generation_dir) {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.contains(".tmp.") {
                rows.push(json!({"path": f, "level": "partner",
                                 "status": "incomplete (a copy being received, or abandoned)"}));
                continue;
            }
            let row = match Checkpoint::open_with(&ckpt_core::storage::FileStorage, &f, LoadOptions::new().mmap(false))
                .and_then(|cp| cp.verify().map(|()| cp))
            {
                Ok(cp) => {
                    let h = cp.header();
                    // As for the other rows: which copies a restart would refuse to send back (the file, or a
                    // directory on its way from the cache, another user's or writable by others).
                    let trusted = ckpt_core::trust::check(&cp)
                        .map_err(|e| e.to_string())
                        .and_then(|()| private_dir(&generation_dir))
                        .and_then(|()| private_dir(generation_dir.parent().unwrap_or(cache)));
                    let (status, error) = match trusted {
                        Ok(()) => ("valid", None),
                        Err(e) => ("untrusted", Some(e)),
                    };
                    json!({"path": f, "level": "partner", "status": status, "error": error, "generation": h.generation,
                           "step": h.app_step.cast_signed(), "job_id": h.job_id, "app_name": h.app_name,
                           "rank": h.rank, "nranks": h.nranks, "bytes": cp.file_len(),
                           "created": iso_utc(h.created_unix_ns), "also": [], "metrics": null})
                }
                Err(e) => json!({"path": f, "level": "partner", "status": "invalid", "error": e.to_string()}),
            };
            rows.push(row);
        }
    }
    rows
}
