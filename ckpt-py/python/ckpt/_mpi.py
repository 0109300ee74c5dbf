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
  every rank counts the step (or re-arms what made it due) alike; with a node-local cache level
  (``CKPT_CACHE_DIR``) on any rank, every rank also records the committed step in its node's cache;
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
#: Bytes per message of a part moved between partners, and the tags of partner transfers.
_CHUNK = 4 << 20
_TAG_IDENTITY, _TAG_BYTES = 27101, 27102  # below 32767, the least MPI_TAG_UB the standard allows


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


class Pending:
    """A background collective save: this rank's part being written (``handle``, the native
    ``SaveHandle``), and once :meth:`Collective.settle` committed the step (or failed), its outcome."""

    def __init__(self, handle: Any, generation: int, step: int, metrics: str | None) -> None:
        self.handle = handle
        self.generation = generation
        self.step = step
        self.metrics = metrics
        self.settled = False
        #: The step's commit figures (this rank's part's, with the manifest as ``path``).
        self.figures: dict[str, Any] | None = None
        #: Why the step was not committed.
        self.error: BaseException | None = None


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
        #: Each rank's partner (``partner_layout``), once computed.
        self._partners: list[int] | None = None

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

    def agree(
        self, native: Any, step: int, failed: BaseException | None, metrics: str | None
    ) -> tuple[int, str | None]:
        """The start of every collective save: stops every rank when one failed already (``failed``: pickling
        the state), checks that every rank saves the same step, agrees on the generation (the largest of
        each rank's next one) and on the metrics (rank 0's: the step's, in every rank's part). Collective."""
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
        metrics = self.comm.bcast(metrics, root=0)
        return generation, metrics

    def commit(
        self, native: Any, generation: int, step: int, part: Any, error: BaseException | None, metrics: str | None
    ) -> str:
        """The end of every collective save, once this rank's part is durable (``part``: its identity) or
        failed (``error``): rank 0 gathers the parts' identities (the gather completes only after every
        part is durable) and commits the step's manifest only when every part succeeded; the outcome is
        broadcast and every rank counts the step (or re-arms what made it due) alike. With a node-local
        cache level on any rank, the outcome also carries the identities rank 0 committed, and every other
        rank records the step's manifest in its node's cache (as ``ckpt_mpi.h`` does), so that a job
        requeued on the same nodes restarts from the caches. Then best-metric retention (rank 0 decides,
        every rank removes its parts). Returns the manifest's path; raises on every rank when any failed.
        Collective."""
        cached = native.cache_dir() is not None
        partners = bool(native.has_partner_copies())
        mine = (None, part, cached, partners) if error is None else (_remote(error, self.rank), None, cached, partners)
        reports = self.comm.gather(mine, root=0)
        outcome: tuple[BaseException | None, str | None, list[Any] | None, bool] = (None, None, None, False)
        if self.rank == 0:
            assert reports is not None
            bad = next((r[0] for r in reports if r[0] is not None), None)
            if bad is not None:
                outcome = (bad, None, None, False)
            else:
                parts = [r[1] for r in reports]
                try:
                    d = native.commit_step_parts(generation, step, parts)
                    any_cached = any(r[2] for r in reports)
                    outcome = (None, str(d["path"]), parts if any_cached else None, any(r[3] for r in reports))
                except Exception as e:
                    outcome = (_remote(e, 0), None, None, False)
        outcome = self.comm.bcast(outcome, root=0)
        err, manifest, committed, with_partners = outcome
        if err is None and committed is not None and self.rank != 0:
            try:
                native.record_step(generation, step, committed)
            except Exception as e:  # the step is committed: a restart elsewhere still finds it
                print(
                    f"ckpt: rank {self.rank}: the step of generation {generation} is not recorded in this node's "
                    f"cache ({_message(e)}); a restart on this node reads it from the checkpoint directory",
                    file=sys.stderr,
                    flush=True,
                )
        if err is None and with_partners:
            self.partner_send(native, generation, part)
        native.finish_step(err is None)
        if err is not None:
            if error is not None:
                raise error
            raise err
        self.retire(native, generation, metrics)
        assert manifest is not None
        return manifest

    def retire(self, native: Any, generation: int, metrics: str | None) -> None:
        """Best-metric retention over ranks, after the step of ``generation`` was committed: rank 0 ranks the
        steps by their metric (rank 0's, which every rank's part holds) and removes the manifests of those
        it does not keep, then every rank removes its own parts of them, then rank 0 their emptied
        directories. Collective (a no-op without ``keep_best``: the same on every rank)."""
        if not native.keeps_best:
            return
        removed: list[int] = []
        if self.rank == 0:
            try:
                removed = list(native.best_retire(generation, metrics)[0])
            except Exception as e:  # the step is committed: retention failing loses nothing
                print(f"ckpt: best-metric retention failed: {e}", file=sys.stderr, flush=True)
        removed = self.comm.bcast(removed, root=0)
        if not removed:
            return
        native.remove_parts(removed, False)
        self.comm.Barrier()
        if self.rank == 0:
            native.remove_parts(removed, True)

    def save(
        self, native: Any, write: Any, step: int, failed: BaseException | None, metrics: str | None
    ) -> tuple[dict[str, Any], str, str | None]:
        """One blocking collective save (see the module documentation). ``write(generation, metrics)``
        writes this rank's part and returns ``(commit figures, part identity)``. Returns this rank's part's
        figures, the path of the step's manifest and the step's metrics. Collective."""
        generation, metrics = self.agree(native, step, failed, metrics)
        part: tuple[dict[str, Any], Any] | None = None
        error = None
        try:
            part = write(generation, metrics)
        except Exception as e:
            error = e
        manifest = self.commit(native, generation, step, None if part is None else part[1], error, metrics)
        assert part is not None
        return part[0], manifest, metrics

    def start(
        self, native: Any, write: Any, step: int, failed: BaseException | None, metrics: str | None
    ) -> Pending:
        """Starts a background collective save: agrees as :meth:`save` does, then ``write(generation,
        metrics)`` captures the state and begins this rank's part (a thread writes it) and returns the
        native handle. The step is committed later by :meth:`settle`. Collective."""
        generation, metrics = self.agree(native, step, failed, metrics)
        handle, error = None, None
        try:
            handle = write(generation, metrics)
        except Exception as e:
            error = e
        try:
            self.check(error)
        except BaseException:
            if handle is not None:  # begun here, refused elsewhere: the part is written, the step is not
                handle.wait(None)
                native.finish_step(False)
            raise
        return Pending(handle, generation, step, metrics)

    def settle(self, native: Any, pending: Pending, block: bool, timeout: float | None = None) -> bool:
        """Commits a background save's step once every rank's part is finished (durable or failed):
        ``block`` waits for this rank's part first (``timeout``: at most that long); without it, commits
        only when every part is already finished. The outcome (the manifest's path, or the error every
        rank raises) goes into ``pending``. Returns whether the step was settled. Collective: every rank
        takes the same branch."""
        if pending.settled:
            return True
        if block:
            pending.handle.wait(timeout)
        if not self.comm.allreduce(bool(pending.handle.done()), op=self.MPI.LAND):
            return False
        part, error, figures = None, None, None
        try:
            figures = pending.handle.result()
            part = native.part_identity(pending.generation)
        except Exception as e:
            error = e
        try:
            manifest = self.commit(native, pending.generation, pending.step, part, error, pending.metrics)
        except Exception as e:
            pending.error = e
        else:
            d = dict(figures)
            d["generation_path"] = d["path"]
            d["path"] = manifest
            pending.figures = d
        pending.settled = True
        return True

    # -- partner copies (CKPT_PARTNER=1) -------------------------------------------------------------------------

    def _warn(self, what: str, rank: int, generation: int, e: BaseException | str) -> None:
        why = e if isinstance(e, str) else _message(e)
        print(
            f"ckpt: rank {self.rank}: {what} rank {rank}'s part of generation {generation} failed: {why}",
            file=sys.stderr,
            flush=True,
        )

    def partner_layout(self, native: Any) -> list[int]:
        """Each rank's partner, the rank that keeps its copy (-1 with one node), as ``ckpt_mpi.h`` places it:
        nodes (by ``node_key``) in the order of their lowest rank; the j-th rank of a node keeps its copy on
        the next node's (j mod n)-th rank. Computed once. Collective."""
        if self._partners is None:
            keys = self.comm.allgather(native.node_key())
            nodes: dict[int, list[int]] = {}
            for r, k in enumerate(keys):
                nodes.setdefault(k, []).append(r)
            order = sorted(nodes.values(), key=lambda ranks: ranks[0])
            holder = [-1] * self.size
            if len(order) > 1:
                for i, ranks in enumerate(order):
                    after = order[(i + 1) % len(order)]
                    for j, r in enumerate(ranks):
                        holder[r] = after[j % len(after)]
            elif self.rank == 0:
                print(
                    f"ckpt: CKPT_PARTNER=1, but all {self.size} ranks are on one node (CKPT_NODE_ID, "
                    "SLURM_TOPOLOGY_ADDR or the host name): no partner copies are kept",
                    file=sys.stderr,
                    flush=True,
                )
            self._partners = holder
        return self._partners

    def partner_send(self, native: Any, generation: int, mine: Any) -> None:
        """After the step of ``generation`` was committed: sends this rank's cached part (identity ``mine``)
        to its partner and keeps the parts of the ranks it is the partner of, in chunks exchanged in lockstep
        (every request of a round is posted before its wait); a part is kept only once it is exactly the part
        committed and verifies. Failures are reported on stderr: the step is committed either way.
        Collective."""
        MPI = self.MPI
        holder = self.partner_layout(native)
        to = holder[self.rank]
        senders = [r for r in range(self.size) if holder[r] == self.rank]
        requests = [self.comm.isend(mine, dest=to, tag=_TAG_IDENTITY)] if to >= 0 else []
        theirs = [self.comm.recv(source=s, tag=_TAG_IDENTITY) for s in senders]
        MPI.Request.Waitall(requests)
        receivers: dict[int, Any] = {}
        for s, identity in zip(senders, theirs):
            try:
                receivers[s] = native.receive_part_copy(False, generation, s)
            except Exception as e:  # its bytes still arrive: received and dropped
                self._warn("keeping a copy of", s, generation, e)
        read_error: BaseException | None = None
        offset = 0
        while True:
            requests, incoming = [], []
            for s, identity in zip(senders, theirs):
                length = int(identity[2])
                if offset < length:
                    buf = bytearray(min(_CHUNK, length - offset))
                    incoming.append((s, buf))
                    requests.append(self.comm.Irecv([buf, MPI.BYTE], source=s, tag=_TAG_BYTES))
            if to >= 0 and offset < int(mine[2]):
                n = min(_CHUNK, int(mine[2]) - offset)
                data = bytes(n)
                if read_error is None:
                    try:
                        data = native.read_part_copy(True, generation, self.rank, offset, n)
                    except Exception as e:  # zeros go out instead: the partner's check refuses them
                        read_error = e
                requests.append(self.comm.Isend([data, MPI.BYTE], dest=to, tag=_TAG_BYTES))
            if not requests:
                break
            MPI.Request.Waitall(requests)
            for s, buf in incoming:
                if s in receivers:
                    try:
                        receivers[s].write(offset, bytes(buf))
                    except Exception as e:
                        self._warn("keeping a copy of", s, generation, e)
                        del receivers[s]
            offset += _CHUNK
        if read_error is not None:
            self._warn("sending a copy of", self.rank, generation, read_error)
        for s, identity in zip(senders, theirs):
            if s in receivers:
                try:
                    receivers[s].commit(tuple(identity))
                except Exception as e:
                    self._warn("keeping a copy of", s, generation, e)

    def _move_part(self, native: Any, src: int, dst: int, generation: int, identity: Any) -> BaseException | None:
        """Moves rank ``dst``'s part of ``generation`` from the copy ``src``'s node keeps to ``dst``'s cache
        (as its own part), in chunks; only ``src`` and ``dst`` call it (they may be one rank). Returns, on
        ``dst``, why it could not be kept (``None``: kept)."""
        MPI = self.MPI
        length = int(identity[2])
        receiver, error = None, None
        if self.rank == dst:
            try:
                receiver = native.receive_part_copy(True, generation, dst)
            except Exception as e:
                error = e
        offset = 0
        while offset < length:
            n = min(_CHUNK, length - offset)
            data = bytes(n)
            if self.rank == src:
                try:
                    data = native.read_part_copy(False, generation, dst, offset, n)
                except Exception as e:  # zeros go out instead: the receiver's check refuses them
                    if error is None and src != dst:
                        self._warn("sending back", dst, generation, e)
                    error = error or e
                if src != dst:
                    self.comm.Send([data, MPI.BYTE], dest=dst, tag=_TAG_BYTES)
            if self.rank == dst:
                if src != dst:
                    buf = bytearray(n)
                    self.comm.Recv([buf, MPI.BYTE], source=src, tag=_TAG_BYTES)
                    data = bytes(buf)
                if receiver is not None and error is None:
                    try:
                        receiver.write(offset, data)
                    except Exception as e:
                        error = e
            offset += n
        if self.rank == dst and receiver is not None and error is None:
            try:
                receiver.commit(tuple(identity))
            except Exception as e:
                error = e
        return error

    def partner_restore(self, native: Any) -> None:
        """Before the ranks agree on the step to restart from: when some ranks lack the newest generation
        another rank can read and a node keeps partner copies of their parts of it (a lost node's), each
        such rank gets its part and the step's identities back from there, records the step in its node's
        cache and keeps the part, as ``ckpt_mpi.h`` does. A rank keeps copies for others only when it can
        restart from that generation itself. Nothing happens without ``CKPT_PARTNER`` on any rank.
        Collective."""
        MPI = self.MPI
        if not self.comm.allreduce(bool(native.has_partner_copies()), op=MPI.LOR):
            return
        g, ok = 0, True
        try:
            g = int(native.newest_valid_generation())
        except Exception:
            ok = False  # the agreement reports it
        low, high = self.comm.allreduce((g if ok else 1 << 62), op=MPI.MIN), self.comm.allreduce(g, op=MPI.MAX)
        if high == 0 or low >= high:
            return
        held: list[int] = []
        step, parts = 0, None
        if ok and g == high:
            try:
                step, parts = native.step_identities(high)
                held = list(native.partner_copies_held(high))
            except Exception:
                held = []
        needs = self.comm.allgather(ok and g < high)
        keepers: dict[int, int] = {}
        for r, ranks in enumerate(self.comm.allgather(held)):
            for x in ranks:
                keepers[x] = r  # the highest rank that keeps it, as ckpt_mpi.h's MAX
        for x in range(self.size):
            if not needs[x]:
                continue
            keeper = keepers.get(x, -1)
            if keeper < 0:
                if self.rank == x:
                    print(
                        f"ckpt: rank {x}: no node keeps a partner copy of its part of generation {high}",
                        file=sys.stderr,
                        flush=True,
                    )
                continue
            if self.rank not in (x, keeper):
                continue
            if self.rank == keeper and keeper != x:
                self.comm.send((step, parts), dest=x, tag=_TAG_IDENTITY)
            if self.rank == x and keeper != x:
                step, parts = self.comm.recv(source=keeper, tag=_TAG_IDENTITY)
            assert parts is not None
            recorded: BaseException | None = None
            if self.rank == x:
                try:
                    native.record_step(high, int(step), list(parts))
                except Exception as e:
                    recorded = e
            moved = self._move_part(native, keeper, x, high, parts[x])
            if self.rank != x:
                continue
            failure = recorded or moved
            if failure is None:
                print(
                    f"ckpt: rank {x}: its part of generation {high} restored from the copy on rank {keeper}'s node",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                self._warn("restoring", x, high, failure)

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
            obj, failure, why = _unpickle_part(unpickle, found)
            error = failure or error
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

    def restore_step(self, fetch: Any, unpickle: Any, step: int) -> tuple[Any, dict[str, Any]]:
        """Restores every rank from the newest generation of step ``step`` that every rank can read:
        each rank looks for its newest valid part of that step, the ranks agree on the oldest of those
        (the newest every rank has), and every rank loads it. A rank without a valid part of the step, or
        one that cannot read or unpickle the agreed generation, makes every rank raise
        :class:`NoValidCheckpointError` naming the ranks (no fallback to another step: the caller asked for
        this one). ``fetch`` and ``unpickle`` as for :meth:`restore`. Collective."""

        def newest_of_step(max_generation: int | None) -> tuple[Any, list[int]]:
            seen: list[int] = []
            while True:
                try:
                    found = fetch(max_generation)
                except NoValidCheckpointError:
                    return None, seen
                if found is None:
                    return None, seen
                info = found[2]
                if int(info["step"]) == step:
                    return found, seen
                seen.append(int(info["step"]))
                max_generation = int(info["generation"]) - 1
                del found
                if max_generation < 1:
                    return None, seen

        found, error, seen = None, None, []
        try:
            found, seen = newest_of_step(None)
        except Exception as e:
            error = e
        self.check(error)
        g = 0 if found is None else int(found[2]["generation"])
        gens = self.comm.allgather(g)
        if 0 in gens:
            steps = sorted({s for per in self.comm.allgather(seen) for s in per}, reverse=True)
            missing = [r for r, x in enumerate(gens) if x == 0]
            raise NoValidCheckpointError(
                f"no valid checkpoint of step {step} on rank(s) {', '.join(map(str, missing))} of {self.size} "
                f"(every rank must have its part; steps the ranks can read: {steps or 'none'})",
                kind="no valid checkpoint",
            )
        agreed = min(gens)
        why: str | None = None
        if g != agreed:
            del found
            found = None
            try:
                found = fetch(agreed)
            except (CheckpointError, OSError) as e:
                why = str(e)
            if found is not None and (int(found[2]["generation"]), int(found[2]["step"])) != (agreed, step):
                found = None
            if found is None and why is None:
                why = f"its part of generation {agreed} (step {step}) is missing or damaged"
        obj = None
        if found is not None:
            obj, failure, unpickled_why = _unpickle_part(unpickle, found)
            error = failure or error
            why = unpickled_why or why
        self.check(error)
        failures = self.comm.allgather(why)
        bad = [(r, w) for r, w in enumerate(failures) if w is not None]
        if bad:
            raise NoValidCheckpointError(
                f"step {step} (generation {agreed}) cannot be restored on every rank: "
                + "; ".join(f"rank {r}: {w}" for r, w in bad),
                kind="no valid checkpoint",
            )
        assert found is not None
        info = found[2]
        info["rejected"] = []
        return obj, info


def _unpickle_part(unpickle, found):
    """Unpickles this rank's part: ``(obj, error, why)``. ``error`` is what every rank must raise (out of
    memory, recursion, an untrusted file); ``why`` says why this part cannot be used (a damaged pickle
    stream), for the ranks to agree on."""
    try:
        return unpickle(found), None, None
    except (MemoryError, RecursionError) as e:
        return None, e, None
    except Exception as e:
        if isinstance(e, CheckpointError) and e.kind == "untrusted":
            return None, e, None
        return None, None, f"its pickle stream cannot be unpickled ({type(e).__name__}: {e})"
