//! The process image written by the LD_PRELOAD shim (`ckpt-preload`) and read by `ckpt restart`.
//!
//! A process image is an ordinary checkpoint file (same container, CRCs, atomic commit, retention,
//! names) with two sections:
//!
//! * [`STATE_SECTION`] (postcard): a [`ProcessImage`]: what the restorer needs besides memory contents
//!   (regions, fds, signal actions, timers, registers' location, the environment fingerprint);
//! * [`MEMORY_SECTION`] (raw, uncompressed): the saved pages, run after run, in the order of
//!   [`Region::runs`]. Untouched and all-zero pages are not stored: a region is mapped zero-filled and
//!   only its runs are read into place, straight from the file (no copy).
//!
//! The layout of `ProcessImage` is versioned by [`PROCESS_IMAGE_VERSION`]; readers refuse other versions
//! with a message (an image holds the shim's own code and data, so only the build that wrote it can
//! restore it anyway).
//!
//! Layouts: 1, the first; 2, descriptors that share one open file description ([`FdRecord::dup_of`]) and
//! descriptors inherited from the launcher that cannot be restored ([`FdKind::ForeignNull`],
//! [`FdKind::ForeignClosed`]).

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
fn encode_section<T: Serialize + ?Sized>(value: &T, section: &str) -> ckpt_core::Result<Vec<u8>> {
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
fn check_version(version: u32) -> ckpt_core::Result<()> {
    if version == PROCESS_IMAGE_VERSION || version == PROCESS_IMAGE_VERSION_THREADS {
        return Ok(());
    }
    Err(ckpt_core::Error::new(
        ckpt_core::ErrorKind::UnsupportedVersion,
        format!(
            "process image layout {version} (this build reads {PROCESS_IMAGE_VERSION} and \
             {PROCESS_IMAGE_VERSION_THREADS}): the image was written by \
             another version of ckpt, whose libckpt_preload.so is part of the image; restart it with that version"
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
    if image.version != PROCESS_IMAGE_VERSION_THREADS {
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

/// CPUID feature words (see [`Fingerprint::cpu_features`]); empty off x86_64.
pub fn cpu_features() -> Vec<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        #[allow(unused_unsafe)]
        // SAFETY: CPUID is available on every x86_64 CPU; leaves above the maximum return zeros.
        unsafe {
            let max = __cpuid_count(0, 0).eax;
            let l1 = __cpuid_count(1, 0);
            let l7 = if max >= 7 { __cpuid_count(7, 0) } else { std::mem::zeroed() };
            let ld = if max >= 0xd { __cpuid_count(0xd, 0) } else { std::mem::zeroed() };
            // Leaf 1 EBX/ECX bits that change per call or per CPU (APIC id, OSXSAVE is stable) are not used.
            vec![l1.ecx, l1.edx, l7.ebx, l7.ecx, l7.edx, ld.eax]
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// Why a restart on this node would not work: the first difference between `saved` and `now`.
pub fn fingerprint_mismatch(saved: &Fingerprint, now: &Fingerprint) -> Option<String> {
    if saved.machine != now.machine {
        return Some(format!("the image is for {}, this node is {}", saved.machine, now.machine));
    }
    if saved.kernel_release != now.kernel_release {
        return Some(format!(
            "the image was taken under kernel {}, this node runs {}",
            saved.kernel_release, now.kernel_release
        ));
    }
    if saved.libc_version != now.libc_version {
        return Some(format!(
            "the image was taken with glibc {}, this node has {}",
            saved.libc_version, now.libc_version
        ));
    }
    if saved.page_size != now.page_size {
        return Some(format!("page size {} at checkpoint, {} here", saved.page_size, now.page_size));
    }
    for (i, (&s, &n)) in saved.cpu_features.iter().zip(now.cpu_features.iter()).enumerate() {
        if s & !n != 0 {
            return Some(format!(
                "this CPU lacks features the program may use (CPUID word {i}: missing bits {:#x})",
                s & !n
            ));
        }
    }
    if saved.cpu_features.len() > now.cpu_features.len() {
        return Some("this CPU reports fewer feature words".into());
    }
    None
}

/// Name of the file a shimmed process leaves in the control-socket directory so `ckpt create` can
/// find it: `<pid>.<job|->.<step|->.shim`. Requests and replies use the same stem with the extensions
/// `request`, `reply-pending` and `reply`.
pub fn registration_name(pid: u32, job_id: Option<&str>, step_id: Option<u32>) -> String {
    let step = step_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
    format!("{pid}.{}.{step}.shim", job_id.unwrap_or("-"))
}

/// This node's fingerprint (kernel, C library, CPU features, page size).
pub fn fingerprint() -> Fingerprint {
    // SAFETY: uname fills a zeroed utsname.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is writable.
    unsafe { libc::uname(&mut u) };
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let libc_version = libc_version();
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    Fingerprint {
        kernel_release: field(&u.release),
        machine: field(&u.machine),
        libc_version,
        cpu_features: cpu_features(),
        page_size,
    }
}

/// The C library's version: the shim and its images are glibc-only (the restorer replaces the whole address
/// space, and an image restored under another C library would run its saved glibc against the new one).
#[cfg(target_env = "gnu")]
fn libc_version() -> String {
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
    // SAFETY: returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) }.to_string_lossy().into_owned()
}

/// Other C libraries have no version call; images are not written there (the shim is glibc-only), and the
/// empty string never matches a glibc image's fingerprint.
#[cfg(not(target_env = "gnu"))]
fn libc_version() -> String {
    String::new()
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

/// A [`ckpt_core::storage::Storage`] that reads one already open file, whatever path it is asked for: a
/// checkpoint verified through a descriptor is read through that descriptor, never re-opened by name.
/// Everything but `open` is refused.
#[derive(Debug)]
pub struct OpenedFile(pub std::fs::File);

struct OpenedReader {
    file: std::fs::File,
    len: u64,
}

impl ckpt_core::storage::StorageReader for OpenedReader {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn map(&self) -> std::io::Result<Option<ckpt_core::storage::MappedBytes>> {
        if self.len == 0 {
            return Ok(Some(std::sync::Arc::new(Vec::new())));
        }
        // SAFETY: process images are written under a temporary name and renamed into place after fsync;
        // no writer of ours modifies one afterwards, and the file was checked to be writable by its owner
        // (us) only. A truncation by the owner while it is mapped would fault reads (documented; the
        // reader's `CKPT_MMAP=0` reads instead).
        let map = unsafe { memmap2::MmapOptions::new().len(self.len as usize).map(&self.file)? };
        Ok(Some(std::sync::Arc::new(map)))
    }
}

impl ckpt_core::storage::Storage for OpenedFile {
    fn create_new(&self, _: &std::path::Path, _: u32) -> std::io::Result<Box<dyn ckpt_core::storage::StorageWriter>> {
        Err(read_only())
    }
    fn open(&self, _: &std::path::Path) -> std::io::Result<Box<dyn ckpt_core::storage::StorageReader>> {
        let file = self.0.try_clone()?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
        }
        Ok(Box::new(OpenedReader { file, len: meta.len() }))
    }
    fn rename(&self, _: &std::path::Path, _: &std::path::Path) -> std::io::Result<()> {
        Err(read_only())
    }
    fn hard_link(&self, _: &std::path::Path, _: &std::path::Path) -> std::io::Result<()> {
        Err(read_only())
    }
    fn remove_file(&self, _: &std::path::Path) -> std::io::Result<()> {
        Err(read_only())
    }
    fn sync_dir(&self, _: &std::path::Path) -> std::io::Result<()> {
        Err(read_only())
    }
    fn read_dir(&self, _: &std::path::Path) -> std::io::Result<Vec<ckpt_core::storage::DirEntry>> {
        Err(read_only())
    }
    fn create_dir_all(&self, _: &std::path::Path) -> std::io::Result<()> {
        Err(read_only())
    }
    fn remove_dir(&self, _: &std::path::Path) -> std::io::Result<()> {
        Err(read_only())
    }
}

fn read_only() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Unsupported, "an opened checkpoint file is read only")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_markers() {
        let m = RootMarker { pid: 4242, start: 987654, nonce: 0xabc };
        let t = m.format();
        assert_eq!(t.len(), ROOT_MARKER_LEN);
        assert_eq!(RootMarker::parse(&t), Ok(m));
        assert!(RootMarker::parse("4242").unwrap_err().contains("bare pid"));
        for bad in ["", "1:2", "1:2:", "x:2:3", "1:2:3:4", "1:2:zz", "1:-2:3", "1:2:11111111111111111"] {
            assert!(RootMarker::parse(bad).is_err(), "{bad}");
        }
        #[cfg(not(miri))]
        {
            let me = RootMarker::for_self().unwrap();
            assert!(me.names_self());
            assert!(!RootMarker { start: me.start + 1, ..me }.names_self(), "another start time");
            assert!(!RootMarker { pid: me.pid + 1, ..me }.names_self(), "another pid");
        }
    }

    #[test]
    fn stat_start_time() {
        let line = b"77 (a b) c) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 200 rest";
        assert_eq!(parse_stat_start_time(line), Some(123456));
        assert_eq!(parse_stat_start_time(b"77 (x) S 1"), None);
    }

    #[test]
    fn registrations() {
        let r = Registration { signal: 10, exit_signal: 15, start: 99, boot: "b-1".into() };
        assert_eq!(Registration::parse(&r.format()), Ok(r));
        assert!(Registration::parse("signal=10\nexit_signal=15\n").unwrap_err().contains("older shim"));
        assert!(Registration::parse("signal=99\nexit_signal=15\nstart=1\nboot=x\n").is_err());
    }

    pub(super) fn image() -> ProcessImage {
        let region = |start: u64, end: u64, runs: Vec<Run>| Region {
            start,
            end,
            prot: 3,
            kind: RegionKind::Anonymous,
            path: Vec::new(),
            file_offset: 0,
            identity: None,
            runs,
        };
        ProcessImage {
            version: PROCESS_IMAGE_VERSION,
            exe: b"/bin/true".to_vec(),
            exe_identity: FileIdentity::default(),
            argv: vec![],
            envp: vec![],
            cwd: b"/".to_vec(),
            umask: 0o22,
            rlimit_stack: (8 << 20, u64::MAX),
            personality: 0,
            fingerprint: Fingerprint::default(),
            brk: 0,
            fs_base: 0,
            tid_offset: None,
            rseq: None,
            sigframe: 0x11000,
            sigactions: vec![],
            sigmask: 0,
            sigaltstack: (0, 0, 0),
            itimers: [ItimerRecord::default(); 3],
            fds: vec![
                FdRecord {
                    fd: 1,
                    kind: FdKind::Regular,
                    path: b"/out".to_vec(),
                    flags: 1,
                    cloexec: false,
                    offset: 10,
                    size: 10,
                    identity: Some(FileIdentity::default()),
                    shared: true,
                    dup_of: None,
                },
                FdRecord {
                    fd: 2,
                    kind: FdKind::Regular,
                    path: b"/out".to_vec(),
                    flags: 1,
                    cloexec: false,
                    offset: 10,
                    size: 10,
                    identity: Some(FileIdentity::default()),
                    shared: true,
                    dup_of: Some(1),
                },
                FdRecord {
                    fd: 7,
                    kind: FdKind::ForeignNull,
                    path: b"pipe:[42]".to_vec(),
                    flags: 1,
                    cloexec: false,
                    offset: -29,
                    size: 0,
                    identity: None,
                    shared: false,
                    dup_of: None,
                },
            ],
            regions: vec![
                region(0x10000, 0x12000, vec![Run { addr: 0x11000, len: 0x1000, data_offset: 0 }]),
                region(0x20000, 0x30000, vec![Run { addr: 0x20000, len: 0x2000, data_offset: 0x1000 }]),
            ],
            vdso: None,
            pid: 1,
            host: "h".into(),
            sequence: 1,
            pause_us: 0,
            time_unix: 0.0,
            restarts: 0,
        }
    }

    #[test]
    fn a_consistent_image_validates_and_round_trips() {
        let img = image();
        img.validate().unwrap();
        assert_eq!(img.saved_bytes(), 0x3000);
        let back: ProcessImage = postcard::from_bytes(&encode(&img).unwrap()).unwrap();
        assert_eq!(back, img);
    }

    #[test]
    fn each_inconsistency_is_named() {
        type Damage = fn(&mut ProcessImage);
        let cases: Vec<(Damage, &str)> = vec![
            (|i| i.regions[0].start = 0x10001, "page-aligned"),
            (|i| i.regions[1].start = 0x11000, "overlaps"),
            (|i| i.regions[1].end = 0x0000_8000_0000_1000, "page-aligned user range"),
            (|i| i.regions[0].prot = 8, "protection"),
            (|i| i.regions[0].runs[0].addr = 0x12000, "inside region 0"),
            (|i| i.regions[0].runs[0].len = u64::MAX - 0xfff, "inside region 0"),
            (|i| i.regions[1].runs[0].data_offset = 0, "expected 0x1000"),
            (|i| i.sigframe = 0x40000, "signal frame"),
            (|i| i.regions[0].kind = RegionKind::Guard, "inaccessible"),
            (|i| i.fds[1].dup_of = Some(7), "not an earlier descriptor of the same kind"),
            (|i| i.fds[1].dup_of = Some(2), "not an earlier descriptor of the same kind"),
            (|i| i.fds[1].kind = FdKind::Directory, "not an earlier descriptor of the same kind"),
            (|i| i.fds[2].fd = 1, "listed twice"),
        ];
        for (damage, needle) in cases {
            let mut img = image();
            damage(&mut img);
            let e = img.validate().expect_err(needle);
            assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        }
    }

    #[test]
    fn foreign_fd_settings() {
        assert_eq!(ForeignFds::parse(None), Ok(ForeignFds::DevNull));
        assert_eq!(ForeignFds::parse(Some("")), Ok(ForeignFds::DevNull));
        assert_eq!(ForeignFds::parse(Some("devnull")), Ok(ForeignFds::DevNull));
        assert_eq!(ForeignFds::parse(Some(" Close ")), Ok(ForeignFds::Close));
        assert_eq!(ForeignFds::parse(Some("refuse")), Ok(ForeignFds::Refuse));
        let e = ForeignFds::parse(Some("null")).unwrap_err();
        assert!(e.contains("CKPT_SHIM_FOREIGN_FDS") && e.contains("devnull, close, refuse"), "{e}");
        for f in [ForeignFds::DevNull, ForeignFds::Close, ForeignFds::Refuse] {
            assert_eq!(ForeignFds::parse(Some(f.name())), Ok(f));
        }
    }

    #[test]
    fn fingerprints_compare_by_what_a_restart_needs() {
        let now = Fingerprint {
            kernel_release: "6.1".into(),
            machine: "x86_64".into(),
            libc_version: "2.36".into(),
            cpu_features: vec![0b1111, 0b1],
            page_size: 4096,
        };
        assert_eq!(fingerprint_mismatch(&now, &now), None);
        let mut fewer = now.clone();
        fewer.cpu_features = vec![0b0111, 0b1];
        assert_eq!(fingerprint_mismatch(&fewer, &now), None, "a CPU with more features is fine");
        assert!(fingerprint_mismatch(&now, &fewer).unwrap().contains("lacks features"));
        let mut k = now.clone();
        k.kernel_release = "6.2".into();
        assert!(fingerprint_mismatch(&k, &now).unwrap().contains("kernel"));
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    /// Layout 2 of the state section, pinned: a change to `ProcessImage` that is not a new layout version
    /// fails here (images already written must stay readable).
    #[test]
    fn state_section_layout_2_is_pinned() {
        // Committed once; never regenerated (CKPT_WRITE_GOLDEN=1 only creates it when missing).
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/process-image-v2.state");
        let image = tests::image();
        let encoded = encode(&image).unwrap();
        if std::env::var_os("CKPT_WRITE_GOLDEN").is_some() && !std::path::Path::new(path).exists() {
            std::fs::write(path, &encoded).unwrap();
        }
        let golden = std::fs::read(path).expect("ckpt-image/testdata/process-image-v2.state");
        assert_eq!(encoded, golden, "the layout of ProcessImage changed: bump PROCESS_IMAGE_VERSION");
        let back: ProcessImage = postcard::from_bytes(&golden).unwrap();
        assert_eq!(back, image);
    }

    /// A layout-1 state section (written by the previous version) is refused by its version, with a
    /// message, before its fields are decoded as this layout's.
    #[test]
    fn state_section_layout_1_is_refused_by_its_version() {
        let v1 = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/process-image-v1.state")).unwrap();
        let version: u32 = postcard::from_bytes(&v1).unwrap();
        assert_eq!(version, 1);
        let e = check_version(version).unwrap_err();
        assert_eq!(e.kind(), ckpt_core::ErrorKind::UnsupportedVersion);
        assert!(e.to_string().contains("layout 1 (this build reads 2 and 3)"), "{e}");
        assert!(e.to_string().contains("another version of ckpt"), "{e}");
        assert!(check_version(PROCESS_IMAGE_VERSION).is_ok());
        assert!(check_version(PROCESS_IMAGE_VERSION_THREADS).is_ok());
    }
}
