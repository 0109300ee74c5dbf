/* A setting given with ckpt_set_config reaches the code that uses it: CKPT_DIRECT_IO decides how the
 * checkpoint file is written. Usage: test_settings DIR VALUE. Saves a 32 MiB region with
 * CKPT_DIRECT_IO=VALUE set through ckpt_set_config (not the environment), then prints how many of the
 * committed file's pages are in the page cache ("resident R of N"): a buffered save leaves them there, a
 * direct one (O_DIRECT) does not. Also checks that a malformed value is refused at ckpt_init, naming the
 * variable. Exit status 0 when every check passes. */
#define _DEFAULT_SOURCE
#include "ckpt.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: REQUIRE(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, \
                    ckpt_last_error());                                                            \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_settings DIR VALUE\n");
        return 2;
    }
    REQUIRE(ckpt_set_config("CKPT_DIR", argv[1]) == CKPT_OK);
    REQUIRE(ckpt_set_config("CKPT_LOG", "off") == CKPT_OK);
    REQUIRE(ckpt_set_config("CKPT_SOCKET", "0") == CKPT_OK);
    REQUIRE(ckpt_set_config("CKPT_REUSE_SPACE", "0") == CKPT_OK);

    /* A typo is an error naming the variable, not "on". */
    REQUIRE(ckpt_set_config("CKPT_DIRECT_IO", "of") == CKPT_OK);
    REQUIRE(ckpt_init("settings") == CKPT_ERR_INVALID_ARGUMENT);
    REQUIRE(strstr(ckpt_last_error(), "CKPT_DIRECT_IO") != NULL);

    REQUIRE(ckpt_set_config("CKPT_DIRECT_IO", argv[2]) == CKPT_OK);
    REQUIRE(ckpt_init("settings") == CKPT_OK);
    size_t len = (size_t)32 << 20;
    unsigned char *region = malloc(len);
    REQUIRE(region != NULL);
    memset(region, 0x5a, len);
    REQUIRE(ckpt_protect(1, region, len) == CKPT_OK);
    REQUIRE(ckpt_checkpoint(7) == CKPT_OK);
    REQUIRE(ckpt_finalize() == CKPT_OK);
    free(region);

    char path[4096];
    snprintf(path, sizeof path, "%s/settings.ckpt", argv[1]);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    struct stat st;
    REQUIRE(fstat(fd, &st) == 0 && st.st_size > (off_t)len);
    size_t flen = (size_t)st.st_size;
    long page = sysconf(_SC_PAGESIZE);
    size_t pages = (flen + (size_t)page - 1) / (size_t)page;
    void *map = mmap(NULL, flen, PROT_READ, MAP_SHARED, fd, 0);
    REQUIRE(map != MAP_FAILED);
    unsigned char *vec = malloc(pages);
    REQUIRE(vec != NULL);
    REQUIRE(mincore(map, flen, vec) == 0);
    size_t resident = 0;
    for (size_t i = 0; i < pages; i++) resident += vec[i] & 1;
    printf("resident %zu of %zu\n", resident, pages);
    free(vec);
    munmap(map, flen);
    close(fd);
    return 0;
}
