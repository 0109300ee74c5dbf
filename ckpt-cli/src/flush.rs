//! `ckpt flush`: copies what the node-local cache (`CKPT_CACHE_DIR`) holds for this job and the checkpoint
//! directory does not, with the library's own copy (verified, then committed under the same generation).
//! For the end of a batch script, `ckpt job`, or Slurm's epilog: a program killed during its background
//! copy leaves its newest checkpoint in the cache only.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ckpt_core::{Checkpoint, Config, Error, LoadOptions, NameKind, Store, classify};
use serde_json::json;

/// What one `ckpt flush` did.
pub(crate) struct Flushed {
    /// One JSON object per generation copied (or found copied already).
    pub rows: Vec<serde_json::Value>,
    /// Whether every copy succeeded.
    pub ok: bool,
}

/// Copies the cache's generations of `config`'s checkpoint name that the checkpoint directory lacks,
/// oldest first. With `wait`, first waits (at most `timeout`) while a live process of this host is
/// writing a copy of this name into the checkpoint directory (the program's own background copy).
pub(crate) fn flush(config: Config, wait: bool, timeout: Duration) -> Result<Flushed, Error> {
    flush_showing(config, wait, timeout, false)
}

/// [`flush`], with a progress bar on stderr when `bar` (a terminal, not `--json`).
fn flush_showing(config: Config, wait: bool, timeout: Duration, bar: bool) -> Result<Flushed, Error> {
    let store = Store::new(config);
    let Some(cache) = store.cache_dir().map(Path::to_path_buf) else {
        return Ok(Flushed { rows: Vec::new(), ok: true });
    };
    if wait {
        let deadline = Instant::now() + timeout;
        while copy_in_progress(&store) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let base = store.config().base_name();
    let mut rows = Vec::new();
    let mut ok = true;
    let generations = store.cached_not_flushed()?;
    let sizes: Vec<u64> = generations
        .iter()
        .map(|g| std::fs::metadata(cache.join(format!("{base}.{g}"))).map_or(0, |m| m.len()))
        .collect();
    let progress = bar.then(|| super::progress::copying(sizes.iter().sum()));
    for (generation, size) in generations.into_iter().zip(sizes) {
        let path = cache.join(format!("{base}.{generation}"));
        let started = Instant::now();
        if let Some(p) = &progress {
            p.set_message(format!("generation {generation} ({})", indicatif::HumanBytes(size)));
        }
        let copied = Checkpoint::open_with(&**store.storage(), &path, LoadOptions::new())
            .and_then(|source| store.flush_checkpoint(&source));
        if let Some(p) = &progress {
            p.inc(size);
        }
        match copied {
            Ok(info) => rows.push(json!({
                "generation": generation, "step": info.app_step, "from": path, "to": info.generation_path,
                "bytes": info.stats.file_bytes, "seconds": started.elapsed().as_secs_f64(), "ok": true,
            })),
            Err(e) => {
                ok = false;
                rows.push(json!({"generation": generation, "from": path, "ok": false, "error": e.to_string()}));
            }
        }
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    Ok(Flushed { rows, ok })
}

/// Whether the checkpoint directory holds a temporary file of this name written by a live process of
/// this host.
fn copy_in_progress(store: &Store) -> bool {
    let base = store.config().base_name();
    let host = &store.config().host;
    let Ok(entries) = std::fs::read_dir(&store.config().checkpoint_dir) else { return false };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        matches!(classify(&base, &name), Some(NameKind::Temporary { host: h, pid }) if &h == host && pid_alive(pid))
    })
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The subcommand: prints what was copied; exit status 1 when a copy failed.
pub(crate) fn run(name: Option<&str>, wait: bool, timeout: Duration, as_json: bool) -> Result<ExitCode, Error> {
    let config = Config::from_env(name)?;
    let dir = config.checkpoint_dir.clone();
    let cached = config.cache.is_some();
    let Flushed { rows, ok } = flush_showing(config, wait, timeout, super::progress::enabled(as_json))?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"checkpoint_dir": dir, "cache": cached, "flushed": rows, "ok": ok}))
                .expect("json")
        );
    } else if !cached {
        println!("no cache level (CKPT_CACHE_DIR is not set): every checkpoint is in {} already", dir.display());
    } else if rows.is_empty() {
        println!("nothing to copy: the checkpoint directory {} has the cache's newest checkpoint", dir.display());
    } else {
        for r in &rows {
            if r["ok"] == true {
                println!(
                    "copied generation {} (step {}) to {}: {} in {:.2} s",
                    r["generation"],
                    r["step"],
                    r["to"].as_str().unwrap_or("?"),
                    indicatif::HumanBytes(r["bytes"].as_u64().unwrap_or(0)),
                    r["seconds"].as_f64().unwrap_or(0.0)
                );
            } else {
                eprintln!(
                    "ckpt flush: generation {} ({}): {}",
                    r["generation"],
                    r["from"].as_str().unwrap_or("?"),
                    r["error"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
