"""How cameras film and record (the ``[media]`` table of the config file)::

    [media]
    source = "synthetic"    # or "h264": real video (PyAV/libx264) instead of stand-in bytes
    device = "auto"         # h264 only: the first /dev/videoN, "none", or a device path
    width = 640
    height = 360
    fps = 15
    segment_s = 1           # segment length: the unit of the buffer and of a commit
    crf = 23                # H.264 quality (x264 constant rate factor)
    max_kbps = 1500         # H.264 bitrate cap (0: none); bounds buffer memory and disk
    pre_roll_s = 30         # 0 to 120 s kept before every event
    buffer_audio = false    # audio in the pre-event buffer (off, as vendors ship it)
    stealth = "officer"     # recording light: "officer" decides, "always" off, "never" off
    cancel_window_s = 10    # an officer may cancel a false activation this long after it

A simulated fleet of thousands of cameras keeps ``source = "synthetic"``: its segments
cost a string format each. ``"h264"`` films and encodes for real, one thread per camera.

Every mistake is reported as one line naming the key and what it accepts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from actimesh.devices.buffer import MAX_PRE_ROLL_S
from actimesh.devices.camera import StealthPolicy
from actimesh.devices.media import MediaSource, SyntheticSource
from actimesh.errors import ConfigError

if TYPE_CHECKING:
    from actimesh.devices.h264 import H264Settings

__all__ = ["MediaKind", "MediaSettings", "StealthPolicy", "open_media_source"]


class MediaKind(StrEnum):
    """What a camera's segments hold."""

    SYNTHETIC = "synthetic"
    H264 = "h264"


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """How cameras film and record."""

    source: MediaKind = MediaKind.SYNTHETIC
    #: ``"auto"`` films the first V4L2 camera found (else the test pattern), ``"none"``
    #: always the pattern, a path that device. Simulated fleets always film the pattern.
    device: str = "auto"
    width: int = 640
    height: int = 360
    fps: int = 15
    segment_s: float = 1.0
    crf: int = 23
    max_kbps: int = 1500
    pre_roll_s: float = 30.0
    buffer_audio: bool = False
    stealth: StealthPolicy = StealthPolicy.OFFICER
    cancel_window_s: float = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.pre_roll_s) and 0 <= self.pre_roll_s <= MAX_PRE_ROLL_S):
            raise ConfigError(
                f"media.pre_roll_s must be 0 to {MAX_PRE_ROLL_S:g} s, got {self.pre_roll_s!r}"
            )
        if not (math.isfinite(self.cancel_window_s) and 0 <= self.cancel_window_s <= 60):
            raise ConfigError(
                f"media.cancel_window_s must be 0 (no cancel) to 60 s, got {self.cancel_window_s!r}"
            )
        if not (math.isfinite(self.segment_s) and 0 < self.segment_s <= 10):
            raise ConfigError(
                f"media.segment_s must be above 0 and at most 10, got {self.segment_s!r}"
            )
        if self.source is MediaKind.H264:
            self.h264()  # size, rate and segment length must make a valid encoder

    def h264(self) -> H264Settings:
        """The encoder settings (raises :class:`ConfigError` if they cannot work)."""
        from actimesh.devices.h264 import H264Settings  # noqa: PLC0415  (PyAV loads only when used)

        try:
            return H264Settings(
                width=self.width,
                height=self.height,
                fps=self.fps,
                segment_seconds=self.segment_s,
                crf=self.crf,
                max_kbps=self.max_kbps,
            )
        except ValueError as exc:
            raise ConfigError(f"[media]: {exc}") from exc


def open_media_source(
    settings: MediaSettings,
    device_id: str,
    *,
    live: bool = True,
    device: str | None = None,
    clock: Callable[[], float] = time.time,
) -> MediaSource:
    """The media source one camera films with, switched on.

    ``device`` overrides ``settings.device`` (a simulated fleet passes ``"none"``: a
    thousand cameras cannot share one sensor). ``live=False`` is for clocks that are not
    the wall clock: the H.264 pattern is then encoded when the camera asks, at any
    speed. Raises :class:`~actimesh.errors.MediaError` if a named device cannot be used.
    """
    if settings.source is MediaKind.SYNTHETIC:
        return SyntheticSource(device_id, segment_seconds=settings.segment_s)
    from actimesh.devices.h264_live import open_h264_source  # noqa: PLC0415  (as above)

    return open_h264_source(
        device_id,
        settings.h264(),
        device=settings.device if device is None else device,
        live=live,
        clock=clock,
    )
