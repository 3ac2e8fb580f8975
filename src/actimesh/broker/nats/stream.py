"""Best-effort messages (telemetry) on core NATS subjects, read by a lean subscriber that
speaks the NATS client protocol itself: the cluster's counterpart of
:class:`~actimesh.broker.ingest.StreamSubscriber`.

Why not nats-py: it handles every message in the event loop on its own (a ``Msg``
object, a callback, a queue hand-off), so a telemetry flood delays the trigger path that
shares the loop, and one engine read telemetry at about a seventh of what a plain
subscriber on the same cluster reads (docs/PERFORMANCE.md, "The cluster shape"). What
this link does instead, as the single-machine intake does:

* The socket is read by an :class:`asyncio.BufferedProtocol` into one reusable buffer;
  ``MSG``/``HMSG`` frames are split in place (:mod:`._wire`) and the handler gets
  *batches* of ``(topic, payload)`` byte pairs (subjects mapped back to MQTT topics by the
  listener's rule), at most ``batch_size`` long, with a yield to the loop in between.
* When it has caught up it stops reading for ``coalesce_s`` (2 ms) and lets messages
  gather in the socket: one wake-up per many messages at a steady fleet rate.
* The backlog is bounded (``max_queued``); beyond it the *oldest* message is dropped,
  because a fresher fix of the same device is behind it, and every drop is counted.
* A shared subscription (``$share/<group>/<filter>``) is a subscription in the queue
  group ``<group>``: the server hands each message to one member of the group, and a
  member that goes away leaves its share to the others (geographic partitions use it
  for the relay's share of raw telemetry).

The connection: the server's ``INFO`` comes first, in clear; with ``tls_required`` the
connection is upgraded in place (``loop.start_tls``; the TLS transport feeds the same
buffered protocol), and a server that does not ask for TLS is refused if TLS was asked
for (no silent downgrade). Then ``CONNECT`` (user and password, ``headers`` so that
messages published with headers, such as the listener's QoS 1 copies, reach us as
``HMSG``), one ``SUB`` per subscription and a ``PING``: its ``PONG`` says the server has
processed the subscriptions. Every wait has a timeout. A ``-ERR`` is counted in the
link's errors and logged; the server keeps the connection after a permissions violation
(a subscription it refused: the link still serves the others) and closes it after any
other. The server's ``PING`` is answered, and ours go every 2 s; three unanswered end the
connection, as a node cut off the network keeps the socket open. A server that sends
something outside the protocol has its connection dropped and counted
(``protocol_errors``), never the task crashed. On any loss the link reconnects to the
next of the configured servers (and those the cluster announced in ``INFO``) with
exponential backoff and full jitter, and subscribes again.

JetStream (the control and outbound links) stays on nats-py: those links carry few
messages and need its request machinery.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import socket
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actimesh.broker.client import Subscription
from actimesh.broker.ingest import Publish, StreamStats
from actimesh.broker.nats import _wire
from actimesh.broker.nats.subjects import topic_to_subject
from actimesh.broker.transport import StreamHandler
from actimesh.errors import BrokerError

if TYPE_CHECKING:
    from actimesh.broker.nats.transport import NatsTransport

__all__ = ["NatsStream", "NatsStreamStats"]

log = logging.getLogger(__name__)

#: A node that stops answering is left once 3 pings, one every 2 s, go unanswered.
_PING_INTERVAL_S = 2.0
_MAX_OUTSTANDING_PINGS = 3
#: Until the server's INFO says its own limit (nats-server's default).
_DEFAULT_MAX_PAYLOAD = 1024 * 1024
_BACKOFF_INITIAL_S = 0.05
_BACKOFF_MAX_S = 5.0
_DEFAULT_PORT = 4222


@dataclass(slots=True)
class NatsStreamStats(StreamStats):
    """A stream link's counters, plus connections dropped for a protocol error."""

    protocol_errors: int = 0


def _subject_and_group(topic_filter: str) -> tuple[str, str]:
    """The NATS subject and queue group of an MQTT filter, shared or not."""
    group = ""
    if topic_filter.startswith("$share/"):
        _, group, topic_filter = topic_filter.split("/", 2)
    return topic_to_subject(topic_filter), group


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url if "://" in url else f"nats://{url}")
    if parts.hostname is None:
        raise ValueError(f"no host in NATS server URL {url!r}")
    return parts.hostname, parts.port or _DEFAULT_PORT


def _settle(fut: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``fut`` unless done, without an "exception never retrieved" if nobody waits."""
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()


class _Connection(asyncio.BufferedProtocol):
    """One connection to one server: fills a buffer, splits frames, hands messages to
    its owner and answers the server's pings."""

    def __init__(self, owner: NatsStream) -> None:
        self._owner = owner
        self._read_size = owner.read_size
        self._buf = bytearray(max(owner.read_size * 4, 64 * 1024))
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received data
        self.transport: asyncio.Transport | None = None
        self.max_payload = _DEFAULT_MAX_PAYLOAD
        loop = asyncio.get_running_loop()
        self.info: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        #: The first PONG: the server has processed what was sent before its PING.
        self.answered: asyncio.Future[None] = loop.create_future()
        self.pongs = 0
        #: The server's last -ERR (the reason a refused login is closed for).
        self.refusal = ""
        #: Until INFO has been read: what follows it may be the TLS handshake.
        self._before_info = True

    # -------------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, _sizehint: int) -> memoryview:
        want = self._read_size
        if len(self._buf) - self._end < want:
            # Move the unparsed tail to the front, growing only for a message larger
            # than the buffer itself.
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
        except _wire.ProtocolError as exc:
            self._owner.stats.protocol_errors += 1
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        err = exc if exc is not None else BrokerError("the server closed the connection")
        if self.refusal and exc is None:
            err = BrokerError(f"the server closed the connection: {self.refusal}")
        for fut in (self.info, self.answered, self.closed):
            _settle(fut, err)
        self._owner._wake()

    # -------------------------------------------------------------- parsing
    def _parse(self) -> None:
        buf, pos, end = self._buf, self._start, self._end
        owner = self._owner
        pending = owner._pending
        full = pending.maxlen
        nxt = _wire.next_frame
        topic_of = _wire.topic_of
        received = dropped = 0
        try:
            while pos < end:
                found = nxt(buf, pos, end, self.max_payload)
                if found is None:
                    break
                subject, payload, pos = found
                if subject is not None:
                    if len(pending) == full:
                        dropped += 1  # the deque drops its oldest entry on append
                    pending.append((topic_of(subject), payload))
                    received += 1
                elif self._control(payload):
                    break  # INFO read: the rest may be a TLS handshake, not ours to parse
        finally:
            self._start = pos
            if received:
                owner.stats.received += received
                owner.stats.dropped_incoming += dropped
                owner._wake()

    def _control(self, line: bytes) -> bool:
        """Act on a control line; True if it was the first INFO."""
        verb, _, rest = line.partition(b" ")
        if verb == b"PING":
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"PONG\r\n")
        elif verb == b"PONG":
            self.pongs += 1
            if not self.answered.done():
                self.answered.set_result(None)
        elif verb == b"-ERR":
            reason = rest.decode(errors="replace").strip("'")
            self.refusal = reason
            self._owner._refused(reason)
        elif verb == b"INFO":
            try:
                info = json.loads(rest)
            except ValueError as exc:
                raise _wire.ProtocolError(f"an INFO that is not JSON: {rest[:64]!r}") from exc
            if not isinstance(info, dict):
                raise _wire.ProtocolError("an INFO that is not a JSON object")
            limit = info.get("max_payload")
            if isinstance(limit, int) and limit > 0:
                self.max_payload = limit
            self._owner._learn(info)
            if self._before_info:
                self._before_info = False
                if not self.info.done():
                    self.info.set_result(info)
                return True
        return False  # +OK: nothing to do (we ask for no verbose acknowledgements)

    def upgraded(self, transport: asyncio.Transport) -> None:
        """The connection now runs over TLS on ``transport``."""
        self.transport = transport

    def _fail(self, exc: Exception) -> None:
        for fut in (self.info, self.answered, self.closed):
            _settle(fut, exc)
        if self.transport is not None:
            self.transport.abort()


class NatsStream:
    """Best-effort messages on core NATS, in batches, with a bounded backlog that drops
    its oldest message when full. Create it inside the running loop; ``await run()`` as
    one named task."""

    def __init__(
        self,
        transport: NatsTransport,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: StreamHandler,
        *,
        max_queued: int,
        batch_size: int = 256,
        read_size: int = 32 * 1024,
        coalesce_s: float = 0.002,
    ) -> None:
        if max_queued < 1 or batch_size < 1 or read_size < 1024:
            raise ValueError("max_queued and batch_size must be >= 1 and read_size >= 1024")
        self._transport = transport
        self._name = name
        shared = [_subject_and_group(s.topic) for s in subscriptions]
        self.subjects = [subject for subject, _group in shared]
        #: The queue group of each shared subscription's subject.
        self.queue_groups = {subject: group for subject, group in shared if group}
        self.max_queued = max_queued
        self.batch_size = batch_size
        self.read_size = read_size
        self.coalesce_s = coalesce_s
        self._handler = handler
        self._stats = NatsStreamStats()
        self._pending: collections.deque[Publish] = collections.deque(maxlen=max_queued)
        self._waiter: asyncio.Future[None] | None = None
        self._connected = asyncio.Event()
        self._servers = [_host_port(url) for url in transport.servers]
        #: The host name a server certificate must name (the first configured server's).
        self._tls_host = self._servers[0][0]
        self._next_server = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def stats(self) -> NatsStreamStats:
        return self._stats

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def backlog(self) -> int:
        """Messages received and not yet handed to the handler."""
        return len(self._pending)

    async def wait_connected(self, timeout: float | None = None) -> None:
        wait = self._transport.timeout_s if timeout is None else timeout
        try:
            async with asyncio.timeout(wait):
                await self._connected.wait()
        except TimeoutError as exc:
            raise BrokerError(
                f"{self._name}: no connection to NATS at {', '.join(self._transport.servers)} "
                f"after {wait:.0f} s ({self._stats.last_error or 'not reachable'})"
            ) from exc

    # -------------------------------------------------------------- what the connection says
    def _error(self, what: str) -> None:
        self._stats.last_error = what
        self._stats.errors = [*self._stats.errors[-9:], what]

    def _refused(self, reason: str) -> None:
        self._error(f"-ERR {reason}")
        log.warning("%s: the server says: %s", self._name, reason)

    def _learn(self, info: dict[str, Any]) -> None:
        """Add the servers the cluster announces (``connect_urls``) to those tried."""
        urls = info.get("connect_urls")
        if not isinstance(urls, list):
            return
        for url in urls:
            if isinstance(url, str):
                try:
                    server = _host_port(url)
                except ValueError:
                    continue
                if server not in self._servers and len(self._servers) < 64:
                    self._servers.append(server)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -------------------------------------------------------------- the connection's life
    async def run(self) -> None:
        """Connect, subscribe, deliver; on any loss back off and reconnect to the next
        server."""
        attempt = 0
        while True:
            host, port = self._servers[self._next_server % len(self._servers)]
            try:
                await self._session(host, port)
            except (OSError, TimeoutError, BrokerError) as exc:  # ssl.SSLError is an OSError
                self._error(f"{host}:{port}: {exc or type(exc).__name__}")
                log.info("%s: connection to %s:%d lost: %s", self._name, host, port, exc)
            finally:
                if self._connected.is_set():
                    self._stats.disconnects += 1
                    self._connected.clear()
                    attempt = 0
            self._next_server += 1
            delay = min(_BACKOFF_MAX_S, _BACKOFF_INITIAL_S * 2**attempt)
            attempt = min(attempt + 1, 16)
            # Full jitter keeps engines that lost a node at once from returning at once.
            await asyncio.sleep(random.uniform(delay / 2, delay))

    def _connect_options(self, tls: bool) -> bytes:
        options: dict[str, object] = {
            "verbose": False,
            "pedantic": False,
            "tls_required": tls,
            "name": self._name,
            "lang": "python",
            "version": "actimesh",
            "protocol": 1,
            "headers": True,
            "no_responders": True,
        }
        if self._transport.user is not None:
            options["user"] = self._transport.user
        if self._transport.password is not None:
            options["pass"] = self._transport.password
        return json.dumps(options).encode()

    async def _session(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._transport.timeout_s
        settings = self._transport.tls
        async with asyncio.timeout(timeout):
            transport, conn = await loop.create_connection(lambda: _Connection(self), host, port)
        try:
            async with asyncio.timeout(timeout):
                info = await conn.info
                if info.get("tls_required") and settings is None:
                    raise BrokerError(f"{host}:{port} requires TLS and none is configured")
                if settings is not None and not (
                    info.get("tls_required") or info.get("tls_available")
                ):
                    raise BrokerError(f"{host}:{port} does not offer TLS and TLS is configured")
                if settings is not None:
                    context: ssl.SSLContext = settings.context()
                    upgraded = await loop.start_tls(
                        transport, conn, context, server_hostname=self._tls_host
                    )
                    if upgraded is None:  # the connection went during the handshake
                        raise BrokerError(f"{host}:{port} closed the connection during TLS")
                    transport = upgraded
                    conn.upgraded(upgraded)
                lines = [_wire.connect_line(self._connect_options(settings is not None))]
                for sid, subject in enumerate(self.subjects, start=1):
                    lines.append(_wire.sub_line(subject, sid, self.queue_groups.get(subject, "")))
                lines.append(b"PING\r\n")
                transport.write(b"".join(lines))
                # The PONG to that PING: logged in and subscribed at the server (or told
                # why not, in a -ERR before it).
                await conn.answered
            self._stats.connects += 1
            self._connected.set()
            log.debug("%s connected to %s:%d", self._name, host, port)
            await self._deliver(conn, transport)
        finally:
            transport.close()

    async def _deliver(self, conn: _Connection, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + _PING_INTERVAL_S
        pings = conn.pongs
        pending = self._pending
        while True:
            if conn.closed.done():
                if not pending:  # what the connection brought is handed over first
                    conn.closed.result()  # raises why it closed
            elif (now := loop.time()) >= next_ping:
                if pings - conn.pongs >= _MAX_OUTSTANDING_PINGS:
                    raise TimeoutError(
                        f"{_MAX_OUTSTANDING_PINGS} pings unanswered in "
                        f"{_MAX_OUTSTANDING_PINGS * _PING_INTERVAL_S:.0f} s"
                    )
                transport.write(b"PING\r\n")
                pings += 1
                next_ping = now + _PING_INTERVAL_S
            if not pending:
                now = loop.time()
                if self.coalesce_s > 0:
                    transport.pause_reading()
                    try:
                        await asyncio.sleep(self.coalesce_s)
                    finally:
                        transport.resume_reading()  # a no-op once closing
                if pending or conn.closed.done():
                    continue
                self._waiter = loop.create_future()
                try:
                    async with asyncio.timeout(next_ping - now):
                        await self._waiter
                except TimeoutError:
                    pass
                finally:
                    self._waiter = None
                continue
            batch = [pending.popleft() for _ in range(min(len(pending), self.batch_size))]
            self._stats.batches += 1
            try:
                await self._handler(batch)
            except Exception:  # one bad batch must not stop the intake (not CancelledError)
                self._stats.handler_errors += 1
                log.exception(
                    "%s: handler failed on a batch of %d (first topic %r)",
                    self._name,
                    len(batch),
                    batch[0][0][:128],
                )
            # Let the trigger path and timers in between batches.
            await asyncio.sleep(0)
