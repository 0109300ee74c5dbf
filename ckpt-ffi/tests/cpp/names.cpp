// names.cpp: ckpt.hpp's checks at restart (ckpt-ffi/tests/cpp.rs). Modes:
//   save      protects vectors "a" (3 doubles), "b" (3 doubles) and an int "n"; checkpoints at step 7
//   swapped   protects "b" before "a": restart reads each by its name all the same
//   renamed   protects "c" instead of "b" (same type and size): restart must refuse, naming region "c"
//   size      protects "n" as a double: restart must refuse with CKPT_ERR_SIZE_MISMATCH, naming "n"
//   resume    as save, with empty vectors: restart resizes them and restores the values
//   oldsave   writes what the header wrote before named regions (ids 0, 1, 2 and the names in the
//             metadata key "ckpt.hpp.regions"), through the C API: resume must read it by name
#include <ckpt.hpp>

#include <cstdio>
#include <cstring>
#include <vector>

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "save";
    if (std::strcmp(mode, "oldsave") == 0) {
        double a[3] = {1, 2, 3}, b[3] = {4, 5, 6};
        int n = 42;
        bool ok = ckpt_init("names") == CKPT_OK && ckpt_protect(0, a, sizeof a) == CKPT_OK &&
                  ckpt_protect(1, b, sizeof b) == CKPT_OK && ckpt_protect(2, &n, sizeof n) == CKPT_OK &&
                  ckpt_set_metadata("ckpt.hpp.regions", "a\nb\nn\n") == CKPT_OK && ckpt_checkpoint(7) == CKPT_OK &&
                  ckpt_finalize() == CKPT_OK;
        std::printf(ok ? "saved\n" : "failed: %s\n", ckpt_last_error());
        return ok ? 0 : 1;
    }
    try {
        ckpt::Session s("names");
        std::vector<double> a, b;
        int n = 0;
        double n_wide = 0;
        if (std::strcmp(mode, "swapped") == 0) {
            s.protect("b", b);
            s.protect("a", a);
        } else if (std::strcmp(mode, "renamed") == 0) {
            s.protect("a", a);
            s.protect("c", b);
        } else {
            s.protect("a", a);
            s.protect("b", b);
        }
        if (std::strcmp(mode, "size") == 0) {
            s.protect("n", n_wide);
        } else {
            s.protect("n", n);
        }
        if (std::strcmp(mode, "save") == 0) {
            a = {1, 2, 3};
            b = {4, 5, 6};
            n = 42;
            s.checkpoint(7);
            std::printf("saved\n");
            return 0;
        }
        bool restored = s.restart();
        std::printf("restored=%d step=%lld a=%zu:%g,%g,%g b=%zu:%g,%g,%g n=%d\n", restored ? 1 : 0,
                    static_cast<long long>(s.step()), a.size(), a.empty() ? 0 : a[0], a.size() > 1 ? a[1] : 0,
                    a.size() > 2 ? a[2] : 0, b.size(), b.empty() ? 0 : b[0], b.size() > 1 ? b[1] : 0,
                    b.size() > 2 ? b[2] : 0, n);
    } catch (const ckpt::error &e) {
        std::printf("error %d: %s\n", static_cast<int>(e.status()), e.what());
        return 3;
    }
    return 0;
}
