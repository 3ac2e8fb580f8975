"""Camera control: a camera's commands, its commit, its answers, the officer's controls.

This is the :class:`~actimesh.devices.camera_part.CameraPart` of a device with a camera
(a sensor's is :class:`~actimesh.devices.camera_part.NoCamera`). It knows nothing of
the MQTT link: it answers through a callable that publishes an ``Ack`` on the device's
ack topic.

**Signed commands.** A camera records only for a command that verifies with the engine's
public key (:class:`~actimesh.security.signing.CommandVerifier`), for this camera, of
this agency, and not expired. Anything else (unsigned, forged, signed by another key,
meant for another camera, expired, malformed) is refused: an ``Ack`` with status
``refused`` and the reason code at the start of ``detail`` (when the command names an
activation id to answer), counted in
:class:`~actimesh.devices.camera_part.CommandStats` and logged. A camera without the
engine's key refuses every command. A valid command seen again is a duplicate:
answered as before, never a second recording. Nothing on the wire stops a recording;
only the officer does, on the device (:meth:`CameraControl.stop_recording`).

**False activations.** Within the camera's cancel window the officer may cancel the
recording an activation started from the buffer (:meth:`CameraControl.cancel_activation`).
The camera keeps the recording, marked cancelled, and the agent answers every engine
activation on it with an ``Ack`` of status ``cancelled`` naming who cancelled, so the
engine records the false activation. A command for the cancelled event that arrives
later gets the same answer. A cancel the camera refuses sends nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgpack

from actimesh.broker.codec import MAX_PAYLOAD_BYTES, decode, encode
from actimesh.broker.messages import Ack, AckStatus, Command, DeviceState, Event
from actimesh.broker.topics import Topics, is_identifier
from actimesh.devices.camera import ActivationOrder, ActivationResult, Camera, CancelResult
from actimesh.devices.camera_part import (
    Answer,
    CameraPart,
    CommandStats,
    MessageHandler,
    NoCamera,
    ReceivedCommand,
)
from actimesh.devices.recorder import ActivationRecord
from actimesh.errors import BrokerError, PayloadError
from actimesh.security.signing import CommandVerifier

__all__ = ["CameraControl", "make_camera_part"]

log = logging.getLogger(__name__)

#: Events cancelled on this camera that the agent remembers, to answer late commands.
_REMEMBER_CANCELLED = 1024
#: Final answers kept for re-sending while the broker is unreachable: a camera answers
#: a few activations a shift, so this bounds memory without ever dropping in practice.
_REMEMBER_UNSENT = 1024
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


def make_camera_part(
    camera: Camera | None,
    verifier: CommandVerifier | None,
    *,
    topics: Topics,
    device_id: str,
    clock: Callable[[], float],
    stats: CommandStats,
    answer: Answer,
    commit_delay_s: float = 0.0,
) -> CameraPart:
    """The camera side of a device: :class:`CameraControl` with a camera, else none."""
    if camera is None:
        return NoCamera(verifier, commit_delay_s)
    return CameraControl(
        camera,
        verifier,
        topics=topics,
        device_id=device_id,
        clock=clock,
        stats=stats,
        answer=answer,
        commit_delay_s=commit_delay_s,
    )


class CameraControl:
    """A camera on the mesh: verifies commands, commits, answers, and the officer's controls.

    Calls into the :class:`Camera` run on a worker thread under one lock: a camera's disk
    writes must not stall the agent's event loop, which also serves MQTT.
    """

    def __init__(
        self,
        camera: Camera,
        verifier: CommandVerifier | None,
        *,
        topics: Topics,
        device_id: str,
        clock: Callable[[], float],
        stats: CommandStats,
        answer: Answer,
        commit_delay_s: float = 0.0,
    ) -> None:
        self.camera = camera
        self.verifier = verifier
        self.topics = topics
        self.device_id = device_id
        self.clock = clock
        self.stats = stats
        self._answer = answer
        self.commit_delay_s = commit_delay_s
        self.received: list[ReceivedCommand] = []
        self._lock = asyncio.Lock()
        # Held from a command's commit to its final answer, and by a cancel until its
        # answers are out: a camera's ``recording`` for an activation always reaches the
        # broker before its ``cancelled`` for the same one.
        self._answering = asyncio.Lock()
        self._cancelled: OrderedDict[str, _Cancelled] = OrderedDict()  # by event id
        # Final answers (``recording``, ``refused``, ``cancelled``) the broker has not
        # taken yet, oldest first: the engine sends nothing that would ask for them again
        # once it has heard ``received``, so they are re-sent until they get through.
        self._unsent_answers: OrderedDict[tuple[str, AckStatus], bytes] = OrderedDict()

    def replace_camera(self, camera: Camera) -> None:
        """Film with ``camera`` from now on (e.g. the same source, now with its key)."""
        self.camera = camera

    @property
    def pre_roll_s(self) -> float:
        """The pre-roll the camera's buffer can cover."""
        return self.camera.pre_roll_s

    @property
    def state(self) -> DeviceState:
        """The camera's state."""
        return self.camera.state

    def handlers(self) -> dict[str, MessageHandler]:
        """A camera listens for its commands."""
        return {self.topics.command(self.device_id): self._on_command}

    # ------------------------------------------------------------------ lifecycle
    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The media clock: the camera cuts its segments as time passes."""
        return {"media": self._media_loop(self.camera)}

    def power_on(self) -> None:
        """Switch the camera back on if it is off (cold: its buffer starts empty)."""
        if self.camera.state is DeviceState.OFF:
            self.camera.power_on(self.clock())

    async def power_off(self) -> None:
        """Switch the camera off: it has no buffer and cannot be activated."""
        async with self._lock:
            await asyncio.to_thread(self.camera.power_off, self.clock())

    async def _media_loop(self, camera: Camera) -> None:
        while True:
            async with self._lock:
                await asyncio.to_thread(camera.advance, self.clock())
            await asyncio.sleep(camera.segment_seconds / 2)

    async def retry(self) -> None:
        """Send the final answers the broker has not taken yet."""
        await self._send_unsent()

    # ------------------------------------------------------------------ activation
    async def activate_locally(self, event: Event, source: str) -> ActivationResult:
        """A paired sensor's event over the local link (no broker involved)."""
        order = ActivationOrder(
            _local_aid(event.eid), event.eid, event.type, source, event.ts, self.camera.pre_roll_s
        )
        return await self._activate(order, self.clock())

    async def _activate(self, order: ActivationOrder, now: float) -> ActivationResult:
        """Commit on a worker thread: a camera's disk writes (fsync of every buffered
        segment) must not stall the agent's event loop, which also serves MQTT."""
        camera = self.camera

        def commit() -> ActivationResult:
            camera.advance(now)
            return camera.activate(order, now)

        async with self._lock:
            return await asyncio.to_thread(commit)

    # ------------------------------------------------------------------ commands
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
        payload = encode(ack)
        if status is not AckStatus.RECEIVED and self._unsent_answers:
            # Behind answers still waiting: this one waits behind them, so the engine
            # hears an activation's answers in the order the camera gave them.
            self._keep_unsent(aid, status, payload)
            await self._send_unsent()
            return
        try:
            await self._answer(payload)
        except BrokerError as exc:
            if status is AckStatus.RECEIVED:
                # The engine re-sends the command until it hears from us; we answer again
                # then.
                log.warning("%s: ack for %s not sent: %s", self.device_id, aid, exc)
                return
            # A final answer: once ``received`` got through the engine sends nothing that
            # would ask for it again, and it is the ledger's evidence that the camera
            # recorded, so it is kept and re-sent until the broker takes it.
            log.warning(
                "%s: %s answer for %s not sent yet (%s); will retry",
                self.device_id,
                status.value,
                aid,
                exc,
            )
            self._keep_unsent(aid, status, payload)

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
            order = ActivationOrder(
                command.aid, command.eid, command.type, command.src, command.ets, command.pre
            )
            result = await self._activate(order, received)
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
        async with self._lock:
            await asyncio.to_thread(self.camera.stop, self.clock())

    async def cancel_activation(
        self, aid: str | None = None, *, by: str = "officer"
    ) -> CancelResult:
        """The officer ``by`` cancels a false activation on the device (within the window).

        ``aid`` is the activation that started the recording (by default, whichever did).
        When the camera accepts, each engine activation on the cancelled recording is
        answered ``cancelled``; when it refuses (window closed, a recording it was already
        making, nothing recording), nothing is sent.
        """
        camera = self.camera

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
                self._keep_unsent(activation.aid, AckStatus.CANCELLED, encode(ack))
            await self._send_unsent()
            return result

    @property
    def unsent_cancels(self) -> int:
        """``cancelled`` answers not yet taken by the broker (re-sent until they are)."""
        return sum(1 for _, status in self._unsent_answers if status is AckStatus.CANCELLED)

    @property
    def unsent_answers(self) -> int:
        """Final answers (``recording``, ``refused``, ``cancelled``) not yet taken by the
        broker (re-sent until they are)."""
        return len(self._unsent_answers)

    def _keep_unsent(self, aid: str, status: AckStatus, payload: bytes) -> None:
        self._unsent_answers[aid, status] = payload
        while len(self._unsent_answers) > _REMEMBER_UNSENT:
            (lost_aid, lost_status), _ = self._unsent_answers.popitem(last=False)
            self.stats.answers_dropped += 1
            log.error(
                "%s: the %s answer to %s was never sent", self.device_id, lost_status, lost_aid
            )

    async def _send_unsent(self) -> None:
        for (aid, status), payload in list(self._unsent_answers.items()):
            try:
                await self._answer(payload)
            except BrokerError as exc:
                log.warning(
                    "%s: %s answer for %s not sent yet (%s); will retry",
                    self.device_id,
                    status.value,
                    aid,
                    exc,
                )
                return
            self._unsent_answers.pop((aid, status), None)

    async def set_stealth(self, on: bool) -> bool:
        """The officer turns the recording light off (``on=True``) or back on."""
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
