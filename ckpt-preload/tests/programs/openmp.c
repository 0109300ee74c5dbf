/* openmp ROUNDS: a Jacobi-like relaxation on a 1-D field with an OpenMP parallel loop (3 threads, static
   schedule) and a reduction; prints the round and a checksum of the field. Deterministic: each thread
   writes its own part, the reduction is over integers. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define N 400000

static long a[N], b[N];

int main(int argc, char **argv) {
    int rounds = atoi(argv[1]);
    omp_set_num_threads(3);
    for (long i = 0; i < N; i++) a[i] = (i * 2654435761u) % 1000;
    for (int r = 0; r < rounds; r++) {
        long sum = 0;
        int threads = 0;
#pragma omp parallel
        {
#pragma omp single
            threads = omp_get_num_threads();
#pragma omp for schedule(static) reduction(+ : sum)
            for (long i = 1; i < N - 1; i++) {
                b[i] = (a[i - 1] + 2 * a[i] + a[i + 1] + r) % 100003;
                sum += b[i];
            }
        }
        for (long i = 1; i < N - 1; i++) a[i] = b[i];
        printf("round %d threads %d sum %ld\n", r, threads, sum);
        fflush(stdout);
    }
    return 0;
}
