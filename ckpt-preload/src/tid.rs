//! The thread id glibc caches, after a restart.
//!
//! The restorer leaves the checkpoint's tid in the thread control block: glibc records it as the owner
//! of every mutex the thread locks (`__data.__owner`; the lock word itself for PI and robust mutexes) and
//! compares the two, so a mutex held across the checkpoint (the program's own, or the dynamic loader's
//! recursive `dl_load_lock`, held while `dlopen`/`dlsym` run) must keep seeing its owner. `gettid()`,
//! `raise()` and `pthread_kill` on the calling thread ask the kernel. The few pthread calls that hand the
//! cached tid of a thread to the kernel (affinity, scheduling, its CPU clock, `pthread_sigqueue`,
//! `pthread_getattr_np`'s affinity) are interposed here: called on the calling thread of a restored
//! process, they run with the kernel's tid in the TCB for the duration of the call, so they act on this
//! thread and never on whichever thread now has the old id.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::TID_OFFSET;
use crate::sys::gettid;

/// Runs `f` with the kernel's tid in the TCB when `th` is the calling thread and the cached tid is the
/// checkpoint's (a restored process); otherwise just runs it.
fn with_kernel_tid<R>(th: libc::pthread_t, f: impl FnOnce() -> R) -> R {
    let off = TID_OFFSET.load(Ordering::Relaxed);
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    if off < 0 || th != me {
        return f();
    }
    let slot = (me as usize + off as usize) as *mut i32;
    let now = gettid();
    // SAFETY: pthread_self is the TCB (struct pthread) on x86_64 glibc; the tid slot at TID_OFFSET is inside
    // it (found by the constructor) and only this thread writes it.
    let cached = unsafe { std::ptr::read_volatile(slot) };
    if cached == now {
        return f();
    }
    // SAFETY: as above.
    unsafe { std::ptr::write_volatile(slot, now) };
    let r = f();
    // SAFETY: as above.
    unsafe { std::ptr::write_volatile(slot, cached) };
    r
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

macro_rules! interpose {
    ($name:ident, ($($arg:ident: $ty:ty),*)) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(th: libc::pthread_t, $($arg: $ty),*) -> c_int {
            static REAL: AtomicUsize = AtomicUsize::new(0);
            let p = real(&REAL, concat!(stringify!($name), "\0").as_bytes());
            if p == 0 {
                return libc::ENOSYS;
            }
            // SAFETY: `p` is libc's function of this name and signature.
            let f: unsafe extern "C" fn(libc::pthread_t, $($ty),*) -> c_int = unsafe { std::mem::transmute(p) };
            // SAFETY: the caller's arguments, passed on unchanged.
            with_kernel_tid(th, || unsafe { f(th, $($arg),*) })
        }
    };
}

interpose!(pthread_setaffinity_np, (size: libc::size_t, set: *const libc::cpu_set_t));
interpose!(pthread_getaffinity_np, (size: libc::size_t, set: *mut libc::cpu_set_t));
interpose!(pthread_setschedparam, (policy: c_int, param: *const libc::sched_param));
interpose!(pthread_getschedparam, (policy: *mut c_int, param: *mut libc::sched_param));
interpose!(pthread_setschedprio, (prio: c_int));
interpose!(pthread_getcpuclockid, (clock: *mut libc::clockid_t));
interpose!(pthread_sigqueue, (sig: c_int, value: *mut c_void));
interpose!(pthread_getattr_np, (attr: *mut libc::pthread_attr_t));
