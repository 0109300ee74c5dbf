//! The control socket: checkpoint requests from outside the process (`ckpt create`, which stands in for
//! `scontrol checkpoint create` of Slurm's removed checkpoint interface, with `ImageDir=` and `MaxWait=`).
//!
//! Every process using a [`crate::Checkpointer`] listens on a Unix stream socket
//! `<socket_dir>/<pid>.<job_id|->.<step_id|->.sock`. The directory is created with mode 0700 and must be
//! owned by the user (it is refused otherwise); the socket is 0600; and every connection's peer uid is
//! checked with `SO_PEERCRED`, so no other user can request a checkpoint.
//!
//! The socket is removed when its checkpointer is dropped, or at the process's normal exit. At start, a
//! checkpointer removes what processes that died left in the directory, once the directory is verified
//! as ours ([`RuntimeDir`]): sockets nobody listens on (`connect()` refused), `.shim` registrations of
//! pids that no longer exist, and stale shared squeue answers. A connection that sends nothing (that
//! liveness probe) is not a request.
//!
//! The protocol is one JSON line each way. Request: `{"op": "checkpoint", "image_dir": "/path" | null,
//! "vacate": false}`. The process takes the request at its next safe point (`should_checkpoint()`), and
//! answers once the checkpoint is durable: `{"ok": true, "path": "...", "generation": 3, "step": 120,
//! "seconds": 0.42}`, or `{"ok": false, "error": "..."}`.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod client;
pub use crate::sys::peer_uid;
pub use client::{
    ClientDir, Reply, check_peer_is_us, find_registrations, find_sockets, request_checkpoint, request_checkpoint_in,
};

/// One request line on the socket: `{"op": "checkpoint", "image_dir": "/path" | null, "vacate": false}`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RequestLine {
    /// The operation; only `checkpoint` is known (anything else is answered with an error).
    #[serde(default)]
    pub op: Option<String>,
    /// Where to write this checkpoint instead of the checkpoint directory (absolute).
    #[serde(default)]
    pub image_dir: Option<PathBuf>,
    /// Whether the program should exit after the checkpoint.
    #[serde(default)]
    pub vacate: bool,
}

/// One answer line: `{"ok": true, "path": ..., "generation": 3, "step": 120, "seconds": 0.42}` once the
/// checkpoint is durable, or `{"ok": false, "error": "..."}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReplyLine {
    /// Whether the checkpoint is durable.
    pub ok: bool,
    /// The durable checkpoint's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Its generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The application step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// Seconds the checkpoint took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ReplyLine {
    /// The answer of a failure.
    pub(crate) fn failed(error: impl Into<String>) -> ReplyLine {
        ReplyLine { ok: false, error: Some(error.into()), ..ReplyLine::default() }
    }
}

/// A request read from the socket, waiting for the next checkpoint.
#[derive(Debug)]
pub struct Request {
    pub(crate) stream: UnixStream,
    /// Directory to write this checkpoint to instead of the checkpoint directory.
    pub image_dir: Option<PathBuf>,
    /// Whether the program should exit after the checkpoint.
    pub vacate: bool,
}

impl Request {
    /// Sends the answer (best effort: the requester may have given up).
    pub(crate) fn answer(self, reply: &ReplyLine) {
        let mut line = serde_json::to_string(reply).unwrap_or_default();
        line.push('\n');
        let _ = self.stream.set_write_timeout(Some(Duration::from_secs(2)));
        send_all(&self.stream, line.as_bytes());
    }
}

/// Writes with `MSG_NOSIGNAL` so a requester that went away cannot kill the process with SIGPIPE.
fn send_all(stream: &UnixStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the fd is owned by `stream` and open for the duration of the call; the pointer and
        // length describe the live slice `bytes`.
        let n = unsafe { libc::send(stream.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// The socket directory is ours alone: created 0700, or refused when it is a symlink, not a directory,
/// owned by someone else, or open to others.
pub fn prepare_socket_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io("create socket directory", e).with_path(dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("chmod socket directory", e).with_path(dir))?;
            check_socket_dir(dir)
        }
        Err(e) => Err(Error::io("stat socket directory", e).with_path(dir)),
        Ok(_) => check_socket_dir(dir),
    }
}

fn check_socket_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io("stat socket directory", e).with_path(dir))?;
    if !meta.is_dir() {
        return Err(Error::invalid("the socket directory is not a directory (or is a symlink)").with_path(dir));
    }
    check_dir_owner_mode(meta.uid(), meta.mode()).map_err(|e| e.with_path(dir))
}

/// The ownership rule of the runtime directory: owned by the effective user, no access for group or others.
fn check_dir_owner_mode(uid: u32, mode: u32) -> Result<()> {
    let me = crate::sys::euid();
    if uid != me {
        return Err(Error::invalid(format!("the socket directory belongs to uid {uid}, not to us ({me})")));
    }
    if mode & 0o077 != 0 {
        return Err(Error::invalid(format!(
            "the socket directory has mode {:o}; it must be 0700 so other users cannot reach the sockets",
            mode & 0o777
        )));
    }
    Ok(())
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path contains a NUL byte"))
}

fn cname(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a plain file name")));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the name contains a NUL byte"))
}

fn fstat_fd(fd: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: `st` is a plain C struct the kernel fills in; the fd is open for the duration of the call.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

/// The per-user runtime directory (the socket directory), opened once and verified through its
/// descriptor: a directory reached without following a symlink, owned by this user, no access for group
/// or others. The files ckpt keeps there (control sockets, the node's shared squeue answer and its lock)
/// are reached through that descriptor (`openat`, `fstatat`, `unlinkat`, `renameat`), never by following a
/// symlink, and a file is trusted only when it is a regular file of this user.
///
/// Anything that reads or writes the runtime directory (the `ckpt create` client, the `LD_PRELOAD` shim's
/// registrations) can use it to apply the same rules.
#[derive(Debug)]
pub struct RuntimeDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl RuntimeDir {
    /// Opens and verifies `dir` (which must exist: see [`prepare_socket_dir`]).
    pub fn open(dir: &Path) -> Result<RuntimeDir> {
        let c = cpath(dir).map_err(|e| Error::io("open the socket directory", e).with_path(dir))?;
        // SAFETY: a NUL-terminated path; the returned descriptor is owned below.
        let fd =
            unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            let what = if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
                "the socket directory is not a directory (or is a symlink)"
            } else {
                "open the socket directory"
            };
            return Err(Error::io(what, e).with_path(dir));
        }
        // SAFETY: `fd` was just returned by open and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat_fd(fd.as_raw_fd()).map_err(|e| Error::io("stat the socket directory", e).with_path(dir))?;
        check_dir_owner_mode(st.st_uid, st.st_mode).map_err(|e| e.with_path(dir))?;
        Ok(RuntimeDir { fd, path: dir.to_path_buf() })
    }

    /// The directory's path (for messages and for `connect`/`bind`, which take paths).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` in the directory with `flags` (plus `O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK`; a FIFO planted
    /// there cannot block us) and `mode` for a new file. Refuses anything but a regular file of this user.
    pub fn open_file(&self, name: &str, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let c = cname(name)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: the directory fd is open (owned by self); `c` is NUL-terminated; the new fd is owned below.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by openat and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let st = fstat_fd(fd)?;
        let me = crate::sys::euid();
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::other(format!("{name} is not a regular file")));
        }
        if st.st_uid != me {
            return Err(io::Error::other(format!("{name} belongs to uid {}, not to us ({me})", st.st_uid)));
        }
        // SAFETY: F_SETFL on an fd owned by `file`; clears O_NONBLOCK (only used to open without blocking).
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) & !libc::O_NONBLOCK) };
        Ok(file)
    }

    /// `lstat` of `name` in the directory (a symlink is reported as one, never followed).
    pub fn lstat(&self, name: &str) -> io::Result<libc::stat> {
        let c = cname(name)?;
        // SAFETY: the directory fd is open; `c` is NUL-terminated; `st` is a plain C struct the kernel fills.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(st)
        }
    }

    /// Removes the directory entry `name` (never what a symlink points to).
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cname(name)?;
        // SAFETY: the directory fd is open; `c` is NUL-terminated.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Renames `from` to `to`, both in the directory (atomic replacement of `to`).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (cname(from)?, cname(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: the directory fd is open; both names are NUL-terminated.
        if unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The names of the entries (read through the verified descriptor when /proc allows it).
    pub fn names(&self) -> io::Result<Vec<String>> {
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let entries = std::fs::read_dir(&by_fd).or_else(|_| std::fs::read_dir(&self.path))?;
        Ok(entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect())
    }
}

/// The file names of the Unix sockets listening in this network namespace (`/proc/net/unix`), or `None`
/// when that list cannot be read.
fn listening_socket_names() -> Option<HashSet<String>> {
    let text = std::fs::read_to_string("/proc/net/unix").ok()?;
    let mut out = HashSet::new();
    for line in text.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode [Path]
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let listening = u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 0x10000 != 0);
        if let (true, Some(name)) = (listening, Path::new(f[7]).file_name()) {
            out.insert(name.to_string_lossy().into_owned());
        }
    }
    Some(out)
}

/// How a `connect()` to a socket file ends.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Something listens there (or may: a full backlog, an unexpected error). Keep the file.
    Alive,
    /// `ECONNREFUSED`: the socket file exists, nobody listens on it.
    Refused,
    /// The file is gone.
    Gone,
}

/// A non-blocking `connect()` to the socket `name` in `dir`, closed at once (the listener ignores a
/// connection that sends nothing, see [`read_request`]).
fn probe(dir: &RuntimeDir, name: &str) -> Probe {
    // Through the verified descriptor when the path fits in sun_path, else by the directory's path.
    let via_fd = PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.fd.as_raw_fd()));
    let via_path = dir.path().join(name);
    let target = if via_fd.as_os_str().len() < 108 && Path::new("/proc/self/fd").is_dir() { via_fd } else { via_path };
    let bytes = target.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is a plain C struct; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Probe::Alive;
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: creating a socket has no memory preconditions; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Probe::Alive;
    }
    // SAFETY: `fd` was just returned by socket and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call, with its size.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Probe::Alive;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ECONNREFUSED) => Probe::Refused,
        Some(libc::ENOENT) => Probe::Gone,
        _ => Probe::Alive,
    }
}

/// How long a shared squeue answer or its lock may sit unused before the cleanup at start removes it.
const STALE_SHARED_FILE: Duration = Duration::from_secs(24 * 3600);

/// Removes what processes that died left in the verified runtime directory `dir`, except `keep` (this
/// process's own socket); returns the names removed. Only these are ever removed:
///
/// * `<pid>.<job>.<step>.sock` control sockets nobody listens on: `connect()` is refused (tried when the
///   pid no longer exists, or exists but no listening socket of that name is in `/proc/net/unix`: the pid
///   was reused). A socket something listens on is kept, whatever its pid says (another PID namespace).
/// * `<pid>.<job>.<step>.shim` registrations of the `LD_PRELOAD` shim whose pid no longer exists (regular
///   files of this user; only unlinked).
/// * `squeue.<job>.json.<pid>.tmp` answers a dead process was writing, and `squeue.<job>.json` /
///   `squeue.<job>.lock` unused for a day (a lock only while we hold it).
///
/// Nothing is followed: entries are examined with `fstatat(AT_SYMLINK_NOFOLLOW)` and removed with
/// `unlinkat` on the verified descriptor, after checking they are still the inode examined.
pub(crate) fn remove_stale(dir: &RuntimeDir, keep: Option<&str>) -> Vec<String> {
    let Ok(names) = dir.names() else { return Vec::new() };
    let me = crate::sys::euid();
    let mut listening: Option<Option<HashSet<String>>> = None;
    let mut removed = Vec::new();
    let mut held_lock: Option<File> = None;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for name in names {
        if Some(name.as_str()) == keep {
            continue;
        }
        let Ok(st) = dir.lstat(&name) else { continue };
        if st.st_uid != me {
            continue;
        }
        let kind = st.st_mode & libc::S_IFMT;
        let stale = if let Some((pid, _, _)) = parse_registration(&name, ".sock") {
            if kind != libc::S_IFSOCK {
                continue;
            }
            let check = !crate::sys::process_exists(pid)
                || !listening.get_or_insert_with(listening_socket_names).as_ref().is_some_and(|l| l.contains(&name));
            check && probe(dir, &name) == Probe::Refused
        } else if let Some((pid, _, _)) = parse_registration(&name, ".shim") {
            kind == libc::S_IFREG && !crate::sys::process_exists(pid)
        } else if let Some(rest) = name.strip_prefix("squeue.") {
            if kind != libc::S_IFREG {
                continue;
            }
            let old = now.saturating_sub(u64::try_from(st.st_mtime).unwrap_or(0)) > STALE_SHARED_FILE.as_secs();
            if let Some(pid) = rest.strip_suffix(".tmp").and_then(|r| r.rsplit_once('.')).map(|(_, p)| p) {
                pid.parse::<u32>().is_ok_and(|p| !crate::sys::process_exists(p))
            } else if rest.ends_with(".json") {
                old
            } else if rest.ends_with(".lock") && old {
                // Only while we hold it: nobody is asking squeue under this lock right now.
                let f = dir.open_file(&name, libc::O_RDWR, 0o600).ok();
                // SAFETY: flock on an fd owned by `f`; the lock goes with the descriptor, kept until the unlink.
                let locked = f
                    .as_ref()
                    .is_some_and(|f| unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0);
                held_lock = f;
                locked
            } else {
                false
            }
        } else {
            false
        };
        if !stale {
            continue;
        }
        // Still the entry examined (not replaced since by a live process's new file)?
        let same = dir.lstat(&name).is_ok_and(|now| now.st_dev == st.st_dev && now.st_ino == st.st_ino);
        if same && dir.unlink(&name).is_ok() {
            removed.push(name);
        }
        held_lock = None;
    }
    drop(held_lock);
    removed.sort();
    removed
}

/// The socket file name of a process.
pub fn socket_name(pid: u32, job_id: Option<&str>, step_id: Option<u32>) -> String {
    let step = step_id.map_or_else(|| "-".into(), |s| s.to_string());
    format!("{pid}.{}.{step}.sock", job_id.unwrap_or("-"))
}

/// Parses `<pid>.<job|->.<step|->` followed by `suffix` (`.sock`, or `.shim` for processes under the
/// `LD_PRELOAD` shim, which are asked by signal).
pub fn parse_registration(name: &str, suffix: &str) -> Option<(u32, Option<String>, Option<u32>)> {
    let rest = name.strip_suffix(suffix)?;
    let (pid, rest) = rest.split_once('.')?;
    let (job, step) = rest.rsplit_once('.')?;
    let pid = pid.parse().ok()?;
    let job = (job != "-").then(|| job.to_string());
    let step = if step == "-" { None } else { Some(step.parse().ok()?) };
    Some((pid, job, step))
}

/// Binds the listening socket (mode 0600).
pub(crate) fn listen(dir: &Path, name: &str) -> Result<(UnixListener, PathBuf)> {
    prepare_socket_dir(dir)?;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path); // a leftover of a process that had our pid
    let listener = UnixListener::bind(&path).map_err(|e| Error::io("bind control socket", e).with_path(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("chmod control socket", e).with_path(&path))?;
    listener.set_nonblocking(true).map_err(|e| Error::io("control socket", e))?;
    Ok((listener, path))
}

/// What a freshly accepted connection brought.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A checkpoint request, waiting for the next checkpoint.
    Request(Request),
    /// A connection from another user, or an unknown operation: answered with an error and dropped.
    Refused(String),
    /// A connection closed without sending anything: another process checking whether this socket is
    /// alive (the cleanup of dead processes' sockets). Nothing to log.
    Probe,
}

/// Reads one request from a freshly accepted connection. Connections from other users are answered
/// with an error and dropped.
pub(crate) fn read_request(stream: UnixStream) -> Result<Incoming> {
    stream.set_nonblocking(false).map_err(|e| Error::io("control socket", e))?;
    let me = crate::sys::euid();
    let uid = peer_uid(&stream).map_err(|e| Error::io("SO_PEERCRED", e))?;
    if uid != me {
        let why = format!("permission denied: uid {uid} may not control this process");
        let req = Request { stream, image_dir: None, vacate: false };
        req.answer(&ReplyLine::failed(why.clone()));
        return Ok(Incoming::Refused(why));
    }
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| Error::io("control socket", e))?;
    let mut line = String::new();
    let n = BufReader::new((&stream).take(64 << 10)).read_line(&mut line).map_err(|e| Error::io("read request", e))?;
    if n == 0 {
        return Ok(Incoming::Probe);
    }
    let bad = |why: &str| Error::invalid(format!("bad control request {:?}: {why}", line.trim()));
    let req: RequestLine = serde_json::from_str(line.trim()).map_err(|e| bad(&e.to_string()))?;
    if req.op.as_deref() != Some("checkpoint") {
        let why = "unknown op (expected \"checkpoint\")";
        let req = Request { stream, image_dir: None, vacate: false };
        req.answer(&ReplyLine::failed(why));
        return Ok(Incoming::Refused(why.into()));
    }
    if req.image_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
        return Err(bad("image_dir must be a non-empty string"));
    }
    Ok(Incoming::Request(Request { stream, image_dir: req.image_dir, vacate: req.vacate }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed socket file name: (pid, job id, step id).
    fn parse_socket_name(name: &str) -> Option<(u32, Option<String>, Option<u32>)> {
        parse_registration(name, ".sock")
    }

    #[test]
    fn socket_names() {
        assert_eq!(socket_name(12, Some("77"), Some(3)), "12.77.3.sock");
        assert_eq!(parse_socket_name("12.77.3.sock"), Some((12, Some("77".into()), Some(3))));
        assert_eq!(parse_socket_name("12.my.app.-.sock"), Some((12, Some("my.app".into()), None)));
        assert_eq!(parse_socket_name("12.-.-.sock"), Some((12, None, None)));
        assert_eq!(parse_socket_name("x.sock"), None);
    }

    #[test]
    #[cfg_attr(miri, ignore = "creates directories: file system access")]
    fn socket_dir_must_be_private() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("s");
        prepare_socket_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(prepare_socket_dir(&d).unwrap_err().to_string().contains("0700"));
        let link = t.path().join("l");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(prepare_socket_dir(&link).is_err());
    }

    /// A pid that no longer exists (a child that ran and was reaped).
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    fn stale_socket(path: &Path) {
        drop(UnixListener::bind(path).unwrap());
        assert!(path.exists());
    }

    /// At start, what processes that died left is removed, and nothing else: not a socket someone listens
    /// on, not a symlink (nor its target), not a regular file with a socket's name, not a live `.shim`.
    #[test]
    #[cfg_attr(miri, ignore = "binds sockets and spawns a process")]
    fn the_cleanup_removes_dead_processes_sockets_only() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("s");
        prepare_socket_dir(&d).unwrap();
        let (dead, me) = (dead_pid(), std::process::id());
        let outside = t.path().join("victim.sock");
        stale_socket(&outside);
        let names = [
            format!("{dead}.11.0.sock"),          // dead pid, nobody listens: removed
            format!("{me}.12.-.sock"),            // live pid (reused), nobody listens: removed
            format!("{me}.13.-.sock"),            // live and listening: kept
            format!("{dead}.14.-.sock"),          // a symlink to a socket elsewhere: kept, and its target
            format!("{dead}.15.-.sock"),          // a regular file: kept
            format!("{dead}.16.-.shim"),          // dead shim registration: removed
            format!("{me}.17.-.shim"),            // live shim registration: kept
            format!("squeue.18.json.{dead}.tmp"), // a dead writer's temporary answer: removed
            "squeue.19.json".to_string(),         // a fresh shared answer: kept
            format!("{dead}.20.-.sock"),          // the caller's own name: kept
        ];
        stale_socket(&d.join(&names[0]));
        stale_socket(&d.join(&names[1]));
        let live = UnixListener::bind(d.join(&names[2])).unwrap();
        std::os::unix::fs::symlink(&outside, d.join(&names[3])).unwrap();
        for n in [&names[4], &names[5], &names[6], &names[7], &names[8]] {
            std::fs::write(d.join(n), b"x").unwrap();
        }
        stale_socket(&d.join(&names[9]));
        let dir = RuntimeDir::open(&d).unwrap();
        let removed = remove_stale(&dir, Some(&names[9]));
        let mut want = vec![names[0].clone(), names[1].clone(), names[5].clone(), names[7].clone()];
        want.sort();
        assert_eq!(removed, want);
        for (i, n) in names.iter().enumerate() {
            let gone = std::fs::symlink_metadata(d.join(n)).is_err();
            assert_eq!(gone, want.contains(n), "{i}: {n}");
        }
        assert!(outside.exists(), "the symlink's target is untouched");
        drop(live);

        // A directory that fails the checks is not cleaned: it cannot even be opened as ours.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(RuntimeDir::open(&d).unwrap_err().to_string().contains("0700"));
        let link = t.path().join("l");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(RuntimeDir::open(&link).unwrap_err().to_string().contains("symlink"));
    }

    /// A connection that sends nothing (a liveness probe) is not a request and is not logged as refused.
    #[test]
    #[cfg_attr(miri, ignore = "binds sockets")]
    fn a_probe_is_not_a_request() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("s");
        let (l, p) = listen(&d, "1.-.-.sock").unwrap();
        l.set_nonblocking(false).unwrap();
        drop(UnixStream::connect(&p).unwrap());
        let (stream, _) = l.accept().unwrap();
        assert!(matches!(read_request(stream).unwrap(), Incoming::Probe));
    }

    #[test]
    #[cfg_attr(miri, ignore = "creates directories: file system access")]
    fn the_requesting_side_checks_the_directory_too() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("s");
        assert!(ClientDir::open(&d).unwrap().is_none(), "missing: nobody listens");
        prepare_socket_dir(&d).unwrap();
        let dir = ClientDir::open(&d).unwrap().unwrap();
        // Request files: created afresh, a symlink at the name is replaced, never followed.
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("1.-.-.request")).unwrap();
        dir.create_new("1.-.-.request", b"/img").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(dir.read_own_file("1.-.-.request").unwrap().unwrap(), "/img");
        std::os::unix::fs::symlink(&victim, d.join("1.-.-.reply")).unwrap();
        assert!(dir.read_own_file("1.-.-.reply").unwrap_err().to_string().contains("symlink"));
        assert!(dir.read_own_file("1.-.-.nothing").unwrap().is_none());
        drop(dir);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).unwrap();
        let e = ClientDir::open(&d).unwrap_err().to_string();
        assert!(e.contains("mode 711") && e.contains(d.to_str().unwrap()), "{e}");
        let link = t.path().join("l");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(ClientDir::open(&link).unwrap_err().to_string().contains("symlink"));
    }
}
