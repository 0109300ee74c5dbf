//! Process trees: the program and the child processes it started (a shell pipeline, `popen`, forked
//! workers), stopped at once and checkpointed into one image (see `ckpt_image::tree`).
//!
//! Every process of the tree runs the shim: a forked child inherits it with the parent's memory, an
//! exec'd one loads it again through `LD_PRELOAD` and recognises itself as a *member* (the root marker in
//! its environment names an ancestor). The root (the process `ckpt run` started) coordinates:
//!
//! 1. It lists its descendants (`/proc/<pid>/task/*/children`, recursively), refusing a zombie, a
//!    process of another process group or session, and one that does not run the shim (its `SigCgt`
//!    lacks [`TREE_SIGNAL`]: a static or setuid program, or `LD_PRELOAD` removed).
//! 2. It creates a coordination file (`/dev/shm`, else `/tmp`; private, created afresh) with one slot per
//!    member, and sends each member [`TREE_SIGNAL`] with its slot and the checkpoint's sequence.
//! 3. Each member stops its own threads and reports *stopped*; the root waits for all of them (5 s, else
//!    it releases them and refuses), then compares each member's descriptors with its parent's
//!    (`kcmp`: the root may inspect its descendants) to find the open file descriptions they share.
//! 4. Every process then records its descriptors, copies the unread bytes of the pipes it reads from
//!    (`tee` into a scratch pipe: nothing is consumed), forks its writer and reports *forked*. With
//!    everyone frozen between the two reports, the pipes' contents and every process's memory belong to
//!    the same instant.
//! 5. The root lets everyone go on (or, for a checkpoint-and-exit, waits for its writer and ends the
//!    members once the image is committed). Each member's writer writes a complete process image next
//!    to the coordination file; the root's writer waits for them, checks the pipes (every pipe must lead
//!    to a process of the tree, or be one of the root's standard descriptors), stores each member's
//!    image as a section of its own and commits the one file.
//!
//! Everything here runs in signal handlers: raw system calls and static memory only.

use std::ffi::c_int;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};

use crate::Shared;
use crate::sys::*;

/// The signal that asks a member to take part in a tree checkpoint (SIGRTMAX-5), reserved like the
/// checkpoint signals.
pub(crate) const TREE_SIGNAL: c_int = 59;
/// Tag in the top 16 bits of the signal's value.
const TREE_TAG: usize = 0x7EE;
/// Most processes in a tree, the root included.
pub(crate) const MAX_TREE: usize = ckpt_image::tree::MAX_TREE;
/// How long the root waits for every member to stop.
const STOP_TIMEOUT_NS: u64 = 5_000_000_000;
/// How long a member whose program has no SIGTERM handler waits, on SIGTERM, for the root's tree
/// checkpoint (Slurm signals every process of a step at once) before the signal's action.
const TERM_HOLD_NS: u64 = 2_000_000_000;

// The coordination file: slot 0 holds the phase, slot i (1..=n) member i-1.
const SLOT: usize = 64;
const PHASE_STOPPING: u32 = 0;
const PHASE_CAPTURE: u32 = 1;
const PHASE_RESUME: u32 = 2;
const PHASE_ABORT: u32 = 3;
const PHASE_COMMITTED: u32 = 4;
const PHASE_FAILED: u32 = 5;
pub(crate) const STATE_STOPPED: u32 = 1;
pub(crate) const STATE_FORKED: u32 = 2;
pub(crate) const STATE_WRITTEN: u32 = 3;
pub(crate) const STATE_FAILED: u32 = 4;

/// A member of the tree being checkpointed (root: every member; the writer reads its copy).
#[derive(Clone, Copy)]
pub(crate) struct Member {
    pub pid: i32,
    pub ppid: i32,
    pub comm: [u8; 16],
}

pub(crate) static MEMBERS: Shared<[Member; MAX_TREE]> =
    Shared::new([Member { pid: 0, ppid: 0, comm: [0; 16] }; MAX_TREE]);
pub(crate) static NMEMBERS: AtomicUsize = AtomicUsize::new(0);
/// The coordination file of the checkpoint in progress (-1: none).
pub(crate) static CTL_FD: AtomicI32 = AtomicI32::new(-1);
/// The checkpoint in progress: its sequence (the root's) and, in a member, its slot.
pub(crate) static TREE_SEQ: AtomicU64 = AtomicU64::new(0);
pub(crate) static MEMBER_SLOT: AtomicUsize = AtomicUsize::new(0);
/// Set while a member takes part in a tree checkpoint (a held SIGTERM waits for it).
static TREE_SEEN: AtomicU64 = AtomicU64::new(0);

/// Root only: member descriptors that share an open file description with their parent's descriptor
/// of the same number (pid, fd).
pub(crate) const MAX_INHERITED: usize = 1024;
pub(crate) static INHERITED: Shared<[(i32, i32); MAX_INHERITED]> = Shared::new([(0, 0); MAX_INHERITED]);
pub(crate) static NINHERITED: AtomicUsize = AtomicUsize::new(0);

/// Pipes whose unread bytes this process copied for the writer: inode, capacity, scratch read end.
pub(crate) const MAX_SCRATCH: usize = 64;
pub(crate) static SCRATCH: Shared<[(u64, u32, i32); MAX_SCRATCH]> = Shared::new([(0, 0, -1); MAX_SCRATCH]);
pub(crate) static NSCRATCH: AtomicUsize = AtomicUsize::new(0);

/// A refusal's message.
pub(crate) struct Refusal {
    pub buf: [u8; 300],
    pub len: usize,
    /// The state refused lasts an instant in a running program (a child that exited and is not reaped
    /// yet, `system()` in progress): the same checkpoint a moment later usually succeeds.
    pub transient: bool,
}

impl Refusal {
    /// About the tree as a whole (not one child).
    fn plain(text: &[u8]) -> Refusal {
        let mut r = Refusal { buf: [0; 300], len: 0, transient: false };
        put(&mut r.buf, &mut r.len, text);
        r
    }

    /// This refusal, marked as one of a state that passes (see `transient`).
    fn passing(mut self) -> Refusal {
        self.transient = true;
        self
    }

    fn new(parts: &[&[u8]], pid: i32, comm: &[u8]) -> Refusal {
        let mut r = Refusal { buf: [0; 300], len: 0, transient: false };
        put(&mut r.buf, &mut r.len, b"child process ");
        put_u64(&mut r.buf, &mut r.len, pid as u64);
        put(&mut r.buf, &mut r.len, b" (");
        put(&mut r.buf, &mut r.len, &comm[..cstr(comm)]);
        put(&mut r.buf, &mut r.len, b") ");
        for p in parts {
            put(&mut r.buf, &mut r.len, p);
        }
        r
    }
    pub fn text(&self) -> &[u8] {
        &self.buf[..self.len.min(self.buf.len())]
    }
}

fn cstr(b: &[u8]) -> usize {
    b.iter().position(|&c| c == 0).unwrap_or(b.len())
}

// ------------------------------------------------------------------------------------------- names

/// `<dir>/ckpt-tree-<uid>-<root marker>-<seq>` followed by `suffix` (NUL-terminated) into `out`; the
/// marker (pid, start time, nonce) is the root's, which every member's shim holds too.
pub(crate) fn tree_path(out: &mut [u8], seq: u64, member_pid: i32, suffix: &[u8]) -> usize {
    let mut pos = 0;
    let shm = open(b"/dev/shm\0", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0);
    if shm >= 0 {
        close(shm as i32);
        put(out, &mut pos, b"/dev/shm/ckpt-tree-");
    } else {
        put(out, &mut pos, b"/tmp/ckpt-tree-");
    }
    // SAFETY: geteuid has no arguments.
    put_u64(out, &mut pos, unsafe { syscall3(libc::SYS_geteuid, 0, 0, 0) } as u64);
    put(out, &mut pos, b"-");
    // SAFETY: the marker buffer is written at start (and by the restorer), never concurrently.
    let env = unsafe { &*crate::ROOT_MARKER_ENV.get() };
    let marker = &env[crate::ROOT_ENV_PREFIX.len()..crate::ROOT_ENV_LEN];
    for &b in marker {
        put(out, &mut pos, &[if b == b':' { b'-' } else { b }]);
    }
    put(out, &mut pos, b"-");
    put_u64(out, &mut pos, seq);
    if member_pid > 0 {
        put(out, &mut pos, b"-");
        put_u64(out, &mut pos, member_pid as u64);
    }
    put(out, &mut pos, suffix);
    put(out, &mut pos, b"\0");
    pos
}

fn pread_u32(fd: i32, offset: usize) -> u32 {
    let mut v = 0u32;
    // SAFETY: reads 4 bytes into `v`.
    let r = unsafe { syscall6(SYS_pread64, fd as usize, &mut v as *mut u32 as usize, 4, offset, 0, 0) };
    if r == 4 { v } else { u32::MAX }
}

fn pwrite_u32(fd: i32, offset: usize, v: u32) {
    // SAFETY: writes 4 bytes from `v`.
    unsafe { syscall6(libc::SYS_pwrite64, fd as usize, &v as *const u32 as usize, 4, offset, 0, 0) };
}

/// Member `slot`'s state (slot 0-based), and its writer's pid.
pub(crate) fn member_state(fd: i32, slot: usize) -> (u32, i32) {
    let base = (slot + 1) * SLOT;
    (pread_u32(fd, base + 4), pread_u32(fd, base + 8) as i32)
}

pub(crate) fn set_member_state(fd: i32, slot: usize, state: u32, writer: i32) {
    let base = (slot + 1) * SLOT;
    if writer != 0 {
        pwrite_u32(fd, base + 8, writer as u32);
    }
    pwrite_u32(fd, base + 4, state);
}

fn phase(fd: i32) -> u32 {
    pread_u32(fd, 0)
}

fn set_phase(fd: i32, p: u32) {
    pwrite_u32(fd, 0, p);
}

fn nap(ns: u64) {
    let ts = [0i64, ns as i64];
    // SAFETY: a valid relative timespec; no remainder wanted.
    unsafe { syscall3(libc::SYS_nanosleep, ts.as_ptr() as usize, 0, 0) };
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks.
    unsafe { syscall3(libc::SYS_kill, pid as usize, 0, 0) != -(libc::ESRCH as isize) }
}

// ------------------------------------------------------------------------------------ the root's side

/// Fields of `/proc/<pid>/stat` after the command name: (state, ppid, pgrp, session, exit signal).
fn stat_of(pid: i32, comm: &mut [u8; 16]) -> Option<(u8, i32, i32, i32, i32)> {
    let mut path = [0u8; 48];
    let pos = proc_path(&mut path, pid, b"stat");
    let mut buf = [0u8; 1024];
    let n = read_file(&path[..pos], &mut buf);
    if n <= 0 {
        return None;
    }
    let text = &buf[..n as usize];
    let open_paren = text.iter().position(|&b| b == b'(')?;
    let close = text.iter().rposition(|&b| b == b')')?;
    let name = &text[open_paren + 1..close];
    let k = name.len().min(15);
    comm[..k].copy_from_slice(&name[..k]);
    comm[k] = 0;
    let mut fields = text[close + 2..].split(|&b| b == b' ');
    let state = *fields.next()?.first()?;
    let num = |f: Option<&[u8]>| -> Option<i32> { crate::parse_decimal(f?).map(|v| v as i32) };
    let ppid = num(fields.next())?;
    let pgrp = num(fields.next())?;
    let session = num(fields.next())?;
    // Field 38 (exit_signal) is the 35th after the state.
    let exit_signal = num(fields.nth(31))?;
    Some((state, ppid, pgrp, session, exit_signal))
}

/// Whether `pid` catches [`TREE_SIGNAL`] (`SigCgt` in `/proc/<pid>/status`): it runs the shim.
fn catches_tree_signal(pid: i32) -> bool {
    let mut path = [0u8; 48];
    let pos = proc_path(&mut path, pid, b"status");
    let mut buf = [0u8; 4096];
    let n = read_file(&path[..pos], &mut buf);
    if n <= 0 {
        return false;
    }
    let text = &buf[..n as usize];
    let Some(at) = text.windows(7).position(|w| w == b"SigCgt:") else { return false };
    let mut mask = 0u64;
    for &b in text[at + 7..].iter().skip_while(|b| **b == b'\t' || **b == b' ') {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => break,
        };
        mask = (mask << 4) | d as u64;
    }
    mask & (1u64 << (TREE_SIGNAL - 1)) != 0
}

/// The numeric entries of a `/proc` directory (tids, descriptors) into `out`; how many (at most its
/// length).
fn numbered_entries(dir: &[u8], out: &mut [i32]) -> usize {
    let mut n = 0;
    let mut buf = [0u8; 4096];
    crate::for_each_dir_entry(dir, &mut buf, |name| {
        if let Some(v) = crate::parse_decimal(name)
            && n < out.len()
        {
            out[n] = v as i32;
            n += 1;
        }
    });
    n
}

/// The children of `pid` (all its threads'), appended to `out`; false when `out` overflows.
fn children_of(pid: i32, out: &mut [i32; MAX_TREE * 2], n: &mut usize) -> bool {
    let mut dir = [0u8; 48];
    let pos = proc_path(&mut dir, pid, b"task");
    let mut tids = [0i32; 512];
    let ntids = numbered_entries(&dir[..pos], &mut tids);
    let mut ok = true;
    for &t in &tids[..ntids] {
        let mut tail = [0u8; 40];
        let mut k = 0;
        put(&mut tail, &mut k, b"task/");
        put_u64(&mut tail, &mut k, t as u64);
        put(&mut tail, &mut k, b"/children");
        let mut path = [0u8; 64];
        let p = proc_path(&mut path, pid, &tail[..k]);
        let mut buf = [0u8; 1024];
        let len = read_file(&path[..p], &mut buf);
        if len == -(libc::EFBIG as isize) {
            return false;
        }
        if len <= 0 {
            continue;
        }
        for word in buf[..len as usize].split(|&b| b == b' ' || b == b'\n').filter(|w| !w.is_empty()) {
            if let Some(c) = crate::parse_decimal(word) {
                if *n >= out.len() {
                    ok = false;
                    break;
                }
                out[*n] = c as i32;
                *n += 1;
            }
        }
    }
    ok
}

/// Root: lists the members, checks them, signals them and waits until each one has stopped. Returns
/// how many there are (0: no child processes; nothing to coordinate).
#[allow(clippy::result_large_err, reason = "the refusal's text is built on the stack: no allocation in a handler")]
pub(crate) fn stop_members(seq: u64) -> Result<usize, Refusal> {
    NMEMBERS.store(0, Ordering::Relaxed);
    NINHERITED.store(0, Ordering::Relaxed);
    let me = getpid();
    let mut no_comm = [0u8; 16];
    let Some((_, _, my_pgrp, my_session, _)) = stat_of(me, &mut no_comm) else {
        return Err(Refusal::plain(b"the child processes cannot be listed: /proc/self/stat is unreadable"));
    };
    // SAFETY: the coordinating thread of a checkpoint is the only one touching the member list.
    let members = unsafe { &mut *MEMBERS.get() };
    let mut n = 0usize;
    let mut parents = [0i32; MAX_TREE];
    parents[0] = me;
    let mut nparents = 1;
    let mut next = 0;
    while next < nparents {
        let parent = parents[next];
        next += 1;
        let mut kids = [0i32; MAX_TREE * 2];
        let mut nkids = 0;
        if !children_of(parent, &mut kids, &mut nkids) {
            return Err(Refusal::plain(b"more child processes than a checkpoint records (63)"));
        }
        for &kid in &kids[..nkids] {
            let mut comm = [0u8; 16];
            let Some((state, _ppid, pgrp, session, exit_signal)) = stat_of(kid, &mut comm) else { continue };
            if exit_signal == 0 {
                // A writer (a raw clone without an exit signal): not part of the program.
                continue;
            }
            if state == b'Z' {
                return Err(Refusal::new(
                    &[b"has exited and was not waited for yet (a zombie); checkpoint again once the program \
                        has reaped it"],
                    kid,
                    &comm,
                )
                .passing());
            }
            if pgrp != my_pgrp || session != my_session {
                return Err(Refusal::new(
                    &[b"is in another process group or session (job control); this version restores a tree \
                        of one process group"],
                    kid,
                    &comm,
                ));
            }
            if !catches_tree_signal(kid) {
                return Err(Refusal::new(
                    &[b"does not run the shim (a statically linked or setuid program, or LD_PRELOAD was \
                        removed from its environment), so it cannot be checkpointed with the program"],
                    kid,
                    &comm,
                ));
            }
            if n + 1 >= MAX_TREE {
                return Err(Refusal::new(&[b"is one process more than a checkpoint records (63)"], kid, &comm));
            }
            members[n] = Member { pid: kid, ppid: parent, comm };
            n += 1;
            parents[nparents] = kid;
            nparents += 1;
        }
    }
    if n == 0 {
        return Ok(0);
    }
    if crate::pid::IN_SYSTEM.load(Ordering::Acquire) > 0 {
        return Err(Refusal::new(&[IN_SYSTEM_WHY], members[0].pid, &members[0].comm).passing());
    }
    // The coordination file, created afresh.
    let mut path = [0u8; 256];
    let len = tree_path(&mut path, seq, 0, b".ctl");
    let fd =
        open(&path[..len], libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o600);
    if fd < 0 {
        return Err(Refusal::plain(
            b"the child processes cannot be coordinated: the coordination file cannot be created in /dev/shm or /tmp",
        ));
    }
    let fd = fd as i32;
    // SAFETY: sizes the file we just created.
    unsafe { syscall3(SYS_ftruncate, fd as usize, (n + 1) * SLOT, 0) };
    for (i, m) in members[..n].iter().enumerate() {
        pwrite_u32(fd, (i + 1) * SLOT, m.pid as u32);
    }
    set_phase(fd, PHASE_STOPPING);
    CTL_FD.store(fd, Ordering::Relaxed);
    TREE_SEQ.store(seq, Ordering::Relaxed);
    NMEMBERS.store(n, Ordering::Release);
    for (i, m) in members[..n].iter().enumerate() {
        // siginfo: signo, errno, code (SI_QUEUE), pad, pid, uid, value.
        let mut info = [0u64; 16];
        info[0] = TREE_SIGNAL as u64;
        info[1] = (-1i32) as u32 as u64;
        // SAFETY: getuid has no arguments.
        info[2] = (me as u32 as u64) | ((unsafe { syscall3(libc::SYS_getuid, 0, 0, 0) } as u64) << 32);
        info[3] = ((TREE_TAG << 48) | (i << 32) | (seq as usize & 0xffff_ffff)) as u64;
        // SAFETY: queues a signal with a valid siginfo to a process of ours.
        let r = unsafe {
            syscall3(libc::SYS_rt_sigqueueinfo, m.pid as usize, TREE_SIGNAL as usize, info.as_ptr() as usize)
        };
        if r < 0 {
            abort(fd, &path[..len]);
            return Err(Refusal::new(&[b"could not be signalled"], m.pid, &m.comm));
        }
    }
    let start = monotonic_ns();
    loop {
        let mut waiting = None;
        for (i, m) in members[..n].iter().enumerate() {
            if member_state(fd, i).0 != STATE_STOPPED {
                waiting = Some(*m);
                break;
            }
        }
        let Some(m) = waiting else { break };
        let slot = members[..n].iter().position(|x| x.pid == m.pid).unwrap_or(0);
        if member_state(fd, slot).0 == STATE_FAILED {
            let mut note = [0u8; 256];
            let mut npath = [0u8; 256];
            let nlen = tree_path(&mut npath, seq, m.pid, b".err");
            let k = read_file(&npath[..nlen], &mut note).max(0) as usize;
            // Removes every member's note, this one's too.
            abort(fd, &path[..len]);
            return Err(Refusal::new(&[&note[..k]], m.pid, &m.comm));
        }
        if !alive(m.pid) || monotonic_ns() - start > STOP_TIMEOUT_NS {
            abort(fd, &path[..len]);
            return Err(Refusal::new(
                if alive(m.pid) { &[b"did not stop within 5 s"] } else { &[b"exited during the checkpoint"] },
                m.pid,
                &m.comm,
            ));
        }
        nap(100_000);
    }
    if let Err(r) = record_inherited(&members[..n]) {
        abort(fd, &path[..len]);
        return Err(r);
    }
    Ok(n)
}

/// Every member is stopped: which of their descriptors share an open file description with their
/// parent's of the same number (inherited across `fork`).
#[allow(clippy::result_large_err, reason = "the refusal's text is built on the stack: no allocation in a handler")]
fn record_inherited(members: &[Member]) -> Result<(), Refusal> {
    // SAFETY: the coordinating thread only.
    let list = unsafe { &mut *INHERITED.get() };
    let mut count = 0;
    for m in members {
        let mut dir = [0u8; 48];
        let pos = proc_path(&mut dir, m.pid, b"fd");
        let mut fds = [0i32; 1024];
        let nfds = numbered_entries(&dir[..pos], &mut fds);
        for &fd in &fds[..nfds] {
            // SAFETY: kcmp compares two descriptors of processes we may inspect (our descendants).
            let r =
                unsafe { syscall6(libc::SYS_kcmp, m.pid as usize, m.ppid as usize, 0, fd as usize, fd as usize, 0) };
            if r == 0 {
                if count >= MAX_INHERITED {
                    return Err(Refusal::new(&[b"shares too many descriptors with its parent"], m.pid, &m.comm));
                }
                list[count] = (m.pid, fd);
                count += 1;
            } else if r == -(libc::EPERM as isize) || r == -(libc::ENOSYS as isize) {
                return Err(Refusal::new(
                    &[b"cannot be compared with its parent (kcmp is not available here), so the open files \
                        they share cannot be restored shared"],
                    m.pid,
                    &m.comm,
                ));
            }
        }
    }
    NINHERITED.store(count, Ordering::Release);
    Ok(())
}

/// Root: the checkpoint failed before the writer was forked: every member goes on.
pub(crate) fn abort_members() {
    let fd = CTL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let mut path = [0u8; 256];
        let len = tree_path(&mut path, TREE_SEQ.load(Ordering::Relaxed), 0, b".ctl");
        abort(fd, &path[..len]);
    }
}

fn abort(fd: i32, path: &[u8]) {
    set_phase(fd, PHASE_ABORT);
    close(fd);
    // SAFETY: a NUL-terminated path.
    unsafe { syscall3(libc::SYS_unlink, path.as_ptr() as usize, 0, 0) };
    // The reasons members left (more than one may have failed): none outlives the checkpoint.
    // SAFETY: the coordinating thread only.
    let members = unsafe { &*MEMBERS.get() };
    let seq = TREE_SEQ.load(Ordering::Relaxed);
    for m in &members[..NMEMBERS.load(Ordering::Relaxed).min(MAX_TREE)] {
        let mut note = [0u8; 256];
        let len = tree_path(&mut note, seq, m.pid, b".err");
        // SAFETY: a NUL-terminated path.
        unsafe { syscall3(libc::SYS_unlink, note[..len].as_ptr() as usize, 0, 0) };
    }
    CTL_FD.store(-1, Ordering::Relaxed);
    NMEMBERS.store(0, Ordering::Relaxed);
}

/// Root, after its writer was forked: waits until every member has forked its writer, then (unless the
/// checkpoint ends the program) lets them go on. Returns false when a member failed (the checkpoint is
/// then failed by the root's writer too, which finds the member's state).
pub(crate) fn members_forked(exit: bool) -> bool {
    let n = NMEMBERS.load(Ordering::Acquire);
    let fd = CTL_FD.load(Ordering::Relaxed);
    if n == 0 || fd < 0 {
        return true;
    }
    set_phase(fd, PHASE_CAPTURE);
    // SAFETY: the coordinating thread only.
    let members = unsafe { &*MEMBERS.get() };
    let start = monotonic_ns();
    let mut ok = true;
    for (i, m) in members[..n].iter().enumerate() {
        loop {
            let s = member_state(fd, i).0;
            if s >= STATE_FORKED {
                ok &= s != STATE_FAILED;
                break;
            }
            if !alive(m.pid) || monotonic_ns() - start > STOP_TIMEOUT_NS {
                ok = false;
                break;
            }
            nap(50_000);
        }
    }
    if !exit || !ok {
        set_phase(fd, if exit { PHASE_FAILED } else { PHASE_RESUME });
    }
    ok
}

/// Root, at the end of its part of a tree checkpoint: for a checkpoint-and-exit, tells the members
/// whether the image was committed (they end by SIGTERM's default action then, else go on); closes and
/// removes the coordination file.
pub(crate) fn finish(exit: bool, committed: bool) {
    let fd = CTL_FD.swap(-1, Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    if exit {
        set_phase(fd, if committed { PHASE_COMMITTED } else { PHASE_FAILED });
    }
    close(fd);
    let mut path = [0u8; 256];
    let len = tree_path(&mut path, TREE_SEQ.load(Ordering::Relaxed), 0, b".ctl");
    // SAFETY: a NUL-terminated path. Members that still read it keep their open descriptor.
    unsafe { syscall3(libc::SYS_unlink, path[..len].as_ptr() as usize, 0, 0) };
}

// ------------------------------------------------------------------------------------ a member's side

/// Whether a signal's value is a tree checkpoint's request.
pub(crate) fn is_request(code: i32, value: usize) -> bool {
    code == crate::SI_QUEUE && value >> 48 == TREE_TAG
}

/// A member's part of a tree checkpoint (the [`TREE_SIGNAL`] handler in a process that is not the root).
pub(crate) fn member_checkpoint(value: usize, ucontext: usize, errno: i32) {
    TREE_SEEN.fetch_add(1, Ordering::AcqRel);
    let slot = (value >> 32) & 0xffff;
    let seq = (value & 0xffff_ffff) as u64;
    let mut path = [0u8; 256];
    let len = tree_path(&mut path, seq, 0, b".ctl");
    let fd = open(&path[..len], libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0);
    if fd < 0 {
        return;
    }
    let fd = fd as i32;
    // Only a coordination file of ours naming this process in this slot.
    // SAFETY: a zeroed stat is valid output space; geteuid has no arguments.
    let owned = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        syscall3(SYS_fstat, fd as usize, &mut st as *mut libc::stat as usize, 0) == 0
            && st.st_uid as isize == syscall3(libc::SYS_geteuid, 0, 0, 0)
    };
    if !owned || slot >= MAX_TREE || pread_u32(fd, (slot + 1) * SLOT) != getpid() as u32 {
        close(fd);
        return;
    }
    if crate::pid::IN_SYSTEM.load(Ordering::Acquire) > 0 {
        note_failure(seq, IN_SYSTEM_WHY);
        set_member_state(fd, slot, STATE_FAILED, 0);
        close(fd);
        return;
    }
    crate::wait_previous_writer();
    let mut dirbuf = [0u8; 4096];
    let multi = crate::count_dir_entries(b"/proc/self/task\0", &mut dirbuf) > 1;
    if multi {
        if crate::threads::stop_others(ucontext).is_err() {
            set_member_state(fd, slot, STATE_FAILED, 0);
            close(fd);
            return;
        }
    } else {
        crate::threads::NSLOTS.store(0, Ordering::Release);
        crate::threads::record_self(ucontext);
    }
    let release = || {
        if multi {
            crate::threads::release();
        }
    };
    set_member_state(fd, slot, STATE_STOPPED, 0);
    // Until the root has compared the descriptors and everyone has stopped.
    loop {
        let p = phase(fd);
        if p == PHASE_CAPTURE {
            break;
        }
        if p != PHASE_STOPPING || !alive(crate::ROOT_PID.load(Ordering::Relaxed)) {
            release();
            close(fd);
            return;
        }
        nap(50_000);
    }
    CTL_FD.store(fd, Ordering::Relaxed);
    TREE_SEQ.store(seq, Ordering::Relaxed);
    MEMBER_SLOT.store(slot, Ordering::Relaxed);
    let writer = crate::fork_writer(errno, ucontext, false, true);
    if writer > 0 {
        crate::WRITER_PID.store(writer, Ordering::Relaxed);
    }
    set_member_state(fd, slot, if writer > 0 { STATE_FORKED } else { STATE_FAILED }, writer);
    // Until the root says how it ended.
    loop {
        let p = phase(fd);
        if p == PHASE_COMMITTED {
            close(fd);
            crate::die_by_default(libc::SIGTERM);
        }
        if p == PHASE_RESUME || p == PHASE_ABORT || p == PHASE_FAILED {
            break;
        }
        if !alive(crate::ROOT_PID.load(Ordering::Relaxed)) {
            break;
        }
        nap(200_000);
    }
    CTL_FD.store(-1, Ordering::Relaxed);
    close(fd);
    release();
}

const IN_SYSTEM_WHY: &[u8] = b"runs under system(), which waits for it in a way a restart cannot resume; checkpoint \
    again once system() has returned";

/// A member's reason for not taking part, for the root's message (raw system calls: in the handler).
fn note_failure(seq: u64, why: &[u8]) {
    let mut path = [0u8; 256];
    let len = tree_path(&mut path, seq, getpid(), b".err");
    let fd =
        open(&path[..len], libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o600);
    if fd >= 0 {
        write_all(fd as i32, why);
        close(fd as i32);
    }
}

/// In a member, for a signal that ends the program when it has no handler of its own (SIGTERM): Slurm
/// signals every process of a step at once, and the root's checkpoint needs this process alive. Waits (at
/// most [`TERM_HOLD_NS`]) for the root's tree checkpoint to come and go, taking part in it (the tree
/// signal is let through this handler). Returns whether the caller should apply the signal's action:
/// not in a process restored from that checkpoint (it resumes here, and the signal belonged to the run
/// that ended).
pub(crate) fn hold_term() -> bool {
    let seen = TREE_SEEN.load(Ordering::Acquire);
    let restarts = crate::RESTARTS.load(Ordering::Acquire);
    let tree_signal: u64 = 1 << (TREE_SIGNAL - 1);
    // SAFETY: unblocks one signal for this thread; the handler's return restores the program's mask.
    unsafe {
        syscall6(SYS_rt_sigprocmask, libc::SIG_UNBLOCK as usize, &tree_signal as *const u64 as usize, 0, 8, 0, 0)
    };
    let start = monotonic_ns();
    while TREE_SEEN.load(Ordering::Acquire) == seen && monotonic_ns() - start < TERM_HOLD_NS {
        if !alive(crate::ROOT_PID.load(Ordering::Relaxed)) {
            break;
        }
        nap(1_000_000);
    }
    crate::RESTARTS.load(Ordering::Acquire) == restarts
}

// ------------------------------------------------------------------------------------- both sides

/// Copies, without consuming them, the unread bytes of every pipe this process can read from into a
/// scratch pipe each, for the writer (`tee`). Called with the program frozen, after the descriptors were
/// recorded (the scratch pipes are not the program's).
pub(crate) fn capture_pipes(snap: &crate::Snapshot) {
    // SAFETY: the coordinating thread only.
    let scratch = unsafe { &mut *SCRATCH.get() };
    let mut n = 0;
    for s in &snap.fds[..snap.nfds] {
        if s.mode & libc::S_IFMT != libc::S_IFIFO || s.flags & libc::O_ACCMODE == libc::O_WRONLY {
            continue;
        }
        if scratch[..n].iter().any(|e| e.0 == s.ino) || n >= MAX_SCRATCH {
            continue;
        }
        // SAFETY: fcntl and pipe2 on descriptors of ours; `ends` receives two descriptors.
        unsafe {
            let cap = syscall3(SYS_fcntl, s.fd as usize, libc::F_GETPIPE_SZ as usize, 0);
            let mut ends = [0i32; 2];
            if cap <= 0 || syscall3(libc::SYS_pipe2, ends.as_mut_ptr() as usize, libc::O_CLOEXEC as usize, 0) < 0 {
                continue;
            }
            syscall3(SYS_fcntl, ends[1] as usize, libc::F_SETPIPE_SZ as usize, cap as usize);
            // SPLICE_F_NONBLOCK: an empty pipe gives EAGAIN, not a wait.
            syscall6(libc::SYS_tee, s.fd as usize, ends[1] as usize, cap as usize, 2, 0, 0);
            close(ends[1]);
            scratch[n] = (s.ino, cap as u32, ends[0]);
        }
        n += 1;
    }
    NSCRATCH.store(n, Ordering::Release);
}

/// After the writer was forked (it has its own copies): closes the scratch pipes.
pub(crate) fn close_scratch() {
    // SAFETY: the coordinating thread only.
    let scratch = unsafe { &mut *SCRATCH.get() };
    let n = NSCRATCH.swap(0, Ordering::AcqRel).min(MAX_SCRATCH);
    for e in &mut scratch[..n] {
        close(e.2);
        e.2 = -1;
    }
}

// ------------------------------------------------------------------------------ the writers (no handler)

/// Where a member's writer writes its image (next to the coordination file).
pub(crate) fn member_image_path() -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut path = [0u8; 256];
    // SAFETY: the writer's copy of the snapshot (its `pid` is the member's; the writer's own differs).
    let pid = unsafe { (*crate::SNAPSHOT.get()).pid };
    let len = tree_path(&mut path, TREE_SEQ.load(Ordering::Relaxed), pid, b".img");
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&path[..len - 1]))
}

fn member_file(pid: i32, suffix: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut path = [0u8; 256];
    let len = tree_path(&mut path, TREE_SEQ.load(Ordering::Relaxed), pid, suffix);
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&path[..len - 1]))
}

/// A member's writer: the image is written.
pub(crate) fn member_written() {
    set_member_state(CTL_FD.load(Ordering::Relaxed), MEMBER_SLOT.load(Ordering::Relaxed), STATE_WRITTEN, 0);
}

/// A member's writer: no image, and why (for the root's message).
pub(crate) fn member_failed(why: &str) {
    // SAFETY: the writer's copy of the snapshot.
    let pid = unsafe { (*crate::SNAPSHOT.get()).pid };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let note = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(member_file(pid, b".err"));
    if let Ok(mut f) = note {
        let _ = f.write_all(why.as_bytes());
    }
    set_member_state(CTL_FD.load(Ordering::Relaxed), MEMBER_SLOT.load(Ordering::Relaxed), STATE_FAILED, 0);
}

/// The unread bytes of the pipes the handler copied ([`capture_pipes`]), read from the scratch pipes
/// this writer inherited.
pub(crate) fn read_scratch() -> ckpt_image::tree::PipeContents {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    // SAFETY: the writer's copy of the list, written before the fork.
    let scratch = unsafe { &*SCRATCH.get() };
    let n = NSCRATCH.load(Ordering::Acquire).min(MAX_SCRATCH);
    let mut pipes = Vec::new();
    for &(ino, cap, fd) in &scratch[..n] {
        if fd < 0 {
            continue;
        }
        // SAFETY: the scratch pipe's read end, inherited by this writer and owned by nothing else here.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut bytes = Vec::new();
        let _ = (&mut f).take(u64::from(cap)).read_to_end(&mut bytes);
        pipes.push((ino, cap, bytes));
    }
    ckpt_image::tree::PipeContents { pipes }
}

/// The root's writer: waits for every member's image, checks the tree's pipes, and stores each image
/// as a section of the root's, with the tree section. Returns the member images' paths (removed by the
/// caller once the root's image is committed or abandoned).
pub(crate) fn embed_members(
    w: &mut ckpt_core::CheckpointWriter,
    root: &ckpt_image::ProcessImage,
) -> Result<Vec<std::path::PathBuf>, crate::writer::Failure> {
    use crate::writer::Failure;
    use ckpt_image::tree::{InheritedFd, TreeMember, TreeSection, member_section};
    let n = NMEMBERS.load(Ordering::Acquire).min(MAX_TREE);
    let fd = CTL_FD.load(Ordering::Relaxed);
    if n == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the writer's copy of the list, written before the fork.
    let members = unsafe { &(&*MEMBERS.get())[..n] };
    let comm = |m: &Member| String::from_utf8_lossy(&m.comm[..cstr(&m.comm)]).into_owned();
    let paths: Vec<std::path::PathBuf> = members.iter().map(|m| member_file(m.pid, b".img")).collect();
    let cleanup = |paths: &[std::path::PathBuf]| remove_member_images(paths);
    for (i, m) in members.iter().enumerate() {
        loop {
            let (state, writer) = member_state(fd, i);
            if state == STATE_WRITTEN {
                break;
            }
            let gone = state == STATE_FAILED
                || writer > 0 && !alive(writer) && member_state(fd, i).0 != STATE_WRITTEN
                || state == u32::MAX;
            if gone {
                let why = std::fs::read_to_string(member_file(m.pid, b".err"))
                    .unwrap_or_else(|_| "its writer ended without an image".into());
                cleanup(&paths);
                return Err(Failure::Failed(format!("child process {} ({}): {}", m.pid, comm(m), why.trim())));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    let mut images = Vec::with_capacity(n);
    for (m, p) in members.iter().zip(&paths) {
        let read = || -> ckpt_core::Result<ckpt_image::ProcessImage> {
            let f = std::fs::File::open(p).map_err(|e| ckpt_core::Error::io("open", e).with_path(p))?;
            let cp = ckpt_core::Checkpoint::open_with(
                &ckpt_image::OpenedFile(f),
                p,
                ckpt_core::LoadOptions::new().mmap(false),
            )?;
            cp.verify()?;
            ckpt_image::read(&cp)
        };
        match read() {
            Ok(img) => images.push(img),
            Err(e) => {
                cleanup(&paths);
                return Err(Failure::Failed(format!("child process {} ({}): its image: {e}", m.pid, comm(m))));
            }
        }
    }
    let mut all: Vec<(i32, &ckpt_image::ProcessImage)> = vec![(root.pid, root)];
    all.extend(members.iter().map(|m| m.pid).zip(images.iter()));
    if let Err(why) = ckpt_image::tree::classify_pipes(&all) {
        cleanup(&paths);
        return Err(Failure::Refused(why));
    }
    let fail = |e: ckpt_core::Error| Failure::Failed(e.to_string());
    let plain = ckpt_core::SectionOptions::new().compression(ckpt_core::Compression::None);
    for (i, p) in paths.iter().enumerate() {
        use std::io::Read;
        let mut f = std::fs::File::open(p).map_err(|e| Failure::Failed(format!("{}: {e}", p.display())))?;
        let mut sw = w.section_writer(&member_section(i), plain).map_err(fail)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = f.read(&mut buf).map_err(|e| Failure::Failed(format!("{}: {e}", p.display())))?;
            if k == 0 {
                break;
            }
            sw.write_bytes(&buf[..k]).map_err(fail)?;
        }
        sw.finish().map_err(fail)?;
    }
    // SAFETY: the writer's copy of the list, written before the fork.
    let inherited = unsafe { &(&*INHERITED.get())[..NINHERITED.load(Ordering::Acquire).min(MAX_INHERITED)] };
    let tree = TreeSection {
        members: members
            .iter()
            .enumerate()
            .map(|(i, m)| TreeMember { pid: m.pid, ppid: m.ppid, comm: comm(m), section: member_section(i) })
            .collect(),
        inherited: inherited.iter().map(|&(pid, fd)| InheritedFd { pid, fd }).collect(),
    };
    let section = ckpt_image::tree::encode_tree(&tree).map_err(fail)?;
    w.add_section_with(ckpt_image::tree::TREE_SECTION, &section, plain.encoding(ckpt_core::Encoding::Postcard))
        .map_err(fail)?;
    Ok(paths)
}

/// Removes the members' image files (and their failure notes).
pub(crate) fn remove_member_images(paths: &[std::path::PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(p.with_extension("err"));
    }
}

/// In a restored process: no tree checkpoint is in progress (the memory is the checkpoint's, taken
/// while one was). Raw atomics only: called by the restorer.
pub(crate) fn reset_after_restore() {
    CTL_FD.store(-1, Ordering::Relaxed);
    NMEMBERS.store(0, Ordering::Relaxed);
    NSCRATCH.store(0, Ordering::Relaxed);
    NINHERITED.store(0, Ordering::Relaxed);
}

/// The root's writer failed: once every member's writer is done, removes what they wrote.
pub(crate) fn abandon_members() {
    let n = NMEMBERS.load(Ordering::Acquire).min(MAX_TREE);
    let fd = CTL_FD.load(Ordering::Relaxed);
    if n == 0 || fd < 0 {
        return;
    }
    // SAFETY: the writer's copy of the list, written before the fork.
    let members = unsafe { &(&*MEMBERS.get())[..n] };
    for (i, _) in members.iter().enumerate() {
        loop {
            let (state, writer) = member_state(fd, i);
            if state == STATE_WRITTEN || state == STATE_FAILED || state == u32::MAX || writer <= 0 || !alive(writer) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let paths: Vec<std::path::PathBuf> = members.iter().map(|m| member_file(m.pid, b".img")).collect();
    remove_member_images(&paths);
}
