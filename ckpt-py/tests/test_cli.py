"""The ckpt command in the wheel: `ckpt` and `python -m ckpt` run the Rust CLI's code (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckpt
from conftest import REPO, child_env


def wheel_ckpt() -> list[str]:
    """The console script pip installed next to this interpreter."""
    exe = Path(sys.executable).parent / "ckpt"
    assert exe.exists(), f"pip did not install the ckpt command at {exe}"
    return [str(exe)]


def rust_ckpt() -> str | None:
    """The cargo-built binary, when there is one (CKPT_CLI_BIN, else the workspace's target directory)."""
    given = os.environ.get("CKPT_CLI_BIN", "")
    if given:
        return given
    # Else the newest build in the target directory (an older one would compare against old output).
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    built = [p for p in (target / "release" / "ckpt", target / "debug" / "ckpt") if os.access(p, os.X_OK)]
    return str(max(built, key=lambda p: p.stat().st_mtime)) if built else None


def run(cmd: list[str], *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=child_env(**env), timeout=120)


@pytest.fixture
def saved(tmp_path):
    d = tmp_path / "c"
    with ckpt.Checkpointer("job", directory=d, keep=2) as cp:
        cp.save({"step": 1, "a": np.ones(1 << 16)}, metrics={"val_loss": 0.5})
        cp.save({"step": 2, "a": np.ones(1 << 16)}, metrics={"val_loss": 0.25, "epoch": 3})
    return d


@pytest.mark.parametrize("how", ["script", "module"])
def test_list_inspect_verify_env(saved, how):
    cmd = wheel_ckpt() if how == "script" else [sys.executable, "-m", "ckpt"]
    r = run(cmd, "list", str(saved))
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout and "job.ckpt.2" in r.stdout and "metrics epoch=3 val_loss=0.25" in r.stdout, r.stdout
    listed = json.loads(run(cmd, "list", "--json", str(saved)).stdout)
    gen2 = next(f for f in listed["files"] if f["path"].endswith("job.ckpt.2"))
    assert gen2["metrics"] == {"val_loss": 0.25, "epoch": 3} and gen2["step"] == 2
    r = run(cmd, "inspect", str(saved / "job.ckpt.2"))
    assert r.returncode == 0 and "python.pickle" in r.stdout and "val_loss=0.25" in r.stdout, r.stdout
    assert json.loads(run(cmd, "inspect", "--json", str(saved / "job.ckpt.2")).stdout)["metrics"]["epoch"] == 3
    assert run(cmd, "verify", str(saved)).returncode == 0
    (saved / "bad.ckpt").write_bytes(b"x" * 100)
    r = run(cmd, "verify", str(saved / "bad.ckpt"))
    assert r.returncode == 1, (r.stdout, r.stderr)
    env = json.loads(run(cmd, "env", "--json", CKPT_DIR=str(saved), SLURM_JOB_ID="77").stdout)
    assert env["job_id"] == "77"
    r = run(cmd, "requeue", "--max-restarts", "3", "--dry-run", SLURM_JOB_ID="77", SLURM_RESTART_COUNT="5")
    assert r.returncode == 1 and "5" in (r.stdout + r.stderr), (r.stdout, r.stderr)
    r = run(cmd, "create", "999999999", "--max-wait", "1")
    assert r.returncode != 0
    r = run(cmd, "no-such-subcommand")
    assert r.returncode == 2 and "Usage" in r.stderr


def test_same_output_as_the_rust_binary(saved):
    binary = rust_ckpt()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must compare with the cargo-built ckpt binary (set CKPT_CLI_BIN)")
        pytest.skip("no cargo-built ckpt binary (CKPT_CLI_BIN, target/release/ckpt, target/debug/ckpt)")
    for args in (["list", str(saved)], ["inspect", str(saved / "job.ckpt.2")], ["verify", str(saved)], ["--help"]):
        ours, theirs = run(wheel_ckpt(), *args), run([binary], *args)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), args
