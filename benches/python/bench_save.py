#!/usr/bin/env python3
"""Times `ckpt.save` / `ckpt.load` of one float64 numpy array against its baselines, interleaved.

    python bench_save.py SIZE_MIB RUNS DIR
    python bench_save.py --memory METHOD SIZE_MIB DIR

Prints one JSON object on stdout: the per-run timings (seconds) of every method. Called by the comparison
runner (`benches/src/bin/compare/python.rs`), which renders the table; runnable by hand in a venv with
`ckpt` (ckpt-hpc) and numpy installed.

Saves (each replaces its own previous file of the same size, as a checkpoint does; `os.sync()` before each,
untimed, so no method pays for another's write-back):

* `ckpt`: `ckpt.save(arr, path)` (temporary file, fsync, rename, fsync of the directory; the file it
  replaces is kept as `state.ckpt.tmp.spare` and the next save writes over it);
* `pickle_seed`: the seed document's pattern, verbatim: `pickle.dump` (default protocol) to `path + ".tmp"`
  in the same directory, then `os.rename`; no fsync, so the data is not durable when it returns;
* `pickle_durable`: the same made durable: `flush` + `fsync` of the file before the rename, `fsync` of
  the directory after it;
* `numpy_fsync`: `np.save` to an open file, `flush` + `fsync` (durable, but not atomic: no rename);
* `device_direct` (a reference, not a save): the disk taking as many bytes durably with nothing else to do,
  in the same rotation: `dd if=state.npy of=device.bin bs=16M oflag=direct conv=notrunc,fsync` (the source
  is in the page cache; one 16 MiB request at a time; over the blocks of its previous file, as `ckpt.save`
  writes over its spare's).

Loads (from the page cache: each file is read through once, untimed, before its load, because ckpt's large
writes bypass the page cache), each followed by one full pass over the array (`arr.sum()`), which is where a
memory-mapped load pays for reading:

* `ckpt`: `ckpt.load(path, mmap=True, writable=False)` (verifies the whole file, returns a read-only view
  of the mapping, as before restored arrays became copy-on-write by default);
* `ckpt_unverified`: `ckpt.load(path, mmap=True, verify=False)` (checks the structure and the pickle stream,
  hands out the array unread);
* `numpy`: `np.load(path)` of the `.npy` file;
* `pickle`: `pickle.load` of the seed's file.

The order of the methods changes from run to run (A B C D, D C B A, B C D A, A D C B, ...: see `rotated`);
one untimed warm-up round first.

With `--memory METHOD` (one of the saves), the script instead builds the array, resets the peak resident set
(`5` to `/proc/self/clear_refs`), saves once with METHOD, and prints `{"rss_before_kib", "peak_kib"}`: the
resident set before the save and its peak (`VmHWM`) during it. Run it in a fresh process per measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np

import ckpt
from ckpt import _ckpt

clock = time.perf_counter


def fsync_dir(d: str) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_ckpt(arr: np.ndarray, d: str) -> float:
    path = os.path.join(d, "state.ckpt")
    t = clock()
    ckpt.save(arr, path)
    secs = clock() - t
    # The replaced file is freed on a thread after save() returns (the program goes on meanwhile): wait for
    # it, untimed, so that it is not billed to the method measured next.
    _ckpt.wait_for_background_frees()
    return secs


def save_pickle_seed(arr: np.ndarray, d: str) -> float:
    # save_checkpoint() of ../shared/seed-checkpointing.rst, with the array as the data.
    filename = os.path.join(d, "checkpoint.pkl")
    t = clock()
    with open(filename + ".tmp", "wb") as f:
        pickle.dump(arr, f)
    os.rename(filename + ".tmp", filename)
    return clock() - t


def save_pickle_durable(arr: np.ndarray, d: str) -> float:
    filename = os.path.join(d, "checkpoint-durable.pkl")
    t = clock()
    with open(filename + ".tmp", "wb") as f:
        pickle.dump(arr, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(filename + ".tmp", filename)
    fsync_dir(d)
    return clock() - t


def save_numpy(arr: np.ndarray, d: str) -> float:
    path = os.path.join(d, "state.npy")
    t = clock()
    with open(path, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    return clock() - t


def save_device_direct(arr: np.ndarray, d: str) -> float:
    # Not a way to save the array: how fast the disk takes its bytes, durably, with nothing else to do.
    src, dst = os.path.join(d, "state.npy"), os.path.join(d, "device.bin")
    if not os.path.exists(src):
        save_numpy(arr, d)
    args = ["dd", f"if={src}", f"of={dst}", "bs=16M", "oflag=direct", "conv=notrunc,fsync", "status=none"]
    t = clock()
    subprocess.run(args, check=True)
    return clock() - t


def load_ckpt(d: str, verify: bool = True) -> tuple[float, float]:
    t0 = clock()
    a = ckpt.load(os.path.join(d, "state.ckpt"), mmap=True, verify=verify, writable=False)
    t1 = clock()
    a.sum()
    t2 = clock()
    del a
    return t1 - t0, t2 - t1


def read_through(path: str) -> None:
    """Brings a file into the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(16 << 20):
            pass


def load_numpy(d: str) -> tuple[float, float]:
    t0 = clock()
    a = np.load(os.path.join(d, "state.npy"))
    t1 = clock()
    a.sum()
    t2 = clock()
    del a
    return t1 - t0, t2 - t1


def load_pickle(d: str) -> tuple[float, float]:
    t0 = clock()
    with open(os.path.join(d, "checkpoint.pkl"), "rb") as f:
        a = pickle.load(f)
    t1 = clock()
    a.sum()
    t2 = clock()
    del a
    return t1 - t0, t2 - t1


SAVES = {
    "ckpt": save_ckpt,
    "pickle_seed": save_pickle_seed,
    "pickle_durable": save_pickle_durable,
    "numpy_fsync": save_numpy,
    "device_direct": save_device_direct,
}
LOADS = {
    "ckpt": load_ckpt,
    "ckpt_unverified": lambda d: load_ckpt(d, verify=False),
    "numpy": load_numpy,
    "pickle": load_pickle,
}
LOAD_FILES = {
    "ckpt": "state.ckpt",
    "ckpt_unverified": "state.ckpt",
    "numpy": "state.npy",
    "pickle": "checkpoint.pkl",
}


def rotated(names: list[str], k: int) -> list[str]:
    """Run k's order: rotated by k // 2, backwards when k is odd (A B C D, D C B A, B C D A, A D C B, ...).

    A plain rotation keeps the cyclic order, so each method would always follow the same one; a save that
    follows a large write was seen to run slower (the host still flushing), which would always bill the
    same method.
    """
    j = (k // 2) % len(names)
    order = names[j:] + names[:j]
    return order[::-1] if k % 2 else order


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory(method: str, size_mib: int, d: str) -> None:
    os.makedirs(d, exist_ok=True)
    arr = np.random.default_rng(1).random((size_mib << 20) // 8)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kib("VmRSS")
    SAVES[method](arr, d)
    peak = status_kib("VmHWM")
    json.dump({"method": method, "rss_before_kib": before, "peak_kib": peak}, sys.stdout)
    print()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory":
        p = argparse.ArgumentParser(description="peak extra memory of one save")
        p.add_argument("--memory", choices=list(SAVES), required=True)
        p.add_argument("size_mib", type=int)
        p.add_argument("dir")
        a = p.parse_args()
        memory(a.memory, a.size_mib, os.path.abspath(a.dir))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("size_mib", type=int)
    p.add_argument("runs", type=int)
    p.add_argument("dir")
    a = p.parse_args()
    d = os.path.abspath(a.dir)
    os.makedirs(d, exist_ok=True)
    n = (a.size_mib << 20) // 8
    arr = np.random.default_rng(1).random(n)  # incompressible float64

    saves: dict[str, list[float]] = {k: [] for k in SAVES}
    opens: dict[str, list[float]] = {k: [] for k in LOADS}
    passes: dict[str, list[float]] = {k: [] for k in LOADS}

    # Warm-up round (untimed), and a check that every method round-trips the array.
    for f in SAVES.values():
        os.sync()
        f(arr, d)
    for name in LOADS:
        if name.startswith("ckpt"):
            b = ckpt.load(os.path.join(d, "state.ckpt"), mmap=True, verify=name == "ckpt", writable=False)
            assert not b.flags.writeable, "ckpt.load(mmap=True) should return a view of the mapping"
        elif name == "numpy":
            b = np.load(os.path.join(d, "state.npy"))
        else:
            with open(os.path.join(d, "checkpoint.pkl"), "rb") as f:
                b = pickle.load(f)
        assert b.dtype == arr.dtype and b.shape == arr.shape and np.array_equal(b, arr), name
        del b
    gc.collect()

    for run in range(a.runs):
        for name in rotated(list(SAVES), run):
            os.sync()
            saves[name].append(SAVES[name](arr, d))
        for name in rotated(list(LOADS), run):
            gc.collect()
            read_through(os.path.join(d, LOAD_FILES[name]))
            t_open, t_pass = LOADS[name](d)
            opens[name].append(t_open)
            passes[name].append(t_pass)

    sizes = {
        name: os.path.getsize(os.path.join(d, f))
        for name, f in [
            ("ckpt", "state.ckpt"),
            ("pickle_seed", "checkpoint.pkl"),
            ("pickle_durable", "checkpoint-durable.pkl"),
            ("numpy_fsync", "state.npy"),
        ]
    }
    for f in ("state.ckpt", "state.ckpt.tmp.spare", "checkpoint.pkl", "checkpoint-durable.pkl", "state.npy", "device.bin"):
        if os.path.exists(os.path.join(d, f)):
            os.remove(os.path.join(d, f))
    json.dump(
        {
            "size_mib": a.size_mib,
            "array_bytes": int(arr.nbytes),
            "runs": a.runs,
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "ckpt": getattr(ckpt, "__version__", "?"),
            "pickle_protocol": pickle.DEFAULT_PROTOCOL,
            "file_bytes": sizes,
            "save": saves,
            "load_open": opens,
            "load_pass": passes,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
