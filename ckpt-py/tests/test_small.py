"""The smaller defects of issue 18: argument checks, errors, threads, the wheel."""

from __future__ import annotations

import errno
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt import _pickling


def test_load_of_a_missing_path_raises_unless_a_default_is_given():
    with pytest.raises(FileNotFoundError) as e:
        ckpt.load("typo.ckpt")
    assert e.value.errno == errno.ENOENT and e.value.filename == "typo.ckpt"
    assert ckpt.load("typo.ckpt", default=None) is None
    assert ckpt.load("typo.ckpt", default={"step": 0}) == {"step": 0}
    assert ckpt.load() is None, "discovery with nothing found: a first run"


def test_loading_a_directory_is_is_a_directory_error(tmp_path):
    os.mkdir("adir")
    with pytest.raises(IsADirectoryError) as e:
        ckpt.load("adir")
    assert e.value.errno == errno.EISDIR and e.value.filename == "adir"


def test_checkpointer_on_a_directory_it_cannot_write_fails_at_construction(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError) as e:
        ckpt.Checkpointer(directory=tmp_path / "afile" / "c", signals=())
    assert str(tmp_path / "afile") in str(e.value)
    if os.geteuid() != 0:  # root writes anyway
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="cannot write checkpoints"):
            ckpt.Checkpointer(directory=ro, signals=())
    with ckpt.Checkpointer(directory=tmp_path / "new" / "c", signals=()) as cp:
        assert cp.directory.is_dir(), "created at once"
        assert not [n for n in os.listdir(cp.directory) if n.startswith(".ckpt-write-test")], "no probe left"
    import signal

    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "a refused checkpointer leaves no handlers"


@pytest.mark.parametrize("keep", [-1, 0, -(2**70)])
def test_keep_below_one_is_invalid_argument(keep):
    with pytest.raises(ckpt.InvalidArgumentError, match="keep must be at least 1"):
        ckpt.Checkpointer(keep=keep, signals=())


def test_huge_and_numpy_steps(tmp_path):
    for bad, why in ((2**63, "64-bit"), (-1, "step -1 is negative"), (-(2**63) - 1, "is negative")):
        with pytest.raises(ckpt.InvalidArgumentError, match=why):
            ckpt.save({"step": bad}, "s.ckpt")
        with pytest.raises(ckpt.InvalidArgumentError, match=why):
            ckpt.save({}, "s.ckpt", step=bad)
    assert ckpt.save({"step": 2**63 - 1}, "s.ckpt").step == 2**63 - 1
    assert ckpt.save({"step": np.int64(41)}, "s.ckpt").step == 41
    assert ckpt.save({"step": np.uint32(7)}, "s.ckpt").step == 7
    assert ckpt.save({}, "s.ckpt", step=np.int64(5)).step == 5
    assert ckpt.save({"step": True}, "s.ckpt").step == 0, "a bool is not a step"
    with ckpt.Checkpointer(directory=tmp_path / "c", signals=()) as cp:
        assert cp.save({"step": np.int64(12)}).step == 12
        with pytest.raises(ckpt.InvalidArgumentError):
            cp.save({"step": 2**64})


@pytest.mark.parametrize("sig", ["SIGKILL", "KILL", "sigkill", 9, "SIGSTOP", 19])
def test_uncatchable_signals_say_they_cannot_be_used(sig):
    with pytest.raises(ckpt.InvalidArgumentError, match="cannot be used") as e:
        ckpt.Checkpointer(signals=[sig])
    assert "unknown" not in str(e.value)


def test_threads_saving_the_configured_checkpoint_are_serialized(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("CKPT_KEEP", "50")
    errors = []

    def saver(t):
        try:
            for i in range(5):
                ckpt.save({"t": t, "i": i, "a": np.full(1000, t)})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=saver, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    gens = sorted(int(p.name.rsplit(".", 1)[1]) for p in (tmp_path / "c").glob("pytest.ckpt.*") if p.name[-1].isdigit())
    assert gens == list(range(1, 41))


def test_exceptions_are_shown_as_ckpt_names():
    for name in ckpt._errors.__all__:
        cls = getattr(ckpt, name)
        assert cls.__module__ == "ckpt" and repr(cls) == f"<class 'ckpt.{name}'>"
    e = ckpt.CorruptCheckpointError("bad", kind="corrupt", path="p", section="s")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is ckpt.CorruptCheckpointError and back.path == "p"


def test_wheel_extension_has_no_debug_info():
    so = Path(ckpt._ckpt.__file__)
    assert so.stat().st_size < 8 << 20, f"{so} is {so.stat().st_size} bytes: debug info kept?"


# -- memoryview formats (issue 18: a float16 memoryview saved on 3.13 could not be loaded on 3.11) ---------


@pytest.mark.parametrize("n", [4, 40000], ids=["in-stream", "out-of-band"])
def test_float16_memoryviews_round_trip_on_every_python(n):
    a = np.arange(n, dtype=np.float16).reshape(2, n // 2)
    ckpt.save({"m": memoryview(a)}, "f.ckpt")
    m = ckpt.load("f.ckpt")["m"]
    assert m.format == "e" and m.shape == (2, n // 2) and not m.readonly
    assert np.array_equal(np.asarray(m), a)


def test_float16_without_numpy_is_a_clear_encoding_error(monkeypatch):
    import builtins
    import sys

    m = memoryview(np.arange(4, dtype=np.float16))
    ckpt.save({"m": m}, "f.ckpt")
    if sys.version_info >= (3, 12):
        assert ckpt.load("f.ckpt")["m"].format == "e", "memoryview.cast knows float16 since 3.12"
        return
    real_import = builtins.__import__

    def no_numpy(name, *args, **kw):
        if name == "numpy":
            raise ImportError("no numpy here")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_numpy)
    with pytest.raises(ckpt.CorruptCheckpointError) as e:
        ckpt.load("f.ckpt")
    assert isinstance(e.value.__cause__, ckpt.EncodingError) and "'e'" in str(e.value.__cause__)


@pytest.mark.parametrize("dtype", [">f8", ">i4", [("x", "i4")], "c16"], ids=["big-endian", ">i", "struct", "complex"])
def test_memoryview_formats_no_python_can_rebuild_are_refused_at_save(dtype):
    m = memoryview(np.zeros(4, dtype=np.dtype(dtype)))
    assert m.format.lstrip("@") not in _pickling._CASTABLE
    with pytest.raises(ckpt.EncodingError, match="format"):
        ckpt.save({"m": m}, "x.ckpt")
    assert not os.path.exists("x.ckpt")


def test_persistent_ids_work_without_setting_the_pickler_attribute():
    # CPython 3.13.0 refuses `pickler.persistent_id = ...` on a pickle.Pickler: saves must not need it.
    big = b"x" * (1 << 17)
    stream, buffers, _ = _pickling.dumps({"b": big, "m": memoryview(big)})
    n, size = len(buffers), len(stream)
    _pickling._release(stream, buffers) if hasattr(_pickling, "_release") else None
    del stream, buffers
    assert n == 2 and size < 1024
    ckpt.save({"b": big, "m": memoryview(big), "a": np.ones(10)}, "p.ckpt")
    back = ckpt.load("p.ckpt")
    assert back["b"] == big and bytes(back["m"]) == big
