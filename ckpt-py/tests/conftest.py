"""Shared fixtures: every test runs in its own directory with a clean ckpt/Slurm environment.

Sizes of the heavy tests come from the environment:

* ``CKPT_PY_BIG_MB`` (default 1024): the array of the peak-memory test;
* ``CKPT_PY_KILL_ITERATIONS`` (default 25): SIGKILLs in the kill-and-resume test;
* ``CKPT_PY_HYPOTHESIS_EXAMPLES`` (default 60): examples per hypothesis test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "python"
#: The default application name of this process: the running script's stem. pytest runs as ``python -m
#: pytest`` (``pytest/__main__.py``: the package's name) or as the ``pytest`` script; both give "pytest".
#: In-process tests use this real default; child scripts get their own file's stem.
APP = "pytest"


_CONFIG_PREFIXES = ("CKPT_", "SLURM_", "OMPI_", "PMI_", "PMIX_")


def _is_config(name: str) -> bool:
    """Whether the library reads this variable (CKPT_PY_* only size the tests; CKPT_CLI_BIN names the Rust
    CLI the wheel's is compared with)."""
    return name.startswith(_CONFIG_PREFIXES) and not name.startswith("CKPT_PY_") and name != "CKPT_CLI_BIN"


def _clean_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not _is_config(k)}


@pytest.fixture(autouse=True)
def ckpt_env(tmp_path, monkeypatch):
    """A fresh working directory and an environment without CKPT_*/SLURM_* variables (so the application
    name is the real default, :data:`APP`)."""
    for k in list(os.environ):
        if _is_config(k):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CKPT_SOCKET_DIR", str(tmp_path / "sockets"))
    yield tmp_path


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: this one's, cleaned, plus ``extra``."""
    env = _clean_env(dict(os.environ))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write_script(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def start(script: Path, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """Starts ``python script args`` with stdout and stderr captured as text."""
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env if env is not None else child_env(),
        **kw,
    )


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    """Reads the child's stdout until a line starting with ``prefix`` (fails on EOF)."""
    import selectors
    import time

    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r}; got {seen!r}; stderr: {proc.stderr.read()!r}")


def int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
