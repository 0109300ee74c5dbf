//! One mapping from the core's [`ErrorKind`] to Python exceptions.
//!
//! The exception classes live in the pure-Python module `ckpt._errors` (so they can inherit from two
//! bases, such as `CheckpointError` and `ValueError`); I/O failures become the built-in `OSError`
//! subclasses chosen by their errno (`FileNotFoundError`, `PermissionError`, ...).

use ckpt_core::{Error, ErrorKind};
use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The name of the `ckpt` exception class for a core error kind (`None` for I/O kinds).
pub fn class_name(kind: ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::Io | ErrorKind::NotFound => return None,
        ErrorKind::Corrupt => "CorruptCheckpointError",
        ErrorKind::UnsupportedVersion => "UnsupportedVersionError",
        ErrorKind::TooLarge => "TooLargeError",
        ErrorKind::InvalidArgument => "InvalidArgumentError",
        ErrorKind::NoValidCheckpoint => "NoValidCheckpointError",
        ErrorKind::Conflict => "ConflictError",
        ErrorKind::SectionNotFound => "SectionNotFoundError",
        ErrorKind::Encoding => "EncodingError",
        ErrorKind::InvalidState => "InvalidStateError",
        ErrorKind::Untrusted => "UntrustedCheckpointError",
        _ => "CheckpointError",
    })
}

/// Drops the " (os error N)" that `std::io::Error`'s Display appends: Python prints the errno itself.
fn strip_os_error(message: &str) -> &str {
    match message.rfind(" (os error ") {
        Some(i) if message.ends_with(')') => &message[..i],
        _ => message,
    }
}

/// Converts a core error into the matching Python exception.
pub fn to_py(py: Python<'_>, err: &Error) -> PyErr {
    let Some(name) = class_name(err.kind()) else {
        return os_error(err);
    };
    match ckpt_exception(py, name, err) {
        Ok(e) => e,
        // The package is broken (ckpt._errors missing): still say what happened.
        Err(import_err) => PyRuntimeError::new_err(format!("{err} (and ckpt._errors is unusable: {import_err})")),
    }
}

fn ckpt_exception(py: Python<'_>, name: &str, err: &Error) -> PyResult<PyErr> {
    let class = py.import("ckpt._errors")?.getattr(name)?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("kind", err.kind().as_str())?;
    kwargs.set_item("path", err.path().map(|p| p.to_string_lossy().into_owned()))?;
    kwargs.set_item("section", err.section())?;
    let value = class.call((err.to_string(),), Some(&kwargs))?;
    Ok(PyErr::from_value(value))
}

fn os_error(err: &Error) -> PyErr {
    let errno = err.raw_os_error().or((err.kind() == ErrorKind::NotFound).then_some(libc::ENOENT));
    let mut message = strip_os_error(err.message()).to_string();
    if let Some(section) = err.section() {
        message = format!("section `{section}`: {message}");
    }
    let filename = err.path().map(|p| p.to_string_lossy().into_owned());
    match errno {
        // OSError(errno, strerror, filename) picks the subclass (FileNotFoundError, PermissionError...).
        Some(errno) => PyOSError::new_err((errno, message, filename)),
        None => PyOSError::new_err(err.to_string()),
    }
}

/// `?`-friendly conversion of core results while holding the GIL.
pub trait IntoPyResult<T> {
    /// Converts the error into the matching Python exception.
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, &e))
    }
}
