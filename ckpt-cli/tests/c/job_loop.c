/* job_loop.c: a small program using libckpt, supervised by `ckpt job` in ckpt-cli/tests/job.rs.
 * Usage: job_loop STEPS DELAY_US. Prints "step N" per step, "checkpoint N" after each checkpoint,
 * "restarted at N" after a restart, and "done <state>" at the end (the same for every run). */
#define _POSIX_C_SOURCE 200809L
#include <ckpt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    int64_t total = argc > 1 ? atoll(argv[1]) : 300;
    long delay_us = argc > 2 ? atol(argv[2]) : 10000;
    uint64_t state[4] = {1, 2, 3, 4};
    int64_t step = 0, at = 0;
    if (ckpt_init("jobloop") != CKPT_OK) {
        fprintf(stderr, "init: %s\n", ckpt_last_error());
        return 1;
    }
    ckpt_protect(0, state, sizeof state);
    ckpt_protect(1, &step, sizeof step);
    int32_t rc = ckpt_restart(&at);
    if (rc == CKPT_OK) {
        printf("restarted at %" PRId64 "\n", step);
    } else if (rc != CKPT_ERR_NO_CHECKPOINT) {
        fprintf(stderr, "restart: %s\n", ckpt_last_error());
        return 1;
    }
    fflush(stdout);
    while (step < total) {
        for (int i = 0; i < 4; i++)
            state[i] = state[i] * 6364136223846793005ULL + 1442695040888963407ULL + state[(i + 1) % 4];
        step++;
        printf("step %" PRId64 "\n", step);
        fflush(stdout);
        struct timespec ts = {0, delay_us * 1000L};
        nanosleep(&ts, NULL);
        if (ckpt_should_checkpoint()) {
            if (ckpt_checkpoint(step) != CKPT_OK) {
                fprintf(stderr, "checkpoint: %s\n", ckpt_last_error());
                return 1;
            }
            printf("checkpoint %" PRId64 "\n", step);
            fflush(stdout);
        }
        if (ckpt_should_exit()) {
            printf("stopped at %" PRId64 "\n", step);
            ckpt_finalize();
            return 0;
        }
    }
    printf("done %016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "\n", state[0], state[1], state[2], state[3]);
    ckpt_finalize();
    return 0;
}
