"""An in-process bus: the :class:`~actimesh.broker.transport.Transport` with no broker.

For unit tests and for tools that drive a real engine without a network (the fuzzer):
a device's message is handed to the subscribed links by :meth:`MemoryBus.deliver`,
which returns once their handlers have run, so a test is deterministic without waiting
on anything. What the service publishes goes to the listeners given to
:meth:`MemoryBus.listen`, in order, and is accepted at once.

It keeps the contract of the real links: control messages pass the link's ``admit``
first (a refused one is acknowledged and dropped), are handed over as
:class:`~actimesh.broker.intake.Delivery` objects the handler must acknowledge, and
every acknowledgement is accounted for (:attr:`MemoryBus.unacknowledged`,
:attr:`MemoryBus.stray_acks`). Stream messages are handed over as ``(topic, payload)``.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Sequence

from actimesh.broker.client import InFlight, LinkStats, Subscription, Will
from actimesh.broker.intake import Admit, Delivery
from actimesh.broker.transport import ControlHandler, OnConnect, StreamHandler
from actimesh.errors import BrokerError

__all__ = ["MemoryBus", "topic_matches"]

#: Receives what a service published: ``(topic, payload)``.
Listener = Callable[[str, bytes], None]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Does ``topic`` match an MQTT ``topic_filter`` (``+``, ``#``, ``$share/<group>/``)?"""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    want, have = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level not in ("+", have[i])):
            return False
    return len(want) == len(have)


class _Link:
    """What every link of the bus has: a name, counters and a connection that is up
    while :meth:`run` runs."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._stats = LinkStats()
        self._connected = asyncio.Event()

    @property
    def name(self) -> str:
        return self._name

    @property
    def stats(self) -> LinkStats:
        return self._stats

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError as exc:
            raise BrokerError(f"{self._name} not connected within {timeout} s") from exc

    async def _connect(self) -> None:
        self._stats.connects += 1
        self._connected.set()

    async def run(self) -> None:
        await self._connect()
        try:
            await asyncio.Future()  # until cancelled
        finally:
            self._connected.clear()


class _Outbound(_Link):
    def __init__(
        self, bus: MemoryBus, name: str, will: Will | None, on_connect: OnConnect | None
    ) -> None:
        super().__init__(name)
        self._bus = bus
        #: What a broker would publish if this link were lost (for tests to check).
        self.will = will
        self._on_connect = on_connect

    async def _connect(self) -> None:
        await super()._connect()
        if self._on_connect is not None:
            await self._on_connect(self)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        del qos, retain  # accepted at once and never kept: nothing to wait for
        self._send(topic, payload)

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, expiry_s: float | None = None
    ) -> InFlight:
        del qos, expiry_s  # delivered at once: it cannot expire on the way
        self._send(topic, payload)
        return InFlight.acknowledged(topic, self._stats)

    def flush(self) -> None:
        return None

    def _send(self, topic: str, payload: bytes) -> None:
        if not self.connected:
            raise BrokerError(f"{self._name} is not connected")
        self._stats.published += 1
        self._bus.published(topic, payload)


class _Inbound(_Link, abc.ABC):
    def __init__(self, bus: MemoryBus, name: str, subscriptions: Sequence[Subscription]) -> None:
        super().__init__(name)
        self._bus = bus
        self.filters = tuple(s.topic for s in subscriptions)

    def wants(self, topic: str) -> bool:
        return self.connected and any(topic_matches(f, topic) for f in self.filters)

    def group_for(self, topic: str) -> str | None:
        """The share group through which this link takes ``topic``; None when one of its
        plain subscriptions takes it (then it gets every such message)."""
        groups = [f.split("/", 2)[1] for f in self.filters if topic_matches(f, topic)]
        plain = [f for f in self.filters if not f.startswith("$share/") and topic_matches(f, topic)]
        return None if plain or not groups else groups[0]

    @abc.abstractmethod
    async def take(self, topic: bytes, payload: bytes) -> None:
        """Hand one message to the link's handler."""


class _Control(_Inbound):
    def __init__(
        self,
        bus: MemoryBus,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: ControlHandler,
        admit: Admit,
    ) -> None:
        super().__init__(bus, name, subscriptions)
        self._handler = handler
        self._admit = admit
        #: How long the service asked the bus to keep its session (for tests to check).
        self.session_expiry_s = 0

    async def take(self, topic: bytes, payload: bytes) -> None:
        self._stats.received += 1
        if self._admit(topic, payload) is None:
            self._stats.refused += 1  # acknowledged at once, as the real intake does
            return
        packet_id = self._bus.outstanding()
        delivery = Delivery(topic.decode(errors="replace"), payload, packet_id, self._bus)
        await self._handler([delivery])


class _Stream(_Inbound):
    def __init__(
        self,
        bus: MemoryBus,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: StreamHandler,
    ) -> None:
        super().__init__(bus, name, subscriptions)
        self._handler = handler
        #: The queue bound the service asked for; handed over at once, nothing queues.
        self.max_queued = 0

    async def take(self, topic: bytes, payload: bytes) -> None:
        self._stats.received += 1
        await self._handler([(topic, payload)])


class MemoryBus:
    """A :class:`~actimesh.broker.transport.Transport` that delivers in-process."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._inbound: dict[str, _Inbound] = {}
        self._next_id = 0
        self._turns: dict[str, int] = {}
        #: Packet ids handed to a control handler and not acknowledged yet.
        self.unacknowledged: set[int] = set()
        #: Acknowledgements of a message already acknowledged (a handler's bug).
        self.stray_acks = 0

    # ------------------------------------------------------------------ the service's side
    def outbound(
        self, name: str, *, will: Will | None = None, on_connect: OnConnect | None = None
    ) -> _Outbound:
        return _Outbound(self, name, will, on_connect)

    def control(
        self,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: ControlHandler,
        *,
        admit: Admit,
        session_expiry_s: int = 0,
    ) -> _Control:
        link = _Control(self, name, subscriptions, handler, admit)
        link.session_expiry_s = session_expiry_s
        self._inbound[name] = link
        return link

    def stream(
        self,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: StreamHandler,
        *,
        max_queued: int,
    ) -> _Stream:
        link = _Stream(self, name, subscriptions, handler)
        link.max_queued = max_queued
        self._inbound[name] = link
        return link

    # ------------------------------------------------------------------ the devices' side
    def listen(self, listener: Listener) -> None:
        """Call ``listener(topic, payload)`` for every message a service publishes."""
        self._listeners.append(listener)

    def published(self, topic: str, payload: bytes) -> None:
        for listener in self._listeners:
            listener(topic, payload)

    async def deliver(self, topic: str, payload: bytes) -> int:
        """Hand a device's message to every connected link subscribed to ``topic`` and
        wait for their handlers; how many links took it. Links that take it through the
        same share group (``$share/<group>/...``) are one member each: the message goes
        to one of them, in turn, as a broker shares it."""
        links: list[_Inbound] = []
        members: dict[str, list[_Inbound]] = {}
        for link in self._inbound.values():
            if link.wants(topic):
                group = link.group_for(topic)
                if group is None:
                    links.append(link)
                else:
                    members.setdefault(group, []).append(link)
        for group, shared in members.items():
            turn = self._turns.get(group, 0)
            self._turns[group] = turn + 1
            links.append(shared[turn % len(shared)])
        for link in links:
            await link.take(topic.encode(), payload)
        return len(links)

    async def hand(self, name: str, topic: bytes, payload: bytes) -> None:
        """Hand a message to the link called ``name`` as it would read it off the wire,
        whatever its topic (a fuzzer's malformed ones too), and wait for its handler."""
        link = self._inbound.get(name)
        if link is None:
            raise BrokerError(f"no link called {name!r} on this bus")
        await link.take(topic, payload)

    def outstanding(self) -> int:
        """A new packet id, counted as unacknowledged until :meth:`puback`."""
        self._next_id = self._next_id % 0xFFFF + 1
        self.unacknowledged.add(self._next_id)
        return self._next_id

    def puback(self, packet_id: int) -> bool:
        """Acknowledge a control message (the :class:`~actimesh.broker.intake.Acker`)."""
        try:
            self.unacknowledged.remove(packet_id)
        except KeyError:
            self.stray_acks += 1
        return True
