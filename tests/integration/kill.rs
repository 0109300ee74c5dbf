//! A real kill test: a child process (`ckpt-test-saver`) saving in a loop is SIGKILLed at random moments;
//! after each kill, restart discovery must return a verified checkpoint whose step is at least the last
//! step the child reported as durable, holding exactly the content of that step (no mixture of steps).
//!
//! Every iteration continues in the same directory, so each child resumes from what the previous one left
//! (including its abandoned temporary file, which the next save must remove).
//!
//! Environment:
//! - `CKPT_KILL_ITERATIONS`: number of kills (default 200, so CI does hundreds; use e.g. 20 locally).
//! - `CKPT_KILL_SEED`: seed of the kill timing (default fixed; printed on failure to reproduce).
//!
//! The figures (kills, kills that landed mid-save, ...) are printed; see them with `--nocapture`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ckpt_core::{Checkpoint, NameKind, Store, classify};
use ckpt_tests::Rng;

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/ckpt-test-saver.rs"]
pub(crate) mod saver;

const SAVER: &str = env!("CARGO_BIN_EXE_ckpt-test-saver");
const NAME: &str = "killsim";
const BASE: &str = "killsim.ckpt";
const DEFAULT_ITERATIONS: u64 = 200;
const DEFAULT_SPARE_ITERATIONS: u64 = 40;
const DEFAULT_SEED: u64 = 0x4B11_1CA7_5EED;

fn env_u64(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{var}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn spawn_saver(dir: &Path, max_steps: Option<u64>) -> Child {
    spawn_sized_saver(dir, max_steps, 1)
}

/// A saver whose raw section is `raw_mib` MiB or more.
fn spawn_sized_saver(dir: &Path, max_steps: Option<u64>, raw_mib: usize) -> Child {
    let mut cmd = Command::new(SAVER);
    cmd.arg(dir).arg(NAME).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.env("CKPT_SAVER_RAW_MIB", raw_mib.to_string());
    cmd.env_remove("CKPT_SAVER_MAX_STEPS");
    if let Some(m) = max_steps {
        cmd.env("CKPT_SAVER_MAX_STEPS", m.to_string());
    }
    cmd.spawn().unwrap_or_else(|e| panic!("cannot start {SAVER}: {e}"))
}

/// The saver child; killed and reaped if the test panics, so no saver outlives a failed test.
struct Saver(Child);

impl Drop for Saver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigkill(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) with a pid we own (our unreaped child, so the pid cannot have been reused).
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill({pid}, SIGKILL) failed: {}", std::io::Error::last_os_error());
}

/// What the directory holds: (temporary files with their writer pid, generation numbers, has `<base>`).
fn dir_state(dir: &Path) -> (Vec<(String, u32)>, Vec<u64>, bool) {
    let mut tmps = Vec::new();
    let mut gens = Vec::new();
    let mut current = false;
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let name = e.expect("dir entry").file_name().into_string().expect("utf-8 name");
        match classify(BASE, &name) {
            Some(NameKind::Temporary { pid, .. }) => tmps.push((name, pid)),
            Some(NameKind::Generation(g)) => gens.push(g),
            Some(NameKind::Current) => current = true,
            Some(NameKind::Spare) | None => {}
        }
    }
    gens.sort_unstable();
    (tmps, gens, current)
}

/// The child's stdout: the step it restored and the steps it reported durable, in order.
fn parse_output(text: &str) -> (Option<u64>, Vec<u64>) {
    let mut restored = None;
    let mut durable = Vec::new();
    for line in text.lines() {
        if line.starts_with("saving ") {
            continue;
        }
        if let Some(s) = line.strip_prefix("restored ") {
            restored = Some(s.parse().unwrap_or_else(|_| panic!("bad child line {line:?}")));
        } else if let Some(s) = line.strip_prefix("durable ") {
            durable.push(s.parse().unwrap_or_else(|_| panic!("bad child line {line:?}")));
        } else {
            panic!("unexpected line from the child: {line:?} (whole output: {text:?})");
        }
    }
    (restored, durable)
}

#[test]
fn saver_child_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    for (round, expect_restored) in [(0, 0u64), (1, 2)] {
        let child = spawn_saver(dir.path(), Some(2));
        let out = child.wait_with_output().expect("wait for saver");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "round {round}: saver failed: {:?}\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        let (restored, durable) = parse_output(&stdout);
        assert_eq!(restored, Some(expect_restored), "round {round}: stdout {stdout:?}");
        assert_eq!(durable, vec![expect_restored + 1, expect_restored + 2], "round {round}: stdout {stdout:?}");
    }
    let r = Store::new(ckpt_tests::reader_config(NAME, dir.path())).restore().expect("restore").expect("a checkpoint");
    assert_eq!(r.app_step, 4);
    saver::check_checkpoint(&r.checkpoint, 4, 1).unwrap();
    let (tmps, gens, current) = dir_state(dir.path());
    assert!(tmps.is_empty(), "temporary files left after clean exits: {tmps:?}");
    assert_eq!(gens, vec![3, 4], "keep=2 generations after 4 saves");
    assert!(current, "no {BASE}");
}

#[derive(Default, Debug)]
struct Figures {
    kills: u64,
    /// A temporary file of the killed child was present after the kill.
    mid_save: u64,
    /// The child was killed before it printed `restored` (during start-up or restore).
    before_ready: u64,
    /// Kills of children that had reported no durable step.
    no_durable: u64,
    /// Restart found a step newer than the last reported one (killed between commit and report).
    ahead_of_report: u64,
    /// `<base>.<N>` was linked but `<base>` still named the previous generation (killed between the link
    /// and the rename).
    between_link_and_rename: u64,
    /// More generations than `keep` on disk (killed after the link, before pruning finished).
    before_prune: u64,
    /// Steps reported durable in total.
    durable_steps: u64,
    /// A spare (a retired generation kept for the next save to write over) was there after the kill.
    spare_present: u64,
}

#[test]
fn sigkill_at_random_moments_never_loses_a_durable_step() {
    kill_loop(env_u64("CKPT_KILL_ITERATIONS", DEFAULT_ITERATIONS), env_u64("CKPT_KILL_SEED", DEFAULT_SEED), 1);
}

/// The same with states of 16 MiB and more: every save after the first two writes over the spare (the
/// generation the previous save retired), so kills land in taking it over, overwriting it and cutting it.
#[test]
fn sigkill_while_saves_write_over_the_spare_never_loses_a_durable_step() {
    let iterations = env_u64("CKPT_KILL_SPARE_ITERATIONS", DEFAULT_SPARE_ITERATIONS);
    let fig = kill_loop(iterations, env_u64("CKPT_KILL_SEED", DEFAULT_SEED) ^ 0x5BA2E, 16);
    assert!(fig.spare_present > 0, "no kill found a spare: the loop did not exercise space reuse");
}

fn kill_loop(iterations: u64, seed: u64, raw_mib: usize) -> Figures {
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let ctx = |i: u64| format!("[kill test seed {seed:#x}, iteration {i}, dir {}]", dir.path().display());
    let mut fig = Figures::default();
    // The step the previous restore returned: the next child must restore exactly it.
    let mut restored_step: u64 = 0;
    let mut highest_reported: u64 = 0;
    // Generations on disk after the previous kill.
    let mut prev_gens: usize = 0;
    let started = Instant::now();

    for i in 0..iterations {
        let mut saver = Saver(spawn_sized_saver(dir.path(), None, raw_mib));
        let child = &mut saver.0;
        let pid = child.id();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        // What the parent read before the kill (the rest is read after it).
        let mut seen = String::new();
        let mode = rng.below(100);
        // (line to wait for, then a random delay in ms)
        // Larger states take longer to build and to save: the delays stretch with them.
        let stretch = 1 + raw_mib as u64 / 2;
        let (sync, wait_ms) = match mode {
            0..10 => (None, rng.below(61)),               // from spawn: start-up, restore, first save
            10..30 => (Some("restored"), rng.below(61)),  // building the state or saving it
            30..85 => (Some("saving"), rng.below(26)),    // inside Store::begin .. commit, mostly
            _ => (Some("restored"), 40 + rng.below(360)), // several saves, retention and pruning
        };
        if let Some(prefix) = sync {
            loop {
                let mut line = String::new();
                stdout.read_line(&mut line).expect("read the child's output");
                if line.is_empty() {
                    let status = child.wait().expect("wait");
                    let mut err = String::new();
                    let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
                    panic!(
                        "{} child exited before printing {prefix:?}: {status:?}, stdout: {seen:?}, stderr: {err}",
                        ctx(i)
                    );
                }
                seen.push_str(&line);
                if line.starts_with(prefix) {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(wait_ms * stretch));
        sigkill(child);
        let status = child.wait().expect("wait for the killed child");
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).expect("read the child's output");
        let mut err = String::new();
        let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{} the child did not die of SIGKILL but {status:?}; stderr: {err}",
            ctx(i)
        );
        fig.kills += 1;
        let text = format!("{seen}{rest}");
        let (child_restored, durable) = parse_output(&text);
        match child_restored {
            None => fig.before_ready += 1,
            Some(s) => assert_eq!(
                s,
                restored_step,
                "{} the child restored step {s} but the previous restart found {restored_step}",
                ctx(i)
            ),
        }
        // Reported steps are consecutive from the restored one.
        let expected: Vec<u64> = (restored_step + 1..).take(durable.len()).collect();
        assert_eq!(durable, expected, "{} reported durable steps are not consecutive", ctx(i));
        fig.durable_steps += durable.len() as u64;
        if durable.is_empty() {
            fig.no_durable += 1;
        }
        if let Some(&last) = durable.last() {
            highest_reported = last;
        }

        let (tmps, gens, has_current) = dir_state(dir.path());
        if tmps.iter().any(|&(_, p)| p == pid) {
            fig.mid_save += 1;
        }
        if dir.path().join(format!("{BASE}.tmp.spare")).exists() {
            fig.spare_present += 1;
        }
        // Each save removes the temporary files of dead writers before creating its own, so at most the
        // killed child's one can be left.
        assert!(tmps.len() <= 1, "{} {} temporary files after the kill: {tmps:?}", ctx(i), tmps.len());
        if !durable.is_empty() {
            assert!(
                tmps.iter().all(|&(_, p)| p == pid),
                "{} the child saved, yet stale temporary files of other processes remain: {tmps:?}",
                ctx(i)
            );
        }
        // keep = 2. A kill between a commit's link and the end of its pruning leaves one generation too
        // many, and such kills can pile up while no save completes; a completed save (reported durable)
        // prunes them all, and only one more link can follow before the kill.
        let gens_bound = if durable.is_empty() { prev_gens + 1 } else { 3 };
        assert!(
            gens.len() <= gens_bound,
            "{} {} generations on disk (keep = 2, at most {gens_bound} possible here): {gens:?}",
            ctx(i),
            gens.len()
        );
        if gens.len() > 2 {
            fig.before_prune += 1;
        }
        prev_gens = gens.len();
        if has_current {
            let cur = Checkpoint::open(dir.path().join(BASE))
                .unwrap_or_else(|e| panic!("{} {BASE} is not a readable checkpoint: {e}", ctx(i)));
            if gens.last().is_some_and(|&g| g > cur.generation()) {
                fig.between_link_and_rename += 1;
            }
        }

        let store = Store::new(ckpt_tests::reader_config(NAME, dir.path()));
        match store.restore() {
            Ok(Some(r)) => {
                assert!(
                    r.app_step >= highest_reported,
                    "{} restart found step {} (generation {}, {}) but step {highest_reported} was reported durable",
                    ctx(i),
                    r.app_step,
                    r.generation,
                    r.chosen_path.display()
                );
                assert!(
                    r.app_step >= restored_step,
                    "{} restart went backwards: step {} after {restored_step}",
                    ctx(i),
                    r.app_step
                );
                assert!(
                    r.rejected.is_empty(),
                    "{} a SIGKILL left a damaged file under a checkpoint name: {:?}",
                    ctx(i),
                    r.rejected
                );
                // The child saves step s as generation s (both count saves from the same start).
                assert_eq!(r.generation, r.app_step, "{} generation and step diverged", ctx(i));
                if let Err(e) = saver::check_checkpoint(&r.checkpoint, r.app_step, raw_mib) {
                    panic!("{} restored checkpoint does not hold its step's state: {e}", ctx(i));
                }
                if r.app_step > highest_reported {
                    fig.ahead_of_report += 1;
                }
                restored_step = r.app_step;
            }
            Ok(None) => {
                assert_eq!(highest_reported, 0, "{} no checkpoint, yet a step was reported durable", ctx(i));
                assert!(gens.is_empty() && !has_current, "{} files exist but restore found none: {gens:?}", ctx(i));
            }
            Err(e) => panic!("{} restore failed after a kill: {e}", ctx(i)),
        }
    }

    // One clean save at the end: it resumes, removes the last killed child's temporary file, and exits.
    let out = spawn_sized_saver(dir.path(), Some(1), raw_mib).wait_with_output().expect("final saver");
    assert!(out.status.success(), "final saver failed: {}", String::from_utf8_lossy(&out.stderr));
    let (restored, durable) = parse_output(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(restored, Some(restored_step), "final saver restored the wrong step");
    assert_eq!(durable, vec![restored_step + 1]);
    let (tmps, _, _) = dir_state(dir.path());
    assert!(tmps.is_empty(), "a clean save left temporary files: {tmps:?}");

    println!(
        "kill test (seed {seed:#x}, raw sections of {raw_mib} MiB or more): {} kills in {:.1} s, {} mid-save (a \
         temporary file of the killed child present), {} with a spare present, {} before the child was ready, \
         {} with no durable step, {} restarts ahead of the last report, {} between link and rename, {} before \
         pruning, {} durable steps in total, final step {}",
        fig.kills,
        started.elapsed().as_secs_f64(),
        fig.mid_save,
        fig.spare_present,
        fig.before_ready,
        fig.no_durable,
        fig.ahead_of_report,
        fig.between_link_and_rename,
        fig.before_prune,
        fig.durable_steps,
        restored_step + 1
    );
    if iterations >= 50 {
        assert!(fig.mid_save > 0, "no kill landed mid-save in {iterations} kills: the test exercised nothing: {fig:?}");
        assert!(highest_reported > 0, "the child never completed a save: {fig:?}");
    }
    fig
}
