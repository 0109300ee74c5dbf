//! The real file system's writer: the page cache for small files, direct I/O for large ones.
//!
//! A checkpoint file starts out buffered (the header and small sections). Once it reaches 1 MiB the
//! descriptor switches to `O_DIRECT`: from there the bytes are copied into 8 MiB aligned staging buffers
//! and an I/O thread writes each full buffer while the caller fills the next, so the copy overlaps the
//! device write (a caller buffer that is itself aligned and at an aligned offset
//! is written without a copy). Before the fsync the aligned rest goes direct and the unaligned tail
//! through the page cache.
//!
//! Why: buffered writes need fresh page-cache pages and then a writeback. On virtual machines fresh pages
//! are much slower when the memory sat idle and was handed back to the host, where direct writes run at
//! the device's speed whatever the state of memory (BENCHMARKS.md, "Where the time goes"). Direct writes also leave the application's page cache alone instead of filling it
//! with a checkpoint nobody reads until a restart. File systems that refuse `O_DIRECT` (at `fcntl` or at
//! the first write) get buffered writes with write-behind (`sync_file_range`), and `CKPT_DIRECT_IO=0`
//! asks for that everywhere: [`crate::Config::direct_io`], which the store hands to every file it creates
//! ([`super::WriteOptions`]; nothing here reads the environment).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::Instant;

use super::StorageWriter;

/// A file switches to direct I/O once it reaches this many bytes.
pub(super) const DIRECT_MIN_WRITE: usize = 1 << 20;
/// File offsets and buffer addresses of direct writes are multiples of this: the largest logical block
/// size of common devices (virtio and most SATA/NVMe disks report 512).
pub(super) const DIRECT_ALIGN: usize = 4096;
/// The size of one staging buffer.
pub(super) const DIRECT_STAGE: usize = 8 << 20;
/// Full staging buffers handed to the I/O thread and not yet written: with the one being filled, a save
/// holds at most this plus one buffers (24 MiB).
const MAX_IN_FLIGHT: usize = 2;
/// Staging buffers kept for the next save (a fresh buffer costs page faults, and host faults for memory
/// that was handed back while idle).
const POOL_KEEP: usize = 1;
/// Write-behind (buffered files only): once this many bytes are written past the last hint, their
/// writeback is started.
const WRITE_BEHIND_CHUNK: u64 = 8 << 20;
/// Write-behind keeps at most this many bytes under writeback and not yet waited for.
const WRITE_BEHIND_WINDOW: u64 = 32 << 20;

static IO_THREADS: AtomicBool = AtomicBool::new(true);

/// Makes checkpoint writes in this process write synchronously instead of starting an I/O thread, and
/// free removed files' blocks in the calling thread. For processes where creating a thread is not safe:
/// the `LD_PRELOAD` shim's writer is a raw clone of a program that may have been stopped inside the C
/// library's allocator.
pub fn disable_io_threads() {
    IO_THREADS.store(false, Ordering::Relaxed);
}

/// Whether storage may start threads (see [`disable_io_threads`]).
pub(crate) fn io_threads_allowed() -> bool {
    IO_THREADS.load(Ordering::Relaxed)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `file` lives in memory (tmpfs, ramfs: a node-local cache level in `/dev/shm`). Such a file
/// system accepts `O_DIRECT` (tmpfs since Linux 6.6) but copies the bytes into its pages all the same, so
/// direct mode would only add the staging copy: the bytes go from the caller's memory into the file's
/// pages in one copy instead.
#[cfg(target_os = "linux")]
fn in_memory_file_system(file: &File) -> bool {
    const TMPFS: i64 = 0x0102_1994;
    const RAMFS: i64 = 0x8584_58f6;
    crate::sys::fs_type_of_file(file).is_ok_and(|t| t == TMPFS || t == RAMFS)
}

#[cfg(not(target_os = "linux"))]
fn in_memory_file_system(_file: &File) -> bool {
    false
}

pub(super) static STAGING_POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A staging buffer: `DIRECT_STAGE` bytes at a `DIRECT_ALIGN`-aligned address inside `buf`.
struct Staging {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Staging {
    /// A pooled buffer, or a new one. A pooled buffer that is not one this module made (the pool of a
    /// process restored from an image written by a forked copy of it, say) is never used nor freed.
    fn take() -> Staging {
        let pooled = lock(&STAGING_POOL).pop();
        let buf = match pooled {
            Some(buf) if Staging::usable(&buf) => buf,
            Some(foreign) => {
                std::mem::forget(foreign);
                vec![0u8; DIRECT_STAGE + DIRECT_ALIGN]
            }
            None => vec![0u8; DIRECT_STAGE + DIRECT_ALIGN],
        };
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        Staging { buf, start, len: 0 }
    }

    /// Whether `buf` holds a whole aligned stage.
    fn usable(buf: &[u8]) -> bool {
        buf.len() == DIRECT_STAGE + DIRECT_ALIGN && buf.as_ptr().align_offset(DIRECT_ALIGN) < DIRECT_ALIGN
    }

    fn filled(&self) -> &[u8] {
        // `take` makes `start + DIRECT_STAGE` fit and `fill` keeps `len <= DIRECT_STAGE`.
        self.buf.get(self.start..self.start + self.len).unwrap_or_default()
    }

    fn is_full(&self) -> bool {
        self.len == DIRECT_STAGE
    }

    /// Copies as much of `data` as fits; returns how much (an error, never a panic, if the buffer is not
    /// what `take` made).
    fn fill(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(DIRECT_STAGE.saturating_sub(self.len));
        let at = self.start + self.len;
        let Some(dst) = self.buf.get_mut(at..at + n) else {
            return Err(io::Error::other(format!(
                "inconsistent staging buffer ({} bytes, {} staged at {}): checkpoint refused",
                self.buf.len(),
                self.len,
                self.start
            )));
        };
        dst.copy_from_slice(&data[..n]);
        self.len += n;
        Ok(n)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let mut pool = lock(&STAGING_POOL);
        if pool.len() < POOL_KEEP {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// A full staging buffer and where it goes; sent back with the write's result.
struct Job {
    staging: Staging,
    offset: u64,
    result: io::Result<()>,
    /// How long the write took.
    secs: f64,
}

/// The thread that writes full staging buffers while the caller fills the next one.
struct IoThread {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Job>,
    in_flight: usize,
    handle: Option<thread::JoinHandle<()>>,
}

impl IoThread {
    /// `None` when threads are disabled or cannot be created: the caller then writes synchronously.
    fn spawn(file: Arc<File>) -> Option<IoThread> {
        let (jobs, jobs_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<Job>();
        let handle = thread::Builder::new()
            .name("ckpt-io".into())
            .spawn(move || {
                for mut job in jobs_rx {
                    let start = Instant::now();
                    job.result = file.write_all_at(job.staging.filled(), job.offset);
                    job.secs = start.elapsed().as_secs_f64();
                    if done_tx.send(job).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(IoThread { jobs: Some(jobs), done, in_flight: 0, handle: Some(handle) })
    }

    fn submit(&mut self, job: Job) -> io::Result<()> {
        let sender = self.jobs.as_ref().expect("open until drop");
        sender.send(job).map_err(|_| io::Error::other("the checkpoint I/O thread has stopped"))?;
        self.in_flight += 1;
        Ok(())
    }

    fn wait_one(&mut self) -> io::Result<Job> {
        let job = self.done.recv().map_err(|_| io::Error::other("the checkpoint I/O thread has stopped"))?;
        self.in_flight -= 1;
        Ok(job)
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the writes in flight; joining keeps them from touching
        // the file after the writer is gone.
        self.jobs = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Direct mode: the buffer being filled, the file offset of its first byte (aligned), the I/O thread.
struct Direct {
    filling: Staging,
    offset: u64,
    io: Option<IoThread>,
}

/// Writes one checkpoint file of [`super::FileStorage`].
pub(super) struct FileWriter {
    file: Arc<File>,
    /// Bytes written so far (staged ones included): the offset of the next byte.
    pos: u64,
    direct: Option<Direct>,
    /// Cleared when the file system refuses `O_DIRECT` (or `CKPT_DIRECT_IO=0`).
    pub(super) direct_possible: bool,
    /// Bytes that went to the device with `O_DIRECT`.
    pub(super) direct_bytes: u64,
    /// Whether direct mode may start an I/O thread (see [`disable_io_threads`]).
    pub(super) threads: bool,
    /// Write-behind: writeback was started for `[0, started)` and waited for on `[0, waited)`.
    started: u64,
    waited: u64,
    /// Cleared when the file system does not support writeback ranges.
    write_behind: bool,
    /// Whether write-behind waits for the writeback more than [`WRITE_BEHIND_WINDOW`] behind (bounding
    /// the dirty page cache), or only starts it (the fsync waits).
    wait_behind: bool,
    /// A reused file (a spare) being overwritten: `sync` cuts off whatever of its old bytes lies past the
    /// new end.
    overwriting: bool,
    /// Seconds spent in write calls and the fsync, whoever made them (see `device_time`).
    device_secs: f64,
}

impl FileWriter {
    /// A writer of a new file; `direct_io` is the configuration's `CKPT_DIRECT_IO` ([`super::WriteOptions`]).
    pub(super) fn new(file: File, direct_io: bool) -> FileWriter {
        FileWriter {
            file: Arc::new(file),
            pos: 0,
            direct: None,
            direct_possible: direct_io,
            direct_bytes: 0,
            threads: IO_THREADS.load(Ordering::Relaxed),
            started: 0,
            waited: 0,
            write_behind: true,
            wait_behind: true,
            overwriting: false,
            device_secs: 0.0,
        }
    }

    /// A writer that overwrites an existing file from its first byte.
    /// This writer with the write-behind's wait on or off (see [`super::WriteOptions::bounded_writeback`]).
    pub(super) fn bounded_writeback(mut self, on: bool) -> FileWriter {
        self.wait_behind = on;
        self
    }

    /// This writer without write-behind: buffered writes only dirty the page cache, the fsync writes them
    /// (see [`super::WriteOptions::write_behind`]).
    pub(super) fn without_write_behind(mut self) -> FileWriter {
        self.write_behind = false;
        self
    }

    pub(super) fn overwriting(file: File, direct_io: bool) -> FileWriter {
        FileWriter { overwriting: true, ..FileWriter::new(file, direct_io) }
    }

    /// Turns `O_DIRECT` on or off for the descriptor; `Ok(false)` when the file system refuses it.
    #[cfg(target_os = "linux")]
    fn set_direct(&self, on: bool) -> io::Result<bool> {
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
    fn set_direct(&self, _on: bool) -> io::Result<bool> {
        Ok(false)
    }

    /// Switches to direct I/O for a large write when the file system allows it. The bytes up to the next
    /// aligned offset go through the page cache first; returns the rest of `buf`.
    fn enter_direct<'a>(&mut self, buf: &'a [u8]) -> io::Result<&'a [u8]> {
        let head = ((DIRECT_ALIGN as u64 - self.pos % DIRECT_ALIGN as u64) % DIRECT_ALIGN as u64) as usize;
        let head = head.min(buf.len());
        self.file.write_all_at(&buf[..head], self.pos)?;
        self.pos += head as u64;
        if !in_memory_file_system(&self.file) && self.set_direct(true)? {
            let io = if self.threads { IoThread::spawn(self.file.clone()) } else { None };
            self.direct = Some(Direct { filling: Staging::take(), offset: self.pos, io });
        } else {
            self.direct_possible = false;
        }
        Ok(&buf[head..])
    }

    /// A finished direct write: counts it, or, when the device refused the alignment (EINVAL), turns
    /// `O_DIRECT` off and writes the bytes again through the page cache (writes still in flight then
    /// finish either way, at their own offsets). Other errors are the save's.
    fn finished(&mut self, data: &[u8], offset: u64, result: io::Result<()>, secs: f64) -> io::Result<()> {
        self.device_secs += secs;
        match result {
            Ok(()) => {
                self.direct_bytes += data.len() as u64;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct_possible = false;
                self.set_direct(false)?;
                self.file.write_all_at(data, offset)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `data` (aligned address, length a multiple of the alignment) at `offset` from this thread.
    fn write_direct_now(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let start = Instant::now();
        let result = self.file.write_all_at(data, offset);
        self.finished(data, offset, result, start.elapsed().as_secs_f64())
    }

    /// Waits for one write of the I/O thread; returns its buffer, emptied.
    fn reap_one(&mut self) -> io::Result<Staging> {
        let io = self.direct.as_mut().and_then(|d| d.io.as_mut()).expect("an I/O thread with writes in flight");
        let job = io.wait_one()?;
        self.finished(job.staging.filled(), job.offset, job.result, job.secs)?;
        let mut staging = job.staging;
        staging.len = 0;
        Ok(staging)
    }

    fn in_flight(&self) -> usize {
        self.direct.as_ref().and_then(|d| d.io.as_ref()).map_or(0, |io| io.in_flight)
    }

    /// Hands the full staging buffer to the I/O thread (or writes it now) and starts a new one.
    fn submit_filling(&mut self) -> io::Result<()> {
        let next = if self.in_flight() >= MAX_IN_FLIGHT { self.reap_one()? } else { Staging::take() };
        let d = self.direct.as_mut().expect("direct mode");
        let full = std::mem::replace(&mut d.filling, next);
        let offset = d.offset;
        d.offset += full.len as u64;
        match d.io.as_mut() {
            Some(io) => io.submit(Job { staging: full, offset, result: Ok(()), secs: 0.0 }),
            None => self.write_direct_now(full.filled(), offset),
        }
    }

    /// Waits for every write of the I/O thread.
    fn drain(&mut self) -> io::Result<()> {
        while self.in_flight() > 0 {
            self.reap_one()?;
        }
        Ok(())
    }

    fn write_all_direct(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let d = self.direct.as_mut().expect("direct mode");
            // An aligned caller buffer at an aligned offset goes to the device without a copy.
            if d.filling.len == 0 && buf.len() >= DIRECT_ALIGN && buf.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
                let whole = buf.len() - buf.len() % DIRECT_ALIGN;
                let offset = d.offset;
                d.offset += whole as u64;
                self.drain()?;
                self.write_direct_now(&buf[..whole], offset)?;
                self.pos += whole as u64;
                buf = &buf[whole..];
                continue;
            }
            let n = d.filling.fill(buf)?;
            let full = d.filling.is_full();
            self.pos += n as u64;
            buf = &buf[n..];
            if full {
                self.submit_filling()?;
            }
        }
        Ok(())
    }

    /// Ends direct mode: waits for the I/O thread, writes the staged aligned bytes direct and the
    /// unaligned tail through the page cache.
    fn leave_direct(&mut self) -> io::Result<()> {
        if self.direct.is_none() {
            return Ok(());
        }
        self.drain()?;
        let Direct { filling, offset, io } = self.direct.take().expect("checked");
        drop(io);
        let staged = filling.filled();
        let whole = staged.len() - staged.len() % DIRECT_ALIGN;
        if self.direct_possible {
            self.write_direct_now(&staged[..whole], offset)?;
        } else {
            self.file.write_all_at(&staged[..whole], offset)?;
        }
        self.set_direct(false)?;
        self.file.write_all_at(&staged[whole..], offset + whole as u64)?;
        // Write-behind covers only what is written through the page cache from here on.
        self.started = self.pos;
        self.waited = self.pos;
        Ok(())
    }

    /// Buffered files: starts writeback of the data written since the last call, chunk by chunk, and
    /// waits for the data a window behind it, so that the final fsync finds most of the file already on
    /// its way to the disk and the dirty page cache a save leaves is bounded. `sync_file_range` is only a
    /// hint for durability (the fsync in `sync` makes the file durable) but its errors are real: waiting
    /// consumes a writeback error that a later fsync on this descriptor would no longer report.
    #[cfg(target_os = "linux")]
    fn write_behind(&mut self) -> io::Result<()> {
        if !self.write_behind {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let chunk = WRITE_BEHIND_CHUNK as libc::off64_t;
        while self.pos - self.started >= WRITE_BEHIND_CHUNK {
            // SAFETY: plain syscall on a descriptor this writer owns; no memory is passed.
            let rc =
                unsafe { libc::sync_file_range(fd, self.started as libc::off64_t, chunk, libc::SYNC_FILE_RANGE_WRITE) };
            if rc != 0 {
                return self.write_behind_failed();
            }
            self.started += WRITE_BEHIND_CHUNK;
        }
        while self.wait_behind && self.started - self.waited > WRITE_BEHIND_WINDOW {
            let flags =
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            // SAFETY: as above.
            let rc = unsafe { libc::sync_file_range(fd, self.waited as libc::off64_t, chunk, flags) };
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
        if self.direct.is_none() && self.direct_possible && self.pos + buf.len() as u64 >= DIRECT_MIN_WRITE as u64 {
            buf = self.enter_direct(buf)?;
        }
        if self.direct.is_some() {
            return self.write_all_direct(buf);
        }
        let start = Instant::now();
        self.file.write_all_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        let r = self.write_behind();
        self.device_secs += start.elapsed().as_secs_f64();
        r
    }

    fn sync(&mut self) -> io::Result<()> {
        self.leave_direct()?;
        if self.overwriting {
            self.file.set_len(self.pos)?;
        }
        let start = Instant::now();
        let r = self.file.sync_all();
        self.device_secs += start.elapsed().as_secs_f64();
        r
    }

    fn cut_to_written(&mut self) -> io::Result<()> {
        if self.overwriting && self.direct.is_none() {
            self.file.set_len(self.pos)?;
        }
        Ok(())
    }

    fn device_time(&self) -> Option<(u64, f64)> {
        Some((self.pos, self.device_secs))
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;

    /// Writes `data` as a sequence of writes of the given sizes (each taken at the given misalignment
    /// from an aligned buffer) through a real file; returns the file's bytes and how many went direct.
    fn write_file_in_pieces(direct: bool, threads: bool, pieces: &[(usize, usize)], data: &[u8]) -> (Vec<u8>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenOptions::new().write(true).create_new(true).open(&path).unwrap();
        let mut w = FileWriter::new(file, direct);
        w.threads = threads;
        // An aligned copy of the data, so pieces can start aligned (zero-copy path) or not.
        let mut backing = vec![0u8; data.len() + 2 * DIRECT_ALIGN];
        let base = backing.as_ptr().align_offset(DIRECT_ALIGN);
        let mut at = 0;
        for &(len, skew) in pieces {
            backing[base + skew..base + skew + len].copy_from_slice(&data[at..at + len]);
            w.write_all(&backing[base + skew..base + skew + len]).unwrap();
            assert_eq!(w.direct.as_ref().is_some_and(|d| d.io.is_some()), threads && w.direct.is_some());
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
        OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(dir.path().join("p")).is_ok()
    }

    #[test]
    fn round_trips_any_mix_of_small_large_aligned_and_unaligned_writes() {
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
                    0 => (next() % 5000) as usize,                                // small, coalesced
                    1 => DIRECT_MIN_WRITE + (next() % 10_000) as usize,           // large, odd length
                    2 => 2 * DIRECT_STAGE + DIRECT_ALIGN * (next() % 5) as usize, // several stages
                    _ => DIRECT_ALIGN * (1 + (next() % 600) as usize),            // aligned multiple
                };
                let skew = if next() % 2 == 0 { 0 } else { (next() % 4095) as usize + 1 };
                pieces.push((len, skew));
                total += len;
            }
            let data: Vec<u8> = (0..total).map(|_| next() as u8).collect();
            for (direct, threads) in [(true, true), (true, false), (false, false)] {
                let (got, direct_bytes) = write_file_in_pieces(direct, threads, &pieces, &data);
                assert!(
                    got == data,
                    "case {case} direct {direct} threads {threads}: file differs ({} vs {} bytes)",
                    got.len(),
                    data.len()
                );
                if !direct {
                    assert_eq!(direct_bytes, 0);
                } else if pieces.iter().any(|&(len, _)| len >= DIRECT_MIN_WRITE + DIRECT_ALIGN) {
                    // File systems that refuse O_DIRECT (tmpfs before Linux 6.6) fall back, so this only
                    // checks that the direct path really ran where it can.
                    assert!(direct_bytes > 0 || !direct_io_supported(), "case {case}: no byte went direct");
                }
            }
        }
    }

    /// A reused file is written over from its first byte and cut to the new length, shorter or longer
    /// than the old one, and the writer reports every byte with the time the writes took.
    #[test]
    fn overwriting_cuts_the_old_file_to_the_new_length_and_times_the_writes() {
        for (old_len, new_len) in [(3 * DIRECT_STAGE, DIRECT_STAGE + 123), (DIRECT_STAGE / 2, 2 * DIRECT_STAGE + 5)] {
            for threads in [true, false] {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("spare");
                fs::write(&path, vec![0xAAu8; old_len]).unwrap();
                let file = OpenOptions::new().write(true).open(&path).unwrap();
                let mut w = FileWriter::overwriting(file, true);
                w.threads = threads;
                let data: Vec<u8> = (0..new_len).map(|i| (i % 251) as u8).collect();
                w.write_all(&data[..100]).unwrap();
                w.write_all(&data[100..]).unwrap();
                w.sync().unwrap();
                let (bytes, secs) = w.device_time().expect("a file writer knows its write time");
                assert_eq!(bytes, new_len as u64);
                assert!(secs > 0.0);
                drop(w);
                assert!(fs::read(&path).unwrap() == data, "{old_len} -> {new_len}: the file is not the new bytes");
            }
        }
    }

    /// A pool holding a buffer this module did not make (a process restored from an image whose writer
    /// had pooled one: an empty vector, or one of another size) is neither used nor freed: the save goes on
    /// with a fresh buffer.
    /// The tests that look into the (process-wide) pool.
    static POOL_TESTS: Mutex<()> = Mutex::new(());

    #[test]
    fn foreign_pooled_buffers_are_not_used() {
        let _only = lock(&POOL_TESTS);
        let data: Vec<u8> = (0..DIRECT_STAGE * 2 + 4321).map(|i| (i % 253) as u8).collect();
        for foreign in [Vec::new(), vec![1u8; 100], vec![2u8; DIRECT_STAGE]] {
            lock(&STAGING_POOL).push(foreign);
            assert!(write_file_in_pieces(true, false, &[(data.len(), 0)], &data).0 == data);
            assert!(lock(&STAGING_POOL).iter().all(|b| Staging::usable(b)));
        }
    }

    #[test]
    fn staging_buffers_return_to_a_bounded_pool() {
        let _only = lock(&POOL_TESTS);
        let data = vec![7u8; DIRECT_STAGE * 5 + 123];
        for _ in 0..3 {
            assert_eq!(write_file_in_pieces(true, true, &[(data.len(), 0)], &data).0, data);
        }
        assert!(lock(&STAGING_POOL).len() <= POOL_KEEP);
    }
}
