"""The child side of a :class:`~actimesh.runtime.supervisor.Supervisor`.

``python -m actimesh.runtime.child NAME ENTRY FD NICE`` lowers its CPU priority by
``NICE``, reads its payload (pickled by the parent) from stdin, runs the ``async``
function ``ENTRY`` names (``module:function``) until SIGTERM, and writes one line on the
pipe ``FD``: ``ready <url>`` once it listens, or ``error <kind> <one line>`` if it could
not start. It is a module of its own, run as ``__main__`` and imported by nobody, so the
child does not load a second copy of the supervisor under another name.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import pickle
import signal
import sys

from actimesh.errors import ActimeshError, ConfigError, first_error
from actimesh.runtime.supervisor import Entry

__all__: list[str] = []


def _child(name: str, entry: str, fd: int, nice: int) -> int:
    if nice:
        # Under CPU contention the kernel runs the engine first: a web listener busy
        # with a flood of requests waits, an officer's trigger does not.
        os.nice(nice)
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s",
    )
    module, _, function = entry.partition(":")
    target: Entry = getattr(importlib.import_module(module), function)
    payload = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - from the parent only
    pipe = os.fdopen(fd, "w", buffering=1)

    def report(url: str) -> None:
        pipe.write(f"ready {url}\n")

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        await target(payload, report)

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    except (ActimeshError, BaseExceptionGroup) as exc:
        error = first_error(exc)
        if error is None:
            raise
        one_line = " ".join(str(error).split())
        pipe.write(f"error {type(error).__name__} {one_line}\n")
        return 2 if isinstance(error, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
