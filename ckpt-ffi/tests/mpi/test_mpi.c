/* Tests of ckpt_mpi.h with several ranks: every collective's success and error paths, with the ranks
 * deliberately in different states (a signal or a bad setting on one rank only, regions of different sizes,
 * a damaged part on one rank). Usage: mpirun -np N test_mpi DIR (an empty scratch directory shared by the
 * ranks). Rank 0 prints "all MPI checks passed" when every check passed on every rank. */
#include "ckpt_mpi.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures = 0, rank = 0, nranks = 1;
#define CHECK(cond)                                                                                        \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "rank %d: %s:%d: CHECK(%s) failed; last error: %s\n", rank, __FILE__, __LINE__, \
                    #cond, ckpt_last_error());                                                             \
            failures++;                                                                                    \
        }                                                                                                  \
    } while (0)
#define EXPECT(call, code)                                                                                 \
    do {                                                                                                   \
        int32_t got_ = (call);                                                                             \
        if (got_ != (code)) {                                                                              \
            fprintf(stderr, "rank %d: %s:%d: %s gave %d, expected %d (%s); last error: %s\n", rank, __FILE__, \
                    __LINE__, #call, got_, (int)(code), #code, ckpt_last_error());                         \
            failures++;                                                                                    \
        }                                                                                                  \
    } while (0)

static char dir[4096];

static void configure(void) {
    EXPECT(ckpt_set_config("CKPT_DIR", dir), CKPT_OK);
    EXPECT(ckpt_set_config("CKPT_LOG", "off"), CKPT_OK);
    EXPECT(ckpt_set_config("CKPT_SOCKET", "0"), CKPT_OK);
    EXPECT(ckpt_set_config("CKPT_KEEP", "3"), CKPT_OK);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm comm = MPI_COMM_WORLD;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    if (argc != 2) {
        if (rank == 0) fprintf(stderr, "usage: test_mpi DIR\n");
        MPI_Abort(comm, 2);
    }
    snprintf(dir, sizeof dir, "%s", argv[1]);
    configure();
    const int last = nranks - 1;

    /* init is all or nothing: a malformed setting on the last rank fails every rank, and leaves none
     * initialised */
    if (rank == last) EXPECT(ckpt_set_config("CKPT_INTERVAL", "1:2:3:4"), CKPT_OK);
    EXPECT(ckpt_mpi_init(comm, "mpitest"), CKPT_ERR_INVALID_ARGUMENT);
    EXPECT(ckpt_finalize(), CKPT_ERR_NOT_INITIALIZED);
    if (rank == last) EXPECT(ckpt_set_config("CKPT_INTERVAL", NULL), CKPT_OK);
    EXPECT(ckpt_mpi_init(comm, "mpitest"), CKPT_OK);
    int32_t r = -1, n = -1;
    EXPECT(ckpt_rank_info(&r, &n), CKPT_OK);
    CHECK(r == rank && n == nranks);

    /* regions of different sizes on every rank */
    const size_t count = (size_t)(rank + 1) * 100;
    double *field = malloc(count * sizeof *field);
    int64_t iteration = 0;
    for (size_t i = 0; i < count; i++) field[i] = rank * 1000.0 + (double)i;
    EXPECT(ckpt_protect(0, field, count * sizeof *field), CKPT_OK);
    EXPECT(ckpt_protect(1, &iteration, sizeof iteration), CKPT_OK);

    /* nothing to restart from: a fresh start, agreed */
    int32_t found = 7;
    int64_t step = -1;
    EXPECT(ckpt_mpi_have_restart(comm, &found, &step), CKPT_OK);
    CHECK(found == 0 && step == -1);
    found = 7;
    EXPECT(ckpt_mpi_restart(comm, &found, &step), CKPT_OK);
    CHECK(found == 0 && field[1] == rank * 1000.0 + 1);
    /* a NULL pointer on one rank only is an error on every rank (and no rank hangs) */
    EXPECT(ckpt_mpi_have_restart(comm, rank == 1 % nranks ? NULL : &found, &step), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_mpi_restart(comm, rank == 0 ? NULL : &found, &step), CKPT_ERR_NULL_ARGUMENT);

    /* a signal on the last rank only: every rank decides to checkpoint */
    int32_t want = -1, stop = -1;
    EXPECT(ckpt_mpi_poll(comm, &want, &stop), CKPT_OK);
    CHECK(want == 0 && stop == 0);
    CHECK(ckpt_mpi_should_checkpoint(comm) == 0);
    if (rank == last) raise(SIGUSR1);
    EXPECT(ckpt_mpi_poll(comm, &want, NULL), CKPT_OK);
    CHECK(want == 1);
    CHECK(ckpt_mpi_should_checkpoint(comm) == 1);
    CHECK(ckpt_mpi_should_exit(comm) == 0);
    iteration = 10;
    EXPECT(ckpt_mpi_checkpoint(comm, iteration), CKPT_OK);
    CHECK(ckpt_mpi_should_checkpoint(comm) == 0); /* the signalled rank's request was taken */
    CHECK(ckpt_mpi_should_exit(comm) == 0);

    /* SIGTERM on rank 0 only: every rank checkpoints, then every rank is told to stop */
    for (size_t i = 0; i < count; i++) field[i] = -field[i];
    iteration = 20;
    if (rank == 0) raise(SIGTERM);
    CHECK(ckpt_mpi_should_checkpoint(comm) == 1);
    EXPECT(ckpt_mpi_checkpoint(comm, iteration), CKPT_OK);
    CHECK(ckpt_mpi_should_exit(comm) == 1);
    EXPECT(ckpt_mpi_poll(comm, NULL, &stop), CKPT_OK);
    CHECK(stop == 1);
    EXPECT(ckpt_mpi_finalize(comm), CKPT_OK);
    EXPECT(ckpt_mpi_finalize(comm), CKPT_ERR_NOT_INITIALIZED);

    /* the restarted job */
    for (size_t i = 0; i < count; i++) field[i] = 0;
    iteration = -1;
    EXPECT(ckpt_mpi_init(comm, "mpitest"), CKPT_OK);
    found = 0;
    step = -1;
    EXPECT(ckpt_mpi_have_restart(comm, &found, &step), CKPT_OK);
    CHECK(found == 1 && step == 20);
    size_t len = 0;
    EXPECT(ckpt_mpi_restart_size(comm, 0, &len), CKPT_OK);
    CHECK(len == count * sizeof *field);
    EXPECT(ckpt_mpi_restart_size(comm, 9, &len), CKPT_ERR_SECTION_NOT_FOUND);
    CHECK(len == count * sizeof *field);
    EXPECT(ckpt_mpi_restart_size(comm, 0, rank == last ? NULL : &len), CKPT_ERR_NULL_ARGUMENT);

    /* the last rank's region has the wrong size: an error on every rank, not a fall back */
    double small[3] = {0, 0, 0};
    EXPECT(ckpt_protect(0, rank == last ? (void *)small : (void *)field,
                        rank == last ? sizeof small : count * sizeof *field),
           CKPT_OK);
    EXPECT(ckpt_protect(1, &iteration, sizeof iteration), CKPT_OK);
    EXPECT(ckpt_mpi_restart(comm, &found, &step), CKPT_ERR_SIZE_MISMATCH);
    if (rank == last) CHECK(small[0] == 0 && iteration == -1); /* nothing written where it failed */
    EXPECT(ckpt_protect(0, field, count * sizeof *field), CKPT_OK);
    found = 0;
    step = -1;
    EXPECT(ckpt_mpi_restart(comm, &found, &step), CKPT_OK);
    CHECK(found == 1 && step == 20 && iteration == 20);
    CHECK(field[1] == -(rank * 1000.0 + 1) && field[count - 1] == -(rank * 1000.0 + (double)(count - 1)));

    /* the last rank cannot read its part of the newest step: all fall back to the step before */
    if (nranks > 1) {
        uint64_t newest = 0;
        EXPECT(ckpt_newest_valid_generation(UINT64_MAX, &newest), CKPT_OK);
        if (rank == last) {
            char p[4300];
            snprintf(p, sizeof p, "%s/mpitest.ckpt.parts/%llu/rank%d.ckpt", dir, (unsigned long long)newest, rank);
            FILE *f = fopen(p, "r+b");
            CHECK(f != NULL);
            if (f) {
                fseek(f, 4096 + 5, SEEK_SET);
                int c = fgetc(f);
                fseek(f, 4096 + 5, SEEK_SET);
                fputc(c ^ 0x5a, f);
                fclose(f);
            }
        }
        MPI_Barrier(comm);
        found = 0;
        EXPECT(ckpt_mpi_restart(comm, &found, &step), CKPT_OK);
        CHECK(found == 1 && step == 10 && iteration == 10 && field[1] == rank * 1000.0 + 1);
        EXPECT(ckpt_mpi_have_restart(comm, &found, &step), CKPT_OK);
        CHECK(step == 10);
    }

    if (nranks > 1) {
        /* a part that cannot be written (a directory squats its name on the last rank): every rank gets that
         * rank's error and nothing is committed; the next step commits */
        uint64_t next = 0;
        EXPECT(ckpt_next_generation(&next), CKPT_OK);
        MPI_Allreduce(MPI_IN_PLACE, &next, 1, MPI_UINT64_T, MPI_MAX, comm);
        char squat[4300];
        snprintf(squat, sizeof squat, "%s/mpitest.ckpt.parts/%llu", dir, (unsigned long long)next);
        if (rank == last) {
            CHECK(mkdir(squat, 0700) == 0);
            snprintf(squat + strlen(squat), sizeof squat - strlen(squat), "/rank%d.ckpt", rank);
            CHECK(mkdir(squat, 0700) == 0);
        }
        MPI_Barrier(comm);
        iteration = 30;
        EXPECT(ckpt_mpi_checkpoint(comm, iteration), CKPT_ERR_IO);
        uint64_t newest = 0;
        EXPECT(ckpt_newest_valid_generation(UINT64_MAX, &newest), CKPT_OK);
        CHECK(newest < next);
        CHECK(ckpt_mpi_should_checkpoint(comm) == 0); /* nothing triggered this one: nothing due again */
        if (rank == last) CHECK(rmdir(squat) == 0);
        MPI_Barrier(comm);
    }

    /* retention (CKPT_KEEP=3): after more steps exactly the 3 newest generations hold parts, all of them
     * (each rank removed its own retired parts; rank 0 removed earlier runs' and the failed step's) */
    for (int k = 0; k < 4; k++) {
        iteration = 40 + 10 * k;
        EXPECT(ckpt_mpi_checkpoint(comm, iteration), CKPT_OK);
    }
    MPI_Barrier(comm);
    if (rank == 0 && nranks > 1) {
        char root[4300];
        snprintf(root, sizeof root, "%s/mpitest.ckpt.parts", dir);
        DIR *d = opendir(root);
        CHECK(d != NULL);
        int holding = 0, empty = 0;
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            char gdir[4600];
            snprintf(gdir, sizeof gdir, "%s/%s", root, e->d_name);
            DIR *g = opendir(gdir);
            int parts = 0, others = 0;
            struct dirent *f;
            while (g && (f = readdir(g)) != NULL) {
                if (f->d_name[0] == '.') continue;
                int r = -1;
                char want[64] = "";
                if (sscanf(f->d_name, "rank%d", &r) == 1) snprintf(want, sizeof want, "rank%d.ckpt", r);
                if (r >= 0 && r < nranks && strcmp(f->d_name, want) == 0)
                    parts++;
                else
                    others++;
            }
            if (g) closedir(g);
            if (parts + others == 0) {
                empty++;
                continue;
            }
            holding++;
            if (parts != nranks || others != 0)
                fprintf(stderr, "generation %s holds %d parts and %d other files\n", e->d_name, parts, others);
            CHECK(parts == nranks && others == 0);
        }
        if (d) closedir(d);
        CHECK(holding == 3);
        CHECK(empty <= 1); /* the generation retired by the last step, emptied by its ranks */
    }
    /* asynchronous: the regions are copied at the call; what the ranks change while the parts are written
     * is not in the step */
    iteration = 80;
    double before = field[1];
    EXPECT(ckpt_mpi_checkpoint_async(comm, iteration), CKPT_OK);
    iteration = 999;
    field[1] = -12345.0;
    EXPECT(ckpt_mpi_checkpoint_wait(comm), CKPT_OK);
    EXPECT(ckpt_mpi_checkpoint_wait(comm), CKPT_OK); /* none in flight */
    EXPECT(ckpt_mpi_restart(comm, &found, &step), CKPT_OK);
    CHECK(found == 1 && step == 80 && iteration == 80 && field[1] == before);
    EXPECT(ckpt_mpi_finalize(comm), CKPT_OK);
    free(field);

    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, comm);
    if (rank == 0) {
        if (total == 0)
            printf("all MPI checks passed on %d ranks\n", nranks);
        else
            fprintf(stderr, "%d check(s) failed\n", total);
    }
    MPI_Finalize();
    return total != 0;
}
