"""The ownership check: files other users could have written are not unpickled unless trusted=True."""

from __future__ import annotations

import os
import stat

import pytest

import ckpt

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")


class Marker:
    """Unpickling this runs code (a stand-in for a malicious payload): it records that it ran."""

    ran = False

    def __reduce__(self):
        return (_mark, ())


def _mark():
    Marker.ran = True
    return "payload ran"


@as_root
def test_file_of_another_user_is_refused(tmp_path):
    ckpt.save({"evil": Marker()}, "s.ckpt")
    os.chown("s.ckpt", NOBODY, NOBODY)
    Marker.ran = False
    with pytest.raises(ckpt.UntrustedCheckpointError) as e:
        ckpt.load("s.ckpt")
    msg = str(e.value)
    assert str(tmp_path / "s.ckpt") in msg or "s.ckpt" in msg
    assert f"uid {NOBODY}" in msg and "trusted=True" in msg
    assert e.value.path == "s.ckpt" and isinstance(e.value, ckpt.CheckpointError)
    assert not Marker.ran, "nothing was unpickled"
    assert ckpt.load("s.ckpt", trusted=True) == {"evil": "payload ran"}
    assert Marker.ran


@as_root
def test_discovery_refuses_too(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    ckpt.save({"step": 1})
    for f in os.listdir(tmp_path / "c"):
        os.chown(tmp_path / "c" / f, NOBODY, NOBODY)
    with pytest.raises(ckpt.UntrustedCheckpointError, match="ckpt.ckpt"):
        ckpt.load()
    with ckpt.Checkpointer(signals=()) as cp:
        with pytest.raises(ckpt.UntrustedCheckpointError):
            cp.restore()
        assert cp.restore(trusted=True) == {"step": 1}


def test_world_writable_directory_without_sticky_bit(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    ckpt.save([1], d / "s.ckpt")
    os.chmod(d, 0o777)
    with pytest.raises(ckpt.UntrustedCheckpointError, match="no sticky bit"):
        ckpt.load(d / "s.ckpt")
    assert ckpt.load(d / "s.ckpt", trusted=True) == [1]
    os.chmod(d, 0o777 | stat.S_ISVTX)  # like /tmp: others cannot replace our files
    assert ckpt.load(d / "s.ckpt") == [1]
    os.chmod(d, 0o775)  # group-writable: the group is trusted
    assert ckpt.load(d / "s.ckpt") == [1]


def test_world_writable_file(tmp_path):
    ckpt.save([2], "s.ckpt")
    os.chmod("s.ckpt", 0o666)
    with pytest.raises(ckpt.UntrustedCheckpointError, match="every user can write it"):
        ckpt.load("s.ckpt")
    os.chmod("s.ckpt", 0o600)
    assert ckpt.load("s.ckpt") == [2]


def test_own_files_load(tmp_path):
    ckpt.save({"x": 1}, "s.ckpt")
    assert os.stat("s.ckpt").st_uid == os.geteuid()
    assert ckpt.load("s.ckpt") == {"x": 1}
