"""The dispatch's MQTT side: what it subscribes to, and the dispatcher zones it publishes.

The dispatch is a client of the broker like any other component, with two links so a
telemetry flood cannot delay an activation record:

* ``<agency>-dispatch-<console>-ctl`` — activation records, presence, acknowledgements,
  engine alerts and engine status (QoS 1). A **persistent session** under that stable client id: the
  broker keeps the subscriptions and queues activation records while the dispatch is
  down, and delivers them when it comes back (the ledger reconciler covers the rest).
  Dispatcher zones are published on this link too.
* ``<agency>-dispatch-<console>-tm`` — telemetry (QoS 0, clean session, bounded queue
  whose overflow is counted): positions are stale the moment they are late. With
  ``owntracks``, the OwnTracks app's locations (``owntracks/<device id>/<phone>``) too,
  read with the engine's parser (adapters/owntracks.py): a device placed only by an
  officer's phone is on the map like any other, its known state kept.

Bad payloads are counted by reason and skipped; the engine already dead-letters them.

On a NATS cluster both links are given every node's MQTT listener and move to the next
node when theirs is lost (:mod:`actimesh.broker.failover`). What the dispatch missed
meanwhile comes as it does after a reconnect to Mosquitto: the ``-ctl`` session, kept
in JetStream on three nodes, delivers the activation records, presence and
acknowledgements queued for it; subscribing again brings the retained presence; engine
status is renewed within its ttl. An activation record the bus did not carry at all
(the engine's publish lost while the cluster elected a new leader for its store) is
in the ledger: :attr:`Feed.reconnected` wakes the service's catch-up, which reads it
from there (``DispatchService._catch_up``). Telemetry in between is lost, as on
Mosquitto: the next fix replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import aiomqtt

from actimesh.adapters.owntracks import (
    OWNTRACKS_FILTER,
    OWNTRACKS_ROOT,
    owntracks_device,
    parse_owntracks,
)
from actimesh.broker.client import MqttLink, Subscription, as_bytes
from actimesh.broker.codec import MAX_ACTIVATION_BYTES, decode, encode
from actimesh.broker.messages import (
    Ack,
    Activation,
    Alert,
    EngineStatus,
    Event,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.broker.topics import DeviceChannel, Topics, is_identifier
from actimesh.broker.transport import MqttTransport
from actimesh.dispatch.settings import DispatchSettings
from actimesh.dispatch.state import LiveState
from actimesh.errors import PayloadError

__all__ = ["ZONE_EVENT_TYPE", "Feed", "ZoneOrder"]

log = logging.getLogger(__name__)

#: The engine's rule for dispatcher-initiated activations (radius from the event).
ZONE_EVENT_TYPE = "dispatch_zone"

_OWNTRACKS_HEAD = f"{OWNTRACKS_ROOT}/"

OnActivation = Callable[[Activation, bool], Awaitable[None]]


class ZoneOrder:
    """A dispatcher zone as published: the ids to find its activation by."""

    __slots__ = ("aid", "eid", "event", "source")

    def __init__(self, source: str, event: Event) -> None:
        self.source = source
        self.event = event
        self.eid = event.eid
        self.aid = activation_id(source, event.eid)


class Feed:
    """MQTT links feeding the live state. Create inside the running loop; ``await run()``."""

    def __init__(
        self,
        *,
        topics: Topics,
        transport: MqttTransport,
        settings: DispatchSettings,
        state: LiveState,
        changed: asyncio.Event,
        urgent: asyncio.Event,
        on_activation: OnActivation,
        clock: Callable[[], float] = time.time,
        owntracks: bool = False,
    ) -> None:
        self.topics = topics
        self.settings = settings
        self.state = state
        self.changed = changed
        #: Set with ``changed`` for what a dispatcher must see at once (activations,
        #: acknowledgements, alerts, presence); telemetry alone waits for the next frame.
        self.urgent = urgent
        self.on_activation = on_activation
        self.clock = clock
        self.rejected: Counter[str] = Counter()
        #: Set each time the control link connects again after it was lost.
        self.reconnected = asyncio.Event()
        self._engine_prefix = f"{topics.prefix}/engine/"
        self._activation_prefix = f"{topics.prefix}/activations/"
        self._alert_prefix = f"{topics.prefix}/alerts/"
        base = f"{topics.agency}-dispatch-{settings.console_id}"
        self.ctl = MqttLink(
            transport.settings(
                f"{base}-ctl",
                Subscription(topics.all_activations, 1),
                Subscription(topics.all_devices(DeviceChannel.PRESENCE), 1),
                Subscription(topics.all_devices(DeviceChannel.ACK), 1),
                Subscription(f"{self._engine_prefix}+/status", 1),
                Subscription(topics.all_alerts, 1),
                session_expiry_s=settings.session_expiry_s,
            ),
            self._on_control,
            on_connect=self._on_ctl_connect,
        )
        positions = [Subscription(topics.all_devices(DeviceChannel.TELEMETRY), 0)]
        if owntracks:
            positions.append(Subscription(OWNTRACKS_FILTER, 0))
        self.telemetry_link = MqttLink(
            transport.settings(
                f"{base}-tm",
                *positions,
                max_queued_incoming=settings.telemetry_queue,
            ),
            self._on_telemetry,
        )

    @property
    def connected(self) -> bool:
        return self.ctl.connected and self.telemetry_link.connected

    @property
    def listener(self) -> str:
        """The MQTT listener (``host:port``) activations are read from, or tried next."""
        return str(self.ctl.listener)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.ctl.run(), name=self.ctl.settings.client_id)
            tg.create_task(self.telemetry_link.run(), name=self.telemetry_link.settings.client_id)

    async def _on_ctl_connect(self, link: MqttLink) -> None:
        if link.stats.connects > 1:
            self.reconnected.set()

    async def wait_connected(self, timeout: float) -> None:
        await self.ctl.wait_connected(timeout)
        await self.telemetry_link.wait_connected(timeout)

    # ------------------------------------------------------------------ intake
    def _reject(self, topic: str, exc: PayloadError) -> None:
        self.rejected[exc.reason] += 1
        log.debug("dispatch skipped %s: %s", topic, exc)

    async def _on_telemetry(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        if topic.startswith(_OWNTRACKS_HEAD):
            self._on_owntracks(topic, as_bytes(message.payload))
            return
        parsed = self.topics.parse_device(topic)
        if parsed is None or parsed.channel is not DeviceChannel.TELEMETRY:
            return
        try:
            msg = decode(Telemetry, as_bytes(message.payload))
        except PayloadError as exc:
            self._reject(topic, exc)
            return
        self.state.telemetry(parsed.device_id, msg, self.clock())
        self.changed.set()

    def _on_owntracks(self, topic: str, payload: bytes) -> None:
        """An OwnTracks location moves its device; the app's last will does nothing;
        anything else is skipped and counted (the engine dead-letters it)."""
        try:
            device_id = owntracks_device(topic.encode())
            fix = parse_owntracks(payload)
        except PayloadError as exc:
            self._reject(topic, exc)
            return
        if fix is None:
            return
        self.state.tracker_fix(
            device_id, (fix.ts, fix.lat, fix.lon, fix.acc, fix.batt), self.clock()
        )
        self.changed.set()

    async def _on_control(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = as_bytes(message.payload)
        try:
            if topic.startswith(self._activation_prefix):
                await self._activation(payload)
            elif topic.startswith(self._alert_prefix):
                self.state.engine_alert(decode(Alert, payload))
            elif topic.startswith(self._engine_prefix):
                engine_id = topic[len(self._engine_prefix) :].split("/", 1)[0]
                if is_identifier(engine_id):
                    msg = decode(EngineStatus, payload) if payload else None
                    self.state.engine_status(engine_id, msg, self.clock())
            else:
                parsed = self.topics.parse_device(topic)
                if parsed is None:
                    return
                if parsed.channel is DeviceChannel.PRESENCE:
                    presence = decode(Presence, payload) if payload else None
                    self.state.presence(parsed.device_id, presence, self.clock())
                elif parsed.channel is DeviceChannel.ACK:
                    self.state.ack(parsed.device_id, decode(Ack, payload), self.clock())
        except PayloadError as exc:
            self._reject(topic, exc)
            return
        self.urgent.set()
        self.changed.set()

    async def _activation(self, payload: bytes) -> None:
        record = decode(Activation, payload, max_bytes=MAX_ACTIVATION_BYTES)
        new = self.state.activation(record, self.clock())
        # The map first (it only needs memory), then the durable outbox.
        self.urgent.set()
        self.changed.set()
        await self.on_activation(record, new)

    # ------------------------------------------------------------------ zones
    async def publish_zone(
        self, *, lat: float, lon: float, radius_m: float, dispatcher: str, call_id: str | None
    ) -> ZoneOrder:
        """Publish a ``dispatch_zone`` event; the engine activates it like any trigger."""
        source = self.settings.source_device
        eid = call_id if call_id is not None else f"zone-{uuid.uuid4().hex}"
        event = Event(
            eid=eid,
            type=ZONE_EVENT_TYPE,
            ts=self.clock(),
            lat=lat,
            lon=lon,
            radius=radius_m,
            by=dispatcher,
        )
        await self.ctl.publish(self.topics.event(source), encode(event), qos=1)
        return ZoneOrder(source, event)
