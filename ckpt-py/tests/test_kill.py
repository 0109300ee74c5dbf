"""A program SIGKILLed at random moments many times, then resumed, ends with the uninterrupted result.

``CKPT_PY_KILL_ITERATIONS`` (default 25) sets the number of kills, ``CKPT_PY_KILL_SEED`` (default 5) the
random moments. A run that completes between two kills (a "round": more kills than one run of the worker
takes) must print the uninterrupted result; the next round starts in a fresh directory.
After every kill the restart must resume at a step >= the last step that ``Checkpointer.save`` returned
(the worker prints "durable <step>" once a save returned), and restarts within a round never go back.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import child_env, int_env, write_script

pytest.importorskip("numpy")

KILLS = int_env("CKPT_PY_KILL_ITERATIONS", 25)
STEPS = 300

WORKER = """
import hashlib, sys, time
import numpy as np
import ckpt

steps = int(sys.argv[1])
with ckpt.Checkpointer("killtest", signals=()) as cp:
    state = cp.restore(default=None)
    if state is None:
        state = {"step": 0, "x": np.zeros(1 << 18), "log": []}  # 2 MiB of float64
        print("fresh", flush=True)
    else:
        print("resumed", state["step"], cp.restored.generation, flush=True)
    x = np.array(state["x"])  # a writable copy of the mapped, read-only array
    while state["step"] < steps:
        i = state["step"]
        x = np.sin(x + i) * 0.5 + x * 0.5
        time.sleep(0.01)  # the rest of a step's work
        state = {"step": i + 1, "x": x, "log": state["log"] + [float(x[(i * 7919) % x.size])]}
        cp.save(state)
        print("durable", i + 1, flush=True)
    digest = hashlib.sha256(x.tobytes() + repr(state["log"]).encode()).hexdigest()
    print("done", state["step"], digest, flush=True)
"""


def run_to_end(script, directory) -> str:
    out = subprocess.run(
        [sys.executable, str(script), str(STEPS)],
        env=child_env(CKPT_DIR=str(directory)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def resumed_step(lines: list[str]) -> int | None:
    """The step a run resumed at (0 for a fresh start), or None when it was killed before saying."""
    first = lines[0].split() if lines else []
    if first == ["fresh"]:
        return 0
    if len(first) == 3 and first[0] == "resumed":
        return int(first[1])
    return None


def last_durable(lines: list[str]) -> int | None:
    """The last step whose save returned (a line cut by the kill is ignored: it may be incomplete)."""
    for line in reversed(lines):
        f = line.split()
        if len(f) == 2 and f[0] == "durable" and f[1].isdigit():
            return int(f[1])
    return None


@pytest.mark.slow
def test_killed_at_random_moments_then_resumed(tmp_path, capsys):
    script = write_script(tmp_path / "worker.py", WORKER)
    reference = run_to_end(script, tmp_path / "reference").splitlines()[-1]
    assert reference.startswith(f"done {STEPS} ")

    rng = random.Random(int(os.environ.get("CKPT_PY_KILL_SEED", "5")))
    started = time.monotonic()
    rounds = 1
    directory = tmp_path / "round1"
    durable = 0  # the last step a save returned for, in this round
    resumed_at: list[int] = []  # in this round
    all_resumed = 0
    mid_save = 0
    completed = 0  # rounds whose run completed between two kills
    kills = 0
    while kills < KILLS:
        p = subprocess.Popen(
            [sys.executable, str(script), str(STEPS)],
            env=child_env(CKPT_DIR=str(directory)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        head = ""
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 0.3))  # while starting or restoring
        else:
            head = p.stdout.readline()  # "fresh" or "resumed": in the loop from here on
            time.sleep(rng.uniform(0.0, 0.15))
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=60)
        lines = (head + out).splitlines()
        at = resumed_step(lines)
        if at is not None:
            assert at >= durable, f"round {rounds}: resumed at step {at}, but step {durable} was durable"
            resumed_at.append(at)
            all_resumed += 1
        if p.returncode == 0:
            # the run completed before the kill landed: its result must be the uninterrupted one
            assert lines[-1] == reference, f"round {rounds}: the completed run differs from the uninterrupted one"
            assert resumed_at == sorted(resumed_at), f"round {rounds}: a restart went back to an older step"
            completed += 1
            rounds += 1
            directory = tmp_path / f"round{rounds}"
            durable, resumed_at = 0, []
            continue
        kills += 1
        assert p.returncode == -signal.SIGKILL, err
        assert "Traceback" not in err, err
        durable = max(durable, last_durable(lines) or 0)
        if directory.exists() and any(".tmp." in n for n in os.listdir(directory)):
            mid_save += 1  # killed while a temporary file was being written

    final = run_to_end(script, directory).splitlines()
    at = resumed_step(final)
    assert at is not None and at >= durable, f"the last restart resumed at {at}, but step {durable} was durable"
    assert final[-1] == reference, "the resumed run must end exactly like the uninterrupted one"
    assert resumed_at == sorted(resumed_at), "a restart never goes back to an older step"
    assert not any(".tmp." in n for n in os.listdir(directory)), "the next save removed dead writers' files"
    with capsys.disabled():
        print(
            f"\n[kill] {kills} SIGKILLs in {time.monotonic() - started:.0f} s ({mid_save} with a save in progress) "
            f"over {rounds} rounds ({completed} completed between kills); {all_resumed} runs got as far as the "
            f"restore, each at or after the last durable step; every completed run identical to the uninterrupted one"
        )
