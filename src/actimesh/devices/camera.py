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
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, replace

from actimesh.broker.messages import CAMERA_KINDS, AckStatus, DeviceKind, DeviceState
from actimesh.broker.topics import IDENTIFIER_PATTERN, is_identifier
from actimesh.devices.buffer import MAX_PRE_ROLL_S, PreEventBuffer
from actimesh.devices.media import MediaSource, Segment
from actimesh.devices.recorder import ActivationRecord, Recording, RecordingStore, StopCause

__all__ = ["ActivationResult", "Camera"]

#: Ack details are short text on the wire (256 characters at most).
_MAX_DETAIL = 256
_OFF_DETAIL = "camera is off: an off camera keeps no pre-event buffer and cannot be activated"


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
    A later command still records, and reports the smaller coverage it got.

    ``remember_activations`` bounds the memory of activation ids used to answer
    repeated commands (QoS 1 redelivery) without opening a second recording.
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
        late_allowance_s: float = 10.0,
        remember_activations: int = 1024,
    ) -> None:
        if not is_identifier(device_id):
            raise ValueError(f"device id {device_id!r} must match {IDENTIFIER_PATTERN}")
        if kind not in CAMERA_KINDS:
            raise ValueError(f"{kind.value} is not a camera kind; cameras are body, dash, rear")
        _require_finite("started_at", started_at)
        if remember_activations < 1:
            raise ValueError(f"remember_activations must be >= 1, got {remember_activations}")
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

    # ------------------------------------------------------------------ time
    def advance(self, now: float) -> int:
        """Render every segment that completed by ``now``; return how many were rendered.

        Each goes into the buffer and, while recording, into the live recording. Does
        nothing while off. An :class:`OSError` from writing the recording propagates
        after the segment is buffered; that segment is then missing from the recording.
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
            seg = self._render(slot, slot * self._seconds, (slot + 1) * self._seconds)
            self._buffer.append(seg)
            self._next_slot = slot + 1
            rendered += 1
            if self._recording is not None:
                self._recording.append(seg)
        return rendered

    # ------------------------------------------------------------------ commands
    def activate(
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
        """Start (or join) a recording that reaches ``pre_roll_s`` back from ``event_ts``.

        The first activation opens a recording holding every buffered segment that ends
        after ``event_ts - pre_roll_s``, and the recording stays live. A later one is
        attached to the running recording, which is first extended backwards from the
        buffer if this activation asks for earlier media. Repeating an activation id
        returns its first result with ``duplicate=True`` and changes nothing. An off
        camera refuses; so does one whose disk cannot be written (with the reason).
        """
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

        recording = self._recording
        try:
            # Inside the try: while recording, advancing writes to disk too.
            self.advance(now)
            wanted = self._buffer.since(event_ts - pre_roll_s)
            if recording is None:
                earlier = wanted
                # An empty buffer (switched on moments ago) records from the next segment.
                start = wanted[0].start if wanted else self._next_slot * self._seconds
                recording = self.store.open(
                    self._recording_id(aid, now), self.device_id, start, device_kind=self.kind
                )
                self._opened += 1
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

    def power_on(self, now: float) -> None:
        """Switch the camera on; it buffers from the next whole segment after ``now``."""
        _require_finite("now", now)
        if self._state is not DeviceState.OFF:
            return
        self._state = DeviceState.BUFFERING
        # max(): never reuse a segment number, even if the clock stepped backwards.
        self._next_slot = max(self._next_slot, _ceil_slot(now, self._seconds))

    # ------------------------------------------------------------------ inside
    def _close(self, now: float, cause: StopCause) -> Recording | None:
        _require_finite("now", now)
        recording = self._recording
        if recording is None:
            return None
        try:
            self.advance(now)
            start = self._next_slot * self._seconds
            if now > start:
                # Stopped part-way through a segment: keep what was filmed up to now.
                recording.append(self._render(self._next_slot, start, now))
        finally:
            self._recording = None
            self._state = DeviceState.BUFFERING
            recording.stop(now, cause)
        return recording

    def _render(self, slot: int, start: float, end: float) -> Segment:
        seq = slot - self._base_slot
        return Segment.of(seq, start, end, self.source.render(seq, start, end))

    def _recording_id(self, aid: str, now: float) -> str:
        # Derived, not random, so simulations replay identically; the counter keeps two
        # recordings of one camera apart even if an old activation id is reused.
        key = f"{self.device_id}\0{aid}\0{now!r}\0{self._opened}".encode()
        return f"rec-{hashlib.sha256(key).hexdigest()[:12]}"
