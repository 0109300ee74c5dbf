//! [`FileStorage`]: the operating system's file system, with spare reuse and background freeing.

use std::fs;

use super::*;

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileStorage;

struct FileReader {
    file: File,
    len: u64,
    owner: FileOwner,
}

impl StorageReader for FileReader {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn owner(&self) -> Option<FileOwner> {
        Some(self.owner)
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
        self.create_new_with(path, WriteOptions::new(mode))
    }

    fn create_new_with(&self, path: &Path, opts: WriteOptions) -> io::Result<Box<dyn StorageWriter>> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(opts.mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        let writer = FileWriter::new(file, opts.direct_io).bounded_writeback(opts.bounded_writeback);
        Ok(Box::new(if opts.write_behind { writer } else { writer.without_write_behind() }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageReader>> {
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        let owner = FileOwner { uid: meta.uid(), mode: meta.mode(), dev: meta.dev(), ino: meta.ino() };
        Ok(Box::new(FileReader { file, len: meta.len(), owner }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let replaced = open_to_reclaim_later(to);
        fs::rename(from, to)?;
        reclaim_later(replaced);
        Ok(())
    }

    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        fs::hard_link(original, link)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let removed = open_to_reclaim_later(path);
        fs::remove_file(path)?;
        reclaim_later(removed);
        Ok(())
    }

    fn remove_listed_file(&self, path: &Path, len: u64) -> io::Result<()> {
        // Only a file large enough to be worth freeing in the background is looked at (and opened).
        if len < RECLAIM_IN_BACKGROUND {
            return fs::remove_file(path);
        }
        self.remove_file(path)
    }

    fn rename_over_other_name(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        File::open(dir)?.sync_all()
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        self.read_dir_matching(dir, &|_| true)
    }

    fn read_dir_matching(&self, dir: &Path, wanted: &dyn Fn(&OsStr) -> bool) -> io::Result<Vec<DirEntry>> {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if !wanted(&entry.file_name()) {
                continue;
            }
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

    fn list_names(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect()
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

    fn entry(&self, path: &Path) -> io::Result<Option<DirEntry>> {
        let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        match fs::symlink_metadata(path) {
            Ok(meta) => Ok(Some(DirEntry {
                name: name.to_os_string(),
                is_file: meta.is_file(),
                len: if meta.is_file() { meta.len() } else { 0 },
                modified: meta.modified().ok(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn large_dir(&self, dir: &Path) -> bool {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        // A directory's size grows with its entries on ext4, XFS, Lustre, GPFS and tmpfs (about 2,000
        // names per 64 KiB on ext4); a listing of that many costs about a millisecond here.
        fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.len() > LARGE_DIR_BYTES)
    }

    fn spare_reuse(&self) -> Option<&dyn SpareReuse> {
        Some(self)
    }
}

impl SpareReuse for FileStorage {
    fn spare_min_len(&self, dir: &Path) -> Option<u64> {
        // Below this, allocating is cheap and a spare would only add a rename to every save.
        (!LEASES_REFUSED.load(Ordering::Relaxed) && local_file_system_cached(dir)).then_some(SPARE_MIN_LEN)
    }

    fn reuse_spare(&self, spare: &Path, tmp: &Path, opts: WriteOptions) -> io::Result<Option<Box<dyn StorageWriter>>> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // A new file gets `mode` less the umask from open(2); a file taken over gets the same from fchmod,
        // which ignores the umask. Unknown umask: no reuse (a new file gets the right mode by itself).
        let Some(umask) = process_umask() else { return Ok(None) };
        let mode = opts.mode & !umask & 0o7777;
        match fs::symlink_metadata(spare) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Ok(None), // not ours to take, nor to remove
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        match fs::rename(spare, tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None), // another saver took it
            Err(e) => return Err(e),
        }
        // O_NONBLOCK: an open that would wait for another process's lease on the file fails instead.
        let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        let usable = OpenOptions::new().write(true).custom_flags(flags).open(tmp).ok().filter(|file| {
            file.metadata().is_ok_and(|meta| meta.is_file() && meta.nlink() == 1 && meta.uid() == crate::sys::euid())
                && local_file(file)
                && sole_opener(file)
        });
        let Some(file) = usable else {
            // Removing the name frees the blocks once the last reader lets go; nothing it reads changes.
            let _ = self.remove_file(tmp);
            return Ok(None);
        };
        let prepared = clear_nonblock(&file)
            .and_then(|()| file.set_permissions(fs::Permissions::from_mode(mode)))
            // The rename kept the retired file's time: a saver on another host must not take the
            // temporary file for one abandoned an hour ago.
            .and_then(|()| file.set_modified(SystemTime::now()));
        if let Err(e) = prepared {
            drop(file);
            let _ = self.remove_file(tmp);
            return Err(e);
        }
        let writer = FileWriter::overwriting(file, opts.direct_io).bounded_writeback(opts.bounded_writeback);
        Ok(Some(Box::new(if opts.write_behind { writer } else { writer.without_write_behind() })))
    }
}

/// Files at least this large are freed off the caller's thread when a save removes or replaces them.
const RECLAIM_IN_BACKGROUND: u64 = 16 << 20;

/// Retired checkpoints at least this large are kept as spares (see [`SpareReuse::reuse_spare`]): allocation,
/// and on thin-provisioned or `discard`-mounted disks the device's own allocation, is a large part of a
/// fresh write (BENCHMARKS.md, "Where the time goes"); below this, allocating is cheap.
const SPARE_MIN_LEN: u64 = 16 << 20;

/// A directory larger than this (its `st_size`) is one a save does not list on its path ([`Storage::large_dir`]).
const LARGE_DIR_BYTES: u64 = 64 << 10;

/// Set when the kernel refused a lease outright (EINVAL): from then on no spares are kept.
static LEASES_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `file`'s descriptor is the only open one of the file, in any process, memory maps included:
/// Linux grants a write lease only then. The lease is released at once; it only asks the question. File
/// systems without leases (and other systems) answer no, so their spares are never overwritten.
#[cfg(target_os = "linux")]
fn sole_opener(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function borrows; the arguments are plain integers.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) } != 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // Leases are off (`fs.leases-enable = 0`) or not offered here: a spare could never be
            // reused, so this process stops keeping them.
            LEASES_REFUSED.store(true, Ordering::Relaxed);
        }
        return false;
    }
    // SAFETY: as above. Owner 0 first: should another process open the file in the instant before the
    // release, breaking the lease notifies nobody (instead of SIGIO, whose default action ends the
    // process).
    unsafe {
        libc::fcntl(fd, libc::F_SETOWN, 0);
        libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
    }
    true
}

#[cfg(not(target_os = "linux"))]
fn sole_opener(_file: &File) -> bool {
    false
}

/// Clears `O_NONBLOCK` (set only for the open that checks for leases).
fn clear_nonblock(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function borrows; the arguments are plain integers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Local file systems whose leases see every process that has a file open: ext2-4, XFS, tmpfs, F2FS.
/// Cluster and network file systems (Lustre, GPFS, `BeeGFS`, NFS, CIFS, FUSE, Ceph) check leases on this
/// node only, if at all: a reader on another node would see a reused spare change under it, so spares are
/// not kept there. Btrfs writes over nothing in place (copy on write).
const LOCAL_FILE_SYSTEMS: [i64; 4] = [0xEF53, 0x5846_5342, 0x0102_1994, 0xF2F5_2010];

/// Whether `dir` is on a local file system ([`LOCAL_FILE_SYSTEMS`]).
#[cfg(target_os = "linux")]
fn local_file_system(dir: &Path) -> bool {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    crate::sys::fs_type_of_path(dir).is_ok_and(|t| LOCAL_FILE_SYSTEMS.contains(&t))
}

#[cfg(not(target_os = "linux"))]
fn local_file_system(_dir: &Path) -> bool {
    false
}

/// Whether the open `file` is on a local file system ([`LOCAL_FILE_SYSTEMS`]): asked of the spare's own
/// descriptor before it is overwritten, whatever was remembered about its directory's path.
#[cfg(target_os = "linux")]
fn local_file(file: &File) -> bool {
    crate::sys::fs_type_of_file(file).is_ok_and(|t| LOCAL_FILE_SYSTEMS.contains(&t))
}

#[cfg(not(target_os = "linux"))]
fn local_file(_file: &File) -> bool {
    false
}

/// [`local_file_system`], remembered per file system (the directory's device number): every save asks,
/// and a `statfs` can be slow where it matters most (Lustre's asks every storage target), while the
/// `stat` that finds the device is answered from the client's cache. Keyed by device, not by path: a
/// relative directory (`.`) names another file system after a `chdir`.
fn local_file_system_cached(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    static KNOWN: Mutex<Vec<(u64, bool)>> = Mutex::new(Vec::new());
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let Ok(dev) = fs::metadata(dir).map(|m| m.dev()) else { return false };
    let mut known = KNOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(&(_, local)) = known.iter().find(|&&(d, _)| d == dev) {
        return local;
    }
    let local = local_file_system(dir);
    if known.len() == 8 {
        known.remove(0);
    }
    known.push((dev, local));
    local
}

/// The process's umask, read from `/proc/self/status` (`Umask:`, Linux 4.7 and later) without changing
/// it: umask(2) tells the mask only by setting a new one, and for that instant a file another thread
/// creates would get the wrong mode. Read at every reuse (a program may change its umask). `None` when
/// it cannot be read.
fn process_umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok().filter(|&m| m <= 0o777)
}

/// When `path` is the last name of a large regular file, opens it so that removing or replacing the name
/// only drops the directory entry: the blocks are freed when [`reclaim_later`] closes the descriptor on
/// another thread. Freeing is the slow part (on ext4 with `discard`, a large part of a save's time
/// when done inside the `unlink` or the `rename` that replaces the file; BENCHMARKS.md) and nothing waits for it: the new checkpoint is
/// already durable, the directory changes exactly as before, and if the process ends first the kernel
/// frees the blocks when it closes the descriptor (after a crash, the file system's orphan list does).
fn open_to_reclaim_later(path: &Path) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    if !io_threads_allowed() {
        return None;
    }
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.nlink() != 1 || meta.len() < RECLAIM_IN_BACKGROUND {
        return None;
    }
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK).open(path).ok()
}

/// Files whose closing (and freeing) [`reclaim_later`] has handed to a thread that has not finished yet.
static RECLAIMS_PENDING: Mutex<usize> = Mutex::new(0);
static RECLAIMS_DONE: Condvar = Condvar::new();

fn pending_reclaims() -> MutexGuard<'static, usize> {
    RECLAIMS_PENDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Closes a file opened by [`open_to_reclaim_later`] on a short-lived thread (or here, if none starts).
fn reclaim_later(file: Option<File>) {
    let Some(file) = file else { return };
    *pending_reclaims() += 1;
    let spawned = std::thread::Builder::new().name("ckpt-reclaim".into()).spawn(move || {
        drop(file);
        *pending_reclaims() -= 1;
        RECLAIMS_DONE.notify_all();
    });
    if spawned.is_err() {
        // The closure (and the file in it) was dropped: the blocks were freed here.
        *pending_reclaims() -= 1;
        RECLAIMS_DONE.notify_all();
    }
}

/// Waits until the files that saves of this process replaced or pruned are freed: large ones are freed
/// on a short-lived thread after the save returns (see [`FileStorage`]). For measurements, so that the
/// freeing is not billed to whatever runs next, and for programs that want the space back before going
/// on; a save never needs it.
pub fn wait_for_background_frees() {
    let mut pending = pending_reclaims();
    while *pending > 0 {
        pending = RECLAIMS_DONE.wait(pending).unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Removing or replacing a large file changes the directory at once; only its last-name, regular,
    /// large files are kept open for freeing on another thread.
    #[test]
    fn large_files_are_freed_off_the_callers_thread_and_the_names_change_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        let small = dir.path().join("small");
        let data = vec![5u8; RECLAIM_IN_BACKGROUND as usize];
        fs::write(&big, &data).unwrap();
        fs::write(&small, b"small").unwrap();
        assert!(open_to_reclaim_later(&big).is_some(), "a large file with one name");
        assert!(open_to_reclaim_later(&small).is_none(), "small files are removed in place");
        let link = dir.path().join("link");
        fs::hard_link(&big, &link).unwrap();
        assert!(open_to_reclaim_later(&big).is_none(), "a file with another name frees nothing");
        fs::remove_file(&link).unwrap();
        let sym = dir.path().join("sym");
        std::os::unix::fs::symlink(&big, &sym).unwrap();
        assert!(open_to_reclaim_later(&sym).is_none(), "symlinks are not followed");

        // Replacing: the new content is there when rename returns.
        let new = dir.path().join("new");
        fs::write(&new, b"new content").unwrap();
        FileStorage.rename(&new, &big).unwrap();
        assert_eq!(fs::read(&big).unwrap(), b"new content");
        assert!(!new.exists());
        // Removing: the name is gone when remove_file returns.
        let big2 = dir.path().join("big2");
        fs::write(&big2, &data).unwrap();
        FileStorage.remove_file(&big2).unwrap();
        assert!(!big2.exists());
        assert_eq!(FileStorage.remove_file(&big2).unwrap_err().kind(), io::ErrorKind::NotFound);
        // Waiting for the frees handed to threads: none is pending once it returns.
        for _ in 0..3 {
            reclaim_later(Some(File::open(kept_for_wait(dir.path())).unwrap()));
        }
        wait_for_background_frees();
        assert_eq!(*pending_reclaims(), 0);
        // Removing listed files (old generations), small and large: the names are gone, errors reported.
        let (listed_small, listed_big) = (dir.path().join("listed_small"), dir.path().join("listed_big"));
        fs::write(&listed_small, b"small").unwrap();
        fs::write(&listed_big, &data).unwrap();
        FileStorage.remove_listed_file(&listed_small, 5).unwrap();
        FileStorage.remove_listed_file(&listed_big, data.len() as u64).unwrap();
        assert!(!listed_small.exists() && !listed_big.exists());
        for (p, len) in [(&listed_small, 5), (&listed_big, data.len() as u64)] {
            assert_eq!(FileStorage.remove_listed_file(p, len).unwrap_err().kind(), io::ErrorKind::NotFound);
        }
        // Replacing another name of a file that stays: the file keeps its content under its other name.
        let (kept, current, next) = (dir.path().join("kept"), dir.path().join("current"), dir.path().join("next"));
        fs::write(&kept, b"kept").unwrap();
        fs::hard_link(&kept, &current).unwrap();
        fs::write(&next, b"next").unwrap();
        FileStorage.rename_over_other_name(&next, &current).unwrap();
        assert_eq!(fs::read(&current).unwrap(), b"next");
        assert_eq!(fs::read(&kept).unwrap(), b"kept");
    }

    fn kept_for_wait(dir: &Path) -> PathBuf {
        let p = dir.join("kept_for_wait");
        fs::write(&p, b"x").unwrap();
        p
    }

    #[test]
    fn spares_are_kept_on_local_file_systems_only() {
        let dir = tempfile::tempdir().unwrap();
        // The test machines' temporary directories are on ext4 or tmpfs.
        assert_eq!(FileStorage.spare_min_len(dir.path()), Some(SPARE_MIN_LEN));
        assert_eq!(FileStorage.spare_min_len(dir.path()), Some(SPARE_MIN_LEN), "the remembered answer");
        assert!(!local_file_system(Path::new("/proc")), "procfs is no place for spares");
        assert!(!local_file_system(&dir.path().join("missing")), "a directory that is not there");
    }

    /// Runs the test `name` of this binary alone in a child process (with `CKPT_TEST_CHILD` set), for
    /// tests that change what is process-wide (the working directory, the umask). Returns whether this is
    /// the child, which then runs the test's body.
    fn in_child_process(name: &str) -> bool {
        if std::env::var_os("CKPT_TEST_CHILD").is_some() {
            return true;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1", "--nocapture"])
            .env("CKPT_TEST_CHILD", "1")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "{name} in a child process:\n{text}");
        false
    }

    /// The spare check of a relative directory follows the working directory: `.` on ext4 or tmpfs keeps
    /// spares, `.` in /proc (not a local file system in that sense) does not, however often `.` was asked
    /// about before, and back again.
    #[test]
    fn the_spare_check_of_a_relative_directory_follows_chdir() {
        if !in_child_process("storage::fs::tests::the_spare_check_of_a_relative_directory_follows_chdir") {
            return;
        }
        // Local: tmpfs (/dev/shm) and the temporary directory (ext4 or tmpfs on the test machines; a CI
        // runner's overlay file system is not local in this sense, and is then left out).
        let tmp = tempfile::tempdir().unwrap();
        let mut local: Vec<&Path> = vec![Path::new("/dev/shm"), tmp.path()];
        local.retain(|d| d.is_dir() && local_file_system(d));
        assert!(!local.is_empty(), "no local file system to test with");
        let dot = Path::new(".");
        for round in 0..2 {
            for dir in &local {
                std::env::set_current_dir(dir).unwrap();
                assert_eq!(FileStorage.spare_min_len(dot), Some(SPARE_MIN_LEN), "round {round}: in {}", dir.display());
                assert_eq!(FileStorage.spare_min_len(Path::new("")), Some(SPARE_MIN_LEN), "round {round}: empty = .");
                std::env::set_current_dir("/proc").unwrap();
                assert_eq!(FileStorage.spare_min_len(dot), None, "round {round}: after chdir to /proc");
                assert_eq!(FileStorage.spare_min_len(Path::new("")), None, "round {round}: empty = . in /proc");
            }
        }
        std::env::set_current_dir("/").unwrap();
    }

    /// The umask is read without changing it, and a spare taken over gets the mode a new file gets.
    #[test]
    fn a_reused_spare_gets_the_mode_a_new_file_gets() {
        use std::os::unix::fs::PermissionsExt;
        if !in_child_process("storage::fs::tests::a_reused_spare_gets_the_mode_a_new_file_gets") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for umask in [0o022, 0o027, 0o077, 0o002, 0] {
            // SAFETY: umask has no preconditions; this child process runs this one test on one thread.
            unsafe { libc::umask(umask) };
            assert_eq!(process_umask(), Some(umask));
            for mode in [0o600, 0o640, 0o666] {
                let (new, spare, tmp) = (dir.path().join("new"), dir.path().join("spare"), dir.path().join("tmp"));
                let mut w = FileStorage.create_new_with(&new, WriteOptions::new(mode)).unwrap();
                w.write_all(b"new").unwrap();
                w.sync().unwrap();
                drop(w);
                fs::write(&spare, b"retired").unwrap();
                fs::set_permissions(&spare, fs::Permissions::from_mode(0o777)).unwrap();
                let mut w = FileStorage.reuse_spare(&spare, &tmp, WriteOptions::new(mode)).unwrap().expect("reused");
                w.write_all(b"over").unwrap();
                w.sync().unwrap();
                drop(w);
                let mode_of = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
                assert_eq!(mode_of(&tmp), mode & !umask, "umask {umask:03o}, mode {mode:03o}: the reused file");
                assert_eq!(mode_of(&tmp), mode_of(&new), "umask {umask:03o}, mode {mode:03o}: as a new file");
                assert_eq!(fs::read(&tmp).unwrap(), b"over");
                fs::remove_file(&new).unwrap();
                fs::remove_file(&tmp).unwrap();
            }
        }
    }
}
