//! Progress bars and JSON: `ckpt create` (while it waits) and `ckpt verify` (of a large file) show a bar
//! only when stderr is a terminal and never with `--json` (a terminal is provided by util-linux's
//! `script`; without it those halves are skipped, saying so); `ckpt requeue --json` says what it decided
//! and why as one JSON object, also when the requeue makes Slurm send it SIGTERM, and a Slurm controller
//! that hangs makes it fail in bounded time, saying so.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ckpt_core::{Checkpointer, Config, LogTarget, SectionOptions, Store};
use serde_json::Value;

fn ckpt(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ckpt"));
    clean(&mut cmd);
    cmd.current_dir(dir).args(args).envs(env.iter().copied()).output().unwrap()
}

fn clean(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("CKPT_") || k.starts_with("SLURM_") {
            cmd.env_remove(k);
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What a progress bar leaves in a stream: carriage returns and terminal escapes (a terminal's own
/// `\r\n` line ends are to be turned into `\n` first).
fn has_bar(bytes: &[u8]) -> bool {
    bytes.contains(&b'\r') || bytes.contains(&0x1b)
}

/// A checkpointer in this process that listens for `ckpt create` in `sock` and takes each requested
/// checkpoint `delay` after the request; stops when the flag is set.
fn listening(dir: &Path, sock: &Path, delay: Duration) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let mut config = Config::new("bars", dir).unwrap();
    config.log = LogTarget::Off;
    config.signals.clear();
    config.socket_dir = Some(sock.to_path_buf());
    let cp = Checkpointer::new(Store::new(config)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        let mut step = 0i64;
        while !s.load(Ordering::SeqCst) {
            if cp.should_checkpoint() {
                std::thread::sleep(delay);
                step += 1;
                cp.save_serde(step, &step).unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (stop, t)
}

/// `cmd` run with a terminal as its stdin, stdout and stderr (`script`): what the terminal showed.
fn on_a_terminal(dir: &Path, cmd: &str, env: &[(&str, &str)]) -> Option<(bool, Vec<u8>)> {
    let mut c = Command::new("script");
    clean(&mut c);
    let o = c.current_dir(dir).args(["-qec", cmd, "/dev/null"]).envs(env.iter().copied()).output().ok()?;
    Some((o.status.success(), o.stdout))
}

#[test]
fn create_shows_a_bar_only_on_a_terminal_and_never_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let (stop, t) = listening(dir.path(), &sock, Duration::from_millis(600));
    let pid = std::process::id().to_string();
    let env = [("CKPT_SOCKET_DIR", sock.to_str().unwrap())];

    // Not a terminal: the path on stdout, nothing on stderr.
    let o = ckpt(dir.path(), &["create", &pid, "--max-wait", "30"], &env);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).trim_end().ends_with("bars.ckpt"), "{}", text(&o));
    assert!(o.stderr.is_empty() && !has_bar(&o.stdout), "{}", text(&o));
    // --json: JSON only.
    let o = ckpt(dir.path(), &["create", &pid, "--max-wait", "30", "--json"], &env);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(v["checkpoints"][0]["pid"], std::process::id(), "{v}");
    assert!(o.stderr.is_empty(), "{}", text(&o));

    let exe = env!("CARGO_BIN_EXE_ckpt");
    match on_a_terminal(dir.path(), &format!("{exe} create {pid} --max-wait 30"), &env) {
        None => eprintln!("skipped the terminal half: util-linux's `script` is not installed"),
        Some((ok, shown)) => {
            let s = String::from_utf8_lossy(&shown);
            assert!(ok, "{s}");
            assert!(s.contains("ckpt create: 0/1 checkpoint(s) durable, waited"), "no bar on a terminal: {s:?}");
            assert!(s.contains("bars.ckpt"), "{s:?}");
            // --json on a terminal: no bar either.
            let (ok, shown) =
                on_a_terminal(dir.path(), &format!("{exe} create {pid} --max-wait 30 --json"), &env).unwrap();
            // (the terminal turns each \n into \r\n)
            let s = String::from_utf8_lossy(&shown).replace("\r\n", "\n");
            assert!(ok && !s.contains("durable, waited") && !has_bar(s.as_bytes()), "{s:?}");
            let v: Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s:?}"));
            assert!(v["checkpoints"][0]["path"].as_str().unwrap().ends_with("bars.ckpt"), "{v}");
        }
    }
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
}

/// `ckpt verify` of a large file (256 MiB and more): a bar on a terminal; plain lines on stderr when it is
/// not one; JSON only with `--json`, even on a terminal.
#[test]
fn verify_shows_a_bar_for_large_files_only_on_a_terminal_and_never_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![7u8; 256 << 20];
    let cfg = Config::new("big", dir.path()).unwrap();
    Store::new(cfg).checkpoint(1, |w| w.add_section_with("field", &data, SectionOptions::new())).unwrap();
    drop(data);
    let f = dir.path().join("big.ckpt");
    let f = f.to_str().unwrap();

    let o = ckpt(dir.path(), &["verify", f], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("section 1/1 `field` ok") && !has_bar(&o.stderr), "{}", text(&o));
    let o = ckpt(dir.path(), &["verify", "--json", f], &[]);
    assert!(o.status.success() && !has_bar(&o.stderr), "{}", text(&o));
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap()["failed"], 0, "{}", text(&o));

    let exe = env!("CARGO_BIN_EXE_ckpt");
    let Some((ok, shown)) = on_a_terminal(dir.path(), &format!("{exe} verify {f}"), &[]) else {
        eprintln!("skipped the terminal half: util-linux's `script` is not installed");
        return;
    };
    let s = String::from_utf8_lossy(&shown);
    assert!(ok && s.contains(&format!("{f} [")) && s.contains("eta"), "no bar on a terminal: {s:?}");
    let (ok, shown) = on_a_terminal(dir.path(), &format!("{exe} verify --json {f}"), &[]).unwrap();
    let s = String::from_utf8_lossy(&shown).replace("\r\n", "\n");
    assert!(ok && !has_bar(s.as_bytes()), "{s:?}");
    assert_eq!(serde_json::from_str::<Value>(&s).unwrap_or_else(|e| panic!("{e}: {s:?}"))["failed"], 0);
}

/// A stand-in `scontrol` in `dir` that appends its arguments to a file.
fn scontrol_stand_in(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let scontrol = dir.join("scontrol");
    std::fs::write(&scontrol, format!("#!/bin/sh\necho \"$@\" >> {}/scontrol.calls\n", dir.display())).unwrap();
    std::fs::set_permissions(&scontrol, std::fs::Permissions::from_mode(0o755)).unwrap();
    scontrol
}

#[test]
fn requeue_json_says_what_was_decided_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let scontrol = scontrol_stand_in(dir.path());
    let requeue = |count: &str, extra: &[&str]| {
        let mut args = vec!["requeue", "--max-restarts", "3", "--json"];
        args.extend_from_slice(extra);
        let o = ckpt(
            dir.path(),
            &args,
            &[("SLURM_JOB_ID", "77"), ("SLURM_RESTART_COUNT", count), ("CKPT_SCONTROL", scontrol.to_str().unwrap())],
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
        (o.status.code(), v)
    };
    let save = |step: i64| {
        let mut cfg = Config::new("ckpt", dir.path()).unwrap();
        cfg.job_id = Some("77".into());
        Store::new(cfg).save_serde(step, &step).unwrap();
    };

    let (code, v) = requeue("0", &[]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["reason"], "no-checkpoint", "{v}");
    assert_eq!(
        (v["job"].as_str(), v["requeued"].as_bool(), v["checkpoint"].is_null()),
        (Some("77"), Some(false), true)
    );
    assert!(v["message"].as_str().unwrap().contains("no valid checkpoint"), "{v}");

    save(10);
    let (code, v) = requeue("0", &["--dry-run"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        (v["requeued"].as_bool(), v["dry_run"].as_bool(), v["reason"].is_null()),
        (Some(false), Some(true), true)
    );
    assert_eq!(v["checkpoint"]["step"], 10, "{v}");
    assert!(!dir.path().join("scontrol.calls").exists(), "--dry-run called scontrol");

    let (code, v) = requeue("0", &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        (v["requeued"].as_bool(), v["restart"].as_u64(), v["max_restarts"].as_u64()),
        (Some(true), Some(0), Some(3))
    );
    assert_eq!(v["checkpoint"]["name"], "77.ckpt", "{v}");
    assert_eq!(std::fs::read_to_string(dir.path().join("scontrol.calls")).unwrap().trim(), "requeue 77");

    let (code, v) = requeue("1", &[]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["reason"], "no-progress", "{v}");
    assert_eq!((v["previous"]["step"].as_i64(), v["checkpoint"]["step"].as_i64()), (Some(10), Some(10)), "{v}");

    let (code, v) = requeue("3", &[]);
    assert_eq!((code, v["reason"].as_str()), (Some(1), Some("limit")), "{v}");

    // Errors stay errors: exit 2 and a message on stderr, nothing on stdout.
    let o = ckpt(dir.path(), &["requeue", "--max-restarts", "3", "--json"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(o.stdout.is_empty() && String::from_utf8_lossy(&o.stderr).contains("SLURM_JOB_ID"), "{}", text(&o));
}

/// A stand-in `scontrol` in `dir` running `body` (a shell script).
fn scontrol_running(dir: &Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let scontrol = dir.join("scontrol");
    std::fs::write(&scontrol, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&scontrol, std::fs::Permissions::from_mode(0o755)).unwrap();
    scontrol
}

fn save_for_job(dir: &Path, job: &str, step: i64) {
    let mut cfg = Config::new("ckpt", dir).unwrap();
    cfg.job_id = Some(job.into());
    Store::new(cfg).save_serde(step, &step).unwrap();
}

/// `scontrol requeue` makes Slurm send SIGTERM to every process of the job, `ckpt requeue` too, right
/// after the request (CI saw a batch script's log without the "requeued" line): it still says what it did
/// and exits 0.
#[test]
fn requeue_reports_the_requeue_through_the_sigterm_it_brings() {
    let dir = tempfile::tempdir().unwrap();
    save_for_job(dir.path(), "78", 4);
    // As slurmstepd does on a requeue: SIGTERM to the job's processes (here the caller), then the answer.
    let scontrol = scontrol_running(dir.path(), "kill -TERM $PPID; sleep 0.3; exit 0");
    for json in [false, true] {
        let _ = std::fs::remove_file(dir.path().join("78.ckpt.requeue"));
        let mut args = vec!["requeue", "--max-restarts", "3"];
        if json {
            args.push("--json");
        }
        let o = ckpt(dir.path(), &args, &[("SLURM_JOB_ID", "78"), ("CKPT_SCONTROL", scontrol.to_str().unwrap())]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        if json {
            let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
            assert_eq!(v["requeued"], true, "{v}");
        } else {
            assert_eq!(out.trim(), "ckpt requeue: requeued job 78 (restart 1 of 3; checkpoint step 4)", "{}", text(&o));
        }
    }
}

/// A Slurm controller that does not answer: `ckpt requeue` kills scontrol after its bound and fails
/// (exit 2), saying so, instead of hanging until Slurm's SIGKILL.
#[test]
fn requeue_fails_in_bounded_time_when_the_controller_hangs() {
    let dir = tempfile::tempdir().unwrap();
    save_for_job(dir.path(), "79", 4);
    let scontrol = scontrol_running(dir.path(), "exec sleep 600");
    let t = std::time::Instant::now();
    let o = ckpt(
        dir.path(),
        &["requeue", "--max-restarts", "3"],
        &[("SLURM_JOB_ID", "79"), ("CKPT_SCONTROL", scontrol.to_str().unwrap())],
    );
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("requeue 79` did not answer within 12 s (killed)"), "{}", text(&o));
    assert!(took < Duration::from_secs(40), "took {took:?}");
}

/// `ckpt flush` of what the node-local cache holds: a bar on a terminal, none when stderr is not one or
/// with `--json`.
#[test]
fn flush_shows_a_bar_only_on_a_terminal_and_never_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let (shared, cache) = (dir.path().join("shared"), dir.path().join("cache"));
    // Two cached checkpoints the checkpoint directory lacks (a store without a copying thread).
    let cached = |tag: &str| {
        let cfg =
            Config::builder("fl", shared.join(tag)).cache(Some(ckpt_core::CacheLevel::new(&cache))).build().unwrap();
        let store = Store::new(cfg);
        for step in 1..=2u64 {
            store
                .checkpoint(step, |w| w.add_section_with("field", &vec![step as u8; 4 << 20], SectionOptions::new()))
                .unwrap();
        }
    };
    let env_for = |tag: &str| {
        vec![
            ("CKPT_DIR", shared.join(tag).to_str().unwrap().to_string()),
            ("CKPT_CACHE_DIR", cache.to_str().unwrap().to_string()),
            ("CKPT_NAME", "fl".to_string()),
        ]
    };
    cached("plain");
    let env = env_for("plain");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = ckpt(dir.path(), &["flush"], &env);
    assert!(o.status.success() && !has_bar(&o.stderr), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("copied generation 2"), "{}", text(&o));

    let exe = env!("CARGO_BIN_EXE_ckpt");
    cached("tty");
    let env = env_for("tty");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let Some((ok, shown)) = on_a_terminal(dir.path(), &format!("{exe} flush"), &env) else {
        eprintln!("skipped the terminal half: util-linux's `script` is not installed");
        return;
    };
    let s = String::from_utf8_lossy(&shown);
    assert!(
        ok && s.contains("ckpt flush: generation") && s.contains("copied generation 2"),
        "no bar on a terminal: {s:?}"
    );
    cached("json");
    let env = env_for("json");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ok, shown) = on_a_terminal(dir.path(), &format!("{exe} flush --json"), &env).unwrap();
    let s = String::from_utf8_lossy(&shown).replace("\r\n", "\n");
    assert!(ok && !s.contains("ckpt flush: generation") && !has_bar(s.as_bytes()), "{s:?}");
    assert_eq!(serde_json::from_str::<Value>(&s).unwrap_or_else(|e| panic!("{e}: {s:?}"))["ok"], true);
}
