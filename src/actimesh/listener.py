"""An HTTP listener for actimesh's own web servers (the dispatch and the evidence uploads).

Both bind their socket before uvicorn starts, so a port in use is a one-line
:class:`ConfigError` at start-up rather than a log line from inside uvicorn, and an
ephemeral port (``0``) is known before anyone is told the address. Both run uvicorn
without its signal handlers: the caller's TaskGroup decides when to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn

from actimesh.errors import ActimeshError, ConfigError

__all__ = ["QuietServer", "address", "bind", "serve", "url", "wait_started"]


class QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: actimesh's TaskGroup decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, *, what: str, fix: str) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port``.

    ``what`` names the server and ``fix`` says what to change, for the one-line error
    when the address cannot be had (``"dispatch"``, ``"pass --http-port N"``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{what} cannot listen on {host}:{port} ({exc.strerror}): {fix}") from exc
    return sock


def address(sock: socket.socket) -> tuple[str, int]:
    """The host and port a socket is bound to (the real port when ``0`` was asked)."""
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


def url(where: tuple[str, int], *, tls: bool) -> str:
    """``http(s)://host:port`` (IPv6 hosts in brackets)."""
    host, port = where
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def wait_started(server: uvicorn.Server, timeout: float) -> None:
    """Until uvicorn accepts connections (it offers only a flag to watch)."""
    async with asyncio.timeout(timeout):
        while not server.started:  # noqa: ASYNC110 - uvicorn has only a flag
            await asyncio.sleep(0.01)


async def serve(
    server: uvicorn.Server,
    sock: socket.socket,
    *,
    what: str,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Serve on ``sock`` until cancelled, then close connections gracefully.

    ``on_stop`` runs first on cancellation (e.g. telling live clients to go). A server
    that stops by itself is an error: the caller's TaskGroup must not go on without it.
    """
    try:
        await server.serve(sockets=[sock])
    except asyncio.CancelledError:
        if on_stop is not None:
            on_stop()
        # Let uvicorn close the connections within its graceful timeout.
        if server.started:
            server.should_exit = True
            await server.shutdown(sockets=[sock])
        raise
    raise ActimeshError(f"the {what} stopped on its own; see the log")
