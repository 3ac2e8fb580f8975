"""A resilient MQTT connection on aiomqtt.

:class:`MqttLink` owns one logical connection for the life of a component: it connects,
subscribes, hands each message to a handler, and when the connection drops it waits with
exponential backoff plus jitter and does it all again, subscriptions included (the
broker may have lost them, and a clean session always has). ``run()`` is meant to be one
named task of the component's TaskGroup.

Choices that matter on this path:

* ``TCP_NODELAY`` on the client socket. Without it, Nagle's algorithm held a QoS 1
  request/reply across two broker hops at ~88 ms p50 on loopback; with it, ~1 ms
  (FIELD-NOTES §5). The managed broker sets ``set_tcp_nodelay`` on its side too.
* MQTT v5 by default, so commands can carry a message expiry and sessions a session
  expiry. A link can speak 3.1.1 instead (:attr:`LinkSettings.protocol`), for brokers
  that know no other (the NATS cluster's MQTT listener): its persistent session is then
  a ``clean_session=False`` one that the broker expires by its own rule, and a publish
  carries no properties (commands hold their own signed ``exp``).
* A bounded incoming queue whose overflows are counted (aiomqtt's own bounded queue only
  logs). Components that must never drop (trigger events) use a separate link from the
  ones that may shed load (telemetry), so a telemetry flood cannot delay a trigger.
* Every network await has a timeout.
* Several listeners (:attr:`LinkSettings.fallbacks`: a NATS cluster's nodes), for a
  link whose session outlives its node: every failure moves to the next listener
  (:class:`~actimesh.broker.failover.Rotation`, where the backoff rule lives too).
* Optional TLS (:class:`TlsSettings`): the server's certificate is checked against a CA
  file and the host name connected to; a client certificate and key make it mutual TLS.
  Credentials travel in the CONNECT packet, so off loopback they must only go over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import socket
import ssl
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiomqtt
from paho.mqtt import client as mqtt
from paho.mqtt.client import MQTT_ERR_SUCCESS, error_string
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from actimesh.broker.failover import Listener, Rotation
from actimesh.errors import BrokerError, ConfigError

__all__ = [
    "InFlight",
    "LinkSettings",
    "LinkStats",
    "MqttLink",
    "MqttProtocol",
    "Subscription",
    "TlsSettings",
    "Will",
    "wait_for_connection",
    "with_access",
]

log = logging.getLogger(__name__)

Handler = Callable[[aiomqtt.Message], Awaitable[None]]
#: The MQTT protocol version a link speaks.
MqttProtocol = Literal["5", "3.1.1"]
OnConnect = Callable[["MqttLink"], Awaitable[None]]

_NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
#: Messages a link hands to its handler before it lets the event loop turn.
_BATCH = 256


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic filter and its QoS."""

    topic: str
    qos: int = 1


@dataclass(frozen=True, slots=True)
class Will:
    """Last will: published by the broker if this client vanishes."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS towards the broker: the CA that signed its certificate (None: the system's
    trusted CAs), and optionally this client's own certificate and key (mutual TLS). The
    host name connected to must be one the server certificate names; there is no switch
    to skip that check."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("a TLS client certificate needs its key and the key its certificate")

    def context(self) -> ssl.SSLContext:
        """A client context: TLS 1.2 or later, certificate and host name verified."""
        try:
            cafile = None if self.ca_file is None else str(self.ca_file)
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.cert_file is not None and self.key_file is not None:
                ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except FileNotFoundError as exc:
            raise ConfigError(f"TLS file {exc.filename} does not exist: check the path") from exc
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"TLS files cannot be used ({exc}): check ca_file, cert_file and key_file"
            ) from exc
        return ctx


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """How one link connects. Stable ``client_id`` so persistent sessions find themselves."""

    host: str
    port: int
    client_id: str
    username: str | None = None
    #: Kept out of repr(), so out of logs and tracebacks.
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 15
    #: Timeout for connect, subscribe and publish round trips.
    timeout_s: float = 5.0
    #: 0 = clean session. Otherwise the broker keeps subscriptions and queued QoS 1
    #: messages this long after a disconnect. Under 3.1.1 any value above 0 asks for a
    #: persistent session (``clean_session=False``); 3.1.1 cannot say how long, so the
    #: broker's own expiry for such sessions applies instead.
    session_expiry_s: int = 0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    #: Incoming messages waiting for the handler; overflow is dropped and counted.
    max_queued_incoming: int = 10_000
    subscriptions: tuple[Subscription, ...] = ()
    will: Will | None = None
    #: Acknowledge QoS 1 messages only when the handler says so (:meth:`MqttLink.ack`),
    #: e.g. after a durable write, so that a crash before it makes the broker redeliver.
    manual_ack: bool = False
    #: Speak TLS to the broker (an ``mqtts://`` address).
    tls: TlsSettings | None = None
    #: ``"5"``, or ``"3.1.1"`` for a broker that speaks nothing newer: no properties
    #: then, neither on CONNECT (session expiry) nor on PUBLISH (message expiry, user
    #: properties).
    protocol: MqttProtocol = "5"
    #: Other listeners of the same broker (a cluster's other nodes) that
    #: :class:`MqttLink` moves to, in turn, whenever a connection fails or is lost. Only
    #: for a broker that keeps a session wherever the client reconnects (NATS keeps it
    #: in JetStream); the lean readers (:mod:`.intake`, :mod:`.ingest`) ignore them.
    fallbacks: tuple[Listener, ...] = ()

    def __post_init__(self) -> None:
        if self.protocol not in ("5", "3.1.1"):
            raise ConfigError(f"MQTT protocol {self.protocol!r}: use '5' or '3.1.1'")

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """Every listener the link may connect to, ``host:port`` first."""
        return (Listener(self.host, self.port), *self.fallbacks)


@dataclass(slots=True)
class LinkStats:
    """Counters a link exposes (metrics and tests read them)."""

    connects: int = 0
    disconnects: int = 0
    received: int = 0
    dropped_incoming: int = 0
    #: Refused as they were read (a device over its budget): acknowledged and dropped.
    refused: int = 0
    handler_errors: int = 0
    published: int = 0
    last_error: str = ""
    errors: list[str] = field(default_factory=list)


def _properties(packet_type: int) -> Properties:
    # paho's Properties constructor carries no annotations; this is the one typed door.
    return Properties(packet_type)  # type: ignore[no-untyped-call]


async def wait_for_connection(
    connected: asyncio.Event, settings: LinkSettings, stats: LinkStats, timeout: float | None
) -> None:
    """Wait for ``connected``; on timeout, a BrokerError that says why (last error)."""
    wait = settings.timeout_s if timeout is None else timeout
    try:
        async with asyncio.timeout(wait):
            await connected.wait()
    except TimeoutError as exc:
        raise BrokerError(
            f"no connection to the broker at {settings.host}:{settings.port} "
            f"after {wait:.0f} s ({stats.last_error or 'not reachable'})"
        ) from exc


def with_access(
    settings: LinkSettings,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: TlsSettings | None = None,
) -> LinkSettings:
    """``settings`` with the given credentials and TLS (None leaves a field as it is)."""
    changes: dict[str, Any] = {}
    if username is not None:
        changes["username"] = username
    if password is not None:
        changes["password"] = password
    if tls is not None:
        changes["tls"] = tls
    return dataclasses.replace(settings, **changes) if changes else settings


def _no_lost_cancel(client: aiomqtt.Client) -> None:
    # aiomqtt 2.x waits for CONNACK, SUBACK, PUBACK and the disconnection with
    # ``asyncio.wait_for``. On Python 3.11 that drops a cancellation which arrives as the
    # awaited future completes (CPython gh-86296, rewritten on ``asyncio.timeout`` in
    # 3.12): the task carries on as if never cancelled and the TaskGroup that cancelled
    # it waits forever (an engine that ignored Ctrl-C; FIELD-NOTES §8). The same wait on
    # ``asyncio.timeout`` cannot lose it. aiomqtt looks ``_wait_for`` up on the instance,
    # so replacing it there changes nothing else; tests/broker/test_client.py holds
    # this adapter to it.
    async def wait_for(fut: Awaitable[Any], timeout: float | None) -> Any:
        limit = client.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(None if limit == math.inf else limit):
                return await fut
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None

    client._wait_for = wait_for  # type: ignore[method-assign]


#: How long a given-up connect's thread is waited for before it is left to close its
#: socket alone (it blocks up to the connect timeout on an unreachable host).
_ABANDON_WAIT_S = 0.5


class _Connect:
    """aiomqtt's blocking connect, run in an executor thread, that can be given up.

    aiomqtt runs ``__aexit__`` only after ``__aenter__`` succeeded, so a connect that
    is cancelled half-way (in the thread, or waiting for CONNACK) leaves its socket
    open, its reader registered, its housekeeping task running and, when the broker
    later drops the connection, a future whose exception nobody retrieves. The thread
    cannot be stopped; this wrapper makes it close what it opened once it finishes,
    if the connection was given up meanwhile.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._connect = client._client_connect
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._running = False
        self._abandoned = False
        #: Set once a connect that finished after it was given up has closed its socket.
        self.closed = asyncio.Event()

    def __call__(self) -> None:  # in the executor thread
        with self._lock:
            if self._given_up():
                return
            self._running = True
        try:
            self._connect()
        finally:
            with self._lock:
                self._running = False
                if self._given_up():  # meanwhile, by the event loop
                    # After the callbacks the connect scheduled (reader, task): FIFO.
                    self._loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        _close(self._client)
        self.closed.set()

    def _given_up(self) -> bool:
        return self._abandoned

    def abandon(self) -> bool:
        """Give the connection up; True if the thread is still connecting (it closes
        the socket itself when it is done)."""
        with self._lock:
            self._abandoned = True
            return self._running


def _close(client: aiomqtt.Client) -> None:
    """Close a connection that nobody will use again, at once and without waiting for
    the broker: the socket (which also unregisters its reader and writer and cancels
    aiomqtt's housekeeping task), and any outcome nobody will read."""
    client._client._sock_close()
    for fut in (client._connected, client._disconnected):
        if fut.done() and not fut.cancelled():
            fut.exception()  # retrieved: no "Future exception was never retrieved"


async def _reap(client: aiomqtt.Client) -> None:
    """Wait until aiomqtt's housekeeping task of ``client`` is gone."""
    task = client._misc_task
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task])


@contextlib.asynccontextmanager
async def _connection(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Client]:
    """``async with client``, leaving nothing behind however it ends, a cancelled or
    failed connect included: no socket, no task, no unretrieved future."""
    connect = _Connect(client)
    client._client_connect = connect  # type: ignore[method-assign]
    _guard_writer(client)
    try:
        await client.__aenter__()
    except BaseException:
        if connect.abandon():
            # The thread is still connecting and closes what it opened when it is done
            # (on loopback, at once): wait for that, briefly, so no task outlives us.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ABANDON_WAIT_S):
                    await connect.closed.wait()
            await _reap(client)
        else:
            await _close_soon(client)
        raise
    try:
        yield client
    except BaseException as exc:
        await client.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    else:
        await client.__aexit__(None, None, None)
    finally:
        await _close_soon(client)


def _guard_writer(client: aiomqtt.Client) -> None:
    """aiomqtt's "register the socket's writer", made safe against a closed socket.

    aiomqtt schedules ``add_writer`` through ``call_soon_threadsafe`` whenever paho has
    bytes to send, capturing the file descriptor then. A publish by another task in the
    same loop turn as a close leaves one scheduled after the socket is closed, and it
    fails with EBADF in the event loop's exception handler (seen under load in the
    cancellation storm). This one looks at the socket when it runs, and does nothing
    once it is closed. The write itself is aiomqtt's: on an error the connection is
    over."""
    loop = client._loop
    paho = client._client

    def register(_paho: Any, _userdata: Any, sock: Any) -> None:
        def write() -> None:
            try:
                paho.loop_write()
            except Exception as exc:  # noqa: BLE001 - as aiomqtt: the link is broken
                if not client._disconnected.done():
                    client._disconnected.set_exception(exc)

        def add() -> None:
            fileno = sock.fileno()
            if fileno != -1:  # closed since it was scheduled: nothing to write to
                loop.add_writer(fileno, write)

        loop.call_soon_threadsafe(add)

    paho.on_socket_register_write = register


async def _close_soon(client: aiomqtt.Client) -> None:
    # aiomqtt registers the socket's writer through call_soon_threadsafe whenever paho
    # has bytes to send (a PUBACK after a read, a PINGREQ from the housekeeping task),
    # so one may be scheduled and not yet run. Closing the socket under it would make
    # it register a file descriptor that is closed. So: stop reading and the
    # housekeeping first (nothing new to send), let what is scheduled run, then close.
    sock = client._client.socket()
    if sock is not None:
        client._loop.remove_reader(sock.fileno())
    await _reap(client)
    await asyncio.sleep(0)
    _close(client)


class _RecoveredFilter(logging.Filter):
    """Errors aiomqtt and paho log for what the link recovers from, kept at DEBUG.

    * "Unexpected message ID": aiomqtt logs a SUBACK or UNSUBACK whose wait was given
      up (cancelled, or timed out before a reconnect) as an exception with a traceback.
      Nobody waits for that answer any more.
    * "failed to receive on socket": paho logs a connection the broker reset (a broker
      restarted, or a reload that disconnects a changed account) as an error. The link
      reconnects by itself and logs the loss, with its reason, at INFO.
    """

    _PREFIXES = ("Unexpected message ID", "failed to receive on socket")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self._PREFIXES):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = record.exc_text = None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_RECOVERED = _RecoveredFilter()


def _enable_manual_ack(client: aiomqtt.Client) -> None:
    # aiomqtt 2.x builds its paho client without manual_ack and acknowledges QoS 1
    # messages before the application sees them. paho's own switch is public; reaching
    # aiomqtt's paho client is not. The functions from `_no_lost_cancel` to `_flush`
    # are the only places that reach into aiomqtt (tests/broker/test_client.py proves
    # redelivery without an ack).
    client._client.manual_ack_set(True)


def _send_ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    client._client.ack(message.mid, message.qos)


class _Puback(asyncio.Event):
    """aiomqtt marks a QoS 1 publish acknowledged by calling ``set()`` on the entry it
    keeps under the message id. This entry also resolves a future, so whoever waits for
    the PUBACK needs neither a coroutine nor a task per message."""

    def __init__(self, future: asyncio.Future[None]) -> None:
        super().__init__()
        self.future = future

    def set(self) -> None:
        super().set()
        if not self.future.done():
            self.future.set_result(None)


def _publish_nowait(
    client: aiomqtt.Client, topic: str, payload: bytes, qos: int, props: Properties | None
) -> tuple[asyncio.Future[None], Callable[[], None]]:
    # aiomqtt's publish() is a coroutine: its packet is queued only once the task that
    # runs it gets a turn of the loop, and the socket written one turn later still. For
    # commands that is two turns behind whatever else is ready (a telemetry batch). Here
    # the packet goes into paho's queue at once, with aiomqtt's own PUBACK bookkeeping
    # (its pending-publish table) so its callbacks and message-id checks stay right.
    # `tests/broker/test_client.py` holds this adapter to that.
    info = client._client.publish(topic, payload, qos, False, props)
    if info.rc != MQTT_ERR_SUCCESS:
        raise BrokerError(f"publish to {topic} failed: {error_string(info.rc)}")
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if qos == 0 or info.is_published():
        future.set_result(None)
        return future, _nothing
    pending = client._pending_publishes
    if info.mid in pending:  # 65,535 messages in flight on one connection
        raise BrokerError(f"publish to {topic} failed: message id {info.mid} still in flight")
    entry = pending[info.mid] = _Puback(future)

    def release() -> None:
        if pending.get(info.mid) is entry:
            del pending[info.mid]

    return future, release


def _flush(client: aiomqtt.Client) -> None:
    # paho's public loop_write(): send what is queued now. Errors are paho's to handle
    # (a lost connection ends aiomqtt's message loop, and the link reconnects).
    paho = client._client
    paho.loop_write()
    if not paho.want_write():
        # paho asked aiomqtt for a write callback when the packet was queued, and aiomqtt
        # adds it at the loop's next turn (call_soon_threadsafe), after paho has already
        # withdrawn it here. Left alone, that callback would find nothing to write and
        # never be removed: a busy loop on an always-writable socket. Queued behind it:
        asyncio.get_running_loop().call_soon(_drop_idle_writer, paho)


def _drop_idle_writer(paho: mqtt.Client) -> None:
    sock = paho.socket()
    if sock is not None and not paho.want_write():
        asyncio.get_running_loop().remove_writer(sock.fileno())


def _nothing() -> None:
    return None


@dataclass(slots=True, eq=False)
class InFlight:
    """A message :meth:`MqttLink.publish_nowait` handed to the connection."""

    topic: str
    future: asyncio.Future[None]
    #: Event-loop time by which the broker must have acknowledged it.
    deadline: float
    _release: Callable[[], None]
    _stats: LinkStats

    @classmethod
    def acknowledged(cls, topic: str, stats: LinkStats) -> InFlight:
        """One already acknowledged (a stand-in link with no broker behind it)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return cls(topic, done, math.inf, _nothing, stats)

    async def confirmed(self) -> None:
        """Wait for the broker's PUBACK, until the deadline; ``BrokerError`` if none."""
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await self.future
        except TimeoutError as exc:
            raise BrokerError(f"publish to {self.topic} not acknowledged by the broker") from exc
        finally:
            self._release()
        self._stats.published += 1


class _Inbox:
    """Where aiomqtt puts a link's incoming messages, read without a task per message.

    aiomqtt's message iterator creates a task and an ``asyncio.wait`` for every message:
    each one costs two turns of the event loop, and a turn of a busy engine includes a
    telemetry batch. At 100,000 devices that made the control link slower than the acks
    and events arriving on it, and triggers queued for seconds (docs/PERFORMANCE.md).
    Here the link drains every message already queued in one turn, and when the queue
    is empty it waits on one future that the next message, or the disconnection,
    resolves. aiomqtt is given the queue class (its public ``queue_type``); the one
    private thing read is its disconnection future, in :func:`_disconnected`.
    """

    def __init__(self, stats: LinkStats) -> None:
        self.stats = stats
        self.queue: asyncio.Queue[aiomqtt.Message] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        inbox = self

        class InboxQueue(asyncio.Queue[aiomqtt.Message]):
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                inbox.queue = self  # one per connection: aiomqtt builds one per client

            def put_nowait(self, item: aiomqtt.Message) -> None:
                try:
                    super().put_nowait(item)
                except asyncio.QueueFull:
                    inbox.stats.dropped_incoming += 1  # aiomqtt only logs it
                    raise
                inbox.wake()

        return InboxQueue

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def batches(
        self, client: aiomqtt.Client, most: int
    ) -> AsyncGenerator[list[aiomqtt.Message], None]:
        """Every message queued, at most ``most`` at a time; ``MqttError`` on disconnect."""
        queue = self.queue
        if queue is None:
            raise RuntimeError("the inbox queue is made by the aiomqtt client")
        gone = _disconnected(client)
        gone.add_done_callback(lambda _: self.wake())
        loop = asyncio.get_running_loop()
        while True:
            while queue.empty():
                if gone.done():
                    cause = None if gone.cancelled() else gone.exception()
                    raise aiomqtt.MqttError("disconnected while waiting for messages") from cause
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            yield [queue.get_nowait() for _ in range(min(most, queue.qsize()))]


def _disconnected(client: aiomqtt.Client) -> asyncio.Future[None]:
    # What aiomqtt's own message iterator races each message against.
    return client._disconnected


class MqttLink:
    """One reconnecting MQTT connection. Create it inside the running event loop."""

    def __init__(
        self,
        settings: LinkSettings,
        handler: Handler | None = None,
        *,
        on_connect: OnConnect | None = None,
    ) -> None:
        self._settings = settings
        self._rotation = self._rotation_of(settings)
        self.stats = LinkStats()
        self._handler = handler
        self._on_connect = on_connect
        self._client: aiomqtt.Client | None = None
        self._inbox = _Inbox(self.stats)
        self._connected = asyncio.Event()
        # aiomqtt's own drop warning is replaced by our counter; keep its log quiet.
        self._mqtt_log = logging.getLogger(f"actimesh.mqtt.{settings.client_id}")
        self._mqtt_log.addFilter(_RECOVERED)

    @staticmethod
    def _rotation_of(settings: LinkSettings) -> Rotation:
        return Rotation(
            settings.listeners, initial_s=settings.backoff_initial_s, max_s=settings.backoff_max_s
        )

    @property
    def settings(self) -> LinkSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: LinkSettings) -> None:
        """New settings, for the next connection. Whoever places a link once its broker
        is known (a cluster's node) sets them after construction: the rotation follows
        the new listeners, or the link would keep trying the old ones."""
        old = self._settings
        self._settings = settings
        if (settings.listeners, settings.backoff_initial_s, settings.backoff_max_s) != (
            old.listeners,
            old.backoff_initial_s,
            old.backoff_max_s,
        ):
            self._rotation = self._rotation_of(settings)

    @property
    def name(self) -> str:
        return self.settings.client_id

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def listener(self) -> Listener:
        """The listener the link is connected to, or tries next."""
        return self._rotation.current

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the link is connected and subscribed."""
        await wait_for_connection(self._connected, self.settings, self.stats, timeout)

    def reconfigure(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
    ) -> None:
        """Credentials or TLS for the next connection (given values only).

        For components that build their links themselves from host and port: whoever
        provisions their account hands it over this way before ``run()``.
        """
        self.settings = with_access(self.settings, username=username, password=password, tls=tls)

    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        session: dict[str, Any]
        if s.protocol == "3.1.1":
            # No session expiry in 3.1.1: a persistent session lives as long as the
            # broker keeps such sessions.
            session = {
                "protocol": aiomqtt.ProtocolVersion.V311,
                "clean_session": s.session_expiry_s == 0,
            }
        else:
            connect_props: Properties | None = None
            if s.session_expiry_s > 0:
                connect_props = _properties(PacketTypes.CONNECT)
                connect_props.SessionExpiryInterval = s.session_expiry_s
            session = {
                "protocol": aiomqtt.ProtocolVersion.V5,
                "clean_start": s.session_expiry_s == 0,
                "properties": connect_props,
            }
        will = None
        if s.will is not None:
            will = aiomqtt.Will(s.will.topic, s.will.payload, s.will.qos, s.will.retain)
        listener = self._rotation.current
        client = aiomqtt.Client(
            listener.host,
            listener.port,
            identifier=s.client_id,
            username=s.username,
            password=s.password,
            **session,
            keepalive=s.keepalive_s,
            timeout=s.timeout_s,
            will=will,
            socket_options=[_NODELAY],
            tls_context=None if s.tls is None else s.tls.context(),
            queue_type=self._inbox.queue_type(),
            max_queued_incoming_messages=s.max_queued_incoming,
            logger=self._mqtt_log,
        )
        # Commands fan out concurrently; aiomqtt warns above 10 pending calls by default.
        client.pending_calls_threshold = 10_000
        _no_lost_cancel(client)
        if s.manual_ack:
            _enable_manual_ack(client)
        return client

    async def run(self) -> None:
        """Connect, subscribe, dispatch; on any connection loss back off and reconnect
        (to the next listener, when there are several)."""
        while True:
            try:
                async with _connection(self._make_client()) as client:
                    self._client = client
                    self.stats.connects += 1
                    for sub in self.settings.subscriptions:
                        await client.subscribe(sub.topic, sub.qos, timeout=self.settings.timeout_s)
                    if self._on_connect is not None:
                        try:
                            await self._on_connect(self)
                        except BrokerError as exc:
                            # Its publish not acknowledged in time (a cluster electing
                            # the leader of the store behind it): connect again, never die.
                            raise aiomqtt.MqttError(f"on connect: {exc}") from exc
                    self._connected.set()
                    self._rotation.connected()
                    log.debug("%s connected to %s", self.settings.client_id, self.listener)
                    async for batch in self._inbox.batches(client, _BATCH):
                        for message in batch:
                            await self._dispatch(message)
                        if len(batch) == _BATCH:
                            await asyncio.sleep(0)  # a flood must not starve the loop
            except aiomqtt.MqttError as exc:
                self.stats.last_error = str(exc)
                log.info(
                    "%s: connection to %s lost: %s", self.settings.client_id, self.listener, exc
                )
            finally:
                if self._connected.is_set():
                    self.stats.disconnects += 1
                self._connected.clear()
                self._client = None
            # Jitter keeps a fleet that lost the broker at once from reconnecting at once.
            await asyncio.sleep(self._rotation.failed())

    def ack(self, message: aiomqtt.Message, origin: aiomqtt.Client | None) -> bool:
        """Acknowledge ``message`` (manual-ack links). ``origin`` is :attr:`current_client`
        as it was when the message arrived: an ack belongs to the connection that carried
        the message, and after a reconnect the broker redelivers instead. False if the
        connection is gone (the message will come again; handlers dedupe)."""
        if message.qos == 0 or origin is None or origin is not self._client:
            return False
        _send_ack(origin, message)
        return True

    @property
    def current_client(self) -> aiomqtt.Client | None:
        """The live aiomqtt client, or None between connections."""
        return self._client

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        self.stats.received += 1
        if self._handler is None:
            return
        try:
            await self._handler(message)
        except Exception as exc:  # one bad message must not stop the link (not CancelledError)
            self.stats.handler_errors += 1
            self.stats.errors = [*self.stats.errors[-9:], f"{message.topic}: {exc!r}"]
            log.exception("handler failed on %s", message.topic)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: float | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> None:
        """Publish, waiting (bounded) for a connection and, for QoS 1, the PUBACK."""
        wait = self.settings.timeout_s if timeout is None else timeout
        props = self._publish_properties(expiry_s, user_properties)  # refused before waiting
        client = self._client  # set once connected, before subscriptions and on_connect
        if client is None:
            await self.wait_connected(wait)
            client = self._client
            if client is None:  # lost again in between
                raise BrokerError(f"not connected to {self.settings.host}:{self.settings.port}")
        try:
            await client.publish(
                topic, payload, qos=qos, retain=retain, properties=props, timeout=wait
            )
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"publish to {topic} failed: {exc}") from exc
        self.stats.published += 1

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        expiry_s: float | None = None,
        timeout: float | None = None,
    ) -> InFlight:
        """Queue a message on the live connection without waiting for anything.

        For the latency-critical path (commands): call :meth:`flush` after queuing a
        batch and the packets leave in this turn of the event loop. The PUBACK is
        awaited separately, with :meth:`InFlight.confirmed` (bounded by ``timeout``).
        ``BrokerError`` at once if the link is down.
        """
        client = self._client
        if client is None:
            raise BrokerError(f"not connected to {self.settings.host}:{self.settings.port}")
        wait = self.settings.timeout_s if timeout is None else timeout
        props = self._publish_properties(expiry_s, ())
        future, release = _publish_nowait(client, topic, payload, qos, props)
        deadline = asyncio.get_running_loop().time() + wait
        return InFlight(topic, future, deadline, release, self.stats)

    def flush(self) -> None:
        """Write what :meth:`publish_nowait` queued now, not at the loop's next turn."""
        client = self._client
        if client is not None:
            _flush(client)

    def _publish_properties(
        self, expiry_s: float | None, user_properties: Sequence[tuple[str, str]]
    ) -> Properties | None:
        if self.settings.protocol == "5":
            return _publish_properties(expiry_s, user_properties)
        # 3.1.1 has no properties. A message expiry is only a broker-side shortcut
        # (commands carry their own signed ``exp``); user properties are content.
        if user_properties:
            raise BrokerError(
                f"{self.settings.client_id} speaks MQTT 3.1.1, which cannot carry user "
                "properties: send them in the payload, or connect with MQTT 5"
            )
        return None


def _publish_properties(
    expiry_s: float | None, user_properties: Sequence[tuple[str, str]]
) -> Properties | None:
    if expiry_s is None and not user_properties:
        return None
    if not user_properties:
        return _expiry_properties(max(1, int(expiry_s or 0)))
    props = _properties(PacketTypes.PUBLISH)
    if expiry_s is not None:
        props.MessageExpiryInterval = max(1, int(expiry_s))
    props.UserProperty = list(user_properties)
    return props


class _PackedOnce(Properties):
    """Properties that pack themselves once. paho packs a message's properties on every
    publish, walking all 27 property names (~25 µs for one message expiry, measured:
    docs/PERFORMANCE.md); commands all carry one of a few expiries. Never changed
    after they are built, so the packed bytes stay right."""

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = bytes(super().pack())  # type: ignore[no-untyped-call]
            object.__setattr__(self, "_packed", packed)
        return packed


@functools.lru_cache(maxsize=64)
def _expiry_properties(seconds: int) -> Properties:
    props = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = seconds
    return props


def as_bytes(payload: Any) -> bytes:
    """aiomqtt types payloads loosely; MQTT payloads we accept are bytes."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return b""
