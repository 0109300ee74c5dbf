/* pending LINES WORK: signals pending across checkpoints. At start the main thread blocks SIGUSR2 and
   SIGHUP and leaves one of each pending (SIGUSR2 for itself with raise, SIGHUP for the process with
   kill); a worker thread blocks SIGWINCH and gets one with pthread_kill. Near the end they unblock them:
   each handler must run exactly once, at the same place of the output as in an uninterrupted run. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_int unblock_worker, worker_done;

static void say(const char *s) {
    if (write(1, s, strlen(s)) < 0) _exit(9);
}
static void on_usr2(int sig) { (void)sig; say("got SIGUSR2\n"); }
static void on_hup(int sig) { (void)sig; say("got SIGHUP\n"); }
static void on_winch(int sig) { (void)sig; say("got SIGWINCH in the worker\n"); }

static void *worker(void *arg) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGWINCH);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    atomic_store(&worker_done, 1);
    while (!atomic_load(&unblock_worker)) usleep(1000);
    pthread_sigmask(SIG_UNBLOCK, &s, NULL);
    atomic_store(&worker_done, 2);
    return arg;
}

int main(int argc, char **argv) {
    int lines = atoi(argv[1]);
    long work = atol(argv[2]);
    signal(SIGUSR2, on_usr2);
    signal(SIGHUP, on_hup);
    signal(SIGWINCH, on_winch);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    sigaddset(&s, SIGHUP);
    sigaddset(&s, SIGWINCH);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    while (atomic_load(&worker_done) != 1) usleep(1000);
    raise(SIGUSR2);
    kill(getpid(), SIGHUP);
    pthread_kill(t, SIGWINCH);
    char b[64];
    for (int i = 0; i < lines; i++) {
        if (i == lines - 20) {
            sigset_t m;
            sigemptyset(&m);
            sigaddset(&m, SIGUSR2);
            sigaddset(&m, SIGHUP);
            pthread_sigmask(SIG_UNBLOCK, &m, NULL);
        }
        if (i == lines - 10) {
            atomic_store(&unblock_worker, 1);
            while (atomic_load(&worker_done) != 2) usleep(1000);
        }
        snprintf(b, sizeof b, "line %d\n", i);
        say(b);
        volatile long x = 0;
        for (long k = 0; k < work; k++) x += k;
    }
    pthread_join(t, NULL);
    return 0;
}
