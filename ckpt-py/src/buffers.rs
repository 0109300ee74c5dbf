//! The bytes between Python and checkpoint files: the pickle stream and its out-of-band buffers.
//!
//! A Python checkpoint is one section `python.pickle` (pickle protocol 5, [`Encoding::Pickle5`]) and one
//! section `python.buffer.<i>` per out-of-band buffer, in the order `pickle.loads(buffers=...)` consumes
//! them; the header's metadata `python.buffers` records how many there are.
//!
//! Saving hands the memory of every buffer straight to the core writer (no copy; the GIL is released
//! while the sections are written, checksummed, compressed and committed). Loading returns, for each raw
//! section of a memory-mapped file, a [`MappedBuffer`]: a buffer-protocol object over the mapped bytes
//! that keeps the mapping alive as long as any view of it (a numpy array, a memoryview) exists. By default
//! (`writable`) it is a view of a private, copy-on-write mapping of the file ([`PrivateMap`],
//! `MAP_PRIVATE`): zero copy until a page is written, and writes never reach the file, so restored arrays
//! are writable whatever their size; otherwise a read-only view of the core's mapping. Compressed
//! sections, or every section when mapping is off, are decoded into new `bytearray`s.

use std::ffi::{c_int, c_void};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::Arc;

use ckpt_core::storage::MappedBytes;
use ckpt_core::{Checkpoint, CheckpointWriter, Codec, Compression, Encoding, Error, ErrorKind, SectionOptions};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyMemoryError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PySlice};

use crate::errors::{IntoPyResult, to_py};

/// The section holding the pickle stream.
pub const PICKLE_SECTION: &str = "python.pickle";
/// Header metadata: the number of out-of-band buffer sections.
pub const BUFFERS_KEY: &str = "python.buffers";
/// Header metadata: the layout version of Python checkpoints.
pub const FORMAT_KEY: &str = "python.format";
/// The layout version written.
pub const FORMAT_VERSION: &str = "1";

/// The name of out-of-band buffer section `i`.
pub fn buffer_section(i: usize) -> String {
    format!("python.buffer.{i}")
}

/// A private, copy-on-write mapping of a whole checkpoint file (`MAP_PRIVATE`, readable and writable):
/// pages are the file's (the page cache's) until written; a write copies the page for this process and
/// never reaches the file. Or anonymous private memory that a file was read into ([`PrivateMap::anonymous`]).
pub struct PrivateMap {
    ptr: *mut u8,
    len: usize,
    /// The whole mapping's length (an anonymous one reused from [`SPARE`] may be longer than `len`), and
    /// whether it is anonymous (it may then go to [`SPARE`] when dropped).
    mapped: usize,
    anonymous: bool,
}

/// The last large anonymous mapping freed (every view of it gone), kept for the next `mmap=False` load:
/// its pages are already faulted in, which saves the load the page faults that cost more than reading the
/// file (a 400 MB load: about 0.1 s of 0.3 s). Its pages are given back with `MADV_FREE` when it is kept,
/// so the kernel takes them back under memory pressure (a reused page it took comes back zero-filled, and
/// the load overwrites it anyway), as allocators keep freed memory. At most one is kept.
static SPARE: std::sync::Mutex<Option<SpareMap>> = std::sync::Mutex::new(None);

/// An anonymous mapping kept in [`SPARE`].
struct SpareMap {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a mapping referenced by nothing but this value.
unsafe impl Send for SpareMap {}

/// Only mappings from this size on are kept (smaller ones fault in quickly).
const SPARE_MIN: usize = 16 << 20;

fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: `ptr`/`len` are a whole mapping that nothing references any more (the callers' contract).
    unsafe { libc::munmap(ptr.cast(), len) };
}

// SAFETY: the mapping is plain memory owned by this value until it is dropped; Python code writes to it
// through buffer views under the GIL, as it does to any writable buffer.
unsafe impl Send for PrivateMap {}
// SAFETY: as above.
unsafe impl Sync for PrivateMap {}

impl PrivateMap {
    /// A new anonymous private mapping of `len` bytes (zero-filled, pre-faulted), or `None` (`len` 0, or
    /// the mapping failed). Not transparent huge pages: with the usual `defrag=madvise` setting a
    /// `MADV_HUGEPAGE` region makes its first faults compact memory synchronously, which stalled a 400 MB
    /// read for seconds on a node whose memory was full of page cache (measured: 0.4 to 3.5 s against
    /// 0.4 to 0.9 s pre-faulted).
    pub fn anonymous(len: usize) -> Option<PrivateMap> {
        if len == 0 {
            return None;
        }
        let spare = SPARE.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(m) = spare {
            // Reused when it fits without wasting more than half of it; otherwise it goes.
            if m.len >= len && m.len / 2 <= len {
                return Some(PrivateMap { ptr: m.ptr, len, mapped: m.len, anonymous: true });
            }
            unmap(m.ptr, m.len);
        }
        // SAFETY: a new anonymous mapping; MAP_FAILED is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then(|| PrivateMap { ptr: ptr.cast(), len, mapped: len, anonymous: true })
    }

    /// The mapped bytes. Python code may write them through writable views: read them only while no
    /// view exists yet (the core verifying a file read into an anonymous mapping).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr`/`len` are a live mapping owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The mapped bytes, writable.
    ///
    /// # Safety
    /// Nothing else may read or write the mapping during the borrow.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: a live mapping owned by `self`, not otherwise borrowed (the caller's promise).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PrivateMap {
    fn drop(&mut self) {
        // Nothing references the mapping any more (every MappedBuffer over it holds the Arc that is being
        // dropped): it is unmapped, or a large anonymous one kept for the next load.
        if self.anonymous && self.mapped >= SPARE_MIN {
            // SAFETY: advice on a mapping owned by `self`; a refusal (a kernel without MADV_FREE) only
            // keeps the pages resident.
            unsafe { libc::madvise(self.ptr.cast(), self.mapped, libc::MADV_FREE) };
            let old =
                SPARE.lock().unwrap_or_else(|p| p.into_inner()).replace(SpareMap { ptr: self.ptr, len: self.mapped });
            if let Some(m) = old {
                unmap(m.ptr, m.len);
            }
            return;
        }
        unmap(self.ptr, self.mapped);
    }
}

/// A copy-on-write mapping of the very file `cp` has open (the same device and inode, the same length),
/// or `None` when there is none to be had (not a file of this machine's file system, replaced since it was
/// opened, empty, or the mapping failed): the caller then copies.
fn private_map(cp: &Checkpoint) -> Option<Arc<PrivateMap>> {
    let owner = cp.owner()?;
    let len = usize::try_from(cp.file_len()).ok().filter(|&l| l > 0)?;
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(cp.path()).ok()?;
    let meta = file.metadata().ok()?;
    if (meta.dev(), meta.ino()) != (owner.dev, owner.ino) || meta.len() != cp.file_len() {
        return None;
    }
    // SAFETY: a new private mapping of an open descriptor (the mapping keeps its own reference to the
    // file); MAP_FAILED is checked. Checkpoint files are never modified after their rename into place, and
    // the core reuses a retired file's blocks only when nobody has it open or mapped (a lease), which this
    // mapping prevents, so the unwritten pages keep showing the bytes the core verified.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    Some(Arc::new(PrivateMap { ptr: ptr.cast(), len, mapped: len, anonymous: false }))
}

/// What a [`MappedBuffer`] shows.
enum Backing {
    /// The core's read-only mapping.
    Shared(MappedBytes),
    /// A private, copy-on-write mapping of the same file: writable.
    Private(Arc<PrivateMap>),
}

/// The bytes of one section of a memory-mapped checkpoint file, exposed through the buffer protocol
/// (format `B`): writable (a copy-on-write mapping: writes stay in this process) or read-only (a view of
/// the file's shared mapping). Views of it (numpy arrays, memoryviews) keep the file's mapping alive; the
/// mapping goes away when the last view does.
#[pyclass(module = "ckpt._ckpt", name = "MappedBuffer", frozen)]
pub struct MappedBuffer {
    backing: Backing,
    range: Range<usize>,
    section: Arc<str>,
    path: Arc<str>,
}

impl MappedBuffer {
    /// The first byte and the length of the section's bytes.
    fn raw(&self) -> (*mut u8, usize) {
        match &self.backing {
            Backing::Shared(bytes) => {
                let data = &(**bytes).as_ref()[self.range.clone()];
                (data.as_ptr().cast_mut(), data.len())
            }
            Backing::Private(map) => {
                debug_assert!(self.range.end <= map.len);
                // SAFETY: `range` lies within the file, which the mapping covers entirely (same length).
                (unsafe { map.ptr.add(self.range.start) }, self.range.len())
            }
        }
    }

    fn readonly(&self) -> bool {
        matches!(self.backing, Backing::Shared(_))
    }
}

#[pymethods]
impl MappedBuffer {
    /// Fills a contiguous, one-dimensional byte view; writable requests are refused when the buffer is
    /// read-only (a view of the file's shared mapping).
    ///
    /// # Safety
    ///
    /// Called by the interpreter with a valid `Py_buffer` to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no view to fill"));
        }
        let this = slf.get();
        let readonly = this.readonly();
        if readonly && flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "this checkpoint was loaded with writable=False: its arrays are read-only views of the file \
                 (load with the default writable=True, or copy, for writable data)",
            ));
        }
        let (ptr, len) = this.raw();
        let len = ffi::Py_ssize_t::try_from(len).map_err(|_| PyBufferError::new_err("section too large"))?;
        // SAFETY: `view` is valid (checked non-null; provided by the interpreter). The pointer and length
        // describe bytes of the mapping owned by `slf`, which PyBuffer_FillInfo stores (with a new
        // reference) in `view.obj`, so the mapping outlives the view. A read-only buffer (the shared
        // mapping, PROT_READ) is filled with readonly=1, so nothing writes through it; a private mapping is
        // readable and writable.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr.cast::<c_void>(), len, c_int::from(readonly), flags)
        };
        if rc == -1 { Err(PyErr::fetch(slf.py())) } else { Ok(()) }
    }

    /// Whether the buffer is read-only (a view of the file's shared mapping, `writable=False`).
    #[getter(readonly)]
    fn is_readonly(&self) -> bool {
        self.readonly()
    }

    fn __len__(&self) -> usize {
        self.range.len()
    }

    fn __repr__(&self) -> String {
        format!("<ckpt.MappedBuffer: {} bytes of section `{}` of {}>", self.range.len(), self.section, self.path)
    }

    /// The file this buffer maps.
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// The section this buffer holds.
    #[getter]
    fn section(&self) -> &str {
        &self.section
    }
}

/// The pickler's `persistent_id` hook, called for every object pickled: it filters out, at C speed,
/// everything but `bytes`, `bytearray` and `memoryview` objects of at least `min` bytes, and hands those
/// to `slow` (the Python function that sends them out of band).
#[pyclass(module = "ckpt._ckpt", name = "PersistentIds", frozen)]
pub struct PersistentIds {
    slow: Py<PyAny>,
    min: usize,
}

#[pymethods]
impl PersistentIds {
    #[new]
    fn new(slow: Py<PyAny>, min: usize) -> PersistentIds {
        PersistentIds { slow, min }
    }

    fn __call__<'py>(&self, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = obj.py();
        let candidate = if obj.is_exact_instance_of::<PyBytes>() || obj.is_exact_instance_of::<PyByteArray>() {
            obj.len()? >= self.min
        } else {
            obj.is_exact_instance_of::<PyMemoryView>()
        };
        if candidate { self.slow.bind(py).call1((obj,)) } else { Ok(py.None().into_bound(py)) }
    }
}

/// The buffers of one save, exported from their Python objects for as long as the save runs.
pub struct Inputs {
    stream: PyUntypedBuffer,
    buffers: Vec<PyUntypedBuffer>,
    item_sizes: Vec<usize>,
}

fn export(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<PyUntypedBuffer> {
    let buf = PyUntypedBuffer::get(obj)?;
    if !buf.is_c_contiguous() && !buf.is_fortran_contiguous() {
        return Err(PyBufferError::new_err(format!("{what} is not contiguous")));
    }
    Ok(buf)
}

impl Inputs {
    /// Exports the stream and every out-of-band buffer (contiguous buffer-protocol objects with at least
    /// one dimension, such as `PickleBuffer.raw()`). `item_sizes` gives each buffer's element size for
    /// the byte-shuffle filter (default: the exported item size).
    pub fn new(
        stream: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyList>,
        item_sizes: Option<Vec<usize>>,
    ) -> PyResult<Inputs> {
        let stream = export(stream, "the pickle stream")?;
        let buffers = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| export(&b, &format!("out-of-band buffer {i}")))
            .collect::<PyResult<Vec<_>>>()?;
        let item_sizes = match item_sizes {
            Some(sizes) if sizes.len() == buffers.len() => sizes,
            Some(sizes) => {
                return Err(PyValueError::new_err(format!("{} item sizes for {} buffers", sizes.len(), buffers.len())));
            }
            None => buffers.iter().map(|b| b.item_size()).collect(),
        };
        Ok(Inputs { stream, buffers, item_sizes })
    }

    /// Borrowed views of the exported memory, for use without the GIL (see [`Inputs`]).
    pub fn views(&self) -> Views<'_> {
        // SAFETY: each buffer is contiguous (checked in `export`), so `len_bytes` bytes from `buf_ptr` are
        // its memory; the exports (and so the memory) stay valid while `self` lives, which bounds the
        // returned lifetime. Python code running in other threads could still modify the objects during
        // the save (the documentation asks not to); bytearrays cannot be resized while exported.
        let view = |b: &PyUntypedBuffer| -> &[u8] {
            let len = b.len_bytes();
            // SAFETY: as above: `len` contiguous bytes at `buf_ptr`, valid while `self` lives.
            if len == 0 { &[] } else { unsafe { std::slice::from_raw_parts(b.buf_ptr().cast::<u8>(), len) } }
        };
        Views {
            stream: view(&self.stream),
            buffers: self.buffers.iter().map(view).zip(self.item_sizes.iter().copied()).collect(),
        }
    }
}

/// What a save writes: the stream and (bytes, element size) per buffer.
pub struct Views<'a> {
    stream: &'a [u8],
    buffers: Vec<(&'a [u8], usize)>,
}

impl<'a> Views<'a> {
    /// Views of bytes held elsewhere (a background save's captured copy).
    pub fn from_parts(stream: &'a [u8], buffers: Vec<(&'a [u8], usize)>) -> Views<'a> {
        Views { stream, buffers }
    }

    /// The stream and (bytes, element size) per buffer.
    pub fn parts(&self) -> (&'a [u8], &[(&'a [u8], usize)]) {
        (self.stream, &self.buffers)
    }
}

/// Header metadata: the metrics given with a save (a JSON object), shown by `ckpt inspect` and `ckpt list`
/// and used by best-metric retention.
pub const METRICS_KEY: &str = "metrics";

/// Writes a Python checkpoint's sections into `w` (no GIL needed).
pub fn write_sections(
    w: &mut CheckpointWriter,
    views: &Views<'_>,
    compression: Compression,
    metrics: Option<&str>,
) -> Result<(), Error> {
    w.set_metadata(FORMAT_KEY, FORMAT_VERSION)?;
    if let Some(m) = metrics {
        w.set_metadata(METRICS_KEY, m)?;
    }
    w.set_metadata(BUFFERS_KEY, views.buffers.len().to_string())?;
    let opts = SectionOptions::new().compression(compression).encoding(Encoding::Pickle5);
    w.add_section_with(PICKLE_SECTION, views.stream, opts)?;
    for (i, (data, item_size)) in views.buffers.iter().enumerate() {
        let mut opts = SectionOptions::new().compression(compression);
        // Byte-shuffling numbers before zstd groups their similar high bytes: much better ratios.
        if compression != Compression::None && matches!(item_size, 2 | 4 | 8 | 16) {
            opts = opts.shuffle(*item_size as u16);
        }
        w.add_section_with(&buffer_section(i), data, opts)?;
    }
    Ok(())
}

/// Parses a compression setting (`None`: `default`).
pub fn compression(py: Python<'_>, text: Option<&str>, default: Compression) -> PyResult<Compression> {
    match text {
        None => Ok(default),
        Some(t) => Compression::parse(t).py_err(py),
    }
}

/// Names of the sections of a Python checkpoint, stream first; an error when `cp` is not one.
fn section_names(cp: &Checkpoint) -> Result<Vec<String>, Error> {
    let entry = cp.section(PICKLE_SECTION).map_err(|e| {
        if e.kind() != ErrorKind::SectionNotFound {
            return e;
        }
        let names: Vec<&str> = cp.sections().iter().map(|s| s.name.as_str()).take(8).collect();
        Error::new(
            ErrorKind::SectionNotFound,
            format!(
                "not a Python checkpoint: it has no `{PICKLE_SECTION}` section (it has {}{}); it was not written by \
                 ckpt.save",
                if names.is_empty() { "no sections".to_string() } else { names.join(", ") },
                if cp.sections().len() > names.len() { ", ..." } else { "" }
            ),
        )
        .with_path(cp.path())
    })?;
    if entry.encoding != Encoding::Pickle5 {
        return Err(Error::new(
            ErrorKind::Encoding,
            format!("section is encoded as {}, not pickle5", entry.encoding.name()),
        )
        .with_section(PICKLE_SECTION)
        .with_path(cp.path()));
    }
    let count = cp
        .metadata(BUFFERS_KEY)
        .ok_or_else(|| Error::corrupt(format!("the header has no `{BUFFERS_KEY}` entry")).with_path(cp.path()))?;
    let count: usize = std::str::from_utf8(count)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &usize| n <= cp.sections().len())
        .ok_or_else(|| {
            Error::corrupt(format!("the header's `{BUFFERS_KEY}` entry is not a valid count")).with_path(cp.path())
        })?;
    let mut names = vec![PICKLE_SECTION.to_string()];
    for i in 0..count {
        let name = buffer_section(i);
        cp.section(&name)?;
        names.push(name);
    }
    Ok(names)
}

/// The mapped bytes of a whole file and one section's range in it.
type View = (MappedBytes, Range<usize>);

enum Target {
    /// A raw section of a mapped file: handed out as a view.
    View,
    /// Decoded into a new bytearray at this address.
    Copy { obj: Py<PyByteArray>, ptr: usize, len: usize },
}

/// Reads a Python checkpoint's stream and buffers: `(stream, [buffers])`, each a [`MappedBuffer`] (zero
/// copy) or a `bytearray`.
/// `verify`: check every byte of the file first (CRC of every section, the padding); otherwise only the
/// pickle stream and the sections that are copied are checked, and memory-mapped raw sections are handed
/// out without being read.
/// `writable`: mapped sections are views of a private, copy-on-write mapping of the file (writable, writes
/// stay in this process); when none can be made they are copied. Otherwise they are read-only views of
/// the core's shared mapping.
pub fn read_sections<'py>(
    py: Python<'py>,
    cp: &Checkpoint,
    verify: bool,
    writable: bool,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyList>)> {
    read_sections_in(py, cp, verify, writable, None)
}

/// [`read_sections`] for a checkpoint read whole into private memory (`crate::whole`): `owned` is that
/// memory, of which the sections are writable views when `writable`.
pub fn read_sections_in<'py>(
    py: Python<'py>,
    cp: &Checkpoint,
    verify: bool,
    writable: bool,
    owned: Option<Arc<PrivateMap>>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyList>)> {
    let names = section_names(cp).py_err(py)?;
    let private = match owned {
        Some(map) => writable.then_some(map),
        None if writable && cp.is_mapped() => py.detach(|| private_map(cp)),
        None => None,
    };
    // Mapped sections can be handed out as views: read-only ones, or writable ones of the private mapping.
    let views_ok = cp.is_mapped() && (!writable || private.is_some());
    let mut targets = Vec::with_capacity(names.len());
    for name in &names {
        let entry = cp.section(name).py_err(py)?;
        if views_ok && entry.codec == Codec::None {
            targets.push(Target::View);
            continue;
        }
        let len = usize::try_from(entry.raw_len)
            .ok()
            .and_then(|l| ffi::Py_ssize_t::try_from(l).ok().map(|_| l))
            .ok_or_else(|| PyMemoryError::new_err(format!("section `{name}` is too large for this machine")))?;
        // SAFETY: a NULL source asks for an uninitialised bytearray of `len` bytes; every byte is written by
        // `read_into` below before Python code can see the object (on failure the object is dropped).
        let raw = unsafe { ffi::PyByteArray_FromStringAndSize(std::ptr::null(), len as ffi::Py_ssize_t) };
        // SAFETY: `raw` is a new reference or NULL with an exception set.
        let obj = unsafe { Bound::from_owned_ptr_or_err(py, raw)? }.cast_into::<PyByteArray>()?;
        // SAFETY: `obj` is a bytearray that nothing else references yet.
        let ptr = unsafe { ffi::PyByteArray_AsString(obj.as_ptr()) } as usize;
        targets.push(Target::Copy { obj: obj.unbind(), ptr, len });
    }
    // None: a view of the mapping; Some((address, length)): decode into that bytearray.
    let copies: Vec<Option<(usize, usize)>> = targets
        .iter()
        .map(|t| match t {
            Target::View => None,
            Target::Copy { ptr, len, .. } => Some((*ptr, *len)),
        })
        .collect();
    let views = py.detach(|| -> Result<Vec<Option<View>>, Error> {
        if verify {
            cp.verify()?;
        } else {
            cp.verify_section(PICKLE_SECTION)?;
        }
        let mut out = Vec::with_capacity(names.len());
        for (name, copy) in names.iter().zip(&copies) {
            match *copy {
                None if verify => out.push(cp.raw_view(name)?),
                None => out.push(cp.raw_view_unverified(name)?),
                Some((ptr, len)) => {
                    let dst: &mut [u8] = if len == 0 {
                        &mut []
                    } else {
                        // SAFETY: the bytearray allocated above holds `len` bytes at `ptr`; it is referenced
                        // only by `targets`, which outlives this closure, and Python code cannot reach it
                        // (nor resize it) before the closure returns.
                        unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) }
                    };
                    cp.read_into(name, dst)?;
                    out.push(None);
                }
            }
        }
        Ok(out)
    });
    let views = views.py_err(py)?;
    // In-band numpy arrays of a stream in private memory: views of it instead of copies (see `inband`).
    let rewritten = match (&private, views.first()) {
        (Some(map), Some(Some((_, range)))) if range.end <= map.len => {
            let range = range.clone();
            py.detach(|| crate::inband::rewrite(&map.bytes()[range.clone()]).map(|r| (r, range)))
        }
        _ => None,
    };
    let path: Arc<str> = cp.path().to_string_lossy().into();
    let mut objs: Vec<Bound<'py, PyAny>> = Vec::with_capacity(names.len());
    for ((name, target), view) in names.iter().zip(targets).zip(views) {
        let obj = match (target, view) {
            (Target::Copy { obj, .. }, _) => obj.into_bound(py).into_any(),
            (Target::View, Some((bytes, range))) => {
                let backing = match &private {
                    Some(map) if range.end <= map.len => Backing::Private(map.clone()),
                    _ => Backing::Shared(bytes),
                };
                let section: Arc<str> = name.as_str().into();
                Bound::new(py, MappedBuffer { backing, range, section, path: path.clone() })?.into_any()
            }
            (Target::View, None) => {
                // Not mapped after all (cannot happen: decided above); read a copy instead.
                let data = cp.read(name).py_err(py)?;
                PyByteArray::new(py, &data).into_any()
            }
        };
        objs.push(obj);
    }
    let stream = objs.remove(0);
    let (Some((rewritten, stream_range)), Some(map)) = (rewritten, private) else {
        return Ok((stream, PyList::new(py, objs)?));
    };
    // One memoryview of the stream's private bytes, sliced per array (C-level views: numpy reads them fast).
    let whole =
        MappedBuffer { backing: Backing::Private(map), range: stream_range, section: PICKLE_SECTION.into(), path };
    let whole = PyMemoryView::from(&Bound::new(py, whole)?.into_any())?;
    let mut sections = objs.into_iter();
    let mut bufs: Vec<Bound<'py, PyAny>> = Vec::with_capacity(rewritten.pieces.len());
    for piece in rewritten.pieces {
        bufs.push(match piece {
            crate::inband::Piece::Section => sections.next().ok_or_else(|| {
                to_py(py, &Error::corrupt("the pickle stream wants more out-of-band buffers than the file has"))
            })?,
            crate::inband::Piece::InStream(r) => {
                let (start, end) = (isize::try_from(r.start)?, isize::try_from(r.end)?);
                whole.get_item(PySlice::new(py, start, end, 1))?
            }
        });
    }
    // Sections the stream does not consume (a damaged file): passed on, for the unpickler to judge.
    bufs.extend(sections);
    Ok((PyBytes::new(py, &rewritten.stream).into_any(), PyList::new(py, bufs)?))
}

/// A dict describing a checkpoint's header, for Python.
pub fn header_info<'py>(py: Python<'py>, cp: &Checkpoint) -> PyResult<Bound<'py, PyDict>> {
    let h = cp.header();
    let d = PyDict::new(py);
    d.set_item("file", cp.path().to_string_lossy().into_owned())?;
    d.set_item("generation", h.generation)?;
    // The file's signed field (FORMAT.md): a negative step of a file written while steps were signed reads
    // as written.
    d.set_item("step", h.app_step.cast_signed())?;
    d.set_item("created_unix_ns", h.created_unix_ns)?;
    d.set_item("job_id", &h.job_id)?;
    d.set_item("app_name", &h.app_name)?;
    d.set_item("host", &h.host)?;
    d.set_item("rank", h.rank)?;
    d.set_item("nranks", h.nranks)?;
    d.set_item("file_bytes", cp.file_len())?;
    d.set_item("mapped", cp.is_mapped())?;
    d.set_item("metrics", cp.metadata(METRICS_KEY).map(|m| String::from_utf8_lossy(m).into_owned()))?;
    // Who owns the file that was read, from its descriptor: what the trust check before unpickling judges.
    d.set_item("owner", cp.owner().map(|o| (o.uid, o.mode, o.dev, o.ino)))?;
    Ok(d)
}
