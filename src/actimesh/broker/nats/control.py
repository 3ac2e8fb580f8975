"""At-least-once device messages for a service, from the MQTT listener's QoS 1 store
through durable pull consumers (shared by the replicas of a share group), admitted at
read time and served one source at a time (see the package docstring)."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from actimesh.broker.client import Subscription
from actimesh.broker.intake import Admit, Delivery
from actimesh.broker.nats._link import Link
from actimesh.broker.nats._protocol import (
    JS_API,
    NS,
    STREAM_NOT_FOUND,
    hand_over,
    js_api,
    pub,
    status_of,
    write_pending,
)
from actimesh.broker.nats.retained import read_retained
from actimesh.broker.nats.subjects import (
    MQTT_QOS1_PREFIX,
    MQTT_QOS1_STREAM,
    jetstream_name,
    subject_to_topic,
    topic_to_subject,
)
from actimesh.broker.transport import ControlHandler
from actimesh.errors import BrokerError

if TYPE_CHECKING:
    from actimesh.broker.nats.transport import NatsTransport

__all__ = ["NatsControl"]

log = logging.getLogger(__name__)


class _Pull:
    """One subscription of a control link: its durable consumer on the MQTT listener's
    QoS 1 store."""

    def __init__(
        self, link: NatsControl, subscription: Subscription, session_expiry_s: int
    ) -> None:
        topic_filter, group = subscription.topic, ""
        if topic_filter.startswith("$share/"):
            _, group, topic_filter = topic_filter.split("/", 2)
        self.subject = MQTT_QOS1_PREFIX + topic_to_subject(topic_filter)
        #: Unshared: read the retained messages too when subscribing, as MQTT does.
        self.retained = None if group else topic_filter
        self.stream = MQTT_QOS1_STREAM
        self.durable = jetstream_name(group or link.name, topic_filter)
        t = link.transport
        config: dict[str, Any] = {
            "durable_name": self.durable,
            "filter_subject": self.subject,
            "ack_policy": "explicit",
            "ack_wait": int(t.ack_wait_s * NS),
            "max_ack_pending": t.max_ack_pending,
            "max_deliver": -1,
        }
        if group:
            # Shared by every replica of the group, for as long as it exists.
            config["deliver_policy"] = "all"
        else:
            # The last message of each subject first: what retained messages give.
            config["deliver_policy"] = "last_per_subject"
            config["inactive_threshold"] = max(session_expiry_s, 5) * NS
        self.config = config
        self.inbox = ""
        self.done = asyncio.Event()
        self.asked = 0
        self.received = 0
        #: How the last pull request ended (a status code), None if by its batch.
        self.status: str | None = None
        #: Create (or find) the consumer again before the next pull.
        self.stale = True

    def asking(self, batch: int) -> None:
        """A new pull request for ``batch`` messages is about to go out."""
        self.done.clear()
        self.asked, self.received, self.status = batch, 0, None


class NatsControl(Link):
    """At-least-once messages from JetStream, each acknowledged by the handler."""

    def __init__(
        self,
        transport: NatsTransport,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: ControlHandler,
        *,
        admit: Admit,
        session_expiry_s: int = 0,
        batch_size: int = 8,
    ) -> None:
        super().__init__(transport, name)
        self.transport = transport
        self._handler = handler
        self._admit = admit
        self.batch_size = batch_size
        self._pulls = [_Pull(self, s, session_expiry_s) for s in subscriptions]
        self._queues: dict[Hashable, collections.deque[Delivery]] = {}
        self._turns: collections.deque[Hashable] = collections.deque()
        self._backlog = 0
        self._waiting = asyncio.Event()
        self._unacked: dict[int, str] = {}
        self._next_id = 0
        self._flush_soon = False

    @property
    def backlog(self) -> int:
        return self._backlog

    @property
    def consumers(self) -> list[tuple[str, str]]:
        """``(stream, durable consumer)`` of each subscription."""
        return [(p.stream, p.durable) for p in self._pulls]

    async def _create(self, nc: NatsClient, pull: _Pull) -> None:
        """Create the consumer, or find it as it is (the same config): at start, and
        again when the server says it is gone (its inactivity limit passed while this
        link was away) or after a reconnection."""
        body = {"stream_name": pull.stream, "config": pull.config}
        api = f"CONSUMER.CREATE.{pull.stream}.{pull.durable}"
        answer = await js_api(nc, api, body, self.transport.timeout_s)
        error = answer.get("error")
        if error and error.get("err_code") == STREAM_NOT_FOUND:
            raise BrokerError(
                f"no {pull.stream} stream yet: it is made when the first MQTT client "
                "connects to the cluster (NatsCluster.start does)"
            )
        if error:
            raise BrokerError(f"consumer {pull.durable} not created: {error.get('description')}")
        pull.stale = False

    async def _setup(self, nc: NatsClient) -> None:
        for pull in self._pulls:
            await self._create(nc, pull)
            if not pull.inbox:
                pull.inbox = nc.new_inbox()
                await nc.subscribe(pull.inbox, cb=self._taker(pull))
        for pull in self._pulls:
            if pull.retained is not None:
                # Read once the consumer exists, so nothing falls between the two: what
                # was retained before it (a device's presence from before this service
                # first started) is not in the QoS 1 store for it.
                found = await read_retained(nc, pull.retained, timeout=self.transport.timeout_s)
                for topic, payload in found:
                    self._queue(topic, payload, None)

    async def _on_reconnected(self) -> None:
        await super()._on_reconnected()
        for pull in self._pulls:
            pull.stale = True

    async def _serve(self, nc: NatsClient) -> None:
        backoff = 0.1
        while True:
            try:
                await self._setup(nc)
                break
            except (BrokerError, nats.errors.Error) as exc:
                self._error(str(exc))
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, 2.0)
        self._ready.set()
        async with asyncio.TaskGroup() as tg:
            for pull in self._pulls:
                tg.create_task(self._pulling(nc, pull), name=f"{self._name}-{pull.durable}")
            await self._handing()

    async def _pulling(self, nc: NatsClient, pull: _Pull) -> None:
        """Keep one pull request outstanding; ask again when it is served or expired
        (or lost with a connection: after its expiry and a margin)."""
        t = self.transport
        body = {"batch": t.pull_batch, "expires": int(t.pull_expires_s * NS)}
        api = f"{JS_API}CONSUMER.MSG.NEXT.{pull.stream}.{pull.durable}"
        backoff = 0.1
        while True:
            await self._up.wait()
            if pull.stale:
                try:
                    await self._create(nc, pull)
                except (BrokerError, nats.errors.Error) as exc:
                    self._error(str(exc))
                    await asyncio.sleep(backoff * (1 + random.random()))
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.1
            pull.asking(t.pull_batch)
            hand_over(nc, pub(api, json.dumps(body).encode(), reply=pull.inbox))
            write_pending(nc)
            try:
                async with asyncio.timeout(t.pull_expires_s + t.timeout_s):
                    await pull.done.wait()
            except TimeoutError:
                pass  # the request or its end was lost: ask again
            if pull.status not in (None, "408"):  # 408: expired, the usual end
                # Gone, leader changed, or no JetStream for a moment: make sure the
                # consumer exists before asking again.
                self._error(f"{pull.durable}: pull ended with status {pull.status}")
                pull.stale = True

    def _taker(self, pull: _Pull) -> Any:
        async def take(msg: Msg) -> None:
            status = status_of(msg)
            if status is not None:
                if status != "100":
                    pull.status = status
                    pull.done.set()  # expired, or the server ended the request
                return
            pull.received += 1
            if pull.received >= pull.asked:
                pull.done.set()
            self._take(msg)

        return take

    def _take(self, msg: Msg) -> None:
        topic = subject_to_topic(msg.subject.removeprefix(MQTT_QOS1_PREFIX))
        self._queue(topic, msg.data, msg.reply)

    def _queue(self, topic: str, payload: bytes, reply: str | None) -> None:
        """Admit one message and queue it under its source; ``reply``: where its
        acknowledgement goes (None: a retained message, nothing to acknowledge)."""
        self._stats.received += 1
        topic_bytes = topic.encode()
        try:
            source: Hashable | None = self._admit(topic_bytes, payload)
        except Exception:  # never here; the handler checks it again
            log.exception("%s: admit failed on %r", self._name, topic[:128])
            source = topic
        self._next_id += 1
        packet_id = self._next_id
        if reply is not None:
            self._unacked[packet_id] = reply
        if source is None:
            self._stats.refused += 1
            self.puback(packet_id)
            return
        queue = self._queues.get(source)
        if queue is None:
            queue = self._queues[source] = collections.deque()
            self._turns.append(source)
        queue.append(Delivery(topic, payload, packet_id, self))
        self._backlog += 1
        self._waiting.set()

    def _next_batch(self) -> list[Delivery]:
        batch: list[Delivery] = []
        while self._turns and len(batch) < self.batch_size:
            source = self._turns.popleft()
            queue = self._queues[source]
            batch.append(queue.popleft())
            if queue:
                self._turns.append(source)  # its next waits for everyone else's turn
            else:
                del self._queues[source]
        self._backlog -= len(batch)
        return batch

    async def _handing(self) -> None:
        while True:
            await self._waiting.wait()
            batch = self._next_batch()
            if not self._turns:
                self._waiting.clear()
            if not batch:
                continue
            try:
                await self._handler(batch)
            except Exception:  # one batch's failure is not the next one's (not Cancelled)
                self._stats.handler_errors += 1
                log.exception("%s: handler failed", self._name)

    def puback(self, packet_id: int) -> bool:
        """Acknowledge a delivery to JetStream (the :class:`Acker` of this link)."""
        reply = self._unacked.pop(packet_id, None)
        nc = self._nc
        if reply is None or nc is None or nc.is_closed:
            return False
        hand_over(nc, pub(reply, b"+ACK"))
        if not self._flush_soon:  # the acks of one loop turn leave in one write
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush_acks)
        return True

    def _flush_acks(self) -> None:
        self._flush_soon = False
        if self._nc is not None:
            write_pending(self._nc)
