"""Collective checkpoint/restart over an mpi4py communicator: what ``include/ckpt_mpi.h`` does for C.

``Checkpointer(..., comm=MPI.COMM_WORLD)`` routes its triggers, saves and restores through here. Every
function is collective over the communicator (every rank calls it, in the same order relative to the
other collectives on it) and has the same outcome on every rank: a value, or an exception. When one rank
fails, it raises its own error and every other rank raises the same kind of error naming that rank.

The protocol, as in ``ckpt_mpi.h``:

* triggers: one small allreduce (bitwise OR over ranks) of "checkpoint due" and "exit asked", so a signal
  to any rank makes every rank checkpoint the same step, and every rank leaves at the same step;
* save: the ranks agree on the generation (the largest of each one's next generation), each writes its
  part durably, rank 0 gathers the parts' identities (the gather completes only after every part is
  durable) and commits the step's manifest only when every part succeeded; the outcome is broadcast and
  every rank counts the step (or re-arms what made it due) alike;
* restore: the ranks agree on the newest generation *every* rank can read (the minimum over ranks of
  each one's newest valid generation, never the maximum), read and unpickle it, and fall back together to
  an older common generation when any rank cannot.

mpi4py is imported only when a communicator is given.
"""

from __future__ import annotations

import sys
from typing import Any

from ._errors import CheckpointError, InvalidArgumentError, NoValidCheckpointError

#: Bits of the trigger poll.
_DUE, _EXIT = 1, 2


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror}{where}"
    return str(e)


def _remote(e: BaseException, rank: int) -> BaseException:
    """The error other ranks raise for rank ``rank``'s failure ``e``: the same class when it can be
    rebuilt (a :class:`CheckpointError`, an :class:`OSError`), naming the rank."""
    text = f"rank {rank}: {_message(e)}"
    if isinstance(e, CheckpointError):
        try:
            return type(e)(text, kind=e.kind, path=e.path, section=e.section)
        except Exception:
            return CheckpointError(text, kind=e.kind, path=e.path, section=e.section)
    if isinstance(e, OSError) and e.errno is not None:
        return OSError(e.errno, f"rank {rank}: {e.strerror}", e.filename)
    return CheckpointError(f"rank {rank}: {type(e).__name__}: {e}", kind="error")


class Collective:
    """The collectives a :class:`ckpt.Checkpointer` with ``comm=`` needs, over one communicator."""

    def __init__(self, comm: Any) -> None:
        try:
            from mpi4py import MPI
        except ImportError as e:  # pragma: no cover - the caller passed a communicator, so mpi4py exists
            raise InvalidArgumentError(f"comm= needs mpi4py ({e})", kind="invalid argument") from e
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"comm must be an mpi4py communicator (such as MPI.COMM_WORLD), not {comm!r}")
        if comm == MPI.COMM_NULL:
            raise InvalidArgumentError("comm is MPI.COMM_NULL", kind="invalid argument")
        self.MPI = MPI
        self.comm = comm
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()

    # -- agreement ------------------------------------------------------------------------------------------

    def check(self, error: BaseException | None) -> None:
        """Raises on every rank when ``error`` is set on any: the failing rank (the lowest, if several)
        raises its own error, the others a copy naming it. Collective."""
        failed = self.comm.allreduce(self.size if error is None else self.rank, op=self.MPI.MIN)
        if failed == self.size:
            return
        shared = self.comm.bcast(None if error is None else _remote(error, self.rank), root=failed)
        if error is not None:
            raise error
        raise shared

    def poll(self, due: bool, exit: bool) -> tuple[bool, bool]:
        """``(any rank has a checkpoint due, any rank's exit was asked)``: one allreduce. Collective."""
        v = self.comm.allreduce((_DUE if due else 0) | (_EXIT if exit else 0), op=self.MPI.BOR)
        return bool(v & _DUE), bool(v & _EXIT)

    # -- save -----------------------------------------------------------------------------------------------

    def save(self, native: Any, write: Any, step: int, failed: BaseException | None) -> tuple[dict[str, Any], str]:
        """One collective save (see the module documentation). ``write(generation)`` writes this rank's
        part and returns ``(commit figures, part identity)``; ``failed`` is an error this rank already
        had (pickling the state), which stops every rank before anything is written. Returns this rank's
        part's figures and the path of the step's manifest. Collective."""
        self.check(failed)
        generation, error = 0, None
        try:
            generation = native.next_generation()
        except Exception as e:
            error = e
        self.check(error)
        steps = self.comm.allgather(step)
        if len(set(steps)) != 1:
            raise InvalidArgumentError(
                f"every rank must save the same step; got {steps} (by rank)", kind="invalid argument"
            )
        generation = self.comm.allreduce(generation, op=self.MPI.MAX)
        part: tuple[dict[str, Any], Any] | None = None
        try:
            part = write(generation)
        except Exception as e:
            error = e
        # The gather completes on rank 0 only after every rank's part is durable (or failed).
        reports = self.comm.gather(
            (None, part[1]) if part is not None else (_remote(error, self.rank), None),  # type: ignore[arg-type]
            root=0,
        )
        outcome: tuple[BaseException | None, str | None] = (None, None)
        if self.rank == 0:
            assert reports is not None
            bad = next((e for e, _ in reports if e is not None), None)
            if bad is not None:
                outcome = (bad, None)
            else:
                try:
                    d = native.commit_step_parts(generation, step, [p for _, p in reports])
                    outcome = (None, str(d["path"]))
                except Exception as e:
                    outcome = (_remote(e, 0), None)
        outcome = self.comm.bcast(outcome, root=0)
        err, manifest = outcome
        native.finish_step(err is None)
        if err is not None:
            if error is not None:
                raise error
            raise err
        assert part is not None and manifest is not None
        return part[0], manifest

    # -- restore --------------------------------------------------------------------------------------------

    def restore(self, fetch: Any, unpickle: Any, allow_fresh_start: Any) -> tuple[Any, dict[str, Any] | None]:
        """Restores every rank from the same step: the newest generation every rank can read and unpickle.

        ``fetch(max_generation)`` returns ``None`` or ``(stream, buffers, info)`` of this rank's newest valid
        checkpoint up to ``max_generation``; ``unpickle(found)`` returns the object. Returns ``(obj, info)``,
        or ``(None, None)`` for a fresh start: only when no rank has a checkpoint of its own (or
        ``CKPT_ALLOW_FRESH_START``); :class:`NoValidCheckpointError` when ranks have checkpoints but no
        generation is readable on every rank. Collective."""
        MPI = self.MPI
        max_generation: int | None = None
        own_any = False  # this rank has checkpoints of its own (valid or not): no silent fresh start then
        rejected: list[tuple[str, str]] = []
        while True:
            found, error = None, None
            try:
                found = fetch(max_generation)
            except NoValidCheckpointError:
                own_any = True  # none valid up to max_generation on this rank: 0, as for C
            except Exception as e:
                error = e
            self.check(error)
            own_any = own_any or found is not None
            g = 0 if found is None else int(found[2]["generation"])
            agreed = self.comm.allreduce(g, op=MPI.MIN)
            if agreed == 0:
                del found
                anyone = self.comm.allreduce(own_any, op=MPI.LOR)
                if anyone and not allow_fresh_start():
                    lines = [
                        "no checkpoint generation is readable and unpickles on every rank (the number of ranks "
                        "changed, or parts are missing or damaged: see the notices of the ranks that rejected files)"
                    ]
                    lines += [f"  {p}: {why}" for p, why in rejected]
                    lines.append("(set CKPT_ALLOW_FRESH_START=1 to start from scratch anyway)")
                    raise NoValidCheckpointError("\n".join(lines), kind="no valid checkpoint")
                return None, None
            if g != agreed:
                # Another rank cannot read this rank's newest generation: select the agreed one exactly.
                del found
                found = None
                try:
                    found = fetch(agreed)
                except (CheckpointError, OSError):
                    pass
                if found is not None and int(found[2]["generation"]) != agreed:
                    found = None
            if not self.comm.allreduce(found is not None, op=MPI.LAND):
                del found
                max_generation = agreed - 1  # some rank cannot read it: fall back together
                continue
            assert found is not None
            steps = self.comm.allgather(int(found[2]["step"]))
            if len(set(steps)) != 1:
                raise CheckpointError(
                    f"generation {agreed} holds different steps on different ranks ({steps}): not one job's files",
                    kind="corrupt",
                )
            obj, why = None, None
            try:
                obj = unpickle(found)
            except (MemoryError, RecursionError) as e:
                error = e
            except Exception as e:
                if isinstance(e, CheckpointError) and e.kind == "untrusted":
                    error = e
                else:
                    why = f"its pickle stream cannot be unpickled ({type(e).__name__}: {e})"
            self.check(error)
            failures = self.comm.allgather(why)
            info = found[2]
            if all(w is None for w in failures):
                info["rejected"] = rejected + [(p, m) for p, m in info.get("rejected", ()) if (p, m) not in rejected]
                return obj, info
            if why is not None:
                rejected.append((str(info["file"]), why))
                print(f"ckpt: {info['file']}: {why}; every rank falls back to an older checkpoint", file=sys.stderr, flush=True)
            else:
                r = next(i for i, w in enumerate(failures) if w is not None)
                print(
                    f"ckpt: rank {r} cannot unpickle generation {agreed}; every rank falls back to an older checkpoint",
                    file=sys.stderr,
                    flush=True,
                )
            del obj, found
            max_generation = agreed - 1
