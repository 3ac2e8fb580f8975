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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import uvicorn
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from actimesh.errors import ActimeshError, ConfigError

__all__ = [
    "BodyLimit",
    "ConnectionGauge",
    "QuietServer",
    "address",
    "bind",
    "hardened_server",
    "serve",
    "serve_until_cancelled",
    "slow_client_protocol",
    "url",
    "wait_started",
]


class ConnectionGauge:
    """The open connections of one listener, and whether it is crowded: within
    ``reserve`` of its ``limit`` (uvicorn's ``limit_concurrency``, beyond which it answers
    503 to everyone). While crowded, the dispatch refuses requests without credentials
    (:class:`~actimesh.dispatch.auth.AuthGate`), so the last slots stay for people who
    are logged in, and a new connection gets only ``crowded_head_timeout_s`` to send its
    request head."""

    def __init__(self, limit: int, reserve: int, *, crowded_head_timeout_s: float = 1.0) -> None:
        if not 0 < reserve < limit:
            raise ValueError(f"a reserve of {reserve} needs a limit above it, not {limit}")
        self.limit = limit
        self.reserve = reserve
        self.crowded_head_timeout_s = crowded_head_timeout_s
        self.open = 0

    @property
    def crowded(self) -> bool:
        return self.open >= self.limit - self.reserve


class CredentialsFirst:
    """ASGI middleware: while ``gauge`` is crowded, a request without an
    ``Authorization`` header gets 503 with ``Retry-After: 1``, so the last connections
    stay for callers with credentials (the evidence listener's devices). Credentials
    are checked later, by the app: this only keeps strangers out of the reserve."""

    def __init__(self, app: ASGIApp, gauge: ConnectionGauge) -> None:
        self.app = app
        self.gauge = gauge
        #: Requests turned away while crowded.
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.gauge.crowded
            and not any(name == b"authorization" for name, _ in scope.get("headers", ()))
        ):
            self.refused += 1
            message = "busy: requests with credentials only; try again in a second"
            response = JSONResponse({"error": message}, 503, {"Retry-After": "1"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def slow_client_protocol(
    head_timeout_s: float, gauge: ConnectionGauge | None = None
) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request head has not
    arrived within ``head_timeout_s`` of the connection (or of the last response).

    uvicorn times out only idle keep-alive connections; one that sends half a request
    head and then nothing (slowloris) holds its slot for ever, and a few hundred of them
    answer everyone else 503. Bodies are timed by :class:`BodyLimit`. With a ``gauge``,
    connections are counted, and one made while the listener is crowded gets the
    gauge's shorter head timeout.
    """

    class _SlowClientH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _counted = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            timeout = head_timeout_s
            if gauge is not None:
                if gauge.crowded:
                    timeout = min(timeout, gauge.crowded_head_timeout_s)
                gauge.open += 1
                self._counted = True
            self._arm(timeout)

        def data_received(self, data: bytes) -> None:
            before = self.headers
            super().data_received(data)
            if self.headers is not before:  # a request head arrived (an upgrade too)
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm(head_timeout_s)  # the next request's head is timed as well

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if gauge is not None and self._counted:
                gauge.open -= 1
                self._counted = False
            super().connection_lost(exc)

        def _arm(self, timeout: float) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(timeout, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

    return _SlowClientH11


class BodyLimit:
    """ASGI middleware: no request body over ``max_bytes`` is ever held in memory, and
    none trickles in for ever.

    A declared ``Content-Length`` over the limit is answered 413 before a byte of the
    body is read; a body sent without one (chunked) is cut off with 413 as soon as it
    passes the limit. Unauthenticated routes (the login) read their bodies too, so this
    is what keeps a stranger's 300 MB POST from costing the process 300 MB. A body whose
    next part takes longer than ``gap_timeout_s`` gets 408.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, gap_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        #: A body whose next part does not arrive within this gets 408.
        self.gap_timeout_s = gap_timeout_s

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
        complete = False

        async def limited() -> Message:
            nonlocal received, complete
            if complete:  # after the body: the app waits for a disconnect, untimed
                return await receive()
            try:
                async with asyncio.timeout(self.gap_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408, f"no part of the request body arrived within {self.gap_timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()  # answered by the app's HTTPException handler
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, limited, send)


class QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: actimesh's TaskGroup decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def hardened_server(
    app: ASGIApp,
    *,
    client_timeout_s: float,
    gauge: ConnectionGauge,
    tls: Mapping[str, Any],
    **options: Any,
) -> QuietServer:
    """A :class:`QuietServer` for an API on the open network: no log config or access
    log (query strings may be positions), no lifespan, slow clients cut off after
    ``client_timeout_s``, at most ``gauge.limit`` connections, no server header, client
    addresses never taken from headers. ``tls``: uvicorn's ``ssl_*`` options, if any;
    ``options``: more of uvicorn's (e.g. WebSocket limits)."""
    return QuietServer(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            http=slow_client_protocol(client_timeout_s, gauge),
            limit_concurrency=gauge.limit,
            server_header=False,
            timeout_graceful_shutdown=2,
            # Client addresses key the login limits: never taken from headers.
            proxy_headers=False,
            **options,
            **tls,
        )
    )


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


async def serve_until_cancelled(
    server: uvicorn.Server,
    sock: socket.socket,
    ready: asyncio.Event,
    *,
    what: str,
    name: str | None = None,
) -> None:
    """:func:`serve` ``server`` on ``sock``, ``ready`` set while it accepts connections;
    the socket is closed at the end. ``name``: the serving task's."""
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(serve(server, sock, what=what), name=name)
            await wait_started(server, 30.0)
            ready.set()
    finally:
        ready.clear()
        sock.close()
