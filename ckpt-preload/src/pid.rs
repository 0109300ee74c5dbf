//! The pids (and process groups) this process had before its restarts keep naming it.
//!
//! A restarted process has a new pid (this version does not virtualize pids: `getpid()` returns the
//! kernel's). A program may hold its earlier pid in memory, saved before the checkpoint: a CPU-time clock
//! id (`clock_getcpuclockid(getpid(), &id)` encodes the pid), or the pid itself to signal itself later.
//! Used after the restart, that value names whatever process has that pid now: reading the clock fails
//! with EINVAL, or silently reads another process's CPU time; `kill` signals another process. The calls
//! that take a pid or a CPU clock id are interposed here (`clock_nanosleep` in eintr.rs): a pid (or the main thread's tid) this process
//! had in an earlier incarnation is replaced by the current one. Every other value passes unchanged, and
//! the cost for them is one comparison. An id that may name this process (a pid above 0, a clock id that
//! encodes one) is looked up and used with every signal blocked (`sys::SignalsBlocked`, two system calls):
//! a checkpoint in between would resume the call, after the restart, with the previous incarnation's pid.
//!
//! The restorer records the checkpoint-time pid in [`PAST_PIDS`] before it stores the new one.
//!
//! Process groups likewise: a group the program took before a restart (`getpgrp()`, bash's `-$$`) names
//! the group the restore put it in, in `kill(-pgid)`, `killpg`, `wait*(-pgid)` and `waitid(P_PGID)`. That
//! look-up reads atomics only (no system call, so no checkpoint signal can be delivered between it and
//! the call it feeds).

use std::ffi::c_int;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use crate::sys::getpid;

/// The pids of earlier incarnations (0: unused), oldest first; after more restarts than slots, the oldest
/// are forgotten (a program rarely keeps a pid that long; the newest ones matter most).
pub(crate) static PAST_PIDS: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];

/// Records `old` (the checkpoint-time pid) as an earlier pid of this process. Raw atomics only: called by
/// the restorer before libc is usable.
pub(crate) fn remember(old: i32) {
    remember_in(&PAST_PIDS, old);
}

/// The process groups of earlier incarnations (0: unused), oldest first, as [`PAST_PIDS`].
static PAST_GROUPS: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];
/// The process group this process was given at its last restore: what an earlier group now means.
static GROUP_NOW: AtomicI32 = AtomicI32::new(0);

/// Records `old` (the checkpoint-time process group, 0 when the image does not say) as an earlier group
/// of this process, which is in group `now` after the restore. An earlier group keeps naming the group
/// the restore put the process in (`ckpt restart` makes the program lead a group of its own again when
/// it led one), also after the program moves to another group itself. Raw atomics only (the restorer).
pub(crate) fn remember_group(old: i32, now: i32) {
    if old > 0 && now > 0 {
        remember_in(&PAST_GROUPS, old);
        GROUP_NOW.store(now, Ordering::Relaxed);
    }
}

/// Whether `group` is a process group of an earlier incarnation of this process.
pub(crate) fn is_past_group(group: i32) -> bool {
    group > 0 && PAST_GROUPS.iter().any(|g| g.load(Ordering::Relaxed) == group)
}

/// `group`, or the group given to this process at its last restore when `group` is an earlier one. Reads
/// atomics only, no system call: a checkpoint signal is delivered when a system call returns, and one
/// between this look-up and the call that uses its result would resume that call with the previous
/// incarnation's group.
fn current_group(group: i32) -> i32 {
    if is_past_group(group) { GROUP_NOW.load(Ordering::Relaxed) } else { group }
}

/// A pid argument of `kill` or `wait*` made current: a pid (`> 0`) as [`current_pid`] or [`peer_now`]
/// does, a process group (`< -1`, as `-pgid`) as [`current_group`] does; 0 and -1 unchanged.
fn current_target(pid: i32, pid_now: fn(i32) -> i32) -> i32 {
    if pid > 0 {
        pid_now(pid)
    } else if pid < -1 {
        -current_group(pid.wrapping_neg())
    } else {
        pid
    }
}

/// A table of earlier ids: adds `old` unless present, forgetting the oldest when full.
fn remember_in(table: &[AtomicI32], old: i32) {
    if old <= 0 {
        return;
    }
    let n = table.len();
    let mut i = 0;
    while i < n {
        let v = table[i].load(Ordering::Relaxed);
        if v == old {
            return;
        }
        if v == 0 {
            table[i].store(old, Ordering::Relaxed);
            return;
        }
        i += 1;
    }
    let mut i = 1;
    while i < n {
        table[i - 1].store(table[i].load(Ordering::Relaxed), Ordering::Relaxed);
        i += 1;
    }
    table[n - 1].store(old, Ordering::Relaxed);
}

/// The other processes of a restored process tree (its parent, its children): the pid the program knows
/// (the first run's) and the pid now. The program keeps the pids `fork` gave it (its `waitpid(pid)`,
/// `kill(pid)`, a shell's job table): those are made current where they are handed to the kernel, and
/// pids the kernel returns (`wait`, `getppid`) are given back as the program knows them. Written by the
/// restorer only (single-threaded then).
const MAX_PEERS: usize = 128;
static PEER_THEN: [AtomicI32; MAX_PEERS] = [const { AtomicI32::new(0) }; MAX_PEERS];
static PEER_NOW: [AtomicI32; MAX_PEERS] = [const { AtomicI32::new(0) }; MAX_PEERS];

/// Records that the process with checkpoint-time pid `then` is `now` (raw atomics: the restorer calls
/// it). Entries whose current pid was `then` (the pid a first run's child had before an earlier restart)
/// follow it to `now`.
pub(crate) fn remember_peer(then: i32, now: i32) {
    if then <= 0 || now <= 0 {
        return;
    }
    let mut found = false;
    let mut free = MAX_PEERS;
    let mut i = 0;
    while i < MAX_PEERS {
        let t = PEER_THEN[i].load(Ordering::Relaxed);
        if t == 0 {
            if free == MAX_PEERS {
                free = i;
            }
        } else if PEER_NOW[i].load(Ordering::Relaxed) == then {
            PEER_NOW[i].store(now, Ordering::Relaxed);
            found |= t == then;
        } else if t == then {
            PEER_NOW[i].store(now, Ordering::Relaxed);
            found = true;
        }
        i += 1;
    }
    if !found && free < MAX_PEERS {
        PEER_THEN[free].store(then, Ordering::Relaxed);
        PEER_NOW[free].store(now, Ordering::Relaxed);
    }
}

/// The current pid of the tree process the program knows as `pid` (`pid` itself otherwise).
fn peer_now(pid: i32) -> i32 {
    if pid <= 0 || PEER_THEN[0].load(Ordering::Relaxed) == 0 {
        return pid;
    }
    PEER_THEN.iter().position(|t| t.load(Ordering::Relaxed) == pid).map_or(pid, |i| PEER_NOW[i].load(Ordering::Relaxed))
}

/// The pid the program knows for the tree process that is `pid` now (`pid` itself otherwise).
fn peer_then(pid: i32) -> i32 {
    if pid <= 0 || PEER_THEN[0].load(Ordering::Relaxed) == 0 {
        return pid;
    }
    PEER_NOW.iter().position(|n| n.load(Ordering::Relaxed) == pid).map_or(pid, |i| PEER_THEN[i].load(Ordering::Relaxed))
}

fn is_past(pid: i32) -> bool {
    pid > 0 && PAST_PIDS.iter().any(|p| p.load(Ordering::Relaxed) == pid)
}

/// Tids of threads of earlier incarnations (what the program may hold: glibc's cached tid, which the
/// restorer leaves at the first run's, and `gettid()` results) and the tid of the same thread now.
/// Entries with `TID_FROM` 0 are unused. Written by the restorer only (single-threaded then).
const MAX_MAPPED: usize = 2048;
static TID_FROM: [AtomicI32; MAX_MAPPED] = [const { AtomicI32::new(0) }; MAX_MAPPED];
static TID_TO: [AtomicI32; MAX_MAPPED] = [const { AtomicI32::new(0) }; MAX_MAPPED];
static TID_SEEN: [AtomicI32; MAX_MAPPED] = [const { AtomicI32::new(0) }; MAX_MAPPED];

/// Starts recording the threads of a restore: entries not confirmed by [`map_thread`] before
/// [`end_thread_map`] name threads that no longer exist and are dropped.
pub(crate) fn begin_thread_map() {
    let mut i = 0;
    while i < MAX_MAPPED {
        TID_SEEN[i].store(0, Ordering::Relaxed);
        i += 1;
    }
}

/// The thread whose tid was `at_checkpoint` (and whose control block caches `cached`) is `now`.
pub(crate) fn map_thread(at_checkpoint: i32, cached: i32, now: i32) {
    let mut i = 0;
    while i < MAX_MAPPED {
        if TID_FROM[i].load(Ordering::Relaxed) != 0 && TID_TO[i].load(Ordering::Relaxed) == at_checkpoint {
            TID_TO[i].store(now, Ordering::Relaxed);
            TID_SEEN[i].store(1, Ordering::Relaxed);
        }
        i += 1;
    }
    add_mapping(at_checkpoint, now);
    add_mapping(cached, now);
}

fn add_mapping(from: i32, to: i32) {
    if from <= 0 || from == to {
        return;
    }
    let mut free = MAX_MAPPED;
    let mut i = 0;
    while i < MAX_MAPPED {
        let f = TID_FROM[i].load(Ordering::Relaxed);
        if f == from {
            TID_TO[i].store(to, Ordering::Relaxed);
            TID_SEEN[i].store(1, Ordering::Relaxed);
            return;
        }
        if f == 0 && free == MAX_MAPPED {
            free = i;
        }
        i += 1;
    }
    if free < MAX_MAPPED {
        TID_TO[free].store(to, Ordering::Relaxed);
        TID_SEEN[free].store(1, Ordering::Relaxed);
        TID_FROM[free].store(from, Ordering::Relaxed);
    }
}

/// Drops the entries of threads that did not come back (see [`begin_thread_map`]).
pub(crate) fn end_thread_map() {
    let mut i = 0;
    while i < MAX_MAPPED {
        if TID_SEEN[i].load(Ordering::Relaxed) == 0 {
            TID_FROM[i].store(0, Ordering::Relaxed);
        }
        i += 1;
    }
}

/// The current tid of the thread `tid` names: the main thread for an earlier pid, a restored thread for
/// a tid it had before a restart, else `tid` itself.
pub(crate) fn current_tid(tid: i32) -> i32 {
    if tid <= 0 {
        return tid;
    }
    if is_past(tid) {
        return getpid();
    }
    TID_FROM.iter().position(|f| f.load(Ordering::Relaxed) == tid).map_or(tid, |i| TID_TO[i].load(Ordering::Relaxed))
}

/// `pid`, or this process's current pid when `pid` is one of its earlier ones.
pub(crate) fn current_pid(pid: i32) -> i32 {
    if is_past(pid) { getpid() } else { peer_now(pid) }
}

/// A CPU-time clock id (negative: `((~pid) << 3) | flags`, see clock_getcpuclockid(3) and the kernel's
/// posix-cpu-timers.h) naming an earlier pid of this process (or its main thread's earlier tid), rewritten
/// for the current one; any other clock id unchanged.
pub(crate) fn current_clock(clock: libc::clockid_t) -> libc::clockid_t {
    const PER_THREAD: libc::clockid_t = 4;
    const FLAGS: libc::clockid_t = 7;
    if clock >= 0 || PAST_PIDS[0].load(Ordering::Relaxed) == 0 {
        // Not a CPU clock, or never restarted.
        return clock;
    }
    let id = !(clock >> 3);
    let now = if clock & PER_THREAD != 0 { current_tid(id) } else { current_pid(id) };
    if now == id {
        return clock;
    }
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

/// libc's function `$name` as a pointer of type `$ty`, found once (`None` when missing).
macro_rules! libc_fn {
    ($name:literal, $ty:ty) => {{
        static REAL: AtomicUsize = AtomicUsize::new(0);
        let p = real(&REAL, concat!($name, "\0").as_bytes());
        // SAFETY: a non-null result of dlsym for this name is libc's function of this type.
        (p != 0).then(|| unsafe { std::mem::transmute::<usize, $ty>(p) })
    }};
}

/// Defines `$name` with the first argument passed through `$map` and every other argument unchanged.
macro_rules! interpose_first {
    ($name:ident, $map:path, $first:ident: $fty:ty, ($($arg:ident: $ty:ty),*) -> $ret:ty, $missing:expr) => {
        interpose_first!($name, $map, |v| v > 0, $first: $fty, ($($arg: $ty),*) -> $ret, $missing);
    };
    ($name:ident, $map:path, $may:expr, $first:ident: $fty:ty, ($($arg:ident: $ty:ty),*) -> $ret:ty, $missing:expr) => {
        #[doc = concat!("`", stringify!($name), "`, with an earlier pid or clock id of this process made current.")]
        ///
        /// # Safety
        /// The contract of libc's function of this name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($first: $fty, $($arg: $ty),*) -> $ret {
            static REAL: AtomicUsize = AtomicUsize::new(0);
            let p = real(&REAL, concat!(stringify!($name), "\0").as_bytes());
            if p == 0 {
                return $missing;
            }
            // SAFETY: `p` is libc's function of this name and signature.
            let f: unsafe extern "C" fn($fty, $($ty),*) -> $ret = unsafe { std::mem::transmute(p) };
            // An id that may name this process is looked at and used in one incarnation (see
            // `SignalsBlocked`: the look-up asks the kernel for the pid, where a checkpoint signal is
            // delivered); any other value passes untouched.
            let may: fn($fty) -> bool = $may;
            let _blocked = may($first).then(crate::sys::SignalsBlocked::new);
            // SAFETY: the caller's arguments, the first one naming this process now if it named it before.
            unsafe { f($map($first), $($arg),*) }
        }
    };
}

// Clock ids that encode a pid are negative (the fixed clocks, CLOCK_MONOTONIC and the like, pass as they are).
interpose_first!(clock_gettime, current_clock, |c| c < 0, clock: libc::clockid_t, (ts: *mut libc::timespec) -> c_int, -1);
interpose_first!(clock_getres, current_clock, |c| c < 0, clock: libc::clockid_t, (ts: *mut libc::timespec) -> c_int, -1);
interpose_first!(
    clock_getcpuclockid,
    current_pid,
    pid: libc::pid_t,
    (clock: *mut libc::clockid_t) -> c_int,
    libc::ENOSYS
);
// A group is looked up in atomics only (`current_group`): nothing to block for it.
interpose_first!(kill, kill_target, |p| p > 0, pid: libc::pid_t, (sig: c_int) -> c_int, -1);
// glibc's killpg calls its own kill, not the interposed one.
interpose_first!(killpg, current_group, |_| false, pgrp: libc::pid_t, (sig: c_int) -> c_int, -1);
interpose_first!(sigqueue, current_pid, pid: libc::pid_t, (sig: c_int, value: libc::sigval) -> c_int, -1);

/// `tgkill(tgid, tid, sig)`: both ids follow the process (the main thread's tid is its pid).
///
/// # Safety
/// The contract of libc's `tgkill`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tgkill(tgid: libc::pid_t, tid: libc::pid_t, sig: c_int) -> c_int {
    // Looked up and used in one incarnation (see `interpose_first`).
    let _blocked = crate::sys::SignalsBlocked::new();
    // SAFETY: the raw system call with the caller's signal.
    unsafe { libc::syscall(libc::SYS_tgkill, current_pid(tgid), current_tid(tid), sig) as c_int }
}

/// `kill`'s pid made current: this process's earlier pids, the tree's, and earlier process groups.
fn kill_target(pid: i32) -> i32 {
    current_target(pid, current_pid)
}

/// A `wait*` pid made current: the tree's children, and earlier process groups.
fn wait_target(pid: i32) -> i32 {
    current_target(pid, peer_now)
}

/// Defines a wait call whose pid argument is made current and whose result is given back as the program
/// knows it.
macro_rules! interpose_wait {
    ($name:ident, ($($arg:ident: $ty:ty),*), $pid:ident) => {
        #[doc = concat!("`", stringify!($name), "`, with the pids of a restored process tree as the program knows them.")]
        ///
        /// # Safety
        /// The contract of libc's function of this name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> libc::pid_t {
            static REAL: AtomicUsize = AtomicUsize::new(0);
            let p = real(&REAL, concat!(stringify!($name), "\0").as_bytes());
            if p == 0 {
                return -1;
            }
            // SAFETY: `p` is libc's function of this name and signature.
            let f: unsafe extern "C" fn($($ty),*) -> libc::pid_t = unsafe { std::mem::transmute(p) };
            let $pid = wait_target($pid);
            // SAFETY: the caller's arguments, the pid made current.
            peer_then(unsafe { f($($arg),*) })
        }
    };
}

interpose_wait!(waitpid, (pid: libc::pid_t, status: *mut c_int, options: c_int), pid);
interpose_wait!(wait4, (pid: libc::pid_t, status: *mut c_int, options: c_int, usage: *mut libc::rusage), pid);

/// `wait(2)`, with the pid it returns given back as the program knows it.
///
/// # Safety
/// The contract of libc's `wait`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wait(status: *mut c_int) -> libc::pid_t {
    // SAFETY: forwarded contract (wait is waitpid(-1, status, 0)).
    unsafe { waitpid(-1, status, 0) }
}

/// `wait3(2)`, as `wait`.
///
/// # Safety
/// The contract of libc's `wait3`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wait3(status: *mut c_int, options: c_int, usage: *mut libc::rusage) -> libc::pid_t {
    // SAFETY: forwarded contract (wait3 is wait4(-1, ...)).
    unsafe { wait4(-1, status, options, usage) }
}

/// `waitid(2)`: a `P_PID` id made current, the child's pid in the result given back as the program knows
/// it.
///
/// # Safety
/// The contract of libc's `waitid`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn waitid(
    idtype: libc::idtype_t,
    id: libc::id_t,
    info: *mut libc::siginfo_t,
    options: c_int,
) -> c_int {
    let Some(f) =
        libc_fn!("waitid", unsafe extern "C" fn(libc::idtype_t, libc::id_t, *mut libc::siginfo_t, c_int) -> c_int)
    else {
        return -1;
    };
    let id = match idtype {
        libc::P_PID => peer_now(id as i32) as libc::id_t,
        libc::P_PGID => current_group(id as i32) as libc::id_t,
        _ => id,
    };
    // SAFETY: the caller's arguments.
    let r = unsafe { f(idtype, id, info, options) };
    if r == 0 && !info.is_null() {
        // SAFETY: the kernel filled `info`; si_pid is at offset 16 on x86_64 (SIGCHLD layout).
        unsafe {
            let pid = (info as *mut u8).add(16) as *mut i32;
            *pid = peer_then(*pid);
        }
    }
    r
}

/// `getppid(2)`: the parent as the program knows it (its pid at the first run, in a restored tree).
#[unsafe(no_mangle)]
pub extern "C" fn getppid() -> libc::pid_t {
    // SAFETY: getppid has no arguments.
    peer_then(unsafe { libc::syscall(libc::SYS_getppid) } as libc::pid_t)
}

/// Streams `popen` opened (glibc's `struct _IO_proc_file`), whose child's pid glibc keeps in the stream
/// and waits for in `pclose` through an internal call no interposer sees: made current before `pclose`.
const MAX_POPEN: usize = 64;
static POPEN_FILES: [AtomicUsize; MAX_POPEN] = [const { AtomicUsize::new(0) }; MAX_POPEN];
/// Where glibc (x86_64) keeps that pid: after the FILE (216 bytes) and its vtable pointer.
const PROC_FILE_PID_OFFSET: usize = 224;

/// Calls of `system` in progress: it waits for its child through an internal call, which a restart
/// cannot resume (tree.rs refuses a checkpoint meanwhile).
pub(crate) static IN_SYSTEM: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// `popen(3)`: remembers the stream when glibc's record of the child's pid is where this build expects it
/// (the pid is a child of this process).
///
/// # Safety
/// The contract of libc's `popen`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn popen(command: *const libc::c_char, mode: *const libc::c_char) -> *mut libc::FILE {
    let Some(f) = libc_fn!("popen", unsafe extern "C" fn(*const libc::c_char, *const libc::c_char) -> *mut libc::FILE)
    else {
        return std::ptr::null_mut();
    };
    // SAFETY: the caller's arguments.
    let stream = unsafe { f(command, mode) };
    if stream.is_null() {
        return stream;
    }
    // SAFETY: a popen stream is a struct _IO_proc_file, larger than the offset read.
    let pid = unsafe { std::ptr::read_unaligned((stream as *const u8).add(PROC_FILE_PID_OFFSET) as *const i32) };
    let ours = pid > 0
        && std::fs::read(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
            let Some(close) = stat.iter().rposition(|&b| b == b')') else { return false };
            let ppid = stat[close + 1..].split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(1);
            ppid.and_then(|f| std::str::from_utf8(f).ok()?.parse::<i32>().ok()) == Some(getpid())
        });
    if ours
        && let Some(slot) = POPEN_FILES
            .iter()
            .find(|s| s.compare_exchange(0, stream as usize, Ordering::AcqRel, Ordering::Acquire).is_ok())
    {
        let _ = slot;
    }
    stream
}

/// `pclose(3)`: the child's pid glibc kept in the stream made current (after a restart of the tree).
///
/// # Safety
/// The contract of libc's `pclose`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pclose(stream: *mut libc::FILE) -> c_int {
    let Some(f) = libc_fn!("pclose", unsafe extern "C" fn(*mut libc::FILE) -> c_int) else {
        return -1;
    };
    if let Some(slot) = POPEN_FILES.iter().find(|s| !stream.is_null() && s.load(Ordering::Acquire) == stream as usize) {
        // SAFETY: a stream popen returned and this shim checked; the pid field is an i32 at the offset.
        unsafe {
            let at = (stream as *mut u8).add(PROC_FILE_PID_OFFSET) as *mut i32;
            std::ptr::write_unaligned(at, peer_now(std::ptr::read_unaligned(at)));
        }
        slot.store(0, Ordering::Release);
    }
    // SAFETY: libc's pclose with the caller's stream.
    unsafe { f(stream) }
}

/// `system(3)`: counted while it runs (see [`IN_SYSTEM`]).
///
/// # Safety
/// The contract of libc's `system`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn system(command: *const libc::c_char) -> c_int {
    let Some(f) = libc_fn!("system", unsafe extern "C" fn(*const libc::c_char) -> c_int) else {
        return -1;
    };
    IN_SYSTEM.fetch_add(1, Ordering::AcqRel);
    // SAFETY: the caller's argument.
    let r = unsafe { f(command) };
    IN_SYSTEM.fetch_sub(1, Ordering::AcqRel);
    r
}
