//! The requesting side of the control socket (`ckpt create`): the directory checked once and then reached
//! through its descriptor, request and reply files created and read without following symlinks, and the
//! answering process checked to be this user's.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{ReplyLine, RequestLine, parse_registration, peer_uid};
use crate::error::{Error, ErrorKind, Result};

/// The answer to a checkpoint request.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The durable checkpoint's path.
    pub path: PathBuf,
    /// Its generation.
    pub generation: u64,
    /// The application step.
    pub step: u64,
}

/// Asks the process listening on `socket` for a checkpoint and waits up to `max_wait` for it to be durable.
///
/// The process at the other end must run as this user (`SO_PEERCRED`): a socket someone else bound (and
/// left where ours are looked for) could otherwise answer "ok" for a checkpoint that was never taken.
pub fn request_checkpoint(socket: &Path, image_dir: Option<&Path>, vacate: bool, max_wait: Duration) -> Result<Reply> {
    request_checkpoint_at(socket, socket, image_dir, vacate, max_wait)
}

/// [`request_checkpoint`] of the socket `name` in a checked directory (reached through its descriptor;
/// messages name its real path).
pub fn request_checkpoint_in(
    dir: &ClientDir,
    name: &str,
    image_dir: Option<&Path>,
    vacate: bool,
    max_wait: Duration,
) -> Result<Reply> {
    request_checkpoint_at(&dir.entry(name), &dir.path().join(name), image_dir, vacate, max_wait)
}

fn request_checkpoint_at(
    connect_to: &Path,
    socket: &Path,
    image_dir: Option<&Path>,
    vacate: bool,
    max_wait: Duration,
) -> Result<Reply> {
    let stream = UnixStream::connect(connect_to).map_err(|e| Error::io("connect", e).with_path(socket))?;
    check_peer_is_us(&stream, socket)?;
    let deadline = Instant::now() + max_wait;
    let image_dir = match image_dir {
        Some(d) => Some(std::path::absolute(d).map_err(|e| Error::io("resolve image directory", e).with_path(d))?),
        None => None,
    };
    let req = RequestLine { op: Some("checkpoint".into()), image_dir, vacate };
    let req = serde_json::to_string(&req).map_err(|e| Error::invalid(format!("encode request: {e}")))?;
    (&stream).write_all(format!("{req}\n").as_bytes()).map_err(|e| Error::io("send request", e).with_path(socket))?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "no durable checkpoint within MaxWait={}s (the process has not reached a safe point)",
                    max_wait.as_secs_f64()
                ),
            )
            .with_path(socket));
        }
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).map_err(|e| Error::io("socket", e))?;
        match reader.read_line(&mut line) {
            Ok(0) => {
                return Err(
                    Error::new(ErrorKind::Io, "the process closed the connection without answering").with_path(socket)
                );
            }
            Ok(_) if line.ends_with('\n') => break,
            // A partial line, or no answer yet: read on.
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(Error::io("read answer", e).with_path(socket)),
        }
    }
    let v: ReplyLine =
        serde_json::from_str(line.trim()).map_err(|e| Error::invalid(format!("bad answer {line:?}: {e}")))?;
    if !v.ok {
        let msg = v.error.as_deref().unwrap_or("unknown error");
        return Err(Error::new(ErrorKind::InvalidState, format!("checkpoint failed: {msg}")).with_path(socket));
    }
    Ok(Reply { path: v.path.unwrap_or_default(), generation: v.generation.unwrap_or(0), step: v.step.unwrap_or(0) })
}

/// The control sockets in `dir` of live processes matching `target`: a pid, a job id, or `job.step`.
/// The directory is checked first ([`ClientDir::open`]); paths reach it through its descriptor.
pub fn find_sockets(dir: &Path, target: &str) -> Result<Vec<(u32, PathBuf)>> {
    find_registrations(dir, target, ".sock")
}

/// Like [`find_sockets`], for registration files ending in `suffix`.
pub fn find_registrations(dir: &Path, target: &str, suffix: &str) -> Result<Vec<(u32, PathBuf)>> {
    let Some(dir) = ClientDir::open(dir)? else { return Ok(Vec::new()) };
    Ok(dir.find(target, suffix)?.into_iter().map(|(pid, name)| (pid, dir.entry(&name))).collect())
}

/// Refuses a connection whose peer is not this user (`SO_PEERCRED` of the connected socket).
pub fn check_peer_is_us(stream: &UnixStream, socket: &Path) -> Result<()> {
    let me = crate::sys::euid();
    let uid = peer_uid(stream).map_err(|e| Error::io("SO_PEERCRED", e).with_path(socket))?;
    if uid != me {
        return Err(untrusted(format!(
            "the process listening on this socket runs as uid {uid}, not as you (uid {me}): it is not one of your \
             processes, so its answer cannot be trusted; nothing was requested"
        ))
        .with_path(socket));
    }
    Ok(())
}

/// An error for something another user controls (or could have).
fn untrusted(message: String) -> Error {
    Error::new(ErrorKind::Untrusted, message)
}

/// The control-socket directory as the requesting side (`ckpt create`) uses it: opened once without
/// following a symlink, checked like the listening side checks it (a directory owned by this user, mode
/// 0700), and from then on reached only through its descriptor (`/proc/self/fd/<n>/<name>` and `*at`
/// calls), so renaming another directory into its place later changes nothing.
///
/// Whoever creates `$TMPDIR/ckpt-<uid>` first owns it: if that was another user, every name in it (a
/// registration naming a pid and a signal, a socket answering "ok", a symlink at a request file's name)
/// is theirs, and it is refused before any of it is read.
#[derive(Debug)]
pub struct ClientDir {
    fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl ClientDir {
    /// Opens and checks `dir`; `Ok(None)` when it does not exist (no process ever listened).
    pub fn open(dir: &Path) -> Result<Option<ClientDir>> {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| Error::invalid("the socket directory's path contains a NUL byte"))?;
        // SAFETY: a NUL-terminated path; the flags create nothing.
        let fd =
            unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                Some(libc::ELOOP) => Err(untrusted(
                    "the socket directory is a symlink; it must be a directory of your own (mode 0700), \
                     and nothing was read from it"
                        .into(),
                )
                .with_path(dir)),
                Some(libc::ENOTDIR) => Err(untrusted(
                    "the socket directory is not a directory (or a symlink on the way to it is broken)".into(),
                )
                .with_path(dir)),
                _ => Err(Error::io("open the socket directory", e).with_path(dir)),
            };
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let meta = std::fs::File::from(fd.try_clone().map_err(|e| Error::io("dup", e))?)
            .metadata()
            .map_err(|e| Error::io("stat the socket directory", e).with_path(dir))?;
        let me = crate::sys::euid();
        if meta.uid() != me {
            return Err(untrusted(format!(
                "the socket directory belongs to uid {}, not to you (uid {me}): another user created it first, \
                 so its registrations and sockets cannot be trusted (nothing was read or signalled); remove it \
                 or point CKPT_SOCKET_DIR (or TMPDIR) elsewhere",
                meta.uid()
            ))
            .with_path(dir));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(untrusted(format!(
                "the socket directory has mode {:o}; it must be 0700 (other users could plant registrations, \
                 sockets or symlinks in it), and nothing was read from it",
                meta.mode() & 0o7777
            ))
            .with_path(dir));
        }
        Ok(Some(ClientDir { fd, path: dir.to_path_buf() }))
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path to `name` inside the checked directory, through its descriptor (for `connect`).
    pub fn entry(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }

    /// Names of live processes' registrations ending in `suffix` that match `target` (a pid, a job id, or
    /// `job.step`), with their pids: the pid's own entry wins over job matches.
    pub fn find(&self, target: &str, suffix: &str) -> Result<Vec<(u32, String)>> {
        let (want_job, want_step) = match target.split_once('.') {
            Some((j, s)) => {
                (j.to_string(), Some(s.parse::<u32>().map_err(|_| Error::invalid(format!("bad job step {target:?}")))?))
            }
            None => (target.to_string(), None),
        };
        let listing = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let entries =
            std::fs::read_dir(&listing).map_err(|e| Error::io("list socket directory", e).with_path(&self.path))?;
        let mut by_pid = Vec::new();
        let mut by_job = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((pid, job, step)) = parse_registration(&name, suffix) else { continue };
            // Only processes this user may signal: a pid another user now holds is not one of ours.
            if !crate::sys::may_signal(pid) {
                continue;
            }
            if want_step.is_none() && target == pid.to_string() {
                by_pid.push((pid, name));
            } else if job.as_deref() == Some(want_job.as_str()) && (want_step.is_none() || step == want_step) {
                by_job.push((pid, name));
            }
        }
        let mut out = if by_pid.is_empty() { by_job } else { by_pid };
        out.sort();
        Ok(out)
    }

    /// Reads `name`, a regular file of this user (no symlink is followed), up to 64 KiB; `Ok(None)` when
    /// it does not exist.
    pub fn read_own_file(&self, name: &str) -> Result<Option<String>> {
        let path = self.path.join(name);
        let fd = match self.openat(name, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(
                    untrusted("a symlink where a file of the shim was expected; not followed".into()).with_path(path)
                );
            }
            Err(e) => return Err(Error::io("open", e).with_path(path)),
        };
        let file = std::fs::File::from(fd);
        let meta = file.metadata().map_err(|e| Error::io("stat", e).with_path(&path))?;
        let me = crate::sys::euid();
        if !meta.is_file() || meta.uid() != me {
            return Err(untrusted(format!(
                "not a regular file of yours (uid {}, mode {:o}); not read",
                meta.uid(),
                meta.mode() & 0o17_0777
            ))
            .with_path(path));
        }
        let mut text = String::new();
        file.take(64 << 10).read_to_string(&mut text).map_err(|e| Error::io("read", e).with_path(&path))?;
        Ok(Some(text))
    }

    /// Creates `name` afresh (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600) with `contents`. A leftover at the
    /// name (a file, a symlink: whatever it points to is never touched) is removed first.
    pub fn create_new(&self, name: &str, contents: &[u8]) -> Result<()> {
        let path = self.path.join(name);
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let fd = match self.openat(name, flags, 0o600) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.remove(name);
                self.openat(name, flags, 0o600)
            }
            r => r,
        }
        .map_err(|e| Error::io("create", e).with_path(&path))?;
        std::fs::File::from(fd).write_all(contents).map_err(|e| Error::io("write", e).with_path(&path))
    }

    /// Removes `name` if it exists (`unlinkat`: a symlink is removed, not followed).
    pub fn remove(&self, name: &str) {
        let Ok(c) = std::ffi::CString::new(name) else { return };
        // SAFETY: a live directory descriptor and a NUL-terminated name.
        unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
    }

    fn openat(&self, name: &str, flags: i32, mode: libc::c_uint) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        if name.contains('/') {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let c = std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a live directory descriptor and a NUL-terminated name without a slash.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, mode) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just opened, owned by nobody else.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }
}
