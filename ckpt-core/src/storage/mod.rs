//! The I/O seam: every file-system call the library makes goes through [`Storage`].
//!
//! [`FileStorage`] is the real thing. With the `testing` feature (this workspace's tests), `MemStorage` is
//! an in-memory model that remembers, separately, what was only written and what was made durable (file
//! contents by `sync`, directory entries by `sync_dir`), so tests can build the image a power cut would
//! leave at any instant (`MemStorage::crash_image`), and `FaultStorage` wraps any storage and fails the
//! Nth operation with a chosen errno, for fault-injection tests against a reference model.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt as _, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

#[cfg(any(test, feature = "testing"))]
mod fault;
mod file_writer;
mod fs;
#[cfg(any(test, feature = "testing"))]
mod mem;

// The test doubles are for this workspace's tests (the `testing` feature), not part of the API.
#[cfg(any(test, feature = "testing"))]
pub use fault::{FaultStorage, Op};
use file_writer::FileWriter;
pub use file_writer::disable_io_threads;
pub(crate) use file_writer::io_threads_allowed;
pub use fs::{FileStorage, wait_for_background_frees};
#[cfg(any(test, feature = "testing"))]
pub use mem::{CrashMode, MemStorage};

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
    ///
    /// # Errors
    ///
    /// The write failed (`ENOSPC`, `EDQUOT`, `EIO`, `EFBIG`...); what was written before may be partial: the
    /// store then removes the temporary file.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (fsync).
    ///
    /// # Errors
    ///
    /// The `fsync` (or a write still in flight) failed: nothing written is known to be durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to the bytes written so far, when it is a reused file (a spare) that was longer:
    /// what `sync` does first, for a caller that reads the file back before its `sync` (the copies to the
    /// checkpoint directory verify it while it is written out). Nothing for a new file.
    ///
    /// # Errors
    ///
    /// The truncation failed (`EIO`...).
    fn cut_to_written(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The bytes written so far and the seconds the writes and the fsync took, whichever thread made
    /// them (computing, compressing and copying not included): the write speed `Compression::Auto`
    /// weighs compression against. `None` when unknown.
    fn device_time(&self) -> Option<(u64, f64)> {
        None
    }
}

/// Who owns an open file and who may write it (from `fstat` of the descriptor read), for the trust checks
/// of [`crate::trust`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOwner {
    /// Owner's user id.
    pub uid: u32,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
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
    ///
    /// # Errors
    ///
    /// `UnexpectedEof` when the file ends before `buf` is full; the operating system's error of the read.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Maps the whole file read-only, or `Ok(None)` when this storage cannot map.
    ///
    /// # Errors
    ///
    /// The `mmap` failed (`ENODEV` on some network file systems, `ENOMEM`); readers fall back to plain reads.
    fn map(&self) -> io::Result<Option<MappedBytes>>;
    /// The open file's owner and mode, `None` for storages without owners (in memory).
    fn owner(&self) -> Option<FileOwner> {
        None
    }
}

/// How a checkpoint file is written: the settings of [`crate::Config`] that reach the storage, passed by
/// the store with every file it creates or takes over ([`Storage::create_new_with`], [`SpareReuse::reuse_spare`]).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits (`CKPT_FILE_MODE`), less the process's umask, as for any new file.
    pub mode: u32,
    /// Whether large writes may bypass the page cache (`CKPT_DIRECT_IO`, [`crate::Config::direct_io`]).
    pub direct_io: bool,
    /// Whether buffered writes keep the page cache they dirty bounded (32 MiB under writeback, waited
    /// for), as saves do so as not to crowd out the application's memory. Off for the copies to the
    /// checkpoint directory (`Store::flush_checkpoint`): writeback is started as the copy goes and the
    /// final fsync waits for all of it, a deep queue of large requests, while the copy is verified from
    /// memory.
    pub bounded_writeback: bool,
    /// Whether buffered writes start writeback as they go (write-behind, `sync_file_range`), so that the
    /// final fsync finds most of the file on its way. Off for the copies to the checkpoint directory
    /// (`Store::flush_checkpoint`): submitting writeback blocks whenever the device's queue is full, which
    /// paced the copy at the device's speed; instead the copy fills the page cache at memory speed and
    /// its fsync, on another thread, writes it all while the copy is verified from memory.
    pub write_behind: bool,
}

impl WriteOptions {
    /// Permission bits `mode`, the other settings at their defaults (direct I/O on, bounded writeback).
    pub fn new(mode: u32) -> WriteOptions {
        WriteOptions { mode, direct_io: true, bounded_writeback: true, write_behind: true }
    }

    /// These options with buffered writes starting writeback as they go or not.
    pub fn write_behind(mut self, on: bool) -> WriteOptions {
        self.write_behind = on;
        self
    }

    /// These options with large writes bypassing the page cache or not.
    pub fn direct_io(mut self, on: bool) -> WriteOptions {
        self.direct_io = on;
        self
    }

    /// These options with the page cache a buffered write dirties bounded or not.
    pub fn bounded_writeback(mut self, on: bool) -> WriteOptions {
        self.bounded_writeback = on;
        self
    }
}

/// The file-system operations the library needs. Paths are absolute or relative to the process's cwd.
///
/// Two kinds of methods. The primitives (required, and `create_new_with`) are one file-system operation
/// each. The shortcuts (provided) give the same results as their defaults, which go through the
/// primitives, with fewer system calls; a storage overrides them only to be faster, and a wrapper that
/// changes a primitive should leave them alone, so that they keep going through its primitive. What a
/// storage may do beyond that (reuse the space of retired checkpoints) is a capability of its own:
/// [`Storage::spare_reuse`].
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates a new file exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`) with permission bits `mode`, the other
    /// write settings at their defaults ([`WriteOptions::new`]).
    ///
    /// # Errors
    ///
    /// `AlreadyExists` when any entry has the name (a symlink included); `NotFound` when the directory does
    /// not exist; `PermissionDenied`; the operating system's other errors.
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<Box<dyn StorageWriter>>;
    /// [`Storage::create_new`] with every write setting: what the store calls. Storages without settings
    /// of their own need not implement it; wrappers of another storage forward it.
    ///
    /// # Errors
    ///
    /// As [`Storage::create_new`].
    fn create_new_with(&self, path: &Path, opts: WriteOptions) -> io::Result<Box<dyn StorageWriter>> {
        self.create_new(path, opts.mode)
    }
    /// Opens an existing file for reading, without following a symlink at the last component.
    ///
    /// # Errors
    ///
    /// `NotFound`; `ELOOP` (raw OS error) for a symlink; `PermissionDenied`; the operating system's other
    /// errors.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageReader>>;
    /// Atomically renames `from` over `to`.
    ///
    /// # Errors
    ///
    /// `NotFound` when `from` does not exist; the operating system's other errors (`to` a directory, `EXDEV`
    /// across file systems); on error neither name changed.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Creates `link` as a new name of `original`; fails with `AlreadyExists` when `link` exists.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` when `link` exists (another writer took the generation); `NotFound`; the operating
    /// system's other errors, among them `EPERM`/`ENOTSUP` on file systems without hard links.
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()>;
    /// Removes a file name.
    ///
    /// # Errors
    ///
    /// `NotFound`; the operating system's other errors.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (fsync of the directory).
    ///
    /// # Errors
    ///
    /// The directory cannot be opened or its `fsync` failed: renames and links in it are not known to be
    /// durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Lists a directory.
    ///
    /// # Errors
    ///
    /// `NotFound` when the directory does not exist; `PermissionDenied`; the operating system's other errors.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>>;
    /// Creates a directory and its parents (mode 0700 for new ones unless the umask says less).
    ///
    /// # Errors
    ///
    /// A component exists and is not a directory, or cannot be created (`PermissionDenied`, `ENOSPC`...).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    ///
    /// # Errors
    ///
    /// `NotFound`; `DirectoryNotEmpty`; the operating system's other errors.
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;

    /// Shortcut of [`Storage::remove_file`] for a name that a directory listing just reported as a
    /// regular file of `len` bytes (old generations): the size is known, so nothing needs to look at the
    /// file first.
    ///
    /// # Errors
    ///
    /// As [`Storage::remove_file`].
    fn remove_listed_file(&self, path: &Path, len: u64) -> io::Result<()> {
        let _ = len;
        self.remove_file(path)
    }
    /// Shortcut of [`Storage::rename`] when `to`, if it exists, is another name of a file that stays
    /// (`<base>`, a hard link of a kept generation): replacing it frees nothing.
    ///
    /// # Errors
    ///
    /// As [`Storage::rename`].
    fn rename_over_other_name(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rename(from, to)
    }
    /// Shortcut of [`Storage::read_dir`]: the names only, without looking at each entry (no `stat` per
    /// name), for directories that hold one file per rank.
    ///
    /// # Errors
    ///
    /// As [`Storage::read_dir`].
    fn list_names(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        Ok(self.read_dir(dir)?.into_iter().map(|e| e.name).collect())
    }
    /// Shortcut of [`Storage::read_dir`]: the entries whose names `wanted` accepts, looking at (`stat`ing)
    /// only those: a checkpoint directory may be the job's working directory, with thousands of files
    /// that are not checkpoints.
    ///
    /// # Errors
    ///
    /// As [`Storage::read_dir`].
    fn read_dir_matching(&self, dir: &Path, wanted: &dyn Fn(&OsStr) -> bool) -> io::Result<Vec<DirEntry>> {
        Ok(self.read_dir(dir)?.into_iter().filter(|e| wanted(&e.name)).collect())
    }
    /// Whether any entry (file, directory, symlink: not followed) has this name.
    ///
    /// # Errors
    ///
    /// Any error of [`Storage::open`] that does not settle the question (`NotFound` is `false`; a symlink, a
    /// directory or a file this user may not read is `true`), such as `EIO`.
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

    /// Shortcut of [`Storage::read_dir_matching`] for one name: the entry `path` names, `None` when there is
    /// none (a symlink is not followed and is not a regular file). Finding a checkpoint's files by name
    /// costs the same whatever else the directory holds; a listing reads every entry.
    ///
    /// # Errors
    ///
    /// As [`Storage::exists`].
    fn entry(&self, path: &Path) -> io::Result<Option<DirEntry>> {
        let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let entry = |is_file, len| Some(DirEntry { name: name.to_os_string(), is_file, len, modified: None });
        match self.open(path) {
            Ok(r) => Ok(entry(true, r.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            // A file this user may not read is still a file; a symlink (O_NOFOLLOW) or a directory is not.
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => Ok(entry(true, 0)),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) || e.kind() == io::ErrorKind::InvalidInput => {
                Ok(entry(false, 0))
            }
            Err(e) => Err(e),
        }
    }
    /// Whether listing `dir` costs much more than looking up a few names in it (a directory of thousands
    /// of entries, as a job's shared scratch directory may be): saves there then find the checkpoint's
    /// files by name ([`Storage::entry`]) and list the directory, for dead writers' temporary files, once
    /// per process and off the save's path. `false` (the default) keeps every save's first listing.
    fn large_dir(&self, dir: &Path) -> bool {
        let _ = dir;
        false
    }

    /// This storage's spare reuse, `None` (the default) when it has none: the store then keeps no spare
    /// and creates every file new. A wrapper passes on the wrapped storage's only when overwriting files
    /// in place is as safe through the wrapper.
    fn spare_reuse(&self) -> Option<&dyn SpareReuse> {
        None
    }
}

/// The optional capability of a [`Storage`] to keep a retired checkpoint as a spare and write the next save
/// over its blocks instead of allocating new ones (see [`Storage::spare_reuse`]).
pub trait SpareReuse: Send + Sync {
    /// The smallest retired checkpoint in `dir` worth keeping as a spare for [`SpareReuse::reuse_spare`];
    /// `None` when this storage does not reuse files in `dir` (or cannot tell who else has them open).
    fn spare_min_len(&self, dir: &Path) -> Option<u64>;
    /// Takes over `spare` (a retired checkpoint) as the temporary file `tmp` of a new save, to be
    /// overwritten from its first byte and written as `opts` says: its permission bits become exactly what
    /// a new file created with `opts.mode` would get (the umask applies). The save then writes over blocks
    /// the file system already holds instead of allocating new ones, and the writer's `sync` cuts the file
    /// to the bytes written. The rename to `tmp` comes first (it claims the file: no other saver can take
    /// it, nor put another file in its place, between the checks and the writes); then the file is
    /// checked. `Ok(None)` when there is no spare or it is not a regular file (left alone), and, with the
    /// `tmp` name removed, when it must not be overwritten: it has another name, belongs to another user,
    /// sits on a file system that is not local, or something (another process, a memory map) still has
    /// it open and would see its bytes change.
    ///
    /// # Errors
    ///
    /// An operation on a spare that is there failed (the rename, the checks, the lease, the reopening); the
    /// store then creates a new file, so an error costs the reuse, never the save.
    fn reuse_spare(&self, spare: &Path, tmp: &Path, opts: WriteOptions) -> io::Result<Option<Box<dyn StorageWriter>>>;
}
