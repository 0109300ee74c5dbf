"""A small MPI "training" run for test_mpi.py: run under mpirun with mpi4py.

    [TRAIN_SIGNAL=RANK:STEP:SIG] [TRAIN_EVERY=N] [TRAIN_ASYNC=1] [TRAIN_BEST=1] [TRAIN_RESTORE_STEP=N] \
        mpirun -np 4 python mpi_train.py OUT STEPS

(the options are in the environment: the command line is part of the run's identity, which a restart
must match).

Each rank updates its own integer array and a history with a value that couples all ranks (an
allreduce), so a rank restored from another step than the others changes every rank's result. It
checkpoints collectively through ``ckpt.Checkpointer(comm=MPI.COMM_WORLD)`` when a checkpoint is due:
``TRAIN_EVERY=N`` makes rank 0 alone request one every N steps (the others learn it from the collective
poll); ``TRAIN_SIGNAL=RANK:STEP:SIG`` makes rank RANK send itself SIG after step STEP, on a fresh start or a restart before that step (TERM:
every rank must checkpoint that step and leave; KILL: the job dies). At the end each rank writes
``OUT/rank<r>.json``: its final state's step and digest, the step it restored (or null) and the step
it left at on should_exit() (or null). ``TRAIN_ASYNC=1`` saves with ``blocking=False``; ``TRAIN_BEST=1`` keeps
the best step by a metric besides the newest 3 (rank 0's metric is best at step 6, the other ranks' at
step 14: rank 0 decides); ``TRAIN_RESTORE_STEP=N`` restores step N (``restore(step=N)``); a restore that
raises ``NoValidCheckpointError`` writes ``{"error": ..., "message": ...}`` and exits with 3.
``TRAIN_CACHE=DIR`` gives the ranks node-local cache levels on simulated nodes of two ranks each: rank r
caches in ``DIR/node<r // 2>`` (``CKPT_CACHE_DIR``) and is on node ``node<r // 2>`` (``CKPT_NODE_ID``,
for partner copies with ``CKPT_PARTNER=1``); the result then also says which file each rank restored its
part from (``"file"``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys

import numpy as np
from mpi4py import MPI

import ckpt


def main() -> int:
    out = sys.argv[1]
    steps = int(sys.argv[2])
    sig = None
    if os.environ.get("TRAIN_SIGNAL"):
        r, s, name = os.environ["TRAIN_SIGNAL"].split(":")
        sig = (int(r), int(s), getattr(signal, "SIG" + name))
    every = int(os.environ.get("TRAIN_EVERY") or 0)
    background = os.environ.get("TRAIN_ASYNC") == "1"
    best = os.environ.get("TRAIN_BEST") == "1"
    restore_step = int(os.environ["TRAIN_RESTORE_STEP"]) if os.environ.get("TRAIN_RESTORE_STEP") else None
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if os.environ.get("TRAIN_CACHE"):
        os.environ["CKPT_CACHE_DIR"] = os.path.join(os.environ["TRAIN_CACHE"], f"node{rank // 2}")
        os.environ["CKPT_NODE_ID"] = f"node{rank // 2}"
    kw = {"keep_best": 1, "metric": "loss", "mode": "min"} if best else {}
    with ckpt.Checkpointer("mpitrain", comm=comm, keep=3, **kw) as cp:
        assert (cp.rank, cp.nranks) == (rank, comm.Get_size())
        try:
            state = cp.restore(default=None, step=restore_step)
        except ckpt.NoValidCheckpointError as e:
            print(f"rank {rank} restore failed: {e}", flush=True)
            with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
                json.dump({"error": type(e).__name__, "message": str(e)}, f)
            return 3
        restored = None if state is None else state["step"]
        restored_file = None if cp.restored is None else str(cp.restored.file)
        if state is None:
            state = {"step": 0, "x": np.arange(1000, dtype=np.int64) * (rank + 1), "history": []}
        print(f"rank {rank} restored {restored}", flush=True)
        exited = None
        while state["step"] < steps:
            i = state["step"]
            x = state["x"]
            x *= 31
            x += i + rank
            x %= 1_000_003
            total = comm.allreduce(int(x.sum()), op=MPI.SUM)
            x += total % 7
            state["history"].append(total)
            state["step"] = i + 1
            if sig is not None and (restored is None or restored < sig[1]) and rank == sig[0] and state["step"] == sig[1]:
                os.kill(os.getpid(), sig[2])
            if every and rank == 0 and state["step"] % every == 0:
                cp.request_checkpoint()
            if cp.should_checkpoint():
                # Each rank its own metric: rank 0's is the step's (best: step 6; the others' would be 14).
                metrics = {"loss": abs(state["step"] - (6 if rank == 0 else 14))}
                if background:
                    # Captured at the call: the in-place updates of x that follow must not reach the file.
                    h = cp.save(state, blocking=False, metrics=metrics)
                    assert h.step == state["step"], h
                else:
                    info = cp.save(state, metrics=metrics)
                    assert info.step == state["step"], info
            if cp.should_exit():
                print(f"rank {rank} exit {state['step']}", flush=True)
                exited = state["step"]
                break
    digest = hashlib.sha256(state["x"].tobytes() + json.dumps(state["history"]).encode()).hexdigest()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(
            {"step": state["step"], "digest": digest, "restored": restored, "exited": exited, "file": restored_file}, f
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
