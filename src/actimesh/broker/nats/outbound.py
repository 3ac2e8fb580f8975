"""What a service publishes on NATS, so that MQTT subscribers on every node receive it:
a QoS 1 message is stored where the MQTT listener keeps its own QoS 1 messages (see the
package docstring), and confirmed by that store.

"No responders" (503) to a QoS 1 store means one of two things, and they need opposite
answers. Before any MQTT client has connected, the store does not exist: no session
could hold the message, and it is accepted, as a broker accepts a message nobody
subscribes to. Just after a node's loss, the store exists but has no leader while the
cluster elects one (about 5 s): taking that 503 as "accepted" lost activation records
on the bus. So a 503 is sent again every :data:`_AGAIN_S` until the store answers or
the message's deadline passes; it is taken as "no store" only if every answer was 503
*and* this link has never had a message stored (``stored_seen``), and once the store has
confirmed anything a deadline of 503s is a failure the caller sees (``BrokerError``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from actimesh.broker.client import InFlight, Will
from actimesh.broker.nats._link import Link
from actimesh.broker.nats._protocol import QOS1_HEADERS, hand_over, pub, status_of, write_pending
from actimesh.broker.nats.subjects import MQTT_QOS1_PREFIX, topic_to_subject
from actimesh.broker.transport import OnConnect
from actimesh.errors import BrokerError

if TYPE_CHECKING:
    from actimesh.broker.nats.transport import NatsTransport

__all__ = ["NatsOutbound"]

log = logging.getLogger(__name__)

#: How long after a 503 ("no responders") a QoS 1 message is stored again.
_AGAIN_S = 0.25


class NatsOutbound(Link):
    """What a service publishes: to MQTT subscribers on every node (see the module)."""

    def __init__(
        self,
        transport: NatsTransport,
        name: str,
        will: Will | None = None,
        on_connect: OnConnect | None = None,
    ) -> None:
        super().__init__(transport, name)
        #: Published by this link itself when it is stopped: NATS has no will.
        self.will = will
        self._on_connect = on_connect
        self._inbox = ""
        self._waiting: dict[str, asyncio.Future[None]] = {}
        #: What each waiting QoS 1 message is, to store it again after a 503.
        self._bodies: dict[str, tuple[str, bytes, float]] = {}
        #: Tokens answered 503, to be stored again by :meth:`_again`.
        self._unanswered: list[str] = []
        self._wake = asyncio.Event()
        self._next = 0
        #: Set once the store has confirmed a message: a 503 is then a store without
        #: a leader, never a store that does not exist (see the module docstring).
        self.stored_seen = False
        #: Messages stored again after a 503.
        self.stored_again = 0

    async def _serve(self, nc: NatsClient) -> None:
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._again(nc), name=f"{self._name}-again")
            self._ready.set()
            await self._follow(nc)

    async def _follow(self, nc: NatsClient) -> None:
        del nc
        while True:
            if self._on_connect is not None:
                await self._on_connect(self)
            await self._reconnected.wait()
            self._reconnected.clear()

    async def _closing(self, nc: NatsClient) -> None:
        will = self.will
        if will is None or not nc.is_connected:
            return
        try:
            async with asyncio.timeout(self._transport.timeout_s):
                inflight = self._send(nc, will.topic, will.payload, will.qos)
                write_pending(nc)
                await inflight.confirmed()
        except (BrokerError, nats.errors.Error) as exc:
            log.warning("%s: offline status not published: %s", self._name, exc)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        future = self._waiting.pop(token, None)
        if future is None or future.done():
            return
        status = status_of(msg)
        if status == "503":  # no store, or a store without a leader: see the module
            self._waiting[token] = future
            self._unanswered.append(token)
            self._wake.set()
            return
        self._bodies.pop(token, None)
        try:
            answer = json.loads(msg.data) if status is None else {"error": {"code": status}}
        except ValueError:
            answer = {"error": {"description": "unreadable acknowledgement"}}
        error = answer.get("error")
        if error:
            future.set_exception(BrokerError(f"NATS refused the message: {error}"))
        else:
            self.stored_seen = True
            future.set_result(None)

    async def _again(self, nc: NatsClient) -> None:
        """Store again, every :data:`_AGAIN_S`, what the store answered 503."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(_AGAIN_S)
            tokens, self._unanswered = self._unanswered, []
            for token in tokens:
                future = self._waiting.get(token)
                body = self._bodies.get(token)
                if future is None or future.done() or body is None:
                    self._forget(token)
                    continue
                subject, payload, deadline = body
                if not self.stored_seen and loop.time() + _AGAIN_S >= deadline:
                    # Nothing ever stored and only 503s: there is no store.
                    self._forget(token)
                    future.set_result(None)
                    continue
                self.stored_again += 1
                reply = f"{self._inbox}.{token}"
                hand_over(nc, pub(subject, payload, reply=reply, headers=QOS1_HEADERS))
            write_pending(nc)

    def _send(self, nc: NatsClient, topic: str, payload: bytes, qos: int) -> InFlight:
        subject = topic_to_subject(topic)
        if not qos:
            hand_over(nc, pub(subject, payload))
            return InFlight.acknowledged(topic, self._stats)
        # For QoS 0 and NATS subscribers (a QoS 1 subscription skips it: the header) …
        hand_over(nc, pub(subject, payload, headers=QOS1_HEADERS))
        # … and stored for QoS 1 subscriptions, persistent sessions included.
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting[token] = future
        reply = f"{self._inbox}.{token}"
        stored = MQTT_QOS1_PREFIX + subject
        hand_over(nc, pub(stored, payload, reply=reply, headers=QOS1_HEADERS))
        deadline = loop.time() + self._transport.timeout_s
        self._bodies[token] = (stored, payload, deadline)
        return InFlight(topic, future, deadline, lambda: self._forget(token), self._stats)

    def _forget(self, token: str) -> None:
        self._waiting.pop(token, None)
        self._bodies.pop(token, None)

    def _live(self) -> NatsClient:
        nc = self._nc
        if nc is None or not self.connected:
            raise BrokerError(f"{self._name}: not connected to NATS")
        return nc

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        del retain  # see the module docstring: MQTT's retained store is not reachable
        await self.wait_connected()
        inflight = self._send(self._live(), topic, payload, qos)
        self.flush()
        await inflight.confirmed()
        if not qos:
            self._stats.published += 1

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, expiry_s: float | None = None
    ) -> InFlight:
        # MQTT 3.1.1 has no message expiry; the delivery tracker re-sends and a camera
        # checks a command's age itself.
        del expiry_s
        return self._send(self._live(), topic, payload, qos)

    def flush(self) -> None:
        nc = self._nc
        if nc is not None:
            write_pending(nc)
