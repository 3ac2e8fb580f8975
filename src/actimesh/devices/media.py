"""Media segments and where they come from.

A camera's video is a sequence of :class:`Segment` values, each covering
``[start, end)`` in UNIX seconds. A :class:`MediaSource` renders them; the camera decides
*which* segments exist and when. Two families satisfy the protocol:
:class:`SyntheticSource` (here: cheap, deterministic bytes for simulated fleets of
thousands of cameras) and the H.264 sources of :mod:`actimesh.devices.h264` and
:mod:`actimesh.devices.h264_live` (real video encoded with PyAV, one MPEG-TS per
segment). A source's :class:`MediaFormat` tells the
recorder how to store what it renders.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from actimesh.broker.topics import IDENTIFIER_PATTERN, is_identifier

__all__ = [
    "SYNTHETIC_FORMAT",
    "MediaFormat",
    "MediaSource",
    "Segment",
    "Switchable",
    "SyntheticHeader",
    "SyntheticSource",
    "VideoFormat",
    "parse_synthetic",
]


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of recorded media covering ``[start, end)``.

    ``seq`` numbers the camera's segments; ``sha256`` is the hex digest of ``data`` so a
    manifest can prove the file on disk is the one the camera produced. Build segments
    with :meth:`of` to have the digest computed for you.
    """

    seq: int
    start: float
    end: float
    data: bytes
    sha256: str

    def __post_init__(self) -> None:
        if self.seq < 0:
            raise ValueError(f"segment seq must be >= 0, got {self.seq}")
        if not (math.isfinite(self.start) and math.isfinite(self.end) and self.end > self.start):
            raise ValueError(f"segment must have finite start < end, got {self.start}..{self.end}")

    @classmethod
    def of(cls, seq: int, start: float, end: float, data: bytes) -> Segment:
        """A segment holding ``data``, with its SHA-256 computed."""
        return cls(seq, start, end, data, hashlib.sha256(data).hexdigest())

    @property
    def duration(self) -> float:
        """Seconds of media in this segment."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class VideoFormat:
    """The picture a video source encodes (for the manifest and for players)."""

    codec: str
    width: int
    height: int
    fps: int
    #: Clock of the presentation timestamps in the stream (90 kHz in MPEG-TS).
    pts_hz: int

    def to_json(self) -> dict[str, Any]:
        """The manifest entry for this format."""
        return {
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "pts_hz": self.pts_hz,
        }


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """What a source's segments are, so the recorder knows how to store them.

    ``concatenable`` segments join byte for byte into one playable file (MPEG-TS
    segments that each start with their own headers and a key frame): a recording is
    then one file, ``recording.<extension>``. Otherwise each segment is its own file.
    """

    container: str
    extension: str
    concatenable: bool
    video: VideoFormat | None = None
    #: True when segments carry an audio track.
    audio: bool = False


#: The format of :class:`SyntheticSource` segments: one file per segment.
SYNTHETIC_FORMAT = MediaFormat(container="synthetic", extension="seg", concatenable=False)


class MediaSource(Protocol):
    """Renders the media of one camera, one segment at a time."""

    @property
    def segment_seconds(self) -> float:
        """Nominal length of a segment; the camera aligns segments to multiples of it."""
        ...

    @property
    def format(self) -> MediaFormat:
        """What the rendered bytes are."""
        ...

    def render(self, seq: int, start: float, end: float) -> bytes:
        """The encoded media for ``[start, end)``.

        ``end - start`` equals :attr:`segment_seconds` except for the last segment of a
        recording that an officer stopped part-way through a segment.
        """
        ...


@runtime_checkable
class Switchable(Protocol):
    """A source that holds hardware or a thread: the camera switches it with its power."""

    def switch_on(self) -> None:
        """Start capturing (idempotent)."""
        ...

    def switch_off(self) -> None:
        """Stop capturing and release what was held (idempotent)."""
        ...


#: First bytes of every synthetic segment, so a stray file is recognisable.
_MAGIC = b"AMSYN1"


@dataclass(frozen=True, slots=True)
class SyntheticHeader:
    """What a synthetic segment says about itself."""

    device_id: str
    seq: int
    start: float
    end: float


class SyntheticSource:
    """Deterministic stand-in media: a one-line header padded with zeros.

    The header names the device, the segment number and its time range, so a test (or a
    drill) can read any committed file and prove which seconds of which camera it holds.
    Rendering costs a string format, so thousands of simulated cameras stay cheap. If the
    header is longer than ``segment_bytes`` the segment is the header alone: the header
    is the evidence and is never truncated.
    """

    def __init__(
        self, device_id: str, *, segment_seconds: float = 1.0, segment_bytes: int = 512
    ) -> None:
        if not is_identifier(device_id):
            raise ValueError(f"device id {device_id!r} must match {IDENTIFIER_PATTERN}")
        if not (math.isfinite(segment_seconds) and segment_seconds > 0):
            raise ValueError(f"segment_seconds must be positive, got {segment_seconds!r}")
        if segment_bytes < 0:
            raise ValueError(f"segment_bytes must be >= 0, got {segment_bytes}")
        self.device_id = device_id
        self._segment_seconds = float(segment_seconds)
        self.segment_bytes = segment_bytes

    @property
    def segment_seconds(self) -> float:
        """Nominal length of a segment in seconds."""
        return self._segment_seconds

    @property
    def format(self) -> MediaFormat:
        """Synthetic segments: one file each."""
        return SYNTHETIC_FORMAT

    def render(self, seq: int, start: float, end: float) -> bytes:
        """The header line for this segment, padded with zeros to ``segment_bytes``."""
        # repr() of a float round-trips exactly, so the header proves the precise range.
        header = f"{_MAGIC.decode()} {self.device_id} {seq} {start!r} {end!r}\n".encode()
        return header.ljust(self.segment_bytes, b"\0")


def parse_synthetic(data: bytes) -> SyntheticHeader:
    """Read the header of a segment made by :class:`SyntheticSource`.

    Raises :class:`ValueError` if ``data`` is not a synthetic segment.
    """
    line, newline, _ = data.partition(b"\n")
    parts = line.split(b" ")
    if not newline or len(parts) != 5 or parts[0] != _MAGIC:
        raise ValueError("not a synthetic segment (missing AMSYN1 header)")
    try:
        return SyntheticHeader(
            device_id=parts[1].decode("ascii"),
            seq=int(parts[2]),
            start=float(parts[3]),
            end=float(parts[4]),
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"malformed synthetic segment header: {line[:80]!r}") from exc
