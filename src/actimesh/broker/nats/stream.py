"""Best-effort messages (telemetry) on core NATS subjects: QoS 0, a bounded queue, the
newest dropped and counted when it is full.

A shared subscription (``$share/<group>/<filter>``) becomes a subscription in the queue
group ``<group>``: the server hands each message to one member of the group, as an MQTT
broker does with a shared subscription, and a member that goes away leaves its share to
the others. (Geographic partitions use it for the relay's share of raw telemetry.)"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from actimesh.broker.client import Subscription
from actimesh.broker.ingest import Publish
from actimesh.broker.nats._link import Link
from actimesh.broker.nats._protocol import round_trip
from actimesh.broker.nats.subjects import subject_to_topic, topic_to_subject
from actimesh.broker.transport import StreamHandler

if TYPE_CHECKING:
    from actimesh.broker.nats.transport import NatsTransport

__all__ = ["NatsStream"]

log = logging.getLogger(__name__)


def _subject_and_group(topic_filter: str) -> tuple[str, str]:
    """The NATS subject and queue group of an MQTT filter, shared or not."""
    group = ""
    if topic_filter.startswith("$share/"):
        _, group, topic_filter = topic_filter.split("/", 2)
    return topic_to_subject(topic_filter), group


class NatsStream(Link):
    """Best-effort messages on core NATS, in batches, with a bounded queue."""

    def __init__(
        self,
        transport: NatsTransport,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: StreamHandler,
        *,
        max_queued: int,
        batch_size: int = 256,
    ) -> None:
        super().__init__(transport, name)
        shared = [_subject_and_group(s.topic) for s in subscriptions]
        self.subjects = [subject for subject, _group in shared]
        #: The queue group of each shared subscription's subject.
        self.queue_groups = {subject: group for subject, group in shared if group}
        self.max_queued = max_queued
        self.batch_size = batch_size
        self._handler = handler
        self._queue: collections.deque[Publish] = collections.deque()
        self._waiting = asyncio.Event()

    async def _take(self, msg: Msg) -> None:
        self._stats.received += 1
        if len(self._queue) >= self.max_queued:
            self._stats.dropped_incoming += 1
            return
        self._queue.append((subject_to_topic(msg.subject).encode(), msg.data))
        self._waiting.set()

    async def _serve(self, nc: NatsClient) -> None:
        for subject in self.subjects:
            await nc.subscribe(subject, queue=self.queue_groups.get(subject, ""), cb=self._take)
        await round_trip(nc, self._transport.timeout_s)  # subscribed at the server
        self._ready.set()
        queue = self._queue
        while True:
            await self._waiting.wait()
            batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            if not queue:
                self._waiting.clear()
            try:
                await self._handler(batch)
            except Exception:  # one batch's failure is not the next one's (not Cancelled)
                self._stats.handler_errors += 1
                log.exception("%s: handler failed", self._name)
