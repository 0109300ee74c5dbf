/* heat_mpi.c: a 2-D heat-diffusion (Jacobi) solver on an N x N grid, its rows decomposed over the MPI
 * ranks with halo exchange, checkpointed collectively with ckpt_mpi.h.
 *
 *   SIGUSR1 (to every rank, or to any one: the ranks agree): a collective checkpoint at the next
 *           iteration, then it continues.
 *   SIGTERM: a collective checkpoint at the next iteration, then every rank exits with status 0 (the job
 *           can be requeued); with a node-local cache level (CKPT_CACHE_DIR) once the checkpoint is
 *           durable in the checkpoint directory, a few iterations later. Also the job's time limit,
 *           CKPT_INTERVAL, `ckpt create`: see the README.
 *
 * On start it restarts collectively from the newest checkpoint every rank can read, if any, also one written
 * by another number of ranks (its rows redistributed: restart_redistributed); the final
 * field is bit-for-bit the one of an uninterrupted run (Jacobi updates do not depend on the decomposition,
 * and the checksum is computed on rank 0 in a fixed order).
 *
 * Usage: heat_mpi [N] [ITERATIONS] [DELAY_US]   (default 256 256 0; DELAY_US sleeps in every iteration so
 *        demos and tests can interrupt short runs). With HEAT_RESULT=path, rank 0 also writes the final
 *        line to that file (the sbatch script checks it to decide whether to requeue); with HEAT_PROGRESS=k
 *        it prints "iteration i" every k iterations.
 * Build:  make -C examples/c   (or mpicc -O2 -I include heat_mpi.c -L target/release -lckpt)
 */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ckpt_mpi.h"

static int rank = 0, nranks = 1;

static void fail(const char *what, int32_t status) {
    fprintf(stderr, "heat_mpi: rank %d: %s failed: %s (%s)\n", rank, what, ckpt_status_str(status),
            ckpt_last_error());
    fflush(stderr);
    // MPI_Abort tears the job down at once: give the launcher (mpirun, srun, hydra) a moment to forward the
    // message above, or the user sees a bare non-zero exit.
    usleep(300000);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
    }
    return ~crc;
}

/* Restart on another number of ranks: the newest step every rank can read whatever number of ranks wrote
 * it (ckpt_restart_step verifies every part, so every rank chooses the same one; checked below). The grid
 * rows [row0, row0 + rows) of this rank are copied from the parts of the old ranks that owned them (the
 * old ranks' rows follow from the same split over the old number of ranks); the halo rows are exchanged
 * by the first iteration, as after any restart. The iteration comes from old rank 0's part. */
static int32_t restart_redistributed(MPI_Comm comm, int n, int row0, int rows, double *u, int64_t *iteration,
                                     uint32_t *written_by) {
    uint32_t old = 0;
    int64_t step = 0;
    int32_t rc = ckpt_restart_step(&old, &step);
    /* every rank must have chosen the same step: {step, -step, -status} maximised */
    int64_t v[3] = {rc == CKPT_OK ? step : -1, rc == CKPT_OK ? -step : 1, -(int64_t)rc};
    if (MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_INT64_T, MPI_MAX, comm) != MPI_SUCCESS) return CKPT_ERR_MPI;
    if (v[2] != 0) return (int32_t)-v[2];
    if (v[0] != -v[1]) return CKPT_ERR_INVALID_STATE;
    const int ob = n / (int)old, oe = n % (int)old;
    for (int r = 0; r < (int)old && rc == CKPT_OK; r++) {
        const int orows = ob + (r < oe), orow0 = r * ob + (r < oe ? r : oe);
        const int lo = row0 > orow0 ? row0 : orow0;
        const int hi = row0 + rows < orow0 + orows ? row0 + rows : orow0 + orows;
        if (lo >= hi) continue;
        size_t len = 0;
        if ((rc = ckpt_restart_part_size((uint32_t)r, 0, &len)) != CKPT_OK) break;
        if (len != (size_t)(orows + 2) * (size_t)n * sizeof(double)) {
            rc = CKPT_ERR_SIZE_MISMATCH; /* another grid size */
            break;
        }
        double *part = malloc(len);
        if (part == NULL) {
            rc = CKPT_ERR_OTHER;
            break;
        }
        if ((rc = ckpt_restart_part((uint32_t)r, 0, part, len)) == CKPT_OK)
            memcpy(u + (size_t)(lo - row0 + 1) * (size_t)n, part + (size_t)(lo - orow0 + 1) * (size_t)n,
                   (size_t)(hi - lo) * (size_t)n * sizeof(double));
        free(part);
    }
    if (rc == CKPT_OK) rc = ckpt_restart_part(0, 1, iteration, sizeof *iteration);
    /* the same outcome on every rank */
    int32_t worst = rc;
    if (MPI_Allreduce(&rc, &worst, 1, MPI_INT32_T, MPI_MIN, comm) != MPI_SUCCESS) return CKPT_ERR_MPI;
    *written_by = old;
    return worst;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm comm = MPI_COMM_WORLD;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    setvbuf(stdout, NULL, _IOLBF, 0);

    const int n = argc > 1 ? atoi(argv[1]) : 256;
    const int64_t iterations = argc > 2 ? atoll(argv[2]) : 256;
    const long delay_us = argc > 3 ? atol(argv[3]) : 0;
    const char *progress_env = getenv("HEAT_PROGRESS");
    const long long progress = progress_env ? atoll(progress_env) : 0;
    if (n < 3 || n < nranks || iterations < 0 || delay_us < 0) {
        if (rank == 0) fprintf(stderr, "usage: heat_mpi [N >= max(3, ranks)] [ITERATIONS] [DELAY_US]\n");
        MPI_Abort(comm, 2);
    }

    /* rows [row0, row0 + rows) of the global grid belong to this rank; local rows 0 and rows + 1 are halos */
    const int base = n / nranks, extra = n % nranks;
    const int rows = base + (rank < extra);
    const int row0 = rank * base + (rank < extra ? rank : extra);
    const size_t cells = (size_t)(rows + 2) * (size_t)n;
    double *u = calloc(cells, sizeof *u), *next = calloc(cells, sizeof *next);
    if (!u || !next) MPI_Abort(comm, 3);
    for (int i = 1; i <= rows; i++)
        if (row0 + i - 1 == 0)
            for (int j = 0; j < n; j++) u[(size_t)i * n + j] = 100.0; /* the hot top edge */
    int64_t iteration = 0;

    int32_t rc = ckpt_mpi_init(comm, "heat_mpi");
    if (rc != CKPT_OK) fail("ckpt_mpi_init", rc);
    /* one line from rank 0 (MPI launchers may interleave the ranks' output): every rank's pid, printed once
     * every rank's signal handlers are installed */
    long long pid = (long long)getpid(), *pids = rank == 0 ? malloc(sizeof *pids * (size_t)nranks) : NULL;
    MPI_Gather(&pid, 1, MPI_LONG_LONG, pids, 1, MPI_LONG_LONG, 0, comm);
    if (rank == 0) {
        printf("heat_mpi: %d ranks, pids", nranks);
        for (int r = 0; r < nranks; r++) printf(" %lld", pids[r]);
        printf("\n");
        free(pids);
    }
    if ((rc = ckpt_protect(0, u, cells * sizeof *u)) != CKPT_OK) fail("ckpt_protect", rc);
    if ((rc = ckpt_protect(1, &iteration, sizeof iteration)) != CKPT_OK) fail("ckpt_protect", rc);

    int32_t found = 0;
    int64_t step = 0;
    rc = ckpt_mpi_restart(comm, &found, &step);
    if (rc == CKPT_ERR_NO_VALID_CHECKPOINT) {
        /* Perhaps a step written by another number of ranks: read this rank's rows from the old ranks' parts. */
        uint32_t written_by = 0;
        int32_t rrc = restart_redistributed(comm, n, row0, rows, u, &iteration, &written_by);
        if (rrc == CKPT_OK) {
            rc = CKPT_OK;
            found = 1;
            if (rank == 0)
                printf("redistributed a step of %u ranks over %d ranks\n", written_by, nranks);
        }
    }
    if (rc == CKPT_ERR_SIZE_MISMATCH) {
        if (rank == 0) fprintf(stderr, "heat_mpi: the checkpoint is for another grid size or number of ranks\n");
        fail("ckpt_mpi_restart", rc);
    }
    if (rc != CKPT_OK) fail("ckpt_mpi_restart", rc);
    if (rank == 0) {
        if (found)
            printf("resumed at iteration %lld\n", (long long)iteration);
        else
            printf("starting fresh: %d x %d, %lld iterations, %d ranks\n", n, n, (long long)iterations, nranks);
    }

    const int up = rank > 0 ? rank - 1 : MPI_PROC_NULL, down = rank < nranks - 1 ? rank + 1 : MPI_PROC_NULL;
    const struct timespec delay = {delay_us / 1000000, (delay_us % 1000000) * 1000};
    int64_t last_checkpoint = -1;
    while (iteration < iterations) {
        /* halo exchange: first owned row up / bottom halo from below, last owned row down / top halo */
        MPI_Sendrecv(u + (size_t)1 * n, n, MPI_DOUBLE, up, 0, u + (size_t)(rows + 1) * n, n, MPI_DOUBLE, down, 0,
                     comm, MPI_STATUS_IGNORE);
        MPI_Sendrecv(u + (size_t)rows * n, n, MPI_DOUBLE, down, 1, u, n, MPI_DOUBLE, up, 1, comm,
                     MPI_STATUS_IGNORE);
        memcpy(next, u, cells * sizeof *u);
        for (int i = 1; i <= rows; i++) {
            const int g = row0 + i - 1;
            if (g == 0 || g == n - 1) continue; /* fixed boundary rows */
            for (int j = 1; j < n - 1; j++) {
                const size_t k = (size_t)i * n + j;
                next[k] = 0.25 * (u[k - n] + u[k + n] + u[k - 1] + u[k + 1]);
            }
        }
        double *t = u;
        u = next;
        next = t;
        iteration++;
        if (delay_us > 0) nanosleep(&delay, NULL);
        if (progress > 0 && rank == 0 && iteration % progress == 0) printf("iteration %lld\n", (long long)iteration);

        /* both flags with one allreduce, every iteration: with a node-local cache level (CKPT_CACHE_DIR)
         * SIGTERM's checkpoint is copied to the checkpoint directory in the background and the exit is
         * due only once it is durable there, a few iterations after the checkpoint */
        int32_t due = 0, leave = 0;
        if ((rc = ckpt_mpi_poll(comm, &due, &leave)) != CKPT_OK) fail("ckpt_mpi_poll", rc);
        if (due == 1) {
            /* the field moved to the other buffer: protecting id 0 again replaces the pointer */
            if ((rc = ckpt_protect(0, u, cells * sizeof *u)) != CKPT_OK) fail("ckpt_protect", rc);
            rc = ckpt_mpi_checkpoint(comm, iteration);
            if (rc != CKPT_OK) {
                /* same status on every rank: keep computing; a signal's request stays due and is retried */
                fprintf(stderr, "heat_mpi: rank %d: checkpoint at iteration %lld failed: %s (%s)\n", rank,
                        (long long)iteration, ckpt_status_str(rc), ckpt_last_error());
            } else {
                if (rank == 0) printf("checkpoint at iteration %lld\n", (long long)iteration);
                last_checkpoint = iteration;
                leave = ckpt_mpi_should_exit(comm) == 1; /* without a cache level: at once */
            }
        }
        if (leave == 1) {
            /* every rank leaves here, at the same iteration: rank 0 shows each rank's */
            int64_t *its = rank == 0 ? malloc(sizeof *its * (size_t)nranks) : NULL;
            MPI_Gather(&iteration, 1, MPI_INT64_T, its, 1, MPI_INT64_T, 0, comm);
            if (rank == 0) {
                if (iteration == last_checkpoint)
                    printf("stopping after the checkpoint at iteration %lld; the ranks stopped at", (long long)iteration);
                else
                    printf("stopping at iteration %lld, the checkpoint at iteration %lld durable; the ranks stopped at",
                           (long long)iteration, (long long)last_checkpoint);
                for (int r = 0; r < nranks; r++) printf(" %lld", (long long)its[r]);
                printf("\n");
                free(its);
            }
            ckpt_mpi_finalize(comm);
            free(u);
            free(next);
            MPI_Finalize();
            return 0;
        }
    }

    /* gather the owned rows on rank 0 and checksum them in a fixed order */
    int *counts = NULL, *displs = NULL;
    double *all = NULL;
    if (rank == 0) {
        counts = malloc(sizeof *counts * (size_t)nranks);
        displs = malloc(sizeof *displs * (size_t)nranks);
        all = malloc(sizeof *all * (size_t)n * (size_t)n);
        if (!counts || !displs || !all) MPI_Abort(comm, 3);
        for (int r = 0, off = 0; r < nranks; r++) {
            counts[r] = (base + (r < extra)) * n;
            displs[r] = off;
            off += counts[r];
        }
    }
    MPI_Gatherv(u + n, rows * n, MPI_DOUBLE, all, counts, displs, MPI_DOUBLE, 0, comm);
    if (rank == 0) {
        double sum = 0;
        for (size_t k = 0; k < (size_t)n * (size_t)n; k++) sum += all[k];
        const uint32_t crc = crc32_update(0, (const unsigned char *)all, sizeof *all * (size_t)n * (size_t)n);
        char line[256];
        snprintf(line, sizeof line, "done: %d x %d, %lld iterations, crc32 %08x, sum %.17g", n, n,
                 (long long)iterations, crc, sum);
        printf("%s\n", line);
        const char *result = getenv("HEAT_RESULT");
        if (result && *result) {
            FILE *f = fopen(result, "w");
            if (f) {
                fprintf(f, "%s\n", line);
                fclose(f);
            }
        }
        free(counts);
        free(displs);
        free(all);
    }
    if ((rc = ckpt_mpi_finalize(comm)) != CKPT_OK) fail("ckpt_mpi_finalize", rc);
    free(u);
    free(next);
    MPI_Finalize();
    return 0;
}
