//! Protected memory regions, by number (`ckpt_protect`, `ckpt_unprotect`) or by name
//! (`ckpt_protect_named`, `ckpt_unprotect_named`), and how each is stored: a region is one section of the
//! checkpoint, `region.<id>` (its id also in the section's tag) for a numbered one, the name itself for a
//! named one. A restart finds a named region by its name, so protecting fields in another order, or a
//! new field between two others, never loads one array into another of the same size.

use std::ffi::{c_char, c_void};
use std::fmt;

use crate::state::*;
use crate::status::*;

/// What identifies a protected region: the id of `ckpt_protect` or the name of `ckpt_protect_named`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RegionKey {
    Id(i32),
    Name(String),
}

impl RegionKey {
    /// The name of the region's section in a checkpoint.
    pub(crate) fn section(&self) -> String {
        match self {
            RegionKey::Id(id) => section_name(*id),
            RegionKey::Name(name) => name.clone(),
        }
    }

    /// The section's tag: the id (as the format has always stored it), 0 for a named region.
    pub(crate) fn tag(&self) -> u32 {
        match self {
            RegionKey::Id(id) => *id as u32,
            RegionKey::Name(_) => 0,
        }
    }
}

/// How messages name a region: `region 3`, `region "e"`.
impl fmt::Display for RegionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionKey::Id(id) => write!(f, "region {id}"),
            RegionKey::Name(name) => write!(f, "region {name:?}"),
        }
    }
}

/// Reads and checks a region name: 1 to 64 bytes of UTF-8 (a section name), and not `region.<number>`,
/// the section of a numbered region.
pub(crate) fn region_name(name: *const c_char) -> FfiResult<String> {
    let name = c_str(name, "name", false)?.unwrap_or_default();
    if let Err(e) = ckpt_core::format::check_section_name(&name) {
        return Err(FfiError::new(CKPT_ERR_INVALID_ARGUMENT, format!("region name {name:?}: {e}")));
    }
    if name.strip_prefix("region.").is_some_and(|n| n.parse::<i32>().is_ok()) {
        return Err(FfiError::new(
            CKPT_ERR_INVALID_ARGUMENT,
            format!("region name {name:?} is how region number {} is stored: choose another name", &name[7..]),
        ));
    }
    Ok(name)
}

fn protect(key: RegionKey, ptr: *mut c_void, len: usize) -> FfiResult<i32> {
    if ptr.is_null() && len != 0 {
        return Err(FfiError::new(CKPT_ERR_NULL_ARGUMENT, format!("{key}: ptr is NULL but len is {len}")));
    }
    if len > isize::MAX as usize {
        return Err(FfiError::new(CKPT_ERR_TOO_LARGE, format!("{key}: len {len} is too large")));
    }
    with_state(|s| {
        s.regions.insert(key, Region { ptr: ptr.cast(), len });
        Ok(CKPT_OK)
    })
}

fn unprotect(key: RegionKey) -> FfiResult<i32> {
    with_state(|s| match s.regions.remove(&key) {
        Some(_) => Ok(CKPT_OK),
        None => Err(FfiError::new(CKPT_ERR_UNKNOWN_REGION, format!("{key} is not protected"))),
    })
}

/// Registers `len` bytes at `ptr` as region `id` (any integer), to be saved by `ckpt_checkpoint` and
/// restored by `ckpt_restart`. Protecting an id again replaces its pointer and length (after a resize).
///
/// The memory stays owned by the caller and must remain valid until `ckpt_unprotect(id)` or
/// `ckpt_finalize`. `ptr` may be NULL only when `len` is 0. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_protect(id: i32, ptr: *mut c_void, len: usize) -> i32 {
    guard(|| protect(RegionKey::Id(id), ptr, len))
}

/// Forgets region `id`. Returns `CKPT_ERR_UNKNOWN_REGION` if it was not protected. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_unprotect(id: i32) -> i32 {
    guard(|| unprotect(RegionKey::Id(id)))
}

/// Registers `len` bytes at `ptr` as the region called `name`, to be saved by `ckpt_checkpoint` and
/// restored by `ckpt_restart`, like `ckpt_protect` but by name: the name is stored in the checkpoint
/// (as the name of the region's section) and a restart reads each named region from the section of that
/// name, so fields protected in another order, or a field inserted between two others, are restored
/// into the right memory or refused with a message naming the region (`region "e" is not in this
/// checkpoint`), never loaded into another region of the same size. Protecting a name again replaces its
/// pointer and length (after a resize). Named and numbered regions can be mixed in one program.
///
/// `name`: 1 to 64 bytes of UTF-8, not `region.<number>` (how `ckpt_protect`'s region `<number>` is
/// stored); copied. Returns `CKPT_ERR_NULL_ARGUMENT` when `name` is NULL, or `ptr` is NULL and `len` is
/// not 0, and `CKPT_ERR_INVALID_ARGUMENT` for a name that is empty, too long or reserved.
///
/// The memory stays owned by the caller and must remain valid until `ckpt_unprotect_named(name)` or
/// `ckpt_finalize`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_protect_named(name: *const c_char, ptr: *mut c_void, len: usize) -> i32 {
    guard(|| protect(RegionKey::Name(region_name(name)?), ptr, len))
}

/// Forgets the region called `name` (read during the call only). Returns `CKPT_ERR_UNKNOWN_REGION` if no
/// region of that name is protected, `CKPT_ERR_NULL_ARGUMENT` when `name` is NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_unprotect_named(name: *const c_char) -> i32 {
    guard(|| unprotect(RegionKey::Name(region_name(name)?)))
}
