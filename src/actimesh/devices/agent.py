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

**Signed commands.** A camera records only for a command that verifies with the engine's
public key (:class:`~actimesh.security.signing.CommandVerifier`), for this camera, of
this agency, and not expired. Anything else (unsigned, forged, signed by another key,
meant for another camera, expired, malformed) is refused: an ``Ack`` with status
``refused`` and the reason code at the start of ``detail`` (when the command names an
activation id to answer), counted in :class:`AgentStats` and logged. A camera without
the engine's key refuses every command. A valid command seen again is a duplicate:
answered as before, never a second recording. Nothing on the wire stops a recording;
only the officer does, on the device (:meth:`DeviceAgent.stop_recording`).

**False activations.** Within the camera's cancel window the officer may cancel the
recording an activation started from the buffer (:meth:`DeviceAgent.cancel_activation`).
The camera keeps the recording, marked cancelled, and the agent answers every engine
activation on it with an ``Ack`` of status ``cancelled`` naming who cancelled, so the
engine records the false activation. A command for the cancelled event that arrives
later gets the same answer. A cancel the camera refuses sends nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiomqtt
import msgpack

from actimesh.broker.client import LinkSettings, MqttLink, Subscription, Will, as_bytes
from actimesh.broker.codec import MAX_PAYLOAD_BYTES, decode, encode
from actimesh.broker.messages import (
    CAMERA_KINDS,
    Ack,
    AckStatus,
    Command,
    Confirmation,
    ConfirmStatus,
    DeviceKind,
    DeviceState,
    Event,
    OfflineReason,
    Presence,
    Telemetry,
)
from actimesh.broker.topics import Topics, device_client_id, is_identifier
from actimesh.devices.camera import ActivationResult, Camera, CancelResult
from actimesh.devices.recorder import ActivationRecord
from actimesh.errors import BrokerError, PayloadError
from actimesh.security.signing import CommandVerifier

__all__ = ["AgentStats", "DeviceAgent", "Position", "PositionSource", "ReceivedCommand"]

log = logging.getLogger(__name__)

#: Events cancelled on this camera that the agent remembers, to answer late commands.
_REMEMBER_CANCELLED = 1024
_CANCELLED_DETAIL = "cancelled on the camera as a false activation; the recording is kept, marked"


def _local_aid(eid: str) -> str:
    """The activation id of a paired sensor's event over the local link."""
    return f"local-{eid}"[:64]


@dataclass(frozen=True, slots=True)
class _Cancelled:
    """A false activation the officer cancelled on this camera."""

    recording_id: str | None
    by: str
    at: float


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
class _Unconfirmed:
    """A trigger event the engine has not confirmed yet."""

    payload: bytes
    first_sent: float
    next_send: float
    attempts: int = 1


@dataclass(slots=True)
class AgentStats:
    telemetry_sent: int = 0
    events_sent: int = 0
    events_resent: int = 0
    events_confirmed: int = 0
    events_rejected: int = 0
    events_abandoned: int = 0
    commands: int = 0  # commands that verified (duplicates included)
    duplicate_commands: int = 0  # verified commands for an activation already handled
    rejected_commands: int = 0  # commands refused, all reasons
    cancels: int = 0  # false activations the officer cancelled (accepted by the camera)
    cancels_refused: int = 0  # cancels the camera refused (window closed, not its recording)
    #: Refused commands by reason: unsigned, bad_signature, expired, invalid, …
    refused_commands: Counter[str] = field(default_factory=Counter)


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
    ) -> None:
        if (camera is not None) != (kind in CAMERA_KINDS):
            raise ValueError(f"{device_id}: cameras need a Camera and only cameras have one")
        self.topics = topics
        self.device_id = device_id
        self.kind = kind
        self.unit = unit
        self.paired = tuple(paired)
        self.camera = camera
        self.verifier = verifier
        self.local_peers = tuple(local_peers)
        self.position = position
        self.clock = clock
        self.telemetry_interval_s = telemetry_interval_s
        self.stats = AgentStats()
        self.received: list[ReceivedCommand] = []
        self._events = itertools.count(1)
        self._lock = asyncio.Lock()
        # Held from a command's commit to its final answer, and by a cancel until its
        # answers are out: a camera's ``recording`` for an activation always reaches the
        # broker before its ``cancelled`` for the same one.
        self._answering = asyncio.Lock()
        self._cancelled: OrderedDict[str, _Cancelled] = OrderedDict()  # by event id
        # ``cancelled`` answers the broker has not taken yet: the engine sends nothing
        # that would ask for them again, so they are re-sent until they get through.
        self._unsent_cancels: OrderedDict[str, bytes] = OrderedDict()  # by activation id
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
        subscriptions: tuple[Subscription, ...] = (Subscription(topics.confirm(device_id), 1),)
        if camera is not None:
            subscriptions += (Subscription(topics.command(device_id), 1),)
        self._unconfirmed: dict[str, _Unconfirmed] = {}
        self._resend = (resend_initial_s, resend_max_s, give_up_after_s)
        #: Models slow storage: a camera that takes this long before it commits.
        self.commit_delay_s = commit_delay_s
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
                tg.create_task(self._connection(), name=f"{self.device_id}-link"),
                tg.create_task(self._telemetry_loop(), name=f"{self.device_id}-telemetry"),
                tg.create_task(self._resend_loop(), name=f"{self.device_id}-resend"),
            ]
            if self.camera is not None:
                media = self._media_loop(self.camera)
                tasks.append(tg.create_task(media, name=f"{self.device_id}-media"))
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
        if self.camera is not None:
            async with self._lock:
                await asyncio.to_thread(self.camera.power_off, self.clock())
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
            await self._send_cancels()
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

    async def activate_locally(self, event: Event, source: str) -> ActivationResult | None:
        """A paired sensor's event over the local link (no broker involved)."""
        if self.camera is None:
            return None
        return await self._activate(
            aid=_local_aid(event.eid),
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
            return camera.activate(
                aid=aid,
                eid=eid,
                event_type=event_type,
                source=source,
                event_ts=event_ts,
                pre_roll_s=pre_roll_s,
                now=now,
            )

        async with self._lock:
            return await asyncio.to_thread(commit)

    # ------------------------------------------------------------------ commands
    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        if topic == self.topics.confirm(self.device_id):
            self._on_confirmation(as_bytes(message.payload))
        elif self.camera is not None and topic == self.topics.command(self.device_id):
            await self._on_command(as_bytes(message.payload))

    def _on_confirmation(self, payload: bytes) -> None:
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

    async def _ack(
        self,
        aid: str,
        status: AckStatus,
        pre_cov: float = 0.0,
        *,
        rec: str | None = None,
        detail: str | None = None,
        by: str | None = None,
        ts: float | None = None,
    ) -> None:
        ack = Ack(
            aid=aid,
            status=status,
            pre_cov=pre_cov,
            rec=rec,
            ts=self.clock() if ts is None else ts,
            detail=detail,
            by=by,
        )
        try:
            await self.link.publish(self.topics.ack(self.device_id), encode(ack), qos=1)
        except BrokerError as exc:
            # The engine re-sends the command until it hears from us; we answer again then.
            log.warning("%s: ack for %s not sent: %s", self.device_id, aid, exc)

    async def _on_command(self, payload: bytes) -> None:
        received = self.clock()
        try:
            command = decode(Command, payload)
        except PayloadError as exc:
            aid, why = _unreadable(payload, exc)
            await self._refuse(aid, why)
            return
        refusal = self._verify(command, received)
        if refusal is not None:
            await self._refuse(command.aid, refusal)
            return
        self.stats.commands += 1
        # First answer at once, before the (slower) commit to storage.
        await self._ack(command.aid, AckStatus.RECEIVED)
        if self.commit_delay_s:
            await asyncio.sleep(self.commit_delay_s)
        async with self._answering:
            result = await self._activate(
                aid=command.aid,
                eid=command.eid,
                event_type=command.type,
                source=command.src,
                event_ts=command.ets,
                pre_roll_s=command.pre,
                now=received,
            )
            if result.duplicate:
                self.stats.duplicate_commands += 1
            self.received.append(ReceivedCommand(command, received, result))
            cancelled = self._cancelled.get(command.eid)
            if result.status is AckStatus.REFUSED and cancelled is not None:
                # The camera refused because the officer had cancelled this event here
                # (the local link started it first): that is the camera's final answer to
                # this activation too, not a failure to record.
                await self._ack(
                    command.aid,
                    AckStatus.CANCELLED,
                    rec=cancelled.recording_id,
                    detail=_CANCELLED_DETAIL,
                    by=cancelled.by,
                    ts=cancelled.at,
                )
                return
            await self._ack(
                command.aid,
                result.status,
                result.pre_roll_covered_s,
                rec=result.recording_id,
                detail=result.detail,
            )

    def _verify(self, command: Command, now: float) -> PayloadError | None:
        """Why ``command`` must be refused, or None if it is the engine's, for this camera."""
        if self.verifier is None:
            return PayloadError("no_engine_key", "this camera has no engine public key")
        try:
            self.verifier.verify(
                command, agency=self.topics.agency, device_id=self.device_id, now=now
            )
        except PayloadError as exc:
            return exc
        return None

    async def _refuse(self, aid: str | None, why: PayloadError) -> None:
        """Refuse a command: counted, logged, and answered when it names an activation."""
        self.stats.rejected_commands += 1
        self.stats.refused_commands[why.reason] += 1
        log.warning("%s: command %s refused: %s", self.device_id, aid or "(no id)", why)
        if aid is not None:
            await self._ack(aid, AckStatus.REFUSED, detail=str(why)[:256])

    async def stop_recording(self) -> None:
        """The officer stops the recording on the device. The mesh itself never does."""
        if self.camera is not None:
            async with self._lock:
                await asyncio.to_thread(self.camera.stop, self.clock())

    async def cancel_activation(
        self, aid: str | None = None, *, by: str = "officer"
    ) -> CancelResult | None:
        """The officer ``by`` cancels a false activation on the device (within the window).

        ``aid`` is the activation that started the recording (by default, whichever did).
        When the camera accepts, each engine activation on the cancelled recording is
        answered ``cancelled``; when it refuses (window closed, a recording it was already
        making, nothing recording), nothing is sent. None for a device without a camera.
        """
        camera = self.camera
        if camera is None:
            return None

        def cancel(now: float) -> tuple[CancelResult, tuple[ActivationRecord, ...]]:
            recording = camera.recording
            attached = recording.activations if recording is not None else ()
            return camera.cancel(now, aid=aid, by=by), attached

        async with self._answering:
            async with self._lock:
                now = self.clock()
                result, attached = await asyncio.to_thread(cancel, now)
            if not result.accepted:
                self.stats.cancels_refused += 1
                log.info("%s: cancel refused: %s", self.device_id, result.detail)
                return result
            self.stats.cancels += 1
            mark = _Cancelled(result.recording_id, by, now)
            for activation in attached:
                # The camera accepts a cancel only while one event's activations are on
                # the recording, so each of them is remembered under that event.
                self._cancelled[activation.eid] = mark
                self._cancelled.move_to_end(activation.eid)
            while len(self._cancelled) > _REMEMBER_CANCELLED:
                self._cancelled.popitem(last=False)
            log.info(
                "%s: %s cancelled recording %s as a false activation",
                self.device_id,
                by,
                result.recording_id,
            )
            for activation in attached:
                if activation.aid == _local_aid(activation.eid):
                    continue  # the local link's own: the engine never heard of it
                ack = Ack(
                    aid=activation.aid,
                    status=AckStatus.CANCELLED,
                    pre_cov=activation.pre_roll_covered_s,
                    rec=result.recording_id,
                    ts=now,
                    detail=_CANCELLED_DETAIL,
                    by=by,
                )
                self._unsent_cancels[activation.aid] = encode(ack)
                while len(self._unsent_cancels) > _REMEMBER_CANCELLED:
                    _, lost = self._unsent_cancels.popitem(last=False)
                    log.error("%s: a cancelled answer was never sent: %r", self.device_id, lost)
            await self._send_cancels()
            return result

    @property
    def unsent_cancels(self) -> int:
        """``cancelled`` answers not yet taken by the broker (re-sent until they are)."""
        return len(self._unsent_cancels)

    async def _send_cancels(self) -> None:
        topic = self.topics.ack(self.device_id)
        for aid, payload in list(self._unsent_cancels.items()):
            try:
                await self.link.publish(topic, payload, qos=1)
            except BrokerError as exc:
                log.warning(
                    "%s: cancelled answer for %s not sent yet (%s); will retry",
                    self.device_id,
                    aid,
                    exc,
                )
                return
            self._unsent_cancels.pop(aid, None)

    async def set_stealth(self, on: bool) -> bool:
        """The officer turns the recording light off (``on=True``) or back on."""
        if self.camera is None:
            return False
        async with self._lock:
            return await asyncio.to_thread(self.camera.set_stealth, on, self.clock())


def _unreadable(payload: bytes, exc: PayloadError) -> tuple[str | None, PayloadError]:
    """For a command that did not decode: its activation id, if one can be read to
    answer, and why it was refused (a command without ``sig`` is ``unsigned``)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, exc
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_str_len=len(payload),
            max_bin_len=len(payload),
            max_array_len=256,
            max_map_len=256,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError):
        return None, exc
    if not isinstance(obj, dict):
        return None, exc
    aid = obj.get("aid")
    if exc.reason == "invalid" and "sig" not in obj:
        exc = PayloadError("unsigned", "the command carries no signature")
    return (aid if isinstance(aid, str) and is_identifier(aid) else None), exc
