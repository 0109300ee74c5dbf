"""Restored state behaves like what was saved, whatever its size or codec (issue 18).

Mapped arrays are copy-on-write views of the file (``MAP_PRIVATE``): writable as when saved, zero copy
until written, and writes never reach the file. ``writable=False`` asks for read-only views.
"""

from __future__ import annotations

import numpy as np
import pytest

import ckpt

SIZES = [1 << 10, 64 << 10, 16 << 20]


def base_of(x):
    while isinstance(x, (np.ndarray, memoryview)):
        x = x.base if isinstance(x, np.ndarray) else x.obj
    return x


def state(nbytes: int) -> dict:
    return {"step": 3, "w": np.arange(nbytes // 8, dtype=np.float64), "frozen": _frozen(nbytes)}


def _frozen(nbytes: int) -> np.ndarray:
    a = np.arange(nbytes // 4, dtype=np.int32)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "zstd"])
@pytest.mark.parametrize("nbytes", SIZES, ids=["1KiB", "64KiB", "16MiB"])
def test_restored_arrays_are_writable_and_writes_never_reach_the_file(tmp_path, nbytes, compress):
    ckpt.save(state(nbytes), "s.ckpt", compress=compress)
    back = ckpt.load("s.ckpt")
    w = back["w"]
    assert w.flags.writeable, "saved writable: restored writable"
    assert not back["frozen"].flags.writeable, "saved read-only: restored read-only"
    w *= 2  # the in-place update a training loop makes (ValueError: output array is read-only before)
    w[0] = -1.0
    np.add(w, 1.0, out=w)
    assert w[0] == 0.0 and w[-1] == 2 * (nbytes // 8 - 1) + 1
    if nbytes >= 64 << 10 and not compress:
        assert isinstance(base_of(w), ckpt.MappedBuffer) and not base_of(w).readonly, "zero copy until written"
    # The file still verifies and still holds what was saved.
    ckpt.verify("s.ckpt")
    again = ckpt.load("s.ckpt")
    assert np.array_equal(again["w"], np.arange(nbytes // 8, dtype=np.float64))
    assert again["w"][0] == 0.0 and again["w"] is not w


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "zstd"])
@pytest.mark.parametrize("nbytes", SIZES, ids=["1KiB", "64KiB", "16MiB"])
def test_writable_false_gives_read_only_views(tmp_path, nbytes, compress):
    ckpt.save(state(nbytes), "s.ckpt", compress=compress)
    back = ckpt.load("s.ckpt", writable=False)
    w = back["w"]
    assert np.array_equal(w, np.arange(nbytes // 8, dtype=np.float64))
    if nbytes >= 64 << 10:  # out of band: read-only views (of the shared mapping when not compressed)
        assert not w.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            w += 1
        if not compress:
            assert isinstance(base_of(w), ckpt.MappedBuffer) and base_of(w).readonly
    else:  # small arrays travel inside the pickle stream: private copies
        assert w.flags.writeable
    assert not back["frozen"].flags.writeable


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "zstd"])
def test_checkpointer_restore_after_requeue_updates_in_place(tmp_path, compress):
    with ckpt.Checkpointer(directory=tmp_path / "c", signals=()) as cp:
        assert cp.restore(default=None) is None
        cp.save(state(16 << 20), compress=compress)
    with ckpt.Checkpointer(directory=tmp_path / "c", signals=()) as cp:
        s = cp.restore()
        assert cp.restored is not None and cp.restored.mapped
        s["w"] += 1.0  # worked on the first run; must work after the requeue too
        assert s["w"][0] == 1.0
        ro = cp.restore(writable=False)
        assert not ro["w"].flags.writeable and ro["w"][0] == 0.0
        s2 = cp.restore(mmap=False)
        assert s2["w"].flags.writeable and s2["w"][0] == 0.0


def test_memoryviews_keep_their_read_only_flag(tmp_path):
    big = bytearray(b"x" * (128 << 10))
    obj = {"rw": memoryview(big), "ro": memoryview(bytes(big)), "small_rw": memoryview(bytearray(b"ab"))}
    ckpt.save(obj, "m.ckpt")
    back = ckpt.load("m.ckpt")
    assert not back["rw"].readonly and back["ro"].readonly and not back["small_rw"].readonly
    back["rw"][0:1] = b"y"
    back["small_rw"][0:1] = b"z"
    assert ckpt.load("m.ckpt")["rw"][0:1] == b"x" and ckpt.load("m.ckpt")["small_rw"] == b"ab"
    ro = ckpt.load("m.ckpt", writable=False)
    assert ro["rw"].readonly and ro["small_rw"].readonly


def test_discovery_load_is_writable_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    ckpt.save(state(1 << 20))
    assert ckpt.load()["w"].flags.writeable
    assert not ckpt.load(writable=False)["w"].flags.writeable
