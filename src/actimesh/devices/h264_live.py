"""Real video in real time: one thread per camera captures and encodes as frames come.

:class:`LiveH264Source` owns one thread per camera that captures frames as they happen
(from a V4L2 camera, or the test pattern paced by the real clock; see
:mod:`actimesh.devices.capture`) and encodes each segment as soon as it is complete,
with :class:`~actimesh.devices.h264.H264Encoder`. The camera then only picks up
finished bytes: encoding never runs on the device agent's event loop nor under its
lock. :func:`open_h264_source` chooses between this and the on-demand
:class:`~actimesh.devices.h264.H264Source`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av

from actimesh.devices.capture import (
    AvCapture,
    Capture,
    PatternCapture,
    probe_v4l2,
    select_video_device,
)
from actimesh.devices.h264 import H264Settings, H264Source, frame_times
from actimesh.devices.media import MediaFormat
from actimesh.devices.pattern import TestPattern
from actimesh.errors import MediaError

__all__ = ["LiveH264Source", "LiveStats", "open_h264_source"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LiveStats:
    """What a live source did; ``filled`` counts segments made without captured frames."""

    frames: int = 0
    segments_encoded: int = 0
    encode_seconds: float = 0.0
    filled: int = 0
    capture_errors: int = 0


class LiveH264Source:
    """Captures and encodes in its own thread; the camera picks up finished segments.

    The thread reads frames from a :class:`Capture` (the test pattern in real time when
    ``capture`` is None), keeps the raw frames of the segment being filmed, and encodes
    the segment once a frame of the next one arrives. The last ``keep_segments``
    encoded segments wait for the camera to collect them. Memory is bounded: one
    segment of raw frames plus ``keep_segments`` encoded ones.

    A segment the thread never completed (before it started, lost while the sensor
    stalled, or already dropped because the camera fell behind) is still rendered,
    from the frames at hand, held over the gaps; where there are none, from the test
    pattern (pattern source) or a NO SIGNAL picture (real sensor). The stream stays
    continuous, and ``stats.filled`` counts those segments.

    The camera waits for a whole segment the thread is still finishing at most
    ``wait_s`` (default: one segment and a half second), and only while frames arrived
    in the last ``stall_s``. Call :meth:`switch_on` to start and :meth:`switch_off` to
    stop (the camera does both with its power).
    """

    def __init__(
        self,
        device_id: str,
        settings: H264Settings | None = None,
        *,
        capture: Callable[[TestPattern, threading.Event], Capture] | None = None,
        clock: Callable[[], float] = time.time,
        keep_segments: int = 4,
        stall_s: float = 1.0,
        wait_s: float | None = None,
    ) -> None:
        if keep_segments < 1:
            raise ValueError(f"keep_segments must be >= 1, got {keep_segments}")
        self._inner = H264Source(device_id, settings)
        self.settings = self._inner.settings
        #: Draws the fill picture and the caption burned into captured frames.
        self.pattern = self._inner.pattern
        self.device_id = device_id
        self.clock = clock
        self.stats = LiveStats()
        self._open_capture = capture
        self._fill = self._inner.pattern.frame if capture is None else self._inner.pattern.no_signal
        self._keep = keep_segments
        self._stall_s = stall_s
        self._wait_s = self.settings.segment_seconds + 0.5 if wait_s is None else wait_s
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slot: int | None = None  # the slot being filmed
        self._raw: list[tuple[float, av.VideoFrame]] = []  # its frames so far
        self._encoding: int | None = None  # the finished slot being encoded right now
        self._done: OrderedDict[int, bytes] = OrderedDict()  # slot -> encoded segment
        self._last_frame = -math.inf  # monotonic time of the last frame captured

    # ------------------------------------------------------------------ protocol
    @property
    def segment_seconds(self) -> float:
        """Length of a whole segment in seconds."""
        return self.settings.segment_seconds

    @property
    def format(self) -> MediaFormat:
        """MPEG-TS segments that concatenate into one file."""
        return self.settings.media

    @property
    def running(self) -> bool:
        """True while the capture thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def held_bytes(self) -> int:
        """Bytes of encoded segments waiting to be collected, plus the raw frames held."""
        with self._cond:
            raw = sum(sum(p.buffer_size for p in f.planes) for _, f in self._raw)
            return raw + sum(len(b) for b in self._done.values())

    def render(self, seq: int, start: float, end: float) -> bytes:  # noqa: ARG002
        """The segment ``[start, end)``: the thread's bytes when it has them (``seq`` is
        not needed: segments are known by their time).

        A whole segment the thread is still finishing is waited for (briefly, and only
        while frames keep coming); a partial one (the officer stopped mid-segment) is
        encoded here from the frames filmed so far.
        """
        seconds = self.settings.segment_seconds
        slot = round(start / seconds)
        whole = end >= (slot + 1) * seconds - 1e-6
        deadline = time.monotonic() + self._wait_s
        with self._cond:
            while whole and slot not in self._done and self._worth_waiting(slot, deadline):
                self._cond.wait(0.05)
            if whole and slot in self._done:
                return self._done.pop(slot)
            raw = [(t, f) for t, f in self._raw if start <= t < end] if self._slot == slot else []
        if whole:
            self.stats.filled += 1
        return self._encode(start, end, raw)

    # ------------------------------------------------------------------ power
    def switch_on(self) -> None:
        """Start the capture thread (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"{self.device_id}-media", daemon=True
        )
        self._thread.start()

    def switch_off(self) -> None:
        """Stop the thread, release the sensor and forget what was held (idempotent)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10.0)
        with self._cond:
            self._slot, self._raw, self._encoding = None, [], None
            self._done.clear()
            self._cond.notify_all()

    # ------------------------------------------------------------------ thread
    def _worth_waiting(self, slot: int, deadline: float) -> bool:
        now = time.monotonic()
        return (
            self.running
            and now < deadline
            # Not passed it already, or passed it and encoding it now.
            and (self._slot is None or self._slot <= slot or self._encoding == slot)
            and now - self._last_frame < self._stall_s  # frames are still coming
        )

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                capture = self._start_capture()
            except MediaError as exc:
                self.stats.capture_errors += 1
                log.warning("%s: %s; retrying in %.1f s", self.device_id, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            try:
                self._pump(capture)
                backoff = 0.5
            except MediaError as exc:
                self.stats.capture_errors += 1
                log.warning("%s: %s", self.device_id, exc)
                self._stop.wait(backoff)
            finally:
                capture.close()

    def _start_capture(self) -> Capture:
        if self._open_capture is None:
            return PatternCapture(self._inner.pattern, self.settings.fps, self._stop, self.clock)
        return self._open_capture(self._inner.pattern, self._stop)

    def _pump(self, capture: Capture) -> None:
        seconds = self.settings.segment_seconds
        while not self._stop.is_set():
            got = capture.read()
            if got is None:
                return
            t, frame = got
            slot = math.floor(t / seconds + 1e-9)
            finished: tuple[int, list[tuple[float, av.VideoFrame]]] | None = None
            with self._cond:
                self.stats.frames += 1
                self._last_frame = time.monotonic()
                if self._slot is not None and slot != self._slot:
                    finished = (self._slot, self._raw)
                    self._encoding = self._slot
                    self._raw = []
                self._slot = slot
                self._raw.append((t, frame))
                self._cond.notify_all()
            if finished is not None:
                self._finish(*finished)

    def _finish(self, slot: int, raw: list[tuple[float, av.VideoFrame]]) -> None:
        seconds = self.settings.segment_seconds
        data = None
        try:
            data = self._encode(slot * seconds, (slot + 1) * seconds, raw)
            self.stats.segments_encoded += 1
        finally:
            # Also on failure: nobody may wait for a segment that will never come.
            with self._cond:
                if data is not None:
                    self._done[slot] = data
                    while len(self._done) > self._keep:
                        self._done.popitem(last=False)
                self._encoding = None
                self._cond.notify_all()

    def _encode(self, start: float, end: float, raw: list[tuple[float, av.VideoFrame]]) -> bytes:
        """Encode ``[start, end)``: each tick of the grid shows the latest frame filmed by
        then (held over gaps), or the fill picture before the first one."""
        fps = self.settings.fps
        half = 0.5 / fps
        frames: list[av.VideoFrame] = []
        i = -1
        for tick in frame_times(start, end, fps):
            while i + 1 < len(raw) and raw[i + 1][0] <= tick + half:
                i += 1
            if i >= 0:
                frames.append(raw[i][1])
            elif raw and raw[0][0] - tick <= 2 * half:
                frames.append(raw[0][1])
            else:
                frames.append(self._fill(tick))
        began = time.perf_counter()
        data = self._inner.encoder.encode(start, frames)
        with self._cond:
            self.stats.encode_seconds += time.perf_counter() - began
        return data


# ---------------------------------------------------------------------- choosing one
@dataclass(frozen=True, slots=True)
class _V4l2Opener:
    """Opens the selected camera each time the capture thread (re)starts."""

    url: str
    fps: int
    clock: Callable[[], float]

    def __call__(self, pattern: TestPattern, stop: threading.Event) -> Capture:  # noqa: ARG002
        # A V4L2 read returns within the open timeout, so the stop event is not needed.
        return AvCapture(self.url, pattern, fps=self.fps, clock=self.clock)


def open_h264_source(
    device_id: str,
    settings: H264Settings | None = None,
    *,
    device: str = "auto",
    live: bool = True,
    clock: Callable[[], float] = time.time,
    dev_dir: Path = Path("/dev"),
    probe: Callable[[Path], bool] = probe_v4l2,
) -> H264Source | LiveH264Source:
    """An H.264 source for one camera, switched on.

    ``live=False`` (a fake clock, or a fleet replayed faster than real time) gives the
    on-demand pattern source. Otherwise a live source films the V4L2 camera that
    ``device`` selects (see :func:`select_video_device`), or the pattern.
    """
    settings = settings or H264Settings()
    if not live:
        return H264Source(device_id, settings)
    path = select_video_device(device, dev_dir=dev_dir, probe=probe)
    capture = None if path is None else _V4l2Opener(str(path), settings.fps, clock)
    source = LiveH264Source(device_id, settings, capture=capture, clock=clock)
    source.switch_on()
    return source
