//! Finding and opening a process image for `ckpt restart`: the trust rules for code, one descriptor per
//! image from the first check to the restorer, verification, and the choice of the newest good image.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ckpt_core::{Checkpoint, Config, Error, ErrorKind, LoadOptions};

use crate::{FdKind, ProcessImage, RegionKind};

/// A verified process image, its path and the descriptor it was verified through.
pub struct FoundImage {
    /// The file.
    pub path: PathBuf,
    /// The open file every check and the verification read: `ckpt restart` hands this very descriptor to
    /// the shim, which never opens the image by name.
    pub file: std::fs::File,
    /// Its state section.
    pub image: ProcessImage,
    /// The file's identity while it was verified ([`crate::verified_token`]).
    pub token: String,
}

/// Restoring an image runs its code as the calling user: refuse images another user could have written
/// (owned by someone else, or writable by group or others), unless CKPT_TRUST_IMAGES=1.
fn check_trusted(path: &Path, meta: &std::fs::Metadata) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    if !meta.is_file() {
        return Err(Error::invalid("not a regular file").with_path(path));
    }
    if std::env::var("CKPT_TRUST_IMAGES").as_deref() == Ok("1") {
        return Ok(());
    }
    let hint = "restoring it would run its code as you (CKPT_TRUST_IMAGES=1 overrides)";
    // The rules every load path applies (owner, writable by everyone, the directory)...
    let owner = ckpt_core::storage::FileOwner { uid: meta.uid(), mode: meta.mode(), dev: meta.dev(), ino: meta.ino() };
    ckpt_core::trust::check_owner(path, &owner)
        .map_err(|e| Error::new(e.kind(), format!("{}; {hint}", e.message())).with_path(path))?;
    // ...and, since an image is code, not data: not writable by the group either.
    if meta.mode() & 0o020 != 0 {
        return Err(Error::new(
            ckpt_core::ErrorKind::Untrusted,
            format!("the image is writable by its group (mode {:o}): {hint}", meta.mode() & 0o7777),
        )
        .with_path(path));
    }
    Ok(())
}

/// Opens `path` once; everything after (ownership, verification, reading) goes through that descriptor.
fn open_once(path: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: a FIFO planted at the name must not hang the open (it is refused as not a file).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Error::io("open", e).with_path(path))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", e).with_path(path))?;
    check_trusted(path, &meta)?;
    Ok(file)
}

/// Opens, checks (trust rules) and verifies the image at `path` through one descriptor; refuses an
/// image that changed while it was being verified.
pub fn open_image(path: &Path) -> Result<FoundImage, Error> {
    let file = open_once(path)?;
    let token = |f: &std::fs::File| {
        f.metadata().map(|m| crate::verified_token(&m)).map_err(|e| Error::io("stat", e).with_path(path))
    };
    let before = token(&file)?;
    // Mapped (CKPT_MMAP=0 reads instead): verifying is then one pass over the page cache, no copy.
    let mmap = Config::from_env(None).map(|c| c.mmap).unwrap_or(true);
    let clone = file.try_clone().map_err(|e| Error::io("dup", e).with_path(path))?;
    let cp = Checkpoint::open_with(&crate::OpenedFile(clone), path, LoadOptions::new().mmap(mmap))?;
    cp.verify()?;
    let image = crate::read(&cp)?;
    drop(cp);
    if token(&file)? != before {
        return Err(Error::new(ErrorKind::Conflict, "the image changed while it was being verified").with_path(path));
    }
    Ok(FoundImage { path: path.to_path_buf(), file, image, token: before })
}

/// The newest complete, verified process image in `dir` (this job's name first), with the reasons the
/// newer candidates were passed over.
///
/// Candidates are ordered by the time and sequence their (small, separately checksummed) state section
/// records, then verified in full newest first until one passes: the whole-file verification is one pass
/// over an image, so a restart pays it once, not once per generation. Names of one file (`<base>` is a
/// hard link to the newest `<base>.<N>`) count once.
pub fn discover_image(dir: &Path) -> Result<FoundImage, Error> {
    use std::os::unix::fs::MetadataExt;
    let mut files: Vec<(std::time::SystemTime, PathBuf, (u64, u64))> = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list the image directory", e).with_path(dir))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(base) = ckpt_core::any_base(&name) else { continue };
        if !matches!(
            ckpt_core::classify(base, &name),
            Some(ckpt_core::NameKind::Current | ckpt_core::NameKind::Generation(_))
        ) {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_file() {
            files.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), e.path(), (meta.dev(), meta.ino())));
        }
    }
    // This job's own name first, then everything else; newest first within each.
    let own = Config::from_env(None).ok().map(|c| c.base_name());
    let mine = |p: &PathBuf| {
        own.as_deref().is_some_and(|o| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(o)))
    };
    files.sort_by(|a, b| mine(&b.1).cmp(&mine(&a.1)).then(b.0.cmp(&a.0)));
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.2));
    let mut rejected = Vec::new();
    // (time, sequence, own name) of each candidate whose structure and state section check out: the newest
    // image wins, this job's name breaks ties.
    let mut candidates = Vec::new();
    for (_, path, _) in files {
        match peek_image(&path) {
            Ok(image) => candidates.push((image.time_unix, image.sequence, mine(&path), path)),
            Err(e) => rejected.push(format!("{}: {}", path.display(), e)),
        }
    }
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    let mut best = None;
    for (.., path) in candidates {
        match open_image(&path) {
            Ok(found) => {
                best = Some(found);
                break;
            }
            Err(e) => rejected.push(format!("{}: {}", path.display(), e)),
        }
    }
    for r in &rejected {
        if !r.contains("not a process image") {
            eprintln!("ckpt restart: skipped {r}");
        }
    }
    best.ok_or_else(|| {
        Error::new(ErrorKind::NoValidCheckpoint, "no complete, verified process image in the directory").with_path(dir)
    })
}

/// The process image's state, read without verifying the memory section: for ordering candidates.
pub fn peek_image(path: &Path) -> Result<ProcessImage, Error> {
    let file = open_once(path)?;
    let cp = Checkpoint::open_with(&crate::OpenedFile(file), path, LoadOptions::new().mmap(false))?;
    crate::read(&cp)
}

/// What would stop `image` from restarting here, checked before anything is executed.
pub fn check_restartable(image: &ProcessImage) -> Result<(), String> {
    if let Some(why) = crate::fingerprint_mismatch(&image.fingerprint, &crate::fingerprint()) {
        return Err(why);
    }
    let exe = Path::new(OsStr::from_bytes(&image.exe));
    let id_of = crate::FileIdentity::of;
    match std::fs::metadata(exe) {
        Ok(m) if id_of(&m) == image.exe_identity => {}
        Ok(_) => return Err(format!("the program {} changed since the checkpoint", exe.display())),
        Err(e) => return Err(format!("the program {}: {e}", exe.display())),
    }
    for r in &image.regions {
        if let (RegionKind::File, Some(id)) = (r.kind, &r.identity) {
            let p = Path::new(OsStr::from_bytes(&r.path));
            match std::fs::metadata(p) {
                Ok(m) if id_of(&m) == *id => {}
                Ok(_) => return Err(format!("{} changed since the checkpoint", p.display())),
                Err(e) => return Err(format!("{}: {e}", p.display())),
            }
        }
    }
    for f in &image.fds {
        if f.kind == FdKind::Regular {
            let p = Path::new(OsStr::from_bytes(&f.path));
            if let Err(e) = std::fs::metadata(p) {
                return Err(format!("file descriptor {} ({}): {e}", f.fd, p.display()));
            }
        }
    }
    Ok(())
}
