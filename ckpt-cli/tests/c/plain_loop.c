/* plain_loop.c: an unmodified program (no libckpt) for `ckpt job --transparent` in ckpt-cli/tests/job.rs.
 * Usage: plain_loop STEPS DELAY_US. Writes "step N <state>" per step to stdout, "done <state>" at the end. */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long total = argc > 1 ? atol(argv[1]) : 300;
    long delay_us = argc > 2 ? atol(argv[2]) : 10000;
    uint64_t x = 88172645463325252ULL;
    for (long step = 1; step <= total; step++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        printf("step %ld %016" PRIx64 "\n", step, x);
        fflush(stdout);
        struct timespec ts = {0, delay_us * 1000L};
        nanosleep(&ts, NULL);
    }
    printf("done %016" PRIx64 "\n", x);
    return 0;
}
