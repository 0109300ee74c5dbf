"""Whose checkpoint a restart resumes, seen from Python through real processes and the real environment
variables: the default application name (the script's stem), job arrays, resubmissions, parameter sweeps,
the same script with other arguments outside Slurm, and ``CKPT_RESUME_FROM``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ckpt
from conftest import APP, child_env

# A training script: restores (through ckpt.load and through a Checkpointer, which must agree), reports
# what it got, and saves its own state: who wrote it (job id, arguments) and how many runs it has seen.
TRAIN = """
import json, os, sys
import ckpt

plain = ckpt.load(default=None)
with ckpt.Checkpointer(signals=()) as cp:
    state = cp.restore(default=None)
    assert state == plain, (state, plain)
    info = cp.restored
    print("RESULT " + json.dumps({
        "name": cp.name,
        "path": str(cp.path),
        "state": state,
        "other_job": info and info.other_job,
        "notices": list(cp.restore_notices),
        "info_notices": list(info.notices) if info else None,
    }), flush=True)
    runs = 0 if state is None else state["runs"]
    cp.save({"by": [os.environ.get("SLURM_JOB_ID"), sys.argv[1:]], "runs": runs + 1})
"""


class Run:
    """One finished run of a script: its report (``RESULT``), stderr and exit status."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        self.result: dict = json.loads(lines[0][len("RESULT ") :]) if lines else {}

    @property
    def state(self):
        return self.result["state"]

    def ok(self) -> Run:
        assert self.returncode == 0, self.stderr
        return self


def run(cwd: Path, argv: list[str], stdin: str | None = None, **env: str) -> Run:
    """``python argv...`` in ``cwd`` with a clean environment plus ``env``."""
    proc = subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=child_env(**env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Run(proc)


def script(directory: Path, name: str, body: str = TRAIN) -> str:
    (directory / name).write_text(body)
    return name


# -- the default application name ---------------------------------------------------------------------------


def test_in_process_default_name_is_the_running_script():
    assert ckpt.config()["name"] == APP
    with ckpt.Checkpointer(signals=()) as cp:
        assert cp.name == APP and cp.path.name == f"{APP}.ckpt"
    assert ckpt.save({"x": 1}).path.name == f"{APP}.ckpt"
    assert ckpt.config("explicit")["name"] == "explicit"


def test_two_scripts_in_one_directory_keep_their_own_state(tmp_path):
    a, b = script(tmp_path, "prepare.py"), script(tmp_path, "train.py")
    first_a = run(tmp_path, [a]).ok()
    assert first_a.result["name"] == "prepare" and first_a.state is None
    first_b = run(tmp_path, [b]).ok()
    assert first_b.result["name"] == "train" and first_b.state is None, "train.py does not get prepare.py's state"
    assert first_b.result["notices"] == []
    assert (tmp_path / "prepare.ckpt").exists() and (tmp_path / "train.ckpt").exists()
    assert not (tmp_path / "ckpt.ckpt").exists()
    again_a, again_b = run(tmp_path, [a]).ok(), run(tmp_path, [b]).ok()
    assert again_a.state == {"by": [None, []], "runs": 1} and again_a.result["other_job"] is None
    assert again_b.state == {"by": [None, []], "runs": 1}
    # Each resumed its own file: the second runs counted separately.
    assert ckpt.load(tmp_path / "prepare.ckpt")["runs"] == 2 and ckpt.load(tmp_path / "train.ckpt")["runs"] == 2


def test_python_m_package_is_named_after_the_package(tmp_path):
    pkg = tmp_path / "trainer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    script(pkg, "__main__.py")
    first = run(tmp_path, ["-m", "trainer"]).ok()
    assert first.result["name"] == "trainer" and first.result["path"] == "trainer.ckpt"
    assert run(tmp_path, ["-m", "trainer"]).ok().state["runs"] == 1
    # A module of the package is named after the module.
    script(pkg, "finetune.py")
    assert run(tmp_path, ["-m", "trainer.finetune"]).ok().result["name"] == "finetune"


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [(["-c", TRAIN], None), (["-"], TRAIN), ([], TRAIN)],  # the last as interactive: sys.argv == [""]
    ids=["-c", "-", "no-argument"],
)
def test_no_script_is_named_ckpt(tmp_path, argv, stdin):
    r = run(tmp_path, argv, stdin).ok()
    assert r.result["name"] == "ckpt" and r.result["path"] == "ckpt.ckpt"
    assert run(tmp_path, argv, stdin).ok().state["runs"] == 1


@pytest.mark.parametrize(("stem", "name"), [("n" * 64, "n" * 64), ("n" * 65, "ckpt"), (".", "ckpt")])
def test_a_stem_that_cannot_be_a_file_name_falls_back(tmp_path, stem, name):
    assert run(tmp_path, [script(tmp_path, stem + ".py")]).ok().result["name"] == name


def test_explicit_name_ckpt_name_and_slurm_job_name_win(tmp_path):
    train = script(tmp_path, "train.py")
    r = run(tmp_path, [train], SLURM_JOB_NAME="sim").ok()
    assert r.result["name"] == "sim" and r.result["path"] == "sim.ckpt"
    r = run(tmp_path, [train], SLURM_JOB_NAME="sim", CKPT_NAME="mine").ok()
    assert r.result["name"] == "mine" and r.result["path"] == "mine.ckpt"
    names = script(
        tmp_path,
        "names.py",
        "import ckpt, json\n"
        "with ckpt.Checkpointer('given', signals=()) as cp:\n"
        "    print('RESULT', json.dumps([ckpt.config()['name'], ckpt.config('given')['name'], cp.name]))\n",
    )
    assert run(tmp_path, [names], CKPT_NAME="mine", SLURM_JOB_NAME="sim").ok().result == ["mine", "given", "given"]
    assert run(tmp_path, [names]).ok().result == ["names", "given", "given"]


# -- Slurm: job arrays, resubmissions, sweeps -----------------------------------------------------------------


def slurm(job: str, array_job: str | None = None, task: str | None = None, **extra: str) -> dict[str, str]:
    env = {"SLURM_JOB_ID": job, "SLURM_JOB_NAME": "train", **extra}
    if array_job is not None:
        env["SLURM_ARRAY_JOB_ID"] = array_job
    if task is not None:
        env["SLURM_ARRAY_TASK_ID"] = task
    return env


def test_job_array_tasks_never_share_state_and_a_resubmitted_task_resumes(tmp_path):
    train = script(tmp_path, "train.py")
    task1 = run(tmp_path, [train], **slurm("101", "100", "1")).ok()
    assert task1.state is None and task1.result["path"] == "101.ckpt"

    # Task 2 of the same array: same directory, script and job name, but another task. Fresh start.
    task2 = run(tmp_path, [train], **slurm("102", "100", "2")).ok()
    assert task2.state is None, "task 2 must not resume task 1's state"
    assert "not resuming job 101's checkpoint" in task2.stderr and "another array task (1)" in task2.stderr
    assert any("not resuming job 101's checkpoint" in n for n in task2.result["notices"])

    # Task 1 resubmitted (a new array job): same task index, script, arguments and directory. Resumes 101.
    again = run(tmp_path, [train], **slurm("200", "200", "1")).ok()
    assert again.state == {"by": ["101", []], "runs": 1}
    assert again.result["other_job"] == "101"
    assert "resuming from job 101's checkpoint" in again.stderr, again.stderr
    assert any("resuming from job 101's checkpoint" in n for n in again.result["info_notices"])
    assert "not resuming job 102's checkpoint" in again.stderr, "task 2's checkpoint is listed, not taken"
    log = (tmp_path / "200.ckpt.log").read_text()
    assert "resuming from job 101's checkpoint" in log, "the adoption is in the log too"

    # CKPT_RESUME_FROM=none forbids taking another job's checkpoint, even a full match.
    forbidden = run(tmp_path, [train], **slurm("201", "201", "1", CKPT_RESUME_FROM="none")).ok()
    assert forbidden.state is None and "CKPT_RESUME_FROM=none" in forbidden.stderr

    # CKPT_RESUME_FROM=<job> takes that job's checkpoint explicitly, here task 1's for a task 2.
    explicit = run(tmp_path, [train], **slurm("103", "100", "2", CKPT_RESUME_FROM="101")).ok()
    assert explicit.state == {"by": ["101", []], "runs": 1} and explicit.result["other_job"] == "101"
    assert "as CKPT_RESUME_FROM asks" in explicit.stderr


def test_parameter_sweep_points_never_resume_each_other(tmp_path):
    train = script(tmp_path, "train.py")
    run(tmp_path, [train, "--lr", "0.1"], **slurm("301")).ok()
    other_point = run(tmp_path, [train, "--lr", "0.2"], **slurm("302")).ok()
    assert other_point.state is None, "--lr 0.2 must not resume --lr 0.1's state"
    assert "not resuming job 301's checkpoint" in other_point.stderr
    assert "another command line" in other_point.stderr and "--lr 0.1" in other_point.stderr
    # The first point resubmitted (same arguments) resumes its own predecessor, not the newer 0.2 point.
    resubmitted = run(tmp_path, [train, "--lr", "0.1"], **slurm("303")).ok()
    assert resubmitted.state == {"by": ["301", ["--lr", "0.1"]], "runs": 1}
    assert resubmitted.result["other_job"] == "301"


# -- outside Slurm: the same script with other arguments --------------------------------------------------


def test_same_script_other_arguments_outside_slurm_fails_loudly(tmp_path):
    train = script(tmp_path, "train.py")
    run(tmp_path, [train, "--lr", "0.1"]).ok()
    other = run(tmp_path, [train, "--lr", "0.2"])
    assert other.returncode != 0 and other.result == {}, "nothing was restored, nothing saved"
    err = other.stderr
    assert "ckpt.ConflictError" in err, err
    # The message names the file (relative, as the directory is: CKPT_DIR unset is ".").
    assert "  train.ckpt.1: another command line" in err and str(tmp_path) in err, err
    assert "--lr 0.1" in err and "--lr 0.2" in err, "and both command lines"
    assert "CKPT_RESUME_FROM=train" in err and "CKPT_NAME" in err, "and how to resume or to run apart"
    # The other run's checkpoint is untouched: the same command resumes it.
    assert run(tmp_path, [train, "--lr", "0.1"]).ok().state == {"by": [None, ["--lr", "0.1"]], "runs": 1}
    # Resuming it anyway, explicitly.
    anyway = run(tmp_path, [train, "--lr", "0.2"], CKPT_RESUME_FROM="train").ok()
    assert anyway.state == {"by": [None, ["--lr", "0.1"]], "runs": 2}
    # Another name keeps the runs apart.
    apart = run(tmp_path, [train, "--lr", "0.3"], CKPT_NAME="train-lr0.3").ok()
    assert apart.state is None


def test_conflict_error_in_process(tmp_path, monkeypatch):
    """The in-process face of the same rule: checkpoints of this name written by another command line."""
    code = "import ckpt; ckpt.save({'step': 1})"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env(CKPT_NAME=APP), check=True)
    with pytest.raises(ckpt.ConflictError) as e:
        ckpt.load()
    assert os.path.abspath(e.value.path) == str(tmp_path) and f"{APP}.ckpt: another command line" in str(e.value)
    with ckpt.Checkpointer(signals=()) as cp, pytest.raises(ckpt.ConflictError):
        cp.restore()
    monkeypatch.setenv("CKPT_RESUME_FROM", APP)
    assert ckpt.load() == {"step": 1}
    assert os.path.exists(tmp_path / f"{APP}.ckpt")
