"""Small numpy arrays (pickled in band) are loaded as views of the private memory their bytes are already in
(issue 18: 50,000 arrays of 8 KiB must load with ``mmap=False`` in at most ``pickle.load``'s time).

The loader rewrites the stream's in-band ``BYTEARRAY8`` of numpy's ``_frombuffer`` calls into out-of-band
buffers (``ckpt-py/src/inband.rs``). Whatever it does, restored objects must be what was saved: values,
dtypes, shapes, order, writability, alignment, identity, and a user's own ``bytearray`` stays a
``bytearray``.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import ckpt

LOADS = [
    pytest.param({"mmap": False}, id="read"),
    pytest.param({}, id="mapped-cow"),
    pytest.param({"writable": False}, id="read-only"),
    pytest.param({"mmap": False, "writable": False}, id="read-read-only"),
]


def owner(a):
    """What finally owns an array's memory (through numpy bases and memoryviews)."""
    x = a
    while isinstance(x, (np.ndarray, memoryview)):
        x = x.base if isinstance(x, np.ndarray) else x.obj
    return x


def mixed_state() -> dict:
    rng = np.random.default_rng(7)
    frozen = np.arange(300, dtype=np.int16)
    frozen.flags.writeable = False
    shared = np.arange(1000, dtype=np.float64)
    s = {
        "step": 5,
        "u8": [np.full(8192, i, dtype=np.uint8) for i in range(40)],
        # odd sizes move the following payloads off any alignment
        "odd": [np.arange(n, dtype=np.uint8) for n in (257, 1001, 3333)],
        "f64": [rng.random(999) for _ in range(8)],
        "c128": rng.random(300) + 1j * rng.random(300),
        "f32_2d_fortran": np.asfortranarray(rng.random((40, 30), dtype=np.float32)),
        "tiny": np.arange(3, dtype=np.int64),
        "empty": np.zeros(0, dtype=np.float32),
        "frozen": frozen,
        "shared_a": shared,
        "shared_b": shared,
        "user_bytearray": bytearray(b"x" * 5000),
        "user_bytes": b"y" * 5000,
        "structured": np.zeros(100, dtype=[("a", "<i4"), ("b", "<f8")]),
        "big": np.arange(20_000, dtype=np.float64),  # out of band (>= 64 KiB)
    }
    s["nested"] = {"again": s["u8"][3], "list": [s["f64"][0], bytearray(b"z" * 300)]}
    return s


def check_equal(back, orig, writable: bool) -> None:
    assert back["step"] == 5
    for k in ("u8", "odd", "f64"):
        assert len(back[k]) == len(orig[k])
        for a, b in zip(back[k], orig[k], strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    for k in ("c128", "f32_2d_fortran", "tiny", "empty", "frozen", "shared_a", "structured", "big"):
        a, b = back[k], orig[k]
        assert a.dtype == b.dtype and a.shape == b.shape, k
        np.testing.assert_array_equal(a, b)
    assert back["f32_2d_fortran"].flags.f_contiguous
    assert type(back["user_bytearray"]) is bytearray and back["user_bytearray"] == orig["user_bytearray"]
    assert type(back["user_bytes"]) is bytes and back["user_bytes"] == orig["user_bytes"]
    assert type(back["nested"]["list"][1]) is bytearray
    assert back["shared_a"] is back["shared_b"], "one object saved twice comes back as one"
    assert back["nested"]["again"] is back["u8"][3]
    assert not back["frozen"].flags.writeable, "saved read-only: restored read-only"
    for a in [*back["u8"], *back["odd"], *back["f64"], back["c128"], back["f32_2d_fortran"], back["structured"]]:
        assert a.flags.aligned, "restored arrays are aligned, as the copies were"
        # writable=False: small arrays are private copies, as documented (only mapped sections are read-only)
        assert a.flags.writeable or not writable


@pytest.mark.parametrize("kw", LOADS)
def test_small_arrays_round_trip_exactly(tmp_path, kw):
    orig = mixed_state()
    ckpt.save(orig, tmp_path / "s.ckpt")
    back = ckpt.load(tmp_path / "s.ckpt", **kw)
    check_equal(back, orig, writable=kw.get("writable", True))


@pytest.mark.parametrize("kw", [{"mmap": False}, {}], ids=["read", "mapped-cow"])
def test_writes_to_small_arrays_stay_private(tmp_path, kw):
    orig = mixed_state()
    ckpt.save(orig, tmp_path / "s.ckpt")
    back = ckpt.load(tmp_path / "s.ckpt", **kw)
    for a in back["u8"]:
        a += 1
    back["f64"][2][:] = -1.0
    other = ckpt.load(tmp_path / "s.ckpt", **kw)
    check_equal(other, orig, writable=True)
    assert all((a == b + 1).all() for a, b in zip(back["u8"], orig["u8"], strict=True))
    assert back["u8"][0][0] == 1 and back["u8"][1][0] == 2, "neighbours are separate arrays"
    ckpt.verify(tmp_path / "s.ckpt")


def test_small_arrays_are_not_copied_one_by_one(tmp_path):
    """The point of the rewrite: with mmap=False, small uint8 arrays are views of the memory the file was
    read into (no bytearray per array); with the default, views of the copy-on-write mapping."""
    ckpt.save({"a": [np.full(8192, i, dtype=np.uint8) for i in range(10)], "b": bytearray(300)}, tmp_path / "s.ckpt")
    for kw in ({"mmap": False}, {}):
        back = ckpt.load(tmp_path / "s.ckpt", **kw)
        owners = {id(owner(a)) for a in back["a"]}
        assert len(owners) == 1, "one memory for all of them"
        assert type(owner(back["a"][0])).__name__ == "MappedBuffer"
        assert type(back["b"]) is bytearray
    back = ckpt.load(tmp_path / "s.ckpt", writable=False)
    assert all(type(owner(a)) is bytearray for a in back["a"]), "writable=False: private copies, as before"


def test_a_stream_the_rewrite_does_not_understand_loads_as_before(tmp_path):
    """Objects whose pickles look almost like numpy's pattern are left alone."""

    class Fake:
        def __reduce__(self):
            # a callable that is not numpy's _frombuffer, with a bytearray first after the mark
            return (bytearray, (bytearray(b"q" * 4000),))

    s = {"fake": Fake(), "arr": np.arange(1000, dtype=np.int32), "ba_first": (bytearray(b"r" * 2000), 1)}
    ckpt.save(s, tmp_path / "s.ckpt")
    back = ckpt.load(tmp_path / "s.ckpt", mmap=False)
    assert type(back["fake"]) is bytearray and back["fake"] == b"q" * 4000
    assert type(back["ba_first"][0]) is bytearray
    np.testing.assert_array_equal(back["arr"], np.arange(1000, dtype=np.int32))
    assert pickle.loads(pickle.dumps(back["arr"], protocol=5)).tolist() == list(range(1000))


def test_memory_reused_between_loads_never_shows_old_bytes(tmp_path):
    """mmap=False keeps the last large read-into memory freed (every view gone) for the next load: a load
    must see only its own file's bytes, and memory still in use is never handed out again."""
    a = {"x": [np.full(8192, 1, dtype=np.uint8) for _ in range(3000)], "big": np.ones(1 << 20)}  # ~33 MB
    b = {"x": [np.full(8192, 2, dtype=np.uint8) for _ in range(2500)], "big": np.full(1 << 20, 2.0)}  # ~29 MB
    ckpt.save(a, tmp_path / "a.ckpt")
    ckpt.save(b, tmp_path / "b.ckpt")
    la = ckpt.load(tmp_path / "a.ckpt", mmap=False)
    assert all((x == 1).all() for x in la["x"]) and (la["big"] == 1).all()
    for x in la["x"]:
        x += 40  # written: these pages are this load's, dirty
    del la, x
    lb = ckpt.load(tmp_path / "b.ckpt", mmap=False)  # may reuse a's memory
    assert len(lb["x"]) == 2500 and all((x == 2).all() for x in lb["x"]) and (lb["big"] == 2).all()
    la = ckpt.load(tmp_path / "a.ckpt", mmap=False)  # b's memory is in use: not reused
    assert all((x == 1).all() for x in la["x"]) and (la["big"] == 1).all()
    assert all((x == 2).all() for x in lb["x"]) and (lb["big"] == 2).all()
    la["big"][:] = 7
    assert (lb["big"] == 2).all()
    ckpt.verify(tmp_path / "a.ckpt")
    ckpt.verify(tmp_path / "b.ckpt")
