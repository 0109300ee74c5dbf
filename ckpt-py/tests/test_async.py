"""Background saves: Checkpointer.save(obj, blocking=False) (issue 18)."""

from __future__ import annotations

import signal

import numpy as np
import pytest

import ckpt
from conftest import child_env, start, write_script


def test_background_save_returns_a_handle_and_commits(tmp_path):
    a = np.arange(1 << 20, dtype=np.float64)
    with ckpt.Checkpointer(directory=tmp_path) as cp:
        h = cp.save({"step": 3, "a": a}, blocking=False, metrics={"loss": 0.5})
        assert isinstance(h, ckpt.SaveHandle) and h.step == 3
        info = h.wait()
        assert h.done() and isinstance(info, ckpt.SaveInfo)
        assert info.step == 3 and info.generation == 1 and info.metrics == {"loss": 0.5}
        back = cp.restore()
    assert back["step"] == 3 and np.array_equal(back["a"], a)
    assert cp.restored.metrics == {"loss": 0.5}


def test_state_is_captured_at_the_call(tmp_path):
    a = np.zeros(16 << 20, dtype=np.uint8)  # 16 MiB: still being written when it is changed below
    state = {"step": 1, "a": a, "items": [1, 2]}
    with ckpt.Checkpointer(directory=tmp_path) as cp:
        h = cp.save(state, blocking=False)
        a[:] = 7  # in place, as an optimizer step does
        state["items"].append(3)
        state["step"] = 2
        h.wait()
        back = cp.restore()
    assert back["step"] == 1 and back["items"] == [1, 2]
    assert not back["a"].any(), "the array as it was at the call"


def test_at_most_one_in_flight_and_staging_reused(tmp_path):
    with ckpt.Checkpointer(directory=tmp_path, keep=3) as cp:
        h1 = cp.save({"step": 1, "a": np.ones(8 << 20, np.uint8)}, blocking=False)
        h2 = cp.save({"step": 2, "a": np.full(8 << 20, 2, np.uint8)}, blocking=False)
        assert h1.done(), "the second save waited for the first"
        assert h1.wait().generation == 1 and h2.wait().generation == 2
        h3 = cp.save({"step": 3, "a": np.full(4 << 20, 3, np.uint8)}, blocking=False)  # smaller: reuses staging
        assert h3.wait().generation == 3
        info = cp.save({"step": 4}, blocking=True)
        assert info.generation == 4
        back = cp.restore()
    assert back == {"step": 4}
    assert ckpt.load(tmp_path / f"{cp.path.name}.3")["a"][-1] == 3


def test_should_exit_waits_for_the_exit_checkpoint(tmp_path):
    with ckpt.Checkpointer(directory=tmp_path) as cp:
        h0 = cp.save({"step": 0}, blocking=False)  # not an exit checkpoint: should_exit does not wait
        h0.wait()
        cp.request_checkpoint(exit=True)  # as SIGTERM does
        assert cp.should_checkpoint() and not cp.should_exit()
        h = cp.save({"step": 1, "a": np.ones(64 << 20, np.uint8)}, blocking=False)
        assert not cp.should_checkpoint(), "taken at the call"
        assert cp.should_exit(), "waits until the exit checkpoint is durable"
        assert h.done()
    assert ckpt.load(tmp_path / cp.path.name)["step"] == 1


def test_interpreter_exit_waits_for_the_background_save(tmp_path):
    script = write_script(
        tmp_path / "prog.py",
        """
        import numpy as np, ckpt, sys
        cp = ckpt.Checkpointer(directory=sys.argv[1])
        h = cp.save({"step": 5, "a": np.full(128 << 20, 5, np.uint8)}, blocking=False)
        print("returned", h.done(), flush=True)
        # no wait, no close: the interpreter's exit must wait
        """,
    )
    p = start(script, str(tmp_path / "c"))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    back = ckpt.load(tmp_path / "c" / "prog.ckpt")
    assert back["step"] == 5 and back["a"].shape == (128 << 20,) and back["a"][-1] == 5


def test_with_block_waits_and_failure_is_raised(tmp_path):
    """A background save that fails (the file-size limit: EFBIG while writing) raises from wait(); the
    checkpoint is due again; an unobserved failure is raised by close()."""
    script = write_script(
        tmp_path / "prog.py",
        """
        import errno, resource, signal, sys
        import numpy as np, ckpt
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        cp = ckpt.Checkpointer(directory=sys.argv[1])
        cp.request_checkpoint()
        h = cp.save({"step": 1, "a": np.ones(8 << 20, np.uint8)}, blocking=False)
        try:
            h.wait()
        except OSError as e:
            print("wait raised", e.errno == errno.EFBIG, cp.should_checkpoint(), flush=True)
        h = cp.save({"step": 2, "a": np.ones(8 << 20, np.uint8)}, blocking=False)
        try:
            cp.close()
        except OSError as e:
            print("close raised", e.errno == errno.EFBIG, cp.closed, flush=True)
        """,
    )
    p = start(script, str(tmp_path / "c"))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, (out, err)
    assert "wait raised True True" in out, (out, err)
    assert "close raised True True" in out, (out, err)


def test_sigterm_with_background_save_exits_after_durable(tmp_path):
    script = write_script(
        tmp_path / "prog.py",
        """
        import sys, time
        import numpy as np, ckpt
        a = np.zeros(32 << 20, np.uint8)
        with ckpt.Checkpointer(directory=sys.argv[1]) as cp:
            state = cp.restore(default={"step": 0, "a": a})
            print("ready", flush=True)
            while True:
                state["step"] += 1
                time.sleep(0.001)
                if cp.should_checkpoint():
                    h = cp.save(state, blocking=False)
                if cp.should_exit():
                    print("exit", state["step"], h.done(), flush=True)
                    break
        """,
    )
    p = start(script, str(tmp_path / "c"), env=child_env())
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    step, done = out.split()[1], out.split()[2]
    assert done == "True"
    assert ckpt.load(tmp_path / "c" / "prog.ckpt")["step"] <= int(step)


def test_metrics_are_checked():
    with ckpt.Checkpointer() as cp:
        with pytest.raises(TypeError):
            cp.save({}, metrics=[("loss", 1.0)])
        with pytest.raises(TypeError):
            cp.save({}, metrics={"loss": object()})
        info = cp.save({}, metrics={"loss": np.float32(0.25), "epoch": np.int64(3), "bad": float("nan")})
    assert info.metrics == {"loss": 0.25, "epoch": 3, "bad": None}
