"""Pickle protocol 5 with out-of-band buffers, as ``ckpt`` stores objects.

Saving pickles the object with protocol 5. Buffers of at least :data:`OUT_OF_BAND_MIN` bytes leave the
pickle stream and become their own file sections, written straight from their memory:

* objects that hand pickle a :class:`pickle.PickleBuffer` themselves (numpy arrays, and any class whose
  ``__reduce_ex__(5)`` does so);
* ``bytes``, ``bytearray`` and ``memoryview`` objects, caught by the pickler's ``persistent_id`` (plain
  pickle copies the first two into the stream and cannot pickle memoryviews at all).

Loading passes the sections back: numpy arrays become views of the file's memory mapping (zero copy;
copy-on-write by default, so they are writable as they were when saved and writes never reach the file;
read-only with ``writable=False``) or of a private ``bytearray`` (``mmap=False``, or compressed
sections); ``bytes`` and ``bytearray`` objects are rebuilt as copies (they own their memory); memoryviews
come back with their format, shape and read-only flag, over the mapped bytes when possible. Identity is
kept: an object referenced twice is stored once and comes back as one object.

Memoryviews are stored as their bytes, format and shape, and rebuilt with ``memoryview.cast``. A format
that the loading Python cannot cast to (``"e"``, float16, before Python 3.12) is rebuilt through numpy
when numpy is installed, else loading raises :class:`ckpt.EncodingError` naming the format. Formats that
no Python can cast to (non-native byte order, structures...) are refused at save with
:class:`ckpt.EncodingError` naming the format.
"""

from __future__ import annotations

import array
import io
import pickle
import sys
from collections.abc import Callable
from typing import Any

from . import _ckpt
from ._errors import EncodingError

#: Buffers smaller than this stay inside the pickle stream (each out-of-band buffer costs a 4 KiB-aligned
#: section and a 128-byte table entry). Tests lower it to send every buffer out of band.
OUT_OF_BAND_MIN = 64 * 1024

#: The persistent-id tag of ``ckpt``'s out-of-band bytes, bytearray and memoryview objects.
_TAG = "ckpt.buffer"
#: memoryview formats that ``memoryview.cast`` can restore (``e`` from Python 3.12, else through numpy).
_CASTABLE = frozenset("bBhHiIlLqQnNfdeP?c")


def _collector(buffers: list[pickle.PickleBuffer]) -> Callable[[pickle.PickleBuffer], bool]:
    """The pickler's buffer callback: large contiguous buffers out of band, into ``buffers``."""

    def buffer_callback(pb: pickle.PickleBuffer) -> bool:
        # Returning a true value keeps the buffer in the stream; None sends it out of band.
        with memoryview(pb) as m:
            if m.nbytes < OUT_OF_BAND_MIN or not m.contiguous:
                return True
        buffers.append(pb)
        return None  # type: ignore[return-value]

    return buffer_callback


def _slow_ids(seen: dict[int, tuple[Any, Any]]) -> Callable[[Any], Any]:
    """The pickler's ``persistent_id`` for the objects :class:`ckpt._ckpt.PersistentIds` lets through
    (bytes and bytearray of at least :data:`OUT_OF_BAND_MIN` bytes, memoryviews)."""

    def persistent_id(obj: Any) -> Any:
        hit = seen.get(id(obj))
        if hit is not None:
            return hit[1]
        t = type(obj)
        if t is memoryview:
            if obj.format.lstrip("@") not in _CASTABLE:
                raise EncodingError(
                    f"cannot save a memoryview of format {obj.format!r}: ckpt stores memoryviews of the native "
                    f"single-item formats {''.join(sorted(_CASTABLE))!r} only (what memoryview.cast can rebuild); "
                    "convert it first (numpy.asarray(view), or bytes(view))",
                    kind="encoding",
                )
            pid: Any = _memoryview_pid(obj)
        else:
            pid = (_TAG, t.__name__, pickle.PickleBuffer(obj))
        seen[id(obj)] = (obj, pid)  # keeps obj alive, so its id stays unique during the dump
        return pid

    return persistent_id


def _memoryview_pid(m: memoryview) -> tuple[Any, ...]:
    fmt = m.format.lstrip("@")
    if m.nbytes < OUT_OF_BAND_MIN or not m.c_contiguous:
        data: Any = m.tobytes()  # C order; small ones stay in the stream as bytes
        if m.nbytes >= OUT_OF_BAND_MIN:
            data = pickle.PickleBuffer(data)
    else:
        data = pickle.PickleBuffer(m)
    # The sixth item (absent in files of older versions: read-only) is whether the view was read-only.
    return (_TAG, "memoryview", data, fmt, tuple(m.shape or ()), bool(m.readonly))


#: The modules of numpy's ``_frombuffer`` (numpy 2, numpy 1), which rebuilds arrays pickled with protocol 5.
_NUMPY_NUMERIC = frozenset(("numpy._core.numeric", "numpy.core.numeric"))


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> Any:
    """numpy's ``_frombuffer`` (``frombuffer(buf, dtype).reshape(shape, order)``), for arrays that the
    loader hands over as views of the private memory their bytes are in (see ``ckpt-py/src/inband.rs``)
    rather than as ``bytearray`` copies: a view whose address is not aligned for the dtype is copied, so a
    restored array is aligned, as the copies were."""
    a = _numpy_frombuffer(buf, dtype)
    if dtype.alignment > 1 and not a.flags.aligned:
        with memoryview(buf) as m:
            a = _numpy_frombuffer(bytes(m) if m.readonly else bytearray(m), dtype)
    # A one-dimensional array has its shape already (numpy reshapes anyway: a second array object).
    return a if a.shape == shape else a.reshape(shape, order=order)


#: ``numpy.frombuffer``, once an unpickled stream used numpy.
_numpy_frombuffer: Any = None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, buffers: list[Any], writable: bool) -> None:
        super().__init__(file, buffers=buffers)
        self._loaded: dict[int, tuple[Any, Any]] = {}
        self._writable = writable

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if name == "_frombuffer" and module in _NUMPY_NUMERIC:
            global _numpy_frombuffer
            if _numpy_frombuffer is None:
                import numpy

                _numpy_frombuffer = numpy.frombuffer
            return _frombuffer
        return found

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == _TAG):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        hit = self._loaded.get(id(pid))
        if hit is not None:
            return hit[1]
        kind, data = pid[1], pid[2]
        if kind == "bytes":
            obj: Any = bytes(data)
        elif kind == "bytearray":
            obj = bytearray(data)
        elif kind == "memoryview":
            fmt, shape = pid[3], tuple(pid[4])
            readonly = bool(pid[5]) if len(pid) > 5 else True
            writable = self._writable and not readonly
            m = memoryview(data)
            if writable and m.readonly:
                m = memoryview(bytearray(m))  # a small view stored in the stream as bytes: a private copy
            if m.format != "B":
                m = m.cast("B")
            if m.nbytes == 0:
                obj = _empty_view(fmt, shape)
            elif fmt != "B" or len(shape) != 1:
                obj = _cast(m, fmt, shape)
            else:
                obj = m
            if not writable:
                obj = obj.toreadonly()
        else:
            raise pickle.UnpicklingError(f"unsupported ckpt buffer kind {kind!r}")
        self._loaded[id(pid)] = (pid, obj)
        return obj


def _cast(m: memoryview, fmt: str, shape: tuple[int, ...]) -> memoryview:
    """``m`` (format ``B``) as a view of format ``fmt`` and shape ``shape``."""
    try:
        return m.cast(fmt, shape)
    except (ValueError, TypeError) as e:
        if fmt not in _CASTABLE:
            raise
        # A format this Python's memoryview.cast does not know (float16 before 3.12): numpy can.
        try:
            import numpy
        except ImportError:
            raise EncodingError(
                f"a memoryview of format {fmt!r} cannot be rebuilt by Python "
                f"{sys.version_info.major}.{sys.version_info.minor} ({e}); install numpy, or load it with a "
                "newer Python",
                kind="encoding",
            ) from e
        a = numpy.frombuffer(m, dtype=numpy.dtype(fmt)).reshape(shape)
        return memoryview(a)


def _empty_view(fmt: str, shape: tuple[int, ...]) -> memoryview:
    """An empty memoryview of this format and shape (``memoryview.cast`` refuses zeros in shapes)."""
    if len(shape) == 1:
        try:
            return memoryview(array.array(fmt))
        except (ValueError, TypeError):
            pass
    try:
        import numpy

        m = numpy.empty(shape, dtype=fmt).data
        if m.format.lstrip("@=") == fmt:
            return m
    except Exception:
        pass
    return memoryview(b"")


def dumps(obj: Any) -> tuple[memoryview, list[memoryview], list[int]]:
    """Pickles ``obj``: the stream, the out-of-band buffers (as flat byte views of their memory, in the
    order ``loads`` needs them) and each buffer's item size (for byte-shuffling before compression)."""
    buffers: list[pickle.PickleBuffer] = []
    seen: dict[int, tuple[Any, Any]] = {}
    f = io.BytesIO()
    # persistent_id is a class attribute of a pickler class made for this dump: CPython 3.13.0 refuses to set
    # it on a Pickler instance (a regression), and a class attribute that is not a function is not bound
    # to the pickler, so the C filter is called directly. The buffer callback and persistent_id are
    # closures, not methods: a pickler in a reference cycle would leave its memo (memoryviews with exports)
    # to the garbage collector, which crashes CPython 3.11 on them. The memo is cleared here, while
    # everything is alive.
    pickler = type(
        "_Pickler", (pickle.Pickler,), {"persistent_id": _ckpt.PersistentIds(_slow_ids(seen), OUT_OF_BAND_MIN)}
    )
    p = pickler(f, protocol=5, buffer_callback=_collector(buffers))
    try:
        p.dump(obj)
    finally:
        p.clear_memo()
        seen.clear()
        del p
    sizes = []
    for pb in buffers:
        with memoryview(pb) as m:
            sizes.append(m.itemsize)
    return f.getbuffer(), [pb.raw() for pb in buffers], sizes


class _Reader:
    """A read-only file over a buffer, without copying it (``io.BytesIO`` copies anything but ``bytes``: 0.5 s
    for a 400 MB stream of 50,000 small arrays). The unpickler reads protocol 5 frames (up to 64 KiB)
    with ``read``, and large in-band data with ``readinto``."""

    __slots__ = ("_m", "_pos")

    def __init__(self, buf: Any) -> None:
        self._m = memoryview(buf).cast("B")
        self._pos = 0

    def read(self, n: int | None = -1) -> bytes:
        p, size = self._pos, len(self._m)
        end = size if n is None or n < 0 else min(size, p + n)
        self._pos = end
        return self._m[p:end].tobytes()

    def readinto(self, b: Any) -> int:
        with memoryview(b).cast("B") as dst:
            n = min(len(dst), len(self._m) - self._pos)
            dst[:n] = self._m[self._pos : self._pos + n]
        self._pos += n
        return n

    def readline(self) -> bytes:
        # Only the text opcodes of protocols 0-3 use it: never ckpt's streams (protocol 5).
        p, size = self._pos, len(self._m)
        end = p
        while end < size:
            chunk = self._m[end : min(size, end + 4096)].tobytes()
            i = chunk.find(b"\n")
            if i >= 0:
                end += i + 1
                break
            end += len(chunk)
        self._pos = end
        return self._m[p:end].tobytes()


def loads(stream: Any, buffers: list[Any], writable: bool = True) -> Any:
    """Unpickles a stream written by :func:`dumps` with its buffers (any buffer-protocol objects).
    ``writable=False`` makes memoryviews read-only even when they were writable when saved."""
    reader = _Reader(stream)
    try:
        return _Unpickler(reader, buffers, writable).load()  # type: ignore[arg-type]
    finally:
        reader._m.release()
