//! [`FaultStorage`]: fails the Nth operation of any storage with a chosen errno.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use super::*;

/// The operations [`FaultStorage`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `create_new`
    Create,
    /// `open` or `exists`
    Open,
    /// A `write_all` on a writer.
    Write,
    /// A `sync` on a writer.
    Sync,
    /// `rename` or `rename_over_other_name`
    Rename,
    /// `hard_link`
    Link,
    /// `remove_file`, `remove_listed_file` or `remove_dir`
    Remove,
    /// `sync_dir`
    SyncDir,
    /// `read_dir`, `read_dir_matching` or `list_names`
    ReadDir,
    /// A `read_exact_at` or `map` on a reader.
    Read,
    /// `create_dir_all`
    CreateDir,
    /// `reuse_spare`
    Reuse,
}

/// What [`FaultStorage::observe`] calls before each operation: its kind and the path it acts on (the
/// new name for `rename` and `hard_link`, the file's path for the operations of a writer or a reader).
type Observer = Arc<dyn Fn(Op, &Path) + Send + Sync>;

/// Wraps a storage and fails one chosen operation (the Nth, 1-based) with an OS error.
///
/// Every operation of the wrapped storage passes through, shortcuts and spare reuse included, each
/// counted as the primitive it stands for: the wrapped storage behaves exactly as it would alone.
#[derive(Clone)]
pub struct FaultStorage<S> {
    inner: S,
    counter: Arc<AtomicU64>,
    fail_at: u64,
    errno: i32,
    log: Arc<Mutex<Vec<Op>>>,
    observer: Option<Observer>,
}

impl<S: fmt::Debug> fmt::Debug for FaultStorage<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultStorage")
            .field("inner", &self.inner)
            .field("fail_at", &self.fail_at)
            .field("errno", &self.errno)
            .finish_non_exhaustive()
    }
}

impl<S: Storage + Clone + 'static> FaultStorage<S> {
    /// Fails operation number `fail_at` (1-based; 0 never fails) with `errno` (for example `libc::EIO`).
    pub fn new(inner: S, fail_at: u64, errno: i32) -> FaultStorage<S> {
        FaultStorage {
            inner,
            counter: Arc::new(AtomicU64::new(0)),
            fail_at,
            errno,
            log: Arc::default(),
            observer: None,
        }
    }

    /// Calls `observer` before every operation (after counting it, before failing it), for tests that act
    /// at a chosen instant of a save (planting a symlink, say).
    pub fn observe(mut self, observer: impl Fn(Op, &Path) + Send + Sync + 'static) -> FaultStorage<S> {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// How many operations were attempted.
    pub fn op_count(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    /// The operations attempted, in order.
    pub fn ops(&self) -> Vec<Op> {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn tick(&self, op: Op, path: &Path) -> io::Result<()> {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(op);
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(observe) = &self.observer {
            observe(op, path);
        }
        if n == self.fail_at { Err(io::Error::from_raw_os_error(self.errno)) } else { Ok(()) }
    }

    fn writer(&self, inner: Box<dyn StorageWriter>, path: &Path) -> Box<dyn StorageWriter> {
        Box::new(FaultWriter { inner, storage: self.clone(), path: path.to_path_buf() })
    }
}

struct FaultWriter<S: Storage + Clone + 'static> {
    inner: Box<dyn StorageWriter>,
    storage: FaultStorage<S>,
    path: PathBuf,
}

impl<S: Storage + Clone + 'static> StorageWriter for FaultWriter<S> {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.storage.tick(Op::Write, &self.path)?;
        self.inner.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.storage.tick(Op::Sync, &self.path)?;
        self.inner.sync()
    }
    fn cut_to_written(&mut self) -> io::Result<()> {
        self.storage.tick(Op::Write, &self.path)?;
        self.inner.cut_to_written()
    }
    fn device_time(&self) -> Option<(u64, f64)> {
        self.inner.device_time()
    }
}

struct FaultReader<S: Storage + Clone + 'static> {
    inner: Box<dyn StorageReader>,
    storage: FaultStorage<S>,
    path: PathBuf,
}

impl<S: Storage + Clone + 'static> StorageReader for FaultReader<S> {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.storage.tick(Op::Read, &self.path)?;
        self.inner.read_exact_at(buf, offset)
    }
    fn map(&self) -> io::Result<Option<MappedBytes>> {
        self.storage.tick(Op::Read, &self.path)?;
        self.inner.map()
    }
    fn owner(&self) -> Option<FileOwner> {
        self.inner.owner()
    }
}

impl<S: Storage + Clone + 'static> Storage for FaultStorage<S> {
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<Box<dyn StorageWriter>> {
        self.create_new_with(path, WriteOptions::new(mode))
    }
    fn create_new_with(&self, path: &Path, opts: WriteOptions) -> io::Result<Box<dyn StorageWriter>> {
        self.tick(Op::Create, path)?;
        Ok(self.writer(self.inner.create_new_with(path, opts)?, path))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageReader>> {
        self.tick(Op::Open, path)?;
        let inner = self.inner.open(path)?;
        Ok(Box::new(FaultReader { inner, storage: self.clone(), path: path.to_path_buf() }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.tick(Op::Rename, to)?;
        self.inner.rename(from, to)
    }
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        self.tick(Op::Link, link)?;
        self.inner.hard_link(original, link)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.tick(Op::Remove, path)?;
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.tick(Op::SyncDir, dir)?;
        self.inner.sync_dir(dir)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        self.tick(Op::ReadDir, dir)?;
        self.inner.read_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.tick(Op::CreateDir, dir)?;
        self.inner.create_dir_all(dir)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        self.tick(Op::Remove, dir)?;
        self.inner.remove_dir(dir)
    }
    fn remove_listed_file(&self, path: &Path, len: u64) -> io::Result<()> {
        self.tick(Op::Remove, path)?;
        self.inner.remove_listed_file(path, len)
    }
    fn rename_over_other_name(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.tick(Op::Rename, to)?;
        self.inner.rename_over_other_name(from, to)
    }
    fn list_names(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        self.tick(Op::ReadDir, dir)?;
        self.inner.list_names(dir)
    }
    fn read_dir_matching(&self, dir: &Path, wanted: &dyn Fn(&OsStr) -> bool) -> io::Result<Vec<DirEntry>> {
        self.tick(Op::ReadDir, dir)?;
        self.inner.read_dir_matching(dir, wanted)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.tick(Op::Open, path)?;
        self.inner.exists(path)
    }
    fn entry(&self, path: &Path) -> io::Result<Option<DirEntry>> {
        self.tick(Op::Open, path)?;
        self.inner.entry(path)
    }
    fn large_dir(&self, dir: &Path) -> bool {
        self.inner.large_dir(dir)
    }
    fn spare_reuse(&self) -> Option<&dyn SpareReuse> {
        self.inner.spare_reuse().map(|_| self as &dyn SpareReuse)
    }
}

impl<S: Storage + Clone + 'static> SpareReuse for FaultStorage<S> {
    fn spare_min_len(&self, dir: &Path) -> Option<u64> {
        self.inner.spare_reuse()?.spare_min_len(dir)
    }
    fn reuse_spare(&self, spare: &Path, tmp: &Path, opts: WriteOptions) -> io::Result<Option<Box<dyn StorageWriter>>> {
        self.tick(Op::Reuse, tmp)?;
        let Some(reuse) = self.inner.spare_reuse() else { return Ok(None) };
        Ok(reuse.reuse_spare(spare, tmp, opts)?.map(|inner| self.writer(inner, tmp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_storage_fails_the_nth_op() {
        let s = FaultStorage::new(MemStorage::new(), 2, libc::ENOSPC);
        let mut w = s.create_new(Path::new("./a"), 0o600).unwrap();
        let e = w.write_all(b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(s.ops(), vec![Op::Create, Op::Write]);
    }
}
