"""A lean subscriber for high-rate QoS 0 streams: the engine's telemetry intake.

:class:`StreamSubscriber` is a drop-in for :class:`~actimesh.broker.client.MqttLink` on a
link that only receives QoS 0 messages (``run()``, ``wait_connected()``, ``settings``,
``stats.dropped_incoming``). It exists because the general link cannot keep up with a
fleet: aiomqtt handles about 9,000 msg/s here and a bare paho subscriber about 45,000,
while Mosquitto delivers about 120,000 (FIELD-NOTES §5, docs/PERFORMANCE.md). Its
connection, keepalive, reconnection and batching are :class:`LeanSubscriber`'s, which the
engine's QoS 1 intake of device messages shares (:mod:`actimesh.broker.intake`). The
differences that matter:

* The socket is read by an :class:`asyncio.BufferedProtocol` into one reusable buffer,
  up to ``read_size`` bytes per wake-up, instead of several ``recv`` calls per packet.
* Packets are split in place (:mod:`actimesh.broker.wire`); the handler gets a *batch*
  of ``(topic, payload)`` byte pairs, so the per-message cost is a tuple, not a future,
  a queue hand-off and a task switch.
* Batches are at most ``batch_size`` long and the consumer yields to the event loop
  between them, so a flood of telemetry delays a trigger event on the control link by
  one batch at most.
* When it has caught up, it stops reading for ``coalesce_s`` (2 ms) and lets messages
  gather in the socket: at 10,000 msg/s that is one wake-up per ~20 messages instead of
  one per message, which more than halves the engine's CPU at a steady 1 Hz fleet and
  leaves the cores to the broker and the trigger path. Positions arrive 2 ms later.
* The backlog is bounded (``max_queued_incoming`` messages); beyond it the *oldest*
  messages are dropped, because a fresher fix of the same device is behind them, and
  every drop is counted.
* :class:`LatestStreamSubscriber`, the engine's, keeps one message per topic (device)
  once it is behind: a newer fix replaces the one still waiting, in its place in line,
  and the older is counted as ``superseded``. It also reads up to 128 KiB per wake-up, well ahead of
  what it hands over, so under overload the broker's queue for this connection stays
  short and the shedding happens here, oldest positions first, rather than in the
  broker, which drops the *newest* messages of a full queue, uncounted by the engine,
  in runs that follow the fleet's reporting order. Measured (docs/PERFORMANCE.md,
  "Overload"): with the broker shedding, the same scene cameras went more than 10 s
  without a delivered fix, and their commands were never sent (stale fixes); with one
  message per device the wait for a device's latest fix is bounded by the number of
  devices over the engine's ingest rate.

Like :class:`MqttLink` it reconnects with exponential backoff plus jitter, subscribes
again on every connect, and puts a timeout on every network wait. Keepalive pings are
sent every half keepalive; a missing PINGRESP ends the connection. It logs in with the
settings' username and password, over TLS when ``settings.tls`` is set (asyncio's TLS
transport feeds the same buffered protocol; ``TCP_NODELAY`` is set on the socket under it).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from actimesh.broker import wire
from actimesh.broker.client import (
    LinkSettings,
    LinkStats,
    TlsSettings,
    wait_for_connection,
    with_access,
)
from actimesh.errors import BrokerError

__all__ = [
    "LatestStreamSubscriber",
    "LeanSubscriber",
    "Publish",
    "StreamStats",
    "StreamSubscriber",
]

log = logging.getLogger(__name__)

#: One received message: ``(topic, payload)`` as bytes.
Publish = tuple[bytes, bytes]
BatchHandler = Callable[[Sequence[Publish]], Awaitable[None]]
_Item = TypeVar("_Item")

#: Largest packet accepted: the broker's own limit (an oversized device payload must
#: still reach the engine, which dead-letters it).
_MAX_PACKET = 2 * 1024 * 1024

#: How long a clean disconnect waits for the broker to close the socket.
_DISCONNECT_WAIT_S = 1.0


@dataclass(slots=True)
class StreamStats(LinkStats):
    """Counters of a :class:`StreamSubscriber`: a link's, plus how many batches."""

    batches: int = 0
    #: Messages replaced, while waiting, by a newer one of the same topic
    #: (:class:`LatestStreamSubscriber`).
    superseded: int = 0


class _Connection(asyncio.BufferedProtocol):
    """One TCP connection: fills a buffer, splits packets, hands PUBLISHes to its owner,
    and writes the PUBACKs the owner asks for once per turn of the event loop."""

    def __init__(self, owner: LeanSubscriber[Any]) -> None:
        self._owner = owner
        self._buf = bytearray(max(owner.read_size * 4, 64 * 1024))
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received data
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[tuple[int, ...]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.pongs = 0
        self._acks = bytearray()

    # -------------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio sets it too; FIELD-NOTES §5 says never rely on that
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, _sizehint: int) -> memoryview:
        want = self._owner.read_size
        if len(self._buf) - self._end < want:
            # Move the unparsed tail to the front, growing only for a packet that is
            # larger than the buffer itself.
            pending = self._end - self._start
            if pending + want > len(self._buf):
                self._buf.extend(bytes(pending + want - len(self._buf)))
            self._buf[:pending] = self._buf[self._start : self._end]
            self._start, self._end = 0, pending
        return memoryview(self._buf)[self._end : self._end + want]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        try:
            self._parse()
        except wire.ProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        err = exc if exc is not None else BrokerError("the broker closed the connection")
        for fut in (self.connack, self.suback, self.closed):
            _settle(fut, err)
        self._owner._wake()

    # -------------------------------------------------------------- acknowledgements
    def puback(self, packet_id: int) -> bool:
        """Acknowledge a QoS 1 PUBLISH this connection carried; False once it is gone
        (the broker then sends the message again on the next connection)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if not self._acks:
            self._loop.call_soon(self.write_acks)
        self._acks += wire.puback_packet(packet_id)
        return True

    def write_acks(self) -> None:
        """Write the PUBACKs asked for since the last write (once per loop turn, and
        before the connection closes: what the handler acknowledged must not come
        again)."""
        acks, self._acks = self._acks, bytearray()
        transport = self.transport
        if acks and transport is not None and not transport.is_closing():
            transport.write(acks)

    # -------------------------------------------------------------- parsing
    def _parse(self) -> None:
        buf, pos, end = self._buf, self._start, self._end
        take = self._owner._take
        nxt = wire.next_packet
        received = 0
        while True:
            found = nxt(buf, pos, end, _MAX_PACKET)
            if found is None:
                break
            first, body, pos = found
            if first >> 4 == wire.PUBLISH:
                take(self, buf, first, body, pos)
                received += 1
            else:
                self._control(first, bytes(buf[body:pos]))
        self._start = pos
        if received:
            self._owner.stats.received += received
            self._owner._wake()

    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == wire.CONNACK and not self.connack.done():
            self.connack.set_result(wire.connack_reason(body))
        elif kind == wire.SUBACK and not self.suback.done():
            self.suback.set_result(wire.suback_reasons(body)[1])
        elif kind == wire.PINGRESP:
            self.pongs += 1
        elif kind == wire.DISCONNECT:
            reason = body[0] if body else 0
            raise wire.ProtocolError(f"the broker disconnected us (reason 0x{reason:02x})")
        else:
            raise wire.ProtocolError(f"unexpected MQTT packet type {kind}")

    def _fail(self, exc: Exception) -> None:
        _settle(self.closed, exc)
        if self.transport is not None:
            self.transport.abort()


def _settle(fut: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``fut`` unless done. A lost connection is expected: whoever awaits the future
    gets the error, and nobody awaiting it is not worth an "exception never retrieved"."""
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()


class LeanSubscriber(abc.ABC, Generic[_Item]):
    """A reconnecting subscriber that hands messages to ``handler`` in batches.

    The connection, keepalive, reconnection and batching are here; what a received
    PUBLISH becomes, and in which order they are handed over, is the subclass's
    (:meth:`_take`, :meth:`_next_batch`). Create it inside the running event loop;
    ``await run()`` as one named task. The handler is awaited once per batch and must
    not keep the batch list.
    """

    def __init__(
        self,
        settings: LinkSettings,
        handler: Callable[[Sequence[_Item]], Awaitable[None]],
        *,
        batch_size: int,
        read_size: int,
        coalesce_s: float,
    ) -> None:
        if not settings.subscriptions:
            raise ValueError("a stream subscriber needs at least one subscription")
        if settings.protocol != "5":
            raise ValueError("a stream subscriber speaks MQTT 5 only (its own wire codec)")
        if batch_size < 1 or read_size < 1024:
            raise ValueError("batch_size must be >= 1 and read_size >= 1024")
        self.settings = settings
        self.stats = StreamStats()
        self.batch_size = batch_size
        self.read_size = read_size
        self.coalesce_s = coalesce_s
        self._handler = handler
        #: Sent in CONNECT: how many unacknowledged QoS 1 messages the broker may send.
        self.receive_maximum: int | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._connected = asyncio.Event()

    @property
    def name(self) -> str:
        return self.settings.client_id

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    @abc.abstractmethod
    def backlog(self) -> int:
        """Messages received and not yet handed to the handler."""

    @abc.abstractmethod
    def _take(self, conn: _Connection, buf: bytearray, first: int, start: int, end: int) -> None:
        """Keep the PUBLISH whose body is ``buf[start:end]`` (or refuse it)."""

    @abc.abstractmethod
    def _next_batch(self) -> list[_Item]:
        """Up to ``batch_size`` kept messages, in the order the handler gets them."""

    @staticmethod
    @abc.abstractmethod
    def _topic(item: _Item) -> bytes | str:
        """The topic of a kept message (for logs)."""

    def _connect_packet(self) -> bytes:
        s = self.settings
        return wire.connect_packet(
            s.client_id,
            keepalive_s=s.keepalive_s,
            username=s.username,
            password=s.password,
            max_packet_size=_MAX_PACKET,
            session_expiry_s=s.session_expiry_s,
            receive_maximum=self.receive_maximum,
        )

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the subscriber is connected and subscribed."""
        await wait_for_connection(self._connected, self.settings, self.stats, timeout)

    def reconfigure(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
    ) -> None:
        """Credentials or TLS for the next connection (see :meth:`MqttLink.reconfigure
        <actimesh.broker.client.MqttLink.reconfigure>`)."""
        self.settings = with_access(self.settings, username=username, password=password, tls=tls)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self) -> None:
        """Connect, subscribe, deliver; on any connection loss back off and reconnect."""
        attempt = 0
        while True:
            try:
                await self._session()
            except (OSError, TimeoutError, BrokerError) as exc:  # ssl.SSLError is an OSError
                self.stats.last_error = str(exc) or type(exc).__name__
                log.info("%s: connection lost: %s", self.settings.client_id, exc)
            finally:
                if self._connected.is_set():
                    self.stats.disconnects += 1
                    self._connected.clear()
                    attempt = 0
            delay = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2**attempt)
            attempt = min(attempt + 1, 16)
            # Full jitter keeps many clients that lost the broker at once from returning at once.
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _session(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None if s.tls is None else s.tls.context()
        async with asyncio.timeout(s.timeout_s):
            transport, conn = await loop.create_connection(
                lambda: _Connection(self),
                s.host,
                s.port,
                ssl=tls,
                server_hostname=s.host if tls is not None else None,
            )
        try:
            transport.write(self._connect_packet())
            async with asyncio.timeout(s.timeout_s):
                reason = await conn.connack
            if reason != 0:
                raise BrokerError(
                    f"{s.client_id}: the broker refused the connection (reason 0x{reason:02x})"
                )
            filters = tuple(sub.topic for sub in s.subscriptions)
            qos = tuple(sub.qos for sub in s.subscriptions)
            transport.write(wire.subscribe_packet(1, filters, qos))
            async with asyncio.timeout(s.timeout_s):
                codes = await conn.suback
            refused = [f for f, code in zip(filters, codes, strict=False) if code >= 0x80]
            if refused or len(codes) != len(filters):
                raise BrokerError(f"{s.client_id}: subscription refused: {refused or filters}")
            self.stats.connects += 1
            self._connected.set()
            log.debug("%s connected", s.client_id)
            await self._deliver(conn, transport)
        finally:
            if not transport.is_closing():
                conn.write_acks()
                transport.write(wire.DISCONNECT_PACKET)
                await self._until_broker_closes(conn)
            transport.close()

    async def _until_broker_closes(self, conn: _Connection) -> None:
        """Wait (briefly) for the broker to close the connection after DISCONNECT.

        The broker reads what came before DISCONNECT first, PUBACKs included. Closing at
        once would leave them in its socket buffer, and a new connection with the same
        client id taking the session over before the broker read them makes it drop
        them: every message just acknowledged would be sent again.
        """
        try:
            async with asyncio.timeout(_DISCONNECT_WAIT_S):
                await conn.closed
        except (BrokerError, OSError, TimeoutError):
            pass  # closed (the expected end) or not in time: close it ourselves

    async def _deliver(self, conn: _Connection, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        interval = max(0.5, self.settings.keepalive_s / 2)
        next_ping = loop.time() + interval
        pongs_expected = 0
        while True:
            if conn.closed.done():
                conn.closed.result()  # raises why it closed
            now = loop.time()
            if now >= next_ping:
                if conn.pongs < pongs_expected:
                    raise TimeoutError(f"no PINGRESP within {interval:.1f} s")
                transport.write(wire.PINGREQ_PACKET)
                pongs_expected += 1
                next_ping = now + interval
            if not self.backlog:
                if self.coalesce_s > 0:
                    transport.pause_reading()
                    try:
                        await asyncio.sleep(self.coalesce_s)
                    finally:
                        transport.resume_reading()  # a no-op once closing
                self._waiter = loop.create_future()
                try:
                    async with asyncio.timeout(next_ping - now):
                        await self._waiter
                except TimeoutError:
                    pass
                finally:
                    self._waiter = None
                continue
            batch = self._next_batch()
            count = len(batch)
            self.stats.batches += 1
            try:
                await self._handler(batch)
            except Exception:  # one bad batch must not stop the intake (not CancelledError)
                self.stats.handler_errors += 1
                log.exception(
                    "%s: handler failed on a batch of %d (first topic %r)",
                    self.settings.client_id,
                    count,
                    self._topic(batch[0])[:128],
                )
            # Let the control link and timers in between batches.
            await asyncio.sleep(0)


class StreamSubscriber(LeanSubscriber[Publish]):
    """A reconnecting QoS 0 subscriber that hands messages to ``handler`` in batches,
    oldest first; a full backlog drops its oldest message and counts it."""

    def __init__(
        self,
        settings: LinkSettings,
        handler: BatchHandler,
        *,
        batch_size: int = 256,
        read_size: int = 32 * 1024,
        coalesce_s: float = 0.002,
    ) -> None:
        super().__init__(
            settings, handler, batch_size=batch_size, read_size=read_size, coalesce_s=coalesce_s
        )
        self._pending: collections.deque[Publish] = collections.deque(
            maxlen=settings.max_queued_incoming
        )

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def _take(self, _conn: _Connection, buf: bytearray, first: int, start: int, end: int) -> None:
        pending = self._pending
        if len(pending) == pending.maxlen:
            self.stats.dropped_incoming += 1  # the deque drops its oldest entry on append
        pending.append(wire.split_publish(buf, first, start, end))

    def _next_batch(self) -> list[Publish]:
        pending = self._pending
        return [pending.popleft() for _ in range(min(len(pending), self.batch_size))]

    @staticmethod
    def _topic(item: Publish) -> bytes:
        return item[0]


class LatestStreamSubscriber(LeanSubscriber[Publish]):
    """A :class:`StreamSubscriber` that, once behind, keeps only each topic's newest message.

    While fewer than ``supersede_above`` messages wait, every message is handed over:
    the engine then sees each one, so a malformed one is dead-lettered and a device's
    flood is charged to its rate budget and quarantined. Once more wait (the engine is
    behind), a device's waiting message is replaced by its newer one, in its place in
    line (the device waits no longer for having reported again), and the older counts as
    ``superseded``: shedding, as the overload needs it. Beyond ``max_queued_incoming``
    messages waiting, the one waiting longest is dropped and counted. Reads are larger
    than the batches, so the backlog (and the choice of what to shed) is here rather
    than in the broker's queue.
    """

    def __init__(
        self,
        settings: LinkSettings,
        handler: BatchHandler,
        *,
        batch_size: int = 256,
        read_size: int = 128 * 1024,
        coalesce_s: float = 0.002,
        supersede_above: int = 4 * 256,
    ) -> None:
        super().__init__(
            settings, handler, batch_size=batch_size, read_size=read_size, coalesce_s=coalesce_s
        )
        #: Waiting messages, oldest first; each a ``[topic, payload]`` cell, so that a
        #: newer message of the same topic can take its place.
        self._line: collections.deque[list[bytes]] = collections.deque()
        #: Each topic's newest cell still in line.
        self._newest: dict[bytes, list[bytes]] = {}
        self._limit = max(1, settings.max_queued_incoming)
        self._supersede_above = supersede_above

    @property
    def backlog(self) -> int:
        return len(self._line)

    def _take(self, _conn: _Connection, buf: bytearray, first: int, start: int, end: int) -> None:
        topic, payload = wire.split_publish(buf, first, start, end)
        line, newest = self._line, self._newest
        if len(line) >= self._supersede_above:
            cell = newest.get(topic)
            if cell is not None:
                cell[1] = payload
                self.stats.superseded += 1
                return
        if len(line) >= self._limit:
            self._forget(line.popleft())
            self.stats.dropped_incoming += 1
        cell = [topic, payload]
        line.append(cell)
        newest[topic] = cell

    def _forget(self, cell: list[bytes]) -> None:
        if self._newest.get(cell[0]) is cell:
            del self._newest[cell[0]]

    def _next_batch(self) -> list[Publish]:
        line, batch = self._line, []
        for _ in range(min(len(line), self.batch_size)):
            cell = line.popleft()
            self._forget(cell)
            batch.append((cell[0], cell[1]))
        return batch

    @staticmethod
    def _topic(item: Publish) -> bytes:
        return item[0]
