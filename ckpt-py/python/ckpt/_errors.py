"""The exceptions of ``ckpt``.

Every failure of the library is a :class:`CheckpointError` (one subclass per kind of failure, the same
taxonomy as the Rust core's ``ErrorKind``), except I/O failures, which are the built-in :class:`OSError`
subclasses chosen by their errno (:class:`FileNotFoundError`, :class:`PermissionError`, an ``OSError``
with ``errno.ENOSPC``...), with ``filename`` set to the file concerned.

Messages name the file and, when there is one, the section: ``/scratch/42.ckpt: section
`python.buffer.0`: crc32 mismatch: expected 0x1234abcd, computed 0x00000000``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "ConflictError",
    "CorruptCheckpointError",
    "EncodingError",
    "InvalidArgumentError",
    "InvalidStateError",
    "NoValidCheckpointError",
    "SectionNotFoundError",
    "TooLargeError",
    "UnsupportedVersionError",
    "UntrustedCheckpointError",
]


class CheckpointError(Exception):
    """Base class of every ``ckpt`` error that is not an :class:`OSError`.

    Attributes:
        kind: the core's name for the kind of failure (``"corrupt"``, ``"no valid checkpoint"``...).
        path: the file concerned, when known.
        section: the section concerned, when known.
    """

    kind: str
    path: str | None
    section: str | None

    def __init__(
        self, message: str, *, kind: str = "error", path: str | None = None, section: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path
        self.section = section

    def __reduce__(self) -> tuple[Any, ...]:  # keep the attributes when pickled (multiprocessing, logging)
        return (_rebuild, (type(self), str(self), self.kind, self.path, self.section))


def _rebuild(
    cls: type[CheckpointError], message: str, kind: str, path: str | None, section: str | None
) -> CheckpointError:
    return cls(message, kind=kind, path=path, section=section)


class CorruptCheckpointError(CheckpointError):
    """The bytes are not a valid checkpoint: bad magic, a checksum mismatch, bad offsets, truncation."""


class UnsupportedVersionError(CheckpointError):
    """The file was written by a newer format version than this library reads."""


class TooLargeError(CheckpointError):
    """A size read from a file or given by the caller exceeds a documented limit."""


class InvalidArgumentError(CheckpointError, ValueError):
    """A bad value: an argument, or a setting in the environment (the message names the variable)."""


class NoValidCheckpointError(CheckpointError):
    """Checkpoints exist but none of them verifies; the message lists every file and why it was rejected.

    Set ``CKPT_ALLOW_FRESH_START=1`` to start from scratch anyway (restore then returns the default).
    """


class ConflictError(CheckpointError):
    """Another process committed the same generation at the same time: two writers share one name."""


class SectionNotFoundError(CheckpointError):
    """A section is missing, for instance in a file that ``ckpt.save`` did not write."""


class EncodingError(CheckpointError):
    """A section is not encoded as expected (for instance not a pickle)."""


class InvalidStateError(CheckpointError, RuntimeError):
    """An operation was called in the wrong state (for instance on a closed :class:`ckpt.Checkpointer`)."""


class UntrustedCheckpointError(CheckpointError):
    """Loading was refused: unpickling runs code, and other users could have written or replaced the file.

    Raised when the file is not owned by the current user, is writable by every user, or sits in a
    directory every user can write that lacks the sticky bit. Pass ``trusted=True`` to load it anyway.
    """


# Shown and pickled as ``ckpt.X`` (where users catch them), not ``ckpt._errors.X``.
for _name in __all__:
    globals()[_name].__module__ = "ckpt"
del _name
