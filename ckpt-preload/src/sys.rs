//! Raw Linux x86_64 system calls and byte helpers that touch neither libc nor the Rust allocator.
//!
//! The signal handler (before the writer is forked) and the restorer (while the address space is being
//! replaced) may only use these: libc's wrappers read libc data that is being replaced, and `memcpy`
//! calls emitted by the compiler would jump through a GOT that may not be mapped yet.

use core::arch::asm;

pub use libc::{
    SYS_arch_prctl, SYS_brk, SYS_chdir, SYS_close, SYS_close_range, SYS_dup3, SYS_exit_group, SYS_fcntl, SYS_fstat,
    SYS_ftruncate, SYS_getdents64, SYS_getpid, SYS_gettid, SYS_lseek, SYS_mmap, SYS_mprotect, SYS_munmap, SYS_openat,
    SYS_pread64, SYS_read, SYS_rseq, SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_setitimer, SYS_tgkill, SYS_timer_create,
    SYS_timer_settime, SYS_umask, SYS_wait4, SYS_write,
};

/// A system call with up to six arguments; returns the raw result (`-errno` on failure).
///
/// # Safety
/// The caller upholds the kernel contract of call `n` (valid pointers, lengths, ownership of fds).
#[inline(always)]
pub unsafe fn syscall6(n: libc::c_long, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize, a6: usize) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 syscall convention: number in rax, arguments in rdi, rsi, rdx, r10, r8, r9; the
    // kernel clobbers rcx and r11 and returns in rax. Memory effects are the caller's contract.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2, in("rdx") a3,
             in("r10") a4, in("r8") a5, in("r9") a6, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// `syscall6` with fewer arguments.
///
/// # Safety
/// As [`syscall6`].
#[inline(always)]
pub unsafe fn syscall3(n: libc::c_long, a1: usize, a2: usize, a3: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall6(n, a1, a2, a3, 0, 0, 0) }
}

/// Ends the whole process now (no atexit handlers, no stdio flush).
pub fn exit_group(code: i32) -> ! {
    // SAFETY: exit_group takes no pointers and does not return.
    unsafe {
        syscall3(SYS_exit_group, code as usize, 0, 0);
    }
    loop {
        core::hint::spin_loop();
    }
}

/// Writes all of `buf` to `fd`, ignoring errors (used for diagnostics).
pub fn write_all(fd: i32, buf: &[u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the live remainder of `buf`.
        let n = unsafe { syscall3(SYS_write, fd as usize, buf.as_ptr() as usize + done, buf.len() - done) };
        if n == -(libc::EINTR as isize) {
            continue;
        }
        if n <= 0 {
            return;
        }
        done += n as usize;
    }
}

/// Opens `path` (a NUL-terminated byte string) relative to the cwd.
pub fn open(path: &[u8], flags: i32, mode: u32) -> isize {
    if path.last() != Some(&0) {
        return -(libc::EINVAL as isize);
    }
    // SAFETY: `path` is NUL-terminated (checked) and outlives the call.
    unsafe {
        syscall6(SYS_openat, libc::AT_FDCWD as usize, path.as_ptr() as usize, flags as usize, mode as usize, 0, 0)
    }
}

/// Closes `fd`.
pub fn close(fd: i32) {
    // SAFETY: closing a descriptor has no memory effects.
    unsafe {
        syscall3(SYS_close, fd as usize, 0, 0);
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; returns the bytes read or `-errno`.
///
/// # Safety
/// `buf..buf+len` must be writable memory of this process.
pub unsafe fn pread_full(fd: i32, buf: usize, len: usize, mut offset: u64) -> isize {
    let mut done = 0usize;
    while done < len {
        // SAFETY: the caller guarantees the destination range is writable.
        let n = unsafe { syscall6(SYS_pread64, fd as usize, buf + done, len - done, offset as usize, 0, 0) };
        if n == -(libc::EINTR as isize) {
            continue;
        }
        if n < 0 {
            return n;
        }
        if n == 0 {
            break;
        }
        done += n as usize;
        offset += n as u64;
    }
    done as isize
}

/// Reads a whole (small, `/proc`) file into `buf`; returns the length or `-errno`. Fails with `-EFBIG`
/// when `buf` is too small.
pub fn read_file(path: &[u8], buf: &mut [u8]) -> isize {
    let fd = open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0);
    if fd < 0 {
        return fd;
    }
    let mut len = 0usize;
    loop {
        if len == buf.len() {
            close(fd as i32);
            return -(libc::EFBIG as isize);
        }
        // SAFETY: the destination is the unused tail of `buf`.
        let n = unsafe { syscall3(SYS_read, fd as usize, buf.as_mut_ptr() as usize + len, buf.len() - len) };
        if n == -(libc::EINTR as isize) {
            continue;
        }
        if n < 0 {
            close(fd as i32);
            return n;
        }
        if n == 0 {
            break;
        }
        len += n as usize;
    }
    close(fd as i32);
    len as isize
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { syscall3(SYS_gettid, 0, 0, 0) as i32 }
}

/// The process id.
pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { syscall3(SYS_getpid, 0, 0, 0) as i32 }
}

/// The process group of this process (`getpgid(0)`).
pub fn getpgrp() -> i32 {
    // SAFETY: no memory is passed.
    unsafe { syscall3(libc::SYS_getpgid, 0, 0, 0) as i32 }
}

/// CLOCK_MONOTONIC in nanoseconds (through the vDSO-free syscall: safe anywhere).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds since the epoch (as [`monotonic_ns`]).
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe {
        syscall3(libc::SYS_clock_gettime, clock as usize, &mut ts as *mut _ as usize, 0);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Appends decimal `v` to `out` at `*pos` (diagnostics without formatting machinery).
pub fn put_u64(out: &mut [u8], pos: &mut usize, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while n > 0 {
        n -= 1;
        put(out, pos, &[digits[n]]);
    }
}

/// Appends `s` to `out` at `*pos`, truncating at the end of `out`.
pub fn put(out: &mut [u8], pos: &mut usize, s: &[u8]) {
    for &b in s {
        if *pos < out.len() {
            out[*pos] = b;
            *pos += 1;
        }
    }
}

/// Appends `v` in hexadecimal.
pub fn put_hex(out: &mut [u8], pos: &mut usize, v: u64) {
    put(out, pos, b"0x");
    let mut started = false;
    for i in (0..16).rev() {
        let d = ((v >> (i * 4)) & 0xf) as u8;
        if d != 0 || started || i == 0 {
            started = true;
            put(out, pos, &[if d < 10 { b'0' + d } else { b'a' + d - 10 }]);
        }
    }
}

/// `arch_prctl` codes (asm/prctl.h).
pub const ARCH_SET_FS: i32 = 0x1002;
/// Reads the FS base.
pub const ARCH_GET_FS: i32 = 0x1003;

/// Waits for the child `pid` (a raw clone's too: `__WALL`), again after EINTR; its wait status.
pub fn wait_child(pid: i32) -> i32 {
    let mut status = 0i32;
    loop {
        // SAFETY: waits for a child of this process; `status` is writable.
        let r = unsafe {
            syscall6(SYS_wait4, pid as usize, &mut status as *mut i32 as usize, libc::__WALL as usize, 0, 0, 0)
        };
        if r != -(libc::EINTR as isize) {
            return status;
        }
    }
}

/// `/proc/<pid>/<tail>` (NUL-terminated) into `out`; its length with the NUL.
pub fn proc_path(out: &mut [u8], pid: i32, tail: &[u8]) -> usize {
    let mut pos = 0;
    put(out, &mut pos, b"/proc/");
    put_u64(out, &mut pos, pid as u64);
    put(out, &mut pos, b"/");
    put(out, &mut pos, tail);
    put(out, &mut pos, b"\0");
    pos
}

/// Every signal of the calling thread blocked (the checkpoint signals, the park signal of another
/// thread's checkpoint and the program's own) until dropped, when the thread's mask is set back as it was:
/// no checkpoint is taken in between, so an id made current for this incarnation is used in it (a
/// checkpoint between the two would leave the call, after the restart, with the previous incarnation's).
/// Raw system calls: the interposed `sigprocmask` never blocks the reserved signals.
pub(crate) struct SignalsBlocked(u64);

impl SignalsBlocked {
    pub(crate) fn new() -> Self {
        let all: u64 = !0;
        let mut old: u64 = 0;
        // SAFETY: kernel sigset pointers of 8 bytes, valid for the call.
        unsafe {
            syscall6(
                SYS_rt_sigprocmask,
                libc::SIG_SETMASK as usize,
                &all as *const u64 as usize,
                &mut old as *mut u64 as usize,
                8,
                0,
                0,
            )
        };
        SignalsBlocked(old)
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: as in `new`; the mask the thread had.
        unsafe { syscall6(SYS_rt_sigprocmask, libc::SIG_SETMASK as usize, &self.0 as *const u64 as usize, 0, 8, 0, 0) };
    }
}
