"""The engine on a NATS cluster: the :class:`~actimesh.broker.transport.Transport` with
nats-py, devices staying on MQTT (any node's MQTT listener).

Why each link is built the way it is:

* **Topics and subjects.** The server's MQTT listener names the NATS subject of an MQTT
  topic by a fixed rule (2.10 and later): ``/`` between levels becomes ``.``, a ``.``
  inside a level becomes ``//``, an empty level becomes ``/``; ``+`` and ``#`` become
  ``*`` and ``>``. :func:`topic_to_subject` and :func:`subject_to_topic` are that rule,
  so a device id with a dot (``cam.7``) is the same device on both sides.
* **Commands reach MQTT QoS 1 subscriptions** the way an MQTT publisher's QoS 1 message
  does inside the server: stored in the listener's JetStream stream (``$MQTT_msgs``,
  subject ``$MQTT.msgs.<subject>``, replicated), from which each QoS 1 subscription's
  durable consumer delivers it, on the device's node, and again after a reconnect to
  another node; the store's acknowledgement is the :class:`InFlight` confirmation. The
  ``Nmqtt-Pub: 1`` header says "QoS 1" to the server (a delivery that crosses a route
  needs it), and the same message is also published on the plain subject for QoS 0
  and NATS subscribers (which, seeing the header, a QoS 1 subscription skips: no
  duplicate). No stream yet (no MQTT client ever connected) means no session could
  hold it: accepted, as a broker accepts a message nobody subscribes to.
  ``publish_nowait`` writes into the connection's buffer and ``flush`` writes it to the
  socket in this turn (one adapter reaches nats-py's buffer: :func:`_hand_over`).
* **Trigger events are durable in JetStream** (:class:`NatsControl`) from the moment
  the device has its PUBACK: a device's QoS 1 message is acknowledged once the MQTT
  listener stored it in ``$MQTT_msgs`` (R3), and each subscription of a control link is
  a durable pull consumer on that very stream (filter ``$MQTT.msgs.<subject>``,
  explicit acks). The stream keeps a message while a consumer has not acknowledged it
  (interest retention), so nothing the device was told is stored can be lost between
  the listener and the engine. (A stream of our own capturing the plain subject was
  tried first: the capture is not acknowledged to anyone, and a trigger raised while
  that stream elected a new leader after a node's loss was lost.) A shared
  subscription (``$share/<group>/<filter>``, as the engine asks for events) becomes a
  consumer named after the group and the filter, so every replica pulls from the same
  one: each event goes to one replica, and one that dies before acknowledging leaves it
  to be redelivered to another after ``ack_wait``. An unshared one (presence, acks) is
  the link's own consumer, starting with the last stored message of each subject, kept
  ``session_expiry_s`` after the link goes. ``admit`` runs as each message arrives; a
  refused one is acknowledged at once. Admitted messages wait in one queue per source
  and batches take one from each in turn, as
  :class:`~actimesh.broker.intake.ControlSubscriber` does; the consumer's
  ``max_ack_pending`` bounds the backlog. The stream exists once an MQTT client has
  connected (:meth:`NatsCluster.start <actimesh.broker.nats_cluster.NatsCluster.start>`
  connects one); until then a control link retries and says why in ``last_error``.
  Messages stored before a consumer existed are not kept for it: a device's presence
  from before the engine's first start is seen when the device announces itself again.
* **Telemetry** (:class:`NatsStream`) is core NATS, QoS 0: a bounded queue, the newest
  dropped and counted when full.
* **No last will.** NATS has none, and the engine-status will of the ``cmd`` link cannot
  be set on the MQTT side from here. What replaces it: the link publishes its will
  itself when it is stopped (cancelled), so a clean stop still says offline; a crashed
  engine's status stays online until its successor announces itself. And ``retain`` is
  not honoured: MQTT's retained store is the listener's own, so the engine status is
  seen by MQTT subscribers connected when it is published, not by later ones.

Requests to the JetStream API are made here with ``asyncio.timeout`` rather than
through nats-py's JetStream layer, whose waits use ``asyncio.wait_for`` (which can lose a
cancellation on Python 3.11: FIELD-NOTES §8).

Not yet production-ready: anonymous connections (see :mod:`.nats_cluster`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import random
import re
from collections.abc import Hashable, Sequence
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.protocol import command as protocol

from actimesh.broker.client import InFlight, LinkStats, Subscription, Will
from actimesh.broker.ingest import Publish
from actimesh.broker.intake import Admit, Delivery
from actimesh.broker.transport import ControlHandler, OnConnect, StreamHandler
from actimesh.errors import BrokerError

__all__ = [
    "NatsControl",
    "NatsOutbound",
    "NatsStream",
    "NatsTransport",
    "subject_to_topic",
    "topic_to_subject",
]

log = logging.getLogger(__name__)

#: Where the MQTT listener keeps QoS 1 messages: its stream, and the subject prefix.
MQTT_QOS1_STREAM = "$MQTT_msgs"
MQTT_QOS1_PREFIX = "$MQTT.msgs."
_STREAM_NOT_FOUND = 10059
#: The header by which the server knows a message's MQTT QoS.
MQTT_QOS_HEADER = "Nmqtt-Pub"
_JS_API = "$JS.API."
_NS = 1_000_000_000


# --------------------------------------------------------------------- topic <-> subject
def topic_to_subject(topic: str) -> str:
    """The NATS subject the MQTT listener uses for an MQTT topic or filter."""
    if any(c.isspace() for c in topic):
        raise ValueError(f"MQTT topic {topic!r} has whitespace: no NATS subject for it")
    tokens = []
    for level in topic.split("/"):
        if level == "+":
            tokens.append("*")
        elif level == "#":
            tokens.append(">")
        elif level == "":
            tokens.append("/")
        else:
            tokens.append(level.replace(".", "//"))
    return ".".join(tokens)


def subject_to_topic(subject: str) -> str:
    """The MQTT topic of a NATS subject (the inverse of :func:`topic_to_subject`)."""
    return "/".join("" if t == "/" else t.replace("//", ".") for t in subject.split("."))


_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _jetstream_name(*parts: str) -> str:
    """A stream or consumer name from ``parts``: readable, unique, and free of what a
    name may not hold (``.``, ``*``, ``>``, path separators)."""
    joined = "|".join(parts)
    digest = hashlib.blake2s(joined.encode(), digest_size=5).hexdigest()
    readable = _NAME_UNSAFE.sub("_", "_".join(parts).replace("*", "any").replace(">", "all"))
    return f"{readable[:80]}-{digest}"


# --------------------------------------------------------------------- nats-py adapter
# nats-py writes through a buffer of its own, flushed by a task at the loop's next turn,
# and its publish is a coroutine. The command path hands a message over without
# awaiting and writes it in this turn, so these two functions reach into that buffer,
# doing what the client's own ``_send_command`` and flusher do. They are the only
# places that touch nats-py's private parts (tests/broker/test_nats_transport.py holds
# them to it).
def _hand_over(nc: NatsClient, cmd: bytes) -> None:
    client: Any = nc
    client._pending.append(cmd)
    client._pending_data_size += len(cmd)


def _write_pending(nc: NatsClient) -> None:
    client: Any = nc
    if nc.is_connected and client._pending_data_size > 0:
        client._transport.writelines(client._pending[:])
        client._pending = []
        client._pending_data_size = 0


def _headers(values: dict[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in values.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


_QOS1 = _headers({MQTT_QOS_HEADER: "1"})


def _pub(subject: str, payload: bytes, *, reply: str = "", headers: bytes | None = None) -> bytes:
    if headers is None:
        return protocol.pub_cmd(subject, reply, payload)
    return protocol.hpub_cmd(subject, reply, headers, payload)


def _status(msg: Msg) -> str | None:
    headers = msg.headers
    return None if not headers or msg.data else headers.get("Status")


async def _request(nc: NatsClient, subject: str, body: dict[str, Any], timeout: float) -> Msg:
    """One request and its reply, bounded by ``asyncio.timeout``."""
    return await _request_to(nc, subject, nc.new_inbox(), json.dumps(body).encode(), timeout)


async def _request_to(
    nc: NatsClient, subject: str, inbox: str, payload: bytes, timeout: float
) -> Msg:
    reply: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def take(msg: Msg) -> None:
        if not reply.done():
            reply.set_result(msg)

    sub = await nc.subscribe(inbox, cb=take)
    try:
        await nc.publish(subject, payload, reply=inbox)
        async with asyncio.timeout(timeout):
            return await reply
    except TimeoutError as exc:
        raise BrokerError(f"no answer to {subject} within {timeout:g} s") from exc
    finally:
        with contextlib.suppress(nats.errors.Error):  # gone with its connection
            await sub.unsubscribe()


async def _round_trip(nc: NatsClient, timeout: float) -> None:
    """Return once the server has processed what this connection sent before (its
    subscriptions among them): a message to ourselves has come back."""
    inbox = nc.new_inbox()
    await _request_to(nc, inbox, inbox, b"", timeout)


async def _js_api(nc: NatsClient, api: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """A JetStream API call; BrokerError with the server's reason if it refuses."""
    msg = await _request(nc, _JS_API + api, body, timeout)
    if _status(msg) == "503":
        raise BrokerError(f"JetStream is not available for {api} (no responders)")
    answer: dict[str, Any] = json.loads(msg.data)
    return answer


# --------------------------------------------------------------------- links
class _Link:
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
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
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

    async def _serve(self, nc: NatsClient) -> None:
        raise NotImplementedError

    async def _closing(self, nc: NatsClient) -> None:
        del nc  # nothing to say before closing, unless a link has something


class NatsOutbound(_Link):
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
        self._next = 0

    async def _serve(self, nc: NatsClient) -> None:
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        self._ready.set()
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
                _write_pending(nc)
                await inflight.confirmed()
        except (BrokerError, nats.errors.Error) as exc:
            log.warning("%s: offline status not published: %s", self._name, exc)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        future = self._waiting.pop(token, None)
        if future is None or future.done():
            return
        status = _status(msg)
        if status == "503":
            future.set_result(None)  # no MQTT session exists that could hold it
            return
        try:
            answer = json.loads(msg.data) if status is None else {"error": {"code": status}}
        except ValueError:
            answer = {"error": {"description": "unreadable acknowledgement"}}
        error = answer.get("error")
        if error:
            future.set_exception(BrokerError(f"NATS refused the message: {error}"))
        else:
            future.set_result(None)

    def _send(self, nc: NatsClient, topic: str, payload: bytes, qos: int) -> InFlight:
        subject = topic_to_subject(topic)
        if not qos:
            _hand_over(nc, _pub(subject, payload))
            return InFlight.acknowledged(topic, self._stats)
        # For QoS 0 and NATS subscribers (a QoS 1 subscription skips it: the header) …
        _hand_over(nc, _pub(subject, payload, headers=_QOS1))
        # … and stored for QoS 1 subscriptions, persistent sessions included.
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting[token] = future
        reply = f"{self._inbox}.{token}"
        _hand_over(nc, _pub(MQTT_QOS1_PREFIX + subject, payload, reply=reply, headers=_QOS1))
        deadline = loop.time() + self._transport.timeout_s
        return InFlight(topic, future, deadline, lambda: self._forget(token), self._stats)

    def _forget(self, token: str) -> None:
        self._waiting.pop(token, None)

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
            _write_pending(nc)


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
        self.stream = MQTT_QOS1_STREAM
        self.durable = _jetstream_name(group or link.name, topic_filter)
        t = link.transport
        config: dict[str, Any] = {
            "durable_name": self.durable,
            "filter_subject": self.subject,
            "ack_policy": "explicit",
            "ack_wait": int(t.ack_wait_s * _NS),
            "max_ack_pending": t.max_ack_pending,
            "max_deliver": -1,
        }
        if group:
            # Shared by every replica of the group, for as long as it exists.
            config["deliver_policy"] = "all"
        else:
            # The last message of each subject first: what retained messages give.
            config["deliver_policy"] = "last_per_subject"
            config["inactive_threshold"] = max(session_expiry_s, 5) * _NS
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


class NatsControl(_Link):
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
        answer = await _js_api(nc, api, body, self.transport.timeout_s)
        error = answer.get("error")
        if error and error.get("err_code") == _STREAM_NOT_FOUND:
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
        body = {"batch": t.pull_batch, "expires": int(t.pull_expires_s * _NS)}
        api = f"{_JS_API}CONSUMER.MSG.NEXT.{pull.stream}.{pull.durable}"
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
            _hand_over(nc, _pub(api, json.dumps(body).encode(), reply=pull.inbox))
            _write_pending(nc)
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
            status = _status(msg)
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
        self._stats.received += 1
        topic = subject_to_topic(msg.subject.removeprefix(MQTT_QOS1_PREFIX))
        topic_bytes = topic.encode()
        try:
            source: Hashable | None = self._admit(topic_bytes, msg.data)
        except Exception:  # never here; the handler checks it again
            log.exception("%s: admit failed on %r", self._name, topic[:128])
            source = topic
        self._next_id += 1
        packet_id = self._next_id
        self._unacked[packet_id] = msg.reply
        if source is None:
            self._stats.refused += 1
            self.puback(packet_id)
            return
        queue = self._queues.get(source)
        if queue is None:
            queue = self._queues[source] = collections.deque()
            self._turns.append(source)
        queue.append(Delivery(topic, msg.data, packet_id, self))
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
        _hand_over(nc, _pub(reply, b"+ACK"))
        if not self._flush_soon:  # the acks of one loop turn leave in one write
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush_acks)
        return True

    def _flush_acks(self) -> None:
        self._flush_soon = False
        if self._nc is not None:
            _write_pending(self._nc)


class NatsStream(_Link):
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
        self.subjects = [topic_to_subject(s.topic) for s in subscriptions]
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
            await nc.subscribe(subject, cb=self._take)
        await _round_trip(nc, self._transport.timeout_s)  # subscribed at the server
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


class NatsTransport:
    """One service's connections to a NATS cluster (``servers``: any of its nodes).

    ``ack_wait_s``: how long a control message may stay unacknowledged before JetStream
    gives it to another consumer (or again); ``max_ack_pending``: how many it hands
    a consumer unacknowledged (the backlog bound).
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        ack_wait_s: float = 30.0,
        max_ack_pending: int = 1000,
        timeout_s: float = 5.0,
        pull_batch: int = 64,
        pull_expires_s: float = 5.0,
    ) -> None:
        if not servers:
            raise ValueError("NatsTransport needs at least one server")
        self.servers = list(servers)
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self.timeout_s = timeout_s
        self.pull_batch = pull_batch
        self.pull_expires_s = pull_expires_s

    def __repr__(self) -> str:
        return f"NatsTransport({', '.join(self.servers)})"

    def outbound(
        self, name: str, *, will: Will | None = None, on_connect: OnConnect | None = None
    ) -> NatsOutbound:
        return NatsOutbound(self, name, will, on_connect)

    def control(
        self,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: ControlHandler,
        *,
        admit: Admit,
        session_expiry_s: int = 0,
    ) -> NatsControl:
        return NatsControl(
            self, name, subscriptions, handler, admit=admit, session_expiry_s=session_expiry_s
        )

    def stream(
        self,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: StreamHandler,
        *,
        max_queued: int,
    ) -> NatsStream:
        return NatsStream(self, name, subscriptions, handler, max_queued=max_queued)
