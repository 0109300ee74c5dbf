//! The one error type of `ckpt-core`.
//!
//! Every failure is an [`Error`] carrying an [`ErrorKind`] (what went wrong, stable and matchable), the
//! file it concerns, the section when there is one, and a precise human message. The C ABI maps each kind
//! to a stable status code and the Python module to an exception subclass, so the taxonomy is defined
//! once, here.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong, independent of where.
///
/// New kinds may be added in minor releases: match with a wildcard arm.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An operating-system I/O call failed (see [`Error::io_error_kind`] and the source error).
    Io,
    /// The file or checkpoint asked for does not exist.
    NotFound,
    /// The bytes are not a valid checkpoint: bad magic, checksum mismatch, bad offsets, truncation.
    Corrupt,
    /// The file was written by a newer format version than this library reads.
    UnsupportedVersion,
    /// A size read from a file or given by the caller exceeds a documented limit.
    TooLarge,
    /// The caller passed a bad value (a malformed time string, an empty name, a duplicate section...).
    InvalidArgument,
    /// Checkpoints exist but none of them verifies (and starting fresh was not allowed).
    NoValidCheckpoint,
    /// Another writer holds the name or generation being written, or the files under this run's name
    /// belong to another run (see [`crate::identity`]).
    Conflict,
    /// The requested section is not in the checkpoint.
    SectionNotFound,
    /// A typed section could not be encoded or decoded (serde).
    Encoding,
    /// An operation was called in the wrong state (for example after `commit`).
    InvalidState,
    /// The file could have been written or replaced by someone other than this user (another owner, a
    /// world-writable file, a world-writable directory without the sticky bit): it is not loaded (see
    /// SECURITY.md and [`crate::trust`]).
    Untrusted,
}

impl ErrorKind {
    /// A short lower-case name for the kind, stable across releases (used in logs and JSON output).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::NotFound => "not found",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::UnsupportedVersion => "unsupported version",
            ErrorKind::TooLarge => "too large",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::NoValidCheckpoint => "no valid checkpoint",
            ErrorKind::Conflict => "conflict",
            ErrorKind::SectionNotFound => "section not found",
            ErrorKind::Encoding => "encoding",
            ErrorKind::InvalidState => "invalid state",
            ErrorKind::Untrusted => "untrusted",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure of a `ckpt-core` operation: kind, file, section and message.
///
/// `Display` prints the whole story once: the file, the section, the message and, for an I/O failure,
/// the operating system's message (`/x/heat.ckpt: fsync: No space left on device (os error 28)`). As the
/// Rust API guidelines ask, a cause is either printed by `Display` or returned by
/// [`source`](std::error::Error::source), never both, so error reporters that walk the chain (anyhow,
/// eyre, `{:#}`) print each message once: an I/O error is part of the message (use
/// [`Error::io_error`], [`Error::io_error_kind`] or [`Error::raw_os_error`] to inspect it), and a cause
/// attached with [`Error::with_source`] is returned by `source()` and not printed.
pub struct Error {
    kind: ErrorKind,
    path: Option<PathBuf>,
    section: Option<String>,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// Whether `message` already carries the source's message (then `source()` does not return it).
    source_in_message: bool,
}

/// The result type of `ckpt-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message (lower-case, no trailing period).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, path: None, section: None, message: message.into(), source: None, source_in_message: false }
    }

    /// An I/O error while doing `what` (for example "fsync"), keeping the OS error as the source.
    ///
    /// `ENOENT` becomes [`ErrorKind::NotFound`]; everything else is [`ErrorKind::Io`].
    pub fn io(what: &str, err: io::Error) -> Error {
        let kind = if err.kind() == io::ErrorKind::NotFound { ErrorKind::NotFound } else { ErrorKind::Io };
        Error {
            kind,
            path: None,
            section: None,
            message: format!("{what}: {err}"),
            source: Some(Box::new(err)),
            source_in_message: true,
        }
    }

    /// Shorthand for a [`ErrorKind::Corrupt`] error.
    pub fn corrupt(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Corrupt, message)
    }

    /// Shorthand for an [`ErrorKind::InvalidArgument`] error.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// Attaches the file this error concerns (kept if one is already set).
    #[must_use]
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Error {
        if self.path.is_none() {
            self.path = Some(path.as_ref().to_path_buf());
        }
        self
    }

    /// Attaches the section this error concerns (kept if one is already set).
    #[must_use]
    pub fn with_section(mut self, section: impl Into<String>) -> Error {
        if self.section.is_none() {
            self.section = Some(section.into());
        }
        self
    }

    /// Attaches an underlying cause, returned by [`source`](std::error::Error::source) (and not printed
    /// by `Display`: reporters that walk the chain print it).
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self.source_in_message = false;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file concerned, when known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The section concerned, when known.
    pub fn section(&self) -> Option<&str> {
        self.section.as_deref()
    }

    /// The message without file and section.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The operating-system error this error wraps, if any (its message is part of this error's).
    #[must_use]
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_ref().and_then(|s| s.downcast_ref::<io::Error>())
    }

    /// The OS error kind when this error wraps an `std::io::Error`.
    pub fn io_error_kind(&self) -> Option<io::ErrorKind> {
        self.source.as_ref().and_then(|s| s.downcast_ref::<io::Error>()).map(io::Error::kind)
    }

    /// The raw OS error number when this error wraps one (for C's `errno` and Python's `OSError`).
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.as_ref().and_then(|s| s.downcast_ref::<io::Error>()).and_then(io::Error::raw_os_error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        if let Some(section) = &self.section {
            write!(f, "section `{section}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("section", &self.section)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if self.source_in_message {
            return None;
        }
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match err.kind {
            ErrorKind::NotFound | ErrorKind::SectionNotFound => io::ErrorKind::NotFound,
            ErrorKind::Io => err.io_error_kind().unwrap_or(io::ErrorKind::Other),
            ErrorKind::InvalidArgument => io::ErrorKind::InvalidInput,
            ErrorKind::Corrupt | ErrorKind::Encoding => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_and_section() {
        let e = Error::corrupt("crc32 mismatch: expected 0x00000001, found 0x00000002")
            .with_section("field")
            .with_path("/x/1.ckpt");
        assert_eq!(e.to_string(), "/x/1.ckpt: section `field`: crc32 mismatch: expected 0x00000001, found 0x00000002");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn io_keeps_errno() {
        let e = Error::io("write", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        let e = Error::io("open", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    /// Renders `e` as error reporters do (anyhow's `{:#}`): each message of the chain, joined by ": ".
    fn report(e: &(dyn std::error::Error + 'static)) -> String {
        let mut parts = vec![e.to_string()];
        let mut cur = e.source();
        while let Some(s) = cur {
            parts.push(s.to_string());
            cur = s.source();
        }
        parts.join(": ")
    }

    #[test]
    fn a_chain_prints_each_message_once() {
        let e = Error::io("open", io::Error::from_raw_os_error(libc::ENOTDIR)).with_path("/x/f");
        let text = report(&e);
        assert_eq!(text.matches("Not a directory").count(), 1, "{text}");
        assert!(text.starts_with("/x/f: open: Not a directory"), "{text}");
        assert_eq!(e.io_error().and_then(io::Error::raw_os_error), Some(libc::ENOTDIR));
        // A cause attached by the caller is the source, not part of the message.
        let e = Error::new(ErrorKind::Encoding, "decoding failed").with_source(io::Error::other("inner cause"));
        assert_eq!(e.to_string(), "decoding failed");
        assert_eq!(report(&e), "decoding failed: inner cause");
    }
}
