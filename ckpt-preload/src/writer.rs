//! The writer: a forked copy of the program that saves its own (frozen) address space as a process image.
//!
//! It runs in a child made by a raw `clone` from inside the signal handler, so the program may have been
//! interrupted anywhere, even inside `malloc`. Hence: Rust allocations come from a private arena the
//! image excludes (see the allocator in `lib.rs`), no libc function that allocates is called (`opendir`
//! is replaced by [`ForkSafeStorage::read_dir`]), and nothing the program owns is modified.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use ckpt_core::storage::{DirEntry, FileStorage, Storage, StorageReader, StorageWriter};
use ckpt_core::{Compression, Encoding, SectionOptions};
use ckpt_image::control::Answer;
use ckpt_image::*;

use crate::sys::*;
use crate::{ARENA_SIZE, CHILD_ARENA, SNAPSHOT, context, warn};

/// File-system access for the writer: the operating system's, with a directory listing that does not
/// go through `opendir` (which calls `malloc`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkSafeStorage;

impl Storage for ForkSafeStorage {
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<Box<dyn StorageWriter>> {
        FileStorage.create_new(path, mode)
    }
    // Forwarded, so that `CKPT_DIRECT_IO` (in the configuration's WriteOptions) reaches the file writer.
    fn create_new_with(
        &self,
        path: &Path,
        opts: ckpt_core::storage::WriteOptions,
    ) -> io::Result<Box<dyn StorageWriter>> {
        FileStorage.create_new_with(path, opts)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageReader>> {
        FileStorage.open(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        FileStorage.rename(from, to)
    }
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        FileStorage.hard_link(original, link)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        FileStorage.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        FileStorage.sync_dir(dir)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let mut path = dir.as_os_str().as_bytes().to_vec();
        path.push(0);
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        if crate::for_each_dir_entry(&path, &mut buf, |n| names.push(n.to_vec())) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        for name in names {
            let name = std::ffi::OsString::from(std::ffi::OsStr::from_bytes(&name));
            let meta = match std::fs::symlink_metadata(dir.join(&name)) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(DirEntry {
                name,
                is_file: meta.is_file(),
                len: if meta.is_file() { meta.len() } else { 0 },
                modified: meta.modified().ok(),
            });
        }
        Ok(out)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        FileStorage.create_dir_all(dir)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        FileStorage.remove_dir(dir)
    }
}

/// Why no image was written.
pub(crate) enum Failure {
    /// Something this version cannot restore (exit status 3).
    Refused(String),
    /// An I/O or format error (exit status 2).
    Failed(String),
}

/// Size of the writer's own stack.
const WRITER_STACK: usize = 8 << 20;

/// Entry point of the writer child (right after the raw clone); never returns. Moves to a stack and an
/// arena of its own first: the program's stack and heap must not change while they are being saved.
pub(crate) fn run_writer() -> ! {
    let map = |len: usize| {
        // SAFETY: a private anonymous reservation; MAP_NORESERVE so untouched pages cost nothing.
        unsafe {
            syscall6(
                SYS_mmap,
                0,
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as usize,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE) as usize,
                usize::MAX,
                0,
            )
        }
    };
    let arena = map(ARENA_SIZE);
    let stack = map(WRITER_STACK);
    if arena < 0 || stack < 0 {
        warn(b"checkpoint failed: cannot map the writer's arena");
        exit_group(2);
    }
    // Before the writer changes any static of the shim (the arena's address below, the storage's staging
    // buffers and caches, a panic hook...): the program's copy of them, which is what the image must hold.
    // SAFETY: nothing of the shim's writable data has been written in this process yet.
    if unsafe { !copy_program_data(map) } {
        warn(b"checkpoint failed: cannot copy the shim's own data");
        exit_group(2);
    }
    // SAFETY: the arena is mapped and writable; its first word is the bump cursor.
    unsafe { *(arena as *mut usize) = arena as usize + 64 };
    CHILD_ARENA.store(arena as usize, Ordering::Relaxed);
    let top = (stack as usize + WRITER_STACK - 64) & !15;
    // SAFETY: the new stack is a fresh mapping; writer_main never returns.
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "call {main}",
            "ud2",
            top = in(reg) top,
            main = sym writer_main,
            in("rdi") arena as usize,
            in("rsi") stack as usize,
            options(noreturn)
        )
    }
}

extern "C" fn writer_main(arena: usize, stack: usize) -> ! {
    let mut excluded = vec![(arena as u64, (arena + ARENA_SIZE) as u64), (stack as u64, (stack + WRITER_STACK) as u64)];
    excluded.extend(program_data().iter().map(|c| (c.copy as u64, (c.copy + (c.end - c.start)) as u64)));
    // A bug or an inconsistent state in here is a failed checkpoint with a message and a log line, never an
    // abort without one (the program goes on, or gets its own action for SIGTERM).
    // SAFETY: the writer reads its own copy of the snapshot.
    let member = unsafe { (*SNAPSHOT.get()).member };
    std::panic::set_hook(Box::new(move |info| {
        let m = format!("internal error in the writer: {info}");
        if member {
            crate::tree::member_failed(&m);
        }
        reply(Answer::Error(format!("checkpoint failed: {m}")));
        warn(format!("checkpoint failed: {m}").as_bytes());
        log_line(&serde_json::json!({"event": "checkpoint-failed", "error": m}));
        exit_group(2)
    }));
    // This raw clone may have stopped the program inside the C library's allocator: no thread may start.
    // Direct writes stay (synchronous, and steadier than buffered ones, whose cost depends on how long the
    // memory for new page-cache pages sat idle; BENCHMARKS.md has the figures).
    ckpt_core::storage::disable_io_threads();
    let result = write_image(&excluded);
    if result.is_err() && !member {
        crate::tree::abandon_members();
    }
    let code = match result {
        Ok(()) => 0,
        Err(Failure::Refused(m)) => {
            if member {
                crate::tree::member_failed(&format!("cannot be checkpointed: {m}"));
            }
            reply(Answer::Error(format!("cannot checkpoint: {m}")));
            warn(format!("cannot checkpoint: {m}").as_bytes());
            log_line(&serde_json::json!({"event": "checkpoint-refused", "reason": m}));
            3
        }
        Err(Failure::Failed(m)) => {
            if member {
                crate::tree::member_failed(&format!("its checkpoint failed: {m}"));
            }
            reply(Answer::Error(format!("checkpoint failed: {m}")));
            warn(format!("checkpoint failed: {m}").as_bytes());
            log_line(&serde_json::json!({"event": "checkpoint-failed", "error": m}));
            2
        }
    };
    exit_group(code)
}

/// One writable segment of the shim (its `.data`/`.bss`: every static of the shim and of the Rust code
/// linked into it) and where the writer copied it before changing anything.
#[derive(Clone, Copy)]
pub(crate) struct DataCopy {
    pub start: usize,
    pub end: usize,
    pub copy: usize,
}

const MAX_DATA_COPIES: usize = 4;
static DATA_COPIES: crate::Shared<[DataCopy; MAX_DATA_COPIES]> =
    crate::Shared::new([DataCopy { start: 0, end: 0, copy: 0 }; MAX_DATA_COPIES]);
static DATA_COPY_COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The copies made by [`copy_program_data`] (in the writer; empty elsewhere).
fn program_data() -> &'static [DataCopy] {
    let n = DATA_COPY_COUNT.load(Ordering::Relaxed).min(MAX_DATA_COPIES);
    // SAFETY: written once by copy_program_data before anything reads it; the writer is single-threaded.
    unsafe { &(&*DATA_COPIES.get())[..n] }
}

/// Copies the shim's writable segments, found from its own program headers (`__ehdr_start`, no libc
/// call, no allocation), into fresh mappings from `map`; false when a mapping fails.
///
/// # Safety
/// Called once, in the writer, before the writer writes any static of the shim.
unsafe fn copy_program_data(map: impl Fn(usize) -> isize) -> bool {
    unsafe extern "C" {
        static __ehdr_start: u8;
    }
    let ehdr_addr = core::ptr::addr_of!(__ehdr_start) as usize;
    // SAFETY: the linker points __ehdr_start at this object's ELF header, mapped with its first segment;
    // the program headers follow it in the same (read-only) mapping.
    let phdrs = unsafe {
        let ehdr = &*(ehdr_addr as *const libc::Elf64_Ehdr);
        if ehdr.e_ident[..4] != *b"\x7fELF" || ehdr.e_phentsize as usize != size_of::<libc::Elf64_Phdr>() {
            return false;
        }
        core::slice::from_raw_parts(
            (ehdr_addr + ehdr.e_phoff as usize) as *const libc::Elf64_Phdr,
            ehdr.e_phnum as usize,
        )
    };
    // The load bias: where the segment holding the header (file offset 0) was put.
    let Some(first) = phdrs.iter().find(|p| p.p_type == libc::PT_LOAD && p.p_offset == 0) else { return false };
    let bias = ehdr_addr.wrapping_sub(first.p_vaddr as usize);
    let page = 4096usize;
    let mut copies = [DataCopy { start: 0, end: 0, copy: 0 }; MAX_DATA_COPIES];
    let mut n = 0;
    for p in phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_W != 0) {
        if n == MAX_DATA_COPIES {
            return false;
        }
        let start = bias.wrapping_add(p.p_vaddr as usize) & !(page - 1);
        let end = (bias.wrapping_add((p.p_vaddr + p.p_memsz) as usize) + page - 1) & !(page - 1);
        let copy = map(end - start);
        if copy < 0 {
            return false;
        }
        // SAFETY: the segment is mapped readable (data, bss, or RELRO made read-only); the copy is a fresh
        // mapping of the same length.
        unsafe { core::ptr::copy_nonoverlapping(start as *const u8, copy as *mut u8, end - start) };
        copies[n] = DataCopy { start, end, copy: copy as usize };
        n += 1;
    }
    // SAFETY: single-threaded; the program's values are safe in the copies now.
    unsafe { *DATA_COPIES.get() = copies };
    DATA_COPY_COUNT.store(n, Ordering::Relaxed);
    true
}

/// Where the writer reads the program's bytes at `addr`: the copy of the shim's data, or the address
/// itself; and how many bytes (at most `len`) come from that same place.
fn program_bytes(addr: u64, len: u64) -> (*const u8, u64) {
    let mut n = len;
    for c in program_data() {
        let (s, e) = (c.start as u64, c.end as u64);
        if s <= addr && addr < e {
            return ((c.copy as u64 + (addr - s)) as *const u8, len.min(e - addr));
        }
        if addr < s {
            n = n.min(s - addr);
        }
    }
    (addr as *const u8, n)
}

/// The program's page at `addr` (page-aligned, mapped and readable), as 512 words.
fn program_page(addr: u64) -> &'static [u64] {
    let (p, _) = program_bytes(addr, 4096);
    // SAFETY: a page of a readable mapping, or of its copy (the copies are page-granular).
    unsafe { std::slice::from_raw_parts(p as *const u64, 512) }
}

/// Appends one JSON line to the shim's log.
pub(crate) fn log_line(value: &serde_json::Value) {
    let Some(ctx) = context() else { return };
    let mut line = value.to_string();
    line.push('\n');
    if ctx.log_stderr {
        write_all(2, line.as_bytes());
    } else if let Some(p) = &ctx.log_path {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(p) {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// One line of `/proc/self/maps`.
pub(crate) struct MapLine {
    pub start: u64,
    pub end: u64,
    pub perms: [u8; 4],
    pub offset: u64,
    pub dev: u64,
    pub inode: u64,
    pub path: Vec<u8>,
}

/// Parses `/proc/<pid>/maps` (used by the writer and, before the restore, by the preflight).
pub(crate) fn parse_maps(text: &[u8]) -> Vec<MapLine> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut fields = line.splitn(6, |&b| b == b' ');
        let (Some(range), Some(perms), Some(offset), Some(dev), Some(inode)) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = fields.next().map(|p| p.trim_ascii_start().to_vec()).unwrap_or_default();
        let hex = |s: &[u8]| u64::from_str_radix(std::str::from_utf8(s).unwrap_or("x"), 16).ok();
        let mut r = range.splitn(2, |&b| b == b'-');
        let (Some(start), Some(end)) = (r.next().and_then(hex), r.next().and_then(hex)) else { continue };
        let mut p = [b'-'; 4];
        for (i, &b) in perms.iter().take(4).enumerate() {
            p[i] = b;
        }
        out.push(MapLine {
            start,
            end,
            perms: p,
            offset: hex(offset).unwrap_or(0),
            dev: {
                let mut mm = dev.splitn(2, |&b| b == b':');
                match (mm.next().and_then(hex), mm.next().and_then(hex)) {
                    (Some(major), Some(minor)) => libc::makedev(major as u32, minor as u32),
                    _ => 0,
                }
            },
            inode: std::str::from_utf8(inode).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
            path,
        });
    }
    out
}

fn prot_of(perms: &[u8; 4]) -> u32 {
    let mut prot = 0;
    if perms[0] == b'r' {
        prot |= libc::PROT_READ;
    }
    if perms[1] == b'w' {
        prot |= libc::PROT_WRITE;
    }
    if perms[2] == b'x' {
        prot |= libc::PROT_EXEC;
    }
    prot as u32
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Pagemap bits.
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

fn write_image(excluded: &[(u64, u64)]) -> Result<(), Failure> {
    let started_ns = monotonic_ns();
    // SAFETY: the writer reads its own copy of the snapshot the handler filled before forking.
    let snap = unsafe { &*SNAPSHOT.get() };
    let pause_us = (started_ns.saturating_sub(snap.t0_ns)) / 1000;
    let ctx = context().ok_or_else(|| Failure::Failed("the shim was not initialised".into()))?;
    let MemoryLayout { regions, vdso } = memory_regions(excluded)?;
    // Descriptors, as the handler saw them.
    // SAFETY: getppid has no preconditions; the writer is the program's child (clone without CLONE_PARENT).
    if let Some(problem) = program_timers(unsafe { libc::getppid() }) {
        return Err(Failure::Refused(problem));
    }
    let (fds, foreign) = descriptors(snap)?;
    let pid = snap.pid;
    let pending = pending_signals(pid)?;
    let locks = file_locks(snap, &fds, pid)?;
    let threads = thread_records(pid)?;
    let main = &threads[0];
    // SAFETY: the main thread's ucontext is on its (copied) stack.
    let main_uc = unsafe { &*(main.sigframe as *const libc::ucontext_t) };
    let image = ProcessImage {
        version: if snap.tree {
            ckpt_image::tree::PROCESS_IMAGE_VERSION_TREE
        } else if threads.len() > 1 {
            PROCESS_IMAGE_VERSION_THREADS
        } else {
            PROCESS_IMAGE_VERSION
        },
        exe: std::fs::read_link("/proc/self/exe").map(|p| p.as_os_str().as_bytes().to_vec()).unwrap_or_default(),
        exe_identity: std::fs::metadata("/proc/self/exe").map(|m| FileIdentity::of(&m)).unwrap_or_default(),
        argv: ctx.argv.iter().map(|&p| c_string(p)).collect(),
        envp: ctx.envp.iter().map(|&p| c_string(p)).collect(),
        cwd: std::env::current_dir().map(|p| p.as_os_str().as_bytes().to_vec()).unwrap_or_default(),
        umask: {
            // SAFETY: umask has no memory effects; the writer's copy is restored right away.
            let u = unsafe { libc::umask(0o022) };
            // SAFETY: as above.
            unsafe { libc::umask(u) };
            u
        },
        rlimit_stack: rlimit_stack(),
        // SAFETY: personality(0xffffffff) only queries.
        personality: unsafe { libc::personality(0xffff_ffff) } as u32,
        fingerprint: ckpt_image::fingerprint(),
        // SAFETY: brk(0) only queries.
        brk: unsafe { syscall3(SYS_brk, 0, 0, 0) } as u64,
        fs_base: main.fs_base,
        tid_offset: u64::try_from(crate::TID_OFFSET.load(Ordering::Relaxed)).ok(),
        rseq: main.rseq,
        sigframe: main.sigframe,
        sigactions: sigactions(),
        // SAFETY: reads the signal mask out of the ucontext (its layout: libc's ucontext_t).
        sigmask: unsafe { std::ptr::read_unaligned(&main_uc.uc_sigmask as *const libc::sigset_t as *const u64) },
        sigaltstack: (main_uc.uc_stack.ss_sp as u64, main_uc.uc_stack.ss_flags, main_uc.uc_stack.ss_size as u64),
        itimers: [0, 1, 2].map(|i| ItimerRecord { interval_us: snap.itimers[i][0], value_us: snap.itimers[i][1] }),
        fds,
        regions,
        vdso,
        pid,
        host: ctx.store.config().host.clone(),
        sequence: snap.sequence,
        pause_us,
        time_unix: ckpt_core::triggers::unix_now(),
        restarts: crate::RESTARTS.load(Ordering::Relaxed),
    };
    commit_image(ctx, snap, &image, &ImageSections { threads, locks, pending, foreign }, started_ns)
}

/// What an image holds besides its state and memory.
struct ImageSections {
    threads: Vec<ThreadRecord>,
    locks: Vec<FileLock>,
    pending: PendingSignals,
    foreign: Vec<serde_json::Value>,
}

/// Every mapping of this (frozen) copy of the process but the writer's own (`excluded`), with the pages
/// to save, and the vDSO's range; refuses what cannot be restored (shared writable or deleted mappings,
/// shared memory).
fn memory_regions(excluded: &[(u64, u64)]) -> Result<MemoryLayout, Failure> {
    let maps = std::fs::read("/proc/self/maps").map_err(|e| Failure::Failed(format!("/proc/self/maps: {e}")))?;
    let pagemap =
        std::fs::File::open("/proc/self/pagemap").map_err(|e| Failure::Failed(format!("/proc/self/pagemap: {e}")))?;

    let mut regions = Vec::new();
    let mut vdso = None;
    let mut data_offset = 0u64;
    let mut entries = vec![0u8; 8 * 4096];
    // The writer's own mappings may have been merged with a neighbour of the program: cut them out.
    let mut lines = Vec::new();
    for m in parse_maps(&maps) {
        let mut pieces = vec![(m.start, m.end)];
        for &(a, b) in excluded {
            pieces = pieces
                .into_iter()
                .flat_map(|(s, e)| {
                    if b <= s || e <= a {
                        vec![(s, e)]
                    } else {
                        [(s, a.max(s)), (b.min(e), e)].into_iter().filter(|(x, y)| x < y).collect()
                    }
                })
                .collect();
        }
        for (s, e) in pieces {
            lines.push(MapLine {
                start: s,
                end: e,
                perms: m.perms,
                offset: m.offset + (s - m.start),
                dev: m.dev,
                inode: m.inode,
                path: m.path.clone(),
            });
        }
    }
    // The program break's range, as the kernel labels `[heap]` (pages mapped from the image are not).
    let heap = program_break_range();
    for m in lines {
        let path = m.path.clone();
        match &path[..] {
            b"[vdso]" => {
                vdso = Some((m.start, m.end));
                continue;
            }
            b"[vvar]" | b"[vvar_vclock]" | b"[vsyscall]" => continue,
            _ => {}
        }
        let name = lossy(&path);
        // Pages the restorer mapped straight from the image this process was restored from: program
        // memory, saved like anonymous memory (the image file may be pruned later).
        let from_image = m.inode != 0
            && m.inode == crate::RESTORED_INO.load(Ordering::Relaxed)
            && m.dev == crate::RESTORED_DEV.load(Ordering::Relaxed);
        if m.perms[3] == b's' && m.perms[1] == b'w' {
            return Err(Failure::Refused(format!("shared writable mapping of {name:?} at {:#x}", m.start)));
        }
        if path.ends_with(b" (deleted)") && !from_image {
            return Err(Failure::Refused(format!("mapping of a deleted file {name:?}")));
        }
        // (A member of a process tree is restored from a memfd holding its image.)
        if !from_image && (path.starts_with(b"/SYSV") || path.starts_with(b"/dev/shm/") || path.starts_with(b"/memfd:"))
        {
            return Err(Failure::Refused(format!("shared memory mapping {name:?}")));
        }
        let prot = prot_of(&m.perms);
        let is_file = m.inode != 0 && path.starts_with(b"/") && !from_image;
        // The restorer maps only anonymous memory from the image (file regions get their saved pages read
        // into a private mapping of their own file): such pages are the program's anonymous data, its heap
        // where the kernel would call them that (the range of the program break), never a mapping of the
        // image file (which a later restart would neither find nor want).
        let path = if from_image { Vec::new() } else { path };
        let kind = if prot == 0 {
            RegionKind::Guard
        } else if is_file {
            RegionKind::File
        } else if path == b"[heap]" || from_image && heap.is_some_and(|(lo, hi)| m.start <= hi && m.end >= lo) {
            RegionKind::Heap
        } else if path == b"[stack]" {
            RegionKind::Stack
        } else {
            RegionKind::Anonymous
        };
        let identity = if is_file {
            let meta = std::fs::metadata(Path::new(std::ffi::OsStr::from_bytes(&path)))
                .map_err(|e| Failure::Refused(format!("mapped file {name:?}: {e}")))?;
            Some(FileIdentity::of(&meta))
        } else {
            None
        };
        let mut runs = if kind == RegionKind::Guard {
            Vec::new()
        } else {
            saved_runs(&pagemap, &mut entries, &m, prot, from_image, is_file)?
        };
        for r in &mut runs {
            r.data_offset = data_offset;
            data_offset += r.len;
        }
        regions.push(Region { start: m.start, end: m.end, prot, kind, path, file_offset: m.offset, identity, runs });
    }
    Ok(MemoryLayout { regions, vdso })
}

/// The regions an image saves and where the vDSO was.
struct MemoryLayout {
    regions: Vec<Region>,
    vdso: Option<(u64, u64)>,
}

/// The pages of mapping `m` an image saves: what the program wrote (anonymous memory that is present or
/// swapped and not all zero; a file mapping's privately changed pages; every page of one mapped from the
/// image this process was restored from), as runs of adjacent pages (`data_offset` left 0).
fn saved_runs(
    pagemap: &std::fs::File,
    entries: &mut [u8],
    m: &MapLine,
    prot: u32,
    from_image: bool,
    is_file: bool,
) -> Result<Vec<Run>, Failure> {
    let page = 4096u64;
    let mut runs: Vec<Run> = Vec::new();
    if prot & libc::PROT_READ as u32 == 0 {
        // Only this copy of the address space changes.
        // SAFETY: the range is a mapping of this process (from /proc/self/maps).
        unsafe { syscall3(SYS_mprotect, m.start as usize, (m.end - m.start) as usize, (prot | 1) as usize) };
    }
    let npages = (m.end - m.start) / page;
    // A large region (a reservation of which few pages were ever touched): only the ranges the
    // kernel has pages for (PAGEMAP_SCAN); everything else is never saved. Pages of the image this
    // process was restored from hold data without being present: all of them.
    let ranges = if !from_image && npages > 16384 {
        populated(pagemap, m.start, m.end).unwrap_or_else(|| vec![(0, npages)])
    } else {
        vec![(0, npages)]
    };
    for (lo, hi) in ranges {
        let mut p = lo;
        while p < hi {
            let chunk = (hi - p).min(4096);
            let bytes = &mut entries[..(chunk * 8) as usize];
            pagemap
                .read_exact_at(bytes, (m.start / page + p) * 8)
                .map_err(|e| Failure::Failed(format!("/proc/self/pagemap at {:#x}: {e}", m.start + p * page)))?;
            for i in 0..chunk {
                let e = u64::from_le_bytes(bytes[(i * 8) as usize..(i * 8 + 8) as usize].try_into().unwrap());
                let addr = m.start + (p + i) * page;
                let save = if from_image {
                    // Present or not, these pages hold the program's data (mapped, made readable above).
                    program_page(addr).iter().any(|&w| w != 0)
                } else if is_file {
                    // A private copy of a file page (relocations, written .data) differs from the file.
                    (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAPPED != 0
                } else if e & (PM_PRESENT | PM_SWAPPED) != 0 {
                    // Mapped and made readable above.
                    program_page(addr).iter().any(|&w| w != 0)
                } else {
                    false
                };
                if !save {
                    continue;
                }
                match runs.last_mut() {
                    Some(r) if r.addr + r.len == addr => r.len += page,
                    _ => runs.push(Run { addr, len: page, data_offset: 0 }),
                }
            }
            p += chunk;
        }
    }
    Ok(runs)
}

/// Every thread as it stopped (threads.rs), the main one (tid = pid) first: it restores into the restarted
/// process's first thread, the others are recreated.
fn thread_records(pid: i32) -> Result<Vec<ThreadRecord>, Failure> {
    // SAFETY: this copy of the process is single-threaded; the slots were written before the fork.
    let slots = unsafe { &*crate::threads::SLOTS.get() };
    let slots = &slots[..crate::threads::NSLOTS.load(Ordering::Acquire).min(crate::threads::MAX_THREADS)];
    let Some(main) = slots.iter().find(|t| t.tid == pid).copied() else {
        return Err(Failure::Refused(
            "the main thread has exited (the process goes on in other threads); this version restores a \
             process only with its main thread"
                .into(),
        ));
    };
    let rseq_of = |fs_base: u64| match crate::RSEQ_LEN.load(Ordering::Relaxed) {
        0 => None,
        len => Some(RseqRecord {
            // Each thread's area is at the same offset from its thread pointer (glibc's __rseq_offset).
            addr: (crate::RSEQ_ADDR.load(Ordering::Relaxed) as i64 - crate::MAIN_FS_BASE.load(Ordering::Relaxed) as i64
                + fs_base as i64) as u64,
            len,
            sig: crate::RSEQ_SIG.load(Ordering::Relaxed),
        }),
    };
    let threads = std::iter::once(main)
        .chain(slots.iter().filter(|t| t.tid != pid).copied())
        .map(|t| ThreadRecord {
            tid: t.tid,
            fs_base: t.fs_base,
            sigframe: t.ucontext,
            robust_head: t.robust_head,
            robust_len: t.robust_len,
            rseq: rseq_of(t.fs_base),
            name: {
                let mut n = std::fs::read(format!("/proc/{pid}/task/{}/comm", t.tid)).unwrap_or_default();
                n.truncate(15);
                while n.last() == Some(&b'\n') {
                    n.pop();
                }
                n
            },
            affinity: {
                let mut mask = [0u64; 16];
                // SAFETY: sched_getaffinity writes at most the buffer's size.
                let r = unsafe {
                    libc::syscall(libc::SYS_sched_getaffinity, t.tid, std::mem::size_of_val(&mask), mask.as_mut_ptr())
                };
                if r > 0 { mask[..(r as usize).div_ceil(8).min(16)].to_vec() } else { Vec::new() }
            },
        })
        .collect();
    Ok(threads)
}

/// Commits `image` and its sections as the next generation (or into the directory `ckpt create` asked
/// for), logs it and answers a waiting `ckpt create`.
fn commit_image(
    ctx: &crate::ShimContext,
    snap: &crate::Snapshot,
    image: &ProcessImage,
    sections: &ImageSections,
    started_ns: u64,
) -> Result<(), Failure> {
    let ImageSections { threads, locks, pending, foreign } = sections;
    let state = ckpt_image::encode(image).map_err(|e| Failure::Failed(e.to_string()))?;

    let store = &ctx.store;
    let member_path = snap.member.then(crate::tree::member_image_path);
    let image_dir = if snap.member { None } else { take_request() };
    let begin = match (&member_path, &image_dir) {
        (Some(p), _) => ckpt_core::begin_file(p, snap.sequence, store.config(), std::sync::Arc::new(ForkSafeStorage)),
        (None, Some(d)) => store.begin_in(d, snap.sequence),
        (None, None) => store.begin(snap.sequence),
    };
    let mut w = begin.map_err(|e| Failure::Failed(e.to_string()))?;
    let plain = SectionOptions::new().compression(Compression::None);
    let fail = |e: ckpt_core::Error| Failure::Failed(e.to_string());
    w.set_metadata(IMAGE_METADATA_KEY, "1").map_err(fail)?;
    w.add_section_with(STATE_SECTION, &state, plain.encoding(Encoding::Postcard)).map_err(fail)?;
    let limits = ckpt_image::encode_limits(&resource_limits()).map_err(fail)?;
    w.add_section_with(LIMITS_SECTION, &limits, plain.encoding(Encoding::Postcard)).map_err(fail)?;
    let noreserve = ckpt_image::encode_noreserve(&noreserve_ranges()).map_err(fail)?;
    w.add_section_with(ckpt_image::NORESERVE_SECTION, &noreserve, plain.encoding(Encoding::Postcard)).map_err(fail)?;
    // The program's process group (the writer, forked from it, is in the same one).
    // SAFETY: getpgrp takes nothing and cannot fail.
    let group = ckpt_image::encode_group(unsafe { libc::getpgrp() }).map_err(fail)?;
    w.add_section_with(ckpt_image::GROUP_SECTION, &group, plain.encoding(Encoding::Postcard)).map_err(fail)?;
    if !locks.is_empty() {
        let section = ckpt_image::encode_locks(locks).map_err(fail)?;
        w.add_section_with(LOCKS_SECTION, &section, plain.encoding(Encoding::Postcard)).map_err(fail)?;
    }
    if *pending != PendingSignals::default() {
        let section = ckpt_image::encode_pending(pending).map_err(fail)?;
        w.add_section_with(PENDING_SECTION, &section, plain.encoding(Encoding::Postcard)).map_err(fail)?;
    }
    if threads.len() > 1 {
        let section = ckpt_image::encode_threads(threads).map_err(fail)?;
        w.add_section_with(THREADS_SECTION, &section, plain.encoding(Encoding::Postcard)).map_err(fail)?;
    }
    if snap.tree {
        let section = ckpt_image::tree::encode_pipes(&crate::tree::read_scratch()).map_err(fail)?;
        w.add_section_with(ckpt_image::tree::PIPES_SECTION, &section, plain.encoding(Encoding::Postcard))
            .map_err(fail)?;
    }
    let members = if snap.tree && !snap.member { crate::tree::embed_members(&mut w, image)? } else { Vec::new() };
    // The requesting thread's errno as the program left it (this copy's libc calls change it).
    // (x86_64: memory is little-endian.)
    let errno = (snap.errno_addr as u64, snap.errno.to_le_bytes());
    {
        let mut sw = w.section_writer(MEMORY_SECTION, plain).map_err(fail)?;
        // Through a buffer: the CRC and the bytes written are then the same bytes even where this copy of
        // the process still changes memory it saves (its thread-local errno, for one).
        let mut buf = vec![0u8; 1 << 20];
        for run in image.regions.iter().flat_map(|r| r.runs.iter()) {
            let mut done = 0u64;
            while done < run.len {
                // The shim's own data from the copy made before the writer changed it.
                let (from, n) = program_bytes(run.addr + done, (run.len - done).min(buf.len() as u64));
                let n = n as usize;
                // SAFETY: every run lies in a readable mapping of this (frozen) copy of the process, and
                // program_bytes keeps the range inside one mapping or one copy.
                let src = unsafe { std::slice::from_raw_parts(from, n) };
                buf[..n].copy_from_slice(src);
                let at = run.addr + done;
                if errno.0 >= at && errno.0 + 4 <= at + n as u64 {
                    let k = (errno.0 - at) as usize;
                    buf[k..k + 4].copy_from_slice(&errno.1);
                }
                sw.write_bytes(&buf[..n]).map_err(fail)?;
                done += n as u64;
            }
        }
        sw.finish().map_err(fail)?;
    }
    let committed = w.commit().map_err(fail);
    crate::tree::remove_member_images(&members);
    let info = committed?;
    if snap.member {
        crate::tree::member_written();
        return Ok(());
    }
    let done_ns = monotonic_ns();
    let file_len = std::fs::metadata(&info.path).map(|m| m.len()).unwrap_or(0);
    let event = serde_json::json!({
        "event": "checkpoint", "path": info.path, "generation": info.generation, "sequence": snap.sequence,
        "exit": snap.exit, "image_bytes": file_len, "saved_bytes": image.saved_bytes(),
        "mapped_bytes": image.mapped_bytes(), "regions": image.regions.len(),
        "runs": image.regions.iter().map(|r| r.runs.len()).sum::<usize>(),
        "pause_ms": image.pause_us as f64 / 1e3, "write_ms": (done_ns - started_ns) as f64 / 1e6,
        "threads": threads.len(), "processes": 1 + members.len(),
        "restarts": image.restarts, "pid": image.pid,
        "shared_fds": image.fds.iter().filter(|f| f.dup_of.is_some()).count(),
        "fd_sharing_by": if snap.sharing_by_kcmp { "kcmp" } else { "probe" },
        "foreign_fds": foreign,
    });
    log_line(&event);
    reply(Answer::Image(info.path.clone()));
    Ok(())
}

/// `(start_brk, brk)` of this process: `/proc/self/stat` field 47 (see proc(5)) and the current break.
fn program_break_range() -> Option<(u64, u64)> {
    let stat = std::fs::read("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces and parentheses): field 3 is the first.
    let rest = &stat[stat.iter().rposition(|&b| b == b')')? + 1..];
    let field = |n: usize| -> Option<u64> {
        let f = rest.split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(n - 3)?;
        std::str::from_utf8(f).ok()?.trim().parse().ok()
    };
    // SAFETY: brk(0) only queries.
    let brk = unsafe { syscall3(SYS_brk, 0, 0, 0) } as u64;
    let start = field(47)?;
    (start != 0 && start <= brk).then_some((start, brk))
}

/// Files the program's parent process holds open for writing, as (device, inode).
fn parent_write_files(ppid: i32) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    // getdents, not read_dir: opendir calls malloc (see the module comment).
    let mut names = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let path = format!("/proc/{ppid}/fd\0");
    crate::for_each_dir_entry(path.as_bytes(), &mut buf, |n| names.push(String::from_utf8_lossy(n).into_owned()));
    for n in names {
        let flags = std::fs::read_to_string(format!("/proc/{ppid}/fdinfo/{n}"))
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("flags:").map(|v| v.trim().to_string())))
            .and_then(|v| i32::from_str_radix(&v, 8).ok())
            .unwrap_or(0);
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            continue;
        }
        if let Ok(m) = std::fs::metadata(format!("/proc/{ppid}/fd/{n}")) {
            out.push((m.dev(), m.ino()));
        }
    }
    out
}

/// The descriptors' records, and the JSON of those inherited from the launcher that a restart will not
/// restore (see [`ckpt_image::ForeignFds`]).
fn descriptors(snap: &crate::Snapshot) -> Result<(Vec<FdRecord>, Vec<serde_json::Value>), Failure> {
    use ckpt_image::ForeignFds;
    let shared_with_parent = parent_write_files(snap.ppid);
    let policy = crate::foreign_fds_policy();
    let mut fds: Vec<FdRecord> = Vec::new();
    let mut foreign = Vec::new();
    for s in &snap.fds[..snap.nfds] {
        // A second descriptor of one open file description: a duplicate of the first (same kind, path,
        // status flags, offset), with its own close-on-exec flag.
        if s.leader >= 0
            && let Some(first) = fds.iter().find(|f| f.fd == s.leader)
        {
            let record = FdRecord {
                fd: s.fd,
                cloexec: s.fdflags & libc::FD_CLOEXEC != 0,
                dup_of: Some(first.fd),
                ..first.clone()
            };
            if matches!(record.kind, FdKind::ForeignNull | FdKind::ForeignClosed) {
                foreign.push(serde_json::json!({"fd": s.fd, "was": lossy(&record.path), "same_as": first.fd}));
            }
            fds.push(record);
            continue;
        }
        let link = std::fs::read_link(format!("/proc/self/fd/{}", s.fd)).unwrap_or_default();
        let mut path = link.as_os_str().as_bytes().to_vec();
        let name = lossy(&path);
        let kind = match proc_path(&path, snap.pid, s.fd) {
            Ok(Some(own)) => {
                path = own;
                Ok(FdKind::ProcFile)
            }
            Ok(None) => fd_kind(snap, s, &path),
            Err(why) => Err(why),
        };
        let kind = match kind {
            Ok(kind) => kind,
            Err(Unrestorable::Never(why)) => return Err(Failure::Refused(why)),
            // Inherited from the launcher (open at start, same file) and not restorable: the setting decides.
            Err(Unrestorable::Unless(why)) if s.fd > 2 && crate::inherited_at_start(s.fd, s.dev, s.ino) => {
                let kind = match policy {
                    ForeignFds::DevNull => FdKind::ForeignNull,
                    ForeignFds::Close => FdKind::ForeignClosed,
                    ForeignFds::Refuse => {
                        return Err(Failure::Refused(format!(
                            "{why}; it was inherited from the launcher (open when the program started) and \
                             {}=refuse (devnull or close restore such descriptors as /dev/null or closed)",
                            ckpt_image::FOREIGN_FDS_VAR
                        )));
                    }
                };
                foreign.push(serde_json::json!({"fd": s.fd, "was": name, "restored_as": match kind {
                    FdKind::ForeignNull => "/dev/null",
                    _ => "closed",
                }}));
                kind
            }
            Err(Unrestorable::Unless(why)) => return Err(Failure::Refused(why)),
        };
        let foreign_kind = matches!(kind, FdKind::ForeignNull | FdKind::ForeignClosed);
        fds.push(FdRecord {
            fd: s.fd,
            kind,
            path,
            flags: s.flags,
            cloexec: s.fdflags & libc::FD_CLOEXEC != 0,
            offset: s.offset,
            size: if foreign_kind { 0 } else { s.size },
            shared: kind == FdKind::Regular && shared_with_parent.contains(&(s.dev, s.ino)),
            identity: (kind == FdKind::Regular).then_some(FileIdentity {
                dev: s.dev,
                ino: s.ino,
                size: s.size,
                mtime_ns: s.mtime_ns,
            }),
            dup_of: None,
        });
    }
    Ok((fds, foreign))
}

/// A descriptor on procfs, as the restored process must reopen it: `/proc/<pid>/...` of the program
/// itself becomes `/proc/self/...` (`/proc/<pid>/task/<pid>/...`: `/proc/thread-self/...`), other `/proc`
/// files (`/proc/meminfo`) keep their path. `None`: not under `/proc`. Another process's entry cannot be
/// reached from a restart: refused.
fn proc_path(path: &[u8], pid: i32, fd: i32) -> Result<Option<Vec<u8>>, Unrestorable> {
    let Some(rest) = path.strip_prefix(b"/proc/") else { return Ok(None) };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || !(rest.len() == digits || rest[digits] == b'/') {
        return Ok(Some(path.to_vec())); // /proc/meminfo, /proc/sys/...
    }
    let own = pid.to_string();
    let name = lossy(path);
    if &rest[..digits] != own.as_bytes() {
        return Err(Unrestorable::Unless(format!(
            "fd {fd} is {name}, an entry of another process: a restart cannot reach that process"
        )));
    }
    let after = &rest[digits..]; // "" or "/..."
    let task = format!("/task/{own}");
    let mut out = Vec::with_capacity(path.len());
    if let Some(t) = after.strip_prefix(task.as_bytes()).filter(|t| t.is_empty() || t[0] == b'/') {
        out.extend_from_slice(b"/proc/thread-self");
        out.extend_from_slice(t);
    } else if after.starts_with(b"/task/") {
        // Another thread's entry: the restart recreates that thread under another id, after the
        // descriptors are reopened (a program reading another thread's name holds one for an instant).
        return Err(Unrestorable::Unless(format!(
            "fd {fd} is {name}, an entry of another thread, whose id changes at restart: this version does not \
             reopen it"
        )));
    } else {
        out.extend_from_slice(b"/proc/self");
        out.extend_from_slice(after);
    }
    Ok(Some(out))
}

/// Why a descriptor cannot be restored.
enum Unrestorable {
    /// Never (a deleted file: data the restart cannot reach).
    Never(String),
    /// Not by itself; when it was inherited from the launcher, `CKPT_SHIM_FOREIGN_FDS` applies.
    Unless(String),
}

/// What descriptor `s` (the first of its open file description) is, or why it cannot be restored.
fn fd_kind(snap: &crate::Snapshot, s: &crate::FdSnap, path: &[u8]) -> Result<FdKind, Unrestorable> {
    let name = lossy(path);
    let fmt = s.mode & libc::S_IFMT;
    // SAFETY: isatty only queries the descriptor (this copy of the program's).
    let tty = fmt == libc::S_IFCHR && unsafe { libc::isatty(s.fd) } == 1;
    Ok(match fmt {
        libc::S_IFREG => {
            if path.ends_with(b" (deleted)") {
                return Err(Unrestorable::Never(format!("fd {} is a deleted file {name:?}", s.fd)));
            }
            FdKind::Regular
        }
        libc::S_IFDIR => FdKind::Directory,
        libc::S_IFCHR if s.fd <= 2 && (path.starts_with(b"/dev/pts/") || path == b"/dev/tty") => FdKind::Inherited,
        // A pseudo-terminal master: reopening /dev/ptmx makes a new terminal, not this one.
        libc::S_IFCHR if path == b"/dev/ptmx" || path.starts_with(b"/dev/pts/ptmx") => {
            return Err(Unrestorable::Unless(format!(
                "fd {} is a pseudo-terminal master ({name}): reopening it would make a new terminal",
                s.fd
            )));
        }
        // A terminal above stderr: reopening it by name could reach another session's terminal.
        libc::S_IFCHR if tty => {
            return Err(Unrestorable::Unless(format!("fd {} is a terminal ({name})", s.fd)));
        }
        libc::S_IFCHR => FdKind::CharDevice,
        // In a process tree every pipe is the tree's (recreated with its bytes, or the restart command's).
        // (The root's own pipes inherited from its launcher above stderr follow CKPT_SHIM_FOREIGN_FDS, as
        // without a tree, and so do the members' copies of them.)
        // Named FIFOs are not: they are reopened or refused as without a tree.
        libc::S_IFIFO
            if snap.tree
                && path.starts_with(b"pipe:[")
                && (snap.member || s.fd <= 2 || !crate::inherited_at_start(s.fd, s.dev, s.ino)) =>
        {
            FdKind::TreePipe
        }
        libc::S_IFIFO if s.fd <= 2 => FdKind::Inherited,
        libc::S_IFIFO => {
            // A pipe both of whose ends this process holds (a self-pipe, as xz uses) can be recreated,
            // when it is empty; a pipe to another process cannot.
            let both =
                snap.fds[..snap.nfds].iter().filter(|o| o.mode & libc::S_IFMT == libc::S_IFIFO && o.ino == s.ino);
            let (mut r, mut w) = (false, false);
            for o in both {
                match o.flags & libc::O_ACCMODE {
                    libc::O_RDONLY => r = true,
                    libc::O_WRONLY => w = true,
                    _ => {}
                }
            }
            if !(r && w) {
                return Err(Unrestorable::Unless(format!(
                    "fd {} is a pipe to another process ({name}); only stdin/stdout/stderr may be pipes",
                    s.fd
                )));
            }
            let mut pending: libc::c_int = 0;
            // SAFETY: FIONREAD writes an int; the descriptor is this process's.
            unsafe { libc::ioctl(s.fd, libc::FIONREAD, &mut pending) };
            if pending != 0 {
                return Err(Unrestorable::Unless(format!("fd {} is a pipe holding {pending} unread bytes", s.fd)));
            }
            if s.flags & libc::O_ACCMODE == libc::O_RDONLY { FdKind::PipeRead } else { FdKind::PipeWrite }
        }
        libc::S_IFSOCK => return Err(Unrestorable::Unless(format!("fd {} is a socket ({name})", s.fd))),
        _ => {
            return Err(Unrestorable::Unless(format!("fd {} is of a kind this version cannot restore ({name})", s.fd)));
        }
    })
}

fn c_string(p: usize) -> Vec<u8> {
    // SAFETY: argv/envp strings of the initial stack are NUL-terminated and still mapped.
    unsafe { std::ffi::CStr::from_ptr(p as *const std::ffi::c_char) }.to_bytes().to_vec()
}

fn rlimit_stack() -> (u64, u64) {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is writable.
    unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut rl) };
    (rl.rlim_cur, rl.rlim_max)
}

/// Every resource limit of the program (the writer's are the program's: inherited at the fork).
/// The program's own POSIX timers (`timer_create`; `/proc/<pid>/timers`, the shim's interval and deadline
/// timers left out): a restart would drop them silently (no more timer signals), so the checkpoint is
/// refused while the program has one. `None` where the kernel does not show them
/// (CONFIG_CHECKPOINT_RESTORE off).
fn program_timers(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers")).ok()?;
    let ours = [crate::INTERVAL_TIMER.load(Ordering::Relaxed), crate::DEADLINE_TIMER.load(Ordering::Relaxed)];
    let ids: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ID:")?.trim().parse::<i64>().ok())
        .filter(|id| !ours.contains(id))
        .collect();
    if ids.is_empty() {
        return None;
    }
    Some(format!(
        "the program has {} POSIX timer(s) (timer_create; ids {ids:?}); this version does not restore them",
        ids.len()
    ))
}

/// The file locks the program holds (`/proc/locks`: `flock` and POSIX record locks of its pid), each on a
/// descriptor of its file. Refused: a lock on a file the program has no descriptor of (a POSIX lock left
/// on a file whose descriptors were closed cannot exist; a `flock` lock can, through a descriptor that was
/// passed on), and open-file-description locks (`F_OFD_SETLK`) on one of its files (/proc/locks does not
/// say whose they are).
fn file_locks(snap: &crate::Snapshot, fds: &[FdRecord], pid: i32) -> Result<Vec<FileLock>, Failure> {
    let Ok(text) = std::fs::read_to_string("/proc/locks") else { return Ok(Vec::new()) };
    let snaps = &snap.fds[..snap.nfds];
    // A descriptor (the first of its open file description) of the file `dev:ino`.
    let fd_of = |major: u32, minor: u32, ino: u64| {
        snaps.iter().find(|s| {
            s.ino == ino
                && libc::major(s.dev) == major
                && libc::minor(s.dev) == minor
                && s.leader < 0
                && fds.iter().any(|f| f.fd == s.fd && f.kind == FdKind::Regular)
        })
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters have "->" after the number.
        if f.len() < 8 || f[1] == "->" {
            continue;
        }
        let (kind, write, owner, file, start, end) = (f[1], f[3] == "WRITE", f[4], f[5], f[6], f[7]);
        let mut parts = file.split(':');
        let (Some(ma), Some(mi), Some(ino)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (Ok(major), Ok(minor), Ok(ino)) =
            (u32::from_str_radix(ma, 16), u32::from_str_radix(mi, 16), ino.parse::<u64>())
        else {
            continue;
        };
        let ours = owner.parse::<i32>().is_ok_and(|p| p == pid);
        match kind {
            "OFDLCK" if fd_of(major, minor, ino).is_some() => {
                return Err(Failure::Refused(format!(
                    "a file of the program has an open-file-description lock (F_OFD_SETLK, {file}): this version \
                     does not restore those"
                )));
            }
            "FLOCK" | "POSIX" if ours => {
                let Some(s) = fd_of(major, minor, ino) else {
                    return Err(Failure::Refused(format!(
                        "the program holds a {kind} lock on a file it has no open descriptor of ({file})"
                    )));
                };
                let start: u64 = start.parse().unwrap_or(0);
                let len = if end == "EOF" { 0 } else { end.parse::<u64>().unwrap_or(start).saturating_sub(start) + 1 };
                out.push(FileLock { fd: s.fd, posix: kind == "POSIX", write, start, len });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The signals pending for the program (process-wide and per thread, `/proc/<pid>/status` and its
/// tasks'), to be raised again after a restart. Left out: the shim's reserved signals and the checkpoint
/// requests (a second SIGTERM from Slurm pending while the first one's checkpoint is taken must not end
/// the restarted job). A pending real-time signal is refused: its queued values cannot be carried over.
fn pending_signals(pid: i32) -> Result<PendingSignals, Failure> {
    let mask_of = |path: String, key: &str| -> u64 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0)
    };
    let mut skip = crate::RESERVED_MASK;
    for (sig, mode) in crate::SIGNAL_MODE.iter().enumerate().skip(1) {
        if mode.load(Ordering::Relaxed) != 0 {
            skip |= 1 << (sig - 1);
        }
    }
    let check = |mask: u64| -> Result<u64, Failure> {
        let mask = mask & !skip;
        let rt = mask >> 31;
        if rt != 0 {
            let sig = rt.trailing_zeros() + 32;
            return Err(Failure::Refused(format!(
                "real-time signal {sig} is pending (its queued values cannot be carried over to a restart); \
                 the next checkpoint may find it delivered"
            )));
        }
        Ok(mask)
    };
    let mut out =
        PendingSignals { shared: check(mask_of(format!("/proc/{pid}/status"), "ShdPnd:"))?, threads: Vec::new() };
    let mut names = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let path = format!("/proc/{pid}/task\0");
    crate::for_each_dir_entry(path.as_bytes(), &mut buf, |n| names.push(String::from_utf8_lossy(n).into_owned()));
    for name in names {
        let Ok(tid) = name.parse::<i32>() else { continue };
        let mask = check(mask_of(format!("/proc/{pid}/task/{tid}/status"), "SigPnd:"))?;
        if mask != 0 {
            out.threads.push((tid, mask));
        }
    }
    Ok(out)
}

/// The address ranges mapped with `MAP_NORESERVE` (`nr` in smaps' `VmFlags`).
fn noreserve_ranges() -> Vec<(u64, u64)> {
    let Ok(text) = std::fs::read("/proc/self/smaps") else { return Vec::new() };
    let mut out = Vec::new();
    let mut current = None;
    for line in text.split(|&b| b == b'\n') {
        if let Some(flags) = line.strip_prefix(b"VmFlags:") {
            if let Some(r) = current
                && flags.split(|&b| b == b' ').any(|f| f == b"nr")
            {
                out.push(r);
            }
        } else if line.first().is_some_and(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)) {
            let range = line.split(|&b| b == b' ').next().unwrap_or(&[]);
            let mut it = range.split(|&b| b == b'-');
            let hex = |b: Option<&[u8]>| {
                std::str::from_utf8(b.unwrap_or(&[])).ok().and_then(|t| u64::from_str_radix(t, 16).ok())
            };
            current = match (hex(it.next()), hex(it.next())) {
                (Some(a), Some(b)) if a < b => Some((a, b)),
                _ => None,
            };
        }
    }
    out
}

/// The page ranges (indices from `start`, end exclusive) of `start..end` that have present or swapped
/// pages, from the kernel's `PAGEMAP_SCAN` (Linux 6.7), which skips unpopulated page tables; `None` where it
/// is not available.
fn populated(pagemap: &std::fs::File, start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    const PAGEMAP_SCAN: u64 = 0xc060_6610; // _IOWR('f', 16, struct pm_scan_arg)
    const PAGE_IS_PRESENT: u64 = 1 << 3;
    const PAGE_IS_SWAPPED: u64 = 1 << 4;
    #[repr(C)]
    struct ScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    let mut regions = [[0u64; 3]; 256];
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let mut arg = ScanArg {
            size: std::mem::size_of::<ScanArg>() as u64,
            flags: 0,
            start: at,
            end,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: 0,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        };
        // SAFETY: `arg` and the `regions` it points to are writable and as large as it says.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg as *mut ScanArg) };
        if n < 0 || arg.walk_end <= at || arg.walk_end > end {
            return None;
        }
        for r in &regions[..n as usize] {
            if r[0] < r[1] && r[0] >= start && r[1] <= end {
                out.push(((r[0] - start) / 4096, (r[1] - start).div_ceil(4096)));
            }
        }
        at = arg.walk_end;
    }
    Some(out)
}

fn resource_limits() -> Vec<ResourceLimit> {
    // RLIMIT_CPU (0) to RLIMIT_RTTIME (15): every limit Linux has had since 2.6.25.
    (0..16u32)
        .filter_map(|resource| {
            let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: `rl` is writable.
            (unsafe { libc::getrlimit(resource as _, &mut rl) } == 0).then_some(ResourceLimit {
                resource,
                soft: rl.rlim_cur,
                hard: rl.rlim_max,
            })
        })
        .collect()
}

fn sigactions() -> Vec<KernelSigaction> {
    let mut out = Vec::new();
    for signo in 1..=64 {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        let mut ka = [0u64; 4];
        // SAFETY: queries the kernel's action into a kernel_sigaction-sized buffer.
        let r = unsafe { syscall6(SYS_rt_sigaction, signo as usize, 0, ka.as_mut_ptr() as usize, 8, 0, 0) };
        if r == 0 {
            out.push(KernelSigaction { signo, handler: ka[0], flags: ka[1], restorer: ka[2], mask: ka[3] });
        }
    }
    out
}

fn registration_base() -> Option<PathBuf> {
    // SAFETY: the writer reads its own copy.
    let path = unsafe { &*crate::REG_PATH.get() };
    let n = path.iter().position(|&b| b == 0)?;
    (n > 0).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&path[..n])))
}

/// A pending `ckpt create --image-dir` request for this process.
fn take_request() -> Option<PathBuf> {
    ckpt_image::control::take_request(&registration_base()?)
}

/// Answers a waiting `ckpt create` (the root's writer only: a member's answers nobody).
fn reply(answer: ckpt_image::control::Answer) {
    // SAFETY: the writer reads its own copy of the snapshot.
    if unsafe { (*SNAPSHOT.get()).member } {
        return;
    }
    if let Some(base) = registration_base() {
        ckpt_image::control::reply(&base, &answer);
    }
}
