/* An MPI program checkpointing collectively every 5 iterations through ckpt_mpi.h, for the SIGKILL loop
 * of ckpt-ffi/tests/mpi.rs (the whole job is killed at random moments and restarted until it completes).
 * Usage: mpirun -np N kill_loop_mpi DIR ITERATIONS [DELAY_US]
 *
 * Each rank owns a field; every iteration mixes in an allreduce over all ranks, so a restart that mixed
 * steps (or ranks) would change the result. Output: rank 0 prints "resumed <it>" (0 on a fresh start);
 * every rank prints "durable <rank> <it>" once ckpt_mpi_checkpoint returned CKPT_OK (it returns the same
 * status on every rank, after rank 0 committed the step); rank 0 prints "done <hash>" at the end (FNV-1a
 * over every rank's field, gathered in rank order). Failures go to stderr prefixed "kill_loop_mpi:". */
#define _POSIX_C_SOURCE 200809L
#include "ckpt_mpi.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { N = 65536 }; /* 512 KiB of doubles per rank */

static int rank = 0;

static void fail(const char *what, int32_t rc) {
    fprintf(stderr, "kill_loop_mpi: rank %d: %s: %s (%s)\n", rank, what, ckpt_status_str(rc), ckpt_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm comm = MPI_COMM_WORLD;
    int nranks = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3) {
        fprintf(stderr, "kill_loop_mpi: usage: kill_loop_mpi DIR ITERATIONS [DELAY_US]\n");
        MPI_Abort(comm, 2);
    }
    const int64_t total = atoll(argv[2]);
    const long delay_us = argc > 3 ? atol(argv[3]) : 0;
    const struct timespec delay = {delay_us / 1000000, (delay_us % 1000000) * 1000};
    ckpt_set_config("CKPT_DIR", argv[1]);
    ckpt_set_config("CKPT_LOG", "off");
    ckpt_set_config("CKPT_SOCKET", "0");
    int32_t rc = ckpt_mpi_init(comm, "killmpi");
    if (rc != CKPT_OK) fail("ckpt_mpi_init", rc);

    double *field = malloc(N * sizeof *field);
    if (!field) MPI_Abort(comm, 3);
    int64_t it = 0;
    for (int i = 0; i < N; i++) field[i] = (double)(i % 1000) * 1e-3 + rank;
    if ((rc = ckpt_protect(0, field, N * sizeof *field)) != CKPT_OK) fail("ckpt_protect", rc);
    if ((rc = ckpt_protect(1, &it, sizeof it)) != CKPT_OK) fail("ckpt_protect", rc);
    int32_t found = 0;
    int64_t step = 0;
    if ((rc = ckpt_mpi_restart(comm, &found, &step)) != CKPT_OK) fail("ckpt_mpi_restart", rc);
    if (found && step != it) {
        fprintf(stderr, "kill_loop_mpi: rank %d: restored step %lld but iteration %lld\n", rank, (long long)step,
                (long long)it);
        MPI_Abort(comm, 1);
    }
    if (rank == 0) printf("resumed %lld\n", (long long)it);

    while (it < total) {
        double local = field[(it * 7919) % N], global = 0;
        MPI_Allreduce(&local, &global, 1, MPI_DOUBLE, MPI_SUM, comm);
        for (int i = 0; i < N; i++) field[i] = field[i] * 0.999 + (double)((it + i + rank) % 7) + 1e-6 * global;
        it++;
        if (delay_us > 0) nanosleep(&delay, NULL);
        if (it % 5 == 0) {
            if ((rc = ckpt_mpi_checkpoint(comm, it)) != CKPT_OK) fail("ckpt_mpi_checkpoint", rc);
            printf("durable %d %lld\n", rank, (long long)it);
        }
    }

    double *all = rank == 0 ? malloc((size_t)nranks * N * sizeof *all) : NULL;
    if (rank == 0 && !all) MPI_Abort(comm, 3);
    MPI_Gather(field, N, MPI_DOUBLE, all, N, MPI_DOUBLE, 0, comm);
    if (rank == 0) {
        uint64_t h = 1469598103934665603ull;
        const unsigned char *b = (const unsigned char *)all;
        for (size_t i = 0; i < (size_t)nranks * N * sizeof *all; i++) h = (h ^ b[i]) * 1099511628211ull;
        printf("done %016llx\n", (unsigned long long)h);
        free(all);
    }
    if ((rc = ckpt_mpi_finalize(comm)) != CKPT_OK) fail("ckpt_mpi_finalize", rc);
    free(field);
    MPI_Finalize();
    return 0;
}
