"""A checkpoint that verifies but cannot be unpickled is a damaged checkpoint (issue 18): restart falls
back to the previous generation, as after a CRC failure, and never raises a bare unpickling error."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import ckpt


def _explode():
    raise ValueError("this object cannot be rebuilt")


class Unloadable:
    """Pickles fine; unpickling it raises ValueError (as a class whose __setstate__ changed would)."""

    def __reduce__(self):
        return (_explode, ())


class Gone:
    """Unpickling it fails with an AttributeError, as for a class that was renamed or removed."""


def save_generations(cp_or_none, *objs):
    for obj in objs:
        if cp_or_none is None:
            ckpt.save(obj)
        else:
            cp_or_none.save(obj)


def test_load_falls_back_past_a_generation_that_cannot_be_unpickled(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("CKPT_KEEP", "3")
    save_generations(None, {"step": 1, "a": np.arange(10)}, {"step": 2, "bad": Unloadable()})
    back = ckpt.load()
    assert back["step"] == 1 and np.array_equal(back["a"], np.arange(10))
    err = capfd.readouterr().err
    assert "cannot be unpickled" in err and "ValueError" in err and "falling back" in err, err


def test_checkpointer_restore_records_why_the_newer_one_was_rejected(tmp_path):
    with ckpt.Checkpointer(directory=tmp_path / "c", signals=(), keep=3) as cp:
        save_generations(cp, {"step": 1}, {"step": 2}, {"step": 3, "bad": Unloadable()})
    with ckpt.Checkpointer(directory=tmp_path / "c", signals=(), keep=3) as cp:
        assert cp.restore() == {"step": 2}
        info = cp.restored
        assert info is not None and info.generation == 2 and info.step == 2
        assert info.rejected, "the newer file is listed"
        path, why = info.rejected[0]
        assert path.startswith(str(tmp_path / "c")) and "cannot be unpickled" in why and "ValueError" in why
        assert any("falling back" in n for n in cp.restore_notices)
        assert "restore-rejected" in (tmp_path / "c" / "pytest.ckpt.log").read_text()


def test_no_generation_unpickles_gives_no_valid_checkpoint_listing_each(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    save_generations(None, {"step": 1, "bad": Unloadable()}, {"step": 2, "bad": Unloadable()})
    with pytest.raises(ckpt.NoValidCheckpointError) as e:
        ckpt.load()
    msg = str(e.value)
    assert "pytest.ckpt.2" in msg or "pytest.ckpt:" in msg, msg
    assert "pytest.ckpt.1" in msg and msg.count("ValueError") >= 2, msg
    assert isinstance(e.value.__cause__, ValueError)
    with ckpt.Checkpointer(signals=()) as cp, pytest.raises(ckpt.NoValidCheckpointError):
        cp.restore()
    monkeypatch.setenv("CKPT_ALLOW_FRESH_START", "1")
    assert ckpt.load(default="fresh") == "fresh"


def test_a_damaged_older_generation_is_listed_too(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    save_generations(None, {"step": 1}, {"step": 2, "bad": Unloadable()})
    older = tmp_path / "c" / "pytest.ckpt.1"
    data = bytearray(older.read_bytes())
    data[-20] ^= 0xFF
    older.write_bytes(bytes(data))
    with pytest.raises(ckpt.NoValidCheckpointError) as e:
        ckpt.load()
    msg = str(e.value)
    assert "cannot be unpickled" in msg and "pytest.ckpt.1" in msg, msg


def test_missing_class_falls_back_too(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    ckpt.save({"step": 1})
    ckpt.save({"step": 2, "obj": Gone()})
    saved = Gone
    try:
        del globals()["Gone"]
        assert ckpt.load() == {"step": 1}
    finally:
        globals()["Gone"] = saved


def test_explicit_path_raises_corrupt_naming_the_file(tmp_path):
    ckpt.save({"bad": Unloadable()}, "s.ckpt")
    with pytest.raises(ckpt.CorruptCheckpointError) as e:
        ckpt.load("s.ckpt")
    assert "s.ckpt" in str(e.value) and e.value.path == "s.ckpt" and "ValueError" in str(e.value)
    assert isinstance(e.value.__cause__, ValueError)
    assert not isinstance(e.value, (ValueError, pickle.UnpicklingError))


def test_a_generation_that_cannot_be_unpickled_never_counts_toward_keep(tmp_path):
    """After falling back past it, the next saves keep the valid older generation, not the broken one."""
    d = tmp_path / "c"
    with ckpt.Checkpointer(directory=d, signals=(), keep=2) as cp:
        save_generations(cp, {"step": 1}, {"step": 2, "bad": Unloadable()})
    with ckpt.Checkpointer(directory=d, signals=(), keep=2) as cp:
        assert cp.restore() == {"step": 1}
        cp.save({"step": 3})
    names = sorted(p.name for p in d.iterdir() if not p.name.endswith(".log"))
    assert "pytest.ckpt.1" in names, f"the valid older generation was retired for the broken one: {names}"
    assert "pytest.ckpt.2.damaged" in names and "pytest.ckpt.2" not in names, names
