"""Where the listening adapters (OsmAnd HTTP, NMEA) put their fixes: onto the broker, as
each device's own telemetry.

The adapters do not index anything themselves: a fix is published on
``am/v1/<agency>/dev/<device>/telemetry`` as the msgpack the device would send, and the
engine's intake takes it from there (its checks, its per-device rate, its dead letters),
whichever engine replica runs and wherever it runs. What the adapters refuse before
that (a bad checksum, a wrong password, a source over its rate) is counted here by
reason and dead-lettered on ``deadletter/<reason>`` like the engine's own refusals.

Bounded throughout: one queue of :attr:`FixSink.queue` telemetry messages (beyond it
the newest is dropped and counted), a token bucket per device (``rate_per_s``,
``burst``; devices forgotten beyond :data:`MAX_SOURCES`), dead letters at most
``deadletters_per_s``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from actimesh.adapters.fix import Fix, telemetry_of
from actimesh.broker.codec import deadletter
from actimesh.broker.topics import Topics
from actimesh.broker.transport import Outbound
from actimesh.errors import BrokerError, PayloadError

__all__ = ["MAX_SOURCES", "AdapterStats", "FixSink"]

log = logging.getLogger(__name__)

#: Per-device rate buckets kept at most.
MAX_SOURCES = 100_000


@dataclass
class AdapterStats:
    """What the adapters did, by protocol where it matters."""

    #: Fixes accepted and queued for the broker, by protocol.
    accepted: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Fixes published on the broker.
    published: int = 0
    #: Refused input by reason (``bad_checksum``, ``unauthorized``, ``over_rate`` …).
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Fixes dropped because the queue was full or the broker refused them.
    dropped: int = 0
    #: Dead letters not sent because of the dead-letter rate.
    deadletters_suppressed: int = 0


@dataclass
class _Bucket:
    tokens: float
    at: float


class FixSink:
    """Queues fixes as telemetry and publishes them on ``out``. ``await run()`` in the
    adapters' task group, beside ``out.run()``."""

    def __init__(
        self,
        *,
        out: Outbound,
        topics: Topics,
        clock: Callable[[], float],
        rate_per_s: float = 2.0,
        burst: float = 10.0,
        queue: int = 10_000,
        deadletters_per_s: float = 10.0,
    ) -> None:
        self._out = out
        self._topics = topics
        self._clock = clock
        self._rate = rate_per_s
        self._burst = burst
        self._buckets: dict[str, _Bucket] = {}
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=queue)
        self._dl_rate = deadletters_per_s
        self._dl_tokens = deadletters_per_s
        self._dl_at = clock()
        self.stats = AdapterStats()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def admit(self, device_id: str) -> bool:
        """Take one of ``device_id``'s tokens; False (counted) when it has none."""
        now = self._clock()
        bucket = self._buckets.get(device_id)
        if bucket is None:
            if len(self._buckets) >= MAX_SOURCES:
                self._buckets.clear()  # bounded: a forgotten device starts full again
            bucket = self._buckets[device_id] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def submit(self, protocol: str, device_id: str, fix: Fix, origin: str) -> bool:
        """Queue ``fix`` as ``device_id``'s telemetry. False when refused (over the
        device's rate, not a valid telemetry: dead-lettered) or dropped (queue full)."""
        if not self.admit(device_id):
            detail = f"{device_id} sent more than {self._rate:g} fixes a second"
            self.reject(origin, b"", PayloadError("over_rate", detail))
            return False
        try:
            payload = telemetry_of(fix)
        except PayloadError as exc:
            self.reject(origin, b"", exc)
            return False
        try:
            self._queue.put_nowait((self._topics.telemetry(device_id), payload))
        except asyncio.QueueFull:
            self.stats.dropped += 1
            return False
        self.stats.accepted[protocol] += 1
        return True

    def reject(self, origin: str, payload: bytes, exc: PayloadError) -> None:
        """Count refused input and dead-letter it (within the dead-letter rate).
        ``origin`` says where it came from, e.g. ``nmea://car-12@10.0.0.7``."""
        self.stats.rejected[exc.reason] += 1
        now = self._clock()
        self._dl_tokens = min(self._dl_rate, self._dl_tokens + (now - self._dl_at) * self._dl_rate)
        self._dl_at = now
        if self._dl_tokens < 1.0:
            self.stats.deadletters_suppressed += 1
            return
        self._dl_tokens -= 1.0
        log.warning("refused %s: %s", origin, exc)
        letter = deadletter(now, origin, payload, exc)
        try:
            self._out.publish_nowait(self._topics.deadletter(exc.reason), letter, qos=0)
        except BrokerError:
            log.warning("dead letter for %s not published (no broker connection)", origin)

    async def run(self) -> None:
        """Publish queued telemetry until cancelled (QoS 0, as devices do: a newer fix
        replaces a lost one)."""
        while True:
            topic, payload = await self._queue.get()
            try:
                await self._out.publish(topic, payload, qos=0)
            except BrokerError as exc:
                self.stats.dropped += 1
                log.warning("telemetry on %s not published: %s", topic, exc)
            else:
                self.stats.published += 1
