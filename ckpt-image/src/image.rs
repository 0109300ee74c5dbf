//! The process image's sections: what the restorer needs besides memory contents, and how each is
//! encoded and checked on read.

use serde::{Deserialize, Serialize};

/// Section holding the postcard-encoded [`ProcessImage`].
pub const STATE_SECTION: &str = "process.state";
/// Section holding the saved pages.
pub const MEMORY_SECTION: &str = "process.memory";
/// Version of [`ProcessImage`]'s layout.
pub const PROCESS_IMAGE_VERSION: u32 = 2;
/// Version of a multi-threaded image: the layout of version 2 plus a [`THREADS_SECTION`] the restorer
/// must honour. Builds that read only version 2 refuse it by its version (they would restore one thread).
pub const PROCESS_IMAGE_VERSION_THREADS: u32 = 3;
/// Metadata key marking a file as a process image (value: "1").
pub const IMAGE_METADATA_KEY: &str = "ckpt.process-image";

/// Identity of a file the image refers to (the executable, mapped libraries, open files).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl FileIdentity {
    /// The identity of a file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

/// How a region is restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionKind {
    /// Anonymous private memory (zero-filled, then its runs).
    Anonymous,
    /// The brk heap (anonymous; brk is set first).
    Heap,
    /// The main stack (anonymous, grows down).
    Stack,
    /// A private file mapping: mapped from the file, then its privately modified pages (runs) on top.
    File,
    /// Inaccessible (`---p`): reserved address space, no contents.
    Guard,
}

/// A run of saved pages inside a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Address of the first page.
    pub addr: u64,
    /// Length in bytes (whole pages).
    pub len: u64,
    /// Offset of the bytes inside [`MEMORY_SECTION`].
    pub data_offset: u64,
}

/// One mapping of the address space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// How to restore it.
    pub kind: RegionKind,
    /// The mapped file (for [`RegionKind::File`]) or the kernel's label (`[heap]`, ...), as bytes.
    pub path: Vec<u8>,
    /// Offset in the file.
    pub file_offset: u64,
    /// Identity of the mapped file at checkpoint time.
    pub identity: Option<FileIdentity>,
    /// The saved pages.
    pub runs: Vec<Run>,
}

/// What an open file descriptor was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file: reopened by path, cut back to its checkpoint-time size when writable, repositioned.
    Regular,
    /// A directory: reopened by path.
    Directory,
    /// A character device (`/dev/null`, `/dev/zero`, `/dev/urandom`): reopened by path.
    CharDevice,
    /// A terminal or pipe on fds 0–2: inherited from the restart command.
    Inherited,
    /// The read end of a pipe whose write end the process also holds (a self-pipe, empty at checkpoint
    /// time): recreated with `pipe2`. `path` (`pipe:[inode]`) pairs the ends.
    PipeRead,
    /// The write end of such a pipe.
    PipeWrite,
    /// A descriptor above stderr that was already open when the program started (inherited from the
    /// launcher: a wrapper's pipe, a socket, a terminal) and that cannot be restored: reopened as
    /// `/dev/null` with its access mode (`CKPT_SHIM_FOREIGN_FDS=devnull`, the default). `path` says what it
    /// was.
    ForeignNull,
    /// The same, left closed on restart (`CKPT_SHIM_FOREIGN_FDS=close`).
    ForeignClosed,
    /// A file or directory of the process's own `/proc` entry (`/proc/self/fd`, `/proc/self/status`),
    /// or another `/proc` file (`/proc/meminfo`): `path` names it as seen from the process
    /// (`/proc/self/...`, `/proc/thread-self/...`), reopened by that path in the restored process and
    /// repositioned; never cut back, no identity check (procfs inodes belong to one process). Added after
    /// layout 2 shipped, as the last variant: older builds fail to decode such an image and refuse it.
    ProcFile,
    /// In an image of a process tree ([`crate::tree`]): a pipe descriptor (`path` is `pipe:[inode]`),
    /// given to the process by `ckpt restart` (a pipe recreated for the tree, with its unread bytes, or
    /// the restart command's own descriptor for a pipe that leads out of the tree through the root's
    /// standard descriptors). Added after [`FdKind::ProcFile`], for layout 4.
    TreePipe,
}

/// The environment variable choosing what happens to descriptors inherited from the launcher that
/// cannot be restored ([`ForeignFds`]). Read by the shim at start (and checked by `ckpt run`), not by
/// [`ckpt_core::Config`].
pub const FOREIGN_FDS_VAR: &str = "CKPT_SHIM_FOREIGN_FDS";

/// What a checkpoint does with a descriptor above stderr that the program inherited from its launcher
/// (open before the program started, same file still) and that cannot be restored (a pipe to another
/// process, a socket, a terminal, another special file). Regular files, directories and other devices
/// are restored as always, whoever opened them; descriptors the program opened itself are never foreign.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForeignFds {
    /// Restored as `/dev/null` with the same access mode (reads see end of file, writes are discarded),
    /// with a warning naming the descriptor (the default).
    #[default]
    DevNull,
    /// Restored closed, with a warning.
    Close,
    /// The checkpoint is refused with a message naming the descriptor.
    Refuse,
}

impl ForeignFds {
    /// Parses `devnull`, `close` or `refuse` (case-insensitive; unset or empty: the default).
    pub fn parse(value: Option<&str>) -> std::result::Result<ForeignFds, String> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("devnull") => Ok(ForeignFds::DevNull),
            Some("close") => Ok(ForeignFds::Close),
            Some("refuse") => Ok(ForeignFds::Refuse),
            Some(_) => {
                Err(format!("{FOREIGN_FDS_VAR}={:?} is not one of devnull, close, refuse", value.unwrap_or_default()))
            }
        }
    }

    /// The setting's name.
    pub fn name(self) -> &'static str {
        match self {
            ForeignFds::DevNull => "devnull",
            ForeignFds::Close => "close",
            ForeignFds::Refuse => "refuse",
        }
    }
}

/// One open file descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdRecord {
    /// Its number.
    pub fd: i32,
    /// What it is.
    pub kind: FdKind,
    /// Path (from `/proc/self/fd`), as bytes.
    pub path: Vec<u8>,
    /// `F_GETFL` flags.
    pub flags: i32,
    /// Whether `FD_CLOEXEC` was set.
    pub cloexec: bool,
    /// File offset at checkpoint time.
    pub offset: i64,
    /// File size at checkpoint time.
    pub size: u64,
    /// Identity at checkpoint time (regular files).
    pub identity: Option<FileIdentity>,
    /// The parent process also had this file open for writing at checkpoint time (a job's output file
    /// shared with the batch shell): on restart it is not cut back (that would erase the other writer's
    /// output) and writing continues at its end.
    pub shared: bool,
    /// The descriptor (listed before this one) whose open file description this one shares (`dup`,
    /// `2>&1`): restored as a duplicate of it, so both keep one offset and one set of status flags. Such
    /// a record repeats the first one's kind, path and flags.
    pub dup_of: Option<i32>,
}

/// A signal action exactly as the kernel holds it (`struct kernel_sigaction` on x86_64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSigaction {
    /// Signal number.
    pub signo: i32,
    /// `sa_handler` / `sa_sigaction`.
    pub handler: u64,
    /// `sa_flags`.
    pub flags: u64,
    /// `sa_restorer`.
    pub restorer: u64,
    /// `sa_mask` (64 bits).
    pub mask: u64,
}

/// An interval timer (`ITIMER_REAL`, `ITIMER_VIRTUAL`, `ITIMER_PROF`) in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItimerRecord {
    /// Reload value.
    pub interval_us: u64,
    /// Time left.
    pub value_us: u64,
}

/// The restartable-sequence registration of the thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RseqRecord {
    /// Address of `struct rseq`.
    pub addr: u64,
    /// Registered length.
    pub len: u32,
    /// Signature.
    pub sig: u32,
}

/// What the node must match for a restart: same kernel, C library, CPU features.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// `uname -r`.
    pub kernel_release: String,
    /// `uname -m`.
    pub machine: String,
    /// `gnu_get_libc_version()`.
    pub libc_version: String,
    /// CPUID feature words: leaf 1 ECX, EDX; leaf 7 EBX, ECX, EDX; leaf 0xD sub-leaf 0 EAX (XSAVE features).
    pub cpu_features: Vec<u32>,
    /// Page size in bytes.
    pub page_size: u64,
}

/// Everything about a process that is not page contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessImage {
    /// [`PROCESS_IMAGE_VERSION`].
    pub version: u32,
    /// The executable, as bytes.
    pub exe: Vec<u8>,
    /// Its identity.
    pub exe_identity: FileIdentity,
    /// Command line at start.
    pub argv: Vec<Vec<u8>>,
    /// Environment at start.
    pub envp: Vec<Vec<u8>>,
    /// Working directory.
    pub cwd: Vec<u8>,
    /// umask.
    pub umask: u32,
    /// Soft and hard `RLIMIT_STACK` (they decide the layout of the address space).
    pub rlimit_stack: (u64, u64),
    /// `personality()`.
    pub personality: u32,
    /// Node fingerprint.
    pub fingerprint: Fingerprint,
    /// Program break.
    pub brk: u64,
    /// FS base (the thread pointer).
    pub fs_base: u64,
    /// Offset of the cached thread id in the thread control block.
    pub tid_offset: Option<u64>,
    /// rseq registration.
    pub rseq: Option<RseqRecord>,
    /// Address of the `ucontext` of the signal frame the restorer returns through (`rt_sigreturn`).
    pub sigframe: u64,
    /// Every signal action (1..=64 except KILL and STOP).
    pub sigactions: Vec<KernelSigaction>,
    /// Signal mask of the interrupted code.
    pub sigmask: u64,
    /// Alternate signal stack: (ss_sp, ss_flags, ss_size).
    pub sigaltstack: (u64, i32, u64),
    /// `ITIMER_REAL`, `ITIMER_VIRTUAL`, `ITIMER_PROF`.
    pub itimers: [ItimerRecord; 3],
    /// Open file descriptors.
    pub fds: Vec<FdRecord>,
    /// The address space.
    pub regions: Vec<Region>,
    /// The vDSO mapping (start, end); must be at the same place at restart.
    pub vdso: Option<(u64, u64)>,
    /// Process id at checkpoint time.
    pub pid: i32,
    /// Host name at checkpoint time.
    pub host: String,
    /// Checkpoint sequence number of this process (counts across restarts).
    pub sequence: u64,
    /// Time the program was paused for the checkpoint (until the writer was forked), in microseconds.
    pub pause_us: u64,
    /// Wall-clock time of the checkpoint (seconds since the epoch).
    pub time_unix: f64,
    /// Number of restarts this process has been through.
    pub restarts: u32,
}

impl ProcessImage {
    /// Bytes of saved pages (the size of [`MEMORY_SECTION`]).
    pub fn saved_bytes(&self) -> u64 {
        self.regions.iter().flat_map(|r| r.runs.iter()).map(|r| r.len).sum()
    }

    /// Bytes of address space the regions cover.
    pub fn mapped_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.end.saturating_sub(r.start)).sum()
    }

    /// Checks the structure a restorer relies on, one precise message per problem: regions page-aligned,
    /// ordered, not overlapping and in the user half of the address space; runs whole pages inside their
    /// region, their data laid out back to back; the signal frame inside a mapped region; sane descriptor
    /// numbers.
    pub fn validate(&self) -> std::result::Result<(), String> {
        const PAGE: u64 = 4096;
        const USER_TOP: u64 = 0x0000_8000_0000_0000;
        let mut prev_end = 0u64;
        let mut data = 0u64;
        for (i, r) in self.regions.iter().enumerate() {
            if r.start % PAGE != 0 || r.end % PAGE != 0 || r.start >= r.end || r.end > USER_TOP {
                return Err(format!("region {i} ({:#x}-{:#x}) is not a page-aligned user range", r.start, r.end));
            }
            if r.start < prev_end {
                return Err(format!("region {i} ({:#x}) overlaps or precedes the one before it", r.start));
            }
            prev_end = r.end;
            if r.prot & !7 != 0 {
                return Err(format!("region {i} has protection bits {:#x}", r.prot));
            }
            if r.file_offset % PAGE != 0 {
                return Err(format!("region {i} has a file offset {:#x} that is not page-aligned", r.file_offset));
            }
            if r.kind == RegionKind::Guard && !r.runs.is_empty() {
                return Err(format!("region {i} is inaccessible but has saved pages"));
            }
            for run in &r.runs {
                let end = run.addr.checked_add(run.len);
                if run.addr % PAGE != 0
                    || run.len % PAGE != 0
                    || run.len == 0
                    || run.addr < r.start
                    || end.is_none_or(|e| e > r.end)
                {
                    return Err(format!(
                        "a run at {:#x} (+{:#x}) is not whole pages inside region {i}",
                        run.addr, run.len
                    ));
                }
                if run.data_offset != data {
                    return Err(format!(
                        "the run at {:#x} has data at {:#x}, expected {data:#x}",
                        run.addr, run.data_offset
                    ));
                }
                data += run.len;
            }
        }
        if !self.regions.iter().any(|r| r.start <= self.sigframe && self.sigframe + 8 <= r.end && !r.runs.is_empty()) {
            return Err(format!("the signal frame at {:#x} is not in a saved region", self.sigframe));
        }
        if let Some(f) = self.fds.iter().find(|f| f.fd < 0 || f.fd > 1 << 20) {
            return Err(format!("descriptor number {} is out of range", f.fd));
        }
        for (i, f) in self.fds.iter().enumerate() {
            if self.fds[..i].iter().any(|o| o.fd == f.fd) {
                return Err(format!("descriptor {} is listed twice", f.fd));
            }
            if let Some(d) = f.dup_of {
                match self.fds[..i].iter().find(|o| o.fd == d) {
                    Some(o) if o.dup_of.is_none() && o.kind == f.kind => {}
                    _ => {
                        return Err(format!(
                            "descriptor {} shares the open file of descriptor {d}, which is not an earlier \
                             descriptor of the same kind",
                            f.fd
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One section's postcard encoding, or an `Encoding` error naming the section.
pub(crate) fn encode_section<T: Serialize + ?Sized>(value: &T, section: &str) -> ckpt_core::Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| {
        ckpt_core::Error::new(ckpt_core::ErrorKind::Encoding, format!("postcard encoding failed: {e}"))
            .with_section(section)
    })
}

/// Encodes the state section (postcard, as [`ckpt_core::CheckpointWriter::add_serde`] does).
pub fn encode(image: &ProcessImage) -> ckpt_core::Result<Vec<u8>> {
    encode_section(image, STATE_SECTION)
}

/// Reads the [`ProcessImage`] of a verified checkpoint, refusing files that are not process images and
/// other layout versions.
pub fn read(cp: &ckpt_core::Checkpoint) -> ckpt_core::Result<ProcessImage> {
    if cp.metadata(IMAGE_METADATA_KEY).is_none() || !cp.has_section(MEMORY_SECTION) {
        return Err(
            ckpt_core::Error::invalid("not a process image (written by the LD_PRELOAD shim)").with_path(cp.path())
        );
    }
    // The version first (the first field): another layout does not decode as this one.
    // Decoded from the section's first bytes: `read_serde` would refuse the bytes after the version.
    let state = cp.read(STATE_SECTION)?;
    let (version, _) = postcard::take_from_bytes::<u32>(&state).map_err(|e| {
        ckpt_core::Error::new(ckpt_core::ErrorKind::Encoding, format!("postcard decoding failed: {e}"))
            .with_section(STATE_SECTION)
            .with_path(cp.path())
    })?;
    drop(state);
    check_version(version).map_err(|e| e.with_path(cp.path()))?;
    let image: ProcessImage = cp.read_serde(STATE_SECTION)?;
    let memory = cp.section(MEMORY_SECTION)?;
    if memory.codec != ckpt_core::Codec::None || memory.shuffle {
        return Err(ckpt_core::Error::invalid("process image memory section is not stored raw").with_path(cp.path()));
    }
    image.validate().map_err(|m| ckpt_core::Error::new(ckpt_core::ErrorKind::Corrupt, m).with_path(cp.path()))?;
    let saved = image.saved_bytes();
    if saved != memory.raw_len {
        return Err(ckpt_core::Error::new(
            ckpt_core::ErrorKind::Corrupt,
            format!("process image lists {saved} bytes of pages, its memory section holds {}", memory.raw_len),
        )
        .with_path(cp.path()));
    }
    Ok(image)
}

/// Refuses a state section of another layout, saying what to do.
pub(crate) fn check_version(version: u32) -> ckpt_core::Result<()> {
    if version == PROCESS_IMAGE_VERSION
        || version == PROCESS_IMAGE_VERSION_THREADS
        || version == crate::tree::PROCESS_IMAGE_VERSION_TREE
    {
        return Ok(());
    }
    Err(ckpt_core::Error::new(
        ckpt_core::ErrorKind::UnsupportedVersion,
        format!(
            "process image layout {version} (this build reads {PROCESS_IMAGE_VERSION} to {}): the image was written by \
             another version of ckpt, whose libckpt_preload.so is part of the image; restart it with that version",
            crate::tree::PROCESS_IMAGE_VERSION_TREE
        ),
    ))
}

/// Section holding the program's resource limits ([`ResourceLimit`], postcard). A section of its own: an
/// image without one (written before it existed) is read as before, its limits left as the restart finds
/// them.
pub const LIMITS_SECTION: &str = "process.limits";

/// Section listing the address ranges (start, end) the program mapped with `MAP_NORESERVE` (`nr` in
/// `/proc/self/smaps`' `VmFlags`), postcard: the restorer maps the regions inside them with `MAP_NORESERVE`
/// again (a huge reservation, such as ThreadSanitizer's shadow memory, cannot be mapped back otherwise). A
/// section of its own: an image without one (written before it existed) is read as before.
pub const NORESERVE_SECTION: &str = "process.noreserve";

/// Encodes the `MAP_NORESERVE` ranges.
pub fn encode_noreserve(ranges: &[(u64, u64)]) -> ckpt_core::Result<Vec<u8>> {
    encode_section(ranges, NORESERVE_SECTION)
}

/// The `MAP_NORESERVE` ranges of a verified process image (empty for an image written without them).
pub fn read_noreserve(cp: &ckpt_core::Checkpoint) -> ckpt_core::Result<Vec<(u64, u64)>> {
    if !cp.has_section(NORESERVE_SECTION) {
        return Ok(Vec::new());
    }
    let ranges: Vec<(u64, u64)> = cp.read_serde(NORESERVE_SECTION)?;
    if let Some(r) = ranges.iter().find(|r| r.0 >= r.1) {
        return Err(ckpt_core::Error::new(
            ckpt_core::ErrorKind::Corrupt,
            format!("MAP_NORESERVE range {:#x}-{:#x} is empty", r.0, r.1),
        )
        .with_path(cp.path()));
    }
    Ok(ranges)
}

/// Section holding the process group of the program at checkpoint time (its `getpgrp()`, an `i32`,
/// postcard). After a restart the program may still name that group (`kill(-pgid)`, `killpg`,
/// `waitpid(-pgid)`, `waitid(P_PGID)`, bash's `kill -- -$$`): the shim makes it the group it is in now,
/// and `ckpt restart` makes the program lead its own group again when it led one (so that a signal to the
/// group reaches the same processes, never the job's other processes). A section of its own: an image
/// without one (written before it existed) is read as before, its group unknown.
pub const GROUP_SECTION: &str = "process.group";

/// Encodes the process-group section.
pub fn encode_group(pgid: i32) -> ckpt_core::Result<Vec<u8>> {
    encode_section(&pgid, GROUP_SECTION)
}

/// The checkpoint-time process group of a verified process image; `None` for an image written without
/// it, or when the group was not visible from the program's pid namespace (recorded as 0).
pub fn read_group(cp: &ckpt_core::Checkpoint) -> ckpt_core::Result<Option<i32>> {
    if !cp.has_section(GROUP_SECTION) {
        return Ok(None);
    }
    let pgid: i32 = cp.read_serde(GROUP_SECTION)?;
    if pgid < 0 {
        return Err(ckpt_core::Error::new(
            ckpt_core::ErrorKind::Corrupt,
            format!("process group {pgid} is not a group"),
        )
        .with_path(cp.path()));
    }
    // 0: a group whose leader is outside the program's pid namespace (getpgrp() cannot name it).
    Ok((pgid > 0).then_some(pgid))
}

/// Section listing every thread of a multi-threaded image ([`ThreadRecord`], postcard), the main thread
/// (whose tid is the pid) first. Present exactly when the state section's version is
/// [`PROCESS_IMAGE_VERSION_THREADS`]; the main thread's registers are also in [`ProcessImage`]'s fields.
pub const THREADS_SECTION: &str = "process.threads";

/// One thread at checkpoint time: the restorer recreates it (`clone` with its thread pointer), registers
/// its robust-futex list and rseq area again, and returns into it through its signal frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRecord {
    /// Kernel thread id at checkpoint time.
    pub tid: i32,
    /// Thread pointer (FS base).
    pub fs_base: u64,
    /// Address of the `ucontext_t` of the signal frame that stopped it (registers, FPU state, signal
    /// mask, alternate stack).
    pub sigframe: u64,
    /// Robust-futex list head registered by the C library (0: none).
    pub robust_head: u64,
    /// Its length.
    pub robust_len: u64,
    /// Its rseq registration.
    pub rseq: Option<RseqRecord>,
    /// Its name (`/proc/<pid>/task/<tid>/comm`, at most 15 bytes; `pthread_setname_np`).
    pub name: Vec<u8>,
    /// Its CPU affinity mask (`sched_getaffinity`, 64-bit words; empty: not recorded).
    pub affinity: Vec<u64>,
}

/// Encodes the threads section.
pub fn encode_threads(threads: &[ThreadRecord]) -> ckpt_core::Result<Vec<u8>> {
    encode_section(threads, THREADS_SECTION)
}

/// The threads of a verified process image read with [`read`]: empty for a single-threaded image
/// (version 2); for version 3, every thread, the main one (`image.pid`, at `image.sigframe`) first.
pub fn read_threads(cp: &ckpt_core::Checkpoint, image: &ProcessImage) -> ckpt_core::Result<Vec<ThreadRecord>> {
    let corrupt = |m: String| Err(ckpt_core::Error::new(ckpt_core::ErrorKind::Corrupt, m).with_path(cp.path()));
    let tree_with_threads = image.version == crate::tree::PROCESS_IMAGE_VERSION_TREE && cp.has_section(THREADS_SECTION);
    if image.version != PROCESS_IMAGE_VERSION_THREADS && !tree_with_threads {
        if cp.has_section(THREADS_SECTION) {
            return corrupt(format!("a layout-{} process image with a {THREADS_SECTION} section", image.version));
        }
        return Ok(Vec::new());
    }
    if !cp.has_section(THREADS_SECTION) {
        return corrupt(format!("a multi-threaded process image without its {THREADS_SECTION} section"));
    }
    let threads: Vec<ThreadRecord> = cp.read_serde(THREADS_SECTION)?;
    match threads.first() {
        Some(t) if t.tid == image.pid && t.sigframe == image.sigframe && t.fs_base == image.fs_base => {}
        _ => return corrupt("the threads section does not start with the main thread".into()),
    }
    if threads.len() < 2 {
        return corrupt("a multi-threaded process image lists fewer than two threads".into());
    }
    for (i, t) in threads.iter().enumerate() {
        if t.sigframe == 0
            || t.fs_base == 0
            || t.name.len() > 15
            || t.affinity.len() > 16
            || threads[..i].iter().any(|o| o.tid == t.tid)
        {
            return corrupt(format!("thread {} of the threads section is invalid or listed twice", t.tid));
        }
    }
    Ok(threads)
}

/// Section holding the signals pending at checkpoint time ([`PendingSignals`], postcard): the restorer
/// raises them again. Optional: an image without one (written before it existed) has none.
pub const PENDING_SECTION: &str = "process.pending";

/// Standard signals (1-31) pending at checkpoint time, as kernel signal-set masks: for the whole process
/// (`ShdPnd`) and per thread (`SigPnd`). Checkpoint requests and the shim's own signals are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSignals {
    /// Pending for the process.
    pub shared: u64,
    /// Pending for one thread: (tid at checkpoint time, mask).
    pub threads: Vec<(i32, u64)>,
}

/// Encodes the pending-signals section.
pub fn encode_pending(p: &PendingSignals) -> ckpt_core::Result<Vec<u8>> {
    encode_section(p, PENDING_SECTION)
}

/// The pending signals of a verified process image (none for an image written without them).
pub fn read_pending(cp: &ckpt_core::Checkpoint) -> ckpt_core::Result<PendingSignals> {
    if !cp.has_section(PENDING_SECTION) {
        return Ok(PendingSignals::default());
    }
    let p: PendingSignals = cp.read_serde(PENDING_SECTION)?;
    let standard = (1u64 << 31) - 1;
    if p.shared & !standard != 0 || p.threads.iter().any(|t| t.1 & !standard != 0) {
        return Err(ckpt_core::Error::new(ckpt_core::ErrorKind::Corrupt, "a pending signal outside 1-31".to_string())
            .with_path(cp.path()));
    }
    Ok(p)
}

/// Section holding the file locks the program held at checkpoint time ([`FileLock`], postcard): the
/// restorer takes them again on the reopened descriptors. Optional: an image without one has none.
pub const LOCKS_SECTION: &str = "process.locks";

/// A lock the program held (`/proc/locks`): a whole-file `flock` lock (owned by the open file
/// description of `fd`) or a POSIX record lock (`fcntl`, owned by the process; `fd` is one of its
/// descriptors of the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    /// The descriptor to take it on.
    pub fd: i32,
    /// A POSIX record lock (else `flock`).
    pub posix: bool,
    /// Exclusive (write) rather than shared (read).
    pub write: bool,
    /// First byte (POSIX locks).
    pub start: u64,
    /// Length in bytes, 0 to the end of the file and beyond (POSIX locks).
    pub len: u64,
}

/// Encodes the locks section.
pub fn encode_locks(locks: &[FileLock]) -> ckpt_core::Result<Vec<u8>> {
    encode_section(locks, LOCKS_SECTION)
}

/// The file locks of a verified process image (none for an image written without them).
pub fn read_locks(cp: &ckpt_core::Checkpoint, image: &ProcessImage) -> ckpt_core::Result<Vec<FileLock>> {
    if !cp.has_section(LOCKS_SECTION) {
        return Ok(Vec::new());
    }
    let locks: Vec<FileLock> = cp.read_serde(LOCKS_SECTION)?;
    if let Some(l) = locks.iter().find(|l| !image.fds.iter().any(|f| f.fd == l.fd)) {
        return Err(ckpt_core::Error::new(
            ckpt_core::ErrorKind::Corrupt,
            format!("a file lock on descriptor {}, which the image does not list", l.fd),
        )
        .with_path(cp.path()));
    }
    Ok(locks)
}

/// One resource limit at checkpoint time (`getrlimit`): the resource (`RLIMIT_*`), its soft and its hard
/// limit (`u64::MAX`: unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimit {
    /// `RLIMIT_NOFILE`, ...
    pub resource: u32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// The name of resource `r` (`RLIMIT_NOFILE`, ...).
pub fn resource_name(r: u32) -> String {
    const NAMES: [&str; 16] = [
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_CORE",
        "RLIMIT_RSS",
        "RLIMIT_NPROC",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_AS",
        "RLIMIT_LOCKS",
        "RLIMIT_SIGPENDING",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
    ];
    NAMES.get(r as usize).map(|n| n.to_string()).unwrap_or_else(|| format!("resource {r}"))
}

/// Encodes the limits section.
pub fn encode_limits(limits: &[ResourceLimit]) -> ckpt_core::Result<Vec<u8>> {
    encode_section(limits, LIMITS_SECTION)
}

/// The resource limits of a verified process image; `None` for an image written without them.
pub fn read_limits(cp: &ckpt_core::Checkpoint) -> ckpt_core::Result<Option<Vec<ResourceLimit>>> {
    if !cp.has_section(LIMITS_SECTION) {
        return Ok(None);
    }
    let limits: Vec<ResourceLimit> = cp.read_serde(LIMITS_SECTION)?;
    if let Some(l) = limits.iter().find(|l| l.resource >= 64 || l.soft > l.hard) {
        return Err(ckpt_core::Error::new(
            ckpt_core::ErrorKind::Corrupt,
            format!("{}: soft limit {} above hard limit {}", resource_name(l.resource), l.soft, l.hard),
        )
        .with_path(cp.path()));
    }
    Ok(Some(limits))
}
