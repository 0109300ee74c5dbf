#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* workers STEPS WORK NWORKERS: the parent forks NWORKERS workers, each connected to it by two pipes
   (requests, answers). At every step the parent sends each worker the step number; the worker spins WORK
   iterations on it and answers; the parent prints "step s sum t" (flushed). At the end the parent checks
   that each worker is still reachable by the pid fork returned (kill(pid, 0)), closes the request pipes,
   and waits for each worker by that pid: a worker exits with 0 when getppid() is still the pid of the
   parent it was forked from, else 7. The parent prints each worker's exit status. */
static long spin(long step, long work, int index) {
    unsigned long h = 1469598103934665603UL ^ (unsigned long)(step * 131 + index);
    for (long k = 0; k < work; k++) h = (h ^ (unsigned long)k) * 1099511628211UL;
    return (long)(h % 1000003);
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    long steps = atol(argv[1]), work = atol(argv[2]);
    int n = atoi(argv[3]);
    pid_t parent = getpid();
    pid_t pids[16];
    int req[16], ans[16];
    for (int i = 0; i < n; i++) {
        int a[2], b[2];
        if (pipe(a) || pipe(b)) return 3;
        pid_t p = fork();
        if (p < 0) return 4;
        if (p == 0) {
            close(a[1]);
            close(b[0]);
            for (int j = 0; j < i; j++) { close(req[j]); close(ans[j]); }
            long s;
            while (read(a[0], &s, sizeof s) == (ssize_t)sizeof s) {
                long r = spin(s, work, i);
                if (write(b[1], &r, sizeof r) != (ssize_t)sizeof r) _exit(5);
            }
            _exit(getppid() == parent ? 0 : 7);
        }
        close(a[0]);
        close(b[1]);
        pids[i] = p;
        req[i] = a[1];
        ans[i] = b[0];
    }
    for (long s = 0; s < steps; s++) {
        for (int i = 0; i < n; i++)
            if (write(req[i], &s, sizeof s) != (ssize_t)sizeof s) return 6;
        long total = 0;
        for (int i = 0; i < n; i++) {
            long r;
            if (read(ans[i], &r, sizeof r) != (ssize_t)sizeof r) return 8;
            total += r;
        }
        printf("step %ld sum %ld\n", s, total);
        fflush(stdout);
    }
    for (int i = 0; i < n; i++) {
        printf("worker %d reachable %d\n", i, kill(pids[i], 0) == 0);
        close(req[i]);
    }
    for (int i = 0; i < n; i++) {
        int status = -1;
        pid_t w = waitpid(pids[i], &status, 0);
        printf("worker %d waited %d status %d\n", i, w == pids[i], WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    return 0;
}
