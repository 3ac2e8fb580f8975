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

* :class:`H264Source` (here) draws the :class:`~actimesh.devices.pattern.TestPattern`
  and encodes a segment when the camera asks for it. The picture is a function of time,
  so it works with any clock, faster than real time under a fake one (tests, replays).
* :class:`~actimesh.devices.h264_live.LiveH264Source` films in a thread of its own
  (frames from :mod:`actimesh.devices.capture`) and encodes each segment as soon as it
  is complete, with the same encoder.

Encoder choice: ``preset=ultrafast`` and ``tune=zerolatency`` (no B-frames, no
look-ahead, one packet out per frame in) keep a 640x360 camera at one or two per cent of
a core, which leaves room on a body camera's SoC and on a shared test machine; ``crf``
sets quality and ``max_kbps`` caps the bitrate so that memory and disk stay bounded.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av

from actimesh.broker.topics import IDENTIFIER_PATTERN, is_identifier
from actimesh.devices.media import MediaFormat, VideoFormat
from actimesh.devices.pattern import TestPattern
from actimesh.errors import MediaError

__all__ = [
    "PTS_HZ",
    "H264Encoder",
    "H264Settings",
    "H264Source",
    "frame_times",
    "pts_of",
]

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
