"""The engine's intake of device messages: QoS 1, read at the broker's speed, fair.

One camera's credentials must not be enough to delay another officer's trigger. Every
message of one connection arrives in the order the broker sent it, so a device that
floods trigger events, presence or acknowledgements puts its flood in front of every
other device's messages on the engine's link. Read through aiomqtt (about 9,000 msg/s
here) a flood of 20,000 msg/s grows a backlog without end: the broker's queue for the
engine fills, and at its limit the broker drops what comes next, another officer's
TASER draw included (measured: docs/SECURITY.md, "Floods").

:class:`ControlSubscriber` is therefore a lean reader like the telemetry intake
(:mod:`actimesh.broker.ingest`), for QoS 1, with two more steps:

* **Admission at read time.** Each PUBLISH is shown to ``admit(topic, payload)`` while
  the socket buffer is parsed. What it refuses (a device over its budget) is
  acknowledged in the same pass and costs nothing more: the flood is drained as fast
  as the broker delivers it, and never queues.
* **One queue per source, served in turn.** What is admitted waits in its source's
  queue (``admit`` names the source: the device id); batches take one message from
  each source with something waiting, round robin. A device's burst within its budget
  therefore delays another device's message by one message, not by the burst.

Messages are acknowledged by their handler (:meth:`Delivery.ack`), e.g. once durable;
the PUBACKs of one event-loop turn leave in one write. The session is persistent when
``settings.session_expiry_s`` is set: what arrives while the engine is away waits in
the broker and is sent again, with anything not acknowledged, on the next connection.
The backlog is bounded: QoS 1 messages by the Receive Maximum the broker must respect,
QoS 0 ones by ``settings.max_queued_incoming`` (beyond it the newest is dropped and
counted).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Protocol

from actimesh.broker import wire
from actimesh.broker.client import LinkSettings
from actimesh.broker.ingest import LeanSubscriber, _Connection

__all__ = ["Acker", "Admit", "ControlSubscriber", "Delivery"]

log = logging.getLogger(__name__)

#: Decides at read time: the message's source (its queue) to keep it, None to refuse it
#: (acknowledged at once and dropped). Runs inside the socket's read callback: it must
#: be quick, must not block, and must not raise.
Admit = Callable[[bytes, bytes], Hashable | None]


class Acker(Protocol):
    """Whatever acknowledges a delivery to its sender (a connection, or a test's fake)."""

    def puback(self, packet_id: int) -> bool:
        """Acknowledge ``packet_id``; False if that is no longer possible."""
        ...


class Delivery:
    """One received message: ``topic``, ``payload``, and how to acknowledge it.

    A QoS 1 message belongs to the connection that carried it: after a reconnect the
    broker sends it again, and :meth:`ack` on the old copy returns False.
    """

    __slots__ = ("_acker", "packet_id", "payload", "topic")

    def __init__(
        self, topic: str, payload: bytes, packet_id: int = 0, acker: Acker | None = None
    ) -> None:
        self.topic = topic
        self.payload = payload
        #: 0 for QoS 0: nothing to acknowledge.
        self.packet_id = packet_id
        self._acker = acker

    def ack(self) -> bool:
        """Acknowledge the message (QoS 1); False if there is nothing to acknowledge or
        its connection is gone (it will come again; handlers dedupe)."""
        if not self.packet_id or self._acker is None:
            return False
        return self._acker.puback(self.packet_id)

    def __repr__(self) -> str:
        return f"Delivery({self.topic!r}, {len(self.payload)} bytes, id {self.packet_id})"


class ControlSubscriber(LeanSubscriber[Delivery]):
    """A reconnecting QoS 1 subscriber with admission at read time and fair batches.

    ``handler`` gets batches of :class:`Delivery` and acknowledges each (a refused or
    handled message at once, an event once durable). ``admit`` is described above; by
    default everything is admitted under its topic. ``receive_maximum`` caps the QoS 1
    messages the broker has in flight to us, acknowledged or not, which bounds the
    backlog; a handler that holds more than that many unacknowledged stops the link.
    """

    def __init__(
        self,
        settings: LinkSettings,
        handler: Callable[[Sequence[Delivery]], Awaitable[None]],
        *,
        admit: Admit | None = None,
        receive_maximum: int = 0xFFFF,
        batch_size: int = 8,
        read_size: int = 32 * 1024,
    ) -> None:
        if not 1 <= receive_maximum <= 0xFFFF:
            raise ValueError("receive_maximum must be 1 to 65,535")
        # No coalescing: a trigger event must not wait for company.
        super().__init__(
            settings, handler, batch_size=batch_size, read_size=read_size, coalesce_s=0.0
        )
        self.receive_maximum: int | None = receive_maximum
        self._admit = admit
        # source -> its admitted messages; ``_turns`` holds each source with any, once.
        self._queues: dict[Hashable, collections.deque[Delivery]] = {}
        self._turns: collections.deque[Hashable] = collections.deque()
        self._backlog = 0
        self._qos0 = 0
        #: ``admit`` raised: the message was kept under its topic and counted here.
        self.admit_errors = 0

    @property
    def backlog(self) -> int:
        return self._backlog

    def _take(self, conn: _Connection, buf: bytearray, first: int, start: int, end: int) -> None:
        topic, payload, packet_id = wire.read_publish(buf, first, start, end)
        source: Hashable | None = topic
        if self._admit is not None:
            try:
                source = self._admit(topic, payload)
            except Exception:  # never in the read callback; the handler checks it again
                self.admit_errors += 1
                log.exception("%s: admit failed on %r", self.settings.client_id, topic[:128])
                source = topic
        if source is None:
            self.stats.refused += 1
            if packet_id:
                conn.puback(packet_id)
            return
        if not packet_id:
            if self._qos0 >= self.settings.max_queued_incoming:
                self.stats.dropped_incoming += 1
                return
            self._qos0 += 1
        queue = self._queues.get(source)
        if queue is None:
            queue = self._queues[source] = collections.deque()
            self._turns.append(source)
        queue.append(Delivery(topic.decode(errors="replace"), payload, packet_id, conn))
        self._backlog += 1

    def _next_batch(self) -> list[Delivery]:
        queues, turns = self._queues, self._turns
        batch: list[Delivery] = []
        while turns and len(batch) < self.batch_size:
            source = turns.popleft()
            queue = queues[source]
            item = queue.popleft()
            if not item.packet_id:
                self._qos0 -= 1
            batch.append(item)
            if queue:
                turns.append(source)  # its next message waits for everyone else's turn
            else:
                del queues[source]
        self._backlog -= len(batch)
        return batch

    @staticmethod
    def _topic(item: Delivery) -> str:
        return item.topic
