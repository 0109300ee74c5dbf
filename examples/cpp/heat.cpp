// heat.cpp: a 1-D heat solver in C++17 checkpointed through include/ckpt.hpp (LULESH-style state: several
// std::vector fields, scalars, a std::array of parameters and a raw buffer as a span).
//
//   c++ -std=c++17 -I$PREFIX/include heat.cpp -o heat -L$PREFIX/lib -lckpt -Wl,-rpath,$PREFIX/lib
//   ./heat [N [STEPS [DELAY_US [EVERY]]]]     # default 4096 2000 0 0; EVERY > 0: also checkpoint every EVERY steps
//
// Kill it at any moment (kill -USR1: checkpoint and continue; kill -TERM: checkpoint and stop) and run it
// again: it resumes from the newest checkpoint and prints the same "done" line as an uninterrupted run.
#include <ckpt.hpp>

#include <array>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

std::uint64_t fnv1a(const void *data, std::size_t len, std::uint64_t h = 1469598103934665603ULL) {
    const unsigned char *p = static_cast<const unsigned char *>(data);
    for (std::size_t i = 0; i < len; i++) {
        h = (h ^ p[i]) * 1099511628211ULL;
    }
    return h;
}

}  // namespace

int main(int argc, char **argv) {
    const std::size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 4096;
    const std::int64_t steps = argc > 2 ? std::strtoll(argv[2], nullptr, 10) : 2000;
    const long delay_us = argc > 3 ? std::strtol(argv[3], nullptr, 10) : 0;
    const std::int64_t every = argc > 4 ? std::strtoll(argv[4], nullptr, 10) : 0;
    try {
        ckpt::Session s("heat_cpp");
        std::vector<double> u, flux;              // sized on a first run, resized by restart() otherwise
        std::int64_t cycle = 0;
        double time = 0.0;
        std::array<double, 3> params{};           // alpha, dt, dx
        std::uint64_t history[8] = {0};           // a raw buffer: a span of 8 words
        s.protect("u", u);
        s.protect("flux", flux);
        s.protect("cycle", cycle);
        s.protect("time", time);
        s.protect("params", params);
        s.protect("history", history, 8);
        if (s.restart()) {
            std::printf("restarted at %" PRId64 " (%zu cells)\n", cycle, u.size());
        } else {
            u.assign(n, 0.0);
            flux.assign(n + 1, 0.0);
            for (std::size_t i = n / 4; i < n / 2; i++) u[i] = 100.0;
            params = {0.25, 1.0, 1.0};
        }
        std::fflush(stdout);
        while (cycle < steps) {
            const double k = params[0] * params[1] / (params[2] * params[2]);
            for (std::size_t i = 1; i < u.size(); i++) flux[i] = k * (u[i] - u[i - 1]);
            for (std::size_t i = 0; i < u.size(); i++) u[i] += flux[i + 1] - flux[i];
            time += params[1];
            cycle++;
            history[cycle % 8] = fnv1a(u.data(), u.size() * sizeof(double));
            if (delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
            if (s.should_checkpoint() || (every > 0 && cycle % every == 0)) {
                s.checkpoint(cycle);
                std::printf("checkpoint %" PRId64 "\n", cycle);
                std::fflush(stdout);
            }
            if (s.should_exit()) {
                std::printf("stopped at %" PRId64 "\n", cycle);
                return 0;
            }
        }
        std::uint64_t h = fnv1a(u.data(), u.size() * sizeof(double));
        h = fnv1a(history, sizeof history, h);
        h = fnv1a(&time, sizeof time, h);
        std::printf("done cycle %" PRId64 " time %.1f hash %016" PRIx64 "\n", cycle, time, h);
    } catch (const ckpt::error &e) {
        std::fprintf(stderr, "heat: %s (status %d)\n", e.what(), static_cast<int>(e.status()));
        return 1;
    }
    return 0;
}
