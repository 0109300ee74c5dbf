//! Every thread of the program stopped at once for a checkpoint, and what the image needs of each.
//!
//! The thread that takes a checkpoint request (any thread: the kernel delivers a process-directed signal
//! to one that does not block it) becomes the *coordinator*. It sends the shim's park signal
//! ([`PARK_SIGNAL`], SIGRTMAX-4, hidden from the program like the checkpoint signals) to every other
//! thread listed in `/proc/self/task` and waits until each one is in the park handler, listing again
//! until no new thread appears (a thread being created starts with every signal blocked and parks as soon
//! as it unblocks them). A parked thread records where its registers are (the signal frame the kernel
//! pushed on its stack, which holds its registers, FPU state, signal mask and alternate stack), its
//! thread pointer and its robust-futex list, then waits on a futex. The whole address space is then
//! frozen: the coordinator forks the writer, which saves one memory image holding every thread's
//! stack and frame, and releases the threads (or, for checkpoint-and-exit, the process ends).
//!
//! Interrupted system calls behave as they do for any signal with `SA_RESTART`: restarted, or (timed
//! waits, sleeps) resumed by the interposers of `eintr`, or returned as EINTR where the kernel never
//! restarts them (glibc's futex waits take that as a spurious wakeup).
//!
//! Everything here runs in signal handlers: raw system calls and static memory only.

use std::ffi::c_int;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};

use crate::Shared;
use crate::sys::*;

/// The signal that parks a thread (SIGRTMAX-4). Reserved like the checkpoint signals: the program's
/// `sigaction` on it is recorded and never given to the kernel, and its masks never block it.
pub(crate) const PARK_SIGNAL: c_int = 60;
/// Most threads a checkpoint records; a process with more is refused.
pub(crate) const MAX_THREADS: usize = 512;
/// How long the coordinator waits for every thread to stop.
const STOP_TIMEOUT_NS: u64 = 2_000_000_000;

/// One stopped thread.
#[derive(Clone, Copy, Default)]
pub(crate) struct ThreadSnap {
    /// Its kernel thread id at checkpoint time.
    pub tid: i32,
    /// Its thread pointer (FS base: glibc's `struct pthread`).
    pub fs_base: u64,
    /// The `ucontext_t` of the signal frame that stopped it (on its stack).
    pub ucontext: u64,
    /// `get_robust_list`: the head glibc registered, and its length.
    pub robust_head: u64,
    pub robust_len: u64,
}

/// The threads of the checkpoint in progress (the coordinator's included), in the order they stopped.
pub(crate) static SLOTS: Shared<[ThreadSnap; MAX_THREADS]> =
    Shared::new([ThreadSnap { tid: 0, fs_base: 0, ucontext: 0, robust_head: 0, robust_len: 0 }; MAX_THREADS]);
/// How many of [`SLOTS`] are filled.
pub(crate) static NSLOTS: AtomicUsize = AtomicUsize::new(0);
/// Threads parked so far (a futex word the coordinator waits on).
static PARKED: AtomicU32 = AtomicU32::new(0);
/// Incremented to release the parked threads (a futex word they wait on).
static RELEASE: AtomicU32 = AtomicU32::new(0);
/// The coordinating thread's tid while a checkpoint stops the others (0: none).
static COORDINATOR: AtomicI32 = AtomicI32::new(0);

fn futex_wait(word: &AtomicU32, expected: u32, timeout_ns: u64) {
    let ts = [(timeout_ns / 1_000_000_000) as i64, (timeout_ns % 1_000_000_000) as i64];
    // SAFETY: FUTEX_WAIT_PRIVATE on a live atomic; the timeout is a valid relative timespec.
    unsafe {
        syscall6(
            libc::SYS_futex,
            word.as_ptr() as usize,
            (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as usize,
            expected as usize,
            if timeout_ns == 0 { 0 } else { ts.as_ptr() as usize },
            0,
            0,
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE_PRIVATE on a live atomic.
    unsafe {
        syscall6(
            libc::SYS_futex,
            word.as_ptr() as usize,
            (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as usize,
            i32::MAX as usize,
            0,
            0,
            0,
        )
    };
}

/// Records the calling thread, stopped by the signal frame `ucontext`.
pub(crate) fn record_self(ucontext: usize) {
    let mut fs = 0u64;
    let (mut head, mut len) = (0u64, 0u64);
    // SAFETY: ARCH_GET_FS and get_robust_list(0) write into the locals.
    unsafe {
        syscall3(SYS_arch_prctl, ARCH_GET_FS as usize, &mut fs as *mut u64 as usize, 0);
        syscall3(libc::SYS_get_robust_list, 0, &mut head as *mut u64 as usize, &mut len as *mut u64 as usize);
    }
    let i = NSLOTS.fetch_add(1, Ordering::AcqRel);
    if i < MAX_THREADS {
        // SAFETY: slot `i` was claimed by the fetch_add above: only this thread writes it.
        unsafe {
            (*SLOTS.get())[i] =
                ThreadSnap { tid: gettid(), fs_base: fs, ucontext: ucontext as u64, robust_head: head, robust_len: len }
        };
    }
}

/// The park signal's handler: record this thread, tell the coordinator, wait to be released. Returns at
/// once when no checkpoint is stopping the threads (a park signal left over from an earlier one).
pub(crate) fn park(ucontext: usize) {
    let coordinator = COORDINATOR.load(Ordering::Acquire);
    if coordinator == 0 {
        return;
    }
    let generation = RELEASE.load(Ordering::Acquire);
    record_self(ucontext);
    PARKED.fetch_add(1, Ordering::AcqRel);
    futex_wake(&PARKED);
    // Until released; also when the coordination ended without this thread being counted (it parked
    // itself just as the coordinator released the others).
    while RELEASE.load(Ordering::Acquire) == generation && COORDINATOR.load(Ordering::Acquire) == coordinator {
        futex_wait(&RELEASE, generation, 50_000_000);
    }
}

/// Why the other threads could not be stopped.
pub(crate) enum StopError {
    /// Another thread is coordinating a checkpoint right now.
    Busy,
    /// A message for the refusal.
    Refused(&'static [u8], i32),
}

/// Stops every other thread of the process (the caller's frame is `ucontext`) and records them all in
/// [`SLOTS`]. On success the caller must call [`release`] (also after a failed checkpoint).
pub(crate) fn stop_others(ucontext: usize) -> Result<usize, StopError> {
    let me = gettid();
    if COORDINATOR.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return Err(StopError::Busy);
    }
    // NSLOTS and PARKED are 0 here (reset by the last `release`): a thread that parked itself between the
    // compare-exchange and now (a second request, see `StopError::Busy`) is already counted.
    record_self(ucontext);
    let pid = getpid();
    let mut signaled = [0i32; MAX_THREADS];
    let mut nsignaled = 0usize;
    let mut buf = [0u8; 4096];
    let start = monotonic_ns();
    loop {
        // Signal every thread not signaled yet; count those still listed.
        let mut fresh = 0usize;
        let mut alive = 0u32;
        let mut overflow = false;
        crate::for_each_dir_entry(b"/proc/self/task\0", &mut buf, |name| {
            let tid = parse_i32(name);
            if tid <= 0 || tid == me {
                return;
            }
            if signaled[..nsignaled].contains(&tid) {
                alive += 1;
                return;
            }
            if nsignaled + 1 >= MAX_THREADS {
                overflow = true;
                return;
            }
            // SAFETY: tgkill to a thread of this process.
            let r = unsafe { syscall3(SYS_tgkill, pid as usize, tid as usize, PARK_SIGNAL as usize) };
            if r == 0 {
                signaled[nsignaled] = tid;
                nsignaled += 1;
                fresh += 1;
                alive += 1;
            }
        });
        if overflow {
            release();
            return Err(StopError::Refused(b"more threads than a checkpoint records (512)", 0));
        }
        let parked = PARKED.load(Ordering::Acquire);
        if fresh == 0 && parked >= alive {
            // Every listed thread parked, and a second listing found no new one.
            return Ok(NSLOTS.load(Ordering::Acquire).min(MAX_THREADS));
        }
        if monotonic_ns() - start > STOP_TIMEOUT_NS {
            // The first signaled thread that has not parked, for the message.
            // SAFETY: the slots of parked threads are written before PARKED counts them.
            let slots = unsafe { &*SLOTS.get() };
            let n = NSLOTS.load(Ordering::Acquire).min(MAX_THREADS);
            let stuck = signaled[..nsignaled].iter().copied().find(|t| !slots[..n].iter().any(|s| s.tid == *t));
            release();
            return Err(StopError::Refused(b"a thread did not stop within 2 s (tid ", stuck.unwrap_or(0)));
        }
        futex_wait(&PARKED, parked, 2_000_000);
    }
}

/// Lets the parked threads go on and ends the coordination (the writer has its copy of the slots).
pub(crate) fn release() {
    NSLOTS.store(0, Ordering::Release);
    PARKED.store(0, Ordering::Release);
    RELEASE.fetch_add(1, Ordering::AcqRel);
    futex_wake(&RELEASE);
    COORDINATOR.store(0, Ordering::Release);
}

/// In a restored process (its memory is the checkpoint's, taken while a coordination was under way): no
/// thread coordinates and none is parked. Raw atomics only: called by the restorer.
pub(crate) fn reset_after_restore() {
    NSLOTS.store(0, Ordering::Relaxed);
    PARKED.store(0, Ordering::Relaxed);
    COORDINATOR.store(0, Ordering::Relaxed);
}

fn parse_i32(s: &[u8]) -> i32 {
    let mut v: i32 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return -1;
        }
        v = v.saturating_mul(10).saturating_add((b - b'0') as i32);
    }
    v
}
