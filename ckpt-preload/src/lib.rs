//! `libckpt_preload.so`: checkpoint and restart unmodified programs.
//!
//! Loaded with `LD_PRELOAD` (by `ckpt run`, or by hand), the shim:
//!
//! * at start (an `.init_array` constructor): turns address-space randomization off for the job (one
//!   re-exec of the same program), reads the `CKPT_*`/`SLURM_*` settings, installs its handlers for its
//!   own reserved checkpoint signals (SIGRTMAX-2: checkpoint and continue, SIGRTMAX-3: and exit; the
//!   timers and `ckpt create` send these) and for `CKPT_SIGNALS` (default TERM = checkpoint and exit,
//!   USR1 = checkpoint and continue) and arms kernel timers for the interval and the job's time limit;
//! * interposes `sigaction`, `signal`, `bsd_signal`, `sysv_signal` and `sigset`: the reserved signals
//!   are hidden from the program (and `sigprocmask`/`pthread_sigmask` never block them); USR1/TERM are
//!   checkpoint requests only while the program has no handler of its own for them and did not send
//!   them to itself, else the program's action runs;
//! * interposes the blocking calls the kernel never restarts (`poll`, `select`, `nanosleep`, ...: the
//!   `eintr` module), so that a checkpoint never makes them fail with EINTR;
//! * on a request, in the handler: stops every other thread (the `threads` module), checks what it
//!   cannot restore (child processes), records
//!   the file offsets and sizes, and forks a writer with a raw `clone` (no atfork handlers, no SIGCHLD).
//!   The program continues at once; the writer saves the frozen copy of the address space as a
//!   checkpoint file in ckpt's format ([`ckpt_image`]), skipping untouched and zero pages,
//!   and commits it atomically. For checkpoint-and-exit the handler waits for the writer and then ends
//!   the process by the signal's default action;
//! * when started by `ckpt restart` (`CKPT_SHIM_RESTORE=IMAGE`), restores the image before the
//!   program's own code runs (the `restore` module; see README.md).
//!
//! The shim stays passive in every process but the one it was started in (children inherit
//! `LD_PRELOAD`), and everything it cannot restore is refused with a message, never mis-restored.
//! Scope: Linux x86_64, glibc, one process with any number of threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

mod eintr;
mod pid;
mod restore;
mod sys;
mod threads;
mod tid;
mod tree;
mod writer;

use sys::*;

/// Signal-value codes a timer sends with the checkpoint signal.
const TIMER_INTERVAL: usize = 1;
const TIMER_DEADLINE: usize = 2;
/// `si_code` of a POSIX timer signal.
const SI_TIMER: i32 = -2;
/// `si_code` of a signal sent with `sigqueue`.
pub(crate) const SI_QUEUE: i32 = -1;
/// The background end-time query's answer (see [`spawn_end_time_query`]): a `sigqueue` of the timer
/// signal whose value has this tag in its top 16 bits and the unix second to checkpoint at below.
const END_TIME_TAG: usize = 0xC4E7;
/// How long the background query may take (it never delays the program).
const END_TIME_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most descriptors the handler records.
pub(crate) const MAX_FDS: usize = 1024;
/// Signal numbers are 1..=64.
const NSIG: usize = 65;
/// The shim's own checkpoint signals, which the program does not own (SIGRTMAX-2: checkpoint and
/// continue, also sent by the timers and `ckpt create`; SIGRTMAX-3: checkpoint and exit, `ckpt create
/// --vacate`). Hidden from the program: its `sigaction` on them is recorded and never given to the
/// kernel, its `sigprocmask`/`pthread_sigmask` never block them. SIGUSR1/SIGTERM (`CKPT_SIGNALS`) are
/// translated into checkpoints only while the program has no handler of its own for them.
pub(crate) const CKPT_SIGNAL: c_int = 62;
pub(crate) const CKPT_EXIT_SIGNAL: c_int = 61;
/// The reserved signals (the park signal of `threads` too), as a kernel signal-set mask.
pub(crate) const RESERVED_MASK: u64 = (1 << (CKPT_SIGNAL - 1))
    | (1 << (CKPT_EXIT_SIGNAL - 1))
    | (1 << (threads::PARK_SIGNAL - 1))
    | (1 << (tree::TREE_SIGNAL - 1));
/// [`SIGNAL_MODE`] of the park signal.
const MODE_PARK: u8 = 3;
/// [`SIGNAL_MODE`] of [`tree::TREE_SIGNAL`].
const MODE_TREE: u8 = 4;

// ------------------------------------------------------------------------------------------ global state
// Everything here lives in the shim's .data/.bss and is therefore saved and restored with the program:
// after a restart it holds the checkpoint-time values, and the restorer fixes up what must change
// (pid, writer, timers, restart count).

/// This process is the one the shim checkpoints.
pub(crate) static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Its pid (children that inherit the shim compare against it and stay passive).
pub(crate) static ROOT_PID: AtomicI32 = AtomicI32::new(0);
/// The writer still running, if any.
pub(crate) static WRITER_PID: AtomicI32 = AtomicI32::new(0);
/// In the writer only: the bump arena all Rust allocations come from.
pub(crate) static CHILD_ARENA: AtomicUsize = AtomicUsize::new(0);
/// Checkpoints requested so far (the step number of each image).
pub(crate) static SEQUENCE: AtomicU64 = AtomicU64::new(0);
/// Restarts this process went through.
pub(crate) static RESTARTS: AtomicU32 = AtomicU32::new(0);
/// Offset of glibc's cached tid in the thread control block (-1 when not found).
pub(crate) static TID_OFFSET: AtomicI64 = AtomicI64::new(-1);
/// rseq registration: address, length, signature (length 0: none).
pub(crate) static RSEQ_ADDR: AtomicU64 = AtomicU64::new(0);
pub(crate) static RSEQ_LEN: AtomicU32 = AtomicU32::new(0);
pub(crate) static RSEQ_SIG: AtomicU32 = AtomicU32::new(0);
/// Address of this thread's errno.
pub(crate) static ERRNO_ADDR: AtomicUsize = AtomicUsize::new(0);
/// The main thread's thread pointer (FS base) when the shim started: every thread's rseq area is at the
/// same offset from its own.
pub(crate) static MAIN_FS_BASE: AtomicU64 = AtomicU64::new(0);
/// libc's `sigaction`, found with `dlsym(RTLD_NEXT)`.
static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);
/// Per signal: 0 = not ours, 1 = checkpoint and continue, 2 = checkpoint and exit.
pub(crate) static SIGNAL_MODE: [AtomicU8; NSIG] = [const { AtomicU8::new(0) }; NSIG];
/// The signal the timers send.
pub(crate) static TIMER_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Kernel timer ids (-1: none).
pub(crate) static INTERVAL_TIMER: AtomicI64 = AtomicI64::new(-1);
pub(crate) static DEADLINE_TIMER: AtomicI64 = AtomicI64::new(-1);
/// The registration file `ckpt create` finds this process by (NUL-terminated; empty: none), and the
/// parts the restorer needs to register the restarted process under its new pid.
pub(crate) static REG_PATH: Shared<[u8; 512]> = Shared::new([0; 512]);
pub(crate) static REG_DIR: Shared<[u8; 400]> = Shared::new([0; 400]);
pub(crate) static REG_SUFFIX: Shared<[u8; 100]> = Shared::new([0; 100]);
/// Device and inode of the image this process was restored from (its pages may be mapped from it).
pub(crate) static RESTORED_DEV: AtomicU64 = AtomicU64::new(0);
pub(crate) static RESTORED_INO: AtomicU64 = AtomicU64::new(0);
/// The checkpoint-and-exit signal (for `ckpt create --vacate`).
pub(crate) static EXIT_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The settings and names built at start (heap data: it is restored with the heap).
pub(crate) static CONTEXT: AtomicUsize = AtomicUsize::new(0);
/// The start time of the root process (clock ticks after boot) and the boot it counts from
/// (NUL-terminated): written into the registration so `ckpt create` signals only this process.
pub(crate) static ROOT_START: AtomicU64 = AtomicU64::new(0);
pub(crate) static BOOT_ID: Shared<[u8; 64]> = Shared::new([0; 64]);
/// `CKPT_SHIM_ROOT=<marker>` (NUL-terminated), handed to `putenv`: the environment names the root
/// process through this buffer, and the restorer rewrites it in place (same width) to name the restored
/// process, so its children never inherit a marker naming a pid that is free again.
pub(crate) static ROOT_MARKER_ENV: Shared<[u8; ROOT_ENV_LEN + 1]> = Shared::new([0; ROOT_ENV_LEN + 1]);
/// Descriptors above stderr open when the program started (inherited from its launcher): number, device,
/// inode; `START_FDS_LEN` of them. A checkpoint applies `CKPT_SHIM_FOREIGN_FDS` to those of them that are
/// still the same file and cannot be restored.
pub(crate) const MAX_START_FDS: usize = 64;
pub(crate) static START_FDS: Shared<[(i32, u64, u64); MAX_START_FDS]> = Shared::new([(0, 0, 0); MAX_START_FDS]);
pub(crate) static START_FDS_LEN: AtomicUsize = AtomicUsize::new(0);
/// Tests only (`CKPT_SHIM_NO_KCMP=1`): find shared open file descriptions by the probe `kcmp` is
/// missing under (see [`same_description`]).
static NO_KCMP: AtomicBool = AtomicBool::new(false);
/// `CKPT_SHIM_FOREIGN_FDS`, parsed at start: 0 devnull, 1 close, 2 refuse.
pub(crate) static FOREIGN_FDS: AtomicU8 = AtomicU8::new(0);
/// The program's command line and environment areas at start (`/proc/self/stat` fields 48-51:
/// arg_start, arg_end, env_start, env_end): the restorer points the restarted process's
/// `/proc/<pid>/cmdline` and `environ` back at them (they are restored with the stack).
pub(crate) static ARG_AREA: Shared<[u64; 4]> = Shared::new([0; 4]);
/// `CKPT_SHIM_ROOT=` and a marker.
pub(crate) const ROOT_ENV_PREFIX: &[u8] = b"CKPT_SHIM_ROOT=";
pub(crate) const ROOT_ENV_LEN: usize = ROOT_ENV_PREFIX.len() + ckpt_image::ROOT_MARKER_LEN;

/// A cell the handler and interposers share. The handler runs with every signal blocked, in the one
/// thread that coordinates a checkpoint while the others are stopped; the program's threads calling
/// `sigaction` on a checkpoint signal at the same moment could race on [`APP_ACTIONS`] (programs set
/// their handlers at start, before they create threads).
pub(crate) struct Shared<T>(UnsafeCell<T>);
// SAFETY: accessed from one thread at a time: the program's only thread, or the handler that interrupted
// it with all signals blocked; the interposers never run inside the handler.
unsafe impl<T> Sync for Shared<T> {}
impl<T> Shared<T> {
    pub(crate) const fn new(v: T) -> Shared<T> {
        Shared(UnsafeCell::new(v))
    }
    pub(crate) fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// The program's own actions for the signals the shim manages (emulated, never given to the kernel).
static APP_ACTIONS: Shared<[AppAction; NSIG]> =
    Shared::new([AppAction { handler: libc::SIG_DFL, flags: 0, mask: 0 }; NSIG]);

#[derive(Clone, Copy)]
struct AppAction {
    handler: usize,
    flags: i32,
    mask: u64,
}

/// What the handler recorded before forking the writer: the writer reads it from its copy.
#[derive(Clone, Copy)]
pub(crate) struct Snapshot {
    pub t0_ns: u64,
    pub ucontext: usize,
    pub errno: i32,
    pub exit: bool,
    pub sequence: u64,
    pub nfds: usize,
    pub fds: [FdSnap; MAX_FDS],
    pub itimers: [[u64; 2]; 3],
    /// The program's parent (the writer's parent is the program itself).
    pub ppid: i32,
    /// Where the coordinating thread's errno is (its value at the request is `errno`).
    pub errno_addr: usize,
    /// Shared open file descriptions were found with `kcmp` (else by the probe of [`same_description`]).
    pub sharing_by_kcmp: bool,
    /// The process checkpointed (the writer's parent).
    pub pid: i32,
    /// Part of a process tree's checkpoint (pipes are recorded as the tree's, with their contents).
    pub tree: bool,
    /// A member of the tree (not the root): the image goes to the coordination directory.
    pub member: bool,
}

/// One descriptor as the handler saw it.
#[derive(Clone, Copy)]
pub(crate) struct FdSnap {
    pub fd: i32,
    pub mode: u32,
    pub flags: i32,
    pub fdflags: i32,
    pub offset: i64,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i128,
    /// The descriptor listed before this one whose open file description this one shares (-1: none).
    pub leader: i32,
}

pub(crate) static SNAPSHOT: Shared<Snapshot> = Shared::new(Snapshot {
    t0_ns: 0,
    ucontext: 0,
    errno: 0,
    exit: false,
    sequence: 0,
    nfds: 0,
    fds: [FdSnap { fd: 0, mode: 0, flags: 0, fdflags: 0, offset: 0, size: 0, dev: 0, ino: 0, mtime_ns: 0, leader: -1 };
        MAX_FDS],
    itimers: [[0; 2]; 3],
    ppid: 0,
    errno_addr: 0,
    sharing_by_kcmp: true,
    pid: 0,
    tree: false,
    member: false,
});

/// Settings built at start.
pub(crate) struct ShimContext {
    pub store: ckpt_core::Store,
    pub argv: Vec<usize>,
    pub envp: Vec<usize>,
    pub log_path: Option<std::path::PathBuf>,
    /// The same, NUL-terminated, for the handler's raw writes.
    pub log_path_c: Option<std::ffi::CString>,
    pub log_stderr: bool,
}

pub(crate) fn context() -> Option<&'static ShimContext> {
    let p = CONTEXT.load(Ordering::Acquire);
    // SAFETY: CONTEXT is only ever set to a leaked Box<ShimContext> that is never freed.
    (p != 0).then(|| unsafe { &*(p as *const ShimContext) })
}

// ----------------------------------------------------------------------------------------------- allocator

/// Rust allocations go to libc's malloc, except in the writer: the writer is a copy of a process that
/// may have been interrupted inside malloc, and whatever it writes into the heap would end up in the
/// image. There, allocations come from a private mapping the image excludes, and nothing is freed.
struct ShimAllocator;

/// Size of the writer's arena (reserved, not committed).
pub(crate) const ARENA_SIZE: usize = 1 << 32;

// SAFETY: outside the writer this forwards to System; in the writer it hands out disjoint, suitably
// aligned ranges of a private mapping and never reuses them.
unsafe impl GlobalAlloc for ShimAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let arena = CHILD_ARENA.load(Ordering::Relaxed);
        if arena == 0 {
            // SAFETY: forwarded contract.
            return unsafe { System.alloc(layout) };
        }
        bump(arena, layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if CHILD_ARENA.load(Ordering::Relaxed) == 0 {
            // SAFETY: outside the writer every pointer came from System.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let arena = CHILD_ARENA.load(Ordering::Relaxed);
        if arena == 0 {
            // SAFETY: forwarded contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees new_size and align form a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = bump(arena, new_layout);
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least min(old, new) bytes long.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}

fn bump(arena: usize, layout: Layout) -> *mut u8 {
    // The first word of the arena is the cursor (the writer is single-threaded).
    let cursor = arena as *mut usize;
    // SAFETY: the arena is a live private mapping of ARENA_SIZE bytes whose first word is the cursor.
    let cur = unsafe { *cursor };
    let start = (cur + layout.align() - 1) & !(layout.align() - 1);
    let Some(end) = start.checked_add(layout.size()) else { return std::ptr::null_mut() };
    if end > arena + ARENA_SIZE {
        return std::ptr::null_mut();
    }
    // SAFETY: as above.
    unsafe { *cursor = end };
    start as *mut u8
}

#[global_allocator]
static ALLOCATOR: ShimAllocator = ShimAllocator;

// ---------------------------------------------------------------------------------------------- constructor

/// Runs when the shim is loaded, before the program's own constructors and `main`.
extern "C" fn shim_init(argc: c_int, argv: *const *const c_char, envp: *const *const c_char) {
    // The crate's own unit-test binary links this code directly: no handlers, timers or log file there.
    if cfg!(test) {
        return;
    }
    // SAFETY: glibc passes the process's argc/argv/envp to ELF constructors; they stay valid (they live
    // on the initial stack).
    unsafe { init(argc, argv, envp) }
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT_ARRAY: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = shim_init;

unsafe fn init(argc: c_int, argv: *const *const c_char, envp: *const *const c_char) {
    // SAFETY: forwarded from the loader.
    let (args, env) = unsafe { (c_array(argv, Some(argc as usize)), c_array(envp, None)) };
    let getenv = |name: &str| -> Option<String> {
        env.iter().find_map(|&p| {
            // SAFETY: each pointer is a NUL-terminated string of the initial environment.
            let s = unsafe { CStr::from_ptr(p as *const c_char) }.to_bytes();
            let rest = s.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            Some(String::from_utf8_lossy(rest).into_owned())
        })
    };
    if getenv("CKPT_PRELOAD_DISABLE").is_some_and(|v| v == "1") {
        return;
    }
    let pid = getpid();
    // Which process is the root: the one CKPT_SHIM_ROOT names by pid *and* start time (`ckpt run` and
    // `ckpt restart` name themselves, then exec the program: same pid, same start time). A process that
    // merely has that pid now (the named one is gone) has another start time and stays passive.
    let marker = getenv("CKPT_SHIM_ROOT").map(|t| ckpt_image::RootMarker::parse(&t).map_err(|e| (t, e)));
    let named_me = |m: &ckpt_image::RootMarker| m.names_self();
    if let Some(image) = getenv("CKPT_SHIM_RESTORE") {
        // Only the process `ckpt restart` exec'ed restores; its children see the variable too.
        match &marker {
            Some(Ok(m)) if named_me(m) => restore::restore_from(&image, m.nonce, &getenv),
            Some(Err((t, why))) if t.trim() == pid.to_string() => {
                restore::refuse_restart(&image, why);
            }
            _ => {}
        }
        return;
    }
    let mut member = None;
    let nonce = match &marker {
        Some(Ok(m)) if named_me(m) => m.nonce,
        // A process the checkpointed one started (through any number of exec'd descendants): a member of
        // its process tree (tree.rs).
        Some(Ok(m)) if descends_from(m) => {
            member = Some(*m);
            m.nonce
        }
        Some(Ok(_)) => return, // not a descendant (a later process with an inherited environment): passive
        Some(Err((t, why))) => {
            if t.trim() == pid.to_string() {
                warn_prefixed(b"checkpointing is disabled in this process: ", why.as_bytes());
            }
            return;
        }
        None => ckpt_image::nonce(), // LD_PRELOAD set by hand: this process is the root
    };
    if let Some(m) = &member {
        // The root's marker, through the shim's buffer: a restorer rewrites it to name the restored root,
        // so that what this process executes later still finds the root.
        set_root_marker(m);
    } else {
        let start = match ckpt_image::process_start_time(pid as u32) {
            Ok(s) => s,
            Err(e) => {
                warn_prefixed(b"checkpointing is disabled: cannot read /proc/self/stat: ", e.to_string().as_bytes());
                return;
            }
        };
        set_root_marker(&ckpt_image::RootMarker { pid: pid as u32, start, nonce });
        ROOT_START.store(start, Ordering::Relaxed);
    }
    if let Some(boot) = ckpt_image::boot_id() {
        // SAFETY: single-threaded initialisation (see Shared).
        unsafe { fill_cstr(&mut *BOOT_ID.get(), boot.as_bytes()) };
    }
    // Address-space randomization off, so a restart finds every library at the same address.
    // SAFETY: personality(0xffffffff) only queries.
    let persona = unsafe { libc::personality(0xffff_ffff) };
    if persona >= 0 && persona & libc::ADDR_NO_RANDOMIZE == 0 {
        // SAFETY: sets a flag of this process; then replaces the image with the same program.
        unsafe {
            libc::personality((persona | libc::ADDR_NO_RANDOMIZE) as libc::c_ulong);
            unsafe extern "C" {
                static environ: *const *const c_char;
            }
            libc::execve(c"/proc/self/exe".as_ptr(), argv, environ);
        }
        warn(b"cannot re-execute the program with address-space randomization off; checkpointing is disabled");
        return;
    }
    match setup(&args, &env, &getenv, member.as_ref()) {
        Ok(()) => {}
        Err(message) => {
            let line = format!("ckpt: {message}\n");
            write_all(2, line.as_bytes());
            exit_group(2);
        }
    }
}

/// Puts `CKPT_SHIM_ROOT=<marker>` into the environment through [`ROOT_MARKER_ENV`] (`putenv` keeps the
/// buffer, so the restorer can rewrite the marker in place).
fn set_root_marker(m: &ckpt_image::RootMarker) {
    fill_root_marker(m);
    // SAFETY: single-threaded initialisation (see Shared); the buffer is static, so putenv may keep it.
    unsafe { libc::putenv((*ROOT_MARKER_ENV.get()).as_mut_ptr().cast()) };
}

/// `CKPT_SHIM_ROOT=<marker>` into [`ROOT_MARKER_ENV`].
fn fill_root_marker(m: &ckpt_image::RootMarker) {
    let text = m.format();
    // SAFETY: single-threaded initialisation (see Shared).
    unsafe {
        let buf = &mut *ROOT_MARKER_ENV.get();
        let mut pos = 0;
        put(buf, &mut pos, ROOT_ENV_PREFIX);
        put(buf, &mut pos, text.as_bytes());
        buf[pos.min(ROOT_ENV_LEN)] = 0;
    }
}

/// Whether the process `m` names (pid and start time) is an ancestor of this one.
fn descends_from(m: &ckpt_image::RootMarker) -> bool {
    // SAFETY: getppid has no arguments.
    let mut pid = unsafe { syscall3(libc::SYS_getppid, 0, 0, 0) } as u32;
    for _ in 0..64 {
        if pid <= 1 {
            return false;
        }
        if pid == m.pid {
            return ckpt_image::process_start_time(pid).is_ok_and(|s| s == m.start);
        }
        let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else { return false };
        let Some(close) = stat.iter().rposition(|&b| b == b')') else { return false };
        let ppid = stat[close + 1..].split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(1);
        match ppid.and_then(|f| std::str::from_utf8(f).ok()?.parse().ok()) {
            Some(p) => pid = p,
            None => return false,
        }
    }
    false
}

/// Reads a NULL-terminated pointer array.
unsafe fn c_array(p: *const *const c_char, len: Option<usize>) -> Vec<usize> {
    let mut out = Vec::new();
    if p.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        // SAFETY: the array is NULL-terminated (and argc long for argv).
        let item = unsafe { *p.add(i) };
        if item.is_null() || len.is_some_and(|n| i >= n) {
            break;
        }
        out.push(item as usize);
        i += 1;
    }
    out
}

/// Reports a checkpoint refused in the handler: on stderr, and as a JSON line in the log (raw writes).
fn refuse(message: &[u8]) {
    warn_prefixed(b"cannot checkpoint: ", message);
    let Some(ctx) = context() else { return };
    let mut line = [0u8; 512];
    let mut pos = 0;
    put(&mut line, &mut pos, b"{\"event\":\"checkpoint-refused\",\"reason\":\"");
    for &b in message {
        if b == b'"' || b == b'\\' || b < 0x20 {
            continue;
        }
        put(&mut line, &mut pos, &[b]);
    }
    put(&mut line, &mut pos, b"\"}\n");
    if ctx.log_stderr {
        write_all(2, &line[..pos]);
    } else if let Some(path) = &ctx.log_path_c {
        let fd =
            open(path.as_bytes_with_nul(), libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC, 0o600);
        if fd >= 0 {
            write_all(fd as i32, &line[..pos]);
            close(fd as i32);
        }
    }
}

fn warn_prefixed(prefix: &[u8], message: &[u8]) {
    let mut buf = [0u8; 512];
    let mut pos = 0;
    put(&mut buf, &mut pos, b"ckpt: ");
    put(&mut buf, &mut pos, prefix);
    put(&mut buf, &mut pos, message);
    put(&mut buf, &mut pos, b"\n");
    write_all(2, &buf[..pos]);
}

pub(crate) fn warn(message: &[u8]) {
    let mut buf = [0u8; 512];
    let mut pos = 0;
    put(&mut buf, &mut pos, b"ckpt: ");
    put(&mut buf, &mut pos, message);
    put(&mut buf, &mut pos, b"\n");
    write_all(2, &buf[..pos]);
}

fn setup(
    args: &[usize],
    env: &[usize],
    getenv: &dyn Fn(&str) -> Option<String>,
    member: Option<&ckpt_image::RootMarker>,
) -> Result<(), String> {
    // Before anything of the shim opens a file: what the launcher left open.
    record_start_fds();
    record_arg_area();
    let foreign = ckpt_image::ForeignFds::parse(getenv(ckpt_image::FOREIGN_FDS_VAR).as_deref())?;
    FOREIGN_FDS.store(foreign as u8, Ordering::Relaxed);
    NO_KCMP.store(getenv("CKPT_SHIM_NO_KCMP").is_some_and(|v| v == "1"), Ordering::Relaxed);
    let exe_name = std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "program".into());
    let app_name = getenv("CKPT_NAME").or_else(|| getenv("SLURM_JOB_NAME")).unwrap_or(exe_name);
    let config = ckpt_core::Config::from_lookup(Some(&app_name), |k| getenv(k)).map_err(|e| e.to_string())?;
    let (log_path, log_stderr) = match &config.log {
        ckpt_core::LogTarget::CheckpointDir => {
            (Some(config.checkpoint_dir.join(format!("{}.log", config.base_name()))), false)
        }
        ckpt_core::LogTarget::File(p) => (Some(p.clone()), false),
        ckpt_core::LogTarget::Stderr => (None, true),
        ckpt_core::LogTarget::Off => (None, false),
        _ => (None, false),
    };
    // Absolute paths: the program may change its working directory.
    let mut config = config;
    if let Ok(cwd) = std::env::current_dir() {
        config.checkpoint_dir = cwd.join(&config.checkpoint_dir);
        config.restart_dir = cwd.join(&config.restart_dir);
    }
    let log_path = log_path.map(|p| std::env::current_dir().map(|c| c.join(&p)).unwrap_or(p));
    let signals = config.signals.clone();
    // Never ask squeue on the start path: the end time comes from SLURM_JOB_END_TIME/CKPT_END_TIME at
    // once; without one, a background process asks squeue (below, once the handlers are in place).
    let query_job = if config.end_time.is_none() { config.job_id.clone() } else { None };
    let mut no_query = config.clone();
    no_query.job_id = None;
    let timers = ckpt_core::triggers::timer_plan(&no_query);
    let lead = deadline_lead(&no_query);
    let socket_dir = config.socket_dir.clone();
    let (job_id, step_id) = (config.job_id.clone(), config.step_id);
    let store = ckpt_core::Store::with_storage(config, std::sync::Arc::new(writer::ForkSafeStorage));
    let log_path_c = log_path.as_ref().and_then(|p| {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::CString::new(p.as_os_str().as_bytes()).ok()
    });
    let ctx =
        Box::new(ShimContext { store, argv: args.to_vec(), envp: env.to_vec(), log_path, log_path_c, log_stderr });
    CONTEXT.store(Box::into_raw(ctx) as usize, Ordering::Release);

    resolve_real_sigaction();
    find_thread_state();
    for spec in &signals {
        let sig = spec.signal as usize;
        if sig >= NSIG {
            continue;
        }
        SIGNAL_MODE[sig].store(if spec.exit { 2 } else { 1 }, Ordering::Relaxed);
        install_handler(spec.signal).map_err(|e| format!("cannot install the handler for signal {sig}: {e}"))?;
    }
    for (sig, mode) in
        [(CKPT_SIGNAL, 1), (CKPT_EXIT_SIGNAL, 2), (threads::PARK_SIGNAL, MODE_PARK), (tree::TREE_SIGNAL, MODE_TREE)]
    {
        SIGNAL_MODE[sig as usize].store(mode, Ordering::Relaxed);
        install_handler(sig).map_err(|e| format!("cannot install the handler for signal {sig}: {e}"))?;
    }
    let timer_signal = timer_signal_of(&signals);
    EXIT_SIGNAL.store(CKPT_EXIT_SIGNAL, Ordering::Relaxed);
    TIMER_SIGNAL.store(timer_signal, Ordering::Relaxed);
    if let Some(m) = member {
        // Triggers, `ckpt create` and the log's start line belong to the root, which coordinates.
        ROOT_PID.store(m.pid as i32, Ordering::Relaxed);
        ACTIVE.store(true, Ordering::Release);
        return Ok(());
    }
    ROOT_PID.store(getpid(), Ordering::Relaxed);
    ACTIVE.store(true, Ordering::Release);
    let interval_ns = timers.interval.map(|d| d.as_nanos() as u64).unwrap_or(0);
    let fire_at_ns = timers.checkpoint_at.map(|t| (t * 1e9) as u64).unwrap_or(0);
    arm_timers(interval_ns, fire_at_ns);
    writer::log_line(&serde_json::json!({
        "event": "start", "pid": getpid(), "signals": signals.iter().map(|s| s.signal).collect::<Vec<_>>(),
        "interval_s": interval_ns as f64 / 1e9, "end_time": timers.end_time.map(|(t, _)| t),
        "end_time_source": timers.end_time.map(|(_, s)| s).or(query_job.as_ref().map(|_| "squeue (asked in the background)")),
        "end_time_error": timers.end_time_error, "deadline_checkpoint_at": timers.checkpoint_at,
    }));
    if let Some(job) = &query_job {
        spawn_end_time_query(job, lead, timer_signal);
    }
    if let Some(dir) = socket_dir
        && ckpt_core::control::prepare_socket_dir(&dir).is_ok()
    {
        use std::os::unix::ffi::OsStrExt;
        let name = ckpt_image::registration_name(0, job_id.as_deref(), step_id);
        let suffix = name.strip_prefix('0').unwrap_or(&name).as_bytes().to_vec();
        let dir = dir.as_os_str().as_bytes().to_vec();
        // SAFETY: single-threaded initialisation (see Shared).
        unsafe {
            fill_cstr(&mut *REG_DIR.get(), &dir);
            fill_cstr(&mut *REG_SUFFIX.get(), &suffix);
        }
        register_process();
        // SAFETY: registers a plain function for exit().
        unsafe { libc::atexit(unregister_at_exit) };
    }
    Ok(())
}

/// Records the descriptors above stderr that are open now, at the program's start ([`START_FDS`]).
fn record_start_fds() {
    let mut buf = [0u8; 4096];
    let mut numbers = [0i32; MAX_START_FDS];
    let mut n = 0;
    let dir_fd = for_each_dir_entry(b"/proc/self/fd\0", &mut buf, |name| {
        if let Some(fd) = parse_decimal(name)
            && fd > 2
            && n < MAX_START_FDS
        {
            numbers[n] = fd as i32;
            n += 1;
        }
    });
    // SAFETY: single-threaded initialisation (see Shared).
    let list = unsafe { &mut *START_FDS.get() };
    let mut kept = 0;
    for &fd in &numbers[..n] {
        if fd == dir_fd {
            continue;
        }
        // SAFETY: a zeroed stat is valid output space; fstat writes it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is writable.
        if unsafe { syscall3(SYS_fstat, fd as usize, &mut st as *mut _ as usize, 0) } == 0 {
            list[kept] = (fd, st.st_dev, st.st_ino);
            kept += 1;
        }
    }
    START_FDS_LEN.store(kept, Ordering::Relaxed);
}

/// Whether descriptor `fd` was open when the program started and is still the same file.
pub(crate) fn inherited_at_start(fd: i32, dev: u64, ino: u64) -> bool {
    // SAFETY: written once at start; read-only afterwards.
    let list = unsafe { &*START_FDS.get() };
    list[..START_FDS_LEN.load(Ordering::Relaxed).min(MAX_START_FDS)].contains(&(fd, dev, ino))
}

/// `CKPT_SHIM_FOREIGN_FDS` as parsed at start.
pub(crate) fn foreign_fds_policy() -> ckpt_image::ForeignFds {
    use ckpt_image::ForeignFds;
    match FOREIGN_FDS.load(Ordering::Relaxed) {
        1 => ForeignFds::Close,
        2 => ForeignFds::Refuse,
        _ => ForeignFds::DevNull,
    }
}

/// Records the command-line and environment areas of this process ([`ARG_AREA`]).
fn record_arg_area() {
    let Ok(stat) = std::fs::read("/proc/self/stat") else { return };
    let Some(close) = stat.iter().rposition(|&b| b == b')') else { return };
    let fields: Vec<u64> = String::from_utf8_lossy(&stat[close + 1..])
        .split_ascii_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .collect();
    // Fields 3.. follow the command name: field k is fields[k - 3].
    if let Some(area) = fields.get(45..49) {
        // SAFETY: single-threaded initialisation (see Shared).
        unsafe { (*ARG_AREA.get()).copy_from_slice(area) };
    }
}

/// The signal the timers (and the end-time answer, and `ckpt create`) use: the reserved
/// [`CKPT_SIGNAL`], whatever `CKPT_SIGNALS` says (the program may own those).
pub(crate) fn timer_signal_of(_signals: &[ckpt_core::triggers::SignalSpec]) -> i32 {
    CKPT_SIGNAL
}

pub(crate) fn fill_cstr(dst: &mut [u8], src: &[u8]) {
    if src.len() < dst.len() {
        dst[..src.len()].copy_from_slice(src);
        dst[src.len()] = 0;
    }
}

fn cstr_len(b: &[u8]) -> usize {
    let mut n = 0;
    while n < b.len() && b[n] != 0 {
        n += 1;
    }
    n
}

/// Creates `<socket_dir>/<pid>.<job>.<step>.shim` (raw system calls: the restorer calls this too): only in
/// a directory of this user with mode 0700 (no symlink), afresh (`O_EXCL|O_NOFOLLOW`), with the signals
/// and the process's start time and boot (see [`ckpt_image::Registration`]).
pub(crate) fn register_process() {
    // SAFETY: single-threaded access (see Shared).
    let (dir, suffix, path) = unsafe { (&*REG_DIR.get(), &*REG_SUFFIX.get(), &mut *REG_PATH.get()) };
    let (dl, sl) = (cstr_len(dir), cstr_len(suffix));
    path[0] = 0;
    if dl == 0 || sl == 0 || dl >= dir.len() {
        return;
    }
    let dirfd = open(&dir[..=dl], libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0);
    if dirfd < 0 {
        return;
    }
    let dirfd = dirfd as i32;
    // SAFETY: a zeroed stat is valid output space; fstat writes it; geteuid has no arguments.
    let (st, euid) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let r = syscall3(SYS_fstat, dirfd as usize, &mut st as *mut libc::stat as usize, 0);
        (if r == 0 { Some(st) } else { None }, syscall3(libc::SYS_geteuid, 0, 0, 0) as u32)
    };
    if !st.is_some_and(|st| st.st_uid == euid && st.st_mode & 0o077 == 0) {
        warn(b"not registering for `ckpt create`: the socket directory is not a private (0700) directory of yours");
        close(dirfd);
        return;
    }
    let mut name = [0u8; 128];
    let mut n = 0;
    put_u64(&mut name, &mut n, getpid() as u64);
    put(&mut name, &mut n, &suffix[..sl]);
    if n >= name.len() {
        close(dirfd);
        return;
    }
    name[n] = 0;
    // SAFETY: a live directory descriptor and NUL-terminated names.
    let fd = unsafe {
        syscall3(libc::SYS_unlinkat, dirfd as usize, name.as_ptr() as usize, 0);
        syscall6(
            SYS_openat,
            dirfd as usize,
            name.as_ptr() as usize,
            (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW) as usize,
            0o600,
            0,
            0,
        )
    };
    close(dirfd);
    if fd < 0 {
        return;
    }
    let mut text = [0u8; 256];
    let mut t = 0;
    put(&mut text, &mut t, b"signal=");
    put_u64(&mut text, &mut t, TIMER_SIGNAL.load(Ordering::Relaxed) as u64);
    put(&mut text, &mut t, b"\nexit_signal=");
    put_u64(&mut text, &mut t, EXIT_SIGNAL.load(Ordering::Relaxed) as u64);
    put(&mut text, &mut t, b"\nstart=");
    put_u64(&mut text, &mut t, ROOT_START.load(Ordering::Relaxed));
    put(&mut text, &mut t, b"\nboot=");
    // SAFETY: single-threaded access (see Shared).
    let boot = unsafe { &*BOOT_ID.get() };
    put(&mut text, &mut t, &boot[..cstr_len(boot)]);
    put(&mut text, &mut t, b"\n");
    write_all(fd as i32, &text[..t]);
    close(fd as i32);
    let mut pos = 0;
    put(path, &mut pos, &dir[..dl]);
    put(path, &mut pos, b"/");
    put(path, &mut pos, &name[..n]);
    if pos < path.len() {
        path[pos] = 0;
    } else {
        path[0] = 0;
    }
}

/// Removes the registration file (raw unlink).
pub(crate) fn unregister_process() {
    // SAFETY: single-threaded access (see Shared).
    let path = unsafe { &*REG_PATH.get() };
    let n = cstr_len(path);
    if n > 0 && n < path.len() {
        // SAFETY: a NUL-terminated path.
        unsafe { syscall3(libc::SYS_unlink, path.as_ptr() as usize, 0, 0) };
    }
}

extern "C" fn unregister_at_exit() {
    // Children that inherited the handler list must not remove the parent's registration.
    if getpid() == ROOT_PID.load(Ordering::Relaxed) {
        unregister_process();
    }
}

/// Arms the interval (monotonic, periodic) and deadline (wall clock, absolute) timers. Raw syscalls only:
/// the restorer calls this too.
pub(crate) fn arm_timers(interval_ns: u64, deadline_unix_ns: u64) {
    DEADLINE_AT.store(deadline_unix_ns, Ordering::Relaxed);
    let signo = TIMER_SIGNAL.load(Ordering::Relaxed);
    let make = |clock: i32, code: usize| -> i64 {
        // struct sigevent: sigev_value (8), sigev_signo (4), sigev_notify (4), padding to 64 bytes.
        let mut ev = [0u8; 64];
        ev[..8].copy_from_slice(&(code as u64).to_le_bytes());
        ev[8..12].copy_from_slice(&signo.to_le_bytes());
        ev[12..16].copy_from_slice(&(libc::SIGEV_SIGNAL).to_le_bytes());
        let mut id: i32 = -1;
        // SAFETY: `ev` is a valid kernel sigevent and `id` a writable timer_t.
        let r =
            unsafe { syscall3(SYS_timer_create, clock as usize, ev.as_ptr() as usize, &mut id as *mut i32 as usize) };
        if r < 0 { -1 } else { id as i64 }
    };
    let set = |id: i64, flags: usize, value_ns: u64, interval_ns: u64| {
        let its: [i64; 4] = [
            (interval_ns / 1_000_000_000) as i64,
            (interval_ns % 1_000_000_000) as i64,
            (value_ns / 1_000_000_000) as i64,
            (value_ns % 1_000_000_000) as i64,
        ];
        // SAFETY: `its` is a valid itimerspec; the old value is not requested.
        unsafe { syscall6(SYS_timer_settime, id as usize, flags, its.as_ptr() as usize, 0, 0, 0) };
    };
    if interval_ns > 0 {
        let id = make(libc::CLOCK_MONOTONIC, TIMER_INTERVAL);
        if id >= 0 {
            set(id, 0, interval_ns, interval_ns);
        }
        INTERVAL_TIMER.store(id, Ordering::Relaxed);
    } else {
        INTERVAL_TIMER.store(-1, Ordering::Relaxed);
    }
    if deadline_unix_ns > 0 {
        let id = make(libc::CLOCK_REALTIME, TIMER_DEADLINE);
        if id >= 0 {
            set(id, libc::TIMER_ABSTIME as usize, deadline_unix_ns.max(1), 0);
        }
        DEADLINE_TIMER.store(id, Ordering::Relaxed);
    } else {
        DEADLINE_TIMER.store(-1, Ordering::Relaxed);
    }
}

/// The job's deadline the deadline timer was armed for (unix ns; 0: none): armed again when retries of a
/// checkpoint-and-exit, which use the same timer, end with the program going on.
static DEADLINE_AT: AtomicU64 = AtomicU64::new(0);

/// Replaces the deadline timer with one firing at the job's deadline `unix_ns` (async-signal-safe: the
/// handler calls it when the background end-time query answers).
fn arm_deadline(unix_ns: u64) {
    DEADLINE_AT.store(unix_ns, Ordering::Relaxed);
    arm_deadline_timer(unix_ns);
}

/// Replaces the deadline timer with one firing at `unix_ns`.
fn arm_deadline_timer(unix_ns: u64) {
    let old = DEADLINE_TIMER.swap(-1, Ordering::Relaxed);
    if old >= 0 {
        // SAFETY: deletes a timer this process created.
        unsafe { syscall3(libc::SYS_timer_delete, old as usize, 0, 0) };
    }
    let signo = TIMER_SIGNAL.load(Ordering::Relaxed);
    let mut ev = [0u8; 64];
    ev[..8].copy_from_slice(&(TIMER_DEADLINE as u64).to_le_bytes());
    ev[8..12].copy_from_slice(&signo.to_le_bytes());
    ev[12..16].copy_from_slice(&(libc::SIGEV_SIGNAL).to_le_bytes());
    let mut id: i32 = -1;
    // SAFETY: `ev` is a valid kernel sigevent and `id` a writable timer_t.
    let r = unsafe {
        syscall3(SYS_timer_create, libc::CLOCK_REALTIME as usize, ev.as_ptr() as usize, &mut id as *mut i32 as usize)
    };
    if r < 0 {
        return;
    }
    let ns = unix_ns.max(1);
    let its: [i64; 4] = [0, 0, (ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64];
    // SAFETY: `its` is a valid itimerspec; the old value is not requested.
    unsafe { syscall6(SYS_timer_settime, id as usize, libc::TIMER_ABSTIME as usize, its.as_ptr() as usize, 0, 0, 0) };
    DEADLINE_TIMER.store(id as i64, Ordering::Relaxed);
}

/// Seconds between the checkpoint-and-exit and the job's end under `cfg` (the same rule as
/// [`ckpt_core::triggers::timer_plan`], which computes it).
pub(crate) fn deadline_lead(cfg: &ckpt_core::Config) -> f64 {
    const END: f64 = 4_000_000_000.0;
    let mut c = cfg.clone();
    c.job_id = None;
    c.end_time = Some(END as i64);
    ckpt_core::triggers::timer_plan(&c).checkpoint_at.map(|at| (END - at).max(0.0)).unwrap_or(0.0)
}

/// Asks squeue for the end time of `job` without ever making the program wait: a detached process
/// (double fork, stdio on /dev/null, every other descriptor closed, no SIGCHLD to the program) runs the
/// query with a bounded timeout and answers with a `sigqueue` of the timer signal carrying the unix
/// second to checkpoint at (`END_TIME_TAG`); the handler then arms the deadline timer. The answer is
/// sent only while the root process is still the same one (pid and start time). Nothing waits for the
/// query, neither at start nor at exit.
pub(crate) fn spawn_end_time_query(job: &str, lead: f64, signal: i32) {
    let root = getpid();
    let root_start = ROOT_START.load(Ordering::Relaxed);
    // SAFETY: clone without flags or stack: a fork with no SIGCHLD and no atfork handlers; the child
    // continues below and only exits or forks once more.
    let mid = unsafe { syscall6(libc::SYS_clone, 0, 0, 0, 0, 0, 0) };
    if mid == 0 {
        fix_cached_tid();
        // SAFETY: fork in the single-threaded intermediate process; the grandchild runs the query.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            end_time_query(job, lead, signal, root, root_start);
        }
        exit_group(0);
    }
    if mid > 0 {
        // Our own clone child, which exits at once.
        wait_child(mid as i32);
    }
}

/// After a raw clone, glibc's cached thread id is still the parent's: correct it.
fn fix_cached_tid() {
    let off = TID_OFFSET.load(Ordering::Relaxed);
    if off < 0 {
        return;
    }
    let mut fs: u64 = 0;
    // SAFETY: ARCH_GET_FS writes the FS base; the tid slot is inside the thread control block.
    unsafe {
        syscall3(SYS_arch_prctl, ARCH_GET_FS as usize, &mut fs as *mut u64 as usize, 0);
        std::ptr::write_volatile((fs + off as u64) as *mut i32, gettid());
    }
}

/// The detached query process (see [`spawn_end_time_query`]); never returns.
fn end_time_query(job: &str, lead: f64, signal: i32, root: i32, root_start: u64) -> ! {
    // SAFETY: this process is single-threaded and owns its descriptors and environment.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        syscall3(SYS_close_range, 3, u32::MAX as usize, 0);
        // squeue and its children must not load the shim's machinery again.
        libc::setenv(c"CKPT_PRELOAD_DISABLE".as_ptr(), c"1".as_ptr(), 1);
    }
    let same_root = || ckpt_image::process_start_time(root as u32).is_ok_and(|s| s == root_start);
    match ckpt_core::triggers::query_squeue_end_time(job, END_TIME_QUERY_TIMEOUT) {
        Ok(Some(end)) => {
            let at = (end as f64 - lead).max(1.0) as u64;
            writer::log_line(&serde_json::json!({
                "event": "end-time", "pid": root, "end_time": end, "end_time_source": "squeue",
                "deadline_checkpoint_at": at,
            }));
            if same_root() && at < (1 << 48) {
                // SAFETY: a zeroed siginfo with the fields rt_sigqueueinfo reads; the value is an integer.
                unsafe {
                    let mut info: libc::siginfo_t = std::mem::zeroed();
                    let words = &mut info as *mut libc::siginfo_t as *mut i32;
                    // si_signo, si_errno, si_code; then si_pid, si_uid, si_value (at byte 24).
                    *words = signal;
                    *words.add(2) = SI_QUEUE;
                    *words.add(4) = getpid();
                    *words.add(5) = syscall3(libc::SYS_getuid, 0, 0, 0) as i32;
                    *((words as *mut u8).add(24) as *mut usize) = END_TIME_TAG << 48 | at as usize;
                    syscall3(libc::SYS_rt_sigqueueinfo, root as usize, signal as usize, &info as *const _ as usize);
                }
            }
        }
        Ok(None) => writer::log_line(&serde_json::json!({"event": "end-time", "pid": root, "end_time": null,
            "end_time_source": "squeue"})),
        Err(e) => writer::log_line(&serde_json::json!({"event": "end-time", "pid": root, "end_time": null,
            "end_time_source": "squeue", "end_time_error": e.to_string()})),
    }
    exit_group(0)
}

fn resolve_real_sigaction() {
    // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds libc's definition after ours.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"sigaction".as_ptr()) };
    REAL_SIGACTION.store(p as usize, Ordering::Release);
}

type SigactionFn = unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;

fn real_sigaction() -> Option<SigactionFn> {
    if REAL_SIGACTION.load(Ordering::Acquire) == 0 {
        resolve_real_sigaction();
    }
    let p = REAL_SIGACTION.load(Ordering::Acquire);
    // SAFETY: a non-null result of dlsym("sigaction") is libc's sigaction.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, SigactionFn>(p) })
}

fn install_handler(sig: c_int) -> Result<(), String> {
    let real = real_sigaction().ok_or("libc's sigaction not found")?;
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO signature.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = checkpoint_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigfillset(&mut sa.sa_mask);
        if real(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    Ok(())
}

/// Finds glibc's cached tid in the thread control block, the rseq registration and errno's address.
pub(crate) fn find_thread_state() {
    let mut fs: u64 = 0;
    // SAFETY: ARCH_GET_FS writes the FS base into `fs`.
    unsafe { syscall3(SYS_arch_prctl, ARCH_GET_FS as usize, &mut fs as *mut u64 as usize, 0) };
    let tid = gettid();
    // glibc keeps `tid` in struct pthread (offset 720 on x86_64 since 2.11): prefer it, else scan.
    let probe = |off: u64| -> bool {
        // SAFETY: the TCB is at least 2 KiB of readable memory at the FS base.
        unsafe { std::ptr::read_volatile((fs + off) as *const i32) == tid }
    };
    let offset = if probe(720) { Some(720) } else { (0..2048u64).step_by(4).find(|&o| probe(o)) };
    TID_OFFSET.store(offset.map(|o| o as i64).unwrap_or(-1), Ordering::Relaxed);
    MAIN_FS_BASE.store(fs, Ordering::Relaxed);
    // SAFETY: __errno_location has no preconditions.
    ERRNO_ADDR.store(unsafe { libc::__errno_location() } as usize, Ordering::Relaxed);
    if let Some((addr, len, sig)) = probe_rseq() {
        RSEQ_ADDR.store(addr, Ordering::Relaxed);
        RSEQ_LEN.store(len, Ordering::Relaxed);
        RSEQ_SIG.store(sig, Ordering::Relaxed);
    }
}

/// This thread's rseq registration (address, length, signature), if any: glibc >= 2.35 registers
/// struct rseq at thread pointer + `__rseq_offset`. The restorer asks too, in the new process.
pub(crate) fn probe_rseq() -> Option<(u64, u32, u32)> {
    let mut fs: u64 = 0;
    // SAFETY: ARCH_GET_FS writes the FS base into `fs`.
    unsafe { syscall3(SYS_arch_prctl, ARCH_GET_FS as usize, &mut fs as *mut u64 as usize, 0) };
    // SAFETY: dlsym with NUL-terminated names; the symbols, when present, are a ptrdiff_t and an unsigned int.
    let (off, size) = unsafe {
        let o = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize;
        let s = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
        if o.is_null() || s.is_null() { (0, 0) } else { (*o, *s) }
    };
    if size == 0 {
        return None;
    }
    let addr = (fs as i64 + off as i64) as u64;
    const SIG: u32 = 0x5305_3053;
    // The kernel answers EBUSY only for the exact registered area, length and signature.
    [32u32, size, 20].into_iter().find_map(|len| {
        // SAFETY: rseq with flags 0 on an already registered area only compares and fails.
        let r = unsafe { syscall6(SYS_rseq, addr as usize, len as usize, 0, SIG as usize, 0, 0) };
        (r == -(libc::EBUSY as isize)).then_some((addr, len, SIG))
    })
}

// -------------------------------------------------------------------------------------------- the handler

/// The handler of every checkpoint signal. Async-signal-safe: raw system calls and static memory only.
extern "C" fn checkpoint_handler(sig: c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    let errno_addr = ERRNO_ADDR.load(Ordering::Relaxed) as *mut i32;
    // SAFETY: errno's address was taken at start for this (the only) thread.
    let saved_errno = if errno_addr.is_null() { 0 } else { unsafe { *errno_addr } };
    let sig_u = sig as usize;
    let mut mode = if sig_u < NSIG { SIGNAL_MODE[sig_u].load(Ordering::Relaxed) } else { 0 };
    if mode == MODE_TREE {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let (code, value) = unsafe { ((*info).si_code, (*info).si_value().sival_ptr as usize) };
        eintr::CONSUMED.fetch_add(1, Ordering::Relaxed);
        if ACTIVE.load(Ordering::Acquire)
            && getpid() != ROOT_PID.load(Ordering::Relaxed)
            && tree::is_request(code, value)
        {
            tree::member_checkpoint(value, uctx as usize, saved_errno);
        }
        if !errno_addr.is_null() {
            // SAFETY: as above.
            unsafe { *errno_addr = saved_errno };
        }
        return;
    }
    if mode == MODE_PARK {
        // Another thread takes a checkpoint: stop here until it has forked its writer. A call this
        // interrupted is resumed (`eintr`).
        eintr::CONSUMED.fetch_add(1, Ordering::Relaxed);
        threads::park(uctx as usize);
        return;
    }
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, value) = unsafe { ((*info).si_code, (*info).si_value().sival_ptr as usize) };
    if code == SI_QUEUE && value >> 48 == END_TIME_TAG {
        // The background end-time query's answer: arm the deadline, nothing else.
        eintr::CONSUMED.fetch_add(1, Ordering::Relaxed);
        if ACTIVE.load(Ordering::Acquire) && getpid() == ROOT_PID.load(Ordering::Relaxed) {
            arm_deadline(((value & ((1 << 48) - 1)) as u64).saturating_mul(1_000_000_000));
        }
        if !errno_addr.is_null() {
            // SAFETY: as above.
            unsafe { *errno_addr = saved_errno };
        }
        return;
    }
    let from_timer = code == SI_TIMER && (value == TIMER_INTERVAL || value == TIMER_DEADLINE);
    if from_timer {
        mode = if value == TIMER_DEADLINE { 2 } else { 1 };
    } else if sig != CKPT_SIGNAL && sig != CKPT_EXIT_SIGNAL && (program_handles(sig) || self_sent(code, info)) {
        // SIGUSR1/SIGTERM with a handler of the program's own, or raised by the program itself (xz resets
        // SIGTERM to SIG_DFL and raises it to die after cleaning up): the program's business, not a request.
        mode = 0;
    }
    let ours = ACTIVE.load(Ordering::Acquire) && getpid() == ROOT_PID.load(Ordering::Relaxed);
    if !ours || mode == 0 {
        // A checkpoint request reaching a member of a process tree (Slurm's `--signal` and `scancel
        // --signal` reach every process of a step): the root takes the tree's checkpoint. A request to
        // continue is the root's alone; for one that ends the program, the member waits for the root's
        // checkpoint to come and go, then gets the signal's action.
        if !ours && mode != 0 && !from_timer && ACTIVE.load(Ordering::Acquire) {
            if mode == 1 {
                eintr::CONSUMED.fetch_add(1, Ordering::Relaxed);
                if !errno_addr.is_null() {
                    // SAFETY: as above.
                    unsafe { *errno_addr = saved_errno };
                }
                return;
            }
            if !tree::hold_term() {
                // Restored from the checkpoint taken meanwhile: the signal belonged to the run that ended.
                if !errno_addr.is_null() {
                    // SAFETY: as above.
                    unsafe { *errno_addr = saved_errno };
                }
                return;
            }
        }
        if from_timer || !emulate_app_action(sig, info, uctx) {
            // No handler of the program ran: a call this signal interrupted is resumed (`eintr`).
            eintr::CONSUMED.fetch_add(1, Ordering::Relaxed);
        }
    } else {
        let exit = mode == 2;
        // Before the checkpoint, so that the image holds it: the call this request interrupted is
        // resumed, in this process and in the restarted one (`eintr`).
        eintr::CONSUMED.fetch_add(1, Ordering::Relaxed);
        let attempt = take_checkpoint(sig, exit, uctx as usize, saved_errno);
        let request = if from_timer { 0 } else { sig };
        if exit {
            match attempt {
                Attempt::Taken => {
                    if EXIT_RETRY_UNTIL.swap(0, Ordering::Relaxed) != 0 {
                        warn(b"checkpoint taken on a later try");
                    }
                    die_by_default(libc::SIGTERM)
                }
                Attempt::Again => {}
                Attempt::Passing if retry_exit_later(request) => {}
                Attempt::Refused | Attempt::Passing => {
                    // No checkpoint: the program gets the signal as if the shim were not there (a timer's
                    // checkpoint-and-exit: the program goes on).
                    let requested = end_exit_retries(request);
                    if requested > 0 {
                        emulate_app_action(requested, info, uctx);
                    }
                }
            }
        }
    }
    if !errno_addr.is_null() {
        // SAFETY: as above.
        unsafe { *errno_addr = saved_errno };
    }
}

/// Whether the process sent `info`'s signal to itself (`raise`, `kill(getpid())`, `tgkill`).
fn self_sent(code: i32, info: *const libc::siginfo_t) -> bool {
    const SI_USER: i32 = 0;
    const SI_TKILL: i32 = -6;
    // SAFETY: the kernel passes a valid siginfo; si_pid is defined for SI_USER and SI_TKILL.
    (code == SI_USER || code == SI_TKILL) && unsafe { (*info).si_pid() } == getpid()
}

/// Whether the program installed a handler function of its own for `sig` (not SIG_DFL or SIG_IGN).
fn program_handles(sig: c_int) -> bool {
    if sig <= 0 || sig as usize >= NSIG {
        return false;
    }
    // SAFETY: single-threaded access (see Shared).
    let h = unsafe { (*APP_ACTIONS.get())[sig as usize].handler };
    h != libc::SIG_DFL && h != libc::SIG_IGN
}

/// Runs the program's own action for `sig` (its handler, ignore, or the default action); returns
/// whether a handler of the program ran.
fn emulate_app_action(sig: c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) -> bool {
    if sig <= 0 || sig as usize >= NSIG {
        return false;
    }
    // SAFETY: single-threaded access (see Shared).
    let action = unsafe { (*APP_ACTIONS.get())[sig as usize] };
    match action.handler {
        libc::SIG_IGN => {}
        libc::SIG_DFL => {
            let ignored_by_default = [libc::SIGCHLD, libc::SIGURG, libc::SIGWINCH, libc::SIGCONT];
            if !ignored_by_default.contains(&sig) {
                die_by_default(sig);
            }
        }
        h => {
            if action.flags & libc::SA_RESETHAND != 0 {
                // SAFETY: single-threaded access.
                unsafe { (*APP_ACTIONS.get())[sig as usize].handler = libc::SIG_DFL };
            }
            if action.flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the program registered this function with SA_SIGINFO.
                let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) = unsafe { std::mem::transmute(h) };
                f(sig, info, uctx);
            } else {
                // SAFETY: the program registered this function as a plain handler.
                let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
            return true;
        }
    }
    false
}

/// Ends the process by `sig`'s default action (as the shell and Slurm expect to see it).
pub(crate) fn die_by_default(sig: c_int) -> ! {
    if getpid() == ROOT_PID.load(Ordering::Relaxed) {
        unregister_process();
    }
    // kernel struct sigaction: handler, flags, restorer, mask.
    let dfl: [u64; 4] = [0, 0, 0, 0];
    let unblock: u64 = 1u64 << (sig - 1);
    // SAFETY: valid kernel sigaction and sigset pointers; tgkill to ourselves.
    unsafe {
        syscall6(SYS_rt_sigaction, sig as usize, dfl.as_ptr() as usize, 0, 8, 0, 0);
        syscall6(SYS_rt_sigprocmask, libc::SIG_UNBLOCK as usize, &unblock as *const u64 as usize, 0, 8, 0, 0);
        syscall3(SYS_tgkill, getpid() as usize, gettid() as usize, sig as usize);
    }
    exit_group(128 + sig)
}

/// Waits for the writer of the previous checkpoint (one checkpoint at a time).
pub(crate) fn wait_previous_writer() {
    let prev = WRITER_PID.swap(0, Ordering::Relaxed);
    if prev > 0 {
        wait_child(prev);
    }
}

/// What became of a checkpoint attempt.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attempt {
    /// Taken: with `exit` the image is committed, otherwise its writer runs.
    Taken,
    /// Refused or failed (the reason is on stderr and in the log).
    Refused,
    /// Refused for a state that lasts an instant (`tree::Refusal::transient`): worth trying again.
    Passing,
    /// Another thread was taking one: the request is raised again, for after it.
    Again,
}

/// A checkpoint-and-exit refused for a state that passes (a child that exited and is not reaped yet, a
/// `system()` call) is tried again every `EXIT_RETRY_EVERY_NS` on average (1-9 ms, at random) for up to
/// `EXIT_RETRY_FOR_NS` (the
/// program runs in between and reaps its child), instead of ending the program without its last
/// checkpoint: a program that starts short commands all the time (a driver script, `make`) is in such a
/// state for a moment at any instant, and the time limit's SIGTERM would otherwise lose the job's work
/// since the previous checkpoint. The retries go through the deadline timer, which ends in a
/// checkpoint-and-exit either way.
const EXIT_RETRY_EVERY_NS: u64 = 5_000_000;
const EXIT_RETRY_FOR_NS: u64 = 1_000_000_000;
/// When the retries of a refused checkpoint-and-exit end (`CLOCK_MONOTONIC` ns; 0: none in progress).
static EXIT_RETRY_UNTIL: AtomicU64 = AtomicU64::new(0);
/// The signal that asked for that checkpoint-and-exit (0: the deadline timer): the program gets its
/// action if every retry is refused.
static EXIT_RETRY_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Arranges another try of a checkpoint-and-exit asked for by `request` (0: the deadline timer) and
/// refused for a passing state; false once the retries are over.
fn retry_exit_later(request: c_int) -> bool {
    let now = monotonic_ns();
    let until = EXIT_RETRY_UNTIL.load(Ordering::Relaxed);
    if until == 0 {
        EXIT_RETRY_UNTIL.store(now + EXIT_RETRY_FOR_NS, Ordering::Relaxed);
        warn(b"trying the checkpoint again every few milliseconds for up to 1 s");
    } else if now >= until {
        return false;
    }
    if request > 0 {
        EXIT_RETRY_SIGNAL.store(request, Ordering::Relaxed);
    }
    // A random delay of 1-9 ms: a fixed one can fall in step with a program's own period (a child
    // started and reaped every 10 ms) and meet the unreaped child at every try.
    let jitter = (now ^ (now >> 13)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    arm_deadline_timer(realtime_ns() + 1_000_000 + jitter % (2 * EXIT_RETRY_EVERY_NS - 2_000_000));
    true
}

/// Ends the retries of a checkpoint-and-exit (saying so when there were some); returns the signal whose
/// action the program gets now: `request`, or the one that asked first (0: none, a timer asked).
fn end_exit_retries(request: c_int) -> c_int {
    if EXIT_RETRY_UNTIL.swap(0, Ordering::Relaxed) != 0 {
        refuse(b"still refused after trying again for 1 s (the first reason is above)");
        // A program that goes on (it ignores the signal, or a timer asked) keeps its job's deadline.
        let at = DEADLINE_AT.load(Ordering::Relaxed);
        if at > realtime_ns() {
            arm_deadline_timer(at);
        }
    }
    let first = EXIT_RETRY_SIGNAL.swap(0, Ordering::Relaxed);
    if request > 0 { request } else { first }
}

/// Forgets retries in progress (a restored process: they belonged to the run that ended).
pub(crate) fn reset_exit_retries() {
    EXIT_RETRY_UNTIL.store(0, Ordering::Relaxed);
    EXIT_RETRY_SIGNAL.store(0, Ordering::Relaxed);
}

/// Checks what cannot be checkpointed, records what the writer needs, and forks it; with `exit`, waits
/// for the image to be committed.
fn take_checkpoint(sig: c_int, exit: bool, ucontext: usize, errno: i32) -> Attempt {
    let t0 = monotonic_ns();
    wait_previous_writer();
    let mut dirbuf = [0u8; 4096];
    // Every other thread stopped in the park handler (threads.rs); this one's frame recorded too.
    let multi = count_dir_entries(b"/proc/self/task\0", &mut dirbuf) > 1;
    if multi {
        match threads::stop_others(ucontext) {
            Ok(_) => {}
            Err(threads::StopError::Busy) => {
                // Another thread is taking a checkpoint: be one of the threads it stops, then ask again
                // (the signal is blocked in this handler: it is delivered once the handler returns).
                threads::park(ucontext);
                // SAFETY: tgkill to this thread.
                unsafe { syscall3(SYS_tgkill, getpid() as usize, gettid() as usize, sig as usize) };
                return Attempt::Again;
            }
            Err(threads::StopError::Refused(why, tid)) => {
                let mut msg = [0u8; 200];
                let mut pos = 0;
                put(&mut msg, &mut pos, why);
                if tid > 0 {
                    put_u64(&mut msg, &mut pos, tid as u64);
                    put(&mut msg, &mut pos, b"; it may block every signal for long, or be stopped)");
                }
                refuse(&msg[..pos]);
                return Attempt::Refused;
            }
        }
    } else {
        threads::NSLOTS.store(0, Ordering::Release);
        threads::record_self(ucontext);
    }
    let release = || {
        if multi {
            threads::release();
        }
    };
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed) + 1;
    // The child processes, stopped too (tree.rs).
    let members = match tree::stop_members(sequence) {
        Ok(n) => n,
        Err(why) => {
            // Retries of a checkpoint-and-exit say nothing until they end (see `retry_exit_later`).
            if EXIT_RETRY_UNTIL.load(Ordering::Relaxed) == 0 {
                refuse(why.text());
            }
            release();
            return if why.transient && exit { Attempt::Passing } else { Attempt::Refused };
        }
    };
    let pid = match fork_writer_at(errno, ucontext, exit, members > 0, false, t0, sequence) {
        Ok(pid) => pid,
        Err(why) => {
            refuse(why);
            tree::abort_members();
            release();
            return Attempt::Refused;
        }
    };
    let members_ok = tree::members_forked(exit);
    if !exit {
        WRITER_PID.store(pid, Ordering::Relaxed);
        tree::finish(false, false);
        release();
        return Attempt::Taken;
    }
    let status = wait_child(pid);
    let ok = members_ok && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    tree::finish(true, ok);
    if !ok {
        // No image: the program goes on (or gets the signal's own action).
        release();
        return Attempt::Refused;
    }
    Attempt::Taken
}

/// A member's writer (tree.rs): records what the writer needs and forks it; its pid, or -1.
pub(crate) fn fork_writer(errno: i32, ucontext: usize, exit: bool, member: bool) -> i32 {
    let sequence = tree::TREE_SEQ.load(Ordering::Relaxed);
    match fork_writer_at(errno, ucontext, exit, true, member, monotonic_ns(), sequence) {
        Ok(pid) => pid,
        Err(why) => {
            warn(why);
            -1
        }
    }
}

/// Records the descriptors, timers and registers' location, copies the pipes' unread bytes (in a
/// tree), and forks the writer (a raw clone). The caller has stopped every thread.
fn fork_writer_at(
    errno: i32,
    ucontext: usize,
    exit: bool,
    tree: bool,
    member: bool,
    t0: u64,
    sequence: u64,
) -> Result<i32, &'static [u8]> {
    let mut dirbuf = [0u8; 4096];
    // SAFETY: only the coordinating thread runs (the others are stopped); the writer reads its own copy.
    let snap = unsafe { &mut *SNAPSHOT.get() };
    if !snapshot_fds(snap, &mut dirbuf) {
        return Err(b"more than 1024 open file descriptors");
    }
    for (which, slot) in snap.itimers.iter_mut().enumerate() {
        let mut it = [0i64; 4];
        // SAFETY: `it` is a writable struct itimerval.
        unsafe { syscall3(libc::SYS_getitimer, which, it.as_mut_ptr() as usize, 0) };
        *slot = [(it[0] * 1_000_000 + it[1]) as u64, (it[2] * 1_000_000 + it[3]) as u64];
    }
    snap.t0_ns = t0;
    // SAFETY: getppid has no arguments.
    snap.ppid = unsafe { syscall3(libc::SYS_getppid, 0, 0, 0) } as i32;
    snap.ucontext = ucontext;
    snap.errno = errno;
    // SAFETY: __errno_location only returns this thread's errno address.
    snap.errno_addr = unsafe { libc::__errno_location() } as usize;
    snap.exit = exit;
    snap.sequence = sequence;
    snap.pid = getpid();
    snap.tree = tree;
    snap.member = member;
    if tree {
        tree::capture_pipes(snap);
    }
    // A fork without SIGCHLD (exit signal 0): the program's wait() never sees it, atfork handlers do not run.
    // SAFETY: clone with no flags and no new stack behaves like fork; the child continues below.
    let pid = unsafe { syscall6(libc::SYS_clone, 0, 0, 0, 0, 0, 0) };
    if pid == 0 {
        writer::run_writer();
    }
    tree::close_scratch();
    if pid < 0 {
        return Err(b"clone failed (out of memory or process limit)");
    }
    Ok(pid as i32)
}

/// Counts the entries of a directory other than `.` and `..` (raw getdents64).
pub(crate) fn count_dir_entries(path: &[u8], buf: &mut [u8]) -> usize {
    let mut count = 0;
    for_each_dir_entry(path, buf, |_| count += 1);
    count
}

/// Calls `f` with every entry name of a directory other than `.` and `..`; returns the directory's fd
/// number while it was open (so callers can skip it), or -1.
pub(crate) fn for_each_dir_entry(path: &[u8], buf: &mut [u8], mut f: impl FnMut(&[u8])) -> i32 {
    let fd = open(path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0);
    if fd < 0 {
        return -1;
    }
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { syscall3(SYS_getdents64, fd as usize, buf.as_mut_ptr() as usize, buf.len()) };
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off + 19 < n as usize {
            let reclen = u16::from_le_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name_start = off + 19;
            let mut name_end = name_start;
            while name_end < off + reclen && name_end < buf.len() && buf[name_end] != 0 {
                name_end += 1;
            }
            let name = &buf[name_start..name_end];
            if name != b"." && name != b".." {
                f(name);
            }
            off += reclen;
        }
    }
    close(fd as i32);
    fd as i32
}

pub(crate) fn parse_decimal(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 18 {
        return None;
    }
    let mut v = 0i64;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (b - b'0') as i64;
    }
    Some(v)
}

/// Records every open descriptor's flags, offset and size now (the program moves them after the fork).
fn snapshot_fds(snap: &mut Snapshot, buf: &mut [u8]) -> bool {
    let mut nfds = 0usize;
    let mut overflow = false;
    let mut numbers = [0i32; MAX_FDS];
    let dir_fd = for_each_dir_entry(b"/proc/self/fd\0", buf, |name| {
        if let Some(fd) = parse_decimal(name) {
            if nfds < MAX_FDS {
                numbers[nfds] = fd as i32;
                nfds += 1;
            } else {
                overflow = true;
            }
        }
    });
    if overflow {
        return false;
    }
    let mut kept = 0;
    for &fd in &numbers[..nfds] {
        if fd == dir_fd || fd == tree::CTL_FD.load(Ordering::Relaxed) {
            continue;
        }
        // SAFETY: a zeroed stat is valid output space.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is writable.
        if unsafe { syscall3(SYS_fstat, fd as usize, &mut st as *mut _ as usize, 0) } < 0 {
            continue;
        }
        // SAFETY: fcntl/lseek on a descriptor have no memory effects.
        let (flags, fdflags, offset) = unsafe {
            (
                syscall3(SYS_fcntl, fd as usize, libc::F_GETFL as usize, 0) as i32,
                syscall3(SYS_fcntl, fd as usize, libc::F_GETFD as usize, 0) as i32,
                syscall3(SYS_lseek, fd as usize, 0, libc::SEEK_CUR as usize) as i64,
            )
        };
        snap.fds[kept] = FdSnap {
            fd,
            mode: st.st_mode,
            flags,
            fdflags,
            offset,
            size: st.st_size as u64,
            dev: st.st_dev,
            ino: st.st_ino,
            mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
            leader: -1,
        };
        kept += 1;
    }
    snap.nfds = kept;
    // Descriptors that share one open file description (`dup`, `2>&1`): each is compared with the
    // earlier first descriptors of the same file only.
    let mut by_kcmp = !NO_KCMP.load(Ordering::Relaxed);
    for i in 0..kept {
        let mut j = 0;
        while j < i {
            let (a, b) = (&snap.fds[j], &snap.fds[i]);
            if a.leader < 0
                && a.dev == b.dev
                && a.ino == b.ino
                && a.mode & libc::S_IFMT == b.mode & libc::S_IFMT
                && same_description(a, b, &mut by_kcmp)
            {
                snap.fds[i].leader = snap.fds[j].fd;
                break;
            }
            j += 1;
        }
    }
    snap.sharing_by_kcmp = by_kcmp;
    true
}

/// Whether descriptors `a` and `b` (of one file) share an open file description. `kcmp(KCMP_FILE)` says
/// so exactly; where it is not available (no CONFIG_KCMP: ENOSYS; seccomp or YAMA: EPERM; `by_kcmp` is
/// then cleared for the rest of the snapshot), a probe: for regular files and directories, `O_NONBLOCK`
/// (a status flag, kept in the description, with no effect on their I/O) is flipped through `a` and read
/// back through `b`, then restored; for pipes, sockets and devices the same object with the same status
/// flags is taken as one description (another description of one pipe or socket is rare: a reopen
/// through `/proc/self/fd`). Runs in the handler, with the program stopped.
fn same_description(a: &FdSnap, b: &FdSnap, by_kcmp: &mut bool) -> bool {
    if *by_kcmp {
        let pid = getpid() as usize;
        // SAFETY: kcmp compares two descriptors of this process; no memory is touched.
        let r = unsafe {
            syscall6(libc::SYS_kcmp, pid, pid, 0 /* KCMP_FILE */, a.fd as usize, b.fd as usize, 0)
        };
        if r >= 0 {
            return r == 0;
        }
        *by_kcmp = false;
    }
    if a.flags != b.flags || a.offset != b.offset {
        return false;
    }
    let fmt = a.mode & libc::S_IFMT;
    if fmt != libc::S_IFREG && fmt != libc::S_IFDIR {
        return true;
    }
    let flipped = a.flags ^ libc::O_NONBLOCK;
    // SAFETY: fcntl on this process's descriptors; the flag is set back right away.
    unsafe {
        if syscall3(SYS_fcntl, a.fd as usize, libc::F_SETFL as usize, flipped as usize) < 0 {
            return false;
        }
        let seen = syscall3(SYS_fcntl, b.fd as usize, libc::F_GETFL as usize, 0) as i32;
        syscall3(SYS_fcntl, a.fd as usize, libc::F_SETFL as usize, a.flags as usize);
        seen & libc::O_NONBLOCK == flipped & libc::O_NONBLOCK
    }
}

// ------------------------------------------------------------------------------------------- interposers

fn managed(sig: c_int) -> bool {
    sig > 0
        && (sig as usize) < NSIG
        && ACTIVE.load(Ordering::Acquire)
        && SIGNAL_MODE[sig as usize].load(Ordering::Relaxed) != 0
        && (getpid() == ROOT_PID.load(Ordering::Relaxed) || RESERVED_MASK & (1 << (sig - 1)) != 0)
}

/// `sigaction(2)`: for the checkpoint signals, records the program's action (and reports its previous
/// one) without giving it to the kernel; for every other signal, libc's `sigaction`.
///
/// # Safety
/// The contract of libc's `sigaction`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    if !managed(sig) {
        return match real_sigaction() {
            // SAFETY: forwarded contract.
            Some(real) => unsafe { real(sig, act, old) },
            None => {
                // SAFETY: errno is thread-local and writable.
                unsafe { *libc::__errno_location() = libc::ENOSYS };
                -1
            }
        };
    }
    // SAFETY: single-threaded access (see Shared); pointers per the sigaction contract.
    unsafe {
        let slot = &mut (*APP_ACTIONS.get())[sig as usize];
        if !old.is_null() {
            let mut o: libc::sigaction = std::mem::zeroed();
            o.sa_sigaction = slot.handler;
            o.sa_flags = slot.flags;
            std::ptr::write_unaligned(&mut o.sa_mask as *mut libc::sigset_t as *mut u64, slot.mask);
            *old = o;
        }
        if !act.is_null() {
            let a = &*act;
            *slot = AppAction {
                handler: a.sa_sigaction,
                flags: a.sa_flags,
                mask: std::ptr::read_unaligned(&a.sa_mask as *const libc::sigset_t as *const u64),
            };
        }
    }
    0
}

fn signal_like(sig: c_int, handler: libc::sighandler_t, flags: c_int) -> libc::sighandler_t {
    // SAFETY: zeroed sigactions are valid; our sigaction follows libc's contract.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        if flags & libc::SA_NODEFER == 0 && sig > 0 && sig < NSIG as c_int {
            libc::sigaddset(&mut sa.sa_mask, sig);
        }
        let mut old: libc::sigaction = std::mem::zeroed();
        if sigaction(sig, &sa, &mut old) != 0 {
            return libc::SIG_ERR;
        }
        old.sa_sigaction
    }
}

/// `signal(3)` with glibc's (BSD) semantics, through the interposed `sigaction`.
///
/// # Safety
/// The contract of libc's `signal`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    signal_like(sig, handler, libc::SA_RESTART)
}

/// `bsd_signal(3)`.
///
/// # Safety
/// The contract of libc's `bsd_signal`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bsd_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    signal_like(sig, handler, libc::SA_RESTART)
}

/// `sysv_signal(3)`: one-shot, not deferred.
///
/// # Safety
/// The contract of libc's `sysv_signal`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    signal_like(sig, handler, libc::SA_RESETHAND | libc::SA_NODEFER)
}

/// glibc's internal name of `sysv_signal`.
///
/// # Safety
/// The contract of libc's `sysv_signal`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    signal_like(sig, handler, libc::SA_RESETHAND | libc::SA_NODEFER)
}

/// `sigset(3)` (System V): installs `handler` (SIG_HOLD is passed to libc for unmanaged signals only).
///
/// # Safety
/// The contract of libc's `sigset`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigset(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    signal_like(sig, handler, 0)
}

/// `set` without the shim's reserved signals, when `how` would block them.
fn unreserved(how: c_int, set: *const libc::sigset_t, copy: &mut libc::sigset_t) -> *const libc::sigset_t {
    if set.is_null() || how == libc::SIG_UNBLOCK || !ACTIVE.load(Ordering::Acquire) {
        return set;
    }
    // SAFETY: a non-null `set` is a valid sigset_t (the caller's contract); `copy` is writable.
    unsafe {
        *copy = *set;
        let words = copy as *mut libc::sigset_t as *mut u64;
        *words &= !RESERVED_MASK;
    }
    copy
}

static REAL_SIGPROCMASK: AtomicUsize = AtomicUsize::new(0);
static REAL_PTHREAD_SIGMASK: AtomicUsize = AtomicUsize::new(0);
type SigmaskFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;

fn real_mask_fn(slot: &AtomicUsize, name: &CStr) -> Option<SigmaskFn> {
    let mut p = slot.load(Ordering::Acquire);
    if p == 0 {
        // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds libc's definition after ours.
        p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
        slot.store(p, Ordering::Release);
    }
    // SAFETY: a non-null result of dlsym for these names is libc's function of this type.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, SigmaskFn>(p) })
}

/// `sigprocmask(2)`: never blocks the shim's reserved checkpoint signals.
///
/// # Safety
/// The contract of libc's `sigprocmask`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigprocmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    let Some(real) = real_mask_fn(&REAL_SIGPROCMASK, c"sigprocmask") else {
        // SAFETY: errno is thread-local and writable.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    };
    // SAFETY: a zeroed sigset_t is valid.
    let mut copy: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: forwarded contract; the set is the caller's or our copy of it.
    unsafe { real(how, unreserved(how, set, &mut copy), old) }
}

/// `pthread_sigmask(3)`: never blocks the shim's reserved checkpoint signals.
///
/// # Safety
/// The contract of libc's `pthread_sigmask`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    let Some(real) = real_mask_fn(&REAL_PTHREAD_SIGMASK, c"pthread_sigmask") else {
        return libc::ENOSYS;
    };
    // SAFETY: a zeroed sigset_t is valid.
    let mut copy: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: forwarded contract; the set is the caller's or our copy of it.
    unsafe { real(how, unreserved(how, set, &mut copy), old) }
}
