/*
 * slurm_app: a small iterative computation checkpointed with libckpt, for the Slurm integration tests
 * (tests/slurm/run.sh). Its state is 64 words of a mixing recurrence; the final checksum depends on every
 * step, so a run that was checkpointed, killed and restarted ends with the checksum of an uninterrupted
 * run only if the restart resumed from exactly the state that was saved.
 *
 *   slurm_app STEPS USEC_PER_STEP            sleep USEC_PER_STEP per step (simulated work)
 *   slurm_app STEPS USEC_PER_STEP --no-poll  never reaches a safe point: ckpt_init, then only sleeps
 *
 * Output lines (one per event, flushed): START, RESUMED, CHECKPOINT, STOPPED, DONE.
 * Exit status: 0 when all steps are done, 3 when it stopped after a last checkpoint (SIGTERM, the time
 * limit), 1 on an error.
 */
#include <ckpt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORDS 64

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void check(int32_t st, const char *what) {
    if (st != CKPT_OK) {
        fprintf(stderr, "slurm_app: %s: %s (%s)\n", what, ckpt_status_str(st), ckpt_last_error());
        fflush(stdout);
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s STEPS USEC_PER_STEP [--no-poll]\n", argv[0]);
        return 2;
    }
    int64_t steps = atoll(argv[1]);
    long usec = atol(argv[2]);
    int no_poll = argc > 3 && strcmp(argv[3], "--no-poll") == 0;
    const char *rc = getenv("SLURM_RESTART_COUNT"), *job = getenv("SLURM_JOB_ID");
    double t0 = now();

    uint64_t x[WORDS];
    int64_t step = 0;
    for (int j = 0; j < WORDS; j++) x[j] = 0x9e3779b97f4a7c15ULL * (uint64_t)(j + 1);

    check(ckpt_init("slurm_app"), "ckpt_init");
    check(ckpt_protect(0, x, sizeof x), "ckpt_protect(state)");
    check(ckpt_protect(1, &step, sizeof step), "ckpt_protect(step)");
    printf("START job=%s restart_count=%s pid=%d steps=%lld usec=%ld\n", job ? job : "-", rc ? rc : "unset",
           (int)getpid(), (long long)steps, usec);
    fflush(stdout);

    if (no_poll) {   /* a program that never reaches a safe point: it never asks should_checkpoint */
        for (;;) sleep(1);
    }

    int32_t found = 0;
    int64_t saved = 0;
    check(ckpt_have_restart(&found, &saved), "ckpt_have_restart");
    if (found) {
        check(ckpt_restart(&saved), "ckpt_restart");
        printf("RESUMED step=%lld\n", (long long)step);
        fflush(stdout);
    }

    while (step < steps) {
        for (int j = 0; j < WORDS; j++) {
            uint64_t v = x[j] * 6364136223846793005ULL + 1442695040888963407ULL + x[(j + 1) % WORDS];
            x[j] = v ^ (v >> 29) ^ (uint64_t)step;
        }
        step++;
        if (usec > 0) usleep((useconds_t)usec);
        if (ckpt_should_checkpoint()) {
            check(ckpt_checkpoint(step), "ckpt_checkpoint");
            printf("CHECKPOINT step=%lld exit=%d t=+%.1f\n", (long long)step, ckpt_should_exit(), now() - t0);
            fflush(stdout);
        }
        if (ckpt_should_exit()) {
            printf("STOPPED step=%lld t=+%.1f\n", (long long)step, now() - t0);
            fflush(stdout);
            ckpt_finalize();
            return 3;
        }
    }
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a over the state */
    const unsigned char *p = (const unsigned char *)x;
    for (size_t i = 0; i < sizeof x; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    printf("DONE steps=%lld checksum=%016llx t=+%.1f\n", (long long)step, (unsigned long long)h, now() - t0);
    fflush(stdout);
    ckpt_finalize();
    return 0;
}
