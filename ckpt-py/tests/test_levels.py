"""The node-local cache level (CKPT_CACHE_DIR): saves commit to the cache, a background thread copies them to
the checkpoint directory, should_exit waits for the copy, restore takes the cache's copy first."""

from __future__ import annotations

import shutil

import numpy as np

import ckpt


def test_saves_are_cached_then_copied_and_the_exit_waits_for_the_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CKPT_LOG", "off")
    shared = tmp_path / "shared"
    a = np.arange(4 << 20, dtype=np.float64)  # 32 MiB: the copy takes a while
    with ckpt.Checkpointer(directory=shared, name="lv") as cp:
        assert cp.cache_dir is not None and cp.cache_dir.is_relative_to(tmp_path / "cache")
        cp.request_checkpoint(exit=True)
        info = cp.save({"step": 1, "a": a}, step=1)
        assert info.path.parent == cp.cache_dir  # committed to the cache first
        assert cp.wait_for_flush(timeout=120) == 1
        assert cp.should_exit() and cp.durable_generation == 1
    assert (shared / "lv.ckpt.1").is_file()
    ckpt.verify(shared / "lv.ckpt.1")
    # Another node: the cache is gone, the checkpoint directory has it.
    shutil.rmtree(tmp_path / "cache")
    with ckpt.Checkpointer(directory=shared, name="lv") as cp:
        back = cp.restore()
    assert back["step"] == 1 and np.array_equal(back["a"], a)


def test_without_a_cache_level_every_save_is_durable_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("CKPT_CACHE_DIR", raising=False)
    with ckpt.Checkpointer(directory=tmp_path, name="plain") as cp:
        cp.save({"x": 1}, step=1)
        assert cp.cache_dir is None and cp.wait_for_flush() is None and cp.durable_generation is None


FORKED = """
import os, sys, time, numpy as np, ckpt
cp = ckpt.Checkpointer(directory=sys.argv[1], name="fk", signals=())
cp.save({"a": np.zeros(16 << 20)}, step=1)  # 128 MiB: its copy to the checkpoint directory is still running
pid = os.fork()
if pid == 0:
    raise SystemExit(0)  # a forked worker ends normally: nothing of the parent's copy is its to wait for
t = time.monotonic()
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), round(time.monotonic() - t, 1), flush=True)
assert cp.wait_for_flush(timeout=120) == 1
cp.close()
"""


def test_a_forked_worker_exits_at_once_while_the_parent_copies(tmp_path):
    import subprocess
    import sys

    from conftest import child_env

    env = child_env(CKPT_CACHE_DIR=str(tmp_path / "cache"), CKPT_FLUSH_TIMEOUT="60", CKPT_LOG="off")
    out = subprocess.run(
        [sys.executable, "-c", FORKED, str(tmp_path / "shared")], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    _, code, seconds = out.stdout.split()
    assert code == "0" and float(seconds) < 20, out.stdout
    assert (tmp_path / "shared" / "fk.ckpt.1").is_file()
