//! Restart: replace the freshly started program with the image, then return into it.
//!
//! `ckpt restart IMAGE` re-executes the saved program (same binary, argv, environment, stack limit,
//! randomization off) with `CKPT_SHIM_RESTORE=IMAGE`. In that process the shim's constructor, before
//! any code of the program runs:
//!
//! 1. opens and verifies the image (CRC of every section) and checks that the address space of this
//!    process matches the checkpoint's (every file mapping at the same address, the vDSO too, one
//!    thread): otherwise it exits with a message instead of crashing later;
//! 2. builds a flat restore plan in a private mapping (the *arena*) placed in a hole of both layouts,
//!    moves to a stack inside it and calls [`restore_main`].
//!
//! [`restore_main`] runs without libc (raw system calls), allocates nothing, and reads only the arena:
//! it unregisters rseq, unmaps everything but the vDSO, the arena and the identical file mappings (the
//! shim's code among them), sets brk, maps every region (files from their files, anonymous memory
//! zero-filled) and reads the saved pages straight into place, restores the thread pointer, the cached
//! tid, rseq, file descriptors (regular files cut back to their checkpoint-time size and repositioned),
//! the working directory, umask, signal actions, interval timers and resource limits, and finally
//! unmaps the arena and issues `rt_sigreturn` on the signal frame saved at checkpoint time: the kernel
//! reloads every register, the FPU/vector state and the signal mask, and the program continues where the
//! checkpoint signal interrupted it.

use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;

use ckpt_image::{FdKind, PendingSignals, ProcessImage, RegionKind, ThreadRecord};

use crate::sys::*;

/// Where the flat plan lives; everything [`restore_main`] touches is inside the arena.
#[repr(C)]
pub struct Plan {
    image_fd: i32,
    arena_start: usize,
    arena_len: usize,
    regions: *const PlanRegion,
    nregions: usize,
    runs: *const PlanRun,
    nruns: usize,
    fds: *mut PlanFd,
    nfds: usize,
    fd_temp_base: i32,
    sigactions: *const [u64; 5],
    nsigactions: usize,
    brk: u64,
    /// Whether the `brk` system call set the break (1) or left it elsewhere (0).
    brk_set: u64,
    fs_base: u64,
    live_rseq: [u64; 3],
    saved_rseq: [u64; 3],
    sigframe: u64,
    errno_addr: u64,
    errno_value: i32,
    itimers: [[i64; 4]; 3],
    cwd: *const u8,
    umask: u32,
    /// The program's resource limits (resource, soft, hard), set once its descriptors are reopened.
    rlimits: [[u64; 3]; MAX_RLIMITS],
    nrlimits: usize,
    maps_buf: *mut u8,
    maps_cap: usize,
    interval_ns: u64,
    deadline_ns: u64,
    log_path: *const u8,
    log_prefix: *const u8,
    log_prefix_len: usize,
    t0_ns: u64,
    /// Map saved pages from the image (copy-on-write) instead of reading them.
    map_runs: u32,
    image_dev: u64,
    image_ino: u64,
    /// The marker naming the restored process (written over the restored `CKPT_SHIM_ROOT`), its start
    /// time and this boot's id (NUL-terminated), for the registration.
    marker: [u8; ckpt_image::ROOT_MARKER_LEN],
    root_start: u64,
    boot_id: [u8; 64],
    /// `struct prctl_mm_map` of this process (its code, data, brk and stack bounds), to which the
    /// restorer adds the restored command-line and environment areas.
    mm_map: [u64; 13],
    /// This process's own arg_end and env_end (before the restorer changes them).
    mm_arg_end_now: u64,
    mm_env_end_now: u64,
    /// The main thread's robust-futex list head (0: leave the new process's own registration).
    main_robust_head: u64,
    /// The other threads of a multi-threaded image, and the main one (its name and affinity).
    threads: *const PlanThread,
    nthreads: usize,
    main_thread: Option<PlanThread>,
    /// Offset of glibc's cached tid in a thread's control block (-1: unknown).
    tid_offset: i64,
    /// Standard signals pending at checkpoint time for the process and for its main thread.
    pending_shared: u64,
    pending_main: u64,
    /// The file locks to take again once the descriptors are in place.
    locks: *const PlanLock,
    nlocks: usize,
    /// Descriptors `ckpt restart` gave this process for a process tree (sorted, all above every target
    /// number): kept open until each is moved into place.
    given: [i32; MAX_GIVEN],
    ngiven: usize,
    /// A member of a process tree (not the root): the root's pid, and the process's own checkpoint-time
    /// pid (the root's is in `ROOT_PID`).
    member: u32,
    root_pid: i32,
    old_pid: i32,
    /// The process group at checkpoint time (0: unknown, an older image), which keeps naming the group
    /// this process is in now (pid.rs).
    old_pgid: i32,
    /// Pids of the tree (checkpoint-time, now) this process may name: its parent and children.
    pids: [[i32; 2]; MAX_TREE_PIDS],
    npids: usize,
}

/// Most descriptors `ckpt restart` gives a process of a tree.
const MAX_GIVEN: usize = 256;
/// Most pids of a tree a process is told about.
const MAX_TREE_PIDS: usize = 64;

/// A file lock to take again (see [`ckpt_image::FileLock`]).
#[repr(C)]
#[derive(Clone, Copy)]
struct PlanLock {
    fd: i32,
    posix: u32,
    write: u32,
    start: u64,
    len: u64,
}

/// A thread stopped in `wait4`/`waitpid` or `waitid` for one child when the checkpoint signal came has
/// its signal frame set up by the kernel to restart the call (`SA_RESTART`: the instruction pointer back
/// on the `syscall` instruction, the call's number in rax, its arguments in their registers), and
/// rt_sigreturn would restart it with the child's checkpoint-time pid: "No child processes" (which
/// Python's subprocess takes for an exit status of 0), or another child's status. The pid argument is
/// rewritten to the child's pid now, from the tree's pids (checkpoint-time, now). Raw memory of the
/// restored process, no libc: runs in the restorer once the address space is back.
fn retarget_restarted_wait(p: &Plan, frame: u64) {
    // struct ucontext: uc_flags, uc_link, uc_stack (24 bytes), then uc_mcontext, whose general registers
    // are r8-r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip (x86_64 sigcontext).
    const MCONTEXT: u64 = 40;
    const RDI: usize = 8;
    const RSI: usize = 9;
    const RAX: usize = 13;
    const RIP: usize = 16;
    const P_PID: u64 = 1;
    const P_PGID: u64 = 2;
    if frame == 0 {
        return;
    }
    let regs = (frame + MCONTEXT) as *mut u64;
    // SAFETY: the frame is the saved ucontext, in restored memory, mapped and writable (a thread's stack).
    let (nr, rip) = unsafe { (regs.add(RAX).read(), regs.add(RIP).read()) };
    // SAFETY: as above.
    let idtype = unsafe { regs.add(RDI).read() };
    let (pid_reg, group_id) = match nr as libc::c_long {
        libc::SYS_wait4 => (RDI, false),
        libc::SYS_waitid if idtype == P_PID => (RSI, false),
        libc::SYS_waitid if idtype == P_PGID => (RSI, true),
        _ => return,
    };
    // Restarted, not returned: the instruction at rip is `syscall` (0f 05). Code pages are restored and
    // readable.
    // SAFETY: rip is an address of the restored program's code, mapped.
    if rip == 0 || unsafe { (rip as *const [u8; 2]).read_unaligned() } != [0x0f, 0x05] {
        return;
    }
    // SAFETY: as above.
    let then = unsafe { regs.add(pid_reg).read() } as i32;
    // A wait for the process group of the checkpoint (wait4's -pgid, waitid's P_PGID id): the group now.
    let group_then = if group_id { then } else { then.wrapping_neg() };
    if (group_id || then < -1) && crate::pid::is_past_group(group_then) {
        let now = getpgrp();
        if now > 0 {
            let value = if group_id { now } else { -now };
            // SAFETY: as above; the register slot is in the frame.
            unsafe { regs.add(pid_reg).write(value as u32 as u64) };
        }
        return;
    }
    if then <= 0 || group_id {
        return;
    }
    let mut k = 0;
    while k < p.npids && k < MAX_TREE_PIDS {
        if p.pids[k][0] == then {
            // SAFETY: as above; the register slot is in the frame.
            unsafe { regs.add(pid_reg).write(p.pids[k][1] as u32 as u64) };
            return;
        }
        k += 1;
    }
}

/// A thread to recreate (every field a register's worth: the new thread starts in assembly).
#[repr(C)]
#[derive(Clone, Copy)]
struct PlanThread {
    fs_base: u64,
    sigframe: u64,
    robust_head: u64,
    rseq_addr: u64,
    rseq_len: u64,
    rseq_sig: u64,
    /// Standard signals pending for it at checkpoint time (raised again once it exists).
    pending: u64,
    /// Its name (NUL-padded) and CPU affinity (`affinity_words` 64-bit words; 0: leave the restart's).
    name: [u8; 16],
    affinity: [u64; 16],
    affinity_words: usize,
    /// Its tid at checkpoint time.
    tid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PlanRegion {
    start: u64,
    end: u64,
    prot: u32,
    kind: u32,
    keep: u32,
    /// Mapped with `MAP_NORESERVE` at checkpoint time.
    noreserve: u32,
    path: *const u8,
    file_offset: u64,
    run_first: usize,
    run_count: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PlanRun {
    addr: u64,
    len: u64,
    file_offset: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PlanFd {
    fd: i32,
    kind: u32,
    group: u32,
    /// Index of the descriptor whose open file description this one shares (-1: none).
    leader: i32,
    tmp: i32,
    flags: i32,
    cloexec: u32,
    writable_regular: u32,
    shared: u32,
    offset: i64,
    size: u64,
    path: *const u8,
}

const KIND_ANON: u32 = 0;
const KIND_HEAP: u32 = 1;
const KIND_STACK: u32 = 2;
const KIND_FILE: u32 = 3;
const KIND_GUARD: u32 = 4;
const FD_REOPEN: u32 = 0;
const FD_INHERITED: u32 = 1;
const FD_PIPE_READ: u32 = 2;
const FD_PIPE_WRITE: u32 = 3;
const FD_DEV_NULL: u32 = 4;
const FD_CLOSED: u32 = 5;
/// Given by `ckpt restart` (a process tree's pipes and shared files): `tmp` holds it.
const FD_GIVEN: u32 = 6;

/// Resource limits the plan holds (Linux has 16).
const MAX_RLIMITS: usize = 16;
const STACK_SIZE: usize = 256 * 1024;
const MAPS_CAP: usize = 4 * 1024 * 1024;
/// Exit status of a restart that was refused before anything was changed.
pub const EXIT_REFUSED: i32 = 3;
/// Exit status of a restart that failed half-way (the process cannot continue).
pub const EXIT_FAILED: i32 = 4;

fn refuse(image: &str, message: &str) -> ! {
    let line = format!("ckpt restart: cannot restore {image}: {message}\n");
    write_all(2, line.as_bytes());
    exit_group(EXIT_REFUSED)
}

struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    offset: u64,
    path: String,
}

fn current_maps() -> Vec<Mapping> {
    let text = std::fs::read("/proc/self/maps").unwrap_or_default();
    crate::writer::parse_maps(&text)
        .into_iter()
        .map(|m| Mapping {
            start: m.start,
            end: m.end,
            perms: String::from_utf8_lossy(&m.perms).into_owned(),
            offset: m.offset,
            path: String::from_utf8_lossy(&m.path).into_owned(),
        })
        .collect()
}

/// Refuses a restart before anything was changed (exit status 3).
pub(crate) fn refuse_restart(image: &str, message: &str) -> ! {
    refuse(image, message)
}

/// Restores the image `ckpt restart` verified and left open (descriptor `CKPT_SHIM_IMAGE_FD`; its path
/// `image_path` is only named in messages, never opened) into this process (see the module
/// documentation). `nonce` is the one of the marker naming this process. Returns only by exiting.
pub(crate) fn restore_from(image_path: &str, nonce: u64, getenv: &dyn Fn(&str) -> Option<String>) {
    use ckpt_image::{IMAGE_FD_VAR, OpenedFile, RootMarker, verified_token};
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::MetadataExt;
    let t0_ns = monotonic_ns();
    // The descriptor, moved out of the program's way (and closed on exec); the restorer closes it before
    // the program resumes (it closes everything above stderr and reopens the image's own descriptors).
    let Some(fd) = getenv(IMAGE_FD_VAR).and_then(|v| v.trim().parse::<i32>().ok()).filter(|&fd| fd > 2) else {
        refuse(
            image_path,
            "CKPT_SHIM_RESTORE is set without the image's descriptor (CKPT_SHIM_IMAGE_FD): restarts go through \
             `ckpt restart`, which verifies the image and hands over the open file (the shim never opens an \
             image by name)",
        )
    };
    // SAFETY: fcntl/close on a descriptor number; a bad number fails with EBADF.
    let high = unsafe {
        let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 900);
        libc::close(fd);
        h
    };
    if high < 0 {
        refuse(image_path, &format!("descriptor {fd} (CKPT_SHIM_IMAGE_FD) is not open"));
    }
    // SAFETY: duplicates the descriptor just made; the File owns the duplicate.
    let file = unsafe {
        let d = libc::fcntl(high, libc::F_DUPFD_CLOEXEC, 900);
        if d < 0 {
            refuse(image_path, "cannot duplicate the image's descriptor");
        }
        std::fs::File::from_raw_fd(d)
    };
    let meta = match file.metadata() {
        Ok(m) if m.is_file() => m,
        Ok(_) => refuse(image_path, &format!("descriptor {fd} (CKPT_SHIM_IMAGE_FD) is not a regular file")),
        Err(e) => refuse(image_path, &format!("fstat of descriptor {fd}: {e}")),
    };
    // `ckpt restart` verified every CRC a moment ago through this very descriptor and says so with the
    // file's identity (device, inode, size, mtime, owner, mode): it must match what fstat says now.
    // Without that word (a restart set up by hand), the ownership rules and every CRC are checked here.
    let token = verified_token(&meta);
    let verified = match getenv("CKPT_SHIM_VERIFIED") {
        Some(t) if t == token => true,
        Some(t) => refuse(
            image_path,
            &format!(
                "descriptor {fd} is not the file `ckpt restart` verified (it verified {t}, the descriptor is {token}): \
                 refused"
            ),
        ),
        None => {
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            let trust_all = getenv("CKPT_TRUST_IMAGES").is_some_and(|v| v == "1");
            if !trust_all && meta.uid() != me {
                refuse(image_path, &format!("the image is owned by uid {}, not by you (uid {me})", meta.uid()));
            }
            if !trust_all && meta.mode() & 0o022 != 0 {
                refuse(image_path, &format!("the image is writable by other users (mode {:o})", meta.mode() & 0o7777));
            }
            false
        }
    };
    let cp = match ckpt_core::Checkpoint::open_with(
        &OpenedFile(file),
        std::path::Path::new(image_path),
        ckpt_core::LoadOptions::new().mmap(true),
    ) {
        Ok(cp) => cp,
        Err(e) => refuse(image_path, &e.to_string()),
    };
    if !verified && let Err(e) = cp.verify() {
        refuse(image_path, &e.to_string());
    }
    let image = match ckpt_image::read(&cp) {
        Ok(i) => i,
        Err(e) => refuse(image_path, &e.to_string()),
    };
    let memory_offset = match cp.section(ckpt_image::MEMORY_SECTION) {
        Ok(s) => s.offset,
        Err(e) => refuse(image_path, &e.to_string()),
    };
    let limits = match ckpt_image::read_limits(&cp) {
        Ok(l) => l.unwrap_or_default(),
        Err(e) => refuse(image_path, &e.to_string()),
    };
    let noreserve = match ckpt_image::read_noreserve(&cp) {
        Ok(n) => n,
        Err(e) => refuse(image_path, &e.to_string()),
    };
    let group = match ckpt_image::read_group(&cp) {
        Ok(g) => g,
        Err(e) => refuse(image_path, &e.to_string()),
    };
    let threads = match ckpt_image::read_threads(&cp, &image) {
        Ok(t) => t,
        Err(e) => refuse(image_path, &e.to_string()),
    };
    let pending = match ckpt_image::read_pending(&cp) {
        Ok(p) => p,
        Err(e) => refuse(image_path, &e.to_string()),
    };
    let locks = match ckpt_image::read_locks(&cp, &image) {
        Ok(l) => l,
        Err(e) => refuse(image_path, &e.to_string()),
    };
    if threads.len() > crate::threads::MAX_THREADS {
        refuse(
            image_path,
            &format!("the image has {} threads (at most {})", threads.len(), crate::threads::MAX_THREADS),
        );
    }
    // The checkpoint may be memory-mapped: it must not be part of the layout compared below.
    drop(cp);
    let tree = tree_settings(&image, image_path, getenv);
    if let Some(problem) = preflight(&image) {
        refuse(image_path, &problem);
    }
    if let Some(problem) = locks_free(&image, &locks) {
        refuse(image_path, &problem);
    }
    if let Some(problem) = large_regions_mappable(&image, &noreserve) {
        refuse(image_path, &problem);
    }
    warn_foreign_fds(&image, image_path);
    if let Some(problem) = raise_hard_limits(&limits) {
        refuse(image_path, &problem);
    }
    let pid = getpid();
    let start = match ckpt_image::process_start_time(pid as u32) {
        Ok(s) => s,
        Err(e) => refuse(image_path, &format!("/proc/self/stat: {e}")),
    };
    let marker = RootMarker { pid: pid as u32, start, nonce }.format();
    let mut boot_id = [0u8; 64];
    if let Some(b) = ckpt_image::boot_id() {
        crate::fill_cstr(&mut boot_id, b.as_bytes());
    }
    let maps = current_maps();
    // The identical file mappings stay (the shim's code is among them: the restorer runs from it).
    let keep: Vec<(u64, u64, Vec<u8>, u64)> = maps
        .iter()
        .filter(|m| m.path.starts_with('/'))
        .map(|m| (m.start, m.end, m.path.as_bytes().to_vec(), m.offset))
        .collect();
    let (interval_ns, deadline_ns, lead) = parse_triggers(getenv("CKPT_SHIM_TRIGGERS").as_deref());
    // No end time known to `ckpt restart` (and it never asks squeue): ask in the background, as at start.
    if let Some(job) = getenv("CKPT_SHIM_QUERY_JOB").filter(|j| !j.is_empty()) {
        crate::ROOT_START.store(start, Ordering::Relaxed);
        crate::find_thread_state();
        crate::spawn_end_time_query(&job, lead, restored_timer_signal(&image));
    }
    // SAFETY: the image file stays open until restore_main reads it; the plan is built in a fresh mapping.
    unsafe {
        let plan = build_plan(
            &image,
            &threads,
            &pending,
            &locks,
            &noreserve,
            &keep,
            &maps,
            memory_offset,
            image_path,
            interval_ns,
            deadline_ns,
            t0_ns,
        );
        (*plan).image_fd = high;
        for (slot, l) in (*plan).rlimits.iter_mut().zip(&limits) {
            *slot = [l.resource as u64, l.soft, l.hard];
        }
        (*plan).nrlimits = limits.len().min(MAX_RLIMITS);
        (*plan).old_pgid = group.unwrap_or(0);
        (*plan).image_dev = meta.dev();
        (*plan).image_ino = meta.ino();
        (*plan).marker.copy_from_slice(&marker.as_bytes()[..ckpt_image::ROOT_MARKER_LEN]);
        tree.apply(&mut *plan);
        (*plan).root_start = start;
        (*plan).boot_id = boot_id;
        if getenv("CKPT_SHIM_RESTORE_READ").is_some_and(|v| v == "1") {
            (*plan).map_runs = 0;
        }
        // No signal may run a handler in a half-restored process; rt_sigreturn sets the saved mask.
        let all: u64 = !0;
        syscall6(SYS_rt_sigprocmask, libc::SIG_SETMASK as usize, &all as *const u64 as usize, 0, 8, 0, 0);
        let stack_top = ((*plan).arena_start + (*plan).arena_len - 64) & !15;
        switch_stack_and_restore(plan, stack_top);
    }
}

/// What `ckpt restart` told a process of a tree: the descriptors it gives (target, given number), the
/// root's marker (members only) and the pids of the tree.
struct TreeSettings {
    given: Vec<(i32, i32)>,
    root_marker: Option<ckpt_image::RootMarker>,
    pids: Vec<(i32, i32)>,
}

/// Reads `CKPT_SHIM_GIVEN_FDS` (`target:given,...`), `CKPT_SHIM_TREE_ROOT` (a member's root marker)
/// and `CKPT_SHIM_PIDS` (`then:now,...`); moves every given descriptor above all the image's descriptor
/// numbers; refuses an image of a tree whose pipes were not all given.
fn tree_settings(image: &ProcessImage, image_path: &str, getenv: &dyn Fn(&str) -> Option<String>) -> TreeSettings {
    let pairs = |text: Option<String>| -> Vec<(i32, i32)> {
        text.unwrap_or_default()
            .split(',')
            .filter_map(|p| p.split_once(':'))
            .filter_map(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
            .collect()
    };
    let wanted = pairs(getenv("CKPT_SHIM_GIVEN_FDS"));
    if wanted.len() > MAX_GIVEN {
        refuse(image_path, &format!("{} descriptors given (at most {MAX_GIVEN})", wanted.len()));
    }
    // Above every number the image uses and every number given (then the originals are closed).
    let floor = image.fds.iter().map(|f| f.fd).chain(wanted.iter().map(|w| w.1)).max().unwrap_or(2).max(2) + 1;
    let mut given = Vec::with_capacity(wanted.len());
    for &(target, from) in &wanted {
        // SAFETY: fcntl on a descriptor number; a bad number fails with EBADF.
        let moved = unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, floor) };
        if moved < 0 {
            refuse(image_path, &format!("descriptor {from} given for descriptor {target} is not open"));
        }
        given.push((target, moved));
    }
    for &(_, from) in &wanted {
        // SAFETY: closes the given originals (duplicated above).
        unsafe { libc::close(from) };
    }
    for f in image.fds.iter().filter(|f| f.kind == FdKind::TreePipe && f.dup_of.is_none()) {
        if !given.iter().any(|g| g.0 == f.fd) {
            refuse(
                image_path,
                &format!(
                    "descriptor {} is a pipe of a process tree that `ckpt restart` did not give: restart the tree \
                     from its root's image",
                    f.fd
                ),
            );
        }
    }
    let root_marker = getenv("CKPT_SHIM_TREE_ROOT").map(|t| match ckpt_image::RootMarker::parse(&t) {
        Ok(m) => m,
        Err(e) => refuse(image_path, &format!("CKPT_SHIM_TREE_ROOT: {e}")),
    });
    let pids = pairs(getenv("CKPT_SHIM_PIDS"));
    TreeSettings { given, root_marker, pids }
}

impl TreeSettings {
    /// Into the plan: given descriptors replace reopening, a member keeps naming the root.
    ///
    /// # Safety
    /// `plan` was built by `build_plan` (its descriptor table is in the arena).
    unsafe fn apply(&self, plan: &mut Plan) {
        let fds = if plan.nfds == 0 {
            &mut [][..]
        } else {
            // SAFETY: the plan's descriptor table, `nfds` records in the arena, used by nothing else now.
            unsafe { core::slice::from_raw_parts_mut(plan.fds, plan.nfds) }
        };
        for &(target, given) in &self.given {
            if let Some(f) = fds.iter_mut().find(|f| f.fd == target && f.leader < 0) {
                f.kind = FD_GIVEN;
                f.tmp = given;
            }
        }
        let mut numbers: Vec<i32> = self.given.iter().map(|g| g.1).collect();
        numbers.sort_unstable();
        for (slot, n) in plan.given.iter_mut().zip(&numbers) {
            *slot = *n;
        }
        plan.ngiven = numbers.len().min(MAX_GIVEN);
        plan.fd_temp_base = plan.fd_temp_base.max(numbers.last().map_or(0, |n| n + 1));
        if let Some(m) = &self.root_marker {
            plan.member = 1;
            plan.root_pid = m.pid as i32;
            plan.marker.copy_from_slice(&m.format().as_bytes()[..ckpt_image::ROOT_MARKER_LEN]);
        }
        for (slot, &(then, now)) in plan.pids.iter_mut().zip(&self.pids) {
            *slot = [then, now];
        }
        plan.npids = self.pids.len().min(MAX_TREE_PIDS);
    }
}

/// Says (on stderr and in the log) which descriptors inherited from the checkpointed program's launcher
/// are restored as `/dev/null` or closed (`CKPT_SHIM_FOREIGN_FDS`).
fn warn_foreign_fds(image: &ProcessImage, image_path: &str) {
    let log = log_path_of(image);
    for f in &image.fds {
        let as_what = match f.kind {
            FdKind::ForeignNull => "/dev/null",
            FdKind::ForeignClosed => "closed",
            _ => continue,
        };
        let was = String::from_utf8_lossy(&f.path);
        let line = format!(
            "ckpt restart: descriptor {} ({was}) was inherited from the launcher of the checkpointed program and \
             cannot be restored: it is restored as {as_what} ({}={})\n",
            f.fd,
            ckpt_image::FOREIGN_FDS_VAR,
            if f.kind == FdKind::ForeignNull { "devnull" } else { "close" }
        );
        write_all(2, line.as_bytes());
        if let Some(path) = &log {
            use std::io::Write;
            let event = serde_json::json!({"event": "foreign-fd", "image": image_path, "fd": f.fd, "was": was,
                "restored_as": as_what});
            use std::os::unix::fs::OpenOptionsExt;
            if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path) {
                let _ = writeln!(file, "{event}");
            }
        }
    }
}

/// The restored program's environment as it was saved (its settings: the same rules as at start).
fn saved_env(image: &ProcessImage) -> Vec<(String, String)> {
    image
        .envp
        .iter()
        .filter_map(|e| {
            let s = String::from_utf8_lossy(e);
            s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The timer signal of the restored program (its settings are in its saved environment).
fn restored_timer_signal(image: &ProcessImage) -> i32 {
    let env = saved_env(image);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match ckpt_core::Config::from_lookup(Some("program"), |k| get(k)) {
        Ok(cfg) => crate::timer_signal_of(&cfg.signals),
        Err(_) => libc::SIGUSR1,
    }
}

/// `CKPT_SHIM_TRIGGERS=<interval ns>,<deadline unix ns>,<deadline lead ns>` (0: none).
fn parse_triggers(text: Option<&str>) -> (u64, u64, f64) {
    let Some(t) = text else { return (0, 0, 0.0) };
    let mut it = t.split(',').map(|v| v.trim().parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0) as f64 / 1e9)
}

/// Checks, before anything is changed, that this process can become the image.
/// Whether every large anonymous region (1 GiB or more) can be mapped again as the restorer will map it
/// (the kernel's commit accounting may refuse one without `MAP_NORESERVE`): tried here, before anything is
/// replaced, so a refusal is exit 3 with the program's address space untouched.
fn large_regions_mappable(image: &ProcessImage, noreserve: &[(u64, u64)]) -> Option<String> {
    for r in &image.regions {
        let len = r.end - r.start;
        if len < 1 << 30 || matches!(r.kind, RegionKind::File | RegionKind::Guard) {
            continue;
        }
        let nr = noreserve.iter().any(|&(a, b)| a <= r.start && r.end <= b);
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if nr { libc::MAP_NORESERVE } else { 0 };
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a fresh anonymous mapping anywhere, unmapped right away.
        let a = unsafe { libc::mmap(std::ptr::null_mut(), len as usize, prot, flags, -1, 0) };
        if a == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            return Some(format!(
                "the {} MiB region at {:#x} cannot be mapped again here{}: {e}",
                len >> 20,
                r.start,
                if nr { " (MAP_NORESERVE)" } else { "" }
            ));
        }
        // SAFETY: the mapping just made.
        unsafe { libc::munmap(a, len as usize) };
    }
    None
}

fn preflight(image: &ProcessImage) -> Option<String> {
    if let Some(why) = ckpt_image::fingerprint_mismatch(&image.fingerprint, &ckpt_image::fingerprint()) {
        return Some(why);
    }
    // SAFETY: personality(0xffffffff) only queries.
    if unsafe { libc::personality(0xffff_ffff) } & libc::ADDR_NO_RANDOMIZE == 0 {
        return Some("address-space randomization is on (start it with `ckpt restart`)".into());
    }
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    if threads != 1 {
        return Some(format!("the restarted process already has {threads} threads (a library started them)"));
    }
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is writable.
    unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut rl) };
    if rl.rlim_cur != image.rlimit_stack.0 {
        return Some(format!(
            "the stack limit is {} here but was {} at checkpoint time (it decides where libraries are mapped)",
            show_limit(rl.rlim_cur),
            show_limit(image.rlimit_stack.0)
        ));
    }
    let maps = current_maps();
    let me = restore_main as *const () as u64;
    let shim_path = maps.iter().find(|m| m.start <= me && me < m.end).map(|m| m.path.clone()).unwrap_or_default();
    for m in &maps {
        match m.path.as_str() {
            "[vdso]" if image.vdso != Some((m.start, m.end)) => {
                return Some(format!(
                    "the vDSO is at {:#x}-{:#x}, it was at {}",
                    m.start,
                    m.end,
                    image.vdso.map(|(a, b)| format!("{a:#x}-{b:#x}")).unwrap_or_else(|| "no address".into())
                ));
            }
            p if p.starts_with('/') => {
                let same = image.regions.iter().any(|r| {
                    r.start == m.start
                        && r.end == m.end
                        && r.path == p.as_bytes()
                        && r.file_offset == m.offset
                        && r.prot == prot_bits(&m.perms)
                });
                if same {
                    continue;
                }
                // The shim's own code must be where the image has it: the restorer runs from it.
                if m.start <= me && me < m.end || (!shim_path.is_empty() && p == shim_path && !m.perms.contains('w')) {
                    return Some(format!(
                        "the shim ({p}) is mapped at {:#x}, not where the image has it; restart with `ckpt restart` \
                         and the same libckpt_preload.so",
                        m.start
                    ));
                }
                if let Some(problem) = moved_object(image, p, m.start, m.offset) {
                    return Some(problem);
                }
                // Otherwise the mapping is replaced by what the image has at that address (a relocated or
                // written range, a segment the program changed) or simply removed.
            }
            _ => {}
        }
    }
    for r in &image.regions {
        if let (RegionKind::File, Some(id)) = (r.kind, &r.identity) {
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&r.path));
            match std::fs::metadata(path) {
                Ok(meta) => {
                    let now = ckpt_image::FileIdentity::of(&meta);
                    if now != *id {
                        return Some(format!("{} changed since the checkpoint", path.display()));
                    }
                }
                Err(e) => return Some(format!("{}: {e}", path.display())),
            }
        }
    }
    for f in &image.fds {
        if f.kind == FdKind::Inherited
            && f.fd > 2
            && let Some(first) = f.dup_of
        {
            // Shared a standard descriptor's open file: it becomes a duplicate of the restart command's.
            // SAFETY: F_GETFD only queries.
            if unsafe { libc::fcntl(first, libc::F_GETFD) } < 0 {
                return Some(format!(
                    "descriptor {} was a duplicate of descriptor {first} ({}), which is not open here: give \
                     `ckpt restart` a descriptor {first}",
                    f.fd,
                    String::from_utf8_lossy(&f.path)
                ));
            }
        }
        if matches!(
            f.kind,
            FdKind::Inherited
                | FdKind::PipeRead
                | FdKind::PipeWrite
                | FdKind::ForeignNull
                | FdKind::ForeignClosed
                | FdKind::TreePipe
        ) || f.dup_of.is_some()
        {
            continue;
        }
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&f.path));
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => return Some(format!("file descriptor {} ({}): {e}", f.fd, path.display())),
        };
        if matches!(f.kind, FdKind::CharDevice | FdKind::ProcFile) {
            // A device that cannot be opened here (no controlling terminal for /dev/tty), or a /proc file
            // this kernel does not have or lets nobody open, is refused now, not after the address space
            // was replaced.
            use std::os::unix::fs::OpenOptionsExt;
            let access = f.flags & libc::O_ACCMODE;
            if let Err(e) = std::fs::OpenOptions::new()
                .read(access != libc::O_WRONLY)
                .write(access != libc::O_RDONLY)
                .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(path)
            {
                return Some(format!("file descriptor {} ({}): {e}", f.fd, path.display()));
            }
        }
        if let Some(id) = &f.identity {
            let now = ckpt_image::FileIdentity::of(&meta);
            if now.dev != id.dev || now.ino != id.ino {
                return Some(format!(
                    "{} (fd {}) was replaced by another file since the checkpoint",
                    path.display(),
                    f.fd
                ));
            }
            let writable = f.flags & libc::O_ACCMODE != libc::O_RDONLY;
            if now.size < id.size {
                return Some(format!(
                    "{} (fd {}) is shorter ({} bytes) than at checkpoint time ({} bytes)",
                    path.display(),
                    f.fd,
                    now.size,
                    id.size
                ));
            }
            if !writable && (now.size != id.size || now.mtime_ns != id.mtime_ns) {
                return Some(format!("input file {} (fd {}) was modified since the checkpoint", path.display(), f.fd));
            }
        }
    }
    None
}

/// Whether the object `path`, mapped here at `start` from file offset `offset`, was loaded elsewhere in the
/// image: the layout moved (another stack limit, other libraries). Compared by load address, the mapping
/// of the object's first page (offset 0, where the loader puts it): a file may map the same offset at two
/// addresses (a small program's read-only data and its RELRO page share a page of the file), and a
/// segment may be split or partly replaced by the program, but every segment of an unchanged file (checked
/// by identity) lies at a fixed distance from where the first page is.
fn moved_object(image: &ProcessImage, path: &str, start: u64, offset: u64) -> Option<String> {
    if offset != 0 {
        return None;
    }
    let loads: Vec<u64> = image
        .regions
        .iter()
        .filter(|r| r.kind == RegionKind::File && r.path == path.as_bytes() && r.file_offset == 0)
        .map(|r| r.start)
        .collect();
    if loads.is_empty() || loads.contains(&start) {
        return None;
    }
    Some(format!(
        "the address-space layout differs from the checkpoint's: {path} is loaded at {start:#x}, it was at {:#x}; \
         restart on the same kind of node with `ckpt restart` (same libraries, same stack limit)",
        loads[0]
    ))
}

/// Raises every hard limit that was higher at checkpoint time to its checkpoint-time value, before
/// anything is replaced (the restorer sets every limit exactly once the descriptors are reopened:
/// lowering one is always allowed). Raising a hard limit needs CAP_SYS_RESOURCE: without it the restart
/// is refused, rather than the program resuming with less than it had (a program that checked its limit
/// at start would fail later, or silently do less).
fn raise_hard_limits(limits: &[ckpt_image::ResourceLimit]) -> Option<String> {
    for l in limits {
        let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `now` is writable.
        if unsafe { libc::getrlimit(l.resource as _, &mut now) } != 0 || l.hard <= now.rlim_max {
            continue;
        }
        let raised = libc::rlimit { rlim_cur: now.rlim_cur, rlim_max: l.hard };
        // SAFETY: a plain struct passed by pointer.
        if unsafe { libc::setrlimit(l.resource as _, &raised) } != 0 {
            let err = std::io::Error::last_os_error();
            return Some(format!(
                "the hard {} was {} at checkpoint time and is {} here, and it cannot be raised ({err}); restart \
                 where the hard limit is at least as high (`ulimit -H`)",
                ckpt_image::resource_name(l.resource),
                show_value(l.hard),
                show_value(now.rlim_max)
            ));
        }
    }
    None
}

fn show_value(v: u64) -> String {
    if v == libc::RLIM_INFINITY { "unlimited".into() } else { v.to_string() }
}

fn show_limit(v: u64) -> String {
    if v == libc::RLIM_INFINITY { "unlimited".into() } else { format!("{} KiB", v / 1024) }
}

fn prot_bits(perms: &str) -> u32 {
    let b = perms.as_bytes();
    let mut p = 0;
    if b.first() == Some(&b'r') {
        p |= libc::PROT_READ;
    }
    if b.get(1) == Some(&b'w') {
        p |= libc::PROT_WRITE;
    }
    if b.get(2) == Some(&b'x') {
        p |= libc::PROT_EXEC;
    }
    p as u32
}

/// Bump writer over the arena.
struct ArenaWriter {
    cur: usize,
    end: usize,
}

impl ArenaWriter {
    unsafe fn alloc<T: Copy>(&mut self, items: &[T]) -> *const T {
        let align = std::mem::align_of::<T>().max(8);
        let start = (self.cur + align - 1) & !(align - 1);
        let bytes = std::mem::size_of_val(items);
        assert!(start + bytes <= self.end, "restore plan larger than its arena");
        // SAFETY: the range is inside the fresh arena mapping and suitably aligned.
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), start as *mut T, items.len()) };
        self.cur = start + bytes;
        start as *const T
    }
    unsafe fn cstr(&mut self, s: &[u8]) -> *const u8 {
        let mut v = s.to_vec();
        v.push(0);
        // SAFETY: forwarded.
        unsafe { self.alloc(&v) }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn build_plan(
    image: &ProcessImage,
    threads: &[ThreadRecord],
    pending: &PendingSignals,
    locks: &[ckpt_image::FileLock],
    noreserve: &[(u64, u64)],
    keep: &[(u64, u64, Vec<u8>, u64)],
    maps: &[Mapping],
    memory_offset: u64,
    image_path: &str,
    interval_ns: u64,
    deadline_ns: u64,
    t0_ns: u64,
) -> *mut Plan {
    let (base, len) = map_arena(image, threads, locks, maps, image_path);
    let mut w = ArenaWriter { cur: base + std::mem::size_of::<Plan>(), end: base + len - STACK_SIZE - MAPS_CAP };
    let (regions, runs) = plan_regions(image, keep, noreserve, maps, memory_offset, &mut w);
    let fds = plan_fds(image, &mut w);
    let sigactions: Vec<[u64; 5]> =
        image.sigactions.iter().map(|a| [a.signo as u64, a.handler, a.flags, a.restorer, a.mask]).collect();
    let itimer = |i: usize| {
        let t = image.itimers[i];
        [
            (t.interval_us / 1_000_000) as i64,
            (t.interval_us % 1_000_000) as i64,
            (t.value_us / 1_000_000) as i64,
            (t.value_us % 1_000_000) as i64,
        ]
    };
    let log_path = log_path_of(image);
    let prefix = format!(
        "{{\"event\":\"restored\",\"image\":{},\"sequence\":{},\"restarts\":{},\"pid\":",
        serde_json::Value::from(image_path),
        image.sequence,
        image.restarts + 1
    );
    let live_rseq = crate::probe_rseq().map(|(a, l, g)| [a, l as u64, g as u64]).unwrap_or([0; 3]);
    let errno_addr = crate::ERRNO_ADDR.load(Ordering::Relaxed);
    let errno_addr = if errno_addr == 0 {
        // SAFETY: __errno_location has no preconditions.
        unsafe { libc::__errno_location() as usize }
    } else {
        errno_addr
    };
    let mm_map = mm_map_now();
    let plan_locks: Vec<PlanLock> = locks
        .iter()
        .map(|l| PlanLock { fd: l.fd, posix: l.posix as u32, write: l.write as u32, start: l.start, len: l.len })
        .collect();
    let all = plan_threads(threads, pending);
    let others = if all.len() > 1 { &all[1..] } else { &[][..] };
    // SAFETY: all pointers below are inside the arena; the plan header is at its start.
    unsafe {
        let plan = Plan {
            image_fd: -1,
            arena_start: base,
            arena_len: len,
            regions: w.alloc(&regions),
            nregions: regions.len(),
            runs: if runs.is_empty() { std::ptr::null() } else { w.alloc(&runs) },
            nruns: runs.len(),
            fds: if fds.is_empty() { std::ptr::null_mut() } else { w.alloc(&fds) as *mut PlanFd },
            nfds: fds.len(),
            fd_temp_base: image.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 1,
            sigactions: w.alloc(&sigactions),
            nsigactions: sigactions.len(),
            brk: image.brk,
            brk_set: 0,
            fs_base: image.fs_base,
            live_rseq,
            saved_rseq: image.rseq.map(|r| [r.addr, r.len as u64, r.sig as u64]).unwrap_or([0; 3]),
            sigframe: image.sigframe,
            errno_addr: errno_addr as u64,
            errno_value: 0,
            itimers: [itimer(0), itimer(1), itimer(2)],
            cwd: w.cstr(&image.cwd),
            umask: image.umask,
            rlimits: [[0; 3]; MAX_RLIMITS],
            nrlimits: 0,
            maps_buf: (base + len - STACK_SIZE - MAPS_CAP) as *mut u8,
            maps_cap: MAPS_CAP,
            interval_ns,
            deadline_ns,
            log_path: match &log_path {
                Some(p) => w.cstr(p.as_os_str().as_bytes()),
                None => std::ptr::null(),
            },
            log_prefix: w.cstr(prefix.as_bytes()),
            log_prefix_len: prefix.len(),
            t0_ns,
            map_runs: 1,
            image_dev: 0,
            image_ino: 0,
            marker: [0; ckpt_image::ROOT_MARKER_LEN],
            root_start: 0,
            boot_id: [0; 64],
            mm_map,
            mm_arg_end_now: mm_map[8],
            mm_env_end_now: mm_map[10],
            main_robust_head: threads.first().map_or(0, |t| t.robust_head),
            threads: if others.is_empty() { std::ptr::null() } else { w.alloc(others) },
            nthreads: others.len(),
            main_thread: all.first().copied(),
            tid_offset: image.tid_offset.map_or(-1, |o| o as i64),
            pending_shared: pending.shared,
            pending_main: pending.threads.iter().find(|p| p.0 == image.pid).map_or(0, |p| p.1),
            locks: if plan_locks.is_empty() { std::ptr::null() } else { w.alloc(&plan_locks) },
            nlocks: plan_locks.len(),
            given: [-1; MAX_GIVEN],
            ngiven: 0,
            member: 0,
            root_pid: 0,
            old_pid: image.pid,
            old_pgid: 0,
            pids: [[0; 2]; MAX_TREE_PIDS],
            npids: 0,
        };
        std::ptr::write(base as *mut Plan, plan);
        base as *mut Plan
    }
}

/// Maps the restorer's arena (the plan, its tables and strings, a maps buffer and a stack) in a hole free
/// in both the current and the saved layout; returns its address and length.
fn map_arena(
    image: &ProcessImage,
    threads: &[ThreadRecord],
    locks: &[ckpt_image::FileLock],
    maps: &[Mapping],
    image_path: &str,
) -> (usize, usize) {
    // Room: regions, runs, fds, strings, the maps buffer and the stack.
    let nruns: usize = image.regions.iter().map(|r| r.runs.len()).sum();
    let strings: usize = image.regions.iter().map(|r| r.path.len() + 1).sum::<usize>()
        + image.fds.iter().map(|f| f.path.len() + 1).sum::<usize>()
        + image.cwd.len()
        + 8192;
    let need = std::mem::size_of::<Plan>()
        + image.regions.len() * std::mem::size_of::<PlanRegion>()
        + nruns * std::mem::size_of::<PlanRun>()
        + image.fds.len() * std::mem::size_of::<PlanFd>()
        + threads.len() * std::mem::size_of::<PlanThread>()
        + locks.len() * std::mem::size_of::<PlanLock>()
        + 80 * 40
        + strings
        + MAPS_CAP
        + STACK_SIZE
        + 65536;
    let len = need.div_ceil(4096) * 4096;
    // A hole free in both layouts.
    let busy = |a: u64, b: u64| {
        maps.iter().any(|m| m.start < b && a < m.end) || image.regions.iter().any(|r| r.start < b && a < r.end)
    };
    let mut at = 0x2000_0000_0000u64;
    while busy(at, at + len as u64) {
        at += 0x10_0000_0000;
        if at >= 0x7000_0000_0000 {
            refuse(image_path, "no free address range for the restorer");
        }
    }
    // SAFETY: a new private mapping at an address nothing else uses (MAP_FIXED_NOREPLACE checks it).
    let base = unsafe {
        syscall6(
            SYS_mmap,
            at as usize,
            len,
            (libc::PROT_READ | libc::PROT_WRITE) as usize,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as usize,
            usize::MAX,
            0,
        )
    };
    if base < 0 || base as u64 != at {
        refuse(image_path, "cannot map the restorer's arena");
    }
    (base as usize, len)
}

/// The plan's regions and runs; the shim's own read-only mappings, and file mappings identical now and
/// at checkpoint time, are kept.
fn plan_regions(
    image: &ProcessImage,
    keep: &[(u64, u64, Vec<u8>, u64)],
    noreserve: &[(u64, u64)],
    maps: &[Mapping],
    memory_offset: u64,
    w: &mut ArenaWriter,
) -> (Vec<PlanRegion>, Vec<PlanRun>) {
    let nruns: usize = image.regions.iter().map(|r| r.runs.len()).sum();
    // The shim's own read-only mappings stay, relocated ones (RELRO) included: the restorer runs from them
    // and reads them; with the same layout their relocated contents are the same as at checkpoint time.
    let me = restore_main as *const () as u64;
    let shim_path: Vec<u8> =
        maps.iter().find(|m| m.start <= me && me < m.end).map(|m| m.path.as_bytes().to_vec()).unwrap_or_default();
    let mut runs = Vec::with_capacity(nruns);
    let mut regions = Vec::with_capacity(image.regions.len());
    for r in &image.regions {
        let first = runs.len();
        for run in &r.runs {
            runs.push(PlanRun { addr: run.addr, len: run.len, file_offset: memory_offset + run.data_offset });
        }
        let own_read_only = !shim_path.is_empty() && r.path == shim_path && r.prot & libc::PROT_WRITE as u32 == 0;
        let same_mapping_now =
            keep.iter().any(|k| k.0 == r.start && k.1 == r.end && k.2 == r.path && k.3 == r.file_offset);
        let kept = r.kind == RegionKind::File && (r.runs.is_empty() || own_read_only) && same_mapping_now;
        regions.push(PlanRegion {
            start: r.start,
            end: r.end,
            prot: r.prot,
            kind: match r.kind {
                RegionKind::Anonymous => KIND_ANON,
                RegionKind::Heap => KIND_HEAP,
                RegionKind::Stack => KIND_STACK,
                RegionKind::File => KIND_FILE,
                RegionKind::Guard => KIND_GUARD,
            },
            keep: kept as u32,
            noreserve: noreserve.iter().any(|&(a, b)| a <= r.start && r.end <= b) as u32,
            // SAFETY: inside the arena.
            path: if r.kind == RegionKind::File { unsafe { w.cstr(&r.path) } } else { std::ptr::null() },
            file_offset: r.file_offset,
            run_first: first,
            run_count: r.runs.len(),
        });
    }
    (regions, runs)
}

/// The plan's descriptor table: what each descriptor is reopened or recreated from.
fn plan_fds(image: &ProcessImage, w: &mut ArenaWriter) -> Vec<PlanFd> {
    let mut fds = Vec::new();
    let mut pipes: Vec<&[u8]> = Vec::new();
    for f in &image.fds {
        let group = if matches!(f.kind, FdKind::PipeRead | FdKind::PipeWrite) {
            match pipes.iter().position(|p| *p == &f.path[..]) {
                Some(g) => g,
                None => {
                    pipes.push(&f.path);
                    pipes.len() - 1
                }
            }
        } else {
            0
        };
        fds.push(PlanFd {
            fd: f.fd,
            kind: match f.kind {
                FdKind::Inherited => FD_INHERITED,
                FdKind::PipeRead => FD_PIPE_READ,
                FdKind::PipeWrite => FD_PIPE_WRITE,
                FdKind::ForeignNull => FD_DEV_NULL,
                FdKind::ForeignClosed => FD_CLOSED,
                FdKind::Regular | FdKind::Directory | FdKind::CharDevice | FdKind::ProcFile => FD_REOPEN,
                FdKind::TreePipe => FD_GIVEN,
            },
            group: group as u32,
            leader: f.dup_of.and_then(|d| image.fds.iter().position(|o| o.fd == d)).map(|i| i as i32).unwrap_or(-1),
            tmp: -1,
            flags: f.flags,
            cloexec: f.cloexec as u32,
            writable_regular: (f.kind == FdKind::Regular && f.flags & libc::O_ACCMODE != libc::O_RDONLY) as u32,
            shared: f.shared as u32,
            offset: f.offset,
            size: f.size,
            // SAFETY: inside the arena.
            path: unsafe { w.cstr(&f.path) },
        });
    }
    fds
}

/// The plan's record of every thread (the main one first): registers' frame, TLS, robust list, rseq,
/// pending signals, name and affinity.
fn plan_threads(threads: &[ThreadRecord], pending: &PendingSignals) -> Vec<PlanThread> {
    threads
        .iter()
        .map(|t| PlanThread {
            fs_base: t.fs_base,
            sigframe: t.sigframe,
            robust_head: t.robust_head,
            rseq_addr: t.rseq.map_or(0, |r| r.addr),
            rseq_len: t.rseq.map_or(0, |r| r.len as u64),
            rseq_sig: t.rseq.map_or(0, |r| r.sig as u64),
            pending: pending.threads.iter().find(|p| p.0 == t.tid).map_or(0, |p| p.1),
            name: {
                let mut n = [0u8; 16];
                n[..t.name.len().min(15)].copy_from_slice(&t.name[..t.name.len().min(15)]);
                n
            },
            affinity: {
                let mut a = [0u64; 16];
                a[..t.affinity.len().min(16)].copy_from_slice(&t.affinity[..t.affinity.len().min(16)]);
                a
            },
            affinity_words: t.affinity.len().min(16),
            tid: t.tid,
        })
        .collect()
}

/// `struct prctl_mm_map` with this process's code, data, brk and stack bounds (`/proc/self/stat`), no
/// auxiliary vector and no new executable (`exe_fd` -1): what `PR_SET_MM_MAP` accepts without privilege.
fn mm_map_now() -> [u64; 13] {
    let stat = std::fs::read("/proc/self/stat").unwrap_or_default();
    let close = stat.iter().rposition(|&b| b == b')').map(|c| c + 1).unwrap_or(stat.len());
    let fields: Vec<u64> =
        String::from_utf8_lossy(&stat[close..]).split_ascii_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    let field = |k: usize| fields.get(k - 3).copied().unwrap_or(0);
    [
        field(26), // start_code
        field(27), // end_code
        field(45), // start_data
        field(46), // end_data
        field(47), // start_brk
        0,         // brk: the restored one, set by the restorer
        field(28), // start_stack
        field(48), // arg_start .. env_end: the restored ones, set by the restorer
        field(49),
        field(50),
        field(51),
        0,                 // auxv: unchanged
        0xffff_ffff << 32, // auxv_size 0, exe_fd -1
    ]
}

/// Points `/proc/self/cmdline` and `environ` at the restored command line and environment (the areas
/// recorded when the program started, restored with its stack; the new process's own are elsewhere).
/// `PR_SET_MM_MAP` needs no privilege (kernels with CONFIG_CHECKPOINT_RESTORE); else the single
/// `PR_SET_MM_ARG_*` / `ENV_*` operations, which need CAP_SYS_RESOURCE. Returns 0 or the last `-errno`.
fn restore_arg_area(p: &Plan) -> isize {
    // SAFETY: the shim's statics are restored (single-threaded).
    let area = unsafe { *crate::ARG_AREA.get() };
    if area[0] == 0 || area[0] > area[1] || area[2] > area[3] {
        return -(libc::ENOENT as isize);
    }
    // Filled in place (the plan is in the writable arena; no copy, which could become a memcpy call).
    let map = p.mm_map.as_ptr() as *mut u64;
    // SAFETY: the writes stay inside the plan's 13 words.
    unsafe {
        core::ptr::write_volatile(map.add(5), p.brk);
        let mut i = 0;
        while i < 4 {
            core::ptr::write_volatile(map.add(7 + i), area[i]);
            i += 1;
        }
    }
    const PR_SET_MM: usize = 35;
    const PR_SET_MM_MAP: usize = 14;
    // SAFETY: the kernel reads the 104-byte structure from the plan; it only changes what /proc shows.
    let r = unsafe { syscall6(libc::SYS_prctl, PR_SET_MM, PR_SET_MM_MAP, map as usize, 104, 0, 0) };
    if r == 0 {
        return 0;
    }
    // One bound at a time: each must keep start <= end with the other bound as it is at that moment.
    let set = |op: usize, v: u64| -> isize {
        // SAFETY: as above, one field.
        unsafe { syscall6(libc::SYS_prctl, PR_SET_MM, op, v as usize, 0, 0, 0) }
    };
    let pair = |start_op: usize, end_op: usize, cur_end: u64, start: u64, end: u64| -> isize {
        if start > cur_end {
            let r = set(end_op, end);
            if r < 0 {
                return r;
            }
            set(start_op, start)
        } else {
            let r = set(start_op, start);
            if r < 0 {
                return r;
            }
            set(end_op, end)
        }
    };
    // PR_SET_MM_ARG_START 8, ARG_END 9, ENV_START 10, ENV_END 11; the current ends are the new process's.
    let r = pair(8, 9, p.mm_arg_end_now, area[0], area[1]);
    if r < 0 {
        return r;
    }
    pair(10, 11, p.mm_env_end_now, area[2], area[3])
}

/// The log file of the restored program, found from its saved environment (the same rules as at start).
fn log_path_of(image: &ProcessImage) -> Option<std::path::PathBuf> {
    let env = saved_env(image);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let exe = std::path::Path::new(std::ffi::OsStr::from_bytes(&image.exe))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    let name = get("CKPT_NAME").or_else(|| get("SLURM_JOB_NAME")).unwrap_or(exe);
    let cfg = ckpt_core::Config::from_lookup(Some(&name), |k| get(k)).ok()?;
    let cwd = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&image.cwd));
    match cfg.log {
        ckpt_core::LogTarget::CheckpointDir => {
            Some(cwd.join(&cfg.checkpoint_dir).join(format!("{}.log", cfg.base_name())))
        }
        ckpt_core::LogTarget::File(p) => Some(cwd.join(p)),
        _ => None,
    }
}

/// Moves to the arena's stack and runs [`restore_main`], which never returns.
unsafe fn switch_stack_and_restore(plan: *mut Plan, stack_top: usize) -> ! {
    // SAFETY: the new stack is inside the arena (16-byte aligned); restore_main never returns, so nothing
    // of the old stack is used again.
    unsafe {
        core::arch::asm!(
            "mov rsp, {stack}",
            "call {main}",
            "ud2",
            stack = in(reg) stack_top,
            main = sym restore_main,
            in("rdi") plan,
            options(noreturn)
        )
    }
}

/// Prints a diagnostic and ends the process (the address space is half replaced: nothing can continue).
fn fatal(what: &[u8], detail: u64, err: isize) -> ! {
    let mut buf = [0u8; 256];
    let mut pos = 0;
    put(&mut buf, &mut pos, b"ckpt restart: restore failed: ");
    put(&mut buf, &mut pos, what);
    put(&mut buf, &mut pos, b" ");
    put_hex(&mut buf, &mut pos, detail);
    put(&mut buf, &mut pos, b" (errno ");
    put_u64(&mut buf, &mut pos, (-err) as u64);
    put(&mut buf, &mut pos, b")\n");
    write_all(2, &buf[..pos]);
    exit_group(EXIT_FAILED)
}

/// The restorer proper: raw system calls, arena memory only, no allocation, no return.
///
/// # Safety
/// Called once, on the arena's stack, with a plan built by `build_plan`.
#[inline(never)]
unsafe extern "C" fn restore_main(plan: *const Plan) -> ! {
    // SAFETY: the plan is in the arena, which stays mapped until the final step.
    let p = unsafe { &*plan };
    // 1. rseq: the kernel writes to the registered area on every return to user space; unregister it
    //    before its page goes away.
    if p.live_rseq[1] != 0 {
        // SAFETY: unregisters this thread's rseq area (flag 1 = RSEQ_FLAG_UNREGISTER).
        unsafe {
            syscall6(SYS_rseq, p.live_rseq[0] as usize, p.live_rseq[1] as usize, 1, p.live_rseq[2] as usize, 0, 0)
        };
    }
    // 2.-4. The address space.
    replace_address_space(p);
    // 5. Thread pointer, errno, rseq. The tid glibc caches in the restored TCB stays the checkpoint's: it
    //    is the owner glibc recorded in every mutex the thread holds (a recursive or error-checking mutex
    //    of the program's, the dynamic loader's `dl_load_lock`), and glibc compares the two; `gettid()`
    //    and `raise()` ask the kernel, and the pthread calls that hand the cached tid to the kernel for
    //    the calling thread are interposed (tid.rs).
    // SAFETY: the FS base points at the restored TCB.
    unsafe {
        syscall3(SYS_arch_prctl, ARCH_SET_FS as usize, p.fs_base as usize, 0);
        if p.main_robust_head != 0 {
            syscall3(libc::SYS_set_robust_list, p.main_robust_head as usize, ROBUST_LIST_HEAD_LEN, 0);
        }
        if p.saved_rseq[1] != 0 {
            syscall6(SYS_rseq, p.saved_rseq[0] as usize, p.saved_rseq[1] as usize, 0, p.saved_rseq[2] as usize, 0, 0);
        }
    }
    // 6. Descriptors.
    restore_descriptors(p);
    // 7. Working directory, umask, signal actions, interval timers, resource limits.
    restore_process_settings(p);
    // 8. The shim's own state (now the checkpoint-time copy): this is a new process.
    let pid = reset_shim_state(p);
    // The command line `ps` shows.
    let cmdline = restore_arg_area(p);
    if p.brk_set == 0 && cmdline != 0 {
        // Neither brk nor PR_SET_MM_MAP set the break: the first sbrk of the restored malloc would map
        // its memory above the wrong break.
        fatal(b"cannot set the program break to", p.brk, cmdline);
    }
    // A wait for a child interrupted by the checkpoint is restarted by rt_sigreturn with the child's
    // checkpoint-time pid: made the child's pid now.
    retarget_restarted_wait(p, p.sigframe);
    // SAFETY: the plan's thread records: `nthreads` at `threads` (non-NULL when > 0), in the arena.
    let threads = if p.nthreads == 0 { &[][..] } else { unsafe { core::slice::from_raw_parts(p.threads, p.nthreads) } };
    for t in threads {
        retarget_restarted_wait(p, t.sigframe);
    }
    // 9. One log line.
    log_restored(p, pid, cmdline);
    // 10. The other threads: each starts in assembly (registers only, no stack of the restorer's) and
    //     returns into its own signal frame; then the arena goes and the main thread returns into its own.
    restore_threads(p);
    // Signals pending at checkpoint time, pending again (every signal is blocked until rt_sigreturn).
    raise_pending(getpid(), getpid(), p.pending_main);
    raise_pending(getpid(), 0, p.pending_shared);
    let arena = p.arena_start;
    let arena_len = p.arena_len;
    let frame = p.sigframe;
    // SAFETY: after munmap only registers are used; rt_sigreturn expects rsp at the frame's ucontext and
    // restores every register, the FPU state and the signal mask from it.
    unsafe {
        core::arch::asm!(
            "syscall",
            "mov rsp, r12",
            "mov eax, 15",
            "syscall",
            "ud2",
            in("rax") SYS_munmap,
            in("rdi") arena,
            in("rsi") arena_len,
            in("r12") frame,
            options(noreturn)
        )
    }
}

/// Step 6 of the restorer: closes ours and anything the restart command leaked, opens every file (and
/// recreates every self-pipe) at a number above all the program's, then moves each to its number.
fn restore_descriptors(p: &Plan) {
    // Everything above stderr but the descriptors `ckpt restart` gave (sorted).
    let mut from = 3usize;
    let mut g = 0;
    while g < p.ngiven && g < MAX_GIVEN {
        let keep = p.given[g] as usize;
        if keep > from {
            // SAFETY: closing descriptors has no memory effects.
            unsafe { syscall3(SYS_close_range, from, keep - 1, 0) };
        }
        from = keep + 1;
        g += 1;
    }
    // SAFETY: as above.
    unsafe { syscall3(SYS_close_range, from, u32::MAX as usize, 0) };
    // SAFETY: the plan's descriptor table: `nfds` records at `fds` (non-NULL when `nfds` > 0), written by
    // the plan's builder and used by nothing else now.
    let fds = if p.nfds == 0 { &mut [][..] } else { unsafe { core::slice::from_raw_parts_mut(p.fds, p.nfds) } };
    let high = |fd: isize| -> i32 {
        if fd < 0 {
            return fd as i32;
        }
        // SAFETY: duplicates a descriptor we own above all target numbers, then closes the original.
        let h = unsafe { syscall3(SYS_fcntl, fd as usize, libc::F_DUPFD_CLOEXEC as usize, p.fd_temp_base as usize) };
        close(fd as i32);
        h as i32
    };
    let mut j = 0;
    while j < fds.len() {
        let kind = fds[j].kind;
        if fds[j].leader >= 0 {
            // A duplicate: moved into place from its first descriptor's file below.
        } else if kind == FD_DEV_NULL {
            let f = &mut fds[j];
            let tmp = high(open_cstr(c"/dev/null".as_ptr().cast(), (f.flags & libc::O_ACCMODE) | libc::O_CLOEXEC));
            if tmp < 0 {
                fatal(b"cannot open /dev/null for descriptor", f.fd as u64, tmp as isize);
            }
            f.tmp = tmp;
        } else if kind == FD_REOPEN {
            let f = &mut fds[j];
            let flags = (f.flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL)) | libc::O_CLOEXEC;
            let tmp = high(open_cstr(f.path, flags));
            if tmp < 0 {
                fatal(b"cannot reopen the file of descriptor", f.fd as u64, tmp as isize);
            }
            // SAFETY: descriptor operations on the file just opened.
            unsafe {
                if f.writable_regular != 0 && f.shared == 0 {
                    let r = syscall3(SYS_ftruncate, tmp as usize, f.size as usize, 0);
                    if r < 0 {
                        fatal(b"cannot cut back the file of descriptor", f.fd as u64, r);
                    }
                }
                if f.writable_regular != 0 && f.shared != 0 {
                    // Another process writes this file too: keep its output, continue at the end.
                    syscall3(SYS_lseek, tmp as usize, 0, libc::SEEK_END as usize);
                } else if f.offset >= 0 {
                    syscall3(SYS_lseek, tmp as usize, f.offset as usize, libc::SEEK_SET as usize);
                }
            }
            f.tmp = tmp;
        } else if (kind == FD_PIPE_READ || kind == FD_PIPE_WRITE) && fds[j].tmp < 0 {
            let mut ends = [0i32; 2];
            // SAFETY: pipe2 writes two descriptors.
            let r = unsafe { syscall3(libc::SYS_pipe2, ends.as_mut_ptr() as usize, libc::O_CLOEXEC as usize, 0) };
            if r < 0 {
                fatal(b"cannot recreate the pipe of descriptor", fds[j].fd as u64, r);
            }
            let (rd, wr) = (high(ends[0] as isize), high(ends[1] as isize));
            let group = fds[j].group;
            let mut k = j;
            while k < fds.len() {
                if (fds[k].kind == FD_PIPE_READ || fds[k].kind == FD_PIPE_WRITE) && fds[k].group == group {
                    fds[k].tmp = if fds[k].kind == FD_PIPE_READ { rd } else { wr };
                }
                k += 1;
            }
        }
        j += 1;
    }
    let mut std_seen = [false; 3];
    let mut j = 0;
    while j < fds.len() {
        let f = &fds[j];
        j += 1;
        if (0..3).contains(&f.fd) {
            std_seen[f.fd as usize] = true;
        }
        // Standard descriptors on a terminal or pipe come from the restart command, each as it gives them.
        if f.kind == FD_CLOSED || f.kind == FD_INHERITED && (f.leader < 0 || f.fd <= 2) {
            continue;
        }
        // One open file description for a whole group: duplicates take their first descriptor's file
        // (for a standard descriptor inherited from the restart command: that descriptor).
        let source = if f.leader >= 0 {
            let first = &fds[f.leader as usize];
            if first.kind == FD_INHERITED { first.fd } else { first.tmp }
        } else {
            f.tmp
        };
        if source < 0 {
            continue;
        }
        let cloexec = if f.cloexec != 0 { libc::O_CLOEXEC } else { 0 };
        // SAFETY: descriptor operations on descriptors we own.
        unsafe {
            let r = syscall3(SYS_dup3, source as usize, f.fd as usize, cloexec as usize);
            if r < 0 {
                fatal(b"cannot move a reopened file to descriptor", f.fd as u64, r);
            }
            // Status flags (O_NONBLOCK, O_APPEND) live in the open file description (not an inherited one's,
            // nor one `ckpt restart` made and set for every process that shares it).
            let given = f.kind == FD_GIVEN || f.leader >= 0 && fds[f.leader as usize].kind == FD_GIVEN;
            if f.kind != FD_INHERITED && !given {
                syscall3(SYS_fcntl, f.fd as usize, libc::F_SETFL as usize, f.flags as usize);
            }
        }
    }
    // The temporaries, and the descriptors `ckpt restart` gave (all above every target number).
    let first = if p.ngiven > 0 && p.given[0] < p.fd_temp_base { p.given[0] } else { p.fd_temp_base };
    // SAFETY: closing descriptors has no memory effects.
    unsafe { syscall3(SYS_close_range, first as usize, u32::MAX as usize, 0) };
    take_locks(p);
    let mut s = 0;
    while s < 3 {
        if !std_seen[s] {
            close(s as i32);
        }
        s += 1;
    }
}

/// Step 7 of the restorer: working directory, umask, signal actions, interval timers, resource limits.
fn restore_process_settings(p: &Plan) {
    // SAFETY: NUL-terminated path in the arena; kernel structures built from the plan.
    unsafe {
        syscall3(SYS_chdir, p.cwd as usize, 0, 0);
        syscall3(SYS_umask, p.umask as usize, 0, 0);
        let acts = core::slice::from_raw_parts(p.sigactions, p.nsigactions);
        let mut a = 0;
        while a < acts.len() {
            let ka = [acts[a][1], acts[a][2], acts[a][3], acts[a][4]];
            syscall6(SYS_rt_sigaction, acts[a][0] as usize, ka.as_ptr() as usize, 0, 8, 0, 0);
            a += 1;
        }
        let mut t = 0;
        while t < 3 {
            let it = p.itimers[t];
            if it[2] != 0 || it[3] != 0 {
                syscall3(SYS_setitimer, t, it.as_ptr() as usize, 0);
            }
            t += 1;
        }
        // Resource limits (hard limits above this process's were raised before anything was replaced).
        let mut l = 0;
        while l < p.nrlimits && l < MAX_RLIMITS {
            let rl = [p.rlimits[l][1], p.rlimits[l][2]];
            syscall6(libc::SYS_prlimit64, 0, p.rlimits[l][0] as usize, rl.as_ptr() as usize, 0, 0, 0);
            l += 1;
        }
    }
}

/// Step 8 of the restorer: the shim's own state (the checkpoint-time copy) made this process's; returns
/// this process's pid.
fn reset_shim_state(p: &Plan) -> i32 {
    let pid = getpid();
    // The checkpoint-time pid keeps naming this process in the calls that take one (pid.rs).
    crate::pid::remember(p.old_pid);
    crate::pid::remember_group(p.old_pgid, getpgrp());
    crate::reset_exit_retries();
    // A member of a tree names the root; the root names itself.
    crate::ROOT_PID.store(if p.member != 0 { p.root_pid } else { pid }, Ordering::Relaxed);
    let mut k = 0;
    while k < p.npids && k < MAX_TREE_PIDS {
        crate::pid::remember_peer(p.pids[k][0], p.pids[k][1]);
        k += 1;
    }
    crate::tree::reset_after_restore();
    crate::WRITER_PID.store(0, Ordering::Relaxed);
    crate::threads::reset_after_restore();
    crate::CHILD_ARENA.store(0, Ordering::Relaxed);
    crate::RESTARTS.fetch_add(1, Ordering::Relaxed);
    crate::RESTORED_DEV.store(p.image_dev, Ordering::Relaxed);
    crate::RESTORED_INO.store(p.image_ino, Ordering::Relaxed);
    crate::ROOT_START.store(p.root_start, Ordering::Relaxed);
    // The restored environment's CKPT_SHIM_ROOT (the shim's own buffer, handed to putenv at the first
    // start) named the checkpointed process: name this one, in place (volatile byte copies: no memcpy).
    // SAFETY: the shim's statics are restored and writable; single-threaded.
    unsafe {
        let env = &mut *crate::ROOT_MARKER_ENV.get();
        let prefix = crate::ROOT_ENV_PREFIX;
        let mut same = true;
        let mut i = 0;
        while i < prefix.len() {
            same &= env[i] == prefix[i];
            i += 1;
        }
        if same {
            let mut k = 0;
            while k < p.marker.len() {
                core::ptr::write_volatile(&mut env[prefix.len() + k], p.marker[k]);
                k += 1;
            }
        }
        let boot = &mut *crate::BOOT_ID.get();
        let mut k = 0;
        while k < boot.len() {
            core::ptr::write_volatile(&mut boot[k], p.boot_id[k]);
            k += 1;
        }
    }
    if p.member != 0 {
        // Triggers and `ckpt create` reach the root, which coordinates the tree.
        return pid;
    }
    crate::arm_timers(p.interval_ns, p.deadline_ns);
    // The checkpointed process's registration is stale (it is gone); register under the new pid.
    crate::unregister_process();
    crate::register_process();
    pid
}

/// Step 9 of the restorer: one `restored` line in the log.
fn log_restored(p: &Plan, pid: i32, cmdline: isize) {
    if !p.log_path.is_null() {
        let fd = open_cstr(p.log_path, libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC);
        if fd >= 0 {
            let mut buf = [0u8; 1024];
            let mut pos = 0;
            // SAFETY: the prefix is in the arena.
            put(&mut buf, &mut pos, unsafe { core::slice::from_raw_parts(p.log_prefix, p.log_prefix_len) });
            put_u64(&mut buf, &mut pos, pid as u64);
            put(&mut buf, &mut pos, b",\"restore_us\":");
            put_u64(&mut buf, &mut pos, (monotonic_ns().saturating_sub(p.t0_ns)) / 1000);
            if cmdline == 0 {
                put(&mut buf, &mut pos, b",\"cmdline\":true");
            } else {
                put(&mut buf, &mut pos, b",\"cmdline\":false,\"cmdline_errno\":");
                put_u64(&mut buf, &mut pos, (-cmdline) as u64);
            }
            put(&mut buf, &mut pos, b"}\n");
            write_all(fd as i32, &buf[..pos]);
            close(fd as i32);
        }
    }
}

/// The kernel's `struct flock` on x86_64.
#[repr(C)]
struct KernelFlock {
    l_type: i16,
    l_whence: i16,
    l_start: i64,
    l_len: i64,
    l_pid: i32,
}

/// Takes the program's file locks again on its reopened descriptors (the preflight checked that nobody
/// holds them; one taken in between ends the restore here, loudly).
fn take_locks(p: &Plan) {
    if p.nlocks == 0 {
        return;
    }
    // SAFETY: the plan's array is in the arena.
    let locks = unsafe { core::slice::from_raw_parts(p.locks, p.nlocks) };
    let mut i = 0;
    while i < locks.len() {
        let l = &locks[i];
        i += 1;
        // SAFETY: lock operations on a descriptor just restored; the flock struct is on this stack.
        let r = unsafe {
            if l.posix != 0 {
                let fl = KernelFlock {
                    l_type: if l.write != 0 { libc::F_WRLCK } else { libc::F_RDLCK } as i16,
                    l_whence: libc::SEEK_SET as i16,
                    l_start: l.start as i64,
                    l_len: l.len as i64,
                    l_pid: 0,
                };
                syscall3(SYS_fcntl, l.fd as usize, libc::F_SETLK as usize, &fl as *const KernelFlock as usize)
            } else {
                let op = if l.write != 0 { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
                syscall3(libc::SYS_flock, l.fd as usize, op as usize, 0)
            }
        };
        if r < 0 {
            fatal(b"cannot take back the file lock on descriptor", l.fd as u64, r);
        }
    }
}

/// Whether the locks the program held can be taken again here (nobody else holds them now).
fn locks_free(image: &ProcessImage, locks: &[ckpt_image::FileLock]) -> Option<String> {
    use std::os::fd::AsRawFd;
    for l in locks {
        let f = image.fds.iter().find(|f| f.fd == l.fd)?;
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&f.path));
        let what = if l.posix { "POSIX record lock" } else { "flock lock" };
        let file = match std::fs::OpenOptions::new().read(true).write(l.write && l.posix).open(path) {
            Ok(file) => file,
            Err(e) => return Some(format!("{} (the {what} of fd {}): {e}", path.display(), l.fd)),
        };
        if l.posix {
            let mut fl = KernelFlock {
                l_type: if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as i16,
                l_whence: libc::SEEK_SET as i16,
                l_start: l.start as i64,
                l_len: l.len as i64,
                l_pid: 0,
            };
            // SAFETY: F_GETLK fills the struct on this stack.
            let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl as *mut KernelFlock) };
            if r == 0 && fl.l_type != libc::F_UNLCK as i16 {
                return Some(format!(
                    "{} is locked by process {} (the program held a {what} on it, fd {})",
                    path.display(),
                    fl.l_pid,
                    l.fd
                ));
            }
        } else {
            let op = if l.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
            // SAFETY: flock on a descriptor of ours, released at once (and with the file's closing).
            if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
                return Some(format!(
                    "{} is locked by another process (the program held a {what} on it, fd {})",
                    path.display(),
                    l.fd
                ));
            }
            // SAFETY: as above.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        }
    }
    None
}

/// Gives thread `tid` (of this process) the name and CPU affinity `t` recorded.
fn name_and_affinity(tid: i32, t: &PlanThread) {
    if t.affinity_words > 0 {
        // SAFETY: the mask is in the plan; sched_setaffinity only reads it.
        unsafe {
            syscall3(libc::SYS_sched_setaffinity, tid as usize, t.affinity_words * 8, t.affinity.as_ptr() as usize)
        };
    }
    if t.name[0] != 0 {
        // /proc/self/task/<tid>/comm, built on the stack (no allocation, no libc).
        let mut path = [0u8; 64];
        let mut pos = 0;
        put(&mut path, &mut pos, b"/proc/self/task/");
        put_u64(&mut path, &mut pos, tid as u64);
        put(&mut path, &mut pos, b"/comm\0");
        let fd = open_cstr(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            let mut n = 0;
            while n < 15 && t.name[n] != 0 {
                n += 1;
            }
            write_all(fd as i32, &t.name[..n]);
            close(fd as i32);
        }
    }
}

/// Sends every signal of `mask` to thread `tid` of process `pid` (`tid` 0: to the process).
fn raise_pending(pid: i32, tid: i32, mask: u64) {
    let mut sig = 1;
    while sig < 32 {
        if mask & (1 << (sig - 1)) != 0 {
            // SAFETY: signals to this process only.
            unsafe {
                if tid == 0 {
                    syscall3(libc::SYS_kill, pid as usize, sig as usize, 0);
                } else {
                    syscall3(SYS_tgkill, pid as usize, tid as usize, sig as usize);
                }
            }
        }
        sig += 1;
    }
}

/// `sizeof(struct robust_list_head)` on x86_64, the only length `set_robust_list` accepts.
const ROBUST_LIST_HEAD_LEN: usize = 24;

/// Recreates the other threads of a multi-threaded image (step 10) and records their new tids for the
/// calls that take a tid the program kept (pid.rs).
#[inline(never)]
fn restore_threads(p: &Plan) {
    if p.nthreads == 0 {
        return;
    }
    // SAFETY: the plan's array is in the arena.
    let threads = unsafe { core::slice::from_raw_parts(p.threads, p.nthreads) };
    crate::pid::begin_thread_map();
    let mut i = 0;
    while i < threads.len() {
        let t = &threads[i];
        i += 1;
        // The kernel clears the cached tid and wakes its joiner when the thread ends (CLONE_CHILD_CLEARTID
        // on glibc's `tid` field, as pthread_create asks); the cached tid itself stays the checkpoint's
        // (see tid.rs), so no CLONE_PARENT_SETTID.
        let ctid = if p.tid_offset >= 0 { t.fs_base + p.tid_offset as u64 } else { 0 };
        let flags = libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | if ctid != 0 { libc::CLONE_CHILD_CLEARTID } else { 0 };
        let cached = if ctid != 0 {
            // SAFETY: the thread control block is restored memory of the program.
            unsafe { core::ptr::read_volatile(ctid as *const i32) }
        } else {
            t.tid
        };
        let ret: isize;
        // SAFETY: clone of a thread sharing everything; the child runs only the instructions below, with
        // its values in registers (rcx and r11 are clobbered by `syscall`), never returns into Rust code
        // and never touches the arena: it registers its robust list and rseq area, moves its stack pointer
        // to its signal frame and issues rt_sigreturn, which loads its registers, FPU state, signal mask and
        // alternate stack. Its initial stack pointer is below its frame (nothing is pushed before the
        // switch). The parent gets the new tid or -errno.
        unsafe {
            core::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "test r12, r12",
                "jz 3f",
                "mov rdi, r12",
                "mov esi, 24",
                "mov eax, 273",
                "syscall",
                "3:",
                "test r13, r13",
                "jz 4f",
                "mov rdi, r13",
                "mov rsi, r14",
                "xor edx, edx",
                "mov r10, r15",
                "mov eax, 334",
                "syscall",
                "4:",
                "mov rsp, r9",
                "mov eax, 15",
                "syscall",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone as isize => ret,
                in("rdi") flags as usize,
                in("rsi") ((t.sigframe - 512) & !15) as usize,
                in("rdx") 0usize,
                in("r10") ctid as usize,
                in("r8") t.fs_base as usize,
                in("r9") t.sigframe as usize,
                in("r12") t.robust_head as usize,
                in("r13") t.rseq_addr as usize,
                in("r14") t.rseq_len as usize,
                in("r15") t.rseq_sig as usize,
                lateout("rcx") _,
                lateout("r11") _,
            )
        };
        if ret <= 0 {
            fatal(b"cannot recreate the thread whose tid was", t.tid as u64, ret.min(0));
        }
        crate::pid::map_thread(t.tid, cached, ret as i32);
        name_and_affinity(ret as i32, t);
        raise_pending(getpid(), ret as i32, t.pending);
    }
    crate::pid::end_thread_map();
    if let Some(main) = &p.main_thread {
        name_and_affinity(gettid(), main);
    }
}

/// Steps 2 to 4 of the restore: unmap the new process's memory, set brk, map the image's regions and read
/// their pages into place. Until it returns, no libc code or data and none of the shim's writable data may
/// be used (the test `restorer_calls_no_libc` checks the machine code for calls through the PLT).
#[inline(never)]
fn replace_address_space(p: &Plan) {
    // 2. The program break, while this process's own heap mapping is still there: the kernel moves the
    //    break only over its own heap mapping (shrinking one that is gone fails and leaves the break
    //    where it was; malloc's next sbrk would then grow the heap from the wrong place, leaving a hole
    //    under it). PR_SET_MM_MAP sets the break again at the end (`restore_arg_area`).
    // SAFETY: brk has no memory preconditions.
    let brk = unsafe { syscall3(SYS_brk, p.brk as usize, 0, 0) };
    // SAFETY: the plan is in the writable arena; only this thread runs.
    unsafe { core::ptr::write_volatile(core::ptr::addr_of!(p.brk_set) as *mut u64, (brk as u64 == p.brk) as u64) };
    //    Then unmap everything but the vDSO/vvar, the arena and the identical file mappings.
    // SAFETY: the plan reserves `maps_cap` bytes at `maps_buf` (below the restorer's stack) for this read
    // alone.
    let n = read_file(b"/proc/self/maps\0", unsafe { core::slice::from_raw_parts_mut(p.maps_buf, p.maps_cap) });
    if n < 0 {
        fatal(b"cannot read /proc/self/maps", 0, n);
    }
    // SAFETY: the buffer holds `n` bytes just read.
    let text = unsafe { core::slice::from_raw_parts(p.maps_buf as *const u8, n as usize) };
    // SAFETY: the plan's arrays are in the arena.
    let regions = unsafe { core::slice::from_raw_parts(p.regions, p.nregions) };
    let mut line_start = 0usize;
    while line_start < text.len() {
        let mut line_end = line_start;
        while line_end < text.len() && text[line_end] != b'\n' {
            line_end += 1;
        }
        let line = &text[line_start..line_end];
        line_start = line_end + 1;
        let (start, end) = parse_range(line);
        if start == end {
            continue;
        }
        if ends_with(line, b"[vdso]")
            || ends_with(line, b"[vvar]")
            || ends_with(line, b"[vvar_vclock]")
            || ends_with(line, b"[vsyscall]")
        {
            continue;
        }
        if start >= p.arena_start as u64 && end <= (p.arena_start + p.arena_len) as u64 {
            continue;
        }
        let mut kept = false;
        let mut i = 0;
        while i < regions.len() {
            if regions[i].keep != 0 && regions[i].start == start && regions[i].end == end {
                kept = true;
            }
            i += 1;
        }
        if kept {
            continue;
        }
        // SAFETY: unmapping a range of this process that no live code or data of the restorer uses.
        let r = unsafe { syscall3(SYS_munmap, start as usize, (end - start) as usize, 0) };
        if r < 0 {
            fatal(b"munmap", start, r);
        }
    }
    // 3. The program break was set before the unmapping (see above); the heap region is mapped over it below.
    // 4. Every region, then its saved pages, then its final protection.
    // SAFETY: the plan's arrays are in the arena.
    let runs = if p.nruns == 0 { &[][..] } else { unsafe { core::slice::from_raw_parts(p.runs, p.nruns) } };
    let mut i = 0;
    while i < regions.len() {
        let r = &regions[i];
        i += 1;
        if r.keep != 0 {
            continue;
        }
        let len = (r.end - r.start) as usize;
        let has_runs = r.run_count > 0;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
        let addr = if r.kind == KIND_FILE {
            let fd = open_cstr(r.path, libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                fatal(b"cannot open a mapped file for the region at", r.start, fd);
            }
            let prot = if has_runs { r.prot | rw } else { r.prot };
            // SAFETY: maps the file privately at the region's address (its old mapping is gone).
            let a = unsafe {
                syscall6(
                    SYS_mmap,
                    r.start as usize,
                    len,
                    prot as usize,
                    (libc::MAP_PRIVATE | libc::MAP_FIXED) as usize,
                    fd as usize,
                    r.file_offset as usize,
                )
            };
            close(fd as i32);
            a
        } else {
            let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
            if r.kind == KIND_STACK {
                flags |= libc::MAP_GROWSDOWN;
            }
            if r.kind == KIND_GUARD || r.noreserve != 0 {
                flags |= libc::MAP_NORESERVE;
            }
            let prot = if r.kind == KIND_GUARD { 0 } else { rw };
            // SAFETY: a fresh anonymous mapping at the region's address.
            unsafe { syscall6(SYS_mmap, r.start as usize, len, prot as usize, flags as usize, usize::MAX, 0) }
        };
        if addr < 0 || addr as u64 != r.start {
            fatal(b"cannot map the region at", r.start, addr);
        }
        let mut k = 0;
        while k < r.run_count {
            let run = &runs[r.run_first + k];
            k += 1;
            // Map the pages of anonymous memory copy-on-write from the image (no copy; they fault in when
            // touched), except on the stack, whose lowest mapping must stay anonymous to grow down. A file
            // region's saved pages (relocations, written .data) are read into its private mapping of its own
            // file, as they were in the checkpointed process: mapped from the image they would split the
            // region, and the next checkpoint would see a mapping of the image where the program has its file.
            if p.map_runs != 0 && r.kind != KIND_STACK && r.kind != KIND_FILE && run.file_offset % 4096 == 0 {
                // SAFETY: replaces part of the region just mapped with a private mapping of the image.
                let a = unsafe {
                    syscall6(
                        SYS_mmap,
                        run.addr as usize,
                        run.len as usize,
                        rw as usize,
                        (libc::MAP_PRIVATE | libc::MAP_FIXED) as usize,
                        p.image_fd as usize,
                        run.file_offset as usize,
                    )
                };
                if a < 0 || a as u64 != run.addr {
                    fatal(b"cannot map the saved pages at", run.addr, a.min(0));
                }
                continue;
            }
            // SAFETY: the run lies inside the region just mapped writable.
            let got = unsafe { pread_full(p.image_fd, run.addr as usize, run.len as usize, run.file_offset) };
            if got != run.len as isize {
                fatal(b"short read of the saved pages at", run.addr, got.min(0));
            }
        }
        if r.kind != KIND_GUARD && (has_runs || r.kind != KIND_FILE) && r.prot != rw {
            // SAFETY: changes the protection of the region just restored.
            unsafe { syscall3(SYS_mprotect, r.start as usize, len, r.prot as usize) };
        }
    }
}

fn open_cstr(path: *const u8, flags: i32) -> isize {
    // SAFETY: `path` is a NUL-terminated string in the arena.
    unsafe { syscall6(SYS_openat, libc::AT_FDCWD as usize, path as usize, flags as usize, 0o600, 0, 0) }
}

/// Byte comparison without `memcmp` (libc may not be mapped while this runs).
fn ends_with(line: &[u8], suffix: &[u8]) -> bool {
    if line.len() < suffix.len() {
        return false;
    }
    let base = line.len() - suffix.len();
    let mut i = 0;
    while i < suffix.len() {
        if line[base + i] != suffix[i] {
            return false;
        }
        i += 1;
    }
    true
}

fn parse_range(line: &[u8]) -> (u64, u64) {
    let mut start = 0u64;
    let mut end = 0u64;
    let mut i = 0;
    let mut second = false;
    while i < line.len() {
        let c = line[i];
        let d = match c {
            b'0'..=b'9' => (c - b'0') as u64,
            b'a'..=b'f' => (c - b'a' + 10) as u64,
            b'-' if !second => {
                second = true;
                i += 1;
                continue;
            }
            _ => break,
        };
        if second {
            end = end << 4 | d;
        } else {
            start = start << 4 | d;
        }
        i += 1;
    }
    (start, end)
}
