/* A C program checkpointing every 5 iterations with libckpt, for the SIGKILL test (ckpt-ffi/tests/kill.rs).
 * Usage: kill_loop DIR ITERATIONS. Prints "resumed <it>" (0 on a fresh start), "durable <it>" after each
 * checkpoint returned CKPT_OK, and "done <checksum>" at the end. */
#include "ckpt.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 200000 };

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    long total = atol(argv[2]);
    ckpt_set_config("CKPT_DIR", argv[1]);
    ckpt_set_config("CKPT_LOG", "off");
    ckpt_set_config("CKPT_SOCKET", "0");
    if (ckpt_init("killc") != CKPT_OK) {
        fprintf(stderr, "init: %s\n", ckpt_last_error());
        return 1;
    }
    double *field = malloc(N * sizeof *field);
    int64_t it = 0;
    for (int i = 0; i < N; i++) field[i] = i * 1e-3;
    ckpt_protect(0, field, N * sizeof *field);
    ckpt_protect(1, &it, sizeof it);
    int32_t found = 0;
    int64_t step = 0;
    if (ckpt_have_restart(&found, &step) != CKPT_OK) {
        fprintf(stderr, "have_restart: %s\n", ckpt_last_error());
        return 1;
    }
    if (found && ckpt_restart(&step) != CKPT_OK) {
        fprintf(stderr, "restart: %s\n", ckpt_last_error());
        return 1;
    }
    if (found && step != it) {
        fprintf(stderr, "restored step %lld but iteration %lld\n", (long long)step, (long long)it);
        return 1;
    }
    printf("resumed %lld\n", (long long)it);
    fflush(stdout);
    while (it < total) {
        for (int i = 0; i < N; i++) field[i] = field[i] * 0.999 + (double)((it + i) % 7);
        it++;
        if (it % 5 == 0) {
            if (ckpt_checkpoint(it) != CKPT_OK) {
                fprintf(stderr, "checkpoint: %s\n", ckpt_last_error());
                return 1;
            }
            printf("durable %lld\n", (long long)it);
            fflush(stdout);
        }
    }
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the bytes of the field */
    const unsigned char *b = (const unsigned char *)field;
    for (size_t i = 0; i < N * sizeof *field; i++) h = (h ^ b[i]) * 1099511628211ull;
    printf("done %016llx\n", (unsigned long long)h);
    ckpt_finalize();
    free(field);
    return 0;
}
