//! Which process the shim checkpoints ([`RootMarker`]), the registration `ckpt create` finds it by,
//! and the token `ckpt restart` hands over with a verified image.

/// Name of the file a shimmed process leaves in the control-socket directory so `ckpt create` can
/// find it: `<pid>.<job|->.<step|->.shim`. Requests and replies use the same stem with the extensions
/// `request`, `reply-pending` and `reply`.
pub fn registration_name(pid: u32, job_id: Option<&str>, step_id: Option<u32>) -> String {
    let step = step_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
    format!("{pid}.{}.{step}.shim", job_id.unwrap_or("-"))
}

/// What `ckpt restart` passes (`CKPT_SHIM_VERIFIED`) with the image's descriptor (`CKPT_SHIM_IMAGE_FD`)
/// after verifying it: the file's device, inode, size, modification time, owner and permission bits as
/// the verification saw them. The shim compares them with `fstat` of the descriptor it inherited (images
/// are never modified in place; any change to the file changes the token) and re-verifies otherwise.
pub fn verified_token(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}:{}:{}:{}.{}:{}:{:o}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.uid(),
        meta.mode() & 0o7777
    )
}

/// The environment variable naming the process the shim checkpoints ([`RootMarker`]).
pub const ROOT_MARKER_VAR: &str = "CKPT_SHIM_ROOT";
/// The environment variable with the number of the image's descriptor `ckpt restart` leaves open.
pub const IMAGE_FD_VAR: &str = "CKPT_SHIM_IMAGE_FD";

/// Names exactly one process: its pid, its start time (clock ticks after boot, `/proc/<pid>/stat` field
/// 22) and a random nonce. `ckpt run` and `ckpt restart` set it to themselves before they exec the
/// program (an exec keeps the pid and the start time); the shim is active only in the process it names,
/// and the restorer rewrites it to name the restored process. A later process that gets the same pid
/// (after the named one is gone) has another start time, so an inherited marker never names it.
///
/// Text form, fixed width so the restorer can rewrite it in place: `PPPPPPPPPP:SSSSSSSSSSSSSSSSSSSS:NNNNNNNNNNNNNNNN`
/// (pid, 10 digits; start time, 20 digits; nonce, 16 hex digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootMarker {
    /// The process id.
    pub pid: u32,
    /// Its start time (clock ticks after boot).
    pub start: u64,
    /// Random, chosen when the marker is made.
    pub nonce: u64,
}

/// Length of [`RootMarker`]'s text form.
pub const ROOT_MARKER_LEN: usize = 10 + 1 + 20 + 1 + 16;

impl RootMarker {
    /// A marker naming the calling process, with a fresh nonce.
    pub fn for_self() -> std::io::Result<RootMarker> {
        Ok(RootMarker { pid: std::process::id(), start: process_start_time(std::process::id())?, nonce: nonce() })
    }

    /// The fixed-width text form.
    pub fn format(&self) -> String {
        format!("{:010}:{:020}:{:016x}", self.pid, self.start, self.nonce)
    }

    /// Parses the text form. `Err` carries why (an older ckpt's bare pid is refused by name).
    pub fn parse(text: &str) -> std::result::Result<RootMarker, String> {
        let t = text.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{ROOT_MARKER_VAR}={t} is a bare pid (an older ckpt's marker), which a later process with that \
                 pid would match too; start the program with this version's `ckpt run`"
            ));
        }
        let mut it = t.split(':');
        let (Some(p), Some(s), Some(n), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(format!("{ROOT_MARKER_VAR}={t:?} is not <pid>:<start time>:<nonce>"));
        };
        let bad = || format!("{ROOT_MARKER_VAR}={t:?} is not <pid>:<start time>:<nonce>");
        let digits = |x: &str| !x.is_empty() && x.len() <= 20 && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(p) || !digits(s) || n.is_empty() || n.len() > 16 || !n.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(RootMarker {
            pid: p.parse().map_err(|_| bad())?,
            start: s.parse().map_err(|_| bad())?,
            nonce: u64::from_str_radix(n, 16).map_err(|_| bad())?,
        })
    }

    /// Whether this marker names the calling process (its pid and its start time).
    pub fn names_self(&self) -> bool {
        self.pid == std::process::id() && process_start_time(self.pid).is_ok_and(|s| s == self.start)
    }
}

/// 64 random bits from the kernel (`getrandom`), or from the clock and pid when it is unavailable.
pub fn nonce() -> u64 {
    let mut v = 0u64;
    // SAFETY: `v` is writable for 8 bytes.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, libc::GRND_NONBLOCK) };
    if n == 8 && v != 0 {
        return v;
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (t as u64 ^ (std::process::id() as u64) << 40) | 1
}

/// The start time of process `pid` (clock ticks after boot, field 22 of `/proc/<pid>/stat`).
pub fn process_start_time(pid: u32) -> std::io::Result<u64> {
    let text = std::fs::read(format!("/proc/{pid}/stat"))?;
    parse_stat_start_time(&text)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("cannot parse /proc/{pid}/stat")))
}

/// Field 22 of a `/proc/<pid>/stat` line (the command name, field 2, may contain spaces and parentheses:
/// the fields after it are counted from its last `)`).
pub fn parse_stat_start_time(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // Fields 3.. follow; the start time is field 22, the 20th of them.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// This boot's identity (`/proc/sys/kernel/random/boot_id`): start times count from the boot.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty() && id.len() <= 64).then(|| id.to_string())
}

/// The contents of a shim's registration file (`<pid>.<job>.<step>.shim`): one `key=value` a line.
/// `signal` and `exit_signal` are the checkpoint signals; `start` and `boot` identify the registered
/// process (so `ckpt create` never signals another process that got its pid); `marker` is its
/// [`RootMarker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The checkpoint-and-continue signal (0: none).
    pub signal: i32,
    /// The checkpoint-and-exit signal (0: none).
    pub exit_signal: i32,
    /// The registered process's start time.
    pub start: u64,
    /// The boot the start time counts from.
    pub boot: String,
}

impl Registration {
    /// Parses a registration file. Files of older shims (no `start`/`boot`) are refused: they cannot say
    /// which process they mean.
    pub fn parse(text: &str) -> std::result::Result<Registration, String> {
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
        let num = |k: &str| field(k).and_then(|v| v.trim().parse::<i32>().ok()).filter(|&s| (0..=64).contains(&s));
        let (Some(signal), Some(exit_signal)) = (num("signal"), num("exit_signal")) else {
            return Err("no valid signal=/exit_signal= lines".into());
        };
        let (Some(start), Some(boot)) =
            (field("start").and_then(|v| v.trim().parse::<u64>().ok()), field("boot").map(str::trim))
        else {
            return Err("no start=/boot= lines (written by an older shim): it cannot tell which process it means, \
                        and a signal could reach another process that got its pid"
                .into());
        };
        if boot.is_empty() {
            return Err("an empty boot= line".into());
        }
        Ok(Registration { signal, exit_signal, start, boot: boot.to_string() })
    }

    /// The text form (what the shim writes, with raw system calls, in the same layout).
    pub fn format(&self) -> String {
        format!("signal={}\nexit_signal={}\nstart={}\nboot={}\n", self.signal, self.exit_signal, self.start, self.boot)
    }
}
