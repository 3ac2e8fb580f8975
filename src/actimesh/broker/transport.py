"""The seam between a service and the message bus: what the engine needs of a transport.

The engine, the drills, the fuzzer and the bench talk to the bus only through these
Protocols, so a second bus (a NATS cluster) or an in-process fake
(:mod:`actimesh.broker.memory`) plugs in without touching them:

* an :class:`Outbound` connection publishes, either waiting for the bus's acceptance
  (:meth:`Outbound.publish`) or handing the message over at once and flushing it in
  this turn of the event loop (:meth:`Outbound.publish_nowait` then
  :meth:`Outbound.flush`: the command path);
* an :class:`Inbound` connection hands received messages to its handler in batches:
  *control* messages as :class:`~actimesh.broker.intake.Delivery` objects that the
  handler acknowledges (an event once durable), after a read-time admission that may
  refuse a flooding device before anything is queued; *stream* messages (telemetry) as
  ``(topic, payload)`` pairs, best effort, with a bounded queue;
* a :class:`Transport` opens one service's connections, each under a name of its own
  that the service chooses (stable, so that persistent sessions find themselves).

:class:`MqttTransport` is the implementation for an MQTT broker (Mosquitto): aiomqtt for
what the service publishes, and the lean readers of :mod:`.ingest` and :mod:`.intake`
for what it receives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from actimesh.broker.client import (
    InFlight,
    LinkSettings,
    LinkStats,
    MqttLink,
    MqttProtocol,
    Subscription,
    TlsSettings,
    Will,
)
from actimesh.broker.failover import Listener
from actimesh.broker.ingest import LatestStreamSubscriber, Publish
from actimesh.broker.intake import Admit, ControlSubscriber, Delivery
from actimesh.broker.topics import mqtt_client_id

__all__ = [
    "ControlHandler",
    "Inbound",
    "MqttTransport",
    "OnConnect",
    "Outbound",
    "StreamHandler",
    "Transport",
]

#: Receives a batch of control messages; acknowledges each (:meth:`Delivery.ack`).
ControlHandler = Callable[[Sequence[Delivery]], Awaitable[None]]
#: Receives a batch of stream messages, ``(topic, payload)`` as bytes.
StreamHandler = Callable[[Sequence[Publish]], Awaitable[None]]


class Outbound(Protocol):
    """A connection a service publishes on. ``await run()`` as one task of its group."""

    @property
    def name(self) -> str:
        """The connection's name on the bus (its client id)."""
        ...

    @property
    def stats(self) -> LinkStats: ...

    @property
    def connected(self) -> bool: ...

    async def run(self) -> None:
        """Connect, and reconnect with backoff, until cancelled."""
        ...

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected; :class:`~actimesh.errors.BrokerError` on timeout."""
        ...

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish, waiting (bounded) for a connection and, at QoS 1, the bus's
        acceptance; :class:`~actimesh.errors.BrokerError` if it did not accept it."""
        ...

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, expiry_s: float | None = None
    ) -> InFlight:
        """Hand a message to the live connection without waiting; the bus's acceptance
        is awaited separately (:meth:`InFlight.confirmed`). ``BrokerError`` at once if
        there is no connection. ``expiry_s``: the bus may drop it undelivered after."""
        ...

    def flush(self) -> None:
        """Write what :meth:`publish_nowait` handed over now, not at the loop's next turn."""
        ...


class Inbound(Protocol):
    """A connection a service receives on. ``await run()`` as one task of its group."""

    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> LinkStats: ...

    @property
    def connected(self) -> bool: ...

    async def run(self) -> None: ...

    async def wait_connected(self, timeout: float | None = None) -> None: ...


#: Called on every (re)connection of an outbound link, with the link: announcements.
OnConnect = Callable[[Outbound], Awaitable[None]]


class Transport(Protocol):
    """Opens one service's connections to the bus. Call inside the running loop."""

    def outbound(
        self, name: str, *, will: Will | None = None, on_connect: OnConnect | None = None
    ) -> Outbound:
        """A connection to publish on; ``will`` is published by the bus if it is lost."""
        ...

    def control(
        self,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: ControlHandler,
        *,
        admit: Admit,
        session_expiry_s: int = 0,
    ) -> Inbound:
        """At-least-once messages, each acknowledged by ``handler``. ``admit`` runs as
        each message is read: the source it is queued under (served in turn), or None
        to refuse it at once. With ``session_expiry_s`` what arrives while the service
        is away is kept for it that long."""
        ...

    def stream(
        self,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: StreamHandler,
        *,
        max_queued: int,
    ) -> Inbound:
        """Best-effort messages in batches, counted when shed: on MQTT the newest one
        per topic waits (a newer replaces it), and beyond ``max_queued`` topics waiting
        the longest-waiting is dropped."""
        ...


class MqttTransport:
    """One service's connections to an MQTT broker; a link's name is its client id.

    The broker address, credentials, TLS and MQTT protocol version are given once here,
    so that every link of the service connects the same way. A link's name becomes its
    client id with each ``.`` written ``~`` (:func:`~actimesh.broker.topics.mqtt_client_id`):
    an agency id may hold a dot, and a NATS server refuses one in a client id.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
        protocol: MqttProtocol = "5",
        fallbacks: Sequence[Listener] = (),
    ) -> None:
        self.host = host
        self.protocol: MqttProtocol = protocol
        self.port = port
        #: A cluster's other listeners, which its :class:`MqttLink` links move to in turn
        #: when a connection fails (:mod:`.failover`); the lean readers stay on ``port``.
        self.fallbacks = tuple(fallbacks)
        self.username = username
        self._password = password
        self.tls = tls

    def __repr__(self) -> str:
        return (
            f"MqttTransport({self.host}:{self.port}, user {self.username!r}, MQTT {self.protocol})"
        )

    def settings(self, name: str, *subscriptions: Subscription, **options: Any) -> LinkSettings:
        """The settings of the link called ``name`` (``options``: other LinkSettings)."""
        return LinkSettings(
            host=self.host,
            port=self.port,
            client_id=mqtt_client_id(name),
            username=self.username,
            password=self._password,
            subscriptions=subscriptions,
            tls=self.tls,
            protocol=self.protocol,
            fallbacks=self.fallbacks,
            **options,
        )

    def outbound(
        self, name: str, *, will: Will | None = None, on_connect: OnConnect | None = None
    ) -> MqttLink:
        return MqttLink(self.settings(name, will=will), on_connect=on_connect)

    def control(
        self,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: ControlHandler,
        *,
        admit: Admit,
        session_expiry_s: int = 0,
    ) -> ControlSubscriber:
        settings = self.settings(name, *subscriptions, session_expiry_s=session_expiry_s)
        return ControlSubscriber(settings, handler, admit=admit)

    def stream(
        self,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: StreamHandler,
        *,
        max_queued: int,
    ) -> LatestStreamSubscriber:
        # One waiting message per device: what a stream carries is positions, of which
        # only the newest matters (broker/ingest.py says why the backlog is here).
        settings = self.settings(name, *subscriptions, max_queued_incoming=max_queued)
        # Reads of 32 KiB and batches of 128: every read is parsed, and every batch
        # handled, without a turn of the event loop in between, so each is time a trigger
        # on the control link waits. With 128 KiB and 256 the engine's p99 before its
        # handler was 10 ms against the echo client's 3 at 100,000 motion-scaled devices
        # (docs/PERFORMANCE.md, "Smaller telemetry reads").
        return LatestStreamSubscriber(settings, handler, batch_size=128, read_size=32 * 1024)
