//! The cache level (`CKPT_CACHE_DIR`): saves commit to a node-local directory, a background thread copies
//! them to the checkpoint directory, `should_exit` waits for that copy, and restart takes the newest
//! generation that verifies on any level.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ckpt_core::storage::Storage as _;
use ckpt_core::{CacheLevel, Checkpoint, Checkpointer, Config, ErrorKind, FlushPolicy, Level, LogTarget, Store};
use ckpt_tests::{LiveChild, clean_command, log_events};

const TRIGGER: &str = env!("CARGO_BIN_EXE_ckpt-test-trigger");

fn config(shared: &Path, cache_root: &Path, log: &Path, policy: FlushPolicy) -> Config {
    let mut cache = CacheLevel::new(cache_root);
    cache.flush = policy;
    Config::builder("lvl", shared)
        .cache(Some(cache))
        .log(LogTarget::File(log.to_path_buf()))
        .signals("")
        .keep(5)
        .build()
        .expect("config")
}

fn generations(dir: &Path, base: &str) -> Vec<u64> {
    let mut g: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| n.strip_prefix(&format!("{base}.")).and_then(|g| g.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    g.sort_unstable();
    g
}

fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).expect("write");
}

#[test]
fn exit_waits_for_the_copy_and_restart_takes_the_cache_then_the_checkpoint_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (shared, cache_root, log) = (tmp.path().join("shared"), tmp.path().join("cache"), tmp.path().join("log"));
    let cfg = config(&shared, &cache_root, &log, FlushPolicy::Every);
    let cp = Checkpointer::new(Store::new(cfg.clone())).unwrap();
    let cache_dir = cp.store().cache_dir().expect("cache level").to_path_buf();
    assert!(cache_dir.starts_with(&cache_root), "{cache_dir:?}");
    let data: Vec<u8> = (0..64usize << 20).map(|i| (i % 253) as u8).collect();

    cp.request_checkpoint(true); // SIGTERM's request
    let info = cp.checkpoint(1u64, |w| w.add_bytes("x", &data)).unwrap();
    assert_eq!(info.generation_path, cache_dir.join("lvl.ckpt.1"), "committed to the cache first");
    assert!(!cp.should_exit(), "cached is not durable: should_exit must wait for the copy");
    assert!(cp.exit_pending(), "the exit is pending while the copy runs");
    assert_eq!(cp.wait_for_flush(Some(Duration::from_secs(120))).unwrap(), Some(1));
    assert!(cp.should_exit(), "durable in the checkpoint directory: time to exit");
    assert_eq!(cp.durable_generation(), Some(1));
    let copy = shared.join("lvl.ckpt.1");
    Checkpoint::open(&copy).unwrap().verify().unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&info.generation_path).unwrap(), "the same bytes");
    assert!(shared.join("lvl.ckpt").exists(), "the stable name in the checkpoint directory");
    drop(cp);

    let checkpoint_events = log_events(&log, "checkpoint");
    assert_eq!(checkpoint_events[0]["level"], "cache");
    assert_eq!(checkpoint_events[0]["exit"], false, "not armed at the cache commit");
    let flushed = log_events(&log, "flushed");
    assert_eq!(flushed.len(), 1, "{flushed:?}");
    assert_eq!((flushed[0]["generation"].as_u64(), flushed[0]["exit"].as_bool()), (Some(1), Some(true)));
    assert_eq!(log_events(&log, "levels")[0]["flush"], "every");

    // Restart on the same node: the cache's copy first.
    let r = Store::new(cfg.clone()).restore().unwrap().expect("a checkpoint");
    assert_eq!((r.level, r.generation), (Level::Cache, 1));
    assert_eq!(r.chosen_path.parent(), Some(cache_dir.as_path()));
    // The cache's copy damaged: the same generation from the checkpoint directory.
    let len = std::fs::metadata(cache_dir.join("lvl.ckpt.1")).unwrap().len();
    flip_byte(&cache_dir.join("lvl.ckpt.1"), len / 2);
    let r = Store::new(cfg.clone()).restore().unwrap().expect("a checkpoint");
    assert_eq!((r.level, r.generation), (Level::Shared, 1), "rejected: {:?}", r.rejected);
    assert!(!r.rejected.is_empty(), "the damaged cache copy is reported");
    // Another node (the cache is gone): the checkpoint directory.
    std::fs::remove_dir_all(&cache_root).unwrap();
    let r = Store::new(cfg.clone()).restore().unwrap().expect("a checkpoint");
    assert_eq!((r.level, r.generation), (Level::Shared, 1));
    assert_eq!(r.checkpoint.read("x").unwrap().as_ref(), data.as_slice());

    // Saving again there continues the checkpoint directory's numbering.
    let cp = Checkpointer::new(Store::new(cfg)).unwrap();
    let info = cp.checkpoint(2u64, |w| w.add_bytes("x", b"second")).unwrap();
    assert_eq!(info.generation, 2, "after the shared level's generation 1");
    drop(cp);
    assert_eq!(generations(&shared, "lvl.ckpt"), vec![1, 2], "the end of the program copies the newest");
}

#[test]
fn flush_policies_copy_every_nth_or_only_the_last() {
    for (policy, expected) in [(FlushPolicy::Nth(3), vec![3, 6, 7]), (FlushPolicy::Exit, vec![7])] {
        let tmp = tempfile::tempdir().unwrap();
        let (shared, cache_root, log) = (tmp.path().join("shared"), tmp.path().join("cache"), tmp.path().join("log"));
        let cp = Checkpointer::new(Store::new(config(&shared, &cache_root, &log, policy))).unwrap();
        for step in 1..=7u64 {
            cp.checkpoint(step, |w| w.add_bytes("x", &step.to_le_bytes())).unwrap();
            cp.wait_for_flush(Some(Duration::from_secs(60))).unwrap();
        }
        let cache_dir = cp.store().cache_dir().unwrap().to_path_buf();
        drop(cp);
        let flushed: Vec<u64> = log_events(&log, "flushed").iter().map(|e| e["generation"].as_u64().unwrap()).collect();
        assert_eq!(flushed, expected, "{policy}");
        assert_eq!(generations(&shared, "lvl.ckpt"), expected, "{policy}");
        assert_eq!(generations(&cache_dir, "lvl.ckpt"), vec![7], "the cache keeps one generation by default");
        let wait = log_events(&log, "flush-wait");
        assert_eq!((wait[0]["complete"].as_bool(), wait[0]["durable_generation"].as_u64()), (Some(true), Some(7)));
    }
}

#[test]
fn sweeps_sharing_a_cache_root_keep_their_checkpoints_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_root = tmp.path().join("cache");
    let points: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("sweep/p{i}"))).collect();
    for (i, dir) in points.iter().enumerate() {
        let cfg = config(dir, &cache_root, &tmp.path().join(format!("log{i}")), FlushPolicy::Exit);
        let cp = Checkpointer::new(Store::new(cfg)).unwrap();
        cp.checkpoint(1u64, |w| w.add_bytes("point", &[i as u8; 100])).unwrap();
        // Dropped without the copy finishing would be a bug, not this test's subject: let it copy.
    }
    let mut cache_dirs = std::collections::BTreeSet::new();
    for (i, dir) in points.iter().enumerate() {
        let cfg = config(dir, &cache_root, &tmp.path().join(format!("log{i}")), FlushPolicy::Exit);
        let store = Store::new(cfg);
        cache_dirs.insert(store.cache_dir().unwrap().to_path_buf());
        let r = store.restore().unwrap().unwrap();
        assert_eq!(r.level, Level::Cache);
        assert_eq!(r.checkpoint.read("point").unwrap().as_ref(), &[i as u8; 100][..], "point {i}'s own state");
    }
    assert_eq!(cache_dirs.len(), 3, "one cache directory per checkpoint directory");
}

#[test]
fn a_cache_directory_others_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (shared, cache_root, log) = (tmp.path().join("shared"), tmp.path().join("cache"), tmp.path().join("log"));
    let cfg = config(&shared, &cache_root, &log, FlushPolicy::Every);
    let store = Store::new(cfg);
    let dir = store.cache_dir().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = store.begin(1u64).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Untrusted, "{e}");
    assert!(
        e.to_string().contains(&dir.display().to_string()) && e.to_string().contains("writable by no one else"),
        "{e}"
    );
}

fn trigger_child(dir: &Path, cache_root: &Path, env: &[(&str, &str)]) -> LiveChild {
    let mut cmd = clean_command(Path::new(TRIGGER), dir);
    cmd.arg("100000").arg("5").env("CKPT_CACHE_DIR", cache_root).env("CKPT_TEST_PAD_MIB", "96");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut c = LiveChild::spawn(cmd);
    assert!(c.wait_for("ready", Duration::from_secs(30)).is_some(), "child did not start: {:?}", c.seen);
    c
}

/// The generations the log says were made durable.
fn flushed_generations(log: &Path) -> Vec<u64> {
    log_events(log, "flushed").iter().filter_map(|e| e["generation"].as_u64()).collect()
}

#[test]
fn killed_during_a_copy_restarts_from_the_newest_durable_generation_or_the_cache_on_the_same_node() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, cache_root) = (tmp.path().join("shared"), tmp.path().join("cache"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("ckpt.log");
    let mut child = trigger_child(&dir, &cache_root, &[]);
    child.signal(libc::SIGUSR1);
    assert!(child.wait_for("checkpoint ", Duration::from_secs(60)).is_some(), "{:?}", child.seen);
    let deadline = Instant::now() + Duration::from_secs(60);
    while flushed_generations(&log).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(flushed_generations(&log), vec![1], "the first copy completes");
    child.signal(libc::SIGUSR1);
    assert!(child.wait_for("checkpoint ", Duration::from_secs(60)).is_some(), "{:?}", child.seen);
    child.signal(libc::SIGKILL); // most likely while generation 2 is being copied
    child.finish(Duration::from_secs(10));
    let durable = *flushed_generations(&log).last().unwrap();

    let mut reader = ckpt_tests::reader_config("trigger-test", &dir);
    reader.cache = Some(CacheLevel::new(&cache_root));
    // Requeued on the same node: the cache's newest.
    let r = Store::new(reader.clone()).restore().unwrap().unwrap();
    assert_eq!((r.level, r.generation), (Level::Cache, 2));
    // On another node: the newest generation whose copy completed, verified; a half-written copy (a
    // temporary file of the killed process) is never taken.
    std::fs::remove_dir_all(&cache_root).unwrap();
    let r = Store::new(reader).restore().unwrap().unwrap();
    assert_eq!((r.level, r.generation), (Level::Shared, durable));
}

#[test]
fn the_time_limit_checkpoint_is_durable_before_the_program_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, cache_root) = (tmp.path().join("shared"), tmp.path().join("cache"));
    std::fs::create_dir_all(&dir).unwrap();
    let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 6;
    // No wait at the program's end: only should_exit's own wait for the copy can make it durable.
    let mut child = trigger_child(
        &dir,
        &cache_root,
        &[
            ("CKPT_END_TIME", &end.to_string()),
            ("CKPT_MARGIN", "3"),
            ("CKPT_FLUSH_TIMEOUT", "0"),
            ("CKPT_FLUSH", "exit"),
        ],
    );
    child.wait_for("exit ", Duration::from_secs(60)).unwrap_or_else(|| panic!("{:?}", child.seen));
    assert!(child.finish(Duration::from_secs(30)).success());
    // The program computes on while the copy runs; what restart resumes is the checkpoint's step.
    let saved = child.lines_with("checkpoint ");
    assert_eq!(saved.len(), 1, "one time-limit checkpoint: {:?}", child.seen);
    let step: u64 = saved[0].split_whitespace().nth(1).unwrap().parse().unwrap();
    std::fs::remove_dir_all(&cache_root).unwrap();
    let reader = ckpt_tests::reader_config("trigger-test", &dir);
    let r = Store::new(reader).restore().unwrap().expect("the time-limit checkpoint in the checkpoint directory");
    assert_eq!(r.app_step, step, "the checkpoint the program exited after");
    assert_eq!(r.level, Level::Shared);
    let flushed = log_events(&dir.join("ckpt.log"), "flushed");
    assert_eq!(flushed.last().unwrap()["exit"], true);
}

#[test]
fn ckpt_flush_copies_what_a_killed_program_left_in_the_cache_and_ckpt_list_shows_both_levels() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, cache_root) = (tmp.path().join("shared"), tmp.path().join("cache"));
    std::fs::create_dir_all(&dir).unwrap();
    // Only the last checkpoint is copied, at the program's end, which a SIGKILL never reaches.
    let mut child = trigger_child(&dir, &cache_root, &[("CKPT_FLUSH", "exit"), ("CKPT_TEST_PAD_MIB", "1")]);
    for _ in 0..2 {
        child.signal(libc::SIGUSR1);
        assert!(child.wait_for("checkpoint ", Duration::from_secs(60)).is_some(), "{:?}", child.seen);
    }
    child.signal(libc::SIGKILL);
    child.finish(Duration::from_secs(10));
    assert_eq!(generations(&dir, "trigger-test.ckpt"), Vec::<u64>::new(), "nothing copied yet");

    let ckpt = |args: &[&str]| {
        let mut cmd = clean_command(&ckpt_tests::ckpt_cli(), &dir);
        cmd.args(args).env("CKPT_CACHE_DIR", &cache_root).env("CKPT_NAME", "trigger-test");
        cmd.output().unwrap()
    };
    let list = ckpt(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let levels: Vec<&str> = v["files"].as_array().unwrap().iter().filter_map(|f| f["level"].as_str()).collect();
    assert_eq!(levels, vec!["cache"], "{v:#}");
    let text = String::from_utf8_lossy(&ckpt(&["list"]).stdout).into_owned();
    assert!(text.contains("[cache]") && text.contains("generation 2"), "{text}");

    let out = ckpt(&["flush", "--wait", "--json"]);
    assert!(out.status.success(), "{}", ckpt_tests::output_text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let copied: Vec<u64> = v["flushed"].as_array().unwrap().iter().filter_map(|r| r["generation"].as_u64()).collect();
    assert_eq!(copied, vec![2], "{v:#}");
    assert_eq!(generations(&dir, "trigger-test.ckpt"), vec![2]);
    Checkpoint::open(dir.join("trigger-test.ckpt.2")).unwrap().verify().unwrap();
    let again = ckpt(&["flush"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to copy"), "{}", ckpt_tests::output_text(&again));

    // Another node restarts from what ckpt flush copied.
    std::fs::remove_dir_all(&cache_root).unwrap();
    let r = Store::new(ckpt_tests::reader_config("trigger-test", &dir)).restore().unwrap().unwrap();
    assert_eq!((r.level, r.generation), (Level::Shared, 2));
}

#[test]
fn a_background_checkpoint_saves_the_state_at_the_call_and_reports_its_failure_on_the_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let (shared, cache_root, log) = (tmp.path().join("shared"), tmp.path().join("cache"), tmp.path().join("log"));
    for cached in [false, true] {
        let mut cfg = config(&shared, &cache_root, &log, FlushPolicy::Every);
        if !cached {
            cfg.cache = None;
        }
        let cp = Checkpointer::new(Store::new(cfg.clone())).unwrap();
        let mut field = vec![1.5f64; 1 << 20];
        let snapshot = field.clone();
        cp.request_checkpoint(true);
        cp.checkpoint_async(10u64, move |w| w.add_slice("field", &snapshot)).unwrap();
        assert!(!cp.should_checkpoint(), "taken at the call");
        assert!(cp.checkpoint_in_flight());
        field.iter_mut().for_each(|x| *x = -1.0);
        let info = cp.checkpoint_wait().unwrap().expect("in flight");
        assert!(cp.should_exit(), "cached={cached}: durable after the wait");
        assert!(cp.checkpoint_wait().unwrap().is_none(), "nothing in flight any more");
        if cached {
            assert_eq!(cp.durable_generation(), Some(info.generation), "the wait covers the copy");
        }
        // A write that fails: the error comes back on the wait, and what made the checkpoint due is due again.
        cp.request_checkpoint(false);
        cp.checkpoint_async(11u64, |_| Err(ckpt_core::Error::invalid("the program's own failure"))).unwrap();
        let e = cp.checkpoint_wait().unwrap_err();
        assert!(e.to_string().contains("the program's own failure"), "{e}");
        assert!(cp.should_checkpoint(), "due again");
        // The next call reports the previous failure and starts nothing.
        cp.checkpoint_async(12u64, |_| Err(ckpt_core::Error::invalid("second"))).unwrap();
        let e = cp.checkpoint_async(13u64, |w| w.add_bytes("x", b"y")).unwrap_err();
        assert!(e.to_string().contains("second"), "{e}");
        drop(cp);
        let r = Store::new(cfg).restore().unwrap().unwrap();
        assert_eq!(r.app_step, 10);
        assert!(r.checkpoint.read_slice::<f64>("field").unwrap().iter().all(|&x| x == 1.5), "the state at the call");
        std::fs::remove_dir_all(&shared).unwrap();
        let _ = std::fs::remove_dir_all(&cache_root);
    }
}

/// Rank `rank` of 4 on "node" `rank / 2`: each node has its own cache root.
fn rank_checkpointer(tmp: &Path, rank: u32, policy: FlushPolicy) -> Checkpointer {
    let mut cache = CacheLevel::new(tmp.join(format!("node{}", rank / 2)));
    cache.flush = policy;
    let config = Config::builder("mr", tmp.join("shared"))
        .cache(Some(cache))
        .rank(rank, 4)
        .log(LogTarget::File(tmp.join(format!("log{rank}"))))
        .signals("")
        .commit_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    Checkpointer::new(Store::new(config)).unwrap()
}

/// One collective step as the MPI helpers take it: agree on the generation, each rank's part, rank 0
/// commits from the identities, every rank is told.
fn collective_step(cps: &[Checkpointer], step: u64) -> u64 {
    let g = cps.iter().map(|c| c.store().next_generation().unwrap()).max().unwrap();
    for (r, cp) in cps.iter().enumerate() {
        cp.checkpoint_part(g, step, |w| w.add_bytes("rows", &vec![r as u8 + step as u8; 4096 + r])).unwrap();
    }
    let ids: Vec<_> = cps.iter().map(|c| c.store().part_identity(g).unwrap()).collect();
    cps[0].store().commit_step_with_parts(g, step, &ids).unwrap();
    for cp in cps {
        cp.finish_step(true);
    }
    g
}

#[test]
fn a_multi_rank_step_is_cached_on_each_node_then_committed_in_the_checkpoint_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let cps: Vec<Checkpointer> = (0..4).map(|r| rank_checkpointer(tmp.path(), r, FlushPolicy::Exit)).collect();
    let g1 = collective_step(&cps, 10);
    for cp in &cps {
        cp.request_checkpoint(true); // SIGTERM reaches every rank
    }
    let g2 = collective_step(&cps, 20);
    for (r, cp) in cps.iter().enumerate() {
        assert_eq!(cp.wait_for_flush(Some(Duration::from_secs(120))).unwrap(), Some(g2), "rank {r}");
        assert!(cp.should_exit(), "rank {r}: the step is durable in the checkpoint directory");
    }
    // Every step is copied, whatever CKPT_FLUSH says: rank 0 waits for every rank's copy of each.
    let flushed: Vec<u64> =
        log_events(&tmp.path().join("log0"), "flushed").iter().filter_map(|e| e["generation"].as_u64()).collect();
    assert_eq!(flushed, vec![g1, g2]);
    assert_eq!(generations(&shared, "mr.ckpt"), vec![g1, g2]);
    for r in 0..4 {
        // Each rank's part was committed to its node's cache: the log says so.
        let saved = log_events(&tmp.path().join(format!("log{r}")), "checkpoint");
        let levels: Vec<&str> = saved.iter().filter_map(|e| e["level"].as_str()).collect();
        assert_eq!(levels, ["cache", "cache"], "rank {r}: {saved:?}");
    }
    for r in 0..4 {
        Checkpoint::open(shared.join(format!("mr.ckpt.parts/{g2}/rank{r}.ckpt"))).unwrap().verify().unwrap();
    }
    drop(cps);

    // Restarted on the same nodes: each rank finds the step (rank 0's cache holds its manifest but not
    // node 1's parts, which a rank restoring on its own must all verify: the checkpoint directory's copy;
    // with the MPI helpers, which check this rank's part only, node 0's ranks read their caches).
    let restore = |rank: u32| {
        let cp = rank_checkpointer(tmp.path(), rank, FlushPolicy::Every);
        let r = cp.store().restore().unwrap().expect("a step");
        (r.generation, r.level, r.checkpoint.read("rows").unwrap().to_vec())
    };
    for rank in 0..4u32 {
        let (g, _, rows) = restore(rank);
        assert_eq!((g, rows), (g2, vec![rank as u8 + 20; 4096 + rank as usize]), "rank {rank}");
    }
    // Node 0 lost: every rank restarts from the checkpoint directory.
    std::fs::remove_dir_all(tmp.path().join("node0")).unwrap();
    for rank in 0..4u32 {
        let (g, level, _) = restore(rank);
        assert_eq!((g, level), (g2, Level::Shared), "rank {rank}");
    }
}

#[test]
fn a_cache_directory_another_user_made_is_refused() {
    let Some(uid) = crate::identity::as_root_or_skip("a cache directory of another user") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (shared, cache_root, log) = (tmp.path().join("shared"), tmp.path().join("cache"), tmp.path().join("log"));
    let store = Store::new(config(&shared, &cache_root, &log, FlushPolicy::Every));
    let dir = store.cache_dir().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap(); // 0700, as ckpt would make it: only the owner differs
    crate::identity::give_to(&dir, uid);
    let e = store.begin(1u64).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Untrusted, "{e}");
    assert!(e.to_string().contains(&format!("belongs to uid {uid}")), "{e}");
    assert!(!shared.exists() || generations(&shared, "lvl.ckpt").is_empty(), "nothing written");
}

/// One run of the trigger program (300 steps of 10 ms, 8 MiB of padding per checkpoint) with the cache
/// level in `cache_root` and `CKPT_FLUSH=policy`, its log in `log`.
fn cycle_child(dir: &Path, cache_root: &Path, policy: &str, log: &Path) -> LiveChild {
    let mut cmd = clean_command(Path::new(TRIGGER), dir);
    cmd.arg("300").arg("10").env("CKPT_TEST_PAD_MIB", "8").env("CKPT_LOG", log);
    cmd.env("CKPT_CACHE_DIR", cache_root).env("CKPT_FLUSH", policy);
    LiveChild::spawn(cmd)
}

/// The step of a `checkpoint <step> <path>` or `resumed <step>` line.
fn step_of(line: &str) -> u64 {
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no step in {line:?}"))
}

/// Three SIGTERM/restart cycles in a row with the cache level, as a requeued job lives them: each run
/// takes a SIGUSR1 checkpoint, then SIGTERM's, and exits once that one is durable; the next run resumes
/// at SIGTERM's step: from the cache on the same node (cycles 2 and 4), from the checkpoint directory on
/// another node (cycle 3, the cache gone). The log says each checkpoint was cached and which were copied,
/// the numbering goes on across runs and levels, nothing of an older run is taken for the newest, and the
/// last run ends as an uninterrupted one.
fn three_restart_cycles(policy: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, cache_root, reference_dir) =
        (tmp.path().join("shared"), tmp.path().join("cache"), tmp.path().join("ref"));
    for d in [&dir, &reference_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut reference = cycle_child(&reference_dir, &tmp.path().join("refcache"), policy, &tmp.path().join("reflog"));
    let done = reference.wait_for("done ", Duration::from_secs(120)).unwrap_or_else(|| panic!("{:?}", reference.seen));
    assert!(reference.finish(Duration::from_secs(60)).success());

    let cache_dir = {
        let mut cfg = ckpt_tests::reader_config("trigger-test", &dir);
        cfg.cache = Some(CacheLevel::new(&cache_root));
        Store::new(cfg).cache_dir().unwrap().to_path_buf()
    };
    let mut resume: Option<(u64, u64)> = None; // (generation, step) of the last SIGTERM checkpoint
    let mut newest_generation = 0u64;
    for cycle in 1..=4u32 {
        if cycle == 3 {
            std::fs::remove_dir_all(&cache_root).unwrap(); // requeued on another node
        }
        let log = tmp.path().join(format!("log{cycle}"));
        let mut child = cycle_child(&dir, &cache_root, policy, &log);
        let what = format!("{policy}, run {cycle}");
        assert!(child.wait_for("ready", Duration::from_secs(60)).is_some(), "{what}: {:?}", child.seen);
        let restore = log_events(&log, "restore");
        assert_eq!(restore.len(), 1, "{what}: {restore:?}");
        match resume {
            None => assert!(restore[0]["path"].is_null(), "{what}: a fresh start: {restore:?}"),
            Some((generation, step)) => {
                let resumed: Vec<u64> = child.lines_with("resumed ").iter().map(|l| step_of(l)).collect();
                assert_eq!(resumed, vec![step], "{what}: {:?}", child.seen);
                assert_eq!(
                    (restore[0]["generation"].as_u64(), restore[0]["step"].as_u64()),
                    (Some(generation), Some(step)),
                    "{what}: the newest generation, of the last run's SIGTERM: {restore:?}"
                );
                let from = PathBuf::from(restore[0]["path"].as_str().unwrap());
                let level = if from.starts_with(&cache_dir) { Level::Cache } else { Level::Shared };
                let expected = if cycle == 3 { Level::Shared } else { Level::Cache };
                assert_eq!(level, expected, "{what}: restored from {}", from.display());
            }
        }
        if cycle == 4 {
            // The last run: to the end, as the uninterrupted run ended.
            let line = child.wait_for("done ", Duration::from_secs(120)).unwrap_or_else(|| panic!("{:?}", child.seen));
            assert!(child.finish(Duration::from_secs(60)).success(), "{what}");
            assert_eq!(line, done, "{what}: the result differs from the uninterrupted run's");
            break;
        }
        child.signal(libc::SIGUSR1);
        let first =
            child.wait_for("checkpoint ", Duration::from_secs(60)).unwrap_or_else(|| panic!("{:?}", child.seen));
        std::thread::sleep(Duration::from_millis(100));
        child.signal(libc::SIGTERM);
        let last = child.wait_for("checkpoint ", Duration::from_secs(60)).unwrap_or_else(|| panic!("{:?}", child.seen));
        assert!(child.wait_for("exit ", Duration::from_secs(120)).is_some(), "{what}: {:?}", child.seen);
        assert!(child.finish(Duration::from_secs(60)).success(), "{what}");
        let (first, last) = (step_of(&first), step_of(&last));
        assert!(resume.is_none_or(|(_, s)| first > s) && last > first, "{what}: {:?}", child.seen);

        // Both checkpoints were cached, with generations after every earlier run's.
        let saved = log_events(&log, "checkpoint");
        let levels: Vec<&str> = saved.iter().filter_map(|e| e["level"].as_str()).collect();
        assert_eq!(levels, ["cache", "cache"], "{what}: {saved:?}");
        let numbers: Vec<u64> = saved.iter().filter_map(|e| e["generation"].as_u64()).collect();
        assert_eq!(numbers, [newest_generation + 1, newest_generation + 2], "{what}: numbering goes on");
        newest_generation += 2;
        // SIGTERM's was copied (the exit waited for it); with `exit` nothing else was.
        let flushed = log_events(&log, "flushed");
        let copied: Vec<u64> = flushed.iter().filter_map(|e| e["generation"].as_u64()).collect();
        assert_eq!(copied.last(), Some(&newest_generation), "{what}: {flushed:?}");
        assert_eq!(flushed.last().unwrap()["exit"], true, "{what}");
        if policy == "exit" {
            assert_eq!(copied, [newest_generation], "{what}: only the last checkpoint is copied");
        }
        let durable = Checkpoint::open(dir.join(format!("trigger-test.ckpt.{newest_generation}"))).unwrap();
        durable.verify().unwrap();
        assert_eq!(durable.step(), last, "{what}");
        assert_eq!(generations(&cache_dir, "trigger-test.ckpt"), [newest_generation], "{what}: the cache keeps one");
        resume = Some((newest_generation, last));
    }
}

#[test]
fn three_sigterm_restart_cycles_in_a_row_with_the_cache_level() {
    for policy in ["every", "exit"] {
        three_restart_cycles(policy);
    }
}

/// A copy to the checkpoint directory writes over the spare there (the generation the previous copy
/// retired), as a save there does, and what it publishes reads back whole.
#[test]
fn copies_to_the_checkpoint_directory_write_over_the_spare() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (shared, cache_root) = (tmp.path().join("shared"), tmp.path().join("cache"));
    std::fs::create_dir_all(&cache_root).expect("cache root");
    let mut cfg = config(&shared, &cache_root, &tmp.path().join("log"), FlushPolicy::Every);
    cfg.keep = 1;
    let store = Store::new(cfg.clone());
    // Large enough to be kept as a spare (16 MiB and more, on a local file system), each smaller than the
    // one before: the spare a copy writes over is longer than the copy.
    let data = |step: u64| -> Vec<u8> {
        (0..((24 - step as usize) << 20)).map(|i| (i as u64 * 31 + step * 7) as u8).collect()
    };
    let mut reused = Vec::new();
    for step in 1..=4u64 {
        let mut w = store.begin(step).expect("begin");
        w.add_bytes("state", &data(step)).expect("add");
        let info = w.commit().expect("commit to the cache");
        let source = Checkpoint::open(&info.generation_path).expect("open the cached file");
        let copied = store.flush_checkpoint(&source).expect("flush");
        assert!(copied.warnings.is_empty(), "{:?}", copied.warnings);
        reused.push(copied.reused_spare);
        let cp = Checkpoint::open(shared.join("lvl.ckpt")).expect("open the copy");
        cp.verify().expect("the copy verifies");
        assert!(cp.read("state").expect("read")[..] == data(step)[..], "step {step}: the copy's bytes");
    }
    let spare_reuse = ckpt_core::storage::FileStorage.spare_reuse().and_then(|r| r.spare_min_len(&shared));
    if spare_reuse.is_some() {
        assert_eq!(reused, [false, false, true, true], "the third copy on finds the spare the second retired");
        assert!(shared.join("lvl.ckpt.tmp.spare").exists());
    }
    assert_eq!(generations(&shared, "lvl.ckpt"), [4]);
}

/// The cache keeps a spare as the checkpoint directory does: a save there writes over the generation the
/// previous save retired (unless the copying thread still has it open), and every checkpoint still
/// reaches the checkpoint directory whole.
#[test]
fn saves_to_the_cache_write_over_its_spare() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (shared, cache_root) = (tmp.path().join("shared"), tmp.path().join("cache"));
    std::fs::create_dir_all(&cache_root).expect("cache root");
    let mut cfg = config(&shared, &cache_root, &tmp.path().join("log"), FlushPolicy::Every);
    cfg.keep = 1;
    let cp = Checkpointer::new(Store::new(cfg)).expect("checkpointer");
    let cache_dir = cp.store().cache_dir().expect("cache level").to_path_buf();
    let data = |step: u64| -> Vec<u8> { (0..(20usize << 20)).map(|i| (i as u64 * 13 + step) as u8).collect() };
    let mut reused = Vec::new();
    for step in 1..=4u64 {
        let info = cp.checkpoint(step, |w| w.add_bytes("state", &data(step))).expect("checkpoint");
        assert_eq!(info.generation_path.parent(), Some(cache_dir.as_path()));
        reused.push(info.reused_spare);
        assert_eq!(cp.wait_for_flush(Some(Duration::from_secs(120))).expect("flush"), Some(step));
        let copy = Checkpoint::open(shared.join("lvl.ckpt")).expect("open the copy");
        copy.verify().expect("the copy verifies");
        assert!(copy.read("state").expect("read")[..] == data(step)[..], "step {step}");
    }
    let spare_reuse = ckpt_core::storage::FileStorage.spare_reuse().and_then(|r| r.spare_min_len(&cache_dir));
    if spare_reuse.is_some() {
        assert!(reused[2..].iter().all(|&r| r), "saves 3 and 4 write over the cache's spare: {reused:?}");
        assert!(cache_dir.join("lvl.ckpt.tmp.spare").exists());
    }
    let r = Store::new(cp.store().config().clone()).restore().expect("restore").expect("a checkpoint");
    assert_eq!(r.generation, 4);
    assert!(r.checkpoint.read("state").expect("read")[..] == data(4)[..]);
}
