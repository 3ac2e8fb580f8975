"""Device agents: one device on the mesh, with its own MQTT connection.

An agent announces itself with a retained presence message (kind, unit, paired devices)
and leaves a last will that marks it offline, publishes telemetry about once a second,
and, for cameras, answers activation commands. Sensors (cruiser gateway, CEW) raise
trigger events.

**Local first.** A sensor's own paired cameras are activated at once over the local link
(in a real kit: the vehicle bus or Bluetooth), without waiting for the engine; the event
still goes to the engine for the fan-out to everyone else within range. The camera
attaches the engine's later command to the recording already running.

Every agent keeps a persistent MQTT session with a stable client id, so a command sent
while it was briefly disconnected waits in the broker and arrives on reconnect.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiomqtt

from actimesh.broker.client import LinkSettings, MqttLink, Subscription, Will, as_bytes
from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import (
    CAMERA_KINDS,
    Ack,
    AckStatus,
    Command,
    DeviceKind,
    DeviceState,
    Event,
    Presence,
    Telemetry,
)
from actimesh.broker.topics import Topics
from actimesh.devices.camera import ActivationResult, Camera
from actimesh.errors import BrokerError, PayloadError

__all__ = ["AgentStats", "DeviceAgent", "Position", "PositionSource", "ReceivedCommand"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Position:
    """A GPS fix as the device's receiver reports it."""

    lat: float
    lon: float
    acc: float | None = None
    ts: float | None = None  # when the fix was taken; None = now


PositionSource = Callable[[], Position | None]


@dataclass(frozen=True, slots=True)
class ReceivedCommand:
    """A command as a camera received it (the drill reads these to measure latency)."""

    command: Command
    received_at: float
    result: ActivationResult


@dataclass(slots=True)
class AgentStats:
    telemetry_sent: int = 0
    events_sent: int = 0
    commands: int = 0
    rejected_commands: int = 0


class DeviceAgent:
    """One device: a camera (with a :class:`Camera`) or a sensor (gateway, CEW)."""

    def __init__(
        self,
        *,
        topics: Topics,
        device_id: str,
        kind: DeviceKind,
        broker_host: str,
        broker_port: int,
        position: PositionSource,
        unit: str | None = None,
        paired: Sequence[str] = (),
        camera: Camera | None = None,
        local_peers: Sequence[DeviceAgent] = (),
        telemetry_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        username: str | None = None,
        password: str | None = None,
        session_expiry_s: int = 3600,
    ) -> None:
        if (camera is not None) != (kind in CAMERA_KINDS):
            raise ValueError(f"{device_id}: cameras need a Camera and only cameras have one")
        self.topics = topics
        self.device_id = device_id
        self.kind = kind
        self.unit = unit
        self.paired = tuple(paired)
        self.camera = camera
        self.local_peers = tuple(local_peers)
        self.position = position
        self.clock = clock
        self.telemetry_interval_s = telemetry_interval_s
        self.stats = AgentStats()
        self.received: list[ReceivedCommand] = []
        self._events = itertools.count(1)
        self._lock = asyncio.Lock()
        self._boot = uuid.uuid4().hex[:8]
        self._last_event: bytes | None = None
        self._stopped = asyncio.Event()
        offline = encode(Presence(online=False, device_kind=kind, unit=unit))
        subscriptions = (Subscription(topics.command(device_id), 1),) if camera else ()
        self.link = MqttLink(
            LinkSettings(
                host=broker_host,
                port=broker_port,
                client_id=f"{topics.agency}-{device_id}",
                username=username,
                password=password,
                session_expiry_s=session_expiry_s,
                subscriptions=subscriptions,
                will=Will(topics.presence(device_id), offline),
            ),
            self._on_message,
            on_connect=self._announce,
        )

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Run until cancelled or powered off: the MQTT link, telemetry, the media clock.

        Running again after :meth:`power_off` switches the device back on (cold: a camera's
        buffer starts empty, and it reports the shorter pre-roll it can cover).
        """
        self._stopped.clear()
        if self.camera is not None and self.camera.state is DeviceState.OFF:
            self.camera.power_on(self.clock())
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self.link.run(), name=f"{self.device_id}-link"),
                tg.create_task(self._telemetry_loop(), name=f"{self.device_id}-telemetry"),
            ]
            if self.camera is not None:
                media = self._media_loop(self.camera)
                tasks.append(tg.create_task(media, name=f"{self.device_id}-media"))
            await self._stopped.wait()
            for task in tasks:
                task.cancel()

    async def power_off(self) -> None:
        """Switch the device off: it says so (retained presence) and ``run()`` returns.

        A camera that is off has no buffer and cannot be activated.
        """
        if self.camera is not None:
            async with self._lock:
                await asyncio.to_thread(self.camera.power_off, self.clock())
        offline = Presence(online=False, ts=self.clock(), device_kind=self.kind, unit=self.unit)
        await self.link.publish(self.topics.presence(self.device_id), encode(offline), retain=True)
        self._stopped.set()

    async def _announce(self, link: MqttLink) -> None:
        presence = Presence(
            online=True,
            ts=self.clock(),
            device_kind=self.kind,
            unit=self.unit,
            paired=self.paired,
            pre_roll=self.camera.pre_roll_s if self.camera else None,
        )
        await link.publish(self.topics.presence(self.device_id), encode(presence), retain=True)

    def state(self) -> DeviceState:
        return self.camera.state if self.camera is not None else DeviceState.BUFFERING

    def telemetry(self) -> Telemetry:
        """The telemetry message this device would send now."""
        now = self.clock()
        fix = self.position()
        if fix is None:
            return Telemetry(ts=now, state=self.state())
        return Telemetry(
            ts=fix.ts if fix.ts is not None else now,
            lat=fix.lat,
            lon=fix.lon,
            acc=fix.acc,
            state=self.state(),
        )

    async def send_telemetry(self) -> None:
        await self.link.publish(
            self.topics.telemetry(self.device_id), encode(self.telemetry()), qos=0
        )
        self.stats.telemetry_sent += 1

    async def _telemetry_loop(self) -> None:
        while True:
            await self.link.wait_connected(timeout=float("inf"))
            try:
                await self.send_telemetry()
            except BrokerError as exc:
                log.debug("%s: telemetry not sent: %s", self.device_id, exc)
            await asyncio.sleep(self.telemetry_interval_s)

    async def _media_loop(self, camera: Camera) -> None:
        while True:
            async with self._lock:
                await asyncio.to_thread(camera.advance, self.clock())
            await asyncio.sleep(camera.segment_seconds / 2)

    # ------------------------------------------------------------------ triggers
    async def raise_event(
        self,
        event_type: str,
        *,
        at: float | None = None,
        position: Position | None = None,
        radius: float | None = None,
        by: str | None = None,
    ) -> Event:
        """Raise a trigger: paired cameras at once, locally; then the event to the engine."""
        ts = self.clock() if at is None else at
        fix = position if position is not None else self._event_fix()
        event = Event(
            eid=f"{self.device_id}-{self._boot}-{next(self._events)}"[-64:],
            type=event_type,
            ts=ts,
            lat=fix.lat if fix else None,
            lon=fix.lon if fix else None,
            acc=fix.acc if fix else None,
            radius=radius,
            by=by,
        )
        self._last_event = encode(event)
        # Local activation and the fan-out start together: neither waits for the other.
        async with asyncio.TaskGroup() as tg:
            for peer in self.local_peers:
                tg.create_task(peer.activate_locally(event, self.device_id), name="local-link")
            await self.link.publish(self.topics.event(self.device_id), self._last_event, qos=1)
        self.stats.events_sent += 1
        return event

    async def resend_last_event(self) -> None:
        """Publish the last event again, byte for byte (as a sensor retrying would)."""
        if self._last_event is not None:
            await self.link.publish(self.topics.event(self.device_id), self._last_event, qos=1)

    def _event_fix(self) -> Position | None:
        fix = self.position()
        if fix is not None:
            return fix
        # A CEW has no GPS: it borrows the position of a paired device on the local link.
        for peer in self.local_peers:
            peer_fix = peer.position()
            if peer_fix is not None:
                return peer_fix
        return None

    async def activate_locally(self, event: Event, source: str) -> ActivationResult | None:
        """A paired sensor's event over the local link (no broker involved)."""
        if self.camera is None:
            return None
        return await self._activate(
            aid=f"local-{event.eid}"[:64],
            eid=event.eid,
            event_type=event.type,
            source=source,
            event_ts=event.ts,
            pre_roll_s=self.camera.pre_roll_s,
            now=self.clock(),
        )

    async def _activate(
        self,
        *,
        aid: str,
        eid: str,
        event_type: str,
        source: str,
        event_ts: float,
        pre_roll_s: float,
        now: float,
    ) -> ActivationResult:
        """Commit on a worker thread: a camera's disk writes (fsync of every buffered
        segment) must not stall the agent's event loop, which also serves MQTT."""
        camera = self.camera
        assert camera is not None

        def commit() -> ActivationResult:
            camera.advance(now)
            return camera.activate(aid=aid, eid=eid, event_type=event_type, source=source,
                                   event_ts=event_ts, pre_roll_s=pre_roll_s, now=now)  # fmt: skip

        async with self._lock:
            return await asyncio.to_thread(commit)

    # ------------------------------------------------------------------ commands
    async def _on_message(self, message: aiomqtt.Message) -> None:
        if self.camera is None or message.topic.value != self.topics.command(self.device_id):
            return
        received = self.clock()
        try:
            command = decode(Command, as_bytes(message.payload))
        except PayloadError as exc:
            self.stats.rejected_commands += 1
            log.warning("%s: command rejected: %s", self.device_id, exc)
            return
        self.stats.commands += 1
        if command.exp < received:
            ack = Ack(aid=command.aid, status=AckStatus.REFUSED, pre_cov=0.0, ts=received,
                      detail="command expired before it arrived")  # fmt: skip
            await self.link.publish(self.topics.ack(self.device_id), encode(ack), qos=1)
            return
        result = await self._activate(
            aid=command.aid,
            eid=command.eid,
            event_type=command.type,
            source=command.src,
            event_ts=command.ets,
            pre_roll_s=command.pre,
            now=received,
        )
        self.received.append(ReceivedCommand(command, received, result))
        ack = Ack(
            aid=command.aid,
            status=result.status,
            pre_cov=result.pre_roll_covered_s,
            rec=result.recording_id,
            ts=self.clock(),
            detail=result.detail,
        )
        await self.link.publish(self.topics.ack(self.device_id), encode(ack), qos=1)

    async def stop_recording(self) -> None:
        """The officer stops the recording on the device. The mesh itself never does."""
        if self.camera is not None:
            async with self._lock:
                await asyncio.to_thread(self.camera.stop, self.clock())
