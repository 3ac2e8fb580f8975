"""Benchmark processes: spawning, talking to and always reaping them.

Each part of a run (engine, load generator, probe, echo client, plain subscriber, naive
scan) is a separate Python process, ``python -m actimesh.bench.worker ROLE CONFIG``, so
that they compete for the two cores the way separate machines' clients and a real engine
would compete with the broker, and so that one's garbage collector never pauses
another. The orchestrator talks to each over its stdin/stdout: one JSON object per line,
``{"id": n, "cmd": name, ...}`` answered by ``{"id": n, "ok": true, ...}``.

No process outlives the run:

* :class:`WorkerPool` stops every worker on the way out (``exit`` command, then SIGTERM,
  then SIGKILL), also when the run fails or is cancelled by Ctrl-C or SIGTERM;
* workers run in their own session (a terminal Ctrl-C reaches the orchestrator only),
  exit on end-of-file on stdin (the orchestrator is gone), ask the kernel for SIGTERM
  when their parent dies (``PR_SET_PDEATHSIG``), and give up after ``lifetime_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

from actimesh.errors import ActimeshError
from actimesh.lifeline import die_with_parent

__all__ = ["BenchError", "Handler", "Rpc", "Worker", "WorkerPool", "proc_sample"]

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

_LINE_LIMIT = 64 * 1024 * 1024
_STOP_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(ActimeshError):
    """A benchmark process failed or did not answer in time."""


def proc_sample(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and resident bytes of process ``pid``, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError as exc:
        raise BenchError(f"process {pid} is gone ({exc.strerror})") from exc
    # The command name may contain spaces; fields are counted after its closing ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return cpu, int(statm.split()[1]) * _PAGE


def _alive(proc: asyncio.subprocess.Process) -> bool:
    return proc.returncode is None


class Worker:
    """One worker process seen from the orchestrator."""

    def __init__(self, role: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.role = role
        self.proc = proc
        self.log_path = log_path
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"bench-{self.role}-reader")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                reply = json.loads(line)
                fut = self._waiting.pop(int(reply.get("id", -1)), None)
                if fut is not None and not fut.done():
                    fut.set_result(reply)
        finally:
            err = BenchError(f"the {self.role} process exited: {self.log_tail()}")
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(err)
            self._waiting.clear()

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(text[-lines:]) or f"see {self.log_path}"

    async def call(self, cmd: str, *, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send one command and wait (bounded) for its answer."""
        if self.proc.returncode is not None or self.proc.stdin is None:
            raise BenchError(f"the {self.role} process has exited: {self.log_tail()}")
        self._next_id += 1
        ident = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = fut
        self.proc.stdin.write(json.dumps({"id": ident, "cmd": cmd, **args}).encode() + b"\n")
        try:
            async with asyncio.timeout(timeout):
                await self.proc.stdin.drain()
                reply = await fut
        except TimeoutError as exc:
            raise BenchError(
                f"the {self.role} process did not answer {cmd!r} within "
                f"{timeout:g} s: {self.log_tail()}"
            ) from exc
        finally:
            self._waiting.pop(ident, None)
        if not reply.get("ok"):
            raise BenchError(f"{self.role}: {cmd} failed: {reply.get('error', 'no reason')}")
        return reply

    async def stop(self) -> None:
        """Ask politely, then SIGTERM, then SIGKILL; always reaps the process."""
        proc = self.proc
        try:
            if proc.returncode is None and proc.stdin is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    proc.stdin.write(b'{"id": 0, "cmd": "exit"}\n')
                    proc.stdin.close()
                for sig in (None, signal.SIGTERM, signal.SIGKILL):
                    if sig is not None and proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            proc.send_signal(sig)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_STOP_TIMEOUT_S):
                            await proc.wait()
                    if not _alive(proc):  # mypy cannot see wait() change returncode
                        break
        finally:
            if proc.returncode is None:  # cancelled while waiting: never leave it behind
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            if self._reader is not None:
                self._reader.cancel()
                # Not `suppress(CancelledError)`: that would swallow our own cancel too.
                await asyncio.wait([self._reader])


class WorkerPool:
    """Starts workers and stops every one of them on exit: ``async with WorkerPool(dir)``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workers: list[Worker] = []

    async def spawn(self, role: str, config: Mapping[str, Any], *, name: str = "") -> Worker:
        """Start ``python -m actimesh.bench.worker ROLE CONFIG``; logs go to a file."""
        label = name or role
        log_path = self.log_dir / f"{label}.log"
        with log_path.open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "actimesh.bench.worker",
                role,
                json.dumps(dict(config)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
                preexec_fn=die_with_parent(),
                limit=_LINE_LIMIT,
            )
        worker = Worker(label, proc, log_path)
        self.workers.append(worker)
        worker.start_reading()
        return worker

    async def __aenter__(self) -> Self:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a second Ctrl-C must not leave processes behind.
        stopping = asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            for worker in self.workers:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
            raise


# ---------------------------------------------------------------------- worker side
class _Exit(Exception):  # noqa: N818 - a control-flow signal, not an error
    pass


def _stop_serving() -> NoReturn:
    # Raised inside the TaskGroup, it cancels every task the worker still runs.
    raise _Exit


class Rpc:
    """The worker's end: reads commands from stdin, runs handlers, writes answers."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)
        self._tg: asyncio.TaskGroup | None = None

    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        """Run a background loop in the worker's TaskGroup (cancelled on exit)."""
        if self._tg is None:
            raise RuntimeError("spawn() only while serve() runs")

        async def wrap() -> None:
            await coro

        return self._tg.create_task(wrap(), name=name)

    async def serve(self, *, lifetime_s: float) -> None:
        """Answer commands until ``exit``, end of stdin, SIGTERM or ``lifetime_s``."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_LINE_LIMIT)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        task = asyncio.current_task()
        if task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            async with asyncio.timeout(lifetime_s), asyncio.TaskGroup() as tg:
                self._tg = tg
                while line := await reader.readline():
                    request = json.loads(line)
                    if request.get("cmd") == "exit":
                        break
                    tg.create_task(self._answer(request), name=f"rpc-{request.get('cmd')}")
                _stop_serving()
        except* _Exit:
            pass
        finally:
            self._tg = None

    async def _answer(self, request: dict[str, Any]) -> None:
        ident = request.pop("id", None)
        cmd = str(request.pop("cmd", ""))
        handler = self._handlers.get(cmd)
        reply: dict[str, Any]
        if cmd == "ping":  # every worker answers it once set up: the readiness check
            reply = {"ok": True}
        elif handler is None:
            reply = {"ok": False, "error": f"unknown command {cmd!r}"}
        else:
            try:
                reply = {"ok": True, **await handler(request)}
            except Exception as exc:  # reported to the orchestrator, which fails the run
                log.exception("%s failed", cmd)
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps({"id": ident, **reply}) + "\n")
        sys.stdout.flush()
