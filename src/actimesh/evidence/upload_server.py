"""The upload API on a listener of its own, apart from the dispatch's.

Cameras dock on the fleet's network, not the dispatchers': the upload API listens on its
own port (``[evidence] port``) with its own TLS, connection limits and slow-client
timeouts, all from :mod:`actimesh.listener`.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from actimesh import listener
from actimesh.errors import ActimeshError

__all__ = ["UploadServer"]


class UploadServer:
    """The upload API on its own listener. Create in the running loop; ``await run()``."""

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str,
        port: int,
        ssl_certfile: Path | None = None,
        ssl_keyfile: Path | None = None,
        client_timeout_s: float = 30.0,
        max_clients: int = 256,
    ) -> None:
        # uvicorn answers 503 to everyone beyond ``limit_concurrency``; the last quarter
        # of it (at least 4) is kept for devices that send credentials.
        self.gauge = listener.ConnectionGauge(max_clients, max(4, max_clients // 4))
        self.gate = listener.CredentialsFirst(app, self.gauge)
        self.app = app
        self.host = host
        self.port = port
        self.client_timeout_s = client_timeout_s
        self.tls: dict[str, Any] = (
            {}
            if ssl_certfile is None or ssl_keyfile is None
            else {"ssl_certfile": str(ssl_certfile), "ssl_keyfile": str(ssl_keyfile)}
        )
        self.ready = asyncio.Event()
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        if self.address is None:
            raise ActimeshError("the evidence upload server is not listening yet")
        return listener.url(self.address, tls=bool(self.tls))

    def _bind(self) -> socket.socket:
        sock = listener.bind(
            self.host, self.port, what="the evidence upload API", fix="set [evidence] port"
        )
        self.address = listener.address(sock)
        return sock

    async def run(self) -> None:
        """Serve until cancelled; ``ready`` is set once it accepts connections."""
        sock = self._bind()
        server = listener.hardened_server(
            self.gate, client_timeout_s=self.client_timeout_s, gauge=self.gauge, tls=self.tls
        )
        await listener.serve_until_cancelled(
            server, sock, self.ready, what="evidence upload server", name="evidence-http"
        )
