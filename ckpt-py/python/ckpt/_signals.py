"""Signal handling of :class:`ckpt.Checkpointer`, next to Python's :mod:`signal` module.

Two layers take part, so that neither Ctrl-C nor the program's own handlers stop working:

1. **C level (the core).** The core installs, through signal-hook, a C handler for each signal
   (default SIGTERM and SIGUSR1; never SIGINT unless asked) that sets the checkpointer's flag at once,
   even while the main thread is busy in a long save with the GIL released, then chains to the handler
   that was installed before it.
2. **Python level.** Before the core installs its handler, this module installs a Python handler for
   the same signals with :func:`signal.signal`. The interpreter's C handler therefore sits under the
   core's in the chain, and whatever Python handler was there before (the program's own) keeps being
   called, from the main thread, as Python always calls them. The default action of SIGTERM (terminate
   at once) is replaced by "checkpoint, then ``should_exit()``"; closing the checkpointer puts the
   previous Python handlers (or the default action) back.

When something replaces a handler later:

* ``signal.signal(SIGUSR1, h)`` (a framework, or the program) replaces the C-level handler with the
  interpreter's, so the core no longer sees the signal and only ``h`` runs. If ``h`` calls the handler it
  replaced (``signal.getsignal()`` before installing: polite frameworks do), the checkpoint is still
  requested, from the main thread, a little later. Otherwise call :func:`ckpt.install_signal_handlers`
  after the framework has installed its handler: the core's handler is put back on top, and ``h`` keeps
  being called after it.
* A C extension calling ``sigaction()`` itself replaces everything below it;
  :func:`ckpt.install_signal_handlers` puts the core's handler back, chaining to Python's handlers.

Python handlers can only be installed from the main thread (``signal.signal`` raises ``ValueError``
elsewhere), and a C-level handler without the Python one under it would chain to an interpreter handler
with nothing to call ("Signal 10 ignored due to race condition"). So a checkpointer that handles signals
must be created in the main thread: created in another thread it raises :class:`ckpt.InvalidStateError`,
unless ``signals=()`` (no signals: the interval, the time limit, ``ckpt create`` and
``request_checkpoint()`` still work). Share the main thread's checkpointer with worker threads instead.

Several checkpointers may be open at once (in the main thread); they may be closed in any order: closing
one never takes a signal away from another that is still open, and the last one to close puts back what
was there before the first.

Two more rules, as the Rust and C faces have them:

* Once a signal that asks to exit (SIGTERM) was handled, later ones stay harmless, also after the
  checkpointer is closed: Slurm sends SIGTERM twice to job steps, and the second must not turn a clean,
  checkpointed exit into "killed by SIGTERM" (exit status 143). Closing then leaves a do-nothing C-level
  handler where the default action would come back (reset to the default on ``exec``).
* A process forked while a checkpointer is open (DataLoader workers, ``multiprocessing`` with fork) gets
  the dispositions of the exit signals (SIGTERM) from before the checkpointer back
  (``os.register_at_fork``): the flag-only handler would make ``Process.terminate()`` a no-op in it. A
  signal that only asks for a checkpoint (SIGUSR1) stays harmless in the child (a do-nothing handler
  where its default action would kill it): Slurm sends it to every process of the step, and a worker
  killed by the checkpoint warning would crash the training it is meant to save.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from . import _ckpt

Handler = Callable[[int, Any], Any]


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def check_thread(specs: list[tuple[int, bool]]) -> None:
    """Raises :class:`ckpt.InvalidStateError` when signals are to be handled outside the main thread."""
    if specs and not _in_main_thread():
        from ._errors import InvalidStateError

        names = []
        for s, _ in specs:
            try:
                names.append(signal.Signals(s).name)
            except ValueError:
                names.append(str(s))
        raise InvalidStateError(
            f"a Checkpointer that handles signals ({', '.join(names)}) must be created in the main thread: Python "
            f"installs signal handlers only there, and this is thread {threading.current_thread().name!r}. Create it "
            "in the main thread and share it with this thread, or pass signals=() (the interval, the time limit, "
            "ckpt create and request_checkpoint() still work)",
            kind="invalid state",
        )


def _skip_closed(prev: Any) -> Any:
    """The handler to put back instead of ``prev``: past the handlers of checkpointers closed meanwhile (a
    checkpointer closed while a later one chained to it)."""
    seen = 0
    while callable(prev) and seen < 1000:
        owner = getattr(prev, "_ckpt_owner", None)
        if owner is None or not owner.closed:
            break
        prev = prev._ckpt_prev
        seen += 1
    return prev


#: Set once a signal that asks to exit (SIGTERM) reached a checkpointer's handler (never reset).
_exit_signal_seen = False
#: The handlers of the checkpointers open in this process (for the child of a fork).
_open: weakref.WeakSet[Handlers] = weakref.WeakSet()
_fork_handler_registered = False
_fork_lock = threading.Lock()


def exit_signal_seen() -> bool:
    """Whether a signal that asks to exit (SIGTERM) was handled by a checkpointer of this process."""
    return _exit_signal_seen


@contextlib.contextmanager
def _blocked(signals: list[int]) -> Iterator[None]:
    """Holds ``signals`` back in this thread meanwhile (delivered afterwards, to what is installed then)."""
    if not signals:
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def register_fork_handler() -> None:
    """Registers (once) what a forked child runs: :meth:`Handlers.reset_in_child` of every open checkpointer."""
    global _fork_handler_registered
    with _fork_lock:
        if not _fork_handler_registered:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_handler_registered = True


def _after_fork_in_child() -> None:
    for h in list(_open):
        with contextlib.suppress(Exception):
            h.reset_in_child()


class Handlers:
    """The Python-level handlers of one checkpointer."""

    def __init__(self, specs: list[tuple[int, bool]]) -> None:
        self.specs = specs
        self.native: Any = None
        self.closed = False
        # signal -> (our current handler, the handler it chains to)
        self.installed: dict[int, tuple[Handler, Any]] = {}

    def _make(self, signum: int, exit: bool, prev: Any) -> Handler:
        def handler(sig: int, frame: Any) -> None:
            global _exit_signal_seen
            if exit and not self.closed:
                _exit_signal_seen = True
            native = self.native
            if native is not None and not self.closed and not _ckpt.signal_hook_installed(sig):
                # The core's C handler was bypassed (signal.signal() replaced it, and the new handler
                # chained to us): request the checkpoint from here.
                with contextlib.suppress(Exception):  # closed in the meantime
                    native.request_checkpoint(exit)
            if callable(prev):
                prev(sig, frame)

        try:
            label = signal.Signals(signum).name
        except ValueError:
            label = str(signum)
        handler.__qualname__ = handler.__name__ = f"ckpt_signal_handler_{label}"
        handler._ckpt_owner = self  # type: ignore[attr-defined]
        handler._ckpt_prev = prev  # type: ignore[attr-defined]
        return handler

    def install(self) -> None:
        """Installs our Python handlers on top of the current ones (main thread only)."""
        _open.add(self)
        if not _in_main_thread():
            return
        for signum, exit in self.specs:
            current = signal.getsignal(signum)
            if current is None:
                # A handler installed from C (not by Python): Python cannot put it back later, so leave it
                # alone; the core's handler chains to it.
                continue
            ours = self.installed.get(signum)
            if ours is not None and current is ours[0]:
                continue
            handler = self._make(signum, exit, current)
            signal.signal(signum, handler)
            self.installed[signum] = (handler, current)

    def reinstall(self) -> list[int]:
        """Puts our handlers back on top at both levels (see the module documentation)."""
        self.install()
        return _ckpt.reinstall_signal_hooks([s for s, _ in self.specs])

    def restore(self) -> None:
        """Puts back the Python handlers that were there before ours, unless someone replaced ours. After
        a handled SIGTERM, a signal that asks to exit whose default action would come back gets a
        do-nothing handler instead (see the module documentation)."""
        self.closed = True
        _open.discard(self)
        if not _in_main_thread():
            return
        absorb = [s for s, exit in self.specs if exit] if _exit_signal_seen else []
        with _blocked(absorb):
            for signum, (handler, prev) in list(self.installed.items()):
                if signal.getsignal(signum) is handler:
                    signal.signal(signum, _skip_closed(prev))
                del self.installed[signum]
            for signum in absorb:
                if signal.getsignal(signum) == signal.SIG_DFL:
                    _ckpt.absorb_signal(signum)

    def reset_in_child(self) -> None:
        """In the child of a fork: the dispositions from before the checkpointer (C level, then Python's)."""
        self.closed = True
        _open.discard(self)
        native = self.native
        if native is not None:
            native.reset_signals_in_child()
        for signum, (handler, prev) in list(self.installed.items()):
            if signal.getsignal(signum) is handler:
                signal.signal(signum, prev)
            del self.installed[signum]
        for signum, exit in self.specs:
            if not exit and signal.getsignal(signum) == signal.SIG_DFL:
                # A signal that only asks for a checkpoint (SIGUSR1) reaches the workers too (Slurm signals
                # every process of the step): it must not kill them, as it does not kill their parent.
                _ckpt.absorb_signal(signum)
