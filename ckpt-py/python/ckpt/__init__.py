"""Durable, atomic, verified checkpoints for Python programs, made for Slurm jobs.

Replace the pickle-and-rename idiom::

    import ckpt

    ckpt.save(state)                                  # <job_id>.ckpt in $CKPT_DIR / $SLURM_CHECKPOINT_DIR / .
    state = ckpt.load(default={"step": 0})            # the newest valid checkpoint, or the default

    ckpt.save(state, "run/state.ckpt")                # exactly this file, atomically and durably
    state = ckpt.load("run/state.ckpt", default=None)

and let signals, the interval and the job's time limit say when::

    with ckpt.Checkpointer(interval="30:00") as cp:  # SIGTERM/SIGUSR1, every 30 minutes, before the end
        state = cp.restore(default={"step": 0, "results": []})
        results = state["results"]
        for i in range(state["step"], 1000):
            results.append(compute(i))
            if cp.should_checkpoint():
                cp.save({"step": i + 1, "results": results})
            if cp.should_exit():
                break

What you get (the Rust core, ``ckpt-core``, does the work, with the GIL released):

* **Atomic and durable.** A save writes a temporary file in the target directory, fsyncs it, renames it
  into place and fsyncs the directory; a crash at any instant leaves the previous checkpoint intact.
  Saves without a path keep generations (``<job_id>.ckpt.<N>``, the newest ``keep``), and loading falls
  back to the newest one that verifies.
* **Verified.** CRC-32 over every section, the header and the table; a damaged file raises
  :class:`CorruptCheckpointError` naming the file and section, never half-loads. A restart treats a file
  that verifies but cannot be unpickled as damaged too, and falls back to the previous generation.
* **Zero copy for arrays.** Objects are pickled with protocol 5; numpy arrays, and bytes, bytearray and
  memoryview objects of 64 KiB or more, go out of band into their own 4 KiB-aligned sections, written
  straight from their memory, and come back as copy-on-write views of the memory-mapped file: writable
  as they were when saved, whatever their size or compression, zero copy until written, and writes never
  reach the file (``writable=False``: read-only views of the file; ``mmap=False``: copies in private
  memory). numpy is optional.
* **Safe to unpickle.** A checkpoint is a pickle and unpickling runs code: files that other users could
  have written are refused (:class:`UntrustedCheckpointError`) unless ``trusted=True``.
* **This run's state, nobody else's.** Every file records who wrote it (user, application name, job,
  array task, command line, working directory). Restart resumes this run's own checkpoints; another
  job's only when the identity matches fully (a resubmission), and says so on stderr. Outside Slurm the
  application name defaults to the script's name, so two scripts in one directory never share state.

Configuration comes from the environment, as in the Slurm checkpoint interface: ``CKPT_DIR`` /
``SLURM_CHECKPOINT_DIR``, ``CKPT_INTERVAL`` / ``SLURM_CHECKPOINT`` (Slurm time formats), ``CKPT_KEEP``,
``CKPT_COMPRESS``, ``CKPT_MMAP``, ``CKPT_SIGNALS``, ``SLURM_JOB_ID``, ``SLURM_JOB_END_TIME``... Arguments
given in Python win over the environment. :func:`config` shows the effective values.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import math
import errno
import json
import os
import stat
import sys
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from . import _ckpt, _mpi, _pickling, _signals, _trust
from ._ckpt import MappedBuffer
from ._errors import (
    CheckpointError,
    ConflictError,
    CorruptCheckpointError,
    EncodingError,
    InvalidArgumentError,
    InvalidStateError,
    NoValidCheckpointError,
    SectionNotFoundError,
    TooLargeError,
    UnsupportedVersionError,
    UntrustedCheckpointError,
)

__version__: str = _ckpt.__version__

__all__ = [
    "CheckpointEntry",
    "CheckpointError",
    "Checkpointer",
    "ConflictError",
    "CorruptCheckpointError",
    "EncodingError",
    "InvalidArgumentError",
    "InvalidStateError",
    "MappedBuffer",
    "NoValidCheckpointError",
    "RestoreInfo",
    "SaveHandle",
    "StepParts",
    "SaveInfo",
    "SectionNotFoundError",
    "TooLargeError",
    "UnsupportedVersionError",
    "UntrustedCheckpointError",
    "checkpoints",
    "config",
    "install_signal_handlers",
    "load",
    "save",
    "verify",
]

PathArg = str | os.PathLike[str]
Compress = None | bool | int | str


@dataclass(frozen=True)
class SaveInfo:
    """What a save committed."""

    #: The checkpoint's stable name (``<dir>/<job_id>.ckpt``), or the file given to :func:`save`.
    path: Path
    #: The generation's own name (``<dir>/<job_id>.ckpt.<N>``); equal to ``path`` for an explicit path.
    generation_path: Path
    #: The generation number (1, 2, ...; 1 for an explicit path).
    generation: int
    #: The step recorded in the header.
    step: int
    #: Size of the file in bytes.
    file_bytes: int
    #: Bytes of data before compression.
    raw_bytes: int
    #: Seconds from the start of the save to the durable commit (pickling not included).
    seconds: float
    #: Problems after the commit that did not endanger it (an old generation that could not be removed).
    warnings: tuple[str, ...]
    #: Whether the save wrote over the blocks of a retired checkpoint (the spare) instead of new ones.
    reused_spare: bool = False
    #: The metrics given to the save (stored in the checkpoint's header), or ``None``.
    metrics: dict[str, Any] | None = None


@dataclass(frozen=True)
class RestoreInfo:
    """Which checkpoint a restore loaded."""

    #: The file restart discovery chose (the manifest for a multi-rank job).
    path: Path
    #: The file the data came from (this rank's part for a multi-rank job; else ``path``).
    file: Path
    #: Its generation.
    generation: int
    #: The step recorded in it.
    step: int
    #: The job that wrote it.
    job_id: str
    #: Set when it was taken from another job: a resubmission whose identity matches fully (same user,
    #: application name, command line, working directory and array task), or ``CKPT_RESUME_FROM``.
    other_job: str | None
    #: Newer files that were rejected, and why: ``(path, message)``: damaged ones, and ones that verified
    #: but could not be unpickled.
    rejected: tuple[tuple[str, str], ...]
    #: Whether the file is memory-mapped (arrays are then views of it: copy-on-write, or read-only with
    #: ``writable=False``).
    mapped: bool
    #: What restart discovery told stderr (and the log): the checkpoint taken from another job, files
    #: skipped because another user could have written them, other jobs' checkpoints not resumed and why.
    notices: tuple[str, ...] = ()
    #: The metrics saved with it (``save(..., metrics=...)``), or ``None``.
    metrics: dict[str, Any] | None = None


def _save_info(d: dict[str, Any], metrics: str | None = None) -> SaveInfo:
    return SaveInfo(
        path=Path(d["path"]),
        generation_path=Path(d["generation_path"]),
        generation=d["generation"],
        step=d["step"],
        file_bytes=d["file_bytes"],
        raw_bytes=d["raw_bytes"],
        seconds=d["seconds"],
        warnings=tuple(d["warnings"]),
        reused_spare=bool(d.get("reused_spare", False)),
        metrics=_metrics_dict(metrics),
    )


def _restore_info(d: dict[str, Any]) -> RestoreInfo:
    return RestoreInfo(
        path=Path(d["path"]),
        file=Path(d["file"]),
        generation=d["generation"],
        step=d["step"],
        job_id=d["job_id"],
        other_job=d.get("other_job"),
        rejected=tuple((p, m) for p, m in d.get("rejected", ())),
        mapped=d["mapped"],
        notices=tuple(d.get("notices", ())),
        metrics=_metrics_dict(d.get("metrics")),
    )


def _metrics_dict(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        d = json.loads(text)
    except ValueError:
        return None
    return d if isinstance(d, dict) else None


def _metrics_arg(metrics: Any) -> str | None:
    """The metrics of a save as the JSON object stored in the header: names (strings) to numbers (``int``,
    ``float``, numpy scalars; NaN and infinities are stored as ``null``), strings or bools."""
    if metrics is None:
        return None
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict of names to numbers, not {type(metrics).__name__}")
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise TypeError(f"metric names must be strings, not {k!r}")
        if v is None or isinstance(v, (bool, str)):
            out[k] = v
        elif _is_integer(v):
            out[k] = int(v)
        else:
            try:
                f = float(v)  # float, numpy floating scalars, 0-d arrays, torch scalars
            except (TypeError, ValueError):
                raise TypeError(f"metric {k!r} must be a number, a string or a bool, not {v!r}") from None
            out[k] = f if math.isfinite(f) else None
    text = json.dumps(out, allow_nan=False)
    if len(text) > 60000:
        raise InvalidArgumentError("metrics: more than 60000 bytes of JSON", kind="invalid argument")
    return text


def _compress_arg(compress: Compress) -> str | None:
    if compress is None:
        return None
    if compress is True:
        return "zstd"
    if compress is False:
        return "off"
    if isinstance(compress, int):
        return str(compress)
    if isinstance(compress, str):
        return compress
    raise TypeError(f"compress must be None, a bool, a zstd level or a string such as 'auto', not {compress!r}")


_STEP_MAX = 2**63 - 1  # the largest step a checkpoint records (ckpt_core::MAX_STEP)
_MAX_GENERATION = 2**64 - 1  # no bound on the generation, for restores that verify this rank's part only


def _is_integer(x: Any) -> bool:
    """An integer that is not a bool: ``int`` and integer scalars such as ``numpy.int64``."""
    if isinstance(x, bool) or type(x).__name__ in ("bool_", "bool"):
        return False
    if isinstance(x, int):
        return True
    try:
        import operator

        operator.index(x)
    except TypeError:
        return False
    return True


def _step_arg(obj: Any, step: int | None, fallback: int) -> int:
    if step is not None:
        if not _is_integer(step):
            raise TypeError(f"step must be an integer, not {step!r}")
        s = int(step)
    elif isinstance(obj, dict) and _is_integer(obj.get("step")):
        s = int(obj["step"])
    else:
        return fallback
    if s < 0:
        raise InvalidArgumentError(f"step {s} is negative: steps are 0 or more", kind="invalid argument")
    if s > _STEP_MAX:
        raise InvalidArgumentError(
            f"step {s} does not fit in the header's signed 64-bit step (at most {_STEP_MAX})",
            kind="invalid argument",
        )
    return s


def _release(stream: memoryview, buffers: list[memoryview]) -> None:
    # Drop the exports at once (a bytearray stays resizable, the pickle's BytesIO is freed).
    stream.release()
    for b in buffers:
        b.release()


def _unpickle(
    stream: Any,
    buffers: list[Any],
    info: dict[str, Any],
    trusted: bool,
    identity: tuple[int, int] | None = None,
    writable: bool = True,
) -> Any:
    if not trusted:
        # info["owner"] is the descriptor's that was read: of info["file"] (this rank's part for a multi-rank
        # step, whose manifest is info["path"]).
        owner = info.get("owner")
        if info["file"] != info["path"]:
            _trust.check(info["path"], identity)
            _trust.check(info["file"], owner=owner)
        else:
            _trust.check(info["path"], identity, owner)
    if not writable:
        # Sections copied into private memory (mmap=False, compressed ones): read-only as asked.
        buffers = [memoryview(b).toreadonly() if isinstance(b, bytearray) else b for b in buffers]
    return _pickling.loads(stream, buffers, writable)


def _unpickle_failure(e: BaseException) -> str:
    return f"its pickle stream cannot be unpickled ({type(e).__name__}: {e})"


def _fatal(e: BaseException) -> bool:
    """Failures of the unpickling that say nothing about the file (it must not be passed over for them)."""
    return isinstance(e, (MemoryError, RecursionError, UntrustedCheckpointError))


def _no_valid(failures: list[tuple[str, str]], rest: str) -> str:
    lines = [f"no checkpoint could be restored: {len(failures)} verified but could not be unpickled:"]
    lines += [f"  {p}: {why}" for p, why in failures]
    lines.append(rest or "(set CKPT_ALLOW_FRESH_START=1 to start from scratch anyway)")
    return "\n".join(lines)


def _restore_with_fallback(
    fetch: Any, *, trusted: bool, writable: bool, allow_fresh_start: Any, log: Any = None
) -> tuple[Any, dict[str, Any] | None, list[str]]:
    """Restart discovery, falling back past checkpoints that verify but cannot be unpickled, as discovery
    falls back past damaged ones. ``fetch(max_generation)`` returns ``(found, notices)``.

    Returns ``(obj, info, notices)``, ``info`` being ``None`` on a fresh start."""
    failures: list[tuple[str, str]] = []
    rejected: list[tuple[str, str]] = []
    notices: list[str] = []
    first: BaseException | None = None
    max_generation = None
    while True:
        try:
            found, new_notices = fetch(max_generation)
        except NoValidCheckpointError as e:
            if not failures:
                raise
            raise NoValidCheckpointError(_no_valid(failures, str(e)), kind=e.kind, path=e.path) from first
        notices += [n for n in new_notices if n not in notices]
        if found is None:
            if not failures:
                return None, None, notices
            if allow_fresh_start():
                return None, None, notices
            listed = [f"  {p}: {why}" for p, why in rejected]
            listed.append("(set CKPT_ALLOW_FRESH_START=1 to start from scratch anyway)")
            raise NoValidCheckpointError(
                _no_valid(failures, "\n".join(listed)),
                kind="no valid checkpoint",
                path=os.path.dirname(failures[0][0]),
            ) from first
        stream, buffers, info = found
        del found
        rejected += [(p, m) for p, m in info.get("rejected", ()) if (p, m) not in rejected]
        try:
            obj = _unpickle(stream, buffers, info, trusted, writable=writable)
        except Exception as e:
            if _fatal(e):
                raise
            why = _unpickle_failure(e)
            path = info["file"]
            if info.get("nranks", 1) > 1:
                # Without talking to the other ranks, falling back alone would restore a step they do not.
                raise CorruptCheckpointError(
                    f"{path}: {why}; a rank of a multi-rank step cannot fall back to an older step on its own",
                    kind="corrupt",
                    path=path,
                    section=_ckpt.PICKLE_SECTION,
                ) from e
            first = first or e
            failures.append((path, why))
            notice = f"{path}: {why}; falling back to an older checkpoint"
            print(f"ckpt: {notice}", file=sys.stderr, flush=True)
            notices.append(notice)
            if log is not None:
                with contextlib.suppress(Exception):
                    log(path, why, int(info["generation"]))
            del stream, buffers
            max_generation = max(0, int(info["generation"]) - 1)
            continue
        info["rejected"] = failures + [r for r in rejected if r[0] not in {p for p, _ in failures}]
        info["notices"] = notices
        return obj, info, notices


def _allow_fresh_start() -> bool:
    return bool(_ckpt.effective_config().get("allow_fresh_start"))


_MISSING: Any = object()
#: Saves of the configured checkpoint (``save()`` without a path) from this process, one at a time: the
#: generations of one name are numbered in order, and two threads must not race for the same number.
_store_save_lock = threading.Lock()


def save(
    obj: Any,
    path: PathArg | None = None,
    *,
    compress: Compress = None,
    step: int | None = None,
    metrics: dict[str, Any] | None = None,
) -> SaveInfo:
    """Saves ``obj`` atomically and durably; returns what was committed.

    Args:
        obj: any picklable object. Pickled with protocol 5; numpy arrays and large bytes, bytearray and
            memoryview objects are written out of band, straight from their memory.
        path: ``None`` saves the configured checkpoint: ``<job_id>.ckpt`` (``<job_id>.<step_id>.ckpt`` in a
            job step; outside Slurm ``<name>.ckpt``, the application name being ``CKPT_NAME``, else the
            script's file stem: ``train.ckpt`` for ``python train.py``) in ``CKPT_DIR``,
            ``SLURM_CHECKPOINT_DIR`` or the current directory, as a new generation, keeping the newest
            ``CKPT_KEEP`` (default 2); :func:`load` without a path finds it. A path saves exactly that file
            (no generations): the old content stays until the new one is complete and durable, then the
            new one replaces it in one rename. Either way a replaced file of 16 MiB or more is kept as
            ``<name>.tmp.spare`` and the next save writes over its blocks, which is faster than allocating new
            ones, unless something still has it open or mapped (``CKPT_REUSE_SPACE=0`` turns this off).
        compress: ``None`` (``CKPT_COMPRESS``, default off), ``False``, ``True`` (zstd level 3), a zstd level,
            or ``"auto"`` (compress only when it pays at the measured write speed). Compressed sections
            are copied on load instead of mapped.
        step: the step recorded in the header (shown by ``ckpt list``); default ``obj["step"]`` when
            ``obj`` is a dict with an integer ``"step"`` (``int`` or an integer scalar such as
            ``numpy.int64``), else 0. A signed 64-bit integer.
        metrics: names to numbers (``{"val_loss": 0.31}``), stored in the header: shown by ``ckpt inspect``
            and ``ckpt list``, returned by :func:`checkpoints`. NaN and infinities are stored as ``None``.

    Raises:
        OSError: the file system failed (``ENOSPC``, ``EACCES``...), with ``filename`` set.
        CheckpointError: a bad setting or step (:class:`InvalidArgumentError`), another process committed
            the same generation at the same time (:class:`ConflictError`), a memoryview whose format cannot
            be stored (:class:`EncodingError`).
        pickle.PicklingError, TypeError: ``obj`` cannot be pickled (nothing is written).

    Threads of one process saving the configured checkpoint (no ``path``) are serialized. Do not modify
    the objects from other threads while a save runs: the GIL is released while their memory is written.
    """
    s, c, m = _step_arg(obj, step, 0), _compress_arg(compress), _metrics_arg(metrics)
    stream, buffers, sizes = _pickling.dumps(obj)
    try:
        if path is None:
            with _store_save_lock:
                d = _ckpt.save_store(stream, buffers, step=s, compress=c, item_sizes=sizes, metrics=m)
        else:
            d = _ckpt.save_file(os.fspath(path), stream, buffers, step=s, compress=c, item_sizes=sizes, metrics=m)
    finally:
        _release(stream, buffers)
    return _save_info(d, m)


def load(
    path: PathArg | None = None,
    *,
    default: Any = _MISSING,
    mmap: bool | None = None,
    writable: bool = True,
    trusted: bool = False,
    verify: bool = True,
    step: int | None = None,
) -> Any:
    """Loads a checkpoint written by :func:`save` (or :meth:`Checkpointer.save`).

    Args:
        path: ``None`` runs restart discovery in the restart directory (``CKPT_RESTART_DIR``,
            ``SLURM_RESTART_DIR``, else the checkpoint directory): the newest checkpoint of this run that
            verifies completely, falling back to older generations. Another job's checkpoint is taken only
            when this job has none and the identity matches fully (same user, application name, command
            line, working directory and array task: a resubmitted job), which is announced on stderr; other
            tasks of a job array and other points of a parameter sweep are never taken.
            ``CKPT_RESUME_FROM=<job id>`` resumes that job's checkpoint, ``CKPT_RESUME_FROM=none`` forbids
            taking another job's. Files another user could have written are skipped with a notice on
            stderr (``trusted=True`` does not change that: load such a file by its path). A checkpoint that
            verifies but cannot be unpickled counts as damaged: the previous generation is loaded instead,
            with a notice on stderr. A path loads that file.
        default: returned when there is no checkpoint: none found by discovery (``None`` when not given),
            or no file at ``path`` (without ``default``, a missing ``path`` raises
            :class:`FileNotFoundError`).
        mmap: ``None`` follows ``CKPT_MMAP`` (default on): arrays are then zero-copy views of the
            memory-mapped file, valid as long as they are referenced (even after the file is replaced or
            removed). ``False`` reads the file once, whole, into private memory and verifies it there; the
            arrays are writable views of that memory (which lives as long as any of them), not of the file.
        writable: ``True`` (the default): what was saved writable comes back writable, whatever its size
            or compression: mapped arrays are copy-on-write views (``MAP_PRIVATE``: zero copy until a page
            is written; writes stay in this process and never reach the file). ``False``: arrays stored
            out of band (numpy arrays and buffers of 64 KiB or more) are read-only views (of the file's
            shared mapping when mapped), as safetensors' and orbax's zero-copy loads give; smaller ones
            are copies inside the pickle stream.
        trusted: skip the ownership checks (see :class:`UntrustedCheckpointError`). Without it, a ``path``
            that is a symbolic link (``latest.ckpt``) is followed only when the link is the current user's
            and its directory passes the same rule as a file's (another user's link could point at any of
            your files and substitute state); the file it leads to is then checked as any file.
        step: with ``path=None``, the newest valid checkpoint of this step among those restart discovery
            sees (:func:`checkpoints`), instead of the newest one; :class:`NoValidCheckpointError` (listing
            the valid steps) when there is none, unless ``default`` is given.
        verify: ``True`` (the default) checks every byte of the file (the CRC-32 of every section) before
            anything is unpickled, which reads the whole file. ``False``, for a path and a memory-mapped
            load, checks the structure (header, section table and their CRCs, every offset and length) and
            the pickle stream, and hands out the arrays as views of the mapping without reading them: the
            load takes constant time, but a damaged byte inside an array is not detected (check later
            with :func:`verify`). Restart discovery (``path=None``) always verifies.

    Raises:
        CorruptCheckpointError: the file is damaged (the message names the file and the section), or its
            pickle stream cannot be unpickled (the unpickling error is the ``__cause__``).
        NoValidCheckpointError: checkpoints exist but none verifies and unpickles (discovery; the message
            lists them and why). ``CKPT_ALLOW_FRESH_START=1`` returns ``default`` instead.
        FileNotFoundError: there is no file at ``path`` and no ``default`` was given.
        IsADirectoryError: ``path`` is a directory.
        UntrustedCheckpointError: another user could have written the file.
        ConflictError: checkpoints under this run's own name belong to another run (outside Slurm: the
            same script with other arguments, or in another directory, wrote them); the message names the
            files and how to resume them anyway (``CKPT_RESUME_FROM``) or to run separately (``CKPT_NAME``).
        OSError: the file system failed.
    """
    if path is None and step is not None:
        try:
            entry = _entry_of_step(step, None, None)
        except NoValidCheckpointError:
            if default is _MISSING:
                raise
            return default
        return load(entry.path, mmap=mmap, writable=writable, trusted=trusted)
    if step is not None:
        raise InvalidArgumentError("load: give a path or a step, not both", kind="invalid argument")
    if path is None:

        def fetch(max_generation: int | None) -> tuple[Any, list[str]]:
            found = _ckpt.load_store(mmap=mmap, writable=writable, max_generation=max_generation)
            return found, ([] if found is None else list(found[2].get("notices", ())))

        obj, info, _ = _restore_with_fallback(
            fetch, trusted=trusted, writable=writable, allow_fresh_start=_allow_fresh_start
        )
        if info is None:
            return None if default is _MISSING else default
        return obj
    p = os.fspath(path)
    try:
        # A symbolic link (latest.ckpt) is followed only when nobody else could have planted it (_trust).
        p = _trust.resolve_links(p, check=not trusted)
        st = os.stat(p)
    except FileNotFoundError as e:
        if default is not _MISSING:
            return default
        raise FileNotFoundError(
            errno.ENOENT, f"no checkpoint at {os.fspath(path)} (pass default= to load a default then)", os.fspath(path)
        ) from e
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a checkpoint file", p)
    stream, buffers, info = _ckpt.load_file(p, mmap=mmap, verify=verify, writable=writable)
    try:
        return _unpickle(stream, buffers, info, trusted, (st.st_dev, st.st_ino), writable)
    except Exception as e:
        if _fatal(e) or isinstance(e, CheckpointError) and not isinstance(e, EncodingError):
            raise
        raise CorruptCheckpointError(
            f"{p}: {_unpickle_failure(e)}", kind="corrupt", path=p, section=_ckpt.PICKLE_SECTION
        ) from e


@dataclass(frozen=True)
class CheckpointEntry:
    """One file that restart discovery looked at (:func:`checkpoints`)."""

    #: The file (``<name>.ckpt.<N>``, or ``<name>.ckpt``: the newest generation's stable name).
    path: Path
    #: Its generation (from the header; from the file name when the header is unreadable).
    generation: int | None
    #: The step recorded in it.
    step: int | None
    #: The job that wrote it.
    job_id: str | None
    #: The rank that wrote it and the number of ranks.
    rank: int | None
    nranks: int | None
    #: The metrics saved with it (``save(..., metrics=...)``), or ``None``.
    metrics: dict[str, Any] | None
    #: When it was written (UTC), from the header.
    created: datetime.datetime | None
    #: Whether it verifies completely (every CRC).
    valid: bool
    #: Why it does not (damaged, truncated, another user's...), else ``None``.
    error: str | None
    #: Whether restart (``load()``, ``restore()``) would choose it.
    chosen: bool
    #: Whether it is this job's own checkpoint (rather than an earlier job's that restart may resume).
    own_job: bool
    #: Whether ``path`` is the stable name (another name of the newest generation).
    current_name: bool


def checkpoints(directory: PathArg | None = None, name: str | None = None) -> list[CheckpointEntry]:
    """What restart discovery sees: every checkpoint of this run's name in the restart directory (or
    ``directory``), newest first, each verified completely, with its path, generation, step, job id, rank,
    metrics, creation time, whether it is valid (else the error) and whether restart would choose it.

    ``name`` as for :class:`Checkpointer`. Pick one with ``load(step=N)`` or ``restore(step=N)``, or load
    its ``path``. Raises :class:`ConflictError` as restart would (checkpoints of another run under this
    name).
    """
    rows = _ckpt.list_checkpoints(name, None if directory is None else os.fspath(directory))
    # Restart chooses a file; its other name (the stable name, or the generation's own) is the same file.
    chosen = {(r["job_id"], r["generation"]) for r in rows if r["chosen"]}
    for r in rows:
        r["chosen"] = (r["job_id"], r["generation"]) in chosen
    out = []
    for r in rows:
        ns = r.get("created_unix_ns")
        created = (
            None
            if ns is None
            else datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc)
        )
        out.append(
            CheckpointEntry(
                path=Path(r["path"]),
                generation=r["generation"],
                step=r["step"],
                job_id=r["job_id"],
                rank=r["rank"],
                nranks=r["nranks"],
                metrics=_metrics_dict(r["metrics"]),
                created=created,
                valid=r["status"] == "valid",
                error=r["error"],
                chosen=bool(r["chosen"]),
                own_job=bool(r["own_job"]),
                current_name=bool(r["current_name"]),
            )
        )
    return out


def _entry_of_step(step: Any, directory: PathArg | None, name: str | None) -> CheckpointEntry:
    """The newest valid checkpoint of ``step`` that discovery sees (by its generation's own name)."""
    if not _is_integer(step):
        raise TypeError(f"step must be an integer, not {step!r}")
    s = int(step)
    entries = [e for e in checkpoints(directory, name) if not e.current_name]
    for e in entries:
        if e.valid and e.step == s:
            if e.nranks not in (None, 1):
                raise InvalidArgumentError(
                    f"step {s}: choosing a step of a multi-rank checkpoint is not supported yet", kind="invalid argument"
                )
            return e
    have = sorted({e.step for e in entries if e.valid and e.step is not None})
    bad = [f"  {e.path}: {e.error}" for e in entries if e.step == s and not e.valid]
    raise NoValidCheckpointError(
        "\n".join([f"no valid checkpoint of step {s} (valid steps: {have or 'none'})", *bad]),
        kind="no valid checkpoint",
        path=None,
    )


def verify(path: PathArg) -> None:
    """Checks every byte of the checkpoint at ``path`` (the CRC-32 of every section, the header, the section
    table and the padding between them), as :func:`load` does before unpickling by default.

    Raises:
        CorruptCheckpointError: the file is damaged (the message names the file and the section).
        OSError: the file cannot be read.
    """
    _ckpt.verify_file(os.fspath(path))


def config(name: str | None = None, *, directory: PathArg | None = None) -> dict[str, Any]:
    """The effective configuration (environment plus arguments), for diagnostics and logs.

    ``name`` as for :class:`Checkpointer` (default ``CKPT_NAME``, the Slurm job name, the script's stem).
    """
    return _ckpt.effective_config(name, None if directory is None else os.fspath(directory))


# -- Checkpointer ------------------------------------------------------------------------------------------


class _EnvInt(int):
    """An int default that the environment may override (shown as the plain number)."""

    def __repr__(self) -> str:
        return int.__repr__(self)


class _EnvSignals(tuple):  # type: ignore[type-arg]
    """A signal-list default that ``CKPT_SIGNALS`` may override (shown as the plain tuple)."""

    def __repr__(self) -> str:
        return tuple.__repr__(self)


_DEFAULT_KEEP = _EnvInt(2)
_DEFAULT_SIGNALS = _EnvSignals(("SIGTERM", "SIGUSR1"))

_active: weakref.WeakSet[Checkpointer] = weakref.WeakSet()
_active_lock = threading.Lock()


#: Signals no process can catch: they can never request a checkpoint.
_UNCATCHABLE = {"KILL": 9, "STOP": 19}


def _signals_arg(signals: Iterable[Any] | None) -> str | None:
    if isinstance(signals, _EnvSignals):
        return None
    if signals is None:
        return ""
    if isinstance(signals, (str, int)):
        signals = (signals,)
    names = []
    for s in signals:
        if isinstance(s, int):  # also signal.Signals members
            names.append(str(int(s)))
        elif isinstance(s, str):
            names.append(s)
        else:
            raise TypeError(f"signals must be names such as 'SIGUSR1' or numbers, not {s!r}")
        bare = names[-1].strip().upper().removeprefix("SIG")
        for name, number in _UNCATCHABLE.items():
            if bare in (name, str(number)):
                raise InvalidArgumentError(
                    f"signals: SIG{name} cannot be used to request checkpoints: no process can catch it "
                    "(SIGUSR1, as in Slurm's --signal=USR1@<seconds>, or SIGTERM can)",
                    kind="invalid argument",
                )
    return ",".join(names)


def _keep_arg(keep: Any) -> int | None:
    if isinstance(keep, _EnvInt):
        return None
    if not _is_integer(keep):
        raise TypeError(f"keep must be an integer, not {keep!r}")
    k = int(keep)
    if k < 1:
        raise InvalidArgumentError(f"keep must be at least 1, not {k}", kind="invalid argument")
    return k


def _keep_best_arg(keep_best: Any, metric: Any, mode: Any) -> int:
    if not _is_integer(keep_best):
        raise TypeError(f"keep_best must be an integer, not {keep_best!r}")
    k = int(keep_best)
    if k < 0:
        raise InvalidArgumentError(f"keep_best must be at least 0, not {k}", kind="invalid argument")
    if metric is not None and not isinstance(metric, str):
        raise TypeError(f"metric must be a metric's name (a string), not {metric!r}")
    if mode not in ("min", "max"):
        raise InvalidArgumentError(f'mode must be "min" or "max", not {mode!r}', kind="invalid argument")
    if k > 0 and not metric:
        raise InvalidArgumentError(
            "keep_best needs metric= (the name of the metric in save(..., metrics={...}) to rank by)",
            kind="invalid argument",
        )
    return k


def _check_writable(directory: Path) -> None:
    """Creates the checkpoint directory if needed and checks that a file can be created in it (a save
    hours later must not be the first to find out)."""
    d = os.fspath(directory)
    try:
        os.makedirs(d, exist_ok=True)
        fd, probe = _probe_file(d)
    except OSError as e:
        raise type(e)(e.errno, f"cannot write checkpoints in {d}: {e.strerror}", d) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _probe_file(d: str) -> tuple[int, str]:
    for i in range(100):
        probe = os.path.join(d, f".ckpt-write-test.{os.getpid()}.{threading.get_ident()}.{i}")
        try:
            return os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), probe
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free name for a test file", d)


def _interval_arg(interval: Any) -> float | str | None:
    if interval is None or isinstance(interval, str):
        return interval
    if isinstance(interval, bool):
        raise TypeError("interval must be seconds or a Slurm time string, not a bool")
    if hasattr(interval, "total_seconds"):  # datetime.timedelta
        return float(interval.total_seconds())
    if isinstance(interval, (int, float)):
        return float(interval)
    raise TypeError(f"interval must be seconds, a timedelta or a Slurm time string, not {interval!r}")


class StepParts:
    """A committed multi-rank step opened by :meth:`Checkpointer.open_step`: ``nranks`` ranks wrote it (parts
    ``0 .. nranks - 1``), at application ``step``; :meth:`load` gives what old rank ``rank`` saved."""

    def __init__(self, cp: Checkpointer, nranks: int, step: int, generation: int, path: Path, trusted: bool) -> None:
        self.nranks = nranks
        self.step = step
        self.generation = generation
        self.path = path
        self._cp = cp
        self._trusted = trusted

    def load(self, rank: int, *, writable: bool = True) -> Any:
        """The object old rank ``rank`` saved in this step (its part verified again, every CRC)."""
        if not 0 <= rank < self.nranks:
            raise InvalidArgumentError(f"the step has {self.nranks} part(s): there is no rank {rank}")
        stream, buffers, info = self._cp._native.load_part(rank, writable=writable)
        return _unpickle(stream, buffers, info, self._trusted, None, writable)

    def __repr__(self) -> str:
        return f"StepParts(nranks={self.nranks}, step={self.step}, generation={self.generation}, path={str(self.path)!r})"


class SaveHandle:
    """A save running in the background: what :meth:`Checkpointer.save` returns with ``blocking=False``.

    The state was captured when ``save`` was called (later changes of the arrays and containers do not
    reach the file); a thread writes and commits it. :meth:`wait` returns the :class:`SaveInfo` once the
    checkpoint is durable, or raises what made the save fail.
    """

    def __init__(self, native: Any, metrics: str | None) -> None:
        self._native = native
        self._metrics = metrics
        #: Whether :meth:`wait` reported the outcome to the caller (a failure nobody saw is raised by
        #: :meth:`Checkpointer.close`).
        self._observed = False
        #: Whether this save is the exit checkpoint (SIGTERM, the time limit): should_exit() waits for it.
        self._exit = False

    @property
    def step(self) -> int:
        """The step being saved."""
        return self._native.step

    def done(self) -> bool:
        """Whether the save is finished: durable, or failed (never blocks)."""
        return self._native.done()

    def wait(self, timeout: float | None = None) -> SaveInfo:
        """Waits until the checkpoint is durable and returns what was committed; raises the save's error if
        it failed (as a blocking save would have), or :class:`TimeoutError` after ``timeout`` seconds."""
        if not self._native.wait(timeout):
            raise TimeoutError(f"the background save of step {self.step} is still running after {timeout} s")
        self._observed = True
        d = self._native.result()
        return _save_info(d, self._metrics)

    def _settle(self) -> BaseException | None:
        """Waits; the failure, if any, that nobody has seen yet."""
        self._native.wait(None)
        if self._observed:
            return None
        try:
            self._native.result()
        except BaseException as e:
            return e
        return None

    def __repr__(self) -> str:
        return f"<ckpt.SaveHandle step {self.step} ({'done' if self.done() else 'running'})>"


class _CollectiveSaveHandle(SaveHandle):
    """A background save with ``comm``: this rank's part is written by a thread; the step is committed
    collectively, once every rank's part is durable, at the next collective call of the checkpointer
    (:meth:`Checkpointer.should_checkpoint`, :meth:`Checkpointer.should_exit`, :meth:`Checkpointer.save`,
    :meth:`Checkpointer.restore`, :meth:`Checkpointer.close`) or at :meth:`wait`, which is collective
    too. :meth:`done` (local, never blocks) turns true once the step is committed or failed."""

    def __init__(self, cp: Checkpointer, mpi: _mpi.Collective, pending: _mpi.Pending) -> None:
        super().__init__(pending.handle, pending.metrics)
        self._cp = cp
        self._mpi = mpi
        self._pending = pending

    def done(self) -> bool:
        """Whether the step is settled: committed on every rank, or failed (never blocks, no MPI call)."""
        return self._pending.settled

    def _progress(self, block: bool, timeout: float | None = None) -> bool:
        if self._pending.settled:
            return True
        return self._mpi.settle(self._cp._native, self._pending, block, timeout)

    def wait(self, timeout: float | None = None) -> SaveInfo:
        """Collective (every rank calls it): waits until every rank's part is durable and the step is
        committed, and returns this rank's :class:`SaveInfo` (``path``: the step's manifest); raises the
        save's error on every rank if any rank failed, or :class:`TimeoutError` on every rank when some
        rank's part is still being written after ``timeout`` seconds."""
        if not self._progress(True, timeout):
            raise TimeoutError(f"the background save of step {self.step} is still running after {timeout} s")
        self._observed = True
        p = self._pending
        if p.error is not None:
            raise p.error
        assert p.figures is not None
        return _save_info(p.figures, p.metrics)

    def _settle(self) -> BaseException | None:
        if not self._pending.settled and self._mpi.MPI.Is_finalized():
            return InvalidStateError(
                f"the background save of step {self.step} was not committed: MPI was finalized first "
                "(close the checkpointer, or leave its with block, before MPI_Finalize)",
                kind="invalid state",
            )
        self._progress(True)
        if self._observed:
            return None
        return self._pending.error

    def __repr__(self) -> str:
        return f"<ckpt.SaveHandle step {self.step} ({'done' if self.done() else 'running'}, collective)>"


class Checkpointer:
    """Decides when to checkpoint (signals, an interval, the job's time limit, ``ckpt create``) and saves.

    Use it as a context manager, one per process, created in the main thread::

        with ckpt.Checkpointer() as cp:
            state = cp.restore(default={"step": 0})
            while state["step"] < n:
                state = work(state)
                if cp.should_checkpoint():
                    cp.save(state)
                if cp.should_exit():
                    break

    Args:
        name: the application name (default ``CKPT_NAME``, the Slurm job name, else the script's file stem:
            ``"train"`` for ``python train.py``, ``"pkg"`` for ``python -m pkg``; ``"ckpt"`` for ``python -c``,
            standard input and the interactive interpreter). Outside Slurm it names the file
            (``<name>.ckpt``), so two scripts in one directory keep their checkpoints apart; under Slurm the
            job id does, and the name is part of the identity that lets a resubmitted job resume its
            predecessor's checkpoints.
        directory: where checkpoints are written and looked for (default ``CKPT_DIR``,
            ``SLURM_CHECKPOINT_DIR``, the current directory; ``CKPT_RESTART_DIR`` still wins for restarts).
        interval: checkpoint this often: seconds (``int``, ``float`` or ``timedelta``), or a Slurm time
            string (``"30"`` is 30 *minutes*, ``"1:30:00"``, ``"1-00"``...), or ``"auto"`` (Young/Daly from
            the measured cost and ``CKPT_MTBF``). Default ``CKPT_INTERVAL`` / ``SLURM_CHECKPOINT``, else
            none. ``0`` or ``"off"``: none.
        keep: generations kept (default ``CKPT_KEEP``, else 2; at least 1).
        signals: signals that request a checkpoint (default ``CKPT_SIGNALS``, else SIGTERM and SIGUSR1).
            SIGTERM also asks to exit: :meth:`should_exit` turns true once its checkpoint is committed.
            Names (``"SIGUSR2"``, ``"USR2"``, ``"RTMIN+3"``) or numbers; ``()`` for none. SIGINT is left
            alone unless listed, so Ctrl-C keeps raising :class:`KeyboardInterrupt`. See
            :func:`install_signal_handlers` for handlers installed later by other code. Outside the main
            thread only ``()`` is accepted (:class:`InvalidStateError` otherwise).
        keep_best, metric, mode: besides the newest ``keep``, keep the ``keep_best`` generations with the
            best ``metrics[metric]`` given to :meth:`save` (``mode="min"``: smallest, ``"max"``: largest).
        comm: an mpi4py communicator (``MPI.COMM_WORLD``, or a duplicate of it) to checkpoint every rank
            together, as ``ckpt_mpi.h`` does for C: the rank and the number of ranks come from it;
            :meth:`restore` agrees on the newest step *every* rank can read and unpickle (falling back
            together); :meth:`should_checkpoint` and :meth:`should_exit` are true on every rank when true on
            any (a signal to one rank makes all ranks save the same step, and leave together); and a
            :meth:`save` counts only when every rank's part is durable. The constructor, these four
            methods, :meth:`close` (with a background save in flight) and :meth:`SaveHandle.wait` are then
            collective: every rank calls them at the same points, in the same order, from the thread that
            uses MPI. Errors are raised on every rank. ``save(blocking=False)`` commits the
            step collectively once every rank's part is durable (at the next collective call, or the
            collective :meth:`SaveHandle.wait`); ``keep_best`` ranks steps by rank 0's metrics and every
            rank keeps the same steps; ``restore(step=N)`` loads the same step on every rank or raises on
            every rank. ``None`` (the default): this process alone.

    The checkpoint directory is created if needed and checked at once: an ``OSError``
    (:class:`PermissionError`, ``EROFS``...) naming it is raised here rather than at the first save.

    Signals and processes: once a SIGTERM was handled, later SIGTERMs (Slurm sends it twice to job steps)
    stay harmless, also after :meth:`close`, so the program's own exit status is what the job reports.
    A process forked while the checkpointer is open (DataLoader workers, ``multiprocessing`` with the fork
    start method) gets SIGTERM's disposition from before the checkpointer, so ``Process.terminate()``
    ends it, while SIGUSR1 (which Slurm sends to every process of the step) stays harmless in it.

    Besides signals, the checkpointer requests one checkpoint shortly before the job's time limit
    (``SLURM_JOB_END_TIME``, else ``squeue``, else ``CKPT_END_TIME``; ``CKPT_MARGIN`` plus twice the
    measured cost) and then asks to exit; and ``ckpt create <job>`` requests one through a control socket.
    Every decision and checkpoint is logged as JSON lines (``CKPT_LOG``, default
    ``<directory>/<job_id>.ckpt.log``).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        directory: PathArg | None = None,
        interval: float | str | datetime.timedelta | None = None,
        keep: int = _DEFAULT_KEEP,
        signals: Iterable[str | int] = _DEFAULT_SIGNALS,
        keep_best: int = 0,
        metric: str | None = None,
        mode: Literal["min", "max"] = "min",
        comm: Any = None,
    ) -> None:
        #: The collectives over ``comm`` (``None``: this process alone).
        self._mpi: _mpi.Collective | None = None if comm is None else _mpi.Collective(comm)
        error: Exception | None = None
        try:
            self._open(name, directory, interval, keep, signals, keep_best, metric, mode)
        except Exception as e:
            error = e
        if self._mpi is None:
            if error is not None:
                raise error
            return
        # All or nothing: when the checkpointer cannot be created on some rank, no rank keeps one.
        try:
            self._mpi.check(error)
        except BaseException:
            if error is None:
                self.close()
            raise

    def _open(
        self,
        name: str | None,
        directory: PathArg | None,
        interval: float | str | datetime.timedelta | None,
        keep: int,
        signals: Iterable[str | int],
        keep_best: int,
        metric: str | None,
        mode: Literal["min", "max"],
    ) -> None:
        #: What the last :meth:`restore` loaded (``None``: nothing, a fresh start).
        self.restored: RestoreInfo | None = None
        #: What the last :meth:`restore` told stderr, also on a fresh start (see :attr:`RestoreInfo.notices`).
        self.restore_notices: tuple[str, ...] = ()
        self._saves = 0
        self._save_lock = threading.Lock()  # one save at a time (generations are numbered in order)
        #: The background save in flight (at most one), or the last one.
        self._inflight: SaveHandle | None = None
        keep_arg = _keep_arg(keep)
        keep_best_arg = _keep_best_arg(keep_best, metric, mode)
        signals_arg = _signals_arg(signals)
        specs = _ckpt.signal_specs(signals_arg)
        _signals.check_thread(specs)
        self._handlers = _signals.Handlers(specs)
        # Python-level handlers first, so the core's C handler chains to the interpreter's.
        self._handlers.install()
        try:
            self._native = _ckpt.Checkpointer(
                name,
                None if directory is None else os.fspath(directory),
                _interval_arg(interval),
                keep_arg,
                signals_arg,
                keep_best_arg,
                metric,
                mode,
                None if self._mpi is None else (self._mpi.rank, self._mpi.size),
            )
        except BaseException:
            self._handlers.restore()
            raise
        self._handlers.native = self._native
        try:
            _check_writable(Path(self._native.checkpoint_dir))
        except BaseException:
            self._native.close()
            self._handlers.restore()
            raise
        with _active_lock:
            _active.add(self)
        _signals.register_fork_handler()

    # -- triggers -------------------------------------------------------------------------------------------

    def should_checkpoint(self) -> bool:
        """Whether a checkpoint is due: a signal, the interval, the time limit or a request (one atomic load).

        With ``comm``: whether one is due on *any* rank (one small allreduce, collective: every rank asks
        at the same points), so every rank saves the same step."""
        if self._mpi is not None:
            self._progress(block=False)
            return self._mpi.poll(self._native.should_checkpoint(), self._native.should_exit())[0]
        return self._native.should_checkpoint()

    def should_exit(self) -> bool:
        """Whether to stop now: a checkpoint that asked for an exit (SIGTERM, the time limit) is committed.

        When that checkpoint is a background save still being written, waits until it is durable (and
        raises its error if it failed), so that ``True`` always means "the exit checkpoint is durable".
        Otherwise one atomic load: a background save that no exit waits for is not waited for.

        With ``comm``: whether any rank's exit was asked and its step committed (one small allreduce,
        collective), so every rank leaves at the same step."""
        if self._mpi is not None:
            if isinstance(self._inflight, _CollectiveSaveHandle) and not self._inflight._pending.settled:
                # The exit checkpoint (any rank's) in flight: every rank waits until its step is committed.
                h = self._inflight
                mine = h._exit or bool(self._native.exit_pending())
                exiting = self._mpi.comm.allreduce(mine, op=self._mpi.MPI.LOR)
                self._inflight._progress(block=exiting)
            return self._mpi.poll(self._native.should_checkpoint(), self._native.should_exit())[1]
        h = self._inflight
        if h is not None and not h.done() and (h._exit or self._native.exit_pending()):
            self._settle_inflight()
        return self._native.should_exit()

    def request_checkpoint(self, exit: bool = False) -> None:
        """Requests a checkpoint as a signal would (``exit=True``: as SIGTERM does)."""
        self._native.request_checkpoint(exit)

    def time_left(self) -> float | None:
        """Seconds left before the job's time limit, when known."""
        return self._native.time_left()

    def open_step(self, *, trusted: bool = False) -> StepParts | None:
        """Restart on another number of ranks: the newest committed multi-rank step of this run, whatever
        number of ranks wrote it (every part verified, so every rank that asks gets the same one), or ``None``
        when there is none. Load the parts you need with :meth:`StepParts.load` and redistribute the data:
        ``restore()`` refuses a step of another number of ranks. ``trusted=True`` skips the checks that the
        files were written by this user before unpickling (only for files you trust)."""
        found = self._native.open_step()
        if found is None:
            return None
        nranks, step, generation, path = found
        return StepParts(self, nranks, step, generation, Path(path), trusted)

    def wait_for_flush(self, timeout: float | None = None) -> int | None:
        """With a node-local cache level (``CKPT_CACHE_DIR``): waits until the background copies of cached
        checkpoints to the checkpoint directory are done (at most ``timeout`` seconds; ``None``: as long as it
        takes) and returns the newest generation durable there (``None``: none yet). Without a cache level every
        save is durable when it returns: ``None`` at once. Raises the last copy's error (the checkpoint stays in
        the cache), or an :class:`OSError` (timed out) when a copy is still running after ``timeout``."""
        return self._native.wait_for_flush(timeout)

    @property
    def durable_generation(self) -> int | None:
        """With a cache level: the newest generation this process made durable in the checkpoint directory."""
        return self._native.durable_generation()

    @property
    def cache_dir(self) -> Path | None:
        """The node-local cache directory of this checkpoint directory (``CKPT_CACHE_DIR``), or ``None``."""
        d = self._native.cache_dir()
        return None if d is None else Path(d)

    # -- saving and restoring -------------------------------------------------------------------------------

    @overload
    def save(
        self,
        obj: Any,
        *,
        step: int | None = None,
        compress: Compress = None,
        blocking: Literal[True] = True,
        metrics: dict[str, Any] | None = None,
    ) -> SaveInfo: ...
    @overload
    def save(
        self,
        obj: Any,
        *,
        step: int | None = None,
        compress: Compress = None,
        blocking: Literal[False],
        metrics: dict[str, Any] | None = None,
    ) -> SaveHandle: ...
    @overload
    def save(
        self,
        obj: Any,
        *,
        step: int | None = None,
        compress: Compress = None,
        blocking: bool = True,
        metrics: dict[str, Any] | None = None,
    ) -> SaveInfo | SaveHandle: ...

    def save(
        self,
        obj: Any,
        *,
        step: int | None = None,
        compress: Compress = None,
        blocking: bool = True,
        metrics: dict[str, Any] | None = None,
    ) -> SaveInfo | SaveHandle:
        """Saves ``obj`` as the next generation (atomic, durable; see :func:`save`) and clears what made
        a checkpoint due; after a checkpoint requested with an exit, :meth:`should_exit` turns true.

        ``step`` defaults to ``obj["step"]`` for a dict with an integer ``"step"``, else the number of saves.
        ``metrics`` (names to numbers, such as ``{"val_loss": 0.31}``) are stored in the checkpoint's
        header: shown by ``ckpt inspect`` and ``ckpt list``, in :attr:`RestoreInfo.metrics` and
        :func:`ckpt.checkpoints`, and ranked by ``keep_best``.

        ``blocking=False`` returns at once with a :class:`SaveHandle` and writes in the background: the
        state is captured at the call (pickled, and the arrays' bytes copied at memory speed into a staging
        buffer kept for the next background save), so changing arrays or containers afterwards does not
        change what is written. At most one save is in flight: the next save (of either kind) first waits
        for it. :meth:`should_exit` (when the save is the exit checkpoint), :meth:`restore`, :meth:`close`,
        the end of the ``with`` block and the interpreter's exit wait until it is durable. A failure is
        raised by :meth:`SaveHandle.wait`, else by :meth:`close` (what made the checkpoint due is due again,
        as after a failed blocking save).

        Every rank of a multi-rank job must call it at the same points (rank 0 commits the step).

        With ``comm`` the save is collective: every rank writes its part of the same step (``step`` must
        be the same on every rank) durably, and rank 0 commits the step only when every part is durable;
        a failure on any rank raises on every rank (the failing rank's own error, the others' naming it),
        and nothing is committed then (the previous step stays the newest, and what made the checkpoint
        due is due again). With ``blocking=False`` every rank captures its state and begins its part at the
        call, a thread writes it, and the step is committed collectively once every part is durable: at
        the next collective call of the checkpointer at which every part is finished, or at
        :meth:`SaveHandle.wait` (collective then). ``metrics`` are rank 0's on every rank.
        """
        s = _step_arg(obj, step, self._saves + 1)
        m = _metrics_arg(metrics)
        c = _compress_arg(compress)
        if self._mpi is not None:
            return self._save_collective(self._mpi, obj, s, c, m, blocking)
        stream, buffers, sizes = _pickling.dumps(obj)
        try:
            with self._save_lock:
                self._settle_inflight(raise_failure=False)
                self._saves += 1
                if blocking:
                    d = self._native.save(stream, buffers, step=s, compress=c, item_sizes=sizes, metrics=m)
                    return _save_info(d, m)
                # Whether this save is the exit checkpoint, known here: once its thread commits, the core's
                # exit_pending() no longer says so until the commit is done.
                exiting = bool(self._native.exit_pending())
                native = self._native.save_async(stream, buffers, step=s, compress=c, item_sizes=sizes, metrics=m)
                h = SaveHandle(native, m)
                h._exit = exiting
                self._inflight = h
                return h
        finally:
            _release(stream, buffers)

    def _save_collective(
        self, mpi: _mpi.Collective, obj: Any, s: int, c: str | None, m: str | None, blocking: bool
    ) -> SaveInfo | SaveHandle:
        pickled = None
        failed: Exception | None = None
        try:
            pickled = _pickling.dumps(obj)
        except Exception as e:
            failed = e
        native = self._native

        def write(generation: int, metrics: str | None) -> Any:
            assert pickled is not None
            stream, buffers, sizes = pickled
            if blocking:
                return native.save_part(
                    stream, buffers, generation=generation, step=s, compress=c, item_sizes=sizes, metrics=metrics
                )
            return native.save_part_async(
                stream, buffers, generation=generation, step=s, compress=c, item_sizes=sizes, metrics=metrics
            )

        try:
            with self._save_lock:
                # At most one in flight: the previous background step is committed (or failed) first.
                self._settle_inflight(raise_failure=False)
                self._saves += 1
                if not blocking:
                    exiting = bool(native.exit_pending())  # see save(): known reliably only now
                    pending = mpi.start(native, write, s, failed, m)
                    h = _CollectiveSaveHandle(self, mpi, pending)
                    h._exit = exiting
                    self._inflight = h
                    return h
                d, manifest, m = mpi.save(native, write, s, failed, m)
        finally:
            if pickled is not None:
                _release(pickled[0], pickled[1])
        d = dict(d)
        d["generation_path"] = d["path"]
        d["path"] = manifest
        return _save_info(d, m)

    def _progress(self, block: bool) -> None:
        """With ``comm``: commits the step of the background save in flight once every rank's part is
        durable (``block``: waits for it). Collective."""
        h = self._inflight
        if self._mpi is not None and isinstance(h, _CollectiveSaveHandle):
            h._progress(block)

    def _settle_inflight(self, raise_failure: bool = True) -> None:
        """Waits for the background save in flight. Its failure, unless its handle reported it already, is
        raised (``raise_failure``) or printed on stderr (a newer save supersedes it)."""
        h = self._inflight
        if h is None:
            return
        err = h._settle()
        self._inflight = None
        if err is None:
            return
        h._observed = True
        if raise_failure:
            raise err
        print(f"ckpt: the background save of step {h.step} failed: {err}", file=sys.stderr, flush=True)

    def restore(
        self,
        default: Any = None,
        *,
        mmap: bool | None = None,
        writable: bool = True,
        trusted: bool = False,
        step: int | None = None,
    ) -> Any:
        """The newest valid checkpoint's object of this run, or ``default`` when there is none (a first run).

        Which checkpoints count is :func:`load`'s rule (this run's own; another job's only for a full
        identity match, announced; ``CKPT_RESUME_FROM``). Falls back to older generations when newer files
        are damaged, cannot be unpickled, or another user could have written them (the rejected files and
        why are in :attr:`RestoreInfo.rejected`, the fallback also on stderr and in the log); sets
        :attr:`restored` and :attr:`restore_notices`. Raises :class:`NoValidCheckpointError` when
        checkpoints exist but none verifies and unpickles (listing each file and why),
        :class:`ConflictError` when checkpoints under this run's name belong to another run, and
        :class:`UntrustedCheckpointError` as :func:`load` does. ``mmap`` and ``writable`` as for
        :func:`load`: by default what was saved writable comes back writable (copy-on-write views of the
        file), so code that updates arrays in place works the same after a requeue.
        
        ``step=N`` restores the newest valid checkpoint of step ``N`` that discovery sees (see
        :func:`ckpt.checkpoints`) instead of the newest one, or raises :class:`NoValidCheckpointError`
        listing the valid steps. Waits first for a background save in flight.
        """
        self._settle_inflight()
        self.restored = None
        self.restore_notices = ()
        native = self._native
        if self._mpi is not None:
            return self._restore_collective(self._mpi, default, mmap, writable, trusted, step)
        if step is not None:
            # A chosen step (ckpt.checkpoints() lists them): that file, or NoValidCheckpointError.
            entry = _entry_of_step(step, self.restart_directory, self.name)
            p = os.fspath(entry.path)
            st = os.stat(p)
            stream, buffers, info = _ckpt.load_file(p, mmap=mmap, verify=True, writable=writable)
            try:
                obj = _unpickle(stream, buffers, info, trusted, (st.st_dev, st.st_ino), writable)
            except Exception as e:
                if _fatal(e) or isinstance(e, CheckpointError) and not isinstance(e, EncodingError):
                    raise
                raise CorruptCheckpointError(
                    f"{p}: {_unpickle_failure(e)}", kind="corrupt", path=p, section=_ckpt.PICKLE_SECTION
                ) from e
            info["rejected"] = []
            info["other_job"] = None if entry.own_job else entry.job_id
            self.restored = _restore_info(info)
            native.log_event("restore", json.dumps({"path": p, "generation": entry.generation, "step": entry.step, "chosen_by": "step"}))
            return obj

        def fetch(max_generation: int | None) -> tuple[Any, list[str]]:
            found, notices = native.restore(mmap=mmap, writable=writable, max_generation=max_generation)
            return found, list(notices)

        def log(path: str, why: str, generation: int) -> None:
            native.log_event("restore-rejected", json.dumps({"path": path, "error": why}))
            # Like a generation that fails verification: not counted toward keep, renamed aside later.
            native.mark_damaged(generation)

        obj, info, notices = _restore_with_fallback(
            fetch, trusted=trusted, writable=writable, allow_fresh_start=_allow_fresh_start, log=log
        )
        self.restore_notices = tuple(notices)
        if info is None:
            return default
        self.restored = _restore_info(info)
        return obj

    def _restore_collective(
        self, mpi: _mpi.Collective, default: Any, mmap: bool | None, writable: bool, trusted: bool, step: int | None
    ) -> Any:
        native = self._native
        notices: list[str] = []

        def fetch(max_generation: int | None) -> Any:
            # Always with a bound: it verifies this rank's part of a step only (the ranks agree on the step
            # among themselves), as ckpt_mpi.h does. Without one, every rank's part would have to verify in
            # the directory of the manifest, which a node-local cache never holds (only its node's parts).
            bound = _MAX_GENERATION if max_generation is None else max_generation
            found, new = native.restore(mmap=mmap, writable=writable, max_generation=bound)
            notices.extend(n for n in new if n not in notices)
            return found

        def unpickle(found: Any) -> Any:
            stream, buffers, info = found
            return _unpickle(stream, buffers, info, trusted, writable=writable)

        # Parts a lost node had, back from their partners first (nothing without CKPT_PARTNER).
        mpi.partner_restore(native)
        if step is not None:
            if not _is_integer(step):
                raise TypeError(f"step must be an integer, not {step!r}")
            obj, info = mpi.restore_step(fetch, unpickle, int(step))
            event = {"path": str(info["path"]), "generation": info["generation"], "step": int(step)}
            event["chosen_by"] = "step"
            native.log_event("restore", json.dumps(event))
        else:
            obj, info = mpi.restore(fetch, unpickle, _allow_fresh_start)
        self.restore_notices = tuple(notices)
        if info is None:
            return default
        info["notices"] = notices
        self.restored = _restore_info(info)
        return obj

    # -- signals --------------------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Puts this checkpointer's signal handlers back on top, after other code replaced them.

        Python handlers installed since (a framework's) keep being called, after ours. See
        :func:`ckpt.install_signal_handlers`.
        """
        if self._native.closed:
            raise InvalidStateError("the checkpointer is closed", kind="invalid state")
        self._handlers.reinstall()

    # -- information ----------------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The checkpoint's stable name, ``<directory>/<job_id>.ckpt``."""
        return Path(self._native.path)

    @property
    def directory(self) -> Path:
        """Where checkpoints are written."""
        return Path(self._native.checkpoint_dir)

    @property
    def restart_directory(self) -> Path:
        """Where restart discovery looks."""
        return Path(self._native.restart_dir)

    @property
    def name(self) -> str:
        """The application name."""
        return self._native.name

    @property
    def interval(self) -> float | str | None:
        """The interval in seconds, ``"auto"``, or ``None``."""
        return self._native.interval

    @property
    def keep(self) -> int:
        """Generations kept (the newest; ``keep_best`` keeps the best besides)."""
        return self._native.keep

    @property
    def signals(self) -> tuple[int, ...]:
        """The signals that request a checkpoint."""
        return tuple(s for s, _ in self._native.signals)

    @property
    def socket_path(self) -> Path | None:
        """The control socket ``ckpt create`` talks to, if any."""
        p = self._native.socket_path
        return None if p is None else Path(p)

    @property
    def rank(self) -> int:
        """This process's rank (from ``comm``, else the launcher's variables; 0 for a single process)."""
        return self._native.rank[0]

    @property
    def nranks(self) -> int:
        """The number of ranks that checkpoint together (``comm``'s size; 1 for a single process)."""
        return self._native.rank[1]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._native.closed

    def log(self, event: str, **fields: Any) -> None:
        """Writes one event with ``fields`` to the checkpointer's JSON log."""
        self._native.log_event(event, json.dumps(fields, default=str))

    # -- lifetime -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Waits until a background save in flight is durable (raising its failure, unless its handle
        reported it), then removes the signal handlers (the previous ones come back), stops the watcher
        thread and the control socket, and frees the staging buffer of background saves. Idempotent. Does
        not save: save before, if you need to."""
        native = getattr(self, "_native", None)
        if native is None or native.closed:
            return
        try:
            self._settle_inflight()  # durable before the handlers go (a SIGTERM's checkpoint, say)
        finally:
            native.release_staging()
            native.close()
            self._handlers.restore()
            with _active_lock:
                _active.discard(self)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        # An exception is propagating: still wait for a background save, but do not hide the exception.
        try:
            self.close()
        except Exception as e:
            print(f"ckpt: {e}", file=sys.stderr, flush=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<ckpt.Checkpointer {self.path} ({state})>"


def install_signal_handlers() -> None:
    """Puts the signal handlers of every open :class:`Checkpointer` back on top.

    Call it after a framework installed its own handlers for the same signals (``signal.signal``
    replaces the C-level handler the core relies on). The framework's handlers keep being called, after
    ours. Must be called from the main thread.
    """
    with _active_lock:
        checkpointers = list(_active)
    for cp in checkpointers:
        if not cp.closed:
            cp.install_signal_handlers()


def _wait_at_exit() -> None:
    """At the interpreter's exit: background saves become durable before the process ends."""
    with _active_lock:
        checkpointers = list(_active)
    for cp in checkpointers:
        try:
            cp._settle_inflight()
        except Exception as e:
            print(f"ckpt: {e}", file=sys.stderr, flush=True)


atexit.register(_wait_at_exit)
