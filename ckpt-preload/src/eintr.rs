//! Checkpoints are invisible to the program's blocking calls (what DMTCP's wrappers do).
//!
//! The checkpoint handlers are installed with `SA_RESTART`, so the kernel restarts the calls it can
//! (`read`, `write`, `wait4`, `open` on a FIFO, ...). A few it never restarts after a handler ran, whatever
//! the flags (signal(7)): `poll`, `ppoll`, `select`, `pselect`, `epoll_wait`, `epoll_pwait`, `nanosleep`,
//! `clock_nanosleep` (and `sleep`/`usleep` built on it). For these the shim interposes libc's function:
//! when the call fails with EINTR and a signal the shim consumed (a checkpoint request, a timer, the
//! end-time answer: [`CONSUMED`] changed) arrived during it, the call is made again with the time that
//! was left, so the program never sees the checkpoint. An EINTR caused by a signal whose handler the
//! program installed is returned as usual. (Both arriving during the same call: the program's handler
//! ran, but the call goes on; a program that must notice its own signal checks a flag after the call,
//! which it has to do anyway because the signal may come just before the call.)
//!
//! The restorer returns into the checkpoint handler's signal frame, so a call interrupted by the
//! checkpoint resumes in the restarted process too, with the time left measured on `CLOCK_MONOTONIC`
//! (clamped to the original timeout).

use std::ffi::{c_int, c_uint};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Signals the shim's handler consumed without running a handler of the program (incremented in the
/// handler before the checkpoint, so the image holds the new value).
pub(crate) static CONSUMED: AtomicU64 = AtomicU64::new(0);

fn errno() -> i32 {
    // SAFETY: errno is thread-local and readable.
    unsafe { *libc::__errno_location() }
}

fn monotonic_ns() -> u64 {
    crate::sys::monotonic_ns()
}

/// `dlsym(RTLD_NEXT, name)`, cached in `slot`.
fn next(slot: &AtomicUsize, name: &std::ffi::CStr) -> usize {
    let p = slot.load(Ordering::Acquire);
    if p != 0 {
        return p;
    }
    // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds libc's definition after ours.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    slot.store(p, Ordering::Release);
    p
}

fn enosys<T>(v: T) -> T {
    // SAFETY: errno is thread-local and writable.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    v
}

/// Whether an EINTR failure came from the shim's own signals only (the call is then made again).
fn resume(before: u64, r: c_int) -> bool {
    r == -1 && errno() == libc::EINTR && CONSUMED.load(Ordering::Relaxed) != before
}

/// Milliseconds left of a `timeout_ms` that started at `t0` (negative: infinite).
fn left_ms(timeout_ms: c_int, t0: u64) -> c_int {
    if timeout_ms < 0 {
        return timeout_ms;
    }
    let spent = (monotonic_ns().saturating_sub(t0) / 1_000_000).min(timeout_ms as u64);
    timeout_ms - spent as c_int
}

/// The time left of `ts` (a relative timeout) that started at `t0`.
fn left_ts(ts: &libc::timespec, t0: u64) -> libc::timespec {
    let total = (ts.tv_sec.max(0) as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec.max(0) as u64);
    let left = total - monotonic_ns().saturating_sub(t0).min(total);
    libc::timespec { tv_sec: (left / 1_000_000_000) as i64, tv_nsec: (left % 1_000_000_000) as i64 }
}

static POLL: AtomicUsize = AtomicUsize::new(0);
static PPOLL: AtomicUsize = AtomicUsize::new(0);
static SELECT: AtomicUsize = AtomicUsize::new(0);
static PSELECT: AtomicUsize = AtomicUsize::new(0);
static EPOLL_WAIT: AtomicUsize = AtomicUsize::new(0);
static EPOLL_PWAIT: AtomicUsize = AtomicUsize::new(0);
static NANOSLEEP: AtomicUsize = AtomicUsize::new(0);
static CLOCK_NANOSLEEP: AtomicUsize = AtomicUsize::new(0);

type PollFn = unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int;
type PpollFn =
    unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, *const libc::timespec, *const libc::sigset_t) -> c_int;
type SelectFn =
    unsafe extern "C" fn(c_int, *mut libc::fd_set, *mut libc::fd_set, *mut libc::fd_set, *mut libc::timeval) -> c_int;
type PselectFn = unsafe extern "C" fn(
    c_int,
    *mut libc::fd_set,
    *mut libc::fd_set,
    *mut libc::fd_set,
    *const libc::timespec,
    *const libc::sigset_t,
) -> c_int;
type EpollWaitFn = unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int) -> c_int;
type EpollPwaitFn = unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int, *const libc::sigset_t) -> c_int;
type NanosleepFn = unsafe extern "C" fn(*const libc::timespec, *mut libc::timespec) -> c_int;
type ClockNanosleepFn =
    unsafe extern "C" fn(libc::clockid_t, c_int, *const libc::timespec, *mut libc::timespec) -> c_int;

/// `poll(2)`, resumed after a checkpoint.
///
/// # Safety
/// The contract of libc's `poll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    let p = next(&POLL, c"poll");
    if p == 0 {
        return enosys(-1);
    }
    // SAFETY: libc's poll.
    let real: PollFn = unsafe { std::mem::transmute::<usize, PollFn>(p) };
    let t0 = monotonic_ns();
    loop {
        let before = CONSUMED.load(Ordering::Relaxed);
        // SAFETY: forwarded contract.
        let r = unsafe { real(fds, n, left_ms(timeout, t0)) };
        if !resume(before, r) {
            return r;
        }
    }
}

/// `ppoll(2)`, resumed after a checkpoint.
///
/// # Safety
/// The contract of libc's `ppoll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    let p = next(&PPOLL, c"ppoll");
    if p == 0 {
        return enosys(-1);
    }
    // SAFETY: libc's ppoll.
    let real: PpollFn = unsafe { std::mem::transmute::<usize, PpollFn>(p) };
    let t0 = monotonic_ns();
    loop {
        let before = CONSUMED.load(Ordering::Relaxed);
        // SAFETY: a non-null timeout is a valid timespec (the caller's contract).
        let left = (!timeout.is_null()).then(|| left_ts(unsafe { &*timeout }, t0));
        let tp = left.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: forwarded contract; `tp` is null or a live timespec.
        let r = unsafe { real(fds, n, tp, mask) };
        if !resume(before, r) {
            return r;
        }
    }
}

/// `select(2)`, resumed after a checkpoint (Linux updates `timeout` to the time left, and leaves the
/// descriptor sets alone on EINTR).
///
/// # Safety
/// The contract of libc's `select`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    let p = next(&SELECT, c"select");
    if p == 0 {
        return enosys(-1);
    }
    // SAFETY: libc's select.
    let real: SelectFn = unsafe { std::mem::transmute::<usize, SelectFn>(p) };
    loop {
        let before = CONSUMED.load(Ordering::Relaxed);
        // SAFETY: forwarded contract.
        let rc = unsafe { real(nfds, r, w, e, timeout) };
        if !resume(before, rc) {
            return rc;
        }
    }
}

/// `pselect(2)`, resumed after a checkpoint.
///
/// # Safety
/// The contract of libc's `pselect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    let p = next(&PSELECT, c"pselect");
    if p == 0 {
        return enosys(-1);
    }
    // SAFETY: libc's pselect.
    let real: PselectFn = unsafe { std::mem::transmute::<usize, PselectFn>(p) };
    let t0 = monotonic_ns();
    loop {
        let before = CONSUMED.load(Ordering::Relaxed);
        // SAFETY: a non-null timeout is a valid timespec (the caller's contract).
        let left = (!timeout.is_null()).then(|| left_ts(unsafe { &*timeout }, t0));
        let tp = left.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: forwarded contract; `tp` is null or a live timespec.
        let rc = unsafe { real(nfds, r, w, e, tp, mask) };
        if !resume(before, rc) {
            return rc;
        }
    }
}

/// `epoll_wait(2)`, resumed after a checkpoint.
///
/// # Safety
/// The contract of libc's `epoll_wait`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_wait(epfd: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int {
    let p = next(&EPOLL_WAIT, c"epoll_wait");
    if p == 0 {
        return enosys(-1);
    }
    // SAFETY: libc's epoll_wait.
    let real: EpollWaitFn = unsafe { std::mem::transmute::<usize, EpollWaitFn>(p) };
    let t0 = monotonic_ns();
    loop {
        let before = CONSUMED.load(Ordering::Relaxed);
        // SAFETY: forwarded contract.
        let r = unsafe { real(epfd, ev, max, left_ms(timeout, t0)) };
        if !resume(before, r) {
            return r;
        }
    }
}

/// `epoll_pwait(2)`, resumed after a checkpoint.
///
/// # Safety
/// The contract of libc's `epoll_pwait`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    let p = next(&EPOLL_PWAIT, c"epoll_pwait");
    if p == 0 {
        return enosys(-1);
    }
    // SAFETY: libc's epoll_pwait.
    let real: EpollPwaitFn = unsafe { std::mem::transmute::<usize, EpollPwaitFn>(p) };
    let t0 = monotonic_ns();
    loop {
        let before = CONSUMED.load(Ordering::Relaxed);
        // SAFETY: forwarded contract.
        let r = unsafe { real(epfd, ev, max, left_ms(timeout, t0), mask) };
        if !resume(before, r) {
            return r;
        }
    }
}

/// `nanosleep(2)`, resumed after a checkpoint with the time the kernel reports as left.
///
/// # Safety
/// The contract of libc's `nanosleep`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nanosleep(req: *const libc::timespec, rem: *mut libc::timespec) -> c_int {
    let p = next(&NANOSLEEP, c"nanosleep");
    if p == 0 {
        return enosys(-1);
    }
    // SAFETY: libc's nanosleep.
    let real: NanosleepFn = unsafe { std::mem::transmute::<usize, NanosleepFn>(p) };
    if req.is_null() {
        // SAFETY: forwarded contract (libc reports EFAULT).
        return unsafe { real(req, rem) };
    }
    // SAFETY: `req` is a valid timespec (the caller's contract).
    let mut ask = unsafe { *req };
    loop {
        let before = CONSUMED.load(Ordering::Relaxed);
        let mut left = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: two live timespecs.
        let r = unsafe { real(&ask, &mut left) };
        if !resume(before, r) {
            if !rem.is_null() && r == -1 {
                // SAFETY: a non-null `rem` is writable (the caller's contract).
                unsafe { *rem = left };
            }
            return r;
        }
        ask = left;
    }
}

/// `clock_nanosleep(2)` (returns the error number), resumed after a checkpoint.
///
/// # Safety
/// The contract of libc's `clock_nanosleep`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: c_int,
    req: *const libc::timespec,
    rem: *mut libc::timespec,
) -> c_int {
    let p = next(&CLOCK_NANOSLEEP, c"clock_nanosleep");
    if p == 0 {
        return libc::ENOSYS;
    }
    let clock = crate::pid::current_clock(clock);
    // SAFETY: libc's clock_nanosleep.
    let real: ClockNanosleepFn = unsafe { std::mem::transmute::<usize, ClockNanosleepFn>(p) };
    if req.is_null() {
        // SAFETY: forwarded contract.
        return unsafe { real(clock, flags, req, rem) };
    }
    // SAFETY: `req` is a valid timespec (the caller's contract).
    let mut ask = unsafe { *req };
    loop {
        let before = CONSUMED.load(Ordering::Relaxed);
        let mut left = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: two live timespecs.
        let r = unsafe { real(clock, flags, &ask, &mut left) };
        if r != libc::EINTR || CONSUMED.load(Ordering::Relaxed) == before {
            if !rem.is_null() && r == libc::EINTR && flags & libc::TIMER_ABSTIME == 0 {
                // SAFETY: a non-null `rem` is writable (the caller's contract).
                unsafe { *rem = left };
            }
            return r;
        }
        if flags & libc::TIMER_ABSTIME == 0 {
            ask = left;
        }
    }
}

/// `sleep(3)` (glibc's calls nanosleep internally, past the interposer): through [`nanosleep`].
///
/// # Safety
/// None beyond libc's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sleep(seconds: c_uint) -> c_uint {
    let req = libc::timespec { tv_sec: seconds as i64, tv_nsec: 0 };
    let mut rem = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: two live timespecs.
    if unsafe { nanosleep(&req, &mut rem) } == -1 && errno() == libc::EINTR {
        // As glibc: the unslept seconds, rounded up.
        return (rem.tv_sec + i64::from(rem.tv_nsec > 0)) as c_uint;
    }
    0
}

/// `usleep(3)`: through [`nanosleep`].
///
/// # Safety
/// None beyond libc's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn usleep(usec: libc::useconds_t) -> c_int {
    let req = libc::timespec { tv_sec: (usec / 1_000_000) as i64, tv_nsec: (usec % 1_000_000) as i64 * 1000 };
    // SAFETY: a live timespec; no remainder wanted.
    unsafe { nanosleep(&req, std::ptr::null_mut()) }
}
