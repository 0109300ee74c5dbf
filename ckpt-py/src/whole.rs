//! Loads with `mmap=False`: the file read whole, once, into private anonymous memory.
//!
//! The core's plain-read path verifies every section (reading the file) and then reads the sections again
//! into new buffers: two passes over the file, two CRC passes, and one allocation per section. Here the
//! file is read once, with the descriptor the core opened, into one anonymous private mapping that the
//! core then treats as the file's mapping: verification runs over memory, and the sections are handed out
//! as views of that memory (writable, as private memory is), without a further copy. The memory lives as
//! long as any view of it.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ckpt_core::storage::{DirEntry, FileOwner, FileStorage, MappedBytes, Storage, StorageReader, StorageWriter};
use ckpt_core::{Checkpoint, LoadOptions, Result};

use crate::buffers::PrivateMap;

/// The [`PrivateMap`] a [`ReadWhole`] storage filled, when it did.
type Made = Arc<Mutex<Option<Arc<PrivateMap>>>>;

/// [`FileStorage`] whose readers "map" a file by reading it whole into anonymous memory.
#[derive(Default)]
struct ReadWhole {
    made: Made,
}

impl std::fmt::Debug for ReadWhole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadWhole")
    }
}

struct WholeReader {
    inner: Box<dyn StorageReader>,
    made: Made,
}

/// The bytes of a [`PrivateMap`], for the core (which only reads them, while verifying and locating).
struct Bytes(Arc<PrivateMap>);

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl StorageReader for WholeReader {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn map(&self) -> io::Result<Option<MappedBytes>> {
        let Ok(len) = usize::try_from(self.inner.len()) else { return Ok(None) };
        let Some(map) = PrivateMap::anonymous(len) else { return Ok(None) };
        // SAFETY: the mapping is new and referenced by nothing else yet.
        self.inner.read_exact_at(unsafe { map.bytes_mut() }, 0)?;
        let map = Arc::new(map);
        *self.made.lock().unwrap_or_else(|p| p.into_inner()) = Some(map.clone());
        Ok(Some(Arc::new(Bytes(map))))
    }
    fn owner(&self) -> Option<FileOwner> {
        self.inner.owner()
    }
}

impl Storage for ReadWhole {
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<Box<dyn StorageWriter>> {
        FileStorage.create_new(path, mode)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageReader>> {
        Ok(Box::new(WholeReader { inner: FileStorage.open(path)?, made: self.made.clone() }))
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
        FileStorage.read_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        FileStorage.create_dir_all(dir)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        FileStorage.remove_dir(dir)
    }
}

/// Opens `path` read whole into private memory: the checkpoint (structurally verified, as any open) and
/// the memory its sections can be writable views of (`None` when the file could not be read so, e.g. it
/// is empty: the checkpoint then reads the file as usual).
pub fn open(path: &Path) -> Result<(Checkpoint, Option<Arc<PrivateMap>>)> {
    let storage = ReadWhole::default();
    let cp = Checkpoint::open_with(&storage, path, LoadOptions::new().mmap(true))?;
    let made = storage.made.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok((cp, made))
}
