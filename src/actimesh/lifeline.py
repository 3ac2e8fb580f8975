"""Child processes that die with their parent.

A managed broker, an engine started by the fault drill or a load generator started by
the bench must not outlive the process that started it: killed with SIGKILL (an
out-of-memory kill, a CI time limit, ``kill -9`` on a hung test), the parent runs no
clean-up at all, and an orphaned Mosquitto keeps its port, its database and, in a test
run, the next run's surprises.

On Linux, :func:`die_with_parent` returns a ``preexec_fn`` that asks the kernel to send
the child SIGTERM when its parent goes (``prctl(PR_SET_PDEATHSIG)``), so the child still
shuts down cleanly (Mosquitto saves its database on SIGTERM). Two details of that call
shape how it is used:

* the signal is tied to the *thread* that forked, not to the process, so spawn from a
  thread that lives as long as the child (the event loop's thread, the main thread),
  never from a short-lived worker thread;
* a parent that died between fork and ``prctl`` would never send it, so the child
  checks its parent is still the one that forked it and exits otherwise.

The setting survives ``execve`` but is cleared when the child changes user; the managed
broker is told to keep its parent's user (see ``render_config``). Elsewhere the function
returns None and children are left to the normal clean-up.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolved here, before fork: the child should do as little as possible.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(127)  # cannot promise to die with the parent: do not start at all
        if os.getppid() != parent:  # the parent is already gone
            os._exit(0)

    return preexec
