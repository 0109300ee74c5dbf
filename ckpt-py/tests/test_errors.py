"""Corruption, fallback to older generations, and the exception taxonomy."""

from __future__ import annotations

import errno
import os
import pickle
import struct
from pathlib import Path

import pytest

import ckpt
from ckptfile import damage_section, flip_byte, rename_section, sections
from conftest import APP

np = pytest.importorskip("numpy")


def two_generations(directory: Path) -> None:
    os.environ["CKPT_DIR"] = str(directory)
    ckpt.save({"step": 1, "a": np.full(1 << 15, 1.0)})
    ckpt.save({"step": 2, "a": np.full(1 << 15, 2.0)})


def test_corrupt_section_is_named(tmp_path):
    ckpt.save({"a": np.arange(1 << 15, dtype=np.float64)}, "s.ckpt")
    damage_section(tmp_path / "s.ckpt", "python.buffer.0")
    with pytest.raises(ckpt.CorruptCheckpointError) as e:
        ckpt.load("s.ckpt")
    err = e.value
    assert "python.buffer.0" in str(err) and "crc32 mismatch" in str(err) and "s.ckpt" in str(err)
    assert err.section == "python.buffer.0" and err.path.endswith("s.ckpt") and err.kind == "corrupt"
    assert isinstance(err, ckpt.CheckpointError)
    with pytest.raises(ckpt.CorruptCheckpointError, match="python.buffer.0"):
        ckpt.load("s.ckpt", mmap=False)


def test_corrupt_pickle_stream_is_named(tmp_path):
    ckpt.save({"x": list(range(1000))}, "s.ckpt")
    damage_section(tmp_path / "s.ckpt", "python.pickle")
    with pytest.raises(ckpt.CorruptCheckpointError, match="section `python.pickle`"):
        ckpt.load("s.ckpt")


def test_discovery_falls_back_to_the_previous_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    two_generations(tmp_path / "c")
    newest = tmp_path / "c" / f"{APP}.ckpt.2"  # the same file as ckpt.ckpt (a hard link)
    damage_section(newest, "python.buffer.0")
    back = ckpt.load()
    assert back["step"] == 1 and float(back["a"][0]) == 1.0
    with ckpt.Checkpointer(signals=()) as cp:
        state = cp.restore()
        assert state["step"] == 1
        info = cp.restored
        assert info.generation == 1 and info.path == tmp_path / "c" / f"{APP}.ckpt.1"
        rejected = dict(info.rejected)
        assert set(rejected) == {str(tmp_path / "c" / f"{APP}.ckpt"), str(newest)}
        assert all("python.buffer.0" in m for m in rejected.values())
        # The next save goes above the damaged generation and discovery takes it.
        cp.save({"step": 3, "a": np.zeros(2)})
    assert ckpt.load()["step"] == 3


def test_no_valid_checkpoint_lists_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    two_generations(tmp_path / "c")
    for g in (1, 2):
        damage_section(tmp_path / "c" / f"{APP}.ckpt.{g}", "python.buffer.0")
    with pytest.raises(ckpt.NoValidCheckpointError) as e:
        ckpt.load(default="fresh")
    msg = str(e.value)
    for name in (f"{APP}.ckpt", f"{APP}.ckpt.1", f"{APP}.ckpt.2"):
        assert str(tmp_path / "c" / name) in msg
    assert "CKPT_ALLOW_FRESH_START" in msg
    monkeypatch.setenv("CKPT_ALLOW_FRESH_START", "1")
    assert ckpt.load(default="fresh") == "fresh"


@pytest.mark.parametrize("cut", [0, 1, 100, -1])
def test_truncated_files(tmp_path, cut):
    ckpt.save({"a": np.ones(5000)}, "s.ckpt")
    data = (tmp_path / "s.ckpt").read_bytes()
    (tmp_path / "s.ckpt").write_bytes(data[:cut] if cut >= 0 else data[:cut] + b"")
    with pytest.raises(ckpt.CorruptCheckpointError, match="s.ckpt"):
        ckpt.load("s.ckpt")


def test_any_single_flipped_byte_is_detected(tmp_path):
    ckpt.save({"a": np.arange(3000, dtype=np.int32), "t": "text"}, "s.ckpt")
    size = (tmp_path / "s.ckpt").stat().st_size
    original = (tmp_path / "s.ckpt").read_bytes()
    rng = np.random.default_rng(1)
    for offset in sorted(set(rng.integers(0, size, 60).tolist()) | {0, 9, size - 1, size - 30}):
        flip_byte(tmp_path / "s.ckpt", offset)
        with pytest.raises((ckpt.CorruptCheckpointError, ckpt.UnsupportedVersionError, ckpt.TooLargeError)):
            ckpt.load("s.ckpt")
        (tmp_path / "s.ckpt").write_bytes(original)
    assert ckpt.load("s.ckpt")["t"] == "text"


def test_newer_format_version(tmp_path):
    ckpt.save(1, "s.ckpt")
    with open("s.ckpt", "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<H", 99))
    with pytest.raises(ckpt.UnsupportedVersionError, match="format version 99"):
        ckpt.load("s.ckpt")


def test_not_a_python_checkpoint(tmp_path):
    ckpt.save({"x": 1}, "s.ckpt")
    rename_section(tmp_path / "s.ckpt", "python.pickle", "field")
    assert "field" in sections(tmp_path / "s.ckpt")
    with pytest.raises(ckpt.SectionNotFoundError, match="not a Python checkpoint.*field"):
        ckpt.load("s.ckpt")


def test_io_errors_are_oserrors(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError) as e:
        ckpt.save(1, tmp_path / "afile" / "s.ckpt")
    assert e.value.errno == errno.ENOTDIR and e.value.filename == str(tmp_path / "afile")
    with pytest.raises(FileNotFoundError) as e:
        ckpt._ckpt.load_file(str(tmp_path / "missing.ckpt"))
    assert e.value.errno == errno.ENOENT and e.value.filename == str(tmp_path / "missing.ckpt")
    assert "os error" not in str(e.value)
    os.mkdir(tmp_path / "adir")
    with pytest.raises(OSError):
        ckpt.load(tmp_path / "adir")
    os.symlink(tmp_path / "afile", tmp_path / "link.ckpt")
    with pytest.raises(ckpt.CorruptCheckpointError):
        ckpt.load(tmp_path / "link.ckpt")  # an own link is followed (test_trust.py), to a file that is no checkpoint
    with pytest.raises(OSError) as e:
        ckpt._ckpt.load_file(str(tmp_path / "link.ckpt"))  # the core opens without following a final link
    assert e.value.errno == errno.ELOOP
    os.symlink(tmp_path / "loop2.ckpt", tmp_path / "loop1.ckpt")
    os.symlink(tmp_path / "loop1.ckpt", tmp_path / "loop2.ckpt")
    with pytest.raises(OSError) as e:
        ckpt.load(tmp_path / "loop1.ckpt")
    assert e.value.errno == errno.ELOOP


def test_bad_settings_are_value_errors(monkeypatch):
    for kwargs in ({"interval": "1:2:3:4"}, {"interval": -1}, {"keep": 0}, {"signals": ("SIGFOO",)}):
        with pytest.raises(ckpt.InvalidArgumentError) as e:
            ckpt.Checkpointer(**kwargs)
        assert isinstance(e.value, ValueError)
    with pytest.raises(ckpt.InvalidArgumentError, match="cannot be used"):
        ckpt.Checkpointer(signals=(9,))  # SIGKILL
    with pytest.raises(TypeError):
        ckpt.Checkpointer(interval=True)
    monkeypatch.setenv("CKPT_KEEP", "many")
    with pytest.raises(ckpt.InvalidArgumentError, match="CKPT_KEEP"):
        ckpt.save(1)
    with pytest.raises(ckpt.InvalidArgumentError, match="CKPT_KEEP"):
        ckpt.load()


def test_a_malformed_ckpt_mmap_is_an_error_on_explicit_loads(tmp_path, monkeypatch):
    path = tmp_path / "x.ckpt"
    ckpt.save({"x": 1}, path)
    monkeypatch.setenv("CKPT_MMAP", "maybe")
    with pytest.raises(ckpt.InvalidArgumentError, match="CKPT_MMAP"):
        ckpt.load(path)
    with pytest.raises(ckpt.InvalidArgumentError, match="CKPT_MMAP"):
        ckpt.verify(path)
    assert ckpt.load(path, mmap=False) == {"x": 1}, "an explicit choice needs no variable"


def test_closed_checkpointer(tmp_path):
    cp = ckpt.Checkpointer(directory=tmp_path, signals=())
    cp.close()
    cp.close()  # idempotent
    assert cp.closed
    with pytest.raises(ckpt.InvalidStateError, match="closed") as e:
        cp.save({"x": 1})
    assert isinstance(e.value, RuntimeError)
    with pytest.raises(ckpt.InvalidStateError):
        cp.should_checkpoint()


def test_exceptions_pickle_with_their_attributes():
    e = ckpt.CorruptCheckpointError("/x: section `s`: bad", kind="corrupt", path="/x", section="s")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is ckpt.CorruptCheckpointError
    assert (str(back), back.kind, back.path, back.section) == (str(e), "corrupt", "/x", "s")


def test_load_without_verification_skips_only_the_arrays(tmp_path):
    """verify=False hands out the mapped arrays unread: a damaged array byte shows up in the data instead of
    raising, ckpt.verify still finds it, and a damaged pickle stream is still refused."""
    a = np.arange(1 << 15, dtype=np.float64)
    ckpt.save({"a": a}, "s.ckpt")
    assert np.array_equal(ckpt.load("s.ckpt", verify=False)["a"], a)
    ckpt.verify("s.ckpt")
    damage_section(tmp_path / "s.ckpt", "python.buffer.0")
    back = ckpt.load("s.ckpt", verify=False)["a"]
    assert not np.array_equal(back, a), "the damaged byte is in the data that was handed out"
    assert np.count_nonzero(back != a) == 1
    with pytest.raises(ckpt.CorruptCheckpointError, match="python.buffer.0"):
        ckpt.verify("s.ckpt")
    with pytest.raises(ckpt.CorruptCheckpointError, match="python.buffer.0"):
        ckpt.load("s.ckpt")
    # Copied sections (mmap=False) are read anyway, so they are checked.
    with pytest.raises(ckpt.CorruptCheckpointError, match="python.buffer.0"):
        ckpt.load("s.ckpt", mmap=False, verify=False)

    ckpt.save({"x": list(range(1000)), "a": a}, "p.ckpt")
    damage_section(tmp_path / "p.ckpt", "python.pickle")
    with pytest.raises(ckpt.CorruptCheckpointError, match="section `python.pickle`"):
        ckpt.load("p.ckpt", verify=False)
