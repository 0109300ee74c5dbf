"""ckpt.checkpoints(), load(step=N), Checkpointer.restore(step=N) (issue 18)."""

from __future__ import annotations

import datetime
import os

import numpy as np
import pytest

import ckpt
from conftest import APP


def test_checkpoints_lists_what_discovery_sees(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("CKPT_KEEP", "3")
    for i, loss in enumerate([0.9, 0.4, 0.6], 1):
        ckpt.save({"step": 10 * i, "a": np.full(1 << 15, i)}, metrics={"loss": loss})
    # Damage a byte inside generation 2's array.
    g2 = tmp_path / "c" / f"{APP}.ckpt.2"
    data = bytearray(g2.read_bytes())
    data[len(data) // 2] ^= 0xFF
    g2.write_bytes(bytes(data))
    entries = ckpt.checkpoints()
    by_gen = {e.generation: e for e in entries if not e.current_name}
    assert sorted(by_gen) == [1, 2, 3]
    assert by_gen[3].valid and by_gen[3].chosen and by_gen[3].step == 30 and by_gen[3].metrics == {"loss": 0.6}
    assert by_gen[1].valid and not by_gen[1].chosen and by_gen[1].step == 10
    assert not by_gen[2].valid and by_gen[2].error and "crc32 mismatch" in by_gen[2].error
    e = by_gen[3]
    assert e.rank == 0 and e.nranks == 1 and e.job_id and e.own_job
    assert isinstance(e.created, datetime.datetime) and abs(
        (datetime.datetime.now(datetime.timezone.utc) - e.created).total_seconds()
    ) < 600
    assert e.path == tmp_path / "c" / f"{APP}.ckpt.3"
    # Another directory, another name.
    assert ckpt.checkpoints(tmp_path / "c", name="other") == []


def test_load_step_and_restore_step(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path))
    with ckpt.Checkpointer(keep=3) as cp:
        for s in (5, 6, 7):
            cp.save({"step": s, "a": np.full(1 << 15, s)})
        assert ckpt.load(step=6)["step"] == 6
        assert ckpt.load()["step"] == 7
        back = cp.restore(step=5)
        assert back["step"] == 5 and back["a"][0] == 5
        assert cp.restored.step == 5 and cp.restored.generation == 1 and cp.restored.other_job is None
        back["a"][0] = 1  # writable by default, as restore() gives
        with pytest.raises(ckpt.NoValidCheckpointError, match=r"valid steps: \[5, 6, 7\]"):
            cp.restore(step=99)
        assert ckpt.load(step=99, default="none") == "none"
        with pytest.raises(ckpt.NoValidCheckpointError):
            ckpt.load(step=99)
        with pytest.raises(ckpt.InvalidArgumentError):
            ckpt.load("x.ckpt", step=5)


def test_restore_step_skips_a_damaged_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_DIR", str(tmp_path))
    with ckpt.Checkpointer(keep=3) as cp:
        cp.save({"step": 1})
        cp.save({"step": 1, "again": True})  # the same step twice: the newest valid one wins
        g2 = tmp_path / f"{APP}.ckpt.2"
        data = bytearray(g2.read_bytes())
        data[len(data) // 2] ^= 0xFF
        g2.write_bytes(bytes(data))
        os.unlink(tmp_path / f"{APP}.ckpt")  # the stable name of the damaged newest
        assert cp.restore(step=1) == {"step": 1}
        assert cp.restored.generation == 1
