//! Partner copies (`CKPT_PARTNER=1`): the calls `ckpt_mpi.h` and `ckpt_mpi.f90` use to keep each rank's
//! part in the cache of a rank on another node and to bring a lost part back from there. libckpt moves no
//! bytes between processes: the MPI helpers send what `ckpt_part_copy_read` reads, and the receiving rank
//! hands it to `ckpt_part_copy_write`, then `ckpt_part_copy_commit`, which keeps it only once it is exactly
//! the part rank 0 committed and verifies completely.

use std::ffi::c_void;

use ckpt_core::PartCopy;

use crate::multirank::{ckpt_part_identity, identities};
use crate::state::*;
use crate::status::*;

/// `copy` argument: this rank's own part of a step, in its node's cache (`rank` must be this rank's).
pub const CKPT_PART_OWN: i32 = 0;
/// `copy` argument: the copy this node's cache keeps of another rank's part.
pub const CKPT_PART_PARTNER: i32 = 1;

fn part_copy(copy: i32) -> FfiResult<PartCopy> {
    match copy {
        CKPT_PART_OWN => Ok(PartCopy::Own),
        CKPT_PART_PARTNER => Ok(PartCopy::Partner),
        _ => Err(FfiError::new(
            CKPT_ERR_INVALID_ARGUMENT,
            format!("copy {copy} is neither CKPT_PART_OWN (0) nor CKPT_PART_PARTNER (1)"),
        )),
    }
}

/// 1 when this process keeps partner copies (`CKPT_PARTNER=1` with a cache level, `CKPT_CACHE_DIR`), else
/// 0 (also before `ckpt_init`). The MPI helpers take the maximum over the ranks. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_has_partner_copies() -> i32 {
    guard(|| Ok(lock(&STATE).as_ref().map_or(0, |s| i32::from(s.checkpointer.store().has_partner_copies())))).max(0)
}

/// Writes to `*key_out` a 64-bit key of this process's node (the same on every rank of one node, and
/// different between nodes but for a 2^-64 chance): `CKPT_NODE_ID` when set, else `SLURM_TOPOLOGY_ADDR`
/// when it names this host, else the host name. The MPI helpers gather the keys to place each rank's
/// partner copy on another node. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_node_key(key_out: *mut u64) -> i32 {
    guard(|| {
        null_check(key_out, "key_out")?;
        with_state(|s| {
            let key = ckpt_core::levels::node_key(&s.checkpointer.store().node_name());
            // SAFETY: checked non-NULL.
            unsafe { *key_out = key };
            Ok(CKPT_OK)
        })
    })
}

/// Reads `len` bytes at `offset` of a part in this node's cache into `buf`: with `copy` =
/// `CKPT_PART_OWN`, this rank's own part of `generation` (`rank` = this rank); with `CKPT_PART_PARTNER`,
/// the copy this node keeps of rank `rank`'s part. `buf` may be NULL when `len` is 0; it is written only
/// on success. `CKPT_ERR_NOT_FOUND` when the cache does not hold that part, `CKPT_ERR_IO` past its end,
/// `CKPT_ERR_INVALID_STATE` without a cache level. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_part_copy_read(
    copy: i32,
    generation: u64,
    rank: u32,
    offset: u64,
    buf: *mut c_void,
    len: usize,
) -> i32 {
    guard(|| {
        let which = part_copy(copy)?;
        if len > 0 {
            null_check(buf, "buf")?;
        }
        with_state(|s| {
            let mut bytes = vec![0u8; len];
            s.checkpointer.store().read_cached_part(which, generation, rank, offset, &mut bytes)?;
            if len > 0 {
                // SAFETY: buf is non-NULL (checked for len > 0) with len writable bytes (the caller's
                // contract); `bytes` is a separate allocation of len bytes.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), len) };
            }
            Ok(CKPT_OK)
        })
    })
}

/// Receives the `len` bytes at `offset` of a part sent by another node, into this node's cache (`copy` and
/// `rank` as for `ckpt_part_copy_read`): bytes arrive in order, and offset 0 starts the part anew (an
/// unfinished earlier transfer of it is dropped). The bytes go to a temporary file; nothing counts until
/// `ckpt_part_copy_commit`. `buf` may be NULL when `len` is 0 and is read during the call only.
/// `CKPT_ERR_INVALID_ARGUMENT` when `offset` is not the number of bytes received so far. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_part_copy_write(
    copy: i32,
    generation: u64,
    rank: u32,
    offset: u64,
    buf: *const c_void,
    len: usize,
) -> i32 {
    guard(|| {
        let which = part_copy(copy)?;
        if len > 0 {
            null_check(buf, "buf")?;
        }
        let bytes: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: non-NULL for len > 0 (checked); the caller provides len readable bytes for the call.
            unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }
        };
        with_state(|s| {
            let target = (which, generation, rank);
            let i = match (offset, s.receiving.iter().position(|r| r.target() == target)) {
                // Offset 0 starts the part anew: an unfinished earlier transfer of it is dropped.
                (0, found) => {
                    let receiver = s.checkpointer.store().receive_part(which, generation, rank)?;
                    match found {
                        Some(i) => {
                            s.receiving[i] = receiver;
                            i
                        }
                        None => {
                            s.receiving.push(receiver);
                            s.receiving.len() - 1
                        }
                    }
                }
                (_, Some(i)) => i,
                (_, None) => {
                    return Err(FfiError::new(
                        CKPT_ERR_INVALID_STATE,
                        format!(
                            "bytes at offset {offset} of rank {rank}'s part of generation {generation}, but its \
                             transfer did not start (offset 0) or was committed"
                        ),
                    ));
                }
            };
            if let Err(e) = s.receiving[i].write_at(offset, bytes) {
                s.receiving.swap_remove(i);
                return Err(e.into());
            }
            Ok(CKPT_OK)
        })
    })
}

/// Keeps the part received with `ckpt_part_copy_write` (`copy` as there; generation and rank from
/// `*expected`) once it is exactly `*expected`, the identity rank 0 committed (length, rank, number of
/// ranks, generation, step and checksums), verifies completely and was written by this run: fsync,
/// rename into place, fsync of its directory. For `CKPT_PART_PARTNER`, the node's partner copies of
/// generations beyond `CKPT_CACHE_KEEP` are then removed. On failure the received bytes are discarded and
/// the cache is as it was: `CKPT_ERR_CORRUPT` (not the committed part, or damaged in transit),
/// `CKPT_ERR_CONFLICT` (written by another run), `CKPT_ERR_INVALID_STATE` (no transfer of it under way).
/// `expected` is read during the call only. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_part_copy_commit(copy: i32, expected: *const ckpt_part_identity) -> i32 {
    guard(|| {
        let which = part_copy(copy)?;
        null_check(expected, "expected")?;
        let expected = identities(expected, 1)?.remove(0);
        with_state(|s| {
            let target = (which, expected.generation, expected.rank);
            let Some(i) = s.receiving.iter().position(|r| r.target() == target) else {
                return Err(FfiError::new(
                    CKPT_ERR_INVALID_STATE,
                    format!(
                        "no transfer of rank {}'s part of generation {} is under way (ckpt_part_copy_write first)",
                        expected.rank, expected.generation
                    ),
                ));
            };
            let receiver = s.receiving.swap_remove(i);
            s.checkpointer.store().commit_received_part(receiver, &expected)?;
            Ok(CKPT_OK)
        })
    })
}

/// Lists the ranks whose parts of `generation` this node's cache keeps partner copies of, ascending:
/// `*count_out` is set to their number and, when `capacity` is at least that, the ranks are written to
/// `ranks_out` (which may be NULL when `capacity` is 0: ask for the count first). `CKPT_ERR_BUFFER_TOO_SMALL`
/// (with `*count_out` set) when `capacity` is too small. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_partner_copies_held(
    generation: u64,
    ranks_out: *mut u32,
    capacity: usize,
    count_out: *mut usize,
) -> i32 {
    guard(|| {
        null_check(count_out, "count_out")?;
        if capacity > 0 {
            null_check(ranks_out, "ranks_out")?;
        }
        with_state(|s| {
            let ranks = s.checkpointer.store().partner_copies_held(generation)?;
            // SAFETY: checked non-NULL.
            unsafe { *count_out = ranks.len() };
            if ranks.len() > capacity {
                return Err(FfiError::new(
                    CKPT_ERR_BUFFER_TOO_SMALL,
                    format!("{} ranks, room for {capacity}", ranks.len()),
                ));
            }
            if !ranks.is_empty() {
                // SAFETY: ranks_out is non-NULL (capacity >= len > 0) with `capacity` writable u32s (the
                // caller's contract).
                unsafe { std::ptr::copy_nonoverlapping(ranks.as_ptr(), ranks_out, ranks.len()) };
            }
            Ok(CKPT_OK)
        })
    })
}

/// Reads the manifest of the step of `generation` (this node's cache first, then the checkpoint
/// directory; verified completely) and writes every rank's part identity to `parts_out` (`nparts` = the
/// job's number of ranks) and the step to `*step_out` (`step_out` may be NULL). A rank whose part is restored from a
/// partner records the step with `ckpt_record_step_parts` from these. `CKPT_ERR_NOT_FOUND` when no level
/// holds it; `CKPT_ERR_INVALID_ARGUMENT` when `nparts` is not the number of ranks. Out-parameters are
/// written only on success. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_step_identities(
    generation: u64,
    parts_out: *mut ckpt_part_identity,
    nparts: usize,
    step_out: *mut i64,
) -> i32 {
    guard(|| {
        null_check(parts_out, "parts_out")?;
        if !parts_out.is_aligned() {
            return Err(FfiError::new(CKPT_ERR_INVALID_ARGUMENT, "parts_out is not aligned for ckpt_part_identity"));
        }
        with_state(|s| {
            let (step, parts) = s.checkpointer.store().step_identities(generation)?;
            if parts.len() != nparts {
                return Err(FfiError::new(
                    CKPT_ERR_INVALID_ARGUMENT,
                    format!("nparts is {nparts}, but the step of generation {generation} has {} parts", parts.len()),
                ));
            }
            let parts: Vec<ckpt_part_identity> = parts.into_iter().map(Into::into).collect();
            // SAFETY: parts_out is non-NULL and aligned (checked) with nparts writable structs (the caller's
            // contract); `parts` has exactly nparts.
            unsafe { std::ptr::copy_nonoverlapping(parts.as_ptr(), parts_out, nparts) };
            if !step_out.is_null() {
                // SAFETY: non-NULL, checked.
                unsafe { *step_out = step.cast_signed() };
            }
            Ok(CKPT_OK)
        })
    })
}
