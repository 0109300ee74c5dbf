"""examples/python: the guide's program and sbatch script redone with ckpt.

Uninterrupted vs interrupted (USR1: checkpoint and continue; TERM: checkpoint and stop) and resumed: the
same results. The sbatch script runs outside Slurm with a stand-in `scontrol` that does what a requeue
does to a running job: SIGTERM to every process of the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, child_env, wait_for_line

PROGRAM = EXAMPLES / "checkpointed_program.py"
SCRIPT = EXAMPLES / "checkpointed_program.sh"


def run_program(directory, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROGRAM), *args],
        env=child_env(CKPT_DIR=str(directory), **env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def done_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("Done:")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = run_program(tmp_path_factory.mktemp("reference"))
    assert out.returncode == 0, out.stderr
    assert "Starting fresh" in out.stdout
    return done_line(out.stdout)


def test_reference_is_the_seeds_result(reference):
    assert reference.startswith(f"Done: 1000 results, sum = {sum(i * i for i in range(1000))},")


def test_interrupted_by_usr1_and_term_then_resumed(tmp_path, reference):
    directory = tmp_path / "c"
    p = subprocess.Popen(
        [sys.executable, str(PROGRAM), "--step-seconds", "0.005"],
        env=child_env(CKPT_DIR=str(directory)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_line(p, "Starting fresh")
    time.sleep(0.5)
    p.send_signal(signal.SIGUSR1)
    first = wait_for_line(p, "Checkpoint saved")
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3, err
    assert "Stopping after step" in out and "Done" not in out
    stopped_at = int(out.split("Stopping after step ")[1].split(";")[0])
    assert int(first.split("(step ")[1].split(",")[0]) < stopped_at < 1000

    # The same command again (another command line would be another run: restart refuses it).
    resumed = run_program(directory, "--step-seconds", "0.005")
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {stopped_at}..." in resumed.stdout
    assert done_line(resumed.stdout) == reference


def test_interval_checkpoints(tmp_path, reference):
    out = run_program(tmp_path / "c", "--step-seconds", "0.002", "--interval", "0:01")  # every second
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("Checkpoint saved") >= 1
    assert done_line(out.stdout) == reference


@pytest.mark.skipif(not os.path.exists("/bin/bash"), reason="needs bash")
def test_sbatch_script_requeue_flow(tmp_path, reference):
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    log = tmp_path / "scontrol.log"
    # A requeue of a running job: SIGTERM to the job's processes (the batch shell's process group).
    (fakebin / "scontrol").write_text(
        f'#!/bin/bash\ntrap \'\' TERM\necho "$@" >> {log}\nif [ "$1" = requeue ]; then kill -TERM -- "-$PPID"; fi\n'
    )
    (fakebin / "scontrol").chmod(0o755)
    # The wheel's `ckpt` command, next to this Python (the script runs `exec ckpt job`).
    ckpt = Path(sys.executable).parent / "ckpt"
    env = child_env(
        PATH=f"{fakebin}:{ckpt.parent}:{os.environ['PATH']}",
        CKPT=str(ckpt),
        PYTHON=sys.executable,
        SLURM_JOB_ID="4242",
        SLURM_SUBMIT_DIR=str(EXAMPLES),
        CKPT_DIR=str(tmp_path / "c"),
        STEP_SECONDS="0.005",
    )
    p = subprocess.Popen(
        ["bash", str(SCRIPT)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the job's own process group, as under Slurm
    )
    wait_for_line(p, "Starting fresh")
    time.sleep(0.5)
    p.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 does
    out, err = p.communicate(timeout=120)
    # `ckpt job` turned the warning into a final checkpoint and requeued the job: exit status 4, or the
    # requeue's own SIGTERM to the job's processes (this stand-in's, as Slurm's) ended it first.
    assert "Checkpoint saved" in out and "Stopping after step" in out, (out, err)
    assert log.read_text().split() == ["requeue", "4242"], (out, err)
    assert "the program exited with status 3 after a checkpoint" in err, (out, err)
    assert p.returncode in (4, -signal.SIGTERM), (p.returncode, out, err)
    assert (tmp_path / "c" / "4242.ckpt").exists()

    env.update(SLURM_RESTART_COUNT="1", STEP_SECONDS="0")  # the requeued job: same id, a restart
    again = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300, start_new_session=True
    )
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert "Resuming from checkpoint" in again.stdout, (again.stdout, again.stderr)
    assert done_line(again.stdout) == reference
