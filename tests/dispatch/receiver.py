"""A small real HTTP/1.1 server that plays an integrator's webhook receiver.

Its ``mode`` decides how it answers: ``ok`` (204), ``fail`` (500), or ``hang`` (reads the
request, then never answers until it is closed). It records every request it read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None  # HTTP status sent back, None if it hung


@dataclass
class Receiver:
    mode: str = "ok"
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _open: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/actimesh"

    @property
    def delivered(self) -> list[Received]:
        return [r for r in self.requests if r.answered is not None and r.answered < 300]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = writer
        try:
            async with asyncio.timeout(30):
                while True:
                    line = await reader.readline()
                    if not line:
                        return
                    _, path, _ = line.decode().split(" ", 2)
                    headers: dict[str, str] = {}
                    while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                        name, _, value = h.decode().partition(":")
                        headers[name.strip().lower()] = value.strip()
                    body = await reader.readexactly(int(headers.get("content-length", "0")))
                    mode = self.mode
                    if mode == "hang":
                        self.requests.append(Received(path, headers, body, None))
                        await self._release.wait()
                        return
                    status = 204 if mode == "ok" else 500
                    self.requests.append(Received(path, headers, body, status))
                    reason = b"No Content" if status == 204 else b"Internal Server Error"
                    writer.write(b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\n\r\n" % (status, reason))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            del self._open[task]

    async def close(self) -> None:
        """Answer no more: end every connection and wait for its handler. A handler
        left to the end of the test would be cancelled with the loop, which Python
        3.11's ``start_server`` reports as an exception in a callback."""
        self._release.set()
        for writer in self._open.values():
            writer.close()
        if self._open:
            await asyncio.wait(list(self._open))


@contextlib.asynccontextmanager
async def receiver(mode: str = "ok") -> AsyncIterator[Receiver]:
    rx = Receiver(mode=mode)
    server = await asyncio.start_server(rx._handle, "127.0.0.1", 0)
    rx.port = server.sockets[0].getsockname()[1]
    async with server:  # closes the listening socket
        try:
            yield rx
        finally:
            await rx.close()  # before: 3.12's wait_closed() waits for every connection
