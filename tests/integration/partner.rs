//! Partner copies (`CKPT_PARTNER=1`): the files at both ends of a transfer between nodes. The MPI helpers
//! move the bytes (ckpt-ffi/tests/mpi.rs, scenario (g), runs them under Open MPI and MPICH); here the
//! "nodes" are cache roots and the "network" a loop, so that every refusal can be checked precisely.

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
