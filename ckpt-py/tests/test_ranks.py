"""Multi-rank jobs: each rank saves its part, rank 0 commits the step, each rank restores its own part.

Every run is one program (``python -c CODE``, whose default application name is ``ckpt``), as a restart
runs the same command: the way it saves (``MODE``) comes from the environment, which is not part of the
run's identity. Another command line would be another run, whose checkpoints restart refuses.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import child_env

CODE = """
import os, ckpt
rank = int(os.environ["CKPT_RANK"])
before = ckpt.load(default=None)
print("loaded", None if before is None else (before["rank"], before["step"]), flush=True)
step = 0 if before is None else before["step"]
if os.environ["MODE"] == "plain":
    ckpt.save({"step": step + 1, "rank": rank, "data": bytes([rank]) * 100000})
else:
    with ckpt.Checkpointer(signals=()) as cp:
        assert cp.name == "ckpt", cp.name  # python -c: no script, the name is "ckpt"
        state = cp.restore(default={"step": 0, "rank": rank})
        assert state["rank"] == rank and state["step"] == step
        cp.save({"step": step + 1, "rank": rank, "data": bytes([rank]) * 100000})
print("saved", flush=True)
"""

PLAIN = "plain"
WITH_CHECKPOINTER = "checkpointer"


def run_ranks(directory, mode: str, n: int = 2) -> list[str]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CODE],
            env=child_env(CKPT_DIR=str(directory), CKPT_RANK=str(r), CKPT_NRANKS=str(n), MODE=mode),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(n)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


def test_each_rank_gets_its_own_part(tmp_path):
    directory = tmp_path / "c"
    first = run_ranks(directory, PLAIN)
    assert all(o.startswith("loaded None") for o in first)
    assert (directory / "ckpt.ckpt").exists(), "rank 0 committed the manifest"
    parts = sorted(p.name for p in (directory / "ckpt.ckpt.parts" / "1").iterdir())
    assert parts == ["rank0.ckpt", "rank1.ckpt"]
    second = run_ranks(directory, WITH_CHECKPOINTER)
    assert second[0].startswith("loaded (0, 1)") and second[1].startswith("loaded (1, 1)")
    third = run_ranks(directory, PLAIN)
    assert third[0].startswith("loaded (0, 2)") and third[1].startswith("loaded (1, 2)")


def test_keep_best_with_several_ranks_needs_a_communicator(tmp_path, monkeypatch):
    """Rank 0 decides which steps every rank keeps: without comm= no rank could be told, so it is refused."""
    import pytest

    import ckpt

    monkeypatch.setenv("CKPT_RANK", "1")
    monkeypatch.setenv("CKPT_NRANKS", "2")
    with pytest.raises(ckpt.InvalidArgumentError, match="comm="):
        ckpt.Checkpointer(directory=tmp_path, signals=(), keep_best=1, metric="loss")
    with ckpt.Checkpointer(directory=tmp_path, signals=(), keep=2) as cp:
        assert cp.nranks == 2


RESHAPE = """
import os, ckpt
rank, n = int(os.environ["CKPT_RANK"]), int(os.environ["CKPT_NRANKS"])
total = 1003
with ckpt.Checkpointer(signals=()) as cp:
    if os.environ["MODE"] == "save":
        base, extra = divmod(total, n)
        first = rank * base + min(rank, extra)
        cp.save({"first": first, "rows": list(range(first, first + base + (rank < extra)))}, step=7)
    else:
        parts = cp.open_step()
        assert parts is not None and parts.nranks == int(os.environ["OLD"]) and parts.step == 7, parts
        rows = []
        for r in range(parts.nranks):
            rows += parts.load(r)["rows"]
        assert rows == list(range(total)), len(rows)
        try:
            cp.restore()
        except ckpt.NoValidCheckpointError as e:
            assert "restore_step" in str(e) or "ckpt_restart_step" in str(e), e
        else:
            raise AssertionError("restore() must refuse a step of another number of ranks")
print("ok", flush=True)
"""


def test_a_step_of_4_ranks_is_read_by_2_ranks_with_open_step(tmp_path):
    directory = tmp_path / "c"

    def run(n: int, mode: str) -> None:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RESHAPE],
                env=child_env(CKPT_DIR=str(directory), CKPT_RANK=str(r), CKPT_NRANKS=str(n), MODE=mode, OLD="4"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in range(n)
        ]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0 and out.strip() == "ok", err

    run(4, "save")
    run(2, "load")
