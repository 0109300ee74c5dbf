"""A big array saved and loaded without an extra copy: peak memory of child processes (ru_maxrss).

The size is ``CKPT_PY_BIG_MB`` (default 1024, i.e. 1 GiB). A copy anywhere (the array pickled into the
stream, a read buffer copied into a bytearray...) would add a whole array to the peak.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import child_env, int_env

pytest.importorskip("numpy")

MB = int_env("CKPT_PY_BIG_MB", 1024)
SIZE = MB << 20

CHILD = r"""
import json, resource, sys, numpy as np, ckpt

def maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) << 10
    return 0

mode, path, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "save":
    a = np.ones(size // 8)            # allocated and written: resident
    a[::4096] = np.arange(len(a[::4096]))
    base = maxrss()
    info = ckpt.save({"a": a, "step": 1}, path)
    print(json.dumps({"base": base, "peak": maxrss(), "seconds": info.seconds, "bytes": info.file_bytes}))
else:
    base = maxrss()
    anon_base = anon()
    state = ckpt.load(path, mmap=(mode == "load-mmap"))
    a = state["a"]
    ok = a.shape == (size // 8,) and float(a[4096]) == 1.0 and float(a[8192]) == 2.0
    total = float(a.sum(dtype=np.float64))   # touches every element once more
    b = a
    while isinstance(b, np.ndarray):
        b = b.base
    print(json.dumps({"base": base, "peak": maxrss(), "anon": anon() - anon_base, "ok": ok,
                      "writeable": bool(a.flags.writeable), "mapped": isinstance(b, ckpt.MappedBuffer),
                      "total": total}))
"""


def run(mode: str, path, tmp_path) -> dict:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = subprocess.run(
        [sys.executable, str(script), mode, str(path), str(SIZE)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "big.ckpt"
    yield path
    path.unlink(missing_ok=True)  # pytest keeps the last runs' directories: do not keep a GiB in each


@pytest.mark.slow
def test_big_array_without_extra_copy(tmp_path, big_file, capsys):
    path = big_file
    save = run("save", path, tmp_path)
    extra_save = save["peak"] - save["base"]
    assert save["bytes"] >= SIZE
    # The array is already resident; saving adds only a few MiB of buffers (a copy would add SIZE).
    assert extra_save < SIZE * 0.25, f"save added {extra_save >> 20} MiB for a {MB} MiB array"

    mapped = run("load-mmap", path, tmp_path)
    # Copy-on-write: writable as saved, and still the file's pages (zero copy until written).
    assert mapped["ok"] and mapped["mapped"] and mapped["writeable"]
    extra_mapped = mapped["peak"] - mapped["base"]
    # The mapped file's pages count in the RSS once (verification reads them); a copy would double it.
    assert extra_mapped < SIZE * 1.25, f"mmap load peaked at +{extra_mapped >> 20} MiB for {MB} MiB"
    assert mapped["anon"] < SIZE * 0.25, "with mmap the data is not in anonymous memory"

    copied = run("load-copy", path, tmp_path)
    # mmap=False: the file read once into private anonymous memory, the arrays views of it (not of the file).
    assert copied["ok"] and copied["writeable"]
    extra_copied = copied["peak"] - copied["base"]
    assert extra_copied < SIZE * 1.25, f"copy load peaked at +{extra_copied >> 20} MiB for {MB} MiB"
    assert copied["anon"] >= SIZE * 0.9
    assert mapped["total"] == copied["total"]

    with capsys.disabled():
        print(
            f"\n[memory] {MB} MiB array: save +{extra_save >> 20} MiB peak ({save['seconds']:.2f} s commit); "
            f"load mmap +{extra_mapped >> 20} MiB peak (+{mapped['anon'] >> 20} MiB anonymous); "
            f"load copy +{extra_copied >> 20} MiB peak"
        )
