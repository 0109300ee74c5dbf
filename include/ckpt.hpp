// ckpt.hpp: header-only C++17 interface to libckpt (over the C ABI of ckpt.h; link with -lckpt).
//
//   ckpt::Session s("lulesh");              // ckpt_init; ckpt_finalize when it goes out of scope
//   s.protect("e", e);                      // std::vector<T>&: resized to the checkpoint's length on restart
//   s.protect("cycle", cycle);              // a trivially copyable scalar or struct
//   s.protect("params", params);            // std::array<T, N>
//   s.protect("x", x_ptr, n);               // a span: pointer and element count (C++20: also std::span)
//   if (s.restart()) { ... }                // true when a checkpoint was restored (s.step() is its step)
//   while (...) {
//       ...
//       if (s.should_checkpoint()) s.checkpoint(cycle);
//       if (s.should_exit()) break;         // SIGTERM or the time limit, after the last checkpoint
//   }
//
// Every failure throws ckpt::error, which carries the C status code (status(), one of CKPT_ERR_*) and the
// library's message (what()), naming the region by the name given to protect. `CKPT_ERR_NO_CHECKPOINT`
// (a first run) is not an error: restart() returns false.
//
// Regions are protected by name (ckpt_protect_named): each is stored in the checkpoint under its name and
// restart() reads it back by that name, so protecting fields in another order, or a new field between two
// others, never loads one array into another of the same size; a region the checkpoint lacks is reported
// by name (checkpoints written by earlier versions of this header, which numbered the regions and listed
// their names in the metadata key "ckpt.hpp.regions", are read by name too). Names are 1 to 64 bytes.
// Vectors are protected again before every checkpoint, so they may be resized or reallocated between
// checkpoints. One Session per process (the C library's checkpointer is process-wide); ckpt_protect calls
// of your own, by number, can be mixed with it. Not for std::vector<bool> (it has no contiguous data).
#ifndef CKPT_HPP
#define CKPT_HPP

#include <ckpt.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__has_include)
#if __has_include(<version>)
#include <version>
#endif
#endif
#if defined(__cpp_lib_span) && __cpp_lib_span >= 202002L
#include <span>
#endif

namespace ckpt {

// A failed libckpt call: the status code (CKPT_ERR_*) and the message.
class error : public std::runtime_error {
public:
    error(std::int32_t status, const std::string &message) : std::runtime_error(message), status_(status) {}
    // The C status code, e.g. CKPT_ERR_CORRUPT.
    std::int32_t status() const noexcept { return status_; }

private:
    std::int32_t status_;
};

namespace detail {

inline void check(std::int32_t rc, const std::string &what) {
    if (rc < 0) {
        const char *m = ckpt_last_error();
        throw error(rc, what + ": " + ((m != nullptr && *m != '\0') ? m : ckpt_status_str(rc)));
    }
}

}  // namespace detail

class Session {
public:
    // ckpt_init(name): reads SLURM_* / CKPT_*, installs the signal handlers. `name` is the application
    // name outside Slurm (nullptr: CKPT_NAME, SLURM_JOB_NAME or "ckpt").
    explicit Session(const char *name = nullptr) { detail::check(ckpt_init(name), "ckpt_init"); }
    explicit Session(const std::string &name) : Session(name.c_str()) {}
    // ckpt_finalize (errors are ignored: a destructor does not throw).
    ~Session() { (void)ckpt_finalize(); }
    Session(const Session &) = delete;
    Session &operator=(const Session &) = delete;
    Session(Session &&) = delete;
    Session &operator=(Session &&) = delete;

    // A trivially copyable scalar or struct (an int, a double, a struct of them...).
    template <class T, std::enable_if_t<std::is_trivially_copyable_v<T> && !std::is_pointer_v<T>, int> = 0>
    void protect(const std::string &name, T &value) {
        add(name, [&value] { return std::make_pair(static_cast<void *>(&value), sizeof(T)); }, nullptr);
    }

    // A std::array of trivially copyable elements.
    template <class T, std::size_t N>
    void protect(const std::string &name, std::array<T, N> &a) {
        static_assert(std::is_trivially_copyable_v<T>, "ckpt::Session::protect: elements must be trivially copyable");
        add(name, [&a] { return std::make_pair(static_cast<void *>(a.data()), N * sizeof(T)); }, nullptr);
    }

    // A std::vector of trivially copyable elements: restart() resizes it to the checkpoint's length; it may
    // be resized or reallocated between checkpoints (checkpoint() protects it again).
    template <class T, class A>
    void protect(const std::string &name, std::vector<T, A> &v) {
        static_assert(std::is_trivially_copyable_v<T> && !std::is_same_v<T, bool>,
                      "ckpt::Session::protect: vector elements must be trivially copyable (not bool)");
        add(
            name, [&v] { return std::make_pair(static_cast<void *>(v.data()), v.size() * sizeof(T)); },
            [&v, name](std::size_t bytes) {
                if (bytes % sizeof(T) != 0) {
                    throw error(CKPT_ERR_SIZE_MISMATCH, "restart: region \"" + name + "\" holds " +
                                                            std::to_string(bytes) +
                                                            " bytes in the checkpoint, not a multiple of " +
                                                            std::to_string(sizeof(T)));
                }
                v.resize(bytes / sizeof(T));
            });
    }

    // A span: `count` elements at `data` (the memory stays valid until the Session ends).
    template <class T>
    void protect(const std::string &name, T *data, std::size_t count) {
        static_assert(std::is_trivially_copyable_v<T>, "ckpt::Session::protect: elements must be trivially copyable");
        if (data == nullptr && count != 0) {
            throw error(CKPT_ERR_NULL_ARGUMENT, "protect: region \"" + name + "\": null pointer with " +
                                                    std::to_string(count) + " elements");
        }
        add(name, [data, count] { return std::make_pair(static_cast<void *>(data), count * sizeof(T)); }, nullptr);
    }

#if defined(__cpp_lib_span) && __cpp_lib_span >= 202002L
    template <class T, std::size_t E>
    void protect(const std::string &name, std::span<T, E> s) {
        protect(name, s.data(), s.size());
    }
#endif

    // Restores every protected region from the newest valid checkpoint of this run. Returns false on a
    // first run (no checkpoint); throws ckpt::error when checkpoints exist but none can be used (damaged,
    // another user's, another run's), or when a region is missing from it (by name) or of another size.
    // Vectors are resized first.
    bool restart() {
        std::int32_t found = 0;
        std::int64_t step = 0;
        detail::check(ckpt_have_restart(&found, &step), "restart");
        if (found == 0) {
            return false;
        }
        for (Region &r : regions_) {
            std::size_t bytes = 0;
            detail::check(ckpt_restart_size_named(r.name.c_str(), &bytes), "restart");
            if (r.resize) {
                r.resize(bytes);
                register_region(r);
            } else if (bytes != r.view().second) {
                throw error(CKPT_ERR_SIZE_MISMATCH, "restart: region \"" + r.name + "\" holds " +
                                                        std::to_string(bytes) + " bytes in the checkpoint, " +
                                                        std::to_string(r.view().second) + " here");
            }
        }
        std::int32_t rc = ckpt_restart(&step);
        if (rc == CKPT_ERR_NO_CHECKPOINT) {
            return false;
        }
        detail::check(rc, "restart");
        step_ = step;
        return true;
    }

    // The step of the restored checkpoint (0 before restart() restored one).
    std::int64_t step() const noexcept { return step_; }

    // Writes every protected region durably as `step` (vectors protected again at their current size).
    void checkpoint(std::int64_t step) {
        for (Region &r : regions_) {
            if (r.resize) {
                register_region(r);
            }
        }
        detail::check(ckpt_checkpoint(step), "checkpoint at step " + std::to_string(step));
    }

    // True when a checkpoint is due (a signal, the interval, the time limit, a `ckpt create` request).
    bool should_checkpoint() const noexcept { return ckpt_should_checkpoint() == 1; }

    // True when the program should stop: its last checkpoint (SIGTERM, the time limit) is durable.
    bool should_exit() const noexcept { return ckpt_should_exit() == 1; }

private:
    struct Region {
        std::string name;
        std::function<std::pair<void *, std::size_t>()> view;
        std::function<void(std::size_t)> resize;  // vectors only
    };

    void add(const std::string &name, std::function<std::pair<void *, std::size_t>()> view,
             std::function<void(std::size_t)> resize) {
        for (Region &r : regions_) {
            if (r.name == name) {  // protecting a name again replaces it
                r.view = std::move(view);
                r.resize = std::move(resize);
                register_region(r);
                return;
            }
        }
        Region r{name, std::move(view), std::move(resize)};
        register_region(r);  // checks the name
        regions_.push_back(std::move(r));
    }

    static void register_region(Region &r) {
        std::pair<void *, std::size_t> v = r.view();
        detail::check(ckpt_protect_named(r.name.c_str(), v.second == 0 ? nullptr : v.first, v.second),
                      "protect \"" + r.name + "\"");
    }

    std::vector<Region> regions_;
    std::int64_t step_ = 0;
};

}  // namespace ckpt

#endif  // CKPT_HPP
