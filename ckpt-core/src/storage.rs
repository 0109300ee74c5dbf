//! The I/O seam: every file-system call the library makes goes through [`Storage`].
//!
//! [`FileStorage`] is the real thing. [`MemStorage`] is an in-memory model that remembers, separately,
//! what was only written and what was made durable (file contents by `sync`, directory entries by
//! `sync_dir`), so tests can build the image a power cut would leave at any instant
//! ([`MemStorage::crash_image`]). [`FaultStorage`] wraps any storage and fails the Nth operation with a
//! chosen errno, for fault-injection tests against a reference model.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// A read-only view of a whole file's bytes (a memory map, or a buffer for in-memory storage).
pub type MappedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    /// The file name.
    pub name: OsString,
    /// Whether the entry is a regular file (symlinks are not followed and count as not regular).
    pub is_file: bool,
    /// Length in bytes (0 for non-files).
    pub len: u64,
    /// Last modification time, when known.
    pub modified: Option<SystemTime>,
}

/// A file being written: sequential writes, then `sync`.
pub trait StorageWriter: Send {
    /// Appends all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
}

/// A file open for reading.
pub trait StorageReader: Send + Sync {
    /// The file's length when it was opened.
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; an early end of file is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Maps the whole file read-only, or `Ok(None)` when this storage cannot map.
    fn map(&self) -> io::Result<Option<MappedBytes>>;
}

/// The file-system operations the library needs. Paths are absolute or relative to the process's cwd.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates a new file exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`) with permission bits `mode`.
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<Box<dyn StorageWriter>>;
    /// Opens an existing file for reading, without following a symlink at the last component.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageReader>>;
    /// Atomically renames `from` over `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Creates `link` as a new name of `original`; fails with `AlreadyExists` when `link` exists.
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()>;
    /// Removes a file name.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Lists a directory.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>>;
    /// Creates a directory and its parents (mode 0700 for new ones unless the umask says less).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether any entry (file, directory, symlink: not followed) has this name.
    fn exists(&self, path: &Path) -> io::Result<bool> {
        match self.open(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            // A symlink (O_NOFOLLOW), a directory, a file we may not read: the name is taken.
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EACCES))
                    || e.kind() == io::ErrorKind::InvalidInput =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The real file system.

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileStorage;

/// Write-behind (buffered writes only): once this many bytes are written past the last hint, their
/// writeback is started.
const WRITE_BEHIND_CHUNK: u64 = 8 << 20;
/// Write-behind keeps at most this many bytes under writeback and not yet waited for.
const WRITE_BEHIND_WINDOW: u64 = 32 << 20;
/// A single write of at least this many bytes switches the file to direct I/O.
const DIRECT_MIN_WRITE: usize = 1 << 20;
/// File offsets and buffer addresses of direct writes are multiples of this (the largest logical block size
/// of common devices; `statx` reports 512 on these machines' virtio disks).
const DIRECT_ALIGN: usize = 4096;
/// The aligned staging buffer of direct writes.
const DIRECT_STAGE: usize = 8 << 20;

/// Whether large checkpoint writes bypass the page cache: `CKPT_DIRECT_IO` (default on; `0`/`off`
/// selects buffered writes). [`crate::Config::from_env`] rejects malformed values; here they mean on.
fn direct_io_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var("CKPT_DIRECT_IO").ok().and_then(|v| crate::config::parse_bool(v.trim())).unwrap_or(true)
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Staging buffers are kept for the next save: a fresh 8 MiB buffer costs page faults (and, on these VMs,
/// host faults for memory handed back while idle) that a reused one does not.
static STAGING_POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An 8 MiB buffer whose `DIRECT_STAGE`-byte window starting at `start` is `DIRECT_ALIGN`-aligned.
struct Staging {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Staging {
    fn take() -> Staging {
        let buf = lock(&STAGING_POOL).pop().unwrap_or_else(|| vec![0u8; DIRECT_STAGE + DIRECT_ALIGN]);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        Staging { buf, start, len: 0 }
    }
    fn filled(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
    /// Copies as much of `data` as fits; returns how much.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(DIRECT_STAGE - self.len);
        let at = self.start + self.len;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let mut pool = lock(&STAGING_POOL);
        if pool.len() < 2 {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// How a [`FileWriter`] currently writes.
enum WriteMode {
    /// Through the page cache, with write-behind.
    Buffered,
    /// `O_DIRECT` through an aligned staging buffer; the file offset is a multiple of `DIRECT_ALIGN`.
    Direct(Staging),
}

/// Writes a checkpoint file. Small files go through the page cache. The first large write (a raw section's
/// chunk, a full coalescing buffer) switches the file to direct I/O: the data goes to the device from an
/// aligned staging buffer (or straight from the caller's buffer when that is aligned), which on these
/// machines runs at the device's speed whatever the state of the page cache, where buffered writes need
/// fresh page-cache pages (2-4x slower when that memory sat idle and was handed back to the host) and
/// then a writeback. It also leaves the application's page cache alone, instead of filling it with a
/// checkpoint nobody reads until a restart. The unaligned tail is written through the page cache before the
/// fsync. File systems that refuse direct I/O get buffered writes with write-behind.
struct FileWriter {
    file: File,
    mode: WriteMode,
    /// Bytes written so far.
    written: u64,
    /// Write-behind: writeback was started for `[0, started)`.
    started: u64,
    /// Write-behind: writeback was waited for on `[0, waited)`.
    waited: u64,
    /// Cleared when the file system does not support writeback ranges.
    write_behind: bool,
    /// Cleared when the file system refuses `O_DIRECT`.
    direct_possible: bool,
    /// Bytes that went to the device with `O_DIRECT`.
    direct_bytes: u64,
}

impl FileWriter {
    fn new(file: File) -> FileWriter {
        FileWriter {
            file,
            mode: WriteMode::Buffered,
            written: 0,
            started: 0,
            waited: 0,
            write_behind: true,
            direct_possible: direct_io_enabled(),
            direct_bytes: 0,
        }
    }

    /// Turns `O_DIRECT` on or off for the descriptor; `Ok(false)` when the file system refuses it.
    #[cfg(target_os = "linux")]
    fn set_direct(&mut self, on: bool) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this writer owns; F_GETFL/F_SETFL take and return plain integers.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            let err = io::Error::last_os_error();
            return if on && err.raw_os_error() == Some(libc::EINVAL) { Ok(false) } else { Err(err) };
        }
        Ok(true)
    }

    #[cfg(not(target_os = "linux"))]
    fn set_direct(&mut self, _on: bool) -> io::Result<bool> {
        Ok(false)
    }

    /// Leaves direct mode: the staged bytes (not a multiple of the alignment at the end of a file, or
    /// refused by the device) are written through the page cache from here on.
    fn leave_direct(&mut self) -> io::Result<()> {
        if let WriteMode::Direct(staging) = std::mem::replace(&mut self.mode, WriteMode::Buffered) {
            let staged = staging.filled();
            let whole = staged.len() - staged.len() % DIRECT_ALIGN;
            if self.direct_possible {
                self.write_direct(&staged[..whole])?;
            } else {
                self.file.write_all(&staged[..whole])?;
            }
            self.set_direct(false)?;
            self.file.write_all(&staged[whole..])?;
            // Write-behind covers only what is written through the page cache from here on.
            self.started = self.written;
            self.waited = self.written;
        }
        Ok(())
    }

    /// Writes `data` (a multiple of `DIRECT_ALIGN` bytes from an aligned address) with `O_DIRECT`. When the
    /// device refuses the alignment (EINVAL), the rest goes through the page cache and the file stays
    /// buffered.
    fn write_direct(&mut self, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < data.len() {
            match self.file.write(&data[done..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    done += n;
                    self.direct_bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct_possible = false;
                    self.set_direct(false)?;
                    return self.file.write_all(&data[done..]);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The direct path of `write_all`.
    fn write_all_direct(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let WriteMode::Direct(staging) = &mut self.mode else {
                return self.file.write_all(buf);
            };
            // An aligned caller buffer at an aligned offset goes to the device without a copy.
            if staging.len == 0 && buf.as_ptr().align_offset(DIRECT_ALIGN) == 0 && buf.len() >= DIRECT_ALIGN {
                let whole = buf.len() - buf.len() % DIRECT_ALIGN;
                self.write_direct(&buf[..whole])?;
                buf = &buf[whole..];
                if !self.direct_possible {
                    self.leave_direct()?;
                }
                continue;
            }
            let n = staging.fill(buf);
            buf = &buf[n..];
            if staging.len == DIRECT_STAGE {
                let WriteMode::Direct(mut staging) = std::mem::replace(&mut self.mode, WriteMode::Buffered) else {
                    unreachable!("checked above")
                };
                let result = self.write_direct(staging.filled());
                staging.len = 0;
                self.mode = WriteMode::Direct(staging);
                result?;
                if !self.direct_possible {
                    self.leave_direct()?;
                }
            }
        }
        Ok(())
    }

    /// Switches to direct I/O for a large write, if the file system allows it. The bytes up to the next
    /// aligned offset are written through the page cache first; returns the rest of `buf`.
    fn enter_direct<'a>(&mut self, buf: &'a [u8]) -> io::Result<&'a [u8]> {
        let head = (DIRECT_ALIGN - (self.written % DIRECT_ALIGN as u64) as usize) % DIRECT_ALIGN;
        let head = head.min(buf.len());
        self.file.write_all(&buf[..head])?;
        if self.set_direct(true)? {
            self.mode = WriteMode::Direct(Staging::take());
        } else {
            self.direct_possible = false;
        }
        Ok(&buf[head..])
    }

    /// Starts writeback of the data written since the last call, chunk by chunk, and waits for the data a
    /// window behind it, so that the final fsync finds most of a buffered file already on its way to the
    /// disk and the dirty page cache a save leaves is bounded. `sync_file_range` is only a hint for
    /// durability (the fsync in `sync` makes the file durable) but its errors are real: waiting consumes a
    /// writeback error that a later fsync on this descriptor would no longer report, so they are returned.
    #[cfg(target_os = "linux")]
    fn write_behind(&mut self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if !self.write_behind {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        while self.written - self.started >= WRITE_BEHIND_CHUNK {
            // SAFETY: plain syscall on a descriptor this writer owns; no memory is passed.
            let rc = unsafe {
                libc::sync_file_range(
                    fd,
                    self.started as libc::off64_t,
                    WRITE_BEHIND_CHUNK as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            if rc != 0 {
                return self.write_behind_failed();
            }
            self.started += WRITE_BEHIND_CHUNK;
        }
        while self.started - self.waited > WRITE_BEHIND_WINDOW {
            // SAFETY: as above.
            let rc = unsafe {
                libc::sync_file_range(
                    fd,
                    self.waited as libc::off64_t,
                    WRITE_BEHIND_CHUNK as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )
            };
            if rc != 0 {
                return self.write_behind_failed();
            }
            self.waited += WRITE_BEHIND_CHUNK;
        }
        Ok(())
    }

    /// File systems without writeback ranges (ENOSYS, EINVAL, ESPIPE) turn write-behind off for this file;
    /// anything else (EIO, ENOSPC) is the write's error.
    #[cfg(target_os = "linux")]
    fn write_behind_failed(&mut self) -> io::Result<()> {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::ESPIPE | libc::EOPNOTSUPP) => {
                self.write_behind = false;
                Ok(())
            }
            _ => Err(err),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn write_behind(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StorageWriter for FileWriter {
    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let len = buf.len() as u64;
        if matches!(self.mode, WriteMode::Buffered) && self.direct_possible && buf.len() >= DIRECT_MIN_WRITE {
            buf = self.enter_direct(buf)?;
        }
        match self.mode {
            WriteMode::Direct(_) => self.write_all_direct(buf)?,
            WriteMode::Buffered => self.file.write_all(buf)?,
        }
        self.written = self.written.saturating_add(len);
        if matches!(self.mode, WriteMode::Buffered) {
            self.write_behind()?;
        }
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.leave_direct()?;
        self.file.sync_all()
    }
}

struct FileReader {
    file: File,
    len: u64,
}

impl StorageReader for FileReader {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn map(&self) -> io::Result<Option<MappedBytes>> {
        if self.len == 0 {
            return Ok(Some(Arc::new(Vec::new())));
        }
        // SAFETY: the library maps only files that were complete when opened: checkpoint files are written
        // under a temporary name and renamed into place after fsync, and no writer of ours ever modifies a
        // file after the rename. Another program truncating the file while it is mapped would make reads
        // fault (SIGBUS); that is documented, and `CKPT_MMAP=0` selects plain reads instead.
        let map = unsafe { memmap2::MmapOptions::new().len(self.len as usize).map(&self.file)? };
        Ok(Some(Arc::new(map)))
    }
}

impl Storage for FileStorage {
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<Box<dyn StorageWriter>> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Box::new(FileWriter::new(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageReader>> {
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        Ok(Box::new(FileReader { file, len: meta.len() }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        fs::hard_link(original, link)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        File::open(dir)?.sync_all()
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            // symlink_metadata: a planted symlink is reported as not a file and never followed.
            let meta = match fs::symlink_metadata(entry.path()) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
                Err(e) => return Err(e),
            };
            out.push(DirEntry {
                name: entry.file_name(),
                is_file: meta.is_file(),
                len: if meta.is_file() { meta.len() } else { 0 },
                modified: meta.modified().ok(),
            });
        }
        Ok(out)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if dir.as_os_str().is_empty() {
            return Ok(());
        }
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir(dir)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        match fs::symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The in-memory crash model.

/// Which bytes a simulated power cut keeps, for [`MemStorage::crash_image`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Only what was made durable: file contents as of their last `sync`, directory entries as of their
    /// directory's last `sync_dir`.
    DurableOnly,
    /// Every directory operation reached the disk but file contents only as of their last `sync` (the
    /// classic "renamed file full of zeros" case, when a writer forgot to fsync before renaming).
    EntriesWithoutData,
    /// Everything written reached the disk (a crash of the process, not of the machine).
    Everything,
    /// Directory entries as written, and every file's unsynced tail torn: only the first half of the
    /// bytes written since its last `sync` survive.
    Torn,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
struct MemState {
    inodes: Vec<Inode>,
    /// Directory path -> (name -> inode) as the running process sees it.
    live: BTreeMap<PathBuf, BTreeMap<OsString, usize>>,
    /// The same, as of each directory's last `sync_dir`.
    durable: BTreeMap<PathBuf, BTreeMap<OsString, usize>>,
    /// Mutating operations performed so far.
    ops: u64,
    /// After this many mutating operations, every further operation fails (the process "died").
    stop_after: Option<u64>,
}

/// An in-memory file system that models durability; see [`CrashMode`].
///
/// Directories exist once created (creation itself is treated as durable). Cloning a `MemStorage` shares
/// its state.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((normalize_dir(&parent), name.to_os_string()))
}

fn normalize_dir(dir: &Path) -> PathBuf {
    if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir.to_path_buf() }
}

fn dead() -> io::Error {
    io::Error::other("simulated crash: the process is gone")
}

impl MemStorage {
    /// An empty file system with the current directory (`.`) present.
    pub fn new() -> MemStorage {
        let s = MemStorage::default();
        s.create_dir_all(Path::new(".")).expect("fresh storage");
        s
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The number of mutating operations (create, write, sync, rename, link, remove, sync_dir) so far.
    pub fn op_count(&self) -> u64 {
        self.lock().ops
    }

    /// Makes every mutating operation after the first `n` (counted from storage creation) fail, as if the
    /// process had been killed at that instant.
    pub fn stop_after(&self, n: u64) {
        self.lock().stop_after = Some(n);
    }

    /// The file system a power cut (or a process crash, for [`CrashMode::Everything`]) would leave now.
    pub fn crash_image(&self, mode: CrashMode) -> MemStorage {
        let st = self.lock();
        let entries = match mode {
            CrashMode::DurableOnly => st.durable.clone(),
            _ => st.live.clone(),
        };
        let mut dirs = entries;
        for dir in st.live.keys() {
            dirs.entry(dir.clone()).or_default();
        }
        let inodes = st
            .inodes
            .iter()
            .map(|ino| {
                let bytes = match mode {
                    CrashMode::DurableOnly | CrashMode::EntriesWithoutData => ino.durable.clone(),
                    CrashMode::Everything => ino.live.clone(),
                    CrashMode::Torn => {
                        if ino.live.starts_with(&ino.durable) {
                            let extra = ino.live.len() - ino.durable.len();
                            ino.live[..ino.durable.len() + extra / 2].to_vec()
                        } else {
                            ino.durable.clone()
                        }
                    }
                };
                Inode { live: bytes.clone(), durable: bytes }
            })
            .collect();
        let state = MemState { inodes, live: dirs.clone(), durable: dirs, ops: 0, stop_after: None };
        MemStorage { state: Arc::new(Mutex::new(state)) }
    }

    /// The live contents of a file (for tests that tamper with bytes).
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.lock();
        let ino = lookup(&st, path)?;
        Ok(st.inodes[ino].live.clone())
    }

    /// Replaces a file's contents, live and durable (for tests that plant damaged files).
    pub fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let (dir, name) = split(path)?;
        let id = st.inodes.len();
        st.inodes.push(Inode { live: bytes.to_vec(), durable: bytes.to_vec() });
        st.live.entry(dir.clone()).or_default().insert(name.clone(), id);
        st.durable.entry(dir).or_default().insert(name, id);
        Ok(())
    }

    /// The names of all files (for assertions).
    pub fn list_files(&self) -> Vec<PathBuf> {
        let st = self.lock();
        st.live.iter().flat_map(|(d, names)| names.keys().map(move |n| d.join(n))).collect()
    }
}

fn lookup(st: &MemState, path: &Path) -> io::Result<usize> {
    let (dir, name) = split(path)?;
    st.live
        .get(&dir)
        .and_then(|names| names.get(&name))
        .copied()
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

fn begin_op(st: &mut MemState) -> io::Result<()> {
    if let Some(limit) = st.stop_after
        && st.ops >= limit
    {
        return Err(dead());
    }
    st.ops += 1;
    Ok(())
}

struct MemWriter {
    storage: MemStorage,
    inode: usize,
}

impl StorageWriter for MemWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut st = self.storage.lock();
        begin_op(&mut st)?;
        st.inodes[self.inode].live.extend_from_slice(buf);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut st = self.storage.lock();
        begin_op(&mut st)?;
        let ino = &mut st.inodes[self.inode];
        ino.durable = ino.live.clone();
        Ok(())
    }
}

struct MemReader {
    bytes: Arc<Vec<u8>>,
}

impl StorageReader for MemReader {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let end = start.checked_add(buf.len()).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(&self.bytes[start..end]);
        Ok(())
    }
    fn map(&self) -> io::Result<Option<MappedBytes>> {
        Ok(Some(self.bytes.clone()))
    }
}

impl Storage for MemStorage {
    fn create_new(&self, path: &Path, _mode: u32) -> io::Result<Box<dyn StorageWriter>> {
        let mut st = self.lock();
        begin_op(&mut st)?;
        let (dir, name) = split(path)?;
        let id = st.inodes.len();
        let names = st.live.get_mut(&dir).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if names.contains_key(&name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        names.insert(name, id);
        st.inodes.push(Inode::default());
        drop(st);
        Ok(Box::new(MemWriter { storage: self.clone(), inode: id }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageReader>> {
        let st = self.lock();
        if st.stop_after.is_some_and(|l| st.ops >= l) {
            return Err(dead());
        }
        let ino = lookup(&st, path)?;
        Ok(Box::new(MemReader { bytes: Arc::new(st.inodes[ino].live.clone()) }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        begin_op(&mut st)?;
        let ino = lookup(&st, from)?;
        let (fdir, fname) = split(from)?;
        let (tdir, tname) = split(to)?;
        if !st.live.contains_key(&tdir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        st.live.get_mut(&fdir).expect("looked up").remove(&fname);
        st.live.get_mut(&tdir).expect("checked").insert(tname, ino);
        Ok(())
    }

    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        let mut st = self.lock();
        begin_op(&mut st)?;
        let ino = lookup(&st, original)?;
        let (dir, name) = split(link)?;
        let names = st.live.get_mut(&dir).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if names.contains_key(&name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        names.insert(name, ino);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        begin_op(&mut st)?;
        lookup(&st, path)?;
        let (dir, name) = split(path)?;
        st.live.get_mut(&dir).expect("looked up").remove(&name);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        begin_op(&mut st)?;
        let dir = normalize_dir(dir);
        let names = st.live.get(&dir).cloned().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.durable.insert(dir, names);
        Ok(())
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let st = self.lock();
        let dir = normalize_dir(dir);
        let names = st.live.get(&dir).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut out: Vec<DirEntry> = names
            .iter()
            .map(|(name, &ino)| DirEntry {
                name: name.clone(),
                is_file: true,
                len: st.inodes[ino].live.len() as u64,
                modified: None,
            })
            .collect();
        for sub in st.live.keys() {
            if sub.parent().map(normalize_dir).as_deref() == Some(dir.as_path())
                && *sub != dir
                && let Some(name) = sub.file_name()
            {
                out.push(DirEntry { name: name.to_os_string(), is_file: false, len: 0, modified: None });
            }
        }
        Ok(out)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let dir = normalize_dir(dir);
        let mut cur = Some(dir.as_path());
        while let Some(d) = cur {
            if d.as_os_str().is_empty() {
                break;
            }
            st.live.entry(d.to_path_buf()).or_default();
            st.durable.entry(d.to_path_buf()).or_default();
            cur = d.parent();
        }
        Ok(())
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        begin_op(&mut st)?;
        let dir = normalize_dir(dir);
        match st.live.get(&dir) {
            None => return Err(io::Error::from(io::ErrorKind::NotFound)),
            Some(names) if !names.is_empty() => {
                return Err(io::Error::from(io::ErrorKind::DirectoryNotEmpty));
            }
            Some(_) => {}
        }
        st.live.remove(&dir);
        st.durable.remove(&dir);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Fault injection.

/// The operations [`FaultStorage`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `create_new`
    Create,
    /// `open`
    Open,
    /// A `write_all` on a writer.
    Write,
    /// A `sync` on a writer.
    Sync,
    /// `rename`
    Rename,
    /// `hard_link`
    Link,
    /// `remove_file` or `remove_dir`
    Remove,
    /// `sync_dir`
    SyncDir,
    /// `read_dir`
    ReadDir,
    /// A `read_exact_at` or `map` on a reader.
    Read,
    /// `create_dir_all`
    CreateDir,
}

/// Wraps a storage and fails one chosen operation (the Nth, 1-based) with an OS error.
#[derive(Clone, Debug)]
pub struct FaultStorage<S> {
    inner: S,
    counter: Arc<AtomicU64>,
    fail_at: u64,
    errno: i32,
    log: Arc<Mutex<Vec<Op>>>,
}

impl<S: Storage + Clone + 'static> FaultStorage<S> {
    /// Fails operation number `fail_at` (1-based; 0 never fails) with `errno` (for example `libc::EIO`).
    pub fn new(inner: S, fail_at: u64, errno: i32) -> FaultStorage<S> {
        FaultStorage { inner, counter: Arc::new(AtomicU64::new(0)), fail_at, errno, log: Default::default() }
    }

    /// How many operations were attempted.
    pub fn op_count(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    /// The operations attempted, in order.
    pub fn ops(&self) -> Vec<Op> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn tick(&self, op: Op) -> io::Result<()> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push(op);
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_at { Err(io::Error::from_raw_os_error(self.errno)) } else { Ok(()) }
    }
}

struct FaultWriter<S: Storage + Clone + 'static> {
    inner: Box<dyn StorageWriter>,
    storage: FaultStorage<S>,
}

impl<S: Storage + Clone + 'static> StorageWriter for FaultWriter<S> {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.storage.tick(Op::Write)?;
        self.inner.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.storage.tick(Op::Sync)?;
        self.inner.sync()
    }
}

struct FaultReader<S: Storage + Clone + 'static> {
    inner: Box<dyn StorageReader>,
    storage: FaultStorage<S>,
}

impl<S: Storage + Clone + 'static> StorageReader for FaultReader<S> {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.storage.tick(Op::Read)?;
        self.inner.read_exact_at(buf, offset)
    }
    fn map(&self) -> io::Result<Option<MappedBytes>> {
        self.storage.tick(Op::Read)?;
        self.inner.map()
    }
}

impl<S: Storage + Clone + 'static> Storage for FaultStorage<S> {
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<Box<dyn StorageWriter>> {
        self.tick(Op::Create)?;
        let inner = self.inner.create_new(path, mode)?;
        Ok(Box::new(FaultWriter { inner, storage: self.clone() }))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageReader>> {
        self.tick(Op::Open)?;
        let inner = self.inner.open(path)?;
        Ok(Box::new(FaultReader { inner, storage: self.clone() }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.tick(Op::Rename)?;
        self.inner.rename(from, to)
    }
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        self.tick(Op::Link)?;
        self.inner.hard_link(original, link)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.tick(Op::Remove)?;
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.tick(Op::SyncDir)?;
        self.inner.sync_dir(dir)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        self.tick(Op::ReadDir)?;
        self.inner.read_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.tick(Op::CreateDir)?;
        self.inner.create_dir_all(dir)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        self.tick(Op::Remove)?;
        self.inner.remove_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `pattern` as a sequence of writes of the given sizes (each taken at the given misalignment
    /// from an aligned buffer) through a real file, and returns what the file holds.
    fn write_file_in_pieces(direct: bool, pieces: &[(usize, usize)], data: &[u8]) -> (Vec<u8>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenOptions::new().write(true).create_new(true).open(&path).unwrap();
        let mut w = FileWriter::new(file);
        w.direct_possible = direct;
        // An aligned copy of the data, so pieces can start aligned (zero-copy path) or not.
        let mut backing = vec![0u8; data.len() + 2 * DIRECT_ALIGN];
        let base = backing.as_ptr().align_offset(DIRECT_ALIGN);
        let mut at = 0;
        for &(len, skew) in pieces {
            let piece = &data[at..at + len];
            backing[base + skew..base + skew + len].copy_from_slice(piece);
            w.write_all(&backing[base + skew..base + skew + len]).unwrap();
            at += len;
        }
        assert_eq!(at, data.len());
        w.sync().unwrap();
        let direct_bytes = w.direct_bytes;
        drop(w);
        (fs::read(&path).unwrap(), direct_bytes)
    }

    fn direct_io_supported() -> bool {
        let dir = tempfile::tempdir().unwrap();
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.path().join("probe"))
            .is_ok()
    }

    #[test]
    fn file_writer_round_trips_any_mix_of_small_large_aligned_and_unaligned_writes() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..12 {
            let mut pieces = Vec::new();
            let mut total = 0;
            for _ in 0..(3 + case % 5) {
                let len = match next() % 4 {
                    0 => (next() % 5000) as usize,                            // small, coalesced
                    1 => DIRECT_MIN_WRITE + (next() % 10_000) as usize,       // large, odd length
                    2 => DIRECT_STAGE + DIRECT_ALIGN * (next() % 5) as usize, // over a whole stage
                    _ => DIRECT_ALIGN * (1 + (next() % 600) as usize),        // aligned multiple
                };
                let skew = if next() % 2 == 0 { 0 } else { (next() % 4095) as usize + 1 };
                pieces.push((len, skew));
                total += len;
            }
            let data: Vec<u8> = (0..total).map(|_| next() as u8).collect();
            for direct in [true, false] {
                let (got, direct_bytes) = write_file_in_pieces(direct, &pieces, &data);
                assert!(
                    got == data,
                    "case {case} direct {direct}: file differs ({} vs {} bytes)",
                    got.len(),
                    data.len()
                );
                if !direct {
                    assert_eq!(direct_bytes, 0);
                } else if pieces.iter().any(|&(len, _)| len >= DIRECT_MIN_WRITE + DIRECT_ALIGN) {
                    // Direct I/O is on by default; file systems that refuse it (tmpfs before Linux 6.6)
                    // fall back, so this only checks that the direct path really ran where it can.
                    assert!(direct_bytes > 0 || !direct_io_supported(), "case {case}: no byte went direct");
                }
            }
        }
    }

    #[test]
    fn file_writer_returns_staging_buffers_to_a_bounded_pool() {
        let data = vec![7u8; DIRECT_STAGE * 2 + 123];
        for _ in 0..4 {
            assert_eq!(write_file_in_pieces(true, &[(data.len(), 0)], &data).0, data);
        }
        assert!(lock(&STAGING_POOL).len() <= 2);
    }

    #[test]
    fn mem_crash_image_keeps_only_durable() {
        let s = MemStorage::new();
        let mut w = s.create_new(Path::new("./a"), 0o600).unwrap();
        w.write_all(b"hello").unwrap();
        w.sync().unwrap();
        w.write_all(b" world").unwrap();
        // the entry was never made durable
        assert!(s.crash_image(CrashMode::DurableOnly).open(Path::new("./a")).is_err());
        s.sync_dir(Path::new(".")).unwrap();
        let img = s.crash_image(CrashMode::DurableOnly);
        assert_eq!(img.read_file(Path::new("./a")).unwrap(), b"hello");
        assert_eq!(s.crash_image(CrashMode::Everything).read_file(Path::new("./a")).unwrap(), b"hello world");
        assert_eq!(s.crash_image(CrashMode::Torn).read_file(Path::new("./a")).unwrap(), b"hello wo");
    }

    #[test]
    fn fault_storage_fails_the_nth_op() {
        let s = FaultStorage::new(MemStorage::new(), 2, libc::ENOSPC);
        let mut w = s.create_new(Path::new("./a"), 0o600).unwrap();
        let e = w.write_all(b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(s.ops(), vec![Op::Create, Op::Write]);
    }
}
