#!/usr/bin/env python3
"""Levels with MPI: what a collective checkpoint of 4 ranks costs the application per step, synchronous
(straight to the checkpoint directory) against the node-local cache level and the cache level with partner
copies (CKPT_PARTNER=1), side by side in one run. BENCHMARKS.md, "Levels and asynchronous saves", section 4.

    python3 benches/mpi/levels_mpi.py [--ranks 4] [--mib-per-rank 256] [--steps 4] [--rounds 5] [--dir DIR]

Builds libckpt (release) and benches/mpi/bench_mpi.c with Open MPI's mpicc, then runs rounds of one
`mpirun -np R bench_mpi MODE` per mode (ckpt, cached, partner) in rotation; each run's first step (its
first save, into new files) is discarded. Rank r is on simulated node r / 2, its cache in a tmpfs
(/dev/shm). Prints the median step time per mode (min-max) and the ratios to the synchronous save.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODES = ("ckpt", "cached", "partner")


def build(work: Path) -> Path:
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ckpt-ffi"], cwd=ROOT, check=True)
    lib = ROOT / "target" / "release"
    exe = work / "bench_mpi"
    mpicc = shutil.which("mpicc.openmpi") or "mpicc"
    subprocess.run(
        [mpicc, "-O2", "-std=c11", "-Wall", "-Wextra", f"-I{ROOT / 'include'}", str(ROOT / "benches/mpi/bench_mpi.c"),
         "-o", str(exe), f"-L{lib}", "-lckpt", f"-Wl,-rpath,{lib}"],
        check=True,
    )
    return exe


def run(exe: Path, mode: str, ranks: int, bytes_per_rank: int, steps: int, ckpt_dir: Path, cache: Path) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_", "SLURM_", "OMPI_", "PMI"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", BENCH_CACHE_ROOT=str(cache))
    mpirun = shutil.which("mpirun.openmpi") or "mpirun"
    subprocess.run(["sync"], check=True)
    out = subprocess.run(
        [mpirun, "--oversubscribe", "-np", str(ranks), str(exe), mode, str(ckpt_dir), str(bytes_per_rank), str(steps)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    if out.returncode != 0:
        sys.exit(f"bench_mpi {mode} failed:\n{out.stdout}\n{out.stderr}")
    if "failed" in out.stderr:
        sys.exit(f"bench_mpi {mode} reported a failure:\n{out.stderr}")
    times = [float(l.split()[2]) for l in out.stdout.splitlines() if l.startswith("step ")]
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--mib-per-rank", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="where the checkpoint directories go (default: a temporary directory under /var/tmp)")
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ckpt-levels-mpi-", dir=a.dir or "/var/tmp"))
    cache = Path(tempfile.mkdtemp(prefix="ckpt-levels-mpi-", dir="/dev/shm"))
    try:
        exe = build(base)
        samples: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(a.rounds):
            for m in MODES:
                samples[m] += run(exe, m, a.ranks, a.mib_per_rank << 20, a.steps, base / m, cache / m)
        total = a.ranks * a.mib_per_rank
        print(f"{a.ranks} ranks on {(a.ranks + 1) // 2} simulated nodes, {a.mib_per_rank} MiB per rank ({total} MiB in all); "
              f"{a.rounds} rounds x {a.steps - 1} timed steps per mode; load average {os.getloadavg()[0]:.1f}")
        print("| mode | step: median (min-max) | / synchronous |")
        print("|---|---|---|")
        sync = statistics.median(samples["ckpt"])
        names = {"ckpt": "synchronous (checkpoint directory)", "cached": "cached (tmpfs)", "partner": "cached + partner copies"}
        for m in MODES:
            s = samples[m]
            med = statistics.median(s)
            print(f"| {names[m]} | {med:.3f} s ({min(s):.3f}-{max(s):.3f}) | {med / sync:.2f} |")
        print(f"partner / cached: {statistics.median(samples['partner']) / statistics.median(samples['cached']):.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
