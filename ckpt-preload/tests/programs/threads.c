#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* threads STEPS WORK NTHREADS: the main thread hands every worker a step; each computes a value from the
   step and its index (spinning WORK iterations, through a thread-local accumulator), the main thread waits
   for all of them (mutex + condition variables), signals each worker with pthread_kill and waits for its
   handler, then prints "step s total t". Each worker names itself and pins itself to one CPU at start; the
   main thread checks both in the last step. At the end it joins them. */
static int nthreads;
static long work;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
static int step = -1, finished = 0, quit = 0;
static long results[64];
static atomic_int pokes[64];
static __thread long tls_acc;
static __thread int my_index;

static void on_usr2(int sig) { (void)sig; atomic_fetch_add(&pokes[my_index], 1); }

static int ncpus;

static void *worker(void *arg) {
    my_index = (int)(long)arg;
    char name[16];
    snprintf(name, sizeof name, "worker-%d", my_index);
    pthread_setname_np(pthread_self(), name);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(my_index % ncpus, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    int seen = -1;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (step == seen && !quit) pthread_cond_wait(&go, &lock);
        if (quit) { pthread_mutex_unlock(&lock); break; }
        seen = step;
        pthread_mutex_unlock(&lock);
        tls_acc = 0;
        for (long k = 0; k < work; k++) tls_acc += (k ^ (seen * 31 + my_index)) & 7;
        pthread_mutex_lock(&lock);
        results[my_index] = tls_acc + my_index;
        finished++;
        pthread_cond_signal(&done);
        pthread_mutex_unlock(&lock);
    }
    return (void *)(long)(my_index + 100);
}

int main(int argc, char **argv) {
    int steps = atoi(argv[1]);
    work = atol(argv[2]);
    nthreads = atoi(argv[3]);
    signal(SIGUSR2, on_usr2);
    cpu_set_t all;
    sched_getaffinity(0, sizeof all, &all);
    ncpus = CPU_COUNT(&all);
    pthread_t th[64];
    for (long i = 0; i < nthreads; i++) pthread_create(&th[i], NULL, worker, (void *)i);
    for (int s = 0; s < steps; s++) {
        pthread_mutex_lock(&lock);
        finished = 0;
        step = s;
        pthread_cond_broadcast(&go);
        while (finished < nthreads) pthread_cond_wait(&done, &lock);
        long total = 0;
        for (int i = 0; i < nthreads; i++) total += results[i];
        pthread_mutex_unlock(&lock);
        for (int i = 0; i < nthreads; i++) {
            /* Each worker keeps its name and its CPU (set by itself at start); checked in the last step (a
               checkpoint while reading another thread's /proc entry is refused: see the shim's README). */
            char name[16], want[16];
            snprintf(want, sizeof want, "worker-%d", i);
            if (s == steps - 1 && (pthread_getname_np(th[i], name, sizeof name) != 0 || strcmp(name, want) != 0)) {
                printf("FAIL name of thread %d\n", i);
                return 1;
            }
            cpu_set_t set;
            if (s == steps - 1 && (pthread_getaffinity_np(th[i], sizeof set, &set) != 0 || CPU_COUNT(&set) != 1 ||
                          !CPU_ISSET(i % ncpus, &set))) {
                printf("FAIL affinity of thread %d\n", i);
                return 1;
            }
            int before = atomic_load(&pokes[i]);
            int r = pthread_kill(th[i], SIGUSR2);
            if (r != 0) { printf("FAIL pthread_kill %d: %s\n", i, strerror(r)); return 1; }
            for (int w = 0; atomic_load(&pokes[i]) == before; w++) {
                if (w > 2000000) { printf("FAIL thread %d never got its signal\n", i); return 1; }
                sched_yield();
            }
        }
        printf("step %d total %ld\n", s, total);
        fflush(stdout);
    }
    pthread_mutex_lock(&lock);
    quit = 1;
    pthread_cond_broadcast(&go);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < nthreads; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        if ((long)ret != i + 100) { printf("FAIL join %d\n", i); return 1; }
    }
    printf("joined\n");
    return 0;
}
