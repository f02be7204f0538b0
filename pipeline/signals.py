"""Termination signals end a command the way Ctrl-C does, and worker processes end with it.

By default SIGTERM (what ``kill``, Slurm's time limit and ``timeout`` send) and SIGHUP (a
closed terminal) end Python at once: no ``finally`` runs, so joblib's worker processes are
never told to stop.  They were seen running on, orphaned, and finishing shards into a folder
whose lock had died with the build, beside the next build that took the lock.  Here both
signals raise KeyboardInterrupt in the main thread, so the code that stops workers and
removes temporary files on Ctrl-C runs for them too; and :func:`orphan_guard` lets a worker
check, between images, that the process that started it is still there.
"""
from __future__ import annotations

import contextlib
import os
import signal

#: the signals that end a command like Ctrl-C
SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def terminate_as_interrupt():
    """``with terminate_as_interrupt(): ...``: the handlers for the time of a command, the
    caller's own restored after it (a program calling ``main()`` keeps its signal handling);
    outside the main thread, nothing changes."""
    previous = {}
    for s in SIGNALS:
        try:
            previous[s] = signal.signal(s, _interrupt)
        except ValueError:   # not the main thread
            break
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Orphaned(BaseException):
    """The process that started this worker is gone: stop, commit nothing."""


def orphan_guard(parent: int | None):
    """A check to call between units of work in a worker started by process ``parent``:
    raises :class:`Orphaned` once the worker has been re-parented (its parent died)."""
    def check() -> None:
        if parent is not None and os.getppid() != parent:
            raise Orphaned(f"the parent process {parent} is gone")
    return check
