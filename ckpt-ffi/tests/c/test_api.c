/* C tests of libckpt: every function's success and error paths, compiled against the installed header.
 * Usage: test_api DIR  (an empty scratch directory). Exit status 0 when every check passes. */
#define _POSIX_C_SOURCE 200809L
#include "ckpt.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures = 0;
#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, \
                    ckpt_last_error());                                                    \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)
#define EXPECT(call, code) CHECK((call) == (code))

static char dir[4096];

static void path_in(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", dir, name); }

static void version_and_status(void) {
    CHECK(strcmp(ckpt_version(), CKPT_VERSION_STRING) == 0);
    char expect[64];
    snprintf(expect, sizeof expect, "%d.%d.%d", CKPT_VERSION_MAJOR, CKPT_VERSION_MINOR, CKPT_VERSION_PATCH);
    CHECK(strcmp(ckpt_version(), expect) == 0);
    CHECK(CKPT_VERSION_NUMBER == CKPT_VERSION_MAJOR * 10000 + CKPT_VERSION_MINOR * 100 + CKPT_VERSION_PATCH);
    int codes[] = {CKPT_OK, CKPT_ERR_IO, CKPT_ERR_NOT_FOUND, CKPT_ERR_CORRUPT, CKPT_ERR_UNSUPPORTED_VERSION,
                   CKPT_ERR_TOO_LARGE, CKPT_ERR_INVALID_ARGUMENT, CKPT_ERR_NO_VALID_CHECKPOINT, CKPT_ERR_CONFLICT,
                   CKPT_ERR_SECTION_NOT_FOUND, CKPT_ERR_ENCODING, CKPT_ERR_INVALID_STATE, CKPT_ERR_UNTRUSTED,
                   CKPT_ERR_NULL_ARGUMENT,
                   CKPT_ERR_NOT_INITIALIZED, CKPT_ERR_ALREADY_INITIALIZED, CKPT_ERR_UNKNOWN_REGION,
                   CKPT_ERR_SIZE_MISMATCH, CKPT_ERR_NO_CHECKPOINT, CKPT_ERR_BUFFER_TOO_SMALL,
                   CKPT_ERR_INVALID_UTF8, CKPT_ERR_MPI, CKPT_ERR_OTHER, CKPT_ERR_PANIC};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        CHECK(ckpt_status_str(codes[i]) != NULL && strlen(ckpt_status_str(codes[i])) > 0);
        CHECK(strcmp(ckpt_status_str(codes[i]), "unknown status code") != 0);
        for (size_t j = 0; j < i; j++) CHECK(codes[i] != codes[j]);
    }
    CHECK(strcmp(ckpt_status_str(12345), "unknown status code") == 0);
    CHECK(ckpt_last_error() != NULL);
}

static void before_init(void) {
    double x = 1;
    int32_t found = 7;
    int64_t step = 7;
    size_t len = 7;
    CHECK(ckpt_should_checkpoint() == 0);
    CHECK(ckpt_should_exit() == 0);
    EXPECT(ckpt_protect(0, &x, sizeof x), CKPT_ERR_NOT_INITIALIZED);
    CHECK(strstr(ckpt_last_error(), "ckpt_init") != NULL);
    EXPECT(ckpt_unprotect(0), CKPT_ERR_NOT_INITIALIZED);
    EXPECT(ckpt_checkpoint(1), CKPT_ERR_NOT_INITIALIZED);
    EXPECT(ckpt_have_restart(&found, &step), CKPT_ERR_NOT_INITIALIZED);
    CHECK(found == 7 && step == 7); /* out-params untouched on failure */
    EXPECT(ckpt_restart_size(0, &len), CKPT_ERR_NOT_INITIALIZED);
    CHECK(len == 7);
    EXPECT(ckpt_restart(&step), CKPT_ERR_NOT_INITIALIZED);
    EXPECT(ckpt_finalize(), CKPT_ERR_NOT_INITIALIZED);
    EXPECT(ckpt_set_config(NULL, "x"), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_set_config("PATH", "x"), CKPT_ERR_INVALID_ARGUMENT);
    EXPECT(ckpt_set_config("CKPT_KEPP", "3"), CKPT_ERR_INVALID_ARGUMENT); /* misspelled: never silently ignored */
    EXPECT(ckpt_set_config("CKPT_DIR", dir), CKPT_OK);
    EXPECT(ckpt_set_config("CKPT_LOG", "off"), CKPT_OK);
    EXPECT(ckpt_set_config("CKPT_SOCKET", "0"), CKPT_OK);
    EXPECT(ckpt_set_rank(2, 2), CKPT_ERR_INVALID_ARGUMENT);
    EXPECT(ckpt_set_rank(-1, 2), CKPT_ERR_INVALID_ARGUMENT);
    EXPECT(ckpt_set_rank(0, 1), CKPT_OK);
    /* a malformed setting is reported by ckpt_init, naming the variable */
    EXPECT(ckpt_set_config("CKPT_INTERVAL", "1:2:3:4"), CKPT_OK);
    EXPECT(ckpt_init("capi"), CKPT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ckpt_last_error(), "CKPT_INTERVAL") != NULL);
    EXPECT(ckpt_set_config("CKPT_INTERVAL", NULL), CKPT_OK);
    char bad[2] = {(char)0xff, 0};
    EXPECT(ckpt_init(bad), CKPT_ERR_INVALID_UTF8);
}

enum { N = 1000 };

static void first_run(void) {
    EXPECT(ckpt_init("capi"), CKPT_OK);
    EXPECT(ckpt_init("capi"), CKPT_ERR_ALREADY_INITIALIZED);
    EXPECT(ckpt_set_config("CKPT_KEEP", "3"), CKPT_ERR_INVALID_STATE);
    EXPECT(ckpt_set_rank(0, 1), CKPT_ERR_INVALID_STATE);
    int32_t rank = -1, nranks = -1;
    EXPECT(ckpt_rank_info(&rank, &nranks), CKPT_OK);
    CHECK(rank == 0 && nranks == 1);
    EXPECT(ckpt_rank_info(NULL, &nranks), CKPT_ERR_NULL_ARGUMENT);

    double *field = malloc(N * sizeof *field);
    int64_t iteration = 0;
    for (int i = 0; i < N; i++) field[i] = i * 0.5;
    EXPECT(ckpt_protect(0, NULL, 8), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_protect(0, field, N * sizeof *field), CKPT_OK);
    EXPECT(ckpt_protect(1, &iteration, sizeof iteration), CKPT_OK);
    EXPECT(ckpt_protect(2, NULL, 0), CKPT_OK); /* an empty region is fine */
    EXPECT(ckpt_unprotect(42), CKPT_ERR_UNKNOWN_REGION);
    CHECK(strstr(ckpt_last_error(), "42") != NULL);
    EXPECT(ckpt_set_metadata("code", "heat v1"), CKPT_OK);
    EXPECT(ckpt_set_metadata(NULL, "x"), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_set_metadata("", "x"), CKPT_ERR_INVALID_ARGUMENT);

    int32_t found = 7;
    int64_t step = -1;
    EXPECT(ckpt_have_restart(NULL, &step), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_have_restart(&found, NULL), CKPT_OK);
    CHECK(found == 0);
    EXPECT(ckpt_restart(&step), CKPT_ERR_NO_CHECKPOINT);
    size_t len = 0;
    EXPECT(ckpt_restart_size(0, &len), CKPT_ERR_NO_CHECKPOINT);
    EXPECT(ckpt_restart_size(0, NULL), CKPT_ERR_NULL_ARGUMENT);

    /* signals: USR1 asks for a checkpoint, TERM for a checkpoint and an exit */
    CHECK(ckpt_should_checkpoint() == 0);
    raise(SIGUSR1);
    CHECK(ckpt_should_checkpoint() == 1);
    CHECK(ckpt_should_exit() == 0);
    /* steps are 0 or more: a negative one is refused, naming it, and the request stays due */
    EXPECT(ckpt_checkpoint(-3), CKPT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ckpt_last_error(), "step -3 is negative") != NULL);
    EXPECT(ckpt_checkpoint(INT64_MIN), CKPT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ckpt_last_error(), "step -9223372036854775808 is negative") != NULL);
    CHECK(ckpt_should_checkpoint() == 1);
    iteration = 10;
    EXPECT(ckpt_checkpoint(iteration), CKPT_OK);
    CHECK(ckpt_should_checkpoint() == 0);
    CHECK(ckpt_should_exit() == 0);
    for (int i = 0; i < N; i++) field[i] = i * 2.0;
    iteration = 20;
    raise(SIGTERM);
    CHECK(ckpt_should_checkpoint() == 1);
    EXPECT(ckpt_checkpoint(iteration), CKPT_OK);
    CHECK(ckpt_should_exit() == 1);
    char p[4200];
    path_in(p, sizeof p, "capi.ckpt");
    CHECK(access(p, F_OK) == 0);
    path_in(p, sizeof p, "capi.ckpt.2");
    CHECK(access(p, F_OK) == 0);
    EXPECT(ckpt_finalize(), CKPT_OK);
    CHECK(ckpt_should_checkpoint() == 0);
    free(field);
}

static void restart_run(void) {
    EXPECT(ckpt_init("capi"), CKPT_OK);
    int32_t found = 0;
    int64_t step = -1;
    EXPECT(ckpt_have_restart(&found, &step), CKPT_OK);
    CHECK(found == 1 && step == 20);
    size_t len = 0;
    EXPECT(ckpt_restart_size(0, &len), CKPT_OK);
    CHECK(len == N * sizeof(double));
    EXPECT(ckpt_restart_size(9, &len), CKPT_ERR_SECTION_NOT_FOUND);
    CHECK(strstr(ckpt_last_error(), "capi.ckpt") != NULL && strstr(ckpt_last_error(), "region 9") != NULL);

    /* wrong size: nothing is written, not even the regions that would fit */
    double small[10];
    int64_t iteration = -1;
    for (int i = 0; i < 10; i++) small[i] = -1;
    EXPECT(ckpt_protect(1, &iteration, sizeof iteration), CKPT_OK);
    EXPECT(ckpt_protect(0, small, sizeof small), CKPT_OK);
    step = -1;
    EXPECT(ckpt_restart(&step), CKPT_ERR_SIZE_MISMATCH);
    CHECK(strstr(ckpt_last_error(), "region 0") != NULL);
    CHECK(step == -1 && iteration == -1 && small[0] == -1);

    /* a protected region the checkpoint lacks */
    double *field = malloc(len);
    EXPECT(ckpt_protect(0, field, len), CKPT_OK);
    EXPECT(ckpt_protect(7, small, sizeof small), CKPT_OK);
    EXPECT(ckpt_restart(&step), CKPT_ERR_SECTION_NOT_FOUND);
    EXPECT(ckpt_unprotect(7), CKPT_OK);

    EXPECT(ckpt_restart(&step), CKPT_OK);
    CHECK(step == 20 && iteration == 20);
    int same = 1;
    for (int i = 0; i < N; i++) same &= field[i] == i * 2.0;
    CHECK(same);
    char buf[64];
    size_t mlen = 0;
    EXPECT(ckpt_restart_metadata("code", buf, sizeof buf, &mlen), CKPT_OK);
    CHECK(mlen == 7 && strcmp(buf, "heat v1") == 0);
    EXPECT(ckpt_restart_metadata("code", buf, 3, &mlen), CKPT_ERR_BUFFER_TOO_SMALL);
    EXPECT(ckpt_restart_metadata("nope", buf, sizeof buf, &mlen), CKPT_ERR_SECTION_NOT_FOUND);
    uint64_t gen = 0;
    EXPECT(ckpt_next_generation(&gen), CKPT_OK);
    CHECK(gen == 3);
    EXPECT(ckpt_newest_valid_generation(UINT64_MAX, &gen), CKPT_OK);
    CHECK(gen == 2);
    EXPECT(ckpt_newest_valid_generation(1, &gen), CKPT_OK);
    CHECK(gen == 1);
    EXPECT(ckpt_select_generation(1, &step), CKPT_OK);
    CHECK(step == 10);
    EXPECT(ckpt_restart(&step), CKPT_OK);
    CHECK(step == 10 && iteration == 10 && field[3] == 1.5);
    EXPECT(ckpt_select_generation(7, &step), CKPT_ERR_NO_CHECKPOINT);
    /* programmatic triggers; finish_step without a pending part is a no-op */
    CHECK(ckpt_should_checkpoint() == 0);
    EXPECT(ckpt_request_checkpoint(0), CKPT_OK);
    CHECK(ckpt_should_checkpoint() == 1 && ckpt_should_exit() == 0);
    EXPECT(ckpt_finish_step(1), CKPT_OK);
    CHECK(ckpt_should_exit() == 0);
    EXPECT(ckpt_finalize(), CKPT_OK);
    EXPECT(ckpt_request_checkpoint(1), CKPT_ERR_NOT_INITIALIZED);
    free(field);
}

/* ckpt_restart with nothing found before (no ckpt_have_restart, no ckpt_restart_size): discovery and the
 * copy into the regions in one pass, with the same refusals (nothing written) and the same result. */
static void direct_restart(void) {
    EXPECT(ckpt_init("capi"), CKPT_OK);
    double small[10];
    int64_t iteration = -1, step = -1;
    for (int i = 0; i < 10; i++) small[i] = -1;
    EXPECT(ckpt_protect(1, &iteration, sizeof iteration), CKPT_OK);
    EXPECT(ckpt_protect(0, small, sizeof small), CKPT_OK);
    EXPECT(ckpt_restart(&step), CKPT_ERR_SIZE_MISMATCH);
    CHECK(strstr(ckpt_last_error(), "region 0") != NULL && strstr(ckpt_last_error(), "ckpt_restart_size") != NULL);
    CHECK(step == -1 && iteration == -1 && small[0] == -1);

    double *field = malloc(N * sizeof(double));
    for (int i = 0; i < N; i++) field[i] = -1;
    EXPECT(ckpt_protect(0, field, N * sizeof(double)), CKPT_OK);
    EXPECT(ckpt_protect(7, small, sizeof small), CKPT_OK);
    EXPECT(ckpt_restart(&step), CKPT_ERR_SECTION_NOT_FOUND);
    CHECK(strstr(ckpt_last_error(), "region 7") != NULL);
    CHECK(step == -1 && iteration == -1 && field[0] == -1 && small[0] == -1);
    EXPECT(ckpt_unprotect(7), CKPT_OK);

    EXPECT(ckpt_restart(&step), CKPT_OK);
    int same = 1;
    for (int i = 0; i < N; i++) same &= field[i] == i * 2.0;
    CHECK(step == 20 && iteration == 20 && same);
    /* what was restored is kept for the calls that follow */
    uint64_t gen = 0;
    ckpt_restart_details *d = NULL;
    EXPECT(ckpt_restart_info(&d), CKPT_OK);
    const char *path = NULL;
    EXPECT(ckpt_restart_details_restored(d, &path, &gen, &step), CKPT_OK);
    CHECK(gen == 2 && step == 20);
    EXPECT(ckpt_restart_details_free(d), CKPT_OK);
    EXPECT(ckpt_finalize(), CKPT_OK);

    /* Regions sharing memory: filled one after the other. */
    EXPECT(ckpt_init("capi"), CKPT_OK);
    for (int i = 0; i < N; i++) field[i] = -1;
    EXPECT(ckpt_protect(0, field, N * sizeof(double)), CKPT_OK);
    EXPECT(ckpt_protect(1, field, sizeof(int64_t)), CKPT_OK);
    step = -1;
    EXPECT(ckpt_restart(&step), CKPT_OK);
    same = 1;
    for (int i = 1; i < N; i++) same &= field[i] == i * 2.0;
    CHECK(step == 20 && same);
    EXPECT(ckpt_finalize(), CKPT_OK);
    free(field);
}

/* A fresh start allowed (CKPT_ALLOW_FRESH_START=1) after the only checkpoint was found damaged while it
 * was copied into the regions: an error saying they hold its bytes, never "no checkpoint" over them. */
static void fresh_start_after_damage(void) {
    enum { M = 65536 };
    unsigned char *data = malloc(M);
    for (int i = 0; i < M; i++) data[i] = (unsigned char)(i * 13);
    EXPECT(ckpt_init("fresh"), CKPT_OK);
    EXPECT(ckpt_protect(0, data, M), CKPT_OK);
    EXPECT(ckpt_checkpoint(5), CKPT_OK);
    EXPECT(ckpt_finalize(), CKPT_OK);
    char p[4200];
    path_in(p, sizeof p, "fresh.ckpt.1");
    struct stat st;
    CHECK(stat(p, &st) == 0);
    FILE *f = fopen(p, "r+b");
    CHECK(f != NULL);
    if (f) {
        long at = (long)st.st_size / 2; /* inside the region's data, which is most of the file */
        fseek(f, at, SEEK_SET);
        int c = fgetc(f);
        fseek(f, at, SEEK_SET);
        fputc(c ^ 0x5a, f);
        fclose(f);
    }
    setenv("CKPT_ALLOW_FRESH_START", "1", 1);
    EXPECT(ckpt_init("fresh"), CKPT_OK);
    memset(data, 7, M);
    EXPECT(ckpt_protect(0, data, M), CKPT_OK);
    int64_t step = -1;
    EXPECT(ckpt_restart(&step), CKPT_ERR_NO_VALID_CHECKPOINT);
    CHECK(step == -1 && strstr(ckpt_last_error(), "initialise them again") != NULL);
    EXPECT(ckpt_finalize(), CKPT_OK);
    /* Found first (verified, nothing copied yet): a fresh start, the region untouched. */
    EXPECT(ckpt_init("fresh"), CKPT_OK);
    memset(data, 7, M);
    EXPECT(ckpt_protect(0, data, M), CKPT_OK);
    int32_t found = 9;
    EXPECT(ckpt_have_restart(&found, &step), CKPT_OK);
    CHECK(found == 0);
    EXPECT(ckpt_restart(&step), CKPT_ERR_NO_CHECKPOINT);
    CHECK(data[0] == 7 && data[M / 2] == 7);
    EXPECT(ckpt_finalize(), CKPT_OK);
    unsetenv("CKPT_ALLOW_FRESH_START");
    free(data);
}

/* ckpt_restart_info: the file, generation and step restored, and the newer files rejected and why. */
static void restart_info(void) {
    ckpt_restart_details *d = NULL;
    EXPECT(ckpt_restart_info(&d), CKPT_ERR_NOT_INITIALIZED);
    CHECK(d == NULL);
    EXPECT(ckpt_init("capi"), CKPT_OK);
    EXPECT(ckpt_restart_info(NULL), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_info(&d), CKPT_OK);
    CHECK(d != NULL);
    const char *path = NULL, *reason = NULL, *sentinel = "unchanged";
    uint64_t gen = 0;
    int64_t step = -1;
    size_t n = 99;
    EXPECT(ckpt_restart_details_restored(d, &path, &gen, &step), CKPT_OK);
    CHECK(path != NULL && strstr(path, "capi.ckpt") != NULL && gen == 2 && step == 20);
    EXPECT(ckpt_restart_details_restored(d, &path, NULL, NULL), CKPT_OK);
    EXPECT(ckpt_restart_details_restored(NULL, &path, &gen, &step), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_details_restored(d, NULL, &gen, &step), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_details_rejected_count(d, &n), CKPT_OK);
    CHECK(n == 0);
    EXPECT(ckpt_restart_details_rejected_count(d, NULL), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_details_rejected_count(NULL, &n), CKPT_ERR_NULL_ARGUMENT);
    path = sentinel;
    reason = sentinel;
    EXPECT(ckpt_restart_details_rejected(d, 0, &path, &reason, NULL), CKPT_ERR_INVALID_ARGUMENT);
    CHECK(path == sentinel && reason == sentinel); /* nothing written on failure */
    CHECK(strstr(ckpt_last_error(), "rejected file 0") != NULL);
    EXPECT(ckpt_restart_details_free(d), CKPT_OK);
    EXPECT(ckpt_restart_details_free(NULL), CKPT_OK);
    EXPECT(ckpt_finalize(), CKPT_OK);

    /* Damage the newest generation (capi.ckpt.2, hard-linked as capi.ckpt): generation 1 is restored and
     * the damaged file is reported with its reason (at another offset than damaged() uses, so that its
     * second XOR there does not repair it). */
    char p[4200];
    path_in(p, sizeof p, "capi.ckpt.2");
    FILE *f = fopen(p, "r+b");
    CHECK(f != NULL);
    if (f) {
        fseek(f, 4096 + 50, SEEK_SET);
        int c = fgetc(f);
        fseek(f, 4096 + 50, SEEK_SET);
        fputc(c ^ 0x5a, f);
        fclose(f);
    }
    EXPECT(ckpt_init("capi"), CKPT_OK);
    d = NULL;
    EXPECT(ckpt_restart_info(&d), CKPT_OK);
    EXPECT(ckpt_finalize(), CKPT_OK); /* the handle is a snapshot: still readable */
    EXPECT(ckpt_restart_details_restored(d, &path, &gen, &step), CKPT_OK);
    CHECK(strstr(path, "capi.ckpt.1") != NULL && gen == 1 && step == 10);
    EXPECT(ckpt_restart_details_rejected_count(d, &n), CKPT_OK);
    CHECK(n >= 1);
    int saw_newest = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t status = 0;
        path = reason = NULL;
        EXPECT(ckpt_restart_details_rejected(d, i, &path, &reason, &status), CKPT_OK);
        CHECK(path != NULL && reason != NULL && strstr(path, "capi.ckpt") != NULL);
        CHECK(status == CKPT_ERR_CORRUPT && strstr(reason, "crc32") != NULL);
        saw_newest |= strstr(path, "capi.ckpt.2") != NULL || strstr(path, "capi.ckpt.1") == NULL;
    }
    CHECK(saw_newest);
    EXPECT(ckpt_restart_details_rejected(d, n, &path, &reason, NULL), CKPT_ERR_INVALID_ARGUMENT);
    EXPECT(ckpt_restart_details_rejected(d, 0, NULL, &reason, NULL), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_details_rejected(d, 0, &path, NULL, NULL), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_details_rejected(NULL, 0, &path, &reason, NULL), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_details_free(d), CKPT_OK);
}

static void damaged(void) {
    /* Damage both generations: restart reports every file and why, never a silent fresh start. */
    /* capi.ckpt is another name (hard link) of capi.ckpt.2: damage each file once. */
    const char *names[] = {"capi.ckpt.1", "capi.ckpt.2"};
    for (int k = 0; k < 2; k++) {
        char p[4200];
        path_in(p, sizeof p, names[k]);
        FILE *f = fopen(p, "r+b");
        if (!f) continue;
        fseek(f, 4096 + 5, SEEK_SET);
        int c = fgetc(f);
        fseek(f, 4096 + 5, SEEK_SET);
        fputc(c ^ 0x5a, f);
        fclose(f);
    }
    EXPECT(ckpt_init("capi"), CKPT_OK);
    int32_t found = 7;
    EXPECT(ckpt_have_restart(&found, NULL), CKPT_ERR_NO_VALID_CHECKPOINT);
    CHECK(found == 7);
    CHECK(strstr(ckpt_last_error(), "capi.ckpt.1") != NULL && strstr(ckpt_last_error(), "crc32") != NULL);
    EXPECT(ckpt_finalize(), CKPT_OK);
}

static void buffers(void) {
    char p[4200];
    path_in(p, sizeof p, "state.bin");
    unsigned char data[5000], back[5000];
    for (int i = 0; i < 5000; i++) data[i] = (unsigned char)(i * 7);
    EXPECT(ckpt_save_buffer(NULL, data, sizeof data, 3), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_save_buffer(p, NULL, 5, 3), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_save_buffer(p, data, sizeof data, -3), CKPT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ckpt_last_error(), "step -3 is negative") != NULL);
    CHECK(access(p, F_OK) != 0); /* nothing written */
    EXPECT(ckpt_save_buffer(p, data, sizeof data, 3), CKPT_OK);
    size_t len = 0;
    int64_t step = 0;
    EXPECT(ckpt_buffer_size(p, &len), CKPT_OK);
    CHECK(len == sizeof data);
    EXPECT(ckpt_load_buffer(p, back, 100, &len, &step), CKPT_ERR_BUFFER_TOO_SMALL);
    EXPECT(ckpt_load_buffer(p, back, sizeof back, &len, &step), CKPT_OK);
    CHECK(len == sizeof data && step == 3 && memcmp(data, back, sizeof data) == 0);
    char missing[4200];
    path_in(missing, sizeof missing, "missing.bin");
    EXPECT(ckpt_load_buffer(missing, back, sizeof back, &len, &step), CKPT_ERR_NOT_FOUND);
    CHECK(strstr(ckpt_last_error(), "missing.bin") != NULL);
    FILE *f = fopen(p, "r+b");
    fseek(f, 4096 + 100, SEEK_SET);
    fputc(0, f);
    fputc(1, f);
    fclose(f);
    EXPECT(ckpt_load_buffer(p, back, sizeof back, &len, &step), CKPT_ERR_CORRUPT);
    CHECK(strstr(ckpt_last_error(), "state.bin") != NULL && strstr(ckpt_last_error(), "buffer") != NULL);
}

static void parts_by_identity(void) {
    /* The calls ckpt_mpi.h builds on, one process playing rank 1 and then rank 0 of 2 (one checkpointer
     * per process at a time): each rank writes its part and reads back its identity; rank 0 commits the
     * step from both identities without opening the parts, and the step restarts. */
    char p[4200];
    path_in(p, sizeof p, "idparts");
    int32_t field[64];
    for (int i = 0; i < 64; i++) field[i] = i;
    ckpt_part_identity ids[2];
    memset(ids, 0, sizeof ids);
    EXPECT(ckpt_set_config("CKPT_DIR", p), CKPT_OK);
    for (int rank = 1; rank >= 0; rank--) {
        EXPECT(ckpt_set_rank(rank, 2), CKPT_OK);
        EXPECT(ckpt_init("idparts"), CKPT_OK);
        EXPECT(ckpt_protect(0, field, sizeof field), CKPT_OK);
        EXPECT(ckpt_get_part_identity(1, &ids[rank]), CKPT_ERR_INVALID_STATE); /* no part written yet */
        EXPECT(ckpt_checkpoint_part(1, -40), CKPT_ERR_INVALID_ARGUMENT);
        CHECK(strstr(ckpt_last_error(), "step -40 is negative") != NULL);
        EXPECT(ckpt_checkpoint_part(1, 40), CKPT_OK);
        EXPECT(ckpt_get_part_identity(1, NULL), CKPT_ERR_NULL_ARGUMENT);
        EXPECT(ckpt_get_part_identity(1, &ids[rank]), CKPT_OK);
        CHECK(ids[rank].generation == 1 && ids[rank].step == 40 && ids[rank].rank == (uint32_t)rank);
        CHECK(ids[rank].nranks == 2 && ids[rank].file_len > sizeof field);
        if (rank == 1) EXPECT(ckpt_finalize(), CKPT_OK);
    }
    CHECK(sizeof(ckpt_part_identity) == 40);
    EXPECT(ckpt_commit_step_parts(1, 40, NULL, 2), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_commit_step_parts(1, 40, ids, 1), CKPT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ckpt_last_error(), "2 ranks") != NULL);
    EXPECT(ckpt_commit_step_parts(1, 41, ids, 2), CKPT_ERR_INVALID_STATE); /* the parts hold step 40 */
    CHECK(strstr(ckpt_last_error(), "same step") != NULL);
    EXPECT(ckpt_commit_step_parts(1, -40, ids, 2), CKPT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ckpt_last_error(), "step -40 is negative") != NULL);
    ckpt_part_identity forged[2] = {ids[0], ids[1]};
    forged[1].step = -1;
    EXPECT(ckpt_commit_step_parts(1, 40, forged, 2), CKPT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ckpt_last_error(), "parts[1].step -1 is negative") != NULL);
    EXPECT(ckpt_commit_step(1, -40), CKPT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ckpt_last_error(), "step -40 is negative") != NULL);
    uint64_t gen = 9;
    EXPECT(ckpt_newest_valid_generation(UINT64_MAX, &gen), CKPT_OK);
    CHECK(gen == 0); /* nothing committed by the failed calls */
    EXPECT(ckpt_commit_step_parts(1, 40, ids, 2), CKPT_OK);
    EXPECT(ckpt_finish_step(1), CKPT_OK);
    EXPECT(ckpt_newest_valid_generation(UINT64_MAX, &gen), CKPT_OK);
    CHECK(gen == 1);
    for (int i = 0; i < 64; i++) field[i] = -1;
    int64_t step = 0;
    EXPECT(ckpt_select_generation(1, &step), CKPT_OK);
    EXPECT(ckpt_restart(&step), CKPT_OK);
    CHECK(step == 40 && field[0] == 0 && field[63] == 63);
    EXPECT(ckpt_finalize(), CKPT_OK);
    EXPECT(ckpt_set_rank(0, 1), CKPT_OK);
    EXPECT(ckpt_set_config("CKPT_DIR", dir), CKPT_OK);
}

static void named_regions(void) {
    /* Regions by name, mixed with one by number: the names are stored and a restart reads each region by
     * its name, whatever the order; a region the checkpoint lacks, or of another size, is refused with a
     * message that names it, and nothing is written. */
    char p[4200];
    path_in(p, sizeof p, "named");
    double e[8], pr[8], q[8];
    int64_t cycle = 0;
    size_t len = 7;
    EXPECT(ckpt_protect_named("e", e, sizeof e), CKPT_ERR_NOT_INITIALIZED);
    EXPECT(ckpt_set_config("CKPT_DIR", p), CKPT_OK);
    EXPECT(ckpt_init("named"), CKPT_OK);
    EXPECT(ckpt_protect_named(NULL, e, sizeof e), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_protect_named("e", NULL, sizeof e), CKPT_ERR_NULL_ARGUMENT);
    CHECK(strstr(ckpt_last_error(), "region \"e\"") != NULL);
    EXPECT(ckpt_protect_named("", e, sizeof e), CKPT_ERR_INVALID_ARGUMENT);
    EXPECT(ckpt_protect_named("an_identifier_that_is_much_longer_than_the_sixty_four_bytes_allowed", e, sizeof e),
           CKPT_ERR_INVALID_ARGUMENT);
    EXPECT(ckpt_protect_named("region.3", e, sizeof e), CKPT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ckpt_last_error(), "region number 3") != NULL);
    EXPECT(ckpt_unprotect_named(NULL), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_unprotect_named("e"), CKPT_ERR_UNKNOWN_REGION);
    CHECK(strstr(ckpt_last_error(), "region \"e\" is not protected") != NULL);
    EXPECT(ckpt_restart_size_named(NULL, &len), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_size_named("e", NULL), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_size_named("e", &len), CKPT_ERR_NO_CHECKPOINT);
    CHECK(len == 7);

    for (int i = 0; i < 8; i++) {
        e[i] = 1.0 + i;
        pr[i] = 100.0 + i;
    }
    cycle = 5;
    EXPECT(ckpt_protect(0, &cycle, sizeof cycle), CKPT_OK);
    EXPECT(ckpt_protect_named("e", e, sizeof e), CKPT_OK);
    EXPECT(ckpt_protect_named("p", pr, sizeof pr), CKPT_OK); /* the same size as "e" */
    EXPECT(ckpt_checkpoint(5), CKPT_OK);
    EXPECT(ckpt_finalize(), CKPT_OK);

    /* In another order: each region gets its own values back. */
    EXPECT(ckpt_init("named"), CKPT_OK);
    for (int i = 0; i < 8; i++) e[i] = pr[i] = q[i] = -1;
    cycle = -1;
    EXPECT(ckpt_protect_named("p", pr, sizeof pr), CKPT_OK);
    EXPECT(ckpt_protect_named("e", e, sizeof e), CKPT_OK);
    EXPECT(ckpt_protect(0, &cycle, sizeof cycle), CKPT_OK);
    EXPECT(ckpt_restart_size_named("e", &len), CKPT_OK);
    CHECK(len == sizeof e);
    EXPECT(ckpt_restart_size(0, &len), CKPT_OK);
    CHECK(len == sizeof cycle);
    int64_t step = -1;
    EXPECT(ckpt_restart(&step), CKPT_OK);
    CHECK(step == 5 && cycle == 5 && e[0] == 1.0 && e[7] == 8.0 && pr[0] == 100.0 && pr[7] == 107.0);

    /* A field inserted between two others (same type and size): refused, naming it; nothing written. */
    for (int i = 0; i < 8; i++) e[i] = pr[i] = q[i] = -1;
    cycle = -1;
    step = -1;
    EXPECT(ckpt_protect_named("q", q, sizeof q), CKPT_OK);
    EXPECT(ckpt_restart(&step), CKPT_ERR_SECTION_NOT_FOUND);
    CHECK(strstr(ckpt_last_error(), "named.ckpt") != NULL);
    CHECK(strstr(ckpt_last_error(), "region \"q\" is not in this checkpoint") != NULL);
    CHECK(strstr(ckpt_last_error(), "\"e\", \"p\" and 1 region(s) by number") != NULL);
    CHECK(step == -1 && cycle == -1 && e[0] == -1 && pr[0] == -1 && q[0] == -1);
    len = 7;
    EXPECT(ckpt_restart_size_named("q", &len), CKPT_ERR_SECTION_NOT_FOUND);
    CHECK(len == 7 && strstr(ckpt_last_error(), "region \"q\"") != NULL);
    EXPECT(ckpt_unprotect_named("q"), CKPT_OK);

    /* Another size: refused, naming the region and the call that gives its size. */
    EXPECT(ckpt_protect_named("e", e, 4 * sizeof(double)), CKPT_OK);
    EXPECT(ckpt_restart(&step), CKPT_ERR_SIZE_MISMATCH);
    CHECK(strstr(ckpt_last_error(), "region \"e\" holds 32 bytes but the checkpoint stored 64") != NULL);
    CHECK(strstr(ckpt_last_error(), "ckpt_restart_size_named") != NULL);
    CHECK(step == -1 && e[0] == -1 && pr[0] == -1);
    EXPECT(ckpt_protect_named("e", e, sizeof e), CKPT_OK); /* protecting a name again replaces it */
    EXPECT(ckpt_restart(&step), CKPT_OK);
    CHECK(step == 5 && e[3] == 4.0 && pr[3] == 103.0 && cycle == 5);
    EXPECT(ckpt_finalize(), CKPT_OK);
    EXPECT(ckpt_set_config("CKPT_DIR", dir), CKPT_OK);
}

static void async_checkpoints(void) {
    /* ckpt_checkpoint_async copies the regions and returns; the checkpoint holds them as they were at the
     * call, whatever the program writes next; one in flight at a time; ckpt_checkpoint_wait waits until it
     * is durable, with a cache level in the checkpoint directory. */
    char p[4200], cache[4300], stable[4400];
    path_in(p, sizeof p, "async");
    snprintf(cache, sizeof cache, "%s/cache", p);
    enum { N = 1 << 20 };
    double *a = malloc(N * sizeof *a);
    CHECK(a != NULL);
    int64_t cycle = 0;
    EXPECT(ckpt_checkpoint_async(1), CKPT_ERR_NOT_INITIALIZED);
    EXPECT(ckpt_checkpoint_wait(), CKPT_ERR_NOT_INITIALIZED);
    EXPECT(ckpt_set_config("CKPT_DIR", p), CKPT_OK);
    EXPECT(ckpt_init("async"), CKPT_OK);
    EXPECT(ckpt_protect(0, &cycle, sizeof cycle), CKPT_OK);
    EXPECT(ckpt_protect(1, a, N * sizeof *a), CKPT_OK);
    EXPECT(ckpt_checkpoint_wait(), CKPT_OK); /* none in flight */
    EXPECT(ckpt_checkpoint_async(-1), CKPT_ERR_INVALID_ARGUMENT);
    for (int k = 1; k <= 3; k++) {
        cycle = k;
        for (int i = 0; i < N; i++) a[i] = k * 10.0 + i;
        EXPECT(ckpt_checkpoint_async(k), CKPT_OK); /* the previous one is waited for first */
        cycle = -1;
        for (int i = 0; i < N; i++) a[i] = -1.0; /* not in the checkpoint */
    }
    EXPECT(ckpt_checkpoint_wait(), CKPT_OK);
    EXPECT(ckpt_request_checkpoint(1), CKPT_OK); /* what SIGTERM asks */
    CHECK(ckpt_should_checkpoint() == 1);
    EXPECT(ckpt_checkpoint_async(4), CKPT_OK);
    CHECK(ckpt_should_checkpoint() == 0); /* taken at the call */
    EXPECT(ckpt_checkpoint_wait(), CKPT_OK);
    CHECK(ckpt_should_exit() == 1);
    EXPECT(ckpt_finalize(), CKPT_OK);

    EXPECT(ckpt_init("async"), CKPT_OK);
    EXPECT(ckpt_protect(0, &cycle, sizeof cycle), CKPT_OK);
    EXPECT(ckpt_protect(1, a, N * sizeof *a), CKPT_OK);
    int64_t step = 0;
    EXPECT(ckpt_restart(&step), CKPT_OK);
    CHECK(step == 4 && cycle == -1 && a[0] == -1.0); /* step 4 saved the overwritten values */
    EXPECT(ckpt_finalize(), CKPT_OK);

    /* With a cache level the wait lasts until the copy in the checkpoint directory is durable. */
    EXPECT(ckpt_set_config("CKPT_CACHE_DIR", cache), CKPT_OK);
    EXPECT(ckpt_init("async"), CKPT_OK);
    EXPECT(ckpt_protect(0, &cycle, sizeof cycle), CKPT_OK);
    EXPECT(ckpt_protect(1, a, N * sizeof *a), CKPT_OK);
    cycle = 5;
    for (int i = 0; i < N; i++) a[i] = 50.0 + i;
    EXPECT(ckpt_checkpoint_async(5), CKPT_OK);
    EXPECT(ckpt_checkpoint_wait(), CKPT_OK);
    snprintf(stable, sizeof stable, "%s/async.ckpt.5", p); /* generation 5, copied from the cache */
    struct stat st;
    CHECK(stat(stable, &st) == 0 && (size_t)st.st_size > N * sizeof *a);
    EXPECT(ckpt_finalize(), CKPT_OK);
    EXPECT(ckpt_set_config("CKPT_CACHE_DIR", ""), CKPT_OK);
    EXPECT(ckpt_set_config("CKPT_DIR", dir), CKPT_OK);
    free(a);
}

static void restart_parts_errors(void) {
    /* Restart on another number of ranks, the error paths (the MPI heat test restarts a 4-rank step on 2
     * and 8 ranks): nothing before ckpt_init, NULL out-pointers, no step selected, no multi-rank step. */
    char p[4200];
    path_in(p, sizeof p, "reshape");
    uint32_t n = 7;
    double buf[4];
    size_t len = 9;
    CHECK(ckpt_has_cache_level() == 0);
    EXPECT(ckpt_restart_step(&n, NULL), CKPT_ERR_NOT_INITIALIZED);
    EXPECT(ckpt_set_config("CKPT_DIR", p), CKPT_OK);
    EXPECT(ckpt_init("reshape"), CKPT_OK);
    CHECK(ckpt_has_cache_level() == 0);
    EXPECT(ckpt_restart_step(NULL, NULL), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_part(0, 0, buf, sizeof buf), CKPT_ERR_INVALID_STATE);
    CHECK(strstr(ckpt_last_error(), "ckpt_restart_step") != NULL);
    EXPECT(ckpt_restart_part_size(0, 0, NULL), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_part_size(0, 0, &len), CKPT_ERR_INVALID_STATE);
    EXPECT(ckpt_restart_part_named(0, NULL, buf, sizeof buf), CKPT_ERR_NULL_ARGUMENT);
    EXPECT(ckpt_restart_step(&n, NULL), CKPT_ERR_NO_CHECKPOINT);
    CHECK(n == 7 && len == 9); /* out-parameters written only on success */
    EXPECT(ckpt_finalize(), CKPT_OK);
    EXPECT(ckpt_set_config("CKPT_DIR", dir), CKPT_OK);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", argv[1]);
    version_and_status();
    before_init();
    first_run();
    restart_run();
    direct_restart();
    restart_info();
    damaged();
    buffers();
    parts_by_identity();
    named_regions();
    async_checkpoints();
    restart_parts_errors();
    fresh_start_after_damage();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all C API checks passed\n");
    return 0;
}
