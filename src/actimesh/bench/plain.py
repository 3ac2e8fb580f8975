"""The plain subscriber: what the broker alone delivers, with nothing done per message.

It subscribes to the plain agency's telemetry and only counts PUBLISH frames (it finds
each frame's length and moves on: no topic, no payload, no objects per message), so
its own cost is far below the broker's and the rate it sees is the broker's delivery
rate on this machine. It reads the way the engine's intake does (after each read it
leaves the socket alone for 2 ms, so reads are large): a subscriber that woke for every
packet would make the broker write in small pieces and lower the very limit it is
meant to show. The orchestrator floods the plain agency and then the engine's
agency with the same frames from the same publisher and compares the two.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Self

from actimesh.broker import wire
from actimesh.errors import BrokerError
from actimesh.security.registry import Credentials

__all__ = ["PlainSubscriber"]

_MAX_PACKET = 2 * 1024 * 1024
_COALESCE_S = 0.002  # as StreamSubscriber.coalesce_s


class PlainSubscriber(asyncio.BufferedProtocol):
    """Counts PUBLISH frames on one subscription; ``arm`` and ``collect`` a window."""

    def __init__(self) -> None:
        self._buf = bytearray(1024 * 1024)
        self._start = 0
        self._end = 0
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.expected = 0
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[tuple[int, ...]] = loop.create_future()
        self.done: asyncio.Event = asyncio.Event()
        self.lost: asyncio.Future[None] = loop.create_future()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        topic_filter: str,
        timeout: float = 5.0,
        login: Credentials | None = None,
    ) -> PlainSubscriber:
        async with asyncio.timeout(timeout):
            transport, proto = await cls._open(host, port)
            transport.write(
                wire.connect_packet(
                    "bench-plain",
                    keepalive_s=0,
                    username=None if login is None else login.username,
                    password=None if login is None else login.password,
                )
            )
            if await proto.connack != 0:
                raise BrokerError("the broker refused the plain subscriber")
            transport.write(wire.subscribe_packet(1, (topic_filter,), 0))
            codes = await proto.suback
        if not codes or codes[0] >= 0x80:
            raise BrokerError(f"subscription to {topic_filter} refused")
        return proto

    @classmethod
    async def _open(cls, host: str, port: int) -> tuple[asyncio.Transport, Self]:
        """A TCP connection without Nagle's delay, this protocol on it."""
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_connection(cls, host, port)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return transport, proto

    def arm(self, expected: int) -> None:
        self.count, self.first, self.last, self.expected = 0, 0.0, 0.0, expected
        self.done.clear()

    async def collect(self, idle_s: float, timeout_s: float) -> dict[str, Any]:
        """Wait until ``expected`` frames arrived or none for ``idle_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        seen = -1
        while not self.done.is_set() and loop.time() < deadline:
            if self.count == seen and self.count > 0:
                break  # idle: whatever was lost is lost
            seen = self.count
            try:
                async with asyncio.timeout(idle_s):
                    await self.done.wait()
            except TimeoutError:
                pass
        return {"count": self.count, "first": self.first, "last": self.last}

    # -------------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, _sizehint: int) -> memoryview:
        if len(self._buf) - self._end < 256 * 1024:
            pending = self._end - self._start
            self._buf[:pending] = self._buf[self._start : self._end]
            self._start, self._end = 0, pending
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        self._coalesce()
        buf, pos, end = self._buf, self._start, self._end
        counted = 0
        while (found := wire.next_packet(buf, pos, end, _MAX_PACKET)) is not None:
            first, body, pos = found
            if first >> 4 == wire.PUBLISH:
                counted += 1
            elif first >> 4 == wire.CONNACK and not self.connack.done():
                self.connack.set_result(wire.connack_reason(buf[body:pos]))
            elif first >> 4 == wire.SUBACK and not self.suback.done():
                self.suback.set_result(wire.suback_reasons(bytes(buf[body:pos]))[1])
        self._start = pos
        self._counted(counted)

    def _coalesce(self) -> None:
        """Leave the socket alone for a moment after a read, so the next read is large."""
        if self.transport is not None:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(_COALESCE_S, self.transport.resume_reading)

    def _counted(self, counted: int) -> None:
        """Note ``counted`` more messages arrived now; done once ``expected`` are in."""
        if counted:
            now = time.perf_counter()
            if self.count == 0:
                self.first = now
            self.count += counted
            self.last = now
            if self.expected and self.count >= self.expected:
                self.done.set()

    def connection_lost(self, _exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.done.set()
