//! [`MemStorage`]: an in-memory file system that models what a power cut keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::*;

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
    /// Directories created since their parent's last `sync_dir`: a power cut loses them and all they hold.
    unsynced_dirs: BTreeSet<PathBuf>,
    /// Mutating operations performed so far.
    ops: u64,
    /// After this many mutating operations, every further operation fails (the process "died").
    stop_after: Option<u64>,
    /// What [`SpareReuse::spare_min_len`] answers.
    spare_min_len: Option<u64>,
    /// What [`Storage::large_dir`] answers.
    large_dirs: bool,
}

/// An in-memory file system that models durability; see [`CrashMode`].
///
/// A directory's own entry becomes durable with its parent's `sync_dir`, as a file's does: until then
/// [`CrashMode::DurableOnly`] loses it with everything in it. Cloning a `MemStorage` shares its state.
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
    ///
    /// # Panics
    ///
    /// Never: creating `.` in an empty storage cannot fail.
    pub fn new() -> MemStorage {
        let s = MemStorage::default();
        s.create_dir_all(Path::new(".")).expect("fresh storage");
        // Every retired file may become a spare, so that crash tests cover the reuse with small files.
        s.set_spare_min_len(Some(0));
        s
    }

    /// Sets what [`SpareReuse::spare_min_len`] answers (`None`: saves never reuse files).
    pub fn set_spare_min_len(&self, min: Option<u64>) {
        self.lock().spare_min_len = min;
    }

    /// Sets what [`Storage::large_dir`] answers for every directory (`true`: saves find their files by
    /// name, as in a crowded directory).
    pub fn set_large_dirs(&self, large: bool) {
        self.lock().large_dirs = large;
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The number of mutating operations (create, write, sync, rename, link, remove, `sync_dir`) so far.
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
        if mode == CrashMode::DurableOnly {
            dirs.retain(|d, _| !st.unsynced_dirs.iter().any(|lost| d.starts_with(lost)));
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
                            // A file being written over (a reused spare): the first half of the new
                            // bytes over the old ones.
                            let mut torn = ino.durable.clone();
                            let half = ino.live.len() / 2;
                            if torn.len() < half {
                                torn.resize(half, 0);
                            }
                            torn[..half].copy_from_slice(&ino.live[..half]);
                            torn
                        }
                    }
                };
                Inode { live: bytes.clone(), durable: bytes }
            })
            .collect();
        let state = MemState {
            inodes,
            live: dirs.clone(),
            durable: dirs,
            unsynced_dirs: BTreeSet::new(),
            ops: 0,
            stop_after: None,
            spare_min_len: st.spare_min_len,
            large_dirs: st.large_dirs,
        };
        MemStorage { state: Arc::new(Mutex::new(state)) }
    }

    /// The live contents of a file (for tests that tamper with bytes).
    ///
    /// # Errors
    ///
    /// `NotFound` when no file has the name now (the live view), `InvalidInput` for a path without a file
    /// name.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.lock();
        let ino = lookup(&st, path)?;
        Ok(st.inodes[ino].live.clone())
    }

    /// Replaces a file's contents, live and durable (for tests that plant damaged files).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a path without a file name (the directory is created in the listing if needed).
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
    /// The offset of the next byte (a reused file is overwritten from 0; its old bytes stay until then).
    pos: usize,
}

impl StorageWriter for MemWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut st = self.storage.lock();
        begin_op(&mut st)?;
        let live = &mut st.inodes[self.inode].live;
        let end = self.pos + buf.len();
        if live.len() < end {
            live.resize(end, 0);
        }
        live[self.pos..end].copy_from_slice(buf);
        self.pos = end;
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut st = self.storage.lock();
        begin_op(&mut st)?;
        let ino = &mut st.inodes[self.inode];
        ino.live.truncate(self.pos);
        ino.durable = ino.live.clone();
        Ok(())
    }
    fn cut_to_written(&mut self) -> io::Result<()> {
        let mut st = self.storage.lock();
        begin_op(&mut st)?;
        st.inodes[self.inode].live.truncate(self.pos);
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
        Ok(Box::new(MemWriter { storage: self.clone(), inode: id, pos: 0 }))
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
        st.unsynced_dirs.retain(|d| normalize_dir(d.parent().unwrap_or(Path::new(""))) != dir);
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
            if !st.live.contains_key(d) {
                st.live.insert(d.to_path_buf(), BTreeMap::new());
                st.durable.insert(d.to_path_buf(), BTreeMap::new());
                // The file system's root and the working directory are there before anything runs.
                if d != Path::new(".") && d.parent().is_some() {
                    st.unsynced_dirs.insert(d.to_path_buf());
                }
            }
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
        st.unsynced_dirs.remove(&dir);
        Ok(())
    }

    fn large_dir(&self, _dir: &Path) -> bool {
        self.lock().large_dirs
    }

    fn spare_reuse(&self) -> Option<&dyn SpareReuse> {
        Some(self)
    }
}

impl SpareReuse for MemStorage {
    fn spare_min_len(&self, _dir: &Path) -> Option<u64> {
        self.lock().spare_min_len
    }

    fn reuse_spare(&self, spare: &Path, tmp: &Path, _opts: WriteOptions) -> io::Result<Option<Box<dyn StorageWriter>>> {
        let mut st = self.lock();
        begin_op(&mut st)?;
        let ino = match lookup(&st, spare) {
            Ok(ino) => ino,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let names = st.live.values().flat_map(|names| names.values()).filter(|&&i| i == ino).count();
        let (sdir, sname) = split(spare)?;
        let (tdir, tname) = split(tmp)?;
        if !st.live.contains_key(&tdir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        st.live.get_mut(&sdir).expect("looked up").remove(&sname);
        if names != 1 {
            return Ok(None); // claimed, then its name removed: another name still holds the file
        }
        st.live.get_mut(&tdir).expect("checked").insert(tname, ino);
        drop(st);
        Ok(Some(Box::new(MemWriter { storage: self.clone(), inode: ino, pos: 0 })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
