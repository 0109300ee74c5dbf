//! Who could have written a file: the ownership and permission rules every load path applies.
//!
//! A checkpoint (or process image) is loaded by restart only when nobody but this user could have written
//! or replaced it:
//!
//! * the file is owned by the effective user,
//! * it is not writable by every user, and
//! * its directory is not writable by every user, unless the directory has the sticky bit (as `/tmp`
//!   does: others can create files there but not replace or rename ours).
//!
//! Group-writable files and directories are accepted: on clusters, project directories are shared by a
//! group on purpose, and the group is trusted. Root is not special. The file's owner and mode come from
//! the descriptor that is read ([`crate::Checkpoint::owner`]), so a file swapped in after the check is
//! not the one loaded. Restart discovery skips an untrusted candidate with a warning and falls back to the
//! next one; explicit loads fail with [`ErrorKind::Untrusted`]. SECURITY.md has the whole threat model.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::identity::effective_uid;
use crate::reader::Checkpoint;
use crate::storage::FileOwner;

/// Why nobody should load `path`, whose descriptor says `owner`: empty when it may be loaded.
pub fn problems(path: &Path, owner: &FileOwner) -> Vec<String> {
    let me = effective_uid();
    let mut found = Vec::new();
    if owner.uid != me {
        found.push(format!("it is owned by {}, not by you ({})", user_label(owner.uid), user_label(me)));
    }
    if owner.mode & 0o002 != 0 {
        found.push(format!("every user can write it (mode {:o})", owner.mode & 0o7777));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(d) if d.mode() & 0o002 != 0 && d.mode() & 0o1000 == 0 => found.push(format!(
            "its directory {} is writable by every user and has no sticky bit, so anyone could have replaced it",
            dir.display()
        )),
        Ok(_) => {}
        Err(e) => found.push(format!("its directory {} cannot be checked: {e}", dir.display())),
    }
    found
}

/// Fails with [`ErrorKind::Untrusted`] unless the open file may be loaded (see the module documentation).
/// Files of storages without owners (in memory) pass.
///
/// # Errors
///
/// [`ErrorKind::Untrusted`] naming every reason: the file belongs to another user or is writable by every
/// user, or its directory is writable by every user without the sticky bit (or cannot be checked).
pub fn check(cp: &Checkpoint) -> Result<()> {
    match cp.owner() {
        Some(owner) => check_owner(cp.path(), &owner),
        None => Ok(()),
    }
}

/// Like [`check`], for a file opened elsewhere (the shim's process images).
///
/// # Errors
///
/// As [`check`].
pub fn check_owner(path: &Path, owner: &FileOwner) -> Result<()> {
    let found = problems(path, owner);
    if found.is_empty() {
        return Ok(());
    }
    Err(Error::new(ErrorKind::Untrusted, format!("refusing to load it: {} (see SECURITY.md)", found.join("; and ")))
        .with_path(path))
}

/// `uid 1000 (alice)`.
pub fn user_label(uid: u32) -> String {
    match user_name(uid) {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}

fn user_name(uid: u32) -> Option<String> {
    if cfg!(miri) {
        return None;
    }
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid value of this plain C struct, which getpwuid_r fills.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to memory this function owns for the duration of the call, and the
    // length is the buffer's; getpwuid_r is thread-safe.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`, which is still alive.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let me = effective_uid();
        let mine = FileOwner { uid: me, mode: 0o100_600, dev: 0, ino: 0 };
        assert!(problems(&path, &mine).is_empty());
        let other = FileOwner { uid: me.wrapping_add(1), ..mine };
        assert!(problems(&path, &other)[0].contains("not by you"), "{:?}", problems(&path, &other));
        let world = FileOwner { mode: 0o100_666, ..mine };
        assert!(problems(&path, &world)[0].contains("every user can write it"));
        let group = FileOwner { mode: 0o100_660, ..mine };
        assert!(problems(&path, &group).is_empty(), "group-writable files are accepted");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(problems(&path, &mine)[0].contains("no sticky bit"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(problems(&path, &mine).is_empty(), "a sticky world-writable directory is fine");
        let e = check_owner(&path, &other).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Untrusted);
        assert!(e.to_string().starts_with(&path.display().to_string()), "{e}");
    }
}
