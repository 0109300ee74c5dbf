"""Who could have written a checkpoint: a checkpoint is a pickle, and unpickling runs code.

The rules are the core's (``ckpt_core::trust``, the one policy of every face; SECURITY.md has the threat
model): ``ckpt`` refuses to unpickle a file that

* is not owned by the current (effective) user,
* is writable by every user, or
* sits in a directory that every user can write and that lacks the sticky bit (anyone could have
  replaced the file there).

Group-writable files and directories are accepted: on clusters, project directories are shared by a
group on purpose, and the group is trusted. Root is not special: root loading a file owned by someone
else is refused too. ``trusted=True`` skips the checks.

Only unpickling is dangerous: the bytes are read and verified (the format treats every file as hostile)
before this check. The owner judged is the one of the descriptor that was read (``fstat``), and the file's
identity (device and inode) before the read, of the descriptor and after the read must agree, so a file
swapped in between is refused too. Restart discovery applies the same rules in the core itself: it skips
another user's files with a notice and falls back to the next candidate.

Symbolic links (a ``latest.ckpt`` pointing at the newest file, say) are followed by an explicit load only
when nobody else could have planted or redirected them: every link of the chain that the path's last
component starts must be owned by the current user and sit in a directory that passes the rule above;
the file it leads to is then judged as any file (owner, mode, *its* directory). A link another user owns
could point at any file of ours (an older checkpoint, another run's) and substitute state that passes
every check of the file itself, so it is refused. Restart discovery never follows links (only regular
files are candidates). Links among the directories of the path (``/scratch`` -> ``/lustre/scratch``)
are the administrator's and are not judged.
"""

from __future__ import annotations

import errno
import os
import stat

from . import _ckpt
from ._errors import UntrustedCheckpointError

#: ``(uid, st_mode, st_dev, st_ino)`` of a file, from ``fstat`` of the descriptor read or from ``stat``.
Owner = tuple[int, int, int, int]


def problems(path: str | os.PathLike[str], owner: Owner | None = None) -> tuple[list[str], tuple[int, int]]:
    """Why ``path`` must not be unpickled (empty when it may be), and its (device, inode).

    ``owner`` is what ``fstat`` of the descriptor that was read said; without it, ``path`` is ``stat``-ed.
    """
    if owner is None:
        st = os.stat(path)
        owner = (st.st_uid, st.st_mode, st.st_dev, st.st_ino)
    uid, mode, dev, ino = owner
    return list(_ckpt.trust_problems(os.path.abspath(path), uid, mode)), (dev, ino)


def check(
    path: str | os.PathLike[str], identity: tuple[int, int] | None = None, owner: Owner | None = None
) -> tuple[int, int]:
    """Raises :class:`UntrustedCheckpointError` unless ``path`` may be unpickled (see the module docs).

    ``identity`` is the (device, inode) seen before reading, ``owner`` what the descriptor read says
    (see :func:`problems`): a different file at any point is refused too.
    """
    found, ident = problems(path, owner)
    if identity is not None:
        try:
            st = os.stat(path)
            after = (st.st_dev, st.st_ino)
        except OSError:
            after = None
        if ident != identity or after != identity:
            found.append("it was replaced while it was being read")
    if found:
        raise UntrustedCheckpointError(
            f"{os.fspath(path)}: refusing to unpickle this checkpoint: {'; and '.join(found)}. Unpickling runs "
            "code from the file; pass trusted=True if you trust whoever could have written it",
            kind="untrusted",
            path=os.fspath(path),
        )
    return ident


def resolve_links(path: str | os.PathLike[str], check: bool = True) -> str:
    """The file ``path`` leads to, after checking every symbolic link on the way (see the module docs);
    ``path`` itself when it is not a link. Raises :class:`UntrustedCheckpointError` for a link another user
    could have planted or redirected (unless ``check`` is false: ``trusted=True``), ``FileNotFoundError`` for
    a dangling one."""
    p = os.fspath(path)
    me = os.geteuid()
    for _ in range(40):  # the kernel's own limit on links followed (ELOOP)
        st = os.lstat(p)
        if not stat.S_ISLNK(st.st_mode):
            return p
        found = []
        if not check:
            pass
        elif st.st_uid != me:
            found.append(f"it is a symbolic link owned by uid {st.st_uid}, not by you (uid {me}): whoever owns it chooses which file is loaded")
        # The link's directory, by the file rule (a link's own mode means nothing).
        if check:
            found += _ckpt.trust_problems(os.path.abspath(p), me, stat.S_IFREG | 0o600)
        if found:
            raise UntrustedCheckpointError(
                f"{p}: refusing to follow this symbolic link to a checkpoint: {'; and '.join(found)}. Load the file "
                "it points to by its own path, or pass trusted=True if you trust whoever could have written it",
                kind="untrusted",
                path=p,
            )
        p = os.path.join(os.path.dirname(p), os.readlink(p))
    raise OSError(errno.ELOOP, "too many levels of symbolic links", os.fspath(path))
