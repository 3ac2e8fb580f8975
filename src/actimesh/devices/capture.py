"""Where a live camera's frames come from: a V4L2 sensor, or the test pattern in real time.

A :class:`Capture` is read by one capture thread only
(:class:`~actimesh.devices.h264_live.LiveH264Source`), which blocks on it; so each
implementation blocks too, and gives up promptly when asked to stop. Which sensor to
film with is decided once, at start-up (:func:`select_video_device`): a camera that
is asked for by name must open, one found by ``auto`` need not exist.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import av

from actimesh.devices.pattern import TestPattern
from actimesh.errors import MediaError

__all__ = ["AvCapture", "Capture", "PatternCapture", "probe_v4l2", "select_video_device"]


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


def probe_v4l2(path: Path) -> bool:
    """True if ``path`` opens as a V4L2 capture device (closed again at once)."""
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
    probe: Callable[[Path], bool] = probe_v4l2,
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
