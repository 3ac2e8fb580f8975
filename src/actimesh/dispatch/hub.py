"""Fan-out of encoded frames to WebSocket and Server-Sent-Events clients.

Each frame is encoded once, whatever the number of clients. Every client has a bounded
queue; a client that falls that far behind is cut off (its queue gets a ``None``) and
counted, rather than letting its backlog grow or holding the others back. It reconnects
and starts again from a fresh snapshot, which is what it needs anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Hub", "HubFullError", "HubStats", "Subscriber"]


T = TypeVar("T")


class HubFullError(Exception):
    """No room for another client."""


@dataclass(slots=True)
class HubStats:
    frames: int = 0
    clients_dropped: int = 0
    clients_refused: int = 0


class Subscriber(Generic[T]):
    """One client's queue. ``None`` means: stop (too slow, or the service is closing)."""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[T | None] = asyncio.Queue(maxsize=maxsize)
        self.closed = False

    async def get(self) -> T | None:
        return await self.queue.get()

    def cut_off(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Make room for the sentinel: the backlog is worthless now.
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Hub(Generic[T]):
    """Broadcasts frames (encoded once) to the subscribers of one channel."""

    def __init__(self, *, queue_size: int = 64, max_clients: int = 256) -> None:
        self.queue_size = queue_size
        self.max_clients = max_clients
        self.stats = HubStats()
        self._subscribers: set[Subscriber[T]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._subscribers)

    @asynccontextmanager
    async def subscribe(self, first: T | None = None) -> AsyncIterator[Subscriber[T]]:
        """A subscription for the duration of the block; ``first`` is queued before any
        broadcast (take the snapshot and subscribe with no await in between)."""
        if self._closed or len(self._subscribers) >= self.max_clients:
            self.stats.clients_refused += 1
            raise HubFullError(f"{len(self._subscribers)} clients already connected")
        sub: Subscriber[T] = Subscriber(self.queue_size)
        if first is not None:
            sub.queue.put_nowait(first)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    def publish(self, frame: T) -> None:
        """Queue ``frame`` for every subscriber; cut off those whose queue is full."""
        self.stats.frames += 1
        for sub in list(self._subscribers):
            if sub.closed:
                continue
            try:
                sub.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self.stats.clients_dropped += 1
                sub.cut_off()

    def close(self) -> None:
        """Tell every subscriber to stop (service shutdown); refuse new ones."""
        self._closed = True
        for sub in list(self._subscribers):
            sub.cut_off()
