//! The names of a checkpoint directory: `<base>`, `<base>.<N>`, temporary files and spares.

use super::*;

/// A parsed file name within a checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// `<base>`: the newest checkpoint's stable name.
    Current,
    /// `<base>.<N>`: generation N.
    Generation(u64),
    /// `<base>.tmp.<host>.<pid>.<nonce>`: a save in progress or abandoned.
    Temporary {
        /// Writer's host.
        host: String,
        /// Writer's process id.
        pid: u32,
    },
    /// `<base>.tmp.spare`: a retired checkpoint kept for its blocks, which the next save overwrites.
    Spare,
}

/// Classifies `file_name` relative to checkpoint name `base`.
pub fn classify(base: &str, file_name: &str) -> Option<NameKind> {
    if file_name == base {
        return Some(NameKind::Current);
    }
    let rest = file_name.strip_prefix(base)?.strip_prefix('.')?;
    if rest == "tmp.spare" {
        return Some(NameKind::Spare);
    }
    if let Some(tmp) = rest.strip_prefix("tmp.") {
        let mut parts = tmp.rsplitn(3, '.');
        let _nonce = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?.to_string();
        return Some(NameKind::Temporary { host, pid });
    }
    if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) && !rest.starts_with('0') {
        return rest.parse().ok().map(NameKind::Generation);
    }
    None
}

/// If `file_name` is a checkpoint name of any job (`X.ckpt`, `X.S.ckpt`, or those with `.<N>`), its base.
pub fn any_base(file_name: &str) -> Option<&str> {
    if file_name.ends_with(".ckpt") {
        return Some(file_name);
    }
    let (base, number) = file_name.rsplit_once('.')?;
    (base.ends_with(".ckpt") && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

/// `<dir>/<base>.tmp.spare`: in the `.tmp.` names, which the library reserves for files that are never
/// checkpoints, so that it can never be a file of the user's (`begin_file` takes any path).
pub(super) fn spare_path(dir: &Path, base: &str) -> PathBuf {
    dir.join(format!("{base}.tmp.spare"))
}

/// `<parts root>/rank<R>.spare`: rank R's retired part, kept for its blocks.
pub(super) fn part_spare_path(parts_root: &Path, rank: u32) -> PathBuf {
    parts_root.join(format!("rank{rank}.spare"))
}

/// Whether `name` is a temporary file of some rank's part (`rank<R>.ckpt.tmp.<host>.<pid>.<nonce>`).
pub(super) fn is_part_temporary(name: &str) -> bool {
    let Some((base, _)) = name.split_once(".tmp.") else { return false };
    let rank = base.strip_prefix("rank").and_then(|b| b.strip_suffix(".ckpt"));
    rank.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        && matches!(classify(base, name), Some(NameKind::Temporary { .. }))
}

pub(super) fn has_spare(base: &str, entries: &[DirEntry]) -> bool {
    entries.iter().any(|e| e.is_file && e.name.to_str().and_then(|n| classify(base, n)) == Some(NameKind::Spare))
}

pub(super) fn nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_names() {
        assert_eq!(classify("7.ckpt", "7.ckpt"), Some(NameKind::Current));
        assert_eq!(classify("7.ckpt", "7.ckpt.12"), Some(NameKind::Generation(12)));
        assert_eq!(classify("7.ckpt", "7.ckpt.012"), None);
        assert_eq!(classify("7.ckpt", "7.ckpt.x"), None);
        assert_eq!(classify("7.ckpt", "7.ckpt.tmp.spare"), Some(NameKind::Spare));
        assert_eq!(classify("7.ckpt", "7.ckpt.tmp.spares"), None);
        assert_eq!(
            classify("7.ckpt", "7.ckpt.tmp.node-1.example.org.123.abc"),
            Some(NameKind::Temporary { host: "node-1.example.org".into(), pid: 123 })
        );
        assert_eq!(classify("7.ckpt", "7.1.ckpt"), None);
        assert_eq!(classify("7.ckpt", "77.ckpt"), None);
        assert_eq!(any_base("9.3.ckpt.4"), Some("9.3.ckpt"));
        assert_eq!(any_base("9.ckpt"), Some("9.ckpt"));
        assert_eq!(any_base("9.ckpt.tmp.h.1.2"), None);
        assert_eq!(any_base("notes.txt"), None);
    }
}
