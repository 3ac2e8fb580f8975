"""Device agents: one device on the mesh, with its own MQTT connection.

An agent announces itself with a retained presence message (kind, unit, paired devices)
and leaves a last will that marks it offline, publishes telemetry (about once a second,
or motion-scaled: :mod:`actimesh.devices.reporting`), and, for cameras, answers
activation commands. Sensors (cruiser gateway, CEW) raise trigger events.

What a camera adds (signed commands, the pre-event commit, acknowledgements, the
officer's stop, cancel and stealth) is its
:class:`~actimesh.devices.camera_part.CameraPart`, composed in here:
:class:`~actimesh.devices.control.CameraControl` for a camera,
:class:`~actimesh.devices.camera_part.NoCamera` for a sensor.

**Local first.** A sensor's own paired cameras are activated at once over the local link
(in a real kit: the vehicle bus or Bluetooth), without waiting for the engine; the event
still goes to the engine for the fan-out to everyone else within range. The camera
attaches the engine's later command to the recording already running.

Every agent keeps a persistent MQTT session with a stable client id, so a command sent
while it was briefly disconnected waits in the broker and arrives on reconnect. It speaks
MQTT 5 unless told ``mqtt_protocol="3.1.1"`` (a broker that speaks nothing newer, such
as the NATS cluster's MQTT listener): the session then lasts as long as the broker keeps
such sessions, and nothing else changes, since commands carry their own signed expiry.
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

from actimesh.broker.client import (
    LinkSettings,
    MqttLink,
    MqttProtocol,
    Subscription,
    Will,
    as_bytes,
)
from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import (
    CAMERA_KINDS,
    Confirmation,
    ConfirmStatus,
    DeviceKind,
    DeviceState,
    Event,
    OfflineReason,
    Presence,
    Telemetry,
)
from actimesh.broker.topics import Topics, device_client_id
from actimesh.devices.camera import ActivationResult, Camera, CancelResult
from actimesh.devices.camera_part import CameraPart, CommandStats, MessageHandler, ReceivedCommand
from actimesh.devices.control import make_camera_part
from actimesh.devices.reporting import MAX_SPEED_MPS, MotionReporter, Position, ReportingSettings
from actimesh.devices.slowdown import SlowDownState
from actimesh.errors import BrokerError, PayloadError
from actimesh.security.signing import CommandVerifier

__all__ = ["AgentStats", "DeviceAgent", "Position", "PositionSource"]

log = logging.getLogger(__name__)


PositionSource = Callable[[], Position | None]

#: Messages (commands, confirmations, slow-downs) waiting for their handler, at most;
#: beyond it they are dropped and counted. A dropped command is re-sent by the engine,
#: which has not heard ``received``; a dropped confirmation, by the event's re-send.
_MAX_INBOX = 256


@dataclass(slots=True)
class _Unconfirmed:
    """A trigger event the engine has not confirmed yet."""

    payload: bytes
    first_sent: float
    next_send: float
    attempts: int = 1


@dataclass(slots=True)
class AgentStats(CommandStats):
    """What a device did: its telemetry and trigger events, and (cameras) its commands."""

    telemetry_sent: int = 0
    #: GPS epochs a motion-scaled device stayed quiet (nothing the engine needs changed).
    telemetry_skipped: int = 0
    events_sent: int = 0
    events_resent: int = 0
    events_confirmed: int = 0
    events_rejected: int = 0
    events_abandoned: int = 0
    #: Messages dropped because too many waited for their handler at once.
    messages_dropped: int = 0


class DeviceAgent:
    """One device: a camera (with a :class:`Camera`) or a sensor (gateway, CEW).

    ``verifier`` holds the engine's public key; a camera without one refuses every
    command (fail closed).
    """

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
        verifier: CommandVerifier | None = None,
        local_peers: Sequence[DeviceAgent] = (),
        telemetry_interval_s: float = 1.0,
        reporting: ReportingSettings | None = None,
        clock: Callable[[], float] = time.time,
        username: str | None = None,
        password: str | None = None,
        session_expiry_s: int = 3600,
        resend_initial_s: float = 1.0,
        # Re-sending a few hundred bytes every 2 s is cheap; a long backoff is not: an
        # event handled more than the freshness limit late finds every fix stale.
        resend_max_s: float = 2.0,
        give_up_after_s: float = 1800.0,
        commit_delay_s: float = 0.0,
        mqtt_protocol: MqttProtocol = "5",
    ) -> None:
        if (camera is not None) != (kind in CAMERA_KINDS):
            raise ValueError(f"{device_id}: cameras need a Camera and only cameras have one")
        self.topics = topics
        self.device_id = device_id
        self.kind = kind
        self.unit = unit
        self.paired = tuple(paired)
        self.local_peers = tuple(local_peers)
        self.position = position
        self.clock = clock
        self.telemetry_interval_s = telemetry_interval_s
        #: When telemetry goes out: every epoch (the default) or motion-scaled.
        self.reporter = MotionReporter(reporting or ReportingSettings())
        #: The engine's signed slow-down, checked with the command key (devices/slowdown.py).
        self.slowdown = SlowDownState(topics.agency)
        self.stats = AgentStats()
        #: The camera side: commands, commits and answers, or nothing for a sensor.
        self.control: CameraPart = make_camera_part(
            camera,
            verifier,
            topics=topics,
            device_id=device_id,
            clock=clock,
            stats=self.stats,
            answer=self._answer,
            commit_delay_s=commit_delay_s,
        )
        self._events = itertools.count(1)
        self._boot = uuid.uuid4().hex[:8]
        self._last_event: bytes | None = None
        self._stopped = asyncio.Event()
        offline = encode(
            Presence(
                online=False,
                device_kind=kind,
                unit=unit,
                reason=OfflineReason.CONNECTION_LOST,
            )
        )
        # Every device hears its confirmations; cameras also their commands.
        self._handlers: dict[str, MessageHandler] = {
            topics.confirm(device_id): self._on_confirmation,
            topics.slowdown(): self._on_slowdown,
            **self.control.handlers(),
        }
        # What the link received, for the handlers' own loop (see :meth:`_on_message`).
        self._inbox: asyncio.Queue[tuple[MessageHandler, bytes]] = asyncio.Queue(_MAX_INBOX)
        self._unconfirmed: dict[str, _Unconfirmed] = {}
        self._resend = (resend_initial_s, resend_max_s, give_up_after_s)
        self._outage = asyncio.Event()
        self._outage_s = 0.0
        self.link = MqttLink(
            LinkSettings(
                host=broker_host,
                port=broker_port,
                client_id=device_client_id(topics.agency, device_id),
                username=username,
                password=password,
                session_expiry_s=session_expiry_s,
                subscriptions=tuple(Subscription(topic, 1) for topic in self._handlers),
                will=Will(topics.presence(device_id), offline),
                protocol=mqtt_protocol,
            ),
            self._on_message,
            on_connect=self._announce,
        )

    # ------------------------------------------------------------------ camera side
    @property
    def camera(self) -> Camera | None:
        """The camera core, or None for a sensor."""
        return self.control.camera

    @camera.setter
    def camera(self, camera: Camera) -> None:
        # Only a camera's: a sensor refuses one (ValueError).
        self.control.replace_camera(camera)

    @property
    def verifier(self) -> CommandVerifier | None:
        """The engine's public key the camera checks commands with."""
        return self.control.verifier

    @verifier.setter
    def verifier(self, verifier: CommandVerifier | None) -> None:
        self.control.verifier = verifier

    @property
    def commit_delay_s(self) -> float:
        """Models slow storage: a camera that takes this long before it commits."""
        return self.control.commit_delay_s

    @commit_delay_s.setter
    def commit_delay_s(self, seconds: float) -> None:
        self.control.commit_delay_s = seconds

    @property
    def received(self) -> list[ReceivedCommand]:
        """The commands this camera accepted, as received (none for a sensor)."""
        return self.control.received

    @property
    def unsent_cancels(self) -> int:
        """``cancelled`` answers not yet taken by the broker (re-sent until they are)."""
        return self.control.unsent_cancels

    @property
    def unsent_answers(self) -> int:
        """Final answers not yet taken by the broker (re-sent until they are)."""
        return self.control.unsent_answers

    async def activate_locally(self, event: Event, source: str) -> ActivationResult | None:
        """A paired sensor's event over the local link (no broker involved); None for a
        device without a camera."""
        return await self.control.activate_locally(event, source)

    async def stop_recording(self) -> None:
        """The officer stops the recording on the device. The mesh itself never does."""
        await self.control.stop_recording()

    async def cancel_activation(
        self, aid: str | None = None, *, by: str = "officer"
    ) -> CancelResult | None:
        """The officer ``by`` cancels a false activation on the device (within the window).

        ``aid`` is the activation that started the recording (by default, whichever did).
        When the camera accepts, each engine activation on the cancelled recording is
        answered ``cancelled``; when it refuses (window closed, a recording it was already
        making, nothing recording), nothing is sent. None for a device without a camera.
        """
        return await self.control.cancel_activation(aid, by=by)

    async def set_stealth(self, on: bool) -> bool:
        """The officer turns the recording light off (``on=True``) or back on; False for
        a device without a camera."""
        return await self.control.set_stealth(on)

    async def _answer(self, payload: bytes) -> None:
        await self.link.publish(self.topics.ack(self.device_id), payload, qos=1)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Run until cancelled or powered off: the MQTT link, telemetry, the media clock.

        Running again after :meth:`power_off` switches the device back on (cold: a camera's
        buffer starts empty, and it reports the shorter pre-roll it can cover).
        """
        self._stopped.clear()
        self.control.power_on()
        while not self._inbox.empty():  # what it held when switched off is gone
            self._inbox.get_nowait()
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._connection(), name=f"{self.device_id}-link"),
                tg.create_task(self._handle_loop(), name=f"{self.device_id}-handle"),
                tg.create_task(self._telemetry_loop(), name=f"{self.device_id}-telemetry"),
                tg.create_task(self._resend_loop(), name=f"{self.device_id}-resend"),
            ]
            tasks += [
                tg.create_task(loop, name=f"{self.device_id}-{suffix}")
                for suffix, loop in self.control.loops().items()
            ]
            await self._stopped.wait()
            for task in tasks:
                task.cancel()

    async def _connection(self) -> None:
        """The MQTT link, cut for a while when :meth:`disconnect_for` says so."""
        while True:
            async with asyncio.TaskGroup() as tg:
                link = tg.create_task(self.link.run(), name=f"{self.device_id}-mqtt")
                await self._outage.wait()
                link.cancel()
            await asyncio.sleep(self._outage_s)
            self._outage.clear()

    def disconnect_for(self, seconds: float) -> None:
        """Lose the network for ``seconds`` (a radio dead spot); the device keeps running,
        a camera keeps buffering, and the broker session keeps its commands."""
        self._outage_s = seconds
        self._outage.set()

    @property
    def unconfirmed(self) -> int:
        """Trigger events sent but not yet confirmed by the engine."""
        return len(self._unconfirmed)

    async def power_off(self) -> None:
        """Switch the device off: it says so (retained presence) and ``run()`` returns.

        A camera that is off has no buffer and cannot be activated.
        """
        await self.control.power_off()
        offline = Presence(
            online=False,
            ts=self.clock(),
            device_kind=self.kind,
            unit=self.unit,
            reason=OfflineReason.POWER_OFF,
        )
        await self.link.publish(self.topics.presence(self.device_id), encode(offline), retain=True)
        self._stopped.set()

    async def _announce(self, link: MqttLink) -> None:
        presence = Presence(
            online=True,
            ts=self.clock(),
            device_kind=self.kind,
            unit=self.unit,
            paired=self.paired,
            pre_roll=self.control.pre_roll_s,
        )
        await link.publish(self.topics.presence(self.device_id), encode(presence), retain=True)

    def state(self) -> DeviceState:
        return self.control.state

    def telemetry(self) -> Telemetry:
        """The telemetry message this device would send now (whether due or not)."""
        now, state, fix = self.clock(), self.state(), self.position()
        return self._message(now, state, fix, self._why(now, state, fix) or "asked")

    def due_telemetry(self) -> Telemetry | None:
        """The telemetry message due this GPS epoch, or None when the reporting mode
        says the engine needs nothing new (the epoch is counted as skipped).

        A returned message counts as sent for the reporting mode: the next dead-band is
        measured from its fix.
        """
        now, state, fix = self.clock(), self.state(), self.position()
        reason = self._why(now, state, fix)
        if reason is None:
            self.stats.telemetry_skipped += 1
            return None
        return self._message(now, state, fix, reason)

    def _why(self, now: float, state: DeviceState, fix: Position | None) -> str | None:
        self.reporter.slow_heartbeat_s = self.slowdown.heartbeat_s(now)
        return self.reporter.why(now, state, fix)

    def _message(
        self, now: float, state: DeviceState, fix: Position | None, reason: str
    ) -> Telemetry:
        deadband = self.reporter.sent(now, state, fix, reason)
        if deadband is None:  # 1 Hz: the fields older engines know, nothing more
            if fix is None:
                return Telemetry(ts=now, state=state)
            ts = fix.ts if fix.ts is not None else now
            return Telemetry(ts=ts, lat=fix.lat, lon=fix.lon, acc=fix.acc, state=state)
        hb = self.reporter.heartbeat_s  # the one in use: what the engine judges by
        if fix is None:
            return Telemetry(ts=now, state=state, hb=hb, db=deadband)
        return Telemetry(
            ts=fix.ts if fix.ts is not None else now,
            lat=fix.lat,
            lon=fix.lon,
            acc=fix.acc,
            state=state,
            hb=hb,
            db=deadband,
            spd=None if fix.speed is None else min(fix.speed, MAX_SPEED_MPS),
        )

    async def send_telemetry(self) -> None:
        """Send telemetry now, due or not."""
        await self._publish_telemetry(self.telemetry())

    async def _publish_telemetry(self, message: Telemetry) -> None:
        await self.link.publish(self.topics.telemetry(self.device_id), encode(message), qos=0)
        self.stats.telemetry_sent += 1

    async def _telemetry_loop(self) -> None:
        while True:
            await self.link.wait_connected(timeout=float("inf"))
            message = self.due_telemetry()
            if message is not None:
                try:
                    await self._publish_telemetry(message)
                except BrokerError as exc:
                    self.reporter.unsent()
                    log.debug("%s: telemetry not sent: %s", self.device_id, exc)
            await asyncio.sleep(self.telemetry_interval_s)

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
        self._last_event = payload = encode(event)
        now = self.clock()
        # Kept until the engine confirms it: re-sent if the confirmation does not come.
        self._unconfirmed[event.eid] = _Unconfirmed(payload, now, now + self._resend[0])
        # Local activation and the fan-out start together: neither waits for the other.
        async with asyncio.TaskGroup() as tg:
            for peer in self.local_peers:
                tg.create_task(peer.activate_locally(event, self.device_id), name="local-link")
            try:
                await self.link.publish(self.topics.event(self.device_id), payload, qos=1)
            except BrokerError as exc:
                log.warning(
                    "%s: event %s not sent yet (%s); will retry", self.device_id, event.eid, exc
                )
        self.stats.events_sent += 1
        return event

    async def _resend_loop(self) -> None:
        initial, most, give_up = self._resend
        while True:
            await asyncio.sleep(min(0.25, initial))
            if not self.link.connected:
                continue
            await self.control.retry()
            now = self.clock()
            for eid, pending in list(self._unconfirmed.items()):
                if now - pending.first_sent > give_up:
                    del self._unconfirmed[eid]
                    self.stats.events_abandoned += 1
                    log.error("%s: event %s never confirmed; giving up", self.device_id, eid)
                elif now >= pending.next_send:
                    pending.attempts += 1
                    pending.next_send = now + min(most, initial * 2 ** (pending.attempts - 1))
                    self.stats.events_resent += 1
                    try:
                        await self.link.publish(
                            self.topics.event(self.device_id), pending.payload, qos=1
                        )
                    except BrokerError:
                        log.debug("%s: re-send of %s failed", self.device_id, eid)

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

    # ------------------------------------------------------------------ messages
    async def _on_message(self, message: aiomqtt.Message) -> None:
        """Hand a message to :meth:`_handle_loop`, not handled in the link's task: cutting
        the link (:meth:`disconnect_for`) cancels that task, and a command being committed
        was cancelled with it after its ``received`` answer had left, leaving a camera that
        never recorded and an engine that, having heard ``received``, never asked again."""
        handler = self._handlers.get(message.topic.value)
        if handler is None:
            return
        try:
            self._inbox.put_nowait((handler, as_bytes(message.payload)))
        except asyncio.QueueFull:
            self.stats.messages_dropped += 1
            log.warning(
                "%s: %s dropped: %d messages wait", self.device_id, message.topic, _MAX_INBOX
            )

    async def _handle_loop(self) -> None:
        """Handle received messages in order, whatever happens to the link meanwhile."""
        while True:
            handler, payload = await self._inbox.get()
            try:
                await handler(payload)
            except Exception:  # one bad message must not stop the next (not CancelledError)
                log.exception("%s: handler failed", self.device_id)

    async def _on_slowdown(self, payload: bytes) -> None:
        self.slowdown.offer(payload, self.verifier, self.clock())

    async def _on_confirmation(self, payload: bytes) -> None:
        try:
            confirmation = decode(Confirmation, payload)
        except PayloadError as exc:
            log.warning("%s: confirmation rejected: %s", self.device_id, exc)
            return
        if self._unconfirmed.pop(confirmation.eid, None) is None:
            return  # a repeat
        if confirmation.status is ConfirmStatus.REJECTED:
            self.stats.events_rejected += 1
            log.error(
                "%s: engine refused event %s: %s",
                self.device_id,
                confirmation.eid,
                confirmation.detail,
            )
        else:
            self.stats.events_confirmed += 1
