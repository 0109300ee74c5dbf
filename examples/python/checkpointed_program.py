#!/usr/bin/env python3
"""The checkpointed program of the Slurm guide, redone with ckpt.

The guide's version pickled its progress to ``checkpoint.pkl.tmp`` and renamed it (no fsync: a node crash
could leave an empty file), and its ``if i % 100 == 0`` sat after the loop, so it never checkpointed
while running. Here:

* ``ckpt.Checkpointer`` says when to checkpoint: on SIGUSR1 (``#SBATCH --signal=B:USR1@300`` sends it
  before the time limit; checkpoint and continue), on SIGTERM (preemption, ``scancel``, the time limit,
  ``scontrol requeue``: checkpoint, then stop), every ``CKPT_INTERVAL`` (Slurm time format: ``30:00`` is
  30 minutes), shortly before the job's end time, and on ``ckpt create <jobid>``;
* ``cp.save`` writes ``<job_id>.ckpt`` atomically and durably in ``CKPT_DIR`` (keeping the previous
  generation), and ``cp.restore`` picks the newest checkpoint that verifies, so a restarted or requeued
  job continues where it stopped and ends with exactly the results of an uninterrupted run.

Exit status: 0 when all steps are done, 3 when it stopped after a checkpoint (run it again to continue).

Usage: ``python checkpointed_program.py [--steps N] [--step-seconds S] [--interval T]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import ckpt

EXIT_CHECKPOINTED = 3


def compute_something(i: int) -> int:
    # Computation
    return i**2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="number of steps (default 1000)")
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=float(os.environ.get("STEP_SECONDS", "0")),
        help="simulated extra work per step, in seconds (default $STEP_SECONDS or 0)",
    )
    parser.add_argument("--interval", default=None, help="checkpoint interval (default $CKPT_INTERVAL)")
    args = parser.parse_args(argv)

    with ckpt.Checkpointer("checkpointed_program", interval=args.interval) as cp:
        # Try to load previous progress
        progress = cp.restore(default={"step": 0, "results": []})
        if cp.restored is not None:
            print(f"Resuming from checkpoint {cp.restored.path} at step {progress['step']}...", flush=True)
        else:
            print("Starting fresh...", flush=True)
        start_i, results = progress["step"], progress["results"]

        # Main computation loop
        for i in range(start_i, args.steps):
            result = compute_something(i)
            results.append(result)
            if args.step_seconds:
                time.sleep(args.step_seconds)

            # Save a checkpoint when one is due (a signal, the interval, the time limit, a request)
            if cp.should_checkpoint():
                info = cp.save({"step": i + 1, "results": results})
                print(f"Checkpoint saved: {info.path} (step {i + 1}, generation {info.generation})", flush=True)
            if cp.should_exit():
                print(f"Stopping after step {i + 1}; run again to continue from the checkpoint", flush=True)
                return EXIT_CHECKPOINTED

    digest = hashlib.sha256(repr(results).encode()).hexdigest()[:16]
    print(f"Done: {len(results)} results, sum = {sum(results)}, digest = {digest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
