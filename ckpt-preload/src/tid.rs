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
//!
//! Each such call runs with every signal blocked ([`SignalsBlocked`]), so that no checkpoint is taken
//! inside it: a call interrupted by a checkpoint would go on after the restart with the tid it had read
//! (the previous incarnation's, in the TCB or in a register) and act on no thread, or on another one.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::TID_OFFSET;
use crate::sys::{SignalsBlocked, gettid};

/// Runs `f` with the kernel's tid in the TCB when `th` is the calling thread and the cached tid is the
/// checkpoint's (a restored process); otherwise just runs it. The caller blocks every signal first
/// ([`SignalsBlocked`]): a checkpoint inside `f` would leave the call, after the restart, with this
/// incarnation's tid.
fn with_kernel_tid<R>(th: libc::pthread_t, f: impl FnOnce() -> R) -> R {
    let off = TID_OFFSET.load(Ordering::Relaxed);
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    if th != me || off < 0 {
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

/// The kernel's tid of `th`, another thread of this restored process whose cached tid names it as it was
/// before a restart (pid.rs keeps the mapping); `None` when `th` is the caller, no restart happened, or
/// the cached tid is current.
fn restored_other(th: libc::pthread_t) -> Option<i32> {
    let off = TID_OFFSET.load(Ordering::Relaxed);
    // SAFETY: pthread_self has no preconditions.
    if off < 0 || th == unsafe { libc::pthread_self() } || th == 0 {
        return None;
    }
    // SAFETY: a pthread_t is glibc's struct pthread; the tid slot at TID_OFFSET is inside it.
    let cached = unsafe { std::ptr::read_volatile((th as usize + off as usize) as *const i32) };
    let now = crate::pid::current_tid(cached);
    (cached > 0 && now != cached).then_some(now)
}

/// `-errno` of a raw system call as a pthread error number (0 on success).
fn status(r: libc::c_long) -> c_int {
    if r < 0 {
        // SAFETY: errno is thread-local and readable.
        unsafe { *libc::__errno_location() }
    } else {
        0
    }
}

/// Defines `$name` for another restored thread (`$other`, given its kernel tid) and the calling thread
/// (libc's function with the kernel's tid in place, see [`with_kernel_tid`]).
macro_rules! interpose_both {
    ($name:ident, ($($arg:ident: $ty:ty),*), |$now:ident| $other:expr) => {
        #[doc = concat!("`", stringify!($name), "`, for the thread's current tid after a restart.")]
        ///
        /// # Safety
        /// The contract of libc's function of this name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(th: libc::pthread_t, $($arg: $ty),*) -> c_int {
            // The tid looked up and used in one incarnation, whichever thread it names: libc's function
            // reads another thread's cached tid too.
            let _blocked = SignalsBlocked::new();
            if let Some($now) = restored_other(th) {
                return $other;
            }
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

macro_rules! interpose {
    ($name:ident, ($($arg:ident: $ty:ty),*)) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(th: libc::pthread_t, $($arg: $ty),*) -> c_int {
            // As in `interpose_both`.
            let _blocked = SignalsBlocked::new();
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

// SAFETY (every block below): the raw system calls take the caller's pointers under the contract of the
// pthread function they implement, for the thread's current kernel tid.
interpose_both!(pthread_setaffinity_np, (size: libc::size_t, set: *const libc::cpu_set_t), |now| {
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    status(unsafe { libc::syscall(libc::SYS_sched_setaffinity, now, size, set) })
});
interpose_both!(pthread_getaffinity_np, (size: libc::size_t, set: *mut libc::cpu_set_t), |now| {
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    let r = unsafe { libc::syscall(libc::SYS_sched_getaffinity, now, size, set) };
    if r >= 0 && (r as usize) < size {
        // As glibc: the bytes the kernel did not write are zero.
        // SAFETY: the caller's pointers and values, under the contract of the pthread function.
        unsafe { std::ptr::write_bytes((set as *mut u8).add(r as usize), 0, size - r as usize) };
    }
    status(r)
});
interpose_both!(pthread_setschedparam, (policy: c_int, param: *const libc::sched_param), |now| {
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    status(unsafe { libc::syscall(libc::SYS_sched_setscheduler, now, policy, param) })
});
interpose_both!(pthread_getschedparam, (policy: *mut c_int, param: *mut libc::sched_param), |now| {
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    let r = unsafe { libc::syscall(libc::SYS_sched_getscheduler, now) };
    if r < 0 {
        return status(r);
    }
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    unsafe { *policy = r as c_int };
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    status(unsafe { libc::syscall(libc::SYS_sched_getparam, now, param) })
});
interpose_both!(pthread_setschedprio, (prio: c_int), |now| {
    let param = libc::sched_param { sched_priority: prio };
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    status(unsafe { libc::syscall(libc::SYS_sched_setparam, now, &param as *const libc::sched_param) })
});
interpose_both!(pthread_getcpuclockid, (clock: *mut libc::clockid_t), |now| {
    // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED), as glibc's.
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    unsafe { *clock = ((!now) << 3) | 6 };
    0
});
interpose_both!(pthread_sigqueue, (sig: c_int, value: *mut c_void), |now| {
    // The siginfo glibc's pthread_sigqueue builds: SI_QUEUE from this process and user.
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let words = &mut info as *mut libc::siginfo_t as *mut i32;
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    unsafe {
        *words = sig;
        *words.add(2) = -1; // SI_QUEUE
        *words.add(4) = libc::getpid();
        *words.add(5) = libc::getuid() as i32;
        *((words as *mut u8).add(24) as *mut *mut c_void) = value;
    }
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    status(unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, libc::getpid(), now, sig, &info as *const _) })
});
interpose!(pthread_getattr_np, (attr: *mut libc::pthread_attr_t));
interpose_both!(pthread_setname_np, (name: *const libc::c_char), |now| {
    // glibc writes /proc/self/task/<cached tid>/comm for another thread: use its current tid.
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    let len = unsafe { libc::strlen(name) };
    if len > 15 {
        return libc::ERANGE;
    }
    // SAFETY: the caller's pointers and values, under the contract of the pthread function.
    match std::fs::write(format!("/proc/self/task/{now}/comm"), unsafe { std::slice::from_raw_parts(name.cast::<u8>(), len) }) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
    }
});
interpose_both!(pthread_getname_np, (buf: *mut libc::c_char, len: libc::size_t), |now| {
    match std::fs::read(format!("/proc/self/task/{now}/comm")) {
        Ok(mut n) => {
            while n.last() == Some(&b'\n') {
                n.pop();
            }
            if n.len() >= len {
                return libc::ERANGE;
            }
            // SAFETY: the caller's pointers and values, under the contract of the pthread function.
            unsafe {
                std::ptr::copy_nonoverlapping(n.as_ptr(), buf.cast::<u8>(), n.len());
                *buf.add(n.len()) = 0;
            }
            0
        }
        Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
    }
});

/// `pthread_kill`: for another restored thread, the signal goes to its current tid (glibc would send it
/// to the tid it cached before the restart).
///
/// # Safety
/// The contract of libc's `pthread_kill`.
// SAFETY: the caller's pointers and values, under the contract of the pthread function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_kill(th: libc::pthread_t, sig: c_int) -> c_int {
    // As in `interpose_both`; a signal to the calling thread is delivered when the mask is set back,
    // before this returns.
    let _blocked = SignalsBlocked::new();
    if let Some(now) = restored_other(th) {
        // glibc's internal signals (SIGCANCEL, SIGSETXID) are not the program's to send.
        if sig == 32 || sig == 33 {
            return libc::EINVAL;
        }
        // SAFETY: tgkill to a thread of this process.
        return status(unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), now, sig) });
    }
    static REAL: AtomicUsize = AtomicUsize::new(0);
    let p = real(&REAL, b"pthread_kill\0");
    if p == 0 {
        return libc::ENOSYS;
    }
    // SAFETY: libc's pthread_kill.
    let f: unsafe extern "C" fn(libc::pthread_t, c_int) -> c_int = unsafe { std::mem::transmute(p) };
    // SAFETY: the caller's arguments.
    unsafe { f(th, sig) }
}
