//! [`FaultStorage`]: fails the Nth operation of any storage with a chosen errno.

use std::sync::atomic::AtomicU64;

use super::*;

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
    /// `reuse_spare`
    Reuse,
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
    fn device_time(&self) -> Option<(u64, f64)> {
        self.inner.device_time()
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
        self.create_new_with(path, WriteOptions::new(mode))
    }
    fn create_new_with(&self, path: &Path, opts: WriteOptions) -> io::Result<Box<dyn StorageWriter>> {
        self.tick(Op::Create)?;
        let inner = self.inner.create_new_with(path, opts)?;
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
    fn spare_min_len(&self, dir: &Path) -> Option<u64> {
        self.inner.spare_min_len(dir)
    }
    fn reuse_spare(&self, spare: &Path, tmp: &Path, opts: WriteOptions) -> io::Result<Option<Box<dyn StorageWriter>>> {
        self.tick(Op::Reuse)?;
        let inner = self.inner.reuse_spare(spare, tmp, opts)?;
        Ok(inner.map(|inner| Box::new(FaultWriter { inner, storage: self.clone() }) as Box<dyn StorageWriter>))
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

    #[test]
    fn fault_storage_fails_the_nth_op() {
        let s = FaultStorage::new(MemStorage::new(), 2, libc::ENOSPC);
        let mut w = s.create_new(Path::new("./a"), 0o600).unwrap();
        let e = w.write_all(b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(s.ops(), vec![Op::Create, Op::Write]);
    }
}
