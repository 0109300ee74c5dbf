/* A program with SIZE_MIB MiB resident: filled with pseudo-random (incompressible) words, then PASSES
 * passes of arithmetic over all of it by THREADS pthreads (1 = no thread created), one output line per
 * pass with a checksum. Deterministic: the output of an uninterrupted run is the reference a restarted
 * run must reproduce byte for byte. Used by benches/src/bin/compare/dmtcp.rs (section 8b).
 * Usage: resident SIZE_MIB THREADS PASSES */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t *mem;
static size_t words;
static int nthreads, passes;
static uint64_t sums[64];
static pthread_barrier_t barrier;

static void pass_over(int t, int pass) {
    size_t lo = words / nthreads * t, hi = t == nthreads - 1 ? words : words / nthreads * (t + 1);
    uint64_t s = 0;
    for (size_t i = lo; i < hi; i++) {
        uint64_t v = mem[i] * 6364136223846793005ULL + 1442695040888963407ULL + (uint64_t)pass;
        v ^= v >> 29;
        mem[i] = v;
        s += v;
    }
    sums[t] = s;
}

static void report(int pass) {
    uint64_t s = 0;
    for (int t = 0; t < nthreads; t++) s ^= sums[t] + (uint64_t)t;
    printf("pass %d sum %016llx\n", pass, (unsigned long long)s);
    fflush(stdout);
}

static void *worker(void *arg) {
    int t = (int)(intptr_t)arg;
    for (int p = 0; p < passes; p++) {
        pass_over(t, p);
        pthread_barrier_wait(&barrier);
        if (t == 0) report(p);
        pthread_barrier_wait(&barrier);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: resident SIZE_MIB THREADS PASSES\n"); return 2; }
    size_t mib = strtoul(argv[1], NULL, 10);
    nthreads = atoi(argv[2]);
    passes = atoi(argv[3]);
    if (nthreads < 1 || nthreads > 64) return 2;
    words = mib << 17;
    mem = malloc(words * 8);
    if (!mem) { perror("malloc"); return 1; }
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < words; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        mem[i] = x;
    }
    printf("ready %zu MiB, %d thread(s)\n", mib, nthreads);
    fflush(stdout);
    if (nthreads == 1) {
        for (int p = 0; p < passes; p++) { pass_over(0, p); report(p); }
    } else {
        pthread_t th[64];
        pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
        for (int t = 1; t < nthreads; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
        worker((void *)0);
        for (int t = 1; t < nthreads; t++) pthread_join(th[t], NULL);
    }
    return 0;
}
