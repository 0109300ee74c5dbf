"""The node-local cache level (CKPT_CACHE_DIR): saves commit to the cache, a background thread copies them to
the checkpoint directory, should_exit waits for the copy, restore takes the cache's copy first."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

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


CYCLES = """
import sys, time, ckpt
with ckpt.Checkpointer(directory=sys.argv[1], name="cy") as cp:
    state = cp.restore(default={"step": 0, "history": []})
    r = cp.restored
    print("start", state["step"], 0 if r is None else r.generation, "none" if r is None else r.file, flush=True)
    while state["step"] < 300:
        time.sleep(0.01)
        state["step"] += 1
        state["history"].append(state["step"] ** 2)
        if cp.should_checkpoint():
            info = cp.save(state, step=state["step"])
            print("checkpoint", state["step"], info.generation, flush=True)
        if cp.should_exit():
            print("exit", state["step"], flush=True)
            raise SystemExit(0)
    print("done", len(state["history"]), sum(state["history"]), flush=True)
"""


class Cycle:
    """One run of CYCLES, read line by line."""

    def __init__(self, directory, **env: str) -> None:
        import subprocess
        import sys

        from conftest import child_env

        self.p = subprocess.Popen(
            [sys.executable, "-c", CYCLES, str(directory)],
            env=child_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.seen: list[str] = []

    def wait_for(self, prefix: str) -> list[str]:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.seen.append(line.strip())
            if line.startswith(prefix):
                return line.split()
        raise AssertionError(f"no {prefix!r} line: {self.seen}; {self.p.stderr.read() if self.p.stderr else ''}")

    def finish(self) -> None:
        _, err = self.p.communicate(timeout=120)
        assert self.p.returncode == 0, (self.seen, err)


def _events(log, event: str) -> list[dict]:
    import json

    return [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == event]


@pytest.mark.parametrize("policy", ["every", "exit"])
def test_three_sigterm_restart_cycles_in_a_row_with_the_cache_level(tmp_path, policy):
    import signal

    reference = Cycle(tmp_path / "reference", CKPT_LOG="off", CKPT_CACHE_DIR=str(tmp_path / "refcache"))
    done = reference.wait_for("done")
    reference.finish()

    shared, cache = tmp_path / "shared", tmp_path / "cache"
    resume: tuple[int, int] | None = None  # (generation, step) of the last run's SIGTERM checkpoint
    newest = 0
    for run in range(1, 5):
        if run == 3:
            shutil.rmtree(cache)  # requeued on another node
        log = tmp_path / f"log{run}"
        c = Cycle(shared, CKPT_CACHE_DIR=str(cache), CKPT_FLUSH=policy, CKPT_LOG=str(log))
        _, step, generation, where = c.wait_for("start")
        if resume is None:
            assert (step, generation, where) == ("0", "0", "none")
        else:
            # The newest generation, the last run's SIGTERM step: from the cache on the same node, from the
            # shared level on another.
            assert (int(generation), int(step)) == resume, c.seen
            expected = shared if run == 3 else cache
            assert Path(where).is_relative_to(expected), (run, where)
        if run == 4:
            assert c.wait_for("done") == done  # as the uninterrupted run ended
            c.finish()
            break
        time.sleep(0.1)
        c.p.send_signal(signal.SIGUSR1)
        first = c.wait_for("checkpoint")
        time.sleep(0.1)
        c.p.send_signal(signal.SIGTERM)
        last = c.wait_for("checkpoint")
        c.wait_for("exit")
        c.finish()
        # Both checkpoints cached, numbered after every earlier run's; SIGTERM's copied before the exit.
        assert [int(first[2]), int(last[2])] == [newest + 1, newest + 2], (run, c.seen)
        newest += 2
        saved = _events(log, "checkpoint")
        assert [e["level"] for e in saved] == ["cache", "cache"], saved
        copied = [e["generation"] for e in _events(log, "flushed")]
        assert copied[-1] == newest and (policy == "every" or copied == [newest]), (policy, copied)
        ckpt.verify(shared / f"cy.ckpt.{newest}")
        resume = (newest, int(last[1]))
