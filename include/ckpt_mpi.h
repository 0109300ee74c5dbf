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
#include <stdio.h>
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

/* Internal: each rank's partner (the rank keeping its copy, -1 with one node), computed once from every
 * rank's node key (one MPI_Allgather of 8 bytes per rank); freed by ckpt_mpi_finalize. */
static struct {
    int *holder;
    int size;
} ckpt_mpi__partners;

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
    free(ckpt_mpi__partners.holder);
    ckpt_mpi__partners.holder = NULL;
    ckpt_mpi__partners.size = 0;
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

/* ---- Partner copies (CKPT_PARTNER=1 with CKPT_CACHE_DIR): each rank's committed part is also kept in the
 * node-local cache of a rank on the next node, and a restart gets a part its node lost back from there.
 * Nodes are told apart by ckpt_node_key (CKPT_NODE_ID, SLURM_TOPOLOGY_ADDR naming the host, or the host
 * name), ordered by their lowest rank; rank r, the j-th rank of its node, keeps its copy on the next node's
 * (j mod n)-th rank, n being the number of ranks there. With one node there is no partner. ---- */

/* Internal: bytes per message of a part moved between partners. */
#define CKPT_MPI__CHUNK ((size_t)4 << 20)
/* Internal: message tags of partner transfers (on the helpers' communicator). */
#define CKPT_MPI__TAG_IDENTITY 27101 /* tags stay below 32767, the least MPI_TAG_UB MPI allows */
#define CKPT_MPI__TAG_BYTES 27102

/* Internal: a node key and a rank, for grouping ranks by node. */
typedef struct ckpt_mpi__node_rank {
    uint64_t key;
    int rank;
} ckpt_mpi__node_rank;

static int ckpt_mpi__by_node_then_rank(const void *a, const void *b) {
    const ckpt_mpi__node_rank *x = (const ckpt_mpi__node_rank *)a, *y = (const ckpt_mpi__node_rank *)b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->rank > y->rank) - (x->rank < y->rank);
}

/* Internal: node groups of the sorted pairs, as {first index into the pairs, count}, ordered by lowest rank. */
typedef struct ckpt_mpi__node_group {
    int first, count;
} ckpt_mpi__node_group;

static ckpt_mpi__node_rank *ckpt_mpi__sorted_pairs; /* qsort has no context argument */
static int ckpt_mpi__by_lowest_rank(const void *a, const void *b) {
    int x = ckpt_mpi__sorted_pairs[((const ckpt_mpi__node_group *)a)->first].rank;
    int y = ckpt_mpi__sorted_pairs[((const ckpt_mpi__node_group *)b)->first].rank;
    return (x > y) - (x < y);
}

/* Internal: the partner of every rank, in ckpt_mpi__partners.holder (computed at the first call). The same
 * status on every rank. Collective. */
static inline int32_t ckpt_mpi__partner_layout(MPI_Comm comm, int size) {
    if (ckpt_mpi__partners.holder && ckpt_mpi__partners.size == size) return CKPT_OK;
    uint64_t key = 0;
    int32_t rc = ckpt_node_key(&key);
    uint64_t *keys = (uint64_t *)malloc((size_t)size * sizeof *keys);
    ckpt_mpi__node_rank *pairs = (ckpt_mpi__node_rank *)malloc((size_t)size * sizeof *pairs);
    ckpt_mpi__node_group *groups = (ckpt_mpi__node_group *)malloc((size_t)size * sizeof *groups);
    int *holder = (int *)malloc((size_t)size * sizeof *holder);
    if (rc == CKPT_OK && !(keys && pairs && groups && holder)) rc = CKPT_ERR_OTHER;
    rc = ckpt_mpi__agree_status(comm, rc);
    if (rc == CKPT_OK &&
        MPI_Allgather(&key, 1, MPI_UINT64_T, keys, 1, MPI_UINT64_T, comm) != MPI_SUCCESS)
        rc = CKPT_ERR_MPI;
    if (rc == CKPT_OK) {
        for (int r = 0; r < size; r++) {
            pairs[r].key = keys[r];
            pairs[r].rank = r;
        }
        qsort(pairs, (size_t)size, sizeof *pairs, ckpt_mpi__by_node_then_rank);
        int ngroups = 0;
        for (int i = 0; i < size; i++) {
            if (i == 0 || pairs[i].key != pairs[i - 1].key) {
                groups[ngroups].first = i;
                groups[ngroups].count = 0;
                ngroups++;
            }
            groups[ngroups - 1].count++;
        }
        ckpt_mpi__sorted_pairs = pairs;
        qsort(groups, (size_t)ngroups, sizeof *groups, ckpt_mpi__by_lowest_rank);
        for (int g = 0; g < ngroups; g++) {
            const ckpt_mpi__node_group *next = &groups[(g + 1) % ngroups];
            for (int j = 0; j < groups[g].count; j++)
                holder[pairs[groups[g].first + j].rank] =
                    ngroups == 1 ? -1 : pairs[next->first + j % next->count].rank;
        }
        int rank = 0;
        if (ngroups == 1 && MPI_Comm_rank(comm, &rank) == MPI_SUCCESS && rank == 0)
            fprintf(stderr, "ckpt: CKPT_PARTNER=1, but all %d ranks are on one node (CKPT_NODE_ID, "
                            "SLURM_TOPOLOGY_ADDR or the host name): no partner copies are kept\n", size);
        free(ckpt_mpi__partners.holder);
        ckpt_mpi__partners.holder = holder;
        ckpt_mpi__partners.size = size;
        holder = NULL;
    }
    free(keys);
    free(pairs);
    free(groups);
    free(holder);
    return rc;
}

/* Internal: reports a partner transfer that failed on this rank (the step itself is committed; only its
 * redundant copy is missing), on stderr where a batch job's log has it. */
static inline void ckpt_mpi__partner_warn(int rank, const char *what, int other, uint64_t generation, int32_t rc) {
    const char *why = ckpt_last_error();
    fprintf(stderr, "ckpt: rank %d: %s rank %d's part of generation %llu failed: %s\n", rank, what, other,
            (unsigned long long)generation, rc == CKPT_ERR_MPI ? "an MPI call failed" : (why ? why : ckpt_status_str(rc)));
}

/* Internal: after the step of `generation` was committed: sends this rank's cached part (`mine`) to its
 * partner and keeps the parts of the ranks this rank is the partner of, each received in chunks and kept
 * only once it is exactly the part committed and verifies (ckpt_part_copy_commit). Failures are reported on
 * stderr, not returned: the step is committed either way. Collective. */
static inline void ckpt_mpi__partner_send(MPI_Comm comm, int rank, int size, uint64_t generation,
                                          const ckpt_part_identity *mine) {
    if (ckpt_mpi__partner_layout(comm, size) != CKPT_OK) {
        ckpt_mpi__partner_warn(rank, "placing a copy of", rank, generation, CKPT_ERR_OTHER);
        return;
    }
    const int *holder = ckpt_mpi__partners.holder;
    int to = holder[rank], nfrom = 0;
    for (int r = 0; r < size; r++) nfrom += holder[r] == rank;
    size_t slots = (size_t)(nfrom ? nfrom : 1);
    int *from = (int *)malloc(slots * sizeof *from);
    ckpt_part_identity *theirs = (ckpt_part_identity *)calloc(slots, sizeof *theirs);
    int32_t *write_rc = (int32_t *)calloc(slots, sizeof *write_rc);
    MPI_Request *reqs = (MPI_Request *)malloc((slots + 1) * sizeof *reqs);
    /* real statuses: GCC's -Wstringop-overflow takes MPICH's MPI_STATUSES_IGNORE for an empty array */
    MPI_Status *stats = (MPI_Status *)malloc((slots + 1) * sizeof *stats);
    unsigned char *out = (unsigned char *)malloc(CKPT_MPI__CHUNK);
    unsigned char *in = (unsigned char *)malloc(slots * CKPT_MPI__CHUNK);
    /* all or none: a rank without buffers could not take its part in the exchange */
    int32_t rc = from && theirs && write_rc && reqs && stats && out && in ? CKPT_OK : CKPT_ERR_OTHER;
    if (ckpt_mpi__agree_status(comm, rc) != CKPT_OK) {
        ckpt_mpi__partner_warn(rank, "keeping a copy of", rank, generation, CKPT_ERR_OTHER);
    } else {
        for (int i = 0, r = 0; r < size; r++)
            if (holder[r] == rank) from[i++] = r;
        int n = 0;
        if (to >= 0) MPI_Isend(mine, (int)sizeof *mine, MPI_BYTE, to, CKPT_MPI__TAG_IDENTITY, comm, &reqs[n++]);
        for (int i = 0; i < nfrom; i++)
            MPI_Irecv(&theirs[i], (int)sizeof theirs[i], MPI_BYTE, from[i], CKPT_MPI__TAG_IDENTITY, comm, &reqs[n++]);
        if (MPI_Waitall(n, reqs, stats) != MPI_SUCCESS) rc = CKPT_ERR_MPI;
        /* chunk by chunk, in lockstep with the partners: every request of a round is posted before its
         * wait, so a round always completes */
        int32_t read_rc = CKPT_OK;
        for (uint64_t off = 0; rc == CKPT_OK; off += CKPT_MPI__CHUNK) {
            n = 0;
            for (int i = 0; i < nfrom; i++)
                if (off < theirs[i].file_len) {
                    uint64_t left = theirs[i].file_len - off;
                    int len = (int)(left < CKPT_MPI__CHUNK ? left : CKPT_MPI__CHUNK);
                    MPI_Irecv(in + (size_t)i * CKPT_MPI__CHUNK, len, MPI_BYTE, from[i], CKPT_MPI__TAG_BYTES, comm,
                              &reqs[n++]);
                }
            if (to >= 0 && off < mine->file_len) {
                uint64_t left = mine->file_len - off;
                size_t len = left < CKPT_MPI__CHUNK ? (size_t)left : CKPT_MPI__CHUNK;
                if (read_rc == CKPT_OK)
                    read_rc = ckpt_part_copy_read(CKPT_PART_OWN, generation, (uint32_t)rank, off, out, len);
                if (read_rc != CKPT_OK) memset(out, 0, len); /* the partner's check refuses it */
                MPI_Isend(out, (int)len, MPI_BYTE, to, CKPT_MPI__TAG_BYTES, comm, &reqs[n++]);
            }
            if (n == 0) break;
            if (MPI_Waitall(n, reqs, stats) != MPI_SUCCESS) rc = CKPT_ERR_MPI;
            for (int i = 0; i < nfrom && rc == CKPT_OK; i++)
                if (off < theirs[i].file_len && write_rc[i] == CKPT_OK) {
                    uint64_t left = theirs[i].file_len - off;
                    size_t len = left < CKPT_MPI__CHUNK ? (size_t)left : CKPT_MPI__CHUNK;
                    write_rc[i] = ckpt_part_copy_write(CKPT_PART_PARTNER, generation, (uint32_t)from[i], off,
                                                       in + (size_t)i * CKPT_MPI__CHUNK, len);
                }
        }
        if (read_rc != CKPT_OK) ckpt_mpi__partner_warn(rank, "sending a copy of", rank, generation, read_rc);
        for (int i = 0; i < nfrom; i++) {
            int32_t wrc = rc != CKPT_OK ? rc : write_rc[i];
            if (wrc == CKPT_OK) wrc = ckpt_part_copy_commit(CKPT_PART_PARTNER, &theirs[i]);
            if (wrc != CKPT_OK) ckpt_mpi__partner_warn(rank, "keeping a copy of", from[i], generation, wrc);
        }
    }
    free(from);
    free(theirs);
    free(write_rc);
    free(reqs);
    free(stats);
    free(out);
    free(in);
}

/* Internal: moves the `file_len` bytes of a part from `src` (reading `copy` of rank `of`'s part) to `dst`
 * (receiving it as its own part), in chunks; on `dst` the part is kept once it is exactly `*expected` and
 * verifies. Point to point: only `src` and `dst` call it (they may be one rank: a restart placed the rank
 * on the node that keeps its copy). Returns, on `dst`, how receiving went. */
static inline int32_t ckpt_mpi__move_part(MPI_Comm comm, int rank, int src, int dst, int32_t copy, uint64_t generation,
                                          int of, const ckpt_part_identity *expected) {
    unsigned char *buf = (unsigned char *)malloc(CKPT_MPI__CHUNK);
    unsigned char byte = 0;
    int32_t rc = buf ? CKPT_OK : CKPT_ERR_OTHER;
    for (uint64_t off = 0; off < expected->file_len; off += CKPT_MPI__CHUNK) {
        uint64_t left = expected->file_len - off;
        size_t len = left < CKPT_MPI__CHUNK ? (size_t)left : CKPT_MPI__CHUNK;
        if (rank == src) {
            if (rc == CKPT_OK) rc = ckpt_part_copy_read(copy, generation, (uint32_t)of, off, buf, len);
            if (rc != CKPT_OK && buf) memset(buf, 0, len); /* the receiver's check refuses it */
        }
        if (src != dst && rank == src &&
            MPI_Send(buf ? buf : &byte, buf ? (int)len : 0, MPI_BYTE, dst, CKPT_MPI__TAG_BYTES, comm) != MPI_SUCCESS)
            rc = CKPT_ERR_MPI;
        if (src != dst && rank == dst &&
            MPI_Recv(buf ? buf : &byte, buf ? (int)len : 0, MPI_BYTE, src, CKPT_MPI__TAG_BYTES, comm,
                     MPI_STATUS_IGNORE) != MPI_SUCCESS)
            rc = CKPT_ERR_MPI;
        if (rank == dst && rc == CKPT_OK)
            rc = ckpt_part_copy_write(CKPT_PART_OWN, generation, (uint32_t)rank, off, buf, len);
    }
    if (rank == dst && rc == CKPT_OK) rc = ckpt_part_copy_commit(CKPT_PART_OWN, expected);
    if (rank == src && rank != dst && rc != CKPT_OK) ckpt_mpi__partner_warn(rank, "sending back", of, generation, rc);
    free(buf);
    return rc;
}

/* Internal: the restart side. Given this rank's newest readable generation (*g, found with status *rc), when
 * some ranks lack the newest generation G that another rank can read, and a node keeps partner copies of
 * their parts of G (with G's manifest), each such rank gets its part back from there, records the step in
 * its node's cache, and looks again (*rc, *g updated). The ranks then agree as usual, falling back together
 * if a part could not be restored. Collective. */
static inline int32_t ckpt_mpi__partner_restore(MPI_Comm comm, int32_t *rc, uint64_t *g) {
    int rank = 0, size = 0;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &size) != MPI_SUCCESS) return CKPT_ERR_MPI;
    int64_t mine = *rc == CKPT_OK ? (int64_t)(*g > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : *g) : 0;
    /* {partners, newest, -oldest}: one MAX says whether any rank keeps partner copies and whether the ranks
     * differ */
    int64_t v[3] = {ckpt_has_partner_copies(), mine, -mine};
    int32_t mrc = ckpt_mpi__max64(comm, v, 3);
    if (mrc != CKPT_OK) return mrc;
    uint64_t newest = (uint64_t)v[1];
    if (v[0] == 0 || newest == 0 || v[1] == -v[2]) return CKPT_OK;
    /* need[r]: rank r lacks `newest`; keeper[r]: 1 + a rank whose node keeps r's part of it and its manifest */
    int64_t *vec = (int64_t *)calloc((size_t)size * 2, sizeof *vec);
    ckpt_part_identity *parts = (ckpt_part_identity *)calloc((size_t)size, sizeof *parts);
    uint32_t *held = (uint32_t *)calloc((size_t)size, sizeof *held);
    int32_t alloc = vec && parts && held ? CKPT_OK : CKPT_ERR_OTHER;
    mrc = ckpt_mpi__agree_status(comm, alloc);
    if (mrc != CKPT_OK) {
        free(vec);
        free(parts);
        free(held);
        return mrc;
    }
    int64_t step = 0;
    size_t nheld = 0;
    if (*rc == CKPT_OK && *g < newest) vec[rank] = 1;
    /* a rank keeps copies for others only when it can restart from `newest` itself: the step then passed
     * every rule of restart discovery there (this run's, verified) */
    if (*rc == CKPT_OK && *g == newest && ckpt_step_identities(newest, parts, (size_t)size, &step) == CKPT_OK &&
        ckpt_partner_copies_held(newest, held, (size_t)size, &nheld) == CKPT_OK)
        for (size_t i = 0; i < nheld; i++) vec[size + (int)held[i]] = rank + 1;
    mrc = ckpt_mpi__max64(comm, vec, 2 * size);
    for (int x = 0; x < size && mrc == CKPT_OK; x++) {
        if (!vec[x]) continue;
        int keeper = (int)vec[size + x] - 1;
        if (keeper < 0) {
            if (rank == x)
                fprintf(stderr, "ckpt: rank %d: no node keeps a partner copy of its part of generation %llu\n", rank,
                        (unsigned long long)newest);
            continue;
        }
        if (rank != x && rank != keeper) continue;
        /* the step's identities first (the receiver records the step from them), then the part */
        if (rank == keeper && rank != x &&
            MPI_Send(parts, (int)((size_t)size * sizeof *parts), MPI_BYTE, x, CKPT_MPI__TAG_IDENTITY, comm) !=
                MPI_SUCCESS)
            mrc = CKPT_ERR_MPI;
        if (rank == x && rank != keeper &&
            MPI_Recv(parts, (int)((size_t)size * sizeof *parts), MPI_BYTE, keeper, CKPT_MPI__TAG_IDENTITY, comm,
                     MPI_STATUS_IGNORE) != MPI_SUCCESS)
            mrc = CKPT_ERR_MPI;
        if (mrc != CKPT_OK) break;
        int32_t got = rank == x ? ckpt_record_step_parts(newest, parts[x].step, parts, (size_t)size) : CKPT_OK;
        int32_t moved = ckpt_mpi__move_part(comm, rank, keeper, x, CKPT_PART_PARTNER, newest, x, &parts[x]);
        if (rank != x) continue;
        if (got == CKPT_OK) got = moved;
        if (got == CKPT_OK) {
            fprintf(stderr, "ckpt: rank %d: its part of generation %llu restored from the copy on rank %d's node\n",
                    rank, (unsigned long long)newest, keeper);
            *rc = ckpt_newest_valid_generation(UINT64_MAX, g);
        } else {
            ckpt_mpi__partner_warn(rank, "restoring", rank, newest, got);
        }
    }
    free(vec);
    free(parts);
    free(held);
    return mrc;
}

/* Internal: what each rank reports to rank 0 after writing its part: the part's identity (ckpt.h), valid
 * when `status` is CKPT_OK. */
typedef struct ckpt_mpi__report {
    ckpt_part_identity identity;
    int64_t status;
} ckpt_mpi__report;

/* Internal: steps 3-5 of ckpt_mpi_checkpoint for this rank's part of `generation` (rc: how writing it
 * went). `reports` is rank 0's gather buffer and, when a rank caches (`cached` bit 1), every other rank's
 * buffer for the committed identities (NULL otherwise), freed here. With a cache level the identities rank
 * 0 committed are broadcast and every rank records the step in its node's cache (ckpt_record_step_parts),
 * so that a restart on the same nodes finds it there; with partner copies (`cached` bit 2) each rank's
 * part is then also kept on its partner's node (ckpt_mpi__partner_send). */
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
    if ((cached & 2) && committed == CKPT_OK) ckpt_mpi__partner_send(comm, rank, size, generation, &mine.identity);
    (void)ckpt_finish_step(committed == CKPT_OK);
    return committed;
}

/* Internal: step 1 of ckpt_mpi_checkpoint: the agreed generation in *generation_out, rank 0's gather
 * buffer in *reports_out (allocated first: if rank 0 cannot have one, no rank writes anything), and
 * whether any rank caches (*cached_out bit 1; then every rank has a buffer for the committed identities)
 * and keeps partner copies (bit 2). */
static inline int32_t ckpt_mpi__agree_generation(MPI_Comm comm, int rank, int size, ckpt_mpi__report **reports_out,
                                                 uint64_t *generation_out, int *cached_out) {
    ckpt_mpi__report *reports = NULL;
    if (rank == 0) reports = (ckpt_mpi__report *)malloc((size_t)size * sizeof *reports);
    uint64_t g = 0;
    int32_t rc = ckpt_next_generation(&g);
    if (rank == 0 && reports == NULL) rc = CKPT_ERR_OTHER;
    /* {generation, -status, caches, partners}: one MAX gives the agreed generation, the worst failure, and
     * whether any rank has a node-local cache level and keeps partner copies */
    int64_t v[4] = {rc == CKPT_OK ? (int64_t)g : 0, -(int64_t)rc, ckpt_has_cache_level(), ckpt_has_partner_copies()};
    int32_t mrc = ckpt_mpi__max64(comm, v, 4);
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
    *cached_out = (v[2] != 0 ? 1 : 0) | (v[3] != 0 ? 2 : 0);
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
 * First (max = UINT64_MAX), ranks that lack the newest generation another rank reads get their parts back
 * from partner copies, when kept (ckpt_mpi__partner_restore). Loop: g = MIN over ranks of ckpt_newest_valid_generation(max) (the MIN, never VeloC's MAX: a step is
 * usable only if every rank has its part); every rank ckpt_select_generation(g); if any rank cannot,
 * retry with max = g - 1. On success *generation_out is g (0: nothing common) and *step_out its step. */
static inline int32_t ckpt_mpi__agree(MPI_Comm comm, uint64_t max, uint64_t *generation_out, int64_t *step_out) {
    for (int first = max == UINT64_MAX;; first = 0) {
        uint64_t g = 0;
        int32_t rc = ckpt_newest_valid_generation(max, &g);
        if (first) {
            /* parts a lost node had, back from their partners first (nothing without CKPT_PARTNER) */
            int32_t prc = ckpt_mpi__partner_restore(comm, &rc, &g);
            if (prc != CKPT_OK) return prc;
        }
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
