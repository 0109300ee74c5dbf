//! Reading a checkpoint through a descriptor that was opened (and checked) once.

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
