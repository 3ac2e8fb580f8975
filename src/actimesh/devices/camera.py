"""A camera's recording logic, free of networking and of asyncio.

The camera cuts time into segments aligned to multiples of the source's
``segment_seconds`` (so every camera of a fleet cuts at the same instants), keeps the
last ones in a :class:`~actimesh.devices.buffer.PreEventBuffer`, and on activation
commits the buffer from ``event_ts - pre_roll`` onwards to a recording that then stays
live until an officer stops it on the camera. The mesh can start recordings, never stop
them: there is deliberately no remote stop here.

Time is always passed in (``now``, UNIX seconds) and nothing happens between calls: the
device agent that wraps a camera calls :meth:`Camera.advance` on a tick, and the camera
renders every segment that completed since the previous call.

Two things only the officer does, on the camera itself: turn the recording light off
(stealth, unless the agency's policy fixes it) and cancel a false activation within a
short window (Axon's "false Signal" cancel: 10 s, and only for a recording that the
activation started from the buffer). A cancelled recording is kept and marked.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actimesh.broker.messages import CAMERA_KINDS, AckStatus, DeviceKind, DeviceState
from actimesh.broker.topics import IDENTIFIER_PATTERN, is_identifier
from actimesh.devices.buffer import MAX_PRE_ROLL_S, PreEventBuffer
from actimesh.devices.media import MediaSource, Segment, Switchable
from actimesh.devices.recorder import (
    ActivationRecord,
    CancelRecord,
    Recording,
    RecordingOptions,
    RecordingStore,
    StealthChange,
    StopCause,
)
from actimesh.errors import MediaError

__all__ = [
    "DEFAULT_CANCEL_WINDOW_S",
    "ActivationOrder",
    "ActivationResult",
    "Camera",
    "CancelResult",
    "StealthPolicy",
]

#: Ack details are short text on the wire (256 characters at most).
_MAX_DETAIL = 256
_OFF_DETAIL = "camera is off: an off camera keeps no pre-event buffer and cannot be activated"
#: Axon's false-activation cancel window.
DEFAULT_CANCEL_WINDOW_S = 10.0


class StealthPolicy(StrEnum):
    """Who decides whether the recording light shows while recording."""

    OFFICER = "officer"  # light on unless the officer turns it off (the default)
    ALWAYS = "always"  # light always off (covert units); the officer cannot turn it on
    NEVER = "never"  # light always on; the officer cannot turn it off


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What the camera did with the officer's cancel of a false activation."""

    accepted: bool
    recording_id: str | None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ActivationOrder:
    """What a camera is asked to record: the activation, the event it answers, and how
    far before the event's time its recording must reach."""

    aid: str
    eid: str
    event_type: str
    source: str
    event_ts: float
    pre_roll_s: float


@dataclass(frozen=True, slots=True)
class ActivationResult:
    """What a camera did with one activation; the device agent turns it into an Ack.

    ``pre_roll_covered_s`` is how far before the event the recording actually reaches,
    capped at the pre-roll requested: less than requested when the camera had not been
    buffering long enough or the command came too late for the buffer.
    """

    status: AckStatus
    pre_roll_covered_s: float
    recording_id: str | None
    duplicate: bool = False
    detail: str | None = None


def _floor_slot(t: float, seconds: float) -> int:
    """The largest k with ``k * seconds <= t`` (exactly, despite float division)."""
    k = math.floor(t / seconds)
    while k * seconds > t:
        k -= 1
    while (k + 1) * seconds <= t:
        k += 1
    return k


def _ceil_slot(t: float, seconds: float) -> int:
    """The smallest k with ``k * seconds >= t``."""
    k = math.ceil(t / seconds)
    while (k - 1) * seconds >= t:
        k -= 1
    while k * seconds < t:
        k += 1
    return k


def _require_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite UNIX time, got {value!r}")


class Camera:
    """One body, dash or rear camera: buffering, recording or off.

    ``started_at`` is when the camera was switched on; its first segment is the first
    whole slot after that. A simulated camera may be created *warm*, with ``started_at``
    in the past: the first :meth:`advance` then backfills the buffer as if the camera
    had been buffering since then (the shift started), rendering only the segments the
    buffer keeps, so a warm camera switched on hours ago costs no more than one switched
    on a minute ago.

    ``late_allowance_s`` is how late (on this camera's clock, after the event) a command
    may arrive and still be owed the full pre-roll: the buffer keeps that much history
    beyond the pre-roll. Clock skew between the sensor and the camera counts against it.
    A later command still records, and reports the smaller coverage it got. 30 s by
    default: a follow-up command (the engine's ``follow_up_s``, 20 s, plus its delivery)
    comes that late and is owed the full pre-roll too.

    ``remember_activations`` bounds the memory of activation ids used to answer
    repeated commands (QoS 1 redelivery) without opening a second recording.

    ``signing_key`` is the device's Ed25519 key: every manifest is signed with it.
    ``stealth`` is the agency's recording-light policy; ``buffer_audio`` its setting
    for audio in the pre-event buffer (off by default, as vendors ship it), recorded in
    each manifest. ``cancel_window_s`` is how long after an activation that started a
    recording the officer may cancel it as false (0 disables cancelling).

    A source that holds a thread or a device (:class:`~actimesh.devices.media.Switchable`)
    is handed over switched on; the camera switches it off and on with its power.
    """

    def __init__(
        self,
        device_id: str,
        kind: DeviceKind,
        source: MediaSource,
        store: RecordingStore,
        *,
        started_at: float,
        pre_roll_s: float = 30.0,
        late_allowance_s: float = 30.0,
        remember_activations: int = 1024,
        signing_key: Ed25519PrivateKey | None = None,
        stealth: StealthPolicy = StealthPolicy.OFFICER,
        buffer_audio: bool = False,
        cancel_window_s: float = DEFAULT_CANCEL_WINDOW_S,
    ) -> None:
        if not is_identifier(device_id):
            raise ValueError(f"device id {device_id!r} must match {IDENTIFIER_PATTERN}")
        if kind not in CAMERA_KINDS:
            raise ValueError(f"{kind.value} is not a camera kind; cameras are body, dash, rear")
        _require_finite("started_at", started_at)
        if remember_activations < 1:
            raise ValueError(f"remember_activations must be >= 1, got {remember_activations}")
        if not (math.isfinite(cancel_window_s) and 0 <= cancel_window_s <= 60):
            raise ValueError(f"cancel_window_s must be 0 to 60 s, got {cancel_window_s!r}")
        seconds = source.segment_seconds
        # The buffer validates pre_roll_s, segment_seconds and late_allowance_s.
        self._buffer = PreEventBuffer(pre_roll_s, seconds, late_allowance_s=late_allowance_s)
        self.device_id = device_id
        self.kind = kind
        self.source = source
        self.store = store
        self.started_at = started_at
        self.pre_roll_s = float(pre_roll_s)
        self._seconds = seconds
        self._base_slot = _ceil_slot(started_at, seconds)  # the slot numbered seq 0
        self._next_slot = self._base_slot  # the first slot not rendered yet
        self._state = DeviceState.BUFFERING
        self._recording: Recording | None = None
        self._results: OrderedDict[str, ActivationResult] = OrderedDict()
        self._remember = remember_activations
        self._opened = 0
        #: Segments the source failed to encode (skipped; see :meth:`advance`).
        self.media_errors = 0
        self._options = RecordingOptions(
            media=source.format, signing_key=signing_key, buffer_audio=buffer_audio
        )
        self.stealth_policy = StealthPolicy(stealth)
        self._stealth = self.stealth_policy is StealthPolicy.ALWAYS
        self._stealth_by = "policy"
        self.cancel_window_s = float(cancel_window_s)
        # The activation that opened the live recording from the buffer, and when.
        self._opener: tuple[str, str, float] | None = None  # (aid, eid, received_at)
        self._cancelled: OrderedDict[str, str] = OrderedDict()  # eid -> recording id

    # ------------------------------------------------------------------ reading
    @property
    def state(self) -> DeviceState:
        """OFF, BUFFERING or RECORDING, as reported in telemetry."""
        return self._state

    @property
    def recording(self) -> Recording | None:
        """The live recording, if the camera is recording."""
        return self._recording

    @property
    def buffer(self) -> PreEventBuffer:
        """The pre-event buffer, for inspection; only the camera appends to it."""
        return self._buffer

    @property
    def segment_seconds(self) -> float:
        """Length of a segment; segments start at multiples of it."""
        return self._seconds

    @property
    def stealth(self) -> bool:
        """True when the recording light stays off while recording."""
        return self._stealth

    @property
    def recording_light(self) -> bool:
        """Whether the recording light is lit now."""
        return self._state is DeviceState.RECORDING and not self._stealth

    # ------------------------------------------------------------------ time
    def advance(self, now: float) -> int:
        """Render every segment that completed by ``now``; return how many were rendered.

        Each goes into the buffer and, while recording, into the live recording. Does
        nothing while off. An :class:`OSError` from writing the recording propagates
        after the segment is buffered; that segment is then missing from the recording.
        A segment the source fails to encode (:class:`MediaError`) is skipped and
        counted in :attr:`media_errors`: the camera keeps filming the next one, and the
        recording's manifest shows the gap.
        """
        if self._state is DeviceState.OFF:
            return 0
        _require_finite("now", now)
        end_slot = _floor_slot(now, self._seconds)  # slots below this one are complete
        first = self._next_slot
        if self._recording is None:
            # Buffering only: skip segments the buffer would drop at once (one spare
            # slot absorbs rounding); the buffer trims the rest.
            horizon = end_slot * self._seconds - self._buffer.capacity_s
            first = max(first, _floor_slot(horizon, self._seconds) - 1)
        rendered = 0
        for slot in range(first, end_slot):
            try:
                seg = self._render(slot, slot * self._seconds, (slot + 1) * self._seconds)
            except MediaError:
                self.media_errors += 1
                self._next_slot = slot + 1
                continue
            self._buffer.append(seg)
            self._next_slot = slot + 1
            rendered += 1
            if self._recording is not None:
                self._recording.append(seg)
        return rendered

    # ------------------------------------------------------------------ commands
    def activate(self, order: ActivationOrder, now: float) -> ActivationResult:
        """Start (or join) a recording that reaches ``pre_roll_s`` back from ``event_ts``.

        The first activation opens a recording holding every buffered segment that ends
        after ``event_ts - pre_roll_s``, and the recording stays live. A later one is
        attached to the running recording, which is first extended backwards from the
        buffer if this activation asks for earlier media. Repeating an activation id
        returns its first result with ``duplicate=True`` and changes nothing. An off
        camera refuses; so does one whose disk cannot be written (with the reason), and
        one whose officer cancelled this event as a false activation (naming the kept,
        cancelled recording).
        """
        aid, eid, event_ts, pre_roll_s = order.aid, order.eid, order.event_ts, order.pre_roll_s
        event_type, source = order.event_type, order.source
        _require_finite("event_ts", event_ts)
        _require_finite("now", now)
        if not (math.isfinite(pre_roll_s) and 0.0 <= pre_roll_s <= MAX_PRE_ROLL_S):
            raise ValueError(f"pre_roll_s must be 0 to {MAX_PRE_ROLL_S:g} s, got {pre_roll_s!r}")
        previous = self._results.get(aid)
        if previous is not None:
            return replace(previous, duplicate=True)
        if self._state is DeviceState.OFF:
            # Not remembered: if the camera is switched on and the command is sent
            # again, it deserves a fresh answer.
            return ActivationResult(AckStatus.REFUSED, 0.0, None, detail=_OFF_DETAIL)
        cancelled = self._cancelled.get(eid)
        if cancelled is not None:
            # The engine's command for an event the officer already cancelled here (the
            # local link got there first): starting again would undo the cancel.
            detail = f"event {eid} was cancelled on this camera as a false activation"
            return ActivationResult(AckStatus.REFUSED, 0.0, cancelled, detail=detail[:_MAX_DETAIL])

        recording = self._recording
        opener = self._opener
        try:
            # Inside the try: while recording, advancing writes to disk too.
            self.advance(now)
            wanted = self._buffer.since(event_ts - pre_roll_s)
            if recording is None:
                earlier = wanted
                # An empty buffer (switched on moments ago) records from the next segment.
                start = wanted[0].start if wanted else self._next_slot * self._seconds
                recording = self.store.open(
                    self._recording_id(aid, now),
                    self.device_id,
                    start,
                    device_kind=self.kind,
                    options=self._options,
                    stealth=[StealthChange(now, self._stealth, self._stealth_by)],
                )
                self._opened += 1
                opener = (aid, eid, now)
            else:
                # Only what the running recording does not hold yet: media before its start.
                earlier = [s for s in wanted if s.start < recording.started_at]
            reaches = earlier[0].start if earlier else recording.started_at
            covered = min(max(event_ts - reaches, 0.0), pre_roll_s)
            recording.attach(
                ActivationRecord(
                    aid=aid,
                    eid=eid,
                    event_type=event_type,
                    source=source,
                    event_ts=event_ts,
                    pre_roll_requested_s=pre_roll_s,
                    pre_roll_covered_s=covered,
                    received_at=now,
                ),
                earlier,
            )
        except OSError as exc:
            # Storage full or failing: the engine must hear that this camera is not
            # recording the event, not wait for an ack that never comes.
            detail = f"could not write recording: {exc}"[:_MAX_DETAIL]
            return ActivationResult(AckStatus.REFUSED, 0.0, None, detail=detail)

        self._recording = recording
        self._opener = opener
        self._state = DeviceState.RECORDING
        result = ActivationResult(AckStatus.RECORDING, covered, recording.recording_id)
        self._results[aid] = result
        if len(self._results) > self._remember:
            self._results.popitem(last=False)
        return result

    def stop(self, now: float) -> Recording | None:
        """The officer stops recording on the camera; it goes back to buffering.

        Returns the closed recording, or None if the camera was not recording. The
        recording keeps the media up to ``now``, including the part of the current
        segment already filmed.
        """
        return self._close(now, StopCause.OFFICER)

    def cancel(self, now: float, *, aid: str | None = None, by: str = "officer") -> CancelResult:
        """The officer cancels a false activation: stop and mark the recording it started.

        Accepted only within :attr:`cancel_window_s` of the activation that opened the
        running recording from the buffer (``aid``, or by default that one), and only
        while every activation on the recording is for that same event: a recording
        the camera was already making, or that another event joined, is not cancelled.
        The recording is kept, marked ``cancelled`` in its manifest; the camera goes
        back to buffering, and later commands for the cancelled event are refused.
        """
        _require_finite("now", now)
        recording, opener = self._recording, self._opener
        if recording is None or opener is None:
            return CancelResult(False, None, "nothing to cancel: the camera is not recording")
        rid = recording.recording_id
        opener_aid, eid, opened_at = opener
        if aid is not None and aid != opener_aid:
            if any(a.aid == aid for a in recording.activations):
                why = f"activation {aid} joined a recording that was already running"
            else:
                why = f"activation {aid} is not on the running recording"
            return CancelResult(False, rid, why)
        if any(a.eid != eid for a in recording.activations):
            return CancelResult(False, rid, "another event joined this recording since it started")
        late = now - opened_at - self.cancel_window_s
        if late > 1e-6:  # UNIX times carry ~0.2 µs of rounding: the window's end is in
            return CancelResult(
                False, rid, f"the {self.cancel_window_s:g} s cancel window closed {late:.1f} s ago"
            )
        mark = CancelRecord(now, opener_aid, by, opened_at, self.cancel_window_s)
        self._close(now, StopCause.CANCELLED, mark)
        self._cancelled[eid] = rid
        while len(self._cancelled) > self._remember:
            self._cancelled.popitem(last=False)
        return CancelResult(True, rid)

    def set_stealth(self, on: bool, now: float) -> bool:
        """The officer turns the recording light off (``on=True``) or back on.

        Returns True when the camera is now in the requested state, False when the
        stealth policy fixes it. A change while recording is listed in the manifest
        (an :class:`OSError` writing it propagates; the change is kept and written with
        the next manifest).
        """
        _require_finite("now", now)
        fixed = {StealthPolicy.ALWAYS: True, StealthPolicy.NEVER: False}.get(self.stealth_policy)
        if fixed is not None:
            return on == fixed
        if on == self._stealth:
            return True
        self._stealth, self._stealth_by = on, "officer"
        if self._recording is not None:
            self._recording.note_stealth(StealthChange(now, on, "officer"))
        return True

    def power_off(self, now: float | None = None) -> Recording | None:
        """Switch the camera off: close any recording and drop the buffer.

        With ``now`` the recording keeps the media up to ``now``, as with :meth:`stop`;
        without it (no clock at hand) it ends with the last segment already rendered, so
        call :meth:`advance` first. Returns the recording it closed, if any. An off
        camera refuses activations until :meth:`power_on`.
        """
        if now is None:
            now = self._next_slot * self._seconds
        try:
            return self._close(now, StopCause.POWER_OFF)
        finally:
            self._buffer.clear()
            self._state = DeviceState.OFF
            if isinstance(self.source, Switchable):
                self.source.switch_off()

    def power_on(self, now: float) -> None:
        """Switch the camera on; it buffers from the next whole segment after ``now``."""
        _require_finite("now", now)
        if self._state is not DeviceState.OFF:
            return
        if isinstance(self.source, Switchable):
            self.source.switch_on()
        self._state = DeviceState.BUFFERING
        # max(): never reuse a segment number, even if the clock stepped backwards.
        self._next_slot = max(self._next_slot, _ceil_slot(now, self._seconds))

    # ------------------------------------------------------------------ inside
    def _close(
        self, now: float, cause: StopCause, cancel: CancelRecord | None = None
    ) -> Recording | None:
        _require_finite("now", now)
        recording = self._recording
        if recording is None:
            return None
        try:
            self.advance(now)
            start = self._next_slot * self._seconds
            if now > start:
                # Stopped part-way through a segment: keep what was filmed up to now.
                try:
                    recording.append(self._render(self._next_slot, start, now))
                except MediaError:
                    self.media_errors += 1
        finally:
            self._recording = None
            self._opener = None
            self._state = DeviceState.BUFFERING
            recording.stop(now, cause, cancel=cancel)
        return recording

    def _render(self, slot: int, start: float, end: float) -> Segment:
        seq = slot - self._base_slot
        return Segment.of(seq, start, end, self.source.render(seq, start, end))

    def _recording_id(self, aid: str, now: float) -> str:
        # Derived, not random, so simulations replay identically; the counter keeps two
        # recordings of one camera apart even if an old activation id is reused.
        key = f"{self.device_id}\0{aid}\0{now!r}\0{self._opened}".encode()
        return f"rec-{hashlib.sha256(key).hexdigest()[:12]}"
