//! Partner copies (`CKPT_PARTNER=1`): the files at both ends of a transfer between nodes. The MPI helpers
//! move the bytes (ckpt-ffi/tests/mpi.rs, scenario (g), runs them under Open MPI and MPICH); here the
//! "nodes" are cache roots and the "network" a loop, so that every refusal can be checked precisely.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use ckpt_core::{
    CacheLevel, Checkpointer, Config, ErrorKind, FlushPolicy, Level, LogTarget, PartCopy, PartIdentity, Store,
};

/// Rank `rank` of 2, on node `rank`: each rank has its own cache root, partner copies on.
fn rank_checkpointer(tmp: &Path, rank: u32) -> Checkpointer {
    let mut cache = CacheLevel::new(tmp.join(format!("node{rank}")));
    cache.flush = FlushPolicy::Exit;
    cache.partner = true;
    cache.node = Some(format!("node{rank}"));
    let config = Config::builder("pt", tmp.join("shared"))
        .cache(Some(cache))
        .rank(rank, 2)
        .log(LogTarget::File(tmp.join(format!("log{rank}"))))
        .signals("")
        .commit_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    Checkpointer::new(Store::new(config)).unwrap()
}

/// A committed step of both ranks (as the MPI helpers take it), rank 1 recording it in its cache too.
fn step(cps: &[Checkpointer], app_step: u64) -> (u64, Vec<PartIdentity>) {
    let g = cps.iter().map(|c| c.store().next_generation().unwrap()).max().unwrap();
    for (r, cp) in cps.iter().enumerate() {
        cp.checkpoint_part(g, app_step, |w| w.add_bytes("rows", &rows(r as u32, app_step))).unwrap();
    }
    let ids: Vec<PartIdentity> = cps.iter().map(|c| c.store().part_identity(g).unwrap()).collect();
    cps[0].store().commit_step_with_parts(g, app_step, &ids).unwrap();
    cps[1].store().record_step(g, app_step, &ids).unwrap();
    for cp in cps {
        cp.finish_step(true);
    }
    (g, ids)
}

fn rows(rank: u32, app_step: u64) -> Vec<u8> {
    (0..300_000u32).map(|i| (i.wrapping_mul(31) ^ rank ^ app_step as u32) as u8).collect()
}

/// Sends `from`'s `copy` of rank `rank`'s part to `to` in chunks of `chunk` bytes, passing each through
/// `wire` (which may damage it), and commits it there as `into`.
fn transfer(
    from: &Store,
    to: &Store,
    (copy, into): (PartCopy, PartCopy),
    id: &PartIdentity,
    chunk: usize,
    wire: impl Fn(u64, &mut [u8]),
) -> ckpt_core::Result<()> {
    let mut receiver = to.receive_part(into, id.generation, id.rank)?;
    let mut off = 0u64;
    while off < id.file_len {
        let len = chunk.min((id.file_len - off) as usize);
        let mut buf = vec![0u8; len];
        from.read_cached_part(copy, id.generation, id.rank, off, &mut buf)?;
        wire(off, &mut buf);
        receiver.write_at(off, &buf)?;
        off += len as u64;
    }
    to.commit_received_part(receiver, id).map(drop)
}

fn kept_path(partner_dir: &Path, generation: u64, rank: u32) -> String {
    partner_dir.join(format!("{generation}/rank{rank}.ckpt")).display().to_string()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

#[test]
fn a_part_kept_by_the_partner_restores_a_lost_node_and_nothing_damaged_or_foreign_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let cps: Vec<Checkpointer> = (0..2).map(|r| rank_checkpointer(tmp.path(), r)).collect();
    let (s0, s1) = (cps[0].store(), cps[1].store());
    assert!(s0.has_partner_copies() && s0.node_name() == "node0");
    let (g, ids) = step(&cps, 7);
    let wire_ok = |_: u64, _: &mut [u8]| {};

    // Damaged on the way (one bit of the section data): refused, nothing kept, no temporary file left.
    let damage = |off: u64, buf: &mut [u8]| {
        if off == 0 {
            buf[buf.len() - 1] ^= 0x10;
        }
    };
    let own_to_partner = (PartCopy::Own, PartCopy::Partner);
    let e = transfer(s0, s1, own_to_partner, &ids[0], 64 << 10, damage).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(s1.partner_copies_held(g).unwrap(), Vec::<u32>::new());
    let partner_dir = s1.cache_dir().unwrap().join("pt.ckpt.partner");
    assert_eq!(files_under(&partner_dir), Vec::<String>::new(), "the refused copy's temporary file is removed");
    // Announced as another part than the one sent (the wrong rank's identity, a wrong length): refused.
    let mut other = ids[1];
    other.rank = 0;
    let e = transfer(s0, s1, own_to_partner, &other, 64 << 10, wire_ok).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let mut short = ids[0];
    short.file_len -= 1;
    assert!(transfer(s0, s1, own_to_partner, &short, 64 << 10, wire_ok).is_err());
    // Bytes out of order: refused at once.
    let mut r = s1.receive_part(PartCopy::Partner, g, 0).unwrap();
    let e = r.write_at(10, b"x").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    drop(r);
    assert_eq!(files_under(&partner_dir), Vec::<String>::new(), "a dropped transfer leaves nothing");
    // Own parts are this rank's only; partner copies of ranks of this job only.
    assert_eq!(s1.receive_part(PartCopy::Own, g, 0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(s1.receive_part(PartCopy::Partner, g, 2).unwrap_err().kind(), ErrorKind::InvalidArgument);

    // The real thing, in odd-sized chunks: kept, byte for byte the part.
    transfer(s0, s1, own_to_partner, &ids[0], 100_003, wire_ok).unwrap();
    transfer(s1, s0, own_to_partner, &ids[1], 1 << 20, wire_ok).unwrap();
    assert_eq!(s1.partner_copies_held(g).unwrap(), vec![0]);
    assert_eq!(s0.partner_copies_held(g).unwrap(), vec![1]);
    let kept = partner_dir.join(format!("{g}/rank0.ckpt"));
    let own = s0.cache_dir().unwrap().join(format!("pt.ckpt.parts/{g}/rank0.ckpt"));
    assert_eq!(std::fs::read(&kept).unwrap(), std::fs::read(&own).unwrap());

    // `ckpt list` on node 1 shows the copy it keeps for rank 0, verified.
    let mut cmd = ckpt_tests::clean_command(&ckpt_tests::ckpt_cli(), &tmp.path().join("shared"));
    cmd.args(["list", "--json"]).env("CKPT_CACHE_DIR", tmp.path().join("node1")).env("CKPT_NAME", "pt");
    let out = cmd.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let kept: Vec<_> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "partner")
        .map(|f| (f["status"].as_str().unwrap().to_string(), f["rank"].as_u64(), f["generation"].as_u64()))
        .collect();
    assert_eq!(kept, [("valid".to_string(), Some(0), Some(g))], "{v:#}");
    let mut cmd = ckpt_tests::clean_command(&ckpt_tests::ckpt_cli(), &tmp.path().join("shared"));
    cmd.arg("list").env("CKPT_CACHE_DIR", tmp.path().join("node1")).env("CKPT_NAME", "pt");
    let text = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
    assert!(
        text.contains("marked [partner]") && text.contains(&format!("[partner] {}", kept_path(&partner_dir, g, 0))),
        "{text}"
    );

    // A second step: the partner keeps CKPT_CACHE_KEEP (1) generations of copies.
    let (g2, ids2) = step(&cps, 8);
    transfer(s0, s1, own_to_partner, &ids2[0], 1 << 20, wire_ok).unwrap();
    assert_eq!(s1.partner_copies_held(g2).unwrap(), vec![0]);
    assert_eq!(s1.partner_copies_held(g).unwrap(), Vec::<u32>::new(), "the older copy is retired");
    drop(cps);

    // Node 0 lost, and the checkpoint directory holds nothing of the step (never flushed): rank 0 alone
    // finds nothing...
    std::fs::remove_dir_all(tmp.path().join("node0")).unwrap();
    let _ = std::fs::remove_dir_all(tmp.path().join("shared"));
    let r0 = rank_checkpointer(tmp.path(), 0);
    let r1 = rank_checkpointer(tmp.path(), 1);
    assert!(r0.store().restore_at_most(u64::MAX).unwrap().is_none());
    // ... until node 1 sends back the step's identities and rank 0's part.
    let (app_step, step_ids) = r1.store().step_identities(g2).unwrap();
    assert_eq!((app_step, step_ids.clone()), (8, ids2.clone()));
    r0.store().record_step(g2, app_step, &step_ids).unwrap();
    transfer(r1.store(), r0.store(), (PartCopy::Partner, PartCopy::Own), &step_ids[0], 1 << 20, wire_ok).unwrap();
    let restored = r0.store().restore_at_most(u64::MAX).unwrap().expect("the step, from the restored part");
    assert_eq!((restored.generation, restored.app_step, restored.level), (g2, 8, Level::Cache));
    assert_eq!(restored.checkpoint.read("rows").unwrap(), rows(0, 8).as_slice());
}

#[test]
fn a_part_written_by_another_run_is_not_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let cps: Vec<Checkpointer> = (0..2).map(|r| rank_checkpointer(tmp.path(), r)).collect();
    let (g, ids) = step(&cps, 3);
    // Another program under the same name (outside Slurm: another command line is another run).
    let mut cache = CacheLevel::new(tmp.path().join("node1"));
    cache.partner = true;
    let mut foreign =
        Config::builder("pt", tmp.path().join("shared")).cache(Some(cache)).rank(1, 2).signals("").build().unwrap();
    foreign.identity.cmdline = "another-program --other-input".into();
    foreign.identity.cmdline_hash = "0123456789abcdef".into();
    let foreign = Store::new(foreign);
    let e = transfer(cps[0].store(), &foreign, (PartCopy::Own, PartCopy::Partner), &ids[0], 1 << 20, |_, _| {})
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("another run"), "{e}");
    assert_eq!(foreign.partner_copies_held(g).unwrap(), Vec::<u32>::new());
}

/// One run of the program `pt` as the library sees it: its Slurm job id and array ids (none outside
/// Slurm) and its command line.
#[derive(Clone, Copy)]
struct Run {
    job: Option<&'static str>,
    array: Option<(&'static str, &'static str)>,
    cmdline: &'static str,
}

/// Rank `rank` of 2 of `run`, on node `rank`: the node's cache root and the checkpoint directory are the
/// ones every run of the test shares. A store without a checkpointer: nothing reaches the checkpoint
/// directory behind the test's back.
fn run_store(tmp: &Path, run: Run, rank: u32) -> Store {
    let mut cache = CacheLevel::new(tmp.join(format!("node{rank}")));
    cache.partner = true;
    cache.node = Some(format!("node{rank}"));
    let mut config =
        Config::builder("pt", tmp.join("shared")).cache(Some(cache)).rank(rank, 2).signals("").build().unwrap();
    config.job_id = run.job.map(String::from);
    config.identity.job.clone_from(&config.job_id);
    config.identity.array_job = run.array.map(|a| a.0.to_string());
    config.identity.array_task = run.array.map(|a| a.1.to_string());
    config.identity.cmdline = run.cmdline.into();
    config.identity.cmdline_hash =
        format!("{:016x}", run.cmdline.bytes().fold(7u64, |h, b| h.wrapping_mul(131) ^ u64::from(b)));
    Store::new(config)
}

/// A committed step of both ranks' stores, as [`step`] takes it.
fn store_step(stores: &[Store], app_step: u64) -> ckpt_core::Result<(u64, Vec<PartIdentity>)> {
    let g = stores.iter().map(|s| s.next_generation().unwrap()).max().unwrap();
    for (r, s) in stores.iter().enumerate() {
        let mut w = s.begin_part(g, app_step)?;
        w.add_bytes("rows", &rows(r as u32, app_step))?;
        w.commit()?;
    }
    let ids: Vec<PartIdentity> = stores.iter().map(|s| s.part_identity(g).unwrap()).collect();
    stores[0].commit_step_with_parts(g, app_step, &ids)?;
    stores[1].record_step(g, app_step, &ids)?;
    for s in stores {
        s.after_step_committed(g);
    }
    Ok((g, ids))
}

/// Each rank's part of the step of `ids` kept on the other node, as the MPI helpers exchange them.
fn exchange(stores: &[Store], ids: &[PartIdentity]) {
    let own_to_partner = (PartCopy::Own, PartCopy::Partner);
    transfer(&stores[0], &stores[1], own_to_partner, &ids[0], 1 << 20, |_, _| {}).unwrap();
    transfer(&stores[1], &stores[0], own_to_partner, &ids[1], 1 << 20, |_, _| {}).unwrap();
}

/// What a node lost before the step was flushed takes with it of the checkpoint name `base`: its cache's
/// entries under that name (own parts, manifests, the partner copies it kept), and that name's files in the
/// checkpoint directory.
fn lose_node(store: &Store, base: &str) {
    for dir in [store.cache_dir().unwrap(), store.config().checkpoint_dir.as_path()] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == base || name.starts_with(&format!("{base}.")) {
                let p = e.path();
                if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }.unwrap();
            }
        }
    }
}

/// Rank `lost`'s part of the step of `generation` back from the partner copy the other node keeps, as
/// `partner_restore` of the MPI helpers does: the step's identities from the other rank's cache, recorded
/// in the lost rank's, then the part. Returns the step restart then finds on the lost rank.
fn restore_from_partner(stores: &[Store], lost: usize, generation: u64) -> ckpt_core::Restored {
    let (lost_store, keeper) = (&stores[lost], &stores[1 - lost]);
    let (app_step, ids) = keeper.step_identities(generation).unwrap();
    lost_store.record_step(generation, app_step, &ids).unwrap();
    let partner_to_own = (PartCopy::Partner, PartCopy::Own);
    transfer(keeper, lost_store, partner_to_own, &ids[lost], 1 << 20, |_, _| {}).unwrap();
    lost_store.restore_at_most(u64::MAX).unwrap().expect("the step, from the restored part")
}

/// The partner copies `ckpt list --json` shows in `node`'s cache: (job id, rank, generation, path).
fn listed_partner_copies(tmp: &Path, node: &str) -> Vec<(String, u64, u64, String)> {
    // Nothing was flushed: the checkpoint directory may not exist yet.
    std::fs::create_dir_all(tmp.join("shared")).unwrap();
    let mut cmd = ckpt_tests::clean_command(&ckpt_tests::ckpt_cli(), &tmp.join("shared"));
    cmd.args(["list", "--json"]).env("CKPT_CACHE_DIR", tmp.join(node)).env("CKPT_NAME", "pt");
    let out = cmd.output().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", ckpt_tests::output_text(&out)));
    let mut rows: Vec<_> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "partner")
        .map(|f| {
            assert_eq!(f["status"], "valid", "{f:#}");
            let n = |k: &str| f[k].as_u64().unwrap();
            (f["job_id"].as_str().unwrap().to_string(), n("rank"), n("generation"), f["path"].as_str().unwrap().into())
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn two_tasks_of_a_job_array_sharing_the_caches_keep_retire_list_and_restore_only_their_own_partner_copies() {
    let tmp = tempfile::tempdir().unwrap();
    // Two tasks of array job 100: the same program and command line, job ids of their own.
    let a = Run { job: Some("101"), array: Some(("100", "1")), cmdline: "pt --input task.in" };
    let b = Run { job: Some("102"), array: Some(("100", "2")), cmdline: "pt --input task.in" };
    let sa: Vec<Store> = (0..2).map(|r| run_store(tmp.path(), a, r)).collect();
    let sb: Vec<Store> = (0..2).map(|r| run_store(tmp.path(), b, r)).collect();
    assert_eq!(sa[0].cache_dir(), sb[0].cache_dir(), "one cache directory for both tasks");

    // Steps taken in turns. Each task numbers its own steps: their generations are the same numbers, so
    // only the name keeps their copies apart.
    let (ga1, ida1) = store_step(&sa, 11).unwrap();
    exchange(&sa, &ida1);
    let (gb1, idb1) = store_step(&sb, 21).unwrap();
    exchange(&sb, &idb1);
    assert_eq!(ga1, gb1);
    let (ga2, ida2) = store_step(&sa, 12).unwrap();
    exchange(&sa, &ida2);
    // Task 1's retention (CKPT_CACHE_KEEP=1) retired its older copies, not task 2's of that generation.
    assert_eq!((sa[1].partner_copies_held(ga1).unwrap(), sa[0].partner_copies_held(ga1).unwrap()), (vec![], vec![]));
    assert_eq!((sb[1].partner_copies_held(gb1).unwrap(), sb[0].partner_copies_held(gb1).unwrap()), (vec![0], vec![1]));
    let (gb2, idb2) = store_step(&sb, 22).unwrap();
    exchange(&sb, &idb2);
    assert_eq!(ga2, gb2);
    assert_eq!((sb[1].partner_copies_held(gb1).unwrap(), sb[0].partner_copies_held(gb1).unwrap()), (vec![], vec![]));
    for (s, ids) in [(&sa, &ida2), (&sb, &idb2)] {
        assert_eq!(
            (
                s[1].partner_copies_held(ids[0].generation).unwrap(),
                s[0].partner_copies_held(ids[0].generation).unwrap()
            ),
            (vec![0], vec![1])
        );
    }
    // Each task's copy is its own part, not the other's (the same generation, rank and size).
    let kept = |s: &Store, job: &str| {
        std::fs::read(s.cache_dir().unwrap().join(format!("{job}.ckpt.partner/{ga2}/rank0.ckpt"))).unwrap()
    };
    let own = |s: &Store, job: &str| {
        std::fs::read(s.cache_dir().unwrap().join(format!("{job}.ckpt.parts/{ga2}/rank0.ckpt"))).unwrap()
    };
    assert!(kept(&sa[1], "101") == own(&sa[0], "101") && kept(&sb[1], "102") == own(&sb[0], "102"));
    assert!(kept(&sa[1], "101") != kept(&sb[1], "102"));

    // `ckpt list` on node 1 names each copy's job: one copy of rank 0's part per task, under its own name.
    let node1 = sa[1].cache_dir().unwrap();
    let at = |job: &str| node1.join(format!("{job}.ckpt.partner/{ga2}/rank0.ckpt")).display().to_string();
    assert_eq!(
        listed_partner_copies(tmp.path(), "node1"),
        [("101".to_string(), 0, ga2, at("101")), ("102".to_string(), 0, gb2, at("102"))]
    );

    // Task 1 loses node 0 (the step never reached the checkpoint directory): its rank 0 alone finds
    // nothing, and takes nothing of task 2, whose files on node 0 are of another array task.
    lose_node(&sa[0], "101.ckpt");
    drop(sa);
    let ra: Vec<Store> = (0..2).map(|r| run_store(tmp.path(), a, r)).collect();
    assert!(ra[0].restore_at_most(u64::MAX).unwrap().is_none());
    // Task 2's copy of rank 0's part, sent to task 1's rank 0 as its own (with its committed identity):
    // refused as another run's, nothing kept.
    let e = transfer(&sb[1], &ra[0], (PartCopy::Partner, PartCopy::Own), &idb2[0], 1 << 20, |_, _| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("array task 2, this run is array task 1"), "{e}");
    assert_eq!(files_under(&ra[0].cache_dir().unwrap().join("101.ckpt.parts")), Vec::<String>::new());
    // Its own copy restores it, task 2's data untouched.
    let restored = restore_from_partner(&ra, 0, ga2);
    assert_eq!((restored.generation, restored.app_step), (ga2, 12));
    assert_eq!(restored.checkpoint.read("rows").unwrap(), rows(0, 12).as_slice());
    assert_eq!(sb[0].partner_copies_held(gb2).unwrap(), vec![1]);

    // Task 2 loses node 1: restored from the copy node 0 kept for it.
    lose_node(&sb[1], "102.ckpt");
    drop(sb);
    let rb: Vec<Store> = (0..2).map(|r| run_store(tmp.path(), b, r)).collect();
    assert!(rb[1].restore_at_most(u64::MAX).unwrap().is_none());
    let restored = restore_from_partner(&rb, 1, gb2);
    assert_eq!((restored.generation, restored.app_step), (gb2, 22));
    assert_eq!(restored.checkpoint.read("rows").unwrap(), rows(1, 22).as_slice());
    // Task 1's copy of rank 0's part, on the node task 2 lost its part of, is still there and its own.
    assert_eq!(ra[1].partner_copies_held(ga2).unwrap(), vec![0]);
}

#[test]
fn a_sweep_point_under_the_same_name_is_refused_before_it_retires_the_other_points_steps_and_partner_copies() {
    let tmp = tempfile::tempdir().unwrap();
    // Two points of a sweep outside Slurm: the same program and name, another command line.
    let a = Run { job: None, array: None, cmdline: "pt --lr 0.1" };
    let b = Run { job: None, array: None, cmdline: "pt --lr 0.2" };
    let sa: Vec<Store> = (0..2).map(|r| run_store(tmp.path(), a, r)).collect();
    let sb: Vec<Store> = (0..2).map(|r| run_store(tmp.path(), b, r)).collect();
    let (g1, ids1) = store_step(&sa, 10).unwrap();
    exchange(&sa, &ids1);

    // The other point's first step, on either node: refused loudly, before its part is written (its
    // commit would have retired the first point's step, parts and partner copies with CKPT_CACHE_KEEP=1).
    for r in [0, 1] {
        let e = sb[r].begin_part(g1 + 1, 20).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        let text = e.to_string();
        assert!(text.contains(&format!("pt.ckpt.{g1}")) && text.contains("\"pt --lr 0.1\""), "{text}");
        assert!(text.contains("CKPT_RESUME_FROM=pt"), "{text}");
    }
    assert!(store_step(&sb, 20).is_err());
    assert_eq!(
        files_under(&sa[0].cache_dir().unwrap().join(format!("pt.ckpt.parts/{}", g1 + 1))),
        Vec::<String>::new()
    );
    // Nor does it keep the first point's part as a partner copy.
    let e = transfer(&sa[0], &sb[1], (PartCopy::Own, PartCopy::Partner), &ids1[0], 1 << 20, |_, _| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");

    // The first point goes on, and after losing node 0 restarts from its own copy.
    assert_eq!((sa[1].partner_copies_held(g1).unwrap(), sa[0].partner_copies_held(g1).unwrap()), (vec![0], vec![1]));
    let (g2, ids2) = store_step(&sa, 11).unwrap();
    exchange(&sa, &ids2);
    lose_node(&sa[0], "pt.ckpt");
    drop(sa);
    let ra: Vec<Store> = (0..2).map(|r| run_store(tmp.path(), a, r)).collect();
    let restored = restore_from_partner(&ra, 0, g2);
    assert_eq!((restored.generation, restored.app_step), (g2, 11));
    assert_eq!(restored.checkpoint.read("rows").unwrap(), rows(0, 11).as_slice());
}

#[test]
fn a_partner_copy_is_neither_kept_nor_restored_in_a_directory_another_user_could_write() {
    let Some(other) = crate::identity::as_root_or_skip("partner copies and another user's directories") else {
        return;
    };
    let me = ckpt_core::identity::effective_uid();
    let tmp = tempfile::tempdir().unwrap();
    let run = Run { job: Some("7"), array: None, cmdline: "pt" };
    let stores: Vec<Store> = (0..2).map(|r| run_store(tmp.path(), run, r)).collect();
    let (g, ids) = store_step(&stores, 5).unwrap();
    let node1 = stores[1].cache_dir().unwrap().to_path_buf();
    let partner_root = node1.join("7.ckpt.partner");
    let own_to_partner = (PartCopy::Own, PartCopy::Partner);
    // Node 1 receives rank 0's part in a store of its own (a fresh process checks its cache again).
    let receive = || {
        let node1_store = run_store(tmp.path(), run, 1);
        transfer(&stores[0], &node1_store, own_to_partner, &ids[0], 1 << 20, |_, _| {})
    };
    let refused = |r: ckpt_core::Result<()>, dir: &Path, problem: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Untrusted, "{e}");
        let text = e.to_string();
        assert!(text.contains(&dir.display().to_string()) && text.contains(problem), "{text}");
        assert_eq!(files_under(&partner_root), Vec::<String>::new(), "nothing kept: {text}");
    };

    // The cache directory, another user's or writable by every user.
    crate::identity::give_to(&node1, other);
    refused(receive(), &node1, "belongs to uid");
    crate::identity::give_to(&node1, me);
    std::fs::set_permissions(&node1, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(receive(), &node1, "mode 777");
    std::fs::set_permissions(&node1, std::fs::Permissions::from_mode(0o700)).unwrap();
    // The partner copies' directory or the generation's below it, in a cache directory that is this
    // user's alone: another user's, or writable by the group.
    let gen_dir = partner_root.join(g.to_string());
    std::fs::create_dir_all(&gen_dir).unwrap();
    let set = |path: &Path, mode: u32, owner| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        crate::identity::give_to(path, owner);
    };
    for (dir, mode, owner, problem) in [
        (&partner_root, 0o755, other, "belongs to uid"),
        (&partner_root, 0o775, me, "mode 775"),
        (&gen_dir, 0o755, other, "belongs to uid"),
        (&gen_dir, 0o757, me, "mode 757"),
    ] {
        set(dir, mode, owner);
        refused(receive(), dir, problem);
        set(dir, 0o700, me);
    }
    receive().unwrap();
    assert_eq!(stores[1].partner_copies_held(g).unwrap(), vec![0]);

    // Node 0 lost. Restart takes nothing from node 1 that another user could have written: the kept
    // copy, its directories, or the step's manifest there.
    lose_node(&stores[0], "7.ckpt");
    drop(stores);
    let kept = gen_dir.join("rank0.ckpt");
    let manifest = node1.join(format!("7.ckpt.{g}"));
    let restarted = || -> Vec<Store> { (0..2).map(|r| run_store(tmp.path(), run, r)).collect() };
    for (path, mode, owner, problem) in [
        (&kept, 0o600, other, "belongs to uid"),
        (&kept, 0o622, me, "mode 622"),
        (&gen_dir, 0o700, other, "belongs to uid"),
        (&partner_root, 0o777, me, "mode 777"),
    ] {
        set(path, mode, owner);
        let s = restarted();
        let e = transfer(&s[1], &s[0], (PartCopy::Partner, PartCopy::Own), &ids[0], 1 << 20, |_, _| {}).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Untrusted, "{e}");
        assert!(e.to_string().contains(&path.display().to_string()) && e.to_string().contains(problem), "{e}");
        assert!(s[0].restore_at_most(u64::MAX).unwrap().is_none(), "nothing restored on node 0");
        // `ckpt list` says so too, where it listed such a copy as valid before.
        assert_eq!(partner_statuses(tmp.path(), "node1"), ["untrusted"], "{}", path.display());
        set(path, if path == &kept { 0o600 } else { 0o700 }, me);
    }
    crate::identity::give_to(&manifest, other);
    let e = restarted()[1].step_identities(g).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Untrusted, "{e}");
    assert!(e.to_string().contains(&manifest.display().to_string()), "{e}");
    crate::identity::give_to(&manifest, me);
    let restored = restore_from_partner(&restarted(), 0, g);
    assert_eq!(restored.checkpoint.read("rows").unwrap(), rows(0, 5).as_slice());
    assert_eq!(partner_statuses(tmp.path(), "node1"), ["valid"]);

    // A rank's own part is not written into a cache directory another user could write either (a whole
    // checkpoint never was).
    std::fs::set_permissions(&node1, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = restarted()[1].begin_part(g + 1, 6).map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Untrusted, "{e}");
    assert!(e.to_string().contains(&node1.display().to_string()) && e.to_string().contains("mode 777"), "{e}");
    std::fs::set_permissions(&node1, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// The status `ckpt list --json` gives each partner copy in `node`'s cache.
fn partner_statuses(tmp: &Path, node: &str) -> Vec<String> {
    std::fs::create_dir_all(tmp.join("shared")).unwrap();
    let mut cmd = ckpt_tests::clean_command(&ckpt_tests::ckpt_cli(), &tmp.join("shared"));
    cmd.args(["list", "--json"]).env("CKPT_CACHE_DIR", tmp.join(node)).env("CKPT_NAME", "pt");
    let out = cmd.output().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", ckpt_tests::output_text(&out)));
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "partner")
        .map(|f| f["status"].as_str().unwrap().to_string())
        .collect()
}
