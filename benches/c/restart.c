/* Restart through the C ABI (issue 23, target 3): `ckpt_restart` of one region (1 GiB by default) called directly (one
 * pass: the region's bytes checked while copied) and after `ckpt_have_restart` (two passes: verified, then
 * copied), each with its ckpt_init/ckpt_protect/ckpt_finalize, against one `dd if=FILE of=/dev/null
 * bs=16M` of the same file. Warm page cache (the file was just written); the three rotate from run to run,
 * one warm-up round; medians. Prints the medians and the ratios.
 *
 *   cargo build --release -p ckpt-ffi
 *   cc -O2 -I include -o target/restart_c benches/c/restart.c -L target/release -lckpt -Wl,-rpath,$PWD/target/release
 *   mkdir -p target/benchdir/restart_c && target/restart_c target/benchdir/restart_c 9
 *
 * A third argument sets the region's size in MiB (default 1024; CI runs 64 once as a smoke test).
 * DIR's files named crb* are removed first (a run is its own: another command line's checkpoint is
 * refused). */
#define _POSIX_C_SOURCE 200809L
#include "ckpt.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) { fprintf(stderr, "usage: %s DIR RUNS [MiB]\n", argv[0]); return 2; }
    long mib = argc == 4 ? atol(argv[3]) : 1024;
    if (mib < 1 || mib > (1 << 20)) { fprintf(stderr, "MiB: 1 to 1048576\n"); return 2; }
    size_t n = (size_t)mib << 20;
    unsigned char *buf = malloc(n);
    if (!buf) { fprintf(stderr, "cannot allocate %ld MiB\n", mib); return 1; }
    for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)(i * 2654435761u >> 13);
    setenv("CKPT_DIR", argv[1], 1);
    int runs = atoi(argv[2]);
    if (runs < 1 || runs > 64) { fprintf(stderr, "RUNS: 1 to 64\n"); return 2; }
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "rm -f '%s'/crb*", argv[1]);
    if (system(cmd) != 0) return 1;
    if (ckpt_init("crb") != CKPT_OK) return 1;
    ckpt_protect(0, buf, n);
    if (ckpt_checkpoint(1) != CKPT_OK) { fprintf(stderr, "%s\n", ckpt_last_error()); return 1; }
    ckpt_finalize();
    double one[64], two[64], dd[64];
    snprintf(cmd, sizeof cmd, "dd if=%s/crb.ckpt of=/dev/null bs=16M status=none", argv[1]);
    for (int r = 0; r < runs + 1; r++) {
        for (int k = 0; k < 3; k++) {
            int which = (k + r) % 3;
            double t0 = now();
            if (which == 2) { if (system(cmd) != 0) return 1; }
            else {
                ckpt_init("crb");
                ckpt_protect(0, buf, n);
                int64_t step = 0;
                if (which == 1) { int32_t f = 0; ckpt_have_restart(&f, &step); }
                if (ckpt_restart(&step) != CKPT_OK || step != 1) { fprintf(stderr, "%s\n", ckpt_last_error()); return 1; }
                ckpt_finalize();
            }
            double t = now() - t0;
            if (r > 0) (which == 0 ? one : which == 1 ? two : dd)[r - 1] = t;
        }
    }
    qsort(one, runs, sizeof *one, cmp); qsort(two, runs, sizeof *two, cmp); qsort(dd, runs, sizeof *dd, cmp);
    double m1 = one[runs / 2], m2 = two[runs / 2], md = dd[runs / 2];
    printf("one pass (ckpt_restart): %.3f s; two passes (ckpt_have_restart + ckpt_restart): %.3f s; dd read: %.3f s\n", m1, m2, md);
    printf("one pass / dd %.2f; two passes / dd %.2f\n", m1 / md, m2 / md);
    free(buf);
    return 0;
}
