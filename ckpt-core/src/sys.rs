//! The few operating-system calls the core makes that std does not wrap: the one place (with the signal
//! handling in `checkpointer`, the `poll` loop, squeue's process group and the direct-I/O writer) where
//! the core uses `unsafe`. Everything here is safe to call.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `kill(pid, 0)`: `Ok` when a signal could be sent, else the errno.
fn probe(pid: u32) -> io::Result<()> {
    // Pid 0 and negative pids name process groups, not one process.
    let pid = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0).ok_or(io::ErrorKind::InvalidInput)?;
    // SAFETY: signal 0 performs only the existence and permission checks; nothing is sent.
    if unsafe { libc::kill(pid, 0) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether a process `pid` exists, whoever owns it. For deciding that what a process left (a temporary
/// file, a registration, a socket) is abandoned: `EPERM` means the pid is alive under another user, and
/// its files must stay. Only `ESRCH` says it is gone.
pub(crate) fn process_exists(pid: u32) -> bool {
    match probe(pid) {
        Ok(()) => true,
        Err(e) => e.kind() != io::ErrorKind::InvalidInput && e.raw_os_error() != Some(libc::ESRCH),
    }
}

/// Whether `pid` exists and this user may signal it. For choosing which processes to talk to (`ckpt
/// create`): a pid another user now holds (`EPERM`) is not one of ours, although it exists.
pub(crate) fn may_signal(pid: u32) -> bool {
    probe(pid).is_ok()
}

/// The file-system type (`f_type` of statfs(2)) of the file system holding `path`.
/// Maps in the pages of `bytes`, a part of a read-only file mapping, in one call
/// (`MADV_POPULATE_READ`, Linux 5.14) instead of one page fault per page when they are first read; a
/// `write` from the mapping would otherwise take each fault inside the kernel's copy, page by page. A
/// hint: nothing happens where it is not supported, and the bytes read the same either way.
pub(crate) fn populate_read(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = bytes.as_ptr() as usize;
        let aligned = start & !(PAGE - 1);
        let len = bytes.len() + (start - aligned);
        if bytes.is_empty() {
            return;
        }
        // SAFETY: madvise only changes how the kernel backs the range: `aligned..start + bytes.len()` lies
        // within the mapping `bytes` belongs to (the page `bytes` starts in is part of the same mapping,
        // mappings being page-granular), and MADV_POPULATE_READ reads the pages without changing them.
        unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_POPULATE_READ) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

#[cfg(target_os = "linux")]
pub(crate) fn fs_type_of_path(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct, which statfs then fills.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a statfs this function owns.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs by architecture
    Ok(st.f_type as i64)
}

/// The file-system type (`f_type` of fstatfs(2)) of the open file `file`.
#[cfg(target_os = "linux")]
pub(crate) fn fs_type_of_file(file: &impl AsRawFd) -> io::Result<i64> {
    // SAFETY: an all-zero statfs is a valid value of this plain C struct, which fstatfs then fills.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor the caller borrows to us and a pointer to a statfs this function owns.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs by architecture
    Ok(st.f_type as i64)
}

/// The user id of the process at the other end of a Unix socket (`SO_PEERCRED`).
///
/// # Errors
///
/// `getsockopt(SO_PEERCRED)` failed (not a Unix socket, a closed descriptor).
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `stream`; `cred` and `len` are valid for writes of the
    // sizes given, as SO_PEERCRED requires.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}
