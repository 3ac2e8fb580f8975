"""What every NATS link has: one nats-py connection for the life of the link, its
counters, and "connected" as the transport seam means it (set up and usable)."""

from __future__ import annotations

import abc
import asyncio
import logging
import random
from typing import TYPE_CHECKING

import nats
import nats.errors
from nats.aio.client import Client as NatsClient

from actimesh.broker.client import LinkStats
from actimesh.errors import BrokerError

if TYPE_CHECKING:
    from actimesh.broker.nats.transport import NatsTransport

__all__ = ["Link"]

log = logging.getLogger(__name__)

#: A node that stops answering is left once 3 pings, one every 2 s, go unanswered.
_PING_INTERVAL_S = 2
_MAX_OUTSTANDING_PINGS = 3


class Link(abc.ABC):
    """One nats-py connection for the life of a link: connected (and reconnected by
    nats-py) in :meth:`run`, with what the link sets up on it, until cancelled."""

    def __init__(self, transport: NatsTransport, name: str) -> None:
        self._transport = transport
        self._name = name
        self._stats = LinkStats()
        self._ready = asyncio.Event()
        self._nc: NatsClient | None = None
        #: Set on every reconnection, for links that redo something then.
        self._reconnected = asyncio.Event()
        #: Set while the connection is up (nats-py reconnects in between).
        self._up = asyncio.Event()

    @property
    def name(self) -> str:
        return self._name

    @property
    def stats(self) -> LinkStats:
        return self._stats

    @property
    def connected(self) -> bool:
        nc = self._nc
        return self._ready.is_set() and nc is not None and nc.is_connected

    async def wait_connected(self, timeout: float | None = None) -> None:
        wait = self._transport.timeout_s if timeout is None else timeout
        try:
            async with asyncio.timeout(wait):
                await self._ready.wait()
        except TimeoutError as exc:
            raise BrokerError(
                f"{self._name}: no connection to NATS at {', '.join(self._transport.servers)} "
                f"after {wait:.0f} s ({self._stats.last_error or 'not reachable'})"
            ) from exc

    def _error(self, what: str) -> None:
        self._stats.last_error = what
        self._stats.errors = [*self._stats.errors[-9:], what]

    async def _connect(self) -> NatsClient:
        backoff = 0.1
        while True:
            try:
                return await nats.connect(
                    self._transport.servers,
                    name=self._name,
                    connect_timeout=self._transport.timeout_s,
                    reconnect_time_wait=0.25,
                    max_reconnect_attempts=-1,
                    # The configured order, as the telemetry link (stream.py) takes it:
                    # nats-py's shuffle put an engine's trigger link on one node and its
                    # telemetry on another, so a node cut off the network could silence
                    # an engine's telemetry while it went on taking triggers, judging
                    # them on fixes it had stopped receiving. Together, the engine loses
                    # both and the other engine takes the triggers.
                    dont_randomize=True,
                    # A node cut off the network (or frozen) keeps the socket open:
                    # only unanswered pings tell, after ping_interval x max pings
                    # (nats-py's default, 2 min x 2, left an engine deaf for 4 min).
                    ping_interval=_PING_INTERVAL_S,
                    max_outstanding_pings=_MAX_OUTSTANDING_PINGS,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    user=self._transport.user,
                    password=self._transport.password,
                    tls=None if self._transport.tls is None else self._transport.tls.context(),
                )
            except (nats.errors.Error, OSError) as exc:
                self._error(f"connect failed: {exc!r}")
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, 5.0)

    async def _on_error(self, exc: Exception) -> None:
        self._error(repr(exc))
        log.warning("%s: %r", self._name, exc)

    async def _on_disconnected(self) -> None:
        self._stats.disconnects += 1
        self._up.clear()

    async def _on_reconnected(self) -> None:
        self._stats.connects += 1
        self._up.set()
        self._reconnected.set()

    async def run(self) -> None:
        """Connect, set up, serve until cancelled; nats-py reconnects in between."""
        nc = self._nc = await self._connect()
        self._stats.connects += 1
        self._up.set()
        try:
            await self._serve(nc)
        finally:
            self._ready.clear()
            try:
                await self._closing(nc)
            finally:
                await nc.close()

    @abc.abstractmethod
    async def _serve(self, nc: NatsClient) -> None:
        """Set the link up on ``nc`` and serve it until cancelled."""

    async def _closing(self, nc: NatsClient) -> None:
        del nc  # nothing to say before closing, unless a link has something
