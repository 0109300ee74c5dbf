"""Best-metric retention: Checkpointer(keep=2, keep_best=1, metric=..., mode=...) (issue 18)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ckpt


def generations(d, name):
    return sorted(int(f.rsplit(".", 1)[1]) for f in os.listdir(d) if f.startswith(name + ".ckpt.") and f.rsplit(".", 1)[1].isdigit())


@pytest.mark.parametrize("blocking", [True, False])
def test_keeps_newest_and_best(tmp_path, blocking):
    losses = [0.5, 0.2, 0.4, 0.6, 0.7, 0.3]
    with ckpt.Checkpointer("r", directory=tmp_path, keep=2, keep_best=1, metric="val_loss", mode="min") as cp:
        for i, v in enumerate(losses, 1):
            r = cp.save({"step": i, "a": np.full(1 << 16, i)}, metrics={"val_loss": v}, blocking=blocking)
            if not blocking:
                r.wait()
        assert generations(tmp_path, "r") == [2, 5, 6]
        back = cp.restore()
    assert back["step"] == 6
    best = ckpt.load(tmp_path / "r.ckpt.2")
    assert best["step"] == 2 and best["a"][0] == 2


def test_mode_max_and_saves_without_the_metric(tmp_path):
    with ckpt.Checkpointer("m", directory=tmp_path, keep=1, keep_best=2, metric="acc", mode="max") as cp:
        cp.save({"step": 1}, metrics={"acc": 0.9})
        cp.save({"step": 2}, metrics={"acc": 0.5})
        cp.save({"step": 3})  # no metric: never among the best
        cp.save({"step": 4}, metrics={"acc": float("nan")})
        cp.save({"step": 5}, metrics={"acc": 0.7})
        cp.save({"step": 6}, metrics={"acc": 0.1})
    assert generations(tmp_path, "m") == [1, 5, 6]


def test_a_restarted_run_reads_the_metrics_back(tmp_path):
    kw = dict(directory=tmp_path, keep=1, keep_best=1, metric="loss")
    with ckpt.Checkpointer("x", **kw) as cp:
        cp.save({"step": 1}, metrics={"loss": 0.1})
        cp.save({"step": 2}, metrics={"loss": 0.9})
    with ckpt.Checkpointer("x", **kw) as cp:  # a new process's view: metrics from the headers
        assert cp.restore()["step"] == 2
        assert cp.restored.metrics == {"loss": 0.9}
        cp.save({"step": 3}, metrics={"loss": 0.5})
        cp.save({"step": 4}, metrics={"loss": 0.6})
    assert generations(tmp_path, "x") == [1, 4]


def test_without_keep_best_keep_alone_applies(tmp_path):
    with ckpt.Checkpointer("k", directory=tmp_path, keep=2) as cp:
        for i, v in enumerate([0.1, 0.5, 0.9], 1):
            cp.save({"step": i}, metrics={"loss": v})
    assert generations(tmp_path, "k") == [2, 3]


def test_bad_arguments():
    with pytest.raises(ckpt.InvalidArgumentError, match="metric"):
        ckpt.Checkpointer(keep_best=1)
    with pytest.raises(ckpt.InvalidArgumentError, match="mode"):
        ckpt.Checkpointer(keep_best=1, metric="loss", mode="avg")
    with pytest.raises(ckpt.InvalidArgumentError):
        ckpt.Checkpointer(keep_best=-1, metric="loss")
