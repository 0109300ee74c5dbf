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

/// The newest complete, verified process image in `dir` *of this run*, with the reasons the newer
/// candidates were passed over.
///
/// Which images are this run's follows the rules of `ckpt_core::identity`, as for every checkpoint:
///
/// 1. Images under this job's own name (`<job>.ckpt`, `<array job>_<task>.ckpt`, or `CKPT_NAME`), newest
///    first; one whose recorded identity names another user or another array task is refused with a
///    message.
/// 2. None of its own: images of other names, this user's, of the same array task (or none), as a
///    resubmitted job finds its predecessor's. When they come from more than one run (another command
///    line or working directory: the points of a sweep sharing a directory), restart refuses to guess
///    and lists them; `CKPT_RESUME_FROM=<job>` names the job, `CKPT_RESUME_FROM=any` takes the newest
///    whatever wrote it, `CKPT_RESUME_FROM=none` allows only this job's own name.
///
/// Within the chosen set, candidates are ordered by the time and sequence their (small, separately
/// checksummed) state section records, then verified in full newest first until one passes: the
/// whole-file verification is one pass over an image, so a restart pays it once, not once per
/// generation. Names of one file (`<base>` is a hard link to the newest `<base>.<N>`) count once.
pub fn discover_image(dir: &Path) -> Result<FoundImage, Error> {
    use ckpt_core::identity::{ResumeFrom, RunIdentity};
    use std::os::unix::fs::MetadataExt;
    let mut files: Vec<(PathBuf, (u64, u64))> = Vec::new();
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
            files.push((e.path(), (meta.dev(), meta.ino())));
        }
    }
    files.sort();
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.1));
    let config = Config::from_env(None).ok();
    let own = config.as_ref().map(|c| c.base_name());
    let resume_from = config.as_ref().map(|c| c.resume_from.clone()).unwrap_or_default();
    let my_task = config.as_ref().and_then(|c| c.identity.array_task.clone());
    let me = ckpt_core::identity::effective_uid();
    let is_own = |p: &Path| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        own.as_deref().is_some_and(|o| ckpt_core::any_base(name) == Some(o))
    };
    let mut rejected = Vec::new();
    // (time, sequence, path, identity) of each candidate whose structure and state section check out.
    let mut own_candidates = Vec::new();
    let mut others = Vec::new();
    for (path, _) in files {
        match peek_image(&path) {
            Ok((image, identity)) => {
                let entry = (image.time_unix, image.sequence, path.clone(), identity);
                if is_own(&path) { own_candidates.push(entry) } else { others.push(entry) }
            }
            Err(e) => rejected.push(format!("{}: {}", path.display(), e)),
        }
    }
    let newest_first = |v: &mut Vec<(f64, u64, PathBuf, Option<RunIdentity>)>| {
        v.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    };
    // Another user's image, or another array task's, is never this run's (whatever its name).
    let foreign = |id: &Option<RunIdentity>| -> Option<String> {
        let id = id.as_ref()?;
        if id.uid != me {
            return Some(format!("written by uid {}, not by you (uid {me})", id.uid));
        }
        if id.array_task != my_task {
            return Some(format!(
                "it belongs to array task {}, this run is array task {}",
                id.array_task.as_deref().unwrap_or("(none)"),
                my_task.as_deref().unwrap_or("(none)")
            ));
        }
        None
    };
    newest_first(&mut own_candidates);
    newest_first(&mut others);
    let mut chosen = Vec::new();
    for c in own_candidates {
        match foreign(&c.3) {
            Some(why) => rejected.push(format!("{}: {why}", c.2.display())),
            None => chosen.push(c.2),
        }
    }
    if chosen.is_empty() && resume_from != ResumeFrom::OwnOnly {
        let mut eligible: Vec<_> = others
            .into_iter()
            .filter(|c| match foreign(&c.3) {
                Some(why) => {
                    rejected.push(format!("{}: {why}", c.2.display()));
                    false
                }
                None => true,
            })
            .filter(|c| match &resume_from {
                ResumeFrom::Job(job) => c.3.as_ref().and_then(|i| i.job.as_deref()) == Some(job.as_str()),
                _ => true,
            })
            .collect();
        // Runs, told apart by command line and working directory (a resubmitted job keeps both).
        let run_of = |c: &(f64, u64, PathBuf, Option<RunIdentity>)| match &c.3 {
            Some(id) => format!("{} in {}", id.cmdline, id.cwd),
            None => "an image without a recorded identity (written by an older ckpt)".to_string(),
        };
        let mut runs: Vec<String> = Vec::new();
        for c in &eligible {
            let r = run_of(c);
            if !runs.contains(&r) {
                runs.push(r);
            }
        }
        if runs.len() > 1 && resume_from == ResumeFrom::Auto {
            let listing: Vec<String> = runs
                .iter()
                .map(|r| {
                    let newest = eligible.iter().find(|c| run_of(c) == *r).map(|c| c.2.display().to_string());
                    format!("  {r} (newest: {})", newest.unwrap_or_default())
                })
                .collect();
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "the directory holds process images of {} different runs and none under this job's name ({}); \
                     restart refuses to guess which one to resume:\n{}\nname the image (`ckpt restart IMAGE`), \
                     the job (CKPT_RESUME_FROM=<job id>), or take the newest whichever run wrote it \
                     (CKPT_RESUME_FROM=any)",
                    runs.len(),
                    own.as_deref().unwrap_or("none"),
                    listing.join("\n")
                ),
            )
            .with_path(dir));
        }
        eligible.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        chosen.extend(eligible.into_iter().map(|c| c.2));
    }
    let mut best = None;
    for path in chosen {
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
        Error::new(ErrorKind::NoValidCheckpoint, "no complete, verified process image of this run in the directory")
            .with_path(dir)
    })
}

/// The process image's state, read without verifying the memory section: for ordering candidates.
pub fn peek_image(path: &Path) -> Result<(ProcessImage, Option<ckpt_core::identity::RunIdentity>), Error> {
    let file = open_once(path)?;
    let cp = Checkpoint::open_with(&crate::OpenedFile(file), path, LoadOptions::new().mmap(false))?;
    let identity = ckpt_core::identity::RunIdentity::of_header(cp.header()).and_then(Result::ok);
    Ok((crate::read(&cp)?, identity))
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
