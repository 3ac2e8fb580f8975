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
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actimesh.errors import ActimeshError, ConfigError

__all__ = ["BodyLimit", "QuietServer", "address", "bind", "serve", "url", "wait_started"]


class BodyLimit:
    """ASGI middleware: no request body over ``max_bytes`` is ever held in memory.

    A declared ``Content-Length`` over the limit is answered 413 before a byte of the
    body is read; a body sent without one (chunked) is cut off with 413 as soon as it
    passes the limit. Unauthenticated routes (the login) read their bodies too, so this
    is what keeps a stranger's 300 MB POST from costing the process 300 MB.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"the request body is over {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not (declared.isdigit() and int(declared) <= self.max_bytes):
            refused = self._too_large()
            await JSONResponse({"error": refused.detail}, refused.status_code)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()  # answered by the app's HTTPException handler
            return message

        await self.app(scope, limited, send)


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
