//! The pids this process had before its restarts keep naming it.
//!
//! A restarted process has a new pid (this version does not virtualize pids: `getpid()` returns the
//! kernel's). A program may hold its earlier pid in memory, saved before the checkpoint: a CPU-time clock
//! id (`clock_getcpuclockid(getpid(), &id)` encodes the pid), or the pid itself to signal itself later.
//! Used after the restart, that value names whatever process has that pid now: reading the clock fails
//! with EINVAL, or silently reads another process's CPU time; `kill` signals another process. The calls
//! that take a pid or a CPU clock id are interposed here (`clock_nanosleep` in eintr.rs): a pid (or the main thread's tid) this process
//! had in an earlier incarnation is replaced by the current one. Every other value passes unchanged, and
//! the cost for them is one comparison.
//!
//! The restorer records the checkpoint-time pid in [`PAST_PIDS`] before it stores the new one.

use std::ffi::c_int;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use crate::sys::{getpid, gettid};

/// The pids of earlier incarnations (0: unused), oldest first; after more restarts than slots, the oldest
/// are forgotten (a program rarely keeps a pid that long; the newest ones matter most).
pub(crate) static PAST_PIDS: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];

/// Records `old` (the checkpoint-time pid) as an earlier pid of this process. Raw atomics only: called by
/// the restorer before libc is usable.
pub(crate) fn remember(old: i32) {
    if old <= 0 {
        return;
    }
    let n = PAST_PIDS.len();
    let mut i = 0;
    while i < n {
        let v = PAST_PIDS[i].load(Ordering::Relaxed);
        if v == old {
            return;
        }
        if v == 0 {
            PAST_PIDS[i].store(old, Ordering::Relaxed);
            return;
        }
        i += 1;
    }
    let mut i = 1;
    while i < n {
        PAST_PIDS[i - 1].store(PAST_PIDS[i].load(Ordering::Relaxed), Ordering::Relaxed);
        i += 1;
    }
    PAST_PIDS[n - 1].store(old, Ordering::Relaxed);
}

fn is_past(pid: i32) -> bool {
    pid > 0 && PAST_PIDS.iter().any(|p| p.load(Ordering::Relaxed) == pid)
}

/// `pid`, or this process's current pid when `pid` is one of its earlier ones.
pub(crate) fn current_pid(pid: i32) -> i32 {
    if is_past(pid) { getpid() } else { pid }
}

/// A CPU-time clock id (negative: `((~pid) << 3) | flags`, see clock_getcpuclockid(3) and the kernel's
/// posix-cpu-timers.h) naming an earlier pid of this process (or its main thread's earlier tid), rewritten
/// for the current one; any other clock id unchanged.
pub(crate) fn current_clock(clock: libc::clockid_t) -> libc::clockid_t {
    const PER_THREAD: libc::clockid_t = 4;
    const FLAGS: libc::clockid_t = 7;
    if clock >= 0 || PAST_PIDS[0].load(Ordering::Relaxed) == 0 {
        return clock;
    }
    let pid = !(clock >> 3);
    if !is_past(pid) {
        return clock;
    }
    let now = if clock & PER_THREAD != 0 { gettid() } else { getpid() };
    ((!now) << 3) | (clock & FLAGS)
}

/// libc's definition of `name` (NUL-terminated), found once with `dlsym(RTLD_NEXT)`.
fn real(cache: &AtomicUsize, name: &'static [u8]) -> usize {
    let mut p = cache.load(Ordering::Acquire);
    if p == 0 {
        // SAFETY: `name` is NUL-terminated; RTLD_NEXT finds the definition after ours.
        p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
        cache.store(p, Ordering::Release);
    }
    p
}

/// Defines `$name` with the first argument passed through `$map` and every other argument unchanged.
macro_rules! interpose_first {
    ($name:ident, $map:path, $first:ident: $fty:ty, ($($arg:ident: $ty:ty),*) -> $ret:ty, $missing:expr) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($first: $fty, $($arg: $ty),*) -> $ret {
            static REAL: AtomicUsize = AtomicUsize::new(0);
            let p = real(&REAL, concat!(stringify!($name), "\0").as_bytes());
            if p == 0 {
                return $missing;
            }
            // SAFETY: `p` is libc's function of this name and signature.
            let f: unsafe extern "C" fn($fty, $($ty),*) -> $ret = unsafe { std::mem::transmute(p) };
            // SAFETY: the caller's arguments, the first one naming this process now if it named it before.
            unsafe { f($map($first), $($arg),*) }
        }
    };
}

interpose_first!(clock_gettime, current_clock, clock: libc::clockid_t, (ts: *mut libc::timespec) -> c_int, -1);
interpose_first!(clock_getres, current_clock, clock: libc::clockid_t, (ts: *mut libc::timespec) -> c_int, -1);
interpose_first!(
    clock_getcpuclockid,
    current_pid,
    pid: libc::pid_t,
    (clock: *mut libc::clockid_t) -> c_int,
    libc::ENOSYS
);
interpose_first!(kill, current_pid, pid: libc::pid_t, (sig: c_int) -> c_int, -1);
interpose_first!(sigqueue, current_pid, pid: libc::pid_t, (sig: c_int, value: libc::sigval) -> c_int, -1);

/// `tgkill(tgid, tid, sig)`: both ids follow the process (the main thread's tid is its pid).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tgkill(tgid: libc::pid_t, tid: libc::pid_t, sig: c_int) -> c_int {
    let tid = if is_past(tid) { gettid() } else { tid };
    // SAFETY: the raw system call with the caller's signal.
    unsafe { libc::syscall(libc::SYS_tgkill, current_pid(tgid), tid, sig) as c_int }
}
