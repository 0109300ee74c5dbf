/* bench_mpi.c: scenario 10 of the comparison runner (benches/src/bin/compare/mpi.rs). Times one durable
 * checkpoint of every rank's buffer per step, either collectively with ckpt_mpi.h or with the per-rank
 * sequence an MPI programmer would write by hand.
 *
 * Usage: mpirun -np R bench_mpi MODE DIR BYTES_PER_RANK STEPS
 *   MODE ckpt: the buffer is protected as region 0 (uncompressed, the default); each step is one
 *              ckpt_mpi_checkpoint(MPI_COMM_WORLD, step) into DIR (CKPT_DIR), pruning at its defaults.
 *   MODE bare: each step every rank writes DIR/bare.<rank>.tmp (open, write, fsync, close), renames it to
 *              DIR/bare.<rank> and fsyncs DIR.
 *   MODE cached, partner (benches/mpi/levels_mpi.py): as ckpt, with a node-local cache level: rank r is on
 *              simulated node r / 2 (CKPT_NODE_ID) with the cache $BENCH_CACHE_ROOT/node<r / 2>
 *              (CKPT_CACHE_DIR; a tmpfs such as /dev/shm), CKPT_FLUSH=exit (the copies to DIR run at the end,
 *              untimed: what is timed is what the application waits for at each step); partner: also
 *              CKPT_PARTNER=1, each rank's part kept in the other node's cache within the step.
 * Each step: MPI_Barrier, clock start (MPI_Wtime on rank 0), the save, MPI_Barrier (the step is complete only
 * when every rank's save is durable), clock stop. Rank 0 prints "step <i> <seconds>" per step.
 * Every failure is printed on stderr and aborts the job with a non-zero status.
 */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "ckpt_mpi.h"

static int rank = 0;

static void die(const char *what, const char *detail) {
    fprintf(stderr, "bench_mpi: rank %d: %s: %s\n", rank, what, detail);
    fflush(stderr);
    struct timespec pause = {0, 300000000}; /* let mpirun forward the message before the job ends */
    nanosleep(&pause, NULL);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

static void check_ckpt(const char *what, int32_t rc) {
    if (rc != CKPT_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s (%s)", ckpt_status_str(rc), ckpt_last_error());
        die(what, msg);
    }
}

static void check_mpi(const char *what, int rc) {
    if (rc != MPI_SUCCESS) die(what, "MPI call failed");
}

static void check_sys(const char *what, int failed) {
    if (failed) die(what, strerror(errno));
}

/* open(tmp) / write / fsync / close / rename / fsync(dir): durable and atomic for this rank's file. */
static void bare_save(const char *dir, const char *tmp, const char *path, const unsigned char *buf, size_t len) {
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    check_sys("open", fd < 0);
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, buf + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        check_sys("write", n <= 0);
        done += (size_t)n;
    }
    check_sys("fsync", fsync(fd) != 0);
    check_sys("close", close(fd) != 0);
    check_sys("rename", rename(tmp, path) != 0);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    check_sys("open directory", dfd < 0);
    check_sys("fsync directory", fsync(dfd) != 0);
    check_sys("close directory", close(dfd) != 0);
}

int main(int argc, char **argv) {
    check_mpi("MPI_Init", MPI_Init(&argc, &argv));
    int nranks = 1;
    check_mpi("MPI_Comm_rank", MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    check_mpi("MPI_Comm_size", MPI_Comm_size(MPI_COMM_WORLD, &nranks));
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 5) die("usage", "bench_mpi ckpt|cached|partner|bare DIR BYTES_PER_RANK STEPS");
    const char *mode = argv[1], *dir = argv[2];
    int cached = strcmp(mode, "cached") == 0, partner = strcmp(mode, "partner") == 0;
    int ckpt = strcmp(mode, "ckpt") == 0 || cached || partner;
    if (!ckpt && strcmp(mode, "bare") != 0) die("usage", "MODE is ckpt, cached, partner or bare");
    char *end = NULL;
    errno = 0;
    unsigned long long bytes = strtoull(argv[3], &end, 10);
    if (errno || *end || bytes == 0 || bytes > SIZE_MAX) die("usage", "BYTES_PER_RANK is a positive integer");
    long long steps = strtoll(argv[4], &end, 10);
    if (errno || *end || steps < 1) die("usage", "STEPS is a positive integer");
    size_t len = (size_t)bytes;

    /* Non-constant data, every page touched before any clock starts. */
    unsigned char *buf = malloc(len);
    if (!buf) die("malloc", "out of memory");
    uint64_t x = 0x9e3779b97f4a7c15ull ^ ((uint64_t)rank + 1) * 0xbf58476d1ce4e5b9ull;
    for (size_t i = 0; i < len; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t n = len - i < 8 ? len - i : 8;
        memcpy(buf + i, &x, n);
    }

    char tmp[4096], path[4096];
    if (ckpt) {
        check_ckpt("ckpt_set_config(CKPT_DIR)", ckpt_set_config("CKPT_DIR", dir));
        if (cached || partner) {
            const char *root = getenv("BENCH_CACHE_ROOT");
            if (!root || !*root) die("usage", "modes cached and partner need BENCH_CACHE_ROOT");
            char cache[4096], node[64];
            int a = snprintf(cache, sizeof cache, "%s/node%d", root, rank / 2);
            snprintf(node, sizeof node, "node%d", rank / 2);
            if (a < 0 || (size_t)a >= sizeof cache) die("path", "too long");
            check_ckpt("ckpt_set_config(CKPT_CACHE_DIR)", ckpt_set_config("CKPT_CACHE_DIR", cache));
            check_ckpt("ckpt_set_config(CKPT_NODE_ID)", ckpt_set_config("CKPT_NODE_ID", node));
            check_ckpt("ckpt_set_config(CKPT_FLUSH)", ckpt_set_config("CKPT_FLUSH", "exit"));
            if (partner) check_ckpt("ckpt_set_config(CKPT_PARTNER)", ckpt_set_config("CKPT_PARTNER", "1"));
        }
        check_ckpt("ckpt_mpi_init", ckpt_mpi_init(MPI_COMM_WORLD, "bench"));
        check_ckpt("ckpt_protect", ckpt_protect(0, buf, len));
    } else {
        int a = snprintf(tmp, sizeof tmp, "%s/bare.%d.tmp", dir, rank);
        int b = snprintf(path, sizeof path, "%s/bare.%d", dir, rank);
        if (a < 0 || b < 0 || (size_t)a >= sizeof tmp || (size_t)b >= sizeof path) die("path", "too long");
    }

    for (long long step = 1; step <= steps; step++) {
        check_mpi("MPI_Barrier", MPI_Barrier(MPI_COMM_WORLD));
        double t0 = MPI_Wtime();
        if (ckpt) {
            check_ckpt("ckpt_mpi_checkpoint", ckpt_mpi_checkpoint(MPI_COMM_WORLD, step));
        } else {
            bare_save(dir, tmp, path, buf, len);
        }
        check_mpi("MPI_Barrier", MPI_Barrier(MPI_COMM_WORLD));
        double t1 = MPI_Wtime();
        if (rank == 0) printf("step %lld %.9f\n", step, t1 - t0);
    }

    if (ckpt) check_ckpt("ckpt_mpi_finalize", ckpt_mpi_finalize(MPI_COMM_WORLD));
    free(buf);
    check_mpi("MPI_Finalize", MPI_Finalize());
    return 0;
}
