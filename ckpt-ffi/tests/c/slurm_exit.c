/* Start and exit of a C program under Slurm when the controller does not answer (ckpt-ffi/tests/slurm.rs).
 * Usage: slurm_exit MODE WAIT_FOR. Times ckpt_init, waits (up to 10 s) until the file WAIT_FOR exists (the
 * squeue stand-in has started), then with MODE "finalize" times ckpt_finalize and reports whether any
 * child process (running or zombie) is left; with MODE "return" returns from main without ckpt_finalize.
 * Prints "init <seconds>", "finalize <seconds>", "children none" or "children <pid>". */
#define _POSIX_C_SOURCE 200809L
#include "ckpt.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    double t0 = now();
    if (ckpt_init("slurmexit") != CKPT_OK) {
        fprintf(stderr, "init: %s\n", ckpt_last_error());
        return 1;
    }
    printf("init %.3f\n", now() - t0);
    fflush(stdout);
    for (int i = 0; i < 1000 && access(argv[2], F_OK) != 0; i++) {
        struct timespec ms10 = {0, 10000000};
        nanosleep(&ms10, NULL);
    }
    if (strcmp(argv[1], "return") == 0) return 0;
    double t1 = now();
    if (ckpt_finalize() != CKPT_OK) {
        fprintf(stderr, "finalize: %s\n", ckpt_last_error());
        return 1;
    }
    printf("finalize %.3f\n", now() - t1);
    int status;
    pid_t left = waitpid(-1, &status, WNOHANG);
    if (left == -1 && errno == ECHILD)
        printf("children none\n");
    else
        printf("children %d\n", (int)left);
    return 0;
}
