#include <stdio.h>
#include <stdlib.h>

/* popen STEPS WORK COMMAND: writes STEPS numbers (each after WORK iterations of a hash) through
   popen(COMMAND, "w") (flushed every 500 lines), prints its own progress every 1000 lines, and pclose's
   status at the end. */
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    long steps = atol(argv[1]), work = atol(argv[2]);
    FILE *f = popen(argv[3], "w");
    if (!f) return 3;
    unsigned long h = 1469598103934665603UL;
    for (long i = 0; i < steps; i++) {
        for (long k = 0; k < work; k++) h = (h ^ (unsigned long)k) * 1099511628211UL;
        fprintf(f, "%lu\n", h % 1000);
        if (i % 500 == 499) fflush(f);
        if (i % 1000 == 999) {
            printf("popen %ld\n", i + 1);
            fflush(stdout);
        }
    }
    int st = pclose(f);
    printf("pclose %d\n", st);
    return 0;
}
