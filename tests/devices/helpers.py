"""Reading committed video back with PyAV, the way a player or an examiner would."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from actimesh.devices.h264 import PTS_HZ
from actimesh.devices.pattern import TestPattern

#: MPEG-TS keeps 33 bits of the 90 kHz clock.
PTS_WRAP = 1 << 33


@dataclass(frozen=True, slots=True)
class Decoded:
    """What PyAV made of a file: every frame's timestamp and the first frame's caption."""

    pts: list[int]
    key_frames: list[bool]
    duration_s: float
    first_caption: list[bytes]

    @property
    def steps(self) -> set[int]:
        """Every distinct difference between consecutive timestamps."""
        return {b - a for a, b in zip(self.pts, self.pts[1:], strict=False)}


def caption_rows(frame: av.VideoFrame, pattern: TestPattern) -> list[bytes]:
    """The luma bytes under the time caption of ``frame``."""
    x0, y0, x1, y1 = pattern.caption_box
    plane = frame.planes[0]
    data = bytes(plane)
    return [data[r * plane.line_size + x0 : r * plane.line_size + x1] for r in range(y0, y1)]


def caption_distance(a: list[bytes], b: list[bytes]) -> float:
    """Mean absolute luma difference between two caption areas."""
    total = sum(
        abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)
    )
    return total / sum(len(r) for r in a)


def decode(path: Path, pattern: TestPattern) -> Decoded:
    """Decode every frame of ``path``."""
    pts: list[int] = []
    keys: list[bool] = []
    first: list[bytes] = []
    with av.open(str(path)) as container:
        duration = (container.duration or 0) / 1_000_000
        for frame in container.decode(video=0):
            assert frame.pts is not None
            if not pts:
                first = caption_rows(frame, pattern)
            pts.append(frame.pts)
            keys.append(frame.key_frame)
    return Decoded(pts, keys, duration, first)


def burned_in_time(decoded: Decoded, pattern: TestPattern, near: float, fps: int) -> float:
    """Which of the frame times around ``near`` the first frame's caption shows."""
    candidates = [near + k / fps for k in range(-fps, fps + 1)]
    return min(
        candidates,
        key=lambda t: caption_distance(
            decoded.first_caption, caption_rows(pattern.frame(t), pattern)
        ),
    )


def wall_pts(t: float) -> int:
    """The 33-bit timestamp a frame filmed at ``t`` carries in the file."""
    return round(t * PTS_HZ) % PTS_WRAP


def manifest_of(path: Path) -> dict[str, Any]:
    """The manifest of a recording folder."""
    result: dict[str, Any] = json.loads((path / "manifest.json").read_text())
    return result
