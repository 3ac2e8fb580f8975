"""Real video: H.264 in MPEG-TS segments, encoded with PyAV's bundled libx264.

Every segment is a complete MPEG-TS (its own PAT/PMT, an IDR frame first, one GOP): any
segment decodes alone, so a recording can start at any segment boundary, and
consecutive segments concatenated byte for byte are one playable stream. Presentation
timestamps come from the wall clock: a frame filmed at UNIX time ``t`` has
``pts = round(t * 90000)`` (MPEG-TS keeps the low 33 bits, so the clock wraps every
26.5 h like any broadcast stream). Frame times sit on a fixed grid of ``1/fps`` aligned
to the segment boundaries, so concatenated segments have no gap and no overlap, and
the manifest's wall-clock times can be checked against the video itself.

Two sources satisfy :class:`~actimesh.devices.media.MediaSource`:

* :class:`H264Source` draws the :class:`~actimesh.devices.pattern.TestPattern` and
  encodes a segment when the camera asks for it. The picture is a function of time, so
  it works with any clock, faster than real time under a fake one (tests, replays).
* :class:`LiveH264Source` owns one thread per camera that captures frames as they
  happen (from a V4L2 camera, or the test pattern paced by the real clock) and encodes
  each segment as soon as it is complete. The camera then only picks up finished bytes:
  encoding never runs on the device agent's event loop nor under its lock.

Encoder choice: ``preset=ultrafast`` and ``tune=zerolatency`` (no B-frames, no
look-ahead, one packet out per frame in) keep a 640x360 camera at one or two per cent of
a core, which leaves room on a body camera's SoC and on a shared test machine; ``crf``
sets quality and ``max_kbps`` caps the bitrate so that memory and disk stay bounded.
"""

from __future__ import annotations

import io
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av

from actimesh.broker.topics import IDENTIFIER_PATTERN, is_identifier
from actimesh.devices.media import MediaFormat, VideoFormat
from actimesh.devices.pattern import TestPattern
from actimesh.errors import MediaError

__all__ = [
    "PTS_HZ",
    "AvCapture",
    "Capture",
    "H264Encoder",
    "H264Settings",
    "H264Source",
    "LiveH264Source",
    "LiveStats",
    "PatternCapture",
    "frame_times",
    "open_h264_source",
    "pts_of",
    "select_video_device",
]

log = logging.getLogger(__name__)

#: MPEG-TS presentation clock.
PTS_HZ = 90_000
_TIME_BASE = Fraction(1, PTS_HZ)


@dataclass(frozen=True, slots=True)
class H264Settings:
    """Picture size, frame rate, segment length and quality of an H.264 camera."""

    width: int = 640
    height: int = 360
    fps: int = 15
    segment_seconds: float = 1.0
    #: x264 constant rate factor: 0 lossless … 51 worst; 23 is x264's default.
    crf: int = 23
    #: Bitrate cap (VBV) in kbit/s, 0 for none. Each segment starts a fresh VBV buffer
    #: of half a second, so a segment holds at most about 1.5 s at this rate: busy
    #: scenes cannot blow up the buffer's memory or the disk.
    max_kbps: int = 1500
    preset: str = "ultrafast"

    def __post_init__(self) -> None:
        if not (16 <= self.width <= 3840 and 16 <= self.height <= 2160) or (
            self.width % 2 or self.height % 2
        ):
            raise ValueError(
                f"frame size must be even, 16x16 to 3840x2160, got {self.width}x{self.height}"
            )
        if not (1 <= self.fps <= 60 and PTS_HZ % self.fps == 0):
            raise ValueError(
                f"fps must be 1 to 60 and divide 90000 (e.g. 10, 15, 30), got {self.fps}"
            )
        frames = self.fps * self.segment_seconds
        if not (
            math.isfinite(self.segment_seconds)
            and 0 < self.segment_seconds <= 10
            and frames >= 1
            and abs(frames - round(frames)) < 1e-9
        ):
            raise ValueError(
                f"segment_seconds must be 0 to 10 s and hold a whole number of frames at "
                f"{self.fps} fps, got {self.segment_seconds!r}"
            )
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be 0 to 51, got {self.crf}")
        if not 0 <= self.max_kbps <= 100_000:
            raise ValueError(f"max_kbps must be 0 (no cap) to 100000, got {self.max_kbps}")

    @property
    def frames_per_segment(self) -> int:
        """Frames in one whole segment (also the GOP length)."""
        return round(self.fps * self.segment_seconds)

    @property
    def video(self) -> VideoFormat:
        """The manifest's description of this video."""
        return VideoFormat("h264", self.width, self.height, self.fps, PTS_HZ)

    @property
    def media(self) -> MediaFormat:
        """MPEG-TS segments that concatenate into one playable file."""
        return MediaFormat(container="mpegts", extension="ts", concatenable=True, video=self.video)


def pts_of(t: float) -> int:
    """The presentation timestamp of a frame filmed at UNIX time ``t`` (before the wrap)."""
    return round(t * PTS_HZ)


def frame_times(start: float, end: float, fps: int) -> list[float]:
    """Frame times of ``[start, end)``: ``start + i / fps`` for each that is before ``end``.

    ``start`` is a segment boundary, so these lie on the camera's global frame grid.
    """
    count = max(1, math.ceil((end - start) * fps - 1e-9))
    return [start + i / fps for i in range(count)]


class H264Encoder:
    """Encodes the frames of one segment into a standalone MPEG-TS.

    A fresh encoder per segment: the first frame is always an IDR with SPS/PPS, nothing
    carries over between segments (the same segment rendered twice gives the same
    bytes), and a partial segment at a stop costs nothing special. x264 starts in a few
    milliseconds at these sizes. One encoder thread: a camera gets one core's share.
    """

    def __init__(self, settings: H264Settings) -> None:
        self.settings = settings
        self._step = PTS_HZ // settings.fps
        self._options = {
            "preset": settings.preset,
            "tune": "zerolatency",
            "crf": str(settings.crf),
            # Exactly one GOP per segment: no scene-cut key frames in between.
            "g": str(settings.frames_per_segment),
            "sc_threshold": "0",
        }
        if settings.max_kbps:
            self._options["maxrate"] = f"{settings.max_kbps}k"
            self._options["bufsize"] = f"{max(1, settings.max_kbps // 2)}k"

    def encode(self, start: float, frames: Sequence[av.VideoFrame]) -> bytes:
        """One MPEG-TS holding ``frames``, the first filmed at ``start``, then every 1/fps.

        Raises :class:`MediaError` if libav fails.
        """
        if not frames:
            raise ValueError("a segment needs at least one frame")
        s = self.settings
        first = pts_of(start)
        buf = io.BytesIO()
        try:
            with av.open(buf, "w", format="mpegts") as out:
                stream = out.add_stream("libx264", rate=s.fps, options=self._options)
                stream.width, stream.height, stream.pix_fmt = s.width, s.height, "yuv420p"
                stream.time_base = _TIME_BASE
                stream.codec_context.time_base = _TIME_BASE
                stream.codec_context.thread_count = 1
                for i, frame in enumerate(frames):
                    frame.pts = first + i * self._step
                    frame.time_base = _TIME_BASE
                    out.mux(stream.encode(frame))
                out.mux(stream.encode(None))
        except av.FFmpegError as exc:
            raise MediaError(f"H.264 encoding failed: {exc}") from exc
        return buf.getvalue()


class H264Source:
    """The test pattern, encoded when the camera asks for a segment (any clock).

    Each call encodes on the caller's thread: the device agent already calls the camera
    off its event loop. :class:`LiveH264Source` moves the work to a thread of its own.
    """

    def __init__(self, device_id: str, settings: H264Settings | None = None) -> None:
        if not is_identifier(device_id):
            raise ValueError(f"device id {device_id!r} must match {IDENTIFIER_PATTERN}")
        self.settings = settings or H264Settings()
        self.device_id = device_id
        self.pattern = TestPattern(device_id, self.settings.width, self.settings.height)
        self.encoder = H264Encoder(self.settings)

    @property
    def segment_seconds(self) -> float:
        """Length of a whole segment in seconds."""
        return self.settings.segment_seconds

    @property
    def format(self) -> MediaFormat:
        """MPEG-TS segments that concatenate into one file."""
        return self.settings.media

    def render(self, seq: int, start: float, end: float) -> bytes:  # noqa: ARG002
        """The pattern for ``[start, end)``, one frame per 1/fps, as MPEG-TS.

        ``seq`` is not needed: the stream's timestamps come from the wall clock.
        """
        times = frame_times(start, end, self.settings.fps)
        return self.encoder.encode(start, [self.pattern.frame(t) for t in times])


# ---------------------------------------------------------------------- live capture
class Capture(Protocol):
    """Frames as they are filmed. Used by one thread only."""

    def read(self) -> tuple[float, av.VideoFrame] | None:
        """Block for the next frame; return its wall-clock time and the picture (already
        at the camera's size, captioned), or None if asked to stop while waiting.

        Raises :class:`MediaError` when the sensor fails.
        """
        ...

    def close(self) -> None:
        """Release the sensor."""
        ...


class PatternCapture:
    """The test pattern in real time: one frame per tick of the ``1/fps`` grid."""

    def __init__(
        self,
        pattern: TestPattern,
        fps: int,
        stop: threading.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pattern, self.fps, self.clock, self._stop = pattern, fps, clock, stop
        self._last: int | None = None

    def read(self) -> tuple[float, av.VideoFrame] | None:
        """Wait for the next tick and draw it; a late thread skips to the current tick."""
        now = self.clock()
        tick = math.ceil(now * self.fps - 1e-6)
        if self._last is not None:
            # Behind (the thread was busy encoding): take the tick just passed, not a
            # burst of stale ones; the segment holds that frame over the missed ticks.
            tick = max(self._last + 1, min(tick, math.floor(now * self.fps + 1e-6)))
        wait = tick / self.fps - now
        if wait > 0 and self._stop.wait(wait):
            return None
        self._last = tick
        t = tick / self.fps
        return t, self.pattern.frame(t)

    def close(self) -> None:
        """Nothing to release."""


class AvCapture:
    """Frames from a libav input: a V4L2 camera (``/dev/video0``, format ``v4l2``) or,
    in tests, a file. Each frame is stamped with the clock when it arrives, scaled to
    the camera's size and captioned with the device id and that time."""

    def __init__(
        self,
        url: str,
        pattern: TestPattern,
        *,
        fmt: str | None = "v4l2",
        fps: int = 15,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 5.0,
    ) -> None:
        self.url, self.pattern, self.clock = url, pattern, clock
        options = {"framerate": str(fps)} if fmt == "v4l2" else {}
        try:
            self._container = av.open(url, "r", format=fmt, options=options, timeout=timeout_s)
            self._frames = self._container.decode(video=0)
        except (av.FFmpegError, OSError) as exc:
            raise MediaError(f"cannot open camera {url}: {exc}") from exc

    def read(self) -> tuple[float, av.VideoFrame] | None:
        """The next frame from the sensor, captioned."""
        try:
            frame = next(self._frames)
        except StopIteration:
            raise MediaError(f"camera {self.url} stopped sending frames") from None
        except (av.FFmpegError, OSError) as exc:
            raise MediaError(f"camera {self.url} failed: {exc}") from exc
        t = self.clock()
        return t, self.pattern.burn(frame, t)

    def close(self) -> None:
        """Close the device."""
        self._container.close()


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


def _probe_v4l2(path: Path) -> bool:
    try:
        with av.open(str(path), "r", format="v4l2", timeout=2.0):
            return True
    except (av.FFmpegError, OSError):
        return False


def _natural(path: Path) -> tuple[str, int]:
    match = re.fullmatch(r"(\D*)(\d+)", path.name)
    return (match[1], int(match[2])) if match else (path.name, -1)


def select_video_device(
    setting: str,
    *,
    dev_dir: Path = Path("/dev"),
    probe: Callable[[Path], bool] = _probe_v4l2,
) -> Path | None:
    """Which V4L2 camera to film with, or None for the test pattern.

    ``"auto"``: the first ``/dev/videoN`` (in numeric order) that opens as a capture
    device; none present or none opening is not an error, the camera films the
    pattern. ``"none"``: always the pattern. A path: that device, and it must exist and
    open (:class:`MediaError` otherwise: the operator asked for it by name).
    """
    if setting == "none":
        return None
    if setting == "auto":
        for path in sorted(dev_dir.glob("video*"), key=_natural):
            if probe(path):
                return path
        return None
    path = Path(setting)
    if not path.exists():
        raise MediaError(
            f"camera device {setting} does not exist; set media.device to an existing "
            "/dev/videoN, 'auto' or 'none'"
        )
    if not probe(path):
        raise MediaError(
            f"camera device {setting} does not open as a V4L2 capture device; check "
            "permissions (group video) or set media.device to 'auto' or 'none'"
        )
    return path


def open_h264_source(
    device_id: str,
    settings: H264Settings | None = None,
    *,
    device: str = "auto",
    live: bool = True,
    clock: Callable[[], float] = time.time,
    dev_dir: Path = Path("/dev"),
    probe: Callable[[Path], bool] = _probe_v4l2,
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
