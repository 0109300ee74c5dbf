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

Python handlers can only be installed from the main thread: create the checkpointer there. Created in
another thread, it has the C-level handlers only.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any

from . import _ckpt

Handler = Callable[[int, Any], Any]


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


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
        return handler

    def install(self) -> None:
        """Installs our Python handlers on top of the current ones (main thread only)."""
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
        """Puts back the Python handlers that were there before ours, unless someone replaced ours."""
        self.closed = True
        if not _in_main_thread():
            return
        for signum, (handler, prev) in list(self.installed.items()):
            if signal.getsignal(signum) is handler:
                signal.signal(signum, prev)
            del self.installed[signum]
