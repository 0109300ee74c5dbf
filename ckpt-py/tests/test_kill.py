"""A program SIGKILLed at random moments many times, then resumed, ends with the uninterrupted result.

``CKPT_PY_KILL_ITERATIONS`` (default 25) sets the number of kills.
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


@pytest.mark.slow
def test_killed_at_random_moments_then_resumed(tmp_path, capsys):
    script = write_script(tmp_path / "worker.py", WORKER)
    reference = run_to_end(script, tmp_path / "reference").splitlines()[-1]
    assert reference.startswith(f"done {STEPS} ")

    rng = random.Random(int(os.environ.get("CKPT_PY_KILL_SEED", "5")))
    directory = tmp_path / "killed"
    resumed_at = []
    mid_save = 0
    finished_early = 0
    for _ in range(KILLS):
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
        out = head + out
        if p.returncode == 0:
            finished_early += 1
            break
        assert p.returncode == -signal.SIGKILL, err
        assert "Traceback" not in err, err
        first = out.split("\n", 1)[0].split()
        if first and first[0] == "resumed":
            resumed_at.append(int(first[1]))
        if directory.exists() and any(".tmp." in n for n in os.listdir(directory)):
            mid_save += 1  # killed while a temporary file was being written

    final = run_to_end(script, directory).splitlines()
    assert final[-1] == reference, "the resumed run must end exactly like the uninterrupted one"
    assert resumed_at == sorted(resumed_at), "a restart never goes back to an older step"
    assert not any(".tmp." in n for n in os.listdir(directory)), "the next save removed dead writers' files"
    with capsys.disabled():
        print(
            f"\n[kill] {KILLS} SIGKILLs ({mid_save} with a save in progress, {finished_early} finished first); "
            f"resumed at steps {resumed_at}; final result identical"
        )
