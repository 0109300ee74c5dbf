#!/usr/bin/env python3
"""Issue 18's Python measurements, side by side in one process (interleaved, the order rotating per run).

    python bench_issue18.py DIR [RUNS] [SIZE_MIB]

1. Saves of SIZE_MIB (default 1024) of float32 arrays (8 arrays in a dict): `Checkpointer.save(state,
   blocking=False)` (the call, and the call until `wait()` says durable), the blocking
   `Checkpointer.save(state)`, and torch.save's pattern made durable: `pickle.dump` (protocol 5, in band)
   to a temporary file, fsync, rename, fsync of the directory. `os.sync()` (untimed) before each.
2. Load of a dict of 50,000 arrays of 8 KiB (uint8) with `ckpt.load(path, mmap=False)` against
   `pickle.load` of the same dict pickled to a file (both files in the page cache): repeated in this
   process, and each load the first of a new process (2b, what a restart does).
3. Restore of the SIZE_MIB checkpoint: copy-on-write mapping (`load()`, the default) against a read-only
   mapping (`load(writable=False)`): the open, and one full pass over every array (`a.sum()`), and for
   copy-on-write also a first write pass (`a += 1`).

Prints a JSON object of per-run seconds and the medians.
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import ckpt


def durable_pickle(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=5)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    d = Path(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    size_mib = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
    d.mkdir(parents=True, exist_ok=True)
    n = size_mib * (1 << 20) // 4 // 8
    rng = np.random.default_rng(0)
    state = {f"w{i}": rng.random(n, dtype=np.float32) for i in range(8)}
    res: dict[str, list[float]] = {k: [] for k in ("async_call", "async_durable", "blocking", "pickle_fsync")}

    cp = ckpt.Checkpointer("bench", directory=d / "cp", keep=2, signals=())

    def m_async() -> None:
        t = time.perf_counter()
        h = cp.save(state, blocking=False)
        res["async_call"].append(time.perf_counter() - t)
        h.wait()
        res["async_durable"].append(time.perf_counter() - t)

    def m_blocking() -> None:
        t = time.perf_counter()
        cp.save(state)
        res["blocking"].append(time.perf_counter() - t)

    def m_pickle() -> None:
        t = time.perf_counter()
        durable_pickle(state, d / "state.pkl")
        res["pickle_fsync"].append(time.perf_counter() - t)

    methods = [m_async, m_blocking, m_pickle]
    for m in methods:  # warm-up (the staging buffer's first allocation, spares)
        os.sync()
        m()
    for k in res:
        res[k].clear()
    for r in range(runs):
        order = methods[r % 3 :] + methods[: r % 3]
        if r % 2:
            order.reverse()
        for m in order:
            os.sync()
            m()

    # 3. copy-on-write vs read-only restore of the same checkpoint.
    path = d / "cp" / "bench.ckpt"
    for k in ("cow_open", "cow_sum", "cow_write", "ro_open", "ro_sum"):
        res[k] = []
    with open(path, "rb") as f:  # into the page cache
        while f.read(1 << 24):
            pass
    for r in range(runs):
        for kind in (("cow", "ro") if r % 2 == 0 else ("ro", "cow")):
            t = time.perf_counter()
            s = ckpt.load(path, writable=(kind == "cow"))
            res[f"{kind}_open"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for a in s.values():
                a.sum()
            res[f"{kind}_sum"].append(time.perf_counter() - t)
            if kind == "cow":
                t = time.perf_counter()
                for a in s.values():
                    a += 1
                res["cow_write"].append(time.perf_counter() - t)
            del s
    cp.close()
    del state

    # 2. many small arrays.
    small = {f"a{i}": np.full(8192, i % 251, dtype=np.uint8) for i in range(50_000)}
    ckpt.save(small, d / "small.ckpt")
    with open(d / "small.pkl", "wb") as f:
        pickle.dump(small, f, protocol=5)
    del small
    res["small_ckpt"], res["small_pickle"] = [], []
    for p in (d / "small.ckpt", d / "small.pkl"):
        p.read_bytes()
    for r in range(runs):
        pair = [("small_ckpt", lambda: ckpt.load(d / "small.ckpt", mmap=False)),
                ("small_pickle", lambda: pickle.load(open(d / "small.pkl", "rb")))]
        if r % 2:
            pair.reverse()
        for k, f in pair:
            t = time.perf_counter()
            x = f()
            res[k].append(time.perf_counter() - t)
            assert len(x) == 50_000 and x["a7"][0] == 7
            del x

    # 2b. the same loads, each the first one of a new process (what a restart does): no allocator or page
    # reuse from an earlier load in the process.
    fresh = (
        "import pickle, sys, time, numpy, ckpt\n"
        "p = sys.argv[2]\n"
        "t = time.perf_counter()\n"
        "x = ckpt.load(p, mmap=False) if sys.argv[1] == 'c' else pickle.load(open(p, 'rb'))\n"
        "print(time.perf_counter() - t)\n"
    )
    res["small_ckpt_fresh"], res["small_pickle_fresh"] = [], []
    for r in range(runs):
        pair = [("small_ckpt_fresh", "c", d / "small.ckpt"), ("small_pickle_fresh", "p", d / "small.pkl")]
        if r % 2:
            pair.reverse()
        for k, which, path in pair:
            cmd = [sys.executable, "-c", fresh, which, str(path)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res[k].append(float(out.stdout))

    med = {k: statistics.median(v) for k, v in res.items()}
    med["ratio_async_call_to_blocking"] = med["async_call"] / med["blocking"]
    med["ratio_small_ckpt_to_pickle"] = med["small_ckpt"] / med["small_pickle"]
    med["ratio_small_ckpt_to_pickle_fresh"] = med["small_ckpt_fresh"] / med["small_pickle_fresh"]
    print(json.dumps({"size_mib": size_mib, "runs": runs, "python": sys.version.split()[0],
                      "numpy": np.__version__, "ckpt": ckpt.__version__, "median": med, "runs_s": res}, indent=1))


if __name__ == "__main__":
    main()
