"""Child processes that ``actimesh up`` starts, watches and restarts.

The trigger engine must never share a process, an event loop or a heap with a web
server: eight 300 MB uploads to a login route once raised the engine's process to
2.27 GB and held TASER-draw confirmations for up to 9.7 s. So ``up`` runs each web
listener (the dispatch map and API, the evidence upload API) as a child process of its
own, and a :class:`Supervisor` per child:

* **starts it** with ``python -m actimesh.runtime.child NAME ENTRY FD NICE``: the child
  (:mod:`actimesh.runtime.child`) reads its payload (pickled settings) from stdin, runs
  the ``async`` function ``ENTRY`` names (``module:function``) and reports on the pipe
  ``FD`` once it listens (``ready <url>``) or why it could not start
  (``error <kind> <one line>``);
* **dies with the parent**: the kernel sends the child SIGTERM when ``up`` goes, even if
  it was SIGKILLed (:mod:`actimesh.lifeline`);
* **fails fast on the first start**: a child that cannot start the first time (its port
  is taken) makes ``up`` fail with that one-line error, as an in-process listener did;
* **restarts it** after any later exit, with exponential backoff (0.5 s doubling to
  30 s, back to 0.5 s after a minute of good health), counting restarts;
* **stops it** when cancelled: SIGTERM, and SIGKILL if it is not gone within 5 s;
* optionally runs it at a lower CPU priority (``nice``), so that under contention the
  kernel schedules the engine first.

The child's log goes to the parent's stderr, each line prefixed with its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from actimesh.errors import ActimeshError, ConfigError
from actimesh.lifeline import die_with_parent

__all__ = ["ChildError", "Entry", "Report", "Supervisor"]

log = logging.getLogger(__name__)


class ChildError(ActimeshError):
    """A supervised child could not start."""


class Report(Protocol):
    """What a child entry calls once it listens, with the address it serves."""

    def __call__(self, url: str) -> None: ...


#: What a child entry is: ``async def entry(payload, report) -> None``, run until
#: cancelled (SIGTERM cancels it).
Entry = Callable[[Any, Report], Awaitable[None]]

_HEALTHY_AFTER_S = 60.0


class Supervisor:
    """Runs ``entry`` (``"module:function"``) with ``payload`` in a child, for ever."""

    def __init__(
        self,
        name: str,
        entry: str,
        payload: object,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        ready_timeout_s: float = 60.0,
        stop_timeout_s: float = 5.0,
        nice: int = 0,
    ) -> None:
        self.name = name
        #: Added to the child's nice value: above 0, the parent's work comes first.
        self.nice = nice
        self.entry = entry
        self._payload = pickle.dumps(payload)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        #: Set while a child is up and listening; ``url`` is where.
        self.ready = asyncio.Event()
        self.url: str | None = None
        #: Starts after the first one (crashes and kills it recovered from).
        self.restarts = 0
        self.pid: int | None = None

    async def run(self) -> None:
        """Start the child, and again whenever it exits, until cancelled."""
        delay = self.backoff_initial_s
        first = True
        while True:
            started = time.monotonic()
            try:
                proc = await self._start()
            except ChildError as exc:
                if first:
                    raise
                log.warning("%s did not restart: %s (next try in %.1f s)", self.name, exc, delay)
            else:
                first = False
                try:
                    code = await proc.wait()
                finally:
                    self.ready.clear()
                    await self._stop(proc)
                log.warning("%s exited with %s: restarting in %.1f s", self.name, code, delay)
            if time.monotonic() - started > _HEALTHY_AFTER_S:
                delay = self.backoff_initial_s
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)
            self.restarts += 1

    async def _start(self) -> asyncio.subprocess.Process:
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "actimesh.runtime.child",
                self.name,
                self.entry,
                str(write_fd),
                str(self.nice),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,),
                preexec_fn=die_with_parent(),
            )
        finally:
            os.close(write_fd)
        self.pid = proc.pid
        try:
            assert proc.stdin is not None
            proc.stdin.write(self._payload)
            await proc.stdin.drain()
            proc.stdin.close()
            line = await self._first_line(read_fd)
        except BaseException:
            await self._stop(proc)
            raise
        word, _, rest = line.partition(" ")
        if word == "ready":
            self.url = rest
            self.ready.set()
            return proc
        await self._stop(proc)
        kind, _, message = rest.partition(" ")
        if word == "error" and kind == "ConfigError":
            raise ConfigError(message)
        raise ChildError(f"{self.name}: {message or 'exited before it was ready'}")

    async def _first_line(self, read_fd: int) -> str:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb")
        )
        try:
            async with asyncio.timeout(self.ready_timeout_s):
                raw = await reader.readline()
        except TimeoutError:
            return f"error Timeout not ready within {self.ready_timeout_s:g} s"
        finally:
            transport.close()
        return raw.decode(errors="replace").strip()

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(self.stop_timeout_s):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
