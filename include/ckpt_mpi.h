/*
 * ckpt_mpi.h: collective checkpoint/restart for MPI programs, on top of libckpt (ckpt.h).
 *
 * Header-only (every function is static inline), so libckpt itself never links MPI: compile with your
 * MPI compiler wrapper and link -lckpt as usual:
 *
 *     mpicc -I$PREFIX/include app.c -L$PREFIX/lib -lckpt -Wl,-rpath,$PREFIX/lib
 *
 * Uses only MPI-3 calls present in Open MPI and MPICH (MPI_Comm_rank/size, MPI_Allreduce, MPI_Bcast,
 * MPI_Gather, MPI_Initialized, MPI_INT32_T/MPI_INT64_T/MPI_BYTE).
 *
 * Rules for every ckpt_mpi_* function:
 *  - It is COLLECTIVE over `comm`: every rank of `comm` calls it, in the same order relative to the other
 *    collective calls on `comm`. Use the same communicator for every call (normally MPI_COMM_WORLD, or a
 *    duplicate of it); rank 0 of `comm` is the rank that commits steps.
 *  - It returns the SAME value on every rank: CKPT_OK (0), 1/0 for the predicates, or a negative
 *    CKPT_ERR_* code. When one rank fails, every rank gets that rank's code; ckpt_last_error() holds the
 *    message on the rank(s) where the failure happened (it is thread-local and per process), so print it
 *    on every rank.
 *  - CKPT_ERR_MPI also reports a failed MPI call; that can only happen when `comm`'s error handler is
 *    not MPI_ERRORS_ARE_FATAL (the default aborts the job instead).
 *  - Out-parameters are written only on success, on every rank alike.
 *  - Thread safety: like any MPI collective. Call from one thread per process (MPI_THREAD_SINGLE is
 *    enough when that is the thread that called MPI_Init); the local libckpt calls underneath are
 *    thread-safe, and ckpt_should_checkpoint()/ckpt_should_exit() may still be read from any thread.
 *
 * Typical use (see examples/c/heat_mpi.c):
 *
 *     MPI_Init(&argc, &argv);
 *     ckpt_mpi_init(MPI_COMM_WORLD, "heat");
 *     ckpt_protect(0, field, bytes);
 *     ckpt_protect(1, &iteration, sizeof iteration);
 *     int32_t found = 0; int64_t step = 0;
 *     if (ckpt_mpi_restart(MPI_COMM_WORLD, &found, &step) != CKPT_OK) MPI_Abort(MPI_COMM_WORLD, 1);
 *     while (iteration < total) {
 *         compute_and_exchange_halos();
 *         iteration++;                         // the protected state is now that of `iteration`
 *         int32_t due = 0, leave = 0;
 *         ckpt_mpi_poll(MPI_COMM_WORLD, &due, &leave);  // both flags, one allreduce
 *         if (due == 1 && ckpt_mpi_checkpoint(MPI_COMM_WORLD, iteration) == CKPT_OK)
 *             leave = ckpt_mpi_should_exit(MPI_COMM_WORLD);
 *         if (leave == 1) break;               // every rank leaves at the same iteration
 *     }
 *
 * Poll the exit flag every iteration, not only right after a checkpoint: with a node-local cache level
 * (CKPT_CACHE_DIR) SIGTERM's checkpoint is copied to the checkpoint directory in the background, and the
 * exit is due only once the copy is durable, a few iterations later (the restart resumes at the
 * checkpoint's step).
 *     ckpt_mpi_finalize(MPI_COMM_WORLD);
 *     MPI_Finalize();
 */

#ifndef CKPT_MPI_H
#define CKPT_MPI_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Internal: the MIN over `comm` of `n` int64 values (in place). CKPT_OK or CKPT_ERR_MPI. */
static inline int32_t ckpt_mpi__min64(MPI_Comm comm, int64_t *v, int n) {
    return MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, MPI_MIN, comm) == MPI_SUCCESS ? CKPT_OK : CKPT_ERR_MPI;
}

/* Internal: the MAX over `comm` of `n` int64 values (in place). CKPT_OK or CKPT_ERR_MPI. */
static inline int32_t ckpt_mpi__max64(MPI_Comm comm, int64_t *v, int n) {
    return MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, MPI_MAX, comm) == MPI_SUCCESS ? CKPT_OK : CKPT_ERR_MPI;
}

/* Internal: the most negative status over `comm` (CKPT_OK when every rank succeeded). */
static inline int32_t ckpt_mpi__agree_status(MPI_Comm comm, int32_t status) {
    int64_t v = status;
    int32_t rc = ckpt_mpi__min64(comm, &v, 1);
    return rc != CKPT_OK ? rc : (int32_t)v;
}

/* Initialises libckpt on every rank of `comm`: sets this process's rank and the number of ranks from
 * MPI_Comm_rank/MPI_Comm_size (ckpt_set_rank, which beats guessing from launcher variables), then calls
 * ckpt_init(name) (`name` may be NULL: see ckpt_init). Call after MPI_Init and after any ckpt_set_config.
 *
 * All or nothing: when ckpt_init fails on any rank, the ranks where it succeeded finalize again and every
 * rank returns the failing rank's code (e.g. CKPT_ERR_INVALID_ARGUMENT for a malformed CKPT_* setting,
 * CKPT_ERR_ALREADY_INITIALIZED). CKPT_ERR_INVALID_STATE when MPI is not initialised (not collective then).
 * Collective. */
static inline int32_t ckpt_mpi_init(MPI_Comm comm, const char *name) {
    int initialized = 0, rank = 0, size = 0;
    if (MPI_Initialized(&initialized) != MPI_SUCCESS || !initialized) return CKPT_ERR_INVALID_STATE;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &size) != MPI_SUCCESS) return CKPT_ERR_MPI;
    int32_t rc = ckpt_set_rank((int32_t)rank, (int32_t)size);
    if (rc == CKPT_OK) rc = ckpt_init(name);
    int32_t all = ckpt_mpi__agree_status(comm, rc);
    if (all != CKPT_OK && rc == CKPT_OK) (void)ckpt_finalize();
    return all;
}

/* Shuts libckpt down on every rank (ckpt_finalize) and agrees on the result. Writes nothing; call
 * before MPI_Finalize. Collective. */
static inline int32_t ckpt_mpi_finalize(MPI_Comm comm) {
    return ckpt_mpi__agree_status(comm, ckpt_finalize());
}

/* Polls both flags with ONE small MPI_Allreduce (MAX over ranks): *checkpoint_out is 1 when any rank
 * has a checkpoint due (a signal, the interval, the job's time limit, a `ckpt create` request), and
 * *exit_out is 1 when any rank's last checkpoint was asked to be the last (SIGTERM, the time limit, a
 * vacating request). Either pointer may be NULL. Returns CKPT_OK (or CKPT_ERR_MPI). Collective. */
static inline int32_t ckpt_mpi_poll(MPI_Comm comm, int32_t *checkpoint_out, int32_t *exit_out) {
    int64_t v[2] = {ckpt_should_checkpoint(), ckpt_should_exit()};
    int32_t rc = ckpt_mpi__max64(comm, v, 2);
    if (rc != CKPT_OK) return rc;
    if (checkpoint_out) *checkpoint_out = (int32_t)v[0];
    if (exit_out) *exit_out = (int32_t)v[1];
    return CKPT_OK;
}

/* 1 on every rank when a checkpoint is due on ANY rank (MPI_Allreduce MAX of ckpt_should_checkpoint), so
 * all ranks decide alike even though signals reach them at different moments; else 0. One small
 * allreduce: cheap, but not free, so with very short iterations poll every k-th iteration (the same k
 * on every rank). CKPT_ERR_MPI if the allreduce failed. Collective. */
static inline int32_t ckpt_mpi_should_checkpoint(MPI_Comm comm) {
    int32_t c = 0;
    int32_t rc = ckpt_mpi_poll(comm, &c, NULL);
    return rc != CKPT_OK ? rc : c;
}

/* 1 on every rank when any rank's last checkpoint was asked to be the last (MAX of ckpt_should_exit):
 * leave the loop on every rank. Ask it right after ckpt_mpi_checkpoint returned CKPT_OK, and in every
 * iteration after (or use ckpt_mpi_poll for both flags): the exit flag is armed only once the step is
 * committed (ckpt_finish_step) and, with a node-local cache level, copied to the checkpoint directory,
 * which happens in the background while the program computes on. CKPT_ERR_MPI if the allreduce failed.
 * Collective. */
static inline int32_t ckpt_mpi_should_exit(MPI_Comm comm) {
    int32_t e = 0;
    int32_t rc = ckpt_mpi_poll(comm, NULL, &e);
    return rc != CKPT_OK ? rc : e;
}

/* Internal: what each rank reports to rank 0 after writing its part: the part's identity (ckpt.h), valid
 * when `status` is CKPT_OK. */
typedef struct ckpt_mpi__report {
    ckpt_part_identity identity;
    int64_t status;
} ckpt_mpi__report;

/* Internal: steps 3-5 of ckpt_mpi_checkpoint for this rank's part of `generation` (rc: how writing it
 * went). `reports` is rank 0's gather buffer and, when a rank caches (`cached`), every other rank's
 * buffer for the committed identities (NULL otherwise), freed here. With a cache level the identities rank
 * 0 committed are broadcast and every rank records the step in its node's cache (ckpt_record_step_parts),
 * so that a restart on the same nodes finds it there. */
static inline int32_t ckpt_mpi__conclude(MPI_Comm comm, int rank, int size, ckpt_mpi__report *reports,
                                         uint64_t generation, int64_t step, int32_t rc, int cached) {
    ckpt_mpi__report mine;
    memset(&mine, 0, sizeof mine);
    if (rc == CKPT_OK) rc = ckpt_get_part_identity(generation, &mine.identity);
    mine.status = rc;
    int32_t committed = CKPT_OK;
    if (rank == 0 && reports == NULL) committed = CKPT_ERR_OTHER;
    if (MPI_Gather(&mine, (int)sizeof mine, MPI_BYTE, reports, (int)sizeof mine, MPI_BYTE, 0, comm) != MPI_SUCCESS)
        committed = CKPT_ERR_MPI;
    if (rank == 0 && committed == CKPT_OK) {
        for (int r = 0; r < size; r++)
            if (reports[r].status < committed) committed = (int32_t)reports[r].status; /* the most negative */
        if (committed == CKPT_OK) {
            /* the identities side by side, in place (each moves down, never over one not yet moved) */
            ckpt_part_identity *parts = (ckpt_part_identity *)(void *)reports;
            for (int r = 0; r < size; r++) memmove(&parts[r], &reports[r].identity, sizeof parts[r]);
            committed = ckpt_commit_step_parts(generation, step, parts, (size_t)size);
        }
    }
    if (MPI_Bcast(&committed, 1, MPI_INT32_T, 0, comm) != MPI_SUCCESS) committed = CKPT_ERR_MPI;
    if (cached && committed == CKPT_OK) {
        /* rank 0's identities sit side by side at the start of its gather buffer */
        ckpt_part_identity *parts = (ckpt_part_identity *)(void *)reports;
        if (MPI_Bcast(parts, (int)((size_t)size * sizeof *parts), MPI_BYTE, 0, comm) == MPI_SUCCESS && rank != 0)
            (void)ckpt_record_step_parts(generation, step, parts, (size_t)size); /* best effort: the step is committed */
    }
    free(reports);
    (void)ckpt_finish_step(committed == CKPT_OK);
    return committed;
}

/* Internal: step 1 of ckpt_mpi_checkpoint: the agreed generation in *generation_out, rank 0's gather
 * buffer in *reports_out (allocated first: if rank 0 cannot have one, no rank writes anything), and
 * whether any rank caches (*cached_out; then every rank has a buffer for the committed identities). */
static inline int32_t ckpt_mpi__agree_generation(MPI_Comm comm, int rank, int size, ckpt_mpi__report **reports_out,
                                                 uint64_t *generation_out, int *cached_out) {
    ckpt_mpi__report *reports = NULL;
    if (rank == 0) reports = (ckpt_mpi__report *)malloc((size_t)size * sizeof *reports);
    uint64_t g = 0;
    int32_t rc = ckpt_next_generation(&g);
    if (rank == 0 && reports == NULL) rc = CKPT_ERR_OTHER;
    /* {generation, -status, caches}: one MAX gives the agreed generation, the worst failure, and whether
     * any rank has a node-local cache level */
    int64_t v[3] = {rc == CKPT_OK ? (int64_t)g : 0, -(int64_t)rc, ckpt_has_cache_level()};
    int32_t mrc = ckpt_mpi__max64(comm, v, 3);
    if (mrc == CKPT_OK && v[1] == 0 && v[2] != 0) {
        /* every rank needs a buffer for the committed identities; one that cannot have it: nobody writes */
        if (rank != 0) reports = (ckpt_mpi__report *)malloc((size_t)size * sizeof *reports);
        int64_t w[1] = {reports == NULL ? -(int64_t)CKPT_ERR_OTHER : 0};
        mrc = ckpt_mpi__max64(comm, w, 1);
        if (mrc == CKPT_OK) v[1] = w[0];
    }
    if (mrc != CKPT_OK || v[1] != 0) {
        free(reports);
        return mrc != CKPT_OK ? mrc : (int32_t)-v[1];
    }
    *reports_out = reports;
    *generation_out = (uint64_t)v[0];
    *cached_out = v[2] != 0;
    return CKPT_OK;
}

/* Writes every protected region of every rank as application step `step`, and commits the step only
 * after every rank's part is durable:
 *   1. the ranks agree on the generation (MAX over ranks of ckpt_next_generation);
 *   2. each rank writes its part (ckpt_checkpoint_part: tmp file, fsync, rename, fsync);
 *   3. an MPI_Gather to rank 0 of each rank's status and part identity (ckpt_get_part_identity): it
 *      completes on rank 0 only after every rank's part returned, so it is also the barrier;
 *   4. if every part succeeded, rank 0 commits the step from the identities (ckpt_commit_step_parts:
 *      writes the manifest atomically without opening one file per rank); if any part failed, nothing
 *      is committed (the previous step stays the newest) and the result is that rank's code;
 *   5. rank 0's result is broadcast, so every rank returns the same status, and every rank calls
 *      ckpt_finish_step with it (a committed step lets each rank remove its own parts that fell out of
 *      CKPT_KEEP).
 * With one rank it is ckpt_checkpoint(step). `step` must be the same on every rank (rank 0 rejects parts
 * of different steps). Resets ckpt_should_checkpoint on every rank. When the step was committed,
 * ckpt_should_exit turns 1 where SIGTERM or the time limit asked for it; when a part or the commit
 * failed, the requests are due again, so the next ckpt_mpi_should_checkpoint retries on every rank.
 * CKPT_ERR_OTHER when rank 0 cannot allocate the gather buffer (48 bytes per rank; nothing is written
 * then). Protected memory must not change during the call. Collective. */
static inline int32_t ckpt_mpi_checkpoint(MPI_Comm comm, int64_t step) {
    int rank = 0, size = 0;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &size) != MPI_SUCCESS) return CKPT_ERR_MPI;
    if (size == 1) return ckpt_checkpoint(step);
    ckpt_mpi__report *reports = NULL;
    uint64_t generation = 0;
    int cached = 0;
    int32_t rc = ckpt_mpi__agree_generation(comm, rank, size, &reports, &generation, &cached);
    if (rc != CKPT_OK) return rc;
    rc = ckpt_checkpoint_part(generation, step);
    return ckpt_mpi__conclude(comm, rank, size, reports, generation, step, rc, cached);
}

/* The checkpoint ckpt_mpi_checkpoint_async started in this translation unit (header-only: call both
 * functions from one source file). */
static struct {
    int active;
    int rank, size, cached;
    ckpt_mpi__report *reports;
    uint64_t generation;
    int64_t step;
    int32_t rc;
} ckpt_mpi__in_flight;

/* ckpt_mpi_checkpoint in two halves, so the program computes while the parts are written: this call agrees
 * on the generation and starts this rank's part in the background (ckpt_checkpoint_part_async: the
 * protected regions are copied before it returns, so they may change right after); ckpt_mpi_checkpoint_wait
 * waits for every rank's part and commits the step (steps 3-5 of ckpt_mpi_checkpoint). With one rank:
 * ckpt_checkpoint_async. Every rank must call ckpt_mpi_checkpoint_wait afterwards, even where this call
 * failed (its failure then fails the step on every rank). A call while one is in flight waits for it
 * first (collective). Collective. */
static inline int32_t ckpt_mpi_checkpoint_async(MPI_Comm comm, int64_t step);
/* Waits for the checkpoint ckpt_mpi_checkpoint_async started and commits the step when every rank's part
 * is durable: the same status on every rank, as ckpt_mpi_checkpoint returns. CKPT_OK when none is in
 * flight. Collective. */
static inline int32_t ckpt_mpi_checkpoint_wait(MPI_Comm comm);

static inline int32_t ckpt_mpi_checkpoint_wait(MPI_Comm comm) {
    int size = 0;
    if (MPI_Comm_size(comm, &size) != MPI_SUCCESS) return CKPT_ERR_MPI;
    if (size == 1) return ckpt_checkpoint_wait();
    if (!ckpt_mpi__in_flight.active) return CKPT_OK;
    ckpt_mpi__in_flight.active = 0;
    int32_t rc = ckpt_mpi__in_flight.rc;
    if (rc == CKPT_OK) rc = ckpt_checkpoint_wait();
    return ckpt_mpi__conclude(comm, ckpt_mpi__in_flight.rank, ckpt_mpi__in_flight.size, ckpt_mpi__in_flight.reports,
                              ckpt_mpi__in_flight.generation, ckpt_mpi__in_flight.step, rc, ckpt_mpi__in_flight.cached);
}

static inline int32_t ckpt_mpi_checkpoint_async(MPI_Comm comm, int64_t step) {
    int rank = 0, size = 0;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &size) != MPI_SUCCESS) return CKPT_ERR_MPI;
    if (size == 1) return ckpt_checkpoint_async(step);
    if (ckpt_mpi__in_flight.active) {
        int32_t previous = ckpt_mpi_checkpoint_wait(comm);
        if (previous != CKPT_OK) return previous;
    }
    ckpt_mpi__report *reports = NULL;
    uint64_t generation = 0;
    int cached = 0;
    int32_t rc = ckpt_mpi__agree_generation(comm, rank, size, &reports, &generation, &cached);
    if (rc != CKPT_OK) return rc;
    rc = ckpt_checkpoint_part_async(generation, step);
    ckpt_mpi__in_flight.cached = cached;
    ckpt_mpi__in_flight.active = 1;
    ckpt_mpi__in_flight.rank = rank;
    ckpt_mpi__in_flight.size = size;
    ckpt_mpi__in_flight.reports = reports;
    ckpt_mpi__in_flight.generation = generation;
    ckpt_mpi__in_flight.step = step;
    ckpt_mpi__in_flight.rc = rc;
    return rc;
}

/* Internal: agree on the newest generation <= max that EVERY rank can read and select it on every rank.
 * Loop: g = MIN over ranks of ckpt_newest_valid_generation(max) (the MIN, never VeloC's MAX: a step is
 * usable only if every rank has its part); every rank ckpt_select_generation(g); if any rank cannot,
 * retry with max = g - 1. On success *generation_out is g (0: nothing common) and *step_out its step. */
static inline int32_t ckpt_mpi__agree(MPI_Comm comm, uint64_t max, uint64_t *generation_out, int64_t *step_out) {
    for (;;) {
        uint64_t g = 0;
        int32_t rc = ckpt_newest_valid_generation(max, &g);
        int64_t v[2] = {rc == CKPT_OK ? (int64_t)(g > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : g) : 0, rc};
        int32_t mrc = ckpt_mpi__min64(comm, v, 2);
        if (mrc != CKPT_OK) return mrc;
        if (v[1] != CKPT_OK) return (int32_t)v[1];
        if (v[0] == 0) {
            *generation_out = 0;
            return CKPT_OK;
        }
        uint64_t agreed = (uint64_t)v[0];
        int64_t step = 0;
        int32_t ok = ckpt_select_generation(agreed, &step) == CKPT_OK;
        /* one MIN over {selected, step, -step}: did every rank select it, and do the steps agree */
        int64_t s[3] = {ok ? 1 : 0, ok ? step : INT64_MAX, ok ? -step : INT64_MAX};
        if ((mrc = ckpt_mpi__min64(comm, s, 3)) != CKPT_OK) return mrc;
        if (s[0] == 1) {
            if (s[1] != -s[2]) return CKPT_ERR_CORRUPT; /* one generation, two steps: not one job's files */
            *generation_out = agreed;
            *step_out = step;
            return CKPT_OK;
        }
        max = agreed - 1; /* some rank cannot read `agreed`: fall back together */
    }
}

/* Internal: nothing common to restart from. A fresh start only when no rank could restart on its own
 * (ckpt_have_restart finds nothing: no files, or CKPT_ALLOW_FRESH_START); otherwise an error, as
 * ckpt_have_restart reports it, or CKPT_ERR_NO_VALID_CHECKPOINT when ranks have valid parts but no
 * generation in common (never a silent fresh start: the lost work would go unnoticed). */
static inline int32_t ckpt_mpi__nothing_common(MPI_Comm comm, int32_t *found_out) {
    int32_t found = 0;
    int32_t rc = ckpt_have_restart(&found, NULL); /* per rank: honours CKPT_ALLOW_FRESH_START */
    int64_t v[2] = {rc, rc == CKPT_OK && found ? -1 : 0};
    int32_t mrc = ckpt_mpi__min64(comm, v, 2);
    if (mrc != CKPT_OK) return mrc;
    if (v[0] != CKPT_OK) return (int32_t)v[0];
    if (v[1] != 0) return CKPT_ERR_NO_VALID_CHECKPOINT;
    *found_out = 0;
    return CKPT_OK;
}

/* Finds the checkpoint the ranks will restart from, without reading the regions: the newest generation
 * every rank can read (the MIN over ranks of each one's newest valid generation, falling back together
 * when a rank cannot select it), selected on every rank. Then ckpt_restart_size (local) reports the sizes
 * in that generation, so each rank can allocate before ckpt_protect and ckpt_mpi_restart.
 *
 * Writes *found_out (1 or 0) and, when found, *step_out (may be NULL). Returns CKPT_OK with found = 0 only
 * when no rank could restart even on its own (no checkpoint files; or none valid and
 * CKPT_ALLOW_FRESH_START=1, which ckpt_have_restart honours); CKPT_ERR_NO_VALID_CHECKPOINT
 * when checkpoints exist but no generation is readable on every rank (the number of ranks changed, parts
 * are damaged...; the message is on the ranks that rejected files). Collective. */
static inline int32_t ckpt_mpi_have_restart(MPI_Comm comm, int32_t *found_out, int64_t *step_out) {
    /* a NULL found_out is an error on every rank, even if it is NULL on some ranks only */
    int32_t rc = ckpt_mpi__agree_status(comm, found_out ? CKPT_OK : CKPT_ERR_NULL_ARGUMENT);
    if (rc != CKPT_OK) return rc;
    uint64_t g = 0;
    int64_t step = 0;
    rc = ckpt_mpi__agree(comm, UINT64_MAX, &g, &step);
    if (rc != CKPT_OK) return rc;
    if (g == 0) return ckpt_mpi__nothing_common(comm, found_out);
    *found_out = 1;
    if (step_out) *step_out = step;
    return CKPT_OK;
}

/* Internal: failures of ckpt_restart that an older generation cannot cure (the program's regions do not
 * fit, a call out of order...): report them instead of falling back. */
static inline int ckpt_mpi__caller_error(int32_t rc) {
    switch (rc) {
    case CKPT_ERR_SIZE_MISMATCH:
    case CKPT_ERR_SECTION_NOT_FOUND:
    case CKPT_ERR_NULL_ARGUMENT:
    case CKPT_ERR_NOT_INITIALIZED:
    case CKPT_ERR_UNKNOWN_REGION:
    case CKPT_ERR_INVALID_ARGUMENT:
    case CKPT_ERR_INVALID_STATE:
    case CKPT_ERR_PANIC:
        return 1;
    default:
        return 0;
    }
}

/* Restarts every rank from the same step: agrees on the newest generation every rank can read (as
 * ckpt_mpi_have_restart: MIN over ranks, not MAX), reads every protected region back on every rank
 * (ckpt_restart), and if ANY rank fails to read its part (I/O error, damage found while reading), all
 * ranks fall back together to the next older common generation.
 *
 * Writes *found_out (1: restarted; 0: fresh start, regions untouched) and *step_out (may be NULL) on
 * every rank. Returns CKPT_ERR_NO_VALID_CHECKPOINT when checkpoints exist but none is readable on every
 * rank (never a silent fresh start). A failure an older checkpoint cannot cure is returned at once on
 * every rank: CKPT_ERR_SIZE_MISMATCH or CKPT_ERR_SECTION_NOT_FOUND (a protected region does not match
 * the checkpoint: resize it with ckpt_restart_size after ckpt_mpi_have_restart, then call again); on that
 * rank no region was written, while other ranks may already hold the step's data. Protected memory must
 * not be used by other threads during the call. Collective. */
static inline int32_t ckpt_mpi_restart(MPI_Comm comm, int32_t *found_out, int64_t *step_out) {
    int32_t nul = ckpt_mpi__agree_status(comm, found_out ? CKPT_OK : CKPT_ERR_NULL_ARGUMENT);
    if (nul != CKPT_OK) return nul;
    uint64_t max = UINT64_MAX;
    for (;;) {
        uint64_t g = 0;
        int64_t step = 0;
        int32_t rc = ckpt_mpi__agree(comm, max, &g, &step);
        if (rc != CKPT_OK) return rc;
        if (g == 0) return ckpt_mpi__nothing_common(comm, found_out);
        int64_t got = 0;
        rc = ckpt_restart(&got);
        /* {class, status}: class 1 = read, 0 = unreadable (fall back), -1 = caller's error (stop) */
        int64_t v[2] = {rc == CKPT_OK ? 1 : (ckpt_mpi__caller_error(rc) ? -1 : 0), rc};
        int32_t mrc = ckpt_mpi__min64(comm, v, 2);
        if (mrc != CKPT_OK) return mrc;
        if (v[0] == 1) {
            *found_out = 1;
            if (step_out) *step_out = step;
            return CKPT_OK;
        }
        if (v[0] < 0) return (int32_t)v[1];
        max = g - 1;
    }
}

/* Stored size of region `id` on this rank in the generation selected by ckpt_mpi_have_restart (call that
 * first), for allocating before ckpt_protect and ckpt_mpi_restart: the local ckpt_restart_size behind a
 * collective status. The sizes may differ between ranks (each rank has its own part); every rank gets
 * CKPT_OK or the same error code (CKPT_ERR_SECTION_NOT_FOUND when some rank's part lacks region `id`).
 * Collective. */
static inline int32_t ckpt_mpi_restart_size(MPI_Comm comm, int32_t id, size_t *len_out) {
    size_t len = 0;
    int32_t rc = ckpt_mpi__agree_status(comm, ckpt_restart_size(id, len_out ? &len : NULL));
    if (rc == CKPT_OK) *len_out = len;
    return rc;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CKPT_MPI_H */
