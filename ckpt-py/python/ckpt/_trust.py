"""Who could have written a checkpoint: a checkpoint is a pickle, and unpickling runs code.

By default ``ckpt`` refuses to unpickle a file that

* is not owned by the current (effective) user,
* is writable by every user, or
* sits in a directory that every user can write and that lacks the sticky bit (anyone could have
  replaced the file there).

Group-writable files and directories are accepted: on clusters, project directories are shared by a
group on purpose, and the group is trusted. Root is not special: root loading a file owned by someone
else is refused too. ``trusted=True`` skips the checks.

Only unpickling is dangerous: the bytes are read and verified (the format treats every file as hostile)
before this check, and the file's identity (device and inode) is compared before and after, so a file
swapped in between is refused too.
"""

from __future__ import annotations

import os
import stat

from ._errors import UntrustedCheckpointError


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def problems(path: str | os.PathLike[str]) -> tuple[list[str], tuple[int, int]]:
    """Why ``path`` must not be unpickled (empty when it may be), and its (device, inode)."""
    st = os.stat(path)
    me = os.geteuid()
    found = []
    if st.st_uid != me:
        found.append(f"it is owned by {_owner(st.st_uid)}, not by you ({_owner(me)})")
    if st.st_mode & stat.S_IWOTH:
        found.append("every user can write it")
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    dst = os.stat(directory)
    if dst.st_mode & stat.S_IWOTH and not dst.st_mode & stat.S_ISVTX:
        found.append(
            f"its directory {directory} is writable by every user and has no sticky bit, so anyone could have "
            "replaced it"
        )
    return found, (st.st_dev, st.st_ino)


def check(path: str | os.PathLike[str], identity: tuple[int, int] | None = None) -> tuple[int, int]:
    """Raises :class:`UntrustedCheckpointError` unless ``path`` may be unpickled (see the module docs).

    ``identity`` is the (device, inode) seen before reading: a different file now is refused too.
    """
    found, ident = problems(path)
    if identity is not None and ident != identity:
        found.append("it was replaced while it was being read")
    if found:
        raise UntrustedCheckpointError(
            f"{os.fspath(path)}: refusing to unpickle this checkpoint: {'; and '.join(found)}. Unpickling runs "
            "code from the file; pass trusted=True if you trust whoever could have written it",
            kind="untrusted",
            path=os.fspath(path),
        )
    return ident
