//! `ckpt create`'s request/reply files, both sides in one place.
//!
//! A shimmed process leaves a registration `<pid>.<job|->.<step|->.shim` in the control-socket directory
//! ([`crate::registration_name`]). `ckpt create` ([`request_checkpoint`]) checks it, leaves the image
//! directory in `<stem>.request` (empty: the configured one), creates `<stem>.reply-pending`, signals the
//! process and waits for `<stem>.reply`. The shim's writer takes the request ([`take_request`]) and, when
//! an answer is awaited, writes it under `<stem>.reply-tmp` and renames it into place ([`reply`]). Every
//! file is created afresh (`O_EXCL|O_NOFOLLOW`) and read without following a symlink.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ckpt_core::{Error, ErrorKind, control};

/// The files of one registration's request/reply exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlFile {
    /// The image directory asked for (empty: the configured one).
    Request,
    /// Present while `ckpt create` waits for an answer.
    ReplyPending,
    /// The answer ([`Answer`]).
    Reply,
    /// Where the answer is written before it is renamed into place.
    ReplyTmp,
}

impl ControlFile {
    fn extension(self) -> &'static str {
        match self {
            ControlFile::Request => "request",
            ControlFile::ReplyPending => "reply-pending",
            ControlFile::Reply => "reply",
            ControlFile::ReplyTmp => "reply-tmp",
        }
    }

    /// This file's name for the registration named `registration` (`<stem>.shim`).
    pub fn name(self, registration: &str) -> String {
        let stem = registration.strip_suffix(".shim").unwrap_or(registration);
        format!("{stem}.{}", self.extension())
    }

    /// This file's path for the registration at `registration`.
    pub fn path(self, registration: &Path) -> PathBuf {
        registration.with_extension(self.extension())
    }
}

/// What the writer answers: the committed image, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The image written.
    Image(PathBuf),
    /// No image (a refusal or a failure, with its message).
    Error(String),
}

impl Answer {
    /// The one-line text form: the path, or `error: <message>`.
    pub fn format(&self) -> String {
        match self {
            Answer::Image(p) => format!("{}\n", p.display()),
            Answer::Error(m) => format!("error: {}\n", m.replace('\n', " ")),
        }
    }

    /// Parses [`Answer::format`]'s text.
    pub fn parse(text: &str) -> Answer {
        let text = text.trim();
        match text.strip_prefix("error: ") {
            Some(m) => Answer::Error(m.to_string()),
            None => Answer::Image(PathBuf::from(text)),
        }
    }
}

/// The writer's side: the image directory of a pending request for the registration at `registration`,
/// removing the request (`None`: no request, or an empty one).
pub fn take_request(registration: &Path) -> Option<PathBuf> {
    let path = ControlFile::Request.path(registration);
    let mut text = String::new();
    // Never through a symlink (the directory is private, but a request is never trusted blindly either).
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .ok()?
        .take(64 << 10)
        .read_to_string(&mut text)
        .ok()?;
    let _ = std::fs::remove_file(&path);
    let dir = text.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The writer's side: answers a waiting `ckpt create`, atomically (nothing when no answer is awaited).
pub fn reply(registration: &Path, answer: &Answer) {
    if !ControlFile::ReplyPending.path(registration).exists() {
        return;
    }
    let tmp = ControlFile::ReplyTmp.path(registration);
    // Created afresh, never through a symlink left at the name.
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| f.write_all(answer.format().as_bytes()));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, ControlFile::Reply.path(registration));
    }
}

/// Asks a process under the shim for a checkpoint (`ckpt create`): checks that the registration names a
/// live process of this user that really is the registered one (its start time and boot), leaves the
/// image directory in `<registration>.request`, marks that an answer is awaited, sends the checkpoint
/// signal (the checkpoint-and-exit one for `--vacate`) and waits for the writer's answer in
/// `<registration>.reply`. Every file is created afresh (`O_EXCL|O_NOFOLLOW`) or read without following
/// a symlink, in the directory `dir` checked before.
pub fn request_checkpoint(
    pid: u32,
    dir: &control::ClientDir,
    registration: &str,
    image_dir: Option<&Path>,
    vacate: bool,
    max_wait: std::time::Duration,
) -> Result<PathBuf, Error> {
    let reg_path = dir.path().join(registration);
    let text = dir.read_own_file(registration)?.ok_or_else(|| {
        Error::new(ErrorKind::NotFound, "the registration disappeared (the process exited)").with_path(&reg_path)
    })?;
    let reg = crate::Registration::parse(&text).map_err(|why| {
        Error::invalid(format!("not signalling pid {pid}: the registration has {why}")).with_path(&reg_path)
    })?;
    check_registered_process(pid, &reg)
        .map_err(|why| Error::invalid(format!("not signalling pid {pid}: {why}")).with_path(&reg_path))?;
    let signal = if vacate { reg.exit_signal } else { reg.signal };
    if signal <= 0 {
        return Err(Error::invalid(if vacate {
            "the process has no checkpoint-and-exit signal"
        } else {
            "no checkpoint signal"
        })
        .with_path(&reg_path));
    }
    let (request, pending, reply) = (
        ControlFile::Request.name(registration),
        ControlFile::ReplyPending.name(registration),
        ControlFile::Reply.name(registration),
    );
    dir.remove(&reply);
    let dir_text = image_dir.map(|d| d.display().to_string()).unwrap_or_default();
    let cleanup = || {
        dir.remove(&pending);
        dir.remove(&request);
    };
    dir.create_new(&request, dir_text.as_bytes())?;
    if let Err(e) = dir.create_new(&pending, b"") {
        cleanup();
        return Err(e);
    }
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        cleanup();
        return Err(Error::io("signal the process", std::io::Error::last_os_error()));
    }
    let start = std::time::Instant::now();
    loop {
        match dir.read_own_file(&reply) {
            Ok(Some(answer)) => {
                dir.remove(&reply);
                cleanup();
                return match Answer::parse(&answer) {
                    Answer::Error(e) => Err(Error::new(ErrorKind::InvalidState, e)),
                    Answer::Image(path) => Ok(path),
                };
            }
            Ok(None) => {}
            Err(e) => {
                cleanup();
                return Err(e);
            }
        }
        if start.elapsed() > max_wait {
            cleanup();
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "no checkpoint within {:.0} s (refused? see the program's stderr and log)",
                    max_wait.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether `pid` is the process that wrote `reg`: it runs as this user (real and effective uid), in this
/// boot, and started when the registration says (a pid reused by another process has another start time).
fn check_registered_process(pid: u32, reg: &crate::Registration) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default();
    if uids.len() < 2 || uids[0] != me || uids[1] != me {
        return Err(format!(
            "it runs as uid {} (real) / {} (effective), not as you (uid {me}): it is not your process",
            uids.first().map(|u| u.to_string()).unwrap_or_else(|| "?".into()),
            uids.get(1).map(|u| u.to_string()).unwrap_or_else(|| "?".into())
        ));
    }
    let boot = crate::boot_id().unwrap_or_default();
    if reg.boot != boot {
        return Err(format!("the registration was written before a reboot (boot {}, now {boot})", reg.boot));
    }
    let start = crate::process_start_time(pid).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    if start != reg.start {
        return Err(format!(
            "it started at tick {start}, the registered process at tick {}: the registered process is gone and \
             its pid now belongs to another process",
            reg.start
        ));
    }
    Ok(())
}
